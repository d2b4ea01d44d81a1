"""A run survives a dead process mid-epoch: with train.checkpoint_every_steps, `kill -9` inside an
epoch and `--resume` end with the weights and metrics of the uninterrupted run, bit for bit on a CPU;
under `torchrun --max-restarts 1` a killed rank's job restarts and resumes from the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import TINY, set_args

ROOT = Path(__file__).resolve().parent.parent
# digits: 1,295 samples in batches of 64 = 21 steps an epoch; a checkpoint every 5 steps
SETTINGS = TINY + ["train.epochs=2", "train.precision=fp32", "train.checkpoint_every_steps=5",
                   "data.augment.random_crop_padding=1", "model.dropout=0.1"]

# `python KILLER STEP ARGS...`: perceiver's CLI, but the process dies (SIGKILL, no cleanup) at training
# step STEP of the first attempt, on rank 1 when there are ranks, as a crash or an OOM kill would
KILLER = """
import os, sys, signal
from perceiver_cli.engine import step as steps
at, calls, real = int(sys.argv[1]), [0], steps.TrainStep.__call__
def call(self, *args, **kwargs):
    calls[0] += 1
    first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if calls[0] == at and first and os.environ.get("RANK", "1") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)
steps.TrainStep.__call__ = call
sys.argv = ["perceiver"] + sys.argv[2:]
from perceiver_cli.cli import main
main()
"""


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # one thread, as the tests run in-process
    return subprocess.run([sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def finished(run_dir: Path) -> tuple[dict, list[dict]]:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return state["model"], [{k: v for k, v in row.items() if k not in ("samples_per_s", "epoch_time_s", "elapsed_s")}
                            for row in rows]


def assert_identical(a: Path, b: Path) -> None:
    (weights_a, rows_a), (weights_b, rows_b) = finished(a), finished(b)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert rows_a == rows_b


def test_kill_9_inside_an_epoch_then_resume_ends_bit_identical(cli, workdir):
    assert cli("train", *set_args(SETTINGS), "--name", "straight").exit_code == 0
    (workdir / "killer.py").write_text(KILLER)
    died = run(workdir, "killer.py", "33", "train", *set_args(SETTINGS), "--name", "killed")  # epoch 2, step 12
    assert died.returncode == -9, died.stderr
    saved = torch.load(workdir / "runs/killed/checkpoints/last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["position"]["epoch"] == 2 and saved["position"]["step"] == 10
    resumed = cli("train", "--resume", "runs/killed")
    assert resumed.exit_code == 0, resumed.output
    assert_identical(workdir / "runs/straight", workdir / "runs/killed")


def test_torchrun_restarts_a_job_whose_rank_was_killed_and_it_resumes_by_itself(cli, workdir):
    settings = [s for s in SETTINGS if not s.startswith("model.dropout")] + ["optim.name=sgd", "optim.lr=0.05"]
    assert cli("train", *set_args(settings), "--name", "straight", "--device", "cpu").exit_code == 0
    (workdir / "killer.py").write_text(KILLER)
    job = run(workdir, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
              "killer.py", "30", "--quiet", "train", *set_args(settings), "--name", "big", "--device", "cpu")
    assert job.returncode == 0, job.stderr[-3000:]
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["big", "straight"]  # its marker forgotten
    log = (workdir / "runs/big/train.log").read_text()
    assert "resumed at epoch 2" in log
    (weights_a, rows_a), (weights_b, rows_b) = finished(workdir / "runs/straight"), finished(workdir / "runs/big")
    for name in weights_a:  # 2 ranks vs 1 process: the same training to float tolerance
        gap = (weights_a[name] - weights_b[name]).norm() / weights_a[name].norm().clamp_min(1e-12)
        assert gap < 1e-5, (name, float(gap))
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b] == [1, 2]

"""Training processes that die, and trainings that meet: ranks end with their launcher (kill -9
included) and leave no marker behind; a run killed before its first checkpoint is taken over by a
rerun and started afresh by --resume; a run directory a live training uses is locked, so a second
training of it is one line that changes nothing, and a new run does not take it over."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, set_args, snapshot

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")


def start(workdir: Path, *args: str, **env: str) -> subprocess.Popen:
    """`perceiver ARGS` as a process of its own, as a user starts it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "perceiver_cli", "--quiet", *args], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def log_says(run: Path, text: str):
    return lambda: (run / "train.log").is_file() and text in (run / "train.log").read_text()


def stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, ...), or None when it is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def running(pid: int) -> bool:
    fields = stat(pid)
    return fields is not None and fields[0] not in "ZX"  # a zombie has ended, whether reaped or not


def ranks_of(launcher: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        fields = stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[1]) == launcher and running(int(entry.name)):
            found.append(int(entry.name))
    return found


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_killing_the_devices_launcher_ends_its_ranks_and_frees_the_run(cli, digits_run, workdir):
    run = workdir / digits_run
    launcher = start(workdir, "train", "--resume", digits_run, "--set", "train.epochs=1000",
                     "--devices", "2", "--device", "cpu")
    try:
        # rank 0 trains in the run the launcher holds locked for it (it does not wait for the lock itself)
        wait_for(log_says(run, "resumed at epoch 3 (world 2)"), "the ranks to train")
        ranks = ranks_of(launcher.pid)
        assert len(ranks) == 2
        line = one_line_error(cli("train", "--resume", digits_run))  # the launcher holds the run
        assert f"{digits_run}: another perceiver train (pid {launcher.pid}) is using this run" in line, line
    finally:
        launcher.kill()  # kill -9
        launcher.wait()
    deadline = time.monotonic() + 5
    while any(running(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in ranks if running(pid)], "ranks outlived their launcher"
    assert not list((workdir / "runs").glob(".torchrun-*"))
    # the run is free again, and resumes from what the ranks saved
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert cli("train", "--resume", digits_run, "--set", f"train.epochs={saved + 1}").exit_code == 0


def test_a_rank_whose_launcher_is_already_gone_ends_at_once(workdir):
    """The launcher may die before a rank has asked to die with it: the rank sees its parent is not
    the launcher it was started by, and ends instead of waiting at the rendezvous for the others."""
    rank = start(workdir, "train", *set_args(TINY), "--device", "cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", PERCEIVER_LAUNCHER_PID=str(dead_pid()))
    try:
        assert rank.wait(timeout=60) == -signal.SIGKILL
    finally:
        rank.kill()
        rank.wait()
    assert not (workdir / "runs").exists()


def test_a_run_killed_before_its_first_checkpoint_is_taken_over_but_never_while_it_runs(cli, workdir):
    # batches of 1: a first epoch of seconds, in which the training is stopped (SIGSTOP: alive, not saving)
    slow = start(workdir, "train", *set_args(TINY + ["train.batch_size=1"]), "--name", "x")
    run = workdir / "runs" / "x"
    try:
        wait_for(log_says(run, "recipe "), "the run to start")
        slow.send_signal(signal.SIGSTOP)
        assert not list((run / "checkpoints").glob("*.pt"))
        before = snapshot(run)
        # a live run that saved nothing yet is neither taken over nor resumed
        assert cli("train", *set_args(TINY), "--name", "x").exit_code == 0
        line = one_line_error(cli("train", "--resume", "runs/x"))
        assert f"runs/x: another perceiver train (pid {slow.pid}) is using this run; wait for it" in line, line
        assert snapshot(run) == before
    finally:
        slow.kill()  # kill -9 before the first checkpoint
        slow.wait()
    shutil.copytree(run, workdir / "runs" / "y")  # a second such run, for --resume
    markers = workdir / "runs"
    (markers / ".torchrun-dead").write_text(json.dumps({"run": "x", "host": socket.gethostname(), "pid": slow.pid}))
    (markers / ".torchrun-live").write_text(json.dumps({"run": "x", "host": socket.gethostname(), "pid": os.getpid()}))

    rerun = cli("train", *set_args(TINY), "--name", "x")  # the same command again: the name is taken over
    assert rerun.exit_code == 0, rerun.output
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == [".torchrun-live", "x", "x-2", "y"]
    assert (run / "checkpoints" / "last.pt").is_file()
    assert sum(line.startswith("recipe ") for line in (run / "train.log").read_text().splitlines()) == 1

    resumed = cli("train", "--resume", "runs/y", "--set", "train.batch_size=64")  # nothing to continue: afresh, said
    assert resumed.exit_code == 0, resumed.output
    notes = [line for line in resumed.stderr.splitlines() if line.strip()]
    assert notes == ["note: runs/y has no checkpoint (it stopped before its first epoch was saved): starting it afresh"]
    assert torch.load(workdir / "runs/y/checkpoints/last.pt", weights_only=True)["epoch"] == 2
    assert [r["epoch"] for r in map(json.loads, (workdir / "runs/y/metrics.jsonl").read_text().splitlines())] == [1, 2]


def test_two_resumes_of_one_run_at_once_the_second_is_one_line_and_changes_nothing(cli, digits_run, workdir):
    run = workdir / digits_run
    first = start(workdir, "train", "--resume", digits_run, "--set", "train.epochs=5")
    try:
        wait_for(log_says(run, "resumed at epoch 3"), "the first resume to start")
        first.send_signal(signal.SIGSTOP)  # alive and holding the run, writing nothing meanwhile
        before = snapshot(run)
        line = one_line_error(cli("train", "--resume", digits_run, "--set", "train.epochs=5"))
        assert line == (f"error: {digits_run}: another perceiver train (pid {first.pid}) is using this run; "
                        f"wait for it to end or stop it (kill {first.pid}) and run this again")
        assert snapshot(run) == before
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    log = (run / "train.log").read_text()
    assert log.count("resumed at epoch") == 1
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4, 5]

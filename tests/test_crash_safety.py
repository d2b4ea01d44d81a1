"""Run files a crash, a full disk or a damaged file cannot turn into lost or wrong results.

A training process is killed (os._exit, as kill -9) at each write of an epoch and resumed: it ends
bit for bit where an uninterrupted run does, with every metrics row and nothing left over. Damaged
checkpoints and metrics are read around or named in one line; NaN is written as null; a run that
saved no epoch leaves no directory; an OS error on writing is one line naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, set_args
from perceiver_cli.data.prepared import PreparedDataset, Split
from perceiver_cli.data.sources import load_for_recipe
from perceiver_cli.engine import capture as captures
from perceiver_cli.engine.callbacks import TrainLog
from perceiver_cli.engine.train import Trainer, resume_run, start_run
from perceiver_cli.errors import UserError
from perceiver_cli.recipe import load_recipe
from perceiver_cli.runs import checkpoint
from perceiver_cli.runs.metrics import read_metrics

# dropout and augmentation draw random numbers every step; best.pt follows every epoch; attention
# is captured every epoch: each epoch writes every kind of run file
# (on the CPU in fp32: bit-identical results are what a CPU promises)
CRASH_RUN = TINY + ["train.epochs=3", "train.best_metric=last", "train.device=cpu", "train.precision=fp32",
                    "model.dropout=0.1", "data.augment.random_crop_padding=1", "train.save_attention_maps=true",
                    "train.attention_interval=1", "train.attention_samples=1"]
TIMINGS = ("samples_per_s", "epoch_time_s", "elapsed_s")  # the only things a resumed run may change

# Trains CRASH_RUN as runs/crash and dies (os._exit: no cleanup, like kill -9) in epoch 2 at one
# write: just before or just after the rename that puts file NAME in place, or after the log line.
KILLED_TRAINING = r"""
import os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)  # as the test process: the same kernels, so bit-identical results
from perceiver_cli.cli import app
from perceiver_cli.engine.callbacks import TrainLog
from perceiver_cli.engine.train import Trainer

name, moment, args = sys.argv[1], sys.argv[2], sys.argv[3:]
epoch = [0]
train_epoch, log, replace = Trainer._train_epoch, TrainLog.write, os.replace

def tracked(self, number):
    epoch[0] = number
    return train_epoch(self, number)

def logged(self, line):
    log(self, line)
    if name == "train.log" and line.startswith("epoch 2/"):
        os._exit(9)

def replaced(src, dst, *rest, **options):
    hit = Path(dst).name == name and epoch[0] == 2
    if hit and moment == "before":
        os._exit(9)
    replace(src, dst, *rest, **options)
    if hit:
        os._exit(9)

Trainer._train_epoch, TrainLog.write, os.replace = tracked, logged, replaced
app(["train", *args, "--name", "crash"])
"""


def one_line_error(result) -> str:
    """Exit 2, one line on stderr starting "error: ", no traceback; returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Hidden files other than the run's lock file (which stays: it is free once its holder is gone)."""
    return sorted(str(p) for p in Path(folder).rglob(".*") if p.name != ".lock")


def rows_without_timings(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in read_metrics(run)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cli) -> Path:
    """CRASH_RUN without interruption."""
    base = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        result = cli("train", *set_args(CRASH_RUN), "--name", "straight")
    assert result.exit_code == 0, result.output
    return base / "runs" / "straight"


def assert_same_as(run: Path, straight: Path) -> None:
    """Every row, both checkpoints' weights and every attention capture equal the uninterrupted run's."""
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert rows_without_timings(run) == rows_without_timings(straight)
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3
    for name in ("last.pt", "best.pt"):
        mine, theirs = (torch.load(r / "checkpoints" / name, weights_only=True) for r in (run, straight))
        assert mine["epoch"] == theirs["epoch"] == 3
        assert mine["model"].keys() == theirs["model"].keys()
        for key in mine["model"]:
            assert torch.equal(mine["model"][key], theirs["model"][key]), (name, key)
    assert sorted(captures.saved_epochs(run)) == [1, 2, 3]
    for epoch in (1, 2, 3):
        mine, theirs = (captures.load(captures.saved_epochs(r)[epoch]) for r in (run, straight))
        assert np.array_equal(mine.weights, theirs.weights) and np.array_equal(mine.probabilities, theirs.probabilities)
    log = (run / "train.log").read_text()
    assert all(f"epoch {e}/3 " in log for e in (1, 2, 3)), log


def kill_training(workdir: Path, name: str, moment: str) -> Path:
    done = subprocess.run([sys.executable, "-c", KILLED_TRAINING, name, moment, *set_args(CRASH_RUN)],
                          cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 9, (done.returncode, done.stdout, done.stderr)  # it died where it was told
    return workdir / "runs" / "crash"


# and ("last.pt", "after"): test_a_kill_right_after_last_pt_loses_no_metrics_row
CRASH_POINTS = [("epoch_0002.npz", "after"), ("train.log", "after"), ("best.pt", "after"), ("last.pt", "before"),
                ("metrics.jsonl", "after"), ("metrics.csv", "after")]


@pytest.mark.parametrize("name, moment", CRASH_POINTS, ids=[f"{m}-{n}" for n, m in CRASH_POINTS])
def test_a_kill_at_any_write_of_an_epoch_resumes_to_the_uninterrupted_result(cli, workdir, straight, name, moment):
    run = kill_training(workdir, name, moment)
    if moment == "before":  # the killed write left its temporary file
        assert leftovers(run) == [str(run / "checkpoints" / f".{name}.tmp-{_pid_of(run, name)}")]

    result = cli("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert_same_as(run, straight)
    assert leftovers(run) == []


def _pid_of(run: Path, name: str) -> str:
    (left,) = (run / "checkpoints").glob(f".{name}.tmp-*")
    return left.name.rsplit("-", 1)[1]


def test_a_kill_right_after_last_pt_loses_no_metrics_row(cli, workdir, straight):
    """The kill the checkpoint rows are for: last.pt says epoch 2, metrics.jsonl still ends at 1."""
    run = kill_training(workdir, "last.pt", "after")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(run)] == [1]  # the row the old code lost for good

    assert cli("report", run).exit_code == 0  # a reader sees both rows already
    assert json.loads((run / "report.json").read_text())["runs"][str(run)]["epochs"] == 2
    result = cli("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert_same_as(run, straight)


def test_a_finished_run_killed_before_its_last_row_gets_it_back(cli, digits_run):
    """Killed after the final epoch's last.pt: resume has nothing to train, but restores the row."""
    (digits_run / "metrics.jsonl").write_text((digits_run / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    (digits_run / "metrics.csv").unlink()
    assert "already finished 2 of 2 epochs" in one_line_error(cli("train", "--resume", digits_run))
    assert [r["epoch"] for r in read_metrics(digits_run)] == [1, 2]
    assert len((digits_run / "metrics.csv").read_text().splitlines()) == 3


def test_resume_clears_only_dead_processes_temporary_files(tmp_path):
    from perceiver_cli.runs.files import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "checkpoints").mkdir()
        stale = tmp_path / "checkpoints" / f".last.pt.tmp-{dead.stdout.strip()}"
        live = tmp_path / "checkpoints" / f".best.pt.tmp-{alive.pid}"
        others = [tmp_path / ".keep", tmp_path / ".metrics.jsonl.tmp-notapid", tmp_path / "metrics.jsonl"]
        for path in (stale, live, *others):
            path.write_text("x")
        assert remove_stale_temporaries(tmp_path) == [stale]
        assert not stale.exists() and live.exists() and all(p.exists() for p in others)
    finally:
        alive.kill()
        alive.wait()


# --- damaged checkpoints ---------------------------------------------------------------------------

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_last_pt_resumes_from_best_pt_with_a_note(cli, digits_run):
    best_epoch = torch.load(digits_run / "checkpoints" / "best.pt", weights_only=True)["epoch"]
    truncate(digits_run / "checkpoints" / "last.pt")
    result = cli("train", "--resume", digits_run, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    note = result.stderr.strip()
    assert note.startswith("note: ") and "last.pt" in note and "cut short" in note and "best.pt" in note, note
    assert f"resumed at epoch {best_epoch + 1}" in (digits_run / "train.log").read_text()
    assert [r["epoch"] for r in read_metrics(digits_run)] == [1, 2, 3]
    assert checkpoint.load(digits_run / "checkpoints" / "last.pt")["epoch"] == 3  # whole again


def test_report_of_a_run_with_a_truncated_last_pt_shows_every_written_row(cli, digits_run):
    """best.pt may be an epoch behind; metrics.jsonl, written after the last whole last.pt, is not."""
    state = torch.load(digits_run / "checkpoints" / "best.pt", weights_only=True)
    state["metrics"], state["epoch"] = state["metrics"][:1], 1  # as if best.pt were epoch 1
    torch.save(state, digits_run / "checkpoints" / "best.pt")
    truncate(digits_run / "checkpoints" / "last.pt")
    assert cli("report", digits_run).exit_code == 0
    assert json.loads((digits_run / "report.json").read_text())["runs"][str(digits_run)]["epochs"] == 2


def test_eval_reads_last_pt_when_best_pt_is_truncated(cli, digits_run):
    truncate(digits_run / "checkpoints" / "best.pt")
    result = cli("eval", digits_run)
    assert result.exit_code == 0, result.output
    assert "best.pt" in result.stderr and "last.pt" in result.stderr
    assert json.loads((digits_run / "eval_test.json").read_text())["checkpoint"].endswith("last.pt")


def test_no_readable_checkpoint_is_one_line(cli, digits_run):
    before = sorted(p.name for p in digits_run.iterdir())
    for name in ("best.pt", "last.pt"):
        truncate(digits_run / "checkpoints" / name)
    for args in (["eval", digits_run], ["train", "--resume", digits_run, "--set", "train.epochs=3"]):
        line = one_line_error(cli(*args))
        assert "best.pt" in line and "last.pt" in line and "no checkpoint of this run is readable" in line, line
    assert sorted(p.name for p in digits_run.iterdir()) == before


class Custom:  # an arbitrary class: a checkpoint holding one is refused
    pass


def test_a_truncated_attention_capture_is_one_line(cli, digits_run):
    assert cli("attention", digits_run, "--checkpoint", "last").exit_code == 0
    (saved,) = captures.saved_epochs(digits_run).values()
    truncate(saved)
    line = one_line_error(cli("attention", digits_run))
    assert saved.name in line and "capture it again" in line


def test_a_checkpoint_with_pickled_objects_is_refused_in_our_words(cli, workdir):
    path = workdir / "objects.pt"
    torch.save({"model": {}, "config": {}, "extra": Custom()}, path)
    line = one_line_error(cli("eval", path))
    assert "holds pickled Python objects, which are never loaded because loading them can run code" in line
    assert "Weights only" not in line  # torch's page of advice is not shown; ours names weights_only=False


# --- attention: options checked before anything is written ---------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--checkpoint", "best", "--head", "5"], "--head 5"),
    (["--checkpoint", "best", "--stage", "3"], "--stage 3"),
    (["--checkpoint", "best", "--epoch", "7"], "--epoch 7"),
    (["--checkpoint", "best", "--epoch", "seven"], "--epoch seven"),
    (["--input", "missing.png", "--head", "5"], "missing.png"),
])
def test_bad_attention_options_write_nothing(cli, digits_run, args, expected):
    assert expected in one_line_error(cli("attention", digits_run, *args))
    assert not (digits_run / "attention").exists()  # no capture that later commands take for saved maps


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header declares side x side pixels (PIL refuses past ~179 M pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_attention_input_that_is_a_decompression_bomb_is_one_line(cli, digits_run, workdir):
    line = one_line_error(cli("attention", digits_run, "--input", bomb_png(workdir / "bomb.png")))
    assert "bomb.png" in line and "decompression bomb" in line and "give a smaller image" in line
    assert not (digits_run / "attention").exists()


# --- NaN is written as null, and read back -------------------------------------------------------

def no_nan(text: str):
    """Strict JSON: NaN / Infinity are not JSON, so parsing fails on them."""
    def refuse(constant):
        raise AssertionError(f"{constant} written into JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_run_without_validation_writes_null_and_every_reader_copes(cli, workdir, tiny):
    result = cli("train", *set_args(tiny + ["data.val_fraction=0", "train.epochs=1"]), "--name", "noval")
    assert result.exit_code == 0, result.output
    run = workdir / "runs" / "noval"
    for line in (run / "metrics.jsonl").read_text().splitlines():
        assert no_nan(line)["val_loss"] is None
    row = read_metrics(run)[0]
    assert row["val_loss"] != row["val_loss"]  # null read back as NaN

    result = cli("report", run)
    assert result.exit_code == 0, result.output
    assert no_nan((run / "report.json").read_text())["runs"][str(run)]["best_val_accuracy"] is None
    result = cli("train", "--resume", run, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_a_model_with_nan_weights_writes_null_in_eval_and_attention_json(cli, digits_run, workdir):
    state = torch.load(digits_run / "checkpoints" / "best.pt", weights_only=True)
    for tensor in state["model"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    path = digits_run / "checkpoints" / "nan.pt"
    torch.save(state, path)
    result = cli("eval", path)
    assert result.exit_code == 0, result.output
    assert no_nan((digits_run / "eval_test.json").read_text())["loss"] is None
    result = cli("attention", digits_run, "--checkpoint", path)
    assert result.exit_code == 0, result.output
    stats = no_nan((digits_run / "attention" / "stats.json").read_text())
    assert stats["epochs"][str(state["epoch"])]["0"]["mean"]["top5_mass"] is None


# --- a run that saved no epoch leaves no directory -----------------------------------------------

def start(workdir: Path, overrides: list[str], dataset=None) -> Trainer:
    recipe, path = load_recipe(None, TINY + overrides)
    return start_run(recipe, path, dataset or load_for_recipe(recipe.data), quiet=True, device="cpu")


def bad_labels() -> PreparedDataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    y = np.where(np.arange(64) == 5, 200, np.arange(64) % 3).astype(np.int64)  # one label past the 3 classes
    return PreparedDataset("labels", ["a", "b", "c"], {"kind": "image", "shape": [8, 8, 1]},
                           {"train": Split(x, y)}, normalization={"mean": [0.5], "std": [0.25]})


def test_divergence_in_the_first_epoch_leaves_no_run_directory(cli, workdir, tiny):
    line = one_line_error(cli("train", *set_args(tiny + ["optim.lr=1e30", "optim.warmup_epochs=0"]), "--name", "boom"))
    assert "diverged in epoch 1" in line and "removed" in line
    assert not (workdir / "runs" / "boom").exists()


def test_bad_labels_leave_no_run_directory(workdir):
    with pytest.raises(Exception):
        start(workdir, ["train.name=labels", "data.val_fraction=0"], bad_labels()).fit()
    assert not (workdir / "runs" / "labels").exists()


def test_ctrl_c_in_the_first_epoch_leaves_no_run_directory_but_keeps_a_saved_one(workdir, monkeypatch):
    train_epoch = Trainer._train_epoch

    def interrupted_in(epoch_to_stop):
        def run(self, epoch):
            if epoch == epoch_to_stop:
                raise KeyboardInterrupt
            return train_epoch(self, epoch)
        return run

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted_in(1))
    with pytest.raises(KeyboardInterrupt):
        start(workdir, ["train.name=first"]).fit()
    assert not (workdir / "runs" / "first").exists()

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted_in(2))
    with pytest.raises(KeyboardInterrupt):
        start(workdir, ["train.name=second"]).fit()
    kept = workdir / "runs" / "second"
    assert (kept / "checkpoints" / "last.pt").is_file()
    with pytest.raises(KeyboardInterrupt):  # a resumed run that saves nothing new is kept too
        resume_run(kept, load_for_recipe, quiet=True, device="cpu").fit()
    assert (kept / "checkpoints" / "last.pt").is_file() and (kept / "config.yaml").is_file()


# --- damaged metrics.jsonl ------------------------------------------------------------------------

def garble(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2] + "\n")


def test_a_garbled_metrics_line_is_read_around_from_the_checkpoint(cli, digits_run):
    garble(digits_run)
    result = cli("report", digits_run)
    assert result.exit_code == 0, result.output
    assert json.loads((digits_run / "report.json").read_text())["runs"][str(digits_run)]["epochs"] == 2
    result = cli("train", "--resume", digits_run, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in read_metrics(digits_run)] == [1, 2, 3]


def test_a_garbled_metrics_line_of_an_old_run_is_one_line_naming_it(cli, digits_run):
    """Checkpoints from before they carried the rows: metrics.jsonl is all there is."""
    for name in ("best.pt", "last.pt"):
        state = torch.load(digits_run / "checkpoints" / name, weights_only=True)
        del state["metrics"]
        torch.save(state, digits_run / "checkpoints" / name)
    garble(digits_run)
    for args in (["report", digits_run], ["train", "--resume", digits_run, "--set", "train.epochs=3"]):
        line = one_line_error(cli(*args))
        assert "metrics.jsonl line 2 is damaged" in line and "delete that line" in line, line


# --- OS errors on writing: one line naming the path ----------------------------------------------

def test_runs_dir_that_is_a_file_is_one_line(cli, workdir, tiny):
    (workdir / "afile").write_text("")
    line = one_line_error(cli("train", *set_args(tiny + ["train.runs_dir=afile"])))
    assert "train.runs_dir 'afile' is a file" in line
    line = one_line_error(cli("train", *set_args(tiny + ["train.runs_dir=afile/runs"])))
    assert "afile/runs" in line and os.strerror(errno.ENOTDIR) in line


def test_a_full_disk_mid_run_is_one_line_and_the_last_epoch_is_kept(cli, workdir, tiny, monkeypatch):
    fsync, log = os.fsync, TrainLog.write
    full = [False]

    def fill_disk_at_epoch_2(self, line):  # the disk fills up while epoch 2 trains
        log(self, line)
        full[0] = full[0] or line.startswith("epoch 2/")

    def fsync_or_full(fd):
        if full[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(TrainLog, "write", fill_disk_at_epoch_2)
    monkeypatch.setattr(os, "fsync", fsync_or_full)
    line = one_line_error(cli("train", *set_args(tiny + ["train.best_metric=last"]), "--name", "full"))
    run = Path("runs") / "full"
    assert f"cannot write {run / 'checkpoints' / 'best.pt'}: No space left on device" in line
    assert "free some space" in line and f"perceiver train --resume {run}" in line
    assert checkpoint.load(run / "checkpoints" / "last.pt")["epoch"] == 1  # the saved epoch is intact
    assert leftovers(run) == []

    monkeypatch.setattr(os, "fsync", fsync)  # space freed: the run continues
    assert cli("train", "--resume", run).exit_code == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_eval_and_report_that_cannot_write_are_one_line(cli, digits_run, workdir):
    (digits_run / "eval_test.json").mkdir()  # a folder where the file should go
    line = one_line_error(cli("eval", digits_run))
    assert "eval_test.json" in line and os.strerror(errno.EISDIR) in line
    (workdir / "afile").write_text("")
    line = one_line_error(cli("report", digits_run, "--out", workdir / "afile" / "report"))
    assert "afile" in line and "a file stands where a folder is needed" in line


def test_a_write_helper_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {}, "config": {}, "epoch": 1}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device"):
        checkpoint.save({"model": {}, "config": {}, "epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1 and leftovers(tmp_path) == []

"""The callback seam: what a run writes and shows happens at named moments, on rank 0, in an order
that makes a kill harmless; a user's own callback (from Python) sees the same moments."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import TINY
from perceiver_cli.data.sources import load_for_recipe
from perceiver_cli.engine.callbacks import Callback, Checkpoints, Display, MetricsFiles, TrainLog
from perceiver_cli.engine.train import resume_run, start_run
from perceiver_cli.recipe import load_recipe


class Recorder(Callback):
    """Notes each moment, and what was on disk when the epoch's end reached it."""

    def __init__(self):
        self.moments, self.on_disk, self.states = [], [], []

    def run_start(self, trainer, notes):
        self.moments.append("run_start")
        self.notes = notes

    def fit_start(self, trainer):
        self.moments.append("fit_start")

    def epoch_start(self, trainer, epoch, steps):
        self.moments.append(("epoch_start", epoch, steps))

    def step_end(self, trainer, stats):
        self.moments.append("stats" if stats is not None else "step")

    def mid_epoch(self, trainer, state):
        self.moments.append("mid_epoch")
        self.states.append(state)

    def epoch_end(self, trainer, epoch, row, improved):
        self.moments.append(("epoch_end", epoch))
        run = trainer.run_dir
        last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        self.on_disk.append((last["epoch"], [r["epoch"] for r in rows], row == rows[-1]))

    def close(self):
        self.moments.append("close")


def start(tmp_path: Path, overrides: list[str], recorder: Recorder):
    recipe, path = load_recipe(None, TINY + [f"train.runs_dir={tmp_path}", "train.device=cpu"] + overrides)
    return start_run(recipe, path, load_for_recipe(recipe.data), quiet=True, device="cpu", callbacks=[recorder])


def test_a_users_callback_sees_every_moment_after_the_runs_own_files_are_written(tmp_path):
    recorder = Recorder()
    trainer = start(tmp_path, ["train.epochs=2", "train.batch_size=128"], recorder)
    assert recorder.moments == ["run_start"]
    assert any(note.startswith("data: ") for note in recorder.notes)  # the residency choice is a note
    trainer.fit()
    steps = trainer.steps_per_epoch
    per_epoch = ["stats" if step % 10 == 0 or step == steps - 1 else "step" for step in range(steps)]
    assert recorder.moments == (["run_start", "fit_start"]
                                + [("epoch_start", 1, steps), *per_epoch, ("epoch_end", 1)]
                                + [("epoch_start", 2, steps), *per_epoch, ("epoch_end", 2)] + ["close"])
    # when a user's callback runs, the epoch is committed: last.pt and the metrics files hold it
    assert recorder.on_disk == [(1, [1], True), (2, [1, 2], True)]
    log = (trainer.run_dir / "train.log").read_text()
    assert all(note in log for note in recorder.notes)


def test_mid_epoch_checkpoints_reach_callbacks_with_the_position(tmp_path):
    recorder = Recorder()
    trainer = start(tmp_path, ["train.epochs=1", "train.batch_size=128", "train.checkpoint_every_steps=5"], recorder)
    trainer.fit()
    assert recorder.moments.count("mid_epoch") == (trainer.steps_per_epoch - 1) // 5
    assert [s["position"]["step"] for s in recorder.states] == [5 * (i + 1) for i in range(len(recorder.states))]
    assert all(s["epoch"] == 0 for s in recorder.states)  # no epoch finished yet: resume starts inside epoch 1


def test_the_default_callbacks_run_in_the_order_that_makes_a_kill_harmless(tmp_path):
    trainer = start(tmp_path, ["train.epochs=1"], Recorder())
    kinds = [type(c) for c in trainer.callbacks]
    # the log line, then best.pt and last.pt (the commit point), then the metrics files, the display
    assert kinds.index(TrainLog) < kinds.index(Checkpoints) < kinds.index(MetricsFiles) < kinds.index(Display)
    assert kinds[-1] is Recorder  # a user's callbacks come after the run's own
    trainer.fit()


def test_a_resumed_run_tells_its_callbacks_where_it_resumed(tmp_path):
    first = start(tmp_path, ["train.epochs=1", "train.name=again"], Recorder())
    first.fit()
    recorder = Recorder()
    resumed = resume_run(first.run_dir, load_for_recipe, ["train.epochs=2"], quiet=True, device="cpu",
                         callbacks=[recorder])
    assert "resumed at epoch 2 (world 1)" in recorder.notes
    resumed.fit()
    assert [m for m in recorder.moments if isinstance(m, tuple) and m[0] == "epoch_end"] == [("epoch_end", 2)]
    assert recorder.moments[-1] == "close"

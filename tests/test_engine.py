"""The training engine through its Python API: checkpoints, reproducible resume, learning-rate
schedules, the train/val split and divergence."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY
from perceiver_cli.data.prepared import PreparedDataset, Split
from perceiver_cli.data.sources import load_for_recipe
from perceiver_cli.data.splits import split_train_val
from perceiver_cli.engine.display import TrainingDisplay
from perceiver_cli.engine.optim import build_scheduler, lr_factor
from perceiver_cli.engine.train import resume_run, start_run
from perceiver_cli.errors import UserError
from perceiver_cli.recipe import OptimConfig, load_recipe
from perceiver_cli.runs import checkpoint
from perceiver_cli.runs.metrics import read_metrics


def train(runs_dir: Path, overrides: list[str]):
    """A real (tiny) digits training run into runs_dir; returns its TrainResult."""
    recipe, path = load_recipe(None, TINY + [f"train.runs_dir={runs_dir}"] + overrides)
    trainer = start_run(recipe, path, load_for_recipe(recipe.data), quiet=True, device="cpu")
    return trainer.fit()


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)["model"]


# --- checkpoints ---------------------------------------------------------------------------------

def sample_state() -> dict:
    return {
        "format": "perceiver-checkpoint/1",
        "model": {"layer.weight": torch.randn(3, 4), "layer.bias": torch.zeros(3)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "epoch": 4,
        "best": {"epoch": 3, "metric": "val_accuracy", "value": 0.5},
        "config": {"train": {"epochs": 10}, "optim": {"betas": [0.9, 0.999]}},
        "classes": ["a", "b", "c"],
        "normalization": None,
    }


def test_checkpoint_round_trip(tmp_path):
    state = sample_state()
    path = tmp_path / "deep" / "er" / "last.pt"  # missing folders are created
    checkpoint.save(state, path)
    loaded = checkpoint.load(path)
    assert set(loaded) == set(state)
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    for key in ("optimizer", "epoch", "best", "config", "classes", "normalization"):
        assert loaded[key] == state[key], key


def test_checkpoint_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    first = sample_state()
    checkpoint.save(first, path)
    second = sample_state()
    second["epoch"] = 5
    checkpoint.save(second, path)  # replaces
    assert checkpoint.load(path)["epoch"] == 5
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]

    # a save that fails half-way keeps the previous file intact and leaves nothing behind
    before = path.read_bytes()
    broken = sample_state()
    broken["unpicklable"] = lambda: None
    with pytest.raises(Exception):
        checkpoint.save(broken, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


class Custom:  # an arbitrary class: weights_only loading must refuse to rebuild it
    def __init__(self):
        self.value = 1


class OpensAFile:  # unpickling this would create a file: proof of code running during load
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"model": {}, "config": {}, "extra": Custom()}, path)
    with pytest.raises(UserError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_checkpoint_load_never_runs_code_from_the_file(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": {}, "config": {}, "x": OpensAFile(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    assert not marker.exists()
    with pytest.raises(UserError):
        checkpoint.load(path)
    assert not marker.exists()


def test_checkpoint_load_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        checkpoint.load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a perceiver checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(UserError, match="garbage.pt"):
        checkpoint.load(tmp_path / "garbage.pt")


def test_checkpoint_find(tmp_path):
    run = tmp_path / "run"
    checkpoint.save(sample_state(), run / "checkpoints" / "last.pt")
    assert checkpoint.find(run) == run / "checkpoints" / "last.pt"  # no best.pt yet: falls back
    checkpoint.save(sample_state(), run / "checkpoints" / "best.pt")
    assert checkpoint.find(run) == run / "checkpoints" / "best.pt"
    assert checkpoint.find(run, prefer="last") == run / "checkpoints" / "last.pt"
    assert checkpoint.find(run / "checkpoints" / "last.pt") == run / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match="no such run directory"):
        checkpoint.find(tmp_path / "nothing")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(UserError, match="best.pt"):
        checkpoint.find(tmp_path / "empty_run")


# --- resume reproduces an uninterrupted run -------------------------------------------------------

# dropout and augmentation draw random numbers every step: resume must replay the same streams
RANDOM = ["model.dropout=0.1", "data.augment.random_crop_padding=1", "data.augment.horizontal_flip=true"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """3 epochs in one go (the digits schedule: cosine with 2 warmup epochs)."""
    return train(tmp_path_factory.mktemp("straight"), RANDOM + ["train.epochs=3", "train.name=straight"])


def assert_same_run(resumed_dir: Path, straight) -> None:
    rows = read_metrics(resumed_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for mine, theirs in zip(rows, straight.rows):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5), (mine["epoch"], key, mine[key], theirs[key])
    a, b = weights(resumed_dir), weights(straight.run_dir)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-5, f"resumed weights differ from the uninterrupted run by up to {worst}"


def test_resume_after_extending_epochs_matches_one_uninterrupted_run(tmp_path, straight_run):
    first = train(tmp_path, RANDOM + ["train.epochs=2", "train.name=extended"])
    assert [r["epoch"] for r in first.rows] == [1, 2]
    trainer = resume_run(first.run_dir, load_for_recipe, ["train.epochs=3"], quiet=True, device="cpu")
    assert trainer.start_epoch == 3
    trainer.fit()
    assert_same_run(first.run_dir, straight_run)


def test_interrupted_run_resumes_to_the_same_result(tmp_path, straight_run, monkeypatch):
    """A 3-epoch run stopped (Ctrl-C) right after epoch 2 was saved, resumed with no changes."""
    original_end = TrainingDisplay.end_epoch

    def end_then_interrupt(self, row):  # the last thing an epoch does, after every file is written
        original_end(self, row)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingDisplay, "end_epoch", end_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, RANDOM + ["train.epochs=3", "train.name=interrupted"])
    monkeypatch.setattr(TrainingDisplay, "end_epoch", original_end)

    run_dir = tmp_path / "interrupted"
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    resume_run(run_dir, load_for_recipe, [], quiet=True, device="cpu").fit()
    assert_same_run(run_dir, straight_run)


def test_weight_averaging_is_what_validation_and_checkpoints_hold_and_it_resumes(tmp_path):
    """train.ema_decay: val metrics and checkpoints' "model" are the averaged weights, the trained
    weights ride along for resume, and a resumed run ends where an uninterrupted one does."""
    ema = RANDOM + ["train.ema_decay=0.9"]
    straight = train(tmp_path / "a", ema + ["train.epochs=3", "train.name=straight"])
    state = torch.load(straight.run_dir / "checkpoints" / "last.pt", weights_only=True)
    averaged, trained = state["model"], state["training_model"]
    assert averaged.keys() == trained.keys()
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)
    assert state["ema_updates"] == 3 * math.ceil(1293 / 64)  # one update per optimiser step

    first = train(tmp_path / "b", ema + ["train.epochs=2", "train.name=resumed"])
    resume_run(first.run_dir, load_for_recipe, ["train.epochs=3"], quiet=True, device="cpu").fit()
    assert_same_run(first.run_dir, straight)
    resumed = torch.load(first.run_dir / "checkpoints" / "last.pt", weights_only=True)["training_model"]
    assert max((resumed[k] - trained[k]).abs().max().item() for k in trained) <= 1e-5


# --- learning-rate schedules -----------------------------------------------------------------------

def optim(**values) -> OptimConfig:
    return OptimConfig(**values)


def test_warmup_is_linear_from_zero():
    config = optim(scheduler="constant", warmup_epochs=4)
    for epoch, expected in [(0, 0.0), (0.5, 0.125), (1, 0.25), (2, 0.5), (3, 0.75), (3.9, 0.975), (4, 1.0), (9, 1.0)]:
        assert lr_factor(config, epoch, 10) == pytest.approx(expected), epoch


def test_cosine_starts_at_one_and_ends_at_min_lr_ratio():
    config = optim(scheduler="cosine", min_lr_ratio=0.1)
    assert lr_factor(config, 0, 10) == pytest.approx(1.0)
    assert lr_factor(config, 5, 10) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: the mean
    assert lr_factor(config, 10, 10) == pytest.approx(0.1)
    assert lr_factor(config, 12, 10) == pytest.approx(0.1)  # never below the floor
    values = [lr_factor(config, e / 4, 10) for e in range(41)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decreasing


def test_cosine_after_warmup():
    config = optim(scheduler="cosine", warmup_epochs=2, min_lr_ratio=0.0)
    assert lr_factor(config, 1, 10) == pytest.approx(0.5)
    assert lr_factor(config, 2, 10) == pytest.approx(1.0)  # continuous at the end of warmup
    assert lr_factor(config, 6, 10) == pytest.approx(0.5)  # half-way through the cosine part
    assert lr_factor(config, 10, 10) == pytest.approx(0.0, abs=1e-12)


def test_multistep_multiplies_by_gamma_at_each_milestone():
    config = optim(scheduler="multistep", milestones=[2, 5], gamma=0.1)
    for epoch, expected in [(0, 1.0), (1.99, 1.0), (2, 0.1), (4.5, 0.1), (5, 0.01), (9, 0.01)]:
        assert lr_factor(config, epoch, 10) == pytest.approx(expected), epoch


def test_step_schedule():
    config = optim(scheduler="step", step_size=3, gamma=0.5)
    assert [lr_factor(config, e, 10) for e in range(7)] == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])


def test_exponential_decays_by_gamma_per_epoch():
    config = optim(scheduler="exponential", gamma=0.5)
    assert [lr_factor(config, e, 10) for e in range(5)] == pytest.approx([1, 0.5, 0.25, 0.125, 0.0625])
    assert lr_factor(config, 2.5, 10) == pytest.approx(0.25)  # per epoch, not per step


def test_scheduler_steps_per_optimiser_step_in_fractional_epochs():
    config = optim(scheduler="cosine", warmup_epochs=1, lr=0.01)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, total_epochs=3, steps_per_epoch=4)
    seen = [optimizer.param_groups[0]["lr"]]
    for _ in range(12):
        optimizer.step()
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
    expected = [0.01 * lr_factor(config, step / 4, 3) for step in range(13)]
    assert seen == pytest.approx(expected)
    assert seen[2] == pytest.approx(0.005)  # half-way through the 1-epoch warmup
    assert seen[4] == pytest.approx(0.01)


# --- train / val split ---------------------------------------------------------------------------

def synthetic(counts=(50, 30, 20), with_val: bool = False) -> PreparedDataset:
    """x holds each sample's id, so splits can be traced back to the samples."""
    y = np.concatenate([np.full(n, label) for label, n in enumerate(counts)]).astype(np.int64)
    x = np.arange(len(y), dtype=np.float32)[:, None]
    splits = {"train": Split(x, y)}
    if with_val:
        splits["val"] = Split(np.array([[1000.0], [1001.0]], dtype=np.float32), np.array([0, 2]))
    return PreparedDataset("synthetic", ["a", "b", "c"], {"kind": "sequence", "shape": [1]}, splits)


def test_split_train_val_carves_a_stratified_seeded_val_split():
    dataset = synthetic()
    (train_x, train_y), (val_x, val_y) = split_train_val(dataset, 0.2, seed=0)
    assert np.bincount(val_y, minlength=3).tolist() == [10, 6, 4]  # 20 % of every class
    assert np.bincount(train_y, minlength=3).tolist() == [40, 24, 16]
    train_ids, val_ids = train_x[:, 0].astype(int), val_x[:, 0].astype(int)
    assert not set(train_ids) & set(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(100))
    all_y = dataset.split("train").y
    assert (all_y[train_ids] == train_y).all() and (all_y[val_ids] == val_y).all()  # labels travel along

    (_, _), (again_x, _) = split_train_val(dataset, 0.2, seed=0)
    assert np.array_equal(again_x, val_x)  # same seed, same split
    (_, _), (other_x, _) = split_train_val(dataset, 0.2, seed=1)
    assert not np.array_equal(other_x, val_x)  # the seed chooses it


def test_split_train_val_uses_the_datasets_own_val_split():
    dataset = synthetic(with_val=True)
    (train_x, train_y), (val_x, val_y) = split_train_val(dataset, 0.2, seed=0)
    assert np.array_equal(train_x, dataset.split("train").x) and np.array_equal(train_y, dataset.split("train").y)
    assert val_x[:, 0].tolist() == [1000.0, 1001.0] and val_y.tolist() == [0, 2]


def test_digits_training_validates_on_a_held_out_tenth():
    dataset = load_for_recipe(load_recipe(None)[0].data)
    (train_x, train_y), (val_x, val_y) = split_train_val(dataset, 0.1, seed=0)
    assert len(train_y) + len(val_y) == len(dataset.split("train").y) == 1438
    assert len(val_y) == pytest.approx(143.8, abs=6)
    assert set(np.unique(val_y)) == set(range(10))


# --- divergence ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A run at lr 1e6 (two large batches per epoch keep it short): (the UserError, its run dir)."""
    runs = tmp_path_factory.mktemp("diverge")
    with pytest.raises(UserError) as info:
        train(runs, ["optim.lr=1e6", "optim.warmup_epochs=0", "train.batch_size=1024", "train.name=boom"])
    return info.value, runs / "boom"


def test_divergence_is_a_user_error(diverged):
    error, run_dir = diverged
    message = str(error)
    assert "diverged" in message
    assert "optim.lr" in message  # says what to change
    assert "\n" not in message
    assert error.exit_code == 2
    if (run_dir / "checkpoints" / "last.pt").is_file():  # diverged after an epoch was saved: kept
        for row in read_metrics(run_dir):  # no non-finite epoch was recorded
            assert math.isfinite(row["train_loss"])
    else:  # in the first epoch: nothing to resume, so no run directory is left
        assert not run_dir.exists() and f"{run_dir} is removed" in message


def test_divergence_message_points_only_at_checkpoints_that_exist(diverged):
    error, run_dir = diverged
    if "checkpoints" in str(error):
        assert (run_dir / "checkpoints" / "last.pt").is_file(), str(error)

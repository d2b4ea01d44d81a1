"""Experiment trackers (train.loggers): TensorBoard, MLflow and W&B get a point of the training curve
every 10 steps and every epoch's row, each read back here from what it wrote (an event file, an MLflow
file store, a W&B offline run); a user's own callback from Python sees the epoch rows. Never the
network: MLflow writes a local file store, W&B runs offline."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from conftest import TINY, set_args
from perceiver_cli.data.sources import load_for_recipe
from perceiver_cli.engine.optim import lr_factor
from perceiver_cli.engine.train import resume_run, start_run
from perceiver_cli.recipe import load_recipe

INSTALLED = ["tensorboard"] + [name for name in ("mlflow", "wandb") if importlib.util.find_spec(name)]
# a schedule that moves every step (warmup, then cosine), so train/lr shows which step it belongs to
SCHEDULE = ["train.epochs=2", "train.batch_size=64", "optim.scheduler=cosine", "optim.warmup_epochs=0.5",
            "train.device=cpu"]


def offline_env(mp: pytest.MonkeyPatch) -> None:
    """W&B offline and quiet, without its system-metrics sampler; MLflow's default store (no server)."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB__DISABLE_STATS": "true",
                        "WANDB__DISABLE_META": "true", "WANDB_DISABLE_GIT": "true"}.items():
        mp.setenv(name, value)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT", "WANDB_DIR"):
        mp.delenv(name, raising=False)


def train(runs: Path, overrides: list[str], callbacks=()):
    recipe, path = load_recipe(None, TINY + SCHEDULE + [f"train.runs_dir={runs}"] + overrides)
    trainer = start_run(recipe, path, load_for_recipe(recipe.data), quiet=True, device="cpu", callbacks=callbacks)
    return trainer, trainer.fit()


def curve_points(trainer, epochs: int) -> list[int]:
    """The global steps that get a point: every 10th step of an epoch and its last (1-based)."""
    per = trainer.steps_per_epoch
    return [(epoch - 1) * per + step + 1 for epoch in range(1, epochs + 1) for step in range(per)
            if step % 10 == 0 or step == per - 1]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny 2-epoch digits run with every installed tracker: (trainer, result)."""
    runs = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        offline_env(mp)
        return train(runs, [f"train.loggers=[{', '.join(INSTALLED)}]"])


def test_tensorboard_gets_the_loss_and_lr_every_10_steps_and_the_epoch_scalars(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, result = tracked
    events = EventAccumulator(str(result.run_dir)).Reload()
    points = curve_points(trainer, 2)
    loss, lr = events.Scalars("train/loss"), events.Scalars("train/lr")
    assert [e.step for e in loss] == points == [e.step for e in lr]
    optim, per = trainer.recipe.optim, trainer.steps_per_epoch
    # the lr the step trained with: warmup, then cosine, as the schedule gives it
    assert [e.value for e in lr] == pytest.approx([optim.lr * lr_factor(optim, (s - 1) / per, 2) for s in points], rel=1e-6)
    # each point is the mean over the samples since the previous one: weighted, they are the epoch's loss
    batch, count = trainer.recipe.train.batch_size, trainer.train_count
    for epoch in (1, 2):
        seen = [min((s - (epoch - 1) * per) * batch, count) for s in points if (epoch - 1) * per < s <= epoch * per]
        values = [e.value for e in loss if (epoch - 1) * per < e.step <= epoch * per]
        total = sum(v * (b - a) for v, a, b in zip(values, [0] + seen[:-1], seen))
        assert total / count == pytest.approx(result.rows[epoch - 1]["train_loss"], rel=1e-4)
    assert [e.step for e in events.Scalars("accuracy/val")] == [1, 2]  # the epoch scalars stay as they were
    assert "attention/stage_0" in events.Tags()["images"]  # tensorboard in train.loggers captures attention too


def test_an_mlflow_file_store_in_the_run_directory_holds_params_metrics_and_the_best_checkpoint(tracked):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    trainer, result = tracked
    client = MlflowClient((result.run_dir / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("perceiver").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.latent_dim"] == "32" and params["train.loggers"]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == curve_points(trainer, 2)
    assert len(client.get_metric_history(run.info.run_id, "train/lr")) == len(history)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert run.data.metrics["val_accuracy"] == pytest.approx(result.rows[-1]["val_accuracy"])
    assert run.data.tags["best_checkpoint"] == str((result.run_dir / "checkpoints" / "best.pt").resolve())
    assert run.data.tags["best_epoch"] == str(result.best["epoch"])


def wandb_records(path: Path):
    """The records of a .wandb file (a LevelDB-style log of protobuf Records in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pieces = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        body, position = data[position + 7:position + 7 + length], position + 7 + length
        pieces = body if kind in (1, 2) else pieces + body  # full / first, or middle / last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def wandb_run(folder: Path) -> tuple[list[dict], dict, dict]:
    """(history rows, summary, config) of the offline run in `folder`."""
    [file] = folder.glob("run-*.wandb")
    history, summary, config = [], {}, {}
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    return history, summary, config


def test_a_wandb_offline_run_in_the_run_directory_holds_the_same(tracked):
    pytest.importorskip("wandb")
    trainer, result = tracked
    [folder] = (result.run_dir / "wandb").glob("offline-run-*")
    history, summary, config = wandb_run(folder)
    assert [row["_step"] for row in history if "train/loss" in row] == curve_points(trainer, 2)
    assert [row["epoch"] for row in history if "epoch/val_accuracy" in row] == [1, 2]
    assert summary["epoch/val_accuracy"] == pytest.approx(result.rows[-1]["val_accuracy"])
    assert summary["best_checkpoint"] == str((result.run_dir / "checkpoints" / "best.pt").resolve())
    assert config["train"]["epochs"] == 2


def test_a_resumed_run_continues_its_mlflow_and_wandb_runs(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient

    offline_env(monkeypatch)
    trainer, result = train(tmp_path, ["train.epochs=1", "train.loggers=[mlflow, wandb]"])
    resumed = resume_run(result.run_dir, load_for_recipe, ["train.epochs=2"], quiet=True, device="cpu")
    resumed.fit()
    client = MlflowClient((result.run_dir / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("perceiver").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    first, second = sorted((result.run_dir / "wandb").glob("offline-run-*"))  # `wandb sync` joins them: one id
    assert first.name.rsplit("-", 1)[1] == second.name.rsplit("-", 1)[1]
    assert [row["epoch"] for row in wandb_run(second)[0] if "epoch" in row] == [2]


def test_an_unknown_logger_is_one_line_naming_the_choices(cli, workdir):
    result = cli("train", *set_args(TINY + ["train.loggers=[tensorboard, comet]"]))
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "train.loggers" in line and "comet" in line and "'mlflow'" in line and "'wandb'" in line
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_logger_without_its_package_is_one_line_before_training(cli, workdir, monkeypatch, name):
    monkeypatch.setitem(__import__("sys").modules, name, None)  # import mlflow now fails, as when not installed
    result = cli("train", *set_args(TINY + [f"train.loggers={name}"]))
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert f"pip install 'perceiver-cli[{name}]'" in line and "train.loggers" in line
    assert not list((workdir / "runs").glob("*"))  # nothing trained, nothing left


def test_a_users_own_callback_gets_each_epochs_row_and_no_tracker_runs_by_default(tmp_path):
    from perceiver_cli.engine.callbacks import Callback

    class Rows(Callback):  # the README's example
        def __init__(self):
            self.rows = []

        def epoch_end(self, trainer, epoch, row, improved):
            self.rows.append((epoch, row["val_accuracy"], improved))

    rows = Rows()
    _, result = train(tmp_path, [], callbacks=[rows])
    assert [(epoch, accuracy) for epoch, accuracy, _ in rows.rows] == [(r["epoch"], r["val_accuracy"]) for r in result.rows]
    assert rows.rows[0][2] is True  # the first epoch is the best so far
    left = {path.name for path in result.run_dir.iterdir()}
    assert not {"mlruns", "wandb"} & left and not any(name.startswith("events.out") for name in left)

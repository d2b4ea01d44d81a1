"""Attention capture, `perceiver attention` and `perceiver report`: the captured maps are attention
(probability distributions), a trained model looks where the label is, the pictures and statistics
are written for images and point clouds, and bad input is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, set_args
from perceiver_cli.attention.stats import map_stats, token_mass
from perceiver_cli.data import prepared
from perceiver_cli.engine import capture as captures
from perceiver_cli.engine.capture import grid_order
from perceiver_cli.engine.runtime import InputTransform
from perceiver_cli.model import build_model
from perceiver_cli.recipe import ModelConfig
from test_cli import assert_user_error
from test_modelnet40 import POINT_MODEL, write_modelnet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAPS = ["train.save_attention_maps=true", "train.attention_interval=1", "train.attention_samples=1"]


def tiny_model(**kwargs):
    config = ModelConfig(**{**dict(num_latents=6, latent_dim=16, latent_blocks=1, latent_heads=2, num_bands=2,
                                   max_freq=4.0, cross_heads=2, cross_attends=2), **kwargs})
    return build_model(config, {"kind": "image", "shape": [8, 8, 1]}, 3)


# --- capture -----------------------------------------------------------------------------------------

def test_captured_weights_are_distributions_over_the_input_for_every_latent_and_head():
    torch.manual_seed(0)
    model = tiny_model()
    stored = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    transform = InputTransform({"kind": "image"}, {"mean": [0.5], "std": [0.25]}, torch.device("cpu"))
    captured = captures.capture(model, stored, np.array([0, 1, 2, 0, 1]), transform, torch.device("cpu"), epoch=3)
    assert captured.weights.shape == (2, 5, 2, 6, 64)  # stages, samples, heads, latents, tokens
    assert captured.weights.dtype == np.float16
    assert (captured.weights >= 0).all()
    np.testing.assert_allclose(captured.weights.astype(np.float64).sum(-1), 1.0, atol=3e-3)
    # the logits it reports are the model's own (SDPA path)
    with torch.no_grad():
        fast = model.eval()(transform(torch.from_numpy(stored)))
    np.testing.assert_array_equal(captured.predictions, fast.argmax(1).numpy())
    np.testing.assert_allclose(captured.probabilities, fast.softmax(1).numpy(), atol=1e-5)


def test_capture_files_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(permute_pixels=True)
    stored = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    transform = InputTransform({"kind": "image"}, None, torch.device("cpu"))
    captured = captures.capture(model, stored, np.array([0, 1]), transform, torch.device("cpu"), epoch=7)
    path = captures.save(captured, tmp_path / "attention")
    assert path.name == "epoch_0007.npz" and not list((tmp_path / "attention").glob(".*"))
    again = captures.load(path)
    np.testing.assert_array_equal(again.weights, captured.weights)
    np.testing.assert_array_equal(again.permutation, model.adapter.permutation.numpy())
    assert again.token_grid == (8, 8) and again.epoch == 7
    assert captures.saved_epochs(tmp_path) == {7: path}


def test_permuted_runs_are_put_back_in_image_order():
    permutation = np.array([2, 0, 3, 1])
    captured = captures.Capture(0, np.zeros((1, 1, 1, 1, 4), np.float16), np.zeros((1, 2, 2, 1), np.uint8),
                                np.array([0]), np.array([0]), np.ones((1, 1), np.float32), (2, 2), 1, permutation)
    weights = np.array([1.0, 0.0, 0.0, 0.0])  # all on token 0, which sits at grid position 2
    assert grid_order(captured, weights).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_the_tensorboard_preview_shows_where_an_image_is_read_and_any_point_cloud():
    from perceiver_cli.engine.preview import tensorboard_image

    weights = np.zeros((1, 2, 1, 1, 4), np.float16)
    weights[0, :, 0, 0, 0] = 1.0  # all attention on token 0, which sits at grid position 2: bottom left
    captured = captures.Capture(0, weights, np.zeros((2, 2, 2, 1), np.uint8), np.array([0, 1]), np.array([0, 1]),
                                np.eye(2, dtype=np.float32), (2, 2), 1, np.array([2, 0, 3, 1]))
    image = tensorboard_image(captured, ["a", "b"], height=8)
    assert image.dtype == np.uint8 and image.shape == (2 * (14 + 8), 160, 3)  # a captioned row per sample
    overlay = image[14:22, 8:16].astype(int)  # the second panel of the first row, 4 px per input pixel
    assert (overlay[4:, :4] != overlay[:4, :4]).any() and (overlay[:4, :4] == overlay[:4, 4:]).all()
    points = captures.Capture(0, np.full((1, 1, 1, 1, 5), 0.2, np.float16), np.zeros((1, 5, 3), np.float32),
                              np.array([0]), np.array([0]), np.ones((1, 1), np.float32), (), 1, None)
    assert tensorboard_image(points, ["a"]).ndim == 3


def test_probe_is_a_few_per_class_and_fixed_by_the_seed():
    labels = np.repeat(np.arange(4), 10)
    a = captures.probe_indices(labels, 2, seed=0)
    assert np.bincount(labels[a]).tolist() == [2, 2, 2, 2]
    assert np.array_equal(a, captures.probe_indices(labels, 2, seed=0))
    assert not np.array_equal(a, captures.probe_indices(labels, 2, seed=1))


def test_map_statistics_on_hand_made_maps():
    uniform = np.full((1, 4, 100), 0.01)
    stats = map_stats(uniform, (10, 10))
    assert stats["entropy"] == pytest.approx(1.0) and stats["top5_mass"] == pytest.approx(0.05)
    focused = np.zeros((1, 4, 100))
    focused[:, :, 37] = 1.0
    stats = map_stats(focused, (10, 10))
    assert stats["entropy"] == pytest.approx(0.0, abs=1e-9) and stats["top5_mass"] == pytest.approx(1.0)
    assert stats["peaks"][0] == {"token": [3, 7], "mass": 1.0}
    # two latents each the strongest reader of half the tokens
    split = np.zeros((1, 2, 100))
    split[0, 0, :50] = 1 / 50
    split[0, 1, 50:] = 1 / 50
    stats = map_stats(split)
    assert stats["latents_used"] == 2 and stats["effective_latents"] == pytest.approx(2.0)
    assert token_mass(split).sum() == pytest.approx(1.0)


# --- a trained model looks where the label is -------------------------------------------------------

def quadrant_dataset(n: int = 240, seed: int = 0) -> prepared.PreparedDataset:
    """8x8 images, constant grey except the top-left 4x4 quadrant, which alone carries the class
    (dark noise for class 0, bright noise for class 1)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = np.full((n, 8, 8, 1), 128, dtype=np.uint8)
    for i in range(n):
        low, high = (0, 90) if y[i] == 0 else (166, 256)
        x[i, :4, :4, 0] = rng.integers(low, high, (4, 4))
    split = lambda s: prepared.Split(x[s], y[s].astype(np.int64))  # noqa: E731
    return prepared.PreparedDataset("quadrant", ["dark", "bright"], {"kind": "image", "shape": [8, 8, 1]},
                                    {"train": split(slice(0, 200)), "val": split(slice(200, n))},
                                    normalization=prepared.channel_stats(x))


def test_a_trained_model_puts_its_attention_on_the_informative_quadrant(workdir, cli):
    prepared.write(quadrant_dataset(), workdir / "data" / "quadrant")
    overrides = ["data.dataset=quadrant", "model.num_latents=4", "model.latent_dim=32", "model.latent_blocks=1",
                 "model.latent_heads=2", "model.num_bands=4", "model.max_freq=8", "model.dropout=0", "model.patch_size=1",
                 "train.epochs=8", "train.batch_size=16", "optim.lr=0.003", "optim.scheduler=constant"] + MAPS
    result = cli("train", *set_args(overrides), "--name", "quadrant")
    assert result.exit_code == 0, result.output
    last = captures.load(captures.saved_epochs(workdir / "runs" / "quadrant")[8])
    assert (last.predictions == last.labels).all()
    mass = np.mean([token_mass(last.weights[0, i].astype(np.float64)).reshape(8, 8) for i in range(len(last.labels))], axis=0)
    informative, constant = mass[:4, :4].sum(), mass[4:, 4:].sum()
    # an untrained model spreads it evenly (measured 0.26 vs 0.24); trained: 0.30-0.38 vs 0.13-0.20 over 4 seeds
    assert informative > 0.28 and informative > 1.3 * constant, (informative, constant)


# --- the command -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_with_maps(tmp_path_factory, cli):
    base = tmp_path_factory.mktemp("maps")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        result = cli("train", *set_args(TINY + MAPS + ["train.tensorboard=true"]))
    assert result.exit_code == 0, result.output
    return base


def test_training_saves_one_capture_per_interval_and_tensorboard_scalars(digits_with_maps):
    run = digits_with_maps / "runs" / "digits"
    assert sorted(captures.saved_epochs(run)) == [1, 2]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    assert {"loss/train", "loss/val", "accuracy/val", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("accuracy/val")] == [1, 2]
    assert "attention/stage_0" in events.Tags()["images"]


def test_attention_command_draws_every_saved_epoch_and_the_evolution(digits_with_maps, cli, monkeypatch):
    monkeypatch.chdir(digits_with_maps)
    result = cli("attention", "runs/digits", "--epoch", "all", "--evolution", "--samples", 3, "--colormap", "magma")
    assert result.exit_code == 0, result.output
    folder = digits_with_maps / "runs" / "digits" / "attention"
    for name in ("epoch_0001_stage_0.png", "epoch_0002_stage_0.png", "evolution_stage_0.png"):
        assert (folder / name).read_bytes()[:8] == PNG_SIGNATURE
    stats = json.loads((folder / "stats.json").read_text())
    sample = stats["epochs"]["2"]["0"]["samples"][0]
    assert 0 <= sample["entropy"] <= 1 and 0 < sample["top5_mass"] <= 1 and sample["latents_used"] >= 1
    assert "entropy" in result.stdout and "effective latents" in result.stdout


def test_attention_for_one_head_in_svg_and_for_a_users_own_image(digits_with_maps, cli, monkeypatch, tmp_path):
    from PIL import Image

    monkeypatch.chdir(digits_with_maps)
    result = cli("attention", "runs/digits", "--head", 0, "--format", "svg", "--epoch", 1)
    assert result.exit_code == 0, result.output
    assert (digits_with_maps / "runs" / "digits" / "attention" / "epoch_0001_stage_0.svg").read_text().lstrip().startswith("<?xml")
    image = tmp_path / "my_seven.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(image)
    result = cli("attention", "runs/digits", "--input", image)
    assert result.exit_code == 0, result.output
    assert (digits_with_maps / "runs" / "digits" / "attention" / "input_my_seven_stage_0.png").is_file()


def test_attention_of_a_run_trained_without_maps(digits_run, cli, workdir):
    line = assert_user_error(cli("attention", digits_run))
    assert "no saved attention maps" in line and "train.save_attention_maps=true" in line and "--checkpoint best" in line
    result = cli("attention", digits_run, "--checkpoint", "best")
    assert result.exit_code == 0, result.output
    assert (workdir / digits_run / "attention" / "epoch_0002.npz").is_file()
    assert (workdir / digits_run / "attention" / "epoch_0002_stage_0.png").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--epoch", "7"], "--epoch 7: no attention maps saved for it"),
    (["--colormap", "rainbowz"], "--colormap 'rainbowz': matplotlib does not know it"),
    (["--stage", "3"], "--stage 3: the model has 1 cross-attend(s)"),
    (["--head", "5"], "--head 5: the cross-attention has 1 head(s)"),
])
def test_bad_attention_options_are_one_clear_line(digits_with_maps, cli, monkeypatch, args, expected):
    monkeypatch.chdir(digits_with_maps)
    assert expected in assert_user_error(cli("attention", "runs/digits", *args))


def test_attention_on_point_clouds_draws_the_cloud(cli, workdir):
    source = write_modelnet(workdir / "meshes", train=3, test=1, extras=False)
    assert cli("prepare", "modelnet40", "--from", source, "--points", 128).exit_code == 0
    result = cli("train", "modelnet40", *set_args(POINT_MODEL + MAPS + ["train.epochs=1", "data.val_fraction=0.34"]))
    assert result.exit_code == 0, result.output
    result = cli("attention", "runs/modelnet40", "--samples", 2)
    assert result.exit_code == 0, result.output
    assert (workdir / "runs" / "modelnet40" / "attention" / "epoch_0001_stage_0.png").read_bytes()[:8] == PNG_SIGNATURE


# --- report ------------------------------------------------------------------------------------------

def write_run(folder: Path, val: list[float], train: list[float]) -> Path:
    folder.mkdir(parents=True)
    rows = [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "train_accuracy": t, "val_loss": 1.2 / (i + 1),
             "val_accuracy": v, "lr": 0.001, "samples_per_s": 100.0 + i, "epoch_time_s": 1.0, "elapsed_s": i + 1.0}
            for i, (v, t) in enumerate(zip(val, train))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def report_summary(run: Path) -> dict:
    """The run's summary in the report.json that `perceiver report` wrote."""
    return json.loads((run / "report.json").read_text())["runs"][str(run)]


def test_report_summarises_one_run_with_the_dashboard_formulas(cli, workdir):
    run = write_run(workdir / "runs" / "a", val=[0.5, 0.7, 0.6], train=[0.5, 0.8, 0.9])
    (run / "eval_test.json").write_text(json.dumps({"accuracy": 0.65}))
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    summary = report_summary(run)
    assert summary["best_val_accuracy"] == 0.7 and summary["best_epoch"] == 2 and summary["test_accuracy"] == 0.65
    assert summary["overfitting"] == pytest.approx(0.3) and summary["generalisation"] == pytest.approx(0.7)
    assert summary["stability"] == pytest.approx(1 - np.std([0.5, 0.7, 0.6]), abs=1e-6)
    assert summary["convergence"] == pytest.approx(1 - abs(1 / 3 - 1 / 2), abs=1e-6)
    assert summary["improvement"] == pytest.approx(0.1)
    assert (run / "report.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "overfitting = max(0, train_acc - val_acc)" in result.stdout


def test_report_overlays_several_runs(cli, workdir):
    a = write_run(workdir / "runs" / "a", val=[0.5, 0.6], train=[0.5, 0.6])
    b = write_run(workdir / "runs" / "b", val=[0.4, 0.8], train=[0.5, 0.9])
    result = cli("report", a, b)
    assert result.exit_code == 0, result.output
    document = json.loads((workdir / "runs" / "report_a_vs_b.json").read_text())
    assert set(document["runs"]) == {str(a), str(b)}
    assert (workdir / "runs" / "report_a_vs_b.png").is_file()


def test_report_of_a_run_without_metrics_is_one_clear_line(cli, workdir):
    (workdir / "runs" / "empty").mkdir(parents=True)
    assert "no metrics.jsonl" in assert_user_error(cli("report", workdir / "runs" / "empty"))

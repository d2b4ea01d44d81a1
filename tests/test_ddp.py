"""Training on several ranks (DistributedDataParallel over gloo on this CPU) is training on one:
with the same global batch, 2 ranks end with the parameters and metrics of 1 process (to float
tolerance), with and without train.grad_accum, started by `--devices 2` or by torchrun itself; only
rank 0 writes. Under Adam one parameter is the exception, and why. And where the data lives
(resident or streamed) never changes the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, set_args
from perceiver_cli.data import prepared

# dropout off (its streams differ per rank by design), augmentation on (drawn for the global batch).
# IMAGES trains with the recipe's AdamW, POINTS with SGD (see assert_same_training for the difference)
IMAGES = TINY + ["train.epochs=1", "train.precision=fp32", "data.augment.random_crop_padding=1",
                 "data.augment.horizontal_flip=true"]
POINTS = TINY + ["train.epochs=2", "train.precision=fp32", "optim.name=sgd", "optim.lr=0.05", "train.batch_size=16", "data.dataset=blobs",
                 "data.root=data/blobs", "data.augment.point_scale=[0.9, 1.1]", "data.augment.jitter=0.01"]


def write_blobs(root: Path) -> Path:
    """A prepared point-cloud dataset: 3 classes of 64-point clouds, each a blob of its own shape."""
    rng = np.random.default_rng(0)
    def clouds(n):
        y = np.arange(n) % 3
        x = rng.normal(size=(n, 64, 3)) * np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0]])[y][:, None, :]
        return x.astype(np.float32), y.astype(np.int64)
    splits = {name: prepared.Split(*clouds(n)) for name, n in (("train", 90), ("val", 30))}
    dataset = prepared.PreparedDataset(name="blobs", classes=["x", "y", "z"], splits=splits,
                                       input_spec={"kind": "points", "shape": [64, 3], "coords": 3, "features": 0,
                                                   "scaling": "unit-sphere"})
    prepared.write(dataset, root)
    return root


def run_ranks(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def assert_same_training(one: Path, many: Path, adam: bool = False) -> None:
    """Every parameter to relative 1e-5 (the ranks sum their gradients in another order than one process).
    Under Adam the key half of each cross-attention's to_kv bias is the exception: its true gradient is 0
    (test_the_key_half_of_the_cross_attention_bias_has_no_true_gradient), so Adam, dividing by the
    gradient's own size, steps it by about lr in the direction of rounding noise, which another summation
    order draws differently (3e-4 after this epoch); it cannot change any output, so the metrics agree."""
    a, b = weights(one), weights(many)
    assert a.keys() == b.keys()
    for name in a:
        if adam and name.endswith("to_kv.proj.bias"):
            (keys_a, values_a), (keys_b, values_b) = a[name].chunk(2), b[name].chunk(2)
            assert relative_gap(values_a, values_b) < 1e-5, name
            assert relative_gap(keys_a, keys_b) < 1e-2, name  # lr-sized steps, never more
            continue
        assert relative_gap(a[name], b[name]) < 1e-5, (name, relative_gap(a[name], b[name]))
    rows_a = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (many / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_a] == [r["epoch"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key


def only_rank_0_wrote(run: Path, epochs: int) -> None:
    log = (run / "train.log").read_text().splitlines()
    assert sum(line.startswith("recipe ") for line in log) == 1
    assert [line.split()[1] for line in log if line.startswith("epoch ")] == [f"{e}/{epochs}" for e in range(1, epochs + 1)]
    assert "world 2" in log[0]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == epochs
    assert not [p for p in run.rglob(".*") if p.name != ".lock"], "temporary files left"


def test_two_gloo_ranks_started_by_devices_train_as_one_process(cli, workdir):
    assert cli("train", *set_args(IMAGES), "--name", "one", "--device", "cpu").exit_code == 0
    result = run_ranks(workdir, "-m", "perceiver_cli", "train", *set_args(IMAGES), "--name", "two",
                       "--devices", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("best.pt is") + result.stdout.count("best val_accuracy") == 1  # rank 0 speaks once
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["one", "two"]
    assert_same_training(workdir / "runs/one", workdir / "runs/two", adam=True)
    only_rank_0_wrote(workdir / "runs/two", epochs=1)


def test_the_key_half_of_the_cross_attention_bias_has_no_true_gradient():
    """A bias b added to every key adds q.b to all of a query's logits, which softmax ignores: what
    reaches it is rounding noise, against a real gradient for every other parameter."""
    from perceiver_cli.model import build_model
    from perceiver_cli.recipe import load_recipe

    recipe, _ = load_recipe(None, TINY)
    torch.manual_seed(0)
    model = build_model(recipe.model, {"kind": "image", "shape": [8, 8, 1]}, 10)
    F.cross_entropy(model(torch.randn(32, 8, 8, 1)), torch.arange(32) % 10).backward()
    grads = dict(model.named_parameters())
    keys, values = grads["cross_blocks.0.attention.to_kv.proj.bias"].grad.chunk(2)
    assert keys.norm() < 1e-6 * values.norm()
    smallest = min(p.grad.norm() for name, p in grads.items() if not name.endswith("to_kv.proj.bias"))
    assert smallest > 1e3 * keys.norm()


def test_two_ranks_under_torchrun_with_grad_accum_train_points_as_one_process(cli, workdir):
    write_blobs(workdir / "data" / "blobs")
    assert cli("train", *set_args(POINTS), "--name", "one", "--device", "cpu").exit_code == 0
    result = run_ranks(workdir, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       "-m", "perceiver_cli", "--quiet", "train", *set_args(POINTS + ["train.grad_accum=2"]),
                       "--name", "two", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["one", "two"]
    assert_same_training(workdir / "runs/one", workdir / "runs/two")
    only_rank_0_wrote(workdir / "runs/two", epochs=2)


def test_a_rank_that_fails_stops_all_with_one_line(workdir):
    result = run_ranks(workdir, "-m", "perceiver_cli", "train", *set_args(TINY + ["train.batch_size=63"]),
                       "--devices", "2", "--device", "cpu")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.batch_size 63" in lines[0] and "multiple of 2" in lines[0], result.stderr
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())


@pytest.mark.parametrize("residency", ["stream", "host"])
def test_streamed_data_trains_bit_identically_to_resident(cli, workdir, residency):
    write_blobs(workdir / "data" / "blobs")
    for name, where in (("resident", "device"), ("streamed", residency)):
        result = cli("train", *set_args(POINTS + [f"data.residency={where}"]), "--name", name, "--device", "cpu")
        assert result.exit_code == 0, result.output
    a, b = weights(workdir / "runs/resident"), weights(workdir / "runs/streamed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert f"data: data.residency={residency}" in (workdir / "runs/streamed/train.log").read_text()


def test_a_streamed_run_reads_its_inputs_from_the_files_never_into_memory(workdir):
    """data.residency=stream keeps the prepared arrays on disk (memory maps), the held-out share of
    train included (indices, not a copy), and train.log says where the data lives and why."""
    from perceiver_cli.data.sources import load_for_recipe
    from perceiver_cli.engine.train import start_run
    from perceiver_cli.recipe import load_recipe

    root = write_blobs(workdir / "data" / "blobs")
    (root / "val_x.npy").unlink()
    (root / "val_y.npy").unlink()
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["splits"]["val"]
    (root / "manifest.json").write_text(json.dumps(manifest))  # train only: validation is carved out of it
    recipe, path = load_recipe(None, POINTS + ["data.residency=stream", "data.val_fraction=0.2"])
    trainer = start_run(recipe, path, load_for_recipe(recipe.data, mmap=True), quiet=True, device="cpu")
    assert isinstance(trainer.train_data.x, np.memmap) and isinstance(trainer.val_data.x, np.memmap)
    assert (trainer.train_count, trainer.val_count) == (72, 18)
    assert trainer.steps_per_epoch == 5 and trainer.train_data.steps_per_epoch == 5  # 72 rows / 16, not 90 / 16
    assert "data: data.residency=stream (as set)" in (trainer.run_dir / "train.log").read_text()
    trainer.fit()

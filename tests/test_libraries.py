"""Where a library does the work, or a hand-written piece was kept: each pinned against a frozen copy
of what the project did before, so a later swap must give the same numbers and read the same files."""

from __future__ import annotations

import hashlib
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from perceiver_cli.atomic import atomic_writer
from perceiver_cli.data import memory
from perceiver_cli.data.npy import NpyWriter
from perceiver_cli.data.synthseg import BLUR, gaussian_blur
from perceiver_cli.engine.optim import build_scheduler
from perceiver_cli.recipe import OptimConfig


def reference_lr_factor(config, epoch: float, total_epochs: int) -> float:
    """engine/optim.py's lr_factor as it was when checkpoints were first written: the reference."""
    if config.warmup_epochs and epoch < config.warmup_epochs:
        return epoch / config.warmup_epochs
    whole = int(epoch)
    if config.scheduler == "constant":
        return 1.0
    if config.scheduler == "cosine":
        span = max(total_epochs - config.warmup_epochs, 1e-8)
        progress = min(max((epoch - config.warmup_epochs) / span, 0.0), 1.0)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.scheduler == "multistep":
        return config.gamma ** sum(whole >= m for m in config.milestones)
    if config.scheduler == "step":
        return config.gamma ** (whole // config.step_size)
    if config.scheduler == "exponential":
        return config.gamma**whole
    raise ValueError(config.scheduler)


SCHEDULES = {  # every scheduler and warmup the recipes use (recipes/*.yaml): (epochs, optim)
    "akoa": (100, dict(scheduler="exponential", gamma=0.995)),
    "akoa_finetune, cifar10_cpu, mnist": (20, dict(scheduler="cosine", warmup_epochs=1)),
    "bytes_ar": (12, dict(scheduler="cosine", warmup_epochs=0.1, min_lr_ratio=0.1)),
    "bytes_mlm": (2, dict(scheduler="cosine", warmup_epochs=0.1)),
    "cifar10_finetune, knee_seg": (4, dict(scheduler="cosine", warmup_epochs=0.5)),
    "digits, cifar10_gpu": (60, dict(scheduler="cosine", warmup_epochs=2)),
    "cifar10_fourier": (120, dict(scheduler="multistep", milestones=[84, 102, 114], gamma=0.1)),
    "imagenet": (120, dict(scheduler="multistep", warmup_epochs=1, milestones=[84, 102, 114], gamma=0.1)),
    "modelnet40": (120, dict(scheduler="multistep", milestones=[30, 60, 90], gamma=0.1)),
    "modelnet40_paper": (120, dict(scheduler="constant")),
    "step (default)": (100, dict(scheduler="step", step_size=30, gamma=0.1)),
    "constant with warmup": (10, dict(scheduler="constant", warmup_epochs=4)),
}


def sgd(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("steps_per_epoch", [3, 37])
def test_every_step_has_the_learning_rate_of_the_reference_formula(name, steps_per_epoch):
    epochs, values = SCHEDULES[name]
    config = OptimConfig(lr=3e-3, **values)
    optimizer = sgd(config.lr)
    scheduler = build_scheduler(optimizer, config, epochs, steps_per_epoch)
    for step in range(epochs * steps_per_epoch + 1):
        expected = config.lr * reference_lr_factor(config, step / steps_per_epoch, epochs)
        assert optimizer.param_groups[0]["lr"] == expected, (name, step)  # bit for bit
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("state", [
    # what a checkpoint's "scheduler" holds (a LambdaLR's state_dict), as written by an older torch ...
    {"base_lrs": [0.01], "last_epoch": 9, "verbose": False, "_step_count": 10, "_get_lr_called_within_step": False,
     "_last_lr": [0.01 * reference_lr_factor(OptimConfig(scheduler="cosine", warmup_epochs=1), 9 / 4, 3)],
     "lr_lambdas": [None]},
    None,  # ... and by this one, through torch.save and the weights-only torch.load that resume uses
])
def test_a_checkpoints_scheduler_state_resumes_at_the_same_learning_rate(state):
    config, epochs, per_epoch = OptimConfig(lr=0.01, scheduler="cosine", warmup_epochs=1), 3, 4
    if state is None:
        first = sgd(config.lr)
        running = build_scheduler(first, config, epochs, per_epoch)
        for _ in range(9):
            first.step()
            running.step()
        buffer = io.BytesIO()
        torch.save({"scheduler": running.state_dict()}, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)["scheduler"]
    optimizer = sgd(config.lr)
    scheduler = build_scheduler(optimizer, config, epochs, per_epoch)
    scheduler.load_state_dict(state)
    for step in range(10, epochs * per_epoch + 1):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == config.lr * reference_lr_factor(config, step / per_epoch, epochs)


@pytest.mark.parametrize("shape, dtype, chunk", [
    ((1000, 6, 5, 3), np.uint8, 64),  # images, in chunks that do not divide the rows
    ((257,), np.int64, 257),  # class labels, one chunk
    ((33, 7), np.float32, 1),  # a row per chunk
    ((0, 4, 4), np.uint8, 16),  # an empty split
])
@pytest.mark.parametrize("how", ["add_rows", "add"])
def test_the_chunked_npy_writer_writes_np_saves_bytes_and_their_sha256(tmp_path, shape, dtype, chunk, how):
    x = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    seen = []
    path = tmp_path / "x.npy"
    with atomic_writer(path) as fh:
        writer = NpyWriter(fh, x.shape, x.dtype, chunk, lambda rows: seen.append(len(rows)))
        if how == "add_rows":
            writer.add_rows(x)
        else:
            for row in x:
                writer.add(row)
        digest = writer.finish()
    saved = io.BytesIO()
    np.save(saved, x)
    assert path.read_bytes() == saved.getvalue()
    assert digest == hashlib.sha256(saved.getvalue()).hexdigest()
    loaded = np.load(path)
    assert loaded.dtype == x.dtype and loaded.shape == x.shape and np.array_equal(loaded, x)
    assert np.array_equal(np.load(path, mmap_mode="r"), x)
    assert sum(seen) == len(x) and all(n == chunk for n in seen[:-1])
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]  # no temporary left


def reference_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """synthseg.gaussian_blur as it was (numpy shifts, float32 taps): the reference for scipy's."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    for axis in (-2, -1):
        moved = np.moveaxis(images, axis, -1)
        n = moved.shape[-1]
        padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(radius, radius)], mode="reflect")
        out = taps[0] * padded[..., :n]
        for i in range(1, len(taps)):
            out += taps[i] * padded[..., i : i + n]
        images = np.moveaxis(out, -1, axis)
    return np.ascontiguousarray(images)


@pytest.mark.parametrize("shape", [(8, 48, 48), (2, 12, 10), (1, 3, 5), (1, 1, 4)])
@pytest.mark.parametrize("sigma", [BLUR[0], 0.75, BLUR[1]])
def test_synthseg_blur_is_the_hand_written_one_to_float32_rounding(shape, sigma):
    rng = np.random.default_rng(1)
    images = (rng.uniform(0, 255, shape) + 25 * rng.standard_normal(shape)).astype(np.float32)
    blurred = gaussian_blur(images, sigma)
    assert blurred.dtype == np.float32 and blurred.shape == shape and blurred.flags.c_contiguous
    # 0..255 intensities: the old float32 sums were off by up to 8e-5, scipy's float64 ones by 1.5e-5
    np.testing.assert_allclose(blurred, reference_blur(images, sigma), rtol=0, atol=2e-4)


def test_available_memory_is_psutils_capped_by_the_container(monkeypatch):
    monkeypatch.setattr(memory.psutil, "virtual_memory", lambda: SimpleNamespace(available=3 * 2**30))
    assert 0 < memory.available_bytes() <= 3 * 2**30  # lower still where a cgroup limit is closer

    def unreadable():
        raise FileNotFoundError("/proc/meminfo")

    monkeypatch.setattr(memory.psutil, "virtual_memory", unreadable)
    assert memory.available_bytes() is None or memory.available_bytes() > 0  # the cgroup's figure, if any

"""Timing and memory of training and inference steps on synthetic inputs.

GPU steps are timed with CUDA events; CPU steps with perf_counter. Peak memory: CUDA's max
allocated bytes; on CPU the process's peak resident memory (VmHWM, reset before each measurement
through /proc/self/clear_refs) above what was resident before the steps.
"""

from __future__ import annotations

import math

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.runtime import autocast


@dataclass
class StepTimes:
    seconds: list[float]
    peak_memory_bytes: int | None

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def synthetic_batch(input_spec: dict, batch: int, device: torch.device, generator_seed: int = 0) -> torch.Tensor:
    """Random inputs of the model's input shape: normalised pixels, or xyz in the unit sphere + features."""
    generator = torch.Generator().manual_seed(generator_seed)
    shape = (batch, *input_spec["shape"])
    if input_spec["kind"] == "points":
        x = torch.rand(shape, generator=generator) * 2 - 1
        x[..., :3] /= x[..., :3].norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
        return x.to(device)
    return torch.randn(shape, generator=generator).to(device)


def _rss_bytes(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak(device: torch.device) -> int | None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:  # writing 5 resets the peak resident size (VmHWM) to the current one (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _rss_bytes("VmRSS")


def peak_above(device: torch.device, baseline: int | None) -> int | None:
    if baseline is None:
        return None
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - baseline
    peak = _rss_bytes("VmHWM")
    return None if peak is None else max(0, peak - baseline)


class _Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def make_model(which: str, config, input_spec: dict, classes: int, checkpointing: bool = False):
    """Ours (with optional activation checkpointing) or lucidrains' Perceiver, seeded the same way."""
    from ..model import build_model
    from . import lucidrains

    torch.manual_seed(0)
    if which == "lucidrains":
        return lucidrains.build(config, input_spec, classes)
    model = build_model(config, input_spec, classes)
    model.activation_checkpointing = checkpointing
    return model


def make_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, mode: str, bf16: bool, device: torch.device,
              loss=None):
    """One training step (the engine's own: forward, loss, backward, clipping, optimizer) or one
    inference forward, as a closure. The optimizer is plain AdamW for every model measured; the
    loss (outputs, (y,)) -> (loss, correct) is the classifier's unless one is given."""
    if mode == "train":
        from ..engine.step import TrainStep
        from ..recipe import OptimConfig
        from ..tasks.classify import classification_loss

        def classifier_loss(logits, target):  # the classification task's, without label smoothing or mixup
            return classification_loss(logits.float(), target[0], None, 1.0, 0.0), (logits.argmax(1) == target[0]).sum()
        loss = loss or classifier_loss

        train_step = TrainStep(model, [p for group in optimizer.param_groups for p in group["params"]], optimizer,
                               loss=loss, optim_config=OptimConfig(name="adamw"), device=device, bf16=bf16)

        def step():
            train_step((x,), (y,), len(y))
    else:
        def step():
            with torch.no_grad(), autocast(device, bf16):
                model(x)
    return step


def time_steps(step, device: torch.device, steps: int, warmup: int) -> StepTimes:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    baseline = reset_peak(device)
    seconds = []
    for _ in range(steps):
        with _Timer(device) as timer:
            step()
        seconds.append(timer.seconds)
    return StepTimes(seconds, peak_above(device, baseline))


def time_alternating(steps_by_name: dict, device: torch.device, steps: int, warmup: int) -> dict[str, StepTimes]:
    """Several step closures measured in turns (a, b, a, b, ...) so that load changes on a shared
    machine hit all of them alike. On CUDA, memory is measured for each in one more step afterwards;
    on CPU the in-process peak says nothing per model (see memory.py), so it is left to the caller."""
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            with _Timer(device) as timer:
                step()
            times[name].append(timer.seconds)
    if device.type != "cuda":
        return {name: StepTimes(seconds, None) for name, seconds in times.items()}
    result = {}
    for name, step in steps_by_name.items():
        baseline = reset_peak(device)
        step()
        result[name] = StepTimes(times[name], peak_above(device, baseline))
    return result


# Dense tensor-core peaks from NVIDIA's datasheets (TFLOP/s, no sparsity). GPU MFU is quoted against
# these, as GPU users compare it; a measured matmul reaches ~80 % of them (H100: 798 of 989).
DATASHEET_TFLOPS = (  # (name contains, dtype, peak); the first match wins
    ("H100 PCIe", torch.bfloat16, 756.0), ("H100 PCIe", torch.float32, 51.2),
    ("H100", torch.bfloat16, 989.4), ("H100", torch.float32, 66.9),
    ("H200", torch.bfloat16, 989.4), ("H200", torch.float32, 66.9),
    ("A100", torch.bfloat16, 312.0), ("A100", torch.float32, 19.5),
)


def datasheet_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for part, kind, tflops in DATASHEET_TFLOPS if part in name and kind == dtype), None)


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Measured FLOP/s of a large square matmul at this dtype: the device's practical peak
    (8192^2 on a GPU, which a 2048^2 product leaves mostly idle; 2048^2 on a CPU)."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        with _Timer(device) as timer:
            a @ b
        best = min(best, timer.seconds)
    return 2 * size**3 / best


def growth_exponent(tokens: list[float], seconds: list[float]) -> float:
    """Slope of log(seconds) against log(tokens)."""
    slope, _ = np.polyfit(np.log(tokens), np.log(seconds), 1)
    return float(slope) if math.isfinite(slope) else float("nan")

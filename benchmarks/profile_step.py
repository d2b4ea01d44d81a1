"""Where a training step's time goes: on a GPU, wall time against the sum of its kernels, and the top
kernels; on a CPU, the top operators by their own time.

    python benchmarks/profile_step.py cifar10_fourier --input-size 224x224 --batch 16 [--set k=v ...]
    python benchmarks/profile_step.py cifar10_fourier --input-size 224x224 --batch 2 --device cpu --dtype fp32

A GPU step whose kernels add up to much less than its wall time is bound by launching them (see
train.cuda_graphs); one whose kernels fill it is bound by the kernels listed.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from perceiver_cli.bench.run import _Subject, input_spec_for
from perceiver_cli.engine.runtime import use_bf16
from perceiver_cli.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--input-size")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="auto", help="fp32, bf16, or auto: bf16 where the hardware has bf16 matrix units")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    recipe, _ = load_recipe(args.recipe, args.overrides)
    device = torch.device(args.device)
    spec, classes = input_spec_for(recipe, args.input_size)
    subject = _Subject("ours", recipe.model, spec, classes, args.batch, device, use_bf16(args.dtype, device), recipe.train)
    step = subject.step("train")
    for _ in range(3):
        step()
    if device.type == "cpu":
        profile_cpu(step, args.steps, args.top)
        return
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(args.steps):
            step()
        end.record()
        torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / args.steps
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernel_ms = sum(e.self_device_time_total for e in kernels) / 1000 / args.steps
    launches = sum(e.count for e in kernels) / args.steps
    print(f"step {wall_ms:.1f} ms wall, {kernel_ms:.1f} ms of kernels ({kernel_ms / wall_ms:.0%}), "
          f"{launches:.0f} kernels per step")
    print_top(kernels, lambda e: e.self_device_time_total, args.steps, args.top)


def profile_cpu(step, steps: int, top: int) -> None:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        wall_ms = (time.perf_counter() - started) * 1000 / steps
    print(f"step {wall_ms:.1f} ms wall (profiled)")
    operators = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    print_top(operators, lambda e: e.self_cpu_time_total, steps, top)


def print_top(events, self_us, steps: int, top: int) -> None:
    """The `top` events by their own time (microseconds over all steps), per step."""
    for e in sorted(events, key=lambda e: -self_us(e))[:top]:
        print(f"{self_us(e) / 1000 / steps:8.2f} ms  x{e.count // steps:<5d} {e.key[:110]}")


if __name__ == "__main__":
    main()

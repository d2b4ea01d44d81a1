"""`perceiver bench`: what one recipe's model costs per step, how that grows with the input, and how
it compares in the same process with lucidrains/perceiver-pytorch (classify recipes) or with
krasserm/perceiver-io's per-pixel Perceiver IO (segment recipes: dense.py, krasserm.py). A
masked_image recipe measures its masked autoencoder's step (the task's share of patches hidden).

Every figure goes into one JSON document (returned, and written with --json) with the environment.
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.graphs import training_forward, uses_cuda_graphs
from ..engine.optim import build_optimizer
from ..engine.runtime import (
    cpu_has_bf16_units,
    keep_freed_memory,
    resolve_device,
    use_bf16,
)
from ..errors import UserError
from ..model import count_parameters
from ..tasks import TASKS, get_task
from . import dense, krasserm, lucidrains
from .flops import Flops, forward_flops
from .measure import (
    growth_exponent,
    StepTimes,
    datasheet_peak,
    make_model,
    make_step,
    matmul_peak,
    peak_above,
    reset_peak,
    synthetic_batch,
    time_alternating,
    time_steps,
)
from .memory import OUT_OF_MEMORY, peak_memory_in_fresh_process

# input shapes of the datasets we know, for recipes whose data is not prepared here
IMAGE_SWEEP = (32, 64, 128, 256)  # 1k -> 64k pixels
POINT_SWEEP = (1024, 4096, 16384, 65536)


@dataclass
class BenchOptions:
    input_size: str | None = None
    batch: int | None = None
    steps: int = 10
    warmup: int = 3
    mode: str = "both"  # train | infer | both
    device: str = "auto"
    dtype: str | None = None  # fp32 | bf16 | None = the recipe's precision (auto)
    sweep: bool = False
    compare: str | None = None


def input_spec_for(recipe, size: str | None) -> tuple[dict, int]:
    """(input spec, classes) of the recipe's data, resized by --input-size (HxW for images, N for points)."""
    from ..data.shapes import input_of

    spec, classes = input_of(recipe.data) or (None, 10)
    if size is not None:
        spec = resize_spec(spec or {"kind": "image", "shape": [32, 32, 3]}, size)
    if spec is None:
        raise UserError(f"bench: the input shape of dataset '{recipe.data.dataset}' is unknown (not prepared here); give --input-size")
    return spec, classes


def resize_spec(spec: dict, size: str) -> dict:
    spec = {**spec, "shape": list(spec["shape"])}
    if spec["kind"] == "image":
        match = re.fullmatch(r"(\d+)[x×](\d+)", size.strip())
        if not match or 0 in (int(match.group(1)), int(match.group(2))):
            raise UserError(f"--input-size {size!r}: images take HEIGHTxWIDTH, both above 0, e.g. 224x224")
        spec["shape"][:2] = [int(match.group(1)), int(match.group(2))]
    else:
        if not size.strip().isdigit() or int(size) == 0:
            raise UserError(f"--input-size {size!r}: {spec['kind']} take a number of tokens/points above 0, e.g. 4096")
        spec["shape"][0] = int(size)
    return spec


def environment(device: torch.device, bf16: bool) -> dict:
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((line for line in cpuinfo.read_text(errors="ignore").splitlines() if line.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "device_type": device.type,
        "dtype": "bf16" if bf16 else "fp32",
        "threads": torch.get_num_threads(),
        "cpu_flags": [f for f in wanted if re.search(rf"\b{f}\b", flags)],
        "cpu_bf16_units": cpu_has_bf16_units(),
    }


def _fraction(flops_per_s: float, peak_flops: float | None) -> float | None:
    return round(flops_per_s / peak_flops, 4) if peak_flops else None


def _summary(times: StepTimes, batch: int, flops_per_sample: float, peak_flops: float | None) -> dict:
    achieved = flops_per_sample * batch / times.median
    memory = times.peak_memory_bytes
    return {
        "median_s": round(times.median, 6), "p10_s": round(times.quantile(0.1), 6), "p90_s": round(times.quantile(0.9), 6),
        "samples_per_s": round(batch / times.median, 3),
        "peak_memory_mb": memory if isinstance(memory, str) or memory is None else round(memory / 2**20, 1),
        "tflops": round(achieved / 1e12, 4), "mfu": _fraction(achieved, peak_flops),
    }


class _Subject:
    """One model ready to step: ours, lucidrains' or krasserm's, with its optimizer and a synthetic
    batch. With a segment `task`, the per-pixel model (dense.py) and one label per pixel."""

    def __init__(self, which: str, model_config, spec: dict, classes: int, batch: int, device, bf16: bool, train_config=None,
                 task=None):
        from ..recipe import OptimConfig

        self.which, self.config, self.spec, self.classes, self.batch, self.bf16 = which, model_config, spec, classes, batch, bf16
        self.task = task if task is not None and get_task(task.name).bench_dense else None
        ours = which == "ours" and train_config is not None  # theirs runs as its users run it
        self.checkpointing = ours and train_config.activation_checkpointing
        if self.task is None:
            self.model = make_model(which, model_config, spec, classes, self.checkpointing)
            self.y = torch.zeros(batch, dtype=torch.long, device=device)
        else:
            self.model = dense.make_model(which, model_config, self.task, spec, classes, self.checkpointing, batch)
            self.y = dense.targets(self.model, spec, batch, device)
        self.model.to(device).train()
        self.parameters = count_parameters(self.model)
        self.optimizer = build_optimizer(self.model, OptimConfig(name="adamw"), device)
        outputs = self.model if self.task is None else dense.outputs(self.model)
        self.loss = None if self.task is None else dense.loss_of(self.model)
        self.forward = training_forward(outputs, train_config, device, bf16) if ours else outputs
        self.graphed = ours and uses_cuda_graphs(train_config, device)
        self.compiled = ours and train_config.compile
        self.first_call_peak = None
        self.x = synthetic_batch(spec, batch, device)
        self.device = device

    def flops(self) -> Flops:
        """Per-sample forward FLOPs: ours counted from its shapes (flops.py); a per-pixel model as torch
        counts it (no `nominal`: flops.py's paper count is the classifier's)."""
        if self.task is None:
            return forward_flops(self.model, self.batch, self.device.type)
        counted = dense.forward_flops(self.model, self.x)
        return Flops(executed=counted, nominal=None)

    def step(self, mode: str):
        return make_step(self.forward, self.optimizer, self.x, self.y, mode, self.bf16, self.device, self.loss)

    def first_call(self, mode: str) -> float | None:
        """Seconds of the first step when it compiles or captures (then timed apart from the
        steps), else None. A captured graph keeps its activations in a private pool that later
        steps reuse without allocating, so on CUDA its memory is the peak of this call (counting,
        conservatively, the gradients and optimizer state it creates)."""
        if not (self.compiled or (self.graphed and mode == "train")):
            return None
        baseline = reset_peak(self.device) if self.device.type == "cuda" else None
        started = time.perf_counter()
        self.step(mode)()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.first_call_peak = peak_above(self.device, baseline)
        return time.perf_counter() - started

    def include_capture_memory(self, mode: str, times: StepTimes) -> None:
        """A graphed step's memory is its capture's (see first_call), not the replays' ~0."""
        if self.graphed and mode == "train" and self.first_call_peak is not None:
            times.peak_memory_bytes = max(self.first_call_peak, times.peak_memory_bytes or 0)

    def memory(self, mode: str) -> int | str | None:
        """CPU only: in a fresh process (see memory.py); on CUDA the timing functions measure it in place."""
        spec = {"which": self.which, "model": self.config.model_dump(), "input_spec": self.spec, "classes": self.classes,
                "batch": self.batch, "mode": mode, "bf16": self.bf16, "checkpointing": self.checkpointing}
        if self.task is not None:
            return dense.peak_memory_in_fresh_process({**spec, "task": self.task.model_dump()})
        return peak_memory_in_fresh_process(spec)


def check_compare(recipe, compare: str | None) -> None:
    """Refuse a --compare that does not fit the recipe's task (Task.compare_with), before anything is measured."""
    if compare is None:
        return
    task = get_task(recipe.task.name)
    peers = {t.compare_with: t.name for t in TASKS.values() if t.compare_with}
    if compare not in peers:
        raise UserError(f"--compare {compare!r}: the peers are " + ", ".join(f"{peer} (task.name={name} recipes)"
                                                                           for peer, name in peers.items()))
    if task.compare_with != compare:
        hint = f": compare it with --compare {task.compare_with}" if task.compare_with else \
            f"; a {task.name} run has no peer to compare with"
        raise UserError(f"--compare {compare!r} measures task.name={peers[compare]} recipes, and this recipe's task.name "
                        f"is {task.name}{hint}")
    if compare == "krasserm":
        krasserm.check_available()


def run_bench(recipe, options: BenchOptions) -> dict:
    check_compare(recipe, options.compare)
    device = resolve_device(options.device, "--device")
    if device.type == "cpu":
        keep_freed_memory()
    bf16 = use_bf16(options.dtype or recipe.train.precision, device)
    if get_task(recipe.task.name).bench_bytes:  # a byte-stream model: windows, generation, the context sweep
        from .ar import run_ar_bench
        return run_ar_bench(recipe, options, device, bf16, environment(device, bf16))
    spec, classes = input_spec_for(recipe, options.input_size)
    batch = options.batch or recipe.train.batch_size
    modes = ["train", "infer"] if options.mode == "both" else [options.mode]
    dtype = torch.bfloat16 if bf16 else torch.float32
    # a CPU without bf16 matrix units emulates bf16 with slow kernels that a 2048^2 product runs at a
    # few GFLOP/s (6 minutes to measure, and below the model's own rate): no peak, so no MFU
    emulated = device.type == "cpu" and bf16 and not cpu_has_bf16_units()
    measured = None if emulated else matmul_peak(device, dtype)
    datasheet = datasheet_peak(device, dtype)
    peak = datasheet or measured  # MFU's denominator

    ours = _Subject("ours", recipe.model, spec, classes, batch, device, bf16, recipe.train, recipe.task)
    flops = ours.flops()
    document = {
        "recipe": recipe.to_dict(),
        "environment": environment(device, bf16),
        "input": spec, "batch": batch, "steps": options.steps, "warmup": options.warmup,
        "parameters": ours.parameters,
        "flops_per_sample": {"forward": flops.executed, "train": flops.train(), "nominal_forward": flops.nominal},
        "matmul_peak_tflops": None if measured is None else round(measured / 1e12, 4),
        "mfu_peak_tflops": None if peak is None else round(peak / 1e12, 4),
        "mfu_peak_source": "datasheet" if datasheet else "bf16 emulated: no bf16 matrix units" if emulated else "measured matmul",
        "results": {},
    }
    for mode in modes:
        per_sample = flops.train() if mode == "train" else flops.executed
        compile_s = ours.first_call(mode)
        times = time_steps(ours.step(mode), device, options.steps, options.warmup)
        if device.type == "cpu":
            times.peak_memory_bytes = ours.memory(mode)
        ours.include_capture_memory(mode, times)
        document["results"][mode] = _summary(times, batch, per_sample, peak)
        # throughput in the paper's FLOPs (as lucidrains runs them): passes 1.0 where we skip work
        paper = None if flops.nominal is None else flops.nominal * (3 if mode == "train" else 1) * batch / times.median
        document["results"][mode]["mfu_paper_flops"] = None if paper is None else _fraction(paper, peak)
        if compile_s is not None:
            document["results"][mode]["compile_s"] = round(compile_s, 2)
    if options.sweep:
        document["sweep"] = sweep(recipe, spec, classes, batch, device, bf16, options, peak)
    if options.compare:
        document["compare"] = compare(recipe, spec, classes, batch, device, bf16, options, modes, peak)
    return document


def sweep(recipe, spec: dict, classes: int, batch: int, device, bf16: bool, options: BenchOptions, peak: float) -> dict:
    """Train-step time and memory as the input grows (images 32^2 -> 256^2, points 1k -> 64k), with
    the exponent of a power-law fit: time ~ tokens^k (k = 1: linear in the input)."""
    sizes = POINT_SWEEP if spec["kind"] != "image" else IMAGE_SWEEP
    rows = []
    for size in sizes:
        sized = resize_spec(spec, f"{size}x{size}" if spec["kind"] == "image" else str(size))
        row = {"size": size}
        try:
            subject = _Subject("ours", recipe.model, sized, classes, batch, device, bf16,
                               recipe.train.model_copy(update={"compile": False}), recipe.task)
            encoder = getattr(subject.model, "model", subject.model)  # a FixedMask wraps its MaskedPerceiver
            row["tokens"] = int(np.prod(encoder.adapter.grid_shape)) if spec["kind"] == "image" else size
            memory = subject.memory("train") if device.type == "cpu" else None
            if memory == OUT_OF_MEMORY:
                rows.append({**row, "error": OUT_OF_MEMORY})
                continue
            subject.first_call("train")
            times = time_steps(subject.step("train"), device, max(3, options.steps // 2), 1)
            subject.include_capture_memory("train", times)
        except torch.OutOfMemoryError:
            rows.append({**row, "error": OUT_OF_MEMORY})
            torch.cuda.empty_cache()
            continue
        if device.type == "cpu":
            times.peak_memory_bytes = memory
        rows.append({**row, **_summary(times, batch, subject.flops().train(), peak)})
        del subject
    ran = [r for r in rows if "error" not in r]
    exponent = None
    if len(ran) >= 2:
        exponent = round(growth_exponent([r["tokens"] for r in ran], [r["median_s"] for r in ran]), 3)
    return {"rows": rows, "growth_exponent": exponent}


def compare(recipe, spec: dict, classes: int, batch: int, device, bf16: bool, options: BenchOptions, modes, peak: float) -> dict:
    """Ours and theirs (lucidrains' classifier, or krasserm's per-pixel Perceiver IO for a segment
    recipe) at the same architecture and dtype, stepped in turns in this process; then ours at its
    defaults against theirs at its defaults (fp32): what a switching user sees."""
    other = options.compare
    if other == "lucidrains":
        matched, task = lucidrains.matched_config(recipe.model), None
    else:
        matched, task = krasserm.matched_config(recipe.model, recipe.task)
    ours = _Subject("ours", matched, spec, classes, batch, device, bf16, recipe.train, task)
    theirs = _Subject(other, matched, spec, classes, batch, device, bf16, task=task)
    result = {
        "with": other,
        "architecture": matched.model_dump(),
        "parameters": {"ours": ours.parameters, other: theirs.parameters,
                       "difference": round(ours.parameters / theirs.parameters - 1, 6)},
        "same_dtype": {}, "speedup": {},
    }
    flops = ours.flops()
    # each counted as what it runs: lucidrains the paper's math as written (`nominal`), krasserm's as torch counts it
    executed = {"ours": flops.executed, other: flops.nominal if task is None else theirs.flops().executed}
    if task is not None:
        result["task"] = task.model_dump()
        result["flops_per_sample"] = {name: {"forward": f, "train": 3 * f} for name, f in executed.items()}
    measured = {}
    for mode in modes:
        ours.first_call(mode)
        times = measured[mode] = time_alternating({"ours": ours.step(mode), other: theirs.step(mode)}, device,
                                                  options.steps, options.warmup)
        if device.type == "cpu":
            times["ours"].peak_memory_bytes, times[other].peak_memory_bytes = ours.memory(mode), theirs.memory(mode)
        ours.include_capture_memory(mode, times["ours"])
        summary = {name: _summary(t, batch, executed[name] * (3 if mode == "train" else 1), peak) for name, t in times.items()}
        result["same_dtype"][mode] = summary
        result["speedup"][mode] = round(times[other].median / times["ours"].median, 3)
        memory = [summary[n]["peak_memory_mb"] for n in ("ours", other)]
        if all(isinstance(m, (int, float)) and m for m in memory):
            result.setdefault("memory_ratio", {})[mode] = round(memory[0] / memory[1], 3)
    # what a user switching tools sees: our defaults (the recipe's precision, auto) vs theirs in fp32;
    # when that is the pair just measured (fp32 both, e.g. on a CPU without bf16 units), it is not timed again
    default_bf16 = use_bf16(recipe.train.precision, device)
    if "train" in measured and not default_bf16 and not bf16:
        times = measured["train"]
    else:
        ours_default = _Subject("ours", matched, spec, classes, batch, device, default_bf16, recipe.train, task)
        theirs_fp32 = _Subject(other, matched, spec, classes, batch, device, False, task=task)
        times = time_alternating({"ours": ours_default.step("train"), other: theirs_fp32.step("train")}, device,
                                 options.steps, options.warmup)
    result["defaults"] = {
        "ours_dtype": "bf16" if default_bf16 else "fp32", f"{other}_dtype": "fp32",
        "ours_samples_per_s": round(batch / times["ours"].median, 3),
        f"{other}_samples_per_s": round(batch / times[other].median, 3),
        "speedup": round(times[other].median / times["ours"].median, 3),
    }
    return result

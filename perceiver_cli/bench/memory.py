"""Peak CPU memory of one model's steps, measured in a fresh process.

In the benchmarking process itself the allocator keeps what earlier models freed (glibc, and our
keep-freed-memory setting), so a later model would reuse it without the resident size growing. A
spawned process starts clean: its peak resident size above the size after building the model is
that model's memory. A process killed for lack of memory is reported as out of memory, not a crash.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

OUT_OF_MEMORY = "out of memory"


def peak_memory_in_fresh_process(spec: dict, measure=None) -> int | str:
    """Bytes, or OUT_OF_MEMORY. spec: {"which", "model", "input_spec", "classes", "batch", "mode", "bf16",
    "checkpointing"}; `measure(spec)` (a module-level function: it runs in the spawned process) builds
    and steps the model, by default a classifier's."""
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(measure or _measure, spec).result()
    except BrokenProcessPool:  # killed, most likely by the kernel's out-of-memory killer
        return OUT_OF_MEMORY


def _measure(spec: dict) -> int | str:
    import torch

    from ..engine.optim import build_optimizer
    from ..recipe import ModelConfig, OptimConfig
    from .measure import make_model, make_step, synthetic_batch

    torch.set_num_threads(1)  # memory does not depend on threads; leave the cores to the parent
    device = torch.device("cpu")
    model = make_model(spec["which"], ModelConfig(**spec["model"]), spec["input_spec"], spec["classes"],
                       spec.get("checkpointing", False))
    optimizer = build_optimizer(model, OptimConfig(name="adamw"), device)
    x = synthetic_batch(spec["input_spec"], spec["batch"], device)
    y = torch.zeros(spec["batch"], dtype=torch.long)
    return peak_of(make_step(model, optimizer, x, y, spec["mode"], spec["bf16"], device), device)


def peak_of(step, device) -> int | str:
    """The peak memory of one `step`, or OUT_OF_MEMORY."""
    from .measure import time_steps

    try:
        return time_steps(step, device, steps=1, warmup=0).peak_memory_bytes
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, MemoryError) or "memory" in str(exc).lower():
            return OUT_OF_MEMORY
        raise

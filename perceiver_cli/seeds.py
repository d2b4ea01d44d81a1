"""`perceiver seeds`: one recipe trained with several seeds, each run evaluated as `perceiver eval`
does, and the task's headline figure (accuracy, mean Dice, ...) as mean +- std: one seed is noise.

Each seed is a real run, runs/<name>-seed<k>, so any of them can be evaluated, reported or resumed
like any other. With jobs > 1, that many seeds train at once in fresh processes of `threads` threads
each (on a 16-core machine: 8 jobs of 2); a seed's result does not depend on it.
"""

from __future__ import annotations

import multiprocessing
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from .console import set_quiet, track
from .data.sources import load_for_recipe
from .engine.train import start_run
from .evaluate import evaluate
from .recipe import load_recipe
from .tasks import TASKS


def run_seeds(recipe: str | None, overrides: list[str], seeds: list[int], jobs: int = 1, threads: int = 0,
              quiet: bool = False) -> dict:
    """Train and evaluate `recipe` once per seed; the summary that `perceiver seeds --json` writes."""
    first, path = load_recipe(recipe, [*overrides, f"train.seed={seeds[0]}"])  # bad keys fail before any training
    task = TASKS[first.task.name]
    metric = task.headline
    if jobs > 1:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, not a fork of this one
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_setup, initargs=(threads,)) as pool:
            futures = [pool.submit(train_and_evaluate, recipe, overrides, seed, metric, True) for seed in seeds]
            results = [future.result() for future in track(futures, f"training {len(seeds)} seeds, {jobs} at a time")]
    else:
        if threads:
            import torch
            torch.set_num_threads(threads)
        results = [train_and_evaluate(recipe, overrides, seed, metric, quiet) for seed in seeds]
    values = [result["value"] for result in results]
    return {
        "recipe": str(path), "name": path.stem, "task": first.task.name, "overrides": list(overrides),
        "metric": metric, "percent": task.headline_percent, "seeds": results, "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values),
        "machine": machine(),
    }


def train_and_evaluate(recipe: str | None, overrides: list[str], seed: int, metric: str, quiet: bool) -> dict:
    """One seed: a run named <name>-seed<k>, trained, then evaluated on its test split (val if none)."""
    loaded, path = load_recipe(recipe, [*overrides, f"train.seed={seed}"])
    loaded.train.name = f"{loaded.train.name or path.stem}-seed{seed}"
    started = time.perf_counter()
    trainer = start_run(loaded, path, load_for_recipe(loaded.data, mmap=True), quiet=quiet)
    trainer.fit()
    trained = time.perf_counter() - started
    report = evaluate(trainer.run_dir).report
    return {"seed": seed, "value": report[metric], "evaluated_on": report["evaluated_on"],
            "train_seconds": round(trained, 1), "run": str(trainer.run_dir), "device": str(trainer.device),
            "precision": "bf16" if trainer.bf16 else "fp32"}


def machine() -> str:
    """The CPU (model name, cores, bf16 matrix units), any GPU, and torch's version: a figure names the
    machine it came from, and these CPUs differ by 2x on the same recipe."""
    import os

    import torch

    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.read().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    except OSError:
        pass
    units = " ".join(unit for unit in ("avx512_bf16", "amx_bf16") if unit in flags) or "no bf16 units"
    described = f"{name}, {os.cpu_count()} cores, {units}"
    if torch.cuda.is_available():
        described += f", {torch.cuda.get_device_name()}"
    return f"{described}, torch {torch.__version__}"


def _worker_setup(threads: int) -> None:
    set_quiet(True)
    if threads:
        import torch
        torch.set_num_threads(threads)

"""`perceiver bench`: throughput, memory and MFU of a recipe's model on synthetic inputs."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ..console import console
from ..errors import UserError
from . import tables
from .errors import user_errors
from .options import Device


class BenchMode(str, Enum):
    train = "train"
    infer = "infer"
    both = "both"


class Dtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@user_errors("bench")
def bench(
    recipe: Optional[str] = typer.Argument(None, help="Recipe whose model is measured.  \\[default: recipes/digits.yaml]"),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value, e.g. --set model.num_latents=256 (repeatable)."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Input size: HEIGHTxWIDTH for images, N for points/sequences.  \\[default: the recipe's data]"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Samples per step.  \\[default: train.batch_size]"),
    steps: int = typer.Option(10, "--steps", min=1, help="Timed steps."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed steps first."),
    mode: BenchMode = typer.Option(BenchMode.both, "--mode", help="Training steps (forward, backward, optimizer), inference forwards, or both."),
    device: Device = typer.Option(Device.auto, "--device", help="Device to measure on."),
    dtype: Optional[Dtype] = typer.Option(None, "--dtype", help="Precision.  \\[default: the recipe's train.precision, auto]"),
    sweep_sizes: bool = typer.Option(False, "--sweep", help="Also scale the input (images 32² → 256², points 1k → 64k) and fit how time grows."),
    compare: Optional[str] = typer.Option(None, "--compare", help="lucidrains: measure lucidrains/perceiver-pytorch (pip install perceiver-pytorch) at the same architecture, in turns."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure, with the environment, to this JSON file."),
):
    """Throughput, step-time spread, peak memory, FLOPs and MFU of a recipe's model on synthetic inputs."""
    from ..atomic import write_json_atomic
    from ..bench.run import BenchOptions, run_bench
    from ..recipe import load_recipe

    if json_path is not None:  # before the benchmark runs, not after it
        _check_writable(json_path, "--json")
    loaded, _ = load_recipe(recipe, overrides)
    document = run_bench(loaded, BenchOptions(input_size=input_size, batch=batch, steps=steps, warmup=warmup, mode=mode.value,
                                              device=device.value, dtype=dtype.value if dtype else None,
                                              sweep=sweep_sizes, compare=compare))
    tables.bench(document)
    if json_path is not None:
        write_json_atomic(json_path, document)
        console.print(f"wrote {json_path}", highlight=False)


def _check_writable(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written, before any work is spent on what goes into it."""
    folder = path.parent
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file path, e.g. {path / 'bench.json'}")
    if not folder.is_dir():
        raise UserError(f"{option} {path}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{option} {path}: the folder {folder} is not writable; choose another path")

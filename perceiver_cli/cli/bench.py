"""`perceiver bench`: throughput, memory and MFU of a recipe's model on synthetic inputs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..console import console
from . import tables
from .errors import user_errors
from .options import Device, check_writable


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
    input_size: Optional[str] = typer.Option(None, "--input-size", help="Input size: HEIGHTxWIDTH for images, N for points/sequences, the window in bytes for causal_lm.  \\[default: the recipe's data]"),
    batch: Optional[int] = typer.Option(None, "--batch-size", "--batch", min=1, help="Samples per step (--batch-size as in eval and predict; --batch still works).  \\[default: train.batch_size]"),
    steps: int = typer.Option(10, "--steps", min=1, help="Timed steps."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed steps first."),
    mode: BenchMode = typer.Option(BenchMode.both, "--mode", help="Training steps (forward, backward, optimizer), inference forwards, or both."),
    device: Device = typer.Option(Device.auto, "--device", help="Device to measure on."),
    dtype: Optional[Dtype] = typer.Option(None, "--dtype", help="Precision.  \\[default: the recipe's train.precision, auto]"),
    sweep_sizes: bool = typer.Option(False, "--sweep", help="Also scale the input (images 32² → 256², points 1k → 64k, a causal_lm window 1k → 64k bytes) and fit how time grows."),
    compare: Optional[str] = typer.Option(None, "--compare", help="Measure another implementation at the same architecture, in turns: lucidrains (classify recipes; pip install perceiver-pytorch), krasserm (segment recipes: krasserm's perceiver-io with a per-pixel decoder; see README for its install) or perceiver-ar (causal_lm recipes; pip install perceiver-ar-pytorch)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every figure, with the environment, to this JSON file."),
):
    """Throughput, step-time spread, peak memory, FLOPs and MFU of a recipe's model on synthetic inputs."""
    from ..atomic import write_json_atomic
    from ..bench.run import BenchOptions, run_bench
    from ..recipe import load_recipe

    if json_path is not None:  # before the benchmark runs, not after it
        check_writable(json_path, "--json")
    loaded, _ = load_recipe(recipe, overrides)
    document = run_bench(loaded, BenchOptions(input_size=input_size, batch=batch, steps=steps, warmup=warmup, mode=mode.value,
                                              device=device.value, dtype=dtype.value if dtype else None,
                                              sweep=sweep_sizes, compare=compare))
    if document["input"].get("kind") == "bytes":
        tables.ar_bench(document)
    elif document.get("compare", {}).get("with") == "krasserm":
        tables.bench({key: value for key, value in document.items() if key != "compare"})
        _krasserm_table(document)
    else:
        tables.bench(document)
    if json_path is not None:
        write_json_atomic(json_path, document)
        console.print(f"wrote {json_path}", highlight=False)


def _krasserm_table(document: dict) -> None:
    """The comparison with krasserm's per-pixel Perceiver IO (tables.bench shows lucidrains')."""
    c = document["compare"]
    p, a, height, width = c["parameters"], c["architecture"], *document["input"]["shape"][:2]
    console.print(f"parameters: ours {p['ours']:,} · krasserm {p['krasserm']:,} ({p['difference']:+.3%}) · one token and one "
                  f"output query per pixel ({height * width:,} each; task.query_pixels={c['task']['query_pixels']}), "
                  f"{a['num_latents']} latents x {a['latent_dim']}", highlight=False, soft_wrap=True)
    versus = Table(title=f"vs krasserm/perceiver-io, per-pixel decoder, same architecture, {document['environment']['dtype']}",
                   header_style="bold")
    for column in ("mode", "ours median", "krasserm median", "ours samples/s", "krasserm samples/s", "speedup",
                   "ours memory", "krasserm memory"):
        versus.add_column(column, justify="left" if column == "mode" else "right")
    for mode, pair in c["same_dtype"].items():
        ours, theirs = pair["ours"], pair["krasserm"]
        versus.add_row(mode, f"{ours['median_s'] * 1000:.1f} ms", f"{theirs['median_s'] * 1000:.1f} ms",
                       f"{ours['samples_per_s']:,.1f}", f"{theirs['samples_per_s']:,.1f}", f"{c['speedup'][mode]:.2f}x",
                       tables._memory_text(ours["peak_memory_mb"]), tables._memory_text(theirs["peak_memory_mb"]))
    console.print(versus)
    d = c["defaults"]
    console.print(f"at defaults (train): ours {d['ours_samples_per_s']:,.1f} samples/s ({d['ours_dtype']}) vs krasserm "
                  f"{d['krasserm_samples_per_s']:,.1f} ({d['krasserm_dtype']}): {d['speedup']:.2f}x", highlight=False)

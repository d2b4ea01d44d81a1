"""The `perceiver` command. Each subcommand parses options, calls one library function and prints
with Rich; no logic lives here. A UserError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
import warnings
from enum import Enum
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from . import __version__
from .console import console, err_console, info, is_quiet, set_quiet
from .errors import UserError

try:  # typer 0.2x carries its own copy of click, whose exceptions are not click's
    from typer import _click as click
except ImportError:
    import click


class OneLineUsageErrors(typer.core.TyperGroup):
    """A mistyped option or value (click's usage errors) is one line on stderr and exit 2, like every
    other mistake, instead of a usage banner and a framed box; `perceiver` alone still shows the help."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            code = exc.exit_code
            if type(exc).__name__ == "NoArgsIsHelpError":  # `perceiver` alone: the help, as before
                exc.show()
            else:
                context = getattr(exc, "ctx", None)
                hint = f" (see `{context.command_path} --help`)" if context is not None else ""
                message = " ".join(exc.format_message().split())
                err_console.print(f"[bold red]error:[/] {escape(message)}{escape(hint)}", highlight=False, soft_wrap=True)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    name="perceiver",
    help="Prepare data for, train and evaluate Perceiver models (Jaegle et al., 2021).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
DEBUG = False


# what to turn down when a command runs out of memory, by command
MEMORY_KNOBS = {
    "train": "lower train.batch_size, model.num_latents or model.latent_dim, or set train.activation_checkpointing=true",
    "bench": "lower --batch or --input-size, or model.num_latents / model.latent_dim (--set)",
    "eval_command": "lower --batch-size",
    "attention": "capture fewer --samples",
    "prepare": "lower --size (or --points)",
}
_interrupt_note = None  # set by a command that can say how to continue after Ctrl-C: () -> str


def user_errors(command):
    """Turn a user's mistake into one line on stderr and exit 2 (a UserError, an OS error on a file, memory
    that cannot be had); Ctrl-C into a short note and exit 130. --debug shows the traceback instead."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        global _interrupt_note
        _interrupt_note = None
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            if DEBUG:
                raise
            err_console.print(_interrupt_note() if _interrupt_note else "interrupted", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            message = _user_message(exc, command.__name__)
            if message is None or DEBUG:
                raise
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _user_message(exc: Exception, command: str) -> str | None:
    """The one line for an error the user can act on; None for a bug (which keeps its traceback)."""
    if isinstance(exc, UserError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.errno is not None:
        text = _os_error_text(exc)
    elif _is_out_of_memory(exc):
        text = f"out of memory: {_asked_memory(str(exc))}; {MEMORY_KNOBS.get(command, 'ask for less')}"
    else:
        return None
    return " ".join(part.strip() for part in text.splitlines() if part.strip())  # always one line


def _os_error_text(exc: OSError) -> str:
    from .atomic import os_error_advice

    return f"{exc.filename if exc.filename is not None else 'a file'}: {os_error_advice(exc)}"


def _is_out_of_memory(exc: Exception) -> bool:
    if isinstance(exc, MemoryError):
        return True
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def _asked_memory(text: str) -> str:
    """'asked for 25.6 GB at once' from the allocator's message (CPU, CUDA or NumPy)."""
    cpu = re.search(r"tried to allocate (\d+) bytes", text)
    if cpu:
        return f"one allocation of {int(cpu.group(1)) / 1e9:,.1f} GB did not fit"
    other = re.search(r"(?:Tried to|Unable to) allocate ([\d.]+ [KMGTP]i?B)", text)
    return f"one allocation of {other.group(1)} did not fit" if other else "an allocation did not fit"


def _print_version(value: bool) -> None:
    if value:
        console.print(f"perceiver {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only results and errors: no progress bars or tables."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
):
    global DEBUG
    DEBUG = debug
    set_quiet(quiet)
    if not debug:  # library warnings (torch, nibabel, PIL) are for developers, not for the user's terminal
        warnings.simplefilter("ignore")
        logging.getLogger("nibabel").setLevel(logging.ERROR)


def _parse_size(size: Optional[str]) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    match = re.fullmatch(r"(\d+)[x×](\d+)", size.strip())
    if not match:
        raise UserError(f"--size {size!r}: expected HEIGHTxWIDTH, e.g. 32x32")
    return int(match.group(1)), int(match.group(2))


# --- prepare ---------------------------------------------------------------------------------------

class SplitBy(str, Enum):
    patient = "patient"
    volume = "volume"


# options that only one reader takes: giving them to another dataset is an error, not silently ignored
ONLY_FOR = {"--points": "modelnet40", "--workers": "modelnet40", "--labels": "akoa", "--pattern": "akoa",
            "--slices": "akoa", "--axis": "akoa", "--split": "akoa", "--split-by": "akoa"}


@app.command()
@user_errors
def prepare(
    dataset: str = typer.Argument(..., help="digits, mnist, cifar10, modelnet40, akoa, or a name of your own for a labelled image folder/zip."),
    source: Optional[Path] = typer.Option(None, "--from", help="What to read: mnist: folder of idx .gz files; cifar10: cifar-10-python.tar.gz, cifar-10-batches-py/ or an image folder/zip; modelnet40: ModelNet40.zip or ModelNet40/; akoa: a folder or zip of NIfTI volumes and/or AKOA PNG slices; other names: an image folder or zip (<root>/<class>/* or <root>/<split>/<class>/*). Without it, mnist/cifar10 are downloaded when the network allows."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the prepared dataset.  \\[default: data/<dataset>]"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9, help="Image folders with a train split only: share of each class held out as the val split."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the held-out val split (image folders), of the point sampling (modelnet40) and of the patient split (akoa)."),
    size: Optional[str] = typer.Option(None, "--size", help="Image folders and akoa: resize every image to HEIGHTxWIDTH.  \\[default: the most common size; akoa: 228x260]"),
    points: Optional[int] = typer.Option(None, "--points", min=1, help="modelnet40: points sampled on each mesh's surface.  \\[default: 2048]"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="modelnet40: worker processes.  \\[default: one per CPU core]"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="akoa: CSV with columns file,label and optionally patient,visit; wins over the file name."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="akoa: regex with named groups patient, label, visit, searched in each file name, e.g. '(?P<patient>\\d+)_(?P<visit>\\d+m)_'.  \\[default: AKOA naming, OAI<patient>_<visit>_..._LEFT|RIGHT]"),
    slices: Optional[str] = typer.Option(None, "--slices", help="akoa: evenly spaced slices per NIfTI volume, or 'all'.  \\[default: 40]"),
    axis: Optional[int] = typer.Option(None, "--axis", min=0, max=2, help="akoa: cut NIfTI volumes along this voxel axis.  \\[default: the sagittal axis, from the affine]"),
    split: Optional[str] = typer.Option(None, "--split", help="akoa: shares of train,val,test.  \\[default: 0.7,0.15,0.15]"),
    split_by: Optional[SplitBy] = typer.Option(None, "--split-by", help="akoa: keep every slice of a patient (all visits, both knees) in one split, or only of a volume (seed 002's looser split).  \\[default: patient]"),
):
    """Read a dataset once into compact arrays + manifest.json under data/<dataset>/ (atomically)."""
    from .data import prepared
    from .data.sources import DOWNLOADS, default_root, download, read_source

    given = {"--points": points, "--workers": workers, "--labels": labels, "--pattern": pattern, "--slices": slices,
             "--axis": axis, "--split": split, "--split-by": split_by}
    for option, value in given.items():
        if value is not None and ONLY_FOR[option] != dataset:
            raise UserError(f"{option} applies to `prepare {ONLY_FOR[option]}` only, not to {dataset}")
    out = out or default_root(dataset)
    prepared.check_target(out)  # leftovers of killed prepares tidied, a foreign --out refused: before the long read
    if source is None and dataset in DOWNLOADS:
        source = download(dataset, Path("data") / "downloads" / dataset)
    akoa = _akoa_options(labels, pattern, slices, axis, size, split, split_by, seed) if dataset == "akoa" else None
    started = time.perf_counter()
    result = read_source(dataset, source, val_fraction=val_fraction, seed=seed, size=_parse_size(size),
                         points=points or 2048, workers=workers, akoa=akoa)
    prepared.write(result, out)
    _print_prepared(result, out, time.perf_counter() - started)


def _akoa_options(labels, pattern, slices, axis, size, split, split_by, seed):
    from .data.akoa import AkoaOptions

    options = AkoaOptions(labels=labels, pattern=pattern, axis=axis, seed=seed)
    if slices is not None:
        if slices.strip().lower() == "all":
            options.slices = None
        elif slices.strip().isdigit():
            options.slices = int(slices)
        else:
            raise UserError(f"--slices {slices!r}: give a number of slices per volume or 'all'")
    if size is not None:
        options.size = _parse_size(size)
    if split is not None:
        try:
            options.split = tuple(float(part) for part in split.split(","))
        except ValueError:
            raise UserError(f"--split {split!r}: give three shares train,val,test, e.g. 0.7,0.15,0.15") from None
    if split_by is not None:
        options.split_by = split_by.value
    return options


def _print_prepared(result, out: Path, seconds: float) -> None:
    table = Table(title=f"{result.name} → {out}", header_style="bold")
    by_patient = all("patients" in split.extra for split in result.splits.values())
    for column in ("split", "samples", "shape") + (("patients", "volumes") if by_patient else ()) + tuple(result.classes if by_patient else ()):
        table.add_column(column, justify="left" if column in ("split", "shape") else "right")
    for name, split in result.splits.items():
        row = [name, f"{len(split.y):,}", " × ".join(map(str, split.x.shape[1:]))]
        if by_patient:  # patients / volumes / slices per split and class
            counts = np.bincount(split.y, minlength=len(result.classes))
            row += [str(len(split.extra["patients"])), str(split.extra["volumes"]), *(f"{n:,}" for n in counts)]
        table.add_row(*row)
    info(table)
    info(f"{len(result.classes)} classes: {', '.join(result.classes[:12])}{' …' if len(result.classes) > 12 else ''}")
    if by_patient:
        overlap = result.source.get("patients_in_several_splits", [])
        if overlap:
            info(f"[yellow]{len(overlap)} patient(s) have slices in more than one split[/] (--split-by {result.source['split_by']})")
        else:
            info("no patient is in two splits (checked)")
    samples = sum(len(split.y) for split in result.splits.values())
    info(f"prepared {samples:,} samples in {seconds:.1f} s ({samples / max(seconds, 1e-9):,.1f}/s)")
    if result.skipped:
        err_console.print(f"skipped {len(result.skipped)} input(s) (listed in {out / 'manifest.json'}):", highlight=False)
        for item in result.skipped[:10]:
            err_console.print(f"  {item['path']}: {item['reason']}", highlight=False)


# --- train -----------------------------------------------------------------------------------------

class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
@user_errors
def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file, or the name of a shipped one (e.g. cifar10_cpu).  \\[default: recipes/digits.yaml]"),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value, e.g. --set optim.lr=5e-4 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue runs/<name> from its last finished epoch (the recipe stored in it is used; --set still applies)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name.  \\[default: the recipe's file name]"),
    device: Optional[Device] = typer.Option(None, "--device", help="Force the device.  \\[default: train.device of the recipe, auto]"),
):
    """Train a Perceiver from a recipe into runs/<name>/ (config, metrics, checkpoints, log)."""
    from .data.sources import load_for_recipe
    from .engine.train import describe, resume_run, start_run
    from .recipe import load_recipe

    global _interrupt_note
    device_name = device.value if device else None
    if resume is not None:
        if recipe is not None:
            raise UserError("give either a RECIPE or --resume RUN_DIR, not both (a resumed run keeps its own recipe)")
        trainer = resume_run(resume, load_for_recipe, overrides, quiet=is_quiet(), device=device_name)
    else:
        loaded, path = load_recipe(recipe, overrides)
        if name is not None:
            loaded.train.name = name
        dataset = load_for_recipe(loaded.data)
        trainer = start_run(loaded, path, dataset, quiet=is_quiet(), device=device_name)
    _interrupt_note = lambda: _how_to_continue(trainer.run_dir)  # noqa: E731
    info(describe(trainer), soft_wrap=True)
    result = trainer.fit()
    best = result.best
    if best and best["metric"] == "last":
        accuracy = result.rows[-1]["val_accuracy"]
        shown = f" · val_accuracy {accuracy:.2%}" if accuracy == accuracy else ""
        console.print(f"best.pt is the last epoch ({best['epoch']}){shown} · {result.run_dir}", highlight=False)
    elif best and best["value"] == best["value"]:
        value = f"{best['value']:.2%}" if best["metric"] == "val_accuracy" else f"{best['value']:.4f}"
        console.print(f"best {best['metric']} {value} at epoch {best['epoch']} · {result.run_dir}", highlight=False)
    else:
        console.print(f"finished · {result.run_dir}", highlight=False)
    info(f"next: perceiver eval {result.run_dir}")


def _how_to_continue(run_dir: Path) -> str:
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return f"interrupted: {run_dir} keeps its last finished epoch; continue with `perceiver train --resume {run_dir}`"
    return "interrupted before the first epoch finished: nothing was saved to resume; run the command again"


# --- eval ------------------------------------------------------------------------------------------

class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"


@app.command("eval")
@user_errors
def eval_command(
    target: Path = typer.Argument(..., help="A run directory (uses checkpoints/best.pt) or a checkpoint .pt file."),
    split: Optional[Split] = typer.Option(None, "--split", help="Split of the run's prepared dataset.  \\[default: test, or val when there is no test split]"),
    data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on any labelled image folder or zip instead (<root>/<class>/* or <root>/<split>/<class>/*); class names must be the model's."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Samples per forward pass."),
    device: Device = typer.Option(Device.auto, "--device", help="Device to evaluate on."),
):
    """Accuracy, loss, per-class precision/recall/F1 and confusion matrix (table, PNG and JSON in the run directory)."""
    from .evaluate import evaluate

    if data is not None and split is not None:
        raise UserError("give either --split or --data, not both")
    result = evaluate(target, split.value if split else None, data, batch_size, device.value)
    _print_eval(result)


def _print_eval(result) -> None:
    report = result.report
    loss = report["loss"]
    shown_loss = f"{loss:.4f}" if loss is not None and loss == loss else "-"  # NaN: no finite logits
    console.print(
        f"[bold]{report['evaluated_on']}[/]: accuracy [bold]{report['accuracy']:.2%}[/] · loss {shown_loss} · "
        f"{report['samples']:,} samples · epoch {report['epoch']} checkpoint",
        highlight=False,
    )
    per_class = Table(title="per class", header_style="bold")
    for column in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        per_class.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    info(per_class)
    classes = [row["class"] for row in report["per_class"]]
    if len(classes) <= 20:
        matrix = Table(title="confusion matrix (rows: true, columns: predicted)", header_style="bold")
        matrix.add_column("")
        for name in classes:
            matrix.add_column(name[:6], justify="right")
        for name, counts in zip(classes, report["confusion_matrix"]):
            matrix.add_row(name, *map(str, counts))
        info(matrix)
    info(f"wrote {result.json_path} and {result.png_path}")


# --- attention -------------------------------------------------------------------------------------

class Format(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


@app.command()
@user_errors
def attention(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    epoch: str = typer.Option("last", "--epoch", help="Saved epoch to draw: a number, last or all."),
    samples: int = typer.Option(4, "--samples", min=1, help="Probe samples to draw."),
    colormap: str = typer.Option("viridis", "--colormap", help="Any matplotlib colormap."),
    alpha: float = typer.Option(0.6, "--alpha", help="Opacity of the heatmap over the image (0 to 1)."),
    stage: Optional[int] = typer.Option(None, "--stage", help="Cross-attend to draw (0 = first).  \\[default: every one]"),
    head: Optional[int] = typer.Option(None, "--head", help="Cross-attention head to draw.  \\[default: all heads summed]"),
    evolution: bool = typer.Option(False, "--evolution", help="Lay the same samples out across the saved epochs and plot entropy / concentration over epochs."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Capture the maps now from best, last or a .pt file (for runs trained without train.save_attention_maps)."),
    input_file: Optional[Path] = typer.Option(None, "--input", help="Draw the maps for your own image (with the best checkpoint, or --checkpoint)."),
    fmt: Format = typer.Option(Format.png, "--format", help="File format of the pictures."),
):
    """Cross-attention maps over the input: pictures and statistics (entropy, concentration, latents used) per sample."""
    from .attention.views import ViewOptions, view

    result = view(run_dir, ViewOptions(epoch=epoch, samples=samples, colormap=colormap, alpha=alpha, stage=stage, head=head,
                                       evolution=evolution, checkpoint=checkpoint, input=input_file, format=fmt.value))
    table = Table(title="cross-attention statistics (mean over the probe samples)", header_style="bold")
    for column in ("epoch", "stage", "entropy", "top 5 % mass", "latents used", "effective latents"):
        table.add_column(column, justify="right")
    for ep, stages in result.stats.items():
        for st, values in stages.items():
            mean = values["mean"]
            table.add_row(str(ep), str(st), f"{mean['entropy']:.3f}", f"{mean['top5_mass']:.3f}",
                          f"{mean['latents_used']:.1f}", f"{mean['effective_latents']:.1f}")
    info(table)
    info("entropy: H(mass)/log(tokens), 1 = even; top 5 % mass: share on the 5 % most attended tokens; "
         "latents used / effective: latents that are the strongest reader of some token, exp(entropy) of that split")
    for path in result.files:
        console.print(f"wrote {path}", highlight=False)
    console.print(f"wrote {result.stats_path}", highlight=False)


# --- report ----------------------------------------------------------------------------------------

@app.command("report")
@user_errors
def report_command(
    run_dirs: List[Path] = typer.Argument(..., help="One or more run directories (several are overlaid)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Path of the report without extension (.png and .json are written).  \\[default: RUN_DIR/report, or report_<a>_vs_<b> beside the runs]"),
):
    """A training dashboard (accuracy, loss, lr, throughput, generalisation gap) and a summary table per run."""
    from .report import FORMULAS, report

    result = report(run_dirs, out)
    # one row per figure, one column per run: stays readable in a narrow terminal
    table = Table(title="summary", header_style="bold")
    table.add_column("")
    for run in result.runs:
        table.add_column(run.name, justify="right")
    pct = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = (("best val accuracy", "best_val_accuracy", pct), ("at epoch", "best_epoch", str),
            ("test accuracy (eval)", "test_accuracy", pct), ("min train loss", "min_train_loss", num),
            ("min val loss", "min_val_loss", num), ("overfitting", "overfitting", num),
            ("generalisation", "generalisation", num), ("stability", "stability", num),
            ("convergence", "convergence", num), ("improvement", "improvement", num), ("epochs", "epochs", str),
            ("wall time", "wall_time_s", lambda v: f"{v:.0f} s"))
    for label, key, fmt in rows:
        table.add_row(label, *(fmt(run.summary[key]) if run.summary[key] is not None else "-" for run in result.runs))
    console.print(table)
    for name, formula in FORMULAS.items():
        info(f"  {name} = {formula}", highlight=False)
    console.print(f"wrote {result.png_path} and {result.json_path}", highlight=False)


# --- bench -----------------------------------------------------------------------------------------

class BenchMode(str, Enum):
    train = "train"
    infer = "infer"
    both = "both"


class Dtype(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


@app.command()
@user_errors
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
    from .atomic import write_json_atomic
    from .bench.run import BenchOptions, run_bench
    from .recipe import load_recipe

    if json_path is not None:  # before the benchmark runs, not after it
        _check_writable(json_path, "--json")
    loaded, _ = load_recipe(recipe, overrides)
    document = run_bench(loaded, BenchOptions(input_size=input_size, batch=batch, steps=steps, warmup=warmup, mode=mode.value,
                                              device=device.value, dtype=dtype.value if dtype else None,
                                              sweep=sweep_sizes, compare=compare))
    _print_bench(document)
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


def _memory_text(value) -> str:
    return value if isinstance(value, str) else ("-" if value is None else f"{value:,.0f} MB")


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_bench(document: dict) -> None:
    env = document["environment"]
    flops = document["flops_per_sample"]
    console.print(
        f"{env['device']} · {env['dtype']} · {env['threads']} threads · torch {env['torch']} · input {document['input']['shape']} · "
        f"batch {document['batch']} · {document['parameters']:,} parameters · {flops['forward'] / 1e9:.3f} GFLOP/sample forward · "
        + (f"matmul peak {document['matmul_peak_tflops']:.3f} TFLOP/s (MFU against {document['mfu_peak_tflops']:.3f}, "
           f"{document['mfu_peak_source']})" if document["mfu_peak_tflops"] else f"no MFU ({document['mfu_peak_source']})"),
        highlight=False, soft_wrap=True)
    table = Table(title="step time", header_style="bold")
    # MFU counts the products this implementation runs; "paper MFU" the paper's math as written (what
    # lucidrains runs), which passes 100 % where an exact rewrite skips work
    for column in ("mode", "median", "p10", "p90", "samples/s", "peak memory", "TFLOP/s", "MFU", "paper MFU"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, r in document["results"].items():
        table.add_row(mode + (f" (compile/capture {r['compile_s']} s)" if "compile_s" in r else ""), f"{r['median_s'] * 1000:.1f} ms",
                      f"{r['p10_s'] * 1000:.1f} ms", f"{r['p90_s'] * 1000:.1f} ms", f"{r['samples_per_s']:,.1f}",
                      _memory_text(r["peak_memory_mb"]), f"{r['tflops']:.3f}", _percent(r["mfu"]), _percent(r["mfu_paper_flops"]))
    console.print(table)
    if "sweep" in document:
        sweep = Table(title=f"input sweep (train): growth exponent {document['sweep']['growth_exponent']}", header_style="bold")
        for column in ("size", "tokens", "median", "samples/s", "peak memory"):
            sweep.add_column(column, justify="right")
        for r in document["sweep"]["rows"]:
            if "error" in r:
                sweep.add_row(str(r["size"]), str(r.get("tokens", "-")), r["error"], "-", "-")
            else:
                sweep.add_row(str(r["size"]), f"{r['tokens']:,}", f"{r['median_s'] * 1000:.1f} ms", f"{r['samples_per_s']:,.1f}",
                              _memory_text(r["peak_memory_mb"]))
        console.print(sweep)
    if "compare" in document:
        c = document["compare"]
        p = c["parameters"]
        console.print(f"parameters: ours {p['ours']:,} · lucidrains {p['lucidrains']:,} ({p['difference']:+.3%})", highlight=False)
        versus = Table(title=f"vs lucidrains/perceiver-pytorch, same architecture, {env['dtype']}", header_style="bold")
        for column in ("mode", "ours samples/s", "lucidrains samples/s", "speedup", "ours memory", "lucidrains memory"):
            versus.add_column(column, justify="left" if column == "mode" else "right")
        for mode, pair in c["same_dtype"].items():
            versus.add_row(mode, f"{pair['ours']['samples_per_s']:,.1f}", f"{pair['lucidrains']['samples_per_s']:,.1f}",
                           f"{c['speedup'][mode]:.2f}x", _memory_text(pair["ours"]["peak_memory_mb"]),
                           _memory_text(pair["lucidrains"]["peak_memory_mb"]))
        console.print(versus)
        d = c["defaults"]
        console.print(f"at defaults (train): ours {d['ours_samples_per_s']:,.1f} samples/s ({d['ours_dtype']}) vs lucidrains "
                      f"{d['lucidrains_samples_per_s']:,.1f} ({d['lucidrains_dtype']}): {d['speedup']:.2f}x", highlight=False)


def main():
    app()


if __name__ == "__main__":
    main()

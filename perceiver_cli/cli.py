"""The `perceiver` command. Each subcommand parses options, calls one library function and prints
with Rich; no logic lives here. A UserError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import re
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import __version__
from .console import console, err_console, info, is_quiet, set_quiet
from .errors import UserError

app = typer.Typer(
    name="perceiver",
    help="Prepare data for, train and evaluate Perceiver models (Jaegle et al., 2021).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
DEBUG = False


def user_errors(command):
    """Turn a UserError into one line on stderr and exit 2; Ctrl-C into a short note and exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            if DEBUG:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


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


def _parse_size(size: Optional[str]) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    match = re.fullmatch(r"(\d+)[x×](\d+)", size.strip())
    if not match:
        raise UserError(f"--size {size!r}: expected HEIGHTxWIDTH, e.g. 32x32")
    return int(match.group(1)), int(match.group(2))


# --- prepare ---------------------------------------------------------------------------------------

@app.command()
@user_errors
def prepare(
    dataset: str = typer.Argument(..., help="digits, mnist, cifar10, or a name of your own for a labelled image folder/zip."),
    source: Optional[Path] = typer.Option(None, "--from", help="What to read: mnist: folder of idx .gz files; cifar10: cifar-10-python.tar.gz, cifar-10-batches-py/ or an image folder/zip; other names: an image folder or zip (<root>/<class>/* or <root>/<split>/<class>/*). Without it, mnist/cifar10 are downloaded when the network allows."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the prepared dataset.  \\[default: data/<dataset>]"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9, help="Image folders with a train split only: share of each class held out as the val split."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out val split."),
    size: Optional[str] = typer.Option(None, "--size", help="Image folders: resize every image to HEIGHTxWIDTH.  \\[default: the most common size]"),
):
    """Read a dataset once into compact arrays + manifest.json under data/<dataset>/ (atomically)."""
    from .data import prepared
    from .data.sources import DOWNLOADS, default_root, download, read_source

    out = out or default_root(dataset)
    if source is None and dataset in DOWNLOADS:
        source = download(dataset, Path("data") / "downloads" / dataset)
    result = read_source(dataset, source, val_fraction=val_fraction, seed=seed, size=_parse_size(size))
    prepared.write(result, out)
    _print_prepared(result, out)


def _print_prepared(result, out: Path) -> None:
    table = Table(title=f"{result.name} → {out}", header_style="bold")
    table.add_column("split")
    table.add_column("samples", justify="right")
    table.add_column("shape")
    for name, split in result.splits.items():
        table.add_row(name, f"{len(split.y):,}", " × ".join(map(str, split.x.shape[1:])))
    info(table)
    info(f"{len(result.classes)} classes: {', '.join(result.classes[:12])}{' …' if len(result.classes) > 12 else ''}")
    if result.skipped:
        err_console.print(f"skipped {len(result.skipped)} unreadable input(s) (listed in {out / 'manifest.json'}):", highlight=False)
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
    info(describe(trainer), soft_wrap=True)
    result = trainer.fit()
    best = result.best
    if best and best["value"] == best["value"]:
        value = f"{best['value']:.2%}" if best["metric"] == "val_accuracy" else f"{best['value']:.4f}"
        console.print(f"best {best['metric']} {value} at epoch {best['epoch']} · {result.run_dir}", highlight=False)
    else:
        console.print(f"finished · {result.run_dir}", highlight=False)
    info(f"next: perceiver eval {result.run_dir}")


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
    console.print(
        f"[bold]{report['evaluated_on']}[/]: accuracy [bold]{report['accuracy']:.2%}[/] · loss {report['loss']:.4f} · "
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


def main():
    app()


if __name__ == "__main__":
    main()

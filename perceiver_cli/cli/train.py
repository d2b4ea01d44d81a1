"""`perceiver train`: a recipe (or a run to resume) in, a run directory out."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..console import info, is_quiet
from ..errors import UserError
from . import tables
from .errors import on_interrupt, user_errors
from .options import Device


@user_errors("train")
def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file, or the name of a shipped one (e.g. cifar10_cpu).  \\[default: recipes/digits.yaml]"),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value, e.g. --set optim.lr=5e-4 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue runs/<name> from its last finished epoch (the recipe stored in it is used; --set still applies)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name.  \\[default: the recipe's file name]"),
    device: Optional[Device] = typer.Option(None, "--device", help="Force the device.  \\[default: train.device of the recipe, auto]"),
):
    """Train a Perceiver from a recipe into runs/<name>/ (config, metrics, checkpoints, log)."""
    from ..data.sources import load_for_recipe
    from ..engine.train import describe, resume_run, start_run
    from ..recipe import load_recipe

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
    on_interrupt(lambda: _how_to_continue(trainer.run_dir))
    info(describe(trainer), soft_wrap=True)
    tables.trained(trainer.fit())


def _how_to_continue(run_dir: Path) -> str:
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return f"interrupted: {run_dir} keeps its last finished epoch; continue with `perceiver train --resume {run_dir}`"
    return "interrupted before the first epoch finished: nothing was saved to resume; run the command again"

"""`perceiver seeds`: a recipe trained with several seeds, its figure as mean +- std."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..console import is_quiet
from ..errors import UserError
from . import tables
from .errors import user_errors
from .options import check_writable


@user_errors("seeds")
def seeds_command(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file, or the name of a shipped one.  \\[default: recipes/digits.yaml]"),
    count: int = typer.Option(3, "--seeds", min=2, help="How many seeds: runs <name>-seed<k> for k = first seed, first seed + 1, ..."),
    first_seed: int = typer.Option(0, "--first-seed", min=0, help="The first seed."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value for every seed, e.g. --set train.epochs=5 (repeatable)."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Seeds trained at once, each in its own process (their results do not depend on it)."),
    threads: int = typer.Option(0, "--threads", min=0, help="Threads per run.  \\[default: torch's own choice]"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write every seed's figure, the summary and the machine to this JSON file (what tools/results_table.py reads)."),
):
    """Train a recipe once per seed, evaluate each run as `perceiver eval` does, and give the mean ± std."""
    from ..atomic import write_json_atomic
    from ..seeds import run_seeds

    if any(assignment.split("=", 1)[0].strip() == "train.seed" for assignment in overrides):
        raise UserError("--set train.seed: perceiver seeds sets the seed of each run itself; use --first-seed")
    if json_path is not None:  # before any seed trains, not after all of them
        check_writable(json_path, "--json")
    summary = run_seeds(recipe, list(overrides), list(range(first_seed, first_seed + count)), jobs, threads, is_quiet())
    if json_path is not None:
        write_json_atomic(json_path, summary)
    tables.seeds(summary)

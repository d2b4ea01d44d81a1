"""`perceiver recipes`: the shipped recipes, one line each; `perceiver recipes show RECIPE`: one of
them (or any recipe file) fully resolved, as YAML."""

from __future__ import annotations

from typing import List

import typer

from . import tables
from .errors import OneLineUsageErrors, user_errors

app = typer.Typer(cls=OneLineUsageErrors, invoke_without_command=True, no_args_is_help=False,
                  help="List the shipped recipes (dataset, task, parameters, what each reaches), or show one resolved.")


@app.callback()
@user_errors("recipes")
def recipes_command(context: typer.Context):
    """List the shipped recipes: dataset, task, parameters and what each reaches."""
    if context.invoked_subcommand is None:
        from ..catalogue import catalogue
        tables.recipes(catalogue())


@app.command("show")
@user_errors("recipes show")
def show_command(
    recipe: str = typer.Argument(..., help="Recipe YAML file, or the name of a shipped one."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value, e.g. --set optim.lr=5e-4 (repeatable)."),
):
    """Print a recipe fully resolved (its bases, --set and every default applied) as YAML."""
    from ..recipe import load_recipe, resolved_yaml

    loaded, _ = load_recipe(recipe, overrides)
    tables.resolved_recipe(resolved_yaml(loaded))

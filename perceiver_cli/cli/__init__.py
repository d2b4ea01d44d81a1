"""The `perceiver` command: global options and one subcommand per module here (prepare, train, eval,
attention, report, bench, predict, export, generate). Each parses options, calls one library function and prints through
tables.py; no logic lives here. A user's mistake is one line on stderr and exit code 2 (errors.py)."""

from __future__ import annotations

import logging
import warnings

import typer

from .. import __version__
from ..console import console, set_quiet
from . import attention, bench, export, generate, predict, prepare, recipes, report, seeds, train
from .errors import OneLineUsageErrors, set_debug
from .eval import eval_command

GLOBAL_FLAGS = ("--quiet", "-q", "--debug")


def global_flags_first(args: list[str]) -> list[str]:
    """`perceiver train digits --quiet` as `perceiver --quiet train digits`: the global flags work after
    the command too (everything after a bare `--` is left as it is)."""
    end = args.index("--") if "--" in args else len(args)
    flags = [arg for arg in args[:end] if arg in GLOBAL_FLAGS]
    return flags + [arg for arg in args[:end] if arg not in GLOBAL_FLAGS] + args[end:]


class Commands(OneLineUsageErrors):
    """`perceiver --help` lists prepare first, as a workflow starts (typer lists a group after the commands)."""

    def list_commands(self, ctx):
        return sorted(super().list_commands(ctx), key=lambda name: name != "prepare")

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, global_flags_first(args))


app = typer.Typer(
    cls=Commands,
    name="perceiver",
    help="Prepare data for, train, evaluate, inspect, benchmark and use Perceiver models (Jaegle et al., 2021).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


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
    set_debug(debug)
    set_quiet(quiet)
    if not debug:  # library warnings (torch, nibabel, PIL) are for developers, not for the user's terminal
        warnings.simplefilter("ignore")
        logging.getLogger("nibabel").setLevel(logging.ERROR)


app.add_typer(prepare.app, name="prepare")
app.add_typer(recipes.app, name="recipes")
app.command("train")(train.train)
app.command("eval")(eval_command)
app.command("attention")(attention.attention)
app.command("report")(report.report_command)
app.command("bench")(bench.bench)
app.command("seeds")(seeds.seeds_command)
app.command("export")(export.export_command)
app.command("predict")(predict.predict_command)
app.command("generate")(generate.generate_command)


def main():
    app(prog_name="perceiver")

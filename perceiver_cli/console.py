"""Console output shared by every command: one Rich console, quiet mode, and progress tracking."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.markup import escape

from rich.console import Console as RichConsole
from rich.console import ConsoleDimensions
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

# Written to a pipe or a file, Rich would hard-wrap every line at 80 columns (or at the width of a
# terminal on stdin): `perceiver eval ... | cat` split "epoch 60 checkpoint" onto a line of its own,
# and grep or a log then sees half a sentence. Plain output is this wide instead; COLUMNS, when set,
# still decides. A table is drawn at its natural width up to PIPED_TABLE_WIDTH, past which its long
# cells wrap inside their column (a recipe's description would otherwise make a 1,800-column row).
PIPED_WIDTH = 10_000
PIPED_TABLE_WIDTH = 200


class Console(RichConsole):
    """A Rich console that does not wrap lines when it is not writing to a terminal."""

    @property
    def piped(self) -> bool:
        return self._width is None and not self.is_terminal and not self.is_jupyter and "COLUMNS" not in self._environ

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return ConsoleDimensions(PIPED_WIDTH, size.height) if self.piped else size

    @size.setter
    def size(self, new_size) -> None:
        RichConsole.size.fset(self, new_size)

    def print(self, *objects, **options) -> None:
        if self.piped and options.get("width") is None and any(isinstance(item, Table) for item in objects):
            options["width"] = PIPED_TABLE_WIDTH
        super().print(*objects, **options)


console = Console()
err_console = Console(stderr=True)
QUIET = False


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # escape codes, newlines, NUL: never sent raw to a terminal


def visible(text) -> str:
    """A user's text (a file name, a class name) shown as it is: control characters as \\xNN instead
    of acting on the terminal, and Rich markup escaped instead of rendered."""
    return escape(CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(text)))


def set_quiet(quiet: bool) -> None:
    global QUIET
    QUIET = quiet


def is_quiet() -> bool:
    return QUIET


def info(message, **print_options) -> None:
    if not QUIET:
        console.print(message, **print_options)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a Rich progress bar on a terminal; silently otherwise (or when quiet)."""
    if QUIET or not console.is_terminal:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total if total is not None else _len(items))
        for item in items:
            yield item
            progress.advance(task)


def _len(items) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None

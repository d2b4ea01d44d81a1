"""Console output shared by every command: one Rich console, quiet mode, and progress tracking."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.markup import escape

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

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

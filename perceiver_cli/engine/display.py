"""What a training run shows: a live progress bar and a growing epoch table on a terminal, plain
lines when stdout is not a terminal, only the closing summary when quiet."""

from __future__ import annotations

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..console import console

# the epoch row's columns every task has, around the validation figures the task names (Task.columns)
LEADING = [
    ("epoch", "epoch", "{}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("train_accuracy", "train acc", "{:.2%}"),
    ("val_loss", "val loss", "{:.4f}"),
]
TRAILING = [
    ("lr", "lr", "{:.2e}"),
    ("samples_per_s", "samples/s", "rate"),
    ("epoch_time_s", "time", "{:.1f}s"),
]
ALWAYS = ("epoch", "train_loss", "val_loss", "lr", "samples_per_s", "epoch_time_s")


def format_rate(value: float) -> str:
    """Samples per second: whole numbers, but a slow model on CPU (0.3/s) still shows a figure."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def format_value(fmt: str, value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format_rate(value) if fmt == "rate" else fmt.format(value)


def shown_columns(rows: list[dict], task_columns=()) -> list[tuple]:
    """The columns the rows have: the common ones, and the task's validation figures between."""
    columns = LEADING + list(task_columns) + TRAILING
    return [column for column in columns if column[0] in ALWAYS or any(column[0] in row for row in rows)]


def epoch_table(rows: list[dict], title: str | None = None, task_columns=()) -> Table:
    table = Table(title=title, header_style="bold")
    columns = shown_columns(rows, task_columns)
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*(format_value(fmt, row.get(key)) for key, _, fmt in columns))
    return table


class TrainingDisplay:
    def __init__(self, total_epochs: int, quiet: bool = False, task_columns=()):
        self.total_epochs, self.task_columns = total_epochs, tuple(task_columns)
        self.quiet = quiet
        self.live_mode = console.is_terminal and not quiet
        self.rows: list[dict] = []
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = None
        self.live = None

    def __enter__(self):
        if self.live_mode:
            self.live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.update(epoch_table(self.rows, task_columns=self.task_columns))  # leave the table, drop the finished bar
            self.live.__exit__(*exc)
        return False

    def _render(self):
        return Group(epoch_table(self.rows, task_columns=self.task_columns), self.progress)

    def start_epoch(self, epoch: int, steps: int) -> None:
        if not self.live_mode:
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=steps, epoch=epoch, epochs=self.total_epochs, stats="")

    def step(self, loss: float, accuracy: float, rate: float) -> None:
        if self.live_mode and self.task is not None:
            shown = "" if accuracy is None else f"acc {accuracy:.2%}  "
            stats = f"loss {loss:.4f}  {shown}{format_rate(rate)} samples/s"
            self.progress.update(self.task, advance=1, stats=stats)

    def advance(self) -> None:
        if self.live_mode:
            self.progress.advance(self.task)

    def end_epoch(self, row: dict) -> None:
        self.rows.append(row)
        if self.live_mode:
            self.live.update(self._render())
        elif not self.quiet:
            parts = [f"{header} {format_value(fmt, row.get(key))}" for key, header, fmt in shown_columns([row], self.task_columns)[1:]]
            console.print(f"epoch {row['epoch']}/{self.total_epochs}  " + "  ".join(parts), highlight=False, soft_wrap=True)

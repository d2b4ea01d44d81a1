"""A run's epoch rows. Every checkpoint carries all of them (the checkpoint is the one source of
truth: it is written first); metrics.jsonl and metrics.csv are copies for people and other tools,
rewritten from the checkpoint on resume, so a kill between the two never loses a row.

In the files a value that is not a number (val_loss without a val split) is null / an empty cell,
since NaN is not JSON; reading turns null back into NaN, which the tables show as "-".
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..atomic import json_safe, json_text
from ..errors import UserError
from . import checkpoint
from .files import write_text

FILES = ("metrics.jsonl", "metrics.csv")


def file_texts(rows: list[dict]) -> dict[str, str]:
    """{file name: its text} for the rows."""
    table = io.StringIO()
    if rows:
        writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(json_safe(rows))  # None: an empty cell
    return {"metrics.jsonl": "".join(json_text(row) + "\n" for row in rows), "metrics.csv": table.getvalue()}


def write_metrics(run_dir: Path, rows: list[dict], hint: str = "") -> None:
    for name, text in file_texts(rows).items():
        if rows or name == "metrics.jsonl":
            write_text(Path(run_dir) / name, text, hint)


def sync_metrics(run_dir: Path, rows: list[dict]) -> bool:
    """Rewrite metrics.jsonl/csv from the checkpoint's rows where they differ (a kill after the
    checkpoint, a damaged or edited file). True when something was rewritten."""
    changed = False
    for name, text in file_texts(rows).items():
        path = Path(run_dir) / name
        try:
            same = path.read_text() == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same and (rows or name == "metrics.jsonl"):
            write_text(path, text)
            changed = True
    return changed


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of metrics.jsonl ([] when there is none); a damaged line is one clear UserError."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc}); delete it to train or report without it") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row, reason = None, exc.msg
        else:
            reason = "not an epoch row (a JSON object with an integer epoch)"
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise UserError(f"{path} line {number} is damaged ({reason}): delete that line or restore the file; "
                            f"each line is one epoch's row")
        rows.append(as_numbers(row))
    return rows


def as_numbers(row: dict) -> dict:
    """null (how the files write NaN) back to NaN."""
    return {key: math.nan if value is None else value for key, value in row.items()}


def restored_rows(state: dict, run_dir: Path) -> list[dict]:
    """The epoch rows a checkpoint carries; for one from before checkpoints carried them, metrics.jsonl's."""
    if "metrics" in state:
        return [dict(row) for row in state["metrics"]]
    return [row for row in read_metrics(run_dir) if row["epoch"] <= state["epoch"]]


def saved_rows(run_dir: Path) -> list[dict]:
    """What a reader of a run should show: the rows its checkpoint carries (never behind the files);
    metrics.jsonl's for a run whose checkpoints predate the rows, or when they are longer (last.pt
    damaged, and the rows came from an older best.pt)."""
    try:
        carried = checkpoint.load_run(run_dir, prefer="last", mmap=True).state.get("metrics")
    except UserError:
        carried = None
    if carried is None:
        return read_metrics(run_dir)
    try:
        written = read_metrics(run_dir)
    except UserError:  # damaged: the checkpoint's rows stand in
        written = []
    return written if len(written) > len(carried) else [dict(row) for row in carried]

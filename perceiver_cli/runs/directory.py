"""A run's directory: runs/<name> (a fresh one per run, never reused), and removed again when the
run saved nothing, so a failed start leaves no empty run behind."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError
from .files import os_error_message, writing


def create_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/<name>, or runs/<name>-2, -3 ... : an existing run directory is never reused."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"run name {name!r} must be a plain folder name (no '/'); set train.name or --name")
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"train.runs_dir '{runs_dir}' is a file; set train.runs_dir to a folder (or move the file)")
    with writing(runs_dir, "or set train.runs_dir"):
        runs_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = runs_dir / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(os_error_message(candidate, exc, "or set train.runs_dir")) from None
    raise UserError(f"{runs_dir}: too many runs named {name}; set train.name")


def remove_unsaved(run_dir: Path) -> bool:
    """Delete a new run's directory when no checkpoint was saved in it (all in it is the run's own:
    create_run_dir made it). True when it was removed."""
    if any((Path(run_dir) / "checkpoints").glob("*.pt")):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True

"""Checkpoints: written atomically (temp file, fsync, rename), read with `weights_only=True` so that
loading one never runs code from the file. A run directory whose preferred checkpoint is damaged
(cut short by a power cut where the disk never got it) is read from its other one, with a note."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_writer
from ..console import err_console
from ..errors import UserError
from .files import writing


def save(state: dict, path: Path, hint: str = "") -> None:
    path = Path(path)
    with writing(path, hint):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:  # fsynced, then renamed: the old file or the new one, never half
            torch.save(state, fh)


def unreadable_reason(exc: Exception) -> str:
    """Why torch.load refused a file, in our words (its own message runs to a page of advice)."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if refused:
        return (f"holds pickled Python objects, which are never loaded because loading them can run code "
                f"(here {refused.group(1)}); use a checkpoint written by perceiver train")
    reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
    return f"is damaged or cut short ({reason})"


def load(path: Path, mmap: bool = False) -> dict:
    """A checkpoint's state (`mmap`: tensors mapped from the file, for readers that only want the rest)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # corrupt, truncated, or holding objects that weights_only refuses
        raise UserError(f"{path}: not a readable perceiver checkpoint: it {unreadable_reason(exc)}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path}: not a perceiver checkpoint (no model weights and config inside)")
    return state


def find(run_or_checkpoint: Path, prefer: str = "best") -> Path:
    """A run directory -> its best.pt (or last.pt); a .pt file -> itself."""
    return candidates(run_or_checkpoint, prefer)[0]


def candidates(run_or_checkpoint: Path, prefer: str = "best") -> list[Path]:
    """The checkpoints to try, preferred first: a .pt file alone, or a run's best.pt and last.pt that exist."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return [path]
    if path.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        found = [path / "checkpoints" / name for name in order if (path / "checkpoints" / name).is_file()]
        if found:
            return found
        raise UserError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt; is it a run directory that finished an epoch?")
    raise UserError(f"{path}: no such run directory or checkpoint")


@dataclass
class Loaded:
    path: Path
    state: dict
    note: str | None = None  # said when the preferred checkpoint was damaged and another one was read

    def tell(self) -> None:
        if self.note:
            err_console.print(f"note: {self.note}", highlight=False, soft_wrap=True)


def load_run(run_or_checkpoint: Path, prefer: str = "best", mmap: bool = False) -> Loaded:
    """The preferred checkpoint of a run directory, or its other one when that is unreadable."""
    failures = []
    for path in candidates(run_or_checkpoint, prefer):
        try:
            state = load(path, mmap=mmap)
        except UserError as exc:
            failures.append(str(exc))
            continue
        note = f"{failures[0]}; read {path} (epoch {state.get('epoch')}) instead" if failures else None
        return Loaded(path, state, note)
    if len(failures) == 1:
        raise UserError(failures[0])
    raise UserError(" and ".join(failures) + "; no checkpoint of this run is readable: train it again")

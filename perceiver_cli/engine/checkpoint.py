"""Checkpoints: written atomically (temp file + rename), read with `weights_only=True` so that
loading one never runs code from the file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError


def save(state: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """A small text file (metrics, config, report) replaced whole: readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or holding objects that weights_only refuses
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable perceiver checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path}: not a perceiver checkpoint (no model weights and config inside)")
    return state


def find(run_or_checkpoint: Path, prefer: str = "best") -> Path:
    """A run directory -> its best.pt (or last.pt); a .pt file -> itself."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    if path.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise UserError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt; is it a run directory that finished an epoch?")
    raise UserError(f"{path}: no such run directory or checkpoint")

"""Checkpoints: written atomically (temp file + rename), read with `weights_only=True` so that
loading one never runs code from the file."""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_writer, write_text_atomic  # noqa: F401  (write_text_atomic: re-exported)
from ..errors import UserError


def save(state: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:  # fsynced, then renamed: the old file or the new one, never half
        torch.save(state, fh)


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

"""Option types that several commands share."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from ..errors import UserError


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def class_names(text: str | None) -> list[str]:
    """A comma-separated --largest-component value -> its names, blanks dropped ([] when not given)."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def check_writable(path: Path, option: str) -> None:
    """Refuse an output path that cannot be written, before any work is spent on what goes into it."""
    folder = path.parent
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file path, e.g. {path / 'out.json'}")
    if not folder.is_dir():
        raise UserError(f"{option} {path}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{option} {path}: the folder {folder} is not writable; choose another path")

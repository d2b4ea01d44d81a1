"""Files replaced whole: written to a temporary sibling, flushed to disk, then renamed into place.

A reader, a run resumed after `kill -9`, or a machine back from a power cut sees the old file or
the new one, never half of one and never an empty one. Every file the tool writes goes through here.
JSON is written strictly: a non-finite float (NaN, inf) becomes null, since NaN is not JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """`.NAME.tmp-PID` beside `path`: hidden, and named by the process, so leftovers of a dead one can be found."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def fsync_directory(folder: Path) -> None:
    """Make a rename inside `folder` durable (the directory entry itself is data)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Write `path` through a binary file handle; it appears whole, and on disk, only if the block succeeds."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)  # atomic on POSIX
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(value):
    """The same structure with every non-finite float as None (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value, indent: int | None = None) -> str:
    """Strict JSON (NaN -> null); raises on anything else JSON cannot hold."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json_atomic(path: Path, value, indent: int | None = 2) -> None:
    write_text_atomic(path, json_text(value, indent) + "\n")

"""Files replaced whole: written to a temporary sibling, flushed to disk, then renamed into place.

A reader, a run resumed after `kill -9`, or a machine back from a power cut sees the old file or
the new one, never half of one and never an empty one. Every file the tool writes goes through here.
JSON is written strictly: a non-finite float (NaN, inf) becomes null, since NaN is not JSON.
"""

from __future__ import annotations

import errno
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
    except OSError as exc:
        if exc.filename == str(tmp):  # the user knows the file they asked for, not our temporary name
            exc.filename = str(path)
        raise
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


def process_alive(pid: int) -> bool:
    """Whether the process that named a `.NAME.tmp-PID` leftover may still be writing it."""
    if pid == os.getpid() or os.name != "posix":  # ours is in use; elsewhere signal 0 is no probe
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


# what to do about an OS error on a file, by errno
WHAT_TO_DO = {
    errno.ENOSPC: "the disk is full: free some space there",
    errno.EDQUOT: "the disk quota is used up: free some space there",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "no permission: make the folder writable or choose another location",
    errno.EPERM: "no permission: make the folder writable or choose another location",
    errno.ENOTDIR: "a file stands where a folder is needed on that path: move it or choose another location",
    errno.EEXIST: "a file stands where a folder is needed: move it or choose another location",
    errno.EISDIR: "a folder stands where the file should go: move it or choose another name",
    errno.ENOENT: "its folder does not exist: create it or choose another location",
}


def os_error_advice(exc: OSError) -> str:
    """'<the system's reason>; <what to do>' for an OS error on a file."""
    reason = exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__
    return f"{reason}; {WHAT_TO_DO.get(exc.errno, 'check that the folder exists, is writable and has free space')}"

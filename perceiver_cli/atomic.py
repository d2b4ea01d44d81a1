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


class StagedFiles:
    """Files that appear together or not at all: each is written whole under a temporary name beside
    its place, and `commit` renames them all into place once the whole command has succeeded;
    `discard` (after a failure) deletes them, and the folders made for them, so a failed call leaves
    nothing behind, its disk space included."""

    def __init__(self):
        self.pending: list[tuple[Path, Path]] = []  # (temporary, final)
        self.made: list[Path] = []  # folders this call created, deepest last

    def write(self, path: Path, data: bytes, make_folder: bool = False) -> None:
        """`make_folder`: create the folders it is in (else a missing one is an error, as elsewhere)."""
        path = Path(path)
        if make_folder:
            self._make_folder(path.parent)
        if path.is_dir():  # found now, not at commit, when other files may be in place already
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        tmp = temporary_sibling(path)
        self.pending.append((tmp, path))
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.filename == str(tmp):
                exc.filename = str(path)
            raise

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            new.mkdir()
            self.made.append(new)

    def commit(self) -> None:
        for tmp, path in self.pending:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                exc.filename, exc.filename2 = str(path), None  # the file the user knows
                raise
        for folder in {path.parent for _, path in self.pending}:
            fsync_directory(folder)
        self.pending, self.made = [], []

    def discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)
        for folder in reversed(self.made):
            try:
                folder.rmdir()  # only when empty: never what another program put there meanwhile
            except OSError:
                pass
        self.pending, self.made = [], []


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


def json_file_bytes(value, indent: int | None = 2) -> bytes:
    """What a JSON file of ours holds: strict JSON, then a newline."""
    return (json_text(value, indent) + "\n").encode("utf-8")


def write_json_atomic(path: Path, value, indent: int | None = 2) -> None:
    write_bytes_atomic(path, json_file_bytes(value, indent))


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
    errno.EIO: "the disk or file system reported an input/output error: check the disk (dmesg), or choose another location",
    errno.EFBIG: "the file is larger than that file system allows: choose another location",
}


# what a failing disk or file system raises, whoever the writer (torch, PIL, numpy, ONNX...)
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


def os_error_within(exc: BaseException) -> OSError | None:
    """The OS error behind `exc`: itself, or for a disk error a library wrapped in its own (torch.save's
    zip writer, on a full disk, raises `RuntimeError: [enforce fail at inline_container.cc]` while
    handling the ENOSPC), the first one down its chain."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def os_error_advice(exc: OSError) -> str:
    """'<the system's reason>; <what to do>' for an OS error on a file."""
    reason = exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__
    return f"{reason}; {WHAT_TO_DO.get(exc.errno, 'check that the folder exists, is writable and has free space')}"

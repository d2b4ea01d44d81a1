"""Writing the files of a run, an evaluation or a report: whole or not at all (atomic.py), and an
OS error (a full disk, a read-only folder, a file where a folder should be) as one line that names
the path, gives the system's reason and says what to do. Also: clearing what killed writes left.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from ..atomic import (StagedFiles, json_file_bytes, os_error_advice, os_error_within, process_alive,
                      write_bytes_atomic)
from ..errors import UserError


def os_error_message(path: Path, exc: OSError, hint: str = "") -> str:
    return f"cannot write {path}: {os_error_advice(exc)}" + (f"; {hint}" if hint else "")


@contextmanager
def writing(path: Path, hint: str = "") -> Iterator[None]:
    """Turn an OSError raised while writing `path` into a UserError (`hint`: what else to do); also one
    that a writing library wrapped in its own error (os_error_within)."""
    try:
        yield
    except Exception as exc:
        os_error = os_error_within(exc)
        if os_error is None or isinstance(exc, UserError):
            raise
        raise UserError(os_error_message(path, os_error, hint)) from None


# Set inside all_or_nothing(): the files written meanwhile are staged, to appear together at its end.
_staged: ContextVar[StagedFiles | None] = ContextVar("staged", default=None)


@contextmanager
def all_or_nothing(hint: str = "") -> Iterator[None]:
    """The files that write_text/write_json/save_figure write inside this block (an evaluation's JSON
    and its figure, say) appear together when the block succeeds; when it fails, none of them does
    and their temporaries are deleted, so a full disk at the second file leaves no first one."""
    staged = StagedFiles()
    token = _staged.set(staged)
    try:
        yield
        try:
            staged.commit()
        except OSError as exc:
            raise UserError(os_error_message(Path(exc.filename or "."), exc, hint)) from None
    except BaseException:
        staged.discard()
        raise
    finally:
        _staged.reset(token)


def write_bytes(path: Path, data: bytes, hint: str = "") -> None:
    """`path` replaced whole by `data`, now or, inside all_or_nothing(), at the end of that block."""
    staged = _staged.get()
    with writing(path, hint):
        if staged is None:
            write_bytes_atomic(path, data)
        else:
            staged.write(path, data)


def write_text(path: Path, text: str, hint: str = "") -> None:
    write_bytes(path, text.encode("utf-8"), hint)


def write_json(path: Path, value, hint: str = "") -> None:
    """Strict JSON: NaN and infinities are written as null (readers turn null back into NaN)."""
    write_bytes(path, json_file_bytes(value), hint)


def append_line(path: Path, line: str, hint: str = "") -> None:
    """A log line, appended (a log is only ever added to; a kill loses at most the line being written)."""
    with writing(path, hint), open(path, "a") as fh:
        fh.write(line + "\n")


def save_figure(fig, path: Path, **options) -> None:
    """A matplotlib figure, written atomically in the format its file name ends with, then closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    buffer = io.BytesIO()  # rendered in memory, so a full disk is met only by write_bytes
    try:
        fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **options)
    finally:
        plt.close(fig)
    write_bytes(path, buffer.getvalue())


# --- what killed writes left ----------------------------------------------------------------------

LEFTOVER = re.compile(r"\..+\.tmp-(\d+)")  # atomic.temporary_sibling's names


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the `.NAME.tmp-PID` files under `folder` whose process is gone (a write killed
    before its rename); a live process's are left alone. Returns what was removed."""
    removed = []
    for path in Path(folder).rglob(".*.tmp-*"):
        match = LEFTOVER.fullmatch(path.name)
        if match and path.is_file() and not path.is_symlink() and not process_alive(int(match.group(1))):
            with writing(path, "remove it by hand"):
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed

"""Replacing a whole directory in one step, and cleaning up after a replace that was killed.

The new directory is built beside the target as `.NAME.tmp-PID`. Where Linux's renameat2 with
RENAME_EXCHANGE works, new and old trade names in one atomic step, so the target always names a
complete directory; the old one, now under the temporary name, is deleted afterwards. Elsewhere the
old one is first renamed to `.NAME.old-PID`: a kill between the two renames leaves no target, and
`recover` (run before every replace and before a load) renames the old one back.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
from pathlib import Path

from ..atomic import fsync_directory, process_alive, temporary_sibling

AT_FDCWD = -100
RENAME_EXCHANGE = 2
# what exchange() answers when the kernel or the file system cannot exchange: fall back
UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def _renameat2():
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError, TypeError):  # not Linux/glibc
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap the names of `a` and `b` atomically; False where this system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def replace_directory(new: Path, target: Path) -> None:
    """Make the complete directory `new` (beside `target`) be `target`, deleting what was there."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        fsync_directory(target.parent)
        return
    if exchange(new, target):  # `new` now names the old directory
        fsync_directory(target.parent)
        shutil.rmtree(new, ignore_errors=True)  # what is left is cleaned by the next recover()
        return
    old = temporary_sibling(target, "old")
    os.rename(target, old)
    try:
        os.rename(new, target)  # a kill just before this leaves only `old`: recover() brings it back
    except BaseException:  # a failing rename (EIO): the old directory goes back where it was
        os.rename(old, target)
        raise
    fsync_directory(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover(target: Path) -> None:
    """Undo what killed replaces left beside `target`: if the target is missing, rename its old
    directory back; delete the temporary ones of processes that are gone, never a live one's."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)")
    try:
        siblings = list(target.parent.iterdir())
    except OSError:  # no parent yet: nothing left over
        return
    stale = []
    for path in siblings:
        match = pattern.fullmatch(path.name)
        if match and not path.is_symlink() and path.is_dir() and not process_alive(int(match.group(2))):
            stale.append((match.group(1), path))
    if not target.exists():
        olds = sorted((p for kind, p in stale if kind == "old"), key=lambda p: p.stat().st_mtime_ns)
        if olds:  # the complete dataset a killed fallback swap had set aside
            os.rename(olds[-1], target)
            fsync_directory(target.parent)
            stale = [(kind, p) for kind, p in stale if p != olds[-1]]
    for _, path in stale:
        shutil.rmtree(path, ignore_errors=True)


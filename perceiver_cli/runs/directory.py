"""A run's directory: runs/<name>, locked while a training uses it, and removed again when the run
saved nothing, so a failed start leaves no empty run behind.

The lock is an flock on <run>/.lock (an empty file, never written: taking or failing to take the
lock changes nothing), held for the life of the training. The system drops it when its holder dies
(kill -9 included), so a lock is never stale: a directory that holds no checkpoint and no live lock
is what a run killed before its first saved epoch left, and a new run takes it over.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UserError
from .files import os_error_message, writing

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None

LOCK_FILE = ".lock"


class RunLock:
    """A held run lock; release() (or the end of the process) frees it. Without a file: a hold that
    another process (the `--devices` launcher) has for this one."""

    def __init__(self, handle=None):
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None


def try_lock(run_dir: Path) -> RunLock | None:
    """The lock of `run_dir`, or None when a live process holds it."""
    path = Path(run_dir) / LOCK_FILE
    with writing(path):
        handle = open(path, "a")  # made if missing, else left as it is
    if fcntl is None:
        return RunLock(handle)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return RunLock(handle)


def lock_run(run_dir: Path) -> RunLock:
    """The lock of an existing run directory, or one line naming the live process that holds it."""
    lock = try_lock(run_dir)
    if lock is None:
        pid = lock_holder(Path(run_dir) / LOCK_FILE)
        raise UserError(f"{run_dir}: another perceiver train{f' (pid {pid})' if pid else ''} is using this run; wait "
                        f"for it to end or stop it {f'(kill {pid}) ' if pid else ''}and run this again")
    return lock


def lock_holder(path: Path) -> int | None:
    """The pid that holds the flock on `path`, from Linux's /proc/locks; None where it is not known."""
    try:
        st = path.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" ("->" when waiting)
        fields = line.split()
        if "->" not in fields and "FLOCK" in fields and fields[-3] == where and fields[-4].isdigit():
            return int(fields[-4])
    return None


def has_checkpoint(run_dir: Path) -> bool:
    return any((Path(run_dir) / "checkpoints").glob("*.pt"))


def left_unsaved(folder: Path) -> bool:
    """Whether `folder` holds nothing of value: no checkpoint, and made by a run (its lock file or
    config.yaml) or empty. A folder of other files is never taken for one."""
    if has_checkpoint(folder):
        return False
    return (folder / LOCK_FILE).exists() or (folder / "config.yaml").is_file() or not any(folder.iterdir())


def empty_run_dir(run_dir: Path) -> None:
    """Delete what a run that saved nothing left in `run_dir` (its lock file aside: it is held)."""
    with writing(run_dir, "or remove it by hand"):
        for entry in Path(run_dir).iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def create_run_dir(runs_dir: Path, name: str) -> tuple[Path, RunLock]:
    """runs/<name>, or runs/<name>-2, -3 ...: the first that is free, and its lock. A folder left by a
    run that saved no checkpoint and whose process is gone is free: it is emptied and taken over. A run
    with a checkpoint, one a live process uses, and a folder of other files are never touched."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"run name {name!r} must be a plain folder name (no '/'); set train.name or --name")
    if runs_dir.exists() and not runs_dir.is_dir():
        raise UserError(f"train.runs_dir '{runs_dir}' is a file; set train.runs_dir to a folder (or move the file)")
    with writing(runs_dir, "or set train.runs_dir"):
        runs_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = runs_dir / (name if i == 1 else f"{name}-{i}")
        try:
            candidate.mkdir(exist_ok=True)
        except FileExistsError:  # a file of that name
            continue
        except OSError as exc:
            raise UserError(os_error_message(candidate, exc, "or set train.runs_dir")) from None
        if not left_unsaved(candidate):
            continue
        lock = try_lock(candidate)
        if lock is None:  # a live run that has not saved yet
            continue
        if left_unsaved(candidate):  # still, now that no other run can start in it
            empty_run_dir(candidate)
            return candidate, lock
        lock.release()
    raise UserError(f"{runs_dir}: too many runs named {name}; set train.name")


def remove_unsaved(run_dir: Path) -> bool:
    """Delete a new run's directory when no checkpoint was saved in it (all in it is the run's own:
    create_run_dir made it or emptied it). True when it was removed."""
    if has_checkpoint(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True

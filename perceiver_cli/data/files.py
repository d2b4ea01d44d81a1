"""Reading a source that is a folder or a zip of one, the same way (zips are read in place, never extracted).

    with open_source(path) as source:
        for name in source.names:        # every regular file, as a source-relative posix path
            data = source.read(name)     # raises Unreadable(reason): damaged, encrypted, too large...
        source.skipped                   # [{"path", "reason"}]: what is there but never handed out

Only regular files are read: a FIFO or a device would block a read forever (or never end). Members of
a zip whose path leaves it (`..`, absolute) and zips inside the source are listed as skipped, not read.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from ..errors import UserError

# every input is read whole into memory: a file (or zip member) larger than this is refused before
# it is read, naming its size, rather than running out of memory on it
MAX_FILE_BYTES = 2 * 2**30
# zip methods that Python's zipfile decompresses: stored, deflate, bzip2, lzma
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
ARCHIVE_SUFFIXES = (".zip",)


class Unreadable(Exception):
    """A file that cannot be read as an input: the reason, in our words."""


class Source(NamedTuple):
    names: list[str]  # every regular file, source-relative posix paths
    read: Callable[[str], bytes]  # raises Unreadable
    skipped: list[dict]  # {"path", "reason"} of entries never handed out


@contextmanager
def open_source(source: Path) -> Iterator[Source]:
    """The files of a folder or a zip, a reader of them, and what is there but will not be read."""
    source = Path(source)
    if source.is_dir():
        names, skipped = _walk(source)
        yield Source(names, lambda path: read_file(source / path), skipped)
    elif source.is_file():
        if not zipfile.is_zipfile(source):
            raise UserError(f"{source}: not a folder or a .zip; give a folder or a zip of one")
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"{source}: unreadable zip ({exc}); make the zip again") from None
        with archive:
            members, skipped = _members(archive)
            yield Source(list(members), lambda path: _read_member(archive, members[path]), skipped)
    elif source.exists():
        raise UserError(f"{source}: {special_kind(source)}, not a folder or a .zip; give a folder or a zip of one")
    else:
        raise UserError(f"{source}: no such file or folder; give a folder or a .zip")


def skipped_example(skipped: list[dict], key: str = "path") -> str:
    """' (skipped <path>: <reason>)' of the first skipped entry, for a message that nothing was found; '' if none."""
    return f" (skipped {skipped[0][key]}: {skipped[0]['reason']})" if skipped else ""


def is_hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def special_kind(path: Path) -> str:
    """What a path that is neither a regular file nor a folder is, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a link to nothing" if os.path.islink(path) else "not readable"
    for test, words in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "not a regular file"


def read_file(path: Path) -> bytes:
    """A regular file's bytes; Unreadable when it is too large or the system cannot read it."""
    try:
        _check_size(os.stat(path).st_size)
        return Path(path).read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot read it ({exc.strerror or exc})") from None


def _check_size(size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise Unreadable(f"{size / 1e9:,.1f} GB, more than the {MAX_FILE_BYTES / 1e9:.1f} GB one input may be (each "
                         f"is read whole into memory); not read: check that it is the file you meant")


def _walk(root: Path) -> tuple[list[str], list[dict]]:
    """(every regular file under root, as posix paths relative to it; what else is there and not read).
    Hidden entries (.git, __MACOSX...) are neither walked into nor reported."""
    names, skipped, folders = [], [], [""]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(root / folder))
        except OSError as exc:
            if not folder:  # the source itself: the command cannot go on
                raise
            skipped.append({"path": folder, "reason": f"cannot open this folder ({exc.strerror or exc})"})
            continue
        for entry in entries:
            if is_hidden(entry.name):
                continue
            path = f"{folder}/{entry.name}" if folder else entry.name
            if entry.is_dir(follow_symlinks=False):
                folders.append(path)
            elif entry.is_symlink() and entry.is_dir():  # followed, a link could loop back above itself
                skipped.append({"path": path, "reason": "a link to a folder, not followed; give that folder itself"})
            elif not entry.is_file():  # reading a FIFO waits for a writer; a device never ends
                skipped.append({"path": path, "reason": f"{special_kind(Path(entry.path))}, not a regular file; not read"})
            elif path.lower().endswith(ARCHIVE_SUFFIXES):
                skipped.append({"path": path, "reason": NESTED_ZIP})
            else:
                names.append(path)
    return names, skipped


NESTED_ZIP = "a zip inside a folder or zip is not opened; unzip it, or give it on its own"


def _members(archive: zipfile.ZipFile) -> tuple[dict[str, zipfile.ZipInfo], list[dict]]:
    """{posix path: member} of a zip's files, and the members that are never read: paths that leave
    the zip (`..`, absolute: a zip made to write outside its folder) and zips inside it."""
    members, skipped = {}, []
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = info.filename.replace("\\", "/")  # zips made on Windows may use backslashes
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or parts[0].endswith(":"):
            if not any(is_hidden(p) for p in parts if p not in ("", ".", "..")):
                skipped.append({"path": name, "reason": "its path leaves the zip (.. or absolute); not read"})
            continue
        name = "/".join(p for p in parts if p not in ("", "."))  # ./a.png and a//b.png are a.png and a/b.png
        if name.lower().endswith(ARCHIVE_SUFFIXES):
            if not any(is_hidden(p) for p in name.split("/")):
                skipped.append({"path": name, "reason": NESTED_ZIP})
            continue
        members[name] = info
    return members, skipped


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A zip member's bytes, or Unreadable saying why not; its size is checked before anything is read."""
    if info.flag_bits & 0x1:
        raise Unreadable("encrypted (password-protected) in the zip; zip it again without a password")
    if info.compress_type not in ZIP_METHODS:
        method = zipfile.compressor_names.get(info.compress_type, "an unknown method")
        raise Unreadable(f"compressed with {method} (zip method {info.compress_type}), which cannot be read here; "
                         f"zip it again with deflate (the usual method)")
    _check_size(info.file_size)
    try:
        return archive.read(info)
    except MemoryError:
        raise
    except Exception as exc:  # a bad CRC, a corrupt deflate stream, a member cut short: zipfile raises many types
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise Unreadable(f"damaged in the zip ({text}); make the zip again") from None

"""Reading a source that is a folder or a zip of one, the same way (zips are read in place, never extracted)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError


@contextmanager
def open_source(source: Path) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
    """(every file as a source-relative posix path, read(path) -> bytes) for a folder or a zip."""
    if source.is_dir():
        names = []
        for folder, dirs, files in os.walk(source):
            dirs[:] = [d for d in dirs if not is_hidden(d)]  # don't even walk into .git, __MACOSX...
            rel = Path(folder).relative_to(source)
            names += [(rel / f).as_posix() for f in files]
        yield names, lambda path: (source / path).read_bytes()
    elif source.is_file():
        if not zipfile.is_zipfile(source):
            raise UserError(f"{source}: not a folder or a .zip; give a folder or a zip of one")
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"{source}: unreadable zip ({exc}); make the zip again") from None
        with archive:
            # zips made on Windows may use backslashes
            members = {info.filename.replace("\\", "/"): info for info in archive.infolist() if not info.is_dir()}
            yield list(members), lambda path: archive.read(members[path])
    else:
        raise UserError(f"{source}: no such file or folder; give a folder or a .zip")


def is_hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"

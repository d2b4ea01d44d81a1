"""Text as bytes: `perceiver prepare text --from FILE|FOLDER|ZIP` -> one byte stream per split.

Files are split whole (a file is in one split only), in a seeded order, each split filled towards its
share of the bytes; a single file is cut in order instead (its first share is train, ...). Each
split's files are concatenated in that order; the manifest lists every file with its offset and
length (the documents' boundaries) and a digest of all bytes read. Without --from the Python standard
library's own .py files are read: real human-written text on every machine with Python.

A split is stored as rows of ROW bytes, the stream end to end (the last row padded with zeros;
`bytes` says where the stream ends), written while the files are read: a corpus larger than memory
is never held whole, and training maps it from disk. Its one "class" is the stream itself.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .files import Unreadable, open_source
from .prepared import Planned, PreparedDataset, RowStream, Split, check_seed
from .splits import SPLIT_NAMES

ROW = 4096  # bytes per stored row
CLASSES = ["bytes"]


@dataclass
class TextOptions:
    glob: str = "*"
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)
    seed: int = 0


@dataclass
class TextFile:
    name: str  # as the manifest lists it: relative to the source
    size: int


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_text(source: Path | None, options: TextOptions) -> PreparedDataset:
    check_seed(options.seed)
    shares = _check_split(options.split)
    default = source is None
    root = stdlib_root() if default else Path(source)
    glob = "*.py" if default and options.glob == "*" else options.glob
    files, reader = _files(root, glob, default)
    if not files:
        raise UserError(f"{root}: no files match --glob {glob!r}; give a folder, zip or file of text")
    if len(files) == 1:
        assignment = _cut_one_file(files[0], shares)
    else:
        assignment = _split_by_file(files, shares, options.seed)
    splits, plan = {}, {}
    for index, name in enumerate(SPLIT_NAMES):
        chosen = [entry for entry in assignment if entry[0] == index]
        total = sum(length for _, _, _, length in chosen)
        if shares[index] > 0 and total == 0:
            raise UserError(f"{root}: {len(files)} file(s) leave the {name} split empty; add files or change --split")
        if shares[index] == 0:
            continue
        offset, listed = 0, []
        for _, file, start, length in chosen:
            listed.append({"path": file.name, "offset": offset, "bytes": length, **({"from": start} if start else {})})
            offset += length
        rows = math.ceil(total / ROW)
        splits[name] = Split(Planned((rows, ROW), np.dtype(np.uint8)), np.zeros(rows, dtype=np.int64),
                             {"bytes": total, "documents": listed})
        plan[name] = [(file, start, length) for _, file, start, length in chosen]
    described = {"kind": "text", "glob": glob, "split": list(options.split), "seed": options.seed,
                 "files": len(files)}
    if default:
        described.update({"python": sys.version.split()[0], "stdlib": str(root)})
    else:
        described["path"] = str(root)
    stream = _TextStream(plan, reader, described)
    return PreparedDataset(name="text", classes=list(CLASSES), input_spec={"kind": "bytes", "shape": [ROW]},
                           splits=splits, source=described, stream=stream)


def _check_split(split) -> tuple[float, float, float]:
    shares = tuple(float(s) for s in split)
    if len(shares) != 3 or any(not math.isfinite(s) or s < 0 for s in shares) or not shares[0] > 0 or sum(shares) <= 0:
        raise UserError(f"--split {','.join(map(str, split))}: give three shares train,val,test, train above 0, "
                        f"e.g. 0.9,0.05,0.05")
    total = sum(shares)
    return tuple(s / total for s in shares)


def _files(root: Path, glob: str, default: bool):
    """([TextFile] sorted by name, read(name) -> bytes) of a folder, a zip or one file."""
    if not root.exists():
        raise UserError(f"{root}: no such file or folder")
    if root.is_file() and not zipfile.is_zipfile(root):
        return [TextFile(root.name, root.stat().st_size)], lambda name: root.read_bytes()
    if root.is_dir():
        names = []
        for folder, dirs, filenames in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__"
                             and not (default and d == "site-packages"))
            for filename in filenames:
                path = Path(folder) / filename
                relative = path.relative_to(root).as_posix()
                if fnmatch.fnmatch(filename, glob) and not filename.startswith(".") and path.is_file() \
                        and not path.is_symlink():
                    names.append(relative)
        files = [TextFile(name, (root / name).stat().st_size) for name in sorted(names)]
        return files, lambda name: (root / name).read_bytes()
    with zipfile.ZipFile(root) as archive:
        infos = {i.filename: i.file_size for i in archive.infolist()
                 if not i.is_dir() and fnmatch.fnmatch(i.filename.rsplit("/", 1)[-1], glob)}

    def read(name: str) -> bytes:
        with open_source(root) as source:
            return source.read(name)
    return [TextFile(name, size) for name, size in sorted(infos.items())], read


def _split_by_file(files: list[TextFile], shares, seed: int) -> list[tuple[int, TextFile, int, int]]:
    """(split, file, 0, its bytes) for every file: in a seeded order, each to the split furthest below
    its share of the bytes so far (a split of share 0 gets none)."""
    order = np.random.default_rng(seed).permutation(len(files))
    total = sum(f.size for f in files)
    assigned = np.zeros(3)
    chosen = []
    for i in order:
        need = np.array(shares) * total - assigned
        need[np.array(shares) == 0] = -np.inf
        split = int(np.argmax(need))
        assigned[split] += files[i].size
        chosen.append((split, files[i], 0, files[i].size))
    for split in (s for s in range(3) if shares[s] > 0):  # few files: none of the splits asked for stays empty
        if not any(entry[0] == split for entry in chosen):
            counts = np.bincount([entry[0] for entry in chosen], minlength=3)
            donor = int(np.argmax(counts))
            if counts[donor] > 1:
                smallest = min((entry for entry in chosen if entry[0] == donor), key=lambda entry: entry[1].size)
                chosen[chosen.index(smallest)] = (split, *smallest[1:])
    return sorted(chosen, key=lambda entry: (entry[0], entry[1].name))


def _cut_one_file(file: TextFile, shares) -> list[tuple[int, TextFile, int, int]]:
    """One file: its bytes in order, the first share to train, the next to val, the rest to test."""
    bounds = np.round(np.cumsum([0, *shares]) * file.size).astype(int)
    bounds[-1] = file.size
    return [(i, file, int(bounds[i]), int(bounds[i + 1] - bounds[i])) for i in range(3) if bounds[i + 1] > bounds[i]]


class _TextStream(RowStream):
    """Each split's files read one at a time and delivered as rows of ROW bytes."""

    def __init__(self, plan: dict, read, described: dict):
        self.plan, self.read, self.described = plan, read, described

    def produce(self, sink) -> bool:
        digest = hashlib.sha256()
        for name, files in self.plan.items():
            pending = bytearray()
            for file, start, length in files:
                try:
                    data = self.read(file.name)
                except (Unreadable, OSError) as exc:
                    raise UserError(f"{file.name}: cannot read it ({exc}); remove it or fix it") from None
                if len(data) < start + length:
                    raise UserError(f"{file.name}: changed while it was read (now {len(data):,} bytes); prepare again")
                part = data[start: start + length]
                digest.update(part)
                pending += part
                while len(pending) >= ROW:
                    sink(name, np.frombuffer(bytes(pending[:ROW]), dtype=np.uint8))
                    del pending[:ROW]
            if pending:
                sink(name, np.frombuffer(bytes(pending) + bytes(ROW - len(pending)), dtype=np.uint8))
        self.described["sha256"] = digest.hexdigest()
        return True


def stream_of(split: Split) -> np.ndarray:
    """A text split's bytes, end to end (a view of its rows: memory-mapped rows stay on disk)."""
    return np.asarray(split.x).reshape(-1)[: int(split.extra["bytes"])]

"""MNIST from the original idx files (gzip'd as published, or already gunzipped).

Any complete pair is enough: `train-*` becomes split "train", `t10k-*` split "test".
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError
from .prepared import PreparedDataset, Split, channel_stats

# split -> (images file, labels file), without the .gz suffix
PAIRS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# md5 of the published .gz files
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
CLASSES = [str(d) for d in range(10)]


def read_mnist(source: Path, verify_md5: bool = True) -> PreparedDataset:
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"{source}: not a folder; give the folder holding the MNIST idx files ({_expected()})")
    splits, files = {}, []
    for split, (images_name, labels_name) in PAIRS.items():
        images_path, labels_path = _find(source, images_name), _find(source, labels_name)
        if images_path is None and labels_path is None:
            continue
        if images_path is None or labels_path is None:  # half a pair is a forgotten download, not a choice
            have, missing = (images_path, labels_name) if labels_path is None else (labels_path, images_name)
            raise UserError(f"{have} has no partner: {source / missing}.gz is missing; download it too")
        x = _read_idx(images_path, IMAGES_MAGIC, verify_md5)
        y = _read_idx(labels_path, LABELS_MAGIC, verify_md5)
        if len(x) != len(y):
            raise UserError(f"{images_path} holds {len(x)} images but {labels_path} {len(y)} labels; download both again")
        if y.size and y.max() >= len(CLASSES):
            raise UserError(f"{labels_path}: label {int(y.max())} is not a digit 0-9; download it again")
        splits[split] = Split(x[..., None], y.astype(np.int64))  # N 28 28 1
        files += [images_path.name, labels_path.name]
    if not splits:
        raise UserError(f"{source}: no MNIST idx files found; expected {_expected()} (.gz or not)")
    stats_split = splits["train"] if "train" in splits else splits["test"]
    return PreparedDataset(
        name="mnist",
        classes=CLASSES,
        input_spec={"kind": "image", "shape": [28, 28, 1]},
        splits=splits,
        normalization=channel_stats(stats_split.x),
        source={"kind": "mnist-idx", "path": str(source), "files": files, "md5_verified": verify_md5},
    )


def _expected() -> str:
    return ", ".join(name + ".gz" for pair in PAIRS.values() for name in pair)


def _find(folder: Path, name: str) -> Path | None:
    """The .gz as published, else a gunzipped copy."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int, verify_md5: bool) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        if verify_md5:
            actual, expected = hashlib.md5(raw).hexdigest(), MD5[path.name]
            if actual != expected:
                raise UserError(f"{path}: md5 {actual} does not match the published {expected}; download it again")
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise UserError(f"{path}: not a readable gzip file ({exc}); download it again") from None
    # idx header: big-endian int32 magic (0x0803 images, 0x0801 labels: uint8, 3 or 1 dims), then dims
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise UserError(f"{path}: not an MNIST idx file (expected magic number {magic}); download it again")
    dims = [int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4)]
    size = int(np.prod(dims))
    if len(raw) != header + size:
        raise UserError(f"{path}: {len(raw) - header} data bytes where the header says {size} (truncated?); download it again")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()

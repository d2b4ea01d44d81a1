"""CIFAR-10 from the published python version: cifar-10-python.tar.gz, or its extracted cifar-10-batches-py/.

The batches are pickles. They are loaded with an unpickler that can only rebuild numpy arrays, so a
tampered file cannot run code, whether or not its md5 is checked.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from ..console import track
from ..errors import UserError
from .prepared import PreparedDataset, Split, channel_stats

BATCH_DIR = "cifar-10-batches-py"
SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
META = "batches.meta"

try:  # numpy >= 2 moved the array internals to numpy._core; old pickles still name numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

# the only globals a real batch file names
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles spell bytes
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: str):
        super().__init__(io.BytesIO(data), encoding="bytes")  # the files are Python 2 pickles with bytes keys
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UserError(f"{self.path}: refers to {module}.{name}, which no CIFAR-10 batch does (tampered file?); "
                            f"download cifar-10-python.tar.gz again")
        return _ALLOWED[(module, name)]


def read_cifar10(source: Path, verify_md5: bool = True) -> PreparedDataset:
    source = Path(source)
    if source.is_dir():
        folder = source / BATCH_DIR if (source / BATCH_DIR).is_dir() else source
        files, kind, where = _read_folder(folder, verify_md5), "cifar10-batches", folder
    elif source.is_file():
        files, kind, where = _read_tar(source, verify_md5), "cifar10-tar", source
    else:
        raise UserError(f"{source}: no such file or folder; give cifar-10-python.tar.gz or its extracted {BATCH_DIR}/")

    meta = _unpickle(files[META], f"{where}/{META}")
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    except (TypeError, KeyError):
        raise UserError(f"{where}/{META}: has no label_names; download cifar-10-python.tar.gz again") from None
    splits = {}
    for split, names in SPLITS.items():
        parts = [_batch(_unpickle(files[n], f"{where}/{n}"), f"{where}/{n}", len(classes)) for n in names]
        splits[split] = Split(np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
    return PreparedDataset(
        name="cifar10",
        classes=classes,
        input_spec={"kind": "image", "shape": [32, 32, 3]},
        splits=splits,
        normalization=channel_stats(splits["train"].x),
        source={"kind": kind, "path": str(source), "files": _wanted(), "md5_verified": verify_md5},
    )


def _wanted() -> list[str]:
    return [*SPLITS["train"], *SPLITS["test"], META]


def _published_md5() -> dict[str, str]:
    from torchvision.datasets import CIFAR10  # the published per-file md5s live there

    return {**dict(CIFAR10.train_list), **dict(CIFAR10.test_list), CIFAR10.meta["filename"]: CIFAR10.meta["md5"]}


def _check_md5(path: str, data: bytes, expected: str, what: str) -> None:
    actual = hashlib.md5(data).hexdigest()
    if actual != expected:
        raise UserError(f"{path}: md5 {actual} does not match the published {expected}; download {what} again")


def _read_folder(folder: Path, verify_md5: bool) -> dict[str, bytes]:
    md5 = _published_md5() if verify_md5 else {}
    files = {}
    for name in track(_wanted(), "reading CIFAR-10 batches"):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing; extract cifar-10-python.tar.gz again (it holds {BATCH_DIR}/{name})")
        files[name] = path.read_bytes()
        if verify_md5:
            _check_md5(str(path), files[name], md5[name], "cifar-10-python.tar.gz")
    return files


def _read_tar(path: Path, verify_md5: bool) -> dict[str, bytes]:
    if verify_md5:
        from torchvision.datasets import CIFAR10

        digest = hashlib.md5()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != CIFAR10.tgz_md5:
            raise UserError(f"{path}: md5 {digest.hexdigest()} does not match the published {CIFAR10.tgz_md5}; "
                            f"download cifar-10-python.tar.gz again")
    wanted, files = set(_wanted()), {}
    try:  # one sequential pass: members are read as they stream by, nothing is extracted to disk
        with tarfile.open(path, "r:*") as tar:
            for member in track(tar, "reading cifar-10-python.tar.gz"):
                name = PurePosixPath(member.name).name
                if member.isfile() and name in wanted and name not in files:
                    files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: not a readable tar archive ({exc}); download cifar-10-python.tar.gz again") from None
    missing = [n for n in _wanted() if n not in files]
    if missing:
        raise UserError(f"{path}: has no {BATCH_DIR}/{missing[0]}; download cifar-10-python.tar.gz again")
    return files


def _unpickle(data: bytes, path: str):
    try:
        return _BatchUnpickler(data, path).load()
    except UserError:
        raise
    except Exception as exc:  # a corrupt pickle fails in many ways (UnpicklingError, EOFError, ValueError...)
        raise UserError(f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}); "
                        f"download cifar-10-python.tar.gz again") from None


def _batch(batch, path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(x N 32 32 3 uint8, y N int64) from a batch dict; rows of `data` are channel-major (R plane, G, B)."""
    try:
        data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{path}: not a CIFAR-10 batch (no data/labels); download cifar-10-python.tar.gz again") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or labels.shape != (len(data),) or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise UserError(f"{path}: data/labels are not N x 3072 uint8 with N labels in 0..{num_classes - 1}; "
                        f"download cifar-10-python.tar.gz again")
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # N C H W -> N H W C
    return x, labels

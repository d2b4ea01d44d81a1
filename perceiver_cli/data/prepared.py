"""The on-disk prepared-dataset format, shared by every `perceiver prepare` and read by train/eval.

A prepared dataset is a directory:

    manifest.json          what is in it (documented below)
    <split>_x.npy          inputs of one split: uint8 images (N, H, W, C), float32 points/sequences, or a
                           byte stream as uint8 rows (N, ROW) end to end (text.py)
    <split>_y.npy          int64 labels (N,), or with a mask target uint8 label maps (N, H, W)

manifest.json:
    format         "perceiver-prepared/1"
    dataset        name (e.g. "cifar10")
    classes        class names in label order
    input          {"kind": "image", "shape": [H, W, C]} (or points/sequence) of one sample
    target         optional: {"kind": "class"} (the default when absent) is one label per sample;
                   {"kind": "mask", "shape": [H, W]} one label per pixel of an image (segmentation),
                   classes[0] the background; written only for masks
    normalization  {"mean": [...], "std": [...]}: per-channel statistics of train, in [0, 1] units
    splits         {split: {"count", "class_counts": {class: n (samples, or pixels of a mask)}, "files": {"x", "y"},
                            "sha256": {"x", "y"}, ...}}
    source         what it was read from
    skipped        [{"path", "reason"}] for every input that could not be read; [] when none

    .verified.json         which arrays were found to match their sha256, keyed by each file's
                           size, mtime and ctime (so a changed file is hashed again); optional

The manifest is validated against this schema when loaded (extra keys are kept), and every array
against it: its sha256 (once per change of the file), its length, sample shape and labels. Any
mismatch is one line saying to run the prepare again.

The arrays are written front to back in chunks (npy.py); a reader that streams (a RowStream: an
image folder) delivers its rows while they are written, so no dataset is held in memory whole.
`load(mmap=True)` maps the inputs (and label masks) instead of reading them, for data larger than memory.

The directory is written atomically: everything goes to a temporary sibling, flushed to disk, which
then takes the place of the old one in one step (see swap.py), so an interrupted prepare leaves the
old dataset or the new one, never half of one or none.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..atomic import atomic_writer, fsync_directory, temporary_sibling, write_json_atomic
from ..errors import UserError
from . import swap
from .memory import size_text
from .npy import NpyWriter, nbytes

FORMAT = "perceiver-prepared/1"
VERIFIED = ".verified.json"


# --- the manifest's schema ---------------------------------------------------------------------

class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # a split records extras (source_files, patients...)


FileName = Annotated[str, Field(pattern=r"^[^/\\]+\.npy$")]  # inside the dataset folder, never elsewhere
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ArrayFiles(BaseModel):
    x: FileName
    y: FileName


class Digests(BaseModel):
    x: Sha256
    y: Sha256


class SplitInfo(_Open):
    count: int = Field(ge=0)
    class_counts: dict[str, int]
    files: ArrayFiles
    sha256: Digests


SAMPLE_RANK = {"image": 3, "points": 2, "sequence": 2, "bytes": 1}  # H W C; points x (coords + features); length x channels; a row of a byte stream


Size = Annotated[int, Field(ge=1, strict=True)]  # strict: "8" or 8.0 is no size


class InputSpec(_Open):
    kind: Literal["image", "points", "sequence", "bytes"]
    shape: list[Size]

    @model_validator(mode="after")
    def _rank(self):
        if len(self.shape) != SAMPLE_RANK[self.kind]:
            raise ValueError(f"a sample of kind {self.kind} has {SAMPLE_RANK[self.kind]} dimensions, not {len(self.shape)}")
        return self


class TargetSpec(_Open):
    kind: Literal["class", "mask"]
    shape: Optional[list[Size]] = None

    @model_validator(mode="after")
    def _shape(self):
        if self.kind == "mask" and (self.shape is None or len(self.shape) != 2):
            raise ValueError("a mask target has a shape [H, W]")
        return self


CLASS_TARGET = {"kind": "class"}


def is_mask(target: dict | None) -> bool:
    return bool(target) and target.get("kind") == "mask"


Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]  # strict: "0.3" is no number


class Normalization(_Open):
    """Inputs become (x - mean) / std per channel: a NaN, an infinity or a std of 0 would make every input NaN."""
    mean: list[Finite] = Field(min_length=1)
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _channels(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"normalization has {len(self.mean)} means and {len(self.std)} stds; one of each per channel")
        return self


def check_channels(input_spec: InputSpec, normalization: Normalization | None) -> None:
    """An image's normalization has one mean and std per channel (ValueError naming the mismatch)."""
    if normalization is not None and input_spec.kind == "image" and len(normalization.mean) != input_spec.shape[-1]:
        raise ValueError(f"normalization has {len(normalization.mean)} channels, and input.shape {input_spec.shape} "
                         f"{input_spec.shape[-1]}; one mean and std per channel")


class Manifest(_Open):
    format: Literal[FORMAT]
    dataset: str
    classes: list[str] = Field(min_length=1)
    input: InputSpec
    target: Optional[TargetSpec] = None
    normalization: Optional[Normalization] = None
    splits: dict[str, SplitInfo] = Field(min_length=1)
    source: dict = Field(default_factory=dict)
    skipped: list[dict] = Field(default_factory=list)

    @model_validator(mode="after")
    def _normalization(self):
        check_channels(self.input, self.normalization)
        return self


@dataclass
class Split:
    x: np.ndarray  # or Planned: the inputs a RowStream delivers while they are written
    y: np.ndarray
    extra: dict = field(default_factory=dict)  # anything else a split records (e.g. source files)


@dataclass(frozen=True)
class Planned:
    """A split's inputs before they are read: their shape and dtype only."""
    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)


class RowStream:
    """A reader that delivers its inputs while they are written, so that a dataset larger than
    memory is never held whole: its dataset's splits hold Planned inputs until then."""

    stats_split: str | None = None  # whose channel statistics become the normalization

    def produce(self, sink: Callable[[str, np.ndarray], None]) -> bool:
        """Every split's rows in order, through sink(split, row). False when reading found what the
        plan had not foreseen (an image that fails to decode): the dataset now says what its splits
        really are, and the rows are to be delivered again."""
        raise NotImplementedError


PASSES = 3  # a stream re-plans at most once for what it finds; a third pass would mean reads that differ


@dataclass
class PreparedDataset:
    name: str
    classes: list[str]
    input_spec: dict
    splits: dict[str, Split]
    normalization: dict | None = None
    source: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    root: Path | None = None
    stream: RowStream | None = None  # set while the inputs are still to be read
    target: dict = field(default_factory=lambda: dict(CLASS_TARGET))  # or {"kind": "mask", "shape": [H, W]}

    def split(self, name: str) -> Split:
        if name not in self.splits:
            have = ", ".join(self.splits)
            raise UserError(f"dataset '{self.name}' has no '{name}' split (it has: {have})")
        return self.splits[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


CHUNK_ELEMENTS = 2**24  # float64 chunks of at most 128 MB however large the samples


def chunk_rows(sample_size: int) -> int:
    """Rows per chunk written (and per channel_stats step): at most 4096, of CHUNK_ELEMENTS values at
    most. The statistics' rounding depends on these steps: keep them."""
    return min(4096, max(1, CHUNK_ELEMENTS // max(1, sample_size)))


class ChannelStats:
    """Per-channel mean/std of uint8 images in [0, 1] units, from chunks of chunk_rows rows at a time."""

    def __init__(self, channels: int):
        self.total, self.total_sq, self.count = np.zeros(channels), np.zeros(channels), 0

    def add(self, rows: np.ndarray) -> None:
        chunk = rows.reshape(-1, len(self.total)).astype(np.float64)
        chunk /= 255.0
        self.total += chunk.sum(0)
        np.square(chunk, out=chunk)  # in place: one float64 copy of the chunk, not two (same sums)
        self.total_sq += chunk.sum(0)
        self.count += chunk.shape[0]

    def result(self) -> dict:
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 1e-12))
        return {"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]}


def channel_stats(x: np.ndarray) -> dict:
    """Per-channel mean/std of uint8 images in [0, 1] units (computed in chunks to bound memory)."""
    stats, rows = ChannelStats(x.shape[-1]), chunk_rows(x[0].size)
    for start in range(0, len(x), rows):
        stats.add(x[start : start + rows])
    return stats.result()


def split_stats(splits: dict[str, "Split"]) -> dict:
    """The normalization of split datasets: train's channel statistics, or the first split's when
    there is no train (a dataset prepared as all test, to evaluate on)."""
    return channel_stats(splits["train"].x if "train" in splits else next(iter(splits.values())).x)


def class_counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    """Samples per class, or pixels per class of label masks."""
    counts = np.bincount(np.asarray(y).reshape(-1), minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts)}


def check_seed(seed: int) -> None:
    """numpy's generators take seeds of 0 and up: a negative one is the user's to fix, not a traceback."""
    if seed < 0:
        raise UserError(f"--seed {seed}: must be 0 or more")


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of every class held out, chosen by `seed`, both sorted."""
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n = int(round(len(members) * fraction))
        if fraction > 0 and len(members) > 1:
            n = min(max(n, 1), len(members) - 1)
        held.append(rng.permutation(members)[:n])
    held_out = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(y)), held_out)
    return keep, held_out


def write(dataset: PreparedDataset, out: Path) -> Path:
    """Write atomically to `out` (replacing an existing prepared dataset there). The arrays are
    written in chunks; a streamed dataset's inputs are read as they are written, and are memory
    maps of the written files afterwards."""
    out = Path(out)
    check_target(out)
    tmp = temporary_sibling(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _check_disk(dataset, out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_into(dataset, tmp)
        swap.replace_directory(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write the prepared dataset to {out} ({exc.strerror or exc}); "
                        f"free some space or choose another --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if dataset.stream is not None:
        for name, split in dataset.splits.items():
            split.x = np.load(out / f"{name}_x.npy", mmap_mode="r")
        dataset.stream = None
    dataset.root = out
    return out


def _check_disk(dataset: PreparedDataset, out: Path) -> None:
    """Refuse, before writing, arrays that the file system of `out` has no room for."""
    need = sum(split.x.nbytes + (split.y.nbytes if is_mask(dataset.target) else len(split.y) * 8)
               for split in dataset.splits.values())
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise UserError(f"the arrays of {dataset.name} need {size_text(need)} on disk and {out.parent} has "
                        f"{size_text(free)} free; free some space or choose another --out")


def materialize(dataset: PreparedDataset) -> PreparedDataset:
    """A streamed dataset's inputs read into memory (for a folder small enough to hold)."""
    if dataset.stream is None:
        return dataset
    arrays, filled = {}, {}

    def sink(name: str, row: np.ndarray) -> None:
        arrays[name][filled[name]] = row
        filled[name] += 1

    def one_pass() -> bool:
        arrays.update({name: np.empty(split.x.shape, split.x.dtype) for name, split in dataset.splits.items()})
        filled.update(dict.fromkeys(arrays, 0))
        return dataset.stream.produce(sink)

    _passes(dataset, one_pass)
    for name, split in dataset.splits.items():
        split.x = arrays[name]
    if dataset.stream.stats_split:
        dataset.normalization = channel_stats(dataset.splits[dataset.stream.stats_split].x)
    dataset.stream = None
    return dataset


def _passes(dataset: PreparedDataset, one_pass: Callable[[], bool]) -> None:
    """Run passes over the inputs until one delivers what its stream's plan said."""
    for _ in range(PASSES):
        if one_pass():
            return
    raise RuntimeError(f"{dataset.name}: the inputs read differently on each of {PASSES} passes")


class _ReadAgain(Exception):
    """The stream re-planned: the files of this pass are dropped."""


def _write_inputs(dataset: PreparedDataset, folder: Path) -> dict[str, str]:
    """Each split's x file, written in chunks; {filename: sha256}. A streamed dataset's normalization
    is taken from its rows as they pass."""
    stats_split = dataset.stream.stats_split if dataset.stream is not None else None
    digests = {}

    def one_pass() -> bool:
        try:
            with ExitStack() as files:
                writers, stats = {}, None
                for name, split in dataset.splits.items():
                    if name == stats_split:
                        stats = ChannelStats(split.x.shape[-1])
                    fh = files.enter_context(atomic_writer(folder / f"{name}_x.npy"))
                    writers[name] = NpyWriter(fh, split.x.shape, split.x.dtype, chunk_rows(math.prod(split.x.shape[1:])),
                                              stats.add if name == stats_split else None)
                if dataset.stream is None:
                    for name, split in dataset.splits.items():
                        writers[name].add_rows(split.x)
                elif not dataset.stream.produce(lambda name, row: writers[name].add(row)):
                    raise _ReadAgain
                digests.update({f"{name}_x.npy": writer.finish() for name, writer in writers.items()})
        except _ReadAgain:
            return False
        if stats is not None:
            dataset.normalization = stats.result()
        return True

    _passes(dataset, one_pass)
    return digests


def check_target(out: Path) -> None:
    """Before a prepare writes `out`: clean up after killed prepares, and refuse a folder that is not ours."""
    out = Path(out)
    try:
        swap.recover(out)
    except OSError as exc:
        raise UserError(f"cannot tidy the leftovers of an interrupted prepare beside {out} ({exc}); remove them by hand") from None
    if out.exists() and not (out / "manifest.json").is_file():
        raise UserError(f"{out} exists and is not a prepared dataset; choose another --out or remove it")


def _write_into(dataset: PreparedDataset, folder: Path) -> None:
    """Arrays, manifest.json and .verified.json into `folder`, each on disk before the folder is swapped in."""
    digests = _write_inputs(dataset, folder)
    manifest_splits, verified = {}, {}
    for name, split in dataset.splits.items():
        files = {"x": f"{name}_x.npy", "y": f"{name}_y.npy"}
        mask = is_mask(dataset.target)
        y = np.ascontiguousarray(split.y, dtype=np.uint8 if mask else np.int64)
        with atomic_writer(folder / files["y"]) as fh:
            writer = NpyWriter(fh, y.shape, y.dtype, chunk_rows(math.prod(y.shape[1:])) if mask else len(y))
            writer.add_rows(y)
            digests[files["y"]] = writer.finish()
        for filename in files.values():  # stamped once in place: renames change a file's ctime
            verified[filename] = {"stamp": _stamp(folder / filename), "sha256": digests[filename]}
        manifest_splits[name] = {
            "count": int(len(split.y)),
            "class_counts": class_counts(split.y, dataset.classes),
            "files": files,
            "sha256": {k: verified[f]["sha256"] for k, f in files.items()},
            **split.extra,
        }
    manifest = {
        "format": FORMAT,
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "input": dataset.input_spec,
        **({"target": dataset.target} if is_mask(dataset.target) else {}),  # class datasets: as before masks
        "normalization": dataset.normalization,
        "splits": manifest_splits,
        "source": dataset.source,
        "skipped": dataset.skipped,
    }
    write_json_atomic(folder / "manifest.json", manifest)
    write_json_atomic(folder / VERIFIED, verified)
    fsync_directory(folder)


def restore(root: Path) -> None:
    """Bring back a dataset that a swap killed midway set aside (only where renames cannot exchange)."""
    if not Path(root).exists():
        try:
            swap.recover(root)
        except OSError:  # a read-only parent: the user is told no dataset is there
            pass


def read_manifest(root: Path) -> dict:
    """manifest.json as written, after checking it against the schema above."""
    return _read_manifest(Path(root) / "manifest.json")[1]


def _read_manifest(path: Path) -> tuple[Manifest, dict]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc}); run the prepare again") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt manifest ({exc.msg} at line {exc.lineno}); run the prepare again") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} manifest; run the prepare again")
    try:
        return Manifest.model_validate(raw), raw
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        what = f"missing key '{where}'" if error["type"] == "missing" else f"'{where}': {error['msg']}" if where \
            else error["msg"].removeprefix("Value error, ")  # a check across keys
        raise UserError(f"{path}: {what}; {_prepare_again(raw, path.parent)}") from None


# the `perceiver prepare` options each reader records in the manifest's source: (source key, option)
_IMAGES = (("path", "--from"), ("size", "--size"))
PREPARE_OPTIONS = {
    "knee-seg": (("labels", "--labels"), ("images", "--images"), ("synthesize", "--synthesize"), ("slices", "--slices"),
                 ("size", "--size"), ("split", "--split"), ("seed", "--seed"), ("pattern", "--pattern")),
    "akoa": (("path", "--from"), ("labels", "--labels"), ("pattern", "--pattern"), ("slices", "--slices"),
             ("axis", "--axis"), ("size", "--size"), ("split", "--split"), ("split_by", "--split-by"), ("seed", "--seed")),
    "modelnet-off": (("path", "--from"), ("points", "--points"), ("seed", "--seed")),
    "image-folder": _IMAGES,
    "image-zip": _IMAGES,
}


def _prepare_again(raw: dict, root: Path) -> str:
    """How to make this dataset again, from what its manifest still says: the command with every
    option its reader recorded (knee-seg without --synthesize, say, would not run at all)."""
    name = raw.get("dataset") if isinstance(raw.get("dataset"), str) else "<dataset>"
    source = raw.get("source") if isinstance(raw.get("source"), dict) else {}
    kind = str(source.get("kind", ""))
    recorded = PREPARE_OPTIONS.get(kind) or PREPARE_OPTIONS.get(kind.split("-")[0]) or (("path", "--from"),)
    options = [(option, _option_value(key, source.get(key))) for key, option in recorded]
    held_out = source.get("held_out") if isinstance(source.get("held_out"), dict) else {}
    options += [(option, _option_value(key, held_out.get(key))) for key, option in (("fraction", "--val-fraction"), ("test_fraction", "--test-fraction"), ("seed", "--seed"))]
    if kind == "knee-seg" and isinstance(raw.get("classes"), list) and isinstance(source.get("label_values"), list):
        default = ["background"] + [f"label_{v}" for v in source["label_values"][1:]]
        if raw["classes"] != default:  # the classes were named with --names
            options.append(("--names", ",".join(map(str, raw["classes"]))))
    shown = "".join(f" {option} {shlex.quote(value)}" for option, value in options if value is not None)
    return f"re-run `perceiver prepare {name}{shown} --out {shlex.quote(str(root))}`"


def _option_value(key: str, value) -> str | None:
    """A recorded value as its option takes it; None where the option is to be left out (its default)."""
    if isinstance(value, bool) or value is None or (key == "synthesize" and value == 0):
        return None
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return ("x" if key == "size" else ",").join(map(str, value))  # --size HxW, --split a,b,c
    if key == "axis" and not isinstance(value, int):  # "sagittal (from the affine)": the default
        return None
    return str(value) if isinstance(value, (str, int, float)) else None


def load(root: Path, verify: bool = False, mmap: bool = False) -> PreparedDataset:
    """Read a prepared dataset, checked against its manifest. Each array's sha256 is verified when
    the file is new or changed since it was last verified; `verify` re-checks them all regardless.
    `mmap`: the inputs (x) are read-only memory maps of their files, read as they are used (data
    larger than memory), and so are label masks; class labels are always read into memory."""
    root = Path(root)
    restore(root)
    manifest, raw = _read_manifest(root / "manifest.json")
    again = _prepare_again(raw, root)
    _verify_digests(root, manifest, again, everything=verify)
    target = raw.get("target", CLASS_TARGET)
    splits = {}
    for name, info in manifest.splits.items():
        arrays = {}
        for key in ("x", "y"):
            path = root / getattr(info.files, key)
            mapped = mmap and (key == "x" or is_mask(target))
            try:
                arrays[key] = np.load(path, allow_pickle=False, mmap_mode="r" if mapped else None)
            except (OSError, ValueError) as exc:
                raise UserError(f"{path}: cannot read ({exc}); {again}") from None
        _check_split(root, info, manifest, arrays["x"], arrays["y"], again)
        extra = {k: v for k, v in raw["splits"][name].items() if k not in ("count", "class_counts", "files", "sha256")}
        splits[name] = Split(arrays["x"], arrays["y"], extra)
    return PreparedDataset(
        name=manifest.dataset,
        classes=manifest.classes,
        input_spec=raw["input"],
        splits=splits,
        normalization=raw.get("normalization"),
        source=manifest.source,
        skipped=manifest.skipped,
        root=root,
        target=target,
    )


def _check_split(root: Path, info: SplitInfo, manifest: Manifest, x: np.ndarray, y: np.ndarray, again: str) -> None:
    """The arrays are what the manifest says: N samples of input.shape, N integer labels of its classes
    (or, with a mask target, N uint8 label maps of the images' height and width)."""
    x_path, y_path, classes = root / info.files.x, root / info.files.y, len(manifest.classes)
    mask = manifest.target is not None and manifest.target.kind == "mask"
    if mask:
        image = manifest.input.shape[:2]
        if manifest.input.kind != "image" or manifest.target.shape != image:
            raise UserError(f"{root / 'manifest.json'}: target.shape {manifest.target.shape} is not the height and "
                            f"width of input.shape {manifest.input.shape}; {again}")
        if y.dtype != np.uint8 or y.ndim != 3 or list(y.shape[1:]) != image:
            raise UserError(f"{y_path}: label masks must be uint8 of shape (N, {image[0]}, {image[1]}), found "
                            f"{y.dtype} of shape {list(y.shape)}; {again}")
    elif y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{y_path}: labels must be one integer per sample, found {y.dtype} of shape {list(y.shape)}; {again}")
    if x.ndim < 1 or len(x) != info.count or len(y) != info.count:
        raise UserError(f"{x_path} holds {len(x) if x.ndim else 0} samples and {y_path.name} {len(y)} "
                        f"{'masks' if mask else 'labels'}, where manifest.json says {info.count}; {again}")
    wanted = "uint8" if manifest.input.kind in ("image", "bytes") else "floating"
    if not np.issubdtype(x.dtype, np.uint8 if wanted == "uint8" else np.floating):
        raise UserError(f"{x_path}: {manifest.input.kind} samples must be {wanted}, found {x.dtype}; {again}")
    if list(x.shape[1:]) != manifest.input.shape:
        raise UserError(f"{x_path}: samples of shape {list(x.shape[1:])}, where manifest.json says input.shape "
                        f"{manifest.input.shape}; {again}")
    if mask:  # uint8 has no negatives; a memory map's maximum is read through in pages, never copied whole
        outside = np.atleast_1d(y.max() if y.size else 0)
        outside = outside[outside >= classes]
    else:
        outside = y[(y < 0) | (y >= classes)]
    if outside.size:
        raise UserError(f"{y_path}: label {int(outside[0])} is outside the {classes} classes of manifest.json "
                        f"(labels 0..{classes - 1}); {again}")


# --- sha256 of the arrays, verified once per change of the file ------------------------------------

def _stamp(path: Path) -> list[int]:
    """What changes whenever the file's bytes do: size, mtime and ctime (ctime cannot be set back)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _verified_entry(path: Path) -> dict:
    stamp = _stamp(path)  # taken before hashing: a write during the hash changes it, so it is hashed again
    return {"stamp": stamp, "sha256": _sha256(path)}


def _verify_digests(root: Path, manifest: Manifest, again: str, everything: bool) -> None:
    cache = {} if everything else _read_verified(root)
    verified = {}
    for info in manifest.splits.values():
        for key in ("x", "y"):
            filename, expected = getattr(info.files, key), getattr(info.sha256, key)
            path = root / filename
            try:
                stamp = _stamp(path)
                known = cache.get(filename)
                if known == {"stamp": stamp, "sha256": expected}:
                    verified[filename] = known
                    continue
                entry = _verified_entry(path)
            except OSError as exc:
                raise UserError(f"{path}: cannot read ({exc.strerror or exc}); {again}") from None
            if entry["sha256"] != expected:
                raise UserError(f"{path}: does not match its sha256 in manifest.json (the file is corrupt or was "
                                f"changed); {again}")
            verified[filename] = entry
    if verified != cache:
        try:
            write_json_atomic(root / VERIFIED, verified)
        except OSError:  # a read-only dataset folder: verified again next time
            pass


def _read_verified(root: Path) -> dict:
    try:
        cache = json.loads((root / VERIFIED).read_text())
    except (OSError, ValueError):  # absent or damaged: everything is hashed again
        return {}
    return cache if isinstance(cache, dict) else {}

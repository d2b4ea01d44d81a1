"""The on-disk prepared-dataset format, shared by every `perceiver prepare` and read by train/eval.

A prepared dataset is a directory:

    manifest.json          what is in it (documented below)
    <split>_x.npy          inputs of one split: uint8 images (N, H, W, C), or float32 points/sequences
    <split>_y.npy          int64 labels (N,)

manifest.json:
    format         "perceiver-prepared/1"
    dataset        name (e.g. "cifar10")
    classes        class names in label order
    input          {"kind": "image", "shape": [H, W, C]} (or points/sequence) of one sample
    normalization  {"mean": [...], "std": [...]}: per-channel statistics of train, in [0, 1] units
    splits         {split: {"count", "class_counts": {class: n}, "files": {"x", "y"},
                            "sha256": {"x", "y"}, ...}}
    source         what it was read from
    skipped        [{"path", "reason"}] for every input that could not be read; [] when none

The directory is written atomically: everything goes to a temporary sibling, which is renamed
into place at the end, so an interrupted prepare never leaves a half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

FORMAT = "perceiver-prepared/1"


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray
    extra: dict = field(default_factory=dict)  # anything else a split records (e.g. source files)


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


def channel_stats(x: np.ndarray) -> dict:
    """Per-channel mean/std of uint8 images in [0, 1] units (computed in chunks to bound memory)."""
    channels = x.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096].reshape(-1, channels).astype(np.float64) / 255.0
        total += chunk.sum(0)
        total_sq += np.square(chunk).sum(0)
        count += chunk.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return {"mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std]}


def class_counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(y, minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts)}


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
    """Write atomically to `out` (replacing an existing prepared dataset there)."""
    out = Path(out)
    if out.exists() and not (out / "manifest.json").is_file():
        raise UserError(f"{out} exists and is not a prepared dataset; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest_splits = {}
        for name, split in dataset.splits.items():
            files = {"x": f"{name}_x.npy", "y": f"{name}_y.npy"}
            np.save(tmp / files["x"], np.ascontiguousarray(split.x), allow_pickle=False)
            np.save(tmp / files["y"], np.ascontiguousarray(split.y.astype(np.int64)), allow_pickle=False)
            manifest_splits[name] = {
                "count": int(len(split.y)),
                "class_counts": class_counts(split.y, dataset.classes),
                "files": files,
                "sha256": {k: _sha256(tmp / f) for k, f in files.items()},
                **split.extra,
            }
        manifest = {
            "format": FORMAT,
            "dataset": dataset.name,
            "classes": list(dataset.classes),
            "input": dataset.input_spec,
            "normalization": dataset.normalization,
            "splits": manifest_splits,
            "source": dataset.source,
            "skipped": dataset.skipped,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():  # swap: old aside, new in, old removed
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dataset.root = out
    return out


def read_manifest(root: Path) -> dict:
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt manifest ({exc.msg} at line {exc.lineno}); run the prepare again") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} manifest; run the prepare again")
    return manifest


def load(root: Path, verify: bool = False) -> PreparedDataset:
    """Read a prepared dataset. `verify` re-checks every array's sha256 against the manifest."""
    root = Path(root)
    manifest = read_manifest(root)
    splits = {}
    for name, info in manifest["splits"].items():
        arrays = {}
        for key, filename in info["files"].items():
            path = root / filename
            if verify and _sha256(path) != info["sha256"][key]:
                raise UserError(f"{path}: checksum does not match manifest.json; the file is corrupt, run the prepare again")
            try:
                arrays[key] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise UserError(f"{path}: cannot read ({exc}); run the prepare again") from None
        extra = {k: v for k, v in info.items() if k not in ("count", "class_counts", "files", "sha256")}
        splits[name] = Split(arrays["x"], arrays["y"], extra)
    return PreparedDataset(
        name=manifest["dataset"],
        classes=manifest["classes"],
        input_spec=manifest["input"],
        splits=splits,
        normalization=manifest.get("normalization"),
        source=manifest.get("source", {}),
        skipped=manifest.get("skipped", []),
        root=root,
    )

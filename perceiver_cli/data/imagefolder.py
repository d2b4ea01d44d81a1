"""A labelled image folder, or a zip of one (read in place, never extracted).

Layouts, detected from the folder structure (one wrapper folder around either is fine):

    <root>/<class>/*.png             everything is split "train"
    <root>/<split>/<class>/*.png     split: train, val (or validation, valid), test

Class names are the sorted union of the class folders of all splits; the label is the index in that
list. Images are decoded with PIL, made RGB (or 1-channel L when every image is grayscale) and
resized (bilinear) to `size` or else to the most common size. Images that cannot be decoded are
listed in `skipped` and left out; they never stop the read.

`perceiver prepare` streams: the headers plan the arrays, and the images are decoded while the
arrays are written, a chunk at a time, so the dataset is never held in memory whole.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..console import track
from ..errors import UserError
from .files import Unreadable, is_hidden, open_source, skipped_example
from .memory import check_image_size
from .prepared import (Planned, PreparedDataset, RowStream, Split, check_seed, chunk_rows, materialize,
                       stratified_holdout)

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "test")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
NO_IMAGES = "no images found; expected <root>/<class>/*.png|jpg or <root>/<split>/<class>/*"


def read_image_folder(source: Path, name: str, val_fraction: float = 0.1, seed: int = 0,
                      size: tuple[int, int] | None = None, stream: bool = False,
                      test_fraction: float = 0.0) -> PreparedDataset:
    """The folder's images as a dataset. The headers are read here, which is enough to plan the
    arrays; `stream`: the images are decoded while prepared.write writes them, a chunk at a time
    (never the whole dataset in memory); otherwise they are decoded into arrays here."""
    source = Path(source)
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction {val_fraction}: must be at least 0 and below 1 (e.g. 0.1)")
    if not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise UserError(f"--test-fraction {test_fraction}: must be at least 0, and with --val-fraction {val_fraction} "
                        f"below 1 (e.g. 0.1), so that something is left to train on")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise UserError(f"size {size}: must be two positive numbers, height and width")
    check_seed(seed)

    with open_source(source) as (names, read, unread):
        found = sorted(parts for parts in (n.split("/") for n in names) if _is_image(parts))
        if not found:
            raise UserError(f"{source}: {NO_IMAGES}{skipped_example(unread)}")
        layout, wrapper, samples, skipped = _layout(found)
        if size is not None and samples:  # before decoding anything: a size whose arrays cannot fit is refused
            height, width = size
            channels = _channels(read, samples[0][2])
            held = len(samples) if not stream else min(len(samples), chunk_rows(height * width * channels))
            check_image_size(tuple(size), held, channels, copies=1 if not stream else STREAM_COPIES)
        facts = [_header(read, path) for _, _, path in track(samples, f"reading {source.name}", total=len(samples))]
    folder = _FolderStream(source, samples, facts, unread + skipped, size, val_fraction, seed, test_fraction)
    dataset = PreparedDataset(name=name, classes=folder.classes, input_spec={}, splits={}, stream=folder,
                              source={"kind": "image-folder" if source.is_dir() else "image-zip", "path": str(source),
                                      "files": len(found), "layout": layout, "wrapper": wrapper})
    folder.apply(dataset)
    return dataset if stream else materialize(dataset)


# bytes held per byte of a chunk while streaming: the chunk, and its float64 copy for the statistics
STREAM_COPIES = 9


class _Fact(NamedTuple):
    """What reading one image found: its native (H, W) and whether it is gray, or why it cannot be read."""
    native: tuple[int, int] | None
    gray: bool | None
    reason: str | None = None


def _header(read, path: str) -> _Fact:
    """The image's size and colour from its header alone (nothing is decoded)."""
    try:
        with open_image(read(path)) as img:
            return _Fact((img.height, img.width), _is_gray(img))
    except Exception as exc:  # PIL raises many types for corrupt data; a bad file must not stop the read
        return _Fact(None, None, _reason(exc))


class _Plan(NamedTuple):
    """The arrays the readable images make: one size, one channel count, which image goes where."""
    target: tuple[int, int]
    channels: int
    resized: int
    outputs: dict[str, tuple[int, ...]]  # split -> indices into the samples, in order
    held_out: dict | None


class _FolderStream(RowStream):
    """Plans the arrays from what is known of each image (its header at first), and decodes the
    images in order while they are written. An image that turns out not to decode (a file cut
    short) or to be colour where the plan said gray changes the plan: the images are then decoded
    again knowing what the first pass found (as if every image had been decoded first)."""

    def __init__(self, source: Path, samples, facts: list[_Fact], layout_skipped: list[dict], size, val_fraction, seed,
                 test_fraction: float = 0.0):
        self.source, self.samples, self.facts, self.layout_skipped = source, samples, facts, layout_skipped
        self.size, self.val_fraction, self.seed, self.test_fraction = size, val_fraction, seed, test_fraction
        self.classes = sorted({cls for _, cls, _ in samples})
        self.label_of = {cls: i for i, cls in enumerate(self.classes)}
        self.plan = self._plan()

    def _skipped(self) -> list[dict]:
        return self.layout_skipped + [{"path": path, "reason": fact.reason}
                                      for (_, _, path), fact in zip(self.samples, self.facts) if fact.reason]

    def _plan(self) -> _Plan:
        readable = [i for i, fact in enumerate(self.facts) if fact.reason is None]
        if not readable:
            first = self._skipped()[0]
            raise UserError(f"{self.source}: none of the {len(self.samples)} images could be read "
                            f"(e.g. {first['path']}: {first['reason']}); check the files")
        counts = Counter(self.facts[i].native for i in readable)
        target = tuple(self.size) if self.size is not None else max(counts, key=lambda s: (counts[s], s))
        channels = 1 if all(self.facts[i].gray for i in readable) else 3
        outputs = {split: members for split in SPLIT_ORDER
                   if (members := tuple(i for i in readable if self.samples[i][0] == split))}
        held_out = None
        if self.test_fraction > 0 and list(outputs) != ["train"]:
            raise UserError(f"{self.source}: --test-fraction carves a test split out of train, but this folder has its "
                            f"own {', '.join(s for s in outputs if s != 'train')} split: drop --test-fraction")
        if list(outputs) == ["train"] and self.val_fraction + self.test_fraction > 0:  # stratified shares of train
            members = np.array(outputs["train"])
            labels = np.array([self.label_of[self.samples[i][1]] for i in members], dtype=np.int64)
            test = np.array([], dtype=np.int64)
            if self.test_fraction > 0:  # the test share first, with its own seed stream: val does not move it
                keep, held = stratified_holdout(labels, self.test_fraction, self.seed + 1_000_003)
                test, members, labels = members[held], members[keep], labels[keep]
            val_share = self.val_fraction / (1 - self.test_fraction)  # of what the test share left
            keep, held = stratified_holdout(labels, val_share, self.seed)  # a share of 0 holds nothing out
            if len(held) or len(test):  # else every class has a single image: nothing to spare
                outputs = {"train": tuple(members[keep].tolist())}
                if len(held):
                    outputs["val"] = tuple(members[held].tolist())
                if len(test):
                    outputs["test"] = tuple(test.tolist())
                held_out = {"split": "val", "from": "train", "fraction": self.val_fraction, "seed": self.seed}
                if len(test):
                    held_out["test_fraction"] = self.test_fraction
        resized = sum(n for s, n in counts.items() if s != target)
        return _Plan(target, channels, resized, outputs, held_out)

    def apply(self, dataset: PreparedDataset) -> None:
        """Make `dataset` say what the plan makes."""
        (height, width), plan = self.plan.target, self.plan
        dataset.input_spec = {"kind": "image", "shape": [height, width, plan.channels]}
        dataset.splits = {}
        for split, members in plan.outputs.items():
            extra = {"source_files": [self.samples[i][2] for i in members]}
            if plan.held_out and split in ("val", "test"):
                extra["held_out_from"] = "train"  # traceable to its files through source_files
            labels = np.array([self.label_of[self.samples[i][1]] for i in members], dtype=np.int64)
            dataset.splits[split] = Split(Planned((len(members), height, width, plan.channels), np.dtype(np.uint8)),
                                          labels, extra)
        dataset.source.update({"size": [height, width], "resized": plan.resized})
        dataset.source.pop("held_out", None)
        if plan.held_out:
            dataset.source["held_out"] = plan.held_out
        dataset.skipped = self._skipped()
        self.stats_split = next(s for s in ("train", "test", "val") if s in dataset.splits)
        self.dataset = dataset

    def produce(self, sink) -> bool:
        plan = self.plan
        destination = {i: split for split, members in plan.outputs.items() for i in members}
        foreseen = True  # until something the plan did not foresee: then only learn, and deliver nothing
        with open_source(self.source) as (_, read, _):
            for i, (_, _, path) in enumerate(track(self.samples, f"decoding {self.source.name}", total=len(self.samples))):
                if self.facts[i].reason is not None:  # known not to decode
                    continue
                try:
                    array, native = _decode(read(path), plan.target)
                except Exception as exc:  # PIL raises many types for corrupt data; a bad file must not stop the read
                    self.facts[i] = _Fact(None, None, _reason(exc))
                    foreseen = False
                    continue
                self.facts[i] = _Fact(native, array.ndim == 2)
                if array.ndim == 3 and plan.channels == 1:
                    foreseen = False
                if foreseen:
                    sink(destination[i], _as_row(array, plan.channels))
        replanned = self._plan()
        if foreseen and replanned == plan:
            return True
        self.plan = replanned
        self.apply(self.dataset)
        return False


def _as_row(array: np.ndarray, channels: int) -> np.ndarray:
    """H W C: gray images join colour ones as R = G = B, exactly what PIL's L -> RGB gives."""
    if array.ndim == 3:
        return array
    return np.repeat(array[..., None], 3, axis=2) if channels == 3 else array[..., None]


def _is_image(parts: list[str]) -> bool:
    return os.path.splitext(parts[-1])[1].lower() in EXTENSIONS and not any(is_hidden(p) for p in parts)


def _layout(found: list[list[str]]) -> tuple[str, str | None, list[tuple[str, str, str]], list[dict]]:
    """(layout, wrapper folder, [(split, class, path)], skipped) from the sorted image paths."""
    wrapper = None
    tops = {parts[0] for parts in found}
    if len(tops) == 1 and found[0][0].lower() not in SPLIT_NAMES and any(len(p) >= 3 for p in found):
        wrapper = found[0][0]
    start = 1 if wrapper else 0
    # a split folder (train/, val/, test/) holding class folders decides the layout
    by_split = any(len(p) - start >= 3 and p[start].lower() in SPLIT_NAMES for p in found)
    samples, skipped = [], []
    for parts in found:
        path, inner = "/".join(parts), parts[start:]
        if by_split and (len(inner) < 3 or inner[0].lower() not in SPLIT_NAMES):
            skipped.append({"path": path, "reason": "not in a <split>/<class>/ folder (split: train, val, test)"})
        elif not by_split and len(inner) < 2:
            skipped.append({"path": path, "reason": "not in a <class>/ folder"})
        elif by_split:
            samples.append((SPLIT_NAMES[inner[0].lower()], inner[1], path))
        else:
            samples.append(("train", inner[0], path))
    return ("<split>/<class>" if by_split else "<class>"), wrapper, samples, skipped


@contextmanager
def open_image(data: bytes):
    """PIL's image of `data`; one with more pixels than PIL's limit for an image (a decompression
    bomb: a few KB that decode to GBs) raises instead of being decoded, with no warning printed."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            yield img


def bomb_reason(exc: Exception) -> str | None:
    """Our words for PIL's decompression-bomb refusals; None for any other error."""
    if not isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return None
    pixels = re.search(r"\((\d+) pixels\)", str(exc))
    found = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
    return f"{found}, more than the {Image.MAX_IMAGE_PIXELS:,} an image may have (a decompression bomb?); not decoded"


def _channels(read, path: str) -> int:
    """3 when this image makes the set RGB (a colour one always does), else 1; from its header only."""
    try:
        with open_image(read(path)) as img:
            return 1 if _is_gray(img) else 3
    except Exception:  # unreadable: the decode below skips it and names why
        return 1


def _decode(data: bytes, size: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(H W uint8 for grayscale or H W 3 for colour, native (H, W)); resized to `size` when given."""
    with open_image(data) as img:
        img.load()  # decode now, so a truncated file fails here
        native = (img.height, img.width)
        mode = "L" if _is_gray(img) else "RGB"
        out = img if img.mode == mode else img.convert(mode)
        if size is not None and native != tuple(size):
            out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(out), native


def _is_gray(img: Image.Image) -> bool:
    if img.mode == "P":  # GIFs and some PNGs store gray pixels through a palette
        palette = np.array(img.getpalette("RGB") or [0, 0, 1]).reshape(-1, 3)
        return bool((palette == palette[:, :1]).all())
    return img.mode in GRAY_MODES


def _reason(exc: Exception) -> str:
    if isinstance(exc, Unreadable):  # the file's bytes could not be had (a damaged zip member...): its own words
        return str(exc)
    if bomb_reason(exc):
        return bomb_reason(exc)
    if isinstance(exc, UnidentifiedImageError):  # its message holds a memory address: keep the manifest stable
        return "not a readable image (corrupt, or not the format its extension says)"
    return f"cannot decode: {exc}" if str(exc) else f"cannot decode: {type(exc).__name__}"

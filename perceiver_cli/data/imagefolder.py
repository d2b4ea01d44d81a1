"""A labelled image folder, or a zip of one (read in place, never extracted).

Layouts, detected from the folder structure (one wrapper folder around either is fine):

    <root>/<class>/*.png             everything is split "train"
    <root>/<split>/<class>/*.png     split: train, val (or validation, valid), test

Class names are the sorted union of the class folders of all splits; the label is the index in that
list. Images are decoded with PIL, made RGB (or 1-channel L when every image is grayscale) and
resized (bilinear) to `size` or else to the most common size. Images that cannot be decoded are
listed in `skipped` and left out; they never stop the read.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..console import track
from ..errors import UserError
from .files import is_hidden, open_source
from .memory import check_image_size
from .prepared import PreparedDataset, Split, channel_stats, check_seed, stratified_holdout

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "test")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
NO_IMAGES = "no images found; expected <root>/<class>/*.png|jpg or <root>/<split>/<class>/*"


def read_image_folder(source: Path, name: str, val_fraction: float = 0.1, seed: int = 0,
                      size: tuple[int, int] | None = None) -> PreparedDataset:
    source = Path(source)
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction {val_fraction}: must be at least 0 and below 1 (e.g. 0.1)")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise UserError(f"size {size}: must be two positive numbers, height and width")
    check_seed(seed)

    with open_source(source) as (names, read):
        found = sorted(parts for parts in (n.split("/") for n in names) if _is_image(parts))
        if not found:
            raise UserError(f"{source}: {NO_IMAGES}")
        layout, wrapper, samples, skipped = _layout(found)
        if size is not None and samples:  # before decoding anything: a size whose arrays cannot fit is refused
            check_image_size(tuple(size), len(samples), _channels(read(samples[0][2])))
        classes = sorted({cls for _, cls, _ in samples})
        label_of = {cls: i for i, cls in enumerate(classes)}
        images, native = [], []
        per_split = {split: ([], [], []) for split in SPLIT_ORDER}  # arrays index, labels, paths
        for split, cls, path in track(samples, f"decoding {source.name}", total=len(samples)):
            try:
                array, shape = _decode(read(path), size)
            except Exception as exc:  # PIL raises many types for corrupt data; a bad file must not stop the read
                skipped.append({"path": path, "reason": _reason(exc)})
                continue
            per_split[split][0].append(len(images))
            per_split[split][1].append(label_of[cls])
            per_split[split][2].append(path)
            images.append(array)
            native.append(shape)
    if not images:
        raise UserError(f"{source}: none of the {len(samples)} images could be read "
                        f"(e.g. {skipped[0]['path']}: {skipped[0]['reason']}); check the files")

    x, target, resized = _stack(images, native, size)
    images.clear()  # the arrays are held twice at most: decoded and stacked, or stacked and split
    sample_shape = list(x.shape[1:])
    splits = {split: Split(x[idx], np.array(labels, dtype=np.int64), {"source_files": paths})
              for split, (idx, labels, paths) in per_split.items() if idx}
    del x
    held_out = None
    if "train" in splits and "val" not in splits and "test" not in splits and val_fraction > 0:
        splits, held_out = _hold_out_val(splits["train"], val_fraction, seed)

    stats_split = next(splits[s] for s in ("train", "test", "val") if s in splits)
    source_info = {
        "kind": "image-folder" if source.is_dir() else "image-zip",
        "path": str(source),
        "files": len(found),
        "layout": layout,
        "wrapper": wrapper,
        "size": list(target),
        "resized": resized,
    }
    if held_out:
        source_info["held_out"] = held_out
    return PreparedDataset(
        name=name,
        classes=classes,
        input_spec={"kind": "image", "shape": sample_shape},
        splits=splits,
        normalization=channel_stats(stats_split.x),
        source=source_info,
        skipped=skipped,
    )


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


def _channels(data: bytes) -> int:
    """3 when this image makes the set RGB (a colour one always does), else 1; from its header only."""
    try:
        with open_image(data) as img:
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
    if bomb_reason(exc):
        return bomb_reason(exc)
    if isinstance(exc, UnidentifiedImageError):  # its message holds a memory address: keep the manifest stable
        return "not a readable image (corrupt, or not the format its extension says)"
    return f"cannot decode: {exc}" if str(exc) else f"cannot decode: {type(exc).__name__}"


def _stack(images: list[np.ndarray], native: list[tuple[int, int]], size) -> tuple[np.ndarray, tuple[int, int], int]:
    """(N H W C uint8, (H, W), how many were resized): one size, and RGB unless every image is gray."""
    counts = Counter(native)
    target = tuple(size) if size is not None else max(counts, key=lambda s: (counts[s], s))
    resized = sum(n for s, n in counts.items() if s != target)
    if size is None:  # the size is known only now: bring the others to it
        for i, shape in enumerate(native):
            if shape != target:
                images[i] = np.asarray(Image.fromarray(images[i]).resize((target[1], target[0]), Image.Resampling.BILINEAR))
    if all(img.ndim == 2 for img in images):
        return np.stack(images)[..., None], target, resized
    # mixed: gray images join the colour ones as R = G = B, exactly what PIL's L -> RGB gives
    rgb = [img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2) for img in images]
    return np.stack(rgb), target, resized


def _hold_out_val(train: Split, fraction: float, seed: int) -> tuple[dict[str, Split], dict | None]:
    """A stratified `val` carved out of train, traceable to its files through source_files."""
    keep, held = stratified_holdout(train.y, fraction, seed)
    if len(held) == 0:  # every class has a single image: nothing to spare
        return {"train": train}, None
    files = train.extra["source_files"]
    splits = {
        "train": Split(train.x[keep], train.y[keep], {"source_files": [files[i] for i in keep]}),
        "val": Split(train.x[held], train.y[held], {"source_files": [files[i] for i in held], "held_out_from": "train"}),
    }
    return splits, {"split": "val", "from": "train", "fraction": fraction, "seed": seed}

"""Knee MRI segmentation: NIfTI label maps (and their MR images, or SynthSeg images made from the
maps) -> 2D slices with one uint8 label per pixel, split by patient.

Pairs: a label map belongs to the image of the same file name; else to the image whose name
(without .nii/.nii.gz) it contains or that contains it (`9014797_00m.nii.gz` <- `9014797_00m_seg.nii.gz`,
nnU-Net's `case_0000.nii.gz` <- `case.nii.gz`), the closest in length. A map or an image left
without its other half, two maps of one image, or a map and image of different voxel grids are
refused, naming the files.

Slices: volumes are oriented by their affines as `prepare akoa` does (sagittal slices, superior up,
anterior left; image and map alike), and `slices` evenly spaced slices are taken between the first
and the last slice that hold any label (slices of background only teach nothing). Images are
resized bilinear, label maps nearest (labels are never interpolated).

Labels: `names` gives the names of values 0, 1, ... (a value beyond them is refused); by default
every value found in any map is a class, `background` for 0 and `label_<v>` for the others, in
value order. Patient and visit come from the named groups of `pattern`, by default OAI naming
(`9014797_00m_WB01_...`: patient 9014797, visit 00m) or AKOA's (`OAI9014797_BaseLine_...`).

Only one file's volumes are in memory at a time; the slices, small, are stacked at the end.
"""

from __future__ import annotations

import math
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..console import track
from ..errors import UserError
from .akoa import identify
from .nifti import NIFTI_SUFFIXES, load_nifti, resize, to_uint8
from .splits import SPLIT_NAMES, patients_in_several_splits, split_groups
from .files import Unreadable, is_hidden, open_source, skipped_example
from .memory import check_fits, check_image_size
from .prepared import PreparedDataset, Split, check_seed, split_stats
from .synthseg import generator, synthesize

DEFAULT_PATTERN = r"^(?P<patient>\d+)(?:_(?P<visit>\d+m))?(?=[_.]|$)"  # 9014797_00m_WB01_...
MAX_CLASSES = 256  # labels are stored as uint8
SCAN_SLICES = 16  # slices of a label volume scanned at a time (bounds the temporaries)


@dataclass
class KneeSegOptions:
    labels: Path | None = None  # folder (or zip) of label maps
    images: Path | None = None  # folder (or zip) of their MR images
    pattern: str | None = None  # regex with named groups patient, visit
    slices: int | None = 40  # per volume, within the labelled range; None = all of them
    size: tuple[int, int] = (128, 128)  # height, width
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    synthesize: int = 0  # SynthSeg images per label map
    names: list[str] | None = None  # of values 0, 1, ...


@dataclass
class Volume:
    """What one label map (and its image) gave: the chosen slices of every image of it, and its labels."""
    label: str
    patient: str
    slices: list[int]
    values: np.ndarray  # the label values the whole map holds, sorted
    local: np.ndarray  # (S, H, W) uint8: index into `values` of every pixel
    images: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (source-file tag, (S, H, W) uint8)


def read_kneeseg(options: KneeSegOptions) -> PreparedDataset:
    _check_options(options)
    pattern = re.compile(options.pattern or DEFAULT_PATTERN, 0 if options.pattern else re.IGNORECASE)
    with ExitStack() as stack:
        labels, read_label, unread = _volumes(stack, options.labels, "--labels")
        images, read_image, unread_images = _volumes(stack, options.images, "--images") if options.images else ([], None, [])
        pairs = pair_files(images, labels, options.images, options.labels) if options.images else [(None, p) for p in labels]
        patients = {label: _patient(image, label, pattern, options) for image, label in pairs}
        _check_memory(options, len(pairs))
        volumes, skipped = [], unread + unread_images
        for image, label in track(pairs, f"slicing {len(pairs)} label maps"):
            volume = _read_pair(image, label, patients[label], read_image, read_label, options)
            if volume is None:
                skipped.append({"path": label, "reason": "holds only background (0): no slice to learn from"})
            else:
                volumes.append(volume)
    if not volumes:
        raise UserError(f"{options.labels}: none of the {len(pairs)} label maps holds any label other than 0")
    classes, values = _classes(volumes, options.names)
    splits = _split(volumes, values, options)
    overlap = patients_in_several_splits(splits)
    if overlap:
        raise AssertionError(f"patients in two splits: {sorted(overlap)[:5]}")  # cannot happen: a bug if it does
    return PreparedDataset(
        name="knee-seg",
        classes=classes,
        input_spec={"kind": "image", "shape": [*options.size, 1]},
        splits=splits,
        normalization=split_stats(splits),
        source={
            "kind": "knee-seg", "labels": str(options.labels), "images": str(options.images) if options.images else None,
            "label_maps": len(pairs), "synthesize": options.synthesize, "label_values": [int(v) for v in values],
            "split_by": "patient", "split": list(options.split), "seed": options.seed, "slices": options.slices or "all",
            "axis": "sagittal (from the affine)", "size": list(options.size), "pattern": options.pattern,
            "patients_in_several_splits": [],
        },
        skipped=skipped,
        target={"kind": "mask", "shape": list(options.size)},
    )


def _check_options(options: KneeSegOptions) -> None:
    if options.labels is None:
        raise UserError("prepare knee-seg: --labels DIR is required (a folder of NIfTI label maps)")
    if options.images is None and options.synthesize < 1:
        raise UserError(f"{options.labels}: label maps alone give no images; add --images DIR (their MR images) "
                        f"or --synthesize K (K SynthSeg images per map)")
    if options.images is not None and Path(options.images).resolve() == Path(options.labels).resolve():
        raise UserError(f"--images and --labels are both {options.labels}; keep images and label maps in two folders")
    if options.synthesize < 0:
        raise UserError(f"--synthesize {options.synthesize}: give 0 or more images per label map")
    shares = options.split
    if len(shares) != 3 or not all(math.isfinite(s) and s >= 0 for s in shares) or abs(sum(shares) - 1) > 1e-6:
        raise UserError(f"--split {','.join(map(str, shares))}: give three shares train,val,test that add up to 1, "
                        f"e.g. 0.7,0.15,0.15 (0,0,1: all test)")
    if options.slices is not None and options.slices < 1:
        raise UserError(f"--slices {options.slices}: give a positive number or 'all'")
    if len(options.size) != 2 or min(options.size) < 1:
        raise UserError(f"--size {options.size}: must be two positive numbers, height and width")
    if options.names is not None:
        names = options.names
        if not names or names[0] != "background" or len(set(names)) != len(names) or not all(names):
            raise UserError(f"--names {','.join(names)}: give distinct names of the values 0, 1, ..., the first "
                            f"'background', e.g. background,femur,tibia")
        if len(names) > MAX_CLASSES:
            raise UserError(f"--names: {len(names)} names, and at most {MAX_CLASSES} labels fit in uint8 masks")
    if options.pattern is not None:
        try:
            compiled = re.compile(options.pattern)
        except re.error as exc:
            raise UserError(f"--pattern {options.pattern!r}: not a valid regular expression ({exc})") from None
        if "patient" not in compiled.groupindex:
            raise UserError(f"--pattern {options.pattern!r}: needs a named group (?P<patient>...) (and may have (?P<visit>...))")
    check_seed(options.seed)


def _check_memory(options: KneeSegOptions, maps: int) -> None:
    """Refuse, before reading, images that cannot fit (images and masks, held twice: 4 bytes a pixel):
    one image per map must fit at --size; beyond that, --synthesize is what makes them many."""
    real = options.images is not None
    slices = options.slices or 1
    check_image_size(options.size, maps * min(real + options.synthesize, 2) * slices, 1, copies=4)
    if options.synthesize > 1:
        height, width = options.size
        per_map = real + options.synthesize
        check_fits(4 * maps * per_map * slices * height * width,
                   f"--synthesize {options.synthesize:,}: {maps:,} label map{'s' if maps != 1 else ''} x {per_map:,} "
                   f"images x {slices} slices of {height}x{width}", "fewer --synthesize",
                   lambda share: f"{max(1, int(per_map * share) - real):,}")


# --- files and pairs ---------------------------------------------------------------------------------

def _volumes(stack: ExitStack, source: Path, option: str):
    """(NIfTI files of a folder or zip, sorted, read(path) -> bytes, [{"path", "reason"}] of what is not read there)."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{option} {source}: no such folder")
    names, read, unread = stack.enter_context(open_source(source))
    files = sorted(n for n in names if n.lower().endswith(NIFTI_SUFFIXES) and not any(is_hidden(p) for p in n.split("/")))
    if not files:
        raise UserError(f"{option} {source}: no NIfTI volumes (.nii, .nii.gz) found{skipped_example(unread)}")
    seen = {}
    for path in files:
        if (other := seen.setdefault(_stem(path), path)) != path:
            raise UserError(f"{option} {source}: {other} and {path} have the same name; pairs are matched by name, rename one")
    return files, read, [{"path": f"{source}/{item['path']}", "reason": item["reason"]} for item in unread]


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def pair_files(images: list[str], labels: list[str], images_dir, labels_dir) -> list[tuple[str, str]]:
    """[(image, label map)] matched by name (see the module's docstring), in the label maps' order."""
    by_stem = {_stem(image): image for image in images}
    pairs, owner = [], {}
    for label in labels:
        stem = _stem(label)
        if stem in by_stem:
            image = by_stem[stem]
        else:
            near = sorted((abs(len(s) - len(stem)), s) for s in by_stem if s in stem or stem in s)
            if not near:
                raise UserError(f"{Path(labels_dir) / label}: label map without an image in {images_dir} (an image has "
                                f"the same name, or a name the map's contains); add its image or remove the map")
            if len(near) > 1 and near[0][0] == near[1][0]:
                raise UserError(f"{Path(labels_dir) / label}: label map matches the images {by_stem[near[0][1]]} and "
                                f"{by_stem[near[1][1]]} alike; rename it as its image")
            image = by_stem[near[0][1]]
        if image in owner:
            raise UserError(f"{Path(images_dir) / image}: has two label maps, {owner[image]} and {label}; keep one")
        owner[image] = label
        pairs.append((image, label))
    for image in images:
        if image not in owner:
            raise UserError(f"{Path(images_dir) / image}: image without a label map in {labels_dir} (a map has the "
                            f"same name, or contains the image's); add its label map or remove the image")
    return pairs


def _patient(image: str | None, label: str, pattern: re.Pattern, options: KneeSegOptions) -> str:
    for path in (label, image):
        if path is not None and (patient := identify(path, pattern, {}).patient):
            return patient
    raise UserError(f"{Path(options.labels) / label}: no patient in the name; give --pattern with a group "
                    f"(?P<patient>...), e.g. '(?P<patient>\\d+)_(?P<visit>\\d+m)_'")


# --- pixels ------------------------------------------------------------------------------------------

def _read_pair(image: str | None, label: str, patient: str, read_image, read_label, options: KneeSegOptions) -> Volume | None:
    """The chosen slices of a label map, its image's and its synthetic images'; None for a map of background only."""
    where = Path(options.labels) / label
    try:
        labels = load_nifti(read_label(label), label.lower().endswith(".gz"), None)
    except Exception as exc:  # nibabel/gzip raise many types on corrupt files
        raise UserError(f"{where}: cannot read the label map ({_reason(exc)})") from None
    values, foreground = _scan(labels, where, options.names)
    if not foreground.any():
        return None
    inside = np.flatnonzero(foreground)
    first, last = int(inside[0]), int(inside[-1])
    if options.slices is None or options.slices >= last - first + 1:
        chosen = list(range(first, last + 1))
    else:
        chosen = [int(i) for i in np.unique(np.linspace(first, last, options.slices).round().astype(int))]
    local = np.searchsorted(values, resize_nearest(labels[chosen], options.size)).astype(np.uint8)
    volume = Volume(label, patient, chosen, values, local)
    if image is not None:
        volume.images.append((image, _image_slices(image, read_image, labels.shape, label, chosen, options)))
    del labels
    for copy in range(options.synthesize):
        volume.images.append((f"{label}#synth={copy}", synthesize(local, len(values), generator(options.seed, _name(label), copy))))
    return volume


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _scan(labels: np.ndarray, where: Path, names: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """(the label values the map holds, sorted; which slices hold a label other than 0), a few slices at a time."""
    found, foreground = set(), np.zeros(len(labels), bool)
    for start in range(0, len(labels), SCAN_SLICES):
        chunk = np.asarray(labels[start : start + SCAN_SLICES])
        if chunk.dtype.kind not in "uibf":
            raise UserError(f"{where}: holds {chunk.dtype} values; a label map holds integer labels")
        if chunk.dtype.kind == "f" and not (np.isfinite(chunk).all() and (chunk == np.round(chunk)).all()):
            raise UserError(f"{where}: holds values that are not whole numbers; a label map holds integer labels")
        low, high = (chunk.min(), chunk.max()) if chunk.size else (0, 0)
        if low < 0:
            raise UserError(f"{where}: holds the label value {int(low)}; label values are 0 (background) and up")
        if names is not None and high >= len(names):
            raise UserError(f"{where}: holds the label value {int(high)} and --names names values 0..{len(names) - 1}; "
                            f"give a name for every value up to {int(high)}, or leave out --names")
        flat = chunk.reshape(-1).astype(np.int64)
        present = np.flatnonzero(np.bincount(flat)) if high < 2**16 else np.unique(flat)
        found.update(int(v) for v in present)
        foreground[start : start + len(chunk)] = chunk.reshape(len(chunk), -1).any(axis=1)
    if len(found) > MAX_CLASSES:
        raise UserError(f"{where}: holds {len(found)} label values, and at most {MAX_CLASSES} fit in uint8 masks")
    return np.array(sorted(found), dtype=np.int64), foreground


def _image_slices(image: str, read_image, label_shape: tuple, label: str, chosen: list[int], options) -> np.ndarray:
    where = Path(options.images) / image
    try:
        volume = load_nifti(read_image(image), image.lower().endswith(".gz"), None)
    except Exception as exc:  # a damaged zip member (Unreadable), nibabel/gzip's many types
        raise UserError(f"{where}: cannot read the image ({_reason(exc)})") from None
    if volume.shape != label_shape:
        shown = lambda shape: "x".join(map(str, shape))  # noqa: E731
        raise UserError(f"{Path(options.labels) / label}: label map of shape {shown(label_shape)} and its image {where} of "
                        f"shape {shown(volume.shape)} (slices x rows x columns, oriented); a map must have its image's voxel grid")
    try:
        scaled = to_uint8(volume, chosen)
    except Unreadable as exc:  # a scan of NaNs
        raise UserError(f"{where}: {exc}") from None
    return np.stack([resize(s, options.size) for s in scaled])


def resize_nearest(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes by taking, for every output pixel, the input pixel under its centre."""
    height, width = images.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return np.ascontiguousarray(images[..., rows[:, None], cols[None, :]])


# --- classes and the split --------------------------------------------------------------------------------

def _classes(volumes: list[Volume], names: list[str] | None) -> tuple[list[str], np.ndarray]:
    """(class names, the label value of each class)."""
    if names is not None:
        return list(names), np.arange(len(names))
    values = np.array(sorted({0}.union(*(v.values.tolist() for v in volumes))), dtype=np.int64)
    if len(values) > MAX_CLASSES:
        raise UserError(f"the label maps hold {len(values)} label values, and at most {MAX_CLASSES} fit in uint8 masks; "
                        f"give --names for the values 0..{MAX_CLASSES - 1}")
    return ["background"] + [f"label_{v}" for v in values[1:]], values


def _split(volumes: list[Volume], values: np.ndarray, options: KneeSegOptions) -> dict[str, Split]:
    """Whole patients to train/val/test (splits.split_groups over slices, all of one class)."""
    rows = [(volume, tag, images) for volume in volumes for tag, images in volume.images]
    groups = [volume.patient for volume, _, images in rows for _ in range(len(images))]
    assignment = split_groups(groups, np.zeros(len(groups), np.int64), 1, options.split, options.seed,
                              fix="add label maps of more patients or change --split")
    split_of = dict(zip(groups, assignment))  # a patient's slices all go to one split
    splits = {}
    for s, name in enumerate(SPLIT_NAMES):
        chosen = [row for row in rows if split_of[row[0].patient] == s]
        if not chosen:
            continue
        masks = [np.searchsorted(values, volume.values).astype(np.uint8)[volume.local] for volume, *_ in chosen]
        splits[name] = Split(np.concatenate([images for *_, images in chosen])[..., None], np.concatenate(masks), {
            "patients": sorted({volume.patient for volume, *_ in chosen}),
            "sample_patients": [volume.patient for volume, _, images in chosen for _ in range(len(images))],
            "volumes": len({volume.label for volume, *_ in chosen}),
            "source_files": [f"{tag}#slice={index}" for volume, tag, _ in chosen for index in volume.slices],
        })
    return splits

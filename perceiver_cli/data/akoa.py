"""AKOA knee MRI -> 2D slices with a train/val/test split that never puts one patient in two splits.

Two forms of input, in a folder or a zip (mixed is fine):
  - 3D NIfTI volumes (.nii, .nii.gz), read with nibabel and cut into `slices` evenly spaced 2D slices
    along the sagittal axis (found from the affine: the volume is brought to RAS orientation and cut
    along left-right, shown superior up, anterior left) or along a forced voxel `axis`; each volume's
    intensities are clipped at its 0.5/99.5 percentiles and scaled to uint8.
  - the already-sliced AKOA PNG set, e.g. OAI9014797_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_idx_7.png.
Every slice is resized to `size`.

Who is who: the label (left/right knee), the patient and the visit come, field by field, from a
--labels CSV (columns file,label and optionally patient,visit) if it names the file, else from the
named groups of --pattern, else from the AKOA naming (digits after OAI, BaseLine/1_Year/..., LEFT/
RIGHT/L/R). A file whose label or patient is still unknown is reported in `skipped`, never guessed.

The split groups slices by patient (every slice, visit and knee of a patient in one split) or by
volume (seed 002's looser split), filling the splits greedily towards their share of every class.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..console import track
from ..errors import UserError
from .files import Unreadable, is_hidden, open_source, skipped_example
from .imagefolder import bomb_reason, open_image
from .memory import check_image_size
from .nifti import NIFTI_SUFFIXES, load_nifti, resize, to_uint8
from .prepared import PreparedDataset, Split, check_seed, split_stats
from .splits import SPLIT_NAMES, patients_in_several_splits, split_groups

# AKOA naming: OAI<patient>_<visit>_..._<LEFT|RIGHT>.nii.gz[_idx_<slice>.png]
AKOA_PATIENT = re.compile(r"OAI(\d+)", re.IGNORECASE)
AKOA_VISIT = re.compile(r"(?:^|_)(baseline|\d+_years?|\d+_months?)(?=[_.]|$)", re.IGNORECASE)
AKOA_LABEL = re.compile(r"(?:^|[_.\-\s])(left|right|l|r)(?=[_.\-\s]|$)", re.IGNORECASE)
PNG_SLICE = re.compile(r"_idx_(\d+)\.png$", re.IGNORECASE)
LABEL_ALIASES = {"l": "left", "left": "left", "r": "right", "right": "right"}


@dataclass
class AkoaOptions:
    labels: Path | None = None  # CSV: file,label[,patient,visit]
    pattern: str | None = None  # regex with named groups patient, label, visit
    slices: int | None = 40  # per volume; None = all
    axis: int | None = None  # None = sagittal, from the affine
    size: tuple[int, int] = (228, 260)  # height, width
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    split_by: str = "patient"  # or "volume"


@dataclass
class Identity:
    patient: str | None
    label: str | None
    visit: str | None


def read_akoa(source: Path, options: AkoaOptions) -> PreparedDataset:
    source = Path(source)
    _check_options(options)
    pattern = _compile_pattern(options.pattern)
    table = read_labels_csv(options.labels) if options.labels else {}
    with open_source(source) as (names, read, unread):
        files = sorted(n for n in names if _kind(n) and not any(is_hidden(p) for p in n.split("/")))
        if not files:
            raise UserError(f"{source}: no NIfTI volumes (.nii, .nii.gz) or PNG slices found{skipped_example(unread)}; "
                            f"expected 3D knee volumes or AKOA slices like OAI9014797_BaseLine_..._LEFT.nii.gz_idx_7.png")
        identities = {path: identify(path, pattern, table) for path in files}
        # every labelled file gives at least one slice, held twice while the splits are stacked
        check_image_size(options.size, sum(who.label is not None and who.patient is not None for who in identities.values()), 1)
        slices, skipped = [], list(unread)
        for path in track(files, f"slicing {source.name}"):
            who = identities[path]
            missing = [field for field in ("label", "patient") if getattr(who, field) is None]
            if missing:
                skipped.append({"path": path, "reason": f"no {' or '.join(missing)} in the name; give --pattern with "
                                f"(?P<{missing[0]}>...) or a --labels CSV with a {missing[0]} column"})
                continue
            try:
                images = _read_file(path, read(path), options)
            except Unreadable as exc:  # a damaged zip member, a scan of NaNs...: in our words
                skipped.append({"path": path, "reason": str(exc)})
                continue
            except Exception as exc:  # nibabel/PIL/gzip raise many types on corrupt files: skip, never abort
                reason = bomb_reason(exc) or (f"cannot read: {exc}" if str(exc) else f"cannot read: {type(exc).__name__}")
                skipped.append({"path": path, "reason": reason})
                continue
            volume = PNG_SLICE.sub("", path) if _kind(path) == "png" else path
            for index, image in images:
                slices.append((who, volume, f"{path}#slice={index}" if index is not None else path, image))
    if not slices:
        example = f" (e.g. {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
        raise UserError(f"{source}: none of the {len(files)} files gave a labelled slice{example}")

    classes = sorted({who.label for who, *_ in slices})
    label_of = {name: i for i, name in enumerate(classes)}
    labels = np.array([label_of[who.label] for who, *_ in slices], dtype=np.int64)
    groups = [who.patient if options.split_by == "patient" else volume for who, volume, *_ in slices]
    assignment = split_groups(groups, labels, len(classes), options.split, options.seed)
    splits = {}
    for s, name in enumerate(SPLIT_NAMES):
        index = np.flatnonzero(assignment == s)
        if len(index) == 0:
            continue
        x = np.stack([slices[i][3] for i in index])[..., None]
        splits[name] = Split(x, labels[index], {
            "patients": sorted({slices[i][0].patient for i in index}),
            "sample_patients": [slices[i][0].patient for i in index],  # a validation share carved later keeps them apart
            "volumes": len({slices[i][1] for i in index}),
            "source_files": [slices[i][2] for i in index],
        })
    overlap = patients_in_several_splits(splits)
    if overlap and options.split_by == "patient":
        raise AssertionError(f"patients in two splits: {sorted(overlap)[:5]}")  # cannot happen: a bug if it does
    kinds = sorted({_kind(f) for f in files})
    return PreparedDataset(
        name="akoa",
        classes=classes,
        input_spec={"kind": "image", "shape": [*options.size, 1]},
        splits=splits,
        normalization=split_stats(splits),
        source={
            "kind": "akoa-" + "+".join(kinds), "path": str(source), "files": len(files),
            "split_by": options.split_by, "split": list(options.split), "seed": options.seed,
            "slices": options.slices or "all", "axis": "sagittal (from the affine)" if options.axis is None else options.axis,
            "size": list(options.size), "pattern": options.pattern, "labels": str(options.labels) if options.labels else None,
            "patients_in_several_splits": sorted(overlap),
        },
        skipped=skipped,
    )


def _check_options(options: AkoaOptions) -> None:
    if options.split_by not in ("patient", "volume"):
        raise UserError(f"--split-by {options.split_by!r}: use patient or volume")
    if len(options.split) != 3 or not all(math.isfinite(share) and share >= 0 for share in options.split) \
            or abs(sum(options.split) - 1) > 1e-6 or options.split[0] <= 0:
        raise UserError(f"--split {','.join(map(str, options.split))}: give three shares train,val,test that add up to 1, e.g. 0.7,0.15,0.15")
    if options.slices is not None and options.slices < 1:
        raise UserError(f"--slices {options.slices}: give a positive number or 'all'")
    if options.axis not in (None, 0, 1, 2):
        raise UserError(f"--axis {options.axis}: a volume has axes 0, 1 and 2")
    if len(options.size) != 2 or min(options.size) < 1:
        raise UserError(f"--size {options.size}: must be two positive numbers, height and width")
    check_seed(options.seed)


def _kind(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    return "png" if lower.endswith(".png") else None


# --- who is in a file --------------------------------------------------------------------------

def _compile_pattern(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"--pattern {pattern!r}: not a valid regular expression ({exc})") from None
    if not {"patient", "label", "visit"} & set(compiled.groupindex):
        raise UserError(f"--pattern {pattern!r}: has none of the named groups (?P<patient>...), (?P<label>...), (?P<visit>...)")
    return compiled


def read_labels_csv(path: Path) -> dict[str, dict]:
    """{file name or relative path: {label, patient?, visit?}} from a CSV with a header row."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"--labels {path}: cannot read ({exc})") from None
    if not rows or "file" not in header or "label" not in header:
        raise UserError(f"--labels {path}: expected a header row with columns file,label (and optionally patient,visit)")
    table = {}
    for row in rows:
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        if row["file"]:
            table[row["file"].replace("\\", "/")] = {k: row[k] for k in ("label", "patient", "visit") if row.get(k)}
    return table


def identify(path: str, pattern: re.Pattern | None, table: dict[str, dict]) -> Identity:
    """Patient, label and visit of a file: the CSV wins, then --pattern, then the AKOA naming."""
    name = path.rsplit("/", 1)[-1]
    found = dict(table.get(path) or table.get(name) or table.get(PNG_SLICE.sub("", name)) or {})
    if pattern is not None and (match := pattern.search(name)):
        for field, value in match.groupdict().items():
            if field in ("patient", "label", "visit") and value:
                found.setdefault(field, value)
    if "patient" not in found and (match := AKOA_PATIENT.search(name)):
        found["patient"] = match.group(1)
    if "visit" not in found and (match := AKOA_VISIT.search(name)):
        found["visit"] = match.group(1)
    if "label" not in found:
        sides = {LABEL_ALIASES[m.lower()] for m in AKOA_LABEL.findall(name)}
        if len(sides) == 1:  # both LEFT and RIGHT in one name is ambiguous: not guessed
            found["label"] = sides.pop()
    label = found.get("label")
    if label is not None:
        label = LABEL_ALIASES.get(label.lower(), label)
    return Identity(found.get("patient"), label, found.get("visit"))


# --- pixels ------------------------------------------------------------------------------------

def _read_file(path: str, data: bytes, options: AkoaOptions) -> list[tuple[int | None, np.ndarray]]:
    """[(slice index or None, H x W uint8)] of one file, resized to options.size."""
    if _kind(path) == "png":
        with open_image(data) as img:
            img.load()
            return [(None, resize(np.asarray(img.convert("L")), options.size))]
    return slice_volume(load_nifti(data, path.lower().endswith(".gz"), options.axis), options)


def slice_volume(volume: np.ndarray, options: AkoaOptions) -> list[tuple[int, np.ndarray]]:
    """[(slice index, H x W uint8)] of an oriented volume: options.slices evenly spaced (all when
    None), the volume's intensity window, resized to options.size."""
    count = volume.shape[0]
    chosen = range(count) if options.slices is None or options.slices >= count else \
        np.unique(np.linspace(0, count - 1, options.slices).round().astype(int))
    scaled = to_uint8(volume, [int(i) for i in chosen])
    return [(int(i), resize(image, options.size)) for i, image in zip(chosen, scaled)]

"""What `perceiver predict` does: read the inputs as the run's data was prepared, run the model, and
write what it says: a table (cli/tables.py), --json and --csv files, and for a segmentation run one
mask PNG per input (pixel value = class index, at the model's input size) under --masks, with a label
volume over each NIfTI scan.
Everything is staged and appears together when the call succeeds (nothing of a failed call is left);
an unreadable input is listed under "skipped" and the rest go on.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import StagedFiles, json_text
from ..data.inputs import kind_of
from ..errors import UserError
from ..runs.files import remove_stale_temporaries, writing
from ..tasks import check_options
from .model import load


@dataclass
class PredictOptions:
    top_k: int = 3
    json: Path | None = None
    csv: Path | None = None
    masks: Path = Path("predictions")  # segmentation runs: a mask PNG per input
    batch_size: int = 64
    device: str = "auto"
    mask_size: tuple[int, int] | None = None  # segmentation: masks at this H W (default: the model's input size)
    largest_component: list[str] = field(default_factory=list)  # segmentation: classes kept to their largest region


@dataclass
class PredictResult:
    target: str
    task: str
    classes: list[str]
    rows: list[dict]  # per sample, then per volume (with "slices")
    skipped: list[dict]
    files: list[Path] = field(default_factory=list)  # what was written
    largest_component: list[str] = field(default_factory=list)  # classes cleaned to their largest region per mask


def predict_files(target: Path, inputs: list[Path], options: PredictOptions) -> PredictResult:
    """Predict every input and write what was asked. The masks, label volumes and --json/--csv files
    appear together when the whole call has succeeded; a call that fails part-way leaves none of them."""
    if options.top_k < 1 or options.batch_size < 1:
        raise UserError("--top-k and --batch-size must be at least 1")
    check_outputs(inputs, {"--json": options.json, "--csv": options.csv})
    model = load(target, options.device)
    chosen = {"largest_component": options.largest_component}
    check_options(type(model.task), chosen, "predict_options")
    model.task.configure_predictions(**chosen)
    staged = StagedFiles()
    try:
        result = _predict(target, inputs, options, model, staged)
        with writing(Path(options.json or options.csv or options.masks), "or write the outputs elsewhere"):
            staged.commit()
    except BaseException:
        staged.discard()
        raise
    return result


def _predict(target: Path, inputs: list[Path], options: PredictOptions, model, staged: StagedFiles) -> PredictResult:
    skipped: list[dict] = []
    masks = MaskWriter(Path(options.masks), model, options.top_k, staged) if model.task.writes_masks else None
    rows = []
    for row in model.rows(inputs, options.top_k, options.batch_size, skipped, "predicting", options.mask_size):
        rows.append(masks.write(row) if masks else row)  # a mask is written as it comes, then let go
    if not rows:
        first = skipped[0]
        raise UserError(f"none of the {len(skipped)} inputs could be read (first: {first['input']}: {first['reason']}); "
                        f"give files of the kind the model was trained on")
    rows += masks.volumes if masks else model.volume_rows(rows, options.top_k)
    result = PredictResult(str(target), model.task.name, model.classes, rows, skipped, list(masks.files) if masks else [],
                           [model.classes[i] for i in getattr(model.task, "keep_largest", [])])
    for row in rows:  # every class's probability served the volume summaries; the files keep the top k
        row.pop("probabilities", None)
    if options.json is not None:
        document = {"model": str(target), "task": result.task, "classes": result.classes, "predictions": rows,
                    "skipped": skipped, **({"largest_component": result.largest_component} if result.largest_component else {})}
        with writing(Path(options.json)):
            staged.write(Path(options.json), (json_text(document, indent=2) + "\n").encode())
        result.files.append(Path(options.json))
    if options.csv is not None:
        with writing(Path(options.csv)):
            staged.write(Path(options.csv), csv_text(rows, options.top_k, model.task).encode())
        result.files.append(Path(options.csv))
    return result


def check_outputs(inputs: list[Path], outputs: dict[str, Path | None]) -> None:
    """--json and --csv must not overwrite an input (a file named, or one that a folder named would
    have read) or each other, and must be file names."""
    given = {option: Path(path) for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        if path.is_dir():
            raise UserError(f"{option} {path}: is a folder; give a file name for {option}")
        for source in map(Path, inputs):
            if _same_file(path, source) or (source.is_dir() and _is_within(path, source) and kind_of(path.name)):
                raise UserError(f"{option} {path}: is one of the inputs; writing it would overwrite that file: give "
                                f"another file name")
    names = list(given.items())
    for i, (option, path) in enumerate(names):
        for other, other_path in names[i + 1:]:
            if _same_file(path, other_path):
                raise UserError(f"{option} and {other} both name {path}: one would overwrite the other; give two file names")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
    except OSError:
        return False
    return a.resolve() == b.resolve()


def _is_within(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def parse_size(text: str | None) -> tuple[int, int] | None:
    """--mask-size HEIGHTxWIDTH."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text)
    if not match or 0 in (int(match.group(1)), int(match.group(2))):
        raise UserError(f"--mask-size {text!r}: give HEIGHTxWIDTH, both above 0, e.g. 256x256")
    return int(match.group(1)), int(match.group(2))


class MaskWriter:
    """A segmentation run's masks, written (staged) as their rows come: an 8-bit PNG of class indices
    per image or slice, and for a NIfTI volume whose every slice was predicted, a label volume over the
    scan (`<volume>.mask.nii.gz`: its voxel grid and affine, each slice's mask resized back, nearest)."""

    def __init__(self, folder: Path, model, top_k: int, staged: StagedFiles):
        self.folder, self.model, self.top_k, self.staged = folder, model, top_k, staged
        self.files: list[Path] = []
        self.used: set[str] = set()
        self.pending: dict[str, dict[int, np.ndarray]] = {}  # volume -> {slice index: mask}
        self.volumes: list[dict] = []  # one row per label volume written: its file, its voxels' shares per class
        if folder.is_dir():
            with writing(folder, "or give --masks elsewhere"):
                remove_stale_temporaries(folder)  # what a killed predict left there

    def write(self, row: dict) -> dict:
        from PIL import Image

        mask = row.pop("mask")
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buffer, format="PNG")
        row["mask_file"] = str(self._save(row["input"], ".mask.png", buffer.getvalue()))
        if "volume" in row:
            slices = self.pending.setdefault(row["volume"], {})
            slices[row["slice"]] = mask
            geometry = self.model.volume_geometry(row["volume"])
            if geometry is not None and len(slices) == geometry.slices:
                self._write_volume(row["volume"], geometry)
        return row

    def _write_volume(self, volume: str, geometry) -> None:
        from PIL import Image

        from ..data.nifti import labels_nifti
        from ..tasks.masks import class_shares

        size = (geometry.columns, geometry.rows)
        slices = self.pending.pop(volume)
        labels = np.stack([np.asarray(Image.fromarray(slices[i]).resize(size, Image.Resampling.NEAREST))
                           for i in range(geometry.slices)])
        path = self._save(volume, ".mask.nii.gz", labels_nifti(labels, geometry.affine, geometry.axis))
        self.volumes.append({"input": volume, "slices": geometry.slices, "mask_file": str(path),
                             **class_shares(labels, self.model.classes, self.top_k)})

    def _save(self, name: str, suffix: str, data: bytes) -> Path:
        path = self.folder / mask_name(name, suffix, self.used)
        with writing(path, "or give --masks elsewhere"):
            self.staged.write(path, data, make_folder=True)  # its folder is made with the first mask: none for inputs none of which read
        self.files.append(path)
        return path


def mask_name(sample: str, suffix: str, used: set[str]) -> str:
    """A file name for a sample's mask, unique in this call: its file name (and slice), or its whole
    path when that is taken by an earlier input, or a numbered one when both are (names that differ
    only in characters made safe, like é.png and ö.png)."""
    safe = lambda text: (re.sub(r"[^\w.-]+", "_", text).strip("_.") or "input") + suffix  # noqa: E731
    name = safe(sample.replace("\\", "/").rsplit("/", 1)[-1])
    name = safe(sample) if name in used else name
    stem, number = name[: -len(suffix)], 2
    while name in used:
        name, number = f"{stem}-{number}{suffix}", number + 1
    used.add(name)
    return name


def csv_text(rows: list[dict], top_k: int, task) -> str:
    """One line per row: the input, then the top-k classes with their probabilities (or pixel shares)."""
    out = io.StringIO()
    writer = csv.writer(out)
    key = task.prediction_score
    extra = ["mask_file"] if task.writes_masks else ["slices"]
    writer.writerow(["input"] + [f"{name}{i + 1}" for i in range(top_k) for name in ("class", key)] + extra)
    for row in rows:
        ranked = [value for entry in row["top_k"] for value in (entry["class"], round(entry[key], 6))]
        ranked += [""] * (2 * top_k - len(ranked))
        writer.writerow([row["input"], *ranked, row.get(extra[0], "")])
    return out.getvalue()

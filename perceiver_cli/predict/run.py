"""What `perceiver predict` does: read the inputs as the run's data was prepared, run the model, and
write what it says: a table (cli/tables.py), --json and --csv files, and for a segmentation run one
mask PNG per input (pixel value = class index, at the model's input size) under --masks, with a label
volume over each NIfTI scan.
Everything is written atomically; an unreadable input is listed under "skipped" and the rest go on.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import UserError
from ..runs.files import write_json, write_text, writing
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


@dataclass
class PredictResult:
    target: str
    task: str
    classes: list[str]
    rows: list[dict]  # per sample, then per volume (with "slices")
    skipped: list[dict]
    files: list[Path] = field(default_factory=list)  # what was written


def predict_files(target: Path, inputs: list[Path], options: PredictOptions) -> PredictResult:
    if options.top_k < 1 or options.batch_size < 1:
        raise UserError("--top-k and --batch-size must be at least 1")
    for path in (options.json, options.csv):
        if path is not None and Path(path).is_dir():
            raise UserError(f"{path}: is a folder; give a file name for --json / --csv")
    model = load(target, options.device)
    skipped: list[dict] = []
    masks = MaskWriter(Path(options.masks), model, options.top_k) if model.task.name == "segment" else None
    rows = []
    for row in model.rows(inputs, options.top_k, options.batch_size, skipped, "predicting", options.mask_size):
        rows.append(masks.write(row) if masks else row)  # a mask is written as it comes, then let go
    if not rows:
        first = skipped[0]
        raise UserError(f"none of the {len(skipped)} inputs could be read (first: {first['input']}: {first['reason']}); "
                        f"give files of the kind the model was trained on")
    rows += masks.volumes if masks else model.volume_rows(rows, options.top_k)
    result = PredictResult(str(target), model.task.name, model.classes, rows, skipped, list(masks.files) if masks else [])
    for row in rows:  # every class's probability served the volume summaries; the files keep the top k
        row.pop("probabilities", None)
    if options.json is not None:
        write_json(Path(options.json), {"model": str(target), "task": result.task, "classes": result.classes,
                                        "predictions": rows, "skipped": skipped})
        result.files.append(Path(options.json))
    if options.csv is not None:
        write_text(Path(options.csv), csv_text(rows, options.top_k, result.task))
        result.files.append(Path(options.csv))
    return result


def parse_size(text: str | None) -> tuple[int, int] | None:
    """--mask-size HEIGHTxWIDTH."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", text)
    if not match or 0 in (int(match.group(1)), int(match.group(2))):
        raise UserError(f"--mask-size {text!r}: give HEIGHTxWIDTH, both above 0, e.g. 256x256")
    return int(match.group(1)), int(match.group(2))


class MaskWriter:
    """A segmentation run's masks, written as their rows come: an 8-bit PNG of class indices per image
    or slice, and for a NIfTI volume whose every slice was predicted, a label volume over the scan
    (`<volume>.mask.nii.gz`: its voxel grid and affine, each slice's mask resized back, nearest)."""

    def __init__(self, folder: Path, model, top_k: int):
        self.folder, self.model, self.top_k = folder, model, top_k
        self.files: list[Path] = []
        self.used: set[str] = set()
        self.pending: dict[str, dict[int, np.ndarray]] = {}  # volume -> {slice index: mask}
        self.volumes: list[dict] = []  # one row per label volume written: its file, its voxels' shares per class

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

        from ..data.akoa import labels_nifti
        from ..tasks.segment import class_shares

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
            self.folder.mkdir(parents=True, exist_ok=True)  # on the first mask: nothing is made for inputs none of which read
            write_bytes_atomic(path, data)
        self.files.append(path)
        return path


def mask_name(sample: str, suffix: str, used: set[str]) -> str:
    """A file name for a sample's mask: its file name (and slice), or its whole path when that name is
    taken by an earlier input, with every separator made safe."""
    safe = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") + suffix  # noqa: E731
    name = safe(sample.replace("\\", "/").rsplit("/", 1)[-1])
    name = safe(sample) if name in used else name
    used.add(name)
    return name


def csv_text(rows: list[dict], top_k: int, task: str) -> str:
    """One line per row: the input, then the top-k classes with their probabilities (or pixel shares)."""
    out = io.StringIO()
    writer = csv.writer(out)
    key = "share" if task == "segment" else "probability"
    extra = ["mask_file"] if task == "segment" else ["slices"]
    writer.writerow(["input"] + [f"{name}{i + 1}" for i in range(top_k) for name in ("class", key)] + extra)
    for row in rows:
        ranked = [value for entry in row["top_k"] for value in (entry["class"], round(entry[key], 6))]
        ranked += [""] * (2 * top_k - len(ranked))
        writer.writerow([row["input"], *ranked, row.get(extra[0], "")])
    return out.getvalue()

"""What `perceiver predict` does: read the inputs as the run's data was prepared, run the model, and
write what it says: a table (cli/tables.py), --json and --csv files, and for a segmentation run one
mask PNG per input (pixel value = class index, at the model's input size) under --masks.
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
    rows = model.predict(inputs, options.top_k, options.batch_size, skipped, "predicting", options.mask_size)
    if not rows:
        first = skipped[0]
        raise UserError(f"none of the {len(skipped)} inputs could be read (first: {first['input']}: {first['reason']}); "
                        f"give files of the kind the model was trained on")
    result = PredictResult(str(target), model.task.name, model.classes, rows, skipped)
    if model.task.name == "segment":
        result.files += write_masks(rows, Path(options.masks))
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


def mask_names(samples: list[str]) -> list[str]:
    """A file name per sample's mask: its file name (and slice), or its whole path where two inputs
    share a file name, with every separator made safe."""
    safe = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") + ".mask.png"  # noqa: E731
    short = [safe(sample.replace("\\", "/").rsplit("/", 1)[-1]) for sample in samples]
    if len(set(short)) == len(short):
        return short
    return [safe(sample) for sample in samples]


def write_masks(rows: list[dict], folder: Path) -> list[Path]:
    """Each row's mask as an 8-bit PNG of class indices; the row keeps the file's path instead."""
    from PIL import Image

    written = []
    with writing(folder, "or give --masks elsewhere"):
        folder.mkdir(parents=True, exist_ok=True)
    masked = [row for row in rows if "mask" in row]
    for row, name in zip(masked, mask_names([row["input"] for row in masked])):
        mask = row.pop("mask")
        path = folder / name
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buffer, format="PNG")
        with writing(path, "or give --masks elsewhere"):
            write_bytes_atomic(path, buffer.getvalue())
        row["mask_file"] = str(path)
        written.append(path)
    return written


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

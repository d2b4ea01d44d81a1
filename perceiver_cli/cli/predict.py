"""`perceiver predict`: a trained model on your own files, preprocessed as its training data was."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import tables
from .errors import user_errors
from .options import Device, class_names


@user_errors("predict")
def predict_command(
    target: Path = typer.Argument(..., help="A run directory (its best checkpoint), a checkpoint .pt or a folder written by perceiver export."),
    inputs: List[Path] = typer.Argument(..., help="Image files, meshes (OFF/PLY/STL/OBJ) or NIfTI volumes, as the model was trained on; folders and zips of them (any layout, recursively)."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Classes to show per input, most likely first (segmentation: the classes covering most pixels)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write every prediction (and the skipped inputs) to this JSON file."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write one line per prediction to this CSV file."),
    masks: Path = typer.Option(Path("predictions"), "--masks", help="Segmentation runs: folder for a mask PNG per input (pixel value = class index)."),
    mask_size: Optional[str] = typer.Option(None, "--mask-size", help="Segmentation runs: masks at this HEIGHTxWIDTH, e.g. 512x512 for a scan's own resolution (the decoder's queries are positions: any size).  \\[default: the model's input size]"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Samples per forward pass."),
    device: Device = typer.Option(Device.auto, "--device", help="Device to run on."),
    largest_component: Optional[str] = typer.Option(None, "--largest-component", help="Segmentation: keep only the largest connected region of these classes in each mask (comma-separated names or values, e.g. label_1,label_3,label_5 for the bones); their stray islands become background."),
):
    """What the model says of each input: a table of its top classes (or mask files), JSON and CSV on request."""
    from ..predict.run import PredictOptions, parse_size, predict_files

    keep = class_names(largest_component)

    tables.predictions(predict_files(target, inputs, PredictOptions(top_k, json_path, csv_path, masks, batch_size,
                                                                    device.value, parse_size(mask_size), keep)))

"""`perceiver eval`: a trained run (or checkpoint) measured on a split or a labelled folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from . import tables
from .errors import user_errors
from .options import Device, class_names


class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"


@user_errors("eval")
def eval_command(
    target: Path = typer.Argument(..., help="A run directory (uses checkpoints/best.pt) or a checkpoint .pt file."),
    split: Optional[Split] = typer.Option(None, "--split", help="Split of the run's prepared dataset.  \\[default: test, or val when there is no test split]"),
    data: Optional[Path] = typer.Option(None, "--data", help="Evaluate on any labelled image folder or zip instead (<root>/<class>/* or <root>/<split>/<class>/*); class names must be the model's."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Samples per forward pass."),
    device: Device = typer.Option(Device.auto, "--device", help="Device to evaluate on."),
    flip: Optional[bool] = typer.Option(None, "--flip-average/--no-flip-average", help="Images: average each prediction with its mirror image's.  \\[default: on when the run trained with data.augment.horizontal_flip]"),
    largest_component: Optional[str] = typer.Option(None, "--largest-component", help="Segmentation: keep only the largest connected region of these classes in each slice (comma-separated names or values, e.g. label_1,label_3,label_5 for the bones); their stray islands become background."),
):
    """Accuracy, loss, per-class precision/recall/F1 and confusion matrix; per-class Dice/IoU for segmentation; reconstruction loss for masked-image runs (table, PNG and JSON in the run directory)."""
    from ..evaluate import evaluate

    if data is not None and split is not None:
        raise UserError("give either --split or --data, not both")
    keep = class_names(largest_component)
    tables.evaluation(evaluate(target, split.value if split else None, data, batch_size, device.value, flip, keep))

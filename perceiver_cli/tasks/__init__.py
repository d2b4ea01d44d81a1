"""What is learned (DESIGN.md's Task seam): classify, segment, masked_image."""

from ..errors import UserError
from .base import Task, take
from .classify import ClassifyTask
from .masked import MaskedImageTask
from .segment import SegmentTask

TASKS = {task.name: task for task in (ClassifyTask, SegmentTask, MaskedImageTask)}


def build_task(recipe, dataset, transform) -> Task:
    """The recipe's task for this dataset; refused when the dataset holds the wrong kind of targets."""
    name = recipe.task.name
    target = getattr(dataset, "target", None) or {"kind": "class"}
    if name == "segment" and target.get("kind") != "mask":
        raise UserError(f"task.name=segment needs a dataset with per-pixel labels (masks); '{dataset.name}' has one "
                        f"label per sample: prepare one with `perceiver prepare knee-seg`, or use task.name=classify")
    if name == "classify" and target.get("kind") == "mask":
        raise UserError(f"'{dataset.name}' holds per-pixel labels (masks): train it with --set task.name=segment")
    return TASKS[name](recipe, dataset, transform)


__all__ = ["Task", "take", "build_task", "TASKS"]

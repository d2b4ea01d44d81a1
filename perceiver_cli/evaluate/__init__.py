"""`perceiver eval`: a trained run measured the way its task is measured (classify: accuracy and a
confusion matrix; segment: Dice and IoU per class with overlays; masked_image: reconstruction loss
against the patch-mean baseline, with reconstructions), written as JSON and PNG into the run."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..engine.runtime import resolve_device
from ..errors import UserError
from ..runs.files import all_or_nothing
from ..runs.trained import load_trained
from .classify import EvalResult, evaluate_classifier, folder_samples, metrics, plot_confusion


def evaluate(target: Path, split: str | None = None, data: Path | None = None, batch_size: int = 256,
             device: str = "auto", flip: bool | None = None, largest_component: list[str] | None = None) -> EvalResult:
    """`flip`: average each image's prediction with its mirror's (classify; None: when it trained on mirrors).
    `largest_component`: segment classes of which only the largest region per slice is kept."""
    torch_device = resolve_device(device, "--device")
    model, recipe, loaded = load_trained(Path(target), torch_device)
    if flip and recipe.task.name != "classify":
        raise UserError(f"--flip-average applies to classify runs; this is a {recipe.task.name} run: drop it")
    if largest_component and recipe.task.name != "segment":
        raise UserError(f"--largest-component applies to segment runs; this is a {recipe.task.name} run: drop it")
    if recipe.task.name == "segment":
        from .segment import evaluate_segmentation
        run = partial(evaluate_segmentation, largest_component=largest_component or [])
    elif recipe.task.name == "masked_image":
        from .masked import evaluate_reconstruction as run
    else:
        run = partial(evaluate_classifier, flip=flip)
    with all_or_nothing():  # its JSON and figures appear together
        result = run(model, recipe, loaded, split, data, batch_size, torch_device)
    loaded.tell()
    return result


__all__ = ["EvalResult", "evaluate", "folder_samples", "metrics", "plot_confusion"]

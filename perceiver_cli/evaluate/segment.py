"""`perceiver eval` of a segmentation run: per-class Dice and IoU, mean Dice over the foreground
classes, pixel accuracy and loss, pooled over every pixel of the split (or of another prepared
dataset given as --data, its label names matched to the run's); a PNG with image | truth |
prediction for a few slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import prepared
from ..engine.runtime import InputTransform, autocast, use_bf16
from ..errors import UserError
from ..runs.files import save_figure, write_json
from ..runs.trained import run_dir_of
from ..tasks.segment import class_indices, confusion_counts, dice_and_iou, largest_components, mean_foreground
from .classify import EvalResult, samples_to_evaluate

FIGURE_SAMPLES = 6


def other_dataset(data: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every split of another prepared segmentation dataset, its label values mapped to the run's."""
    dataset = prepared.load(Path(data), mmap=True)
    if (getattr(dataset, "target", None) or {}).get("kind") != "mask":
        raise UserError(f"--data {data}: '{dataset.name}' has one label per sample, not per-pixel masks; give a "
                        f"dataset prepared with `perceiver prepare knee-seg`")
    known = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in dataset.classes if name not in known]
    if unknown:
        raise UserError(f"--data {data}: label '{unknown[0]}' is not one the model knows ({', '.join(classes)}); "
                        f"prepare it with --names {','.join(classes)}")
    remap = np.array([known[name] for name in dataset.classes], dtype=np.uint8)
    x = np.concatenate([s.x for s in dataset.splits.values()])
    y = np.concatenate([remap[s.y] for s in dataset.splits.values()])
    return x, y


@torch.no_grad()
def predict_masks(model, x: np.ndarray, y: np.ndarray, transform, batch_size: int, bf16: bool, device,
                  keep_largest: list[int] = ()):
    """(summed loss, per-class confusion counts, predicted masks uint8 N H W) over all samples; of the
    classes in `keep_largest`, only each mask's largest region is kept."""
    classes = model.num_classes
    counts = torch.zeros(3, classes, dtype=torch.float64, device=device)
    loss, correct, predicted = 0.0, 0.0, []
    for start in range(0, len(x), batch_size):
        stored = torch.from_numpy(np.ascontiguousarray(x[start: start + batch_size])).to(device)
        truth = torch.from_numpy(np.ascontiguousarray(y[start: start + batch_size])).to(device).long()
        with autocast(device, bf16):
            logits = model(transform(stored)).float()
        loss += F.cross_entropy(logits.permute(0, 3, 1, 2), truth, reduction="none").mean((1, 2)).sum().item()
        guess = logits.argmax(-1)
        if keep_largest:
            guess = torch.from_numpy(largest_components(guess.cpu().numpy(), list(keep_largest))).to(device)
        correct += (guess == truth).float().mean((1, 2)).sum().item()
        counts += confusion_counts(guess, truth, classes)
        predicted.append(guess.to(torch.uint8).cpu().numpy())
    return loss, correct, counts.cpu(), np.concatenate(predicted)


def evaluate_segmentation(model, recipe, loaded, split: str | None, data: Path | None, batch_size: int,
                          device: torch.device, largest_component: list[str] = ()) -> EvalResult:
    state, classes = loaded.state, loaded.state["classes"]
    keep = class_indices(list(largest_component), list(classes), "--largest-component")
    run_dir = run_dir_of(loaded.path)
    x, y, tag, described = samples_to_evaluate(recipe, state, split, data, lambda: other_dataset(Path(data), classes),
                                              loaded.path)
    transform = InputTransform(state["input_spec"], state["normalization"], device, recipe.data)
    bf16 = use_bf16(recipe.train.precision, device)
    loss, correct, counts, predicted = predict_masks(model.eval(), x, y, transform, batch_size, bf16, device, keep)
    dice, iou = dice_and_iou(counts)
    both, guessed, truth = counts.tolist()
    report = {
        "task": "segment",
        "checkpoint": str(loaded.path),
        "epoch": state["epoch"],
        "evaluated_on": described,
        "samples": int(len(y)),
        "pixel_accuracy": correct / len(y),
        "loss": loss / len(y),
        "mean_dice": mean_foreground(dice),
        "mean_iou": mean_foreground(iou),
        "largest_component": [classes[i] for i in keep],  # classes cleaned to their largest region per slice
        "per_class": [{"class": name, "dice": d, "iou": i, "pixels": int(t), "predicted_pixels": int(g)}
                      for name, d, i, t, g in zip(classes, dice, iou, truth, guessed)],
    }
    json_path, png_path = run_dir / f"eval_{tag}.json", run_dir / f"segment_{tag}.png"
    write_json(json_path, report)
    plot_overlays(x, y, predicted, classes, f"{described}: mean Dice {report['mean_dice']:.3f}", png_path)
    return EvalResult(report, json_path, png_path)


def figure_samples(y: np.ndarray, count: int = FIGURE_SAMPLES) -> list[int]:
    """Slices worth looking at: spread over those with the most foreground."""
    foreground = (y.reshape(len(y), -1) > 0).sum(1)
    ranked = np.argsort(-foreground, kind="stable")[: max(count, len(y) // 2)]
    return sorted(int(ranked[i]) for i in np.unique(np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().astype(int)))


def overlay(image: np.ndarray, mask: np.ndarray | None, classes: int) -> np.ndarray:
    """A grey image (H W 1|3 uint8) with each foreground label in its own colour (H W 3 float)."""
    import matplotlib

    grey = image.astype(np.float32) / 255
    rgb = np.repeat(grey, 3, axis=-1) if grey.shape[-1] == 1 else grey
    if mask is None:
        return rgb
    colours = matplotlib.colormaps["tab10"](np.arange(classes) % 10)[:, :3]
    tinted = np.where((mask > 0)[..., None], 0.45 * rgb + 0.55 * colours[mask], rgb)
    return tinted


def plot_overlays(x, y, predicted, classes: list[str], title: str, path: Path, samples: list[int] | None = None) -> None:
    """Rows of image | truth | prediction (y None: image | prediction, for images without labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = samples if samples is not None else figure_samples(y if y is not None else predicted)
    columns = [("image", None), ("truth", y), ("prediction", predicted)] if y is not None else \
        [("image", None), ("prediction", predicted)]
    fig, axes = plt.subplots(len(samples), len(columns), figsize=(3 * len(columns), 3 * len(samples)), squeeze=False)
    for row, index in enumerate(samples):
        for column, (name, masks) in enumerate(columns):
            ax = axes[row][column]
            ax.imshow(overlay(np.asarray(x[index]), None if masks is None else np.asarray(masks[index]), len(classes)))
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)

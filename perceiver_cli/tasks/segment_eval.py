"""`perceiver eval` of a segmentation run: per-class Dice and IoU, mean Dice over the foreground
classes, pixel accuracy and loss, pooled over every pixel of the split (or of another prepared
dataset given as --data, its label names matched to the run's); a PNG with image | truth |
prediction for a few slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..console import visible as v
from ..data import prepared
from ..errors import UserError
from .base import Evaluation, Shown
from .masks import class_indices, dice_and_iou, largest_components, mean_foreground

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


def predict_masks(task, context, x: np.ndarray, y: np.ndarray, keep_largest: list[int] = ()):
    """(the task's validation sums over all samples: loss, pixel accuracy, per-class confusion counts;
    the predicted masks, uint8 N H W); of the classes in `keep_largest`, only each mask's largest
    region is kept, and counted."""
    sums = torch.zeros(task.eval_size(), dtype=torch.float64)
    predicted = []
    for logits, truth in context.run(x, lambda batch: ((context.transform(batch[1]),), batch[2]), y):
        truth = truth.long()
        guess = logits.argmax(-1)
        if keep_largest:
            guess = torch.from_numpy(largest_components(guess.cpu().numpy(), list(keep_largest))).to(truth.device)
        sums += task.eval_sums(logits, (truth,), guess).cpu()
        predicted.append(guess.to(torch.uint8).cpu().numpy())
    return sums, np.concatenate(predicted)


def evaluate_segmentation(task, context) -> Evaluation:
    state, classes = context.state, context.state["classes"]
    keep = class_indices(list(context.options.get("largest_component") or []), list(classes), "--largest-component")
    x, y, tag, described = context.samples(lambda data: other_dataset(data, classes))
    sums, predicted = predict_masks(task, context, x, y, keep)
    loss, correct, counts = float(sums[0]), float(sums[1]), sums[2:].reshape(3, len(classes))
    dice, iou = dice_and_iou(counts)
    both, guessed, truth = counts.tolist()
    report = {
        "checkpoint": str(context.checkpoint),
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
    figure = plot_overlays(x, y, predicted, classes, f"{described}: mean Dice {report['mean_dice']:.3f}")
    return Evaluation(report, figure, "segment", tag, dpi=80)


def figure_samples(y: np.ndarray, count: int = FIGURE_SAMPLES) -> list[int]:
    """Slices worth looking at: spread over those with the most foreground."""
    foreground = (y.reshape(len(y), -1) > 0).sum(1)
    ranked = np.argsort(-foreground, kind="stable")[: max(count, len(y) // 2)]
    return sorted(int(ranked[i]) for i in np.unique(np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().astype(int)))


def overlay(image: np.ndarray, mask: np.ndarray | None, classes: int) -> np.ndarray:
    """A grey image (H W 1|3 uint8) with each foreground label in its own colour (H W 3 float)."""
    grey = image.astype(np.float32) / 255
    rgb = np.repeat(grey, 3, axis=-1) if grey.shape[-1] == 1 else grey
    if mask is None:
        return rgb
    colours = label_colours(classes)
    tinted = np.where((mask > 0)[..., None], 0.45 * rgb + 0.55 * colours[mask], rgb)
    return tinted


def label_colours(classes: int) -> np.ndarray:
    """One RGB colour per label (K 3 float): the overlays' and the legend's."""
    import matplotlib

    return matplotlib.colormaps["tab10"](np.arange(classes) % 10)[:, :3]


def plot_overlays(x, y, predicted, classes: list[str], title: str, samples: list[int] | None = None):
    """Rows of image | truth | prediction (y None: image | prediction, for images without labels): a
    matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = samples if samples is not None else figure_samples(y if y is not None else predicted)
    columns = [("image", None), ("truth", y), ("prediction", predicted)] if y is not None else \
        [("image", None), ("prediction", predicted)]
    from matplotlib.patches import Patch

    # constrained layout keeps the figure's title, the column titles and the legend clear of each other
    # (tight_layout let the suptitle run into the first row's titles)
    fig, axes = plt.subplots(len(samples), len(columns), figsize=(3 * len(columns), 3 * len(samples) + 0.9),
                             squeeze=False, layout="constrained")
    for row, index in enumerate(samples):
        for column, (name, masks) in enumerate(columns):
            ax = axes[row][column]
            ax.imshow(overlay(np.asarray(x[index]), None if masks is None else np.asarray(masks[index]), len(classes)))
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name)
    fig.suptitle(title)
    colours = label_colours(len(classes))
    handles = [Patch(color=colours[label], label=name) for label, name in enumerate(classes) if label > 0]
    if handles:  # the background (label 0) is left untinted
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False)
    return fig


def figure_pixels(figure) -> np.ndarray:
    """A matplotlib figure as H W 3 uint8 (for TensorBoard), closed once drawn."""
    import matplotlib.pyplot as plt

    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return pixels


def show_evaluation(report: dict) -> Shown:
    line = (f"[bold]{v(report['evaluated_on'])}[/]: mean Dice [bold]{report['mean_dice']:.4f}[/] (foreground classes) · "
            f"mean IoU {report['mean_iou']:.4f} · pixel accuracy {report['pixel_accuracy']:.2%} · loss {report['loss']:.4f} · "
            f"{report['samples']:,} slices · epoch {report['epoch']} checkpoint"
            + (f" · only the largest region of {', '.join(v(name) for name in report['largest_component'])} kept per slice"
               if report.get("largest_component") else ""))
    figure = lambda value: "-" if value != value else f"{value:.4f}"  # noqa: E731  NaN: neither present nor predicted
    rows = [[v(row["class"]), figure(row["dice"]), figure(row["iou"]), f"{row['pixels']:,}", f"{row['predicted_pixels']:,}"]
            for row in report["per_class"]]
    return Shown(line, [("per class", ["class", "Dice", "IoU", "pixels", "predicted"], rows)])

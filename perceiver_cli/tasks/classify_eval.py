"""`perceiver eval` of a classifier: accuracy, loss, per-class precision/recall/F1 and the confusion
matrix of a trained checkpoint, on a split of its prepared dataset or on any labelled image folder / zip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ..console import visible as v
from ..data.inputs import match_channels
from ..errors import UserError
from .base import Evaluation, Shown


def folder_samples(data: Path, state: dict) -> tuple[np.ndarray, np.ndarray]:
    """All images of a labelled folder/zip, resized to the model's input, labels in the model's class order."""
    from ..data.imagefolder import read_image_folder

    if state["input_spec"]["kind"] != "image":
        raise UserError(f"--data {data}: this model reads {state['input_spec']['kind']}, not images")
    height, width, channels = state["input_spec"]["shape"]
    folder = read_image_folder(Path(data), Path(data).stem, val_fraction=0.0, size=(height, width))
    known = {name: i for i, name in enumerate(state["classes"])}
    unknown = [name for name in folder.classes if name not in known]
    if unknown:
        raise UserError(f"--data {data}: class '{unknown[0]}' is not one the model knows ({', '.join(state['classes'])})")
    remap = np.array([known[name] for name in folder.classes], dtype=np.int64)
    x = np.concatenate([s.x for s in folder.splits.values()])
    y = np.concatenate([remap[s.y] for s in folder.splits.values()])
    return match_channels(x, channels), y


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if len(y) == 0:
        return float("nan"), float("nan")
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def metrics(logits: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict:
    loss, accuracy = loss_and_accuracy(logits, y)
    pred = logits.argmax(1).cpu().numpy()
    true = y.cpu().numpy()
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    return {
        "samples": int(len(true)),
        "accuracy": accuracy,
        "loss": loss,
        "per_class": [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        ],
        "confusion_matrix": confusion_matrix(true, pred, labels=labels).tolist(),  # rows: true, columns: predicted
    }


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str):
    """The confusion matrix as a matplotlib figure (rows: true, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array(matrix)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 20:
        for (i, j), value in np.ndenumerate(m):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > m.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    return fig


def flip_averaging(recipe, state: dict, asked: bool | None) -> bool:
    """Whether to average each image's logits with its mirror image's: asked, or by default when the
    run trained on mirrored images (they are then as familiar to it as the originals)."""
    is_image = state["input_spec"].get("kind") == "image"
    if asked and not is_image:
        raise UserError(f"--flip-average mirrors images, and this run reads {state['input_spec'].get('kind')}s: drop it")
    return is_image and (asked if asked is not None else bool(recipe.data.augment.horizontal_flip))


def evaluate_classifier(task, context) -> Evaluation:
    state = context.state
    flip = flip_averaging(context.recipe, state, context.options.get("flip"))
    x, y, tag, described = context.samples(lambda data: folder_samples(data, state))
    transform = context.transform
    logits = torch.cat([out for out, _ in context.run(x, lambda batch: ((transform(batch[1]),), None))])
    if flip:  # stored images are (N, H, W, C): the mirror reverses W
        mirrored = torch.cat([out for out, _ in context.run(x, lambda batch: ((transform(batch[1].flip(2)),), None))])
        logits = (logits + mirrored) / 2
    report = {
        "checkpoint": str(context.checkpoint),
        "epoch": state["epoch"],
        "evaluated_on": described,
        "flip_averaged": flip,
        **metrics(logits, torch.as_tensor(np.asarray(y), device=logits.device).long(), state["classes"]),
    }
    figure = plot_confusion(report["confusion_matrix"], state["classes"], f"{described}: accuracy {report['accuracy']:.2%}")
    return Evaluation(report, figure, "confusion", tag)


def show_evaluation(report: dict) -> Shown:
    loss = report["loss"]
    shown_loss = f"{loss:.4f}" if loss is not None and loss == loss else "-"  # NaN: no finite logits
    line = (f"[bold]{v(report['evaluated_on'])}[/]: accuracy [bold]{report['accuracy']:.2%}[/] · loss {shown_loss} · "
            f"{report['samples']:,} samples · epoch {report['epoch']} checkpoint"
            + (" · each image averaged with its mirror (--no-flip-average to turn off)" if report.get("flip_averaged") else ""))
    per_class = ("per class", ["class", "precision", "recall", "F1", "support"],
                 [[v(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"])]
                  for row in report["per_class"]])
    classes = [row["class"] for row in report["per_class"]]
    tables = [per_class]
    if len(classes) <= 20:
        tables.append(("confusion matrix (rows: true, columns: predicted)", [""] + [v(name[:6]) for name in classes],
                       [[v(name), *map(str, counts)] for name, counts in zip(classes, report["confusion_matrix"])]))
    return Shown(line, tables)

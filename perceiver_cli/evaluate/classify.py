"""`perceiver eval` of a classifier: accuracy, loss, per-class precision/recall/F1 and the confusion
matrix of a trained checkpoint, on a split of its prepared dataset or on any labelled image folder / zip."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ..engine.runtime import InputTransform, as_tensor, loss_and_accuracy, predict, use_bf16
from ..errors import UserError
from ..runs.files import save_figure, write_json
from ..data.inputs import match_channels
from ..runs.trained import run_dir_of, split_samples


@dataclass
class EvalResult:
    report: dict
    json_path: Path
    png_path: Path


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


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> None:
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
    save_figure(fig, path, dpi=100)


def split_described(recipe, state: dict, split: str, checkpoint: Path) -> str:
    """'cifar10 val split', saying so when that split also chose the checkpoint (best.pt by a val
    metric): its figure is then a little optimistic, and a test split is the honest one."""
    described = f"{state['dataset']} {split} split"
    if split == "val" and Path(checkpoint).name == "best.pt" and recipe.train.best_metric != "last":
        described += f" (which also chose this checkpoint by {recipe.train.best_metric}; a test split is unbiased)"
    return described


def samples_to_evaluate(recipe, state: dict, split: str | None, data: Path | None, read_data, checkpoint: Path):
    """(x, y, file tag, description) of a split of the run's dataset, or of --data (read_data() reads it)."""
    if data is not None:
        x, y = read_data()
        tag, described = f"data-{Path(data).stem}", str(data)
    else:
        x, y, split = split_samples(recipe, state, split)
        tag, described = split, split_described(recipe, state, split, checkpoint)
    if len(y) == 0:
        raise UserError(f"{described}: no samples to evaluate")
    return x, y, tag, described


def flip_averaging(recipe, state: dict, asked: bool | None) -> bool:
    """Whether to average each image's logits with its mirror image's: asked, or by default when the
    run trained on mirrored images (they are then as familiar to it as the originals)."""
    is_image = state["input_spec"].get("kind") == "image"
    if asked and not is_image:
        raise UserError(f"--flip-average mirrors images, and this run reads {state['input_spec'].get('kind')}s: drop it")
    return is_image and (asked if asked is not None else bool(recipe.data.augment.horizontal_flip))


def evaluate_classifier(model, recipe, loaded, split: str | None, data: Path | None, batch_size: int,
                        torch_device: torch.device, flip: bool | None = None) -> EvalResult:
    checkpoint_path, state = loaded.path, loaded.state
    flip = flip_averaging(recipe, state, flip)
    run_dir = run_dir_of(checkpoint_path)
    x, y, tag, described = samples_to_evaluate(recipe, state, split, data, lambda: folder_samples(Path(data), state),
                                              checkpoint_path)
    transform = InputTransform(state["input_spec"], state["normalization"], torch_device, recipe.data)
    bf16 = use_bf16(recipe.train.precision, torch_device)
    stored = as_tensor(x, torch_device)
    logits = predict(model, stored, transform, batch_size, bf16, torch_device)
    if flip:  # stored images are (N, H, W, C): the mirror reverses W
        logits = (logits + predict(model, stored.flip(2), transform, batch_size, bf16, torch_device)) / 2
    report = {
        "task": "classify",
        "checkpoint": str(checkpoint_path),
        "epoch": state["epoch"],
        "evaluated_on": described,
        "flip_averaged": flip,
        **metrics(logits, as_tensor(y, torch_device), state["classes"]),
    }
    json_path = run_dir / f"eval_{tag}.json"
    png_path = run_dir / f"confusion_{tag}.png"
    write_json(json_path, report)
    plot_confusion(report["confusion_matrix"], state["classes"], f"{described}: accuracy {report['accuracy']:.2%}", png_path)
    return EvalResult(report, json_path, png_path)


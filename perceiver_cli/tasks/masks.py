"""Per-pixel label maps measured and cleaned: confusion counts, Dice and IoU per class, the mean over
the foreground classes, the largest connected region of a class, shares of pixels per class (what
segment training, its eval and predict share)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError


def confusion_counts(predicted: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """(3, K) float64: per class |P∩T|, |P|, |T| in pixels."""
    predicted, y = predicted.reshape(-1), y.reshape(-1)
    both = torch.bincount(y[predicted == y], minlength=classes)
    return torch.stack([both, torch.bincount(predicted, minlength=classes),
                        torch.bincount(y, minlength=classes)]).double()


def dice_and_iou(counts: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-class Dice and IoU from confusion_counts (summed over batches); NaN for a class that is
    neither predicted nor present."""
    both, predicted, truth = counts
    union = predicted + truth - both
    dice = torch.where(predicted + truth > 0, 2 * both / (predicted + truth), float("nan"))
    iou = torch.where(union > 0, both / union, float("nan"))
    return dice.tolist(), iou.tolist()


def largest_components(masks: np.ndarray, keep: list[int]) -> np.ndarray:
    """masks (N H W class indices) with only the largest connected region of each class in `keep` per
    mask (8-connected); the rest of that class becomes background. For structures that are one piece
    in every slice (a bone): stray islands of it elsewhere are errors."""
    from scipy import ndimage

    cleaned = np.array(masks, copy=True)
    for mask in cleaned:
        for value in keep:
            regions, count = ndimage.label(mask == value, structure=np.ones((3, 3)))
            if count > 1:
                sizes = np.bincount(regions.reshape(-1))[1:]
                mask[(regions > 0) & (regions != 1 + int(sizes.argmax()))] = 0
    return cleaned


def class_indices(names: list[str], classes: list[str], option: str) -> list[int]:
    """Class names (or their indices, as text) -> indices into `classes`; a name it lacks is one line."""
    indices = []
    for name in names:
        if name in classes:
            indices.append(classes.index(name))
        elif name.isdigit() and 0 < int(name) < len(classes):
            indices.append(int(name))
        else:
            raise UserError(f"{option} {name}: not a foreground class of this run ({', '.join(classes[1:])})")
    return indices


def class_shares(labels: np.ndarray, classes: list[str], top_k: int) -> dict:
    """The share of a mask's (or a label volume's) pixels per class, and the top_k classes by share."""
    shares = np.bincount(np.asarray(labels).reshape(-1), minlength=len(classes)) / np.asarray(labels).size
    ranked = np.argsort(-shares, kind="stable")[:top_k]
    return {"shares": {name: round(float(v), 6) for name, v in zip(classes, shares)},
            "top_k": [{"class": classes[i], "share": float(shares[i])} for i in ranked]}


def mean_foreground(values: list[float]) -> float:
    present = [v for v in values[1:] if v == v]
    return sum(present) / len(present) if present else float("nan")

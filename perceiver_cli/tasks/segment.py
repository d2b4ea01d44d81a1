"""Segmentation: one label per pixel (a prepared dataset with masks, e.g. `prepare knee-seg`).

Perceiver IO's dense decoder (model/perceiver_io.py); the loss is per-pixel cross-entropy plus a
soft Dice term (task.dice_weight) so that thin structures (cartilage) are not drowned by the
background; metrics are pooled over all pixels of the split: per-class Dice 2|P∩T| / (|P| + |T|)
and IoU |P∩T| / |P∪T|, mean Dice over the foreground classes, pixel accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import augment_images
from ..errors import UserError
from ..model.perceiver_io import DensePerceiver
from .base import Task


def soft_dice_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - the soft Dice of softmax(logits) (B H W K) and y (B H W) per sample, over the foreground
    classes present in that sample's truth (a class it lacks is the cross-entropy's to keep out:
    a Dice term for it would reward predicting nothing of the rare classes), averaged over samples.
    Per sample, so that the batch's loss is a mean over its samples like the cross-entropy: N ranks
    (or grad_accum micro-batches) then train exactly as one batch does."""
    probabilities = logits.softmax(-1)[..., 1:]
    truth = F.one_hot(y, logits.shape[-1])[..., 1:].to(probabilities.dtype)
    intersection = (probabilities * truth).sum((1, 2))  # B K-1
    total = probabilities.sum((1, 2)) + truth.sum((1, 2))
    present = (truth.sum((1, 2)) > 0).to(probabilities.dtype)
    dice = (2 * intersection + 1) / (total + 1)
    return (present * (1 - dice)).sum(1).div(present.sum(1).clamp_min(1)).mean()


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


class SegmentTask(Task):
    name = "segment"
    headline, headline_percent = "mean_dice", False
    predicts = True

    keep_largest: list[int] = []  # classes of which predictions keep only the largest region (predict --largest-component)

    def predictions(self, logits, top_k):
        """Per sample its mask (uint8 H W class indices, for a PNG) and the share of pixels per class."""
        masks = logits.float().argmax(-1).to(torch.uint8).cpu().numpy()
        if self.keep_largest:
            masks = largest_components(masks, self.keep_largest)
        return [{"mask": mask, **class_shares(mask, list(self.dataset.classes), top_k)} for mask in masks]

    def __init__(self, recipe, dataset, transform):
        super().__init__(recipe, dataset, transform)
        self.classes = len(dataset.classes)
        self._class_weights = None  # counted from the training masks at the first loss (predict needs none)

    def class_weights(self, device) -> torch.Tensor | None:
        """task.class_weight_power p > 0: per-class cross-entropy weights share^-p, with a mean weight of 1
        over the training pixels (a class no training pixel has gets 0: it is never a target there)."""
        power = self.recipe.task.class_weight_power
        if not power:
            return None
        if self._class_weights is None:
            labels = self.dataset.split("train").y
            counts = np.zeros(self.classes)
            for start in range(0, len(labels), 256):  # memory-mapped: a chunk at a time
                counts += np.bincount(np.asarray(labels[start: start + 256]).reshape(-1), minlength=self.classes)
            share = counts / counts.sum()
            weights = np.where(counts > 0, np.maximum(share, 1e-12) ** -power, 0.0)
            self._class_weights = torch.tensor(weights / (weights * share).sum(), dtype=torch.float32)
        return self._class_weights.to(device)

    def build_model(self):
        task = self.recipe.task
        return DensePerceiver(self.recipe.model, self.dataset.input_spec, self.classes, task.output_stride,
                              task.query_pixels,
                              task.query_context)

    def train_batch(self, stored, labels, generator):
        # the mask rides along as one more uint8 channel, so every augmentation moves it with the image
        both = augment_images(torch.cat([stored, labels[..., None].to(stored.dtype)], dim=-1), self.recipe.data.augment,
                              generator, label_channels=1)
        return (self.transform(both[..., :-1]),), (both[..., -1].long(),)

    def eval_batch(self, stored, labels, index):
        return (self.transform(stored),), (labels.long(),)

    def loss(self, logits, target):
        (y,) = target
        logits = logits.float()
        # a plain mean over pixels even when weighted (the weights average 1 over the training pixels):
        # then N ranks or micro-batches train exactly as one batch does
        loss = F.cross_entropy(logits.permute(0, 3, 1, 2), y, weight=self.class_weights(logits.device),
                               label_smoothing=self.recipe.optim.label_smoothing, reduction="none").mean()
        if self.recipe.task.dice_weight:
            loss = loss + self.recipe.task.dice_weight * soft_dice_loss(logits, y)
        return loss, (logits.argmax(-1) == y).float().mean((1, 2)).sum()

    def eval_sums(self, logits, target):
        (y,) = target
        logits = logits.float()
        loss = F.cross_entropy(logits.permute(0, 3, 1, 2), y, reduction="none").mean((1, 2)).sum()
        predicted = logits.argmax(-1)
        accuracy = (predicted == y).float().mean((1, 2)).sum()
        return torch.cat([torch.stack([loss.double(), accuracy.double()]),
                          confusion_counts(predicted, y, self.classes).reshape(-1)])

    def eval_size(self):
        return 2 + 3 * self.classes

    def eval_row(self, sums, count):
        dice, _ = dice_and_iou(sums[2:].reshape(3, self.classes))
        return {"val_loss": float(sums[0]) / count, "val_accuracy": float(sums[1]) / count,
                "val_dice": mean_foreground(dice)}

    def checkpoint_extra(self):
        return {"classes": list(self.dataset.classes)}

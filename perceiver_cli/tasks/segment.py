"""Segmentation: one label per pixel (a prepared dataset with masks, e.g. `prepare knee-seg`).

Perceiver IO's dense decoder (model/perceiver_io.py); the loss is per-pixel cross-entropy plus a
soft Dice term (task.dice_weight) so that thin structures (cartilage) are not drowned by the
background; metrics are pooled over all pixels of the split: per-class Dice 2|P∩T| / (|P| + |T|)
and IoU |P∩T| / |P∪T|, mean Dice over the foreground classes, pixel accuracy.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..data.augment import augment_images
from ..errors import UserError
from ..model.perceiver_io import DensePerceiver
from .base import Task, TaskConfig, _target_kind
from .masks import class_indices, class_shares, confusion_counts, dice_and_iou, largest_components, mean_foreground


class SegmentConfig(TaskConfig):
    name: Literal["segment"] = Field("segment", description="one label per pixel")
    output_stride: int = Field(1, gt=0, description="segment: each output query predicts an s x s block of pixels (1 = one query per pixel, as Perceiver IO; 4 = 16x fewer queries)")
    query_pixels: bool = Field(True, description="segment: each output query also carries the input pixels of its block (as Perceiver IO's optical-flow queries carry the input): sharp boundaries; false = positions only")
    class_weight_power: float = Field(0.0, ge=0, le=1, description="segment: weight each class's cross-entropy by (its share of the training pixels)^-p, scaled so the mean weight per pixel is 1: 0 = unweighted, 0.5 = inverse square root (rare labels count more), 1 = inverse frequency")
    query_context: int = Field(0, ge=0, description="segment, with query_pixels: each query also carries this many pixels around its block (a (s + 2c) x (s + 2c) window, edges replicated): the texture and edges next to it; 0 = its block only")
    dice_weight: float = Field(1.0, ge=0, description="segment: weight of the soft Dice loss added to the per-pixel cross-entropy (keeps thin structures from drowning in background); 0 = cross-entropy only")


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


class SegmentTask(Task):
    name = "segment"
    summary = "one label per pixel (a prepared dataset with masks, e.g. prepare knee-seg)"
    Config = SegmentConfig
    compare_with, bench_dense = "krasserm", True  # krasserm/perceiver-io: a per-pixel Perceiver IO decoder
    columns = (("val_accuracy", "val acc", "{:.2%}"), ("val_dice", "val dice", "{:.4f}"))  # mean Dice, foreground
    best_metrics = {"val_dice": "max", "val_accuracy": "max", "val_loss": "min"}
    report_figure = ("val_dice", "Dice", "mean_dice")
    headline, headline_percent = "mean_dice", False
    predicts = True
    eval_options = {"largest_component": "--largest-component"}

    writes_masks, prediction_score = True, "share"
    predict_options = {"largest_component": "--largest-component"}
    keep_largest: list[int] = []  # classes of which predictions keep only the largest region (predict --largest-component)

    def configure_predictions(self, largest_component=None, **others):
        self.keep_largest = class_indices(list(largest_component or []), list(self.dataset.classes), "--largest-component")

    def check_output_size(self, size):
        stride = self.recipe.task.output_stride
        if size is not None and (size[0] % stride or size[1] % stride):
            raise UserError(f"--mask-size {size[0]}x{size[1]}: the model answers in {stride}x{stride} blocks "
                            f"(task.output_stride={stride}); give a multiple of {stride}")

    def output_description(self, classes):
        return {"name": "logits", "dtype": "float32", "layout": "B H W K",
                "meaning": f"per-pixel logits over the {len(classes)} classes in config.json checkpoint.classes "
                           f"(argmax over the last axis: the label map)"}

    def predictions(self, logits, top_k):
        """Per sample its mask (uint8 H W class indices, for a PNG) and the share of pixels per class."""
        masks = logits.float().argmax(-1).to(torch.uint8).cpu().numpy()
        if self.keep_largest:
            masks = largest_components(masks, self.keep_largest)
        return [{"mask": mask, **class_shares(mask, list(self.dataset.classes), top_k)} for mask in masks]

    @classmethod
    def check_dataset(cls, dataset):
        if _target_kind(dataset) != "mask":
            raise UserError(f"task.name=segment needs a dataset with per-pixel labels (masks); '{dataset.name}' has one "
                            f"label per sample: prepare one with `perceiver prepare knee-seg`, or use task.name=classify")

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

    def eval_sums(self, logits, target, predicted=None):
        """`predicted`: the label maps to count instead of the logits' argmax (eval's cleaned masks)."""
        (y,) = target
        logits = logits.float()
        loss = F.cross_entropy(logits.permute(0, 3, 1, 2), y, reduction="none").mean((1, 2)).sum()
        predicted = logits.argmax(-1) if predicted is None else predicted
        accuracy = (predicted == y).float().mean((1, 2)).sum()
        return torch.cat([torch.stack([loss.double(), accuracy.double()]),
                          confusion_counts(predicted, y, self.classes).reshape(-1)])

    def eval_size(self):
        return 2 + 3 * self.classes

    def eval_row(self, sums, count):
        dice, _ = dice_and_iou(sums[2:].reshape(3, self.classes))
        return {"val_loss": float(sums[0]) / count, "val_accuracy": float(sums[1]) / count,
                "val_dice": mean_foreground(dice)}

    @torch.no_grad()
    def epoch_images(self, model, stored, labels):
        from .segment_eval import figure_pixels, plot_overlays

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            (inputs,), _ = self.eval_batch(torch.from_numpy(stored).to(device), torch.from_numpy(labels).to(device), None)
            predicted = model(inputs).argmax(-1).to(torch.uint8).cpu().numpy()
        finally:
            model.train(was_training)
        figure = plot_overlays(stored, labels, predicted, list(self.dataset.classes), "validation probe samples",
                               samples=list(range(len(stored))))
        return {"segmentation/val": figure_pixels(figure)}

    def evaluate(self, context):
        from .segment_eval import evaluate_segmentation

        return evaluate_segmentation(self, context)

    @classmethod
    def show_evaluation(cls, report):
        from .segment_eval import show_evaluation

        return show_evaluation(report)

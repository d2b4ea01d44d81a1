"""Classification: one label per sample. Cross-entropy (label smoothing, mixup), accuracy."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..data.augment import augment_images, augment_points, mix, subsample_points
from ..model import build_model
from .base import Task, TaskConfig


class ClassifyConfig(TaskConfig):
    name: Literal["classify"] = Field("classify", description="one label per sample")


def classification_loss(logits: torch.Tensor, y: torch.Tensor, y_mixed: torch.Tensor | None, weight: float,
                        smoothing: float) -> torch.Tensor:
    """Cross-entropy; with mixup, weighted between the labels of the two mixed samples."""
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    if y_mixed is None:
        return loss
    return weight * loss + (1 - weight) * F.cross_entropy(logits, y_mixed, label_smoothing=smoothing)


class ClassifyTask(Task):
    name = "classify"
    summary = "one label per sample"
    Config = ClassifyConfig
    compare_with = "lucidrains"  # lucidrains/perceiver-pytorch: the classifier of the paper
    predicts = True
    eval_options = {"flip": "--flip-average"}

    def build_model(self):
        return build_model(self.recipe.model, self.dataset.input_spec, len(self.dataset.classes))

    def train_batch(self, stored, labels, generator):
        """Images are augmented as uint8 (a crop is indexing); point clouds after scaling, so
        scale/jitter amounts mean the same for any data; then mixup."""
        data, kind = self.recipe.data, self.dataset.input_spec["kind"]
        if kind == "image":
            x = self.transform(augment_images(stored, data.augment, generator))
        elif kind == "points":
            if data.num_points:
                stored = subsample_points(stored, data.num_points, generator)
            x = augment_points(self.transform(stored), data.augment, generator)
        else:
            x = self.transform(stored)
        x, partner, weight = mix(x, data.augment.mixup, generator)
        return (x,), (labels, None if partner is None else labels[partner], weight)

    def loss(self, logits, target):
        y, y_mixed, weight = target
        loss = classification_loss(logits.float(), y, y_mixed, weight, self.recipe.optim.label_smoothing)
        return loss, (logits.argmax(1) == y).sum()

    def eval_sums(self, logits, target):
        (y,) = target
        logits = logits.float()
        return torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), (logits.argmax(1) == y).sum().double()])

    def predictions(self, logits, top_k):
        probabilities = logits.float().softmax(-1).cpu()
        return [self._ranked(p, top_k) for p in probabilities]

    def volume_summary(self, predictions, top_k):
        """A volume's class: its slices' probabilities averaged (every slice one vote of its confidence)."""
        return self._ranked(torch.tensor([p["probabilities"] for p in predictions]).mean(0), top_k)

    def _ranked(self, probabilities: torch.Tensor, top_k: int) -> dict:
        classes = list(self.dataset.classes)
        best = probabilities.topk(min(top_k, len(classes)))
        return {"class": classes[int(best.indices[0])], "probability": float(best.values[0]),
                "top_k": [{"class": classes[int(i)], "probability": float(v)} for v, i in zip(best.values, best.indices)],
                "probabilities": probabilities.tolist()}

    def evaluate(self, context):
        from .classify_eval import evaluate_classifier

        return evaluate_classifier(self, context)

    @classmethod
    def show_evaluation(cls, report):
        from .classify_eval import show_evaluation

        return show_evaluation(report)

"""What a task is to the engine: how a stored batch becomes model inputs and targets, the loss,
metric sums that add up across ranks, and the epoch row's figures. The engine runs the model
(`model(*inputs)`, under autocast) and never looks inside inputs, targets or outputs.

    inputs, target = task.train_batch(stored, labels, generator)   # the global batch, augmented
    loss, metric   = task.loss(model(*inputs), target)              # mean loss, per-sample metric sum
    sums           = task.eval_sums(model(*inputs), target)         # float64 sums; first = loss sum
    row            = task.eval_row(sums, count)                     # {"val_loss": ..., ...}

Inputs and targets are tuples whose tensors have the batch first, so the engine can take a rank's
part or a micro-batch of them with `take` (anything else in them passes through unchanged).
"""

from __future__ import annotations

import torch


def take(parts: tuple, index: slice) -> tuple:
    """The samples at `index` of every tensor in `parts`; other values (a mixup weight) as they are."""
    return tuple(p[index] if isinstance(p, torch.Tensor) else p for p in parts)


class Task:
    name = ""
    metric = "accuracy"  # the epoch row's train_<metric> / val_<metric>; None when the task has none
    headline = "accuracy"  # the key of its `perceiver eval` report that sums a run up (perceiver seeds)
    headline_percent = True  # shown as a percentage (else as a number)
    predicts = False  # whether `predictions` says something of a new input (perceiver predict)

    def __init__(self, recipe, dataset, transform):
        self.recipe, self.dataset, self.transform = recipe, dataset, transform

    def build_model(self):
        raise NotImplementedError

    def train_batch(self, stored: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[tuple, tuple]:
        raise NotImplementedError

    def eval_batch(self, stored: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> tuple[tuple, tuple]:
        """Validation's inputs and targets: no augmentation; `index` (the samples' rows) seeds anything
        random, so every epoch and every world size sees the same."""
        return (self.transform(stored),), (labels,)

    def loss(self, output, target: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss over the samples, the sum over them of the per-sample metric)."""
        raise NotImplementedError

    def eval_sums(self, output, target: tuple) -> torch.Tensor:
        """float64 sums over the samples that add up across batches and ranks; [0] is the loss sum."""
        raise NotImplementedError

    def eval_size(self) -> int:
        """How many sums eval_sums gives."""
        return 2

    def eval_row(self, sums: torch.Tensor, count: int) -> dict:
        loss, correct = sums.tolist()[:2]
        return {"val_loss": loss / count, "val_accuracy": correct / count}

    def empty_row(self) -> dict:
        """The row's validation figures when there is no validation data."""
        return {key: float("nan") for key in self.eval_row(torch.ones(self.eval_size(), dtype=torch.float64), 1)}

    def checkpoint_extra(self) -> dict:
        """What a checkpoint carries for this task beyond weights and config."""
        return {}

    # --- predicting on a user's own files (perceiver predict, perceiver_cli.load) ------------------

    def input_reader(self, source: dict | None):
        """What reads new input files as the run's prepared samples were made (data/inputs.py); a task
        with inputs of its own (text, say) returns its own reader."""
        from ..data.inputs import input_reader

        return input_reader(self.dataset.input_spec, source)

    def check_predicts(self) -> None:
        """Raise when this task has nothing to say of a new input (before any file is read)."""
        from ..errors import UserError

        if self.predicts:
            return
        raise UserError(f"a task.name={self.name} run makes no predictions on new inputs; see perceiver eval for "
                        f"what it does, or fine-tune a classifier from it (train.init)")

    def predictions(self, output: torch.Tensor, top_k: int) -> list[dict]:
        """Per sample, what the model says of it (JSON-able, apart from arrays a caller writes to files)."""
        self.check_predicts()
        return []

    def volume_summary(self, predictions: list[dict], top_k: int) -> dict | None:
        """One prediction for a whole volume from its slices' (None: the task has none)."""
        return None

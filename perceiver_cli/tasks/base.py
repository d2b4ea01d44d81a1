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

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..errors import UserError
from ..section import Section


@dataclass
class Evaluation:
    """What a task's `evaluate` gives `perceiver eval`: its report (the JSON), and a matplotlib figure
    with the prefix of its PNG's name (confusion, segment, reconstruct) and the file tag (the split,
    or data-<name> for --data)."""

    report: dict
    figure: object
    figure_name: str
    tag: str
    dpi: int = 100


@dataclass
class Shown:
    """What a command prints of a task's result, in no toolkit's terms: a sentence (Rich markup; a
    user's text in it escaped with console.visible), then tables (title, columns, rows of text; the
    first column left-aligned, the others right-aligned)."""

    line: str
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)


def _target_kind(dataset) -> str:
    return (getattr(dataset, "target", None) or {"kind": "class"}).get("kind", "class")


def take(parts: tuple, index: slice) -> tuple:
    """The samples at `index` of every tensor in `parts`; other values (a mixup weight) as they are."""
    return tuple(p[index] if isinstance(p, torch.Tensor) else p for p in parts)


class TaskConfig(Section):
    """A task's own recipe keys (its `task:` section); each task subclasses it with `name` as a Literal
    of its name, and the recipe's `task:` is the one whose name the recipe gives."""

    name: Literal[""] = ""


class Task:
    name = ""
    summary = ""  # what is learned, in a few words (the recipe reference's task.name row)
    Config = TaskConfig  # its `task:` section
    metric = "accuracy"  # the epoch row's train_<metric> / val_<metric>; None when the task has none
    # the epoch row's validation figures beyond val_loss: (key, header, format) for the display, train.log
    # and TensorBoard
    columns: tuple[tuple[str, str, str], ...] = (("val_accuracy", "val acc", "{:.2%}"),)
    # which of them best.pt may keep, higher or lower being better; the first one is the default
    best_metrics: dict[str, str] = {"val_accuracy": "max", "val_loss": "min"}
    # (epoch-row key, label, eval key) of a figure `perceiver report` shows beside accuracy and loss
    report_figure: tuple[str, str, str] | None = None
    headline = "accuracy"  # the key of its `perceiver eval` report that sums a run up (perceiver seeds)
    headline_percent = True  # shown as a percentage (else as a number)
    predicts = False  # whether `predictions` says something of a new input (perceiver predict)
    eval_options: dict[str, str] = {}  # options of `perceiver eval` it takes -> their flag

    def __init__(self, recipe, dataset, transform):
        self.recipe, self.dataset, self.transform = recipe, dataset, transform

    @classmethod
    def check_dataset(cls, dataset) -> None:
        """Raise when `dataset` holds the wrong kind of targets for this task."""
        if _target_kind(dataset) == "mask":
            raise UserError(f"'{dataset.name}' holds per-pixel labels (masks): train it with --set task.name=segment")

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

    def evaluate(self, context) -> Evaluation:
        """`perceiver eval`: the model measured on the samples `context` (evaluate.EvalContext) gives."""
        raise NotImplementedError

    @classmethod
    def show_evaluation(cls, report: dict) -> Shown:
        """What `perceiver eval` prints of its report."""
        raise NotImplementedError

    def empty_row(self) -> dict:
        """The row's validation figures when there is no validation data."""
        return {key: float("nan") for key in self.eval_row(torch.ones(self.eval_size(), dtype=torch.float64), 1)}

    # --- predicting on a user's own files (perceiver predict, perceiver_cli.load) ------------------

    def input_reader(self, source: dict | None):
        """What reads new input files as the run's prepared samples were made (data/inputs.py); a task
        with inputs of its own (text, say) returns its own reader."""
        from ..data.inputs import input_reader

        return input_reader(self.dataset.input_spec, source)

    def check_predicts(self) -> None:
        """Raise when this task has nothing to say of a new input (before any file is read)."""
        if self.predicts:
            return
        raise UserError(f"a task.name={self.name} run makes no predictions on new inputs; see perceiver eval for "
                        f"what it does, or fine-tune a classifier from it (train.init)")

    # what predict writes of each input: a mask file (a per-pixel task) or not; the score of its top-k classes
    writes_masks = False
    prediction_score = "probability"
    predict_options: dict[str, str] = {}  # options of `perceiver predict` it takes -> their flag

    def configure_predictions(self, **options) -> None:
        """Take the predict options it takes (tasks.check_options has refused the others)."""

    def check_output_size(self, size: tuple[int, int] | None) -> None:
        """predict --mask-size: the size the model's answer is asked at (only per-pixel tasks have one)."""
        if size is not None:
            raise UserError(f"--mask-size is for segmentation runs; this is a task.name={self.name} run")

    def epoch_images(self, model, stored: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """TensorBoard images of the model at an epoch's end beyond the attention preview, on the fixed
        probe samples: {tag: H W 3 uint8}. None by default (segmentation draws its overlays)."""
        return {}

    # --- measuring (perceiver bench) ------------------------------------------------------------------

    compare_with: str | None = None  # the peer implementation `bench --compare` measures its model against
    bench_dense = False  # its model answers per pixel or patch: bench steps it as bench/dense.py does
    bench_bytes = False  # its model reads windows of a byte stream: bench measures it as bench/ar.py does

    def bench_module(self, model, batch: int):
        """The module bench steps: forward(stored-like x) -> output (a task that draws inputs per
        batch, such as masks, fixes one draw here)."""
        return model

    # --- exporting (perceiver export) -----------------------------------------------------------------

    def model_inputs(self, stored: torch.Tensor) -> tuple:
        """The model's inputs for stored samples (export checks its files on them)."""
        return (self.transform(stored),)

    def check_exportable(self, target, format: str) -> None:
        """Raise when a run of this task is not a model to deploy."""

    def output_description(self, classes: list[str]) -> dict:
        """The exported graph's output, as its export_info.json describes it."""
        return {"name": "logits", "dtype": "float32", "layout": "B K",
                "meaning": f"logits over the {len(classes)} classes in config.json checkpoint.classes (softmax: probabilities)"}

    def predictions(self, output: torch.Tensor, top_k: int) -> list[dict]:
        """Per sample, what the model says of it (JSON-able, apart from arrays a caller writes to files)."""
        self.check_predicts()
        return []

    def generate(self, model, prompt, **options):
        """What follows `prompt` (perceiver generate): only language models have something to say."""
        raise UserError(f"a task.name={self.name} run does not generate text; train a task.name=causal_lm run "
                        f"(e.g. perceiver train bytes_ar)")

    def volume_summary(self, predictions: list[dict], top_k: int) -> dict | None:
        """One prediction for a whole volume from its slices' (None: the task has none)."""
        return None

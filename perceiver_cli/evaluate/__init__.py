"""`perceiver eval`: a trained run measured the way its task measures it (Task.evaluate: classify gives
accuracy and a confusion matrix; segment Dice and IoU per class with overlays; masked_image the
reconstruction loss against the patch-mean baseline, with reconstructions), written as JSON and PNG
into the run. What is common to every task lives here: loading the run, choosing its samples, the
batched runner, writing the files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine.runtime import InputTransform, array_batches, resolve_device, run_model, use_bf16
from ..errors import UserError
from ..runs.files import all_or_nothing, save_figure, write_json
from ..runs.trained import described_dataset, evaluated_split, load_trained, run_dataset, run_dir_of, split_samples
from ..tasks import TASKS, build_task, check_options


@dataclass
class EvalResult:
    report: dict
    json_path: Path
    png_path: Path


@dataclass
class EvalContext:
    """What a task's `evaluate` is given: the trained model and its run, the options of `perceiver eval`
    that its task takes, and ways to pick samples and run the model over them."""

    model: torch.nn.Module
    recipe: object
    state: dict
    checkpoint: Path
    device: torch.device
    batch_size: int
    data: Path | None = None  # --data: another dataset to evaluate on
    split: str | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.bf16 = use_bf16(self.recipe.train.precision, self.device)
        self.transform = InputTransform(self.state["input_spec"], self.state["normalization"], self.device,
                                        self.recipe.data)

    def described(self, split: str) -> str:
        """'cifar10 val split', saying so when that split also chose the checkpoint (best.pt by a val
        metric): its figure is then a little optimistic, and a test split is the honest one."""
        described = f"{self.state['dataset']} {split} split"
        best = self.recipe.train.best_metric
        if split == "val" and Path(self.checkpoint).name == "best.pt" and best != "last":
            described += f" (which also chose this checkpoint by {best}; a test split is unbiased)"
        return described

    def samples(self, read_data=None) -> tuple[np.ndarray, np.ndarray, str, str]:
        """(x, y, file tag, description) of the asked split of the run's dataset, or of --data, which
        read_data() reads (None: this task takes no --data)."""
        if self.data is not None:
            if read_data is None:
                self._refuse_data()
            x, y = read_data(Path(self.data))
            tag, described = f"data-{Path(self.data).stem}", str(self.data)
        else:
            x, y, split = split_samples(self.recipe, self.state, self.split)
            tag, described = split, self.described(split)
        if len(x) == 0:
            raise UserError(f"{described}: no samples to evaluate")
        return x, y, tag, described

    def own_split(self):
        """(the run's prepared dataset, memory-mapped, and the split to evaluate) for a task evaluated on
        a split of its own dataset only (--data is refused)."""
        self._refuse_data()
        dataset = run_dataset(self.recipe, self.state, mmap=True)
        return dataset, evaluated_split(dataset, self.split)

    def _refuse_data(self) -> None:
        if self.data is not None:
            raise UserError(f"--data: a task.name={self.recipe.task.name} run is evaluated on a split of its own "
                            f"dataset; leave --data out")

    def task(self):
        """The run's task, built for its dataset as the checkpoint describes it (with this transform)."""
        return build_task(self.recipe, described_dataset(self.state), self.transform)

    def run(self, x, inputs_of, *others):
        """(fp32 output, what inputs_of passes along) per batch of the stored rows x (and the same rows
        of `others`): inputs_of((start, stored, *others' rows)) -> (the model's inputs, anything)."""
        return run_model(self.model, array_batches(x, self.batch_size, self.device, *others), inputs_of, self.bf16,
                         self.device)


def evaluate(target: Path, split: str | None = None, data: Path | None = None, batch_size: int = 256,
             device: str = "auto", flip: bool | None = None, largest_component: list[str] | None = None) -> EvalResult:
    """`flip`: average each image's prediction with its mirror's (classify; None: when it trained on mirrors).
    `largest_component`: segment classes of which only the largest region per slice is kept."""
    torch_device = resolve_device(device, "--device")
    model, recipe, loaded = load_trained(Path(target), torch_device)
    task = TASKS[recipe.task.name]
    options = {"flip": flip, "largest_component": largest_component}
    check_options(task, options)
    context = EvalContext(model, recipe, loaded.state, loaded.path, torch_device, batch_size, data, split,
                          {name: value for name, value in options.items() if name in task.eval_options})
    evaluation = context.task().evaluate(context)
    run_dir = run_dir_of(loaded.path)
    json_path = run_dir / f"eval_{evaluation.tag}.json"
    png_path = run_dir / f"{evaluation.figure_name}_{evaluation.tag}.png"
    report = {"task": recipe.task.name, **evaluation.report}
    with all_or_nothing():  # its JSON and figures appear together
        write_json(json_path, report)
        save_figure(evaluation.figure, png_path, dpi=evaluation.dpi)
    loaded.tell()
    return EvalResult(report, json_path, png_path)


__all__ = ["EvalContext", "EvalResult", "evaluate"]

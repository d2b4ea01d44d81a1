"""Perceiver IO models in `perceiver bench`: per-pixel ones (segment recipes: ours, DensePerceiver,
and krasserm's) and the masked autoencoder (masked_image recipes: ours, MaskedPerceiver).

They step as the classifiers do (measure.make_step: the engine's TrainStep, plain AdamW): per-pixel
logits turned classes-first so that the cross-entropy is per pixel; the masked autoencoder with the
task's share of patches hidden (a fixed seeded draw per sample) and its MSE on the hidden patches.
Each model's FLOPs are what torch counts it executing; CPU memory is measured in a fresh process,
as memory.py does.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..data.shapes import ShapesOnly
from ..tasks import get_task
from ..tasks.masked import FixedMask
from . import krasserm, memory


class ClassesFirst(nn.Module):
    """B H W K logits as B K H W: the classifier's cross-entropy and argmax over dim 1 are then
    per pixel, so measure.make_step steps a per-pixel model unchanged."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).permute(0, 3, 1, 2)


def make_model(which: str, config, task, input_spec: dict, classes: int, checkpointing: bool = False,
               batch: int = 1) -> nn.Module:
    """Ours as its task builds it (per-pixel: B H W C -> B H W K; masked: with one fixed draw of hidden
    patches, Task.bench_module), or krasserm's per-pixel model, seeded the same way."""
    torch.manual_seed(0)
    if which == "krasserm":
        return krasserm.build(config, task, input_spec, classes)
    recipe = SimpleNamespace(model=config, task=task)
    dataset = ShapesOnly.numbered("bench", input_spec, classes, target={"kind": "mask"})
    built = get_task(task.name)(recipe, dataset, None)
    model = built.build_model()
    model.activation_checkpointing = checkpointing
    return built.bench_module(model, batch)


def masks(input_spec: dict, batch: int, device: torch.device) -> torch.Tensor:
    """Targets: one label per pixel (B H W)."""
    return torch.zeros(batch, *input_spec["shape"][:2], dtype=torch.long, device=device)


def targets(model: nn.Module, input_spec: dict, batch: int, device: torch.device) -> torch.Tensor:
    """The task's targets for `model`: per-pixel labels, or the hidden patches' pixels (B Q (p p C))."""
    if not isinstance(model, FixedMask):
        return masks(input_spec, batch, device)
    return torch.zeros(batch, model.hidden.shape[1], model.model.patch**2 * input_spec["shape"][2], device=device)


def outputs(model: nn.Module) -> nn.Module:
    """What the step calls: per-pixel logits classes-first; a masked model as it is."""
    return model if isinstance(model, FixedMask) else ClassesFirst(model)


def loss_of(model: nn.Module):
    """make_step's loss for `model`: the masked task's MSE on hidden patches; None (the per-pixel
    cross-entropy of the classifier's loss) for per-pixel models."""
    if not isinstance(model, FixedMask):
        return None

    def mse(predicted, target):
        return (predicted.float() - target[0]).square().mean(), torch.zeros((), device=predicted.device)
    return mse


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    """Per-sample FLOPs of one forward of `x`, as torch's counter sees them under the math attention
    backend (whose products it counts): what this implementation executes at this batch size."""
    training = model.training
    model.eval()
    # (not under no_grad: the counter's module hooks then fail on tensors that require gradients)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(training)
    return counter.get_total_flops() / len(x)


def peak_memory_in_fresh_process(spec: dict) -> int | str:
    """Bytes, or OUT_OF_MEMORY. spec: memory.py's, plus "task" (the task config)."""
    return memory.peak_memory_in_fresh_process(spec, _measure)


def _measure(spec: dict) -> int | str:
    from ..engine.optim import build_optimizer
    from ..recipe import ModelConfig, OptimConfig
    from .measure import make_step, synthetic_batch

    torch.set_num_threads(1)  # memory does not depend on threads; leave the cores to the parent
    device = torch.device("cpu")
    model = make_model(spec["which"], ModelConfig(**spec["model"]), get_task(spec["task"]["name"]).Config(**spec["task"]), spec["input_spec"],
                       spec["classes"], spec.get("checkpointing", False), spec["batch"])
    optimizer = build_optimizer(model, OptimConfig(name="adamw"), device)
    x = synthetic_batch(spec["input_spec"], spec["batch"], device)
    step = make_step(outputs(model), optimizer, x, targets(model, spec["input_spec"], spec["batch"], device), spec["mode"],
                     spec["bf16"], device, loss_of(model))
    return memory.peak_of(step, device)

"""Per-pixel models in `perceiver bench` (segment recipes): ours (DensePerceiver) and krasserm's.

They step as the classifiers do (measure.make_step: the engine's TrainStep, plain AdamW), their
logits turned classes-first so that its cross-entropy is per pixel; each model's FLOPs are what
torch counts it executing; CPU memory is measured in a fresh process, as memory.py does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..model.perceiver_io import DensePerceiver
from . import krasserm, memory


class ClassesFirst(nn.Module):
    """B H W K logits as B K H W: the classifier's cross-entropy and argmax over dim 1 are then
    per pixel, so measure.make_step steps a per-pixel model unchanged."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).permute(0, 3, 1, 2)


def make_model(which: str, config, task, input_spec: dict, classes: int, checkpointing: bool = False) -> nn.Module:
    """Ours or krasserm's per-pixel model (B H W C -> B H W K), seeded the same way."""
    torch.manual_seed(0)
    if which == "krasserm":
        return krasserm.build(config, task, input_spec, classes)
    model = DensePerceiver(config, input_spec, classes, task.output_stride, task.query_pixels)
    model.activation_checkpointing = checkpointing
    return model


def masks(input_spec: dict, batch: int, device: torch.device) -> torch.Tensor:
    """Targets: one label per pixel (B H W)."""
    return torch.zeros(batch, *input_spec["shape"][:2], dtype=torch.long, device=device)


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
    from ..recipe import ModelConfig, OptimConfig, TaskConfig
    from .measure import make_step, synthetic_batch

    torch.set_num_threads(1)  # memory does not depend on threads; leave the cores to the parent
    device = torch.device("cpu")
    model = make_model(spec["which"], ModelConfig(**spec["model"]), TaskConfig(**spec["task"]), spec["input_spec"],
                       spec["classes"], spec.get("checkpointing", False))
    optimizer = build_optimizer(model, OptimConfig(name="adamw"), device)
    x = synthetic_batch(spec["input_spec"], spec["batch"], device)
    step = make_step(ClassesFirst(model), optimizer, x, masks(spec["input_spec"], spec["batch"], device), spec["mode"],
                     spec["bf16"], device)
    return memory.peak_of(step, device)

"""The training step's forward and backward replayed as CUDA graphs.

At the batch sizes people train with, a Perceiver step on a GPU is bound by the CPU launching its
~2,000 small kernels one by one, not by the kernels (benchmarks/RESULTS.md). Captured once, the
forward and the backward are each one launch. The optimizer stays eager: fused, it is a few launches.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class _AutocastForward(nn.Module):
    """The model under its own autocast: a captured graph may not reuse autocast's cache of cast
    weights across replays, so the cache is off inside the graph."""

    def __init__(self, model: nn.Module, bf16: bool):
        super().__init__()
        self.model, self.bf16 = model, bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            return self.model(x)


class GraphedTraining(nn.Module):
    """A model whose training forwards (train mode, gradients on, on CUDA) at the first batch shape
    it sees run as captured graphs. Anything else runs the model as it is: evaluation, no_grad, the
    shorter last batch of an epoch (a second graph would hold a second copy of the activations)."""

    def __init__(self, model: nn.Module, bf16: bool):
        super().__init__()
        self.model, self.bf16 = model, bf16
        self._graphed = None
        self._signature = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and x.is_cuda):
            return self.model(x)
        signature = (tuple(x.shape), x.dtype)
        if self._graphed is None:
            self._signature = signature
            # warms up on a side stream (3 steps, gradients not accumulated), then captures; the
            # caller's autocast (with its cache) is set aside while capturing
            with torch.autocast("cuda", enabled=False), warnings.catch_warnings():
                # the side stream's first cuBLAS call and its gradient accumulation warn; both are expected
                warnings.filterwarnings("ignore", message=".*(CUDA context|AccumulateGrad node's stream).*")
                self._graphed = torch.cuda.make_graphed_callables(_AutocastForward(self.model, self.bf16), (x,))
        if signature != self._signature:
            return self.model(x)
        return self._graphed(x)


def training_forward(model: nn.Module, train_config, device: torch.device, bf16: bool) -> nn.Module:
    """What the training loop calls: the model, compiled (train.compile), replayed as CUDA graphs
    (train.cuda_graphs), or both: torch.compile's own graph mode, which also fuses the kernels."""
    graphs = uses_cuda_graphs(train_config, device)
    if train_config.compile:
        return torch.compile(model, mode="reduce-overhead" if graphs else None)
    return GraphedTraining(model, bf16) if graphs else model


def uses_cuda_graphs(train_config, device: torch.device) -> bool:
    """Recomputing activations (activation_checkpointing) inside a captured graph is untested: eager."""
    return train_config.cuda_graphs and device.type == "cuda" and not train_config.activation_checkpointing

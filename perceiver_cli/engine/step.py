"""One optimisation step, as `perceiver train` runs it and `perceiver bench` times it.

A rank's share of the global batch goes forward and backward in `train.grad_accum` micro-batches
(DistributedDataParallel syncs the gradients on the last one only), then the gradient is clipped,
the optimizer and the schedule step and the weight average follows. Each micro-batch's loss is
weighted by its share of the *global* batch, so that DDP's average over ranks is exactly the mean
over the global batch: N ranks train as one process with the same batch does, to float tolerance.
"""

from __future__ import annotations

import contextlib

import torch

from ..tasks.base import take
from .runtime import autocast


class TrainStep:
    def __init__(self, forward, parameters, optimizer, scheduler=None, ema=None, *, loss, optim_config,
                 device: torch.device, bf16: bool, grad_accum: int = 1, world: int = 1, ema_source=None):
        self.forward = forward  # the model as trained: compiled / graphed, DDP-wrapped across ranks
        self.loss = loss  # the task's: (output, target) -> (mean loss, summed per-sample metric)
        self.parameters = list(parameters)
        self.optimizer, self.scheduler, self.ema = optimizer, scheduler, ema
        self.ema_source = ema_source  # the plain model whose weights the average follows
        self.optim, self.device, self.bf16 = optim_config, device, bf16
        self.grad_accum, self.world = grad_accum, world

    def __call__(self, inputs: tuple, target: tuple, count: int, global_count: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step on this rank's `count` samples (inputs, target: tuples with the batch first) of a
        global batch of `global_count`; returns this rank's (summed loss, summed metric) as tensors
        on the device, unsynchronised."""
        global_count = global_count or count
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        metric_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        n, k = count, self.grad_accum  # micro-batches as slices: views, not copies
        chunks = [slice(n * i // k, n * (i + 1) // k) for i in range(k) if n * (i + 1) // k > n * i // k]
        if not chunks:  # a short last batch left this rank nothing: a zero gradient still joins DDP's all-reduce
            sum(p.sum() for p in self.parameters).mul(0).backward()
        for i, index in enumerate(chunks):
            last = i == len(chunks) - 1
            no_sync = getattr(self.forward, "no_sync", None)
            with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
                with autocast(self.device, self.bf16):
                    output = self.forward(*take(inputs, index))
                loss, metric = self.loss(output, take(target, index))
                size = index.stop - index.start
                (loss * (size * self.world / global_count)).backward()
            loss_sum += loss.detach() * size
            metric_sum += metric.detach().double()
        if self.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.optim.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.ema_source)
        return loss_sum, metric_sum

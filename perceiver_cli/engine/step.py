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
import torch.nn.functional as F

from .runtime import autocast


def classification_loss(logits: torch.Tensor, y: torch.Tensor, y_mixed: torch.Tensor | None, weight: float,
                        smoothing: float) -> torch.Tensor:
    """Cross-entropy; with mixup, weighted between the labels of the two mixed samples."""
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    if y_mixed is None:
        return loss
    return weight * loss + (1 - weight) * F.cross_entropy(logits, y_mixed, label_smoothing=smoothing)


class TrainStep:
    def __init__(self, forward, parameters, optimizer, scheduler=None, ema=None, *, optim_config, device: torch.device,
                 bf16: bool, grad_accum: int = 1, world: int = 1, ema_source=None):
        self.forward = forward  # the model as trained: compiled / graphed, DDP-wrapped across ranks
        self.parameters = list(parameters)
        self.optimizer, self.scheduler, self.ema = optimizer, scheduler, ema
        self.ema_source = ema_source  # the plain model whose weights the average follows
        self.optim, self.device, self.bf16 = optim_config, device, bf16
        self.grad_accum, self.world = grad_accum, world

    def __call__(self, x: torch.Tensor, y: torch.Tensor, y_mixed: torch.Tensor | None = None, weight: float = 1.0,
                 global_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step on this rank's samples (x, y) of a global batch of `global_count`; returns this rank's
        (summed loss, correct predictions) as tensors on the device, unsynchronised."""
        global_count = global_count or len(y)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        n, k = len(y), self.grad_accum  # micro-batches as slices: views, not copies
        chunks = [slice(n * i // k, n * (i + 1) // k) for i in range(k) if n * (i + 1) // k > n * i // k]
        if not chunks:  # a short last batch left this rank nothing: a zero gradient still joins DDP's all-reduce
            sum(p.sum() for p in self.parameters).mul(0).backward()
        for i, index in enumerate(chunks):
            last = i == len(chunks) - 1
            no_sync = getattr(self.forward, "no_sync", None)
            with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
                with autocast(self.device, self.bf16):
                    logits = self.forward(x[index])
                loss = classification_loss(logits.float(), y[index], None if y_mixed is None else y_mixed[index],
                                           weight, self.optim.label_smoothing)
                count = index.stop - index.start
                (loss * (count * self.world / global_count)).backward()
            loss_sum += loss.detach() * count
            correct += (logits.argmax(1) == y[index]).sum()
        if self.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.optim.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.ema_source)
        return loss_sum, correct

"""Optimisers and learning-rate schedules by name, from the recipe's `optim` section."""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices (weights, latents, position tables); never biases or norm gains."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config, device: torch.device) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    if config.name in ("adamw", "adam"):
        # the fused kernel: one launch for all parameters on CUDA, and on CPU 6x faster than the
        # default for-each loop (10 M parameters: 14 ms vs 88 ms per step, measured here)
        optimizer = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
        try:
            return optimizer(groups, lr=config.lr, betas=config.betas, fused=device.type in ("cuda", "cpu"))
        except (RuntimeError, TypeError):  # a torch or device without the fused kernel
            return optimizer(groups, lr=config.lr, betas=config.betas)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.name == "lamb":
        from timm.optim import Lamb  # a well-kept LAMB (You et al. 2019)

        return Lamb(groups, lr=config.lr, betas=config.betas)
    raise ValueError(config.name)


def lr_factor(config, epoch: float, total_epochs: int) -> float:
    """Multiplier of optim.lr at a (fractional) epoch: linear warmup, then the schedule."""
    if config.warmup_epochs and epoch < config.warmup_epochs:
        return epoch / config.warmup_epochs
    whole = int(epoch)
    if config.scheduler == "constant":
        return 1.0
    if config.scheduler == "cosine":
        span = max(total_epochs - config.warmup_epochs, 1e-8)
        progress = min(max((epoch - config.warmup_epochs) / span, 0.0), 1.0)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.scheduler == "multistep":
        return config.gamma ** sum(whole >= m for m in config.milestones)
    if config.scheduler == "step":
        return config.gamma ** (whole // config.step_size)
    if config.scheduler == "exponential":
        return config.gamma**whole
    raise ValueError(config.scheduler)


def build_scheduler(optimizer, config, total_epochs: int, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimiser step; the schedule is defined in (fractional) epochs.

    One closed form in a LambdaLR rather than torch's SequentialLR(LinearLR, CosineAnnealingLR, ...):
    those switch at whole steps (a warmup of 0.1 epoch is not one), LinearLR cannot start at 0, their
    chained updates round differently, and their state_dict is not the LambdaLR one that existing
    checkpoints hold (measured: up to 0.107 apart in the factor, KeyError '_schedulers' on resume).
    timm's schedulers (its cosine agrees to 4e-16) are stepped as step_update(n), not step(), and
    keep their own state: the same checkpoint problem, and one class per kind instead of one formula."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(config, step / steps_per_epoch, total_epochs)
    )

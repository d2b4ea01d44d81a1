"""Causal language modelling of bytes with Perceiver AR (model/perceiver_ar.py), on a prepared text
stream (`perceiver prepare text`).

A training sample is a random window of the stream: task.context bytes ending anywhere, drawn from
the epoch's seeded generator (so a resumed run draws what it would have drawn, and every rank the same
global batch); the model predicts the next byte at each of its last model.num_latents positions,
whose cross-entropy is the loss (windows that start before the stream are left-padded, their padded
targets not counted). Validation reads, for every stored row of the val stream, the window that ends
at the row's last byte. The figure to go by is bits per byte (the mean cross-entropy in bits).
"""

from __future__ import annotations

import codecs
import math
import random
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..errors import UserError
from ..model.perceiver_ar import PerceiverAR
from .base import TaskConfig
from .bytes import ByteStreamTask


class CausalLMConfig(TaskConfig):
    name: Literal["causal_lm"] = Field("causal_lm", description="next byte")
    context: int = Field(1024, gt=1, description="causal_lm: bytes in a window (the latents' context); the last model.num_latents of them are the latents")
    prefix_dropout: float = Field(0.5, ge=0, lt=1, description="causal_lm: in training, drop this share of each window's prefix positions (Perceiver AR's trick: a longer context for less compute); off in eval")
    short_windows: float = Field(0.125, ge=0, le=1, description="causal_lm: share of training windows cut to a random length (1 to context bytes, the rest padding), so that a short prompt is as familiar as a full window; 0 = every window full")
    rotary_fraction: float = Field(0.5, gt=0, le=1, description="causal_lm: share of each head's channels rotated by position (Perceiver AR and krasserm: 0.5)")


class CausalLMTask(ByteStreamTask):
    name = "causal_lm"
    summary = "the next byte of a text stream (Perceiver AR; a dataset from prepare text)"
    Config = CausalLMConfig
    compare_with, bench_bytes = "perceiver-ar", True  # lucidrains' perceiver-ar-pytorch
    columns = (("val_accuracy", "val acc", "{:.2%}"), ("val_bpb", "val bits/byte", "{:.4f}"))
    best_metrics = {"val_bpb": "min", "val_loss": "min"}
    report_figure = ("val_bpb", "bits/byte", "bits_per_byte")
    headline, headline_percent = "bits_per_byte", False

    def __init__(self, recipe, dataset, transform):
        super().__init__(recipe, dataset, transform)
        self.latents = min(recipe.model.num_latents, self.context)

    def build_model(self):
        m, t = self.recipe.model, self.recipe.task
        if m.latent_dim % m.latent_heads:
            raise UserError(f"model.latent_dim={m.latent_dim} is not divisible by model.latent_heads={m.latent_heads}")
        return PerceiverAR(dim=m.latent_dim, num_latents=self.latents, heads=m.latent_heads, latent_blocks=m.latent_blocks,
                           widening=m.widening_factor, rotary_fraction=t.rotary_fraction, dropout=m.dropout,
                           attention_dropout=m.attention_dropout, prefix_dropout=t.prefix_dropout)

    def windows(self, stream: np.ndarray, ends: np.ndarray, device, lengths: np.ndarray | None = None) -> tuple[tuple, tuple]:
        """The windows of `context` bytes whose last target is stream[end]: inputs (tokens, valid) B C
        and targets (next bytes, counted) B N; positions before the stream, or before a window's
        `lengths` last bytes, are padding."""
        offsets = ends[:, None] - self.context + np.arange(self.context)[None, :]  # B C: the input positions
        valid = offsets >= 0
        if lengths is not None:
            valid &= np.arange(self.context)[None, :] >= self.context - lengths[:, None]
        tokens = stream[np.clip(offsets, 0, None)]
        nexts = stream[np.clip(offsets[:, -self.latents:] + 1, 0, None)]
        to = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)  # noqa: E731
        counted = to(valid[:, -self.latents:], torch.bool)
        return (to(tokens, torch.long), to(valid, torch.bool)), (to(nexts, torch.long), counted)

    def model_inputs(self, stored):
        return (stored[:, -self.context:].long(),)  # a stored row's last window

    def train_batch(self, stored, labels, generator):
        stream = self.stream("train")
        count = len(stored)
        ends = torch.randint(1, len(stream), (count,), generator=generator).numpy()
        short = torch.rand(count, generator=generator) < self.recipe.task.short_windows
        lengths = torch.where(short, torch.randint(1, self.context + 1, (count,), generator=generator), self.context)
        return self.windows(stream, ends, stored.device, lengths.numpy())

    def eval_batch(self, stored, labels, index):
        stream = self.stream(self.validation_split())
        row = stored.shape[1]
        ends = np.minimum((index.cpu().numpy() + 1) * row - 1, len(stream) - 1)
        return self.windows(stream, ends, stored.device)

    def loss(self, logits, target):
        nexts, counted = target
        nll = F.cross_entropy(logits.float().transpose(1, 2), nexts, reduction="none")  # B N
        weight = counted.float()
        loss = (nll * weight).sum() / weight.sum().clamp_min(1)
        correct = ((logits.argmax(-1) == nexts).float() * weight).sum(1) / weight.sum(1).clamp_min(1)
        return loss, correct.sum()

    def eval_sums(self, logits, target):
        nexts, counted = target
        weight = counted.double()
        nll = F.cross_entropy(logits.float().transpose(1, 2), nexts, reduction="none").double() * weight
        per_sample = nll.sum(1) / weight.sum(1).clamp_min(1)
        correct = ((logits.argmax(-1) == nexts).double() * weight)
        return torch.stack([per_sample.sum(), (correct.sum(1) / weight.sum(1).clamp_min(1)).sum(), nll.sum(),
                            weight.sum()])

    def eval_size(self):
        return 4

    def eval_row(self, sums, count):
        loss, correct, nll, counted = sums.tolist()
        return {"val_loss": loss / count, "val_accuracy": correct / count,
                "val_bpb": nll / max(counted, 1) / math.log(2)}

    def evaluate(self, context):
        from .causal_lm_eval import evaluate_bytes

        return evaluate_bytes(self, context)

    @classmethod
    def show_evaluation(cls, report):
        from .causal_lm_eval import show_evaluation

        return show_evaluation(report)

    def generate(self, model, prompt: str | bytes, max_bytes: int = 500, temperature: float = 0.8,
                 top_k: int | None = 40, top_p: float | None = 0.95, seed: int | None = None,
                 use_cache: bool = True) -> Iterator[str]:
        """The text that follows `prompt`, as it comes (never a UTF-8 character split in two; bytes that
        are no UTF-8 come as U+FFFD): max_bytes bytes sampled with temperature, top_k and top_p (seeded:
        the same text again). An empty prompt starts at a line break."""
        from ..model.perceiver_ar import Generator, sample

        data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
        device = next(model.parameters()).device
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        run = Generator(model.eval(), self.context, use_cache=use_cache)
        logits = run.prompt(torch.tensor([list(data or b"\n")], dtype=torch.long, device=device))
        for _ in range(max_bytes):
            byte = sample(logits, temperature, top_k, top_p, generator)
            text = decoder.decode(bytes([int(byte)]))
            if text:
                yield text
            logits = run.append(byte)
        rest = decoder.decode(b"", final=True)
        if rest:
            yield rest

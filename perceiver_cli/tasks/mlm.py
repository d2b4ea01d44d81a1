"""Masked language modelling of bytes (Perceiver IO's byte language model: model/byte_mlm.py), on a
prepared text stream (`perceiver prepare text`).

A sample is a random window of task.context bytes. task.mask_ratio of its positions (exactly
round(ratio x context), at least one) are chosen; of those, 80 % become the mask token, 10 % a random
byte drawn from the stream itself (so only bytes that occur in real text), and 10 % stay as they are
(BERT's recipe); the model predicts the original byte at every chosen position, through one output
query per position. Validation hides, per stored row, the same positions every epoch (seeded by the row).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..model.byte_mlm import MASK, BytePerceiverIO
from .base import TaskConfig
from .bytes import ByteStreamTask


class MLMConfig(TaskConfig):
    name: Literal["mlm"] = Field("mlm", description="hidden bytes")
    context: int = Field(512, gt=1, description="mlm: bytes in a window (the encoder's input)")
    mask_ratio: float = Field(0.15, gt=0, lt=1, description="mlm: share of a window's bytes chosen for prediction (BERT: 0.15); of them 80 % are masked, 10 % replaced by a random real byte, 10 % kept")


def choose(count: int, ratio: float, generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen positions B Q sorted, their treatment B Q: 0 mask, 1 random byte, 2 kept) for `batch`
    windows of `count` bytes: Q = round(ratio x count) positions each; of them round(0.8 Q) masked,
    round(0.1 Q) replaced, the rest kept (each in a random order of the chosen)."""
    chosen_count = max(1, round(ratio * count))
    noise = torch.rand(batch, count, generator=generator)
    chosen = noise.argsort(1)[:, :chosen_count].sort(1).values
    masked, replaced = round(0.8 * chosen_count), round(0.1 * chosen_count)
    treatment = torch.full((chosen_count,), 2, dtype=torch.long)
    treatment[:masked], treatment[masked: masked + replaced] = 0, 1
    order = torch.rand(batch, chosen_count, generator=generator).argsort(1)
    return chosen, treatment[order]


class MLMTask(ByteStreamTask):
    name = "mlm"
    summary = "hidden bytes of a text stream (Perceiver IO's byte masked language model; a dataset from prepare text)"
    Config = MLMConfig
    columns = (("val_accuracy", "val acc", "{:.2%}"), ("val_bpb", "val bits/byte", "{:.4f}"))
    best_metrics = {"val_bpb": "min", "val_loss": "min", "val_accuracy": "max"}
    report_figure = ("val_bpb", "bits/byte", "bits_per_byte")
    headline, headline_percent = "accuracy", True

    @property
    def min_stream(self) -> int:
        return self.context

    def build_model(self):
        m = self.recipe.model
        return BytePerceiverIO(self.context, m.num_latents, m.latent_dim, m.decoder_dim or m.latent_dim // 2,
                               m.latent_blocks, m.cross_heads, m.latent_heads, m.widening_factor, m.dropout,
                               m.attention_dropout)

    def masked(self, stream: np.ndarray, starts: np.ndarray, generator: torch.Generator, device):
        """Windows at `starts` with their chosen bytes treated: inputs (tokens B L, chosen B Q), targets
        (the original bytes B Q,), and the treatment of each (B Q: 0 masked, 1 replaced, 2 kept)."""
        windows = torch.from_numpy(stream[starts[:, None] + np.arange(self.context)[None, :]].astype(np.int64))
        chosen, treatment = choose(self.context, self.recipe.task.mask_ratio, generator, len(starts))
        target = windows.gather(1, chosen)
        random_bytes = torch.from_numpy(stream[torch.randint(0, len(stream), chosen.shape, generator=generator).numpy()]
                                        .astype(np.int64))
        shown = torch.where(treatment == 0, torch.full_like(target, MASK), torch.where(treatment == 1, random_bytes, target))
        tokens = windows.scatter(1, chosen, shown)
        return (tokens.to(device), chosen.to(device)), (target.to(device),), treatment.to(device)

    def model_inputs(self, stored):
        """A stored row's first window, its bytes to predict every 7th (unmasked: a check of the weights)."""
        tokens = stored[:, : self.context].long()
        return tokens, torch.arange(0, tokens.shape[1], 7, device=tokens.device).expand(len(tokens), -1)

    def train_batch(self, stored, labels, generator):
        stream = self.stream("train")
        starts = torch.randint(0, len(stream) - self.context + 1, (len(stored),), generator=generator).numpy()
        return self.masked(stream, starts, generator, stored.device)[:2]

    def eval_batch(self, stored, labels, index):
        stream = self.stream(self.validation_split())
        row = stored.shape[1]
        starts = np.minimum(index.cpu().numpy() * row, len(stream) - self.context)
        parts = [self.masked(stream, starts[i: i + 1], torch.Generator().manual_seed(self.recipe.train.seed * 1_000_003
                                                                                    + int(index[i])), stored.device)
                 for i in range(len(starts))]
        return ((torch.cat([p[0][0] for p in parts]), torch.cat([p[0][1] for p in parts])),
                (torch.cat([p[1][0] for p in parts]),))

    def loss(self, logits, target):
        (wanted,) = target
        loss = F.cross_entropy(logits.float().transpose(1, 2), wanted)
        return loss, (logits.argmax(-1) == wanted).float().mean(1).sum()

    def eval_sums(self, logits, target):
        (wanted,) = target
        nll = F.cross_entropy(logits.float().transpose(1, 2), wanted, reduction="none").double()  # B Q
        correct = (logits.argmax(-1) == wanted).double()
        return torch.stack([nll.mean(1).sum(), correct.mean(1).sum(), nll.sum(), torch.tensor(float(nll.numel()),
                                                                                            dtype=torch.float64,
                                                                                            device=nll.device)])

    def eval_size(self):
        return 4

    def eval_row(self, sums, count):
        loss, correct, nll, counted = sums.tolist()
        return {"val_loss": loss / count, "val_accuracy": correct / count, "val_bpb": nll / max(counted, 1) / math.log(2)}

    def evaluate(self, context):
        from .mlm_eval import evaluate_masked_bytes

        return evaluate_masked_bytes(self, context)

    @classmethod
    def show_evaluation(cls, report):
        from .mlm_eval import show_evaluation

        return show_evaluation(report)

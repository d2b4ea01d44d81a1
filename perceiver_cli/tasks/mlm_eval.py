"""`perceiver eval` of an mlm run: on a held-out stream cut into windows of task.context bytes, each
with its chosen bytes treated as in training (seeded by the window), the accuracy and bits per byte
of the model's predictions of them, per treatment (masked, replaced, kept), next to the bits of a byte
unigram fitted on the training stream (what a model that ignores the context can do)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..console import visible as v
from ..data.text import stream_of
from .base import Evaluation, Shown
from .bytes import bar_figure

TREATMENTS = ("masked", "replaced", "kept")


def unigram_bits(train: np.ndarray, held_out: np.ndarray) -> float:
    counts = np.bincount(train, minlength=256).astype(np.float64) + 1
    log_p = np.log2(counts / counts.sum())
    return float(-log_p[held_out].mean())


def evaluate_masked_bytes(task, context) -> Evaluation:
    dataset, split = context.own_split()
    task.dataset = dataset
    held_out = task.stream(split)
    starts = np.arange(0, len(held_out) - task.context + 1, task.context, dtype=np.int64)
    nll, correct = np.zeros(3), np.zeros(3)
    counts = np.zeros(3)

    def inputs_of(batch):
        first, batch_starts = batch[0], batch[1].cpu().numpy()
        parts = [task.masked(held_out, batch_starts[i: i + 1], torch.Generator().manual_seed(first + i), context.device)
                 for i in range(len(batch_starts))]
        tokens, chosen = torch.cat([p[0][0] for p in parts]), torch.cat([p[0][1] for p in parts])
        return (tokens, chosen), (torch.cat([p[1][0] for p in parts]), torch.cat([p[2] for p in parts]))

    for logits, (target, treatment) in context.run(starts, inputs_of):
        losses = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").double()
        right = (logits.argmax(-1) == target).double()
        for t in range(3):
            where = treatment == t
            nll[t] += float(losses[where].sum())
            correct[t] += float(right[where].sum())
            counts[t] += int(where.sum())
    total = max(counts.sum(), 1)
    report = {
        "checkpoint": str(context.checkpoint), "epoch": context.state["epoch"], "evaluated_on": context.described(split),
        "windows": int(len(starts)), "bytes": int(counts.sum()), "accuracy": float(correct.sum() / total),
        "bits_per_byte": float(nll.sum() / total / math.log(2)), "mask_ratio": context.recipe.task.mask_ratio,
        "per_treatment": {name: {"bytes": int(counts[t]), "accuracy": float(correct[t] / max(counts[t], 1)),
                                 "bits_per_byte": float(nll[t] / max(counts[t], 1) / math.log(2))}
                          for t, name in enumerate(TREATMENTS)},
        "baselines": {"unigram": unigram_bits(stream_of(dataset.split("train")), held_out)},
    }
    return Evaluation(report, plot(report), "masked_bytes", split)


def plot(report: dict):
    accuracy = {name: t["accuracy"] for name, t in report["per_treatment"].items()}
    return bar_figure(accuracy, "accuracy of the original byte", f"{report['evaluated_on']}: {report['bytes']:,} chosen "
                      f"bytes", ylim=(0, 1))


def show_evaluation(report: dict) -> Shown:
    line = (f"[bold]{v(report['evaluated_on'])}[/]: accuracy [bold]{report['accuracy']:.2%}[/] on the "
            f"{report['bytes']:,} chosen bytes · {report['bits_per_byte']:.4f} bits per byte (a byte unigram: "
            f"{report['baselines']['unigram']:.4f}) · {report['windows']:,} windows · epoch {report['epoch']} checkpoint")
    rows = [[name, f"{t['bytes']:,}", f"{t['accuracy']:.2%}", f"{t['bits_per_byte']:.4f}"]
            for name, t in report["per_treatment"].items()]
    return Shown(line, [("per treatment", ["chosen bytes", "count", "accuracy", "bits per byte"], rows)])

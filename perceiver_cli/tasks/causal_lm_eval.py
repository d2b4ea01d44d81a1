"""`perceiver eval` of a causal_lm run: bits per byte (and perplexity) on a held-out stream, every byte
predicted once with a full window before it (windows slide by model.num_latents, the latents of each
predicting the bytes the previous window did not), next to what standard compressors and a byte
bigram model fitted on the training stream make of the identical bytes."""

from __future__ import annotations

import lzma
import math

import numpy as np
import torch
import torch.nn.functional as F

from ..console import visible as v
from ..data.text import stream_of
from .base import Evaluation, Shown
from .bytes import bar_figure

BIGRAM_CHUNK = 1 << 24


def sliding_ends(length: int, stride: int) -> np.ndarray:
    """The last target position of each window: stride, 2 stride, ... and the stream's last byte
    (byte 0 has nothing before it to predict it from)."""
    ends = np.arange(stride, length - 1, stride, dtype=np.int64)
    return np.append(ends, length - 1) if length > 1 else ends


def model_bits(task, context, stream: np.ndarray) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, bytes predicted) of stream[1:]."""
    ends = sliding_ends(len(stream), task.latents)
    previous = np.concatenate([[0], ends[:-1]])
    nll, counted = 0.0, 0

    def inputs_of(batch):
        start, batch_ends = batch[0], batch[1].cpu().numpy()
        inputs, (nexts, valid) = task.windows(stream, batch_ends, context.device)
        positions = batch_ends[:, None] - task.latents + 1 + np.arange(task.latents)[None, :]  # each target's
        new = torch.from_numpy(positions > previous[start: start + len(batch_ends), None]).to(valid.device)
        return inputs, (nexts, valid & new)

    for logits, (nexts, new) in context.run(ends, inputs_of):
        losses = F.cross_entropy(logits.transpose(1, 2), nexts, reduction="none")
        nll += float(losses[new].double().sum())
        counted += int(new.sum())
    return nll, counted


def bigram_bits(train: np.ndarray, held_out: np.ndarray) -> float:
    """Bits per byte of held_out[1:] under p(b | a) counted on the training stream, add-one smoothed."""
    counts = np.ones(256 * 256, dtype=np.float64)
    for start in range(0, max(len(train) - 1, 0), BIGRAM_CHUNK):
        pairs = train[start: start + BIGRAM_CHUNK + 1].astype(np.int64)
        counts += np.bincount(pairs[:-1] * 256 + pairs[1:], minlength=256 * 256)
    table = counts.reshape(256, 256)
    log_p = np.log2(table / table.sum(1, keepdims=True))
    held = held_out.astype(np.int64)
    return float(-log_p[held[:-1], held[1:]].mean()) if len(held) > 1 else float("nan")


def compressor_bits(data: bytes) -> dict:
    """Bits per byte of `data` as xz -9e and zstd -19 store it (zstd when the zstandard package is there)."""
    figures = {"xz -9e": 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / max(len(data), 1)}
    try:
        import zstandard
    except ImportError:
        figures["zstd -19"] = None  # pip install zstandard
    else:
        figures["zstd -19"] = 8 * len(zstandard.ZstdCompressor(level=19).compress(data)) / max(len(data), 1)
    return figures


def evaluate_bytes(task, context) -> Evaluation:
    dataset, split = context.own_split()
    task.dataset = dataset  # the streams, not only the checkpoint's description of them
    held_out = stream_of(dataset.split(split))
    nll, counted = model_bits(task, context, held_out)
    bpb = nll / max(counted, 1) / math.log(2)
    baselines = {**compressor_bits(held_out.tobytes()), "bigram": bigram_bits(stream_of(dataset.split("train")), held_out)}
    report = {
        "checkpoint": str(context.checkpoint), "epoch": context.state["epoch"],
        "evaluated_on": context.described(split), "bytes": int(counted), "bits_per_byte": bpb,
        "perplexity": math.exp(nll / max(counted, 1)), "loss": nll / max(counted, 1),
        "context": task.context, "stride": task.latents, "baselines": baselines,
    }
    return Evaluation(report, plot_bits(report), "bits", split)


def plot_bits(report: dict):
    figures = {"Perceiver AR": report["bits_per_byte"], **{k: b for k, b in report["baselines"].items() if b is not None}}
    return bar_figure(figures, "bits per byte (lower is better)", f"{report['evaluated_on']}: {report['bytes']:,} bytes")


def show_evaluation(report: dict) -> Shown:
    line = (f"[bold]{v(report['evaluated_on'])}[/]: [bold]{report['bits_per_byte']:.4f}[/] bits per byte · perplexity "
            f"{report['perplexity']:.3f} · {report['bytes']:,} bytes, each with a window of {report['context']:,} · "
            f"epoch {report['epoch']} checkpoint")
    rows = [["Perceiver AR (this run)", f"{report['bits_per_byte']:.4f}"]]
    rows += [[name, "-" if bits is None else f"{bits:.4f}"] for name, bits in report["baselines"].items()]
    tables = [("the same held-out bytes", ["model", "bits per byte"], rows)]
    if report["baselines"].get("zstd -19") is None:
        line += " · zstd: pip install zstandard"
    return Shown(line, tables)

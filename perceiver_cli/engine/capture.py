"""Capturing cross-attention: which input positions each latent reads, for a fixed probe batch.
Training captures it every train.attention_interval epochs; `perceiver attention` draws the files.

A capture file (`runs/<name>/attention/epoch_NNNN.npz`, written atomically, read without pickle):
    weights       float16 (stages, samples, heads, latents, tokens): softmax over tokens, one stage per cross-attend
    inputs        the probe samples as stored (uint8 images B H W C, or float32 points B N 3+F)
    labels        int64 (samples,)         true classes (-1: none, e.g. a segmentation or masked-image run)
    predictions   int64 (samples,)         the model's classes (-1: the model is no classifier)
    probabilities float32 (samples, classes) (samples, 0) when it is none
    epoch         int
    token_grid    (h, w) of the image token grid (tokens cover stride x stride pixels); [] for points
    stride        pixels per token side (patches, conv stem)
    permutation   int64 (tokens,): token j sits at grid position permutation[j]; [] when not permuted
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_writer
from ..errors import UserError
from ..runs.files import writing
from .runtime import array_batches, run_model

FILE_PATTERN = "epoch_{:04d}.npz"


@dataclass
class Capture:
    epoch: int
    weights: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    token_grid: tuple[int, ...]
    stride: int
    permutation: np.ndarray | None

    @property
    def is_points(self) -> bool:
        return not self.token_grid


def grid_order(capture: Capture, weights: np.ndarray) -> np.ndarray:
    """Weights (..., tokens) with the tokens back in grid order (undoing a fixed pixel permutation)."""
    if capture.permutation is None:
        return weights
    out = np.empty_like(weights)
    out[..., capture.permutation] = weights  # token j sits at grid position permutation[j]
    return out


UNCLASSED_PROBES = 4  # per train.attention_samples, for samples with no one class (masks: labels per pixel)


def probe_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` samples of every class (fewer where a class has fewer), chosen by `seed`; the same
    indices every time, so captures of different epochs show the same samples. Samples labelled per
    pixel have no class to pick by: UNCLASSED_PROBES x per_class of them, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    if labels.ndim > 1:
        return np.sort(rng.permutation(len(labels))[: UNCLASSED_PROBES * per_class])
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)


def probe_samples(x: np.ndarray, y: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stored samples and labels at probe_indices."""
    index = probe_indices(np.asarray(y), per_class, seed)
    return np.asarray(x[index]), np.asarray(y[index])


@torch.no_grad()
def attention(model, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Logits (None for a model that is no classifier: its encoder reads every token) and the
    cross-attention weights of every cross-attend, each (B, heads, latents, tokens), through the
    model's eager attention path (training keeps the fused SDPA path)."""
    was_training = model.training
    model.eval()
    try:
        if not hasattr(model, "classifier"):  # segmentation, masked image modelling: the encoder's maps
            return None, model.encode(inputs, mask, return_attention=True)[1]
        output = model(inputs, mask, return_attention=True)
    finally:
        model.train(was_training)
    return output.logits, output.cross_attention


class AttentionReader(torch.nn.Module):
    """A model whose forward gives (logits or None, cross-attention weights): see attention()."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return attention(self.model, inputs)


def capture(model, stored: np.ndarray, labels: np.ndarray, transform, device: torch.device, epoch: int,
            bf16: bool = False, batch_size: int = 32) -> Capture:
    """Run the stored probe samples through the model and collect everything a picture needs."""
    weights, logits = [], []
    readers = AttentionReader(model).train(model.training)  # run_model restores this mode
    for (batch_logits, maps), count in run_model(readers, array_batches(stored, batch_size, device),
                                                 lambda batch: ((transform(batch[1]),), len(batch[1])), bf16, device):
        logits.append(torch.zeros(count, 0) if batch_logits is None else batch_logits.float().cpu())
        weights.append(torch.stack([m.float() for m in maps]).cpu())  # stages B H N M
    logits = torch.cat(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim > 1 or not logits.shape[1]:  # per-pixel labels, or no classes predicted
        labels = np.full(len(stored), -1, dtype=np.int64)
    adapter = model.adapter
    permutation = getattr(adapter, "permutation", None)
    return Capture(
        epoch=epoch,
        weights=torch.cat(weights, dim=1).numpy().astype(np.float16),
        inputs=np.asarray(stored),
        labels=labels,
        predictions=logits.argmax(1).numpy().astype(np.int64) if logits.shape[1] else np.full(len(stored), -1, np.int64),
        probabilities=logits.softmax(1).numpy().astype(np.float32),
        token_grid=tuple(adapter.grid_shape) if hasattr(adapter, "grid_shape") else (),
        stride=int(getattr(adapter, "stride", 1)),
        permutation=None if permutation is None else permutation.cpu().numpy(),
    )


def save(capture_: Capture, folder: Path) -> Path:
    """Write as attention/epoch_NNNN.npz, atomically (temp file, fsync, rename)."""
    path = Path(folder) / FILE_PATTERN.format(capture_.epoch)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:
            np.savez_compressed(
                fh, epoch=np.int64(capture_.epoch), weights=capture_.weights, inputs=capture_.inputs,
                labels=capture_.labels, predictions=capture_.predictions, probabilities=capture_.probabilities,
                token_grid=np.array(capture_.token_grid, dtype=np.int64), stride=np.int64(capture_.stride),
                permutation=np.array([] if capture_.permutation is None else capture_.permutation, dtype=np.int64),
            )
    return path


def load(path: Path) -> Capture:
    try:
        with np.load(path, allow_pickle=False) as data:
            permutation = data["permutation"]
            return Capture(
                epoch=int(data["epoch"]), weights=data["weights"], inputs=data["inputs"], labels=data["labels"],
                predictions=data["predictions"], probabilities=data["probabilities"],
                token_grid=tuple(int(v) for v in data["token_grid"]), stride=int(data["stride"]),
                permutation=permutation if permutation.size else None,
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # damaged or cut short
        raise UserError(f"{path}: not a readable attention capture ({exc}); capture it again") from None


def saved_epochs(run_dir: Path) -> dict[int, Path]:
    """{epoch: file} of the captures saved in a run directory."""
    found = {}
    for path in sorted((Path(run_dir) / "attention").glob("epoch_*.npz")):
        try:
            found[int(path.stem.split("_")[1])] = path
        except (IndexError, ValueError):
            continue
    return found

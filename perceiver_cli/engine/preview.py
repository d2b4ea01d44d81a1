"""A quick picture of a capture for TensorBoard, drawn by the engine itself (it never imports the
`perceiver attention` command): per probe sample a caption, the input, and the first cross-attend's
attention mass (summed over heads and latents) laid over it; for points and sequences the mass
along the tokens. The full panels, statistics and point clouds are attention/render.py's."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .capture import Capture, grid_order

ALPHA = 0.6  # the overlay's opacity, as `perceiver attention`'s default
CAPTION = 14  # pixels above each row for "true -> predicted (probability)"


def tensorboard_image(capture: Capture, classes: list[str], samples: int = 4, height: int = 96) -> np.ndarray:
    """An H x W x 3 uint8 array (for SummaryWriter.add_image), one row per sample."""
    rows = [_row(capture, i, classes, height) for i in range(min(samples, len(capture.labels)))]
    width = max(row.shape[1] for row in rows)
    return np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows])


def token_mass(capture: Capture, sample: int) -> np.ndarray:
    """(tokens,) in grid order, summing to 1."""
    mass = grid_order(capture, capture.weights[0, sample].astype(np.float64).sum(axis=(0, 1)))
    return mass / mass.sum()


def _colour(values: np.ndarray) -> np.ndarray:
    import matplotlib

    span = values.max() - values.min()
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    return (matplotlib.colormaps["viridis"](scaled)[..., :3] * 255).astype(np.uint8)


def _row(capture: Capture, sample: int, classes: list[str], height: int) -> np.ndarray:
    mass = token_mass(capture, sample)
    if len(capture.token_grid) == 2:
        stored = capture.inputs[sample]
        image = np.repeat(stored, 3, axis=-1) if stored.shape[-1] == 1 else stored[..., :3]
        heat = Image.fromarray(_colour(mass.reshape(capture.token_grid)))
        heat = np.asarray(heat.resize((image.shape[1], image.shape[0]), Image.Resampling.NEAREST))
        overlay = ((1 - ALPHA) * image + ALPHA * heat).astype(np.uint8)
        panel = np.concatenate([image, overlay], axis=1)
    else:  # points, sequences: the mass along the tokens
        panel = np.repeat(_colour(mass)[None], max(1, height // 4), axis=0)
    scale = max(1, height // panel.shape[0])
    panel = np.kron(panel, np.ones((scale, scale, 1), dtype=np.uint8))
    caption = Image.new("RGB", (max(panel.shape[1], 160), CAPTION))
    ImageDraw.Draw(caption).text((2, 1), _caption(capture, sample, classes), fill=(255, 255, 255))
    panel = np.pad(panel, ((0, 0), (0, caption.width - panel.shape[1]), (0, 0)))
    return np.concatenate([np.asarray(caption), panel])


def _caption(capture: Capture, sample: int, classes: list[str]) -> str:
    name = lambda i: classes[i] if 0 <= i < len(classes) else "?"  # noqa: E731
    true, pred = capture.labels[sample], capture.predictions[sample]
    if pred < 0:  # the model is no classifier (segmentation, masked image modelling)
        return f"sample {sample}"
    return f"{name(true)} -> {name(pred)} ({capture.probabilities[sample, pred]:.0%})"

"""Drawing captured cross-attention with matplotlib.

Images: one row per sample: original | attention mass (summed over latents) | overlay | the maps of
the most active latents. Tokens that cover several pixels (patches, conv stem) are drawn as blocks;
permuted-pixel runs are put back in image order first. Point clouds: the cloud in 3D coloured by
attention mass, from two viewpoints. Sequences: mass along the sequence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine.capture import Capture, grid_order
from ..errors import UserError
from ..runs.files import save_figure
from .stats import latent_mass, token_mass

FORMATS = ("png", "svg", "pdf")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_colormap(name: str) -> None:
    import matplotlib

    if name not in matplotlib.colormaps:
        examples = ", ".join(n for n in ("viridis", "magma", "inferno", "plasma", "jet", "hot") if n in matplotlib.colormaps)
        raise UserError(f"--colormap {name!r}: matplotlib does not know it (e.g. {examples})")


def selected(capture: Capture, sample: int, stage: int, head: int | None) -> np.ndarray:
    """(heads, latents, tokens) in grid order, or one head's (1, latents, tokens)."""
    weights = capture.weights[stage, sample].astype(np.float32)
    if head is not None:
        weights = weights[head : head + 1]
    return grid_order(capture, weights)


def _as_image(capture: Capture, values: np.ndarray) -> np.ndarray:
    """Per-token values -> a pixel-sized map (tokens repeated over the stride x stride pixels they cover)."""
    grid = values.reshape(capture.token_grid)
    return np.kron(grid, np.ones((capture.stride, capture.stride))) if capture.stride > 1 else grid


def _show_input(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)


def _title(capture: Capture, sample: int, classes: list[str]) -> str:
    true = capture.labels[sample]
    pred = capture.predictions[sample]
    if pred < 0:  # the model is no classifier (segmentation, masked image modelling)
        return f"sample {sample}"
    name = lambda i: classes[i] if 0 <= i < len(classes) else "?"  # noqa: E731
    truth = f"{name(true)} → " if true >= 0 else ""
    return f"{truth}{name(pred)} ({capture.probabilities[sample, pred]:.0%})"


def render(capture: Capture, classes: list[str], path: Path, stage: int, head: int | None, samples: int,
           colormap: str, alpha: float, latents: int = 4) -> Path:
    plt = _pyplot()
    count = min(samples, len(capture.labels))
    if capture.is_points:
        fig = plt.figure(figsize=(8, 3.6 * count))
        for row in range(count):
            mass = token_mass(selected(capture, row, stage, head))
            xyz = capture.inputs[row, :, :3]
            for col, (elev, azim) in enumerate(((20, -60), (70, 30))):
                ax = fig.add_subplot(count, 2, 2 * row + col + 1, projection="3d")
                points = ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=mass, cmap=colormap, s=4)
                ax.view_init(elev=elev, azim=azim)
                ax.set_axis_off()
                if col == 0:
                    ax.set_title(_title(capture, row, classes), fontsize=9)
            fig.colorbar(points, ax=ax, shrink=0.6, label="attention mass")
    elif len(capture.token_grid) == 1:  # sequences
        fig, axes = plt.subplots(count, 1, figsize=(8, 1.8 * count), squeeze=False)
        for row in range(count):
            ax = axes[row, 0]
            ax.plot(token_mass(selected(capture, row, stage, head)))
            ax.set_title(_title(capture, row, classes), fontsize=9)
            ax.set_ylabel("mass")
    else:
        columns = 3 + latents
        fig, axes = plt.subplots(count, columns, figsize=(1.9 * columns, 2.0 * count), squeeze=False)
        for row in range(count):
            weights = selected(capture, row, stage, head)
            image = capture.inputs[row]
            heat = _as_image(capture, token_mass(weights))
            per_latent = latent_mass(weights)
            share = np.bincount(per_latent.argmax(axis=0), minlength=per_latent.shape[0])
            _show_input(axes[row, 0], image)
            axes[row, 0].set_title(_title(capture, row, classes), fontsize=8)
            axes[row, 1].imshow(heat, cmap=colormap)
            axes[row, 1].set_title("attention mass", fontsize=8)
            _show_input(axes[row, 2], image)
            axes[row, 2].imshow(heat, cmap=colormap, alpha=alpha, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
            axes[row, 2].set_title("overlay", fontsize=8)
            for k, latent in enumerate(np.argsort(-share, kind="stable")[:latents]):
                axes[row, 3 + k].imshow(_as_image(capture, per_latent[latent]), cmap=colormap)
                axes[row, 3 + k].set_title(f"latent {latent}", fontsize=8)
            for ax in axes[row]:
                ax.set_axis_off()
    head_text = "all heads" if head is None else f"head {head}"
    fig.suptitle(f"epoch {capture.epoch} · cross-attend {stage} · {head_text}", fontsize=10)
    _save(fig, path)
    return path


def render_evolution(captures: list[Capture], stats: dict, path: Path, stage: int, head: int | None, samples: int,
                     colormap: str, alpha: float) -> Path:
    """The same samples across epochs (rows: samples, columns: epochs), and the curves of entropy and
    top-5 % mass over epochs beneath."""
    plt = _pyplot()
    epochs = [c.epoch for c in captures]
    count = min(samples, len(captures[0].labels))
    show_maps = not captures[0].is_points and len(captures[0].token_grid) == 2
    rows = (count if show_maps else 0) + 1
    fig = plt.figure(figsize=(max(6, 1.6 * len(captures)), 1.6 * rows + 1.5))
    grid = fig.add_gridspec(rows, len(captures), height_ratios=[1] * (rows - 1) + [1.6])
    if show_maps:
        for col, capture in enumerate(captures):
            for row in range(count):
                ax = fig.add_subplot(grid[row, col])
                image = capture.inputs[row]
                _show_input(ax, image)
                heat = _as_image(capture, token_mass(selected(capture, row, stage, head)))
                ax.imshow(heat, cmap=colormap, alpha=alpha, extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(f"epoch {capture.epoch}", fontsize=8)
    curves = fig.add_subplot(grid[rows - 1, :])
    for key, style in (("entropy", "-o"), ("top5_mass", "-s")):
        curves.plot(epochs, [stats[e]["mean"][key] for e in epochs], style, label=key)
    curves.set_xlabel("epoch")
    curves.set_ylim(0, 1.05)
    curves.legend(fontsize=8)
    curves.set_title(f"cross-attend {stage}: mean over {len(captures[0].labels)} probe samples", fontsize=9)
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    """To a file atomically (an OS error is one clear line)."""
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=110)

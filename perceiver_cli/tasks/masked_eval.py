"""`perceiver eval` of a masked-image run: the reconstruction loss on the hidden patches of a split
against the trivial baseline (each hidden patch predicted as its own mean), the same hidden patches
for a sample as in training's validation; a PNG of original | masked | reconstructed."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from ..console import visible as v
from .base import Evaluation, Shown

FIGURE_SAMPLES = 6


def evaluate_reconstruction(task, context) -> Evaluation:
    x, _, tag, described = context.samples()
    sums, shown = torch.zeros(2, dtype=torch.float64), None

    def inputs_of(batch):  # the same hidden patches of a sample as in training's validation
        start, stored = batch
        inputs, target = task.eval_batch(stored, None, torch.arange(start, start + len(stored)))
        return inputs, (inputs, target)

    for output, (inputs, target) in context.run(x, inputs_of):
        sums += task.eval_sums(output, target).cpu()
        if shown is None:
            shown = reconstructions(task, inputs, output, context.transform, FIGURE_SAMPLES)
    loss, baseline = (sums / len(x)).tolist()
    report = {"checkpoint": str(context.checkpoint), "epoch": context.state["epoch"],
              "evaluated_on": described, "samples": int(len(x)), "mask_ratio": context.recipe.task.mask_ratio,
              "loss": loss, "baseline_loss": baseline, "loss_over_baseline": loss / baseline if baseline else None}
    figure = plot_reconstructions(shown, f"{described}: loss {loss:.4f} vs patch-mean baseline {baseline:.4f}")
    return Evaluation(report, figure, "reconstruct", tag, dpi=80)


def reconstructions(task, inputs, predicted: torch.Tensor, transform, count: int):
    """(original, masked, reconstructed) images in [0, 1] (N H W C) of the first `count` samples:
    hidden patches greyed out / filled in by the model (normalised predictions are given back each
    true patch's mean and std, as MAE shows them), visible patches as they were."""
    x, visible, hidden = (t[:count] for t in inputs)
    predicted = predicted[:count]
    patches = task.patch_pixels(x)  # B M (p p C), model-input units
    truth = torch.gather(patches, 1, hidden[..., None].expand(-1, -1, patches.shape[-1]))
    if task.recipe.task.norm_pix_loss:
        predicted = predicted * (truth.var(-1, keepdim=True) + 1e-6).sqrt() + truth.mean(-1, keepdim=True)
    masked, filled = patches.clone(), patches.clone()
    rows = torch.arange(len(x))[:, None]
    masked[rows, hidden] = float("nan")
    filled[rows, hidden] = predicted.to(filled.dtype)
    p, (height, _, _) = task.recipe.model.patch_size, task.dataset.input_spec["shape"]
    to_image = lambda t: rearrange(t, "b (h w) (p1 p2 c) -> b (h p1) (w p2) c", h=height // p, p1=p, p2=p)  # noqa: E731
    return [to_pixels(to_image(t), transform) for t in (patches, masked, filled)]


def to_pixels(x: torch.Tensor, transform) -> np.ndarray:
    """Model inputs back to displayable [0, 1] values (undoing the normalisation); NaN stays NaN."""
    if transform.mean is not None:
        x = x * transform.std + transform.mean
    return x.clamp(0, 1).cpu().numpy()


def plot_reconstructions(images, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original = images[0]
    fig, axes = plt.subplots(len(original), 3, figsize=(7.5, 2.5 * len(original)), squeeze=False)
    for row in range(len(original)):
        for column, (name, batch) in enumerate(zip(("original", "masked", "reconstructed"), images)):
            shown = np.nan_to_num(batch[row], nan=0.5)  # hidden patches grey
            axes[row][column].imshow(shown[..., 0] if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)
            axes[row][column].set_axis_off()
            if row == 0:
                axes[row][column].set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_evaluation(report: dict) -> Shown:
    ratio = report["loss_over_baseline"]
    return Shown(
        f"[bold]{v(report['evaluated_on'])}[/]: reconstruction loss [bold]{report['loss']:.4f}[/] on the hidden "
        f"{report['mask_ratio']:.0%} of the patches · patch-mean baseline {report['baseline_loss']:.4f}"
        + (f" ({ratio:.2f}× of it)" if ratio is not None else "")
        + f" · {report['samples']:,} samples · epoch {report['epoch']} checkpoint")

"""`perceiver eval` of a masked-image run: the reconstruction loss on the hidden patches of a split
against the trivial baseline (each hidden patch predicted as its own mean), the same hidden patches
for a sample as in training's validation; a PNG of original | masked | reconstructed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from ..engine.runtime import InputTransform, autocast, use_bf16
from ..errors import UserError
from ..runs.files import save_figure, write_json
from ..runs.trained import described_dataset, run_dir_of, split_samples
from ..tasks.masked import MaskedImageTask
from .classify import EvalResult, split_described

FIGURE_SAMPLES = 6


def evaluate_reconstruction(model, recipe, loaded, split: str | None, data: Path | None, batch_size: int,
                            device: torch.device) -> EvalResult:
    if data is not None:
        raise UserError("--data: a masked_image run is evaluated on a split of its own dataset; leave --data out")
    state = loaded.state
    x, _, split = split_samples(recipe, state, split)
    if len(x) == 0:
        raise UserError(f"{state['dataset']} {split} split: no samples to evaluate")
    transform = InputTransform(state["input_spec"], state["normalization"], device, recipe.data)
    task = MaskedImageTask(recipe, described_dataset(state), transform)
    bf16 = use_bf16(recipe.train.precision, device)
    sums, shown = torch.zeros(2, dtype=torch.float64), None
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            stored = torch.from_numpy(np.ascontiguousarray(x[start: start + batch_size])).to(device)
            index = torch.arange(start, start + len(stored))
            inputs, target = task.eval_batch(stored, None, index)
            with autocast(device, bf16):
                output = model(*inputs).float()
            sums += task.eval_sums(output, target).cpu()
            if shown is None:
                shown = reconstructions(task, inputs, output, transform, FIGURE_SAMPLES)
    loss, baseline = (sums / len(x)).tolist()
    described = split_described(recipe, state, split, loaded.path)
    report = {"task": "masked_image", "checkpoint": str(loaded.path), "epoch": state["epoch"],
              "evaluated_on": described, "samples": int(len(x)), "mask_ratio": recipe.task.mask_ratio,
              "loss": loss, "baseline_loss": baseline, "loss_over_baseline": loss / baseline if baseline else None}
    run_dir = run_dir_of(loaded.path)
    json_path, png_path = run_dir / f"eval_{split}.json", run_dir / f"reconstruct_{split}.png"
    write_json(json_path, report)
    plot_reconstructions(shown, f"{described}: loss {loss:.4f} vs patch-mean baseline {baseline:.4f}", png_path)
    return EvalResult(report, json_path, png_path)


def reconstructions(task: MaskedImageTask, inputs, predicted: torch.Tensor, transform, count: int):
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
    p, (height, width, _) = task.recipe.model.patch_size, task.dataset.input_spec["shape"]
    to_image = lambda t: rearrange(t, "b (h w) (p1 p2 c) -> b (h p1) (w p2) c", h=height // p, p1=p, p2=p)  # noqa: E731
    return [to_pixels(to_image(t), transform) for t in (patches, masked, filled)]


def to_pixels(x: torch.Tensor, transform) -> np.ndarray:
    """Model inputs back to displayable [0, 1] values (undoing the normalisation); NaN stays NaN."""
    if transform.mean is not None:
        x = x * transform.std + transform.mean
    return x.clamp(0, 1).cpu().numpy()


def plot_reconstructions(images, title: str, path: Path) -> None:
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
    save_figure(fig, path, dpi=80)

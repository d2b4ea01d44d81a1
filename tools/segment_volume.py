"""Draw what a segmentation run predicts on a NIfTI volume that has no label map (e.g. a real MR
scan), as image | prediction for a few sagittal slices, sliced and scaled as `prepare knee-seg`
slices its images: a picture to look at (`perceiver predict RUN scan.nii.gz` writes the masks
themselves, one PNG per slice).

    python tools/segment_volume.py runs/knee_seg ../shared/data/knee-mri/dess_sagittal_right_knee.nii.gz \
        --slices 6 --out dess_overlay.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from perceiver_cli.data.nifti import load_nifti, resize, to_uint8
from perceiver_cli.engine.runtime import InputTransform, autocast, resolve_device, use_bf16
from perceiver_cli.runs.files import save_figure
from perceiver_cli.tasks.segment_eval import plot_overlays
from perceiver_cli.runs.trained import load_trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a segmentation run directory (or its checkpoint)")
    parser.add_argument("volume", help="a NIfTI volume (.nii / .nii.gz)")
    parser.add_argument("--slices", type=int, default=6, help="evenly spaced slices in the middle 60 %% of the volume")
    parser.add_argument("--out", default="segment_volume.png")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, recipe, loaded = load_trained(Path(args.run), device)
    state = loaded.state
    height, width, _ = state["input_spec"]["shape"]
    path = Path(args.volume)
    volume = load_nifti(path.read_bytes(), path.name.lower().endswith(".gz"), None)  # slices, superior-first rows
    chosen = [int(i) for i in np.linspace(0.2 * (len(volume) - 1), 0.8 * (len(volume) - 1), args.slices).round()]
    x = np.stack([resize(s, (height, width)) for s in to_uint8(volume, chosen)])[..., None]
    transform = InputTransform(state["input_spec"], state["normalization"], device, recipe.data)
    with torch.no_grad(), autocast(device, use_bf16(recipe.train.precision, device)):
        predicted = model(transform(torch.from_numpy(x).to(device))).float().argmax(-1).to(torch.uint8).cpu().numpy()
    shares = np.bincount(predicted.reshape(-1), minlength=len(state["classes"])) / predicted.size
    save_figure(plot_overlays(x, None, predicted, state["classes"], f"{path.name}: slices {chosen}",
                              samples=list(range(len(chosen)))), Path(args.out), dpi=80)
    print(f"wrote {args.out}; predicted share per label: "
          + ", ".join(f"{name} {share:.2%}" for name, share in zip(state["classes"], shares)))


if __name__ == "__main__":
    main()

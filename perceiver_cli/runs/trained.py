"""A trained run loaded back: its model with the checkpoint's weights, its recipe, and the samples of
its dataset (the split it validated on, or another), for eval, attention and later predict/export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.sources import load_for_recipe
from ..data.splits import split_train_val
from ..errors import UserError
from ..model import build_model
from ..recipe import recipe_from_dict
from . import checkpoint


def load_trained(target: Path, device: torch.device, prefer: str = "best"):
    """(model, recipe, checkpoint.Loaded) of a run directory's preferred checkpoint (its other one when
    that is damaged; say `loaded.tell()` once the command succeeds) or of a .pt file."""
    loaded = checkpoint.load_run(target, prefer)
    state = loaded.state
    recipe = recipe_from_dict(state["config"], source=str(loaded.path))
    model = build_model(recipe.model, state["input_spec"], len(state["classes"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"{loaded.path}: weights do not fit the model in its config ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), recipe, loaded


def split_samples(recipe, state: dict, split: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, split name) of the run's prepared dataset, which must have the checkpoint's classes;
    split None: test where there is one, else val."""
    dataset = load_for_recipe(recipe.data)
    if list(dataset.classes) != list(state["classes"]):
        raise UserError(f"the checkpoint's classes do not match dataset '{dataset.name}' at its prepared location")
    split = split or ("test" if "test" in dataset.splits else "val")
    if split == "val" and "val" not in dataset.splits:  # the same held-out share training validated on
        _, (x, y) = split_train_val(dataset, recipe.data.val_fraction, recipe.train.seed)
        return x, y, split
    s = dataset.split(split)
    return s.x, s.y, split


def match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """uint8 images (... H W C) with the model's number of channels."""
    if x.shape[-1] == channels:
        return x
    if channels == 1:  # RGB -> luminance (ITU-R 601), as PIL's convert("L")
        return np.round(x[..., :3] @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)[..., None]
    return np.repeat(x, channels, axis=-1)

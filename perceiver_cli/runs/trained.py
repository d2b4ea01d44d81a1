"""A trained run loaded back: its model with the checkpoint's weights, its recipe, and the samples of
its dataset (the split it validated on, or another), for eval, attention and later predict/export."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..data.sources import load_for_recipe
from ..data.splits import split_train_val
from ..errors import UserError, is_out_of_memory
from ..recipe import recipe_from_dict
from ..tasks import build_task
from . import checkpoint
from .schema import check_rebuildable


def described_dataset(state: dict) -> SimpleNamespace:
    """What a checkpoint says of the data it was trained on: enough to build its task's model."""
    return SimpleNamespace(name=state["dataset"], classes=state["classes"], input_spec=state["input_spec"],
                           normalization=state.get("normalization"), target=state.get("target") or {"kind": "class"})


def build_trained_model(recipe, state: dict, source: Path | str = "its config"):
    """The model of the checkpoint's task (classify for checkpoints from before tasks), untrained.
    A model too large for this machine is the config's doing (`source`), not the batch size's."""
    try:
        return build_task(recipe, described_dataset(state), transform=None).build_model()
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        m = recipe.model
        raise UserError(f"{source}: its model does not fit in this machine's memory (model.num_latents={m.num_latents:,}, "
                        f"model.latent_dim={m.latent_dim:,}, model.latent_blocks={m.latent_blocks}); it was not saved by a run "
                        "that trained here: load it on a machine with more memory, or check that file") from None


def load_trained(target: Path, device: torch.device, prefer: str = "best"):
    """(model, recipe, checkpoint.Loaded) of a run directory's preferred checkpoint (its other one when
    that is damaged; say `loaded.tell()` once the command succeeds) or of a .pt file."""
    loaded = checkpoint.load_run(target, prefer)
    state = loaded.state
    check_rebuildable(state, loaded.path)
    recipe = recipe_from_dict(state["config"], source=str(loaded.path))
    model = build_trained_model(recipe, state, loaded.path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise UserError(f"{loaded.path}: weights do not fit the model in its config ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), recipe, loaded


def run_dataset(recipe, state: dict, mmap: bool = False):
    """The run's prepared dataset, which must have the checkpoint's classes."""
    dataset = load_for_recipe(recipe.data, mmap=mmap)
    if list(dataset.classes) != list(state["classes"]):
        raise UserError(f"the checkpoint's classes do not match dataset '{dataset.name}' at its prepared location")
    return dataset


def evaluated_split(dataset, split: str | None) -> str:
    """The split to evaluate: the one asked for, else test where there is one, else val."""
    return split or ("test" if "test" in dataset.splits else "val")


def split_samples(recipe, state: dict, split: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, split name) of the run's prepared dataset, which must have the checkpoint's classes;
    split None: test where there is one, else val."""
    dataset = run_dataset(recipe, state)
    split = evaluated_split(dataset, split)
    if split == "val" and "val" not in dataset.splits:  # the same held-out share training validated on
        _, (x, y) = split_train_val(dataset, recipe.data.val_fraction, recipe.train.seed)
        return x, y, split
    s = dataset.split(split)
    return s.x, s.y, split


ENCODER = ("adapter.", "latents", "cross_blocks.", "latent_blocks.")  # PerceiverEncoder's parameters


def init_weights(model: torch.nn.Module, source: str) -> tuple[int, list[str]]:
    """train.init: start `model` from `source`'s weights (a run directory's best checkpoint, or a .pt),
    e.g. a masked_image run's encoder for a classifier. The encoder must be the same (every tensor,
    name and shape: another architecture is refused); of the rest (decoders, heads), what has the
    same name and shape is copied and what differs stays as initialised. Returns (tensors loaded,
    names left as initialised)."""
    if not (Path(source).is_dir() or Path(source).is_file()):
        raise UserError(f"train.init={source}: no such run directory or checkpoint; give runs/<name> or a .pt file")
    loaded = checkpoint.load_run(Path(source), prefer="best")
    weights = loaded.state.get("training_model", loaded.state["model"])
    own = model.state_dict()
    encoder = lambda names: {n for n in names if n.startswith(ENCODER)}  # noqa: E731
    differ = sorted(encoder(own) ^ encoder(weights))
    differ += [f"{name} {list(weights[name].shape)} vs {list(own[name].shape)}"
               for name in sorted(encoder(own) & encoder(weights)) if weights[name].shape != own[name].shape]
    if differ:
        raise UserError(f"train.init={source}: its encoder is of another architecture ({differ[0]}"
                        f"{f' and {len(differ) - 1} more' if len(differ) > 1 else ''}); give the model.* settings of "
                        f"that run (see its config.yaml) or another train.init")
    shared = [name for name in own if name in weights and weights[name].shape == own[name].shape]
    model.load_state_dict({name: weights[name] for name in shared}, strict=False)
    return len(shared), [name for name in own if name not in shared]


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run directory a checkpoint belongs to (where eval writes its files)."""
    return checkpoint_path.parent.parent if checkpoint_path.parent.name == "checkpoints" else checkpoint_path.parent

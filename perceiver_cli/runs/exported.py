"""An exported model folder, and loading it back: what `perceiver export --format safetensors`
writes and what `perceiver_cli.load` and `perceiver predict` read besides run directories.

    model.safetensors   the weights (safetensors holds tensors only: loading it runs no code)
    config.json         {"format": "perceiver-export/1", "recipe": the run's recipe,
                         "checkpoint": dataset, classes, target, input_spec, normalization,
                         source (how prepare made the samples), epoch}

`perceiver export` builds the folder beside its final place and swaps it in (data/swap.py): a
reader sees the old folder or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..atomic import json_text, write_text_atomic
from ..errors import UserError
from ..recipe import recipe_from_dict
from .schema import EXPORT_FORMAT, check_export, check_finite
from .trained import build_trained_model

FORMAT = EXPORT_FORMAT
WEIGHTS, CONFIG = "model.safetensors", "config.json"
# what a checkpoint says of its data, which rebuilding and preprocessing need (not the optimizer)
DESCRIPTION = ("dataset", "classes", "target", "input_spec", "normalization", "source", "epoch")


def description(state: dict) -> dict:
    """The parts of a checkpoint's state that an export keeps."""
    return {key: state.get(key) for key in DESCRIPTION}


def is_export_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def write_folder(model: torch.nn.Module, recipe, state: dict, folder: Path) -> None:
    """Write model.safetensors and config.json into `folder` (export/run.py builds the folder beside
    its final place and swaps it in whole)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_model

    folder = Path(folder)
    try:
        save_model(model, str(folder / WEIGHTS))  # shared tensors (weight sharing) are stored once
    except SafetensorError as exc:  # its Rust writer names the OS error only in words: "(os error 28)"
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(folder / WEIGHTS)) from None
    _readable_as_umask_allows(folder / WEIGHTS)  # safetensors writes it owner-only; the rest is 0666 & ~umask
    document = {"format": FORMAT, "recipe": recipe.to_dict(), "checkpoint": description(state)}
    write_text_atomic(folder / CONFIG, json_text(document, indent=2) + "\n")


def _readable_as_umask_allows(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def read_config(folder: Path) -> dict:
    """config.json of an export folder, checked against runs/schema.py: one line naming what is wrong."""
    folder = Path(folder)
    path = folder / CONFIG
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a readable export config ({exc}); export the run again") from None
    check_export(document, path, folder / WEIGHTS)  # its format, its weights file, every key read of the right type
    return document


def load_folder(folder: Path, device: torch.device):
    """(model, recipe, state) of an export folder; state: the checkpoint description it carries."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    document = read_config(folder)
    state = {key: document["checkpoint"].get(key) for key in DESCRIPTION}
    state["target"] = state["target"] or {"kind": "class"}
    recipe = recipe_from_dict(document["recipe"], source=str(Path(folder) / CONFIG))
    model = build_trained_model(recipe, state, Path(folder) / CONFIG)
    try:
        load_model(model, str(Path(folder) / WEIGHTS), strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise UserError(f"{Path(folder) / WEIGHTS}: weights do not fit the model in its config.json, or the file is "
                        f"damaged ({str(exc).splitlines()[0][:160]}); export the run again") from None
    check_finite(model.state_dict(), Path(folder) / WEIGHTS, "export the run again from a checkpoint that predicts")
    return model.to(device).eval(), recipe, state


def load_model_from(target: Path, device: torch.device, prefer: str = "best"):
    """(model, recipe, state, checkpoint.Loaded or None) of an export folder, a run directory (its
    best checkpoint, or last when best is damaged) or a .pt file: what predict and load take."""
    from .trained import load_trained

    target = Path(target)
    if is_export_folder(target):
        model, recipe, state = load_folder(target, device)
        return model, recipe, state, None
    if target.is_dir() and not (target / "checkpoints").is_dir():
        raise UserError(f"{target}: neither a run directory (no checkpoints/) nor an export folder (no {CONFIG}); "
                        f"give runs/<name>, a .pt file or a folder written by perceiver export")
    model, recipe, loaded = load_trained(target, device, prefer=prefer)
    return model, recipe, loaded.state, loaded

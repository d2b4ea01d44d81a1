"""What a checkpoint and an export folder's config.json must hold, checked when they are read.

A file that loads safely (weights_only, JSON) can still be no checkpoint of ours: `{"model": {},
"config": {}}`, classes as a number, an input kind no model reads, a normalisation mean that is a
string. Each is refused here in one line naming the file, the key, the value found and what to do,
instead of a KeyError or TypeError wherever the value is first used. The data description (dataset,
classes, input spec, target, normalisation) is the prepared manifest's schema (data/prepared.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..data.prepared import InputSpec, Normalization, TargetSpec, check_channels
from ..errors import UserError

CHECKPOINT_FORMAT = "perceiver-checkpoint/1"
EXPORT_FORMAT = "perceiver-export/1"
RETRAIN = "use a checkpoint written by perceiver train (runs/<name>/checkpoints/best.pt)"
REEXPORT = "export the run again with perceiver export"
# what a model is rebuilt from: a checkpoint read only for its metrics rows may lack them
TO_REBUILD = ("dataset", "classes", "input_spec", "epoch")


class Description(BaseModel):
    """What a checkpoint says of the data it was trained on (an export keeps it in config.json)."""
    model_config = ConfigDict(extra="allow")
    dataset: Optional[str] = None
    classes: Optional[list[str]] = Field(default=None, min_length=1)
    input_spec: Optional[InputSpec] = None
    target: Optional[TargetSpec] = None
    normalization: Optional[Normalization] = None
    source: Optional[dict] = None
    epoch: Optional[int] = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _channels(self):
        if self.input_spec is not None:
            check_channels(self.input_spec, self.normalization)
        return self


Weights = dict[str, torch.Tensor]


class Checkpoint(Description):
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)
    format: Optional[Literal[CHECKPOINT_FORMAT]] = None
    model: Weights
    config: dict
    training_model: Optional[Weights] = None  # the weights being trained, beside an average (EMA)
    optimizer: Optional[dict] = None
    scheduler: Optional[dict] = None
    metrics: Optional[list[dict]] = None
    best: Optional[dict] = None


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: Literal[EXPORT_FORMAT]
    recipe: dict
    checkpoint: Description


def check_checkpoint(state, path: Path) -> None:
    """A checkpoint's state is ours: every key we read of the right type."""
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a perceiver checkpoint (it holds a {type(state).__name__}, not a dict of weights "
                        f"and config); {RETRAIN}")
    _validate(Checkpoint, state, path, "not a perceiver checkpoint", RETRAIN)


def check_rebuildable(state: dict, path: Path) -> None:
    """A checkpoint holds what its model is rebuilt from and its inputs are prepared by."""
    missing = [key for key in TO_REBUILD if state.get(key) is None]
    if missing:
        raise UserError(f"{path}: not a perceiver checkpoint: no '{missing[0]}' inside; {RETRAIN}")


def check_export(document, path: Path, weights: Path) -> None:
    """config.json (at `path`) of an export folder is ours, its `weights` file is there, and the config is complete."""
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise UserError(f"{path}: not a perceiver export (format {found!r}, expected {EXPORT_FORMAT}); {REEXPORT}")
    if not Path(weights).is_file():
        raise UserError(f"{Path(weights).parent}: incomplete export: no {Path(weights).name}; {REEXPORT}")
    _validate(ExportConfig, document, path, "not a usable export", REEXPORT, missing="incomplete export")
    missing = [f"checkpoint.{key}" for key in ("classes", "input_spec") if document["checkpoint"].get(key) is None]
    if missing:
        raise UserError(f"{path}: incomplete export: no {missing[0]}; {REEXPORT}")


def check_finite(weights: dict, path: Path, fix: str) -> None:
    """Weights that hold NaN or infinity make every prediction NaN: refused, naming the first. (eval and
    attention read them still: their NaN losses and maps show a run that diverged for what it is.)"""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{path}: weight {name} holds NaN or infinite values (a run that diverged, or a damaged "
                            f"file), so every prediction would be NaN; {fix}")


def _validate(schema: type[BaseModel], document: dict, path: Path, what: str, fix: str, missing: str | None = None) -> None:
    try:
        schema.model_validate(document)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        if error["type"] == "missing":
            raise UserError(f"{path}: {missing or what}: no {where}; {fix}") from None
        problem = error["msg"].removeprefix("Value error, ")
        across = error["type"] == "value_error" and isinstance(error.get("input"), dict)  # a check across keys
        found = "" if across else f" (found {_shown(error.get('input'))})"
        raise UserError(f"{path}: {what}: {where + ': ' if where else ''}{problem}{found}; {fix}") from None


def _shown(value) -> str:
    """A value found, short: a tensor by its shape, anything else by its repr cut at 60 characters."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

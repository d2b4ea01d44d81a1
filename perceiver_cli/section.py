"""The base of every recipe section (recipe.py's and each task's own `task:` section in tasks/):
unknown keys are refused, values are checked on assignment too, and floats must be finite."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # allow_inf_nan: a float key takes finite numbers only (lr=inf diverges at the first step, nan never compares)
    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True, allow_inf_nan=False)

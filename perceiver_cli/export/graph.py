"""What an exported graph computes: stored samples in, the model's output out, with the run's input
preprocessing inside, so a deployer feeds the graph what `prepare` stores and needs no Python.

    images  uint8  B H W C  -> /255, then (x - mean) / std per channel (the prepared normalisation)
    points  float32 B N 3+F -> the first data.num_points points, scaled to the unit cube if the recipe says so

The arithmetic is InputTransform's (engine/runtime.py), in the same order, so eager results of this
module and of model(InputTransform(x)) are the same bits.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..engine.runtime import InputTransform
from ..model.attention import CrossAttention
from ..model.position import SeparablePositions


class Deployable(nn.Module):
    """model(preprocess(x)) for stored samples x, as one module to trace."""

    def __init__(self, model: nn.Module, transform: InputTransform):
        super().__init__()
        self.model = model
        self.is_points, self.num_points, self.cube = transform.is_points, transform.num_points, transform.cube
        # buffers, so they become constants of the graph (None: the images are only scaled to 0..1)
        self.register_buffer("mean", None if transform.mean is None else transform.mean.detach().float().cpu())
        self.register_buffer("std", None if transform.std is None else transform.std.detach().float().cpu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_points:
            x = x.float()[:, : self.num_points]
            if self.cube:
                xyz = x[..., :3]
                x = torch.cat([xyz / xyz.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12), x[..., 3:]], dim=-1)
        else:
            x = x.float().div(255.0)
            if self.mean is not None:
                x = (x - self.mean) / self.std
        return self.model(x)


def with_plain_attention(model: nn.Module) -> nn.Module:
    """A copy of `model` whose cross-attention reads image grids as plain keys and values: the grid's
    positions are given densely (M C_pe), so neither the grid attention (grid_attention.py) nor the
    split key/value projection (grid_projection.py) is taken. The same attention, exactly; only the
    order of float operations differs."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, CrossAttention):
            module.keys_values = _dense_positions(module.keys_values)
    return plain


def _dense_positions(keys_values):
    def plain(x, pe, mask=None, need_weights=False):
        return keys_values(x, pe.dense() if isinstance(pe, SeparablePositions) else pe, mask, need_weights)

    return plain


def input_description(input_spec: dict, num_points: int | None) -> dict:
    """The graph's input as config says it: name, dtype, layout, shape (batch first, dynamic)."""
    if input_spec["kind"] == "points":
        points, channels = input_spec["shape"][0], input_spec.get("coords", 3) + input_spec.get("features", 0)
        return {"name": "points", "dtype": "float32", "layout": "B N 3+F", "shape": ["batch", points, channels],
                "note": f"xyz (+ features) as prepare stores them; the graph reads the first {num_points or points}"}
    return {"name": "images", "dtype": "uint8", "layout": "B H W C", "shape": ["batch", *input_spec["shape"]],
            "note": "pixels 0..255 as prepare stores them (resized, channels matched); normalisation is inside"}


def generated_samples(input_spec: dict, count: int, seed: int = 0) -> np.ndarray:
    """Stand-in stored samples of the input spec, for a run whose prepared data is not here: uint8
    images of random pixels; point clouds on the unit sphere (as prepare scales them)."""
    rng = np.random.default_rng(seed)
    if input_spec["kind"] == "points":
        points = input_spec["shape"][0]
        xyz = rng.normal(size=(count, points, 3))
        xyz /= np.linalg.norm(xyz, axis=-1, keepdims=True).max(axis=1, keepdims=True)
        features = rng.normal(size=(count, points, input_spec.get("features", 0)))
        return np.concatenate([xyz, features], axis=-1).astype(np.float32)
    return rng.integers(0, 256, size=(count, *input_spec["shape"]), dtype=np.uint8)

"""Position encodings (paper Sec. 3.2): Fourier features of coordinates, or a learned table.

Fourier features, per axis with positions x in [-1, 1] and frequencies f_k = linspace(1, max_freq/2, bands):
    [sin(pi f_k x)]_k, [cos(pi f_k x)]_k, x          -> axes * (2 * bands + 1) channels
"""

import math

import torch
from torch import nn


def fourier_channels(num_axes: int, num_bands: int) -> int:
    return num_axes * (2 * num_bands + 1)


def fourier_features(positions: torch.Tensor, num_bands: int, max_freq: float) -> torch.Tensor:
    """positions (..., axes) in [-1, 1] -> (..., axes * (2 * bands + 1))."""
    freqs = torch.linspace(1.0, max_freq / 2, num_bands, device=positions.device, dtype=positions.dtype)
    angles = math.pi * positions[..., None] * freqs  # ... axes bands
    features = torch.cat([angles.sin(), angles.cos(), positions[..., None]], dim=-1)  # ... axes (2*bands+1)
    return features.flatten(-2)


def grid_positions(shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Coordinates of every cell of a grid (e.g. (H, W)) in [-1, 1], row-major: (prod(shape), len(shape))."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid.reshape(-1, len(shape))


class FourierGridEncoding(nn.Module):
    """Fourier features of a fixed grid, computed once per grid shape and device, then reused."""

    def __init__(self, num_axes: int, num_bands: int, max_freq: float):
        super().__init__()
        self.num_axes, self.num_bands, self.max_freq = num_axes, num_bands, max_freq
        self.channels = fourier_channels(num_axes, num_bands)
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, grid_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        key = (tuple(grid_shape), str(device))
        if key not in self._cache:
            self._fill(key, lambda: fourier_features(grid_positions(grid_shape, device), self.num_bands, self.max_freq))
        return self._cache[key]  # M C_pe

    @torch.compiler.disable
    def _fill(self, key, build) -> None:
        """Built eagerly, also under torch.compile: a tensor made inside a compiled CUDA graph would
        be overwritten by its next replay."""
        self._cache[key] = build()

    def separable(self, grid_shape: tuple[int, ...], device: torch.device, order: torch.Tensor | None = None) -> "SeparablePositions":
        """The same features, kept per axis (each axis' channels depend on that coordinate only)."""
        key = ("axes", tuple(grid_shape), str(device))
        if key not in self._cache:
            self._fill(key, lambda: [fourier_features(torch.linspace(-1.0, 1.0, n, device=device)[:, None], self.num_bands,
                                                      self.max_freq) for n in grid_shape])
        return SeparablePositions(self._cache[key], tuple(grid_shape), order)


class SeparablePositions:
    """Grid position features stored per axis: position m = (i, j, ...) has the features
    [f_0(i); f_1(j); ...], in the channel order of FourierGridEncoding. A linear map of them is
    W pe_m = W_0 f_0(i) + W_1 f_1(j) + ..., so projecting costs (H + W) rows instead of H * W.
    `order`: a fixed permutation of the positions (token t sits at grid position order[t])."""

    def __init__(self, per_axis: list[torch.Tensor], grid: tuple[int, ...], order: torch.Tensor | None = None):
        self.per_axis, self.grid, self.order = per_axis, grid, order

    @property
    def shape(self) -> tuple[int, int]:
        """(positions, channels): the shape of the dense features."""
        return math.prod(self.grid), sum(f.shape[-1] for f in self.per_axis)

    def _grid_sum(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """sum_i parts[i] broadcast along axis i: (M, ...) in token order."""
        total = None
        for axis, part in enumerate(parts):
            view = [1] * len(parts) + list(part.shape[1:])
            view[axis] = part.shape[0]
            total = part.reshape(view) if total is None else total + part.reshape(view)
        total = total.expand(*self.grid, *total.shape[len(parts):]).reshape(-1, *total.shape[len(parts):])
        return total if self.order is None else total[self.order]

    def project(self, weight: torch.Tensor, per_axis: bool = False):
        """(sum over channels, sum of squares) per position (M,) and weight @ pe (M, out); with
        per_axis, the per-axis parts of weight @ pe instead (their broadcast sum is weight @ pe)."""
        start, projected = 0, []
        for features in self.per_axis:
            channels = features.shape[-1]
            projected.append(torch.nn.functional.linear(features, weight[:, start : start + channels]))
            start += channels
        floats = [f.float() for f in self.per_axis]
        sums = self._grid_sum([f.sum(-1) for f in floats])
        squares = self._grid_sum([f.square().sum(-1) for f in floats])
        return sums, squares, projected if per_axis else self._grid_sum(projected)

    def dense(self) -> torch.Tensor:
        """The (M, C) features, as FourierGridEncoding.forward gives them (for reference and tests)."""
        grids = torch.meshgrid(*[torch.arange(n, device=self.per_axis[0].device) for n in self.grid], indexing="ij")
        dense = torch.cat([f[g.reshape(-1)] for f, g in zip(self.per_axis, grids)], dim=-1)
        return dense if self.order is None else dense[self.order]


class FourierPointEncoding(nn.Module):
    """Fourier features of per-sample coordinates (point clouds): positions differ per sample."""

    def __init__(self, num_axes: int, num_bands: int, max_freq: float):
        super().__init__()
        self.num_bands, self.max_freq = num_bands, max_freq
        self.channels = fourier_channels(num_axes, num_bands)

    def forward(self, coordinates: torch.Tensor) -> torch.Tensor:
        return fourier_features(coordinates, self.num_bands, self.max_freq)  # B M C_pe


class LearnedEncoding(nn.Module):
    """One learned vector per input position (needs a fixed number of positions)."""

    def __init__(self, num_positions: int, channels: int):
        super().__init__()
        self.channels = channels
        self.table = nn.Parameter(torch.empty(num_positions, channels))
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, grid_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        positions = math.prod(grid_shape)
        if positions != self.table.shape[0]:
            raise ValueError(
                f"learned position encoding was built for {self.table.shape[0]} positions, input has {positions}"
            )
        return self.table  # M C_pe

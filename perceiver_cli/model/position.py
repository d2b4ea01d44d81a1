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
            self._cache[key] = fourier_features(grid_positions(grid_shape, device), self.num_bands, self.max_freq)
        return self._cache[key]  # M C_pe


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

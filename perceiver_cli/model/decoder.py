"""The Perceiver IO decoder (Jaegle et al. 2022, Sec. 2): output queries cross-attend to the latents.

    queries  = Linear(Fourier(output positions)) [+ learned query]     # Q x D_q, any number, any grid
    queries += CrossAttention(queries, latents)                         # LayerNorm on both sides
    queries += MLP(queries)
    outputs  = OutputAdapter(queries)                                   # e.g. logits per pixel

Every query is decoded on its own (queries never attend to each other), so the queries can be
decoded in chunks: the same outputs for a fraction of the memory. The positions are coordinates in
[-1, 1] whatever the grid's size, so a model trained on 128 x 128 can be asked for 256 x 256.
A classifier is the special case of one learned query (see perceiver.py, output: query).
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import nn

from .attention import MLP, CrossAttention
from .position import fourier_channels, fourier_features, grid_positions


class OutputQueries(nn.Module):
    """One query per output position: its Fourier features projected to the query width, plus an
    optional learned vector shared by all queries (MAE's mask token). Nothing in it is tied to one
    grid size, which is what lets a decoder answer at any resolution."""

    def __init__(self, num_axes: int, num_bands: int, max_freq: float, dim: int, learned: bool = False):
        super().__init__()
        self.num_bands, self.max_freq = num_bands, max_freq
        self.proj = nn.Linear(fourier_channels(num_axes, num_bands), dim)
        self.learned = None
        if learned:
            self.learned = nn.Parameter(torch.empty(dim))
            nn.init.trunc_normal_(self.learned, std=0.02)

    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (..., axes) in [-1, 1] -> queries (..., D_q)."""
        queries = self.proj(fourier_features(positions, self.num_bands, self.max_freq))
        return queries if self.learned is None else queries + self.learned

    def grid(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Queries for every cell of a grid, row-major: (prod(shape), D_q)."""
        return self.at(grid_positions(shape, device))


def decode(attention: CrossAttention, mlp: MLP, queries: torch.Tensor, latents: torch.Tensor,
           chunk: int | None = None) -> torch.Tensor:
    """queries (B Q D_q) read the latents (B N D): q + CrossAttention, then + MLP; `chunk` queries at a
    time (the latents' keys and values are projected once for all chunks)."""
    keys_values = attention.keys_values(latents, None)
    parts = []
    for start in range(0, queries.shape[1], chunk or queries.shape[1]):
        q = queries[:, start: start + chunk] if chunk else queries
        update, _ = attention(q, keys_values)
        q = q + update
        parts.append(q + mlp(q))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class QueryDecoder(nn.Module):
    """Cross-attention from D_q-wide queries to D-wide latents, then an MLP on the queries."""

    def __init__(self, query_dim: int, latent_dim: int, heads: int, head_dim: int, widening: int, activation: str,
                 dropout: float):
        super().__init__()
        self.attention = CrossAttention(query_dim, latent_dim, 0, heads, head_dim, 0.0, 0.0)
        self.mlp = MLP(query_dim, widening, activation, dropout)

    def forward(self, queries: torch.Tensor, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        if queries.dim() == 2:  # the same queries for every sample
            queries = repeat(queries, "q d -> b q d", b=latents.shape[0])
        return decode(self.attention, self.mlp, queries, latents, chunk)

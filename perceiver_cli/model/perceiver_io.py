"""Perceiver IO models with structured outputs (Jaegle et al. 2022): the encoder of perceiver.py,
then output queries built from output positions that cross-attend to the latents (decoder.py).

    DensePerceiver   images -> per-pixel class logits (segmentation). One query per output cell of
                     an (H/s) x (W/s) grid, each predicting the logits of its s x s pixels
                     (s = task.output_stride; 1 = one query per pixel). Any output size: the
                     queries are Fourier features of positions in [-1, 1], plus (task.query_pixels)
                     the input's own pixels of that cell, as Perceiver IO's optical-flow queries
                     carry the input: the latents say what is where, the pixels where the edges are.
                     With task.query_context c, a query carries the (s + 2c)^2 window around its
                     block: the texture and edges next to it too.
    MaskedPerceiver  masked image modelling (MAE, He et al. 2022, as a Perceiver): the encoder reads
                     only the visible patches; one query per masked patch (its position + a
                     learned mask token) decodes that patch's pixel values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import UserError
from .decoder import OutputQueries, QueryDecoder
from .perceiver import PerceiverEncoder
from .position import SeparablePositions, grid_positions


def _decoder(config) -> tuple[int, QueryDecoder]:
    dim = config.decoder_dim or config.latent_dim
    heads = config.decoder_heads
    if dim % heads:
        raise UserError(f"model.decoder_dim={dim} is not divisible by model.decoder_heads={heads}; change one of them")
    return dim, QueryDecoder(dim, config.latent_dim, heads, dim // heads, config.widening_factor, config.activation,
                             config.dropout)


class DensePerceiver(PerceiverEncoder):
    def __init__(self, config, input_spec: dict, num_classes: int, output_stride: int = 1, query_pixels: bool = True,
                 query_context: int = 0):
        if input_spec["kind"] != "image":
            raise UserError(f"task.name=segment needs images; this dataset holds {input_spec['kind']}")
        super().__init__(config, input_spec)
        height, width, _ = input_spec["shape"]
        if height % output_stride or width % output_stride:
            raise UserError(f"task.output_stride={output_stride} does not divide the {height}x{width} images: "
                            f"choose a stride that divides both sides")
        self.num_classes, self.stride = num_classes, output_stride
        dim, self.decoder = _decoder(config)
        self.queries = OutputQueries(2, config.num_bands, config.max_freq, dim)
        channels = input_spec["shape"][2]
        self.context = query_context  # pixels around the block that its query also carries
        window = output_stride + 2 * query_context
        self.pixel_queries = nn.Linear(channels * window**2, dim) if query_pixels else None
        self.output_norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, num_classes * output_stride**2)  # the output adapter

    def forward(self, x: torch.Tensor, output_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """x: B H W C -> logits B H' W' K, (H', W') = output_shape (default: the input's H W)."""
        height, width = output_shape or x.shape[1:3]
        s = self.stride
        if height % s or width % s:
            raise UserError(f"an output of {height}x{width} is not a whole number of {s}x{s} blocks "
                            f"(task.output_stride={s}); ask for a multiple of {s}")
        latents, _ = self.encode(x)
        queries = self.queries.grid((height // s, width // s), x.device)  # Q D_q, the same for every sample
        if self.pixel_queries is not None:
            pixels = x if (height, width) == tuple(x.shape[1:3]) else F.interpolate(
                x.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
            blocks = self.query_windows(pixels)  # B Q (window pixels)
            queries = queries + self.pixel_queries(blocks)
        decoded = self.decoder(queries, latents, self.config.decoder_chunk)  # B Q D_q
        logits = self.output(self.output_norm(decoded))  # B Q (s s K)
        return rearrange(logits, "b (h w) (s1 s2 k) -> b (h s1) (w s2) k", h=height // s, s1=s, s2=s)

    def query_windows(self, pixels: torch.Tensor) -> torch.Tensor:
        """B H W C -> B Q (pixels): each query's s x s block ((s s C), as before context existed), or
        with `context` pixels around it ((C w w), edges replicated), so that a query sees the texture
        and edges next to its block."""
        s, m = self.stride, self.context
        if not m:
            return rearrange(pixels, "b (h s1) (w s2) c -> b (h w) (s1 s2 c)", s1=s, s2=s)
        padded = F.pad(pixels.permute(0, 3, 1, 2), (m, m, m, m), mode="replicate")
        return F.unfold(padded, kernel_size=s + 2 * m, stride=s).transpose(1, 2)  # B Q (C w w)


class MaskedPerceiver(PerceiverEncoder):
    def __init__(self, config, input_spec: dict):
        if input_spec["kind"] != "image":
            raise UserError(f"task.name=masked_image needs images; this dataset holds {input_spec['kind']}")
        if config.conv_stem:
            raise UserError("task.name=masked_image masks patches of pixels, but model.conv_stem mixes neighbouring "
                            "pixels across them (a masked patch would leak into visible ones): set model.conv_stem=0")
        if config.permute_pixels:
            raise UserError("task.name=masked_image decodes patches at their grid positions; model.permute_pixels "
                            "scrambles them: set model.permute_pixels=false")
        super().__init__(config, input_spec)
        channels = input_spec["shape"][2]
        self.patch = config.patch_size
        dim, self.decoder = _decoder(config)
        self.queries = OutputQueries(2, config.num_bands, config.max_freq, dim, learned=True)  # + mask token
        self.output_norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, self.patch**2 * channels)  # a patch's pixel values

    def forward(self, x: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """x: B H W C; visible, masked: B V and B Q indices into the patch grid (row-major).
        Returns the predicted pixels of the masked patches: B Q (p p C)."""
        tokens, pe, _ = self.adapter(x)  # B M C_x, positions of the whole grid
        pe = pe.dense() if isinstance(pe, SeparablePositions) else pe  # M C_pe
        take = lambda t, index: torch.gather(t, 1, index[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        seen = take(tokens, visible)  # B V C_x
        seen_pe = pe[visible] if pe.dim() == 2 else take(pe, visible)  # B V C_pe: per sample now
        latents, _ = self.encode_tokens(seen, seen_pe)
        grid = self.adapter.grid(x)
        positions = grid_positions(grid, x.device)[masked]  # B Q 2
        decoded = self.decoder(self.queries.at(positions), latents, self.config.decoder_chunk)
        return self.output(self.output_norm(decoded))

"""FLOPs of one Perceiver forward pass, counted from the model's shapes (matmuls only: 2 per
multiply-add; norms, softmax and activations are a few percent and left out, as in MFU practice).

`executed` counts what this implementation runs: the position part of the key/value projection
once per batch when positions are shared (images, sequences), per axis on a Fourier grid (H + W rows
instead of H * W; the broadcast sum is not a matmul), and a shared cross-attend's keys and values
once per forward. `nominal` counts the paper's math with [x; pe] projected per sample at every
cross-attend, which is what a straightforward implementation (e.g. lucidrains') executes.
Where a cross-attend reads an image grid in its own channels (grid_attention.py: grids of 256+
tokens of fewer channels than a head's width), `executed` counts that path's products instead: no
key/value projection, and per (latent, token, head) for the scores and as many for the output,
C + 2 multiply-adds on a CPU or a token's C + 2 + H + W features (padded to 8) on a GPU, not d.
A training step is counted as 3x the forward (backward: gradients for inputs and for weights).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.attention import reads_grid_as_features
from ..model.grid_attention import feature_width


@dataclass
class Flops:
    executed: float  # per sample, forward
    nominal: float  # per sample, forward

    def train(self) -> float:
        return 3 * self.executed


def _mlp(tokens: int, dim: int, widening: int, geglu: bool) -> float:
    hidden = widening * dim
    return tokens * dim * hidden * (2 if geglu else 1) + tokens * hidden * dim


def forward_flops(model, batch: int, device_type: str = "cpu") -> Flops:
    """Per-sample forward FLOPs of a built Perceiver at its adapter's input size, on this kind of
    device (which decides whether an image grid is read in its channels)."""
    config = model.config
    adapter = model.adapter
    n = model.latents.shape[0]
    d = config.latent_dim
    geglu = config.activation == "geglu"
    cross = model.cross_blocks[0].attention
    inner_c = cross.heads * cross.head_dim
    latent_attention = model.latent_blocks[0].attentions[0]
    inner_l = latent_attention.to_qkv.out_features // 3
    tokens = _tokens(model)
    c_x, c_pe = adapter.x_channels, adapter.pe_channels
    pe_shared = model.input_spec["kind"] != "points"
    # a Fourier grid of 2+ axes is projected per axis (SeparablePositions): H + W rows of one axis' channels
    grid = getattr(adapter, "grid_shape", ())
    separable = pe_shared and config.position_encoding == "fourier" and len(grid) > 1
    position_rows = sum(grid) if separable else tokens
    c_axis = c_pe // len(grid) if separable else c_pe

    stem = 0.0
    if getattr(adapter, "stem", None) is not None:
        conv = adapter.stem[0]
        height, width = model.input_spec["shape"][:2]
        stem = height * width * conv.in_channels * conv.out_channels * 9

    in_channels = (separable and len(grid) == 2 and getattr(adapter, "permutation", None) is None
                   and cross.reads_grid_in_channels(c_x, tokens))
    # what a score and a read multiply per (latent, token, head): on a GPU each token's features, on a
    # CPU its c_x + 2 channels (x, its mean, the constant 1 that carries the biases) and a few
    # multiply-adds by the positions that torch's FLOP counter does not count either
    read_width = feature_width(c_x + 2, *grid) if in_channels and reads_grid_as_features(device_type) else c_x + 2

    def cross_attend_macs(project: bool, nominal: bool) -> float:
        macs = n * d * inner_c + n * inner_c * d + _mlp(n, d, config.widening_factor, geglu)  # q, out, MLP
        if in_channels and not nominal:
            # q -> (q W_k, q R_k, q C_k); the scores and the reads; the output from the reads
            macs += 2 * n * (c_x + 2 + sum(grid)) * inner_c + 2 * n * tokens * read_width * cross.heads
            if project:  # only the per-axis position tables
                macs += position_rows * c_axis * 2 * inner_c / batch
            return macs
        macs += 2 * n * tokens * inner_c
        if project:
            if nominal:
                macs += tokens * (c_x + c_pe) * 2 * inner_c
            else:  # [x, mean] per sample; the position part once per batch when it is shared
                macs += tokens * (c_x + 1) * 2 * inner_c + position_rows * c_axis * 2 * inner_c / (batch if pe_shared else 1)
        return macs

    latent_layer = n * d * 3 * inner_l + 2 * n * n * inner_l + n * inner_l * d + _mlp(n, d, config.widening_factor, geglu)
    latent_macs = config.latent_blocks * latent_layer * config.cross_attends
    seen, executed, nominal = set(), stem, stem
    for index in model.cross_index:
        executed += cross_attend_macs(project=index not in seen, nominal=False)
        nominal += cross_attend_macs(project=True, nominal=True)
        seen.add(index)
    head = d * model.num_classes
    if config.output == "query":
        head += n * d * 2 * inner_c + d * inner_c + 2 * n * inner_c + inner_c * d + _mlp(1, d, config.widening_factor, geglu)
    return Flops(executed=2 * (executed + latent_macs + head), nominal=2 * (nominal + latent_macs + head))


def _tokens(model) -> int:
    spec = model.input_spec
    if spec["kind"] == "points":
        return int(spec["shape"][0])
    size = 1
    for side in model.adapter.grid_shape:
        size *= side
    return size

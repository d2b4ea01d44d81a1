"""Attention blocks of the Perceiver: cross-attention (latents <- input) and self-attention (latents).

Attention runs through torch's fused `scaled_dot_product_attention`; the explicit path computes
softmax(q k^T / sqrt(d)) v with the weights in memory, when they are asked for (attention maps) and
on a GPU for heads too wide for its fused kernels (see `explicit_is_faster`).
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .grid_attention import GridInput, grid_attention
from .grid_projection import GridKeysValues
from .position import SeparablePositions


class _TokenLinear(torch.autograd.Function):
    """x @ w^T + b for many tokens with few channels (B M C, C ~ 4), as batched matmuls.

    A plain (B*M x C) @ (C x out) matmul, and above all its weight gradient (out x B*M) @ (B*M x C),
    runs up to 10x slower on CPU BLAS than the same products split per sample (measured: 262 ms vs
    19 ms for the weight gradient of a 128 x 1024-pixel batch)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        w = weight.to(x.dtype).t().expand(x.shape[0], -1, -1)  # B C out
        return torch.baddbmm(bias.to(x.dtype), x, w)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight.to(grad.dtype).expand(x.shape[0], -1, -1)) if ctx.needs_input_grad[0] else None
        # (C x M) @ (M x out), then transposed: 15x faster than (out x M) @ (M x C) for M = 224^2
        # tokens, where BLAS handles the reverse orientation's tiny output badly (663 ms vs 43 ms)
        grad_w = torch.bmm(x.transpose(1, 2).to(grad.dtype), grad).sum(0).t().to(weight.dtype)  # out C
        grad_b = grad.sum((0, 1)).to(weight.dtype)
        return grad_x, grad_w, grad_b


class InputProjection(nn.Module):
    """Linear(LayerNorm([x; pe])) without building the concatenation.

    The parameters are exactly those of a LayerNorm + Linear over C = C_x + C_pe channels, but the
    product is split: W [x; pe] = W_x x + W_pe pe. The position part is computed once per batch
    (pe is shared by all samples) and the input part costs only C_x channels per token. The
    LayerNorm only contributes per-token scalars (mean and variance over the C channels), so the
    split is exact:  Linear(LN(z)) = rstd * (W' z - mean * W' 1) + (W beta + b),  W' = W diag(gamma).
    """

    def __init__(self, x_channels: int, pe_channels: int, out_features: int):
        super().__init__()
        self.x_channels, self.pe_channels = x_channels, pe_channels
        self.norm = nn.LayerNorm(x_channels + pe_channels)
        self.proj = nn.Linear(x_channels + pe_channels, out_features)

    def reference(self, x: torch.Tensor, pe) -> torch.Tensor:
        """The plain computation on the concatenation (for tests and as documentation)."""
        pe = pe.dense() if isinstance(pe, SeparablePositions) else pe
        pe = pe.expand(x.shape[0], *pe.shape[-2:]) if pe.dim() == 2 else pe
        return self.proj(self.norm(torch.cat([x, pe], dim=-1)))

    def _parts(self, x: torch.Tensor, pe, per_axis: bool = False):
        """The small pieces the keys/values are made of: x_aug (B M C_x+1), w_aug (out C_x+1), bias
        (out), rstd (B M 1) and the projected positions (M out; with per_axis, a list of per-axis tables)."""
        channels = self.x_channels + self.pe_channels
        w = self.proj.weight * self.norm.weight  # W' = W diag(gamma): out C
        w_x, w_pe = w[:, : self.x_channels], w[:, self.x_channels :]
        bias = self.proj.weight @ self.norm.bias + self.proj.bias  # out

        if isinstance(pe, SeparablePositions):  # a grid: the position part costs H + W rows, not H * W
            pe_sum, pe_sq, pe_proj = pe.project(w_pe, per_axis=per_axis)
        else:
            pef = pe.float()
            pe_sum, pe_sq, pe_proj = pef.sum(-1), pef.square().sum(-1), F.linear(pe, w_pe)
        xf = x.float()  # statistics in fp32, also under autocast
        mean = (xf.sum(-1) + pe_sum) / channels  # B M
        sq_mean = (xf.square().sum(-1) + pe_sq) / channels
        rstd = torch.rsqrt((sq_mean - mean.square()).clamp_min(0) + self.norm.eps)[..., None]  # B M 1

        # rstd * (W'_x x - mean W'1) + b is one small matmul: the per-token scalars ride along as an
        # extra input channel ([x, mean] @ [W'_x, -W'1]^T), scaled by rstd before the product.
        x_aug = torch.cat([x, mean[..., None].to(x.dtype)], dim=-1) * rstd.to(x.dtype)  # B M C_x+1
        w_aug = torch.cat([w_x, -w.sum(dim=1, keepdim=True)], dim=1)  # out C_x+1
        return x_aug, w_aug, bias, rstd, pe_proj

    def forward(self, x: torch.Tensor, pe: torch.Tensor | None) -> torch.Tensor:
        # x: B M C_x, pe: M C_pe (shared) or B M C_pe (per sample, e.g. point coordinates)
        if pe is None:  # nothing to split (e.g. the Perceiver IO decoder reading the latents)
            return self.proj(self.norm(x))
        x_aug, w_aug, bias, rstd, pe_proj = self._parts(x, pe)
        out = _TokenLinear.apply(x_aug, w_aug, bias)  # B M out
        # + rstd * (W'_pe pe): the position part is projected once per batch when shared
        return torch.addcmul(out, rstd.to(out.dtype), pe_proj.to(out.dtype))

    def grid_input(self, x: torch.Tensor, pe: SeparablePositions, as_features: bool = False) -> GridInput:
        """The pieces of an image grid's keys/values, for attention that never forms them
        (see grid_attention.py)."""
        x_aug, w_aug, bias, rstd, (row_table, col_table) = self._parts(x, pe, per_axis=True)
        return GridInput.from_parts(x_aug, w_aug, bias, rstd, row_table, col_table, as_features)

    def grid_keys_values(self, x: torch.Tensor, pe: SeparablePositions, heads: int) -> GridKeysValues:
        """The same projection (as keys and values of `heads` heads) for an image grid, whose every
        use has its own backward (see grid_projection.py)."""
        x_aug, w_aug, bias, rstd, (row_table, col_table) = self._parts(x, pe, per_axis=True)
        return GridKeysValues(x_aug, w_aug, bias, rstd, row_table, col_table, heads)


# grids smaller than this keep keys and values (see CrossAttention.reads_grid_in_channels)
MIN_GRID_TOKENS = 256


def uses_grid_projection(x: torch.Tensor, pe) -> bool:
    """An unpermuted 2D grid: its keys/values are made of per-axis pieces (grid_attention.py,
    grid_projection.py)."""
    return isinstance(pe, SeparablePositions) and pe.order is None and len(pe.grid) == 2


def reads_grid_as_features(device_type: str) -> bool:
    """How a grid is read in its channels (grid_attention.py): on a GPU as two tensor-core matmuls
    over each token's C+1 + H + W features (H100, bf16, ImageNet's shared cross-attend read 7 times:
    49.5 ms, against 127.8 ms for the passes of C + 5 multiply-adds and 120.2 ms for plain keys and
    values); on a CPU as those passes (224^2, fp32: 173 ms against 717 ms for the features)."""
    return device_type == "cuda"


class MLP(nn.Module):
    """LayerNorm -> Linear -> GELU (or GEGLU) -> Linear, widening the channels by `widening`."""

    def __init__(self, dim: int, widening: int, activation: str, dropout: float):
        super().__init__()
        hidden = dim * widening
        self.norm = nn.LayerNorm(dim)
        self.geglu = activation == "geglu"
        self.fc1 = nn.Linear(dim, hidden * 2 if self.geglu else hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(self.norm(x))
        if self.geglu:
            h, gate = h.chunk(2, dim=-1)
            h = h * F.gelu(gate)
        else:
            h = F.gelu(h)
        return self.dropout(self.fc2(h))


def explicit_is_faster(q: torch.Tensor) -> bool:
    """On CUDA, heads wider than 256 channels have no flash kernel, and the memory-efficient kernel
    that SDPA falls back to runs them 2-6x slower than two cuBLAS products and a softmax (H100, bf16,
    forward + backward: 107 vs 19 ms for 16 x 512 latents x 50,176 pixels x 1,024 channels, 12 vs
    5.8 ms at 16 x 96 x 50,176 x 384). The price is the B H N M weights in memory, which a GPU has."""
    return q.is_cuda and q.shape[-1] > 256


def attend(q, k, v, mask, dropout_p: float, need_weights: bool):
    """q: B H N d, k/v: B H M d, mask: B M (True = real token) or None -> (B H N d, weights or None)."""
    attn_mask = None if mask is None else mask[:, None, None, :]
    if not need_weights and not explicit_is_faster(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p), None
    out, weights = explicit_attention(q, k, v, attn_mask, dropout_p)
    return out, weights if need_weights else None


def explicit_attention(q, k, v, attn_mask, dropout_p: float):
    """softmax(q k^T / sqrt(d)) v with the weights materialised, all in q's dtype: under autocast the
    softmax would widen the B H N M scores to fp32 (twice the memory and time) for nothing, since it
    accumulates in fp32 anyway."""
    k, v = k.to(q.dtype), v.to(q.dtype)
    with torch.autocast(q.device.type, enabled=False):
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # B H N M
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        out = (F.dropout(weights, dropout_p) if dropout_p else weights) @ v
    return out, weights


class CrossAttention(nn.Module):
    """Latents (queries) attend to the input (keys/values); LayerNorm on both sides (paper Sec. 2)."""

    def __init__(self, latent_dim, x_channels, pe_channels, heads, head_dim, dropout, attention_dropout):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.latent_norm = nn.LayerNorm(latent_dim)
        self.to_q = nn.Linear(latent_dim, inner, bias=False)
        self.to_kv = InputProjection(x_channels, pe_channels, 2 * inner)
        self.to_out = nn.Linear(inner, latent_dim)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def keys_values(self, x, pe, mask=None, need_weights: bool = False):
        """The input's keys and values, projected once: a function that gives them (B H M d) to
        each cross-attend reading this input; for an image grid, the GridInput that the attention
        reads instead (grid_attention.py), unless the weights themselves are needed (attention maps,
        a padding mask)."""
        grid = uses_grid_projection(x, pe)
        if grid and not (need_weights or mask is not None) and self.reads_grid_in_channels(x.shape[-1], x.shape[1]):
            return self.to_kv.grid_input(x, pe, as_features=reads_grid_as_features(x.device.type))
        if grid and not x.is_cuda:  # on a GPU this per-use backward was slower than the plain path (412 vs 262 ms)
            return self.to_kv.grid_keys_values(x, pe, self.heads).for_use
        k, v = self.to_kv(x, pe).chunk(2, dim=-1)
        split = lambda t: rearrange(t, "b m (h d) -> b h m d", h=self.heads)  # noqa: E731
        k, v = split(k), split(v)
        return lambda: (k, v)

    def reads_grid_in_channels(self, channels: int, tokens: int) -> bool:
        """Reading a grid in its own channels costs ~C + 5 operations per (latent, token, head)
        against 2 d for the dot products with keys and values: it wins while C (+1 for the mean) < d,
        on grids large enough to repay its extra small operations (a 2-core CPU's training step,
        16 tokens: 8 % slower; 256 tokens: the same at d = 64, 5-7 % faster at d = 128-256;
        224^2: 8x lucidrains instead of 2x)."""
        return channels + 1 < self.head_dim and tokens >= MIN_GRID_TOKENS

    def forward(self, latents, keys_values, mask=None, need_weights=False):
        q = rearrange(self.to_q(self.latent_norm(latents)), "b n (h d) -> b h n d", h=self.heads)
        dropout_p = self.attention_dropout if self.training else 0.0
        if isinstance(keys_values, GridInput):
            out, weights = grid_attention(q, keys_values, dropout_p), None
        else:
            k, v = keys_values()
            k, v = k.to(q.dtype), v.to(q.dtype)
            out, weights = attend(q, k, v, mask, dropout_p, need_weights)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.dropout(self.to_out(out)), weights


class SelfAttention(nn.Module):
    """Multi-head self-attention among the latents."""

    def __init__(self, dim, heads, head_dim, dropout, attention_dropout):
        super().__init__()
        self.heads = heads
        inner = heads * head_dim
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def forward(self, x):
        q, k, v = rearrange(self.to_qkv(self.norm(x)), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        dropout_p = self.attention_dropout if self.training else 0.0
        out, _ = attend(q, k, v, None, dropout_p, need_weights=False)
        return self.dropout(self.to_out(rearrange(out, "b h n d -> b n (h d)")))


class CrossAttendBlock(nn.Module):
    """One cross-attend: latents += CrossAttention(latents, input); latents += MLP(latents)."""

    def __init__(self, latent_dim, x_channels, pe_channels, heads, head_dim, widening, activation, dropout, attn_dropout):
        super().__init__()
        self.attention = CrossAttention(latent_dim, x_channels, pe_channels, heads, head_dim, dropout, attn_dropout)
        self.mlp = MLP(latent_dim, widening, activation, dropout)

    def forward(self, latents, kv, mask=None, need_weights=False):
        update, weights = self.attention(latents, kv, mask, need_weights)
        latents = latents + update
        return latents + self.mlp(latents), weights


class LatentTransformer(nn.Module):
    """`depth` self-attention blocks over the latents."""

    def __init__(self, dim, depth, heads, head_dim, widening, activation, dropout, attn_dropout):
        super().__init__()
        self.attentions = nn.ModuleList(SelfAttention(dim, heads, head_dim, dropout, attn_dropout) for _ in range(depth))
        self.mlps = nn.ModuleList(MLP(dim, widening, activation, dropout) for _ in range(depth))

    def forward(self, x):
        for attention, mlp in zip(self.attentions, self.mlps):
            x = x + attention(x)
            x = x + mlp(x)
        return x

"""Cross-attention to an image grid, computed in the input's own few channels.

With the split projection (see InputProjection and grid_projection.py), the key and value of grid
token t = (i, j) are

    k_t = W_k x_t + b_k + r_t (R_k[i] + C_k[j])        (v_t alike, with W_v, b_v, R_v, C_v)

where x_t (x_aug) has a few channels (the pixel and its LayerNorm mean, scaled), r_t is the token's
LayerNorm scale and R, C are the position features projected per axis. A latent's query q (already
divided by sqrt(d)) scores token t as

    q . k_t = (q W_k) . x_t + r_t (q . R_k[i] + q . C_k[j]) + q . b_k

where the last term is the same for every token. With a = softmax(scores) the latent's output is

    sum_t a_t v_t = W_v (sum_t a_t x_t) + b_v (sum_t a_t) + R_v^T (sum_j a_ij r_ij)_i + C_v^T (sum_i a_ij r_ij)_j

(the biases ride along as one more channel of x, constant 1; sum_t a_t is 1 but for attention dropout).

So nothing D channels wide is formed per token: a score costs a few multiply-adds instead of a
D-long dot product, and keys, values and their gradients (B x M x 2D each) never exist. It is the
same attention, exactly (up to float rounding); the weights a (B x H x N x M) are what is stored.

It runs in one of two forms (attention.reads_grid_as_features picks by device):
- on a CPU, as a few passes over the weights with C + 5 multiply-adds per pair (_GridAttentionWeights);
- on a GPU, as plain attention over each token's K = C+1 + H + W features [x_t, r_t e_i, r_t e_j]
  (e: one-hot of its row and column) with the query [q W_k, q R_k, q C_k]: two K-wide matmuls that
  tensor cores run far faster than those passes (token_features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .grid_projection import or_zeros


@dataclass
class GridInput:
    """The small pieces the keys/values of an image grid are made of (InputProjection._parts), with
    the bias riding along as a channel of constant 1: b_v then counts sum_t k_t, which attention
    dropout leaves different from 1 (and q . b_k, which the softmax would drop anyway, is kept)."""

    x: torch.Tensor  # B M C+1: x_aug, then 1
    w: torch.Tensor  # 2HD C+1: keys, then values; w_aug, then the bias
    rstd: torch.Tensor  # B M 1
    row_table: torch.Tensor  # Hg 2HD
    col_table: torch.Tensor  # Wg 2HD
    features: torch.Tensor | None = None  # B M K: each token as [x_t, r_t e_i, r_t e_j] (see token_features)

    @classmethod
    def from_parts(cls, x_aug, w_aug, bias, rstd, row_table, col_table, as_features=False) -> GridInput:
        """Once per input, however many cross-attends read it."""
        x = torch.cat([x_aug, x_aug.new_ones(*x_aug.shape[:-1], 1)], dim=-1)
        features = token_features(x, rstd, len(row_table), len(col_table)) if as_features else None
        return cls(x, torch.cat([w_aug, bias[:, None]], dim=1), rstd, row_table, col_table, features)


def token_features(x: torch.Tensor, rstd: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Token t = (i, j) as the K = C+1 + Hg + Wg features [x_t, r_t e_i, r_t e_j] (e: one-hot of its
    row and column), zero-padded to a multiple of 8 for tensor cores: B M K, in the autocast dtype.
    A query [q W_k, q R_k, q C_k] scores it exactly as q scores k_t, and the weights' sum of these
    features is what the output is read from, so the attention becomes two K-wide matmuls."""
    batch, tokens, channels = x.shape
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    scale = rstd.view(batch, height, width, 1).to(dtype)
    parts = [
        x.to(dtype).view(batch, height, width, channels),
        scale * torch.eye(height, dtype=dtype, device=x.device)[:, None, :],  # B Hg Wg Hg
        scale * torch.eye(width, dtype=dtype, device=x.device),  # B Hg Wg Wg
    ]
    if padding := feature_width(channels, height, width) - (channels + height + width):
        parts.append(x.new_zeros(batch, height, width, padding, dtype=dtype))
    return torch.cat(parts, dim=-1).view(batch, tokens, -1)


def feature_width(channels: int, height: int, width: int) -> int:
    """K of token_features: C+1 + H + W, rounded up to a multiple of 8."""
    return -(-(channels + height + width) // 8) * 8


def grid_attention(q: torch.Tensor, grid: GridInput, dropout_p: float = 0.0) -> torch.Tensor:
    """dropout(softmax(q k^T / sqrt(d))) v over the grid's keys/values, without forming them.
    q: B H N d -> B H N d."""
    heads, head_dim, dtype = q.shape[1], q.shape[-1], q.dtype
    inner = heads * head_dim
    per_head = lambda t: t.to(dtype).view(*t.shape[:-1], heads, head_dim)  # noqa: E731  (... 2HD) -> (... H d)
    w = grid.w.t()  # C+1 2HD
    w_k, w_v = per_head(w[:, :inner]), per_head(w[:, inner:])  # C H d
    rows_k, rows_v = per_head(grid.row_table[:, :inner]), per_head(grid.row_table[:, inner:])  # Hg H d
    cols_k, cols_v = per_head(grid.col_table[:, :inner]), per_head(grid.col_table[:, inner:])  # Wg H d

    q = q * head_dim**-0.5
    query_x = torch.einsum("bhnd,chd->bhnc", q, w_k)
    query_rows = torch.einsum("bhnd,ihd->bhni", q, rows_k)
    query_cols = torch.einsum("bhnd,jhd->bhnj", q, cols_k)
    if grid.features is not None:
        read_x, read_rows, read_cols = _attend_features(query_x, query_rows, query_cols, grid.features, dropout_p)
    else:
        with torch.autocast(q.device.type, enabled=False):  # the B H N M weights stay in q's dtype
            read_x, read_rows, read_cols = _GridAttentionWeights.apply(
                query_x, query_rows, query_cols, grid.x.to(dtype), grid.rstd.to(dtype).view(q.shape[0], -1), dropout_p
            )
    return (
        torch.einsum("bhnc,chd->bhnd", read_x, w_v)
        + torch.einsum("bhni,ihd->bhnd", read_rows, rows_v)
        + torch.einsum("bhnj,jhd->bhnd", read_cols, cols_v)
    )


def _attend_features(query_x, query_rows, query_cols, features, dropout_p: float):
    """The weights' reads (as _GridAttentionWeights gives them) by plain attention over the tokens'
    features (token_features): every head's latents score the same tokens, so they are one batch of
    H N queries."""
    batch, heads, latents, channels = query_x.shape
    height, width = query_rows.shape[-1], query_cols.shape[-1]
    query = torch.cat([query_x, query_rows, query_cols], dim=-1).to(features.dtype)
    query = F.pad(query, (0, features.shape[-1] - query.shape[-1])).view(batch, heads * latents, -1)
    with torch.autocast(query.device.type, enabled=False):  # the B H N M weights stay in this dtype
        weights = (query @ features.transpose(1, 2)).softmax(dim=-1)  # B HN M
        read = (F.dropout(weights, dropout_p) if dropout_p else weights) @ features  # B HN K
    read = read.view(batch, heads, latents, -1)
    return read[..., :channels], read[..., channels : channels + height], read[..., channels + height : channels + height + width]


class _GridAttentionWeights(torch.autograd.Function):
    """The part that touches every (latent, token) pair. With the scores

        s[n, (i, j)] = query_x[n] . x[(i, j)] + rstd[(i, j)] (query_rows[n, i] + query_cols[n, j])

    and a = softmax_t(s) (k = dropout(a) while training with attention dropout, else a), it returns
    what the output is read from: k @ x (B H N C) and the row and column sums of k * rstd (B H N Hg,
    B H N Wg). a (and k) are the only large tensors kept for the backward.
    """

    @staticmethod
    def forward(ctx, query_x, query_rows, query_cols, x, rstd, dropout_p: float):
        weights = _scores(query_x, query_rows, query_cols, x, rstd).softmax(dim=-1)  # B H N M
        kept = torch.nn.functional.dropout(weights, dropout_p) if dropout_p else weights
        read_x = kept @ x[:, None]
        read_rows, read_cols = _row_col_sums(kept, rstd, query_rows.shape[-1])
        ctx.dropout_p = dropout_p
        ctx.save_for_backward(query_x, query_rows, query_cols, x, rstd, weights, kept if dropout_p else None,
                              read_x, read_rows, read_cols)
        return read_x, read_rows, read_cols

    @staticmethod
    def backward(ctx, grad_x_read, grad_rows_read, grad_cols_read):
        query_x, query_rows, query_cols, x, rstd, weights, kept, read_x, read_rows, read_cols = ctx.saved_tensors
        kept = weights if kept is None else kept
        grad_x_read = or_zeros(grad_x_read, read_x)
        grad_rows_read, grad_cols_read = or_zeros(grad_rows_read, read_rows), or_zeros(grad_cols_read, read_cols)
        # the gradient of the weights has the scores' form, with the output gradients as "queries"
        grad = _scores(grad_x_read, grad_rows_read, grad_cols_read, x, rstd)  # B H N M, of k
        if ctx.dropout_p:  # through the dropout: where k kept a weight, scaled as k was (a = 0 needs no care)
            grad.mul_(kept != 0).div_(1 - ctx.dropout_p)
        # softmax backward: a * (g - sum_t a_t g_t), where sum_t a_t g_t = sum_t k_t dk_t is read off the outputs
        expected = ((read_x * grad_x_read).sum(-1) + (read_rows * grad_rows_read).sum(-1)
                    + (read_cols * grad_cols_read).sum(-1))
        grad_scores = grad.sub_(expected[..., None]).mul_(weights)

        grad_query_x = grad_scores @ x[:, None]
        grad_query_rows, grad_query_cols = _row_col_sums(grad_scores, rstd, query_rows.shape[-1])
        grad_input = grad_rstd = None
        if ctx.needs_input_grad[3]:  # only when something learned made the tokens (e.g. a conv stem)
            grad_input = (grad_scores.transpose(-1, -2) @ query_x + kept.transpose(-1, -2) @ grad_x_read).sum(1)
        if ctx.needs_input_grad[4]:
            height, width = query_rows.shape[-1], query_cols.shape[-1]
            as_grid = lambda t: t.view(*t.shape[:-1], height, width)  # noqa: E731  (B H N M) -> (B H N Hg Wg)
            scores_g, weights_g = as_grid(grad_scores), as_grid(kept)
            grad_rstd = (
                torch.einsum("bhnij,bhni->bij", scores_g, query_rows)
                + torch.einsum("bhnij,bhnj->bij", scores_g, query_cols)
                + torch.einsum("bhnij,bhni->bij", weights_g, grad_rows_read)
                + torch.einsum("bhnij,bhnj->bij", weights_g, grad_cols_read)
            ).reshape(rstd.shape)
        return grad_query_x, grad_query_rows, grad_query_cols, grad_input, grad_rstd, None


def _scores(query_x, query_rows, query_cols, x, rstd) -> torch.Tensor:
    """query_x . x_t + rstd_t (query_rows[i] + query_cols[j]) for every token t = (i, j): B H N M."""
    batch, heads, latents, _ = query_x.shape
    height, width = query_rows.shape[-1], query_cols.shape[-1]
    scores = query_x @ x[:, None].transpose(-1, -2)  # B H N M: a product over the C channels only
    grid = scores.view(batch, heads, latents, height, width)
    scale = rstd.view(batch, 1, 1, height, width)
    grid.addcmul_(scale, query_rows[..., None]).addcmul_(scale, query_cols[..., None, :])
    return scores


def _row_col_sums(weights: torch.Tensor, rstd: torch.Tensor, height: int):
    """(sum_j w_ij rstd_ij)_i and (sum_i w_ij rstd_ij)_j of B H N M weights."""
    batch, heads, latents, tokens = weights.shape
    scaled = weights.view(batch, heads, latents, height, tokens // height) * rstd.view(batch, 1, 1, height, -1)
    return scaled.sum(-1), scaled.sum(-2)


"""Keys and values of an image grid, projected once and read by several cross-attends, with a
backward pass that never holds the key/value gradients of more than one cross-attend.

With the split projection (see InputProjection) the keys/values of token (i, j) are

    kv[b, i, j] = x_aug[b, i, j] @ W_aug^T + bias + rstd[b, i, j] * (T_row[i] + T_col[j])

where x_aug has a few channels and T_row, T_col are the position tables projected per axis. Through
autograd, every cross-attend that reads kv adds its B x M x 2D gradient into one running sum before
the projection's backward runs (at 224^2 that sum, the newest term and the addition were 735 MB of
the 1,353 MB peak on a CPU). Here each use is its own autograd node whose backward turns its key and
value gradients into the gradients of the small inputs (x_aug, W_aug, bias, rstd, the two tables)
at once, a slab of grid rows at a time; autograd then sums only those. Nothing of size B x M x 2D is
stored beyond kv itself, which attention keeps for its backward anyway. CPUs only: on a GPU the
same math in torch ops was slower than the plain projection (benchmarks/RESULTS.md).

Most cross-attends never form kv at all (grid_attention.py reads the grid in its own channels); this
path serves those that need the attention weights themselves (maps, masks) and grids too
small or too wide for that.
"""

from __future__ import annotations

import torch

# elements per slab temporary (B x rows x W x head channels): ~4 MB in fp32
_SLAB_ELEMENTS = 1 << 20


def _row_slabs(batch: int, height: int, width: int, channels: int):
    rows = max(1, _SLAB_ELEMENTS // max(1, batch * width * channels))
    for start in range(0, height, rows):
        yield slice(start, min(height, start + rows))


class GridKeysValues:
    """The projected keys/values of one input, computed once without autograd (each use's own
    backward stands in for it); `for_use()` gives each cross-attend its own (k, v) of shape B H M d,
    connected to the projection's inputs. Only tensors cross the autograd.Function boundary, so
    torch.compile can trace it."""

    def __init__(self, x_aug, w_aug, bias, rstd, row_table, col_table, heads: int):
        self.inputs = (x_aug, w_aug, bias, rstd, row_table, col_table)
        self.heads = heads
        with torch.no_grad():
            self.kv = project_grid(*(t.detach() for t in self.inputs))  # B M 2D

    def for_use(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _GridProjection.apply(self.kv, self.heads, *self.inputs)


def project_grid(x_aug, w_aug, bias, rstd, row_table, col_table) -> torch.Tensor:
    """kv (B M 2D) in x_aug's dtype, a slab of grid rows at a time for the position part."""
    dtype = x_aug.dtype
    batch, tokens, _ = x_aug.shape
    height, width = row_table.shape[0], col_table.shape[0]
    kv = torch.baddbmm(bias.to(dtype), x_aug, w_aug.to(dtype).t().expand(batch, -1, -1))  # B M 2D
    grid, scale = kv.view(batch, height, width, -1), rstd.to(dtype).view(batch, height, width, 1)
    rows_t, cols_t = row_table.to(dtype), col_table.to(dtype)
    for rows in _row_slabs(batch, height, width, kv.shape[-1]):
        positions = rows_t[rows, None, :] + cols_t[None, :, :]  # rows W 2D, shared by the batch
        grid[:, rows].addcmul_(scale[:, rows], positions)
    return kv


class _GridProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kv, heads: int, x_aug, w_aug, bias, rstd, row_table, col_table):
        ctx.save_for_backward(x_aug, w_aug, rstd, row_table, col_table)
        ctx.heads, ctx.bias_dtype = heads, bias.dtype
        batch, tokens, out = kv.shape
        split = kv.view(batch, tokens, 2, heads, out // 2 // heads).permute(2, 0, 3, 1, 4)  # 2 B H M d
        return split[0], split[1]

    @staticmethod
    def backward(ctx, grad_k, grad_v):
        x_aug, w_aug, rstd, row_table, col_table = ctx.saved_tensors
        grads = _backward(grad_k, grad_v, ctx.heads, x_aug, w_aug, rstd, row_table, col_table)
        grad_x, grad_w, grad_bias, grad_rstd, grad_rows, grad_cols = grads
        return (None, None, grad_x.to(x_aug.dtype), grad_w.to(w_aug.dtype), grad_bias.to(ctx.bias_dtype),
                grad_rstd.view(rstd.shape).to(rstd.dtype), grad_rows.to(row_table.dtype), grad_cols.to(col_table.dtype))


def _backward(grad_k, grad_v, heads: int, x_aug, w_aug, rstd, row_table, col_table):
    """The six gradients, in the gradients' dtype, a head and a slab of grid rows at a time."""
    batch, tokens, channels = x_aug.shape
    height, width = row_table.shape[0], col_table.shape[0]
    head_dim = w_aug.shape[0] // 2 // heads
    dtype = grad_k.dtype if grad_k is not None else grad_v.dtype
    x_t = x_aug.to(dtype).transpose(1, 2)  # B C M
    w = w_aug.to(dtype)
    rows_t, cols_t = row_table.to(dtype), col_table.to(dtype)
    scale = rstd.to(dtype).view(batch, height, width, 1)

    grad_x = torch.zeros(batch, tokens, channels, dtype=dtype, device=x_aug.device)
    grad_w = torch.zeros(w_aug.shape, dtype=dtype, device=x_aug.device)
    grad_bias = torch.zeros(w_aug.shape[0], dtype=dtype, device=x_aug.device)
    grad_rstd = torch.zeros(batch, height, width, dtype=dtype, device=x_aug.device)
    grad_rows = torch.zeros(row_table.shape, dtype=dtype, device=x_aug.device)
    grad_cols = torch.zeros(col_table.shape, dtype=dtype, device=x_aug.device)
    for half, grad in enumerate((grad_k, grad_v)):
        if grad is None:
            continue
        for head in range(heads):
            g = grad[:, head]  # B M d
            cols = slice((half * heads + head) * head_dim, (half * heads + head + 1) * head_dim)
            grad_x.baddbmm_(g, w[cols].expand(batch, -1, -1))  # B M d @ d C
            grad_w[cols] = torch.bmm(x_t, g).sum(0).t()  # (B C M @ B M d) -> d C
            grad_bias[cols] = g.sum((0, 1))
            g_grid = g.reshape(batch, height, width, head_dim)
            for rows in _row_slabs(batch, height, width, head_dim):
                g_slab = g_grid[:, rows]
                positions = rows_t[rows, None, cols] + cols_t[None, :, cols]  # rows W d
                grad_rstd[:, rows] += (g_slab * positions).sum(-1)
                weighted = (g_slab * scale[:, rows]).sum(0)  # rows W d: summed over the batch
                grad_rows[rows, cols] = weighted.sum(1)
                grad_cols[:, cols] += weighted.sum(0)
    return grad_x, grad_w, grad_bias, grad_rstd, grad_rows, grad_cols


def or_zeros(grad, other):
    """A gradient autograd left out (its output unused) as zeros."""
    return grad if grad is not None else torch.zeros_like(other)

"""Triton kernels for the keys/values of an image grid on a GPU (see grid_projection.py for the math).

    kv[b, m, n] = sum_c x_aug[b, m, c] W_aug[n, c] + bias[n] + rstd[b, m] (T_row[i, n] + T_col[j, n])

for token m = (i, j). Torch ops would take several passes over B x M x 2D tensors for this, and
more for each cross-attend's backward; here the forward writes kv once and each use's backward reads
its key (or value) gradient once, turning it into the small gradients directly:

    grad_x[b, m, c]  = sum_n g W_aug[n, c]           grad_W[n, c] = sum_{b, m} g x_aug[b, m, c]
    grad_rstd[b, m]  = sum_n g (T_row + T_col)[m, n]  grad_bias[n] = sum_{b, m} g
    grad_T_row[i, n] = sum_{b, j} g rstd             grad_T_col[j, n] = sum_{b, i} g rstd

A program owns a block of tokens and of columns and loops over the batch, so the position tables
are read once per block and the column sums (W, bias, positions) are accumulated in registers.
Kernels are only called with CUDA tensors (tests run them through Triton's interpreter on a CPU).
They are wrapped as two custom operators (perceiver::grid_kv and perceiver::grid_kv_backward), which
torch.compile treats as opaque calls with known output shapes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# tile of tokens x columns per program, and warps per program (benchmarks/grid_kernels.py tries others);
# at 32 x 64 both kernels compile for sm_80 and sm_90 without register spills in bf16 (fp32: a few bytes)
BLOCK_M, BLOCK_N, NUM_WARPS = 32, 64, 4


def padded_channels(channels: int) -> int:
    """x_aug's few channels, padded to what tl.dot accepts (at least 16, a power of two)."""
    return max(16, triton.next_power_of_2(channels))


@triton.jit
def _position_tile(rows_ptr, cols_ptr, m, n, tile_ok, width, out):
    """(T_row[i] + T_col[j])[n] for the block's tokens m = (i, j), in fp32: the same for every sample."""
    i, j = m // width, m % width
    return (tl.load(rows_ptr + i[:, None] * out + n[None, :], mask=tile_ok, other=0.0).to(tl.float32)
            + tl.load(cols_ptr + j[:, None] * out + n[None, :], mask=tile_ok, other=0.0).to(tl.float32))


@triton.jit
def _forward_kernel(x_ptr, w_ptr, bias_ptr, rstd_ptr, rows_ptr, cols_ptr, kv_ptr,
                    batch, tokens, width, out, channels,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CP: tl.constexpr, EXACT: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.arange(0, CP)
    m_ok, n_ok, c_ok = m < tokens, n < out, c < channels
    tile_ok = m_ok[:, None] & n_ok[None, :]
    # the position part and the weights are the same for every sample: loaded once per program
    positions = _position_tile(rows_ptr, cols_ptr, m, n, tile_ok, width, out)
    w_t = tl.load(w_ptr + n[None, :] * channels + c[:, None], mask=c_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    for b in range(batch):
        row = b * tokens + m.to(tl.int64)  # 64-bit: B x M x 2D passes 2^31 at the ImageNet size from batch 21
        x = tl.load(x_ptr + row[:, None] * channels + c[None, :], mask=m_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row, mask=m_ok, other=0.0)
        if EXACT:  # fp32 keys/values: fp32 products
            kv = tl.dot(x, w_t, input_precision="ieee")
        else:  # stored in bf16: tf32 products are finer than that, and run on tensor cores
            kv = tl.dot(x, w_t, input_precision="tf32")
        kv += bias[None, :] + rstd[:, None] * positions
        tl.store(kv_ptr + row[:, None] * out + n[None, :], kv.to(kv_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _backward_kernel(g_ptr, g_batch, g_head, g_token, g_chan,
                     x_ptr, w_ptr, rstd_ptr, rows_ptr, cols_ptr,
                     gx_ptr, gw_ptr, gbias_ptr, grstd_ptr, gpos_ptr,
                     batch, tokens, width, out, channels, head_dim, half, column0,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CP: tl.constexpr, EXACT: tl.constexpr):
    """One half (keys or values) of one use: g is B x heads x M x head_dim with any strides; its
    column h * head_dim + e is column column0 + h * head_dim + e of kv."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    local = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # column within the half
    head, e = local // head_dim, local % head_dim
    n = column0 + local
    c = tl.arange(0, CP)
    m_ok, n_ok, c_ok = m < tokens, local < half, c < channels
    tile_ok = m_ok[:, None] & n_ok[None, :]
    positions = _position_tile(rows_ptr, cols_ptr, m, n, tile_ok, width, out)
    w = tl.load(w_ptr + n[:, None] * channels + c[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    g_offsets = head[None, :].to(tl.int64) * g_head + m[:, None].to(tl.int64) * g_token + e[None, :] * g_chan
    acc_w = tl.zeros((CP, BLOCK_N), dtype=tl.float32)
    acc_bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_pos = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g_sample = g_ptr  # advanced by whole samples: pointer arithmetic is 64-bit
    for b in range(batch):
        row = b * tokens + m.to(tl.int64)
        g = tl.load(g_sample + g_offsets, mask=tile_ok, other=0.0).to(tl.float32)
        g_sample += g_batch
        x = tl.load(x_ptr + row[:, None] * channels + c[None, :], mask=m_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row, mask=m_ok, other=0.0)
        # per-token sums over this block's columns; other column blocks add theirs
        if EXACT:  # fp32 gradients: fp32 products
            grad_x = tl.dot(g, w, input_precision="ieee")
            acc_w += tl.dot(tl.trans(x), g, input_precision="ieee")
        else:  # bf16 gradients: tf32 products (finer than bf16's), on tensor cores
            grad_x = tl.dot(g, w, input_precision="tf32")
            acc_w += tl.dot(tl.trans(x), g, input_precision="tf32")
        tl.atomic_add(gx_ptr + row[:, None] * CP + c[None, :], grad_x, mask=m_ok[:, None] & c_ok[None, :], sem="relaxed")
        tl.atomic_add(grstd_ptr + row, tl.sum(g * positions, axis=1), mask=m_ok, sem="relaxed")
        acc_bias += tl.sum(g, axis=0)
        acc_pos += g * rstd[:, None]
    tl.atomic_add(gw_ptr + n[None, :] * channels + c[:, None], acc_w, mask=c_ok[:, None] & n_ok[None, :], sem="relaxed")
    tl.atomic_add(gbias_ptr + n, acc_bias, mask=n_ok, sem="relaxed")
    tl.store(gpos_ptr + m[:, None] * out + n[None, :], acc_pos, mask=tile_ok)


def grid_forward(x_aug, w_aug, bias, rstd, row_table, col_table, dtype: torch.dtype) -> torch.Tensor:
    """kv (B M 2D) in `dtype`."""
    batch, tokens, channels = x_aug.shape
    out = w_aug.shape[0]
    kv = torch.empty(batch, tokens, out, dtype=dtype, device=x_aug.device)
    grid = (triton.cdiv(tokens, BLOCK_M), triton.cdiv(out, BLOCK_N))
    _forward_kernel[grid](x_aug.contiguous(), w_aug.contiguous(), bias.contiguous(), rstd.float().contiguous(),
                          row_table.contiguous(), col_table.contiguous(), kv,
                          batch, tokens, col_table.shape[0], out, channels,
                          BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CP=padded_channels(channels), EXACT=dtype == torch.float32,
                          num_warps=NUM_WARPS)
    return kv


class GridGradients:
    """fp32 accumulators for the small inputs' gradients, filled by one use's key and value halves."""

    def __init__(self, x_aug, w_aug, row_table, col_table):
        batch, tokens, channels = x_aug.shape
        out, device = w_aug.shape[0], x_aug.device
        self.x = torch.zeros(batch, tokens, padded_channels(channels), device=device)
        self.w = torch.zeros(out, channels, device=device)
        self.bias = torch.zeros(out, device=device)
        self.rstd = torch.zeros(batch, tokens, device=device)
        self.positions = torch.zeros(tokens, out, device=device)  # sum over the batch of g * rstd
        self.height, self.width = row_table.shape[0], col_table.shape[0]

    def add_half(self, grad, column0: int, x_aug, w_aug, rstd, row_table, col_table) -> None:
        """grad: B x heads x M x head_dim, the keys' (column0 = 0) or values' (column0 = D) gradient."""
        batch, heads, tokens, head_dim = grad.shape
        channels, out = x_aug.shape[-1], w_aug.shape[0]
        grid = (triton.cdiv(tokens, BLOCK_M), triton.cdiv(heads * head_dim, BLOCK_N))
        _backward_kernel[grid](grad, *grad.stride(),
                               x_aug.contiguous(), w_aug.contiguous(), rstd.float().contiguous(),
                               row_table.contiguous(), col_table.contiguous(),
                               self.x, self.w, self.bias, self.rstd, self.positions,
                               batch, tokens, self.width, out, channels, head_dim, heads * head_dim, column0,
                               BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CP=padded_channels(channels),
                               EXACT=grad.dtype == torch.float32, num_warps=NUM_WARPS)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.positions.view(self.height, self.width, -1)
        return grid.sum(1), grid.sum(0)


@torch.library.custom_op("perceiver::grid_kv", mutates_args=())
def grid_kv(x_aug: torch.Tensor, w_aug: torch.Tensor, bias: torch.Tensor, rstd: torch.Tensor,
            row_table: torch.Tensor, col_table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """kv (B M 2D) in `dtype`."""
    return grid_forward(x_aug, w_aug, bias, rstd, row_table, col_table, dtype)


@grid_kv.register_fake
def _grid_kv_shape(x_aug, w_aug, bias, rstd, row_table, col_table, dtype):
    return x_aug.new_empty((*x_aug.shape[:2], w_aug.shape[0]), dtype=dtype)


@torch.library.custom_op("perceiver::grid_kv_backward", mutates_args=())
def grid_kv_backward(grad_k: torch.Tensor, grad_v: torch.Tensor, x_aug: torch.Tensor, w_aug: torch.Tensor,
                     rstd: torch.Tensor, row_table: torch.Tensor, col_table: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One use's key and value gradients (B heads M head_dim each) -> fp32 gradients of x_aug (B M C),
    W_aug (2D C), bias (2D), rstd (B M) and the row and column tables (H 2D, W 2D)."""
    sums = GridGradients(x_aug, w_aug, row_table, col_table)
    sums.add_half(grad_k, 0, x_aug, w_aug, rstd, row_table, col_table)
    sums.add_half(grad_v, w_aug.shape[0] // 2, x_aug, w_aug, rstd, row_table, col_table)
    grad_rows, grad_cols = sums.tables()
    return sums.x[..., : x_aug.shape[-1]].contiguous(), sums.w, sums.bias, sums.rstd, grad_rows, grad_cols


@grid_kv_backward.register_fake
def _grid_kv_backward_shapes(grad_k, grad_v, x_aug, w_aug, rstd, row_table, col_table):
    batch, tokens, channels = x_aug.shape
    out = w_aug.shape[0]
    empty = lambda *shape: x_aug.new_empty(shape, dtype=torch.float32)  # noqa: E731
    return (empty(batch, tokens, channels), empty(out, channels), empty(out), empty(batch, tokens),
            empty(row_table.shape[0], out), empty(col_table.shape[0], out))

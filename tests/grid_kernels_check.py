"""Run by tests/test_grid_kernels.py in a fresh process with TRITON_INTERPRET=1 (Triton reads it at
import): the GPU kernels of the grid projection, interpreted on a CPU, against the CPU path's math.
Prints one JSON object of the largest relative errors."""

import json

import torch

from perceiver_cli.model import grid_kernels, grid_projection


def relative(a, b):
    return ((a.float() - b.float()).abs().max() / a.float().abs().max()).item()


def main():
    torch.manual_seed(0)
    batch, height, width, channels, heads, head_dim = 3, 5, 7, 4, 2, 24
    out = 2 * heads * head_dim
    x = torch.randn(batch, height * width, channels)
    w, bias = torch.randn(out, channels), torch.randn(out)
    rstd = torch.rand(batch, height * width, 1) + 0.5
    rows, cols = torch.randn(height, out), torch.randn(width, out)
    reference_kv = grid_projection.GridKeysValues(x, w, bias, rstd, rows, cols, heads).kv
    grad_k = torch.randn(batch, heads, height * width, head_dim)
    grad_v = torch.randn(batch, height * width, heads, head_dim).transpose(1, 2)  # strided, as attention may give it

    context = type("Context", (), {"saved_tensors": (x, w, rstd, rows, cols), "heads": heads})
    reference = grid_projection._GridProjection.backward(context, grad_k, grad_v)[2:]
    names = ["x_aug", "w_aug", "bias", "rstd", "row_table", "col_table"]
    errors = {"fp32 kv": relative(reference_kv, grid_kernels.grid_forward(x, w, bias, rstd, rows, cols, torch.float32))}
    for name, a, b in zip(names, reference, grid_projection._cuda_backward(grad_k, grad_v, x, w, rstd, rows, cols)):
        errors[f"fp32 grad {name}"] = relative(a, b)
    bf = torch.bfloat16  # under autocast: bf16 tables, gradients and keys/values
    errors["bf16 kv"] = relative(reference_kv, grid_kernels.grid_forward(x, w, bias, rstd, rows.to(bf), cols.to(bf), bf))
    bf16 = grid_projection._cuda_backward(grad_k.to(bf), grad_v.to(bf), x, w, rstd, rows.to(bf), cols.to(bf))
    for name, a, b in zip(names, reference, bf16):
        errors[f"bf16 grad {name}"] = relative(a, b)
    print(json.dumps(errors))


if __name__ == "__main__":
    main()

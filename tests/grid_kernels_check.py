"""Run by tests/test_grid_kernels.py in a fresh process with TRITON_INTERPRET=1 (Triton reads it at
import): the GPU kernels of the grid projection, interpreted on a CPU, against the CPU path's math.
Checks the custom operators with torch.library.opcheck, then prints one JSON object of the largest
relative errors."""

import json

import torch

from perceiver_cli.model import grid_kernels, grid_projection


def relative(a, b):
    assert a.numel() == b.numel(), (a.shape, b.shape)
    a, b = a.float().reshape(-1), b.float().reshape(-1)
    return ((a - b).abs().max() / a.abs().max()).item()


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

    context = type("Context", (), {"saved_tensors": (x, w, rstd, rows, cols), "heads": heads, "bias_dtype": bias.dtype})
    reference = grid_projection._GridProjection.backward(context, grad_k, grad_v)[2:]
    names = ["x_aug", "w_aug", "bias", "rstd", "row_table", "col_table"]
    errors = {"fp32 kv": relative(reference_kv, grid_kernels.grid_kv(x, w, bias, rstd, rows, cols, torch.float32))}
    for name, a, b in zip(names, reference, grid_kernels.grid_kv_backward(grad_k, grad_v, x, w, rstd, rows, cols)):
        errors[f"fp32 grad {name}"] = relative(a, b)
    bf = torch.bfloat16  # under autocast: bf16 tables, gradients and keys/values
    errors["bf16 kv"] = relative(reference_kv, grid_kernels.grid_kv(x, w, bias, rstd, rows.to(bf), cols.to(bf), bf))
    bf16 = grid_kernels.grid_kv_backward(grad_k.to(bf), grad_v.to(bf), x, w, rstd, rows.to(bf), cols.to(bf))
    for name, a, b in zip(names, reference, bf16):
        errors[f"bf16 grad {name}"] = relative(a, b)
    # the operators' declared output shapes (what torch.compile traces with) match what they return
    torch.library.opcheck(grid_kernels.grid_kv, (x, w, bias, rstd, rows.to(bf), cols.to(bf), bf))
    torch.library.opcheck(grid_kernels.grid_kv_backward, (grad_k.to(bf), grad_v.to(bf), x, w, rstd, rows.to(bf), cols.to(bf)))
    errors.update(whole_model())
    print(json.dumps(errors))


def whole_model() -> dict:
    """A model with shared cross-attends through the operators (as on a GPU) against the CPU path,
    eagerly and under torch.compile (aot_eager: Dynamo and AOTAutograd, as train.compile traces)."""
    from test_model import shared_cross_attend_model  # this script's folder is tests/

    from perceiver_cli.model import attention

    # the key/value path (what the kernels serve), not the grid read in its channels
    attention.CrossAttention.reads_grid_in_channels = lambda self, channels, tokens: False
    model, x = shared_cross_attend_model()

    def logits_and_grads(forward, kernels: bool):
        grid_projection._use_kernels = lambda tensor: kernels
        logits = forward(x)
        return [logits, *torch.autograd.grad(logits.square().sum(), list(model.parameters()))]

    calls = []  # the compiled model must really run the kernels, not the CPU path
    launch = grid_kernels.grid_forward
    grid_kernels.grid_forward = lambda *args: calls.append(1) or launch(*args)
    reference = logits_and_grads(model, kernels=False)
    eager = logits_and_grads(model, kernels=True)
    compiled = logits_and_grads(torch.compile(model, backend="aot_eager"), kernels=True)
    assert len(calls) == 4, calls  # 2 distinct cross-attend blocks, eager and compiled
    return {"fp32 model, operators": max(relative(a, b) for a, b in zip(reference, eager)),
            "fp32 model, operators compiled": max(relative(a, b) for a, b in zip(reference, compiled))}


if __name__ == "__main__":
    main()

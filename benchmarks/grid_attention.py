"""One shared cross-attend reading an image grid several times, forward and backward, three ways:
keys and values projected from [x; pe] (the plain path), and the grid read in its own channels
(perceiver_cli/model/grid_attention.py) in its CPU form (passes of C + 5 multiply-adds) and its GPU
form (two matmuls over each token's C+1 + H + W features). Median step time, peak GPU memory and
how far each path's gradients are from the plain path's.

    python benchmarks/grid_attention.py [--batch 16] [--size 224] [--latents 512] [--dim 1024] [--uses 7] [--device cuda]

The defaults are the paper's ImageNet configuration: 512 x 1024 latents, 1 cross-attention head,
64 Fourier bands, the shared cross-attend read by cross-attends 2-8. On a GPU it runs under bf16
autocast, on a CPU in fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from perceiver_cli.model import attention
from perceiver_cli.model.attention import CrossAttention
from perceiver_cli.model.position import FourierGridEncoding, fourier_channels

PATHS = {"plain keys/values": (False, False), "grid, CPU form": (True, False), "grid, GPU form": (True, True)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--latents", type=int, default=512)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--bands", type=int, default=64)
    parser.add_argument("--uses", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    torch.manual_seed(0)
    block = CrossAttention(args.dim, 3, fourier_channels(2, args.bands), args.heads, args.dim // args.heads, 0.0, 0.0).to(device)
    positions = FourierGridEncoding(2, args.bands, float(args.size)).separable((args.size, args.size), device)
    x = torch.randn(args.batch, args.size * args.size, 3, device=device)
    latents = torch.randn(args.batch, args.latents, args.dim, device=device, requires_grad=True)

    def step():
        block.zero_grad(set_to_none=True)
        latents.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            keys_values = block.keys_values(x, positions)
            out = sum(block(latents, keys_values)[0] for _ in range(args.uses))
        out.float().square().mean().backward()
        return [p.grad.float().clone() for p in block.parameters()] + [latents.grad.float().clone()]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    print(f"{args.batch} x {args.size}^2 pixels, {args.latents} x {args.dim} latents, {args.heads} head(s), "
          f"{args.uses} reads, {args.device}")
    original = (attention.uses_grid_projection, attention.reads_grid_as_features)
    plain_grads = None
    for label, (grid, as_features) in PATHS.items():
        attention.uses_grid_projection = lambda x, pe, grid=grid: grid and original[0](x, pe)
        attention.reads_grid_as_features = lambda device_type, as_features=as_features: as_features
        try:
            grads = step()  # warm-up
            if cuda:
                sync()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.steps):
                sync()
                started = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - started)
        finally:
            attention.uses_grid_projection, attention.reads_grid_as_features = original
        plain_grads = plain_grads or grads
        gap = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(grads, plain_grads))
        peak = f"peak {torch.cuda.max_memory_allocated() / 2**20:8.0f} MB  " if cuda else ""
        print(f"{label:18s} {statistics.median(times) * 1000:8.1f} ms  {peak}gradients vs plain: {gap:.1e}", flush=True)


if __name__ == "__main__":
    main()

"""One shared cross-attend reading an image grid several times: the plain key/value projection
against the grid paths: attention that reads the grid in its own channels
(perceiver_cli/model/grid_attention.py) and the grid's keys/values with a backward per use (on a GPU
the Triton kernels of perceiver_cli/model/grid_kernels.py, also at a few block sizes). Forward and
backward, median step time and peak memory.

    python benchmarks/grid_kernels.py [--batch 16] [--size 224] [--dim 1024] [--uses 7] [--device cuda]

The defaults are the paper's ImageNet configuration: 512 x 1024 latents, 1 cross-attention head,
64 Fourier bands, the shared cross-attend read by cross-attends 2-8. On a CPU (a dry run of this
script) the grid path is the CPU one and the block sizes are skipped.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from perceiver_cli.model import attention, grid_kernels
from perceiver_cli.model.attention import CrossAttention
from perceiver_cli.model.position import FourierGridEncoding, fourier_channels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--latents", type=int, default=512)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--bands", type=int, default=64)
    parser.add_argument("--uses", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            keys_values = block.keys_values(x, positions)
            out = sum(block(latents, keys_values)[0] for _ in range(args.uses))
        out.float().square().mean().backward()
        return [p.grad.float().clone() for p in block.to_kv.parameters()]

    def measure(label: str, grid: bool, in_channels: bool = False):
        attention.GPU_GRID = grid
        original, rule = attention.uses_grid_projection, CrossAttention.reads_grid_in_channels
        if not grid:
            attention.uses_grid_projection = lambda x, pe: False
        if not in_channels:
            CrossAttention.reads_grid_in_channels = lambda self, channels, tokens: False
        try:
            grads = step()  # warm-up (Triton compiles here)
            times = []
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            for _ in range(args.steps):
                if cuda:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                step()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
        finally:
            attention.uses_grid_projection, CrossAttention.reads_grid_in_channels = original, rule
        print(f"{label:28s} {statistics.median(times) * 1000:8.1f} ms  peak {peak:8.0f} MB above the inputs", flush=True)
        return grads

    print(f"{args.batch} x {args.size}^2 pixels, {args.latents} x {args.dim} latents, {args.heads} head(s), "
          f"{args.uses} reads, {args.device}")
    plain = measure("plain projection", grid=False)
    for label, in_channels in (("grid read in its channels", True), ("grid keys/values", False)):
        grid = measure(label, grid=True, in_channels=in_channels)
        worst = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(grid, plain))
        print(f"projection gradients, {label} vs plain: largest relative difference {worst:.2e}")
    if cuda:
        for config in ((32, 64, 4), (32, 64, 8), (16, 64, 4), (64, 64, 8), (32, 128, 8), (16, 128, 4)):
            grid_kernels.BLOCK_M, grid_kernels.BLOCK_N, grid_kernels.NUM_WARPS = config
            measure("grid, blocks %d x %d, %d warps" % config, grid=True)


if __name__ == "__main__":
    main()

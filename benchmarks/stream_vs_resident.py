"""Samples/s of one training epoch's batches, streamed from the memory-mapped arrays vs resident on the
device, in turns in one process (so both see the same machine state), and their ratio.

    python benchmarks/stream_vs_resident.py /tmp/c32 [--batch 512] [--turns 3] [--device cpu]

DATA is a prepared dataset (`perceiver prepare cifar10 --from train.zip --out /tmp/c32`). A batch is
taken as the Trainer takes it: iterated from the loader (gather, pinned copy, transfer), then read
once on the device as the input transform reads it (uint8 -> float). No model step: this is the
loader's own cost, the part that residency changes. The file is in the page cache after the first
turn (a warm cache, as in any epoch after the first when the data fits in RAM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from perceiver_cli.data import prepared
from perceiver_cli.data.loaders import ResidentLoader, StreamLoader


def one_epoch(loader, epoch: int, device: torch.device) -> float:
    """Samples/s of one epoch of `loader`'s batches, each read once on the device."""
    seen, start = 0, time.perf_counter()
    with loader.epoch(epoch) as batches:
        for x, y, _ in batches:
            x.float().mean()  # what the input transform reads
            seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a prepared dataset folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--turns", type=int, default=3, help="epochs of each, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="stream gather threads (default: min(4, cores))")
    args = parser.parse_args()

    device = torch.device(args.device)
    split = prepared.load(args.data, mmap=True).split(args.split)
    loading = time.perf_counter()
    resident = ResidentLoader(split.x, split.y, args.batch, 0, device)
    loading = time.perf_counter() - loading
    stream = StreamLoader(split.x, split.y, args.batch, 0, device, workers=args.workers)
    rates = {"resident": [], "stream": []}
    for turn in range(1, args.turns + 1):
        for name, loader in (("stream", stream), ("resident", resident)):
            rates[name].append(one_epoch(loader, turn, device))
            print(f"turn {turn} {name:8s} {rates[name][-1]:12,.0f} samples/s", flush=True)
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(json.dumps({
        "data": args.data, "split": args.split, "samples": len(split.y), "sample_shape": "x".join(map(str, split.x.shape[1:])),
        "batch": args.batch, "device": str(device), "stream_workers": stream.workers, "torch_threads": torch.get_num_threads(),
        "resident_load_s": round(loading, 2),
        "samples_per_s": {name: round(v) for name, v in median.items()},
        "stream_over_resident": round(median["stream"] / median["resident"], 3),
        "turns": {name: " ".join(f"{v:.0f}" for v in r) for name, r in rates.items()},
    }, indent=2))


if __name__ == "__main__":
    main()

"""A whole training epoch streamed (data.residency=stream) vs resident (device), end to end through
`perceiver train`, in turns (the order alternates each turn, so both see the same machine state), and
the ratio of their training samples/s.

    python benchmarks/stream_epoch.py DATA [--recipe cifar10_cpu] [--turns 2] [--device cpu] [--json out.json]

DATA is a prepared dataset (`perceiver prepare cifar10 --from train.zip --out DATA`). Each turn is one
fresh `perceiver train --set train.epochs=1` per residency; the figure is the epoch's training
samples/s from metrics.jsonl (the step loop: model, loader and augmentation, no validation) and the
command's wall time (start-up, data opening and validation included). Unlike
stream_vs_resident.py, which times the loader alone, this is what a user sees.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESIDENCIES = ("device", "stream")


def one_epoch(data: str, recipe: str, residency: str, device: str, runs: Path, name: str) -> dict:
    command = [sys.executable, "-m", "perceiver_cli", "--quiet", "train", recipe, "--name", name, "--device", device,
               "--set", f"data.root={data}", "--set", "train.epochs=1", "--set", f"data.residency={residency}",
               "--set", f"train.runs_dir={runs}"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    row = json.loads((runs / name / "metrics.jsonl").read_text().splitlines()[-1])
    log = (runs / name / "train.log").read_text()
    chosen = next(line for line in log.splitlines() if line.startswith("data: "))
    return {"samples_per_s": row["samples_per_s"], "epoch_time_s": row["epoch_time_s"], "wall_s": wall,
            "val_accuracy": row["val_accuracy"], "log": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="a prepared dataset folder")
    parser.add_argument("--recipe", default="cifar10_cpu")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    results = {r: [] for r in RESIDENCIES}
    with tempfile.TemporaryDirectory() as tmp:
        for turn in range(args.turns):
            order = RESIDENCIES if turn % 2 == 0 else RESIDENCIES[::-1]
            for residency in order:
                result = one_epoch(args.data, args.recipe, residency, args.device, Path(tmp), f"{residency}-{turn}")
                results[residency].append(result)
                print(f"turn {turn + 1} {residency:6s} {result['samples_per_s']:8.1f} samples/s  epoch "
                      f"{result['epoch_time_s']:.1f}s  wall {result['wall_s']:.1f}s  val_acc {result['val_accuracy']:.4f}  "
                      f"[{result['log']}]", flush=True)
    median = {r: statistics.median(x["samples_per_s"] for x in results[r]) for r in RESIDENCIES}
    wall = {r: statistics.median(x["wall_s"] for x in results[r]) for r in RESIDENCIES}
    summary = {"recipe": args.recipe, "device": args.device, "turns": args.turns, "median_samples_per_s": median,
               "median_wall_s": wall, "stream_over_resident": median["stream"] / median["device"],
               "runs": results}
    print(f"median samples/s: resident {median['device']:.1f}, streamed {median['stream']:.1f}; "
          f"streamed/resident = {summary['stream_over_resident']:.3f}; wall {wall['device']:.1f}s vs {wall['stream']:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

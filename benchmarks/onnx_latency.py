"""Inference latency per sample: the exported ONNX graph in ONNX Runtime against the PyTorch model in
eager mode, for a recipe's model (untrained: latency does not depend on the weights), fp32 on the CPU,
in alternating turns in one process so that both see the same machine state.

    python benchmarks/onnx_latency.py [--recipe cifar10_cpu] [--batches 1 64] [--turns 5] [--threads N]

Both sides are fed stored samples (uint8 B H W C) and include the preprocessing (/255, normalisation):
PyTorch eager is model(InputTransform(x)) as `perceiver eval` runs it; ONNX Runtime runs the model.onnx
that `perceiver export --format onnx` writes (same graph, made by the same functions). Each turn times
enough calls for ~0.5 s; the table gives the median over turns, per sample.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from perceiver_cli.engine.runtime import InputTransform
from perceiver_cli.export import onnx_file, program
from perceiver_cli.export.graph import Deployable, generated_samples
from perceiver_cli.recipe import load_recipe
from perceiver_cli.runs.trained import build_trained_model

CIFAR_NORMALIZATION = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}


def timed(call, x, seconds: float = 0.5) -> float:
    """Seconds per call, over as many calls as fit in about `seconds` (one untimed call first)."""
    call(x)
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < seconds:
        call(x)
        calls += 1
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cifar10_cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads of both (default: all cores)")
    args = parser.parse_args()

    import onnxruntime

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    recipe, _ = load_recipe(args.recipe)
    spec = {"kind": "image", "shape": [32, 32, 3]}  # CIFAR-10's stored samples
    state = {"dataset": recipe.data.dataset, "classes": [str(i) for i in range(10)], "input_spec": spec,
             "normalization": CIFAR_NORMALIZATION}
    model = build_trained_model(recipe, state).eval()
    transform = InputTransform(spec, CIFAR_NORMALIZATION, torch.device("cpu"), recipe.data)
    deployable = Deployable(model, transform).eval()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        example = torch.from_numpy(generated_samples(spec, 2))
        exported, traced, notes = program.export_program(deployable, example)
        exporter, more = onnx_file.write_onnx(exported, traced, example, path, None, "images")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def eager(x: np.ndarray):
        with torch.no_grad():
            return model(transform(torch.from_numpy(x)))

    def ort(x: np.ndarray):
        return session.run(None, {"images": x})[0]

    print(f"{args.recipe}: {sum(p.numel() for p in model.parameters()):,} parameters (untrained), fp32, CPU, "
          f"{args.threads} threads (torch and ONNX Runtime), torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"exporter: {exporter}" + "".join(f"; note: {note[:100]}" for note in notes + more))
    rows = []
    for batch in args.batches:
        x = generated_samples(spec, batch, seed=batch)
        assert np.abs(ort(x) - eager(x).numpy()).max() < 1e-3
        turns = {"eager": [], "onnx": []}
        for _ in range(args.turns):  # alternating: eager, onnx, eager, onnx, ...
            turns["eager"].append(timed(eager, x) / batch)
            turns["onnx"].append(timed(ort, x) / batch)
        ratios = [e / o for e, o in zip(turns["eager"], turns["onnx"])]  # per turn: the spread the load adds
        rows.append((batch, statistics.median(turns["eager"]), statistics.median(turns["onnx"]), min(ratios), max(ratios)))

    print(f"\n{'batch':>5}  {'PyTorch eager ms/sample':>24}  {'ONNX Runtime ms/sample':>23}  {'speedup':>8}  {'per turn':>13}")
    for batch, eager_s, onnx_s, low, high in rows:
        print(f"{batch:>5}  {eager_s * 1e3:>24.3f}  {onnx_s * 1e3:>23.3f}  {eager_s / onnx_s:>7.2f}x  {low:>5.2f}-{high:.2f}x")


if __name__ == "__main__":
    main()

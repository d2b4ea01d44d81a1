"""Train one recipe with several seeds and report test accuracy as mean +- std (one seed is noise).

    python benchmarks/seeds.py digits --seeds 4 [--first-seed 0] [--set key=value ...] [--json out.json]
                               [--jobs J --threads T]

Each seed is a real `perceiver train` run under runs/ (named <recipe>-seed<k>), evaluated like
`perceiver eval` on the test split (val when there is none). With --jobs, J seeds train at once in
separate processes of T threads each (on a 16-core machine: --jobs 8 --threads 2); the seeds'
results do not depend on it.
"""

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from perceiver_cli.console import set_quiet
from perceiver_cli.data.sources import load_for_recipe
from perceiver_cli.engine.train import start_run
from perceiver_cli.evaluate import evaluate
from perceiver_cli.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, each in its own process")
    parser.add_argument("--threads", type=int, default=0, help="threads per run (0: torch's default)")
    args = parser.parse_args()
    set_quiet(True)

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, not a fork of this one
        with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_worker_setup, initargs=(args.threads,)) as pool:
            results = list(pool.map(_train_and_evaluate, [args.recipe] * len(seeds), [args.overrides] * len(seeds), seeds))
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        results = [_train_and_evaluate(args.recipe, args.overrides, seed) for seed in seeds]

    accuracies = [r["accuracy"] for r in results]
    summary = {
        "recipe": args.recipe, "overrides": args.overrides, "seeds": results,
        "mean": statistics.mean(accuracies), "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "min": min(accuracies), "max": max(accuracies),
    }
    print(f"{args.recipe}: {summary['mean']:.2%} +- {summary['std']:.2%} over {len(results)} seeds "
          f"(min {summary['min']:.2%}, max {summary['max']:.2%})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def _worker_setup(threads: int) -> None:
    set_quiet(True)
    if threads:
        torch.set_num_threads(threads)


def _train_and_evaluate(recipe_name: str, overrides: list[str], seed: int) -> dict:
    recipe, path = load_recipe(recipe_name, overrides + [f"train.seed={seed}"])
    recipe.train.name = f"{path.stem}-seed{seed}"
    started = time.perf_counter()
    trainer = start_run(recipe, path, load_for_recipe(recipe.data), quiet=True)
    trainer.fit()
    report = evaluate(trainer.run_dir).report
    result = {"seed": seed, "accuracy": report["accuracy"], "evaluated_on": report["evaluated_on"],
              "seconds": round(time.perf_counter() - started, 1), "run": str(trainer.run_dir)}
    print(f"seed {seed}: {result['accuracy']:.2%} on {result['evaluated_on']} ({result['seconds']} s)", flush=True)
    return result


if __name__ == "__main__":
    main()

"""Train one recipe with several seeds and report test accuracy as mean +- std (one seed is noise).

    python benchmarks/seeds.py digits --seeds 4 [--first-seed 0] [--set key=value ...] [--json out.json]

Each seed is a real `perceiver train` run under runs/ (named <recipe>-seed<k>), evaluated like
`perceiver eval` on the test split (val when there is none).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

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
    args = parser.parse_args()
    set_quiet(True)

    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        recipe, path = load_recipe(args.recipe, args.overrides + [f"train.seed={seed}"])
        recipe.train.name = f"{path.stem}-seed{seed}"
        started = time.perf_counter()
        trainer = start_run(recipe, path, load_for_recipe(recipe.data), quiet=True)
        trainer.fit()
        report = evaluate(trainer.run_dir).report
        results.append({"seed": seed, "accuracy": report["accuracy"], "evaluated_on": report["evaluated_on"],
                        "seconds": round(time.perf_counter() - started, 1), "run": str(trainer.run_dir)})
        print(f"seed {seed}: {report['accuracy']:.2%} on {report['evaluated_on']} ({results[-1]['seconds']} s)", flush=True)

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


if __name__ == "__main__":
    main()

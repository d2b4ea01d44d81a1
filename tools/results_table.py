"""Write the README's results table from the measurements' own JSON: python tools/results_table.py

Reads benchmarks/results/<recipe>.seeds.json (`perceiver seeds RECIPE --json ...`) and, where there
is one, benchmarks/results/<recipe>.baseline.json (`python benchmarks/baselines.py ... --json ...`),
and replaces what lies between the README's results markers. No figure in that table is typed by
hand; tests/test_docs.py checks that the README matches these files.
"""

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README, RESULTS = ROOT / "README.md", ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def shown(value: float, percent: bool) -> str:
    return f"{value:.2%}" if percent else f"{value:.3f}"


def results_markdown(folder: Path = RESULTS) -> str:
    rows = ["| recipe | figure (mean ± std over seeds) | seeds | split | training per seed | precision | machine | baseline, same split and time |",
            "|---|---|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.seeds.json")):
        summary = json.loads(path.read_text())
        name, percent, seeds = summary["name"], summary["percent"], summary["seeds"]
        figure = f"{summary['metric'].replace('_', ' ')} {shown(summary['mean'], percent)} ± {shown(summary['std'], percent)}"
        seconds = statistics.mean(seed["train_seconds"] for seed in seeds)
        precisions = "/".join(sorted({seed["precision"] for seed in seeds}))
        split = seeds[0]["evaluated_on"]
        baseline = "–"
        baseline_path = folder / f"{name}.baseline.json"
        if baseline_path.is_file():
            other = json.loads(baseline_path.read_text())["rows"][-1]
            baseline = f"{other['model']}: {shown(other['value'], percent)} in {other['seconds']:,.0f} s"
        overrides = " ".join(f"`--set {o}`" for o in summary["overrides"])
        rows.append(f"| `{name}`{' ' + overrides if overrides else ''} | {figure} | {len(seeds)} | {split} | "
                    f"{seconds:,.0f} s | {precisions} | {summary['machine']} | {baseline} |")
    return "\n".join(rows) + "\n"


def updated(text: str, folder: Path = RESULTS) -> str:
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        sys.exit(f"{README}: no {START} ... {END} markers; add them where the table goes")
    return f"{head}{START}\n{results_markdown(folder)}{END}{tail}"


if __name__ == "__main__":
    README.write_text(updated(README.read_text()))

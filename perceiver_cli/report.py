"""`perceiver report`: how one or several runs learned, from the epoch rows their checkpoints carry
(metrics.jsonl for runs without them; the report never writes into a run's metrics, which a live
training run may be replacing).

A dashboard PNG (accuracy, loss, learning rate, throughput, generalisation gap over epochs; several
runs overlaid) and a summary per run, with the seed-000 dashboard scores, each defined in FORMULAS.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .runs.files import all_or_nothing, save_figure, write_json, writing
from .recipe import DEFAULT_TASK
from .runs.metrics import saved_rows
from .tasks import get_task

FORMULAS = {
    "overfitting": "max(0, train_acc - val_acc) at the last epoch",
    "generalisation": "1 - |train_acc - val_acc| at the last epoch",
    "stability": "1 - std(val_acc over the last 10 epochs)",
    "convergence": "1 - |final train_loss - previous train_loss|",
    "improvement": "final val_acc - first val_acc",
}
# epochs a figure needs to mean anything: on fewer, a std of one or two values and a loss change from
# the first epoch's plunge read 1.0000 (perfect), so the report says it needs more epochs instead
NEEDS_EPOCHS = {"stability": 3, "convergence": 3, "improvement": 2}
MARKERS_UP_TO = 25  # epochs: a short run's curves get a marker per epoch (one epoch alone draws no line)


@dataclass
class RunReport:
    name: str
    run_dir: Path
    rows: list[dict]
    summary: dict
    task: type = None  # its Task class: which figure it is judged by (Task.report_figure)


@dataclass
class ReportResult:
    runs: list[RunReport]
    png_path: Path
    json_path: Path


def summarise(rows: list[dict], run_dir: Path, task=None) -> dict:
    nan = float("nan")  # a masked_image run measures no accuracy: its accuracy figures stay empty
    rows = [{"train_accuracy": nan, "val_accuracy": nan, **row} for row in rows]
    first, last = rows[0], rows[-1]
    val = [r["val_accuracy"] for r in rows if r["val_accuracy"] == r["val_accuracy"]]
    best = max(rows, key=lambda r: r["val_accuracy"] if r["val_accuracy"] == r["val_accuracy"] else -1)
    gap = last["train_accuracy"] - last["val_accuracy"]
    previous_loss = rows[-2]["train_loss"] if len(rows) > 1 else last["train_loss"]
    evaluation = chosen_eval(run_dir)
    on_test = evaluation is not None and evaluation[1] == "test"  # test_* figures: only of the test split
    eval_accuracy = _test_figure(evaluation[0], "accuracy") if evaluation else None
    recent = val[-10:]
    counted = {"stability": len(val), "convergence": len(rows), "improvement": len(val)}
    short = {name: need for name, need in NEEDS_EPOCHS.items() if counted[name] < need and (val or name == "convergence")}
    summary = {
        "epochs": last["epoch"],
        "wall_time_s": round(last.get("elapsed_s", 0.0), 1),
        "best_val_accuracy": best["val_accuracy"] if val else None,
        "best_epoch": best["epoch"] if val else None,
        "final_val_accuracy": last["val_accuracy"] if val else None,
        "test_accuracy": eval_accuracy if on_test else None,
        "eval_accuracy": eval_accuracy,  # of the eval the report quotes (eval_split), test or not
        "eval_split": evaluation[1] if evaluation else None,
        "min_train_loss": min(r["train_loss"] for r in rows),
        "min_val_loss": min((r["val_loss"] for r in rows if r["val_loss"] == r["val_loss"]), default=None),
        "overfitting": round(max(0.0, gap), 6) if val else None,
        "generalisation": round(1 - abs(gap), 6) if val else None,
        "stability": round(1 - statistics.pstdev(recent), 6) if val and "stability" not in short else None,
        "convergence": round(1 - abs(last["train_loss"] - previous_loss), 6) if "convergence" not in short else None,
        "improvement": round(last["val_accuracy"] - first["val_accuracy"], 6) if val and "improvement" not in short else None,
        "needs_more_epochs": short,  # figure -> epochs it needs: left out (null) on this shorter run
    }
    figure = getattr(task, "report_figure", None)
    if figure:  # the task's own figure (segment: its pixel accuracy is dominated by the background; Dice counts)
        key, _, eval_key = figure
        measured = [r for r in rows if r.get(key) == r.get(key) and r.get(key) is not None]
        pick = min if getattr(task, "best_metrics", {}).get(key) == "min" else max  # bits per byte: lower is better
        best_row = pick(measured, key=lambda r: r[key]) if measured else None
        summary[f"best_{key}"] = best_row[key] if best_row else None
        summary[f"best_{key}_epoch"] = best_row["epoch"] if best_row else None
        value = _test_figure(evaluation[0], eval_key) if measured and evaluation else None
        summary[f"test_{eval_key}"] = value if on_test else None
        summary[f"eval_{eval_key}"] = value
    return summary


def chosen_eval(run_dir: Path) -> tuple[Path, str] | None:
    """(the `perceiver eval` JSON the report quotes, its split's tag): eval_test.json when there is
    one (the unbiased figure), else the newest of the others (eval_val.json, eval_data-<name>.json...),
    so that an eval the user ran on another split is shown, and named, rather than "not evaluated"."""
    test = run_dir / "eval_test.json"
    if test.is_file():
        return test, "test"
    found = []
    for path in run_dir.glob("eval_*.json"):
        try:
            if path.is_file():
                found.append((path.stat().st_mtime_ns, path.name, path))
        except OSError:  # gone meanwhile
            continue
    if not found:
        return None
    path = max(found)[2]
    return path, path.stem[len("eval_"):]


def split_words(tag: str | None) -> str:
    """An eval file's tag in words: 'test split', 'val split', '--data <name>'."""
    if tag is None:
        return "not evaluated"
    return f"--data {tag[len('data-'):]}" if tag.startswith("data-") else f"{tag} split"


def run_task(run_dir: Path):
    """The Task class of a run, from its config.yaml (classify where it has none)."""
    import yaml

    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = {}
    task = config.get("task") if isinstance(config, dict) else None
    name = task.get("name", DEFAULT_TASK) if isinstance(task, dict) else DEFAULT_TASK
    return get_task(name)


def _test_figure(path: Path, key: str) -> float | None:
    """One figure of an eval JSON `perceiver eval` wrote (None when not evaluated)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get(key)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        raise UserError(f"{path}: not a readable evaluation; write it again: perceiver eval {path.parent}") from None
    return value if isinstance(value, (int, float)) else None


def load_run(run_dir: Path) -> RunReport:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    rows = saved_rows(run_dir)
    if not rows:
        raise UserError(f"{run_dir}: no metrics.jsonl with a finished epoch; train it first (perceiver train ...)")
    task = run_task(run_dir)
    return RunReport(run_dir.name, run_dir, rows, summarise(rows, run_dir, task), task)


def report(run_dirs: list[Path], out: Path | None = None) -> ReportResult:
    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    if out is None:
        out = runs[0].run_dir / "report" if len(runs) == 1 else runs[0].run_dir.parent / ("report_" + "_vs_".join(r.name for r in runs))
    out = Path(out)
    with writing(out.parent, "or give --out elsewhere"):
        out.parent.mkdir(parents=True, exist_ok=True)
    png_path, json_path = out.with_suffix(".png"), out.with_suffix(".json")
    document = {"formulas": FORMULAS, "runs": {str(r.run_dir): r.summary for r in runs}}
    with all_or_nothing("or give --out elsewhere"):  # the PNG and the JSON appear together
        plot_dashboard(runs, png_path)
        write_json(json_path, document)
    return ReportResult(runs, png_path, json_path)


def plot_dashboard(runs: list[RunReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    (acc, loss, lr), (speed, gap, text) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        colour = colours[i % len(colours)]
        epochs = [r["epoch"] for r in run.rows]
        column = lambda key: [r.get(key, float("nan")) for r in run.rows]  # noqa: E731
        label = run.name if len(runs) > 1 else None
        style = {"color": colour, **({"marker": "o", "markersize": 4} if len(epochs) <= MARKERS_UP_TO else {})}
        acc.plot(epochs, column("train_accuracy"), "--", **style)
        acc.plot(epochs, column("val_accuracy"), "-", label=label, **style)
        loss.plot(epochs, column("train_loss"), "--", **style)
        loss.plot(epochs, column("val_loss"), "-", label=label, **style)
        lr.plot(epochs, column("lr"), label=label, **style)
        speed.plot(epochs, column("samples_per_s"), label=label, **style)
        gap.plot(epochs, [t - v for t, v in zip(column("train_accuracy"), column("val_accuracy"))], label=label, **style)
    acc.set_title("accuracy (dashed: train, solid: validation)")
    loss.set_title("loss (dashed: train, solid: validation)")
    if all(r["train_loss"] > 0 for run in runs for r in run.rows):
        loss.set_yscale("log")
    lr.set_title("learning rate")
    speed.set_title("throughput (train samples/s)")
    gap.set_title("generalisation gap (train acc - val acc)")
    gap.axhline(0, color="grey", linewidth=0.5)
    for ax in (acc, loss, lr, speed, gap):
        ax.set_xlabel("epoch")
        if len(runs) > 1:
            ax.legend(fontsize=7)
    text.set_axis_off()
    lines = []
    for run in runs:
        s = run.summary
        best = f"{s['best_val_accuracy']:.2%} @ {s['best_epoch']}" if s["best_val_accuracy"] is not None else "-"
        evaluated = f"eval ({split_words(s['eval_split'])})"
        test = f"{evaluated} {s['eval_accuracy']:.2%}" if s["eval_accuracy"] is not None else "not evaluated"
        figure = getattr(run.task, "report_figure", None)
        if figure and s[f"best_{figure[0]}"] is not None:
            key, label, eval_key = figure
            best = f"{label} {s[f'best_{key}']:.3f} @ {s[f'best_{key}_epoch']}"
            test = f"{evaluated} {label} {s[f'eval_{eval_key}']:.3f}" if s[f"eval_{eval_key}"] is not None else "not evaluated"
        lines.append(f"{run.name}: best val {best}, {test}, {s['epochs']} epochs, {s['wall_time_s']:.0f} s")
        if s["needs_more_epochs"]:
            lines.append(f"  {needs_more_text(s['needs_more_epochs'], len(run.rows))}")
    text.text(0, 1, "\n".join(lines), va="top", fontsize=9, family="monospace", wrap=True)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def needs_more_text(needs: dict, epochs: int) -> str:
    """'stability and convergence need 3+ epochs (this run has 1)'."""
    by_count: dict[int, list[str]] = {}
    for name, need in needs.items():
        by_count.setdefault(need, []).append(name)
    parts = [f"{' and '.join(names)} need{'s' if len(names) == 1 else ''} {need}+ epochs"
             for need, names in sorted(by_count.items(), reverse=True)]
    return f"{'; '.join(parts)} (this run has {epochs})"

"""What a user reads: piped output kept on whole lines, the report on short runs and on evals of
any split, the segmentation figure's legend and titles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_attention import report_summary, write_run

ROOT = Path(__file__).resolve().parents[1]


def piped(*args: str) -> str:
    """What `perceiver ARGS | cat` shows: stdout a pipe, no COLUMNS."""
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env["PYTHONPATH"] = str(ROOT)
    ran = subprocess.run([sys.executable, "-m", "perceiver_cli", *args], capture_output=True, text=True, env=env,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "\x1b[" not in ran.stdout  # plain text, no colour codes
    return ran.stdout


def test_piped_output_is_not_hard_wrapped_at_80_columns(digits_run, workdir):
    shown = piped("eval", str(digits_run))
    headline = next(line for line in shown.splitlines() if "test split: accuracy" in line)
    assert len(headline) > 80 and headline.endswith("epoch 2 checkpoint")  # one line, as grep and logs need it
    # a table of long descriptions wraps inside its cells at 200 columns, not in a row thousands wide
    table = piped("recipes").splitlines()
    assert max(len(line) for line in table) <= 200 and any(len(line) > 80 for line in table)
    assert any(line.startswith("│ digits ") for line in table)


def test_report_on_a_one_epoch_run_says_what_needs_more_epochs(cli, workdir, monkeypatch):
    run = write_run(workdir / "runs" / "short", val=[0.4], train=[0.45])
    from perceiver_cli import report

    drawn = {}
    saved = report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, path, **kw: (drawn.setdefault("fig", fig), saved(fig, path, **kw)))
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    summary = report_summary(run)
    assert summary["stability"] is None and summary["convergence"] is None and summary["improvement"] is None
    assert summary["needs_more_epochs"] == {"stability": 3, "convergence": 3, "improvement": 2}
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.stdout.splitlines() if line.count("│") == 3}
    assert rows["stability"] == rows["convergence"] == "needs 3+ epochs" and rows["improvement"] == "needs 2+ epochs"
    assert "stability and convergence need 3+ epochs; improvement needs 2+ epochs (this run has 1)" in result.stdout
    # one epoch draws no line: each curve gets a marker, so the figure is not empty
    curves = [line for ax in drawn["fig"].axes for line in ax.get_lines() if list(line.get_xdata()) == [1]]
    assert len(curves) == 7 and all(line.get_marker() == "o" for line in curves)


def test_report_quotes_an_eval_of_another_split_and_names_it(cli, workdir):
    run = write_run(workdir / "runs" / "a", val=[0.5, 0.7, 0.6], train=[0.5, 0.8, 0.9])
    (run / "eval_val.json").write_text(json.dumps({"accuracy": 0.625}))
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    summary = report_summary(run)
    assert summary["eval_accuracy"] == 0.625 and summary["eval_split"] == "val" and summary["test_accuracy"] is None
    assert "62.50% (val split)" in result.stdout
    (run / "eval_test.json").write_text(json.dumps({"accuracy": 0.6}))  # the test split wins when there is one
    result = cli("report", run)
    assert "60.00% (test split)" in result.stdout


def test_segmentation_figure_has_a_legend_and_titles_clear_of_each_other():
    from perceiver_cli.tasks.segment_eval import plot_overlays

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (3, 16, 16, 1), dtype=np.uint8)
    y = rng.integers(0, 4, (3, 16, 16))
    classes = ["background", "femur", "tibia", "cartilage"]
    fig = plot_overlays(x, y, y, classes, "knee-seg test split: mean Dice 0.812")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert [text.get_text() for text in legend.get_texts()] == classes[1:]  # the untinted background is not listed
    title = fig._suptitle.get_window_extent(renderer)
    column_titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(column_titles) == 3 and not any(title.overlaps(box) for box in column_titles)
    images = [ax.get_window_extent(renderer) for ax in fig.axes]
    assert not any(legend.get_window_extent(renderer).overlaps(box) for box in images)


@pytest.mark.parametrize("tag, words", [("test", "test split"), ("val", "val split"), ("data-knee", "--data knee"),
                                        (None, "not evaluated")])
def test_eval_file_tags_read_as_words(tag, words):
    from perceiver_cli.report import split_words

    assert split_words(tag) == words

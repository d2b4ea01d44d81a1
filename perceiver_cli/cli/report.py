"""`perceiver report`: the training dashboard of one or more runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import tables
from .errors import user_errors


@user_errors("report")
def report_command(
    run_dirs: List[Path] = typer.Argument(..., help="One or more run directories (several are overlaid)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Path of the report without extension (.png and .json are written).  \\[default: RUN_DIR/report, or report_<a>_vs_<b> beside the runs]"),
):
    """A training dashboard (accuracy, loss, lr, throughput, generalisation gap) and a summary table per run."""
    from ..report import FORMULAS, report

    tables.report(report(run_dirs, out), FORMULAS)

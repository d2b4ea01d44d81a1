"""Everything the commands print: Rich tables and result lines, in one place (quiet mode drops what
goes through `info`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.table import Table

from ..console import console, err_console, info, visible as v
from ..tasks import Shown, get_task


def prepared(result, out: Path, seconds: float) -> None:
    table = Table(title=f"{v(result.name)} → {v(out)}", header_style="bold")
    by_patient = all("patients" in split.extra for split in result.splits.values())
    masks = (getattr(result, "target", None) or {}).get("kind") == "mask"  # labels per pixel: shares below
    per_class = by_patient and not masks
    for column in ("split", "samples", "shape") + (("patients", "volumes") if by_patient else ()) + tuple(result.classes if per_class else ()):
        table.add_column(column, justify="left" if column in ("split", "shape") else "right")
    for name, split in result.splits.items():
        row = [name, f"{len(split.y):,}", " × ".join(map(str, split.x.shape[1:]))]
        if by_patient:  # patients / volumes / slices per split and class
            row += [str(len(split.extra["patients"])), str(split.extra["volumes"])]
        if per_class:
            row += [f"{n:,}" for n in np.bincount(split.y, minlength=len(result.classes))]
        table.add_row(*row)
    info(table)
    if masks:
        pixels = sum(np.bincount(np.asarray(split.y).reshape(-1), minlength=len(result.classes))
                     for split in result.splits.values())
        shares = Table(title="pixels per label", header_style="bold")
        shares.add_column("label")
        shares.add_column("share", justify="right")
        for name, count in zip(result.classes, pixels):
            shares.add_row(v(name), f"{count / max(pixels.sum(), 1):.3%}")
        info(shares)
    info(f"{len(result.classes)} classes: {v(', '.join(result.classes[:12]))}{' …' if len(result.classes) > 12 else ''}")
    if by_patient:
        overlap = result.source.get("patients_in_several_splits", [])
        if overlap:
            info(f"[yellow]{len(overlap)} patient(s) have slices in more than one split[/] (--split-by {result.source['split_by']})")
        else:
            info("no patient is in two splits (checked)")
    samples = sum(len(split.y) for split in result.splits.values())
    info(f"prepared {samples:,} samples in {seconds:.1f} s ({samples / max(seconds, 1e-9):,.1f}/s)")
    if result.skipped:
        err_console.print(f"skipped {len(result.skipped)} input(s) (listed in {v(out / 'manifest.json')}):", highlight=False)
        for item in result.skipped[:10]:
            err_console.print(f"  {v(item['path'])}: {v(item['reason'])}", highlight=False)


def trained(result) -> None:
    best = result.best
    if best and best["metric"] == "last":
        accuracy = result.rows[-1].get("val_accuracy", float("nan"))
        shown = f" · val_accuracy {accuracy:.2%}" if accuracy == accuracy else ""
        console.print(f"best.pt is the last epoch ({best['epoch']}){shown} · {v(result.run_dir)}", highlight=False)
    elif best and best["value"] == best["value"]:
        value = f"{best['value']:.2%}" if best["metric"] == "val_accuracy" else f"{best['value']:.4f}"
        console.print(f"best {best['metric']} {value} at epoch {best['epoch']} · {v(result.run_dir)}", highlight=False)
    else:
        console.print(f"finished · {v(result.run_dir)}", highlight=False)
    info(f"next: perceiver eval {v(result.run_dir)}")


def shown(result: Shown) -> None:
    """A task's sentence and tables (tasks/base.Shown)."""
    console.print(result.line, highlight=False)
    for title, columns, rows in result.tables:
        table = Table(title=title, header_style="bold")
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        info(table)


def evaluation(result) -> None:
    shown(get_task(result.report["task"]).show_evaluation(result.report))
    info(f"wrote {v(result.json_path)} and {v(result.png_path)}")


SHOWN_ROWS = 50  # a table longer than this is cut; the --json / --csv files hold every row
SHOWN_SKIPPED = 10  # skipped inputs listed on the terminal (a folder of other files); --json lists all


def predictions(result) -> None:
    segment = get_task(result.task).writes_masks  # per-pixel answers: class shares and a mask file per input
    samples = [row for row in result.rows if "slices" not in row]
    volumes = [row for row in result.rows if "slices" in row]
    table = Table(title=f"{v(result.target)}: {len(samples):,} prediction(s)", header_style="bold")
    for column in ("input", "classes (pixel share)" if segment else "class", "" if segment else "probability",
                   "mask" if segment else "next most likely"):
        if column:
            table.add_column(column, justify="right" if column == "probability" else "left", overflow="fold")
    for row in samples[:SHOWN_ROWS]:
        if segment:
            shares = ", ".join(f"{v(e['class'])} {e['share']:.1%}" for e in row["top_k"])
            table.add_row(v(row["input"]), shares, v(row.get("mask_file", "")))
        else:
            others = ", ".join(f"{v(e['class'])} {e['probability']:.1%}" for e in row["top_k"][1:])
            table.add_row(v(row["input"]), v(row["class"]), f"{row['probability']:.1%}", others)
    console.print(table)
    if len(samples) > SHOWN_ROWS:
        info(f"… and {len(samples) - SHOWN_ROWS:,} more (every row is in --json / --csv)")
    if volumes and segment:
        summary = Table(title="per volume (a label volume over the scan)", header_style="bold")
        for column in ("volume", "slices", "classes (voxel share)", "mask"):
            summary.add_column(column, justify="right" if column == "slices" else "left", overflow="fold")
        for row in volumes:
            shares = ", ".join(f"{v(e['class'])} {e['share']:.1%}" for e in row["top_k"])
            summary.add_row(v(row["input"]), str(row["slices"]), shares, v(row["mask_file"]))
        console.print(summary)
    elif volumes:
        summary = Table(title="per volume (its slices' probabilities averaged)", header_style="bold")
        for column in ("volume", "slices", "class", "probability"):
            summary.add_column(column, justify="left" if column in ("volume", "class") else "right", overflow="fold")
        for row in volumes:
            summary.add_row(v(row["input"]), str(row["slices"]), v(row["class"]), f"{row['probability']:.1%}")
        console.print(summary)
    if result.largest_component:
        info(f"only the largest region of {', '.join(v(name) for name in result.largest_component)} kept in each mask",
             highlight=False)
    for skipped in result.skipped[:SHOWN_SKIPPED]:
        err_console.print(f"skipped {v(skipped['input'])}: {v(skipped['reason'])}", highlight=False, soft_wrap=True)
    if len(result.skipped) > SHOWN_SKIPPED:
        err_console.print(f"… and {len(result.skipped) - SHOWN_SKIPPED:,} more skipped (every one is in --json)", highlight=False)
    if result.files:
        shown = [str(p) for p in result.files if not str(p).endswith(".mask.png")]
        masks = len(result.files) - len(shown)
        info(f"wrote {', '.join(([f'{masks} mask PNG(s)'] if masks else []) + [v(p) for p in shown])}", highlight=False)


def attention(result) -> None:
    table = Table(title="cross-attention statistics (mean over the probe samples)", header_style="bold")
    for column in ("epoch", "stage", "entropy", "top 5 % mass", "latents used", "effective latents"):
        table.add_column(column, justify="right")
    for ep, stages in result.stats.items():
        for st, values in stages.items():
            mean = values["mean"]
            table.add_row(str(ep), str(st), f"{mean['entropy']:.3f}", f"{mean['top5_mass']:.3f}",
                          f"{mean['latents_used']:.1f}", f"{mean['effective_latents']:.1f}")
    info(table)
    info("entropy: H(mass)/log(tokens), 1 = even; top 5 % mass: share on the 5 % most attended tokens; "
         "latents used / effective: latents that are the strongest reader of some token, exp(entropy) of that split")
    for path in result.files:
        console.print(f"wrote {v(path)}", highlight=False)
    console.print(f"wrote {v(result.stats_path)}", highlight=False)


def report(result, formulas: dict) -> None:
    # one row per figure, one column per run: stays readable in a narrow terminal
    table = Table(title="summary", header_style="bold")
    table.add_column("")
    for run in result.runs:
        table.add_column(run.name, justify="right")
    from ..report import needs_more_text, split_words

    pct = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    figures = {run.task.report_figure for run in result.runs if getattr(run.task, "report_figure", None)}
    rows = tuple(row for key, label, eval_key in sorted(figures)
                 for row in ((f"best val {label}", f"best_{key}", num), ("at epoch", f"best_{key}_epoch", str),
                             (f"eval {label}", f"eval_{eval_key}", num))) + (
            ("best val accuracy", "best_val_accuracy", pct), ("at epoch", "best_epoch", str),
            ("eval accuracy", "eval_accuracy", pct), ("min train loss", "min_train_loss", num),
            ("min val loss", "min_val_loss", num), ("overfitting", "overfitting", num),
            ("generalisation", "generalisation", num), ("stability", "stability", num),
            ("convergence", "convergence", num), ("improvement", "improvement", num), ("epochs", "epochs", str),
            ("wall time", "wall_time_s", lambda v: f"{v:.0f} s"))

    def cell(run, key, fmt) -> str:
        summary = run.summary
        if key in summary.get("needs_more_epochs", {}):  # not 1.0000 on a 1- or 2-epoch run
            return f"needs {summary['needs_more_epochs'][key]}+ epochs"
        if summary.get(key) is None:
            return "-"
        if key.startswith("eval_"):  # which split the eval figure is of: test, or the one the user evaluated
            return f"{fmt(summary[key])} ({split_words(summary.get('eval_split'))})"
        return fmt(summary[key])

    for label, key, fmt in rows:
        table.add_row(label, *(cell(run, key, fmt) for run in result.runs))
    console.print(table)
    for run in result.runs:
        if run.summary.get("needs_more_epochs"):
            info(f"{v(run.name)}: {needs_more_text(run.summary['needs_more_epochs'], len(run.rows))}", highlight=False)
    for name, formula in formulas.items():
        info(f"  {name} = {formula}", highlight=False)
    console.print(f"wrote {v(result.png_path)} and {v(result.json_path)}", highlight=False)


def _memory_text(value) -> str:
    return value if isinstance(value, str) else ("-" if value is None else f"{value:,.0f} MB")


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def ar_bench(document: dict) -> None:
    """bench of a byte-stream model (bench/ar.py)."""
    env, inp = document["environment"], document["input"]
    console.print(f"{env['device']} · {env['dtype']} · {env['threads']} threads · torch {env['torch']} · window "
                  f"{inp['context']:,} bytes, {inp['latents']} latents · batch {document['batch']} · "
                  f"{document['parameters']:,} parameters", highlight=False, soft_wrap=True)
    table = Table(title="step time", header_style="bold")
    for column in ("mode", "median", "p10", "p90", "windows/s", "target bytes/s", "peak memory"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, r in document["results"].items():
        table.add_row(mode, f"{r['median_s'] * 1000:.1f} ms", f"{r['p10_s'] * 1000:.1f} ms", f"{r['p90_s'] * 1000:.1f} ms",
                      f"{r['samples_per_s']:,.1f}", f"{r['target_bytes_per_s']:,.0f}", _memory_text(r["peak_memory_mb"]))
    console.print(table)
    g = document["generation"]
    console.print(f"generation after a full window: cached {g['cached_bytes_per_s']:,.1f} bytes/s, recomputed "
                  f"{g['uncached_bytes_per_s']:,.1f} bytes/s ({g['speedup']:.1f}x)", highlight=False)
    if "sweep" in document:
        sweep = Table(title="training step as the window grows", header_style="bold")
        for column in ("context", "median", "target bytes/s", "peak memory"):
            sweep.add_column(column, justify="right")
        for r in document["sweep"]["rows"]:
            if "error" in r:
                sweep.add_row(f"{r['context']:,}", r["error"], "-", "-")
            else:
                sweep.add_row(f"{r['context']:,}", f"{r['median_s'] * 1000:.1f} ms", f"{r['target_bytes_per_s']:,.0f}",
                              _memory_text(r["peak_memory_mb"]))
        console.print(sweep)
        console.print(f"growth exponent (time ~ context^k): k = {document['sweep']['growth_exponent']}", highlight=False)
    if "compare" in document:
        c = document["compare"]
        p = c["parameters"]
        console.print(f"parameters: ours {p['ours']:,} · perceiver-ar {p['perceiver-ar']:,}", highlight=False)
        versus = Table(title=f"vs lucidrains/perceiver-ar-pytorch, same architecture and window, {env['dtype']}",
                       header_style="bold")
        for column in ("mode", "ours", "perceiver-ar", "speedup", "ours memory", "perceiver-ar memory", "memory ratio"):
            versus.add_column(column, justify="left" if column == "mode" else "right")
        for mode, pair in c["same_dtype"].items():
            ratio = c["memory_ratio"][mode]
            versus.add_row(mode, f"{pair['ours']['median_s'] * 1000:.1f} ms", f"{pair['perceiver-ar']['median_s'] * 1000:.1f} ms",
                           f"{c['speedup'][mode]:.2f}x", _memory_text(pair["ours"]["peak_memory_mb"]),
                           _memory_text(pair["perceiver-ar"]["peak_memory_mb"]), "-" if ratio is None else f"{ratio:.2f}")
        console.print(versus)


def bench(document: dict) -> None:
    env = document["environment"]
    flops = document["flops_per_sample"]
    console.print(
        f"{env['device']} · {env['dtype']} · {env['threads']} threads · torch {env['torch']} · input {document['input']['shape']} · "
        f"batch {document['batch']} · {document['parameters']:,} parameters · {flops['forward'] / 1e9:.3f} GFLOP/sample forward · "
        + (f"matmul peak {document['matmul_peak_tflops']:.3f} TFLOP/s (MFU against {document['mfu_peak_tflops']:.3f}, "
           f"{document['mfu_peak_source']})" if document["mfu_peak_tflops"] else f"no MFU ({document['mfu_peak_source']})"),
        highlight=False, soft_wrap=True)
    table = Table(title="step time", header_style="bold")
    # MFU counts the products this implementation runs; "paper MFU" the paper's math as written (what
    # lucidrains runs), which passes 100 % where an exact rewrite skips work
    for column in ("mode", "median", "p10", "p90", "samples/s", "peak memory", "TFLOP/s", "MFU", "paper MFU"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for mode, r in document["results"].items():
        table.add_row(mode + (f" (compile/capture {r['compile_s']} s)" if "compile_s" in r else ""), f"{r['median_s'] * 1000:.1f} ms",
                      f"{r['p10_s'] * 1000:.1f} ms", f"{r['p90_s'] * 1000:.1f} ms", f"{r['samples_per_s']:,.1f}",
                      _memory_text(r["peak_memory_mb"]), f"{r['tflops']:.3f}", _percent(r["mfu"]), _percent(r["mfu_paper_flops"]))
    console.print(table)
    if "sweep" in document:
        sweep = Table(title=f"input sweep (train): growth exponent {document['sweep']['growth_exponent']}", header_style="bold")
        for column in ("size", "tokens", "median", "samples/s", "peak memory"):
            sweep.add_column(column, justify="right")
        for r in document["sweep"]["rows"]:
            if "error" in r:
                sweep.add_row(str(r["size"]), str(r.get("tokens", "-")), r["error"], "-", "-")
            else:
                sweep.add_row(str(r["size"]), f"{r['tokens']:,}", f"{r['median_s'] * 1000:.1f} ms", f"{r['samples_per_s']:,.1f}",
                              _memory_text(r["peak_memory_mb"]))
        console.print(sweep)
    if "compare" in document:
        c = document["compare"]
        p = c["parameters"]
        console.print(f"parameters: ours {p['ours']:,} · lucidrains {p['lucidrains']:,} ({p['difference']:+.3%})", highlight=False)
        versus = Table(title=f"vs lucidrains/perceiver-pytorch, same architecture, {env['dtype']}", header_style="bold")
        for column in ("mode", "ours samples/s", "lucidrains samples/s", "speedup", "ours memory", "lucidrains memory"):
            versus.add_column(column, justify="left" if column == "mode" else "right")
        for mode, pair in c["same_dtype"].items():
            versus.add_row(mode, f"{pair['ours']['samples_per_s']:,.1f}", f"{pair['lucidrains']['samples_per_s']:,.1f}",
                           f"{c['speedup'][mode]:.2f}x", _memory_text(pair["ours"]["peak_memory_mb"]),
                           _memory_text(pair["lucidrains"]["peak_memory_mb"]))
        console.print(versus)
        d = c["defaults"]
        console.print(f"at defaults (train): ours {d['ours_samples_per_s']:,.1f} samples/s ({d['ours_dtype']}) vs lucidrains "
                      f"{d['lucidrains_samples_per_s']:,.1f} ({d['lucidrains_dtype']}): {d['speedup']:.2f}x", highlight=False)


def export(result) -> None:
    table = Table(title=f"{result.format} export → {v(result.out)}", header_style="bold")
    table.add_column("check")
    for column in ("batch", "max |diff|", "tolerance"):
        table.add_column(column, justify="right")
    for check in result.checks:
        if "identical" in check:  # the weights' round trip: the same bits or a failure
            table.add_row(check["what"], str(check["batch"]), "identical" if check["identical"] else "differ", "bits")
        else:
            table.add_row(check["what"], str(check["batch"]), f"{check['max_abs_diff']:.2g}", f"{check['tolerance']:.2g}")
    info(table)
    if result.exporter:
        console.print(f"{result.exporter}" + (f" · opset {result.opset}" if result.opset else "") + f" · checked on "
                      f"{result.inputs_used}" + (f" on {result.device}" if result.device != "cpu" else ""), highlight=False, soft_wrap=True)
        graph_in, graph_out = result.input, result.output
        info(f"input '{graph_in['name']}' {graph_in['dtype']} {graph_in['layout']} {graph_in['shape']} · output "
             f"'{graph_out['name']}' {graph_out['layout']}: {graph_out['meaning']}", highlight=False)
    from rich.markup import escape

    for note in result.notes:
        info(f"[yellow]note:[/] {escape(note)}")
    console.print(f"wrote {v(result.out)}: {', '.join(result.files)}", highlight=False)


def seeds(summary: dict) -> None:
    shown = (lambda x: f"{x:.2%}") if summary["percent"] else (lambda x: f"{x:.4f}")
    metric = summary["metric"].replace("_", " ")
    table = Table(title=f"{summary['name']}: one run per seed", header_style="bold")
    for column in ("seed", metric, "evaluated on", "training", "run"):
        table.add_column(column, justify="right" if column in ("seed", metric, "training") else "left",
                         no_wrap=column == "run")
    for seed in summary["seeds"]:
        table.add_row(str(seed["seed"]), shown(seed["value"]), v(seed["evaluated_on"]),
                      f"{seed['train_seconds']:,.0f} s {seed['precision']}", v(seed["run"]))
    console.print(table)
    console.print(f"[bold]{v(summary['name'])}[/]: {metric} [bold]{shown(summary['mean'])} ± {shown(summary['std'])}[/] "
                  f"over {len(summary['seeds'])} seeds (min {shown(summary['min'])}, max {shown(summary['max'])}) · "
                  f"{v(summary['machine'])}", highlight=False, soft_wrap=True)


def recipes(rows: list[dict]) -> None:
    table = Table(title="shipped recipes (perceiver train NAME; perceiver recipes show NAME)", header_style="bold")
    for column in ("recipe", "dataset", "task", "parameters", "what it is", "reaches"):
        table.add_column(column, justify="right" if column == "parameters" else "left",
                         overflow="fold", ratio=3 if column in ("what it is", "reaches") else None)
    for row in rows:
        parameters = f"{row['parameters'] / 1e6:.2f} M" if row["parameters"] is not None else "-"
        table.add_row(v(row["name"]), v(row["dataset"]), row["task"], parameters, v(row["summary"]),
                      v(row["reaches"]) or "[dim]not measured[/]")
    console.print(table)


def resolved_recipe(text: str) -> None:
    console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)


def _bytes_text(count: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count:,.0f} B"


def dry_run(result: dict, recipe_path) -> None:
    memory = result["memory"]
    table = Table(title=f"dry run of {v(recipe_path)}: nothing trained, nothing written", header_style="bold")
    table.add_column("")
    table.add_column("", justify="right")
    rows = [
        ("data", f"{v(result['dataset'])}: {result['train']:,} train / {result['val']:,} val ({result['residency']})"),
        ("task", result["task"]),
        ("parameters", f"{result['parameters']:,}"),
        ("FLOPs per sample", f"{result['forward_flops_per_sample'] / 1e9:,.3f} G forward, "
                             f"~{3 * result['forward_flops_per_sample'] / 1e9:,.3f} G a training step"),
        ("steps per epoch", f"{result['steps_per_epoch']:,}"),
        ("device", f"{result['device']} {result['precision']}"),
        ("weights + gradients", _bytes_text(memory["weights"] + memory["gradients"])),
        ("optimiser state", _bytes_text(memory["optimizer_state"])),
        (f"activations (batch {memory['batch']})", _bytes_text(memory["activations"])),
        ("memory estimate", _bytes_text(memory["total"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if result["not_applied"]:
        info(f"priced on the eager model: {' and '.join(result['not_applied'])} change how a step runs, not its FLOPs "
             f"or memory, so the dry run did not apply them (training will)", highlight=False)

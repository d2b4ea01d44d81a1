"""`perceiver export`: a trained run as an export folder, every file in it checked before it is kept.

    safetensors   model.safetensors + config.json (runs/exported.py): what perceiver_cli.load reads
    onnx          the same + model.onnx + export.json (the graph's input, output and check)
    torch-export  the same + model.pt2 (torch.export, torch.export.load) + export.json
                  ("torchscript", its first name, is kept as an alias: it writes the same .pt2)

The ONNX and torch.export graphs take stored samples (uint8 images, float32 points) with the
preprocessing inside (graph.py). Each is run on the run's prepared test (or val) samples, or where
those are not here on generated ones, at two batch sizes and compared with the eager PyTorch model;
above the tolerance nothing is written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import json_text, temporary_sibling, write_text_atomic
from ..data import swap
from ..engine.runtime import InputTransform, resolve_device
from ..errors import UserError
from ..runs.exported import CONFIG, WEIGHTS, is_export_folder, load_folder, load_model_from, write_folder
from ..runs.exported import FORMAT as EXPORT_FORMAT
from ..runs.files import writing
from ..runs.trained import described_dataset, run_dir_of, split_samples
from ..tasks import build_task
from . import onnx_file, program
from .graph import Deployable, generated_samples, input_description

FORMATS = ("onnx", "safetensors", "torch-export")
# the format's first name: it never wrote TorchScript (torch.jit is deprecated), it writes torch.export's .pt2
ALIASES = {"torchscript": "torch-export"}
CHECK_BATCHES = (1, 8)
# |exported - eager| on fp32 logits, relative to the logits' scale: a faithful graph differs by the
# order of float operations only (measured ~1e-7 to 1e-5); a wrong one by far more (a batch-dependent
# slab loop frozen at trace time was off by 0.1-0.2), and 1e-3 moves a probability by ~0.1 % at most
TOLERANCE = 1e-3
EXPORT_INFO = "export.json"
EXPORT_FILES = {WEIGHTS, CONFIG, "model.onnx", "model.pt2", EXPORT_INFO}  # all an export folder may hold


@dataclass
class ExportResult:
    out: Path
    format: str
    files: list[str]
    task: str
    classes: list[str]
    input: dict | None = None
    output: dict | None = None
    exporter: str | None = None
    opset: int | None = None
    inputs_used: str = ""
    device: str = "cpu"  # where the graph was traced and checked (a cuda .pt2 runs on cuda)
    checks: list[dict] = field(default_factory=list)  # {"what", "batch", "max_abs_diff", "tolerance"}
    notes: list[str] = field(default_factory=list)


def export(target: Path, format: str, out: Path | None = None, opset: int | None = None,
           device: str = "cpu") -> ExportResult:
    """Export a run directory, checkpoint or export folder as `format` into `out` (default <run>/export),
    traced and checked on `device` (cpu, cuda or auto)."""
    notes = []
    if format in ALIASES:
        notes.append(f"--format {format} is the old name of --format {ALIASES[format]}: it writes a torch.export "
                     f"program (model.pt2), not TorchScript")
        format = ALIASES[format]
    if format not in FORMATS:
        raise UserError(f"--format {format}: unknown format; choose one of {', '.join(FORMATS)}")
    if opset is not None and format != "onnx":
        raise UserError(f"--opset applies to --format onnx only, not {format}")
    if format == "onnx":
        if device not in ("cpu", "auto"):  # auto: the CPU, as for every ONNX export
            raise UserError(f"--format onnx --device {device}: ONNX graphs are made and checked on the CPU, "
                            f"where ONNX Runtime runs them; drop --device (torch-export and safetensors take it)")
        device = "cpu"
        onnx_file.require(opset)
    device = resolve_device(device, "--device")
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such run directory, checkpoint or export folder")
    model, recipe, state, loaded = load_model_from(target, device)
    task = recipe.task.name
    built = build_task(recipe, described_dataset(state), transform=None)
    built.check_exportable(target, format)
    out = _folder_of(Path(out) if out is not None else _default_out(target, loaded))
    with writing(out, "or give --out elsewhere"):
        swap.recover(out)  # a killed export's leftovers: its old folder back in place, dead temporaries gone
    _check_out(out)

    classes = list(state["classes"])
    result = ExportResult(out, format, [], task, classes, notes=notes, device=device.type)
    samples, result.inputs_used = _check_samples(recipe, state)
    transform = InputTransform(state["input_spec"], state.get("normalization"), device, recipe.data)
    with torch.no_grad():
        built.transform = transform
        eager = {batch: model(*built.model_inputs(torch.from_numpy(samples[:batch]).to(device))).cpu()
                 for batch in CHECK_BATCHES}

    # the whole folder is built and checked beside its place (same disk: the swap is a rename), then swapped in
    staging = temporary_sibling(out)
    try:
        with writing(out, "or give --out elsewhere"):
            out.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
            if format != "safetensors":
                _graph_files(Deployable(model, transform).eval(), staging, format, opset, samples, eager, result)
                result.input = input_description(state["input_spec"], getattr(recipe.data, "num_points", None))
                result.output = built.output_description(classes)
                write_text_atomic(staging / EXPORT_INFO, json_text(_export_info(result), indent=2) + "\n")
            write_folder(model, recipe, state, staging)
            _check_round_trip(staging, built, samples, eager, result, device)
            result.files = sorted(path.name for path in staging.iterdir())
            swap.replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after a swap; after a failure nothing is kept
    return result


def _default_out(target: Path, loaded) -> Path:
    if is_export_folder(target):
        return target  # re-exported in place (the model is in memory; the folder is replaced as a whole)
    return (target if target.is_dir() else run_dir_of(loaded.path)) / "export"


def _folder_of(out: Path) -> Path:
    """The folder to replace: a link to one is followed, so the link stays and points at the new export."""
    return out.resolve() if out.is_symlink() else out


def _check_out(out: Path) -> None:
    """The folder is replaced as a whole, so it must be new, empty, or an export that perceiver export
    wrote holding nothing else: a folder with anyone else's files in it is refused, nothing touched."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder (it is created, or an earlier export there is replaced)")
    try:
        names = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    except OSError as exc:
        raise UserError(f"--out {out}: cannot list it ({exc.strerror}); give a folder you can read and write") from None
    if not names or _is_our_export(out, names):
        return
    theirs = [name for name in names if name not in EXPORT_FILES] or names
    shown = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
    raise UserError(f"--out {out} holds files that perceiver export did not write ({shown}); nothing was touched: give a "
                    f"new or empty folder, or move them out (an export replaces its folder as a whole)")


def _is_our_export(out: Path, names: list[str]) -> bool:
    """Only files an export writes, as plain files, with a config.json of our format."""
    if not set(names) <= EXPORT_FILES or any((out / name).is_symlink() or not (out / name).is_file() for name in names):
        return False
    try:
        return json.loads((out / CONFIG).read_text()).get("format") == EXPORT_FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def _check_samples(recipe, state) -> tuple[np.ndarray, str]:
    """The first samples of the run's prepared test (or val) split, as stored; generated ones of the
    input spec when that dataset is not here."""
    count = max(CHECK_BATCHES)
    try:
        x, _, split = split_samples(recipe, state, None)
    except (UserError, OSError) as exc:
        return generated_samples(state["input_spec"], count), f"generated {state['input_spec']['kind']} ({exc})"
    if len(x) == 0:
        return generated_samples(state["input_spec"], count), f"generated {state['input_spec']['kind']} (the {split} split is empty)"
    taken = np.asarray(x[:count])
    repeats = -(-count // len(taken))  # a split smaller than the largest check batch is repeated
    shown = f"{len(taken)} {split} samples of {state['dataset']}" + (f", repeated to {count}" if repeats > 1 else "")
    return np.concatenate([taken] * repeats)[:count], shown


def _graph_files(module: Deployable, folder: Path, format: str, opset, samples, eager, result: ExportResult) -> None:
    """Export the graph into the folder being built and check it."""
    device = next(module.parameters()).device
    example = torch.from_numpy(samples[:2]).to(device)  # a batch of 2: size 1 would be specialised as a constant
    exported, traced_module, notes = program.export_program(module, example)
    result.notes += notes
    input_name = "points" if module.is_points else "images"
    if format == "onnx":
        path = folder / "model.onnx"
        result.exporter, notes = onnx_file.write_onnx(exported, traced_module, example, path, opset, input_name)
        result.notes += notes
        result.opset = onnx_file.opset_of(path)
        run = lambda x: torch.from_numpy(onnx_file.run_onnx(path, x))  # noqa: E731
        what = "ONNX Runtime"
    else:
        path = folder / "model.pt2"
        program.save_program(exported, path)
        result.exporter = "torch.export (model.pt2; load with torch.export.load)"
        run = lambda x: program.run_program_file(path, torch.from_numpy(x).to(device)).cpu()  # noqa: E731
        what = "torch.export"
    for batch in CHECK_BATCHES:
        got = run(samples[:batch])
        diff = (got.float() - eager[batch]).abs().max().item() if got.shape == eager[batch].shape else float("inf")
        tolerance = TOLERANCE * max(1.0, eager[batch].abs().max().item())
        result.checks.append({"what": f"{what} vs PyTorch", "batch": batch, "max_abs_diff": diff, "tolerance": tolerance})
        if not diff <= tolerance:
            raise UserError(f"the exported {path.name} differs from PyTorch by {diff:.3g} at batch {batch} (tolerance "
                            f"{tolerance:.3g}, {result.inputs_used}); nothing was written. Please report it with the "
                            f"output of --debug")


def _export_info(result: ExportResult) -> dict:
    return {"format": result.format, "device": result.device, "exporter": result.exporter, "opset": result.opset, "torch": torch.__version__,
            "input": result.input, "output": result.output, "classes": result.classes,
            "preprocessing": "inside the graph (feed stored samples as the input says)",
            "check": {"inputs": result.inputs_used, "runs": result.checks}, "notes": result.notes}


def _check_round_trip(folder: Path, task, samples, eager, result: ExportResult, device: torch.device) -> None:
    """The folder as perceiver_cli.load reads it gives the very same logits (same bits) on the same device."""
    model, _, _ = load_folder(folder, device)
    batch = max(CHECK_BATCHES)
    with torch.no_grad():
        same = torch.equal(model(*task.model_inputs(torch.from_numpy(samples[:batch]).to(device))).cpu(), eager[batch])
    result.checks.append({"what": "safetensors folder reloaded vs PyTorch", "batch": batch, "identical": same})
    if not same:
        raise UserError(f"{result.out}: the reloaded weights do not give the run's logits; nothing was written. Please report it")

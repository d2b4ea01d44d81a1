"""The model as one torch.export program with a dynamic batch axis: what the ONNX
file is translated from and what --format torchscript saves (model.pt2)."""

from __future__ import annotations

import io
import re

import torch

from ..atomic import write_bytes_atomic
from .graph import with_plain_attention


def dynamic_shapes() -> tuple[dict, ...]:
    """Any batch size. The rest is the stored sample's shape: a point count that may vary trips a
    guard of the first-num_points slice (whether it cuts anything), and an image's grid is fixed."""
    return ({0: torch.export.Dim("batch", min=1)},)


def export_program(module: torch.nn.Module, example: torch.Tensor) -> tuple[torch.export.ExportedProgram, torch.nn.Module, list[str]]:
    """(program, the module it was made from, notes). torch.export checks every guard against the
    whole batch range, so a program that comes back is right for any batch size. Where the model's
    fast CPU paths cannot be exported so (the split key/value projection works in slabs whose count
    depends on the batch size), the program is made from the plain attention path instead."""
    shapes = dynamic_shapes()
    try:
        return _export(module, example, shapes), module, []
    except Exception as exc:  # noqa: BLE001  any failure of the fast path: the plain one is the same math
        plain = with_plain_attention(module).eval()
        reason = short_reason(exc)
        program = _export(plain, example, shapes)
        return program, plain, [f"the grid attention / split key-value projection did not export with a dynamic batch "
                                f"({reason}); exported the plain attention path (the same attention)"]


def short_reason(exc: Exception) -> str:
    """An exporter's failure in a few words: its type and first sentence."""
    first = re.split(r"(?<=[.!?])\s", (str(exc).strip().splitlines() or [""])[0])[0]
    return f"{type(exc).__name__}: {first[:120]}"


def _export(module, example, shapes) -> torch.export.ExportedProgram:
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=shapes, strict=False)


def save_program(program: torch.export.ExportedProgram, path) -> None:
    """model.pt2, serialised in memory and written by Python: torch's own file writer aborts the
    process (SIGABRT in c10) when the disk fills, where Python's raises an OSError the CLI can report."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def run_program_file(path, x: torch.Tensor) -> torch.Tensor:
    """Load a saved model.pt2 as a deployer would and run it."""
    with torch.no_grad():
        return torch.export.load(str(path)).module()(x)

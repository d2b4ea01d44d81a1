"""`perceiver export`: a trained run as a folder to deploy (safetensors + config.json, plus ONNX or
a torch.export program), each file checked against PyTorch at export time."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import tables
from .errors import user_errors


class Format(str, Enum):
    onnx = "onnx"
    safetensors = "safetensors"
    torch_export = "torch-export"
    torchscript = "torchscript"  # the first name of torch-export, kept as an alias (it says what it writes)


class ExportDevice(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


@user_errors("export")
def export_command(
    target: Path = typer.Argument(..., help="A run directory (uses checkpoints/best.pt), a checkpoint .pt file or an export folder."),
    format: Format = typer.Option(..., "--format", help="safetensors: weights + config.json (what perceiver_cli.load reads); onnx: also model.onnx; torch-export: also model.pt2 (torch.export, which replaces the deprecated torch.jit; 'torchscript' is its old name). Each graph is checked against PyTorch."),
    out: Optional[Path] = typer.Option(None, "--out", help="Export folder (replaced as a whole).  \\[default: <run>/export]"),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset version (--format onnx).  \\[default: torch's]"),
    device: ExportDevice = typer.Option(ExportDevice.cpu, "--device", help="Device the graph is traced and checked on (a torch-export model.pt2 made on cuda runs on cuda; ONNX is made on the CPU)."),
):
    """Write a trained model for deployment: the exported graph takes stored samples (uint8 B H W C images, float32 B N 3+F points), normalisation included."""
    from ..export import export

    tables.export(export(target, format.value, out, opset, device.value))

"""model.onnx: translated from the torch.export program (the dynamo exporter), or where that fails by
the older TorchScript-based exporter, and run back in onnxruntime for the export-time check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .program import short_reason

INSTALL = "pip install 'perceiver-cli[onnx]'"
# the dynamo exporter writes opset 18 and later (onnxscript's); ONNX_MAX_OPSET is the newest torch knows
MIN_OPSET = 18
TORCHSCRIPT_MAX_OPSET = 20  # the TorchScript-based exporter's newest


def max_opset() -> int:
    from torch.onnx import _constants

    return _constants.ONNX_MAX_OPSET


def require(opset: int | None) -> None:
    """Refuse before any work: an opset torch cannot write, or the ONNX packages missing."""
    if opset is not None and not MIN_OPSET <= opset <= max_opset():
        raise UserError(f"--opset {opset} is out of range: torch {torch.__version__.split('+')[0]} exports opsets "
                        f"{MIN_OPSET} to {max_opset()}; leave --opset out for its default")
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise UserError(f"--format onnx needs the {package} package, which is not installed: {INSTALL}") from None


def write_onnx(program, module: torch.nn.Module, example: torch.Tensor, path: Path, opset: int | None,
               input_name: str) -> tuple[str, list[str]]:
    """Write `path` (one file: weights inside). Returns (exporter used, notes)."""
    names = {"input_names": [input_name], "output_names": ["logits"]}
    try:
        torch.onnx.export(program, (example,), str(path), dynamo=True, opset_version=opset, external_data=False,
                          verbose=False, **names)
        exporter, notes = "dynamo (torch.export)", []
    except Exception as exc:  # noqa: BLE001  the older exporter is the documented fallback
        fallback_opset = min(opset or TORCHSCRIPT_MAX_OPSET, TORCHSCRIPT_MAX_OPSET)
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=fallback_opset,
                              dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}}, **names)
        exporter = "TorchScript-based (torch.onnx, dynamo=False)"
        notes = [f"the dynamo exporter failed ({short_reason(exc)}); used the TorchScript-based exporter"
                 + (f" at opset {fallback_opset}, its newest" if opset and opset > fallback_opset else "")]
    _name_batch_axis(path)
    return exporter, notes


def _name_batch_axis(path: Path) -> None:
    """Call the dynamic first axis 'batch' in the file (torch.export names it after its symbol, s0 or s77)."""
    import onnx

    model = onnx.load(str(path))
    symbols = {value.type.tensor_type.shape.dim[0].dim_param for value in model.graph.input}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols - {""}:
                dim.dim_param = "batch"
    onnx.save(model, str(path))


def opset_of(path: Path) -> int:
    import onnx

    return next(entry.version for entry in onnx.load(str(path), load_external_data=False).opset_import if entry.domain in ("", "ai.onnx"))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """The file's output for stored samples x, in onnxruntime on the CPU, as a deployer runs it."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]

"""`perceiver export`: a trained run as a folder to deploy (run.py), its graph with the input
preprocessing inside (graph.py), as a torch.export program (program.py) and an ONNX file (onnx_file.py)."""

from .run import FORMATS, TOLERANCE, ExportResult, export

__all__ = ["export", "ExportResult", "FORMATS", "TOLERANCE"]

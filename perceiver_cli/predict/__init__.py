"""`perceiver predict` and `perceiver_cli.load`: a trained model on a user's own files."""

from .model import LoadedModel, load

__all__ = ["LoadedModel", "load"]

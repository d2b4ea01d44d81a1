"""What the byte-stream tasks (causal_lm, mlm) share: a dataset from `perceiver prepare text`, each
split read as one stream of bytes (memory-mapped), the window of task.context bytes, no files to
predict on (they take prompts), and a bar chart of their figures for eval."""

from __future__ import annotations

import numpy as np

from ..data.text import stream_of
from ..errors import UserError
from .base import Task


class ByteStreamTask(Task):
    min_stream = 2  # bytes a split's stream needs for one sample

    @classmethod
    def check_dataset(cls, dataset):
        if dataset.input_spec.get("kind") != "bytes":
            raise UserError(f"task.name={cls.name} reads a byte stream; '{dataset.name}' holds "
                            f"{dataset.input_spec.get('kind')}s: prepare one with `perceiver prepare text`")

    def __init__(self, recipe, dataset, transform):
        super().__init__(recipe, dataset, transform)
        self.context = recipe.task.context
        self._streams = {}

    def stream(self, split: str) -> np.ndarray:
        """A split's bytes end to end (memory-mapped), read once."""
        if split not in self._streams:
            stream = stream_of(self.dataset.split(split))
            if len(stream) < self.min_stream:
                raise UserError(f"dataset '{self.dataset.name}': its {split} stream has {len(stream):,} bytes, fewer "
                                f"than a sample needs ({self.min_stream:,}); prepare more text or lower task.context")
            self._streams[split] = stream
        return self._streams[split]

    def validation_split(self) -> str:
        return "val" if "val" in self.dataset.splits else "train"

    def input_reader(self, source):
        return None  # it reads prompts or streams, not files

    def check_exportable(self, target, format):
        if format != "safetensors":
            raise UserError(f"{target}: export writes image and point models as graphs; --format safetensors writes "
                            f"this {self.name} run's weights")


def bar_figure(values: dict, ylabel: str, title: str, ylim=None):
    """A bar per figure, the first one (this run's) coloured, each labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(list(values), list(values.values()), color=["tab:blue"] + ["tab:grey"] * (len(values) - 1))
    ax.bar_label(bars, fmt="%.3f")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig

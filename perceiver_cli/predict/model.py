"""A trained model with its preprocessing: what `perceiver_cli.load` returns and `perceiver predict` runs.

    model = perceiver_cli.load("runs/cifar10_cpu")      # a run directory, a .pt or an export folder
    model.predict(["cat.jpg", "dog.png"])                # [{"input", "class", "probability", "top_k"}, ...]
    logits = model(batch)                                # the network itself, on prepared inputs

Files are read as the run's prepared data was (data/inputs.py, from what the checkpoint records),
then normalised as training normalised them (engine.runtime.InputTransform).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..console import track
from ..data.inputs import Sample, Unreadable, expand
from ..engine.runtime import InputTransform, as_tensor, predict, resolve_device, use_bf16
from ..errors import UserError
from ..runs.exported import load_model_from
from ..runs.schema import check_finite
from ..runs.trained import described_dataset
from ..tasks import build_task


@dataclass
class Read:
    samples: list[Sample] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"input", "reason"}: reported, never the end of the batch

    def stored(self) -> np.ndarray:
        return np.stack([s.array for s in self.samples])


class LoadedModel(nn.Module):
    """The network (`module`; calling this model calls it) with its recipe, classes and preprocessing."""

    def __init__(self, module: nn.Module, recipe, state: dict, device: torch.device, path: Path):
        super().__init__()
        self.module = module
        self.recipe, self.state, self.path, self.device = recipe, state, Path(path), device
        self.classes = list(state["classes"])
        self.transform = InputTransform(state["input_spec"], state["normalization"], device, recipe.data)
        self.task = build_task(recipe, described_dataset(state), self.transform)
        self.reader = self.task.input_reader(state.get("source") or _prepared_source(recipe, state))
        self.bf16 = use_bf16(recipe.train.precision, device)  # as eval runs it

    def forward(self, *inputs):
        return self.module(*inputs)

    def generate(self, prompt: str | bytes = "", **options):
        """The text that follows `prompt`, piece by piece as it is sampled (a causal_lm run:
        max_bytes, temperature, top_k, top_p, seed; see tasks/causal_lm.py)."""
        return self.task.generate(self.module, prompt, **options)

    def read(self, inputs, progress: str | None = None) -> Read:
        """Every input file under `inputs` (files, folders, zips) as prepared samples; unreadable ones skipped."""
        read = Read()
        for sample in self.samples(inputs, read.skipped, progress):
            read.samples.append(sample)
        return read

    def samples(self, inputs, skipped: list[dict], progress: str | None = None) -> Iterator[Sample]:
        """The samples of `inputs`, one at a time: files, folders and zips (read as prepare read the
        run's data), or images in memory (PIL images, numpy arrays, torch tensors; a 4-d array or tensor
        is a batch of them); what cannot be read goes to `skipped`, with the reason."""
        given = [inputs] if isinstance(inputs, (str, Path)) or in_memory(inputs) else list(inputs)
        if any(in_memory(item) for item in given):  # in the order given, objects and files alike
            for index, item in enumerate(given):
                if in_memory(item):
                    yield from self._objects(item, f"<input {index}>", skipped)
                else:
                    yield from self.samples(item, skipped)
            return
        paths = [Path(p) for p in given]
        with expand(paths, self.reader.kinds) as (files, others):
            skipped += others
            for found in track(files, progress, total=len(files)) if progress else files:
                try:
                    yield from self.reader.read(found.name, found.read())
                except Unreadable as exc:
                    skipped.append({"input": found.name, "reason": str(exc)})
                except OSError as exc:
                    skipped.append({"input": found.name, "reason": f"cannot read it ({exc.strerror or exc})"})

    def _objects(self, item, name: str, skipped: list[dict]) -> Iterator[Sample]:
        """An image in memory, read as a file of it would be: the same resizing and channels."""
        images = as_images(item)
        if images is None:
            skipped.append({"input": name, "reason": "an array of this shape is not an image (H W, H W C, C H W, "
                                                     "or a batch of them: B H W C / B C H W)"})
            return
        if "image" not in self.reader.kinds:
            skipped.append({"input": name, "reason": "this run reads meshes or volumes, not images: give files"})
            return
        for index, image in enumerate(images):
            label = name if len(images) == 1 else f"{name}[{index}]"
            try:  # read as a PNG file of it would be (a slice run reads PNG slices), named as given
                for sample in self.reader.read(f"{label}.png", png_bytes(image)):
                    sample.name = label
                    yield sample
            except Unreadable as exc:
                skipped.append({"input": label, "reason": str(exc)})

    def logits(self, stored: np.ndarray, batch_size: int = 64, mask_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The model's outputs for prepared samples (as eval computes them), fp32 on the CPU. A
        segmentation model answers at any `mask_size` (its queries are positions: Perceiver IO)."""
        self.task.check_output_size(mask_size)
        size = () if mask_size is None else (tuple(mask_size),)
        return predict(self.module, as_tensor(stored, self.device), self.transform, batch_size, self.bf16, self.device,
                       *size).cpu()

    def predict(self, inputs, top_k: int = 3, batch_size: int = 64, skipped: list[dict] | None = None,
                progress: str | None = None, mask_size: tuple[int, int] | None = None) -> list[dict]:
        """One row per input sample (then one per volume: its slices' summary), in input order. Files are
        read and run a batch at a time; those that cannot be read are appended to `skipped`. A
        segmentation run's masks come at `mask_size` (H, W) when given, else at its input size."""
        rows = list(self.rows(inputs, top_k, batch_size, skipped, progress, mask_size))
        return rows + self.volume_rows(rows, top_k)

    def rows(self, inputs, top_k: int = 3, batch_size: int = 64, skipped: list[dict] | None = None,
             progress: str | None = None, mask_size: tuple[int, int] | None = None) -> Iterator[dict]:
        """predict's per-sample rows as each batch is run (a caller can write them and let them go)."""
        self.task.check_predicts()
        self.task.check_output_size(mask_size)  # before any file is read
        skipped = [] if skipped is None else skipped
        batch = []
        for sample in self.samples(inputs, skipped, progress):
            batch.append(sample)
            if len(batch) == batch_size:
                yield from self._predict_batch(batch, top_k, mask_size)
                batch = []
        if batch:
            yield from self._predict_batch(batch, top_k, mask_size)

    def volume_geometry(self, volume: str):
        """Where a volume's slices came from (data/inputs.VolumeGeometry), once it has been read; else None."""
        return getattr(self.reader, "geometry", {}).get(volume)

    def _predict_batch(self, samples: list[Sample], top_k: int, mask_size=None) -> list[dict]:
        outputs = self.logits(np.stack([s.array for s in samples]), len(samples), mask_size)
        return [{"input": s.name, **({"volume": s.volume, "slice": s.index} if s.volume else {}), **p}
                for s, p in zip(samples, self.task.predictions(outputs, top_k))]

    def volume_rows(self, rows: list[dict], top_k: int) -> list[dict]:
        """Per volume, one row summarising its slices (for tasks that have a summary)."""
        volumes: dict[str, list[dict]] = {}
        for row in rows:
            if "volume" in row:
                volumes.setdefault(row["volume"], []).append(row)
        summaries = []
        for volume, slices in volumes.items():
            summary = self.task.volume_summary(slices, top_k)
            if summary is not None:
                summaries.append({"input": volume, "slices": len(slices), **summary})
        return summaries


def in_memory(item) -> bool:
    """A PIL image, numpy array or torch tensor (not a path)."""
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return True
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(item, Image.Image)


def as_images(item) -> list | None:
    """PIL images or H W C uint8 arrays, one per image in `item`; None when its shape is not an image's.
    Tensors may be C H W (torchvision's layout), floats are taken in [0, 1] as torchvision gives them."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return [item]
    array = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
    if array.ndim == 3 and array.shape[0] not in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array[..., None]  # B H W: a batch of grey images
    elif array.ndim in (2, 3):
        array = array[None] if array.ndim == 3 else array[None, ..., None]
    if array.ndim != 4:
        return None
    channels_first = array.shape[1] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4)
    if channels_first:
        array = array.transpose(0, 2, 3, 1)  # B C H W -> B H W C
    if array.shape[-1] not in (1, 3, 4):
        return None
    if array.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0 else 1.0
        array = (array.astype(np.float64) * scale).round().clip(0, 255).astype(np.uint8)
    return [a[..., 0] if a.shape[-1] == 1 else a for a in array]


def png_bytes(image) -> bytes:
    """An image (PIL, or an H W / H W C uint8 array) as PNG: read by the run's reader like a file."""
    import io

    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _prepared_source(recipe, state: dict) -> dict:
    """For checkpoints from before they recorded it: how the run's own prepared data was made, when it
    is still where the recipe points and matches the checkpoint; else nothing (images then read at
    the model's input size, meshes sampled with seed 0)."""
    from ..data.prepared import read_manifest
    from ..data.sources import prepared_root

    try:
        manifest = read_manifest(prepared_root(recipe.data))
    except (UserError, OSError, ValueError):
        return {}
    same = manifest.get("input") == state["input_spec"] and list(manifest.get("classes", [])) == list(state["classes"])
    return dict(manifest.get("source") or {}) if same else {}


def load(path, device: str = "auto") -> LoadedModel:
    """A run directory (its best checkpoint), a checkpoint .pt or an export folder, ready to predict."""
    torch_device = resolve_device(device, "--device")
    module, recipe, state, loaded = load_model_from(Path(path), torch_device)
    if loaded is not None:  # a checkpoint (an export folder's weights were checked as it was read)
        check_finite(module.state_dict(), loaded.path, "use the run's other checkpoint, or train it again")
        loaded.tell()
    return LoadedModel(module, recipe, state, torch_device, Path(path)).eval()

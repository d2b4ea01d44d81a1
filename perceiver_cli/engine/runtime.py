"""Where and how tensors run: device, bf16 autocast, turning stored arrays into model inputs, batched prediction."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning large blocks to the OS.

    Training allocates the same large activations every step; by default each one is a fresh
    mmap that is page-faulted in again, which made elementwise ops on a 128 MB activation ~3x
    slower on CPU (74 ms vs 25 ms measured). A no-op where glibc is not the allocator."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: serve large blocks from the heap
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: do not give the heap back
    except (OSError, AttributeError):
        pass


def resolve_device(choice: str, asked: str = "train.device") -> torch.device:
    """`asked`: where the choice came from, for the error line (a recipe key, or a command's --device)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{asked}=cuda but no CUDA device is visible; use --device cpu or auto")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def cpu_has_bf16_units() -> bool:
    """True on CPUs with bf16 matrix instructions (AMX-BF16 or AVX512-BF16). Elsewhere torch
    emulates bf16 matmuls, ~100x slower than fp32 (measured on an AVX2-only EPYC: 0.8 vs 100 GFLOP/s)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch._C._cpu, probe, None)
        if fn is not None and fn():
            return True
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = cpuinfo.read_text(errors="ignore")
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def use_bf16(choice: str, device: torch.device) -> bool:
    if choice == "fp32":
        return False
    if choice == "bf16":
        return True
    return device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_has_bf16_units()


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class InputTransform:
    """Stored arrays -> model inputs: uint8 images to normalised floats; point clouds to the
    recipe's point count and scaling (unit sphere as prepared, or unit cube); other floats as they are."""

    def __init__(self, input_spec: dict, normalization: dict | None, device: torch.device, data_config=None):
        self.is_points = input_spec["kind"] == "points"
        self.mean = self.std = None
        if normalization:
            self.mean = torch.tensor(normalization["mean"], device=device)
            self.std = torch.tensor(normalization["std"], device=device)
        self.num_points = getattr(data_config, "num_points", None)
        self.cube = getattr(data_config, "point_scaling", "sphere") == "cube"

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.is_points:
            return self._points(batch)
        if batch.dtype == torch.uint8:
            x = batch.float().div_(255.0)
            return (x - self.mean) / self.std if self.mean is not None else x
        return batch.float()

    def _points(self, batch: torch.Tensor) -> torch.Tensor:
        """B N 3+F clouds: the first num_points (prepared points are random samples already), scaled."""
        x = batch.float()[:, : self.num_points]
        if self.cube:  # centred clouds: dividing by the largest |coordinate| fits them in [-1, 1]^3
            xyz = x[..., :3]
            x = torch.cat([xyz / xyz.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12), x[..., 3:]], dim=-1)
        return x


def as_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def array_batches(x, batch_size: int, device, *others):
    """(start, stored batch on `device`, the same rows of each of `others`) over the rows of x (a numpy
    array, memory-mapped or not, or a tensor)."""
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        parts = [p[rows] if isinstance(p, torch.Tensor) else as_tensor(p[rows], device) for p in (x, *others)]
        yield (start, *(p.to(device, non_blocking=True) for p in parts))


def run_model(model, batches, inputs_of, bf16: bool, device):
    """The one way a model runs over batches outside its training steps (validation, eval, attention
    capture, predict): eval mode, no gradients, autocast; `inputs_of(batch)` gives (the model's
    inputs, anything to pass along); yields (the output in fp32, that). The model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs, carry = inputs_of(batch)
            with torch.no_grad(), autocast(device, bf16):
                output = model(*inputs)
            yield (output.float() if isinstance(output, torch.Tensor) else output), carry
    finally:
        model.train(was_training)


def predict(model, x: torch.Tensor, transform: InputTransform, batch_size: int, bf16: bool, device,
            *model_args) -> torch.Tensor:
    """Logits (N, classes) in fp32 for stored inputs x, in batches, model in eval mode; `model_args`
    follow each batch into the model (a segmentation model's output size)."""
    outputs = [output for output, _ in run_model(model, array_batches(x, batch_size, device),
                                                  lambda batch: ((transform(batch[1]), *model_args), None), bf16, device)]
    return torch.cat(outputs) if outputs else torch.empty(0)

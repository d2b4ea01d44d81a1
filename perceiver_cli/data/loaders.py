"""Batches for training and validation, from arrays held on the device or streamed from disk.

Both loaders walk the same order: one seeded permutation per (seed, epoch), cut into global batches
of `batch_size`, of which each rank takes its own contiguous part. So any residency and any world
size sees the same global batches, and a resumed run sees what it would have seen.

    ResidentLoader   the arrays as tensors on the device (uint8 images stay uint8); a batch is indexing
    StreamLoader     the arrays as they are (np.load(mmap_mode="r") for data larger than memory); each
                     batch is gathered (indices sorted, so the reads run forward through the file) by
                     background threads into pinned memory, copied non_blocking, prefetched ahead

Each yields (x, y, index) on the loader's device: the rank's rows, their labels, and their positions
in the loader's arrays; the two give identical bytes.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

import numpy as np
import torch

from ..errors import UserError
from .memory import available_bytes, size_text

RESIDENCIES = ("auto", "device", "host", "stream")
FITS_WELL = 0.5  # "auto" keeps data resident only when it takes at most this share of the free memory
THREAD_PREFIX = "perceiver-loader"


class Batch(NamedTuple):
    x: torch.Tensor  # the rank's rows, as stored (uint8 images)
    y: torch.Tensor  # their labels (int64)
    index: torch.Tensor  # their positions in the loader's arrays (int64)


def epoch_order(seed: int, epoch: int, n: int) -> tuple[torch.Tensor, torch.Generator]:
    """The epoch's permutation of 0..n-1 and the generator that drew it (augmentation draws on from
    it): what the Trainer has always drawn, so runs and resumes stay bit-identical."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator), generator


def rank_batch_size(batch_size: int, world: int) -> int:
    """Each rank's share of the global train.batch_size; refused when the ranks cannot share it evenly."""
    if batch_size % world:
        lower, upper = batch_size // world * world, (batch_size // world + 1) * world
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise UserError(f"train.batch_size {batch_size} is the global batch and must divide evenly among the "
                        f"{world} ranks (world size {world}); set train.batch_size to a multiple of {world}, "
                        f"e.g. {nearest}")
    return batch_size // world


def rank_part(length: int, rank: int, world: int) -> slice:
    """This rank's contiguous rows of a global batch of `length`: batch/world each for a full batch;
    a short last batch is shared as evenly as it goes (so sums, not means, add up across ranks)."""
    return slice(length * rank // world, length * (rank + 1) // world)


def choose_residency(residency: str, nbytes: int, device: torch.device | str) -> tuple[str, str]:
    """("device" | "host" | "stream", why) for data.residency and a dataset of `nbytes`; the why is for train.log."""
    if residency not in RESIDENCIES:
        raise UserError(f"data.residency {residency!r}: must be one of {', '.join(RESIDENCIES)}")
    if residency != "auto":
        return residency, f"data.residency={residency} (as set)"
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        where = f"free on {device}"
    else:
        free = available_bytes()
        where = "of memory available"
    if free is None:  # nothing to go by: today's path
        return "device", f"data.residency=auto: {size_text(nbytes)} of data, free memory unknown: resident on {device}"
    if nbytes <= FITS_WELL * free:
        return "device", f"data.residency=auto: {size_text(nbytes)} of data fits well in the {size_text(free)} {where}: resident"
    return "stream", (f"data.residency=auto: {size_text(nbytes)} of data is more than {FITS_WELL:.0%} of the "
                      f"{size_text(free)} {where}: streamed from disk")


class Epoch:
    """One pass of a loader: iterate for Batches; `generator` is the one that drew the order.
    Closing it (or leaving a `with` block, or an exception) stops its background threads."""

    def __init__(self, batches: Iterator[Batch], steps: int, generator: torch.Generator | None):
        self._batches, self.steps, self.generator = batches, steps, generator

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return next(self._batches)

    def __len__(self) -> int:
        return self.steps

    def close(self) -> None:
        self._batches.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Loader:
    """What both loaders share: the order, the sharding, the steps. `rows` restricts the arrays to
    those rows (e.g. train without its held-out share): the resident loader copies them to the
    device, the streamed one reads them where they are."""

    def __init__(self, x, y, batch_size: int, seed: int, device, rank: int = 0, world: int = 1, rows=None):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.device = torch.device(device)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.n = len(y) if rows is None else len(self.rows)
        self.steps_per_epoch = math.ceil(self.n / batch_size)

    def global_batch(self, step: int) -> int:
        """How many rows the global batch of `step` has (the last one may be short)."""
        return min(self.batch_size, self.n - step * self.batch_size)

    def part(self, step: int) -> slice:
        """Which rows of the global batch of `step` are this rank's (e.g. for augmentation drawn for the global batch)."""
        return rank_part(self.global_batch(step), self.rank, self.world)

    def epoch(self, epoch: int, start_step: int = 0) -> Epoch:
        """The shuffled batches of `epoch`, this rank's part of each, from step `start_step` on (resume)."""
        order, generator = epoch_order(self.seed, epoch, self.n)
        batches = order.split(self.batch_size)[start_step:]
        parts = [batch[rank_part(len(batch), self.rank, self.world)] for batch in batches]
        return Epoch(self._iterate(parts), len(parts), generator)

    def in_order(self, batch_size: int) -> Epoch:
        """Every row once, in stored order (validation, eval): global batches of `batch_size`, this rank's
        part of each, so per-rank sums add up to the whole. Empty parts are left out."""
        parts = []
        for start in range(0, self.n, batch_size):
            part = rank_part(min(batch_size, self.n - start), self.rank, self.world)
            if part.stop > part.start:
                parts.append(slice(start + part.start, start + part.stop))
        return Epoch(self._iterate(parts), len(parts), None)

    def _iterate(self, parts: list) -> Iterator[Batch]:
        raise NotImplementedError


def _positions(part) -> torch.Tensor:
    return torch.arange(part.start, part.stop) if isinstance(part, slice) else part


class ResidentLoader(Loader):
    """The arrays on the device, batches by indexing (the fast path while the data fits)."""

    def __init__(self, x, y, batch_size: int, seed: int, device, rank: int = 0, world: int = 1, rows=None):
        super().__init__(x, y, batch_size, seed, device, rank, world, rows)
        if self.rows is not None:
            x, y = x[self.rows], y[self.rows]
        self.x, self.y = _on_device(x, self.device), _on_device(y, self.device)
        self.nbytes = self.x.nbytes

    def _iterate(self, parts: list) -> Iterator[Batch]:
        on_device = [part if isinstance(part, slice) else part.to(self.device) for part in parts]  # one copy of the order
        for part in on_device:
            yield Batch(self.x[part], self.y[part], _positions(part).to(self.device))


def _on_device(array: np.ndarray, device: torch.device, chunk_bytes: int = 1 << 28) -> torch.Tensor:
    """A tensor on `device` with the array's bytes; read in chunks so a memory-mapped file is never copied whole to RAM."""
    if device.type == "cpu":  # a read-only (memory-mapped) array is copied: tensors may be written to
        return torch.from_numpy(np.ascontiguousarray(array) if array.flags.writeable else np.array(array))
    out = torch.empty(array.shape, dtype=_torch_dtype(array), device=device)
    rows = max(1, chunk_bytes // max(1, array[0].nbytes)) if len(array) else 1
    for start in range(0, len(array), rows):
        out[start : start + rows].copy_(torch.from_numpy(np.array(array[start : start + rows])))
    return out


def _torch_dtype(array: np.ndarray) -> torch.dtype:
    return torch.from_numpy(np.empty(0, array.dtype)).dtype


class StreamLoader(Loader):
    """Batches gathered from arrays in host memory or memory-mapped files (np.load(mmap_mode="r")) by
    `workers` threads, `prefetch` batches ahead (at least 2), into pinned memory when CUDA is there,
    then copied to the device without waiting. The labels are small: they are held in memory."""

    def __init__(self, x, y, batch_size: int, seed: int, device, rank: int = 0, world: int = 1, rows=None,
                 workers: int | None = None, prefetch: int | None = None):
        super().__init__(x, y, batch_size, seed, device, rank, world, rows)
        self.x, self.y = x, np.asarray(y)
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.prefetch = max(2, prefetch or 2 * self.workers)
        self.pin = torch.cuda.is_available()
        self.nbytes = self.n * (x[0].nbytes if len(x) else 0)

    def _gather(self, part) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of the rows of `part`, in its order, in (pinned) host memory; runs in a worker thread."""
        positions = part if isinstance(part, slice) else part.numpy()
        if self.rows is not None:
            positions = self.rows[positions]
        if isinstance(positions, slice):  # a run of rows: one forward read
            x = self.x[positions]
            out = torch.empty(x.shape, dtype=_torch_dtype(x), pin_memory=self.pin)
            out.numpy()[...] = x
            return out, torch.from_numpy(self.y[positions].astype(np.int64))
        ascending = np.argsort(positions, kind="stable")
        rows = np.take(self.x, positions[ascending], axis=0)  # sorted: the file is read front to back
        out = torch.empty(rows.shape, dtype=_torch_dtype(rows), pin_memory=self.pin)
        out.numpy()[ascending] = rows  # back into the batch's order
        return out, torch.from_numpy(self.y[positions].astype(np.int64))

    def _iterate(self, parts: list) -> Iterator[Batch]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix=THREAD_PREFIX)
        pending = deque()
        try:
            for part in parts[: self.prefetch]:
                pending.append(pool.submit(self._gather, part))
            for i, part in enumerate(parts):
                x, y = pending.popleft().result()
                if i + self.prefetch < len(parts):
                    pending.append(pool.submit(self._gather, parts[i + self.prefetch]))
                yield Batch(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),
                            _positions(part).to(self.device, non_blocking=True))
        finally:  # closed early, or an exception: no thread is left behind
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def make_loader(residency: str, x, y, batch_size: int, seed: int, device, rank: int = 0, world: int = 1,
                rows=None) -> Loader:
    """The loader for a residency that choose_residency decided: "device" resident, "host"/"stream" streamed."""
    cls = ResidentLoader if residency == "device" else StreamLoader
    return cls(x, y, batch_size, seed, device, rank, world, rows)


def loader_threads() -> list[threading.Thread]:
    """The loaders' live background threads (none once every epoch is finished or closed)."""
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]

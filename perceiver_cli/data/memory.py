"""Refusing, before any work, arrays that cannot fit in memory (instead of being OOM-killed midway)."""

from __future__ import annotations

import math
from pathlib import Path

import psutil

from ..errors import UserError


def available_bytes() -> int | None:
    """Memory this process can still take: the system's available memory (MemAvailable on Linux),
    capped by a cgroup (container) limit; None if unknown."""
    found = []
    try:
        found.append(psutil.virtual_memory().available)
    except OSError:  # e.g. no /proc mounted
        pass
    try:  # cgroup v2: the container's limit minus what it already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def size_text(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_fits(need: int, what: str, smaller: str, fits) -> None:
    """Refuse `what` when it needs `need` bytes and less is available now; `fits(share)` says what
    would fit in `share` (< 1) of the memory asked, e.g. a smaller size."""
    have = available_bytes()
    if have is not None and need > have:
        raise UserError(f"{what} would need at least {size_text(need)} of memory to prepare, and {size_text(have)} "
                        f"is available; give {smaller} (about {fits(have / need)} fits)")


def check_image_size(size: tuple[int, int], images: int, channels: int, copies: int = 2) -> None:
    """Refuse `--size HxW` when `images` uint8 images of that size, held at once (`copies` bytes of
    memory per byte of them), need more memory than is available now."""
    height, width = size

    def fits(share: float) -> str:  # both sides shrink alike
        scale = math.sqrt(share)
        return f"{max(1, int(height * scale))}x{max(1, int(width * scale))}"

    check_fits(copies * images * height * width * channels,
               f"--size {height}x{width}: {images:,} image{'s' if images != 1 else ''} of {height}x{width}x{channels}", "a smaller --size", fits)


# peak bytes per point while one mesh is sampled (trimesh's float64 temporaries; measured: 177)
SAMPLING_BYTES_PER_POINT = 180


def check_points(points: int, meshes: int, workers: int) -> None:
    """Refuse `--points N` when the float32 clouds of `meshes` meshes (held twice while stacked) and
    the sampling in `workers` processes at once cannot fit."""
    need = points * (2 * meshes * 3 * 4 + min(workers, meshes) * SAMPLING_BYTES_PER_POINT)
    check_fits(need, f"--points {points:,}: {meshes:,} meshes of {points:,} points", "fewer --points",
               lambda share: f"{max(1, int(points * share)):,}")

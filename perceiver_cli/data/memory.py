"""Refusing, before any work, arrays that cannot fit in memory (instead of being OOM-killed midway)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import UserError


def available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable, capped by a cgroup (container) limit; None if unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
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


def check_image_size(size: tuple[int, int], images: int, channels: int, copies: int = 2) -> None:
    """Refuse `--size HxW` when `images` uint8 images of that size, held `copies` times over while
    they are stacked into arrays, need more memory than is available now."""
    height, width = size
    need = copies * images * height * width * channels
    have = available_bytes()
    if have is None or need <= have:
        return
    scale = math.sqrt(have / need)
    fits = f"{max(1, int(height * scale))}x{max(1, int(width * scale))}"
    raise UserError(f"--size {height}x{width}: {images:,} images of {height}x{width}x{channels} would need at least "
                    f"{size_text(need)} of memory to prepare, and {size_text(have)} is available; give a smaller --size "
                    f"(about {fits} fits)")

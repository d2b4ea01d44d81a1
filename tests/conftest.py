"""Shared fixtures for the CLI, recipe and engine tests: a private working directory, tiny model
settings, small labelled image folders, and one tiny digits run trained once per session."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from perceiver_cli.cli import app
from perceiver_cli.engine import runtime

# The machine has 2 cores shared with other work: one intra-op thread avoids OpenMP threads spinning
# against busy cores (which made tiny runs ~50x slower under load) and leaves the other core free.
torch.set_num_threads(1)

# `precision: auto` means bf16 autocast on CPUs with bf16 matrix units (AVX512-BF16, AMX) and fp32
# elsewhere, and CI runs on both kinds. PERCEIVER_TEST_CPU_BF16=1 runs the whole suite as if on a CPU
# with those units, =0 as if on one without (unset: the real CPU decides), e.g.
#   PERCEIVER_TEST_CPU_BF16=1 python -m pytest -q
# On a CPU without the units bf16 is emulated, so that run is slower, and bench's bf16 matmul peak
# takes minutes: bench tests pass --dtype unless they are about `auto`. pytest's header says which.
CPU_BF16_ENV = "PERCEIVER_TEST_CPU_BF16"
_real_cpu_has_bf16_units = runtime.cpu_has_bf16_units


def patch_cpu_bf16(monkeypatch, has_units: bool) -> None:
    """Answer has_units wherever cpu_has_bf16_units is read: runtime (so use_bf16) and every module that
    bound the name (bench.run); a module imported later takes runtime's patched one."""
    def cpu_has_bf16_units() -> bool:
        return has_units

    for module in list(sys.modules.values()):
        if callable(getattr(module, "__dict__", {}).get("cpu_has_bf16_units")):  # no module __getattr__ runs
            monkeypatch.setattr(module, "cpu_has_bf16_units", cpu_has_bf16_units)


def _cpu_bf16_switch() -> bool | None:
    value = os.environ.get(CPU_BF16_ENV, "")
    if value not in ("", "0", "1"):
        raise pytest.UsageError(f"{CPU_BF16_ENV}={value!r}: use 1 (bf16 units), 0 (none) or leave it unset (this CPU)")
    return None if value == "" else value == "1"


def pytest_report_header(config):
    switch = _cpu_bf16_switch()
    units = _real_cpu_has_bf16_units() if switch is None else switch
    source = "this CPU" if switch is None else f"{CPU_BF16_ENV}={int(switch)}"
    return f"precision auto on CPU: {'bf16' if units else 'fp32'} (bf16 units {units}, from {source})"


@pytest.fixture(scope="session", autouse=True)
def cpu_bf16_switch():
    """The PERCEIVER_TEST_CPU_BF16 patch, for the whole session (autouse: before other session fixtures)."""
    switch = _cpu_bf16_switch()
    with pytest.MonkeyPatch.context() as mp:
        if switch is not None:
            patch_cpu_bf16(mp, switch)
        yield switch


# A digits model small enough that one epoch takes a fraction of a second on one CPU core.
TINY = [
    "model.num_latents=8",
    "model.latent_dim=32",
    "model.latent_blocks=1",
    "model.latent_heads=2",
    "model.num_bands=2",
    "train.epochs=2",
    "train.batch_size=64",
    "train.best_metric=val_accuracy",  # the tests check how best.pt follows validation
]

# The colours of the easy image-folder classes: a class is recognisable from its dominant channel.
SHAPE_CLASSES = {"red": (210, 40, 40), "green": (40, 210, 40), "blue": (40, 40, 210)}


def set_args(overrides: list[str]) -> list[str]:
    """['a=1', 'b=2'] -> ['--set', 'a=1', '--set', 'b=2']"""
    args: list[str] = []
    for item in overrides:
        args += ["--set", item]
    return args


@pytest.fixture
def tiny() -> list[str]:
    """--set overrides (KEY=VALUE strings) that make digits training take about a second."""
    return list(TINY)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run inside tmp_path, so runs/ and data/ are created there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


class Cli:
    """CliRunner on perceiver_cli.cli.app. Typer's runner keeps stderr apart (result.stderr);
    result.output is what a terminal would show (both streams)."""

    def __init__(self):
        self.runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})

    def __call__(self, *args):
        return self.runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def cli() -> Cli:
    return Cli()


def write_image_folder(root: Path, per_class: int = 24, size: int = 8, seed: int = 0) -> Path:
    """<root>/<class>/<i>.png: 8x8 RGB images whose class is the dominant colour (with pixel noise
    and a per-image brightness change), so that a tiny model learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    for name, colour in SHAPE_CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            scale = rng.uniform(0.75, 1.15)
            pixels = np.array(colour, dtype=np.float64) * scale + rng.normal(0, 12, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(folder / f"{i:03d}.png")
    return root


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """A zip of folder's files, paths relative to the folder (<class>/<file>)."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return zip_path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A labelled image folder (3 classes x 24 PNGs) outside the working directory's data/."""
    return write_image_folder(tmp_path / "shapes_src")


@pytest.fixture
def image_zip(image_folder, tmp_path) -> Path:
    return zip_folder(image_folder, tmp_path / "shapes_src.zip")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder -> (size, mtime_ns): to prove a command left it alone."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def digits_session_run(tmp_path_factory, cli):
    """One tiny 2-epoch digits run through the CLI, trained once: (its folder, the CliRunner result)."""
    base = tmp_path_factory.mktemp("digits_session")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        result = cli("train", *set_args(TINY))
    assert result.exit_code == 0, result.output
    return base / "runs" / "digits", result


@pytest.fixture
def digits_run(digits_session_run, workdir) -> Path:
    """A private copy of the session's tiny digits run at <workdir>/runs/digits."""
    source, _ = digits_session_run
    target = workdir / "runs" / "digits"
    shutil.copytree(source, target)
    return Path("runs") / "digits"

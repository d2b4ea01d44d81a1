"""A normal install: the wheel built from this checkout, installed into a fresh virtual environment
(its dependencies seen from this one's site-packages, nothing downloaded), runs the main job from an
empty folder, with its recipes found inside the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("setuptools")
    where = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-w", str(where / "dist"), "-q"], check=True, capture_output=True)
    wheel = next((where / "dist").glob("perceiver_cli-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where / "env")],
                   check=True)
    python = where / "env" / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)
    empty = where / "empty"
    empty.mkdir()
    return python, empty


def run(installed, *args):
    python, empty = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run([str(python.parent / "perceiver"), *args], cwd=empty, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_installed_wheel_finds_its_recipes_and_trains_the_main_job_from_an_empty_folder(installed):
    python, empty = installed
    located = subprocess.run([str(python), "-c", "import perceiver_cli.recipe as r; print(r.RECIPES_DIR)"],
                             cwd=empty, capture_output=True, text=True, check=True).stdout.strip()
    assert located.startswith(str(python.parents[1])) and Path(located, "cifar10_cpu.yaml").is_file()
    trained = run(installed, "train", "--set", "train.epochs=1")
    assert trained.returncode == 0, trained.stderr
    assert (empty / "runs" / "digits" / "checkpoints" / "best.pt").is_file()
    missing = run(installed, "train", "cifr10_cpu")
    assert missing.returncode == 2 and "cifar10_cpu" in missing.stderr  # the shipped recipes are listed

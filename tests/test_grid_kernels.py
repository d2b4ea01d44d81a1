"""The grid projection's Triton kernels (GPU) against the CPU path's math, through Triton's
interpreter so that they are checked on machines without a GPU too: the kernels alone, their
operators' declared shapes (opcheck), and a whole model eagerly and under torch.compile."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernels_match_the_cpu_grid_projection():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("grid_kernels_check.py"))],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    for name, error in errors.items():
        # fp32: float rounding; bf16: keys/values and their gradients rounded to 8 bits of mantissa
        assert error < (1e-5 if name.startswith("fp32") else 1e-2), (name, error)
    assert len(errors) == 16

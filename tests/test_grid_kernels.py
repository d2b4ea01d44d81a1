"""The grid projection's Triton kernels (GPU) against the CPU path's math, through Triton's
interpreter so that they are checked on machines without a GPU too: the kernels alone, their
operators' declared shapes (opcheck), and a whole model eagerly and under torch.compile."""

import json
import os
import re
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


def _signature(kernel, pointers: dict) -> dict:
    import inspect

    names = inspect.signature(kernel.fn).parameters
    return {name: "constexpr" if name.isupper() else pointers.get(name, "*fp32") if name.endswith("_ptr") else "i32"
            for name in names}


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for_gpus_without_register_spills(arch):
    """The interpreter does not compile the kernels; this does, offline with Triton's own ptxas, for
    an A100 (sm_80) and an H100 (sm_90) at the shipped tile sizes, as autocast (bf16) and fp32 call
    them. Under autocast, the GPU default, no register may spill (fp32's exact products spill a few bytes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from perceiver_cli.model import grid_kernels as kernels

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    for low in ("bf16", "fp32"):
        constants = {"BLOCK_M": kernels.BLOCK_M, "BLOCK_N": kernels.BLOCK_N, "CP": 16, "EXACT": low == "fp32"}
        for kernel, pointers in ((kernels._forward_kernel, {"kv_ptr": low, "bias_ptr": low, "rows_ptr": low, "cols_ptr": low}),
                                 (kernels._backward_kernel, {"g_ptr": low, "rows_ptr": low, "cols_ptr": low})):
            pointers = {name: "*" + dtype for name, dtype in pointers.items()}
            source = ASTSource(fn=kernel, signature=_signature(kernel, pointers), constexprs=constants)
            compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": kernels.NUM_WARPS})
            ptx = compiled.asm["ptx"]
            target = re.search(r"^\.target (\w+)", ptx, re.MULTILINE).group(1)  # sm_90a on an H100
            report = subprocess.run([str(ptxas), "-v", f"--gpu-name={target}", "-", "-o", os.devnull],
                                    input=ptx, capture_output=True, text=True)
            assert report.returncode == 0, report.stderr[-2000:]
            assert low == "fp32" or "0 bytes spill stores" in report.stderr, (kernel.fn.__name__, report.stderr)

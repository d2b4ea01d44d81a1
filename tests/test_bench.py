"""`perceiver bench`: the FLOP count is the model's, the figures a user reads are there and consistent,
the sweep and the lucidrains comparison work, and bad input is one clear line. (No speed targets
here: those are benchmark figures, measured with `perceiver bench`, not timed tests.)"""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY, set_args
from perceiver_cli.bench import lucidrains
from perceiver_cli.bench.flops import forward_flops
from perceiver_cli.bench.measure import datasheet_peak
from perceiver_cli.bench.run import growth_exponent
from perceiver_cli.model import build_model, count_parameters
from perceiver_cli.recipe import ModelConfig, load_recipe
from test_cli import assert_user_error

TINY_BENCH = ["--steps", 2, "--warmup", 1, "--batch", 4]
# Tests that do not mean a precision pass --dtype fp32: `auto` is bf16 on CPUs with bf16 units, and
# its bf16 matmul peak takes minutes where bf16 is emulated (test_precision_auto covers `auto`).


@pytest.mark.parametrize("settings, spec", [
    ({}, {"kind": "image", "shape": [16, 16, 3]}),
    ({"output": "query", "cross_attends": 3, "activation": "geglu"}, {"kind": "image", "shape": [12, 16, 1]}),
    ({"conv_stem": 8, "patch_size": 2, "share_weights": False, "cross_attends": 2}, {"kind": "image", "shape": [16, 16, 3]}),
    ({"cross_attends": 2, "output": "cls", "cross_heads": 2}, {"kind": "points", "shape": [300, 3], "coords": 3, "features": 0}),
])
def test_flops_from_shapes_equal_torch_flop_counter(settings, spec):
    model = build_model(ModelConfig(num_latents=16, latent_dim=32, latent_blocks=2, latent_heads=4, num_bands=4, **settings), spec, 10).eval()
    batch = 4
    # the math SDPA backend runs attention as matmuls, which the counter sees
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(batch, *spec["shape"]))
    assert forward_flops(model, batch).executed == counter.get_total_flops() / batch


def test_flops_on_a_gpu_count_the_grid_read_as_token_features(monkeypatch):
    """A GPU reads the grid as each token's C + 2 + H + W features (two matmuls), a CPU in its C + 2
    channels: the count for "cuda" is that path's, measured here on a CPU forced onto it."""
    from perceiver_cli.model import attention

    spec = {"kind": "image", "shape": [16, 16, 3]}
    model = build_model(ModelConfig(num_latents=16, latent_dim=32, latent_blocks=2, latent_heads=4, num_bands=4), spec, 10).eval()
    monkeypatch.setattr(attention, "reads_grid_as_features", lambda device_type: True)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(4, *spec["shape"]))
    assert forward_flops(model, 4, "cuda").executed == counter.get_total_flops() / 4
    assert forward_flops(model, 4, "cpu").executed < forward_flops(model, 4, "cuda").executed < forward_flops(model, 4).nominal


def test_growth_exponent_of_a_power_law():
    tokens = [1024, 4096, 16384, 65536]
    assert growth_exponent(tokens, [t**1.0 * 3e-6 for t in tokens]) == pytest.approx(1.0)
    assert growth_exponent(tokens, [0.1 + t * 1e-6 for t in tokens]) < 1.0  # a fixed cost bends it below 1


def test_bench_reports_time_memory_flops_and_environment(cli, workdir):
    result = cli("bench", *set_args(TINY), *TINY_BENCH, "--dtype", "fp32", "--json", "bench.json")
    assert result.exit_code == 0, result.output
    document = json.loads((workdir / "bench.json").read_text())
    assert document["environment"]["torch"] == torch.__version__ and document["environment"]["dtype"] == "fp32"
    assert document["input"] == {"kind": "image", "shape": [8, 8, 1]} and document["batch"] == 4
    assert document["parameters"] > 0 and document["flops_per_sample"]["train"] == 3 * document["flops_per_sample"]["forward"]
    for mode in ("train", "infer"):
        r = document["results"][mode]
        assert r["p10_s"] <= r["median_s"] <= r["p90_s"]
        assert r["samples_per_s"] == pytest.approx(4 / r["median_s"], rel=1e-3)
        assert r["peak_memory_mb"] > 0 and 0 < r["mfu"]
        # on a CPU, MFU is against the matmul measured in the same run
        assert r["mfu"] == pytest.approx(r["tflops"] / document["matmul_peak_tflops"], rel=0.05, abs=2e-3)  # both rounded
        flops = document["flops_per_sample"]
        assert r["mfu_paper_flops"] == pytest.approx(r["mfu"] * flops["nominal_forward"] / flops["forward"], rel=0.05, abs=2e-3)
    assert document["mfu_peak_source"] == "measured matmul"
    assert "samples/s" in result.stdout and "MFU" in result.stdout and "paper MFU" in result.stdout


def test_bf16_on_a_cpu_without_bf16_units_reports_no_mfu_instead_of_a_meaningless_one(cli, workdir, monkeypatch):
    """Emulated bf16 runs a 2048^2 product slower than the model's own matmuls (MFU read 1,100 %),
    and measuring it took minutes: no peak is measured and MFU is left out, the rest is reported."""
    from perceiver_cli.bench import run

    monkeypatch.setattr(run, "cpu_has_bf16_units", lambda: False)
    monkeypatch.setattr(run, "matmul_peak", lambda device, dtype: pytest.fail("measured an emulated bf16 peak"))
    result = cli("bench", *set_args(TINY), *TINY_BENCH, "--mode", "train", "--dtype", "bf16", "--json", "bench.json")
    assert result.exit_code == 0, result.output
    document = json.loads((workdir / "bench.json").read_text())
    r = document["results"]["train"]
    assert document["environment"]["dtype"] == "bf16" and r["samples_per_s"] > 0 and r["tflops"] > 0
    assert r["mfu"] is None and r["mfu_paper_flops"] is None and document["mfu_peak_tflops"] is None
    assert "no MFU (bf16 emulated" in result.stdout


def test_gpu_mfu_is_against_the_datasheet_peak_of_known_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert datasheet_peak(torch.device("cuda"), torch.bfloat16) == pytest.approx(989.4e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert datasheet_peak(torch.device("cuda"), torch.bfloat16) == pytest.approx(756e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert datasheet_peak(torch.device("cuda"), torch.bfloat16) is None  # falls back to a measured matmul
    assert datasheet_peak(torch.device("cpu"), torch.float32) is None


def test_sweep_fits_a_growth_exponent_and_reports_out_of_memory(cli, workdir, monkeypatch):
    from perceiver_cli.bench import run

    monkeypatch.setattr(run, "IMAGE_SWEEP", (8, 16, 32))
    real = run.peak_memory_in_fresh_process
    monkeypatch.setattr(run, "peak_memory_in_fresh_process",
                        lambda spec: run.OUT_OF_MEMORY if spec["input_spec"]["shape"][0] == 32 else real(spec))
    result = cli("bench", *set_args(TINY + ["model.patch_size=1"]), *TINY_BENCH, "--mode", "train", "--sweep",
                 "--dtype", "fp32", "--json", "bench.json")
    assert result.exit_code == 0, result.output
    sweep = json.loads((workdir / "bench.json").read_text())["sweep"]
    assert [r["tokens"] for r in sweep["rows"][:2]] == [64, 256]
    assert sweep["rows"][2] == {"size": 32, "tokens": 1024, "error": "out of memory"}
    assert isinstance(sweep["growth_exponent"], float)
    assert "out of memory" in result.stdout


@pytest.mark.skipif(not lucidrains.available(), reason="perceiver-pytorch not installed")
def test_lucidrains_is_built_with_our_architecture_and_parameter_count():
    recipe, _ = load_recipe("cifar10_fourier", [])
    spec = {"kind": "image", "shape": [32, 32, 3]}
    ours = build_model(lucidrains.matched_config(recipe.model), spec, 10)
    theirs = lucidrains.build(recipe.model, spec, 10)
    assert abs(count_parameters(ours) / count_parameters(theirs) - 1) < 0.01
    x = torch.randn(2, 32, 32, 3)
    assert ours(x).shape == theirs(x).shape == (2, 10)


@pytest.mark.skipif(not lucidrains.available(), reason="perceiver-pytorch not installed")
def test_compare_lucidrains_reports_speedups_and_defaults(cli, workdir):
    result = cli("bench", *set_args(TINY), *TINY_BENCH, "--mode", "infer", "--compare", "lucidrains",
                 "--dtype", "fp32", "--json", "bench.json")
    assert result.exit_code == 0, result.output
    compare = json.loads((workdir / "bench.json").read_text())["compare"]
    assert abs(compare["parameters"]["difference"]) < 0.01
    assert compare["speedup"]["infer"] > 0 and compare["defaults"]["speedup"] > 0
    assert compare["same_dtype"]["infer"]["lucidrains"]["samples_per_s"] > 0
    assert "vs lucidrains" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["--input-size", "big"], "--input-size 'big': images take HEIGHTxWIDTH"),
    (["--input-size", "0x5"], "--input-size '0x5': images take HEIGHTxWIDTH"),
    (["--compare", "krasserm"], "--compare 'krasserm' measures task.name=segment recipes, and this recipe's task.name is "
                                "classify: compare it with --compare lucidrains"),
])
def test_bad_bench_options_are_one_clear_line(cli, workdir, args, expected):
    assert expected in assert_user_error(cli("bench", *set_args(TINY), *TINY_BENCH, "--mode", "infer", *args))

"""`perceiver bench RECIPE --compare krasserm`: krasserm's perceiver-io (an optional package) built as
our per-pixel DensePerceiver, with parameter counts side by side, both models' figures in the JSON,
and a --compare that does not fit the recipe's task (or a missing package) as one clear line.
The tests that build their model skip when it is not installed (see README's bench section)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, set_args
from perceiver_cli.bench import krasserm
from perceiver_cli.model import count_parameters
from perceiver_cli.model.perceiver_io import DensePerceiver
from perceiver_cli.recipe import load_recipe
from test_cli import assert_user_error

needs_krasserm = pytest.mark.skipif(not krasserm.available(), reason=f"{krasserm.PACKAGE} {krasserm.VERSION} not installed")
SEG_TINY = ["model.num_latents=8", "model.latent_dim=32", "model.latent_blocks=1", "model.latent_heads=2",
            "model.num_bands=2"]
TINY_BENCH = ["--steps", 1, "--warmup", 0, "--batch", 2, "--dtype", "fp32"]
SEG = ["knee_seg", *set_args(SEG_TINY), "--input-size", "16x16", *TINY_BENCH]


def _ours(model, task, spec, classes):
    model, task = krasserm.matched_config(model, task)
    return DensePerceiver(model, spec, classes, task.output_stride, task.query_pixels)


def _biases_ours_lacks(model) -> int:
    """Their query projections' biases, and their self-attention's key/value biases (ours has none
    there; its cross-attentions' key/value projections have them, as theirs)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if name.endswith("q_proj.bias") or ("self_attn" in name and name.endswith(("k_proj.bias", "v_proj.bias"))))


@needs_krasserm
@pytest.mark.parametrize("overrides", [
    [],  # knee_seg: 64 x 128 latents, 1 cross-attend, 4 blocks, patches 4 and stride 4 made 1 and 1
    ["model.cross_attends=3", "model.share_first_latent=false", "model.cross_heads=2", "model.decoder_heads=4",
     "model.decoder_dim=64", "task.query_pixels=false", "model.widening_factor=1"],
])
def test_their_model_has_our_architecture_and_parameter_count(overrides):
    """Within 0.5 %, and the gap is exactly the biases ours leaves out (less our pixel queries' own
    bias): every other weight has the same shape in both."""
    recipe, _ = load_recipe("knee_seg", overrides)
    spec, classes = {"kind": "image", "shape": [16, 12, 1]}, 10
    ours = _ours(recipe.model, recipe.task, spec, classes)
    theirs = krasserm.build(recipe.model, recipe.task, spec, classes)
    assert abs(count_parameters(ours) / count_parameters(theirs) - 1) < 0.005
    pixel_bias = ours.pixel_queries.bias.numel() if ours.pixel_queries is not None else 0
    assert count_parameters(theirs) - _biases_ours_lacks(theirs) == count_parameters(ours) - pixel_bias
    x = torch.randn(2, 16, 12, 1)
    assert ours(x).shape == theirs(x).shape == (2, 16, 12, classes)  # logits for every pixel


def test_a_segment_recipe_is_benched_as_its_per_pixel_model(cli, workdir):
    """Not as a classifier of the same encoder: the parameters and FLOPs are the DensePerceiver's."""
    result = cli("bench", *SEG, "--mode", "infer", "--json", "bench.json")
    assert result.exit_code == 0, result.output
    document = json.loads((workdir / "bench.json").read_text())
    recipe, _ = load_recipe("knee_seg", SEG_TINY)
    model = DensePerceiver(recipe.model, {"kind": "image", "shape": [16, 16, 1]}, 10, 4, True,
                           recipe.task.query_context)
    assert document["parameters"] == count_parameters(model)
    assert document["flops_per_sample"]["forward"] > 0 and document["results"]["infer"]["samples_per_s"] > 0
    assert document["results"]["infer"]["mfu_paper_flops"] is None  # the paper count is the classifier's


def test_a_masked_image_recipe_measures_its_masked_autoencoder(cli, workdir):
    """The MAE step (visible patches in, hidden ones out), not a classifier of its encoder."""
    from perceiver_cli.model.perceiver_io import MaskedPerceiver

    args = ["cifar10_mae", "--input-size", "16x16", "--batch", "4", "--steps", "2", "--warmup", "1", "--dtype", "fp32",
            "--mode", "train"]
    result = cli("bench", *args, "--json", "bench.json")
    assert result.exit_code == 0, result.output
    document = json.loads((workdir / "bench.json").read_text())
    recipe, _ = load_recipe("cifar10_mae", [])
    spec = {"kind": "image", "shape": [16, 16, 3]}
    assert document["parameters"] == count_parameters(MaskedPerceiver(recipe.model, spec))
    assert document["results"]["train"]["samples_per_s"] > 0 and document["results"]["train"]["peak_memory_mb"] > 0
    assert document["flops_per_sample"]["forward"] > 0 and "samples/s" in result.stdout


@needs_krasserm
def test_compare_krasserm_reports_both_models_side_by_side(cli, workdir):
    result = cli("bench", *SEG, "--mode", "train", "--compare", "krasserm", "--json", "bench.json")
    assert result.exit_code == 0, result.output
    document = json.loads((workdir / "bench.json").read_text())
    recipe, _ = load_recipe("knee_seg", SEG_TINY)
    spec = {"kind": "image", "shape": [16, 16, 1]}
    compare = document["compare"]
    assert compare["with"] == "krasserm" and compare["task"]["output_stride"] == 1
    assert compare["architecture"]["patch_size"] == 1
    p = compare["parameters"]
    assert p["ours"] == count_parameters(_ours(recipe.model, recipe.task, spec, 10))
    assert p["krasserm"] == count_parameters(krasserm.build(recipe.model, recipe.task, spec, 10))
    assert abs(p["difference"]) < 0.005
    for name in ("ours", "krasserm"):
        figures = compare["same_dtype"]["train"][name]
        assert figures["samples_per_s"] > 0 and figures["peak_memory_mb"] > 0 and figures["tflops"] > 0
        assert compare["flops_per_sample"][name]["train"] == 3 * compare["flops_per_sample"][name]["forward"] > 0
    assert compare["speedup"]["train"] > 0 and compare["defaults"]["krasserm_samples_per_s"] > 0
    assert "vs krasserm/perceiver-io" in result.stdout and f"krasserm {p['krasserm']:,}" in result.stdout


@pytest.mark.parametrize("recipe, compare, expected", [
    (["digits", *set_args(TINY)], "krasserm", "--compare 'krasserm' measures task.name=segment recipes, and this "
                                              "recipe's task.name is classify: compare it with --compare lucidrains"),
    (SEG, "lucidrains", "--compare 'lucidrains' measures task.name=classify recipes, and this recipe's task.name is "
                        "segment: compare it with --compare krasserm"),
    (["cifar10_mae", "--input-size", "16x16"], "krasserm", "this recipe's task.name is masked_image; a masked_image "
                                                           "run has no peer to compare with"),
    (SEG, "hf", "--compare 'hf': the peers are lucidrains (task.name=classify recipes), krasserm (task.name=segment "
                "recipes)"),
])
def test_a_compare_that_does_not_fit_the_recipe_is_one_line(cli, workdir, recipe, compare, expected):
    line = assert_user_error(cli("bench", *recipe, "--compare", compare, "--json", "bench.json"))
    assert expected in line
    assert not (workdir / "bench.json").exists()


@pytest.mark.parametrize("found, expected", [
    (None, "needs krasserm's perceiver-io package, which is not installed: "),
    ("0.7b1", "is built for perceiver-io 0.11.0, found 0.7b1: "),
])
def test_a_missing_or_other_perceiver_io_gives_the_install_command(cli, workdir, monkeypatch, found, expected):
    monkeypatch.setattr(krasserm, "installed_version", lambda: found)
    line = assert_user_error(cli("bench", *SEG, "--compare", "krasserm"))
    assert expected in line
    assert line.endswith("pip install --no-deps --ignore-requires-python perceiver-io==0.11.0 fairscale==0.4.13")

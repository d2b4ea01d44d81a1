"""Seeing a configuration without training: `perceiver recipes` lists the shipped ones, `recipes show`
and `train --print-config` print one resolved, `train --dry-run` builds it on its data and prices a
step, and a recipe may start from another (`base:`)."""

from __future__ import annotations

import yaml

from perceiver_cli.recipe import load_recipe


def test_recipes_lists_every_shipped_recipe_with_its_dataset_task_parameters_and_result(cli, workdir):
    result = cli("recipes")
    assert result.exit_code == 0, result.output
    for name in ("digits", "cifar10_cpu", "knee_seg", "bytes_ar", "modelnet40"):
        assert name in result.stdout
    assert "80.5 %" in result.stdout and "not measured" in result.stdout  # what each reaches, honestly
    assert "0.20 M" in result.stdout  # digits' parameters, counted from the model it builds


def test_show_and_print_config_give_the_resolved_recipe_with_every_default_and_set(cli, workdir):
    shown = cli("recipes", "show", "cifar10_cpu", "--set", "optim.lr=0.0123")
    printed = cli("train", "cifar10_cpu", "--set", "optim.lr=0.0123", "--print-config")
    assert shown.exit_code == 0 and printed.exit_code == 0, (shown.output, printed.output)
    assert shown.stdout == printed.stdout
    data = yaml.safe_load(shown.stdout)
    assert data["optim"]["lr"] == 0.0123 and data["train"]["seed"] == 0  # a default the file leaves out
    assert load_recipe("cifar10_cpu", ["optim.lr=0.0123"])[0].to_dict() == data
    assert not (workdir / "runs").exists()  # nothing trained


def test_dry_run_reads_the_data_builds_the_model_and_prices_a_step_without_training(cli, workdir, monkeypatch):
    result = cli("train", "digits", "--dry-run")
    assert result.exit_code == 0, result.output
    for line in ("1,295 train", "196,918", "FLOPs per sample", "memory estimate", "optimiser state"):
        assert line in result.stdout, result.stdout
    assert not (workdir / "runs").exists()
    import torch

    def no_compiling(*args, **kwargs):
        raise AssertionError("a dry run compiled the model")

    monkeypatch.setattr(torch, "compile", no_compiling)
    compiled = cli("train", "digits", "--dry-run", "--set", "train.compile=true")  # seconds, not a compile
    assert compiled.exit_code == 0, compiled.output
    assert "196,918" in compiled.stdout and "train.compile" in compiled.stdout and "did not apply" in compiled.stdout
    missing = cli("train", "cifar10_cpu", "--dry-run")  # its data is not prepared here: one line
    assert missing.exit_code == 2 and "perceiver prepare cifar10" in missing.output


def test_a_recipe_inherits_from_a_base_and_says_only_what_differs(cli, workdir):
    (workdir / "mine.yaml").write_text("base: cifar10_cpu\noptim:\n  lr: 0.002\ntrain:\n  epochs: 3\n")
    mine, _ = load_recipe(str(workdir / "mine.yaml"))
    base, _ = load_recipe("cifar10_cpu")
    assert mine.optim.lr == 0.002 and mine.train.epochs == 3
    assert mine.model == base.model and mine.optim.weight_decay == base.optim.weight_decay  # the rest is the base's
    (workdir / "child.yaml").write_text("base: mine.yaml\ntrain:\n  epochs: 4\n")  # a base beside the file
    child, _ = load_recipe(str(workdir / "child.yaml"))
    assert child.optim.lr == 0.002 and child.train.epochs == 4
    (workdir / "loop.yaml").write_text("base: loop.yaml\n")
    looped = cli("train", str(workdir / "loop.yaml"), "--print-config")
    assert looped.exit_code == 2 and "leads back to itself" in looped.output
    (workdir / "lost.yaml").write_text("base: cifr10_cpu\n")
    lost = cli("train", str(workdir / "lost.yaml"), "--print-config")
    assert lost.exit_code == 2 and "cifar10_cpu" in lost.output

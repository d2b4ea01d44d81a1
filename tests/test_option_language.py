"""One option language: the same option spelt the same on every command, global flags anywhere,
--version and shell completion, and mistakes that say what was meant (a recipe key given as an
option, a near-miss key, a near-miss dataset name)."""

from __future__ import annotations

import pytest

from conftest import write_image_folder


def test_version_and_a_completion_script(cli):
    from perceiver_cli import __version__

    version = cli("--version")
    assert version.exit_code == 0 and version.stdout.strip() == f"perceiver {__version__}"
    script = cli("--show-completion", "bash")
    assert script.exit_code == 0 and "complete" in script.stdout and "perceiver" in script.stdout


@pytest.mark.parametrize("command", ["train", "eval", "predict", "bench", "attention", "generate", "export"])
def test_every_command_that_runs_a_model_takes_device(cli, command):
    shown = cli(command, "--help")
    assert shown.exit_code == 0 and "--device" in shown.stdout


@pytest.mark.parametrize("command", ["eval", "predict", "bench"])
def test_batch_size_is_spelt_the_same_everywhere(cli, command):
    assert "--batch-size" in cli(command, "--help").stdout


def test_bench_takes_batch_size(cli, workdir):
    result = cli("bench", "digits", "--batch-size", "3", "--steps", "1", "--warmup", "0", "--mode", "infer")
    assert result.exit_code == 0, result.output
    assert "batch 3" in result.stdout


def test_global_flags_work_after_the_command(cli, workdir):
    loud = cli("train", "--set", "train.epochs=1", "--name", "loud")
    quiet = cli("train", "--set", "train.epochs=1", "--name", "hushed", "--quiet")
    assert loud.exit_code == 0 and quiet.exit_code == 0, quiet.output
    assert "epoch 1/1" in loud.stdout and "epoch 1/1" not in quiet.stdout  # no progress or epoch rows
    assert (workdir / "runs" / "hushed" / "checkpoints" / "best.pt").is_file()


def test_a_recipe_key_given_as_an_option_says_which_set_does_it(cli, workdir):
    result = cli("train", "--epochs", "1")
    assert result.exit_code == 2 and "--set train.epochs=1" in result.output
    other = cli("eval", "runs/x", "--epochs", "1")  # eval takes no --set: the usual line
    assert other.exit_code == 2 and "--set" not in other.output


def test_a_near_miss_key_is_matched_on_its_last_part(cli, workdir):
    result = cli("train", "--set", "optim.learning_rate=0.1")
    assert result.exit_code == 2 and "did you mean 'optim.lr'?" in result.output
    assert "min_lr_ratio" not in result.output


def test_a_near_miss_dataset_name_is_said_and_imagefolder_name_keeps_custom_folders(cli, workdir):
    folder = write_image_folder(workdir / "photos")
    typo = cli("prepare", "cifr10", "--from", folder)
    assert typo.exit_code == 2 and "perceiver prepare cifar10" in typo.output
    assert "imagefolder --name cifr10" in typo.output and not (workdir / "data" / "cifr10").exists()
    named = cli("prepare", "imagefolder", "--name", "cifr10", "--from", folder)
    assert named.exit_code == 0, named.output
    assert (workdir / "data" / "cifr10" / "manifest.json").is_file()
    own = cli("prepare", "flowers", "--from", folder)  # a name far from every dataset: still a folder of one's own
    assert own.exit_code == 0 and (workdir / "data" / "flowers" / "manifest.json").is_file()

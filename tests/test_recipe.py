"""Recipes: the shipped ones load, --set overrides are typed, and every mistake a user can make in a
recipe is a one-line UserError that names the key/file and says what is wrong."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from perceiver_cli.errors import UserError
from perceiver_cli.recipe import RECIPES_DIR, Recipe, load_recipe

SHIPPED = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def user_error(recipe=None, overrides=()) -> str:
    """The message of the UserError that loading raises; it must be a single line."""
    with pytest.raises(UserError) as info:
        load_recipe(recipe, list(overrides))
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    assert info.value.exit_code == 2
    return message


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- shipped recipes ---------------------------------------------------------------------------

def test_recipes_are_shipped():
    assert "digits.yaml" in SHIPPED and len(SHIPPED) >= 2
    assert Path(RECIPES_DIR).resolve() == (Path(__file__).resolve().parents[1] / "recipes")


@pytest.mark.parametrize("filename", SHIPPED)
def test_every_shipped_recipe_loads_by_name_and_validates(filename):
    stem = filename.removesuffix(".yaml")
    for name in (stem, filename):
        recipe, path = load_recipe(name)
        assert isinstance(recipe, Recipe)
        assert path.name == filename
    # what the file says is what was loaded (no silent defaults for keys that are written down)
    import yaml

    data = yaml.safe_load((RECIPES_DIR / filename).read_text())
    loaded = recipe.to_dict()
    for section, values in data.items():
        for key, value in values.items():
            if isinstance(value, dict):  # a sub-section (data.augment)
                for sub, sub_value in value.items():
                    assert loaded[section][key][sub] == sub_value, (section, key, sub)
            else:
                assert loaded[section][key] == value, (section, key)
    # and it survives a round trip through its dict (what a checkpoint stores)
    assert Recipe.model_validate(loaded) == recipe


def test_default_recipe_is_digits():
    recipe, path = load_recipe(None)
    assert path.name == "digits.yaml"
    assert recipe.data.dataset == "digits"


# --- --set overrides -----------------------------------------------------------------------------

def test_set_float_from_exponent_notation():
    recipe, _ = load_recipe("digits", ["optim.lr=5e-4"])
    assert isinstance(recipe.optim.lr, float)
    assert recipe.optim.lr == pytest.approx(0.0005)


def test_set_int_bool_list_and_string():
    recipe, _ = load_recipe("digits", [
        "train.epochs=3", "train.compile=true", "model.share_weights=false",
        "optim.milestones=[1,2]", "optim.scheduler=multistep", "train.name=abc",
    ])
    assert recipe.train.epochs == 3 and type(recipe.train.epochs) is int
    assert recipe.train.compile is True
    assert recipe.model.share_weights is False
    assert recipe.optim.milestones == [1, 2]
    assert recipe.optim.scheduler == "multistep"
    assert recipe.train.name == "abc"


def test_set_overrides_the_file_and_later_set_wins(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 7\noptim:\n  lr: 0.01\n")
    recipe, loaded_path = load_recipe(str(path), ["train.epochs=2", "train.epochs=4"])
    assert loaded_path == path
    assert recipe.train.epochs == 4
    assert recipe.optim.lr == pytest.approx(0.01)
    # keys the file does not mention keep their defaults
    assert recipe.model.num_latents == Recipe().model.num_latents


def test_set_nested_section_key():
    recipe, _ = load_recipe("digits", ["data.augment.horizontal_flip=true", "data.augment.random_crop_padding=2"])
    assert recipe.data.augment.horizontal_flip is True
    assert recipe.data.augment.random_crop_padding == 2


# --- mistakes in a recipe file -------------------------------------------------------------------

def test_unknown_key_in_yaml_names_nearest_valid_key(tmp_path):
    path = write(tmp_path, "model: {num_latent: 8}\n")
    message = user_error(str(path))
    assert "num_latent" in message
    assert "model.num_latents" in message
    assert str(path) in message


def test_misspelt_section_names_the_section(tmp_path):
    path = write(tmp_path, "modle:\n  num_latents: 8\n")
    message = user_error(str(path))
    assert "modle" in message
    assert "'model'" in message


def test_section_given_a_value_is_an_error(tmp_path):
    path = write(tmp_path, "train: 5\n")
    message = user_error(str(path))
    assert "train" in message and "section" in message


def test_wrong_type_in_yaml_names_key_and_value(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: many\n")
    message = user_error(str(path))
    assert "train.batch_size" in message and "many" in message and "invalid" in message


def test_out_of_range_value_is_an_error(tmp_path):
    path = write(tmp_path, "optim:\n  lr: -1\n")
    message = user_error(str(path))
    assert "optim.lr" in message and "-1" in message


def test_unknown_choice_is_an_error():
    message = user_error("digits", ["optim.name=adamx"])
    assert "optim.name" in message and "adamx" in message


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "model:\n  num_latents: 8\n  latent_dim: 32\n latent_heads: 2\ntrain:\n  epochs: 1\n")
    message = user_error(str(path))
    assert str(path) in message
    assert "malformed YAML" in message
    assert "line 4" in message


def test_recipe_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- model\n- train\n")
    message = user_error(str(path))
    assert str(path) in message and "mapping" in message


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_recipe_file_is_an_error_not_a_silent_run_of_the_defaults(tmp_path, text):
    message = user_error(str(write(tmp_path, text)))
    assert "is empty" in message and "perceiver train" in message


def test_an_empty_mapping_still_means_all_defaults(tmp_path):
    recipe, _ = load_recipe(str(write(tmp_path, "{}")))
    assert recipe == Recipe()


@pytest.mark.parametrize("raw, expected", [
    (bytes(range(128, 256)), "not UTF-8 text"),
    ("train:\n  epochs: 2\n".encode("utf-16"), "not UTF-8 text"),
    (b"train:\n  epochs: 2\n\x00\x01", "malformed YAML"),
])
def test_a_recipe_that_is_not_utf8_yaml_text_is_one_line(tmp_path, raw, expected):
    path = tmp_path / "r.yaml"
    path.write_bytes(raw)
    message = user_error(str(path))
    assert expected in message and "r.yaml" in message and "\n" not in message


def test_a_bom_from_a_windows_editor_is_accepted(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\xef\xbb\xbftrain:\n  epochs: 2\n")
    assert load_recipe(str(path))[0].train.epochs == 2


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    message = user_error(str(write(tmp_path, "train:\n  epochs: 1\nmodel:\n  num_latents: 8\ntrain:\n  epochs: 2\n")))
    assert "'train' appears twice" in message and "lines 1 and 5" in message


def test_a_key_given_twice_inside_a_section_is_an_error(tmp_path):
    message = user_error(str(write(tmp_path, "train:\n  epochs: 1\n  epochs: 2\n")))
    assert "'epochs' appears twice" in message


def test_a_directory_given_as_a_recipe_says_it_is_a_directory(tmp_path):
    message = user_error(str(tmp_path))
    assert "is a directory" in message


@pytest.mark.parametrize("assignment, key", [
    ("optim.lr=inf", "optim.lr"), ("optim.lr=-inf", "optim.lr"), ("optim.lr=nan", "optim.lr"),
    ("optim.lr=.inf", "optim.lr"), ("model.max_freq=inf", "model.max_freq"), ("optim.grad_clip=inf", "optim.grad_clip"),
    ("optim.weight_decay=inf", "optim.weight_decay"), ("optim.warmup_epochs=inf", "optim.warmup_epochs"),
    ("data.augment.mixup=inf", "data.augment.mixup"), ("data.augment.jitter=nan", "data.augment.jitter"),
    ("optim.betas=[0.9, .nan]", "optim.betas"), ("data.augment.point_scale=[1, .inf]", "data.augment.point_scale"),
])
def test_non_finite_floats_are_refused_for_every_float_key(assignment, key):
    message = user_error(None, [assignment])
    assert f"{key}=" in message and "(with --set)" in message


@pytest.mark.parametrize("assignment, expected", [
    ("optim.betas=[2, 3]", "less than 1"), ("optim.betas=[-0.1, 0.9]", "greater than or equal to 0"),
    ("train.seed=-5", "greater than or equal to 0"), ("model.permute_seed=-1", "greater than or equal to 0"),
    ("data.augment.point_scale=[1.1, 0.9]", "0 < low <= high"), ("data.augment.point_scale=[0, 1]", "0 < low <= high"),
])
def test_values_that_crashed_deep_in_torch_or_numpy_are_refused_by_the_schema(assignment, expected):
    message = user_error(None, [assignment])
    assert expected in message and assignment.split("=")[0] in message


def test_with_set_is_said_only_when_the_bad_value_came_from_set(tmp_path):
    path = write(tmp_path, "optim:\n  lr: -1\n")
    message = user_error(str(path), ["train.epochs=3"])
    assert "optim.lr=-1" in message and "(with --set)" not in message
    message = user_error(str(write(tmp_path, "train:\n  epochs: 2\n")), ["optim.lr=-1"])
    assert "(with --set)" in message


def test_missing_recipe_file_names_it_and_lists_shipped(tmp_path):
    missing = tmp_path / "nope.yaml"
    message = user_error(str(missing))
    assert "nope.yaml" in message and "not found" in message
    assert "digits" in message  # the shipped recipes are offered


def test_heads_that_do_not_divide_latent_dim_name_both_keys():
    message = user_error("digits", ["model.latent_dim=30", "model.latent_heads=4"])
    assert "model.latent_dim" in message and "model.latent_heads" in message
    assert "30" in message and "4" in message


def test_heads_not_dividing_is_fine_with_explicit_head_dim():
    recipe, _ = load_recipe("digits", ["model.latent_dim=30", "model.latent_heads=4", "model.latent_head_dim=8"])
    assert recipe.model.latent_heads == 4


# --- mistakes in --set ---------------------------------------------------------------------------

@pytest.mark.parametrize("assignment, wrong, nearest", [
    ("train.epoch=3", "train.epoch", "train.epochs"),
    ("optim.lrr=1e-3", "optim.lrr", "optim.lr"),
    ("model.num_latent=8", "model.num_latent", "model.num_latents"),
])
def test_unknown_set_key_suggests_nearest(assignment, wrong, nearest):
    message = user_error("digits", [assignment])
    assert f"'{wrong}'" in message
    assert f"'{nearest}'" in message
    assert "--set" in message


def test_wrong_type_via_set_names_key_value_and_invalid():
    message = user_error("digits", ["train.epochs=abc"])
    assert "train.epochs" in message
    assert "abc" in message
    assert "invalid" in message


def test_set_without_equals_sign():
    message = user_error("digits", ["train.epochs"])
    assert "KEY=VALUE" in message


def test_set_on_a_section():
    message = user_error("digits", ["model=3"])
    assert "section" in message and "model." in message


def test_wrong_list_element_type_via_set():
    message = user_error("digits", ["optim.milestones=[1,x]"])
    assert "optim.milestones" in message and "x" in message


def test_the_gpu_cifar_recipe_builds_and_trains_a_step_on_cpu(cli, workdir):
    """cifar10_gpu is unmeasured without a GPU: at least its model builds and trains, here on CPU
    (eager, fp32, a tiny batch) on a small 32x32 image folder prepared as CIFAR-10 is."""
    from conftest import write_image_folder

    source = write_image_folder(workdir / "src", per_class=8, size=32)
    assert cli("prepare", "cifar10", "--from", source).exit_code == 0
    result = cli("train", "cifar10_gpu", "--set", "train.device=cpu", "--set", "train.compile=false",
                 "--set", "train.precision=fp32", "--set", "train.epochs=1", "--set", "train.batch_size=8",
                 "--set", "train.eval_batch_size=16")
    assert result.exit_code == 0, result.output
    row = json.loads(Path("runs/cifar10_gpu/metrics.jsonl").read_text().splitlines()[-1])
    assert row["epoch"] == 1 and math.isfinite(row["train_loss"]) and 0 <= row["val_accuracy"] <= 1
    config = yaml.safe_load(Path("runs/cifar10_gpu/config.yaml").read_text())
    assert config["model"]["conv_stem"] == 96 and config["data"]["residency"] == "device"

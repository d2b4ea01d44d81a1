"""The `perceiver` command end to end (typer's CliRunner, real tiny training runs): what a user sees
on the terminal and finds in runs/ and data/."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import SHAPE_CLASSES, set_args, snapshot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIGITS_TEST_COUNT = 359  # the 20 % stratified test split of scikit-learn's 1,797 digits
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def assert_user_error(result) -> str:
    """Exit code 2, exactly one line on stderr (the error), no traceback; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash the runner caught
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# --- help ----------------------------------------------------------------------------------------

def test_help_lists_the_three_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0, result.output
    for command in ("prepare", "train", "eval"):
        assert command in result.stdout
    assert result.stderr == ""


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("perceiver ")


@pytest.mark.parametrize("command, shown", [
    ("prepare shapes", ["--from", "--out", "--val-fraction", "--seed", "--size", "[default: 0.1]", "[default: 0]"]),
    ("train", ["--set", "--resume", "--name", "--device", "optim.lr=5e-4"]),
    ("eval", ["--split", "--data", "--batch-size", "--device", "[default: 256]", "[default: auto]"]),
])
def test_subcommand_help_works_and_shows_defaults(cli, command, shown):
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    for text in shown:
        assert text in result.stdout, text


@pytest.mark.parametrize("command, default", [
    ("train", "[default: recipes/digits.yaml]"),
    ("train", "[default: the recipe's file name]"),
    ("train", "[default: train.device of the recipe, auto]"),
    ("prepare shapes", "[default: data/<dataset>]"),
    ("prepare shapes", "[default: the most common size]"),
    ("prepare akoa", "[default: 228x260]"),
    ("prepare modelnet40", "[default: 2048]"),
    ("prepare modelnet40", "[default: one per CPU core]"),
    ("prepare akoa", "[default: the sagittal axis, from the affine]"),
    ("eval", "[default: test, or val when there is no test split]"),
])
def test_help_shows_the_documented_defaults(cli, command, default):
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0
    assert default in " ".join(result.stdout.replace("│", " ").split())


# what each `prepare DATASET --help` lists, and nothing else (NAME: any other name, an image folder)
PREPARE_OPTIONS = {
    "digits": {"--out"},
    "mnist": {"--from", "--out"},
    "cifar10": {"--from", "--out", "--val-fraction", "--test-fraction", "--seed", "--size"},
    "modelnet40": {"--from", "--out", "--seed", "--points", "--workers"},
    "akoa": {"--from", "--out", "--seed", "--size", "--labels", "--pattern", "--slices", "--axis", "--split", "--split-by"},
    "flowers": {"--from", "--out", "--val-fraction", "--test-fraction", "--seed", "--size"},
}


@pytest.mark.parametrize("dataset", PREPARE_OPTIONS)
def test_prepare_help_of_a_dataset_lists_only_its_own_options(cli, dataset):
    result = cli("prepare", dataset, "--help")
    assert result.exit_code == 0, result.output
    assert f"perceiver prepare {dataset} [OPTIONS]" in result.stdout
    listed = set(re.findall(r"^│ (--[\w-]+)", result.stdout, flags=re.MULTILINE))  # the option column
    assert listed == PREPARE_OPTIONS[dataset] | {"--help"}


@pytest.mark.parametrize("args", [("prepare",), ("prepare", "--help")])
def test_prepare_alone_lists_the_datasets_and_the_image_folder_fallback(cli, args):
    result = cli(*args)
    page = " ".join(result.output.replace("│", " ").split())
    for dataset in ("digits", "mnist", "cifar10", "modelnet40", "akoa"):
        assert f" {dataset} " in page
    assert "any other name reads a labelled image folder or zip" in page
    assert "perceiver prepare akoa --help" in page


@pytest.mark.parametrize("args, taken_by", [
    (["modelnet40", "--size", "8x8"], "`prepare akoa`"),  # today's options of other datasets
    (["akoa", "--points=100"], "`prepare modelnet40` only"),
    (["digits", "--seed", "3"], "`prepare NAME` (an image folder)"),
    (["flowers", "--slices", "4"], "`prepare akoa`, `prepare knee-seg`"),
    (["flowers", "--axis", "1"], "`prepare akoa` only"),
])
def test_prepare_refuses_an_option_of_another_dataset_naming_who_takes_it(cli, workdir, args, taken_by):
    message = assert_user_error(cli("prepare", *args))
    dataset, option = args[0], args[1].split("=")[0]
    assert message.startswith(f"error: {option} applies to ") and taken_by in message
    assert f"not to {dataset}" in message and f"`perceiver prepare {dataset} --help`" in message
    assert not (workdir / "data").exists()


def test_prepare_any_other_name_reads_an_image_zip_under_that_name(cli, workdir, image_zip):
    result = cli("prepare", "flowers", "--from", image_zip, "--size", "4x4", "--val-fraction", "0.25", "--seed", "3")
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "data" / "flowers" / "manifest.json").read_text())
    assert manifest["dataset"] == "flowers" and manifest["input"] == {"kind": "image", "shape": [4, 4, 3]}
    assert manifest["splits"]["val"]["count"] == 18 and manifest["classes"] == sorted(SHAPE_CLASSES)


# --- train ---------------------------------------------------------------------------------------

def test_train_writes_a_complete_run_directory(digits_session_run):
    run, result = digits_session_run
    assert run.name == "digits" and run.parent.name == "runs"
    assert "runs/digits" in result.stdout
    assert "best val_accuracy" in result.stdout
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "train.log", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # no temp files left behind

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["num_latents"] == 8 and config["model"]["latent_dim"] == 32
    assert config["train"]["epochs"] == 2 and config["data"]["dataset"] == "digits"

    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "elapsed_s"):
            assert np.isfinite(row[key]), key
        assert 0 <= row["val_accuracy"] <= 1
    assert rows[1]["elapsed_s"] >= rows[0]["elapsed_s"]

    with open(run / "metrics.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in csv_rows] == [1, 2]
    assert float(csv_rows[1]["val_loss"]) == pytest.approx(rows[1]["val_loss"])

    log = (run / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log

    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert last["epoch"] == 2
    best_epoch = max(rows, key=lambda r: r["val_accuracy"])["epoch"]
    assert best["epoch"] == best_epoch


def test_best_metric_last_keeps_the_final_epoch_for_eval(cli, workdir, tiny):
    result = cli("train", *set_args(tiny + ["train.epochs=3", "train.best_metric=last", "train.name=last"]))
    assert result.exit_code == 0, result.output
    assert "best.pt is the last epoch (3)" in result.stdout
    best = torch.load(Path("runs/last/checkpoints/best.pt"), weights_only=True)
    assert best["epoch"] == 3 and best["best"]["metric"] == "last"
    evaluated = cli("eval", "runs/last")
    assert evaluated.exit_code == 0 and "epoch 3" in evaluated.stdout


def test_second_run_never_reuses_a_run_directory(cli, digits_run, tiny):
    before = snapshot(digits_run)
    result = cli("train", *set_args(tiny + ["train.epochs=1"]))
    assert result.exit_code == 0, result.output
    second = Path("runs") / "digits-2"
    assert (second / "checkpoints" / "last.pt").is_file()
    assert [r["epoch"] for r in read_jsonl(second / "metrics.jsonl")] == [1]
    assert snapshot(digits_run) == before


def test_train_name_option(cli, workdir, tiny):
    result = cli("train", "--name", "my-run", *set_args(tiny + ["train.epochs=1"]))
    assert result.exit_code == 0, result.output
    assert (Path("runs") / "my-run" / "checkpoints" / "last.pt").is_file()
    assert not (Path("runs") / "digits").exists()


def test_train_numeric_name(cli, workdir, tiny):
    result = cli("train", "--name", "2024", *set_args(tiny + ["train.epochs=1"]))
    assert result.exit_code == 0, result.output
    assert (Path("runs") / "2024" / "checkpoints" / "last.pt").is_file()


def test_train_name_with_a_slash_does_not_crash(cli, workdir, tiny):
    result = cli("train", "--name", "exp/1", *set_args(tiny + ["train.epochs=1"]))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2)


# --- eval ----------------------------------------------------------------------------------------

def test_eval_run_directory_writes_report_and_png(cli, digits_run):
    result = cli("eval", digits_run)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and f"{DIGITS_TEST_COUNT:,}" in result.stdout

    report = json.loads((digits_run / "eval_test.json").read_text())
    assert report["samples"] == DIGITS_TEST_COUNT
    assert 0.0 <= report["accuracy"] <= 1.0
    assert len(report["per_class"]) == 10
    assert [row["class"] for row in report["per_class"]] == [str(d) for d in range(10)]
    assert sum(row["support"] for row in report["per_class"]) == DIGITS_TEST_COUNT
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10)
    assert matrix.sum() == DIGITS_TEST_COUNT
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["accuracy"], abs=1e-6)
    assert list(matrix.sum(axis=1)) == [row["support"] for row in report["per_class"]]
    assert report["epoch"] == torch.load(digits_run / "checkpoints" / "best.pt", weights_only=True)["epoch"]

    png = digits_run / "confusion_test.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as image:
        image.verify()


def test_eval_averages_with_mirror_images_when_the_run_trained_on_them_or_when_asked(cli, digits_run):
    from perceiver_cli.tasks.classify_eval import metrics
    from perceiver_cli.runs.trained import load_trained, split_samples

    plain = cli("eval", digits_run)  # digits train without flips: off by default
    assert plain.exit_code == 0 and "mirror" not in plain.stdout
    assert json.loads((digits_run / "eval_test.json").read_text())["flip_averaged"] is False
    flipped = cli("eval", digits_run, "--flip-average")
    assert flipped.exit_code == 0, flipped.output
    assert "averaged with its mirror" in " ".join(flipped.stdout.split())
    report = json.loads((digits_run / "eval_test.json").read_text())
    model, recipe, loaded = load_trained(digits_run, torch.device("cpu"))
    x, y, _ = split_samples(recipe, loaded.state, "test")
    from perceiver_cli.engine.runtime import InputTransform, autocast, use_bf16
    cpu = torch.device("cpu")
    transform = InputTransform(loaded.state["input_spec"], loaded.state["normalization"], cpu)
    with torch.no_grad(), autocast(cpu, use_bf16(recipe.train.precision, cpu)):  # as eval decides, on any CPU
        images = torch.from_numpy(np.ascontiguousarray(x))
        logits = (model(transform(images)).float() + model(transform(images.flip(2))).float()) / 2
    assert report["accuracy"] == pytest.approx(metrics(logits, torch.from_numpy(y), loaded.state["classes"])["accuracy"], abs=1e-6)


def test_eval_split_and_data_together_is_an_error(cli, digits_run, image_folder):
    message = assert_user_error(cli("eval", digits_run, "--split", "val", "--data", image_folder))
    assert "--split" in message and "--data" in message


# --- bad input: one line on stderr, exit 2 (the whole table is tests/test_bad_inputs.py) ---------------

def test_a_patch_size_that_does_not_divide_the_images_is_a_user_error(cli, workdir):
    message = assert_user_error(cli("train", "--set", "model.patch_size=3"))
    assert "model.patch_size=3" in message and "8x8" in message
    assert not any((workdir / "runs").glob("*"))  # no run directory left behind


def test_error_message_keeps_square_brackets(cli, workdir):
    message = assert_user_error(cli("train", "my[old].yaml"))
    assert "my[old].yaml" in message


def test_resume_with_a_different_architecture_is_a_user_error(cli, digits_run):
    before = snapshot(digits_run)
    result = cli("train", "--resume", digits_run, "--set", "train.epochs=3", "--set", "model.latent_dim=64")
    assert_user_error(result)
    assert snapshot(digits_run) == before


# --- prepare + train + eval on an image folder ---------------------------------------------------

def test_prepare_image_folder_writes_manifest_and_is_deterministic(cli, workdir, image_folder):
    result = cli("prepare", "shapes", "--from", image_folder)
    assert result.exit_code == 0, result.output
    root = workdir / "data" / "shapes"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["dataset"] == "shapes"
    assert manifest["classes"] == sorted(SHAPE_CLASSES)
    assert set(manifest["splits"]) == {"train", "val"}
    assert manifest["input"] == {"kind": "image", "shape": [8, 8, 3]}
    counts = {name: split["count"] for name, split in manifest["splits"].items()}
    assert counts["train"] + counts["val"] == 72 and counts["val"] > 0
    for split in manifest["splits"].values():
        assert sum(split["class_counts"].values()) == split["count"]
        assert set(split["class_counts"]) == set(SHAPE_CLASSES)
        assert set(split["sha256"]) == {"x", "y"}
        assert all(len(h) == 64 for h in split["sha256"].values())
    assert manifest["source"]["path"] == str(image_folder)
    assert manifest["skipped"] == []
    arrays = {p.name: p.read_bytes() for p in sorted(root.glob("*.npy"))}
    assert set(arrays) == {"train_x.npy", "train_y.npy", "val_x.npy", "val_y.npy"}
    assert np.load(root / "train_x.npy").shape == (counts["train"], 8, 8, 3)

    again = cli("prepare", "shapes", "--from", image_folder)
    assert again.exit_code == 0, again.output
    assert {p.name: p.read_bytes() for p in sorted(root.glob("*.npy"))} == arrays
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in (workdir / "data").iterdir()) == ["shapes"]  # no temp/old dirs left


def test_prepare_image_folder_lists_skipped_files(cli, workdir, image_folder):
    (image_folder / "red" / "broken.png").write_bytes(b"this is not a png")
    result = cli("prepare", "shapes", "--from", image_folder)
    assert result.exit_code == 0, result.output
    manifest = json.loads((workdir / "data" / "shapes" / "manifest.json").read_text())
    assert [item["path"] for item in manifest["skipped"]] == ["red/broken.png"]
    assert "red/broken.png" in result.stderr
    assert sum(s["count"] for s in manifest["splits"].values()) == 72


SHAPES_RECIPE = """\
model:
  num_latents: 8
  latent_dim: 32
  latent_blocks: 1
  latent_heads: 2
  num_bands: 2
  max_freq: 8.0
data:
  dataset: shapes
optim:
  lr: 0.003
train:
  epochs: 15
  batch_size: 16
  seed: 0
"""


def test_train_and_eval_on_a_prepared_image_folder(cli, workdir, image_folder, image_zip):
    """A folder of train images only gets a val and a test split of its own (--test-fraction), apart
    from train and each other; eval scores test by default, and says when it scores the val split that
    chose best.pt."""
    from perceiver_cli.data import prepared as datasets

    prepared = cli("prepare", "shapes", "--from", image_folder, "--val-fraction", "0.25", "--test-fraction", "0.25")
    assert prepared.exit_code == 0, prepared.output
    splits = datasets.load(Path("data/shapes")).splits
    files = {name: set(split.extra["source_files"]) for name, split in splits.items()}
    assert {name: len(f) for name, f in files.items()} == {"train": 36, "val": 18, "test": 18}
    assert not (files["train"] & files["val"] or files["train"] & files["test"] or files["val"] & files["test"])
    recipe = workdir / "shapes_tiny.yaml"
    recipe.write_text(SHAPES_RECIPE)

    trained = cli("train", recipe)
    assert trained.exit_code == 0, trained.output
    run = Path("runs") / "shapes_tiny"
    assert len(read_jsonl(run / "metrics.jsonl")) == 15

    on_test = cli("eval", run)
    assert on_test.exit_code == 0, on_test.output
    report = json.loads((run / "eval_test.json").read_text())
    assert report["samples"] == 18 and report["evaluated_on"] == "shapes test split"
    assert report["accuracy"] >= 0.8, report  # chance is 1/3; the classes differ by colour
    on_val = cli("eval", run, "--split", "val")
    assert on_val.exit_code == 0, on_val.output
    assert "shapes val split (which also chose this checkpoint by val_accuracy" in " ".join(on_val.stdout.split())

    on_zip = cli("eval", run, "--data", image_zip)
    assert on_zip.exit_code == 0, on_zip.output
    zip_report = json.loads((run / f"eval_data-{image_zip.stem}.json").read_text())
    assert zip_report["samples"] == 72
    assert f"{72:,} samples" in on_zip.stdout
    assert [row["support"] for row in zip_report["per_class"]] == [24, 24, 24]
    assert zip_report["accuracy"] >= 0.8
    assert (run / f"confusion_data-{image_zip.stem}.png").read_bytes()[:8] == PNG_SIGNATURE


# --- resume --------------------------------------------------------------------------------------

def test_resume_continues_at_the_next_epoch(cli, digits_run):
    rows_before = read_jsonl(digits_run / "metrics.jsonl")
    best_before = (digits_run / "checkpoints" / "best.pt").read_bytes()
    result = cli("train", "--resume", digits_run, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output

    rows = read_jsonl(digits_run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[:2] == rows_before  # the finished epochs are kept as they were
    assert rows[2]["elapsed_s"] >= rows[1]["elapsed_s"]
    assert "resumed at epoch 3" in (digits_run / "train.log").read_text()
    assert yaml.safe_load((digits_run / "config.yaml").read_text())["train"]["epochs"] == 3
    assert torch.load(digits_run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
    best = torch.load(digits_run / "checkpoints" / "best.pt", weights_only=True)
    if best["epoch"] != 3:  # best.pt is only replaced when validation improved
        assert (digits_run / "checkpoints" / "best.pt").read_bytes() == best_before
    assert not (Path("runs") / "digits-2").exists()  # resuming never starts a new directory


def test_resume_of_a_finished_run_needs_more_epochs(cli, digits_run):
    before = snapshot(digits_run)
    message = assert_user_error(cli("train", "--resume", digits_run))
    assert "train.epochs" in message and "2" in message
    assert snapshot(digits_run) == before


def test_resume_and_a_recipe_together_is_an_error(cli, digits_run):
    message = assert_user_error(cli("train", "digits", "--resume", digits_run))
    assert "--resume" in message


# --- prepare without network ---------------------------------------------------------------------

def test_prepare_mnist_without_network_names_the_files_to_fetch(cli, workdir):
    result = cli("prepare", "mnist")
    if result.exit_code == 0:
        pytest.skip("MNIST could be downloaded: this machine has network access")
    message = assert_user_error(result)
    for name in MNIST_FILES:
        assert name in message
    assert "perceiver prepare mnist --from" in message
    assert not (workdir / "data" / "mnist").exists()

"""The new tasks as a user runs them, end to end through the CLI: prepare knee-seg -> train a
segmentation -> eval (Dice table, JSON, overlay PNG) -> eval other patients with --data; MAE
pretraining -> eval (reconstructions vs baseline) -> a classifier fine-tuned from its encoder; and
the real OAI label maps prepared with --synthesize and trained (skipped without ../shared/data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY, set_args
from test_akoa import SHARED, write_png_slices
from test_kneeseg import write_pairs

SEGMENT = ["task.name=segment", "data.dataset=knee-seg", "model.num_latents=8", "model.latent_dim=32",
           "model.latent_blocks=1", "model.latent_heads=2", "model.num_bands=4", "model.max_freq=16",
           "model.patch_size=4", "task.output_stride=2", "train.batch_size=16", "train.eval_batch_size=32",
           "optim.lr=3e-3", "train.device=cpu", "optim.scheduler=constant", "optim.warmup_epochs=0"]
MASKED = TINY + ["task.name=masked_image", "train.best_metric=val_loss", "task.mask_ratio=0.5", "train.epochs=2"]


def recipe_file(path: Path, overrides: list[str]) -> Path:
    """A recipe holding only `overrides` (so task defaults, such as best_metric, apply)."""
    lines = {}
    for assignment in overrides:
        key, value = assignment.split("=", 1)
        section, name = key.split(".", 1)
        lines.setdefault(section, []).append(f"  {name}: {value}")
    path.write_text("".join(f"{section}:\n" + "\n".join(entries) + "\n" for section, entries in lines.items()))
    return path


def test_segmentation_from_prepare_to_eval_on_other_patients(cli, workdir):
    images, labels = write_pairs(workdir / "volumes")
    result = cli("prepare", "knee-seg", "--images", images, "--labels", labels, "--size", "16x16", "--split", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    recipe = recipe_file(workdir / "seg.yaml", SEGMENT + ["train.epochs=12", "train.save_attention_maps=true",
                                                          "train.loggers=[tensorboard]", "train.attention_interval=6"])
    result = cli("train", str(recipe), "--name", "seg")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in Path("runs/seg/metrics.jsonl").read_text().splitlines()]
    assert "val_dice" in rows[-1] and "val dice" in result.stdout
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator("runs/seg", size_guidance={"images": 0}).Reload()
    overlays = events.Images("segmentation/val")  # image | truth | prediction of the probe slices
    assert [e.step for e in overlays] == [6, 12] and overlays[0].width > 200 and overlays[0].height > 200

    result = cli("eval", "runs/seg")
    assert result.exit_code == 0, result.output
    report = json.loads(Path("runs/seg/eval_test.json").read_text())
    assert report["task"] == "segment" and report["mean_dice"] > 0.5  # learnt: background alone scores 0
    assert [row["class"] for row in report["per_class"]][:2] == ["background", "label_1"]
    assert Path("runs/seg/segment_test.png").stat().st_size > 1000
    assert "Dice" in result.stdout and "label_2" in result.stdout
    result = cli("eval", "runs/seg", "--largest-component", "label_1")  # only its largest region per slice
    assert result.exit_code == 0, result.output
    cleaned = json.loads(Path("runs/seg/eval_test.json").read_text())
    assert cleaned["largest_component"] == ["label_1"] and "only the largest region of label_1" in result.stdout
    plain, clean = (next(r for r in doc["per_class"] if r["class"] == "label_1") for doc in (report, cleaned))
    assert clean["predicted_pixels"] <= plain["predicted_pixels"] and clean["pixels"] == plain["pixels"]
    result = cli("eval", "runs/seg", "--largest-component", "femur")
    assert result.exit_code == 2 and "--largest-component femur: not a foreground class" in result.output
    cli("eval", "runs/seg")  # the plain figures again, for the report below
    result = cli("attention", "runs/seg")  # captured while training (train.save_attention_maps)
    assert result.exit_code == 0, result.output
    (stage,) = json.loads(Path("runs/seg/attention/stats.json").read_text())["epochs"]["12"].values()
    assert len(stage["samples"]) == 8 and Path("runs/seg/attention/epoch_0012_stage_0.png").stat().st_size > 1000
    result = cli("attention", "runs/seg", "--input", "runs/seg/segment_test.png")  # a user's own image
    assert result.exit_code == 0, result.output
    result = cli("report", "runs/seg")  # judged by Dice, not by the background-dominated pixel accuracy
    assert result.exit_code == 0, result.output
    summary = json.loads(Path("runs/seg/report.json").read_text())["runs"]["runs/seg"]
    assert summary["test_mean_dice"] == report["mean_dice"]
    assert summary["best_val_dice"] == max(row["val_dice"] for row in rows) and "best val Dice" in result.stdout

    # other patients, prepared on their own (all test): their label names matched to the run's
    others = workdir / "others"
    for folder in ("images", "labels"):
        (others / folder).mkdir(parents=True)
        for path in sorted((workdir / "volumes" / folder).glob("9000005_*")):
            shutil.copy(path, others / folder / path.name)
    result = cli("prepare", "knee-seg", "--images", others / "images", "--labels", others / "labels", "--size", "16x16",
                 "--split", "0,0,1", "--out", "data/others")
    assert result.exit_code == 0, result.output
    result = cli("eval", "runs/seg", "--data", "data/others")
    assert result.exit_code == 0, result.output
    report = json.loads(Path("runs/seg/eval_data-others.json").read_text())
    assert report["evaluated_on"] == "data/others" and report["samples"] == 8  # 2 visits x 4 labelled slices


def test_masked_image_pretraining_then_a_classifier_from_its_encoder(cli, workdir):
    result = cli("train", *set_args(MASKED), "--name", "mae")
    assert result.exit_code == 0, result.output
    assert "baseline" in result.stdout and "train acc" not in result.stdout  # no accuracy to show
    result = cli("eval", "runs/mae")
    assert result.exit_code == 0, result.output
    report = json.loads(Path("runs/mae/eval_test.json").read_text())
    assert report["task"] == "masked_image" and report["baseline_loss"] > 0 and report["mask_ratio"] == 0.5
    assert Path("runs/mae/reconstruct_test.png").stat().st_size > 1000
    assert "patch-mean baseline" in result.stdout

    result = cli("train", *set_args(TINY + ["train.init=runs/mae"]), "--name", "tuned")
    assert result.exit_code == 0, result.output
    log = Path("runs/tuned/train.log").read_text()
    assert "init: " in log and "from runs/mae" in log and "(classifier, head_norm)" in log
    result = cli("attention", "runs/mae", "--checkpoint", "best")  # its encoder reading the whole image
    assert result.exit_code == 0, result.output
    stats = json.loads(Path("runs/mae/attention/stats.json").read_text())
    (maps,) = stats["epochs"].values()
    assert maps["0"]["samples"] and 0 < maps["0"]["mean"]["entropy"]


def test_akoa_slices_pretrain_without_labels_then_tune_the_laterality_classifier(cli, workdir):
    """recipes/akoa_mae.yaml then recipes/akoa_finetune.yaml: the same encoder, so every encoder
    weight carries over (on fixture slices, both at one small size)."""
    from perceiver_cli.recipe import load_recipe

    mae, _ = load_recipe("akoa_mae", [])
    tuned, _ = load_recipe("akoa_finetune", [])
    encoder = lambda recipe: recipe.model.model_dump(exclude={"output", "decoder_dim"})  # noqa: E731
    assert encoder(mae) == encoder(tuned) and tuned.train.init == "runs/akoa_mae"

    result = cli("prepare", "akoa", "--from", write_png_slices(workdir / "slices"), "--size", "16x20",
                 "--split", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    small = ["model.num_latents=8", "model.latent_dim=32", "model.latent_heads=2", "train.epochs=1", "train.batch_size=16"]
    result = cli("train", "akoa_mae", *set_args(small))
    assert result.exit_code == 0, result.output
    result = cli("train", "akoa_finetune", *set_args(small))
    assert result.exit_code == 0, result.output
    log = Path("runs/akoa_finetune/train.log").read_text()
    assert "init: " in log and "from runs/akoa_mae" in log


@pytest.mark.skipif(not (SHARED / "oai-knee-labels").is_dir(), reason="../shared/data/oai-knee-labels is absent")
def test_the_real_label_maps_prepare_with_synthesis_and_train(cli, workdir):
    maps = workdir / "maps"
    maps.mkdir()
    for path in sorted((SHARED / "oai-knee-labels").glob("*.nii.gz"))[:6]:  # 3 patients x 2 visits
        shutil.copy(path, maps / path.name)
    result = cli("prepare", "knee-seg", "--labels", maps, "--synthesize", "1", "--slices", "3", "--size", "32x32",
                 "--split", "0.34,0.33,0.33")
    assert result.exit_code == 0, result.output
    recipe = recipe_file(workdir / "real.yaml", SEGMENT + ["train.epochs=1"])
    result = cli("train", str(recipe), "--name", "real")
    assert result.exit_code == 0, result.output
    result = cli("eval", "runs/real")
    assert result.exit_code == 0, result.output
    report = json.loads(Path("runs/real/eval_test.json").read_text())
    assert report["samples"] == 6 and len(report["per_class"]) >= 7  # the maps' labels: background and up

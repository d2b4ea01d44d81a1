"""`perceiver predict` and `perceiver_cli.load`: a trained model on a user's own files. The files of a
prepared split, read again by predict, are the split's stored samples to the byte and give eval's
logits exactly (images, point clouds, volume slices, segmentation masks); a run directory and its
export folder predict alike; unreadable inputs are skipped; every bad input is one line, exit 2."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import perceiver_cli
from conftest import TINY, set_args, write_image_folder
from perceiver_cli.data import prepared
from perceiver_cli.engine.runtime import InputTransform, as_tensor, autocast, predict, use_bf16
from perceiver_cli.runs.trained import load_trained
from test_akoa import SHARED, SMALL_MODEL, ras_volume, save_nifti
from test_cli import assert_user_error
from test_kneeseg import write_pairs
from test_modelnet40 import POINT_MODEL, write_modelnet
from test_tasks_cli import SEGMENT, recipe_file


def eval_logits(run: Path, split: str):
    """What eval computes for a split of the run's prepared dataset: (stored x, logits)."""
    model, recipe, loaded = load_trained(run, torch.device("cpu"))
    state = loaded.state
    x = prepared.load(Path(recipe.data.root) if recipe.data.root else Path("data") / state["dataset"]).split(split).x
    cpu = torch.device("cpu")
    transform = InputTransform(state["input_spec"], state["normalization"], cpu, recipe.data)
    bf16 = use_bf16(recipe.train.precision, cpu)  # eval's precision decision (precision: auto)
    return np.asarray(x), predict(model, as_tensor(np.asarray(x), cpu), transform, 64, bf16, cpu)


def files_of(dataset: str, split: str) -> list[str]:
    return json.loads((Path("data") / dataset / "manifest.json").read_text())["splits"][split]["source_files"]


@pytest.fixture
def shapes_run(cli, workdir, tmp_path) -> tuple[Path, Path]:
    """(run, its source image folder): 3 colour classes, a tiny model trained 2 epochs."""
    source = write_image_folder(tmp_path / "shapes_src")
    assert cli("prepare", "shapes", "--from", source, "--val-fraction", "0.25").exit_code == 0
    result = cli("train", "digits", *set_args(TINY + ["data.dataset=shapes"]), "--name", "shapes")
    assert result.exit_code == 0, result.output
    return Path("runs/shapes"), source


def test_images_of_a_split_are_its_stored_samples_and_give_evals_logits(cli, shapes_run):
    run, source = shapes_run
    files = [str(source / name) for name in files_of("shapes", "val")]
    model = perceiver_cli.load(run)
    read = model.read(files)
    stored, logits = eval_logits(run, "val")
    assert np.array_equal(read.stored(), stored)
    assert torch.equal(model.logits(read.stored()), logits)
    rows = model.predict(files, top_k=2)
    assert [row["class"] for row in rows] == [model.classes[i] for i in logits.argmax(1).tolist()]
    assert all(len(row["top_k"]) == 2 and row["top_k"][0]["probability"] >= row["top_k"][1]["probability"] for row in rows)
    with torch.no_grad(), autocast(model.device, model.bf16):  # at eval's precision decision
        direct = model(model.transform(as_tensor(stored, model.device))).float()
    assert isinstance(model, torch.nn.Module) and torch.equal(direct, logits)


def test_predict_command_table_json_csv_and_a_zip(cli, shapes_run, tmp_path):
    run, source = shapes_run
    archive = Path(shutil.make_archive(str(tmp_path / "more"), "zip", source / "red"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    result = cli("predict", run, source / "blue", archive, tmp_path / "broken.png", "--json", "p.json", "--csv", "p.csv")
    assert result.exit_code == 0, result.output
    document = json.loads(Path("p.json").read_text())
    assert len(document["predictions"]) == 48 and document["classes"] == ["blue", "green", "red"]
    assert document["skipped"] == [{"input": str(tmp_path / "broken.png"),
                                    "reason": "not a readable image (corrupt, or not the format its extension says)"}]
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    lines = list(csv.DictReader(Path("p.csv").open()))
    assert len(lines) == 48 and lines[0]["input"] == str(source / "blue" / "000.png")
    assert {row["class"] for row in document["predictions"]} <= set(document["classes"])
    assert "blue/000.png" in result.stdout and "48 prediction(s)" in result.stdout


def test_an_export_folder_predicts_as_its_run_does(cli, shapes_run, tmp_path):
    run, source = shapes_run
    result = cli("export", run, "--format", "safetensors", "--out", tmp_path / "exported")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "exported"
    files = sorted((source / "green").glob("*.png"))[:5]
    from_run, from_folder = perceiver_cli.load(run), perceiver_cli.load(folder)
    assert torch.equal(from_run.logits(from_run.read(files).stored()), from_folder.logits(from_folder.read(files).stored()))
    result = cli("predict", folder, *files)
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(not (SHARED / "cifar10-jpg" / "train.zip").is_file(), reason="../shared/data/cifar10-jpg is absent")
def test_real_cifar_jpegs_predict_as_eval_sees_them(cli, workdir, tmp_path):
    """Real colour JPEGs (a few of the 50,000), prepared as a folder at 24x24, so every file is resized."""
    import zipfile

    with zipfile.ZipFile(SHARED / "cifar10-jpg" / "train.zip") as archive:
        for name in [n for n in archive.namelist() if n.endswith(("0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"))]:
            target = tmp_path / "cifar" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(name))
    source = tmp_path / "cifar"
    assert cli("prepare", "cifar_small", "--from", source, "--size", "24x24", "--val-fraction", "0.25").exit_code == 0
    result = cli("train", "digits", *set_args(TINY + ["data.dataset=cifar_small", "train.epochs=1"]), "--name", "cifar")
    assert result.exit_code == 0, result.output
    files = [str(source / name) for name in files_of("cifar_small", "val")]
    model = perceiver_cli.load("runs/cifar")
    stored, logits = eval_logits(Path("runs/cifar"), "val")
    assert np.array_equal(model.read(files).stored(), stored) and stored.shape[1:] == (24, 24, 3)
    assert torch.equal(model.logits(stored), logits)


def test_point_clouds_are_sampled_as_prepared(cli, workdir, tmp_path):
    source = write_modelnet(tmp_path / "meshes", train=6, test=2)
    assert cli("prepare", "modelnet40", "--from", source, "--points", 128, "--workers", 1).exit_code == 0
    result = cli("train", "modelnet40", *set_args(POINT_MODEL + ["train.epochs=1"]), "--name", "points")
    assert result.exit_code == 0, result.output
    model = perceiver_cli.load("runs/points")
    files = [str(source / name) for name in files_of("modelnet40", "test")]
    read = model.read(files)
    stored, logits = eval_logits(Path("runs/points"), "test")
    assert np.array_equal(read.stored(), stored)
    assert torch.equal(model.logits(read.stored()), logits)
    line = assert_user_error(cli("predict", "runs/points", tmp_path / "meshes" / "x.png"))  # no such file
    assert "x.png: no such file" in line
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    line = assert_user_error(cli("predict", "runs/points", tmp_path / "photo.png"))
    assert "photo.png: an image, and this model reads meshes (OFF/PLY/STL/OBJ): nothing to predict" in line
    stl = tmp_path / "box.stl"
    stl.write_bytes(__import__("trimesh").creation.box().export(file_type="stl"))
    result = cli("predict", "runs/points", stl, "--json", "p.json")  # another mesh format, the same sampling
    assert result.exit_code == 0, result.output
    assert json.loads(Path("p.json").read_text())["predictions"][0]["input"] == str(stl)


def test_volume_slices_are_sliced_as_prepared_with_a_summary_per_volume(cli, workdir, tmp_path):
    source = tmp_path / "volumes"
    for i in range(6):
        save_nifti(ras_volume("LEFT" if i % 2 else "RIGHT", seed=i), source / f"{9000000 + i}_00m_knee.nii.gz")
    labels = tmp_path / "sides.csv"
    labels.write_text("file,label\n" + "".join(f"{9000000 + i}_00m_knee.nii.gz,{'LEFT' if i % 2 else 'RIGHT'}\n" for i in range(6)))
    result = cli("prepare", "akoa", "--from", source, "--pattern", r"^(?P<patient>\d+)_(?P<visit>\d+m)_",
                 "--labels", labels, "--slices", 4, "--size", "12x14", "--split", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    result = cli("train", "akoa", *set_args(SMALL_MODEL + ["train.epochs=1"]), "--name", "knees")
    assert result.exit_code == 0, result.output
    tested = files_of("akoa", "test")  # "<file>#slice=<i>"
    volumes = sorted({name.split("#")[0] for name in tested})
    model = perceiver_cli.load("runs/knees")
    read = model.read([source / v for v in volumes])
    by_name = {s.name.replace(str(source) + "/", ""): s.array for s in read.samples}
    stored, logits = eval_logits(Path("runs/knees"), "test")
    assert np.array_equal(np.stack([by_name[name] for name in tested]), stored)
    assert torch.equal(model.logits(np.stack([by_name[name] for name in tested])), logits)

    result = cli("predict", "runs/knees", *[source / v for v in volumes], "--json", "p.json")
    assert result.exit_code == 0, result.output
    rows = json.loads(Path("p.json").read_text())["predictions"]
    summaries = [row for row in rows if "slices" in row]
    assert [row["input"] for row in summaries] == [str(source / v) for v in volumes]
    assert all(row["slices"] == 4 for row in summaries) and "per volume" in result.stdout
    # a checkpoint from before checkpoints recorded how prepare sliced: the run's manifest says it
    for name in ("best.pt", "last.pt"):
        path = Path("runs/knees/checkpoints") / name
        state = torch.load(path, weights_only=True)
        del state["source"]
        torch.save(state, path)
    assert perceiver_cli.load("runs/knees").predict([source / volumes[0]])[-1]["slices"] == 4
    line = assert_user_error(cli("predict", "runs/knees", labels))
    assert "sides.csv: not an image, mesh or NIfTI volume, and this model reads images and NIfTI volumes" in line


def test_a_segmentation_run_writes_a_mask_png_per_slice(cli, workdir, tmp_path):
    images, label_maps = write_pairs(tmp_path / "pairs")
    assert cli("prepare", "knee-seg", "--images", images, "--labels", label_maps, "--size", "16x16",
               "--split", "0.6,0.2,0.2").exit_code == 0
    result = cli("train", str(recipe_file(tmp_path / "seg.yaml", SEGMENT + ["train.epochs=1"])), "--name", "seg")
    assert result.exit_code == 0, result.output
    tested = files_of("knee-seg", "test")  # "<label map>#slice=<i>"
    volume = images / Path(tested[0].split("#")[0]).name.replace("_seg.nii.gz", ".nii.gz")
    result = cli("predict", "runs/seg", volume, "--masks", "masks", "--json", "p.json")
    assert result.exit_code == 0, result.output
    rows = json.loads(Path("p.json").read_text())["predictions"]
    (whole,) = [row for row in rows if "slices" in row]
    rows = [row for row in rows if "slices" not in row]
    assert len(rows) == 6  # every slice of the scan: a new one has no label map to say where to look
    stored, logits = eval_logits(Path("runs/seg"), "test")
    compared = 0
    for row in rows:
        mask = np.asarray(Image.open(row["mask_file"]))
        assert mask.shape == (16, 16) and mask.max() < 4
        index = int(row["input"].split("#slice=")[1])
        name = f"{tested[0].split('#')[0]}#slice={index}"
        if name in tested:  # the labelled slices: the mask is eval's prediction for that stored slice
            compared += 1
            assert np.array_equal(mask, logits[tested.index(name)].argmax(-1).numpy())
    assert compared == 4  # slices 1-4 hold labels

    # and one label volume on the scan's own grid and affine, each slice's mask in its place
    import nibabel as nib
    from perceiver_cli.data.nifti import load_nifti as _load_nifti

    scan, labels = nib.load(volume), nib.load(whole["mask_file"])
    assert labels.shape == scan.shape and np.allclose(labels.affine, scan.affine) and labels.get_data_dtype() == np.uint8
    laid_out = _load_nifti(Path(whole["mask_file"]).read_bytes(), True, None)  # as the slices were cut
    for row in rows:
        mask = np.asarray(Image.open(row["mask_file"]))
        native = np.asarray(Image.fromarray(mask).resize(laid_out.shape[1:][::-1], Image.Resampling.NEAREST))
        assert np.array_equal(laid_out[row["slice"]], native)
    assert whole["slices"] == 6 and abs(sum(whole["shares"].values()) - 1) < 1e-6
    assert abs(sum(rows[0]["shares"].values()) - 1) < 1e-6 and "mask" in result.stdout

    # the bones' stray islands cleaned: each mask is the plain one with only its largest label_1 region kept
    from perceiver_cli.tasks.masks import largest_components

    result = cli("predict", "runs/seg", volume, "--masks", "clean", "--json", "clean.json", "--largest-component", "label_1")
    assert result.exit_code == 0, result.output
    assert "only the largest region of label_1 kept in each mask" in result.stdout
    cleaned = json.loads(Path("clean.json").read_text())
    assert cleaned["largest_component"] == ["label_1"]
    for plain, clean in zip(rows, [row for row in cleaned["predictions"] if "slices" not in row]):
        expected = largest_components(np.asarray(Image.open(plain["mask_file"]))[None], [1])[0]
        assert np.array_equal(np.asarray(Image.open(clean["mask_file"])), expected)
    assert "not a foreground class of this run" in assert_user_error(
        cli("predict", "runs/seg", volume, "--largest-component", "femur"))

    # any output size from the same model: its decoder's queries are positions (Perceiver IO)
    result = cli("predict", "runs/seg", volume, "--masks", "big", "--mask-size", "32x48", "--json", "big.json")
    assert result.exit_code == 0, result.output
    big = json.loads(Path("big.json").read_text())["predictions"]
    assert all(np.asarray(Image.open(row["mask_file"])).shape == (32, 48) for row in big if "slices" not in row)
    assert "multiple of 2" in assert_user_error(cli("predict", "runs/seg", volume, "--mask-size", "33x48"))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    assert "none of the 1 inputs could be read" in assert_user_error(cli("predict", "runs/seg", tmp_path / "broken.nii.gz"))
    assert not Path("predictions").exists()  # the default --masks folder: nothing made for nothing read
    assert "HEIGHTxWIDTH" in assert_user_error(cli("predict", "runs/seg", volume, "--mask-size", "big"))


def test_a_masked_image_run_has_nothing_to_predict(cli, workdir, tmp_path):
    result = cli("train", *set_args(TINY + ["task.name=masked_image", "train.best_metric=val_loss",
                                            "task.mask_ratio=0.5", "train.epochs=1"]), "--name", "mae")
    assert result.exit_code == 0, result.output
    Image.new("L", (8, 8)).save(tmp_path / "digit.png")
    line = assert_user_error(cli("predict", "runs/mae", tmp_path / "digit.png"))
    assert "a task.name=masked_image run makes no predictions on new inputs" in line


def test_a_file_of_the_wrong_kind_is_skipped_alike_named_or_in_a_folder(cli, shapes_run, tmp_path):
    run, source = shapes_run
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(source / "red" / "000.png", inbox / "red.png")
    (inbox / "notes.txt").write_text("not an image")
    (inbox / "cube.off").write_text("OFF\n0 0 0\n")
    named = cli("predict", run, inbox / "red.png", inbox / "notes.txt", inbox / "cube.off", "--json", "named.json")
    in_folder = cli("predict", run, inbox, "--json", "folder.json")
    assert named.exit_code == 0 and in_folder.exit_code == 0, named.output + in_folder.output
    reasons = {"notes.txt": "not an image, mesh or NIfTI volume, and this model reads images",
               "cube.off": "a mesh, and this model reads images"}
    for result, document in ((named, "named.json"), (in_folder, "folder.json")):
        written = json.loads(Path(document).read_text())
        assert [row["input"] for row in written["predictions"]] == [str(inbox / "red.png")]
        assert {Path(item["input"]).name: item["reason"] for item in written["skipped"]} == reasons
        for name, reason in reasons.items():
            assert f"skipped {inbox / name}: {reason}" in result.stderr
    # nothing predicted: exit 2, one line with the reason, given directly or in a folder
    line = assert_user_error(cli("predict", run, inbox / "cube.off"))
    assert "cube.off: a mesh, and this model reads images: nothing to predict" in line
    (inbox / "red.png").unlink()
    line = assert_user_error(cli("predict", run, inbox))
    assert "no inputs this model reads (images) found" in line and "and this model reads images" in line


def test_bad_targets_and_inputs_are_one_line(cli, shapes_run, tmp_path):
    run, source = shapes_run
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert "no inputs this model reads (images) found" in assert_user_error(cli("predict", run, empty))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert "none of the 1 inputs could be read" in assert_user_error(cli("predict", run, tmp_path / "bad.png"))
    assert "neither a run directory" in assert_user_error(cli("predict", empty, source / "red" / "000.png"))
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text(json.dumps({"format": "perceiver-export/1", "recipe": {}, "checkpoint": {}}))
    assert "incomplete export" in assert_user_error(cli("predict", incomplete, source / "red" / "000.png"))
    broken = tmp_path / "broken_run" / "checkpoints"
    broken.mkdir(parents=True)
    (broken / "best.pt").write_bytes((run / "checkpoints" / "best.pt").read_bytes()[:200])
    line = assert_user_error(cli("predict", broken.parent, source / "red" / "000.png"))
    assert "best.pt: not a readable perceiver checkpoint" in line
    assert "is a folder" in assert_user_error(cli("predict", run, source / "red" / "000.png", "--json", str(tmp_path)))
    line = assert_user_error(cli("predict", run, source / "red" / "000.png", "--mask-size", "16x16"))
    assert "--mask-size is for segmentation runs" in line


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("P", "I", "R"), ("L", "S", "A")])
@pytest.mark.parametrize("axis", [None, 1])
def test_a_label_volume_goes_back_onto_the_scans_own_voxels(tmp_path, axcodes, axis):
    """Labels laid out as the slices were cut (akoa's orientation, or a forced axis) are written on the
    stored voxel grid and affine of the scan, whatever its stored order: every voxel in its place."""
    import gzip

    import nibabel as nib
    from perceiver_cli.data.nifti import labels_nifti, nifti_image, oriented

    voxels = np.random.default_rng(0).integers(0, 10, (6, 7, 8)).astype(np.int16)
    image = nifti_image(save_nifti(voxels, tmp_path / "scan.nii.gz", axcodes).read_bytes(), True)
    written = nib.Nifti1Image.from_bytes(gzip.decompress(labels_nifti(oriented(image, axis), image.affine, axis)))
    assert np.array_equal(np.asanyarray(written.dataobj), np.asanyarray(image.dataobj))
    assert np.allclose(written.affine, image.affine)

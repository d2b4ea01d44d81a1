"""`perceiver prepare akoa`: NIfTI volumes (written with nibabel) and AKOA-named PNG slices for
several patients, visits and both knees; the split never puts a patient in two splits; a model
trained on the prepared slices learns laterality; the real knee volumes when present."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from conftest import set_args
from perceiver_cli.data.akoa import AkoaOptions, identify, read_akoa
from perceiver_cli.data.splits import split_groups
from test_cli import assert_user_error

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VISITS = ("BaseLine", "1_Year")
# patient -> knees scanned (some patients have both)
PATIENTS = {f"90{i:05d}": ("LEFT", "RIGHT") if i % 3 == 0 else (("LEFT",) if i % 2 else ("RIGHT",)) for i in range(12)}
SMALL_MODEL = ["model.num_latents=8", "model.latent_dim=32", "model.latent_blocks=1", "model.latent_heads=2",
               "model.cross_attends=1", "model.num_bands=4", "model.max_freq=8", "model.share_weights=true",
               "model.dropout=0", "model.activation=gelu", "model.cross_head_dim=32", "model.latent_head_dim=16",
               "optim.name=adamw", "optim.lr=0.003", "optim.scheduler=constant", "train.batch_size=16"]


def knee_slice(side: str, height: int, width: int, rng) -> np.ndarray:
    """A toy sagittal slice: noise, a 'bone' in the middle, and a bright block whose place
    (anterior for right knees, posterior for left) is what tells the sides apart."""
    image = rng.normal(40, 10, (height, width))
    image[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] += 60
    cols = slice(0, width // 4) if side == "RIGHT" else slice(width - width // 4, width)
    image[: height // 3, cols] += 150
    return image.clip(0, 255).astype(np.uint8)


def write_png_slices(root: Path, slices: int = 6, size=(16, 20), seed: int = 0) -> Path:
    """AKOA-named PNG slices: OAI<patient>_<visit>_3_de3d1_SAG_3D_DESS_WE_<SIDE>.nii.gz_idx_<i>.png"""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for patient, sides in PATIENTS.items():
        for visit in VISITS:
            for side in sides:
                for i in range(slices):
                    name = f"OAI{patient}_{visit}_3_de3d1_SAG_3D_DESS_WE_{side}.nii.gz_idx_{i}.png"
                    Image.fromarray(knee_slice(side, *size, rng)).save(root / name)
    return root


def ras_volume(side: str, shape=(10, 14, 12), seed: int = 0) -> np.ndarray:
    """A volume in RAS voxel order (x left->right, y posterior->anterior, z inferior->superior)
    with a bright block high and anterior (right knee) or high and posterior (left knee)."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(100, 20, shape)
    x, y, z = shape
    ys = slice(y - y // 4, y) if side == "RIGHT" else slice(0, y // 4)
    volume[:, ys, z - z // 3 :] += 800
    return volume.astype(np.int16)


def save_nifti(volume_ras: np.ndarray, path: Path, axcodes=("R", "A", "S")) -> Path:
    """Save the RAS volume stored in another voxel order (e.g. the real DESS file's P, I, R)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(volume_ras, np.diag([0.5, 0.4, 1.5, 1.0]))
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(axcodes))
    nib.save(image.as_reoriented(transform), path)
    return path


@pytest.fixture(scope="module")
def png_slices(tmp_path_factory) -> Path:
    return write_png_slices(tmp_path_factory.mktemp("akoa") / "slices")


def read_manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def patient_of(source_file: str) -> str:
    return source_file.split("OAI")[1].split("_")[0]


# --- who is in a file ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, patient, visit, label", [
    ("OAI9014797_BaseLine_3_de3d1_SAG_3D_DESS_WE_LEFT.nii.gz_idx_7.png", "9014797", "BaseLine", "left"),
    ("OAI9014797_1_Year_3_de3d1_SAG_3D_DESS_WE_Right.nii.gz_idx_0.png", "9014797", "1_Year", "right"),
    ("oai9000099_2_years_sag_R.png", "9000099", "2_years", "right"),
    ("OAI9000099_BaseLine_knee_l.nii.gz", "9000099", "BaseLine", "left"),
    ("OAI9000099_BaseLine_SAG.nii.gz", "9000099", "BaseLine", None),  # no side in the name: not guessed
    ("OAI9000099_LEFT_vs_RIGHT.png", "9000099", None, None),  # both sides: ambiguous, not guessed
    ("9014797_00m_WB01_bone.nii.gz", None, None, None),
])
def test_akoa_names_give_patient_visit_and_side(name, patient, visit, label):
    who = identify(name, None, {})
    assert (who.patient, who.visit, who.label) == (patient, visit, label)


def test_csv_wins_over_pattern_which_wins_over_the_akoa_naming():
    import re
    name = "OAI9014797_BaseLine_SAG_LEFT.png"
    pattern = re.compile(r"OAI(?P<patient>\d{4})")
    assert identify(name, pattern, {}).patient == "9014"
    table = {name: {"label": "R", "patient": "p1"}}
    who = identify(f"sub/{name}", pattern, table)
    assert (who.patient, who.label, who.visit) == ("p1", "right", "BaseLine")


def test_split_keeps_groups_whole_and_classes_balanced():
    rng = np.random.default_rng(0)
    groups, labels = [], []
    for patient in range(40):
        for side in rng.choice(2, size=rng.integers(1, 3), replace=False):
            groups += [f"p{patient}"] * 10
            labels += [int(side)] * 10
    labels = np.array(labels)
    split = split_groups(groups, labels, 2, (0.7, 0.15, 0.15), seed=0)
    for group in set(groups):
        assert len(set(split[[g == group for g in groups]])) == 1
    for s, share in enumerate((0.7, 0.15, 0.15)):
        for c in (0, 1):
            got = ((split == s) & (labels == c)).sum() / (labels == c).sum()
            assert abs(got - share) < 0.08, (s, c, got)
    assert not np.array_equal(split, split_groups(groups, labels, 2, (0.7, 0.15, 0.15), seed=1))


# --- PNG slices ------------------------------------------------------------------------------------

def test_prepare_png_slices_splits_by_patient(cli, workdir, png_slices):
    result = cli("prepare", "akoa", "--from", png_slices, "--size", "16x20", "--split", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(workdir / "data" / "akoa")
    assert manifest["classes"] == ["left", "right"]
    splits = manifest["splits"]
    assert set(splits) == {"train", "val", "test"}
    patients = [set(splits[s]["patients"]) for s in splits]
    assert set.union(*patients) == set(PATIENTS)
    assert sum(len(p) for p in patients) == len(PATIENTS)  # disjoint
    for name, split in splits.items():  # every slice belongs to a patient listed for its split
        assert {patient_of(f) for f in split["source_files"]} == set(split["patients"])
    volumes = sum(len(sides) for sides in PATIENTS.values()) * len(VISITS)
    assert sum(s["volumes"] for s in splits.values()) == volumes
    assert sum(s["count"] for s in splits.values()) == volumes * 6
    assert manifest["input"] == {"kind": "image", "shape": [16, 20, 1]}
    assert manifest["skipped"] == []
    assert "no patient is in two splits" in result.stdout
    assert "patients" in result.stdout and "volumes" in result.stdout


def test_split_by_volume_keeps_only_volumes_whole(cli, workdir, png_slices):
    result = cli("prepare", "akoa", "--from", png_slices, "--size", "16x20", "--split-by", "volume", "--split", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(workdir / "data" / "akoa")
    where = {}
    for name, split in manifest["splits"].items():
        for f in split["source_files"]:
            volume = f.split("_idx_")[0]
            assert where.setdefault(volume, name) == name
    assert manifest["source"]["split_by"] == "volume"
    assert manifest["source"]["patients_in_several_splits"]  # what the stricter default prevents


def test_prepare_is_deterministic_and_the_seed_changes_the_split(cli, workdir, png_slices):
    for out, seed in (("a", 0), ("b", 0), ("c", 5)):
        assert cli("prepare", "akoa", "--from", png_slices, "--size", "16x20", "--seed", seed, "--out", out).exit_code == 0
    a, b, c = (read_manifest(workdir / d)["splits"] for d in "abc")
    assert a == b
    assert a["train"]["patients"] != c["train"]["patients"]


def test_training_on_prepared_slices_learns_laterality(cli, workdir, png_slices):
    assert cli("prepare", "akoa", "--from", png_slices, "--size", "16x20", "--split", "0.5,0.25,0.25").exit_code == 0
    result = cli("train", "akoa", *set_args(SMALL_MODEL + ["train.epochs=12"]))
    assert result.exit_code == 0, result.output
    assert cli("eval", "runs/akoa").exit_code == 0
    report = json.loads((workdir / "runs" / "akoa" / "eval_test.json").read_text())
    assert report["accuracy"] >= 0.8, report["accuracy"]  # chance: about 0.5


# --- NIfTI volumes ---------------------------------------------------------------------------------

def test_sagittal_slices_do_not_depend_on_the_stored_voxel_order(tmp_path):
    volume = ras_volume("RIGHT")
    save_nifti(volume, tmp_path / "ras" / "OAI9000001_BaseLine_RIGHT.nii.gz")
    save_nifti(volume, tmp_path / "pir" / "OAI9000001_BaseLine_RIGHT.nii.gz", axcodes=("P", "I", "R"))
    options = AkoaOptions(slices=None, size=(12, 14), split=(1.0, 0.0, 0.0))
    ras = read_akoa(tmp_path / "ras", options).splits["train"].x
    pir = read_akoa(tmp_path / "pir", options).splits["train"].x
    assert ras.shape == (10, 12, 14, 1)  # every sagittal (left-right) position, superior x anterior
    np.testing.assert_array_equal(ras, pir)
    # shown superior up, anterior left: a right knee's block is in the top-left corner
    mean = ras[..., 0].astype(float).mean(0)
    assert mean[:3, :3].mean() > mean[:3, -3:].mean() + 100


def test_nifti_volumes_slice_evenly_and_bad_files_are_reported(cli, workdir, tmp_path):
    source = tmp_path / "volumes"
    source.mkdir()
    for i in range(6):
        save_nifti(ras_volume("LEFT" if i % 2 else "RIGHT", seed=i), source / f"{9000000 + i}_00m_knee.nii.gz")
    (source / "9000099_00m_knee.nii.gz").write_bytes(b"not a nifti volume")
    save_nifti(ras_volume("LEFT"), source / "unlabelled_scan.nii")
    labels = tmp_path / "sides.csv"
    with open(labels, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for i in range(6):
            writer.writerow([f"{9000000 + i}_00m_knee.nii.gz", "LEFT" if i % 2 else "RIGHT"])
        writer.writerow(["9000099_00m_knee.nii.gz", "LEFT"])
    result = cli("prepare", "akoa", "--from", source, "--pattern", r"^(?P<patient>\d+)_(?P<visit>\d+m)_",
                 "--labels", labels, "--slices", 4, "--size", "12x14", "--split", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(workdir / "data" / "akoa")
    assert sum(s["count"] for s in manifest["splits"].values()) == 6 * 4
    skipped = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert set(skipped) == {"9000099_00m_knee.nii.gz", "unlabelled_scan.nii"}
    assert skipped["9000099_00m_knee.nii.gz"].startswith("cannot read")
    assert "no label or patient" in skipped["unlabelled_scan.nii"]
    assert "skipped 2 input(s)" in result.stderr
    slices = [f for s in manifest["splits"].values() for f in s["source_files"]]
    assert sorted({f.split("#slice=")[1] for f in slices}, key=int) == ["0", "3", "6", "9"]  # 4 of 10, evenly


@pytest.mark.parametrize("args, expected", [
    (["--split", "0.5,0.5"], "--split 0.5,0.5: give three shares"),
    (["--pattern", "(?P<patient>"], "not a valid regular expression"),
    (["--pattern", r"\d+"], "has none of the named groups"),
    (["--slices", "some"], "--slices 'some'"),
    (["--points", "5"], "--points applies to `prepare modelnet40` only"),
    (["--split", "nan,nan,nan"], "--split nan,nan,nan: give three shares"),
    (["--seed", "-1"], "--seed -1: must be 0 or more"),
])
def test_bad_akoa_options_are_one_clear_line(cli, workdir, png_slices, args, expected):
    line = assert_user_error(cli("prepare", "akoa", "--from", png_slices, *args))
    assert expected in line


def test_a_folder_without_volumes_or_slices_is_one_clear_line(cli, workdir, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("nothing here")
    line = assert_user_error(cli("prepare", "akoa", "--from", tmp_path / "notes"))
    assert "no NIfTI volumes (.nii, .nii.gz) or PNG slices found" in line


def test_too_few_patients_for_the_split_is_one_clear_line(cli, workdir, tmp_path):
    source = write_png_slices(tmp_path / "two", slices=1)
    for path in source.iterdir():
        if not path.name.startswith(("OAI9000000", "OAI9000001")):
            path.unlink()
    line = assert_user_error(cli("prepare", "akoa", "--from", source))
    assert "only 2 groups to split" in line


# --- the real volumes ------------------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED / "knee-mri").is_dir(), reason="../shared/data/knee-mri not present")
def test_the_real_dess_volume_slices_sagittally():
    dataset = read_akoa(SHARED / "knee-mri", AkoaOptions(pattern=r"(?P<patient>dess)_sagittal_(?P<label>right)",
                                                         slices=6, size=(128, 128), split=(1.0, 0.0, 0.0)))
    x = dataset.splits["train"].x[..., 0]
    assert x.shape == (6, 128, 128) and dataset.classes == ["right"]
    # 80 sagittal positions in the file (its third voxel axis is left-right): evenly spaced picks
    assert [f.split("#slice=")[1] for f in dataset.splits["train"].extra["source_files"]] == ["0", "16", "32", "47", "63", "79"]
    assert all(image.std() > 10 for image in x)  # anatomy, not empty slices


@pytest.mark.skipif(not (SHARED / "oai-knee-labels").is_dir(), reason="../shared/data/oai-knee-labels not present")
def test_the_real_oai_volumes_split_with_both_visits_of_a_patient_together(tmp_path):
    files = sorted(p.name for p in (SHARED / "oai-knee-labels").glob("*.nii.gz"))
    labels = tmp_path / "labels.csv"  # the names carry no side: a CSV gives one (alternating by patient)
    with open(labels, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        for name in files:
            writer.writerow([name, "left" if int(name.split("_")[0]) % 2 else "right"])
    dataset = read_akoa(SHARED / "oai-knee-labels", AkoaOptions(
        pattern=r"^(?P<patient>\d+)_(?P<visit>\d+m)_", labels=labels, slices=2, size=(48, 48)))
    assert dataset.skipped == []
    patients = [set(split.extra["patients"]) for split in dataset.splits.values()]
    assert sum(len(p) for p in patients) == len(set.union(*patients)) == 24
    for split in dataset.splits.values():
        visits = {}
        for f in split.extra["source_files"]:
            patient, visit = f.split("_")[:2]
            visits.setdefault(patient, set()).add(visit)
        assert all(len(v) == 2 for v in visits.values())  # both visits of each patient, in this split
    assert sum(len(s.y) for s in dataset.splits.values()) == 48 * 2


# --- sizes and images too large to decode --------------------------------------------------------------

def test_a_size_whose_slices_cannot_fit_is_refused_before_reading(cli, workdir, png_slices, monkeypatch):
    import perceiver_cli.data.akoa as akoa

    def read(*args):  # a regression must not allocate 10 GB per slice: it fails here instead
        raise AssertionError("read a file at a size whose arrays cannot fit")

    monkeypatch.setattr(akoa, "_read_file", read)
    line = assert_user_error(cli("prepare", "akoa", "--from", png_slices, "--size", "100000x100000"))
    files = len(list(png_slices.iterdir()))
    assert line.startswith(f"error: --size 100000x100000: {files:,} images of 100000x100000x1 would need at least")
    assert "give a smaller --size" in line
    assert not (workdir / "data").exists()


def test_a_decompression_bomb_slice_is_skipped_with_a_clear_reason(tmp_path, monkeypatch, recwarn):
    source = write_png_slices(tmp_path / "slices", slices=2, size=(8, 10))  # 80 pixels each
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL's limit, scaled down to the test's images
    rng = np.random.default_rng(0)
    for name, side in (("warned", 25), ("refused", 40)):  # 625 pixels: PIL only warns; 1,600: it raises
        Image.fromarray(knee_slice("LEFT", side, side, rng)).save(source / f"OAI9000000_BaseLine_{name}_LEFT.nii.gz_idx_9.png")
    dataset = read_akoa(source, AkoaOptions(size=(8, 10)))
    reasons = {item["path"]: item["reason"] for item in dataset.skipped}
    assert reasons["OAI9000000_BaseLine_warned_LEFT.nii.gz_idx_9.png"] == \
        "625 pixels, more than the 500 an image may have (a decompression bomb?); not decoded"
    assert reasons["OAI9000000_BaseLine_refused_LEFT.nii.gz_idx_9.png"].startswith("1,600 pixels, more than the 500")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]

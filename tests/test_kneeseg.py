"""`perceiver prepare knee-seg`: pairs of NIfTI images and label maps (written with nibabel) for 5
patients x 2 visits become slices with uint8 per-pixel labels; masks move with their images through
orientation, slicing and resizing; SynthSeg images are deterministic by seed; patients stay in one
split; every bad input is one line; the mask format is checked at load, and class datasets are as before."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from perceiver_cli.data import prepared
from perceiver_cli.data.kneeseg import pair_files, resize_nearest
from perceiver_cli.data.synthseg import generator, synthesize
from perceiver_cli.errors import UserError
from test_akoa import SHARED, save_nifti
from test_bad_inputs import every_path
from test_cli import assert_user_error

# RAS voxels: x left->right (the sagittal slices), y posterior->anterior, z inferior->superior
SHAPE = (6, 24, 24)
PATIENTS = [f"900000{i}" for i in range(1, 6)]
VISITS = ("00m", "12m")
INTENSITY = {0: 0, 1: 200, 2: 60, 4: 20}  # of the image under each label value


def label_volume(patient: str) -> np.ndarray:
    """Slices 1..4 hold labels (0 and 5 are background only): value 1 high and anterior (the top left
    of a slice), 2 low and posterior; the first patient's maps also hold a 4 just below the 1."""
    volume = np.zeros(SHAPE, np.uint16)
    volume[1:5, 14:20, 14:20] = 1
    volume[1:5, 2:7, 2:7] = 2
    if patient == PATIENTS[0]:
        volume[1:5, 14:20, 9:14] = 4
    return volume


def image_volume(labels: np.ndarray) -> np.ndarray:
    image = np.zeros(labels.shape, np.int16)
    for value, intensity in INTENSITY.items():
        image[labels == value] = intensity
    return image


def write_pairs(root: Path, label_axcodes=("R", "A", "S")) -> tuple[Path, Path]:
    """images/<patient>_<visit>_WB01_knee.nii.gz and labels/<same>_seg.nii.gz (stored in `label_axcodes`)."""
    for patient in PATIENTS:
        labels = label_volume(patient)
        for visit in VISITS:
            save_nifti(image_volume(labels), root / "images" / f"{patient}_{visit}_WB01_knee.nii.gz")
            save_nifti(labels, root / "labels" / f"{patient}_{visit}_WB01_knee_seg.nii.gz", label_axcodes)
    return root / "images", root / "labels"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    return write_pairs(tmp_path_factory.mktemp("kneeseg"))


@pytest.fixture(scope="module")
def labels_only(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("kneeseg_labels"))[1]


def prepare(cli, *args, out: Path | str = "data/knee-seg"):
    result = cli("prepare", "knee-seg", *args, "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads((Path(out) / "manifest.json").read_text())


def patient_of(source_file: str) -> str:
    return source_file.split("_", 1)[0]


def files_of(root: str, split: str = "test") -> list[str]:
    return json.loads((Path(root) / "manifest.json").read_text())["splits"][split]["source_files"]


def slice_of(source_file: str) -> int:
    return int(source_file.rsplit("#slice=", 1)[1])


# --- the format --------------------------------------------------------------------------------------

def test_pairs_prepare_to_uint8_masks_split_by_patient(cli, workdir, pairs):
    images, labels = pairs
    manifest = prepare(cli, "--images", images, "--labels", labels, "--size", "48x48", "--split", "0.6,0.2,0.2")
    assert manifest["dataset"] == "knee-seg"
    assert manifest["target"] == {"kind": "mask", "shape": [48, 48]}
    assert manifest["input"] == {"kind": "image", "shape": [48, 48, 1]}
    assert manifest["classes"] == ["background", "label_1", "label_2", "label_4"]  # the values found, in order
    splits = manifest["splits"]
    assert set(splits) == {"train", "val", "test"}
    patients = [set(split["patients"]) for split in splits.values()]
    assert set.union(*patients) == set(PATIENTS) and sum(map(len, patients)) == len(PATIENTS)  # disjoint
    for split in splits.values():
        assert {patient_of(f) for f in split["source_files"]} == set(split["patients"])
        assert split["volumes"] == 2 * len(split["patients"])
    data = prepared.load(Path("data/knee-seg"))
    assert data.target == {"kind": "mask", "shape": [48, 48]}
    for name, split in data.splits.items():
        assert split.x.dtype == np.uint8 and split.x.shape[1:] == (48, 48, 1)
        assert split.y.dtype == np.uint8 and split.y.shape == (len(split.x), 48, 48)
        counts = np.bincount(split.y.ravel(), minlength=4)
        assert splits[name]["class_counts"] == dict(zip(manifest["classes"], counts.tolist()))  # pixels
    assert sum(s["count"] for s in splits.values()) == len(PATIENTS) * len(VISITS) * 4  # 4 labelled slices each


def test_a_validation_share_carved_from_train_holds_out_whole_patients(cli, workdir, pairs):
    """Prepared without a val split, the run's train.val_fraction share is whole patients, never
    slices of a training patient (neighbouring slices of one knee are near copies)."""
    from perceiver_cli.data.splits import split_train_val_rows

    prepare(cli, "--images", pairs[0], "--labels", pairs[1], "--size", "8x8", "--split", "0.8,0,0.2")
    data = prepared.load(Path("data/knee-seg"))
    patients = np.array(data.splits["train"].extra["sample_patients"])
    assert len(patients) == len(data.splits["train"].x) and len(set(patients)) == 4
    (*_, keep), (*_, held) = split_train_val_rows(data, 0.25, seed=0)
    assert len(keep) + len(held) == len(patients) and len(held) == 8  # one patient: 2 visits x 4 slices
    assert not set(patients[keep]) & set(patients[held])


def test_the_summary_counts_pixels_per_label(cli, workdir, labels_only):
    result = cli("prepare", "knee-seg", "--labels", labels_only, "--synthesize", "1", "--size", "8x8", "--split", "0,0,1")
    assert result.exit_code == 0, result.output
    assert "4 classes: background, label_1, label_2, label_4" in result.stdout
    counts = json.loads(Path("data/knee-seg/manifest.json").read_text())["splits"]["test"]["class_counts"]
    assert sum(counts.values()) == len(PATIENTS) * len(VISITS) * 4 * 64
    share = counts["background"] / sum(counts.values())
    assert "pixels per label" in result.stdout and f" {share:.3%} " in result.stdout  # pixels, not slices
    assert "no patient is in two splits" in result.stdout


def test_masks_lie_exactly_under_their_structures(cli, workdir, tmp_path):
    """The label maps are stored in another voxel order than the images: both are oriented by their
    affines, so a slice's bright box (value 1) is exactly its label, at the top left (superior, anterior)."""
    images, labels = write_pairs(tmp_path / "src", label_axcodes=("P", "I", "R"))
    for size in ("24x24", "48x48"):  # as stored; and bilinear images over nearest masks at twice the size
        prepare(cli, "--images", images, "--labels", labels, "--size", size, "--split", "0,0,1", out=f"data/{size}")
        test = prepared.load(Path(f"data/{size}")).splits["test"]
        box = test.y == 1
        assert box.any()
        np.testing.assert_array_equal(test.x[..., 0] > 127, box)
        rows, cols = np.nonzero(box[0])
        height = test.y.shape[1]
        assert rows.max() < height / 2 and cols.max() < height / 2  # superior up, anterior left
        first = [i for i, f in enumerate(files_of(f"data/{size}")) if patient_of(f) == PATIENTS[0]]
        assert (test.y[first] == 3).any() and not (test.y[[i for i in range(len(test.y)) if i not in first]] == 3).any()


def test_nearest_resizing_never_makes_a_label_that_is_not_there(cli, workdir, pairs):
    """1 and 4 touch: interpolating between them would give 2 (or 3) along their border; nearest never does."""
    images, labels = pairs
    prepare(cli, "--images", images, "--labels", labels, "--size", "17x13", "--split", "0,0,1")
    test = prepared.load(Path("data/knee-seg")).splits["test"]
    rows, cols = np.nonzero((test.y == 2).any(axis=0))
    assert rows.min() > 17 / 2 and cols.min() > 13 / 2  # 2 only where its structure is: low and posterior
    assert set(np.unique(test.y)) == {0, 1, 2, 3}
    assert np.array_equal(resize_nearest(np.arange(6).reshape(2, 3), (4, 6)), np.repeat(np.repeat(np.arange(6).reshape(2, 3), 2, 0), 2, 1))


def test_slices_are_taken_within_the_labelled_range(cli, workdir, pairs):
    images, labels = pairs
    for slices, expected in ((None, {1, 2, 3, 4}), ("2", {1, 4}), ("all", {1, 2, 3, 4})):
        args = ("--slices", slices) if slices else ()
        manifest = prepare(cli, "--images", images, "--labels", labels, "--split", "0,0,1", *args)
        files = manifest["splits"]["test"]["source_files"]
        assert {slice_of(f) for f in files} == expected  # slices 0 and 5 hold background only
        assert len(files) == len(PATIENTS) * len(VISITS) * len(expected)


def test_split_0_0_1_makes_every_patient_test(cli, workdir, labels_only):
    manifest = prepare(cli, "--labels", labels_only, "--synthesize", "1", "--split", "0,0,1")
    assert list(manifest["splits"]) == ["test"]
    assert set(manifest["splits"]["test"]["patients"]) == set(PATIENTS)


def test_names_name_the_values(cli, workdir, labels_only):
    manifest = prepare(cli, "--labels", labels_only, "--synthesize", "1", "--names", "background,femur,tibia,patella,cartilage",
                       "--split", "0,0,1", "--size", "24x24")
    assert manifest["classes"] == ["background", "femur", "tibia", "patella", "cartilage"]
    y = prepared.load(Path("data/knee-seg")).splits["test"].y
    assert set(np.unique(y)) == {0, 1, 2, 4}  # a value is its class index when named
    assert manifest["splits"]["test"]["class_counts"]["patella"] == 0


# --- synthesis ---------------------------------------------------------------------------------------

def test_synthesis_is_deterministic_by_seed_and_by_file_not_by_order(cli, workdir, labels_only, tmp_path):
    a = prepare(cli, "--labels", labels_only, "--synthesize", "2", "--seed", "3", out="data/a")
    b = prepare(cli, "--labels", labels_only, "--synthesize", "2", "--seed", "3", out="data/b")
    prepare(cli, "--labels", labels_only, "--synthesize", "2", "--seed", "4", out="data/c")
    digest = lambda m: {k: s["sha256"] for k, s in m["splits"].items()}  # noqa: E731
    assert digest(a) == digest(b)
    assert sum(s["count"] for s in a["splits"].values()) == len(PATIENTS) * len(VISITS) * 2 * 4
    seeded = {name: prepared.load(Path(f"data/{name}")) for name in "ac"}
    rows = lambda data: {f: split.x[i] for split in data.splits.values()  # noqa: E731
                         for i, f in enumerate(split.extra["source_files"])}
    assert all(not np.array_equal(x, rows(seeded["c"])[f]) for f, x in rows(seeded["a"]).items())
    # the same map prepared with fewer others around it gets the same images
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(labels_only.iterdir())[::3]:
        shutil.copy(path, few / path.name)
    prepare(cli, "--labels", few, "--synthesize", "2", "--seed", "3", "--split", "0,0,1", out="data/few")
    alone, everything = rows(prepared.load(Path("data/few"))), rows(seeded["a"])
    assert alone and all(np.array_equal(x, everything[f]) for f, x in alone.items())


def test_a_synthetic_scan_gives_every_label_its_own_intensity():
    labels = np.zeros((3, 32, 32), np.uint8)
    labels[:, 8:20, 8:20], labels[:, 22:30, 4:12] = 1, 2
    image = synthesize(labels, 3, generator(0, "map.nii.gz", 0))
    assert image.dtype == np.uint8 and image.shape == labels.shape
    means = [image[labels == v].mean() for v in range(3)]
    assert abs(means[1] - means[0]) > 10 and abs(means[2] - means[0]) > 10
    assert np.array_equal(image, synthesize(labels, 3, generator(0, "map.nii.gz", 0)))
    assert not np.array_equal(image, synthesize(labels, 3, generator(0, "map.nii.gz", 1)))
    assert not np.array_equal(image, synthesize(labels, 3, generator(0, "other.nii.gz", 0)))


def test_synthetic_copies_sit_beside_the_real_image_with_its_mask(cli, workdir, pairs):
    images, labels = pairs
    manifest = prepare(cli, "--images", images, "--labels", labels, "--synthesize", "1", "--split", "0,0,1")
    test = prepared.load(Path("data/knee-seg")).splits["test"]
    files = manifest["splits"]["test"]["source_files"]
    assert len(files) == 2 * len(PATIENTS) * len(VISITS) * 4
    real = {f: i for i, f in enumerate(files) if "#synth=" not in f}
    synthetic = [(i, f) for i, f in enumerate(files) if "#synth=0" in f]
    assert len(real) == len(synthetic)
    for i, f in synthetic:
        image = f.split("_seg")[0] + ".nii.gz#slice=" + str(slice_of(f))
        assert np.array_equal(test.y[i], test.y[real[image]])


def test_pairs_are_matched_by_name():
    assert pair_files(["a/p1.nii.gz", "p10.nii"], ["p10_seg.nii.gz", "p1_seg.nii.gz"], "i", "l") == \
        [("p10.nii", "p10_seg.nii.gz"), ("a/p1.nii.gz", "p1_seg.nii.gz")]
    assert pair_files(["case_0000.nii.gz"], ["case.nii.gz"], "i", "l") == [("case_0000.nii.gz", "case.nii.gz")]  # nnU-Net
    with pytest.raises(UserError, match="alike"):
        pair_files(["case_0000.nii.gz", "case_0001.nii.gz"], ["case.nii.gz"], "i", "l")


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------------

def copy_pairs(pairs, tmp: Path) -> tuple[Path, Path]:
    shutil.copytree(pairs[0], tmp / "images")
    shutil.copytree(pairs[1], tmp / "labels")
    return tmp / "images", tmp / "labels"


def image_without_labels(images, labels):
    (labels / f"{PATIENTS[1]}_12m_WB01_knee_seg.nii.gz").unlink()
    return ["--images", images, "--labels", labels], [f"{PATIENTS[1]}_12m_WB01_knee.nii.gz", "without a label map"]


def labels_without_image(images, labels):
    (images / f"{PATIENTS[2]}_00m_WB01_knee.nii.gz").unlink()
    return ["--images", images, "--labels", labels], [f"{PATIENTS[2]}_00m_WB01_knee_seg.nii.gz", "without an image"]


def shapes_differ(images, labels):
    save_nifti(np.zeros((6, 24, 20), np.int16), images / f"{PATIENTS[3]}_00m_WB01_knee.nii.gz")
    return ["--images", images, "--labels", labels], [f"{PATIENTS[3]}_00m_WB01_knee_seg.nii.gz", "6x24x24",
                                                      f"{PATIENTS[3]}_00m_WB01_knee.nii.gz", "6x20x24"]


def value_outside_names(images, labels):
    return ["--images", images, "--labels", labels, "--names", "background,femur,tibia"], \
        [f"{PATIENTS[0]}_00m_WB01_knee_seg.nii.gz", "value 4", "--names"]


def names_without_background(images, labels):
    return ["--labels", labels, "--synthesize", "1", "--names", "femur,tibia"], ["--names", "background"]


def labels_alone(images, labels):
    return ["--labels", labels], ["--images", "--synthesize"]


def no_labels_option(images, labels):
    return ["--images", images], ["--labels"]


def no_patient_in_the_name(images, labels):
    (labels / f"{PATIENTS[0]}_00m_WB01_knee_seg.nii.gz").rename(labels / "knee_seg.nii.gz")
    return ["--labels", labels, "--synthesize", "1"], ["knee_seg.nii.gz", "(?P<patient>"]


def not_a_label_map(images, labels):
    save_nifti(np.full(SHAPE, 0.5, np.float32), labels / f"{PATIENTS[0]}_00m_WB01_knee_seg.nii.gz")
    return ["--labels", labels, "--synthesize", "1"], [f"{PATIENTS[0]}_00m_WB01_knee_seg.nii.gz", "whole numbers"]


def bad_split(images, labels):
    return ["--labels", labels, "--synthesize", "1", "--split", "0.5,0.5,0.5"], ["--split"]


def too_few_patients(images, labels):
    return ["--labels", labels, "--synthesize", "1", "--split", "0.1,0.1,0.8", "--pattern", r"(?P<patient>WB01)"], \
        ["1 groups", "--split"]


def bad_slices(images, labels):
    return ["--labels", labels, "--synthesize", "1", "--slices", "0"], ["--slices"]


def no_label_maps(images, labels):
    for path in labels.iterdir():
        path.unlink()
    return ["--labels", labels, "--synthesize", "1"], ["--labels", "no NIfTI"]


BAD = [image_without_labels, labels_without_image, shapes_differ, value_outside_names, names_without_background,
       labels_alone, no_labels_option, no_patient_in_the_name, not_a_label_map, bad_split, too_few_patients,
       bad_slices, no_label_maps]


@pytest.mark.parametrize("case", BAD, ids=[case.__name__ for case in BAD])
def test_bad_input_is_one_line_and_writes_nothing(cli, workdir, pairs, case):
    images, labels = copy_pairs(pairs, workdir / "inputs")
    args, expected = case(images, labels)
    before = every_path(workdir)
    line = assert_user_error(cli("prepare", "knee-seg", *args))
    for text in expected:
        assert text in line, (text, line)
    assert every_path(workdir) == before


# --- loading: masks checked, class datasets as before -------------------------------------------------

def rewrite_y(root: Path, split: str, y: np.ndarray) -> None:
    """Replace an array and its digest, as a buggy writer would: only the load-time checks can catch it."""
    np.save(root / f"{split}_y.npy", y)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"][split]["sha256"]["y"] = hashlib.sha256((root / f"{split}_y.npy").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("corrupt, expected", [
    (lambda y: np.where(y == 1, 4, y).astype(np.uint8), "label 4 is outside the 4 classes"),
    (lambda y: y[:, :, :-1], "uint8 of shape (N, 24, 24)"),
    (lambda y: y.astype(np.int64), "uint8 of shape"),
    (lambda y: y[:-1], "masks"),
])
def test_a_corrupted_mask_is_refused_at_load_in_one_line(cli, workdir, labels_only, corrupt, expected):
    prepare(cli, "--labels", labels_only, "--synthesize", "1", "--size", "24x24")
    root = Path("data/knee-seg")
    rewrite_y(root, "train", corrupt(np.load(root / "train_y.npy")))
    with pytest.raises(UserError) as error:
        prepared.load(root)
    message = str(error.value)
    assert expected in message and "train_y.npy" in message and "\n" not in message
    assert "perceiver prepare knee-seg --labels" in message


def test_masks_are_memory_mapped_with_mmap_and_class_labels_are_not(cli, workdir, labels_only):
    prepare(cli, "--labels", labels_only, "--synthesize", "1")
    assert isinstance(prepared.load(Path("data/knee-seg"), mmap=True).splits["train"].y, np.memmap)
    assert not isinstance(prepared.load(Path("data/knee-seg")).splits["train"].y, np.memmap)
    assert cli("prepare", "digits").exit_code == 0
    assert not isinstance(prepared.load(Path("data/digits"), mmap=True).splits["train"].y, np.memmap)


def test_a_class_dataset_is_written_and_loaded_as_before(cli, workdir):
    assert cli("prepare", "digits").exit_code == 0
    manifest = json.loads(Path("data/digits/manifest.json").read_text())
    assert list(manifest) == ["format", "dataset", "classes", "input", "normalization", "splits", "source", "skipped"]
    data = prepared.load(Path("data/digits"))
    assert data.target == {"kind": "class"}
    y = data.splits["train"].y
    assert y.dtype == np.int64 and y.ndim == 1
    assert manifest["splits"]["train"]["class_counts"] == {c: int((y == i).sum()) for i, c in enumerate(data.classes)}


# --- the real label maps -------------------------------------------------------------------------------

REAL = SHARED / "oai-knee-labels"


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/oai-knee-labels is absent")
def test_real_label_maps_prepare_with_synthesis(cli, workdir, tmp_path):
    chosen = sorted(REAL.glob("*_00m_*.nii.gz"))[:4]  # 4 patients
    for path in chosen:
        shutil.copy(path, tmp_path / path.name)
    manifest = prepare(cli, "--labels", tmp_path, "--synthesize", "1", "--slices", "4", "--size", "64x64",
                       "--split", "0.5,0.25,0.25")
    assert manifest["classes"][:4] == ["background", "label_1", "label_2", "label_3"]
    assert sum(s["count"] for s in manifest["splits"].values()) == 4 * 4
    assert sorted(p for s in manifest["splits"].values() for p in s["patients"]) == sorted(p.name.split("_")[0] for p in chosen)
    data = prepared.load(Path("data/knee-seg"))
    for split in data.splits.values():
        assert (split.y > 0).mean() > 0.05  # the slices lie in the knee, not in the empty edges
        assert split.x.std() > 10

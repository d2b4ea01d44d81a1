"""A prepared dataset is what its manifest says, or it is refused in one line: digests, labels,
shapes and the manifest's own schema are checked at load; re-preparing swaps datasets atomically,
and a prepare killed at any point of the swap leaves a loadable dataset and no leftovers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import set_args
from perceiver_cli.data import prepared
from perceiver_cli.data.prepared import PreparedDataset, Split
from perceiver_cli.errors import UserError


def assert_user_error(result) -> str:
    """Exit code 2, exactly one line on stderr (the error), no traceback; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def toy(value: int = 1, labels=None, classes=("a", "b", "c")) -> PreparedDataset:
    """Nine 8x8 gray images, all pixels `value`, so a test can tell which dataset it loaded."""
    y = np.arange(9) % len(classes) if labels is None else np.asarray(labels)
    return PreparedDataset("toy", list(classes), {"kind": "image", "shape": [8, 8, 1]},
                           {"train": Split(np.full((9, 8, 8, 1), value, np.uint8), y)})


def flip_byte(path: Path, keep_times: bool = False) -> None:
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # a pixel, not the header
    path.write_bytes(bytes(data))
    if keep_times:  # as `cp -p`, `rsync -t` or `touch -r` would leave it
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- digests -----------------------------------------------------------------------------------------

def test_a_flipped_byte_is_refused_by_train_and_eval(cli, workdir, digits_run, tiny):
    assert cli("prepare", "digits").exit_code == 0
    data = workdir / "data" / "digits"
    flip_byte(data / "test_x.npy")
    line = assert_user_error(cli("eval", digits_run))
    assert "test_x.npy" in line and "sha256" in line and "perceiver prepare digits" in line
    assert not (digits_run / "eval_test.json").exists()

    flip_byte(data / "test_x.npy")  # back as it was: verified again, and fine
    flip_byte(data / "train_x.npy")
    line = assert_user_error(cli("train", *set_args(tiny), "--name", "corrupt"))
    assert "train_x.npy" in line and "perceiver prepare digits" in line
    assert not (workdir / "runs" / "corrupt").exists()


def test_digests_are_hashed_once_per_change_of_a_file(tmp_path, monkeypatch):
    calls = []
    real = prepared._sha256
    monkeypatch.setattr(prepared, "_sha256", lambda path: calls.append(Path(path).name) or real(path))
    root = prepared.write(toy(), tmp_path / "toy")
    calls.clear()
    prepared.load(root)
    assert calls == []  # prepare recorded what it wrote
    (root / ".verified.json").unlink()  # a dataset prepared before digests were cached
    prepared.load(root)
    assert sorted(calls) == ["train_x.npy", "train_y.npy"]
    calls.clear()
    prepared.load(root)
    assert calls == []

    flip_byte(root / "train_x.npy", keep_times=True)  # same size and mtime: the ctime still moved
    with pytest.raises(UserError, match=r"train_x\.npy: does not match its sha256.*perceiver prepare toy"):
        prepared.load(root)


def test_a_read_only_dataset_folder_is_verified_every_time(tmp_path, monkeypatch):
    root = prepared.write(toy(), tmp_path / "toy")
    (root / ".verified.json").unlink()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(prepared, "write_json_atomic", read_only)
    for _ in range(2):
        assert prepared.load(root).split("train").x.shape == (9, 8, 8, 1)
    assert not (root / ".verified.json").exists()
    flip_byte(root / "train_x.npy")
    with pytest.raises(UserError, match="train_x.npy"):
        prepared.load(root)


# --- labels and shapes ---------------------------------------------------------------------------

def test_a_label_outside_the_classes_is_one_line_before_training(cli, workdir, tiny):
    prepared.write(toy(labels=[0, 1, 2, 0, 1, 200, 0, 1, 2]), workdir / "data" / "bad")
    line = assert_user_error(cli("train", *set_args(tiny + ["data.root=data/bad"]), "--name", "bad"))
    assert "train_y.npy" in line and "label 200" in line and "3 classes" in line
    assert not (workdir / "runs" / "bad").exists()


def rewrite(root: Path, name: str, array: np.ndarray, manifest_edit=None) -> None:
    """Replace an array and keep its sha256 right, as a hand-made dataset would be."""
    np.save(root / name, array, allow_pickle=False)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["train"]["sha256"][name[-5]] = sha256(root / name)
    if manifest_edit:
        manifest_edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name, array, expected", [
    ("train_y.npy", np.array([0, 1, -1, 0, 1, 2, 0, 1, 2]), "label -1 is outside the 3 classes"),
    ("train_y.npy", np.linspace(0, 2, 9), "labels must be one integer per sample, found float64"),
    ("train_y.npy", np.zeros(8, np.int64), "holds 9 samples and train_y.npy 8 labels, where manifest.json says 9"),
    ("train_x.npy", np.zeros((9, 8, 7, 1), np.uint8), "samples of shape [8, 7, 1], where manifest.json says input.shape [8, 8, 1]"),
    ("train_x.npy", np.zeros((10, 8, 8, 1), np.uint8), "holds 10 samples and train_y.npy 9 labels"),
    ("train_x.npy", np.zeros((9, 8, 8, 1), np.float64), "image samples must be uint8, found float64"),
])
def test_arrays_that_disagree_with_the_manifest_are_refused(tmp_path, name, array, expected):
    root = prepared.write(toy(), tmp_path / "toy")
    rewrite(root, name, array)
    with pytest.raises(UserError) as info:
        prepared.load(root)
    assert expected in str(info.value) and name in str(info.value) and "perceiver prepare toy" in str(info.value)


# --- the manifest's schema ---------------------------------------------------------------------------

def drop(*keys):
    def edit(manifest):
        for key in keys[:-1]:
            manifest = manifest[key]
        del manifest[keys[-1]]
    return edit


@pytest.mark.parametrize("edit, key", [
    (drop("splits", "train", "files"), "splits.train.files"),
    (drop("splits", "train", "files", "x"), "splits.train.files.x"),
    (drop("splits", "train", "sha256"), "splits.train.sha256"),
    (drop("classes"), "classes"),
    (drop("input", "shape"), "input.shape"),
    (drop("splits"), "splits"),
])
def test_a_manifest_missing_a_key_is_one_line_naming_it(cli, workdir, digits_run, edit, key):
    assert cli("prepare", "digits").exit_code == 0
    path = workdir / "data" / "digits" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    line = assert_user_error(cli("eval", digits_run))
    assert str(Path("data") / "digits" / "manifest.json") in line
    assert f"missing key '{key}'" in line and "re-run `perceiver prepare digits" in line


@pytest.mark.parametrize("field, value, expected", [
    ("files", {"x": "../../etc/passwd", "y": "train_y.npy"}, "splits.train.files.x"),  # never outside the folder
    ("sha256", {"x": "abc", "y": "def"}, "splits.train.sha256.x"),
    ("count", "many", "splits.train.count"),
    ("input.kind", "video", "input.kind"),  # no model reads it: a ValueError traceback in training before
    ("input.shape", [8, 8], "input': Value error, a sample of kind image has 3 dimensions, not 2;"),
])
def test_manifest_values_of_the_wrong_kind_are_refused(tmp_path, field, value, expected):
    root = prepared.write(toy(), tmp_path / "toy")
    manifest = json.loads((root / "manifest.json").read_text())
    if field.startswith("input."):
        manifest["input"][field[6:]] = value
    else:
        manifest["splits"]["train"][field] = value
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError) as info:
        prepared.load(root)
    assert f"manifest.json: '{expected}" in str(info.value)


def test_extra_keys_of_a_split_and_of_the_input_are_kept(tmp_path):
    dataset = toy()
    dataset.splits["train"].extra = {"source_files": [f"{i}.png" for i in range(9)], "patients": ["p1"]}
    dataset.input_spec = {**dataset.input_spec, "coords": 2}
    back = prepared.load(prepared.write(dataset, tmp_path / "toy"))
    assert back.split("train").extra == dataset.splits["train"].extra
    assert back.input_spec == dataset.input_spec


# --- the swap, and prepares killed in it -------------------------------------------------------------

KILLED_PREPARE = textwrap.dedent("""
    import os, sys
    import numpy as np
    from perceiver_cli.data import prepared
    from perceiver_cli.data.prepared import PreparedDataset, Split

    out, moment, fallback, value = sys.argv[1], sys.argv[2], sys.argv[3] == "fallback", int(sys.argv[4])
    try:
        from perceiver_cli.data import swap
    except ImportError:  # the code before the atomic swap had only renames
        swap = None

    def killing(real, at_call):
        calls = []
        def call(*args):
            calls.append(args)
            if len(calls) == at_call and moment == "before":
                os._exit(9)
            result = real(*args)
            if len(calls) == at_call and moment == "after":
                os._exit(9)
            return result
        return call

    # the first move that touches the dataset: the exchange, else the rename of the old one aside;
    # "second" is the rename that brings the new one in where there is no exchange
    if swap is not None and fallback:
        swap.exchange = lambda a, b: False
    if swap is not None and not fallback:
        swap.exchange = killing(swap.exchange, 1)
    else:
        os.rename = killing(os.rename, 2 if moment.startswith("second") else 1)
        moment = moment.replace("second-", "")
    dataset = PreparedDataset("toy", ["a", "b", "c"], {"kind": "image", "shape": [8, 8, 1]},
                              {"train": Split(np.full((9, 8, 8, 1), value, np.uint8), np.arange(9) % 3)})
    prepared.write(dataset, out)
""")


def killed_prepare(out: Path, moment: str, how: str, value: int) -> None:
    result = subprocess.run([sys.executable, "-c", KILLED_PREPARE, str(out), moment, how, str(value)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr


@pytest.mark.parametrize("moment, how", [
    ("before", "exchange"), ("after", "exchange"),
    ("before", "fallback"), ("after", "fallback"), ("second-before", "fallback"), ("second-after", "fallback"),
])
def test_a_prepare_killed_in_the_swap_leaves_a_loadable_dataset_and_no_leftovers(tmp_path, moment, how):
    out = tmp_path / "data" / "toy"
    prepared.write(toy(value=1), out)
    killed_prepare(out, moment, how, value=2)

    loaded = prepared.load(out)  # the old dataset or the new one, whole
    assert loaded.split("train").x.shape == (9, 8, 8, 1)
    assert int(loaded.split("train").x[0, 0, 0, 0]) in (1, 2)

    prepared.write(toy(value=3), out)  # the next prepare cleans up after the killed one
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]
    assert int(prepared.load(out).split("train").x[0, 0, 0, 0]) == 3


def test_a_first_prepare_killed_before_its_rename_leaves_nothing_after_a_rerun(tmp_path):
    out = tmp_path / "data" / "toy"
    killed_prepare(out, "before", "fallback", value=2)  # no dataset was there: a rename, no exchange
    assert not out.exists()
    prepared.write(toy(value=3), out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy"]


def test_only_leftovers_of_processes_that_are_gone_are_removed(tmp_path):
    out = prepared.write(toy(), tmp_path / "toy")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = int(gone.stdout), os.getppid()
    for name in (f".toy.tmp-{dead}", f".toy.old-{dead}", f".toy.tmp-{live}", ".toy.tmp-abc", f".other.tmp-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_x.npy").write_bytes(b"partial")
    prepared.write(toy(value=2), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["toy", f".toy.tmp-{live}", ".toy.tmp-abc", f".other.tmp-{dead}"])


def test_the_swap_exchanges_in_one_step_where_the_system_can(tmp_path):
    from perceiver_cli.data import swap

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "which").write_text("a")
    (b / "which").write_text("b")
    if not swap.exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here: the fallback is tested above")
    assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"


def test_a_prepare_that_cannot_write_is_one_line(cli, workdir):
    (workdir / "blocker").write_text("a file where the folder should go")
    line = assert_user_error(cli("prepare", "digits", "--out", "blocker/digits"))
    assert "blocker" in line
    assert (workdir / "blocker").read_text() == "a file where the folder should go"

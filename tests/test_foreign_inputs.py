"""Damaged and foreign inputs (issue 24): zips with a bad CRC, a corrupt deflate stream, an encrypted
member or an unknown method; members that leave their zip and zips within; checkpoints and export
folders that load safely but are not ours; pickles; FIFOs and devices; NaN scans, weights and a
normalisation std of 0; and the advice given for them.

The table: each case ends with exit code 2 and exactly one line on stderr that names the file or key
and what to do, and changes nothing on disk. The tests after it: a damaged member is skipped with its
reason while the other files are predicted, prepared or evaluated."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import shlex
import shutil
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perceiver_cli.data.files import MAX_FILE_BYTES
from perceiver_cli.errors import UserError
from test_akoa import save_nifti
from test_bad_inputs import assert_one_line_and_nothing_changed, write
from test_kneeseg import write_pairs

GB6 = 6_000_000_000  # what a zip's directory may claim a member unpacks to


# --- helpers that make bad files -----------------------------------------------------------------------

def png(seed: int = 0) -> bytes:
    """An 8x8 gray PNG, as the digits model reads."""
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def bad_zip(path: Path, members: dict[str, bytes], damage: dict[str, str]) -> Path:
    """A zip of `members` where each member named in `damage` is made: "crc" (a flipped byte of stored
    data), "deflate" (its compressed stream scrambled), "encrypted" (the flag set), "method" (compress
    type 99) or "huge" (its directory says it unpacks to 6 GB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            method = zipfile.ZIP_DEFLATED if damage.get(name) == "deflate" else zipfile.ZIP_STORED
            archive.writestr(zipfile.ZipInfo(name), data * (20 if method == zipfile.ZIP_DEFLATED else 1), method)
        for name, how in damage.items():  # the central directory, written at close, is what readers trust
            info = archive.getinfo(name)
            if how == "encrypted":
                info.flag_bits |= 0x1
            elif how == "method":
                info.compress_type = 99
            elif how == "huge":
                info.file_size = GB6
    data = bytearray(path.read_bytes())
    for name, how in damage.items():
        info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(name)
        start = info.header_offset + 30 + len(name.encode())  # past the local header: the member's bytes
        if how == "crc":
            data[start + 20] ^= 0xFF
        elif how == "deflate":
            for i in range(start + 4, start + 40):
                data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def good_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "best.pt", weights_only=True)


def save_state(tmp: Path, name: str, state) -> Path:
    path = tmp / name
    torch.save(state, path)
    return path


def edited_export(tmp: Path, export: Path, edit) -> Path:
    folder = tmp / "export"
    shutil.copytree(export, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def digits_export(digits_session_run, tmp_path_factory, cli) -> Path:
    """An export folder (safetensors + config.json) of the session's tiny digits run."""
    run, _ = digits_session_run
    out = tmp_path_factory.mktemp("digits_export") / "export"
    result = cli("export", run, "--format", "safetensors", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def world(workdir, digits_run, digits_export) -> Path:
    shutil.copytree(digits_export, workdir / "digits_export")
    return workdir


RUN = "runs/digits"
EXPORT = "digits_export"


# --- 1. damaged zip members, nothing else to read ------------------------------------------------------

def predict_zip_bad_crc(tmp, mp):
    return ["predict", RUN, bad_zip(tmp / "crc.zip", {"a.png": png()}, {"a.png": "crc"})], \
        ["crc.zip/a.png", "CRC", "make the zip again"]


def predict_zip_corrupt_deflate(tmp, mp):
    return ["predict", RUN, bad_zip(tmp / "deflate.zip", {"a.png": png()}, {"a.png": "deflate"})], \
        ["deflate.zip/a.png", "damaged in the zip", "make the zip again"]


def predict_zip_encrypted(tmp, mp):
    return ["predict", RUN, bad_zip(tmp / "locked.zip", {"a.png": png()}, {"a.png": "encrypted"})], \
        ["locked.zip/a.png", "encrypted", "without a password"]


def predict_zip_unknown_method(tmp, mp):
    return ["predict", RUN, bad_zip(tmp / "m.zip", {"a.png": png()}, {"a.png": "method"})], \
        ["m.zip/a.png", "zip method 99", "deflate"]


def prepare_zip_every_member_damaged(tmp, mp):
    members = {f"{cls}/{i}.png": png(i) for cls in ("cat", "dog") for i in range(2)}
    damage = dict(zip(members, ("crc", "deflate", "encrypted", "method")))
    return ["prepare", "pets", "--from", bad_zip(tmp / "pets.zip", members, damage)], \
        ["pets.zip", "none of the 4 images could be read", "make the zip again"]


def eval_data_zip_every_member_damaged(tmp, mp):
    members = {"3/a.png": png(1), "5/b.png": png(2)}
    return ["eval", RUN, "--data", bad_zip(tmp / "digits.zip", members, {"3/a.png": "crc", "5/b.png": "method"})], \
        ["digits.zip", "none of the 2 images could be read"]


# --- 2. members that are never read: paths leaving the zip, zips within ----------------------------------

def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def predict_zip_with_dotdot_only(tmp, mp):
    return ["predict", RUN, zip_of(tmp / "up.zip", {"../evil.png": png(), "/abs.png": png(1)})], \
        ["up.zip/../evil.png", "leaves the zip"]


def predict_zip_in_a_zip_only(tmp, mp):
    inner = zip_of(tmp / "inner.zip", {"a.png": png()}).read_bytes()
    return ["predict", RUN, zip_of(tmp / "outer.zip", {"inner.zip": inner})], \
        ["outer.zip/inner.zip", "a zip inside a folder or zip is not opened", "unzip it"]


def predict_folder_with_a_zip_only(tmp, mp):
    zip_of(tmp / "photos" / "batch.zip", {"a.png": png()})
    return ["predict", RUN, tmp / "photos"], ["photos/batch.zip", "a zip inside", "give it on its own"]


def prepare_folder_with_a_zip_only(tmp, mp):
    zip_of(tmp / "pets" / "cat" / "more.zip", {"a.png": png()})
    return ["prepare", "pets", "--from", tmp / "pets"], ["cat/more.zip", "a zip inside", "no images found"]


# --- 3. checkpoints and exports that load safely but are not ours ----------------------------------------

def checkpoint_with_empty_model_and_config(tmp, mp):
    return ["predict", save_state(tmp, "foreign.pt", {"model": {}, "config": {}}), write(tmp / "a.png", png())], \
        ["foreign.pt", "not a perceiver checkpoint", "no 'dataset'", "perceiver train"]


def checkpoint_config_a_string(tmp, mp):
    return ["eval", save_state(tmp, "c.pt", {**good_state(Path(RUN)), "config": "digits"})], \
        ["c.pt", "config", "valid dictionary", "'digits'", "perceiver train"]


def checkpoint_classes_an_int(tmp, mp):
    return ["export", save_state(tmp, "k.pt", {**good_state(Path(RUN)), "classes": 10}), "--format", "safetensors",
            "--out", tmp / "out"], ["k.pt", "classes", "valid list", "found 10"]


def checkpoint_unknown_input_kind(tmp, mp):
    state = good_state(Path(RUN))
    state["input_spec"] = {"kind": "audio", "shape": [8, 8, 1]}
    return ["predict", save_state(tmp, "kind.pt", state), write(tmp / "a.png", png())], \
        ["kind.pt", "input_spec.kind", "'audio'"]


def checkpoint_weights_not_tensors(tmp, mp):
    return ["eval", save_state(tmp, "w.pt", {**good_state(Path(RUN)), "model": {"latents": [1.0, 2.0]}})], \
        ["w.pt", "model.latents", "instance of Tensor"]


def checkpoint_a_list(tmp, mp):
    return ["eval", save_state(tmp, "l.pt", [torch.zeros(2)])], ["l.pt", "holds a list", "perceiver train"]


def export_mean_a_string(tmp, mp):
    folder = edited_export(tmp, Path(EXPORT), lambda c: c["checkpoint"]["normalization"].update(mean=["0.3"]))
    return ["predict", folder, write(tmp / "a.png", png())], \
        ["config.json", "checkpoint.normalization.mean[0]", "'0.3'", "perceiver export"]


def export_without_shape(tmp, mp):
    folder = edited_export(tmp, Path(EXPORT), lambda c: c["checkpoint"]["input_spec"].pop("shape"))
    return ["predict", folder, write(tmp / "a.png", png())], \
        ["config.json", "incomplete export", "checkpoint.input_spec.shape", "perceiver export"]


def export_classes_an_int(tmp, mp):
    folder = edited_export(tmp, Path(EXPORT), lambda c: c["checkpoint"].update(classes=3))
    return ["predict", folder, write(tmp / "a.png", png())], ["config.json", "checkpoint.classes", "found 3"]


def export_recipe_a_list(tmp, mp):
    folder = edited_export(tmp, Path(EXPORT), lambda c: c.update(recipe=["digits"]))
    return ["predict", folder, write(tmp / "a.png", png())], ["config.json", "recipe", "valid dictionary"]


# --- 4. pickles: refused as code that is never run, not as damage ----------------------------------------

def raw_pickle_of_a_dict(tmp, mp):
    path = write(tmp / "raw.pt", pickle.dumps({"model": {}, "config": {}, "x": Fraction(1, 3)}))
    return ["eval", path], ["raw.pt", "holds pickled Python objects", "fractions.Fraction", "weights_only=False",
                            "perceiver train"]


def raw_pickle_of_plain_data(tmp, mp):
    return ["predict", write(tmp / "plain.pt", pickle.dumps({"model": {}, "config": {}})), write(tmp / "a.png", png())], \
        ["plain.pt", "holds pickled Python objects", "never loaded"]


def legacy_torch_file_with_a_global(tmp, mp):
    path = tmp / "legacy.pt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {}, "x": Fraction(1, 3)}, path,
               _use_new_zipfile_serialization=False)
    return ["eval", path], ["legacy.pt", "holds pickled Python objects", "fractions.Fraction"]


class RunsACommand:  # unpickling this would run a shell command
    def __reduce__(self):
        return (os.system, ("true",))


def protocol_0_pickle_of_a_call(tmp, mp):
    path = write(tmp / "p0.pt", pickle.dumps({"model": RunsACommand()}, protocol=0))
    return ["export", path, "--format", "safetensors", "--out", tmp / "out"], ["p0.pt", "pickled", os.system.__module__]


# --- 5. FIFOs and devices ----------------------------------------------------------------------------------

def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def predict_dev_zero(tmp, mp):
    return ["predict", RUN, "/dev/zero"], ["/dev/zero", "character device", "not a regular file"]


def predict_a_fifo(tmp, mp):
    return ["predict", RUN, fifo(tmp / "pipe.png")], ["pipe.png", "FIFO", "not a regular file"]


def predict_folder_of_a_fifo(tmp, mp):
    fifo(tmp / "in" / "pipe.png")
    return ["predict", RUN, tmp / "in"], ["in/pipe.png", "FIFO", "not read"]


def prepare_from_a_fifo(tmp, mp):
    return ["prepare", "pets", "--from", fifo(tmp / "pets.zip")], ["pets.zip", "FIFO", "--from"]


def prepare_from_dev_null(tmp, mp):
    return ["prepare", "cifar10", "--from", "/dev/null"], ["/dev/null", "character device"]


# --- 6. NaN and infinity -------------------------------------------------------------------------------

def checkpoint_with_nan_weights(tmp, mp):
    state = good_state(Path(RUN))
    state["model"]["latents"] = torch.full_like(state["model"]["latents"], float("nan"))
    return ["predict", save_state(tmp, "nan.pt", state), write(tmp / "a.png", png())], \
        ["nan.pt", "weight latents", "NaN or infinite", "train it again"]


def export_with_inf_weights(tmp, mp):
    from safetensors.torch import load_file, save_file

    folder = tmp / "export"
    shutil.copytree(EXPORT, folder)
    weights = load_file(folder / "model.safetensors")
    weights["latents"] = weights["latents"] * float("inf")
    save_file(weights, folder / "model.safetensors")
    return ["predict", folder, write(tmp / "a.png", png())], ["model.safetensors", "NaN or infinite", "export the run again"]


def checkpoint_std_zero(tmp, mp):
    state = good_state(Path(RUN))
    state["normalization"] = {"mean": [0.3], "std": [0.0]}
    return ["predict", save_state(tmp, "std.pt", state), write(tmp / "a.png", png())], \
        ["std.pt", "normalization.std[0]", "greater than 0"]


def export_std_infinite(tmp, mp):
    folder = edited_export(tmp, Path(EXPORT), lambda c: c["checkpoint"]["normalization"].update(std=[float("inf")]))
    return ["predict", folder, write(tmp / "a.png", png())], ["config.json", "normalization.std[0]", "finite"]


def manifest_std_zero(tmp, mp):
    from perceiver_cli.data.digits import read_digits
    from perceiver_cli.data.prepared import write as write_dataset

    write_dataset(read_digits(), Path("data/digits"))
    path = Path("data/digits/manifest.json")
    manifest = json.loads(path.read_text())
    manifest["normalization"]["std"] = [0]
    path.write_text(json.dumps(manifest))
    return ["eval", RUN], ["manifest.json", "normalization.std", "perceiver prepare digits"]


def prepare_akoa_all_nan_scan(tmp, mp):
    save_nifti(np.full((4, 6, 6), np.nan, np.float32), tmp / "scans" / "OAI9000001_BaseLine_LEFT.nii.gz")
    return ["prepare", "akoa", "--from", tmp / "scans"], ["OAI9000001_BaseLine_LEFT.nii.gz", "no finite intensity"]


# --- 7. advice that names the right thing --------------------------------------------------------------

def predict_zip_member_of_6_gb(tmp, mp):
    return ["predict", RUN, bad_zip(tmp / "big.zip", {"big.png": png()}, {"big.png": "huge"})], \
        ["big.zip/big.png", "6.0 GB", "not read"]


def prepare_zip_member_of_6_gb(tmp, mp):
    members = {"cat/a.png": png(), "dog/b.png": png(1)}
    return ["prepare", "pets", "--from", bad_zip(tmp / "pets.zip", members, {"cat/a.png": "huge", "dog/b.png": "huge"})], \
        ["pets.zip", "cat/a.png", "6.0 GB"]


def kneeseg_synthesize_too_many(tmp, mp):
    labels = write_pairs(tmp / "pairs")[1]
    return ["prepare", "knee-seg", "--labels", labels, "--synthesize", "100000000"], \
        ["--synthesize 100,000,000", "memory", "fewer --synthesize"]


def export_with_a_billion_latents(tmp, mp):
    folder = edited_export(tmp, Path(EXPORT), lambda c: c["recipe"]["model"].update(num_latents=10**9))
    return ["predict", folder, write(tmp / "a.png", png())], \
        ["config.json", "does not fit in this machine's memory", "model.num_latents=1,000,000,000"]


def checkpoint_with_a_billion_latents(tmp, mp):
    state = good_state(Path(RUN))
    state["config"]["model"]["num_latents"] = 10**9
    return ["eval", save_state(tmp, "huge.pt", state)], \
        ["huge.pt", "does not fit in this machine's memory", "model.num_latents=1,000,000,000"]


CASES = [
    predict_zip_bad_crc, predict_zip_corrupt_deflate, predict_zip_encrypted, predict_zip_unknown_method,
    prepare_zip_every_member_damaged, eval_data_zip_every_member_damaged,
    predict_zip_with_dotdot_only, predict_zip_in_a_zip_only, predict_folder_with_a_zip_only, prepare_folder_with_a_zip_only,
    checkpoint_with_empty_model_and_config, checkpoint_config_a_string, checkpoint_classes_an_int,
    checkpoint_unknown_input_kind, checkpoint_weights_not_tensors, checkpoint_a_list,
    export_mean_a_string, export_without_shape, export_classes_an_int, export_recipe_a_list,
    raw_pickle_of_a_dict, raw_pickle_of_plain_data, legacy_torch_file_with_a_global, protocol_0_pickle_of_a_call,
    predict_dev_zero, predict_a_fifo, predict_folder_of_a_fifo, prepare_from_a_fifo, prepare_from_dev_null,
    checkpoint_with_nan_weights, export_with_inf_weights, checkpoint_std_zero, export_std_infinite, manifest_std_zero,
    prepare_akoa_all_nan_scan,
    predict_zip_member_of_6_gb, prepare_zip_member_of_6_gb, kneeseg_synthesize_too_many,
    export_with_a_billion_latents, checkpoint_with_a_billion_latents,
]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_a_foreign_input_is_one_line_exit_2_and_changes_nothing(cli, world, case):
    line = assert_one_line_and_nothing_changed(cli, world, case)
    assert "--batch-size" not in line and "--size" not in line.split("(or a smaller")[0]  # the knob named is right


# --- damaged members are skipped, with their reason, and the rest go on ----------------------------------

def everything_odd(tmp: Path) -> Path:
    """A zip of two good digit PNGs beside one member of every kind that cannot or may not be read."""
    members = {"ok/1.png": png(1), "ok/2.png": png(2), "crc.png": png(3), "deflate.png": png(4), "locked.png": png(5),
               "method.png": png(6), "big.png": png(7)}
    damage = {"crc.png": "crc", "deflate.png": "deflate", "locked.png": "encrypted", "method.png": "method", "big.png": "huge"}
    path = bad_zip(tmp / "odd.zip", members, damage)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("../up.png", png(8))
        archive.writestr("inner.zip", zip_of(tmp / "inner.zip", {"x.png": png(9)}).read_bytes())
        archive.writestr("__MACOSX/._ok.png", b"resource fork")  # hidden: neither read nor reported
    return path


ODD_REASONS = {"crc.png": "CRC", "deflate.png": "damaged in the zip", "locked.png": "encrypted",
               "method.png": "zip method 99", "big.png": "6.0 GB", "../up.png": "leaves the zip", "inner.zip": "a zip inside"}


def test_predict_skips_each_unreadable_member_with_its_reason_and_predicts_the_rest(cli, workdir, digits_run, tmp_path):
    odd = everything_odd(tmp_path)
    fifo(tmp_path / "folder" / "pipe.png")
    write(tmp_path / "folder" / "3.png", png(3))
    result = cli("predict", digits_run, odd, tmp_path / "folder", "--json", "p.json")
    assert result.exit_code == 0, result.output
    report = json.loads(Path("p.json").read_text())
    assert [row["input"] for row in report["predictions"]] == [f"{odd}/ok/1.png", f"{odd}/ok/2.png", f"{tmp_path}/folder/3.png"]
    skipped = {row["input"]: row["reason"] for row in report["skipped"]}
    expected = {f"{odd}/{name}": reason for name, reason in ODD_REASONS.items()}
    expected[f"{tmp_path}/folder/pipe.png"] = "FIFO"
    assert set(skipped) == set(expected)
    for name, reason in expected.items():
        assert reason in skipped[name], (name, skipped[name])
        assert f"skipped {name}: " in result.stderr


def test_prepare_skips_damaged_members_into_the_manifest_and_prepares_the_rest(cli, workdir, tmp_path):
    members = {f"{cls}/{i}.png": png(i) for cls in ("cat", "dog") for i in range(3)}
    damage = {"cat/0.png": "crc", "dog/0.png": "deflate", "dog/1.png": "huge"}
    source = bad_zip(tmp_path / "pets.zip", members, damage)
    with zipfile.ZipFile(source, "a") as archive:
        archive.writestr("../cat/evil.png", png(9))
        archive.writestr("dog/more.zip", zip_of(tmp_path / "more.zip", {"x.png": png()}).read_bytes())
    result = cli("prepare", "pets", "--from", source, "--val-fraction", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads(Path("data/pets/manifest.json").read_text())
    assert manifest["splits"]["train"]["source_files"] == ["cat/1.png", "cat/2.png", "dog/2.png"]
    skipped = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert set(skipped) == {"cat/0.png", "dog/0.png", "dog/1.png", "../cat/evil.png", "dog/more.zip"}
    assert "CRC" in skipped["cat/0.png"] and "damaged in the zip" in skipped["dog/0.png"]
    assert "6.0 GB" in skipped["dog/1.png"] and "leaves the zip" in skipped["../cat/evil.png"]
    assert "a zip inside" in skipped["dog/more.zip"] and "skipped 5 input(s)" in result.stderr


def test_eval_on_a_zip_with_a_damaged_member_evaluates_the_others(cli, workdir, digits_run, tmp_path):
    members = {f"{digit}/{i}.png": png(10 * digit + i) for digit in (3, 5) for i in range(2)}
    data = bad_zip(tmp_path / "digits.zip", members, {"3/0.png": "crc", "5/1.png": "encrypted"})
    result = cli("eval", digits_run, "--data", data)
    assert result.exit_code == 0, result.output
    (report,) = Path(digits_run).glob("eval_*.json")
    assert json.loads(report.read_text())["samples"] == 2


def test_a_scan_with_nan_voxels_is_windowed_on_its_finite_ones_and_an_all_nan_one_is_skipped(cli, workdir, tmp_path):
    from perceiver_cli.data.nifti import to_uint8 as _to_uint8
    from perceiver_cli.data.files import Unreadable

    volume = np.random.default_rng(0).normal(100, 20, (4, 6, 6)).astype(np.float32)
    holed = volume.copy()
    holed[1, 2, 3], holed[2, 0, 0] = np.nan, np.inf
    before, after = _to_uint8(volume, [0, 1, 2, 3]), _to_uint8(holed, [0, 1, 2, 3])
    assert after[1][2, 3] == 0 and after[2][0, 0] == 255  # a NaN voxel is black, infinity the window's top
    kept = np.isfinite(holed[:4])
    assert max(int(np.abs(a.astype(int) - b)[k].max()) for a, b, k in zip(before, after, kept)) <= 8  # not a black scan
    with pytest.raises(Unreadable, match="no finite intensity"):
        _to_uint8(np.full((4, 6, 6), np.nan, np.float32), [0])

    scans = tmp_path / "scans"
    for i, side in enumerate(("LEFT", "RIGHT", "LEFT", "RIGHT")):
        save_nifti(volume + i, scans / f"OAI900000{i}_BaseLine_{side}.nii.gz")
    save_nifti(np.full((4, 6, 6), np.nan, np.float32), scans / "OAI9000009_BaseLine_LEFT.nii.gz")
    result = cli("prepare", "akoa", "--from", scans, "--slices", 2, "--size", "6x6", "--split", "0.5,0.5,0")
    assert result.exit_code == 0, result.output
    manifest = json.loads(Path("data/akoa/manifest.json").read_text())
    assert [(s["path"], s["reason"][:26]) for s in manifest["skipped"]] == \
        [("OAI9000009_BaseLine_LEFT.nii.gz", "holds no finite intensity ")]


def test_a_read_slice_model_skips_an_all_nan_scan(tmp_path):
    from perceiver_cli.data.inputs import Unreadable, input_reader

    reader = input_reader({"kind": "image", "shape": [6, 6, 1]}, {"kind": "akoa-nifti", "slices": 2})
    good = save_nifti(np.random.default_rng(0).normal(100, 20, (4, 6, 6)).astype(np.float32), tmp_path / "a.nii.gz")
    assert len(reader.read("a.nii.gz", good.read_bytes())) == 2
    nan = save_nifti(np.full((4, 6, 6), np.nan, np.float32), tmp_path / "b.nii.gz")
    with pytest.raises(Unreadable, match="no finite intensity"):
        reader.read("b.nii.gz", nan.read_bytes())


def test_a_nii_gz_that_unpacks_past_the_cap_is_refused_before_it_is_held(monkeypatch):
    import gzip

    from perceiver_cli.data import nifti as akoa  # the NIfTI helpers akoa and knee-seg share
    from perceiver_cli.data.files import Unreadable

    monkeypatch.setattr(akoa, "MAX_FILE_BYTES", 1000)  # 1000 bytes stand for the 2 GB
    with pytest.raises(Unreadable, match="unpacks to more than"):
        akoa.gunzip(gzip.compress(b"\0" * 5000))
    assert akoa.gunzip(gzip.compress(b"\0" * 1000)) == b"\0" * 1000
    assert MAX_FILE_BYTES == 2 * 2**30


# --- pickles, loaders and the advice for a corrupt knee-seg dataset ---------------------------------------

def test_reading_a_pickle_to_name_its_objects_runs_none_of_them(tmp_path):
    from perceiver_cli.runs import checkpoint

    marker = tmp_path / "pwned"

    class OpensAFile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for protocol in (0, 2, 5):
        path = write(tmp_path / f"evil{protocol}.pt", pickle.dumps({"x": OpensAFile()}, protocol=protocol))
        with pytest.raises(UserError, match=r"holds pickled Python objects.*\(here (io|builtins)\.open\)"):
            checkpoint.load(path)
    assert not marker.exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {"w": torch.ones(64)}, "config": {}}, legacy, _use_new_zipfile_serialization=False)
    cut = write(tmp_path / "cut.pt", legacy.read_bytes()[:300])  # torch's own pickles, cut short: damage
    with pytest.raises(UserError, match="damaged or cut short") as info:
        checkpoint.load(cut)
    assert "pickled" not in str(info.value) and "\x1b" not in str(info.value)


def test_perceiver_cli_load_refuses_a_foreign_checkpoint_in_one_line(digits_run, tmp_path):
    import perceiver_cli

    state = good_state(Path(digits_run))
    for edit, expected in ((lambda s: s.update(classes="0123456789"), "classes"),
                           (lambda s: s["input_spec"].pop("kind"), "input_spec.kind"),
                           (lambda s: s.update(epoch=-1), "epoch")):
        changed = copy.deepcopy(state)
        edit(changed)
        with pytest.raises(UserError, match=expected) as info:
            perceiver_cli.load(save_state(tmp_path, "foreign.pt", changed))
        assert "\n" not in str(info.value) and "foreign.pt" in str(info.value)


def test_a_corrupt_knee_seg_dataset_names_the_whole_prepare_that_made_it(cli, workdir, tmp_path):
    from perceiver_cli.data import prepared

    labels = write_pairs(tmp_path / "pairs")[1]
    args = ["--labels", labels, "--synthesize", 1, "--slices", 2, "--size", "12x10", "--split", "0,0,1", "--seed", 3]
    assert cli("prepare", "knee-seg", *args).exit_code == 0
    made = Path("data/knee-seg/test_x.npy").read_bytes()
    data = bytearray(made)
    data[-1] ^= 0xFF
    Path("data/knee-seg/test_x.npy").write_bytes(bytes(data))
    with pytest.raises(UserError) as info:
        prepared.load(Path("data/knee-seg"))
    command = str(info.value).split("`")[1]
    for option in ("--synthesize 1", "--slices 2", "--size 12x10", "--split 0.0,0.0,1.0", "--seed 3", f"--labels {labels}"):
        assert option in command, (option, command)
    result = cli(*shlex.split(command)[1:])  # the command as suggested runs, and makes the same dataset
    assert result.exit_code == 0, result.output
    assert Path("data/knee-seg/test_x.npy").read_bytes() == made

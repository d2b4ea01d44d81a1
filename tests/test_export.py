"""perceiver export as a deployer uses it: the exported ONNX / torch.export graph, fed the stored
samples of a run's prepared split (real CIFAR-10 JPEGs from ../shared/data when present), gives
PyTorch's logits; the safetensors folder reloads to the same bits; every mistake is one line, exit 2,
and writes nothing."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import set_args, snapshot, write_image_folder
from test_cli import assert_user_error
from test_kneeseg import write_pairs
from test_modelnet40 import POINT_MODEL, write_modelnet

from perceiver_cli.engine.runtime import InputTransform
from perceiver_cli.runs.exported import load_model_from
from perceiver_cli.runs.trained import split_samples

CIFAR_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg" / "train.zip"
# 32x32 images in 2x2 patches: 256 tokens of 12 channels, read by grid attention (12 + 1 < head dim 32)
GRID_RECIPE = """\
model:
  num_latents: 8
  latent_dim: 32
  latent_blocks: 1
  latent_heads: 2
  num_bands: 4
  max_freq: 8.0
  patch_size: 2
data:
  dataset: pics
train:
  epochs: 1
  batch_size: 8
"""
TOLERANCE = 1e-3


def files(folder: Path) -> dict:
    """snapshot() less the digest cache that loading a prepared dataset may rewrite (bookkeeping)."""
    return {name: stat for name, stat in snapshot(folder).items() if not name.endswith(".verified.json")}


def cifar_or_generated(root: Path, per_class: int = 6) -> tuple[Path, bool]:
    """An image folder of real CIFAR-10 JPEGs (3 classes) when ../shared/data has them, else of
    generated 32x32 PNGs; (folder, real)."""
    if not CIFAR_ZIP.is_file():
        return write_image_folder(root, per_class=per_class, size=32), False
    with zipfile.ZipFile(CIFAR_ZIP) as archive:
        for cls in ("airplane", "automobile", "bird"):
            names = sorted(n for n in archive.namelist() if n.startswith(f"train/{cls}/") and n.endswith(".jpg"))
            (root / cls).mkdir(parents=True, exist_ok=True)
            for name in names[:per_class]:
                (root / cls / Path(name).name).write_bytes(archive.read(name))
    return root, True


def prepared_and_trained(base: Path, cli, prepare: list, train: list) -> None:
    """`perceiver prepare *prepare` then `perceiver train *train`, inside base."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert cli("prepare", *prepare).exit_code == 0
        result = cli("train", *train)
        assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, cli):
    """A grid-attention image run trained on real CIFAR JPEGs (or generated images): (its base folder, real)."""
    base = tmp_path_factory.mktemp("export_images")
    folder, real = cifar_or_generated(base / "pics_src")
    (base / "grid.yaml").write_text(GRID_RECIPE)
    prepared_and_trained(base, cli, ["pics", "--from", folder, "--val-fraction", "0.34"], [base / "grid.yaml"])
    return base, real


@pytest.fixture(scope="module")
def point_run(tmp_path_factory, cli):
    """A point-cloud run (128 stored points, 100 read, cube scaling): its base folder."""
    base = tmp_path_factory.mktemp("export_points")
    source = write_modelnet(base / "meshes", train=3, test=2, extras=False)
    overrides = POINT_MODEL + ["train.epochs=1", "data.val_fraction=0.34", "data.num_points=100", "data.point_scaling=cube"]
    prepared_and_trained(base, cli, ["modelnet40", "--from", source, "--points", 128], ["modelnet40", *set_args(overrides)])
    return base


def in_copy(base: Path, workdir: Path) -> None:
    """The module's run and data, copied into this test's working directory."""
    for name in ("runs", "data"):
        shutil.copytree(base / name, workdir / name)


def stored_split(run: Path):
    """(stored samples of the run's test/val split, eager PyTorch logits of them, the export input)."""
    model, recipe, state, _ = load_model_from(run, torch.device("cpu"))
    x, _, split = split_samples(recipe, state, None)
    transform = InputTransform(state["input_spec"], state.get("normalization"), torch.device("cpu"), recipe.data)
    with torch.no_grad():
        logits = model(transform(torch.from_numpy(np.asarray(x))))
    return np.asarray(x), logits, split


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_onnx_of_a_grid_attention_image_run_matches_pytorch_on_the_stored_images(cli, workdir, image_run):
    base, real = image_run
    in_copy(base, workdir)
    run = Path("runs/grid")
    model, *_ = load_model_from(run, torch.device("cpu"))
    attention = model.cross_blocks[0].attention
    assert attention.reads_grid_in_channels(12, 256)  # the fast grid path is the one exported

    result = cli("export", run, "--format", "onnx")
    assert result.exit_code == 0, result.output
    folder = run / "export"
    assert {p.name for p in folder.iterdir()} == {"config.json", "export.json", "model.onnx", "model.safetensors"}
    info = json.loads((folder / "export.json").read_text())
    assert info["exporter"].startswith("dynamo") and info["notes"] == []  # no fallback to the plain path
    assert info["input"] == {**info["input"], "name": "images", "dtype": "uint8", "shape": ["batch", 32, 32, 3]}
    assert "val samples of pics" in info["check"]["inputs"]
    assert all(check["max_abs_diff"] <= check["tolerance"] for check in info["check"]["runs"])
    assert "ONNX Runtime vs PyTorch" in result.stdout and "dynamo" in result.stdout

    x, logits, _ = stored_split(run)  # the whole split at once: a batch size the export never checked
    assert x.dtype == np.uint8 and len(x) not in (1, 8)
    onnx_logits = run_onnx(folder / "model.onnx", x)
    assert np.abs(onnx_logits - logits.numpy()).max() < TOLERANCE, "real" if real else "generated"


def test_onnx_of_a_point_cloud_run_matches_pytorch(cli, workdir, point_run):
    in_copy(point_run, workdir)
    run = Path("runs/modelnet40")
    result = cli("export", run, "--format", "onnx", "--out", "deploy", "--opset", 18)
    assert result.exit_code == 0, result.output
    info = json.loads(Path("deploy/export.json").read_text())
    assert info["opset"] == 18 and info["input"]["shape"] == ["batch", 128, 3] and info["input"]["dtype"] == "float32"

    x, logits, _ = stored_split(run)  # 128 stored points; the graph reads the first 100, cube-scaled
    x = np.concatenate([x, x, x])  # 3 x the test split: a batch size the export never checked
    assert np.abs(run_onnx(Path("deploy/model.onnx"), x) - torch.cat([logits] * 3).numpy()).max() < TOLERANCE


def test_a_model_on_the_split_key_value_projection_exports_its_plain_path_right_for_any_batch(cli, digits_run):
    """8x8 digits (64 tokens) take the split projection, whose slabs depend on the batch size: torch.onnx
    alone froze them at the example's count (off by 0.1 above 64 samples); the export says it fell back."""
    result = cli("export", digits_run, "--format", "onnx")
    assert result.exit_code == 0, result.output
    info = json.loads((digits_run / "export" / "export.json").read_text())
    assert any("plain attention path" in note for note in info["notes"]) and "plain attention path" in result.stdout
    x, logits, _ = stored_split(digits_run)
    assert len(x) > 64
    assert np.abs(run_onnx(digits_run / "export" / "model.onnx", x) - logits.numpy()).max() < TOLERANCE


def test_safetensors_folder_reloads_to_identical_logits(cli, workdir, image_run):
    in_copy(image_run[0], workdir)
    run = Path("runs/grid")
    result = cli("export", run, "--format", "safetensors", "--out", "shipped")
    assert result.exit_code == 0, result.output
    assert {p.name for p in Path("shipped").iterdir()} == {"config.json", "model.safetensors"}
    x, logits, _ = stored_split(run)
    again, again_logits, _ = stored_split(Path("shipped"))
    assert np.array_equal(again, x) and torch.equal(again_logits, logits)


def test_torch_export_program_matches_pytorch(cli, workdir, image_run):
    in_copy(image_run[0], workdir)
    run = Path("runs/grid")
    result = cli("export", run, "--format", "torch-export", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert {p.name for p in (run / "export").iterdir()} == {"config.json", "export.json", "model.pt2", "model.safetensors"}
    info = json.loads((run / "export" / "export.json").read_text())
    assert info["format"] == "torch-export" and info["device"] == "cpu"
    x, logits, _ = stored_split(run)
    with torch.no_grad():
        got = torch.export.load(str(run / "export" / "model.pt2")).module()(torch.from_numpy(x))
    assert (got - logits).abs().max().item() < TOLERANCE


def test_torchscript_is_an_alias_that_says_it_writes_a_torch_export_program(cli, workdir, image_run):
    in_copy(image_run[0], workdir)
    result = cli("export", "runs/grid", "--format", "torchscript", "--out", "old_name")
    assert result.exit_code == 0, result.output
    assert "old name of --format torch-export" in result.stdout and "not TorchScript" in result.stdout
    assert (Path("old_name") / "model.pt2").is_file()
    assert json.loads((Path("old_name") / "export.json").read_text())["format"] == "torch-export"


def test_export_device_is_checked_before_anything_is_written(cli, workdir, image_run):
    in_copy(image_run[0], workdir)
    onnx_on_gpu = cli("export", "runs/grid", "--format", "onnx", "--device", "cuda", "--out", "gpu")
    assert onnx_on_gpu.exit_code == 2 and "ONNX graphs are made and checked on the CPU" in onnx_on_gpu.output
    if not torch.cuda.is_available():
        missing = cli("export", "runs/grid", "--format", "torch-export", "--device", "cuda", "--out", "gpu")
        assert missing.exit_code == 2 and "--device=cuda but no CUDA device is visible" in missing.output
    assert not Path("gpu").exists()


def test_onnx_of_a_segmentation_run_gives_its_per_pixel_logits(cli, workdir):
    images, labels = write_pairs(workdir / "knee")
    assert cli("prepare", "knee-seg", "--images", images, "--labels", labels, "--size", "16x16", "--split", "0.6,0.2,0.2").exit_code == 0
    segment = ["task.name=segment", "data.dataset=knee-seg", "model.num_latents=8", "model.latent_dim=32",
               "model.latent_blocks=1", "model.latent_heads=2", "model.num_bands=4", "model.patch_size=1",
               "task.output_stride=2", "train.batch_size=16", "train.epochs=1", "train.best_metric=val_dice"]
    assert cli("train", *set_args(segment), "--name", "seg").exit_code == 0
    result = cli("export", "runs/seg", "--format", "onnx")
    assert result.exit_code == 0, result.output
    info = json.loads(Path("runs/seg/export/export.json").read_text())
    assert info["output"]["layout"] == "B H W K" and info["notes"] == []  # 256 pixels: the grid attention, exported
    x, logits, _ = stored_split(Path("runs/seg"))
    got = run_onnx(Path("runs/seg/export/model.onnx"), x)
    assert got.shape == (len(x), 16, 16, len(info["classes"])) and np.abs(got - logits.numpy()).max() < TOLERANCE


# --- mistakes: one line, exit 2, nothing written ----------------------------------------------------

def unknown_format(mp):
    return ["runs/digits", "--format", "tflite"], "tflite"


def opset_too_old(mp):
    return ["runs/digits", "--format", "onnx", "--opset", "9"], "--opset 9"


def opset_too_new(mp):
    return ["runs/digits", "--format", "onnx", "--opset", "99"], "--opset 99"


def opset_without_onnx(mp):
    return ["runs/digits", "--format", "safetensors", "--opset", "18"], "--opset"


def onnxruntime_missing(mp):
    mp.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    return ["runs/digits", "--format", "onnx"], "pip install 'perceiver-cli[onnx]'"


def export_folder_without_weights(mp):
    folder = Path("half")
    folder.mkdir()
    config = {"format": "perceiver-export/1", "recipe": {}, "checkpoint": {"classes": ["a"], "input_spec": {}}}
    (folder / "config.json").write_text(json.dumps(config))
    return [folder, "--format", "onnx", "--out", "elsewhere"], "model.safetensors"


def truncated_checkpoint(mp):
    data = Path("runs/digits/checkpoints/best.pt").read_bytes()
    Path("cut.pt").write_bytes(data[: len(data) // 2])
    return ["cut.pt", "--format", "safetensors", "--out", "elsewhere"], "cut.pt"


def out_is_a_folder_of_other_files(mp):
    return ["runs/digits", "--format", "safetensors", "--out", "runs/digits"], "did not write ("


def out_is_an_app_folder_with_its_own_config_json(mp):
    app = Path("app")
    app.mkdir()
    (app / "config.json").write_text('{"port": 8080}')
    (app / "server.py").write_text("print('serving')")
    return ["runs/digits", "--format", "safetensors", "--out", app], "did not write (server.py)"


def out_is_an_export_the_user_added_a_readme_to(mp):
    folder = Path("shipped")
    folder.mkdir()
    (folder / "config.json").write_text('{"format": "perceiver-export/1"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("how we deploy it")
    return ["runs/digits", "--format", "safetensors", "--out", folder], "did not write (README.md)"


def out_holds_a_config_json_of_someone_else(mp):
    folder = Path("theirs")
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "perceiver"}')  # a Hugging Face folder, say
    return ["runs/digits", "--format", "safetensors", "--out", folder], "did not write (config.json)"


@pytest.mark.parametrize("case", [unknown_format, opset_too_old, opset_too_new, opset_without_onnx, onnxruntime_missing,
                                  export_folder_without_weights, truncated_checkpoint, out_is_a_folder_of_other_files,
                                  out_is_an_app_folder_with_its_own_config_json, out_is_an_export_the_user_added_a_readme_to,
                                  out_holds_a_config_json_of_someone_else])
def test_a_mistake_is_one_line_and_writes_nothing(cli, workdir, digits_run, monkeypatch, case):
    args, named = case(monkeypatch)
    before = files(workdir)
    line = assert_user_error(cli("export", *args))
    assert named in line
    assert files(workdir) == before


def test_a_masked_image_run_is_refused(cli, workdir, tiny):
    mae = tiny + ["task.name=masked_image", "train.best_metric=val_loss", "task.mask_ratio=0.5", "train.epochs=1"]
    assert cli("train", *set_args(mae), "--name", "mae").exit_code == 0
    before = files(workdir)
    assert "masked_image" in assert_user_error(cli("export", "runs/mae", "--format", "onnx"))
    assert files(workdir) == before


def test_a_graph_that_differs_from_pytorch_is_refused_and_nothing_is_written(cli, workdir, point_run, monkeypatch):
    from perceiver_cli.export import onnx_file

    in_copy(point_run, workdir)
    real_run = onnx_file.run_onnx
    monkeypatch.setattr(onnx_file, "run_onnx", lambda path, x: real_run(path, x) + 0.01)  # a wrong graph
    before = files(workdir)
    line = assert_user_error(cli("export", "runs/modelnet40", "--format", "onnx"))
    assert "model.onnx differs from PyTorch by 0.01" in line and "nothing was written" in line
    assert files(workdir) == before


def test_when_the_dynamo_exporter_fails_the_torchscript_exporter_is_used_and_named(cli, workdir, point_run, monkeypatch):
    in_copy(point_run, workdir)
    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("unsupported operator. (as the dynamo exporter may say)")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    result = cli("export", "runs/modelnet40", "--format", "onnx")
    assert result.exit_code == 0, result.output
    info = json.loads(Path("runs/modelnet40/export/export.json").read_text())
    assert info["exporter"].startswith("TorchScript-based") and "dynamo exporter failed" in info["notes"][0]
    x, logits, _ = stored_split(Path("runs/modelnet40"))
    x = np.concatenate([x, x, x])
    assert np.abs(run_onnx(Path("runs/modelnet40/export/model.onnx"), x) - torch.cat([logits] * 3).numpy()).max() < TOLERANCE

"""Every bad input a user can give, across all subcommands, in one table: each must end with exit code 2
and exactly one line on stderr (no traceback) that names the problem, must change no file that was
there before, and must leave nothing half-written behind (no new run directory, dataset or temp file).

A case is a function (inputs folder, monkeypatch) -> (command line, texts the error line must contain).
The working directory holds a tiny trained digits run (runs/digits) and a prepared image dataset
(data/shapes) with a tiny run trained on it (runs/shapes)."""

from __future__ import annotations

import errno
import json
import shutil
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, set_args, write_image_folder

# a cache of verified digests that loading a dataset may write beside it: bookkeeping, not user data
BOOKKEEPING = {".verified.json"}


def every_path(folder: Path) -> dict[str, tuple]:
    """Every file and folder under `folder` -> (size, mtime_ns) for files, 'dir' for folders."""
    return {str(p.relative_to(folder)): ("dir",) if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.name not in BOOKKEEPING}


@pytest.fixture(scope="session")
def shapes_session(tmp_path_factory, cli):
    """data/shapes prepared from a small image folder, and runs/shapes trained on it for one epoch."""
    base = tmp_path_factory.mktemp("shapes_session")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        source = write_image_folder(base / "shapes_src", per_class=8)
        assert cli("prepare", "shapes", "--from", source).exit_code == 0
        shutil.rmtree(source)
        result = cli("train", *set_args(TINY + ["data.dataset=shapes", "train.epochs=1", "train.batch_size=16"]),
                     "--name", "shapes")
        assert result.exit_code == 0, result.output
    return base


@pytest.fixture
def world(workdir, digits_run, shapes_session) -> Path:
    for name in ("data", "runs/shapes"):
        shutil.copytree(shapes_session / name, workdir / name, dirs_exist_ok=True)
    return workdir


# --- helpers that make bad files -----------------------------------------------------------------------

def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (a decompression bomb when huge)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def edit_manifest(edit) -> None:
    path = Path("data/shapes/manifest.json")
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def failing_writes(mp, code: int) -> None:
    """Every file the tool replaces fails with OSError `code` (a full disk, a read-only folder)."""
    import perceiver_cli.atomic as atomic

    def refuse(path, *args, **kwargs):
        raise OSError(code, __import__("os").strerror(code), str(path))
    mp.setattr(atomic, "open", refuse, raising=False)


SHAPES = ["--set", "data.dataset=shapes", *set_args(TINY)]


# --- recipes and --set --------------------------------------------------------------------------------

def missing_recipe(tmp, mp):
    return ["train", "missing-recipe.yaml"], ["missing-recipe.yaml", "not found"]


def malformed_yaml(tmp, mp):
    return ["train", write(tmp / "bad.yaml", "model:\n  latent_dim: [32\ntrain:\n  epochs: 1\n")], ["bad.yaml", "malformed YAML", "line "]


def random_bytes_recipe(tmp, mp):
    return ["train", write(tmp / "r.yaml", bytes(range(128, 256)) * 4)], ["r.yaml", "not UTF-8"]


def utf16_recipe(tmp, mp):
    return ["train", write(tmp / "r.yaml", "train:\n  epochs: 1\n".encode("utf-16"))], ["r.yaml", "not UTF-8"]


def nul_bytes_recipe(tmp, mp):
    return ["train", write(tmp / "r.yaml", b"train:\n  epochs: 1\n\x00\x00")], ["r.yaml", "malformed YAML"]


def empty_recipe(tmp, mp):
    return ["train", write(tmp / "r.yaml", "")], ["r.yaml", "is empty"]


def comment_only_recipe(tmp, mp):
    return ["train", write(tmp / "r.yaml", "# nothing yet\n")], ["r.yaml", "is empty"]


def list_recipe(tmp, mp):
    return ["train", write(tmp / "r.yaml", "- model\n- train\n")], ["r.yaml", "mapping"]


def duplicate_key(tmp, mp):
    return ["train", write(tmp / "r.yaml", "train:\n  epochs: 1\ntrain:\n  epochs: 2\n")], ["'train' appears twice"]


def directory_recipe(tmp, mp):
    (tmp / "recipes_dir").mkdir()
    return ["train", tmp / "recipes_dir"], ["recipes_dir", "is a directory"]


def unknown_key(tmp, mp):
    return ["train", write(tmp / "typo.yaml", "model:\n  num_latent: 8\n")], ["model.num_latent", "model.num_latents"]


def section_as_value(tmp, mp):
    return ["train", write(tmp / "r.yaml", "model: 3\n")], ["'model' is a section"]


def wrong_type(tmp, mp):
    return ["train", "--set", "train.epochs=abc"], ["train.epochs", "abc", "(with --set)"]


def set_without_equals(tmp, mp):
    return ["train", "--set", "train.epochs"], ["KEY=VALUE"]


def set_a_section(tmp, mp):
    return ["train", "--set", "model=3"], ["'model' is a section"]


def set_unknown_key(tmp, mp):
    return ["train", "--set", "optim.lrr=1"], ["optim.lrr", "optim.lr"]


def lr_inf(tmp, mp):
    return ["train", "--set", "optim.lr=inf"], ["optim.lr", "finite"]


def lr_nan(tmp, mp):
    return ["train", "--set", "optim.lr=nan"], ["optim.lr", "finite"]


def lr_inf_in_file(tmp, mp):
    path = write(tmp / "r.yaml", "optim:\n  lr: .inf\n")
    return ["train", path, "--set", "train.epochs=1"], ["r.yaml:", "optim.lr", "finite"]


def betas_out_of_range(tmp, mp):
    return ["train", "--set", "optim.betas=[2,3]"], ["optim.betas=[2, 3]", "less than 1"]


def negative_seed(tmp, mp):
    return ["train", "--set", "train.seed=-5"], ["train.seed=-5"]


def heads_do_not_divide(tmp, mp):
    return ["train", "--set", "model.latent_dim=30"], ["latent_dim=30", "latent_heads"]


def patch_does_not_divide(tmp, mp):
    return ["train", "--set", "model.patch_size=3"], ["model.patch_size=3", "8x8"]


def run_name_with_slash(tmp, mp):
    return ["train", *set_args(TINY), "--name", "a/b"], ["a/b", "plain folder name"]


def cuda_without_gpu(tmp, mp):
    mp.setattr(torch.cuda, "is_available", lambda: False)
    return ["train", *set_args(TINY), "--device", "cuda"], ["CUDA"]


def too_many_latents(tmp, mp):
    return ["train", "--set", "model.num_latents=100000000"], ["out of memory", "GB", "model.num_latents"]


def runs_dir_is_a_file(tmp, mp):
    write(tmp / "afile", "x")
    return ["train", *set_args(TINY), "--set", f"train.runs_dir={tmp / 'afile'}"], ["afile"]


def runs_dir_below_a_file(tmp, mp):
    write(tmp / "afile", "x")
    return ["train", *set_args(TINY), "--set", f"train.runs_dir={tmp / 'afile' / 'runs'}"], ["afile"]


def disk_full_during_training(tmp, mp):
    failing_writes(mp, errno.ENOSPC)
    return ["train", *set_args(TINY), "--name", "full"], ["No space left on device"]


def read_only_run_directory(tmp, mp):
    failing_writes(mp, errno.EROFS)
    return ["train", *set_args(TINY), "--name", "ro"], ["Read-only file system"]


def diverging_run(tmp, mp):
    return ["train", *set_args(TINY), "--set", "optim.lr=1e30", "--name", "diverges"], ["diverged", "optim.lr"]


def not_prepared(tmp, mp):
    return ["train", *set_args(TINY + ["data.dataset=cifar10"])], ["perceiver prepare cifar10"]


def unknown_option(tmp, mp):
    return ["train", "--bogus"], ["--bogus"]


def unknown_command(tmp, mp):
    return ["trian"], ["trian", "train"]


# --- resume -------------------------------------------------------------------------------------------

def resume_and_recipe(tmp, mp):
    return ["train", "digits", "--resume", "runs/digits"], ["--resume", "not both"]


def resume_missing_run(tmp, mp):
    return ["train", "--resume", "runs/nope"], ["runs/nope"]


def resume_finished_run(tmp, mp):
    return ["train", "--resume", "runs/digits"], ["already finished", "train.epochs"]


def resume_other_architecture(tmp, mp):
    return ["train", "--resume", "runs/digits", "--set", "train.epochs=3", "--set", "model.latent_dim=64"], ["architecture"]


def resume_with_bad_value(tmp, mp):
    return ["train", "--resume", "runs/digits", "--set", "optim.lr=inf"], ["(resumed) (with --set)", "optim.lr", "finite"]


# --- prepared data that is silently wrong ---------------------------------------------------------------

def flipped_byte_in_array(tmp, mp):
    path = Path("data/shapes/train_x.npy")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    return ["train", *SHAPES], ["train_x.npy", "prepare"]


def label_outside_classes(tmp, mp):
    path = Path("data/shapes/train_y.npy")
    y = np.load(path)
    y[3] = 200
    np.save(path, y)
    edit_manifest(lambda m: m["splits"]["train"]["sha256"].update(y=__import__("hashlib").sha256(path.read_bytes()).hexdigest()))
    return ["train", *SHAPES], ["200", "train_y.npy"]


def manifest_missing_files(tmp, mp):
    edit_manifest(lambda m: m["splits"]["train"].pop("files"))
    return ["train", *SHAPES], ["manifest.json", "files"]


def manifest_missing_classes(tmp, mp):
    edit_manifest(lambda m: m.pop("classes"))
    return ["train", *SHAPES], ["manifest.json", "classes"]


def manifest_not_json(tmp, mp):
    write(Path("data/shapes/manifest.json"), '{"format": "perceiver-prepared/1", ')
    return ["train", *SHAPES], ["manifest.json", "prepare"]


def array_file_missing(tmp, mp):
    Path("data/shapes/val_x.npy").unlink()
    return ["train", *SHAPES], ["val_x.npy"]


# --- eval -----------------------------------------------------------------------------------------------

def eval_missing_run(tmp, mp):
    return ["eval", "runs/no-such-run"], ["runs/no-such-run"]


def eval_random_bytes_checkpoint(tmp, mp):
    return ["eval", write(tmp / "x.pt", np.random.default_rng(0).bytes(4096))], ["x.pt"]


def eval_pickled_checkpoint(tmp, mp):
    path = tmp / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Fraction(1, 3)}, path)
    return ["eval", path], ["evil.pt", "pickled"]


def eval_truncated_checkpoint(tmp, mp):
    data = Path("runs/shapes/checkpoints/best.pt").read_bytes()
    return ["eval", write(tmp / "cut.pt", data[: len(data) // 2])], ["cut.pt"]


def eval_split_and_data(tmp, mp):
    return ["eval", "runs/digits", "--split", "val", "--data", tmp], ["--split", "--data"]


def eval_unknown_class(tmp, mp):
    folder = tmp / "strange"
    for cls in ("3", "zebra"):
        for i in range(2):
            (folder / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8), "L").save(folder / cls / f"{i}.png")
    return ["eval", "runs/digits", "--data", folder], ["zebra"]


def eval_data_missing(tmp, mp):
    return ["eval", "runs/digits", "--data", tmp / "nowhere"], ["nowhere"]


def eval_split_missing(tmp, mp):
    return ["eval", "runs/shapes", "--split", "test"], ["test"]


def eval_batch_size_zero(tmp, mp):
    return ["eval", "runs/digits", "--batch-size", "0"], ["--batch-size"]


def eval_on_corrupted_data(tmp, mp):
    path = Path("data/shapes/val_x.npy")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    return ["eval", "runs/shapes", "--split", "val"], ["val_x.npy", "prepare"]


def eval_disk_full(tmp, mp):
    failing_writes(mp, errno.ENOSPC)
    return ["eval", "runs/digits"], ["No space left on device"]


# --- attention ------------------------------------------------------------------------------------------

def attention_head_out_of_range(tmp, mp):
    return ["attention", "runs/digits", "--checkpoint", "best", "--head", "5"], ["--head 5"]


def attention_stage_out_of_range(tmp, mp):
    return ["attention", "runs/digits", "--checkpoint", "best", "--stage", "9"], ["--stage 9"]


def attention_no_saved_maps(tmp, mp):
    return ["attention", "runs/digits"], ["no saved attention maps"]


def attention_bad_colormap(tmp, mp):
    return ["attention", "runs/digits", "--checkpoint", "best", "--colormap", "nope"], ["nope"]


def attention_bad_alpha(tmp, mp):
    return ["attention", "runs/digits", "--checkpoint", "best", "--alpha", "2"], ["--alpha"]


def attention_missing_checkpoint_file(tmp, mp):
    return ["attention", "runs/digits", "--checkpoint", tmp / "none.pt"], ["none.pt"]


def attention_missing_run(tmp, mp):
    return ["attention", "runs/nope"], ["runs/nope"]


def attention_input_missing(tmp, mp):
    return ["attention", "runs/digits", "--input", tmp / "none.png"], ["none.png"]


def attention_input_not_an_image(tmp, mp):
    return ["attention", "runs/digits", "--input", write(tmp / "notes.png", "just text")], ["notes.png"]


def attention_input_decompression_bomb(tmp, mp):
    return ["attention", "runs/digits", "--input", write(tmp / "bomb.png", png_declaring(30000, 30000))], ["bomb.png"]


# --- report ---------------------------------------------------------------------------------------------

def report_missing_run(tmp, mp):
    return ["report", "runs/nope"], ["runs/nope"]


def report_out_below_a_file(tmp, mp):
    write(tmp / "afile", "x")
    return ["report", "runs/digits", "--out", tmp / "afile" / "report"], ["afile"]


def report_truncated_metrics_without_rows_in_the_checkpoint(tmp, mp):
    run = Path("runs/digits")
    for name in ("best.pt", "last.pt"):  # a checkpoint of before the rows moved into it
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        state.pop("metrics", None)
        torch.save(state, run / "checkpoints" / name)
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-20])
    return ["report", "runs/digits"], ["metrics.jsonl", "line 2"]


# --- bench ----------------------------------------------------------------------------------------------

def bench_json_in_missing_folder(tmp, mp):
    return ["bench", *set_args(TINY), "--json", tmp / "missing" / "b.json"], ["missing", "does not exist"]


def bench_json_is_a_folder(tmp, mp):
    return ["bench", *set_args(TINY), "--json", tmp], ["is a folder"]


def bench_zero_input_size(tmp, mp):
    return ["bench", *set_args(TINY), "--input-size", "0x5"], ["HEIGHTxWIDTH"]


def bench_input_size_not_a_size(tmp, mp):
    return ["bench", *set_args(TINY), "--input-size", "big"], ["big"]


# --dtype fp32 (here and below): bench measures its matmul peak before running out of memory, and
# under PERCEIVER_TEST_CPU_BF16=1 (`auto` = bf16, emulated on AVX2) that took 6-7 minutes
def bench_huge_input(tmp, mp):
    return ["bench", *set_args(TINY), "--input-size", "100000x100000", "--steps", "1", "--warmup", "0",
            "--dtype", "fp32"], ["out of memory", "--input-size"]


def bench_huge_batch(tmp, mp):
    return ["bench", "--batch", "100000000", "--steps", "1", "--warmup", "0",
            "--dtype", "fp32"], ["out of memory", "--batch"]


def bench_unknown_compare(tmp, mp):
    return ["bench", *set_args(TINY), "--compare", "nobody"], ["nobody"]


def bench_bad_dtype(tmp, mp):
    return ["bench", *set_args(TINY), "--dtype", "fp8"], ["--dtype"]


# --- prepare --------------------------------------------------------------------------------------------

def prepare_mnist_empty(tmp, mp):
    (tmp / "empty").mkdir()
    return ["prepare", "mnist", "--from", tmp / "empty"], ["empty", "train-images-idx3-ubyte.gz"]


def prepare_cifar_bad_md5(tmp, mp):
    return ["prepare", "cifar10", "--from", write(tmp / "cifar-10-python.tar.gz", b"not the real cifar\n" * 100)], ["md5"]


def prepare_source_missing(tmp, mp):
    return ["prepare", "pets", "--from", tmp / "nowhere"], ["nowhere"]


def prepare_no_source(tmp, mp):
    return ["prepare", "pets"], ["--from"]


def prepare_not_a_zip(tmp, mp):
    return ["prepare", "pets", "--from", write(tmp / "pets.txt", "hello")], ["pets.txt"]


def prepare_folder_without_images(tmp, mp):
    write(tmp / "pets" / "cat" / "readme.txt", "no pictures here")
    return ["prepare", "pets", "--from", tmp / "pets"], ["pets"]


def prepare_size_not_a_size(tmp, mp):
    write_image_folder(tmp / "pets", per_class=2)
    return ["prepare", "pets", "--from", tmp / "pets", "--size", "huge"], ["--size", "HEIGHTxWIDTH"]


def prepare_size_too_large_for_memory(tmp, mp):
    write_image_folder(tmp / "pets", per_class=2)
    return ["prepare", "pets", "--from", tmp / "pets", "--size", "100000x100000"], ["100000x100000"]


def prepare_option_of_another_dataset(tmp, mp):
    write_image_folder(tmp / "pets", per_class=2)
    return ["prepare", "pets", "--from", tmp / "pets", "--points", "100"], ["--points", "modelnet40"]


def prepare_test_fraction_leaving_nothing_to_train(tmp, mp):
    write_image_folder(tmp / "pets", per_class=2)
    return ["prepare", "pets", "--from", tmp / "pets", "--val-fraction", "0.5", "--test-fraction", "0.5"], \
        ["--test-fraction 0.5", "--val-fraction 0.5", "below 1"]


def prepare_test_fraction_of_a_folder_with_its_own_test(tmp, mp):
    write_image_folder(tmp / "pets" / "train", per_class=2)
    write_image_folder(tmp / "pets" / "test", per_class=2)
    return ["prepare", "pets", "--from", tmp / "pets", "--test-fraction", "0.2"], ["own test split", "drop --test-fraction"]


def prepare_out_is_not_a_dataset(tmp, mp):
    write_image_folder(tmp / "pets", per_class=2)
    write(tmp / "occupied" / "mine.txt", "keep me")
    return ["prepare", "pets", "--from", tmp / "pets", "--out", tmp / "occupied"], ["occupied", "not a prepared dataset"]


def prepare_out_below_a_file(tmp, mp):
    write_image_folder(tmp / "pets", per_class=2)
    write(tmp / "afile", "x")
    return ["prepare", "pets", "--from", tmp / "pets", "--out", tmp / "afile" / "pets"], ["afile"]


def prepare_modelnet_without_meshes(tmp, mp):
    write(tmp / "ModelNet40" / "chair" / "train" / "notes.txt", "no meshes")
    return ["prepare", "modelnet40", "--from", tmp / "ModelNet40"], ["no OFF meshes"]


def prepare_akoa_bad_slices(tmp, mp):
    (tmp / "knees").mkdir()
    return ["prepare", "akoa", "--from", tmp / "knees", "--slices", "some"], ["--slices"]


def prepare_akoa_bad_split(tmp, mp):
    (tmp / "knees").mkdir()
    return ["prepare", "akoa", "--from", tmp / "knees", "--split", "a,b,c"], ["--split"]


def prepare_val_fraction_out_of_range(tmp, mp):
    return ["prepare", "pets", "--from", tmp, "--val-fraction", "2"], ["--val-fraction"]


CASES = [
    missing_recipe, malformed_yaml, random_bytes_recipe, utf16_recipe, nul_bytes_recipe, empty_recipe, comment_only_recipe,
    list_recipe, duplicate_key, directory_recipe, unknown_key, section_as_value, wrong_type, set_without_equals,
    set_a_section, set_unknown_key, lr_inf, lr_nan, lr_inf_in_file, betas_out_of_range, negative_seed,
    heads_do_not_divide, patch_does_not_divide, run_name_with_slash, cuda_without_gpu, too_many_latents,
    runs_dir_is_a_file, runs_dir_below_a_file, disk_full_during_training, read_only_run_directory, diverging_run,
    not_prepared, unknown_option, unknown_command,
    resume_and_recipe, resume_missing_run, resume_finished_run, resume_other_architecture, resume_with_bad_value,
    flipped_byte_in_array, label_outside_classes, manifest_missing_files, manifest_missing_classes, manifest_not_json,
    array_file_missing,
    eval_missing_run, eval_random_bytes_checkpoint, eval_pickled_checkpoint, eval_truncated_checkpoint,
    eval_split_and_data, eval_unknown_class, eval_data_missing, eval_split_missing, eval_batch_size_zero,
    eval_on_corrupted_data, eval_disk_full,
    attention_head_out_of_range, attention_stage_out_of_range, attention_no_saved_maps, attention_bad_colormap,
    attention_bad_alpha, attention_missing_checkpoint_file, attention_missing_run, attention_input_missing,
    attention_input_not_an_image, attention_input_decompression_bomb,
    report_missing_run, report_out_below_a_file, report_truncated_metrics_without_rows_in_the_checkpoint,
    bench_json_in_missing_folder, bench_json_is_a_folder, bench_zero_input_size, bench_input_size_not_a_size,
    bench_huge_input, bench_huge_batch, bench_unknown_compare, bench_bad_dtype,
    prepare_mnist_empty, prepare_cifar_bad_md5, prepare_source_missing, prepare_no_source, prepare_not_a_zip,
    prepare_folder_without_images, prepare_size_not_a_size, prepare_size_too_large_for_memory,
    prepare_option_of_another_dataset, prepare_test_fraction_leaving_nothing_to_train,
    prepare_test_fraction_of_a_folder_with_its_own_test, prepare_out_is_not_a_dataset, prepare_out_below_a_file,
    prepare_modelnet_without_meshes, prepare_akoa_bad_slices, prepare_akoa_bad_split, prepare_val_fraction_out_of_range,
]


def test_the_table_covers_at_least_sixty_bad_inputs_across_every_subcommand():
    assert len(CASES) >= 60 and len({case.__name__ for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(cli, world, case):
    assert_one_line_and_nothing_changed(cli, world, case)


def assert_one_line_and_nothing_changed(cli, world: Path, case) -> str:
    """Run a case of a bad-input table in `world`: exit 2, one error line holding every expected text,
    nothing changed on disk. Returns the line."""
    inputs = world / "inputs"
    inputs.mkdir()
    with pytest.MonkeyPatch.context() as mp:  # what a case patches (a full disk...) ends with the command
        args, expected = case(inputs, mp)
        before = every_path(world)
        result = cli(*args)

    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash the runner caught
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert every_path(world) == before  # nothing changed, nothing new: no run directory, dataset or temp file
    return lines[0]


# --- Ctrl-C and library warnings -------------------------------------------------------------------------

def interrupt_in_epoch(mp, epoch: int) -> None:
    from perceiver_cli.engine.train import Trainer

    real = Trainer._train_epoch

    def train_epoch(self, e):
        if e == epoch:
            raise KeyboardInterrupt
        return real(self, e)
    mp.setattr(Trainer, "_train_epoch", train_epoch)


def test_ctrl_c_after_an_epoch_says_how_to_resume(cli, workdir, monkeypatch):
    interrupt_in_epoch(monkeypatch, 2)
    result = cli("train", *set_args(TINY), "--name", "stopped")
    assert result.exit_code == 130
    assert "perceiver train --resume runs/stopped" in result.stderr and "Traceback" not in result.output
    assert (workdir / "runs" / "stopped" / "checkpoints" / "last.pt").is_file()


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved_and_leaves_no_run(cli, workdir, monkeypatch):
    interrupt_in_epoch(monkeypatch, 1)
    result = cli("train", *set_args(TINY), "--name", "stopped")
    assert result.exit_code == 130
    assert "nothing was saved" in result.stderr and "--resume" not in result.stderr
    assert not (workdir / "runs" / "stopped").exists()


@pytest.mark.parametrize("debug", [False, True])
def test_library_warnings_reach_the_terminal_only_with_debug(cli, digits_run, monkeypatch, debug):
    import warnings

    import perceiver_cli.tasks.classify_eval as evaluate

    real = evaluate.plot_confusion

    def noisy(*args, **kwargs):
        warnings.warn("a library's note to developers", UserWarning)
        return real(*args, **kwargs)
    monkeypatch.setattr(evaluate, "plot_confusion", noisy)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = cli(*(["--debug"] if debug else []), "eval", digits_run)
    assert result.exit_code == 0, result.output
    assert any("note to developers" in str(w.message) for w in shown) == debug

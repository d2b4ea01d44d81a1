"""Nothing of a user's is lost: an export never replaces a folder it did not write, and its swap is
atomic (kills and failing renames leave the old export or the new one, and later exports clean up);
predict never writes over an input or one output over another, names every mask apart, and leaves
nothing when it fails part-way; a real full disk (a small tmpfs, where this machine lets a test mount
one) is one line from every writer: torch.save, safetensors, ONNX, torch.export, PIL, TensorBoard,
numpy, matplotlib."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, set_args, snapshot, write_image_folder
from test_cli import assert_user_error
from test_tasks_cli import SEGMENT, recipe_file

NO_SPACE = "No space left on device"


def dead_pid() -> int:
    """The pid of a process that has ended (a killed export's leftovers are named by theirs)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --- export: only its own folder, swapped in whole -------------------------------------------------------

def test_export_replaces_only_its_own_folder_and_clears_what_killed_exports_left(cli, digits_run):
    assert cli("export", digits_run, "--format", "safetensors").exit_code == 0
    export = digits_run / "export"
    first = snapshot(export)
    # a killed export's temporaries, of a process that is gone, and one of a live process (ours: never touched)
    for name in (f".export.tmp-{dead_pid()}", f".export.old-{dead_pid()}", f".export.tmp-{os.getpid()}x"):
        (digits_run / name).mkdir()
        (digits_run / name / "model.safetensors").write_bytes(b"half")
    result = cli("export", digits_run, "--format", "safetensors")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]
    assert snapshot(export) != first
    assert leftovers(digits_run) == [f".export.tmp-{os.getpid()}x"]  # not a name of ours: left alone


def test_an_export_killed_between_its_two_renames_is_put_back_by_the_next_export(cli, digits_run):
    """Where the file system cannot exchange two names, the old folder is set aside first: a kill
    there leaves no export, only `.export.old-PID`; the next export puts it back, then replaces it."""
    assert cli("export", digits_run, "--format", "safetensors").exit_code == 0
    aside = digits_run / f".export.old-{dead_pid()}"
    (digits_run / "export").rename(aside)
    (digits_run / f".export.tmp-{dead_pid()}").mkdir()
    assert cli("export", digits_run, "--format", "safetensors").exit_code == 0
    assert (digits_run / "export" / "model.safetensors").is_file() and leftovers(digits_run) == []


def test_a_failing_rename_during_the_swap_puts_the_old_export_back(cli, digits_run, monkeypatch):
    import perceiver_cli.data.swap as swap

    assert cli("export", digits_run, "--format", "safetensors").exit_code == 0
    before = snapshot(digits_run / "export")
    real_rename = os.rename

    def rename(source, target, *args, **kwargs):
        if Path(source).name.startswith(".export.tmp-"):  # the new folder into place: the disk fails
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(target))
        return real_rename(source, target, *args, **kwargs)
    monkeypatch.setattr(swap, "exchange", lambda a, b: False)  # the two-rename fallback
    monkeypatch.setattr(swap.os, "rename", rename)
    line = assert_user_error(cli("export", digits_run, "--format", "safetensors"))
    assert "input/output error" in line and "runs/digits/export" in line
    assert snapshot(digits_run / "export") == before and leftovers(digits_run) == []


KILLED_AFTER_THE_EXCHANGE = """
import os, signal, sys
import perceiver_cli.data.swap as swap
real = swap.exchange
def exchange(a, b):
    done = real(a, b)
    os.kill(os.getpid(), signal.SIGKILL)  # the new folder is in place, the old one under the temporary name
swap.exchange = exchange
from perceiver_cli.cli import main
sys.argv = ["perceiver", "export", sys.argv[1], "--format", "safetensors"]
main()
"""


def test_an_export_killed_right_after_its_swap_has_the_new_export_and_the_next_one_clears_up(cli, digits_run):
    from perceiver_cli.data.swap import exchange

    assert cli("export", digits_run, "--format", "safetensors").exit_code == 0
    if not exchange(digits_run / "export", digits_run / "export"):
        pytest.skip("this file system cannot exchange two names (the two-rename fallback is tested above)")
    (digits_run / "export" / "config.json").write_text('{"format": "perceiver-export/1", "old": true}')
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_EXCHANGE, str(digits_run)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -9, killed.stderr
    assert "old" not in json.loads((digits_run / "export" / "config.json").read_text())  # the new export, whole
    assert len(leftovers(digits_run)) == 1  # the old one, under the dead process's name
    assert cli("export", digits_run, "--format", "safetensors").exit_code == 0
    assert leftovers(digits_run) == []


def test_out_through_a_link_keeps_the_link_and_replaces_what_it_points_at(cli, digits_run, workdir):
    assert cli("export", digits_run, "--format", "safetensors", "--out", "shipped/v1").exit_code == 0
    Path("current").symlink_to("shipped/v1")
    before = snapshot(Path("shipped/v1"))
    result = cli("export", digits_run, "--format", "safetensors", "--out", "current")
    assert result.exit_code == 0, result.output
    assert Path("current").is_symlink() and (Path("current") / "model.safetensors").is_file()
    assert snapshot(Path("shipped/v1")) != before and leftovers(workdir) == [] and leftovers(Path("shipped")) == []


# --- predict: outputs never over inputs, masks named apart, nothing left of a failure ---------------------

def images(folder: Path, names: list[str], size: int = 8, mode: str = "L") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    for name in names:
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / name)
    return [folder / name for name in names]


def test_predict_never_writes_an_output_over_an_input_or_another_output(cli, digits_run, workdir):
    inputs = images(workdir / "pics", ["a.png", "b.png"])
    cases = [
        (["--json", str(inputs[0])], ["--json", "a.png", "is one of the inputs"]),
        (["--csv", str(inputs[1])], ["--csv", "b.png", "is one of the inputs"]),
        (["--json", "out.txt", "--csv", "out.txt"], ["--json and --csv", "out.txt"]),
        (["--json", "pics/c.png"], ["pics/c.png", "is one of the inputs"]),  # a name the folder would read
    ]
    for options, expected in cases:
        before = snapshot(workdir)
        line = assert_user_error(cli("predict", digits_run, "pics", *options))
        assert all(text in line for text in expected), (expected, line)
        assert snapshot(workdir) == before and not Path("out.txt").exists()
    # a JSON file kept among the inputs is no input: writing it again is fine
    assert cli("predict", digits_run, "pics", "--json", "pics/predictions.json").exit_code == 0
    assert cli("predict", digits_run, "pics", "--json", "pics/predictions.json").exit_code == 0


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory, cli):
    """A tiny segmentation run (knee-seg 16x16 slices), trained one epoch: its base folder."""
    from test_kneeseg import write_pairs

    base = tmp_path_factory.mktemp("seg_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        source_images, label_maps = write_pairs(base / "pairs")
        assert cli("prepare", "knee-seg", "--images", source_images, "--labels", label_maps, "--size", "16x16",
                   "--split", "0.6,0.2,0.2").exit_code == 0
        result = cli("train", str(recipe_file(base / "seg.yaml", SEGMENT + ["train.epochs=1"])), "--name", "seg")
        assert result.exit_code == 0, result.output
    return base


@pytest.fixture
def seg(seg_run, workdir) -> Path:
    shutil.copytree(seg_run / "runs", workdir / "runs", dirs_exist_ok=True)
    return Path("runs/seg")


def test_masks_of_inputs_whose_names_are_made_safe_alike_are_all_kept(cli, seg, workdir):
    images(workdir / "scans", ["é.png", "ö.png", "a?.png", "a*.png"], size=16)
    images(workdir / "more", ["é.png"], size=16)  # the same file name in another folder
    result = cli("predict", seg, "scans", "more", "--masks", "masks", "--json", "p.json")
    assert result.exit_code == 0, result.output
    rows = json.loads(Path("p.json").read_text())["predictions"]
    written = [row["mask_file"] for row in rows]
    assert len(rows) == 5 and len(set(written)) == 5 and all(Path(name).is_file() for name in written)
    assert sorted(p.name for p in Path("masks").iterdir()) == sorted(Path(name).name for name in written)
    assert "wrote 5 mask PNG(s)" in result.stdout


def test_a_predict_that_fails_part_way_leaves_none_of_its_outputs(cli, seg, workdir):
    images(workdir / "scans", [f"{i}.png" for i in range(5)], size=16)
    # --json in a folder that does not exist: found only after every mask was made
    assert "nowhere" in assert_user_error(cli("predict", seg, "scans", "--masks", "masks", "--json", "nowhere/p.json"))
    assert not Path("masks").exists()
    # a --masks folder of the user's own keeps exactly what it held
    Path("mine").mkdir()
    Path("mine/notes.txt").write_text("keep me")
    before = snapshot(workdir)
    assert_user_error(cli("predict", seg, "scans", "--masks", "mine", "--csv", "nowhere/p.csv"))
    assert snapshot(workdir) == before and sorted(os.listdir("mine")) == ["notes.txt"]


# --- a real full disk -------------------------------------------------------------------------------------

class SmallDisk:
    """A tmpfs of a few MB: `fill()` takes every free byte (a filler file), `free()` gives them back."""

    def __init__(self, root: Path):
        self.root = root
        self.filler = root / ".filler"

    def fill(self) -> None:
        with open(self.filler, "ab", buffering=0) as fh:  # unbuffered: nothing left to fail at close
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def files(self) -> dict:
        return {name: stat for name, stat in snapshot(self.root).items() if name != self.filler.name}

    def available(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize


@pytest.fixture
def small_disk(tmp_path):
    root = tmp_path / "disk"
    root.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(root)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[:120]}")
    try:
        yield SmallDisk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


def assert_full_disk_line(result) -> str:
    line = assert_user_error(result)
    assert NO_SPACE in line and "free some space" in line, line
    return line


def test_a_full_disk_at_the_start_of_training_is_one_line_and_leaves_nothing(cli, workdir, small_disk):
    small_disk.fill()
    runs = small_disk.root / "runs"
    assert_full_disk_line(cli("train", *set_args(TINY + [f"train.runs_dir={runs}"]), "--name", "full"))
    assert small_disk.files() == {}


def test_a_disk_that_fills_at_a_checkpoint_is_one_line_and_the_run_resumes(cli, workdir, small_disk, monkeypatch):
    """torch.save's own zip writer meets the full disk (its RuntimeError wraps the ENOSPC)."""
    from perceiver_cli.runs import checkpoint

    real_save = checkpoint.save

    def save(state, path, hint=""):
        if Path(path).name == "last.pt" and state["epoch"] == 1:  # best.pt of epoch 1 is on disk: then it fills
            small_disk.fill()
        return real_save(state, path, hint)
    monkeypatch.setattr(checkpoint, "save", save)
    runs = small_disk.root / "runs"
    line = assert_full_disk_line(cli("train", *set_args(TINY + [f"train.runs_dir={runs}", "train.tensorboard=true"]),
                                     "--name", "full"))
    assert "last.pt" in line and f"perceiver train --resume {runs / 'full'}" in line
    assert not [name for name in small_disk.files() if ".tmp-" in name]  # no half-written checkpoint
    monkeypatch.setattr(checkpoint, "save", real_save)
    small_disk.free()
    result = cli("train", "--resume", runs / "full")
    assert result.exit_code == 0, result.output
    assert len((runs / "full" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_full_disk_under_tensorboard_is_one_line(cli, workdir, small_disk, monkeypatch):
    from perceiver_cli.engine import callbacks

    real = callbacks.TensorBoard.epoch_end

    def epoch_end(self, trainer, epoch, row, improved):
        small_disk.fill()
        self.writer.add_text("notes", "x" * 200_000, epoch)  # more than the last page the file has
        return real(self, trainer, epoch, row, improved)
    monkeypatch.setattr(callbacks.TensorBoard, "epoch_end", epoch_end)
    runs = small_disk.root / "runs"
    line = assert_full_disk_line(cli("train", *set_args(TINY + [f"train.runs_dir={runs}", "train.tensorboard=true"]),
                                     "--name", "board"))
    assert "events.out.tfevents" in line


@pytest.mark.parametrize("format", ["safetensors", "torch-export"])  # the onnx writer is Python's: as the config's
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(cli, digits_run, small_disk, format):
    small_disk.free()
    with open(small_disk.filler, "wb", buffering=0) as fh:  # room for some of the files, not all of them
        fh.write(b"\0" * (small_disk.available() - 96 * 1024))
    line = assert_full_disk_line(cli("export", digits_run, "--format", format, "--out", small_disk.root / "export"))
    assert str(small_disk.root / "export") in line
    assert small_disk.files() == {}


def test_torch_export_with_a_full_temporary_folder_is_one_line_or_works(cli, digits_run, small_disk, monkeypatch):
    """torch.export's own file writer aborted the whole process (SIGABRT in c10) on a full disk."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(small_disk.root))
    with open(small_disk.filler, "wb", buffering=0) as fh:
        fh.write(b"\0" * (small_disk.available() - 64 * 1024))
    result = cli("export", digits_run, "--format", "torchscript", "--out", "exported")
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert_full_disk_line(result)


def test_predict_eval_prepare_and_report_on_a_full_disk_are_one_line(cli, digits_run, seg, small_disk, workdir, tmp_path):
    small_disk.fill()
    images(workdir / "scans", [f"{i}.png" for i in range(3)], size=16)
    assert_full_disk_line(cli("predict", seg, "scans", "--masks", small_disk.root / "masks"))  # PIL's PNG bytes
    assert_full_disk_line(cli("predict", digits_run, "scans", "--json", small_disk.root / "p.json"))
    source = write_image_folder(tmp_path / "pets", per_class=4)
    line = assert_user_error(cli("prepare", "pets", "--from", source, "--out", small_disk.root / "pets"))
    assert "free some space" in line  # prepare measures what its arrays need first
    small_disk.free()
    shutil.copytree(digits_run, small_disk.root / "run")
    small_disk.fill()
    before = small_disk.files()
    assert_full_disk_line(cli("eval", small_disk.root / "run"))  # JSON and a matplotlib figure
    assert_full_disk_line(cli("report", small_disk.root / "run"))
    assert small_disk.files() == before  # nothing of a failed command is left: the run as it was


def test_a_disk_that_fills_between_two_outputs_leaves_neither(cli, digits_run, small_disk, monkeypatch):
    """eval, report and attention each write a JSON and figures: when the disk fills after the first
    file, the command is one line and none of its files appear (the first is not left alone)."""
    from perceiver_cli.atomic import StagedFiles

    shutil.copytree(digits_run, small_disk.root / "run")
    real_write = StagedFiles.write

    def write(self, path, data, make_folder=False):
        real_write(self, path, data, make_folder)
        small_disk.fill()  # the first file fitted; the next will not
    monkeypatch.setattr(StagedFiles, "write", write)
    for command in (["eval", small_disk.root / "run"], ["report", small_disk.root / "run"],
                    ["attention", small_disk.root / "run", "--checkpoint", "best"]):
        small_disk.free()
        before = {name: stat for name, stat in small_disk.files().items() if not name.startswith("run/attention/epoch_")}
        assert_full_disk_line(cli(*command))
        after = {name: stat for name, stat in small_disk.files().items() if not name.startswith("run/attention/epoch_")}
        assert after == before, (command, set(after) ^ set(before))


# --- names shown as they are ---------------------------------------------------------------------------

def test_file_names_with_markup_or_escape_codes_are_shown_as_they_are(cli, digits_run, workdir):
    names = ["[bold red]x.png", "\x1b[31mred.png"]
    images(workdir / "odd", names)
    result = cli("predict", digits_run, "odd", "--csv", "p.csv")
    assert result.exit_code == 0, result.output
    assert "[bold red]x.png" in result.stdout and "\\x1b[31mred.png" in result.stdout
    assert "\x1b" not in result.output  # no escape code reaches the terminal
    line = assert_user_error(cli("predict", digits_run, "[red]gone[/red]\x07.png"))
    assert "[red]gone[/red]\\x07.png" in line
    runs = workdir / "[bold]runs"
    result = cli("train", *set_args(TINY + [f"train.runs_dir={runs}", "train.epochs=1"]), "--name", "odd")
    assert result.exit_code == 0, result.output
    assert f"run {runs / 'odd'}" in result.output  # the training header names the folder as it is

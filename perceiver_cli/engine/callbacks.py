"""What a run does besides training: every file it writes and what it shows, one callback each.

The Trainer calls its callbacks at a run's moments, on rank 0 only (other ranks get none): the
run starts (or resumes), training starts, an epoch starts, a step ends, a mid-epoch checkpoint is
due, an epoch ends, the run closes. At an epoch's end they run in the order that makes a kill
harmless: the attention capture, TensorBoard, the train.log line, best.pt, last.pt (the commit
point: it carries the metrics rows), the metrics files, and last the display.

A user's own callback (from Python: `Trainer(..., callbacks=[...])`) subclasses Callback and
overrides the moments it cares about; it runs after the default ones.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UserError
from ..runs import checkpoint
from ..runs.files import append_line, write_text, writing
from ..runs.metrics import write_metrics
from .display import TrainingDisplay, format_rate


class Callback:
    def run_start(self, trainer, notes: list[str]) -> None:
        """The run is set up (new or resumed); `notes` say what was chosen and why, for train.log."""

    def fit_start(self, trainer) -> None:
        """Training begins (after the run's summary is printed)."""

    def epoch_start(self, trainer, epoch: int, steps: int) -> None:
        """An epoch of `steps` steps begins (fewer when resumed inside it)."""

    def step_end(self, trainer, stats: tuple[float, float, float] | None) -> None:
        """A step ended; every 10th step brings (loss, accuracy, samples/s) of the epoch so far."""

    def mid_epoch(self, trainer, state: dict) -> None:
        """train.checkpoint_every_steps: `state` holds the weights and the position inside the epoch."""

    def epoch_end(self, trainer, epoch: int, row: dict, improved: bool) -> None:
        """An epoch finished with its metrics `row`; `improved` when train.best_metric got better."""

    def close(self) -> None:
        """The run ends (finished, failed or interrupted): release what is held open."""


def resume_hint(run_dir: Path) -> str:
    """What a failed write's error adds: how to continue, once there is a saved epoch."""
    if any((run_dir / "checkpoints" / name).is_file() for name in ("last.pt", "best.pt")):  # resume reads either
        return f"then continue the run from its last saved epoch: perceiver train --resume {run_dir}"
    return ""


class ConfigFile(Callback):
    """config.yaml: the recipe as the run uses it (with --set and resume overrides applied)."""

    def run_start(self, trainer, notes):
        write_text(trainer.run_dir / "config.yaml", yaml.safe_dump(trainer.recipe.to_dict(), sort_keys=False))


class TrainLog(Callback):
    """train.log: the run's header and choices, one line per epoch, notes on resume."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "train.log"

    def write(self, line: str) -> None:
        append_line(self.path, line, resume_hint(self.path.parent))

    def run_start(self, trainer, notes):
        for line in notes:
            self.write(line)

    def epoch_end(self, trainer, epoch, row, improved):
        self.write(epoch_line(row, trainer.recipe.train.epochs, trainer.task.columns))


class Checkpoints(Callback):
    """checkpoints/best.pt when validation improved, checkpoints/last.pt every epoch and at
    train.checkpoint_every_steps inside one; both atomic and fsynced (runs/checkpoint.py)."""

    def __init__(self, run_dir: Path):
        self.folder = run_dir / "checkpoints"

    def mid_epoch(self, trainer, state):
        checkpoint.save(state, self.folder / "last.pt", resume_hint(trainer.run_dir))

    def epoch_end(self, trainer, epoch, row, improved):
        state = trainer.state(epoch)  # built once, written to one or both files
        if improved:
            checkpoint.save(state, self.folder / "best.pt", resume_hint(trainer.run_dir))
        checkpoint.save(state, self.folder / "last.pt", resume_hint(trainer.run_dir))  # best.pt may be new


class MetricsFiles(Callback):
    """metrics.jsonl and metrics.csv: copies of the rows last.pt carries (resume rewrites them)."""

    def epoch_end(self, trainer, epoch, row, improved):
        write_metrics(trainer.run_dir, trainer.rows, resume_hint(trainer.run_dir))


class TensorBoard(Callback):
    """train.tensorboard: scalars every epoch (and the attention preview, handed over by
    AttentionCapture), in the run directory."""

    TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
            "val_accuracy": "accuracy/val", "lr": "lr", "samples_per_s": "throughput/samples_per_s"}

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                            "(or set train.tensorboard=false)") from None
        self.run_dir = run_dir
        with writing(run_dir, "or set train.tensorboard=false"):
            self.writer = SummaryWriter(log_dir=str(run_dir))

    def add_capture(self, captured, classes: list[str], epoch: int) -> None:
        from .preview import tensorboard_image

        with self._writing():
            self.writer.add_image("attention/stage_0", tensorboard_image(captured, classes), epoch, dataformats="HWC")

    def epoch_end(self, trainer, epoch, row, improved):
        with self._writing():
            for key, value in row.items():
                if key != "epoch" and value == value:  # NaN (no validation data) is left out
                    self.writer.add_scalar(self.TAGS.get(key, key), value, epoch)
            self.writer.flush()

    def _writing(self):
        """TensorBoard writes from a thread of its own and raises what failed there (a full disk) at
        the next add or flush: named as the run's event file."""
        return writing(self.run_dir / "events.out.tfevents.*", resume_hint(self.run_dir))

    def close(self):
        try:
            self.writer.close()
        except OSError:  # the failure was reported where it happened (or the run is ending on another error)
            pass


class AttentionCapture(Callback):
    """Which inputs the latents read, on fixed probe samples, every train.attention_interval epochs
    and at the last: attention/epoch_NNNN.npz (train.save_attention_maps) and/or TensorBoard."""

    def __init__(self, run_dir: Path, probe: tuple, save: bool, board: TensorBoard | None):
        self.folder, self.probe, self.save, self.board = run_dir / "attention", probe, save, board

    def epoch_end(self, trainer, epoch, row, improved):
        t = trainer.recipe.train
        if epoch % t.attention_interval and epoch != t.epochs:
            return
        from . import capture as captures

        captured = captures.capture(trainer.model, *self.probe, trainer.transform, trainer.device, epoch, trainer.bf16)
        if self.save:
            captures.save(captured, self.folder)
        if self.board is not None:
            self.board.add_capture(captured, trainer.dataset.classes, epoch)


class Display(Callback):
    """The progress bar and the growing epoch table (plain lines off a terminal, nothing when quiet)."""

    def __init__(self, epochs: int, quiet: bool, task_columns=()):
        self.display = TrainingDisplay(epochs, quiet=quiet, task_columns=task_columns)
        self.open = False

    def fit_start(self, trainer):
        self.display.rows.extend(trainer.rows)  # a resumed run shows its earlier epochs too
        self.display.__enter__()
        self.open = True

    def epoch_start(self, trainer, epoch, steps):
        self.display.start_epoch(epoch, steps)

    def step_end(self, trainer, stats):
        if stats is None:
            self.display.advance()
        else:
            self.display.step(*stats)

    def epoch_end(self, trainer, epoch, row, improved):
        self.display.end_epoch(row)

    def close(self):
        if self.open:
            self.open = False
            self.display.__exit__(None, None, None)


def default_callbacks(trainer, probe: tuple | None) -> list[Callback]:
    """Rank 0's callbacks for the recipe, in the order they must run (see the module's docstring)."""
    t, run_dir = trainer.recipe.train, trainer.run_dir
    board = TensorBoard(run_dir) if t.tensorboard else None
    callbacks: list[Callback] = []
    if probe is not None:
        callbacks.append(AttentionCapture(run_dir, probe, t.save_attention_maps, board))
    if board is not None:
        callbacks.append(board)
    callbacks += [ConfigFile(), TrainLog(run_dir), Checkpoints(run_dir), MetricsFiles(),
                  Display(t.epochs, trainer.quiet, trainer.task.columns)]
    return callbacks


def epoch_line(row: dict, epochs: int, task_columns=()) -> str:
    """train.log's line of an epoch: the losses, train accuracy where the task has one, and the task's
    validation figures (val_accuracy written val_acc)."""
    keys = ["train_loss", "train_accuracy", "val_loss", *(key for key, _, _ in task_columns)]
    figures = " ".join(f"{key.replace('accuracy', 'acc')} {row[key]:.4f}" for key in keys if key in row)
    return (f"epoch {row['epoch']}/{epochs} {figures} lr {row['lr']:.3e} "
            f"{format_rate(row['samples_per_s'])} samples/s {row['epoch_time_s']:.1f}s")

"""What a run does besides training: every file it writes and what it shows, one callback each.

The Trainer calls its callbacks at a run's moments, on rank 0 only (other ranks get none): the
run starts (or resumes), training starts, an epoch starts, a step ends, a mid-epoch checkpoint is
due, an epoch ends, the run closes. At an epoch's end they run in the order that makes a kill
harmless: the attention capture, TensorBoard and the other trackers of train.loggers (before the
commit: a kill then makes resume redo the epoch, so a tracker may see an epoch twice but never misses
one), the train.log line, best.pt, last.pt (the commit point: it carries the metrics rows), the metrics
files, and last the display.

A user's own callback (from Python: `Trainer(..., callbacks=[...])`) subclasses Callback and
overrides the moments it cares about; it runs after the default ones.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from ..console import err_console
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


class Tracker(Callback):
    """What every experiment tracker of train.loggers gets besides the epoch rows: a point of the
    training curve every 10th step, where the Trainer has summed the epoch's loss over the ranks anyway
    (no extra sync): train/loss, the mean loss of the samples since the previous point, and train/lr,
    the learning rate of the step, at the run's global step. log_step is the tracker's own."""

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def fit_start(self, trainer):
        self._lr = trainer.optimizer.param_groups[0]["lr"]

    def epoch_start(self, trainer, epoch, steps):
        self._before = (epoch - 1) * trainer.steps_per_epoch  # the run's steps before this epoch
        # (summed loss, samples) of the epoch at the previous point; resumed inside an epoch, it is unknown
        self._last = (0.0, 0) if steps == trainer.steps_per_epoch else None

    def step_end(self, trainer, stats):
        lr, self._lr = self._lr, trainer.optimizer.param_groups[0]["lr"]  # stepped already: the next step's
        if stats is None:
            return
        step = trainer.scheduler.last_epoch  # optimizer steps of the run so far (restored on resume)
        # stats[0] is the epoch's mean so far: its batches are full global batches, the last one shorter
        seen = min((step - self._before) * trainer.recipe.train.batch_size, trainer.train_count)
        total = stats[0] * seen
        if self._last is not None and seen > self._last[1]:
            self.log_step(step, {"train/loss": (total - self._last[0]) / (seen - self._last[1]), "train/lr": float(lr)})
        self._last = (total, seen)


def _flat(config: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 2}} -> {"train.epochs": 2}: the recipe as a tracker's params."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _figures(row: dict) -> dict:
    """An epoch row's figures, NaN (no validation data) left out."""
    return {key: value for key, value in row.items() if key != "epoch" and value == value}


class TensorBoard(Tracker):
    """train.tensorboard (or tensorboard in train.loggers): scalars every epoch and train/loss, train/lr
    every 10 steps (Tracker), and the attention preview, handed over by AttentionCapture, in the run
    directory."""

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

        self.add_image("attention/stage_0", tensorboard_image(captured, classes), epoch)

    def add_image(self, tag: str, image, epoch: int) -> None:
        with self._writing():
            self.writer.add_image(tag, image, epoch, dataformats="HWC")

    def log_step(self, step, scalars):
        with self._writing():
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)

    def epoch_end(self, trainer, epoch, row, improved):
        with self._writing():
            for key, value in _figures(row).items():
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


class MLflow(Tracker):
    """mlflow in train.loggers: a run in the file store runs/<name>/mlruns (`mlflow ui --backend-store-uri
    runs/<name>/mlruns`), or in MLFLOW_TRACKING_URI's when set, experiment MLFLOW_EXPERIMENT_NAME
    (default perceiver). Params: the recipe, flattened; metrics: train/loss and train/lr by step, each
    epoch's row by epoch; tags: the run directory (a resumed run continues its MLflow run) and the best
    checkpoint."""

    def __init__(self, run_dir: Path):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (run_dir / "mlruns").resolve().as_uri()
            # MLflow 3 refuses a file store unless asked: this one is the run's own, local and small
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client, self.run_id, self.finished = MlflowClient(uri), None, False
        self.pending = []  # the queued writes, waited for at each epoch's end

    def run_start(self, trainer, notes):
        from mlflow.entities import Param

        c, name = self.client, os.environ.get("MLFLOW_EXPERIMENT_NAME", "perceiver")
        experiment = c.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else c.create_experiment(name)
        where = str(trainer.run_dir.resolve())
        earlier = (c.search_runs([experiment_id], f"tags.`perceiver.run_dir` = '{where}'", max_results=1)
                   if trainer.resumed and "'" not in where else [])
        if earlier:  # its params stay: MLflow refuses to change one, and config.yaml has the resumed recipe
            self.run_id = earlier[0].info.run_id
            c.update_run(self.run_id, "RUNNING")
            return
        self.run_id = c.create_run(experiment_id, run_name=trainer.run_dir.name,
                                   tags={"perceiver.run_dir": where}).info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in _flat(trainer.recipe.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            c.log_batch(self.run_id, params=params[start:start + 100])

    def log_step(self, step, scalars):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # queued and written by MLflow's own thread: a remote tracking server does not hold up the step
        self.pending.append(self.client.log_batch(
            self.run_id, metrics=[Metric(key, value, now, step) for key, value in scalars.items()], synchronous=False))

    def epoch_end(self, trainer, epoch, row, improved):
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        tags = [RunTag("best_checkpoint", str((trainer.run_dir / "checkpoints" / "best.pt").resolve())),
                RunTag("best_epoch", str(epoch))] if improved else []
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, epoch) for key, value in _figures(row).items()],
                              tags=tags)
        self._wait()  # a store that fails is named at the epoch it failed in
        self.finished = epoch == trainer.recipe.train.epochs

    def _wait(self):
        pending, self.pending = self.pending, []
        for operations in pending:
            operations.wait()

    def close(self):
        run_id, self.run_id = self.run_id, None
        if run_id is None:
            return
        try:  # the epochs are written (each end waited for them): a store failing now must not hide the run's end
            self._wait()
            self.client.set_terminated(run_id, "FINISHED" if self.finished else "FAILED")
        except Exception as exc:
            err_console.print(f"note: mlflow run {run_id} not marked ended: {str(exc).splitlines()[0][:200]}",
                              highlight=False, soft_wrap=True)


class WandB(Tracker):
    """wandb in train.loggers: a W&B run in runs/<name>/wandb, offline unless WANDB_MODE says otherwise
    (`wandb sync runs/<name>/wandb/offline-run-*` uploads it), project WANDB_PROJECT (default perceiver).
    Config: the recipe; history: train/loss and train/lr by step, each epoch's row as epoch/<key>
    (charted by epoch); summary: the best checkpoint. A resumed run continues its W&B run (its id)."""

    def __init__(self, run_dir: Path):
        import wandb

        self.wandb, self.run, self.finished = wandb, None, False

    def run_start(self, trainer, notes):
        folders = sorted((trainer.run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("-")[-2])
        earlier = folders[-1].name.rsplit("-", 1)[1] if trainer.resumed and folders else None
        settings = {"silent": True} if trainer.quiet else {}
        if "WANDB_CONSOLE" not in os.environ:
            settings["console"] = "off"  # the progress display is no log; train.log is the run's
        if "WANDB_QUIET" not in os.environ:
            settings["quiet"] = True  # its run summary at the end would repeat the epoch table
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "perceiver"), name=trainer.run_dir.name,
                                   dir=str(trainer.run_dir), mode=os.environ.get("WANDB_MODE", "offline"),
                                   config=trainer.recipe.to_dict(), id=earlier, resume="allow" if earlier else None,
                                   settings=self.wandb.Settings(**settings))
        self.run.define_metric("epoch/*", step_metric="epoch")

    def log_step(self, step, scalars):
        self.run.log(scalars, step=step)

    def epoch_end(self, trainer, epoch, row, improved):
        figures = {f"epoch/{key}": value for key, value in _figures(row).items()}
        self.run.log({"epoch": epoch, **figures}, step=trainer.scheduler.last_epoch)
        if improved:
            self.run.summary.update({"best_checkpoint": str((trainer.run_dir / "checkpoints" / "best.pt").resolve()),
                                     "best_epoch": epoch})
        self.finished = epoch == trainer.recipe.train.epochs

    def close(self):
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=0 if self.finished else 1)


# train.loggers name -> (the module it imports, the callback)
TRACKERS = {"tensorboard": ("tensorboard", TensorBoard), "mlflow": ("mlflow", MLflow), "wandb": ("wandb", WandB)}


def _require(name: str, tensorboard_flag: bool) -> None:
    """A selected tracker's package, imported before anything is written: one line when it is missing."""
    import importlib

    try:
        importlib.import_module(TRACKERS[name][0])
    except ImportError:
        if name == "tensorboard" and tensorboard_flag:
            raise UserError("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                            "(or set train.tensorboard=false)") from None
        raise UserError(f"train.loggers: {name} needs its package: pip install 'perceiver-cli[{name}]' "
                        f"(or take {name} out of train.loggers)") from None


class AttentionCapture(Callback):
    """Which inputs the latents read, on fixed probe samples, every train.attention_interval epochs
    and at the last: attention/epoch_NNNN.npz (train.save_attention_maps) and/or TensorBoard, which
    also gets the task's own images of those samples (segmentation: image | truth | prediction)."""

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
            for tag, image in trainer.task.epoch_images(trainer.model, *self.probe).items():
                self.board.add_image(tag, image, epoch)


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
    names = t.trackers()
    for name in names:  # every package first: a missing one is named before any tracker writes
        _require(name, t.tensorboard)
    board = TensorBoard(run_dir) if "tensorboard" in names else None
    callbacks: list[Callback] = []
    if probe is not None:
        callbacks.append(AttentionCapture(run_dir, probe, t.save_attention_maps, board))
    if board is not None:
        callbacks.append(board)
    callbacks += [TRACKERS[name][1](run_dir) for name in names if name != "tensorboard"]
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

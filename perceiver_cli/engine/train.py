"""The training loop: one engine for CPU and CUDA.

The whole dataset sits on the device as stored (uint8 images); each step indexes a batch, turns
it into floats, augments it there and runs forward/backward under optional bf16 autocast. Every
epoch ends with validation, a metrics row and atomic checkpoints (last.pt, and best.pt when
validation improved), so an interrupted run resumes from its last finished epoch.

What an epoch writes, in order: the attention capture, its train.log line, best.pt, last.pt (the
commit point: it carries the metrics rows), metrics.jsonl/csv. A kill before last.pt is renamed
redoes the epoch on resume, and rewrites the same capture; a kill after it loses nothing, since
resume rewrites the metrics files from last.pt. A run that fails before its first epoch is saved
leaves no run directory.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from ..data import prepared
from ..data.augment import augment_images, augment_points, mix, subsample_points
from ..data.splits import split_train_val
from ..errors import UserError
from ..model import build_model, count_parameters
from ..recipe import Recipe, apply_override, overridden_keys, recipe_from_dict
from ..runs import checkpoint
from ..runs.directory import create_run_dir
from ..runs.files import append_line, remove_stale_temporaries, write_text
from ..runs.metrics import restored_rows, sync_metrics, write_metrics
from .display import TrainingDisplay, format_rate
from .graphs import training_forward
from .optim import build_optimizer, build_scheduler
from .runtime import (InputTransform, as_tensor, autocast, keep_freed_memory, loss_and_accuracy, predict,
                      resolve_device, use_bf16)


@dataclass
class TrainResult:
    run_dir: Path
    rows: list[dict]
    best: dict | None
    parameters: int
    device: str
    bf16: bool


class Trainer:
    def __init__(self, recipe: Recipe, dataset: prepared.PreparedDataset, run_dir: Path,
                 resume_state: dict | None = None, quiet: bool = False, device: str | None = None):
        self.recipe, self.dataset, self.run_dir, self.quiet = recipe, dataset, run_dir, quiet
        t = recipe.train
        self.device = resolve_device(device or t.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.bf16 = use_bf16(t.precision, self.device)
        torch.manual_seed(t.seed)

        (train_x, train_y), (val_x, val_y) = split_train_val(dataset, recipe.data.val_fraction, t.seed)
        if len(train_y) == 0:
            raise UserError(f"dataset '{dataset.name}' has an empty train split")
        self.train_x, self.train_y = as_tensor(train_x, self.device), as_tensor(train_y, self.device)
        self.val_x, self.val_y = as_tensor(val_x, self.device), as_tensor(val_y, self.device)
        self.transform = InputTransform(dataset.input_spec, dataset.normalization, self.device, recipe.data)
        self.input_kind = dataset.input_spec["kind"]

        self.model = build_model(recipe.model, dataset.input_spec, len(dataset.classes)).to(self.device)
        self.model.activation_checkpointing = t.activation_checkpointing
        self.parameters = count_parameters(self.model)
        self.steps_per_epoch = math.ceil(len(self.train_y) / t.batch_size)
        self.optimizer = build_optimizer(self.model, recipe.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, recipe.optim, t.epochs, self.steps_per_epoch)
        self.forward = training_forward(self.model, t, self.device, self.bf16)
        self.ema = None  # the averaged weights (torch's AveragedModel: a copy of the model)
        if t.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=False)

        self.start_epoch, self.best, self.rows = 1, None, []
        self.resumed = resume_state is not None
        if self.resumed:
            self._restore(resume_state)
        self.probe = None  # the fixed samples whose attention is captured
        if t.save_attention_maps or t.tensorboard:
            from .capture import probe_samples
            x, y = (val_x, val_y) if len(val_y) else (train_x, train_y)
            self.probe = probe_samples(x, y, t.attention_samples, t.seed)
        self.tensorboard = _tensorboard_writer(run_dir) if t.tensorboard else None

    # --- state ------------------------------------------------------------------------------------

    def _restore(self, state: dict) -> None:
        if state["classes"] != list(self.dataset.classes):
            raise UserError(
                f"checkpoint was trained on classes {state['classes'][:5]}... of '{state['dataset']}', "
                f"the data has {len(self.dataset.classes)} classes {self.dataset.classes[:5]}...: they do not match"
            )
        try:
            self.model.load_state_dict(state.get("training_model", state["model"]))
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None and "training_model" in state:
                self.ema.module.load_state_dict(state["model"])
                self.ema.n_averaged.fill_(state["ema_updates"])
        except (RuntimeError, ValueError) as exc:
            raise UserError(
                f"{self.run_dir}: the checkpoint does not fit this model ({str(exc).splitlines()[0][:120]}); "
                f"resume keeps the architecture: override only train.* or optim.* keys"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = state["epoch"] + 1
        self.best = state.get("best")
        self.rows = restored_rows(state, self.run_dir)

    def evaluated_model(self):
        """What validation and the checkpoints' "model" hold: the averaged weights when kept."""
        return self.ema.module if self.ema is not None else self.model

    def state(self, epoch: int) -> dict:
        extra = {}
        if self.ema is not None:  # resume needs the weights being trained as well as the average
            extra = {"training_model": self.model.state_dict(), "ema_updates": int(self.ema.n_averaged)}
        return {
            "format": "perceiver-checkpoint/1",
            "model": self.evaluated_model().state_dict(),
            **extra,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best": self.best,
            "metrics": [dict(row) for row in self.rows],  # every epoch's row: the files are copies of these
            "config": self.recipe.to_dict(),
            "dataset": self.dataset.name,
            "classes": list(self.dataset.classes),
            "input_spec": self.dataset.input_spec,
            "normalization": self.dataset.normalization,
        }

    # --- loop -------------------------------------------------------------------------------------

    def _batches(self, epoch: int):
        """Shuffled index batches; the order depends only on (seed, epoch), so a resumed run
        sees the same batches it would have seen."""
        generator = torch.Generator().manual_seed(self.recipe.train.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_y), generator=generator).to(self.device)
        return order.split(self.recipe.train.batch_size), generator

    def training_inputs(self, stored: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A stored batch -> augmented model inputs. Images are augmented as uint8 (a crop is
        indexing); point clouds after scaling, so scale/jitter amounts mean the same for any data."""
        data = self.recipe.data
        if self.input_kind == "image":
            return self.transform(augment_images(stored, data.augment, generator))
        if self.input_kind == "points":
            if data.num_points:
                stored = subsample_points(stored, data.num_points, generator)
            return augment_points(self.transform(stored), data.augment, generator)
        return self.transform(stored)

    def _train_epoch(self, epoch: int, display: TrainingDisplay) -> dict:
        t = self.recipe.train
        torch.manual_seed(t.seed * 100_003 + epoch)  # dropout stream, reproducible on resume
        batches, generator = self._batches(epoch)
        self.model.train()
        display.start_epoch(epoch, len(batches))
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, start = 0, time.perf_counter()
        for step, index in enumerate(batches):
            x, y = self.training_inputs(self.train_x[index], generator), self.train_y[index]
            x, partner, weight = mix(x, self.recipe.data.augment.mixup, generator)
            with autocast(self.device, self.bf16):
                logits = self.forward(x)
            loss = self._loss(logits.float(), y, partner, weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.recipe.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if step % 10 == 0 or step == len(batches) - 1:  # a sync every 10 steps, not every step
                loss_now = loss_sum.item() / seen
                if not math.isfinite(loss_now):
                    self._diverged(epoch)
                display.step(loss_now, correct.item() / seen, seen / (time.perf_counter() - start))
            else:
                display.advance()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            self._diverged(epoch)
        return {"train_loss": train_loss, "train_accuracy": correct.item() / seen,
                "samples_per_s": seen / elapsed, "epoch_time_s": elapsed}

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, partner, weight: float) -> torch.Tensor:
        """Cross-entropy; with mixup, weighted between the labels of the two mixed samples."""
        smoothing = self.recipe.optim.label_smoothing
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        if partner is None:
            return loss
        return weight * loss + (1 - weight) * F.cross_entropy(logits, y[partner], label_smoothing=smoothing)

    def _diverged(self, epoch: int):
        saved = self.run_dir / "checkpoints" / "last.pt"
        kept = (f"; {saved} keeps the last finished epoch" if saved.exists() else
                "" if self.resumed else f"; no epoch had finished, so {self.run_dir} is removed")
        raise UserError(
            f"training diverged in epoch {epoch} (loss is not finite): lower optim.lr, add optim.warmup_epochs "
            f"or optim.grad_clip{kept}"
        )

    def _validate(self) -> tuple[float, float]:
        if len(self.val_y) == 0:
            return float("nan"), float("nan")
        t = self.recipe.train
        model = self.ema.module if self.ema is not None else self.forward  # forward: compiled when asked
        logits = predict(model, self.val_x, self.transform, t.eval_batch_size, self.bf16, self.device)
        return loss_and_accuracy(logits, self.val_y)

    def _improved(self, row: dict) -> bool:
        key = self.recipe.train.best_metric
        if key == "last":
            return True
        value = row[key]
        if value != value:  # no validation data: the latest epoch is the best we know
            return True
        if self.best is None:
            return True
        return value > self.best["value"] if key == "val_accuracy" else value < self.best["value"]

    def fit(self) -> TrainResult:
        try:
            return self._fit()
        except BaseException:  # Ctrl-C included: a new run with no saved epoch leaves nothing behind
            self._close()
            if not self.resumed and not any((self.run_dir / "checkpoints").glob("*.pt")):
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def _fit(self) -> TrainResult:
        t = self.recipe.train
        started = time.perf_counter() - (self.rows[-1]["elapsed_s"] if self.rows else 0.0)
        with TrainingDisplay(t.epochs, quiet=self.quiet) as display:
            display.rows.extend(self.rows)
            for epoch in range(self.start_epoch, t.epochs + 1):
                row = {"epoch": epoch, **self._train_epoch(epoch, display)}
                row["val_loss"], row["val_accuracy"] = self._validate()
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                row["elapsed_s"] = time.perf_counter() - started
                row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
                self.rows.append(row)
                improved = self._improved(row)
                if improved:
                    value = row[t.best_metric] if t.best_metric != "last" else epoch
                    self.best = {"epoch": epoch, "metric": t.best_metric, "value": value}
                self._after_epoch(epoch, row)
                self._log(_epoch_line(row, t.epochs))
                state = self.state(epoch)  # built once, written to one or both files
                hint = self._resume_hint()
                if improved:
                    checkpoint.save(state, self.run_dir / "checkpoints" / "best.pt", hint)
                checkpoint.save(state, self.run_dir / "checkpoints" / "last.pt", hint)
                write_metrics(self.run_dir, self.rows, hint)
                display.end_epoch(row)
        self._close()
        return TrainResult(self.run_dir, self.rows, self.best, self.parameters, str(self.device), self.bf16)

    def _resume_hint(self) -> str:
        if (self.run_dir / "checkpoints" / "last.pt").is_file():
            return f"then continue the run from its last saved epoch: perceiver train --resume {self.run_dir}"
        return ""

    def _close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def _after_epoch(self, epoch: int, row: dict) -> None:
        """Attention capture at the interval, TensorBoard scalars every epoch."""
        t = self.recipe.train
        if self.probe is not None and (epoch % t.attention_interval == 0 or epoch == t.epochs):
            from . import capture as captures

            captured = captures.capture(self.model, *self.probe, self.transform, self.device, epoch, self.bf16)
            if t.save_attention_maps:
                captures.save(captured, self.run_dir / "attention")
            if self.tensorboard is not None:
                from .preview import tensorboard_image

                self.tensorboard.add_image("attention/stage_0", tensorboard_image(captured, self.dataset.classes),
                                           epoch, dataformats="HWC")
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "epoch" and value == value:
                    self.tensorboard.add_scalar(_TENSORBOARD_TAGS.get(key, key), value, epoch)
            self.tensorboard.flush()

    def _log(self, line: str) -> None:
        append_line(self.run_dir / "train.log", line, self._resume_hint())


_TENSORBOARD_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
                     "val_accuracy": "accuracy/val", "lr": "lr", "samples_per_s": "throughput/samples_per_s"}


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                        "(or set train.tensorboard=false)") from None
    return SummaryWriter(log_dir=str(run_dir))


def _epoch_line(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.4f} train_acc {row['train_accuracy']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} lr {row['lr']:.3e} "
            f"{format_rate(row['samples_per_s'])} samples/s {row['epoch_time_s']:.1f}s")


def start_run(recipe: Recipe, recipe_path: Path, dataset: prepared.PreparedDataset, quiet: bool = False,
              device: str | None = None) -> Trainer:
    """A new run directory with config.yaml and the header of train.log, and its Trainer."""
    name = recipe.train.name or recipe_path.stem
    run_dir = create_run_dir(Path(recipe.train.runs_dir), name)
    try:
        trainer = Trainer(recipe, dataset, run_dir, quiet=quiet, device=device)
        write_text(run_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        trainer._log(
            f"recipe {recipe_path} dataset {dataset.name} ({len(trainer.train_y)} train / {len(trainer.val_y)} val) "
            f"parameters {trainer.parameters} device {trainer.device} bf16 {trainer.bf16}"
        )
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # just made by create_run_dir: all in it is ours
        raise
    return trainer


def resume_run(run_dir: Path, dataset_loader, overrides: list[str] = (), quiet: bool = False,
               device: str | None = None) -> Trainer:
    """Continue runs/<name> from checkpoints/last.pt (best.pt if last.pt is damaged) with the config
    stored in it; first clear what killed writes left and restore metrics.jsonl/csv from it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: not a run directory (runs/<name>, holding checkpoints/last.pt)")
    loaded = checkpoint.load_run(run_dir, prefer="last")
    state = loaded.state
    remove_stale_temporaries(run_dir)
    if "metrics" in state:
        sync_metrics(run_dir, restored_rows(state, run_dir))
    config = state["config"]
    for assignment in overrides:
        apply_override(config, assignment)
    recipe = recipe_from_dict(config, source=f"{run_dir} (resumed)", overridden=overridden_keys(overrides))
    if state["epoch"] >= recipe.train.epochs:
        raise UserError(f"{run_dir} already finished {state['epoch']} of {recipe.train.epochs} epochs; "
                        f"extend it with --set train.epochs=N")
    dataset = dataset_loader(recipe.data)
    trainer = Trainer(recipe, dataset, run_dir, resume_state=state, quiet=quiet, device=device)
    write_text(run_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    if loaded.note:
        trainer._log(f"note: {loaded.note}")
    trainer._log(f"resumed at epoch {trainer.start_epoch}")
    loaded.tell()
    return trainer


def describe(trainer: Trainer) -> str:
    n_train, n_val = len(trainer.train_y), len(trainer.val_y)
    precision = "bf16 autocast" if trainer.bf16 else "fp32"
    return (f"[bold]{trainer.dataset.name}[/] {n_train:,} train / {n_val:,} val · {trainer.parameters:,} parameters · "
            f"{trainer.device} {precision} · run [cyan]{trainer.run_dir}[/]")


"""The training loop: one engine for CPU and CUDA, one rank or many.

The Trainer keeps the step loop, validation and the epoch row. Batches come from a Loader
(data/loaders.py: resident on the device, or streamed from memory maps; the same global batches
for any residency and world size), process groups and reductions from a DistContext (dist.py;
one process is world size 1), the step itself from TrainStep (step.py). Every file the run writes
and what it shows are callbacks (callbacks.py) that run on rank 0, at an epoch's end in the order
that makes a kill harmless: the attention capture, its train.log line, best.pt, last.pt (the
commit point: it carries the metrics rows), metrics.jsonl/csv. A kill before last.pt is renamed
redoes the epoch on resume (or its rest, from a mid-epoch last.pt); a kill after it loses nothing,
since resume rewrites the metrics files from last.pt. A run that fails before its first epoch is
saved leaves no run directory, and one killed then leaves nothing a rerun or --resume cannot take
over. A run directory is locked (rank 0 holds it) for as long as a training uses it.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..console import err_console, visible
from ..data import prepared
from ..data.loaders import rank_part
from ..errors import UserError
from ..recipe import Recipe, apply_override, load_recipe, overridden_keys, recipe_from_dict
from ..runs import checkpoint
from ..runs.directory import RunLock, create_run_dir, empty_run_dir, has_checkpoint, lock_run, remove_unsaved
from ..runs.files import remove_stale_temporaries
from ..runs.metrics import restored_rows, sync_metrics
from ..tasks import take
from .build import build_run
from .callbacks import Callback, default_callbacks
from .dist import (DistContext, forget_restart_run, is_rank_zero, launched_by_torchrun, launcher_holds, note_restart_run,
                   remove_dead_markers, restarted_run)
from .runtime import resolve_device, run_model


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
                 resume_state: dict | None = None, quiet: bool = False, device: str | None = None,
                 dist: DistContext | None = None, callbacks: list[Callback] = ()):
        self.recipe, self.dataset, self.run_dir = recipe, dataset, run_dir
        self.run_lock: RunLock | None = None  # rank 0's hold on run_dir (start_run / resume_run), freed when fit ends
        self.dist = dist or DistContext()
        self.quiet = quiet or not self.dist.is_main  # only rank 0 shows progress
        device = self.dist.device if dist is not None else resolve_device(device or recipe.train.device)
        parts = build_run(recipe, dataset, device, self.dist, fresh=resume_state is None)
        self.parts = parts  # the run's pieces (build.py); the names below are the loop's
        self.device, self.bf16, self.task, self.transform = parts.device, parts.bf16, parts.task, parts.transform
        self.train_data, self.val_data = parts.train_data, parts.val_data
        self.train_count, self.val_count = parts.train_count, parts.val_count
        self.residency, self.residency_reason = parts.residency, parts.residency_reason
        self.model, self.local_forward, self.forward, self.ema = parts.model, parts.local_forward, parts.forward, parts.ema
        self.optimizer, self.scheduler, self.step = parts.optimizer, parts.scheduler, parts.step
        self.parameters, self.steps_per_epoch = parts.parameters, parts.steps_per_epoch
        self.init_note, self.graphs_note = parts.init_note, parts.graphs_note

        self.start_epoch, self.best, self.rows, self.position = 1, None, [], None
        self.checkpoint_every = recipe.train.checkpoint_every_steps or (100 if launched_by_torchrun() else None)
        self.resumed = resume_state is not None
        if self.resumed:
            self._restore(resume_state)
        # every file the run writes, and what it shows, is a callback's job, on rank 0 only
        self.callbacks: list[Callback] = []
        if self.dist.is_main:
            self.callbacks = default_callbacks(self, parts.probe()) + list(callbacks)

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
        position = state.get("position")  # written inside an epoch (train.checkpoint_every_steps)
        self.position = position if position and position["epoch"] == self.start_epoch else None
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
            "target": getattr(self.dataset, "target", None) or {"kind": "class"},
            "input_spec": self.dataset.input_spec,
            "normalization": self.dataset.normalization,
            # how prepare made the samples (size, slices, point sampling): predict reads new files the same way
            "source": dict(getattr(self.dataset, "source", None) or {}),
        }

    # --- loop -------------------------------------------------------------------------------------

    def _emit(self, moment: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, moment)(self, *args)

    def begin(self, notes: list[str]) -> None:
        """The run is set up: the callbacks write config.yaml and `notes` (with the choices made for
        the user, and why) to train.log."""
        notes = list(notes) + [f"data: {self.residency_reason}"]
        notes += [note for note in (self.graphs_note, self.init_note) if note]
        self._emit("run_start", notes)

    def _train_epoch(self, epoch: int) -> dict:
        t, rank, world = self.recipe.train, self.dist.rank, self.dist.world
        torch.manual_seed(t.seed * 100_003 + epoch + 1_000_003 * rank)  # dropout: per rank, reproducible on resume
        position, self.position = self.position, None
        batches = self.train_data.epoch(epoch, start_step=position["step"] if position else 0)
        generator = batches.generator  # drew the order; the augmentation draws on from it
        # this rank's sums (loss, correct, samples); _totals adds them over the ranks
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        if position:  # continue inside the epoch exactly where the checkpoint was written
            generator.set_state(position["generator"])
            self._restore_random_state(position["random"])
            if self.dist.is_main:
                sums += torch.tensor(position["sums"], device=self.device, dtype=torch.float64)
        first, total = (position["step"] if position else 0), self.train_data.steps_per_epoch
        self.model.train()
        self._emit("epoch_start", epoch, len(batches))
        start = time.perf_counter()
        with batches:
            for step, (stored, y, _) in enumerate(batches, start=first):
                inputs, target = self.task.train_batch(stored, y, generator)  # the global batch, augmented
                part = rank_part(len(y), rank, world)
                loss_sum, metric = self.step(take(inputs, part), take(target, part), part.stop - part.start,
                                             global_count=len(y))
                sums[:2] += torch.stack([loss_sum.double(), metric])
                sums[2] += part.stop - part.start  # a scalar argument: no tensor made and copied each step
                if step % 10 == 0 or step == total - 1:  # a sync every 10 steps, not every step
                    loss_now, accuracy_now, seen = self._totals(sums)
                    if not math.isfinite(loss_now):
                        self._diverged(epoch)
                    self._emit("step_end", (loss_now, accuracy_now if self.task.metric else None,
                                            seen / (time.perf_counter() - start)))
                else:
                    self._emit("step_end", None)
                if self.checkpoint_every and (step + 1) % self.checkpoint_every == 0 and step + 1 < total:
                    self._save_position(epoch, step + 1, sums, generator)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        train_loss, train_metric, seen = self._totals(sums)
        if not math.isfinite(train_loss):
            self._diverged(epoch)
        row = {"train_loss": train_loss}
        if self.task.metric:
            row[f"train_{self.task.metric}"] = train_metric
        return {**row, "samples_per_s": seen / elapsed, "epoch_time_s": elapsed}

    def _save_position(self, epoch: int, step: int, sums: torch.Tensor, generator: torch.Generator) -> None:
        """last.pt inside an epoch: the weights after `step` steps, and all a resumed epoch needs to see
        exactly the batches it had left: the step, the augmentation generator, every rank's dropout
        stream and the epoch's sums so far (over all ranks)."""
        totals = self.dist.sum(sums.clone()).tolist()
        streams = self.dist.gather(self._random_state())
        if not self.dist.is_main:
            return
        state = self.state(epoch - 1)
        state["position"] = {"epoch": epoch, "step": step, "generator": generator.get_state(), "sums": totals,
                             "random": streams}
        self._emit("mid_epoch", state)

    def _random_state(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _restore_random_state(self, streams: list) -> None:
        """This rank's dropout stream as it was; on another number of ranks there is no such stream,
        and the seeded one of the epoch stays (the batches and augmentation are still the same)."""
        if len(streams) != self.dist.world:
            return
        mine = streams[self.dist.rank]
        torch.set_rng_state(mine["cpu"])
        if "cuda" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], self.device)

    def _totals(self, sums: torch.Tensor) -> tuple[float, float, int]:
        """(mean loss, accuracy, samples) so far in the epoch, over all ranks."""
        loss, correct, seen = self.dist.sum(sums.clone()).tolist()
        return loss / seen, correct / seen, int(seen)

    def _diverged(self, epoch: int):
        saved = self.run_dir / "checkpoints" / "last.pt"
        kept = (f"; {saved} keeps the last finished epoch" if saved.exists() else
                "" if self.resumed else f"; no epoch had finished, so {self.run_dir} is removed")
        raise UserError(
            f"training diverged in epoch {epoch} (loss is not finite): lower optim.lr, add optim.warmup_epochs "
            f"or optim.grad_clip{kept}"
        )

    def _validate(self) -> dict:
        """The task's validation figures (val_loss, ...): each rank its shard, the sums added over ranks."""
        if self.val_count == 0:
            return self.task.empty_row()
        model = self.ema.module if self.ema is not None else self.local_forward  # compiled when asked
        sums = torch.zeros(self.task.eval_size(), device=self.device, dtype=torch.float64)
        with self.val_data.in_order(self.recipe.train.eval_batch_size) as batches:
            for output, target in run_model(model, batches, lambda batch: self.task.eval_batch(*batch), self.bf16,
                                            self.device):
                sums += self.task.eval_sums(output, target)
        return self.task.eval_row(self.dist.sum(sums).cpu(), self.val_count)

    def _improved(self, row: dict) -> bool:
        key = self.recipe.train.best_metric
        if key == "last":
            return True
        value = row[key]
        if value != value:  # no validation data: the latest epoch is the best we know
            return True
        if self.best is None:
            return True
        return value < self.best["value"] if self.task.best_metrics[key] == "min" else value > self.best["value"]

    def fit(self) -> TrainResult:
        try:
            result = self._fit()
            self.dist.barrier()  # rank 0's last writes are done before any rank reports
            if self.dist.is_main:  # finished: no restart of this job will look for it
                forget_restart_run(self.recipe.train.runs_dir)
            return result
        except BaseException:  # Ctrl-C included: a new run with no saved epoch leaves nothing behind
            self._close()
            if self.dist.is_main and not self.resumed:
                remove_unsaved(self.run_dir)  # while still locked: no other run can have started in it
            raise
        finally:
            self.dist.close()
            if self.run_lock is not None:
                self.run_lock.release()

    def _fit(self) -> TrainResult:
        t = self.recipe.train
        started = time.perf_counter() - (self.rows[-1]["elapsed_s"] if self.rows else 0.0)
        self._emit("fit_start")
        for epoch in range(self.start_epoch, t.epochs + 1):
            row = {"epoch": epoch, **self._train_epoch(epoch), **self._validate()}
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["elapsed_s"] = time.perf_counter() - started
            row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
            self.rows.append(row)
            improved = self._improved(row)
            if improved:
                value = row[t.best_metric] if t.best_metric != "last" else epoch
                self.best = {"epoch": epoch, "metric": t.best_metric, "value": value}
            self._emit("epoch_end", epoch, row, improved)  # rank 0: capture, log, best.pt, last.pt, metrics
        self._close()
        return TrainResult(self.run_dir, self.rows, self.best, self.parameters, str(self.device), self.bf16)

    def _close(self) -> None:
        callbacks, self.callbacks = self.callbacks, []  # closed once, even when closing fails
        for callback in callbacks:
            callback.close()


def earlier_attempt(recipe: Recipe) -> Path | None:
    """The run an earlier attempt of this torchrun job wrote, when torchrun (--max-restarts) has
    restarted the job after a rank died: the same command then resumes it instead of starting anew.
    One that saved nothing is not resumed: start_run takes its directory over, so the run keeps its name."""
    run_dir = restarted_run(recipe.train.runs_dir)
    return run_dir if run_dir is not None and has_checkpoint(run_dir) else None


def start_run(recipe: Recipe, recipe_path: Path, dataset: prepared.PreparedDataset, quiet: bool = False,
              device: str | None = None, callbacks: list[Callback] = ()) -> Trainer:
    """A new run directory (create_run_dir: runs/<name>, or what a run killed before its first saved
    epoch left there), locked, with config.yaml and the header of train.log, and its Trainer. Under
    torchrun this process is one rank: rank 0 makes the directory and every rank trains into it."""
    dist, _ = DistContext.start(resolve_device(device or recipe.train.device))
    name = recipe.train.name or recipe_path.stem
    run_dir, lock = None, None
    if dist.is_main:
        run_dir, lock = create_run_dir(Path(recipe.train.runs_dir), name)
    run_dir = Path(dist.share(str(run_dir) if dist.is_main else None))
    return _start_in(run_dir, lock, recipe, recipe_path, dataset, dist, quiet, callbacks)


def _start_in(run_dir: Path, lock: RunLock | None, recipe: Recipe, recipe_path: Path,
              dataset: prepared.PreparedDataset, dist: DistContext, quiet: bool, callbacks, notes=()) -> Trainer:
    """The Trainer of `recipe` from its first epoch in `run_dir` (empty, held by rank 0's `lock`)."""
    try:
        trainer = Trainer(recipe, dataset, run_dir, quiet=quiet, dist=dist, callbacks=callbacks)
        trainer.run_lock = lock
        if dist.is_main:
            remove_dead_markers(recipe.train.runs_dir)
            note_restart_run(recipe.train.runs_dir, run_dir)
        trainer.begin([
            f"recipe {recipe_path} dataset {dataset.name} ({trainer.train_count} train / {trainer.val_count} val) "
            f"parameters {trainer.parameters} device {trainer.device} bf16 {trainer.bf16} world {dist.world}",
            *notes,
        ])
    except BaseException:
        if dist.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)  # made or emptied for this run: all in it is ours
        if lock is not None:
            lock.release()
        dist.close()
        raise
    return trainer


def hold_run(run_dir: Path) -> RunLock | None:
    """The lock of a run to resume, taken before anything in it is read or changed: one line naming the
    live training that holds it. Rank 0 (or one process) holds it; None on the other ranks, and an empty
    hold on the ranks of a `--devices` launcher that holds it for them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: not a run directory (runs/<name>, holding checkpoints/last.pt)")
    if not is_rank_zero():
        return None
    return RunLock() if launcher_holds(run_dir) else lock_run(run_dir)


def resume_run(run_dir: Path, dataset_loader, overrides: list[str] = (), quiet: bool = False,
               device: str | None = None, callbacks: list[Callback] = ()) -> Trainer:
    """Continue runs/<name> from checkpoints/last.pt (best.pt if last.pt is damaged) with the config
    stored in it; first clear what killed writes left and restore metrics.jsonl/csv from it. The
    global batch and the batch order are the run's, so it may come back on another number of ranks.
    A run that saved no checkpoint (stopped before its first epoch) starts afresh from its config.yaml."""
    run_dir = Path(run_dir)
    lock = hold_run(run_dir)
    try:
        if not has_checkpoint(run_dir):
            return _resume_afresh(run_dir, lock, dataset_loader, overrides, quiet, device, callbacks)
        trainer = _resume(run_dir, dataset_loader, overrides, quiet, device, callbacks)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.run_lock = lock
    return trainer


def _resume(run_dir: Path, dataset_loader, overrides, quiet, device, callbacks) -> Trainer:
    loaded = checkpoint.load_run(run_dir, prefer="last")
    state = loaded.state
    config = state["config"]
    for assignment in overrides:
        apply_override(config, assignment)
    recipe = recipe_from_dict(config, source=f"{run_dir} (resumed)", overridden=overridden_keys(overrides))
    dist, _ = DistContext.start(resolve_device(device or recipe.train.device))
    try:
        if dist.is_main:
            remove_stale_temporaries(run_dir)
            remove_dead_markers(recipe.train.runs_dir)
            if "metrics" in state:
                sync_metrics(run_dir, restored_rows(state, run_dir))
        if state["epoch"] >= recipe.train.epochs:
            raise UserError(f"{run_dir} already finished {state['epoch']} of {recipe.train.epochs} epochs; "
                            f"extend it with --set train.epochs=N")
        dataset = dataset_loader(recipe.data)
        trainer = Trainer(recipe, dataset, run_dir, resume_state=state, quiet=quiet, dist=dist, callbacks=callbacks)
    except BaseException:
        dist.close()
        raise
    trainer.begin(([f"note: {loaded.note}"] if loaded.note else [])
                  + [f"resumed at epoch {trainer.start_epoch} (world {dist.world})"])
    if dist.is_main:
        loaded.tell()
    return trainer


def _resume_afresh(run_dir: Path, lock: RunLock | None, dataset_loader, overrides, quiet, device, callbacks) -> Trainer:
    """--resume of a run killed before its first epoch was saved: nothing to continue, so its recipe
    (config.yaml) starts again in its directory, with a note that says so."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"--resume {run_dir}: no checkpoint and no config.yaml, so nothing to resume; run the "
                        f"training command again (it takes the name {run_dir.name} over)")
    recipe, _ = load_recipe(config, overrides)
    note = f"{run_dir} has no checkpoint (it stopped before its first epoch was saved): starting it afresh"
    dist, _ = DistContext.start(resolve_device(device or recipe.train.device))
    try:
        dataset = dataset_loader(recipe.data)
        if dist.is_main:
            empty_run_dir(run_dir)
            err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    except BaseException:
        dist.close()
        raise
    return _start_in(run_dir, lock, recipe, config, dataset, dist, quiet, callbacks, [f"note: {note}"])


def describe(trainer: Trainer) -> str:
    precision = "bf16 autocast" if trainer.bf16 else "fp32"
    ranks = f" × {trainer.dist.world} ranks ({trainer.dist.backend})" if trainer.dist.world > 1 else ""
    return (f"[bold]{visible(trainer.dataset.name)}[/] {trainer.train_count:,} train / {trainer.val_count:,} val · "
            f"{trainer.parameters:,} parameters · {trainer.device}{ranks} {precision} · run [cyan]{visible(trainer.run_dir)}[/]")


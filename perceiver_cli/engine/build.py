"""A run's parts, built from its recipe and dataset in the order they depend on each other: where it
runs (device, precision, seeds), which samples it trains and validates on and where they live
(loaders), the task and its model (train.init weights), the optimiser and schedule, the forward
(compiled or graphed, wrapped for DDP), the weight average (EMA) and the step. The Trainer (train.py)
then only runs the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data import prepared
from ..data.loaders import choose_residency, make_loader, rank_batch_size
from ..data.splits import split_train_val_rows
from ..errors import UserError
from ..model import count_parameters
from ..recipe import Recipe
from ..tasks import Task, build_task
from .dist import DistContext
from .graphs import training_forward
from .optim import build_optimizer, build_scheduler
from .runtime import InputTransform, keep_freed_memory, use_bf16
from .step import TrainStep


@dataclass
class RunParts:
    device: torch.device
    bf16: bool
    task: Task
    transform: InputTransform
    train_data: object  # data/loaders.py Loader
    val_data: object
    train_count: int
    val_count: int
    residency: str
    residency_reason: str
    model: torch.nn.Module
    local_forward: object  # the model, compiled or graphed
    forward: object  # ... wrapped for DDP
    ema: object  # torch's AveragedModel, or None
    optimizer: torch.optim.Optimizer
    scheduler: object
    step: TrainStep
    parameters: int
    steps_per_epoch: int
    init_note: str | None
    graphs_note: str | None
    probe: object  # () -> the fixed samples whose attention is captured, or None


def build_run(recipe: Recipe, dataset: prepared.PreparedDataset, device: torch.device, dist: DistContext,
              fresh: bool = True) -> RunParts:
    """Everything a Trainer runs; `fresh`: a new run (train.init applies), not a resumed one."""
    t = recipe.train
    if device.type == "cpu":
        keep_freed_memory()
    bf16 = use_bf16(t.precision, device)
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    rank_batch = rank_batch_size(t.batch_size, dist.world)
    if t.grad_accum > rank_batch:
        raise UserError(f"train.grad_accum={t.grad_accum} splits each rank's {rank_batch} samples into more "
                        f"passes than samples; lower train.grad_accum or raise train.batch_size")

    (train_x, train_y, train_rows), (val_x, val_y, val_rows) = split_train_val_rows(dataset, recipe.data.val_fraction, t.seed)
    train_count = len(train_y) if train_rows is None else len(train_rows)
    val_count = len(val_y) if val_rows is None else len(val_rows)
    if train_count == 0:
        raise UserError(f"dataset '{dataset.name}' has an empty train split")
    nbytes = _bytes(train_x, train_rows) + _bytes(val_x, val_rows)
    residency, residency_reason = choose_residency(recipe.data.residency, nbytes, device)
    # training batches are global (every rank augments the whole batch the same way, then takes
    # its part), so the inputs never depend on the world size; validation is sharded
    train_data = make_loader(residency, train_x, train_y, t.batch_size, t.seed, device, rows=train_rows)
    val_data = make_loader(residency, val_x, val_y, t.eval_batch_size, t.seed, device, dist.rank, dist.world,
                           rows=val_rows)
    transform = InputTransform(dataset.input_spec, dataset.normalization, device, recipe.data)
    task = build_task(recipe, dataset, transform)

    model = task.build_model()
    init_note = None
    if t.init and fresh:  # start from another run's weights (matched by name)
        from ..runs.trained import init_weights
        count, left = init_weights(model, t.init)
        init_note = (f"init: {count} tensors from {t.init}; {len(left)} left as initialised"
                     + (f" ({', '.join(sorted({n.split('.')[0] for n in left}))})" if left else ""))
    model = model.to(device)
    model.activation_checkpointing = t.activation_checkpointing
    steps_per_epoch = math.ceil(train_count / t.batch_size)
    optimizer = build_optimizer(model, recipe.optim, device)
    scheduler = build_scheduler(optimizer, recipe.optim, t.epochs, steps_per_epoch)
    # compile (or graph) first, then wrap for DDP, as nanoGPT does; a captured backward would skip
    # DDP's gradient all-reduce, so several ranks train without CUDA graphs
    graphs_note = None
    if dist.world > 1 and t.cuda_graphs and device.type == "cuda":
        t = t.model_copy(update={"cuda_graphs": False})
        graphs_note = "CUDA graphs off: a captured backward would skip DDP's gradient all-reduce"
    local_forward = training_forward(model, t, device, bf16)
    forward = dist.wrap(local_forward, device)
    ema = None  # the averaged weights (torch's AveragedModel: a copy of the model)
    if t.ema_decay:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=False)
    step = TrainStep(forward, model.parameters(), optimizer, scheduler, ema, loss=task.loss, optim_config=recipe.optim,
                     device=device, bf16=bf16, grad_accum=t.grad_accum, world=dist.world, ema_source=model)

    def probe():
        """The fixed samples whose attention is captured (a few validation samples per class), or None."""
        if not (t.save_attention_maps or "tensorboard" in t.trackers()):
            return None
        from .capture import probe_samples
        x, y, rows = (val_x, val_y, val_rows) if val_count else (train_x, train_y, train_rows)
        x, y = (x, y) if rows is None else (x[rows], y[rows])
        return probe_samples(x, y, t.attention_samples, t.seed)

    return RunParts(device, bf16, task, transform, train_data, val_data, train_count, val_count, residency,
                    residency_reason, model, local_forward, forward, ema, optimizer, scheduler, step,
                    count_parameters(model), steps_per_epoch, init_note, graphs_note, probe)


def _bytes(array, rows) -> int:
    """The bytes of `array`'s samples at `rows` (all when None), without reading them."""
    return array.nbytes if rows is None else array.nbytes // max(len(array), 1) * len(rows)

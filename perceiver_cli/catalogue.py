"""The shipped recipes as a user browses them (`perceiver recipes`), and a recipe's model built
without training it: `perceiver_cli.create_model`, and `perceiver train --dry-run`, which also reads
the data and prices one step (FLOPs per sample, memory)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .errors import UserError
from .model import count_parameters
from .recipe import RECIPES_DIR, Recipe, load_recipe
from .tasks import get_task


def shipped() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml"))


def header(path: Path) -> tuple[str, str]:
    """(what the recipe is: the first sentence of its opening comment, what it reaches: its
    '# reaches:' line, or '' where nothing was measured)."""
    comment, reaches = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.lower().startswith("reaches:"):
            reaches = text.split(":", 1)[1].strip()
        elif not reaches:
            comment.append(text)
    first = re.split(r"(?<!al)(?<![Ss]ec)\. ", " ".join(comment))[0].split(": perceiver prepare")[0]  # not at "et al. "
    return first.rstrip(".") + ("." if first else ""), reaches


def model_for(recipe: Recipe, meta: bool = False) -> torch.nn.Module:
    """The recipe's model for its dataset's inputs (from the prepared manifest, else the reader's
    default shape), freshly initialised; `meta`: shapes only, no memory (to count parameters)."""
    from .data.shapes import ShapesOnly, input_of

    known = input_of(recipe.data)
    if known is None:
        raise UserError(f"data.dataset={recipe.data.dataset}: its input shape is not known until it is prepared; "
                        f"run `perceiver prepare imagefolder --from <folder> --name {recipe.data.dataset}` first")
    spec, classes = known
    dataset = ShapesOnly.numbered(recipe.data.dataset, spec, classes, target={"kind": "mask"})
    task = get_task(recipe.task.name)(recipe, dataset, None)
    if meta:
        with torch.device("meta"):
            return task.build_model()
    return task.build_model()


def catalogue() -> list[dict]:
    """One row per shipped recipe: name, dataset, task, parameters, what it is, what it reaches."""
    rows = []
    for path in shipped():
        recipe, _ = load_recipe(path)
        try:
            parameters = count_parameters(model_for(recipe, meta=True))
        except UserError:
            parameters = None
        summary, reaches = header(path)
        rows.append({"name": path.stem, "dataset": recipe.data.dataset, "task": recipe.task.name,
                     "parameters": parameters, "summary": summary, "reaches": reaches})
    return rows


def dry_run(recipe: Recipe, dataset, device: str | None = None) -> dict:
    """What `perceiver train` would build, built and priced without training: the data read and split,
    the model, optimiser and loaders made as a run makes them, then one batch's first samples run
    forward and backward (FLOPs counted by torch, the tensors kept for backward weighed) and one
    optimiser step (its state weighed). Nothing is written."""
    from torch.utils.flop_counter import FlopCounterMode

    from .engine.build import build_run
    from .engine.dist import DistContext
    from .engine.runtime import autocast, resolve_device
    from .tasks import take

    chosen = resolve_device(device or recipe.train.device)
    # priced on the eager model: torch.compile and CUDA graphs change how a step runs, not its FLOPs or
    # what it keeps for backward, and compiling would make a look at the recipe take minutes
    skipped = [key for key, applies in (("compile", True), ("cuda_graphs", chosen.type == "cuda"))
               if applies and getattr(recipe.train, key)]
    eager = recipe.model_copy(update={"train": recipe.train.model_copy(update={"compile": False, "cuda_graphs": False})})
    parts = build_run(eager, dataset, chosen, DistContext(device=chosen))
    batches = parts.train_data.epoch(0)
    with batches:
        stored, y, _ = next(iter(batches))
        inputs, target = parts.task.train_batch(stored, y, batches.generator)
    parts.model.train()
    weights_at = {p.untyped_storage().data_ptr() for p in parts.model.parameters()}

    def step_on(count: int) -> tuple[float, int]:
        """(forward FLOPs, bytes kept for backward) of a step on the batch's first `count` samples."""
        saved = {}  # storage -> bytes: a tensor saved by several operations (or as views) weighs once

        def keep(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights_at:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor
        counter = FlopCounterMode(display=False)  # the forward's; the backward runs after it closes
        with counter, torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), autocast(chosen, parts.bf16):
            output = parts.local_forward(*take(inputs, slice(0, count)))
        loss, _ = parts.task.loss(output, take(target, slice(0, count)))
        loss.backward()
        return counter.get_total_flops(), sum(saved.values())

    # one sample and two: what grows with the batch, apart from what does not (position tables)
    flops, one = step_on(1)
    two = step_on(2)[1] if len(y) > 1 else 2 * one
    parts.optimizer.step()
    batch = recipe.train.batch_size // max(recipe.train.grad_accum, 1)
    activations = max(2 * one - two, 0) + (two - one) * batch
    weights = sum(p.numel() * p.element_size() for p in parts.model.parameters())
    state = sum(v.numel() * v.element_size() for s in parts.optimizer.state.values() for v in s.values()
                if torch.is_tensor(v))
    return {
        "recipe": recipe, "dataset": dataset.name, "train": parts.train_count, "val": parts.val_count,
        "task": recipe.task.name, "device": str(chosen), "precision": "bf16 autocast" if parts.bf16 else "fp32",
        "residency": parts.residency, "parameters": parts.parameters, "steps_per_epoch": parts.steps_per_epoch,
        "not_applied": [f"train.{key}" for key in skipped],  # what the run will do that the dry run did not
        "forward_flops_per_sample": flops,
        "memory": {"weights": weights, "gradients": weights, "optimizer_state": state,
                   "activations": activations, "batch": batch, "total": 2 * weights + state + activations},
    }

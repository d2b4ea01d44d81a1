"""`perceiver train`: a recipe (or a run to resume) in, a run directory out."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..console import info, is_quiet
from ..errors import UserError
from . import tables
from .errors import on_interrupt, user_errors
from .options import Device


@user_errors("train")
def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe YAML file, or the name of a shipped one (e.g. cifar10_cpu).  \\[default: recipes/digits.yaml]"),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe value, e.g. --set optim.lr=5e-4 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue runs/<name> from its last finished epoch (the recipe stored in it is used; --set still applies)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name.  \\[default: the recipe's file name]"),
    device: Optional[Device] = typer.Option(None, "--device", help="Force the device.  \\[default: train.device of the recipe, auto]"),
    print_config: bool = typer.Option(False, "--print-config", help="Print the fully resolved recipe (its bases, --set and every default applied) as YAML, and exit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read the data and build the model, optimiser and loaders as training would, price one step (parameters, FLOPs per sample, memory), and exit without training."),
    devices: int = typer.Option(1, "--devices", min=1, help="Train on this many GPUs of this machine (or CPU processes with --device cpu), as ranks started through torch.distributed.run; train.batch_size stays the global batch. Under torchrun, leave it out: the process is already one rank."),
):
    """Train a Perceiver from a recipe into runs/<name>/ (config, metrics, checkpoints, log)."""
    from ..data.sources import load_for_recipe
    from ..engine.dist import end_with_launcher
    from ..engine.train import describe, earlier_attempt, resume_run, start_run
    from ..recipe import load_recipe

    end_with_launcher()  # a rank of torchrun dies with it, from the start (its data may take a while to load)

    def training_data(data_config):  # memory-mapped: resident or streamed as data.residency decides
        return load_for_recipe(data_config, mmap=True)

    device_name = device.value if device else None
    if print_config or dry_run:
        _look_without_training(recipe, overrides, resume, device_name, print_config, dry_run)
        return
    if devices > 1:
        _start_ranks(devices, recipe, overrides, resume, name, device_name)
    if resume is not None:
        if recipe is not None:
            raise UserError("give either a RECIPE or --resume RUN_DIR, not both (a resumed run keeps its own recipe)")
        trainer = resume_run(resume, training_data, overrides, quiet=is_quiet(), device=device_name)
    else:
        loaded, path = load_recipe(recipe, overrides)
        if name is not None:
            loaded.train.name = name
        earlier = earlier_attempt(loaded)  # torchrun restarted this job: continue the run it was writing
        if earlier is not None:
            trainer = resume_run(earlier, training_data, quiet=is_quiet(), device=device_name)
        else:
            trainer = start_run(loaded, path, training_data(loaded.data), quiet=is_quiet(), device=device_name)
    if not trainer.dist.is_main:  # rank 0 speaks for all ranks
        trainer.fit()
        return
    on_interrupt(lambda: _how_to_continue(trainer.run_dir))
    info(describe(trainer), soft_wrap=True)
    tables.trained(trainer.fit())


def _look_without_training(recipe, overrides, resume, device_name, print_config: bool, dry_run: bool) -> None:
    """--print-config / --dry-run: the recipe as training would see it, and (dry run) its parts built."""
    from ..recipe import load_recipe, resolved_yaml

    if resume is not None:
        flag = "--print-config" if print_config else "--dry-run"
        raise UserError(f"{flag} looks at a recipe, not a run to resume: a run's recipe is {resume}/config.yaml "
                        f"(give the RECIPE instead of --resume to check it)")
    loaded, path = load_recipe(recipe, overrides)
    if print_config:
        tables.resolved_recipe(resolved_yaml(loaded))
    if dry_run:
        from ..catalogue import dry_run as price
        from ..data.sources import load_for_recipe
        tables.dry_run(price(loaded, load_for_recipe(loaded.data, mmap=True), device_name), path)


def _start_ranks(devices: int, recipe, overrides, resume, name, device_name) -> None:
    """`--devices N`: this same command as N ranks (rank 0 prints and writes), then exit with their code."""
    import torch

    from ..console import is_quiet
    from ..engine.dist import launched_by_torchrun, run_ranks
    from ..engine.train import hold_run
    from .errors import is_debug

    if launched_by_torchrun():
        raise UserError(f"--devices {devices}: this process is already one rank of torchrun; leave --devices out "
                        f"(torchrun's --nproc-per-node sets the number of ranks)")
    if device_name != "cpu" and torch.cuda.is_available() and devices > torch.cuda.device_count():
        raise UserError(f"--devices {devices}: this machine has {torch.cuda.device_count()} GPU(s); ask for at most that many")
    if device_name != "cpu" and not torch.cuda.is_available():
        raise UserError(f"--devices {devices}: no CUDA device is visible; add --device cpu to train {devices} CPU "
                        f"processes (gloo), or run on a machine with GPUs")
    argv = (["--quiet"] if is_quiet() else []) + (["--debug"] if is_debug() else []) + ["train"]
    argv += [recipe] if recipe else []
    for assignment in overrides:
        argv += ["--set", assignment]
    argv += (["--resume", str(resume)] if resume else []) + (["--name", name] if name else [])
    argv += ["--device", device_name] if device_name else []
    lock = hold_run(resume) if resume is not None else None  # held here while the ranks run: they die with us
    try:
        code = run_ranks(devices, argv, locked_run=resume)
    finally:
        if lock is not None:
            lock.release()
    raise typer.Exit(code)


def _how_to_continue(run_dir: Path) -> str:
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return f"interrupted: {run_dir} keeps its last finished epoch; continue with `perceiver train --resume {run_dir}`"
    return "interrupted before the first epoch finished: nothing was saved to resume; run the command again"

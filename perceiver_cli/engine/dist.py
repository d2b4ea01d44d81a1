"""Processes training together: torch.distributed's process group, read from torchrun's environment.

One process is world size 1: every reduction is then the identity, so the training loop has one code
path. Under `torchrun` (or `perceiver train --devices N`, which starts it) RANK, WORLD_SIZE and
LOCAL_RANK are set: NCCL joins the ranks on CUDA (each on its LOCAL_RANK GPU), gloo on a CPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: one process, no group
    device: torch.device | None = None  # where this rank trains

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, creates the run directory and writes every file of the run."""
        return self.rank == 0

    @classmethod
    def start(cls, device: torch.device) -> tuple[DistContext, torch.device]:
        """Join the process group torchrun describes (or none), and the device this rank trains on."""
        if not launched_by_torchrun():
            return cls(device=device), device
        rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise UserError(f"rank {rank}: LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are "
                                f"visible here; start at most that many processes per node (--nproc-per-node)")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            # a rank that crashed is noticed by torchrun, which stops the others; the timeout is the backstop
            timeout = timedelta(minutes=30)
            # torchrun's store outlives a restart (--max-restarts): keys of this attempt's own, or the new
            # ranks may read a dead rank's address from the attempt before and fail to connect
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=rank == 0 and not agent_store, timeout=timeout)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(backend, store=dist.PrefixStore(f"perceiver/attempt-{attempt}", store),
                                    rank=rank, world_size=world, timeout=timeout)
        return cls(rank, world, local, backend, device), device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model as the ranks train it: DistributedDataParallel (gradients averaged across ranks in
        the backward) when there are several, the model itself when there is one."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks (in place; the identity for one process)."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any: one rank's reason to stop stops them all, no hang."""
        if self.world == 1:
            return flag
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        return bool(self.sum(torch.tensor(float(flag), device=device)).item() > 0)

    def share(self, value):
        """Rank 0's `value` (any picklable object of ours: a run directory's name), on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list | None:
        """Every rank's `value` (picklable), as a list on rank 0; None on the others."""
        if self.world == 1:
            return [value]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.backend is not None and dist.is_initialized():
            dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (what checkpoints, EMA and captures use)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def run_ranks(count: int, argv: list[str]) -> int:
    """Start `count` ranks of `python -m perceiver_cli ARGV` on this machine through torch.distributed.run
    (torchrun's own machinery: a local rendezvous, one process per rank) and wait for them; their exit code.
    Rank 0 prints as one process would. When a rank fails, torchrun stops the others, and its error line
    is shown once: rank 0's, or another rank's (with its number) when rank 0 did not say it."""
    import logging
    import tempfile
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default for its ranks, without its warning
    with tempfile.TemporaryDirectory(prefix="perceiver-ranks-") as logs:
        # every rank's stderr to a file (stdout stays live: rank 0's progress), replayed below
        args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={count}", "--log-dir", logs,
                                             "--redirects", "2", "--module", "perceiver_cli", *argv])
        for name in list(logging.Logger.manager.loggerDict):  # torchrun's notes are for its own users
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)

        def said(rank: int) -> list[str]:
            return [line for path in Path(logs).rglob(f"{rank}/stderr.log")
                    for line in path.read_text(errors="replace").splitlines() if line.strip()]
        try:
            run(args)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
            first = said(0)
            for line in first:
                print(line, file=sys.stderr)
            theirs = said(rank) if rank != 0 else []
            if theirs and theirs[-1] not in first:
                print(f"rank {rank}: {theirs[-1]}", file=sys.stderr)
            elif not first and not theirs:
                print(f"error: rank {rank} exited with code {code}", file=sys.stderr)
            return code
        for line in said(0):
            print(line, file=sys.stderr)
    return 0

"""Processes training together: torch.distributed's process group, read from torchrun's environment.

One process is world size 1: every reduction is then the identity, so the training loop has one code
path. Under `torchrun` (or `perceiver train --devices N`, which starts it) RANK, WORLD_SIZE and
LOCAL_RANK are set: NCCL joins the ranks on CUDA (each on its LOCAL_RANK GPU), gloo on a CPU.

A rank dies with the process that started it (end_with_launcher), and a job torchrun may restart
notes in runs/.torchrun-<job> which run it writes, for the restarted ranks to resume.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..atomic import process_alive
from ..errors import UserError
from ..runs.files import write_json

LAUNCHER_PID = "PERCEIVER_LAUNCHER_PID"  # set by run_ranks: the process its ranks die with
LOCKED_RUN = "PERCEIVER_LOCKED_RUN"  # set by run_ranks: the run directory its caller holds locked for the ranks


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def is_rank_zero() -> bool:
    """Rank 0 (or one process), known before the process group is joined."""
    return not launched_by_torchrun() or int(os.environ["RANK"]) == 0


def launcher_holds(run_dir: Path) -> bool:
    """Whether the `--devices` launcher that started this rank holds `run_dir`'s lock for it."""
    held = os.environ.get(LOCKED_RUN)
    return launched_by_torchrun() and held is not None and Path(held) == Path(run_dir).resolve()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_ended_with_launcher = []  # asked for already (the early call in `perceiver train`, then DistContext.start)


def end_with_launcher() -> None:
    """Make this rank die (SIGKILL) when the process that started it dies, kill -9 included: torchrun
    starts every rank in a session of its own, so an orphan would train on, or wait at a rendezvous
    for the 30-minute timeout. Linux: the kernel's parent-death signal; elsewhere a watching thread."""
    if not launched_by_torchrun() or _ended_with_launcher:
        return
    _ended_with_launcher.append(True)
    parent = int(os.environ.get(LAUNCHER_PID, os.getppid()))
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        import threading
        import time

        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the launcher died before the signal was asked for: none will come
        os.kill(os.getpid(), signal.SIGKILL)


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
        end_with_launcher()  # before the rendezvous, which waits for ranks that may never come
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


# --- torchrun --max-restarts: which run a restarted job resumes ------------------------------------

def restart_marker(runs_dir: str) -> Path | None:
    """runs/.torchrun-<job id>, when torchrun may restart this job (--max-restarts): which run directory
    the job writes, for its restarted ranks to find. A job that is never restarted (`--devices N`) has none."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if not launched_by_torchrun() or not job or int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) == 0:
        return None
    return Path(runs_dir) / f".torchrun-{job}"


def note_restart_run(runs_dir: str, run_dir: Path) -> None:
    """Rank 0: the marker names the run and torchrun's own process (this rank's parent), so that a later
    run can remove the markers of jobs whose torchrun was killed."""
    marker = restart_marker(runs_dir)
    if marker is not None:
        write_json(marker, {"run": Path(run_dir).name, "host": socket.gethostname(), "pid": os.getppid()})


def restarted_run(runs_dir: str) -> Path | None:
    """The run directory an earlier attempt of this torchrun job wrote, when this is a restart."""
    marker = restart_marker(runs_dir)
    if marker is None or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        return None
    try:
        return marker.parent / json.loads(marker.read_text())["run"]
    except (OSError, ValueError, KeyError, TypeError):  # none, or an older version's: start anew
        return None


def forget_restart_run(runs_dir: str) -> None:
    """Rank 0, the job done: no restart will look for its run."""
    marker = restart_marker(runs_dir)
    if marker is not None:
        marker.unlink(missing_ok=True)


def remove_dead_markers(runs_dir: str) -> None:
    """Delete the markers of jobs on this machine whose torchrun is gone (killed: no rank forgot its
    marker), and those of an older version (a plain name, no pid)."""
    for path in Path(runs_dir).glob(".torchrun-*"):
        try:
            mark = json.loads(path.read_text())
            dead = mark["host"] == socket.gethostname() and not process_alive(int(mark["pid"]))
        except (ValueError, KeyError, TypeError):
            dead = True
        except OSError:  # removed meanwhile, or unreadable: not ours to judge
            continue
        if dead:
            path.unlink(missing_ok=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (what checkpoints, EMA and captures use)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def run_ranks(count: int, argv: list[str], locked_run: Path | None = None) -> int:
    """Start `count` ranks of `python -m perceiver_cli ARGV` on this machine through torch.distributed.run
    (torchrun's own machinery: a local rendezvous, one process per rank) and wait for them; their exit code.
    Rank 0 prints as one process would. When a rank fails, torchrun stops the others, and its error line
    is shown once: rank 0's, or another rank's (with its number) when rank 0 did not say it. The ranks
    die with this process, and leave the lock of `locked_run` (held by the caller) to it."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default for its ranks, without its warning
    ours = {LAUNCHER_PID: str(os.getpid())}  # the ranks inherit this environment
    if locked_run is not None:
        ours[LOCKED_RUN] = str(Path(locked_run).resolve())
    os.environ.update(ours)
    try:
        return _run(count, argv)
    finally:
        for key in ours:
            os.environ.pop(key, None)


def _run(count: int, argv: list[str]) -> int:
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

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

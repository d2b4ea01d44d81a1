"""Checkpoints: written atomically (temp file, fsync, rename), read with `weights_only=True` so that
loading one never runs code from the file. A run directory whose preferred checkpoint is damaged
(cut short by a power cut where the disk never got it) is read from its other one, with a note."""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_writer
from ..console import err_console
from ..errors import UserError
from .files import writing
from .schema import check_checkpoint


def save(state: dict, path: Path, hint: str = "") -> None:
    path = Path(path)
    with writing(path, hint):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:  # fsynced, then renamed: the old file or the new one, never half
            torch.save(state, fh)


PICKLED = ("holds pickled Python objects, which are never loaded because loading them can run code{here}; re-save "
           "it with perceiver train, or, if you trust the file, load it yourself with torch.load(path, "
           "weights_only=False) and save its tensors")
# the global torch's weights_only loader refused, as its messages name it
REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER: a legacy torch file's first pickle
TORCH_OWN = ("torch.", "collections.OrderedDict")  # what a legacy torch file of tensors imports
SCANNED_BYTES = 1 << 24  # a legacy file's pickles come first; the raw tensor bytes after them are not pickles


def unreadable_reason(exc: Exception, path: Path) -> str:
    """Why torch.load refused a file, in our words (its own message runs to a page of advice)."""
    if zipfile.is_zipfile(path):  # torch's own format: its loader names the global it refused
        refused = REFUSED_GLOBAL.search(str(exc))
        if refused:
            return PICKLED.format(here=f" (here {refused.group(1)})")
    else:  # a raw pickle, or torch's legacy format: its pickles read with pickletools, which runs nothing
        foreign = pickled_objects(path)
        if foreign is not None:
            return PICKLED.format(here=f" (here {foreign})" if foreign else "")
    reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
    if reason.startswith("Weights only load failed"):  # the start of torch's page of advice: nothing to add
        return "is damaged or cut short"
    return f"is damaged or cut short ({reason})"


def pickled_objects(path: Path) -> str | None:
    """For a file that is not a torch zip: the first Python object (module.name) that its whole pickles
    would build and that is not torch's own, '' for a raw pickle without one; None when the file holds
    no whole pickle, or only what a legacy torch file does (then it is damaged, not foreign)."""
    try:
        with open(path, "rb") as fh:
            data = io.BytesIO(fh.read(SCANNED_BYTES))
    except OSError:
        return None
    pickles = []
    while data.tell() < len(data.getbuffer()):
        try:
            pickles.append(_one_pickle(data))
        except Exception:  # no whole pickle from here on (raw tensor bytes, or a cut): those before count
            break
    if not pickles:
        return None
    foreign = [name for found in pickles for name in found if isinstance(name, str) and not name.startswith(TORCH_OWN)]
    if foreign:
        return foreign[0]
    return None if pickles[0] == [LEGACY_MAGIC] else ""


def _one_pickle(data: io.BytesIO) -> list:
    """The globals (module.name) that the next pickle in `data` imports, or [n] for a pickle of the
    integer n alone; parsed by pickletools.genops, never run."""
    start = data.tell()
    pickletools.dis(data, out=io.StringIO())  # raises unless this is a whole, consistent pickle (random bytes are not)
    data.seek(start)
    found, pushed, memo = [], [], {}
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            found.append(arg.replace(" ", "."))
        elif name == "STACK_GLOBAL":  # its module and name are the two values pushed last
            found.append(".".join(str(value) for value in pushed[-2:]))
        elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):  # memoized: fetched by index below
            memo[len(memo) if name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif isinstance(arg, (str, int)) and name not in ("PROTO", "FRAME"):
            pushed.append(arg)
    return found or (pushed if len(pushed) == 1 and isinstance(pushed[0], int) else [])


def load(path: Path, mmap: bool = False) -> dict:
    """A checkpoint's state, checked against runs/schema.py (`mmap`: tensors mapped from the file, for
    readers that only want the rest)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # corrupt, truncated, or holding objects that weights_only refuses
        raise UserError(f"{path}: not a readable perceiver checkpoint: it {unreadable_reason(exc, path)}") from None
    check_checkpoint(state, path)
    return state


def find(run_or_checkpoint: Path, prefer: str = "best") -> Path:
    """A run directory -> its best.pt (or last.pt); a .pt file -> itself."""
    return candidates(run_or_checkpoint, prefer)[0]


def candidates(run_or_checkpoint: Path, prefer: str = "best") -> list[Path]:
    """The checkpoints to try, preferred first: a .pt file alone, or a run's best.pt and last.pt that exist."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return [path]
    if path.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        found = [path / "checkpoints" / name for name in order if (path / "checkpoints" / name).is_file()]
        if found:
            return found
        raise UserError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt; is it a run directory that finished an epoch?")
    raise UserError(f"{path}: no such run directory or checkpoint")


@dataclass
class Loaded:
    path: Path
    state: dict
    note: str | None = None  # said when the preferred checkpoint was damaged and another one was read

    def tell(self) -> None:
        if self.note:
            err_console.print(f"note: {self.note}", highlight=False, soft_wrap=True)


def load_run(run_or_checkpoint: Path, prefer: str = "best", mmap: bool = False) -> Loaded:
    """The preferred checkpoint of a run directory, or its other one when that is unreadable."""
    failures = []
    for path in candidates(run_or_checkpoint, prefer):
        try:
            state = load(path, mmap=mmap)
        except UserError as exc:
            failures.append(str(exc))
            continue
        note = f"{failures[0]}; read {path} (epoch {state.get('epoch')}) instead" if failures else None
        return Loaded(path, state, note)
    if len(failures) == 1:
        raise UserError(failures[0])
    raise UserError(" and ".join(failures) + "; no checkpoint of this run is readable: train it again")

"""What `perceiver attention` does: pick (or capture) the attention of a run, draw it, measure it.

Pictures and `stats.json` go to `runs/<name>/attention/`: `epoch_NNNN_stage_S.<fmt>` per saved epoch
and cross-attend, `evolution_stage_S.<fmt>` with --evolution, `input_<name>_stage_S.<fmt>` for --input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine import capture as captures
from ..engine.capture import probe_samples
from ..engine.runtime import InputTransform, resolve_device
from ..errors import UserError
from ..runs import checkpoint as checkpoints
from ..runs.files import all_or_nothing, write_json
from ..data.inputs import match_channels
from ..runs.trained import load_trained, split_samples
from .render import FORMATS, check_colormap, render, render_evolution, selected
from .stats import map_stats

HOW_TO_GET_MAPS = ("train with --set train.save_attention_maps=true (every train.attention_interval epochs), "
                   "or capture them now from a checkpoint: perceiver attention {run} --checkpoint best")


@dataclass
class ViewOptions:
    epoch: str = "last"  # N, last or all
    samples: int = 4
    colormap: str = "viridis"
    alpha: float = 0.6
    stage: int | None = None  # None = every cross-attend
    head: int | None = None  # None = all heads summed
    evolution: bool = False
    checkpoint: str | None = None  # best, last or a .pt file: capture from it now
    input: Path | None = None  # a user's own image
    format: str = "png"
    device: str = "auto"  # where a checkpoint runs when maps are captured now (--checkpoint, --input)


@dataclass
class ViewResult:
    files: list[Path] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # epoch -> stage -> {"samples": [...], "mean": {...}}
    stats_path: Path | None = None


def view(run_dir: Path, options: ViewOptions) -> ViewResult:
    """Every option is checked, and the input image read, before anything is written; the figures and
    the statistics appear together or, when one cannot be written, none of them."""
    with all_or_nothing():
        return _view(Path(run_dir), options)


def _view(run_dir: Path, options: ViewOptions) -> ViewResult:
    check_colormap(options.colormap)
    if options.format not in FORMATS:
        raise UserError(f"--format {options.format!r}: use one of {', '.join(FORMATS)}")
    if not 0 <= options.alpha <= 1:
        raise UserError(f"--alpha {options.alpha}: must be between 0 and 1")
    if options.epoch not in ("last", "all") and not options.epoch.isdigit():
        raise UserError(f"--epoch {options.epoch}: give an epoch number, last or all")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    folder = run_dir / "attention"

    if options.input is not None:
        image = _read_image(options.input)
        captured, loaded = _capture_input(run_dir, options, image)
        prefix = f"input_{Path(options.input).stem}"
        result = _draw([captured], list(loaded.state["classes"]), folder, options, prefix=prefix)
        loaded.tell()
        return result
    saved, loaded = captures.saved_epochs(run_dir), None
    if options.checkpoint is not None:
        captured, loaded = _capture_from_checkpoint(run_dir, options.checkpoint, options.device)
        _check(captured, options)
        saved[captured.epoch] = None  # saved below, once every option has been checked
    if not saved:
        raise UserError(f"{run_dir} has no saved attention maps: " + HOW_TO_GET_MAPS.format(run=run_dir))
    choice = "all" if options.evolution and options.epoch == "last" else options.epoch
    if loaded is not None and choice == "last":
        epochs = [captured.epoch]  # what was just captured, not a later epoch's saved maps
    else:
        epochs = _pick_epochs(saved, choice, run_dir)
    if loaded is not None:
        saved[captured.epoch] = captures.save(captured, folder)
    shown = [captures.load(saved[e]) for e in epochs]
    result = _draw(shown, list(loaded.state["classes"]) if loaded else _classes(run_dir), folder, options, prefix=None)
    if options.evolution:
        for stage in _stages(shown[0], options.stage):
            path = folder / f"evolution_stage_{stage}.{options.format}"
            stage_stats = {e: result.stats[e][stage] for e in epochs}
            result.files.append(render_evolution(shown, stage_stats, path, stage, options.head, options.samples,
                                                 options.colormap, options.alpha))
    if loaded is not None:
        loaded.tell()
    return result


def _check(captured: captures.Capture, options: ViewOptions) -> None:
    """--head and --stage against what the model has (raises UserError)."""
    _check_head(captured, options.head)
    _stages(captured, options.stage)


def _draw(loaded: list[captures.Capture], classes, folder: Path, options: ViewOptions, prefix: str | None) -> ViewResult:
    result = ViewResult()
    for captured in loaded:
        _check(captured, options)
    folder.mkdir(parents=True, exist_ok=True)
    for captured in loaded:
        result.stats[captured.epoch] = {}
        for stage in _stages(captured, options.stage):
            name = f"{prefix}_stage_{stage}" if prefix else f"epoch_{captured.epoch:04d}_stage_{stage}"
            path = folder / f"{name}.{options.format}"
            result.files.append(render(captured, classes, path, stage, options.head, options.samples,
                                       options.colormap, options.alpha))
            per_sample = [map_stats(selected(captured, i, stage, options.head), _grid(captured))
                          for i in range(len(captured.labels))]
            result.stats[captured.epoch][stage] = {"samples": per_sample, "mean": _mean(per_sample)}
    result.stats_path = folder / (f"{prefix}_stats.json" if prefix else "stats.json")
    report = {"head": "all (summed)" if options.head is None else options.head,
              "epochs": {str(e): {str(s): v for s, v in stages.items()} for e, stages in result.stats.items()}}
    write_json(result.stats_path, report)
    return result


def _grid(captured: captures.Capture) -> tuple[int, ...]:
    return captured.token_grid if len(captured.token_grid) == 2 else ()


def _mean(per_sample: list[dict]) -> dict:
    keys = ("entropy", "top5_mass", "latents_used", "effective_latents")
    return {k: round(float(np.mean([s[k] for s in per_sample])), 4) for k in keys}


def _stages(captured: captures.Capture, stage: int | None) -> list[int]:
    count = captured.weights.shape[0]
    if stage is None:
        return list(range(count))
    if not 0 <= stage < count:
        raise UserError(f"--stage {stage}: the model has {count} cross-attend(s), numbered 0 to {count - 1}")
    return [stage]


def _check_head(captured: captures.Capture, head: int | None) -> None:
    heads = captured.weights.shape[2]
    if head is not None and not 0 <= head < heads:
        raise UserError(f"--head {head}: the cross-attention has {heads} head(s), numbered 0 to {heads - 1}")


def _pick_epochs(saved: dict[int, Path], choice: str, run_dir: Path) -> list[int]:
    if choice == "all":
        return sorted(saved)
    if choice == "last":
        return [max(saved)]
    if not choice.isdigit() or int(choice) not in saved:
        have = ", ".join(map(str, sorted(saved)))
        raise UserError(f"--epoch {choice}: no attention maps saved for it in {run_dir} (saved epochs: {have}; or last, all)")
    return [int(choice)]


def _classes(run_dir: Path) -> list[str]:
    """The class names of saved captures (drawn as "?" when no checkpoint is readable)."""
    try:
        return list(checkpoints.load_run(run_dir, mmap=True).state["classes"])
    except UserError:
        return []


# --- capturing now -------------------------------------------------------------------------------

def _trained(run_dir: Path, which: str, device):
    """(model, recipe, checkpoint.Loaded) of best or last (the run's other one if that is damaged) or a .pt file."""
    if which in ("best", "last"):
        trained = load_trained(run_dir, device, prefer=which)
    elif not Path(which).is_file():
        raise UserError(f"--checkpoint {which}: no such file; give best, last or a .pt file")
    else:
        trained = load_trained(Path(which), device)
    return trained


def _capture_from_checkpoint(run_dir: Path, which: str, device: str = "auto") -> tuple[captures.Capture, checkpoints.Loaded]:
    """The run's probe samples (its validation data, a few per class) through a checkpoint."""
    device = resolve_device(device, "--device")
    model, recipe, loaded = _trained(run_dir, which, device)
    state = loaded.state
    x, y, _ = split_samples(recipe, state, "val")
    x, y = probe_samples(x, y, recipe.train.attention_samples, recipe.train.seed)
    transform = InputTransform(state["input_spec"], state["normalization"], device, recipe.data)
    return captures.capture(model, x, y, transform, device, epoch=state["epoch"]), loaded


def _read_image(path: Path):
    """A user's image as RGB; unreadable, or too large to open safely, is one clear line."""
    from PIL import Image

    from ..data.imagefolder import bomb_reason, open_image

    try:
        with open_image(Path(path).read_bytes()) as img:
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = bomb_reason(exc)  # SyntaxError above: PIL's, for some broken files
        why = f"{reason}; give a smaller image" if reason else f"not a readable image ({exc})"
        raise UserError(f"--input {path}: {why}") from None


def _capture_input(run_dir: Path, options: ViewOptions, image) -> tuple[captures.Capture, checkpoints.Loaded]:
    """A user's own image, resized to the model's input, through a checkpoint (best by default)."""
    from PIL import Image

    device = resolve_device(options.device, "--device")
    model, recipe, loaded = _trained(run_dir, options.checkpoint or "best", device)
    state = loaded.state
    if state["input_spec"]["kind"] != "image":
        raise UserError(f"--input {options.input}: this model reads {state['input_spec']['kind']}, not images")
    height, width, channels = state["input_spec"]["shape"]
    rgb = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    x = match_channels(rgb, channels)[None]
    transform = InputTransform(state["input_spec"], state["normalization"], device, recipe.data)
    return captures.capture(model, x, np.array([-1]), transform, device, epoch=state["epoch"]), loaded

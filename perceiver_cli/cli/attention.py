"""`perceiver attention`: cross-attention maps of a run drawn, with their statistics."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import tables
from .errors import user_errors
from .options import Device


class Format(str, Enum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


@user_errors("attention")
def attention(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    epoch: str = typer.Option("last", "--epoch", help="Saved epoch to draw: a number, last or all."),
    samples: int = typer.Option(4, "--samples", min=1, help="Probe samples to draw."),
    colormap: str = typer.Option("viridis", "--colormap", help="Any matplotlib colormap."),
    alpha: float = typer.Option(0.6, "--alpha", help="Opacity of the heatmap over the image (0 to 1)."),
    stage: Optional[int] = typer.Option(None, "--stage", help="Cross-attend to draw (0 = first).  \\[default: every one]"),
    head: Optional[int] = typer.Option(None, "--head", help="Cross-attention head to draw.  \\[default: all heads summed]"),
    evolution: bool = typer.Option(False, "--evolution", help="Lay the same samples out across the saved epochs and plot entropy / concentration over epochs."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Capture the maps now from best, last or a .pt file (for runs trained without train.save_attention_maps)."),
    input_file: Optional[Path] = typer.Option(None, "--input", help="Draw the maps for your own image (with the best checkpoint, or --checkpoint)."),
    fmt: Format = typer.Option(Format.png, "--format", help="File format of the pictures."),
    device: Device = typer.Option(Device.auto, "--device", help="Device a checkpoint runs on when maps are captured now (--checkpoint, --input)."),
):
    """Cross-attention maps over the input: pictures and statistics (entropy, concentration, latents used) per sample."""
    from ..attention.views import ViewOptions, view

    tables.attention(view(run_dir, ViewOptions(epoch=epoch, samples=samples, colormap=colormap, alpha=alpha, stage=stage,
                                               head=head, evolution=evolution, checkpoint=checkpoint, input=input_file,
                                               format=fmt.value, device=device.value)))

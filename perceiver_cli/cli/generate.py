"""`perceiver generate`: text from a causal_lm run, streamed to the terminal as it is sampled."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from ..console import info
from .errors import user_errors
from .options import Device


@user_errors("generate")
def generate_command(
    run: Path = typer.Argument(..., help="A causal_lm run directory (its best checkpoint) or a checkpoint .pt."),
    prompt: str = typer.Option("", "--prompt", help="The text to continue (any length: shorter than the window is fine).  \\[default: a line break]"),
    max_bytes: int = typer.Option(500, "--max-bytes", min=1, help="Bytes to generate."),
    temperature: float = typer.Option(0.8, "--temperature", min=0.0, help="Sampling temperature; 0 = always the most likely byte."),
    top_k: int = typer.Option(40, "--top-k", min=1, help="Sample among the k most likely bytes (1 = greedy)."),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0, help="Sample among the most likely bytes whose probability reaches p (nucleus); 1 = off."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed of the sampling: the same seed, the same text.  \\[default: a fresh one]"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the prompt, the text and the settings to this JSON file."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute the whole window for every byte instead of the exact cache (the same text, slower)."),
    device: Device = typer.Option(Device.auto, "--device", help="Device to run on."),
):
    """Text that continues a prompt, from a causal_lm run (streamed as it comes; never a UTF-8 character split)."""
    from ..atomic import json_text
    from ..predict.model import load
    from ..runs.files import write_text

    model = load(run, device.value)
    pieces, started = [], time.perf_counter()
    for piece in model.generate(prompt, max_bytes=max_bytes, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, use_cache=not no_cache):
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    seconds = time.perf_counter() - started
    sys.stdout.write("\n")
    text = "".join(pieces)
    if json_path is not None:
        write_text(json_path, json_text({"run": str(run), "prompt": prompt, "text": text, "max_bytes": max_bytes,
                                         "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
                                         "cache": not no_cache, "seconds": round(seconds, 3)}, indent=2) + "\n")
    info(f"{max_bytes:,} bytes in {seconds:.1f} s ({max_bytes / max(seconds, 1e-9):,.0f} bytes/s)"
         + (f" · wrote {json_path}" if json_path is not None else ""), highlight=False)

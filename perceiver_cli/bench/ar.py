"""`perceiver bench` of a byte-stream recipe (causal_lm): Perceiver AR's training step and forward on
random windows of random bytes, generation with and without the cache (bytes per second after a
full-window prompt), `--sweep` over the window from 1 k to 64 k bytes with the exponent of
time ~ context^k (Perceiver AR's point: about 1, not 2), and `--compare perceiver-ar` against
lucidrains' perceiver-ar-pytorch at the same architecture and window, stepped in turns in this process.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..data.shapes import KNOWN_INPUTS, ShapesOnly
from ..engine.step import TrainStep
from ..errors import UserError
from ..model import count_parameters
from ..tasks import build_task
from .measure import StepTimes, growth_exponent, time_alternating, time_steps
from .memory import peak_memory_in_fresh_process, peak_of

SWEEP = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
# bytes timed per generation run: cached, over several moves of the view (each a full rebuild, counted);
# recomputed, fewer (every byte is a full forward). A few bytes before the clock starts warm both up.
GENERATED = {True: 512, False: 32}
WARMUP_BYTES = 4


def _task(recipe, context: int):
    recipe = recipe.model_copy(update={"task": recipe.task.model_copy(update={"context": context})})
    dataset = ShapesOnly("bench", KNOWN_INPUTS["text"], ["bytes"])
    return build_task(recipe, dataset, None)


def _batch(task, batch: int, device, seed: int = 0):
    stream = np.random.default_rng(seed).integers(0, 256, task.context * 2 + 1, dtype=np.uint8)
    ends = np.full(batch, len(stream) - 1)
    return task.windows(stream, ends, device)


def ours_step(recipe, context: int, batch: int, mode: str, device, bf16: bool):
    """(step closure, model) of our model at `context` bytes."""
    from ..recipe import OptimConfig

    task = _task(recipe, context)
    torch.manual_seed(0)
    model = task.build_model().to(device).train(mode == "train")
    inputs, target = _batch(task, batch, device)
    if mode == "train":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_step = TrainStep(model, list(model.parameters()), optimizer, loss=task.loss,
                               optim_config=OptimConfig(name="adamw"), device=device, bf16=bf16)
        return (lambda: train_step(inputs, target, batch)), model
    from ..engine.runtime import autocast

    def forward():
        with torch.no_grad(), autocast(device, bf16):
            model(*inputs)
    return forward, model


def theirs_step(recipe, context: int, batch: int, mode: str, device, bf16: bool):
    """(step closure, model) of lucidrains' perceiver-ar-pytorch at the same architecture."""
    try:
        from perceiver_ar_pytorch import PerceiverAR as TheirPerceiverAR
    except ImportError:
        raise UserError("--compare perceiver-ar needs lucidrains' perceiver-ar-pytorch: pip install perceiver-ar-pytorch") from None
    from ..engine.runtime import autocast

    m, t = recipe.model, recipe.task
    latents = min(m.num_latents, context)
    if m.latent_dim // m.latent_heads < 32:
        raise UserError(f"--compare perceiver-ar: its rotary embedding needs heads of 32 channels or more; this recipe's "
                        f"are {m.latent_dim // m.latent_heads} (model.latent_dim / model.latent_heads): raise "
                        f"model.latent_dim or lower model.latent_heads")
    torch.manual_seed(0)
    model = TheirPerceiverAR(num_tokens=256, dim=m.latent_dim, depth=m.latent_blocks, heads=m.latent_heads,
                             dim_head=m.latent_dim // m.latent_heads, ff_mult=m.widening_factor, max_seq_len=context,
                             cross_attn_seq_len=context - latents, cross_attn_dropout=t.prefix_dropout).to(device)
    model.train(mode == "train")
    x = torch.randint(0, 256, (batch, context), device=device, generator=torch.Generator(device=device).manual_seed(0))
    labels = torch.randint(0, 256, (batch, context), device=device)
    if mode == "train":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with autocast(device, bf16):
                loss = model(x, labels=labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step, model

    def forward():
        with torch.no_grad(), autocast(device, bf16):
            model(x)
    return forward, model


def memory_in_fresh_process(which: str, recipe, context: int, batch: int, mode: str, bf16: bool) -> int | str:
    """CPU: the peak memory of one step of ours or theirs, in a process of its own (see memory.py)."""
    return peak_memory_in_fresh_process({"which": which, "recipe": recipe.to_dict(), "context": context, "batch": batch,
                                         "mode": mode, "bf16": bf16}, _measure)


def _measure(spec: dict) -> int | str:
    from ..recipe import recipe_from_dict

    torch.set_num_threads(1)  # memory does not depend on threads; leave the cores to the parent
    make = ours_step if spec["which"] == "ours" else theirs_step
    step, _ = make(recipe_from_dict(spec["recipe"]), spec["context"], spec["batch"], spec["mode"], torch.device("cpu"),
                   spec["bf16"])
    return peak_of(step, torch.device("cpu"))


def _summary(times: StepTimes, batch: int, latents: int) -> dict:
    return {"median_s": round(times.median, 6), "p10_s": round(times.quantile(0.1), 6), "p90_s": round(times.quantile(0.9), 6),
            "samples_per_s": round(batch / times.median, 3), "target_bytes_per_s": round(batch * latents / times.median, 1),
            "peak_memory_mb": None if times.peak_memory_bytes in (None, "out of memory") else
            round(times.peak_memory_bytes / 2**20, 1)}


def generation_rate(recipe, context: int, device, use_cache: bool, generated: int | None = None) -> float:
    """Bytes per second generated (greedy) after a prompt that fills the window, cached or recomputed."""
    from ..model.perceiver_ar import Generator

    task = _task(recipe, context)
    torch.manual_seed(0)
    model = task.build_model().to(device).eval()
    run = Generator(model, context, use_cache=use_cache)
    prompt = torch.randint(0, 256, (1, context), generator=torch.Generator().manual_seed(0)).to(device)
    logits = run.prompt(prompt)
    for _ in range(WARMUP_BYTES):
        logits = run.append(logits.argmax(-1))
    generated = generated or GENERATED[use_cache]
    started = time.perf_counter()
    for _ in range(generated):
        logits = run.append(logits.argmax(-1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return generated / (time.perf_counter() - started)


def run_ar_bench(recipe, options, device, bf16: bool, environment: dict) -> dict:
    context = int(options.input_size) if options.input_size else recipe.task.context
    batch = options.batch or recipe.train.batch_size
    modes = ["train", "infer"] if options.mode == "both" else [options.mode]
    latents = min(recipe.model.num_latents, context)
    document = {"recipe": recipe.to_dict(), "environment": environment,
                "input": {"kind": "bytes", "context": context, "latents": latents}, "batch": batch,
                "steps": options.steps, "warmup": options.warmup, "results": {}}
    for mode in modes:
        step, model = ours_step(recipe, context, batch, mode, device, bf16)
        document["parameters"] = count_parameters(model)
        times = time_steps(step, device, options.steps, options.warmup)
        if device.type == "cpu":
            times.peak_memory_bytes = memory_in_fresh_process("ours", recipe, context, batch, mode, bf16)
        document["results"][mode] = _summary(times, batch, latents)
    cached, uncached = (generation_rate(recipe, context, device, use) for use in (True, False))
    document["generation"] = {"cached_bytes_per_s": round(cached, 2), "uncached_bytes_per_s": round(uncached, 2),
                              "speedup": round(cached / uncached, 2)}
    if options.sweep:
        document["sweep"] = sweep(recipe, batch, device, bf16, options)
    if options.compare:
        document["compare"] = compare(recipe, context, batch, device, bf16, options, modes)
    return document


def sweep(recipe, batch: int, device, bf16: bool, options) -> dict:
    rows = []
    for context in SWEEP:
        try:
            step, _ = ours_step(recipe, context, batch, "train", device, bf16)
            times = time_steps(step, device, max(3, options.steps // 2), 1)
            if device.type == "cpu":  # an in-process peak says nothing of one model (memory.py); CUDA's is its own
                times.peak_memory_bytes = None
        except (torch.OutOfMemoryError, MemoryError):
            rows.append({"context": context, "error": "out of memory"})
            continue
        rows.append({"context": context, **_summary(times, batch, min(recipe.model.num_latents, context))})
    ran = [r for r in rows if "error" not in r]
    exponent = round(growth_exponent([r["context"] for r in ran], [r["median_s"] for r in ran]), 3) if len(ran) >= 2 else None
    return {"rows": rows, "growth_exponent": exponent}


def compare(recipe, context: int, batch: int, device, bf16: bool, options, modes) -> dict:
    if options.compare != "perceiver-ar":
        raise UserError(f"--compare {options.compare!r}: a causal_lm recipe is compared with perceiver-ar "
                        f"(lucidrains' perceiver-ar-pytorch)")
    result = {"with": "perceiver-ar", "same_dtype": {}, "speedup": {}, "memory_ratio": {}}
    for mode in modes:
        ours, our_model = ours_step(recipe, context, batch, mode, device, bf16)
        theirs, their_model = theirs_step(recipe, context, batch, mode, device, bf16)
        result["parameters"] = {"ours": count_parameters(our_model), "perceiver-ar": count_parameters(their_model)}
        times = time_alternating({"ours": ours, "perceiver-ar": theirs}, device, options.steps, options.warmup)
        if device.type == "cpu":
            for name in ("ours", "perceiver-ar"):
                times[name].peak_memory_bytes = memory_in_fresh_process(name, recipe, context, batch, mode, bf16)
        pair = {name: _summary(t, batch, min(recipe.model.num_latents, context)) for name, t in times.items()}
        result["same_dtype"][mode] = pair
        result["speedup"][mode] = round(pair["perceiver-ar"]["median_s"] / pair["ours"]["median_s"], 3)
        memory = (pair["ours"]["peak_memory_mb"], pair["perceiver-ar"]["peak_memory_mb"])
        result["memory_ratio"][mode] = round(memory[0] / memory[1], 3) if None not in memory and memory[1] else None
    return result

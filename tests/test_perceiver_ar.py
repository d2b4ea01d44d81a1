"""Perceiver AR on bytes (model/perceiver_ar.py): causal at every position on every path, a left-padded
batch computed as its rows alone, and generation whose cache gives exactly what a full forward of the
same view gives, through growth, a full window and its moves."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from perceiver_cli.model.perceiver_ar import Generator, PerceiverAR, positions_of, sample

BACKENDS = [None, SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION]  # None: torch's choice


def kernel(backend):
    return contextlib.nullcontext() if backend is None else sdpa_kernel(backend)


def small(prefix_dropout: float = 0.5, latents: int = 8) -> PerceiverAR:
    torch.manual_seed(0)
    return PerceiverAR(dim=32, num_latents=latents, heads=4, latent_blocks=2, widening=2,
                       prefix_dropout=prefix_dropout).double()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("training", [False, True])
def test_a_later_byte_never_changes_earlier_logits(training):
    """Changing byte t+1 leaves the logits at <= t as they were: in eval and under prefix dropout
    (the same kept positions, seeded), on each attention kernel the machine has."""
    model = small().train(training)
    x = tokens(2, 24)
    first = 24 - model.num_latents  # the first latent's position
    for backend in BACKENDS:
        try:
            with kernel(backend):
                torch.manual_seed(5)
                base = model(x)
        except RuntimeError:  # a kernel this machine or dtype lacks
            continue
        for t in range(first, 23):
            changed = x.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % 256
            with kernel(backend):
                torch.manual_seed(5)
                other = model(changed)
            seen = t - first + 1  # the latents at positions first..t
            assert torch.equal(other[:, :seen], base[:, :seen]), (backend, t)
            assert not torch.equal(other[:, seen:], base[:, seen:]), (backend, t)  # and it does reach later ones


def test_a_later_byte_gets_no_gradient_from_earlier_logits():
    model = small(prefix_dropout=0.0)
    kept = {}
    keys_of = model.cross.attention.keys_of

    def keep(kv, positions, valid):  # the window's keys and values, one row per position
        kv.retain_grad()
        kept["kv"] = kv
        return keys_of(kv, positions, valid)
    model.cross.attention.keys_of = keep
    x = tokens(1, 20)
    logits = model(x)
    t = 20 - model.num_latents + 3  # the 4th latent's position
    logits[:, :4].sum().backward()
    grad = kept["kv"].grad[0].abs().sum(-1)
    assert (grad[: t + 1] > 0).all() and (grad[t + 1:] == 0).all()


def test_a_left_padded_batch_computes_each_row_as_it_would_alone():
    model = small(prefix_dropout=0.0)
    short, long = tokens(1, 5, seed=2), tokens(1, 14, seed=3)
    padded = torch.cat([torch.cat([torch.zeros(1, 9, dtype=torch.long), short], 1), long])
    valid = torch.cat([torch.cat([torch.zeros(1, 9, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)], 1),
                       torch.ones(1, 14, dtype=torch.bool)])
    assert positions_of(valid)[0].tolist() == [0] * 10 + [1, 2, 3, 4]
    batch = model(padded, valid)
    torch.testing.assert_close(batch[1:], model(long))
    torch.testing.assert_close(batch[:1, -5:], model(short)[:, -5:])  # its 5 bytes are latents either way


def full_forward(generator: Generator) -> torch.Tensor:
    tokens_, valid, latents = generator.view()
    return generator.model(tokens_, valid, num_latents=latents)[:, -1]


def test_cached_generation_equals_a_full_forward_at_every_step_through_growth_fill_and_moves():
    model = small(prefix_dropout=0.0).eval()
    cached, uncached = Generator(model, context=24, gap=4), Generator(model, context=24, gap=4, use_cache=False)
    prompt = tokens(2, 5, seed=4)
    a, b = cached.prompt(prompt), uncached.prompt(prompt)
    moves, stream = 0, tokens(2, 70, seed=5)
    for step in range(70):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        torch.testing.assert_close(a, full_forward(cached), rtol=0, atol=1e-10)
        before = cached.start
        a, b = cached.append(stream[:, step]), uncached.append(stream[:, step])
        moves += cached.start != before
        assert cached.tokens.shape[1] - cached.start <= 24 and cached.tokens.shape[1] - cached.first_latent <= 8 + 4
    assert moves >= 10  # the window filled and moved many times


def test_cached_generation_of_a_left_padded_batch_equals_each_row_alone_while_its_window_grows():
    model = small(prefix_dropout=0.0).eval()
    short, long = tokens(1, 3, seed=6), tokens(1, 9, seed=7)
    padded = torch.cat([torch.cat([torch.zeros(1, 6, dtype=torch.long), short], 1), long])
    valid = padded.new_ones(padded.shape, dtype=torch.bool)
    valid[0, :6] = False
    # (a view moves by its own length, which padding changes: rows match until the first move, here none)
    together, alone = Generator(model, context=64, gap=40), [Generator(model, context=64, gap=40) for _ in range(2)]
    logits = together.prompt(padded, valid)
    each = [g.prompt(p) for g, p in zip(alone, (short, long))]
    for step in range(20):
        torch.testing.assert_close(logits, torch.cat(each), rtol=0, atol=1e-10)
        chosen = logits.argmax(-1)
        logits = together.append(chosen)
        each = [g.append(chosen[i:i + 1]) for i, g in enumerate(alone)]


def test_top_k_one_is_greedy_and_seeded_sampling_repeats():
    logits = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(logits, temperature=0.8, top_k=1), logits.argmax(-1))
    draw = lambda: sample(logits, 0.8, top_k=40, top_p=0.95, generator=torch.Generator().manual_seed(3))  # noqa: E731
    assert torch.equal(draw(), draw())
    nucleus = sample(logits.repeat(200, 1), 1.0, top_p=0.05, generator=torch.Generator().manual_seed(1))
    top = logits.softmax(-1).sort(-1, descending=True)
    allowed = [set(top.indices[i, : int((top.values[i].cumsum(0) < 0.05).sum()) + 1].tolist()) for i in range(4)]
    assert all(int(b) in allowed[i % 4] for i, b in enumerate(nucleus))


def test_the_cross_attends_table_of_byte_keys_is_the_per_position_projection():
    model = small()
    x = tokens(2, 30)
    attention = model.cross.attention
    per_position = attention.kv(attention.kv_norm(model.embedding(x)))
    assert torch.allclose(F.embedding(x, model.cross_kv_table()), per_position, atol=1e-6)

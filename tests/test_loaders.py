"""The loaders: streamed and resident batches are the same bytes in the Trainer's seeded order, each
rank gets its own part of every global batch, a resume continues mid-epoch exactly, and streaming
leaves no thread behind however it ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perceiver_cli.data import loaders, prepared
from perceiver_cli.data.loaders import ResidentLoader, StreamLoader, choose_residency, loader_threads, rank_batch_size
from perceiver_cli.data.prepared import PreparedDataset, Split
from perceiver_cli.errors import UserError

N, BATCH, SEED = 37, 6, 5  # 37 rows: the last global batch is short


@pytest.fixture
def stored(tmp_path):
    """A prepared dataset on disk, loaded memory-mapped: (x memmap, y)."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (N, 4, 5, 3), dtype=np.uint8), rng.integers(0, 3, N)
    prepared.write(PreparedDataset("toy", ["a", "b", "c"], {"kind": "image", "shape": [4, 5, 3]},
                                   {"train": Split(x, y)}), tmp_path / "toy")
    split = prepared.load(tmp_path / "toy", mmap=True).split("train")
    assert isinstance(split.x, np.memmap) and np.array_equal(split.x, x)
    return split.x, split.y


def as_bytes(batches) -> list[tuple[bytes, list, list]]:
    return [(b.x.numpy().tobytes(), b.y.tolist(), b.index.tolist()) for b in batches]


def loaders_of(x, y, world, rows=None, **stream):
    for rank in range(world):
        yield (ResidentLoader(x, y, BATCH, SEED, "cpu", rank, world, rows),
               StreamLoader(x, y, BATCH, SEED, "cpu", rank, world, rows, **stream))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_streamed_and_resident_batches_are_the_same_bytes(stored, world):
    x, y = stored
    rows = np.flatnonzero(np.arange(N) % 4 != 1)  # a held-out share left out, as train without val
    for rows_ in (None, rows):
        for resident, streamed in loaders_of(x, y, world, rows_, workers=2, prefetch=3):
            for epoch in (1, 2, 3):
                assert as_bytes(resident.epoch(epoch)) == as_bytes(streamed.epoch(epoch))
            assert as_bytes(resident.in_order(8)) == as_bytes(streamed.in_order(8))
            first = next(iter(resident.epoch(1)))
            kept = np.arange(N) if rows_ is None else rows_
            assert np.array_equal(first.x.numpy(), x[kept[first.index.numpy()]])  # index: rows of the loader's arrays
            assert np.array_equal(first.y.numpy(), y[kept[first.index.numpy()]])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_parts_make_up_the_trainers_global_batches(stored, world):
    x, y = stored
    for epoch in (1, 2):
        generator = torch.Generator().manual_seed(SEED * 100_003 + epoch)  # the order runs have always had
        expected = torch.randperm(N, generator=generator).split(BATCH)
        per_rank = [list(streamed.epoch(epoch)) for _, streamed in loaders_of(x, y, world)]
        assert all(len(batches) == len(expected) for batches in per_rank)
        for step, batch in enumerate(expected):
            parts = [batches[step].index for batches in per_rank]
            assert torch.equal(torch.cat(parts), batch)  # disjoint, contiguous, in rank order
            if len(batch) == BATCH:
                assert all(len(p) == BATCH // world for p in parts)
        # validation: every row once over all ranks, in order
        in_order = [b.index for _, streamed in loaders_of(x, y, world) for b in streamed.in_order(8)]
        assert sorted(torch.cat(in_order).tolist()) == list(range(N))


def test_the_epochs_generator_is_the_one_that_drew_the_order(stored):
    x, y = stored
    generator = torch.Generator().manual_seed(SEED * 100_003 + 4)
    torch.randperm(N, generator=generator)
    epoch = ResidentLoader(x, y, BATCH, SEED, "cpu").epoch(4)
    assert torch.equal(epoch.generator.get_state(), generator.get_state())  # augmentation draws on as before


def test_start_step_continues_the_epoch_exactly(stored):
    x, y = stored
    for resident, streamed in loaders_of(x, y, world=2):
        whole = as_bytes(streamed.epoch(3))
        for start in (1, 4, len(whole)):
            assert as_bytes(streamed.epoch(3, start_step=start)) == whole[start:]
            assert as_bytes(resident.epoch(3, start_step=start)) == whole[start:]
            assert len(streamed.epoch(3, start_step=start)) == len(whole) - start


def test_streaming_leaves_no_thread_behind(stored):
    x, y = stored
    loader = StreamLoader(x, y, BATCH, SEED, "cpu", workers=3, prefetch=4)
    epoch = loader.epoch(1)
    next(epoch)
    assert loader_threads()  # gathering ahead in the background
    epoch.close()  # stopped early
    assert loader_threads() == []

    with pytest.raises(RuntimeError, match="the step failed"):
        with loader.epoch(2) as epoch:
            for _ in epoch:
                raise RuntimeError("the step failed")
    assert loader_threads() == []

    def failing(part):
        raise OSError(5, "Input/output error")

    loader._gather = failing  # a read that fails in a worker reaches the caller
    with pytest.raises(OSError, match="Input/output error"):
        list(loader.epoch(3))
    assert loader_threads() == []


def test_a_corrupt_array_is_refused_when_memory_mapped(tmp_path, stored):
    path = tmp_path / "toy" / "train_x.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"train_x\.npy: does not match its sha256"):
        prepared.load(tmp_path / "toy", mmap=True)


def test_a_global_batch_the_ranks_cannot_share_is_one_line():
    assert rank_batch_size(12, 3) == 4
    with pytest.raises(UserError) as info:
        rank_batch_size(10, 4)
    assert str(info.value).startswith("train.batch_size 10 is the global batch and must divide evenly among the 4 ranks")
    assert "e.g. 8 or 12" in str(info.value)


def test_auto_residency_streams_what_does_not_fit_well(monkeypatch):
    monkeypatch.setattr(loaders, "available_bytes", lambda: 4 * 2**30)
    choice, why = choose_residency("auto", 1 * 2**30, "cpu")
    assert choice == "device" and "resident" in why and "1.0 GiB" in why
    choice, why = choose_residency("auto", 3 * 2**30, "cpu")
    assert choice == "stream" and "streamed" in why and "4.0 GiB" in why
    assert choose_residency("stream", 1, "cpu") == ("stream", "data.residency=stream (as set)")
    with pytest.raises(UserError, match="data.residency 'disk'"):
        choose_residency("disk", 1, "cpu")

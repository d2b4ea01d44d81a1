"""Bytes end to end: `prepare text` splits by file and keeps the files' boundaries, a tiny causal_lm run
learns more than a byte bigram knows, `eval` puts it next to xz and the bigram on the same bytes, and
`generate` streams seeded, reproducible text."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import set_args

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]
TINY_AR = ["task.context=48", "model.num_latents=16", "model.latent_dim=48", "model.latent_heads=4",
           "model.latent_blocks=2", "model.widening_factor=2", "train.epochs=40", "train.batch_size=8",
           "train.eval_batch_size=32", "optim.lr=0.003", "optim.warmup_epochs=2", "train.precision=fp32"]


def write_corpus(root, files: int = 32, words: int = 1200, seed: int = 0):
    """Files of words from a small vocabulary: a word is known from its first letters, which a model
    with context learns and a bigram cannot."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        chosen = rng.choice(WORDS, words)
        text = "".join(w + ("\n" if rng.random() < 0.1 else " ") for w in chosen)
        (root / f"doc{i:02d}.txt").write_text(text)
    return root


def prepare(cli, *args):
    result = cli("prepare", "text", *args)
    assert result.exit_code == 0, result.output
    return result


def test_prepare_text_splits_by_file_and_keeps_each_file_whole(cli, workdir):
    corpus = write_corpus(workdir / "corpus", files=20, words=300)
    prepare(cli, "--from", corpus, "--split", "0.6,0.2,0.2", "--seed", "3")
    manifest = json.loads((workdir / "data" / "text" / "manifest.json").read_text())
    listed = {name: [f["path"] for f in split["documents"]] for name, split in manifest["splits"].items()}
    every = [path for paths in listed.values() for path in paths]
    assert sorted(every) == sorted(p.name for p in corpus.iterdir())  # each file once, in one split only
    assert all(listed[name] for name in ("train", "val", "test"))
    from perceiver_cli.data import prepared
    from perceiver_cli.data.text import stream_of
    dataset = prepared.load(workdir / "data" / "text", mmap=True)
    for name, split in manifest["splits"].items():
        stream = stream_of(dataset.split(name)).tobytes()
        assert stream == b"".join((corpus / f["path"]).read_bytes() for f in split["documents"])
        for f in split["documents"]:  # the boundaries: where each file lies in the stream
            assert stream[f["offset"]: f["offset"] + f["bytes"]] == (corpus / f["path"]).read_bytes()
    assert len(manifest["source"]["sha256"]) == 64


def test_prepare_text_without_from_reads_the_standard_library(cli, workdir, monkeypatch):
    from perceiver_cli.data import text

    lib = workdir / "lib"
    write_corpus(lib / "json", files=6, words=200)
    for path in (lib / "json").iterdir():
        path.rename(path.with_suffix(".py"))
    (lib / "site-packages").mkdir()
    (lib / "site-packages" / "other.py").write_text("not the standard library\n")
    monkeypatch.setattr(text, "stdlib_root", lambda: lib)
    prepare(cli, "--split", "0.5,0.25,0.25")
    manifest = json.loads((workdir / "data" / "text" / "manifest.json").read_text())
    assert manifest["source"]["python"] and manifest["source"]["glob"] == "*.py" and manifest["source"]["files"] == 6
    paths = [f["path"] for split in manifest["splits"].values() for f in split["documents"]]
    assert all(p.startswith("json/") for p in paths)


def test_a_text_that_leaves_a_split_empty_is_one_line(cli, workdir):
    corpus = write_corpus(workdir / "corpus", files=2, words=50)
    result = cli("prepare", "text", "--from", corpus, "--split", "0.8,0.1,0.1")
    assert result.exit_code == 2 and "leave the" in result.output and "split empty" in result.output


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory, cli):
    import os

    root = tmp_path_factory.mktemp("ar")
    old = os.getcwd()
    os.chdir(root)
    try:
        prepare(cli, "--from", write_corpus(root / "corpus"), "--split", "0.8,0.1,0.1")
        result = cli("train", "bytes_ar", *set_args(TINY_AR))
        assert result.exit_code == 0, result.output
        yield root, root / "runs" / "bytes_ar", result
    finally:
        os.chdir(old)


def test_a_tiny_run_learns_more_than_the_bigram_and_eval_shows_the_baselines(cli, ar_run, monkeypatch):
    root, run, trained = ar_run
    monkeypatch.chdir(root)
    assert "val bits/byte" in trained.stdout
    result = cli("eval", run)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval_test.json").read_text())
    assert report["task"] == "causal_lm" and report["bytes"] > 10_000
    assert report["bits_per_byte"] < report["baselines"]["bigram"], report
    assert report["baselines"]["xz -9e"] > 0 and "xz -9e" in result.stdout and "bigram" in result.stdout
    assert (run / "bits_test.png").is_file()
    other = cli("eval", run, "--data", root / "corpus")  # no other dataset: one line, nothing written
    assert other.exit_code == 2 and "evaluated on a split of its own dataset" in other.output
    assert not list(run.glob("eval_data-*"))
    reported = cli("report", run)
    summary = json.loads((run / "report.json").read_text())["runs"][str(run)]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["best_val_bpb"] == min(r["val_bpb"] for r in rows)  # lower is better
    assert summary["test_bits_per_byte"] == report["bits_per_byte"] and "best val bits/byte" in reported.stdout


def test_generate_streams_seeded_text_and_top_k_one_is_greedy(cli, ar_run, monkeypatch):
    root, run, _ = ar_run
    monkeypatch.chdir(root)
    texts = []
    for name in ("a", "b"):
        result = cli("generate", run, "--prompt", "alpha bra", "--max-bytes", "60", "--seed", "7", "--json", f"{name}.json")
        assert result.exit_code == 0, result.output
        texts.append(json.loads((root / f"{name}.json").read_text())["text"])
    assert texts[0] == texts[1] and 0 < len(texts[0]) <= 60  # a byte gives at most one character
    greedy = [json.loads((root / "g.json").read_text())["text"] for args in (["--top-k", "1"], ["--temperature", "0"])
              if cli("generate", run, "--prompt", "alpha", "--max-bytes", "40", *args, "--json", "g.json").exit_code == 0]
    assert len(greedy) == 2 and greedy[0] == greedy[1]
    uncached = cli("generate", run, "--prompt", "alpha", "--max-bytes", "40", "--temperature", "0", "--no-cache",
                   "--json", "u.json")
    assert uncached.exit_code == 0 and json.loads((root / "u.json").read_text())["text"] == greedy[0]


def test_python_generate_and_a_run_of_another_task(cli, ar_run, digits_run):
    import perceiver_cli

    _, run, _ = ar_run
    text = "".join(perceiver_cli.load(run).generate("echo ", max_bytes=30, seed=1))
    assert 0 < len(text) <= 30
    result = cli("generate", digits_run, "--prompt", "x")
    assert result.exit_code == 2 and "does not generate text" in result.output


def test_training_on_text_prepares_the_standard_library_when_nothing_is_prepared(workdir, monkeypatch):
    from perceiver_cli.data import text
    from perceiver_cli.data.sources import load_for_recipe
    from perceiver_cli.recipe import DataConfig

    write_corpus(workdir / "lib", files=8, words=100)
    for path in (workdir / "lib").iterdir():
        path.rename(path.with_suffix(".py"))
    monkeypatch.setattr(text, "stdlib_root", lambda: workdir / "lib")
    dataset = load_for_recipe(DataConfig(dataset="text"), mmap=True)
    assert (workdir / "data" / "text" / "manifest.json").is_file() and set(dataset.splits) == {"train", "val", "test"}


def test_ranks_that_start_together_prepare_the_default_text_once(workdir, monkeypatch):
    import threading
    import time

    from perceiver_cli.data import text
    from perceiver_cli.data.sources import load_for_recipe
    from perceiver_cli.recipe import DataConfig

    write_corpus(workdir / "lib", files=8, words=100)
    for path in (workdir / "lib").iterdir():
        path.rename(path.with_suffix(".py"))
    reads = []

    def slow_root():  # each read of the corpus asks for its root once; slow, so the ranks overlap
        reads.append(1)
        time.sleep(0.3)
        return workdir / "lib"
    monkeypatch.setattr(text, "stdlib_root", slow_root)
    loaded = []
    ranks = [threading.Thread(target=lambda: loaded.append(load_for_recipe(DataConfig(dataset="text"))))
             for _ in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert len(reads) == 1 and len(loaded) == 2
    assert all(set(dataset.splits) == {"train", "val", "test"} for dataset in loaded)


def test_mlm_hides_exactly_what_it_says():
    import torch

    from perceiver_cli.model.byte_mlm import MASK
    from perceiver_cli.tasks.mlm import MLMTask
    from types import SimpleNamespace

    stream = np.frombuffer(b"abcab " * 400, dtype=np.uint8)
    recipe = SimpleNamespace(task=SimpleNamespace(context=200, mask_ratio=0.15), train=SimpleNamespace(seed=0))
    task = MLMTask(recipe, SimpleNamespace(name="t", input_spec={"kind": "bytes"}), None)
    starts = np.array([0, 17, 300])
    (tokens, chosen), (target,), treatment = task.masked(stream, starts, torch.Generator().manual_seed(4), "cpu")
    original = torch.from_numpy(stream[starts[:, None] + np.arange(200)].astype(np.int64))
    assert chosen.shape == (3, 30) and torch.equal(target, original.gather(1, chosen))  # round(0.15 x 200)
    for row in range(3):
        assert (treatment[row] == 0).sum() == 24 and (treatment[row] == 1).sum() == 3 and (treatment[row] == 2).sum() == 3
    shown = tokens.gather(1, chosen)
    assert (shown[treatment == 0] == MASK).all() and torch.equal(shown[treatment == 2], target[treatment == 2])
    assert set(shown[treatment == 1].tolist()) <= set(b"abc ")  # replaced by bytes of the real text only
    untouched = torch.ones_like(tokens, dtype=torch.bool).scatter(1, chosen, False)
    assert torch.equal(tokens[untouched], original[untouched])


def test_a_tiny_mlm_run_trains_and_evaluates_per_treatment(cli, workdir):
    prepare(cli, "--from", write_corpus(workdir / "corpus", files=12, words=600), "--split", "0.7,0.15,0.15")
    result = cli("train", "bytes_mlm", *set_args(["task.context=64", "model.num_latents=8", "model.latent_dim=32",
                                                  "model.decoder_dim=32", "model.latent_blocks=1", "model.latent_heads=2",
                                                  "train.epochs=2", "train.batch_size=8", "train.precision=fp32"]))
    assert result.exit_code == 0, result.output
    result = cli("eval", "runs/bytes_mlm")
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "runs" / "bytes_mlm" / "eval_test.json").read_text())
    assert set(report["per_treatment"]) == {"masked", "replaced", "kept"} and report["bytes"] > 0
    assert "per treatment" in result.stdout and "unigram" in result.stdout


def test_bench_of_a_causal_lm_recipe_times_training_generation_and_the_window_sweep(cli, workdir, monkeypatch):
    from perceiver_cli.bench import ar

    monkeypatch.setattr(ar, "SWEEP", (32, 64, 128))
    monkeypatch.setattr(ar, "GENERATED", {True: 8, False: 8})
    result = cli("bench", "bytes_ar", *set_args(TINY_AR), "--mode", "train", "--steps", "2", "--warmup", "1",
                 "--batch", "4", "--sweep", "--json", "bench.json")
    assert result.exit_code == 0, result.output
    document = json.loads((workdir / "bench.json").read_text())
    assert document["input"] == {"kind": "bytes", "context": 48, "latents": 16}
    assert document["results"]["train"]["target_bytes_per_s"] > 0 and document["results"]["train"]["peak_memory_mb"] > 0
    assert document["generation"]["cached_bytes_per_s"] > 0 and document["generation"]["uncached_bytes_per_s"] > 0
    assert [row["context"] for row in document["sweep"]["rows"]] == [32, 64, 128]
    assert document["sweep"]["growth_exponent"] is not None and "growth exponent" in result.stdout
    assert "cached" in result.stdout and "recomputed" in result.stdout


def test_bench_compares_with_lucidrains_perceiver_ar_in_turns(cli, workdir, monkeypatch):
    pytest.importorskip("perceiver_ar_pytorch")
    from perceiver_cli.bench import ar

    monkeypatch.setattr(ar, "GENERATED", {True: 4, False: 4})
    wide_heads = TINY_AR + ["model.latent_dim=64", "model.latent_heads=2"]  # theirs rotates 32 channels of a head
    result = cli("bench", "bytes_ar", *set_args(wide_heads), "--mode", "train", "--steps", "2", "--warmup", "1",
                 "--batch", "4", "--compare", "perceiver-ar", "--json", "bench.json")
    assert result.exit_code == 0, result.output
    compare = json.loads((workdir / "bench.json").read_text())["compare"]
    assert compare["with"] == "perceiver-ar" and compare["speedup"]["train"] > 0
    assert compare["parameters"]["ours"] > 0 and compare["parameters"]["perceiver-ar"] > 0
    assert compare["memory_ratio"]["train"] > 0 and "vs lucidrains/perceiver-ar-pytorch" in result.stdout


def test_export_writes_a_causal_lm_run_as_safetensors_and_refuses_graphs(cli, ar_run, monkeypatch):
    root, run, _ = ar_run
    monkeypatch.chdir(root)
    result = cli("export", run, "--format", "safetensors", "--out", "ar_export")
    assert result.exit_code == 0, result.output
    import perceiver_cli

    text = "".join(perceiver_cli.load(root / "ar_export").generate("alpha ", max_bytes=20, temperature=0))
    assert text == "".join(perceiver_cli.load(run).generate("alpha ", max_bytes=20, temperature=0))
    refused = cli("export", run, "--format", "onnx", "--out", "ar_onnx")
    assert refused.exit_code == 2 and "--format safetensors writes" in refused.output


def test_seeds_of_a_causal_lm_recipe_sum_up_bits_per_byte(cli, workdir):
    prepare(cli, "--from", write_corpus(workdir / "corpus", files=16, words=400))
    tiny = [*TINY_AR, "train.epochs=1"]
    result = cli("seeds", "bytes_ar", "--seeds", "2", *[a for s in tiny for a in ("--set", s)], "--json", "seeds.json")
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "seeds.json").read_text())
    assert summary["metric"] == "bits_per_byte" and not summary["percent"] and len(summary["seeds"]) == 2
    for seed in summary["seeds"]:
        evaluated = json.loads((workdir / seed["run"] / "eval_test.json").read_text())
        assert seed["value"] == evaluated["bits_per_byte"] and 0 < seed["value"] < 8
    assert "bits per byte" in result.stdout and "± " in result.stdout

"""`precision: auto` on both kinds of CPU that run the tests: bf16 autocast where the CPU has bf16
matrix units (AVX512-BF16, AMX), fp32 where it has none (AVX2). The decision is patched both ways, so
each path runs on every machine (bf16 is emulated, slowly, where the units are missing) and a change
of CI machine cannot turn the suite red. Elsewhere, tests that mean a precision pin it."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, patch_cpu_bf16, set_args

# one epoch, with an attention capture (it runs the model under the same autocast)
AUTO = TINY + ["train.precision=auto"]  # the digits recipe says fp32 (its matrices are too small for bf16 to pay)
TRAIN = AUTO + ["train.epochs=1", "train.save_attention_maps=true", "train.attention_interval=1",
                "train.attention_samples=1"]


@pytest.mark.parametrize("has_units", [True, False], ids=["bf16-cpu", "avx2-cpu"])
def test_auto_trains_evaluates_and_benchmarks_at_the_precision_the_cpu_implies(cli, workdir, monkeypatch, has_units):
    from perceiver_cli.bench import run

    patch_cpu_bf16(monkeypatch, has_units)
    # the 2048^2 bf16 peak takes minutes where bf16 is emulated; MFU's denominator is not what is tested
    monkeypatch.setattr(run, "matmul_peak", lambda device, dtype: 1e12)

    trained = cli("train", *set_args(TRAIN))
    assert trained.exit_code == 0, trained.output
    assert ("cpu bf16 autocast ·" if has_units else "cpu fp32 ·") in trained.stdout
    assert f"device cpu bf16 {has_units}" in (workdir / "runs/digits/train.log").read_text()
    assert (workdir / "runs/digits/attention/epoch_0001.npz").is_file()

    # eval decides as training did: its val loss is the one training logged (bf16 vs fp32 differ by ~1e-3)
    evaluated = cli("eval", "runs/digits", "--split", "val")
    assert evaluated.exit_code == 0, evaluated.output
    row = json.loads((workdir / "runs/digits/metrics.jsonl").read_text().splitlines()[-1])
    report = json.loads((workdir / "runs/digits/eval_val.json").read_text())
    assert report["loss"] == pytest.approx(row["val_loss"], abs=2e-5)
    assert report["accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-5)

    benched = cli("bench", *set_args(AUTO), "--steps", 1, "--warmup", 0, "--batch", 4, "--mode", "infer",
                  "--json", "bench.json")
    assert benched.exit_code == 0, benched.output
    environment = json.loads((workdir / "bench.json").read_text())["environment"]
    assert environment["dtype"] == ("bf16" if has_units else "fp32") and environment["cpu_bf16_units"] is has_units

#!/usr/bin/env bash
# The issue-6 benchmark figures: ours vs lucidrains/perceiver-pytorch at the seed-000 CIFAR
# architecture (recipes/cifar10_fourier.yaml), same dtype, stepped in turns in one process, and the
# input-size sweep. Needs: pip install -e '.[compare]'. Results land in bench_results/*.json.
# DTYPE=bf16 on CPUs with AMX/AVX512-BF16 or on a GPU (DEVICE=cuda); on other CPUs bf16 is emulated.
# On a GPU, larger batches keep it busy: BATCH_32=64 BATCH_224=16 STEPS=20. SWEEP=0 skips the sweep.
set -euo pipefail
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-fp32}
OUT=${OUT:-bench_results}
BATCH_32=${BATCH_32:-16}
BATCH_224=${BATCH_224:-2}
STEPS=${STEPS:-6}
mkdir -p "$OUT"
common=(--device "$DEVICE" --dtype "$DTYPE" --mode train --compare lucidrains)
perceiver bench cifar10_fourier "${common[@]}" --input-size 32x32 --batch "$BATCH_32" --steps "$STEPS" --warmup 2 --json "$OUT/cifar32_$DTYPE.json"
perceiver bench cifar10_fourier "${common[@]}" --input-size 224x224 --batch "$BATCH_224" --steps $(( (STEPS + 1) / 2 )) --warmup 1 --json "$OUT/cifar224_$DTYPE.json"
[ "${SWEEP:-1}" = 1 ] || exit 0
perceiver bench cifar10_fourier --device "$DEVICE" --dtype "$DTYPE" --mode train --sweep --batch "$BATCH_224" --steps 4 --warmup 1 --json "$OUT/sweep_$DTYPE.json"

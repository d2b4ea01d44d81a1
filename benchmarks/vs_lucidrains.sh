#!/usr/bin/env bash
# The issue-6 benchmark figures: ours vs lucidrains/perceiver-pytorch at the seed-000 CIFAR
# architecture (recipes/cifar10_fourier.yaml), same dtype, stepped in turns in one process, and the
# input-size sweep. Needs: pip install -e '.[compare]'. Results land in bench_results/*.json.
# DTYPE=bf16 on CPUs with AMX/AVX512-BF16 or on a GPU (DEVICE=cuda); on other CPUs bf16 is emulated.
set -euo pipefail
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-fp32}
OUT=${OUT:-bench_results}
mkdir -p "$OUT"
common=(--device "$DEVICE" --dtype "$DTYPE" --mode train --compare lucidrains)
perceiver bench cifar10_fourier "${common[@]}" --input-size 32x32 --batch 16 --steps 6 --warmup 2 --json "$OUT/cifar32_$DTYPE.json"
perceiver bench cifar10_fourier "${common[@]}" --input-size 224x224 --batch 2 --steps 3 --warmup 1 --json "$OUT/cifar224_$DTYPE.json"
perceiver bench cifar10_fourier --device "$DEVICE" --dtype "$DTYPE" --mode train --sweep --batch 2 --steps 4 --warmup 1 --json "$OUT/sweep_$DTYPE.json"

#!/usr/bin/env bash
# The GPU figures of issues 3 and 6, in parts that each fit a 10-minute slot on one GPU:
#   benchmarks/gpu.sh bench     ours vs lucidrains (bf16 and fp32, 32^2 and 224^2), the input sweep,
#                               MFU at the paper's ImageNet configuration
#   benchmarks/gpu.sh compiled  torch.compile (+ CUDA graphs) at 224^2 vs lucidrains, and at the ImageNet configuration
#   benchmarks/gpu.sh grid      the grid read in its channels: CUDA test, micro-benchmark of its forms,
#                               224^2 vs lucidrains (speed, memory), ImageNet; eager and with train.compile
#   benchmarks/gpu.sh accuracy  cifar10_cpu in fp32 and in bf16 on CIFAR-10 (from CIFAR10_ZIP): same accuracy?
#   benchmarks/gpu.sh train     cifar10_fourier for as many epochs as TRAIN_MINUTES allow
# Everything lands in $OUT (default bench_results/gpu). Needs a CUDA GPU and '.[compare]'.
set -uo pipefail
OUT=${OUT:-bench_results/gpu}
DATA=${CIFAR10_DATA:-data/cifar10}
mkdir -p "$OUT"
log() { echo "== $(date +%T) $*"; }
# Perceiver (ImageNet): 512 x 1024 latents, 8 cross-attends (1 head), 6 latent blocks (8 heads), 224^2, 64 bands
IMAGENET="--set model.num_latents=512 --set model.latent_dim=1024 --set model.cross_attends=8 --set model.latent_blocks=6
  --set model.latent_heads=8 --set model.max_freq=224 --set model.dropout=0.0"

bench() {
  DEVICE=cuda DTYPE=bf16 BATCH_32=64 BATCH_224=16 STEPS=20 OUT="$OUT" timeout 170 bash benchmarks/vs_lucidrains.sh
  DEVICE=cuda DTYPE=fp32 BATCH_32=64 BATCH_224=16 STEPS=10 SWEEP=0 OUT="$OUT" timeout 120 bash benchmarks/vs_lucidrains.sh
  log "ImageNet configuration"
  timeout 90 perceiver bench cifar10_fourier $IMAGENET --input-size 224x224 --batch "${IMAGENET_BATCH:-16}" --device cuda --dtype bf16 \
    --mode train --steps 10 --warmup 3 --json "$OUT/imagenet.json"
}

compiled() {
  # torch.compile with CUDA graphs (train.cuda_graphs is on by default): its reduce-overhead mode
  log "torch.compile, 224^2, vs lucidrains"
  timeout 280 perceiver bench cifar10_fourier --set train.compile=true --input-size 224x224 --batch 16 --device cuda \
    --dtype bf16 --mode train --steps 20 --warmup 5 --compare lucidrains --json "$OUT/compiled224.json"
  log "torch.compile, ImageNet configuration"
  timeout 200 perceiver bench cifar10_fourier $IMAGENET --set train.compile=true --input-size 224x224 \
    --batch "${IMAGENET_BATCH:-16}" --device cuda --dtype bf16 --mode train --steps 10 --warmup 3 --json "$OUT/imagenet_compiled.json"
}

grid() {
  # the grid read in its channels (the default on a GPU since 2026-11-26), most telling first; fits one
  # 10-minute slot with the install
  log "the grid read as token features on this GPU: a model's logits and gradients against the plain path"
  timeout 60 python3 -m pytest -q tests/test_model.py -k token_features_on_a_gpu 2>&1 | tail -3
  log "one shared cross-attend read several times: plain keys/values vs the grid's two forms"
  timeout 40 python3 benchmarks/grid_attention.py  # ImageNet sizes
  timeout 25 python3 benchmarks/grid_attention.py --latents 96 --dim 384 --uses 4
  timeout 25 python3 benchmarks/grid_attention.py --batch 64 --size 32 --latents 96 --dim 384 --uses 4
  log "224^2 vs lucidrains"
  timeout 90 perceiver bench cifar10_fourier --input-size 224x224 --batch 16 --device cuda \
    --dtype bf16 --mode train --steps 20 --warmup 5 --compare lucidrains --json "$OUT/grid_224.json"
  log "ImageNet configuration, eager"
  timeout 60 perceiver bench cifar10_fourier $IMAGENET --input-size 224x224 \
    --batch "${IMAGENET_BATCH:-16}" --device cuda --dtype bf16 --mode train --steps 10 --warmup 3 --json "$OUT/grid_imagenet.json"
  log "ImageNet configuration, torch.compile"
  timeout 170 perceiver bench cifar10_fourier $IMAGENET --set train.compile=true --input-size 224x224 \
    --batch "${IMAGENET_BATCH:-16}" --device cuda --dtype bf16 --mode train --steps 10 --warmup 3 --json "$OUT/gridcompiled_imagenet.json"
  log "torch.compile, 224^2 vs lucidrains"
  timeout 130 perceiver bench cifar10_fourier --set train.compile=true --input-size 224x224 --batch 16 \
    --device cuda --dtype bf16 --mode train --steps 20 --warmup 5 --compare lucidrains --json "$OUT/gridcompiled_224.json"
}

prepare() {
  [ -f "$DATA/manifest.json" ] || { log "prepare"; perceiver prepare cifar10 --from "${CIFAR10_ZIP:-.data/train.zip}" --out "$DATA"; }
}

accuracy() {
  prepare
  for precision in fp32 bf16; do
    log "cifar10_cpu $precision"
    perceiver train recipes/cifar10_cpu.yaml --device cuda --set train.precision=$precision --set data.root="$DATA" \
      --name "gpu_cifar10_cpu_$precision"
    perceiver eval "runs/gpu_cifar10_cpu_$precision" --split val --device cuda
    cp "runs/gpu_cifar10_cpu_$precision/metrics.csv" "$OUT/gpu_cifar10_cpu_$precision.csv"
  done
}

train() {
  prepare
  # as many epochs as fit in TRAIN_MINUTES, from the measured step time (cosine schedule over them)
  local step_ms steps epochs
  perceiver bench cifar10_fourier --device cuda --dtype bf16 --mode train --batch 64 --steps 20 --warmup 5 \
    --json "$OUT/fourier_step.json" >/dev/null
  step_ms=$(python3 -c "import json;print(json.load(open('$OUT/fourier_step.json'))['results']['train']['median_s']*1000)")
  steps=$(python3 -c "import json,math;print(math.ceil(json.load(open('$DATA/manifest.json'))['splits']['train']['count'] / 64))")
  epochs=$(python3 -c "print(max(1, int(${TRAIN_MINUTES:-7} * 60 / ($steps * $step_ms / 1000 * 1.1 + 2))))")
  log "cifar10_fourier: $epochs epochs at $step_ms ms/step"
  perceiver train recipes/cifar10_fourier.yaml --device cuda --set data.root="$DATA" --set train.epochs=$epochs \
    --set optim.scheduler=cosine --set optim.warmup_epochs=1 --name gpu_cifar10_fourier
  perceiver eval runs/gpu_cifar10_fourier --split val --device cuda
  cp runs/gpu_cifar10_fourier/metrics.csv "$OUT/gpu_cifar10_fourier.csv"
}

for part in "$@"; do "$part" 2>&1 | tee "$OUT/$part.log"; done

#!/usr/bin/env bash
# The int8 goal table of docs/int8.md (issue 18): fp32 vs int8 ONNX Runtime, 2 threads,
# batch 1 and 8, one interleaved run per row group (ratios paired by round).
# Usage: bash projects/int8_settings/bench_goals.sh OUT_DIR [cls|psp1|psp8 ...]
set -euo pipefail
out=${1:?usage: bench_goals.sh OUT_DIR [cls|psp1|psp8 ...]}
shift
parts=${*:-cls psp1 psp8}
mkdir -p "$out"
py=${PYTHON:-python}
common=(--variants deploy --backend onnxruntime onnxruntime-int8 --threads 2 --no-flops --force)
for part in $parts; do
  case $part in
    cls)
      $py tools/benchmark.py A0 B0 B1g2 B2 "${common[@]}" --batch 1 --warmup 3 --iters 10 \
        --rounds 7 --out "$out/cls_b1.json"
      $py tools/benchmark.py A0 B0 B1g2 B2 "${common[@]}" --batch 8 --warmup 1 --iters 3 \
        --rounds 7 --out "$out/cls_b8.json" ;;
    psp1)
      $py tools/benchmark.py configs/pspnet_repvgg-b1g2-fast_cityscapes.py "${common[@]}" \
        --batch 1 --warmup 1 --iters 1 --rounds 7 --out "$out/psp_b1.json" ;;
    psp8)
      $py tools/benchmark.py configs/pspnet_repvgg-b1g2-fast_cityscapes.py "${common[@]}" \
        --batch 8 --warmup 1 --iters 1 --rounds 3 --out "$out/psp_b8.json" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done

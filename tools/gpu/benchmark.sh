#!/usr/bin/env bash
# The GPU benchmark behind docs/gpu/: one script, run once on a lent GPU machine.
#
#   bash tools/gpu/benchmark.sh            # on the GPU machine, from the repo root
#   QUICK=1 bash tools/gpu/benchmark.sh    # the same steps, tiny shapes, on any machine
#
# Steps, in priority order (each writes its json/md as soon as it is done; a failing step
# is logged and the next one runs; a step whose estimate no longer fits BUDGET is skipped):
#   a1  Table 4 rows, the paper's protocol: batch 128 at 224x224, 50 + 50 batches, strict
#       fp32 (TF32 off), deployed RepVGG + conv-BN-fused baselines, matmul peak in fp32
#   a2  the same rows with TF32 on (all forms: train, deploy, fused), 2 interleaved rounds,
#       feature-map + allocator memory at batch 32 (paper Fig. 3), matmul peak in TF32
#   a3  Table 6 pair in strict fp32: RepVGG-A0 and B0 training-time vs deployed, 2 rounds
#   b   ours vs timm's and mmpretrain's deployed A0, B0, B2, B3, TF32 on, 5 rounds, every
#       peer given our deployed weights (outputs checked; tools/gpu/peers_weights.py swaps them)
#   d   the six Table 8 PSPNets at 713x713, batch 16, strict fp32, reduced (3 + 8 batches)
#   e   matmul peaks in bf16 and fp16
# Environment: OUT (results folder; the device tool sets it), BUDGET (seconds for all steps,
# default 450), PYTHON (default python3), QUICK=1 (tiny shapes; TF32 steps run as fp32 on a
# CPU). Wheels in .whl/ (tools/gpu/fetch_wheels.sh) are installed into /tmp/site first when
# mmengine is not importable. Results: $OUT/gpu_results.tgz (every json, md and log) and
# $OUT/summary.txt; render one with `python tools/benchmark.py --render FILE.json`.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-work_dirs/gpu_benchmark}
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-450}
[ "$QUICK" = 1 ] && BUDGET=${QUICK_BUDGET:-100000}   # a check of the steps, not of the time
SITE=${SITE:-/tmp/site}
RES=$(mktemp -d /tmp/gpu_results.XXXX)
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONUNBUFFERED=1
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[$(elapsed)s] $*" | tee -a "$RES/summary.txt"; }
bundle() {  # everything so far into one file that comes back ($OUT: at most 8 files)
  tar czf "$OUT/.gpu_results.tgz" -C "$RES" . && mv "$OUT/.gpu_results.tgz" "$OUT/gpu_results.tgz"
  cp "$RES/summary.txt" "$OUT/summary.txt"
}

# ---- environment: carried wheels, mmcv-lite without compiled ops
if ! "$PY" -c 'import mmengine, mmpretrain, mmseg' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl || { say "wheel install failed"; exit 1; }
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
MMCV_DIR=$("$PY" -c 'import mmcv, os; print(os.path.dirname(mmcv.__file__))' 2>/dev/null)
if [ -n "$MMCV_DIR" ] && ! "$PY" -c 'import mmcv.ops' 2>/dev/null; then
  if "$PY" -c 'import importlib.metadata as m; m.distribution("mmcv-lite")' 2>/dev/null \
      && [ -w "$MMCV_DIR" ] && [ ! -e "$MMCV_DIR/_ext.py" ]; then
    cp tools/gpu/mmcv_lite_ext.py "$MMCV_DIR/_ext.py"
    say "mmcv-lite: compiled ops stubbed ($MMCV_DIR/_ext.py)"
  fi
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$RES/summary.txt"
import importlib.metadata as md
import torch
import mmrepvgg  # noqa: F401  (the stack imports)
from projects.benchmark.device import tf32_state
names = ['torch', 'timm', 'mmcv-lite', 'mmcv', 'mmengine', 'mmpretrain', 'mmsegmentation']
vers = []
for n in names:
    try:
        vers.append(f'{n} {md.version(n)}')
    except md.PackageNotFoundError:
        pass
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'
print(f"{gpu}; cuDNN {torch.backends.cudnn.version()}; {', '.join(vers)}")
print('PyTorch defaults:', tf32_state())
EOF
[ "${PIPESTATUS[0]}" = 0 ] || { say "the stack does not import"; bundle; exit 1; }

# ---- the steps
if [ "$QUICK" = 1 ]; then
  CLS=(--batch 1 --warmup 1 --iters 1)            # 224x224: VGG-16's classifier needs it
  SEG=(--batch 1 --shape 128 128 --warmup 1 --iters 1)
  MEMB=1; ROUNDS=1; PEER_ROUNDS=2; EXTRA=(--threads 1)   # a shared CPU: no oversubscription
else
  CLS=(); SEG=(--warmup 3 --iters 8); MEMB=32; ROUNDS=2; PEER_ROUNDS=5; EXTRA=()
fi
DEVICE=$("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
TF32=tf32; [ "$DEVICE" = cpu ] && TF32=fp32   # TF32 exists on CUDA only
TABLE4=(A0 ResNet-18 A1 B0 ResNet-34 A2 B1g4 B1g2 ResNet-50 B1 B2g4 ResNeXt-50 B2 ResNet-101
        VGG-16 ResNet-152 ResNeXt-101 B3g4 B3)
TABLE8=(configs/pspnet_repvgg-b1g2-fast_cityscapes.py configs/pspnet_r50_cityscapes.py
        configs/pspnet_repvgg-b1g2_cityscapes.py configs/pspnet_repvgg-b2-fast_cityscapes.py
        configs/pspnet_r101_cityscapes.py configs/pspnet_repvgg-b2_cityscapes.py)

step() {  # step NAME ESTIMATE_SECONDS BENCHMARK_ARGS...
  local name=$1 est=$2 left t0 rc
  shift 2
  left=$(( BUDGET - $(elapsed) ))
  if [ "$QUICK" != 1 ] && [ "$est" -gt "$left" ]; then
    say "skip $name: estimated ${est}s, ${left}s left"; return
  fi
  say "start $name (estimate ${est}s)"
  t0=$(date +%s)
  timeout --signal=INT $(( left > 30 ? left : 30 )) "$PY" tools/benchmark.py "$@" \
    --device "$DEVICE" ${EXTRA[@]+"${EXTRA[@]}"} --out "$RES/$name.json" \
    --markdown "$RES/$name.md" --force \
    >"$RES/$name.log" 2>&1
  rc=$?
  say "end $name: rc $rc, $(( $(date +%s) - t0 ))s"
  if [ -f "$RES/$name.md" ]; then
    grep -E '^(Device|Protocol|Peak)' "$RES/$name.md" | tee -a "$RES/summary.txt"
  else
    tail -n 5 "$RES/$name.log" | tee -a "$RES/summary.txt"
  fi
  bundle
}

step a1_table4_fp32 180 "${TABLE4[@]}" --variants deploy fused --dtype fp32 --measure-peak \
  ${CLS[@]+"${CLS[@]}"}
step a2_table4_tf32 150 "${TABLE4[@]}" --dtype "$TF32" --rounds "$ROUNDS" --memory \
  --memory-batch "$MEMB" --measure-peak ${CLS[@]+"${CLS[@]}"}
step a3_table6_fp32 25 A0 B0 --variants train deploy --dtype fp32 --rounds "$ROUNDS" \
  ${CLS[@]+"${CLS[@]}"}
step b_peers_tf32 80 A0 B0 B2 B3 --peers --variants deploy --dtype "$TF32" --warmup 20 \
  --rounds "$PEER_ROUNDS" --measure-peak ${CLS[@]+"${CLS[@]}"}
step d_table8_fp32 70 "${TABLE8[@]}" --dtype fp32 --batch 16 ${SEG[@]+"${SEG[@]}"}
step e_peak_bf16 8 --measure-peak --dtype bf16
step e_peak_fp16 8 --measure-peak --dtype fp16
say "done in $(elapsed)s; results in $OUT/gpu_results.tgz"
for f in "$RES"/a1*.md "$RES"/a2*.md "$RES"/a3*.md "$RES"/d_*.md; do  # the headline ratios
  [ -f "$f" ] && { echo "== $(basename "$f")"; grep -A12 "^The paper's speed" "$f" | grep '^|'; }
done
grep -h -A8 '^Ours vs peers' "$RES"/b_peers*.md 2>/dev/null
bundle

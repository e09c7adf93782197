#!/usr/bin/env bash
# Runs on a machine with an NVIDIA GPU, from the repository root, with gpu-kit/ carried there
# (scripts/gpu/prepare.sh builds it): every compiled tiny-BERT artifact for this GPU through
# `qc run --device cuda` against the reference interpreter's outputs (within 1e-5 of max |y|; 1e-4
# for the FP8-activation ones, `*_f8*`, whose tensor-core FP8 sums have the hardware's order), its
# latency with `qc bench`, then the 4-bit GEMV and tensor-core GEMM kernels' checks and timings
# (scripts/gpu/gemv4_bench.py, CuPy, with PyTorch's bf16 matmul as the GEMM's peer), and the FP8
# GEMMs' and the f32 GEMM's checks and timings next to torch._scaled_mm and torch's f32 matmul
# (scripts/gpu/fp8_gemm_bench.py). Writes everything to stdout and to $OUT/gpu.log when OUT is set. Exit code 1 if a check failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
KIT=gpu-kit
LOG=${OUT:-/tmp}/gpu.log
exec > >(tee "$LOG") 2>&1
nvidia-smi -L
cc=$(python3 -c "import cupy; print(cupy.cuda.Device().compute_capability)")
# The kit's artifacts for this GPU (prepare.sh builds sm_90a and sm_80 unless QC_KIT_TARGETS says
# otherwise; Blackwell's sm_100a / sm_120a artifacts run their tcgen05 / block-scaled kernels).
case "$cc" in 90) T=sm_90a ;; 100) T=sm_100a ;; 120) T=sm_120a ;; *) T=sm_80 ;; esac
echo "compute capability $cc: artifacts for $T"
status=0
for qca in "$KIT"/models/*."$T".qca; do
  f=$(basename "$qca" ."$T".qca)
  # FORMAT-prefill artifacts are compiled for the batch-8 inputs.
  case "$f" in *-prefill) d=inputs-prefill ;; *) d=inputs ;; esac
  IN=()
  for n in input_ids token_type_ids attention_mask; do IN+=(--input "$n=$KIT/models/$d/$n.npy"); done
  out=/tmp/gpu-out/$f
  if ! "$KIT/qc" run "$qca" --device cuda "${IN[@]}" -o "$out"; then
    echo "{\"artifact\": \"$f.$T\", \"run\": \"failed\"}"; status=1; continue
  fi
  case "$f" in *_f8*) tol=1e-4 ;; *) tol=1e-5 ;; esac
  python3 - "$out" "$KIT/models/$f.ref" "$f.$T" "$tol" <<'PY' || status=1
import json, os, sys
import numpy as np
got, ref, tag, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
worst = 0.0
for name in sorted(os.listdir(ref)):
    a, b = np.load(os.path.join(got, name)).astype(np.float64), np.load(os.path.join(ref, name)).astype(np.float64)
    worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)))
print(json.dumps({"artifact": tag, "max_rel_err_vs_interpreter": worst, "ok": worst <= tol}))
sys.exit(0 if worst <= tol else 1)
PY
  "$KIT/qc" bench "$qca" "${IN[@]}" --reps 20 || status=1
done
python3 scripts/gpu/gemv4_bench.py "$KIT/gemv4" || status=1
python3 scripts/gpu/fp8_gemm_bench.py "$KIT/fp8_gemm" || status=1
exit $status

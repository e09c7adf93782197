#!/usr/bin/env bash
# Builds gpu-kit/ (git-ignored): what scripts/gpu/run.sh needs on a machine with an NVIDIA GPU but no
# Rust or LLVM (the device machine of the tool library; carry `gpu-kit` to it):
# - gpu-kit/qc: a release qc without the LLVM/MLIR features (it runs .qca artifacts with --device cuda
#   and the reference interpreter; libc is all it links);
# - gpu-kit/models/: the shipped tiny BERT compiled for the targets of QC_KIT_TARGETS (default
#   "sm_90a sm_80"; "sm_100a" or "sm_120a" for a Blackwell machine) with several weight formats
#   (artifact, the compiled IR, inputs, and the interpreter's outputs as the reference), at batch 1
#   (8 rows: the GEMV kernels) and, as `FORMAT-prefill`, at batch 8 (64 rows: the tensor-core GEMMs,
#   on sm_90a for FP8 activations the warpgroup one, on sm_100a the tcgen05 ones);
# - gpu-kit/gemv4/: the 4-bit GEMV and tensor-core GEMM kernels' PTX and check cases
#   (backends/ptx/examples/gemv4_kit.rs);
# - gpu-kit/fp8_gemm/: the FP8 tensor-core GEMM's PTX and check case (examples/fp8_gemm_kit.rs).
# Needs what the test suite needs (bash scripts/test.sh installs it). Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT=gpu-kit
rm -rf "$KIT"
mkdir -p "$KIT/models" "$KIT/gemv4" "$KIT/fp8_gemm"
TD=${CARGO_TARGET_DIR:-target}
read -r -a TARGETS <<< "${QC_KIT_TARGETS:-sm_90a sm_80}"
cargo build --release -p qc
cp "$TD/release/qc" "$KIT/qc"
cargo build -p qc --features cpu
QC=$TD/debug/qc
python3 scripts/models/check.py inputs --model examples/bert-tiny.onnx --out "$KIT/models/inputs" --batch 1 --seq 8
python3 scripts/models/check.py inputs --model examples/bert-tiny.onnx --out "$KIT/models/inputs-prefill" --batch 8 --seq 8
IN=()
for n in input_ids token_type_ids attention_mask; do IN+=(--input "$n=$KIT/models/inputs/$n.npy"); done
INP=()
for n in input_ids token_type_ids attention_mask; do INP+=(--input "$n=$KIT/models/inputs-prefill/$n.npy"); done
CAL=examples/bert-tiny-calib.npz
for f in float int4_g32 nvfp4 mxfp4 fp8_e4m3 mxfp8 int4_g32_a8 int8_a8 fp8_e4m3_f8 mxfp4_f8 nvfp4_f8 nvfp4_a4; do
  case "$f" in
    float) P=(--passes canonicalize,cse,dce) ;;
    int4_g32_a8) P=(--wformat int4_g32 --aformat int8 --calib $CAL) ;;
    # int8 activations and weights: the s8 tensor-core GEMM.
    int8_a8) P=(--wformat int8_channel --aformat int8 --calib $CAL) ;;
    # FP8 activations: the FP8 tensor-core GEMM on sm_90a.
    fp8_e4m3_f8) P=(--wformat fp8_e4m3 --aformat fp8_e4m3 --calib $CAL) ;;
    mxfp4_f8) P=(--wformat mxfp4 --aformat fp8_e4m3 --calib $CAL) ;;
    # NVFP4 weights (groups of 16) by FP8 activations: two FP8 MMAs per k-step.
    nvfp4_f8) P=(--wformat nvfp4 --aformat fp8_e4m3 --calib $CAL) ;;
    # NVFP4 activations: the block fake-quant kernel before the products.
    nvfp4_a4) P=(--wformat nvfp4 --aformat nvfp4 --calib $CAL) ;;
    *) P=(--wformat "$f") ;;
  esac
  "$QC" compile examples/bert-tiny.onnx "${P[@]}" --emit qir -o "$KIT/models/$f.qir"
  "$QC" run "$KIT/models/$f.qir" "${IN[@]}" -o "$KIT/models/$f.ref"
  for t in "${TARGETS[@]}"; do
    "$QC" compile examples/bert-tiny.onnx "${P[@]}" --shape batch=1 --shape seq=8 --target "$t" -o "$KIT/models/$f.$t.qca"
  done
  case "$f" in
    int4_g32|nvfp4|mxfp4|mxfp4_f8|nvfp4_f8|fp8_e4m3_f8|int4_g32_a8|nvfp4_a4)
      "$QC" run "$KIT/models/$f.qir" "${INP[@]}" -o "$KIT/models/$f-prefill.ref"
      for t in "${TARGETS[@]}"; do
        "$QC" compile examples/bert-tiny.onnx "${P[@]}" --shape batch=8 --shape seq=8 --target "$t" -o "$KIT/models/$f-prefill.$t.qca"
      done ;;
  esac
done
cargo run -q -p qc-backend-ptx --example gemv4_kit -- "$KIT/gemv4"
cargo run -q -p qc-backend-ptx --example fp8_gemm_kit -- "$KIT/fp8_gemm"
du -sh "$KIT"

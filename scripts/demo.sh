#!/usr/bin/env bash
# The main job on the example model that ships with the repository (examples/bert-tiny.onnx, a 2-layer
# BERT-style encoder, with calibration data examples/bert-tiny-calib.npz): compile it to NVFP4 weights
# with GPTQ, write the quantized IR to target/demo/bert-tiny-nvfp4.qir and an XLA artifact (StableHLO,
# target/demo/bert-tiny-nvfp4.qca, summarized by qc inspect), then print the per-layer report of
# RTN vs GPTQ for nvfp4 and mxfp4 (HTML with plots in target/demo/report.html). Builds qc when needed,
# with the XLA backend (the `xla` feature links MLIR 22: bash .ci/install-toolchain.sh installs it). Extra
# arguments go to `qc compile` (e.g. --print-ir-after-all, --rotate block:16, --aformat fp8_e4m3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-toolchain.sh   # LLVM/MLIR 22 for the xla feature (seconds when present)
cargo build --quiet --release --locked -p qc --features xla
qc=${CARGO_TARGET_DIR:-target}/release/qc
mkdir -p target/demo
"$qc" compile examples/bert-tiny.onnx --wformat nvfp4 --method gptq --calib examples/bert-tiny-calib.npz \
    --emit qir -o target/demo/bert-tiny-nvfp4.qir "$@"
echo "wrote target/demo/bert-tiny-nvfp4.qir ($(grep -c 'quant.matmul' target/demo/bert-tiny-nvfp4.qir) quantized matmuls)"
"$qc" compile examples/bert-tiny.onnx --wformat nvfp4 --target xla --shape batch=1 --shape seq=16 \
    -o target/demo/bert-tiny-nvfp4.qca
"$qc" inspect target/demo/bert-tiny-nvfp4.qca
"$qc" report examples/bert-tiny.onnx --formats nvfp4,mxfp4 --method rtn,gptq \
    --calib examples/bert-tiny-calib.npz -o target/demo/report.html
echo "wrote target/demo/report.html"

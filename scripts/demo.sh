#!/usr/bin/env bash
# The main job on the example that ships with the repository: parse, verify and optimize an encoder FFN
# block with quantized weights, printing the IR after every pass. Builds qc when needed (the qc binary
# links neither LLVM nor MLIR, so this needs only a Rust toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release --locked -p qc -- opt examples/encoder-ffn.qir \
    --passes canonicalize,cse,dce --print-ir-after-all "$@"

#!/usr/bin/env bash
# The whole test suite. Installs what it needs when it is missing (LLVM/MLIR 22 and ptxas for the backend
# crates, the Python oracles for the conformance tests and JAX for the XLA backend's), then runs every test
# of the workspace, with qc's `xla` feature (qc compile --target xla, which links MLIR) and `cpu` feature
# (qc compile --target x86-64-v4|x86-64-v3 and qc run ARTIFACT.qca, which use LLVM 22 and its MLIR tools).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-toolchain.sh
if [ -f .ci/install-python.sh ]; then bash .ci/install-python.sh; fi
cargo test --workspace --locked --features qc/xla,qc/cpu

#!/usr/bin/env bash
# The whole test suite. Installs what it needs when it is missing (LLVM/MLIR 22 and ptxas for the backend
# crates, the Python oracles for the conformance tests), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-toolchain.sh
if [ -f .ci/install-python.sh ]; then bash .ci/install-python.sh; fi
cargo test --workspace --locked

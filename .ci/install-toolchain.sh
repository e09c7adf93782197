#!/usr/bin/env bash
# Installs the system toolchain that qc's backends build and test against, only what is missing:
#   - LLVM 22 and MLIR 22 from Debian (bookworm-security carries 1:22.1.x): llvm-22-dev (llvm-config,
#     libLLVM.so.22.1 and the static libs), libmlir-22-dev (MLIR C API static libs and headers),
#     mlir-22-tools (mlir-tblgen), libpolly-22-dev (llvm-config --link-static lists Polly), libzstd-dev
#     (LLVM's system libs), libclang1-22 + libclang-common-22-dev (bindgen in mlir-sys needs libclang and
#     clang's builtin headers);
#   - ptxas (CUDA 13) from PyPI's nvidia-cuda-nvcc, for the PTX backend's tests.
# Idempotent: a second run only checks files and costs about a second. Prints the ptxas path at the end.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix=/usr/lib/llvm-22
packages=(llvm-22-dev libmlir-22-dev mlir-22-tools libpolly-22-dev libzstd-dev libclang1-22 libclang-common-22-dev)

# One file per package that proves it is installed (cheaper than asking dpkg for each).
declare -A marker=(
    [llvm-22-dev]="$prefix/bin/llvm-config"
    [libmlir-22-dev]="$prefix/include/mlir-c/IR.h"
    [mlir-22-tools]="$prefix/bin/mlir-tblgen"
    [libpolly-22-dev]="$prefix/lib/libPolly.a"
    [libzstd-dev]="/usr/include/zstd.h"
    [libclang1-22]="$prefix/lib/libclang-22.so.1"
    [libclang-common-22-dev]="$prefix/lib/clang/22/include/stddef.h"
)

missing=()
for p in "${packages[@]}"; do
    if [[ ! -e "${marker[$p]}" ]] && ! dpkg -s "$p" >/dev/null 2>&1; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    echo "install-toolchain: installing ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version="$("$prefix/bin/llvm-config" --version)"
case "$version" in
    22.*) ;;
    *) echo "install-toolchain: $prefix/bin/llvm-config reports $version, expected 22.x" >&2; exit 1 ;;
esac
echo "install-toolchain: LLVM/MLIR $version at $prefix"

if ! ptxas="$("$here/find-ptxas.sh" 2>/dev/null)"; then
    echo "install-toolchain: installing ptxas (pip nvidia-cuda-nvcc)"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore nvidia-cuda-nvcc
    ptxas="$("$here/find-ptxas.sh")"
fi
echo "install-toolchain: ptxas $ptxas ($("$ptxas" --version | sed -n 's/.*\(release [0-9.]*\).*/\1/p'))"

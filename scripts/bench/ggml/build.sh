#!/usr/bin/env bash
# Builds llama.cpp's ggml (CPU backend only) and the `ggml_matmul` benchmark tool, a peer of the
# quantized GEMV / GEMM benchmarks (backends/llvm/benches/gemv.rs).
#
#   bash scripts/bench/ggml/build.sh
#
# Source: the llama-cpp-python sdist from PyPI (it vendors llama.cpp, ggml included, under
# vendor/llama.cpp/ggml), pinned below; only ggml/ is configured and built, never the whole
# llama.cpp. cmake and ninja come from PyPI (a venv under the output folder) when not on PATH.
# Release build, GGML_NATIVE=ON (-march=native: AVX-512 where the host has it), static libraries,
# no BLAS / OpenMP / GPU backends (ggml's own thread pool), llamafile's sgemm left at its default
# (on, as in llama.cpp's own builds). Built with `nice` and -j2 (override with GGML_BUILD_JOBS).
#
# Output (git-ignored): target/ggml-bench/ggml_matmul (the tool), target/ggml-bench/build (the
# ggml build tree: libggml*.a), target/ggml-bench/cache (the sdist), target/ggml-bench/src (the
# unpacked ggml/). Idempotent: a second run with nothing changed returns in well under a second.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$root/target/ggml-bench"
cache="$out/cache"
src="$out/src/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
build="$out/build-$LLAMA_CPP_PYTHON_VERSION"
tool="$out/ggml_matmul"
stamp="$out/.built-$LLAMA_CPP_PYTHON_VERSION"
jobs="${GGML_BUILD_JOBS:-2}"

# Fast path: the tool is newer than its source and this script.
if [[ -x "$tool" && -f "$stamp" && "$tool" -nt "$here/ggml_matmul.c" && "$tool" -nt "$here/build.sh" ]]; then
    echo "ggml_matmul up to date: $tool"
    exit 0
fi

mkdir -p "$cache" "$out/src"
t_start=$SECONDS

# 1. The sdist. --no-binary only for the package itself: its build backend's requirements
# (scikit-build-core, needed by pip to read the metadata) come as wheels.
sdist="$cache/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
if [[ ! -f "$sdist" ]]; then
    echo "downloading llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (sdist) from PyPI"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$cache"
fi

# 2. ggml/ only, unpacked once.
ggml_src="$src/vendor/llama.cpp/ggml"
if [[ ! -f "$ggml_src/CMakeLists.txt" ]]; then
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xzf "$sdist" -C "$src.tmp" --strip-components=1 \
        "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp/ggml"
    # The llama.cpp commit that this release vendors, from its changelog.
    tar -xzOf "$sdist" "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/CHANGELOG.md" 2>/dev/null |
        awk -v v="## [$LLAMA_CPP_PYTHON_VERSION]" '$0 == v {on = 1; next} on && /^## / {exit}
            on && match($0, /llama\.cpp@[0-9a-f]+/) {print substr($0, RSTART + 10, RLENGTH - 10); exit}' \
        >"$src.tmp/LLAMA_CPP_COMMIT" || true
    # The sdist leaves out ggml.pc.in (a pkg-config template that a standalone configure reads);
    # an empty one will do, nothing here installs.
    pc="$src.tmp/vendor/llama.cpp/ggml/ggml.pc.in"
    [[ -f "$pc" ]] || : >"$pc"
    rm -rf "$src"
    mv "$src.tmp" "$src"
fi
llama_commit="$(cat "$src/LLAMA_CPP_COMMIT" 2>/dev/null || true)"
ggml_version="$(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' "$ggml_src/CMakeLists.txt" | paste -sd.)"
version="llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, ggml $ggml_version${llama_commit:+, llama.cpp@$llama_commit}"

# 3. cmake and ninja: from PATH, else from PyPI into a venv.
tools_bin=""
if ! command -v cmake >/dev/null 2>&1 || ! command -v ninja >/dev/null 2>&1; then
    venv="$out/venv"
    if [[ ! -x "$venv/bin/cmake" || ! -x "$venv/bin/ninja" ]]; then
        echo "installing cmake and ninja from PyPI into $venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --only-binary :all: cmake ninja
    fi
    tools_bin="$venv/bin"
fi
if [[ -n "$tools_bin" ]]; then
    export PATH="$tools_bin:$PATH"
fi

# 4. Configure ggml (CPU backend only) and build its static libraries.
if [[ ! -f "$build/build.ninja" ]]; then
    cmake -S "$ggml_src" -B "$build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=ON \
        -DGGML_CPU=ON \
        -DGGML_BLAS=OFF \
        -DGGML_OPENMP=OFF \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF \
        -DGGML_OPENCL=OFF -DGGML_RPC=OFF -DGGML_WEBGPU=OFF \
        -DGGML_CCACHE=OFF \
        -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF \
        >"$out/cmake-configure.log" 2>&1 || { cat "$out/cmake-configure.log"; exit 1; }
fi
nice -n 10 cmake --build "$build" --target ggml ggml-base ggml-cpu -j "$jobs"

# 5. The tool, linked statically against the three ggml libraries.
libs=()
for l in ggml ggml-cpu ggml-base; do
    f="$(find "$build" -name "lib$l.a" | head -n1)"
    [[ -n "$f" ]] || { echo "lib$l.a not found under $build" >&2; exit 1; }
    libs+=("$f")
done
cc="${CC:-cc}"
nice -n 10 "$cc" -O2 -march=native -std=c11 -Wall -Wextra \
    -DQC_GGML_VERSION="\"$version\"" \
    -I "$ggml_src/include" \
    "$here/ggml_matmul.c" "${libs[@]}" \
    -lstdc++ -lm -lpthread -o "$tool.tmp"
mv "$tool.tmp" "$tool"
touch "$stamp"
echo "built $tool in $((SECONDS - t_start)) s"

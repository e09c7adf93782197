#!/usr/bin/env bash
# Prints the path of a ptxas executable, or exits 1 (with a message on stderr) when there is none.
# Search order, the same as qc_backend_ptx::ptxas::find_ptxas():
#   1. $QC_PTXAS, when set and non-empty (it must be executable, else exit 1);
#   2. nvidia/cu13/bin/ptxas, then nvidia/cuda_nvcc/bin/ptxas, in every directory of python3's `nvidia`
#      package (pip install nvidia-cuda-nvcc puts CUDA 13's ptxas at <site-packages>/nvidia/cu13/bin/ptxas);
#   3. ptxas on PATH.
set -euo pipefail

if [[ -n "${QC_PTXAS:-}" ]]; then
    if [[ -f "$QC_PTXAS" && -x "$QC_PTXAS" ]]; then
        printf '%s\n' "$QC_PTXAS"
        exit 0
    fi
    echo "find-ptxas: QC_PTXAS=$QC_PTXAS is not an executable file" >&2
    exit 1
fi

if command -v python3 >/dev/null 2>&1; then
    while IFS= read -r dir; do
        [[ -n "$dir" ]] || continue
        for layout in cu13/bin/ptxas cuda_nvcc/bin/ptxas; do
            if [[ -f "$dir/$layout" && -x "$dir/$layout" ]]; then
                printf '%s\n' "$dir/$layout"
                exit 0
            fi
        done
    done < <(python3 -c 'import nvidia
for p in nvidia.__path__: print(p)' 2>/dev/null || true)
fi

if path=$(command -v ptxas 2>/dev/null); then
    printf '%s\n' "$path"
    exit 0
fi

echo "find-ptxas: no ptxas (QC_PTXAS unset, none in python3's nvidia package, none on PATH)" >&2
exit 1

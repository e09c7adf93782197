#!/usr/bin/env bash
# Builds the 1B-class models (BERT-large shapes, Llama-3.2-1B shapes with a 32000 vocabulary; random
# weights, one external data file each) under a gitignored folder, then for each:
#   - `qc import` under /usr/bin/time -v: peak RSS next to the model's size and the size of one layer;
#   - `qc run` on one short input (batch 1, seq ${SEQ:-8}) under /usr/bin/time -v, onnxruntime on the same
#     input, and the comparison (scripts/models/check.py compare, tolerance ${TOL:-1e-4} of the scale).
# Prints a markdown table (the figures in docs/BENCHMARKS.md come from it).
#
#   bash scripts/models/measure.sh                 # both models
#   MODELS="llama" SKIP_RUN=1 bash scripts/models/measure.sh
#
# Environment: MODELS_DIR (default target/models; the models are 1.3 GB and 4.4 GB, never commit them),
# QC (a qc binary; default: cargo build --release), SEQ, TOL, MODELS, SKIP_RUN.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
dir="${MODELS_DIR:-$repo/target/models}"
seq="${SEQ:-8}"
tol="${TOL:-1e-4}"
models="${MODELS:-bert llama}"
mkdir -p "$dir"
if [ -z "${QC:-}" ]; then
    cargo build --release --quiet -p qc --bin qc
    QC="${CARGO_TARGET_DIR:-$repo/target}/release/qc"
fi
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time is missing (apt-get install time)" >&2; exit 2; }
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB, $(uname -srm); $(date -u +%F)"
df -h "$dir" | tail -1

# Field of /usr/bin/time -v output: peak RSS in MiB, wall seconds.
rss_mib() { awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$1"; }
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; printf "%.1f", s}' "$1"; }

rows=()
for m in $models; do
    model="$dir/$m-1b.onnx"
    if [ ! -f "$model" ] || [ ! -f "$model.data" ]; then
        python3 scripts/models/make_$m.py --config 1b --out "$model"
    fi
    read -r total layer <<<"$(python3 - "$model" <<'EOF'
import os, sys, onnx, numpy as np
from onnx import helper
path = sys.argv[1]
m = onnx.load(path, load_external_data=False)
size = lambda t: int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
layer = sum(size(t) for t in m.graph.initializer if ".layers.0." in t.name or ".layer.0." in t.name)
total = os.path.getsize(path) + (os.path.getsize(path + ".data") if os.path.exists(path + ".data") else 0)
print(total, layer)
EOF
)"
    log="$dir/$m-import.time"
    /usr/bin/time -v "$QC" import "$model" -o "$dir/$m-1b.qir" 2>"$log" || { cat "$log"; exit 1; }
    imp_rss=$(rss_mib "$log"); imp_s=$(wall_s "$log")
    echo "$m: model $((total / 1048576)) MiB, one layer $((layer / 1048576)) MiB; qc import: peak RSS $imp_rss MiB, $imp_s s"
    run_cols="| - | - | - | -"
    if [ -z "${SKIP_RUN:-}" ]; then
        python3 scripts/models/check.py inputs --model "$model" --out "$dir/$m-in" --batch 1 --seq "$seq"
        args=()
        for f in "$dir/$m-in"/*.npy; do args+=(--input "$(basename "$f" .npy)=$f"); done
        log="$dir/$m-run.time"
        rm -rf "$dir/$m-qc"
        /usr/bin/time -v "$QC" run "$model" "${args[@]}" -o "$dir/$m-qc" 2>"$log" &
        tpid=$!
        anon=0
        # Peak anonymous memory (RSS less the mapped model file's pages), sampled every 0.2 s.
        while kill -0 "$tpid" 2>/dev/null; do
            for q in $(pgrep -P "$tpid" || true); do
                a=$(awk '/^RssAnon:/{print $2}' "/proc/$q/status" 2>/dev/null || echo 0)
                [ "${a:-0}" -gt "$anon" ] && anon=$a
            done
            sleep 0.2
        done
        wait "$tpid" || { cat "$log"; exit 1; }
        run_rss=$(rss_mib "$log"); run_s=$(wall_s "$log"); anon=$((anon / 1024))
        log="$dir/$m-ort.time"
        /usr/bin/time -v python3 scripts/models/check.py reference --engine ort --model "$model" \
            --inputs "$dir/$m-in" --out "$dir/$m-ref" 2>"$log" || { cat "$log"; exit 1; }
        ort_s=$(wall_s "$log"); ort_rss=$(rss_mib "$log")
        cmp=$(python3 scripts/models/check.py compare --expected "$dir/$m-ref" --actual "$dir/$m-qc" --tol "$tol") \
            && verdict=ok || verdict=MISMATCH
        echo "$cmp"
        rel=$(echo "$cmp" | sed -n 's/.*(\([0-9.e+-]*\) of scale.*/\1/p' | sort -g | tail -1)
        run_cols="| $run_rss MiB (anon $anon MiB), $run_s s | $ort_rss MiB, $ort_s s | $rel ($verdict)"
        [ "$verdict" = ok ] || status=1
    fi
    rows+=("| $m-1b | $((total / 1048576)) MiB | $((layer / 1048576)) MiB | $imp_rss MiB, $imp_s s $run_cols |")
done
echo
echo "| model | file (onnx + data) | one layer | qc import: peak RSS, wall | qc run seq $seq: peak RSS (anonymous part, sampled), wall | onnxruntime: peak RSS, wall | max abs diff / max abs ref |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "${status:-0}"

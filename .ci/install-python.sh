#!/usr/bin/env bash
# Installs the Python oracles that qc-quant's conformance tests call (dialects/quant/tests/):
#   - numpy;
#   - ml_dtypes >= 0.5.1 (float4_e2m1fn, float6_*, float8_*, float8_e8m0fnu, int2, int4);
#   - onnx >= 1.18 (the reference evaluator's blocked QuantizeLinear / DequantizeLinear with FLOAT4E2M1
#     at opset 23 and FLOAT8E8M0 at opset 24);
#   - onnxruntime (the reference the real-model tests, compiler/tests/models.rs, compare qc run with);
#   - jax (CPU; its XLA client compiles and runs the StableHLO of `qc compile --target xla`:
#     scripts/xla/run_stablehlo.py, backends/hlo/tests/xla.rs, compiler/tests/xla.rs).
# The versions are pinned: tests/onnx-conformance/manifest.txt and the golden decode tables were made
# with exactly these, and the conformance ratchet refuses data from another onnx version.
# Idempotent: when the five import already, it only checks (about a second).
set -euo pipefail

py="${PYTHON:-python3}"
if "$py" -c 'import ml_dtypes, onnx, numpy, onnxruntime, jax, sys
from packaging.version import Version as V
ok = (ml_dtypes.__version__, onnx.__version__, onnxruntime.__version__, jax.__version__) == ("0.6.0", "1.23.2", "1.32.0", "0.10.2")
sys.exit(0 if ok else 1)' >/dev/null 2>&1; then
    exit 0
fi
"$py" -m pip install --quiet --disable-pip-version-check "numpy>=1.26" "ml-dtypes==0.6.0" "onnx==1.23.2" "onnxruntime==1.32.0" packaging \
    "jax==0.10.2"
"$py" -c 'import ml_dtypes, onnx, numpy, onnxruntime, jax; print("python oracles: ml_dtypes", ml_dtypes.__version__, "onnx", onnx.__version__, "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__, "jax", jax.__version__)'

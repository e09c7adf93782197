#!/usr/bin/env bash
# Installs the Python oracles that qc-quant's conformance tests call (dialects/quant/tests/):
#   - numpy;
#   - ml_dtypes >= 0.5.1 (float4_e2m1fn, float6_*, float8_*, float8_e8m0fnu, int2, int4);
#   - onnx >= 1.18 (the reference evaluator's blocked QuantizeLinear / DequantizeLinear with FLOAT4E2M1
#     at opset 23 and FLOAT8E8M0 at opset 24).
# Idempotent: when the three import already, it only checks (about a second).
set -euo pipefail

py="${PYTHON:-python3}"
if "$py" -c 'import ml_dtypes, onnx, numpy, sys
from packaging.version import Version as V
ok = V(ml_dtypes.__version__) >= V("0.5.1") and V(onnx.__version__) >= V("1.18")
sys.exit(0 if ok else 1)' >/dev/null 2>&1; then
    exit 0
fi
"$py" -m pip install --quiet --disable-pip-version-check "numpy>=1.26" "ml-dtypes>=0.5.1" "onnx>=1.18" packaging
"$py" -c 'import ml_dtypes, onnx, numpy; print("python oracles: ml_dtypes", ml_dtypes.__version__, "onnx", onnx.__version__, "numpy", numpy.__version__)'

"""Writes ONNX models exercising Cast to and from FP8 / FP4 / E8M0 / INT4 (both saturate settings),
blocked QuantizeLinear -> DequantizeLinear (FP8, INT4, FP4, INT8) and DynamicQuantizeLinear, with inputs
that include NaN, +-Inf and overflow, plus the ONNX reference evaluator's outputs, into OUTDIR.
Usage: python3 scripts/onnx/qdq_cases.py OUTDIR   (writes OUTDIR/cases.txt: one `name input outputs...` line)."""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(1)
x = (rng.standard_normal((4, 32)) * 3).astype(np.float32)
x[0, :6] = [np.nan, np.inf, -np.inf, 1e6, -1e6, 2.5e-3]
x2 = np.nan_to_num(x, posinf=5, neginf=-5, nan=0).clip(-50, 50)
np.save(f"{out}/x.npy", x)
np.save(f"{out}/x2.npy", x2)
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])
cases = []


def save(name, nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    m.ir_version = 10
    onnx.save(m, f"{out}/{name}.onnx")
    return m


for dt, nm in [(TensorProto.FLOAT8E4M3FN, "e4m3"), (TensorProto.FLOAT8E5M2, "e5m2"), (TensorProto.FLOAT8E4M3FNUZ, "e4m3fnuz"),
               (TensorProto.FLOAT4E2M1, "fp4"), (TensorProto.INT4, "int4"), (TensorProto.UINT4, "uint4"),
               (TensorProto.UINT8, "u8"), (TensorProto.FLOAT8E8M0, "e8m0")]:
    for sat in (0, 1):
        name = f"cast_{nm}_{sat}"
        m = save(name, [helper.make_node("Cast", ["x"], ["c"], to=dt, saturate=sat), helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT)], [X], [Y])
        cases.append((name, "x", ["y"], m))
scale = (np.abs(rng.standard_normal((4, 2))) + 0.1).astype(np.float32)
for dt, nm in [(TensorProto.FLOAT8E4M3FN, "e4m3"), (TensorProto.INT4, "int4"), (TensorProto.FLOAT4E2M1, "fp4"), (TensorProto.INT8, "i8")]:
    name = f"qdq_{nm}"
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], axis=1, block_size=16, output_dtype=dt),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=16)]
    m = save(name, nodes, [X], [Y], [numpy_helper.from_array(scale, "s")])
    cases.append((name, "x", ["y"], m))
m = save("dynamic", [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])], [X],
         [helper.make_tensor_value_info(o, t, None) for o, t in [("q", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8)]])
cases.append(("dynamic", "x2", ["q", "s", "z"], m))

with open(f"{out}/cases.txt", "w") as f:
    for name, inp, outs, m in cases:
        res = ReferenceEvaluator(m).run(None, {"x": x if inp == "x" else x2})
        for o, r in zip(outs, res):
            np.save(f"{out}/ref_{name}_{o}.npy", np.asarray(r).astype(np.float32))
        f.write(" ".join([name, inp] + outs) + "\n")

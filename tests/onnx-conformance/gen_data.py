#!/usr/bin/env python3
"""Writes the ONNX conformance test data that compiler/tests/onnx_conformance.rs runs.

Usage: gen_data.py --out DIR

DIR receives one folder per test, laid out as the ONNX repository lays out its backend test data:

    DIR/<suite>/<test>/model.onnx
    DIR/<suite>/<test>/test_data_set_<k>/input_<i>.pb, output_<i>.pb

and DIR/index.tsv, one row per test (see COLUMNS). Suites:

- node: every ONNX backend node test, generated from the installed onnx package's test case collection
  (onnx.backend.test.loader.load_node_model_tests(), the same cases `backend-test-tools generate-data`
  would write);
- light: the nine "light" models the onnx wheel ships (onnx/backend/test/data/light). Their input is the
  one ONNX's backend test runner generates (arange(n) / n in float32, unknown dimensions 1), their expected
  output the light_<model>_output_0.pb file beside each model, their tolerances ONNX's (densenet121 rtol
  2e-3, others 1e-3; atol 1e-7);
- pytorch-converted, pytorch-operator, simple: the model tests the wheel ships, copied as they are
  (tolerances from data.json when present, else rtol 1e-3, atol 1e-7).

Opsets: qc imports the default domain at opsets 13 to 24 (compiler/src/import/onnx/load.rs). A test whose
model imports another opset is converted with ONNX's own onnx.version_converter to the nearest supported
opset (13 or 24) when the converter can (the expected outputs are unchanged; index.tsv records both
opsets); when it cannot, the model is kept as it is and qc rejects it.

The output is cached: when DIR/STAMP names this script's hash and the onnx version, nothing is done. The
folder is written beside DIR and renamed into place, so an interrupted run leaves no half-written data.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import sys
import warnings

SUPPORTED_OPSETS = (13, 24)
COLUMNS = [
    "suite",  # node, light, pytorch-converted, pytorch-operator, simple
    "name",  # the test's name (its folder)
    "opset",  # default-domain opset of the model as ONNX ships it ("-" when it imports none)
    "run_opset",  # the opset of the model written (after conversion), "-" when none
    "tensor_only",  # 1 when every graph input and output is a non-string tensor
    "quant_cast",  # 1 for QuantizeLinear/DequantizeLinear/DynamicQuantizeLinear/Cast/CastLike tests on FP8/FP4/E8M0/INT4
    "exact",  # 1 when outputs must match bit for bit (the quantize/dequantize/cast families)
    "rtol",
    "atol",
    "ops",  # the op types of the model ONNX ships, comma-separated, sorted
]
QUANT_FAMILIES = (
    "test_quantizelinear",
    "test_dequantizelinear",
    "test_dynamicquantizelinear",
    "test_cast_",
    "test_castlike_",
)
LIGHT = [
    ("test_bvlc_alexnet", "bvlc_alexnet", 1e-3, 1e-7),
    ("test_densenet121", "densenet121", 2e-3, 1e-7),
    ("test_inception_v1", "inception_v1", 1e-3, 1e-7),
    ("test_inception_v2", "inception_v2", 1e-3, 1e-7),
    ("test_resnet50", "resnet50", 1e-3, 1e-7),
    ("test_shufflenet", "shufflenet", 1e-3, 1e-7),
    ("test_squeezenet", "squeezenet", 1e-3, 1e-7),
    ("test_vgg19", "vgg19", 1e-3, 1e-7),
    ("test_zfnet512", "zfnet512", 1e-3, 1e-7),
]
MODEL_SUITES = ["pytorch-converted", "pytorch-operator", "simple"]


def stamp_text() -> str:
    with open(__file__, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return f"gen_data.py {digest} onnx {importlib.metadata.version('onnx')}\n"


def default_opset(model) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


def convert(model):
    """The model converted into qc's opset range when it is outside and ONNX's converter can; else it."""
    import onnx
    import onnx.version_converter

    v = default_opset(model)
    lo, hi = SUPPORTED_OPSETS
    if v is None or lo <= v <= hi:
        return model
    try:
        m = onnx.version_converter.convert_version(model, hi if v > hi else lo)
        onnx.checker.check_model(m)
        return m
    except Exception:  # the converter has no adapter for some op: keep the model as ONNX ships it
        return model


def tensor_only(model) -> bool:
    import onnx

    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.type.WhichOneof("value") != "tensor_type":
            return False
        if vi.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            return False
    return True


def quant_cast(name: str, model) -> bool:
    import onnx

    special = {
        onnx.TensorProto.FLOAT8E4M3FN,
        onnx.TensorProto.FLOAT8E4M3FNUZ,
        onnx.TensorProto.FLOAT8E5M2,
        onnx.TensorProto.FLOAT8E5M2FNUZ,
        onnx.TensorProto.FLOAT4E2M1,
        onnx.TensorProto.FLOAT8E8M0,
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
    }
    if not name.startswith(QUANT_FAMILIES):
        return False
    types = set()
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.type.WhichOneof("value") == "tensor_type":
            types.add(vi.type.tensor_type.elem_type)
    for t in model.graph.initializer:
        types.add(t.data_type)
    for n in model.graph.node:
        for a in n.attribute:
            if a.name in ("to", "output_dtype") and a.type == onnx.AttributeProto.INT:
                types.add(a.i)
    return bool(types & special)


def write_value(path: str, value, type_proto, name: str) -> None:
    from onnx import TensorProto, numpy_helper

    kind = type_proto.WhichOneof("value")
    if kind == "map_type":
        proto = numpy_helper.from_dict(value, name)
    elif kind == "sequence_type":
        proto = numpy_helper.from_list(value, name)
    elif kind == "optional_type":
        proto = numpy_helper.from_optional(value, name)
    elif isinstance(value, TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def row(suite, name, shipped, written, rtol, atol) -> str:
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    ops = sorted({n.op_type for n in shipped.graph.node}) or ["-"]
    qc = quant_cast(name, shipped)
    exact = name.startswith(QUANT_FAMILIES)
    cols = [
        suite,
        name,
        fmt(default_opset(shipped)),
        fmt(default_opset(written)),
        str(int(tensor_only(shipped))),
        str(int(qc)),
        str(int(exact)),
        repr(float(rtol)),
        repr(float(atol)),
        ",".join(ops),
    ]
    return "\t".join(cols) + "\n"


def gen_node(out: str, rows: list[str]) -> None:
    import onnx.backend.test.loader as loader

    for case in sorted(loader.load_node_model_tests(), key=lambda c: c.name):
        d = os.path.join(out, "node", case.name)
        os.makedirs(d)
        model = convert(case.model)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(model.SerializeToString())
        for k, (inputs, outputs) in enumerate(case.data_sets):
            ds = os.path.join(d, f"test_data_set_{k}")
            os.makedirs(ds)
            g = case.model.graph
            for j, v in enumerate(inputs):
                write_value(os.path.join(ds, f"input_{j}.pb"), v, g.input[j].type, g.input[j].name)
            for j, v in enumerate(outputs):
                write_value(os.path.join(ds, f"output_{j}.pb"), v, g.output[j].type, g.output[j].name)
        rows.append(row("node", case.name, case.model, model, case.rtol, case.atol))


def gen_light(data: str, out: str, rows: list[str]) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    for test, model_name, rtol, atol in LIGHT:
        src = os.path.join(data, "light", f"light_{model_name}.onnx")
        shipped = onnx.load(src)
        model = convert(shipped)
        d = os.path.join(out, "light", test)
        ds = os.path.join(d, "test_data_set_0")
        os.makedirs(ds)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(model.SerializeToString())
        inits = {t.name for t in shipped.graph.initializer}
        n_in = 0
        for x in shipped.graph.input:
            if x.name in inits:
                continue
            # onnx.backend.test.runner.Runner.generate_dummy_data(random=False)
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else 1 for d in x.type.tensor_type.shape.dim
            )
            n = int(np.prod(shape))
            value = (np.arange(n).reshape(shape) / n).astype(np.float32)
            with open(os.path.join(ds, f"input_{n_in}.pb"), "wb") as f:
                f.write(numpy_helper.from_array(value).SerializeToString())
            n_in += 1
        for i in range(len(shipped.graph.output)):
            shutil.copy(
                os.path.join(data, "light", f"light_{model_name}_output_{i}.pb"),
                os.path.join(ds, f"output_{i}.pb"),
            )
        rows.append(row("light", test, shipped, model, rtol, atol))


def gen_models(data: str, out: str, rows: list[str]) -> None:
    import json

    import onnx

    for suite in MODEL_SUITES:
        for test in sorted(os.listdir(os.path.join(data, suite))):
            src = os.path.join(data, suite, test)
            if not os.path.exists(os.path.join(src, "model.onnx")):
                continue
            rtol, atol = 1e-3, 1e-7
            if os.path.exists(os.path.join(src, "data.json")):
                with open(os.path.join(src, "data.json")) as f:
                    j = json.load(f)
                rtol, atol = j.get("rtol", rtol), j.get("atol", atol)
            d = os.path.join(out, suite, test)
            shutil.copytree(src, d)
            shipped = onnx.load(os.path.join(src, "model.onnx"))
            model = convert(shipped)
            if model is not shipped:
                with open(os.path.join(d, "model.onnx"), "wb") as f:
                    f.write(model.SerializeToString())
            rows.append(row(suite, test, shipped, model, rtol, atol))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the folder to write (replaced)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    stamp = stamp_text()
    try:
        with open(os.path.join(out, "STAMP")) as f:
            if f.read() == stamp:
                return 0
    except OSError:
        pass

    warnings.filterwarnings("ignore")
    import numpy as np
    import onnx

    np.seterr(all="ignore")
    data = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    rows: list[str] = []
    gen_node(tmp, rows)
    gen_light(data, tmp, rows)
    gen_models(data, tmp, rows)
    with open(os.path.join(tmp, "index.tsv"), "w") as f:
        f.write("# " + "\t".join(COLUMNS) + "\n")
        f.writelines(rows)
    with open(os.path.join(tmp, "STAMP"), "w") as f:
        f.write(stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    print(f"onnx conformance data: {len(rows)} tests written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Generate the malformed-ONNX corpus in tests/onnx-malformed/ (and the valid models in its valid/ folder).

Usage: python3 scripts/onnx/make_malformed.py [OUT_DIR]   (default: tests/onnx-malformed next to this repo)

Writes, deterministically:
  NNN-<case>.onnx   one malformed model per file; every one must be rejected by qc's loader
  weights.bin       64 bytes of external data that the external-data cases point at
  expected.tsv      <file> TAB <field path> TAB <message substring>: where the diagnostic must point.
                    A path ending in '*' is a prefix; '*' alone accepts any path.
  valid/tiny.onnx, valid/unsorted.onnx, valid/ext.onnx + valid/ext.bin: models that must load
  valid/expected.tsv  <model> TAB <initializer> TAB <file> TAB <offset> TAB <length> TAB <hex of bytes>:
                    where each raw initializer's bytes lie (offsets found by searching the written file)

Symlinks, hard links and FIFOs cannot be committed reliably; compiler/tests/onnx_malformed.rs makes those
cases in a temporary folder. Needs the `onnx` and `numpy` packages.
"""
import os
import shutil
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 24
IR = 10

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "onnx-malformed")

cases = []  # (name, bytes, path, message)


def add(name, data, path, msg):
    if isinstance(data, onnx.ModelProto):
        data = data.SerializeToString()
    cases.append((name, data, path, msg))


# ---------------------------------------------------------------- valid base models

def f32(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32)


def base(opset=OPSET, ir=IR):
    """X[batch,4] @ W[4,3] + B[3] -> Y[batch,3]; W raw, B float_data."""
    W = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], f32([4, 3], 1).tobytes(), raw=True)
    B = helper.make_tensor("B", TensorProto.FLOAT, [3], f32([3], 2).tolist())
    X = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])
    Y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])
    n0 = helper.make_node("MatMul", ["X", "W"], ["H"], name="attention/MatMul")
    n1 = helper.make_node("Add", ["H", "B"], ["Y"], name="attention/Add")
    g = helper.make_graph([n0, n1], "base", [X], [Y], [W, B])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="qc-corpus")
    m.ir_version = ir
    return m


def copy(m):
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def with_init(t, extra_nodes=()):
    """Base model plus initializer `t` (appended as graph.initializer[2])."""
    m = base()
    m.graph.initializer.append(t)
    for n in extra_nodes:
        m.graph.node.append(n)
    return m


def raw_tensor(name, dt, dims, nbytes):
    t = TensorProto()
    t.name = name
    t.data_type = dt
    t.dims.extend(dims)
    t.raw_data = bytes((i * 37 + 11) & 0xFF for i in range(nbytes))
    return t


def ext_tensor(entries, dims=(4, 3), dt=TensorProto.FLOAT, loc=1):
    t = TensorProto()
    t.name = "E"
    t.data_type = dt
    t.dims.extend(dims)
    t.data_location = loc
    for k, v in entries:
        e = t.external_data.add()
        e.key = k
        e.value = v
    return t


# ---------------------------------------------------------------- wire-level helpers

def varint(v):
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(tag, wire):
    return varint((tag << 3) | wire)


def ld(tag, payload):
    return key(tag, 2) + varint(len(payload)) + payload


def vi(tag, v):
    return key(tag, 0) + varint(v)


def fx32(tag, v=0):
    return key(tag, 5) + struct.pack("<I", v)


def fx64(tag, v=0):
    return key(tag, 1) + struct.pack("<Q", v)


OPSET_FIELD = ld(8, ld(1, b"") + vi(2, OPSET))
HEAD = vi(1, IR)


def model_bytes(graph_payload):
    return HEAD + ld(7, graph_payload) + OPSET_FIELD


NODE_OK = ld(1, b"X") + ld(2, b"Y") + ld(4, b"Relu")
INPUT_OK = ld(1, b"X") + ld(2, ld(1, vi(1, 1) + ld(2, ld(1, vi(1, 2)))))

# ================================================================= 1. truncated protobuf
big = base()
big.graph.initializer[0].CopyFrom(
    helper.make_tensor("W", TensorProto.FLOAT, [4, 3], f32([4, 3], 1).tobytes(), raw=True))
full = big.SerializeToString()
gbytes = big.graph.SerializeToString()
gstart = full.find(gbytes)
assert gstart > 0 and full.count(gbytes) == 1
for k in range(1, 17):
    cut = gstart + (len(gbytes) * k) // 17
    add(f"truncated-graph-{k:02d}", full[:cut], "graph*", "truncated")
add("truncated-in-graph-length", full[: gstart - 1], "graph", "truncated")
# cut inside the trailing opset_import
add("truncated-opset-import", full[:-2], "opset_import[0]*", "truncated")
add("truncated-header-string", vi(1, IR) + key(2, 2) + varint(20) + b"qc-co", "producer_name", "truncated")
add("truncated-varint", vi(1, IR) + key(5, 0) + b"\xff\xff", "model_version", "truncated")
add("huge-length", HEAD + key(7, 2) + varint(1 << 60) + b"\x0a\x00", "graph*", "truncated")
add("truncated-fixed32", model_bytes(ld(1, NODE_OK + ld(5, ld(1, b"alpha") + key(2, 5) + b"\x00\x00"))),
    "graph*", "truncated")

# ================================================================= 2. wrong wire types
add("wire-graph-as-varint", HEAD + vi(7, 1) + OPSET_FIELD, "graph", "wrong wire type")
add("wire-ir-version-as-bytes", ld(1, b"\x0a") + ld(7, b""), "ir_version", "wrong wire type")
add("wire-opset-as-varint", HEAD + ld(7, b"") + vi(8, 13), "opset_import[0]", "wrong wire type")
add("wire-op-type-as-varint", model_bytes(ld(1, ld(1, b"X") + vi(4, 3))), "graph.node[0].op_type", "wrong wire type")
add("wire-dims-as-fixed32",
    model_bytes(ld(5, vi(1, 1) + vi(2, 1)) + ld(5, fx32(1, 7) + vi(2, 1))), "graph.initializer[1].dims", "wrong wire type")
add("wire-raw-data-as-varint", model_bytes(ld(5, vi(1, 1) + vi(2, 2) + vi(9, 5))),
    "graph.initializer[0].raw_data", "wrong wire type")
add("wire-float-data-as-fixed64", model_bytes(ld(5, vi(2, 1) + fx64(4))),
    "graph.initializer[0].float_data", "wrong wire type")
add("wire-input-type-as-fixed32", model_bytes(ld(11, ld(1, b"X") + fx32(2))), "graph.input[0].type", "wrong wire type")
add("wire-dim-value-as-bytes",
    model_bytes(ld(11, ld(1, b"X") + ld(2, ld(1, vi(1, 1) + ld(2, ld(1, ld(1, b"\x04"))))))),
    "graph.input[0].type.tensor_type.shape.dim[0].dim_value", "wrong wire type")
add("wire-attr-f-as-varint", model_bytes(ld(1, NODE_OK + ld(5, ld(1, b"alpha") + vi(2, 1)))),
    "graph.node[0].attribute[0].f", "wrong wire type")
add("wire-attr-ints-as-fixed64", model_bytes(ld(1, NODE_OK + ld(5, ld(1, b"perm") + fx64(8)))),
    "graph.node[0].attribute[0].ints", "wrong wire type")
add("wire-second-node-name-as-fixed32", model_bytes(ld(1, NODE_OK) + ld(1, fx32(3))),
    "graph.node[1].name", "wrong wire type")
add("wire-external-key-as-varint",
    model_bytes(ld(5, vi(1, 4) + vi(2, 1) + vi(14, 1) + ld(13, vi(1, 1)))),
    "graph.initializer[0].external_data[0].key", "wrong wire type")
add("wire-invalid-wire-type-6", HEAD + key(3, 6), "model", "invalid wire type")
add("wire-invalid-wire-type-7-in-graph", model_bytes(key(2, 7)), "graph", "invalid wire type")
add("wire-field-number-zero", b"\x00\x00\x00\x00", "model", "field number 0")
add("wire-varint-too-long", b"\x08" + b"\xff" * 10 + b"\x01", "ir_version", "invalid varint")
add("wire-name-not-utf8", model_bytes(ld(1, ld(3, b"\xff\xfe") + ld(4, b"Relu"))), "graph.node[0].name", "UTF-8")
add("wire-packed-floats-odd-length", model_bytes(ld(5, vi(2, 1) + vi(1, 1) + ld(4, b"\x00" * 5))),
    "graph.initializer[0].float_data", "multiple of 4")
add("wire-group-not-closed", HEAD + key(100, 3) + vi(1, 1), "model", "group")
add("wire-unexpected-end-group", model_bytes(key(9, 4)), "graph", "end-group")
add("wire-groups-nest-too-deep", HEAD + key(100, 3) * 200 + key(100, 4) * 200, "model", "too deeply")

# ================================================================= 3. negative / overflowing dims
add("dims-negative-first", with_init(raw_tensor("N", TensorProto.FLOAT, [-1, 3], 12)),
    "graph.initializer[2].dims[0]", "negative dimension -1")
add("dims-negative-second", with_init(raw_tensor("N", TensorProto.INT8, [2, -5], 0)),
    "graph.initializer[2].dims[1]", "negative dimension -5")
add("dims-negative-int64-min", with_init(raw_tensor("N", TensorProto.INT8, [-(1 << 63)], 0)),
    "graph.initializer[2].dims[0]", "negative dimension")
add("dims-overflow-count", with_init(raw_tensor("N", TensorProto.INT8, [1 << 32, 1 << 32], 0)),
    "graph.initializer[2].dims[1]", "overflows")
add("dims-overflow-count-three", with_init(raw_tensor("N", TensorProto.INT8, [1 << 40, 1 << 20, 1 << 10], 0)),
    "graph.initializer[2].dims[2]", "overflows")
add("dims-overflow-bytes-double", with_init(raw_tensor("N", TensorProto.DOUBLE, [1 << 61], 0)),
    "graph.initializer[2].dims", "byte size")
add("dims-overflow-bytes-float", with_init(raw_tensor("N", TensorProto.FLOAT, [(1 << 63) - 1], 0)),
    "graph.initializer[2].dims", "byte size")
m = base()
m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -4
add("dims-negative-input-shape", m, "graph.input[0].type.tensor_type.shape.dim[1]", "negative dimension -4")
m = base()
m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = -1
add("dims-negative-output-shape", m, "graph.output[0].type.tensor_type.shape.dim[1]", "negative dimension")
c = helper.make_node("Constant", [], ["K"], name="const")
t = raw_tensor("", TensorProto.FLOAT, [2, -2], 0)
c.attribute.append(helper.make_attribute("value", t))
add("dims-negative-constant-attribute", with_init(raw_tensor("Z", TensorProto.FLOAT, [0], 0), [c]),
    'graph.node[2] ("const").attribute[0].t.dims[1]', "negative dimension")

# ================================================================= 4. raw_data length (incl. sub-byte packing)
for name, dt, dims, nbytes, want in [
    ("raw-float-short", TensorProto.FLOAT, [4, 3], 47, "needs 48"),
    ("raw-float-long", TensorProto.FLOAT, [4, 3], 49, "needs 48"),
    ("raw-float-empty", TensorProto.FLOAT, [4, 3], 0, "needs 48"),
    ("raw-int4-15-short", TensorProto.INT4, [3, 5], 7, "needs 8"),
    ("raw-int4-unpacked", TensorProto.INT4, [4], 4, "needs 2"),
    ("raw-uint4-odd", TensorProto.UINT4, [5], 2, "needs 3"),
    ("raw-float4e2m1-odd", TensorProto.FLOAT4E2M1, [7], 3, "needs 4"),
    ("raw-int4-one", TensorProto.INT4, [1], 0, "needs 1"),
    ("raw-uint2-five", TensorProto.UINT2, [5], 1, "needs 2"),
    ("raw-float6e2m3-five", TensorProto.FLOAT6E2M3, [5], 3, "needs 4"),
    ("raw-float16-short", TensorProto.FLOAT16, [3], 5, "needs 6"),
    ("raw-bool-short", TensorProto.BOOL, [3], 2, "needs 3"),
    ("raw-complex64-half", TensorProto.COMPLEX64, [2], 8, "needs 16"),
    ("raw-int64-short", TensorProto.INT64, [2, 2], 31, "needs 32"),
    ("raw-fp8-short", TensorProto.FLOAT8E4M3FN, [16], 15, "needs 16"),
    ("raw-scalar-empty", TensorProto.FLOAT, [], 0, "needs 4"),
]:
    add(name, with_init(raw_tensor("R", dt, dims, nbytes)), "graph.initializer[2].raw_data", want)
add("raw-string", with_init(raw_tensor("R", TensorProto.STRING, [1], 4)), "graph.initializer[2].raw_data", "string_data")
c = helper.make_node("Constant", [], ["K"])
c.attribute.append(helper.make_attribute("value", raw_tensor("", TensorProto.INT4, [3], 1)))
add("raw-int4-constant-attribute", with_init(raw_tensor("Z", TensorProto.FLOAT, [0], 0), [c]),
    "graph.node[2].attribute[0].t.raw_data", "two 4-bit")

# ================================================================= 5. typed data fields
def typed(dt, dims, field, values):
    t = TensorProto()
    t.name = "T"
    t.data_type = dt
    t.dims.extend(dims)
    getattr(t, field).extend(values)
    return t


for name, t, field, msg in [
    ("typed-float-count", typed(TensorProto.FLOAT, [4, 3], "float_data", [1.0] * 11), "float_data", "needs 12"),
    ("typed-int64-count", typed(TensorProto.INT64, [3], "int64_data", [1, 2]), "int64_data", "needs 3"),
    ("typed-int32-count", typed(TensorProto.INT32, [2], "int32_data", [1, 2, 3]), "int32_data", "needs 2"),
    ("typed-int4-unpacked", typed(TensorProto.INT4, [5], "int32_data", [1] * 5), "int32_data", "needs 3"),
    ("typed-uint2-unpacked", typed(TensorProto.UINT2, [5], "int32_data", [1] * 5), "int32_data", "needs 2"),
    ("typed-double-count", typed(TensorProto.DOUBLE, [2], "double_data", [1.0]), "double_data", "needs 2"),
    ("typed-uint64-count", typed(TensorProto.UINT64, [2], "uint64_data", [1, 2, 3]), "uint64_data", "needs 2"),
    ("typed-string-count", typed(TensorProto.STRING, [2], "string_data", [b"a"]), "string_data", "needs 2"),
    ("typed-complex64-count", typed(TensorProto.COMPLEX64, [2], "float_data", [1.0, 2.0]), "float_data", "needs 4"),
    ("typed-float-data-for-int64", typed(TensorProto.INT64, [1], "float_data", [1.0]), "float_data", "cannot hold INT64"),
    ("typed-int64-data-for-float", typed(TensorProto.FLOAT, [1], "int64_data", [1]), "int64_data", "cannot hold FLOAT"),
    ("typed-int32-data-for-float", typed(TensorProto.FLOAT, [1], "int32_data", [1]), "int32_data", "cannot hold FLOAT"),
    ("typed-uint64-data-for-int32", typed(TensorProto.INT32, [1], "uint64_data", [1]), "uint64_data", "cannot hold"),
    ("typed-string-data-for-float", typed(TensorProto.FLOAT, [1], "string_data", [b"x"]), "string_data", "cannot hold"),
]:
    add(name, with_init(t), f"graph.initializer[2].{field}", msg)
t = typed(TensorProto.FLOAT, [1], "float_data", [1.0])
t.raw_data = b"\x00\x00\x80\x3f"
add("typed-and-raw", with_init(t), "graph.initializer[2].float_data", "exactly one data field")
t = TensorProto(name="T", data_type=TensorProto.FLOAT, dims=[4, 3])
add("typed-no-data", with_init(t), "graph.initializer[2]", "has no data")
t = raw_tensor("T", TensorProto.FLOAT, [1], 4)
t.segment.begin = 0
t.segment.end = 1
add("tensor-segment", with_init(t), "graph.initializer[2].segment", "segmented")

# ================================================================= 6. unknown data types
for name, code in [("dtype-undefined", 0), ("dtype-29", 29), ("dtype-100", 100), ("dtype-negative", -1)]:
    add(name, with_init(raw_tensor("D", code, [1], 1)), "graph.initializer[2].data_type",
        "no data type" if code == 0 else "unknown data type")
m = base()
m.graph.input[0].type.tensor_type.elem_type = 0
add("dtype-input-undefined", m, "graph.input[0].type.tensor_type.elem_type", "no data type")
m = base()
m.graph.output[0].type.tensor_type.elem_type = 99
add("dtype-output-99", m, "graph.output[0].type.tensor_type.elem_type", "unknown data type code 99")
c = helper.make_node("Constant", [], ["K"], name="c")
c.attribute.append(helper.make_attribute("value", raw_tensor("", 50, [1], 1)))
add("dtype-constant-50", with_init(raw_tensor("Z", TensorProto.FLOAT, [0], 0), [c]),
    'graph.node[2] ("c").attribute[0].t.data_type', "unknown data type code 50")

# ================================================================= 7. external data (in-tree cases)
WEIGHTS = bytes(range(64))
for name, entries, path, msg in [
    ("ext-absolute", [("location", "/etc/passwd")], "location", "absolute"),
    ("ext-absolute-weights", [("location", "/weights.bin")], "location", "absolute"),
    ("ext-dotdot", [("location", "../onnx-malformed/weights.bin")], "location", "'..'"),
    ("ext-dotdot-inner", [("location", "valid/../../weights.bin")], "location", "'..'"),
    ("ext-dotdot-only", [("location", "..")], "location", "'..'"),
    ("ext-backslash", [("location", "..\\weights.bin")], "location", "'\\'"),
    ("ext-empty-location", [("location", "")], "location", "empty"),
    ("ext-dot-location", [("location", "./")], "location", "does not name a file"),
    ("ext-missing-file", [("location", "nope.bin")], "location", "cannot open"),
    ("ext-directory", [("location", "valid")], "location", "directory"),
    ("ext-unknown-key", [("location", "weights.bin"), ("md5", "0")], "md5", "unknown external_data key"),
    ("ext-unknown-key-case", [("LOCATION", "weights.bin")], "LOCATION", "unknown external_data key"),
    ("ext-unknown-key-basepath", [("location", "weights.bin"), ("basepath", "/")], "basepath", "unknown"),
    ("ext-duplicate-location", [("location", "weights.bin"), ("location", "weights.bin")], "location", "duplicate"),
    ("ext-offset-not-number", [("location", "weights.bin"), ("offset", "abc")], "offset", "not a non-negative integer"),
    ("ext-offset-negative", [("location", "weights.bin"), ("offset", "-4")], "offset", "not a non-negative integer"),
    ("ext-offset-too-big-to-parse", [("location", "weights.bin"), ("offset", "18446744073709551616")], "offset", "not a non-negative"),
    ("ext-length-float", [("location", "weights.bin"), ("length", "1e3")], "length", "not a non-negative integer"),
    ("ext-offset-past-eof", [("location", "weights.bin"), ("offset", "1000")], "offset", "past the end"),
    ("ext-offset-max", [("location", "weights.bin"), ("offset", "18446744073709551615"), ("length", "48")], "length", "past the end"),
    ("ext-range-past-eof", [("location", "weights.bin"), ("offset", "17"), ("length", "48")], "length", "past the end"),
    ("ext-length-overflow", [("location", "weights.bin"), ("offset", "8"), ("length", "18446744073709551615")], "length", "overflows"),
    ("ext-length-past-eof", [("location", "weights.bin"), ("length", "65")], "length", "past the end"),
    ("ext-length-mismatch", [("location", "weights.bin"), ("length", "32")], "length", "needs 48"),
    ("ext-rest-of-file-mismatch", [("location", "weights.bin"), ("offset", "8")], "offset", "needs 48"),
    ("ext-no-location", [("offset", "0"), ("length", "48")], None, "no \"location\""),
]:
    p = "graph.initializer[2].external_data" + (f'["{path}"]' if path is not None else "")
    add(name, with_init(ext_tensor(entries)), p, msg)
add("ext-no-entries", with_init(ext_tensor([])), "graph.initializer[2].external_data", "no external_data")
add("ext-default-location-with-entries", with_init(ext_tensor([("location", "weights.bin")], loc=0)),
    "graph.initializer[2].external_data", "not EXTERNAL")
# DataLocation is a closed enum in Python: append the raw field (the last value wins when decoding).
t = TensorProto()
t.ParseFromString(ext_tensor([("location", "weights.bin")]).SerializeToString() + vi(14, 2))
add("ext-data-location-2", with_init(t),
    "graph.initializer[2].data_location", "unknown data_location")
t = ext_tensor([("location", "weights.bin"), ("length", "48")])
t.raw_data = bytes(48)
add("ext-and-raw", with_init(t), "graph.initializer[2].raw_data", "also has raw_data")
add("ext-string", with_init(ext_tensor([("location", "weights.bin")], dims=[1], dt=TensorProto.STRING)),
    "graph.initializer[2].data_location", "STRING")
c = helper.make_node("Constant", [], ["K"], name="c")
c.attribute.append(helper.make_attribute("value", ext_tensor([("location", "/etc/shadow")])))
add("ext-absolute-in-constant", with_init(raw_tensor("Z", TensorProto.FLOAT, [0], 0), [c]),
    'graph.node[2] ("c").attribute[0].t.external_data["location"]', "absolute")

# ================================================================= 8. graph structure
def graph_model(nodes, inputs=("X",), outputs=("Y",), inits=()):
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in inputs]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in outputs]
    g = helper.make_graph(nodes, "g", ins, outs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = IR
    return m


N = helper.make_node
one = helper.make_tensor("C", TensorProto.FLOAT, [2], [1.0, 2.0])
add("cycle-two", graph_model([N("Add", ["X", "Z"], ["Y"], name="a"), N("Relu", ["Y"], ["Z"], name="b")]),
    'graph.node[0] ("a")', "cycle")
add("cycle-self", graph_model([N("Relu", ["X"], ["Y"]), N("Add", ["T", "X"], ["T"], name="loop")], outputs=("Y",)),
    'graph.node[1] ("loop")', "cycle")
add("cycle-three", graph_model([N("Relu", ["X"], ["Y"]), N("Add", ["P", "X"], ["Q"], name="q"),
                                N("Neg", ["Q"], ["R"], name="r"), N("Abs", ["R"], ["P"], name="p")]),
    'graph.node[1] ("q")', "cycle")
add("undefined-input", graph_model([N("Add", ["X", "nope"], ["Y"], name="attention/MatMul")]),
    'graph.node[0] ("attention/MatMul").input[1]', "not defined")
add("undefined-input-unnamed", graph_model([N("Relu", ["X"], ["H"]), N("Add", ["H", "ghost"], ["Y"])]),
    "graph.node[1].input[1]", "not defined")
add("undefined-output", graph_model([N("Relu", ["X"], ["H"])], outputs=("Y",)), "graph.output[0]", "not defined")
add("duplicate-node-output", graph_model([N("Relu", ["X"], ["Y"], name="r1"), N("Neg", ["X"], ["Y"], name="r2")]),
    'graph.node[1] ("r2").output[0]', "already defined")
add("duplicate-output-in-one-node", graph_model([N("Split", ["X"], ["Y", "Y"])]),
    "graph.node[0].output[1]", "already defined")
add("node-output-shadows-input", graph_model([N("Relu", ["X"], ["X"]), N("Relu", ["X"], ["Y"])]),
    "graph.node[0].output[0]", "already defined by graph.input[0]")
add("node-output-shadows-initializer", graph_model([N("Relu", ["X"], ["C"]), N("Add", ["X", "C"], ["Y"])], inits=[one]),
    "graph.node[0].output[0]", "already defined by graph.initializer[0]")
add("duplicate-initializer", graph_model([N("Add", ["X", "C"], ["Y"])], inits=[one, one]),
    "graph.initializer[1]", "duplicate initializer")
add("duplicate-graph-input", graph_model([N("Relu", ["X"], ["Y"])], inputs=("X", "X")),
    "graph.input[1]", "duplicate graph input")
add("duplicate-graph-output", graph_model([N("Relu", ["X"], ["Y"])], outputs=("Y", "Y")),
    "graph.output[1]", "duplicate graph output")
unnamed = helper.make_tensor("", TensorProto.FLOAT, [2], [1.0, 2.0])
add("initializer-no-name", graph_model([N("Relu", ["X"], ["Y"])], inits=[unnamed]),
    "graph.initializer[0].name", "no name")
m = graph_model([N("Relu", ["X"], ["Y"])])
m.graph.input[0].ClearField("type")
add("input-no-type", m, "graph.input[0].type", "no type")
m = graph_model([N("Relu", ["X"], ["Y"])])
m.graph.output[0].ClearField("type")
add("output-no-type", m, "graph.output[0].type", "no type")
m = graph_model([N("Relu", ["X"], ["Y"])])
m.graph.input[0].name = ""
add("input-no-name", m, "graph.input[0].name", "no name")
for kind, make in [
    ("sequence", lambda: helper.make_tensor_sequence_value_info("X", TensorProto.FLOAT, [2])),
    ("map", lambda: helper.make_value_info("X", helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))),
    ("optional", lambda: helper.make_value_info("X", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))),
    ("sparse tensor", lambda: helper.make_sparse_tensor_value_info("X", TensorProto.FLOAT, [2])),
]:
    m = graph_model([N("Identity", ["X"], ["Y"])])
    m.graph.input[0].CopyFrom(make())
    add(f"input-type-{kind.replace(' ', '-')}", m, "graph.input[0].type", f"{kind} type")
add("node-no-op-type", graph_model([N("", ["X"], ["Y"], name="blank")]), 'graph.node[0] ("blank")', "no op_type")
m = base()
m.ClearField("graph")
add("no-graph", m, "graph", "no graph")
add("empty-file", b"", "model", "empty")
add("text-file", b"this is not an onnx model\n", "*", "")
add("zeros", bytes(16), "model", "field number 0")
m = base()
sp = m.graph.sparse_initializer.add()
sp.dims.append(4)
add("sparse-initializer", m, "graph.sparse_initializer[0]", "sparse initializers")

# ================================================================= 9. opsets and IR versions
for v in [1, 11, 12, 25, 28, 0, -1]:
    add(f"opset-{v}", base(opset=v), "opset_import[0]", f"unsupported opset version {v}")
m = base()
del m.opset_import[:]
add("opset-none", m, "opset_import", "imports no operator set")
m = base()
m.opset_import.append(helper.make_opsetid("ai.onnx", 17))
add("opset-default-twice", m, "opset_import[1]", "imported twice")
m = base()
m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
m.graph.node[1].domain = "ai.onnx.ml"
add("domain-ai-onnx-ml", m, 'graph.node[1] ("attention/Add")', "ai.onnx.ml")
m = base()
m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
m.graph.node[0].domain = "com.microsoft"
add("domain-com-microsoft", m, 'graph.node[0] ("attention/MatMul")', "operator domain \"com.microsoft\"")
m = base()
m.graph.node[0].domain = "org.example"
add("domain-not-imported", m, 'graph.node[0] ("attention/MatMul")', "does not even import")
m = base()
m.opset_import[0].domain = "ai.onnx.ml"
m.opset_import[0].version = 3
add("default-domain-not-imported", m, 'graph.node[0] ("attention/MatMul")', "does not import")
m = base()
m.opset_import.append(helper.make_opsetid("com.example", 0))
add("opset-custom-version-0", m, "opset_import[1]", "invalid opset version 0")
for v in [0, 2, 15, -1]:
    add(f"ir-version-{v}", base(ir=v), "ir_version", f"unsupported IR version {v}")

# ================================================================= 10. attributes
def attr_model(attr, op="LeakyRelu"):
    n = N(op, ["X"], ["Y"], name="n")
    n.attribute.append(attr)
    return graph_model([n])


a = onnx.AttributeProto(name="alpha", f=0.5)
add("attr-no-type", attr_model(a), 'graph.node[0] ("n").attribute[0].type', "has no type")
a = onnx.AttributeProto()
a.ParseFromString(onnx.AttributeProto(name="alpha").SerializeToString() + vi(20, 99))
add("attr-unknown-type", attr_model(a), 'graph.node[0] ("n").attribute[0].type', "unknown type code 99")
branch = helper.make_graph([N("Identity", ["X"], ["Z"])], "b", [], [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [2])])
add("attr-graph", attr_model(helper.make_attribute("then_branch", branch), op="If"),
    'graph.node[0] ("n").attribute[0]', "graph attributes")
add("attr-graphs", attr_model(onnx.AttributeProto(name="bodies", type=10, graphs=[branch])),
    'graph.node[0] ("n").attribute[0]', "graph attributes")
sp = onnx.SparseTensorProto()
sp.dims.append(2)
add("attr-sparse-tensor", attr_model(onnx.AttributeProto(name="sparse_value", type=11, sparse_tensor=sp), op="Constant"),
    'graph.node[0] ("n").attribute[0]', "sparse tensor attributes")
add("attr-type-proto", attr_model(onnx.AttributeProto(name="tp", type=13, tp=helper.make_tensor_type_proto(1, [2]))),
    'graph.node[0] ("n").attribute[0]', "type attributes")
add("attr-ref", attr_model(onnx.AttributeProto(name="alpha", type=1, ref_attr_name="a")),
    'graph.node[0] ("n").attribute[0].ref_attr_name', "only valid inside a function")
n = N("LeakyRelu", ["X"], ["Y"], name="n", alpha=0.1)
n.attribute.append(helper.make_attribute("alpha", 0.2))
add("attr-duplicate", graph_model([n]), 'graph.node[0] ("n").attribute[1]', "duplicate attribute")
add("attr-no-name", attr_model(onnx.AttributeProto(type=1, f=0.5)), 'graph.node[0] ("n").attribute[0].name', "no name")
add("attr-tensor-missing", attr_model(onnx.AttributeProto(name="value", type=4), op="Constant"),
    'graph.node[0] ("n").attribute[0]', "no tensor")
add("attr-ints-but-floats", attr_model(onnx.AttributeProto(name="perm", type=7, floats=[1.0]), op="Transpose"),
    'graph.node[0] ("n").attribute[0].floats', "has type INTS")
add("attr-float-but-int", attr_model(onnx.AttributeProto(name="alpha", type=1, i=3)),
    'graph.node[0] ("n").attribute[0].i', "has type FLOAT")
add("attr-tensors-bad", attr_model(onnx.AttributeProto(name="vals", type=9, tensors=[
    helper.make_tensor("a", 1, [1], [1.0]), raw_tensor("b", TensorProto.INT4, [4], 1)])),
    'graph.node[0] ("n").attribute[0].tensors[1].raw_data', "two 4-bit")

# ---------------------------------------------------------------- write the corpus
if os.path.isdir(OUT):
    for f in os.listdir(OUT):
        p = os.path.join(OUT, f)
        if f.endswith(".onnx") or f in ("weights.bin", "expected.tsv"):
            os.remove(p)
    shutil.rmtree(os.path.join(OUT, "valid"), ignore_errors=True)
os.makedirs(os.path.join(OUT, "valid"), exist_ok=True)
names = set()
with open(os.path.join(OUT, "expected.tsv"), "w") as exp:
    exp.write("# file\tfield path ('*' suffix = prefix, '*' = any)\tmessage substring\n")
    for i, (name, data, path, msg) in enumerate(cases):
        assert name not in names, name
        names.add(name)
        fname = f"{i:03d}-{name}.onnx"
        with open(os.path.join(OUT, fname), "wb") as f:
            f.write(data)
        assert "\t" not in path and "\t" not in msg
        exp.write(f"{fname}\t{path}\t{msg}\n")
with open(os.path.join(OUT, "weights.bin"), "wb") as f:
    f.write(WEIGHTS)

# ---------------------------------------------------------------- valid models
VALID = os.path.join(OUT, "valid")
rows = []


def locate_raw(model_name, data, tensors, file_rel):
    for t in tensors:
        if t.HasField("raw_data") and len(t.raw_data) > 0:
            assert data.count(t.raw_data) == 1, t.name
            rows.append((model_name, t.name, file_rel, data.find(t.raw_data), len(t.raw_data), t.raw_data.hex()))


tiny = base()
q = raw_tensor("Q", TensorProto.INT4, [5], 3)
q.raw_data = b"\x21\x43\x05"
tiny.graph.initializer.append(q)
tiny.graph.initializer.append(helper.make_tensor("S", TensorProto.INT64, [2], [7, -7]))
tiny.graph.initializer.append(helper.make_tensor("E", TensorProto.FLOAT, [0, 3], []))
tiny.graph.initializer.append(helper.make_tensor("F8", TensorProto.FLOAT8E4M3FN, [2], [1.0, 2.0]))
cv = helper.make_tensor("Kval", TensorProto.FLOAT16, [2], np.array([1.5, -2.0], np.float16).tobytes(), raw=True)
tiny.graph.node.append(N("Constant", [], ["K"], name="const", value=cv))
tiny.graph.node.append(N("Mul", ["Y", "Y"], ["Y2"], name="square"))
tiny.graph.output.append(helper.make_tensor_value_info("Y2", TensorProto.FLOAT, ["batch", 3]))
tiny.graph.output.append(helper.make_tensor_value_info("K", TensorProto.FLOAT16, [2]))
data = tiny.SerializeToString()
with open(os.path.join(VALID, "tiny.onnx"), "wb") as f:
    f.write(data)
locate_raw("tiny.onnx", data, list(tiny.graph.initializer) + [cv], "tiny.onnx")

uns = base()
nodes = list(uns.graph.node)
del uns.graph.node[:]
uns.graph.node.extend(reversed(nodes))
with open(os.path.join(VALID, "unsorted.onnx"), "wb") as f:
    f.write(uns.SerializeToString())

ext = base()
w = ext.graph.initializer[0]
wbytes = w.raw_data
b2 = np.arange(3, dtype=np.float32).tobytes()
blob = wbytes + bytes(64 - len(wbytes)) + b2
with open(os.path.join(VALID, "ext.bin"), "wb") as f:
    f.write(blob)
w.ClearField("raw_data")
w.data_location = TensorProto.EXTERNAL
for k, v in [("location", "ext.bin"), ("offset", "0"), ("length", str(len(wbytes)))]:
    e = w.external_data.add()
    e.key, e.value = k, v
b = ext.graph.initializer[1]
b.ClearField("float_data")
b.data_location = TensorProto.EXTERNAL
for k, v in [("location", "./ext.bin"), ("offset", "64"), ("length", "12"), ("checksum", "0")]:
    e = b.external_data.add()
    e.key, e.value = k, v
with open(os.path.join(VALID, "ext.onnx"), "wb") as f:
    f.write(ext.SerializeToString())
rows.append(("ext.onnx", "W", "ext.bin", 0, len(wbytes), wbytes.hex()))
rows.append(("ext.onnx", "B", "ext.bin", 64, 12, b2.hex()))

with open(os.path.join(VALID, "expected.tsv"), "w") as f:
    f.write("# model\tinitializer\tfile\toffset\tlength\thex\n")
    for r in rows:
        f.write("\t".join(str(x) for x in r) + "\n")

print(f"{len(cases)} malformed models, {len(rows)} located initializers in {OUT}")

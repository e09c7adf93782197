#!/usr/bin/env python3
"""Independent references for qc's block-scaled formats.

usage:
  block_reference.py spec FORMAT X.f32 ROWS COLS OUT_DIR
      From-the-spec numpy reference (written from shared/specs/FORMATS.md and the public code each
      convention names, not from qc's Rust). X is ROWS x COLS float32, quantized as ROWS // R tensors of
      R = TENSOR_ROWS rows each (two-level formats take their tensor amax per such tensor). Writes
      OUT_DIR/codes.u8 (one code per element), OUT_DIR/scales.u8 (one e8m0 / ue4m3 code per block).
  block_reference.py onnx KIND X.f32 ROWS COLS SCALES OUT_DIR
      ONNX reference evaluator (opset 24): blocked QuantizeLinear along axis 1 given qc's scales, and
      DequantizeLinear of qc's codes. KIND is mxfp4 (FLOAT4E2M1 elements, FLOAT8E8M0 scales, block 32)
      or int4_g32 (INT4 elements, float32 scales, block 32). SCALES holds u8 e8m0 codes (mxfp4) or f32
      (int4_g32), ROWS x COLS/32. Writes OUT_DIR/codes.u8 (QuantizeLinear) and OUT_DIR/dequant.f32
      (DequantizeLinear of OUT_DIR/../qc_codes.u8 when present).

Elements are rounded to nearest even and saturate (clip to +-max, then ml_dtypes' RNE cast).
"""
import os
import sys

import ml_dtypes as md
import numpy as np

F32 = np.float32
TENSOR_ROWS = 1000

ELEM = {
    "e2m1": (md.float4_e2m1fn, 6.0, 2, 1),
    "e2m3": (md.float6_e2m3fn, 7.5, 2, 3),
    "e3m2": (md.float6_e3m2fn, 28.0, 4, 2),
    "e4m3fn": (md.float8_e4m3fn, 448.0, 8, 3),
    "e5m2": (md.float8_e5m2, 57344.0, 15, 2),
    "mxi8": (None, 127.0 / 64.0, 0, 6),
    "i4": (None, 7.0, 2, 2),
}

MX = {
    "mxfp4": ("e2m1", "floor"),
    "mxfp4_ceil": ("e2m1", "ceil"),
    "mxfp4_rceil": ("e2m1", "rceil"),
    "mxfp4_even": ("e2m1", "even"),
    "mxfp6": ("e2m3", "floor"),
    "mxfp6_e3m2": ("e3m2", "floor"),
    "mxfp8": ("e4m3fn", "floor"),
    "mxfp8_e5m2": ("e5m2", "floor"),
    "mxint8": ("mxi8", "floor"),
}

NV = {  # name: (element, convention, tensor-scale storage)
    "nvfp4": ("e2m1", "modelopt", "divisor"),
    "nvfp4_torchao": ("e2m1", "torchao", "divisor"),
    "nvfp4_ct": ("e2m1", "modelopt", "reciprocal"),
    "nvfp4_spec": ("e2m1", "spec", "divisor"),
    "nvfp4_ggml": ("e2m1", "spec", "none"),
    "nvint4": ("i4", "spec", "divisor"),
}


def floor_log2(a):
    """Exact floor(log2(a)) for finite a > 0 (frexp is exact)."""
    m, e = np.frexp(a.astype(np.float64))
    return (e - 1).astype(np.int64)


def ceil_log2(a):
    m, e = np.frexp(a.astype(np.float64))
    return np.where(m == 0.5, e - 1, e).astype(np.int64)


def encode_elem(v, elem):
    t, mx, _, _ = ELEM[elem]
    with np.errstate(invalid="ignore"):
        if elem == "mxi8":
            q = np.clip(np.rint(v * F32(64)), -127, 127)
            return np.where(np.isnan(q), 0, q).astype(np.int64).astype(np.int8).view(np.uint8)
        if elem == "i4":
            q = np.clip(np.rint(v), -7, 7)
            return (np.where(np.isnan(q), 0, q).astype(np.int64) & 0xF).astype(np.uint8)
        c = np.clip(v, F32(-mx), F32(mx)).astype(t).view(np.uint8)
        if ELEM[elem][0] in (md.float4_e2m1fn, md.float6_e2m3fn, md.float6_e3m2fn):
            c = np.where(np.isnan(v), 0, c).astype(np.uint8)
        return c


def mx_exponent(amax, elem, rule):
    _, mx, emax, mbits = ELEM[elem]
    n = amax.shape[0]
    e = np.zeros(n, np.int64)
    nan = np.isnan(amax)
    with np.errstate(all="ignore"):
        if rule == "floor":
            a = np.where(amax == 0, F32(2.0**-126), amax)
            fin = np.isfinite(a)
            e[fin] = floor_log2(a[fin]) - emax
            nan |= ~fin
        elif rule == "ceil":
            r = (amax / F32(mx)).astype(F32)
            fin = np.isfinite(r) & (r > 0)
            e[fin] = ceil_log2(r[fin])
            e[r == 0] = -127
            nan |= np.isinf(r)
        elif rule == "rceil":
            r = (amax * F32(1.0 / mx)).astype(F32)
            fin = np.isfinite(r) & (r > 0)
            e[fin] = np.minimum(ceil_log2(r[fin]), 127)
            e[r == 0] = -127
            e[np.isinf(r)] = 127
        elif rule == "even":
            bits = amax.view(np.uint32).astype(np.uint64)
            bits = ((bits + (1 << (22 - mbits))) & 0xFF800000).astype(np.uint32)
            rounded = bits.view(F32)
            fin = np.isfinite(rounded) & (rounded > 0)
            e[fin] = floor_log2(rounded[fin]) - emax
            e[rounded == 0] = -127
            nan |= np.isinf(rounded)
    nan |= e > 127
    e = np.maximum(e, -127)
    return e, nan


def spec(fmt, x):
    if fmt in MX:
        elem, rule = MX[fmt]
        b = x.reshape(-1, 32)
        amax = np.max(np.abs(b), axis=1)
        e, nan = mx_exponent(amax, elem, rule)
        scales = np.where(nan, 255, e + 127).astype(np.uint8)
        mul = np.where(nan, F32(np.nan), np.ldexp(F32(1), (-e).astype(np.int32)).astype(F32)).astype(F32)
        with np.errstate(all="ignore"):
            v = (b * mul[:, None]).astype(F32)
        return encode_elem(v, elem).reshape(-1), scales
    elem, conv, ts = NV[fmt]
    mx = F32(ELEM[elem][1])
    rows, cols = x.shape
    codes, scales = [], []
    for t in range(0, rows, TENSOR_ROWS):
        xt = x[t : t + TENSOR_ROWS]
        b = xt.reshape(-1, 16)
        amax = np.max(np.abs(b), axis=1)
        tamax = np.max(amax)
        with np.errstate(all="ignore"):
            usable = tamax != 0 and np.isfinite(tamax)
            gs = (tamax / (mx * F32(448))).astype(F32) if usable else F32(1)
            gr = ((mx * F32(448)) / tamax).astype(F32) if usable else F32(1)
            if np.isnan(tamax):
                gs = gr = F32(np.nan)
            if ts == "reciprocal":
                s = (gr * (amax / mx)).astype(F32)
                s = np.where(s == 0, F32(1), s)
                sc = np.minimum(s, F32(448)).astype(md.float8_e4m3fn)
            elif ts == "none":
                s = (amax / mx).astype(F32)
                sc = np.minimum(s, F32(448)).astype(md.float8_e4m3fn)
                sc = np.where(sc.view(np.uint8) == 0, np.uint8(0x38), sc.view(np.uint8)).view(md.float8_e4m3fn)
            elif conv == "modelopt":
                s = (amax / (mx * gs)).astype(F32)
                s = np.where(s == 0, F32(1), s)
                s = np.maximum(s, F32(2.0**-9))
                sc = s.astype(md.float8_e4m3fn)
            elif conv == "torchao":
                s = ((amax / mx) / gs).astype(F32)
                s = np.clip(s, F32(2.0**-6), F32(448))
                sc = s.astype(md.float8_e4m3fn)
            else:
                s = (amax / (mx * gs)).astype(F32)
                sc = np.minimum(s, F32(448)).astype(md.float8_e4m3fn)
                sc = np.where(sc.view(np.uint8) == 0, np.uint8(0x38), sc.view(np.uint8)).view(md.float8_e4m3fn)
            # qc's documented policy: a block whose amax is not finite gets a NaN scale.
            sc = np.where(np.isfinite(amax), sc.view(np.uint8), np.uint8(0x7F)).view(md.float8_e4m3fn)
            sb = sc.astype(F32)
            if ts == "reciprocal":
                total = (sb / gr).astype(F32)
            elif ts == "none":
                total = sb
            else:
                total = (sb * gs).astype(F32)
            v = (b / total[:, None]).astype(F32)
        c = encode_elem(v, elem)
        if conv == "modelopt" and ts != "none":
            c = np.where(v == 0, np.uint8(0), c).astype(np.uint8)
        codes.append(c.reshape(-1))
        scales.append(sc.view(np.uint8) & np.uint8(0x7F))
    return np.concatenate(codes), np.concatenate(scales)


def onnx_run(kind, x, scales, qc_codes):
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    rows, cols = x.shape
    if kind == "mxfp4":
        qt, st = TensorProto.FLOAT4E2M1, TensorProto.FLOAT8E8M0
        scale_q = scales.view(md.float8_e8m0fnu).reshape(rows, cols // 32)
        scale_f = scale_q.astype(F32)
        codes_in = qc_codes.reshape(rows, cols).view(md.float4_e2m1fn)
    else:
        qt, st = TensorProto.INT4, TensorProto.FLOAT
        scale_f = scales.view(F32).reshape(rows, cols // 32)
        scale_q = scale_f
        signed = np.where(qc_codes >= 8, qc_codes.astype(np.int16) - 16, qc_codes).astype(np.int8)
        codes_in = signed.reshape(rows, cols).astype(md.int4)
    qnode = helper.make_node("QuantizeLinear", ["x", "s"], ["y"], axis=1, block_size=32, output_dtype=qt)
    qgraph = helper.make_graph(
        [qnode], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, cols]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [rows, cols // 32])],
        [helper.make_tensor_value_info("y", qt, [rows, cols])])
    model = helper.make_model(qgraph, opset_imports=[helper.make_opsetid("", 24)])
    with np.errstate(all="ignore"):
        (y,) = ReferenceEvaluator(model).run(None, {"x": x, "s": scale_f})
    if kind == "mxfp4":
        codes = y.view(np.uint8)
    else:
        codes = (y.astype(np.int16) & 0xF).astype(np.uint8)
    dnode = helper.make_node("DequantizeLinear", ["q", "s"], ["z"], axis=1, block_size=32, output_dtype=TensorProto.FLOAT)
    dgraph = helper.make_graph(
        [dnode], "d",
        [helper.make_tensor_value_info("q", qt, [rows, cols]),
         helper.make_tensor_value_info("s", st, [rows, cols // 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [rows, cols])])
    dmodel = helper.make_model(dgraph, opset_imports=[helper.make_opsetid("", 24)])
    with np.errstate(all="ignore"):
        (z,) = ReferenceEvaluator(dmodel).run(None, {"q": codes_in, "s": scale_q})
    return codes.reshape(-1), z.astype(F32).reshape(-1)


def main():
    mode = sys.argv[1]
    if mode == "spec":
        fmt, path, rows, cols, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
        x = np.fromfile(path, dtype="<f4").reshape(rows, cols)
        codes, scales = spec(fmt, x)
        codes.astype(np.uint8).tofile(os.path.join(out, "codes.u8"))
        scales.astype(np.uint8).tofile(os.path.join(out, "scales.u8"))
    elif mode == "onnx":
        kind, path, rows, cols, spath, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
        x = np.fromfile(path, dtype="<f4").reshape(rows, cols)
        scales = np.fromfile(spath, dtype=np.uint8)
        qc_codes = np.fromfile(os.path.join(out, "qc_codes.u8"), dtype=np.uint8)
        codes, deq = onnx_run(kind, x, scales, qc_codes)
        codes.astype(np.uint8).tofile(os.path.join(out, "codes.u8"))
        deq.tofile(os.path.join(out, "dequant.f32"))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

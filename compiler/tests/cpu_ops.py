"""Models and inputs of compiler/tests/cpu.rs's op tests: `python3 cpu_ops.py DIR` writes into DIR

- window.onnx (inputs x [2, 4, 9, 8], x1 [2, 3, 10], x3 [1, 2, 4, 5, 6]): convolutions (strides, pads,
  dilations, groups, 1x1 depthwise, 64 output channels per group),
  transposed convolutions (strides, pads, output_padding, dilations, groups), max / average pooling
  (pads, strides, dilations, ceil_mode, count_include_pad), global pooling, LRN (odd and even sizes),
  Shrink, and a small CNN (conv, batch norm, relu, max pool, grouped strided conv, ceil-mode average
  pool, LRN, global average pool, flatten, gemm, softmax) with random weights, and 1-D / 3-D
  convolutions, a 1-D transposed convolution, 1-D / 3-D pooling and int8 max pooling; one output
  each;
- qdq.onnx (inputs x [4, 6, 8], lp [3, 5, 4], tg [3, 4]): QuantizeLinear (cast to int32) and
  DequantizeLinear per tensor (uint8, int8), per axis (int8), in blocks (uint4, int16),
  DynamicQuantizeLinear (on x and on 5 * lp), and NegativeLogLikelihoodLoss (every reduction, with and
  without ignore_index, without weights); outputs named nll_* are sums (compared within a tolerance),
  the others must be bit-exact;
- hadamard.qir (input x [3, 64]): quant.hadamard with blocks 16 and 64;
- index.onnx (inputs x [2, 4, 9, 8], m [5, 7], o [1, 4], b32 / e32 int32 [24], b64 / e64 int64 [24]):
  Slice with negative steps (several axes, mixed signs, clamped starts and ends), Pad in modes
  reflect (pads beyond the dimension, a dimension of 1), edge and wrap on 2-D and 4-D tensors with
  asymmetric pads, and integer Pow (int32 / int64 bases and exponents: 0, 1, large, beyond 2^32,
  overflowing); every output must be bit-exact;
- the inputs x.npy, xq.npy, lp.npy, tg.npy, xh.npy, m.npy, o.npy: normal noise, and for xq rounding
  ties at several scales, +-0, NaN, values beyond every code range and beyond 2^31 times the scale;
  b32.npy, e32.npy, b64.npy, e64.npy: the pow operands.
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

d = sys.argv[1]
r = np.random.default_rng(0)
F = T.FLOAT


def vi(n, t, s):
    return h.make_tensor_value_info(n, t, s)


def save(name, nodes, ins, outs, inits, opset):
    g = h.make_graph(nodes, name, ins, outs, inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]), os.path.join(d, name))


def init(name, a):
    return nh.from_array(np.asarray(a, np.float32), name)


# ---- window ops
nodes, outs, inits = [], [], []


def out(name, node):
    nodes.append(node)
    outs.append(vi(name, F, None))


convs = [
    ("conv_a", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), (6, 4, 3, 3)),
    ("conv_b", dict(kernel_shape=[3, 2], strides=[2, 3], pads=[0, 1, 2, 0], dilations=[2, 1]), (6, 4, 3, 2)),
    ("conv_c", dict(kernel_shape=[3, 3], group=2, strides=[1, 2], pads=[1, 0, 1, 1]), (6, 2, 3, 3)),
    ("conv_d", dict(kernel_shape=[1, 1], group=4), (4, 1, 1, 1)),
]
for name, attrs, ws in convs:
    inits += [init(name + "_w", r.standard_normal(ws) * 0.3), init(name + "_b", r.standard_normal(ws[0]))]
    out(name, h.make_node("Conv", ["x", name + "_w", name + "_b"], [name], **attrs))
convts = [
    ("convt_a", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0]), (4, 3, 3, 3)),
    ("convt_b", dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1], group=2), (4, 2, 2, 3)),
    ("convt_c", dict(kernel_shape=[3, 3], strides=[3, 2], pads=[0, 2, 1, 0]), (4, 5, 3, 3)),
]
for name, attrs, ws in convts:
    m = ws[1] * attrs.get("group", 1)
    inits += [init(name + "_w", r.standard_normal(ws) * 0.3), init(name + "_b", r.standard_normal(m))]
    out(name, h.make_node("ConvTranspose", ["x", name + "_w", name + "_b"], [name], **attrs))
# Wide ones (64 output channels per group: the CPU target's transposed product).
inits += [
    init("conv_w64_w", r.standard_normal((64, 4, 3, 3)) * 0.3),
    init("conv_w64_b", r.standard_normal(64)),
    init("conv_g64_w", r.standard_normal((128, 2, 3, 1)) * 0.3),
    init("conv_g64_b", r.standard_normal(128)),
    init("convt_w64_w", r.standard_normal((4, 64, 2, 2)) * 0.3),
    init("convt_w64_b", r.standard_normal(64)),
]
out("conv_w64", h.make_node("Conv", ["x", "conv_w64_w", "conv_w64_b"], ["conv_w64"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
out("conv_g64", h.make_node("Conv", ["x", "conv_g64_w", "conv_g64_b"], ["conv_g64"], kernel_shape=[3, 1], group=2, pads=[1, 0, 1, 0]))
out("convt_w64", h.make_node("ConvTranspose", ["x", "convt_w64_w", "convt_w64_b"], ["convt_w64"], kernel_shape=[2, 2], strides=[2, 2]))
# No bias.
inits.append(init("conv_e_w", r.standard_normal((3, 4, 2, 2))))
out("conv_e", h.make_node("Conv", ["x", "conv_e_w"], ["conv_e"], kernel_shape=[2, 2], strides=[2, 2]))
pools = [
    ("maxpool_a", "MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("maxpool_b", "MaxPool", dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1, dilations=[1, 2])),
    ("avgpool_a", "AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("avgpool_b", "AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("avgpool_c", "AveragePool", dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1, pads=[0, 1, 0, 1])),
    ("avgpool_d", "AveragePool", dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1, pads=[1, 1, 0, 1], count_include_pad=1)),
    ("gap", "GlobalAveragePool", {}),
    ("gmp", "GlobalMaxPool", {}),
    ("lrn_a", "LRN", dict(size=3, alpha=0.01, beta=0.75, bias=1.5)),
    ("lrn_b", "LRN", dict(size=4)),
    ("shrink", "Shrink", dict(bias=0.25, lambd=0.6)),
]
for name, op, attrs in pools:
    out(name, h.make_node(op, ["x"], [name], **attrs))
# The CNN.
inits += [
    init("c1_w", r.standard_normal((8, 4, 3, 3)) * 0.3),
    init("c1_b", r.standard_normal(8) * 0.1),
    init("bn_s", r.uniform(0.5, 1.5, 8)),
    init("bn_b", r.standard_normal(8) * 0.1),
    init("bn_m", r.standard_normal(8) * 0.1),
    init("bn_v", r.uniform(0.5, 1.5, 8)),
    init("c2_w", r.standard_normal((8, 4, 3, 3)) * 0.3),
    init("c2_b", r.standard_normal(8) * 0.1),
    init("fc_w", r.standard_normal((8, 5)) * 0.5),
    init("fc_b", r.standard_normal(5) * 0.1),
]
nodes += [
    h.make_node("Conv", ["x", "c1_w", "c1_b"], ["n1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    h.make_node("BatchNormalization", ["n1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n2"]),
    h.make_node("Relu", ["n2"], ["n3"]),
    h.make_node("MaxPool", ["n3"], ["n4"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    h.make_node("Conv", ["n4", "c2_w", "c2_b"], ["n5"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2, strides=[2, 1]),
    h.make_node("AveragePool", ["n5"], ["n6"], kernel_shape=[2, 2], ceil_mode=1, strides=[2, 2]),
    h.make_node("LRN", ["n6"], ["n7"], size=5, alpha=0.1),
    h.make_node("GlobalAveragePool", ["n7"], ["n8"]),
    h.make_node("Flatten", ["n8"], ["n9"]),
    h.make_node("Gemm", ["n9", "fc_w", "fc_b"], ["n10"]),
    h.make_node("Softmax", ["n10"], ["cnn"]),
]
outs.append(vi("cnn", F, None))
# 1-D and 3-D windows.
inits += [
    init("c1d_w", r.standard_normal((4, 3, 3)) * 0.3),
    init("c1d_b", r.standard_normal(4)),
    init("ct1d_w", r.standard_normal((3, 5, 2)) * 0.3),
    init("ct1d_b", r.standard_normal(5)),
    init("c3d_w", r.standard_normal((4, 2, 2, 3, 2)) * 0.3),
    init("c3d_b", r.standard_normal(4)),
]
out("conv1d", h.make_node("Conv", ["x1", "c1d_w", "c1d_b"], ["conv1d"], kernel_shape=[3], strides=[2], pads=[2, 1], dilations=[2]))
out("convt1d", h.make_node("ConvTranspose", ["x1", "ct1d_w", "ct1d_b"], ["convt1d"], kernel_shape=[2], strides=[3], pads=[1, 0]))
out("maxpool1d", h.make_node("MaxPool", ["x1"], ["maxpool1d"], kernel_shape=[3], strides=[2], ceil_mode=1))
out("conv3d", h.make_node("Conv", ["x3", "c3d_w", "c3d_b"], ["conv3d"], kernel_shape=[2, 3, 2], pads=[0, 1, 1, 1, 1, 0], strides=[1, 2, 2]))
out("avgpool3d", h.make_node("AveragePool", ["x3"], ["avgpool3d"], kernel_shape=[2, 2, 3], strides=[2, 2, 2], pads=[1, 0, 1, 0, 1, 1]))
# Integer max pooling.
inits.append(init("twenty", 20.0))
nodes += [
    h.make_node("Mul", ["x", "twenty"], ["x20"]),
    h.make_node("Cast", ["x20"], ["x8"], to=T.INT8),
    h.make_node("MaxPool", ["x8"], ["mp8"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    h.make_node("Cast", ["mp8"], ["maxpool_i8"], to=T.INT32),
]
outs.append(vi("maxpool_i8", T.INT32, None))
ins = [vi("x", F, [2, 4, 9, 8]), vi("x1", F, [2, 3, 10]), vi("x3", F, [1, 2, 4, 5, 6])]
save("window.onnx", nodes, ins, outs, inits, 18)
np.save(os.path.join(d, "x.npy"), r.standard_normal((2, 4, 9, 8)).astype(np.float32))
np.save(os.path.join(d, "x1.npy"), r.standard_normal((2, 3, 10)).astype(np.float32))
np.save(os.path.join(d, "x3.npy"), r.standard_normal((1, 2, 4, 5, 6)).astype(np.float32))

# ---- linear quantization, nll_loss
nodes, outs, inits = [], [], []


def qdq(name, scale, zp, zt, attrs):
    s, z = name + "_s", name + "_z"
    inits.append(init(s, scale))
    inits.append(h.make_tensor(z, zt, list(np.shape(zp)), np.asarray(zp).flatten().tolist()))
    nodes.append(h.make_node("QuantizeLinear", ["x", s, z], [name + "_q"], **attrs))
    nodes.append(h.make_node("Cast", [name + "_q"], [name + "_codes"], to=T.INT32))
    nodes.append(h.make_node("DequantizeLinear", [name + "_q", s, z], [name + "_deq"], **attrs))
    outs.extend([vi(name + "_codes", T.INT32, None), vi(name + "_deq", F, None)])


qdq("tensor_u8", 0.5, 3, T.UINT8, {})
qdq("tensor_i8", 0.25, -2, T.INT8, {})
qdq("axis_i8", r.uniform(0.05, 1, 6), r.integers(-5, 5, 6), T.INT8, dict(axis=1))
qdq("block_u4", r.uniform(0.05, 1, (4, 6, 2)), r.integers(0, 15, (4, 6, 2)), T.UINT4, dict(axis=2, block_size=4))
qdq("block_i16", r.uniform(0.001, 0.1, (4, 2, 8)), r.integers(-50, 50, (4, 2, 8)), T.INT16, dict(axis=1, block_size=4))
inits.append(init("five", 5.0))
nodes.append(h.make_node("Mul", ["lp", "five"], ["lp5"]))
for name, src in [("dyn", "x"), ("dyn_lp", "lp5")]:
    nodes.append(h.make_node("DynamicQuantizeLinear", [src], [name + "_q", name + "_scale", name + "_z"]))
    nodes.append(h.make_node("Cast", [name + "_q"], [name + "_codes"], to=T.INT32))
    nodes.append(h.make_node("Cast", [name + "_z"], [name + "_zp"], to=T.INT32))
    outs += [vi(name + "_codes", T.INT32, None), vi(name + "_scale", F, None), vi(name + "_zp", T.INT32, None)]
inits.append(init("nll_w", r.uniform(0.5, 2, 5)))
for red in ["none", "sum", "mean"]:
    for ign in [None, 2]:
        attrs = dict(reduction=red)
        if ign is not None:
            attrs["ignore_index"] = ign
        name = f"nll_{red}_{ign}"
        nodes.append(h.make_node("NegativeLogLikelihoodLoss", ["lp", "tg", "nll_w"], [name], **attrs))
        outs.append(vi(name, F, None))
nodes.append(h.make_node("NegativeLogLikelihoodLoss", ["lp", "tg"], ["nll_unweighted"], reduction="mean"))
outs.append(vi("nll_unweighted", F, None))
save(
    "qdq.onnx",
    nodes,
    [vi("x", F, [4, 6, 8]), vi("lp", F, [3, 5, 4]), vi("tg", T.INT64, [3, 4])],
    outs,
    inits,
    21,
)
x = (r.standard_normal((4, 6, 8)) * 3).astype(np.float32)
x[0, 0] = [0.5, 1.5, 2.5, -0.5, -1.5, 1e10, -1e10, np.nan]
x[0, 1] = [0.0, -0.0, 127.5, 128.5, -128.5, 254.5, 255.5, 3e9]
x[0, 2] = [0.125, 0.375, -0.125, -0.375, 0.625, 31.75, 32.25, -32.25]
np.save(os.path.join(d, "xq.npy"), x)
np.save(os.path.join(d, "lp.npy"), r.standard_normal((3, 5, 4)).astype(np.float32))
tg = r.integers(0, 5, (3, 4)).astype(np.int64)
tg[0, 0] = tg[1, 1] = 2
np.save(os.path.join(d, "tg.npy"), tg)

# ---- hadamard
with open(os.path.join(d, "hadamard.qir"), "w") as f:
    f.write(
        "func.func @main(%x: tensor<3x64xf32>) -> (tensor<3x64xf32>, tensor<3x64xf32>) {\n"
        "  %y = quant.hadamard %x {block = 16} : (tensor<3x64xf32>) -> tensor<3x64xf32>\n"
        "  %z = quant.hadamard %x {block = 64} : (tensor<3x64xf32>) -> tensor<3x64xf32>\n"
        "  return %y, %z : tensor<3x64xf32>, tensor<3x64xf32>\n"
        "}\n"
    )
np.save(os.path.join(d, "xh.npy"), (r.standard_normal((3, 64)) * 4).astype(np.float32))

# ---- index ops: negative-step slices, edge / reflect / wrap padding, integer pow
nodes, outs, inits = [], [], []


def i64(name, a):
    inits.append(nh.from_array(np.asarray(a, np.int64), name))
    return name


def slice_(name, src, starts, ends, axes, steps):
    ins = [src, i64(name + "_st", starts), i64(name + "_en", ends), i64(name + "_ax", axes), i64(name + "_sp", steps)]
    nodes.append(h.make_node("Slice", ins, [name]))
    outs.append(vi(name, F, None))


slice_("slice_rev", "x", [-1], [-100], [3], [-1])
slice_("slice_two", "x", [7, 6], [0, -9], [2, 3], [-2, -3])
slice_("slice_clamped", "x", [100, 1], [0, -100], [1, 0], [-1, -1])
slice_("slice_mixed", "x", [0, -2, 1], [2, 0, 8], [0, 2, 3], [1, -3, 2])
slice_("slice_m", "m", [5, 4], [1, -6], [-1, -2], [-2, -1])
slice_("slice_m_big", "m", [-1], [-8], [1], [-4])


def pad(name, src, mode, pads):
    nodes.append(h.make_node("Pad", [src, i64(name + "_p", pads)], [name], mode=mode))
    outs.append(vi(name, F, None))


pad("pad_reflect_m", "m", "reflect", [2, 6, 4, 3])
pad("pad_reflect_m_wide", "m", "reflect", [9, 1, 0, 15])
pad("pad_edge_m", "m", "edge", [0, 3, 5, 1])
pad("pad_wrap_m", "m", "wrap", [3, 8, 1, 2])
pad("pad_reflect_o", "o", "reflect", [2, 1, 3, 2])
pad("pad_reflect_x", "x", "reflect", [0, 1, 3, 0, 1, 2, 0, 5])
pad("pad_edge_x", "x", "edge", [1, 0, 2, 4, 0, 3, 1, 2])
pad("pad_wrap_x", "x", "wrap", [0, 0, 2, 9, 1, 0, 3, 1])
for base, ex in [("b32", "e32"), ("b64", "e64"), ("b32", "e64"), ("b64", "e32")]:
    name = f"pow_{base}_{ex}"
    nodes.append(h.make_node("Pow", [base, ex], [name]))
    outs.append(vi(name, T.INT32 if base == "b32" else T.INT64, None))
save(
    "index.onnx",
    nodes,
    [
        vi("x", F, [2, 4, 9, 8]),
        vi("m", F, [5, 7]),
        vi("o", F, [1, 4]),
        vi("b32", T.INT32, [24]),
        vi("e32", T.INT32, [24]),
        vi("b64", T.INT64, [24]),
        vi("e64", T.INT64, [24]),
    ],
    outs,
    inits,
    19,
)
np.save(os.path.join(d, "m.npy"), r.standard_normal((5, 7)).astype(np.float32))
np.save(os.path.join(d, "o.npy"), r.standard_normal((1, 4)).astype(np.float32))
bases = [0, 1, -1, 2, -2, 3, -3, 7, -7, 10, -10, 12345, -54321, 2**31 - 1, -(2**31), 65537, 5, 0, 1, -1, 3, 2, -2, 11]
exps = [0, 1, 2, 3, 5, 7, 10, 31, 32, 33, 63, 64, 100, 1000, 2**31 - 1, 0, 1, 2**30, 0, 2**31 - 2, 41, 30, 31, 9]
np.save(os.path.join(d, "b32.npy"), np.array(bases, np.int32))
np.save(os.path.join(d, "e32.npy"), np.array(exps, np.int32))
b64 = bases[:]
b64[11], b64[12], b64[15] = 3**30, -(7**20), 2**40 + 1
e64 = exps[:]
e64[14], e64[16], e64[19] = 2**62, 5 * 10**9, 2**32 + 3
np.save(os.path.join(d, "b64.npy"), np.array(b64, np.int64))
np.save(os.path.join(d, "e64.npy"), np.array(e64, np.int64))

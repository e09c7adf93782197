#!/usr/bin/env python3
"""Writes a BERT-style encoder as ONNX (opset 18), built node by node with onnx.helper, random weights.

    python3 scripts/models/make_bert.py --config tiny --out /tmp/m/bert.onnx
    python3 scripts/models/make_bert.py --config 1b --out target/models/bert-large.onnx

Graph, as Hugging Face's BERT exports it:
  inputs  input_ids, token_type_ids, attention_mask: int64 [batch, seq] (symbolic dims)
  embeddings: Gather(word) + Gather(position of Range(0, seq)) + Gather(token type), then LayerNorm
              written out as ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div / Mul / Add
  mask: Unsqueeze -> Cast(bool) -> Not -> Expand to [batch, 1, seq, seq] -> Where(., float32 min, 0),
        added to the attention scores
  each layer: Q, K, V projections (MatMul + Add), Reshape [0, 0, heads, head_dim] + Transpose, scores
              Q K^T / sqrt(head_dim) + mask, Softmax, context reshaped back through a shape built from
              Shape / Gather / Unsqueeze / Concat, output projection, residual, LayerNormalization, FFN
              with GELU written as 0.5 x (1 + Erf(x / sqrt 2)), residual, LayerNormalization
  outputs last_hidden_state [batch, seq, hidden] and pooler_output = Tanh(Gather(token 0) W + b)

Configs: tiny (for tests) and 1b = BERT-large shapes (hidden 1024, 24 layers, 16 heads, intermediate
4096, vocab 30522, 512 positions; 335M parameters, 1.34 GB of float32).
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Builder, np, TensorProto, helper, parse_args, report  # noqa: E402

CONFIGS = {
    "tiny": dict(hidden=32, layers=2, heads=4, intermediate=64, vocab=97, max_pos=64, type_vocab=2, std=0.2),
    "1b": dict(hidden=1024, layers=24, heads=16, intermediate=4096, vocab=30522, max_pos=512, type_vocab=2, std=0.02),
}
EPS = 1e-12


def layer_norm_decomposed(b, x, name, hidden):
    axes = b.i64(-1)
    mean = b.op("ReduceMean", [x, axes], keepdims=1)
    d = b.op("Sub", [x, mean])
    var = b.op("ReduceMean", [b.op("Pow", [d, b.scalar(2.0)]), axes], keepdims=1)
    std = b.op("Sqrt", [b.op("Add", [var, b.scalar(EPS)])])
    y = b.op("Mul", [b.op("Div", [d, std]), b.randnorm(f"{name}.weight", (hidden,))])
    return b.op("Add", [y, b.randn(f"{name}.bias", (hidden,))])


def layer_norm(b, x, name, hidden):
    return b.op("LayerNormalization", [x, b.randnorm(f"{name}.weight", (hidden,)), b.randn(f"{name}.bias", (hidden,))],
                axis=-1, epsilon=EPS)


def build(a, cfg):
    h, nh = cfg["hidden"], cfg["heads"]
    hd = h // nh
    b = Builder(a.seed, a.out, a.external, cfg["std"], a.dist)
    ids, tt, am = "input_ids", "token_type_ids", "attention_mask"

    # Embeddings.
    shape = b.op("Shape", [ids])
    seq = b.op("Gather", [shape, b.const(np.array(1, dtype=np.int64))], axis=0)
    batch = b.op("Gather", [shape, b.const(np.array(0, dtype=np.int64))], axis=0)
    pos = b.op("Range", [b.const(np.array(0, dtype=np.int64)), seq, b.const(np.array(1, dtype=np.int64))])
    pos = b.op("Unsqueeze", [pos, b.i64(0)])
    e = b.op("Gather", [b.randn("embeddings.word_embeddings.weight", (cfg["vocab"], h)), ids], axis=0)
    e = b.op("Add", [e, b.op("Gather", [b.randn("embeddings.position_embeddings.weight", (cfg["max_pos"], h)), pos])])
    e = b.op("Add", [e, b.op("Gather", [b.randn("embeddings.token_type_embeddings.weight", (cfg["type_vocab"], h)), tt])])
    x = layer_norm_decomposed(b, e, "embeddings.LayerNorm", h)

    # Attention mask: [batch, seq] of 0/1 -> additive bias [batch, 1, seq, seq].
    m = b.op("Cast", [b.op("Unsqueeze", [am, b.i64(1, 2)])], to=TensorProto.BOOL)
    one = b.i64(1)
    ms = b.op("Concat", [b.op("Unsqueeze", [batch, b.i64(0)]), one, b.op("Unsqueeze", [seq, b.i64(0)]),
                         b.op("Unsqueeze", [seq, b.i64(0)])], axis=0)
    masked = b.op("Expand", [b.op("Not", [m]), ms])
    bias = b.op("Where", [masked, b.scalar(np.finfo(np.float32).min), b.scalar(0.0)])

    split = b.i64(0, 0, nh, hd)
    scale = b.scalar(math.sqrt(hd))
    for i in range(cfg["layers"]):
        p = f"encoder.layer.{i}"
        q = b.linear(x, f"{p}.attention.self.query", h, h, True)
        k = b.linear(x, f"{p}.attention.self.key", h, h, True)
        v = b.linear(x, f"{p}.attention.self.value", h, h, True)
        q = b.op("Transpose", [b.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
        kt = b.op("Transpose", [b.op("Reshape", [k, split])], perm=[0, 2, 3, 1])
        v = b.op("Transpose", [b.op("Reshape", [v, split])], perm=[0, 2, 1, 3])
        s = b.op("Div", [b.op("MatMul", [q, kt]), scale])
        probs = b.op("Softmax", [b.op("Add", [s, bias])], axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        xs = b.op("Shape", [ctx])
        merged = b.op("Concat", [b.op("Unsqueeze", [b.op("Gather", [xs, b.const(np.array(0, dtype=np.int64))], axis=0), b.i64(0)]),
                                 b.op("Unsqueeze", [b.op("Gather", [xs, b.const(np.array(1, dtype=np.int64))], axis=0), b.i64(0)]),
                                 b.i64(h)], axis=0)
        ctx = b.op("Reshape", [ctx, merged])
        o = b.linear(ctx, f"{p}.attention.output.dense", h, h, True)
        x = layer_norm(b, b.op("Add", [o, x]), f"{p}.attention.output.LayerNorm", h)
        f = b.linear(x, f"{p}.intermediate.dense", h, cfg["intermediate"], True)
        g = b.op("Erf", [b.op("Div", [f, b.scalar(math.sqrt(2.0))])])
        f = b.op("Mul", [b.op("Mul", [f, b.op("Add", [g, b.scalar(1.0)])]), b.scalar(0.5)])
        o = b.linear(f, f"{p}.output.dense", cfg["intermediate"], h, True)
        x = layer_norm(b, b.op("Add", [o, x]), f"{p}.output.LayerNorm", h)

    b.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="n_out"))
    first = b.op("Gather", [x, b.const(np.array(0, dtype=np.int64))], axis=1)
    pooled = b.linear(first, "pooler.dense", h, h, True)
    b.nodes.append(helper.make_node("Tanh", [pooled], ["pooler_output"], name="n_pool"))

    i64 = TensorProto.INT64
    inputs = [helper.make_tensor_value_info(n, i64, ["batch", "seq"]) for n in (ids, tt, am)]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", h]),
               helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch", h])]
    b.save(inputs, outputs, "bert", f"BERT-style encoder, random weights (seed {a.seed}), config {cfg}")
    return b


def main():
    a, cfg = parse_args(__doc__.splitlines()[0], CONFIGS)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    b = build(a, cfg)
    report(a.out, cfg, b)


if __name__ == "__main__":
    main()

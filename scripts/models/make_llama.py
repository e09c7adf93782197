#!/usr/bin/env python3
"""Writes a Llama-style decoder as ONNX (opset 18), built node by node with onnx.helper, random weights.

    python3 scripts/models/make_llama.py --config tiny --out /tmp/m/llama.onnx
    python3 scripts/models/make_llama.py --config 1b --out target/models/llama-1b.onnx

Graph, as Hugging Face's Llama exports it (no KV cache: one prefill pass):
  inputs  input_ids, attention_mask: int64 [batch, seq] (symbolic dims)
  positions Range(0, seq); rotary cos / sin tables [max_pos, head_dim] gathered at the positions
  mask: causal part Less(Unsqueeze(i, 1), Unsqueeze(j, 0)) expanded to [1, 1, seq, seq], padding part
        Not(Cast(attention_mask, bool)) unsqueezed to [batch, 1, 1, seq], Or, Where(., float32 min, 0)
  RMSNorm: Cast(float) -> Pow 2 -> ReduceMean(axes input) -> Add eps -> Sqrt -> Div(1, .) -> Mul -> Mul w
  each layer: RMSNorm, Q / K / V projections (no bias), Reshape + Transpose to heads, rotary embedding
              q cos + rotate_half(q) sin with rotate_half = Concat(Neg(Slice(upper half)), Slice(lower)),
              grouped-query attention (K, V repeated to the query heads by Unsqueeze / Expand / Reshape),
              scores Q K^T / sqrt(head_dim) + mask, Softmax, output projection, residual; RMSNorm, SwiGLU
              MLP down(SiLU(gate x) * up x) with SiLU = x * Sigmoid(x), residual
  final RMSNorm, lm_head (untied) -> logits [batch, seq, vocab]

Configs: tiny (for tests) and 1b = Llama-3.2-1B shapes (hidden 2048, 16 layers, 32 heads, 8 KV heads,
head_dim 64, intermediate 8192, rope theta 500000) except the vocabulary: 32000 (Llama 2's) rather than
128256, so the file stays at 4.4 GB (1.10 B parameters, float32) and lm_head is untied.
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Builder, np, TensorProto, helper, parse_args, report  # noqa: E402

CONFIGS = {
    "tiny": dict(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, vocab=97, max_pos=64, theta=10000.0, std=0.2),
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=32000, max_pos=2048,
               theta=500000.0, std=0.02),
}
EPS = 1e-5
I64_MAX = np.iinfo(np.int64).max


def rms_norm(b, x, name, hidden, axes):
    xf = b.op("Cast", [x], to=TensorProto.FLOAT)
    var = b.op("ReduceMean", [b.op("Pow", [xf, b.scalar(2.0)]), axes], keepdims=1)
    inv = b.op("Div", [b.scalar(1.0), b.op("Sqrt", [b.op("Add", [var, b.scalar(EPS)])])])
    return b.op("Mul", [b.randnorm(f"{name}.weight", (hidden,)), b.op("Mul", [xf, inv])])


def build(a, cfg):
    h, nh, nkv = cfg["hidden"], cfg["heads"], cfg["kv_heads"]
    hd = h // nh
    rep = nh // nkv
    assert nh % nkv == 0 and hd % 2 == 0
    b = Builder(a.seed, a.out, a.external, cfg["std"], a.dist)
    ids, am = "input_ids", "attention_mask"
    s0 = lambda v: b.const(np.array(v, dtype=np.int64))  # noqa: E731 - an int64 scalar
    axes_last = b.i64(-1)

    shape = b.op("Shape", [ids])
    batch = b.op("Unsqueeze", [b.op("Gather", [shape, s0(0)], axis=0), b.i64(0)])
    seq_s = b.op("Gather", [shape, s0(1)], axis=0)
    seq = b.op("Unsqueeze", [seq_s, b.i64(0)])
    pos = b.op("Range", [s0(0), seq_s, s0(1)], hint="positions")

    # Rotary tables (float32, as HF computes them) gathered at the positions: [1, 1, seq, head_dim].
    inv_freq = 1.0 / (cfg["theta"] ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd))
    freqs = np.outer(np.arange(cfg["max_pos"], dtype=np.float32), inv_freq.astype(np.float32))
    emb = np.concatenate([freqs, freqs], axis=-1).astype(np.float32)
    cos = b.op("Unsqueeze", [b.op("Gather", [b.tensor("rotary.cos_cached", np.cos(emb)), pos], axis=0), b.i64(0, 1)])
    sin = b.op("Unsqueeze", [b.op("Gather", [b.tensor("rotary.sin_cached", np.sin(emb)), pos], axis=0), b.i64(0, 1)])

    # Mask bias [batch, 1, seq, seq].
    future = b.op("Less", [b.op("Unsqueeze", [pos, b.i64(1)]), b.op("Unsqueeze", [pos, b.i64(0)])])
    future = b.op("Expand", [future, b.op("Concat", [b.i64(1, 1), seq, seq], axis=0)])
    pad = b.op("Unsqueeze", [b.op("Not", [b.op("Cast", [am], to=TensorProto.BOOL)]), b.i64(1, 2)])
    bias = b.op("Where", [b.op("Or", [future, pad]), b.scalar(np.finfo(np.float32).min), b.scalar(0.0)])

    def rope(t):
        lo = b.op("Slice", [t, b.i64(0), b.i64(hd // 2), b.i64(-1)])
        hi = b.op("Slice", [t, b.i64(hd // 2), b.i64(I64_MAX), b.i64(-1)])
        rot = b.op("Concat", [b.op("Neg", [hi]), lo], axis=-1)
        return b.op("Add", [b.op("Mul", [t, cos]), b.op("Mul", [rot, sin])])

    def heads(t, n):
        return b.op("Transpose", [b.op("Reshape", [t, b.i64(0, 0, n, hd)])], perm=[0, 2, 1, 3])

    def repeat_kv(t):
        if rep == 1:
            return t
        t = b.op("Unsqueeze", [t, b.i64(2)])  # [batch, kv, 1, seq, hd]
        t = b.op("Expand", [t, b.op("Concat", [batch, b.i64(nkv, rep), seq, b.i64(hd)], axis=0)])
        return b.op("Reshape", [t, b.i64(0, nh, -1, hd)])

    x = b.op("Gather", [b.randn("model.embed_tokens.weight", (cfg["vocab"], h)), ids], axis=0)
    scale = b.scalar(1.0 / math.sqrt(hd))
    for i in range(cfg["layers"]):
        p = f"model.layers.{i}"
        y = rms_norm(b, x, f"{p}.input_layernorm", h, axes_last)
        q = rope(heads(b.linear(y, f"{p}.self_attn.q_proj", h, nh * hd, False), nh))
        k = rope(heads(b.linear(y, f"{p}.self_attn.k_proj", h, nkv * hd, False), nkv))
        v = heads(b.linear(y, f"{p}.self_attn.v_proj", h, nkv * hd, False), nkv)
        k, v = repeat_kv(k), repeat_kv(v)
        s = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        probs = b.op("Softmax", [b.op("Add", [s, bias])], axis=-1)
        ctx = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, b.i64(0, 0, nh * hd)])
        x = b.op("Add", [x, b.linear(ctx, f"{p}.self_attn.o_proj", nh * hd, h, False)])
        y = rms_norm(b, x, f"{p}.post_attention_layernorm", h, axes_last)
        g = b.linear(y, f"{p}.mlp.gate_proj", h, cfg["intermediate"], False)
        u = b.linear(y, f"{p}.mlp.up_proj", h, cfg["intermediate"], False)
        act = b.op("Mul", [b.op("Mul", [g, b.op("Sigmoid", [g])]), u])
        x = b.op("Add", [x, b.linear(act, f"{p}.mlp.down_proj", cfg["intermediate"], h, False)])

    x = rms_norm(b, x, "model.norm", h, axes_last)
    b.nodes.append(helper.make_node("MatMul", [x, b.randn("lm_head.weight", (h, cfg["vocab"]))], ["logits"],
                                    name="n_lm_head"))
    i64 = TensorProto.INT64
    inputs = [helper.make_tensor_value_info(n, i64, ["batch", "seq"]) for n in (ids, am)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg["vocab"]])]
    b.save(inputs, outputs, "llama", f"Llama-style decoder, random weights (seed {a.seed}), config {cfg}")
    return b


def main():
    a, cfg = parse_args(__doc__.splitlines()[0], CONFIGS)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    b = build(a, cfg)
    report(a.out, cfg, b)


if __name__ == "__main__":
    main()

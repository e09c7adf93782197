"""Shared pieces of make_bert.py and make_llama.py: a graph builder over onnx.helper whose weights are
random (seeded) and are streamed into one external data file as they are made, so that a 1B-class model
never sits in memory whole (neither as numpy arrays nor as protobuf bytes).

Needs numpy and onnx (>= 1.14). Weights are float32, drawn from N(0, std) with numpy's PCG64, or with
--dist t3 from a Student-t with 3 degrees of freedom scaled to the same standard deviation (heavy tails,
as trained LLM weights have: what rotations and clip searches are for).
"""

import argparse
import os
import sys

try:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # pragma: no cover - a clear message for the test harness
    sys.exit(f"error: {e.name} is missing; install numpy and onnx (bash .ci/install-python.sh)")

OPSET = 18
ALIGN = 64  # byte alignment of each tensor in the external data file


class Builder:
    """Collects nodes, initializers and value names; writes weights into `data_path` (external) or
    embeds them as raw_data (`data_path=None`)."""

    def __init__(self, seed, model_path, external, std, dist="normal"):
        self.std = std
        self.dist = dist
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.counter = 0
        self.model_path = model_path
        self.data_name = os.path.basename(model_path) + ".data" if external else None
        self.data = None
        if external:
            self.data = open(os.path.join(os.path.dirname(os.path.abspath(model_path)), self.data_name), "wb")
        self.weight_bytes = 0

    # ---- names and nodes ----------------------------------------------------------------------------
    def name(self, hint):
        self.counter += 1
        return f"{hint}_{self.counter}"

    def op(self, op_type, inputs, hint=None, n_out=1, **attrs):
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name("n_" + op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    # ---- constants and weights ----------------------------------------------------------------------
    def const(self, value, dtype=None, hint="c"):
        """A small constant as an initializer (embedded raw_data)."""
        arr = np.asarray(value, dtype=dtype)
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def i64(self, *vals):
        return self.const(np.array(vals, dtype=np.int64), hint="i64")

    def scalar(self, x, dtype=np.float32):
        return self.const(np.array(x, dtype=dtype), hint="s")

    def tensor(self, name, arr):
        """A weight: streamed to the data file when external, else embedded."""
        arr = np.ascontiguousarray(arr)
        self.weight_bytes += arr.nbytes
        if self.data is None:
            self.inits.append(numpy_helper.from_array(arr, name))
            return name
        pos = self.data.tell()
        pad = (-pos) % ALIGN
        if pad:
            self.data.write(b"\0" * pad)
            pos += pad
        self.data.write(arr.tobytes())
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.data_name), ("offset", str(pos)), ("length", str(arr.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)
        return name

    def randn(self, name, shape):
        """N(0, std) weights; std is the config's (0.02 as in BERT and Llama initialization for the real
        shapes; larger for tiny configs so that attention is far from uniform and a wrong op shows)."""
        if self.dist == "t3":
            # Student-t(3) has variance 3; scale to unit variance, then to std.
            w = (self.rng.standard_t(3, size=shape) / np.sqrt(3.0)).astype(np.float32)
        else:
            w = self.rng.standard_normal(shape, dtype=np.float32)
        return self.tensor(name, w * np.float32(self.std))

    def ones(self, name, shape):
        return self.tensor(name, np.ones(shape, dtype=np.float32))

    def randnorm(self, name, shape):
        """A norm weight near 1 (random so that a wrong broadcast shows)."""
        return self.tensor(name, (1.0 + 0.1 * self.rng.standard_normal(shape, dtype=np.float32)).astype(np.float32))

    # ---- common blocks ------------------------------------------------------------------------------
    def linear(self, x, name, d_in, d_out, bias):
        """x @ W (+ b), W stored [d_in, d_out] as PyTorch exports nn.Linear."""
        y = self.op("MatMul", [x, self.randn(f"{name}.weight", (d_in, d_out))], hint=name.replace(".", "_"))
        if bias:
            y = self.op("Add", [y, self.randn(f"{name}.bias", (d_out,))])
        return y

    def save(self, inputs, outputs, graph_name, doc):
        if self.data is not None:
            self.data.close()
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="qc scripts/models", doc_string=doc)
        model.ir_version = 8  # opset 18 needs IR 8; keeps older runtimes able to load it
        onnx.save(model, self.model_path)
        onnx.checker.check_model(self.model_path)  # by path: external data resolves beside the model
        return model


def parse_args(description, configs):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", choices=sorted(configs), default="tiny")
    p.add_argument("--out", required=True, help="the .onnx file to write (its weights go beside it)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--external-data", dest="external", action="store_true", default=None,
                   help="weights in one file beside the model, MODEL.onnx.data (default for every config)")
    g.add_argument("--embedded", dest="external", action="store_false",
                   help="weights inside the .onnx file as raw_data (only for models under 2 GiB)")
    p.add_argument("--std", type=float, help="override the config's weight standard deviation")
    p.add_argument("--dist", choices=["normal", "t3"], default="normal",
                   help="weight distribution: normal, or Student-t(3) scaled to the same std (heavy tails)")
    for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "max_pos"):
        if k in configs["tiny"]:
            p.add_argument("--" + k.replace("_", "-"), type=int, help=f"override the config's {k}")
    a = p.parse_args()
    cfg = dict(configs[a.config])
    for k in cfg:
        v = getattr(a, k, None) if k != "theta" else None
        if v is not None:
            cfg[k] = v
    if a.external is None:
        a.external = True
    return a, cfg


def report(path, cfg, b):
    size = os.path.getsize(path)
    data = os.path.join(os.path.dirname(os.path.abspath(path)), b.data_name) if b.data_name else None
    if data:
        size += os.path.getsize(data)
    print(f"wrote {path}{' + ' + data if data else ''}: {size / 2**20:.1f} MiB, "
          f"{b.weight_bytes // 4:,} parameters, config {cfg}")

#!/usr/bin/env python3
"""End-to-end latency of a BERT-style encoder on the CPU: qc's compiled artifact against onnxruntime,
with the same weight quantization, measured in one run.

Needs a release qc with the CPU backend (`cargo build --release -p qc --features cpu`), python3 with
numpy, onnx and onnxruntime (.ci/install-python.sh), and LLVM 22's MLIR tools.

Usage: python3 scripts/bench/e2e_bert.py [--qc target/release/qc] [--hidden 768 --layers 12 --heads 12
       --intermediate 3072 --vocab 30522] [--batch 1 --seq 128] [--threads 1,2] [--reps 10]
       [--formats float,int4_g32,int8_g128] [--dir target/bench-e2e]

The model is scripts/models/make_bert.py's BERT-style encoder (random weights, seed 0; by default the
BERT-base shape). For every format:
- qc: `qc compile model.onnx --target native --passes 'canonicalize,cse,dce,quantize{w=F,clip=none},dce'
  (float: --passes canonicalize,cse,dce) --shape batch=B --shape seq=S -o F.qca`: plain round-to-nearest
  with amax scales, the same codes and scales as the onnxruntime model below (`--wformat F` alone would
  add qc's default clip-ratio search, a different quantization),
  then `qc bench F.qca` with OMP_NUM_THREADS = each thread count (best and median of --reps calls after
  2 warm-up calls, in-process).
- onnxruntime: the float model, or the model whose MatMul nodes with a constant [K, N] weight are
  replaced by com.microsoft MatMulNBits nodes holding the same format: int4_g32 is bits=4,
  block_size=32, f32 scales amax/7, codes round-half-even clipped to [-8, 7] (stored +8, no zero points);
  int8_g128 is bits=8, block_size=128, scales amax/127 (codes +128). (MatMulNBits takes power-of-two
  blocks only, so there is no per-channel int8 counterpart.) accuracy_level 0 (f32 compute)
  and 4 (int8 activations). intra_op_num_threads = each thread count, sequential execution, all graph
  optimizations; best and median of --reps runs after 2 warm-up runs.
Both get the same inputs (scripts/models/check.py inputs). Each output's error against onnxruntime's
float model is printed (max |diff| / max |reference|; the float model runs for the reference even when
--formats leaves it out).

Prints one JSON line per measurement and a Markdown table at the end.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def quantize_matmuls(model, fmt):
    """The model with MatMulNBits nodes in place of MatMuls by constant 2-D weights (see the doc)."""
    inits = {i.name: i for i in model.graph.initializer}
    used = {}
    for n in model.graph.node:
        for i in n.input:
            used[i] = used.get(i, 0) + 1
    nodes = []
    drop = set()
    new_inits = []
    for n in model.graph.node:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" and len(n.input) == 2 else None
        if w is None or len(w.dims) != 2:
            nodes.append(n)
            continue
        wt = numpy_helper.to_array(w).astype(np.float32)  # [K, N]
        k, nn = wt.shape
        if fmt == "int4_g32":
            bits, block, qmax = 4, 32, 7
        elif fmt == "int8_g128":
            bits, block, qmax = 8, 128, 127
        else:
            raise SystemExit(f"no MatMulNBits equivalent of {fmt}")
        if k % block:
            nodes.append(n)
            continue
        kb = k // block
        g = wt.T.reshape(nn, kb, block).astype(np.float64)
        amax = np.abs(g).max(axis=2)
        scale = (amax / qmax).astype(np.float32)
        safe = np.where(scale == 0, 1, scale).astype(np.float64)
        q = np.clip(np.rint(g / safe[:, :, None]), -qmax - 1, qmax).astype(np.int32)
        if bits == 4:
            u = (q + 8).astype(np.uint8)
            b = (u[:, :, 0::2] | (u[:, :, 1::2] << 4)).astype(np.uint8)
        else:
            b = (q + 128).astype(np.uint8)
        bname, sname = n.input[1] + ".qB", n.input[1] + ".qscales"
        new_inits += [numpy_helper.from_array(b, bname), numpy_helper.from_array(scale.reshape(-1), sname)]
        if used[n.input[1]] == 1:
            drop.add(n.input[1])
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [n.input[0], bname, sname],
                list(n.output),
                name=n.name + "_nbits",
                domain="com.microsoft",
                K=k,
                N=nn,
                bits=bits,
                block_size=block,
                accuracy_level=0,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    keep = [i for i in model.graph.initializer if i.name not in drop]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def set_level(model, level):
    for n in model.graph.node:
        if n.op_type == "MatMulNBits":
            for a in n.attribute:
                if a.name == "accuracy_level":
                    a.i = level
    return model


def ort_time(path, feed, threads, reps):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feed)
    sess.run(None, feed)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    names = [o.name for o in sess.get_outputs()]
    del sess
    return min(times), statistics.median(times), dict(zip(names, outs))


def rel_err(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(float(np.max(np.abs(b))), 1e-30))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qc", default=os.path.join(ROOT, "target/release/qc"))
    ap.add_argument("--dir", default=os.path.join(ROOT, "target/bench-e2e"))
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--formats", default="float,int4_g32,int8_g128")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    model = os.path.join(a.dir, "bert.onnx")
    shape = [str(v) for v in (a.hidden, a.layers, a.heads, a.intermediate, a.vocab)]
    stamp = os.path.join(a.dir, "config.txt")
    if not (os.path.exists(model) and os.path.exists(stamp) and open(stamp).read() == " ".join(shape)):
        run([sys.executable, os.path.join(ROOT, "scripts/models/make_bert.py"), "--config", "1b", "--out", model,
             "--hidden", shape[0], "--layers", shape[1], "--heads", shape[2], "--intermediate", shape[3],
             "--vocab", shape[4], "--max-pos", str(max(512, a.seq))])
        open(stamp, "w").write(" ".join(shape))
    inputs = os.path.join(a.dir, f"in-{a.batch}x{a.seq}")
    run([sys.executable, os.path.join(ROOT, "scripts/models/check.py"), "inputs", "--model", model, "--out", inputs,
         "--batch", str(a.batch), "--seq", str(a.seq)])
    names = ["input_ids", "token_type_ids", "attention_mask"]
    feed = {n: np.load(os.path.join(inputs, n + ".npy")) for n in names}
    threads = [int(t) for t in a.threads.split(",")]
    qc_version = run([a.qc, "--version"]).strip()
    rows = []
    # The reference: onnxruntime's float model, whatever --formats says.
    _, _, ref_outs = ort_time(model, feed, threads[0], 1)
    reference = {k: v.astype(np.float64) for k, v in ref_outs.items()}
    for fmt in a.formats.split(","):
        # onnxruntime
        if fmt == "float":
            variants = [("onnxruntime f32", model)]
        else:
            variants = []
            base = quantize_matmuls(onnx.load(model), fmt)
            for level in (0, 4):
                path = os.path.join(a.dir, f"ort-{fmt}-l{level}.onnx")
                onnx.save(set_level(onnx.ModelProto.FromString(base.SerializeToString()), level), path,
                          save_as_external_data=True, location=os.path.basename(path) + ".data")
                variants.append((f"onnxruntime MatMulNBits accuracy_level={level}", path))
        for label, path in variants:
            for t in threads:
                best, med, outs = ort_time(path, feed, t, a.reps)
                err = rel_err(outs["last_hidden_state"], reference["last_hidden_state"])
                line = {"who": label, "format": fmt, "threads": t, "best_s": best, "median_s": med,
                        "err_vs_ort_f32": err, "onnxruntime": ort.__version__}
                print(json.dumps(line), flush=True)
                rows.append(line)
        # qc
        qca = os.path.join(a.dir, f"qc-{fmt}.qca")
        cmd = [a.qc, "compile", model, "--target", "native", "--shape", f"batch={a.batch}", "--shape",
               f"seq={a.seq}", "-o", qca]
        passes = "canonicalize,cse,dce" if fmt == "float" else f"canonicalize,cse,dce,quantize{{w={fmt},clip=none}},dce"
        cmd[3:3] = ["--passes", passes]
        t0 = time.perf_counter()
        run(cmd)
        compile_s = time.perf_counter() - t0
        args = [x for n in names for x in ("--input", f"{n}={os.path.join(inputs, n + '.npy')}")]
        out_dir = os.path.join(a.dir, f"qc-{fmt}.out")
        run([a.qc, "run", qca, *args, "-o", out_dir])
        err = rel_err(np.load(os.path.join(out_dir, "last_hidden_state.npy")), reference["last_hidden_state"])
        for t in threads:
            env = dict(os.environ, OMP_NUM_THREADS=str(t))
            r = json.loads(run([a.qc, "bench", qca, *args, "--reps", str(a.reps)], env=env))
            line = {"who": "qc " + qc_version.split()[-1], "format": fmt, "threads": t, "best_s": r["best_s"],
                    "median_s": r["median_s"], "err_vs_ort_f32": err, "compile_s": compile_s,
                    "target": r["target"]}
            print(json.dumps(line), flush=True)
            rows.append(line)
    print()
    print(f"BERT-style encoder hidden={a.hidden} layers={a.layers} heads={a.heads} "
          f"intermediate={a.intermediate} vocab={a.vocab}, batch {a.batch} x seq {a.seq}")
    print()
    print("| format | runtime | threads | best ms | median ms | max err vs ORT f32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['who']} | {r['threads']} | {r['best_s'] * 1e3:.1f} | "
              f"{r['median_s'] * 1e3:.1f} | {r['err_vs_ort_f32']:.2e} |")


if __name__ == "__main__":
    main()

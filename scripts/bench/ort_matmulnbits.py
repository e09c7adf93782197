#!/usr/bin/env python3
"""Peer measurement for qc's quantized GEMV and GEMM benchmarks: onnxruntime's MatMulNBits
(com.microsoft) on the CPU, M = 1 (or --m M), with the same N, K and block size as qc's kernels.

For each configuration it builds a one-node model (A[1, K] f32, B[N, K/block, block*bits/8] uint8
constant, scales[N * K/block] f32 constant, no zero points: symmetric, implicit zero point
2^(bits-1)), runs it with intra_op_num_threads = 1 and 2 (inter-op 1, sequential execution), and prints
one JSON object per (bits, block, threads, accuracy_level) line on stdout:

  {"peer": "onnxruntime", "version": ..., "bits": 4, "block": 32, "n": N, "k": K, "threads": 1,
   "accuracy_level": 0, "weight_bytes": ..., "best_s": ..., "median_s": ..., "gbps": ..., "check": ...}

weight_bytes counts B and the scales (what the kernel must stream); gbps = weight_bytes / best_s / 1e9.
With --m M > 1 (A[M, K], Y[M, N]) each line also has "m": M and "gflops": 2 M N K / best_s / 1e9; the
output for M = 1 (the default) is unchanged.
"check" is the largest |y - y_ref| / max|y_ref| over the first 8 rows, y_ref computed with numpy from the
same codes and scales (accuracy_level 4 quantizes A to int8, so its check is looser by design).

Usage: ort_matmulnbits.py --n N --k K --bits 4 --block 32 [--m 1] [--threads 1,2] [--levels 0,4]
       [--reps 5]
Weights are random (seeded); timing is the best of --reps runs after one warm-up run.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def build_model(n, k, bits, block, level, b, scales, m=1):
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "scales"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block,
        accuracy_level=level,
    )
    graph = helper.make_graph(
        [node],
        "gemv",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        initializer=[numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 10
    return model.SerializeToString()


def reference_rows(b, scales, x, n, k, bits, block, rows):
    kb = k // block
    out = []
    for r in range(rows):
        codes = b[r].reshape(-1)
        if bits == 4:
            q = np.empty(k, np.int32)
            q[0::2] = codes & 0xF
            q[1::2] = codes >> 4
            q -= 8
        else:
            q = codes.astype(np.int32) - 128
        w = q.reshape(kb, block).astype(np.float64) * scales[r * kb:(r + 1) * kb, None].astype(np.float64)
        out.append(float(w.reshape(-1) @ x.astype(np.float64)))
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--bits", type=int, choices=[4, 8], required=True)
    ap.add_argument("--block", type=int, required=True)
    ap.add_argument("--m", type=int, default=1, help="activation rows (1: GEMV)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--levels", default="0,4")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    n, k, bits, block, m = a.n, a.k, a.bits, a.block, a.m
    if m < 1:
        sys.exit("--m must be at least 1")
    if k % block:
        sys.exit(f"K = {k} is not a multiple of the block {block}")
    rng = np.random.default_rng(a.seed)
    kb = k // block
    b = rng.integers(0, 256, size=(n, kb, block * bits // 8), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.01, size=n * kb).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    ref = reference_rows(b, scales, x, n, k, bits, block, 8)
    # M > 1: activation row 0 is x (checked against ref), the others random.
    xs = x.reshape(1, k)
    if m > 1:
        xs = np.concatenate([xs, rng.standard_normal((m - 1, k)).astype(np.float32)])
    weight_bytes = b.nbytes + scales.nbytes
    for level in [int(v) for v in a.levels.split(",")]:
        model = build_model(n, k, bits, block, level, b, scales, m)
        for threads in [int(v) for v in a.threads.split(",")]:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            feed = {"A": xs}
            y = sess.run(None, feed)[0][0].reshape(-1)
            check = float(np.max(np.abs(y[:8] - ref)) / max(np.max(np.abs(ref)), 1e-30))
            times = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t0)
            best = min(times)
            rec = {
                "peer": "onnxruntime",
                "version": ort.__version__,
                "bits": bits,
                "block": block,
                "n": n,
                "k": k,
                "threads": threads,
                "accuracy_level": level,
                "weight_bytes": weight_bytes,
                "best_s": best,
                "median_s": statistics.median(times),
                "gbps": weight_bytes / best / 1e9,
                "check": check,
            }
            if m != 1:
                rec["m"] = m
                rec["gflops"] = 2.0 * m * n * k / best / 1e9
            print(json.dumps(rec), flush=True)
            del sess


if __name__ == "__main__":
    main()

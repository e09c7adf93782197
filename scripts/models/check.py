#!/usr/bin/env python3
"""Seeded inputs, reference outputs and the comparison for the models of make_bert.py / make_llama.py.

    check.py inputs    --model M.onnx --out IN/  [--batch 2 --seq 7 --seed 0]   one NAME.npy per input
    check.py reference --model M.onnx --inputs IN/ --out REF/ [--engine auto|ort|onnx]
    check.py compare   --expected REF/ --actual OUT/ [--tol 1e-4]

Inputs: token ids uniform in [0, vocab) (vocab read from the embedding initializer's first dimension),
token types 0/1, attention_mask all ones except the last row, whose last quarter is padding (right
padding, so that every query keeps at least one key).

reference runs onnxruntime (CPU, graph optimizations off, so each op is computed as written) or, with
--engine onnx or when onnxruntime is missing or lacks an op, onnx.reference.ReferenceEvaluator.

compare fails (exit 1) when an output is missing, differs in shape, or when
max |actual - expected| > tol * max |expected| for some output.
"""

import argparse
import os
import sys

try:
    import numpy as np
    import onnx
except ImportError as e:
    sys.exit(f"error: {e.name} is missing; install numpy and onnx (bash .ci/install-python.sh)")


def vocab_of(model):
    for t in model.graph.initializer:
        if "embed" in t.name and ("word" in t.name or "tokens" in t.name):
            return t.dims[0]
    sys.exit("error: no word/token embedding initializer to take the vocabulary size from")


def cmd_inputs(a):
    model = onnx.load(a.model, load_external_data=False)
    rng = np.random.default_rng(a.seed)
    vocab = vocab_of(model)
    os.makedirs(a.out, exist_ok=True)
    for inp in model.graph.input:
        shape = (a.batch, a.seq)
        if inp.name == "input_ids":
            arr = rng.integers(0, vocab, size=shape, dtype=np.int64)
        elif inp.name == "token_type_ids":
            arr = rng.integers(0, 2, size=shape, dtype=np.int64)
        elif inp.name == "attention_mask":
            arr = np.ones(shape, dtype=np.int64)
            if a.batch > 1:
                arr[-1, a.seq - max(1, a.seq // 4):] = 0
        else:
            sys.exit(f"error: no rule for input '{inp.name}'")
        np.save(os.path.join(a.out, inp.name + ".npy"), arr)
    print(f"inputs: batch {a.batch}, seq {a.seq}, seed {a.seed}, vocab {vocab} -> {a.out}")


def run_ort(model_path, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, feeds), "onnxruntime " + ort.__version__


def run_onnx_reference(model_path, feeds):
    from onnx.reference import ReferenceEvaluator

    sess = ReferenceEvaluator(model_path)
    names = list(sess.output_names)
    return names, sess.run(None, feeds), "onnx.reference.ReferenceEvaluator " + onnx.__version__


def cmd_reference(a):
    model = onnx.load(a.model, load_external_data=False)
    feeds = {i.name: np.load(os.path.join(a.inputs, i.name + ".npy")) for i in model.graph.input}
    del model
    result = None
    if a.engine in ("auto", "ort"):
        try:
            result = run_ort(a.model, feeds)
        except ImportError:
            if a.engine == "ort":
                sys.exit("error: onnxruntime is missing (bash .ci/install-python.sh installs it)")
            print("note: onnxruntime is missing; using onnx.reference.ReferenceEvaluator", file=sys.stderr)
        except Exception as e:  # an op onnxruntime lacks
            if a.engine == "ort" or "NOT_IMPLEMENTED" not in str(e):
                raise
            print(f"note: onnxruntime cannot run the model ({e}); using the ONNX reference evaluator",
                  file=sys.stderr)
    if result is None:
        result = run_onnx_reference(a.model, feeds)
    names, outs, engine = result
    os.makedirs(a.out, exist_ok=True)
    for n, o in zip(names, outs):
        np.save(os.path.join(a.out, n + ".npy"), np.asarray(o))
    print(f"reference: {engine}: " + ", ".join(f"{n} {tuple(np.shape(o))}" for n, o in zip(names, outs)))


def cmd_compare(a):
    bad = 0
    files = sorted(f for f in os.listdir(a.expected) if f.endswith(".npy"))
    if not files:
        sys.exit(f"error: no .npy files in {a.expected}")
    for f in files:
        exp = np.load(os.path.join(a.expected, f)).astype(np.float64)
        path = os.path.join(a.actual, f)
        if not os.path.exists(path):
            print(f"{f}: MISSING from {a.actual}")
            bad += 1
            continue
        act = np.load(path).astype(np.float64)
        if act.shape != exp.shape:
            print(f"{f}: shape {act.shape} != expected {exp.shape}")
            bad += 1
            continue
        scale = max(1e-6, float(np.max(np.abs(exp))) if exp.size else 1.0)
        diff = float(np.max(np.abs(act - exp))) if exp.size else 0.0
        ok = np.isfinite(act).all() and diff <= a.tol * scale
        bad += not ok
        print(f"{f}: shape {exp.shape}, max|expected| {float(np.max(np.abs(exp))):.4g}, max abs diff {diff:.3g}"
              f" ({diff / scale:.3g} of scale, tolerance {a.tol:g}) {'ok' if ok else 'MISMATCH'}")
    sys.exit(1 if bad else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("inputs")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--seq", type=int, default=7)
    s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("reference")
    s.add_argument("--model", required=True)
    s.add_argument("--inputs", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--engine", choices=["auto", "ort", "onnx"], default="auto")
    s = sub.add_parser("compare")
    s.add_argument("--expected", required=True)
    s.add_argument("--actual", required=True)
    s.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    {"inputs": cmd_inputs, "reference": cmd_reference, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks and times qc's 4-bit GEMV kernels (backends/ptx/src/gemv4.rs) and tensor-core GEMM
(backends/ptx/src/mma4.rs) on an NVIDIA GPU with CuPy,
from the kit that `cargo run -p qc-backend-ptx --example gemv4_kit -- DIR` writes (PTX per target,
tables and a check case per format). Meant for a machine with a GPU but no Rust or LLVM (the device
machine): scripts/gpu/prepare.sh builds the kit, scripts/gpu/run.sh calls this.

Usage: python3 scripts/gpu/gemv4_bench.py KIT_DIR [--n 32768] [--k 16384] [--reps 50]

For each format: the check case (a 256 x 1024 weight quantized by qc_quant) must match the f64
reference within 1e-5 of max |y|; then M = 1 on N x K random codes with valid scales (default
32768 x 16384: 256 MiB of codes), timed with CUDA events (median of --reps runs of both kernels,
256-thread blocks), reported as GB/s of weight bytes (codes and scales) and as a fraction of the
device-to-device copy bandwidth of 1 GiB measured in the same run (bytes read plus bytes written per
second). Then the GEMM: its check case (40 activation rows, same weight) within 1e-5 of max |y|,
and M = --mma-m rows on the same N x K weight timed the same way, reported as TFLOP/s next to
PyTorch's bf16 matmul of a bf16 weight of that shape (the dense peer; skipped without torch). One
JSON line each; exit code 1 if a check fails.
"""

import argparse
import json
import math
import os
import sys

import cupy as cp
import numpy as np


def target_of(cc):
    major, minor = cc // 10, cc % 10
    return {(8, 0): "sm_80", (8, 9): "sm_89", (9, 0): "sm_90a", (10, 0): "sm_100a", (12, 0): "sm_120a"}.get(
        (major, minor), "sm_80" if major >= 8 else None)


def median_ms(fn, reps):
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    times.sort()
    return times[len(times) // 2]


def gemv(mod, meta, codes, scales, tables, x, p, y, n, k, m, post, block=256):
    s = k // meta["slice"]
    part = mod.get_function(meta["partial"])
    red = mod.get_function(meta["reduce"])
    part(((n * s + block - 1) // block,), (block,),
         (codes, scales, tables, x, p, np.int64(k), np.int64(n), np.int64(m)))
    red(((m * n + block - 1) // block,), (block,),
        (p, scales, tables, y, np.int64(k), np.int64(n), np.int64(m), np.float32(post)))


def mma(mod, meta, codes, scales, tables, x, y, n, k, m, post):
    g = meta["mma4"]
    warps = ((m + g["tile"] - 1) // g["tile"]) * ((n + g["tile"] - 1) // g["tile"])
    block = g["block"]
    mod.get_function(g["entry"])(((warps * 32 + block - 1) // block,), (block,),
                                 (codes, scales, tables, x, y, np.int64(k), np.int64(n), np.int64(m),
                                  np.float32(post)))


def torch_bf16_ms(m, n, k, reps):
    try:
        import torch
    except ImportError:
        return None
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    (a @ b.T)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start.record()
        (a @ b.T)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kit")
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--k", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--mma-m", type=int, default=512)
    a = ap.parse_args()
    dev = cp.cuda.Device()
    cc = int(dev.compute_capability)
    target = target_of(cc)
    name = cp.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    big = 1 << 30
    src = cp.zeros(big, dtype=cp.uint8)
    dst = cp.empty_like(src)
    copy_ms = median_ms(lambda: dst.__setitem__(slice(None), src), 20)
    copy_gbs = 2 * big / (copy_ms * 1e-3) / 1e9
    print(json.dumps({"device": name, "target": target, "memcpy_dtod_gbs": round(copy_gbs, 1)}), flush=True)
    del src, dst
    failed = False
    for fname in sorted(f for f in os.listdir(a.kit) if f.endswith(".json")):
        meta = json.load(open(os.path.join(a.kit, fname)))
        fmt = meta["format"]
        mod = cp.RawModule(path=os.path.join(a.kit, f"{fmt}.{target}.ptx"))
        tables = cp.asarray(np.array([math.nan if v is None else v for v in meta["tables"]], dtype=np.float32))
        # Check case.
        c = meta["check"]
        n, k = c["n"], c["k"]
        blob = cp.asarray(np.fromfile(os.path.join(a.kit, f"{fmt}.check.blob"), dtype=np.uint8))
        x = cp.asarray(np.fromfile(os.path.join(a.kit, f"{fmt}.check.x"), dtype=np.float32))
        want = np.fromfile(os.path.join(a.kit, f"{fmt}.check.y"), dtype=np.float32)
        p = cp.empty(n * k // meta["slice"], dtype=cp.float32)
        y = cp.empty(n, dtype=cp.float32)
        gemv(mod, meta, blob, blob[c["scales_offset"]:], tables, x, p, y, n, k, 1, c["post"])
        err = float(np.abs(cp.asnumpy(y) - want).max() / np.abs(want).max())
        ok = err <= 1e-5
        failed |= not ok
        # Timing on random codes.
        n, k = a.n, a.k
        group = meta["group"]
        n_scales = n * (k // group) if group else n
        scale_bytes = n_scales * (1 if meta["byte_scales"] else 4)
        codes = cp.random.randint(0, 256, size=n * k // 2, dtype=cp.uint8)
        if meta["byte_scales"]:
            scales = cp.full(scale_bytes, 0x38, dtype=cp.uint8)
        else:
            scales = cp.ones(n_scales, dtype=cp.float32)
        x = cp.asarray(np.random.default_rng(0).standard_normal(k).astype(np.float32))
        p = cp.empty(n * k // meta["slice"], dtype=cp.float32)
        y = cp.empty(n, dtype=cp.float32)
        ms = median_ms(lambda: gemv(mod, meta, codes, scales, tables, x, p, y, n, k, 1, 1.0), a.reps)
        gbs = (n * k // 2 + scale_bytes) / (ms * 1e-3) / 1e9
        print(json.dumps({"format": fmt, "n": n, "k": k, "check_rel_err": err, "check_ok": ok,
                          "median_ms": round(ms, 4), "weight_gbs": round(gbs, 1),
                          "fraction_of_memcpy": round(gbs / copy_gbs, 3)}), flush=True)
        # Tensor-core GEMM: check case, then M = --mma-m on the same random weight.
        mmod = cp.RawModule(path=os.path.join(a.kit, f"{fmt}.mma4.{target}.ptx"))
        rows, cn, ck = c["mma_rows"], c["n"], c["k"]
        xm = cp.asarray(np.fromfile(os.path.join(a.kit, f"{fmt}.mcheck.x"), dtype=np.float32))
        wantm = np.fromfile(os.path.join(a.kit, f"{fmt}.mcheck.y"), dtype=np.float32)
        ym = cp.empty(rows * cn, dtype=cp.float32)
        mma(mmod, meta, blob, blob[c["scales_offset"]:], tables, xm, ym, cn, ck, rows, c["post"])
        merr = float(np.abs(cp.asnumpy(ym) - wantm).max() / np.abs(wantm).max())
        mok = merr <= 1e-5
        failed |= not mok
        m = a.mma_m
        xm = cp.asarray(np.random.default_rng(1).standard_normal(m * k).astype(np.float32))
        ym = cp.empty(m * n, dtype=cp.float32)
        ms = median_ms(lambda: mma(mmod, meta, codes, scales, tables, xm, ym, n, k, m, 1.0), a.reps)
        peer = torch_bf16_ms(m, n, k, a.reps)
        flops = 2.0 * m * n * k
        print(json.dumps({"format": fmt, "kernel": "mma4", "m": m, "n": n, "k": k, "check_rel_err": merr,
                          "check_ok": mok, "median_ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1),
                          "torch_bf16_tflops": None if peer is None else round(flops / peer / 1e9, 1)}),
              flush=True)
        del codes, scales, p, y, xm, ym
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

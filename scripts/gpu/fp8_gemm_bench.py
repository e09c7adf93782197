#!/usr/bin/env python3
"""Checks and times qc's FP8 tensor-core GEMMs (backends/ptx/src/mma8.rs, and on sm_90a the warpgroup
one of backends/ptx/src/wgmma8.rs: FP8 e4m3 weights with a
per-tensor scale, f32 activations quantized to e4m3 in the kernel) on an NVIDIA GPU of compute
capability 8.9 or later with CuPy, from the kit that
`cargo run -p qc-backend-ptx --example fp8_gemm_kit -- DIR` writes. Meant for a machine with a GPU
but no Rust or LLVM (the device machine): scripts/gpu/prepare.sh builds the kit, scripts/gpu/run.sh
calls this.

Usage: python3 scripts/gpu/fp8_gemm_bench.py KIT_DIR [--sizes 4096,8192] [--reps 20]

The check case (40 x 256 x 1024) must match the f64 reference within 1e-4 of max |y| (the tensor
core's FP8 accumulation order and precision are its own). Then M = N = K = each size on random codes,
timed with CUDA events (median of --reps runs), as TFLOP/s next to PyTorch's `torch._scaled_mm` (FP8
e4m3 operands already quantized, per-tensor scales, f32 output: cuBLAS) and, for the same work as
qc's kernel, `_scaled_mm` after quantizing the f32 activations. One JSON line each; exit code 1 if the
check fails.

Then the 3xTF32 f32 GEMM (backends/ptx/src/mmaf.rs, `sgemm.TARGET.ptx`, every target): a 300 x 200 x
150 check against numpy's f64 product (within 1e-5 of max |c|), and M = N = K = each size next to
PyTorch's f32 matmul with and without TF32.
"""

import argparse
import json
import os
import sys

import cupy as cp
import numpy as np


def target_of(cc):
    return {89: "sm_89", 90: "sm_90a", 100: "sm_100a", 120: "sm_120a"}.get(cc)


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kit")
    ap.add_argument("--sizes", default="4096,8192")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    dev = cp.cuda.Device()
    cc = int(dev.compute_capability)
    target = target_of(cc)
    target_any = target or ("sm_80" if cc >= 80 else None)
    name = cp.cuda.runtime.getDeviceProperties(dev.id)["name"].decode()
    meta = json.load(open(os.path.join(a.kit, "fp8_gemm.json")))
    if target is None:
        print(json.dumps({"device": name, "fp8_gemm": "skipped: no FP8 tensor cores"}))
        ok = target_any is None or sgemm(a, meta, target_any, name)
        sys.exit(0 if ok else 1)
    mod = cp.RawModule(path=os.path.join(a.kit, f"fp8_gemm.{target}.ptx"))
    kern = mod.get_function(meta["entry"])
    tables = cp.zeros(4, dtype=cp.float32)

    kernels = [("qc_mma8", kern, meta["tile"], 32, meta["block"])]
    if target == "sm_90a":
        wg = meta["wgmma"]
        wmod = cp.RawModule(path=os.path.join(a.kit, "fp8_gemm.wgmma.sm_90a.ptx"))
        kernels.append(("qc_wgmma8", wmod.get_function(wg["entry"]), wg["tile"], wg["block"], wg["block"]))

    def launch(kdesc, codes, scales, x, y, m, n, k, sa):
        _, f, tile, tile_threads, block = kdesc
        tiles = ((m + tile - 1) // tile) * ((n + tile - 1) // tile)
        f(((tiles * tile_threads + block - 1) // block,), (block,),
          (codes, scales, tables, x, y, np.int64(k), np.int64(n), np.int64(m), np.float32(1.0),
           np.float32(sa)))

    c = meta["check"]
    m, n, k = c["m"], c["n"], c["k"]
    blob = cp.asarray(np.fromfile(os.path.join(a.kit, "fp8_gemm.check.blob"), dtype=np.uint8))
    x = cp.asarray(np.fromfile(os.path.join(a.kit, "fp8_gemm.check.x"), dtype=np.float32))
    want = np.fromfile(os.path.join(a.kit, "fp8_gemm.check.y"), dtype=np.float32)
    ok = True
    for kd in kernels:
        y = cp.zeros(m * n, dtype=cp.float32)
        launch(kd, blob, blob[c["scales_offset"]:], x, y, m, n, k, c["sa"])
        err = float(np.abs(cp.asnumpy(y) - want).max() / np.abs(want).max())
        ok &= err <= 1e-4
        print(json.dumps({"device": name, "target": target, "kernel": kd[0], "check_rel_err": err,
                          "check_ok": err <= 1e-4}), flush=True)
    try:
        import torch
    except ImportError:
        torch = None
    for size in [int(s) for s in a.sizes.split(",")]:
        m = n = k = size
        rng = np.random.default_rng(0)
        # Finite e4m3 codes (0x7f and 0xff are NaN).
        codes = cp.asarray(rng.integers(0, 0x7f, size=n * k, dtype=np.uint8) | (rng.integers(0, 2, size=n * k, dtype=np.uint8) << 7))
        scales = cp.ones(4, dtype=cp.float32)
        x = cp.asarray(rng.standard_normal(m * k).astype(np.float32))
        sa = float(cp.abs(x).max()) / 448.0
        y = cp.empty(m * n, dtype=cp.float32)
        flops = 2.0 * m * n * k
        row = {"m": m, "n": n, "k": k}
        for kd in kernels:
            ms = median_ms(lambda: launch(kd, codes, scales, x, y, m, n, k, sa), a.reps)
            row[kd[0] + "_ms"] = round(ms, 3)
            row[kd[0] + "_tflops"] = round(flops / ms / 1e9, 1)
        if torch is not None:
            xa = torch.as_tensor(x, device="cuda").view(m, k)
            w8 = torch.as_tensor(codes, device="cuda").view(n, k).view(torch.float8_e4m3fn)
            one = torch.tensor(1.0, device="cuda")
            sat = torch.tensor(sa, device="cuda")
            x8 = (xa / sa).to(torch.float8_e4m3fn)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def timed(fn):
                fn()
                torch.cuda.synchronize()
                ts = []
                for _ in range(a.reps):
                    start.record()
                    fn()
                    stop.record()
                    stop.synchronize()
                    ts.append(start.elapsed_time(stop))
                ts.sort()
                return ts[len(ts) // 2]

            mm = timed(lambda: torch._scaled_mm(x8, w8.t(), scale_a=sat, scale_b=one, out_dtype=torch.float32))
            mq = timed(lambda: torch._scaled_mm((xa / sa).to(torch.float8_e4m3fn), w8.t(), scale_a=sat,
                                                scale_b=one, out_dtype=torch.float32))
            row.update({"torch_scaled_mm_tflops": round(flops / mm / 1e9, 1),
                        "torch_quantize_and_scaled_mm_tflops": round(flops / mq / 1e9, 1)})
        print(json.dumps(row), flush=True)
        del codes, x, y
    ok &= sgemm(a, meta, target_any, name)
    sys.exit(0 if ok else 1)


def sgemm(a, meta, target, name):
    """Checks and times the f32 GEMM; whether the check passed."""
    sg = meta["sgemm"]
    mod = cp.RawModule(path=os.path.join(a.kit, f"sgemm.{target}.ptx"))
    f = mod.get_function(sg["entry"])

    def run(x, w, c, b, m, n, k, shared):
        tiles = b * ((m + sg["tile"] - 1) // sg["tile"]) * ((n + sg["tile"] - 1) // sg["tile"])
        f(((tiles * 32 + sg["block"] - 1) // sg["block"],), (sg["block"],),
          (x, w, c, np.uint64(b), np.uint64(m), np.uint64(n), np.uint64(k), np.uint64(shared)))

    rng = np.random.default_rng(2)
    m, n, k = 300, 200, 150
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    c = cp.zeros(m * n, dtype=cp.float32)
    run(cp.asarray(x), cp.asarray(w), c, 1, m, n, k, 1)
    want = x.astype(np.float64) @ w.astype(np.float64)
    err = float(np.abs(cp.asnumpy(c).reshape(m, n) - want).max() / np.abs(want).max())
    ok = err <= 1e-5
    print(json.dumps({"device": name, "kernel": "qc_sgemm_mma", "check_rel_err": err, "check_ok": ok}),
          flush=True)
    try:
        import torch
    except ImportError:
        torch = None
    for size in [int(s) for s in a.sizes.split(",")]:
        xs = cp.asarray(rng.standard_normal(size * size).astype(np.float32))
        ws = cp.asarray(rng.standard_normal(size * size).astype(np.float32))
        cs = cp.empty(size * size, dtype=cp.float32)
        ms = median_ms(lambda: run(xs, ws, cs, 1, size, size, size, 1), a.reps)
        flops = 2.0 * size ** 3
        row = {"kernel": "qc_sgemm_mma", "m": size, "n": size, "k": size, "median_ms": round(ms, 3),
               "tflops": round(flops / ms / 1e9, 1)}
        if torch is not None:
            xt = torch.as_tensor(xs, device="cuda").view(size, size)
            wt = torch.as_tensor(ws, device="cuda").view(size, size)
            for tf32 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                xt @ wt
                torch.cuda.synchronize()
                ts = []
                for _ in range(a.reps):
                    start.record()
                    xt @ wt
                    stop.record()
                    stop.synchronize()
                    ts.append(start.elapsed_time(stop))
                ts.sort()
                row["torch_tf32_tflops" if tf32 else "torch_f32_tflops"] = round(flops / ts[len(ts) // 2] / 1e9, 1)
        print(json.dumps(row), flush=True)
    return ok


if __name__ == "__main__":
    main()

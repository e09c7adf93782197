//! Quantized GEMM throughput (prefill-sized `M`), next to peers on the same shapes.
//!
//! `cargo bench -p qc-backend-llvm --bench gemm` (harness-free). For every format it times
//! `Y[M, N] = X[M, K] W[N, K]^T` with M = 512, K = 4096, N = 4096 on 1 thread (one kernel call on the
//! calling thread) and 2 threads (a rayon pool), best of a few calls after a warm-up (the median of
//! the 2-thread runs is printed too), and reports GFLOP/s = 2 M N K / time (x is prepared into the
//! kernel layout outside the timing, as a model's prefill would once per activation). Peers, same
//! M, N, K, 1 and 2 threads:
//! - onnxruntime's MatMulNBits through scripts/bench/ort_matmulnbits.py `--m M` (4-bit g32, g128,
//!   8-bit g128 and per channel; accuracy_level 0 = f32 activations, 4 = int8 activations);
//! - llama.cpp's ggml `mul_mat` through `target/ggml-bench/ggml_matmul` (built by
//!   `bash scripts/bench/ggml/build.sh`; another path with `QC_GGML_MATMUL=path`; skipped with a note
//!   when absent): Q4_0 next to int4_g32, Q8_0 next to int8_g128 (qc has no int8 format with
//!   32-element groups), MXFP4 next to mxfp4;
//! - an f32 reference point: onnxruntime's f32 MatMul (MLAS SGEMM) on the same shape.
//!
//! Formats whose elements are small integers also run qc's int8-activation kernel
//! (`qc_backend_llvm::act8`, the fastest instruction set of the target the host runs), timed with the
//! quantization of X included (X quantized per tensor at its own maximum), checked like the others
//! against `act8::reference`.
//!
//! Environment: `QC_BENCH_QUICK=1` (M = 64, K = 1024, N = 1024, one rep: a smoke run, numbers
//! meaningless), `QC_BENCH_FORMATS=a,b` (named formats), `QC_BENCH_TARGET=x86-64-v3|x86-64-v4`,
//! `QC_BENCH_PEERS=0` (skip the peers), `QC_BENCH_REPS=n`, `QC_BENCH_M`, `QC_BENCH_N`, `QC_BENCH_K`.
//!
//! Weights are random codes and scales in a normal range (no NaN codes); before timing, the first and
//! last 8 weight rows of the first and last activation rows are checked against `reference_gemm`
//! (relative L2 error <= 1e-5).

use qc_backend_llvm::act8::{self, A8Matrix, Act8Library};
use qc_backend_llvm::gemm::{reference_gemm, GemmLibrary};
use qc_backend_llvm::gemv::QuantMatrix;

mod common;
use common::{
    build_timed, date, env_usize, ggml_tool, ggml_type, json_field, json_str, loadavg, ort_config,
    pool, print_host, random_blob, rel_l2, run_ggml_tool, run_ort_script, run_python, sub_blob,
    time_best, Codes, Rng,
};

struct Peer {
    label: String,
    gflops: [f64; 2],
}

fn run_ort(bits: u32, block: usize, m: usize, n: usize, k: usize, reps: usize) -> Vec<Peer> {
    let Some(out) = run_ort_script("peer", Some(m), (n, k), (bits, block), reps) else {
        return vec![];
    };
    let version = out
        .lines()
        .next()
        .map(|l| json_str(l, "version"))
        .unwrap_or_default();
    [0.0, 4.0]
        .iter()
        .map(|&level| {
            let mut p = Peer {
                label: format!(
                    "onnxruntime {version} MatMulNBits bits={bits} block={block} accuracy_level={level}"
                ),
                gflops: [f64::NAN; 2],
            };
            for line in out.lines() {
                if json_field(line, "accuracy_level") == level {
                    let t = json_field(line, "threads") as usize;
                    if (1..=2).contains(&t) {
                        // The script's "gflops" is present for M > 1; for M = 1 derive it.
                        let g = json_field(line, "gflops");
                        p.gflops[t - 1] = if g.is_nan() {
                            2.0 * (m * n * k) as f64 / json_field(line, "best_s") / 1e9
                        } else {
                            g
                        };
                    }
                }
            }
            p
        })
        .collect()
}

/// onnxruntime's f32 MatMul (MLAS SGEMM) on X[M, K] B[K, N], 1 and 2 threads.
const ORT_F32: &str = r#"
import sys, time, numpy as np, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
m, n, k, reps = (int(v) for v in sys.argv[1:5])
rng = np.random.default_rng(0)
b = rng.standard_normal((k, n)).astype(np.float32)
x = rng.standard_normal((m, k)).astype(np.float32)
g = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "mm",
    [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
    initializer=[numpy_helper.from_array(b, "B")])
mod = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
mod.ir_version = 10
for t in (1, 2):
    so = ort.SessionOptions(); so.intra_op_num_threads = t; so.inter_op_num_threads = 1
    s = ort.InferenceSession(mod.SerializeToString(), so, providers=["CPUExecutionProvider"])
    s.run(None, {"A": x})
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); s.run(None, {"A": x}); ts.append(time.perf_counter() - t0)
    print('{"version": "%s", "threads": %d, "gflops": %f}' % (ort.__version__, t, 2.0 * m * n * k / min(ts) / 1e9))
"#;

fn run_ort_f32(m: usize, n: usize, k: usize, reps: usize) -> Option<Peer> {
    let args: Vec<String> = ["-c", ORT_F32]
        .iter()
        .map(|s| s.to_string())
        .chain([m, n, k, reps].iter().map(|v| v.to_string()))
        .collect();
    let out = run_python("peer", &args)?;
    let mut p = Peer {
        label: String::new(),
        gflops: [f64::NAN; 2],
    };
    for line in out.lines() {
        let t = json_field(line, "threads") as usize;
        if (1..=2).contains(&t) {
            p.gflops[t - 1] = json_field(line, "gflops");
            p.label = format!(
                "onnxruntime {} MatMul f32 (MLAS SGEMM, weights in f32)",
                json_str(line, "version")
            );
        }
    }
    Some(p)
}

/// ggml's type for the same shape, if the format has a counterpart there: (ggml type, note).
fn ggml_config(name: &str) -> Option<(&'static str, &'static str)> {
    let ty = ggml_type(name)?;
    let note = if ty == "q8_0" {
        " (32-element blocks, f16 scales: qc has no int8_g32, so it stands next to int8_g128)"
    } else {
        ""
    };
    Some((ty, note))
}

fn run_ggml(
    tool: &std::path::Path,
    ty: &str,
    note: &str,
    m: usize,
    n: usize,
    k: usize,
    reps: usize,
) -> Option<Peer> {
    let mut p = Peer {
        label: String::new(),
        gflops: [f64::NAN; 2],
    };
    let (mut version, mut layout) = (String::from("?"), String::from("?"));
    for t in 1..=2usize {
        let line = match run_ggml_tool(tool, ty, (m, n, k), t, reps, None) {
            Ok(Some(line)) => line,
            Ok(None) => continue,
            Err(_) => return None,
        };
        let line = line.as_str();
        version = json_str(line, "version");
        layout = json_str(line, "layout");
        p.gflops[t - 1] = json_field(line, "gflops");
    }
    if p.gflops.iter().all(|g| g.is_nan()) {
        return None;
    }
    p.label = format!(
        "ggml ({version}) mul_mat {} [{layout} layout]{note}",
        ty.to_uppercase()
    );
    Some(p)
}

fn main() {
    let quick = common::quick();
    let peers_on = common::peers_on();
    let reps = env_usize("QC_BENCH_REPS", if quick { 1 } else { 3 });
    let (m, n, k) = if quick {
        (
            env_usize("QC_BENCH_M", 64),
            env_usize("QC_BENCH_N", 1024),
            env_usize("QC_BENCH_K", 1024),
        )
    } else {
        (
            env_usize("QC_BENCH_M", 512),
            env_usize("QC_BENCH_N", 4096),
            env_usize("QC_BENCH_K", 4096),
        )
    };
    let target = common::target();
    let fmts = common::formats();
    let flop = 2.0 * (m * n * k) as f64;

    println!("# qc GEMM benchmark: M = {m}, N = {n}, K = {k}");
    print_host(target);
    println!(
        "date: {}; load average at start: {}; best of {reps} after a warm-up",
        date(),
        loadavg()
    );

    let (lib, secs) = build_timed(&fmts, |f| GemmLibrary::build(f, target));
    println!(
        "compiled and linked the GEMV + GEMM kernels of {} formats for {target} in {:.2} s",
        fmts.len(),
        secs
    );
    let pool2 = pool(2);
    let a8lib = Act8Library::build(target).expect("the int8-activation kernels");
    let a8isa = a8lib.best_isa().expect("an instruction set the host runs");
    let mut r = Rng(12345);
    let x: Vec<f32> = (0..m * k).map(|_| r.uniform()).collect();
    let ggml = ggml_tool();
    if ggml.is_none() {
        println!(
            "note: target/ggml-bench/ggml_matmul is absent (bash scripts/bench/ggml/build.sh), the \
             ggml peer is skipped"
        );
    }

    struct Row {
        name: String,
        qc: [f64; 2],
        median2: f64,
        peers: Vec<Peer>,
    }
    let mut rows = Vec::new();
    for (i, (name, fmt)) in fmts.iter().enumerate() {
        let blob = random_blob(fmt, n, k, 7 + i as u64, Codes::Bytes);
        let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
        let xp = lib.prepare_x(&w, &x);
        let mut y = vec![0f32; m * n];
        // Check the corners against the reference.
        lib.gemm_prepared(&w, &xp, m, &mut y, Some(&pool2)).unwrap();
        for (a, b) in [(0, 8.min(n)), (n.saturating_sub(8), n)] {
            let sub = sub_blob(fmt, n, k, &blob, a, b);
            for i in [0, m - 1] {
                let want = reference_gemm(fmt, b - a, k, &sub, &x[i * k..(i + 1) * k], 1).unwrap();
                let err = rel_l2(&y[i * n + a..i * n + b], &want);
                assert!(err <= 1e-5, "{name}: rows {a}..{b} of x row {i}: {err:e}");
            }
        }
        let (b1, _) = time_best(reps, || {
            lib.gemm_prepared(&w, &xp, m, &mut y, None).unwrap()
        });
        let (b2, med2) = time_best(reps, || {
            lib.gemm_prepared(&w, &xp, m, &mut y, Some(&pool2)).unwrap()
        });
        let qc = [flop / b1 / 1e9, flop / b2 / 1e9];
        println!(
            "{name:>14}: 1 thread {:7.1} GFLOP/s, 2 threads {:7.1} GFLOP/s (median {:.1}); load {}",
            qc[0],
            qc[1],
            flop / med2 / 1e9,
            loadavg()
        );
        let mut peers = Vec::new();
        if act8::has_kernel(fmt) {
            let wa = A8Matrix::new(fmt, n, k, &blob).unwrap();
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = act8::act_scale(amax);
            let p = a8lib.prepare(a8isa, &wa, &x, s).unwrap();
            a8lib.matmul(&wa, &p, &mut y, Some(&pool2)).unwrap();
            for (a, b) in [(0, 8.min(n)), (n.saturating_sub(8), n)] {
                let sub = sub_blob(fmt, n, k, &blob, a, b);
                for i in [0, m - 1] {
                    let (want, _) =
                        act8::reference(fmt, b - a, k, &sub, &x[i * k..(i + 1) * k], amax).unwrap();
                    let err = rel_l2(&y[i * n + a..i * n + b], &want);
                    assert!(
                        err <= 1e-5,
                        "{name} int8 x: rows {a}..{b} of x row {i}: {err:e}"
                    );
                }
            }
            let (c1, _) = time_best(reps, || {
                let p = a8lib.prepare(a8isa, &wa, &x, s).unwrap();
                a8lib.matmul(&wa, &p, &mut y, None).unwrap()
            });
            let (c2, cm2) = time_best(reps, || {
                let p = a8lib.prepare(a8isa, &wa, &x, s).unwrap();
                a8lib.matmul(&wa, &p, &mut y, Some(&pool2)).unwrap()
            });
            println!(
                "{name:>14}: int8 x ({a8isa:?}): 1 thread {:7.1} GFLOP/s, 2 threads {:7.1} GFLOP/s (median {:.1})",
                flop / c1 / 1e9,
                flop / c2 / 1e9,
                flop / cm2 / 1e9
            );
            peers.push(Peer {
                label: format!(
                    "qc int8-activation kernel ({a8isa:?}, 2-thread median {:.1})",
                    flop / cm2 / 1e9
                ),
                gflops: [flop / c1 / 1e9, flop / c2 / 1e9],
            });
        }
        if peers_on {
            if let Some((bits, block)) = ort_config(name, k) {
                peers.extend(run_ort(bits, block, m, n, k, reps));
            }
            if let (Some(tool), Some((ty, note))) = (&ggml, ggml_config(name)) {
                peers.extend(run_ggml(tool, ty, note, m, n, k, reps));
            }
        }
        rows.push(Row {
            name: name.clone(),
            qc,
            median2: flop / med2 / 1e9,
            peers,
        });
    }
    let f32_ref = if peers_on {
        run_ort_f32(m, n, k, reps)
    } else {
        None
    };

    println!();
    println!("## Summary: GFLOP/s = 2 M N K / best time (M = {m}, N = {n}, K = {k}, {target})");
    println!();
    println!("| format | kernel | 1 thread | 2 threads |");
    println!("|---|---|---:|---:|");
    for r in &rows {
        println!(
            "| {} | qc GEMM (2-thread median {:.1}) | {:.1} | {:.1} |",
            r.name, r.median2, r.qc[0], r.qc[1]
        );
        for p in &r.peers {
            println!(
                "| {} | {} | {:.1} | {:.1} |",
                r.name, p.label, p.gflops[0], p.gflops[1]
            );
        }
    }
    if let Some(p) = f32_ref {
        println!(
            "| f32 | {} | {:.1} | {:.1} |",
            p.label, p.gflops[0], p.gflops[1]
        );
    }
    println!();
    println!("load average at end: {}", loadavg());
}

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
//! Environment: `QC_BENCH_QUICK=1` (M = 64, K = 1024, N = 1024, one rep: a smoke run, numbers
//! meaningless), `QC_BENCH_FORMATS=a,b` (named formats), `QC_BENCH_TARGET=x86-64-v3|x86-64-v4`,
//! `QC_BENCH_PEERS=0` (skip the peers), `QC_BENCH_REPS=n`, `QC_BENCH_M`, `QC_BENCH_N`, `QC_BENCH_K`.
//!
//! Weights are random codes and scales in a normal range (no NaN codes); before timing, the first and
//! last 8 weight rows of the first and last activation rows are checked against `reference_gemm`
//! (relative L2 error <= 1e-5).

use std::process::Command;
use std::time::Instant;

use qc_backend_llvm::gemm::{reference_gemm, GemmLibrary};
use qc_backend_llvm::gemv::{named, QuantMatrix};
use qc_backend_llvm::CpuTarget;
use qc_ir::quant::{QuantType, ScaleType};

const DEFAULT_FORMATS: &[&str] = &[
    "int8_channel",
    "int8_g128",
    "int4_g32",
    "int4_g128",
    "nvfp4",
    "mxfp4",
    "mxfp6",
    "mxfp8",
    "mxint8",
    "fp8_e4m3",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// A valid random blob of `W[n, k]` in `fmt`: random codes (the e4m3fn NaN codes replaced), scales in
/// a normal range.
fn random_blob(fmt: &QuantType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let len = qc_quant::blob::blob_len(fmt, &[n, k]).unwrap();
    let mut blob = vec![0u8; len];
    let s = *QuantMatrix::new(fmt, n, k, &blob).unwrap().sections();
    let codes = n * s.row_bytes;
    let mut r = Rng(seed | 1);
    for b in &mut blob[..codes] {
        *b = r.next() as u8;
    }
    if let qc_ir::quant::Encoding::Float(m) = fmt.elem {
        let bits = m.bits();
        let mask = ((1u32 << bits) - 1) as u8;
        let nan = m.policy == qc_ir::quant::InfNan::Fn;
        let top = mask >> 1;
        for b in &mut blob[..codes] {
            if bits < 8 && fmt.elem.bits() != 4 {
                *b &= mask;
            }
            if nan && bits == 8 && *b & top == top {
                *b ^= 1;
            }
        }
    }
    let sb = fmt.scale.bits() as usize / 8;
    for i in 0..s.n_scales {
        let at = s.scales + i * sb;
        let v = 0.001 + 0.009 * (r.next() % 1000) as f32 / 1000.0;
        match fmt.scale {
            ScaleType::F32 => blob[at..at + 4].copy_from_slice(&v.to_le_bytes()),
            ScaleType::F16 => {
                blob[at..at + 2].copy_from_slice(&qc_quant::codec::f32_to_f16_bits(v).to_le_bytes())
            }
            ScaleType::BF16 => blob[at..at + 2]
                .copy_from_slice(&qc_quant::codec::f32_to_bf16_bits(v).to_le_bytes()),
            ScaleType::E8M0 => blob[at] = 118 + (r.next() % 8) as u8,
            ScaleType::UE4M3 => blob[at] = 0x20 + (r.next() % 0x30) as u8,
        }
    }
    if let Some(at) = s.tensor_scale {
        blob[at..at + 4].copy_from_slice(&(1.0f32 / 2688.0).to_le_bytes());
    }
    blob
}

/// The blob of rows `[a, b)` of `W`.
fn sub_blob(fmt: &QuantType, n: usize, k: usize, blob: &[u8], a: usize, b: usize) -> Vec<u8> {
    let s = *QuantMatrix::new(fmt, n, k, blob).unwrap().sections();
    let m = b - a;
    let mut out = vec![0u8; qc_quant::blob::blob_len(fmt, &[m, k]).unwrap()];
    let t = *QuantMatrix::new(fmt, m, k, &out).unwrap().sections();
    out[..m * s.row_bytes].copy_from_slice(&blob[a * s.row_bytes..b * s.row_bytes]);
    let sb = fmt.scale.bits() as usize / 8;
    let (per_row, first) = if s.n_scales == 1 {
        (0, 0)
    } else {
        (s.n_scales / n, a * (s.n_scales / n))
    };
    let count = if per_row == 0 { 1 } else { m * per_row };
    out[t.scales..t.scales + count * sb]
        .copy_from_slice(&blob[s.scales + first * sb..s.scales + (first + count) * sb]);
    if let (Some(src), Some(dst)) = (s.tensor_scale, t.tensor_scale) {
        out[dst..dst + 4].copy_from_slice(&blob[src..src + 4]);
    }
    out
}

fn rel_l2(y: &[f32], r: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in y.iter().zip(r) {
        num += (a as f64 - b) * (a as f64 - b);
        den += b * b;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn time_best<F: FnMut()>(reps: usize, mut f: F) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[0], t[t.len() / 2])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Minimal parsing of a one-line JSON object as the peer tools print it (`"key": value`, with or
/// without a space after the colon).
fn json_str(line: &str, key: &str) -> String {
    let pat = format!("\"{key}\":");
    let Some(i) = line.find(&pat).map(|i| i + pat.len()) else {
        return String::new();
    };
    let rest = line[i..].trim_start();
    if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next().unwrap_or("").to_string()
    } else {
        rest.split([',', '}'])
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

fn json_field(line: &str, key: &str) -> f64 {
    json_str(line, key).parse().unwrap_or(f64::NAN)
}

struct Peer {
    label: String,
    gflops: [f64; 2],
}

fn run_python(args: &[String]) -> Option<String> {
    match Command::new("python3").args(args).output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            eprintln!("  peer failed: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("  peer not run: {e}");
            None
        }
    }
}

/// onnxruntime MatMulNBits on the same shape, if the format has an equivalent: (bits, block).
fn ort_config(name: &str, k: usize) -> Option<(u32, usize)> {
    match name {
        "int4_g32" => Some((4, 32)),
        "int4_g128" => Some((4, 128)),
        "int8_g128" => Some((8, 128)),
        "int8_channel" => Some((8, k)),
        _ => None,
    }
}

fn run_ort(bits: u32, block: usize, m: usize, n: usize, k: usize, reps: usize) -> Vec<Peer> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/bench/ort_matmulnbits.py");
    let args: Vec<String> = [
        script.to_string_lossy().as_ref(),
        "--m",
        &m.to_string(),
        "--n",
        &n.to_string(),
        "--k",
        &k.to_string(),
        "--bits",
        &bits.to_string(),
        "--block",
        &block.to_string(),
        "--reps",
        &reps.to_string(),
        "--threads",
        "1,2",
        "--levels",
        "0,4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let Some(out) = run_python(&args) else {
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
    let out = run_python(&args)?;
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
    match name {
        "int4_g32" => Some(("q4_0", "")),
        "int8_g128" => Some((
            "q8_0",
            " (32-element blocks, f16 scales: qc has no int8_g32, so it stands next to int8_g128)",
        )),
        "mxfp4" => Some(("mxfp4", "")),
        _ => None,
    }
}

/// The ggml_matmul tool: `QC_GGML_MATMUL`, else the workspace's `target/ggml-bench/ggml_matmul`.
fn ggml_tool() -> Option<std::path::PathBuf> {
    let p = match std::env::var_os("QC_GGML_MATMUL") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/ggml-bench/ggml_matmul"),
    };
    p.is_file().then_some(p)
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
        let out = Command::new(tool)
            .args(["--type", ty, "--n", &n.to_string(), "--k", &k.to_string()])
            .args(["--m", &m.to_string(), "--threads", &t.to_string()])
            .args(["--reps", &reps.to_string()])
            .output();
        let line = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => {
                eprintln!(
                    "  ggml peer failed ({ty}, {t} threads): {}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
                continue;
            }
            Err(e) => {
                eprintln!("  ggml peer not run: {e}");
                return None;
            }
        };
        let line = line.lines().find(|l| l.contains("\"peer\"")).unwrap_or("");
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

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let quick = std::env::var_os("QC_BENCH_QUICK").is_some();
    let peers_on = std::env::var("QC_BENCH_PEERS").map_or(true, |v| v != "0");
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
    let target = match std::env::var("QC_BENCH_TARGET") {
        Ok(t) => t.parse().expect("QC_BENCH_TARGET"),
        Err(_) => CpuTarget::best_for_host().expect("an x86-64-v3 host"),
    };
    let names: Vec<String> = match std::env::var("QC_BENCH_FORMATS") {
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) => DEFAULT_FORMATS.iter().map(|s| s.to_string()).collect(),
    };
    let flop = 2.0 * (m * n * k) as f64;

    println!("# qc GEMM benchmark: M = {m}, N = {n}, K = {k}");
    println!(
        "cpu: {} ({} threads online); target {target}; rustc: {}",
        cmd_out(
            "sh",
            &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]
        ),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cmd_out("rustc", &["-V"])
    );
    println!(
        "date: {}; load average at start: {}; best of {reps} after a warm-up",
        cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        loadavg()
    );

    let fmts: Vec<(String, QuantType)> = names
        .iter()
        .map(|n| (n.clone(), named(n).unwrap().clone()))
        .collect();
    let t0 = Instant::now();
    let lib = GemmLibrary::build(
        &fmts.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
        target,
    )
    .unwrap();
    println!(
        "compiled and linked the GEMV + GEMM kernels of {} formats for {target} in {:.2} s",
        fmts.len(),
        t0.elapsed().as_secs_f64()
    );
    let pool2 = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
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
        let blob = random_blob(fmt, n, k, 7 + i as u64);
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

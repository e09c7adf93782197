//! Quantized GEMV throughput next to DRAM read bandwidth, measured in the same run.
//!
//! `cargo bench -p qc-backend-llvm --bench gemv` (harness-free). For every format it times
//! `y[N] = W[N, K] x[K]` with K = 8192 and N chosen so that the packed codes are 256 MiB (the L3 is
//! 32 MiB), on 1 thread (one kernel call on the calling thread) and 2 threads (a rayon pool), best of
//! 10 calls after a warm-up (the median is printed too), and reports GB/s of weight bytes (codes +
//! scales). The DRAM read bandwidth is a streaming sum over a 1 GiB buffer on 1 and 2 threads (each
//! thread sums one half), plain and with a software prefetch 16 KiB ahead (as the kernels prefetch),
//! measured before and after the formats; the ratios use the larger of the two measurements. Peers
//! run on the same shapes in between: onnxruntime's MatMulNBits through
//! scripts/bench/ort_matmulnbits.py, and llama.cpp's ggml (`ggml_mul_mat`, M = 1) through
//! `target/ggml-bench/ggml_matmul` (built by `bash scripts/bench/ggml/build.sh`; another path with
//! `QC_GGML_MATMUL=path`; skipped with a note when absent): Q4_0 next to int4_g32, Q8_0 next to
//! int8_g128 (qc has no int8 format with 32-element groups; Q8_0 is int8, 32-element blocks, f16
//! scales) and MXFP4 next to mxfp4, each with the weights as llama.cpp loads them by default (Q4_0
//! and MXFP4 repacked into ggml's 8x8 interleaved layout on AVX2 hosts, Q8_0 as stored) and, where
//! that was repacked, once more in the plain layout. ggml's GB/s count its own weight bytes (Q4_0
//! 4.5 bits a weight, Q8_0 8.5, MXFP4 4.25; the same N and K as qc), and ggml quantizes x to Q8_0
//! before its integer dot products (its error column is that of the int8 x). A first section times each kernel on a 1 MiB matrix that stays in the caches (the
//! core's 1 MiB L2 and the L3: about the kernel's compute ceiling, one thread).
//!
//! Environment: `QC_BENCH_QUICK=1` (16 MiB of codes, 64 MiB bandwidth buffer: a smoke run, numbers
//! meaningless), `QC_BENCH_FORMATS=a,b` (named formats), `QC_BENCH_TARGET=x86-64-v3|x86-64-v4`,
//! `QC_BENCH_PEERS=0` (skip the peers), `QC_BENCH_REPS=n`.
//!
//! Weights are random codes and scales in a normal range (no NaN codes); before timing, the first and
//! last 8 rows of every result are checked against `reference_gemv` (relative L2 error <= 1e-5).

use std::process::Command;
use std::time::Instant;

use qc_backend_llvm::gemv::{named, reference_gemv, GemvLibrary, KernelSpec, QuantMatrix};
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
}

fn fill_random(buf: &mut [u8], seed: u64) {
    let mut r = Rng(seed | 1);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    for b in chunks.into_remainder() {
        *b = r.next() as u8;
    }
}

/// A valid random blob of `W[n, k]` in `fmt`: random codes (the e4m3fn NaN codes replaced), scales in a
/// normal range.
fn random_blob(fmt: &QuantType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let len = qc_quant::blob::blob_len(fmt, &[n, k]).unwrap();
    let mut blob = vec![0u8; len];
    let s = *QuantMatrix::new(fmt, n, k, &blob).unwrap().sections();
    let codes = n * s.row_bytes;
    fill_random(&mut blob[..codes], seed);
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
    let mut r = Rng(seed.wrapping_add(99) | 1);
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
    (num / den).sqrt()
}

/// Streaming read: the wrapping sum of every u64 of `buf`, eight independent lanes.
#[inline(never)]
fn stream_sum(buf: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { stream_sum_avx2(buf) };
        }
    }
    stream_sum_portable(buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_sum_avx2(buf: &[u64]) -> u64 {
    stream_sum_portable(buf)
}

#[inline(always)]
fn stream_sum_portable(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 16];
    let mut chunks = buf.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    let mut s = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    for a in acc {
        s = s.wrapping_add(a);
    }
    s
}

/// The same sum, with a software prefetch (`prefetcht1`) 16 KiB ahead of every 64-byte line, as the
/// GEMV kernels do: a second estimate of the read bandwidth, which the plain sum may underestimate
/// when the hardware prefetchers keep too few reads in flight.
#[inline(never)]
fn stream_sum_prefetch(buf: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { stream_sum_prefetch_avx2(buf) };
        }
    }
    stream_sum_portable(buf)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_sum_prefetch_avx2(buf: &[u64]) -> u64 {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    const AHEAD: usize = (16 << 10) / 8;
    let mut acc = [0u64; 8];
    let mut chunks = buf.chunks_exact(8);
    let base = buf.as_ptr();
    for (i, c) in (&mut chunks).enumerate() {
        // Prefetches never fault, also past the end of the buffer.
        _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(i * 8 + AHEAD) as *const i8);
        for j in 0..8 {
            acc[j] = acc[j].wrapping_add(c[j]);
        }
    }
    let mut s = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &b| a.wrapping_add(b));
    for a in acc {
        s = s.wrapping_add(a);
    }
    s
}

/// Read bandwidth in GB/s over `buf` with `threads` threads (each sums a contiguous share), best of
/// `reps`; `prefetch` selects [`stream_sum_prefetch`].
fn read_bandwidth_with(buf: &[u64], threads: usize, reps: usize, prefetch: bool) -> f64 {
    let share = buf.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..reps {
        let t0 = Instant::now();
        let s: u64 = std::thread::scope(|sc| {
            let hs: Vec<_> = buf
                .chunks(share)
                .map(|c| {
                    sc.spawn(move || {
                        if prefetch {
                            stream_sum_prefetch(c)
                        } else {
                            stream_sum(c)
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .fold(0, u64::wrapping_add)
        });
        best = best.min(t0.elapsed().as_secs_f64());
        sink = sink.wrapping_add(s);
    }
    std::hint::black_box(sink);
    (buf.len() * 8) as f64 / best / 1e9
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

struct Peer {
    label: String,
    gbps: [f64; 2],
    check: f64,
    /// The peer's own weight MiB where it differs from qc's (ggml's block formats).
    mib: Option<f64>,
}

/// Minimal parsing of a one-line JSON object as the peer scripts print it (`"key": value`).
fn json_field(line: &str, key: &str) -> f64 {
    json_str(line, key).parse().unwrap_or(f64::NAN)
}

fn json_str(line: &str, key: &str) -> String {
    let pat = format!("\"{key}\": ");
    let Some(i) = line.find(&pat).map(|i| i + pat.len()) else {
        return String::new();
    };
    let rest = &line[i..];
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

/// ggml's type for the same shape, if the format has a counterpart there: (ggml type, note).
fn ggml_config(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "int4_g32" => Some(("q4_0", "")),
        // Q8_0 is int8 with 32-element blocks and f16 scales; qc has no int8_g32.
        "int8_g128" => Some(("q8_0", " (qc has no int8_g32)")),
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

/// ggml's `mul_mat` (M = 1) on `W[n, k]` of type `ty`, on 1 and 2 threads: as llama.cpp loads
/// weights by default (the repacked layout where ggml has one for the type on this CPU), and, when
/// that was repacked, once more in the plain layout.
fn run_ggml(
    tool: &std::path::Path,
    ty: &str,
    note: &str,
    n: usize,
    k: usize,
    reps: usize,
) -> Vec<Peer> {
    let mut peers = Vec::new();
    for repack in [1, 0] {
        let mut p = Peer {
            label: String::new(),
            gbps: [f64::NAN; 2],
            check: f64::NAN,
            mib: None,
        };
        let (mut version, mut layout) = (String::from("?"), String::from("?"));
        for t in 1..=2usize {
            let out = Command::new(tool)
                .args(["--type", ty, "--n", &n.to_string(), "--k", &k.to_string()])
                .args(["--m", "1", "--threads", &t.to_string()])
                .args(["--reps", &reps.to_string(), "--repack", &repack.to_string()])
                .output();
            let line = match out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
                Ok(o) => {
                    eprintln!(
                        "  ggml peer failed ({ty}, {t} threads, repack {repack}): {}{}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                    );
                    continue;
                }
                Err(e) => {
                    eprintln!("  ggml peer not run: {e}");
                    return peers;
                }
            };
            let line = line.lines().find(|l| l.contains("\"peer\"")).unwrap_or("");
            version = json_str(line, "version");
            layout = json_str(line, "layout");
            p.gbps[t - 1] = json_field(line, "gbps");
            let c = json_field(line, "check");
            p.check = if p.check.is_nan() { c } else { p.check.max(c) };
            p.mib = Some(json_field(line, "weight_bytes") / (1 << 20) as f64);
        }
        if p.gbps.iter().all(|g| g.is_nan()) {
            continue;
        }
        let how = match (repack, layout.as_str()) {
            (1, "repacked") => "repacked (llama.cpp's default)",
            (1, _) => "plain (llama.cpp's default: no repacked layout here)",
            _ => "plain layout",
        };
        if peers.is_empty() {
            println!("{:>14}   peer ggml: {version}", "");
        }
        p.label = format!("ggml {} {how}{note}", ty.to_uppercase());
        let repacked = layout == "repacked";
        peers.push(p);
        if !repacked {
            break;
        }
    }
    peers
}

/// onnxruntime MatMulNBits on the same shape, if the format has an equivalent: (bits, block).
fn ort_config(name: &str, k: usize) -> Option<(u32, usize)> {
    match name {
        "int4_g32" => Some((4, 32)),
        "int4_g128" => Some((4, 128)),
        "int8_g128" => Some((8, 128)),
        // Per-channel: one block per row.
        "int8_channel" => Some((8, k)),
        _ => None,
    }
}

fn run_ort(bits: u32, block: usize, n: usize, k: usize, reps: usize) -> Vec<Peer> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/bench/ort_matmulnbits.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--n", &n.to_string(), "--k", &k.to_string()])
        .args(["--bits", &bits.to_string(), "--block", &block.to_string()])
        .args([
            "--reps",
            &reps.to_string(),
            "--threads",
            "1,2",
            "--levels",
            "0,4",
        ])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            eprintln!(
                "  onnxruntime peer failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return vec![];
        }
        Err(e) => {
            eprintln!("  onnxruntime peer not run: {e}");
            return vec![];
        }
    };
    let field = json_field;
    let version = out
        .lines()
        .next()
        .and_then(|l| l.split("\"version\": \"").nth(1))
        .and_then(|v| v.split('"').next())
        .unwrap_or("?")
        .to_string();
    let mut peers = Vec::new();
    for level in [0.0, 4.0] {
        let mut p = Peer {
            label: format!(
                "onnxruntime {version} MatMulNBits bits={bits} block={block} accuracy_level={level}"
            ),
            gbps: [f64::NAN; 2],
            check: f64::NAN,
            mib: None,
        };
        for line in out.lines() {
            if field(line, "accuracy_level") == level {
                let t = field(line, "threads") as usize;
                if (1..=2).contains(&t) {
                    p.gbps[t - 1] = field(line, "gbps");
                }
                p.check = field(line, "check");
            }
        }
        peers.push(p);
    }
    peers
}

fn main() {
    let quick = std::env::var_os("QC_BENCH_QUICK").is_some();
    let peers_on = std::env::var("QC_BENCH_PEERS").map_or(true, |v| v != "0");
    let reps: usize = std::env::var("QC_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 10 });
    let target = match std::env::var("QC_BENCH_TARGET") {
        Ok(t) => t.parse().expect("QC_BENCH_TARGET"),
        Err(_) => CpuTarget::best_for_host().expect("an x86-64-v3 host"),
    };
    let names: Vec<String> = match std::env::var("QC_BENCH_FORMATS") {
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) => DEFAULT_FORMATS.iter().map(|s| s.to_string()).collect(),
    };
    let code_bytes: usize = if quick { 16 << 20 } else { 256 << 20 };
    let ggml_tool = ggml_tool();
    let bw_bytes: usize = if quick { 64 << 20 } else { 1 << 30 };
    let k = 8192usize;

    println!("# qc GEMV benchmark");
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
        "date: {}; load average at start: {}",
        cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        loadavg()
    );

    let mut buf = vec![0u64; bw_bytes / 8];
    for (i, v) in buf.iter_mut().enumerate() {
        *v = i as u64 ^ 0x9e37_79b9;
    }
    let measure_bw = |when: &str| {
        let plain = [
            read_bandwidth_with(&buf, 1, 5, false),
            read_bandwidth_with(&buf, 2, 5, false),
        ];
        let pf = [
            read_bandwidth_with(&buf, 1, 5, true),
            read_bandwidth_with(&buf, 2, 5, true),
        ];
        println!(
            "DRAM read bandwidth ({} MiB streaming sum), {when}: 1 thread {:.2} GB/s, 2 threads {:.2} GB/s; \
             with software prefetch: 1 thread {:.2} GB/s, 2 threads {:.2} GB/s; load {}",
            bw_bytes >> 20,
            plain[0],
            plain[1],
            pf[0],
            pf[1],
            loadavg()
        );
        (plain, pf)
    };
    let bw_before = measure_bw("before");

    let fmts: Vec<(String, QuantType)> = names
        .iter()
        .map(|n| (n.clone(), named(n).unwrap().clone()))
        .collect();
    let t0 = Instant::now();
    let lib = GemvLibrary::build(
        &fmts.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
        target,
    )
    .unwrap();
    println!(
        "compiled and linked {} formats for {target} in {:.2} s",
        fmts.len(),
        t0.elapsed().as_secs_f64()
    );
    let pool2 = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();

    // About the kernels' compute ceiling: a 1 MiB matrix that stays in the caches (L2 and L3), one
    // thread.
    let mut hot = Vec::new();
    for (i, (name, fmt)) in fmts.iter().enumerate() {
        let spec = KernelSpec::from_quant_type(fmt).unwrap();
        let n = (1 << 20) / spec.row_bytes(k).unwrap();
        let blob = random_blob(fmt, n, k, 50 + i as u64);
        let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
        let xp = lib.prepare_x(&w, &vec![0.5f32; k]);
        let mut y = vec![0f32; n];
        let (b, _) = time_best(if quick { 20 } else { 400 }, || {
            lib.gemv_prepared(&w, &xp, &mut y, None).unwrap()
        });
        hot.push(w.weight_bytes() as f64 / b / 1e9);
        println!("{name:>14}: in cache (1 MiB), 1 thread: {:.2} GB/s", hot[i]);
    }
    if std::env::var_os("QC_BENCH_HOT_ONLY").is_some() {
        return;
    }

    struct Row {
        name: String,
        n: usize,
        mib: f64,
        qc: [f64; 2],
        median2: f64,
        peers: Vec<Peer>,
    }
    let mut rows = Vec::new();
    for (i, (name, fmt)) in fmts.iter().enumerate() {
        let spec = KernelSpec::from_quant_type(fmt).unwrap();
        let row_bytes = spec.row_bytes(k).unwrap();
        let n = code_bytes / row_bytes;
        let blob = random_blob(fmt, n, k, 1 + i as u64);
        let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
        let mut rx = Rng(5);
        let x: Vec<f32> = (0..k)
            .map(|_| (rx.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect();
        let mut y = vec![0f32; n];
        // Correctness of the measured configuration on the first and last rows.
        lib.gemv(&w, &x, &mut y, Some(&pool2)).unwrap();
        for (a, b) in [(0, 8), (n - 8, n)] {
            let sub = sub_blob(fmt, n, k, &blob, a, b);
            let want = reference_gemv(fmt, b - a, k, &sub, &x).unwrap();
            let err = rel_l2(&y[a..b], &want);
            assert!(err <= 1e-5, "{name}: rows {a}..{b}: relative error {err:e}");
        }
        let xp = lib.prepare_x(&w, &x);
        let bytes = w.weight_bytes() as f64;
        let (b1, m1) = time_best(reps, || lib.gemv_prepared(&w, &xp, &mut y, None).unwrap());
        let (b2, m2) = time_best(reps, || {
            lib.gemv_prepared(&w, &xp, &mut y, Some(&pool2)).unwrap()
        });
        let qc = [bytes / b1 / 1e9, bytes / b2 / 1e9];
        println!(
            "{name:>14} [{n} x {k}] {:.0} MiB ({}): 1 thread {:.2} GB/s (median {:.2}), 2 threads {:.2} GB/s (median {:.2}); load {}",
            bytes / (1 << 20) as f64,
            spec.symbol,
            qc[0],
            bytes / m1 / 1e9,
            qc[1],
            bytes / m2 / 1e9,
            loadavg()
        );
        drop(w);
        drop(blob);
        let mut peers = match ort_config(name, k) {
            Some((bits, block)) if peers_on => run_ort(bits, block, n, k, reps),
            _ => vec![],
        };
        if let (Some((ty, note)), true) = (ggml_config(name), peers_on) {
            match &ggml_tool {
                Some(tool) => peers.extend(run_ggml(tool, ty, note, n, k, reps)),
                None => println!(
                    "{:>14}   peer ggml {ty}: skipped (no ggml_matmul: run `bash scripts/bench/ggml/build.sh` or set QC_GGML_MATMUL)",
                    ""
                ),
            }
        }
        for p in &peers {
            println!(
                "{:>14}   peer {}: 1 thread {:.2} GB/s, 2 threads {:.2} GB/s (max rel. error of 8 rows {:.1e}){}",
                "",
                p.label,
                p.gbps[0],
                p.gbps[1],
                p.check,
                p.mib.map_or(String::new(), |m| format!("; {m:.0} MiB of weights"))
            );
        }
        rows.push(Row {
            name: name.clone(),
            n,
            mib: bytes / (1 << 20) as f64,
            qc,
            median2: bytes / m2 / 1e9,
            peers,
        });
    }
    let bw_after = measure_bw("after");
    let max2 = |a: [f64; 2], b: [f64; 2]| [a[0].max(b[0]), a[1].max(b[1])];
    let bw = max2(bw_before.0, bw_after.0);
    let bwp = max2(bw_before.1, bw_after.1);
    println!();
    println!(
        "Ratios: to the plain streaming sum (bw) / to the sum with software prefetch (bwp), each the larger \
         of its before and after measurements."
    );
    println!(
        "| format | N x K | weight MiB | 1 thread GB/s | / bw(1) | / bwp(1) | 2 threads GB/s (median) | / bw(2) | / bwp(2) | in cache, 1 thread |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let pct = |v: f64, d: f64| format!("{:.0}%", 100.0 * v / d);
    for (r, h) in rows.iter().zip(&hot) {
        println!(
            "| {} | {} x {k} | {:.0} | {:.2} | {} | {} | {:.2} ({:.2}) | {} | {} | {h:.1} |",
            r.name,
            r.n,
            r.mib,
            r.qc[0],
            pct(r.qc[0], bw[0]),
            pct(r.qc[0], bwp[0]),
            r.qc[1],
            r.median2,
            pct(r.qc[1], bw[1]),
            pct(r.qc[1], bwp[1]),
        );
        for p in &r.peers {
            println!(
                "| peer: {} | {} x {k} | {:.0} | {:.2} | {} | {} | {:.2} | {} | {} | |",
                p.label,
                r.n,
                p.mib.unwrap_or(r.mib),
                p.gbps[0],
                pct(p.gbps[0], bw[0]),
                pct(p.gbps[0], bwp[0]),
                p.gbps[1],
                pct(p.gbps[1], bw[1]),
                pct(p.gbps[1], bwp[1]),
            );
        }
    }
    println!(
        "| DRAM read, streaming sum ({} MiB) | | | {:.2} | 100% | | {:.2} | 100% | | |",
        bw_bytes >> 20,
        bw[0],
        bw[1]
    );
    println!(
        "| DRAM read, streaming sum with prefetch | | | {:.2} | | 100% | {:.2} | | 100% | |",
        bwp[0], bwp[1]
    );
}

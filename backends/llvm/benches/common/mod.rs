//! Helpers shared by the GEMV (`benches/gemv.rs`) and GEMM (`benches/gemm.rs`) benchmarks: settings
//! from the environment, random weight blobs, timing, DRAM read bandwidth, the host description, and
//! running the peers (onnxruntime's MatMulNBits script and llama.cpp's ggml_matmul tool) and parsing
//! their one-line JSON output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use qc_backend_llvm::gemv::{named, QuantMatrix};
use qc_backend_llvm::CpuTarget;
use qc_ir::quant::{QuantType, ScaleType};

/// The formats timed unless `QC_BENCH_FORMATS` names others.
pub const DEFAULT_FORMATS: &[&str] = &[
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

/// `QC_BENCH_QUICK` is set: a smoke run.
pub fn quick() -> bool {
    std::env::var_os("QC_BENCH_QUICK").is_some()
}

/// The peers run unless `QC_BENCH_PEERS=0`.
pub fn peers_on() -> bool {
    std::env::var("QC_BENCH_PEERS").map_or(true, |v| v != "0")
}

/// The environment variable `name` as a number, else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `QC_BENCH_TARGET`, else the best target of the host.
pub fn target() -> CpuTarget {
    match std::env::var("QC_BENCH_TARGET") {
        Ok(t) => t.parse().expect("QC_BENCH_TARGET"),
        Err(_) => CpuTarget::best_for_host().expect("an x86-64-v3 host"),
    }
}

/// The named formats of `QC_BENCH_FORMATS` (comma-separated), else [`DEFAULT_FORMATS`].
pub fn formats() -> Vec<(String, QuantType)> {
    let names: Vec<String> = match std::env::var("QC_BENCH_FORMATS") {
        Ok(v) => v.split(',').map(str::to_string).collect(),
        Err(_) => DEFAULT_FORMATS.iter().map(|s| s.to_string()).collect(),
    };
    names
        .iter()
        .map(|n| (n.clone(), named(n).unwrap().clone()))
        .collect()
}

/// Builds a kernel library for the formats of `fmts` with `build`: the library and the seconds it
/// took.
pub fn build_timed<L, E: std::fmt::Debug>(
    fmts: &[(String, QuantType)],
    build: impl FnOnce(&[QuantType]) -> Result<L, E>,
) -> (L, f64) {
    let t0 = Instant::now();
    let lib = build(&fmts.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>()).unwrap();
    (lib, t0.elapsed().as_secs_f64())
}

/// A rayon pool of `n` threads.
pub fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// How [`random_blob`] draws the codes (each bench keeps the weights it has always timed).
#[allow(dead_code)]
#[derive(Clone, Copy)]
pub enum Codes {
    /// Eight bytes a draw of `Rng(seed | 1)` (fast for the GEMV bench's 256 MiB); the scales from
    /// `Rng((seed + 99) | 1)`.
    Words,
    /// One byte a draw of `Rng(seed | 1)`; the scales from the same generator, after the codes.
    Bytes,
}

/// Fills `buf` with random bytes, eight a draw of `Rng(seed | 1)`.
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

/// A valid random blob of `W[n, k]` in `fmt`: random codes (the e4m3fn NaN codes replaced), scales in
/// a normal range.
pub fn random_blob(fmt: &QuantType, n: usize, k: usize, seed: u64, codes_by: Codes) -> Vec<u8> {
    let len = qc_quant::blob::blob_len(fmt, &[n, k]).unwrap();
    let mut blob = vec![0u8; len];
    let s = *QuantMatrix::new(fmt, n, k, &blob).unwrap().sections();
    let codes = n * s.row_bytes;
    let mut r = Rng(seed | 1);
    match codes_by {
        Codes::Words => {
            fill_random(&mut blob[..codes], seed);
            r = Rng(seed.wrapping_add(99) | 1);
        }
        Codes::Bytes => {
            for b in &mut blob[..codes] {
                *b = r.next() as u8;
            }
        }
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
pub fn sub_blob(fmt: &QuantType, n: usize, k: usize, blob: &[u8], a: usize, b: usize) -> Vec<u8> {
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

/// `||y - r||_2 / ||r||_2`.
pub fn rel_l2(y: &[f32], r: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in y.iter().zip(r) {
        num += (a as f64 - b) * (a as f64 - b);
        den += b * b;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Calls `f` once (warm-up), then `reps` times: the best and the median time in seconds.
pub fn time_best<F: FnMut()>(reps: usize, mut f: F) -> (f64, f64) {
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

/// Streaming read: the wrapping sum of every u64 of `buf`, eight independent lanes; with `prefetch`,
/// with a software prefetch (`prefetcht1`) 16 KiB ahead of every 64-byte line, as the GEMV kernels do:
/// a second estimate of the read bandwidth, which the plain sum may underestimate when the hardware
/// prefetchers keep too few reads in flight.
#[allow(dead_code)]
#[inline(never)]
fn stream_sum(buf: &[u64], prefetch: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe {
                if prefetch {
                    stream_sum_prefetch_avx2(buf)
                } else {
                    stream_sum_avx2(buf)
                }
            };
        }
    }
    stream_sum_portable(buf)
}

#[allow(dead_code)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_sum_avx2(buf: &[u64]) -> u64 {
    stream_sum_portable(buf)
}

#[allow(dead_code)]
#[inline(always)]
fn stream_sum_portable(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 16];
    let mut chunks = buf.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    wrapping_total(&acc, chunks.remainder())
}

#[allow(dead_code)]
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
    wrapping_total(&acc, chunks.remainder())
}

/// The wrapping sum of the lanes `acc` and the elements `rest` after the last whole chunk.
#[allow(dead_code)]
#[inline(always)]
fn wrapping_total(acc: &[u64], rest: &[u64]) -> u64 {
    let s = rest.iter().fold(0u64, |a, &b| a.wrapping_add(b));
    acc.iter().fold(s, |a, &b| a.wrapping_add(b))
}

/// DRAM read bandwidth in GB/s over `buf` with `threads` threads (each sums a contiguous share), best
/// of `reps`; `prefetch` selects the sum with a software prefetch.
#[allow(dead_code)]
pub fn read_bandwidth_with(buf: &[u64], threads: usize, reps: usize, prefetch: bool) -> f64 {
    let share = buf.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..reps {
        let t0 = Instant::now();
        let s: u64 = std::thread::scope(|sc| {
            let hs: Vec<_> = buf
                .chunks(share)
                .map(|c| sc.spawn(move || stream_sum(c, prefetch)))
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

/// The 1-minute, 5-minute and 15-minute load averages (`?` where /proc/loadavg cannot be read).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The trimmed stdout of `cmd args` (empty if it cannot run).
pub fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Prints the `cpu: …; target …; rustc: …` line of the report's header.
pub fn print_host(target: CpuTarget) {
    println!(
        "cpu: {} ({} threads online); target {target}; rustc: {}",
        cmd_out(
            "sh",
            &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]
        ),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cmd_out("rustc", &["-V"])
    );
}

/// The date as the report's header prints it.
pub fn date() -> String {
    cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

/// Minimal parsing of a one-line JSON object as the peer tools print it (`"key": value`, with or
/// without a space after the colon): the value of `key` as a string (empty when absent).
pub fn json_str(line: &str, key: &str) -> String {
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

/// [`json_str`] as a number (NaN when absent).
pub fn json_field(line: &str, key: &str) -> f64 {
    json_str(line, key).parse().unwrap_or(f64::NAN)
}

/// onnxruntime MatMulNBits on the same shape, if the format has an equivalent: (bits, block).
pub fn ort_config(name: &str, k: usize) -> Option<(u32, usize)> {
    match name {
        "int4_g32" => Some((4, 32)),
        "int4_g128" => Some((4, 128)),
        "int8_g128" => Some((8, 128)),
        // Per-channel: one block per row.
        "int8_channel" => Some((8, k)),
        _ => None,
    }
}

/// The stdout of `python3 args`; `None` (with the reason on stderr, after `what`) when it fails.
pub fn run_python(what: &str, args: &[String]) -> Option<String> {
    match Command::new("python3").args(args).output() {
        Ok(o) if o.status.success() => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => {
            eprintln!("  {what} failed: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("  {what} not run: {e}");
            None
        }
    }
}

/// Runs scripts/bench/ort_matmulnbits.py (onnxruntime's MatMulNBits, `bits`-bit codes in blocks of
/// `block`, 1 and 2 threads, accuracy levels 0 and 4) on `W[n, k]`, with `--m m` where `m` is given:
/// its stdout, one JSON line a run. `what` names the peer in the messages of a failure.
pub fn run_ort_script(
    what: &str,
    m: Option<usize>,
    (n, k): (usize, usize),
    (bits, block): (u32, usize),
    reps: usize,
) -> Option<String> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench/ort_matmulnbits.py");
    let mut args = vec![script.to_string_lossy().into_owned()];
    if let Some(m) = m {
        args.extend(["--m".to_string(), m.to_string()]);
    }
    for (flag, v) in [
        ("--n", n.to_string()),
        ("--k", k.to_string()),
        ("--bits", bits.to_string()),
        ("--block", block.to_string()),
        ("--reps", reps.to_string()),
        ("--threads", "1,2".to_string()),
        ("--levels", "0,4".to_string()),
    ] {
        args.extend([flag.to_string(), v]);
    }
    run_python(what, &args)
}

/// ggml's type for the same shape, if the format has a counterpart there (Q8_0, int8 in 32-element
/// blocks with f16 scales, stands next to int8_g128: qc has no int8_g32).
pub fn ggml_type(name: &str) -> Option<&'static str> {
    match name {
        "int4_g32" => Some("q4_0"),
        "int8_g128" => Some("q8_0"),
        "mxfp4" => Some("mxfp4"),
        _ => None,
    }
}

/// The ggml_matmul tool: `QC_GGML_MATMUL`, else the workspace's `target/ggml-bench/ggml_matmul`.
pub fn ggml_tool() -> Option<PathBuf> {
    let p = match std::env::var_os("QC_GGML_MATMUL") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ggml-bench/ggml_matmul"),
    };
    p.is_file().then_some(p)
}

/// One run of the ggml_matmul `tool` (`mul_mat` of `W[n, k]` of type `ty` by `m` rows, on `threads`
/// threads, best of `reps`, with `--repack` where given): its `"peer"` JSON line, `Ok(None)` if it
/// failed, `Err` if it could not be started (both reported on stderr).
pub fn run_ggml_tool(
    tool: &Path,
    ty: &str,
    (m, n, k): (usize, usize, usize),
    threads: usize,
    reps: usize,
    repack: Option<u32>,
) -> Result<Option<String>, std::io::Error> {
    let mut cmd = Command::new(tool);
    cmd.args(["--type", ty, "--n", &n.to_string(), "--k", &k.to_string()])
        .args(["--m", &m.to_string(), "--threads", &threads.to_string()])
        .args(["--reps", &reps.to_string()]);
    if let Some(r) = repack {
        cmd.args(["--repack", &r.to_string()]);
    }
    match cmd.output() {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            let line = out.lines().find(|l| l.contains("\"peer\"")).unwrap_or("");
            Ok(Some(line.to_string()))
        }
        Ok(o) => {
            let repack = repack.map_or(String::new(), |r| format!(", repack {r}"));
            eprintln!(
                "  ggml peer failed ({ty}, {threads} threads{repack}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            Ok(None)
        }
        Err(e) => {
            eprintln!("  ggml peer not run: {e}");
            Err(e)
        }
    }
}

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
//! The formats whose elements are small integers also run the int8-activation kernel
//! (`qc_backend_llvm::act8`, the fastest instruction set of the target the host runs: AVX-512 VNNI
//! where it exists), timed with the quantization of x included (`prepare` + the product), with x
//! quantized per tensor at its own maximum; its rows are checked against `act8::reference`.
//!
//! Weights are random codes and scales in a normal range (no NaN codes); before timing, the first and
//! last 8 rows of every result are checked against `reference_gemv` (relative L2 error <= 1e-5).

use qc_backend_llvm::act8::{self, A8Matrix, Act8Library};
use qc_backend_llvm::gemv::{reference_gemv, GemvLibrary, KernelSpec, QuantMatrix};

mod common;
use common::{
    build_timed, date, ggml_tool, ggml_type, json_field, json_str, loadavg, ort_config, pool,
    print_host, random_blob, read_bandwidth_with, rel_l2, run_ggml_tool, run_ort_script, sub_blob,
    time_best, Codes, Rng,
};

struct Peer {
    label: String,
    gbps: [f64; 2],
    check: f64,
    /// The peer's own weight MiB where it differs from qc's (ggml's block formats).
    mib: Option<f64>,
}

/// ggml's type for the same shape, if the format has a counterpart there: (ggml type, note).
fn ggml_config(name: &str) -> Option<(&'static str, &'static str)> {
    let ty = ggml_type(name)?;
    // Q8_0 is int8 with 32-element blocks and f16 scales; qc has no int8_g32.
    Some((
        ty,
        if ty == "q8_0" {
            " (qc has no int8_g32)"
        } else {
            ""
        },
    ))
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
            let line = match run_ggml_tool(tool, ty, (1, n, k), t, reps, Some(repack)) {
                Ok(Some(line)) => line,
                Ok(None) => continue,
                Err(_) => return peers,
            };
            let line = line.as_str();
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

fn run_ort(bits: u32, block: usize, n: usize, k: usize, reps: usize) -> Vec<Peer> {
    let Some(out) = run_ort_script("onnxruntime peer", None, (n, k), (bits, block), reps) else {
        return vec![];
    };
    let field = json_field;
    let version = out
        .lines()
        .next()
        .map(|l| json_str(l, "version"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".to_string());
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
    let quick = common::quick();
    let peers_on = common::peers_on();
    let reps = common::env_usize("QC_BENCH_REPS", if quick { 3 } else { 10 });
    let target = common::target();
    let fmts = common::formats();
    let code_bytes: usize = if quick { 16 << 20 } else { 256 << 20 };
    let ggml_tool = ggml_tool();
    let bw_bytes: usize = if quick { 64 << 20 } else { 1 << 30 };
    let k = 8192usize;

    println!("# qc GEMV benchmark");
    print_host(target);
    println!("date: {}; load average at start: {}", date(), loadavg());

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

    let (lib, secs) = build_timed(&fmts, |f| GemvLibrary::build(f, target));
    println!(
        "compiled and linked {} formats for {target} in {:.2} s",
        fmts.len(),
        secs
    );
    let pool2 = pool(2);
    let a8lib = Act8Library::build(target).expect("the int8-activation kernels");
    let a8isa = a8lib.best_isa().expect("an instruction set the host runs");
    println!("int8-activation kernels: {a8isa:?}");

    // About the kernels' compute ceiling: a 1 MiB matrix that stays in the caches (L2 and L3), one
    // thread.
    let mut hot = Vec::new();
    let mut hot_a8: Vec<(usize, f64)> = Vec::new();
    for (i, (name, fmt)) in fmts.iter().enumerate() {
        let spec = KernelSpec::from_quant_type(fmt).unwrap();
        let n = (1 << 20) / spec.row_bytes(k).unwrap();
        let blob = random_blob(fmt, n, k, 50 + i as u64, Codes::Words);
        let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
        let xp = lib.prepare_x(&w, &vec![0.5f32; k]);
        let mut y = vec![0f32; n];
        let (b, _) = time_best(if quick { 20 } else { 400 }, || {
            lib.gemv_prepared(&w, &xp, &mut y, None).unwrap()
        });
        hot.push(w.weight_bytes() as f64 / b / 1e9);
        println!("{name:>14}: in cache (1 MiB), 1 thread: {:.2} GB/s", hot[i]);
        if act8::has_kernel(fmt) {
            let wa = A8Matrix::new(fmt, n, k, &blob).unwrap();
            let x = vec![0.5f32; k];
            let (b, _) = time_best(if quick { 20 } else { 400 }, || {
                let p = a8lib.prepare(a8isa, &wa, &x, act8::act_scale(0.5)).unwrap();
                a8lib.matmul(&wa, &p, &mut y, None).unwrap()
            });
            let g = w.weight_bytes() as f64 / b / 1e9;
            hot_a8.push((i, g));
            println!("{name:>14}: int8 x, in cache (1 MiB), 1 thread: {g:.2} GB/s");
        }
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
        a8: Option<[f64; 2]>,
        peers: Vec<Peer>,
    }
    let mut rows = Vec::new();
    for (i, (name, fmt)) in fmts.iter().enumerate() {
        let spec = KernelSpec::from_quant_type(fmt).unwrap();
        let row_bytes = spec.row_bytes(k).unwrap();
        let n = code_bytes / row_bytes;
        let blob = random_blob(fmt, n, k, 1 + i as u64, Codes::Words);
        let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
        let mut rx = Rng(5);
        let x: Vec<f32> = (0..k).map(|_| rx.uniform()).collect();
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
        let a8 = if act8::has_kernel(fmt) {
            let wa = A8Matrix::new(fmt, n, k, &blob).unwrap();
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = act8::act_scale(amax);
            let p = a8lib.prepare(a8isa, &wa, &x, s).unwrap();
            a8lib.matmul(&wa, &p, &mut y, Some(&pool2)).unwrap();
            for (a, b) in [(0, 8), (n - 8, n)] {
                let sub = sub_blob(fmt, n, k, &blob, a, b);
                let (want, _) = act8::reference(fmt, b - a, k, &sub, &x, amax).unwrap();
                let err = rel_l2(&y[a..b], &want);
                assert!(
                    err <= 1e-5,
                    "{name} int8 x: rows {a}..{b}: relative error {err:e}"
                );
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
                "{name:>14}   int8 x ({a8isa:?}): 1 thread {:.2} GB/s, 2 threads {:.2} GB/s (median {:.2})",
                bytes / c1 / 1e9,
                bytes / c2 / 1e9,
                bytes / cm2 / 1e9
            );
            Some([bytes / c1 / 1e9, bytes / c2 / 1e9])
        } else {
            None
        };
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
            a8,
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
        if let Some(a) = r.a8 {
            let h = hot_a8
                .iter()
                .find(|(j, _)| rows.len() > *j && rows[*j].name == r.name)
                .map_or(String::new(), |(_, g)| format!("{g:.1}"));
            println!(
                "| {} int8 x ({a8isa:?}) | {} x {k} | {:.0} | {:.2} | {} | {} | {:.2} | {} | {} | {h} |",
                r.name,
                r.n,
                r.mib,
                a[0],
                pct(a[0], bw[0]),
                pct(a[0], bwp[0]),
                a[1],
                pct(a[1], bw[1]),
                pct(a[1], bwp[1]),
            );
        }
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

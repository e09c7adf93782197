//! Quantize throughput per named format on one core, next to the memory bandwidth measured in the same
//! run. `cargo bench -p qc-quant --bench quantize` prints a markdown table (docs/BENCHMARKS.md).
//! Set QC_BENCH_QUICK=1 for a short smoke run.

use qc_quant::qsnr::{samples, Dist};
use qc_quant::tensor::{dequantize, quantize, QuantizeOptions};
use std::hint::black_box;
use std::time::Instant;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let quick = std::env::var("QC_BENCH_QUICK").is_ok();
    let (reps, mib) = if quick { (1, 16usize) } else { (5, 256usize) };
    // Memory bandwidth: a streaming read (sum) and a copy of a buffer of `mib` MiB.
    let n = mib * 1024 * 1024 / 4;
    let src: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let mut dst = vec![0f32; n];
    let read_s = best_of(reps, || {
        let mut acc = [0f32; 8];
        for c in src.chunks_exact(8) {
            for k in 0..8 {
                acc[k] += c[k];
            }
        }
        black_box(acc);
    });
    let copy_s = best_of(reps, || {
        dst.copy_from_slice(&src);
        black_box(&dst);
    });
    let bytes = (n * 4) as f64;
    println!("memory bandwidth ({mib} MiB buffer): read {:.2} GB/s, copy {:.2} GB/s (read + write bytes)", bytes / read_s / 1e9, 2.0 * bytes / copy_s / 1e9);
    drop(dst);
    drop(src);

    let shape = if quick {
        [256usize, 1024]
    } else {
        [2048usize, 4096]
    };
    let x = samples(Dist::Gaussian, shape[0] * shape[1], 1);
    let in_bytes = (x.len() * 4) as f64;
    println!();
    println!("| format | quantize Melem/s | quantize GB/s (f32 in) | dequantize Melem/s |");
    println!("|---|---|---|---|");
    for f in qc_ir::quant::named_formats() {
        let opts = QuantizeOptions::default();
        let mut q = None;
        let qs = best_of(reps, || {
            q = Some(black_box(
                quantize(&x, &shape, &f.ty, &opts).expect("quantize"),
            ))
        });
        let q = q.expect("ran at least once");
        let ds = best_of(reps, || {
            black_box(dequantize(&q).expect("dequantize"));
        });
        println!(
            "| {} | {:.0} | {:.2} | {:.0} |",
            f.name,
            x.len() as f64 / qs / 1e6,
            in_bytes / qs / 1e9,
            x.len() as f64 / ds / 1e6
        );
    }
}

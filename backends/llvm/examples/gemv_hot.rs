//! About the compute ceiling of one GEMV kernel, with 1 MiB of weights in the caches, one thread:
//! `cargo run --release -p qc-backend-llvm --example gemv_hot -- FORMAT K [TARGET]` (1 MiB of codes).
use std::time::Instant;

use qc_backend_llvm::gemv::{named, GemvLibrary, KernelSpec, QuantMatrix};
use qc_backend_llvm::CpuTarget;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fmt = named(&args[1]).unwrap().clone();
    let k: usize = args[2].parse().unwrap();
    let target: CpuTarget = args
        .get(3)
        .map(|s| s.parse().unwrap())
        .unwrap_or(CpuTarget::X86_64V4);
    let lib = GemvLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
    let n = (1 << 20)
        / KernelSpec::from_quant_type(&fmt)
            .unwrap()
            .row_bytes(k)
            .unwrap();
    let blob = vec![0x11u8; qc_quant::blob::blob_len(&fmt, &[n, k]).unwrap()];
    let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
    let xp = lib.prepare_x(&w, &vec![0.5f32; k]);
    let mut y = vec![0f32; n];
    let mut best = f64::INFINITY;
    for _ in 0..2000 {
        let t0 = Instant::now();
        lib.gemv_prepared(&w, &xp, &mut y, None).unwrap();
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "{} K={k} {target}: {:.2} GB/s",
        args[1],
        w.weight_bytes() as f64 / best / 1e9
    );
}

//! `cargo run -p qc-backend-ptx --example fp8_gemm_kit -- DIR`: what a machine with a GPU but no LLVM
//! needs to check and time the FP8 tensor-core GEMM of `qc_backend_ptx::mma8` with FP8 e4m3
//! weights (one f32 scale per tensor) and activations (scripts/gpu/fp8_gemm_bench.py runs it with
//! CuPy, next to PyTorch's `torch._scaled_mm`). It writes:
//! - `fp8_gemm.TARGET.ptx` for sm_89, sm_90a, sm_100a and sm_120a, and `fp8_gemm.wgmma.sm_90a.ptx`
//!   (the warpgroup kernel of `qc_backend_ptx::wgmma8`, same parameters);
//! - `sgemm.TARGET.ptx` for every target: the 3xTF32 f32 GEMM of `qc_backend_ptx::mmaf` (entry,
//!   block and tile in the JSON's `sgemm` field);
//! - `fp8_gemm.json`: the entry, block and tile (of both kernels), and a check case: `m`, `n`, `k`, the blob's
//!   `scales_offset`, the activation scale `sa`;
//! - `fp8_gemm.check.blob` (a 256 x 1024 weight quantized with qc_quant), `fp8_gemm.check.x`
//!   (40 x 1024 f32) and `fp8_gemm.check.y` (40 x 256 f32: the f64 product of qc_quant's
//!   quantized-and-dequantized activations and dequantized weights, rounded).

use std::path::PathBuf;

use qc_backend_ptx::fquant::FakeQuantPt;
use qc_backend_ptx::mma4::WARP_TILE;
use qc_backend_ptx::mma8::{self, Mma8};
use qc_backend_ptx::GpuTarget;
use qc_ir::quant::named_format;
use qc_quant::QuantizeOptions;

#[path = "../tests/common/mod.rs"]
mod common;
use common::noise;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: fp8_gemm_kit DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let fmt = named_format("fp8_e4m3").unwrap().ty.clone();
    let spec = Mma8::classify(&fmt, &fmt).unwrap();
    for t in &GpuTarget::ALL[1..] {
        let ptx = mma8::emit_ptx(*t, &spec).unwrap();
        std::fs::write(dir.join(format!("fp8_gemm.{}.ptx", t.name())), ptx).unwrap();
    }
    let ptx = qc_backend_ptx::wgmma8::emit_ptx(&spec).unwrap();
    std::fs::write(dir.join("fp8_gemm.wgmma.sm_90a.ptx"), ptx).unwrap();
    for t in GpuTarget::ALL {
        let ptx = qc_backend_ptx::mmaf::emit_ptx(t).unwrap();
        std::fs::write(dir.join(format!("sgemm.{}.ptx", t.name())), ptx).unwrap();
    }
    let (m, n, k) = (40usize, 256usize, 1024usize);
    let w: Vec<f32> = noise(n * k, 3).iter().map(|v| v * 0.05).collect();
    let q = qc_quant::quantize(&w, &[n, k], &fmt, &Default::default()).unwrap();
    let blob = qc_quant::blob::to_blob(&q).unwrap();
    let wd = qc_quant::dequantize(&q).unwrap();
    let x = noise(m * k, 5);
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let opts = QuantizeOptions {
        tensor_amax: Some(amax),
        ..Default::default()
    };
    let xq = qc_quant::quantize(&x, &[m, k], &fmt, &opts).unwrap();
    let xd = qc_quant::dequantize(&xq).unwrap();
    let y: Vec<f32> = (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            (0..k)
                .map(|j| wd[c * k + j] as f64 * xd[r * k + j] as f64)
                .sum::<f64>() as f32
        })
        .collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("fp8_gemm.check.blob"), &blob).unwrap();
    std::fs::write(dir.join("fp8_gemm.check.x"), bytes(&x)).unwrap();
    std::fs::write(dir.join("fp8_gemm.check.y"), bytes(&y)).unwrap();
    let sa = FakeQuantPt::classify(&fmt).unwrap().scale(amax);
    let json = format!(
        "{{\"entry\": {:?}, \"block\": {}, \"tile\": {WARP_TILE}, \"check\": {{\"m\": {m}, \"n\": {n}, \
         \"k\": {k}, \"scales_offset\": {}, \"sa\": {sa:?}}}, \"wgmma\": {{\"entry\": {:?}, \"block\": {}, \
         \"tile\": {}}}, \"sgemm\": {{\"entry\": {:?}, \"block\": {}, \"tile\": {WARP_TILE}}}}}\n",
        mma8::ENTRY,
        mma8::BLOCK,
        spec.scales_offset(n, k),
        qc_backend_ptx::wgmma8::ENTRY,
        qc_backend_ptx::wgmma8::BLOCK,
        qc_backend_ptx::wgmma8::TILE,
        qc_backend_ptx::mmaf::ENTRY,
        qc_backend_ptx::mmaf::BLOCK,
    );
    std::fs::write(dir.join("fp8_gemm.json"), json).unwrap();
    println!("wrote {}", dir.display());
}

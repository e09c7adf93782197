//! `cargo run -p qc-backend-ptx --example gemv4_kit -- DIR`: everything a machine with a GPU but no
//! LLVM needs to check and time the 4-bit GEMV kernels of `qc_backend_ptx::gemv4`
//! (scripts/gpu/gemv4_bench.py runs it with CuPy). For each format it writes:
//! - `FORMAT.TARGET.ptx` for every GPU target;
//! - `FORMAT.json`: the kernels' entries, `slice`, `group` (null: per row), `byte_scales`,
//!   `tensor_scale`, the 272 `tables` values, and a check case: `n`, `k`, the blob's `scales_offset`,
//!   `post`, and the files below;
//! - `FORMAT.check.blob` (a 256 x 1024 weight quantized with qc_quant), `FORMAT.check.x` (1024 f32)
//!   and `FORMAT.check.y` (256 f32: the f64 product of the dequantized weight and x, rounded);
//! - the tensor-core GEMM of `qc_backend_ptx::mma4` for the same format: `FORMAT.mma4.TARGET.ptx`,
//!   and a check case of 40 activation rows with the same weight, `FORMAT.mcheck.x` (40 x 1024 f32)
//!   and `FORMAT.mcheck.y` (40 x 256 f32); the JSON's `mma4` field names the entry, block and tile.

use std::path::PathBuf;

use qc_backend_ptx::gemv4::{self, Gemv4};
use qc_backend_ptx::mma4;
use qc_backend_ptx::GpuTarget;
use qc_ir::quant::{named_format, TensorScale};

#[path = "../tests/common/mod.rs"]
mod common;
use common::noise;

const FORMATS: [&str; 6] = [
    "int4_g32",
    "int4_g128",
    "int4_channel",
    "mxfp4",
    "nvfp4",
    "nvint4",
];

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: gemv4_kit DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let (n, k) = (256usize, 1024usize);
    for f in FORMATS {
        let fmt = named_format(f).unwrap().ty.clone();
        let spec = Gemv4::classify(&fmt).unwrap();
        for t in GpuTarget::ALL {
            let ptx = gemv4::emit_ptx(t, &spec).unwrap();
            std::fs::write(dir.join(format!("{f}.{}.ptx", t.name())), ptx).unwrap();
            let ptx = mma4::emit_ptx(t, &spec).unwrap();
            std::fs::write(dir.join(format!("{f}.mma4.{}.ptx", t.name())), ptx).unwrap();
        }
        let w: Vec<f32> = noise(n * k, 3).iter().map(|v| v * 0.05).collect();
        let q = qc_quant::quantize(&w, &[n, k], &fmt, &Default::default()).unwrap();
        let blob = qc_quant::blob::to_blob(&q).unwrap();
        let wd = qc_quant::dequantize(&q).unwrap();
        let x = noise(k, 5);
        let y: Vec<f32> = (0..n)
            .map(|r| {
                (0..k)
                    .map(|j| wd[r * k + j] as f64 * x[j] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let rows = 40;
        let xm = noise(rows * k, 9);
        let ym: Vec<f32> = (0..rows * n)
            .map(|i| {
                let (mm, r) = (i / n, i % n);
                (0..k)
                    .map(|j| wd[r * k + j] as f64 * xm[mm * k + j] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(dir.join(format!("{f}.mcheck.x")), bytes(&xm)).unwrap();
        std::fs::write(dir.join(format!("{f}.mcheck.y")), bytes(&ym)).unwrap();
        std::fs::write(dir.join(format!("{f}.check.blob")), &blob).unwrap();
        std::fs::write(dir.join(format!("{f}.check.x")), bytes(&x)).unwrap();
        std::fs::write(dir.join(format!("{f}.check.y")), bytes(&y)).unwrap();
        let sec = spec.sections(n, k);
        let tables: Vec<String> = spec
            .tables()
            .unwrap()
            .iter()
            .map(|v| {
                if v.is_finite() {
                    format!("{v:?}")
                } else {
                    "null".into()
                }
            })
            .collect();
        let json = format!(
            "{{\"format\": {f:?}, \"partial\": {:?}, \"reduce\": {:?}, \"slice\": {}, \"group\": {}, \
             \"byte_scales\": {}, \"tensor_scale\": {}, \"tables\": [{}], \"check\": {{\"n\": {n}, \"k\": {k}, \
             \"scales_offset\": {}, \"post\": {:?}, \"mma_rows\": {rows}}}, \"mma4\": {{\"entry\": {:?}, \
             \"block\": {}, \"tile\": {}}}}}\n",
            gemv4::PARTIAL,
            gemv4::REDUCE,
            spec.slice,
            spec.group.map_or("null".to_string(), |g| g.to_string()),
            spec.byte_scales,
            !matches!(spec.tensor, TensorScale::None),
            tables.join(", "),
            sec.scales,
            spec.post(&blob, n, k).unwrap(),
            mma4::ENTRY,
            mma4::BLOCK,
            mma4::WARP_TILE
        );
        std::fs::write(dir.join(format!("{f}.json")), json).unwrap();
    }
    println!("wrote {}", dir.display());
}

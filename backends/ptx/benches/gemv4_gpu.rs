//! `cargo bench -p qc-backend-ptx --bench gemv4_gpu [-- --n N --k K --reps R --target sm_90a]`: the
//! 4-bit GEMV kernels (`qc_backend_ptx::gemv4`, M = 1) on GPU 0, next to the device's memory bandwidth
//! measured in the same run. Needs an NVIDIA GPU and its driver (loaded at run time); without one it
//! says so and exits with code 2.
//!
//! For each format: first a check on a 512 x 4096 matrix (quantized with qc_quant) against the f64
//! product of the dequantized weights (within 1e-5 of max |y|); then the timing on N x K random codes
//! and valid scales (default 32768 x 16384: 256 MiB of codes, more than any L2): the median of `reps`
//! runs of both kernels (launch to synchronize), as GB/s of weight bytes (codes + scales) and as a
//! fraction of the bandwidth of a device-to-device copy of 1 GiB (bytes read + bytes written per
//! second, the usual "memcpy bandwidth"). One JSON line per measurement.

use std::time::Instant;

use qc_backend_ptx::gemv4::{self, Gemv4};
use qc_backend_ptx::GpuTarget;
use qc_ir::quant::named_format;
use qc_runtime::cuda::driver::Cuda;
use qc_runtime::cuda::Device;

#[path = "../tests/common/mod.rs"]
mod common;
use common::noise;

const FORMATS: [&str; 4] = ["int4_g32", "int4_g128", "mxfp4", "nvfp4"];

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

struct Gpu {
    dev: Cuda,
}

impl Gpu {
    fn buffer(&mut self, data: &[u8]) -> u64 {
        let a = self.dev.alloc(data.len().max(1) as u64).unwrap();
        self.dev.upload(a, data).unwrap();
        a
    }

    /// Runs both kernels; returns nothing (results stay on the device).
    #[allow(clippy::too_many_arguments)]
    fn gemv(&mut self, k: (usize, usize), a: &Args, n: usize, kk: usize, m: usize, post: f32) {
        let s = kk / a.slice;
        let block = 256u32;
        let threads = (n * s) as u64;
        let grid = threads.div_ceil(block as u64) as u32;
        let w = |v: u64| v.to_le_bytes().to_vec();
        self.dev
            .launch(
                k.0,
                [grid, 1, 1],
                [block, 1, 1],
                &[
                    w(a.codes),
                    w(a.scales),
                    w(a.tables),
                    w(a.x),
                    w(a.p),
                    w(kk as u64),
                    w(n as u64),
                    w(m as u64),
                ],
            )
            .unwrap();
        let threads = (m * n) as u64;
        let grid = threads.div_ceil(block as u64) as u32;
        self.dev
            .launch(
                k.1,
                [grid, 1, 1],
                [block, 1, 1],
                &[
                    w(a.p),
                    w(a.scales),
                    w(a.tables),
                    w(a.y),
                    w(kk as u64),
                    w(n as u64),
                    w(m as u64),
                    post.to_le_bytes().to_vec(),
                ],
            )
            .unwrap();
    }
}

struct Args {
    slice: usize,
    codes: u64,
    scales: u64,
    tables: u64,
    x: u64,
    p: u64,
    y: u64,
}

fn main() {
    let dev = match Cuda::open() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gemv4_gpu needs an NVIDIA GPU: {e}");
            std::process::exit(2);
        }
    };
    let cc = dev.compute_capability().unwrap();
    let target = GpuTarget::ALL
        .into_iter()
        .rev()
        .find(|t| qc_runtime::cuda::driver::runs_target(cc, t.name()))
        .expect("a target this GPU runs");
    let name = dev.name();
    let (n, k, reps) = (
        arg("--n", 32768) as usize,
        arg("--k", 16384) as usize,
        arg("--reps", 20) as usize,
    );
    let mut gpu = Gpu { dev };
    // Memory bandwidth: device-to-device copy of 1 GiB.
    let big = 1usize << 30;
    let src = gpu.dev.alloc(big as u64).unwrap();
    let dst = gpu.dev.alloc(big as u64).unwrap();
    let mut times = Vec::new();
    for _ in 0..reps.max(3) {
        let t = Instant::now();
        gpu.dev.copy(dst, src, big as u64).unwrap();
        gpu.dev.synchronize().unwrap();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let copy_gbs = 2.0 * big as f64 / times[times.len() / 2] / 1e9;
    println!(
        "{{\"device\": {name:?}, \"target\": {:?}, \"memcpy_dtod_gbs\": {copy_gbs:.1}}}",
        target.name()
    );
    for f in FORMATS {
        let fmt = named_format(f).unwrap().ty.clone();
        let spec = Gemv4::classify(&fmt).unwrap();
        let ptx = gemv4::emit_ptx(target, &spec).unwrap();
        let kp = gpu.dev.kernel(ptx.as_bytes(), gemv4::PARTIAL).unwrap();
        let kr = gpu.dev.kernel(ptx.as_bytes(), gemv4::REDUCE).unwrap();
        let tables = f32_bytes(&spec.tables().unwrap());
        // 1. Check.
        let (cn, ck) = (512, 4096);
        let wv: Vec<f32> = noise(cn * ck, 3).iter().map(|v| v * 0.05).collect();
        let q = qc_quant::quantize(&wv, &[cn, ck], &fmt, &Default::default()).unwrap();
        let blob = qc_quant::blob::to_blob(&q).unwrap();
        let wd = qc_quant::dequantize(&q).unwrap();
        let xv = noise(ck, 5);
        let sec = spec.sections(cn, ck);
        let a = Args {
            slice: spec.slice,
            codes: gpu.buffer(&blob),
            scales: 0,
            tables: gpu.buffer(&tables),
            x: gpu.buffer(&f32_bytes(&xv)),
            p: gpu.dev.alloc((cn * ck / spec.slice * 4) as u64).unwrap(),
            y: gpu.dev.alloc((cn * 4) as u64).unwrap(),
        };
        let a = Args {
            scales: a.codes + sec.scales as u64,
            ..a
        };
        gpu.gemv((kp, kr), &a, cn, ck, 1, spec.post(&blob, cn, ck).unwrap());
        gpu.dev.synchronize().unwrap();
        let mut yb = vec![0u8; cn * 4];
        gpu.dev.download(a.y, &mut yb).unwrap();
        let want: Vec<f64> = (0..cn)
            .map(|r| (0..ck).map(|j| wd[r * ck + j] as f64 * xv[j] as f64).sum())
            .collect();
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = yb
            .chunks(4)
            .zip(&want)
            .map(|(b, w)| (f32::from_le_bytes(b.try_into().unwrap()) as f64 - w).abs())
            .fold(0f64, f64::max)
            / scale;
        // 2. Timing on random codes with valid scales.
        let sec = spec.sections(n, k);
        let mut blob = vec![0u8; sec.len];
        let mut s = 0x1234_5678_9abc_def1u64;
        for b in blob[..n * k / 2].iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *b = s as u8;
        }
        let scale_bytes = sec.tensor.unwrap_or(sec.len) - sec.scales;
        for (i, b) in blob[sec.scales..sec.scales + scale_bytes]
            .iter_mut()
            .enumerate()
        {
            // f32 scales: 1.0 (0x3f800000); byte scales: 0x38 (a small normal value in e8m0/ue4m3).
            *b = if spec.byte_scales {
                0x38
            } else {
                [0x00, 0x00, 0x80, 0x3f][i % 4]
            };
        }
        if let Some(t) = sec.tensor {
            blob[t..t + 4].copy_from_slice(&1.0f32.to_le_bytes());
        }
        let weight_bytes = (n * k / 2 + scale_bytes) as f64;
        let a = Args {
            slice: spec.slice,
            codes: gpu.buffer(&blob),
            scales: 0,
            tables: gpu.buffer(&tables),
            x: gpu.buffer(&f32_bytes(&noise(k, 9))),
            p: gpu.dev.alloc((n * k / spec.slice * 4) as u64).unwrap(),
            y: gpu.dev.alloc((n * 4) as u64).unwrap(),
        };
        let a = Args {
            scales: a.codes + sec.scales as u64,
            ..a
        };
        let post = spec.post(&blob, n, k).unwrap();
        gpu.gemv((kp, kr), &a, n, k, 1, post);
        gpu.dev.synchronize().unwrap();
        let mut times = Vec::new();
        for _ in 0..reps.max(3) {
            let t = Instant::now();
            gpu.gemv((kp, kr), &a, n, k, 1, post);
            gpu.dev.synchronize().unwrap();
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        let gbs = weight_bytes / med / 1e9;
        println!(
            "{{\"format\": {f:?}, \"n\": {n}, \"k\": {k}, \"check_rel_err\": {err:.2e}, \"median_s\": {med:.6e}, \
             \"weight_gbs\": {gbs:.1}, \"fraction_of_memcpy\": {:.3}}}",
            gbs / copy_gbs
        );
        assert!(
            err <= 1e-5,
            "{f}: the GPU result is off by {err:.2e} of max |y|"
        );
    }
}

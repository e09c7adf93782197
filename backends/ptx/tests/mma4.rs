//! The tensor-core GEMM of `qc_backend_ptx::mma4`: its PTX assembles with ptxas for every target and
//! issues `mma.sync` m16n8k16 bf16; and its body, compiled for this CPU with each MMA a call of the
//! emulator of tests/mma_emu, run warp by warp with one OS thread per lane, matches qc_quant's
//! dequantized product for every format the kernel reads.

use inkwell::context::Context;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use qc_backend_ptx::gemv4::Gemv4;
use qc_backend_ptx::mma4::{self, Entries};
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::GpuTarget;
use qc_quant::{quantize, QuantizeOptions};

mod common;
use common::fmt;
mod mma_emu;
use common::noise;
use mma_emu::{emulate, run_warps, Shape, Warp};

const FORMATS: [&str; 8] = [
    "int4_g32",
    "int4_g128",
    "int4_channel",
    "mxfp4",
    "nvfp4",
    "nvfp4_torchao",
    "nvfp4_ct",
    "nvint4",
];

type Kernel = unsafe extern "C" fn(
    *const u8,
    *const u8,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i64,
    i64,
    f32,
    *const Warp,
    i64,
);

/// Runs the kernel on the CPU for `y[m, n] = x[m, k] W^T`: every warp of the launch (blocks of
/// `mma4::BLOCK` threads), its 32 lanes as threads.
fn run_on_cpu(spec: &Gemv4, blob: &[u8], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    Target::initialize_native(&InitializationConfig::default()).unwrap();
    let ctx = Context::create();
    let module = ctx.create_module("mma4_host");
    mma4::build(&ctx, &module, spec, Entries::Host).unwrap();
    module.verify().unwrap();
    let ee = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    let emu = module.get_function(mma4::EMULATOR).unwrap();
    ee.add_global_mapping(&emu, emulate as *const () as usize);
    let tables = spec.tables().unwrap();
    let sec = spec.sections(n, k);
    assert_eq!(sec.len, blob.len());
    let post = spec.post(blob, n, k).unwrap();
    let mut y = vec![f32::NAN; m * n];
    let warps = m.div_ceil(32) * n.div_ceil(32);
    let threads = (warps * 32).div_ceil(mma4::BLOCK as usize) * mma4::BLOCK as usize;
    // SAFETY: the signature is the one mma4::build gives the host entry; the buffers have the sizes
    // of the kernel contract.
    let kernel = unsafe {
        ee.get_function::<Kernel>(&format!("{}_at", mma4::ENTRY))
            .unwrap()
            .as_raw()
    };
    let y_addr = y.as_mut_ptr() as usize;
    run_warps(Shape::Bf16, threads, |warp, t| unsafe {
        kernel(
            blob.as_ptr(),
            blob[sec.scales..].as_ptr(),
            tables.as_ptr(),
            x.as_ptr(),
            y_addr as *mut f32,
            k as i64,
            n as i64,
            m as i64,
            post,
            warp,
            t as i64,
        )
    });
    y
}

#[test]
fn the_kernel_matches_the_dequantized_product_on_an_emulated_warp() {
    // Tiles cut by M and N (M = 40: a second warp row with 8 rows; N = 24 and 40: partial tiles).
    for (m, n, k) in [(40, 24, 256), (16, 40, 128)] {
        for name in FORMATS {
            let f = fmt(name);
            let spec = Gemv4::classify(&f).unwrap();
            mma4::supports(&spec, k as u64).unwrap();
            let w: Vec<f32> = noise(n * k, 7)
                .iter()
                .enumerate()
                .map(|(i, v)| v * 0.05 * (1 + (i / k) % 5) as f32)
                .collect();
            let q = quantize(&w, &[n, k], &f, &QuantizeOptions::default()).unwrap();
            let blob = qc_quant::blob::to_blob(&q).unwrap();
            let wd = qc_quant::dequantize(&q).unwrap();
            // Activations of several magnitudes, so that the lo term matters.
            let x: Vec<f32> = noise(m * k, 11)
                .iter()
                .enumerate()
                .map(|(i, v)| v * [1.0, 300.0, 0.01][i % 3])
                .collect();
            let y = run_on_cpu(&spec, &blob, &x, m, n, k);
            let mut worst = 0f64;
            for (i, &got) in y.iter().enumerate() {
                let (mm, row) = (i / n, i % n);
                let want: f64 = (0..k)
                    .map(|j| wd[row * k + j] as f64 * x[mm * k + j] as f64)
                    .sum();
                let mag: f64 = (0..k)
                    .map(|j| (wd[row * k + j] as f64 * x[mm * k + j] as f64).abs())
                    .sum();
                let err = (got as f64 - want).abs() / mag.max(1e-30);
                worst = worst.max(err);
                // hi + lo carry 16 significant bits: about 2^-17 of each term, plus f32 sums.
                assert!(
                    err <= 2e-5,
                    "{name} m={m} n={n} k={k}: y[{mm}][{row}] = {got}, reference {want} (err {err:e})"
                );
            }
            // One bf16 term alone would be off by up to 2^-9: the split is what keeps it close.
            assert!(worst < 1e-4, "{name}: {worst}");
        }
    }
}

#[test]
fn shapes_the_kernel_cannot_read_are_refused() {
    let g128 = Gemv4::classify(&fmt("int4_g128")).unwrap();
    assert!(mma4::supports(&g128, 192).is_err());
    let ch = Gemv4::classify(&fmt("int4_channel")).unwrap();
    assert!(mma4::supports(&ch, 40).is_err());
    assert!(mma4::supports(&ch, 48).is_ok());
}

#[test]
fn ptxas_accepts_the_kernel_for_every_target() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    for name in ["int4_g32", "nvfp4", "int4_channel", "mxfp4"] {
        let spec = Gemv4::classify(&fmt(name)).unwrap();
        for t in GpuTarget::ALL {
            let ptx = mma4::emit_ptx(t, &spec).unwrap();
            assert!(
                ptx.contains(&format!(".entry {}(", mma4::ENTRY)),
                "{name} {t}"
            );
            assert!(
                ptx.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
                "{name} {t}"
            );
            // The accumulators live in registers, not in local memory.
            assert!(!ptx.contains(".local"), "{name} {t}: local memory\n{ptx}");
            let cubin = assemble(&ptxas, &ptx, t).unwrap_or_else(|e| panic!("{name} {t}: {e}"));
            assert_eq!(&cubin[..4], b"\x7fELF");
        }
    }
}

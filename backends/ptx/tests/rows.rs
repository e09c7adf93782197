//! The row kernels of `qc_backend_ptx::rows` (softmax, log-softmax, layer normalization, a warp per
//! row): their bodies, compiled for this CPU with every shuffle a call of the emulator of
//! tests/shfl_emu and run warp by warp, match an f64 reference on rows shorter than a warp, not a
//! multiple of 32 and long, of large magnitudes (softmax's stability: inputs around 1e4) and with
//! a large mean (layer normalization's two passes); their PTX assembles with ptxas for every
//! target and uses the warp shuffle.

use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::rows::{self, Entries, RowKernel};
use qc_backend_ptx::GpuTarget;

mod common;
use common::noise;
mod shfl_emu;
use shfl_emu::{run_warps, shfl, Lanes};

type Softmax = unsafe extern "C" fn(*const f32, *mut f32, u64, u64, *const Lanes, u64);
type LayerNorm = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    u64,
    u64,
    f32,
    *const Lanes,
    u64,
);

/// The (rows, len) shapes: below a warp, a warp, not multiples of 32, long rows.
const SHAPES: [(usize, usize); 7] = [
    (3, 1),
    (5, 7),
    (4, 32),
    (3, 33),
    (2, 100),
    (9, 40),
    (2, 517),
];

/// The host entry `<entry>_at` of `kernel`, and its engine (kept alive by the caller).
fn host(ctx: &Context, kernel: RowKernel) -> (ExecutionEngine<'_>, usize) {
    Target::initialize_native(&InitializationConfig::default()).unwrap();
    let module = ctx.create_module("rows_host");
    rows::build(ctx, &module, kernel, Entries::Host).unwrap();
    module.verify().unwrap();
    let ee = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    ee.add_global_mapping(
        &module.get_function(rows::SHFL_EMULATOR).unwrap(),
        shfl as *const () as usize,
    );
    let addr = ee
        .get_function_address(&format!("{}_at", kernel.entry()))
        .unwrap();
    (ee, addr)
}

/// Threads of a launch of `rows` rows: a warp each, in whole blocks.
fn threads(rows: usize) -> usize {
    (rows * 32).div_ceil(rows::BLOCK as usize) * rows::BLOCK as usize
}

/// Runs the softmax kernel `kernel` on `x` (`rows` rows).
fn run_softmax(addr: usize, x: &[f32], rows: usize, len: usize) -> Vec<f32> {
    // SAFETY: the signature rows::build gives the softmax host entries.
    let k: Softmax = unsafe { std::mem::transmute::<usize, Softmax>(addr) };
    let mut y = vec![f32::NAN; rows * len];
    let y_addr = y.as_mut_ptr() as usize;
    run_warps(threads(rows), |lanes, t| unsafe {
        k(
            x.as_ptr(),
            y_addr as *mut f32,
            rows as u64,
            len as u64,
            lanes,
            t as u64,
        )
    });
    y
}

/// Inputs: noise scaled by `scale` plus `offset`.
fn input(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    noise(n, seed).iter().map(|v| v * scale + offset).collect()
}

#[test]
fn softmax_and_log_softmax_match_the_f64_reference() {
    let ctx = Context::create();
    for kernel in [RowKernel::Softmax, RowKernel::LogSoftmax] {
        let (_ee, addr) = host(&ctx, kernel);
        let log = kernel == RowKernel::LogSoftmax;
        for (i, &(rows, len)) in SHAPES.iter().enumerate() {
            // Ordinary logits, wide ones, and large magnitudes (exp would overflow without the max).
            for (scale, offset) in [(3.0, 0.0), (30.0, -5.0), (2000.0, 1e4)] {
                let x = input(rows * len, i as u64 + 1, scale, offset);
                let y = run_softmax(addr, &x, rows, len);
                for r in 0..rows {
                    let row: Vec<f64> = x[r * len..(r + 1) * len]
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                    for j in 0..len {
                        let want = if log {
                            (row[j] - m) - s.ln()
                        } else {
                            (row[j] - m).exp() / s
                        };
                        let got = y[r * len + j] as f64;
                        // Relative to the value (and to 1 for log-softmax, whose small values are
                        // differences of O(1) terms); softmax's tiny values absolutely.
                        let tol = if log {
                            4e-6 * (want.abs() + 1.0)
                        } else {
                            4e-6 * want.abs() + 1e-9
                        };
                        assert!(
                            (got - want).abs() <= tol,
                            "{kernel:?} [{rows}, {len}] scale {scale} offset {offset}: y[{r}][{j}] = \
                             {got}, reference {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn softmax_propagates_nan_and_handles_infinities() {
    let ctx = Context::create();
    let (_ee, addr) = host(&ctx, RowKernel::Softmax);
    let len = 5;
    let x = [
        1.0,
        f32::NAN,
        2.0,
        3.0,
        0.0,
        // -inf logits get probability 0.
        f32::NEG_INFINITY,
        0.0,
        f32::NEG_INFINITY,
        0.0,
        f32::NEG_INFINITY,
    ];
    let y = run_softmax(addr, &x, 2, len);
    assert!(y[..len].iter().all(|v| v.is_nan()), "{y:?}");
    assert_eq!(&y[len..], &[0.0, 0.5, 0.0, 0.5, 0.0], "{y:?}");
}

#[test]
fn layer_norm_matches_the_f64_reference() {
    let ctx = Context::create();
    let (_ee, addr) = host(&ctx, RowKernel::LayerNorm);
    // SAFETY: the signature rows::build gives the layer normalization host entry.
    let k: LayerNorm = unsafe { std::mem::transmute::<usize, LayerNorm>(addr) };
    let eps = 1e-5f32;
    for (i, &(rows, len)) in SHAPES.iter().enumerate() {
        // Centered rows, a large mean (where E[x^2] - mean^2 would cancel), and constant rows
        // (variance 0: the result is beta).
        for (scale, offset) in [(2.0, 0.0), (3.0, 300.0), (0.0, 7.0)] {
            let x = input(rows * len, i as u64 + 11, scale, offset);
            let gamma = input(len, i as u64 + 21, 1.0, 1.0);
            let beta = input(len, i as u64 + 31, 0.5, 0.0);
            let mut y = vec![f32::NAN; rows * len];
            let y_addr = y.as_mut_ptr() as usize;
            run_warps(threads(rows), |lanes, t| unsafe {
                k(
                    x.as_ptr(),
                    gamma.as_ptr(),
                    beta.as_ptr(),
                    y_addr as *mut f32,
                    rows as u64,
                    len as u64,
                    eps,
                    lanes,
                    t as u64,
                )
            });
            for r in 0..rows {
                let row: Vec<f64> = x[r * len..(r + 1) * len]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let mean = row.iter().sum::<f64>() / len as f64;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / len as f64;
                let sd = (var + eps as f64).sqrt();
                for j in 0..len {
                    let want = (row[j] - mean) / sd * gamma[j] as f64 + beta[j] as f64;
                    let got = y[r * len + j] as f64;
                    // The mean of values around 300 carries an error of a few ulps of 300.
                    let tol = 2e-5 * (want.abs() + 1.0) * (1.0 + offset as f64 / 30.0);
                    assert!(
                        (got - want).abs() <= tol,
                        "[{rows}, {len}] scale {scale} offset {offset}: y[{r}][{j}] = {got}, \
                         reference {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn ptxas_accepts_the_row_kernels_for_every_target() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    for t in GpuTarget::ALL {
        for kernel in RowKernel::ALL {
            let ptx = rows::emit_ptx(t, kernel).unwrap();
            assert!(ptx.contains(&format!(".entry {}(", kernel.entry())), "{t}");
            assert!(ptx.contains("shfl.sync.bfly.b32"), "{t} {kernel:?}");
            assert!(!ptx.contains(".local"), "{t} {kernel:?}: local memory");
            assert!(!ptx.contains(".extern"), "{t} {kernel:?}: a library call");
            assemble(&ptxas, &ptx, t).unwrap_or_else(|e| panic!("{t} {kernel:?}: {e}"));
        }
    }
}

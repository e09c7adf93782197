//! The 4-bit GEMV kernels of `qc_backend_ptx::gemv4`: their PTX assembles with ptxas for every target,
//! and their bodies, compiled for this CPU and run thread index by thread index, match qc_quant's
//! dequantization within 1e-5 for every format they read (no GPU is needed: the arithmetic is the
//! same IR).

use inkwell::context::Context;
use qc_backend_ptx::gemv4::{self, Entries, Gemv4};
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::GpuTarget;

mod common;
use common::{fmt, graded_rows, noise, Case4, W4_FORMATS};
mod mma_emu;
use mma_emu::{host_entry, jit};

type Partial = unsafe extern "C" fn(
    *const u8,
    *const u8,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i64,
    i64,
    i64,
);
type Reduce =
    unsafe extern "C" fn(*const f32, *const u8, *const f32, *mut f32, i64, i64, i64, f32, i64);

/// Runs both kernels on the CPU for `y[m, n] = x[m, k] W^T`, one thread index at a time.
fn run_on_cpu(spec: &Gemv4, blob: &[u8], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let ctx = Context::create();
    let ee = jit(
        &ctx,
        "gemv4_host",
        |m| gemv4::build(&ctx, m, spec, Entries::Host).unwrap(),
        &[],
    );
    let tables = spec.tables().unwrap();
    let sec = spec.sections(n, k);
    assert_eq!(sec.len, blob.len(), "the sections cover the blob");
    let post = spec.post(blob, n, k).unwrap();
    let s = k / spec.slice;
    let mut p = vec![f32::NAN; m * n * s];
    let mut y = vec![f32::NAN; m * n];
    // SAFETY: the signatures are those gemv4::build gives the host entries; every buffer has the
    // sizes the kernel contract asks for.
    unsafe {
        let partial: Partial = host_entry(&ee, gemv4::PARTIAL);
        let reduce: Reduce = host_entry(&ee, gemv4::REDUCE);
        let scales = blob[sec.scales..].as_ptr();
        // Threads past the range do nothing (one extra index checks the guard).
        for t in 0..=(n * s) {
            partial(
                blob.as_ptr(),
                scales,
                tables.as_ptr(),
                x.as_ptr(),
                p.as_mut_ptr(),
                k as i64,
                n as i64,
                m as i64,
                t as i64,
            );
        }
        for t in 0..=(m * n) {
            reduce(
                p.as_ptr(),
                scales,
                tables.as_ptr(),
                y.as_mut_ptr(),
                k as i64,
                n as i64,
                m as i64,
                post,
                t as i64,
            );
        }
    }
    y
}

#[test]
fn kernels_match_the_dequantized_product_on_the_cpu() {
    // K = 256 and 512 take slices of 128, K = 192 of 64, K = 96 of 32 (groups of 128 longer than the
    // slice, groups of 16 shorter).
    for (m, n, k) in [(1, 24, 256), (3, 8, 512), (2, 5, 192), (1, 7, 96)] {
        for name in W4_FORMATS {
            let f = fmt(name);
            if name == "int4_g128" && k % 128 != 0 {
                continue;
            }
            let spec = Gemv4::for_k(&f, k).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                spec.slice,
                [128, 64, 32].into_iter().find(|l| k % l == 0).unwrap()
            );
            let Case4 { blob, wd, x, .. } =
                Case4::new(&f, m, n, k, &graded_rows(n, k), noise(m * k, 11));
            let y = run_on_cpu(&spec, &blob, &x, m, n, k);
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (mm, row) = (i / n, i % n);
                    (0..k)
                        .map(|j| wd[row * k + j] as f64 * x[mm * k + j] as f64)
                        .sum()
                })
                .collect();
            let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
            assert!(scale > 0.0);
            for (i, (&got, &w)) in y.iter().zip(&want).enumerate() {
                assert!(
                    ((got as f64) - w).abs() <= 1e-5 * scale,
                    "{name} m={m} n={n} k={k}: y[{i}] = {got}, reference {w}"
                );
            }
        }
    }
}

#[test]
fn unsupported_formats_and_shapes_are_refused() {
    assert!(Gemv4::for_k(&fmt("int4_channel"), 48).is_err());
    for name in ["int8_channel", "mxfp8", "uint4_g128", "fp8_e4m3"] {
        assert!(Gemv4::classify(&fmt(name)).is_err(), "{name}");
    }
}

#[test]
fn ptxas_accepts_the_kernels_for_every_target() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    for (name, k) in [
        ("int4_g32", 256),
        ("nvfp4", 256),
        ("int4_channel", 256),
        ("mxfp4", 96),
    ] {
        let spec = Gemv4::for_k(&fmt(name), k).unwrap();
        for t in GpuTarget::ALL {
            let ptx = gemv4::emit_ptx(t, &spec).unwrap();
            for entry in [gemv4::PARTIAL, gemv4::REDUCE] {
                assert!(
                    ptx.contains(&format!(".entry {entry}(")),
                    "{name} {t}: {entry}"
                );
            }
            // The codes are read with 16-byte vector loads.
            assert!(
                ptx.contains("ld.global.v4.u32") || ptx.contains("ld.global.v4.b32"),
                "{name} {t}:\n{ptx}"
            );
            let cubin = assemble(&ptxas, &ptx, t).unwrap_or_else(|e| panic!("{name} {t}: {e}"));
            assert_eq!(&cubin[..4], b"\x7fELF");
        }
    }
}

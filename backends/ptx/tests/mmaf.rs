//! The f32 tensor-core GEMM of `qc_backend_ptx::mmaf`: its PTX assembles with ptxas for every target
//! and issues `mma.sync` m16n8k8 tf32; its body, compiled for this CPU with each MMA a call of the
//! emulator of tests/mma_emu and run warp by warp, matches the f64 product within 2e-6 of the sum of
//! the products' magnitudes, for batched and shared right-hand matrices and shapes that are not
//! multiples of the tiles (K = 7, 33, 50).

use inkwell::context::Context;
use qc_backend_ptx::gemv4::Entries;
use qc_backend_ptx::mmaf;
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::GpuTarget;

mod common;
use common::{noise, three_magnitudes};
mod mma_emu;
use mma_emu::{emulate, host_entry, jit, launch_threads, run_warps, Sgemm, Shape};

#[test]
fn the_kernel_matches_the_f64_product_on_an_emulated_warp() {
    let ctx = Context::create();
    let ee = jit(
        &ctx,
        "mmaf_host",
        |m| mmaf::build(&ctx, m, Entries::Host).unwrap(),
        &[(mmaf::EMULATOR, emulate as *const () as usize)],
    );
    // SAFETY: the signature mmaf::build gives the host entry.
    let kernel: Sgemm = unsafe { host_entry(&ee, mmaf::ENTRY) };
    for (batch, m, n, k, shared) in [
        (2, 40, 24, 7, false),
        (1, 16, 40, 50, true),
        (3, 5, 9, 33, true),
        (2, 33, 70, 64, false),
    ] {
        let nb = if shared { 1 } else { batch };
        // Values over several magnitudes, so that the lo terms matter.
        let a = three_magnitudes(batch * m * k, 1, 300.0);
        let b: Vec<f32> = noise(nb * k * n, 2).iter().map(|v| v * 0.7).collect();
        let mut c = vec![f32::NAN; batch * m * n];
        let threads = launch_threads(batch * m.div_ceil(32) * n.div_ceil(32), mmaf::BLOCK);
        let c_addr = c.as_mut_ptr() as usize;
        run_warps(Shape::Tf32, threads, |warp, t| unsafe {
            kernel(
                a.as_ptr(),
                b.as_ptr(),
                c_addr as *mut f32,
                batch as u64,
                m as u64,
                n as u64,
                k as u64,
                shared as u64,
                warp,
                t as u64,
            )
        });
        for bi in 0..batch {
            let bb = if shared { 0 } else { bi };
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|kk| {
                        a[(bi * m + i) * k + kk] as f64 * b[(bb * k + kk) * n + j] as f64
                    });
                    let want: f64 = terms.clone().sum();
                    let mag: f64 = terms.map(f64::abs).sum();
                    let got = c[(bi * m + i) * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 2e-6 * mag.max(1e-30),
                        "B={batch} M={m} N={n} K={k} shared={shared}: c[{bi}][{i}][{j}] = {got} (mag {mag}), \
                         reference {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn ptxas_accepts_the_kernel_for_every_target() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    for t in GpuTarget::ALL {
        let ptx = mmaf::emit_ptx(t).unwrap();
        assert!(ptx.contains(&format!(".entry {}(", mmaf::ENTRY)), "{t}");
        assert!(
            ptx.contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"),
            "{t}"
        );
        assert!(!ptx.contains(".local"), "{t}: local memory");
        assemble(&ptxas, &ptx, t).unwrap_or_else(|e| panic!("{t}: {e}"));
    }
}

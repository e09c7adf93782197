//! The tensor-core GEMM of `qc_backend_ptx::mma4`: its PTX assembles with ptxas for every target and
//! issues `mma.sync` m16n8k16 bf16; and its body, compiled for this CPU with each MMA a call of the
//! emulator of tests/mma_emu, run warp by warp with one OS thread per lane, matches qc_quant's
//! dequantized product for every format the kernel reads.

use inkwell::context::Context;
use qc_backend_ptx::gemv4::Gemv4;
use qc_backend_ptx::mma4::{self, Entries};
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::GpuTarget;

mod common;
use common::{fmt, graded_rows, three_magnitudes, Case4, W4_FORMATS};
mod mma_emu;
use mma_emu::{emulate, host_entry, jit, launch_threads, run_warp_gemm, GemmArgs, Shape, WarpGemm};

/// Runs the kernel on the CPU for `y[m, n] = x[m, k] W^T`: every warp of the launch (blocks of
/// `mma4::BLOCK` threads), its 32 lanes as threads.
fn run_on_cpu(spec: &Gemv4, blob: &[u8], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let ctx = Context::create();
    let ee = jit(
        &ctx,
        "mma4_host",
        |m| mma4::build(&ctx, m, spec, Entries::Host).unwrap(),
        &[(mma4::EMULATOR, emulate as *const () as usize)],
    );
    let tables = spec.tables().unwrap();
    let sec = spec.sections(n, k);
    assert_eq!(sec.len, blob.len());
    let post = spec.post(blob, n, k).unwrap();
    let mut y = vec![f32::NAN; m * n];
    let threads = launch_threads(m.div_ceil(32) * n.div_ceil(32), mma4::BLOCK);
    // mma4 takes no activation scale.
    let args = GemmArgs::new(blob, sec.scales, &tables, x, &mut y, (m, n, k), post, 0.0);
    // SAFETY: the signature is the one mma4::build gives the host entry; the buffers have the sizes
    // of the kernel contract.
    unsafe {
        let kernel = WarpGemm::Bf16(host_entry(&ee, mma4::ENTRY));
        run_warp_gemm(kernel, Shape::Bf16, threads, args)
    };
    y
}

#[test]
fn the_kernel_matches_the_dequantized_product_on_an_emulated_warp() {
    // Tiles cut by M and N (M = 40: a second warp row with 8 rows; N = 24 and 40: partial tiles).
    for (m, n, k) in [(40, 24, 256), (16, 40, 128)] {
        for name in W4_FORMATS {
            let f = fmt(name);
            let spec = Gemv4::classify(&f).unwrap();
            mma4::supports(&spec, k as u64).unwrap();
            // Activations of several magnitudes, so that the lo term matters.
            let x = three_magnitudes(m * k, 11, 300.0);
            let case = Case4::new(&f, m, n, k, &graded_rows(n, k), x);
            let y = run_on_cpu(&spec, &case.blob, &case.x, m, n, k);
            case.check_hi_lo(&y, &format!("{name} m={m} n={n} k={k}"));
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

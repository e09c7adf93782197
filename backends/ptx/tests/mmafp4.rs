//! The W4A4 GEMM of `qc_backend_ptx::mmafp4`: its body, compiled for this CPU with each
//! block-scaled MMA a call of the emulator of tests/mma_emu (written from the PTX ISA's text), run
//! warp by warp, matches the product of qc_quant's quantized-and-dequantized activations with its
//! dequantized weights for NVFP4 x NVFP4 and MXFP4 x MXFP4, with partial warp tiles in M and N;
//! and its PTX assembles with ptxas for sm_120a and issues the block-scaled `mma.sync`.

use inkwell::context::Context;
use qc_backend_ptx::fp4::{Fp4, Fp4Kind};
use qc_backend_ptx::mma4::Entries;
use qc_backend_ptx::mmafp4;
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::GpuTarget;

mod common;
use common::fmt;
use common::Case8;
mod mma_emu;
use mma_emu::{
    emulate_fp4, host_entry, jit, launch_threads, run_warp_gemm, GemmArgs, Shape, WarpGemm,
};

/// Runs the kernel on the CPU for `y[m, n]`, every warp of the launch; `tamax` is the activations'
/// static tensor maximum.
fn run_on_cpu(
    spec: &Fp4,
    blob: &[u8],
    x: &[f32],
    tamax: f32,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let ctx = Context::create();
    let ee = jit(
        &ctx,
        "mmafp4_host",
        |m| mmafp4::build(&ctx, m, spec, Entries::Host).unwrap(),
        &[(mmafp4::EMULATOR, emulate_fp4 as *const () as usize)],
    );
    assert_eq!(spec.weights.sections(n, k).len, blob.len());
    let tables = [0f32; 4];
    let post = spec.post(blob, n, k).unwrap();
    let scales = spec.scales_offset(n, k);
    let mut y = vec![f32::NAN; m * n];
    let threads = launch_threads(m.div_ceil(32) * n.div_ceil(32), mmafp4::BLOCK);
    let shape = Shape::Fp4 {
        nvfp4: spec.kind == Fp4Kind::Nvfp4,
    };
    let args = GemmArgs::new(blob, scales, &tables, x, &mut y, (m, n, k), post, tamax);
    // SAFETY: the signature mmafp4::build gives the host entry; buffers as the contract asks.
    unsafe {
        let kernel = WarpGemm::Scaled(host_entry(&ee, mmafp4::ENTRY));
        run_warp_gemm(kernel, shape, threads, args)
    };
    y
}

#[test]
fn the_named_fp4_formats_classify() {
    let nv = Fp4::classify(&fmt("nvfp4"), &fmt("nvfp4")).unwrap();
    assert_eq!(nv.kind, Fp4Kind::Nvfp4);
    let mx = Fp4::classify(&fmt("mxfp4"), &fmt("mxfp4")).unwrap();
    assert_eq!(mx.kind, Fp4Kind::Mxfp4);
    assert!(Fp4::classify(&fmt("nvfp4"), &fmt("mxfp4")).is_err());
    assert!(nv.supports(192).is_ok() && nv.supports(96).is_err());
}

#[test]
fn the_kernel_matches_quantized_activations_times_dequantized_weights() {
    for name in ["nvfp4", "mxfp4"] {
        let f = fmt(name);
        let spec = Fp4::classify(&f, &f).unwrap();
        for (m, n, k) in [(40, 48, 192), (16, 8, 64)] {
            spec.supports(k as u64).unwrap();
            for (what, case) in [
                ("shared case", Case8::new(&f, &f, m, n, k)),
                ("blockwise", Case8::blockwise(&f, m, n, k)),
            ] {
                let y = run_on_cpu(&spec, &case.blob, &case.x, case.sa, m, n, k);
                case.check(&y, &format!("{name} x {name} m={m} n={n} k={k} ({what})"));
            }
        }
    }
}

#[test]
fn ptxas_accepts_the_kernel_for_sm_120a() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    for (name, mma) in [
        (
            "nvfp4",
            "mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X.f32.e2m1.e2m1.f32.ue4m3",
        ),
        (
            "mxfp4",
            "mma.sync.aligned.m16n8k64.row.col.kind::mxf4.block_scale.scale_vec::2X.f32.e2m1.e2m1.f32.ue8m0",
        ),
    ] {
        let f = fmt(name);
        let spec = Fp4::classify(&f, &f).unwrap();
        let ptx = mmafp4::emit_ptx(&spec).unwrap();
        assert!(ptx.contains(".target sm_120a"), "{name}");
        assert!(ptx.contains(&format!(".entry {}(", mmafp4::ENTRY)), "{name}");
        assert!(ptx.contains(mma), "{name}: no {mma}");
        assert!(!ptx.contains(".local"), "{name}: local memory");
        let cubin = assemble(&ptxas, &ptx, GpuTarget::Sm120a)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF");
    }
}

//! The Blackwell GEMMs of `qc_backend_ptx::tcgen05`: their PTX assembles with ptxas for sm_100a and
//! issues `tcgen05.mma` (block-scaled FP4 kinds, or `kind::f16`); and their bodies, compiled for
//! this CPU with tensor memory and the tensor-core operations as calls of the emulators of
//! tests/mma_emu (shared memory a host buffer read through the kernels' descriptors), run block by
//! block with 128 OS threads, match the product of qc_quant's dequantized weights with the
//! activations (W4A16) or with their quantized-and-dequantized values (W4A4).

use inkwell::context::Context;
use qc_backend_ptx::fp4::Fp4;
use qc_backend_ptx::gemv4::Gemv4;
use qc_backend_ptx::mma4::Entries;
use qc_backend_ptx::mma8::Mma8;
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::tcgen05::{self, Tc05};
use qc_backend_ptx::GpuTarget;

mod common;
use common::{blockwise_values, fmt, three_magnitudes, Case4, Case8};
mod mma_emu;
use mma_emu::{host_entry, jit, run_block_gemm, tcgen05_emulators, GemmArgs, Tc};

#[test]
fn ptxas_accepts_the_kernels_for_sm_100a() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    let fp4 = |n: &str| Tc05::Fp4(Fp4::classify(&fmt(n), &fmt(n)).unwrap());
    let w4 = |n: &str| Tc05::w4(&Gemv4::classify(&fmt(n)).unwrap(), 128).unwrap();
    for (name, spec, mma) in [
        (
            "nvfp4 x nvfp4",
            fp4("nvfp4"),
            "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.block16",
        ),
        (
            "mxfp4 x mxfp4",
            fp4("mxfp4"),
            "tcgen05.mma.cta_group::1.kind::mxf4.block_scale.block32",
        ),
        ("nvfp4", w4("nvfp4"), "tcgen05.mma.cta_group::1.kind::f16"),
        ("nvint4", w4("nvint4"), "tcgen05.mma.cta_group::1.kind::f16"),
        (
            "fp8_e4m3_channel x fp8_e5m2",
            Tc05::fp8(
                &Mma8::classify(&fmt("fp8_e4m3_channel"), &fmt("fp8_e5m2")).unwrap(),
                128,
            )
            .unwrap(),
            "tcgen05.mma.cta_group::1.kind::f8f6f4",
        ),
    ] {
        let ptx = tcgen05::emit_ptx(&spec).unwrap();
        assert!(ptx.contains(&format!(".entry {}(", spec.entry())), "{name}");
        assert!(ptx.contains(mma), "{name}: no {mma}");
        let cubin =
            assemble(&ptxas, &ptx, GpuTarget::Sm100a).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF");
    }
}

#[test]
fn w4_takes_byte_group_scales_only() {
    let g = |n: &str| Gemv4::classify(&fmt(n)).unwrap();
    for n in ["nvfp4", "mxfp4", "nvint4", "nvfp4_torchao", "nvfp4_ct"] {
        assert!(Tc05::w4(&g(n), 128).is_ok(), "{n}");
    }
    // f32 scales are not exact in bf16; per-row scales; K not a multiple of 32.
    assert!(Tc05::w4(&g("int4_g32"), 128).is_err());
    assert!(Tc05::w4(&g("int4_channel"), 128).is_err());
    assert!(Tc05::w4(&g("nvfp4"), 80).is_err());
}

/// Runs the host body block by block (128 OS threads each); returns `y` and the MMAs issued.
#[allow(clippy::too_many_arguments)]
fn run_on_cpu(
    spec: &Tc05,
    blob: &[u8],
    x: &[f32],
    tamax: f32,
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f32>, usize) {
    let ctx = Context::create();
    let ee = jit(
        &ctx,
        "tcgen05_host",
        |m| tcgen05::build(&ctx, m, spec, Entries::Host).unwrap(),
        &tcgen05_emulators(),
    );
    let post = spec.post(blob, n, k).unwrap();
    let scales = spec.scales_offset(n, k);
    let tables = spec.tables().unwrap();
    let mut y = vec![f32::NAN; m * n];
    let tile = tcgen05::TILE as usize;
    let blocks = m.div_ceil(tile) * n.div_ceil(tile);
    let args = GemmArgs::new(blob, scales, &tables, x, &mut y, (m, n, k), post, tamax);
    let new_block = || Tc::new(spec.smem() as usize);
    // SAFETY: the signature tcgen05::build gives the host entry; buffers as the contract asks.
    let tcs = unsafe {
        let kernel = host_entry(&ee, spec.entry());
        run_block_gemm(kernel, blocks, tcgen05::BLOCK as usize, new_block, args)
    };
    (y, tcs.iter().map(Tc::mmas).sum())
}

#[test]
fn the_fp4_kernel_matches_quantized_activations_times_dequantized_weights() {
    // Partial tiles in M and N (two tiles each), K of 3 steps.
    let (m, n, k) = (136, 144, 192);
    for name in ["nvfp4", "mxfp4"] {
        let f = fmt(name);
        let spec = Tc05::Fp4(Fp4::classify(&f, &f).unwrap());
        for (what, case) in [
            ("shared case", Case8::new(&f, &f, m, n, k)),
            ("blockwise", Case8::blockwise(&f, m, n, k)),
        ] {
            let (y, mmas) = run_on_cpu(&spec, &case.blob, &case.x, case.sa, m, n, k);
            assert_eq!(mmas, 4 * 3, "{name}: one MMA per block and k-step");
            case.check(&y, &format!("{name} x {name} ({what})"));
        }
    }
}

#[test]
fn the_w4_kernel_matches_dequantized_weights_times_activations() {
    // Partial tiles in M and N, K of 5 steps of 32 (and groups of 16 and 32 across them).
    let (m, n, k) = (130, 136, 160);
    for name in ["nvfp4", "mxfp4", "nvint4", "nvfp4_ct"] {
        let f = fmt(name);
        let g = Gemv4::classify(&f).unwrap();
        let spec = Tc05::w4(&g, k as u64).unwrap();
        // Weights whose scales differ group by group; activations of several magnitudes, so that
        // the lo term matters.
        let w = blockwise_values(n, k, 7, 3, 7, 0.05);
        let case = Case4::new(&f, m, n, k, &w, three_magnitudes(m * k, 11, 300.0));
        let (y, mmas) = run_on_cpu(&spec, &case.blob, &case.x, 0.0, m, n, k);
        assert_eq!(mmas, 4 * 5 * 4, "{name}: four MMAs per block and k-step");
        case.check_hi_lo(&y, name);
    }
}

#[test]
fn the_fp8_kernel_matches_quantized_activations_times_dequantized_weights() {
    let (m, n, k) = (136, 144, 96);
    for (w, a) in [
        ("fp8_e4m3", "fp8_e4m3"),
        ("fp8_e5m2", "fp8_e4m3"),
        ("fp8_e4m3_channel", "fp8_e5m2"),
    ] {
        let (wf, af) = (fmt(w), fmt(a));
        let spec = Tc05::fp8(&Mma8::classify(&wf, &af).unwrap(), k as u64).unwrap();
        let case = Case8::new(&wf, &af, m, n, k);
        let (y, mmas) = run_on_cpu(&spec, &case.blob, &case.x, case.sa, m, n, k);
        assert_eq!(mmas, 4 * 3, "{w} x {a}: one MMA per block and k-step");
        case.check(&y, &format!("{w} x {a}"));
    }
    // Grouped or 4-bit weights and int8 activations take other kernels.
    let no = |w: &str, a: &str| Tc05::fp8(&Mma8::classify(&fmt(w), &fmt(a)).unwrap(), 128).is_err();
    assert!(no("mxfp4", "fp8_e4m3") && no("int8_channel", "int8"));
}

//! The Blackwell FP4 GEMM of `qc_backend_ptx::tcgen05`: its PTX assembles with ptxas for sm_100a
//! and issues the block-scaled `tcgen05.mma`; and its body, compiled for this CPU with tensor memory
//! and the tensor-core operations as calls of the emulators of tests/mma_emu (shared memory a host
//! buffer read through the kernel's descriptors), run block by block with 128 OS threads, matches
//! the product of qc_quant's quantized-and-dequantized activations and dequantized weights.

use inkwell::context::Context;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use qc_backend_ptx::fp4::Fp4;
use qc_backend_ptx::mma4::Entries;
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::tcgen05;
use qc_backend_ptx::GpuTarget;

mod common;
use common::{fmt, Case8};
mod mma_emu;
use mma_emu::{tc_alloc, tc_bar, tc_ld, tc_mma, tc_st, Tc};

#[test]
fn ptxas_accepts_the_kernel_for_sm_100a() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    for (w, a, mma) in [
        (
            "nvfp4",
            "nvfp4",
            "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale.block16",
        ),
        (
            "mxfp4",
            "mxfp4",
            "tcgen05.mma.cta_group::1.kind::mxf4.block_scale.block32",
        ),
    ] {
        let spec = Fp4::classify(&fmt(w), &fmt(a)).unwrap();
        let ptx = tcgen05::emit_ptx(&spec).unwrap();
        assert!(ptx.contains(&format!(".entry {}(", tcgen05::ENTRY)), "{w}");
        assert!(ptx.contains(mma), "{w}: no {mma}");
        let cubin =
            assemble(&ptxas, &ptx, GpuTarget::Sm100a).unwrap_or_else(|e| panic!("{w}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF");
    }
}

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
    f32,
    *const Tc,
    *mut u8,
    i64,
    i64,
);

/// Runs the host body block by block (128 OS threads each); returns `y` and the MMAs issued.
fn run_on_cpu(
    spec: &Fp4,
    blob: &[u8],
    x: &[f32],
    tamax: f32,
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f32>, usize) {
    Target::initialize_native(&InitializationConfig::default()).unwrap();
    let ctx = Context::create();
    let module = ctx.create_module("tcgen05_host");
    tcgen05::build(&ctx, &module, spec, Entries::Host).unwrap();
    module.verify().unwrap();
    let ee = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    for (name, f) in [
        (tcgen05::BAR_EMULATOR, tc_bar as *const () as usize),
        (tcgen05::ALLOC_EMULATOR, tc_alloc as *const () as usize),
        (tcgen05::ST_EMULATOR, tc_st as *const () as usize),
        (tcgen05::LD_EMULATOR, tc_ld as *const () as usize),
        (tcgen05::MMA_EMULATOR, tc_mma as *const () as usize),
    ] {
        ee.add_global_mapping(&module.get_function(name).unwrap(), f);
    }
    let post = spec.post(blob, n, k).unwrap();
    let scales = spec.scales_offset(n, k);
    let mut y = vec![f32::NAN; m * n];
    let tile = tcgen05::TILE as usize;
    let blocks = m.div_ceil(tile) * n.div_ceil(tile);
    // SAFETY: the signature tcgen05::build gives the host entry; buffers as the contract asks.
    let kernel: Kernel = unsafe {
        std::mem::transmute::<usize, Kernel>(
            ee.get_function_address(&format!("{}_at", tcgen05::ENTRY))
                .unwrap(),
        )
    };
    let y_addr = y.as_mut_ptr() as usize;
    let mut mmas = 0;
    for b in 0..blocks {
        let tc = Tc::new(tcgen05::SMEM as usize);
        let smem = tc.smem() as usize;
        std::thread::scope(|s| {
            for t in 0..tcgen05::BLOCK as usize {
                let (tc, x, blob) = (&tc, x, blob);
                s.spawn(move || unsafe {
                    kernel(
                        blob.as_ptr(),
                        blob[scales..].as_ptr(),
                        std::ptr::null(),
                        x.as_ptr(),
                        y_addr as *mut f32,
                        k as i64,
                        n as i64,
                        m as i64,
                        post,
                        tamax,
                        tc,
                        smem as *mut u8,
                        b as i64,
                        t as i64,
                    )
                });
            }
        });
        mmas += tc.mmas();
    }
    (y, mmas)
}

#[test]
fn the_kernel_matches_quantized_activations_times_dequantized_weights() {
    // Partial tiles in M and N (two tiles each), K of 3 steps.
    let (m, n, k) = (136, 144, 192);
    for name in ["nvfp4", "mxfp4"] {
        let f = fmt(name);
        let spec = Fp4::classify(&f, &f).unwrap();
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

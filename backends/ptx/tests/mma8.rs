//! The 8-bit tensor-core GEMM of `qc_backend_ptx::mma8`: its PTX assembles with ptxas (FP8 for every
//! target from sm_89, int8 for all) and issues `mma.sync` m16n8k32 with FP8 or s8 operands; and its
//! body, compiled for this CPU with each MMA a call of the emulator of tests/mma_emu, run warp by
//! warp, matches the product of qc_quant's quantized-and-dequantized activations with its
//! dequantized weights, for FP8 and 4-bit weights with both FP8 activation formats, and int8 and
//! int4 weights with int8 activations.

use inkwell::context::Context;
use qc_backend_ptx::mma4::Entries;
use qc_backend_ptx::mma8::{self, Mma8};
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::GpuTarget;

mod common;
use common::fmt;
use common::Case8;
mod mma_emu;
use mma_emu::{
    emulate, fp8_table, host_entry, jit, launch_threads, run_warp_gemm, GemmArgs, Shape, WarpGemm,
};

/// Runs the kernel on the CPU for `y[m, n]`, every warp of the launch.
#[allow(clippy::too_many_arguments)]
fn run_on_cpu(
    spec: &Mma8,
    blob: &[u8],
    x: &[f32],
    sa: f32,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let ctx = Context::create();
    let ee = jit(
        &ctx,
        "mma8_host",
        |m| mma8::build(&ctx, m, spec, Entries::Host).unwrap(),
        &[(mma8::EMULATOR, emulate as *const () as usize)],
    );
    assert_eq!(spec.blob_len(n, k), blob.len());
    let tables = spec.tables().unwrap();
    let post = spec.post(blob, n, k).unwrap();
    let scales = spec.scales_offset(n, k);
    let mut y = vec![f32::NAN; m * n];
    let threads = launch_threads(m.div_ceil(32) * n.div_ceil(32), mma8::BLOCK);
    let shape = if spec.is_int8() {
        Shape::S8
    } else {
        Shape::Fp8 {
            a: fp8_table(spec.act_e5m2()),
            b: fp8_table(spec.weight_e5m2()),
        }
    };
    let args = GemmArgs::new(blob, scales, &tables, x, &mut y, (m, n, k), post, sa);
    // SAFETY: the signature mma8::build gives the host entry; buffers as the contract asks.
    unsafe {
        let kernel = WarpGemm::Scaled(host_entry(&ee, mma8::ENTRY));
        run_warp_gemm(kernel, shape, threads, args)
    };
    y
}

#[test]
fn the_kernel_matches_quantized_activations_times_dequantized_weights() {
    // FP8 activations with FP8 or 4-bit weights (NVFP4 and NVINT4: groups of 16, two MMAs a
    // step); int8 activations with int8 or int4 weights.
    let weights = [
        "fp8_e4m3",
        "fp8_e5m2",
        "fp8_e4m3_channel",
        "int4_g32",
        "int4_g128",
        "int4_channel",
        "mxfp4",
        "nvfp4",
        "nvint4",
    ];
    let int_weights = [
        "int8",
        "int8_channel",
        "int8_g128",
        "int4_g32",
        "int4_g128",
        "int4_channel",
    ];
    for (m, n, k) in [(40, 24, 256), (16, 40, 128)] {
        for act in ["fp8_e4m3", "fp8_e5m2", "int8"] {
            let list: &[&str] = if act == "int8" {
                &int_weights
            } else {
                &weights
            };
            for &wname in list {
                if wname.ends_with("g128") && k % 128 != 0 {
                    continue;
                }
                let (wf, af) = (fmt(wname), fmt(act));
                let spec = Mma8::classify(&wf, &af).unwrap_or_else(|e| panic!("{wname}: {e}"));
                spec.supports(k as u64).unwrap();
                let case = Case8::new(&wf, &af, m, n, k);
                let y = run_on_cpu(&spec, &case.blob, &case.x, case.sa, m, n, k);
                case.check(&y, &format!("{wname} x {act} m={m} n={n} k={k}"));
            }
        }
    }
}

#[test]
fn formats_the_kernel_cannot_read_are_refused() {
    let a = fmt("fp8_e4m3");
    for w in ["mxfp8", "int8_channel"] {
        assert!(Mma8::classify(&fmt(w), &a).is_err(), "{w}");
    }
    let i8a = fmt("int8");
    for w in ["fp8_e4m3", "mxfp4", "nvint4"] {
        assert!(Mma8::classify(&fmt(w), &i8a).is_err(), "{w} x int8");
    }
    assert!(Mma8::classify(&fmt("int8_channel"), &i8a)
        .unwrap()
        .is_int8());
    let s = Mma8::classify(&fmt("int4_g128"), &a).unwrap();
    assert!(s.supports(192).is_err());
    assert!(s.supports(256).is_ok());
    assert!(mma8::emit_ptx(GpuTarget::Sm80, &s).is_err());
}

#[test]
fn ptxas_accepts_the_kernel_for_every_fp8_target() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    // The s8 MMA on every target, sm_80 included.
    let s8 = Mma8::classify(&fmt("int4_g32"), &fmt("int8")).unwrap();
    for t in GpuTarget::ALL {
        let ptx = mma8::emit_ptx(t, &s8).unwrap();
        assert!(
            ptx.contains("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"),
            "{t}"
        );
        assert!(!ptx.contains(".local"), "{t}: local memory");
        assemble(&ptxas, &ptx, t).unwrap_or_else(|e| panic!("int8 {t}: {e}"));
    }
    for (w, a, mma) in [
        ("fp8_e4m3", "fp8_e4m3", "e4m3.e4m3"),
        ("fp8_e5m2", "fp8_e4m3", "e4m3.e5m2"),
        ("mxfp4", "fp8_e5m2", "e5m2.e4m3"),
        ("int4_channel", "fp8_e4m3", "e4m3.e4m3"),
    ] {
        let spec = Mma8::classify(&fmt(w), &fmt(a)).unwrap();
        for t in &GpuTarget::ALL[1..] {
            let ptx = mma8::emit_ptx(*t, &spec).unwrap();
            assert!(ptx.contains(&format!(".entry {}(", mma8::ENTRY)), "{w} {t}");
            assert!(
                ptx.contains(&format!("mma.sync.aligned.m16n8k32.row.col.f32.{mma}.f32")),
                "{w} x {a} {t}"
            );
            assert!(!ptx.contains(".local"), "{w} {t}: local memory");
            let cubin = assemble(&ptxas, &ptx, *t).unwrap_or_else(|e| panic!("{w} {t}: {e}"));
            assert_eq!(&cubin[..4], b"\x7fELF");
        }
    }
}

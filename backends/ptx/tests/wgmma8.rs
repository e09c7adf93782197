//! The Hopper warpgroup FP8 GEMM of `qc_backend_ptx::wgmma8`: its PTX assembles with ptxas for
//! sm_90a and issues `wgmma.mma_async` m64n64k32; and its body, compiled for this CPU with
//! `bar.sync` and the warpgroup MMA as calls of the emulators of tests/mma_emu (shared memory a host
//! buffer read through the kernel's descriptors), run block by block with 128 OS threads, matches
//! the product of qc_quant's quantized-and-dequantized activations and dequantized weights.

use inkwell::context::Context;
use qc_backend_ptx::mma4::Entries;
use qc_backend_ptx::mma8::Mma8;
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::wgmma8;
use qc_backend_ptx::GpuTarget;

mod common;
use common::fmt;
use common::Case8;
mod mma_emu;
use mma_emu::{fp8_table, host_entry, jit, run_block_gemm, wgmma8_emulators, Block, GemmArgs};

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
        "wgmma8_host",
        |m| wgmma8::build(&ctx, m, spec, Entries::Host).unwrap(),
        &wgmma8_emulators(),
    );
    assert_eq!(spec.blob_len(n, k), blob.len());
    let tables = spec.tables().unwrap();
    let post = spec.post(blob, n, k).unwrap();
    let scales = spec.scales_offset(n, k);
    let mut y = vec![f32::NAN; m * n];
    let tile = wgmma8::TILE as usize;
    let blocks = m.div_ceil(tile) * n.div_ceil(tile);
    let args = GemmArgs::new(blob, scales, &tables, x, &mut y, (m, n, k), post, sa);
    let new_block = || {
        Block::new(
            fp8_table(spec.act_e5m2()),
            fp8_table(spec.weight_e5m2()),
            wgmma8::SMEM as usize,
        )
    };
    // SAFETY: the signature wgmma8::build gives the host entry; buffers as the contract asks.
    unsafe {
        let kernel = host_entry(&ee, wgmma8::ENTRY);
        run_block_gemm(kernel, blocks, wgmma8::BLOCK as usize, new_block, args);
    }
    y
}

#[test]
fn the_kernel_matches_quantized_activations_times_dequantized_weights() {
    // A partial tile in both M and N (and a second block row), K of 4 steps.
    let (m, n, k) = (72, 80, 128);
    for (wname, act) in [
        ("fp8_e4m3", "fp8_e4m3"),
        ("fp8_e5m2", "fp8_e4m3"),
        ("fp8_e4m3_channel", "fp8_e5m2"),
        ("int4_g32", "fp8_e4m3"),
        ("int4_channel", "fp8_e4m3"),
        ("mxfp4", "fp8_e5m2"),
        ("nvfp4", "fp8_e4m3"),
        ("nvint4", "fp8_e5m2"),
    ] {
        let (wf, af) = (fmt(wname), fmt(act));
        let spec = Mma8::classify(&wf, &af).unwrap();
        let case = Case8::new(&wf, &af, m, n, k);
        let y = run_on_cpu(&spec, &case.blob, &case.x, case.sa, m, n, k);
        case.check(&y, &format!("{wname} x {act}"));
    }
}

#[test]
fn ptxas_accepts_the_kernel_for_sm_90a() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    for (w, a, kind) in [
        ("fp8_e4m3", "fp8_e4m3", "e4m3.e4m3"),
        ("fp8_e5m2", "fp8_e4m3", "e4m3.e5m2"),
        ("mxfp4", "fp8_e5m2", "e5m2.e4m3"),
        ("int4_channel", "fp8_e4m3", "e4m3.e4m3"),
    ] {
        let spec = Mma8::classify(&fmt(w), &fmt(a)).unwrap();
        let ptx = wgmma8::emit_ptx(&spec).unwrap();
        assert!(ptx.contains(&format!(".entry {}(", wgmma8::ENTRY)), "{w}");
        assert!(
            ptx.contains(&format!(
                "wgmma.mma_async.sync.aligned.m64n64k32.f32.{kind}"
            )),
            "{w} x {a}"
        );
        assert!(ptx.contains("wgmma.fence.sync.aligned"), "{w}");
        assert!(ptx.contains("wgmma.wait_group.sync.aligned"), "{w}");
        assert!(
            ptx.contains(".shared .align 128 .b8 qc_wgmma8_smem[2048]"),
            "{w}\n{ptx}"
        );
        let cubin = assemble(&ptxas, &ptx, GpuTarget::Sm90a).unwrap_or_else(|e| panic!("{w}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF");
    }
}

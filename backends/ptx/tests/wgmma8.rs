//! The Hopper warpgroup FP8 GEMM of `qc_backend_ptx::wgmma8`: its PTX assembles with ptxas for
//! sm_90a and issues `wgmma.mma_async` m64n64k32; and its body, compiled for this CPU with
//! `bar.sync` and the warpgroup MMA as calls of the emulators of tests/mma_emu (shared memory a host
//! buffer read through the kernel's descriptors), run block by block with 128 OS threads, matches
//! the product of qc_quant's quantized-and-dequantized activations and dequantized weights.

use std::sync::OnceLock;

use inkwell::context::Context;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use qc_backend_ptx::mma4::Entries;
use qc_backend_ptx::mma8::Mma8;
use qc_backend_ptx::ptxas::{assemble, find_ptxas};
use qc_backend_ptx::wgmma8;
use qc_backend_ptx::GpuTarget;
use qc_ir::quant::{named_format, Encoding, QuantType};
use qc_quant::{quantize, Codec, QuantizeOptions};

mod common;
mod mma_emu;
use common::noise;
use mma_emu::{block_barrier, block_mma, Block};

fn fmt(name: &str) -> QuantType {
    named_format(name)
        .unwrap_or_else(|| panic!("no format {name}"))
        .ty
        .clone()
}

fn table(e5m2: bool) -> &'static [f32] {
    static E4M3: OnceLock<Vec<f32>> = OnceLock::new();
    static E5M2: OnceLock<Vec<f32>> = OnceLock::new();
    let (cell, e) = if e5m2 {
        (&E5M2, Encoding::E5M2)
    } else {
        (&E4M3, Encoding::E4M3FN)
    };
    cell.get_or_init(|| Codec::new(e).unwrap().table().to_vec())
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
    *const Block,
    *mut u8,
    i64,
    i64,
);

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
    Target::initialize_native(&InitializationConfig::default()).unwrap();
    let ctx = Context::create();
    let module = ctx.create_module("wgmma8_host");
    wgmma8::build(&ctx, &module, spec, Entries::Host).unwrap();
    module.verify().unwrap();
    let ee = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    for (name, f) in [
        (wgmma8::BAR_EMULATOR, block_barrier as *const () as usize),
        (wgmma8::MMA_EMULATOR, block_mma as *const () as usize),
    ] {
        ee.add_global_mapping(&module.get_function(name).unwrap(), f);
    }
    assert_eq!(spec.blob_len(n, k), blob.len());
    let tables = spec.tables().unwrap();
    let post = spec.post(blob, n, k).unwrap();
    let scales = spec.scales_offset(n, k);
    let mut y = vec![f32::NAN; m * n];
    let tile = wgmma8::TILE as usize;
    let blocks = m.div_ceil(tile) * n.div_ceil(tile);
    // SAFETY: the signature wgmma8::build gives the host entry; buffers as the contract asks.
    // (More parameters than inkwell's typed lookup takes: through the address.)
    let kernel: Kernel = unsafe {
        std::mem::transmute::<usize, Kernel>(
            ee.get_function_address(&format!("{}_at", wgmma8::ENTRY))
                .unwrap(),
        )
    };
    let y_addr = y.as_mut_ptr() as usize;
    for b in 0..blocks {
        let block = Block::new(
            table(spec.act_e5m2()),
            table(spec.weight_e5m2()),
            wgmma8::SMEM as usize,
        );
        let smem = block.smem() as usize;
        std::thread::scope(|s| {
            for t in 0..wgmma8::BLOCK as usize {
                let (block, tables, x, blob) = (&block, &tables, x, blob);
                s.spawn(move || unsafe {
                    kernel(
                        blob.as_ptr(),
                        blob[scales..].as_ptr(),
                        tables.as_ptr(),
                        x.as_ptr(),
                        y_addr as *mut f32,
                        k as i64,
                        n as i64,
                        m as i64,
                        post,
                        sa,
                        block,
                        smem as *mut u8,
                        b as i64,
                        t as i64,
                    )
                });
            }
        });
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
    ] {
        let (wf, af) = (fmt(wname), fmt(act));
        let spec = Mma8::classify(&wf, &af).unwrap();
        let w: Vec<f32> = noise(n * k, 7)
            .iter()
            .enumerate()
            .map(|(i, v)| v * 0.05 * (1 + (i / k) % 5) as f32)
            .collect();
        let q = quantize(&w, &[n, k], &wf, &QuantizeOptions::default()).unwrap();
        let blob = qc_quant::blob::to_blob(&q).unwrap();
        let wd = qc_quant::dequantize(&q).unwrap();
        let x: Vec<f32> = noise(m * k, 11)
            .iter()
            .enumerate()
            .map(|(i, v)| v * [1.0, 30.0, 0.01][i % 3])
            .collect();
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let sa = qc_backend_ptx::fquant::FakeQuantPt::classify(&af)
            .unwrap()
            .scale(amax);
        let opts = QuantizeOptions {
            tensor_amax: Some(amax),
            ..Default::default()
        };
        let xd = qc_quant::dequantize(&quantize(&x, &[m, k], &af, &opts).unwrap()).unwrap();
        let y = run_on_cpu(&spec, &blob, &x, sa, m, n, k);
        for (i, &got) in y.iter().enumerate() {
            let (mm, row) = (i / n, i % n);
            let terms = (0..k).map(|j| wd[row * k + j] as f64 * xd[mm * k + j] as f64);
            let want: f64 = terms.clone().sum();
            let mag: f64 = terms.map(f64::abs).sum();
            let err = (got as f64 - want).abs() / mag.max(1e-30);
            assert!(
                err <= 1e-6,
                "{wname} x {act}: y[{mm}][{row}] = {got}, reference {want} (err {err:e})"
            );
        }
    }
}

#[test]
fn ptxas_accepts_the_kernel_for_sm_90a() {
    let ptxas = match find_ptxas() {
        Ok(p) => p,
        Err(e) if std::env::var("QC_ALLOW_NO_PTXAS").as_deref() == Ok("1") => {
            eprintln!("note: QC_ALLOW_NO_PTXAS=1 and {e}; ptxas checks skipped");
            return;
        }
        Err(e) => panic!("{e}\n(set QC_ALLOW_NO_PTXAS=1 to skip the ptxas checks)"),
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

//! The fake-quantization kernels of `qc_backend_ptx::fquant`: their bodies, compiled for this CPU and
//! run thread by thread, are bit-identical to qc_quant's quantize-then-dequantize: the per-tensor
//! kernel for int8, fp8 e4m3 and fp8 e5m2 (ties, saturation, subnormals, signed zeros, random
//! values), the block kernel for mxfp8 (e4m3, e5m2), mxfp4 and nvfp4 (blocks of every magnitude,
//! zero blocks, a static maximum below a block's); their PTX assembles with ptxas for every target.

use inkwell::context::Context;
use inkwell::module::Module;
use qc_backend_ptx::fquant::{self, FakeQuantBlock, FakeQuantPt};
use qc_backend_ptx::gemv4::Entries;
use qc_backend_ptx::ptxas::assemble;
use qc_backend_ptx::GpuTarget;
use qc_ir::quant::named_format;
use qc_quant::QuantizeOptions;

mod common;
use common::noise;
mod mma_emu;
use mma_emu::{host_entry, jit};

type At = unsafe extern "C" fn(*const f32, *mut f32, i64, f32, i64);

/// Runs the host entry `entry` (an [`At`]) of the module that `build` fills on `x` with the scalar
/// `s`, threads 0 to `threads` (the last past the range: it checks the guard); the `y` it writes.
fn run_on_cpu(
    build: impl for<'c> FnOnce(&'c Context, &Module<'c>),
    entry: &str,
    x: &[f32],
    s: f32,
    threads: usize,
) -> Vec<f32> {
    let ctx = Context::create();
    let ee = jit(&ctx, entry, |m| build(&ctx, m), &[]);
    let mut y = vec![f32::NAN; x.len()];
    // SAFETY: the signature fquant's builders give the host entries; x and y hold n elements.
    unsafe {
        let f: At = host_entry(&ee, entry);
        for t in 0..=threads {
            f(x.as_ptr(), y.as_mut_ptr(), x.len() as i64, s, t as i64);
        }
    }
    y
}

#[test]
fn matches_qc_quant_bit_for_bit() {
    for (name, amax) in [("int8", 3.0f32), ("fp8_e4m3", 2.0), ("fp8_e5m2", 5.0)] {
        let fmt = named_format(name).unwrap().ty.clone();
        let spec = FakeQuantPt::classify(&fmt).unwrap_or_else(|| panic!("{name}"));
        let s = spec.scale(amax);
        // Values at and around the grid's ties, beyond amax, tiny, zeros of both signs, random.
        let mut x: Vec<f32> = vec![
            0.0,
            -0.0,
            amax,
            -amax,
            2.0 * amax,
            -7.0 * amax,
            1e-30,
            -1e-30,
        ];
        for k in -300..300 {
            let q = k as f32 * 0.5;
            x.push(q * s);
            x.push((q + 0.25) * s);
            x.push(f32::from_bits((q * s).to_bits() + 1));
        }
        for e in -40..4 {
            x.push(2f32.powi(e) * s * 1.5);
            x.push(-(2f32.powi(e)) * s * 1.25);
        }
        x.extend(noise(2000, 3).iter().map(|v| v * 1.5 * amax));
        let opts = QuantizeOptions {
            tensor_amax: Some(amax),
            ..Default::default()
        };
        let q = qc_quant::quantize(&x, &[x.len()], &fmt, &opts).unwrap();
        let want = qc_quant::dequantize(&q).unwrap();

        let y = run_on_cpu(
            |c, m| fquant::build(c, m, &spec, Entries::Host).unwrap(),
            fquant::ENTRY,
            &x,
            s,
            x.len(),
        );
        for (i, (a, b)) in y.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name}: x = {:e}: {a:e} vs qc_quant {b:e}",
                x[i]
            );
        }
    }
}

#[test]
fn the_block_kernel_matches_qc_quant_bit_for_bit() {
    for name in ["mxfp8", "mxfp8_e5m2", "mxfp4", "nvfp4"] {
        let fmt = named_format(name).unwrap().ty.clone();
        let spec = FakeQuantBlock::classify(&fmt).unwrap_or_else(|| panic!("{name}"));
        let bs = spec.block();
        // Blocks of magnitudes from 2^-140 to 2^20, a zero block, a block with signed zeros.
        let mut x: Vec<f32> = Vec::new();
        for (j, e) in (-140..=20).step_by(5).enumerate() {
            let v = noise(bs, 10 + j as u64);
            x.extend(v.iter().map(|u| u * 2f32.powi(e)));
        }
        x.extend(vec![0.0; bs]);
        x.extend((0..bs).map(|i| if i % 2 == 0 { -0.0 } else { 0.25 }));
        x.extend(noise(40 * bs, 5).iter().map(|v| v * 3.0));
        let data_amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        // The static maximum: the data's, and one below it (NVFP4 blocks beyond it saturate).
        for amax in [data_amax, 2.0] {
            let opts = QuantizeOptions {
                tensor_amax: Some(amax),
                ..Default::default()
            };
            let q = qc_quant::quantize(&x, &[x.len() / bs, bs], &fmt, &opts).unwrap();
            let want = qc_quant::dequantize(&q).unwrap();
            // One thread per block.
            let y = run_on_cpu(
                |c, m| fquant::build_block(c, m, &spec, Entries::Host).unwrap(),
                fquant::BLOCK_ENTRY,
                &x,
                amax,
                x.len() / bs,
            );
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{name} (amax {amax}): x[{i}] = {:e}: {a:e} vs qc_quant {b:e}",
                    x[i]
                );
            }
        }
    }
}

#[test]
fn other_formats_are_refused() {
    for name in ["nvfp4_torchao", "int8", "mxfp4_rceil", "mxint8", "int4_g32"] {
        assert!(
            FakeQuantBlock::classify(&named_format(name).unwrap().ty).is_none(),
            "{name}"
        );
    }
    for name in ["nvfp4", "mxfp8", "int8_channel", "int4_g32"] {
        assert!(
            FakeQuantPt::classify(&named_format(name).unwrap().ty).is_none(),
            "{name}"
        );
    }
}

#[test]
fn ptxas_accepts_the_kernel_for_every_target() {
    let Some(ptxas) = common::ptxas_or_skip() else {
        return;
    };
    for name in ["int8", "fp8_e4m3"] {
        let spec = FakeQuantPt::classify(&named_format(name).unwrap().ty).unwrap();
        for t in GpuTarget::ALL {
            let ptx = fquant::emit_ptx(t, &spec).unwrap();
            assert!(
                ptx.contains(&format!(".entry {}(", fquant::ENTRY)),
                "{name} {t}"
            );
            assert!(
                !ptx.contains(".extern"),
                "{name} {t}: calls a library:\n{ptx}"
            );
            assemble(&ptxas, &ptx, t).unwrap_or_else(|e| panic!("{name} {t}: {e}"));
        }
    }
    for name in ["mxfp4", "nvfp4"] {
        let spec = FakeQuantBlock::classify(&named_format(name).unwrap().ty).unwrap();
        for t in GpuTarget::ALL {
            let ptx = fquant::emit_block_ptx(t, &spec).unwrap();
            assert!(
                ptx.contains(&format!(".entry {}(", fquant::BLOCK_ENTRY)),
                "{name} {t}"
            );
            assert!(!ptx.contains(".extern"), "{name} {t}: calls a library");
            assemble(&ptxas, &ptx, t).unwrap_or_else(|e| panic!("{name} {t}: {e}"));
        }
    }
}

//! The fp8-activation kernels (`qc_backend_llvm::act8::fp8`) against an f64 reference built from
//! qc_quant's own quantization of the activations and decoding of the weights, on the BF16 kernel
//! (where the host has AVX512-BF16) and the FMA fallback, for every target the host runs; activation
//! values bit-exact; results bit-identical across row splits, threads, M and the two kernels.

#[allow(dead_code)]
mod common;

use common::{activations, bits, blob_of, group_of, host_targets, pool};
use qc_backend_llvm::act8::fp8::{
    has_kernel, reference, F8Act, F8Isa, F8Matrix, Fp8Library, SUPPORTED_NAMED_FORMATS,
};
use qc_backend_llvm::gemv::named;
use qc_ir::quant::{Encoding, Packing, QuantType, ScaleRule, ScaleType, Scheme};

fn formats() -> Vec<(&'static str, QuantType)> {
    let mut v: Vec<(&'static str, QuantType)> = SUPPORTED_NAMED_FORMATS
        .iter()
        .map(|&n| (n, named(n).unwrap().clone()))
        .collect();
    let g = |size| Scheme::Group { size, axis: -1 };
    let mut e2m1_g64_f16 = QuantType::new(Encoding::E2M1, g(64), ScaleType::F16, ScaleRule::Amax);
    e2m1_g64_f16.pack = Packing::LoFirst;
    let int8_g16 = QuantType::new(Encoding::I8, g(16), ScaleType::BF16, ScaleRule::Amax);
    v.extend([("e2m1_g64_f16", e2m1_g64_f16), ("int8_g16_bf16", int8_g16)]);
    v
}

/// K values: one group, several, odd where the format allows.
fn ks(fmt: &QuantType) -> Vec<usize> {
    let g = group_of(fmt);
    if g > 1 {
        vec![g, 3 * g, 17 * g]
    } else if fmt.elem.bits() == 4 {
        vec![2, 62, 130, 1000]
    } else {
        vec![1, 63, 65, 777]
    }
}

fn libraries() -> &'static [Fp8Library] {
    static LIBS: std::sync::OnceLock<Vec<Fp8Library>> = std::sync::OnceLock::new();
    LIBS.get_or_init(|| {
        host_targets()
            .into_iter()
            .map(|t| Fp8Library::build(t).unwrap())
            .collect()
    })
}

fn acts() -> Vec<(&'static str, QuantType, F8Act)> {
    ["fp8_e4m3", "fp8_e5m2"]
        .iter()
        .map(|&n| {
            let a = named(n).unwrap().clone();
            let f = F8Act::from_quant_type(&a).unwrap();
            (n, a, f)
        })
        .collect()
}

#[test]
fn every_format_matches_the_f64_reference_on_both_kernels() {
    let libs = libraries();
    assert!(!libs.is_empty());
    let mut worst = 0f64;
    for (aname, afmt, act) in acts() {
        for (name, fmt) in formats() {
            assert!(has_kernel(&fmt), "{name}");
            for k in ks(&fmt) {
                for m in [1usize, 5, 20] {
                    let n = 37;
                    let blob = blob_of(&fmt, n, k, k as u64 * 31 + 7);
                    let x = activations(m * k, k as u64 + m as u64);
                    // A static maximum below the data's, so that some values saturate.
                    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs())) * 0.8;
                    let (r, vals) = reference(&fmt, &afmt, n, k, &blob, &x, amax).unwrap();
                    let w = F8Matrix::new(&fmt, n, k, &blob).unwrap();
                    let rmax = r.iter().fold(0f64, |a, v| a.max(v.abs()));
                    for lib in libs {
                        let p = lib.prepare(&act, k, &x, act.act_scale(amax)).unwrap();
                        for i in 0..m {
                            assert_eq!(
                                bits(&p.values(i)),
                                bits(&vals[i * k..(i + 1) * k]),
                                "{aname}: activation values of row {i} differ from qc_quant's"
                            );
                        }
                        for isa in lib.isas() {
                            let mut y = vec![f32::NAN; m * n];
                            lib.matmul_rows(isa, &w, &p, 0..n, &mut y, None).unwrap();
                            let err = y
                                .iter()
                                .zip(&r)
                                .map(|(&a, &b)| (a as f64 - b).abs())
                                .fold(0f64, f64::max)
                                / rmax.max(f64::MIN_POSITIVE);
                            assert!(
                                err <= 1e-5,
                                "{aname} x {name} {isa:?} K={k} M={m}: max error {err:e} of max \
                                 |y| {rmax:e}"
                            );
                            worst = worst.max(err);
                        }
                    }
                }
            }
        }
    }
    eprintln!("worst error / max |y|: {worst:e}");
}

#[test]
fn results_are_bit_identical_across_row_splits_threads_m_and_kernels() {
    let (_, _, act) = acts().remove(0);
    for lib in libraries() {
        for (name, fmt) in formats() {
            let k = *ks(&fmt).last().unwrap();
            let (n, m) = (203, 20);
            let blob = blob_of(&fmt, n, k, 5);
            let x = activations(m * k, 9);
            let s = act.act_scale(1.5);
            let w = F8Matrix::new(&fmt, n, k, &blob).unwrap();
            let p = lib.prepare(&act, k, &x, s).unwrap();
            let mut first: Option<(F8Isa, Vec<u32>)> = None;
            for isa in lib.isas() {
                let mut y = vec![0f32; m * n];
                lib.matmul_rows(isa, &w, &p, 0..n, &mut y, None).unwrap();
                let want = bits(&y);
                for threads in [2, 3] {
                    let mut yt = vec![0f32; m * n];
                    lib.matmul_rows(isa, &w, &p, 0..n, &mut yt, Some(&pool(threads)))
                        .unwrap();
                    assert_eq!(bits(&yt), want, "{name} {isa:?}: {threads} threads");
                }
                let mut start = 0;
                for len in [1usize, 7, 64, 3, 100, 28] {
                    let rows = start..(start + len).min(n);
                    let mut yr = vec![0f32; m * rows.len()];
                    lib.matmul_rows(isa, &w, &p, rows.clone(), &mut yr, None)
                        .unwrap();
                    for i in 0..m {
                        assert_eq!(
                            bits(&yr[i * rows.len()..(i + 1) * rows.len()]),
                            want[i * n + rows.start..i * n + rows.end],
                            "{name} {isa:?}: rows {rows:?}"
                        );
                    }
                    start = rows.end;
                }
                assert_eq!(start, n);
                for i in [0, 4, 19] {
                    let p1 = lib.prepare(&act, k, &x[i * k..(i + 1) * k], s).unwrap();
                    let mut y1 = vec![0f32; n];
                    lib.matmul_rows(isa, &w, &p1, 0..n, &mut y1, None).unwrap();
                    assert_eq!(bits(&y1), want[i * n..(i + 1) * n], "{name} {isa:?}: M = 1");
                }
                match &first {
                    Some((other, b)) => {
                        assert_eq!(&want, b, "{name}: {isa:?} differs from {other:?}")
                    }
                    None => first = Some((isa, want)),
                }
            }
        }
    }
}

#[test]
fn the_bf16_kernel_runs_where_the_host_has_avx512_bf16() {
    for lib in libraries() {
        let isas = lib.isas();
        assert!(isas.contains(&F8Isa::Fma));
        assert_eq!(
            isas.contains(&F8Isa::Bf16),
            std::is_x86_feature_detected!("avx512bf16")
        );
    }
}

#[test]
fn formats_without_a_kernel_are_refused() {
    for n in ["mxfp6", "int8_g128_f32_odd"] {
        if let Ok(f) = named(n) {
            assert!(!has_kernel(f), "{n}");
        }
    }
    // fp8 activations only: int8 activations have no fp8 classification.
    assert!(F8Act::from_quant_type(named("int8").unwrap()).is_none());
    assert!(F8Act::from_quant_type(named("mxfp8").unwrap()).is_none());
}

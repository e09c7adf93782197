//! The int8-activation kernels (`qc_backend_llvm::act8`) against an f64 reference built from
//! qc_quant's own quantization of the activations and decoding of the weights, on every instruction set
//! the host runs; activation codes bit-exact; results bit-identical across row splits, threads, M and
//! the two AVX-512 kernels, and between the GEMV and GEMM kernels where the sums are exact integers.

#[allow(dead_code)]
mod common;

use common::{activations, bits, blob_of, group_of, host_targets, pool};
use qc_backend_llvm::act8::{
    act_scale, has_kernel, reference, A8Isa, A8Matrix, Act8Library, GEMM_MIN_ROWS,
    SUPPORTED_NAMED_FORMATS,
};
use qc_backend_llvm::gemv::named;
use qc_backend_llvm::CpuTarget;
use qc_ir::quant::{Encoding, Packing, QuantType, ScaleRule, ScaleType, Scheme};

fn formats() -> Vec<(&'static str, QuantType)> {
    let mut v: Vec<(&'static str, QuantType)> = SUPPORTED_NAMED_FORMATS
        .iter()
        .map(|&n| (n, named(n).unwrap().clone()))
        .collect();
    let g = |size| Scheme::Group { size, axis: -1 };
    let mut int4_g64_bf16 = QuantType::new(Encoding::I4, g(64), ScaleType::BF16, ScaleRule::Amax);
    int4_g64_bf16.pack = Packing::LoFirst;
    let mut u4_g32 = QuantType::new(Encoding::U4, g(32), ScaleType::F32, ScaleRule::Amax);
    u4_g32.pack = Packing::LoFirst;
    let int8_row_f16 = QuantType::new(
        Encoding::I8,
        Scheme::PerChannel { axis: 0 },
        ScaleType::F16,
        ScaleRule::Amax,
    );
    let int8_g16 = QuantType::new(Encoding::I8, g(16), ScaleType::F32, ScaleRule::Amax);
    let mut e2m1_g64_f16 = QuantType::new(Encoding::E2M1, g(64), ScaleType::F16, ScaleRule::Amax);
    e2m1_g64_f16.pack = Packing::LoFirst;
    v.extend([
        ("int4_g64_bf16", int4_g64_bf16),
        ("u4_g32_f32", u4_g32),
        ("int8_row_f16", int8_row_f16),
        ("int8_g16_f32", int8_g16),
        ("e2m1_g64_f16", e2m1_g64_f16),
    ]);
    v
}

/// K values for `fmt`: one superblock or less, several with a partial last one, odd where allowed.
fn ks(fmt: &QuantType) -> Vec<usize> {
    let g = group_of(fmt);
    if g > 1 {
        vec![g, 3 * g, 17 * g, 40 * g + g]
    } else if fmt.elem.bits() == 4 {
        vec![2, 62, 130, 1000]
    } else {
        vec![1, 63, 65, 777]
    }
}

/// The libraries of the targets the host runs, built once for all tests.
fn libraries() -> &'static [Act8Library] {
    static LIBS: std::sync::OnceLock<Vec<Act8Library>> = std::sync::OnceLock::new();
    LIBS.get_or_init(|| {
        host_targets()
            .into_iter()
            .map(|t| Act8Library::build(t).unwrap())
            .collect()
    })
}

/// Checks every format on every shape and instruction set; returns the worst error seen.
#[test]
fn every_format_matches_the_f64_reference_on_every_shape_and_instruction_set() {
    const { assert!(GEMM_MIN_ROWS <= 43, "the tests must reach the GEMM kernel") };
    let libs = libraries();
    let mut worst = 0f64;
    for (name, fmt) in formats() {
        assert!(has_kernel(&fmt), "{name}");
        for k in ks(&fmt) {
            for m in [1usize, 5, 20, 43] {
                let n = 37;
                let blob = blob_of(&fmt, n, k, k as u64 * 31 + 7);
                let x = activations(m * k, k as u64 + m as u64);
                // A static maximum below the data's, so that some codes saturate.
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs())) * 0.8;
                let (r, codes) = reference(&fmt, n, k, &blob, &x, amax).unwrap();
                let w = A8Matrix::new(&fmt, n, k, &blob).unwrap();
                let rmax = r.iter().fold(0f64, |a, v| a.max(v.abs()));
                for lib in libs {
                    for isa in lib.isas() {
                        let p = lib.prepare(isa, &w, &x, act_scale(amax)).unwrap();
                        for i in 0..m {
                            assert_eq!(
                                lib.codes(&p, i),
                                codes[i * k..(i + 1) * k],
                                "{name} {isa:?}: activation codes of row {i} differ from qc_quant's"
                            );
                        }
                        let mut y = vec![f32::NAN; m * n];
                        lib.matmul(&w, &p, &mut y, None).unwrap();
                        let err = y
                            .iter()
                            .zip(&r)
                            .map(|(&a, &b)| (a as f64 - b).abs())
                            .fold(0f64, f64::max)
                            / rmax.max(f64::MIN_POSITIVE);
                        assert!(
                            err <= 1e-5,
                            "{name} {isa:?} K={k} M={m}: max error {err:e} of max |y| {rmax:e}"
                        );
                        worst = worst.max(err);
                    }
                }
            }
        }
    }
    eprintln!("worst error / max |y|: {worst:e}");
}

#[test]
fn results_are_bit_identical_across_row_splits_threads_m_and_kernels() {
    let libs = libraries();
    for (name, fmt) in formats() {
        let k = ks(&fmt)[3];
        let (n, m) = (203, 43);
        let blob = blob_of(&fmt, n, k, 5);
        let x = activations(m * k, 9);
        let s = act_scale(1.5);
        let w = A8Matrix::new(&fmt, n, k, &blob).unwrap();
        let mut by_lanes: Vec<(i64, Vec<u32>)> = Vec::new();
        for lib in libs {
            for isa in lib.isas() {
                let p = lib.prepare(isa, &w, &x, s).unwrap();
                let mut y = vec![0f32; m * n];
                lib.matmul(&w, &p, &mut y, None).unwrap();
                let want = bits(&y);
                for threads in [2, 3] {
                    let mut yt = vec![0f32; m * n];
                    lib.matmul(&w, &p, &mut yt, Some(&pool(threads))).unwrap();
                    assert_eq!(bits(&yt), want, "{name} {isa:?}: {threads} threads");
                }
                // Uneven row ranges.
                let mut start = 0;
                for len in [1usize, 7, 64, 3, 100, 28] {
                    let rows = start..(start + len).min(n);
                    let mut yr = vec![0f32; m * rows.len()];
                    lib.matmul_rows(&w, &p, rows.clone(), &mut yr, None)
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
                // Each activation row alone (the M = 1 kernel) gives the same bits as in a batch of
                // 5 (both below GEMM_MIN_ROWS), and, for row and tensor scales (exact integer sums),
                // as in the batch of 43 (the GEMM kernel: 5 tiles of 8 rows and 3 single rows).
                let p5 = lib.prepare(isa, &w, &x[..5 * k], s).unwrap();
                let mut y5 = vec![0f32; 5 * n];
                lib.matmul(&w, &p5, &mut y5, Some(&pool(2))).unwrap();
                let row_scaled = w.kind().format.group <= 0;
                for i in [0, 3, 4, 7, 19, 42] {
                    let p1 = lib.prepare(isa, &w, &x[i * k..(i + 1) * k], s).unwrap();
                    let mut y1 = vec![0f32; n];
                    lib.matmul(&w, &p1, &mut y1, None).unwrap();
                    if i < 5 {
                        assert_eq!(
                            bits(&y1),
                            bits(&y5[i * n..(i + 1) * n]),
                            "{name} {isa:?}: M = 1"
                        );
                    }
                    if row_scaled {
                        assert_eq!(bits(&y1), want[i * n..(i + 1) * n], "{name} {isa:?}: GEMM");
                    }
                }
                let lanes = isa.vector_bytes();
                match by_lanes.iter().find(|(l, _)| *l == lanes) {
                    Some((_, other)) => assert_eq!(
                        &want, other,
                        "{name}: {isa:?} differs from the other kernel of its width"
                    ),
                    None => by_lanes.push((lanes, want)),
                }
            }
        }
    }
}

#[test]
fn kernels_cover_the_instruction_sets_the_host_runs() {
    for lib in libraries() {
        let isas = lib.isas();
        match lib.target() {
            CpuTarget::X86_64V3 => {
                assert!(isas.contains(&A8Isa::Avx2));
                if std::is_x86_feature_detected!("avxvnni") {
                    assert_eq!(lib.best_isa(), Some(A8Isa::AvxVnni));
                }
            }
            CpuTarget::X86_64V4 => {
                assert!(isas.contains(&A8Isa::Avx512));
                if std::is_x86_feature_detected!("avx512vnni") {
                    assert_eq!(lib.best_isa(), Some(A8Isa::Avx512Vnni));
                }
            }
        }
    }
}

#[test]
fn formats_without_small_integer_elements_are_refused() {
    for name in ["fp8_e4m3", "mxfp8", "mxfp6", "fp6_e2m3", "fp8_e4m3_channel"] {
        assert!(!has_kernel(named(name).unwrap()), "{name}");
    }
    let odd_group = QuantType::new(
        Encoding::I8,
        Scheme::Group { size: 48, axis: -1 },
        ScaleType::F32,
        ScaleRule::Amax,
    );
    assert!(!has_kernel(&odd_group));
}

#[test]
fn non_finite_activations_and_mismatched_shapes_are_refused() {
    let lib = &libraries()[0];
    let fmt = named("int4_g32").unwrap();
    let blob = blob_of(fmt, 4, 64, 1);
    let w = A8Matrix::new(fmt, 4, 64, &blob).unwrap();
    let isa = lib.isas()[0];
    let mut x = activations(64, 2);
    x[10] = f32::INFINITY;
    assert!(lib.prepare(isa, &w, &x, 0.01).is_err());
    assert!(lib.prepare(isa, &w, &x[..63], 0.01).is_err());
    let p = lib.prepare(isa, &w, &activations(64, 3), 0.01).unwrap();
    let mut y = vec![0f32; 3];
    assert!(lib.matmul(&w, &p, &mut y, None).is_err());
}

/// Every e8m0 and ue4m3 scale code (the first group's scale of row `r` set to code `r`) decodes
/// exactly: each row matches the reference within 1e-5 of its sum of |products|, a NaN scale (e8m0
/// 0xFF, ue4m3 0x7F / 0xFF) makes its row NaN, and rows within 2^28 of the f32 range are left out.
#[test]
fn every_scale_code_decodes_exactly() {
    let libs = libraries();
    for name in ["mxfp4", "mxint8", "nvfp4", "nvint4"] {
        let fmt = named(name).unwrap().clone();
        let (n, k) = (256usize, 4 * group_of(&fmt));
        let mut blob = blob_of(&fmt, n, k, 77);
        let w0 = A8Matrix::new(&fmt, n, k, &blob).unwrap();
        let sec = *w0.matrix().sections();
        drop(w0);
        for r in 0..n {
            blob[sec.scales + r * (k / group_of(&fmt))] = r as u8;
        }
        let x = activations(k, 3);
        let amax = 1.9;
        let (want, _) = reference(&fmt, n, k, &blob, &x, amax).unwrap();
        let absprod = common::abs_products(&fmt, n, k, &blob, &x, 1);
        let w = A8Matrix::new(&fmt, n, k, &blob).unwrap();
        for lib in libs {
            // One row (the GEMV kernel) and 32 copies of it (the GEMM kernel, whose scales are
            // decoded by other code).
            for (isa, m) in lib.isas().into_iter().flat_map(|i| [(i, 1), (i, 32)]) {
                let xs: Vec<f32> = (0..m).flat_map(|_| x.iter().copied()).collect();
                let p = lib.prepare(isa, &w, &xs, act_scale(amax)).unwrap();
                let mut ym = vec![0f32; m * n];
                lib.matmul(&w, &p, &mut ym, None).unwrap();
                let y = &ym[(m - 1) * n..];
                for r in 0..n {
                    if absprod[r] > 1e30 {
                        // Past the documented range: the per-group terms (float)isum * scale are
                        // formed before `post` (here about 2^-12) and overflow f32 first.
                        continue;
                    }
                    if want[r].is_nan() {
                        assert!(y[r].is_nan(), "{name} {isa:?}: scale code {r}: {}", y[r]);
                        continue;
                    }
                    let err = (y[r] as f64 - want[r]).abs();
                    assert!(
                        err <= 1e-5 * absprod[r].max(1e-300) * 2.0,
                        "{name} {isa:?}: scale code {r}: {} vs {} (sum |wx| {:e})",
                        y[r],
                        want[r],
                        absprod[r]
                    );
                }
            }
        }
    }
}

//! End-to-end tests of the quantized GEMM kernels: every supported format, several `m`, shapes with K
//! tails and partial panels, both targets (where the host runs them), against a reference that
//! dequantizes with `qc_quant::dequantize` and accumulates in f64; bit-identical results across row
//! ranges, thread counts and `m`.
//!
//! The accuracy criteria, per (format, shape, m, target): `||y - y_ref||_2 <= 1e-5 ||y_ref||_2` when y
//! has at least 16 outputs, and always `||y - y_ref||_2 <= 2e-7 ||a||_2` with `a` the outputs' sums
//! of |products| (the scale of f32 rounding errors; a single output with heavy cancellation can miss
//! the first criterion by rounding alone).

use qc_backend_llvm::gemm::{
    codegen::{k_chunk, panel_rows},
    emit_gemm_assembly, emit_gemm_object, emit_kernels_object, gemm_symbol, reference_gemm,
    GemmLibrary,
};
use qc_backend_llvm::gemv::{named, KernelSpec, QuantMatrix};
use qc_backend_llvm::CpuTarget;
use qc_ir::quant::QuantType;

mod common;
use common::{
    abs_l2, abs_products, activations, bits, blob_of, custom_formats, group_of, host_targets, l2,
    pool, rel_l2, supported_formats,
};

/// (N, K) pairs: K with tails after the last block and the last chunk (several chunks for the larger
/// ones), N with partial panels, several panels and more than one row block.
fn shapes_for(fmt: &QuantType) -> Vec<(usize, usize)> {
    let g = group_of(fmt);
    let even = fmt.elem.bits() == 4;
    let ks = [2, 7, 16, 48, 100, 160, 384, 800, 1040, 2176];
    let ks: Vec<usize> = ks
        .into_iter()
        .filter(|k| k % g == 0 && (!even || k % 2 == 0))
        .collect();
    let ns = [1usize, 5, 33, 70];
    let mut out: Vec<(usize, usize)> = ks
        .iter()
        .enumerate()
        .map(|(i, &k)| (ns[i % ns.len()], k))
        .collect();
    out.push((150, *ks.iter().find(|&&k| k >= 384).unwrap()));
    out
}

/// Every format on every shape, `m` and host target: within 1e-5 of the f64 reference, the same bits
/// on one thread and on pools of 2 and 3, and each activation row's outputs the same bits as with
/// that row alone (`m = 1`).
fn check_formats(formats: &[(&'static str, QuantType)]) {
    let (p2, p3) = (pool(2), pool(3));
    let tys: Vec<QuantType> = formats.iter().map(|(_, t)| t.clone()).collect();
    for target in host_targets() {
        let lib = GemmLibrary::build(&tys, target).unwrap();
        for (name, fmt) in formats {
            let (mut worst, mut worst_abs) = (0f64, 0f64);
            for (si, (n, k)) in shapes_for(fmt).into_iter().enumerate() {
                let blob = blob_of(fmt, n, k, 1000 + si as u64);
                let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
                for m in [1usize, 3, 8, 17] {
                    let x = activations(m * k, 77 + si as u64 + m as u64);
                    let want = reference_gemm(fmt, n, k, &blob, &x, m).unwrap();
                    let mut y1 = vec![f32::NAN; m * n];
                    lib.gemm(&w, &x, m, &mut y1, None).unwrap();
                    let err = rel_l2(&y1, &want);
                    // Against the scale of the rounding errors (sums of |products|), always; against
                    // the norm of y when there are enough outputs that one output with heavy
                    // cancellation (a relative condition number of 1000 and more occurs in these
                    // random rows) does not make the whole figure.
                    let abs = abs_products(fmt, n, k, &blob, &x, m);
                    let err_abs = abs_l2(&y1, &want) / l2(&abs).max(f64::MIN_POSITIVE);
                    assert!(
                        err_abs <= 2e-7 && (m * n < 16 || err <= 1e-5),
                        "{name} {target} m={m} [{n}, {k}]: relative error {err:e} (of the sums of \
                         |products|: {err_abs:e})\n got {:?}\nwant {:?}",
                        &y1[..n.min(4)],
                        &want[..n.min(4)]
                    );
                    worst_abs = worst_abs.max(err_abs);
                    if m * n >= 16 {
                        worst = worst.max(err);
                    }
                    for p in [&p2, &p3] {
                        let mut yp = vec![f32::NAN; m * n];
                        lib.gemm(&w, &x, m, &mut yp, Some(p)).unwrap();
                        assert_eq!(bits(&yp), bits(&y1), "{name} {target} m={m} [{n}, {k}]");
                    }
                    if m > 1 {
                        // Row i alone gives the same bits.
                        for i in [0, m / 2, m - 1] {
                            let mut yi = vec![f32::NAN; n];
                            lib.gemm(&w, &x[i * k..(i + 1) * k], 1, &mut yi, None)
                                .unwrap();
                            assert_eq!(
                                bits(&yi),
                                bits(&y1[i * n..(i + 1) * n]),
                                "{name} {target} m={m} row {i} [{n}, {k}]"
                            );
                        }
                    }
                }
            }
            eprintln!(
                "{name} {target}: worst relative error {worst:.2e} (16 outputs and more), of the \
                 sums of |products| {worst_abs:.2e}"
            );
        }
    }
}

#[test]
fn every_named_format_matches_the_f64_reference_on_every_shape_m_and_target() {
    check_formats(&supported_formats());
}

#[test]
fn f16_bf16_scales_and_small_groups_match_the_reference() {
    check_formats(&custom_formats());
}

/// Any row range gives the same bits as the whole matrix, including ranges that cut panels and row
/// blocks, for several `m`.
#[test]
fn every_row_range_gives_the_same_bits() {
    let formats: Vec<(&str, QuantType)> = supported_formats();
    for target in host_targets() {
        let tys: Vec<QuantType> = formats.iter().map(|(_, t)| t.clone()).collect();
        let lib = GemmLibrary::build(&tys, target).unwrap();
        let pr = panel_rows(target);
        for (name, fmt) in &formats {
            let (n, k) = (4 * pr + 11, 1152);
            let blob = blob_of(fmt, n, k, 21);
            let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
            for m in [2usize, 13] {
                let x = activations(m * k, 22);
                let xp = lib.prepare_x(&w, &x);
                let mut all = vec![0f32; m * n];
                lib.gemm_prepared(&w, &xp, m, &mut all, None).unwrap();
                for (a, b) in [
                    (0, n),
                    (1, n),
                    (2, 7),
                    (3, 4),
                    (5, pr + 3),
                    (pr, 2 * pr),
                    (pr - 1, 4 * pr + 1),
                    (n - 1, n),
                    (4, 4),
                ] {
                    let mut part = vec![f32::NAN; m * (b - a)];
                    lib.gemm_rows_prepared(&w, &xp, m, a..b, &mut part).unwrap();
                    for i in 0..m {
                        assert_eq!(
                            bits(&part[i * (b - a)..(i + 1) * (b - a)]),
                            bits(&all[i * n + a..i * n + b]),
                            "{name} {target} m={m}: rows {a}..{b}, activation row {i}"
                        );
                    }
                }
                assert!(lib
                    .gemm_rows_prepared(&w, &xp, m, n - 1..n + 1, &mut vec![0.0; 2 * m])
                    .is_err());
            }
        }
    }
}

/// Through the raw C ABI with strided operands (`ldx > k`, `ldy > rows`): the same bits as the safe
/// API, and the kernel writes exactly its `m x rows` outputs (the padding keeps its values).
#[test]
fn strided_operands_through_the_c_abi() {
    for target in host_targets() {
        for name in ["int4_g32", "fp8_e4m3_channel", "nvfp4"] {
            let fmt = named(name).unwrap().clone();
            let lib = GemmLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
            let (n, k, m) = (panel_rows(target) + 5, 3 * k_chunk(target) + 64, 7);
            let blob = blob_of(&fmt, n, k, 5);
            let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
            let x = activations(m * k, 6);
            let xp = lib.prepare_x(&w, &x);
            let mut want = vec![0f32; m * n];
            lib.gemm_prepared(&w, &xp, m, &mut want, None).unwrap();
            let (a, b) = (3, n - 1);
            let (ldx, ldy) = (k + 3, b - a + 7);
            let mut xs = vec![f32::NAN; m * ldx];
            for i in 0..m {
                xs[i * ldx..i * ldx + k].copy_from_slice(&xp[i * k..(i + 1) * k]);
            }
            let mut y = vec![-7.5f32; m * ldy];
            let f = lib.kernel(w.spec()).unwrap();
            let post = w.post();
            // SAFETY: the blob is W's, xs holds m rows of stride ldx >= k, y m rows of stride ldy >=
            // b - a, and a..b lies within W's rows.
            unsafe {
                f(
                    blob.as_ptr(),
                    blob.as_ptr().add(w.sections().scales),
                    xs.as_ptr(),
                    ldx as i64,
                    y.as_mut_ptr(),
                    ldy as i64,
                    m as i64,
                    k as i64,
                    a as i64,
                    b as i64,
                    post,
                )
            };
            for i in 0..m {
                assert_eq!(
                    bits(&y[i * ldy..i * ldy + (b - a)]),
                    bits(&want[i * n + a..i * n + b]),
                    "{name} {target} row {i}"
                );
                assert!(
                    y[i * ldy + (b - a)..(i + 1) * ldy]
                        .iter()
                        .all(|&v| v == -7.5),
                    "{name} {target} row {i}: padding written"
                );
            }
        }
    }
}

#[test]
fn nan_codes_and_scales_make_their_row_nan() {
    for target in host_targets() {
        let (n, m) = (5, 3);
        for name in ["fp8_e4m3_channel", "mxfp8", "fp8_e4m3"] {
            let fmt = named(name).unwrap().clone();
            let lib = GemmLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
            for k in [64usize, 96, 2 * k_chunk(target) + 32] {
                for (at, code) in [(17, 0xff), (k - 3, 0x7f), (k_chunk(target) + 1, 0x7f)] {
                    if at >= k {
                        continue;
                    }
                    let x = activations(m * k, 9);
                    let mut blob = blob_of(&fmt, n, k, 11);
                    blob[k + at] = code;
                    blob[4 * k + at] = code;
                    let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
                    let mut y = vec![0f32; m * n];
                    lib.gemm(&w, &x, m, &mut y, None).unwrap();
                    for i in 0..m {
                        let nan: Vec<bool> =
                            y[i * n..(i + 1) * n].iter().map(|v| v.is_nan()).collect();
                        assert_eq!(
                            nan,
                            [false, true, false, false, true],
                            "{name} {target} K={k} NaN at {at}: {y:?}"
                        );
                    }
                }
            }
        }
        // e8m0 NaN scale (mxfp4), ue4m3 NaN block scale (nvfp4).
        for (name, off) in [("mxfp4", 2usize * 2), ("nvfp4", 2 * 4 + 1)] {
            let k = 64;
            let fmt = named(name).unwrap().clone();
            let lib = GemmLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
            let mut blob = blob_of(&fmt, n, k, 12);
            let at = QuantMatrix::new(&fmt, n, k, &blob)
                .unwrap()
                .sections()
                .scales;
            blob[at + off] = if name == "mxfp4" { 0xff } else { 0x7f };
            let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
            let x = activations(m * k, 3);
            let mut y = vec![0f32; m * n];
            lib.gemm(&w, &x, m, &mut y, None).unwrap();
            let want = reference_gemm(&fmt, n, k, &blob, &x, m).unwrap();
            for i in 0..m {
                for r in 0..n {
                    assert_eq!(
                        y[i * n + r].is_nan(),
                        r == 2,
                        "{name} {target} ({i}, {r}): {y:?}"
                    );
                    assert_eq!(want[i * n + r].is_nan(), r == 2);
                }
            }
        }
    }
}

#[test]
fn shapes_and_lengths_are_checked() {
    let target = CpuTarget::best_for_host().expect("an x86-64-v3 host");
    let fmt = named("int4_g32").unwrap().clone();
    let lib = GemmLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
    let (n, k, m) = (4, 64, 3);
    let blob = blob_of(&fmt, n, k, 1);
    let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
    let x = activations(m * k, 2);
    assert!(lib.gemm(&w, &x, m, &mut [0.0; 12], None).is_ok());
    assert!(lib.gemm(&w, &x, m, &mut [0.0; 11], None).is_err());
    assert!(lib.gemm(&w, &x[1..], m, &mut [0.0; 12], None).is_err());
    assert!(lib.gemm(&w, &x, m - 1, &mut [0.0; 8], None).is_err());
    // A format the library was not built with.
    let other = named("int8").unwrap().clone();
    let blob8 = blob_of(&other, n, k, 1);
    let w8 = QuantMatrix::new(&other, n, k, &blob8).unwrap();
    assert!(lib.gemm(&w8, &x, m, &mut [0.0; 12], None).is_err());
    // m = 0 is a no-op.
    assert!(lib.gemm(&w, &[], 0, &mut [], None).is_ok());
    // K = 0 writes zeros (the kernel reads no codes, scales or activations); an empty row range
    // writes nothing.
    let f = lib.kernel(w.spec()).unwrap();
    let mut y = [f32::NAN; 6];
    // SAFETY: with k = 0 the kernel reads nothing; y holds 2 rows of 3.
    unsafe {
        f(
            blob.as_ptr(),
            blob.as_ptr(),
            x.as_ptr(),
            0,
            y.as_mut_ptr(),
            3,
            2,
            0,
            1,
            4,
            1.0,
        )
    };
    assert_eq!(y, [0.0; 6]);
    let mut y = [f32::NAN; 6];
    // SAFETY: an empty row range touches nothing.
    unsafe {
        f(
            blob.as_ptr(),
            blob.as_ptr().add(w.sections().scales),
            x.as_ptr(),
            k as i64,
            y.as_mut_ptr(),
            3,
            2,
            k as i64,
            2,
            2,
            1.0,
        )
    };
    assert!(y.iter().all(|v| v.is_nan()));
}

#[test]
fn symbols_objects_and_assembly() {
    let tys: Vec<QuantType> = supported_formats().into_iter().map(|(_, t)| t).collect();
    for (name, fmt) in supported_formats() {
        let s = KernelSpec::from_quant_type(&fmt).unwrap();
        let g = gemm_symbol(&s);
        assert_eq!(g, s.symbol.replacen("qc_gemv_", "qc_gemm_", 1), "{name}");
    }
    for target in CpuTarget::ALL {
        let a = emit_kernels_object(&tys, target).unwrap();
        let b = emit_kernels_object(&tys, target).unwrap();
        assert_eq!(a, b, "{target}: emit_kernels_object is deterministic");
        let g1 = emit_gemm_object(&tys[..3], target).unwrap();
        let g2 = emit_gemm_object(&tys[..3], target).unwrap();
        assert_eq!(g1, g2, "{target}: emit_gemm_object is deterministic");
        let contains = |hay: &[u8], s: &str| hay.windows(s.len()).any(|w| w == s.as_bytes());
        for t in &tys {
            let s = KernelSpec::from_quant_type(t).unwrap();
            assert!(contains(&a, &s.symbol), "{target}: {}", s.symbol);
            assert!(
                contains(&a, &gemm_symbol(&s)),
                "{target}: {}",
                gemm_symbol(&s)
            );
        }
        let asm = emit_gemm_assembly(&tys[..1], target).unwrap();
        let reg = match target {
            CpuTarget::X86_64V4 => "%zmm",
            CpuTarget::X86_64V3 => "%ymm",
        };
        assert!(asm.contains("vfmadd") && asm.contains(reg), "{target}");
    }
}

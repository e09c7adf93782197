//! End-to-end tests of the quantized GEMV kernels: every supported format, several shapes and both
//! targets, against a reference that dequantizes with `qc_quant::dequantize` and accumulates in f64.
//!
//! The accuracy criterion is `||y - y_ref||_2 <= 1e-5 ||y_ref||_2` per (format, shape, target).

use qc_backend_llvm::gemv::{
    emit_gemv_assembly, emit_gemv_object, kernel_specs, named, reference_gemv, GemvLibrary,
    KernelSpec, QuantMatrix, ScaleKind,
};
use qc_backend_llvm::{CpuTarget, Error};
use qc_ir::quant::{Encoding, QuantType, ScaleRule, ScaleType, Scheme};
use qc_quant::blob::blob_len;

mod common;
use common::{
    abs_products, activations, bits, blob_of, custom_formats, group_of, host_targets, l2, pool,
    rel_l2, supported_formats,
};

fn shapes_for(fmt: &QuantType) -> Vec<(usize, usize)> {
    let g = group_of(fmt);
    let even = fmt.elem.bits() == 4;
    let ks = [2, 7, 16, 48, 96, 100, 128, 160, 384, 800, 1040, 2176, 4096];
    let ks: Vec<usize> = ks
        .into_iter()
        .filter(|k| k % g == 0 && (!even || k % 2 == 0))
        .collect();
    let ns = [1usize, 3, 7, 33];
    let mut out = Vec::new();
    for (i, &k) in ks.iter().enumerate() {
        // Every K with two row counts, cycling through them, plus one taller matrix.
        out.push((ns[i % ns.len()], k));
        out.push((ns[(i + 2) % ns.len()], k));
    }
    out.push((130, *ks.iter().find(|&&k| k >= 384).unwrap()));
    out
}

/// Checks every format of `formats` on every shape and host target: the relative L2 error against the
/// f64 reference is below 1e-5, and the result is bit-identical on one thread and on pools of 2 and 4.
fn check_formats(formats: &[(&'static str, QuantType)]) {
    let (p2, p4) = (pool(2), pool(4));
    let tys: Vec<QuantType> = formats.iter().map(|(_, t)| t.clone()).collect();
    for target in host_targets() {
        let lib = GemvLibrary::build(&tys, target).unwrap();
        for (name, fmt) in formats {
            let mut worst = 0f64;
            for (si, (n, k)) in shapes_for(fmt).into_iter().enumerate() {
                let blob = blob_of(fmt, n, k, 1000 + si as u64);
                let x = activations(k, 77 + si as u64);
                let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
                let want = reference_gemv(fmt, n, k, &blob, &x).unwrap();
                let mut y1 = vec![f32::NAN; n];
                lib.gemv(&w, &x, &mut y1, None).unwrap();
                let err = rel_l2(&y1, &want);
                assert!(
                    err <= 1e-5,
                    "{name} {target} [{n}, {k}]: relative error {err:e}\n got {:?}\nwant {:?}",
                    &y1[..n.min(4)],
                    &want[..n.min(4)]
                );
                worst = worst.max(err);
                if std::env::var_os("QC_GEMV_VERBOSE").is_some() {
                    eprintln!(
                        "  {name} {target} [{n}, {k}]: error {err:.2e} of ||y||, {:.2e} of ||sum |w x| ||",
                        err * l2(&want) / l2(&abs_products(fmt, n, k, &blob, &x, 1))
                    );
                }
                for pool in [&p2, &p4] {
                    let mut yp = vec![f32::NAN; n];
                    lib.gemv(&w, &x, &mut yp, Some(pool)).unwrap();
                    assert_eq!(
                        bits(&yp),
                        bits(&y1),
                        "{name} {target} [{n}, {k}]: {} threads differ from one",
                        pool.current_num_threads()
                    );
                }
            }
            eprintln!("{name} {target}: worst relative error {worst:.2e}");
        }
    }
}

#[test]
fn every_named_format_matches_the_f64_reference_on_every_shape_and_target() {
    check_formats(&supported_formats());
}

#[test]
fn f16_bf16_scales_and_small_groups_match_the_reference() {
    check_formats(&custom_formats());
}

/// Any row range gives the same bits as the whole matrix: rows computed four at a time and rows
/// computed alone follow one order.
#[test]
fn every_row_range_gives_the_same_bits() {
    let formats = [
        "int4_g32",
        "nvfp4",
        "mxfp8",
        "int8_channel",
        "int4_channel",
        "fp8_e4m3",
    ];
    for target in host_targets() {
        let tys: Vec<QuantType> = formats.iter().map(|n| named(n).unwrap().clone()).collect();
        let lib = GemvLibrary::build(&tys, target).unwrap();
        for (name, fmt) in formats.iter().zip(&tys) {
            let (n, k) = (23, 800);
            let blob = blob_of(fmt, n, k, 21);
            let x = activations(k, 22);
            let w = QuantMatrix::new(fmt, n, k, &blob).unwrap();
            let xp = lib.prepare_x(&w, &x);
            let mut all = vec![0f32; n];
            lib.gemv(&w, &x, &mut all, None).unwrap();
            for (a, b) in [
                (0, 23),
                (1, 23),
                (2, 7),
                (3, 4),
                (5, 22),
                (9, 17),
                (22, 23),
                (4, 4),
            ] {
                let mut part = vec![f32::NAN; b - a];
                lib.gemv_rows_prepared(&w, &xp, a..b, &mut part).unwrap();
                assert_eq!(
                    bits(&part),
                    bits(&all[a..b]),
                    "{name} {target}: rows {a}..{b}"
                );
            }
            assert!(lib
                .gemv_rows_prepared(&w, &xp, 20..24, &mut [0.0; 4])
                .is_err());
        }
    }
}

#[test]
fn supported_formats_classify_and_the_rest_are_refused_with_a_reason() {
    for (name, fmt) in supported_formats().into_iter().chain(custom_formats()) {
        let s = KernelSpec::from_quant_type(&fmt).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.symbol.starts_with("qc_gemv_"), "{name}: {}", s.symbol);
    }
    for (name, why) in [
        ("uint4_g128", "zero point"),
        ("uint8", "zero point"),
        ("nvfp4_ggml", "lo_first"),
    ] {
        let e = KernelSpec::from_quant_type(named(name).unwrap()).unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported(m) if m.contains(why)),
            "{name}: {e}"
        );
    }
    let col = QuantType::new(
        Encoding::I8,
        Scheme::PerChannel { axis: 1 },
        ScaleType::F32,
        ScaleRule::Amax,
    );
    assert!(KernelSpec::from_quant_type(&col)
        .unwrap_err()
        .to_string()
        .contains("axis 1"));
    let block = QuantType::new(
        Encoding::I8,
        Scheme::Block { rows: 16, cols: 16 },
        ScaleType::F32,
        ScaleRule::Amax,
    );
    assert!(KernelSpec::from_quant_type(&block)
        .unwrap_err()
        .to_string()
        .contains("2-D block"));
    // Rule variants share one kernel; different decodings do not.
    let specs = kernel_specs(&[
        named("mxfp4").unwrap().clone(),
        named("mxfp4_rceil").unwrap().clone(),
        named("mxfp4_ceil").unwrap().clone(),
        named("nvfp4").unwrap().clone(),
        named("nvfp4_ct").unwrap().clone(),
        named("nvint4").unwrap().clone(),
    ])
    .unwrap();
    let syms: Vec<&str> = specs.iter().map(|s| s.symbol.as_str()).collect();
    assert_eq!(
        syms,
        [
            "qc_gemv_e2m1_g32_e8m0",
            "qc_gemv_e2m1_g16_ue4m3",
            "qc_gemv_i4_g16_ue4m3"
        ]
    );
    // A group that neither divides nor is a multiple of the tile is refused at compile time.
    let mut odd = QuantType::new(
        Encoding::I4,
        Scheme::Group { size: 48, axis: -1 },
        ScaleType::F32,
        ScaleRule::Amax,
    );
    odd.pack = qc_ir::quant::Packing::LoFirst;
    let e = emit_gemv_object(&[odd], CpuTarget::X86_64V4).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
}

#[test]
fn sections_match_qc_quant_blob_layout() {
    for (name, fmt) in supported_formats().into_iter().chain(custom_formats()) {
        for (n, k) in shapes_for(&fmt).into_iter().take(6) {
            let want = blob_len(&fmt, &[n, k]).unwrap();
            let blob = blob_of(&fmt, n, k, 5);
            assert_eq!(blob.len(), want, "{name}");
            let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
            assert_eq!(w.sections().len, want, "{name} [{n}, {k}]");
            // The scales section starts where qc_quant puts the first scale.
            let q = qc_quant::blob::from_blob(&blob, &fmt, &[n, k], "W").unwrap();
            let first: Vec<u8> = match &q.scales {
                qc_quant::Scales::Codes(c) => vec![c[0]],
                qc_quant::Scales::F32(v) => v[0].to_le_bytes().to_vec(),
                qc_quant::Scales::F16(v) | qc_quant::Scales::BF16(v) => v[0].to_le_bytes().to_vec(),
            };
            let at = w.sections().scales;
            assert_eq!(&blob[at..at + first.len()], &first[..], "{name}");
            assert!(w.weight_bytes() <= want, "{name}");
        }
        // A blob of the wrong length is refused.
        let (n, k) = shapes_for(&fmt)[0];
        let blob = blob_of(&fmt, n, k, 5);
        let e = QuantMatrix::new(&fmt, n, k, &blob[..blob.len() - 1]).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{name}: {e}");
    }
}

/// One changed code byte changes exactly its row, and the kernel follows the reference: the
/// comparison is not vacuous.
#[test]
fn a_changed_code_or_scale_changes_only_its_row() {
    let target = CpuTarget::best_for_host().expect("an x86-64-v3 host");
    for name in [
        "int4_g32",
        "mxfp4",
        "nvfp4",
        "fp8_e4m3",
        "mxint8",
        "int8_channel",
    ] {
        let fmt = named(name).unwrap().clone();
        let lib = GemvLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
        let (n, k) = (5, 256);
        let mut blob = blob_of(&fmt, n, k, 3);
        let x = activations(k, 4);
        let mut before = vec![0f32; n];
        lib.gemv(
            &QuantMatrix::new(&fmt, n, k, &blob).unwrap(),
            &x,
            &mut before,
            None,
        )
        .unwrap();
        let row_bytes = QuantMatrix::new(&fmt, n, k, &blob)
            .unwrap()
            .sections()
            .row_bytes;
        let scales_at = QuantMatrix::new(&fmt, n, k, &blob)
            .unwrap()
            .sections()
            .scales;
        // Row 2, byte 5: flip the low bits (a different code, never the e4m3 NaN code).
        blob[2 * row_bytes + 5] ^= 0x03;
        let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
        let mut after = vec![0f32; n];
        lib.gemv(&w, &x, &mut after, None).unwrap();
        for r in 0..n {
            if r == 2 {
                assert_ne!(after[r], before[r], "{name}: row 2 did not change");
            } else {
                assert_eq!(after[r], before[r], "{name}: row {r} changed");
            }
        }
        let want = reference_gemv(&fmt, n, k, &blob, &x).unwrap();
        assert!(rel_l2(&after, &want) <= 1e-5, "{name}");
        // A scale of row 3 (per-tensor formats have one scale for all rows).
        let spec = KernelSpec::from_quant_type(&fmt).unwrap();
        if !matches!(spec.scale, ScaleKind::Tensor) {
            let sb = (fmt.scale.bits() / 8) as usize;
            let per_row = match spec.scale {
                ScaleKind::Group { size, .. } => k / size,
                _ => 1,
            };
            // The lowest exponent bit (f32, f16) or the lowest code bit (e8m0, ue4m3).
            blob[scales_at + 3 * per_row * sb + sb - 1] ^= 0x01;
            let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
            let mut y = vec![0f32; n];
            lib.gemv(&w, &x, &mut y, None).unwrap();
            assert_ne!(y[3], after[3], "{name}: row 3 did not see its scale");
            assert_eq!(y[4], after[4], "{name}");
            let want = reference_gemv(&fmt, n, k, &blob, &x).unwrap();
            assert!(rel_l2(&y, &want) <= 1e-5, "{name}");
        }
    }
}

#[test]
fn nan_codes_and_scales_make_their_row_nan_and_extreme_scales_are_exact() {
    for target in host_targets() {
        nan_and_extremes(target);
    }
}

fn nan_and_extremes(target: CpuTarget) {
    let n = 5;
    // e4m3fn NaN element codes (0x7f, 0xff) in rows 1 (computed with other rows) and 4 (alone): inside
    // a vector block (element 17) and in the scalar tail (element k - 3 when K is not a multiple of
    // the block).
    for name in ["fp8_e4m3_channel", "mxfp8", "fp8_e4m3"] {
        let fmt = named(name).unwrap().clone();
        let lib = GemvLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
        let ks: &[usize] = if name == "mxfp8" {
            &[64, 96]
        } else {
            &[64, 100]
        };
        for &k in ks {
            for (at, code) in [(17, 0xff), (k - 3, 0x7f)] {
                let x = activations(k, 9);
                let mut blob = blob_of(&fmt, n, k, 11);
                blob[k + at] = code;
                blob[4 * k + at] = code;
                let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
                let mut y = vec![0f32; n];
                lib.gemv(&w, &x, &mut y, None).unwrap();
                let nan: Vec<bool> = y.iter().map(|v| v.is_nan()).collect();
                assert_eq!(
                    nan,
                    [false, true, false, false, true],
                    "{name} {target} K={k} NaN at {at}: {y:?}"
                );
                let want = reference_gemv(&fmt, n, k, &blob, &x).unwrap();
                assert!(want[1].is_nan() && want[4].is_nan());
            }
        }
    }
    let (n, k) = (4, 64);
    let x = activations(k, 9);
    // e8m0 scale codes 0xff (NaN), 0 (2^-127, subnormal) and 254 (2^127) in mxfp4.
    let fmt = named("mxfp4").unwrap().clone();
    let lib = GemvLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
    let mut blob = blob_of(&fmt, n, k, 12);
    let at = QuantMatrix::new(&fmt, n, k, &blob)
        .unwrap()
        .sections()
        .scales;
    blob[at] = 0xff; // row 0, group 0
    blob[at + 2] = 0; // row 1, both groups tiny
    blob[at + 3] = 0;
    blob[at + 4] = 127 + 100; // row 2, one large group (still finite in f32 after the sum)
    let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
    let mut y = vec![0f32; n];
    lib.gemv(&w, &x, &mut y, None).unwrap();
    let want = reference_gemv(&fmt, n, k, &blob, &x).unwrap();
    assert!(y[0].is_nan() && want[0].is_nan(), "{target}: {y:?}");
    for r in 1..n {
        let e = (y[r] as f64 - want[r]).abs();
        assert!(
            e <= 1e-5 * want[r].abs(),
            "{target} row {r}: {} vs {}",
            y[r],
            want[r]
        );
    }
    // ue4m3 NaN block scale (0x7f) in nvfp4, row 3; a block scale with the sign bit set (ignored).
    let fmt = named("nvfp4").unwrap().clone();
    let lib = GemvLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
    let mut blob = blob_of(&fmt, n, k, 13);
    let at = QuantMatrix::new(&fmt, n, k, &blob)
        .unwrap()
        .sections()
        .scales;
    blob[at + 3 * (k / 16) + 2] = 0x7f;
    blob[at + 1] |= 0x80;
    let w = QuantMatrix::new(&fmt, n, k, &blob).unwrap();
    let mut y = vec![0f32; n];
    lib.gemv(&w, &x, &mut y, None).unwrap();
    let want = reference_gemv(&fmt, n, k, &blob, &x).unwrap();
    assert!(
        y[3].is_nan() && y[..3].iter().all(|v| !v.is_nan()),
        "{target}: {y:?}"
    );
    assert!(rel_l2(&y[..3], &want[..3]) <= 1e-5, "{target}");
}

#[test]
fn shapes_and_lengths_are_checked() {
    let target = CpuTarget::best_for_host().expect("an x86-64-v3 host");
    let fmt = named("int4_g32").unwrap().clone();
    let lib = GemvLibrary::build(std::slice::from_ref(&fmt), target).unwrap();
    let blob = blob_of(&fmt, 2, 64, 1);
    let w = QuantMatrix::new(&fmt, 2, 64, &blob).unwrap();
    let mut y = vec![0f32; 2];
    assert!(matches!(
        lib.gemv(&w, &[0.0; 63], &mut y, None),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        lib.gemv(&w, &[0.0; 64], &mut [0.0; 3], None),
        Err(Error::Shape(_))
    ));
    // K not a multiple of the group.
    assert!(matches!(
        QuantMatrix::new(&fmt, 2, 48, &blob),
        Err(Error::Shape(_))
    ));
    // A library without the format's kernel.
    let other = GemvLibrary::build(&[named("mxfp8").unwrap().clone()], target).unwrap();
    assert!(matches!(
        other.gemv(&w, &[0.0; 64], &mut y, None),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn objects_are_deterministic_and_assembly_uses_the_targets_vectors() {
    let all: Vec<QuantType> = supported_formats().into_iter().map(|(_, t)| t).collect();
    for t in CpuTarget::ALL {
        let a = emit_gemv_object(&all, t).unwrap();
        let b = emit_gemv_object(&all, t).unwrap();
        assert_eq!(a, b, "{t}: object bytes differ between two compilations");
        assert_eq!(&a[..4], b"\x7fELF");
    }
    let fp4 = [named("mxfp4").unwrap().clone()];
    let v4 = emit_gemv_assembly(&fp4, CpuTarget::X86_64V4).unwrap();
    assert!(
        v4.contains("%zmm"),
        "x86-64-v4 mxfp4 kernel uses no zmm:\n{v4}"
    );
    assert!(
        v4.contains("vpermps") || v4.contains("vpermd"),
        "no table permute:\n{v4}"
    );
    assert!(v4.contains("vfmadd"), "no FMA:\n{v4}");
    let v3 = emit_gemv_assembly(&fp4, CpuTarget::X86_64V3).unwrap();
    assert!(!v3.contains("%zmm"), "x86-64-v3 code uses AVX-512:\n{v3}");
    assert!(v3.contains("%ymm") && v3.contains("vfmadd"), "{v3}");
    let fp8 = [named("mxfp8").unwrap().clone()];
    let v4 = emit_gemv_assembly(&fp8, CpuTarget::X86_64V4).unwrap();
    assert!(
        v4.contains("vcvtph2ps"),
        "e4m3 is not decoded through f16:\n{v4}"
    );
    // The kernels reference no external symbol (no libc calls): nothing undefined in the object.
    for t in CpuTarget::ALL {
        let asm = emit_gemv_assembly(&all, t).unwrap();
        for bad in ["memcpy", "memset", "@PLT", "__"] {
            assert!(!asm.contains(bad), "{t}: assembly mentions {bad}");
        }
    }
}

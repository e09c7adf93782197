//! Block-scaled formats against independent references: the ONNX reference evaluator's blocked
//! QuantizeLinear / DequantizeLinear (FLOAT4E2M1 with FLOAT8E8M0 scales, INT4 with f32 scales) and a
//! from-the-spec numpy reference for every MX scale rule and every NVFP4 / NVINT4 convention
//! (scripts/quant/block_reference.py). 10^6 random 32-element blocks (magnitudes 2^-3..2^3 in even
//! tensors, 2^-40..2^40 in odd ones, so two-level formats see block scales deep in the e4m3 subnormal
//! range) plus adversarial blocks: all zero, a single outlier, exact rounding ties of e2m1 and e4m3,
//! block maxima in the e4m3 subnormal range, f32 denormals, and (last tensor) infinities and NaNs under
//! the propagate policy. Required: 0 mismatches in scales, and in codes wherever the block scale is not
//! NaN (a NaN block's element codes are unspecified; it dequantizes to NaN).

mod common;

use common::*;
use qc_ir::quant::{named_format, Convention, QuantType, ScaleRule};
use qc_quant::qsnr::{samples, Dist};
use qc_quant::tensor::{
    dequantize, quantize, NonFinitePolicy, QuantizeOptions, QuantizedTensor, Scales,
};

const COLS: usize = 32;
const TENSOR_ROWS: usize = 1000;
const RANDOM_BLOCKS: usize = 1_000_000;

fn adversarial() -> Vec<[f32; COLS]> {
    let mut rows = Vec::new();
    rows.push([0.0; COLS]);
    let mut r = [1e-3f32; COLS];
    r[17] = 1e4;
    rows.push(r);
    let mut r = [-1e-30f32; COLS];
    r[0] = 3e30;
    rows.push(r);
    // e2m1 midpoints at a block maximum of 6 (FLOOR E = 0), and the same scaled by 2^5 and 2^-20.
    let mids = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0];
    for k in [0, 5, -20] {
        let mut r = [0f32; COLS];
        for (i, v) in r.iter_mut().enumerate() {
            let m = mids[i % 8] * 2f32.powi(k);
            *v = if i % 16 < 8 { m } else { -m };
        }
        rows.push(r);
    }
    // e4m3 midpoints (1 + (2j+1)/16) * 2^e with a maximum of 448 * 2^k.
    for k in [0, -7] {
        let mut r = [0f32; COLS];
        for (i, v) in r.iter_mut().enumerate() {
            *v = (1.0 + (2 * (i % 8) + 1) as f32 / 16.0) * 2f32.powi(i as i32 % 9 - 4 + k);
        }
        r[0] = 448.0 * 2f32.powi(k);
        rows.push(r);
    }
    // Block maxima in the e4m3 subnormal range relative to a tensor maximum of 2688.
    for amax in [
        1e-3f32,
        2.0f32.powi(-10) * 6.0,
        2.0f32.powi(-9) * 6.0 * 1.5,
        0.01,
    ] {
        let mut r = [0f32; COLS];
        for (i, v) in r.iter_mut().enumerate() {
            *v = amax * ((i as f32 + 1.0) / COLS as f32) * if i % 3 == 0 { -1.0 } else { 1.0 };
        }
        rows.push(r);
    }
    let mut r = [2688f32; COLS];
    r[1] = -2688.0;
    rows.push(r);
    // f32 denormals.
    for base in [1u32, 0x1234, 0x7f_ffff] {
        let mut r = [0f32; COLS];
        for (i, v) in r.iter_mut().enumerate() {
            *v = f32::from_bits(base + i as u32 * 3) * if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        rows.push(r);
    }
    rows
}

fn non_finite_rows() -> Vec<[f32; COLS]> {
    let mut a = [1.0f32; COLS];
    a[5] = f32::INFINITY;
    let mut b = [1.0f32; COLS];
    b[9] = f32::NAN;
    let mut c = [0.5f32; COLS];
    c[0] = f32::NEG_INFINITY;
    vec![a, b, c, [2.0; COLS]]
}

/// The test data: rows of 32, a multiple of TENSOR_ROWS rows; the last tensor holds the non-finite rows.
fn data() -> (Vec<f32>, usize) {
    let g = samples(Dist::Laplace, RANDOM_BLOCKS * COLS, 77);
    let mut x = Vec::with_capacity((RANDOM_BLOCKS + 2 * TENSOR_ROWS) * COLS);
    for (b, blk) in g.chunks(COLS).enumerate() {
        let t = b / TENSOR_ROWS;
        let span = if t.is_multiple_of(2) { 7 } else { 81 };
        let k = (qc_quant::stochastic_bits(5, b as u64) % span) as i32 - (span as i32 - 1) / 2;
        let s = 2f32.powi(k);
        x.extend(blk.iter().map(|v| v * s));
    }
    let adv = adversarial();
    let mut tensor = Vec::new();
    while tensor.len() < TENSOR_ROWS {
        tensor.extend(adv.iter().copied());
    }
    tensor.truncate(TENSOR_ROWS);
    tensor.iter().for_each(|r| x.extend_from_slice(r));
    let mut last = non_finite_rows();
    last.extend(adv.iter().copied());
    while last.len() < TENSOR_ROWS {
        last.push([0.25; COLS]);
    }
    last.truncate(TENSOR_ROWS);
    last.iter().for_each(|r| x.extend_from_slice(r));
    let rows = x.len() / COLS;
    (x, rows)
}

fn quantize_tensors(x: &[f32], rows: usize, fmt: &QuantType) -> Vec<QuantizedTensor> {
    let opts = QuantizeOptions {
        nonfinite: NonFinitePolicy::Propagate,
        ..Default::default()
    };
    (0..rows / TENSOR_ROWS)
        .map(|t| {
            let chunk = &x[t * TENSOR_ROWS * COLS..(t + 1) * TENSOR_ROWS * COLS];
            quantize(chunk, &[TENSOR_ROWS, COLS], fmt, &opts).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn scale_codes(q: &QuantizedTensor) -> &[u8] {
    match &q.scales {
        Scales::Codes(c) => c,
        other => panic!("expected code scales, got {other:?}"),
    }
}

fn formats() -> Vec<(&'static str, QuantType)> {
    let n = |s: &str| named_format(s).unwrap().ty.clone();
    let mut even = n("mxfp4");
    even.rule = ScaleRule::Even;
    let mut spec = n("nvfp4");
    spec.convention = Convention::Spec;
    let mut v: Vec<(&'static str, QuantType)> = [
        "mxfp4",
        "mxfp4_ceil",
        "mxfp4_rceil",
        "mxfp6",
        "mxfp6_e3m2",
        "mxfp8",
        "mxfp8_e5m2",
        "mxint8",
        "nvfp4",
        "nvfp4_torchao",
        "nvfp4_ct",
        "nvfp4_ggml",
        "nvint4",
    ]
    .into_iter()
    .map(|s| (s, n(s)))
    .collect();
    v.push(("mxfp4_even", even));
    v.push(("nvfp4_spec", spec));
    v
}

#[test]
fn block_formats_match_the_spec_reference_with_zero_mismatches() {
    let (x, rows) = data();
    let dir = tempfile::tempdir().unwrap();
    let xp = dir.path().join("x.f32");
    write_f32(&xp, &x);
    let mut report = Vec::new();
    for (name, fmt) in formats() {
        let qs = quantize_tensors(&x, rows, &fmt);
        let codes: Vec<u8> = qs.iter().flat_map(|q| q.codes.iter().copied()).collect();
        let scales: Vec<u8> = qs
            .iter()
            .flat_map(|q| scale_codes(q).iter().copied())
            .collect();
        python(
            "block_reference.py",
            &[
                "spec",
                name,
                xp.to_str().unwrap(),
                &rows.to_string(),
                &COLS.to_string(),
                dir.path().to_str().unwrap(),
            ],
        );
        let want_codes = read_u8(&dir.path().join("codes.u8"));
        let want_scales = read_u8(&dir.path().join("scales.u8"));
        assert_eq!(want_scales.len(), scales.len(), "{name}: scale count");
        assert_eq!(want_codes.len(), codes.len(), "{name}: code count");
        let block = codes.len() / scales.len();
        let nan_scale = |c: u8| {
            if fmt.scale == qc_ir::quant::ScaleType::E8M0 {
                c == 0xff
            } else {
                c & 0x7f == 0x7f
            }
        };
        let (mut bad_s, mut bad_c) = (0usize, 0usize);
        for (i, (&a, &b)) in scales.iter().zip(&want_scales).enumerate() {
            if a != b {
                if bad_s < 3 {
                    let blk = &x[i * block..(i + 1) * block];
                    report.push(format!(
                        "{name}: block {i} scale qc {a:#x} reference {b:#x}; block {blk:?}"
                    ));
                }
                bad_s += 1;
            }
        }
        for (i, (&a, &b)) in codes.iter().zip(&want_codes).enumerate() {
            if a != b && !nan_scale(scales[i / block]) {
                if bad_c < 3 {
                    report.push(format!("{name}: element {i} = {:e} (block scale {:#x}) code qc {a:#x} reference {b:#x}", x[i], scales[i / block]));
                }
                bad_c += 1;
            }
        }
        println!(
            "{name}: {} blocks, {} codes: {bad_s} scale mismatches, {bad_c} code mismatches",
            scales.len(),
            codes.len()
        );
        if bad_s + bad_c > 0 {
            report.push(format!("{name}: {bad_s} scale and {bad_c} code mismatches"));
        }
    }
    assert!(
        report.is_empty(),
        "block formats differ from the spec reference:\n{}",
        report.join("\n")
    );
}

#[test]
fn mxfp4_and_int4_match_the_onnx_reference_evaluator() {
    let (x, rows) = data();
    // ONNX has no NaN policy for blocks: leave out the last (non-finite) tensor.
    let rows = rows - TENSOR_ROWS;
    let x = &x[..rows * COLS];
    let dir = tempfile::tempdir().unwrap();
    let xp = dir.path().join("x.f32");
    write_f32(&xp, x);
    let mut report = Vec::new();
    for kind in ["mxfp4", "int4_g32"] {
        let fmt = named_format(kind).unwrap().ty.clone();
        let qs = quantize_tensors(x, rows, &fmt);
        let codes: Vec<u8> = qs.iter().flat_map(|q| q.codes.iter().copied()).collect();
        let deq: Vec<f32> = qs.iter().flat_map(|q| dequantize(q).unwrap()).collect();
        let scale_bytes: Vec<u8> = qs
            .iter()
            .flat_map(|q| match &q.scales {
                Scales::Codes(c) => c.clone(),
                Scales::F32(v) => v.iter().flat_map(|s| s.to_le_bytes()).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        let sp = dir.path().join("scales.bin");
        std::fs::write(&sp, &scale_bytes).unwrap();
        std::fs::write(dir.path().join("qc_codes.u8"), &codes).unwrap();
        python(
            "block_reference.py",
            &[
                "onnx",
                kind,
                xp.to_str().unwrap(),
                &rows.to_string(),
                &COLS.to_string(),
                sp.to_str().unwrap(),
                dir.path().to_str().unwrap(),
            ],
        );
        let want = read_u8(&dir.path().join("codes.u8"));
        let want_deq: Vec<f32> = read_u8(&dir.path().join("dequant.f32"))
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(want.len(), codes.len(), "{kind}: code count");
        let bad_c = codes.iter().zip(&want).filter(|(a, b)| a != b).count();
        let bad_d = deq
            .iter()
            .zip(&want_deq)
            .filter(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()))
            .count();
        if let Some(i) = codes.iter().zip(&want).position(|(a, b)| a != b) {
            report.push(format!(
                "{kind}: first code mismatch at {i}: x = {:e}, qc {:#x}, onnx {:#x}",
                x[i], codes[i], want[i]
            ));
        }
        println!("{kind}: {} codes: {bad_c} QuantizeLinear mismatches, {bad_d} DequantizeLinear mismatches", codes.len());
        if bad_c + bad_d > 0 {
            report.push(format!(
                "{kind}: {bad_c} code and {bad_d} dequantized-value mismatches"
            ));
        }
    }
    assert!(
        report.is_empty(),
        "differences from the ONNX reference evaluator:\n{}",
        report.join("\n")
    );
}

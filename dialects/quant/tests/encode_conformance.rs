//! Element codecs against the golden decode tables, the simple reference encoder, and ml_dtypes.
//!
//! CI subset (this file): every code of every type decodes as the committed ml_dtypes table says; the
//! fast encoder equals the reference for every type x rounding x saturation on a stratified sample of
//! f32 bit patterns (2^18 patterns for rne, 2^16 for the other modes, one per stride of the bit space
//! with a pseudo-random offset, so every exponent and both signs are covered), plus every rounding
//! midpoint and one ulp either side, plus the special values; and the reference equals ml_dtypes on every
//! midpoint, one ulp either side and 10^7 random f32 bit patterns. The full 2^32 sweep is the bench
//! `cargo bench -p qc-quant --bench encode_sweep` (see docs/CONFORMANCE-formats.md).

mod common;

use common::*;
use qc_ir::quant::{Encoding, InfNan, Rounding, Saturation};
use qc_quant::{stochastic_bits, Codec};

fn golden() -> Vec<(String, u32, Vec<Option<u32>>)> {
    let text =
        std::fs::read_to_string(repo_root().join("dialects/quant/tests/data/decode_tables.txt"))
            .expect("golden tables exist");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().unwrap().to_string();
            let bits: u32 = it.next().unwrap().parse().unwrap();
            let vals = it
                .map(|v| {
                    if v == "nan" {
                        None
                    } else {
                        Some(u32::from_str_radix(v, 16).unwrap())
                    }
                })
                .collect();
            (name, bits, vals)
        })
        .collect()
}

#[test]
fn every_code_decodes_as_the_golden_table_says() {
    let tables = golden();
    let encs = named_encodings();
    assert_eq!(
        tables.len(),
        encs.len(),
        "one golden table per element type"
    );
    for (name, enc) in encs {
        let (_, bits, vals) = tables
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("no golden table for {name}"));
        let c = Codec::new(enc).unwrap();
        assert_eq!(c.bits(), *bits, "{name}");
        for (code, want) in vals.iter().enumerate() {
            let got = c.decode(code as u32);
            match want {
                None => assert!(got.is_nan(), "{name} code {code:#x}: got {got}, want NaN"),
                Some(b) => assert_eq!(
                    got.to_bits(),
                    *b,
                    "{name} code {code:#x}: got {got}, want {}",
                    f32::from_bits(*b)
                ),
            }
        }
    }
}

fn stratified(log2n: u32, seed: u64) -> Vec<f32> {
    let stride = 1u64 << (32 - log2n);
    (0..1u64 << log2n)
        .map(|k| f32::from_bits((k * stride + (stochastic_bits(seed, k) as u64 % stride)) as u32))
        .collect()
}

fn specials() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x40_0000),
        f32::from_bits(0x40_0001),
        1.0,
        -1.0,
    ]
}

#[test]
fn fast_encoder_equals_the_reference_on_the_stratified_subset() {
    let big = stratified(18, 1);
    let small = stratified(16, 2);
    let mut mismatches = Vec::new();
    let mut checked = 0u64;
    for (name, enc) in named_encodings().into_iter().chain(generic_encodings()) {
        let c = Codec::new(enc).unwrap();
        let r = Reference::new(enc);
        let mut extra = r.midpoints();
        extra.extend(specials());
        for round in ROUNDINGS {
            let base = if round == Rounding::Rne { &big } else { &small };
            for sat in SATURATIONS {
                for (i, &x) in base.iter().chain(&extra).enumerate() {
                    let rb = stochastic_bits(99, i as u64);
                    let (a, b) = (c.encode(x, round, sat, rb), r.encode(x, round, sat, rb));
                    checked += 1;
                    if a != b && mismatches.len() < 20 {
                        mismatches.push(format!("{name} {round} {sat}: x = {x:e} ({:#010x}): fast {a:#x}, reference {b:#x}", x.to_bits()));
                    }
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "fast encoder differs from the reference ({checked} checked):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn reference_equals_ml_dtypes_on_midpoints_ulps_and_1e7_random_values() {
    let dir = tempfile::tempdir().unwrap();
    let random = random_bits(10_000_000, 2024);
    let names = [
        "e2m1", "e2m3", "e3m2", "e4m3fn", "e5m2", "e4m3fnuz", "e5m2fnuz", "e4m3", "e3m4", "e8m0",
    ];
    let encs = named_encodings();
    let mut report = Vec::new();
    // One input file per type: its midpoints and neighbours, then the shared random values.
    let mut inputs = Vec::new();
    for name in names {
        let enc = encs.iter().find(|e| e.0 == name).unwrap().1;
        let mut xs = Reference::new(enc).midpoints();
        xs.extend(specials());
        let n_mid = xs.len();
        xs.extend_from_slice(&random);
        let p = dir.path().join(format!("{name}.f32"));
        write_f32(&p, &xs);
        inputs.push((name, enc, xs, n_mid, p));
    }
    for (name, _, _, _, p) in &inputs {
        python(
            "ml_dtypes_encode.py",
            &[p.to_str().unwrap(), dir.path().to_str().unwrap(), name],
        );
    }
    for (name, enc, xs, n_mid, _) in &inputs {
        let oracle = read_u8(&dir.path().join(format!("{name}.u8")));
        assert_eq!(oracle.len(), xs.len(), "{name}: oracle output length");
        let r = Reference::new(*enc);
        let c = Codec::new(*enc).unwrap();
        let no_nan = matches!(enc, Encoding::Float(m) if m.policy == InfNan::None);
        let (mut bad_ref, mut bad_fast, mut n) = (0usize, 0usize, 0usize);
        for (i, (&x, &want)) in xs.iter().zip(&oracle).enumerate() {
            if no_nan && x.is_nan() {
                continue; // documented: qc encodes NaN as +0 where ml_dtypes gives a signed zero
            }
            n += 1;
            let got = r.encode(x, Rounding::Rne, Saturation::Overflow, 0);
            if got != want as u32 {
                if bad_ref < 5 {
                    report.push(format!(
                        "{name}: x = {x:e} ({:#010x}, {}): reference {got:#x}, ml_dtypes {want:#x}",
                        x.to_bits(),
                        if i < *n_mid { "midpoint set" } else { "random" }
                    ));
                }
                bad_ref += 1;
            }
            if c.encode(x, Rounding::Rne, Saturation::Overflow, 0) != want as u32 {
                bad_fast += 1;
            }
        }
        println!("{name}: {n} values, {bad_ref} reference mismatches, {bad_fast} fast-encoder mismatches");
        if bad_fast > 0 {
            report.push(format!(
                "{name}: fast encoder differs from ml_dtypes on {bad_fast} values"
            ));
        }
    }
    assert!(
        report.is_empty(),
        "mismatches against ml_dtypes:\n{}",
        report.join("\n")
    );
}

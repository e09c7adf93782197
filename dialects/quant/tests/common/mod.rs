//! Shared by the conformance tests and the full-sweep bench: the element types under test, a
//! deliberately simple reference encoder, and the bridge to the Python oracles.
#![allow(dead_code)]

use qc_ir::quant::{Encoding, InfNan, Minifloat, Rounding, Saturation};
use qc_quant::Codec;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every element type with a golden table, by the table's name.
pub fn named_encodings() -> Vec<(&'static str, Encoding)> {
    let f = |n: &str| Encoding::from_name(n).unwrap_or_else(|| panic!("unknown encoding {n}"));
    vec![
        ("e2m1", f("e2m1")),
        ("e2m3", f("e2m3")),
        ("e3m2", f("e3m2")),
        ("e4m3fn", f("e4m3fn")),
        ("e5m2", f("e5m2")),
        ("e4m3fnuz", f("e4m3fnuz")),
        ("e5m2fnuz", f("e5m2fnuz")),
        ("e4m3", f("e4m3")),
        ("e3m4", f("e3m4")),
        ("e8m0", Encoding::E8M0),
        ("i2", f("i2")),
        ("u2", f("u2")),
        ("i4", f("i4")),
        ("u4", f("u4")),
        ("i8", f("i8")),
        ("u8", f("u8")),
        ("ue4m3", Encoding::UE4M3),
        ("mxi8", Encoding::MxInt8),
    ]
}

/// Generic minifloats (bias and policy combinations no public library has) checked against the
/// reference only.
pub fn generic_encodings() -> Vec<(&'static str, Encoding)> {
    let m = |e, mb, bias, policy| {
        Encoding::Float(Minifloat {
            exp_bits: e,
            man_bits: mb,
            bias,
            policy,
        })
    };
    vec![
        ("e3m3fn_b2", m(3, 3, 2, InfNan::Fn)),
        ("e5m3fnuz_b12", m(5, 3, 12, InfNan::Fnuz)),
        ("e6m1none_b40", m(6, 1, 40, InfNan::None)),
        ("e2m2ieee_b1", m(2, 2, 1, InfNan::Ieee)),
        ("e4m0fn_b7", m(4, 0, 7, InfNan::Fn)),
        ("e8m7ieee_bf16", m(8, 7, 127, InfNan::Ieee)),
        ("e5m10ieee_f16", m(5, 10, 15, InfNan::Ieee)),
    ]
}

pub const ROUNDINGS: [Rounding; 4] = [
    Rounding::Rne,
    Rounding::TiesAway,
    Rounding::TowardZero,
    Rounding::Stochastic,
];
pub const SATURATIONS: [Saturation; 2] = [Saturation::SatFinite, Saturation::Overflow];

/// The deliberately simple reference encoder: a search over the sorted table of finite values.
pub struct Reference {
    enc: Encoding,
    /// (value, code) of every finite non-negative value (minifloats, e8m0) or every finite value
    /// (integers), sorted by value, one code per value (+0 for zero).
    vals: Vec<(f64, u32)>,
    bits: u32,
}

impl Reference {
    pub fn new(enc: Encoding) -> Self {
        let codec = Codec::new(enc).unwrap();
        let bits = codec.bits();
        let signmag = matches!(enc, Encoding::Float(_) | Encoding::UE4M3);
        let mut vals: Vec<(f64, u32)> = Vec::new();
        for code in 0..(1u32 << bits) {
            let v = codec.decode(code) as f64;
            if !v.is_finite() {
                continue;
            }
            if signmag && (code >> (bits - 1)) == 1 {
                continue;
            }
            if matches!(enc, Encoding::UE4M3) && code >= 0x80 {
                continue;
            }
            vals.push((v, code));
        }
        vals.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
        vals.dedup_by(|a, b| a.0 == b.0);
        Reference { enc, vals, bits }
    }

    fn policy(&self) -> InfNan {
        match self.enc {
            Encoding::Float(m) => m.policy,
            Encoding::UE4M3 => InfNan::Fn,
            _ => InfNan::None,
        }
    }

    fn mag_bits(&self) -> u32 {
        match self.enc {
            Encoding::UE4M3 => 7,
            _ => self.bits - 1,
        }
    }

    /// The code for `x` (see qc_quant::codec for the contract being checked).
    pub fn encode(&self, x: f32, r: Rounding, s: Saturation, rbits: u32) -> u32 {
        match self.enc {
            Encoding::Float(_) | Encoding::UE4M3 => self.encode_signmag(x, r, s, rbits),
            Encoding::E8M0 => self.encode_e8m0(x, r, s, rbits),
            Encoding::Int { .. } | Encoding::MxInt8 => self.encode_int(x, r, s, rbits),
        }
    }

    /// Index of the largest table value <= v (v >= the first value).
    fn floor_idx(&self, v: f64) -> usize {
        let mut lo = 0usize;
        let mut hi = self.vals.len();
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.vals[mid].0 <= v {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn up(r: Rounding, lo: f64, hi: f64, v: f64, lo_even: bool, rbits: u32) -> bool {
        let mid = (lo + hi) / 2.0;
        match r {
            Rounding::Rne => v > mid || (v == mid && !lo_even),
            Rounding::TiesAway => v >= mid,
            Rounding::TowardZero => false,
            Rounding::Stochastic => (((v - lo) / (hi - lo)) * 4294967296.0).floor() > rbits as f64,
        }
    }

    fn encode_signmag(&self, x: f32, r: Rounding, s: Saturation, rbits: u32) -> u32 {
        let x = if matches!(self.enc, Encoding::UE4M3) {
            x.abs()
        } else {
            x
        };
        let mb = self.mag_bits();
        let sign = if x.is_sign_negative() { 1u32 } else { 0 };
        let pol = self.policy();
        let (max_v, max_code) = *self.vals.last().unwrap();
        let nan = match pol {
            InfNan::Ieee => {
                let m = match self.enc {
                    Encoding::Float(m) => m.man_bits as u32,
                    _ => 3,
                };
                (sign << mb) | (max_code + 1) | (1 << m.saturating_sub(1))
            }
            InfNan::Fn => (sign << mb) | (max_code + 1),
            InfNan::Fnuz => 1 << mb,
            InfNan::None => 0,
        };
        let overflow = match pol {
            InfNan::Ieee | InfNan::Fn => (sign << mb) | (max_code + 1),
            InfNan::Fnuz => 1 << mb,
            InfNan::None => (sign << mb) | max_code,
        };
        if x.is_nan() {
            return nan;
        }
        let sat = (sign << mb) | max_code;
        if x.is_infinite() {
            return if s == Saturation::SatFinite {
                sat
            } else {
                overflow
            };
        }
        let v = (x as f64).abs();
        let i = self.floor_idx(v);
        let (lo, lo_code) = self.vals[i];
        let code = if lo == v {
            lo_code
        } else {
            // The next value: the table's, or beyond max the value the next code would have with an
            // unbounded exponent (max plus one quantum of its binade).
            let (hi, hi_code) = if i + 1 < self.vals.len() {
                self.vals[i + 1]
            } else {
                (max_v + self.top_quantum(max_v), max_code + 1)
            };
            // "Even" is the code's last mantissa bit; with no mantissa bits a normal significand is 1
            // (odd), so ties round up, as ml_dtypes does for e8m0.
            let m0 = matches!(self.enc, Encoding::Float(m) if m.man_bits == 0);
            let lo_even = if m0 && lo > 0.0 {
                false
            } else {
                lo_code % 2 == 0
            };
            if Self::up(r, lo, hi, v, lo_even, rbits) {
                if hi_code > max_code {
                    return if s == Saturation::SatFinite {
                        sat
                    } else {
                        overflow
                    };
                }
                hi_code
            } else {
                lo_code
            }
        };
        if code == 0 && pol == InfNan::Fnuz {
            return 0;
        }
        (sign << mb) | code
    }

    /// One quantum of the top binade: 2^(floor(log2 max) - mantissa bits).
    fn top_quantum(&self, max_v: f64) -> f64 {
        let m = match self.enc {
            Encoding::Float(m) => m.man_bits as i32,
            _ => 3,
        };
        2f64.powi(max_v.log2().floor() as i32 - m)
    }

    fn encode_e8m0(&self, x: f32, r: Rounding, s: Saturation, rbits: u32) -> u32 {
        if x.is_nan() || (x < 0.0) {
            return 0xff;
        }
        if x == 0.0 {
            return if s == Saturation::SatFinite { 0 } else { 0xff };
        }
        if x.is_infinite() {
            return if s == Saturation::SatFinite {
                0xfe
            } else {
                0xff
            };
        }
        let v = x as f64;
        let min = self.vals[0].0;
        if v <= min {
            return 0;
        }
        let i = self.floor_idx(v);
        let (lo, lo_code) = self.vals[i];
        if lo == v {
            return lo_code;
        }
        let hi = lo * 2.0;
        let up = match r {
            // ml_dtypes: ties up; below 2^-126 (f32 subnormals) anything above 2^-127 rounds up.
            Rounding::Rne | Rounding::TiesAway => {
                if lo == min {
                    true
                } else {
                    v >= (lo + hi) / 2.0
                }
            }
            Rounding::TowardZero => false,
            Rounding::Stochastic => (((v - lo) / (hi - lo)) * 4294967296.0).floor() > rbits as f64,
        };
        if !up {
            return lo_code;
        }
        if lo_code + 1 > 0xfe {
            return if s == Saturation::SatFinite || r == Rounding::TowardZero {
                0xfe
            } else {
                0xff
            };
        }
        lo_code + 1
    }

    fn encode_int(&self, x: f32, r: Rounding, s: Saturation, rbits: u32) -> u32 {
        if x.is_nan() {
            return 0;
        }
        let (mut vals, step): (Vec<(f64, u32)>, f64) = (
            self.vals.clone(),
            if self.enc == Encoding::MxInt8 {
                1.0 / 64.0
            } else {
                1.0
            },
        );
        let signed = !matches!(self.enc, Encoding::Int { signed: false, .. });
        if s == Saturation::SatFinite && signed {
            let lowest = vals[0].0;
            vals.retain(|v| v.0 != lowest);
        }
        let v = x as f64;
        if v <= vals[0].0 {
            return vals[0].1;
        }
        if v >= vals.last().unwrap().0 {
            return vals.last().unwrap().1;
        }
        let mut i = 0;
        while vals[i + 1].0 <= v {
            i += 1;
        }
        let (lo, lo_code) = vals[i];
        if lo == v {
            return lo_code;
        }
        let (hi, hi_code) = vals[i + 1];
        let mid = (lo + hi) / 2.0;
        let lo_even = ((lo / step).round() as i64) % 2 == 0;
        let up = match r {
            Rounding::Rne => v > mid || (v == mid && !lo_even),
            Rounding::TiesAway => {
                if v >= 0.0 {
                    v >= mid
                } else {
                    v > mid
                }
            }
            Rounding::TowardZero => v < 0.0,
            Rounding::Stochastic => (((v - lo) / (hi - lo)) * 4294967296.0).floor() > rbits as f64,
        };
        if up {
            hi_code
        } else {
            lo_code
        }
    }

    /// Every rounding midpoint between adjacent values, and one f32 ulp either side, both signs.
    pub fn midpoints(&self) -> Vec<f32> {
        let mut out = Vec::new();
        let mut push = |m: f64| {
            let m = m as f32;
            for b in [m.to_bits().wrapping_sub(1), m.to_bits(), m.to_bits() + 1] {
                let f = f32::from_bits(b);
                out.push(f);
                out.push(-f);
            }
        };
        for w in self.vals.windows(2) {
            push((w[0].0 + w[1].0) / 2.0);
            push(w[0].0);
        }
        if let Some(&(b, _)) = self.vals.last() {
            let q = if matches!(self.enc, Encoding::Float(_) | Encoding::UE4M3) {
                self.top_quantum(b)
            } else {
                b
            };
            push(b + q / 2.0);
            push(b + q);
        }
        out.retain(|v| !v.is_nan());
        out
    }
}

/// Runs a script of scripts/quant/ with python3, failing with a clear message when python3 or the
/// oracles (numpy, ml_dtypes, onnx) are missing. Returns stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let root = repo_root();
    let check = Command::new("python3")
        .arg("-c")
        .arg("import numpy, ml_dtypes, onnx")
        .output();
    match check {
        Err(e) => panic!("python3 is required for the format conformance tests and could not be run ({e}); run .ci/install-python.sh"),
        Ok(o) if !o.status.success() => panic!(
            "the format conformance tests need numpy, ml_dtypes >= 0.5.1 and onnx; run .ci/install-python.sh\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
    let out = Command::new("python3")
        .arg(root.join("scripts/quant").join(script))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "scripts/quant/{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

pub fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write a scratch file");
}

pub fn read_u8(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// splitmix64-based deterministic f32 bit patterns.
pub fn random_bits(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| f32::from_bits(qc_quant::stochastic_bits(seed, i)))
        .collect()
}

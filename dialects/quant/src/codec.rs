//! Element codecs: one code <-> one f32, for every [`Encoding`].
//!
//! # Decoding
//! [`Codec::decode`] is a table lookup (the table holds every code's value as f32). A minifloat whose
//! values are not all representable in f32 (a generic eXmY with an extreme bias) decodes to the nearest
//! f32 (round to nearest even, overflow to infinity).
//!
//! # Encoding
//! [`Codec::encode`] rounds an f32 to a code with one of four [`Rounding`] modes and one of two
//! [`Saturation`] modes. Minifloats use one integer algorithm for every (exponent, mantissa, bias,
//! policy): the input's significand is shifted to the target's quantum at the input's binade (or at the
//! subnormal quantum), rounded, and the rounded count is added to the binade's first code, so a
//! mantissa carry moves to the next binade for free.
//!
//! Rounding:
//! - `rne`: nearest, ties to the even significand (bit-identical to ml_dtypes `astype` for every minifloat
//!   it has). With no mantissa bits a normal significand is 1, which is odd, so ties round up.
//! - `ties_away`: nearest, ties away from zero (the MX reference's "nearest").
//! - `toward_zero`: truncation of the magnitude.
//! - `stochastic`: rounds the magnitude up with probability equal to the fraction of a quantum it is
//!   above the lower neighbour. The caller passes 32 random bits per element; [`stochastic_bits`] makes
//!   them from a seed and the element's index, so a run is reproducible and order-independent.
//!
//! Saturation and special inputs (x is the input, max the largest finite magnitude):
//!
//! | input | satfinite | overflow (the format's own rule; ml_dtypes-compatible with rne) |
//! |---|---|---|
//! | rounds above max | +-max | ieee: +-Inf; fn: +-NaN; fnuz: NaN (0x80); none: +-max |
//! | +-Inf | +-max | as above |
//! | NaN | ieee/fn: NaN with x's sign; fnuz: 0x80; none: +0 | same |
//! | -0 or rounds to zero | signed zero; fnuz: +0 | same |
//!
//! With `toward_zero` nothing rounds above max, so finite inputs clamp to +-max in both modes (IEEE's
//! round-toward-zero overflow rule); infinities follow the table. Formats with no NaN (e2m1, e2m3, e3m2,
//! policy none) encode NaN as +0; ml_dtypes gives a signed zero whose sign is the opposite of the NaN's,
//! which qc deliberately does not copy. The whole-tensor API refuses NaN by default (see
//! `tensor::NonFinitePolicy`), so this choice only matters to callers of the codec itself.
//!
//! Integers (`iN`, `uN`): the rounded integer is clamped to the symmetric range +-(2^(n-1)-1) (signed)
//! or [0, 2^n-1] (unsigned) under satfinite, and to the full two's-complement range [-2^(n-1), 2^(n-1)-1]
//! under overflow (ONNX QuantizeLinear's clamp). NaN encodes as 0. MX int8 (`mxi8`) encodes x * 64 the
//! same way as `i8`.
//!
//! e8m0 (unsigned, 2^(code-127), 0xFF NaN): `rne` and `ties_away` round a normal f32 to the nearer power
//! of two with ties up (there is no mantissa to be even), and an f32 subnormal above 2^-127 to 2^-126,
//! exactly as ml_dtypes `float8_e8m0fnu` does. Zero encodes as 0x00 (2^-127) under satfinite and as NaN
//! under overflow; negative values and NaN are NaN; values above 2^127 saturate to 0xFE or become NaN.
//!
//! ue4m3 (the NVFP4 block scale): encodes |x| as e4m3fn (sign bit 0); decodes ignoring the sign bit.

use qc_ir::quant::{Encoding, InfNan, Minifloat, Rounding, Saturation};

/// 32 pseudo-random bits for element `index` of a stochastic rounding run with `seed`: a counter-based
/// hash (two rounds of splitmix64), so results do not depend on evaluation order or threading.
#[inline]
pub fn stochastic_bits(seed: u64, index: u64) -> u32 {
    let a = splitmix64(seed ^ 0x9E37_79B9_7F4A_7C15);
    (splitmix64(a ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 32) as u32
}

#[inline]
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The parameters of a minifloat's encoder, precomputed.
#[derive(Clone, Copy, Debug)]
struct FloatParams {
    man: u32,
    /// 1 - bias: the exponent of the smallest normal binade.
    emin: i32,
    /// Bits of the magnitude (exponent + mantissa).
    mag_bits: u32,
    /// Largest finite magnitude code.
    max_mag: u32,
    policy: InfNan,
}

impl FloatParams {
    fn new(m: &Minifloat) -> Self {
        let mag_bits = m.exp_bits as u32 + m.man_bits as u32;
        let all = (1u32 << mag_bits) - 1;
        let max_mag = match m.policy {
            InfNan::Ieee => (((1u32 << m.exp_bits) - 1) << m.man_bits) - 1,
            InfNan::Fn => all - 1,
            InfNan::Fnuz | InfNan::None => all,
        };
        FloatParams {
            man: m.man_bits as u32,
            emin: 1 - m.bias,
            mag_bits,
            max_mag,
            policy: m.policy,
        }
    }

    fn sign_bit(&self) -> u32 {
        1 << self.mag_bits
    }

    /// The code for NaN with the given sign (0 or 1).
    fn nan(&self, sign: u32) -> u32 {
        match self.policy {
            InfNan::Ieee => {
                (sign << self.mag_bits) | (self.max_mag + 1) | (1 << self.man.saturating_sub(1))
            }
            InfNan::Fn => (sign << self.mag_bits) | (self.max_mag + 1),
            InfNan::Fnuz => self.sign_bit(),
            InfNan::None => 0,
        }
    }

    /// The code for an overflowing magnitude under the format's own rule.
    fn overflow(&self, sign: u32) -> u32 {
        match self.policy {
            InfNan::Ieee => (sign << self.mag_bits) | (self.max_mag + 1),
            InfNan::Fn => (sign << self.mag_bits) | (self.max_mag + 1),
            InfNan::Fnuz => self.sign_bit(),
            InfNan::None => (sign << self.mag_bits) | self.max_mag,
        }
    }

    #[inline(always)]
    fn encode<const R: u8, const SAT: bool>(&self, x: f32, rbits: u32) -> u32 {
        let bits = x.to_bits();
        let sign = bits >> 31;
        let a = bits & 0x7fff_ffff;
        if a >= 0x7f80_0000 {
            if a > 0x7f80_0000 {
                return self.nan(sign);
            }
            return if SAT {
                (sign << self.mag_bits) | self.max_mag
            } else {
                self.overflow(sign)
            };
        }
        let (e, sig, exp2) = if a >= 0x0080_0000 {
            let e = (a >> 23) as i32 - 127;
            (e, ((a & 0x7f_ffff) | 0x80_0000) as u64, e - 23)
        } else if a == 0 {
            return self.signed_zero(sign);
        } else {
            (31 - a.leading_zeros() as i32 - 149, a as u64, -149)
        };
        let eb = if e > self.emin { e } else { self.emin };
        let q = eb - self.man as i32;
        let shift = q - exp2;
        let n: u64 = if shift <= 0 {
            sig << (-shift) as u32
        } else if shift > 40 {
            // Below half a quantum: only stochastic rounding can round up, with probability sig / 2^shift.
            let up = match R {
                STOCHASTIC => {
                    let s = shift - 32;
                    let frac = if s >= 64 { 0 } else { sig >> s };
                    frac > rbits as u64
                }
                _ => false,
            };
            up as u64
        } else {
            let sh = shift as u32;
            let n = sig >> sh;
            let rem = sig & ((1u64 << sh) - 1);
            let half = 1u64 << (sh - 1);
            let up = match R {
                RNE => rem > half || (rem == half && (n & 1) == 1),
                TIES_AWAY => rem >= half,
                TOWARD_ZERO => false,
                _ => {
                    let frac = if sh <= 32 {
                        rem << (32 - sh)
                    } else {
                        rem >> (sh - 32)
                    };
                    frac > rbits as u64
                }
            };
            n + up as u64
        };
        let mag = (((eb - self.emin) as u64) << self.man) + n;
        if mag > self.max_mag as u64 {
            if SAT || R == TOWARD_ZERO {
                return (sign << self.mag_bits) | self.max_mag;
            }
            return self.overflow(sign);
        }
        if mag == 0 {
            return self.signed_zero(sign);
        }
        (sign << self.mag_bits) | mag as u32
    }

    #[inline(always)]
    fn signed_zero(&self, sign: u32) -> u32 {
        if self.policy == InfNan::Fnuz {
            0
        } else {
            sign << self.mag_bits
        }
    }

    fn decode(&self, code: u32, bias: i32) -> f32 {
        let sign = (code >> self.mag_bits) & 1;
        let mag = code & ((1 << self.mag_bits) - 1);
        let s: f64 = if sign == 1 { -1.0 } else { 1.0 };
        match self.policy {
            InfNan::Fnuz if code == self.sign_bit() => return f32::NAN,
            InfNan::Fn if mag == self.max_mag + 1 => return f32::NAN,
            InfNan::Ieee if mag == self.max_mag + 1 => return (s * f64::INFINITY) as f32,
            InfNan::Ieee if mag > self.max_mag + 1 => return f32::NAN,
            _ => {}
        }
        let exp = mag >> self.man;
        let mant = mag & ((1 << self.man) - 1);
        let v = if exp == 0 {
            mant as f64 * pow2(1 - bias - self.man as i32)
        } else {
            ((1u64 << self.man) + mant as u64) as f64 * pow2(exp as i32 - bias - self.man as i32)
        };
        (s * v) as f32
    }
}

fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// Rounding modes as const-generic parameters of the inner loops.
const RNE: u8 = 0;
const TIES_AWAY: u8 = 1;
const TOWARD_ZERO: u8 = 2;
const STOCHASTIC: u8 = 3;

fn round_id(r: Rounding) -> u8 {
    match r {
        Rounding::Rne => RNE,
        Rounding::TiesAway => TIES_AWAY,
        Rounding::TowardZero => TOWARD_ZERO,
        Rounding::Stochastic => STOCHASTIC,
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Float(FloatParams, i32),
    E8M0,
    UE4M3(FloatParams),
    Int { bits: u32, signed: bool },
    MxInt8,
}

/// The encoder and decoder of one [`Encoding`]. Building one allocates its decode table (2^bits f32s);
/// encoding and decoding allocate nothing.
#[derive(Clone, Debug)]
pub struct Codec {
    encoding: Encoding,
    kind: Kind,
    bits: u32,
    table: Vec<f32>,
}

impl Codec {
    /// A codec for `encoding`. Minifloats may be up to 16 bits wide (so f16 is `Minifloat::ieee(5, 10)`);
    /// the error names the problem when the encoding is out of range.
    pub fn new(encoding: Encoding) -> Result<Self, crate::QuantError> {
        let (kind, bits) = match encoding {
            Encoding::Float(m) => {
                qc_ir::quant::validate_minifloat(&m).map_err(crate::QuantError::InvalidFormat)?;
                (Kind::Float(FloatParams::new(&m), m.bias), m.bits())
            }
            Encoding::E8M0 => (Kind::E8M0, 8),
            Encoding::UE4M3 => {
                let Encoding::Float(m) = Encoding::E4M3FN else {
                    unreachable!("E4M3FN is a minifloat")
                };
                (Kind::UE4M3(FloatParams::new(&m)), 8)
            }
            Encoding::Int { bits, signed } => {
                if !(1..=8).contains(&bits) || (signed && bits < 2) {
                    return Err(crate::QuantError::InvalidFormat(format!(
                        "integer encoding {encoding} is out of range (2 to 8 bits signed, 1 to 8 unsigned)"
                    )));
                }
                (
                    Kind::Int {
                        bits: bits as u32,
                        signed,
                    },
                    bits as u32,
                )
            }
            Encoding::MxInt8 => (Kind::MxInt8, 8),
        };
        let mut c = Codec {
            encoding,
            kind,
            bits,
            table: Vec::new(),
        };
        c.table = (0..1u32 << bits).map(|code| c.decode_slow(code)).collect();
        Ok(c)
    }

    /// The encoding this codec implements.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Bits per code.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The value of every code, indexed by code (length 2^bits).
    pub fn table(&self) -> &[f32] {
        &self.table
    }

    /// The value of `code`. Bits above the element width are ignored.
    #[inline]
    pub fn decode(&self, code: u32) -> f32 {
        self.table[(code & ((1 << self.bits) - 1)) as usize]
    }

    fn decode_slow(&self, code: u32) -> f32 {
        match self.kind {
            Kind::Float(p, bias) => p.decode(code, bias),
            Kind::UE4M3(p) => p.decode(code & 0x7f, 7),
            Kind::E8M0 if code == 0xff => f32::NAN,
            Kind::E8M0 => pow2(code as i32 - 127) as f32,
            Kind::Int { bits, signed } => int_value(code, bits, signed) as f32,
            Kind::MxInt8 => int_value(code, 8, true) as f32 / 64.0,
        }
    }

    /// Encodes one value. `rbits` are the 32 random bits used by stochastic rounding (ignored otherwise;
    /// see [`stochastic_bits`]).
    #[inline]
    pub fn encode(&self, x: f32, round: Rounding, sat: Saturation, rbits: u32) -> u32 {
        match (round_id(round), sat == Saturation::SatFinite) {
            (RNE, true) => self.encode_g::<RNE, true>(x, rbits),
            (RNE, false) => self.encode_g::<RNE, false>(x, rbits),
            (TIES_AWAY, true) => self.encode_g::<TIES_AWAY, true>(x, rbits),
            (TIES_AWAY, false) => self.encode_g::<TIES_AWAY, false>(x, rbits),
            (TOWARD_ZERO, true) => self.encode_g::<TOWARD_ZERO, true>(x, rbits),
            (TOWARD_ZERO, false) => self.encode_g::<TOWARD_ZERO, false>(x, rbits),
            (_, true) => self.encode_g::<STOCHASTIC, true>(x, rbits),
            (_, false) => self.encode_g::<STOCHASTIC, false>(x, rbits),
        }
    }

    /// Encodes `xs[i] * mul` into `out[i]` for every i (`mul` = 1 for a plain conversion). Stochastic
    /// rounding draws element i's bits from `stochastic_bits(seed, index0 + i)`. Codes are truncated to
    /// u8, so the encoding must be at most 8 bits wide. Panics if the slices differ in length.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_scaled(
        &self,
        xs: &[f32],
        mul: f32,
        out: &mut [u8],
        round: Rounding,
        sat: Saturation,
        seed: u64,
        index0: u64,
    ) {
        assert_eq!(
            xs.len(),
            out.len(),
            "encode_scaled: input and output lengths differ"
        );
        macro_rules! run {
            ($r:expr, $s:expr) => {{
                if $r == STOCHASTIC {
                    for (i, (o, &x)) in out.iter_mut().zip(xs).enumerate() {
                        *o = self
                            .encode_g::<$r, $s>(x * mul, stochastic_bits(seed, index0 + i as u64))
                            as u8;
                    }
                } else {
                    for (o, &x) in out.iter_mut().zip(xs) {
                        *o = self.encode_g::<$r, $s>(x * mul, 0) as u8;
                    }
                }
            }};
        }
        match (round_id(round), sat == Saturation::SatFinite) {
            (RNE, true) => run!(RNE, true),
            (RNE, false) => run!(RNE, false),
            (TIES_AWAY, true) => run!(TIES_AWAY, true),
            (TIES_AWAY, false) => run!(TIES_AWAY, false),
            (TOWARD_ZERO, true) => run!(TOWARD_ZERO, true),
            (TOWARD_ZERO, false) => run!(TOWARD_ZERO, false),
            (_, true) => run!(STOCHASTIC, true),
            (_, false) => run!(STOCHASTIC, false),
        }
    }

    /// Like [`Codec::encode_scaled`] but divides: `out[i] = encode(xs[i] / div)` (the ModelOpt and spec
    /// NVFP4 arithmetic, where `div` is not a power of two and so `x / d` and `x * (1/d)` differ).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_divided(
        &self,
        xs: &[f32],
        div: f32,
        out: &mut [u8],
        round: Rounding,
        sat: Saturation,
        seed: u64,
        index0: u64,
    ) {
        assert_eq!(
            xs.len(),
            out.len(),
            "encode_divided: input and output lengths differ"
        );
        macro_rules! run {
            ($r:expr, $s:expr) => {{
                for (i, (o, &x)) in out.iter_mut().zip(xs).enumerate() {
                    let rb = if $r == STOCHASTIC {
                        stochastic_bits(seed, index0 + i as u64)
                    } else {
                        0
                    };
                    *o = self.encode_g::<$r, $s>(x / div, rb) as u8;
                }
            }};
        }
        match (round_id(round), sat == Saturation::SatFinite) {
            (RNE, true) => run!(RNE, true),
            (RNE, false) => run!(RNE, false),
            (TIES_AWAY, true) => run!(TIES_AWAY, true),
            (TIES_AWAY, false) => run!(TIES_AWAY, false),
            (TOWARD_ZERO, true) => run!(TOWARD_ZERO, true),
            (TOWARD_ZERO, false) => run!(TOWARD_ZERO, false),
            (_, true) => run!(STOCHASTIC, true),
            (_, false) => run!(STOCHASTIC, false),
        }
    }

    #[inline(always)]
    fn encode_g<const R: u8, const SAT: bool>(&self, x: f32, rbits: u32) -> u32 {
        match self.kind {
            Kind::Float(p, _) => p.encode::<R, SAT>(x, rbits),
            Kind::UE4M3(p) => p.encode::<R, SAT>(f32::from_bits(x.to_bits() & 0x7fff_ffff), rbits),
            Kind::E8M0 => encode_e8m0::<R, SAT>(x, rbits),
            Kind::Int { bits, signed } => encode_int::<R, SAT>(x, bits, signed, rbits),
            Kind::MxInt8 => encode_int::<R, SAT>(x * 64.0, 8, true, rbits),
        }
    }
}

/// Rounds `x` to an integer-valued f32 with `round` (`rbits` as in [`Codec::encode`]); NaN stays NaN.
#[inline]
pub fn round_to_int(x: f32, round: Rounding, rbits: u32) -> f32 {
    match round {
        Rounding::Rne => x.round_ties_even(),
        Rounding::TiesAway => x.round(),
        Rounding::TowardZero => x.trunc(),
        Rounding::Stochastic => {
            let fl = x.floor();
            let frac = ((x - fl) as f64 * 4294967296.0) as u64;
            if frac > rbits as u64 {
                fl + 1.0
            } else {
                fl
            }
        }
    }
}

/// f32 to IEEE binary16 bits, round to nearest even, overflow to infinity, NaN to a quiet NaN.
pub fn f32_to_f16_bits(x: f32) -> u16 {
    const P: FloatParams = FloatParams {
        man: 10,
        emin: -14,
        mag_bits: 15,
        max_mag: (31 << 10) - 1,
        policy: InfNan::Ieee,
    };
    P.encode::<RNE, false>(x, 0) as u16
}

/// IEEE binary16 bits to f32 (exact).
pub fn f16_bits_to_f32(h: u16) -> f32 {
    const P: FloatParams = FloatParams {
        man: 10,
        emin: -14,
        mag_bits: 15,
        max_mag: (31 << 10) - 1,
        policy: InfNan::Ieee,
    };
    P.decode(h as u32, 15)
}

/// f32 to bfloat16 bits, round to nearest even, NaN to a quiet NaN.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let lsb = (b >> 16) & 1;
    ((b + 0x7fff + lsb) >> 16) as u16
}

/// bfloat16 bits to f32 (exact).
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

fn int_value(code: u32, bits: u32, signed: bool) -> i32 {
    let c = (code & ((1 << bits) - 1)) as i32;
    if signed && c >= 1 << (bits - 1) {
        c - (1 << bits)
    } else {
        c
    }
}

#[inline(always)]
fn encode_int<const R: u8, const SAT: bool>(x: f32, bits: u32, signed: bool, rbits: u32) -> u32 {
    if x.is_nan() {
        return 0;
    }
    let r = match R {
        RNE => x.round_ties_even(),
        TIES_AWAY => x.round(),
        TOWARD_ZERO => x.trunc(),
        _ => {
            let fl = x.floor();
            let frac = ((x - fl) as f64 * 4294967296.0) as u64;
            if frac > rbits as u64 {
                fl + 1.0
            } else {
                fl
            }
        }
    };
    let (lo, hi) = match (signed, SAT) {
        (true, true) => (-((1i32 << (bits - 1)) - 1), (1i32 << (bits - 1)) - 1),
        (true, false) => (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1),
        (false, _) => (0, (1i32 << bits) - 1),
    };
    let v = r.clamp(lo as f32, hi as f32) as i32;
    (v as u32) & ((1u32 << bits) - 1)
}

#[inline(always)]
fn encode_e8m0<const R: u8, const SAT: bool>(x: f32, rbits: u32) -> u32 {
    let b = x.to_bits();
    if x.is_nan() || (b >> 31 == 1 && x != 0.0) {
        return 0xff;
    }
    let a = b & 0x7fff_ffff;
    if a == 0 {
        return if SAT { 0 } else { 0xff };
    }
    if a == 0x7f80_0000 {
        return if SAT { 0xfe } else { 0xff };
    }
    let code: u32 = if a < 0x0080_0000 {
        // f32 subnormal: 2^-127 is code 0, 2^-126 code 1.
        let up = match R {
            RNE | TIES_AWAY => a > 0x40_0000,
            TOWARD_ZERO => false,
            _ => {
                // Linear interpolation between 2^-127 (0x400000) and 2^-126 (0x800000).
                a > 0x40_0000 && (((a - 0x40_0000) as u64) << 10) > rbits as u64
            }
        };
        up as u32
    } else {
        let e = a >> 23;
        let m = a & 0x7f_ffff;
        let up = match R {
            RNE | TIES_AWAY => m >= 0x40_0000,
            TOWARD_ZERO => false,
            _ => ((m as u64) << 9) > rbits as u64,
        };
        e + up as u32
    };
    if code > 0xfe {
        return if SAT || R == TOWARD_ZERO { 0xfe } else { 0xff };
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(e: Encoding, x: f32) -> u32 {
        Codec::new(e)
            .unwrap()
            .encode(x, Rounding::Rne, Saturation::Overflow, 0)
    }

    #[test]
    fn known_codes() {
        assert_eq!(enc(Encoding::E2M1, 5.0), 0x6);
        assert_eq!(enc(Encoding::E2M1, 0.25), 0x0);
        assert_eq!(enc(Encoding::E2M1, 0.75), 0x2);
        assert_eq!(enc(Encoding::E2M1, -100.0), 0xf);
        assert_eq!(enc(Encoding::E4M3FN, 464.0), 0x7e);
        assert_eq!(enc(Encoding::E4M3FN, 464.1), 0x7f);
        assert_eq!(enc(Encoding::E4M3FN, 480.0), 0x7f);
        assert_eq!(enc(Encoding::E5M2, 61440.0), 0x7c);
        assert_eq!(enc(Encoding::E8M0, 3.0), 0x81);
        assert_eq!(enc(Encoding::E8M0, 0.0), 0xff);
        let c = Codec::new(Encoding::E4M3FN).unwrap();
        assert_eq!(c.encode(1e9, Rounding::Rne, Saturation::SatFinite, 0), 0x7e);
        assert_eq!(c.decode(0x7e), 448.0);
        assert!(c.decode(0x7f).is_nan());
    }

    #[test]
    fn stochastic_rounding_is_unbiased_on_average() {
        let c = Codec::new(Encoding::E2M1).unwrap();
        let x = 2.25f32; // a quarter of the way from 2 to 3
        let n = 100_000u64;
        let sum: f64 = (0..n)
            .map(|i| {
                c.decode(c.encode(
                    x,
                    Rounding::Stochastic,
                    Saturation::SatFinite,
                    stochastic_bits(7, i),
                )) as f64
            })
            .sum();
        assert!(
            (sum / n as f64 - 2.25).abs() < 0.01,
            "mean {}",
            sum / n as f64
        );
    }
}

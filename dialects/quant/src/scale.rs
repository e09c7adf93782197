//! Scale computation: MX shared exponents (FLOOR / CEIL / RCEIL / EVEN), NVFP4-style two-level ue4m3
//! scales in each public convention, and the power-of-two scale constraints of ZeroQuant-FP and LLM-FP4.
//!
//! Every function here is exact f32 arithmetic in a documented order, so that results are bit-identical
//! to the implementation each convention names.

use crate::codec::Codec;
use qc_ir::quant::{Convention, Encoding, Minifloat, Rounding, Saturation, ScaleRule};
use std::sync::OnceLock;

/// floor(log2(x)) for a finite x > 0 (exact, including f32 subnormals).
pub fn floor_log2(x: f32) -> i32 {
    let a = x.to_bits() & 0x7fff_ffff;
    if a >= 0x0080_0000 {
        (a >> 23) as i32 - 127
    } else {
        31 - a.leading_zeros() as i32 - 149
    }
}

/// ceil(log2(x)) for a finite x > 0 (exact).
pub fn ceil_log2(x: f32) -> i32 {
    let f = floor_log2(x);
    if pow2_f32(f) == x.abs() {
        f
    } else {
        f + 1
    }
}

/// 2^e as f32 for e in [-149, 127] (exact); 0 below, infinity above.
pub fn pow2_f32(e: i32) -> f32 {
    if e > 127 {
        f32::INFINITY
    } else if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else if e >= -149 {
        f32::from_bits(1u32 << (e + 149))
    } else {
        0.0
    }
}

/// emax_elem of the MX spec: floor(log2(largest finite element)): 2 for e2m1 and e2m3, 4 for e3m2, 8 for
/// e4m3fn, 15 for e5m2, 0 for mxi8, n-2 for an n-bit signed integer.
pub fn emax_elem(elem: &Encoding) -> i32 {
    floor_log2(elem.max_finite() as f32)
}

/// Mantissa bits the EVEN rule rounds the block maximum to: the minifloat's mantissa width, 6 for mxi8,
/// n-2 for an n-bit integer.
pub fn elem_mbits(elem: &Encoding) -> u32 {
    match elem {
        Encoding::Float(m) => m.man_bits as u32,
        Encoding::MxInt8 => 6,
        Encoding::Int { bits, .. } => (*bits as u32).saturating_sub(2),
        Encoding::E8M0 => 0,
        Encoding::UE4M3 => 3,
    }
}

/// The MX shared exponent E (scale 2^E, stored as the e8m0 code E + 127) of a block with maximum
/// magnitude `amax`, or None for a NaN scale (code 0xFF).
///
/// - FLOOR (OCP MX v1.0 and its reference code): E = floor(log2(amax)) - emax_elem; an all-zero block
///   uses amax = 2^-126 (the reference adds FP32_MIN_NORMAL); E > 127 or a non-finite amax is NaN;
///   E < -127 clamps to -127.
/// - CEIL (ModelOpt MXFP4): E = ceil(log2(r)) with r = amax / max_elem rounded to f32 (division); r = 0
///   gives -127; E is clamped to [-127, 127]; non-finite amax is NaN. ModelOpt evaluates log2 in floating
///   point, which can differ from the exact ceil when r is within a few ulps above a power of two; qc uses
///   the exact value.
/// - RCEIL (cuBLAS, TransformerEngine, `cvt.rp.satfinite.ue8m0x2.f32`): r = amax * rcp, rcp = 1/max_elem
///   rounded to f32 (a multiplication, as the hardware recipes do), rounded up to a power of two and
///   saturated to [2^-127, 2^127]; only NaN gives NaN (Inf saturates to 2^127).
/// - EVEN (torchao `ScaleCalculationMode.EVEN`): amax's f32 bits are rounded to the element's mantissa
///   width (add half an element ulp, clear the f32 mantissa), then FLOOR's formula; a result above 127 (or
///   an amax that rounds to infinity) is NaN; below -127 clamps.
/// - `amax` (not a power-of-two rule) is None.
pub fn mx_exponent(amax: f32, rule: ScaleRule, elem: &Encoding) -> Option<i32> {
    if amax.is_nan() {
        return None;
    }
    let amax = amax.abs();
    let emax = emax_elem(elem);
    let max_elem = elem.max_finite() as f32;
    let e = match rule {
        ScaleRule::Amax => return None,
        ScaleRule::Floor => {
            if amax.is_infinite() {
                return None;
            }
            let a = if amax == 0.0 { f32::MIN_POSITIVE } else { amax };
            floor_log2(a) - emax
        }
        ScaleRule::Ceil => {
            if amax.is_infinite() {
                return None;
            }
            let r = amax / max_elem;
            if r == 0.0 {
                -127
            } else if r.is_infinite() {
                return None;
            } else {
                ceil_log2(r)
            }
        }
        ScaleRule::Rceil => {
            let r = amax * (1.0f32 / max_elem);
            if r == 0.0 {
                -127
            } else if r.is_infinite() {
                127
            } else {
                ceil_log2(r).min(127)
            }
        }
        ScaleRule::Even => {
            let add = 1u32 << (23 - elem_mbits(elem) - 1);
            let rounded = f32::from_bits((amax.to_bits() + add) & 0xff80_0000);
            if rounded.is_infinite() {
                return None;
            }
            if rounded == 0.0 {
                -127
            } else {
                floor_log2(rounded) - emax
            }
        }
    };
    if e > 127 {
        return None;
    }
    Some(e.max(-127))
}

/// The e8m0 code of an MX exponent: E + 127, or 0xFF for None.
pub fn e8m0_code(e: Option<i32>) -> u8 {
    e.map_or(0xff, |e| (e + 127) as u8)
}

/// How the second-level (per-tensor) scale of a two-level format is held, with its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TensorScaleValue {
    /// Single-level: no tensor scale.
    None,
    /// ModelOpt / TensorRT-LLM: gs = amax / (max_elem * 448); block totals are s_b * gs.
    Divisor(f32),
    /// compressed-tensors: gr = (max_elem * 448) / amax; block totals are s_b / gr.
    Reciprocal(f32),
}

impl TensorScaleValue {
    /// The tensor scale of a two-level format from the tensor's amax, stored as `kind` says. An amax of
    /// zero (or a non-finite amax) gives a tensor scale of 1 (or NaN for NaN).
    pub fn from_amax(kind: qc_ir::quant::TensorScale, amax: f32, max_elem: f32) -> Self {
        let denom = max_elem * 448.0;
        let usable = amax != 0.0 && amax.is_finite();
        match kind {
            qc_ir::quant::TensorScale::None => TensorScaleValue::None,
            qc_ir::quant::TensorScale::Divisor => TensorScaleValue::Divisor(if amax.is_nan() {
                f32::NAN
            } else if usable {
                amax / denom
            } else {
                1.0
            }),
            qc_ir::quant::TensorScale::Reciprocal => {
                TensorScaleValue::Reciprocal(if amax.is_nan() {
                    f32::NAN
                } else if usable {
                    denom / amax
                } else {
                    1.0
                })
            }
        }
    }

    /// The stored f32, if any.
    pub fn stored(&self) -> Option<f32> {
        match *self {
            TensorScaleValue::None => None,
            TensorScaleValue::Divisor(v) | TensorScaleValue::Reciprocal(v) => Some(v),
        }
    }
}

fn e4m3() -> &'static Codec {
    static C: OnceLock<Codec> = OnceLock::new();
    C.get_or_init(|| Codec::new(Encoding::E4M3FN).expect("e4m3fn is a valid encoding"))
}

/// The ue4m3 code of a block scale, from the block's maximum magnitude, per convention:
///
/// - spec (FORMATS.md): s = amax_b / (max_elem * gs), encoded RNE (satfinite); a zero code becomes 1.0.
/// - modelopt (NVFP4QTensor.get_weights_scaling_factor): s = amax_b / (max_elem * gs); s = 0 becomes
///   1.0; s is raised to at least 2^-9; then cast to e4m3fn RNE with torch's overflow rule (NaN).
/// - torchao (nvfp4_quantize / the Triton kernel): s = (amax_b / max_elem) / gs, clamped to
///   [2^-6, 448], cast RNE.
/// - any convention with a reciprocal tensor scale (compressed-tensors): s = gr * (amax_b / max_elem);
///   0 becomes 1.0; cast RNE (satfinite).
///
/// Single-level formats use gs = 1. The products and quotients are f32 in the order written.
pub fn ue4m3_block_code(amax_b: f32, conv: Convention, ts: TensorScaleValue, max_elem: f32) -> u8 {
    let c = e4m3();
    let enc = |s: f32, sat| c.encode(s, Rounding::Rne, sat, 0) as u8 & 0x7f;
    let one = 0x38u8;
    match (ts, conv) {
        (TensorScaleValue::Reciprocal(gr), _) => {
            let s = gr * (amax_b / max_elem);
            if s == 0.0 {
                one
            } else {
                enc(s, Saturation::SatFinite)
            }
        }
        (ts, Convention::Torchao) => {
            let gs = match ts {
                TensorScaleValue::Divisor(g) => g,
                _ => 1.0,
            };
            let s = (amax_b / max_elem) / gs;
            let s = if s.is_nan() {
                s
            } else {
                s.clamp(pow2_f32(-6), 448.0)
            };
            enc(s, Saturation::SatFinite)
        }
        (ts, Convention::ModelOpt) => {
            let gs = match ts {
                TensorScaleValue::Divisor(g) => g,
                _ => 1.0,
            };
            let mut s = amax_b / (max_elem * gs);
            if s == 0.0 {
                s = 1.0;
            }
            if s < pow2_f32(-9) {
                s = pow2_f32(-9);
            }
            enc(s, Saturation::Overflow)
        }
        (ts, Convention::Spec) => {
            let gs = match ts {
                TensorScaleValue::Divisor(g) => g,
                _ => 1.0,
            };
            let code = enc(amax_b / (max_elem * gs), Saturation::SatFinite);
            if code == 0 {
                one
            } else {
                code
            }
        }
    }
}

/// The f32 a block's elements are divided by (and its codes multiplied by): s_b * gs, s_b / gr, or s_b.
pub fn ue4m3_block_total(code: u8, ts: TensorScaleValue) -> f32 {
    let sb = e4m3().decode((code & 0x7f) as u32);
    match ts {
        TensorScaleValue::None => sb,
        TensorScaleValue::Divisor(gs) => sb * gs,
        TensorScaleValue::Reciprocal(gr) => sb / gr,
    }
}

/// ZeroQuant-FP's first constraint: each scale rounded up to a power of two (never down, so no value
/// that fit before is clipped). Non-positive or non-finite scales are left as they are.
pub fn pow2_scales_ceil(scales: &mut [f32]) {
    for s in scales.iter_mut() {
        if *s > 0.0 && s.is_finite() {
            *s = pow2_f32(ceil_log2(*s));
        }
    }
}

/// ZeroQuant-FP's second constraint: the group scales of one channel as power-of-two multiples of one
/// channel scale, so FP4 -> FP8 conversion is an exponent shift. Returns the channel scale (the smallest
/// positive group scale, itself rounded up to a power of two) and, per group, k with
/// group scale = channel * 2^k >= the original group scale. Groups with a zero scale get k = 0.
pub fn zeroquant_fp_group_scales(group_scales: &[f32]) -> (f32, Vec<i32>) {
    let min = group_scales
        .iter()
        .copied()
        .filter(|s| *s > 0.0 && s.is_finite())
        .fold(f32::INFINITY, f32::min);
    if !min.is_finite() {
        return (1.0, vec![0; group_scales.len()]);
    }
    let channel = pow2_f32(ceil_log2(min));
    let ks = group_scales
        .iter()
        .map(|&g| {
            if g > 0.0 && g.is_finite() {
                ceil_log2(g / channel).max(0)
            } else {
                0
            }
        })
        .collect();
    (channel, ks)
}

/// LLM-FP4's per-channel exponent bias: for each activation channel's maximum magnitude, the integer b_c
/// with 2^(b_c) nearest (in log2, ties up) to amax_c / reference, so that X diag(2^-b) has channels of
/// similar range. Channels with a zero or non-finite amax get 0.
pub fn llmfp4_channel_exponents(channel_amax: &[f32], reference: f32) -> Vec<i32> {
    channel_amax
        .iter()
        .map(|&a| {
            if a > 0.0 && a.is_finite() && reference > 0.0 && reference.is_finite() {
                ((a as f64 / reference as f64).log2() + 0.5).floor() as i32
            } else {
                0
            }
        })
        .collect()
}

/// Applies LLM-FP4's reparameterization to a [rows = channels, cols] weight matrix (row-major): row c is
/// multiplied by 2^(b_c), exactly (a shift of that row's exponent). The matching activation transform
/// divides input channel c by 2^(b_c). Errors if the sizes disagree.
pub fn llmfp4_fold_into_weight_rows(
    w: &mut [f32],
    cols: usize,
    exps: &[i32],
) -> Result<(), crate::QuantError> {
    if cols == 0 || w.len() != exps.len() * cols {
        return Err(crate::QuantError::Unsupported(format!(
            "weight of {} values is not {} rows of {cols}",
            w.len(),
            exps.len()
        )));
    }
    for (row, &b) in w.chunks_mut(cols).zip(exps) {
        let f = 2f32.powi(b);
        for v in row {
            *v *= f;
        }
    }
    Ok(())
}

/// A minifloat whose values are those of `m` times 2^b: the same codes with the exponent bias lowered by
/// b (LLM-FP4's per-channel bias as a format).
pub fn shift_bias(m: Minifloat, b: i32) -> Minifloat {
    Minifloat {
        bias: m.bias - b,
        ..m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_rules_on_known_values() {
        let e = Encoding::E2M1;
        assert_eq!(mx_exponent(6.0, ScaleRule::Floor, &e), Some(0));
        assert_eq!(mx_exponent(7.9, ScaleRule::Floor, &e), Some(0));
        assert_eq!(mx_exponent(7.9, ScaleRule::Ceil, &e), Some(1));
        assert_eq!(mx_exponent(6.0, ScaleRule::Ceil, &e), Some(0));
        assert_eq!(mx_exponent(0.0, ScaleRule::Floor, &e), Some(-127));
        assert_eq!(mx_exponent(f32::INFINITY, ScaleRule::Floor, &e), None);
        assert_eq!(
            mx_exponent(f32::MAX, ScaleRule::Floor, &Encoding::MxInt8),
            Some(127)
        );
        assert_eq!(mx_exponent(f32::INFINITY, ScaleRule::Rceil, &e), Some(127));
        // EVEN: 7.0 rounds (1 mantissa bit) to 8.0 -> E = 3 - 2 = 1; 5.0 stays in [4, 8) -> 0.
        assert_eq!(mx_exponent(7.0, ScaleRule::Even, &e), Some(1));
        assert_eq!(mx_exponent(5.0, ScaleRule::Even, &e), Some(0));
    }

    #[test]
    fn pow2_helpers() {
        assert_eq!(pow2_f32(-149), f32::from_bits(1));
        assert_eq!(ceil_log2(3.0), 2);
        assert_eq!(floor_log2(f32::from_bits(1)), -149);
        let (c, ks) = zeroquant_fp_group_scales(&[0.3, 1.0, 0.26]);
        assert_eq!(c, 0.5);
        assert_eq!(ks, vec![0, 1, 0]);
        let mut w = vec![1.0, 2.0, 3.0, 4.0];
        llmfp4_fold_into_weight_rows(&mut w, 2, &[1, -1]).unwrap();
        assert_eq!(w, vec![2.0, 4.0, 1.5, 2.0]);
    }
}

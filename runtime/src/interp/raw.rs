//! Raw minifloat tensors (ONNX FLOAT8*, FLOAT4E2M1, FLOAT6*, FLOAT8E8M0) and conversions with ONNX's
//! exact semantics.
//!
//! A tensor of element type `ElemType::Raw(enc)` holds one code per element in `Data::I`. Conversions
//! follow the ONNX reference (onnx.reference, which uses ml_dtypes): to float8 with `saturate`, values are
//! clipped to the finite range, then rounded to nearest even (NaN stays NaN); without it, the format's own
//! overflow rule applies; FP4 / FP6 clamp (they have no Inf or NaN) and map NaN to a zero whose sign is the
//! NaN's inverted (ml_dtypes' behavior); e8m0 uses ONNX's exponent rounding (`up`, `nearest`, `down`)
//! on the float32 bits. Integers: floats truncate toward zero and wrap to the width (NumPy's astype).

use qc_ir::quant::{Encoding, Rounding, Saturation};
use qc_ir::types::ElemType;
use qc_quant::codec::Codec;

use super::tensor::{round_to, wrap, Data, Tensor};

fn codec(enc: Encoding) -> Result<Codec, String> {
    Codec::new(enc).map_err(|e| e.to_string())
}

/// The value of every code of a raw tensor, as f64.
pub fn decode(t: &Tensor) -> Result<Vec<f64>, String> {
    let ElemType::Raw(enc) = t.elem else {
        return Err("not a raw tensor".into());
    };
    let c = codec(enc)?;
    Ok((0..t.len())
        .map(|i| c.decode(t.data.i(i) as u32) as f64)
        .collect())
}

/// ONNX's float32 to e8m0 conversion (onnx.numpy_helper.to_float8e8m0).
pub fn f32_to_e8m0(x: f32, saturate: bool, round_mode: &str) -> Result<u8, String> {
    let bits = x.to_bits();
    let exp = (bits >> 23) & 0xFF;
    if exp == 0xFF {
        return Ok(0xFF);
    }
    let up = match round_mode {
        "up" => bits & 0x7F_FFFF != 0,
        "nearest" => {
            let (g, r, s, lsb) = (
                bits & 0x40_0000 != 0,
                bits & 0x20_0000 != 0,
                bits & 0x1F_FFFF != 0,
                exp > 0,
            );
            g && (r || s || lsb)
        }
        "down" => false,
        other => {
            return Err(format!(
                "unknown round_mode '{other}' (expected up, nearest, down)"
            ))
        }
    };
    let up = up && !(saturate && exp == 0xFE);
    Ok((exp + up as u32) as u8)
}

/// Encodes one value into `enc` with ONNX semantics.
pub fn encode_onnx(
    c: &Codec,
    enc: Encoding,
    v: f64,
    saturate: bool,
    round_mode: &str,
) -> Result<i64, String> {
    let x = v as f32;
    Ok(match enc {
        Encoding::E8M0 => f32_to_e8m0(x, saturate, round_mode)? as i64,
        Encoding::Float(m) if m.bits() == 8 => {
            let sat = if saturate {
                Saturation::SatFinite
            } else {
                Saturation::Overflow
            };
            c.encode(x, Rounding::Rne, sat, 0) as i64
        }
        Encoding::Float(m) if x.is_nan() => {
            // ml_dtypes: NaN into a format without NaN is a zero with the NaN's sign inverted.

            if x.is_sign_negative() {
                0
            } else {
                1i64 << (m.bits() - 1)
            }
        }
        _ => c.encode(x, Rounding::Rne, Saturation::Overflow, 0) as i64,
    })
}

/// Casts `x` to `to` where either side is a raw minifloat, with ONNX semantics (see the module docs).
pub fn cast(x: &Tensor, to: &ElemType, saturate: bool, round_mode: &str) -> Result<Data, String> {
    let values: Vec<f64> = match &x.elem {
        ElemType::Raw(_) => decode(x)?,
        _ => (0..x.len()).map(|i| x.data.f(i)).collect(),
    };
    Ok(match to {
        ElemType::Raw(enc) => {
            let c = codec(*enc)?;
            Data::I(
                values
                    .iter()
                    .map(|&v| encode_onnx(&c, *enc, v, saturate, round_mode))
                    .collect::<Result<_, _>>()?,
            )
        }
        ElemType::Int { bits, unsigned } => Data::I(
            values
                .iter()
                .map(|&v| float_to_int(v, *bits, *unsigned))
                .collect(),
        ),
        e => Data::F(values.iter().map(|&v| round_to(e, v)).collect()),
    })
}

/// NumPy's float to integer astype: truncation toward zero, then wrapping to the width; NaN and values
/// outside the 64-bit range give the x86 "integer indefinite" (i64::MIN) before wrapping; to i1, nonzero
/// (NaN included) is true.
pub fn float_to_int(v: f64, bits: u8, unsigned: bool) -> i64 {
    if bits == 1 {
        return (v != 0.0) as i64;
    }
    let t = if v.is_finite() && v.abs() < 9.2e18 {
        v.trunc() as i64
    } else {
        i64::MIN
    };
    wrap(t, bits, unsigned)
}

/// Builds a raw tensor from decoded values (each must be representable; used for constants).
pub fn from_values(values: &[f64], shape: Vec<usize>, enc: Encoding) -> Result<Tensor, String> {
    let c = codec(enc)?;
    let codes = values
        .iter()
        .map(|&v| encode_onnx(&c, enc, v, true, "nearest"))
        .collect::<Result<_, _>>()?;
    Ok(Tensor::new(shape, ElemType::Raw(enc), Data::I(codes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_rounding_follows_onnx() {
        assert_eq!(f32_to_e8m0(1.0, true, "up").unwrap(), 127);
        assert_eq!(f32_to_e8m0(1.5, true, "up").unwrap(), 128);
        assert_eq!(f32_to_e8m0(1.5, true, "down").unwrap(), 127);
        assert_eq!(f32_to_e8m0(1.5, true, "nearest").unwrap(), 128);
        assert_eq!(f32_to_e8m0(1.25, true, "nearest").unwrap(), 127);
        assert_eq!(f32_to_e8m0(f32::INFINITY, true, "up").unwrap(), 255);
        assert_eq!(f32_to_e8m0(f32::MAX, true, "up").unwrap(), 254);
        assert_eq!(f32_to_e8m0(f32::MAX, false, "up").unwrap(), 255);
    }

    #[test]
    fn ints_truncate_and_wrap_like_numpy() {
        let got: Vec<i64> = [-9.7, -2.5, 15.9, 20.0, f64::NAN]
            .iter()
            .map(|&v| float_to_int(v, 4, false))
            .collect();
        assert_eq!(got, vec![7, -2, -1, 4, 0]);
        assert_eq!(float_to_int(-2.5, 4, true), 14);
    }

    #[test]
    fn fp4_nan_is_an_inverted_sign_zero_and_overflow_clamps() {
        let c = Codec::new(Encoding::E2M1).unwrap();
        assert_eq!(
            encode_onnx(&c, Encoding::E2M1, f64::NAN, true, "up").unwrap(),
            8
        );
        assert_eq!(
            encode_onnx(&c, Encoding::E2M1, 20.0, false, "up").unwrap(),
            7
        );
        let c8 = Codec::new(Encoding::E4M3FN).unwrap();
        assert_eq!(
            encode_onnx(&c8, Encoding::E4M3FN, 1e9, true, "up").unwrap(),
            0x7E
        );
        assert_eq!(
            encode_onnx(&c8, Encoding::E4M3FN, 1e9, false, "up").unwrap(),
            0x7F
        );
    }
}

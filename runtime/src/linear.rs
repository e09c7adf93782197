//! ONNX's linear quantization with given scales (QuantizeLinear, DequantizeLinear,
//! DynamicQuantizeLinear), bit-exact with the ONNX reference implementation.
//!
//! Scales (and zero points) apply per tensor (one value), per `axis` (1-D, one per index along the axis)
//! or per block (the input's rank, `ceil(n / block_size)` along the axis). x / scale is computed in the
//! type NumPy would promote the two to (f32 unless both are f16, both bf16, or either f64), then rounded
//! half to even; integers add the zero point and clip to the type's range; float8 saturates to the finite
//! range when `saturate` (else the format's overflow rule); FP4 / FP6 add the (decoded) zero point and
//! clamp. Dequantization computes (x - zero point) * scale in f32 (float8 and FP4 zero points are
//! ignored) and rounds to the result type.

use qc_ir::quant::Encoding;
use qc_ir::types::ElemType;
use qc_quant::codec::Codec;

use crate::interp::raw::{decode, encode_onnx};
use crate::interp::{round_to, strides, Data, Tensor};

/// For each element of `x`, the index of its scale.
fn scale_index(x: &[usize], scale: &Tensor, axis: i64, block: i64) -> Result<Vec<usize>, String> {
    let n: usize = x.iter().product();
    if scale.len() == 1 && block == 0 {
        return Ok(vec![0; n]);
    }
    let a = qc_nn::norm_axis(axis, x.len())?;
    let xs = strides(x);
    if block == 0 {
        return Ok((0..n).map(|f| f / xs[a] % x[a]).collect());
    }
    let ss = strides(&scale.shape);
    Ok((0..n)
        .map(|f| {
            (0..x.len())
                .map(|d| {
                    let c = f / xs[d] % x[d];
                    (if d == a { c / block as usize } else { c }) * ss[d]
                })
                .sum()
        })
        .collect())
}

fn values(t: &Tensor) -> Result<Vec<f64>, String> {
    match t.elem {
        ElemType::Raw(_) => decode(t),
        _ => Ok((0..t.len()).map(|i| t.data.f(i)).collect()),
    }
}

/// The float type NumPy computes `a op b` in.
fn promoted(a: &ElemType, b: &ElemType) -> ElemType {
    match (a, b) {
        (ElemType::F64, _) | (_, ElemType::F64) => ElemType::F64,
        (ElemType::F16, ElemType::F16) => ElemType::F16,
        (ElemType::BF16, ElemType::BF16) => ElemType::BF16,
        _ => ElemType::F32,
    }
}

/// QuantizeLinear.
pub fn quantize(
    x: &Tensor,
    scale: &Tensor,
    zp: &Tensor,
    axis: i64,
    block: i64,
    saturate: bool,
    out: &ElemType,
) -> Result<Tensor, String> {
    let idx = scale_index(&x.shape, scale, axis, block)?;
    let (sv, zv) = (values(scale)?, values(zp)?);
    let calc = promoted(&x.elem, &scale.elem);
    let data = match out {
        ElemType::Int { bits, unsigned } => {
            let (lo, hi) = if *unsigned {
                (0, (1i64 << bits) - 1)
            } else {
                (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
            };
            Data::I(
                (0..x.len())
                    .map(|i| {
                        let q = round_to(&calc, x.data.f(i) / sv[idx[i]]).round_ties_even();
                        // NumPy's rint then astype(int32): NaN and overflow give i32::MIN.
                        let qi = if q.is_finite() && q.abs() < 2147483648.0 {
                            q as i64
                        } else {
                            i32::MIN as i64
                        };
                        (qi + zp.data.i(idx[i])).clamp(lo, hi)
                    })
                    .collect(),
            )
        }
        ElemType::Raw(enc) => {
            let c = Codec::new(*enc).map_err(|e| e.to_string())?;
            let fp8 = matches!(enc, Encoding::Float(m) if m.bits() == 8);
            Data::I(
                (0..x.len())
                    .map(|i| {
                        let mut v = round_to(&calc, x.data.f(i) / sv[idx[i]]);
                        if !fp8 {
                            v = round_to(&ElemType::F32, v + zv[idx[i]]);
                        }
                        encode_onnx(&c, *enc, v, saturate || !fp8, "up")
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        e => return Err(format!("cannot quantize to {e}")),
    };
    Ok(Tensor::new(x.shape.clone(), out.clone(), data))
}

/// DequantizeLinear.
pub fn dequantize(
    x: &Tensor,
    scale: &Tensor,
    zp: &Tensor,
    axis: i64,
    block: i64,
    out: &ElemType,
) -> Result<Tensor, String> {
    let idx = scale_index(&x.shape, scale, axis, block)?;
    let sv = values(scale)?;
    let xv = values(x)?;
    let use_zp = matches!(x.elem, ElemType::Int { .. });
    let prod: Vec<f64> = (0..x.len())
        .map(|i| {
            let dx = if use_zp {
                (x.data.i(i) - zp.data.i(idx[i])) as f32 as f64
            } else {
                xv[i] as f32 as f64
            };
            round_to(&promoted(&ElemType::F32, &scale.elem), dx * sv[idx[i]])
        })
        .collect();
    let data = match out {
        ElemType::Raw(enc) => {
            let c = Codec::new(*enc).map_err(|e| e.to_string())?;
            Data::I(
                prod.iter()
                    .map(|&v| encode_onnx(&c, *enc, v, false, "up"))
                    .collect::<Result<_, _>>()?,
            )
        }
        e => Data::F(prod.iter().map(|&v| round_to(e, v)).collect()),
    };
    Ok(Tensor::new(x.shape.clone(), out.clone(), data))
}

/// DynamicQuantizeLinear: (uint8 codes, f32 scale, uint8 zero point).
pub fn dynamic_quantize(x: &Tensor) -> Result<Vec<Tensor>, String> {
    let f = |v: f64| v as f32;
    let (mut mx, mut mn) = (0f32, 0f32);
    for i in 0..x.len() {
        let v = f(x.data.f(i));
        mx = mx.max(v);
        mn = mn.min(v);
    }
    let scale = (if mx == mn { 1.0 } else { mx - mn }) / 255.0f32;
    let zp = (0.0f32 - mn / scale).clamp(0.0, 255.0).round_ties_even();
    let u8t = ElemType::Int {
        bits: 8,
        unsigned: true,
    };
    let codes = (0..x.len())
        .map(|i| ((f(x.data.f(i)) / scale).round_ties_even() + zp).clamp(0.0, 255.0) as i64)
        .collect();
    Ok(vec![
        Tensor::new(x.shape.clone(), u8t.clone(), Data::I(codes)),
        Tensor::new(vec![], ElemType::F32, Data::F(vec![scale as f64])),
        Tensor::new(vec![], u8t, Data::I(vec![zp as i64])),
    ])
}

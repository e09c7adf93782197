//! The quant dialect's ops: explicit quantization, dequantization and quantized matrix products.
//!
//! The format is never an attribute: it is the element type of the quantized tensor, so the verifier and
//! every pass see it in the types.

use qc_ir::ops::{opt, req, AttrKind, OpCtx, OpDef};
use qc_ir::types::ElemType;
use qc_ir::types::TensorType;

qc_ir::declare_ops! {
    /// The quant dialect's ops.
    pub enum QuantOp in "quant";
    /// Quantizes a float tensor to the result's quantized element type. Scales are computed from the data,
    /// except with `amax` (a static, calibrated maximum |x|, finite and >= 0): a per-tensor format takes
    /// its one scale from it and a two-level format (nvfp4) its tensor scale, and values beyond saturate
    /// per the format's saturation; block scales still come from the data (a block whose maximum exceeds
    /// `amax` is scaled as if it were `amax`). Formats with only block, group or channel scales ignore it.
    /// `seed` seeds stochastic rounding.
    Quantize = "quantize" { operands: Exactly(1), results: Exactly(1), attrs: [opt("seed", AttrKind::Int), opt("amax", AttrKind::Float)], pure: true, verify: verify_quantize },
    /// Decodes a quantized tensor to the result's float element type.
    Dequantize = "dequantize" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_dequantize },
    /// ONNX QuantizeLinear: x / scale rounded to nearest even (plus the zero point for integers), saturated
    /// to the result type (an integer or a raw minifloat, the zero point's type). Scales are per tensor,
    /// per `axis`, or blocks of `block_size` along `axis`.
    QuantizeLinear = "quantize_linear" { operands: Exactly(3), results: Exactly(1), attrs: [req("axis", AttrKind::Int), opt("block_size", AttrKind::Int), opt("saturate", AttrKind::Int)], pure: true, verify: verify_quantize_linear },
    /// ONNX DequantizeLinear: (x - zero point) * scale, in the result's float type (zero points of
    /// minifloat inputs are ignored, as ONNX does).
    DequantizeLinear = "dequantize_linear" { operands: Exactly(3), results: Exactly(1), attrs: [req("axis", AttrKind::Int), opt("block_size", AttrKind::Int)], pure: true, verify: verify_dequantize_linear },
    /// ONNX DynamicQuantizeLinear: uint8 codes, their f32 scale and uint8 zero point, from the data's range.
    DynamicQuantizeLinear = "dynamic_quantize_linear" { operands: Exactly(1), results: Exactly(3), attrs: [], pure: true, verify: verify_dynamic_quantize_linear },
    /// Activations [..., M, K] times quantized weights [K, N] ([N, K] with `transpose_b`), float result.
    /// The activation is a float tensor of the result's type, or a quantized tensor (from
    /// `quant.quantize`) that is decoded to the result's float type first.
    Matmul = "matmul" { operands: Exactly(2), results: Exactly(1), attrs: [opt("transpose_b", AttrKind::Unit)], pure: true, verify: verify_qmatmul },
    /// An online rotation: the last axis (length `n`) multiplied on the right by the orthonormal,
    /// symmetric block-diagonal Walsh-Hadamard matrix `H_{n,block}` ([`crate::hadamard`]); `block` is a
    /// power of two dividing `n`. Same float type in and out.
    Hadamard = "hadamard" { operands: Exactly(1), results: Exactly(1), attrs: [req("block", AttrKind::Int)], pure: true, verify: verify_hadamard },
}

/// The quant dialect's op definitions, for [`qc_ir::Registry::register`].
pub fn dialect() -> &'static [OpDef] {
    QuantOp::DEFS
}

fn same_dims(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a.dims == b.dims {
        Ok(())
    } else {
        Err(format!("operand {a} and result {b} differ in shape"))
    }
}

fn verify_quantize(cx: &OpCtx) -> Result<(), String> {
    let (a, r) = (cx.operand_ty(0), cx.result_ty(0));
    if !a.elem.is_float() {
        return Err(format!("quantize takes a float tensor, not {a}"));
    }
    if r.elem.as_quant().is_none() {
        return Err(format!("quantize must produce a quantized tensor, not {r}"));
    }
    if let Some(amax) = cx.attr("amax").and_then(qc_ir::attr::Attribute::as_f64) {
        if !(amax.is_finite() && amax >= 0.0) {
            return Err(format!("amax must be finite and >= 0, not {amax}"));
        }
    }
    same_dims(a, r)
}

fn verify_dequantize(cx: &OpCtx) -> Result<(), String> {
    let (a, r) = (cx.operand_ty(0), cx.result_ty(0));
    if a.elem.as_quant().is_none() {
        return Err(format!("dequantize takes a quantized tensor, not {a}"));
    }
    if !r.elem.is_float() {
        return Err(format!("dequantize must produce a float tensor, not {r}"));
    }
    same_dims(a, r)
}

fn verify_hadamard(cx: &OpCtx) -> Result<(), String> {
    let (a, r) = (cx.operand_ty(0), cx.result_ty(0));
    if !a.elem.is_float() || a.elem != r.elem {
        return Err(format!(
            "hadamard maps a float tensor to the same type, not {a} to {r}"
        ));
    }
    same_dims(a, r)?;
    let block = cx
        .attr("block")
        .and_then(qc_ir::attr::Attribute::as_int)
        .unwrap_or(0);
    if block <= 0 || !(block as u64).is_power_of_two() {
        return Err(format!("block {block} is not a positive power of two"));
    }
    match a.dims.last() {
        None => Err("hadamard needs a tensor of rank >= 1".into()),
        Some(qc_ir::types::Dim::Static(n)) if n % block as u64 != 0 => Err(format!(
            "block {block} does not divide the last dimension {n}"
        )),
        _ => Ok(()),
    }
}

fn verify_qmatmul(cx: &OpCtx) -> Result<(), String> {
    let (x, w, r) = (cx.operand_ty(0), cx.operand_ty(1), cx.result_ty(0));
    let quantized_x = x.elem.as_quant().is_some();
    if !x.elem.is_float() && !quantized_x {
        return Err(format!(
            "the activation operand must be a float or quantized tensor, not {x}"
        ));
    }
    if quantized_x && !r.elem.is_float() {
        return Err(format!(
            "with a quantized activation the result must be a float tensor, not {r}"
        ));
    }
    if w.elem.as_quant().is_none() {
        return Err(format!(
            "the weight operand must be a quantized tensor, not {w}"
        ));
    }
    if w.rank() != 2 {
        return Err(format!(
            "the weight operand must have rank 2, not {}",
            w.rank()
        ));
    }
    let dims = qc_nn::shape::matmul(&x.dims, &w.dims, cx.attr("transpose_b").is_some())?;
    let expected = TensorType {
        dims,
        elem: if quantized_x {
            r.elem.clone()
        } else {
            x.elem.clone()
        },
    };
    if qc_nn::shape::type_matches(&expected, r) {
        Ok(())
    } else {
        Err(format!(
            "result type {r} does not match the inferred {expected}"
        ))
    }
}

fn is_code_type(e: &ElemType) -> bool {
    matches!(e, ElemType::Int { bits, .. } if *bits > 1) || matches!(e, ElemType::Raw(_))
}

/// Checks the scale (and zero point) shapes of a linear (de)quantization against `x`.
fn check_linear_params(cx: &OpCtx, x: &TensorType) -> Result<(), String> {
    let (scale, zp) = (cx.operand_ty(1), cx.operand_ty(2));
    if !(scale.elem.is_float() || matches!(scale.elem, ElemType::Raw(_))) {
        return Err(format!("the scale must be a float tensor, not {scale}"));
    }
    // ONNX pairs a scalar scale with a one-element zero point and the like: the element counts must agree.
    if zp.dims != scale.dims
        && (zp.num_elements().is_none() || zp.num_elements() != scale.num_elements())
    {
        return Err(format!(
            "the zero point {zp} and the scale {scale} differ in shape"
        ));
    }
    let axis = cx.attr("axis").and_then(|a| a.as_int()).unwrap_or(1);
    let block = cx.attr("block_size").and_then(|a| a.as_int()).unwrap_or(0);
    if scale.num_elements() == Some(1) && block == 0 {
        return Ok(());
    }
    let a = qc_nn::norm_axis(axis, x.rank())?;
    if block == 0 {
        if scale.rank() != 1 {
            return Err(format!("a per-axis scale must be 1-D, not {scale}"));
        }
        if let (Some(n), Some(s)) = (x.dims[a].as_static(), scale.dims[0].as_static()) {
            if n != s {
                return Err(format!("the scale has {s} entries but axis {a} has {n}"));
            }
        }
        return Ok(());
    }
    if block < 0 || scale.rank() != x.rank() {
        return Err(format!("blocked scales need the input's rank and a positive block_size, not {scale} and {block}"));
    }
    for (d, (xd, sd)) in x.dims.iter().zip(&scale.dims).enumerate() {
        if let (Some(n), Some(s)) = (xd.as_static(), sd.as_static()) {
            let want = if d == a { n.div_ceil(block as u64) } else { n };
            if s != want {
                return Err(format!(
                    "blocked scale dimension {d} is {s}, expected {want}"
                ));
            }
        }
    }
    Ok(())
}

fn verify_quantize_linear(cx: &OpCtx) -> Result<(), String> {
    let (x, r) = (cx.operand_ty(0), cx.result_ty(0));
    if !x.elem.is_float() {
        return Err(format!("quantize_linear takes a float tensor, not {x}"));
    }
    if !is_code_type(&r.elem) || r.elem != cx.operand_ty(2).elem {
        return Err(format!(
            "the result must be an integer or minifloat type equal to the zero point's, not {}",
            r.elem
        ));
    }
    check_linear_params(cx, x)?;
    same_dims(x, r)
}

fn verify_dequantize_linear(cx: &OpCtx) -> Result<(), String> {
    let (x, r) = (cx.operand_ty(0), cx.result_ty(0));
    if !is_code_type(&x.elem) {
        return Err(format!(
            "dequantize_linear takes integer or minifloat codes, not {x}"
        ));
    }
    if !(r.elem.is_float() || matches!(r.elem, ElemType::Raw(_))) {
        return Err(format!(
            "dequantize_linear produces a float tensor, not {r}"
        ));
    }
    check_linear_params(cx, x)?;
    same_dims(x, r)
}

fn verify_dynamic_quantize_linear(cx: &OpCtx) -> Result<(), String> {
    let x = cx.operand_ty(0);
    let u8t = ElemType::Int {
        bits: 8,
        unsigned: true,
    };
    if x.elem != ElemType::F32 {
        return Err(format!(
            "dynamic_quantize_linear takes an f32 tensor, not {x}"
        ));
    }
    let want = [
        x.with_elem(u8t.clone()),
        TensorType::new(&[], ElemType::F32),
        TensorType::new(&[], u8t),
    ];
    for (i, w) in want.iter().enumerate() {
        if cx.result_ty(i) != w {
            return Err(format!("result {i} must be {w}, not {}", cx.result_ty(i)));
        }
    }
    Ok(())
}

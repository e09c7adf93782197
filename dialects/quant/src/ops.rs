//! The quant dialect's ops: explicit quantization, dequantization and quantized matrix products.
//!
//! The format is never an attribute: it is the element type of the quantized tensor, so the verifier and
//! every pass see it in the types.

use qc_ir::ops::{opt, AttrKind, OpCtx, OpDef};
use qc_ir::types::TensorType;

qc_ir::declare_ops! {
    /// The quant dialect's ops.
    pub enum QuantOp in "quant";
    /// Quantizes a float tensor to the result's quantized element type (scales computed from the data).
    Quantize = "quantize" { operands: Exactly(1), results: Exactly(1), attrs: [opt("seed", AttrKind::Int)], pure: true, verify: verify_quantize },
    /// Decodes a quantized tensor to the result's float element type.
    Dequantize = "dequantize" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_dequantize },
    /// Float activations [..., M, K] times quantized weights [K, N] ([N, K] with `transpose_b`), float result.
    Matmul = "matmul" { operands: Exactly(2), results: Exactly(1), attrs: [opt("transpose_b", AttrKind::Unit)], pure: true, verify: verify_qmatmul },
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

fn verify_qmatmul(cx: &OpCtx) -> Result<(), String> {
    let (x, w, r) = (cx.operand_ty(0), cx.operand_ty(1), cx.result_ty(0));
    if !x.elem.is_float() {
        return Err(format!(
            "the activation operand must be a float tensor, not {x}"
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
        elem: x.elem.clone(),
    };
    if qc_nn::shape::type_matches(&expected, r) {
        Ok(())
    } else {
        Err(format!(
            "result type {r} does not match the inferred {expected}"
        ))
    }
}

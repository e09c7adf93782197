//! qc-nn: graph-level tensor ops with ONNX-like semantics.
//!
//! Every op is declared once in the [`NnOp`] table below; its verifier hook checks operand and result
//! types (shape inference rules live in [`shape`]). Broadcasting follows NumPy (and ONNX) rules.
#![deny(missing_docs)]

pub mod shape;

use qc_ir::ops::{opt, req, AttrKind, OpCtx, OpDef};
use qc_ir::types::{Dim, ElemType, TensorType};

qc_ir::declare_ops! {
    /// The nn dialect's ops.
    pub enum NnOp in "nn";
    /// Elementwise addition with broadcasting.
    Add = "add" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: verify_binary },
    /// Elementwise subtraction with broadcasting.
    Sub = "sub" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: verify_binary },
    /// Elementwise multiplication with broadcasting.
    Mul = "mul" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: verify_binary },
    /// Elementwise division with broadcasting (integer division truncates toward zero).
    Div = "div" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: verify_binary },
    /// Elementwise maximum with broadcasting.
    Max = "max" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: verify_binary },
    /// Elementwise minimum with broadcasting.
    Min = "min" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: verify_binary },
    /// Elementwise negation.
    Neg = "neg" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_unary },
    /// Elementwise max(x, 0).
    Relu = "relu" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_unary_float },
    /// Elementwise e^x.
    Exp = "exp" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_unary_float },
    /// Elementwise square root.
    Sqrt = "sqrt" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_unary_float },
    /// Elementwise hyperbolic tangent.
    Tanh = "tanh" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_unary_float },
    /// Elementwise logistic sigmoid 1 / (1 + e^-x).
    Sigmoid = "sigmoid" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_unary_float },
    /// The value itself.
    Identity = "identity" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_same_type },
    /// Matrix product with NumPy batch broadcasting: [..., M, K] x [..., K, N] -> [..., M, N].
    Matmul = "matmul" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: verify_matmul },
    /// The same elements in a new shape; `shape` lists the result dimensions, -1 for a dynamic one.
    Reshape = "reshape" { operands: Exactly(1), results: Exactly(1), attrs: [req("shape", AttrKind::IntArray)], pure: true, verify: verify_reshape },
    /// Permutes dimensions: result dimension i is operand dimension perm[i].
    Transpose = "transpose" { operands: Exactly(1), results: Exactly(1), attrs: [req("perm", AttrKind::IntArray)], pure: true, verify: verify_transpose },
    /// Converts elements to the result's element type (floats to integers truncate toward zero).
    Cast = "cast" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_cast },
    /// The operand's shape as a 1-D i64 tensor.
    Shape = "shape" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: verify_shape },
    /// Joins tensors along `axis` (negative counts from the end).
    Concat = "concat" { operands: AtLeast(1), results: Exactly(1), attrs: [req("axis", AttrKind::Int)], pure: true, verify: verify_concat },
    /// Sums over `axes` (all when absent), keeping reduced dimensions as 1 when `keepdims`.
    ReduceSum = "reduce_sum" { operands: Exactly(1), results: Exactly(1), attrs: [opt("axes", AttrKind::IntArray), opt("keepdims", AttrKind::Unit)], pure: true, verify: verify_reduce },
}

/// The nn dialect's op definitions, for [`qc_ir::Registry::register`].
pub fn dialect() -> &'static [OpDef] {
    NnOp::DEFS
}

fn expect_result(cx: &OpCtx, expected: &TensorType) -> Result<(), String> {
    let got = cx.result_ty(0);
    if shape::type_matches(expected, got) {
        Ok(())
    } else {
        Err(format!(
            "result type {got} does not match the inferred {expected}"
        ))
    }
}

fn numeric(t: &TensorType) -> Result<(), String> {
    match &t.elem {
        ElemType::F16 | ElemType::BF16 | ElemType::F32 | ElemType::F64 | ElemType::Int { .. } => {
            Ok(())
        }
        e => Err(format!(
            "expected a float or integer tensor, not one of {e}"
        )),
    }
}

fn verify_binary(cx: &OpCtx) -> Result<(), String> {
    let (a, b) = (cx.operand_ty(0), cx.operand_ty(1));
    numeric(a)?;
    if a.elem != b.elem {
        return Err(format!(
            "operand element types differ: {} and {}",
            a.elem, b.elem
        ));
    }
    let dims = shape::broadcast(&a.dims, &b.dims)?;
    expect_result(
        cx,
        &TensorType {
            dims,
            elem: a.elem.clone(),
        },
    )
}

fn verify_unary(cx: &OpCtx) -> Result<(), String> {
    numeric(cx.operand_ty(0))?;
    expect_result(cx, cx.operand_ty(0))
}

fn verify_unary_float(cx: &OpCtx) -> Result<(), String> {
    let t = cx.operand_ty(0);
    if !t.elem.is_float() {
        return Err(format!("expected a float tensor, not {t}"));
    }
    expect_result(cx, t)
}

fn verify_same_type(cx: &OpCtx) -> Result<(), String> {
    expect_result(cx, cx.operand_ty(0))
}

fn verify_matmul(cx: &OpCtx) -> Result<(), String> {
    let (a, b) = (cx.operand_ty(0), cx.operand_ty(1));
    numeric(a)?;
    if a.elem != b.elem {
        return Err(format!(
            "operand element types differ: {} and {}",
            a.elem, b.elem
        ));
    }
    let dims = shape::matmul(&a.dims, &b.dims, false)?;
    expect_result(
        cx,
        &TensorType {
            dims,
            elem: a.elem.clone(),
        },
    )
}

fn verify_reshape(cx: &OpCtx) -> Result<(), String> {
    let shape = cx.int_array("shape").unwrap_or_default();
    let dims = shape::reshape(cx.operand_ty(0), &shape)?;
    expect_result(
        cx,
        &TensorType {
            dims,
            elem: cx.operand_ty(0).elem.clone(),
        },
    )
}

fn verify_transpose(cx: &OpCtx) -> Result<(), String> {
    let perm = cx.int_array("perm").unwrap_or_default();
    let t = cx.operand_ty(0);
    let dims = shape::transpose(&t.dims, &perm)?;
    expect_result(
        cx,
        &TensorType {
            dims,
            elem: t.elem.clone(),
        },
    )
}

fn verify_cast(cx: &OpCtx) -> Result<(), String> {
    let (a, r) = (cx.operand_ty(0), cx.result_ty(0));
    numeric(a)?;
    numeric(r)?;
    expect_result(cx, &a.with_elem(r.elem.clone()))
}

fn verify_shape(cx: &OpCtx) -> Result<(), String> {
    let rank = cx.operand_ty(0).rank() as u64;
    expect_result(
        cx,
        &TensorType::new(
            &[rank],
            ElemType::Int {
                bits: 64,
                unsigned: false,
            },
        ),
    )
}

fn verify_concat(cx: &OpCtx) -> Result<(), String> {
    let types: Vec<&TensorType> = (0..cx.op.operands.len())
        .map(|i| cx.operand_ty(i))
        .collect();
    let axis = cx.attr("axis").and_then(|a| a.as_int()).unwrap_or(0);
    let dims = shape::concat(&types, axis)?;
    expect_result(
        cx,
        &TensorType {
            dims,
            elem: types[0].elem.clone(),
        },
    )
}

fn verify_reduce(cx: &OpCtx) -> Result<(), String> {
    let t = cx.operand_ty(0);
    numeric(t)?;
    let axes = cx.int_array("axes");
    let keep = cx.attr("keepdims").is_some();
    let dims = shape::reduce(&t.dims, axes.as_deref(), keep)?;
    expect_result(
        cx,
        &TensorType {
            dims,
            elem: t.elem.clone(),
        },
    )
}

/// Normalizes a possibly negative axis against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if (0..rank as i64).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

/// A dimension list as text, for messages.
pub fn dims_text(d: &[Dim]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

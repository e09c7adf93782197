//! qc-nn: graph-level tensor ops with ONNX semantics.
//!
//! Every op is declared once in the [`NnOp`] table below. Ops mirror ONNX operators: what ONNX passes as
//! an input is an operand here (a reshape's target shape, a slice's starts), what ONNX passes as an
//! attribute is an attribute (snake_case names). Optional ONNX inputs are materialized by the importer
//! (as constants), so every operand listed is present. Result types are inferred by [`infer::infer`],
//! which the verifier and the importer share; broadcasting follows NumPy (and ONNX) rules.
#![deny(missing_docs)]

pub mod infer;
pub mod shape;

use qc_ir::ops::{opt, req, AttrKind, OpDef};
use qc_ir::types::Dim;

use infer::verify_nn as v;
use AttrKind::{Elements, Float, Int, IntArray, Str};

qc_ir::declare_ops! {
    /// The nn dialect's ops.
    pub enum NnOp in "nn";
    /// Elementwise a + b with broadcasting.
    Add = "add" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise a - b with broadcasting.
    Sub = "sub" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise a * b with broadcasting.
    Mul = "mul" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise a / b with broadcasting (integers truncate toward zero).
    Div = "div" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise a ^ b with broadcasting; the exponent may have another numeric type.
    Pow = "pow" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise maximum with broadcasting (NaN propagates).
    Max = "max" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise minimum with broadcasting (NaN propagates).
    Min = "min" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise remainder; `fmod` selects C fmod (sign of the dividend) over Python's (sign of the divisor).
    Mod = "mod" { operands: Exactly(2), results: Exactly(1), attrs: [opt("fmod", Int)], pure: true, verify: v },
    /// Elementwise a == b, an i1 result.
    Equal = "equal" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise a < b, an i1 result.
    Less = "less" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise a <= b, an i1 result.
    LessOrEqual = "less_or_equal" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise a > b, an i1 result.
    Greater = "greater" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise a >= b, an i1 result.
    GreaterOrEqual = "greater_or_equal" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise logical and of i1 tensors.
    And = "and" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise logical or of i1 tensors.
    Or = "or" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise logical xor of i1 tensors.
    Xor = "xor" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise logical not of an i1 tensor.
    Not = "not" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise -x.
    Neg = "neg" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise |x|.
    Abs = "abs" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise sign: -1, 0 or 1.
    Sign = "sign" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise max(x, 0).
    Relu = "relu" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise e^x.
    Exp = "exp" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise natural logarithm.
    Log = "log" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise square root.
    Sqrt = "sqrt" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise 1 / x.
    Reciprocal = "reciprocal" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise hyperbolic tangent.
    Tanh = "tanh" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise logistic sigmoid 1 / (1 + e^-x).
    Sigmoid = "sigmoid" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise error function.
    Erf = "erf" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise sine.
    Sin = "sin" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise cosine.
    Cos = "cos" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise floor.
    Floor = "floor" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise ceiling.
    Ceil = "ceil" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise round half to even.
    Round = "round" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise ln(1 + e^x).
    Softplus = "softplus" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise GELU; `approximate` is "none" (erf form, default) or "tanh".
    Gelu = "gelu" { operands: Exactly(1), results: Exactly(1), attrs: [opt("approximate", Str)], pure: true, verify: v },
    /// Elementwise x if x >= 0 else alpha * x (alpha default 0.01).
    LeakyRelu = "leaky_relu" { operands: Exactly(1), results: Exactly(1), attrs: [opt("alpha", Float)], pure: true, verify: v },
    /// Elementwise x if x > 0 else alpha * (e^x - 1) (alpha default 1).
    Elu = "elu" { operands: Exactly(1), results: Exactly(1), attrs: [opt("alpha", Float)], pure: true, verify: v },
    /// Elementwise max(0, min(1, alpha * x + beta)) (defaults 0.2, 0.5).
    HardSigmoid = "hard_sigmoid" { operands: Exactly(1), results: Exactly(1), attrs: [opt("alpha", Float), opt("beta", Float)], pure: true, verify: v },
    /// Elementwise x * max(0, min(1, x / 6 + 1 / 2)).
    HardSwish = "hard_swish" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise tangent.
    Tan = "tan" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise arcsine.
    Asin = "asin" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise arccosine.
    Acos = "acos" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise arctangent.
    Atan = "atan" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise hyperbolic sine.
    Sinh = "sinh" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise hyperbolic cosine.
    Cosh = "cosh" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise inverse hyperbolic sine.
    Asinh = "asinh" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise inverse hyperbolic cosine.
    Acosh = "acosh" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise inverse hyperbolic tangent.
    Atanh = "atanh" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise x / (1 + |x|).
    Softsign = "softsign" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise x * tanh(ln(1 + e^x)).
    Mish = "mish" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise gamma * (x if x > 0 else alpha * (e^x - 1)) (defaults 1.6732632, 1.0507010).
    Selu = "selu" { operands: Exactly(1), results: Exactly(1), attrs: [opt("alpha", Float), opt("gamma", Float)], pure: true, verify: v },
    /// Elementwise max(0, x) + min(0, alpha * (e^(x / alpha) - 1)) (alpha default 1).
    Celu = "celu" { operands: Exactly(1), results: Exactly(1), attrs: [opt("alpha", Float)], pure: true, verify: v },
    /// Elementwise x if x > alpha else 0 (alpha default 1).
    ThresholdedRelu = "thresholded_relu" { operands: Exactly(1), results: Exactly(1), attrs: [opt("alpha", Float)], pure: true, verify: v },
    /// Elementwise x * sigmoid(alpha * x) (alpha default 1).
    Swish = "swish" { operands: Exactly(1), results: Exactly(1), attrs: [opt("alpha", Float)], pure: true, verify: v },
    /// Elementwise x + bias if x < -lambd, x - bias if x > lambd, else 0 (defaults 0 and 0.5); integer
    /// results truncate.
    Shrink = "shrink" { operands: Exactly(1), results: Exactly(1), attrs: [opt("bias", Float), opt("lambd", Float)], pure: true, verify: v },
    /// Local response normalization across dimension 1: x / (bias + alpha / size * s)^beta, where s sums
    /// the squares over the `size` channels around each one (defaults alpha 1e-4, beta 0.75, bias 1).
    Lrn = "lrn" { operands: Exactly(1), results: Exactly(1), attrs: [req("size", Int), opt("alpha", Float), opt("beta", Float), opt("bias", Float)], pure: true, verify: v },
    /// Elementwise bitwise and of integer tensors with broadcasting.
    BitwiseAnd = "bitwise_and" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise bitwise or of integer tensors with broadcasting.
    BitwiseOr = "bitwise_or" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise bitwise exclusive or of integer tensors with broadcasting.
    BitwiseXor = "bitwise_xor" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise bitwise complement of an integer tensor.
    BitwiseNot = "bitwise_not" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise shift of x by y bits with broadcasting; `direction` is "LEFT" or "RIGHT" (logical for
    /// unsigned types); bits shifted past the width are lost.
    BitShift = "bit_shift" { operands: Exactly(2), results: Exactly(1), attrs: [req("direction", Str)], pure: true, verify: v },
    /// Elementwise isnan, an i1 result.
    IsNan = "is_nan" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise isinf, an i1 result; `detect_negative` / `detect_positive` default to 1.
    IsInf = "is_inf" { operands: Exactly(1), results: Exactly(1), attrs: [opt("detect_negative", Int), opt("detect_positive", Int)], pure: true, verify: v },
    /// The value itself.
    Identity = "identity" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise min(max(x, lo), hi); lo and hi are scalars of x's type.
    Clip = "clip" { operands: Exactly(3), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Elementwise cond ? a : b with three-way broadcasting.
    Where = "where" { operands: Exactly(3), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Converts elements to the result's element type (floats to integers truncate toward zero and
    /// wrap, as NumPy; to i1, nonzero is true); minifloat targets follow ONNX: `saturate` (default 1) clamps
    /// float8 overflow to the finite range, `round_mode` ("up" default, "nearest", "down") rounds to e8m0.
    Cast = "cast" { operands: Exactly(1), results: Exactly(1), attrs: [opt("saturate", Int), opt("round_mode", Str)], pure: true, verify: v },
    /// Matrix product with NumPy semantics (rank-1 operands are promoted and the added dimension removed).
    Matmul = "matmul" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// alpha * A' B' + beta * C with A' = transpose(A) if trans_a, likewise B'; C broadcasts.
    Gemm = "gemm" { operands: Exactly(3), results: Exactly(1), attrs: [opt("alpha", Float), opt("beta", Float), opt("trans_a", Int), opt("trans_b", Int)], pure: true, verify: v },
    /// N-d convolution (NCHW...): x, weights [M, C/group, k...], bias [M]; explicit pads [begin..., end...].
    Conv = "conv" { operands: Exactly(3), results: Exactly(1), attrs: [req("kernel_shape", IntArray), req("strides", IntArray), req("pads", IntArray), req("dilations", IntArray), req("group", Int)], pure: true, verify: v },
    /// N-d transposed convolution (NCHW...): x [N, C, d...], weights [C, M/group, k...], bias [M];
    /// explicit pads [begin..., end...] (negative ones widen the result). Each spatial result dimension is
    /// strides * (d - 1) + output_padding + (k - 1) * dilations + 1 - pads begin - pads end.
    ConvTranspose = "conv_transpose" { operands: Exactly(3), results: Exactly(1), attrs: [req("kernel_shape", IntArray), req("strides", IntArray), req("pads", IntArray), req("dilations", IntArray), req("output_padding", IntArray), req("group", Int)], pure: true, verify: v },
    /// Cumulative sum along the axis given by the integer scalar operand; `exclusive` leaves each element
    /// out of its own sum, `reverse` sums from the end.
    CumSum = "cum_sum" { operands: Exactly(2), results: Exactly(1), attrs: [opt("exclusive", Int), opt("reverse", Int)], pure: true, verify: v },
    /// Inference-mode batch normalization: (x - mean) / sqrt(var + epsilon) * scale + bias over channel 1.
    BatchNorm = "batch_norm" { operands: Exactly(5), results: Exactly(1), attrs: [req("epsilon", Float)], pure: true, verify: v },
    /// Layer normalization over the dimensions from `axis` on, then * scale + bias (which broadcast).
    LayerNorm = "layer_norm" { operands: Exactly(3), results: Exactly(1), attrs: [req("axis", Int), req("epsilon", Float)], pure: true, verify: v },
    /// Softmax along `axis`.
    Softmax = "softmax" { operands: Exactly(1), results: Exactly(1), attrs: [req("axis", Int)], pure: true, verify: v },
    /// Log-softmax along `axis`.
    LogSoftmax = "log_softmax" { operands: Exactly(1), results: Exactly(1), attrs: [req("axis", Int)], pure: true, verify: v },
    /// Negative log-likelihood loss (ONNX NegativeLogLikelihoodLoss): x [N, C, d...] holds
    /// log-probabilities, target [N, d...] class indices, weight [C] class weights. Each loss is
    /// -x[n, target, d...] * weight[target], and 0 where the target is `ignore_index`; `reduction` "none"
    /// keeps them (the target's shape), "sum" adds them, "mean" divides that sum by the sum of the
    /// weights used (both scalars).
    NllLoss = "nll_loss" { operands: Exactly(3), results: Exactly(1), attrs: [req("reduction", Str), opt("ignore_index", Int)], pure: true, verify: v },
    /// Max pooling with explicit pads [begin..., end...].
    MaxPool = "max_pool" { operands: Exactly(1), results: Exactly(1), attrs: [req("kernel_shape", IntArray), req("strides", IntArray), req("pads", IntArray), req("dilations", IntArray), opt("ceil_mode", Int)], pure: true, verify: v },
    /// Average pooling with explicit pads; `count_include_pad` counts padding in the divisor.
    AvgPool = "avg_pool" { operands: Exactly(1), results: Exactly(1), attrs: [req("kernel_shape", IntArray), req("strides", IntArray), req("pads", IntArray), req("dilations", IntArray), opt("ceil_mode", Int), opt("count_include_pad", Int)], pure: true, verify: v },
    /// Mean over all spatial dimensions, kept as 1.
    GlobalAvgPool = "global_avg_pool" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Maximum over all spatial dimensions, kept as 1.
    GlobalMaxPool = "global_max_pool" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// The same elements in the shape given by the i64 operand (0 copies the input dimension unless
    /// `allowzero`, -1 is inferred).
    Reshape = "reshape" { operands: Exactly(2), results: Exactly(1), attrs: [opt("allowzero", Int)], pure: true, verify: v },
    /// Flattens to 2-D: dimensions before `axis` and from `axis` on.
    Flatten = "flatten" { operands: Exactly(1), results: Exactly(1), attrs: [req("axis", Int)], pure: true, verify: v },
    /// Removes the size-1 dimensions listed by the i64 operand.
    Squeeze = "squeeze" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Inserts size-1 dimensions at the positions listed by the i64 operand (positions in the result).
    Unsqueeze = "unsqueeze" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Permutes dimensions: result dimension i is operand dimension perm[i].
    Transpose = "transpose" { operands: Exactly(1), results: Exactly(1), attrs: [req("perm", IntArray)], pure: true, verify: v },
    /// Joins tensors along `axis` (negative counts from the end).
    Concat = "concat" { operands: AtLeast(1), results: Exactly(1), attrs: [req("axis", Int)], pure: true, verify: v },
    /// Splits along `axis` into pieces of the sizes given by the i64 operand.
    Split = "split" { operands: Exactly(2), results: AtLeast(1), attrs: [req("axis", Int)], pure: true, verify: v },
    /// ONNX Slice: operands x, starts, ends, axes, steps (i64, all present), with ONNX clamping rules.
    Slice = "slice" { operands: Exactly(5), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Gathers along `axis` with integer indices (negative indices count from the end).
    Gather = "gather" { operands: Exactly(2), results: Exactly(1), attrs: [req("axis", Int)], pure: true, verify: v },
    /// GatherElements along `axis`: the result has the indices' shape.
    GatherElements = "gather_elements" { operands: Exactly(2), results: Exactly(1), attrs: [req("axis", Int)], pure: true, verify: v },
    /// Broadcasts x to the shape given by the i64 operand (bidirectionally, as ONNX Expand).
    Expand = "expand" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Repeats x along each dimension by the i64 operand's counts.
    Tile = "tile" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// Constant padding: pads [begin..., end...] (i64 operand), fill value (scalar operand).
    Pad = "pad" { operands: Exactly(3), results: Exactly(1), attrs: [opt("mode", Str)], pure: true, verify: v },
    /// The operand's shape as a 1-D i64 tensor, dimensions [start, end) (ONNX clamping).
    Shape = "shape" { operands: Exactly(1), results: Exactly(1), attrs: [opt("start", Int), opt("end", Int)], pure: true, verify: v },
    /// The operand's element count as an i64 scalar.
    Size = "size" { operands: Exactly(1), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// The values start, start + delta, ... below limit (scalars of one numeric type).
    Range = "range" { operands: Exactly(3), results: Exactly(1), attrs: [], pure: true, verify: v },
    /// A tensor of the shape given by the i64 operand, filled with `value` (a one-element dense).
    ConstantOfShape = "constant_of_shape" { operands: Exactly(1), results: Exactly(1), attrs: [req("value", Elements)], pure: true, verify: v },
    /// The upper (`upper` = 1, default) or lower triangle of the last two dimensions, diagonal offset by the
    /// i64 scalar operand k; the rest zero.
    Trilu = "trilu" { operands: Exactly(2), results: Exactly(1), attrs: [opt("upper", Int)], pure: true, verify: v },
    /// Sum over the axes given by the i64 operand (all when it is empty, unless `noop_with_empty_axes`).
    ReduceSum = "reduce_sum" { operands: Exactly(2), results: Exactly(1), attrs: [opt("keepdims", Int), opt("noop_with_empty_axes", Int)], pure: true, verify: v },
    /// Mean over axes, as reduce_sum.
    ReduceMean = "reduce_mean" { operands: Exactly(2), results: Exactly(1), attrs: [opt("keepdims", Int), opt("noop_with_empty_axes", Int)], pure: true, verify: v },
    /// Maximum over axes, as reduce_sum.
    ReduceMax = "reduce_max" { operands: Exactly(2), results: Exactly(1), attrs: [opt("keepdims", Int), opt("noop_with_empty_axes", Int)], pure: true, verify: v },
    /// Minimum over axes, as reduce_sum.
    ReduceMin = "reduce_min" { operands: Exactly(2), results: Exactly(1), attrs: [opt("keepdims", Int), opt("noop_with_empty_axes", Int)], pure: true, verify: v },
    /// Product over axes, as reduce_sum.
    ReduceProd = "reduce_prod" { operands: Exactly(2), results: Exactly(1), attrs: [opt("keepdims", Int), opt("noop_with_empty_axes", Int)], pure: true, verify: v },
    /// Index of the maximum along `axis` (first occurrence unless `select_last_index`), an i64 result.
    ArgMax = "arg_max" { operands: Exactly(1), results: Exactly(1), attrs: [req("axis", Int), opt("keepdims", Int), opt("select_last_index", Int)], pure: true, verify: v },
    /// Index of the minimum along `axis`, as arg_max.
    ArgMin = "arg_min" { operands: Exactly(1), results: Exactly(1), attrs: [req("axis", Int), opt("keepdims", Int), opt("select_last_index", Int)], pure: true, verify: v },
}

/// The nn dialect's op definitions, for [`qc_ir::Registry::register`].
pub fn dialect() -> &'static [OpDef] {
    NnOp::DEFS
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

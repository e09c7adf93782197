//! The reference interpreter's op semantics.
//!
//! [`eval_nn`] computes one nn op on concrete tensors, with ONNX semantics. Result shapes come from
//! [`qc_nn::infer::infer`] applied to the concrete operand shapes and the values of small operands, so the
//! compile-time and run-time shape rules are one. Precision contract: every elementwise result is
//! computed in f64 and rounded once to the element type (for add, sub, mul, div and sqrt on f32, f16 and
//! bf16 this is the correctly rounded result); reductions (matmul, gemm, conv, pools, norms, softmax,
//! reduce ops) accumulate in f64 in index order and round once at the end. Integers wrap to the element
//! width; integer division by zero is an error. Unsigned 64-bit values above i64::MAX are not held.

mod nn_ops;
pub mod raw;
mod tensor;

pub use tensor::{broadcast_map, round_to, strides, supported, wrap, Data, Tensor};

use qc_ir::attr::{Attribute, Attrs, DenseData};
use qc_ir::types::ElemType;
use qc_nn::infer::{infer, InferCx};
use qc_nn::{norm_axis, NnOp};

/// Operands with at most this many elements are offered to shape inference as constants.
const SMALL: usize = 4096;

/// Evaluates nn op `op` with attributes `attrs` on `inputs`. `result_elem` is the declared element type
/// of the first result (it chooses the target of `cast` and `constant_of_shape`).
pub fn eval_nn(
    op: NnOp,
    attrs: &Attrs,
    inputs: &[Tensor],
    result_elem: &ElemType,
) -> Result<Vec<Tensor>, String> {
    for t in inputs {
        if !supported(&t.elem) {
            return Err(format!("the interpreter does not hold {} tensors", t.elem));
        }
    }
    let types: Vec<_> = inputs.iter().map(Tensor::ty).collect();
    let dense: Vec<Option<DenseData>> = inputs
        .iter()
        .map(|t| (t.len() <= SMALL).then(|| t.to_dense()))
        .collect();
    let cx = InferCx {
        types: types.iter().collect(),
        attrs,
        consts: dense.iter().map(Option::as_ref).collect(),
        result_elem: Some(result_elem.clone()),
    };
    let out_types = infer(op, &cx)?;
    let out_shapes: Vec<Vec<usize>> = out_types
        .iter()
        .map(|t| {
            t.static_shape()
                .map(|s| s.into_iter().map(|d| d as usize).collect())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| {
            format!(
                "{}: the result shape is not determined by the inputs",
                op.def().name
            )
        })?;
    let elem = out_types[0].elem.clone();
    if !supported(&elem) {
        return Err(format!("the interpreter does not compute {elem} tensors"));
    }
    let shape = out_shapes[0].clone();
    let x = &inputs[0];
    let int_attr = |n: &str, d: i64| attrs.get(n).and_then(Attribute::as_int).unwrap_or(d);
    let f_attr = |n: &str, d: f64| attrs.get(n).and_then(Attribute::as_f64).unwrap_or(d);
    let data: Data = match op {
        NnOp::Add
        | NnOp::Sub
        | NnOp::Mul
        | NnOp::Div
        | NnOp::Max
        | NnOp::Min
        | NnOp::Mod
        | NnOp::Pow => binary(
            op,
            &inputs[0],
            &inputs[1],
            &shape,
            &elem,
            int_attr("fmod", 0) != 0,
        )?,
        NnOp::Equal | NnOp::Less | NnOp::LessOrEqual | NnOp::Greater | NnOp::GreaterOrEqual => {
            let (ia, ib) = (
                broadcast_map(&x.shape, &shape),
                broadcast_map(&inputs[1].shape, &shape),
            );
            let y = &inputs[1];
            Data::I(
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| {
                        let c = if x.is_int() {
                            x.data.i(i).partial_cmp(&y.data.i(j))
                        } else {
                            x.data.f(i).partial_cmp(&y.data.f(j))
                        };
                        use std::cmp::Ordering::*;
                        let r = match (op, c) {
                            (_, None) => false,
                            (NnOp::Equal, Some(o)) => o == Equal,
                            (NnOp::Less, Some(o)) => o == Less,
                            (NnOp::LessOrEqual, Some(o)) => o != Greater,
                            (NnOp::Greater, Some(o)) => o == Greater,
                            (_, Some(o)) => o != Less,
                        };
                        r as i64
                    })
                    .collect(),
            )
        }
        NnOp::And | NnOp::Or | NnOp::Xor => {
            let (ia, ib) = (
                broadcast_map(&x.shape, &shape),
                broadcast_map(&inputs[1].shape, &shape),
            );
            Data::I(
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| {
                        let (p, q) = (x.data.i(i) != 0, inputs[1].data.i(j) != 0);
                        (match op {
                            NnOp::And => p && q,
                            NnOp::Or => p || q,
                            _ => p != q,
                        }) as i64
                    })
                    .collect(),
            )
        }
        NnOp::Not => Data::I((0..x.len()).map(|i| (x.data.i(i) == 0) as i64).collect()),
        NnOp::BitwiseAnd | NnOp::BitwiseOr | NnOp::BitwiseXor | NnOp::BitShift => {
            let ElemType::Int { bits, unsigned } = elem else {
                return Err("bitwise operands must be integers".into());
            };
            let (ia, ib) = (
                broadcast_map(&x.shape, &shape),
                broadcast_map(&inputs[1].shape, &shape),
            );
            let left = matches!(attrs.get("direction"), Some(Attribute::Str(d)) if d == "LEFT");
            Data::I(
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| {
                        let (p, q) = (x.data.i(i), inputs[1].data.i(j));
                        let v = match op {
                            NnOp::BitwiseAnd => p & q,
                            NnOp::BitwiseOr => p | q,
                            NnOp::BitwiseXor => p ^ q,
                            // Shifts by the width or more (or by a negative count) leave nothing.
                            _ if !(0..bits as i64).contains(&q) => {
                                if left || unsigned || p >= 0 {
                                    0
                                } else {
                                    -1
                                }
                            }
                            _ if left => p << q,
                            _ if unsigned => ((p as u64 & mask_bits(bits)) >> q) as i64,
                            _ => p >> q,
                        };
                        wrap(v, bits, unsigned)
                    })
                    .collect(),
            )
        }
        NnOp::BitwiseNot => {
            let ElemType::Int { bits, unsigned } = elem else {
                return Err("bitwise operands must be integers".into());
            };
            Data::I(
                (0..x.len())
                    .map(|i| wrap(!x.data.i(i), bits, unsigned))
                    .collect(),
            )
        }
        NnOp::Shrink => {
            let (bias, lambd) = (f_attr("bias", 0.0), f_attr("lambd", 0.5));
            let f = |a: f64| {
                if a < -lambd {
                    a + bias
                } else if a > lambd {
                    a - bias
                } else {
                    0.0
                }
            };
            match &elem {
                ElemType::Int { bits, unsigned } => Data::I(
                    (0..x.len())
                        .map(|i| raw::float_to_int(f(x.data.f(i)), *bits, *unsigned))
                        .collect(),
                ),
                e => Data::F((0..x.len()).map(|i| round_to(e, f(x.data.f(i)))).collect()),
            }
        }
        NnOp::Lrn => nn_ops::lrn(x, attrs)?,
        NnOp::NllLoss => nn_ops::nll_loss(inputs, attrs, &elem)?,
        NnOp::ConvTranspose => nn_ops::conv_transpose(inputs, attrs, &shape)?,
        NnOp::CumSum => {
            let axis = norm_axis(inputs[1].data.i(0), x.shape.len())?;
            nn_ops::cum_sum(
                x,
                axis,
                int_attr("exclusive", 0) != 0,
                int_attr("reverse", 0) != 0,
                &elem,
            )
        }
        NnOp::Neg | NnOp::Abs | NnOp::Sign => match (&x.data, &elem) {
            (Data::I(v), ElemType::Int { bits, unsigned }) => Data::I(
                v.iter()
                    .map(|&a| {
                        wrap(
                            match op {
                                NnOp::Neg => a.wrapping_neg(),
                                NnOp::Abs => a.wrapping_abs(),
                                _ => a.signum(),
                            },
                            *bits,
                            *unsigned,
                        )
                    })
                    .collect(),
            ),
            (Data::F(v), _) => Data::F(
                v.iter()
                    .map(|&a| match op {
                        NnOp::Neg => -a,
                        NnOp::Abs => a.abs(),
                        _ if a.is_nan() => a,
                        _ if a == 0.0 => 0.0,
                        _ => a.signum(),
                    })
                    .collect(),
            ),
            _ => return Err("operand and result kinds differ".into()),
        },
        NnOp::Relu
        | NnOp::Exp
        | NnOp::Log
        | NnOp::Sqrt
        | NnOp::Reciprocal
        | NnOp::Tanh
        | NnOp::Sigmoid
        | NnOp::Erf
        | NnOp::Sin
        | NnOp::Cos
        | NnOp::Floor
        | NnOp::Ceil
        | NnOp::Round
        | NnOp::Softplus
        | NnOp::Gelu
        | NnOp::LeakyRelu
        | NnOp::Elu
        | NnOp::HardSigmoid
        | NnOp::HardSwish
        | NnOp::Tan
        | NnOp::Asin
        | NnOp::Acos
        | NnOp::Atan
        | NnOp::Sinh
        | NnOp::Cosh
        | NnOp::Asinh
        | NnOp::Acosh
        | NnOp::Atanh
        | NnOp::Softsign
        | NnOp::Mish
        | NnOp::Selu
        | NnOp::Celu
        | NnOp::ThresholdedRelu
        | NnOp::Swish => {
            let tanh_gelu =
                matches!(attrs.get("approximate"), Some(Attribute::Str(s)) if s == "tanh");
            let alpha = f_attr(
                "alpha",
                if op == NnOp::LeakyRelu {
                    0.01
                } else if op == NnOp::HardSigmoid {
                    0.2
                } else if op == NnOp::Selu {
                    1.673_263_192_176_818_8
                } else {
                    1.0
                },
            );
            let beta = if op == NnOp::Selu {
                f_attr("gamma", 1.050_701_022_148_132_3)
            } else {
                f_attr("beta", 0.5)
            };
            Data::F(
                (0..x.len())
                    .map(|i| {
                        let a = x.data.f(i);
                        round_to(&elem, unary(op, a, alpha, beta, tanh_gelu))
                    })
                    .collect(),
            )
        }
        NnOp::IsNan => Data::I((0..x.len()).map(|i| x.data.f(i).is_nan() as i64).collect()),
        NnOp::IsInf => {
            let (neg, pos) = (
                int_attr("detect_negative", 1) != 0,
                int_attr("detect_positive", 1) != 0,
            );
            Data::I(
                (0..x.len())
                    .map(|i| {
                        let a = x.data.f(i);
                        (a.is_infinite() && ((a > 0.0 && pos) || (a < 0.0 && neg))) as i64
                    })
                    .collect(),
            )
        }
        NnOp::Identity => x.data.clone(),
        NnOp::Clip => {
            let (lo, hi) = (&inputs[1], &inputs[2]);
            match &x.data {
                Data::F(v) => Data::F(
                    v.iter()
                        .map(|&a| {
                            // min(max(x, lo), hi), as ONNX (and NumPy's clip): hi wins when lo > hi.
                            let (l, h) = (lo.data.f(0), hi.data.f(0));
                            if a.is_nan() {
                                a
                            } else {
                                let a = if a < l { l } else { a };
                                if a > h {
                                    h
                                } else {
                                    a
                                }
                            }
                        })
                        .collect(),
                ),
                Data::I(v) => Data::I(
                    v.iter()
                        .map(|&a| a.max(lo.data.i(0)).min(hi.data.i(0)))
                        .collect(),
                ),
            }
        }
        NnOp::Where => {
            let (c, a, b) = (&inputs[0], &inputs[1], &inputs[2]);
            let (ic, ia, ib) = (
                broadcast_map(&c.shape, &shape),
                broadcast_map(&a.shape, &shape),
                broadcast_map(&b.shape, &shape),
            );
            let pick = |k: usize| c.data.i(ic[k]) != 0;
            match (&a.data, &b.data) {
                (Data::F(p), Data::F(q)) => Data::F(
                    (0..ic.len())
                        .map(|k| if pick(k) { p[ia[k]] } else { q[ib[k]] })
                        .collect(),
                ),
                (Data::I(p), Data::I(q)) => Data::I(
                    (0..ic.len())
                        .map(|k| if pick(k) { p[ia[k]] } else { q[ib[k]] })
                        .collect(),
                ),
                _ => return Err("where branches differ in kind".into()),
            }
        }
        NnOp::Cast if matches!(x.elem, ElemType::Raw(_)) || matches!(elem, ElemType::Raw(_)) => {
            let mode = match attrs.get("round_mode") {
                Some(Attribute::Str(s)) => s.clone(),
                _ => "up".to_string(),
            };
            raw::cast(x, &elem, int_attr("saturate", 1) != 0, &mode)?
        }
        NnOp::Cast => cast(x, &elem)?,
        NnOp::Matmul => nn_ops::matmul(x, &inputs[1], &shape)?,
        NnOp::Gemm => nn_ops::gemm(inputs, attrs, &shape)?,
        NnOp::Conv => nn_ops::conv(inputs, attrs, &shape)?,
        NnOp::MaxPool | NnOp::AvgPool => nn_ops::pool(op == NnOp::MaxPool, x, attrs, &shape)?,
        NnOp::GlobalAvgPool | NnOp::GlobalMaxPool => {
            nn_ops::global_pool(op == NnOp::GlobalMaxPool, x)?
        }
        NnOp::BatchNorm => nn_ops::batch_norm(inputs, f_attr("epsilon", 1e-5))?,
        NnOp::LayerNorm => {
            nn_ops::layer_norm(inputs, int_attr("axis", -1), f_attr("epsilon", 1e-5))?
        }
        NnOp::Softmax | NnOp::LogSoftmax => {
            nn_ops::softmax(x, int_attr("axis", -1), op == NnOp::LogSoftmax)?
        }
        NnOp::Reshape | NnOp::Flatten | NnOp::Squeeze | NnOp::Unsqueeze => x.data.clone(),
        NnOp::Transpose => {
            let perm = attrs
                .get("perm")
                .and_then(Attribute::as_int_array)
                .unwrap_or_default();
            let (ins, outs) = (strides(&x.shape), strides(&shape));
            let src: Vec<usize> = (0..shape.iter().product())
                .map(|flat| {
                    perm.iter()
                        .enumerate()
                        .map(|(k, &p)| (flat / outs[k] % shape[k]) * ins[p as usize])
                        .sum()
                })
                .collect();
            x.data.gather(&src)
        }
        NnOp::Concat => {
            let axis = norm_axis(int_attr("axis", 0), shape.len())?;
            let outer: usize = shape[..axis].iter().product();
            let mut idx: Vec<(usize, usize)> = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for (k, t) in inputs.iter().enumerate() {
                    let chunk: usize = t.shape[axis..].iter().product();
                    idx.extend((o * chunk..(o + 1) * chunk).map(|i| (k, i)));
                }
            }
            match x.data {
                Data::F(_) => Data::F(idx.iter().map(|&(k, i)| inputs[k].data.f(i)).collect()),
                Data::I(_) => Data::I(idx.iter().map(|&(k, i)| inputs[k].data.i(i)).collect()),
            }
        }
        NnOp::Split => {
            let axis = norm_axis(int_attr("axis", 0), x.shape.len())?;
            let outer: usize = x.shape[..axis].iter().product();
            let inner: usize = x.shape[axis + 1..].iter().product();
            let mut start = 0;
            let mut outs = Vec::new();
            for s in &out_shapes {
                let len = s[axis];
                let idx: Vec<usize> = (0..outer)
                    .flat_map(|o| {
                        (start..start + len).flat_map(move |a| {
                            (0..inner).map(move |i| (o * x.shape[axis] + a) * inner + i)
                        })
                    })
                    .collect();
                outs.push(Tensor::new(s.clone(), elem.clone(), x.data.gather(&idx)));
                start += len;
            }
            return Ok(outs);
        }
        NnOp::Slice => {
            let (st, en, ax, sp) = (&inputs[1], &inputs[2], &inputs[3], &inputs[4]);
            let r = x.shape.len();
            let mut start = vec![0i64; r];
            let mut step = vec![1i64; r];
            for k in 0..ax.len() {
                let a = norm_axis(ax.data.i(k), r)?;
                let (s, _) = qc_nn::shape::slice_bounds(
                    x.shape[a] as i64,
                    st.data.i(k),
                    en.data.i(k),
                    sp.data.i(k),
                );
                start[a] = s;
                step[a] = sp.data.i(k);
            }
            let (ins, outs) = (strides(&x.shape), strides(&shape));
            let idx: Vec<usize> = (0..shape.iter().product())
                .map(|flat| {
                    (0..r)
                        .map(|d| {
                            ((start[d] + (flat / outs[d] % shape[d]) as i64 * step[d]) as usize)
                                * ins[d]
                        })
                        .sum()
                })
                .collect();
            x.data.gather(&idx)
        }
        NnOp::Gather => {
            let idx_t = &inputs[1];
            let axis = norm_axis(int_attr("axis", 0), x.shape.len())?;
            let n = x.shape[axis] as i64;
            let outer: usize = x.shape[..axis].iter().product();
            let inner: usize = x.shape[axis + 1..].iter().product();
            let mut idx = Vec::with_capacity(shape.iter().product());
            for o in 0..outer {
                for k in 0..idx_t.len() {
                    let mut g = idx_t.data.i(k);
                    if g < 0 {
                        g += n;
                    }
                    if !(0..n).contains(&g) {
                        return Err(format!(
                            "gather index {} is out of range for a dimension of size {n}",
                            idx_t.data.i(k)
                        ));
                    }
                    idx.extend((0..inner).map(|i| (o * n as usize + g as usize) * inner + i));
                }
            }
            x.data.gather(&idx)
        }
        NnOp::GatherElements => {
            let idx_t = &inputs[1];
            let axis = norm_axis(int_attr("axis", 0), x.shape.len())?;
            let (xs, is) = (strides(&x.shape), strides(&idx_t.shape));
            let n = x.shape[axis] as i64;
            let mut idx = Vec::with_capacity(idx_t.len());
            for flat in 0..idx_t.len() {
                let mut g = idx_t.data.i(flat);
                if g < 0 {
                    g += n;
                }
                if !(0..n).contains(&g) {
                    return Err(format!(
                        "gather_elements index {} is out of range",
                        idx_t.data.i(flat)
                    ));
                }
                idx.push(
                    (0..x.shape.len())
                        .map(|d| {
                            if d == axis {
                                g as usize * xs[d]
                            } else {
                                (flat / is[d] % idx_t.shape[d]) * xs[d]
                            }
                        })
                        .sum(),
                );
            }
            x.data.gather(&idx)
        }
        NnOp::Expand => x.data.gather(&broadcast_map(&x.shape, &shape)),
        NnOp::Tile => {
            let (xs, os) = (strides(&x.shape), strides(&shape));
            let idx: Vec<usize> = (0..shape.iter().product())
                .map(|flat| {
                    (0..shape.len())
                        .map(|d| (flat / os[d] % shape[d]) % x.shape[d] * xs[d])
                        .sum()
                })
                .collect();
            x.data.gather(&idx)
        }
        NnOp::Pad => nn_ops::pad(x, &inputs[1], &inputs[2], attrs, &shape)?,
        NnOp::Shape => {
            let r = x.shape.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
            let (s, e) = (clamp(int_attr("start", 0)), clamp(int_attr("end", r)));
            Data::I((s..e.max(s)).map(|i| x.shape[i as usize] as i64).collect())
        }
        NnOp::Size => Data::I(vec![x.len() as i64]),
        NnOp::Range => {
            let n = shape[0];
            match &x.data {
                Data::F(_) => {
                    let (s, d) = (x.data.f(0), inputs[2].data.f(0));
                    Data::F((0..n).map(|i| round_to(&elem, s + i as f64 * d)).collect())
                }
                Data::I(_) => {
                    let (s, d) = (x.data.i(0), inputs[2].data.i(0));
                    Data::I((0..n).map(|i| s + i as i64 * d).collect())
                }
            }
        }
        NnOp::ConstantOfShape => {
            let n: usize = shape.iter().product();
            let v = match attrs.get("value") {
                Some(Attribute::Dense(d)) => d.clone(),
                _ => return Err("constant_of_shape needs a dense value".into()),
            };
            match &elem {
                ElemType::Int { bits, unsigned } => {
                    Data::I(vec![wrap(v.get_i64(0), *bits, *unsigned); n])
                }
                e => Data::F(vec![round_to(e, v.get_f64(0)); n]),
            }
        }
        NnOp::Trilu => {
            let k = inputs[1].data.i(0);
            let upper = int_attr("upper", 1) != 0;
            let r = shape.len();
            let (rows, cols) = (shape[r - 2], shape[r - 1]);
            let keep = |flat: usize| {
                let (i, j) = ((flat / cols % rows) as i64, (flat % cols) as i64);
                if upper {
                    j - i >= k
                } else {
                    j - i <= k
                }
            };
            match &x.data {
                Data::F(v) => Data::F(
                    v.iter()
                        .enumerate()
                        .map(|(f, &a)| if keep(f) { a } else { 0.0 })
                        .collect(),
                ),
                Data::I(v) => Data::I(
                    v.iter()
                        .enumerate()
                        .map(|(f, &a)| if keep(f) { a } else { 0 })
                        .collect(),
                ),
            }
        }
        NnOp::ReduceSum
        | NnOp::ReduceMean
        | NnOp::ReduceMax
        | NnOp::ReduceMin
        | NnOp::ReduceProd => {
            let axes_t = &inputs[1];
            let rank = x.shape.len();
            let mut axes: Vec<usize> = (0..axes_t.len())
                .map(|k| norm_axis(axes_t.data.i(k), rank))
                .collect::<Result<_, _>>()?;
            if axes.is_empty() {
                if int_attr("noop_with_empty_axes", 0) != 0 {
                    return Ok(vec![Tensor::new(shape, elem, x.data.clone())]);
                }
                axes = (0..rank).collect();
            }
            nn_ops::reduce(op, x, &axes, &elem)?
        }
        NnOp::ArgMax | NnOp::ArgMin => {
            let axis = norm_axis(int_attr("axis", 0), x.shape.len())?;
            nn_ops::arg_reduce(
                op == NnOp::ArgMax,
                x,
                axis,
                int_attr("select_last_index", 0) != 0,
            )
        }
    };
    Ok(vec![Tensor::new(shape, elem, data)])
}

fn softplus(a: f64) -> f64 {
    if a > 30.0 {
        a
    } else {
        a.exp().ln_1p()
    }
}

fn mask_bits(bits: u8) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn unary(op: NnOp, a: f64, alpha: f64, beta: f64, tanh_gelu: bool) -> f64 {
    match op {
        NnOp::Relu => {
            if a.is_nan() {
                a
            } else {
                a.max(0.0)
            }
        }
        NnOp::Exp => a.exp(),
        NnOp::Log => a.ln(),
        NnOp::Sqrt => a.sqrt(),
        NnOp::Reciprocal => 1.0 / a,
        NnOp::Tanh => a.tanh(),
        NnOp::Sigmoid => 1.0 / (1.0 + (-a).exp()),
        NnOp::Erf => libm::erf(a),
        NnOp::Sin => a.sin(),
        NnOp::Cos => a.cos(),
        NnOp::Floor => a.floor(),
        NnOp::Ceil => a.ceil(),
        NnOp::Round => a.round_ties_even(),
        NnOp::Softplus => softplus(a),
        NnOp::Gelu if tanh_gelu => {
            0.5 * a
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (a + 0.044715 * a * a * a)).tanh())
        }
        NnOp::Gelu => 0.5 * a * (1.0 + libm::erf(a / std::f64::consts::SQRT_2)),
        NnOp::LeakyRelu => {
            if a >= 0.0 {
                a
            } else {
                alpha * a
            }
        }
        NnOp::Elu => {
            if a > 0.0 {
                a
            } else {
                alpha * (a.exp() - 1.0)
            }
        }
        NnOp::HardSigmoid => (alpha * a + beta).clamp(0.0, 1.0),
        NnOp::Tan => a.tan(),
        NnOp::Asin => a.asin(),
        NnOp::Acos => a.acos(),
        NnOp::Atan => a.atan(),
        NnOp::Sinh => a.sinh(),
        NnOp::Cosh => a.cosh(),
        NnOp::Asinh => a.asinh(),
        NnOp::Acosh => a.acosh(),
        NnOp::Atanh => a.atanh(),
        NnOp::Softsign => a / (1.0 + a.abs()),
        NnOp::Mish => a * softplus(a).tanh(),
        // beta carries gamma.
        NnOp::Selu => beta * if a > 0.0 { a } else { alpha * (a.exp() - 1.0) },
        NnOp::Celu => a.max(0.0) + (alpha * ((a / alpha).exp() - 1.0)).min(0.0),
        NnOp::ThresholdedRelu => {
            if a > alpha {
                a
            } else {
                0.0
            }
        }
        NnOp::Swish => a / (1.0 + (-alpha * a).exp()),
        _ => a * (a / 6.0 + 0.5).clamp(0.0, 1.0),
    }
}

fn binary(
    op: NnOp,
    x: &Tensor,
    y: &Tensor,
    shape: &[usize],
    elem: &ElemType,
    fmod: bool,
) -> Result<Data, String> {
    let (ia, ib) = (
        broadcast_map(&x.shape, shape),
        broadcast_map(&y.shape, shape),
    );
    match (&x.data, elem) {
        (Data::F(a), _) => Ok(Data::F(
            ia.iter()
                .zip(&ib)
                .map(|(&i, &j)| {
                    let (p, q) = (a[i], y.data.f(j));
                    round_to(
                        elem,
                        match op {
                            NnOp::Add => p + q,
                            NnOp::Sub => p - q,
                            NnOp::Mul => p * q,
                            NnOp::Div => p / q,
                            NnOp::Pow => p.powf(q),
                            NnOp::Mod if fmod => p % q,
                            NnOp::Mod => {
                                let r = p % q;
                                if r != 0.0 && (r < 0.0) != (q < 0.0) {
                                    r + q
                                } else {
                                    r
                                }
                            }
                            _ if p.is_nan() || q.is_nan() => f64::NAN,
                            NnOp::Max => p.max(q),
                            _ => p.min(q),
                        },
                    )
                })
                .collect(),
        )),
        (Data::I(a), ElemType::Int { bits, unsigned }) => {
            let mut out = Vec::with_capacity(ia.len());
            for (&i, &j) in ia.iter().zip(&ib) {
                let (p, q) = (a[i], y.data.i(j));
                let v = match op {
                    NnOp::Add => p.wrapping_add(q),
                    NnOp::Sub => p.wrapping_sub(q),
                    NnOp::Mul => p.wrapping_mul(q),
                    NnOp::Div | NnOp::Mod if q == 0 => {
                        return Err("integer division by zero".into())
                    }
                    NnOp::Div => p.wrapping_div(q),
                    NnOp::Mod if fmod => p.wrapping_rem(q),
                    NnOp::Mod => p.wrapping_rem(q).wrapping_add(q).wrapping_rem(q),
                    NnOp::Pow if q < 0 => {
                        return Err("integer power with a negative exponent".into())
                    }
                    NnOp::Pow => p.wrapping_pow(q.min(u32::MAX as i64) as u32),
                    NnOp::Max => p.max(q),
                    _ => p.min(q),
                };
                out.push(wrap(v, *bits, *unsigned));
            }
            Ok(Data::I(out))
        }
        _ => Err("operand and result kinds differ".into()),
    }
}

fn cast(x: &Tensor, to: &ElemType) -> Result<Data, String> {
    Ok(match (&x.data, to) {
        (Data::F(v), ElemType::Int { bits, unsigned }) => Data::I(
            v.iter()
                .map(|&a| raw::float_to_int(a, *bits, *unsigned))
                .collect(),
        ),
        (Data::F(v), e) => Data::F(v.iter().map(|&a| round_to(e, a)).collect()),
        (Data::I(v), ElemType::Int { bits, unsigned }) => {
            Data::I(v.iter().map(|&a| wrap(a, *bits, *unsigned)).collect())
        }
        (Data::I(v), e) => Data::F(v.iter().map(|&a| round_to(e, a as f64)).collect()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_ir::parse_type;

    fn t(ty: &str, v: Vec<f64>) -> Tensor {
        Tensor::from_dense(&DenseData::Float(v), &parse_type(ty).unwrap()).unwrap()
    }
    fn ints(v: Vec<i64>) -> Tensor {
        let n = v.len() as u64;
        Tensor::from_dense(
            &DenseData::Int(v),
            &parse_type(&format!("tensor<{n}xi64>")).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn broadcast_add_and_matmul() {
        let a = t("tensor<2x2xf32>", vec![1.0, 2.0, 3.0, 4.0]);
        let b = t("tensor<2xf32>", vec![10.0, 20.0]);
        let r = eval_nn(NnOp::Add, &Attrs::new(), &[a.clone(), b], &ElemType::F32).unwrap();
        assert_eq!(r[0].data, Data::F(vec![11.0, 22.0, 13.0, 24.0]));
        let r = eval_nn(NnOp::Matmul, &Attrs::new(), &[a.clone(), a], &ElemType::F32).unwrap();
        assert_eq!(r[0].data, Data::F(vec![7.0, 10.0, 15.0, 22.0]));
    }

    #[test]
    fn f32_results_are_rounded_and_ints_wrap() {
        let a = t("tensor<f32>", vec![0.1]);
        let r = eval_nn(NnOp::Add, &Attrs::new(), &[a.clone(), a], &ElemType::F32).unwrap();
        assert_eq!(r[0].data, Data::F(vec![(0.1f32 + 0.1f32) as f64]));
        let i8t = parse_type("tensor<i8>").unwrap();
        let x = Tensor::from_dense(&DenseData::Int(vec![100]), &i8t).unwrap();
        let r = eval_nn(NnOp::Add, &Attrs::new(), &[x.clone(), x], &i8t.elem).unwrap();
        assert_eq!(r[0].data, Data::I(vec![-56]));
    }

    #[test]
    fn reshape_slice_gather_with_runtime_shapes() {
        let a = t("tensor<2x3xf32>", vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let r = eval_nn(
            NnOp::Reshape,
            &Attrs::new(),
            &[a.clone(), ints(vec![3, -1])],
            &ElemType::F32,
        )
        .unwrap();
        assert_eq!(r[0].shape, vec![3, 2]);
        let r = eval_nn(
            NnOp::Slice,
            &Attrs::new(),
            &[
                a.clone(),
                ints(vec![-1]),
                ints(vec![i64::MIN]),
                ints(vec![1]),
                ints(vec![-2]),
            ],
            &ElemType::F32,
        )
        .unwrap();
        assert_eq!(
            (r[0].shape.clone(), r[0].data.clone()),
            (vec![2, 2], Data::F(vec![3.0, 1.0, 6.0, 4.0]))
        );
        let attrs: Attrs = [("axis", Attribute::Int(1))].into_iter().collect();
        let r = eval_nn(
            NnOp::Gather,
            &attrs,
            &[a, ints(vec![2, -3])],
            &ElemType::F32,
        )
        .unwrap();
        assert_eq!(r[0].data, Data::F(vec![3.0, 1.0, 6.0, 4.0]));
    }

    #[test]
    fn reductions_and_transpose() {
        let a = t("tensor<2x3xf32>", vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let perm: Attrs = [(
            "perm",
            Attribute::Array(vec![Attribute::Int(1), Attribute::Int(0)]),
        )]
        .into_iter()
        .collect();
        let r = eval_nn(
            NnOp::Transpose,
            &perm,
            std::slice::from_ref(&a),
            &ElemType::F32,
        )
        .unwrap();
        assert_eq!(r[0].data, Data::F(vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
        let keep0: Attrs = [("keepdims", Attribute::Int(0))].into_iter().collect();
        let r = eval_nn(
            NnOp::ReduceMean,
            &keep0,
            &[a.clone(), ints(vec![1])],
            &ElemType::F32,
        )
        .unwrap();
        assert_eq!(
            (r[0].shape.clone(), r[0].data.clone()),
            (vec![2], Data::F(vec![2.0, 5.0]))
        );
        let r = eval_nn(
            NnOp::Softmax,
            &[("axis", Attribute::Int(-1))].into_iter().collect(),
            &[a],
            &ElemType::F32,
        )
        .unwrap();
        let s: f64 = (0..3).map(|i| r[0].data.f(i)).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
}

//! Result-type inference for every nn op, shared by the verifier and the importer.
//!
//! [`infer`] computes an op's result types from its operand types, its attributes and the values of
//! operands that are constants (a reshape's target shape, a slice's bounds). Where a value is not known
//! at compile time the corresponding dimensions are dynamic; the rank must always be known.

use qc_ir::attr::{Attribute, Attrs, DenseData};
use qc_ir::ops::OpCtx;
use qc_ir::types::{Dim, ElemType, TensorType};

use crate::shape::{self, type_matches};
use crate::{norm_axis, NnOp};

/// What inference sees of one op.
pub struct InferCx<'a> {
    /// Operand types.
    pub types: Vec<&'a TensorType>,
    /// Attributes.
    pub attrs: &'a Attrs,
    /// Values of constant operands (None when not a compile-time constant).
    pub consts: Vec<Option<&'a DenseData>>,
    /// The element type of the result for ops whose result type is chosen rather than derived
    /// (`cast`, `constant_of_shape`).
    pub result_elem: Option<ElemType>,
}

const I1: ElemType = ElemType::Int {
    bits: 1,
    unsigned: false,
};
const I64: ElemType = ElemType::Int {
    bits: 64,
    unsigned: false,
};

impl InferCx<'_> {
    fn int(&self, name: &str, default: i64) -> i64 {
        self.attrs
            .get(name)
            .and_then(Attribute::as_int)
            .unwrap_or(default)
    }
    fn ints(&self, name: &str) -> Vec<i64> {
        self.attrs
            .get(name)
            .and_then(Attribute::as_int_array)
            .unwrap_or_default()
    }
    /// The values of constant operand `i` as integers.
    fn const_ints(&self, i: usize) -> Option<Vec<i64>> {
        let d = self.consts.get(i).copied().flatten()?;
        let n = self.types[i].num_elements()? as usize;
        Some((0..n).map(|k| d.get_i64(k)).collect())
    }
    fn const_f64(&self, i: usize) -> Option<f64> {
        Some(self.consts.get(i).copied().flatten()?.get_f64(0))
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

fn float(t: &TensorType) -> Result<(), String> {
    if t.elem.is_float() {
        Ok(())
    } else {
        Err(format!("expected a float tensor, not {t}"))
    }
}

fn int_elem(t: &TensorType) -> Result<(), String> {
    match t.elem {
        ElemType::Int { bits, .. } if bits > 1 => Ok(()),
        _ => Err(format!("expected an integer tensor, not {t}")),
    }
}

fn is_bool(t: &TensorType) -> Result<(), String> {
    if t.elem == I1 {
        Ok(())
    } else {
        Err(format!("expected an i1 tensor, not {t}"))
    }
}

fn int_1d(t: &TensorType, what: &str) -> Result<Dim, String> {
    if !matches!(t.elem, ElemType::Int { .. }) || t.rank() != 1 {
        return Err(format!("{what} must be a 1-D integer tensor, not {t}"));
    }
    Ok(t.dims[0].clone())
}

fn same_elem(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a.elem == b.elem {
        Ok(())
    } else {
        Err(format!(
            "operand element types differ: {} and {}",
            a.elem, b.elem
        ))
    }
}

fn dyn_dims(n: usize) -> Vec<Dim> {
    vec![Dim::Dynamic; n]
}

/// The rank a 1-D shape operand gives, when its length is static.
fn rank_of_shape_operand(t: &TensorType) -> Result<usize, String> {
    int_1d(t, "the shape operand")?
        .as_static()
        .map(|n| n as usize)
        .ok_or_else(|| {
            format!("the result rank is unknown: the shape operand {t} has a dynamic length")
        })
}

fn static_or_dyn(n: Option<u64>) -> Dim {
    n.map_or(Dim::Dynamic, Dim::Static)
}

fn product(dims: &[Dim]) -> Option<u64> {
    dims.iter()
        .try_fold(1u64, |a, d| a.checked_mul(d.as_static()?))
}

/// Infers the result types of `op`.
pub fn infer(op: NnOp, cx: &InferCx) -> Result<Vec<TensorType>, String> {
    let t = &cx.types;
    let one = |dims: Vec<Dim>, elem: ElemType| Ok(vec![TensorType { dims, elem }]);
    match op {
        NnOp::Add | NnOp::Sub | NnOp::Mul | NnOp::Div | NnOp::Max | NnOp::Min | NnOp::Mod => {
            numeric(t[0])?;
            same_elem(t[0], t[1])?;
            one(shape::broadcast(&t[0].dims, &t[1].dims)?, t[0].elem.clone())
        }
        NnOp::Pow => {
            numeric(t[0])?;
            numeric(t[1])?;
            one(shape::broadcast(&t[0].dims, &t[1].dims)?, t[0].elem.clone())
        }
        NnOp::Equal | NnOp::Less | NnOp::LessOrEqual | NnOp::Greater | NnOp::GreaterOrEqual => {
            same_elem(t[0], t[1])?;
            one(shape::broadcast(&t[0].dims, &t[1].dims)?, I1)
        }
        NnOp::And | NnOp::Or | NnOp::Xor => {
            is_bool(t[0])?;
            is_bool(t[1])?;
            one(shape::broadcast(&t[0].dims, &t[1].dims)?, I1)
        }
        NnOp::Not => {
            is_bool(t[0])?;
            one(t[0].dims.clone(), I1)
        }
        NnOp::BitwiseAnd | NnOp::BitwiseOr | NnOp::BitwiseXor | NnOp::BitShift => {
            int_elem(t[0])?;
            same_elem(t[0], t[1])?;
            if op == NnOp::BitShift
                && !matches!(cx.attrs.get("direction"), Some(Attribute::Str(d)) if d == "LEFT" || d == "RIGHT")
            {
                return Err("bit_shift direction must be \"LEFT\" or \"RIGHT\"".into());
            }
            one(shape::broadcast(&t[0].dims, &t[1].dims)?, t[0].elem.clone())
        }
        NnOp::BitwiseNot => {
            int_elem(t[0])?;
            Ok(vec![t[0].clone()])
        }
        NnOp::Neg | NnOp::Abs | NnOp::Sign | NnOp::Shrink => {
            numeric(t[0])?;
            Ok(vec![t[0].clone()])
        }
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
        | NnOp::Swish
        | NnOp::Lrn
        | NnOp::Softmax
        | NnOp::LogSoftmax => {
            float(t[0])?;
            if op == NnOp::Lrn && (t[0].rank() < 2 || cx.int("size", 0) < 1) {
                return Err("lrn needs a tensor of rank 2 or more and a positive size".into());
            }
            if let Some(a) = cx.attrs.get("approximate") {
                if !matches!(a, Attribute::Str(s) if s == "none" || s == "tanh") {
                    return Err("gelu approximate must be \"none\" or \"tanh\"".into());
                }
            }
            if matches!(op, NnOp::Softmax | NnOp::LogSoftmax) {
                norm_axis(cx.int("axis", -1), t[0].rank())?;
            }
            Ok(vec![t[0].clone()])
        }
        NnOp::IsNan | NnOp::IsInf => {
            float(t[0])?;
            one(t[0].dims.clone(), I1)
        }
        NnOp::Identity => Ok(vec![t[0].clone()]),
        NnOp::Clip => {
            numeric(t[0])?;
            for b in [t[1], t[2]] {
                same_elem(t[0], b)?;
                if b.num_elements() != Some(1) {
                    return Err(format!("clip bounds must be single values, not {b}"));
                }
            }
            Ok(vec![t[0].clone()])
        }
        NnOp::Where => {
            is_bool(t[0])?;
            same_elem(t[1], t[2])?;
            let d = shape::broadcast(&t[0].dims, &t[1].dims)?;
            one(shape::broadcast(&d, &t[2].dims)?, t[1].elem.clone())
        }
        NnOp::Cast => {
            let to = cx
                .result_elem
                .clone()
                .ok_or("cast needs a target element type")?;
            let raw = |e: &ElemType| matches!(e, ElemType::Raw(_));
            if !raw(&t[0].elem) {
                numeric(t[0]).or_else(|_| is_bool(t[0]))?;
            }
            if !(raw(&to) || to.is_float() || matches!(to, ElemType::Int { .. })) {
                return Err(format!("cannot cast to {to}"));
            }
            one(t[0].dims.clone(), to)
        }
        NnOp::Matmul => {
            numeric(t[0])?;
            same_elem(t[0], t[1])?;
            let (a, b) = (&t[0].dims, &t[1].dims);
            if a.is_empty() || b.is_empty() {
                return Err("matmul operands must have rank 1 or more".into());
            }
            let a2: Vec<Dim> = if a.len() == 1 {
                vec![Dim::Static(1), a[0].clone()]
            } else {
                a.clone()
            };
            let b2: Vec<Dim> = if b.len() == 1 {
                vec![b[0].clone(), Dim::Static(1)]
            } else {
                b.clone()
            };
            let mut d = shape::matmul(&a2, &b2, false)?;
            if b.len() == 1 {
                d.pop();
            }
            if a.len() == 1 {
                d.remove(d.len() - if b.len() == 1 { 1 } else { 2 });
            }
            one(d, t[0].elem.clone())
        }
        NnOp::Gemm => {
            float(t[0])?;
            same_elem(t[0], t[1])?;
            same_elem(t[0], t[2])?;
            if t[0].rank() != 2 || t[1].rank() != 2 {
                return Err("gemm operands A and B must have rank 2".into());
            }
            let (ta, tb) = (cx.int("trans_a", 0) != 0, cx.int("trans_b", 0) != 0);
            let (m, k1) = if ta {
                (&t[0].dims[1], &t[0].dims[0])
            } else {
                (&t[0].dims[0], &t[0].dims[1])
            };
            let (k2, n) = if tb {
                (&t[1].dims[1], &t[1].dims[0])
            } else {
                (&t[1].dims[0], &t[1].dims[1])
            };
            if let (Some(p), Some(q)) = (k1.as_static(), k2.as_static()) {
                if p != q {
                    return Err(format!("gemm contraction dimensions differ: {p} and {q}"));
                }
            }
            let out = vec![m.clone(), n.clone()];
            shape::broadcast(&out, &t[2].dims)?;
            one(out, t[0].elem.clone())
        }
        NnOp::Conv | NnOp::MaxPool | NnOp::AvgPool => {
            if op == NnOp::MaxPool {
                numeric(t[0])?;
            } else {
                float(t[0])?;
            }
            let x = t[0];
            let sp = x
                .rank()
                .checked_sub(2)
                .filter(|&s| s > 0)
                .ok_or_else(|| format!("expected an N x C x spatial... tensor, not {x}"))?;
            let k = cx.ints("kernel_shape");
            let (s, p, d) = (cx.ints("strides"), cx.ints("pads"), cx.ints("dilations"));
            if k.len() != sp || s.len() != sp || d.len() != sp || p.len() != 2 * sp {
                return Err(format!(
                    "kernel_shape, strides, dilations need {sp} entries and pads {}",
                    2 * sp
                ));
            }
            if k.iter().chain(&s).chain(&d).any(|&v| v < 1) || p.iter().any(|&v| v < 0) {
                return Err(
                    "kernel_shape, strides and dilations must be positive, pads non-negative"
                        .into(),
                );
            }
            let ceil = cx.int("ceil_mode", 0) != 0;
            let mut dims = vec![x.dims[0].clone()];
            if op == NnOp::Conv {
                let w = t[1];
                same_elem(x, w)?;
                same_elem(x, t[2])?;
                let g = cx.int("group", 1);
                if w.rank() != x.rank() || g < 1 {
                    return Err(format!(
                        "conv weights {w} do not match input {x} (group {g})"
                    ));
                }
                if let (Some(c), Some(wc)) = (x.dims[1].as_static(), w.dims[1].as_static()) {
                    if c != wc * g as u64 {
                        return Err(format!(
                            "conv input has {c} channels but weights expect {} x group {g}",
                            wc
                        ));
                    }
                }
                for (i, &kk) in k.iter().enumerate() {
                    if let Some(wk) = w.dims[2 + i].as_static() {
                        if wk != kk as u64 {
                            return Err(format!(
                                "kernel_shape {k:?} does not match the weights {w}"
                            ));
                        }
                    }
                }
                dims.push(w.dims[0].clone());
            } else {
                dims.push(x.dims[1].clone());
            }
            for i in 0..sp {
                dims.push(match x.dims[2 + i].as_static() {
                    Some(n) => {
                        let eff = d[i] * (k[i] - 1) + 1;
                        let span = n as i64 + p[i] + p[sp + i] - eff;
                        if span < 0 {
                            return Err(format!(
                                "the window {eff} is larger than the padded input {}",
                                n as i64 + p[i] + p[sp + i]
                            ));
                        }
                        let mut o = span / s[i] + 1;
                        if ceil && span % s[i] != 0 {
                            o += 1;
                            // The last window must start inside the input or the left padding.
                            if (o - 1) * s[i] >= n as i64 + p[i] {
                                o -= 1;
                            }
                        }
                        Dim::Static(o as u64)
                    }
                    None => Dim::Dynamic,
                });
            }
            one(dims, x.elem.clone())
        }
        NnOp::GlobalAvgPool | NnOp::GlobalMaxPool => {
            float(t[0])?;
            if t[0].rank() < 3 {
                return Err(format!(
                    "expected an N x C x spatial... tensor, not {}",
                    t[0]
                ));
            }
            let mut dims = t[0].dims[..2].to_vec();
            dims.extend(std::iter::repeat_n(Dim::Static(1), t[0].rank() - 2));
            one(dims, t[0].elem.clone())
        }
        NnOp::ConvTranspose => {
            float(t[0])?;
            let (x, w) = (t[0], t[1]);
            same_elem(x, w)?;
            same_elem(x, t[2])?;
            let sp = x
                .rank()
                .checked_sub(2)
                .filter(|&s| s > 0)
                .ok_or_else(|| format!("expected an N x C x spatial... tensor, not {x}"))?;
            let k = cx.ints("kernel_shape");
            let (s, p, d) = (cx.ints("strides"), cx.ints("pads"), cx.ints("dilations"));
            let op_ = cx.ints("output_padding");
            let g = cx.int("group", 1);
            if k.len() != sp
                || s.len() != sp
                || d.len() != sp
                || op_.len() != sp
                || p.len() != 2 * sp
            {
                return Err(format!(
                    "kernel_shape, strides, dilations, output_padding need {sp} entries and pads {}",
                    2 * sp
                ));
            }
            if k.iter().chain(&s).chain(&d).any(|&v| v < 1) || op_.iter().any(|&v| v < 0) || g < 1 {
                return Err("kernel_shape, strides, dilations and group must be positive".into());
            }
            if w.rank() != x.rank() {
                return Err(format!("conv_transpose weights {w} do not match input {x}"));
            }
            if let (Some(c), Some(wc)) = (x.dims[1].as_static(), w.dims[0].as_static()) {
                if c != wc || c % g as u64 != 0 {
                    return Err(format!(
                        "conv_transpose input has {c} channels, weights {wc}, group {g}"
                    ));
                }
            }
            for (i, &kk) in k.iter().enumerate() {
                if w.dims[2 + i].as_static().is_some_and(|wk| wk != kk as u64) {
                    return Err(format!("kernel_shape {k:?} does not match the weights {w}"));
                }
            }
            let m = w.dims[1].as_static().map(|v| v * g as u64);
            if let (Some(m), Some(b)) = (m, t[2].num_elements()) {
                if t[2].rank() != 1 || b != m {
                    return Err(format!(
                        "conv_transpose bias {} does not have {m} entries",
                        t[2]
                    ));
                }
            }
            let mut dims = vec![x.dims[0].clone(), static_or_dyn(m)];
            for i in 0..sp {
                dims.push(match x.dims[2 + i].as_static() {
                    Some(n) => {
                        let o = s[i] * (n as i64 - 1) + op_[i] + (k[i] - 1) * d[i] + 1
                            - p[i]
                            - p[sp + i];
                        if o < 0 {
                            return Err(format!("conv_transpose result dimension {o} is negative"));
                        }
                        Dim::Static(o as u64)
                    }
                    None => Dim::Dynamic,
                });
            }
            one(dims, x.elem.clone())
        }
        NnOp::CumSum => {
            numeric(t[0])?;
            if !matches!(t[1].elem, ElemType::Int { .. }) || t[1].num_elements() != Some(1) {
                return Err(format!("cum_sum axis must be one integer, not {}", t[1]));
            }
            if let Some(a) = cx.const_ints(1) {
                norm_axis(a[0], t[0].rank())?;
            }
            Ok(vec![t[0].clone()])
        }
        NnOp::NllLoss => {
            float(t[0])?;
            same_elem(t[0], t[2])?;
            if !matches!(t[1].elem, ElemType::Int { bits, .. } if bits > 1) {
                return Err(format!("nll_loss targets must be integers, not {}", t[1]));
            }
            let r = t[0].rank();
            if r < 2 || t[1].rank() != r - 1 || t[2].rank() != 1 {
                return Err(format!(
                    "nll_loss needs x [N, C, d...], target [N, d...] and weight [C], not {}, {} and {}",
                    t[0], t[1], t[2]
                ));
            }
            match cx.attrs.get("reduction") {
                Some(Attribute::Str(s)) if s == "none" => one(t[1].dims.clone(), t[0].elem.clone()),
                Some(Attribute::Str(s)) if s == "sum" || s == "mean" => {
                    one(vec![], t[0].elem.clone())
                }
                _ => Err("nll_loss reduction must be \"none\", \"sum\" or \"mean\"".into()),
            }
        }
        NnOp::BatchNorm => {
            float(t[0])?;
            if t[0].rank() < 2 {
                return Err("batch_norm needs a tensor of rank 2 or more".into());
            }
            for p in &t[1..] {
                if p.rank() != 1 {
                    return Err(format!("batch_norm parameters must be 1-D, not {p}"));
                }
            }
            Ok(vec![t[0].clone()])
        }
        NnOp::LayerNorm => {
            float(t[0])?;
            norm_axis(cx.int("axis", -1), t[0].rank())?;
            Ok(vec![t[0].clone()])
        }
        NnOp::Reshape => {
            let n = rank_of_shape_operand(t[1])?;
            let Some(target) = cx.const_ints(1) else {
                return one(dyn_dims(n), t[0].elem.clone());
            };
            let allowzero = cx.int("allowzero", 0) != 0;
            let mut dims = Vec::with_capacity(n);
            let mut infer_at = None;
            for (i, &s) in target.iter().enumerate() {
                dims.push(match s {
                    0 if !allowzero => t[0]
                        .dims
                        .get(i)
                        .cloned()
                        .ok_or("reshape copies a dimension the input does not have")?,
                    -1 if infer_at.is_none() => {
                        infer_at = Some(i);
                        Dim::Dynamic
                    }
                    s if s >= 0 => Dim::Static(s as u64),
                    s => return Err(format!("invalid reshape dimension {s}")),
                });
            }
            let total = t[0].num_elements();
            if let Some(i) = infer_at {
                let rest: Vec<Dim> = dims
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, d)| d.clone())
                    .collect();
                if let (Some(tot), Some(r)) = (total, product(&rest)) {
                    if r == 0 || tot % r != 0 {
                        return Err(format!("cannot reshape {tot} elements into {target:?}"));
                    }
                    dims[i] = Dim::Static(tot / r);
                }
            } else if let (Some(a), Some(b)) = (total, product(&dims)) {
                if a != b {
                    return Err(format!("cannot reshape {a} elements into {b}"));
                }
            }
            one(dims, t[0].elem.clone())
        }
        NnOp::Flatten => {
            let r = t[0].rank();
            let a = cx.int("axis", 1);
            let a = if a < 0 { a + r as i64 } else { a };
            if !(0..=r as i64).contains(&a) {
                return Err(format!("flatten axis {a} is out of range for rank {r}"));
            }
            let (l, h) = t[0].dims.split_at(a as usize);
            one(
                vec![static_or_dyn(product(l)), static_or_dyn(product(h))],
                t[0].elem.clone(),
            )
        }
        NnOp::Squeeze | NnOp::Unsqueeze => {
            let n_axes = int_1d(t[1], "axes")?;
            let x = &t[0].dims;
            let Some(axes) = cx.const_ints(1) else {
                // Axes known only at run time: the rank follows from how many there are.
                let k = n_axes
                    .as_static()
                    .ok_or("squeeze/unsqueeze axes of unknown length must be constants")?
                    as usize;
                let r = if op == NnOp::Squeeze {
                    x.len()
                        .checked_sub(k)
                        .ok_or("more squeeze axes than dimensions")?
                } else {
                    x.len() + k
                };
                return one(dyn_dims(r), t[0].elem.clone());
            };
            if op == NnOp::Squeeze {
                let mut drop = vec![false; x.len()];
                for &a in &axes {
                    let i = norm_axis(a, x.len())?;
                    if matches!(x[i], Dim::Static(n) if n != 1) {
                        return Err(format!("cannot squeeze dimension {i} of size {}", x[i]));
                    }
                    drop[i] = true;
                }
                one(
                    x.iter()
                        .zip(&drop)
                        .filter(|(_, &d)| !d)
                        .map(|(d, _)| d.clone())
                        .collect(),
                    t[0].elem.clone(),
                )
            } else {
                let r = x.len() + axes.len();
                let mut ins = vec![false; r];
                for &a in &axes {
                    let i = norm_axis(a, r)?;
                    if ins[i] {
                        return Err(format!("axis {a} is listed twice"));
                    }
                    ins[i] = true;
                }
                let mut it = x.iter();
                one(
                    (0..r)
                        .map(|i| {
                            if ins[i] {
                                Dim::Static(1)
                            } else {
                                it.next().cloned().unwrap_or(Dim::Dynamic)
                            }
                        })
                        .collect(),
                    t[0].elem.clone(),
                )
            }
        }
        NnOp::Transpose => one(
            shape::transpose(&t[0].dims, &cx.ints("perm"))?,
            t[0].elem.clone(),
        ),
        NnOp::Concat => one(shape::concat(t, cx.int("axis", 0))?, t[0].elem.clone()),
        NnOp::Split => {
            let n_split = int_1d(t[1], "split")?;
            let a = norm_axis(cx.int("axis", 0), t[0].rank())?;
            let Some(sizes) = cx.const_ints(1) else {
                // Sizes known only at run time: one result per entry, the split dimension dynamic.
                let k = n_split
                    .as_static()
                    .ok_or("split sizes of unknown length must be constants")?;
                let mut d = t[0].dims.clone();
                d[a] = Dim::Dynamic;
                return Ok((0..k)
                    .map(|_| TensorType {
                        dims: d.clone(),
                        elem: t[0].elem.clone(),
                    })
                    .collect());
            };
            if sizes.iter().any(|&s| s < 0) {
                return Err("split sizes must be non-negative".into());
            }
            if let Some(n) = t[0].dims[a].as_static() {
                if sizes.iter().sum::<i64>() as u64 != n {
                    return Err(format!(
                        "split sizes {sizes:?} do not add up to dimension {a} of size {n}"
                    ));
                }
            }
            Ok(sizes
                .iter()
                .map(|&s| {
                    let mut d = t[0].dims.clone();
                    d[a] = Dim::Static(s as u64);
                    TensorType {
                        dims: d,
                        elem: t[0].elem.clone(),
                    }
                })
                .collect())
        }
        NnOp::Slice => {
            for (i, what) in [(1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")] {
                int_1d(t[i], what)?;
            }
            let mut dims = t[0].dims.clone();
            let r = dims.len();
            let Some(axes) = cx.const_ints(3) else {
                return one(dyn_dims(r), t[0].elem.clone());
            };
            let axes: Vec<usize> = axes
                .iter()
                .map(|&a| norm_axis(a, r))
                .collect::<Result<_, _>>()?;
            match (cx.const_ints(1), cx.const_ints(2), cx.const_ints(4)) {
                (Some(st), Some(en), Some(sp))
                    if st.len() == axes.len()
                        && en.len() == axes.len()
                        && sp.len() == axes.len() =>
                {
                    for (k, &a) in axes.iter().enumerate() {
                        if sp[k] == 0 {
                            return Err("slice steps must not be zero".into());
                        }
                        if let Some(n) = dims[a].as_static() {
                            dims[a] =
                                Dim::Static(shape::slice_len(n as i64, st[k], en[k], sp[k]) as u64);
                        } else {
                            dims[a] = Dim::Dynamic;
                        }
                    }
                }
                _ => {
                    for &a in &axes {
                        dims[a] = Dim::Dynamic;
                    }
                }
            }
            one(dims, t[0].elem.clone())
        }
        NnOp::Gather => {
            if !matches!(t[1].elem, ElemType::Int { .. }) {
                return Err(format!("gather indices must be integers, not {}", t[1]));
            }
            let a = norm_axis(cx.int("axis", 0), t[0].rank())?;
            let mut d = t[0].dims[..a].to_vec();
            d.extend(t[1].dims.iter().cloned());
            d.extend(t[0].dims[a + 1..].iter().cloned());
            one(d, t[0].elem.clone())
        }
        NnOp::GatherElements => {
            if t[0].rank() != t[1].rank() || !matches!(t[1].elem, ElemType::Int { .. }) {
                return Err("gather_elements indices must be integers of the data's rank".into());
            }
            norm_axis(cx.int("axis", 0), t[0].rank())?;
            one(t[1].dims.clone(), t[0].elem.clone())
        }
        NnOp::Expand => {
            let n = rank_of_shape_operand(t[1])?;
            match cx.const_ints(1) {
                Some(s) => {
                    let sd: Vec<Dim> = s
                        .iter()
                        .map(|&v| {
                            if v >= 0 {
                                Dim::Static(v as u64)
                            } else {
                                Dim::Dynamic
                            }
                        })
                        .collect();
                    one(shape::broadcast(&t[0].dims, &sd)?, t[0].elem.clone())
                }
                None => one(dyn_dims(n.max(t[0].rank())), t[0].elem.clone()),
            }
        }
        NnOp::Tile => {
            int_1d(t[1], "repeats")?;
            match cx.const_ints(1) {
                Some(r) if r.len() == t[0].rank() => one(
                    t[0].dims
                        .iter()
                        .zip(&r)
                        .map(|(d, &k)| static_or_dyn(d.as_static().map(|n| n * k.max(0) as u64)))
                        .collect(),
                    t[0].elem.clone(),
                ),
                Some(r) => Err(format!(
                    "tile repeats has {} entries but the input has rank {}",
                    r.len(),
                    t[0].rank()
                )),
                None => one(dyn_dims(t[0].rank()), t[0].elem.clone()),
            }
        }
        NnOp::Pad => {
            int_1d(t[1], "pads")?;
            let r = t[0].rank();
            match cx.const_ints(1) {
                Some(p) if p.len() == 2 * r => {
                    let mut dims = Vec::with_capacity(r);
                    for i in 0..r {
                        dims.push(match t[0].dims[i].as_static() {
                            Some(n) => {
                                let m = n as i64 + p[i] + p[r + i];
                                if m < 0 {
                                    return Err(format!(
                                        "pads {p:?} remove more than dimension {i} holds"
                                    ));
                                }
                                Dim::Static(m as u64)
                            }
                            None => Dim::Dynamic,
                        });
                    }
                    one(dims, t[0].elem.clone())
                }
                Some(p) => Err(format!("pads has {} entries, expected {}", p.len(), 2 * r)),
                None => one(dyn_dims(r), t[0].elem.clone()),
            }
        }
        NnOp::Shape => {
            let r = t[0].rank() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
            let (s, e) = (clamp(cx.int("start", 0)), clamp(cx.int("end", r)));
            one(vec![Dim::Static((e - s).max(0) as u64)], I64)
        }
        NnOp::Size => one(vec![], I64),
        NnOp::Range => {
            numeric(t[0])?;
            same_elem(t[0], t[1])?;
            same_elem(t[0], t[2])?;
            let n = match (cx.const_f64(0), cx.const_f64(1), cx.const_f64(2)) {
                (Some(s), Some(l), Some(d)) if d != 0.0 => {
                    Dim::Static(((l - s) / d).ceil().max(0.0) as u64)
                }
                (Some(_), Some(_), Some(_)) => return Err("range delta must not be zero".into()),
                _ => Dim::Dynamic,
            };
            one(vec![n], t[0].elem.clone())
        }
        NnOp::ConstantOfShape => {
            let n = rank_of_shape_operand(t[0])?;
            let elem = cx
                .result_elem
                .clone()
                .ok_or("constant_of_shape needs a result element type")?;
            match cx.const_ints(0) {
                Some(s) if s.iter().all(|&v| v >= 0) => {
                    one(s.iter().map(|&v| Dim::Static(v as u64)).collect(), elem)
                }
                Some(s) => Err(format!(
                    "constant_of_shape shape {s:?} has a negative dimension"
                )),
                None => one(dyn_dims(n), elem),
            }
        }
        NnOp::Trilu => {
            if t[0].rank() < 2 {
                return Err("trilu needs a tensor of rank 2 or more".into());
            }
            Ok(vec![t[0].clone()])
        }
        NnOp::ReduceSum
        | NnOp::ReduceMean
        | NnOp::ReduceMax
        | NnOp::ReduceMin
        | NnOp::ReduceProd => {
            numeric(t[0])?;
            let n_axes = int_1d(t[1], "axes")?;
            let keep = cx.int("keepdims", 1) != 0;
            let noop = cx.int("noop_with_empty_axes", 0) != 0;
            let Some(axes) = cx.const_ints(1) else {
                // Axes known only at run time: the rank follows from keepdims and how many there are.
                let r = t[0].rank();
                let rank =
                    match (n_axes.as_static(), keep) {
                        (Some(0), _) if noop => return Ok(vec![t[0].clone()]),
                        (Some(0), true) => return one(vec![Dim::Static(1); r], t[0].elem.clone()),
                        (Some(0), false) => 0,
                        (_, true) => r,
                        (Some(k), false) => r
                            .checked_sub(k as usize)
                            .ok_or("more reduction axes than dimensions")?,
                        (None, false) => return Err(
                            "reduction axes of unknown length without keepdims must be constants"
                                .into(),
                        ),
                    };
                return one(dyn_dims(rank), t[0].elem.clone());
            };
            let dims = if axes.is_empty() && cx.int("noop_with_empty_axes", 0) != 0 {
                t[0].dims.clone()
            } else {
                shape::reduce(
                    &t[0].dims,
                    if axes.is_empty() { None } else { Some(&axes) },
                    keep,
                )?
            };
            one(dims, t[0].elem.clone())
        }
        NnOp::ArgMax | NnOp::ArgMin => {
            numeric(t[0])?;
            let a = cx.int("axis", 0);
            one(
                shape::reduce(&t[0].dims, Some(&[a]), cx.int("keepdims", 1) != 0)?,
                I64,
            )
        }
    }
}

/// The verifier hook of every nn op: infers the result types and compares them with the declared ones.
pub fn verify_nn(cx: &OpCtx) -> Result<(), String> {
    let op = NnOp::of(cx.op).ok_or("not an nn op")?;
    let n = cx.op.operands.len();
    let icx = InferCx {
        types: (0..n).map(|i| cx.operand_ty(i)).collect(),
        attrs: &cx.op.attrs,
        consts: (0..n).map(|i| cx.constant(i)).collect(),
        result_elem: cx.op.results.first().map(|&r| cx.func.ty(r).elem.clone()),
    };
    let inferred = infer(op, &icx)?;
    if inferred.len() != cx.op.results.len() {
        return Err(format!(
            "'{}' produces {} results, not {}",
            op.def().name,
            inferred.len(),
            cx.op.results.len()
        ));
    }
    for (i, t) in inferred.iter().enumerate() {
        let got = cx.result_ty(i);
        if !type_matches(t, got) {
            return Err(format!(
                "result {i} has type {got} but the inferred type is {t}"
            ));
        }
    }
    Ok(())
}

//! Lowering of a specialized (static-shape) qc function to one StableHLO `func.func @main`.
//!
//! [`lower_func`] visits the ops the results depend on, in order, and emits StableHLO for each: nn ops
//! here, one function per op family; quant ops and quantized constants in [`crate::quant`]. A quantized
//! value (a quantized constant or the result of `quant.quantize`) is carried as its dequantized f32
//! tensor, which is what every consumer (`quant.dequantize`, `quant.matmul`, a `return`) computes
//! first in the reference interpreter.
//!
//! Precision. The module computes in the element types of the qc IR (f32 for f32 tensors; dot products
//! at HIGHEST precision). Add, subtract, multiply, divide and square root of f32 are correctly rounded,
//! as in the interpreter; reductions (matmul, softmax, norms, means) accumulate in f32 where the
//! interpreter accumulates in f64, and transcendental functions (`exp`, `tanh`, `erf`, ...) are XLA's,
//! so those results agree with the interpreter to a few units in the last place rather than bit for bit.

use std::collections::BTreeMap;

use qc_ir::attr::{Attribute, DenseData};
use qc_ir::module::{Func, Module, Op, Value};
use qc_ir::ops::QcOp;
use qc_ir::resource::Blob;
use qc_ir::types::TensorType;
use qc_ir::Diagnostic;
use qc_nn::{norm_axis, NnOp};
use qc_quant::ops::QuantOp;

use crate::build::{scalar_bytes, Cmp, Red, B, E, R, T};

/// A lowered qc value.
#[derive(Clone, Copy)]
pub(crate) enum Lv<'c, 'b> {
    /// A float or integer tensor.
    Plain(T<'c, 'b>),
    /// A quantized tensor, carried as its dequantized f32 values.
    Quant(T<'c, 'b>),
}

impl<'c, 'b> Lv<'c, 'b> {
    fn plain(self) -> R<T<'c, 'b>> {
        match self {
            Lv::Plain(t) => Ok(t),
            Lv::Quant(_) => {
                Err("a quantized tensor is used where a float or integer one is expected".into())
            }
        }
    }
}

/// What an op lowering sees.
pub(crate) struct Cx<'a> {
    pub m: &'a Module,
    pub f: &'a Func,
    pub op: &'a Op,
    pub consts: &'a BTreeMap<Value, &'a DenseData>,
}

impl Cx<'_> {
    pub(crate) fn result_ty(&self, i: usize) -> &TensorType {
        self.f.ty(self.op.results[i])
    }

    pub(crate) fn result_shape(&self, i: usize) -> R<Vec<u64>> {
        let t = self.result_ty(i);
        t.static_shape()
            .ok_or_else(|| format!("the result type {t} is not static"))
    }

    pub(crate) fn int_attr(&self, name: &str, default: i64) -> i64 {
        self.op
            .attr(name)
            .and_then(Attribute::as_int)
            .unwrap_or(default)
    }

    pub(crate) fn f_attr(&self, name: &str, default: f64) -> f64 {
        self.op
            .attr(name)
            .and_then(Attribute::as_f64)
            .unwrap_or(default)
    }

    /// The integer values of operand `i`, which must be a compile-time constant.
    pub(crate) fn const_ints(&self, i: usize) -> R<Vec<i64>> {
        let v = self.op.operands[i];
        let d = self.consts.get(&v).ok_or_else(|| {
            format!(
                "operand {i} must be a compile-time constant (after shape specialization), not a value \
                 computed at run time"
            )
        })?;
        let n = self.f.ty(v).num_elements().unwrap_or(0) as usize;
        Ok((0..n).map(|k| d.get_i64(k)).collect())
    }
}

/// The emitted type of a qc tensor type (static shape; float or integer element).
pub(crate) fn emitted(t: &TensorType) -> R<(Vec<u64>, E)> {
    let s = t
        .static_shape()
        .ok_or_else(|| format!("the type {t} is not static"))?;
    Ok((s, E::of(&t.elem)?))
}

/// The ops of `f` the results depend on.
fn live_ops(f: &Func) -> Vec<bool> {
    let mut needed = vec![false; f.num_values()];
    for &v in &f.ret {
        needed[v.0 as usize] = true;
    }
    let mut live = vec![false; f.ops.len()];
    for (i, op) in f.ops.iter().enumerate().rev() {
        if op.results.iter().any(|r| needed[r.0 as usize]) {
            live[i] = true;
            for &v in &op.operands {
                needed[v.0 as usize] = true;
            }
        }
    }
    live
}

fn diag(op: &Op, msg: String) -> Diagnostic {
    Diagnostic::error(
        op.loc.clone(),
        format!("the xla backend cannot lower {}: {msg}", op.name()),
    )
}

/// Lowers the body of `f` (static shapes; the output of [`crate::specialize`]) into the block of `b`,
/// whose arguments are `f`'s arguments, ending with `func.return`. Returns the result types emitted.
pub(crate) fn lower_func<'c, 'b>(
    b: &B<'c, 'b>,
    m: &Module,
    f: &Func,
    args: Vec<T<'c, 'b>>,
) -> Result<Vec<(Vec<u64>, E)>, Diagnostic> {
    let consts = qc_ir::ops::dense_constants(f);
    let mut env: Vec<Option<Lv<'c, 'b>>> = vec![None; f.num_values()];
    for (&a, t) in f.args.iter().zip(args) {
        env[a.0 as usize] = Some(Lv::Plain(t));
    }
    let live = live_ops(f);
    for (op, _) in f.ops.iter().zip(&live).filter(|(_, &l)| l) {
        let cx = Cx {
            m,
            f,
            op,
            consts: &consts,
        };
        let ins: Vec<Lv> = op
            .operands
            .iter()
            .map(|v| {
                env[v.0 as usize].ok_or_else(|| diag(op, "an operand was never lowered".into()))
            })
            .collect::<Result<_, _>>()?;
        let outs = lower_op(b, &cx, &ins).map_err(|e| diag(op, e))?;
        if outs.len() != op.results.len() {
            return Err(diag(
                op,
                "wrong number of results (a bug in the lowering)".into(),
            ));
        }
        for (&r, v) in op.results.iter().zip(outs) {
            env[r.0 as usize] = Some(v);
        }
    }
    let mut rets = Vec::new();
    let mut tys = Vec::new();
    for &v in &f.ret {
        let t = match env[v.0 as usize] {
            Some(Lv::Plain(t)) | Some(Lv::Quant(t)) => t,
            None => {
                return Err(Diagnostic::error(
                    f.ret_loc.clone(),
                    "a returned value was never lowered",
                ))
            }
        };
        tys.push((b.shape(&t), t.e));
        rets.push(t.v);
    }
    let ret = melior::dialect::func::r#return(&rets, b.loc);
    melior::ir::BlockLike::append_operation(b.block, ret);
    Ok(tys)
}

fn lower_op<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, ins: &[Lv<'c, 'b>]) -> R<Vec<Lv<'c, 'b>>> {
    if let Some(QcOp::Constant) = QcOp::of(cx.op) {
        return constant(b, cx).map(|v| vec![v]);
    }
    if let Some(q) = QuantOp::of(cx.op) {
        return crate::quant::lower_quant(b, cx, q, ins);
    }
    let Some(nn) = NnOp::of(cx.op) else {
        return Err("the op is not known to the backend".into());
    };
    let plain: Vec<T> = ins.iter().map(|l| l.plain()).collect::<R<_>>()?;
    let outs = lower_nn(b, cx, nn, &plain)?;
    Ok(outs.into_iter().map(Lv::Plain).collect())
}

/// `qc.constant`: dense values and float or integer resources become `stablehlo.constant`s; quantized
/// resources are decoded in the module ([`crate::quant::decode_constant`]).
fn constant<'c, 'b>(b: &B<'c, 'b>, cx: &Cx) -> R<Lv<'c, 'b>> {
    let ty = cx.result_ty(0);
    match cx.op.attr("value") {
        Some(Attribute::Dense(d)) => {
            let (shape, e) = emitted(ty)?;
            let n: u64 = shape.iter().product();
            let count = if d.len() == 1 { 1 } else { n as usize };
            let mut bytes = Vec::new();
            for i in 0..count {
                bytes.extend(scalar_bytes(e, d.get_f64(i), d.get_i64(i)));
            }
            if count == 0 && n == 0 {
                bytes.clear();
            }
            Ok(Lv::Plain(b.constant_bytes(&shape, e, &bytes)?))
        }
        Some(Attribute::DenseResource(name)) => {
            let blob =
                cx.m.resources
                    .get(name)
                    .ok_or_else(|| format!("resource '{name}' is not defined"))?;
            let bytes = match blob {
                Blob::Elided => {
                    return Err(format!(
                        "resource '{name}' was elided: its bytes are not in this module"
                    ))
                }
                b => b.bytes().unwrap_or_default(),
            };
            if let Some(fmt) = ty.elem.as_quant() {
                return crate::quant::decode_constant(b, fmt, ty, bytes, name).map(Lv::Quant);
            }
            let (shape, e) = emitted(ty)?;
            if e == E::I(1) {
                // One byte per boolean, as the interpreter reads them.
                return Ok(Lv::Plain(b.constant_bytes(&shape, e, bytes)?));
            }
            Ok(Lv::Plain(b.constant_bytes(&shape, e, bytes)?))
        }
        _ => Err("a constant needs a dense value".into()),
    }
}

/// Broadcasts the operands to the result shape (NumPy rules) and converts the second operand to the
/// first's element type when the op allows another type (`pow`).
fn bcast_all<'c, 'b>(b: &B<'c, 'b>, ins: &[T<'c, 'b>], shape: &[u64]) -> R<Vec<T<'c, 'b>>> {
    ins.iter().map(|&t| b.bcast(t, shape)).collect()
}

fn unary_name(nn: NnOp) -> Option<&'static str> {
    Some(match nn {
        NnOp::Neg => "stablehlo.negate",
        NnOp::Abs => "stablehlo.abs",
        NnOp::Exp => "stablehlo.exponential",
        NnOp::Log => "stablehlo.log",
        NnOp::Sqrt => "stablehlo.sqrt",
        NnOp::Tanh => "stablehlo.tanh",
        NnOp::Sigmoid => "stablehlo.logistic",
        NnOp::Erf => "chlo.erf",
        NnOp::Sin => "stablehlo.sine",
        NnOp::Cos => "stablehlo.cosine",
        NnOp::Tan => "chlo.tan",
        NnOp::Floor => "stablehlo.floor",
        NnOp::Ceil => "stablehlo.ceil",
        NnOp::Round => "stablehlo.round_nearest_even",
        NnOp::Asin => "chlo.asin",
        NnOp::Acos => "chlo.acos",
        NnOp::Atan => "chlo.atan",
        NnOp::Sinh => "chlo.sinh",
        NnOp::Cosh => "chlo.cosh",
        NnOp::Asinh => "chlo.asinh",
        NnOp::Acosh => "chlo.acosh",
        NnOp::Atanh => "chlo.atanh",
        NnOp::BitwiseNot | NnOp::Not => "stablehlo.not",
        _ => return None,
    })
}

/// Lowers one nn op on its (plain) operands.
fn lower_nn<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, nn: NnOp, ins: &[T<'c, 'b>]) -> R<Vec<T<'c, 'b>>> {
    let (shape, e) = emitted(cx.result_ty(0))?;
    let one = |t: T<'c, 'b>| Ok(vec![t]);
    match nn {
        NnOp::Div if e.is_float() => {
            // A true division: XLA rewrites division by a broadcast or constant divisor into a
            // multiplication by its reciprocal unless the divisor is opaque to it.
            let v = bcast_all(b, ins, &shape)?;
            let constant = cx.consts.contains_key(&cx.op.operands[1]);
            if constant || b.shape(&ins[1]) != shape {
                one(b.div_exact(v[0], v[1])?)
            } else {
                one(b.div(v[0], v[1])?)
            }
        }
        NnOp::Add | NnOp::Sub | NnOp::Mul | NnOp::Div | NnOp::Max | NnOp::Min => {
            let v = bcast_all(b, ins, &shape)?;
            let name = match nn {
                NnOp::Add => "stablehlo.add",
                NnOp::Sub => "stablehlo.subtract",
                NnOp::Mul => "stablehlo.multiply",
                NnOp::Div => "stablehlo.divide",
                NnOp::Max => "stablehlo.maximum",
                _ => "stablehlo.minimum",
            };
            one(b.bin(name, v[0], v[1])?)
        }
        NnOp::Pow => pow(b, cx, ins, &shape),
        NnOp::Mod => {
            let v = bcast_all(b, ins, &shape)?;
            let r = b.bin("stablehlo.remainder", v[0], v[1])?;
            if cx.int_attr("fmod", 0) != 0 {
                return one(r);
            }
            // Python's remainder: the sign of the divisor.
            let zero = b.full(&r, 0.0)?;
            let nz = b.compare(r, zero, Cmp::Ne)?;
            let (rn, qn) = (b.compare(r, zero, Cmp::Lt)?, b.compare(v[1], zero, Cmp::Lt)?);
            let differ = b.bin("stablehlo.xor", rn, qn)?;
            let fix = b.and(nz, differ)?;
            let adj = b.add(r, v[1])?;
            one(b.select(fix, adj, r)?)
        }
        NnOp::Equal | NnOp::Less | NnOp::LessOrEqual | NnOp::Greater | NnOp::GreaterOrEqual => {
            let v = bcast_all(b, ins, &shape)?;
            let c = match nn {
                NnOp::Equal => Cmp::Eq,
                NnOp::Less => Cmp::Lt,
                NnOp::LessOrEqual => Cmp::Le,
                NnOp::Greater => Cmp::Gt,
                _ => Cmp::Ge,
            };
            one(b.compare(v[0], v[1], c)?)
        }
        NnOp::And | NnOp::Or | NnOp::Xor | NnOp::BitwiseAnd | NnOp::BitwiseOr | NnOp::BitwiseXor => {
            let v = bcast_all(b, ins, &shape)?;
            let name = match nn {
                NnOp::And | NnOp::BitwiseAnd => "stablehlo.and",
                NnOp::Or | NnOp::BitwiseOr => "stablehlo.or",
                _ => "stablehlo.xor",
            };
            one(b.bin(name, v[0], v[1])?)
        }
        NnOp::BitShift => {
            let v = bcast_all(b, ins, &shape)?;
            let left = matches!(cx.op.attr("direction"), Some(Attribute::Str(d)) if d == "LEFT");
            let name = match (left, e) {
                (true, _) => "stablehlo.shift_left",
                (false, E::U(_)) => "stablehlo.shift_right_logical",
                _ => "stablehlo.shift_right_arithmetic",
            };
            one(b.bin(name, v[0], v[1])?)
        }
        NnOp::Sign if e.is_float() => {
            // The interpreter's sign of +-0 is +0.
            let s = b.un("stablehlo.sign", ins[0])?;
            let z = b.compare_c(ins[0], 0.0, Cmp::Eq)?;
            let zero = b.full(&s, 0.0)?;
            one(b.select(z, zero, s)?)
        }
        NnOp::Sign => one(b.un("stablehlo.sign", ins[0])?),
        NnOp::Reciprocal => {
            let o = b.full(&ins[0], 1.0)?;
            one(b.div(o, ins[0])?)
        }
        NnOp::Relu => {
            let z = b.full(&ins[0], 0.0)?;
            one(b.max(ins[0], z)?)
        }
        nn if unary_name(nn).is_some() => one(b.un(unary_name(nn).unwrap_or_default(), ins[0])?),
        NnOp::Softplus
        | NnOp::Gelu
        | NnOp::LeakyRelu
        | NnOp::Elu
        | NnOp::HardSigmoid
        | NnOp::HardSwish
        | NnOp::Softsign
        | NnOp::Mish
        | NnOp::Selu
        | NnOp::Celu
        | NnOp::ThresholdedRelu
        | NnOp::Swish => one(activation(b, cx, nn, ins[0])?),
        NnOp::IsNan => one(b.compare(ins[0], ins[0], Cmp::Ne)?),
        NnOp::IsInf => {
            let a = b.un("stablehlo.abs", ins[0])?;
            let inf = b.compare_c(a, f64::INFINITY, Cmp::Eq)?;
            let (neg, pos) = (
                cx.int_attr("detect_negative", 1) != 0,
                cx.int_attr("detect_positive", 1) != 0,
            );
            let r = match (neg, pos) {
                (true, true) => inf,
                (false, false) => b.splat_i(&shape, E::I(1), 0)?,
                (true, false) => {
                    let s = b.compare_c(ins[0], 0.0, Cmp::Lt)?;
                    b.and(inf, s)?
                }
                (false, true) => {
                    let s = b.compare_c(ins[0], 0.0, Cmp::Gt)?;
                    b.and(inf, s)?
                }
            };
            one(r)
        }
        NnOp::Identity => one(ins[0]),
        NnOp::Clip => {
            let lo = b.bcast(b.reshape(ins[1], &[])?, &shape)?;
            let hi = b.bcast(b.reshape(ins[2], &[])?, &shape)?;
            let below = b.compare(ins[0], lo, Cmp::Lt)?;
            let t = b.select(below, lo, ins[0])?;
            let above = b.compare(t, hi, Cmp::Gt)?;
            one(b.select(above, hi, t)?)
        }
        NnOp::Where => {
            let c = b.bcast(ins[0], &shape)?;
            let x = b.bcast(ins[1], &shape)?;
            let y = b.bcast(ins[2], &shape)?;
            one(b.select(c, x, y)?)
        }
        NnOp::Cast => one(cast(b, ins[0], e)?),
        NnOp::Matmul => one(matmul(b, ins[0], ins[1], &shape)?),
        NnOp::Gemm => one(gemm(b, cx, ins, &shape)?),
        NnOp::Softmax | NnOp::LogSoftmax => {
            let axis = norm_axis(cx.int_attr("axis", -1), shape.len())?;
            one(softmax(b, ins[0], axis, nn == NnOp::LogSoftmax)?)
        }
        NnOp::LayerNorm => one(layer_norm(b, cx, ins)?),
        NnOp::BatchNorm => one(batch_norm(b, cx, ins)?),
        NnOp::Reshape | NnOp::Flatten | NnOp::Squeeze | NnOp::Unsqueeze => {
            one(b.reshape(ins[0], &shape)?)
        }
        NnOp::Transpose => {
            let perm = cx
                .op
                .attr("perm")
                .and_then(Attribute::as_int_array)
                .ok_or("perm is missing")?;
            one(b.transpose(ins[0], &perm)?)
        }
        NnOp::Concat => {
            let axis = norm_axis(cx.int_attr("axis", 0), shape.len())?;
            let parts: Vec<T> = ins
                .iter()
                .copied()
                .filter(|t| b.shape(t)[axis] > 0)
                .collect();
            if parts.is_empty() {
                return one(b.constant_bytes(&shape, e, &[])?);
            }
            one(b.concat(&parts, axis)?)
        }
        NnOp::Split => {
            let axis = norm_axis(cx.int_attr("axis", 0), b.rank(&ins[0]))?;
            let mut start = 0;
            let mut outs = Vec::new();
            for i in 0..cx.op.results.len() {
                let len = cx.result_shape(i)?[axis];
                outs.push(b.slice_dim(ins[0], axis, start, start + len)?);
                start += len;
            }
            Ok(outs)
        }
        NnOp::Slice => one(slice(b, cx, ins[0], &shape)?),
        NnOp::Gather => {
            let xs = b.shape(&ins[0]);
            let axis = norm_axis(cx.int_attr("axis", 0), xs.len())?;
            let idx = wrap_negative(b, ins[1], xs[axis])?;
            one(b.gather_axis(ins[0], idx, axis)?)
        }
        NnOp::GatherElements => one(gather_elements(b, cx, ins)?),
        NnOp::Expand => one(b.bcast(ins[0], &shape)?),
        NnOp::Tile => {
            let xs = b.shape(&ins[0]);
            let mut wide = Vec::new();
            let mut dims = Vec::new();
            for (i, (&d, &o)) in xs.iter().zip(&shape).enumerate() {
                wide.push(o.checked_div(d).unwrap_or(0));
                wide.push(d);
                dims.push(2 * i as i64 + 1);
            }
            let w = b.bcast_dims(ins[0], &wide, &dims)?;
            one(b.reshape(w, &shape)?)
        }
        NnOp::Pad => one(pad(b, cx, ins, &shape)?),
        NnOp::Shape | NnOp::Size => {
            let xs = b.shape(&ins[0]);
            let vals: Vec<i64> = if nn == NnOp::Size {
                vec![xs.iter().product::<u64>() as i64]
            } else {
                let r = xs.len() as i64;
                let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
                let (s, en) = (clamp(cx.int_attr("start", 0)), clamp(cx.int_attr("end", r)));
                (s..en.max(s)).map(|i| xs[i as usize] as i64).collect()
            };
            let bytes: Vec<u8> = vals.iter().flat_map(|v| scalar_bytes(e, 0.0, *v)).collect();
            one(b.constant_bytes(&shape, e, &bytes)?)
        }
        NnOp::Range => {
            let n = shape[0];
            let io = b.iota(&[n], 0, e)?;
            let start = b.bcast(b.reshape(ins[0], &[])?, &[n])?;
            let delta = b.bcast(b.reshape(ins[2], &[])?, &[n])?;
            let scaled = b.mul(io, delta)?;
            one(b.add(scaled, start)?)
        }
        NnOp::ConstantOfShape => {
            let v = match cx.op.attr("value") {
                Some(Attribute::Dense(d)) => d.clone(),
                _ => return Err("constant_of_shape needs a dense value".into()),
            };
            one(b.constant_bytes(&shape, e, &scalar_bytes(e, v.get_f64(0), v.get_i64(0)))?)
        }
        NnOp::Trilu => {
            let k = cx.const_ints(1)?.first().copied().unwrap_or(0);
            let r = shape.len();
            if r < 2 {
                return Err("trilu needs rank >= 2".into());
            }
            let rc = [shape[r - 2], shape[r - 1]];
            let (i, j) = (b.iota(&rc, 0, E::I(64))?, b.iota(&rc, 1, E::I(64))?);
            let d = b.sub(j, i)?;
            let keep = if cx.int_attr("upper", 1) != 0 {
                b.compare_ci(d, k, Cmp::Ge)?
            } else {
                b.compare_ci(d, k, Cmp::Le)?
            };
            let keep = b.bcast(keep, &shape)?;
            let zero = b.full(&ins[0], 0.0)?;
            one(b.select(keep, ins[0], zero)?)
        }
        NnOp::ReduceSum
        | NnOp::ReduceMean
        | NnOp::ReduceMax
        | NnOp::ReduceMin
        | NnOp::ReduceProd => {
            let x = ins[0];
            let rank = b.rank(&x);
            let mut axes: Vec<usize> = cx
                .const_ints(1)?
                .into_iter()
                .map(|a| norm_axis(a, rank))
                .collect::<R<_>>()?;
            if axes.is_empty() {
                if cx.int_attr("noop_with_empty_axes", 0) != 0 {
                    return one(x);
                }
                axes = (0..rank).collect();
            }
            let red = match nn {
                NnOp::ReduceMax => Red::Max,
                NnOp::ReduceMin => Red::Min,
                NnOp::ReduceProd => Red::Mul,
                _ => Red::Add,
            };
            let mut r = b.reduce(x, &axes, red)?;
            if nn == NnOp::ReduceMean {
                let xs = b.shape(&x);
                let n: u64 = axes.iter().map(|&a| xs[a]).product();
                r = b.div_c(r, n as f64)?;
            }
            one(b.reshape(r, &shape)?)
        }
        NnOp::ArgMax | NnOp::ArgMin => {
            let x = ins[0];
            let xs = b.shape(&x);
            let axis = norm_axis(cx.int_attr("axis", 0), xs.len())?;
            let m = b.reduce_keep(x, &[axis], if nn == NnOp::ArgMax { Red::Max } else { Red::Min })?;
            let eq = b.compare(x, m, Cmp::Eq)?;
            let io = b.iota(&xs, axis, E::I(64))?;
            let last = cx.int_attr("select_last_index", 0) != 0;
            let fill = b.full_i(&io, if last { -1 } else { xs[axis] as i64 })?;
            let cand = b.select(eq, io, fill)?;
            let r = b.reduce(cand, &[axis], if last { Red::Max } else { Red::Min })?;
            one(b.reshape(r, &shape)?)
        }
        NnOp::GlobalAvgPool | NnOp::GlobalMaxPool => {
            let x = ins[0];
            let xs = b.shape(&x);
            let dims: Vec<usize> = (2..xs.len()).collect();
            let max = nn == NnOp::GlobalMaxPool;
            let mut r = b.reduce(x, &dims, if max { Red::Max } else { Red::Add })?;
            if !max {
                let n: u64 = dims.iter().map(|&d| xs[d]).product();
                r = b.div_c(r, n as f64)?;
            }
            one(b.reshape(r, &shape)?)
        }
        NnOp::Conv => one(conv(b, cx, ins, &shape)?),
        NnOp::MaxPool | NnOp::AvgPool => one(pool(b, cx, nn == NnOp::MaxPool, ins[0], &shape)?),
        NnOp::CumSum => one(cum_sum(b, cx, ins[0])?),
        NnOp::Not
        | NnOp::Neg
        | NnOp::Abs
        | NnOp::Exp
        | NnOp::Log
        | NnOp::Sqrt
        | NnOp::Tanh
        | NnOp::Sigmoid
        | NnOp::Erf
        | NnOp::Sin
        | NnOp::Cos
        | NnOp::Tan
        | NnOp::Floor
        | NnOp::Ceil
        | NnOp::Round
        | NnOp::Asin
        | NnOp::Acos
        | NnOp::Atan
        | NnOp::Sinh
        | NnOp::Cosh
        | NnOp::Asinh
        | NnOp::Acosh
        | NnOp::Atanh
        | NnOp::BitwiseNot => Err("unreachable: unary ops are handled above".into()),
        NnOp::Shrink
        | NnOp::Lrn
        | NnOp::ConvTranspose
        | NnOp::NllLoss => Err(format!(
            "{} has no StableHLO lowering yet (supported: the elementwise, shape, reduction, matmul, \
             normalization, convolution and pooling ops used by transformer and CNN models)",
            cx.op.name()
        )),
    }
}

fn pow<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, ins: &[T<'c, 'b>], shape: &[u64]) -> R<Vec<T<'c, 'b>>> {
    let x = b.bcast(ins[0], shape)?;
    // A constant exponent of 2, 1 or 0.5 is computed exactly (as the interpreter's correctly rounded
    // pow is): x * x, x, sqrt(x).
    if let Some(d) = cx.consts.get(&cx.op.operands[1]) {
        if d.len() == 1 && x.e.is_float() {
            match d.get_f64(0) {
                2.0 => return Ok(vec![b.mul(x, x)?]),
                1.0 => return Ok(vec![x]),
                0.5 => return Ok(vec![b.un("stablehlo.sqrt", x)?]),
                _ => {}
            }
        }
    }
    let y = b.bcast(b.convert(ins[1], x.e)?, shape)?;
    Ok(vec![b.bin("stablehlo.power", x, y)?])
}

fn activation<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, nn: NnOp, x: T<'c, 'b>) -> R<T<'c, 'b>> {
    let c = |v: f64| b.full(&x, v);
    let mulc = |t: T<'c, 'b>, v: f64| b.bin_c("stablehlo.multiply", t, v);
    let alpha_default = match nn {
        NnOp::LeakyRelu => 0.01,
        NnOp::HardSigmoid => 0.2,
        NnOp::Selu => 1.673_263_192_176_818_8,
        _ => 1.0,
    };
    let alpha = cx.f_attr("alpha", alpha_default);
    let softplus = |t: T<'c, 'b>| -> R<T<'c, 'b>> {
        let big = b.compare_c(t, 30.0, Cmp::Gt)?;
        let ex = b.un("stablehlo.exponential", t)?;
        let l = b.un("stablehlo.log_plus_one", ex)?;
        b.select(big, t, l)
    };
    let elu = |t: T<'c, 'b>, a: f64| -> R<T<'c, 'b>> {
        let pos = b.compare_c(t, 0.0, Cmp::Gt)?;
        let em = b.un("stablehlo.exponential_minus_one", t)?;
        let neg = mulc(em, a)?;
        b.select(pos, t, neg)
    };
    Ok(match nn {
        NnOp::Softplus => softplus(x)?,
        NnOp::Gelu => {
            let tanh_form =
                matches!(cx.op.attr("approximate"), Some(Attribute::Str(s)) if s == "tanh");
            let inner = if tanh_form {
                let x3 = b.mul(b.mul(x, x)?, x)?;
                let t = b.add(x, mulc(x3, 0.044715)?)?;
                b.un(
                    "stablehlo.tanh",
                    mulc(t, (2.0 / std::f64::consts::PI).sqrt())?,
                )?
            } else {
                b.un("chlo.erf", mulc(x, std::f64::consts::FRAC_1_SQRT_2)?)?
            };
            let one = b.add(inner, c(1.0)?)?;
            b.mul(mulc(x, 0.5)?, one)?
        }
        NnOp::LeakyRelu => {
            let pos = b.compare_c(x, 0.0, Cmp::Ge)?;
            b.select(pos, x, mulc(x, alpha)?)?
        }
        NnOp::Elu => elu(x, alpha)?,
        NnOp::HardSigmoid => {
            let beta = cx.f_attr("beta", 0.5);
            let t = b.add(mulc(x, alpha)?, c(beta)?)?;
            b.op(
                "stablehlo.clamp",
                &[c(0.0)?, t, c(1.0)?],
                &[],
                &b.shape(&x),
                x.e,
            )?
        }
        NnOp::HardSwish => {
            let t = b.add(b.div_c(x, 6.0)?, c(0.5)?)?;
            let t = b.op(
                "stablehlo.clamp",
                &[c(0.0)?, t, c(1.0)?],
                &[],
                &b.shape(&x),
                x.e,
            )?;
            b.mul(x, t)?
        }
        NnOp::Softsign => {
            let d = b.add(c(1.0)?, b.un("stablehlo.abs", x)?)?;
            b.div(x, d)?
        }
        NnOp::Mish => b.mul(x, b.un("stablehlo.tanh", softplus(x)?)?)?,
        NnOp::Selu => {
            let gamma = cx.f_attr("gamma", 1.050_701_022_148_132_3);
            mulc(elu(x, alpha)?, gamma)?
        }
        NnOp::Celu => {
            let e = b.un("stablehlo.exponential_minus_one", b.div_c(x, alpha)?)?;
            let neg = b.min(mulc(e, alpha)?, c(0.0)?)?;
            b.add(b.max(x, c(0.0)?)?, neg)?
        }
        NnOp::ThresholdedRelu => {
            let keep = b.compare_c(x, alpha, Cmp::Gt)?;
            b.select(keep, x, c(0.0)?)?
        }
        NnOp::Swish => b.mul(x, b.un("stablehlo.logistic", mulc(x, alpha)?)?)?,
        _ => return Err("not an activation".into()),
    })
}

fn cast<'c, 'b>(b: &B<'c, 'b>, x: T<'c, 'b>, to: E) -> R<T<'c, 'b>> {
    if to == E::I(1) && x.e != E::I(1) {
        // Nonzero is true.
        return if x.e.is_float() {
            b.compare_c(x, 0.0, Cmp::Ne)
        } else {
            b.compare_ci(x, 0, Cmp::Ne)
        };
    }
    if x.e.is_float() && !to.is_float() {
        // Toward zero, then wrapped to the width (NumPy's cast of in-range values).
        let t = b.convert(x, E::I(64))?;
        return b.convert(t, to);
    }
    b.convert(x, to)
}

/// NumPy matmul (rank-1 operands promoted, batch dimensions broadcast).
fn matmul<'c, 'b>(b: &B<'c, 'b>, x: T<'c, 'b>, y: T<'c, 'b>, out: &[u64]) -> R<T<'c, 'b>> {
    let (xs, ys) = (b.shape(&x), b.shape(&y));
    let x2 = if xs.len() == 1 {
        b.reshape(x, &[1, xs[0]])?
    } else {
        x
    };
    let y2 = if ys.len() == 1 {
        b.reshape(y, &[ys[0], 1])?
    } else {
        y
    };
    let (xs, ys) = (b.shape(&x2), b.shape(&y2));
    let (bx, by) = (&xs[..xs.len() - 2], &ys[..ys.len() - 2]);
    let nb = bx.len().max(by.len());
    let mut batch = vec![1u64; nb];
    for (i, d) in batch.iter_mut().enumerate() {
        let dx = (i + bx.len()).checked_sub(nb).map_or(1, |k| bx[k]);
        let dy = (i + by.len()).checked_sub(nb).map_or(1, |k| by[k]);
        *d = if dx == 1 { dy } else { dx };
    }
    let (m, k, n) = (xs[xs.len() - 2], xs[xs.len() - 1], ys[ys.len() - 1]);
    let full = |t: T<'c, 'b>, tail: [u64; 2]| -> R<T<'c, 'b>> {
        let mut s = batch.clone();
        s.extend(tail);
        b.bcast(t, &s)
    };
    let xb = full(x2, [m, k])?;
    let yb = full(y2, [k, n])?;
    let bd: Vec<i64> = (0..nb as i64).collect();
    let mut rs = batch.clone();
    rs.extend([m, n]);
    let r = b.dot(xb, yb, &bd, &bd, &[nb as i64 + 1], &[nb as i64], &rs)?;
    b.reshape(r, out)
}

fn gemm<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, ins: &[T<'c, 'b>], out: &[u64]) -> R<T<'c, 'b>> {
    let (ta, tb) = (
        cx.int_attr("trans_a", 0) != 0,
        cx.int_attr("trans_b", 0) != 0,
    );
    let (alpha, beta) = (cx.f_attr("alpha", 1.0), cx.f_attr("beta", 1.0));
    let mut r = b.dot(
        ins[0],
        ins[1],
        &[],
        &[],
        &[if ta { 0 } else { 1 }],
        &[if tb { 1 } else { 0 }],
        out,
    )?;
    if alpha != 1.0 {
        r = b.bin_c("stablehlo.multiply", r, alpha)?;
    }
    if beta != 0.0 {
        let mut c = b.bcast(ins[2], out)?;
        if beta != 1.0 {
            c = b.bin_c("stablehlo.multiply", c, beta)?;
        }
        r = b.add(r, c)?;
    }
    Ok(r)
}

fn softmax<'c, 'b>(b: &B<'c, 'b>, x: T<'c, 'b>, axis: usize, log: bool) -> R<T<'c, 'b>> {
    let m = b.reduce_keep(x, &[axis], Red::Max)?;
    let d = b.sub(x, m)?;
    let ex = b.un("stablehlo.exponential", d)?;
    let s = b.reduce_keep(ex, &[axis], Red::Add)?;
    if log {
        b.sub(d, b.un("stablehlo.log", s)?)
    } else {
        b.div(ex, s)
    }
}

fn layer_norm<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, ins: &[T<'c, 'b>]) -> R<T<'c, 'b>> {
    let x = ins[0];
    let xs = b.shape(&x);
    let a = norm_axis(cx.int_attr("axis", -1), xs.len())?;
    let eps = cx.f_attr("epsilon", 1e-5);
    let dims: Vec<usize> = (a..xs.len()).collect();
    let n: u64 = xs[a..].iter().product();
    let mean = b.div_c(b.reduce_keep(x, &dims, Red::Add)?, n as f64)?;
    let d = b.sub(x, mean)?;
    let var = b.div_c(b.reduce_keep(b.mul(d, d)?, &dims, Red::Add)?, n as f64)?;
    let sd = b.un("stablehlo.sqrt", b.bin_c("stablehlo.add", var, eps)?)?;
    let inv = b.div(b.full(&sd, 1.0)?, sd)?;
    let scale = b.bcast(ins[1], &xs)?;
    let bias = b.bcast(ins[2], &xs)?;
    b.add(b.mul(b.mul(d, inv)?, scale)?, bias)
}

fn batch_norm<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, ins: &[T<'c, 'b>]) -> R<T<'c, 'b>> {
    let x = ins[0];
    let xs = b.shape(&x);
    let eps = cx.f_attr("epsilon", 1e-5);
    let ch = |t: T<'c, 'b>| -> R<T<'c, 'b>> {
        let t = b.reshape(t, &[xs[1]])?;
        b.bcast_dims(t, &xs, &[1])
    };
    let (scale, bias, mean, var) = (ch(ins[1])?, ch(ins[2])?, ch(ins[3])?, ch(ins[4])?);
    let sd = b.un("stablehlo.sqrt", b.bin_c("stablehlo.add", var, eps)?)?;
    let y = b.div(b.sub(x, mean)?, sd)?;
    b.add(b.mul(y, scale)?, bias)
}

fn wrap_negative<'c, 'b>(b: &B<'c, 'b>, idx: T<'c, 'b>, n: u64) -> R<T<'c, 'b>> {
    if matches!(idx.e, E::U(_)) {
        return Ok(idx);
    }
    let neg = b.compare_ci(idx, 0, Cmp::Lt)?;
    let plus = b.bin_ci("stablehlo.add", idx, n as i64)?;
    b.select(neg, plus, idx)
}

fn slice<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, x: T<'c, 'b>, out: &[u64]) -> R<T<'c, 'b>> {
    let (starts, ends, axes, steps) = (
        cx.const_ints(1)?,
        cx.const_ints(2)?,
        cx.const_ints(3)?,
        cx.const_ints(4)?,
    );
    let xs = b.shape(&x);
    let r = xs.len();
    let mut start = vec![0i64; r];
    let mut stride = vec![1i64; r];
    let mut reversed = Vec::new();
    for k in 0..axes.len() {
        let a = norm_axis(axes[k], r)?;
        let step = steps.get(k).copied().unwrap_or(1);
        if step == 0 {
            return Err("a slice step is 0".into());
        }
        let n = xs[a] as i64;
        let (s, _) = qc_nn::shape::slice_bounds(n, starts[k], ends[k], step);
        if step > 0 {
            start[a] = s;
            stride[a] = step;
        } else {
            reversed.push(a as i64);
            start[a] = n - 1 - s;
            stride[a] = -step;
        }
    }
    let x = b.reverse(x, &reversed)?;
    let limit: Vec<i64> = (0..r)
        .map(|d| {
            if out[d] == 0 {
                start[d]
            } else {
                start[d] + (out[d] as i64 - 1) * stride[d] + 1
            }
        })
        .collect();
    let start: Vec<i64> = (0..r).map(|d| start[d].min(limit[d])).collect();
    b.slice(x, &start, &limit, &stride)
}

fn gather_elements<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, ins: &[T<'c, 'b>]) -> R<T<'c, 'b>> {
    let (x, idx) = (ins[0], ins[1]);
    let xs = b.shape(&x);
    let is = b.shape(&idx);
    let r = xs.len();
    let axis = norm_axis(cx.int_attr("axis", 0), r)?;
    let idx = b.convert(wrap_negative(b, idx, xs[axis])?, E::I(64))?;
    // Full coordinates: iota along every dimension except `axis`, which takes the indices.
    let mut cs = is.clone();
    cs.push(1);
    let mut coords = Vec::new();
    for d in 0..r {
        let c = if d == axis {
            idx
        } else {
            b.iota(&is, d, E::I(64))?
        };
        coords.push(b.reshape(c, &cs)?);
    }
    let full = b.concat(&coords, r)?;
    let dims: Vec<i64> = (0..r as i64).collect();
    b.op(
        "stablehlo.gather",
        &[x, full],
        &[
            (
                "dimension_numbers",
                format!(
                    "#stablehlo.gather<collapsed_slice_dims = [{}], start_index_map = [{}], index_vector_dim = {r}>",
                    crate::build::ints(&dims),
                    crate::build::ints(&dims)
                ),
            ),
            ("slice_sizes", crate::build::arr(&vec![1; r])),
            ("indices_are_sorted", "false".into()),
        ],
        &is,
        x.e,
    )
}

fn pad<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, ins: &[T<'c, 'b>], _out: &[u64]) -> R<T<'c, 'b>> {
    let mode = match cx.op.attr("mode") {
        Some(Attribute::Str(s)) => s.as_str(),
        _ => "constant",
    };
    if mode != "constant" {
        return Err(format!(
            "pad mode '{mode}' is not supported (only 'constant')"
        ));
    }
    let x = ins[0];
    let r = b.rank(&x);
    let pads = cx.const_ints(1)?;
    let value = if b.shape(&ins[2]).iter().product::<u64>() == 0 {
        b.splat(&[], x.e, 0.0)?
    } else {
        b.reshape(ins[2], &[])?
    };
    let (lo, hi) = (&pads[..r], &pads[r..2 * r]);
    let xs = b.shape(&x);
    let out: Vec<u64> = (0..r)
        .map(|d| (xs[d] as i64 + lo[d] + hi[d]).max(0) as u64)
        .collect();
    b.op(
        "stablehlo.pad",
        &[x, value],
        &[
            ("edge_padding_low", crate::build::arr(lo)),
            ("edge_padding_high", crate::build::arr(hi)),
            ("interior_padding", crate::build::arr(&vec![0; r])),
        ],
        &out,
        x.e,
    )
}

fn conv<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, ins: &[T<'c, 'b>], out: &[u64]) -> R<T<'c, 'b>> {
    let (x, w, bias) = (ins[0], ins[1], ins[2]);
    let nsp = b.rank(&x) - 2;
    let get = |n: &str| {
        cx.op
            .attr(n)
            .and_then(Attribute::as_int_array)
            .ok_or_else(|| format!("{n} is missing"))
    };
    let (strides, pads, dil) = (get("strides")?, get("pads")?, get("dilations")?);
    let group = cx.int_attr("group", 1);
    let sp: Vec<String> = (0..nsp).map(|i| i.to_string()).collect();
    let sp = sp.join(", ");
    let padding: Vec<(i64, i64)> = (0..nsp).map(|i| (pads[i], pads[nsp + i])).collect();
    let y = b.op(
        "stablehlo.convolution",
        &[x, w],
        &[
            ("window_strides", crate::build::arr(&strides)),
            ("padding", crate::build::pads_attr(&padding)),
            ("lhs_dilation", crate::build::arr(&vec![1; nsp])),
            ("rhs_dilation", crate::build::arr(&dil)),
            (
                "dimension_numbers",
                format!("#stablehlo.conv<[b, f, {sp}]x[o, i, {sp}]->[b, f, {sp}]>"),
            ),
            ("feature_group_count", format!("{group} : i64")),
            ("batch_group_count", "1 : i64".into()),
            (
                "precision_config",
                "[#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>]".into(),
            ),
        ],
        out,
        x.e,
    )?;
    let bias = b.bcast_dims(b.reshape(bias, &[out[1]])?, out, &[1])?;
    b.add(y, bias)
}

fn pool<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, max: bool, x: T<'c, 'b>, out: &[u64]) -> R<T<'c, 'b>> {
    let xs = b.shape(&x);
    let nsp = xs.len() - 2;
    let get = |n: &str| {
        cx.op
            .attr(n)
            .and_then(Attribute::as_int_array)
            .ok_or_else(|| format!("{n} is missing"))
    };
    let (k, s, p, d) = (
        get("kernel_shape")?,
        get("strides")?,
        get("pads")?,
        get("dilations")?,
    );
    let mut window = vec![1i64, 1];
    window.extend(&k);
    let mut strides = vec![1i64, 1];
    strides.extend(&s);
    let mut dil = vec![1i64, 1];
    dil.extend(&d);
    // The high padding that yields exactly the declared output (ceil_mode adds windows past the end).
    let mut pads = vec![(0i64, 0i64); 2];
    let mut declared = vec![(0i64, 0i64); 2];
    for i in 0..nsp {
        let lo = p[i];
        let need = (out[2 + i] as i64 - 1) * s[i] + (k[i] - 1) * d[i] + 1 - xs[2 + i] as i64 - lo;
        pads.push((lo, need.max(p[nsp + i])));
        declared.push((lo, p[nsp + i]));
    }
    if max {
        let init = b.init(Red::Max, x.e)?;
        return b.reduce_window(x, init, Red::Max, &window, &strides, &dil, &pads, out);
    }
    let zero = b.init(Red::Add, x.e)?;
    let sum = b.reduce_window(x, zero, Red::Add, &window, &strides, &dil, &pads, out)?;
    // The divisor: the window's elements inside the input, plus the declared padding when
    // count_include_pad (never the extra ceil_mode padding).
    let ones = b.full(&x, 1.0)?;
    let counted = if cx.int_attr("count_include_pad", 0) != 0 {
        let lo: Vec<i64> = declared.iter().map(|p| p.0).collect();
        let hi: Vec<i64> = declared.iter().map(|p| p.1).collect();
        let mut padded_shape = xs.clone();
        for i in 0..xs.len() {
            padded_shape[i] = (xs[i] as i64 + lo[i] + hi[i]) as u64;
        }
        let one_s = b.splat(&[], x.e, 1.0)?;
        let padded = b.op(
            "stablehlo.pad",
            &[ones, one_s],
            &[
                ("edge_padding_low", crate::build::arr(&lo)),
                ("edge_padding_high", crate::build::arr(&hi)),
                ("interior_padding", crate::build::arr(&vec![0; xs.len()])),
            ],
            &padded_shape,
            x.e,
        )?;
        let rest: Vec<(i64, i64)> = pads
            .iter()
            .zip(&declared)
            .map(|(p, q)| (0, p.1 - q.1))
            .collect();
        let zero = b.init(Red::Add, x.e)?;
        b.reduce_window(padded, zero, Red::Add, &window, &strides, &dil, &rest, out)?
    } else {
        let zero = b.init(Red::Add, x.e)?;
        b.reduce_window(ones, zero, Red::Add, &window, &strides, &dil, &pads, out)?
    };
    b.div(sum, counted)
}

fn cum_sum<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, x: T<'c, 'b>) -> R<T<'c, 'b>> {
    let xs = b.shape(&x);
    let axis = norm_axis(
        cx.const_ints(1)?
            .first()
            .copied()
            .ok_or("cum_sum needs an axis")?,
        xs.len(),
    )?;
    let (exclusive, reverse) = (
        cx.int_attr("exclusive", 0) != 0,
        cx.int_attr("reverse", 0) != 0,
    );
    let n = xs[axis] as i64;
    let x = if reverse {
        b.reverse(x, &[axis as i64])?
    } else {
        x
    };
    let r = xs.len();
    let mut window = vec![1i64; r];
    window[axis] = n;
    let mut pads = vec![(0i64, 0i64); r];
    pads[axis] = (n - 1, 0);
    let zero = b.init(Red::Add, x.e)?;
    let mut y = b.reduce_window(
        x,
        zero,
        Red::Add,
        &window,
        &vec![1; r],
        &vec![1; r],
        &pads,
        &xs,
    )?;
    if exclusive && n > 0 {
        // Shift by one along the axis: a zero first, then the inclusive sums without the last.
        let head = b.slice_dim(y, axis, 0, n as u64 - 1)?;
        let mut zs = xs.clone();
        zs[axis] = 1;
        let z = b.splat(&zs, x.e, 0.0)?;
        y = b.concat(&[z, head], axis)?;
    }
    if reverse {
        y = b.reverse(y, &[axis as i64])?;
    }
    Ok(y)
}

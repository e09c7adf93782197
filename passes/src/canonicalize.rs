//! `canonicalize`: local simplifications that never change what a function computes.
//!
//! Contract: every rewrite is exact (bit-identical results, NaN and signed zero included). Rewrites:
//! - identity elimination: `nn.identity x`; `nn.cast` to the operand's own type; `nn.reshape`,
//!   `expand`, `squeeze`, `unsqueeze`, `flatten`, `tile`, `slice` (with constant positive steps) whose
//!   result has the operand's static type; `nn.transpose` by the identity permutation; `x * 1`, `x / 1`, `x - (+0)`, `x + (-0)` (and
//!   `x + 0` for integers) whose result type equals `x`'s -> `x`;
//! - composition: `reshape(reshape(x, s1), s2)` -> `reshape(x, s2)` (when s2 copies no dimension with a
//!   0 entry), `transpose(transpose(x))` -> one transpose;
//! - folding: `nn.shape` / `nn.size` of a statically shaped tensor, and any nn op whose operands are all
//!   `dense<...>` constants, becomes a `qc.constant` (when the result has at most [`FOLD_LIMIT`]
//!   elements), computed by the reference interpreter.
//!
//! Ops left without uses are not removed here; `dce` does that.

use std::collections::BTreeMap;

use qc_ir::attr::{Attribute, Attrs, DenseData};
use qc_ir::module::{Func, Module, Op, Value};
use qc_ir::ops::QcOp;
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOptions};
use qc_ir::types::ElemType;
use qc_ir::Diagnostic;
use qc_nn::NnOp;
use qc_runtime::interp::{eval_nn, Tensor};

/// Results larger than this many elements are not folded (they would bloat the IR with literals).
pub const FOLD_LIMIT: u64 = 1024;

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "canonicalize",
    summary: "fold constants and shape ops, eliminate identities, compose reshapes and transposes",
    options: &[],
    build: |_: &PassOptions| Ok(Box::new(Canonicalize)),
};

/// The pass.
pub struct Canonicalize;

impl Pass for Canonicalize {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, _cx: &PassContext) -> Result<Changed, Diagnostic> {
        let mut changed = false;
        for f in &mut m.funcs {
            // Each sweep rewrites in one forward pass; a few sweeps reach the fixpoint of chained rules.
            for _ in 0..8 {
                if !sweep(f) {
                    break;
                }
                changed = true;
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

enum Rewrite {
    Keep,
    /// Uses of the op's single result become uses of this value.
    Forward(Value),
    /// The op is replaced by this one, which defines the same result values.
    Replace(Op),
}

/// One forward pass over `f`; true if anything changed.
fn sweep(f: &mut Func) -> bool {
    let old = std::mem::take(&mut f.ops);
    let mut ops: Vec<Op> = Vec::with_capacity(old.len());
    let mut subst: BTreeMap<Value, Value> = BTreeMap::new();
    // Producer of each value among the ops kept so far.
    let mut producer: BTreeMap<Value, usize> = BTreeMap::new();
    let mut changed = false;
    for mut op in old {
        for v in &mut op.operands {
            while let Some(&n) = subst.get(v) {
                *v = n;
            }
        }
        let op = match rewrite(f, &op, &ops, &producer) {
            Rewrite::Keep => op,
            Rewrite::Forward(v) => {
                subst.insert(op.results[0], v);
                changed = true;
                continue;
            }
            Rewrite::Replace(new) => {
                changed = true;
                new
            }
        };
        for &r in &op.results {
            producer.insert(r, ops.len());
        }
        ops.push(op);
    }
    f.ops = ops;
    f.replace_uses(&subst);
    changed
}

fn dense_of<'a>(
    v: Value,
    ops: &'a [Op],
    producer: &BTreeMap<Value, usize>,
) -> Option<&'a DenseData> {
    let op = &ops[*producer.get(&v)?];
    match (QcOp::of(op), op.attr("value")) {
        (Some(QcOp::Constant), Some(Attribute::Dense(d))) => Some(d),
        _ => None,
    }
}

fn producer_of<'a>(v: Value, ops: &'a [Op], producer: &BTreeMap<Value, usize>) -> Option<&'a Op> {
    producer.get(&v).map(|&i| &ops[i])
}

/// Whether every element of `d` has the bits of `x` (floats) or equals `i` (integers).
fn splat_is(d: &DenseData, x: f64, i: i64) -> bool {
    match d {
        DenseData::Float(v) => v.iter().all(|y| y.to_bits() == x.to_bits()),
        DenseData::Int(v) => v.iter().all(|&y| y == i),
        DenseData::Bool(_) => false,
    }
}

fn constant_op(op: &Op, value: DenseData) -> Op {
    let attrs: Attrs = [("value", Attribute::Dense(value))].into_iter().collect();
    Op {
        def: QcOp::Constant.def(),
        operands: vec![],
        results: op.results.clone(),
        attrs,
        loc: op.loc.clone(),
    }
}

fn rewrite(f: &Func, op: &Op, ops: &[Op], producer: &BTreeMap<Value, usize>) -> Rewrite {
    let Some(nn) = NnOp::of(op) else {
        return Rewrite::Keep;
    };
    let result_ty = f.ty(op.results[0]);
    let same_as_operand = |i: usize| f.ty(op.operands[i]) == result_ty;
    // A shape-changing op whose result has the operand's static type is an identity. With dynamic
    // dimensions equal types do not imply equal run-time shapes (a reshape may turn 2x3 into 3x2).
    let static_identity = same_as_operand(0) && result_ty.static_shape().is_some();
    match nn {
        // An identity that refines the type (the importer's naming of a graph output with its declared
        // `[batch]x[seq]` type, where inference only knows `?`) stays: forwarding would lose the type.
        NnOp::Identity if same_as_operand(0) => return Rewrite::Forward(op.operands[0]),
        NnOp::Cast if same_as_operand(0) => return Rewrite::Forward(op.operands[0]),
        NnOp::Reshape
        | NnOp::Expand
        | NnOp::Squeeze
        | NnOp::Unsqueeze
        | NnOp::Flatten
        | NnOp::Tile
            if static_identity =>
        {
            return Rewrite::Forward(op.operands[0]);
        }
        // A slice keeping every element is an identity only when no step is negative (a step of -1
        // over a whole axis reverses it).
        NnOp::Slice
            if static_identity
                && match op.operands.get(4) {
                    None => true,
                    Some(&s) => dense_of(s, ops, producer)
                        .is_some_and(|d| (0..d.len()).all(|i| d.get_i64(i) > 0)),
                } =>
        {
            return Rewrite::Forward(op.operands[0]);
        }
        NnOp::Transpose => {
            let perm = op
                .attr("perm")
                .and_then(Attribute::as_int_array)
                .unwrap_or_default();
            if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
                return Rewrite::Forward(op.operands[0]);
            }
            if let Some(inner) = producer_of(op.operands[0], ops, producer)
                .filter(|o| NnOp::of(o) == Some(NnOp::Transpose))
            {
                let inner_perm = inner
                    .attr("perm")
                    .and_then(Attribute::as_int_array)
                    .unwrap_or_default();
                let composed: Vec<Attribute> = perm
                    .iter()
                    .map(|&p| Attribute::Int(inner_perm[p as usize]))
                    .collect();
                let mut new = op.clone();
                new.operands = vec![inner.operands[0]];
                new.attrs.set("perm", Attribute::Array(composed));
                return Rewrite::Replace(new);
            }
        }
        NnOp::Reshape => {
            // reshape(reshape(x, s1), s2) -> reshape(x, s2) when s2 does not copy dimensions (0 entries)
            // from the intermediate shape.
            let copies_dims = match dense_of(op.operands[1], ops, producer) {
                Some(d) => {
                    (0..d.len()).any(|i| d.get_i64(i) == 0)
                        && op
                            .attr("allowzero")
                            .and_then(Attribute::as_int)
                            .unwrap_or(0)
                            == 0
                }
                None => true,
            };
            if let Some(inner) = producer_of(op.operands[0], ops, producer)
                .filter(|o| NnOp::of(o) == Some(NnOp::Reshape))
            {
                let mut new = op.clone();
                new.operands[0] = inner.operands[0];
                // Through a dynamic intermediate the chain may be one that could never run (4 elements to
                // `?` to 8); keep it unless the composed op still infers the declared type.
                if !copies_dims && infers_declared_type(f, &new, ops, producer) {
                    return Rewrite::Replace(new);
                }
            }
        }
        NnOp::Add | NnOp::Sub | NnOp::Mul | NnOp::Div if same_as_operand(0) => {
            if let Some(c) = dense_of(op.operands[1], ops, producer) {
                let is_int = matches!(result_ty.elem, ElemType::Int { .. });
                let neutral = match nn {
                    NnOp::Mul | NnOp::Div => splat_is(c, 1.0, 1),
                    NnOp::Sub => splat_is(c, 0.0, 0),
                    NnOp::Add if is_int => splat_is(c, 0.0, 0),
                    _ => splat_is(c, -0.0, 0),
                };
                if neutral {
                    return Rewrite::Forward(op.operands[0]);
                }
            }
        }
        _ => {}
    }
    fold(f, nn, op, ops, producer)
}

/// Whether `op` (an nn op) infers exactly its declared result types.
fn infers_declared_type(f: &Func, op: &Op, ops: &[Op], producer: &BTreeMap<Value, usize>) -> bool {
    let Some(nn) = NnOp::of(op) else { return false };
    let cx = qc_nn::infer::InferCx {
        types: op.operands.iter().map(|&v| f.ty(v)).collect(),
        attrs: &op.attrs,
        consts: op
            .operands
            .iter()
            .map(|&v| dense_of(v, ops, producer))
            .collect(),
        result_elem: Some(f.ty(op.results[0]).elem.clone()),
    };
    match qc_nn::infer::infer(nn, &cx) {
        Ok(types) => {
            types.len() == op.results.len()
                && types
                    .iter()
                    .zip(&op.results)
                    .all(|(t, &r)| qc_nn::shape::type_matches(t, f.ty(r)))
        }
        Err(_) => false,
    }
}

/// Replaces `op` by a constant when all its operands are `dense<...>` constants (or, for `nn.shape` and
/// `nn.size`, when its operand's shape is static) and the result is small.
fn fold(f: &Func, nn: NnOp, op: &Op, ops: &[Op], producer: &BTreeMap<Value, usize>) -> Rewrite {
    if op.results.len() != 1
        || f.ty(op.results[0])
            .num_elements()
            .is_none_or(|n| n > FOLD_LIMIT)
    {
        return Rewrite::Keep;
    }
    let result_ty = f.ty(op.results[0]);
    if matches!(nn, NnOp::Shape | NnOp::Size) {
        let Some(shape) = f.ty(op.operands[0]).static_shape() else {
            return Rewrite::Keep;
        };
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let value = if nn == NnOp::Size {
            vec![dims.iter().product()]
        } else {
            let r = dims.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
            let start = clamp(op.attr("start").and_then(Attribute::as_int).unwrap_or(0));
            let end = clamp(op.attr("end").and_then(Attribute::as_int).unwrap_or(r)).max(start);
            dims[start as usize..end as usize].to_vec()
        };
        return Rewrite::Replace(constant_op(op, DenseData::Int(value).canonical()));
    }
    let mut inputs = Vec::with_capacity(op.operands.len());
    for &v in &op.operands {
        let Some(d) = dense_of(v, ops, producer) else {
            return Rewrite::Keep;
        };
        match Tensor::from_dense(d, f.ty(v)) {
            Ok(t) => inputs.push(t),
            Err(_) => return Rewrite::Keep,
        }
    }
    match eval_nn(nn, &op.attrs, &inputs, &result_ty.elem) {
        Ok(t) if t.len() == 1 && &t[0].ty() == result_ty => {
            Rewrite::Replace(constant_op(op, t[0].to_dense()))
        }
        // An op the interpreter cannot compute (e.g. integer division by zero) stays for run time.
        _ => Rewrite::Keep,
    }
}

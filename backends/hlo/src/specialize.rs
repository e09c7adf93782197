//! Static-shape specialization: the step between qc IR, whose dimensions may be symbolic (`[seq]`) or
//! dynamic (`?`), and StableHLO, whose modules the backend emits with static shapes only.
//!
//! # The rule
//! Every dimension of every argument of the function must get a size, from a [`ShapeBindings`]:
//! - a *symbol* binding `NAME=N` gives every `[NAME]` dimension (of any argument) the size `N`;
//! - an *argument* binding `ARG=D0xD1x...` gives argument `%ARG` (its name hint, as `qc run --input`
//!   names it) the whole static shape; its rank must agree, its static dimensions must be equal, and the
//!   symbols it covers are bound as well (so `input_ids=2x7` also binds `batch=2, seq=7`).
//!
//! A symbol bound twice to different sizes, a binding that names neither a symbol nor an argument, an
//! argument dimension left without a size, and a static dimension contradicted are diagnostics.
//!
//! Then the function's ops are visited in order and each result type is inferred again from the now
//! static operand types with [`qc_nn::infer::infer`] (the rule the verifier and the interpreter use),
//! with the values of constant operands known. Ops whose operands are all `dense<...>` constants
//! (`nn.shape`, the `range` / `concat` / `gather` arithmetic on shapes, ...) and whose result has at most
//! [`FOLD_LIMIT`] elements are evaluated by the reference interpreter and become `qc.constant`s; so do
//! `nn.shape` and `nn.size` of any statically shaped tensor. The result is a module of one function (the
//! specialized one, with the original's resources) that verifies; every type in it is static, or
//! specialization fails naming the op whose result shape is still unknown.

use std::collections::{BTreeMap, BTreeSet};

use qc_ir::attr::{Attribute, Attrs, DenseData};
use qc_ir::module::{Func, Module, Op, Value};
use qc_ir::ops::QcOp;
use qc_ir::types::{Dim, TensorType};
use qc_ir::{Diagnostic, Location};
use qc_nn::infer::{infer, InferCx};
use qc_nn::NnOp;
use qc_quant::ops::QuantOp;
use qc_runtime::interp::{eval_nn, Tensor};

/// Results of at most this many elements are folded to constants when all operands are constants.
pub const FOLD_LIMIT: u64 = 1 << 16;

/// Sizes for the symbolic and dynamic dimensions of a function's arguments (see the module
/// documentation for the rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShapeBindings {
    /// `NAME=N`: the size of every `[NAME]` dimension.
    pub symbols: BTreeMap<String, u64>,
    /// `ARG=D0xD1x...`: the whole shape of argument `%ARG`.
    pub args: BTreeMap<String, Vec<u64>>,
}

impl ShapeBindings {
    /// No bindings (enough for a function whose arguments are all static).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one `NAME=N` or `NAME=D0xD1x...` binding (as `qc compile --shape` takes it) and adds it.
    /// A single number binds a symbol when the function has a symbol of that name, and otherwise the
    /// shape of a rank-1 argument; [`specialize`] decides, since only it sees the function. The error is
    /// one sentence.
    pub fn add(&mut self, spec: &str) -> Result<(), String> {
        let (name, dims) = spec
            .split_once('=')
            .filter(|(n, d)| !n.is_empty() && !d.is_empty())
            .ok_or_else(|| {
                format!("shape binding '{spec}' must be NAME=N (a symbol) or NAME=D0xD1x... (an argument)")
            })?;
        let parsed: Result<Vec<u64>, _> = dims.split('x').map(str::parse::<u64>).collect();
        let parsed = parsed.map_err(|_| {
            format!(
                "shape binding '{spec}': '{dims}' is not a size or a list of sizes joined by 'x'"
            )
        })?;
        if self.symbols.contains_key(name) || self.args.contains_key(name) {
            return Err(format!("shape binding '{name}' is given twice"));
        }
        if parsed.len() == 1 {
            // Ambiguous until the function is known: kept as a symbol, re-read as an argument shape by
            // `specialize` when no symbol has the name.
            self.symbols.insert(name.to_string(), parsed[0]);
        } else {
            self.args.insert(name.to_string(), parsed);
        }
        Ok(())
    }
}

fn err(loc: &Location, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error(loc.clone(), msg)
}

/// The static argument shapes of `f` under `b` (see the module documentation).
pub fn argument_shapes(f: &Func, b: &ShapeBindings) -> Result<Vec<Vec<u64>>, Diagnostic> {
    let arg_name = |a: Value| f.value(a).name.clone().unwrap_or_default();
    let mut symbols_in_args = BTreeSet::new();
    for &a in &f.args {
        for d in &f.ty(a).dims {
            if let Dim::Symbol(s) = d {
                symbols_in_args.insert(s.to_string());
            }
        }
    }
    let mut sym: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_arg: BTreeMap<String, Vec<u64>> = b.args.clone();
    for (name, &n) in &b.symbols {
        if symbols_in_args.contains(name) {
            sym.insert(name.clone(), n);
        } else if f.args.iter().any(|&a| arg_name(a) == *name) {
            by_arg.insert(name.clone(), vec![n]);
        } else {
            return Err(err(
                &f.loc,
                format!(
                    "shape binding '{name}' names neither a symbolic dimension nor an argument of @{} \
                     (symbols: {}; arguments: {})",
                    f.name,
                    join(symbols_in_args.iter().cloned()),
                    join(f.args.iter().map(|&a| arg_name(a)))
                ),
            ));
        }
    }
    for name in by_arg.keys() {
        if !f.args.iter().any(|&a| arg_name(a) == *name) {
            return Err(err(
                &f.loc,
                format!(
                    "shape binding '{name}' names no argument of @{} (arguments: {})",
                    f.name,
                    join(f.args.iter().map(|&a| arg_name(a)))
                ),
            ));
        }
    }
    // Argument bindings first: they may bind symbols.
    for &a in &f.args {
        let name = arg_name(a);
        let Some(shape) = by_arg.get(&name) else {
            continue;
        };
        let ty = f.ty(a);
        if shape.len() != ty.rank() {
            return Err(err(
                &f.loc,
                format!(
                    "shape binding '{name}' has {} dimensions but %{name} is {ty}",
                    shape.len()
                ),
            ));
        }
        for (d, &n) in ty.dims.iter().zip(shape) {
            match d {
                Dim::Static(s) if *s != n => {
                    return Err(err(
                        &f.loc,
                        format!("shape binding '{name}' gives size {n} to a dimension of %{name} ({ty}) that is {s}"),
                    ))
                }
                Dim::Symbol(s) => bind(&mut sym, s, n, &f.loc)?,
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for &a in &f.args {
        let name = arg_name(a);
        if let Some(shape) = by_arg.get(&name) {
            out.push(shape.clone());
            continue;
        }
        let ty = f.ty(a);
        let mut shape = Vec::new();
        for (i, d) in ty.dims.iter().enumerate() {
            shape.push(match d {
                Dim::Static(n) => *n,
                Dim::Symbol(s) => *sym.get(&**s).ok_or_else(|| {
                    err(
                        &f.loc,
                        format!(
                            "dimension {i} of argument %{name} ({ty}) is the symbol [{s}], which has no size: \
                             bind it (--shape {s}=N) or the whole argument (--shape {name}=D0xD1x...)"
                        ),
                    )
                })?,
                Dim::Dynamic => {
                    return Err(err(
                        &f.loc,
                        format!(
                            "dimension {i} of argument %{name} ({ty}) is dynamic: give the argument's \
                             shape (--shape {name}=D0xD1x...)"
                        ),
                    ))
                }
            });
        }
        out.push(shape);
    }
    Ok(out)
}

fn bind(
    sym: &mut BTreeMap<String, u64>,
    s: &str,
    n: u64,
    loc: &Location,
) -> Result<(), Diagnostic> {
    match sym.get(s) {
        Some(&m) if m != n => Err(err(
            loc,
            format!("the symbolic dimension [{s}] is bound to both {m} and {n}"),
        )),
        _ => {
            sym.insert(s.to_string(), n);
            Ok(())
        }
    }
}

fn join(it: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Whether `new` (static) refines `old`: same rank and element type, equal where `old` is static.
fn refines(new: &TensorType, old: &TensorType) -> bool {
    new.elem == old.elem
        && new.rank() == old.rank()
        && new
            .dims
            .iter()
            .zip(&old.dims)
            .all(|(n, o)| o.as_static().is_none() || o == n)
}

/// Specializes function `func` of `m` to static shapes under `bindings` and folds the shape arithmetic
/// this exposes (see the module documentation). Returns a module holding that one function and `m`'s
/// resources; it verifies and all its types are static.
pub fn specialize(m: &Module, func: &str, bindings: &ShapeBindings) -> Result<Module, Diagnostic> {
    let f = m.func(func).ok_or_else(|| {
        Diagnostic::error(
            Location::Unknown,
            format!("no function @{func} in the module"),
        )
    })?;
    let shapes = argument_shapes(f, bindings)?;
    let mut g = f.clone();
    for (&a, shape) in f.args.iter().zip(&shapes) {
        let elem = f.ty(a).elem.clone();
        g.value_mut(a).ty = TensorType::new(shape, elem);
    }
    let mut consts: BTreeMap<Value, DenseData> = BTreeMap::new();
    let ops = std::mem::take(&mut g.ops);
    for mut op in ops {
        specialize_op(&mut g, &mut op, &mut consts)?;
        g.ops.push(op);
    }
    for (i, &v) in g.ret.iter().enumerate() {
        let t = g.ty(v).clone();
        if !refines(&t, &f.result_types[i]) {
            return Err(err(
                &f.ret_loc,
                format!(
                    "result {i} is {t} after specialization, which does not fit the declared {}",
                    f.result_types[i]
                ),
            ));
        }
        g.result_types[i] = t;
    }
    let out = Module {
        funcs: vec![g],
        resources: m.resources.clone(),
    };
    qc_ir::verify_module(&out).map_err(|d| {
        let first = d.0.into_iter().next().unwrap_or_else(|| {
            Diagnostic::error(Location::Unknown, "the specialized module does not verify")
        });
        Diagnostic {
            message: format!(
                "the module does not verify after specialization: {}",
                first.message
            ),
            ..first
        }
    })?;
    Ok(out)
}

fn static_or_err(t: &TensorType, op: &Op) -> Result<(), Diagnostic> {
    if t.static_shape().is_some() {
        Ok(())
    } else {
        Err(err(
            &op.loc,
            format!(
                "{}: the result shape {t} is not static after specialization (it depends on values only \
                 known at run time)",
                op.name()
            ),
        ))
    }
}

fn specialize_op(
    g: &mut Func,
    op: &mut Op,
    consts: &mut BTreeMap<Value, DenseData>,
) -> Result<(), Diagnostic> {
    let operand_types: Vec<TensorType> = op.operands.iter().map(|&v| g.ty(v).clone()).collect();
    let old: Vec<TensorType> = op.results.iter().map(|&r| g.ty(r).clone()).collect();
    let new: Vec<TensorType> = if let Some(QcOp::Constant) = QcOp::of(op) {
        if let Some(Attribute::Dense(d)) = op.attr("value") {
            consts.insert(op.results[0], d.clone());
        }
        old.clone()
    } else if let Some(nn) = NnOp::of(op) {
        let cx = InferCx {
            types: operand_types.iter().collect(),
            attrs: &op.attrs,
            consts: op.operands.iter().map(|v| consts.get(v)).collect(),
            result_elem: old.first().map(|t| t.elem.clone()),
        };
        infer(nn, &cx).map_err(|e| err(&op.loc, format!("{}: {e}", op.name())))?
    } else if let Some(q) = QuantOp::of(op) {
        let x = &operand_types[0];
        match q {
            QuantOp::Quantize
            | QuantOp::Dequantize
            | QuantOp::QuantizeLinear
            | QuantOp::DequantizeLinear
            | QuantOp::Hadamard => vec![x.with_elem(old[0].elem.clone())],
            QuantOp::DynamicQuantizeLinear => vec![
                x.with_elem(old[0].elem.clone()),
                old[1].clone(),
                old[2].clone(),
            ],
            QuantOp::Matmul => {
                let dims = qc_nn::shape::matmul(
                    &x.dims,
                    &operand_types[1].dims,
                    op.attr("transpose_b").is_some(),
                )
                .map_err(|e| err(&op.loc, format!("{}: {e}", op.name())))?;
                vec![TensorType {
                    dims,
                    elem: old[0].elem.clone(),
                }]
            }
        }
    } else {
        old.clone()
    };
    if new.len() != old.len() {
        return Err(err(&op.loc, format!("{}: result count changed", op.name())));
    }
    for (n, o) in new.iter().zip(&old) {
        if !refines(n, o) {
            return Err(err(
                &op.loc,
                format!(
                    "{}: the result is {n} under these shapes, which does not fit the declared {o}",
                    op.name()
                ),
            ));
        }
        static_or_err(n, op)?;
    }
    for (&r, t) in op.results.iter().zip(&new) {
        g.value_mut(r).ty = t.clone();
    }
    // Folding.
    let Some(nn) = NnOp::of(op) else {
        return Ok(());
    };
    if op.results.len() != 1 || new[0].num_elements().is_none_or(|n| n > FOLD_LIMIT) {
        return Ok(());
    }
    let folded: Option<DenseData> = match nn {
        NnOp::Shape | NnOp::Size => {
            let shape: Vec<u64> = operand_types[0].static_shape().unwrap_or_default();
            let r = shape.len() as i64;
            if nn == NnOp::Size {
                Some(DenseData::Int(vec![shape.iter().product::<u64>() as i64]))
            } else {
                let int_attr =
                    |n: &str, d: i64| op.attr(n).and_then(Attribute::as_int).unwrap_or(d);
                let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
                let (s, e) = (clamp(int_attr("start", 0)), clamp(int_attr("end", r)));
                Some(DenseData::Int(
                    (s..e.max(s)).map(|i| shape[i as usize] as i64).collect(),
                ))
            }
        }
        _ if op.operands.iter().all(|v| consts.contains_key(v)) && !op.operands.is_empty() => {
            let inputs: Result<Vec<Tensor>, String> = op
                .operands
                .iter()
                .zip(&operand_types)
                .map(|(v, t)| Tensor::from_dense(&consts[v], t))
                .collect();
            match inputs.and_then(|i| eval_nn(nn, &op.attrs, &i, &new[0].elem)) {
                Ok(mut outs) if outs.len() == 1 => Some(outs.remove(0).to_dense()),
                // Not foldable here (the interpreter refuses the values): lowered as an op instead.
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(d) = folded {
        consts.insert(op.results[0], d.clone());
        *op = Op {
            def: QcOp::Constant.def(),
            operands: Vec::new(),
            results: op.results.clone(),
            attrs: Attrs::from_iter([("value", Attribute::Dense(d))]),
            loc: op.loc.clone(),
        };
    }
    Ok(())
}

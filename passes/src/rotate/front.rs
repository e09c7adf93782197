//! From qc IR to the e-graph: which ops of a function form the linear-algebra fragment, and their terms.
//!
//! Recognized (each becomes one term; every other op stays as it is and its results are opaque leaves):
//! - `nn.matmul %x, %w` with `%w` a 2-D float `qc.constant` whose bytes are present: `(lin x w)`; with
//!   two run-time operands of rank >= 2: `(amm a v)`;
//! - `nn.add` of a run-time value and a constant vector of its last-axis length: `(bias x v)`; of two
//!   run-time values with the same known last-axis length: `(add a b)`;
//! - `nn.mul` of a run-time value and a constant vector of its last-axis length: `(scale x g)`;
//! - RMSNorm written out (`x * 1/sqrt(mean(x^2) + eps)`, also `x / sqrt(...)` and `reciprocal`, the mean
//!   over the last axis with kept dimensions): `(rms T x)`;
//! - LayerNorm written out (`d / sqrt(mean(d^2) + eps)` with `d = x - mean(x)`): `(lnc T x)`; an
//!   `nn.layer_norm` over the last axis with constant scale and shift: `(ln T x)`;
//! - `nn.gather` of rows of a 2-D float constant (axis 0): `(gather E i)`;
//! - layout ops that leave the last axis's contents in place and every row in the result:
//!   `nn.reshape`, `nn.transpose` keeping the last axis last, `nn.unsqueeze` / `nn.squeeze` on other
//!   axes, `nn.expand` of a last axis longer than 1: `(lay T x)`. (Slices and gathers of rows commute
//!   with a rotation too, but pushing one through them would rotate rows that are then dropped, which the
//!   per-row cost model cannot see; they stay opaque.)
//! - `quant.hadamard`: `(rot B x)`;
//! - `nn.identity` and `nn.cast` of a float value whose result type equals the operand's: no term, the
//!   result is the operand (such ops disappear when the function is rewritten).
//!
//! The ops written-out norms consist of must have no other users. Which constants are usable is decided
//! without reading weight bytes (only whether they are present).

use std::collections::{BTreeMap, BTreeSet};

use egg::Id;
use qc_ir::attr::{Attribute, DenseData};
use qc_ir::module::{Func, Module, Value};
use qc_ir::ops::QcOp;
use qc_ir::types::{Dim, TensorType};
use qc_nn::NnOp;
use qc_quant::ops::QuantOp;

use super::lang::{Kind, MatForm, RotAnalysis, RotGraph, RotLang, Template};

/// The IR behind a template.
#[derive(Clone, Debug, PartialEq)]
pub enum TemplateIr {
    /// A written-out RMSNorm core: its ops (ascending) and the value they normalize.
    RmsOps {
        /// Op indices.
        ops: Vec<usize>,
        /// The normalized value as the ops read it.
        input: Value,
    },
    /// A written-out LayerNorm core.
    LncOps {
        /// Op indices.
        ops: Vec<usize>,
        /// The normalized value as the ops read it.
        input: Value,
    },
    /// An `nn.layer_norm` op.
    LayerNorm {
        /// Op index.
        op: usize,
    },
    /// A layout op (its operand 0 is the input).
    Layout {
        /// Op index.
        op: usize,
    },
}

/// Ops of the fragment that together define one value, and the term they became.
#[derive(Clone, Debug)]
pub struct Group {
    /// Op indices, ascending; the last defines `result`.
    pub ops: Vec<usize>,
    /// The value.
    pub result: Value,
    /// The term's root node as added (children not canonical).
    pub node: RotLang,
}

/// The fragment of one function.
#[derive(Debug, Default)]
pub struct Front {
    /// The e-class of every fragment value and of every leaf a term uses.
    pub class_of: BTreeMap<Value, Id>,
    /// The value behind each leaf symbol.
    pub leaf_value: BTreeMap<String, Value>,
    /// The groups, in op order.
    pub groups: Vec<Group>,
    /// The IR side of each template (same indices as [`RotAnalysis::templates`]).
    pub templates: Vec<TemplateIr>,
    /// Ops the fragment owns (groups and transparent casts): the pass re-emits them from the e-graph.
    pub owned_ops: BTreeSet<usize>,
    /// Values those ops define.
    pub owned_values: BTreeSet<Value>,
    /// Results of same-type `nn.identity` / `nn.cast` ops, mapped to their operands.
    pub alias: BTreeMap<Value, Value>,
}

impl Front {
    /// `v` with same-type identities and casts looked through.
    pub fn resolve(&self, mut v: Value) -> Value {
        while let Some(&a) = self.alias.get(&v) {
            v = a;
        }
        v
    }
}

/// What the front end needs to know about the function's values.
struct Ctx<'a> {
    m: &'a Module,
    f: &'a Func,
    producer: BTreeMap<Value, usize>,
    uses: Vec<u32>,
    /// Same-type `nn.identity` / `nn.cast` results, mapped to their operands.
    alias: BTreeMap<Value, Value>,
}

impl Ctx<'_> {
    fn ty(&self, v: Value) -> &TensorType {
        self.f.ty(v)
    }

    fn resolve(&self, mut v: Value) -> Value {
        while let Some(&a) = self.alias.get(&v) {
            v = a;
        }
        v
    }

    fn def(&self, v: Value) -> Option<(usize, &qc_ir::module::Op)> {
        let &i = self.producer.get(&v)?;
        Some((i, &self.f.ops[i]))
    }

    /// The op defining `v` when it is the nn op `which`.
    fn def_nn(&self, v: Value, which: NnOp) -> Option<(usize, &qc_ir::module::Op)> {
        self.def(v).filter(|(_, op)| NnOp::of(op) == Some(which))
    }

    fn used_once(&self, v: Value) -> bool {
        self.uses[v.0 as usize] == 1
    }

    /// The dense data of a `qc.constant` literal.
    fn dense(&self, v: Value) -> Option<&DenseData> {
        let (_, op) = self.def(v)?;
        if QcOp::of(op) != Some(QcOp::Constant) {
            return None;
        }
        match op.attr("value")? {
            Attribute::Dense(d) => Some(d),
            _ => None,
        }
    }

    /// A one-element float-or-int literal.
    fn scalar(&self, v: Value) -> Option<f64> {
        let d = self.dense(v)?;
        (self.ty(v).num_elements() == Some(1)).then(|| d.get_f64(0))
    }

    fn ints(&self, v: Value) -> Option<Vec<i64>> {
        let d = self.dense(v)?;
        let n = self.ty(v).num_elements()? as usize;
        Some((0..n).map(|i| d.get_i64(i)).collect())
    }

    /// Whether `v` is a float `qc.constant` with a static shape whose values are present.
    fn float_constant(&self, v: Value) -> bool {
        let Some((_, op)) = self.def(v) else {
            return false;
        };
        let ty = self.ty(v);
        if QcOp::of(op) != Some(QcOp::Constant)
            || !ty.elem.is_float()
            || ty.static_shape().is_none()
        {
            return false;
        }
        match op.attr("value") {
            Some(Attribute::Dense(_)) => true,
            Some(Attribute::DenseResource(r)) => {
                self.m.resources.get(r).and_then(|b| b.bytes()).is_some()
            }
            _ => false,
        }
    }

    /// A run-time float value (not a constant).
    fn runtime_float(&self, v: Value) -> bool {
        self.ty(v).elem.is_float()
            && self
                .def(v)
                .is_none_or(|(_, op)| QcOp::of(op) != Some(QcOp::Constant))
    }

    fn is_last_axis(&self, axis: i64, rank: usize) -> bool {
        qc_nn::norm_axis(axis, rank).is_ok_and(|a| a + 1 == rank)
    }

    /// `reduce_mean(p)` over the last axis with kept dimensions: returns `p`.
    fn mean_last(&self, v: Value) -> Option<(usize, Value)> {
        let (i, op) = self.def_nn(v, NnOp::ReduceMean)?;
        let keep = op.attr("keepdims").and_then(Attribute::as_int).unwrap_or(1);
        let axes = self.ints(op.operands[1])?;
        let rank = self.ty(op.operands[0]).rank();
        (keep == 1 && axes.len() == 1 && self.is_last_axis(axes[0], rank))
            .then_some((i, op.operands[0]))
    }

    /// `sqrt(mean(p^2) + eps)` with `p` squared by `pow(p, 2)` or `mul(p, p)`: returns the op indices,
    /// `p` (as the ops read it) and `eps`.
    fn root_mean_square(&self, s: Value) -> Option<(Vec<usize>, Value, f64)> {
        let (si, sop) = self.def_nn(s, NnOp::Sqrt)?;
        let a = sop.operands[0];
        let (ai, aop) = self.def_nn(a, NnOp::Add)?;
        let (m, eps) = match (self.scalar(aop.operands[0]), self.scalar(aop.operands[1])) {
            (None, Some(e)) => (aop.operands[0], e),
            (Some(e), None) => (aop.operands[1], e),
            _ => return None,
        };
        let (mi, sq) = self.mean_last(m)?;
        let (pi, pop) = self.def(sq)?;
        let x = match NnOp::of(pop) {
            Some(NnOp::Pow) if self.scalar(pop.operands[1]) == Some(2.0) => pop.operands[0],
            Some(NnOp::Mul) if pop.operands[0] == pop.operands[1] => pop.operands[0],
            _ => return None,
        };
        if ![a, m, sq, s].iter().all(|&v| self.used_once(v)) {
            return None;
        }
        Some((vec![pi, mi, ai, si], x, eps))
    }

    /// `r = 1 / s` as `div(1, s)` or `reciprocal(s)`: returns the op index and `s`.
    fn reciprocal(&self, r: Value) -> Option<(usize, Value)> {
        let (i, op) = self.def(r)?;
        match NnOp::of(op) {
            Some(NnOp::Div) if self.scalar(op.operands[0]) == Some(1.0) => {
                Some((i, op.operands[1]))
            }
            Some(NnOp::Reciprocal) => Some((i, op.operands[0])),
            _ => None,
        }
    }

    /// A written-out RMSNorm core ending at op `o`: (ops, input, eps).
    fn match_rms(&self, o: usize) -> Option<(Vec<usize>, Value, f64)> {
        let op = &self.f.ops[o];
        let (x, s, extra) = match NnOp::of(op)? {
            NnOp::Div => (op.operands[0], op.operands[1], None),
            NnOp::Mul => {
                let [a, b] = [op.operands[0], op.operands[1]];
                let mut found = None;
                for (x, r) in [(a, b), (b, a)] {
                    if let Some((ri, s)) = self.reciprocal(r) {
                        if self.used_once(r) {
                            found = Some((x, s, Some(ri)));
                            break;
                        }
                    }
                }
                found?
            }
            _ => return None,
        };
        let (mut ops, p, eps) = self.root_mean_square(s)?;
        if p != x || !self.runtime_float(x) {
            return None;
        }
        ops.extend(extra);
        ops.push(o);
        ops.sort_unstable();
        Some((ops, x, eps))
    }

    /// A written-out LayerNorm core ending at op `o`: (ops, input, eps).
    fn match_lnc(&self, o: usize) -> Option<(Vec<usize>, Value, f64)> {
        let op = &self.f.ops[o];
        if NnOp::of(op)? != NnOp::Div {
            return None;
        }
        let (d, s) = (op.operands[0], op.operands[1]);
        let (mut ops, p, eps) = self.root_mean_square(s)?;
        if p != d || self.uses[d.0 as usize] != 2 {
            return None;
        }
        let (di, dop) = self.def_nn(d, NnOp::Sub)?;
        let (x, mu) = (dop.operands[0], dop.operands[1]);
        let (mi, mx) = self.mean_last(mu)?;
        if mx != x || !self.used_once(mu) || !self.runtime_float(x) {
            return None;
        }
        ops.extend([di, mi, o]);
        ops.sort_unstable();
        Some((ops, x, eps))
    }
}

fn last_static(ty: &TensorType) -> Option<u64> {
    ty.dims.last().and_then(Dim::as_static)
}

/// Builds the fragment of function `fi` of `m` and its e-graph (before any rule ran).
pub fn build(m: &Module, fi: usize) -> (Front, RotGraph) {
    let f = &m.funcs[fi];
    let mut cx = Ctx {
        m,
        f,
        producer: crate::weights::producers(f),
        uses: f.use_counts(),
        alias: BTreeMap::new(),
    };
    for op in &f.ops {
        if matches!(NnOp::of(op), Some(NnOp::Identity) | Some(NnOp::Cast))
            && op.results.len() == 1
            && f.ty(op.results[0]) == f.ty(op.operands[0])
            && f.ty(op.operands[0]).elem.is_float()
        {
            cx.alias.insert(op.results[0], op.operands[0]);
        }
    }
    let mut b = Builder {
        cx: &cx,
        front: Front::default(),
        eg: RotGraph::new(RotAnalysis::default()),
        claimed: BTreeSet::new(),
        norm_outputs: BTreeMap::new(),
    };
    b.find_norms();
    for i in 0..f.ops.len() {
        b.op(i);
    }
    b.front.alias = cx.alias.clone();
    (b.front, b.eg)
}

struct Builder<'a> {
    cx: &'a Ctx<'a>,
    front: Front,
    eg: RotGraph,
    /// Ops inside written-out norms (all but their output op).
    claimed: BTreeSet<usize>,
    /// Output op of each written-out norm -> its template.
    norm_outputs: BTreeMap<usize, usize>,
}

impl Builder<'_> {
    /// Finds the written-out norms (before the walk, which must skip their inner ops).
    fn find_norms(&mut self) {
        let cx = self.cx;
        let mut claimed: BTreeSet<usize> = BTreeSet::new();
        for o in 0..cx.f.ops.len() {
            let found = match cx.match_lnc(o) {
                Some((ops, x, eps)) => Some((
                    TemplateIr::LncOps {
                        ops: ops.clone(),
                        input: x,
                    },
                    ops,
                    eps,
                )),
                None => cx.match_rms(o).map(|(ops, x, eps)| {
                    (
                        TemplateIr::RmsOps {
                            ops: ops.clone(),
                            input: x,
                        },
                        ops,
                        eps,
                    )
                }),
            };
            let Some((tir, ops, eps)) = found else {
                continue;
            };
            if ops.iter().any(|i| claimed.contains(i)) {
                continue;
            }
            claimed.extend(ops.iter().copied().filter(|&i| i != o));
            let t = self.add_template(Template::Norm { eps, affine: None }, tir);
            self.norm_outputs.insert(o, t);
        }
        self.claimed = claimed;
    }

    fn add_template(&mut self, t: Template, ir: TemplateIr) -> usize {
        self.eg.analysis.templates.push(t);
        self.front.templates.push(ir);
        self.front.templates.len() - 1
    }

    fn num(&mut self, n: u64) -> Id {
        self.eg.add(RotLang::Num(n as i64))
    }

    fn leaf(&mut self, sym: String, kind: Kind, v: Value) -> Id {
        self.eg.analysis.leaves.insert(sym.clone(), kind);
        self.front.leaf_value.insert(sym.clone(), v);
        self.eg.add(RotLang::Leaf(sym))
    }

    /// The class of run-time value `v`: its fragment class, or a new opaque leaf.
    fn act(&mut self, v: Value) -> Id {
        let v = self.cx.resolve(v);
        if let Some(&c) = self.front.class_of.get(&v) {
            return c;
        }
        let last = last_static(self.cx.ty(v));
        let c = self.leaf(format!("x{}", v.0), Kind::Act { last }, v);
        self.front.class_of.insert(v, c);
        c
    }

    /// The known last-axis length of the run-time value `v`.
    fn last(&mut self, v: Value) -> Option<u64> {
        let c = self.act(v);
        self.eg[c].data.last()
    }

    /// A leaf for the 2-D float constant `v` (usable as a weight or a table), if it is one.
    fn matrix(&mut self, v: Value) -> Option<Id> {
        if !self.cx.float_constant(v) {
            return None;
        }
        let shape = self.cx.ty(v).static_shape()?;
        let [rows, cols] = shape[..] else { return None };
        let sym = format!("w{}", v.0);
        let kind = Kind::Mat {
            rows,
            cols,
            form: MatForm::leaf(&sym),
        };
        Some(self.leaf(sym, kind, v))
    }

    /// A leaf for the float constant `v` if it is a vector of length `n` (all other dimensions 1).
    fn vector(&mut self, v: Value, n: Option<u64>) -> Option<Id> {
        let n = n?;
        if !self.cx.float_constant(v) {
            return None;
        }
        let shape = self.cx.ty(v).static_shape()?;
        let (&last, rest) = shape.split_last()?;
        if last != n || rest.iter().any(|&d| d != 1) {
            return None;
        }
        Some(self.leaf(format!("v{}", v.0), Kind::Vector { len: n }, v))
    }

    /// A leaf for anything else (integer indices).
    fn other(&mut self, v: Value) -> Id {
        if let Some(&c) = self.front.class_of.get(&v) {
            return c;
        }
        let c = self.leaf(format!("i{}", v.0), Kind::Other, v);
        self.front.class_of.insert(v, c);
        c
    }

    fn record(&mut self, ops: Vec<usize>, result: Value, node: RotLang) {
        let c = self.eg.add(node.clone());
        self.front.class_of.insert(result, c);
        self.front.owned_ops.extend(ops.iter().copied());
        for &i in &ops {
            self.front
                .owned_values
                .extend(self.cx.f.ops[i].results.iter().copied());
        }
        self.front.groups.push(Group { ops, result, node });
    }

    fn layout(&mut self, i: usize, x: Value, reshape: bool, last_out: Option<u64>) {
        let last_in = self.last(x);
        let last_out = if reshape { last_out } else { last_in };
        let t = self.add_template(
            Template::Layout {
                reshape,
                last_in,
                last_out,
            },
            TemplateIr::Layout { op: i },
        );
        let tn = self.num(t as u64);
        let xc = self.act(x);
        let r = self.cx.f.ops[i].results[0];
        self.record(vec![i], r, RotLang::Lay([tn, xc]));
    }

    /// Whether no axis in `axes` (of a tensor of rank `rank`) is the last one.
    fn avoids_last(&self, axes: Option<Vec<i64>>, rank: usize) -> bool {
        axes.is_some_and(|a| {
            a.iter()
                .all(|&x| qc_nn::norm_axis(x, rank).is_ok_and(|x| x + 1 != rank))
        })
    }

    fn op(&mut self, i: usize) {
        let cx = self.cx;
        let op = &cx.f.ops[i];
        if self.claimed.contains(&i) {
            return;
        }
        if let Some(&t) = self.norm_outputs.get(&i) {
            let (ops, input) = match &self.front.templates[t] {
                TemplateIr::RmsOps { ops, input } | TemplateIr::LncOps { ops, input } => {
                    (ops.clone(), *input)
                }
                _ => return,
            };
            let node = if matches!(self.front.templates[t], TemplateIr::RmsOps { .. }) {
                RotLang::Rms
            } else {
                RotLang::Lnc
            };
            let tn = self.num(t as u64);
            let xc = self.act(input);
            self.record(ops, op.results[0], node([tn, xc]));
            return;
        }
        if let Some(&r) = op.results.first() {
            if let Some(&a) = cx.alias.get(&r) {
                // A same-type identity or cast is its operand.
                let c = self.act(a);
                self.front.class_of.insert(r, c);
                self.front.owned_ops.insert(i);
                self.front.owned_values.insert(r);
                return;
            }
        }
        if op.results.len() != 1 || !cx.ty(op.results[0]).elem.is_float() {
            return;
        }
        let r = op.results[0];
        let rank = cx.ty(r).rank();
        if let Some(QuantOp::Hadamard) = QuantOp::of(op) {
            let b = op.attr("block").and_then(Attribute::as_int).unwrap_or(0);
            let x = op.operands[0];
            if b > 0
                && (b as u64).is_power_of_two()
                && self.last(x).is_some_and(|n| n % b as u64 == 0)
            {
                let bn = self.num(b as u64);
                let xc = self.act(x);
                self.record(vec![i], r, RotLang::Rotate([bn, xc]));
            }
            return;
        }
        let Some(which) = NnOp::of(op) else { return };
        let o = &op.operands;
        match which {
            NnOp::Matmul => {
                let (a, w) = (o[0], o[1]);
                if !cx.runtime_float(a) {
                    return;
                }
                if let Some(wc) = self.matrix(w) {
                    let k = cx.ty(w).dims[0].as_static();
                    if self.last(a).is_none_or(|n| Some(n) == k) {
                        let ac = self.act(a);
                        self.record(vec![i], r, RotLang::Lin([ac, wc]));
                    }
                } else if cx.runtime_float(w) && cx.ty(a).rank() >= 2 && cx.ty(w).rank() >= 2 {
                    let (ac, vc) = (self.act(a), self.act(w));
                    self.record(vec![i], r, RotLang::Amm([ac, vc]));
                }
            }
            NnOp::Add | NnOp::Mul => {
                let n = last_static(cx.ty(r));
                for (x, c) in [(o[0], o[1]), (o[1], o[0])] {
                    if cx.runtime_float(x) && cx.ty(x).rank() == rank {
                        let n = match n {
                            Some(n) => Some(n),
                            None => self.last(x),
                        };
                        if let Some(vc) = self.vector(c, n) {
                            let xc = self.act(x);
                            let node = if which == NnOp::Add {
                                RotLang::Bias([xc, vc])
                            } else {
                                RotLang::Scale([xc, vc])
                            };
                            self.record(vec![i], r, node);
                            return;
                        }
                    }
                }
                if which == NnOp::Add && cx.runtime_float(o[0]) && cx.runtime_float(o[1]) {
                    let (la, lb) = (self.last(o[0]), self.last(o[1]));
                    if la.is_some() && la == lb {
                        let (ac, bc) = (self.act(o[0]), self.act(o[1]));
                        self.record(vec![i], r, RotLang::Add([ac, bc]));
                    }
                }
            }
            NnOp::Gather => {
                let axis = op.attr("axis").and_then(Attribute::as_int).unwrap_or(0);
                if axis == 0 {
                    if let Some(ec) = self.matrix(o[0]) {
                        let ic = self.other(o[1]);
                        self.record(vec![i], r, RotLang::Gather([ec, ic]));
                    }
                }
            }
            NnOp::Reshape => {
                let x = o[0];
                if !cx.runtime_float(x) {
                    return;
                }
                let last_in = self.last(x);
                let allowzero = op
                    .attr("allowzero")
                    .and_then(Attribute::as_int)
                    .unwrap_or(0);
                let from_shape = cx.ints(o[1]).and_then(|s| match s.last() {
                    Some(&d) if d > 0 => Some(d as u64),
                    Some(&0) if allowzero == 0 && s.len() == cx.ty(x).rank() => last_in,
                    _ => None,
                });
                let last_out = last_static(cx.ty(r)).or(from_shape);
                self.layout(i, x, true, last_out);
            }
            NnOp::Transpose => {
                let perm = op
                    .attr("perm")
                    .and_then(Attribute::as_int_array)
                    .unwrap_or_default();
                if cx.runtime_float(o[0])
                    && perm.last().is_some_and(|&p| p as usize + 1 == perm.len())
                {
                    self.layout(i, o[0], false, None);
                }
            }
            NnOp::Unsqueeze if cx.runtime_float(o[0]) && self.avoids_last(cx.ints(o[1]), rank) => {
                self.layout(i, o[0], false, None);
            }
            NnOp::Squeeze => {
                let in_rank = cx.ty(o[0]).rank();
                if cx.runtime_float(o[0]) && self.avoids_last(cx.ints(o[1]), in_rank) {
                    self.layout(i, o[0], false, None);
                }
            }
            NnOp::Expand if cx.runtime_float(o[0]) && self.last(o[0]).is_some_and(|n| n > 1) => {
                self.layout(i, o[0], false, None);
            }
            NnOp::LayerNorm => {
                let x = o[0];
                let axis = op.attr("axis").and_then(Attribute::as_int).unwrap_or(-1);
                let eps = op.attr("epsilon").and_then(Attribute::as_f64);
                if !cx.runtime_float(x) || !cx.is_last_axis(axis, cx.ty(x).rank()) {
                    return;
                }
                let n = self.last(x);
                let (Some(eps), Some(g), Some(bv)) =
                    (eps, self.vector(o[1], n), self.vector(o[2], n))
                else {
                    return;
                };
                let sym = |b: &Builder, c: Id| match b.eg[c].nodes.first() {
                    Some(RotLang::Leaf(s)) => s.clone(),
                    _ => String::new(),
                };
                let affine = Some((sym(self, g), sym(self, bv)));
                let t = self.add_template(
                    Template::Norm { eps, affine },
                    TemplateIr::LayerNorm { op: i },
                );
                let tn = self.num(t as u64);
                let xc = self.act(x);
                self.record(vec![i], r, RotLang::Ln([tn, xc]));
            }
            _ => {}
        }
    }
}

//! From the chosen terms back to qc IR.
//!
//! The function's ops are re-emitted in their order. Ops outside the fragment are kept; where they read
//! a fragment value, the chosen term of its class is materialized first (once per class). A group of
//! the fragment whose class is needed is materialized at its original position. A class is
//! materialized as:
//! - its original op(s), when the chosen node is the one they became (operands re-pointed to the
//!   materialized operand classes; the result keeps its value);
//! - a constant folded from its term (`hl`, `hr`, `dl`, `cr`, `vh`, `vc`, `vm`, `va` over weight and vector
//!   leaves), added with [`crate::weights::add_constant`] as resource `NAME.rot` (`NAME`: the base
//!   weight's resource or value name);
//! - new ops otherwise: `nn.matmul`, `quant.hadamard {block = B}`, `nn.add`, `nn.mul`, `nn.gather`,
//!   `nn.reduce_mean` + `nn.sub` for `center`, a copy of the norm or layout op(s) of the template on the
//!   new input, a written-out RMSNorm for `(rms T x)` whose template is a LayerNorm, an `nn.layer_norm`
//!   with unit scale and zero shift for a LayerNorm core.
//!
//! Every op created or changed carries `rotate.rules = [...]`: the sorted names of the rules that
//! added its e-node and the e-nodes of the constants folded into it (or, when those are original, of
//! its operands' chosen e-nodes). Float constants that only the rewritten ops read and that lost every
//! use are removed, with their resources when no op refers to them any more.

use std::collections::{BTreeMap, BTreeSet};

use egg::{Id, Language};
use qc_ir::attr::{Attribute, Attrs, DenseData};
use qc_ir::diag::Location;
use qc_ir::module::{Module, Op, Value};
use qc_ir::ops::{OpDef, QcOp};
use qc_ir::pass::Progress;
use qc_ir::types::{ElemType, TensorType};
use qc_ir::Diagnostic;
use qc_nn::infer::InferCx;
use qc_nn::NnOp;
use qc_quant::hadamard;
use qc_quant::ops::QuantOp;

use super::cost::Online;
use super::extract::Selection;
use super::front::{Front, TemplateIr};
use super::lang::{Kind, RotGraph, RotLang, Template};
use super::rules::Mode;

/// The attribute naming the rules behind an op.
pub const RULES_ATTR: &str = "rotate.rules";

/// Everything the emitter reads.
pub struct Input<'a> {
    /// The fragment.
    pub front: &'a Front,
    /// The saturated e-graph.
    pub eg: &'a RotGraph,
    /// The rotation kind (to find the rotated twin of a value whose shape alone is read).
    pub mode: Mode,
    /// The cost policy (for classes chosen late).
    pub policy: Online,
    /// Where to report folded weights.
    pub progress: &'a dyn Progress,
    /// How many weights may be folded (for the progress report).
    pub weights: usize,
}

struct Emitter<'a> {
    m: &'a mut Module,
    fi: usize,
    inp: Input<'a>,
    sel: &'a mut Selection,
    old: Vec<Op>,
    old_producer: BTreeMap<Value, usize>,
    memo: BTreeMap<Id, Value>,
    refined: BTreeMap<Value, Value>,
    literals: BTreeMap<(TensorType, String), Value>,
    groups_by_class: BTreeMap<Id, Vec<usize>>,
    group_of_output: BTreeMap<usize, usize>,
    rules_of: BTreeMap<RotLang, BTreeSet<&'static str>>,
    dense: BTreeMap<Value, DenseData>,
    loc: Location,
    changed: bool,
    folded: usize,
}

/// Re-emits function `fi` of `m` from the selection; returns whether anything changed (when nothing
/// did, the function is left exactly as it was).
pub fn emit(
    m: &mut Module,
    fi: usize,
    inp: Input,
    sel: &mut Selection,
) -> Result<bool, Diagnostic> {
    let resources_before: BTreeSet<String> =
        m.resources.iter().map(|(n, _)| n.to_string()).collect();
    let old = std::mem::take(&mut m.funcs[fi].ops);
    let old_producer: BTreeMap<Value, usize> = old
        .iter()
        .enumerate()
        .flat_map(|(i, op)| op.results.iter().map(move |&r| (r, i)))
        .collect();
    let dense = old
        .iter()
        .filter(|op| QcOp::of(op) == Some(QcOp::Constant))
        .filter_map(|op| match (op.results.first(), op.attr("value")) {
            (Some(&r), Some(Attribute::Dense(d))) => Some((r, d.clone())),
            _ => None,
        })
        .collect();
    let eg = inp.eg;
    let mut groups_by_class: BTreeMap<Id, Vec<usize>> = BTreeMap::new();
    let mut group_of_output = BTreeMap::new();
    for (gi, g) in inp.front.groups.iter().enumerate() {
        if let Some(&c) = inp.front.class_of.get(&g.result) {
            groups_by_class.entry(eg.find(c)).or_default().push(gi);
        }
        if let Some(&last) = g.ops.last() {
            group_of_output.insert(last, gi);
        }
    }
    let mut rules_of: BTreeMap<RotLang, BTreeSet<&'static str>> = BTreeMap::new();
    for (&i, &rule) in &eg.analysis.provenance {
        if let Some(n) = eg.nodes().get(i) {
            let canon = n.clone().map_children(|k| eg.find(k));
            rules_of.entry(canon).or_default().insert(rule);
        }
    }
    let mut e = Emitter {
        m,
        fi,
        inp,
        sel,
        old,
        old_producer,
        memo: BTreeMap::new(),
        refined: BTreeMap::new(),
        literals: BTreeMap::new(),
        groups_by_class,
        group_of_output,
        rules_of,
        dense,
        loc: Location::Unknown,
        changed: false,
        folded: 0,
    };
    let result = e.run();
    let Emitter {
        m,
        fi,
        old,
        changed,
        ..
    } = e;
    match result {
        Ok(()) if changed => {
            cleanup(m, fi, &old);
            Ok(true)
        }
        other => {
            // Nothing changed, or the rewrite failed: the function and the resources as they were.
            m.funcs[fi].ops = old;
            let added: Vec<String> = m
                .resources
                .iter()
                .map(|(n, _)| n.to_string())
                .filter(|n| !resources_before.contains(n))
                .collect();
            for n in added {
                m.resources.remove(&n);
            }
            other.map(|()| false)
        }
    }
}

/// Removes the float constants the rewrite left without uses (that had uses before), and resources
/// nothing refers to any more among theirs.
fn cleanup(m: &mut Module, fi: usize, old: &[Op]) {
    let f = &m.funcs[fi];
    let mut before = vec![0u32; f.num_values()];
    for v in old.iter().flat_map(|o| &o.operands).chain(&f.ret) {
        before[v.0 as usize] += 1;
    }
    let now = f.use_counts();
    let mut dropped: Vec<String> = Vec::new();
    let f = &mut m.funcs[fi];
    f.ops.retain(|op| {
        let dead = QcOp::of(op) == Some(QcOp::Constant)
            && op.results.len() == 1
            && before[op.results[0].0 as usize] > 0
            && now[op.results[0].0 as usize] == 0;
        if dead {
            if let Some(Attribute::DenseResource(r)) = op.attr("value") {
                dropped.push(r.clone());
            }
        }
        !dead
    });
    let referenced: BTreeSet<&str> = m
        .funcs
        .iter()
        .flat_map(|f| f.ops.iter())
        .filter_map(|op| match op.attr("value") {
            Some(Attribute::DenseResource(r)) => Some(r.as_str()),
            _ => None,
        })
        .collect();
    let gone: Vec<String> = dropped
        .into_iter()
        .filter(|r| !referenced.contains(r.as_str()))
        .collect();
    for r in gone {
        m.resources.remove(&r);
    }
}

fn internal(loc: &Location, what: impl std::fmt::Display) -> Diagnostic {
    Diagnostic::error(loc.clone(), format!("rotate: internal error: {what}"))
}

impl Emitter<'_> {
    fn run(&mut self) -> Result<(), Diagnostic> {
        let front = self.inp.front;
        for i in 0..self.old.len() {
            self.loc = self.old[i].loc.clone();
            if front.owned_ops.contains(&i) {
                if let Some(&gi) = self.group_of_output.get(&i) {
                    let r = front.groups[gi].result;
                    if let Some(&c) = front.class_of.get(&r) {
                        let c = self.inp.eg.find(c);
                        if self.sel.choice.contains_key(&c) {
                            self.materialize(c)?;
                        }
                    }
                }
                continue;
            }
            let mut op = self.old[i].clone();
            let shape_only = matches!(NnOp::of(&op), Some(NnOp::Shape) | Some(NnOp::Size));
            for k in 0..op.operands.len() {
                let v = op.operands[k];
                if front.owned_values.contains(&v) {
                    op.operands[k] = self.root(v, shape_only)?;
                }
            }
            self.func().ops.push(op);
        }
        self.loc = self.m.funcs[self.fi].ret_loc.clone();
        let ret = self.m.funcs[self.fi].ret.clone();
        for (k, v) in ret.into_iter().enumerate() {
            if front.owned_values.contains(&v) {
                let u = self.root(v, false)?;
                if self.ty(u) != self.ty(v) {
                    return Err(internal(
                        &self.loc,
                        format!(
                            "returned value {k} would change type from {} to {}",
                            self.ty(v),
                            self.ty(u)
                        ),
                    ));
                }
                self.func().ret[k] = u;
            }
        }
        Ok(())
    }

    fn func(&mut self) -> &mut qc_ir::module::Func {
        &mut self.m.funcs[self.fi]
    }

    fn ty(&self, v: Value) -> &TensorType {
        self.m.funcs[self.fi].ty(v)
    }

    fn choice(&mut self, c: Id) -> RotLang {
        let c = self.inp.eg.find(c);
        if !self.sel.choice.contains_key(&c) {
            self.sel.ensure(self.inp.eg, self.inp.policy, c);
        }
        self.sel.choice[&c].clone()
    }

    /// The value replacing fragment value `v` for an op outside the fragment. A shape-only reader
    /// (`nn.shape`, `nn.size`) takes the rotated twin of `v` when that is computed and `v` is not.
    fn root(&mut self, v: Value, shape_only: bool) -> Result<Value, Diagnostic> {
        let eg = self.inp.eg;
        let Some(&c) = self.inp.front.class_of.get(&v) else {
            return Err(internal(
                &self.loc,
                format!("value %{} has no e-class", v.0),
            ));
        };
        let c = eg.find(c);
        let mut target = c;
        if shape_only && !self.sel.choice.contains_key(&c) {
            let twin = eg[c]
                .data
                .last()
                .and_then(|n| self.inp.mode.block_for(n))
                .and_then(|b| eg.lookup(RotLang::Num(b as i64)))
                .and_then(|b| eg.lookup(RotLang::Rotate([b, c])))
                .map(|t| eg.find(t));
            if let Some(t) = twin.filter(|t| self.sel.choice.contains_key(t)) {
                target = t;
            }
        }
        let u = self.materialize(target)?;
        if u == v || self.ty(u) == self.ty(v) {
            return Ok(u);
        }
        if !qc_nn::shape::type_matches(self.ty(u), self.ty(v)) {
            // The new value's type is more refined than the original's (no op can widen a type back);
            // the reader takes it as it is, and the verifier after the pass checks the result.
            return Ok(u);
        }
        if let Some(&r) = self.refined.get(&v) {
            return Ok(r);
        }
        // Restore the original, more refined type for the reader.
        let ty = self.ty(v).clone();
        let hint = self.m.funcs[self.fi].value(v).name.clone();
        let r = self.push(
            NnOp::Identity.def(),
            vec![u],
            ty,
            Attrs::new(),
            hint.as_deref(),
        );
        self.refined.insert(v, r);
        Ok(r)
    }

    fn materialize(&mut self, c: Id) -> Result<Value, Diagnostic> {
        let eg = self.inp.eg;
        let c = eg.find(c);
        if let Some(&v) = self.memo.get(&c) {
            return Ok(v);
        }
        let node = self.choice(c);
        let v = match (&eg[c].data, &node) {
            (Kind::Mat { .. } | Kind::Vector { .. }, _) => self.constant(c)?,
            (_, RotLang::Leaf(s)) => match self.inp.front.leaf_value.get(s.as_str()) {
                Some(&v) => v,
                None => return Err(internal(&self.loc, format!("unknown leaf {s}"))),
            },
            (_, RotLang::Num(n)) => {
                return Err(internal(&self.loc, format!("the number {n} as a value")));
            }
            _ => self.activation(c, &node)?,
        };
        self.memo.insert(c, v);
        Ok(v)
    }

    fn canon(&self, n: &RotLang) -> RotLang {
        n.clone().map_children(|k| self.inp.eg.find(k))
    }

    fn num(&self, id: Id) -> Result<i64, Diagnostic> {
        self.inp.eg[id]
            .data
            .num()
            .ok_or_else(|| internal(&self.loc, "a parameter is not a number"))
    }

    /// The rules behind the op materializing `node` (see the module doc).
    fn rules(&mut self, node: &RotLang) -> Attribute {
        let eg = self.inp.eg;
        let mut set: BTreeSet<&'static str> = self
            .rules_of
            .get(&self.canon(node))
            .cloned()
            .unwrap_or_default();
        for &k in node.children() {
            if matches!(eg[k].data, Kind::Mat { .. } | Kind::Vector { .. }) {
                set.extend(self.term_rules(k));
            }
        }
        if set.is_empty() {
            for &k in node.children() {
                let n = self.choice(k);
                if let Some(r) = self.rules_of.get(&self.canon(&n)) {
                    set.extend(r.iter().copied());
                }
            }
        }
        Attribute::Array(
            set.into_iter()
                .map(|s| Attribute::Str(s.to_string()))
                .collect(),
        )
    }

    /// The rules behind every node of the chosen term of class `c`.
    fn term_rules(&mut self, c: Id) -> BTreeSet<&'static str> {
        let mut out = BTreeSet::new();
        let mut stack = vec![c];
        let mut seen = BTreeSet::new();
        while let Some(c) = stack.pop() {
            let c = self.inp.eg.find(c);
            if !seen.insert(c) {
                continue;
            }
            let n = self.choice(c);
            if let Some(r) = self.rules_of.get(&self.canon(&n)) {
                out.extend(r.iter().copied());
            }
            stack.extend(n.children().iter().copied());
        }
        out
    }

    /// The type of an op's result for class `c`: the class's original type when the inferred one is
    /// compatible with it, else the inferred one.
    fn declared(&self, c: Id, inferred: TensorType) -> TensorType {
        let front = self.inp.front;
        let original = self
            .groups_by_class
            .get(&c)
            .and_then(|gs| gs.first())
            .map(|&g| self.ty(front.groups[g].result).clone());
        match original {
            Some(t) if qc_nn::shape::type_matches(&inferred, &t) => t,
            _ => inferred,
        }
    }

    /// A name hint for a new value of class `c`.
    fn hint(&self, c: Id, what: &str) -> String {
        let front = self.inp.front;
        self.groups_by_class
            .get(&c)
            .and_then(|gs| gs.first())
            .and_then(|&g| {
                self.m.funcs[self.fi]
                    .value(front.groups[g].result)
                    .name
                    .clone()
            })
            .unwrap_or_else(|| format!("{what}_rot"))
    }

    fn infer(
        &self,
        which: NnOp,
        operands: &[Value],
        attrs: &Attrs,
        elem: Option<ElemType>,
    ) -> Result<TensorType, Diagnostic> {
        let f = &self.m.funcs[self.fi];
        let cx = InferCx {
            types: operands.iter().map(|&v| f.ty(v)).collect(),
            attrs,
            consts: operands.iter().map(|v| self.dense.get(v)).collect(),
            result_elem: elem,
        };
        qc_nn::infer::infer(which, &cx)
            .ok()
            .and_then(|t| t.into_iter().next())
            .ok_or_else(|| {
                internal(
                    &self.loc,
                    format!("cannot infer the type of a new {}", which.def().name),
                )
            })
    }

    fn push(
        &mut self,
        def: &'static OpDef,
        operands: Vec<Value>,
        ty: TensorType,
        attrs: Attrs,
        hint: Option<&str>,
    ) -> Value {
        let loc = self.loc.clone();
        let f = self.func();
        let r = f.new_value(ty, hint);
        f.ops.push(Op {
            def,
            operands,
            results: vec![r],
            attrs,
            loc,
        });
        self.changed = true;
        r
    }

    /// A new nn op computing class `c` (node `node`), typed by inference and named after the class.
    fn nn(
        &mut self,
        c: Id,
        node: &RotLang,
        which: NnOp,
        operands: Vec<Value>,
        attrs: Attrs,
    ) -> Result<Value, Diagnostic> {
        let hint = self.hint(c, which.def().name.trim_start_matches("nn."));
        self.nn_named(c, node, which, operands, attrs, &hint)
    }

    /// A new nn op on the way to class `c` (an inner op of a written-out norm or centering).
    fn nn_inner(
        &mut self,
        node: &RotLang,
        which: NnOp,
        operands: Vec<Value>,
        attrs: Attrs,
    ) -> Result<Value, Diagnostic> {
        let hint = format!("{}_rot", which.def().name.trim_start_matches("nn."));
        let inferred = self.infer(which, &operands, &attrs, None)?;
        self.push_nn(node, which, operands, inferred, attrs, &hint)
    }

    fn nn_named(
        &mut self,
        c: Id,
        node: &RotLang,
        which: NnOp,
        operands: Vec<Value>,
        attrs: Attrs,
        hint: &str,
    ) -> Result<Value, Diagnostic> {
        let inferred = self.infer(which, &operands, &attrs, None)?;
        let ty = self.declared(c, inferred);
        self.push_nn(node, which, operands, ty, attrs, hint)
    }

    fn push_nn(
        &mut self,
        node: &RotLang,
        which: NnOp,
        operands: Vec<Value>,
        ty: TensorType,
        mut attrs: Attrs,
        hint: &str,
    ) -> Result<Value, Diagnostic> {
        attrs.set(RULES_ATTR, self.rules(node));
        Ok(self.push(which.def(), operands, ty, attrs, Some(hint)))
    }

    /// A small literal constant (one per type and value in the function).
    fn literal(&mut self, ty: TensorType, d: DenseData) -> Value {
        let key = (ty.clone(), format!("{d:?}"));
        if let Some(&v) = self.literals.get(&key) {
            return v;
        }
        let attrs: Attrs = [("value", Attribute::Dense(d.clone()))]
            .into_iter()
            .collect();
        let v = self.push(QcOp::Constant.def(), vec![], ty, attrs, None);
        self.dense.insert(v, d);
        self.literals.insert(key, v);
        v
    }

    fn activation(&mut self, c: Id, node: &RotLang) -> Result<Value, Diagnostic> {
        let canon = self.canon(node);
        let front = self.inp.front;
        if let Some(gs) = self.groups_by_class.get(&c).cloned() {
            for g in gs {
                if self.canon(&front.groups[g].node) == canon {
                    return self.group(g, node);
                }
            }
        }
        self.synth(c, node)
    }

    /// Re-emits the ops of group `g` with their fragment operands materialized.
    fn group(&mut self, g: usize, node: &RotLang) -> Result<Value, Diagnostic> {
        let front = self.inp.front;
        let group = &front.groups[g];
        for &oi in &group.ops {
            let mut op = self.old[oi].clone();
            let mut changed = false;
            for u in op.operands.iter_mut() {
                if front.owned_values.contains(u) && !front.class_of.contains_key(u) {
                    // An inner value of this group: defined just above, unchanged.
                    continue;
                }
                if let Some(&k) = front.class_of.get(u) {
                    let n = self.materialize(k)?;
                    changed |= n != front.resolve(*u);
                    *u = n;
                }
            }
            if changed {
                op.attrs.set(RULES_ATTR, self.rules(node));
                self.changed = true;
            }
            self.func().ops.push(op);
        }
        Ok(group.result)
    }

    /// Copies the ops `ops` of a template onto a new input.
    fn copy_ops(
        &mut self,
        c: Id,
        node: &RotLang,
        ops: &[usize],
        input: Value,
        x: Value,
    ) -> Result<Value, Diagnostic> {
        let mut local: BTreeMap<Value, Value> = BTreeMap::new();
        local.insert(input, x);
        let rules = self.rules(node);
        let mut last = x;
        for (j, &oi) in ops.iter().enumerate() {
            let orig = self.old[oi].clone();
            let operands: Vec<Value> = orig
                .operands
                .iter()
                .map(|u| *local.get(u).unwrap_or(u))
                .collect();
            let which = NnOp::of(&orig)
                .ok_or_else(|| internal(&self.loc, "a template op is not an nn op"))?;
            let inferred = self.infer(
                which,
                &operands,
                &orig.attrs,
                Some(self.ty(orig.results[0]).elem.clone()),
            )?;
            let ty = if j + 1 == ops.len() {
                self.declared(c, inferred)
            } else {
                inferred
            };
            let mut attrs = orig.attrs.clone();
            attrs.set(RULES_ATTR, rules.clone());
            let hint = self.m.funcs[self.fi].value(orig.results[0]).name.clone();
            let r = self.push(orig.def, operands, ty, attrs, hint.as_deref());
            local.insert(orig.results[0], r);
            last = r;
        }
        Ok(last)
    }

    fn template_eps(&self, t: i64) -> Result<f64, Diagnostic> {
        match self.inp.eg.analysis.template(t) {
            Some(Template::Norm { eps, .. }) => Ok(*eps),
            _ => Err(internal(&self.loc, "a norm without its template")),
        }
    }

    fn template_ir(&self, t: i64) -> Result<TemplateIr, Diagnostic> {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.inp.front.templates.get(t))
            .cloned()
            .ok_or_else(|| internal(&self.loc, "an unknown template"))
    }

    fn axes_last(&mut self) -> Value {
        let i64t = ElemType::Int {
            bits: 64,
            unsigned: false,
        };
        self.literal(TensorType::new(&[1], i64t), DenseData::Int(vec![-1]))
    }

    fn scalar(&mut self, elem: &ElemType, v: f64) -> Value {
        self.literal(
            TensorType::new(&[], elem.clone()),
            DenseData::Float(vec![v]),
        )
    }

    /// `x / sqrt(mean(x^2) + eps)` written out.
    fn rmsnorm(&mut self, c: Id, node: &RotLang, x: Value, eps: f64) -> Result<Value, Diagnostic> {
        let elem = self.ty(x).elem.clone();
        let (two, e, one, axes) = (
            self.scalar(&elem, 2.0),
            self.scalar(&elem, eps),
            self.scalar(&elem, 1.0),
            self.axes_last(),
        );
        let keep: Attrs = [
            ("keepdims", Attribute::Int(1)),
            ("noop_with_empty_axes", Attribute::Int(0)),
        ]
        .into_iter()
        .collect();
        let p = self.nn_inner(node, NnOp::Pow, vec![x, two], Attrs::new())?;
        let m = self.nn_inner(node, NnOp::ReduceMean, vec![p, axes], keep)?;
        let a = self.nn_inner(node, NnOp::Add, vec![m, e], Attrs::new())?;
        let s = self.nn_inner(node, NnOp::Sqrt, vec![a], Attrs::new())?;
        let r = self.nn_inner(node, NnOp::Div, vec![one, s], Attrs::new())?;
        self.nn(c, node, NnOp::Mul, vec![x, r], Attrs::new())
    }

    fn synth(&mut self, c: Id, node: &RotLang) -> Result<Value, Diagnostic> {
        let no = Attrs::new;
        match *node {
            RotLang::Lin([x, w]) | RotLang::Amm([x, w]) => {
                let (xv, wv) = (self.materialize(x)?, self.materialize(w)?);
                self.nn(c, node, NnOp::Matmul, vec![xv, wv], no())
            }
            RotLang::Rotate([b, x]) => {
                let b = self.num(b)?;
                let xv = self.materialize(x)?;
                let ty = self.ty(xv).clone();
                let attrs: Attrs = [("block", Attribute::Int(b)), (RULES_ATTR, self.rules(node))]
                    .into_iter()
                    .collect();
                let hint = self.m.funcs[self.fi]
                    .value(xv)
                    .name
                    .clone()
                    .map_or_else(|| "rot".to_string(), |n| format!("{n}_rot"));
                Ok(self.push(QuantOp::Hadamard.def(), vec![xv], ty, attrs, Some(&hint)))
            }
            RotLang::Rms([t, x]) => {
                let t = self.num(t)?;
                let xv = self.materialize(x)?;
                match self.template_ir(t)? {
                    TemplateIr::RmsOps { ops, input } => self.copy_ops(c, node, &ops, input, xv),
                    _ => {
                        let eps = self.template_eps(t)?;
                        self.rmsnorm(c, node, xv, eps)
                    }
                }
            }
            RotLang::Lnc([t, x]) => {
                let t = self.num(t)?;
                let xv = self.materialize(x)?;
                match self.template_ir(t)? {
                    TemplateIr::LncOps { ops, input } => self.copy_ops(c, node, &ops, input, xv),
                    _ => {
                        let eps = self.template_eps(t)?;
                        let elem = self.ty(xv).elem.clone();
                        let n = self.inp.eg[x]
                            .data
                            .last()
                            .ok_or_else(|| internal(&self.loc, "a LayerNorm of unknown width"))?;
                        let ones = self.literal(
                            TensorType::new(&[n], elem.clone()),
                            DenseData::Float(vec![1.0]),
                        );
                        let zeros =
                            self.literal(TensorType::new(&[n], elem), DenseData::Float(vec![0.0]));
                        let attrs: Attrs = [
                            ("axis", Attribute::Int(-1)),
                            ("epsilon", Attribute::Float(qc_ir::attr::F64Bits(eps))),
                        ]
                        .into_iter()
                        .collect();
                        self.nn(c, node, NnOp::LayerNorm, vec![xv, ones, zeros], attrs)
                    }
                }
            }
            RotLang::Ln([t, x]) | RotLang::Lay([t, x]) => {
                let t = self.num(t)?;
                let xv = self.materialize(x)?;
                let (TemplateIr::LayerNorm { op } | TemplateIr::Layout { op }) =
                    self.template_ir(t)?
                else {
                    return Err(internal(
                        &self.loc,
                        "a layout or LayerNorm term with another template",
                    ));
                };
                let input = self.old[op].operands[0];
                self.copy_ops(c, node, &[op], input, xv)
            }
            RotLang::Scale([x, v]) | RotLang::Bias([x, v]) | RotLang::Add([x, v]) => {
                let (xv, vv) = (self.materialize(x)?, self.materialize(v)?);
                let which = if matches!(node, RotLang::Scale(_)) {
                    NnOp::Mul
                } else {
                    NnOp::Add
                };
                self.nn(c, node, which, vec![xv, vv], no())
            }
            RotLang::Center(x) => {
                let xv = self.materialize(x)?;
                let axes = self.axes_last();
                let keep: Attrs = [
                    ("keepdims", Attribute::Int(1)),
                    ("noop_with_empty_axes", Attribute::Int(0)),
                ]
                .into_iter()
                .collect();
                let mean = self.nn_inner(node, NnOp::ReduceMean, vec![xv, axes], keep)?;
                self.nn(c, node, NnOp::Sub, vec![xv, mean], no())
            }
            RotLang::Gather([e, i]) => {
                let (ev, iv) = (self.materialize(e)?, self.materialize(i)?);
                let attrs: Attrs = [("axis", Attribute::Int(0))].into_iter().collect();
                self.nn(c, node, NnOp::Gather, vec![ev, iv], attrs)
            }
            RotLang::HadL(_)
            | RotLang::HadR(_)
            | RotLang::DiagL(_)
            | RotLang::CenterR(_)
            | RotLang::VecHad(_)
            | RotLang::VecCenter(_)
            | RotLang::VecMat(_)
            | RotLang::VecAdd(_)
            | RotLang::Num(_)
            | RotLang::Leaf(_) => Err(internal(
                &self.loc,
                format!("{node} is not a run-time value"),
            )),
        }
    }

    /// The float values of constant class `c`'s chosen term, and the leaf value it is built on.
    fn eval(&mut self, c: Id) -> Result<(Vec<f32>, Value), Diagnostic> {
        let eg = self.inp.eg;
        let node = self.choice(c);
        let cols = |k: Id| eg[k].data.last().unwrap_or(1) as usize;
        match node {
            RotLang::Leaf(s) => {
                let v = *self
                    .inp
                    .front
                    .leaf_value
                    .get(s.as_str())
                    .ok_or_else(|| internal(&self.loc, "an unknown constant"))?;
                let &pi = self
                    .old_producer
                    .get(&v)
                    .ok_or_else(|| internal(&self.loc, "a constant without its op"))?;
                let cop = &self.old[pi];
                let vals =
                    crate::weights::constant_values(self.m, cop, self.m.funcs[self.fi].ty(v))
                        .ok_or_else(|| {
                            internal(&cop.loc, "a weight whose values cannot be read")
                        })?;
                if vals.iter().any(|x| !x.is_finite()) {
                    let name = self.m.funcs[self.fi]
                        .value(v)
                        .name
                        .clone()
                        .unwrap_or_default();
                    return Err(Diagnostic::error(
                        cop.loc.clone(),
                        format!("rotate: constant %{name} has non-finite values; a rotation would spread them over whole rows"),
                    ));
                }
                Ok((vals, v))
            }
            RotLang::HadL([b, m]) => {
                let b = self.num(b)? as usize;
                let (mut a, base) = self.eval(m)?;
                hadamard::rotate_cols(&mut a, cols(m), b);
                Ok((a, base))
            }
            RotLang::HadR([b, m]) | RotLang::VecHad([b, m]) => {
                let b = self.num(b)? as usize;
                let (mut a, base) = self.eval(m)?;
                hadamard::rotate_rows(&mut a, cols(m), b);
                Ok((a, base))
            }
            RotLang::DiagL([g, m]) => {
                let (gv, _) = self.eval(g)?;
                let (mut a, base) = self.eval(m)?;
                let n = cols(m);
                for (row, &s) in a.chunks_mut(n).zip(&gv) {
                    row.iter_mut()
                        .for_each(|x| *x = (*x as f64 * s as f64) as f32);
                }
                Ok((a, base))
            }
            RotLang::CenterR(m) | RotLang::VecCenter(m) => {
                let (mut a, base) = self.eval(m)?;
                for row in a.chunks_mut(cols(m)) {
                    let mean = row.iter().map(|&x| x as f64).sum::<f64>() / row.len() as f64;
                    row.iter_mut().for_each(|x| *x = (*x as f64 - mean) as f32);
                }
                Ok((a, base))
            }
            RotLang::VecAdd([v, u]) => {
                let (mut vv, base) = self.eval(v)?;
                let (uv, _) = self.eval(u)?;
                for (x, &y) in vv.iter_mut().zip(&uv) {
                    *x = (*x as f64 + y as f64) as f32;
                }
                Ok((vv, base))
            }
            RotLang::VecMat([v, m]) => {
                let (vv, base) = self.eval(v)?;
                let (mv, _) = self.eval(m)?;
                let n = cols(m);
                let out = (0..n)
                    .map(|j| {
                        vv.iter()
                            .enumerate()
                            .map(|(k, &x)| x as f64 * mv[k * n + j] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                Ok((out, base))
            }
            other => Err(internal(&self.loc, format!("{other} is not a constant"))),
        }
    }

    /// Materializes constant class `c`: the leaf's own value, or a new folded constant.
    fn constant(&mut self, c: Id) -> Result<Value, Diagnostic> {
        let node = self.choice(c);
        if let RotLang::Leaf(s) = &node {
            return self
                .inp
                .front
                .leaf_value
                .get(s.as_str())
                .copied()
                .ok_or_else(|| internal(&self.loc, "an unknown constant"));
        }
        let (data, base) = self.eval(c)?;
        let base_ty = self.ty(base).clone();
        let ty = match &self.inp.eg[c].data {
            Kind::Mat { rows, cols, .. } => TensorType::new(&[*rows, *cols], base_ty.elem.clone()),
            Kind::Vector { len } if base_ty.num_elements() == Some(*len) => base_ty.clone(),
            Kind::Vector { len } => TensorType::new(&[*len], base_ty.elem.clone()),
            _ => return Err(internal(&self.loc, "a constant of unknown shape")),
        };
        let bp = self.old_producer.get(&base).copied();
        let name = bp
            .and_then(|i| match self.old[i].attr("value") {
                Some(Attribute::DenseResource(r)) => Some(r.clone()),
                _ => None,
            })
            .or_else(|| self.m.funcs[self.fi].value(base).name.clone())
            .unwrap_or_else(|| "w".to_string());
        let rules = Attribute::Array(
            self.term_rules(c)
                .into_iter()
                .map(|s| Attribute::Str(s.to_string()))
                .collect(),
        );
        let at = self.m.funcs[self.fi].ops.len();
        let v =
            crate::weights::add_constant(self.m, self.fi, at, ty, &data, &format!("{name}.rot"));
        let loc = self.loc.clone();
        if let Some(op) = self.func().ops.last_mut() {
            op.attrs.set(RULES_ATTR, rules);
            op.loc = loc;
        }
        self.changed = true;
        if matches!(self.inp.eg[c].data, Kind::Mat { .. }) {
            self.folded += 1;
            let total = self.inp.weights.max(self.folded);
            self.inp.progress.step("rotate", self.folded, total, &name);
        }
        Ok(v)
    }
}

//! The named rewrite rules of the `rotate` pass. Each is directional and sound for every orthonormal
//! `H` (Sylvester's and the block-diagonal ones are also symmetric, so `H^T = H` and `H H = I`).
//!
//! | rule | rewrite | why it holds |
//! |---|---|---|
//! | `cancel-h-ht` | `(rot B (rot B x))` -> `x` | `H H^T = I` |
//! | `cancel-h-ht-rows`, `-cols`, `-vec` | `(hl B (hl B M))` -> `M`, likewise `hr`, `vh` | `H H^T = I` |
//! | `insert-h-ht` | `(lin x M)` -> `(lin (rot B x) (hl B M))` | `x M = (x H)(H^T M)`; only when `M` has no rotated rows yet and `B` fits `K` |
//! | `absorb-into-weight-rows` | `(lin (rot B x) M)` -> `(lin x (hl B M))` | `(x H) M = x (H M)`: an online rotation in front of a layer becomes part of its weight |
//! | `absorb-into-weight-cols` | `(rot B (lin x M))` -> `(lin x (hr B M))` | `(x M) H = x (M H)`: a rotation behind a layer becomes part of its weight |
//! | `absorb-into-embedding` | `(rot B (gather E i))` -> `(gather (hr B E) i)` | gathering rows commutes with multiplying every row by `H` |
//! | `fold-scale-into-weight` | `(lin (scale x g) M)` -> `(lin x (dl g M))` | `(x diag g) M = x (diag(g) M)`: a norm's scale moves into the next weights |
//! | `move-bias-past-weight` | `(lin (bias x v) M)` -> `(bias (lin x M) (vm v M))` | `(x + v) M = x M + v M` |
//! | `merge-biases` | `(bias (bias x v) u)` -> `(bias x (va v u))` | `(x + v) + u = x + (v + u)` |
//! | `rotate-through-rmsnorm` | `(rot B (rms T x))` -> `(rms T (rot B x))` | `\|\|x H\|\| = \|\|x\|\|`, so `rms(x H) = rms(x) H` |
//! | `rotate-through-add` | `(rot B (add x y))` -> `(add (rot B x) (rot B y))` | `(a + b) H = a H + b H` |
//! | `factor-rotation-out-of-add` | `(add (rot B x) (rot B y))` -> `(rot B (add x y))` | the same, read the other way |
//! | `rotate-through-bias` | `(rot B (bias x v))` -> `(bias (rot B x) (vh B v))` | `(x + v) H = x H + v H` |
//! | `rotate-through-layout` | `(rot B (lay T x))` -> `(lay T (rot B x))` | when the layout op keeps every block of `B` elements of the last axis together ([`Template::commutes_with`]): transposes that keep the last axis, per-head reshapes with `B` dividing the head size, unsqueeze / squeeze / expand on other axes |
//! | `rotate-through-matmul` | `(rot B (amm a v))` -> `(amm a (rot B v))` | `(a v) H = a (v H)` |
//! | `split-layernorm` | `(ln T x)` -> `(bias (scale (lnc T x) g) b)` | a LayerNorm is its core, then its scale and shift |
//! | `layernorm-as-rmsnorm` | `(lnc T x)` -> `(rms T (center x))` | the core of a LayerNorm is the RMSNorm (same `eps`) of the mean-free input |
//! | `center-through-add`, `center-through-bias` | `(center (add x y))` -> `(add (center x) (center y))`, `(center (bias x v))` -> `(bias (center x) (vc v))` | `C` is linear |
//! | `absorb-center-into-weight` | `(center (lin x M))` -> `(lin x (cr M))` | `(x M) C = x (M C)`: the mean subtraction moves into the weights that write the stream (SliceGPT, QuaRot) |
//! | `absorb-center-into-embedding` | `(center (gather E i))` -> `(gather (cr E) i)` | row by row |
//! | `center-idempotent` | `(center (center x))` -> `(center x)` | `C C = C` |
//! | `center-through-layout` | `(center (lay T x))` -> `(lay T (center x))` | for layout ops that keep the last axis whole |
//!
//! A LayerNorm is not rotation-invariant (its mean subtraction does not commute with `H`); the rules
//! above rotate through one only where its input's mean subtraction can be absorbed into every writer
//! of that input (pre-norm residual streams written by weights and embeddings). Elsewhere (BERT's
//! post-norm blocks, whose stream passes through the norm's scale and shift) the cost model is left with
//! online rotations in front of the layers the LayerNorm feeds.
//!
//! Every rule's applier is wrapped so that the e-nodes it adds are recorded with its name
//! ([`RotAnalysis::provenance`]); the pass annotates the ops it creates with those names.

use std::sync::Arc;

use egg::{rewrite, Applier, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};

use super::lang::{Kind, RotAnalysis, RotGraph, RotLang, Template};

/// The rotation used for an axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One Walsh-Hadamard matrix over the whole axis (its length must be a power of two).
    Hadamard,
    /// Block-diagonal Walsh-Hadamard with this block size (a power of two; the axis length must be a
    /// multiple of it).
    Block(u64),
}

impl Mode {
    /// The block size for an axis of length `n`, or `None` when `n` is not supported (then the axis is
    /// left alone).
    pub fn block_for(self, n: u64) -> Option<u64> {
        match self {
            Mode::Hadamard => (n >= 2 && n.is_power_of_two()).then_some(n),
            Mode::Block(b) => (n > 0 && n.is_multiple_of(b)).then_some(b),
        }
    }
}

/// Wraps an applier to record which rule added each new e-node.
struct Traced(Arc<dyn Applier<RotLang, RotAnalysis> + Sync + Send>);

impl Applier<RotLang, RotAnalysis> for Traced {
    fn apply_matches(
        &self,
        eg: &mut RotGraph,
        matches: &[egg::SearchMatches<RotLang>],
        rule_name: Symbol,
    ) -> Vec<Id> {
        let before = eg.nodes().len();
        let out = self.0.apply_matches(eg, matches, rule_name);
        let name = rule_name.as_str();
        for i in before..eg.nodes().len() {
            eg.analysis.provenance.insert(i, name);
        }
        out
    }

    fn apply_one(
        &self,
        eg: &mut RotGraph,
        eclass: Id,
        subst: &Subst,
        ast: Option<&PatternAst<RotLang>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        self.0.apply_one(eg, eclass, subst, ast, rule_name)
    }

    fn get_pattern_ast(&self) -> Option<&PatternAst<RotLang>> {
        self.0.get_pattern_ast()
    }

    fn vars(&self) -> Vec<Var> {
        self.0.vars()
    }
}

fn traced(mut rw: Rewrite<RotLang, RotAnalysis>) -> Rewrite<RotLang, RotAnalysis> {
    rw.applier = Arc::new(Traced(rw.applier.clone()));
    rw
}

fn var(s: &str) -> Var {
    s.parse().expect("a pattern variable")
}

fn pattern(s: &str) -> Pattern<RotLang> {
    s.parse().expect("a valid pattern")
}

/// A rule with a custom applier.
fn custom(
    name: &str,
    lhs: &str,
    a: impl Applier<RotLang, RotAnalysis> + Send + Sync + 'static,
) -> Rewrite<RotLang, RotAnalysis> {
    Rewrite::new(name, pattern(lhs), a).expect("the applier binds only the pattern's variables")
}

/// `insert-h-ht`: `x M = (x H)(H^T M)` for a layer whose weight has no rotated rows yet.
struct InsertHHt {
    mode: Mode,
    x: Var,
    m: Var,
}

impl Applier<RotLang, RotAnalysis> for InsertHHt {
    fn apply_one(
        &self,
        eg: &mut RotGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<RotLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let (x, m) = (subst[self.x], subst[self.m]);
        let b = match &eg[m].data {
            Kind::Mat { rows, form, .. } if !form.input_rotated() => self.mode.block_for(*rows),
            _ => None,
        };
        let Some(b) = b else { return vec![] };
        let bn = eg.add(RotLang::Num(b as i64));
        let rx = eg.add(RotLang::Rotate([bn, x]));
        let hm = eg.add(RotLang::HadL([bn, m]));
        let l = eg.add(RotLang::Lin([rx, hm]));
        if eg.union(eclass, l) {
            vec![eclass]
        } else {
            vec![]
        }
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.x, self.m]
    }
}

/// `split-layernorm`: a whole LayerNorm is its core followed by its scale and shift.
struct SplitLayerNorm {
    t: Var,
    x: Var,
}

impl Applier<RotLang, RotAnalysis> for SplitLayerNorm {
    fn apply_one(
        &self,
        eg: &mut RotGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<RotLang>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let (t, x) = (subst[self.t], subst[self.x]);
        let affine = eg[t]
            .data
            .num()
            .and_then(|i| eg.analysis.template(i))
            .and_then(|tp| match tp {
                Template::Norm {
                    affine: Some(gb), ..
                } => Some(gb.clone()),
                _ => None,
            });
        let Some((g, b)) = affine else { return vec![] };
        let g = eg.add(RotLang::Leaf(g));
        let b = eg.add(RotLang::Leaf(b));
        let core = eg.add(RotLang::Lnc([t, x]));
        let scaled = eg.add(RotLang::Scale([core, g]));
        let out = eg.add(RotLang::Bias([scaled, b]));
        if eg.union(eclass, out) {
            vec![eclass]
        } else {
            vec![]
        }
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.t, self.x]
    }
}

/// The condition of `rotate-through-layout`.
fn layout_commutes(t: &str, b: &str) -> impl Fn(&mut RotGraph, Id, &Subst) -> bool {
    let (t, b) = (var(t), var(b));
    move |eg, _, s| match (eg[s[t]].data.num(), eg[s[b]].data.num()) {
        (Some(t), Some(b)) if b > 0 => eg
            .analysis
            .template(t)
            .is_some_and(|tp| tp.commutes_with(b as u64)),
        _ => false,
    }
}

/// The names of every rule, in the order [`rules`] lists them.
pub const RULE_NAMES: [&str; 25] = [
    "cancel-h-ht",
    "cancel-h-ht-rows",
    "cancel-h-ht-cols",
    "cancel-h-ht-vec",
    "insert-h-ht",
    "absorb-into-weight-rows",
    "absorb-into-weight-cols",
    "absorb-into-embedding",
    "fold-scale-into-weight",
    "move-bias-past-weight",
    "merge-biases",
    "rotate-through-rmsnorm",
    "rotate-through-add",
    "factor-rotation-out-of-add",
    "rotate-through-bias",
    "rotate-through-layout",
    "rotate-through-matmul",
    "split-layernorm",
    "layernorm-as-rmsnorm",
    "center-through-add",
    "center-through-bias",
    "absorb-center-into-weight",
    "absorb-center-into-embedding",
    "center-idempotent",
    "center-through-layout",
];

/// Every rule, for rotations of kind `mode`.
pub fn rules(mode: Mode) -> Vec<Rewrite<RotLang, RotAnalysis>> {
    let rws = vec![
        rewrite!("cancel-h-ht"; "(rot ?b (rot ?b ?x))" => "?x"),
        rewrite!("cancel-h-ht-rows"; "(hl ?b (hl ?b ?m))" => "?m"),
        rewrite!("cancel-h-ht-cols"; "(hr ?b (hr ?b ?m))" => "?m"),
        rewrite!("cancel-h-ht-vec"; "(vh ?b (vh ?b ?v))" => "?v"),
        custom(
            "insert-h-ht",
            "(lin ?x ?m)",
            InsertHHt {
                mode,
                x: var("?x"),
                m: var("?m"),
            },
        ),
        rewrite!("absorb-into-weight-rows"; "(lin (rot ?b ?x) ?m)" => "(lin ?x (hl ?b ?m))"),
        rewrite!("absorb-into-weight-cols"; "(rot ?b (lin ?x ?m))" => "(lin ?x (hr ?b ?m))"),
        rewrite!("absorb-into-embedding"; "(rot ?b (gather ?e ?i))" => "(gather (hr ?b ?e) ?i)"),
        rewrite!("fold-scale-into-weight"; "(lin (scale ?x ?g) ?m)" => "(lin ?x (dl ?g ?m))"),
        rewrite!("move-bias-past-weight"; "(lin (bias ?x ?v) ?m)" => "(bias (lin ?x ?m) (vm ?v ?m))"),
        rewrite!("merge-biases"; "(bias (bias ?x ?v) ?u)" => "(bias ?x (va ?v ?u))"),
        rewrite!("rotate-through-rmsnorm"; "(rot ?b (rms ?t ?x))" => "(rms ?t (rot ?b ?x))"),
        rewrite!("rotate-through-add"; "(rot ?b (add ?x ?y))" => "(add (rot ?b ?x) (rot ?b ?y))"),
        rewrite!("factor-rotation-out-of-add"; "(add (rot ?b ?x) (rot ?b ?y))" => "(rot ?b (add ?x ?y))"),
        rewrite!("rotate-through-bias"; "(rot ?b (bias ?x ?v))" => "(bias (rot ?b ?x) (vh ?b ?v))"),
        rewrite!("rotate-through-layout"; "(rot ?b (lay ?t ?x))" => "(lay ?t (rot ?b ?x))"
            if layout_commutes("?t", "?b")),
        rewrite!("rotate-through-matmul"; "(rot ?b (amm ?a ?v))" => "(amm ?a (rot ?b ?v))"),
        custom(
            "split-layernorm",
            "(ln ?t ?x)",
            SplitLayerNorm {
                t: var("?t"),
                x: var("?x"),
            },
        ),
        rewrite!("layernorm-as-rmsnorm"; "(lnc ?t ?x)" => "(rms ?t (center ?x))"),
        rewrite!("center-through-add"; "(center (add ?x ?y))" => "(add (center ?x) (center ?y))"),
        rewrite!("center-through-bias"; "(center (bias ?x ?v))" => "(bias (center ?x) (vc ?v))"),
        rewrite!("absorb-center-into-weight"; "(center (lin ?x ?m))" => "(lin ?x (cr ?m))"),
        rewrite!("absorb-center-into-embedding"; "(center (gather ?e ?i))" => "(gather (cr ?e) ?i)"),
        rewrite!("center-idempotent"; "(center (center ?x))" => "(center ?x)"),
        rewrite!("center-through-layout"; "(center (lay ?t ?x))" => "(lay ?t (center ?x))"
            if layout_keeps_last("?t")),
    ];
    debug_assert!(rws
        .iter()
        .map(|r| r.name.as_str())
        .eq(RULE_NAMES.iter().copied()));
    rws.into_iter().map(traced).collect()
}

/// The condition of `center-through-layout`: the layout op keeps the last axis whole (a mean over it
/// is then the same before and after).
fn layout_keeps_last(t: &str) -> impl Fn(&mut RotGraph, Id, &Subst) -> bool {
    let t = var(t);
    move |eg, _, s| {
        eg[s[t]].data.num().is_some_and(|t| {
            matches!(
                eg.analysis.template(t),
                Some(Template::Layout { reshape: false, last_in: Some(i), last_out: Some(o) }) if i == o
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use egg::{Extractor, RecExpr, Runner};

    use super::*;
    use crate::rotate::cost::{Online, RotCost};
    use crate::rotate::lang::MatForm;

    /// An e-graph with the leaves and templates the tests use: activations `x y a b` (last axis 8),
    /// weights `w w1 w2` (8x8) and `wn` (8x4), an embedding `e` (16x8), indices `i`, vectors `g v`
    /// (8); template 0 a LayerNorm with scale `g` and shift `v`, 1 a reshape 8 -> 4, 2 a transpose,
    /// 3 a reshape 8 -> 2.
    fn graph() -> RotGraph {
        let mut a = RotAnalysis::default();
        for x in ["x", "y", "a", "b"] {
            a.leaves.insert(x.into(), Kind::Act { last: Some(8) });
        }
        for (w, r, c) in [
            ("w", 8, 8),
            ("w1", 8, 8),
            ("w2", 8, 8),
            ("wn", 8, 4),
            ("e", 16, 8),
        ] {
            let form = MatForm::leaf(w);
            a.leaves.insert(
                w.into(),
                Kind::Mat {
                    rows: r,
                    cols: c,
                    form,
                },
            );
        }
        a.leaves.insert("i".into(), Kind::Other);
        for v in ["g", "v"] {
            a.leaves.insert(v.into(), Kind::Vector { len: 8 });
        }
        a.templates = vec![
            Template::Norm {
                eps: 1e-5,
                affine: Some(("g".into(), "v".into())),
            },
            Template::Layout {
                reshape: true,
                last_in: Some(8),
                last_out: Some(4),
            },
            Template::Layout {
                reshape: false,
                last_in: Some(8),
                last_out: Some(8),
            },
            Template::Layout {
                reshape: true,
                last_in: Some(8),
                last_out: Some(2),
            },
        ];
        RotGraph::new(a)
    }

    /// Runs the rules named `names` (block size 4) on `start`; returns the e-graph, the root class and
    /// the names of the rules that applied.
    fn run(start: &str, names: &[&str]) -> (RotGraph, Id, Vec<&'static str>) {
        let mut eg = graph();
        let root = eg.add_expr(&start.parse::<RecExpr<RotLang>>().unwrap());
        let rules: Vec<_> = rules(Mode::Block(4))
            .into_iter()
            .filter(|r| names.contains(&r.name.as_str()))
            .collect();
        assert_eq!(rules.len(), names.len(), "unknown rule among {names:?}");
        let runner = Runner::default()
            .with_egraph(eg)
            .with_scheduler(egg::SimpleScheduler)
            .with_iter_limit(16)
            .run(&rules);
        let fired = runner
            .iterations
            .iter()
            .flat_map(|it| {
                it.applied
                    .iter()
                    .filter(|(_, &n)| n > 0)
                    .map(|(r, _)| r.as_str())
            })
            .collect();
        (runner.egraph, root, fired)
    }

    /// Asserts that rule `names[0]` fires on `start` (with `names[1..]` helping) and that the cheapest
    /// term of the root's class under policy `needed` is `want`.
    fn extracts(start: &str, names: &[&str], want: &str) {
        let (eg, root, fired) = run(start, names);
        assert!(
            fired.contains(&names[0]),
            "{} did not fire on {start}",
            names[0]
        );
        let ex = Extractor::new(
            &eg,
            RotCost {
                egraph: &eg,
                policy: Online::Needed,
            },
        );
        let (_, best) = ex.find_best(root);
        assert_eq!(best.to_string(), want, "{} on {start}", names[0]);
    }

    /// Asserts that rule `name` fires on `start` and puts `want` into the root's class.
    fn equates(start: &str, name: &str, want: &str) {
        let (eg, root, fired) = run(start, &[name]);
        assert!(fired.contains(&name), "{name} did not fire on {start}");
        let got = eg.lookup_expr(&want.parse().unwrap());
        assert_eq!(
            got.map(|c| eg.find(c)),
            Some(eg.find(root)),
            "{name}: {want} is not equal to {start}"
        );
    }

    #[test]
    fn cancellations() {
        extracts("(rot 4 (rot 4 x))", &["cancel-h-ht"], "x");
        extracts(
            "(lin x (hl 4 (hl 4 w)))",
            &["cancel-h-ht-rows"],
            "(lin x w)",
        );
        extracts(
            "(lin x (hr 4 (hr 4 w)))",
            &["cancel-h-ht-cols"],
            "(lin x w)",
        );
        extracts(
            "(bias x (vh 4 (vh 4 v)))",
            &["cancel-h-ht-vec"],
            "(bias x v)",
        );
    }

    #[test]
    fn insert_and_absorb() {
        // A lone layer: the policy wants its weight rotated, so the online rotation is worth it.
        extracts("(lin x w)", &["insert-h-ht"], "(lin (rot 4 x) (hl 4 w))");
        extracts(
            "(lin (rot 4 x) w)",
            &["absorb-into-weight-rows"],
            "(lin x (hl 4 w))",
        );
        extracts(
            "(rot 4 (lin x w))",
            &["absorb-into-weight-cols"],
            "(lin x (hr 4 w))",
        );
        extracts(
            "(rot 4 (gather e i))",
            &["absorb-into-embedding"],
            "(gather (hr 4 e) i)",
        );
        // Two layers in a row: the rotation between them is absorbed on both sides, the first layer's
        // weight is rotated on its columns and no online rotation is left.
        extracts(
            "(lin (lin x w1) w2)",
            &["insert-h-ht", "absorb-into-weight-cols"],
            "(lin (lin x (hr 4 w1)) (hl 4 w2))",
        );
    }

    #[test]
    fn folds_into_weights() {
        extracts(
            "(lin (scale x g) w)",
            &["fold-scale-into-weight"],
            "(lin x (dl g w))",
        );
        extracts(
            "(lin (bias x v) wn)",
            &["move-bias-past-weight"],
            "(bias (lin x wn) (vm v wn))",
        );
        extracts(
            "(bias (bias x v) g)",
            &["merge-biases"],
            "(bias x (va v g))",
        );
    }

    #[test]
    fn pushes_rotations() {
        let absorb = "absorb-into-weight-cols";
        extracts(
            "(rot 4 (rms 0 (lin y w)))",
            &["rotate-through-rmsnorm", absorb],
            "(rms 0 (lin y (hr 4 w)))",
        );
        extracts(
            "(rot 4 (add (lin a w1) (lin b w2)))",
            &["rotate-through-add", absorb],
            "(add (lin a (hr 4 w1)) (lin b (hr 4 w2)))",
        );
        extracts(
            "(add (rot 4 x) (rot 4 y))",
            &["factor-rotation-out-of-add"],
            "(rot 4 (add x y))",
        );
        extracts(
            "(rot 4 (bias (lin x w) v))",
            &["rotate-through-bias", absorb],
            "(bias (lin x (hr 4 w)) (vh 4 v))",
        );
        extracts(
            "(rot 4 (lay 1 (lin x w)))",
            &["rotate-through-layout", absorb],
            "(lay 1 (lin x (hr 4 w)))",
        );
        extracts(
            "(rot 4 (amm a (lin x w)))",
            &["rotate-through-matmul", absorb],
            "(amm a (lin x (hr 4 w)))",
        );
    }

    #[test]
    fn layout_condition_blocks_invalid_pushes() {
        // A reshape to a last axis of 2 splits blocks of 4: the rotation must stay where it is.
        let (eg, _, fired) = run("(rot 4 (lay 3 x))", &["rotate-through-layout"]);
        assert!(fired.is_empty());
        assert!(eg
            .lookup_expr(&"(lay 3 (rot 4 x))".parse().unwrap())
            .is_none());
    }

    #[test]
    fn layernorm_rules() {
        equates(
            "(ln 0 x)",
            "split-layernorm",
            "(bias (scale (lnc 0 x) g) v)",
        );
        equates("(lnc 0 x)", "layernorm-as-rmsnorm", "(rms 0 (center x))");
        let absorb = "absorb-center-into-weight";
        extracts("(center (lin x w))", &[absorb], "(lin x (cr w))");
        extracts(
            "(center (gather e i))",
            &["absorb-center-into-embedding"],
            "(gather (cr e) i)",
        );
        extracts(
            "(center (add (lin a w1) (lin b w2)))",
            &["center-through-add", absorb],
            "(add (lin a (cr w1)) (lin b (cr w2)))",
        );
        extracts(
            "(center (bias (lin x w) v))",
            &["center-through-bias", absorb],
            "(bias (lin x (cr w)) (vc v))",
        );
        extracts("(center (center x))", &["center-idempotent"], "(center x)");
        extracts(
            "(center (lay 2 (lin x w)))",
            &["center-through-layout", absorb],
            "(lay 2 (lin x (cr w)))",
        );
    }

    #[test]
    fn every_rule_is_tested() {
        let src = include_str!("rules.rs");
        let tests = &src[src.find("mod tests").unwrap()..];
        for name in RULE_NAMES {
            assert!(
                tests.contains(&format!("\"{name}\"")),
                "rule {name} has no test"
            );
        }
    }
}

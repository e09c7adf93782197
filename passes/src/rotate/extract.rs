//! Choosing one term per needed e-class: egg's [`Extractor`] with the cost model, then a correction for
//! sharing.
//!
//! egg's extractor minimizes, class by class, the *tree* cost: a sub-term used twice is paid twice.
//! The IR the pass writes computes each chosen class once, so what it costs is the sum of the chosen
//! nodes' own costs over the classes reachable from the roots (the DAG cost). Starting from the
//! extractor's choice, [`select`] changes one class's node at a time, keeping a change when the DAG cost
//! drops (and the choice stays acyclic), until no single change helps. This matters where a value is
//! needed both rotated and not: an online rotation of a value that is computed anyway is cheaper than
//! computing the rotated value a second time along another path, which a tree cost cannot see.
//!
//! Everything iterates in `Id` order (BTreeMap), so the choice depends only on the e-graph.

use std::collections::{BTreeMap, BTreeSet};

use egg::{Extractor, Id, Language};

use super::cost::{node_cost, Cost, Online, RotCost};
use super::lang::{RotGraph, RotLang};

/// At most this many rounds of single-class changes.
pub const MAX_SWEEPS: usize = 8;

/// The chosen node of every class reachable from the roots.
#[derive(Debug, Default)]
pub struct Selection {
    /// Canonical class -> chosen node (children canonical).
    pub choice: BTreeMap<Id, RotLang>,
    /// Its DAG cost.
    pub cost: Cost,
}

struct Chooser<'a> {
    eg: &'a RotGraph,
    policy: Online,
    best: Extractor<'a, RotCost<'a>, RotLang, super::lang::RotAnalysis>,
    over: BTreeMap<Id, RotLang>,
}

impl Chooser<'_> {
    fn node(&self, c: Id) -> RotLang {
        let c = self.eg.find(c);
        match self.over.get(&c) {
            Some(n) => n.clone(),
            None => self.best.find_best_node(c).clone(),
        }
    }

    /// The classes reachable from `roots` under the current choice (sorted) and their DAG cost; `None`
    /// when the choice is cyclic.
    fn dag(&self, roots: &[Id]) -> Option<(Vec<Id>, Cost)> {
        // 1: on the stack, 2: done.
        let mut state: BTreeMap<Id, u8> = BTreeMap::new();
        let mut cost = Cost::default();
        let mut stack: Vec<(Id, bool)> = roots.iter().map(|&r| (self.eg.find(r), false)).collect();
        while let Some((c, exiting)) = stack.pop() {
            if exiting {
                state.insert(c, 2);
                continue;
            }
            match state.get(&c) {
                Some(2) => continue,
                Some(_) => return None,
                None => {}
            }
            state.insert(c, 1);
            stack.push((c, true));
            let n = self.node(c);
            cost = cost + node_cost(self.eg, &n, self.policy);
            for &k in n.children() {
                let k = self.eg.find(k);
                match state.get(&k) {
                    Some(1) => return None,
                    Some(_) => {}
                    None => stack.push((k, false)),
                }
            }
        }
        Some((state.into_keys().collect(), cost))
    }
}

/// Chooses a node for every class reachable from `roots` (see the module doc).
pub fn select(eg: &RotGraph, policy: Online, roots: &[Id]) -> Selection {
    let mut ch = Chooser {
        eg,
        policy,
        best: Extractor::new(eg, RotCost { egraph: eg, policy }),
        over: BTreeMap::new(),
    };
    let roots: Vec<Id> = roots
        .iter()
        .map(|&r| eg.find(r))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // The extractor's choice is acyclic: each chosen node's children have strictly smaller tree costs
    // (every node costs at least its size of 1).
    let Some((mut reach, mut cur)) = ch.dag(&roots) else {
        return Selection::default();
    };
    for _ in 0..MAX_SWEEPS {
        let mut improved = false;
        for &c in &reach {
            let current = ch.node(c);
            let alternatives: Vec<RotLang> = eg[c]
                .nodes
                .iter()
                .filter(|n| **n != current)
                .cloned()
                .collect();
            for n in alternatives {
                let prev = ch.over.insert(c, n);
                match ch.dag(&roots) {
                    Some((_, cost)) if cost < cur => {
                        cur = cost;
                        improved = true;
                        break;
                    }
                    _ => match prev {
                        Some(p) => {
                            ch.over.insert(c, p);
                        }
                        None => {
                            ch.over.remove(&c);
                        }
                    },
                }
            }
        }
        if !improved {
            break;
        }
        match ch.dag(&roots) {
            Some((r, _)) => reach = r,
            None => break,
        }
    }
    let choice = reach.iter().map(|&c| (c, ch.node(c))).collect();
    Selection { choice, cost: cur }
}

impl Selection {
    /// Adds `c` and the classes it reaches, with egg's tree-cost choice for those not chosen yet.
    pub fn ensure(&mut self, eg: &RotGraph, policy: Online, c: Id) {
        let best = Extractor::new(eg, RotCost { egraph: eg, policy });
        let mut stack = vec![eg.find(c)];
        while let Some(c) = stack.pop() {
            if self.choice.contains_key(&c) {
                continue;
            }
            let n = best.find_best_node(c).clone();
            stack.extend(n.children().iter().map(|&k| eg.find(k)));
            self.choice.insert(c, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use egg::{Extractor, RecExpr};

    use super::*;
    use crate::rotate::lang::{Kind, MatForm, RotAnalysis};
    use crate::rotate::rules::Mode;
    use crate::rotate::saturate;

    /// `x = u V` is returned and also feeds the layer `y = x W`. Both layers want a rotated weight.
    /// `x` gets an online rotation of `u`. Per tree cost, `y` is cheapest with its rotation absorbed into
    /// a second copy of `x` (`(u H)(H V H)`, one more product); per DAG cost, `x` is computed anyway,
    /// so one more online rotation (of `x`) beats computing the product twice.
    #[test]
    fn sharing_prefers_an_online_rotation_of_a_value_computed_anyway() {
        let mut a = RotAnalysis::default();
        a.leaves.insert("u".into(), Kind::Act { last: Some(8) });
        for w in ["v", "w"] {
            let form = MatForm::leaf(w);
            a.leaves.insert(
                w.into(),
                Kind::Mat {
                    rows: 8,
                    cols: 8,
                    form,
                },
            );
        }
        let mut eg = RotGraph::new(a);
        let x = eg.add_expr(&"(lin u v)".parse::<RecExpr<RotLang>>().unwrap());
        let y = eg.add_expr(&"(lin (lin u v) w)".parse::<RecExpr<RotLang>>().unwrap());
        let eg = saturate(eg, Mode::Hadamard);
        let policy = Online::Needed;
        let tree = Extractor::new(
            &eg,
            RotCost {
                egraph: &eg,
                policy,
            },
        );
        let (x_tree, y_tree) = (
            tree.find_best(x).1.to_string(),
            tree.find_best(y).1.to_string(),
        );
        assert_eq!(x_tree, "(lin (rot 8 u) (hl 8 v))");
        assert!(!y_tree.contains(&format!("(rot 8 {x_tree})")), "{y_tree}");
        let sel = select(&eg, policy, &[x, y]);
        let best = |c: Id| {
            sel.choice[&eg.find(c)]
                .build_recexpr(|k| sel.choice[&eg.find(k)].clone())
                .to_string()
        };
        assert_eq!(best(x), x_tree);
        assert_eq!(best(y), format!("(lin (rot 8 {x_tree}) (hl 8 w))"));
        // Counted once each: two products of 2 x 8 x 8 and two rotations of 8 x log2 8 flops.
        assert_eq!(sel.cost.flops, 2.0 * 128.0 + 2.0 * 24.0);
    }
}

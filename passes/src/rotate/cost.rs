//! The cost model of the `rotate` pass.
//!
//! A cost is a tuple compared lexicographically, field by field:
//! 1. `forbidden`: online rotations where the policy allows none (`online=never`);
//! 2. `unrotated`: linear layers whose weight does not carry the rotation the policy asks for
//!    (`needed` and `never`: neither its rows nor its columns rotated; `inputs`: its rows not rotated);
//! 3. `flops`: run-time floating-point operations per row of the activations (every tensor of a
//!    transformer block has the same number of rows, batch x sequence): a layer `2 K N`, an online
//!    rotation `n log2 B` (the fast Walsh-Hadamard butterfly on each block), an RMSNorm `4 n`, a centering
//!    `2 n`, a LayerNorm the sum of those and its scale and shift, an add or a scale `n`, attention's `probs @ V` `2 n` times the known inner length. Constants cost nothing:
//!    rewriting a weight happens once, at compile time;
//! 4. `output_side`: layers whose weight is rotated on its columns only (ties go to rotating the input
//!    side, the reduction axis along which quantization groups run);
//! 5. `size`: the number of e-nodes, so that of equal alternatives the simplest term wins.
//!
//! The policy is the pass's `online` option; [`node_cost`] is the cost of one e-node on its own, and
//! [`RotCost`] adds its children's for egg's [`egg::Extractor`] (a tree cost: a shared sub-term counts
//! once per use; the selection in `extract.rs` then corrects for sharing by costing the DAG).

use egg::{CostFunction, Id, Language};

use super::lang::{Kind, RotGraph, RotLang};

/// Which layers must get a rotated weight, and whether online rotations may be inserted for that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Online {
    /// Every layer that can should have a rotated weight on one side at least; online rotations are
    /// inserted only where no absorbed one reaches the layer.
    Needed,
    /// Every layer that can should have its input side (rows) rotated (QuaRot's full scheme: online
    /// rotations in front of the layers whose input no absorbed rotation reaches).
    Inputs,
    /// No online rotations at all: only rotations absorbed into weights on both ends.
    Never,
}

/// A cost (see the module doc; fields compare in order).
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Cost {
    /// Online rotations the policy forbids.
    pub forbidden: u32,
    /// Layers without the rotation the policy asks for.
    pub unrotated: u32,
    /// Run-time flops per row.
    pub flops: f64,
    /// Layers rotated on their output side only.
    pub output_side: u32,
    /// E-nodes.
    pub size: u32,
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            forbidden: self.forbidden + o.forbidden,
            unrotated: self.unrotated + o.unrotated,
            flops: self.flops + o.flops,
            output_side: self.output_side + o.output_side,
            size: self.size + o.size,
        }
    }
}

/// The cost of `node` alone (without its children) in `eg` under `policy`.
pub fn node_cost(eg: &RotGraph, node: &RotLang, policy: Online) -> Cost {
    let data = |id: Id| &eg[id].data;
    // The last-axis length of an activation class (1 when unknown: it is the same in every alternative).
    let n = |id: Id| data(id).last().unwrap_or(1) as f64;
    let mut c = Cost {
        size: 1,
        ..Cost::default()
    };
    match node {
        RotLang::Lin([_, m]) => {
            if let Kind::Mat { rows, cols, form } = data(*m) {
                c.flops = 2.0 * *rows as f64 * *cols as f64;
                let (inp, out) = (form.input_rotated(), form.output_rotated());
                let missing = match policy {
                    Online::Needed | Online::Never => !inp && !out,
                    Online::Inputs => !inp,
                };
                c.unrotated = missing as u32;
                c.output_side = (!inp && out) as u32;
            }
        }
        RotLang::Rotate([b, x]) => {
            let b = data(*b).num().unwrap_or(2).max(2) as f64;
            c.flops = n(*x) * b.log2();
            c.forbidden = (policy == Online::Never) as u32;
        }
        RotLang::Rms([_, x]) => c.flops = 4.0 * n(*x),
        // A LayerNorm core is an RMSNorm of a centered input, a whole LayerNorm that plus a scale and a
        // shift: the fused forms cost what their parts do (and win ties by size).
        RotLang::Lnc([_, x]) => c.flops = 6.0 * n(*x),
        RotLang::Ln([_, x]) => c.flops = 8.0 * n(*x),
        RotLang::Scale([x, _]) | RotLang::Bias([x, _]) => c.flops = n(*x),
        RotLang::Add([a, _]) => c.flops = n(*a),
        RotLang::Center(x) => c.flops = 2.0 * n(*x),
        RotLang::Amm([a, v]) => c.flops = 2.0 * n(*v) * n(*a),
        RotLang::Gather(_)
        | RotLang::Lay(_)
        | RotLang::HadL(_)
        | RotLang::HadR(_)
        | RotLang::DiagL(_)
        | RotLang::CenterR(_)
        | RotLang::VecHad(_)
        | RotLang::VecCenter(_)
        | RotLang::VecMat(_)
        | RotLang::VecAdd(_)
        | RotLang::Num(_)
        | RotLang::Leaf(_) => {}
    }
    c
}

/// The tree cost for egg's extractor: [`node_cost`] plus the children's costs.
pub struct RotCost<'a> {
    /// The e-graph whose analysis data the costs read.
    pub egraph: &'a RotGraph,
    /// The pass's `online` policy.
    pub policy: Online,
}

impl CostFunction<RotLang> for RotCost<'_> {
    type Cost = Cost;

    fn cost<C>(&mut self, enode: &RotLang, mut costs: C) -> Cost
    where
        C: FnMut(Id) -> Cost,
    {
        let own = node_cost(self.egraph, enode, self.policy);
        enode.fold(own, |acc, id| acc + costs(id))
    }
}

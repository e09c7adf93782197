//! `rotate{mode=hadamard|block:N,online=needed|inputs|never}`: Walsh-Hadamard rotations (QuaRot,
//! SpinQuant, MR-GPTQ) found by equality saturation and folded into the weights wherever possible.
//!
//! # What it does
//! A linear layer `y = x W` equals `(x H)(H^T W)` for any orthonormal `H`. With `H` a (block)
//! Walsh-Hadamard matrix, `H^T W` has the outliers of `W`'s rows spread over whole blocks, which is what
//! 4-bit formats with groups along the reduction axis want. The rotation `x H` in front of the layer is
//! either *absorbed*, computed for free by the weights that produce `x` (`(u V) H = u (V H)`), pushed
//! there through the ops in between (RMSNorm, residual adds, biases, per-head reshapes, attention's
//! `probs @ V`, embeddings), or left *online*, as a `quant.hadamard` op that costs `n log2 B` flops per
//! row. The pass states this as an e-graph problem:
//! - the language ([`lang`]) covers the linear-algebra fragment of a function (layers with constant
//!   weights, rotations, norms, adds, biases, scales, layout ops, embeddings; everything else is an
//!   opaque leaf); [`front`] says which IR ops become which terms;
//! - the rules ([`rules`], each named) insert `I = H H^T` in front of layer weights, cancel `H H^T`,
//!   absorb rotations into adjacent weights, push them through RMSNorm (after its scale is folded into
//!   the next weights), residual adds, biases and layout ops, and turn a LayerNorm into an RMSNorm of
//!   a mean-free input where the mean subtraction can be absorbed into the weights that write it;
//! - the cost model ([`cost`]) makes constant rewrites free and charges online rotations and dense
//!   products their flops, after the policy's demand that layers get rotated weights;
//! - the choice ([`extract`]): egg's extractor, then a correction for shared sub-terms;
//! - back to IR ([`emit`]): rotated weights become new constants (`NAME.rot` resources), remaining
//!   online rotations `quant.hadamard {block = B}` ops; every op created or changed carries
//!   `rotate.rules = [...]`, the rules that produced it.
//!
//! # Options
//! - `mode` (default `hadamard`): `hadamard` rotates an axis of length `n` by one `H_n` (`n` a power of
//!   two); `block:N` by the block-diagonal `H_{n,N}` (`N` a power of two, `n` a multiple of `N`), which
//!   keeps each rotation inside a quantization group of `N` and lets rotations pass per-head reshapes
//!   when `N` divides the head size. Axes of other lengths are left alone, silently: their layers keep
//!   their weights.
//! - `online` (default `needed`): `needed` asks every layer for a rotated weight on one side at least
//!   and inserts an online rotation only where no absorbed one reaches it (a lone layer; the stream
//!   start when it is a function argument); `inputs` asks every layer for a rotated input side (rows),
//!   with online rotations where needed (QuaRot's full scheme: in front of the MLP's down projection and,
//!   in `hadamard` mode, attention's output projection); `never` allows no online rotation: only
//!   rotations absorbed at both ends remain.
//!
//! # What becomes of common patterns (with `online=needed`)
//! - A lone layer: an online rotation of its input, rows of its weight rotated.
//! - Layers with only linear ops between them: the rotation is absorbed into both weights.
//! - Llama (RMSNorm, residual stream starting at an embedding): every rotation is absorbed: the norm
//!   scales fold into q/k/v/gate/up/lm_head, whose rows are rotated; the embedding's and the o/down
//!   projections' columns are rotated. With `online=inputs`, online rotations stand in front of the down
//!   projections, and in front of the output projections unless `block:N` with `N` dividing the head
//!   size lets the rotation reach the value projection's columns.
//! - Pre-norm LayerNorm models: the stream's writers absorb the mean subtraction, the LayerNorms become
//!   RMSNorms, and the rotations are absorbed as in Llama.
//! - BERT (post-norm): layers behind a LayerNorm or a GELU get online rotations; the embedding
//!   LayerNorm becomes an RMSNorm of mean-free (centered) embedding tables.
//!
//! # Contract (what the tests measure)
//! - The function is unchanged up to rounding: on seeded inputs the interpreter's outputs before and
//!   after the pass agree to a relative error below 1e-4 in f32 (passes/tests/rotate.rs: single layers,
//!   chains, RMSNorm- and LayerNorm-fed blocks, and the BERT and Llama models imported from ONNX;
//!   measured at most 8e-7).
//! - Weights with a rotation in front (absorbed or online) quantize better: on heavy-tailed weights
//!   (Student-t with 3 degrees of freedom, Gaussian with outliers) the weight QSNR after int4_g128 and
//!   mxfp4 quantization is higher for the rotated weight than for the original (measured on a
//!   256 x 128 Student-t weight: int4_g128 12.4 -> 19.1 dB, mxfp4 16.8 -> 18.7 dB with `hadamard`).
//! - The output is deterministic: the e-graph is built in op order, rules run with egg's simple
//!   scheduler under iteration and node limits (no time limit), and every choice iterates in `Id` order.
//!
//! What stays as it was: layers whose weight is not a 2-D float `qc.constant` with its bytes present
//! (`nn.gemm` and convolutions are not rewritten); layers reading axes the mode does not support. A
//! constant with non-finite values that a rotation would touch is a diagnostic at that constant.
//! Each transform of a weight (rotation, scale, centering) runs in f64 and rounds to f32; the result
//! is stored in the weight's own element type (f16 and bf16 weights are rounded once more).

pub mod cost;
pub mod emit;
pub mod extract;
pub mod front;
pub mod lang;
pub mod rules;

use std::time::Duration;

use egg::{Id, Runner, SimpleScheduler};
use qc_ir::module::Module;
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOption, PassOptions};
use qc_ir::Diagnostic;
use qc_nn::NnOp;

pub use cost::Online;
pub use rules::Mode;

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "rotate",
    summary: "Walsh-Hadamard rotations of layer inputs, absorbed into weights where possible (e-graph)",
    options: &[
        PassOption {
            name: "mode",
            help: "hadamard (one H over each axis) or block:N (block-diagonal, N a power of two) (default hadamard)",
        },
        PassOption {
            name: "online",
            help: "needed (online rotations only where a layer gets no absorbed one), inputs (every layer's input side rotated) or never (default needed)",
        },
    ],
    build,
};

fn build(o: &PassOptions) -> Result<Box<dyn Pass>, String> {
    let mode = match o.get("mode").unwrap_or("hadamard") {
        "hadamard" => Mode::Hadamard,
        m => match m.strip_prefix("block:").map(str::parse::<u64>) {
            Some(Ok(n)) if n >= 2 && n.is_power_of_two() => Mode::Block(n),
            _ => {
                return Err(format!(
                "option 'mode' must be hadamard or block:N with N a power of two >= 2, not '{m}'"
            ))
            }
        },
    };
    let online = match o.get("online").unwrap_or("needed") {
        "needed" => Online::Needed,
        "inputs" => Online::Inputs,
        "never" => Online::Never,
        x => {
            return Err(format!(
                "option 'online' must be needed, inputs or never, not '{x}'"
            ))
        }
    };
    Ok(Box::new(Rotate { mode, online }))
}

/// E-graph iterations (a model's rotations saturate in about as many as the longest chain of ops a
/// rotation is pushed through, a few per transformer block).
pub const ITER_LIMIT: usize = 256;
/// E-nodes.
pub const NODE_LIMIT: usize = 1_000_000;

/// The pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotate {
    /// The rotation kind.
    pub mode: Mode,
    /// Where online rotations may go.
    pub online: Online,
}

/// Runs the rules on `eg` to saturation (or the limits).
pub fn saturate(eg: lang::RotGraph, mode: Mode) -> lang::RotGraph {
    let rules = rules::rules(mode);
    Runner::default()
        .with_egraph(eg)
        .with_scheduler(SimpleScheduler)
        .with_iter_limit(ITER_LIMIT)
        .with_node_limit(NODE_LIMIT)
        .with_time_limit(Duration::from_secs(u32::MAX as u64))
        .run(&rules)
        .egraph
}

/// The classes of the fragment values that ops outside the fragment (other than shape readers) and
/// the function's results read.
fn roots(m: &Module, fi: usize, fr: &front::Front) -> Vec<Id> {
    let f = &m.funcs[fi];
    let mut out = Vec::new();
    for (i, op) in f.ops.iter().enumerate() {
        if fr.owned_ops.contains(&i) || matches!(NnOp::of(op), Some(NnOp::Shape) | Some(NnOp::Size))
        {
            continue;
        }
        out.extend(
            op.operands
                .iter()
                .filter(|v| fr.owned_values.contains(v))
                .filter_map(|v| fr.class_of.get(v).copied()),
        );
    }
    out.extend(
        f.ret
            .iter()
            .filter(|v| fr.owned_values.contains(v))
            .filter_map(|v| fr.class_of.get(v).copied()),
    );
    out
}

impl Pass for Rotate {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, cx: &PassContext) -> Result<Changed, Diagnostic> {
        let mut changed = false;
        for fi in 0..m.funcs.len() {
            let (fr, eg) = front::build(m, fi);
            let roots = roots(m, fi, &fr);
            if !fr.groups.is_empty() && !roots.is_empty() {
                let eg = saturate(eg, self.mode);
                let mut sel = extract::select(&eg, self.online, &roots);
                let input = emit::Input {
                    front: &fr,
                    eg: &eg,
                    mode: self.mode,
                    policy: self.online,
                    progress: cx.progress,
                    weights: fr.leaf_value.keys().filter(|k| k.starts_with('w')).count(),
                };
                changed |= emit::emit(m, fi, input, &mut sel)?;
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

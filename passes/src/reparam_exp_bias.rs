//! `reparam-exp-bias`: LLM-FP4's pre-shifted exponent bias (Liu et al. 2023, arXiv 2310.16836), i.e.
//! per-channel power-of-two activation scales moved into the weights.
//!
//! # Rewrite
//! For every activation `X` read by `nn.matmul` / `nn.gemm` linear layers with constant weights (the
//! layers reading the same value form one group and share the scales), with `a_j` the largest
//! `calib.ch_amax[j]` of the group's layers and `c` the median of the nonzero `a_j` (the lower median
//! for an even count):
//! ```text
//! e_j = round(log2(a_j / c)),   s_j = 2^e_j   (e_j = 0 where a_j = 0)
//! X W = (X diag(2^-e)) (diag(2^e) W)
//! ```
//! Row `j` of each `[K, N]` weight is multiplied by `2^e_j`, which for a floating-point weight only
//! shifts the exponent of that row: the per-channel exponent bias of the activation moves into the
//! weights at no run-time cost. `X diag(2^-e)` is folded into the producer of `X` exactly as `smooth`
//! does ([`crate::fold::rescale_group`]: a LayerNorm's scale and bias, an `nn.mul` constant such as an
//! RMSNorm's gamma, the output columns and bias of a preceding linear layer), else an explicit
//! `nn.mul %x, 2^-e` is inserted (one elementwise multiply, itself exact). Groups whose exponents are all
//! zero are left untouched.
//!
//! Why the median: every channel ends within a factor sqrt(2) of `c` whatever `c` is; the median keeps
//! the weight rows of the typical channels unchanged (`e_j = 0` for channels within sqrt(2) of it), so
//! only the outlier channels move their range into the weights.
//!
//! The calibration statistics of the rescaled layers are rewritten as `smooth` does (channel amax times
//! `2^-e`, amax recomputed, `X^T X` scaled on both sides, exactly; the histogram is dropped). Every
//! layer needs statistics: one without them is a diagnostic at the layer (run `calibrate` first).
//! Convolutions are left alone.
//!
//! # Contract (what the tests measure, passes/tests/reparam_exp_bias.rs)
//! - Exact: a multiplication by a power of two is exact in binary floating point (barring overflow and
//!   subnormal results, which the tests' values avoid), so the rewritten function's outputs equal the
//!   original's bit for bit on seeded inputs, for the fold into an `nn.mul`, into a LayerNorm, into a
//!   preceding linear layer, and for the explicit multiply.
//! - Afterwards each channel's activation amax (measured on what the rewritten module computes, and as
//!   recorded in the rewritten statistics, which agree exactly) lies within a factor sqrt(2) of `c`, so
//!   one per-tensor scale fits all channels. Per-tensor FP4 (e2m1) activation QSNR rises by several dB
//!   on activations with 20x outlier channels, and the layer output error falls. Per-tensor FP8 (e4m3)
//!   already holds 20x outliers within its dynamic range and only moves by noise there (within 1 dB);
//!   it gains where outliers push the ordinary channels into its subnormals (10^5x: the ordinary
//!   channels' QSNR rises from about 14 to 32 dB).

use qc_ir::module::Module;
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOptions};
use qc_ir::Diagnostic;

use crate::fold::{activations, channel_linears, check_layers, group_amax, rescale_group};

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "reparam-exp-bias",
    summary: "LLM-FP4 exponent-bias reparameterization: power-of-two activation channel scales moved into the weights (needs calibration statistics)",
    options: &[],
    build,
};

fn build(_: &PassOptions) -> Result<Box<dyn Pass>, String> {
    Ok(Box::new(ReparamExpBias))
}

/// The pass.
pub struct ReparamExpBias;

/// The reference amax `c`: the (lower) median of the nonzero finite channel amax; `None` when there is none.
pub fn center(ch_amax: &[f32]) -> Option<f64> {
    let mut v: Vec<f64> = ch_amax
        .iter()
        .map(|&a| a as f64)
        .filter(|&a| a > 0.0 && a.is_finite())
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() - 1) / 2])
}

/// The exponents `e_j = round(log2(a_j / c))` (0 for a zero or non-finite channel amax).
pub fn exponents(ch_amax: &[f32], c: f64) -> Vec<i32> {
    ch_amax
        .iter()
        .map(|&a| {
            let a = a as f64;
            if a > 0.0 && a.is_finite() {
                (a / c).log2().round().clamp(-126.0, 126.0) as i32
            } else {
                0
            }
        })
        .collect()
}

impl Pass for ReparamExpBias {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, cx: &PassContext) -> Result<Changed, Diagnostic> {
        let mut changed = false;
        for fi in 0..m.funcs.len() {
            check_layers(m, fi, INFO.name)?;
            let xs = activations(&channel_linears(m, fi));
            for (gi, &x) in xs.iter().enumerate() {
                let (xa, _) = group_amax(m, fi, x);
                let f = &m.funcs[fi];
                let (loc, name) = channel_linears(m, fi)
                    .into_iter()
                    .find(|l| l.x == x)
                    .map(|l| (f.ops[l.op].loc.clone(), l.name))
                    .unwrap_or_default();
                let e = center(&xa).map(|c| exponents(&xa, c)).unwrap_or_default();
                if e.iter().any(|&v| v != 0) {
                    let s: Vec<f64> = e.iter().map(|&v| 2f64.powi(v)).collect();
                    rescale_group(m, fi, x, &s, "exp_bias").map_err(|err| {
                        Diagnostic::error(loc, format!("{}: layer '{name}': {err}", INFO.name))
                    })?;
                    changed = true;
                }
                cx.progress.step(INFO.name, gi + 1, xs.len(), &name);
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

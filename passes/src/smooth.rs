//! `smooth{alpha=0.5}`: SmoothQuant (Xiao et al. 2022), migrating activation outliers into the weights.
//!
//! # Rewrite
//! For every activation `X` read by `nn.matmul` / `nn.gemm` linear layers with constant weights (all the
//! layers reading the same value form one group and share one scale), per input channel `j`:
//! ```text
//! s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
//! ```
//! with `max|X_j|` the largest `calib.ch_amax[j]` of the group's layers and `max|W_j|` the largest
//! magnitude in row `j` of any of the group's `[K, N]` weights. A channel where either is zero keeps
//! `s_j = 1`; `s_j` is clamped to `[1e-5, 1e5]`. Then `W' = diag(s) W` and `X' = X diag(1/s)`, folded
//! into the producer of `X` by [`crate::fold::rescale_group`]: into a LayerNorm's scale and bias, an
//! RMSNorm's (or any `nn.mul`'s) constant, or the output columns and bias of a preceding linear layer,
//! when every use of `X` is a layer of the group; otherwise an explicit `nn.mul %x, 1/s` is inserted
//! before the layers. That costs one elementwise multiply per activation, and is what makes BERT's
//! post-LN blocks work: their LayerNorm output also feeds the residual connection, which must keep `X`.
//!
//! The calibration statistics of each smoothed layer are rescaled to describe `X'` (channel amax divided
//! by `s`, amax recomputed, `X^T X` as `diag(1/s) X^T X diag(1/s)`; the histogram is dropped), so a
//! following activation-quantizing pass sees the smoothed activations.
//!
//! Every layer needs calibration statistics: one without them is a diagnostic at the layer, naming it
//! (run `calibrate` first); so is one whose statistics do not match its channel count or whose weight
//! bytes were elided. Convolutions are left alone (their channel axis is not the last one).
//!
//! # Contract (what the tests measure, passes/tests/smooth.rs)
//! - The function is unchanged up to f32 rounding: outputs on seeded inputs agree with the original to
//!   1e-5 relative (Frobenius).
//! - The per-channel activation amax spread shrinks: per group, max/min of the channel amax and the
//!   per-tensor amax over the mean channel amax both fall, measured on the activations the smoothed
//!   module actually computes; and the rewritten statistics equal those measured.
//! - On activations with outlier channels, int8 per-tensor activation quantization loses less: the layer
//!   output error of `Q(X') W'` against `X W` is smaller than that of `Q(X) W`.

use qc_ir::module::Module;
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOption, PassOptions};
use qc_ir::Diagnostic;

use crate::fold::{activations, channel_linears, check_layers, group_amax, rescale_group};

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "smooth",
    summary:
        "SmoothQuant: move activation outliers into the weights (needs calibration statistics)",
    options: &[PassOption {
        name: "alpha",
        help: "migration strength in [0, 1]: s = amax_x^alpha / amax_w^(1-alpha) (default 0.5)",
    }],
    build,
};

fn build(o: &PassOptions) -> Result<Box<dyn Pass>, String> {
    let alpha: f64 = o.parse_or("alpha", 0.5)?;
    if !(0.0..=1.0).contains(&alpha) {
        return Err(format!(
            "option 'alpha' must lie between 0 and 1, not {alpha}"
        ));
    }
    Ok(Box::new(Smooth { alpha }))
}

/// The pass.
pub struct Smooth {
    /// Migration strength.
    pub alpha: f64,
}

/// The bounds of a smoothing factor.
const S_MIN: f64 = 1e-5;
const S_MAX: f64 = 1e5;

/// The SmoothQuant factors of one group from its activation channel amax and weight row amax.
pub fn smooth_factors(x_amax: &[f32], w_amax: &[f32], alpha: f64) -> Vec<f64> {
    x_amax
        .iter()
        .zip(w_amax)
        .map(|(&a, &w)| {
            let (a, w) = (a as f64, w as f64);
            if !(a > 0.0 && w > 0.0 && a.is_finite() && w.is_finite()) {
                return 1.0;
            }
            (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(S_MIN, S_MAX)
        })
        .collect()
}

impl Pass for Smooth {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, cx: &PassContext) -> Result<Changed, Diagnostic> {
        let mut changed = false;
        for fi in 0..m.funcs.len() {
            check_layers(m, fi, INFO.name)?;
            let xs = activations(&channel_linears(m, fi));
            for (gi, &x) in xs.iter().enumerate() {
                let (xa, wa) = group_amax(m, fi, x);
                let s = smooth_factors(&xa, &wa, self.alpha);
                let f = &m.funcs[fi];
                let first = channel_linears(m, fi).into_iter().find(|l| l.x == x);
                let (loc, name) = first
                    .map(|l| (f.ops[l.op].loc.clone(), l.name))
                    .unwrap_or_default();
                if s.iter().all(|&v| v == 1.0) {
                    cx.progress.step(INFO.name, gi + 1, xs.len(), &name);
                    continue;
                }
                rescale_group(m, fi, x, &s, "smooth")
                    .map_err(|e| Diagnostic::error(loc, format!("smooth: layer '{name}': {e}")))?;
                changed = true;
                cx.progress.step(INFO.name, gi + 1, xs.len(), &name);
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

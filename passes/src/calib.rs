//! Calibration statistics, stored in the IR as discardable (dotted) attributes on linear layers.
//!
//! The `calibrate` pass ([`crate::calibrate`]) measures the activation operand `x` of every linear layer
//! (see [`crate::weights::linears`]) on calibration inputs and records, on the layer op:
//!
//! | attribute        | value                                                                         |
//! |------------------|-------------------------------------------------------------------------------|
//! | `calib.rows`     | `Int`: the number of activation rows seen (product of all dims but the channel, summed over runs) |
//! | `calib.amax`     | `Float`: max \|x\| over everything seen (an f32 value)                          |
//! | `calib.ch_amax`  | `dense<...> : f32 [C]`: max \|x\| per input channel (`C = K`, the last axis, for matmul / gemm; the channel axis 1 for conv) |
//! | `calib.hist`     | `dense_resource<R>`: [`HIST_BINS`] little-endian u64 counts of \|x\| over `[0, calib.amax]`: bin `b` holds `b*amax/BINS <= |x| < (b+1)*amax/BINS` in exact arithmetic, the last bin also `|x| >= amax`; with `amax = 0` everything is in bin 0. Every element seen is counted once, so the counts sum to `rows * C` |
//! | `calib.xtx`      | `dense_resource<R>`: `K x K` little-endian f32, `sum over rows of x^T x` (not divided by rows), accumulated in f64 and rounded to f32 once; matmul / gemm only |
//!
//! Passes that need data (activation quantization, GPTQ, SmoothQuant, LLM-FP4's exponent biases, LoRC with
//! activations) read them with [`read`]; when a layer has none they refuse with a message that names
//! the layer and says to run `calibrate` first. The attributes survive printing and parsing, so a
//! calibrated module can be saved and quantized later.

use std::sync::Arc;

use qc_ir::attr::{Attribute, F64Bits};
use qc_ir::module::{Module, Op};
use qc_ir::resource::Blob;

/// Attribute names.
pub const ROWS: &str = "calib.rows";
/// See the module doc.
pub const AMAX: &str = "calib.amax";
/// See the module doc.
pub const CH_AMAX: &str = "calib.ch_amax";
/// See the module doc.
pub const HIST: &str = "calib.hist";
/// See the module doc.
pub const XTX: &str = "calib.xtx";

/// Number of histogram bins.
pub const HIST_BINS: usize = 2048;

/// The statistics of one layer's activation operand.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerStats {
    /// Rows seen.
    pub rows: u64,
    /// Max |x|.
    pub amax: f32,
    /// Max |x| per input channel.
    pub ch_amax: Vec<f32>,
    /// |x| histogram over `[0, amax]`, [`HIST_BINS`] bins.
    pub hist: Option<Vec<u64>>,
    /// `sum x^T x`, `K x K` row-major (matmul / gemm only).
    pub xtx: Option<Vec<f32>>,
}

impl LayerStats {
    /// The per-channel amax widened to `c` channels: the text form stores equal values as a one-value
    /// splat (`dense<v>`), which [`read`] returns as a one-element list.
    pub fn ch_amax_for(&self, c: usize) -> Vec<f32> {
        if self.ch_amax.len() == 1 && c != 1 {
            vec![self.ch_amax[0]; c]
        } else {
            self.ch_amax.clone()
        }
    }

    /// The mean second-moment matrix `X^T X / rows` (the GPTQ Hessian up to a factor 2), if recorded.
    pub fn hessian(&self) -> Option<Vec<f32>> {
        let r = self.rows.max(1) as f64;
        self.xtx
            .as_ref()
            .map(|v| v.iter().map(|&x| (x as f64 / r) as f32).collect())
    }
}

/// The statistics recorded on `op`, or `None` when it was not calibrated. Resource bytes that are
/// missing or of the wrong length read as absent (`hist` / `xtx` = `None`).
pub fn read(m: &Module, op: &Op) -> Option<LayerStats> {
    let rows = op.attr(ROWS)?.as_int()? as u64;
    let amax = op.attr(AMAX)?.as_f64()? as f32;
    let ch_amax = match op.attr(CH_AMAX)? {
        Attribute::Dense(d) => (0..d.len()).map(|i| d.get_f64(i) as f32).collect(),
        _ => return None,
    };
    let bytes = |name: &str| -> Option<Vec<u8>> {
        match op.attr(name)? {
            Attribute::DenseResource(r) => m.resources.get(r)?.bytes().map(|b| b.to_vec()),
            _ => None,
        }
    };
    let hist = bytes(HIST).filter(|b| b.len() == HIST_BINS * 8).map(|b| {
        b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    });
    let xtx = bytes(XTX)
        .filter(|b| b.len() % 4 == 0)
        .map(|b| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<f32>>()
        })
        .filter(|v| {
            let k = (v.len() as f64).sqrt() as usize;
            k * k == v.len() && !v.is_empty()
        });
    Some(LayerStats {
        rows,
        amax,
        ch_amax,
        hist,
        xtx,
    })
}

/// Records `s` on op `oi` of function `fi`; resources are named `calib.LAYER.hist` / `calib.LAYER.xtx`
/// (replaced when present).
pub fn write(m: &mut Module, fi: usize, oi: usize, layer: &str, s: &LayerStats) {
    let set_res = |m: &mut Module, key: &str, suffix: &str, bytes: Vec<u8>| {
        let name = format!("calib.{layer}.{suffix}");
        m.resources.insert(
            name.clone(),
            Blob::Owned {
                data: Arc::from(bytes),
                align: 16,
            },
        );
        m.funcs[fi].ops[oi]
            .attrs
            .set(key, Attribute::DenseResource(name));
    };
    if let Some(h) = &s.hist {
        set_res(
            m,
            HIST,
            "hist",
            h.iter().flat_map(|c| c.to_le_bytes()).collect(),
        );
    }
    if let Some(x) = &s.xtx {
        set_res(
            m,
            XTX,
            "xtx",
            x.iter().flat_map(|c| c.to_le_bytes()).collect(),
        );
    }
    let a = &mut m.funcs[fi].ops[oi].attrs;
    a.set(ROWS, Attribute::Int(s.rows as i64));
    a.set(AMAX, Attribute::Float(F64Bits(s.amax as f64)));
    a.set(
        CH_AMAX,
        Attribute::Dense(crate::weights::dense_f32(&s.ch_amax)),
    );
}

/// The diagnostic text for a pass that needs statistics on a layer that has none.
pub fn missing(pass: &str, layer: &str) -> String {
    format!(
        "{pass}: layer '{layer}' has no calibration statistics; run the calibrate pass first \
         (qc compile --calib DATA, or calibrate{{data=PATH}} at the head of the pipeline)"
    )
}

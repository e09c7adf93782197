//! `quantize{w=FMT,a=FMT,clip=none|mse,fp_search=BOOL,keep_float=PATTERN}`: round-to-nearest quantization
//! of the constant weights of linear layers (matmul, gemm, conv), with a per-group clip-ratio search, an
//! optional LLM-FP4 search of the minifloat's exponent/mantissa split, and optional static activation
//! quantization from calibration statistics.
//!
//! # Rewrite
//! The layers are those of [`crate::weights::linears`]: `nn.matmul` / `nn.gemm` (`trans_a = 0`)
//! with a 2-D float constant weight, `nn.conv` with a float constant weight `[N, C/group, k...]`. Every
//! weight is quantized as an `[N, K]` tensor, so that groups run along `K`, the reduction axis (for a
//! conv, `K = C/group * prod(k)`: one output channel's whole reduction):
//! ```text
//! matmul: %wq = qc.constant {value = dense_resource<NAME.q>} : () -> tensor<NxKx!quant.FMT>
//!         %y  = quant.matmul %x, %wq {transpose_b} : (...) -> <the original result type>
//! gemm:   %wq = qc.constant ... ; %w_dq = quant.dequantize %wq : -> tensor<NxKxf32>
//!         %y  = nn.gemm %x, %w_dq, %c {trans_b = 1, <alpha, beta as before>}
//! conv:   %wq = qc.constant ... ; %w_dq_nk = quant.dequantize %wq : -> tensor<NxKxf32>
//!         %w_dq = nn.reshape %w_dq_nk, %w_shape : -> tensor<Nx(C/group)xk...xf32>
//!         %y  = nn.conv %x, %w_dq, %bias {...}
//! ```
//! (the dequantized weight has the weight's own float type). `NAME` is the weight's resource name (or
//! the weight value's name for a literal), made unique with a numeric suffix when taken; the resource
//! bytes are [`qc_quant::blob::to_blob`] of the quantized tensor. A weight shared by several layers is
//! quantized once. The float constants left without uses are removed, and so are their resources when
//! no op refers to them any more. Discardable (`calib.*`) attributes move to the `quant.matmul`.
//!
//! With `a=FMT` every rewritten layer also quantizes its activation, explicitly:
//! ```text
//! %x_q = quant.quantize %x {amax = A} : (tensor<...xf32>) -> tensor<...x!quant.AFMT>
//! matmul:      %y = quant.matmul %x_q, %wq {transpose_b}
//! gemm, conv:  %x_dq = quant.dequantize %x_q ; the layer reads %x_dq (QDQ)
//! ```
//! A `quant.matmul` whose weight an earlier pass already quantized (`gptq`, `lorc`;
//! [`crate::weights::quantized_matmuls`]) and whose activation is still float gets the same
//! `quant.quantize` in front of it, so `gptq{...},calibrate{...},quantize{w=F,a=AF}` quantizes
//! activations after GPTQ.
//! `A` is the layer's calibrated `calib.amax` ([`crate::calib`]): a per-tensor format takes its scale
//! from it and a two-level format (nvfp4) its tensor scale, values beyond saturating per the format's
//! saturation; formats with only block scales compute them from the data at run time, and their
//! `quant.quantize` carries no `amax`. The format lays out the activation as it is (groups along its
//! last axis; for a conv, the width). A layer to be rewritten that has no calibration statistics is
//! refused with [`crate::calib::missing`] at the layer, before anything is changed. Per-channel
//! formats (a fixed axis of the activation) are rejected as `a`.
//!
//! Left float, silently: a layer whose weight (as `[N, K]`) or, with `a`, whose activation the format
//! cannot lay out (e.g. K not a multiple of the group size); a weight whose `dense_resource` bytes were
//! elided (nothing to quantize); a layer whose value names (the weight's, its resource's, or the
//! result's) contain `keep_float`; non-constant weights; gemms with `trans_a = 1`. A NaN or infinite
//! weight is a diagnostic at the layer.
//!
//! # Numerics (RTN with clip search)
//! `clip=none`: plain [`qc_quant::tensor::quantize`] of the `[N, K]` weight. `clip=mse` (the default):
//! for each clip ratio r in {1.0, 0.95, ..., 0.6} the weight is clamped, group by group (the format's
//! scale groups: a group along K, a channel, a 2-D block, or the whole tensor for per-tensor formats), to
//! ±r times that group's own amax and quantized; per group, the candidate whose dequantized values have
//! the smallest squared error against the *original* weights wins (ties keep the larger r), and its
//! codes, scales and zero points are merged into one tensor. Two-level formats (nvfp4, nvint4) quantize
//! every candidate with the original tensor amax, so all candidates share the r = 1.0 tensor scale and
//! merge.
//!
//! # Format search (LLM-FP4), `fp_search=true`
//! For a minifloat weight format, each layer also tries every other exponent/mantissa split of the same
//! total width ([`fp_candidates`]: for 4 bits e1m2, e2m1, e3m0), keeping the named format's scheme,
//! scale type, rule, tensor scale, packing and the element's inf/nan policy, with the default bias
//! `2^(X-1) - 1`. Each candidate gets the clip search above; the candidate with the least total squared
//! weight error wins, ties keeping the named format. A layer that chooses another split gets a generic
//! `!quant.fmt<eXmY<bias = B, policy = P>, ...>` weight type.
//!
//! # Contract (what the tests measure)
//! - The merged tensor dequantizes, element by element, exactly as the candidate chosen for its group.
//! - Per group, and hence in total, the weight MSE of `clip=mse` is at most that of `clip=none` (r = 1.0
//!   is a candidate and equals `clip=none`); on Gaussian weights with outliers it is strictly lower for
//!   int4_g128. With `fp_search`, the weight MSE is at most the fixed format's (the named format is a
//!   candidate), and strictly lower on uniform weights (where e1m2, a uniform grid, beats e2m1).
//! - The rewritten function computes the original within the format's error: the interpreter's output
//!   on a seeded input stays within a relative error bound derived from the formats' QSNR, for matmul,
//!   gemm and conv weights, and with activation quantization for the weight and activation QSNR together
//!   (passes/tests/quantize.rs).

use std::collections::BTreeMap;
use std::sync::Arc;

use qc_ir::attr::{Attribute, Attrs, DenseData, F64Bits};
use qc_ir::module::{Module, Op, Value};
use qc_ir::ops::QcOp;
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOption, PassOptions};
use qc_ir::quant::{named_format, Encoding, Minifloat, QuantType, Scheme, TensorScale};
use qc_ir::resource::Blob;
use qc_ir::types::{ElemType, TensorType};
use qc_ir::Diagnostic;
use qc_nn::NnOp;
use qc_quant::ops::QuantOp;
use qc_quant::tensor::{dequantize, quantize, QuantizeOptions, QuantizedTensor, Scales};
use qc_quant::QuantError;

use crate::calib;
use crate::weights::{self, Linear, LinearKind};

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "quantize",
    summary: "quantize the constant weights of matmul / gemm / conv layers (RTN, clip and LLM-FP4 format search) and optionally their activations",
    options: &[
        PassOption {
            name: "w",
            help: "weight format, a named format such as nvfp4, int4_g128, mxfp4, fp8_e4m3 (required)",
        },
        PassOption {
            name: "a",
            help: "activation format, a named format such as fp8_e4m3 or nvfp4, with the calibrated amax of each layer (needs calibrate first; default: none, weight-only)",
        },
        PassOption {
            name: "clip",
            help: "clip search: none or mse (default mse)",
        },
        PassOption {
            name: "fp_search",
            help: "true: per layer, also try every exponent/mantissa split of the weight minifloat's width and keep the least weight MSE (default false)",
        },
        PassOption {
            name: "keep_float",
            help: "leave float the layers whose weight, resource or result name contains this text (default: none)",
        },
    ],
    build,
};

fn named(o: &PassOptions, key: &str) -> Result<Option<QuantType>, String> {
    match o.get(key) {
        None => Ok(None),
        Some(name) => named_format(name)
            .map(|f| Some(f.ty.clone()))
            .ok_or_else(|| {
                format!("option '{key}' names no known format '{name}'; `qc formats` lists the named formats")
            }),
    }
}

fn build(o: &PassOptions) -> Result<Box<dyn Pass>, String> {
    let format = named(o, "w")?.ok_or(
        "option 'w' is required: the weight format, a named format such as nvfp4 (see `qc formats`)",
    )?;
    let activation = named(o, "a")?;
    if let Some(a) = &activation {
        if let Scheme::PerChannel { .. } = a.scheme {
            return Err(format!(
                "option 'a': {} scales a fixed axis per channel, which an activation does not have; use a per-tensor, group or block format",
                o.get("a").unwrap_or_default()
            ));
        }
    }
    let clip = match o.get("clip").unwrap_or("mse") {
        "none" => Clip::None,
        "mse" => Clip::Mse,
        c => return Err(format!("option 'clip' must be none or mse, not '{c}'")),
    };
    let fp_search = match o.get("fp_search").unwrap_or("false") {
        "true" => true,
        "false" => false,
        v => {
            return Err(format!(
                "option 'fp_search' must be true or false, not '{v}'"
            ))
        }
    };
    if fp_search && !matches!(format.elem, Encoding::Float(_)) {
        return Err(format!(
            "option 'fp_search' searches minifloat elements, and the weight format {} has {} elements",
            o.get("w").unwrap_or_default(),
            format.elem
        ));
    }
    let keep_float = o
        .get("keep_float")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(Box::new(Quantize {
        format,
        clip,
        keep_float,
        activation,
        fp_search,
    }))
}

/// The clip search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clip {
    /// Plain RTN on the weights as they are.
    None,
    /// Per-group choice of the clip ratio with the least squared error.
    Mse,
}

/// The clip ratios `clip=mse` tries, largest first.
pub const CLIP_RATIOS: [f32; 9] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6];

/// The pass.
pub struct Quantize {
    /// The weight format.
    pub format: QuantType,
    /// The clip search.
    pub clip: Clip,
    /// Value-name substring that keeps a layer float.
    pub keep_float: Option<String>,
    /// The activation format (static, from calibration), if any.
    pub activation: Option<QuantType>,
    /// Search the minifloat's exponent/mantissa split per layer.
    pub fp_search: bool,
}

impl Quantize {
    /// Weight-only quantization to `format` with the clip search `clip`.
    pub fn weight_only(format: QuantType, clip: Clip) -> Self {
        Quantize {
            format,
            clip,
            keep_float: None,
            activation: None,
            fp_search: false,
        }
    }
}

/// Builds one tensor that takes, for each scale group `s`, the codes, scale and zero point of
/// `parts[choice[s]]`. All parts must share format, shape and tensor scale; `index` is
/// [`qc_quant::tensor::scale_indices`] of their layout.
pub fn merge_groups(
    parts: &[QuantizedTensor],
    choice: &[usize],
    index: &[usize],
) -> Result<QuantizedTensor, QuantError> {
    let mut out = parts[choice.first().copied().unwrap_or(0)].clone();
    for (i, &s) in index.iter().enumerate() {
        out.codes[i] = parts[choice[s]].codes[i];
    }
    for (s, &c) in choice.iter().enumerate() {
        let p = &parts[c];
        match (&mut out.scales, &p.scales) {
            (Scales::Codes(a), Scales::Codes(b)) => a[s] = b[s],
            (Scales::F32(a), Scales::F32(b)) => a[s] = b[s],
            (Scales::F16(a), Scales::F16(b)) | (Scales::BF16(a), Scales::BF16(b)) => a[s] = b[s],
            _ => {
                return Err(QuantError::Unsupported(
                    "merging tensors with different scale types".into(),
                ))
            }
        }
        if let (Some(a), Some(b)) = (&mut out.zero_points, &p.zero_points) {
            a[s] = b[s];
        }
    }
    out.packed = qc_quant::pack::pack(&out.codes, out.format.elem.bits(), out.format.pack)?;
    Ok(out)
}

/// Quantizes `w` (row-major, `shape`) to `fmt` with the clip search `clip` (see the module doc).
pub fn quantize_weight(
    w: &[f32],
    shape: &[usize],
    fmt: &QuantType,
    clip: Clip,
    name: &str,
) -> Result<QuantizedTensor, QuantError> {
    let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let opts = QuantizeOptions {
        name: name.into(),
        // Two-level formats quantize every clip candidate under the original tensor maximum (so all
        // share one tensor scale); per-tensor formats take their scale from each candidate's own.
        tensor_amax: (fmt.tensor_scale != TensorScale::None).then_some(amax),
        ..QuantizeOptions::default()
    };
    let base = quantize(w, shape, fmt, &opts)?;
    if clip == Clip::None {
        return Ok(base);
    }
    let Some(index) = qc_quant::tensor::scale_indices(&fmt.scheme, shape, "weight").ok() else {
        return Ok(base);
    };
    let n_groups = base.scales.len();
    let mut gmax = vec![0f32; n_groups];
    for (&v, &s) in w.iter().zip(&index) {
        gmax[s] = gmax[s].max(v.abs());
    }
    let group_err = |q: &QuantizedTensor| -> Result<Vec<f64>, QuantError> {
        let d = dequantize(q)?;
        let mut e = vec![0f64; n_groups];
        for ((&x, &y), &s) in w.iter().zip(&d).zip(&index) {
            let diff = x as f64 - y as f64;
            e[s] += diff * diff;
        }
        Ok(e)
    };
    let mut best_err = group_err(&base)?;
    let mut choice = vec![0usize; n_groups];
    let mut parts = vec![base];
    for &r in &CLIP_RATIOS[1..] {
        let clamped: Vec<f32> = w
            .iter()
            .zip(&index)
            .map(|(&v, &s)| {
                let c = r * gmax[s];
                v.clamp(-c, c)
            })
            .collect();
        let q = quantize(&clamped, shape, fmt, &opts)?;
        let e = group_err(&q)?;
        let at = parts.len();
        for s in 0..n_groups {
            if e[s] < best_err[s] {
                best_err[s] = e[s];
                choice[s] = at;
            }
        }
        parts.push(q);
    }
    merge_groups(&parts, &choice, &index)
}

/// The formats the LLM-FP4 search tries for `fmt` (see the module doc): `fmt` itself first, then every
/// other split `eXmY` of its element's width in increasing X, with the element's inf/nan policy and
/// the default bias `2^(X-1) - 1`, skipping those that are not valid formats (an ieee element with one
/// exponent bit). Empty for non-minifloat elements.
pub fn fp_candidates(fmt: &QuantType) -> Vec<QuantType> {
    let Encoding::Float(named) = fmt.elem else {
        return Vec::new();
    };
    let bits = named.bits();
    let mut out = vec![fmt.clone()];
    for x in 1..bits.min(9) {
        let (e, m) = (x as u8, (bits - 1 - x) as u8);
        if !qc_ir::quant::minifloat_widths_ok(e, m) {
            continue;
        }
        let elem = Minifloat {
            exp_bits: e,
            man_bits: m,
            bias: (1 << (e - 1)) - 1,
            policy: named.policy,
        };
        if e == named.exp_bits {
            continue;
        }
        let mut t = fmt.clone();
        t.elem = Encoding::Float(elem);
        if t.validate().is_ok() {
            out.push(t);
        }
    }
    out
}

/// The sum of squared differences.
fn sq_err(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum()
}

/// Quantizes `w` (row-major, `shape`) with [`quantize_weight`] in `fmt` and, with `fp_search`, in each
/// other format of [`fp_candidates`]; returns the format with the least squared error (ties keep the
/// earlier, so `fmt` itself), its tensor and that error.
pub fn quantize_weight_search(
    w: &[f32],
    shape: &[usize],
    fmt: &QuantType,
    clip: Clip,
    fp_search: bool,
    name: &str,
) -> Result<(QuantType, QuantizedTensor, f64), QuantError> {
    let q = quantize_weight(w, shape, fmt, clip, name)?;
    let e = sq_err(w, &dequantize(&q)?);
    let mut best = (fmt.clone(), q, e);
    if fp_search {
        for cand in fp_candidates(fmt).into_iter().skip(1) {
            let Ok(q) = quantize_weight(w, shape, &cand, clip, name) else {
                continue;
            };
            let e = sq_err(w, &dequantize(&q)?);
            if e < best.2 {
                best = (cand, q, e);
            }
        }
    }
    Ok(best)
}

/// Whether the bytes of the float constant behind `w` are in the module.
fn weight_available(m: &Module, fi: usize, l: &Linear) -> bool {
    match m.funcs[fi].ops[l.weight_op].attr("value") {
        Some(Attribute::Dense(_)) => true,
        Some(Attribute::DenseResource(r)) => m.resources.get(r).and_then(|b| b.bytes()).is_some(),
        _ => false,
    }
}

/// Quantized activations of a function: (activation, amax bits) -> (`quant.quantize`, its
/// `quant.dequantize`), each made once.
type Acts = BTreeMap<(Value, u32), (Option<Value>, Option<Value>)>;

/// What happens to one layer.
struct Plan {
    /// The static activation maximum, when the activation is quantized.
    amax: Option<f32>,
}

/// The quantized weight of one float weight value, and its float views.
struct QWeight {
    /// The `[N, K]` quantized constant.
    q: Value,
    /// `quant.dequantize` of it (gemm), created on first use.
    deq: Option<Value>,
    /// Dequantized and reshaped to the stored weight shape (conv), created on first use.
    reshaped: Option<Value>,
}

impl Pass for Quantize {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, cx: &PassContext) -> Result<Changed, Diagnostic> {
        let mut changed = false;
        // Resources this pass added or whose constants it replaced: dropped at the end when unreferenced.
        let mut touched: Vec<String> = Vec::new();
        // Plan every layer of every function first, so that a refusal leaves the module untouched.
        let mut all_plans: Vec<BTreeMap<usize, (Linear, Plan)>> = Vec::new();
        for fi in 0..m.funcs.len() {
            let mut plans = BTreeMap::new();
            for l in crate::weights::linears(m, fi) {
                if let Some(p) = self.plan(m, fi, &l)? {
                    plans.insert(l.op, (l, p));
                }
            }
            all_plans.push(plans);
        }
        // Matmuls whose weights an earlier pass quantized (gptq, lorc): with `a`, their activation is
        // quantized too (op index -> calibrated amax).
        let mut act_only: Vec<BTreeMap<usize, (Linear, f32)>> = Vec::new();
        for fi in 0..m.funcs.len() {
            let mut plans = BTreeMap::new();
            if self.activation.is_some() {
                for l in weights::quantized_matmuls(m, fi) {
                    if let Some(amax) = self.plan_activation(m, fi, &l)? {
                        plans.insert(l.op, (l, amax));
                    }
                }
            }
            act_only.push(plans);
        }
        let total: usize = all_plans.iter().map(BTreeMap::len).sum();
        let mut done_layers = 0;
        for (fi, plans) in all_plans.into_iter().enumerate() {
            let old = std::mem::take(&mut m.funcs[fi].ops);
            let mut ops: Vec<Op> = Vec::with_capacity(old.len());
            // Float weight value -> its quantized constant (None: left float).
            let mut done: BTreeMap<Value, Option<QWeight>> = BTreeMap::new();
            let mut quantized_consts: Vec<Value> = Vec::new();
            let mut acts = Acts::new();
            for (oi, op) in old.iter().enumerate() {
                if let Some((l, amax)) = act_only[fi].get(&oi) {
                    let xq =
                        self.quantize_activation(m, fi, l.x, *amax, &op.loc, &mut acts, &mut ops);
                    let mut q = op.clone();
                    q.operands[0] = xq;
                    ops.push(q);
                    changed = true;
                    continue;
                }
                let Some((l, plan)) = plans.get(&oi) else {
                    ops.push(op.clone());
                    continue;
                };
                if let std::collections::btree_map::Entry::Vacant(slot) = done.entry(l.w) {
                    let q = self.quantize_const(m, fi, &old, l, &mut ops)?;
                    if let Some(q) = q {
                        if let Some(Attribute::DenseResource(r)) = old[l.weight_op].attr("value") {
                            touched.push(r.clone());
                        }
                        if let Some(Attribute::DenseResource(r)) = ops
                            .last()
                            .filter(|o| o.results == [q])
                            .and_then(|o| o.attr("value"))
                        {
                            touched.push(r.clone());
                        }
                        quantized_consts.push(l.w);
                    }
                    slot.insert(q.map(|q| QWeight {
                        q,
                        deq: None,
                        reshaped: None,
                    }));
                }
                let rewritten = match done.get_mut(&l.w) {
                    Some(Some(qw)) => self.rewrite(m, fi, op, l, plan, qw, &mut acts, &mut ops),
                    _ => false,
                };
                if !rewritten {
                    ops.push(op.clone());
                }
                changed |= rewritten;
                done_layers += 1;
                cx.progress.step(INFO.name, done_layers, total, &l.name);
            }
            // Drop the float constants nothing uses any more (and below, their unreferenced resources).
            let f = &mut m.funcs[fi];
            f.ops = ops;
            let uses = f.use_counts();
            f.ops.retain(|op| {
                !(QcOp::of(op) == Some(QcOp::Constant)
                    && op.results.len() == 1
                    && quantized_consts.contains(&op.results[0])
                    && uses[op.results[0].0 as usize] == 0)
            });
            // Quantized constants nothing uses (a matmul whose shapes did not fit) go too.
            let uses = f.use_counts();
            f.ops.retain(|op| {
                !(QcOp::of(op) == Some(QcOp::Constant)
                    && op.results.len() == 1
                    && uses[op.results[0].0 as usize] == 0
                    && done
                        .values()
                        .any(|q| q.as_ref().is_some_and(|q| q.q == op.results[0])))
            });
        }
        drop_unreferenced_resources(m, &touched);
        Ok(Changed::from_bool(changed))
    }
}

/// Removes the resources named in `names` that no op refers to any more.
fn drop_unreferenced_resources(m: &mut Module, names: &[String]) {
    let referenced: std::collections::BTreeSet<String> = m
        .funcs
        .iter()
        .flat_map(|f| f.ops.iter())
        .flat_map(|op| op.attrs.iter())
        .filter_map(|(_, a)| match a {
            Attribute::DenseResource(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    for n in names {
        if !referenced.contains(n) {
            m.resources.remove(n);
        }
    }
}

impl Quantize {
    /// Decides whether layer `l` is rewritten; refuses an uncalibrated layer under activation
    /// quantization.
    fn plan(&self, m: &Module, fi: usize, l: &Linear) -> Result<Option<Plan>, Diagnostic> {
        let f = &m.funcs[fi];
        let op = &f.ops[l.op];
        if let Some(p) = &self.keep_float {
            let resource = match f.ops[l.weight_op].attr("value") {
                Some(Attribute::DenseResource(n)) => Some(n.clone()),
                _ => None,
            };
            let names = [
                f.value(l.w).name.clone(),
                f.value(l.y).name.clone(),
                resource,
            ];
            if names.iter().flatten().any(|n| n.contains(p.as_str())) {
                return Ok(None);
            }
        }
        let nk = [Some(l.n as u64), Some(l.k as u64)];
        if self.format.validate_for_shape(&nk).is_err()
            || qc_quant::tensor::scale_shape(&self.format, &[l.n, l.k], "weight").is_err()
            || !weight_available(m, fi, l)
        {
            return Ok(None);
        }
        let Some(afmt) = &self.activation else {
            return Ok(Some(Plan { amax: None }));
        };
        let xdims: Vec<Option<u64>> = f.ty(l.x).dims.iter().map(|d| d.as_static()).collect();
        if afmt.validate_for_shape(&xdims).is_err() {
            return Ok(None);
        }
        let stats = calib::read(m, op)
            .ok_or_else(|| Diagnostic::error(op.loc.clone(), calib::missing(INFO.name, &l.name)))?;
        if !(stats.amax.is_finite() && stats.amax >= 0.0) {
            return Err(Diagnostic::error(
                op.loc.clone(),
                format!(
                    "quantize: layer '{}' has calib.amax = {}, which is not a finite maximum",
                    l.name, stats.amax
                ),
            ));
        }
        Ok(Some(Plan {
            amax: Some(stats.amax),
        }))
    }

    /// Quantizes the weight of layer `l` as `[N, K]` and pushes its quantized constant onto `ops`;
    /// `None` when it stays float.
    fn quantize_const(
        &self,
        m: &mut Module,
        fi: usize,
        old: &[Op],
        l: &Linear,
        ops: &mut Vec<Op>,
    ) -> Result<Option<Value>, Diagnostic> {
        let cop = &old[l.weight_op];
        let f = &m.funcs[fi];
        let ty = f.ty(l.w).clone();
        let Some(stored) = weights::constant_values(m, cop, &ty) else {
            return Ok(None);
        };
        let (k, n) = (l.k, l.n);
        if stored.len() != k * n {
            return Ok(None);
        }
        let nk = match l.kind {
            LinearKind::Matmul | LinearKind::Gemm { trans_b: false } => {
                weights::transpose(&stored, k, n)
            }
            LinearKind::Gemm { trans_b: true } | LinearKind::Conv => stored,
        };
        let base = match cop.attr("value") {
            Some(Attribute::DenseResource(r)) => r.clone(),
            _ => f.value(l.w).name.clone().unwrap_or_else(|| "w".into()),
        };
        let loc = old[l.op].loc.clone();
        let (fmt, q, _) =
            quantize_weight_search(&nk, &[n, k], &self.format, self.clip, self.fp_search, &base)
                .map_err(|e| Diagnostic::error(loc.clone(), format!("quantize: {e}")))?;
        let blob = qc_quant::blob::to_blob(&q)
            .map_err(|e| Diagnostic::error(loc, format!("quantize: {e}")))?;
        drop(nk);
        let mut rname = format!("{base}.q");
        let mut i = 1;
        while m.resources.get(&rname).is_some() {
            rname = format!("{base}.q{i}");
            i += 1;
        }
        m.resources.insert(
            rname.clone(),
            Blob::Owned {
                data: Arc::from(blob),
                align: qc_quant::blob::ALIGN as u32,
            },
        );
        let f = &mut m.funcs[fi];
        let hint = f.value(l.w).name.clone().map(|s| format!("{s}_q"));
        let qty = TensorType::new(&[n as u64, k as u64], ElemType::Quant(Arc::new(fmt)));
        let v = f.new_value(qty, hint.as_deref());
        ops.push(Op {
            def: QcOp::Constant.def(),
            operands: vec![],
            results: vec![v],
            attrs: Attrs::from_iter([("value", Attribute::DenseResource(rname))]),
            loc: cop.loc.clone(),
        });
        Ok(Some(v))
    }

    /// Whether the activation of an already weight-quantized matmul `l` gets quantized: its calibrated
    /// amax, `None` when it is left alone (keep_float, a layout the format cannot take). Refuses a layer
    /// without statistics.
    fn plan_activation(
        &self,
        m: &Module,
        fi: usize,
        l: &Linear,
    ) -> Result<Option<f32>, Diagnostic> {
        let Some(afmt) = &self.activation else {
            return Ok(None);
        };
        let f = &m.funcs[fi];
        let op = &f.ops[l.op];
        if let Some(p) = &self.keep_float {
            let names = [
                f.value(l.w).name.clone(),
                f.value(l.y).name.clone(),
                Some(l.name.clone()),
            ];
            if names.iter().flatten().any(|n| n.contains(p.as_str())) {
                return Ok(None);
            }
        }
        let xdims: Vec<Option<u64>> = f.ty(l.x).dims.iter().map(|d| d.as_static()).collect();
        if afmt.validate_for_shape(&xdims).is_err() {
            return Ok(None);
        }
        let stats = calib::read(m, op)
            .ok_or_else(|| Diagnostic::error(op.loc.clone(), calib::missing(INFO.name, &l.name)))?;
        if !(stats.amax.is_finite() && stats.amax >= 0.0) {
            return Err(Diagnostic::error(
                op.loc.clone(),
                format!(
                    "quantize: layer '{}' has calib.amax = {}, which is not a finite maximum",
                    l.name, stats.amax
                ),
            ));
        }
        Ok(Some(stats.amax))
    }

    /// The quantized activation `x` (format `a`, static `amax` where the format takes one), pushing its
    /// `quant.quantize` onto `ops` the first time; layers reading the same activation with the same amax
    /// share it.
    #[allow(clippy::too_many_arguments)]
    fn quantize_activation(
        &self,
        m: &mut Module,
        fi: usize,
        x: Value,
        amax: f32,
        loc: &qc_ir::Location,
        acts: &mut Acts,
        ops: &mut Vec<Op>,
    ) -> Value {
        let afmt = self
            .activation
            .as_ref()
            .expect("called with an activation format");
        let f = &mut m.funcs[fi];
        let entry = acts.entry((x, amax.to_bits())).or_insert((None, None));
        if let Some(xq) = entry.0 {
            return xq;
        }
        let qty = f.ty(x).with_elem(ElemType::Quant(Arc::new(afmt.clone())));
        let h = f.value(x).name.as_ref().map(|n| format!("{n}_q"));
        let xq = f.new_value(qty, h.as_deref());
        let mut attrs = Attrs::new();
        if afmt.scheme == Scheme::PerTensor || afmt.tensor_scale != TensorScale::None {
            attrs.set("amax", Attribute::Float(F64Bits(amax as f64)));
        }
        ops.push(Op {
            def: QuantOp::Quantize.def(),
            operands: vec![x],
            results: vec![xq],
            attrs,
            loc: loc.clone(),
        });
        entry.0 = Some(xq);
        xq
    }

    /// Pushes the rewrite of layer op `op` (its quantized weight `qw`) onto `ops`; false (and nothing
    /// pushed) when the result would not type-check, so the layer stays as it is.
    #[allow(clippy::too_many_arguments)]
    fn rewrite(
        &self,
        m: &mut Module,
        fi: usize,
        op: &Op,
        l: &Linear,
        plan: &Plan,
        qw: &mut QWeight,
        acts: &mut Acts,
        ops: &mut Vec<Op>,
    ) -> bool {
        let f = &mut m.funcs[fi];
        let (x, y) = (l.x, l.y);
        let xty = f.ty(x).clone();
        let loc = op.loc.clone();
        if l.kind == LinearKind::Matmul {
            let fits = qc_nn::shape::matmul(&xty.dims, &f.ty(qw.q).dims, true).is_ok_and(|dims| {
                qc_nn::shape::type_matches(
                    &TensorType {
                        dims,
                        elem: xty.elem.clone(),
                    },
                    f.ty(y),
                )
            });
            if !fits {
                return false;
            }
        }
        let hint = |f: &qc_ir::Func, v: Value, suffix: &str| {
            f.value(v).name.as_ref().map(|n| format!("{n}{suffix}"))
        };
        // The activation: quantized (and for gemm / conv dequantized again) when `a` is given; layers
        // reading the same activation with the same amax share these ops.
        let mut xin = x;
        if let Some(amax) = plan.amax.filter(|_| self.activation.is_some()) {
            let xq = self.quantize_activation(m, fi, x, amax, &loc, acts, ops);
            let f = &mut m.funcs[fi];
            let entry = acts.entry((x, amax.to_bits())).or_insert((None, None));
            xin = xq;
            if l.kind != LinearKind::Matmul {
                xin = match entry.1 {
                    Some(xd) => xd,
                    None => {
                        let h = hint(f, x, "_dq");
                        let xd = f.new_value(xty.clone(), h.as_deref());
                        ops.push(Op {
                            def: QuantOp::Dequantize.def(),
                            operands: vec![xq],
                            results: vec![xd],
                            attrs: Attrs::new(),
                            loc: loc.clone(),
                        });
                        entry.1 = Some(xd);
                        xd
                    }
                };
            }
        }
        let f = &mut m.funcs[fi];
        let wty = f.ty(l.w).clone();
        let nk_ty = TensorType::new(&[l.n as u64, l.k as u64], wty.elem.clone());
        let mut dequantized = |f: &mut qc_ir::Func, ops: &mut Vec<Op>, suffix: &str| -> Value {
            if let Some(d) = qw.deq {
                return d;
            }
            let h = hint(f, l.w, suffix);
            let d = f.new_value(nk_ty.clone(), h.as_deref());
            ops.push(Op {
                def: QuantOp::Dequantize.def(),
                operands: vec![qw.q],
                results: vec![d],
                attrs: Attrs::new(),
                loc: loc.clone(),
            });
            qw.deq = Some(d);
            d
        };
        match l.kind {
            LinearKind::Matmul => {
                let mut attrs: Attrs = [("transpose_b", Attribute::Unit)].into_iter().collect();
                for (k, v) in op.attrs.iter().filter(|(k, _)| k.contains('.')) {
                    attrs.set(k, v.clone());
                }
                ops.push(Op {
                    def: QuantOp::Matmul.def(),
                    operands: vec![xin, qw.q],
                    results: op.results.clone(),
                    attrs,
                    loc,
                });
            }
            LinearKind::Gemm { .. } => {
                let wd = dequantized(f, ops, "_dq");
                let mut g = op.clone();
                g.operands[0] = xin;
                g.operands[1] = wd;
                g.attrs.set("trans_b", Attribute::Int(1));
                ops.push(g);
            }
            LinearKind::Conv => {
                let wr = match qw.reshaped {
                    Some(r) => r,
                    None => {
                        let d = dequantized(f, ops, "_dq_nk");
                        let dims: Vec<i64> = wty
                            .static_shape()
                            .unwrap_or_default()
                            .iter()
                            .map(|&d| d as i64)
                            .collect();
                        let sty = TensorType::new(
                            &[dims.len() as u64],
                            ElemType::Int {
                                bits: 64,
                                unsigned: false,
                            },
                        );
                        let h = hint(f, l.w, "_shape");
                        let s = f.new_value(sty, h.as_deref());
                        ops.push(Op {
                            def: QcOp::Constant.def(),
                            operands: vec![],
                            results: vec![s],
                            attrs: Attrs::from_iter([(
                                "value",
                                Attribute::Dense(DenseData::Int(dims)),
                            )]),
                            loc: loc.clone(),
                        });
                        let h = hint(f, l.w, "_dq");
                        let r = f.new_value(wty.clone(), h.as_deref());
                        ops.push(Op {
                            def: NnOp::Reshape.def(),
                            operands: vec![d, s],
                            results: vec![r],
                            attrs: Attrs::new(),
                            loc: loc.clone(),
                        });
                        qw.reshaped = Some(r);
                        r
                    }
                };
                let mut c = op.clone();
                c.operands[0] = xin;
                c.operands[1] = wr;
                ops.push(c);
            }
        }
        true
    }
}

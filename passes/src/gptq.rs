//! `gptq{w=FMT,block=128,damp=0.01,act_order=false,mr=false,keep_float=PATTERN}`: GPTQ (Frantar et al.
//! 2022) weight quantization of matrix products from calibration statistics, and MR-GPTQ
//! (micro-rotated GPTQ, arXiv 2509.23202) for FP4 formats.
//!
//! # Rewrite
//! Every `%y = nn.matmul %x, %w` whose `%w` is a constant 2-D float tensor `[K, N]` with bytes in the
//! module, whose format `w` can lay out `[N, K]`, and whose result `quant.matmul {transpose_b}` can
//! compute, becomes what the `quantize` pass makes of it:
//! ```text
//! %wq = qc.constant {value = dense_resource<NAME.q>} : () -> tensor<NxKx!quant.FMT>
//! %y  = quant.matmul %x, %wq {transpose_b} : (...) -> <the original result type>
//! ```
//! with the quantized values chosen by GPTQ instead of round-to-nearest (the resource is
//! [`qc_quant::blob::to_blob`] of [`algo::GptqOutput::tensor`]). The layer's discardable attributes
//! (the `calib.*` statistics among them) move to the `quant.matmul`. Float constants and resources left
//! without users are removed. Left float, silently, as `quantize` does: weights the format cannot lay
//! out, elided weight bytes, non-constant weights, and matmuls whose weight, resource or result name
//! contains `keep_float`.
//!
//! GPTQ needs data: every rewritten matmul must carry the `calib.*` statistics of the `calibrate` pass
//! with `calib.xtx` ([`crate::calib`]); a layer without them is a diagnostic at the layer that says to
//! run `calibrate` first. A weight read by several matmuls is quantized once, with the Hessian of all
//! its readers (`sum X^T X / sum rows`).
//!
//! # Numerics
//! See [`algo`]: `H = X^T X / rows`, dead inputs zeroed, `damp * mean(diag H)` on the diagonal, the
//! upper Cholesky factor of `H^-1`, lazy batch updates of `block` rows (columns of the reference's
//! `[out, in]` weight), group scales computed from the current weights when a group's first row is
//! reached (every scale rule of qc-quant, computed by qc-quant), and with `act_order` the descending
//! `diag(H)` order with all scales computed up front from the original weights (static groups). f64
//! throughout; elements are rounded with the format's own arithmetic.
//!
//! # MR-GPTQ (`mr=true`)
//! For FP4 formats with e8m0 or ue4m3 group scales along K (mxfp4, nvfp4 and their variants; other
//! formats are refused when the pipeline is built), with `b` the group size (32 for mxfp4, 16 for nvfp4):
//! the weight is rotated offline, `W' = H_b W` (the block Walsh-Hadamard of [`qc_quant::hadamard`] on
//! each group of `b` rows along K), the activation is rotated online by `%xr = quant.hadamard %x
//! {block = b}` (one per activation value, shared by every rewritten layer that reads it, placed before
//! the first of them), and the Hessian becomes `H' = H_b H H_b`. Since `H_b H_b = I`, `(x H_b)(H_b W) =
//! x W`: before quantization the rotated layer computes the same function ([`rotate_float`] performs
//! just this rotation, and the tests check it through the interpreter). GPTQ then runs on `W'` with
//! format-aware scales: per group, the scale code near the max-based one with the least squared error.
//! The `calib.*` attributes describe the unrotated activation, so they are dropped from rotated layers.
//!
//! # Contract (what the tests measure)
//! - Exactness: the stored tensor decodes (through its blob) to exactly the weights GPTQ chose
//!   ([`algo::GptqOutput::dequantized`]); with `H = I` (nothing to compensate) GPTQ reproduces the
//!   `quantize` pass's RTN (`clip=none`) codes and scales for every named format.
//! - Better: on a layer with correlated activations, the layer-output MSE on the calibration inputs
//!   (through the reference interpreter) is below that of RTN (`quantize` with `clip=none` and
//!   `clip=mse`) for int4_g128, nvfp4 and mxfp4, with and without `act_order`; MR-GPTQ's is at most
//!   GPTQ's for mxfp4 on heavy-tailed (Student-t) weights (passes/tests/gptq.rs prints the numbers).
//! - The rotation alone is exact up to f32 rounding.
//! - Deterministic: the same module and options give the same bytes.

pub mod algo;
pub mod linalg;

use std::collections::BTreeMap;
use std::sync::Arc;

use qc_ir::attr::{Attribute, Attrs};
use qc_ir::module::{Module, Op, Value};
use qc_ir::ops::QcOp;
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOption, PassOptions};
use qc_ir::quant::{named_format, Encoding, QuantType, ScaleType, Scheme};
use qc_ir::resource::Blob;
use qc_ir::types::{ElemType, TensorType};
use qc_ir::Diagnostic;
use qc_nn::NnOp;
use qc_quant::ops::QuantOp;
use qc_runtime::interp::{Data, Tensor};

use crate::calib;
use crate::weights::{self, Linear, LinearKind};
pub use algo::{gptq, GptqConfig, GptqOutput};

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "gptq",
    summary: "GPTQ weight quantization of matmuls from calibration statistics (MR-GPTQ for FP4 with mr=true)",
    options: &[
        PassOption {
            name: "w",
            help: "weight format, a named format such as int4_g128, nvfp4, mxfp4, fp8_e4m3_channel (required)",
        },
        PassOption {
            name: "block",
            help: "columns per lazy batch update, at least 1; changes speed, not the result beyond rounding (default 128)",
        },
        PassOption {
            name: "damp",
            help: "dampening added to the Hessian diagonal, relative to its mean, >= 0 (default 0.01)",
        },
        PassOption {
            name: "act_order",
            help: "quantize columns by descending Hessian diagonal, with all scales computed up front (static groups) (default false)",
        },
        PassOption {
            name: "mr",
            help: "MR-GPTQ: block Hadamard of the group size on weights and activations, format-aware scales; mxfp4 / nvfp4 only (default false)",
        },
        PassOption {
            name: "keep_float",
            help: "leave float the matmuls whose weight, resource or result name contains this text (default: none)",
        },
    ],
    build,
};

fn build(o: &PassOptions) -> Result<Box<dyn Pass>, String> {
    let w = o.get("w").ok_or(
        "option 'w' is required: the weight format, a named format such as int4_g128 (see `qc formats`)",
    )?;
    let format = named_format(w)
        .ok_or_else(|| {
            format!("option 'w' names no known format '{w}'; `qc formats` lists the named formats")
        })?
        .ty
        .clone();
    let block: i64 = o.parse_or("block", 128)?;
    if block < 1 {
        return Err(format!("option 'block' must be at least 1, not {block}"));
    }
    let damp: f64 = o.parse_or("damp", 0.01)?;
    if !(damp >= 0.0 && damp.is_finite()) {
        return Err(format!(
            "option 'damp' must be a finite number >= 0, not {damp}"
        ));
    }
    let act_order: bool = o.parse_or("act_order", false)?;
    let mr: bool = o.parse_or("mr", false)?;
    let mr_block = if mr {
        Some(mr_block(&format).ok_or_else(|| {
            format!(
                "option 'mr' (micro-rotated GPTQ) needs an FP4 (e2m1) format with e8m0 or ue4m3 group \
                 scales along K, such as mxfp4 or nvfp4; '{w}' is not one"
            )
        })?)
    } else {
        None
    };
    let keep_float = o
        .get("keep_float")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Ok(Box::new(Gptq {
        format,
        config: GptqConfig {
            block: block as usize,
            damp,
            act_order,
            scale_search: mr,
        },
        mr_block,
        keep_float,
    }))
}

/// The Hadamard block of MR-GPTQ for `fmt`: its group size, when `fmt` is an FP4 format with e8m0 or
/// ue4m3 scales in power-of-two groups along K; `None` otherwise.
pub fn mr_block(fmt: &QuantType) -> Option<usize> {
    match fmt.scheme {
        Scheme::Group { size, axis }
            if (axis == -1 || axis == 1)
                && fmt.elem == Encoding::E2M1
                && matches!(fmt.scale, ScaleType::E8M0 | ScaleType::UE4M3)
                && (size as usize).is_power_of_two() =>
        {
            Some(size as usize)
        }
        _ => None,
    }
}

/// The pass.
pub struct Gptq {
    /// The weight format.
    pub format: QuantType,
    /// The algorithm's options (`scale_search` is MR-GPTQ's format-aware scale search).
    pub config: GptqConfig,
    /// MR-GPTQ: the Hadamard block (the format's group size), or `None` for plain GPTQ.
    pub mr_block: Option<usize>,
    /// Value-name substring that keeps a matmul float.
    pub keep_float: Option<String>,
}

/// The matmuls of function `fi` sharing one float weight, to be rewritten together.
struct WeightGroup {
    w: Value,
    /// The layers (indices into the function's ops, in order).
    layers: Vec<Linear>,
    k: usize,
    n: usize,
    /// The weight's resource name, or its value name.
    base: String,
}

/// The eligible matmuls of `fi` (see the module doc) grouped by weight, in op order. `fits_quant`: the
/// quantized `[N, K]` weight in `fmt` must fit; `block`: K must be a multiple of it.
fn weight_groups(
    m: &Module,
    fi: usize,
    fmt: Option<&QuantType>,
    block: Option<usize>,
    keep_float: Option<&str>,
) -> Vec<WeightGroup> {
    let f = &m.funcs[fi];
    let mut groups: Vec<WeightGroup> = Vec::new();
    for lin in weights::linears(m, fi) {
        if lin.kind != LinearKind::Matmul {
            continue;
        }
        let (k, n) = (lin.k, lin.n);
        let cop = &f.ops[lin.weight_op];
        let res = match cop.attr("value") {
            Some(Attribute::DenseResource(r)) => Some(r.clone()),
            _ => None,
        };
        if let Some(p) = keep_float {
            let names = [
                f.value(lin.w).name.clone(),
                f.value(lin.y).name.clone(),
                res.clone(),
            ];
            if names.iter().flatten().any(|s| s.contains(p)) {
                continue;
            }
        }
        if block.is_some_and(|b| k % b != 0) {
            continue;
        }
        let wdims = match fmt {
            Some(fmt) => {
                let dims = [Some(n as u64), Some(k as u64)];
                if fmt.validate_for_shape(&dims).is_err()
                    || qc_quant::tensor::scale_indices(&fmt.scheme, &[n, k], "weight").is_err()
                {
                    continue;
                }
                (
                    TensorType::new(&[n as u64, k as u64], ElemType::F32).dims,
                    true,
                )
            }
            None => (f.ty(lin.w).dims.clone(), false),
        };
        let x_ty = f.ty(lin.x);
        let fits = qc_nn::shape::matmul(&x_ty.dims, &wdims.0, wdims.1).is_ok_and(|dims| {
            qc_nn::shape::type_matches(
                &TensorType {
                    dims,
                    elem: x_ty.elem.clone(),
                },
                f.ty(lin.y),
            )
        });
        if !fits || weights::read_weight(m, fi, lin.w).is_none() {
            continue;
        }
        match groups.iter_mut().find(|g| g.w == lin.w) {
            Some(g) => g.layers.push(lin),
            None => {
                let base = res
                    .or_else(|| f.value(lin.w).name.clone())
                    .unwrap_or_else(|| "w".into());
                groups.push(WeightGroup {
                    w: lin.w,
                    layers: vec![lin],
                    k,
                    n,
                    base,
                });
            }
        }
    }
    groups
}

/// The combined mean second moment `sum X^T X / sum rows` (f64, `K x K`) of a weight's readers, or the
/// diagnostic for the first layer without usable statistics.
fn hessian(m: &Module, fi: usize, g: &WeightGroup) -> Result<Vec<f64>, Diagnostic> {
    let f = &m.funcs[fi];
    let k = g.k;
    let mut h = vec![0f64; k * k];
    let mut rows = 0u64;
    for lin in &g.layers {
        let op = &f.ops[lin.op];
        let err = |msg: String| Diagnostic::error(op.loc.clone(), msg);
        let s = calib::read(m, op).ok_or_else(|| err(calib::missing("gptq", &lin.name)))?;
        let xtx = s.xtx.ok_or_else(|| {
            err(format!(
                "gptq: layer '{}' has calibration statistics without X^T X (calib.xtx, whose bytes may \
                 have been elided); GPTQ needs it: run the calibrate pass again",
                lin.name
            ))
        })?;
        if xtx.len() != k * k {
            return Err(err(format!(
                "gptq: calib.xtx of layer '{}' holds {} values, not K x K = {} for K = {k}",
                lin.name,
                xtx.len(),
                k * k
            )));
        }
        for (a, &b) in h.iter_mut().zip(&xtx) {
            *a += b as f64;
        }
        rows += s.rows;
    }
    let r = rows.max(1) as f64;
    h.iter_mut().for_each(|v| *v /= r);
    Ok(h)
}

/// What replaces a weight group's matmuls.
enum NewWeight {
    /// A quantized `[N, K]` tensor (blob bytes) read by `quant.matmul {transpose_b}`.
    Quant { bytes: Vec<u8>, ty: TensorType },
    /// A float `[K, N]` weight read by `nn.matmul` (the rotation alone).
    Float { values: Vec<f32>, ty: TensorType },
}

/// Rewrites function `fi`: the layers of each group read the new weight (and, with `rotate = Some(b)`,
/// the activation through one shared `quant.hadamard {block = b}`). Float constants and resources left
/// without users go. Returns whether anything changed.
fn rewrite(
    m: &mut Module,
    fi: usize,
    plan: Vec<(WeightGroup, NewWeight)>,
    rotate: Option<usize>,
) -> bool {
    if plan.is_empty() {
        return false;
    }
    let mut touched: Vec<String> = Vec::new();
    // Op index -> (plan index); plan index -> new constant op and value.
    let mut layer_of: BTreeMap<usize, usize> = BTreeMap::new();
    let mut consts: Vec<Option<(Op, Value)>> = Vec::new();
    let mut replaced: Vec<Value> = Vec::new();
    for (pi, (g, new)) in plan.into_iter().enumerate() {
        let f = &m.funcs[fi];
        let cop = &f.ops[g.layers[0].weight_op];
        if let Some(Attribute::DenseResource(r)) = cop.attr("value") {
            touched.push(r.clone());
        }
        for lin in &g.layers {
            layer_of.insert(lin.op, pi);
            for (_, a) in f.ops[lin.op].attrs.iter() {
                if let Attribute::DenseResource(r) = a {
                    touched.push(r.clone());
                }
            }
        }
        let (suffix, bytes, ty, align) = match new {
            NewWeight::Quant { bytes, ty } => ("q", bytes, ty, qc_quant::blob::ALIGN as u32),
            NewWeight::Float { values, ty } => {
                let shape: Vec<usize> = ty
                    .static_shape()
                    .expect("weights have static shapes")
                    .iter()
                    .map(|&d| d as usize)
                    .collect();
                let t = Tensor::new(
                    shape,
                    ty.elem.clone(),
                    Data::F(values.iter().map(|&v| v as f64).collect()),
                );
                ("rot", t.to_bytes(), ty, 64)
            }
        };
        let mut rname = format!("{}.{suffix}", g.base);
        let mut i = 1;
        while m.resources.get(&rname).is_some() {
            rname = format!("{}.{suffix}{i}", g.base);
            i += 1;
        }
        m.resources.insert(
            rname.clone(),
            Blob::Owned {
                data: Arc::from(bytes),
                align,
            },
        );
        let f = &mut m.funcs[fi];
        let loc = f.ops[g.layers[0].weight_op].loc.clone();
        let hint = f.value(g.w).name.clone().map(|s| format!("{s}_{suffix}"));
        let v = f.new_value(ty, hint.as_deref());
        consts.push(Some((
            Op {
                def: QcOp::Constant.def(),
                operands: vec![],
                results: vec![v],
                attrs: Attrs::from_iter([("value", Attribute::DenseResource(rname))]),
                loc,
            },
            v,
        )));
        replaced.push(g.w);
    }
    let f = &mut m.funcs[fi];
    let old = std::mem::take(&mut f.ops);
    let mut ops: Vec<Op> = Vec::with_capacity(old.len() + consts.len());
    let mut rotated: BTreeMap<Value, Value> = BTreeMap::new();
    let mut new_values: Vec<Option<Value>> = vec![None; consts.len()];
    for (oi, op) in old.into_iter().enumerate() {
        let Some(&pi) = layer_of.get(&oi) else {
            ops.push(op);
            continue;
        };
        if let Some((cop, v)) = consts[pi].take() {
            ops.push(cop);
            new_values[pi] = Some(v);
        }
        let wv = new_values[pi].expect("the constant precedes its first use");
        let mut x = op.operands[0];
        if let Some(b) = rotate {
            x = match rotated.get(&x) {
                Some(&r) => r,
                None => {
                    let ty = f.ty(x).clone();
                    let hint = f.value(x).name.clone().map(|s| format!("{s}_rot"));
                    let r = f.new_value(ty, Some(hint.as_deref().unwrap_or("rot")));
                    ops.push(Op {
                        def: QuantOp::Hadamard.def(),
                        operands: vec![x],
                        results: vec![r],
                        attrs: Attrs::from_iter([("block", Attribute::Int(b as i64))]),
                        loc: op.loc.clone(),
                    });
                    rotated.insert(x, r);
                    r
                }
            };
        }
        // Discardable attributes move along; calibration statistics only while they still describe
        // the activation operand.
        let keep =
            |name: &str| name.contains('.') && !(rotate.is_some() && name.starts_with("calib."));
        let carried = op
            .attrs
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, a)| (n.to_string(), a.clone()));
        let quant = matches!(f.ty(wv).elem, ElemType::Quant(_));
        let (def, mut attrs) = if quant {
            (
                QuantOp::Matmul.def(),
                Attrs::from_iter([("transpose_b", Attribute::Unit)]),
            )
        } else {
            (NnOp::Matmul.def(), Attrs::new())
        };
        for (n, a) in carried {
            attrs.set(n, a);
        }
        ops.push(Op {
            def,
            operands: vec![x, wv],
            results: op.results,
            attrs,
            loc: op.loc,
        });
    }
    f.ops = ops;
    let uses = f.use_counts();
    f.ops.retain(|op| {
        !(QcOp::of(op) == Some(QcOp::Constant)
            && op.results.len() == 1
            && replaced.contains(&op.results[0])
            && uses[op.results[0].0 as usize] == 0)
    });
    drop_unreferenced_resources(m, &touched);
    true
}

/// Removes the resources named in `names` that no op refers to any more.
fn drop_unreferenced_resources(m: &mut Module, names: &[String]) {
    let referenced: std::collections::BTreeSet<&str> = m
        .funcs
        .iter()
        .flat_map(|f| f.ops.iter())
        .flat_map(|op| op.attrs.iter())
        .filter_map(|(_, a)| match a {
            Attribute::DenseResource(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let gone: Vec<String> = names
        .iter()
        .filter(|n| !referenced.contains(n.as_str()))
        .cloned()
        .collect();
    for n in gone {
        m.resources.remove(&n);
    }
}

/// The float weight of a group as `[K, N]` f64 (its readers are matmuls: stored `[K, N]`).
fn weight_kn(m: &Module, fi: usize, g: &WeightGroup) -> Vec<f64> {
    weights::read_weight(m, fi, g.w)
        .expect("eligible weights have bytes")
        .into_iter()
        .map(f64::from)
        .collect()
}

/// MR-GPTQ's rotation alone: every `nn.matmul` with a constant float `[K, N]` weight (bytes present, K
/// a multiple of `block`, a power of two) reads `quant.hadamard {block}` of its activation (shared per
/// activation value) and the new float weight `H_b W` (resource `NAME.rot`, the weight's element type).
/// The function computes the same values up to rounding; the `calib.*` attributes of rotated layers are
/// dropped (they describe the unrotated activation).
pub fn rotate_float(m: &mut Module, block: usize) -> Result<Changed, Diagnostic> {
    if !block.is_power_of_two() {
        return Err(Diagnostic::error(
            Default::default(),
            format!("rotate: the Hadamard block {block} is not a power of two"),
        ));
    }
    let mut changed = false;
    for fi in 0..m.funcs.len() {
        let groups = weight_groups(m, fi, None, Some(block), None);
        let mut plan = Vec::new();
        for g in groups {
            let mut w = weight_kn(m, fi, &g);
            linalg::rotate_cols_f64(&mut w, g.n, block);
            let ty = m.funcs[fi].ty(g.w).clone();
            let values = w.iter().map(|&v| v as f32).collect();
            plan.push((g, NewWeight::Float { values, ty }));
        }
        changed |= rewrite(m, fi, plan, Some(block));
    }
    Ok(Changed::from_bool(changed))
}

impl Pass for Gptq {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, cx: &PassContext) -> Result<Changed, Diagnostic> {
        // Find every layer and check its statistics before computing anything.
        let mut work: Vec<(usize, Vec<WeightGroup>)> = Vec::new();
        for fi in 0..m.funcs.len() {
            let groups = weight_groups(
                m,
                fi,
                Some(&self.format),
                self.mr_block,
                self.keep_float.as_deref(),
            );
            for g in &groups {
                hessian(m, fi, g)?;
            }
            work.push((fi, groups));
        }
        let total: usize = work.iter().map(|(_, g)| g.len()).sum();
        let mut done = 0;
        let mut changed = false;
        for (fi, groups) in work {
            let mut plan = Vec::with_capacity(groups.len());
            for g in groups {
                let loc = m.funcs[fi].ops[g.layers[0].op].loc.clone();
                let mut h = hessian(m, fi, &g)?;
                let mut w = weight_kn(m, fi, &g);
                if let Some(b) = self.mr_block {
                    linalg::rotate_cols_f64(&mut w, g.n, b);
                    linalg::rotate_rows_f64(&mut h, b);
                    linalg::rotate_cols_f64(&mut h, g.k, b);
                }
                let out = gptq(&w, g.k, g.n, &h, &self.format, &self.config, &g.base)
                    .map_err(|e| Diagnostic::error(loc.clone(), e))?;
                let bytes = qc_quant::blob::to_blob(&out.tensor)
                    .map_err(|e| Diagnostic::error(loc.clone(), format!("gptq: {e}")))?;
                let ty = TensorType::new(
                    &[g.n as u64, g.k as u64],
                    ElemType::Quant(Arc::new(self.format.clone())),
                );
                done += 1;
                cx.progress.step(INFO.name, done, total, &g.base);
                plan.push((g, NewWeight::Quant { bytes, ty }));
            }
            changed |= rewrite(m, fi, plan, self.mr_block);
        }
        Ok(Changed::from_bool(changed))
    }
}

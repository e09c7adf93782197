//! Per-input-channel rescaling of linear layers, shared by `smooth` and `reparam-exp-bias`.
//!
//! For an activation `X` (last axis of length `K`) read by a group of linear layers, and a positive scale
//! `s` per channel, `X W = (X diag(1/s)) (diag(s) W)`. [`rescale_group`] multiplies row `j` of every
//! layer's `[K, N]` weight by `s_j` and makes the layers read `X' = X diag(1/s)`, which it gets in the
//! cheapest exact way it can find, by looking at the op that produces `X`:
//!
//! - `nn.layer_norm %a, %scale, %bias` with constant scale and bias: both are multiplied by `1/s`
//!   ([`Applied::Norm`]);
//! - `nn.mul %a, %c` (either operand order) with a constant `%c` that varies at most along the last axis,
//!   e.g. an RMSNorm's gamma or GELU's `* 0.5`: `%c` is multiplied by `1/s` (a scalar is widened to `[K]`)
//!   ([`Applied::Mul`]);
//! - `nn.add %a, %c` with such a constant (a LayerNorm written out, or a bias after a matmul), when `%a` is
//!   used only by the add and is itself foldable: both are scaled ([`Applied::Norm`] / [`Applied::Mul`] /
//!   [`Applied::Linear`] after the inner producer);
//! - a linear layer `nn.matmul %a, %w` with a constant 2-D `%w`, or `nn.gemm %a, %b, %c` with constant
//!   `%b` and `%c`: output column `j` (and bias element `j`) is multiplied by `1/s_j` ([`Applied::Linear`]).
//!
//! Any of these only when `X` has no other use than the layers of the group (and for the inner value of
//! an add, no other use than the add): a LayerNorm whose output also feeds a residual connection, as in
//! BERT's post-LN blocks, cannot absorb the scale. Then an explicit `%x_s = nn.mul %x, %inv` with the
//! constant `%inv = 1/s : [K]` is inserted before the layers, which read `%x_s` ([`Applied::Explicit`]).
//! It costs one elementwise multiply per activation at run time; the residual keeps reading `%x`.
//!
//! An activation whose channel axis is dynamic in its type (BERT's attention context after a reshape to
//! computed shape pieces) is `K` at run time, as the layer's verifier demands; the values the rewrite
//! touches (the explicit product, a producer whose constant was widened to `[K]`) get types whose
//! channel axis says `K`.
//!
//! A constant shared with other ops is copied before it is changed, so those ops are unaffected; a
//! constant left without uses is removed (with its resource, when nothing else refers to it).
//!
//! The calibration statistics of the group's layers describe `X`; [`rescale_stats`] turns them into
//! statistics of `X'` (channel amax divided by `s`, amax recomputed, `X^T X` scaled on both sides). The
//! `|x|` histogram cannot be rescaled channel by channel and is dropped.
//!
//! Numerics: every new value is computed in f64 and rounded once to the constant's element type. When
//! every `s_j` is a power of two the rewrite is exact (barring overflow and subnormal results).

use qc_ir::attr::Attribute;
use qc_ir::module::{Func, Module, Op, Value};
use qc_ir::ops::QcOp;
use qc_ir::types::{Dim, TensorType};
use qc_ir::Diagnostic;
use qc_nn::NnOp;

use crate::calib::{self, LayerStats};
use crate::weights::{
    add_constant, constant_values, linears, read_weight, write_weight, Linear, LinearKind,
};

/// How the activation scale of a group was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Folded into a normalization's scale and bias (`nn.layer_norm`, or a written-out norm's
    /// `nn.mul` by gamma followed by `nn.add` of beta).
    Norm,
    /// Folded into the constant of an `nn.mul` (an RMSNorm's gamma, a scalar factor).
    Mul,
    /// Folded into the output columns (and bias) of the preceding linear layer.
    Linear,
    /// An explicit `nn.mul` by `1/s` before the layers.
    Explicit,
}

/// The `nn.matmul` and `nn.gemm` linear layers of function `fi` ([`linears`] without convolutions: their
/// channel axis is not the last one) whose activation's last axis is the reduction axis.
pub fn channel_linears(m: &Module, fi: usize) -> Vec<Linear> {
    let f = &m.funcs[fi];
    linears(m, fi)
        .into_iter()
        .filter(|l| {
            // A dynamic last axis is K at run time: the layer's verifier accepts nothing else.
            l.kind != LinearKind::Conv
                && f.ty(l.x)
                    .dims
                    .last()
                    .is_some_and(|d| d.as_static().is_none_or(|d| d == l.k as u64))
        })
        .collect()
}

/// The distinct activation values read by `layers`, in the order of their first reader.
pub fn activations(layers: &[Linear]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for l in layers {
        if !out.contains(&l.x) {
            out.push(l.x);
        }
    }
    out
}

/// The statistics recorded on `op` ([`calib::read`]), with a one-value `calib.ch_amax` (the splat
/// `dense<v>` that [`calib::write`] prints when every channel has the same amax) widened to `k` channels.
pub fn layer_stats(m: &Module, op: &Op, k: usize) -> Option<LayerStats> {
    let mut st = calib::read(m, op)?;
    if st.ch_amax.len() == 1 && k != 1 {
        st.ch_amax = vec![st.ch_amax[0]; k];
    }
    Some(st)
}

/// The statistics of `X' = X diag(1/s)` from those of `X`: channel amax divided by `s`, amax their
/// maximum, `X^T X` as `diag(1/s) X^T X diag(1/s)`; the histogram is dropped.
pub fn rescale_stats(st: &LayerStats, s: &[f64]) -> LayerStats {
    let ch_amax: Vec<f32> = st
        .ch_amax
        .iter()
        .zip(s)
        .map(|(&a, &sj)| (a as f64 / sj) as f32)
        .collect();
    let amax = ch_amax.iter().fold(0f32, |m, &v| m.max(v));
    let k = s.len();
    let xtx = st.xtx.as_ref().filter(|v| v.len() == k * k).map(|v| {
        v.iter()
            .enumerate()
            .map(|(i, &x)| (x as f64 / (s[i / k] * s[i % k])) as f32)
            .collect()
    });
    LayerStats {
        rows: st.rows,
        amax,
        ch_amax,
        hist: None,
        xtx,
    }
}

/// One change to a constant, found by [`plan`] and made by [`apply`]. Ops are named by a result value
/// (indices move when constants are inserted).
#[derive(Clone, Copy, Debug)]
enum Edit {
    /// Multiply constant operand `idx` of the op defining `at` by `1/s` along the last axis.
    Const { at: Value, idx: usize },
    /// Multiply the output columns of the linear layer defining `at` (weight operand 1) by `1/s`.
    Cols { at: Value, trans_b: bool },
}

/// The index of the op defining `v`.
fn def_index(f: &Func, v: Value) -> Option<usize> {
    f.ops.iter().position(|op| op.results.contains(&v))
}

/// Whether constant value `c` (readable float values) can be scaled along the last axis of a result of
/// rank at most `max_rank` whose last axis has length `k`: all its dims but the last are 1 and the last
/// is 1 or `k` (a scalar qualifies).
fn channel_const(m: &Module, f: &Func, c: Value, k: usize, max_rank: usize) -> bool {
    let Some(pi) = def_index(f, c) else {
        return false;
    };
    let ty = f.ty(c);
    let Some(shape) = ty.static_shape() else {
        return false;
    };
    if shape.len() > max_rank
        || shape.iter().rev().skip(1).any(|&d| d != 1)
        || shape.last().is_some_and(|&d| d != 1 && d as usize != k)
    {
        return false;
    }
    constant_values(m, &f.ops[pi], ty).is_some()
}

/// The edits that scale value `v` (last axis `k`) by `1/s` at its producer, or `None` when its producer
/// cannot absorb the scale. The caller has checked that `v` has no uses it must not change.
fn plan(m: &Module, fi: usize, v: Value, k: usize, uses: &[u32]) -> Option<(Vec<Edit>, Applied)> {
    let f = &m.funcs[fi];
    let pi = def_index(f, v)?;
    let op = &f.ops[pi];
    let rank = f.ty(v).rank();
    let is_const =
        |c: Value| def_index(f, c).is_some_and(|i| QcOp::of(&f.ops[i]) == Some(QcOp::Constant));
    match NnOp::of(op)? {
        NnOp::LayerNorm => {
            let axis = op.attr("axis").and_then(Attribute::as_int)?;
            let axis = if axis < 0 { axis + rank as i64 } else { axis };
            if !(0..rank as i64).contains(&axis) {
                return None;
            }
            let norm_rank = rank - axis as usize;
            (channel_const(m, f, op.operands[1], k, norm_rank)
                && channel_const(m, f, op.operands[2], k, norm_rank))
            .then(|| {
                (
                    vec![Edit::Const { at: v, idx: 1 }, Edit::Const { at: v, idx: 2 }],
                    Applied::Norm,
                )
            })
        }
        NnOp::Mul => {
            let ci = [1, 0].into_iter().find(|&i| {
                is_const(op.operands[i]) && channel_const(m, f, op.operands[i], k, rank)
            })?;
            Some((vec![Edit::Const { at: v, idx: ci }], Applied::Mul))
        }
        NnOp::Add => {
            let ci = [1, 0].into_iter().find(|&i| {
                is_const(op.operands[i]) && channel_const(m, f, op.operands[i], k, rank)
            })?;
            let a = op.operands[1 - ci];
            if a == op.operands[ci] || uses[a.0 as usize] != 1 || f.ty(a).dims != f.ty(v).dims {
                return None;
            }
            let (mut edits, how) = plan(m, fi, a, k, uses)?;
            edits.push(Edit::Const { at: v, idx: ci });
            // A written-out LayerNorm (gamma then beta) is a norm; an add after a mul is still a mul.
            let how = if how == Applied::Mul && is_norm_like(f, a) {
                Applied::Norm
            } else {
                how
            };
            Some((edits, how))
        }
        NnOp::Matmul => {
            let w = op.operands[1];
            let wt = f.ty(w);
            if !is_const(w) || wt.rank() != 2 || wt.dims[1].as_static() != Some(k as u64) {
                return None;
            }
            read_weight(m, fi, w)?;
            Some((
                vec![Edit::Cols {
                    at: v,
                    trans_b: false,
                }],
                Applied::Linear,
            ))
        }
        NnOp::Gemm => {
            let (b, c) = (op.operands[1], op.operands[2]);
            let tb = op.attr("trans_b").and_then(Attribute::as_int).unwrap_or(0) != 0;
            let bt = f.ty(b);
            let n_axis = usize::from(!tb);
            if !is_const(b)
                || bt.rank() != 2
                || bt.dims[n_axis].as_static() != Some(k as u64)
                || !is_const(c)
                || !channel_const(m, f, c, k, 2)
            {
                return None;
            }
            read_weight(m, fi, b)?;
            Some((
                vec![
                    Edit::Cols { at: v, trans_b: tb },
                    Edit::Const { at: v, idx: 2 },
                ],
                Applied::Linear,
            ))
        }
        _ => None,
    }
}

/// Whether `a` is produced by an `nn.mul` (the gamma step of a written-out norm).
fn is_norm_like(f: &Func, a: Value) -> bool {
    def_index(f, a).is_some_and(|i| NnOp::of(&f.ops[i]) == Some(NnOp::Mul))
}

/// A name for a new constant derived from the one defining `c`: its resource name, else its value name.
fn base_name(m: &Module, fi: usize, c: Value, tag: &str) -> String {
    let f = &m.funcs[fi];
    let base = def_index(f, c)
        .and_then(|i| match f.ops[i].attr("value") {
            Some(Attribute::DenseResource(r)) => Some(r.clone()),
            _ => None,
        })
        .or_else(|| f.value(c).name.clone())
        .unwrap_or_else(|| "c".into());
    format!("{base}.{tag}")
}

/// Removes the constant defining `c` when nothing uses it any more, and its resource when no op refers
/// to it.
fn drop_if_dead(m: &mut Module, fi: usize, c: Value) {
    let f = &mut m.funcs[fi];
    if f.use_counts()[c.0 as usize] != 0 {
        return;
    }
    let Some(i) = def_index(f, c) else { return };
    if QcOp::of(&f.ops[i]) != Some(QcOp::Constant) {
        return;
    }
    let op = f.ops.remove(i);
    if let Some(Attribute::DenseResource(r)) = op.attr("value") {
        drop_resource_if_unreferenced(m, r);
    }
}

/// Removes resource `r` when no op of `m` refers to it.
pub(crate) fn drop_resource_if_unreferenced(m: &mut Module, r: &str) {
    let referenced = m
        .funcs
        .iter()
        .flat_map(|g| g.ops.iter())
        .flat_map(|o| o.attrs.iter())
        .any(|(_, a)| matches!(a, Attribute::DenseResource(n) if n == r));
    if !referenced {
        m.resources.remove(r);
    }
}

/// Replaces operand `idx` of the op at index `oi` (a constant `c` of shape `new_shape` with values
/// `vals`): in place when the op is its only user and the shape is unchanged, else as a new constant.
#[allow(clippy::too_many_arguments)]
fn replace_const(
    m: &mut Module,
    fi: usize,
    oi: usize,
    idx: usize,
    new_shape: &[u64],
    vals: &[f32],
    tag: &str,
) -> Result<(), String> {
    let f = &m.funcs[fi];
    let c = f.ops[oi].operands[idx];
    let ty = f.ty(c).clone();
    let uses = f.use_counts()[c.0 as usize];
    if uses == 1 && ty.static_shape().as_deref() == Some(new_shape) {
        return write_weight(m, fi, c, vals);
    }
    let name = base_name(m, fi, c, tag);
    let nty = TensorType::new(new_shape, ty.elem.clone());
    let nc = add_constant(m, fi, oi, nty, vals, &name);
    m.funcs[fi].ops[oi + 1].operands[idx] = nc;
    drop_if_dead(m, fi, c);
    Ok(())
}

/// Makes one edit (see [`Edit`]) with the per-channel multiplier `d = 1/s`.
fn apply(m: &mut Module, fi: usize, e: Edit, d: &[f64], tag: &str) -> Result<(), String> {
    let k = d.len();
    match e {
        Edit::Const { at, idx } => {
            let f = &m.funcs[fi];
            let oi = def_index(f, at).ok_or("the producer vanished")?;
            let c = f.ops[oi].operands[idx];
            let ty = f.ty(c).clone();
            let pi = def_index(f, c).ok_or("the constant vanished")?;
            let vals = constant_values(m, &f.ops[pi], &ty).ok_or("the constant is unreadable")?;
            let mut shape = ty
                .static_shape()
                .ok_or("the constant has a dynamic shape")?;
            match shape.last_mut() {
                Some(last) => *last = k as u64,
                None => shape.push(k as u64),
            }
            let new: Vec<f32> = (0..k)
                .map(|j| (vals[if vals.len() == 1 { 0 } else { j }] as f64 * d[j]) as f32)
                .collect();
            replace_const(m, fi, oi, idx, &shape, &new, tag)
        }
        Edit::Cols { at, trans_b } => {
            let f = &m.funcs[fi];
            let oi = def_index(f, at).ok_or("the producer vanished")?;
            let w = f.ops[oi].operands[1];
            let shape = f.ty(w).static_shape().ok_or("dynamic weight shape")?;
            let stored = read_weight(m, fi, w).ok_or("the weight is unreadable")?;
            let (rows, cols) = (shape[0] as usize, shape[1] as usize);
            let new: Vec<f32> = stored
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    // Output channel of element i: its column, or its row for a transposed weight.
                    let j = if trans_b { i / cols } else { i % cols };
                    (v as f64 * d[j]) as f32
                })
                .collect();
            debug_assert_eq!(if trans_b { rows } else { cols }, k);
            replace_const(m, fi, oi, 1, &shape, &new, tag)
        }
    }
}

/// Rescales the group of layers of function `fi` that read activation `x` (see the module doc):
/// `W' = diag(s) W` for each, `X' = X diag(1/s)` at the producer or by an explicit multiply, and their
/// calibration statistics (when recorded) rescaled. `tag` names new constants (`NAME.tag`). Errors are
/// sentences; the caller adds the location.
pub fn rescale_group(
    m: &mut Module,
    fi: usize,
    x: Value,
    s: &[f64],
    tag: &str,
) -> Result<Applied, String> {
    let k = s.len();
    let d: Vec<f64> = s.iter().map(|&v| 1.0 / v).collect();
    let group: Vec<Linear> = channel_linears(m, fi)
        .into_iter()
        .filter(|l| l.x == x)
        .collect();
    if group.is_empty() || group.iter().any(|l| l.k != k) {
        return Err("the layers reading the activation disagree on its channel count".into());
    }
    let ys: Vec<Value> = group.iter().map(|l| l.y).collect();

    // Statistics first (read them all before writing any, in case layers share resources).
    let stats: Vec<Option<LayerStats>> = {
        let f = &m.funcs[fi];
        ys.iter()
            .map(|&y| def_index(f, y).and_then(|i| layer_stats(m, &f.ops[i], k)))
            .collect()
    };

    // Weights: W' = diag(s) W.
    for (l, &y) in group.iter().zip(&ys) {
        let f = &m.funcs[fi];
        let oi = def_index(f, y).ok_or("a layer vanished")?;
        let w = f.ops[oi].operands[1];
        let stored = read_weight(m, fi, w)
            .ok_or_else(|| format!("the weight of layer '{}' has no readable bytes", l.name))?;
        let mut kn = l.weight_kn(&stored);
        let n = l.n;
        for (i, v) in kn.iter_mut().enumerate() {
            *v = (*v as f64 * s[i / n]) as f32;
        }
        if kn.iter().any(|v| !v.is_finite()) {
            return Err(format!(
                "scaling the weight of layer '{}' overflows its element type",
                l.name
            ));
        }
        let shape = f.ty(w).static_shape().ok_or("dynamic weight shape")?;
        replace_const(m, fi, oi, 1, &shape, &l.weight_stored(&kn), tag)?;
    }

    // The activation: fold into its producer when x has no other users, else multiply explicitly.
    let f = &m.funcs[fi];
    let uses = f.use_counts();
    let only_group = uses[x.0 as usize] as usize == group.len()
        && ys.iter().all(|&y| {
            def_index(f, y).is_some_and(|i| {
                let ops = &f.ops[i].operands;
                ops[0] == x && ops[1..].iter().all(|&o| o != x)
            })
        });
    let planned = if only_group {
        plan(m, fi, x, k, &uses)
    } else {
        None
    };
    let applied = match planned {
        Some((edits, how)) => {
            for e in edits {
                apply(m, fi, e, &d, tag)?;
                // A constant widened to [K] makes the channel axis of the op's result static; its
                // declared type must say so (it is K at run time anyway).
                let (Edit::Const { at, .. } | Edit::Cols { at, .. }) = e;
                if let Some(last) = m.funcs[fi].value_mut(at).ty.dims.last_mut() {
                    *last = Dim::Static(k as u64);
                }
            }
            how
        }
        None => {
            let f = &m.funcs[fi];
            let xt = f.ty(x).clone();
            if !xt.elem.is_float() {
                return Err(format!("the activation has element type {}", xt.elem));
            }
            let first = ys
                .iter()
                .filter_map(|&y| def_index(f, y))
                .min()
                .ok_or("a layer vanished")?;
            let xname = f.value(x).name.clone().unwrap_or_else(|| "x".into());
            let inv: Vec<f32> = d.iter().map(|&v| v as f32).collect();
            let c = add_constant(
                m,
                fi,
                first,
                TensorType::new(&[k as u64], xt.elem.clone()),
                &inv,
                &format!("{xname}.{tag}"),
            );
            let f = &mut m.funcs[fi];
            // The product has x's type with the channel axis known to be K.
            let mut xst = xt;
            if let Some(last) = xst.dims.last_mut() {
                *last = Dim::Static(k as u64);
            }
            let xs = f.new_value(xst, Some(&format!("{xname}_{tag}")));
            let loc = f.ops[first + 1].loc.clone();
            f.ops.insert(
                first + 1,
                qc_ir::module::Op {
                    def: NnOp::Mul.def(),
                    operands: vec![x, c],
                    results: vec![xs],
                    attrs: Default::default(),
                    loc,
                },
            );
            for &y in &ys {
                if let Some(i) = def_index(f, y) {
                    f.ops[i].operands[0] = xs;
                }
            }
            Applied::Explicit
        }
    };

    // Statistics of the layers now describe X'.
    for ((l, &y), st) in group.iter().zip(&ys).zip(stats) {
        let Some(st) = st else { continue };
        let f = &m.funcs[fi];
        let Some(oi) = def_index(f, y) else { continue };
        let op = &f.ops[oi];
        let layer = match op.attr(calib::XTX) {
            Some(Attribute::DenseResource(r)) => r
                .strip_prefix("calib.")
                .and_then(|r| r.strip_suffix(".xtx"))
                .unwrap_or(&l.name)
                .to_string(),
            _ => l.name.clone(),
        };
        let new = rescale_stats(&st, s);
        calib::write(m, fi, oi, &layer, &new);
        if let Some(Attribute::DenseResource(h)) = m.funcs[fi].ops[oi].attrs.remove(calib::HIST) {
            drop_resource_if_unreferenced(m, &h);
        }
    }
    Ok(applied)
}

/// Checks that every layer has statistics of the right length and readable weights; the diagnostic is
/// at the first that does not.
pub fn check_layers(m: &Module, fi: usize, pass: &str) -> Result<(), Diagnostic> {
    let f = &m.funcs[fi];
    for l in channel_linears(m, fi) {
        let op = &f.ops[l.op];
        let Some(st) = layer_stats(m, op, l.k) else {
            return Err(Diagnostic::error(
                op.loc.clone(),
                calib::missing(pass, &l.name),
            ));
        };
        if st.ch_amax.len() != l.k {
            return Err(Diagnostic::error(
                op.loc.clone(),
                format!(
                    "{pass}: the calibration statistics of layer '{}' have {} channels, but it reads {}",
                    l.name,
                    st.ch_amax.len(),
                    l.k
                ),
            ));
        }
        if read_weight(m, fi, l.w).is_none() {
            return Err(Diagnostic::error(
                op.loc.clone(),
                format!(
                    "{pass}: the weight of layer '{}' has no bytes in the module (elided); it cannot be rescaled",
                    l.name
                ),
            ));
        }
    }
    Ok(())
}

/// Per group: the elementwise maximum of the layers' channel amax, and of their weight row amax.
pub fn group_amax(m: &Module, fi: usize, x: Value) -> (Vec<f32>, Vec<f32>) {
    let f = &m.funcs[fi];
    let group: Vec<_> = channel_linears(m, fi)
        .into_iter()
        .filter(|l| l.x == x)
        .collect();
    let k = group.first().map_or(0, |l| l.k);
    let (mut xa, mut wa) = (vec![0f32; k], vec![0f32; k]);
    for l in &group {
        if let Some(st) = layer_stats(m, &f.ops[l.op], l.k) {
            for (a, &b) in xa.iter_mut().zip(&st.ch_amax) {
                *a = a.max(b.abs());
            }
        }
        if let Some(w) = read_weight(m, fi, l.w) {
            let kn = l.weight_kn(&w);
            for (i, &v) in kn.iter().enumerate() {
                let j = i / l.n;
                wa[j] = wa[j].max(v.abs());
            }
        }
    }
    (xa, wa)
}

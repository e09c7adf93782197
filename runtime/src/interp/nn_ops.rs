//! Reference kernels for the nn ops that reduce: matmul, gemm, conv, pooling, normalization, softmax,
//! padding and reductions. Each accumulates in f64 in index order and rounds once to the element type.

use std::borrow::Cow;

use qc_ir::attr::{Attribute, Attrs};
use qc_ir::types::ElemType;
use qc_nn::{norm_axis, NnOp};

use super::tensor::{broadcast_map, round_to, strides, wrap, Data, Tensor};

fn ints(attrs: &Attrs, name: &str) -> Vec<i64> {
    attrs
        .get(name)
        .and_then(Attribute::as_int_array)
        .unwrap_or_default()
}

fn finish(elem: &ElemType, acc: Vec<f64>) -> Data {
    match elem {
        ElemType::Int { bits, unsigned } => Data::I(
            acc.into_iter()
                .map(|v| wrap(v as i64, *bits, *unsigned))
                .collect(),
        ),
        e => Data::F(acc.into_iter().map(|v| round_to(e, v)).collect()),
    }
}

/// The values of a tensor as f64s: borrowed for float tensors, converted for integer ones.
fn floats(t: &Tensor) -> Cow<'_, [f64]> {
    match &t.data {
        Data::F(v) => Cow::Borrowed(v),
        Data::I(v) => Cow::Owned(v.iter().map(|&x| x as f64).collect()),
    }
}

/// acc[j] += a * b[j] for every j (the inner loop of the kernels below; vectorizes).
#[inline]
fn axpy(acc: &mut [f64], a: f64, b: &[f64]) {
    for (o, &v) in acc.iter_mut().zip(b) {
        *o += a * v;
    }
}

/// ONNX MatMul: NumPy semantics with rank-1 promotion; `out` is the result shape. Each result element
/// is sum over p of a[i, p] * b[p, j], accumulated in f64 in increasing p, then rounded once.
pub fn matmul(a: &Tensor, b: &Tensor, out: &[usize]) -> Result<Data, String> {
    let a_shape: Vec<usize> = if a.shape.len() == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b_shape: Vec<usize> = if b.shape.len() == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (m, k, n) = (
        a_shape[a_shape.len() - 2],
        a_shape[a_shape.len() - 1],
        b_shape[b_shape.len() - 1],
    );
    let batch_a = &a_shape[..a_shape.len() - 2];
    let batch_b = &b_shape[..b_shape.len() - 2];
    let nb_dims = batch_a.len().max(batch_b.len());
    let mut batch: Vec<usize> = vec![1; nb_dims];
    for i in 0..nb_dims {
        let x = if i + batch_a.len() >= nb_dims {
            batch_a[i + batch_a.len() - nb_dims]
        } else {
            1
        };
        let y = if i + batch_b.len() >= nb_dims {
            batch_b[i + batch_b.len() - nb_dims]
        } else {
            1
        };
        batch[i] = x.max(y);
    }
    let (ia, ib) = (
        broadcast_map(batch_a, &batch),
        broadcast_map(batch_b, &batch),
    );
    let nb: usize = batch.iter().product();
    let (av, bv) = (floats(a), floats(b));
    let mut acc = vec![0.0f64; nb * m * n];
    for bi in 0..nb {
        let (xa, yb) = (ia[bi] * m * k, ib[bi] * k * n);
        for i in 0..m {
            let row = &mut acc[(bi * m + i) * n..(bi * m + i + 1) * n];
            for p in 0..k {
                axpy(row, av[xa + i * k + p], &bv[yb + p * n..yb + (p + 1) * n]);
            }
        }
    }
    debug_assert_eq!(acc.len(), out.iter().product::<usize>());
    Ok(finish(&a.elem, acc))
}

/// ONNX Gemm: alpha * A' B' + beta * C; each product summed in f64 in increasing k.
pub fn gemm(inputs: &[Tensor], attrs: &Attrs, out: &[usize]) -> Result<Data, String> {
    let (a, b, c) = (&inputs[0], &inputs[1], &inputs[2]);
    let ta = attrs
        .get("trans_a")
        .and_then(Attribute::as_int)
        .unwrap_or(0)
        != 0;
    let tb = attrs
        .get("trans_b")
        .and_then(Attribute::as_int)
        .unwrap_or(0)
        != 0;
    let alpha = attrs
        .get("alpha")
        .and_then(Attribute::as_f64)
        .unwrap_or(1.0);
    let beta = attrs.get("beta").and_then(Attribute::as_f64).unwrap_or(1.0);
    let (m, n) = (out[0], out[1]);
    let k = if ta { a.shape[0] } else { a.shape[1] };
    let ic = broadcast_map(&c.shape, out);
    let (av, bv, cv) = (floats(a), floats(b), floats(c));
    let mut acc = vec![0.0; m * n];
    let mut arow = vec![0.0; k];
    for i in 0..m {
        for (p, v) in arow.iter_mut().enumerate() {
            *v = if ta { av[p * m + i] } else { av[i * k + p] };
        }
        let row = &mut acc[i * n..(i + 1) * n];
        if tb {
            // B' row p is B column p: each result is a dot product of two contiguous rows.
            for (j, r) in row.iter_mut().enumerate() {
                let b = &bv[j * k..(j + 1) * k];
                *r = arow.iter().zip(b).fold(0.0, |s, (&x, &y)| s + x * y);
            }
        } else {
            for (p, &x) in arow.iter().enumerate() {
                axpy(row, x, &bv[p * n..(p + 1) * n]);
            }
        }
        for (j, r) in row.iter_mut().enumerate() {
            *r = alpha * *r + beta * cv[ic[i * n + j]];
        }
    }
    Ok(finish(&a.elem, acc))
}

/// Iterates over every output position of an N-d window op, calling `f(batch, channel, out_flat,
/// window_origin)`.
fn spatial_positions(out: &[usize]) -> impl Iterator<Item = Vec<usize>> + '_ {
    let sp = &out[2..];
    let n: usize = sp.iter().product();
    let st = strides(sp);
    (0..n).map(move |f| (0..sp.len()).map(|d| f / st[d] % sp[d]).collect())
}

/// Output positions per tile of the convolution kernel.
const TILE: usize = 64;

/// ONNX Conv with explicit pads, dilations, strides and groups. Each output is the bias plus, in
/// increasing (input channel, kernel position) order, the products of weights and inputs (padding
/// reads as zero), summed in f64 and rounded once. Computed a tile of output positions at a time: the
/// inputs each tile reads are gathered into columns, then every output channel is a sequence of axpys.
pub fn conv(inputs: &[Tensor], attrs: &Attrs, out: &[usize]) -> Result<Data, String> {
    let (x, w, bias) = (&inputs[0], &inputs[1], &inputs[2]);
    let (k, s, p, d) = (
        ints(attrs, "kernel_shape"),
        ints(attrs, "strides"),
        ints(attrs, "pads"),
        ints(attrs, "dilations"),
    );
    let g = attrs.get("group").and_then(Attribute::as_int).unwrap_or(1) as usize;
    let sp = k.len();
    let (n_batch, c_in, m_out) = (x.shape[0], x.shape[1], out[1]);
    if g == 0 || c_in % g != 0 || m_out % g != 0 || w.shape[1] * g != c_in {
        return Err(format!(
            "conv: {c_in} input and {m_out} output channels, weights {:?}, group {g} do not fit",
            w.shape
        ));
    }
    if !bias.is_empty() && bias.len() != m_out {
        return Err(format!(
            "conv: {} biases for {m_out} output channels",
            bias.len()
        ));
    }
    let (cg, mg) = (c_in / g, m_out / g);
    let in_sp = &x.shape[2..];
    let xs = strides(&x.shape);
    let kn: usize = k.iter().map(|&v| v as usize).product();
    let kst = strides(&k.iter().map(|&v| v as usize).collect::<Vec<_>>());
    let kk = cg * kn;
    let n_pos: usize = out[2..].iter().product();
    let (xv, wv, bv) = (floats(x), floats(w), floats(bias));
    // For each kernel position and each output position: the input's spatial offset, or None in padding.
    let positions: Vec<Vec<usize>> = spatial_positions(out).collect();
    let mut offsets: Vec<Option<usize>> = Vec::with_capacity(kn * n_pos);
    for kf in 0..kn {
        for pos in &positions {
            let mut off = Some(0usize);
            for dd in 0..sp {
                let kc = (kf / kst[dd] % k[dd] as usize) as i64;
                let coord = pos[dd] as i64 * s[dd] - p[dd] + kc * d[dd];
                if coord < 0 || coord >= in_sp[dd] as i64 {
                    off = None;
                    break;
                }
                off = off.map(|o| o + coord as usize * xs[2 + dd]);
            }
            offsets.push(off);
        }
    }
    let mut acc = vec![0.0; n_batch * m_out * n_pos];
    let mut cols = vec![0.0; kk * TILE];
    for b in 0..n_batch {
        for grp in 0..g {
            for p0 in (0..n_pos).step_by(TILE) {
                let t = TILE.min(n_pos - p0);
                for c in 0..cg {
                    let base = b * xs[0] + (grp * cg + c) * xs[1];
                    for kf in 0..kn {
                        let col = &mut cols[(c * kn + kf) * TILE..][..t];
                        let offs = &offsets[kf * n_pos + p0..][..t];
                        for (v, o) in col.iter_mut().zip(offs) {
                            *v = o.map_or(0.0, |o| xv[base + o]);
                        }
                    }
                }
                // Output channels four at a time: each column is read once for four rows.
                let (m0, m1) = (grp * mg, (grp + 1) * mg);
                let mut m = m0;
                while m < m1 {
                    let r = (m1 - m).min(4);
                    let mut rows = [[0.0f64; TILE]; 4];
                    for (q, row) in rows.iter_mut().enumerate().take(r) {
                        row[..t].fill(if bv.is_empty() { 0.0 } else { bv[m + q] });
                    }
                    if r == 4 {
                        let w: [&[f64]; 4] =
                            std::array::from_fn(|q| &wv[(m + q) * kk..(m + q + 1) * kk]);
                        let [r0, r1, r2, r3] = &mut rows;
                        for q in 0..kk {
                            let col = &cols[q * TILE..q * TILE + t];
                            let (a0, a1, a2, a3) = (w[0][q], w[1][q], w[2][q], w[3][q]);
                            for (j, &v) in col.iter().enumerate() {
                                r0[j] += a0 * v;
                                r1[j] += a1 * v;
                                r2[j] += a2 * v;
                                r3[j] += a3 * v;
                            }
                        }
                    } else {
                        for (qq, row) in rows.iter_mut().enumerate().take(r) {
                            let wrow = &wv[(m + qq) * kk..(m + qq + 1) * kk];
                            for (q, &wq) in wrow.iter().enumerate() {
                                axpy(&mut row[..t], wq, &cols[q * TILE..q * TILE + t]);
                            }
                        }
                    }
                    for (q, row) in rows.iter().enumerate().take(r) {
                        acc[(b * m_out + m + q) * n_pos + p0..][..t].copy_from_slice(&row[..t]);
                    }
                    m += r;
                }
            }
        }
    }
    Ok(finish(&x.elem, acc))
}

/// ONNX MaxPool / AveragePool with explicit pads.
pub fn pool(max: bool, x: &Tensor, attrs: &Attrs, out: &[usize]) -> Result<Data, String> {
    let (k, s, p, d) = (
        ints(attrs, "kernel_shape"),
        ints(attrs, "strides"),
        ints(attrs, "pads"),
        ints(attrs, "dilations"),
    );
    let include_pad = attrs
        .get("count_include_pad")
        .and_then(Attribute::as_int)
        .unwrap_or(0)
        != 0;
    let sp = k.len();
    let in_sp = &x.shape[2..];
    let xs = strides(&x.shape);
    let kn: usize = k.iter().map(|&v| v as usize).product();
    let kst = strides(&k.iter().map(|&v| v as usize).collect::<Vec<_>>());
    let positions: Vec<Vec<usize>> = spatial_positions(out).collect();
    let mut acc = Vec::with_capacity(out.iter().product());
    for b in 0..x.shape[0] {
        for c in 0..x.shape[1] {
            for pos in &positions {
                let (mut best, mut sum, mut count, mut padded_count) =
                    (f64::NEG_INFINITY, 0.0, 0usize, 0usize);
                for kf in 0..kn {
                    let mut xi = b * xs[0] + c * xs[1];
                    let mut inside = true;
                    let mut in_padded = true;
                    for dd in 0..sp {
                        let kk = (kf / kst[dd] % k[dd] as usize) as i64;
                        let coord = pos[dd] as i64 * s[dd] - p[dd] + kk * d[dd];
                        if coord < -p[dd] || coord >= in_sp[dd] as i64 + p[sp + dd] {
                            in_padded = false;
                        }
                        if coord < 0 || coord >= in_sp[dd] as i64 {
                            inside = false;
                        } else {
                            xi += coord as usize * xs[2 + dd];
                        }
                    }
                    if in_padded {
                        padded_count += 1;
                    }
                    if inside {
                        let v = x.data.f(xi);
                        if v > best || v.is_nan() {
                            best = v;
                        }
                        sum += v;
                        count += 1;
                    }
                }
                acc.push(if max {
                    best
                } else {
                    sum / (if include_pad { padded_count } else { count }).max(1) as f64
                });
            }
        }
    }
    Ok(finish(&x.elem, acc))
}

/// Global average or max pooling over all spatial dimensions.
pub fn global_pool(max: bool, x: &Tensor) -> Result<Data, String> {
    let (nc, sp) = (
        x.shape[0] * x.shape[1],
        x.shape[2..].iter().product::<usize>(),
    );
    let acc = (0..nc)
        .map(|i| {
            let vals = (0..sp).map(|j| x.data.f(i * sp + j));
            if max {
                vals.fold(f64::NEG_INFINITY, f64::max)
            } else {
                vals.sum::<f64>() / sp.max(1) as f64
            }
        })
        .collect();
    Ok(finish(&x.elem, acc))
}

/// Inference-mode batch normalization over channel 1.
pub fn batch_norm(inputs: &[Tensor], eps: f64) -> Result<Data, String> {
    let (x, scale, bias, mean, var) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4]);
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let acc = (0..x.len())
        .map(|i| {
            let ch = i / inner % c;
            (x.data.f(i) - mean.data.f(ch)) / (var.data.f(ch) + eps).sqrt() * scale.data.f(ch)
                + bias.data.f(ch)
        })
        .collect();
    Ok(finish(&x.elem, acc))
}

/// Layer normalization over the dimensions from `axis` on.
pub fn layer_norm(inputs: &[Tensor], axis: i64, eps: f64) -> Result<Data, String> {
    let (x, scale, bias) = (&inputs[0], &inputs[1], &inputs[2]);
    let a = norm_axis(axis, x.shape.len())?;
    let inner: usize = x.shape[a..].iter().product();
    let norm_shape = &x.shape[a..];
    let (is, ib) = (
        broadcast_map(&scale.shape, norm_shape),
        broadcast_map(&bias.shape, norm_shape),
    );
    let mut acc = Vec::with_capacity(x.len());
    for o in 0..x.len() / inner.max(1) {
        let vals: Vec<f64> = (0..inner).map(|j| x.data.f(o * inner + j)).collect();
        let mean = vals.iter().sum::<f64>() / inner as f64;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / inner as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, v) in vals.iter().enumerate() {
            acc.push((v - mean) * inv * scale.data.f(is[j]) + bias.data.f(ib[j]));
        }
    }
    Ok(finish(&x.elem, acc))
}

/// Softmax (or log-softmax) along `axis`.
pub fn softmax(x: &Tensor, axis: i64, log: bool) -> Result<Data, String> {
    let a = norm_axis(axis, x.shape.len())?;
    let n = x.shape[a];
    let inner: usize = x.shape[a + 1..].iter().product();
    let outer: usize = x.shape[..a].iter().product();
    let mut acc = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * n + j) * inner + i;
            let m = (0..n)
                .map(|j| x.data.f(at(j)))
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..n).map(|j| (x.data.f(at(j)) - m).exp()).sum();
            for j in 0..n {
                let v = x.data.f(at(j)) - m;
                acc[at(j)] = if log { v - sum.ln() } else { v.exp() / sum };
            }
        }
    }
    Ok(finish(&x.elem, acc))
}

/// Padding: constant, edge, reflect or wrap.
pub fn pad(
    x: &Tensor,
    pads: &Tensor,
    value: &Tensor,
    attrs: &Attrs,
    out: &[usize],
) -> Result<Data, String> {
    let mode = match attrs.get("mode") {
        Some(Attribute::Str(s)) => s.as_str(),
        _ => "constant",
    };
    let r = x.shape.len();
    let begin: Vec<i64> = (0..r).map(|i| pads.data.i(i)).collect();
    let (xs, os) = (strides(&x.shape), strides(out));
    let fill = if value.is_empty() {
        0.0
    } else {
        value.data.f(0)
    };
    let mut src: Vec<Option<usize>> = Vec::with_capacity(out.iter().product());
    for flat in 0..out.iter().product() {
        let mut idx = 0usize;
        let mut inside = true;
        for dd in 0..r {
            let n = x.shape[dd] as i64;
            let mut c = (flat / os[dd] % out[dd]) as i64 - begin[dd];
            if c < 0 || c >= n {
                match mode {
                    "constant" => {
                        inside = false;
                        break;
                    }
                    "edge" => c = c.clamp(0, n - 1),
                    "wrap" => c = c.rem_euclid(n),
                    "reflect" if n > 1 => {
                        let period = 2 * (n - 1);
                        let m = c.rem_euclid(period);
                        c = if m < n { m } else { period - m };
                    }
                    "reflect" => c = 0,
                    other => {
                        return Err(format!(
                            "unknown pad mode '{other}' (expected constant, edge, reflect, wrap)"
                        ))
                    }
                }
            }
            idx += c as usize * xs[dd];
        }
        src.push(inside.then_some(idx));
    }
    Ok(match &x.data {
        Data::F(v) => Data::F(
            src.iter()
                .map(|s| s.map_or(round_to(&x.elem, fill), |i| v[i]))
                .collect(),
        ),
        Data::I(v) => Data::I(
            src.iter()
                .map(|s| s.map_or(fill as i64, |i| v[i]))
                .collect(),
        ),
    })
}

/// Reductions over `axes` (sorted or not); the output keeps the input's element order.
pub fn reduce(op: NnOp, x: &Tensor, axes: &[usize], elem: &ElemType) -> Result<Data, String> {
    let rank = x.shape.len();
    let kept: Vec<usize> = (0..rank)
        .map(|d| if axes.contains(&d) { 1 } else { x.shape[d] })
        .collect();
    let (ks, xs) = (strides(&kept), strides(&x.shape));
    let n_out: usize = kept.iter().product();
    let count: usize = axes.iter().map(|&a| x.shape[a]).product();
    let init = match op {
        NnOp::ReduceMax => f64::NEG_INFINITY,
        NnOp::ReduceMin => f64::INFINITY,
        NnOp::ReduceProd => 1.0,
        _ => 0.0,
    };
    if x.is_int() && matches!(op, NnOp::ReduceMax | NnOp::ReduceMin) && count == 0 {
        return Err("max/min over an empty set of integers".into());
    }
    let mut acc = vec![init; n_out];
    for flat in 0..x.len() {
        let t: usize = (0..rank)
            .map(|d| {
                if axes.contains(&d) {
                    0
                } else {
                    flat / xs[d] % x.shape[d] * ks[d]
                }
            })
            .sum();
        let v = x.data.f(flat);
        acc[t] = match op {
            NnOp::ReduceMax => {
                if v > acc[t] || v.is_nan() {
                    v
                } else {
                    acc[t]
                }
            }
            NnOp::ReduceMin => {
                if v < acc[t] || v.is_nan() {
                    v
                } else {
                    acc[t]
                }
            }
            NnOp::ReduceProd => acc[t] * v,
            _ => acc[t] + v,
        };
    }
    if op == NnOp::ReduceMean {
        for a in &mut acc {
            *a /= count as f64;
        }
    }
    Ok(finish(elem, acc))
}

/// Index of the maximum (or minimum) along `axis`.
pub fn arg_reduce(max: bool, x: &Tensor, axis: usize, last: bool) -> Data {
    let n = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let mut best = 0usize;
            for j in 1..n {
                let (v, b) = (
                    x.data.f((o * n + j) * inner + i),
                    x.data.f((o * n + best) * inner + i),
                );
                let better = if max {
                    v > b || (last && v == b)
                } else {
                    v < b || (last && v == b)
                };
                if better {
                    best = j;
                }
            }
            out.push(best as i64);
        }
    }
    Data::I(out)
}

/// ONNX LRN across dimension 1: x / (bias + alpha / size * s)^beta, s the sum of squares over channels
/// c - floor((size - 1) / 2) ..= c + ceil((size - 1) / 2), clipped to the tensor.
pub fn lrn(x: &Tensor, attrs: &Attrs) -> Result<Data, String> {
    let f = |n: &str, d: f64| attrs.get(n).and_then(Attribute::as_f64).unwrap_or(d);
    let size = attrs
        .get("size")
        .and_then(Attribute::as_int)
        .unwrap_or(1)
        .max(1) as usize;
    let (alpha, beta, bias) = (f("alpha", 1e-4), f("beta", 0.75), f("bias", 1.0));
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let xv = floats(x);
    let (lo, hi) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let mut acc = vec![0.0; x.len()];
    for n in 0..x.shape[0] {
        for ch in 0..c {
            for i in 0..inner {
                let at = |k: usize| (n * c + k) * inner + i;
                let s: f64 = (ch.saturating_sub(lo)..=(ch + hi).min(c - 1))
                    .map(|k| xv[at(k)] * xv[at(k)])
                    .sum();
                acc[at(ch)] = xv[at(ch)] / (bias + alpha / size as f64 * s).powf(beta);
            }
        }
    }
    Ok(finish(&x.elem, acc))
}

/// ONNX NegativeLogLikelihoodLoss (see the op's documentation); sums in f64, rounded once.
pub fn nll_loss(inputs: &[Tensor], attrs: &Attrs, elem: &ElemType) -> Result<Data, String> {
    let (x, target, weight) = (&inputs[0], &inputs[1], &inputs[2]);
    let ignore = attrs.get("ignore_index").and_then(Attribute::as_int);
    let reduction = match attrs.get("reduction") {
        Some(Attribute::Str(s)) => s.as_str(),
        _ => "mean",
    };
    let (n, c) = (x.shape[0], x.shape[1]);
    let d: usize = x.shape[2..].iter().product();
    if weight.len() != c {
        return Err(format!(
            "nll_loss weight has {} entries for {c} classes",
            weight.len()
        ));
    }
    if target.len() != n * d || target.shape.first() != Some(&n) {
        return Err(format!(
            "nll_loss target {:?} does not fit input {:?}",
            target.shape, x.shape
        ));
    }
    let (xv, wv) = (floats(x), floats(weight));
    let mut loss = Vec::with_capacity(n * d);
    let (mut sum, mut wsum) = (0.0, 0.0);
    for i in 0..n {
        for j in 0..d {
            let t = target.data.i(i * d + j);
            if Some(t) == ignore {
                loss.push(0.0);
                continue;
            }
            if !(0..c as i64).contains(&t) {
                return Err(format!("nll_loss target {t} is outside 0..{c}"));
            }
            let w = wv[t as usize];
            let l = -xv[(i * c + t as usize) * d + j] * w;
            loss.push(l);
            sum += l;
            wsum += w;
        }
    }
    Ok(match reduction {
        "none" => finish(elem, loss),
        "sum" => finish(elem, vec![sum]),
        _ => finish(elem, vec![sum / wsum]),
    })
}

/// ONNX ConvTranspose with explicit pads: every input element, times every kernel weight, is added at
/// its output position (input position * stride - pad begin + kernel position * dilation); sums in f64,
/// then the bias, rounded once.
pub fn conv_transpose(inputs: &[Tensor], attrs: &Attrs, out: &[usize]) -> Result<Data, String> {
    let (x, w, bias) = (&inputs[0], &inputs[1], &inputs[2]);
    let (k, s, p, d) = (
        ints(attrs, "kernel_shape"),
        ints(attrs, "strides"),
        ints(attrs, "pads"),
        ints(attrs, "dilations"),
    );
    let g = attrs
        .get("group")
        .and_then(Attribute::as_int)
        .unwrap_or(1)
        .max(1) as usize;
    let sp = k.len();
    let (c_in, m_out) = (x.shape[1], out[1]);
    if c_in % g != 0 || m_out % g != 0 || w.shape[0] != c_in || w.shape[1] * g != m_out {
        return Err(format!(
            "conv_transpose: {c_in} input and {m_out} output channels, weights {:?}, group {g} do not fit",
            w.shape
        ));
    }
    if !bias.is_empty() && bias.len() != m_out {
        return Err(format!(
            "conv_transpose: {} biases for {m_out} outputs",
            bias.len()
        ));
    }
    let (cg, mg) = (c_in / g, m_out / g);
    let in_sp = &x.shape[2..];
    let out_sp = &out[2..];
    let n_in: usize = in_sp.iter().product();
    let n_out: usize = out_sp.iter().product();
    let kn: usize = k.iter().map(|&v| v as usize).product();
    let (ist, ost) = (strides(in_sp), strides(out_sp));
    let kst = strides(&k.iter().map(|&v| v as usize).collect::<Vec<_>>());
    let (xv, wv, bv) = (floats(x), floats(w), floats(bias));
    // For each input position and kernel position: the output offset, or None outside the result.
    let mut target = Vec::with_capacity(n_in * kn);
    for ip in 0..n_in {
        for kf in 0..kn {
            let mut off = Some(0usize);
            for dd in 0..sp {
                let i = (ip / ist[dd] % in_sp[dd]) as i64;
                let kk = (kf / kst[dd] % k[dd] as usize) as i64;
                let o = i * s[dd] - p[dd] + kk * d[dd];
                if o < 0 || o >= out_sp[dd] as i64 {
                    off = None;
                    break;
                }
                off = off.map(|v| v + o as usize * ost[dd]);
            }
            target.push(off);
        }
    }
    let mut acc = vec![0.0; x.shape[0] * m_out * n_out];
    for b in 0..x.shape[0] {
        for grp in 0..g {
            for c in 0..cg {
                let ci = grp * cg + c;
                let xrow = &xv[(b * c_in + ci) * n_in..][..n_in];
                for m in 0..mg {
                    let mo = grp * mg + m;
                    let wrow = &wv[(ci * mg + m) * kn..][..kn];
                    let orow = &mut acc[(b * m_out + mo) * n_out..][..n_out];
                    for (ip, &xval) in xrow.iter().enumerate() {
                        for (kf, &wval) in wrow.iter().enumerate() {
                            if let Some(o) = target[ip * kn + kf] {
                                orow[o] += xval * wval;
                            }
                        }
                    }
                }
            }
        }
        if !bv.is_empty() {
            for mo in 0..m_out {
                for v in &mut acc[(b * m_out + mo) * n_out..][..n_out] {
                    *v += bv[mo];
                }
            }
        }
    }
    Ok(finish(&x.elem, acc))
}

/// ONNX CumSum along `axis`; integer sums wrap, float sums accumulate in f64 and round each result once.
pub fn cum_sum(x: &Tensor, axis: usize, exclusive: bool, reverse: bool, elem: &ElemType) -> Data {
    let n = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let order: Vec<usize> = if reverse {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    };
    match (&x.data, elem) {
        (Data::I(v), ElemType::Int { bits, unsigned }) => {
            let mut out = vec![0i64; v.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let mut s = 0i64;
                    for &j in &order {
                        let at = (o * n + j) * inner + i;
                        if exclusive {
                            out[at] = wrap(s, *bits, *unsigned);
                            s = s.wrapping_add(v[at]);
                        } else {
                            s = s.wrapping_add(v[at]);
                            out[at] = wrap(s, *bits, *unsigned);
                        }
                    }
                }
            }
            Data::I(out)
        }
        _ => {
            let xv = floats(x);
            let mut out = vec![0.0; xv.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let mut s = 0.0;
                    for &j in &order {
                        let at = (o * n + j) * inner + i;
                        if exclusive {
                            out[at] = s;
                            s += xv[at];
                        } else {
                            s += xv[at];
                            out[at] = s;
                        }
                    }
                }
            }
            finish(elem, out)
        }
    }
}

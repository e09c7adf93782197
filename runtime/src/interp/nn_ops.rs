//! Reference kernels for the nn ops that reduce: matmul, gemm, conv, pooling, normalization, softmax,
//! padding and reductions. Each accumulates in f64 in index order and rounds once to the element type.

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

/// ONNX MatMul: NumPy semantics with rank-1 promotion; `out` is the result shape.
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
    let mut acc = vec![0.0f64; nb * m * n];
    for bi in 0..nb {
        let (xa, yb) = (ia[bi] * m * k, ib[bi] * k * n);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    s += a.data.f(xa + i * k + p) * b.data.f(yb + p * n + j);
                }
                acc[bi * m * n + i * n + j] = s;
            }
        }
    }
    debug_assert_eq!(acc.len(), out.iter().product::<usize>());
    Ok(finish(&a.elem, acc))
}

/// ONNX Gemm: alpha * A' B' + beta * C.
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
    let mut acc = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                let av = if ta {
                    a.data.f(p * m + i)
                } else {
                    a.data.f(i * k + p)
                };
                let bv = if tb {
                    b.data.f(j * k + p)
                } else {
                    b.data.f(p * n + j)
                };
                s += av * bv;
            }
            acc[i * n + j] = alpha * s + beta * c.data.f(ic[i * n + j]);
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

/// ONNX Conv with explicit pads, dilations, strides and groups.
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
    let (cg, mg) = (c_in / g, m_out / g);
    let in_sp = &x.shape[2..];
    let (xs, ws) = (strides(&x.shape), strides(&w.shape));
    let kn: usize = k.iter().map(|&v| v as usize).product();
    let kst = strides(&k.iter().map(|&v| v as usize).collect::<Vec<_>>());
    let positions: Vec<Vec<usize>> = spatial_positions(out).collect();
    let mut acc = Vec::with_capacity(out.iter().product());
    for b in 0..n_batch {
        for m in 0..m_out {
            let grp = m / mg;
            for pos in &positions {
                let mut sum = if bias.is_empty() { 0.0 } else { bias.data.f(m) };
                for c in 0..cg {
                    let ci = grp * cg + c;
                    for kf in 0..kn {
                        let mut xi = b * xs[0] + ci * xs[1];
                        let mut inside = true;
                        let mut wi = m * ws[0] + c * ws[1];
                        for dd in 0..sp {
                            let kk = kf / kst[dd] % k[dd] as usize;
                            let coord = (pos[dd] as i64) * s[dd] - p[dd] + kk as i64 * d[dd];
                            if coord < 0 || coord >= in_sp[dd] as i64 {
                                inside = false;
                                break;
                            }
                            xi += coord as usize * xs[2 + dd];
                            wi += kk * ws[2 + dd];
                        }
                        if inside {
                            sum += x.data.f(xi) * w.data.f(wi);
                        }
                    }
                }
                acc.push(sum);
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

//! Window ops of the upstream export: convolutions, transposed convolutions, pooling and local response
//! normalization (NCHW... layouts, the nn dialect's explicit pads `[begin..., end...]`).
//!
//! Every op is one gather generic that lays the input out as its windows read it (padding, and for
//! transposed convolutions the stride's zeros, written as the fill value), then one `linalg.generic`
//! whose input maps are affine in the output and window loops (`o * stride + k * dilation`). Loops
//! that appear in no operand as a plain dimension (the window of a pooling) get a dummy `tensor.empty`
//! operand of the window's shape, as MLIR's named pooling ops do. Under
//! [`super::ExportOptions::float_matmul_calls`] the f32 convolutions with at least 4 output channels
//! per group are im2col and a [`KernelOp::Sgemm`] call instead. Sums accumulate in f32 (f64 for f64
//! tensors), each output over its window in row-major (input channel, kernel position) order; the
//! reference interpreter sums in f64, so results agree to f32 rounding, not bit for bit (maxima are
//! exact).

use qc_ir::attr::Attribute as QAttr;
use qc_nn::NnOp;

use super::{ids, Bin, Cx, El, KernelCall, KernelOp, H, R, U, V};

/// The window attributes of a conv / pool op: kernel shape, strides, pads `[begin..., end...]`,
/// dilations (defaults 1 and 0 where the dialect allows them to be missing).
struct Window {
    k: Vec<i64>,
    s: Vec<i64>,
    p: Vec<i64>,
    d: Vec<i64>,
}

fn window(cx: &Cx, sp: usize) -> R<Window> {
    let get = |n: &str, default: i64, len: usize| -> R<Vec<i64>> {
        let v = cx
            .op
            .attr(n)
            .and_then(QAttr::as_int_array)
            .unwrap_or_default();
        if v.is_empty() {
            return Ok(vec![default; len]);
        }
        if v.len() != len {
            return Err(format!("{n} has {} entries, not {len}", v.len()));
        }
        Ok(v)
    };
    let k = get("kernel_shape", 1, sp)?;
    let w = Window {
        s: get("strides", 1, sp)?,
        p: get("pads", 0, 2 * sp)?,
        d: get("dilations", 1, sp)?,
        k,
    };
    if w.k.iter().chain(&w.s).chain(&w.d).any(|&v| v <= 0) {
        return Err("kernel sizes, strides and dilations must be positive".into());
    }
    Ok(w)
}

/// The element type sums are computed in: f64 for f64 tensors, f32 for the other floats.
fn acc_type(e: El) -> R<El> {
    match e {
        El::F64 => Ok(El::F64),
        El::F32 | El::F16 | El::BF16 => Ok(El::F32),
        _ => Err(format!(
            "window ops on {} tensors are not supported (floats only)",
            e.mlir()
        )),
    }
}

/// `y[n, c, j...] = x[n, c, (j - lo) / stride]` when `j - lo` is a non-negative multiple of `stride`
/// whose quotient is inside the input, else `fill`, over the spatial dimensions (2..) of `x`; `out`
/// are the result's spatial sizes. With stride 1 this is constant padding (a negative `lo` crops);
/// with a larger stride it also spreads the input out (the zeros of a transposed convolution). The
/// input itself is returned when nothing changes.
fn spread<'c, 'b>(
    u: &U<'c, 'b>,
    x: V<'c, 'b>,
    lo: &[i64],
    stride: &[i64],
    out: &[u64],
    fill: f64,
) -> R<V<'c, 'b>> {
    let xs = u.shape(&x);
    let sp = xs.len() - 2;
    if (0..sp).all(|i| lo[i] == 0 && stride[i] == 1 && out[i] == xs[2 + i]) {
        return Ok(x);
    }
    let mut shape = xs[..2].to_vec();
    shape.extend_from_slice(out);
    let r = shape.len();
    let e = x.e;
    u.generic(&[], &[x.v], r, &[], ids(0..r), &shape, e, None, |b| {
        // Handles: 0 the output element, 1 the input tensor. (The fill value is a constant of the
        // body: a scalar read in the function body would be host code on the NVIDIA targets.)
        let mut coords = vec![1, b.loop_index(0)?, b.loop_index(1)?];
        let mut inside: Option<H> = None;
        let zero = b.index(0)?;
        for i in 0..sp {
            let n = xs[2 + i] as i64;
            let j = b.loop_index(2 + i)?;
            if lo[i] == 0 && stride[i] == 1 && out[i] == xs[2 + i] {
                coords.push(j);
                continue;
            }
            let l = b.index(lo[i])?;
            let t = b.op("arith.subi", &[j, l], &[], "index")?;
            let mut ok = b.op(
                "arith.cmpi",
                &[t, zero],
                &[("predicate", "5 : i64".into())],
                "i1",
            )?;
            let tc = b.op("arith.maxsi", &[t, zero], &[], "index")?;
            let q = if stride[i] == 1 {
                tc
            } else {
                let s = b.index(stride[i])?;
                let rem = b.op("arith.remui", &[tc, s], &[], "index")?;
                let exact = b.op(
                    "arith.cmpi",
                    &[rem, zero],
                    &[("predicate", "0 : i64".into())],
                    "i1",
                )?;
                ok = b.op("arith.andi", &[ok, exact], &[], "i1")?;
                b.op("arith.divui", &[tc, s], &[], "index")?
            };
            let n1 = b.index(n - 1)?;
            let le = b.op(
                "arith.cmpi",
                &[q, n1],
                &[("predicate", "3 : i64".into())],
                "i1",
            )?;
            ok = b.op("arith.andi", &[ok, le], &[], "i1")?;
            inside = Some(match inside {
                None => ok,
                Some(p) => b.op("arith.andi", &[p, ok], &[], "i1")?,
            });
            coords.push(b.op("arith.minsi", &[q, n1], &[], "index")?);
        }
        let v = b.op("tensor.extract", &coords, &[], &e.mlir())?;
        match inside {
            Some(ok) => {
                let f = b.cst(e, fill)?;
                b.select(e, ok, v, f)
            }
            None => Ok(v),
        }
    })
}

/// `a * d{i} + c * d{j} + off` as an affine expression.
fn lin(a: i64, i: usize, c: i64, j: usize, off: i64) -> String {
    let mut s = format!("d{i} * {a}");
    if c >= 0 {
        s.push_str(&format!(" + d{j} * {c}"));
    } else {
        s.push_str(&format!(" - d{j} * {}", -c));
    }
    if off != 0 {
        s.push_str(&format!(" + {off}"));
    }
    s
}

/// The grouped window contraction shared by conv and conv_transpose:
/// `y[n, g, m, o...] = bias[g, m] + sum over (ci, k...) of xg[n, g, ci, X(o, k)...] *
/// wg[g, m, ci, k...]` (or `wg[g, ci, m, k...]` when `w_ci_first`), with `xg` `[N, G, CG, L...]`,
/// `X(o, k) = o * step + k * kstep + koff` per spatial dimension, and the result `out` = `[N, G, MG,
/// O...]` of `e` (no bias: 0).
/// One generic with the window loops as reductions, or, when the export makes f32 products kernel
/// calls ([`super::ExportOptions::float_matmul_calls`]) and the groups have at least 4 output
/// channels, im2col and a [`KernelOp::Sgemm`] call (see [`im2col_sgemm`]).
#[allow(clippy::too_many_arguments)]
fn grouped_contraction<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    xg: V<'c, 'b>,
    wg: V<'c, 'b>,
    w_ci_first: bool,
    bias: Option<V<'c, 'b>>,
    out: &[u64],
    e: El,
    step: &[i64],
    kstep: &[i64],
    koff: &[i64],
) -> R<V<'c, 'b>> {
    let sp = out.len() - 3;
    let ws = u.shape(&wg);
    let (mg, cg) = if w_ci_first {
        (ws[2], ws[1])
    } else {
        (ws[1], ws[2])
    };
    let sizes_ok = out.iter().chain(&ws).all(|&d| d > 0);
    if u.float_calls && e == El::F32 && mg >= 4 && cg > 0 && sizes_ok {
        return im2col_sgemm(u, cx, xg, wg, w_ci_first, bias, out, step, kstep, koff);
    }
    let init = bias_init(u, bias, out, e)?;
    // Loops: n, g, m, o..., ci, k...
    let (lci, lk) = (3 + sp, 4 + sp);
    let loops = 4 + 2 * sp;
    let mut xm = ids([0, 1, lci]);
    for i in 0..sp {
        xm.push(lin(step[i], 3 + i, kstep[i], lk + i, koff[i]));
    }
    let mut wm = if w_ci_first {
        ids([1, lci, 2])
    } else {
        ids([1, 2, lci])
    };
    wm.extend(ids(lk..lk + sp));
    let reds: Vec<usize> = (lci..loops).collect();
    u.generic(
        &[(xg, xm), (wg, wm)],
        &[],
        loops,
        &reds,
        ids(0..3 + sp),
        out,
        e,
        Some(init),
        |b| {
            let p = b.bin(Bin::Mul, e, 0, 1)?;
            b.bin(Bin::Add, e, 2, p)
        },
    )
}

/// [`grouped_contraction`] as a matrix product per (batch, group): the windows are gathered into
/// columns (one generic; none for a 1x1 window of stride 1, which reads the input as it is), the
/// weights viewed as a `MG x (CG * K)` matrix per group (transposed or repeated over the batch by a
/// generic where needed), and one [`KernelOp::Sgemm`] call computes every (batch, group) product,
/// each output one f32 FMA chain over (ci, k...) in order; the bias is added afterwards. The product
/// is `w[MG, CGK] x col[CGK, O]`, or transposed, `col^T[O, CGK] x w^T[CGK, MG]` (then transposed
/// back while adding the bias), whichever leaves fewer outputs to the sgemm's scalar edges (4-row by
/// 64-column register tiles: see cmd/cpu_kernels.rs).
#[allow(clippy::too_many_arguments)]
fn im2col_sgemm<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    xg: V<'c, 'b>,
    wg: V<'c, 'b>,
    w_ci_first: bool,
    bias: Option<V<'c, 'b>>,
    out: &[u64],
    step: &[i64],
    kstep: &[i64],
    koff: &[i64],
) -> R<V<'c, 'b>> {
    let e = El::F32;
    let sp = out.len() - 3;
    let ws = u.shape(&wg);
    let (n, g) = (out[0], out[1]);
    let (mg, cg) = if w_ci_first {
        (ws[2], ws[1])
    } else {
        (ws[1], ws[2])
    };
    let kdims = &ws[3..];
    let kn: u64 = kdims.iter().product();
    let on: u64 = out[3..].iter().product();
    let ck = cg * kn;
    // The share of outputs in full register tiles (4 rows x 64 columns) of an [rows, cols] product.
    let tiled = |rows: u64, cols: u64| (rows - rows % 4) * (cols - cols % 64);
    let transposed = tiled(on, mg) > tiled(mg, on);
    let xs = u.shape(&xg);
    let direct =
        kn == 1 && (0..sp).all(|i| step[i] == 1 && koff[i] == 0 && xs[3 + i] == out[3 + i]);
    // The columns: [N, G, CG, K..., O...], or [N, G, O..., CG, K...] transposed. Loops in the
    // result's order; `ci`, `k` and `o` are the positions of those loops.
    let (ci, k, o) = if transposed {
        (2 + sp, 3 + sp, 2)
    } else {
        (2, 3, 3 + sp)
    };
    let mut cs = vec![n, g];
    if transposed {
        cs.extend(&out[3..]);
        cs.push(cg);
        cs.extend(kdims);
    } else {
        cs.push(cg);
        cs.extend(kdims);
        cs.extend(&out[3..]);
    }
    let r = cs.len();
    let col = if direct && !transposed {
        xg
    } else {
        let mut xm = ids([0, 1, ci]);
        for i in 0..sp {
            xm.push(lin(step[i], o + i, kstep[i], k + i, koff[i]));
        }
        u.generic(&[(xg, xm)], &[], r, &[], ids(0..r), &cs, e, None, |_| Ok(0))?
    };
    // The weights as [N or 1, G, MG, CG, K...] (or [.., CG, K..., MG] transposed): loops n, g, then
    // the result's dimensions.
    let shared = transposed && g == 1;
    let wn = if shared { 1 } else { n };
    let mut wshape = vec![wn, g];
    let (wm_pos, wci_pos, wk_pos) = if transposed {
        (3 + sp, 2, 3)
    } else {
        (2, 3, 4)
    };
    if transposed {
        wshape.push(cg);
        wshape.extend(kdims);
        wshape.push(mg);
    } else {
        wshape.push(mg);
        wshape.push(cg);
        wshape.extend(kdims);
    }
    let mut wm = if w_ci_first {
        ids([1, wci_pos, wm_pos])
    } else {
        ids([1, wm_pos, wci_pos])
    };
    wm.extend(ids(wk_pos..wk_pos + sp));
    let wr = wshape.len();
    let w = if wn == 1 && !w_ci_first && !transposed {
        wg
    } else {
        u.generic(
            &[(wg, wm)],
            &[],
            wr,
            &[],
            ids(0..wr),
            &wshape,
            e,
            None,
            |_| Ok(0),
        )?
    };
    let (m_, n_) = if transposed { (on, mg) } else { (mg, on) };
    let (a, b) = if transposed {
        (
            u.reshape(col, &[n * g, on, ck])?,
            u.reshape(w, &[wn * g, ck, mg])?,
        )
    } else {
        (
            u.reshape(w, &[n * g, mg, ck])?,
            u.reshape(col, &[n * g, ck, on])?,
        )
    };
    let call = KernelCall {
        symbol: format!("qc_sgemm_{}", u.calls.borrow().len()),
        op: KernelOp::Sgemm {
            batch: n * g,
            shared_b: shared,
        },
        m: m_,
        n: n_,
        k: ck,
        loc: cx.op.loc.clone(),
    };
    let y = super::emit_call(u, call, &[a, b], &[n * g, m_, n_])?;
    // y [N * G, MG, O] (or [N * G, O, MG]) -> [N, G, MG, O...], plus the bias.
    let rr = out.len();
    let ym = if transposed {
        let mut ys = vec![n, g];
        ys.extend(&out[3..]);
        ys.push(mg);
        let mut ym = ids([0, 1]);
        ym.extend(ids(3..rr));
        ym.push("d2".into());
        (u.reshape(y, &ys)?, ym)
    } else {
        (u.reshape(y, out)?, ids(0..rr))
    };
    if bias.is_none() && !transposed {
        return Ok(ym.0);
    }
    let mut ins = vec![ym];
    ins.extend(bias.map(|b| (b, ids([1, 2]))));
    let with_bias = ins.len() == 2;
    u.generic(&ins, &[], rr, &[], ids(0..rr), out, e, None, |b| {
        if with_bias {
            b.bin(Bin::Add, e, 0, 1)
        } else {
            Ok(0)
        }
    })
}

/// The bias `[M]` of a conv / conv_transpose as `[G, MG]` in `e`, or None when it is empty.
fn grouped_bias<'c, 'b>(
    u: &U<'c, 'b>,
    bias: V<'c, 'b>,
    g: u64,
    mg: u64,
    e: El,
) -> R<Option<V<'c, 'b>>> {
    let n: u64 = u.shape(&bias).iter().product();
    if n == 0 {
        return Ok(None);
    }
    if n != g * mg {
        return Err(format!("{n} biases for {} output channels", g * mg));
    }
    Ok(Some(u.convert(u.reshape(bias, &[g, mg])?, e)?))
}

/// The accumulator's initial value `shape` = `[N, G, MG, O...]`: the bias `[G, MG]` broadcast, or
/// zeros.
fn bias_init<'c, 'b>(u: &U<'c, 'b>, bias: Option<V<'c, 'b>>, shape: &[u64], e: El) -> R<V<'c, 'b>> {
    let Some(bias) = bias else {
        return u.splat(shape, e, 0.0);
    };
    let r = shape.len();
    u.generic(
        &[(bias, ids([1, 2]))],
        &[],
        r,
        &[],
        ids(0..r),
        shape,
        e,
        None,
        |_| Ok(0),
    )
}

/// `nn.conv`: `y[n, m, o...] = bias[m] + sum over (ci, k...) of x[n, g * CG + ci, o * s + k * d -
/// pad_begin] * w[m, ci, k...]`, `g = m / MG` (padding reads 0). The input is padded (spread with
/// stride 1) and viewed as `[N, G, CG, L...]`, the weights as `[G, MG, CG, k...]`.
pub(super) fn conv<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    ins: &[V<'c, 'b>],
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let ae = acc_type(e)?;
    let (x, w) = (u.convert(ins[0], ae)?, u.convert(ins[1], ae)?);
    let (xs, ws) = (u.shape(&x), u.shape(&w));
    let sp = xs.len().checked_sub(2).ok_or("conv needs rank >= 3")?;
    let wn = window(cx, sp)?;
    let g = cx.int_attr("group", 1).max(1) as u64;
    let (c, m) = (xs[1], shape[1]);
    if c % g != 0 || m % g != 0 || ws[1] * g != c || ws[0] != m {
        return Err(format!(
            "{c} input and {m} output channels, weights {ws:?} and group {g} do not fit"
        ));
    }
    let (cg, mg) = (c / g, m / g);
    // The padded input covers every window.
    let lens: Vec<u64> = (0..sp)
        .map(|i| {
            let need = (shape[2 + i] as i64 - 1) * wn.s[i] + (wn.k[i] - 1) * wn.d[i] + 1;
            need.max(1) as u64
        })
        .collect();
    let lo: Vec<i64> = wn.p[..sp].to_vec();
    let xp = spread(u, x, &lo, &vec![1; sp], &lens, 0.0)?;
    let mut gs = vec![xs[0], g, cg];
    gs.extend(&lens);
    let xg = u.reshape(xp, &gs)?;
    let mut wgs = vec![g, mg, cg];
    wgs.extend(&ws[2..]);
    let wg = u.reshape(w, &wgs)?;
    let mut os = vec![shape[0], g, mg];
    os.extend(&shape[2..]);
    let bias = grouped_bias(u, ins[2], g, mg, ae)?;
    let y = grouped_contraction(
        u,
        cx,
        xg,
        wg,
        false,
        bias,
        &os,
        ae,
        &wn.s,
        &wn.d,
        &vec![0; sp],
    )?;
    u.convert(u.reshape(y, shape)?, e)
}

/// `nn.conv_transpose`: every input element times every kernel weight added at output position
/// `i * s - pad_begin + k * d` (the interpreter's scatter). Computed as a gather: the input is spread
/// out (`s - 1` zeros between elements) and padded so that `y[n, m, o...] = bias[m] + sum over (ci,
/// k...) of xs[n, g * CG + ci, o + (K - 1 - k) * d] * w[g * CG + ci, m', k...]` (`m = g * MG + m'`),
/// the spread input starting `(K - 1) * d - pad_begin` elements before the first input element.
pub(super) fn conv_transpose<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    ins: &[V<'c, 'b>],
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let ae = acc_type(e)?;
    let (x, w) = (u.convert(ins[0], ae)?, u.convert(ins[1], ae)?);
    let (xs, ws) = (u.shape(&x), u.shape(&w));
    let sp = xs
        .len()
        .checked_sub(2)
        .ok_or("conv_transpose needs rank >= 3")?;
    let wn = window(cx, sp)?;
    let g = cx.int_attr("group", 1).max(1) as u64;
    let (c, m) = (xs[1], shape[1]);
    if c % g != 0 || m % g != 0 || ws[0] != c || ws[1] * g != m {
        return Err(format!(
            "{c} input and {m} output channels, weights {ws:?} and group {g} do not fit"
        ));
    }
    let (cg, mg) = (c / g, m / g);
    let lens: Vec<u64> = (0..sp)
        .map(|i| shape[2 + i] + ((wn.k[i] - 1) * wn.d[i]) as u64)
        .collect();
    let lo: Vec<i64> = (0..sp).map(|i| (wn.k[i] - 1) * wn.d[i] - wn.p[i]).collect();
    let xp = spread(u, x, &lo, &wn.s, &lens, 0.0)?;
    let mut gs = vec![xs[0], g, cg];
    gs.extend(&lens);
    let xg = u.reshape(xp, &gs)?;
    let mut wgs = vec![g, cg, mg];
    wgs.extend(&ws[2..]);
    let wg = u.reshape(w, &wgs)?;
    let mut os = vec![shape[0], g, mg];
    os.extend(&shape[2..]);
    let bias = grouped_bias(u, ins[2], g, mg, ae)?;
    let kstep: Vec<i64> = wn.d.iter().map(|d| -d).collect();
    let koff: Vec<i64> = (0..sp).map(|i| (wn.k[i] - 1) * wn.d[i]).collect();
    let y = grouped_contraction(
        u,
        cx,
        xg,
        wg,
        true,
        bias,
        &os,
        ae,
        &vec![1; sp],
        &kstep,
        &koff,
    )?;
    u.convert(u.reshape(y, shape)?, e)
}

/// Per output position along spatial dimension `i` (of `sp`; input size `n`, output size `o`), how
/// many window positions the interpreter counts: inside the input (`include_pad` false) or inside
/// the padded input (true).
fn counts(n: i64, o: u64, wn: &Window, i: usize, sp: usize, include_pad: bool) -> Vec<u64> {
    let (k, s, d, pb, pe) = (wn.k[i], wn.s[i], wn.d[i], wn.p[i], wn.p[sp + i]);
    (0..o as i64)
        .map(|j| {
            (0..k)
                .filter(|&kk| {
                    let c = j * s - pb + kk * d;
                    if include_pad {
                        c >= -pb && c < n + pe
                    } else {
                        c >= 0 && c < n
                    }
                })
                .count() as u64
        })
        .collect()
}

/// `nn.max_pool` / `nn.avg_pool`: the input padded with -inf (max; the type's minimum for integer
/// tensors, which only max pooling takes) or 0 (average) to cover every window (ceil_mode windows
/// included), then a reduction over the window with a dummy window operand.
/// Max propagates NaN (`arith.maximumf`), as the interpreter does; the average divides the window
/// sum by the interpreter's count (positions inside the input, or inside the padded input with
/// `count_include_pad`; at least 1), a constant per output position.
pub(super) fn pool<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    nn: NnOp,
    x: V<'c, 'b>,
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let max = nn == NnOp::MaxPool;
    let int_max = max && matches!(e, El::I(n) | El::U(n) if n > 1);
    let ae = if int_max { e } else { acc_type(e)? };
    let x = u.convert(x, ae)?;
    let xs = u.shape(&x);
    let sp = xs.len().checked_sub(2).ok_or("pooling needs rank >= 3")?;
    let wn = window(cx, sp)?;
    let lens: Vec<u64> = (0..sp)
        .map(|i| {
            let need = (shape[2 + i] as i64 - 1) * wn.s[i] + (wn.k[i] - 1) * wn.d[i] + 1;
            need.max(1) as u64
        })
        .collect();
    let fill = if int_max {
        super::int_range(e).0 as f64
    } else if max {
        f64::NEG_INFINITY
    } else {
        0.0
    };
    let xp = spread(u, x, &wn.p[..sp], &vec![1; sp], &lens, fill)?;
    let r = shape.len();
    // Loops: n, c, o..., k...
    let lk = r;
    let loops = r + sp;
    let mut xm = ids([0, 1]);
    for i in 0..sp {
        xm.push(lin(wn.s[i], 2 + i, wn.d[i], lk + i, 0));
    }
    let kshape: Vec<u64> = wn.k.iter().map(|&k| k as u64).collect();
    let win = u.empty(&kshape, ae)?;
    let init = u.splat(shape, ae, fill)?;
    let k = if max { Bin::Max } else { Bin::Add };
    let y = u.generic(
        &[(xp, xm), (win, ids(lk..loops))],
        &[],
        loops,
        &(lk..loops).collect::<Vec<_>>(),
        ids(0..r),
        shape,
        ae,
        Some(init),
        |b| b.bin(k, ae, 2, 0),
    )?;
    if max {
        return u.convert(y, e);
    }
    let include_pad = cx.int_attr("count_include_pad", 0) != 0;
    let per_dim: Vec<Vec<u64>> = (0..sp)
        .map(|i| counts(xs[2 + i] as i64, shape[2 + i], &wn, i, sp, include_pad))
        .collect();
    let osp = &shape[2..];
    let total: u64 = osp.iter().product();
    let mut bytes = Vec::new();
    for f in 0..total {
        let mut rest = f;
        let mut cnt = 1u64;
        for i in (0..sp).rev() {
            cnt *= per_dim[i][(rest % osp[i]) as usize];
            rest /= osp[i];
        }
        bytes.extend(super::scalar_bytes(ae, cnt.max(1) as f64, 0)?);
    }
    let cnt = u.constant_bytes(osp, ae, &bytes)?;
    let y = u.generic(
        &[(y, ids(0..r)), (cnt, ids(2..r))],
        &[],
        r,
        &[],
        ids(0..r),
        shape,
        ae,
        None,
        |b| b.bin(Bin::Div, ae, 0, 1),
    )?;
    u.convert(y, e)
}

/// `nn.global_avg_pool` / `nn.global_max_pool`: the sum (divided by the spatial size) or the maximum
/// over the spatial dimensions, kept as 1. The maximum ignores NaN (`arith.maxnumf`), as the
/// interpreter's `f64::max` does.
pub(super) fn global_pool<'c, 'b>(
    u: &U<'c, 'b>,
    nn: NnOp,
    x: V<'c, 'b>,
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let max = nn == NnOp::GlobalMaxPool;
    let ae = acc_type(e)?;
    let x = u.convert(x, ae)?;
    let xs = u.shape(&x);
    let r = xs.len();
    if r < 2 {
        return Err("global pooling needs rank >= 2".into());
    }
    let n: u64 = xs[2..].iter().product();
    let out = vec![xs[0], xs[1]];
    let init = u.splat(&out, ae, if max { f64::NEG_INFINITY } else { 0.0 })?;
    let y = u.generic(
        &[(x, ids(0..r))],
        &[],
        r,
        &(2..r).collect::<Vec<_>>(),
        ids([0, 1]),
        &out,
        ae,
        Some(init),
        |b| {
            if max {
                b.op("arith.maxnumf", &[1, 0], &[], &ae.mlir())
            } else {
                b.bin(Bin::Add, ae, 1, 0)
            }
        },
    )?;
    let y = if max {
        y
    } else {
        u.ew(&[y], &out, ae, |b| b.binc(Bin::Div, ae, 0, n as f64))?
    };
    u.convert(u.reshape(y, shape)?, e)
}

/// `nn.lrn`: `x / (bias + alpha / size * s)^beta` with `s` the sum of squares over channels `c -
/// floor((size - 1) / 2) ..= c + ceil((size - 1) / 2)` clipped to the tensor: the squares are padded
/// with zeros along dimension 1 and summed over a window of `size` (a dummy window operand).
pub(super) fn lrn<'c, 'b>(u: &U<'c, 'b>, cx: &Cx, x: V<'c, 'b>, e: El) -> R<V<'c, 'b>> {
    let ae = acc_type(e)?;
    let x = u.convert(x, ae)?;
    let xs = u.shape(&x);
    let r = xs.len();
    if r < 2 {
        return Err("lrn needs rank >= 2".into());
    }
    let size = cx.int_attr("size", 1).max(1);
    let (alpha, beta, bias) = (
        cx.f_attr("alpha", 1e-4),
        cx.f_attr("beta", 0.75),
        cx.f_attr("bias", 1.0),
    );
    let (lo, hi) = ((size - 1) / 2, (size - 1 + 1) / 2);
    let sq = u.ew(&[x], &xs, ae, |b| b.bin(Bin::Mul, ae, 0, 0))?;
    // Channels as the spatial dimension of spread: [N, 1, C, rest] -> padded [N, 1, C + size - 1,
    // rest].
    let rest: u64 = xs[2..].iter().product();
    let c = xs[1];
    let sq4 = u.reshape(sq, &[xs[0], 1, c, rest])?;
    let len = c + (lo + hi) as u64;
    let sqp = spread(u, sq4, &[lo, 0], &[1, 1], &[len, rest], 0.0)?;
    // Loops: n, c, i, j (window).
    let win = u.empty(&[size as u64], ae)?;
    let out = vec![xs[0], c, rest];
    let init = u.splat(&out, ae, 0.0)?;
    let s = u.generic(
        &[
            (u.reshape(sqp, &[xs[0], len, rest])?, {
                vec!["d0".into(), "d1 + d3".into(), "d2".into()]
            }),
            (win, ids([3])),
        ],
        &[],
        4,
        &[3],
        ids(0..3),
        &out,
        ae,
        Some(init),
        |b| b.bin(Bin::Add, ae, 2, 0),
    )?;
    let s = u.reshape(s, &xs)?;
    let y = u.ew(&[x, s], &xs, ae, |b| {
        let t = b.binc(Bin::Mul, ae, 1, alpha / size as f64)?;
        let t = b.binc(Bin::Add, ae, t, bias)?;
        let p = b.cst(ae, beta)?;
        let t = b.bin(Bin::Pow, ae, t, p)?;
        b.bin(Bin::Div, ae, 0, t)
    })?;
    u.convert(y, e)
}

#[cfg(test)]
mod tests {
    use crate::specialize::ShapeBindings;
    use crate::upstream::{export_module_with, ExportOptions, KernelOp};
    use qc_ir::{parse_module, Registry, Source};

    fn conv(x: &str, w: &str, b: &str, y: &str, attrs: &str) -> qc_ir::Module {
        let mut r = Registry::new();
        r.register(qc_nn::dialect());
        let text = format!(
            "func.func @main(%x: tensor<{x}xf32>, %w: tensor<{w}xf32>, %b: tensor<{b}xf32>) -> tensor<{y}xf32> {{
  %y = nn.conv %x, %w, %b {{{attrs}}} : (tensor<{x}xf32>, tensor<{w}xf32>, tensor<{b}xf32>) -> tensor<{y}xf32>
  return %y : tensor<{y}xf32>
}}"
        );
        parse_module(&text, &Source::named("case"), &r).unwrap_or_else(|d| panic!("{d:?}"))
    }

    #[test]
    fn float_calls_make_convolutions_im2col_and_sgemm_calls() {
        let opts = ExportOptions {
            float_matmul_calls: true,
            ..ExportOptions::default()
        };
        let b = ShapeBindings::new();
        let attrs = "dilations = [1, 1], group = 1, kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [1, 1]";
        // 8 output channels, 30 positions: w[8, 36] x col[36, 30] for each of the 2 images.
        let m = conv("2x4x5x6", "8x4x3x3", "8", "2x8x5x6", attrs);
        let out = export_module_with(&m, "main", &b, &opts).unwrap();
        assert_eq!(out.calls.len(), 1);
        let c = &out.calls[0];
        assert_eq!(
            c.op,
            KernelOp::Sgemm {
                batch: 2,
                shared_b: false
            }
        );
        assert_eq!((c.m, c.n, c.k), (8, 30, 36));
        // 64 output channels: transposed, col^T[30, 36] x w^T[36, 64], one w^T for both images.
        let m = conv("2x4x5x6", "64x4x3x3", "64", "2x64x5x6", attrs);
        let out = export_module_with(&m, "main", &b, &opts).unwrap();
        let c = &out.calls[0];
        assert_eq!(
            c.op,
            KernelOp::Sgemm {
                batch: 2,
                shared_b: true
            }
        );
        assert_eq!((c.m, c.n, c.k), (30, 64, 36));
        // Without the option, and for 2 output channels per group, a linalg contraction.
        let m2 = conv(
            "1x4x5x6",
            "4x2x3x3",
            "4",
            "1x4x5x6",
            "dilations = [1, 1], group = 2, kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [1, 1]",
        );
        for (m, o) in [(&m, &ExportOptions::default()), (&m2, &opts)] {
            let out = export_module_with(m, "main", &b, o).unwrap();
            assert!(out.calls.is_empty());
            assert!(out.text.contains("\"reduction\""), "{}", out.text);
        }
    }
}

//! ONNX linear quantization (`quant.quantize_linear`, `quant.dequantize_linear`,
//! `quant.dynamic_quantize_linear`), online Hadamard rotations (`quant.hadamard`) and the remaining
//! elementwise / indexing nn ops (`nn.shrink`, `nn.nll_loss`) of the upstream export, each computing
//! what the reference interpreter computes (runtime/src/linear.rs, runtime/src/exec.rs,
//! runtime/src/interp): linear quantization, rotations and shrink bit for bit, nll_loss to f32
//! rounding of its sums.
//!
//! Linear quantization covers integer codes (`iN` / `uiN`, signed or unsigned zero points) with float
//! scales (`f16`, `bf16`, `f32`, `f64`) per tensor, per axis or in blocks along the axis; minifloat
//! codes or scales are refused (upstream MLIR has no CPU lowering of most of those types).

use qc_ir::attr::Attribute as QAttr;
use qc_nn::norm_axis;

use super::{ids, Bin, Cmp, Cx, El, In, H, R, U, V};

/// The float type NumPy computes `a op b` in (the interpreter's `promoted`).
fn promoted(a: El, b: El) -> El {
    match (a, b) {
        (El::F64, _) | (_, El::F64) => El::F64,
        (El::F16, El::F16) => El::F16,
        (El::BF16, El::BF16) => El::BF16,
        _ => El::F32,
    }
}

fn float_scale(t: &V) -> R<()> {
    match t.e {
        El::F16 | El::BF16 | El::F32 | El::F64 => Ok(()),
        e => Err(format!(
            "scales of {} are not supported (f16, bf16, f32, f64)",
            e.mlir()
        )),
    }
}

fn int_codes(e: El, what: &str) -> R<()> {
    match e {
        El::I(n) | El::U(n) if n > 1 => Ok(()),
        e => Err(format!(
            "{what} of {} are not supported (integer codes only)",
            e.mlir()
        )),
    }
}

/// The scale (or zero point, viewed in the scale's shape) `t` as an operand of a generic over `xs`:
/// per tensor (one element, no block) a rank-0 tensor, per axis a 1-D one indexed by the axis, in
/// blocks the input's rank with `d_axis floordiv block` (the interpreter's `scale_index`).
fn param<'c, 'b>(
    u: &U<'c, 'b>,
    t: V<'c, 'b>,
    like: &[u64],
    xs: &[u64],
    axis: i64,
    block: i64,
) -> R<In<'c, 'b>> {
    let n: u64 = like.iter().product();
    if n != u.shape(&t).iter().product::<u64>() {
        return Err("the zero point and the scale differ in size".into());
    }
    if n == 1 && block == 0 {
        return Ok((u.reshape(t, &[])?, Vec::new()));
    }
    let a = norm_axis(axis, xs.len())?;
    if block == 0 {
        if n != xs[a] {
            return Err(format!("{n} scales for axis {a} of length {}", xs[a]));
        }
        return Ok((u.reshape(t, &[n])?, ids([a])));
    }
    if block < 0 || like.len() != xs.len() {
        return Err("blocked scales need the input's rank and a positive block size".into());
    }
    let mut m = ids(0..xs.len());
    m[a] = format!("d{a} floordiv {block}");
    Ok((u.reshape(t, like)?, m))
}

/// `quant.quantize_linear`: `clamp(roundeven(x / scale) + zero_point, type range)`, the division in
/// NumPy's promoted type of x and the scale (f32 unless f64 is involved, or both are f16 / bf16:
/// then the f32 quotient is rounded to that type, which is the same value); a quotient that is NaN
/// or of magnitude >= 2^31 becomes i32::MIN before the zero point is added (NumPy's `astype(int32)`).
pub(super) fn quantize_linear<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    ins: &[V<'c, 'b>],
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let (x, s, z) = (ins[0], ins[1], ins[2]);
    float_scale(&s)?;
    int_codes(e, "quantize_linear results")?;
    int_codes(z.e, "zero points")?;
    if !x.e.is_float() || matches!(x.e, El::Mf(_)) {
        return Err(format!(
            "quantize_linear of {} is not supported",
            x.e.mlir()
        ));
    }
    let (axis, block) = (cx.int_attr("axis", 1), cx.int_attr("block_size", 0));
    let ss = u.shape(&s);
    let sm = param(u, s, &ss, shape, axis, block)?;
    let zm = param(u, z, &ss, shape, axis, block)?;
    let calc = promoted(x.e, s.e);
    let c = if calc == El::F64 { El::F64 } else { El::F32 };
    let (xe, se, ze) = (x.e, s.e, z.e);
    let (lo, hi) = super::int_range(e);
    let r = shape.len();
    u.generic(
        &[(x, ids(0..r)), sm, zm],
        &[],
        r,
        &[],
        ids(0..r),
        shape,
        e,
        None,
        |b| {
            let xv = b.cast(xe, c, 0)?;
            let sv = b.cast(se, c, 1)?;
            let mut q = b.bin(Bin::Div, c, xv, sv)?;
            if calc != c {
                q = b.cast(c, calc, q)?;
                q = b.cast(calc, c, q)?;
            }
            let q = b.un("math.roundeven", c, q)?;
            let q = b.cast(c, El::F64, q)?;
            let a = b.un("math.absf", El::F64, q)?;
            let lim = b.cst(El::F64, 2147483648.0)?;
            let ok = b.cmp(Cmp::Lt, El::F64, a, lim)?;
            let zero = b.cst(El::F64, 0.0)?;
            let safe = b.select(El::F64, ok, q, zero)?;
            let qi = b.cast(El::F64, El::I(64), safe)?;
            let min = b.cst(El::I(64), i32::MIN as f64)?;
            let qi = b.select(El::I(64), ok, qi, min)?;
            let zi = b.cast(ze, El::I(64), 2)?;
            let v = b.bin(Bin::Add, El::I(64), qi, zi)?;
            let lo = b.cst(El::I(64), lo as f64)?;
            let hi = b.cst(El::I(64), hi as f64)?;
            let v = b.bin(Bin::Max, El::I(64), v, lo)?;
            let v = b.bin(Bin::Min, El::I(64), v, hi)?;
            b.cast(El::I(64), e, v)
        },
    )
}

/// `quant.dequantize_linear` of integer codes: `f32(x - zero_point) * scale` in f32 (f64 for an f64
/// scale), rounded to the result's float type.
pub(super) fn dequantize_linear<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    ins: &[V<'c, 'b>],
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let (x, s, z) = (ins[0], ins[1], ins[2]);
    float_scale(&s)?;
    int_codes(x.e, "dequantize_linear inputs")?;
    int_codes(z.e, "zero points")?;
    if !e.is_float() || matches!(e, El::Mf(_)) {
        return Err(format!(
            "dequantize_linear to {} is not supported",
            e.mlir()
        ));
    }
    let (axis, block) = (cx.int_attr("axis", 1), cx.int_attr("block_size", 0));
    let ss = u.shape(&s);
    let sm = param(u, s, &ss, shape, axis, block)?;
    let zm = param(u, z, &ss, shape, axis, block)?;
    let p = if s.e == El::F64 { El::F64 } else { El::F32 };
    let (xe, se, ze) = (x.e, s.e, z.e);
    let r = shape.len();
    u.generic(
        &[(x, ids(0..r)), sm, zm],
        &[],
        r,
        &[],
        ids(0..r),
        shape,
        e,
        None,
        |b| {
            let xi = b.cast(xe, El::I(64), 0)?;
            let zi = b.cast(ze, El::I(64), 2)?;
            let d = b.bin(Bin::Sub, El::I(64), xi, zi)?;
            let d = b.cast(El::I(64), El::F32, d)?;
            let d = b.cast(El::F32, p, d)?;
            let sv = b.cast(se, p, 1)?;
            let y = b.bin(Bin::Mul, p, d, sv)?;
            b.cast(p, e, y)
        },
    )
}

/// `value as i64` of Rust for a float scalar known to be in range unless NaN: NaN gives 0.
fn nan_to_zero(b: &mut super::Bd, e: El, v: H) -> R<H> {
    let nan = b.op(
        "arith.cmpf",
        &[v, v],
        &[("predicate", "14 : i64".into())],
        "i1",
    )?;
    let z = b.cst(e, 0.0)?;
    b.select(e, nan, z, v)
}

/// The maximum (`arith.maxnumf`, NaN ignored) or minimum of `x` over every element and 0, as a
/// tensor of shape `[1]`.
///
/// Whole-tensor results of this file are `[1]` tensors (a parallel loop of one iteration) rather than
/// rank 0: a loop nest without a parallel loop, or a rank-0 generic, would be host code on the NVIDIA
/// targets, whose launch plan cannot express it.
fn range_end<'c, 'b>(u: &U<'c, 'b>, x: V<'c, 'b>, max: bool) -> R<V<'c, 'b>> {
    let n: u64 = u.shape(&x).iter().product();
    let x = u.reshape(x, &[1, n])?;
    let init = u.splat(&[1], x.e, 0.0)?;
    let e = x.e;
    let name = if max {
        "arith.maxnumf"
    } else {
        "arith.minnumf"
    };
    u.generic(
        &[(x, ids(0..2))],
        &[],
        2,
        &[1],
        ids([0]),
        &[1],
        e,
        Some(init),
        |b| b.op(name, &[1, 0], &[], &e.mlir()),
    )
}

/// The sum of every element of `x`, as a `[1]` tensor (see [`range_end`]).
fn total<'c, 'b>(u: &U<'c, 'b>, x: V<'c, 'b>) -> R<V<'c, 'b>> {
    let n: u64 = u.shape(&x).iter().product();
    u.reduce(u.reshape(x, &[1, n])?, &[1], Bin::Add)
}

/// `quant.dynamic_quantize_linear` of an f32 tensor, as the interpreter's `dynamic_quantize` (all in
/// f32): `max` / `min` of the data and 0 (NaN ignored), `scale = (max - min, or 1 when equal) / 255`,
/// `zp = roundeven(clamp(0 - min / scale, 0, 255))`, codes `clamp(roundeven(x / scale) + zp, 0,
/// 255)` (NaN gives 0); results: the uint8 codes, the f32 scale, the uint8 zero point.
pub(super) fn dynamic_quantize_linear<'c, 'b>(u: &U<'c, 'b>, x: V<'c, 'b>) -> R<Vec<V<'c, 'b>>> {
    if x.e != El::F32 {
        return Err("dynamic_quantize_linear takes an f32 tensor".into());
    }
    let f = El::F32;
    let xs = u.shape(&x);
    let mx = range_end(u, x, true)?;
    let mn = range_end(u, x, false)?;
    let scale = u.ew(&[mx, mn], &[1], f, |b| {
        let eq = b.cmp(Cmp::Eq, f, 0, 1)?;
        let d = b.bin(Bin::Sub, f, 0, 1)?;
        let one = b.cst(f, 1.0)?;
        let d = b.select(f, eq, one, d)?;
        b.binc(Bin::Div, f, d, 255.0)
    })?;
    let zpf = u.ew(&[mn, scale], &[1], f, |b| {
        let q = b.bin(Bin::Div, f, 0, 1)?;
        let z = b.cst(f, 0.0)?;
        let t = b.bin(Bin::Sub, f, z, q)?;
        let t = b.bin(Bin::Max, f, t, z)?;
        let t = b.binc(Bin::Min, f, t, 255.0)?;
        b.un("math.roundeven", f, t)
    })?;
    let u8t = El::U(8);
    let r = xs.len();
    let codes = u.generic(
        &[
            (x, ids(0..r)),
            (scale, vec!["0".into()]),
            (zpf, vec!["0".into()]),
        ],
        &[],
        r,
        &[],
        ids(0..r),
        &xs,
        u8t,
        None,
        |b| {
            let q = b.bin(Bin::Div, f, 0, 1)?;
            let q = b.un("math.roundeven", f, q)?;
            let q = b.bin(Bin::Add, f, q, 2)?;
            let z = b.cst(f, 0.0)?;
            let q = b.bin(Bin::Max, f, q, z)?;
            let q = b.binc(Bin::Min, f, q, 255.0)?;
            let q = nan_to_zero(b, f, q)?;
            b.cast(f, u8t, q)
        },
    )?;
    let zp = u.ew(&[zpf], &[1], u8t, |b| {
        let q = nan_to_zero(b, f, 0)?;
        b.cast(f, u8t, q)
    })?;
    Ok(vec![codes, u.reshape(scale, &[])?, u.reshape(zp, &[])?])
}

/// `quant.hadamard {block}`: each run of `block` consecutive elements of the last axis transformed by
/// the orthonormal Walsh-Hadamard matrix, as qc_quant::hadamard::fwht does it: in f64, `log2(block)`
/// butterfly stages (one generic each over the tensor viewed as `[M, block]`: element `j` becomes
/// `v[j] + v[j | h]` when bit `h` of `j` is clear, else `v[j & !h] - v[j]`), then times
/// `1 / sqrt(block)` and rounded once to the element type: bit-identical to the interpreter.
pub(super) fn hadamard<'c, 'b>(u: &U<'c, 'b>, cx: &Cx, x: V<'c, 'b>, e: El) -> R<V<'c, 'b>> {
    if !matches!(e, El::F16 | El::BF16 | El::F32 | El::F64) {
        return Err(format!("hadamard of {} is not supported", e.mlir()));
    }
    let xs = u.shape(&x);
    let block = cx.int_attr("block", 0);
    let n = *xs.last().ok_or("hadamard needs rank >= 1")?;
    if block <= 0 || !(block as u64).is_power_of_two() || n % block as u64 != 0 {
        return Err(format!("block {block} does not fit the last dimension {n}"));
    }
    let bl = block as u64;
    let total: u64 = xs.iter().product();
    if total == 0 {
        return Ok(x);
    }
    let rows = total / bl;
    let f = El::F64;
    let mut v = u.convert(u.reshape(x, &[rows, bl])?, f)?;
    let mut h = 1i64;
    while h < block {
        let cur = v;
        v = u.generic(
            &[],
            &[cur.v],
            2,
            &[],
            ids(0..2),
            &[rows, bl],
            f,
            None,
            |b| {
                // Handles: 0 the output element, 1 the previous stage.
                let m = b.loop_index(0)?;
                let j = b.loop_index(1)?;
                let hh = b.index(h)?;
                let not_h = b.index(!h)?;
                let lo = b.op("arith.andi", &[j, not_h], &[], "index")?;
                let hi = b.op("arith.ori", &[j, hh], &[], "index")?;
                let a = b.op("tensor.extract", &[1, m, lo], &[], "f64")?;
                let c = b.op("tensor.extract", &[1, m, hi], &[], "f64")?;
                let bit = b.op("arith.andi", &[j, hh], &[], "index")?;
                let zero = b.index(0)?;
                let clear = b.op(
                    "arith.cmpi",
                    &[bit, zero],
                    &[("predicate", "0 : i64".into())],
                    "i1",
                )?;
                let s = b.bin(Bin::Add, f, a, c)?;
                let d = b.bin(Bin::Sub, f, a, c)?;
                b.select(f, clear, s, d)
            },
        )?;
        h *= 2;
    }
    let scale = 1.0 / (bl as f64).sqrt();
    let v = u.ew(&[v], &[rows, bl], e, |b| {
        let y = b.binc(Bin::Mul, f, 0, scale)?;
        b.cast(f, e, y)
    })?;
    u.reshape(v, &xs)
}

/// `nn.shrink`: `x + bias` if `x < -lambd`, `x - bias` if `x > lambd`, else 0, computed in f64 and
/// rounded once to a float result (as the interpreter); integer tensors are converted to f64 and the
/// result truncated toward zero and wrapped (non-finite or huge values give `i64::MIN` wrapped).
pub(super) fn shrink<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    x: V<'c, 'b>,
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let (bias, lambd) = (cx.f_attr("bias", 0.0), cx.f_attr("lambd", 0.5));
    let xe = x.e;
    if matches!(xe, El::Mf(_)) || xe == El::I(1) || matches!(e, El::Mf(_)) || e == El::I(1) {
        return Err(format!("shrink of {} is not supported", xe.mlir()));
    }
    let f = El::F64;
    u.ew(&[x], shape, e, |b| {
        let a = b.cast(xe, f, 0)?;
        let nl = b.cst(f, -lambd)?;
        let l = b.cst(f, lambd)?;
        let below = b.cmp(Cmp::Lt, f, a, nl)?;
        let above = b.cmp(Cmp::Gt, f, a, l)?;
        let plus = b.binc(Bin::Add, f, a, bias)?;
        let minus = b.binc(Bin::Sub, f, a, bias)?;
        let z = b.cst(f, 0.0)?;
        let y = b.select(f, above, minus, z)?;
        let y = b.select(f, below, plus, y)?;
        if e.is_float() {
            return b.cast(f, e, y);
        }
        let t = b.un("math.trunc", f, y)?;
        let at = b.un("math.absf", f, t)?;
        let lim = b.cst(f, 9.2e18)?;
        let ok = b.cmp(Cmp::Lt, f, at, lim)?;
        let safe = b.select(f, ok, t, z)?;
        let i = b.cast(f, El::I(64), safe)?;
        let min = b.op(
            "arith.constant",
            &[],
            &[("value", format!("{} : i64", i64::MIN))],
            "i64",
        )?;
        let i = b.select(El::I(64), ok, i, min)?;
        b.cast(El::I(64), e, i)
    })
}

/// `nn.nll_loss`: `loss[n, d...] = -x[n, t, d...] * weight[t]` for `t = target[n, d...]` (0 where
/// `t == ignore_index`; other out-of-range targets, an error in the interpreter, read a clamped
/// class), then per `reduction`: "none" the losses, "sum" their sum, "mean" that sum divided by the
/// sum of the weights used. Sums in f32 (f64 for f64 tensors).
pub(super) fn nll_loss<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    ins: &[V<'c, 'b>],
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let (x, t, w) = (ins[0], ins[1], ins[2]);
    let xe = x.e;
    if !matches!(xe, El::F16 | El::BF16 | El::F32 | El::F64) {
        return Err(format!("nll_loss of {} is not supported", xe.mlir()));
    }
    let ae = if xe == El::F64 { El::F64 } else { El::F32 };
    let x = u.convert(x, ae)?;
    let w = u.convert(w, ae)?;
    let xs = u.shape(&x);
    let ts = u.shape(&t);
    if xs.len() < 2 || ts.len() + 1 != xs.len() {
        return Err(format!(
            "the target's shape {ts:?} does not fit the input {xs:?}"
        ));
    }
    let c = xs[1] as i64;
    let ignore = cx.op.attr("ignore_index").and_then(QAttr::as_int);
    let reduction = match cx.op.attr("reduction") {
        Some(QAttr::Str(s)) => s.clone(),
        _ => "mean".to_string(),
    };
    let te = t.e;
    let rt = ts.len();
    // One generic per quantity: the losses (want_weight false) or the weights used (true).
    let per_element = |want_weight: bool| {
        u.generic(
            &[(t, ids(0..rt))],
            &[x.v, w.v],
            rt,
            &[],
            ids(0..rt),
            &ts,
            ae,
            None,
            |b| {
                // Handles: 0 the target, 1 the output element, 2 x, 3 the weights.
                let ti = b.op("arith.index_cast", &[0], &[], "index")?;
                let zero = b.index(0)?;
                let last = b.index(c - 1)?;
                let ti = b.op("arith.maxsi", &[ti, zero], &[], "index")?;
                let ti = b.op("arith.minsi", &[ti, last], &[], "index")?;
                let wv = b.op("tensor.extract", &[3, ti], &[], &ae.mlir())?;
                let v = if want_weight {
                    wv
                } else {
                    let mut coords = vec![2, b.loop_index(0)?, ti];
                    for d in 1..rt {
                        coords.push(b.loop_index(d)?);
                    }
                    let xv = b.op("tensor.extract", &coords, &[], &ae.mlir())?;
                    let n = b.un("arith.negf", ae, xv)?;
                    b.bin(Bin::Mul, ae, n, wv)?
                };
                match ignore {
                    Some(ig) => {
                        let igc = b.cst(te, ig as f64)?;
                        let is = b.cmp(Cmp::Eq, te, 0, igc)?;
                        let z = b.cst(ae, 0.0)?;
                        b.select(ae, is, z, v)
                    }
                    None => Ok(v),
                }
            },
        )
    };
    let loss = per_element(false)?;
    let y = match reduction.as_str() {
        "none" => loss,
        "sum" => total(u, loss)?,
        "mean" => {
            let s = total(u, loss)?;
            let ws = total(u, per_element(true)?)?;
            u.ew(&[s, ws], &[1], ae, |b| b.bin(Bin::Div, ae, 0, 1))?
        }
        r => return Err(format!("unknown reduction '{r}'")),
    };
    u.convert(u.reshape(y, shape)?, e)
}

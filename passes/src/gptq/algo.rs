//! The GPTQ algorithm on one weight matrix, for every format qc-quant implements.
//!
//! Input: the float weight `W` as `[K, N]` (row `k` is what the reference calls column `k` of its
//! `[out, in]` weight) and the mean second-moment matrix `H = X^T X / rows` (`K x K`) of the layer's
//! activations. Output: a [`QuantizedTensor`] of the transposed weight `[N, K]` (the layout of
//! `quant.matmul {transpose_b}`) and its dequantized values, which are exactly the weights GPTQ chose.
//!
//! Steps (Frantar et al. 2022, and the reference implementation `gptq.py`):
//! 1. Dead inputs (`H[k][k] == 0`) get `H[k][k] = 1` and their weight row zeroed.
//! 2. With `act_order`, every scale is computed up front from these weights (the reference's
//!    `static_groups`), and rows are processed in the order of descending `diag(H)` (stable for ties).
//! 3. `H += damp * mean(diag H) * I`; `U` = the upper Cholesky factor of `H^-1`.
//! 4. Rows are processed in blocks of `block`: row `i` is quantized, its error `e = (w - q) / U[i][i]`
//!    is propagated to the rows after it in the block at once (`w_t -= U[i][t] e`) and to the rows after
//!    the block lazily, once per block (`W[i2..] -= U[i1..i2, i2..]^T E`).
//! 5. Without `act_order`, the scales of the format's groups are computed when the algorithm reaches the
//!    group's first row along K, from the *current* (already updated) weights of the whole group: the
//!    window of rows the groups starting there cover (`g` rows for groups of `g` along K, all `K` rows
//!    at row 0 for per-tensor and per-output-channel scales, one row for per-input-channel scales, `c`
//!    rows for `r x c` blocks) is quantized with [`qc_quant::tensor::quantize`] and its scales (and zero
//!    points) are kept. Two-level formats (nvfp4, nvint4) use one tensor scale, from the amax of the input
//!    weights. So every scale rule of the library (f32/f16/bf16 amax scales with or without zero points,
//!    e8m0 FLOOR/CEIL/RCEIL/EVEN, ue4m3 in each convention) is computed by the library itself.
//! 6. Elements are encoded with exactly the arithmetic of [`qc_quant::tensor::quantize`] for a given
//!    scale (multiply by 2^-E for e8m0, divide by the block total for ue4m3 and float scales, affine with
//!    a zero point) and decoded as [`qc_quant::tensor::dequantize`] does, so the returned tensor decodes
//!    to the returned values bit for bit.
//!
//! With `scale_search` (MR-GPTQ's format-aware scales, FP4 formats with e8m0 or ue4m3 scales), each
//! group's scale code is then chosen, among the codes near the library's max-based one (e8m0: E-1, E,
//! E+1; ue4m3: the codes c-4 ..= c+2), as the one whose round-to-nearest of the group's current weights
//! has the least squared error (ties keep the max-based code).

use std::collections::BTreeMap;

use qc_ir::quant::{Convention, Encoding, QuantType, Rounding, ScaleType, Scheme, TensorScale};
use qc_quant::codec::{bf16_bits_to_f32, f16_bits_to_f32, round_to_int, stochastic_bits, Codec};
use qc_quant::scale::{self, TensorScaleValue};
use qc_quant::tensor::{
    quantize, scale_indices, scale_shape, QuantizeOptions, QuantizedTensor, Scales,
};

use super::linalg::upper_cholesky_of_inverse;

/// Options of one GPTQ run.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqConfig {
    /// Rows (columns of the reference's weight) per lazy batch update, at least 1.
    pub block: usize,
    /// Dampening, relative to the mean of diag(H).
    pub damp: f64,
    /// Process rows by descending diag(H), with every scale computed up front.
    pub act_order: bool,
    /// Format-aware scale search (MR-GPTQ); only for e8m0 / ue4m3 scales.
    pub scale_search: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig {
            block: 128,
            damp: 0.01,
            act_order: false,
            scale_search: false,
        }
    }
}

/// What GPTQ produced for one weight.
#[derive(Clone, Debug)]
pub struct GptqOutput {
    /// The quantized transposed weight, `[N, K]`.
    pub tensor: QuantizedTensor,
    /// The weights GPTQ chose, `[K, N]` row-major: exactly `dequantize(tensor)` transposed.
    pub dequantized: Vec<f32>,
    /// The GPTQ proxy loss `sum (w - q)^2 / U[i][i]^2 / 2` over all elements (the reference's `Losses`).
    pub loss: f64,
}

/// How one scale group's elements are encoded and decoded (the library's arithmetic).
#[derive(Clone, Copy, Debug)]
enum Apply {
    /// q = encode(x * m); x_hat = decode(q) * inv.
    Mul { m: f32, inv: f32 },
    /// q = encode(x / d); x_hat = decode(q) * d.
    Div(f32),
    /// q = clamp(round(x / s) + z); x_hat = (q - z) * s.
    Affine { s: f32, z: i32 },
}

/// Element arithmetic of one format.
struct Elem {
    codec: Codec,
    round: Rounding,
    sat: qc_ir::quant::Saturation,
    modelopt: bool,
    qmin: i32,
    qmax: i32,
    bits: u32,
    signed_int: bool,
}

fn int_range(e: &Encoding) -> (i32, i32) {
    match *e {
        Encoding::Int { bits, signed: true } => (-(1 << (bits - 1)), (1 << (bits - 1)) - 1),
        Encoding::Int {
            bits,
            signed: false,
        } => (0, (1 << bits) - 1),
        _ => (0, 0),
    }
}

/// The signed value of a zero-point (or element) code of encoding `e`.
fn int_code_value(code: u8, e: &Encoding) -> i32 {
    match *e {
        Encoding::Int { bits, signed: true } if code as i32 >= 1 << (bits - 1) => {
            code as i32 - (1 << bits)
        }
        _ => code as i32,
    }
}

impl Elem {
    fn new(fmt: &QuantType) -> Result<Elem, String> {
        let (qmin, qmax) = int_range(&fmt.elem);
        Ok(Elem {
            codec: Codec::new(fmt.elem).map_err(|e| e.to_string())?,
            round: fmt.round,
            sat: fmt.sat,
            modelopt: fmt.convention == Convention::ModelOpt,
            qmin,
            qmax,
            bits: fmt.elem.bits(),
            signed_int: qmin < 0,
        })
    }

    /// The code of `x` under `ap`; `index` is the element's flat index in `[N, K]` (stochastic rounding).
    fn encode(&self, x: f32, ap: Apply, index: usize) -> u8 {
        let rb = if self.round == Rounding::Stochastic {
            stochastic_bits(0, index as u64)
        } else {
            0
        };
        match ap {
            Apply::Mul { m, .. } => self.codec.encode(x * m, self.round, self.sat, rb) as u8,
            Apply::Div(d) => {
                let v = x / d;
                let v = if self.modelopt && v == 0.0 { 0.0 } else { v };
                self.codec.encode(v, self.round, self.sat, rb) as u8
            }
            Apply::Affine { s, z } => {
                let r = round_to_int(x / s, self.round, rb);
                let q = if r.is_nan() {
                    z
                } else {
                    (r.clamp(-1e9, 1e9) as i64 + z as i64).clamp(self.qmin as i64, self.qmax as i64)
                        as i32
                };
                (q as u32 & ((1u32 << self.bits) - 1)) as u8
            }
        }
    }

    /// The value of code `c` under `ap`.
    fn decode(&self, c: u8, ap: Apply) -> f32 {
        let table = self.codec.table();
        match ap {
            Apply::Mul { inv, .. } => table[c as usize] * inv,
            Apply::Div(d) => table[c as usize] * d,
            Apply::Affine { s, z } => {
                let v = if self.signed_int {
                    int_code_value(c, &self.codec.encoding())
                } else {
                    c as i32
                };
                (v - z) as f32 * s
            }
        }
    }
}

/// The scales of the whole `[N, K]` tensor, filled group by group.
struct ScaleState<'a> {
    fmt: &'a QuantType,
    name: &'a str,
    n: usize,
    k: usize,
    /// Scale index of each element of `[N, K]`.
    index: Vec<usize>,
    applies: Vec<Option<Apply>>,
    scales: Option<Scales>,
    zero_points: Option<Vec<u8>>,
    tensor_scale: Option<f32>,
    tensor_amax: f32,
    search: bool,
}

impl ScaleState<'_> {
    fn ts_value(&self) -> TensorScaleValue {
        match (self.fmt.tensor_scale, self.tensor_scale) {
            (TensorScale::Divisor, Some(v)) => TensorScaleValue::Divisor(v),
            (TensorScale::Reciprocal, Some(v)) => TensorScaleValue::Reciprocal(v),
            _ => TensorScaleValue::None,
        }
    }

    /// The arithmetic of stored scale `s` of `scales` (zero point `zp`), as the library's dequantize
    /// derives it.
    fn apply_of(&self, scales: &Scales, s: usize, zp: Option<u8>) -> Result<Apply, String> {
        let fmt = self.fmt;
        let nan = || {
            format!(
                "gptq: weight '{}' got a NaN scale (its values are not finite)",
                self.name
            )
        };
        let ap = match (scales, fmt.scale) {
            (Scales::Codes(c), ScaleType::E8M0) => {
                if c[s] == 0xff {
                    return Err(nan());
                }
                let e = c[s] as i32 - 127;
                Apply::Mul {
                    m: scale::pow2_f32(-e),
                    inv: scale::pow2_f32(e),
                }
            }
            (Scales::Codes(c), ScaleType::UE4M3) => {
                Apply::Div(scale::ue4m3_block_total(c[s], self.ts_value()))
            }
            (Scales::F32(v), ScaleType::F32) => self.float_apply(v[s], zp),
            (Scales::F16(v), ScaleType::F16) => self.float_apply(f16_bits_to_f32(v[s]), zp),
            (Scales::BF16(v), ScaleType::BF16) => self.float_apply(bf16_bits_to_f32(v[s]), zp),
            _ => return Err("gptq: the library returned scales of another type".into()),
        };
        match ap {
            Apply::Mul { inv: v, .. } | Apply::Div(v) | Apply::Affine { s: v, .. }
                if !v.is_finite() =>
            {
                Err(nan())
            }
            ap => Ok(ap),
        }
    }

    fn float_apply(&self, s: f32, zp: Option<u8>) -> Apply {
        match (self.fmt.zero_point, zp) {
            (Some(enc), Some(z)) => Apply::Affine {
                s,
                z: int_code_value(z, &enc),
            },
            _ => Apply::Div(s),
        }
    }

    /// Computes the scales of every group whose elements lie in rows `j .. j + w` (along K) from the
    /// values `cols` (`[N, w]` row-major: `cols[r * w + c]` is element `(r, j + c)` of `[N, K]`).
    fn event(&mut self, j: usize, w: usize, cols: &[f32], elem: &Elem) -> Result<(), String> {
        // Two-level formats take their tensor scale from the input weights' maximum; every other scale
        // comes from the window's own values.
        let opts = QuantizeOptions {
            name: self.name.into(),
            tensor_amax: (self.fmt.tensor_scale != TensorScale::None).then_some(self.tensor_amax),
            ..QuantizeOptions::default()
        };
        let q = quantize(cols, &[self.n, w], self.fmt, &opts).map_err(|e| format!("gptq: {e}"))?;
        let sub_index =
            scale_indices(&self.fmt.scheme, &[self.n, w], self.name).map_err(|e| e.to_string())?;
        if self.tensor_scale.is_none() {
            self.tensor_scale = q.tensor_scale;
        }
        // full scale index -> (sub scale index, the group's values)
        let mut groups: BTreeMap<usize, (usize, Vec<f32>)> = BTreeMap::new();
        for r in 0..self.n {
            for c in 0..w {
                let fs = self.index[r * self.k + j + c];
                let ss = sub_index[r * w + c];
                let g = groups.entry(fs).or_insert((ss, Vec::new()));
                if g.0 != ss {
                    return Err(format!(
                        "gptq: the scale groups of format {} straddle the window of {w} rows at row {j}",
                        self.fmt
                    ));
                }
                g.1.push(cols[r * w + c]);
            }
        }
        if self.scales.is_none() {
            let len: usize = self.applies.len();
            self.scales = Some(match &q.scales {
                Scales::Codes(_) => Scales::Codes(vec![0; len]),
                Scales::F32(_) => Scales::F32(vec![0.0; len]),
                Scales::F16(_) => Scales::F16(vec![0; len]),
                Scales::BF16(_) => Scales::BF16(vec![0; len]),
            });
            if self.fmt.zero_point.is_some() {
                self.zero_points = Some(vec![0; len]);
            }
        }
        for (fs, (ss, values)) in groups {
            let zp = q.zero_points.as_ref().map(|z| z[ss]);
            let mut ap = self.apply_of(&q.scales, ss, zp)?;
            let mut stored = q.scales.clone_one(ss);
            if self.search {
                if let Scales::Codes(c) = &q.scales {
                    let (code, best) = self.search_code(c[ss], &values, elem)?;
                    stored = Scales::Codes(vec![code]);
                    ap = best;
                }
            }
            let out = self.scales.as_mut().expect("initialized above");
            out.set_from(fs, &stored);
            if let (Some(z), Some(v)) = (self.zero_points.as_mut(), zp) {
                z[fs] = v;
            }
            self.applies[fs] = Some(ap);
        }
        Ok(())
    }

    /// MR-GPTQ's format-aware scale: among the codes near `base`, the one with the least squared RTN
    /// error on `values` (ties keep `base`).
    fn search_code(&self, base: u8, values: &[f32], elem: &Elem) -> Result<(u8, Apply), String> {
        let (lo, hi) = match self.fmt.scale {
            ScaleType::E8M0 => (base as i32 - 1, base as i32 + 1),
            _ => (base as i32 - 4, base as i32 + 2),
        };
        let (min_code, max_code) = match self.fmt.scale {
            ScaleType::E8M0 => (0, 0xfe),
            _ => (1, 0x7e),
        };
        let err = |ap: Apply| -> f64 {
            values
                .iter()
                .map(|&x| {
                    let d = x as f64 - elem.decode(elem.encode(x, ap, 0), ap) as f64;
                    d * d
                })
                .sum()
        };
        let base_ap = self.apply_of(&Scales::Codes(vec![base]), 0, None)?;
        let mut best = (base, base_ap, err(base_ap));
        if base as i32 > max_code {
            return Ok((best.0, best.1));
        }
        for c in lo.max(min_code)..=hi.min(max_code) {
            if c == base as i32 {
                continue;
            }
            let ap = self.apply_of(&Scales::Codes(vec![c as u8]), 0, None)?;
            let e = err(ap);
            if e < best.2 {
                best = (c as u8, ap, e);
            }
        }
        Ok((best.0, best.1))
    }
}

trait ScalesExt {
    fn clone_one(&self, i: usize) -> Scales;
    fn set_from(&mut self, i: usize, one: &Scales);
}

impl ScalesExt for Scales {
    fn clone_one(&self, i: usize) -> Scales {
        match self {
            Scales::Codes(v) => Scales::Codes(vec![v[i]]),
            Scales::F32(v) => Scales::F32(vec![v[i]]),
            Scales::F16(v) => Scales::F16(vec![v[i]]),
            Scales::BF16(v) => Scales::BF16(vec![v[i]]),
        }
    }

    fn set_from(&mut self, i: usize, one: &Scales) {
        match (self, one) {
            (Scales::Codes(a), Scales::Codes(b)) => a[i] = b[0],
            (Scales::F32(a), Scales::F32(b)) => a[i] = b[0],
            (Scales::F16(a), Scales::F16(b)) | (Scales::BF16(a), Scales::BF16(b)) => a[i] = b[0],
            _ => unreachable!("one format gives one scale type"),
        }
    }
}

/// The number of rows along K the scale groups starting at a row cover (see the module doc), for the
/// transposed weight `[N, K]`.
fn window(scheme: &Scheme, k: usize) -> usize {
    let along_k = |axis: i32| axis == -1 || axis == 1;
    match *scheme {
        Scheme::PerTensor => k,
        Scheme::PerChannel { axis } if along_k(axis) => 1,
        Scheme::PerChannel { .. } => k,
        Scheme::Group { size, axis } if along_k(axis) => size as usize,
        Scheme::Group { .. } => 1,
        Scheme::Block { cols, .. } => cols as usize,
    }
}

/// Runs GPTQ on `w_kn` (`[K, N]`) with the mean second-moment matrix `h` (`K x K`) into `fmt` (see the
/// module doc). `name` names the weight in messages. Errors are sentences: a format that cannot lay
/// out `[N, K]`, non-finite inputs, a dampened Hessian that is not positive definite.
pub fn gptq(
    w_kn: &[f64],
    k: usize,
    n: usize,
    h: &[f64],
    fmt: &QuantType,
    cfg: &GptqConfig,
    name: &str,
) -> Result<GptqOutput, String> {
    if w_kn.len() != k * n || h.len() != k * k || k == 0 || n == 0 {
        return Err(format!(
            "gptq: weight '{name}' of {} values and a Hessian of {} values do not fit [K, N] = [{k}, {n}]",
            w_kn.len(),
            h.len()
        ));
    }
    if w_kn.iter().any(|v| !v.is_finite()) {
        return Err(format!(
            "gptq: weight '{name}' holds a NaN or infinite value"
        ));
    }
    if h.iter().any(|v| !v.is_finite()) {
        return Err(format!(
            "gptq: the calibration X^T X of '{name}' holds a NaN or infinite value"
        ));
    }
    let index = scale_indices(&fmt.scheme, &[n, k], name).map_err(|e| format!("gptq: {e}"))?;
    let n_scales = index.iter().max().map_or(0, |&m| m + 1);
    let elem = Elem::new(fmt)?;
    let block = cfg.block.max(1);
    let tensor_amax = w_kn.iter().fold(0f64, |m, v| m.max(v.abs())) as f32;

    let mut w = w_kn.to_vec();
    let mut h = h.to_vec();
    // 1. Dead inputs.
    for d in 0..k {
        if h[d * k + d] == 0.0 {
            h[d * k + d] = 1.0;
            w[d * n..(d + 1) * n].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let mut state = ScaleState {
        fmt,
        name,
        n,
        k,
        index,
        applies: vec![None; n_scales],
        scales: None,
        zero_points: None,
        tensor_scale: None,
        tensor_amax,
        search: cfg.scale_search,
    };
    // 2. act_order: static scales from the (dead-zeroed) weights, then the permutation.
    let mut perm: Vec<usize> = (0..k).collect();
    if cfg.act_order {
        let all: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k] as f32).collect();
        state.event(0, k, &all, &elem)?;
        perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
        let wp: Vec<f64> = perm
            .iter()
            .flat_map(|&p| w[p * n..(p + 1) * n].iter().copied())
            .collect();
        let mut hp = vec![0f64; k * k];
        for (i, &pi) in perm.iter().enumerate() {
            for (j, &pj) in perm.iter().enumerate() {
                hp[i * k + j] = h[pi * k + pj];
            }
        }
        w = wp;
        h = hp;
    }
    // 3. Dampening and the Cholesky factor of the inverse.
    let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    for i in 0..k {
        h[i * k + i] += cfg.damp * mean_diag;
    }
    let u = upper_cholesky_of_inverse(&h, k).ok_or_else(|| {
        format!(
            "gptq: the dampened Hessian of '{name}' is not positive definite (damp = {}); raise damp",
            cfg.damp
        )
    })?;
    drop(h);
    // 4. The column loop with lazy batch updates.
    let win = window(&fmt.scheme, k);
    let mut codes = vec![0u8; n * k];
    let mut deq = vec![0f32; k * n];
    let mut err = vec![0f64; block * n];
    let mut loss = 0f64;
    let mut sub = Vec::new();
    let mut i1 = 0;
    while i1 < k {
        let i2 = (i1 + block).min(k);
        for i in i1..i2 {
            let col = perm[i];
            if !cfg.act_order && col.is_multiple_of(win) {
                // The current values of rows col .. col + win: rows in this block are up to date; rows
                // after it still owe the updates of rows i1 .. i of this block.
                sub.clear();
                sub.resize(n * win, 0f32);
                for c in 0..win {
                    let t = i + c;
                    for r in 0..n {
                        let mut v = w[t * n + r];
                        if t >= i2 {
                            for s in i1..i {
                                v -= err[(s - i1) * n + r] * u[s * k + t];
                            }
                        }
                        sub[r * win + c] = v as f32;
                    }
                }
                state.event(col, win, &sub, &elem)?;
            }
            let d = u[i * k + i];
            let (before, rest) = w.split_at_mut((i + 1) * n);
            let row = &before[i * n..];
            let e = &mut err[(i - i1) * n..(i - i1 + 1) * n];
            for r in 0..n {
                let x = row[r];
                let s = state.index[r * k + col];
                let ap = state.applies[s].ok_or_else(|| {
                    format!("gptq: internal error: no scale for row {col} of '{name}'")
                })?;
                let code = elem.encode(x as f32, ap, r * k + col);
                let q = elem.decode(code, ap);
                codes[r * k + col] = code;
                deq[col * n + r] = q;
                let diff = x - q as f64;
                loss += diff * diff / (d * d) / 2.0;
                e[r] = diff / d;
            }
            for t in i + 1..i2 {
                let f = u[i * k + t];
                if f != 0.0 {
                    let dst = &mut rest[(t - i - 1) * n..(t - i) * n];
                    for (x, &ev) in dst.iter_mut().zip(e.iter()) {
                        *x -= f * ev;
                    }
                }
            }
        }
        for t in i2..k {
            let dst = &mut w[t * n..(t + 1) * n];
            for s in i1..i2 {
                let f = u[s * k + t];
                if f != 0.0 {
                    for (x, &ev) in dst.iter_mut().zip(&err[(s - i1) * n..(s - i1 + 1) * n]) {
                        *x -= f * ev;
                    }
                }
            }
        }
        i1 = i2;
    }
    if deq.iter().any(|v| !v.is_finite()) {
        return Err(format!(
            "gptq: weight '{name}' quantized to non-finite values; the calibration statistics may be degenerate"
        ));
    }
    let scales = state
        .scales
        .take()
        .ok_or_else(|| format!("gptq: internal error: no scales for '{name}'"))?;
    if state.applies.iter().any(Option::is_none) {
        return Err(format!(
            "gptq: internal error: a scale of '{name}' was never set"
        ));
    }
    let packed = qc_quant::pack::pack(&codes, fmt.elem.bits(), fmt.pack)
        .map_err(|e| format!("gptq: {e}"))?;
    let tensor = QuantizedTensor {
        name: name.into(),
        format: fmt.clone(),
        shape: vec![n, k],
        codes,
        scales,
        scale_shape: scale_shape(fmt, &[n, k], name).map_err(|e| format!("gptq: {e}"))?,
        tensor_scale: state.tensor_scale,
        zero_points: state.zero_points.take(),
        packed,
    };
    Ok(GptqOutput {
        tensor,
        dequantized: deq,
        loss,
    })
}

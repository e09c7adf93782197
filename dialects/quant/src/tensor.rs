//! Whole-tensor quantization and dequantization for every [`QuantType`].
//!
//! # Scale layout (the `scales` array and its `scale_shape`), for a tensor of shape `dims`
//! - per-tensor: one scale, shape `[1]`.
//! - per-channel along axis a: shape `[dims[a]]`.
//! - group of g along axis a: `dims` with `dims[a]` replaced by `dims[a] / g` (row-major, like the data).
//! - 2-D block r x c: `dims[..rank-2] ++ [dims[rank-2] / r, dims[rank-1] / c]`, row-major. This is the
//!   plain (linear) layout, not the tcgen05 / cuBLAS swizzled layout.
//!
//! Scales are stored as codes for e8m0 (2^(code-127), 0xFF NaN) and ue4m3 (e4m3fn bits, sign 0), and as
//! f32 / f16 / bf16 values otherwise; zero points (asymmetric formats) as codes of the zero-point encoding,
//! one per scale. Two-level formats store one f32 `tensor_scale` (a divisor gs = amax / (max_elem * 448)
//! or its reciprocal, per the format's `tensor_scale`).
//!
//! # Arithmetic (q = code, x_hat = dequantized value)
//! - float scales (rule amax): s = amax_block / max_elem in f32, rounded to the scale type; a block of
//!   zeros gets s = 1 and an s that rounds to zero gets the scale type's smallest positive value;
//!   q = encode(x / s); x_hat = decode(q) * s.
//! - asymmetric (zero point): lo = min(min_block, 0), hi = max(max_block, 0), s = (hi - lo) / (qmax - qmin),
//!   z = clamp(qmin - rne(lo / s), qmin, qmax); q = clamp(round(x / s) + z, qmin, qmax) with the full
//!   integer range; x_hat = (q - z) * s.
//! - e8m0 scales (MX): E from [`crate::scale::mx_exponent`]; q = encode(x * 2^-E) (identical to x / 2^E);
//!   x_hat = decode(q) * 2^E.
//! - ue4m3 scales (NVFP4, NVINT4): code from [`crate::scale::ue4m3_block_code`], total t from
//!   [`crate::scale::ue4m3_block_total`]; q = encode(x / t) (ModelOpt and torchao both divide); in the
//!   ModelOpt convention a zero quotient (including -0) gets the positive-zero code, as its sign test
//!   `x < 0` does; x_hat = decode(q) * t.
//!
//! Elements are encoded with the format's rounding (or the override in [`QuantizeOptions`]) and
//! saturation; see [`crate::codec`].
//!
//! # NaN and infinity
//! [`NonFinitePolicy::Error`] (the default) refuses any NaN or infinite input with an error naming the
//! tensor and the flat index of the first one. [`NonFinitePolicy::Propagate`] quantizes them: a block
//! whose maximum magnitude is not finite gets a NaN scale (f32/f16/bf16 NaN, e8m0 0xFF, ue4m3 0x7F), and
//! all of its elements dequantize to NaN. (RCEIL is the exception the hardware makes: an infinite block
//! maximum saturates the scale to 2^127.) A two-level format whose tensor maximum is not finite gets a
//! NaN tensor scale.

use crate::codec::{
    bf16_bits_to_f32, f16_bits_to_f32, f32_to_bf16_bits, f32_to_f16_bits, round_to_int,
    stochastic_bits, Codec,
};
use crate::pack;
use crate::scale::{self, TensorScaleValue};
use crate::QuantError;
use qc_ir::quant::{Convention, Encoding, QuantType, Rounding, ScaleType, Scheme, TensorScale};

/// What to do with NaN and infinite inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinitePolicy {
    /// Refuse them with [`QuantError::NonFinite`].
    #[default]
    Error,
    /// Quantize them: their blocks get NaN scales (see the module documentation).
    Propagate,
}

/// Options of [`quantize`] beyond the format.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// The tensor's name, used in error messages.
    pub name: String,
    /// Overrides the format's element rounding.
    pub rounding: Option<Rounding>,
    /// Seed of stochastic rounding (element i uses `stochastic_bits(seed, i)`).
    pub seed: u64,
    /// NaN / infinity policy.
    pub nonfinite: NonFinitePolicy,
    /// A static (calibrated) maximum |x| of the whole tensor, used instead of the data's own: a
    /// per-tensor format takes its one scale from it (with a zero point, from the range [-amax, amax]),
    /// a two-level format its tensor scale, and a block of a two-level format whose own maximum exceeds
    /// it is scaled as if its maximum were this one. Values beyond it saturate per the format's
    /// saturation. Formats with only group, channel or block scales ignore it.
    pub tensor_amax: Option<f32>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            name: "tensor".into(),
            rounding: None,
            seed: 0,
            nonfinite: NonFinitePolicy::Error,
            tensor_amax: None,
        }
    }
}

/// Stored scales: codes for e8m0 / ue4m3, values (or their bits) otherwise.
#[derive(Clone, Debug, PartialEq)]
pub enum Scales {
    /// e8m0 or ue4m3 codes.
    Codes(Vec<u8>),
    /// f32 values.
    F32(Vec<f32>),
    /// IEEE binary16 bits.
    F16(Vec<u16>),
    /// bfloat16 bits.
    BF16(Vec<u16>),
}

impl Scales {
    /// Number of scales.
    pub fn len(&self) -> usize {
        match self {
            Scales::Codes(v) => v.len(),
            Scales::F32(v) => v.len(),
            Scales::F16(v) | Scales::BF16(v) => v.len(),
        }
    }

    /// True when there are no scales.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A quantized tensor: everything needed to decode it, in the layouts documented in this module.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    /// The tensor's name.
    pub name: String,
    /// The format.
    pub format: QuantType,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// One code per element, unpacked, row-major.
    pub codes: Vec<u8>,
    /// The stored scales.
    pub scales: Scales,
    /// The shape of `scales`.
    pub scale_shape: Vec<usize>,
    /// The stored second-level scale, for two-level formats.
    pub tensor_scale: Option<f32>,
    /// Zero-point codes (one per scale), for asymmetric formats.
    pub zero_points: Option<Vec<u8>>,
    /// The codes packed per the format's packing (see [`crate::pack`]).
    pub packed: Vec<u8>,
}

/// Where each element's scale lives.
enum Map {
    /// Element i uses scale i / block.
    Contig(usize),
    /// Element i uses scale idx[i].
    Index(Vec<u32>),
}

struct Layout {
    scale_shape: Vec<usize>,
    n_scales: usize,
    map: Map,
}

fn resolve_axis(axis: i32, rank: usize, name: &str) -> Result<usize, QuantError> {
    let a = if axis < 0 {
        axis as i64 + rank as i64
    } else {
        axis as i64
    };
    if a < 0 || a >= rank as i64 {
        return Err(QuantError::BadLayout {
            tensor: name.into(),
            message: format!("axis {axis} is out of range for a tensor of rank {rank}"),
        });
    }
    Ok(a as usize)
}

/// The shape of the `scales` array of a tensor of `shape` in `fmt` (see the module documentation); the
/// error names the tensor when the shape does not fit the scheme.
pub fn scale_shape(fmt: &QuantType, shape: &[usize], name: &str) -> Result<Vec<usize>, QuantError> {
    Ok(layout(&fmt.scheme, shape, name)?.scale_shape)
}

/// For each element of a row-major tensor of `shape` in a format of `scheme`, the index of its scale in
/// the `scales` array (the layout of the module documentation).
pub fn scale_indices(
    scheme: &Scheme,
    shape: &[usize],
    name: &str,
) -> Result<Vec<usize>, QuantError> {
    let n: usize = shape.iter().product();
    Ok(match layout(scheme, shape, name)?.map {
        Map::Contig(b) => (0..n).map(|i| i / b).collect(),
        Map::Index(idx) => idx.into_iter().map(|i| i as usize).collect(),
    })
}

fn layout(scheme: &Scheme, shape: &[usize], name: &str) -> Result<Layout, QuantError> {
    let n: usize = shape.iter().product();
    let rank = shape.len();
    let bad = |message: String| QuantError::BadLayout {
        tensor: name.into(),
        message,
    };
    match *scheme {
        Scheme::PerTensor => Ok(Layout {
            scale_shape: vec![1],
            n_scales: 1,
            map: Map::Contig(n.max(1)),
        }),
        Scheme::PerChannel { axis } => {
            let a = resolve_axis(axis, rank, name)?;
            let (outer, len, inner) = split(shape, a);
            let map = if outer == 1 {
                Map::Contig(inner.max(1))
            } else {
                Map::Index((0..n).map(|i| ((i / inner) % len) as u32).collect())
            };
            Ok(Layout {
                scale_shape: vec![len],
                n_scales: len,
                map,
            })
        }
        Scheme::Group { size, axis } => {
            let a = resolve_axis(axis, rank, name)?;
            let g = size as usize;
            if g == 0 || !shape[a].is_multiple_of(g) {
                return Err(bad(format!(
                    "dimension {a} of size {} is not a multiple of the group size {size}",
                    shape[a]
                )));
            }
            let (_, len, inner) = split(shape, a);
            let mut scale_shape = shape.to_vec();
            scale_shape[a] = len / g;
            let n_scales = scale_shape.iter().product();
            let map = if inner == 1 {
                Map::Contig(g)
            } else {
                let ng = len / g;
                Map::Index(
                    (0..n)
                        .map(|i| {
                            let (o, r) = (i / (len * inner), i % (len * inner));
                            let (l, k) = (r / inner, r % inner);
                            ((o * ng + l / g) * inner + k) as u32
                        })
                        .collect(),
                )
            };
            Ok(Layout {
                scale_shape,
                n_scales,
                map,
            })
        }
        Scheme::Block { rows, cols } => {
            if rank < 2 {
                return Err(bad(format!(
                    "a 2-D block scheme needs a tensor of rank 2 or more, not {rank}"
                )));
            }
            let (r, c) = (shape[rank - 2], shape[rank - 1]);
            let (br, bc) = (rows as usize, cols as usize);
            if r % br != 0 || c % bc != 0 {
                return Err(bad(format!(
                    "dimensions {r}x{c} are not multiples of the {rows}x{cols} block"
                )));
            }
            let mut scale_shape = shape[..rank - 2].to_vec();
            scale_shape.extend([r / br, c / bc]);
            let n_scales = scale_shape.iter().product();
            let (nr, nc) = (r / br, c / bc);
            let map = Map::Index(
                (0..n)
                    .map(|i| {
                        let (b, rem) = (i / (r * c), i % (r * c));
                        let (y, x) = (rem / c, rem % c);
                        ((b * nr + y / br) * nc + x / bc) as u32
                    })
                    .collect(),
            );
            Ok(Layout {
                scale_shape,
                n_scales,
                map,
            })
        }
    }
}

fn split(shape: &[usize], a: usize) -> (usize, usize, usize) {
    (
        shape[..a].iter().product(),
        shape[a],
        shape[a + 1..].iter().product(),
    )
}

/// How a block's elements are scaled, as computed by quantize and recomputed by dequantize.
#[derive(Clone, Copy)]
enum Apply {
    /// q = encode(x * m); x_hat = decode(q) * inv (power-of-two scales: m = 2^-E, inv = 2^E).
    Mul { m: f32, inv: f32 },
    /// q = encode(x / d); x_hat = decode(q) * d.
    Div(f32),
    /// q = clamp(round(x / s) + z); x_hat = (q - z) * s.
    Affine { s: f32, z: i32 },
}

fn round_scale(st: ScaleType, s: f32) -> (f32, Stored) {
    match st {
        ScaleType::F32 => (s, Stored::F32(s)),
        ScaleType::F16 => {
            let b = f32_to_f16_bits(s);
            (f16_bits_to_f32(b), Stored::Bits(b))
        }
        ScaleType::BF16 => {
            let b = f32_to_bf16_bits(s);
            (bf16_bits_to_f32(b), Stored::Bits(b))
        }
        ScaleType::E8M0 | ScaleType::UE4M3 => unreachable!("code scales are not rounded here"),
    }
}

fn min_positive(st: ScaleType) -> f32 {
    match st {
        ScaleType::F32 => f32::from_bits(1),
        ScaleType::F16 => f16_bits_to_f32(1),
        ScaleType::BF16 => bf16_bits_to_f32(1),
        ScaleType::E8M0 | ScaleType::UE4M3 => unreachable!("code scales have no float minimum"),
    }
}

enum Stored {
    F32(f32),
    Bits(u16),
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

fn zp_code(z: i32, zp: &Encoding) -> u8 {
    (z as u32 & ((1u32 << zp.bits()) - 1)) as u8
}

fn zp_value(code: u8, zp: &Encoding) -> i32 {
    match *zp {
        Encoding::Int { bits, signed: true } if code as i32 >= 1 << (bits - 1) => {
            code as i32 - (1 << bits)
        }
        _ => code as i32,
    }
}

/// Quantizes `data` (row-major, `shape`) to `fmt`. Errors on an invalid format, a length or layout that
/// does not fit, or (under the default policy) a NaN or infinity, naming the tensor and index.
pub fn quantize(
    data: &[f32],
    shape: &[usize],
    fmt: &QuantType,
    opts: &QuantizeOptions,
) -> Result<QuantizedTensor, QuantError> {
    let name = opts.name.as_str();
    fmt.validate().map_err(QuantError::InvalidFormat)?;
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(QuantError::ShapeMismatch {
            tensor: name.into(),
            shape: shape.to_vec(),
            expected: n,
            actual: data.len(),
        });
    }
    if opts.nonfinite == NonFinitePolicy::Error {
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite {
                tensor: name.into(),
                index: i,
                value: data[i],
                format: fmt.to_string(),
            });
        }
    }
    if fmt.scale == ScaleType::E8M0 && fmt.tensor_scale != TensorScale::None {
        return Err(QuantError::Unsupported(
            "a second-level tensor scale over e8m0 block scales is not implemented".into(),
        ));
    }
    let lay = layout(&fmt.scheme, shape, name)?;
    let codec = Codec::new(fmt.elem)?;
    let round = opts.rounding.unwrap_or(fmt.round);

    // Block statistics.
    let mut amax = vec![0f32; lay.n_scales];
    let mut lo = vec![
        0f32;
        if fmt.zero_point.is_some() {
            lay.n_scales
        } else {
            0
        }
    ];
    let mut hi = lo.clone();
    let nanmax = |m: f32, v: f32| {
        if v.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(v.abs())
        }
    };
    match &lay.map {
        Map::Contig(b) => {
            for (a, chunk) in amax.iter_mut().zip(data.chunks(*b)) {
                *a = block_amax(chunk);
            }
            if fmt.zero_point.is_some() {
                for ((l, h), chunk) in lo.iter_mut().zip(hi.iter_mut()).zip(data.chunks(*b)) {
                    (*l, *h) = chunk
                        .iter()
                        .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
                }
            }
        }
        Map::Index(idx) => {
            for (&v, &s) in data.iter().zip(idx) {
                let s = s as usize;
                amax[s] = nanmax(amax[s], v);
                if fmt.zero_point.is_some() {
                    lo[s] = lo[s].min(v);
                    hi[s] = hi[s].max(v);
                }
            }
        }
    }

    // A static tensor maximum replaces the one scale of a per-tensor format.
    if let (Scheme::PerTensor, Some(t)) = (fmt.scheme, opts.tensor_amax) {
        amax[0] = t;
        if fmt.zero_point.is_some() {
            (lo[0], hi[0]) = (-t, t);
        }
    }

    // Scales.
    let max_elem = fmt.elem.max_finite() as f32;
    let mut applies = Vec::with_capacity(lay.n_scales);
    let mut tensor_scale = None;
    let mut zero_points = None;
    let scales = match fmt.scale {
        ScaleType::E8M0 => {
            let mut codes = Vec::with_capacity(lay.n_scales);
            for &a in &amax {
                let e = scale::mx_exponent(a, fmt.rule, &fmt.elem);
                codes.push(scale::e8m0_code(e));
                applies.push(match e {
                    Some(e) => Apply::Mul {
                        m: scale::pow2_f32(-e),
                        inv: scale::pow2_f32(e),
                    },
                    None => Apply::Mul {
                        m: f32::NAN,
                        inv: f32::NAN,
                    },
                });
            }
            Scales::Codes(codes)
        }
        ScaleType::UE4M3 => {
            let t_amax = opts
                .tensor_amax
                .unwrap_or_else(|| amax.iter().fold(0f32, |m, &a| nanmax(m, a)));
            let ts = TensorScaleValue::from_amax(fmt.tensor_scale, t_amax, max_elem);
            tensor_scale = ts.stored();
            let mut codes = Vec::with_capacity(lay.n_scales);
            for &a in &amax {
                // Under a static tensor maximum, a larger block saturates instead of overflowing its scale.
                let a = match opts.tensor_amax {
                    Some(t) if a > t && t.is_finite() => t,
                    _ => a,
                };
                let code = if a.is_finite() {
                    scale::ue4m3_block_code(a, fmt.convention, ts, max_elem)
                } else {
                    0x7f
                };
                codes.push(code);
                applies.push(Apply::Div(scale::ue4m3_block_total(code, ts)));
            }
            Scales::Codes(codes)
        }
        st @ (ScaleType::F32 | ScaleType::F16 | ScaleType::BF16) => {
            let mut f32s = Vec::new();
            let mut bits = Vec::new();
            let mut zps = Vec::new();
            for i in 0..lay.n_scales {
                let (raw, zrange) = match fmt.zero_point {
                    Some(_) => {
                        let (qmin, qmax) = int_range(&fmt.elem);
                        ((hi[i] - lo[i]) / (qmax - qmin) as f32, Some((qmin, qmax)))
                    }
                    None => (amax[i] / max_elem, None),
                };
                let blk_finite = amax[i].is_finite()
                    && (zrange.is_none() || (lo[i].is_finite() && hi[i].is_finite()));
                let raw = if !blk_finite {
                    f32::NAN
                } else if raw == 0.0 {
                    1.0
                } else {
                    raw
                };
                let (mut s, mut stored) = round_scale(st, raw);
                if s == 0.0 {
                    (s, stored) = round_scale(st, min_positive(st));
                }
                match stored {
                    Stored::F32(v) => f32s.push(v),
                    Stored::Bits(b) => bits.push(b),
                }
                match (zrange, fmt.zero_point) {
                    (Some((qmin, qmax)), Some(zp)) => {
                        let z = if s.is_finite() {
                            (qmin as f32 - (lo[i] / s).round_ties_even())
                                .clamp(qmin as f32, qmax as f32) as i32
                        } else {
                            0
                        };
                        zps.push(zp_code(z, &zp));
                        applies.push(Apply::Affine { s, z });
                    }
                    _ => applies.push(Apply::Div(s)),
                }
            }
            if fmt.zero_point.is_some() {
                zero_points = Some(zps);
            }
            match st {
                ScaleType::F32 => Scales::F32(f32s),
                ScaleType::F16 => Scales::F16(bits),
                _ => Scales::BF16(bits),
            }
        }
    };

    // Elements.
    let mut codes = vec![0u8; n];
    let modelopt = fmt.convention == Convention::ModelOpt;
    let (qmin, qmax) = int_range(&fmt.elem);
    let seed = opts.seed;
    let encode_one = |x: f32, ap: Apply, i: usize| -> u8 {
        let rb = if round == Rounding::Stochastic {
            stochastic_bits(seed, i as u64)
        } else {
            0
        };
        match ap {
            Apply::Mul { m, .. } => codec.encode(x * m, round, fmt.sat, rb) as u8,
            Apply::Div(d) => {
                let v = x / d;
                if modelopt && v == 0.0 {
                    codec.encode(0.0, round, fmt.sat, rb) as u8
                } else {
                    codec.encode(v, round, fmt.sat, rb) as u8
                }
            }
            Apply::Affine { s, z } => affine_code(x, s, z, qmin, qmax, round, rb, fmt.elem.bits()),
        }
    };
    match &lay.map {
        Map::Contig(b) => {
            for (blk, ((out, xs), ap)) in codes
                .chunks_mut(*b)
                .zip(data.chunks(*b))
                .zip(&applies)
                .enumerate()
            {
                let i0 = (blk * b) as u64;
                match *ap {
                    Apply::Mul { m, .. } => {
                        codec.encode_scaled(xs, m, out, round, fmt.sat, seed, i0)
                    }
                    Apply::Div(d) if !modelopt => {
                        codec.encode_divided(xs, d, out, round, fmt.sat, seed, i0)
                    }
                    ap => {
                        for (j, (o, &x)) in out.iter_mut().zip(xs).enumerate() {
                            *o = encode_one(x, ap, i0 as usize + j);
                        }
                    }
                }
            }
        }
        Map::Index(idx) => {
            for (i, ((o, &x), &s)) in codes.iter_mut().zip(data).zip(idx).enumerate() {
                *o = encode_one(x, applies[s as usize], i);
            }
        }
    }
    let packed = pack::pack(&codes, fmt.elem.bits(), fmt.pack)?;
    Ok(QuantizedTensor {
        name: name.into(),
        format: fmt.clone(),
        shape: shape.to_vec(),
        codes,
        scales,
        scale_shape: lay.scale_shape,
        tensor_scale,
        zero_points,
        packed,
    })
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn affine_code(
    x: f32,
    s: f32,
    z: i32,
    qmin: i32,
    qmax: i32,
    round: Rounding,
    rb: u32,
    bits: u32,
) -> u8 {
    let r = round_to_int(x / s, round, rb);
    let q = if r.is_nan() {
        z
    } else {
        (r.clamp(-1e9, 1e9) as i64 + z as i64).clamp(qmin as i64, qmax as i64) as i32
    };
    (q as u32 & ((1u32 << bits) - 1)) as u8
}

/// Maximum magnitude of a block, NaN if any element is NaN.
#[inline]
fn block_amax(xs: &[f32]) -> f32 {
    // Eight independent lanes so the compiler can vectorize; NaN is tracked separately.
    let mut m = [0f32; 8];
    let mut nan = false;
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            let a = c[k].abs();
            nan |= a.is_nan();
            m[k] = if a > m[k] { a } else { m[k] };
        }
    }
    for &v in chunks.remainder() {
        let a = v.abs();
        nan |= a.is_nan();
        m[0] = if a > m[0] { a } else { m[0] };
    }
    if nan {
        return f32::NAN;
    }
    m.iter().fold(0f32, |a, &b| a.max(b))
}

/// Recomputes each block's [`Apply`] from the stored scales.
fn stored_applies(q: &QuantizedTensor, n_scales: usize) -> Result<Vec<Apply>, QuantError> {
    let corrupt = |message: String| QuantError::Corrupt {
        tensor: q.name.clone(),
        message,
    };
    if q.scales.len() != n_scales {
        return Err(corrupt(format!(
            "{} scales stored where the layout needs {n_scales}",
            q.scales.len()
        )));
    }
    let fmt = &q.format;
    let ts = match (fmt.tensor_scale, q.tensor_scale) {
        (TensorScale::None, _) => TensorScaleValue::None,
        (TensorScale::Divisor, Some(v)) => TensorScaleValue::Divisor(v),
        (TensorScale::Reciprocal, Some(v)) => TensorScaleValue::Reciprocal(v),
        (k, None) => {
            return Err(corrupt(format!(
                "the format has a {k} tensor scale but none is stored"
            )))
        }
    };
    let out = match (&q.scales, fmt.scale) {
        (Scales::Codes(c), ScaleType::E8M0) => c
            .iter()
            .map(|&c| {
                if c == 0xff {
                    Apply::Mul {
                        m: f32::NAN,
                        inv: f32::NAN,
                    }
                } else {
                    let e = c as i32 - 127;
                    Apply::Mul {
                        m: scale::pow2_f32(-e),
                        inv: scale::pow2_f32(e),
                    }
                }
            })
            .collect(),
        (Scales::Codes(c), ScaleType::UE4M3) => c
            .iter()
            .map(|&c| Apply::Div(scale::ue4m3_block_total(c, ts)))
            .collect(),
        (s, st @ (ScaleType::F32 | ScaleType::F16 | ScaleType::BF16)) => {
            let vals: Vec<f32> = match (s, st) {
                (Scales::F32(v), ScaleType::F32) => v.clone(),
                (Scales::F16(v), ScaleType::F16) => v.iter().map(|&b| f16_bits_to_f32(b)).collect(),
                (Scales::BF16(v), ScaleType::BF16) => {
                    v.iter().map(|&b| bf16_bits_to_f32(b)).collect()
                }
                _ => {
                    return Err(corrupt(format!(
                        "stored scales do not have the format's scale type {st}"
                    )))
                }
            };
            match (fmt.zero_point, &q.zero_points) {
                (Some(zp), Some(z)) if z.len() == n_scales => vals
                    .iter()
                    .zip(z)
                    .map(|(&s, &c)| Apply::Affine {
                        s,
                        z: zp_value(c, &zp),
                    })
                    .collect(),
                (Some(_), _) => {
                    return Err(corrupt(format!("the format needs {n_scales} zero points")))
                }
                (None, _) => vals.into_iter().map(Apply::Div).collect(),
            }
        }
        (_, st) => {
            return Err(corrupt(format!(
                "stored scales do not have the format's scale type {st}"
            )))
        }
    };
    Ok(out)
}

/// Decodes a quantized tensor to f32 (row-major, `q.shape`). Errors if its parts are inconsistent
/// (wrong counts, codes wider than the element, a missing tensor scale or zero points).
pub fn dequantize(q: &QuantizedTensor) -> Result<Vec<f32>, QuantError> {
    q.format.validate().map_err(QuantError::InvalidFormat)?;
    let n: usize = q.shape.iter().product();
    if q.codes.len() != n {
        return Err(QuantError::ShapeMismatch {
            tensor: q.name.clone(),
            shape: q.shape.clone(),
            expected: n,
            actual: q.codes.len(),
        });
    }
    let bits = q.format.elem.bits();
    if let Some(i) = q.codes.iter().position(|&c| (c as u32) >> bits != 0) {
        return Err(QuantError::CodeOutOfRange {
            tensor: q.name.clone(),
            index: i,
            code: q.codes[i] as u32,
            bits,
        });
    }
    let lay = layout(&q.format.scheme, &q.shape, &q.name)?;
    let applies = stored_applies(q, lay.n_scales)?;
    let codec = Codec::new(q.format.elem)?;
    let table = codec.table();
    let (qmin, _) = int_range(&q.format.elem);
    let signed = qmin < 0;
    let deq = |c: u8, ap: Apply| -> f32 {
        match ap {
            Apply::Mul { inv, .. } => table[c as usize] * inv,
            Apply::Div(d) => table[c as usize] * d,
            Apply::Affine { s, z } => {
                let v = if signed {
                    zp_value(c, &q.format.elem)
                } else {
                    c as i32
                };
                (v - z) as f32 * s
            }
        }
    };
    let mut out = vec![0f32; n];
    match &lay.map {
        Map::Contig(b) => {
            for ((o, c), &ap) in out.chunks_mut(*b).zip(q.codes.chunks(*b)).zip(&applies) {
                match ap {
                    Apply::Mul { inv: m, .. } | Apply::Div(m) => {
                        for (o, &c) in o.iter_mut().zip(c) {
                            *o = table[c as usize] * m;
                        }
                    }
                    ap => {
                        for (o, &c) in o.iter_mut().zip(c) {
                            *o = deq(c, ap);
                        }
                    }
                }
            }
        }
        Map::Index(idx) => {
            for ((o, &c), &s) in out.iter_mut().zip(&q.codes).zip(idx) {
                *o = deq(c, applies[s as usize]);
            }
        }
    }
    Ok(out)
}

/// The format with its scheme's axis replaced (per-channel and group schemes); errors for schemes
/// without an axis.
pub fn with_axis(fmt: &QuantType, axis: i32) -> Result<QuantType, QuantError> {
    let mut f = fmt.clone();
    f.scheme = match fmt.scheme {
        Scheme::PerChannel { .. } => Scheme::PerChannel { axis },
        Scheme::Group { size, .. } => Scheme::Group { size, axis },
        s => {
            return Err(QuantError::Unsupported(format!(
                "scheme {s} has no axis to set"
            )))
        }
    };
    Ok(f)
}

/// Signal-to-quantization-noise ratio in dB: -10 log10(||x - x_hat||^2 / ||x||^2), accumulated in f64.
pub fn qsnr_db(x: &[f32], x_hat: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(x_hat) {
        let d = a as f64 - b as f64;
        num += d * d;
        den += a as f64 * a as f64;
    }
    -10.0 * (num / den).log10()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_ir::quant::named_format;

    #[test]
    fn round_trips_every_named_format() {
        let shape = [4usize, 256];
        let data: Vec<f32> = (0..1024)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect();
        for f in qc_ir::quant::named_formats() {
            let q = quantize(&data, &shape, &f.ty, &QuantizeOptions::default())
                .unwrap_or_else(|e| panic!("{}: {e}", f.name));
            let x = dequantize(&q).unwrap();
            let snr = qsnr_db(&data, &x);
            assert!(snr > 10.0, "{}: qsnr {snr}", f.name);
            let unpacked =
                pack::unpack(&q.packed, q.codes.len(), f.ty.elem.bits(), f.ty.pack).unwrap();
            assert_eq!(unpacked, q.codes, "{}", f.name);
        }
    }

    #[test]
    fn errors_name_tensor_and_index() {
        let fmt = named_format("mxfp4").unwrap().ty.clone();
        let mut d = vec![1.0f32; 64];
        d[37] = f32::NAN;
        let e = quantize(
            &d,
            &[2, 32],
            &fmt,
            &QuantizeOptions {
                name: "w".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 37, .. }), "{e}");
        assert!(e.to_string().contains("`w`"));
        let e = quantize(&d, &[2, 30], &fmt, &QuantizeOptions::default()).unwrap_err();
        assert!(matches!(e, QuantError::ShapeMismatch { .. }));
        let e = quantize(&[0.0; 60], &[2, 30], &fmt, &QuantizeOptions::default()).unwrap_err();
        assert!(e.to_string().contains("multiple"), "{e}");
        let ch = named_format("int8_channel").unwrap().ty.clone();
        let e = quantize(
            &[0.0; 4],
            &[4],
            &with_axis(&ch, 3).unwrap(),
            &QuantizeOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("axis 3"), "{e}");
    }

    #[test]
    fn propagate_gives_nan_blocks() {
        let fmt = named_format("mxfp8").unwrap().ty.clone();
        let mut d = vec![1.0f32; 64];
        d[3] = f32::INFINITY;
        let opts = QuantizeOptions {
            nonfinite: NonFinitePolicy::Propagate,
            ..Default::default()
        };
        let q = quantize(&d, &[64], &fmt, &opts).unwrap();
        assert_eq!(q.scales, Scales::Codes(vec![0xff, 127 - 8]));
        let x = dequantize(&q).unwrap();
        assert!(x[..32].iter().all(|v| v.is_nan()));
        assert!(x[32..].iter().all(|&v| v == 1.0));
    }

    #[test]
    fn a_static_tensor_amax_sets_per_tensor_and_tensor_scales_and_saturates_beyond() {
        let stat = |a| QuantizeOptions {
            tensor_amax: Some(a),
            ..Default::default()
        };
        // Per tensor: the scale comes from the static amax; 8 > 4 saturates to the value of 4.
        let fp8 = named_format("fp8_e4m3").unwrap().ty.clone();
        let d = [1.0f32, -2.0, 4.0, 8.0];
        let q = quantize(&d, &[4], &fp8, &stat(4.0)).unwrap();
        assert_eq!(q.scales, Scales::F32(vec![4.0 / 448.0]));
        let x = dequantize(&q).unwrap();
        assert!((x[2] - 4.0).abs() < 1e-6 && x[3] == x[2], "{x:?}");
        // With a zero point the range is [-amax, amax].
        let u8f = named_format("uint8").unwrap().ty.clone();
        let q = quantize(&d, &[4], &u8f, &stat(4.0)).unwrap();
        assert_eq!(q.scales, Scales::F32(vec![8.0 / 255.0]));
        // Two-level: a block above the static amax saturates (no NaN block scale).
        let nv = named_format("nvfp4").unwrap().ty.clone();
        let mut d = vec![0.5f32; 32];
        d[20] = 10.0;
        let x = dequantize(&quantize(&d, &[32], &nv, &stat(2.0)).unwrap()).unwrap();
        assert!(x.iter().all(|v| v.is_finite()), "{x:?}");
        assert!((x[20] - 2.0).abs() < 1e-6, "{}", x[20]);
        assert_eq!(x[0], 0.5);
        // Formats with only group or channel scales ignore it.
        for name in ["int4_g32", "int8_channel", "mxfp4"] {
            let f = named_format(name).unwrap().ty.clone();
            let d: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
            let shape = [2, 32];
            assert_eq!(
                quantize(&d, &shape, &f, &stat(1.0)).unwrap(),
                quantize(&d, &shape, &f, &QuantizeOptions::default()).unwrap(),
                "{name}"
            );
        }
    }
}

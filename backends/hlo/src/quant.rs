//! Quantized tensors in StableHLO: weights decoded inside the module, activations rounded to a format.
//!
//! # Quantized constants ([`decode_constant`])
//! The resource blob (`qc_quant::blob`) is emitted as integer constants and decoded by the module:
//! - the packed codes as one `ui8` tensor, unpacked with shifts and masks: `lo_first` streams are read
//!   as little-endian words of lcm(bits, 8) bits (one byte for 4-bit codes, three for 6-bit), each
//!   split into its codes; `ggml` takes the low nibbles as elements 0-7 and the high nibbles as 8-15 of
//!   each 16-element sub-block;
//! - element values: integers by sign extension and conversion (MX int8 scaled by 2^-6), minifloats
//!   (FP4, FP6, FP8, any eXmY) by a lookup in the codec's table of 2^bits f32 values (a `gather`);
//! - scales: e8m0 codes by building the f32 bits `code << 23` (code 0 is 2^-127, 0xFF NaN) and a
//!   bitcast; ue4m3 codes by the e4m3 table (sign bit ignored), times the f32 tensor scale (divisor) or
//!   divided by it (reciprocal); f16 / bf16 scales by bitcast and conversion; f32 scales as they are;
//!   zero points by sign extension;
//! - the product `value * scale` (or `(q - z) * s`) in f32, exactly the operations of
//!   `qc_quant::tensor::dequantize`, so the dequantized weights equal the interpreter's bit for bit.
//!
//! # Activation quantization ([`quantize_act`])
//! `quant.quantize` of a run-time tensor computes the block maxima (`reduce` of |x| over each block),
//! the scales by the format's rule, and rounds each element to the format's grid in f32: for a
//! minifloat, the exponent e = max(floor(log2|v|), 1 - bias) comes from the f32 bits, |v| is scaled by
//! 2^(man - e) (exact), rounded to an integer (`round_nearest_even`, `round_nearest_afz` or `floor` for
//! rne / ties_away / toward_zero), scaled back, saturated (or overflowed to Inf / NaN per the encoding)
//! and given v's sign; integers round and clamp. The result is the dequantized tensor, bit-identical
//! to `qc_quant::tensor::quantize` followed by `dequantize` for finite inputs. Supported: minifloat
//! (ieee, fn and finite-only policies), integer and MX int8 elements; f32 / f16 / bf16 scales (rule
//! amax), e8m0 scales (floor, ceil, rceil, even) and ue4m3 scales with every tensor-scale storage and
//! convention; per-tensor, per-channel, group and 2-D block schemes; the static `amax` attribute.
//! Refused with a diagnostic: stochastic rounding, zero points (asymmetric formats), fnuz encodings.
//! Non-finite inputs, which the interpreter refuses at run time, give NaN blocks.

use qc_ir::attr::Attribute;
use qc_ir::quant::{
    Convention, Encoding, InfNan, Packing, QuantType, Rounding, Saturation, ScaleRule, ScaleType,
    Scheme, TensorScale,
};
use qc_ir::types::TensorType;
use qc_quant::codec::Codec;
use qc_quant::ops::QuantOp;
use qc_quant::tensor::Scales;

use crate::build::{Cmp, Red, B, E, R, T};
use crate::lower::{emitted, Cx, Lv};

/// The shape of a tensor viewed by blocks: each scale's elements along their own dimensions.
struct Blocked {
    /// The tensor's shape with each blocked dimension split into (blocks, block size).
    blocked: Vec<u64>,
    /// The dimensions of `blocked` that run inside one block (reduced to get one value per scale).
    inner: Vec<usize>,
    /// The other dimensions (`blocked` minus `inner`), in order: the scales' shape.
    outer: Vec<i64>,
    scale_shape: Vec<u64>,
}

fn resolve(axis: i32, rank: usize) -> R<usize> {
    let a = if axis < 0 {
        axis as i64 + rank as i64
    } else {
        axis as i64
    };
    if a < 0 || a >= rank as i64 {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

fn blocked(scheme: &Scheme, shape: &[u64]) -> R<Blocked> {
    let r = shape.len();
    let (blocked, inner): (Vec<u64>, Vec<usize>) = match *scheme {
        Scheme::PerTensor => (shape.to_vec(), (0..r).collect()),
        Scheme::PerChannel { axis } => {
            let a = resolve(axis, r)?;
            (shape.to_vec(), (0..r).filter(|&d| d != a).collect())
        }
        Scheme::Group { size, axis } => {
            let a = resolve(axis, r)?;
            let g = size as u64;
            if g == 0 || !shape[a].is_multiple_of(g) {
                return Err(format!(
                    "dimension {a} is not a multiple of the group size {size}"
                ));
            }
            let mut b = shape[..a].to_vec();
            b.extend([shape[a] / g, g]);
            b.extend(&shape[a + 1..]);
            (b, vec![a + 1])
        }
        Scheme::Block { rows, cols } => {
            if r < 2 {
                return Err("a 2-D block scheme needs rank >= 2".into());
            }
            let (rr, cc) = (rows as u64, cols as u64);
            if !shape[r - 2].is_multiple_of(rr) || !shape[r - 1].is_multiple_of(cc) {
                return Err(format!(
                    "the shape is not a multiple of the {rows}x{cols} block"
                ));
            }
            let mut b = shape[..r - 2].to_vec();
            b.extend([shape[r - 2] / rr, rr, shape[r - 1] / cc, cc]);
            (b, vec![r - 1, r + 1])
        }
    };
    let outer: Vec<i64> = (0..blocked.len())
        .filter(|d| !inner.contains(d))
        .map(|d| d as i64)
        .collect();
    let scale_shape = outer.iter().map(|&d| blocked[d as usize]).collect();
    Ok(Blocked {
        blocked,
        inner,
        outer,
        scale_shape,
    })
}

fn u8_const<'c, 'b>(b: &B<'c, 'b>, bytes: &[u8]) -> R<T<'c, 'b>> {
    b.constant_bytes(&[bytes.len() as u64], E::U(8), bytes)
}

/// The `n` codes of `bits` bits packed in `packed` (the blob's section), as `ui8` [n].
fn unpack<'c, 'b>(
    b: &B<'c, 'b>,
    packed: &[u8],
    n: u64,
    bits: u32,
    packing: Packing,
) -> R<T<'c, 'b>> {
    let mask = ((1u32 << bits) - 1) as i64;
    match packing {
        Packing::None => {
            let c = u8_const(b, &packed[..n as usize])?;
            if bits < 8 {
                b.bin_ci("stablehlo.and", c, mask)
            } else {
                Ok(c)
            }
        }
        Packing::Ggml => {
            let rows = n / 16;
            let c = b.reshape(u8_const(b, &packed[..(n / 2) as usize])?, &[rows, 8])?;
            let lo = b.bin_ci("stablehlo.and", c, 15)?;
            let hi = b.bin_ci("stablehlo.shift_right_logical", c, 4)?;
            let both = b.concat(&[lo, hi], 1)?;
            b.reshape(both, &[n])
        }
        Packing::LoFirst => {
            let l = lcm(bits as u64, 8);
            let (nb, per) = (l / 8, l / bits as u64);
            let groups = n.div_ceil(per);
            let mut bytes = packed.to_vec();
            bytes.resize((groups * nb) as usize, 0);
            let we = if l <= 32 { E::U(32) } else { E::U(64) };
            let c = b.reshape(u8_const(b, &bytes)?, &[groups, nb])?;
            let c = b.convert(c, we)?;
            let mut word: Option<T> = None;
            for j in 0..nb {
                let col = b.reshape(b.slice_dim(c, 1, j, j + 1)?, &[groups])?;
                let col = if j > 0 {
                    b.bin_ci("stablehlo.shift_left", col, 8 * j as i64)?
                } else {
                    col
                };
                word = Some(match word {
                    None => col,
                    Some(w) => b.or(w, col)?,
                });
            }
            let word = word.ok_or("empty packing group")?;
            let mut parts = Vec::new();
            for k in 0..per {
                let s = if k > 0 {
                    b.bin_ci(
                        "stablehlo.shift_right_logical",
                        word,
                        (k * bits as u64) as i64,
                    )?
                } else {
                    word
                };
                let s = b.bin_ci("stablehlo.and", s, mask)?;
                parts.push(b.reshape(s, &[groups, 1])?);
            }
            let all = b.reshape(b.concat(&parts, 1)?, &[groups * per])?;
            let all = if groups * per != n {
                b.slice_dim(all, 0, 0, n)?
            } else {
                all
            };
            b.convert(all, E::U(8))
        }
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// Looks `codes` (any integer tensor) up in `table` (f32), elementwise.
fn lookup<'c, 'b>(b: &B<'c, 'b>, codes: T<'c, 'b>, table: &[f32]) -> R<T<'c, 'b>> {
    let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = b.constant_bytes(&[table.len() as u64], E::F32, &bytes)?;
    let idx = b.convert(codes, E::I(32))?;
    b.gather_axis(t, idx, 0)
}

/// The signed value of `bits`-bit two's complement codes, as i32.
fn sign_extend<'c, 'b>(b: &B<'c, 'b>, codes: T<'c, 'b>, bits: u32) -> R<T<'c, 'b>> {
    let c = b.convert(codes, E::I(32))?;
    let neg = b.compare_ci(c, 1 << (bits - 1), Cmp::Ge)?;
    let wrapped = b.bin_ci("stablehlo.subtract", c, 1 << bits)?;
    b.select(neg, wrapped, c)
}

/// Element values of codes (f32), or the integer values (i32) for affine formats.
fn element_values<'c, 'b>(b: &B<'c, 'b>, codes: T<'c, 'b>, enc: Encoding) -> R<T<'c, 'b>> {
    match enc {
        Encoding::Int { bits, signed } => {
            let v = if signed {
                sign_extend(b, codes, bits as u32)?
            } else {
                b.convert(codes, E::I(32))?
            };
            b.convert(v, E::F32)
        }
        Encoding::MxInt8 => {
            let v = b.convert(sign_extend(b, codes, 8)?, E::F32)?;
            b.bin_c("stablehlo.multiply", v, 1.0 / 64.0)
        }
        Encoding::Float(_) | Encoding::E8M0 | Encoding::UE4M3 => {
            let c = Codec::new(enc).map_err(|e| e.to_string())?;
            lookup(b, codes, c.table())
        }
    }
}

/// 2^e for an i32 tensor `e` with values in [-127, 127], as f32 (exact; 2^-127 is subnormal).
fn pow2<'c, 'b>(b: &B<'c, 'b>, e: T<'c, 'b>) -> R<T<'c, 'b>> {
    let biased = b.bin_ci("stablehlo.add", e, 127)?;
    let bits = b.bin_ci("stablehlo.shift_left", biased, 23)?;
    let low = b.compare_ci(e, -127, Cmp::Le)?;
    let sub = b.full_i(&bits, 0x0040_0000)?;
    let bits = b.select(low, sub, bits)?;
    b.bitcast(bits, E::F32)
}

/// Decodes e8m0 codes (ui8) to f32: 2^(code - 127), NaN for 0xFF.
fn e8m0_values<'c, 'b>(b: &B<'c, 'b>, codes: T<'c, 'b>) -> R<T<'c, 'b>> {
    let c = b.convert(codes, E::I(32))?;
    let e = b.bin_ci("stablehlo.subtract", c, 127)?;
    let v = pow2(b, e)?;
    let nan = b.compare_ci(c, 255, Cmp::Eq)?;
    let n = b.full(&v, f64::NAN)?;
    b.select(nan, n, v)
}

/// Decodes a quantized constant (the blob bytes of a tensor of type `ty` in format `fmt`) to its
/// dequantized f32 tensor (see the module documentation).
pub(crate) fn decode_constant<'c, 'b>(
    b: &B<'c, 'b>,
    fmt: &QuantType,
    ty: &TensorType,
    bytes: &[u8],
    name: &str,
) -> R<T<'c, 'b>> {
    let shape = ty
        .static_shape()
        .ok_or_else(|| format!("a quantized constant needs a static shape, not {ty}"))?;
    let us: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let q = qc_quant::blob::from_blob(bytes, fmt, &us, name).map_err(|e| e.to_string())?;
    let n: u64 = shape.iter().product();
    let bl = blocked(&fmt.scheme, &shape)?;
    let codes = unpack(b, &q.packed, n, fmt.elem.bits(), fmt.pack)?;
    let n_scales = q.scales.len() as u64;
    // The per-block multiplier t (f32, the scales' shape).
    let t = match (&q.scales, fmt.scale) {
        (Scales::Codes(c), ScaleType::E8M0) => e8m0_values(b, u8_const(b, c)?)?,
        (Scales::Codes(c), ScaleType::UE4M3) => {
            let e4 = Codec::new(Encoding::E4M3FN).map_err(|e| e.to_string())?;
            let mag = b.bin_ci("stablehlo.and", u8_const(b, c)?, 0x7f)?;
            let sb = lookup(b, mag, e4.table())?;
            match (fmt.tensor_scale, q.tensor_scale) {
                (TensorScale::None, _) => sb,
                (TensorScale::Divisor, Some(gs)) => b.bin_c("stablehlo.multiply", sb, gs as f64)?,
                (TensorScale::Reciprocal, Some(gr)) => b.div_c(sb, gr as f64)?,
                (k, None) => {
                    return Err(format!(
                        "the format has a {k} tensor scale but none is stored"
                    ))
                }
            }
        }
        (Scales::F32(v), ScaleType::F32) => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            b.constant_bytes(&[n_scales], E::F32, &bytes)?
        }
        (Scales::F16(v) | Scales::BF16(v), st @ (ScaleType::F16 | ScaleType::BF16)) => {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let raw = b.constant_bytes(&[n_scales], E::U(16), &bytes)?;
            let h = b.bitcast(
                raw,
                if st == ScaleType::F16 {
                    E::F16
                } else {
                    E::BF16
                },
            )?;
            b.convert(h, E::F32)?
        }
        _ => return Err("the stored scales do not match the format's scale type".into()),
    };
    let t = b.reshape(t, &bl.scale_shape)?;
    let tb = b.bcast_dims(t, &bl.blocked, &bl.outer)?;
    let x = if let Some(zp) = fmt.zero_point {
        // (q - z) * s, with integer q and z.
        let qv = match fmt.elem {
            Encoding::Int { bits, signed: true } => sign_extend(b, codes, bits as u32)?,
            _ => b.convert(codes, E::I(32))?,
        };
        let zc = u8_const(
            b,
            q.zero_points
                .as_deref()
                .ok_or("the zero points are missing")?,
        )?;
        let zv = match zp {
            Encoding::Int { bits, signed: true } => sign_extend(b, zc, bits as u32)?,
            _ => b.convert(zc, E::I(32))?,
        };
        let zv = b.bcast_dims(b.reshape(zv, &bl.scale_shape)?, &bl.blocked, &bl.outer)?;
        let d = b.sub(b.reshape(qv, &bl.blocked)?, zv)?;
        b.mul(b.convert(d, E::F32)?, tb)?
    } else {
        let v = b.reshape(element_values(b, codes, fmt.elem)?, &bl.blocked)?;
        b.mul(v, tb)?
    };
    b.reshape(x, &shape)
}

/// floor(log2(a)) of positive normal f32 values (i32); 0 and subnormals give -127.
fn exponent<'c, 'b>(b: &B<'c, 'b>, a: T<'c, 'b>) -> R<T<'c, 'b>> {
    let bits = b.bitcast(a, E::U(32))?;
    let ex = b.bin_ci("stablehlo.shift_right_logical", bits, 23)?;
    let ex = b.bin_ci("stablehlo.and", ex, 0xff)?;
    b.bin_ci("stablehlo.subtract", b.convert(ex, E::I(32))?, 127)
}

/// Rounds each element of `v` (f32) to the grid of element encoding `enc` and returns the decoded
/// value (see the module documentation).
fn round_elem<'c, 'b>(
    b: &B<'c, 'b>,
    v: T<'c, 'b>,
    enc: Encoding,
    round: Rounding,
    sat: Saturation,
) -> R<T<'c, 'b>> {
    let rnd = |t: T<'c, 'b>| -> R<T<'c, 'b>> {
        match round {
            Rounding::Rne => b.un("stablehlo.round_nearest_even", t),
            Rounding::TiesAway => b.un("stablehlo.round_nearest_afz", t),
            Rounding::TowardZero => {
                let neg = b.compare_c(t, 0.0, Cmp::Lt)?;
                b.select(neg, b.un("stablehlo.ceil", t)?, b.un("stablehlo.floor", t)?)
            }
            Rounding::Stochastic => {
                Err("stochastic rounding is not supported by the xla backend".into())
            }
        }
    };
    let int = |t: T<'c, 'b>, lo: f64, hi: f64| -> R<T<'c, 'b>> {
        let r = rnd(t)?;
        let r = b.max(r, b.full(&r, lo)?)?;
        let r = b.min(r, b.full(&r, hi)?)?;
        // NaN and -0 (a small negative value rounded to zero) give the code 0, whose value is +0.
        let nan = b.compare(t, t, Cmp::Ne)?;
        let zero = b.compare_c(r, 0.0, Cmp::Eq)?;
        b.select(b.or(nan, zero)?, b.full(&r, 0.0)?, r)
    };
    match enc {
        Encoding::Int { bits, signed } => {
            let (lo, hi) = match (signed, sat == Saturation::SatFinite) {
                (true, true) => (-((1i64 << (bits - 1)) - 1), (1i64 << (bits - 1)) - 1),
                (true, false) => (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1),
                (false, _) => (0, (1i64 << bits) - 1),
            };
            int(v, lo as f64, hi as f64)
        }
        Encoding::MxInt8 => {
            let lo = if sat == Saturation::SatFinite {
                -127.0
            } else {
                -128.0
            };
            let r = int(b.bin_c("stablehlo.multiply", v, 64.0)?, lo, 127.0)?;
            b.bin_c("stablehlo.multiply", r, 1.0 / 64.0)
        }
        Encoding::Float(m) => {
            if m.policy == InfNan::Fnuz {
                return Err(format!(
                    "rounding to the fnuz encoding {enc} is not supported"
                ));
            }
            let man = m.man_bits as i64;
            let emin = 1 - m.bias as i64;
            let max = enc.max_finite();
            let emax = qc_quant::scale::floor_log2(max as f32) as i64 + 1;
            // 2^(man - e) and 2^(e - man) must be normal f32 for every e in [emin, emax].
            if man - emax < -126 || man - emin > 127 || emin - man < -126 || emax - man > 127 {
                return Err(format!("the range of {enc} does not fit the f32 rounding"));
            }
            let a = b.un("stablehlo.abs", v)?;
            let a = b.min(a, b.full(&a, f32::MAX as f64)?)?;
            let e = exponent(b, a)?;
            let e = b.max(e, b.full_i(&e, emin)?)?;
            let e = b.min(e, b.full_i(&e, emax)?)?;
            let up = pow2(b, b.sub(b.full_i(&e, man)?, e)?)?;
            let down = pow2(b, b.bin_ci("stablehlo.subtract", e, man)?)?;
            let r = b.mul(rnd(b.mul(a, up)?)?, down)?;
            let over = b.compare_c(r, max, Cmp::Gt)?;
            let big = if sat == Saturation::SatFinite || round == Rounding::TowardZero {
                max
            } else {
                match m.policy {
                    InfNan::Ieee => f64::INFINITY,
                    InfNan::Fn => f64::NAN,
                    _ => max,
                }
            };
            let r = b.select(over, b.full(&r, big)?, r)?;
            let rb = b.bitcast(r, E::U(32))?;
            let sign = b.bin_ci("stablehlo.and", b.bitcast(v, E::U(32))?, 0x8000_0000)?;
            b.bitcast(b.or(rb, sign)?, E::F32)
        }
        Encoding::E8M0 | Encoding::UE4M3 => Err(format!("{enc} is a scale encoding")),
    }
}

/// The MX shared exponent (i32, [-127, 127]) of block maxima `amax` under `rule`, and whether it is
/// NaN (`qc_quant::scale::mx_exponent`).
fn mx_exponent<'c, 'b>(
    b: &B<'c, 'b>,
    amax: T<'c, 'b>,
    rule: ScaleRule,
    elem: &Encoding,
) -> R<(T<'c, 'b>, T<'c, 'b>)> {
    let emax = qc_quant::scale::emax_elem(elem) as i64;
    let max_elem = elem.max_finite() as f32;
    let zero = b.compare_c(amax, 0.0, Cmp::Eq)?;
    let ceil_log2 = |r: T<'c, 'b>| -> R<T<'c, 'b>> {
        // Normal r: floor + (mantissa != 0); subnormal r: -126 above 2^-127, else -127.
        let bits = b.bitcast(r, E::U(32))?;
        let mant = b.bin_ci("stablehlo.and", bits, 0x7f_ffff)?;
        let frac = b.convert(b.compare_ci(mant, 0, Cmp::Ne)?, E::I(32))?;
        let fl = exponent(b, r)?;
        let normal = b.add(fl, frac)?;
        let sub = b.compare_ci(fl, -127, Cmp::Eq)?;
        let above = b.compare_c(r, 2f64.powi(-127), Cmp::Gt)?;
        let sv = b.select(above, b.full_i(&fl, -126)?, b.full_i(&fl, -127)?)?;
        b.select(sub, sv, normal)
    };
    let e = match rule {
        ScaleRule::Floor => {
            let a = b.select(zero, b.full(&amax, f32::MIN_POSITIVE as f64)?, amax)?;
            b.bin_ci("stablehlo.subtract", exponent(b, a)?, emax)?
        }
        ScaleRule::Ceil => {
            let r = b.div_c(amax, max_elem as f64)?;
            let c = ceil_log2(r)?;
            let rz = b.compare_c(r, 0.0, Cmp::Eq)?;
            b.select(rz, b.full_i(&c, -127)?, c)?
        }
        ScaleRule::Rceil => {
            let r = b.bin_c("stablehlo.multiply", amax, (1.0f32 / max_elem) as f64)?;
            let c = b.min(ceil_log2(r)?, b.full_i(&zero_i(b, &amax)?, 127)?)?;
            let rz = b.compare_c(r, 0.0, Cmp::Eq)?;
            let c = b.select(rz, b.full_i(&c, -127)?, c)?;
            let inf = b.compare_c(r, f64::INFINITY, Cmp::Eq)?;
            b.select(inf, b.full_i(&c, 127)?, c)?
        }
        ScaleRule::Even => {
            let mbits = qc_quant::scale::elem_mbits(elem) as i64;
            let add = 1i64 << (23 - mbits - 1);
            let bits = b.bitcast(amax, E::U(32))?;
            let rb = b.bin_ci(
                "stablehlo.and",
                b.bin_ci("stablehlo.add", bits, add)?,
                0xff80_0000,
            )?;
            let rounded = b.bitcast(rb, E::F32)?;
            let c = b.bin_ci("stablehlo.subtract", exponent(b, rounded)?, emax)?;
            let rz = b.compare_c(rounded, 0.0, Cmp::Eq)?;
            b.select(rz, b.full_i(&c, -127)?, c)?
        }
        ScaleRule::Amax => return Err("rule amax cannot give an e8m0 scale".into()),
    };
    let nan = b.compare_ci(e, 127, Cmp::Gt)?;
    let nan_in = b.compare(amax, amax, Cmp::Ne)?;
    let nan = b.or(nan, nan_in)?;
    // An infinite maximum is a NaN scale, except under RCEIL, which saturates it to 2^127.
    let nan = if rule == ScaleRule::Rceil {
        nan
    } else {
        b.or(nan, b.compare_c(amax, f64::INFINITY, Cmp::Eq)?)?
    };
    let e = b.min(e, b.full_i(&e, 127)?)?;
    let e = b.max(e, b.full_i(&e, -127)?)?;
    Ok((e, nan))
}

fn zero_i<'c, 'b>(b: &B<'c, 'b>, like: &T<'c, 'b>) -> R<T<'c, 'b>> {
    b.splat_i(&b.shape(like), E::I(32), 0)
}

/// Checks that activation quantization to `fmt` is supported; the error names what is not.
pub fn check_activation_format(fmt: &QuantType) -> Result<(), String> {
    if fmt.round == Rounding::Stochastic {
        return Err(format!(
            "{fmt}: stochastic rounding is not supported by the xla backend"
        ));
    }
    if fmt.zero_point.is_some() {
        return Err(format!(
            "{fmt}: activation quantization with a zero point is not supported by the xla backend"
        ));
    }
    if let Encoding::Float(m) = fmt.elem {
        if m.policy == InfNan::Fnuz {
            return Err(format!(
                "{fmt}: fnuz element encodings are not supported by the xla backend"
            ));
        }
    }
    if fmt.scale == ScaleType::E8M0 && fmt.tensor_scale != TensorScale::None {
        return Err(format!(
            "{fmt}: a tensor scale over e8m0 block scales is not implemented"
        ));
    }
    Ok(())
}

/// `quant.quantize` of a run-time f32 tensor `x`: the dequantized values (see the module
/// documentation). `static_amax` is the op's `amax` attribute.
pub(crate) fn quantize_act<'c, 'b>(
    b: &B<'c, 'b>,
    x: T<'c, 'b>,
    fmt: &QuantType,
    static_amax: Option<f32>,
) -> R<T<'c, 'b>> {
    check_activation_format(fmt)?;
    let shape = b.shape(&x);
    let bl = blocked(&fmt.scheme, &shape)?;
    let xb = b.reshape(x, &bl.blocked)?;
    let absx = b.un("stablehlo.abs", xb)?;
    let mut amax = b.reduce(absx, &bl.inner, Red::Max)?;
    if let (Scheme::PerTensor, Some(t)) = (fmt.scheme, static_amax) {
        amax = b.full(&amax, t as f64)?;
    }
    let max_elem = fmt.elem.max_finite() as f32;
    let bc = |t: T<'c, 'b>| b.bcast_dims(t, &bl.blocked, &bl.outer);
    let (round, sat) = (fmt.round, fmt.sat);
    let xhat = match fmt.scale {
        ScaleType::E8M0 => {
            let (e, nan) = mx_exponent(b, amax, fmt.rule, &fmt.elem)?;
            let m = pow2(b, b.sub(zero_i(b, &e)?, e)?)?;
            let inv = pow2(b, e)?;
            let nanv = b.full(&m, f64::NAN)?;
            let (m, inv) = (b.select(nan, nanv, m)?, b.select(nan, nanv, inv)?);
            let q = round_elem(b, b.mul(xb, bc(m)?)?, fmt.elem, round, sat)?;
            b.mul(q, bc(inv)?)?
        }
        ScaleType::UE4M3 => {
            let t_amax = match static_amax {
                Some(t) => b.splat(&[], E::F32, t as f64)?,
                None => {
                    let dims: Vec<usize> = (0..bl.scale_shape.len()).collect();
                    b.reduce(amax, &dims, Red::Max)?
                }
            };
            let denom = max_elem * 448.0;
            let usable = {
                let nz = b.compare_c(t_amax, 0.0, Cmp::Ne)?;
                let fin = b.compare_c(b.un("stablehlo.abs", t_amax)?, f64::INFINITY, Cmp::Lt)?;
                b.and(nz, fin)?
            };
            let one_s = b.full(&t_amax, 1.0)?;
            // The tensor scale (gs for divisor, gr for reciprocal), scalar.
            let ts = match fmt.tensor_scale {
                TensorScale::None => None,
                TensorScale::Divisor => {
                    let g = b.div_c(t_amax, denom as f64)?;
                    Some(b.select(usable, g, one_s)?)
                }
                TensorScale::Reciprocal => {
                    let g = b.div_exact(b.full(&t_amax, denom as f64)?, t_amax)?;
                    Some(b.select(usable, g, one_s)?)
                }
            };
            let nan_amax = b.compare(t_amax, t_amax, Cmp::Ne)?;
            let ts = match ts {
                Some(g) => Some(b.select(nan_amax, b.full(&g, f64::NAN)?, g)?),
                None => None,
            };
            let sshape = bl.scale_shape.clone();
            let ts_b = match ts {
                Some(g) => Some(b.bcast(g, &sshape)?),
                None => None,
            };
            let a = match static_amax {
                Some(t) if t.is_finite() => b.min(amax, b.full(&amax, t as f64)?)?,
                _ => amax,
            };
            let e4 = |s: T<'c, 'b>, sat: Saturation| -> R<T<'c, 'b>> {
                let r = round_elem(b, s, Encoding::E4M3FN, Rounding::Rne, sat)?;
                b.un("stablehlo.abs", r)
            };
            let gs_or_one = match (fmt.tensor_scale, ts_b) {
                (TensorScale::Divisor, Some(g)) => g,
                _ => b.full(&a, 1.0)?,
            };
            let sb = match (fmt.tensor_scale, fmt.convention) {
                (TensorScale::Reciprocal, _) => {
                    let gr = ts_b.ok_or("missing tensor scale")?;
                    let s = b.mul(gr, b.div_c(a, max_elem as f64)?)?;
                    let z = b.compare_c(s, 0.0, Cmp::Eq)?;
                    b.select(z, b.full(&s, 1.0)?, e4(s, Saturation::SatFinite)?)?
                }
                (_, Convention::Torchao) => {
                    let s = b.div_exact(b.div_c(a, max_elem as f64)?, gs_or_one)?;
                    let s = b.max(s, b.full(&s, 2f64.powi(-6))?)?;
                    let s = b.min(s, b.full(&s, 448.0)?)?;
                    e4(s, Saturation::SatFinite)?
                }
                (_, Convention::ModelOpt) => {
                    let d = b.bin_c("stablehlo.multiply", gs_or_one, max_elem as f64)?;
                    let s = b.div_exact(a, d)?;
                    let z = b.compare_c(s, 0.0, Cmp::Eq)?;
                    let s = b.select(z, b.full(&s, 1.0)?, s)?;
                    let s = b.max(s, b.full(&s, 2f64.powi(-9))?)?;
                    e4(s, Saturation::Overflow)?
                }
                (_, Convention::Spec) => {
                    let d = b.bin_c("stablehlo.multiply", gs_or_one, max_elem as f64)?;
                    let r = e4(b.div_exact(a, d)?, Saturation::SatFinite)?;
                    let z = b.compare_c(r, 0.0, Cmp::Eq)?;
                    b.select(z, b.full(&r, 1.0)?, r)?
                }
            };
            // A non-finite block maximum gives the NaN code 0x7F.
            let fin = b.compare_c(amax, f64::INFINITY, Cmp::Lt)?;
            let sb = b.select(fin, sb, b.full(&sb, f64::NAN)?)?;
            let t = match (fmt.tensor_scale, ts_b) {
                (TensorScale::Divisor, Some(g)) => b.mul(sb, g)?,
                (TensorScale::Reciprocal, Some(g)) => b.div_exact(sb, g)?,
                _ => sb,
            };
            divide_round(b, xb, bc(t)?, fmt)?
        }
        st @ (ScaleType::F32 | ScaleType::F16 | ScaleType::BF16) => {
            if fmt.rule != ScaleRule::Amax {
                return Err(format!("rule {} needs an e8m0 scale", fmt.rule));
            }
            let raw = b.div_c(amax, max_elem as f64)?;
            let z = b.compare_c(raw, 0.0, Cmp::Eq)?;
            let raw = b.select(z, b.full(&raw, 1.0)?, raw)?;
            let fin = b.compare_c(amax, f64::INFINITY, Cmp::Lt)?;
            let raw = b.select(fin, raw, b.full(&raw, f64::NAN)?)?;
            let (s, min_pos) = match st {
                ScaleType::F16 => (
                    b.convert(b.convert(raw, E::F16)?, E::F32)?,
                    qc_quant::codec::f16_bits_to_f32(1) as f64,
                ),
                ScaleType::BF16 => (
                    b.convert(b.convert(raw, E::BF16)?, E::F32)?,
                    qc_quant::codec::bf16_bits_to_f32(1) as f64,
                ),
                _ => (raw, f32::from_bits(1) as f64),
            };
            let z = b.compare_c(s, 0.0, Cmp::Eq)?;
            let s = b.select(z, b.full(&s, min_pos)?, s)?;
            divide_round(b, xb, bc(s)?, fmt)?
        }
    };
    b.reshape(xhat, &shape)
}

/// q = encode(x / t) (ModelOpt: a zero quotient is +0); x_hat = decode(q) * t.
fn divide_round<'c, 'b>(
    b: &B<'c, 'b>,
    x: T<'c, 'b>,
    t: T<'c, 'b>,
    fmt: &QuantType,
) -> R<T<'c, 'b>> {
    let v = b.div_exact(x, t)?;
    let mut q = round_elem(b, v, fmt.elem, fmt.round, fmt.sat)?;
    if fmt.convention == Convention::ModelOpt {
        let z = b.compare_c(v, 0.0, Cmp::Eq)?;
        q = b.select(z, b.full(&q, 0.0)?, q)?;
    }
    b.mul(q, t)
}

/// Lowers one quant op.
pub(crate) fn lower_quant<'c, 'b>(
    b: &B<'c, 'b>,
    cx: &Cx,
    q: QuantOp,
    ins: &[Lv<'c, 'b>],
) -> R<Vec<Lv<'c, 'b>>> {
    let result = cx.result_ty(0);
    match q {
        QuantOp::Quantize => {
            let Lv::Plain(x) = ins[0] else {
                return Err("quantize takes a float tensor".into());
            };
            let fmt = result
                .elem
                .as_quant()
                .ok_or("quantize must produce a quantized type")?;
            if cx.op.attr("seed").is_some() && fmt.round == Rounding::Stochastic {
                return Err("stochastic rounding is not supported by the xla backend".into());
            }
            let amax = cx
                .op
                .attr("amax")
                .and_then(Attribute::as_f64)
                .map(|a| a as f32);
            let x = b.convert(x, E::F32)?;
            Ok(vec![Lv::Quant(quantize_act(b, x, fmt, amax)?)])
        }
        QuantOp::Dequantize => {
            let Lv::Quant(x) = ins[0] else {
                return Err("dequantize takes a quantized tensor".into());
            };
            let (_, e) = emitted(result)?;
            Ok(vec![Lv::Plain(b.convert(x, e)?)])
        }
        QuantOp::Matmul => {
            let (_, e) = emitted(result)?;
            let x = match ins[0] {
                Lv::Plain(t) => b.convert(t, E::F32)?,
                Lv::Quant(t) => b.convert(b.convert(t, e)?, E::F32)?,
            };
            let Lv::Quant(w) = ins[1] else {
                return Err("the weights of quant.matmul must be quantized".into());
            };
            let xs = b.shape(&x);
            let ws = b.shape(&w);
            let tb = cx.op.attr("transpose_b").is_some();
            let xr = xs.len();
            let (x2, xs2) = if xr == 1 {
                (b.reshape(x, &[1, xs[0]])?, vec![1, xs[0]])
            } else {
                (x, xs.clone())
            };
            let mut out = xs2[..xs2.len() - 1].to_vec();
            out.push(if tb { ws[0] } else { ws[1] });
            let r = b.dot(
                x2,
                w,
                &[],
                &[],
                &[xs2.len() as i64 - 1],
                &[if tb { 1 } else { 0 }],
                &out,
            )?;
            let shape = cx.result_shape(0)?;
            let r = b.reshape(r, &shape)?;
            Ok(vec![Lv::Plain(b.convert(r, e)?)])
        }
        QuantOp::Hadamard => {
            let Lv::Plain(x) = ins[0] else {
                return Err("hadamard takes a float tensor".into());
            };
            let block = cx.int_attr("block", 0);
            let xs = b.shape(&x);
            let n = *xs.last().ok_or("hadamard needs rank >= 1")?;
            if block <= 0 || !(block as u64).is_power_of_two() || n % block as u64 != 0 {
                return Err(format!("block {block} does not fit the last dimension {n}"));
            }
            let k = block as u64;
            // Sylvester's +-1 matrix (exact), then one scaling by 1/sqrt(block).
            let mut h = Vec::with_capacity((k * k) as usize);
            for i in 0..k {
                for j in 0..k {
                    let s: f32 = if (i & j).count_ones() % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    };
                    h.extend(s.to_le_bytes());
                }
            }
            let xf = b.convert(x, E::F32)?;
            let mut bs = xs[..xs.len() - 1].to_vec();
            bs.extend([n / k, k]);
            let xb = b.reshape(xf, &bs)?;
            let hm = b.constant_bytes(&[k, k], E::F32, &h)?;
            let y = b.dot(xb, hm, &[], &[], &[bs.len() as i64 - 1], &[0], &bs)?;
            let y = b.bin_c("stablehlo.multiply", y, 1.0 / (k as f64).sqrt())?;
            let y = b.reshape(y, &xs)?;
            Ok(vec![Lv::Plain(b.convert(y, x.e)?)])
        }
        QuantOp::QuantizeLinear | QuantOp::DequantizeLinear | QuantOp::DynamicQuantizeLinear => {
            linear(b, cx, q, ins)
        }
    }
}

/// ONNX's linear quantization for integer codes, f32 data and f32 scales, per tensor or per axis
/// (`runtime/src/linear.rs`).
fn linear<'c, 'b>(b: &B<'c, 'b>, cx: &Cx, q: QuantOp, ins: &[Lv<'c, 'b>]) -> R<Vec<Lv<'c, 'b>>> {
    let plain: Vec<T> = ins
        .iter()
        .map(|l| match l {
            Lv::Plain(t) => Ok(*t),
            Lv::Quant(_) => Err("linear quantization takes plain tensors".to_string()),
        })
        .collect::<R<_>>()?;
    let x = plain[0];
    if q == QuantOp::DynamicQuantizeLinear {
        if x.e != E::F32 {
            return Err("dynamic_quantize_linear takes f32".into());
        }
        let r = b.rank(&x);
        let all: Vec<usize> = (0..r).collect();
        let mx = b.max(b.reduce(x, &all, Red::Max)?, b.splat(&[], E::F32, 0.0)?)?;
        let mn = b.min(b.reduce(x, &all, Red::Min)?, b.splat(&[], E::F32, 0.0)?)?;
        let same = b.compare(mx, mn, Cmp::Eq)?;
        let range = b.select(same, b.full(&mx, 1.0)?, b.sub(mx, mn)?)?;
        let scale = b.div_c(range, 255.0)?;
        let zp = b.sub(b.full(&mn, 0.0)?, b.div_exact(mn, scale)?)?;
        let zp = b.op(
            "stablehlo.clamp",
            &[b.full(&zp, 0.0)?, zp, b.full(&zp, 255.0)?],
            &[],
            &[],
            E::F32,
        )?;
        let zp = b.un("stablehlo.round_nearest_even", zp)?;
        let shape = b.shape(&x);
        let v = b.un(
            "stablehlo.round_nearest_even",
            b.div_exact(x, b.bcast(scale, &shape)?)?,
        )?;
        let v = b.add(v, b.bcast(zp, &shape)?)?;
        let v = b.op(
            "stablehlo.clamp",
            &[b.splat(&[], E::F32, 0.0)?, v, b.splat(&[], E::F32, 255.0)?],
            &[],
            &shape,
            E::F32,
        )?;
        return Ok(vec![
            Lv::Plain(b.convert(v, E::U(8))?),
            Lv::Plain(scale),
            Lv::Plain(b.convert(zp, E::U(8))?),
        ]);
    }
    let (scale, zp) = (plain[1], plain[2]);
    if scale.e != E::F32 {
        return Err(
            "linear quantization with a non-f32 scale is not supported by the xla backend".into(),
        );
    }
    if cx.int_attr("block_size", 0) != 0 {
        return Err("blocked linear quantization is not supported by the xla backend".into());
    }
    let shape = b.shape(&x);
    let per_axis = |t: T<'c, 'b>| -> R<T<'c, 'b>> {
        let n: u64 = b.shape(&t).iter().product();
        if n == 1 {
            return b.bcast(b.reshape(t, &[])?, &shape);
        }
        let a = qc_nn::norm_axis(cx.int_attr("axis", 1), shape.len())?;
        b.bcast_dims(b.reshape(t, &[n])?, &shape, &[a as i64])
    };
    let (s, z) = (per_axis(scale)?, per_axis(zp)?);
    let (_, out_e) = emitted(cx.result_ty(0))?;
    if q == QuantOp::DequantizeLinear {
        if x.e.is_float() {
            return Err(
                "dequantize_linear of minifloat codes is not supported by the xla backend".into(),
            );
        }
        let d = b.sub(b.convert(x, E::I(64))?, b.convert(z, E::I(64))?)?;
        let p = b.mul(b.convert(d, E::F32)?, s)?;
        return Ok(vec![Lv::Plain(b.convert(p, out_e)?)]);
    }
    if x.e != E::F32 || out_e.is_float() {
        return Err("quantize_linear is supported from f32 to integer codes only".into());
    }
    let (lo, hi) = crate::build::int_range(out_e);
    let r = b.un("stablehlo.round_nearest_even", b.div_exact(x, s)?)?;
    // NumPy's rint then astype(int32): NaN and overflow give i32::MIN.
    let ok = b.compare_c(b.un("stablehlo.abs", r)?, 2147483648.0, Cmp::Lt)?;
    let ri = b.convert(r, E::I(64))?;
    let ri = b.select(ok, ri, b.full_i(&ri, i32::MIN as i64)?)?;
    let v = b.add(ri, b.convert(z, E::I(64))?)?;
    let v = b.max(v, b.full_i(&v, lo)?)?;
    let v = b.min(v, b.full_i(&v, hi)?)?;
    Ok(vec![Lv::Plain(b.convert(v, out_e)?)])
}

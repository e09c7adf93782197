//! The quantized element type: a number format as a first-class IR type.
//!
//! A [`QuantType`] carries everything needed to decode a tensor: the element [`Encoding`], the [`Scheme`]
//! that lays out scales, the scale's own type and [`ScaleRule`], an optional second-level (per-tensor) scale
//! and its storage convention, an optional zero point, the [`Rounding`] and [`Saturation`] used to encode,
//! the [`Packing`] of sub-byte elements, and the [`Convention`] for formats that public tools compute
//! differently. The reference sheet is shared/specs/FORMATS.md.
//!
//! This module is the *description* of a format (its parameters, names, text spelling and validity rules);
//! the numerics (codecs, scale computation, packing) live in the qc-quant crate.
//!
//! Text form (see docs/IR.md): a named alias `!quant.nvfp4`, or the full form
//! `!quant.fmt<e2m1, group<16>, scale = ue4m3, rule = amax, tensor_scale = divisor, pack = lo_first>`.
//! The printer uses the alias whenever the parameters equal a named format's, so text round-trips.

use std::fmt;
use std::sync::OnceLock;

/// How a minifloat treats its top exponent codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InfNan {
    /// IEEE 754: the all-ones exponent holds infinities (mantissa 0) and NaNs.
    Ieee,
    /// "Finite, NaN only": no infinities; only the all-ones exponent with all-ones mantissa is NaN.
    Fn,
    /// "Finite, unsigned zero": no infinities, no negative zero; the code 1000...0 is the only NaN.
    Fnuz,
    /// Every code is a finite number (e2m1, e2m3, e3m2).
    None,
}

impl InfNan {
    /// The spelling used in the text form.
    pub fn name(self) -> &'static str {
        match self {
            InfNan::Ieee => "ieee",
            InfNan::Fn => "fn",
            InfNan::Fnuz => "fnuz",
            InfNan::None => "none",
        }
    }

    /// Parses a spelling produced by [`InfNan::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        [InfNan::Ieee, InfNan::Fn, InfNan::Fnuz, InfNan::None]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// A sign-magnitude binary minifloat with `exp_bits` exponent bits and `man_bits` mantissa bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Minifloat {
    /// Exponent bits, 1 to 8.
    pub exp_bits: u8,
    /// Mantissa bits, 0 to 10.
    pub man_bits: u8,
    /// Exponent bias.
    pub bias: i32,
    /// Infinity / NaN policy.
    pub policy: InfNan,
}

impl Minifloat {
    /// A format with the IEEE-style default bias `2^(exp_bits-1) - 1`.
    pub const fn ieee(exp_bits: u8, man_bits: u8) -> Self {
        Minifloat {
            exp_bits,
            man_bits,
            bias: (1 << (exp_bits - 1)) - 1,
            policy: InfNan::Ieee,
        }
    }

    /// Total bits including the sign.
    pub fn bits(&self) -> u32 {
        1 + self.exp_bits as u32 + self.man_bits as u32
    }

    /// The largest finite value.
    pub fn max_finite(&self) -> f64 {
        let (e, m) = (self.exp_bits as i32, self.man_bits as i32);
        let top = (1 << e) - 1;
        let frac = |mant: i64| 1.0 + mant as f64 / (1i64 << m) as f64;
        let all = (1i64 << m) - 1;
        match self.policy {
            InfNan::Ieee => pow2(top - 1 - self.bias) * frac(all),
            InfNan::Fnuz | InfNan::None => pow2(top - self.bias) * frac(all),
            InfNan::Fn if m == 0 => pow2(top - 1 - self.bias),
            InfNan::Fn => pow2(top - self.bias) * frac(all - 1),
        }
    }

    /// The smallest positive normal value.
    pub fn min_normal(&self) -> f64 {
        pow2(1 - self.bias)
    }

    /// The smallest positive subnormal value (the smallest normal when there are no mantissa bits).
    pub fn min_subnormal(&self) -> f64 {
        pow2(1 - self.bias - self.man_bits as i32)
    }
}

fn pow2(e: i32) -> f64 {
    2f64.powi(e)
}

/// Named minifloats: the spellings accepted as bare element names. A bare `eXmY` that is not listed here
/// means `Minifloat::ieee(X, Y)`.
const NAMED_FLOATS: &[(&str, Minifloat)] = &[
    (
        "e2m1",
        Minifloat {
            exp_bits: 2,
            man_bits: 1,
            bias: 1,
            policy: InfNan::None,
        },
    ),
    (
        "e2m3",
        Minifloat {
            exp_bits: 2,
            man_bits: 3,
            bias: 1,
            policy: InfNan::None,
        },
    ),
    (
        "e3m2",
        Minifloat {
            exp_bits: 3,
            man_bits: 2,
            bias: 3,
            policy: InfNan::None,
        },
    ),
    (
        "e4m3fn",
        Minifloat {
            exp_bits: 4,
            man_bits: 3,
            bias: 7,
            policy: InfNan::Fn,
        },
    ),
    (
        "e4m3fnuz",
        Minifloat {
            exp_bits: 4,
            man_bits: 3,
            bias: 8,
            policy: InfNan::Fnuz,
        },
    ),
    (
        "e5m2",
        Minifloat {
            exp_bits: 5,
            man_bits: 2,
            bias: 15,
            policy: InfNan::Ieee,
        },
    ),
    (
        "e5m2fnuz",
        Minifloat {
            exp_bits: 5,
            man_bits: 2,
            bias: 16,
            policy: InfNan::Fnuz,
        },
    ),
];

/// How one element (or one scale) is encoded in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    /// A sign-magnitude minifloat (FP4, FP6, FP8 and generic eXmY).
    Float(Minifloat),
    /// An 8-bit unsigned power of two, 2^(code - 127); 0xFF is NaN (the MX scale).
    E8M0,
    /// e4m3fn used as a positive scale: the sign bit is ignored (the NVFP4 block scale).
    UE4M3,
    /// A two's-complement (`signed`) or unsigned integer of `bits` bits, 1 to 8.
    Int {
        /// Width in bits.
        bits: u8,
        /// Two's complement when true.
        signed: bool,
    },
    /// The OCP MX int8 element: two's-complement k with value k * 2^-6.
    MxInt8,
}

impl Encoding {
    /// e2m1 (FP4).
    pub const E2M1: Encoding = Encoding::Float(NAMED_FLOATS[0].1);
    /// e2m3 (FP6).
    pub const E2M3: Encoding = Encoding::Float(NAMED_FLOATS[1].1);
    /// e3m2 (FP6).
    pub const E3M2: Encoding = Encoding::Float(NAMED_FLOATS[2].1);
    /// e4m3fn (FP8).
    pub const E4M3FN: Encoding = Encoding::Float(NAMED_FLOATS[3].1);
    /// e5m2 (FP8).
    pub const E5M2: Encoding = Encoding::Float(NAMED_FLOATS[5].1);
    /// Signed 8-bit integer.
    pub const I8: Encoding = Encoding::Int {
        bits: 8,
        signed: true,
    };
    /// Signed 4-bit integer.
    pub const I4: Encoding = Encoding::Int {
        bits: 4,
        signed: true,
    };
    /// Unsigned 8-bit integer.
    pub const U8: Encoding = Encoding::Int {
        bits: 8,
        signed: false,
    };
    /// Unsigned 4-bit integer.
    pub const U4: Encoding = Encoding::Int {
        bits: 4,
        signed: false,
    };

    /// Bits per element.
    pub fn bits(&self) -> u32 {
        match self {
            Encoding::Float(f) => f.bits(),
            Encoding::E8M0 | Encoding::UE4M3 | Encoding::MxInt8 => 8,
            Encoding::Int { bits, .. } => *bits as u32,
        }
    }

    /// The largest finite value (for signed integers, of the symmetric range).
    pub fn max_finite(&self) -> f64 {
        match self {
            Encoding::Float(f) => f.max_finite(),
            Encoding::E8M0 => pow2(127),
            Encoding::UE4M3 => NAMED_FLOATS[3].1.max_finite(),
            Encoding::Int { bits, signed: true } => ((1i64 << (bits - 1)) - 1) as f64,
            Encoding::Int {
                bits,
                signed: false,
            } => ((1i64 << bits) - 1) as f64,
            Encoding::MxInt8 => 127.0 / 64.0,
        }
    }

    /// The smallest positive normal value, for floating encodings.
    pub fn min_normal(&self) -> Option<f64> {
        match self {
            Encoding::Float(f) => Some(f.min_normal()),
            Encoding::E8M0 => Some(pow2(-127)),
            Encoding::UE4M3 => Some(NAMED_FLOATS[3].1.min_normal()),
            Encoding::Int { .. } | Encoding::MxInt8 => None,
        }
    }

    /// The smallest positive value.
    pub fn min_positive(&self) -> f64 {
        match self {
            Encoding::Float(f) => f.min_subnormal(),
            Encoding::E8M0 => pow2(-127),
            Encoding::UE4M3 => NAMED_FLOATS[3].1.min_subnormal(),
            Encoding::Int { .. } => 1.0,
            Encoding::MxInt8 => pow2(-6),
        }
    }

    /// True for minifloats, e8m0 and ue4m3.
    pub fn is_float(&self) -> bool {
        matches!(self, Encoding::Float(_) | Encoding::E8M0 | Encoding::UE4M3)
    }

    /// The bare spelling of this encoding, if one exists (`e2m1`, `e4m3`, `i4`, `e8m0`, ...). A minifloat
    /// whose bias or policy differ from what its bare spelling means has none; see [`Encoding::from_name`].
    pub fn bare_name(&self) -> Option<String> {
        let name = match self {
            Encoding::Float(f) => match NAMED_FLOATS.iter().find(|(_, n)| n == f) {
                Some((name, _)) => name.to_string(),
                None => format!("e{}m{}", f.exp_bits, f.man_bits),
            },
            Encoding::E8M0 => "e8m0".into(),
            Encoding::UE4M3 => "ue4m3".into(),
            Encoding::Int { bits, signed: true } => format!("i{bits}"),
            Encoding::Int {
                bits,
                signed: false,
            } => format!("u{bits}"),
            Encoding::MxInt8 => "mxi8".into(),
        };
        (Encoding::from_name(&name) == Some(*self)).then_some(name)
    }

    /// Parses a bare spelling: a named minifloat, `eXmY` (IEEE policy, default bias), `e8m0`, `ue4m3`,
    /// `mxi8`, `iN` or `uN` with N in 1..=8. Returns None for anything else (including out-of-range widths).
    pub fn from_name(s: &str) -> Option<Self> {
        if let Some((_, f)) = NAMED_FLOATS.iter().find(|(n, _)| *n == s) {
            return Some(Encoding::Float(*f));
        }
        match s {
            "e8m0" => return Some(Encoding::E8M0),
            "ue4m3" => return Some(Encoding::UE4M3),
            "mxi8" => return Some(Encoding::MxInt8),
            _ => {}
        }
        let int = |rest: &str, signed| {
            let bits: u8 = rest.parse().ok().filter(|b| (1..=8).contains(b))?;
            (rest == bits.to_string()).then_some(Encoding::Int { bits, signed })
        };
        if let Some(rest) = s.strip_prefix('i') {
            return int(rest, true);
        }
        if let Some(rest) = s.strip_prefix('u') {
            return int(rest, false);
        }
        let rest = s.strip_prefix('e')?;
        let (e, m) = rest.split_once('m')?;
        let (e, m): (u8, u8) = (e.parse().ok()?, m.parse().ok()?);
        let canonical = format!("e{e}m{m}");
        (canonical == s && minifloat_widths_ok(e, m))
            .then(|| Encoding::Float(Minifloat::ieee(e, m)))
    }
}

/// Whether a minifloat with these widths is representable by qc: 1 to 8 exponent bits, 0 to 10 mantissa
/// bits, at most 16 bits in all.
pub fn minifloat_widths_ok(exp_bits: u8, man_bits: u8) -> bool {
    (1..=8).contains(&exp_bits) && man_bits <= 10 && 1 + exp_bits as u32 + man_bits as u32 <= 16
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.bare_name(), self) {
            (Some(name), _) => f.write_str(&name),
            (None, Encoding::Float(m)) => write!(
                f,
                "e{}m{}<bias = {}, policy = {}>",
                m.exp_bits,
                m.man_bits,
                m.bias,
                m.policy.name()
            ),
            (None, Encoding::Int { bits, signed }) => {
                // Widths the parser does not accept (above 8 bits) still print readably.
                write!(f, "{}{bits}", if *signed { "i" } else { "u" })
            }
            (None, other) => write!(f, "{other:?}"),
        }
    }
}

/// How scales are laid out over a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per index along `axis` (negative counts from the end).
    PerChannel {
        /// The channel axis.
        axis: i32,
    },
    /// One scale per `size` consecutive elements along `axis` (the reduction axis; default -1, the last).
    Group {
        /// Elements per group, at least 1.
        size: u32,
        /// The axis groups run along.
        axis: i32,
    },
    /// One scale per `rows x cols` tile of the last two dimensions.
    Block {
        /// Tile height (second-to-last dimension).
        rows: u32,
        /// Tile width (last dimension).
        cols: u32,
    },
}

impl Scheme {
    /// Elements sharing one scale, when that does not depend on the tensor's shape.
    pub fn block_elems(&self) -> Option<u64> {
        match self {
            Scheme::Group { size, .. } => Some(*size as u64),
            Scheme::Block { rows, cols } => Some(*rows as u64 * *cols as u64),
            Scheme::PerTensor | Scheme::PerChannel { .. } => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::PerTensor => f.write_str("per_tensor"),
            Scheme::PerChannel { axis } => write!(f, "per_channel<{axis}>"),
            Scheme::Group { size, axis: -1 } => write!(f, "group<{size}>"),
            Scheme::Group { size, axis } => write!(f, "group<{size}, axis = {axis}>"),
            Scheme::Block { rows, cols } => write!(f, "block<{rows}x{cols}>"),
        }
    }
}

macro_rules! keyword_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vdoc])* $variant,)* }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The spelling used in the text form.
            pub fn name(self) -> &'static str { match self { $($name::$variant => $text,)* } }
            /// Parses a spelling produced by `name`.
            pub fn from_name(s: &str) -> Option<Self> { Self::ALL.iter().copied().find(|v| v.name() == s) }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
    };
}

keyword_enum! {
    /// The type scales are stored in.
    ScaleType {
        /// IEEE binary32.
        F32 = "f32",
        /// IEEE binary16.
        F16 = "f16",
        /// bfloat16.
        BF16 = "bf16",
        /// MX power-of-two scale.
        E8M0 = "e8m0",
        /// NVFP4 block scale.
        UE4M3 = "ue4m3",
    }
}

impl ScaleType {
    /// Bits per stored scale.
    pub fn bits(self) -> u32 {
        match self {
            ScaleType::F32 => 32,
            ScaleType::F16 | ScaleType::BF16 => 16,
            ScaleType::E8M0 | ScaleType::UE4M3 => 8,
        }
    }
}

keyword_enum! {
    /// How a block's scale is derived from its values.
    ScaleRule {
        /// s = amax / max_elem, rounded into the scale type (with a zero point: s = (max - min) / (2^n - 1)).
        Amax = "amax",
        /// OCP MX: E = floor(log2(amax)) - emax_elem.
        Floor = "floor",
        /// E = ceil(log2(amax / max_elem)) (ModelOpt MXFP4).
        Ceil = "ceil",
        /// scale = amax / max_elem rounded up to a power of two (hardware and cuBLAS).
        Rceil = "rceil",
        /// The "even" rule of the MX reference code.
        Even = "even",
    }
}

keyword_enum! {
    /// How the second-level (per-tensor, f32) scale is stored.
    TensorScale {
        /// No second-level scale.
        None = "none",
        /// Stored as a divisor, amax / (max_elem * max_scale) (ModelOpt, TensorRT-LLM).
        Divisor = "divisor",
        /// Stored as the reciprocal, (max_elem * max_scale) / amax (compressed-tensors).
        Reciprocal = "reciprocal",
    }
}

keyword_enum! {
    /// Rounding used when encoding elements.
    Rounding {
        /// Round to nearest, ties to even.
        Rne = "rne",
        /// Round to nearest, ties away from zero (the MX reference's "nearest").
        TiesAway = "ties_away",
        /// Truncate toward zero.
        TowardZero = "toward_zero",
        /// Stochastic rounding from a seeded, reproducible generator.
        Stochastic = "stochastic",
    }
}

keyword_enum! {
    /// What happens to values beyond the largest finite element.
    Saturation {
        /// Clamp to +-max finite (like PTX cvt.rn.satfinite).
        SatFinite = "satfinite",
        /// The encoding's own overflow rule (NaN for e4m3fn, Inf for e5m2), bit-compatible with ml_dtypes.
        Overflow = "overflow",
    }
}

keyword_enum! {
    /// How sub-byte elements are packed into bytes.
    Packing {
        /// One element per byte (or per 16-bit word for wider minifloats).
        None = "none",
        /// A dense little-endian bit stream: element 2j in the low nibble of byte j for 4-bit elements
        /// (ModelOpt, torchao, ONNX).
        LoFirst = "lo_first",
        /// ggml's layout: inside each 16-element sub-block, byte j = v[j] | v[j+8] << 4.
        Ggml = "ggml",
    }
}

keyword_enum! {
    /// Whose arithmetic computes scales, for formats that public tools compute differently.
    Convention {
        /// The formulas of shared/specs/FORMATS.md.
        Spec = "spec",
        /// NVIDIA TensorRT Model Optimizer: divide by the scale; block scale at least 2^-9; a zero block
        /// scale becomes 1.
        ModelOpt = "modelopt",
        /// torchao: multiply by the reciprocal scale; block scale clamped to [2^-6, 448].
        Torchao = "torchao",
    }
}

/// A quantized element type. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuantType {
    /// How each element is encoded.
    pub elem: Encoding,
    /// How scales are laid out.
    pub scheme: Scheme,
    /// The type scales are stored in.
    pub scale: ScaleType,
    /// How scales are computed.
    pub rule: ScaleRule,
    /// Second-level per-tensor scale.
    pub tensor_scale: TensorScale,
    /// The zero point's encoding, for asymmetric integer formats.
    pub zero_point: Option<Encoding>,
    /// Element rounding.
    pub round: Rounding,
    /// Element saturation.
    pub sat: Saturation,
    /// Packing of sub-byte elements.
    pub pack: Packing,
    /// Whose scale arithmetic.
    pub convention: Convention,
}

impl QuantType {
    /// A format with the given element, scheme, scale type and rule, and defaults for the rest: no tensor
    /// scale, no zero point, rne, satfinite, no packing, the spec's convention.
    pub fn new(elem: Encoding, scheme: Scheme, scale: ScaleType, rule: ScaleRule) -> Self {
        QuantType {
            elem,
            scheme,
            scale,
            rule,
            tensor_scale: TensorScale::None,
            zero_point: None,
            round: Rounding::Rne,
            sat: Saturation::SatFinite,
            pack: Packing::None,
            convention: Convention::Spec,
        }
    }

    /// Checks that the parameters make sense together; the error is one sentence naming the problem.
    pub fn validate(&self) -> Result<(), String> {
        let elem_bits = self.elem.bits();
        if elem_bits > 8 {
            return Err(format!(
                "element {} has {elem_bits} bits; quantized elements have at most 8",
                self.elem
            ));
        }
        if let Encoding::Float(m) = self.elem {
            validate_minifloat(&m)?;
        }
        if matches!(self.elem, Encoding::E8M0 | Encoding::UE4M3) {
            return Err(format!(
                "{} is a scale encoding, not an element encoding",
                self.elem
            ));
        }
        match self.scheme {
            Scheme::Group { size: 0, .. } => return Err("group size must be at least 1".into()),
            Scheme::Block { rows, cols } if rows == 0 || cols == 0 => {
                return Err(format!("block shape {rows}x{cols} has a zero dimension"))
            }
            _ => {}
        }
        let pow2_rule = !matches!(self.rule, ScaleRule::Amax);
        if pow2_rule && self.scale != ScaleType::E8M0 {
            return Err(format!(
                "scale rule {} yields powers of two and needs scale = e8m0, not {}",
                self.rule, self.scale
            ));
        }
        if !pow2_rule && self.scale == ScaleType::E8M0 {
            return Err(
                "scale rule amax cannot be held by an e8m0 scale: use floor, ceil, rceil or even"
                    .into(),
            );
        }
        if let Some(zp) = self.zero_point {
            if !matches!(self.elem, Encoding::Int { .. }) {
                return Err(format!(
                    "a zero point needs an integer element, not {}",
                    self.elem
                ));
            }
            let Encoding::Int { bits, .. } = zp else {
                return Err(format!(
                    "a zero point must be an integer encoding, not {zp}"
                ));
            };
            if bits < elem_bits as u8 {
                return Err(format!(
                    "zero point {zp} is narrower than the element {}",
                    self.elem
                ));
            }
            if pow2_rule {
                return Err("a zero point needs scale rule amax".into());
            }
        }
        if self.tensor_scale != TensorScale::None {
            if self.scheme == Scheme::PerTensor {
                return Err(
                    "a per-tensor scheme cannot also have a second-level tensor scale".into(),
                );
            }
            if !matches!(self.scale, ScaleType::UE4M3 | ScaleType::E8M0) {
                return Err(format!(
                    "a second-level tensor scale needs an 8-bit block scale (ue4m3 or e8m0), not {}",
                    self.scale
                ));
            }
        }
        match self.pack {
            Packing::None => {}
            Packing::LoFirst if elem_bits < 8 => {}
            Packing::LoFirst => {
                return Err(format!(
                    "pack = lo_first needs a sub-byte element, not {}",
                    self.elem
                ))
            }
            Packing::Ggml if elem_bits == 4 => {}
            Packing::Ggml => {
                return Err(format!(
                    "pack = ggml needs a 4-bit element, not {}",
                    self.elem
                ))
            }
        }
        if self.pack == Packing::Ggml {
            match self.scheme {
                Scheme::Group { size, .. } if size % 16 == 0 => {}
                _ => return Err("pack = ggml interleaves 16-element sub-blocks: it needs a group scheme whose size is a multiple of 16".into()),
            }
        }
        if self.convention != Convention::Spec && self.scale != ScaleType::UE4M3 {
            return Err(format!(
                "convention {} describes ue4m3 block scales (NVFP4-style), not {} scales",
                self.convention, self.scale
            ));
        }
        Ok(())
    }

    /// Checks the format against the dimensions of the tensor it is the element type of. `dims` holds
    /// `Some(n)` for static and `None` for dynamic or symbolic dimensions.
    pub fn validate_for_shape(&self, dims: &[Option<u64>]) -> Result<(), String> {
        let rank = dims.len() as i64;
        let resolve = |axis: i32| -> Result<usize, String> {
            let a = if axis < 0 {
                axis as i64 + rank
            } else {
                axis as i64
            };
            if (0..rank).contains(&a) {
                Ok(a as usize)
            } else {
                Err(format!(
                    "axis {axis} is out of range for a tensor of rank {rank}"
                ))
            }
        };
        match self.scheme {
            Scheme::PerTensor => {}
            Scheme::PerChannel { axis } => {
                resolve(axis)?;
            }
            Scheme::Group { size, axis } => {
                let a = resolve(axis)?;
                if let Some(n) = dims[a] {
                    if n % size as u64 != 0 {
                        return Err(format!(
                            "dimension {a} of size {n} is not a multiple of the group size {size}"
                        ));
                    }
                }
            }
            Scheme::Block { rows, cols } => {
                if rank < 2 {
                    return Err(format!(
                        "a 2-D block scheme needs a tensor of rank 2 or more, not {rank}"
                    ));
                }
                for (d, b) in [(rank as usize - 2, rows), (rank as usize - 1, cols)] {
                    if let Some(n) = dims[d] {
                        if n % b as u64 != 0 {
                            return Err(format!(
                                "dimension {d} of size {n} is not a multiple of the block's {b}"
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Storage bits per element including block-scale overhead, when the scheme has a fixed block size
    /// (the per-tensor scale of two-level formats is not counted).
    pub fn bits_per_element(&self) -> Option<f64> {
        let zp_bits = self.zero_point.map_or(0, |z| z.bits());
        let block = self.scheme.block_elems()? as f64;
        Some(self.elem.bits() as f64 + (self.scale.bits() + zp_bits) as f64 / block)
    }

    /// The name of the named format with exactly these parameters, if any.
    pub fn alias(&self) -> Option<&'static str> {
        named_formats()
            .iter()
            .find(|f| &f.ty == self)
            .map(|f| f.name)
    }

    /// The full (non-alias) text of the parameters, without the `!quant.fmt<` `>` wrapper.
    pub fn params_text(&self) -> String {
        let mut s = format!(
            "{}, {}, scale = {}, rule = {}",
            self.elem, self.scheme, self.scale, self.rule
        );
        if self.tensor_scale != TensorScale::None {
            s += &format!(", tensor_scale = {}", self.tensor_scale);
        }
        if let Some(zp) = self.zero_point {
            s += &format!(", zero_point = {zp}");
        }
        if self.round != Rounding::Rne {
            s += &format!(", round = {}", self.round);
        }
        if self.sat != Saturation::SatFinite {
            s += &format!(", sat = {}", self.sat);
        }
        if self.pack != Packing::None {
            s += &format!(", pack = {}", self.pack);
        }
        if self.convention != Convention::Spec {
            s += &format!(", convention = {}", self.convention);
        }
        s
    }
}

/// Checks a minifloat's widths and bias; the error is one sentence.
pub fn validate_minifloat(m: &Minifloat) -> Result<(), String> {
    if !minifloat_widths_ok(m.exp_bits, m.man_bits) {
        return Err(format!(
            "minifloat e{}m{} is out of range: 1 to 8 exponent bits, 0 to 10 mantissa bits, at most 16 bits",
            m.exp_bits, m.man_bits
        ));
    }
    if m.bias.unsigned_abs() > 1 << 8 {
        return Err(format!(
            "minifloat bias {} is out of range (at most 256 in magnitude)",
            m.bias
        ));
    }
    if m.policy == InfNan::Ieee && m.exp_bits < 2 {
        return Err("an ieee minifloat needs at least 2 exponent bits".into());
    }
    Ok(())
}

impl fmt::Display for QuantType {
    /// Prints `!quant.NAME` for a named format, else `!quant.fmt<...>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.alias() {
            Some(name) => write!(f, "!quant.{name}"),
            None => write!(f, "!quant.fmt<{}>", self.params_text()),
        }
    }
}

/// A named format: an alias usable as `!quant.NAME`.
#[derive(Clone, Debug)]
pub struct NamedFormat {
    /// The alias.
    pub name: &'static str,
    /// Its parameters.
    pub ty: QuantType,
    /// One line: what it is and whose convention.
    pub summary: &'static str,
}

/// Every named format, in the order `qc formats` lists them. Names are unique and no two share parameters.
pub fn named_formats() -> &'static [NamedFormat] {
    static TABLE: OnceLock<Vec<NamedFormat>> = OnceLock::new();
    TABLE.get_or_init(build_named_formats)
}

/// Looks a named format up by alias.
pub fn named_format(name: &str) -> Option<&'static NamedFormat> {
    named_formats().iter().find(|f| f.name == name)
}

fn build_named_formats() -> Vec<NamedFormat> {
    use Encoding as E;
    use ScaleRule as R;
    use ScaleType as S;
    let q = QuantType::new;
    let with = |mut t: QuantType, f: &dyn Fn(&mut QuantType)| {
        f(&mut t);
        t
    };
    let g = |size| Scheme::Group { size, axis: -1 };
    let nvfp4 = with(q(E::E2M1, g(16), S::UE4M3, R::Amax), &|t| {
        t.tensor_scale = TensorScale::Divisor;
        t.pack = Packing::LoFirst;
        t.convention = Convention::ModelOpt;
    });
    let mx = |elem, rule| {
        let mut t = q(elem, g(32), S::E8M0, rule);
        if elem == E::E2M1 {
            t.pack = Packing::LoFirst;
        }
        t
    };
    let tensor = |elem| q(elem, Scheme::PerTensor, S::F32, R::Amax);
    let chan = |elem| q(elem, Scheme::PerChannel { axis: 0 }, S::F32, R::Amax);
    let int_g = |elem, size| {
        let mut t = q(elem, g(size), S::F32, R::Amax);
        if elem == E::I4 || elem == E::U4 {
            t.pack = Packing::LoFirst;
        }
        t
    };
    let nf = |name, ty, summary| NamedFormat { name, ty, summary };
    vec![
        nf("nvfp4", nvfp4.clone(), "NVFP4: e2m1, 16-element ue4m3 block scales, f32 tensor scale (ModelOpt / TensorRT-LLM arithmetic; default)"),
        nf("nvfp4_torchao", with(nvfp4.clone(), &|t| t.convention = Convention::Torchao), "NVFP4 as torchao computes it (reciprocal-multiply, block scale clamped to [2^-6, 448])"),
        nf("nvfp4_ct", with(nvfp4.clone(), &|t| t.tensor_scale = TensorScale::Reciprocal), "NVFP4 with the tensor scale stored as its reciprocal (compressed-tensors)"),
        nf("nvfp4_ggml", with(nvfp4, &|t| { t.pack = Packing::Ggml; t.tensor_scale = TensorScale::None; t.convention = Convention::Spec; }), "NVFP4 as ggml stores it: no tensor scale, sub-block nibble interleave"),
        nf("mxfp4", mx(E::E2M1, R::Floor), "OCP MXFP4: e2m1, 32-element e8m0 scales, FLOOR rule (the spec)"),
        nf("mxfp4_rceil", mx(E::E2M1, R::Rceil), "MXFP4 with RCEIL scales (hardware and cuBLAS)"),
        nf("mxfp4_ceil", mx(E::E2M1, R::Ceil), "MXFP4 with CEIL scales (ModelOpt)"),
        nf("mxfp6", mx(E::E2M3, R::Floor), "OCP MXFP6 e2m3, FLOOR rule"),
        nf("mxfp6_e3m2", mx(E::E3M2, R::Floor), "OCP MXFP6 e3m2, FLOOR rule"),
        nf("mxfp8", mx(E::E4M3FN, R::Floor), "OCP MXFP8 e4m3, FLOOR rule"),
        nf("mxfp8_e5m2", mx(E::E5M2, R::Floor), "OCP MXFP8 e5m2, FLOOR rule"),
        nf("mxint8", mx(E::MxInt8, R::Floor), "OCP MXINT8: int8 elements k * 2^-6, 32-element e8m0 scales"),
        nf("nvint4", with(q(E::I4, g(16), S::UE4M3, R::Amax), &|t| { t.tensor_scale = TensorScale::Divisor; t.pack = Packing::LoFirst; }), "NVINT4: int4, 16-element ue4m3 block scales, f32 tensor scale (arXiv 2510.25602)"),
        nf("fp8_e4m3", tensor(E::E4M3FN), "FP8 e4m3fn with one f32 scale per tensor"),
        nf("fp8_e5m2", tensor(E::E5M2), "FP8 e5m2 with one f32 scale per tensor"),
        nf("fp8_e4m3_channel", chan(E::E4M3FN), "FP8 e4m3fn with one f32 scale per output channel (axis 0)"),
        nf("fp6_e2m3", tensor(E::E2M3), "FP6 e2m3 with one f32 scale per tensor"),
        nf("fp6_e3m2", tensor(E::E3M2), "FP6 e3m2 with one f32 scale per tensor"),
        nf("int8", tensor(E::I8), "int8 symmetric, one f32 scale per tensor"),
        nf("int8_channel", chan(E::I8), "int8 symmetric, one f32 scale per output channel (axis 0)"),
        nf("int8_g128", int_g(E::I8, 128), "int8 symmetric, 128-element groups with f32 scales"),
        nf("int4_channel", with(chan(E::I4), &|t| t.pack = Packing::LoFirst), "int4 symmetric, one f32 scale per output channel (axis 0)"),
        nf("int4_g32", int_g(E::I4, 32), "int4 symmetric, 32-element groups with f32 scales"),
        nf("int4_g128", int_g(E::I4, 128), "int4 symmetric, 128-element groups with f32 scales"),
        nf("uint4_g128", with(int_g(E::U4, 128), &|t| t.zero_point = Some(E::U4)), "uint4 asymmetric, 128-element groups with f32 scales and u4 zero points"),
        nf("uint8", with(tensor(E::U8), &|t| t.zero_point = Some(E::U8)), "uint8 asymmetric, one f32 scale and u8 zero point per tensor"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_finite_matches_the_sheet() {
        let cases = [
            ("e2m1", 6.0),
            ("e2m3", 7.5),
            ("e3m2", 28.0),
            ("e4m3fn", 448.0),
            ("e5m2", 57344.0),
        ];
        for (name, max) in cases {
            assert_eq!(
                Encoding::from_name(name).unwrap().max_finite(),
                max,
                "{name}"
            );
        }
        assert_eq!(Encoding::from_name("e4m3fnuz").unwrap().max_finite(), 240.0);
        assert_eq!(Encoding::from_name("e4m3").unwrap().max_finite(), 240.0);
        assert_eq!(Encoding::E4M3FN.min_normal(), Some(2f64.powi(-6)));
        assert_eq!(Encoding::E4M3FN.min_positive(), 2f64.powi(-9));
        assert_eq!(Encoding::E5M2.min_positive(), 2f64.powi(-16));
        assert_eq!(Encoding::MxInt8.max_finite(), 127.0 / 64.0);
    }

    #[test]
    fn bare_names_round_trip_and_nonbare_print_params() {
        for name in [
            "e2m1", "e2m3", "e3m2", "e4m3fn", "e5m2", "e4m3", "e3m4", "e8m0", "ue4m3", "i4", "u8",
            "mxi8",
        ] {
            let e = Encoding::from_name(name).unwrap();
            assert_eq!(e.to_string(), name);
        }
        let odd = Encoding::Float(Minifloat {
            exp_bits: 2,
            man_bits: 1,
            bias: 1,
            policy: InfNan::Ieee,
        });
        assert_eq!(odd.to_string(), "e2m1<bias = 1, policy = ieee>");
        assert_eq!(Encoding::from_name("i9"), None);
        assert_eq!(Encoding::from_name("i04"), None);
        assert_eq!(Encoding::from_name("e9m1"), None);
    }

    #[test]
    fn named_formats_are_valid_unique_and_print_as_their_alias() {
        let all = named_formats();
        for (i, f) in all.iter().enumerate() {
            f.ty.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", f.name));
            assert_eq!(f.ty.to_string(), format!("!quant.{}", f.name));
            for g in &all[i + 1..] {
                assert_ne!(f.ty, g.ty, "{} and {} share parameters", f.name, g.name);
            }
        }
    }

    #[test]
    fn invalid_parameter_sets_are_rejected() {
        let base = named_format("nvfp4").unwrap().ty.clone();
        let mut t = base.clone();
        t.scheme = Scheme::Group { size: 0, axis: -1 };
        assert!(t.validate().unwrap_err().contains("group size"));
        let mut t = base.clone();
        t.zero_point = Some(Encoding::U4);
        assert!(t.validate().unwrap_err().contains("integer element"));
        let mut t = base.clone();
        t.rule = ScaleRule::Floor;
        assert!(t.validate().unwrap_err().contains("needs scale = e8m0"));
        let mut t = named_format("mxfp4").unwrap().ty.clone();
        t.rule = ScaleRule::Amax;
        assert!(t.validate().unwrap_err().contains("cannot be held"));
    }

    #[test]
    fn bits_per_element_counts_scales() {
        assert_eq!(
            named_format("nvfp4").unwrap().ty.bits_per_element(),
            Some(4.5)
        );
        assert_eq!(
            named_format("mxfp4").unwrap().ty.bits_per_element(),
            Some(4.25)
        );
        assert_eq!(
            named_format("int4_g128").unwrap().ty.bits_per_element(),
            Some(4.25)
        );
        assert_eq!(
            named_format("fp8_e4m3").unwrap().ty.bits_per_element(),
            None
        );
    }
}

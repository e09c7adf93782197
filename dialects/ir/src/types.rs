//! Types: every value in qc IR is a tensor.
//!
//! A [`TensorType`] is a list of [`Dim`]s (static, dynamic `?`, or symbolic `[name]`) and an [`ElemType`].
//! Scalars are rank-0 tensors (`tensor<f32>`). A quantized tensor has a [`QuantType`] element.

use std::fmt;
use std::sync::Arc;

use crate::quant::{Encoding, QuantType};

/// One dimension of a tensor type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A known size.
    Static(u64),
    /// An unknown size, printed `?`.
    Dynamic,
    /// A named unknown size, printed `[name]`; equal names denote equal sizes within a function.
    Symbol(Arc<str>),
}

impl Dim {
    /// The size, when static.
    pub fn as_static(&self) -> Option<u64> {
        match self {
            Dim::Static(n) => Some(*n),
            Dim::Dynamic | Dim::Symbol(_) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Static(n) => write!(f, "{n}"),
            Dim::Dynamic => f.write_str("?"),
            Dim::Symbol(s) => write!(f, "[{s}]"),
        }
    }
}

/// The element type of a tensor.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemType {
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// A signless (`iN`) or unsigned (`uiN`) integer of 1 to 64 bits.
    Int {
        /// Width in bits.
        bits: u8,
        /// True for `uiN`.
        unsigned: bool,
    },
    /// Raw codes of a minifloat or e8m0 with no scale attached (ONNX FLOAT8E4M3FN, FLOAT4E2M1, ...),
    /// printed with MLIR's builtin names (`f8E4M3FN`) where MLIR has one, else `!quant.raw<ENC>`.
    Raw(Encoding),
    /// A quantized element.
    Quant(Arc<QuantType>),
}

/// MLIR's builtin names for minifloat element types.
const MLIR_FLOAT_NAMES: &[(&str, &str)] = &[
    ("f4E2M1FN", "e2m1"),
    ("f6E2M3FN", "e2m3"),
    ("f6E3M2FN", "e3m2"),
    ("f8E4M3FN", "e4m3fn"),
    ("f8E4M3FNUZ", "e4m3fnuz"),
    ("f8E5M2", "e5m2"),
    ("f8E5M2FNUZ", "e5m2fnuz"),
    ("f8E4M3", "e4m3"),
    ("f8E3M4", "e3m4"),
    ("f8E8M0FNU", "e8m0"),
];

impl ElemType {
    /// Parses a builtin element keyword (`f32`, `i64`, `ui8`, `f8E4M3FN`, ...).
    pub fn from_keyword(s: &str) -> Option<Self> {
        match s {
            "f16" => return Some(ElemType::F16),
            "bf16" => return Some(ElemType::BF16),
            "f32" => return Some(ElemType::F32),
            "f64" => return Some(ElemType::F64),
            _ => {}
        }
        if let Some((_, enc)) = MLIR_FLOAT_NAMES.iter().find(|(k, _)| *k == s) {
            return Encoding::from_name(enc).map(ElemType::Raw);
        }
        let (rest, unsigned) = match s.strip_prefix("ui") {
            Some(r) => (r, true),
            None => (s.strip_prefix('i')?, false),
        };
        let bits: u8 = rest.parse().ok().filter(|b| (1..=64).contains(b))?;
        (rest == bits.to_string()).then_some(ElemType::Int { bits, unsigned })
    }

    /// True for f16, bf16, f32, f64.
    pub fn is_float(&self) -> bool {
        matches!(
            self,
            ElemType::F16 | ElemType::BF16 | ElemType::F32 | ElemType::F64
        )
    }

    /// The quantized format, if this is a quantized element.
    pub fn as_quant(&self) -> Option<&QuantType> {
        match self {
            ElemType::Quant(q) => Some(q),
            _ => None,
        }
    }

    /// Bytes per element in an unpacked dense buffer, for byte-aligned types (f16, bf16, f32, f64 and
    /// integers of 8, 16, 32 or 64 bits; `i1` is one byte). None for sub-byte and quantized types, whose
    /// layout is defined by qc-quant.
    pub fn byte_size(&self) -> Option<usize> {
        match self {
            ElemType::F16 | ElemType::BF16 => Some(2),
            ElemType::F32 => Some(4),
            ElemType::F64 => Some(8),
            ElemType::Int { bits: 1, .. } => Some(1),
            ElemType::Int { bits, .. } if bits % 8 == 0 => Some(*bits as usize / 8),
            ElemType::Int { .. } | ElemType::Raw(_) | ElemType::Quant(_) => None,
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElemType::F16 => f.write_str("f16"),
            ElemType::BF16 => f.write_str("bf16"),
            ElemType::F32 => f.write_str("f32"),
            ElemType::F64 => f.write_str("f64"),
            ElemType::Int {
                bits,
                unsigned: false,
            } => write!(f, "i{bits}"),
            ElemType::Int {
                bits,
                unsigned: true,
            } => write!(f, "ui{bits}"),
            ElemType::Raw(enc) => {
                let name = enc.bare_name();
                match MLIR_FLOAT_NAMES
                    .iter()
                    .find(|(_, e)| Some(e.to_string()) == name)
                {
                    Some((mlir, _)) => f.write_str(mlir),
                    None => write!(f, "!quant.raw<{enc}>"),
                }
            }
            ElemType::Quant(q) => write!(f, "{q}"),
        }
    }
}

/// A tensor type: dimensions and an element type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorType {
    /// Dimensions, outermost first.
    pub dims: Vec<Dim>,
    /// The element type.
    pub elem: ElemType,
}

impl TensorType {
    /// A tensor type with static dimensions.
    pub fn new(dims: &[u64], elem: ElemType) -> Self {
        TensorType {
            dims: dims.iter().map(|&d| Dim::Static(d)).collect(),
            elem,
        }
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The static shape, if every dimension is static.
    pub fn static_shape(&self) -> Option<Vec<u64>> {
        self.dims.iter().map(Dim::as_static).collect()
    }

    /// The element count, if every dimension is static (None on overflow too).
    pub fn num_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(d.as_static()?))
    }

    /// The same dimensions with another element type.
    pub fn with_elem(&self, elem: ElemType) -> Self {
        TensorType {
            dims: self.dims.clone(),
            elem,
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor<")?;
        for d in &self.dims {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.elem)
    }
}

//! Which quantized formats the GEMV kernels decode, and how: a [`QuantType`] is classified into a
//! [`KernelSpec`], the compile-time description one generated kernel is specialized for.
//!
//! Formats that decode identically share a kernel: the scale *rule*, rounding, saturation and
//! convention only matter when quantizing, so `mxfp4`, `mxfp4_rceil` and `mxfp4_ceil` use one kernel,
//! as do `nvfp4`, `nvfp4_torchao` and `nvfp4_ct` (the last one differs only in the host-side tensor
//! scale, see [`KernelSpec::post_scale`]).

use qc_ir::quant::{Encoding, InfNan, Packing, QuantType, ScaleType, Scheme, TensorScale};
use qc_quant::Codec;

use crate::Error;

/// How one element code becomes a value inside the kernel.
///
/// The kernel computes with *kernel values* `v_k(c) = v(c) / elem_factor`, where `v(c)` is the value
/// that `qc_quant::Codec` gives the code and `elem_factor` is an exact power of two (see
/// [`KernelSpec::elem_factor`]); the factor is applied once per output row.
#[derive(Clone, Debug, PartialEq)]
pub enum ElemKind {
    /// A 4-bit code, two per byte, `lo_first` (element 2j in the low nibble of byte j), decoded through
    /// a 16-entry table in registers (`vpermps` on AVX-512, two 8-entry `vpermps` and a blend on AVX2).
    /// Any 4-bit encoding (e2m1, i4, u4, ...) works this way.
    Nibble {
        /// The value of each code (the codec's table; `elem_factor` is 1).
        table: [f32; 16],
    },
    /// An 8-bit two's-complement integer (`i8`, and `mxi8` with `elem_factor` 2^-6), one per byte:
    /// sign-extended and converted to f32.
    Int8,
    /// A sign-magnitude minifloat of `bits` <= 8 bits, one per byte (the code in the low bits, higher
    /// bits ignored), decoded by moving its fields into an IEEE binary16 (`f16`) and converting with
    /// `vcvtph2ps`, which also handles subnormals exactly; `elem_factor` is 2^(15 - bias). With the
    /// "finite, NaN only" policy the kernel detects the NaN code per row (see [`crate::gemv::codegen`]).
    MiniF16 {
        /// Width of the code in bits (6 or 8 for the named formats).
        bits: u32,
        /// Exponent bits (at most 5).
        exp_bits: u32,
        /// Mantissa bits.
        man_bits: u32,
        /// The "finite, NaN only" policy: the all-ones magnitude code is NaN.
        nan_all_ones: bool,
    },
}

impl ElemKind {
    /// Elements per byte of packed codes.
    pub fn per_byte(&self) -> usize {
        match self {
            ElemKind::Nibble { .. } => 2,
            ElemKind::Int8 | ElemKind::MiniF16 { .. } => 1,
        }
    }
}

/// The storage type of a scale, as read by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleStore {
    /// IEEE binary32, little-endian.
    F32,
    /// IEEE binary16 bits.
    F16,
    /// bfloat16 bits.
    BF16,
    /// OCP MX power of two 2^(code - 127) (0xFF is NaN), decoded by shifting the code into an f32
    /// exponent (code 0, 2^-127, is the one subnormal and is selected separately).
    E8M0,
    /// e4m3fn with the sign bit ignored (NVFP4 block scale), decoded through f16 like
    /// [`ElemKind::MiniF16`]; its kernel value is the true scale / 2^8 (`scale_factor`).
    UE4M3,
}

impl ScaleStore {
    /// Bytes per stored scale.
    pub fn bytes(self) -> usize {
        match self {
            ScaleStore::F32 => 4,
            ScaleStore::F16 | ScaleStore::BF16 => 2,
            ScaleStore::E8M0 | ScaleStore::UE4M3 => 1,
        }
    }

    fn from_type(t: ScaleType) -> ScaleStore {
        match t {
            ScaleType::F32 => ScaleStore::F32,
            ScaleType::F16 => ScaleStore::F16,
            ScaleType::BF16 => ScaleStore::BF16,
            ScaleType::E8M0 => ScaleStore::E8M0,
            ScaleType::UE4M3 => ScaleStore::UE4M3,
        }
    }

    /// The kernel value of a scale is its true value divided by this (an exact power of two).
    pub fn factor(self) -> f64 {
        match self {
            ScaleStore::UE4M3 => 256.0,
            _ => 1.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ScaleStore::F32 => "f32",
            ScaleStore::F16 => "f16",
            ScaleStore::BF16 => "bf16",
            ScaleStore::E8M0 => "e8m0",
            ScaleStore::UE4M3 => "ue4m3",
        }
    }
}

/// Where the scales of a weight matrix `W[N, K]` live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleKind {
    /// One scale for the whole tensor (scheme `per_tensor`), read on the host and folded into the
    /// row's post-multiplier.
    Tensor,
    /// One scale per output row (scheme `per_channel<0>`), read by the kernel.
    Row(ScaleStore),
    /// One scale per `size` consecutive elements of a row (scheme `group<size>` along K), read by the
    /// kernel; scale `(n, j)` is at index `n * (K / size) + j`.
    Group {
        /// Elements per group.
        size: usize,
        /// How each scale is stored.
        store: ScaleStore,
    },
}

/// Everything a generated GEMV kernel is specialized for: the decoding of a weight format, independent
/// of the matrix shape and of the CPU target.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSpec {
    /// Element decoding.
    pub elem: ElemKind,
    /// Scale layout.
    pub scale: ScaleKind,
    /// The elements' kernel values times this are their codec values (a power of two).
    pub elem_factor: f64,
    /// The second-level tensor scale of two-level formats (NVFP4): how the stored f32 is applied.
    pub tensor_scale: TensorScale,
    /// The C symbol of the kernel (see [`crate::gemv`] for its prototype). Equal specs have equal
    /// symbols and different specs different ones.
    pub symbol: String,
    /// The kernel value of every code (`2^bits` entries): the codec's value divided by `elem_factor`
    /// (exact). The kernel's scalar tail decodes through it.
    pub scalar_table: Vec<f32>,
}

fn unsupported(fmt: &QuantType, why: &str) -> Error {
    Error::Unsupported(format!("GEMV kernels do not handle {fmt}: {why}"))
}

impl KernelSpec {
    /// Classifies `fmt` (the element type of a weight matrix `W[N, K]`, groups along K). Errors with
    /// [`Error::Unsupported`], naming the reason, for formats the kernels do not decode: zero points,
    /// 2-D blocks, per-column channels, ggml packing, element widths other than 4 and 8 bits (6-bit
    /// minifloats are handled when stored one per byte), and e8m0 scales with a tensor scale.
    pub fn from_quant_type(fmt: &QuantType) -> Result<KernelSpec, Error> {
        fmt.validate()
            .map_err(|e| unsupported(fmt, &format!("the format is invalid ({e})")))?;
        if fmt.zero_point.is_some() {
            return Err(unsupported(fmt, "zero points are not implemented"));
        }
        let bits = fmt.elem.bits();
        let (elem, elem_factor) = match (fmt.elem, bits, fmt.pack) {
            (e, 4, Packing::LoFirst) => {
                let codec = Codec::new(e).map_err(|e| unsupported(fmt, &e.to_string()))?;
                let mut table = [0f32; 16];
                table.copy_from_slice(codec.table());
                (ElemKind::Nibble { table }, 1.0)
            }
            (_, 4, p) => {
                return Err(unsupported(
                    fmt,
                    &format!("4-bit elements need pack = lo_first, not {p}"),
                ))
            }
            (
                Encoding::Int {
                    bits: 8,
                    signed: true,
                },
                8,
                Packing::None,
            ) => (ElemKind::Int8, 1.0),
            (Encoding::MxInt8, 8, Packing::None) => (ElemKind::Int8, 1.0 / 64.0),
            (Encoding::Float(m), w, Packing::None) if w <= 8 => {
                let e = m.exp_bits as u32;
                let ok = match m.policy {
                    InfNan::None => e <= 4,
                    InfNan::Fn => e <= 4 && m.man_bits > 0,
                    InfNan::Ieee => e == 5,
                    InfNan::Fnuz => false,
                };
                if !ok || m.bias.abs() > 100 {
                    return Err(unsupported(
                        fmt,
                        "only minifloats whose codes map onto f16 are decoded (at most 4 exponent bits \
                         with no infinities, or 5 with IEEE infinities)",
                    ));
                }
                (
                    ElemKind::MiniF16 {
                        bits: w,
                        exp_bits: e,
                        man_bits: m.man_bits as u32,
                        nan_all_ones: m.policy == InfNan::Fn,
                    },
                    2f64.powi(15 - m.bias),
                )
            }
            (e, _, p) => {
                return Err(unsupported(
                    fmt,
                    &format!("element {e} with pack = {p} has no kernel"),
                ))
            }
        };
        let store = ScaleStore::from_type(fmt.scale);
        let scale = match fmt.scheme {
            Scheme::PerTensor => ScaleKind::Tensor,
            Scheme::PerChannel { axis: 0 | -2 } => ScaleKind::Row(store),
            Scheme::PerChannel { axis } => {
                return Err(unsupported(
                    fmt,
                    &format!(
                        "per-channel scales along axis {axis} (only axis 0, the rows of W[N, K])"
                    ),
                ))
            }
            Scheme::Group { size, axis: 1 | -1 } => ScaleKind::Group {
                size: size as usize,
                store,
            },
            Scheme::Group { axis, .. } => {
                return Err(unsupported(
                    fmt,
                    &format!("groups along axis {axis} (only along K, axis 1)"),
                ))
            }
            Scheme::Block { .. } => return Err(unsupported(fmt, "2-D block scales")),
        };
        if let ScaleKind::Group { size, .. } = scale {
            if size % elem.per_byte() != 0 {
                return Err(unsupported(fmt, "4-bit groups must hold whole bytes"));
            }
        }
        if fmt.tensor_scale != TensorScale::None && store != ScaleStore::UE4M3 {
            return Err(unsupported(
                fmt,
                "a tensor scale is only decoded over ue4m3 block scales",
            ));
        }
        let elem_name = match fmt.elem.bare_name() {
            Some(n) => n,
            None => match fmt.elem {
                Encoding::Float(m) => format!(
                    "e{}m{}b{}{}",
                    m.exp_bits,
                    m.man_bits,
                    m.bias,
                    m.policy.name()
                ),
                other => format!("b{}", other.bits()),
            },
        }
        .replace('-', "n");
        let scale_name = match scale {
            ScaleKind::Tensor => "tensor".to_string(),
            ScaleKind::Row(s) => format!("row_{}", s.name()),
            ScaleKind::Group { size, store } => format!("g{size}_{}", store.name()),
        };
        let symbol = format!("qc_gemv_{elem_name}_{scale_name}");
        let codec = Codec::new(fmt.elem).map_err(|e| unsupported(fmt, &e.to_string()))?;
        let scalar_table = codec
            .table()
            .iter()
            .map(|&v| (v as f64 / elem_factor) as f32)
            .collect();
        Ok(KernelSpec {
            elem,
            scale,
            elem_factor,
            tensor_scale: fmt.tensor_scale,
            symbol,
            scalar_table,
        })
    }

    /// Bytes of packed codes per row of K elements. Errors when a row does not hold whole bytes (an
    /// odd K with 4-bit elements).
    pub fn row_bytes(&self, k: usize) -> Result<usize, Error> {
        let pb = self.elem.per_byte();
        if !k.is_multiple_of(pb) {
            return Err(Error::Shape(format!(
                "K = {k} does not fill whole bytes of 4-bit codes; K must be even"
            )));
        }
        Ok(k / pb)
    }

    /// The f32 that multiplies every output row after the kernel's sum: `elem_factor` times the scale
    /// factor, times the per-tensor scale `tensor` (scheme `per_tensor`) or the second-level scale
    /// (divisor: times it; reciprocal: divided by it). Computed in f64 and rounded once.
    pub fn post_scale(&self, tensor: Option<f32>) -> f32 {
        let mut p = self.elem_factor;
        match self.scale {
            ScaleKind::Tensor => {}
            ScaleKind::Row(s) | ScaleKind::Group { store: s, .. } => p *= s.factor(),
        }
        match (self.scale, self.tensor_scale, tensor) {
            (ScaleKind::Tensor, _, Some(t)) => p *= t as f64,
            (_, TensorScale::Divisor, Some(t)) => p *= t as f64,
            (_, TensorScale::Reciprocal, Some(t)) => p /= t as f64,
            _ => {}
        }
        p as f32
    }
}

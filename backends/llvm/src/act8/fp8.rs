//! Quantized matrix products with **fp8 activations** and BF16 dot products:
//! `y[M, N] = dequant(q(x))[M, K] W[N, K]^T`, where `q` is qc's fp8 (e4m3fn or e5m2) per-tensor
//! activation quantization with a static maximum and `W` is in a qc weight format whose element
//! values are exact in bf16 (int8 and int4 codes, e2m1, e4m3fn / e5m2), read straight from its
//! `qc_quant::blob` bytes.
//!
//! The activation values (the fp8 code's value, without the f32 tensor scale) have at most 3
//! mantissa bits and the weight values at most 8 significant bits, so both are exact in bf16 and every
//! product is exact in f32: the products are `vdpbf16ps` (AVX512-BF16) pairs, or the same chain in f32
//! FMA on CPUs without it, so the only roundings are the f32 sums and the scales.
//!
//! # Formats ([`F8Format::from_quant_type`], [`SUPPORTED_NAMED_FORMATS`])
//! 8-bit codes (one per byte) and 4-bit `lo_first` codes, decoded through a 256-entry table of the
//! bf16 bits of the codec's values; scales per tensor (in `post`), per row (`per_channel<0>`) or per
//! group of a multiple of 16 elements along K (K a multiple of the group), stored as f32, f16, bf16,
//! e8m0 or ue4m3; a second-level tensor scale (NVFP4) is folded into `post`. 6-bit codes (mxfp6) are
//! not handled.
//!
//! # Activations (C `qc_f8_prepare`)
//! Each activation row is quantized once with exactly the arithmetic of `qc_quant::tensor::quantize`
//! for fp8 per tensor (the glue's `qc_fquant`, kind 0): `s = amax / max` in f32 ([`act_scale`]),
//! `v = round(x / s)` to the minifloat, ties to even, saturating; the row holds the bf16 bits of `v`,
//! zero-padded to a multiple of 32 elements (`qc_f8_padded_k`).
//!
//! # The C ABI of a kernel
//! ```c
//! int qc_f8_matmul_<bf16|fma>(const qc_f8_format *f, const uint8_t *codes, const uint8_t *scales,
//!                             int64_t row_bytes, const uint16_t *xb, int64_t ldx, int64_t m,
//!                             float *y, int64_t ldy, int64_t k, int64_t row_begin, int64_t row_end,
//!                             float post);
//! ```
//! For every activation row `i < m` (prepared at `xb + i ldx`, `ldx` >= the padded K) and weight row
//! `n` in `[row_begin, row_end)` it writes `y[i ldy + n - row_begin]`. Returns 1 (writing nothing)
//! for a descriptor it cannot run, 2 when it cannot allocate its row buffer, else 0. `qc_f8_matmul_bf16`
//! needs AVX512-BF16 (the caller checks); `qc_f8_matmul_fma` runs everywhere. There is no panel GEMM:
//! each weight row is decoded once per call and multiplied by the `m` activation rows in turn.
//!
//! # Numerics and accumulation order
//! A *chain* over `len` elements (a multiple of 16) is 16 f32 lanes from +0: for each 32 elements at
//! `c`, lane `l += w[c+2l+1] x[c+2l+1]`, then `+= w[c+2l] x[c+2l]` (Intel's order for `vdpbf16ps`; each
//! product exact, each sum rounded to nearest even; no sum is subnormal, since every nonzero product is
//! at least 2^-32), then the lanes are summed as `(l + l+8)`, `+4`, `+2`, `+1`.
//! - Group formats: `acc = fma(chain_g, scale_g, acc)` over the groups in order, from 0.
//! - Row and tensor formats: `acc = chain(padded row) * s_n` (per tensor: `chain`).
//!
//! Then `y = acc * post`, `post` = activation scale times the weights' tensor scale (rounded once,
//! [`F8Matrix::post`]). The result of a row depends only on the format and K: it is bit-identical for
//! every row range, thread count and M, and (where the CPU's `vdpbf16ps` rounds both of its sums, as
//! Intel documents) between the two kernels.

use qc_ir::quant::{
    Convention, Encoding, InfNan, QuantType, Rounding, Saturation, ScaleType, Scheme, TensorScale,
};
use qc_quant::Codec;
use rayon::prelude::*;

use crate::gemv::{KernelSpec, QuantMatrix, ScaleKind, ScaleStore};
use crate::{CpuTarget, Error};

const SOURCE: &str = include_str!("fp8.c");

/// The named weight formats (`qc formats`) that the fp8-activation kernels handle, each tested.
pub const SUPPORTED_NAMED_FORMATS: &[&str] = &[
    "int8",
    "int8_channel",
    "int8_g128",
    "int4_channel",
    "int4_g32",
    "int4_g128",
    "mxfp4",
    "nvfp4",
    "mxfp8",
    "mxfp8_e5m2",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_e4m3_channel",
];

/// A kernel of the fp8-activation products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum F8Isa {
    /// `vdpbf16ps` (AVX512-BF16).
    Bf16,
    /// The same chain in f32 FMA (plain C, any x86-64 target).
    Fma,
}

impl F8Isa {
    /// The C symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            F8Isa::Bf16 => "qc_f8_matmul_bf16",
            F8Isa::Fma => "qc_f8_matmul_fma",
        }
    }

    /// Whether the host runs this kernel.
    pub fn host_supports(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                F8Isa::Fma => true,
                F8Isa::Bf16 => {
                    std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512vl")
                        && std::is_x86_feature_detected!("avx512bf16")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// A weight format as the kernels read it (the C `qc_f8_format`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct F8Format {
    /// 8: one code per byte; 4: two per byte, `lo_first`.
    pub bits: i32,
    /// Elements per scale along K (a multiple of 16), 0 for one scale per row, -1 for none.
    pub group: i32,
    /// How scales are stored: 0 f32, 1 f16, 2 bf16, 3 e8m0, 4 ue4m3 (the sign bit ignored).
    pub store: i32,
    /// Zero.
    pub reserved: i32,
    /// The bf16 bits of each code's value (exact).
    pub table: [u16; 256],
}

fn unsupported(fmt: &QuantType, why: &str) -> Error {
    Error::Unsupported(format!("fp8-activation kernels do not handle {fmt}: {why}"))
}

impl F8Format {
    /// Classifies `fmt` (a weight `W[N, K]`, groups along K). Errors with [`Error::Unsupported`] for
    /// formats whose codes are not 4 or 8 bits, whose values are not exact in bf16, or whose groups
    /// are not a multiple of 16 elements.
    pub fn from_quant_type(fmt: &QuantType) -> Result<(F8Format, KernelSpec), Error> {
        let spec = KernelSpec::from_quant_type(fmt)?;
        let bits = fmt.elem.bits();
        if bits != 4 && bits != 8 {
            return Err(unsupported(fmt, "only 4- and 8-bit codes"));
        }
        let codec = Codec::new(fmt.elem).map_err(|e| unsupported(fmt, &e.to_string()))?;
        let mut table = [0u16; 256];
        for (c, t) in table.iter_mut().enumerate().take(1 << bits) {
            let v = codec.decode(c as u32);
            if v.to_bits() & 0xffff != 0 && !v.is_nan() {
                return Err(unsupported(fmt, "a code's value is not exact in bf16"));
            }
            *t = if v.is_nan() {
                0x7fc0
            } else {
                (v.to_bits() >> 16) as u16
            };
        }
        let (group, store) = match spec.scale {
            ScaleKind::Tensor => (-1, ScaleStore::F32),
            ScaleKind::Row(s) => (0, s),
            ScaleKind::Group { size, store } => {
                if size == 0 || size % 16 != 0 {
                    return Err(unsupported(fmt, "groups of a multiple of 16 elements only"));
                }
                (size as i32, store)
            }
        };
        let store = match store {
            ScaleStore::F32 => 0,
            ScaleStore::F16 => 1,
            ScaleStore::BF16 => 2,
            ScaleStore::E8M0 => 3,
            ScaleStore::UE4M3 => 4,
        };
        Ok((
            F8Format {
                bits: bits as i32,
                group,
                store,
                reserved: 0,
                table,
            },
            spec,
        ))
    }
}

/// Whether the fp8-activation kernels handle weights in `fmt`.
pub fn has_kernel(fmt: &QuantType) -> bool {
    F8Format::from_quant_type(fmt).is_ok()
}

/// An fp8 activation element: mantissa bits, smallest normal exponent, largest finite value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct F8Act {
    /// Mantissa bits.
    pub man: i32,
    /// Smallest normal exponent.
    pub emin: i32,
    /// Largest finite value.
    pub max: f32,
}

impl F8Act {
    /// The activation format if `a` is fp8 e4m3fn or e5m2 per tensor with an f32 scale, ties to even,
    /// saturating, without zero point (`fp8_e4m3`, `fp8_e5m2`), else `None`.
    pub fn from_quant_type(a: &QuantType) -> Option<F8Act> {
        if a.round != Rounding::Rne
            || a.sat != Saturation::SatFinite
            || a.zero_point.is_some()
            || a.scheme != Scheme::PerTensor
            || a.scale != ScaleType::F32
            || a.tensor_scale != TensorScale::None
            || a.convention != Convention::Spec
            || ![Encoding::E4M3FN, Encoding::E5M2].contains(&a.elem)
        {
            return None;
        }
        let Encoding::Float(m) = a.elem else {
            return None;
        };
        if m.policy == InfNan::Fnuz {
            return None;
        }
        Some(F8Act {
            man: m.man_bits as i32,
            emin: 1 - m.bias,
            max: a.elem.max_finite() as f32,
        })
    }

    /// The activation scale for static maximum `amax`, as `qc_quant::tensor::quantize` computes it:
    /// `amax / max` in f32 (NaN for a non-finite `amax`), 1 when that is zero.
    pub fn act_scale(&self, amax: f32) -> f32 {
        act_scale(amax, self.max)
    }
}

/// `amax / max` in f32 (NaN for a non-finite `amax`), 1 when zero.
pub fn act_scale(amax: f32, max: f32) -> f32 {
    let s = if amax.is_finite() {
        amax / max
    } else {
        f32::NAN
    };
    if s == 0.0 {
        1.0
    } else {
        s
    }
}

fn table_text(enc: Encoding) -> String {
    let c = Codec::new(enc).expect("scale codecs exist");
    (0..256u32)
        .map(|i| format!("0x{:08x}u", c.decode(i).to_bits()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The C source of the kernels (`qc_f8_prepare`, `qc_f8_padded_k`, `qc_f8_matmul_bf16`,
/// `qc_f8_matmul_fma`; everything else `static`), for any x86-64 target (the BF16 kernel carries its
/// own target attribute).
pub fn c_source() -> String {
    format!(
        "#define QC_F8_E8M0_TABLE {}\n#define QC_F8_UE4M3_TABLE {}\n{SOURCE}",
        table_text(Encoding::E8M0),
        table_text(Encoding::UE4M3)
    )
}

/// A weight matrix `W[n, k]` in a format of the kernels, borrowed as its blob bytes.
#[derive(Clone, Debug)]
pub struct F8Matrix<'a> {
    format: F8Format,
    q: QuantMatrix<'a>,
    wpost: f64,
}

impl<'a> F8Matrix<'a> {
    /// Wraps `blob`, the `qc_quant::blob` bytes of a tensor of shape `[n, k]` in `fmt`.
    pub fn new(fmt: &QuantType, n: usize, k: usize, blob: &'a [u8]) -> Result<Self, Error> {
        let (format, spec) = F8Format::from_quant_type(fmt)?;
        if format.group > 0 && !k.is_multiple_of(format.group as usize) {
            return Err(unsupported(fmt, "K is not a multiple of the group"));
        }
        let q = QuantMatrix::new(fmt, n, k, blob)?;
        // The GEMV post is elem_factor * scale factor * tensor scale; here scales are decoded to
        // their true values and elements to the codec's values.
        let sf = match spec.scale {
            ScaleKind::Tensor => 1.0,
            ScaleKind::Row(s) | ScaleKind::Group { store: s, .. } => s.factor(),
        };
        let wpost = q.post() as f64 / sf / spec.elem_factor;
        Ok(F8Matrix { format, q, wpost })
    }

    /// The kernels' descriptor.
    pub fn format(&self) -> &F8Format {
        &self.format
    }

    /// The GEMV view of the same matrix (sections, rows, columns).
    pub fn matrix(&self) -> &QuantMatrix<'a> {
        &self.q
    }

    /// The kernels' `post` for activation scale `s`: `s` times the weights' tensor scale, computed in
    /// f64 and rounded once.
    pub fn post(&self, s: f32) -> f32 {
        (self.wpost * s as f64) as f32
    }
}

type F8Fn = unsafe extern "C" fn(
    *const F8Format,
    *const u8,
    *const u8,
    i64,
    *const u16,
    i64,
    i64,
    *mut f32,
    i64,
    i64,
    i64,
    i64,
    f32,
) -> i32;
type PrepareFn =
    unsafe extern "C" fn(*const f32, i64, i64, f32, i32, i32, f32, i64, *mut u16) -> i32;
type PaddedFn = unsafe extern "C" fn(i64) -> i64;

/// Prepared activations: `m` rows of `ldx` bf16 values (the fp8 values of the codes).
#[derive(Clone, Debug)]
pub struct F8Prepared {
    /// bf16 bits, `m` rows of `ldx`.
    pub xb: Vec<u16>,
    /// Rows.
    pub m: usize,
    /// K.
    pub k: usize,
    /// Values per row (K padded to a multiple of 32).
    pub ldx: usize,
    /// The activation scale.
    pub scale: f32,
}

impl F8Prepared {
    /// The code values of row `i` (K of them), as f32.
    pub fn values(&self, i: usize) -> Vec<f32> {
        self.xb[i * self.ldx..i * self.ldx + self.k]
            .iter()
            .map(|&h| f32::from_bits((h as u32) << 16))
            .collect()
    }
}

/// The fp8-activation kernels, compiled and loaded into the process.
pub struct Fp8Library {
    kernels: Vec<(F8Isa, F8Fn)>,
    prepare: PrepareFn,
    padded: PaddedFn,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Fp8Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fp8Library").finish()
    }
}

impl Fp8Library {
    /// Compiles [`c_source`] with `-march=<target>` in a temporary folder with `$CC` (default `cc`)
    /// and loads it.
    pub fn build(target: CpuTarget) -> Result<Self, Error> {
        if !target.host_supports() {
            return Err(Error::HostUnsupported(target));
        }
        let dir = tempfile::tempdir().map_err(|e| Error::Link(format!("temporary folder: {e}")))?;
        let so = super::compile(&c_source(), "qc_fp8", target, dir.path())?;
        // SAFETY: the library is the one just compiled from our source, which has no initializers.
        let lib =
            unsafe { libloading::Library::new(&so) }.map_err(|e| Error::Load(e.to_string()))?;
        // SAFETY: the symbols are the functions of the C source with these prototypes.
        unsafe {
            let get = |s: &str| -> Result<*const (), Error> {
                lib.get::<*const ()>(s.as_bytes())
                    .map(|p| *p)
                    .map_err(|e| Error::Load(format!("{s}: {e}")))
            };
            let mut kernels = Vec::new();
            for isa in [F8Isa::Fma, F8Isa::Bf16] {
                let p = get(isa.symbol())?;
                kernels.push((isa, std::mem::transmute::<*const (), F8Fn>(p)));
            }
            let prepare = std::mem::transmute::<*const (), PrepareFn>(get("qc_f8_prepare")?);
            let padded = std::mem::transmute::<*const (), PaddedFn>(get("qc_f8_padded_k")?);
            Ok(Fp8Library {
                kernels,
                prepare,
                padded,
                _lib: lib,
            })
        }
    }

    /// The kernels the host runs (the FMA kernel first).
    pub fn isas(&self) -> Vec<F8Isa> {
        self.kernels
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| i.host_supports())
            .collect()
    }

    /// Quantizes the `x.len() / k` rows of `x` to `act` with scale `s`. Errors if `x` is not a whole
    /// number of rows or holds a non-finite value.
    pub fn prepare(&self, act: &F8Act, k: usize, x: &[f32], s: f32) -> Result<F8Prepared, Error> {
        if k == 0 || !x.len().is_multiple_of(k) {
            return Err(Error::Shape(format!(
                "{} activations are not rows of K = {k}",
                x.len()
            )));
        }
        let m = x.len() / k;
        // SAFETY: a pure function.
        let ldx = unsafe { (self.padded)(k as i64) } as usize;
        let mut xb = vec![0u16; m * ldx];
        for i in 0..m {
            // SAFETY: row i of x has k elements, xb's row ldx.
            let bad = unsafe {
                (self.prepare)(
                    x[i * k..].as_ptr(),
                    1,
                    k as i64,
                    s,
                    act.man,
                    act.emin,
                    act.max,
                    ldx as i64,
                    xb[i * ldx..].as_mut_ptr(),
                )
            };
            if bad != 0 {
                return Err(Error::Shape(format!(
                    "activation row {i} holds a non-finite value"
                )));
            }
        }
        Ok(F8Prepared {
            xb,
            m,
            k,
            ldx,
            scale: s,
        })
    }

    /// Rows `rows` of `q(x) W^T` into `y[m, rows.len()]` with kernel `isa`, on `pool` (weight rows in
    /// contiguous chunks, each one kernel call) or on the calling thread. The result does not depend
    /// on the pool or the rows.
    pub fn matmul_rows(
        &self,
        isa: F8Isa,
        w: &F8Matrix<'_>,
        p: &F8Prepared,
        rows: std::ops::Range<usize>,
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), Error> {
        let n = w.q.rows();
        if p.k != w.q.cols() || rows.start > rows.end || rows.end > n || y.len() != p.m * rows.len()
        {
            return Err(Error::Shape(format!(
                "W is [{n}, {}] but the activations are [{}, {}], the rows {rows:?} and y has {} \
                 elements",
                w.q.cols(),
                p.m,
                p.k,
                y.len()
            )));
        }
        if !isa.host_supports() {
            return Err(Error::Unsupported(format!(
                "the host cannot run the {isa:?} kernel"
            )));
        }
        let f = self
            .kernels
            .iter()
            .find(|(i, _)| *i == isa)
            .map(|(_, f)| *f)
            .expect("both kernels are loaded");
        let codes = w.q.blob().as_ptr() as usize;
        let scales = codes + w.q.sections().scales;
        let row_bytes = w.q.sections().row_bytes as i64;
        let post = w.post(p.scale);
        let ldy = rows.len();
        let yp = y.as_mut_ptr() as usize;
        let fmt = w.format;
        let call = |r0: usize, r1: usize| -> i32 {
            // SAFETY: the blob has the layout's length (QuantMatrix::new), xb holds m prepared rows of
            // ldx, and y's columns [r0 - rows.start, r1 - rows.start) of every row are written by this
            // call only.
            unsafe {
                f(
                    &fmt,
                    codes as *const u8,
                    scales as *const u8,
                    row_bytes,
                    p.xb.as_ptr(),
                    p.ldx as i64,
                    p.m as i64,
                    (yp as *mut f32).add(r0 - rows.start),
                    ldy as i64,
                    p.k as i64,
                    r0 as i64,
                    r1 as i64,
                    post,
                )
            }
        };
        let rc = match pool {
            None => call(rows.start, rows.end),
            Some(pool) => {
                let threads = pool.current_num_threads().max(1);
                let chunk = rows.len().div_ceil(4 * threads).max(1);
                let starts: Vec<usize> = rows.clone().step_by(chunk).collect();
                pool.install(|| {
                    starts
                        .par_iter()
                        .map(|&r0| call(r0, (r0 + chunk).min(rows.end)))
                        .max()
                        .unwrap_or(0)
                })
            }
        };
        match rc {
            0 => Ok(()),
            2 => Err(Error::Shape(
                "the kernel could not allocate its buffer".into(),
            )),
            _ => Err(Error::Unsupported(format!(
                "the kernel has no case for {fmt:?}"
            ))),
        }
    }
}

/// The reference of `q(x) W^T` for `x[m, k]`: `qc_quant::tensor::quantize` of `x` to `afmt` (per
/// tensor, static maximum `amax`) dequantized, `W` decoded with `qc_quant::dequantize`, products and
/// sums in f64. Also returns the activation codes' values (without the scale).
pub fn reference(
    fmt: &QuantType,
    afmt: &QuantType,
    n: usize,
    k: usize,
    blob: &[u8],
    x: &[f32],
    amax: f32,
) -> Result<(Vec<f64>, Vec<f32>), Error> {
    let q = qc_quant::blob::from_blob(blob, fmt, &[n, k], "W")?;
    let w = qc_quant::dequantize(&q)?;
    let m = x.len() / k.max(1);
    let opts = qc_quant::QuantizeOptions {
        tensor_amax: Some(amax),
        ..Default::default()
    };
    let xq = qc_quant::quantize(x, &[m, k], afmt, &opts)?;
    let xd = qc_quant::dequantize(&xq)?;
    let codec = Codec::new(afmt.elem).map_err(|e| unsupported(afmt, &e.to_string()))?;
    let vals: Vec<f32> = xq.codes.iter().map(|&c| codec.decode(c as u32)).collect();
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for r in 0..n {
            y[i * n + r] = (0..k)
                .map(|j| xd[i * k + j] as f64 * w[r * k + j] as f64)
                .sum();
        }
    }
    Ok((y, vals))
}

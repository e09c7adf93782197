//! Quantized matrix products with **int8 activations**: `y[M, N] = dequant(q(x))[M, K] W[N, K]^T`,
//! where `q` is qc's int8 per-tensor activation quantization with a static scale and `W` is in a qc
//! weight format whose element values are small integers, read straight from its `qc_quant::blob`
//! bytes. The products are exact integer dot products (`vpdpbusd` with AVX-512 VNNI, `vpmaddubsw` +
//! `vpmaddwd` with AVX-512 BW or AVX2), so the only rounding is in the scales.
//!
//! Submodule [`fp8`] holds the kernels for **fp8 activations** (e4m3 / e5m2 per tensor) with BF16 dot
//! products (`vdpbf16ps`, AVX512-BF16, or an f32 FMA fallback).
//!
//! The kernels are C with intrinsics ([`c_source`]), compiled by the system C compiler (`cc`, or `$CC`)
//! with `-O3 -march=<target>`; [`Act8Library::build`] builds and loads them for tests and benchmarks,
//! and a CPU artifact pastes the same source into its C glue (compiler/src/cmd/cpu_kernels.rs).
//!
//! # Formats ([`A8Format::from_quant_type`])
//! Element codes that are integers after a power-of-two factor: 8-bit two's-complement codes (int8
//! per tensor / per channel / g128, mxint8 with the factor 2^-6) and 4-bit `lo_first` codes whose
//! codec values times 2^e (e <= 4) are integers in [-128, 127] (int4, and e2m1 times 2: {0, ±1, ±2,
//! ±3, ±4, ±6, ±8, ±12}, so mxfp4, nvfp4, nvint4), decoded through a 16-entry int8 table (`vpshufb`).
//! Scales: one per tensor, one per row (`per_channel<0>`), or one per group of 16, 32, 64 or 128
//! elements along K, stored as f32, f16, bf16, e8m0 or ue4m3; a second-level tensor scale (NVFP4) is
//! folded into `post`. [`SUPPORTED_NAMED_FORMATS`] lists the named formats, each tested.
//!
//! # Instruction sets ([`A8Isa`])
//! `x86-64-v4` code has two kernels: AVX-512 VNNI (`vpdpbusd` of `w + 128` as u8 by `x` as s8, the
//! offset removed per group with `128 * sum(x)`, the sums computed once per activation row), used when
//! the CPU has `avx512vnni` (runtime check in the artifact), and AVX-512 BW otherwise (`vpmaddubsw` of
//! `|w|` by `x` with `w`'s sign: a pair of products is at most `2 * 128 * 127 < 2^15`, so the i16
//! sums never saturate, for every 8-bit code including -128, because activation codes are at most 127
//! in magnitude). `x86-64-v3` code has the AVX2 kernel (the same on 256 bits) and an AVX-VNNI kernel
//! (`vpdpbusd` on 256 bits, as AVX-512 VNNI), used when the CPU has `avxvnni`. Kernels of the same
//! width give bit-identical results (same integer sums, same lane count).
//!
//! # Activations ([`Act8Library::prepare`], C `qc_a8_prepare`)
//! Each activation row is quantized once, with exactly the arithmetic of `qc_quant::tensor::quantize`
//! for int8 per tensor: `q = clamp(rint_even(x / s), -127, 127)` in f32, `s` from [`act_scale`]. The
//! codes are stored in the kernel layout (for 4-bit weights, each block of `2 VB` elements holds its
//! even elements then its odd ones, `VB` = 64 bytes for AVX-512, 32 for AVX2), zero-padded to whole
//! superblocks ([`Act8Library::padded_k`]), with the sums of the codes of each group (or of the row).
//!
//! # The C ABI of a kernel
//! ```c
//! int qc_a8_matmul_<isa>(const qc_a8_format *f, const uint8_t *codes, const uint8_t *scales,
//!                        const int8_t *xq, const int32_t *xsum, int64_t ldq, int64_t lds, int64_t m,
//!                        float *y, int64_t ldy, int64_t k, int64_t row_begin, int64_t row_end,
//!                        float post);
//! ```
//! For every activation row `i < m` (its prepared codes at `xq + i ldq`, sums at `xsum + i lds`) and
//! weight row `n` in `[row_begin, row_end)` it writes `y[i ldy + n - row_begin]`; `codes` and `scales`
//! point at the blob's sections (see [`crate::gemv::layout`]). Returns 1 (writing nothing) for a
//! format descriptor it has no kernel for, 2 when the GEMM kernel cannot allocate its weight panels
//! (`malloc`; nothing written), else 0. `ldq` must be the padded K of `qc_a8_padded_k`.
//!
//! With `m >= 32` ([`GEMM_MIN_ROWS`]; row and tensor scales also need a padded K of at most 65536)
//! the call runs the GEMM kernel: per block of 64 weight rows it decodes panels of `L` rows (lane `l`
//! of the vector of step `s` holds the 4 weights of row `n0 + l` at positions `4s..4s+3`) and
//! multiplies them by 8 (AVX-512; 4 on AVX2) activation rows at a time, each 4-byte group of codes
//! broadcast, so every lane is one output. Below, the GEMV kernel runs each activation row over
//! `L`-group superblocks (4 rows at a time sharing the weight loads). `post` is the product of the
//! activation scale, the element factor (1, 2^-6 for mxint8, 2^-e for 4-bit tables scaled by 2^e) and
//! the tensor scale (per-tensor formats, or the second level of NVFP4), rounded once
//! ([`A8Matrix::post`]).
//!
//! # Numerics and accumulation order
//! Every group's integer dot product `isum_g = sum_k w_k x_k` is exact (int32; at most
//! `128 * 255 * 127 < 2^24`, so `(float)isum_g` is exact too), and every scale is decoded exactly to
//! f32.
//! - GEMM kernel, group formats: `acc = fma((float)isum_g, scale_g, acc)` over the groups in order,
//!   from `acc = 0`; `y = acc * post`.
//! - GEMV kernel, group formats: the superblocks of a row (`L` groups each; `L` = 16 lanes on
//!   AVX-512, 8 on AVX2) in order; in each, lane `g mod L` of an f32 accumulator becomes
//!   `fma((float)isum_g, scale_g, acc)`. Then `y = hsum(acc) * post`, `hsum` adding the upper half of
//!   the lanes to the lower half until one is left.
//! - Row and tensor formats (both kernels): `isum` over the whole row is exact (int64 from int32 lanes;
//!   K < 2^20), and `y = (float)isum * s_n * post` (per tensor: `(float)isum * post`), left to right.
//!
//! So the result for a row depends only on the format, K, the lane count and (group formats) whether
//! M reaches [`GEMM_MIN_ROWS`]: it is bit-identical for every row range and thread count, for every M
//! on the same side of the threshold, and between the two kernels of a width. Against the exact product
//! of the dequantized operands, the error is that of the f32 scale products and sums of per-group
//! terms (the tests require 1e-5 of the largest |y| and see 2.4e-7). A NaN scale makes its row NaN;
//! non-finite activations are refused by the callers (`qc_a8_prepare` reports them). The terms
//! `(float)isum * scale` are formed before `post` (which holds the activation scale `amax / 127` and
//! the element factor), so a row whose terms exceed the f32 range overflows to infinity even where `y`
//! itself would be finite (a result within about `1 / post` of the f32 range limit, e.g. e8m0 scales
//! near 2^127).

pub mod fp8;

use std::path::Path;
use std::process::Command;

use qc_ir::quant::{Encoding, QuantType};
use qc_quant::Codec;
use rayon::prelude::*;

use crate::gemv::{KernelSpec, QuantMatrix, ScaleKind, ScaleStore};
use crate::{CpuTarget, Error};

const COMMON: &str = include_str!("act8.c");
const ISA: &str = include_str!("act8_isa.c");
const BODY: &str = include_str!("act8_body.c");
const UNDEF: &str = include_str!("act8_undef.c");

/// Calls with at least this many activation rows run the GEMM kernel (`QC_A8_GEMM_MIN_ROWS` of the C).
pub const GEMM_MIN_ROWS: usize = 32;

/// The named formats (`qc formats`) that the int8-activation kernels handle, each covered by the
/// crate's tests.
pub const SUPPORTED_NAMED_FORMATS: &[&str] = &[
    "int8",
    "int8_channel",
    "int8_g128",
    "int4_channel",
    "int4_g32",
    "int4_g128",
    "mxint8",
    "mxfp4",
    "mxfp4_rceil",
    "nvfp4",
    "nvfp4_torchao",
    "nvfp4_ct",
    "nvint4",
];

/// An instruction set of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum A8Isa {
    /// AVX2 (`x86-64-v3`): `vpmaddubsw` + `vpmaddwd` on 256 bits.
    Avx2,
    /// AVX-VNNI (`x86-64-v3` + `avxvnni`): `vpdpbusd` on 256 bits.
    AvxVnni,
    /// AVX-512 BW (`x86-64-v4`): `vpmaddubsw` + `vpmaddwd` on 512 bits.
    Avx512,
    /// AVX-512 VNNI (`x86-64-v4` + `avx512vnni`): `vpdpbusd`.
    Avx512Vnni,
}

impl A8Isa {
    /// The kernels of a library built for `target`.
    pub fn of_target(target: CpuTarget) -> &'static [A8Isa] {
        match target {
            CpuTarget::X86_64V3 => &[A8Isa::Avx2, A8Isa::AvxVnni],
            CpuTarget::X86_64V4 => &[A8Isa::Avx512, A8Isa::Avx512Vnni],
        }
    }

    /// The symbol suffix (`qc_a8_matmul_<suffix>`).
    pub fn suffix(self) -> &'static str {
        match self {
            A8Isa::Avx2 => "avx2",
            A8Isa::AvxVnni => "avxvnni",
            A8Isa::Avx512 => "avx512",
            A8Isa::Avx512Vnni => "vnni",
        }
    }

    /// The C symbol of the kernel.
    pub fn symbol(self) -> String {
        format!("qc_a8_matmul_{}", self.suffix())
    }

    /// Bytes per vector (`VB`), which fixes the activation layout.
    pub fn vector_bytes(self) -> i64 {
        match self {
            A8Isa::Avx2 | A8Isa::AvxVnni => 32,
            _ => 64,
        }
    }

    fn code(self) -> u32 {
        match self {
            A8Isa::Avx2 => 1,
            A8Isa::Avx512 => 2,
            A8Isa::Avx512Vnni => 3,
            A8Isa::AvxVnni => 4,
        }
    }

    /// Whether the host CPU runs this kernel.
    pub fn host_supports(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                A8Isa::Avx2 => CpuTarget::X86_64V3.host_supports(),
                A8Isa::AvxVnni => {
                    CpuTarget::X86_64V3.host_supports() && std::is_x86_feature_detected!("avxvnni")
                }
                A8Isa::Avx512 => CpuTarget::X86_64V4.host_supports(),
                A8Isa::Avx512Vnni => {
                    CpuTarget::X86_64V4.host_supports()
                        && std::is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// A weight format as the kernels read it (the C `qc_a8_format`, 32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct A8Format {
    /// 0: 8-bit two's-complement codes; 1: 4-bit codes (`lo_first`) through `table`.
    pub elem: i32,
    /// Elements per scale along K (16, 32, 64 or 128), 0 for one scale per row, -1 for none (per
    /// tensor: the scale is in `post`).
    pub group: i32,
    /// How scales are stored: 0 f32, 1 f16, 2 bf16, 3 e8m0, 4 ue4m3 (the sign bit ignored).
    pub store: i32,
    /// Zero.
    pub reserved: i32,
    /// 4-bit codes: the integer value of each code (the codec's value times `2^-log2(factor)`).
    pub table: [i8; 16],
}

/// The classification of a weight format for the kernels: the descriptor and the element factor.
#[derive(Clone, Debug, PartialEq)]
pub struct A8Kind {
    /// The kernels' descriptor.
    pub format: A8Format,
    /// Codec value = integer value times this (a power of two).
    pub factor: f64,
    /// The GEMV classification of the same format (blob sections, post scale).
    pub spec: KernelSpec,
}

fn unsupported(fmt: &QuantType, why: &str) -> Error {
    Error::Unsupported(format!(
        "int8-activation kernels do not handle {fmt}: {why}"
    ))
}

impl A8Format {
    /// Classifies `fmt` (a weight `W[N, K]`, groups along K). Errors with [`Error::Unsupported`] for
    /// formats whose elements are not small integers (see the module documentation) or whose groups
    /// are not 16, 32, 64 or 128 elements.
    pub fn from_quant_type(fmt: &QuantType) -> Result<A8Kind, Error> {
        let spec = KernelSpec::from_quant_type(fmt)?;
        let (elem, factor, table) = match fmt.elem {
            Encoding::Int {
                bits: 8,
                signed: true,
            } => (0, 1.0, [0i8; 16]),
            Encoding::MxInt8 => (0, 1.0 / 64.0, [0i8; 16]),
            e if e.bits() == 4 => {
                let codec = Codec::new(e).map_err(|er| unsupported(fmt, &er.to_string()))?;
                let vals = codec.table();
                let mut found = None;
                for sh in 0..=4 {
                    let m = (1u32 << sh) as f64;
                    if vals.iter().all(|&v| {
                        let s = v as f64 * m;
                        s.is_finite() && s == s.round() && (-128.0..=127.0).contains(&s)
                    }) {
                        let mut t = [0i8; 16];
                        for (d, &v) in t.iter_mut().zip(vals) {
                            *d = (v as f64 * m) as i8;
                        }
                        found = Some((1, 1.0 / m, t));
                        break;
                    }
                }
                found.ok_or_else(|| {
                    unsupported(fmt, "the 4-bit values are not integers times 2^-4..1")
                })?
            }
            _ => {
                return Err(unsupported(
                    fmt,
                    "only 8-bit integer and 4-bit integer-valued elements",
                ))
            }
        };
        let (group, store) = match spec.scale {
            ScaleKind::Tensor => (-1, ScaleStore::F32),
            ScaleKind::Row(s) => (0, s),
            ScaleKind::Group { size, store } => {
                if ![16, 32, 64, 128].contains(&size) {
                    return Err(unsupported(
                        fmt,
                        "groups of 16, 32, 64 or 128 elements only",
                    ));
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
        Ok(A8Kind {
            format: A8Format {
                elem,
                group,
                store,
                reserved: 0,
                table,
            },
            factor,
            spec,
        })
    }
}

/// Whether the int8-activation kernels handle weights in `fmt`.
pub fn has_kernel(fmt: &QuantType) -> bool {
    A8Format::from_quant_type(fmt).is_ok()
}

/// The activation scale of int8 per-tensor quantization with static maximum `amax`, as
/// `qc_quant::tensor::quantize` computes it: `amax / 127` in f32 (NaN for a non-finite `amax`), 1 when
/// that is zero.
pub fn act_scale(amax: f32) -> f32 {
    let s = if amax.is_finite() {
        amax / 127.0
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

/// The C source of the kernels for `target` (compiled with `-march=<target>`): the common part (format
/// descriptor, `qc_a8_prepare`, `qc_a8_padded_k`, `qc_a8_unpermute`) and `qc_a8_matmul_<isa>` for
/// each of [`A8Isa::of_target`]. Every function but those is `static`.
pub fn c_source(target: CpuTarget) -> String {
    let mut s = format!(
        "#define QC_A8_E8M0_TABLE {}\n#define QC_A8_UE4M3_TABLE {}\n",
        table_text(Encoding::E8M0),
        table_text(Encoding::UE4M3)
    );
    s += COMMON;
    for isa in A8Isa::of_target(target) {
        s += &format!("\n#define QC_A8_ISA {}\n", isa.code());
        s += ISA;
        s += BODY;
        s += UNDEF;
        s += "#undef QC_A8_ISA\n";
    }
    s
}

/// A weight matrix `W[n, k]` in a format of the kernels, borrowed as its blob bytes.
#[derive(Clone, Debug)]
pub struct A8Matrix<'a> {
    kind: A8Kind,
    q: QuantMatrix<'a>,
    wpost: f64,
}

impl<'a> A8Matrix<'a> {
    /// Wraps `blob`, the `qc_quant::blob` bytes of a tensor of shape `[n, k]` in `fmt`.
    pub fn new(fmt: &QuantType, n: usize, k: usize, blob: &'a [u8]) -> Result<Self, Error> {
        let kind = A8Format::from_quant_type(fmt)?;
        let q = QuantMatrix::new(fmt, n, k, blob)?;
        // The GEMV post is elem_factor * scale factor * tensor scale; the kernels here decode scales
        // to their true values and use integer elements.
        let sf = match kind.spec.scale {
            ScaleKind::Tensor => 1.0,
            ScaleKind::Row(s) | ScaleKind::Group { store: s, .. } => s.factor(),
        };
        let wpost = q.post() as f64 / sf / kind.spec.elem_factor * kind.factor;
        Ok(A8Matrix { kind, q, wpost })
    }

    /// The classification.
    pub fn kind(&self) -> &A8Kind {
        &self.kind
    }

    /// The GEMV view of the same matrix (sections, rows, columns).
    pub fn matrix(&self) -> &QuantMatrix<'a> {
        &self.q
    }

    /// The kernels' `post` for activation scale `s`: `s` times the element factor and tensor scale,
    /// computed in f64 and rounded once.
    pub fn post(&self, s: f32) -> f32 {
        (self.wpost * s as f64) as f32
    }
}

type A8Fn = unsafe extern "C" fn(
    *const A8Format,
    *const u8,
    *const u8,
    *const i8,
    *const i32,
    i64,
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
    unsafe extern "C" fn(*const f32, i64, i64, f32, i32, i64, i64, i64, *mut i8, *mut i32) -> i32;
type PaddedFn = unsafe extern "C" fn(i32, i64, i64, i64) -> i64;
type UnpermuteFn = unsafe extern "C" fn(*const i8, i32, i64, i64, *mut i8);

/// Activations prepared for one instruction set and weight format: `m` rows of quantized codes in the
/// kernel layout with their group sums.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Codes, `m` rows of `ldq` bytes.
    pub xq: Vec<i8>,
    /// Group sums, `m` rows of `lds`.
    pub xsum: Vec<i32>,
    /// Rows.
    pub m: usize,
    /// K.
    pub k: usize,
    /// Bytes per row of `xq` (K padded to whole superblocks).
    pub ldq: usize,
    /// Sums per row.
    pub lds: usize,
    /// The activation scale.
    pub scale: f32,
    isa: A8Isa,
    format: A8Format,
}

/// The int8-activation kernels of one target, compiled and loaded into the process.
pub struct Act8Library {
    target: CpuTarget,
    kernels: Vec<(A8Isa, A8Fn)>,
    prepare: PrepareFn,
    padded: PaddedFn,
    unpermute: UnpermuteFn,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Act8Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Act8Library")
            .field("target", &self.target)
            .field(
                "kernels",
                &self.kernels.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Compiles C source `src` with `-march=<target>` into `dir/lib<name>.so` with `$CC` (default `cc`);
/// the library's path. Shared by [`Act8Library`] and [`fp8::Fp8Library`].
fn compile(
    src: &str,
    name: &str,
    target: CpuTarget,
    dir: &Path,
) -> Result<std::path::PathBuf, Error> {
    let c = dir.join(format!("{name}.c"));
    let so = dir.join(format!("lib{name}.so"));
    std::fs::write(&c, src).map_err(|e| Error::Link(format!("writing the source: {e}")))?;
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let out = Command::new(&cc)
        .args([
            "-O3",
            "-fPIC",
            "-shared",
            "-std=gnu11",
            "-ffp-contract=fast",
            "-Wl,-z,noexecstack",
        ])
        .arg(format!("-march={}", target.cpu_name()))
        .arg("-o")
        .arg(&so)
        .arg(&c)
        .output()
        .map_err(|e| Error::Link(format!("cannot run {}: {e}", cc.to_string_lossy())))?;
    if !out.status.success() {
        return Err(Error::Link(format!(
            "{} failed ({}): {}",
            cc.to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(so)
}

impl Act8Library {
    /// Compiles [`c_source`] for `target` into a shared library in a temporary folder with `$CC`
    /// (default `cc`) and loads it. Errors if the host cannot run `target`'s code or compiling or
    /// loading fails.
    pub fn build(target: CpuTarget) -> Result<Self, Error> {
        if !target.host_supports() {
            return Err(Error::HostUnsupported(target));
        }
        let dir = tempfile::tempdir().map_err(|e| Error::Link(format!("temporary folder: {e}")))?;
        let so = compile(&c_source(target), "qc_act8", target, dir.path())?;
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
            for &isa in A8Isa::of_target(target) {
                let p = get(&isa.symbol())?;
                kernels.push((isa, std::mem::transmute::<*const (), A8Fn>(p)));
            }
            let prepare = std::mem::transmute::<*const (), PrepareFn>(get("qc_a8_prepare")?);
            let padded = std::mem::transmute::<*const (), PaddedFn>(get("qc_a8_padded_k")?);
            let unpermute = std::mem::transmute::<*const (), UnpermuteFn>(get("qc_a8_unpermute")?);
            Ok(Act8Library {
                target,
                kernels,
                prepare,
                padded,
                unpermute,
                _lib: lib,
            })
        }
    }

    /// The target the kernels were compiled for.
    pub fn target(&self) -> CpuTarget {
        self.target
    }

    /// The instruction sets of this library that the host runs.
    pub fn isas(&self) -> Vec<A8Isa> {
        self.kernels
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| i.host_supports())
            .collect()
    }

    /// The fastest instruction set of this library that the host runs.
    pub fn best_isa(&self) -> Option<A8Isa> {
        self.isas().last().copied()
    }

    /// The length of a prepared activation row (K padded to whole superblocks).
    pub fn padded_k(&self, isa: A8Isa, format: &A8Format, k: usize) -> usize {
        // SAFETY: a pure function of its arguments.
        unsafe {
            (self.padded)(
                format.elem,
                format.group as i64,
                isa.vector_bytes(),
                k as i64,
            ) as usize
        }
    }

    /// Quantizes the `m = x.len() / k` rows of `x` with scale `s` ([`act_scale`]) for `isa` and the
    /// format of `w`. Errors if `x` is not a whole number of rows of K or holds a non-finite value.
    pub fn prepare(
        &self,
        isa: A8Isa,
        w: &A8Matrix<'_>,
        x: &[f32],
        s: f32,
    ) -> Result<Prepared, Error> {
        let k = w.q.cols();
        let f = w.kind.format;
        if k == 0 || !x.len().is_multiple_of(k) {
            return Err(Error::Shape(format!(
                "{} activations are not rows of K = {k}",
                x.len()
            )));
        }
        let m = x.len() / k;
        let ldq = self.padded_k(isa, &f, k);
        let lds = if f.group > 0 {
            ldq / f.group as usize
        } else {
            1
        };
        let mut xq = vec![0i8; m * ldq];
        let mut xsum = vec![0i32; m * lds];
        for i in 0..m {
            // SAFETY: row i of x has k elements, xq's row ldq bytes and xsum's row lds sums.
            let bad = unsafe {
                (self.prepare)(
                    x[i * k..].as_ptr(),
                    1,
                    k as i64,
                    s,
                    f.elem,
                    f.group as i64,
                    isa.vector_bytes(),
                    ldq as i64,
                    xq[i * ldq..].as_mut_ptr(),
                    xsum[i * lds..].as_mut_ptr(),
                )
            };
            if bad != 0 {
                return Err(Error::Shape(format!(
                    "activation row {i} holds a non-finite value"
                )));
            }
        }
        Ok(Prepared {
            xq,
            xsum,
            m,
            k,
            ldq,
            lds,
            scale: s,
            isa,
            format: f,
        })
    }

    /// The codes of prepared row `i` in element order (K of them).
    pub fn codes(&self, p: &Prepared, i: usize) -> Vec<i8> {
        let mut out = vec![0i8; p.k];
        // SAFETY: row i of xq has ldq >= k bytes in the layout of (elem, VB).
        unsafe {
            (self.unpermute)(
                p.xq[i * p.ldq..].as_ptr(),
                p.format.elem,
                p.isa.vector_bytes(),
                p.k as i64,
                out.as_mut_ptr(),
            )
        };
        out
    }

    /// `y[m, N] = q(x) W^T` for prepared activations `p` (row major, `y.len() == m N`). Runs on `pool`
    /// (weight rows split into contiguous ranges, several per thread, each one kernel call for all
    /// rows of `p`) or, with `None`, in one call on the calling thread. The result does not depend on
    /// the pool. Errors if the library lacks `p`'s instruction set, `p` was prepared for another
    /// format, or the lengths do not match.
    pub fn matmul(
        &self,
        w: &A8Matrix<'_>,
        p: &Prepared,
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), Error> {
        self.matmul_rows(w, p, 0..w.q.rows(), y, pool)
    }

    /// Rows `rows` of the product into `y[m, rows.len()]`, like [`Act8Library::matmul`].
    pub fn matmul_rows(
        &self,
        w: &A8Matrix<'_>,
        p: &Prepared,
        rows: std::ops::Range<usize>,
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), Error> {
        let n = w.q.rows();
        if p.format != w.kind.format
            || p.k != w.q.cols()
            || rows.start > rows.end
            || rows.end > n
            || y.len() != p.m * rows.len()
        {
            return Err(Error::Shape(format!(
                "W is [{n}, {}] ({:?}) but the activations are [{}, {}] ({:?}), the rows {rows:?} and \
                 y has {} elements",
                w.q.cols(),
                w.kind.format,
                p.m,
                p.k,
                p.format,
                y.len()
            )));
        }
        let f = self
            .kernels
            .iter()
            .find(|(i, _)| *i == p.isa)
            .map(|(_, f)| *f)
            .ok_or_else(|| Error::Unsupported(format!("no {:?} kernel here", p.isa)))?;
        if !p.isa.host_supports() {
            return Err(Error::Unsupported(format!(
                "the host cannot run the {:?} kernel",
                p.isa
            )));
        }
        let codes = w.q.blob().as_ptr() as usize;
        let scales = codes + w.q.sections().scales;
        let post = w.post(p.scale);
        let ldy = rows.len();
        let yp = y.as_mut_ptr() as usize;
        let fmt = w.kind.format;
        let call = |r0: usize, r1: usize| -> i32 {
            // SAFETY: the blob has the layout's length (QuantMatrix::new), xq and xsum hold m prepared
            // rows, and y's columns [r0 - rows.start, r1 - rows.start) of every row are written by this
            // call only.
            unsafe {
                f(
                    &fmt,
                    codes as *const u8,
                    scales as *const u8,
                    p.xq.as_ptr(),
                    p.xsum.as_ptr(),
                    p.ldq as i64,
                    p.lds as i64,
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
                let min_rows = (256 << 10) / w.q.sections().row_bytes.max(1);
                let chunk = rows.len().div_ceil(4 * threads).max(min_rows).max(1);
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
            0 => {}
            2 => {
                return Err(Error::Shape(
                    "the GEMM kernel could not allocate its panels".into(),
                ))
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "the kernel has no case for {fmt:?}"
                )))
            }
        }
        Ok(())
    }
}

/// The reference of `q(x) W^T` for `x[m, k]`: the activation codes of `qc_quant::tensor::quantize`
/// (int8 per tensor, static maximum `amax`) times their scale, `W` decoded with `qc_quant::dequantize`,
/// each product and the sums in f64. Also returns the codes.
pub fn reference(
    fmt: &QuantType,
    n: usize,
    k: usize,
    blob: &[u8],
    x: &[f32],
    amax: f32,
) -> Result<(Vec<f64>, Vec<i8>), Error> {
    let q = qc_quant::blob::from_blob(blob, fmt, &[n, k], "W")?;
    let w = qc_quant::dequantize(&q)?;
    let m = x.len() / k.max(1);
    let afmt = crate::gemv::named("int8")?;
    let opts = qc_quant::QuantizeOptions {
        tensor_amax: Some(amax),
        ..Default::default()
    };
    let xq = qc_quant::quantize(x, &[m, k], afmt, &opts)?;
    let xd = qc_quant::dequantize(&xq)?;
    let codes: Vec<i8> = xq.codes.iter().map(|&c| c as i8).collect();
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for r in 0..n {
            y[i * n + r] = (0..k)
                .map(|j| xd[i * k + j] as f64 * w[r * k + j] as f64)
                .sum();
        }
    }
    Ok((y, codes))
}

//! The quantized matrix products of a CPU artifact: `quant.matmul` of a quantized weight runs qc's own
//! kernels (qc_backend_llvm::gemv and ::gemm) on the weight's packed bytes, which live in the artifact's
//! weights blob rather than in the code.
//!
//! # How a product is compiled
//! The upstream MLIR export leaves every `quant.matmul {transpose_b}` whose weight format has a kernel
//! to an external function (`qc_backend_hlo::upstream::KernelCall`): the lowered model calls
//! `_mlir_ciface_qc_matmul_<i>(x, y)` with MLIR memref descriptors of the activations `x[M, K]` and of
//! a fresh output `y[M, N]`. [`plan`] lays the weights out and generates the C of those functions
//! ([`Plan::glue`]), which the shim of cmd/cpu.rs includes:
//! 1. the activation rows are copied into the kernel layout of the format (`qc_prepare_row`, the C twin
//!    of `qc_backend_llvm::gemv::layout::prepare_x`);
//! 2. the weight rows are cut into chunks, run in parallel with OpenMP (`schedule(dynamic, 1)`; a
//!    product under [`PARALLEL_MIN_MACS`] multiply-adds runs on the calling thread), each chunk by
//!    kernel calls: the GEMV kernel once per activation row when M < [`GEMM_MIN_ROWS`], else one call
//!    of the GEMM kernel for all rows.
//!
//! With int8 activations (`KernelOp::QuantMatmul` with `act_quant`: the export folded a
//! `quant.quantize` to int8 per tensor with a static `amax` into the product, see
//! [`has_act8_kernel`]) the product runs `qc_matmul_a8` on the *unquantized* x instead: each
//! activation row is quantized once (`qc_a8_prepare`: `x / s` with `s = amax / 127` in f32, ties to
//! even, saturated to ±127: the codes of `qc_quant::tensor::quantize`), then the weight rows are cut
//! into chunks on OpenMP threads as above, each chunk one call of qc_backend_llvm::act8's kernel for
//! all rows (exact integer dot products per group: `vpdpbusd` with AVX-512 VNNI when the CPU has it,
//! else `vpmaddubsw`; on x86-64-v3 AVX-VNNI when the CPU has it, else AVX2; runtime checks; the GEMM
//! kernel from 32 rows). Its C source is pasted into the glue; `post` (activation scale times the
//! weights' element factor and tensor scale) is computed here. The result differs from the
//! interpreter's (which multiplies the dequantized operands in f32) only by the rounding of the scale
//! products (act8's module documentation gives the order).
//!
//! With fp8 activations (`act_quant` to fp8_e4m3 or fp8_e5m2 per tensor with a static `amax`, see
//! [`has_fp8_act_kernel`]; the export's filter is [`has_act_quant_kernel`]) the product runs
//! `qc_matmul_f8`: each activation row is quantized once (`qc_f8_prepare`: `x / s` with
//! `s = amax / max` in f32, rounded to the fp8 element, ties to even, saturating: `qc_fquant`'s
//! arithmetic) to the bf16 bits of the fp8 values, then the weight rows are cut into chunks on OpenMP
//! threads, each chunk one call of qc_backend_llvm::act8::fp8's kernel for all rows (`vdpbf16ps` when
//! the CPU has AVX512-BF16, else the same chain in f32 FMA; runtime check; no panel GEMM: each weight
//! row is decoded once per call and multiplied by every activation row). Its C source is pasted into
//! the glue; weights in int8 / int4 / e2m1 / fp8 formats (`fp8::SUPPORTED_NAMED_FORMATS`).
//!
//! f32 products (`KernelOp::Sgemm`) run `qc_sgemm`, C compiled with the artifact: register tiles of
//! 4 rows x 64 columns (AVX-512; 4 x 16 with AVX2) over 64-row blocks, each output one FMA chain over
//! K in order, tasks (batch, column panel, row block) on OpenMP threads.
//!
//! Activation quantization (`KernelOp::FakeQuant`, a `quant.quantize` whose result is dequantized or
//! multiplied) runs `qc_fquant`, C twin of `qc_quant::tensor::quantize` followed by `dequantize` for
//! the formats of [`has_fake_quant`]: int8, fp8_e4m3 and fp8_e5m2 per tensor (f32 scale `amax / max`,
//! `amax` the op's static maximum or else the data's; `x / s` rounded to the element, ties to even,
//! saturated; times `s`), MX formats with FLOOR e8m0 scales (mxfp8, mxfp4: `x * 2^-E` rounded, times
//! `2^E`) and NVFP4 in ModelOpt's arithmetic (f32 tensor scale `amax / (6 * 448)` from the static
//! maximum, ue4m3 block scales, `x / total` rounded, a zero quotient to +0, times `total`). Every step
//! is the same f32 operation as in qc_quant, so the values are bit-identical to the interpreter's. A
//! NaN or infinite input fails the call (`qc_failed`), as the interpreter refuses it.
//!
//! A kernel's result for a row does not depend on the chunking (its accumulation order is a function
//! of the format, K and the target), so outputs are bit-identical for every thread count.
//!
//! # The weights blob (`weights.bin`)
//! Each distinct resource once, at an offset that is a multiple of 64 bytes: first the large float
//! and integer constants that the export passes as arguments (`ConstantArg`, little-endian elements,
//! row major), then the quantized weights of the kernel calls in order of first use, as their
//! `qc_quant::blob` bytes (codes | scales | tensor scale sections, the layout the kernels read). `qc_main` receives its address (any 64-byte aligned copy: `qc run` maps the artifact, whose
//! members are 64-byte aligned) and hands it to the kernels through a thread-local pointer, so calls
//! on different threads share no mutable state.

use qc_backend_hlo::upstream::{Exported, KernelOp};
use qc_backend_llvm::act8::fp8::{self, F8Matrix};
use qc_backend_llvm::act8::{self, A8Matrix};
use qc_backend_llvm::gemv::{codegen, layout::BlockLayout, KernelSpec, QuantMatrix};
use qc_backend_llvm::CpuTarget;
use qc_ir::quant::{
    Convention, Encoding, InfNan, QuantType, Rounding, Saturation, ScaleRule, ScaleType, Scheme,
    TensorScale,
};
use qc_ir::Module;

use crate::output::Failure;

/// The artifact part holding the weights.
pub const WEIGHTS: &str = "weights.bin";

/// Products with fewer multiply-adds than this run on the calling thread (forking costs more).
pub const PARALLEL_MIN_MACS: u64 = 1 << 21;

/// Quantized products with at least this many activation rows run the GEMM kernel (which decodes a
/// weight panel once for all rows); fewer rows run the GEMV kernel once per row, on weight rows that
/// stay in cache (faster below about 16 rows: the GEMM kernel's panel decode is not amortized).
pub const GEMM_MIN_ROWS: u64 = 16;

/// Whether qc's CPU kernels handle weights in `fmt` (the filter given to the upstream export).
pub fn has_kernel(fmt: &QuantType) -> bool {
    KernelSpec::from_quant_type(fmt).is_ok()
}

/// How `qc_fquant` quantizes a format: (kind, block size, element parameters, MX emax).
/// Kinds: 0 per tensor with an f32 scale, 1 e8m0 FLOOR block scales, 2 NVFP4 (ModelOpt).
struct FakeQuant {
    kind: u32,
    block: u32,
    elem: ElemParams,
    emax: i32,
}

/// The element: an integer (`man < 0`, values in [-max, max]) or a minifloat with `man` mantissa
/// bits, smallest normal exponent `emin` and largest finite value `max`.
#[derive(Clone, Copy)]
struct ElemParams {
    man: i32,
    emin: i32,
    max: f32,
}

fn elem_params(e: &Encoding) -> Option<ElemParams> {
    if *e == Encoding::I8 {
        return Some(ElemParams {
            man: -1,
            emin: 0,
            max: 127.0,
        });
    }
    if ![Encoding::E4M3FN, Encoding::E5M2, Encoding::E2M1].contains(e) {
        return None;
    }
    let Encoding::Float(m) = e else { return None };
    if m.policy == InfNan::Fnuz {
        return None;
    }
    Some(ElemParams {
        man: m.man_bits as i32,
        emin: 1 - m.bias,
        max: e.max_finite() as f32,
    })
}

fn fake_quant_of(fmt: &QuantType) -> Option<FakeQuant> {
    if fmt.round != Rounding::Rne || fmt.sat != Saturation::SatFinite || fmt.zero_point.is_some() {
        return None;
    }
    let elem = elem_params(&fmt.elem)?;
    let last = |axis: i32| axis == -1;
    match (fmt.scheme, fmt.scale, fmt.tensor_scale, fmt.convention) {
        (Scheme::PerTensor, ScaleType::F32, TensorScale::None, Convention::Spec) => {
            Some(FakeQuant {
                kind: 0,
                block: 0,
                elem,
                emax: 0,
            })
        }
        (Scheme::Group { size, axis }, ScaleType::E8M0, TensorScale::None, _)
            if last(axis) && fmt.rule == ScaleRule::Floor && elem.man >= 0 =>
        {
            Some(FakeQuant {
                kind: 1,
                block: size,
                elem,
                emax: qc_quant::scale::emax_elem(&fmt.elem),
            })
        }
        (
            Scheme::Group { size, axis },
            ScaleType::UE4M3,
            TensorScale::Divisor,
            Convention::ModelOpt,
        ) if last(axis) && fmt.elem == Encoding::E2M1 => Some(FakeQuant {
            kind: 2,
            block: size,
            elem,
            emax: 0,
        }),
        _ => None,
    }
}

/// Whether the CPU target quantizes activations in `fmt` (`quant.quantize` as a
/// `KernelOp::FakeQuant` call; the filter given to the upstream export): int8, fp8_e4m3 and fp8_e5m2
/// per tensor, MX e4m3 / e5m2 / e2m1 with FLOOR scales along the last axis (mxfp8, mxfp4), NVFP4.
pub fn has_fake_quant(fmt: &QuantType) -> bool {
    fake_quant_of(fmt).is_some()
}

/// Whether `quant.matmul` of weights in `w` by activations quantized to `a` runs the int8-activation
/// kernels (qc_backend_llvm::act8; the filter given to the upstream export as `act_quant_calls`): `a`
/// is int8 per tensor with `qc_fquant`'s arithmetic (f32 scale `amax / 127`, ties to even, saturated)
/// and `w` a format whose elements are small integers (`act8::has_kernel`).
pub fn has_act8_kernel(w: &QuantType, a: &QuantType) -> bool {
    fake_quant_of(a).is_some_and(|f| f.kind == 0 && f.elem.man < 0) && act8::has_kernel(w)
}

/// Whether `quant.matmul` of weights in `w` by activations quantized to `a` runs the fp8-activation
/// kernels (qc_backend_llvm::act8::fp8): `a` is fp8_e4m3 or fp8_e5m2 per tensor with `qc_fquant`'s
/// arithmetic (f32 scale `amax / max`, ties to even, saturating) and `w` a format whose element values
/// are exact in bf16 (`fp8::has_kernel`).
pub fn has_fp8_act_kernel(w: &QuantType, a: &QuantType) -> bool {
    fake_quant_of(a).is_some_and(|f| f.kind == 0 && f.elem.man >= 0)
        && fp8::F8Act::from_quant_type(a).is_some()
        && fp8::has_kernel(w)
}

/// Whether a product with activations quantized to `a` runs a kernel that quantizes them itself
/// ([`has_act8_kernel`] or [`has_fp8_act_kernel`]; the filter given to the upstream export as
/// `act_quant_calls`).
pub fn has_act_quant_kernel(w: &QuantType, a: &QuantType) -> bool {
    has_act8_kernel(w, a) || has_fp8_act_kernel(w, a)
}

/// The C of the fp8-activation products: `qc_matmul_f8` over the kernels of
/// qc_backend_llvm::act8::fp8 (whose source precedes it).
const FP8_GLUE: &str = r#"
typedef int (*qc_f8_fn)(const qc_f8_format *, const uint8_t *, const uint8_t *, int64_t, const uint16_t *,
                        int64_t, int64_t, float *, int64_t, int64_t, int64_t, int64_t, float);

/* y[M, N] = q(x)[M, K] W^T for W[N, K] at codes/scales, q the fp8 (man, emin, maxf) per-tensor
   quantization with scale s: each row of x quantized once to the bf16 bits of its fp8 values
   (qc_f8_prepare), then the weight rows in chunks on OpenMP threads, each chunk one kernel call for all
   rows (vdpbf16ps when the CPU has AVX512-BF16, else the same chain in f32 FMA). */
static void qc_matmul_f8(const qc_f8_format *f, const uint8_t *codes, const uint8_t *scales, int man,
                         int emin, float maxf, float s, float post, int64_t row_bytes, int64_t n,
                         int64_t k, const qc_md2_t *x, qc_md2_t *y) {
  int64_t m = x->sizes[0];
  const float *xa = x->aligned + x->offset;
  float *ya = y->aligned + y->offset;
  int64_t ldy = y->strides[0];
  if (m <= 0 || n <= 0) return;
  qc_f8_fn fn = __builtin_cpu_supports("avx512bf16") ? qc_f8_matmul_bf16 : qc_f8_matmul_fma;
  int64_t kp = qc_f8_padded_k(k);
  void *buf = qc_malloc((size_t)(m * kp * 2 + 64));
  if (!buf) { qc_failed = 1; return; }
  uint16_t *xb = (uint16_t *)(((uintptr_t)buf + 63) & ~(uintptr_t)63);
  for (int64_t i = 0; i < m; i++)
    if (qc_f8_prepare(xa + i * x->strides[0], x->strides[1], k, s, man, emin, maxf, kp, xb + i * kp)) {
      for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++) ya[r * ldy + j] = 0.0f;
      qc_failed = 1;
      qc_free(buf);
      return;
    }
  int threads = omp_get_max_threads();
  int par = threads > 1 && (uint64_t)m * (uint64_t)n * (uint64_t)k >= QC_PARALLEL_MIN_MACS;
  int64_t chunk = (n + 4 * threads - 1) / (4 * threads);
  int64_t least = (256 << 10) / (row_bytes > 0 ? row_bytes : 1);
  if (chunk < least) chunk = least;
  if (chunk < 1) chunk = 1;
  int64_t chunks = (n + chunk - 1) / chunk;
  int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) if (par) reduction(| : bad)
  for (int64_t c = 0; c < chunks; c++) {
    int64_t r0 = c * chunk, r1 = r0 + chunk < n ? r0 + chunk : n;
    bad |= fn(f, codes, scales, row_bytes, xb, kp, m, ya + r0, ldy, k, r0, r1, post);
  }
  if (bad) qc_failed = 1;
  qc_free(buf);
}

"#;

/// The C of the int8-activation products: `qc_matmul_a8` over the kernels of qc_backend_llvm::act8
/// (whose source precedes it).
const ACT8_GLUE: &str = r#"
typedef int (*qc_a8_fn)(const qc_a8_format *, const uint8_t *, const uint8_t *, const int8_t *,
                        const int32_t *, int64_t, int64_t, int64_t, float *, int64_t, int64_t, int64_t,
                        int64_t, float);

/* y[M, N] = q(x)[M, K] W^T for W[N, K] at codes/scales, q the int8 quantization with scale s: each row
   of x quantized once (qc_a8_prepare), then the weight rows in chunks on OpenMP threads, each chunk one
   kernel call for all rows (AVX-512 VNNI when the CPU has it, else AVX-512 BW; on x86-64-v3 AVX-VNNI
   when the CPU has it, else AVX2). */
static void qc_matmul_a8(const qc_a8_format *f, const uint8_t *codes, const uint8_t *scales, float s,
                         float post, int64_t row_bytes, int64_t n, int64_t k, const qc_md2_t *x,
                         qc_md2_t *y) {
  int64_t m = x->sizes[0];
  const float *xa = x->aligned + x->offset;
  float *ya = y->aligned + y->offset;
  int64_t ldy = y->strides[0];
  if (m <= 0 || n <= 0) return;
#ifdef __AVX512F__
  qc_a8_fn fn = __builtin_cpu_supports("avx512vnni") ? qc_a8_matmul_vnni : qc_a8_matmul_avx512;
  int64_t vb = 64;
#else
  qc_a8_fn fn = __builtin_cpu_supports("avxvnni") ? qc_a8_matmul_avxvnni : qc_a8_matmul_avx2;
  int64_t vb = 32;
#endif
  int64_t kp = qc_a8_padded_k(f->elem, f->group, vb, k), lds = f->group > 0 ? kp / f->group : 1;
  void *buf = qc_malloc((size_t)(m * kp + m * lds * 4 + 128));
  if (!buf) { qc_failed = 1; return; }
  int8_t *xq = (int8_t *)(((uintptr_t)buf + 63) & ~(uintptr_t)63);
  int32_t *xs = (int32_t *)(((uintptr_t)(xq + m * kp) + 63) & ~(uintptr_t)63);
  for (int64_t i = 0; i < m; i++)
    if (qc_a8_prepare(xa + i * x->strides[0], x->strides[1], k, s, f->elem, f->group, vb, kp,
                      xq + i * kp, xs + i * lds)) {
      for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++) ya[r * ldy + j] = 0.0f;
      qc_failed = 1;
      qc_free(buf);
      return;
    }
  int threads = omp_get_max_threads();
  int par = threads > 1 && (uint64_t)m * (uint64_t)n * (uint64_t)k >= QC_PARALLEL_MIN_MACS;
  int64_t chunk = (n + 4 * threads - 1) / (4 * threads);
  int64_t least = m >= QC_GEMM_MIN_ROWS ? 64 : (256 << 10) / (row_bytes > 0 ? row_bytes : 1);
  if (chunk < least) chunk = least;
  if (chunk < 1) chunk = 1;
  int64_t chunks = (n + chunk - 1) / chunk;
  int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) if (par) reduction(| : bad)
  for (int64_t c = 0; c < chunks; c++) {
    int64_t r0 = c * chunk, r1 = r0 + chunk < n ? r0 + chunk : n;
    bad |= fn(f, codes, scales, xq, xs, kp, lds, m, ya + r0, ldy, k, r0, r1, post);
  }
  if (bad) qc_failed = 1;
  qc_free(buf);
}

"#;

/// The weights blob and the C glue of a model's kernel calls.
#[derive(Debug, Default)]
pub struct Plan {
    /// `weights.bin` (module documentation).
    pub weights: Vec<u8>,
    /// The formats whose kernels the library must contain, distinct, in first-use order.
    pub formats: Vec<QuantType>,
    /// C source defining `_mlir_ciface_qc_matmul_<i>` (and `_qc_sgemm_<i>`, `_qc_fquant_<i>`) for
    /// every call, and the thread-local weights
    /// pointer `qc_weights` and failure flag `qc_failed` that the shim's entry point sets and reads.
    /// Empty when there are no calls.
    pub glue: String,
    /// The offset in `weights` of each of the export's constant arguments, in order.
    pub constant_offsets: Vec<usize>,
}

fn layout_code(l: BlockLayout) -> u32 {
    match l {
        BlockLayout::Tile => 0,
        BlockLayout::NibbleDword => 1,
        BlockLayout::MiniWord => 2,
    }
}

/// The C helpers every glue starts with.
const GLUE_PRELUDE: &str = r#"/* Quantized matrix products: qc's kernels over the weights blob (cmd/cpu_kernels.rs). */
#include <omp.h>
typedef struct { float *allocated; float *aligned; int64_t offset; int64_t sizes[1]; int64_t strides[1]; } qc_md1_t;
typedef struct { float *allocated; float *aligned; int64_t offset; int64_t sizes[2]; int64_t strides[2]; } qc_md2_t;
typedef struct { float *allocated; float *aligned; int64_t offset; int64_t sizes[3]; int64_t strides[3]; } qc_md3_t;
typedef void (*qc_gemv_fn)(const uint8_t *, const uint8_t *, const float *, float *, int64_t, int64_t, int64_t, float);
typedef void (*qc_gemm_fn)(const uint8_t *, const uint8_t *, const float *, int64_t, float *, int64_t, int64_t, int64_t, int64_t, int64_t, float);
static __thread const uint8_t *qc_weights;
static __thread int qc_failed;

static float qc_f32(uint32_t bits) { float f; memcpy(&f, &bits, 4); return f; }

/* Activation quantization: the arithmetic of qc_quant::tensor::quantize + dequantize, f32 step by step. */
static float qc_pow2f(int e) { /* qc_quant::scale::pow2_f32 */
  if (e > 127) return __builtin_inff();
  if (e >= -126) return qc_f32((uint32_t)(e + 127) << 23);
  if (e >= -149) return qc_f32(1u << (e + 149));
  return 0.0f;
}

static int qc_floor_log2(float x) { /* qc_quant::scale::floor_log2 */
  uint32_t a;
  memcpy(&a, &x, 4);
  a &= 0x7fffffffu;
  if (a >= 0x00800000u) return (int)(a >> 23) - 127;
  return 31 - __builtin_clz(a) - 149;
}

/* The value of x rounded to the minifloat with `man` mantissa bits and smallest normal exponent emin,
   ties to even (qc_quant::codec's FloatParams::encode, then decode): beyond maxf it saturates (sat)
   or is NaN; a zero keeps x's sign. */
static float qc_mf_round(float x, int man, int emin, float maxf, int sat) {
  uint32_t bits;
  memcpy(&bits, &x, 4);
  uint32_t sign = bits >> 31, a = bits & 0x7fffffffu;
  if (a >= 0x7f800000u) {
    if (a > 0x7f800000u || !sat) return __builtin_nanf("");
    return sign ? -maxf : maxf;
  }
  if (a == 0) return x;
  int e, exp2;
  uint64_t sig;
  if (a >= 0x00800000u) { e = (int)(a >> 23) - 127; sig = (a & 0x7fffffu) | 0x800000u; exp2 = e - 23; }
  else { e = 31 - __builtin_clz(a) - 149; sig = a; exp2 = -149; }
  int eb = e > emin ? e : emin, q = eb - man, shift = q - exp2;
  uint64_t n;
  if (shift <= 0) n = sig << (-shift);
  else if (shift > 40) n = 0;
  else {
    n = sig >> shift;
    uint64_t rem = sig & ((1ull << shift) - 1), half = 1ull << (shift - 1);
    n += rem > half || (rem == half && (n & 1));
  }
  if (n == 0) return sign ? -0.0f : 0.0f;
  float v = (float)n * qc_pow2f(q);
  if (v > maxf) {
    if (!sat) return __builtin_nanf("");
    v = maxf;
  }
  return sign ? -v : v;
}

/* One element's value after encoding: an integer in [-maxf, maxf] (man < 0; NaN gives 0) or a
   minifloat (saturating). */
static float qc_fq_elem(float v, int man, int emin, float maxf) {
  if (man >= 0) return qc_mf_round(v, man, emin, maxf, 1);
  if (v != v) return 0.0f;
  float r = __builtin_rintf(v);
  if (r < -maxf) r = -maxf;
  if (r > maxf) r = maxf;
  return (float)(int32_t)r;
}

static float qc_block_amax(const float *x, int64_t s, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; i++) {
    float a = __builtin_fabsf(x[i * s]);
    if (a > m) m = a;
  }
  return m;
}

/* y = dequantize(quantize(x)) of the flattened tensor (cmd/cpu_kernels.rs): kind 0 per tensor (f32
   scale), 1 blocks of bs with e8m0 FLOOR scales (emax: the element's), 2 NVFP4 in ModelOpt's
   arithmetic; has_amax: the op's static maximum samax. */
static void qc_fquant(int kind, int64_t bs, int man, int emin, float maxf, int emax, int has_amax,
                      float samax, const qc_md1_t *x, qc_md1_t *y) {
  int64_t n = x->sizes[0], sx = x->strides[0], sy = y->strides[0];
  const float *xa = x->aligned + x->offset;
  float *ya = y->aligned + y->offset;
  for (int64_t i = 0; i < n; i++)
    if (!__builtin_isfinite(xa[i * sx])) {
      for (int64_t j = 0; j < n; j++) ya[j * sy] = 0.0f;
      qc_failed = 1;
      return;
    }
  if (kind == 0) {
    float amax = has_amax ? samax : qc_block_amax(xa, sx, n);
    float s = !__builtin_isfinite(amax) ? __builtin_nanf("") : amax / maxf;
    if (s == 0.0f) s = 1.0f;
    for (int64_t i = 0; i < n; i++) ya[i * sy] = qc_fq_elem(xa[i * sx] / s, man, emin, maxf) * s;
    return;
  }
  if (bs <= 0 || n % bs != 0) { qc_failed = 1; return; }
  float gs = 1.0f;
  if (kind == 2) {
    float t = samax;
    if (!has_amax) {
      t = 0.0f;
      for (int64_t b = 0; b < n; b += bs) {
        float a = qc_block_amax(xa + b * sx, sx, bs);
        if (a > t) t = a;
      }
    }
    if (t != t) gs = t;
    else if (t != 0.0f && __builtin_isfinite(t)) gs = t / (maxf * 448.0f);
  }
  for (int64_t b = 0; b < n; b += bs) {
    const float *xb = xa + b * sx;
    float *yb = ya + b * sy;
    float a = qc_block_amax(xb, sx, bs);
    if (kind == 1) {
      int e = qc_floor_log2(a == 0.0f ? 1.17549435e-38f : a) - emax;
      if (e < -127) e = -127;
      float m = qc_pow2f(-e), inv = qc_pow2f(e);
      for (int64_t i = 0; i < bs; i++) yb[i * sy] = qc_fq_elem(xb[i * sx] * m, man, emin, maxf) * inv;
    } else {
      if (has_amax && a > samax && __builtin_isfinite(samax)) a = samax;
      float sc = a / (maxf * gs);
      if (sc == 0.0f) sc = 1.0f;
      if (sc < qc_pow2f(-9)) sc = qc_pow2f(-9);
      float total = qc_mf_round(sc, 3, -6, 448.0f, 0) * gs; /* the ue4m3 code's value (overflow: NaN) */
      for (int64_t i = 0; i < bs; i++) {
        float v = xb[i * sx] / total;
        if (v == 0.0f) v = 0.0f; /* ModelOpt: a zero quotient gets the +0 code */
        yb[i * sy] = qc_fq_elem(v, man, emin, maxf) * total;
      }
    }
  }
}

/* Row i of x (stride s1 between elements) in the kernel layout `lay` with `lanes` lanes:
   0 = as it is, 1 = nibbles of 32-bit words, 2 = bytes of 16-bit words (qc_backend_llvm::gemv::layout). */
static void qc_prepare_row(int lay, int64_t lanes, const float *x, int64_t s1, float *out, int64_t k) {
  int64_t e = lay == 1 ? 8 * lanes : 4 * lanes, v = lay == 1 ? 8 : 4;
  int64_t full = lay == 0 ? 0 : k / e * e;
  for (int64_t b = 0; b < full; b += e)
    for (int64_t s = 0; s < v; s++)
      for (int64_t l = 0; l < lanes; l++) {
        int64_t el = lay == 1 ? 8 * l + s : 2 * l + 2 * lanes * (s % 2) + s / 2;
        out[b + s * lanes + l] = x[(b + el) * s1];
      }
  for (int64_t j = full; j < k; j++) out[j] = x[j * s1];
}

/* f32 products: c[M, N] = a[M, K] b[K, N] (row major, leading dimensions lda, ldb, ldc). Each element is
   one f32 FMA chain over k in order, so the result does not depend on the tiling or the threads.
   Register tiles of QC_MR rows x QC_NV vectors of QC_VL lanes (GCC vector extensions). */
#ifdef __AVX512F__
#define QC_VL 16
#define QC_NV 4
#else
#define QC_VL 8
#define QC_NV 2
#endif
#define QC_MR 4
#define QC_NR (QC_VL * QC_NV)
#define QC_MB 64
#define QC_KC 256
typedef float qc_vf __attribute__((vector_size(QC_VL * 4)));
typedef float qc_vfu __attribute__((vector_size(QC_VL * 4), aligned(4)));

static void qc_sgemm_block(const float *a, int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc,
                           int64_t m, int64_t n, int64_t k) {
  int64_t i = 0;
  if (n == QC_NR) {
    int64_t full = m / QC_MR * QC_MR;
    /* K in blocks of QC_KC (the block of b stays in L2, the rows of a in L1); the running sums go
       through c between blocks, which leaves each element's FMA chain as it is. */
    for (int64_t p0 = 0; p0 < k; p0 += QC_KC) {
      int64_t p1 = p0 + QC_KC < k ? p0 + QC_KC : k;
      for (i = 0; i < full; i += QC_MR) {
        qc_vf acc[QC_MR][QC_NV];
        for (int r = 0; r < QC_MR; r++)
          for (int v = 0; v < QC_NV; v++)
            acc[r][v] = p0 == 0 ? (qc_vf){0} : *(const qc_vfu *)(c + (i + r) * ldc + v * QC_VL);
        for (int64_t p = p0; p < p1; p++) {
          qc_vf bv[QC_NV];
          for (int v = 0; v < QC_NV; v++) bv[v] = *(const qc_vfu *)(b + p * ldb + v * QC_VL);
          for (int r = 0; r < QC_MR; r++) {
            qc_vf av = (qc_vf){0} + a[(i + r) * lda + p];
            for (int v = 0; v < QC_NV; v++) acc[r][v] += av * bv[v]; /* one FMA: -ffp-contract=fast */
          }
        }
        for (int r = 0; r < QC_MR; r++)
          for (int v = 0; v < QC_NV; v++) *(qc_vfu *)(c + (i + r) * ldc + v * QC_VL) = acc[r][v];
      }
    }
    i = full;
  }
  for (; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      float s = 0.0f;
      for (int64_t p = 0; p < k; p++) s = __builtin_fmaf(a[i * lda + p], b[p * ldb + j], s);
      c[i * ldc + j] = s;
    }
}

static void qc_sgemm(const qc_md3_t *a, const qc_md3_t *b, qc_md3_t *c) {
  int64_t batch = a->sizes[0], m = a->sizes[1], k = a->sizes[2], n = b->sizes[2];
  int64_t lda = a->strides[1], ldb = b->strides[1], ldc = c->strides[1];
  if (a->strides[2] != 1 || b->strides[2] != 1 || c->strides[2] != 1) { qc_failed = 1; return; }
  int64_t panels = (n + QC_NR - 1) / QC_NR, mblocks = (m + QC_MB - 1) / QC_MB;
  int64_t tasks = batch * panels * mblocks;
  int par = omp_get_max_threads() > 1 && (uint64_t)batch * m * n * k >= QC_PARALLEL_MIN_MACS;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t t = 0; t < tasks; t++) {
    int64_t bi = t / (panels * mblocks), rest = t % (panels * mblocks);
    int64_t j0 = (rest / mblocks) * QC_NR, i0 = (rest % mblocks) * QC_MB;
    const float *ab = a->aligned + a->offset + bi * a->strides[0] + i0 * lda;
    const float *bb = b->aligned + b->offset + (b->sizes[0] == 1 ? 0 : bi * b->strides[0]) + j0;
    float *cb = c->aligned + c->offset + bi * c->strides[0] + i0 * ldc + j0;
    int64_t mm = m - i0 < QC_MB ? m - i0 : QC_MB, nn = n - j0 < QC_NR ? n - j0 : QC_NR;
    qc_sgemm_block(ab, lda, bb, ldb, cb, ldc, mm, nn, k);
  }
}

/* y[M, N] = x[M, K] W^T for W[N, K] at codes/scales (its blob sections). */
static void qc_matmul(qc_gemv_fn gemv, qc_gemm_fn gemm, int lay, int64_t lanes, const uint8_t *codes,
                      const uint8_t *scales, float post, int64_t row_bytes, int64_t n, int64_t k,
                      const qc_md2_t *x, qc_md2_t *y) {
  int64_t m = x->sizes[0];
  const float *xa = x->aligned + x->offset;
  float *ya = y->aligned + y->offset;
  int64_t ldy = y->strides[0];
  if (m <= 0 || n <= 0) return;
  void *xbuf = qc_malloc((size_t)(m * k * 4 + 64));
  if (!xbuf) { qc_failed = 1; return; }
  float *xp = (float *)(((uintptr_t)xbuf + 63) & ~(uintptr_t)63);
  for (int64_t i = 0; i < m; i++)
    qc_prepare_row(lay, lanes, xa + i * x->strides[0], x->strides[1], xp + i * k, k);
  int threads = omp_get_max_threads();
  int par = threads > 1 && (uint64_t)m * (uint64_t)n * (uint64_t)k >= QC_PARALLEL_MIN_MACS;
  int use_gemm = m >= QC_GEMM_MIN_ROWS;
  /* Chunks: about 4 per thread; at least 256 KiB of weights (GEMV) or 64 rows, a whole number of
     the GEMM kernel's 64-row panels (GEMM). */
  int64_t chunk = (n + 4 * threads - 1) / (4 * threads);
  int64_t least = use_gemm ? 64 : (256 << 10) / (row_bytes > 0 ? row_bytes : 1);
  if (chunk < least) chunk = least;
  if (use_gemm) chunk = (chunk + 63) / 64 * 64;
  if (chunk < 1) chunk = 1;
  int64_t chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t c = 0; c < chunks; c++) {
    int64_t r0 = c * chunk, r1 = r0 + chunk < n ? r0 + chunk : n;
    if (!use_gemm) {
      for (int64_t i = 0; i < m; i++) gemv(codes, scales, xp + i * k, ya + i * ldy + r0, k, r0, r1, post);
    } else {
      gemm(codes, scales, xp, k, ya + r0, ldy, m, k, r0, r1, post);
    }
  }
  qc_free(xbuf);
}

"#;

/// Lays out the weights of the export's kernel calls and constant arguments (resources of `m`) and
/// generates the calls' glue for `cpu`.
pub fn plan(m: &Module, exported: &Exported, cpu: CpuTarget) -> Result<Plan, Failure> {
    let mut p = Plan::default();
    let mut placed: Vec<(String, usize)> = Vec::new();
    let mut place = |weights: &mut Vec<u8>, resource: &str, blob: &[u8]| match placed
        .iter()
        .find(|(r, _)| r == resource)
    {
        Some(&(_, o)) => o,
        None => {
            let o = weights.len().div_ceil(64) * 64;
            weights.resize(o, 0);
            weights.extend_from_slice(blob);
            placed.push((resource.to_string(), o));
            o
        }
    };
    for c in &exported.constant_args {
        let blob = m
            .resources
            .get(&c.resource)
            .and_then(|b| b.bytes())
            .ok_or_else(|| {
                Failure::Internal(format!(
                    "internal error: the constant resource '{}' has no bytes\n",
                    c.resource
                ))
            })?;
        let o = place(&mut p.weights, &c.resource, blob);
        p.constant_offsets.push(o);
    }
    let calls = &exported.calls;
    if calls.is_empty() {
        return Ok(p);
    }
    let lanes = codegen::lanes(cpu);
    let mut glue = String::from(GLUE_PRELUDE)
        .replace("QC_PARALLEL_MIN_MACS", &format!("{PARALLEL_MIN_MACS}ull"))
        .replace("QC_GEMM_MIN_ROWS", &GEMM_MIN_ROWS.to_string());
    let mut declared: Vec<String> = Vec::new();
    let mut bodies = String::new();
    let mut act8_used = false;
    let mut fp8_used = false;
    for c in calls {
        let (resource, format) = match &c.op {
            KernelOp::QuantMatmul {
                resource,
                format,
                act_quant: None,
            } => (resource, format),
            KernelOp::QuantMatmul {
                resource,
                format,
                act_quant: Some(aq),
            } => {
                let at = |msg: String| {
                    Failure::Input(qc_ir::Diagnostic::error(c.loc.clone(), msg).render(None))
                };
                if has_fp8_act_kernel(format, &aq.format) {
                    let act = fp8::F8Act::from_quant_type(&aq.format).ok_or_else(|| {
                        at(format!("{} is not an fp8 activation format", aq.format))
                    })?;
                    let blob = m
                        .resources
                        .get(resource)
                        .and_then(|b| b.bytes())
                        .ok_or_else(|| {
                            at(format!("the weight resource '{resource}' has no bytes"))
                        })?;
                    let w =
                        F8Matrix::new(format, c.n as usize, c.k as usize, blob).map_err(|e| {
                            at(format!(
                                "the fp8-activation kernels cannot read this weight: {e}"
                            ))
                        })?;
                    let offset = place(&mut p.weights, resource, blob);
                    let s = act.act_scale(aq.amax);
                    let f = w.format();
                    fp8_used = true;
                    bodies += &format!(
                        "static const qc_f8_format qc_f8f_{sym} = {{{bits}, {group}, {store}, 0, {{{table}}}}};\n\
                         void _mlir_ciface_{sym}(qc_md2_t *x, qc_md2_t *y) {{\n  \
                         /* {res}: {fmt} [{n}, {k}] at {offset}, {afmt} activations (amax {amax:e}) */\n  \
                         qc_matmul_f8(&qc_f8f_{sym}, qc_weights + {offset}, qc_weights + {scales}, \
                         {man}, {emin}, qc_f32(0x{max:08x}u), qc_f32(0x{s:08x}u), qc_f32(0x{post:08x}u), \
                         {row_bytes}, {n}, {k}, x, y);\n}}\n\n",
                        sym = c.symbol,
                        bits = f.bits,
                        group = f.group,
                        store = f.store,
                        table = f
                            .table
                            .iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        res = resource
                            .chars()
                            .map(|ch| if ch.is_ascii_graphic() && ch != '*' { ch } else { '_' })
                            .collect::<String>(),
                        fmt = format,
                        afmt = aq.format,
                        n = c.n,
                        k = c.k,
                        amax = aq.amax,
                        scales = offset + w.matrix().sections().scales,
                        man = act.man,
                        emin = act.emin,
                        max = act.max.to_bits(),
                        s = s.to_bits(),
                        post = w.post(s).to_bits(),
                        row_bytes = w.matrix().sections().row_bytes,
                    );
                    continue;
                }
                if !has_act8_kernel(format, &aq.format) {
                    return Err(at(format!(
                        "no int8-activation kernel for {format} weights and {} activations",
                        aq.format
                    )));
                }
                let blob = m
                    .resources
                    .get(resource)
                    .and_then(|b| b.bytes())
                    .ok_or_else(|| at(format!("the weight resource '{resource}' has no bytes")))?;
                let w = A8Matrix::new(format, c.n as usize, c.k as usize, blob).map_err(|e| {
                    at(format!(
                        "the int8-activation kernels cannot read this weight: {e}"
                    ))
                })?;
                let offset = place(&mut p.weights, resource, blob);
                let s = act8::act_scale(aq.amax);
                let f = w.kind().format;
                act8_used = true;
                bodies += &format!(
                    "static const qc_a8_format qc_a8f_{sym} = {{{elem}, {group}, {store}, 0, {{{table}}}}};\n\
                     void _mlir_ciface_{sym}(qc_md2_t *x, qc_md2_t *y) {{\n  \
                     /* {res}: {fmt} [{n}, {k}] at {offset}, int8 activations (amax {amax:e}) */\n  \
                     qc_matmul_a8(&qc_a8f_{sym}, qc_weights + {offset}, qc_weights + {scales}, \
                     qc_f32(0x{s:08x}u), qc_f32(0x{post:08x}u), {row_bytes}, {n}, {k}, x, y);\n}}\n\n",
                    sym = c.symbol,
                    elem = f.elem,
                    group = f.group,
                    store = f.store,
                    table = f
                        .table
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    res = resource
                        .chars()
                        .map(|ch| if ch.is_ascii_graphic() && ch != '*' { ch } else { '_' })
                        .collect::<String>(),
                    fmt = format,
                    n = c.n,
                    k = c.k,
                    amax = aq.amax,
                    scales = offset + w.matrix().sections().scales,
                    s = s.to_bits(),
                    post = w.post(s).to_bits(),
                    row_bytes = w.matrix().sections().row_bytes,
                );
                continue;
            }
            KernelOp::FakeQuant { format, amax } => {
                let fq = fake_quant_of(format).ok_or_else(|| {
                    Failure::Input(
                        qc_ir::Diagnostic::error(
                            c.loc.clone(),
                            format!("activations in {format} are not quantized on the CPU"),
                        )
                        .render(None),
                    )
                })?;
                bodies += &format!(
                    "void _mlir_ciface_{sym}(qc_md1_t *x, qc_md1_t *y) {{\n  \
                     /* quantize to {fmt}{am} */\n  \
                     qc_fquant({kind}, {block}, {man}, {emin}, qc_f32(0x{max:08x}u), {emax}, {has}, \
                     qc_f32(0x{amax:08x}u), x, y);\n}}\n\n",
                    sym = c.symbol,
                    fmt = format,
                    am = amax.map(|a| format!(", amax {a:e}")).unwrap_or_default(),
                    kind = fq.kind,
                    block = fq.block,
                    man = fq.elem.man,
                    emin = fq.elem.emin,
                    max = fq.elem.max.to_bits(),
                    emax = fq.emax,
                    has = amax.is_some() as u32,
                    amax = amax.unwrap_or(0.0).to_bits(),
                );
                continue;
            }
            KernelOp::Softmax { .. } | KernelOp::LayerNorm { .. } => {
                return Err(Failure::Internal(format!(
                    "internal error: the CPU export made a row kernel call @{}",
                    c.symbol
                )));
            }
            KernelOp::Sgemm { .. } => {
                bodies += &format!(
                    "void _mlir_ciface_{}(qc_md3_t *a, qc_md3_t *b, qc_md3_t *c) {{ qc_sgemm(a, b, c); }}\n\n",
                    c.symbol
                );
                continue;
            }
        };
        let at =
            |msg: String| Failure::Input(qc_ir::Diagnostic::error(c.loc.clone(), msg).render(None));
        let blob = m
            .resources
            .get(resource)
            .and_then(|b| b.bytes())
            .ok_or_else(|| at(format!("the weight resource '{resource}' has no bytes")))?;
        let w = QuantMatrix::new(format, c.n as usize, c.k as usize, blob)
            .map_err(|e| at(format!("the {} kernels cannot read this weight: {e}", cpu)))?;
        let offset = place(&mut p.weights, resource, blob);
        if !p.formats.contains(format) {
            p.formats.push(format.clone());
        }
        let spec = w.spec();
        let gemv = spec.symbol.clone();
        let gemm = qc_backend_llvm::gemm::gemm_symbol(spec);
        for s in [&gemv, &gemm] {
            if !declared.contains(s) {
                declared.push(s.clone());
            }
        }
        bodies += &format!(
            "void _mlir_ciface_{sym}(qc_md2_t *x, qc_md2_t *y) {{\n  \
             /* {res}: {fmt} [{n}, {k}] at {offset} */\n  \
             qc_matmul({gemv}, {gemm}, {lay}, {lanes}, qc_weights + {offset}, qc_weights + {scales}, \
             qc_f32(0x{post:08x}u), {row_bytes}, {n}, {k}, x, y);\n}}\n\n",
            sym = c.symbol,
            res = resource
                .chars()
                .map(|ch| if ch.is_ascii_graphic() && ch != '*' { ch } else { '_' })
                .collect::<String>(),
            fmt = format,
            n = c.n,
            k = c.k,
            lay = layout_code(BlockLayout::of(&spec.elem)),
            scales = offset + w.sections().scales,
            post = w.post().to_bits(),
            row_bytes = w.sections().row_bytes,
        );
    }
    for s in &declared {
        if s.starts_with("qc_gemm") {
            glue += &format!(
                "extern void {s}(const uint8_t *, const uint8_t *, const float *, int64_t, float *, \
                 int64_t, int64_t, int64_t, int64_t, int64_t, float);\n"
            );
        } else {
            glue += &format!(
                "extern void {s}(const uint8_t *, const uint8_t *, const float *, float *, int64_t, \
                 int64_t, int64_t, float);\n"
            );
        }
    }
    glue += "\n";
    if act8_used {
        glue += &act8::c_source(cpu);
        glue += &ACT8_GLUE
            .replace("QC_PARALLEL_MIN_MACS", &format!("{PARALLEL_MIN_MACS}ull"))
            .replace("QC_GEMM_MIN_ROWS", &GEMM_MIN_ROWS.to_string());
    }
    if fp8_used {
        glue += &fp8::c_source();
        glue += &FP8_GLUE.replace("QC_PARALLEL_MIN_MACS", &format!("{PARALLEL_MIN_MACS}ull"));
    }
    glue += &bodies;
    p.glue = glue;
    Ok(p)
}

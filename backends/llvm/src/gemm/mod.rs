//! Quantized GEMM kernels (`M >= 1`, built for prefill-sized `M` such as 512): `Y[M, N] = X[M, K]
//! W[N, K]^T`, with `W` in a qc quantized format read straight from its `qc_quant::blob` bytes (the
//! formats of [`crate::gemv`], decoded by the same IR), `X` and `Y` in f32.
//!
//! The kernels are generated as LLVM IR with inkwell ([`codegen`]), one per [`KernelSpec`], optimized
//! with `default<O3>` and compiled for a [`CpuTarget`] into one position-independent object:
//! [`emit_gemm_object`] (GEMM kernels only) or [`emit_kernels_object`] (the GEMV and the GEMM kernels of
//! a set of formats in one object). [`GemmLibrary::build`] links that object into a shared library with
//! the system C compiler (`cc`, or `$CC`) and loads it; [`GemmLibrary::gemm`] runs a kernel over row
//! ranges on a rayon thread pool.
//!
//! # The C ABI of a kernel
//! ```c
//! void qc_gemm_<spec>(const uint8_t *codes, const uint8_t *scales, const float *xp, int64_t ldx,
//!                     float *y, int64_t ldy, int64_t m, int64_t k,
//!                     int64_t row_begin, int64_t row_end, float post);
//! ```
//! The symbol is [`gemm_symbol`]: the GEMV symbol of the spec ([`KernelSpec::symbol`],
//! `qc_gemv_<spec>`) with `qc_gemv_` replaced by `qc_gemm_`. `codes`, `scales` and `post` are exactly
//! the GEMV kernel's (see [`crate::gemv`]). For every activation row `i` in `[0, m)` and weight row `n`
//! in `[row_begin, row_end)` it writes
//! `y[i * ldy + (n - row_begin)] = post * s_n * sum_k w_k(n, k) xp[i * ldx + k]`,
//! where row `i` of `xp` (`k` floats at `xp + i * ldx`) is activation row `i` in the kernel layout that
//! the GEMV kernel of the same spec and target uses ([`crate::gemv::layout::prepare_x`] applied to the
//! row). Nothing is written when `m <= 0` or `row_end <= row_begin`; `k = 0` writes zeros. `y` must not
//! overlap the inputs. The kernel reads exactly its rows' codes and scales and the `m` rows of `xp`,
//! and reads and writes exactly the `m x (row_end - row_begin)` outputs (it keeps its running sums
//! there between K chunks; their initial values are ignored, so `y` need not be initialized). It uses
//! about 70 KiB of stack (x86-64-v4; 36 KiB on x86-64-v3) and the instructions of its target
//! unconditionally. Calls on disjoint row ranges (or disjoint `y`) may run concurrently.
//!
//! # Accumulation order and numerics
//! Each output is a sum of f32 FMA chains over K chunks of [`codegen::k_chunk`] positions in the
//! kernel-layout order (each weight, its kernel value times its group's scale rounded to f32, times its
//! activation), the chunks' sums added in order, then times the row's scale and `post` (documented in
//! [`codegen`]). It depends only on the format, K and the target: results are
//! bit-identical for every `m`, row range, tiling and thread count (they are not bit-identical to the
//! GEMV kernels, which sum in a different order). Against the f64 reference ([`reference_gemm`]) the
//! tests require 1e-5 of the norm of `y`. NaN codes and NaN scales make their row's outputs NaN, as in
//! the GEMV kernels.

pub mod codegen;

use inkwell::targets::FileType;
use qc_ir::quant::QuantType;
use rayon::prelude::*;

use crate::gemv::{self, kernel_specs, KernelSpec, Kernels, LoadedKernels, QuantMatrix};
use crate::{CpuTarget, Error};

/// The C symbol of the GEMM kernel of `spec`: `qc_gemm_<spec>`, where `qc_gemv_<spec>` is the GEMV
/// kernel's ([`KernelSpec::symbol`]).
pub fn gemm_symbol(spec: &KernelSpec) -> String {
    match spec.symbol.strip_prefix("qc_gemv_") {
        Some(rest) => format!("qc_gemm_{rest}"),
        None => format!("qc_gemm_{}", spec.symbol),
    }
}

/// The function type of every GEMM kernel (see the module documentation).
pub type GemmFn = unsafe extern "C" fn(
    *const u8,
    *const u8,
    *const f32,
    i64,
    *mut f32,
    i64,
    i64,
    i64,
    i64,
    i64,
    f32,
);

/// Compiles the GEMM kernels of `formats` (one per distinct [`KernelSpec`]) for `target` into a
/// relocatable, position-independent x86-64 ELF object. The object defines one global function per
/// spec, named [`gemm_symbol`], and references no other symbol. The bytes are a deterministic function
/// of the specs (in order) and the target.
pub fn emit_gemm_object(formats: &[QuantType], target: CpuTarget) -> Result<Vec<u8>, Error> {
    gemv::emit(
        &kernel_specs(formats)?,
        target,
        FileType::Object,
        Kernels::Gemm,
    )
}

/// Like [`emit_gemm_object`], but returns the assembly text.
pub fn emit_gemm_assembly(formats: &[QuantType], target: CpuTarget) -> Result<String, Error> {
    gemv::emit_assembly(&kernel_specs(formats)?, target, Kernels::Gemm)
}

/// Compiles both the GEMV kernels ([`crate::gemv`], symbols [`KernelSpec::symbol`]) and the GEMM
/// kernels (symbols [`gemm_symbol`]) of `formats` for `target` into ONE relocatable,
/// position-independent x86-64 ELF object that references no other symbol. The bytes are a
/// deterministic function of the specs (in order) and the target.
pub fn emit_kernels_object(formats: &[QuantType], target: CpuTarget) -> Result<Vec<u8>, Error> {
    gemv::emit(
        &kernel_specs(formats)?,
        target,
        FileType::Object,
        Kernels::Both,
    )
}

/// Compiled GEMM kernels for one target, loaded into the process.
pub struct GemmLibrary {
    kernels: LoadedKernels<GemmFn>,
}

impl std::fmt::Debug for GemmLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kernels.debug("GemmLibrary", f)
    }
}

impl GemmLibrary {
    /// Compiles the GEMV and GEMM kernels of `formats` for `target` ([`emit_kernels_object`]), links
    /// them into a shared library in a temporary folder with `$CC` (default `cc`) and loads the GEMM
    /// kernels (the file is removed once loaded). Errors if a format is not supported, the host CPU
    /// cannot run `target`'s code, or linking or loading fails.
    pub fn build(formats: &[QuantType], target: CpuTarget) -> Result<Self, Error> {
        // SAFETY: the symbols are functions of type `GemmFn` (built by `codegen::build_gemm`).
        let kernels = unsafe { LoadedKernels::build(formats, target, Kernels::Both, gemm_symbol) }?;
        Ok(GemmLibrary { kernels })
    }

    /// The target the kernels were compiled for.
    pub fn target(&self) -> CpuTarget {
        self.kernels.target()
    }

    /// The loaded kernel of `spec`, to call through the C ABI directly (strided `xp` and `y`). Errors if
    /// the library was not built with it.
    pub fn kernel(&self, spec: &KernelSpec) -> Result<GemmFn, Error> {
        self.kernels.get(spec)
    }

    /// `x` (`m` rows of K) with every row in the kernel layout of `w`'s format for this library's
    /// target ([`gemv::layout::prepare_x`]).
    pub fn prepare_x(&self, w: &QuantMatrix<'_>, x: &[f32]) -> Vec<f32> {
        let k = w.cols();
        let mut xp = vec![0f32; x.len()];
        if k > 0 {
            let lanes = gemv::codegen::lanes(self.target());
            for (xr, or) in x.chunks_exact(k).zip(xp.chunks_exact_mut(k)) {
                gemv::layout::prepare_x(&w.spec().elem, lanes, xr, or);
            }
        }
        xp
    }

    /// `Y = X W^T` for `x` holding `m` rows of K (row-major) and `y` `m` rows of N. Runs on `pool`
    /// (weight rows split into contiguous ranges of whole panels, several per thread, each handed to
    /// one kernel call) or, with `None`, on the calling thread in one call. Errors if the library lacks
    /// the format's kernel or the lengths do not match. The result does not depend on the pool.
    pub fn gemm(
        &self,
        w: &QuantMatrix<'_>,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), Error> {
        if x.len() != m * w.cols() {
            return Err(Error::Shape(format!(
                "W is [{}, {}] but x has {} elements for m = {m}",
                w.rows(),
                w.cols(),
                x.len()
            )));
        }
        let xp = self.prepare_x(w, x);
        self.gemm_prepared(w, &xp, m, y, pool)
    }

    /// Like [`GemmLibrary::gemm`] with `xp` already in the kernel layout ([`GemmLibrary::prepare_x`]).
    pub fn gemm_prepared(
        &self,
        w: &QuantMatrix<'_>,
        xp: &[f32],
        m: usize,
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), Error> {
        let (n, k) = (w.rows(), w.cols());
        if xp.len() != m * k || y.len() != m * n {
            return Err(Error::Shape(format!(
                "W is [{n}, {k}] but xp has {} elements and y {} for m = {m}",
                xp.len(),
                y.len()
            )));
        }
        let f = self.kernel(w.spec())?;
        let yaddr = y.as_mut_ptr() as usize;
        let call = |r0: usize, r1: usize| {
            // SAFETY: the blob has the layout's length (checked in `QuantMatrix::new`), `xp` holds m
            // rows of K, `y` m rows of N of which this call writes the columns [r0, r1) only (the
            // ranges of concurrent calls are disjoint).
            unsafe { self.call(f, w, xp, k, (yaddr as *mut f32).add(r0), n, m, r0..r1) }
        };
        match pool {
            None => call(0, n),
            Some(pool) => {
                let threads = pool.current_num_threads().max(1);
                let pr = codegen::panel_rows(self.target());
                let chunk = n.div_ceil(4 * threads).div_ceil(pr).max(1) * pr;
                pool.install(|| {
                    (0..n.div_ceil(chunk))
                        .into_par_iter()
                        .for_each(|c| call(c * chunk, ((c + 1) * chunk).min(n)))
                });
            }
        }
        Ok(())
    }

    /// The outputs of the weight rows `rows` only, for `m` activation rows: `y` holds `m` rows of
    /// `rows.len()` (`y[i * rows.len() + (n - rows.start)]`), computed on the calling thread with `xp` in
    /// the kernel layout. The values are bit-identical to those of [`GemmLibrary::gemm`] for the same
    /// rows. Errors if the range is out of bounds or the lengths do not match.
    pub fn gemm_rows_prepared(
        &self,
        w: &QuantMatrix<'_>,
        xp: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        y: &mut [f32],
    ) -> Result<(), Error> {
        let (n, k) = (w.rows(), w.cols());
        if xp.len() != m * k || rows.start > rows.end || rows.end > n || y.len() != m * rows.len() {
            return Err(Error::Shape(format!(
                "W is [{n}, {k}] but xp has {} elements, the rows are {rows:?} and y has {} for m = {m}",
                xp.len(),
                y.len()
            )));
        }
        let f = self.kernel(w.spec())?;
        let ldy = rows.len();
        // SAFETY: as in `gemm_prepared`; `y` holds m rows of `rows.len()`.
        unsafe { self.call(f, w, xp, k, y.as_mut_ptr(), ldy, m, rows) };
        Ok(())
    }

    /// # Safety
    /// `xp` holds `m` rows of `k`, `y` points at `m` rows of stride `ldy` with room for `rows.len()`
    /// outputs each, and `rows` lies within `w`'s rows.
    #[allow(clippy::too_many_arguments)]
    unsafe fn call(
        &self,
        f: GemmFn,
        w: &QuantMatrix<'_>,
        xp: &[f32],
        k: usize,
        y: *mut f32,
        ldy: usize,
        m: usize,
        rows: std::ops::Range<usize>,
    ) {
        let codes = w.blob().as_ptr();
        // SAFETY: per the caller's contract and the kernel's documented ABI.
        unsafe {
            f(
                codes,
                codes.add(w.sections().scales),
                xp.as_ptr(),
                k as i64,
                y,
                ldy as i64,
                m as i64,
                k as i64,
                rows.start as i64,
                rows.end as i64,
                w.post(),
            )
        }
    }
}

/// The reference result of `Y = X W^T` (`m x n`, row-major): `W` decoded with `qc_quant::dequantize`,
/// each product and each sum over K (in K order) in f64. `x` holds `m` rows of `k`.
pub fn reference_gemm(
    fmt: &QuantType,
    n: usize,
    k: usize,
    blob: &[u8],
    x: &[f32],
    m: usize,
) -> Result<Vec<f64>, Error> {
    let q = qc_quant::blob::from_blob(blob, fmt, &[n, k], "W")?;
    let w = qc_quant::dequantize(&q)?;
    let mut y = Vec::with_capacity(m * n);
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let row = &w[j * k..(j + 1) * k];
            y.push(
                row.iter()
                    .zip(xr)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>(),
            );
        }
    }
    Ok(y)
}

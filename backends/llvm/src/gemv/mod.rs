//! Quantized GEMV kernels (`M = 1`): `y[N] = W[N, K] x[K]`, with `W` in a qc quantized format read
//! straight from its `qc_quant::blob` bytes, `x` and `y` in f32.
//!
//! The kernels are generated as LLVM IR with inkwell ([`codegen`]), one per decoding
//! ([`KernelSpec`]), optimized with `default<O3>` and compiled for a [`CpuTarget`] into one
//! position-independent object ([`emit_gemv_object`]). [`GemvLibrary::build`] links that object into a
//! shared library with the system C compiler (`cc`, or `$CC`) and loads it; [`GemvLibrary::gemv`] runs a
//! kernel over row ranges on a rayon thread pool.
//!
//! # Formats
//! Every format [`KernelSpec::from_quant_type`] accepts, which includes these named formats (the ones
//! listed by [`SUPPORTED_NAMED_FORMATS`], each tested end to end): int8 (per tensor, per channel,
//! g128), int4 (per channel, g32, g128), nvfp4 (ModelOpt, torchao and compressed-tensors variants),
//! mxfp4 (all scale rules), mxfp6 (e2m3 and e3m2), mxfp8 (e4m3 and e5m2), mxint8, nvint4, fp8 e4m3 /
//! e5m2 (per tensor), fp8 e4m3 per channel, fp6 (per tensor).
//!
//! # The C ABI of a kernel
//! ```c
//! void qc_gemv_<spec>(const uint8_t *codes, const uint8_t *scales, const float *xp, float *y,
//!                     int64_t k, int64_t row_begin, int64_t row_end, float post);
//! ```
//! For every row `n` in `[row_begin, row_end)` it writes `y[n - row_begin] = post * s_n * sum_k
//! w_k(n, k) xp'(k)`, where `codes` and `scales` point at the codes and scales sections of the blob
//! (see [`layout`]), `xp` is `x` in the kernel layout of [`layout::prepare_x`], `w_k` are kernel values
//! (codec value / elem_factor, times the group's kernel scale), `s_n` the row's scale (per-channel
//! formats, else 1) and `post` the factor of [`KernelSpec::post_scale`]. Nothing is written when
//! `row_end <= row_begin`. `y` must not overlap the inputs. The accumulation order (documented in
//! [`codegen`]) depends only on the format, K and the target, so results are bit-identical for every
//! row range and thread count. The kernel reads exactly the bytes of its rows (codes and scales) and
//! `xp[0..k]` (it also issues prefetch hints for the rows after `row_end`, which never fault); it uses
//! the instructions of its target unconditionally.
//!
//! # Numerics
//! Products are accumulated in f32 (FMA), so a row's result differs from an exact sum by the rounding
//! of a K-term f32 dot product. Against the f64 reference of [`reference_gemv`], the tests measure at
//! most 1e-7 of the norm of the rows' sums of |products| and at most 4e-6 of the norm of `y` (rows
//! with heavy cancellation make the second figure the larger one); they require 1e-5 of the norm of
//! `y`. A NaN code or NaN scale makes its
//! row NaN, as it makes the reference's sum NaN (for finite `x`). Per-element power-of-two factors
//! ([`KernelSpec::elem_factor`], the ue4m3 factor 2^8) are applied to the row's sum, so sums within 2^8
//! (2^14 for e2m3) of the f32 range limits may overflow or lose subnormal bits where the reference does
//! not.

pub mod codegen;
pub mod layout;
pub mod spec;

use std::path::Path;
use std::process::Command;

use inkwell::context::Context;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;
use qc_ir::quant::{named_format, QuantType, ScaleType, TensorScale};
use rayon::prelude::*;

use crate::{target_machine, CpuTarget, Error};
pub use layout::Sections;
pub use spec::{ElemKind, KernelSpec, ScaleKind, ScaleStore};

/// The named formats (`qc formats`) that the GEMV kernels handle, each covered by the crate's tests.
pub const SUPPORTED_NAMED_FORMATS: &[&str] = &[
    "int8",
    "int8_channel",
    "int8_g128",
    "int4_channel",
    "int4_g32",
    "int4_g128",
    "nvfp4",
    "nvfp4_torchao",
    "nvfp4_ct",
    "nvint4",
    "mxfp4",
    "mxfp4_rceil",
    "mxfp4_ceil",
    "mxfp6",
    "mxfp6_e3m2",
    "mxfp8",
    "mxfp8_e5m2",
    "mxint8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_e4m3_channel",
    "fp6_e2m3",
    "fp6_e3m2",
];

/// The named format `name` from `qc_ir`'s table.
pub fn named(name: &str) -> Result<&'static QuantType, Error> {
    named_format(name)
        .map(|f| &f.ty)
        .ok_or_else(|| Error::Unsupported(format!("no named format `{name}`")))
}

/// The function type of every kernel (see the module documentation).
pub type GemvFn =
    unsafe extern "C" fn(*const u8, *const u8, *const f32, *mut f32, i64, i64, i64, f32);

/// The distinct kernel specs of `formats`, in first-seen order. Errors on the first unsupported one.
pub fn kernel_specs(formats: &[QuantType]) -> Result<Vec<KernelSpec>, Error> {
    let mut specs: Vec<KernelSpec> = Vec::new();
    for f in formats {
        let s = KernelSpec::from_quant_type(f)?;
        if !specs.iter().any(|t| t.symbol == s.symbol) {
            specs.push(s);
        }
    }
    Ok(specs)
}

/// Which kernels of each spec an object holds ([`emit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernels {
    /// The GEMV kernels only (module `qc_gemv`).
    Gemv,
    /// The GEMM kernels ([`crate::gemm`]) only (module `qc_gemm`).
    Gemm,
    /// Per spec, the GEMV kernel then the GEMM kernel (module `qc_kernels`).
    Both,
}

impl Kernels {
    /// The name of the LLVM module (also the stem of the files [`link_and_load`] writes).
    pub(crate) fn module_name(self) -> &'static str {
        match self {
            Kernels::Gemv => "qc_gemv",
            Kernels::Gemm => "qc_gemm",
            Kernels::Both => "qc_kernels",
        }
    }
}

/// Builds the `kernels` of `specs` for `target` into one module, verifies it, optimizes it with
/// `default<O3>` and writes it as `file_type` (an object or assembly text).
pub(crate) fn emit(
    specs: &[KernelSpec],
    target: CpuTarget,
    file_type: FileType,
    kernels: Kernels,
) -> Result<Vec<u8>, Error> {
    let machine = target_machine(target)?;
    let context = Context::create();
    let module = context.create_module(kernels.module_name());
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    for s in specs {
        if kernels != Kernels::Gemm {
            codegen::build_gemv(&context, &module, s, target)?;
        }
        if kernels != Kernels::Gemv {
            crate::gemm::codegen::build_gemm(&context, &module, s, target)?;
        }
    }
    module.verify().map_err(|e| Error::Verify(e.to_string()))?;
    module
        .run_passes("default<O3>", &machine, PassBuilderOptions::create())
        .map_err(|e| Error::Passes(e.to_string()))?;
    let buffer = machine
        .write_to_memory_buffer(&module, file_type)
        .map_err(|e| Error::Codegen(e.to_string()))?;
    Ok(buffer.as_slice().to_vec())
}

/// [`emit`] as assembly text.
pub(crate) fn emit_assembly(
    specs: &[KernelSpec],
    target: CpuTarget,
    kernels: Kernels,
) -> Result<String, Error> {
    let bytes = emit(specs, target, FileType::Assembly, kernels)?;
    String::from_utf8(bytes).map_err(|e| Error::Codegen(format!("assembly is not UTF-8: {e}")))
}

/// Compiles the kernels of `formats` (one per distinct [`KernelSpec`]) for `target` into a relocatable,
/// position-independent x86-64 ELF object. The object defines one global function per spec, named
/// [`KernelSpec::symbol`], and references no other symbol. The bytes are a deterministic function of
/// the specs (in order) and the target.
pub fn emit_gemv_object(formats: &[QuantType], target: CpuTarget) -> Result<Vec<u8>, Error> {
    emit(
        &kernel_specs(formats)?,
        target,
        FileType::Object,
        Kernels::Gemv,
    )
}

/// Like [`emit_gemv_object`], but returns the assembly text.
pub fn emit_gemv_assembly(formats: &[QuantType], target: CpuTarget) -> Result<String, Error> {
    emit_assembly(&kernel_specs(formats)?, target, Kernels::Gemv)
}

/// A weight matrix `W[n, k]` in a quantized format, borrowed as its blob bytes.
#[derive(Clone, Debug)]
pub struct QuantMatrix<'a> {
    spec: KernelSpec,
    n: usize,
    k: usize,
    blob: &'a [u8],
    sections: Sections,
    post: f32,
}

fn read_scalar_scale(st: ScaleType, b: &[u8]) -> f32 {
    match st {
        ScaleType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        ScaleType::F16 => qc_quant::codec::f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])),
        ScaleType::BF16 => qc_quant::codec::bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])),
        ScaleType::E8M0 | ScaleType::UE4M3 => qc_quant::Codec::new(match st {
            ScaleType::E8M0 => qc_ir::quant::Encoding::E8M0,
            _ => qc_ir::quant::Encoding::UE4M3,
        })
        .expect("scale codecs exist")
        .decode(b[0] as u32),
    }
}

impl<'a> QuantMatrix<'a> {
    /// Wraps `blob`, the `qc_quant::blob` bytes of a tensor of shape `[n, k]` in `fmt`. Errors if the
    /// format has no kernel, the shape does not fit it, or the blob's length is not the layout's.
    pub fn new(fmt: &QuantType, n: usize, k: usize, blob: &'a [u8]) -> Result<Self, Error> {
        let spec = KernelSpec::from_quant_type(fmt)?;
        let sections = layout::sections(
            &spec,
            fmt.scale.bits() as usize / 8,
            fmt.tensor_scale != TensorScale::None,
            n,
            k,
        )?;
        if blob.len() != sections.len {
            return Err(Error::Shape(format!(
                "the blob holds {} bytes but {fmt} of shape [{n}, {k}] needs {}",
                blob.len(),
                sections.len
            )));
        }
        let tensor = match (spec.scale, sections.tensor_scale) {
            (ScaleKind::Tensor, _) => Some(read_scalar_scale(fmt.scale, &blob[sections.scales..])),
            (_, Some(off)) => Some(read_scalar_scale(ScaleType::F32, &blob[off..])),
            _ => None,
        };
        let post = spec.post_scale(tensor);
        Ok(QuantMatrix {
            spec,
            n,
            k,
            blob,
            sections,
            post,
        })
    }

    /// Rows (N).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Columns (K).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// The kernel spec of the format.
    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// The blob's sections.
    pub fn sections(&self) -> &Sections {
        &self.sections
    }

    /// The blob bytes.
    pub fn blob(&self) -> &'a [u8] {
        self.blob
    }

    /// The kernels' `post` argument for this matrix ([`KernelSpec::post_scale`] of its tensor scale).
    pub fn post(&self) -> f32 {
        self.post
    }

    /// Bytes the kernels stream per call: codes and the scales section (the weight bytes that GB/s
    /// figures count).
    pub fn weight_bytes(&self) -> usize {
        self.n * self.sections.row_bytes
            + match self.spec.scale {
                ScaleKind::Tensor => 0,
                ScaleKind::Row(s) => self.n * s.bytes(),
                ScaleKind::Group { store, .. } => self.sections.n_scales * store.bytes(),
            }
    }
}

/// Compiled GEMV kernels for one target, loaded into the process.
pub struct GemvLibrary {
    kernels: LoadedKernels<GemvFn>,
}

impl std::fmt::Debug for GemvLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kernels.debug("GemvLibrary", f)
    }
}

/// The kernels of one C type `F` (one per spec, named by `symbol`) of a shared library built by
/// [`LoadedKernels::build`]: what [`GemvLibrary`] and [`crate::gemm::GemmLibrary`] hold.
pub(crate) struct LoadedKernels<F> {
    target: CpuTarget,
    symbol: fn(&KernelSpec) -> String,
    kernels: Vec<(KernelSpec, F)>,
    _lib: libloading::Library,
}

impl<F: Copy> LoadedKernels<F> {
    /// Compiles the `kinds` kernels of `formats` for `target` ([`emit`]), links them into a shared
    /// library in a temporary folder ([`link_and_load`]) and loads the function `symbol(spec)` of every
    /// spec. Errors if a format is not supported, the host CPU cannot run `target`'s code, or linking or
    /// loading fails.
    ///
    /// # Safety
    /// `symbol(spec)` must name a function of type `F` in the object of `kinds`.
    pub(crate) unsafe fn build(
        formats: &[QuantType],
        target: CpuTarget,
        kinds: Kernels,
        symbol: fn(&KernelSpec) -> String,
    ) -> Result<Self, Error> {
        if !target.host_supports() {
            return Err(Error::HostUnsupported(target));
        }
        let specs = kernel_specs(formats)?;
        let obj = emit(&specs, target, FileType::Object, kinds)?;
        let lib = link_and_load(&obj, kinds.module_name())?;
        let mut kernels = Vec::with_capacity(specs.len());
        for s in specs {
            let sym = symbol(&s);
            // SAFETY: the caller guarantees that the symbol is a function of type `F`.
            let f: F = unsafe {
                *lib.get::<F>(sym.as_bytes())
                    .map_err(|e| Error::Load(format!("{sym}: {e}")))?
            };
            kernels.push((s, f));
        }
        Ok(LoadedKernels {
            target,
            symbol,
            kernels,
            _lib: lib,
        })
    }

    /// The target the kernels were compiled for.
    pub(crate) fn target(&self) -> CpuTarget {
        self.target
    }

    /// The loaded kernel of `spec`. Errors if the library was not built with it.
    pub(crate) fn get(&self, spec: &KernelSpec) -> Result<F, Error> {
        self.kernels
            .iter()
            .find(|(s, _)| s.symbol == spec.symbol)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "this library was not built with kernel {}",
                    (self.symbol)(spec)
                ))
            })
    }

    /// Writes `name { target, kernels: [symbols] }`.
    pub(crate) fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("target", &self.target)
            .field(
                "kernels",
                &self
                    .kernels
                    .iter()
                    .map(|(s, _)| (self.symbol)(s))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

pub(crate) fn link_shared(obj: &Path, lib: &Path) -> Result<(), Error> {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let out = Command::new(&cc)
        .arg("-shared")
        .arg("-nostdlib")
        .arg("-Wl,-z,noexecstack")
        .arg("-o")
        .arg(lib)
        .arg(obj)
        .output()
        .map_err(|e| Error::Link(format!("cannot run {}: {e}", cc.to_string_lossy())))?;
    if !out.status.success() {
        return Err(Error::Link(format!(
            "{} -shared failed ({}): {}",
            cc.to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Links the object `obj` into a shared library in a temporary folder (files `<stem>.o` and
/// `lib<stem>.so`, removed once loaded) with [`link_shared`] and loads it.
pub(crate) fn link_and_load(obj: &[u8], stem: &str) -> Result<libloading::Library, Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::Link(format!("temporary folder: {e}")))?;
    let obj_path = dir.path().join(format!("{stem}.o"));
    let lib_path = dir.path().join(format!("lib{stem}.so"));
    std::fs::write(&obj_path, obj).map_err(|e| Error::Link(format!("writing the object: {e}")))?;
    link_shared(&obj_path, &lib_path)?;
    // SAFETY: the library is the one just linked from our object: it has no initializers and its
    // functions follow the documented C ABI.
    unsafe { libloading::Library::new(&lib_path) }.map_err(|e| Error::Load(e.to_string()))
}

impl GemvLibrary {
    /// Compiles the kernels of `formats` for `target` ([`emit_gemv_object`]), links them into a shared
    /// library in a temporary folder with `$CC` (default `cc`) and loads it (the file is removed once
    /// loaded). Errors if a format is not supported, the host CPU cannot run `target`'s code, or
    /// linking or loading fails.
    pub fn build(formats: &[QuantType], target: CpuTarget) -> Result<Self, Error> {
        // SAFETY: the symbols are functions of type `GemvFn` (built by `codegen::build_gemv`).
        let kernels =
            unsafe { LoadedKernels::build(formats, target, Kernels::Gemv, |s| s.symbol.clone()) }?;
        Ok(GemvLibrary { kernels })
    }

    /// The target the kernels were compiled for.
    pub fn target(&self) -> CpuTarget {
        self.kernels.target()
    }

    /// `x` in the kernel layout of `w`'s format for this library's target ([`layout::prepare_x`]).
    pub fn prepare_x(&self, w: &QuantMatrix<'_>, x: &[f32]) -> Vec<f32> {
        let mut xp = vec![0f32; x.len()];
        layout::prepare_x(&w.spec.elem, codegen::lanes(self.target()), x, &mut xp);
        xp
    }

    /// `y = W x`. Runs on `pool` (rows split into contiguous ranges, several per thread, each handed to
    /// one kernel call) or, with `None`, on the calling thread in one call. Errors if the library lacks
    /// the format's kernel or the lengths do not match (`x`: K, `y`: N). The result does not depend on
    /// the pool (see the module documentation).
    pub fn gemv(
        &self,
        w: &QuantMatrix<'_>,
        x: &[f32],
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), Error> {
        if x.len() != w.k || y.len() != w.n {
            return Err(Error::Shape(format!(
                "W is [{}, {}] but x has {} elements and y {}",
                w.n,
                w.k,
                x.len(),
                y.len()
            )));
        }
        let xp = self.prepare_x(w, x);
        self.gemv_prepared(w, &xp, y, pool)
    }

    /// Like [`GemvLibrary::gemv`] with `xp` already in the kernel layout ([`GemvLibrary::prepare_x`]),
    /// for callers that multiply several matrices by one vector.
    pub fn gemv_prepared(
        &self,
        w: &QuantMatrix<'_>,
        xp: &[f32],
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), Error> {
        if xp.len() != w.k || y.len() != w.n {
            return Err(Error::Shape(format!(
                "W is [{}, {}] but xp has {} elements and y {}",
                w.n,
                w.k,
                xp.len(),
                y.len()
            )));
        }
        self.run(w, xp, 0, y, pool)
    }

    /// Rows `rows` of `W x` into `y` (`y[i]` is row `rows.start + i`), on the calling thread, with `xp`
    /// in the kernel layout. The values are bit-identical to those of [`GemvLibrary::gemv`] for the
    /// same rows. Errors if the range is out of bounds or the lengths do not match.
    pub fn gemv_rows_prepared(
        &self,
        w: &QuantMatrix<'_>,
        xp: &[f32],
        rows: std::ops::Range<usize>,
        y: &mut [f32],
    ) -> Result<(), Error> {
        if xp.len() != w.k || rows.start > rows.end || rows.end > w.n || y.len() != rows.len() {
            return Err(Error::Shape(format!(
                "W is [{}, {}] but xp has {} elements, the rows are {rows:?} and y has {}",
                w.n,
                w.k,
                xp.len(),
                y.len()
            )));
        }
        self.run(w, xp, rows.start, y, None)
    }

    fn run(
        &self,
        w: &QuantMatrix<'_>,
        xp: &[f32],
        first_row: usize,
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Result<(), Error> {
        let f = self.kernels.get(&w.spec)?;
        // Addresses, so that the closure can be shared by the pool's threads.
        let codes = w.blob.as_ptr() as usize;
        let scales = codes + w.sections.scales;
        let call = |row0: usize, ys: &mut [f32]| {
            // SAFETY: the blob has the layout's length (checked in `QuantMatrix::new`), `xp` has K
            // elements, `ys` holds exactly the rows [row0, row0 + ys.len()), and the kernel reads only
            // those rows' codes and scales.
            unsafe {
                f(
                    codes as *const u8,
                    scales as *const u8,
                    xp.as_ptr(),
                    ys.as_mut_ptr(),
                    w.k as i64,
                    row0 as i64,
                    (row0 + ys.len()) as i64,
                    w.post,
                )
            }
        };
        match pool {
            None => call(first_row, y),
            Some(pool) => {
                let threads = pool.current_num_threads().max(1);
                // Up to 4 ranges per thread, taken by work stealing, so that a thread that the OS
                // deschedules does not hold the others up; at least 256 KiB of weights per range.
                let min_rows = (256 << 10) / w.sections.row_bytes.max(1);
                let chunk = w.n.div_ceil(4 * threads).max(min_rows).max(1);
                pool.install(|| {
                    y.par_chunks_mut(chunk)
                        .enumerate()
                        .for_each(|(i, ys)| call(first_row + i * chunk, ys))
                });
            }
        }
        Ok(())
    }
}

/// The reference result of `W x`: `W` decoded with `qc_quant::dequantize` (from the blob with
/// `qc_quant::blob::from_blob`), each product and the sum over K (in K order) in f64.
pub fn reference_gemv(
    fmt: &QuantType,
    n: usize,
    k: usize,
    blob: &[u8],
    x: &[f32],
) -> Result<Vec<f64>, Error> {
    let q = qc_quant::blob::from_blob(blob, fmt, &[n, k], "W")?;
    let w = qc_quant::dequantize(&q)?;
    Ok(w.chunks(k.max(1))
        .take(n)
        .map(|row| {
            row.iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
        })
        .collect())
}

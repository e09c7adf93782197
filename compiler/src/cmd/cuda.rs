//! `qc compile --target sm_80|sm_89|sm_90a|sm_100a|sm_120a` (`sm_90` means `sm_90a`, `sm_100` means
//! `sm_100a`, `sm_120` means `sm_120a`): PTX for the whole model, checked by ptxas, and a launch plan.
//! Needs qc's cargo feature `cpu` (the route goes through MLIR and LLVM 22's tools).
//!
//! # Route
//! 1. The compiled module is specialized to static shapes (`--shape`) and exported to upstream MLIR
//!    (`qc_backend_hlo::upstream::export_module_with`), as for the CPU targets, with the large float
//!    and integer constants as trailing function arguments (`ExportOptions::constant_args`).
//! 2. LLVM 22's `mlir-opt` runs [`to_gpu`]: the `linalg` ops' unit dimensions dropped; bufferization;
//!    each `linalg` op tiled with `scf.forall` by the transform-dialect script of [`tiling_script`]
//!    (run by `--transform-interpreter` from a temporary file): by 1 along its parallel dimensions
//!    but the innermost, and along the innermost one by [`THREADS`] when it is longer, else not (one
//!    tile of the whole extent); the tiled ops lowered to `scf.parallel` element loops inside the
//!    tile loops; the loops mapped to the GPU innermost dimension first and converted to
//!    `gpu.launch`: the tile loop to the grid (its fourth dimension and those after it become a loop
//!    in the thread: with four parallel dimensions, the tiles along the innermost), the element loop to
//!    the block's x threads (one per element, consecutive threads on consecutive elements), the
//!    threads past the end of a partial tile doing nothing (`convert-parallel-loops-to-gpu` guards
//!    the body); and each launch body outlined into its own `gpu.module`. The result is the *host
//!    program* (`host.mlir`): function `@main` on memrefs, whose body is a straight-line sequence of
//!    `memref.alloc`, `memref.get_global` (weights, whose bytes are the module's `memref.global`
//!    constants), view ops, `memref.copy` and `gpu.launch_func`.
//! 3. `mlir-opt` lowers that program with [`to_ptx`] (`gpu-lower-to-nvvm-pipeline` with
//!    `cubin-format=isa`, LLVM's NVPTX back end at `-O3` for the chip), linking libdevice from the CUDA
//!    toolkit that holds ptxas (its `nvvm/libdevice/libdevice.10.bc`; `CUDA_ROOT` otherwise). The PTX
//!    of each kernel module is taken from the `gpu.binary` ops.
//! 4. Every PTX is assembled by ptxas (`qc_backend_ptx::ptxas`, found through `QC_PTXAS` or the
//!    python `nvidia` package or `PATH`) for exactly the target with warnings as errors; a rejection is
//!    an internal error (exit code 1).
//!
//! Quantized products by 4-bit weights and per-tensor activation quantizations are not lowered by
//! MLIR: the export leaves them as calls (`ExportOptions::kernel_calls`, `quantize_calls`) that the
//! plan resolves to launches of qc's kernels (`kernel_calls` below): a product with at least
//! `mma4::MIN_ROWS` (16) activation rows runs the tensor-core GEMM of `qc_backend_ptx::mma4`, one
//! with fewer the GEMV of `qc_backend_ptx::gemv4`, reading the weight's blob as it is. A product
//! whose activations are quantized per tensor to int8, or from sm_89 to FP8, runs the 8-bit
//! tensor-core GEMM of `qc_backend_ptx::mma8`, which quantizes them itself
//! (`ExportOptions::act_quant_calls`): for int8 / FP8 weights (otherwise decoded by MLIR) and for
//! 4-bit weights with scale groups of 16 or more (int4 with groups of 32 or more only with int8); on
//! sm_90a, products of 64 rows and more run the same product with Hopper's warpgroup MMA
//! (`qc_backend_ptx::wgmma8`). W4A4 products (NVFP4 x NVFP4, MXFP4 x MXFP4) run Blackwell's
//! block-scaled FP4 MMA, quantizing the activations themselves: on sm_100a from 64 rows
//! `tcgen05.mma` with tensor memory (`qc_backend_ptx::tcgen05`), on sm_120a from 16 rows the
//! block-scaled `mma.sync` (`qc_backend_ptx::mmafp4`); on sm_100a the other products by 4-bit
//! weights with byte group scales (NVFP4, MXFP4, NVINT4) of 64 rows and more run `tcgen05`'s bf16
//! (`kind::f16`) GEMM, and those of FP8 weights per tensor or row by FP8 activations its
//! `kind::f8f6f4` GEMM. f32 products run the 3xTF32 tensor-core GEMM of `qc_backend_ptx::mmaf`
//! (`ExportOptions::float_matmul_calls`), and f32 softmax, log-softmax and layer normalization over
//! the last axis the row kernels of `qc_backend_ptx::rows`, a warp per row with shuffle reductions
//! (`ExportOptions::row_kernel_calls`).
//!
//! # Artifact
//! - `<module>.ptx`, one per kernel module the plan launches (`main_kernel.ptx`, `main_kernel_0.ptx`,
//!   ...), each with one `.entry main_kernel`;
//! - `host.mlir`: the host program of step 2 (with the kernels' `gpu.module`s and the small constants);
//! - [`PLAN`] (`launch_plan.json`, `qc_runtime::cuda::plan`): the host program resolved to device
//!   buffers, copies and launches whose parameters are buffer addresses and immediates, so that the
//!   executor needs no MLIR (made by cmd/cuda_plan.rs, which documents the resolution);
//! - [`WEIGHTS`] (`weights.bin`): the bytes of the constants the plan's buffers start from (the
//!   constant arguments and the host program's `memref.global`s), each at a multiple of 64 bytes.
//!
//! The manifest's `entry` is `main` (the host program's function). Compiling twice gives byte-identical
//! artifacts. `qc run ARTIFACT --device cuda` and `qc bench` run them (cmd/cuda_run.rs).
//!
//! `QC_CUDA_DUMP=DIR` writes the exported module, as mlir-opt receives it, to `DIR/model.export.mlir`
//! and [`tiling_script`] to `DIR/tiling.mlir` (for developers; compiler/tests/ptx.rs runs the export
//! on the CPU through the tiled loops).
//!
//! Limitations: MLIR's kernels are simple (each thread computes one output element of a loop nest;
//! reductions are sequential loops in the thread; no shared memory or tensor cores). Blocks are
//! one-dimensional, so a loop nest whose innermost parallel extent is small gets small blocks (the
//! tiny BERT's 7 and 8 threads). An op that [`tiling_script`] leaves untiled (a reduction dimension
//! before a parallel one, or a rank above [`MAX_TILED_RANK`]) runs one thread per block. FP8 and
//! FP6 codes and ue4m3 scales that MLIR's kernels read are exported as integer codes decoded
//! through value tables (`ExportOptions::decode_tables`): LLVM 22's NVPTX lowering cannot convert
//! MLIR's FP8 types.

use std::path::{Path, PathBuf};

use qc_backend_hlo::upstream::KernelOp;
use qc_backend_ptx::fp4::Fp4;
use qc_backend_ptx::fquant::{FakeQuantBlock, FakeQuantPt};
use qc_backend_ptx::gemv4::{self, Gemv4};
use qc_backend_ptx::mma4;
use qc_backend_ptx::mma8::{self, Mma8};
use qc_backend_ptx::rows::{self, RowKernel};
use qc_backend_ptx::tcgen05::Tc05;
use qc_backend_ptx::GpuTarget;
use qc_backend_ptx::{mmafp4, tcgen05, wgmma8};
use qc_ir::Module;
use qc_runtime::artifact::{self, Artifact};

use crate::cmd::cuda_plan::{FquantCall, GpuCall, ProductKernel, RowCall, SgemmCall};
pub use crate::cmd::cuda_plan::{PLAN, WEIGHTS};
use crate::cmd::target::Target;
use crate::output::{input_error, Failure};

/// The host program part.
pub const HOST: &str = "host.mlir";
/// The host program's function (the manifest's entry).
pub const ENTRY: &str = "main";

/// Threads per block along a loop nest's innermost parallel dimension (module documentation, step 2).
pub const THREADS: u32 = 256;

/// The highest rank of the `linalg` ops that [`tiling_script`] tiles.
pub const MAX_TILED_RANK: usize = 8;

/// The entry of [`tiling_script`] that tiles the `linalg` ops.
const TILE: &str = "qc_tile";
/// The entry of [`tiling_script`] that canonicalizes the bodies of the tile loops.
const CLEAN: &str = "qc_clean_tiles";

/// The mlir-opt pipeline from the upstream export to bufferized, tiled `scf.parallel` loops (the first
/// part of [`to_gpu`]); `script` is the path of a file holding [`tiling_script`]. Unit dimensions
/// are dropped from the `linalg` ops first (so that the last parallel dimension is not one of them);
/// after bufferization, [`TILE`] tiles the ops into `scf.forall` tile loops, the tiled ops become
/// element loops, and [`CLEAN`] canonicalizes the tile loops' bodies only, which drops the element
/// loops' unit dimensions (a mapped loop's fourth dimension and those after it become loops in the
/// thread) while the tile loops keep theirs (`canonicalize` on a whole function would fold away the
/// tile loop of an op that is one tile, whose element loop would then be mapped to the grid).
pub fn to_loops(script: &Path) -> Vec<String> {
    vec![
        "--convert-elementwise-to-linalg".into(),
        "--linalg-fold-unit-extent-dims".into(),
        "--one-shot-bufferize=bufferize-function-boundaries".into(),
        format!(
            "--transform-preload-library=transform-library-paths={}",
            script.display()
        ),
        format!("--transform-interpreter=entry-point={TILE}"),
        "--convert-linalg-to-parallel-loops".into(),
        format!("--transform-interpreter=entry-point={CLEAN}"),
        "--scf-forall-to-parallel".into(),
    ]
}

/// The second part of [`to_gpu`]: each tiled loop nest mapped to the grid (the tile loop) and a
/// thread block (the element loop), innermost dimension first, converted to `gpu.launch` and
/// outlined.
pub const MAP_TO_GPU: &[&str] = &[
    "--gpu-map-parallel-loops=mapping-policy=innermost-first",
    "--convert-parallel-loops-to-gpu",
    "--canonicalize",
    "--gpu-kernel-outlining",
];

/// The mlir-opt pipeline from the upstream export to the host program with outlined kernels
/// ([`to_loops`], then [`MAP_TO_GPU`]).
pub fn to_gpu(script: &Path) -> Vec<String> {
    let mut args = to_loops(script);
    args.extend(MAP_TO_GPU.iter().map(|s| s.to_string()));
    args
}

/// The transform-dialect library that [`to_loops`] runs, with entries [`TILE`] and [`CLEAN`].
///
/// [`TILE`] tiles with `scf.forall` every `linalg` op of rank 1 to [`MAX_TILED_RANK`] whose
/// iteration space is parallel dimensions followed by reduction dimensions (elementwise and
/// broadcasting ops, reductions over trailing axes, matrix products): by 1 along each parallel
/// dimension but the last, not along the reduction dimensions, and along the last parallel
/// dimension, of static extent `e`, by [`THREADS`] when `e` is larger (the last tile partial when
/// `e` is not a multiple), else not at all (one tile of `e`; by `e` when it is the only parallel
/// dimension, so that there is a tile loop). Bufferized and lowered, the `scf.forall` is the tile
/// loop (the grid) and the tiled op's loop the element loop (the block). Other ops stay untiled
/// (one thread per block).
pub fn tiling_script() -> String {
    let list = |r: std::ops::Range<usize>| r.map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let mut pairs = Vec::new();
    let mut text = String::from("module attributes {transform.with_named_sequence} {\n");
    for rank in 1..=MAX_TILED_RANK {
        for reductions in 0..rank {
            let last = rank - reductions - 1;
            let mut checks = format!(
                "      %rank = transform.match.structured.rank %s : (!transform.any_op) -> !transform.param<i64>\n\
                 \x20     %want = transform.param.constant {rank} : i64 -> !transform.param<i64>\n\
                 \x20     transform.match.param.cmpi eq %rank, %want : !transform.param<i64>\n\
                 \x20     transform.match.structured.dim %s[{}] {{parallel}} : !transform.any_op\n\
                 \x20     transform.match.structured.input %s[all] {{projected_permutation}} : !transform.any_op\n\
                 \x20     transform.match.structured.init %s[all] {{projected_permutation}} : !transform.any_op\n",
                list(0..last + 1)
            );
            if reductions > 0 {
                checks += &format!(
                    "      transform.match.structured.dim %s[{}] {{reduction}} : !transform.any_op\n",
                    list(last + 1..rank)
                );
            }
            let name = format!("{rank}_{reductions}");
            // The one-tile matcher yields the last parallel dimension's static extent (1 to THREADS).
            text += &format!(
                "  transform.named_sequence @match_{name}_one_tile(%op: !transform.any_op {{transform.readonly}}) -> (!transform.any_op, !transform.param<i64>) {{\n\
                 \x20   %extent = transform.match.structured %op : (!transform.any_op) -> !transform.param<i64> {{\n\
                 \x20   ^bb0(%s: !transform.any_op):\n\
                 {checks}\
                 \x20     %e = transform.match.structured.dim %s[{last}] : (!transform.any_op) -> !transform.param<i64>\n\
                 \x20     %one = transform.param.constant 1 : i64 -> !transform.param<i64>\n\
                 \x20     %threads = transform.param.constant {THREADS} : i64 -> !transform.param<i64>\n\
                 \x20     transform.match.param.cmpi ge %e, %one : !transform.param<i64>\n\
                 \x20     transform.match.param.cmpi le %e, %threads : !transform.param<i64>\n\
                 \x20     transform.match.structured.yield %e : !transform.param<i64>\n\
                 \x20   }}\n\
                 \x20   transform.yield %op, %extent : !transform.any_op, !transform.param<i64>\n\
                 \x20 }}\n\
                 \x20 transform.named_sequence @match_{name}(%op: !transform.any_op {{transform.readonly}}) -> !transform.any_op {{\n\
                 \x20   transform.match.structured %op : !transform.any_op {{\n\
                 \x20   ^bb0(%s: !transform.any_op):\n\
                 {checks}\
                 \x20     transform.match.structured.yield\n\
                 \x20   }}\n\
                 \x20   transform.yield %op : !transform.any_op\n\
                 \x20 }}\n"
            );
            let sizes = |innermost: &str| {
                (0..rank)
                    .map(|d| match d {
                        d if d < last => "1",
                        d if d == last => innermost,
                        _ => "0",
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (one_tile, one_tile_types) = if last == 0 {
                (
                    sizes("%extent"),
                    "(!transform.any_op, !transform.param<i64>)",
                )
            } else {
                (sizes("0"), "(!transform.any_op)")
            };
            text += &format!(
                "  transform.named_sequence @tile_{name}_one_tile(%op: !transform.any_op {{transform.consumed}}, %extent: !transform.param<i64> {{transform.readonly}}) {{\n\
                 \x20   %tiled, %loop = transform.structured.tile_using_forall %op tile_sizes [{one_tile}] : {one_tile_types} -> (!transform.any_op, !transform.any_op)\n\
                 \x20   transform.yield\n\
                 \x20 }}\n\
                 \x20 transform.named_sequence @tile_{name}(%op: !transform.any_op {{transform.consumed}}) {{\n\
                 \x20   %tiled, %loop = transform.structured.tile_using_forall %op tile_sizes [{}] : (!transform.any_op) -> (!transform.any_op, !transform.any_op)\n\
                 \x20   transform.yield\n\
                 \x20 }}\n",
                sizes(&THREADS.to_string())
            );
            pairs.push(format!("@match_{name}_one_tile -> @tile_{name}_one_tile"));
            pairs.push(format!("@match_{name} -> @tile_{name}"));
        }
    }
    text += &format!(
        "  transform.named_sequence @{TILE}(%root: !transform.any_op {{transform.consumed}}) {{\n\
         \x20   transform.foreach_match in %root\n\
         \x20       {}\n\
         \x20     : (!transform.any_op) -> !transform.any_op\n\
         \x20   transform.yield\n\
         \x20 }}\n\
         \x20 transform.named_sequence @{CLEAN}(%root: !transform.any_op {{transform.readonly}}) {{\n\
         \x20   %tiles = transform.structured.match ops{{[\"scf.forall\"]}} in %root : (!transform.any_op) -> !transform.any_op\n\
         \x20   transform.apply_patterns to %tiles {{\n\
         \x20     transform.apply_patterns.canonicalization\n\
         \x20   }} : !transform.any_op\n\
         \x20   transform.yield\n\
         \x20 }}\n}}\n",
        pairs.join(",\n        ")
    );
    text
}

/// [`tiling_script`] in a temporary file (removed when dropped), for `--transform-preload-library`.
pub fn tiling_script_file() -> Result<tempfile::NamedTempFile, Failure> {
    use std::io::Write;
    let io = |e: std::io::Error| input_error(format!("a temporary file for mlir-opt: {e}"));
    let mut f = tempfile::Builder::new()
        .prefix("qc-gpu-tiling")
        .suffix(".mlir")
        .tempfile()
        .map_err(io)?;
    f.write_all(tiling_script().as_bytes()).map_err(io)?;
    f.flush().map_err(io)?;
    Ok(f)
}

/// The PTX ISA version asked of LLVM for a target (the lowest that the chip needs, at least 8.0).
fn ptx_features(t: GpuTarget) -> &'static str {
    match t {
        GpuTarget::Sm80 | GpuTarget::Sm89 | GpuTarget::Sm90a => "+ptx80",
        GpuTarget::Sm100a => "+ptx86",
        GpuTarget::Sm120a => "+ptx87",
    }
}

/// The mlir-opt pipeline from the host program to `gpu.binary` ops holding PTX for `t`.
pub fn to_ptx(t: GpuTarget) -> Vec<String> {
    vec![
        "--lower-affine".into(),
        "--arith-expand=include-f4e2m1=true include-f8e8m0=true".into(),
        "--convert-scf-to-cf".into(),
        format!(
            "--gpu-lower-to-nvvm-pipeline=cubin-chip={} cubin-features={} cubin-format=isa opt-level=3",
            t.name(),
            ptx_features(t)
        ),
    ]
}

/// The GPU target of a `--target`.
pub fn gpu_target(t: Target) -> Result<GpuTarget, Failure> {
    GpuTarget::parse(t.name()).map_err(|e| Failure::Internal(format!("internal error: {e}\n")))
}

/// Runs mlir-opt with `args` on `input` (and `CUDA_ROOT` when given, for libdevice); its output.
fn mlir_opt(
    args: &[String],
    input: &[u8],
    cuda_root: Option<&Path>,
    what: &str,
) -> Result<Vec<u8>, Failure> {
    let env: Vec<(&str, &Path)> = cuda_root.map(|r| ("CUDA_ROOT", r)).into_iter().collect();
    crate::cmd::cpu::tool("mlir-opt", args, &env, input, what)
}

/// The CUDA toolkit folder holding `ptxas` (`<root>/bin/ptxas`) when it has libdevice.
fn cuda_root(ptxas: &Path) -> Option<PathBuf> {
    let root = ptxas.parent()?.parent()?;
    root.join("nvvm/libdevice/libdevice.10.bc")
        .is_file()
        .then(|| root.to_path_buf())
}

/// Decodes a string literal as MLIR prints it (`\\` and `\XX` hex escapes).
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The PTX of each `gpu.binary` op of `text` (module name, PTX), in the order of the text.
pub fn binaries(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("gpu.binary @") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let start = line
            .find("assembly = \"")
            .ok_or_else(|| format!("gpu.binary @{name} holds no assembly"))?
            + "assembly = \"".len();
        let len = line[start..]
            .find('"')
            .ok_or_else(|| format!("gpu.binary @{name}: unterminated assembly"))?;
        let ptx = unescape(&line[start..start + len])
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("gpu.binary @{name}: bad assembly string"))?;
        out.push((name, ptx));
    }
    Ok(out)
}

/// The PTX modules of qc's kernels that [`kernel_calls`] adds, one per distinct kernel
/// description (named `<kind>_<j>` in order of first use).
#[derive(Default)]
struct Modules {
    gemv4: Vec<(Gemv4, String)>,
    mma4: Vec<(Gemv4, String)>,
    mma8: Vec<(Mma8, String)>,
    wgmma8: Vec<(Mma8, String)>,
    tcgen05: Vec<(Tc05, String)>,
    mmafp4: Vec<(Fp4, String)>,
    fquant: Vec<(FakeQuantPt, String)>,
    fquant_block: Vec<(FakeQuantBlock, String)>,
    sgemm: Vec<((), String)>,
    rows: Vec<(RowKernel, String)>,
}

/// The module of `spec` in `list`, made with `emit` (and its PTX pushed to `ptx`) on first use.
fn module_of<S: PartialEq + Clone>(
    list: &mut Vec<(S, String)>,
    kind: &str,
    spec: &S,
    ptx: &mut Vec<(String, String)>,
    emit: impl FnOnce() -> Result<String, qc_backend_ptx::Error>,
) -> Result<String, Failure> {
    if let Some((_, name)) = list.iter().find(|(s, _)| s == spec) {
        return Ok(name.clone());
    }
    let name = format!("{kind}_{}", list.len());
    let text = emit().map_err(|e| Failure::Internal(format!("internal error: {e}\n")))?;
    ptx.push((name.clone(), text));
    list.push((spec.clone(), name.clone()));
    Ok(name)
}

/// Whether the 8-bit tensor-core GEMM of `spec` runs on `gpu`: int8 on every target, FP8 from
/// sm_89.
fn mma8_runs_on(spec: &Mma8, gpu: GpuTarget) -> bool {
    spec.is_int8() || gpu != GpuTarget::Sm80
}

/// The W4A4 product of weights `w` and activations `a` (length `k`) that a block-scaled FP4 GEMM
/// computes on `gpu` (`tcgen05` on sm_100a, `mmafp4` on sm_120a), if any.
fn fp4_on(w: &qc_ir::QuantType, a: &qc_ir::QuantType, k: u64, gpu: GpuTarget) -> Option<Fp4> {
    Fp4::classify(w, a)
        .ok()
        .filter(|s| matches!(gpu, GpuTarget::Sm100a | GpuTarget::Sm120a) && s.supports(k).is_ok())
}

/// The launch of `kernel` (of `rows`) for the row kernel call `c`, its module added to `modules`
/// and `ptx` on first use.
fn row_call(
    modules: &mut Vec<(RowKernel, String)>,
    ptx: &mut Vec<(String, String)>,
    c: &qc_backend_hlo::upstream::KernelCall,
    kernel: RowKernel,
    epsilon: Option<f32>,
    gpu: GpuTarget,
) -> Result<RowCall, Failure> {
    let module = module_of(modules, "rows", &kernel, ptx, || {
        rows::emit_ptx(gpu, kernel)
    })?;
    Ok(RowCall {
        symbol: c.symbol.clone(),
        rows: c.m,
        len: c.n,
        epsilon,
        module,
        entry: kernel.entry().to_string(),
        block: rows::BLOCK,
    })
}

/// What [`kernel_calls`] resolves the export's calls to, by kind.
struct KernelCalls<'m> {
    calls: Vec<GpuCall<'m>>,
    fquant: Vec<FquantCall>,
    sgemm: Vec<SgemmCall>,
    rows: Vec<RowCall>,
}

/// The launch-plan descriptions of the export's kernel calls, their kernels' PTX pushed to `ptx`:
/// - quantized products ([`GpuCall`]): NVFP4 x NVFP4 and MXFP4 x MXFP4 products run a block-scaled
///   FP4 GEMM that quantizes the activations itself: on sm_100a from `tcgen05::MIN_ROWS` rows the
///   one of `tcgen05`, on sm_120a from `mma4::MIN_ROWS` the one of `mmafp4`; on sm_100a from
///   `tcgen05::MIN_ROWS` rows, other products by 4-bit weights with byte group scales (NVFP4,
///   MXFP4, NVINT4) run `tcgen05`'s `kind::f16` GEMM (after the fake-quant kernel when the
///   activations are quantized), and FP8 weights per tensor or row with FP8 activations its
///   `kind::f8f6f4` GEMM; with activations the kernel quantizes itself
///   (`act_quant`) to int8, or to FP8 on sm_89 and later, the 8-bit tensor-core GEMM of
///   `qc_backend_ptx::mma8` (for
///   4-bit weights only from `mma4::MIN_ROWS` rows; on sm_90a from `wgmma8::TILE` rows the
///   warpgroup GEMM of `wgmma8`); otherwise, for 4-bit weights, the tensor-core
///   GEMM of `mma4` from `MIN_ROWS` rows or the GEMV of `gemv4` below, after the fake-quant kernel
///   when the activations are quantized (`act_pre`);
/// - activation quantizations ([`FquantCall`]): the fake-quant kernels of `fquant` (per tensor, or
///   per block for MX and NVFP4);
/// - f32 products ([`SgemmCall`]): the tensor-core f32 GEMM of `mmaf` (3xTF32);
/// - softmax, log-softmax and layer normalization over the last axis ([`RowCall`]): the row
///   kernels of `rows` (a warp per row), one module per kernel.
fn kernel_calls<'m>(
    m: &'m Module,
    calls: &[qc_backend_hlo::upstream::KernelCall],
    gpu: GpuTarget,
    ptx: &mut Vec<(String, String)>,
) -> Result<KernelCalls<'m>, Failure> {
    let mut mods = Modules::default();
    let mut out = Vec::new();
    let mut fq_out = Vec::new();
    let mut sg_out = Vec::new();
    let mut rows_out = Vec::new();
    for c in calls {
        let at =
            |msg: String| Failure::Input(qc_ir::Diagnostic::error(c.loc.clone(), msg).render(None));
        // The fake-quant kernel of an activation format and its f32 parameter for `amax`.
        let mut fquant = |format: &qc_ir::QuantType,
                          amax: Option<f32>,
                          n: u64,
                          ptx: &mut Vec<(String, String)>|
         -> Result<FquantCall, Failure> {
            let need_amax = || {
                amax.ok_or_else(|| {
                    at(format!(
                        "activation quantization to {format} on {} needs a calibrated maximum \
                         (the op's amax; compile with --calib)",
                        gpu.name()
                    ))
                })
            };
            if let Some(spec) = FakeQuantPt::classify(format) {
                let amax = need_amax()?;
                let module = module_of(&mut mods.fquant, "fquant", &spec, ptx, || {
                    qc_backend_ptx::fquant::emit_ptx(gpu, &spec)
                })?;
                return Ok(FquantCall {
                    symbol: c.symbol.clone(),
                    n,
                    scale: spec.scale(amax),
                    per_thread: 1,
                    module,
                    entry: qc_backend_ptx::fquant::ENTRY.to_string(),
                });
            }
            let spec = FakeQuantBlock::classify(format).ok_or_else(|| {
                at(format!(
                    "{format}: no GPU kernel quantizes activations to it"
                ))
            })?;
            if !n.is_multiple_of(spec.block() as u64) {
                return Err(at(format!(
                    "{format}: {n} elements are not whole blocks of {}",
                    spec.block()
                )));
            }
            // NVFP4's tensor scale comes from the static maximum; MX blocks need none.
            let amax = match spec {
                FakeQuantBlock::Nvfp4 { .. } => need_amax()?,
                FakeQuantBlock::Mx { .. } => 0.0,
            };
            let module = module_of(&mut mods.fquant_block, "fqblock", &spec, ptx, || {
                qc_backend_ptx::fquant::emit_block_ptx(gpu, &spec)
            })?;
            Ok(FquantCall {
                symbol: c.symbol.clone(),
                n,
                scale: amax,
                per_thread: spec.block() as u64,
                module,
                entry: qc_backend_ptx::fquant::BLOCK_ENTRY.to_string(),
            })
        };
        let (resource, format, act_quant) = match &c.op {
            KernelOp::QuantMatmul {
                resource,
                format,
                act_quant,
            } => (resource, format, act_quant.as_ref()),
            KernelOp::FakeQuant { format, amax } => {
                fq_out.push(fquant(format, *amax, c.m, ptx)?);
                continue;
            }
            KernelOp::Sgemm { batch, shared_b } => {
                let module = module_of(&mut mods.sgemm, "sgemm", &(), ptx, || {
                    qc_backend_ptx::mmaf::emit_ptx(gpu)
                })?;
                sg_out.push(SgemmCall {
                    symbol: c.symbol.clone(),
                    batch: *batch,
                    shared_b: *shared_b,
                    m: c.m,
                    n: c.n,
                    k: c.k,
                    module,
                    entry: qc_backend_ptx::mmaf::ENTRY.to_string(),
                    tile: mma4::WARP_TILE,
                    block: qc_backend_ptx::mmaf::BLOCK,
                });
                continue;
            }
            KernelOp::Softmax { log } => {
                let kernel = if *log {
                    RowKernel::LogSoftmax
                } else {
                    RowKernel::Softmax
                };
                rows_out.push(row_call(&mut mods.rows, ptx, c, kernel, None, gpu)?);
                continue;
            }
            KernelOp::LayerNorm { epsilon } => {
                rows_out.push(row_call(
                    &mut mods.rows,
                    ptx,
                    c,
                    RowKernel::LayerNorm,
                    Some(*epsilon),
                    gpu,
                )?);
                continue;
            }
        };
        let blob = m
            .resources
            .get(resource)
            .and_then(|r| r.bytes())
            .ok_or_else(|| at(format!("the weight resource '{resource}' has no bytes")))?;
        let (n, k) = (c.n as usize, c.k as usize);
        let f32_bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let len_check = |want: usize| {
            if blob.len() == want {
                Ok(())
            } else {
                Err(at(format!(
                    "the weight blob has {} bytes; {format} [{n}, {k}] needs {want}",
                    blob.len()
                )))
            }
        };
        // The call of this product to `module`'s `kernel`.
        let call = |scales_offset: usize,
                    tables: Result<Vec<f32>, String>,
                    post: Result<f32, String>,
                    module: String,
                    kernel: ProductKernel,
                    act_pre: Option<FquantCall>|
         -> Result<GpuCall<'m>, Failure> {
            Ok(GpuCall {
                symbol: c.symbol.clone(),
                resource: resource.clone(),
                blob,
                scales_offset: scales_offset as u64,
                tables: f32_bytes(tables.map_err(&at)?),
                post: post.map_err(&at)?,
                m: c.m,
                n: c.n,
                k: c.k,
                module,
                kernel,
                act_pre,
            })
        };
        let tc = gpu == GpuTarget::Sm100a;
        let fp4 = act_quant
            .filter(|_| {
                c.m >= if tc {
                    tcgen05::MIN_ROWS
                } else {
                    mma4::MIN_ROWS
                }
            })
            .and_then(|aq| fp4_on(format, &aq.format, c.k, gpu).map(|s| (aq, s)));
        if let Some((aq, spec)) = fp4 {
            len_check(spec.weights.sections(n, k).len)?;
            let module = if tc {
                let key = Tc05::Fp4(spec.clone());
                module_of(&mut mods.tcgen05, "tcgen05", &key, ptx, || {
                    tcgen05::emit_ptx(&key)
                })?
            } else {
                module_of(&mut mods.mmafp4, "mmafp4", &spec, ptx, || {
                    mmafp4::emit_ptx(&spec)
                })?
            };
            out.push(call(
                spec.scales_offset(n, k),
                spec.weights.tables(),
                spec.post(blob, n, k),
                module,
                ProductKernel::Mma {
                    entry: if tc { tcgen05::ENTRY } else { mmafp4::ENTRY }.to_string(),
                    tile: if tc { tcgen05::TILE } else { mma4::WARP_TILE },
                    tile_threads: if tc { tcgen05::BLOCK as u64 } else { 32 },
                    block: if tc { tcgen05::BLOCK } else { mmafp4::BLOCK },
                    // The kernel's `tamax`: NVFP4's static maximum (MXFP4 ignores it).
                    act_scale: Some(aq.amax),
                },
                None,
            )?);
            continue;
        }
        let gemv = Gemv4::for_k(format, k);
        let fp8 = act_quant
            .and_then(|aq| Mma8::classify(format, &aq.format).ok().map(|s| (aq, s)))
            .filter(|(_, s)| mma8_runs_on(s, gpu))
            .filter(|(_, s)| s.supports(c.k).is_ok())
            .filter(|_| gemv.is_err() || c.m >= mma4::MIN_ROWS);
        if let Some((aq, spec)) = fp8 {
            len_check(spec.blob_len(n, k))?;
            let act = FakeQuantPt::classify(&aq.format)
                .ok_or_else(|| at(format!("{}: not a per-tensor format", aq.format)))?;
            // Products of a 64-row tile and more: on Hopper the warpgroup MMA; on sm_100a, for FP8
            // weights per tensor or row, tcgen05's FP8 GEMM.
            let wgmma = gpu == GpuTarget::Sm90a && c.m >= wgmma8::TILE && !spec.is_int8();
            let tc_fp8 = Tc05::fp8(&spec, c.k)
                .ok()
                .filter(|_| gpu == GpuTarget::Sm100a && c.m >= tcgen05::MIN_ROWS);
            let (module, entry, tile, tile_threads, block) = if let Some(key) = tc_fp8 {
                let module = module_of(&mut mods.tcgen05, "tcgen05", &key, ptx, || {
                    tcgen05::emit_ptx(&key)
                })?;
                let b = tcgen05::BLOCK;
                (module, tcgen05::ENTRY_FP8, tcgen05::TILE, b as u64, b)
            } else if wgmma {
                let module = module_of(&mut mods.wgmma8, "wgmma8", &spec, ptx, || {
                    wgmma8::emit_ptx(&spec)
                })?;
                let b = wgmma8::BLOCK;
                (module, wgmma8::ENTRY, wgmma8::TILE, b as u64, b)
            } else {
                let module = module_of(&mut mods.mma8, "mma8", &spec, ptx, || {
                    mma8::emit_ptx(gpu, &spec)
                })?;
                (module, mma8::ENTRY, mma4::WARP_TILE, 32, mma8::BLOCK)
            };
            out.push(call(
                spec.scales_offset(n, k),
                spec.tables(),
                spec.post(blob, n, k),
                module,
                ProductKernel::Mma {
                    entry: entry.to_string(),
                    tile,
                    tile_threads,
                    block,
                    act_scale: Some(act.scale(aq.amax)),
                },
                None,
            )?);
            continue;
        }
        let spec = gemv.map_err(|e| at(format!("the {} GEMV kernels: {e}", gpu.name())))?;
        len_check(spec.sections(n, k).len)?;
        let act_pre = act_quant
            .map(|aq| fquant(&aq.format, Some(aq.amax), c.m * c.k, ptx))
            .transpose()?;
        // Prefill-sized products run a tensor-core GEMM (on sm_100a from 64 rows, for byte-scaled
        // formats, tcgen05's), single rows the GEMV. The GEMM's module depends on the format only
        // (not on the GEMV's slice).
        let mut key = spec.clone();
        key.slice = gemv4::SLICE;
        let w4 = Tc05::w4(&key, c.k)
            .ok()
            .filter(|_| gpu == GpuTarget::Sm100a && c.m >= tcgen05::MIN_ROWS);
        let kernel = if let Some(w4) = w4 {
            let module = module_of(&mut mods.tcgen05, "tcgen05", &w4, ptx, || {
                tcgen05::emit_ptx(&w4)
            })?;
            (
                module,
                ProductKernel::Mma {
                    entry: tcgen05::ENTRY_W4.to_string(),
                    tile: tcgen05::TILE,
                    tile_threads: tcgen05::BLOCK as u64,
                    block: tcgen05::BLOCK,
                    // The kernel's `tamax` (unused by W4).
                    act_scale: Some(0.0),
                },
            )
        } else if c.m >= mma4::MIN_ROWS && mma4::supports(&spec, c.k).is_ok() {
            let module = module_of(&mut mods.mma4, "mma4", &key, ptx, || {
                mma4::emit_ptx(gpu, &key)
            })?;
            (
                module,
                ProductKernel::Mma {
                    entry: mma4::ENTRY.to_string(),
                    tile: mma4::WARP_TILE,
                    tile_threads: 32,
                    block: mma4::BLOCK,
                    act_scale: None,
                },
            )
        } else {
            let module = module_of(&mut mods.gemv4, "gemv4", &spec, ptx, || {
                gemv4::emit_ptx(gpu, &spec)
            })?;
            (
                module,
                ProductKernel::Gemv {
                    slice: spec.slice as u64,
                    partial: gemv4::PARTIAL.to_string(),
                    reduce: gemv4::REDUCE.to_string(),
                },
            )
        };
        out.push(call(
            spec.sections(n, k).scales,
            spec.tables(),
            spec.post(blob, n, k),
            kernel.0,
            kernel.1,
            act_pre,
        )?);
    }
    Ok(KernelCalls {
        calls: out,
        fquant: fq_out,
        sgemm: sg_out,
        rows: rows_out,
    })
}

/// `qc compile --target sm_*`: lowers function `func` of the compiled module `m` to PTX and writes the
/// artifact (module documentation) to `out`.
pub fn write_artifact(
    target: Target,
    m: &Module,
    func: &str,
    shapes: &[String],
    model: &Path,
    pipeline: &str,
    out: &Path,
) -> Result<(), Failure> {
    let gpu = gpu_target(target)?;
    let internal = |e: String| Failure::Internal(format!("internal error: {e}\n"));
    let mut b = qc_backend_hlo::ShapeBindings::new();
    for s in shapes {
        b.add(s).map_err(|e| input_error(format!("--shape: {e}")))?;
    }
    let render = |d: qc_ir::Diagnostic| Failure::Input(d.render(None));
    let specialized = qc_backend_hlo::specialize(m, func, &b).map_err(render)?;
    // Quantized products whose weights qc's 4-bit GEMV kernels read become calls of them.
    let accept: &dyn Fn(&qc_ir::QuantType) -> bool = &|f| Gemv4::classify(f).is_ok();
    // Activation quantizations (--aformat) to int8 / fp8 per tensor, or to MX / NVFP4 blocks, run
    // qc's fake-quant kernels.
    let fquant: &dyn Fn(&qc_ir::QuantType) -> bool =
        &|f| FakeQuantPt::classify(f).is_some() || FakeQuantBlock::classify(f).is_some();
    // Products of int8- or (from sm_89) FP8-quantized activations run the 8-bit tensor-core GEMM,
    // which quantizes them itself (also for 8-bit weights, which have no kernel otherwise).
    // So do NVFP4 x NVFP4 and MXFP4 x MXFP4 products on sm_100a and sm_120a (the block-scaled FP4 GEMMs; products
    // with too few rows for it quantize first and run the 4-bit kernels, as unfolded ones do).
    let gemm8_on = move |w: &qc_ir::QuantType, a: &qc_ir::QuantType, k: u64| {
        Mma8::classify(w, a).is_ok_and(|s| mma8_runs_on(&s, gpu) && s.supports(k).is_ok())
            || fp4_on(w, a, k, gpu).is_some()
    };
    let gemm8: &qc_backend_hlo::upstream::ActQuantFilter = &gemm8_on;
    let opts = qc_backend_hlo::upstream::ExportOptions {
        kernel_calls: Some(accept),
        quantize_calls: Some(fquant),
        act_quant_calls: Some(gemm8),
        // f32 products (float weights, attention, convolutions after im2col) run qc's tensor-core
        // f32 GEMM.
        float_matmul_calls: true,
        constant_args: true,
        decode_tables: true,
        // Softmax and layer normalization over the last axis run qc's row kernels.
        row_kernel_calls: true,
    };
    let exported =
        qc_backend_hlo::upstream::export_module_with(m, func, &b, &opts).map_err(render)?;
    let text = exported.text;
    if let Some(dir) = std::env::var_os("QC_CUDA_DUMP") {
        // For developers: the exported module, as mlir-opt receives it, and the tiling script.
        let _ = std::fs::write(Path::new(&dir).join("model.export.mlir"), &text);
        let _ = std::fs::write(Path::new(&dir).join("tiling.mlir"), tiling_script());
    }
    let mut manifest =
        crate::cmd::target::manifest(target, m, &specialized, shapes, model, pipeline)?;
    manifest.entry = ENTRY.into();
    let ptxas = qc_backend_ptx::ptxas::find_ptxas().map_err(|e| {
        input_error(format!(
            "the {} target checks its PTX with ptxas: {e}",
            target.name()
        ))
    })?;
    let what = format!("the {} target cannot lower this model", target.name());
    let script = tiling_script_file()?;
    let host = mlir_opt(&to_gpu(script.path()), text.as_bytes(), None, &what)?;
    drop(script);
    let host = String::from_utf8(host).map_err(|e| internal(e.to_string()))?;
    let lowered = mlir_opt(
        &to_ptx(gpu),
        host.as_bytes(),
        cuda_root(&ptxas).as_deref(),
        &what,
    )?;
    let lowered = String::from_utf8(lowered).map_err(|e| internal(e.to_string()))?;
    let mut ptx = binaries(&lowered).map_err(internal)?;
    let KernelCalls {
        calls,
        fquant,
        sgemm,
        rows,
    } = kernel_calls(m, &exported.calls, gpu, &mut ptx)?;
    let constant_args = exported
        .constant_args
        .iter()
        .map(|c| {
            m.resources
                .get(&c.resource)
                .and_then(|r| r.bytes())
                .ok_or_else(|| internal(format!("the constant '{}' has no bytes", c.resource)))
        })
        .collect::<Result<Vec<&[u8]>, _>>()?;
    let by_name: std::collections::BTreeMap<String, String> = ptx.iter().cloned().collect();
    let (plan, weights) = crate::cmd::cuda_plan::plan(
        &host,
        &crate::cmd::cuda_plan::PlanInputs {
            target: gpu.name(),
            weights: WEIGHTS,
            inputs: manifest.inputs.len(),
            constant_args,
            ptx: &by_name,
            calls,
            fquant,
            sgemm,
            rows,
        },
    )
    .map_err(|e| input_error(format!("{what}: {e}")))?;
    // Only the kernels the plan launches are parts.
    let launched: std::collections::BTreeSet<String> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            qc_runtime::cuda::plan::Step::Launch { ptx, .. } => Some(ptx.clone()),
            _ => None,
        })
        .collect();
    let ptx: Vec<(String, String)> = ptx
        .into_iter()
        .filter(|(n, _)| launched.contains(&format!("{n}.ptx")))
        .collect();
    if let Some((name, p)) = ptx.iter().find(|(_, p)| p.contains(".extern .func")) {
        let callee = p
            .lines()
            .find(|l| l.contains(".extern .func"))
            .unwrap_or_default();
        return Err(input_error(format!(
            "{what}: kernel {name} calls an external function ({}); is libdevice missing (the CUDA \
             toolkit of {} has no nvvm/libdevice/libdevice.10.bc)?",
            callee.trim(),
            ptxas.display()
        )));
    }
    // ptxas for every kernel, on a few threads.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = ptx.len().div_ceil(threads).max(1);
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ptx
            .chunks(chunk)
            .map(|c| {
                let ptxas = &ptxas;
                s.spawn(move || {
                    c.iter()
                        .filter_map(|(n, p)| {
                            qc_backend_ptx::ptxas::assemble(ptxas, p, gpu)
                                .err()
                                .map(|e| format!("{n}.ptx: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["ptxas thread panicked".into()])
            })
            .collect()
    });
    if let Some(f) = failures.first() {
        return Err(internal(f.clone()));
    }
    let mut parts: Vec<(String, Vec<u8>)> = ptx
        .into_iter()
        .map(|(n, p)| (format!("{n}.ptx"), p.into_bytes()))
        .collect();
    parts.push((HOST.into(), host.into_bytes()));
    parts.push((PLAN.into(), plan.to_json().into_bytes()));
    parts.push((WEIGHTS.into(), weights));
    let a = Artifact::new(manifest, parts).map_err(|e| internal(e.to_string()))?;
    artifact::write(out, &a).map_err(|e| input_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tiling_script_tiles_the_innermost_parallel_dimension() {
        let s = tiling_script();
        // A matrix product (two parallel dimensions, then one reduction).
        assert!(
            s.contains("transform.match.structured.dim %s[0, 1] {parallel}"),
            "{s}"
        );
        assert!(s.contains("tile_sizes [1, 256, 0] :"), "{s}");
        assert!(s.contains("tile_sizes [1, 0, 0] :"), "{s}");
        assert!(s.contains("tile_sizes [%extent, 0] :"), "{s}");
        assert!(s.contains("tile_sizes [1, 1, 1, 1, 1, 1, 1, 256] :"), "{s}");
        assert!(
            s.contains(
                "@match_3_1_one_tile -> @tile_3_1_one_tile,\n        @match_3_1 -> @tile_3_1,"
            ),
            "{s}"
        );
        let pairs = 2 * (1..=MAX_TILED_RANK).sum::<usize>();
        assert_eq!(s.matches(" -> @tile_").count(), pairs);
    }

    #[test]
    fn unescapes_mlir_strings() {
        assert_eq!(unescape(r"a\0Ab\\c\22").unwrap(), b"a\nb\\c\"");
        assert!(unescape(r"\0").is_none());
    }
}

//! qc's NVIDIA GPU backend: LLVM IR built with [inkwell] (LLVM 22), compiled to PTX by LLVM's NVPTX
//! backend, and checked by NVIDIA's `ptxas` (see [`ptxas`]).
//!
//! The crate emits a fixed kernel, [`ADD_F32_KERNEL`], for every supported [`GpuTarget`] (it proves the
//! path: kernel calling convention, special registers, target machine, PTX emission, ptxas), the
//! 4-bit weight GEMV kernels of [`gemv4`] (tested on the CPU through the same IR, benchmarked on a GPU
//! by `cargo bench --bench gemv4_gpu`), the tensor-core GEMMs of [`mmaf`] (f32, 3xTF32), [`mma4`]
//! (4-bit weights, bf16 MMA)
//! and [`mma8`] (s8 or FP8 MMA, activations quantized in the kernel) and the Hopper warpgroup version of
//! the latter, [`wgmma8`], the W4A4 FP4 GEMMs of [`fp4`] products (NVFP4 x NVFP4, MXFP4 x MXFP4,
//! activations quantized in the kernel) on Blackwell's block-scaled tensor cores: [`tcgen05`]
//! (sm_100a, tensor memory) and [`mmafp4`] (sm_120a, block-scaled `mma.sync`), tested on the CPU
//! with an emulated warp, warpgroup or tensor memory, and the activation fake quantization of
//! [`fquant`], and the softmax and layer normalization row kernels of [`rows`] (one warp per row,
//! shuffle reductions). Whole models take the MLIR route of the compiler's
//! `cmd/cuda.rs`.
#![deny(missing_docs)]

pub mod fp4;
pub mod fquant;
pub mod gemv4;
pub mod mma4;
pub mod mma8;
pub mod mmaf;
pub mod mmafp4;
pub mod ptxas;
pub mod rows;
pub mod tcgen05;
pub mod wgmma8;

use std::str::FromStr;
use std::sync::Once;

use inkwell::builder::BuilderError;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::{AddressSpace, IntPredicate, OptimizationLevel};

/// The entry name of the kernel that [`emit_ptx`] emits.
///
/// CUDA view: `__global__ void qc_add_f32(const float *a, const float *b, float *c, int64_t n)`, which
/// computes `c[i] = a[i] + b[i]` for the global thread index `i = blockIdx.x * blockDim.x + threadIdx.x`
/// when `i < n` (threads with `i >= n` do nothing). Launch it with a 1-D grid of at least `n` threads.
pub const ADD_F32_KERNEL: &str = "qc_add_f32";

/// The target triple of every module this crate emits (64-bit pointers, CUDA driver ABI).
pub const TRIPLE: &str = "nvptx64-nvidia-cuda";

/// LLVM's `ptx_kernel` calling convention (`CallingConv::PTX_Kernel`). Since LLVM 20 this, not the
/// `nvvm.annotations` metadata, is what makes a function a PTX `.entry`.
const PTX_KERNEL_CALL_CONV: u32 = 71;

/// Errors of the PTX backend and of [`ptxas`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`GpuTarget::parse`] got a name that is not a supported GPU target.
    #[error("unknown GPU target `{0}` (expected one of: sm_80, sm_89, sm_90a, sm_100a, sm_120a)")]
    UnknownTarget(String),
    /// LLVM has no NVPTX backend.
    #[error("LLVM has no target for triple `{triple}`: {message}")]
    NoTarget {
        /// The triple asked for.
        triple: String,
        /// LLVM's message.
        message: String,
    },
    /// LLVM refused to create a target machine for the GPU.
    #[error("LLVM could not create an NVPTX target machine for `{0}`")]
    TargetMachine(String),
    /// An inkwell builder call failed (a bug in the IR construction).
    #[error("building LLVM IR failed: {0}")]
    Builder(#[from] BuilderError),
    /// An NVVM intrinsic was not found in LLVM's intrinsic table.
    #[error("LLVM does not know the intrinsic `{0}`")]
    MissingIntrinsic(&'static str),
    /// The generated module failed LLVM's verifier (a bug in the IR construction).
    #[error("generated LLVM IR failed verification: {0}")]
    Verify(String),
    /// The optimization pipeline failed.
    #[error("LLVM optimization pipeline failed: {0}")]
    Passes(String),
    /// Code generation failed.
    #[error("LLVM code generation failed: {0}")]
    Codegen(String),
    /// No `ptxas` executable was found; the message says where it was looked for.
    #[error("ptxas not found: {0}")]
    PtxasNotFound(String),
    /// Running `ptxas` failed to start, or an I/O error happened around it.
    #[error("running ptxas: {0}")]
    Io(#[from] std::io::Error),
    /// `ptxas` rejected the PTX.
    #[error("ptxas -arch={arch} rejected the PTX ({status}):\n{stderr}")]
    Ptxas {
        /// The `-arch` value used.
        arch: &'static str,
        /// ptxas's exit status.
        status: std::process::ExitStatus,
        /// ptxas's diagnostics.
        stderr: String,
    },
}

/// An NVIDIA GPU architecture that the backend can generate PTX for.
///
/// Hopper, Blackwell data-center and Blackwell consumer parts are targeted in their architecture-specific
/// `a` variants, which expose the tensor-core instructions (wgmma, tcgen05, block-scaled mma) that qc's
/// quantized kernels need; code for an `a` target runs only on that exact compute capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuTarget {
    /// Ampere (A100): compute capability 8.0.
    Sm80,
    /// Ada (L4, L40, RTX 40xx): compute capability 8.9.
    Sm89,
    /// Hopper (H100, H200), architecture-specific: compute capability 9.0.
    Sm90a,
    /// Blackwell data center (B200, GB200), architecture-specific: compute capability 10.0.
    Sm100a,
    /// Blackwell consumer and workstation (RTX 50xx, RTX PRO 6000), architecture-specific: compute
    /// capability 12.0.
    Sm120a,
}

impl GpuTarget {
    /// Every supported GPU target, oldest first.
    pub const ALL: [GpuTarget; 5] = [
        GpuTarget::Sm80,
        GpuTarget::Sm89,
        GpuTarget::Sm90a,
        GpuTarget::Sm100a,
        GpuTarget::Sm120a,
    ];

    /// The canonical name: LLVM's CPU name, PTX's `.target` and ptxas's `-arch` value (e.g. `sm_90a`).
    pub fn name(self) -> &'static str {
        match self {
            GpuTarget::Sm80 => "sm_80",
            GpuTarget::Sm89 => "sm_89",
            GpuTarget::Sm90a => "sm_90a",
            GpuTarget::Sm100a => "sm_100a",
            GpuTarget::Sm120a => "sm_120a",
        }
    }

    /// Parses a target name as given to `--target`.
    ///
    /// Accepts every canonical [`name`](GpuTarget::name), and for the architectures that qc targets only
    /// in their `a` variant also the plain name: `sm_90` means `sm_90a`, `sm_100` means `sm_100a`,
    /// `sm_120` means `sm_120a`. Everything else (other architectures, `sm_80a`, wrong case) is
    /// [`Error::UnknownTarget`].
    pub fn parse(name: &str) -> Result<GpuTarget, Error> {
        let canonical = match name {
            "sm_90" => "sm_90a",
            "sm_100" => "sm_100a",
            "sm_120" => "sm_120a",
            other => other,
        };
        GpuTarget::ALL
            .into_iter()
            .find(|t| t.name() == canonical)
            .ok_or_else(|| Error::UnknownTarget(name.to_string()))
    }
}

impl std::fmt::Display for GpuTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GpuTarget {
    type Err = Error;

    /// Same as [`GpuTarget::parse`].
    fn from_str(s: &str) -> Result<Self, Error> {
        GpuTarget::parse(s)
    }
}

fn init_nvptx() {
    static INIT: Once = Once::new();
    INIT.call_once(|| Target::initialize_nvptx(&InitializationConfig::default()));
}

fn target_machine(target: GpuTarget) -> Result<TargetMachine, Error> {
    target_machine_with(target, "")
}

/// [`target_machine`] with LLVM target features, e.g. `+ptx84` for instructions that need a newer
/// PTX ISA than the target's lowest.
fn target_machine_with(target: GpuTarget, features: &str) -> Result<TargetMachine, Error> {
    init_nvptx();
    let triple = TargetTriple::create(TRIPLE);
    let llvm_target = Target::from_triple(&triple).map_err(|e| Error::NoTarget {
        triple: TRIPLE.to_string(),
        message: e.to_string(),
    })?;
    // No explicit PTX ISA feature: LLVM picks the lowest PTX version that supports the target
    // (7.0 for sm_80 ... 8.7 for sm_120a), which keeps the PTX loadable by the oldest possible driver.
    llvm_target
        .create_target_machine(
            &triple,
            target.name(),
            features,
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| Error::TargetMachine(target.name().to_string()))
}

fn special_register<'ctx>(
    module: &Module<'ctx>,
    builder: &inkwell::builder::Builder<'ctx>,
    context: &'ctx Context,
    intrinsic: &'static str,
) -> Result<inkwell::values::IntValue<'ctx>, Error> {
    let declaration = Intrinsic::find(intrinsic)
        .and_then(|i| i.get_declaration(module, &[]))
        .ok_or(Error::MissingIntrinsic(intrinsic))?;
    let value = builder
        .build_call(declaration, &[], "")?
        .try_as_basic_value()
        .basic()
        .ok_or(Error::MissingIntrinsic(intrinsic))?
        .into_int_value();
    Ok(builder.build_int_z_extend(value, context.i64_type(), "")?)
}

/// The global thread index `ctaid.x * ntid.x + tid.x` (64-bit), built at the builder's position.
fn global_thread_index<'ctx>(
    module: &Module<'ctx>,
    builder: &inkwell::builder::Builder<'ctx>,
    context: &'ctx Context,
) -> Result<inkwell::values::IntValue<'ctx>, Error> {
    let tid = special_register(module, builder, context, "llvm.nvvm.read.ptx.sreg.tid.x")?;
    let ctaid = special_register(module, builder, context, "llvm.nvvm.read.ptx.sreg.ctaid.x")?;
    let ntid = special_register(module, builder, context, "llvm.nvvm.read.ptx.sreg.ntid.x")?;
    // 64-bit index: grids of more than 2^31 threads stay correct.
    let block_start = builder.build_int_nuw_mul(ctaid, ntid, "block_start")?;
    Ok(builder.build_int_nuw_add(block_start, tid, "t")?)
}

/// The PTX of a module named `name` that `build` fills, for `machine`: verified, optimized with
/// `passes` (e.g. `default<O3>`), and printed by LLVM's NVPTX back end. Each call has its own LLVM
/// context, so it is thread safe.
fn compile_ptx(
    machine: &TargetMachine,
    name: &str,
    passes: &str,
    build: impl for<'c> FnOnce(&'c Context, &Module<'c>) -> Result<(), Error>,
) -> Result<String, Error> {
    let context = Context::create();
    let module = context.create_module(name);
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    build(&context, &module)?;
    module.verify().map_err(|e| Error::Verify(e.to_string()))?;
    module
        .run_passes(passes, machine, PassBuilderOptions::create())
        .map_err(|e| Error::Passes(e.to_string()))?;
    let buffer = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(|e| Error::Codegen(e.to_string()))?;
    String::from_utf8(buffer.as_slice().to_vec())
        .map_err(|e| Error::Codegen(format!("PTX is not UTF-8: {e}")))
}

/// Builds the unoptimized [`ADD_F32_KERNEL`] into `module`.
fn build_add_f32<'ctx>(context: &'ctx Context, module: &Module<'ctx>) -> Result<(), Error> {
    let f32_type = context.f32_type();
    let i64_type = context.i64_type();
    // Generic pointers, as CUDA passes them; NVPTX converts them to global ones for the loads and stores.
    let ptr_type = context.ptr_type(AddressSpace::default());
    let fn_type = context.void_type().fn_type(
        &[
            ptr_type.into(),
            ptr_type.into(),
            ptr_type.into(),
            i64_type.into(),
        ],
        false,
    );
    let kernel = module.add_function(ADD_F32_KERNEL, fn_type, Some(Linkage::External));
    kernel.set_call_conventions(PTX_KERNEL_CALL_CONV);

    let params = kernel.get_params();
    let a = params[0].into_pointer_value();
    let b = params[1].into_pointer_value();
    let c = params[2].into_pointer_value();
    let n = params[3].into_int_value();

    let entry = context.append_basic_block(kernel, "entry");
    let body = context.append_basic_block(kernel, "body");
    let exit = context.append_basic_block(kernel, "exit");
    let builder = context.create_builder();

    builder.position_at_end(entry);
    let i = global_thread_index(module, &builder, context)?;
    let in_range = builder.build_int_compare(IntPredicate::SLT, i, n, "in_range")?;
    builder.build_conditional_branch(in_range, body, exit)?;

    builder.position_at_end(body);
    // SAFETY of the GEPs: 0 <= i < n, and the caller guarantees n elements behind each pointer.
    let (pa, pb, pc) = unsafe {
        (
            builder.build_in_bounds_gep(f32_type, a, &[i], "pa")?,
            builder.build_in_bounds_gep(f32_type, b, &[i], "pb")?,
            builder.build_in_bounds_gep(f32_type, c, &[i], "pc")?,
        )
    };
    let va = builder.build_load(f32_type, pa, "va")?.into_float_value();
    let vb = builder.build_load(f32_type, pb, "vb")?.into_float_value();
    let sum = builder.build_float_add(va, vb, "sum")?;
    builder.build_store(pc, sum)?;
    builder.build_unconditional_branch(exit)?;

    builder.position_at_end(exit);
    builder.build_return(None)?;
    Ok(())
}

/// Compiles the [`ADD_F32_KERNEL`] kernel for `target` and returns the PTX text.
///
/// The PTX declares `.target <target.name()>`, the lowest PTX ISA `.version` that supports it, 64-bit
/// addresses, and one `.visible .entry qc_add_f32`. It is meant to pass `ptxas -arch=<target.name()>`
/// (the test suite checks this for every target) and to be loaded with `cuModuleLoadData`.
/// The function is thread safe; each call uses its own LLVM context.
pub fn emit_ptx(target: GpuTarget) -> Result<String, Error> {
    compile_ptx(&target_machine(target)?, "qc_ptx", "default<O2>", |c, m| {
        build_add_f32(c, m)
    })
}

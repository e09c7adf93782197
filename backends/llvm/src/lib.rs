//! qc's CPU backend: LLVM IR built with [inkwell] (LLVM 22), optimized with LLVM's new pass manager and
//! compiled to native x86-64 code in memory.
//!
//! The crate emits one fixed kernel, [`ADD_F32_SYMBOL`] (`qc_add_f32`), which proves the whole
//! toolchain path (IR construction, verification, `default<O2>` optimization, target machine, object
//! emission) end to end, and the quantized GEMV kernels of [`gemv`]: one kernel per weight format,
//! decoding the `qc_quant::blob` layout in registers, linked into a shared library, loaded and run on
//! a thread pool; [`gemm`] adds the GEMM kernels (`M > 1`, prefill) of the same formats on the same
//! decode, and [`gemm::emit_kernels_object`] compiles both kinds into one object; [`act8`] has the
//! int8-activation GEMV / GEMM kernels (C with intrinsics, exact integer dot products per group).
//! Lowering of whole qc IR modules builds on the same path.
//!
//! LLVM is linked dynamically (`libLLVM.so.22.1` from Debian's `llvm-22-dev`), see the workspace's
//! `.ci/install-toolchain.sh`.
#![deny(missing_docs)]

use std::str::FromStr;
use std::sync::Once;

use inkwell::builder::BuilderError;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use inkwell::{AddressSpace, IntPredicate, OptimizationLevel};

pub mod act8;
pub mod aot;
pub mod gemm;
pub mod gemv;

/// The C symbol of the kernel that [`emit_object`] compiles.
///
/// Its C prototype is
/// `void qc_add_f32(const float *a, const float *b, float *c, int64_t n);`
/// and it computes `c[i] = a[i] + b[i]` for `0 <= i < n` (nothing when `n <= 0`). `c` may alias `a` or `b`
/// exactly (in-place add); partial overlap is allowed too, because the vectorized loop is guarded by
/// LLVM's runtime alias checks.
pub const ADD_F32_SYMBOL: &str = "qc_add_f32";

/// The target triple of every object this crate emits (ELF, System V ABI).
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Errors of the CPU backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`CpuTarget::from_str`] got a name that is not a supported CPU target.
    #[error("unknown CPU target `{0}` (expected one of: x86-64-v3, x86-64-v4)")]
    UnknownTarget(String),
    /// LLVM has no backend registered for the triple (LLVM built without the X86 target).
    #[error("LLVM has no target for triple `{triple}`: {message}")]
    NoTarget {
        /// The triple asked for.
        triple: String,
        /// LLVM's message.
        message: String,
    },
    /// LLVM refused to create a target machine for the CPU.
    #[error("LLVM could not create a target machine for cpu `{0}`")]
    TargetMachine(String),
    /// An inkwell builder call failed (a bug in the IR construction).
    #[error("building LLVM IR failed: {0}")]
    Builder(#[from] BuilderError),
    /// The generated module failed LLVM's verifier (a bug in the IR construction).
    #[error("generated LLVM IR failed verification: {0}")]
    Verify(String),
    /// The optimization pipeline failed.
    #[error("LLVM optimization pipeline failed: {0}")]
    Passes(String),
    /// Code generation failed.
    #[error("LLVM code generation failed: {0}")]
    Codegen(String),
    /// A weight format (or group size) that the kernels do not handle; the message names the reason.
    #[error("{0}")]
    Unsupported(String),
    /// Operand shapes or lengths that do not fit (the message says which).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Linking the object into a shared library failed.
    #[error("linking the kernels failed: {0}")]
    Link(String),
    /// Loading the shared library or one of its symbols failed.
    #[error("loading the kernels failed: {0}")]
    Load(String),
    /// The host CPU lacks the instructions of the target, so its code cannot run here.
    #[error("the host CPU cannot run {0} code")]
    HostUnsupported(CpuTarget),
    /// Decoding a weight blob for the reference failed.
    #[error(transparent)]
    Quant(#[from] qc_quant::QuantError),
}

/// A CPU that the backend can generate code for.
///
/// The names are LLVM's x86-64 micro-architecture levels: `x86-64-v3` (AVX2, FMA, BMI2) and `x86-64-v4`
/// (adds AVX-512 F/BW/CD/DQ/VL). Code for a level runs on every CPU that implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuTarget {
    /// `x86-64-v3`: AVX2 + FMA (Haswell and later, Zen 1 and later).
    X86_64V3,
    /// `x86-64-v4`: AVX-512 (Skylake-SP and later, Zen 4 and later).
    X86_64V4,
}

impl CpuTarget {
    /// Every supported CPU target, in ascending feature order.
    pub const ALL: [CpuTarget; 2] = [CpuTarget::X86_64V3, CpuTarget::X86_64V4];

    /// The LLVM CPU name, which is also the name accepted by [`CpuTarget::from_str`] and `--target`.
    pub fn cpu_name(self) -> &'static str {
        match self {
            CpuTarget::X86_64V3 => "x86-64-v3",
            CpuTarget::X86_64V4 => "x86-64-v4",
        }
    }
}

impl CpuTarget {
    /// Whether the host CPU implements every instruction set of this level (so its code can run here).
    pub fn host_supports(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let v3 = std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("bmi2")
                && std::is_x86_feature_detected!("f16c");
            match self {
                CpuTarget::X86_64V3 => v3,
                CpuTarget::X86_64V4 => {
                    v3 && std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512cd")
                        && std::is_x86_feature_detected!("avx512dq")
                        && std::is_x86_feature_detected!("avx512vl")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// The highest level the host CPU runs, if any.
    pub fn best_for_host() -> Option<CpuTarget> {
        CpuTarget::ALL.into_iter().rev().find(|t| t.host_supports())
    }
}

impl std::fmt::Display for CpuTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.cpu_name())
    }
}

impl FromStr for CpuTarget {
    type Err = Error;

    /// Parses exactly the names returned by [`CpuTarget::cpu_name`].
    fn from_str(s: &str) -> Result<Self, Error> {
        CpuTarget::ALL
            .into_iter()
            .find(|t| t.cpu_name() == s)
            .ok_or_else(|| Error::UnknownTarget(s.to_string()))
    }
}

fn init_x86() {
    static INIT: Once = Once::new();
    INIT.call_once(|| Target::initialize_x86(&InitializationConfig::default()));
}

fn target_machine(target: CpuTarget) -> Result<TargetMachine, Error> {
    init_x86();
    let triple = TargetTriple::create(TRIPLE);
    let llvm_target = Target::from_triple(&triple).map_err(|e| Error::NoTarget {
        triple: TRIPLE.to_string(),
        message: e.to_string(),
    })?;
    llvm_target
        .create_target_machine(
            &triple,
            target.cpu_name(),
            "",
            OptimizationLevel::Aggressive,
            // Position independent, so that the object links into a shared library.
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| Error::TargetMachine(target.cpu_name().to_string()))
}

/// Builds the unoptimized `qc_add_f32` function (see [`ADD_F32_SYMBOL`]) into `module`.
fn build_add_f32<'ctx>(context: &'ctx Context, module: &Module<'ctx>) -> Result<(), Error> {
    let f32_type = context.f32_type();
    let i64_type = context.i64_type();
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
    let function = module.add_function(ADD_F32_SYMBOL, fn_type, Some(Linkage::External));

    let params = function.get_params();
    let a = params[0].into_pointer_value();
    let b = params[1].into_pointer_value();
    let c = params[2].into_pointer_value();
    let n = params[3].into_int_value();
    a.set_name("a");
    b.set_name("b");
    c.set_name("c");
    n.set_name("n");

    let entry = context.append_basic_block(function, "entry");
    let body = context.append_basic_block(function, "loop");
    let exit = context.append_basic_block(function, "exit");
    let builder = context.create_builder();

    builder.position_at_end(entry);
    let zero = i64_type.const_zero();
    let non_empty = builder.build_int_compare(IntPredicate::SGT, n, zero, "non_empty")?;
    builder.build_conditional_branch(non_empty, body, exit)?;

    builder.position_at_end(body);
    let i = builder.build_phi(i64_type, "i")?;
    let i_val = i.as_basic_value().into_int_value();
    // SAFETY of the GEPs: 0 <= i < n, and the caller guarantees n elements behind each pointer.
    let (pa, pb, pc) = unsafe {
        (
            builder.build_in_bounds_gep(f32_type, a, &[i_val], "pa")?,
            builder.build_in_bounds_gep(f32_type, b, &[i_val], "pb")?,
            builder.build_in_bounds_gep(f32_type, c, &[i_val], "pc")?,
        )
    };
    let va = builder.build_load(f32_type, pa, "va")?.into_float_value();
    let vb = builder.build_load(f32_type, pb, "vb")?.into_float_value();
    let sum = builder.build_float_add(va, vb, "sum")?;
    builder.build_store(pc, sum)?;
    let next = builder.build_int_add(i_val, i64_type.const_int(1, false), "next")?;
    let more = builder.build_int_compare(IntPredicate::SLT, next, n, "more")?;
    builder.build_conditional_branch(more, body, exit)?;
    i.add_incoming(&[(&zero, entry), (&next, body)]);

    builder.position_at_end(exit);
    builder.build_return(None)?;
    Ok(())
}

fn emit(module_name: &str, target: CpuTarget, file_type: FileType) -> Result<Vec<u8>, Error> {
    let machine = target_machine(target)?;
    let context = Context::create();
    let module = context.create_module(module_name);
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    build_add_f32(&context, &module)?;
    module.verify().map_err(|e| Error::Verify(e.to_string()))?;
    module
        .run_passes("default<O2>", &machine, PassBuilderOptions::create())
        .map_err(|e| Error::Passes(e.to_string()))?;
    let buffer = machine
        .write_to_memory_buffer(&module, file_type)
        .map_err(|e| Error::Codegen(e.to_string()))?;
    Ok(buffer.as_slice().to_vec())
}

/// Compiles the `qc_add_f32` kernel ([`ADD_F32_SYMBOL`]) for `target` into a relocatable, position
/// independent x86-64 ELF object, returned as bytes.
///
/// `module_name` names the LLVM module (it appears as the object's source file name, not as a symbol).
/// The object defines exactly one global function, [`ADD_F32_SYMBOL`], with the C ABI, and references no
/// other symbol; it links into an executable or a shared library with any System V linker. The code
/// uses the instructions of `target` unconditionally: run it only on CPUs that implement that level.
/// The function is thread safe; each call uses its own LLVM context.
pub fn emit_object(module_name: &str, target: CpuTarget) -> Result<Vec<u8>, Error> {
    emit(module_name, target, FileType::Object)
}

/// Like [`emit_object`], but returns the generated AT&T-syntax assembly text instead of an object.
pub fn emit_assembly(module_name: &str, target: CpuTarget) -> Result<String, Error> {
    let bytes = emit(module_name, target, FileType::Assembly)?;
    String::from_utf8(bytes).map_err(|e| Error::Codegen(format!("assembly is not UTF-8: {e}")))
}

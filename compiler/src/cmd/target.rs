//! `qc compile --target xla|tpu` (and the CPU and GPU targets of cmd/cpu.rs and cmd/cuda.rs): the compiled module lowered by a backend and written as a `.qca`
//! artifact (qc_runtime::artifact).
//!
//! The XLA backend (qc-backend-hlo, which links MLIR) is behind the cargo feature `xla` of the `qc`
//! crate; a qc built without it says how to get it. Both targets emit the same StableHLO module
//! (`model.mlir`, entry `@main`); the manifest records which target was asked for.
//!
//! Shapes: the function's symbolic and dynamic dimensions are bound with `--shape NAME=N` (a symbol) or
//! `--shape ARG=D0xD1x...` (a whole argument), as `qc_backend_hlo::specialize` documents.

use std::path::Path;

use clap::ValueEnum;
use qc_ir::Module;
use qc_runtime::artifact::{self, Artifact, Manifest, Provenance, TensorSig};

use crate::output::{input_error, Failure};

/// The targets `qc compile --target` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// StableHLO for XLA (CPU, GPU, TPU clients): an artifact holding model.mlir.
    Xla,
    /// StableHLO for TPU through XLA (the same module as xla; products at HIGHEST precision).
    Tpu,
    /// x86-64 CPUs with AVX-512: a shared library with a C entry point, its header (cmd/cpu.rs; needs
    /// a qc built with the cargo feature `cpu`).
    #[value(name = "x86-64-v4")]
    X86_64V4,
    /// x86-64 CPUs with AVX2 and FMA: as x86-64-v4.
    #[value(name = "x86-64-v3")]
    X86_64V3,
    /// The CPU qc runs on: x86-64-v4 where it has AVX-512, else x86-64-v3 (the manifest records
    /// which).
    Native,
    /// NVIDIA Ampere (A100): PTX checked by ptxas and a launch plan (cmd/cuda.rs; needs a qc built
    /// with the cargo feature `cpu`).
    #[value(name = "sm_80")]
    Sm80,
    /// NVIDIA Ada (L4, L40): as sm_80.
    #[value(name = "sm_89")]
    Sm89,
    /// NVIDIA Hopper (H100, H200), architecture-specific: as sm_80 (`sm_90` is the same).
    #[value(name = "sm_90a", alias = "sm_90")]
    Sm90a,
    /// NVIDIA Blackwell data center (B200), architecture-specific: as sm_80 (`sm_100` is the same).
    #[value(name = "sm_100a", alias = "sm_100")]
    Sm100a,
    /// NVIDIA Blackwell consumer (RTX 50xx), architecture-specific: as sm_80 (`sm_120` is the same).
    #[value(name = "sm_120a", alias = "sm_120")]
    Sm120a,
}

impl Target {
    /// The name recorded in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Target::Xla => "xla",
            Target::Tpu => "tpu",
            Target::X86_64V4 => "x86-64-v4",
            Target::X86_64V3 => "x86-64-v3",
            Target::Native => "native",
            Target::Sm80 => "sm_80",
            Target::Sm89 => "sm_89",
            Target::Sm90a => "sm_90a",
            Target::Sm100a => "sm_100a",
            Target::Sm120a => "sm_120a",
        }
    }

    /// Whether this is a CPU target (cmd/cpu.rs) rather than StableHLO.
    pub fn is_cpu(self) -> bool {
        matches!(self, Target::X86_64V4 | Target::X86_64V3 | Target::Native)
    }

    /// `native` as the CPU level of this machine (an error where it has neither); other targets as
    /// they are.
    pub fn resolve(self) -> Result<Target, Failure> {
        if self != Target::Native {
            return Ok(self);
        }
        #[cfg(feature = "cpu")]
        {
            match qc_backend_llvm::CpuTarget::best_for_host() {
                Some(qc_backend_llvm::CpuTarget::X86_64V4) => Ok(Target::X86_64V4),
                Some(qc_backend_llvm::CpuTarget::X86_64V3) => Ok(Target::X86_64V3),
                None => Err(input_error(
                    "--target native: this CPU has neither AVX-512 (x86-64-v4) nor AVX2 and FMA \
                     (x86-64-v3)",
                )),
            }
        }
        #[cfg(not(feature = "cpu"))]
        Ok(self)
    }

    /// Whether this is an NVIDIA GPU target (cmd/cuda.rs; built with the cargo feature `cpu`).
    pub fn is_gpu(self) -> bool {
        matches!(
            self,
            Target::Sm80 | Target::Sm89 | Target::Sm90a | Target::Sm100a | Target::Sm120a
        )
    }

    /// Whether this target needs the cargo feature `cpu` (the CPU and GPU targets).
    pub fn needs_cpu_feature(self) -> bool {
        self.is_cpu() || self.is_gpu()
    }
}

/// Whether this build of qc has the CPU backend.
pub const HAS_CPU: bool = cfg!(feature = "cpu");

/// Whether this build of qc has the XLA backend.
pub const HAS_XLA: bool = cfg!(feature = "xla");

/// The quantization formats of `m`'s tensor types, as IR spells them, sorted and unique.
pub fn formats_used(m: &Module) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for f in &m.funcs {
        for i in 0..f.num_values() {
            if let Some(q) = f.value(qc_ir::Value(i as u32)).ty.elem.as_quant() {
                out.insert(q.to_string());
            }
        }
    }
    out.into_iter().collect()
}

/// Bytes of the resources (weights) `m` holds.
fn constant_bytes(m: &Module) -> u64 {
    m.resources
        .iter()
        .map(|(_, b)| b.bytes().map_or(0, |b| b.len() as u64))
        .sum()
}

fn dtype(e: &qc_ir::ElemType) -> String {
    match e {
        qc_ir::ElemType::Quant(_) => "f32".into(),
        e => e.to_string(),
    }
}

/// Lowers function `func` of the compiled module `m` for `target` and writes the artifact to `out`.
/// `model` is the input model file (hashed into the provenance), `pipeline` the pass pipeline that ran,
/// `shapes` the `--shape` bindings.
pub fn write_artifact(
    target: Target,
    m: &Module,
    func: &str,
    shapes: &[String],
    model: &Path,
    pipeline: &str,
    out: &Path,
) -> Result<(), Failure> {
    if target.is_gpu() {
        #[cfg(feature = "cpu")]
        return crate::cmd::cuda::write_artifact(target, m, func, shapes, model, pipeline, out);
        #[cfg(not(feature = "cpu"))]
        return Err(input_error(format!(
            "this qc was built without the GPU backend: rebuild it with `cargo build --release -p qc \
             --features cpu` to use --target {}",
            target.name()
        )));
    }
    if target.is_cpu() {
        #[cfg(feature = "cpu")]
        return crate::cmd::cpu::write_artifact(target, m, func, shapes, model, pipeline, out);
        #[cfg(not(feature = "cpu"))]
        return Err(input_error(format!(
            "this qc was built without the CPU backend: rebuild it with `cargo build --release -p qc \
             --features cpu` to use --target {}",
            target.name()
        )));
    }
    let (mlir, specialized) = lower(m, func, shapes)?;
    let manifest = manifest(target, m, &specialized, shapes, model, pipeline)?;
    let a = Artifact::new(manifest, vec![("model.mlir".into(), mlir.into_bytes())])
        .map_err(|e| Failure::Internal(format!("internal error: {e}\n")))?;
    artifact::write(out, &a).map_err(|e| input_error(e.to_string()))
}

/// The manifest of an artifact for `target` of the compiled module `m`, whose function after shape
/// specialization is the only function of `specialized` (parts are filled in by `Artifact::new`).
pub fn manifest(
    target: Target,
    m: &Module,
    specialized: &Module,
    shapes: &[String],
    model: &Path,
    pipeline: &str,
) -> Result<Manifest, Failure> {
    let f = &specialized.funcs[0];
    let sig = |v: qc_ir::Value, name: String| TensorSig {
        name,
        shape: f.ty(v).static_shape().unwrap_or_default(),
        dtype: dtype(&f.ty(v).elem),
    };
    let inputs = f
        .args
        .iter()
        .map(|&a| sig(a, f.value(a).name.clone().unwrap_or_default()))
        .collect();
    let outputs = f
        .ret
        .iter()
        .zip(crate::cmd::run::output_names(f))
        .map(|(&v, n)| sig(v, n))
        .collect();
    let model_bytes = std::fs::read(model)
        .map_err(|e| input_error(format!("cannot read {}: {e}", model.display())))?;
    Ok(Manifest {
        format_version: artifact::FORMAT_VERSION,
        target: target.name().into(),
        entry: ENTRY.into(),
        inputs,
        outputs,
        formats: formats_used(m),
        constant_bytes: constant_bytes(m),
        parts: Vec::new(),
        provenance: Provenance {
            qc_version: env!("CARGO_PKG_VERSION").into(),
            pipeline: pipeline.into(),
            model: model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            model_sha256: artifact::sha256_hex(&model_bytes),
            shapes: shapes.to_vec(),
        },
    })
}

const ENTRY: &str = "main";

#[cfg(feature = "xla")]
fn lower(m: &Module, func: &str, shapes: &[String]) -> Result<(String, Module), Failure> {
    let mut b = qc_backend_hlo::ShapeBindings::new();
    for s in shapes {
        b.add(s).map_err(|e| input_error(format!("--shape: {e}")))?;
    }
    let render = |d: qc_ir::Diagnostic| Failure::Input(d.render(None));
    let specialized = qc_backend_hlo::specialize(m, func, &b).map_err(render)?;
    let text = qc_backend_hlo::lower_module_with_shapes(m, func, &b).map_err(render)?;
    debug_assert_eq!(qc_backend_hlo::ENTRY, ENTRY);
    Ok((text, specialized))
}

#[cfg(not(feature = "xla"))]
fn lower(_: &Module, _: &str, _: &[String]) -> Result<(String, Module), Failure> {
    Err(input_error(
        "this qc was built without the XLA backend (it links MLIR): rebuild it with \
         `cargo build --release -p qc --features xla` (scripts/test.sh and scripts/demo.sh do) to use \
         --target xla or tpu",
    ))
}

/// `qc compile --emit mlir`: function `func` of the compiled module `m` exported to upstream MLIR
/// dialects (func, arith, math, tensor, linalg; qc_backend_hlo::upstream documents the representation),
/// after specializing its shapes with the `--shape` bindings `shapes`. Needs the cargo feature `xla`.
#[cfg(feature = "xla")]
pub fn export_mlir(m: &Module, func: &str, shapes: &[String]) -> Result<String, Failure> {
    let mut b = qc_backend_hlo::ShapeBindings::new();
    for s in shapes {
        b.add(s).map_err(|e| input_error(format!("--shape: {e}")))?;
    }
    qc_backend_hlo::upstream::export_module(m, func, &b).map_err(|d| Failure::Input(d.render(None)))
}

/// `qc compile --emit mlir` without the MLIR backend: says how to get it.
#[cfg(not(feature = "xla"))]
pub fn export_mlir(_: &Module, _: &str, _: &[String]) -> Result<String, Failure> {
    Err(input_error(
        "this qc was built without MLIR (the `xla` cargo feature): rebuild it with \
         `cargo build --release -p qc --features xla` to use --emit mlir",
    ))
}

//! qc's XLA backend: StableHLO modules built through MLIR 22's C API ([melior]) and checked by MLIR's
//! own verifier.
//!
//! The StableHLO dialect is not part of upstream MLIR, so its ops are built as *unregistered* operations
//! (the context allows unregistered dialects) and printed in MLIR's generic form
//! (`"stablehlo.add"(%a, %b) : (...) -> ...`), which every StableHLO consumer (XLA, JAX's
//! `jax.extend`/`mlir` loaders, `stablehlo-opt`) parses. The surrounding `builtin.module`, `func.func` and
//! `func.return` are upstream ops and are fully verified, including type agreement between the function
//! signature, the ops and the return. A few elementwise functions StableHLO lacks (`erf`, `tan`, the
//! inverse and hyperbolic trigonometric functions) are CHLO ops (`chlo.erf`), as JAX emits them; XLA
//! lowers them.
//!
//! [`lower_module`] lowers a whole qc function (after import and canonicalize, optionally after the
//! quantization passes) to a module with one public function `@main`: first [`specialize`] makes every
//! shape static from the argument shapes ([`ShapeBindings`]) and folds the shape arithmetic, then each op
//! becomes StableHLO (`lower.rs`: nn ops, one function per family; `quant.rs`: quantized weights decoded
//! in the module, activation quantization, Hadamard rotations). An op the backend cannot lower is a
//! diagnostic naming the op and its location. Output is deterministic: the same module and bindings
//! give the same text.
//!
//! [`emit_add`] builds one fixed program (the toolchain check of the first issue).
#![deny(missing_docs)]

use std::cell::RefCell;
use std::rc::Rc;

mod build;
mod lower;
mod quant;
pub mod specialize;
pub mod upstream;

pub use quant::check_activation_format;
pub use specialize::{specialize, ShapeBindings};

use qc_ir::Diagnostic;

use melior::dialect::{func, DialectHandle};
use melior::ir::attribute::{StringAttribute, TypeAttribute};
use melior::ir::operation::{OperationBuilder, OperationLike};
use melior::ir::r#type::{FunctionType, RankedTensorType};
use melior::ir::{Block, BlockLike, Location, Module, Region, RegionLike, Type};
use melior::Context;

/// The name of the function that [`emit_add`] defines.
pub const ADD_FUNCTION: &str = "add";

/// Errors of the StableHLO backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// MLIR rejected the module: a syntax error, or a failure of MLIR's verifier (which MLIR's parser
    /// also runs). Holds MLIR's diagnostics, one a line, each prefixed with its location.
    #[error("MLIR rejected the module:\n{0}")]
    Rejected(String),
    /// melior refused to build an operation (a bug in this crate's IR construction).
    #[error("building an MLIR operation failed: {0}")]
    Build(#[from] melior::Error),
}

/// An MLIR context set up for StableHLO emission, plus the diagnostics it reported.
struct HloContext {
    context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
}

impl HloContext {
    fn new() -> Self {
        let context = Context::new();
        // Only the upstream dialects that the emitted modules use; `builtin` is always loaded.
        DialectHandle::func().load_dialect(&context);
        // StableHLO ops are unregistered (generic form).
        context.set_allow_unregistered_dialects(true);
        let diagnostics = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&diagnostics);
        context.attach_diagnostic_handler(move |diagnostic| {
            sink.borrow_mut()
                .push(format!("{}: {}", diagnostic.location(), diagnostic));
            true // handled: do not print to stderr
        });
        HloContext {
            context,
            diagnostics,
        }
    }

    fn take_diagnostics(&self) -> String {
        std::mem::take(&mut *self.diagnostics.borrow_mut()).join("\n")
    }

    /// Verifies `module` and returns its text, or [`Error::Rejected`] with MLIR's diagnostics.
    fn verified_text(&self, module: &Module) -> Result<String, Error> {
        if module.as_operation().verify() {
            Ok(module.as_operation().to_string())
        } else {
            Err(Error::Rejected(self.take_diagnostics()))
        }
    }
}

/// Builds, verifies and prints a StableHLO module with one function,
/// `func.func @add(%a: tensor<SHAPExf32>, %b: tensor<SHAPExf32>) -> tensor<SHAPExf32>`, whose body is a
/// single `stablehlo.add` of its two arguments followed by `func.return` of the sum.
///
/// `shape` is the static tensor shape (an empty slice is a rank-0 tensor); every dimension must be
/// non-negative and static, which `u64` and the absence of a dynamic marker guarantee. The returned text
/// is the module in MLIR's textual form, as printed by MLIR after it verified the module; it parses back
/// with [`verify_text`]. The function is thread safe: each call uses its own MLIR context.
pub fn emit_add(shape: &[u64]) -> Result<String, Error> {
    let hlo = HloContext::new();
    let context = &hlo.context;
    let location = Location::unknown(context);
    let tensor: Type = RankedTensorType::new(shape, Type::float32(context), None).into();
    let function_type = FunctionType::new(context, &[tensor, tensor], &[tensor]);

    let block = Block::new(&[(tensor, location), (tensor, location)]);
    let sum = block
        .append_operation(
            OperationBuilder::new("stablehlo.add", location)
                .add_operands(&[block.argument(0)?.into(), block.argument(1)?.into()])
                .add_results(&[tensor])
                .build()?,
        )
        .result(0)?
        .into();
    block.append_operation(func::r#return(&[sum], location));
    let region = Region::new();
    region.append_block(block);

    let module = Module::new(location);
    module.body().append_operation(func::func(
        context,
        StringAttribute::new(context, ADD_FUNCTION),
        TypeAttribute::new(function_type.into()),
        region,
        &[],
        location,
    ));
    hlo.verified_text(&module)
}

/// Parses `text` as an MLIR module (StableHLO ops in generic form allowed), verifies it with MLIR's
/// verifier and returns it re-printed by MLIR.
///
/// A syntax error or a verifier failure is [`Error::Rejected`] with MLIR's diagnostics, each with its
/// location (`loc("-":LINE:COL)` for text).
/// The function is thread safe: each call uses its own MLIR context.
pub fn verify_text(text: &str) -> Result<String, Error> {
    let hlo = HloContext::new();
    let module =
        Module::parse(&hlo.context, text).ok_or_else(|| Error::Rejected(hlo.take_diagnostics()))?;
    hlo.verified_text(&module)
}

/// The name of the function [`lower_module`] emits (XLA clients run `@main`).
pub const ENTRY: &str = "main";

/// Lowers function `func` of `m`, whose argument shapes must all be static, to a StableHLO module: MLIR
/// text that MLIR parsed back and verified (see the crate documentation). The same as
/// [`lower_module_with_shapes`] with no bindings.
pub fn lower_module(m: &qc_ir::Module, func: &str) -> Result<String, Diagnostic> {
    lower_module_with_shapes(m, func, &ShapeBindings::new())
}

/// Lowers function `func` of `m` to a StableHLO module with one public function `@main`, after
/// specializing its symbolic and dynamic dimensions with `bindings` ([`specialize`] states the rule).
///
/// `@main` takes the function's arguments (integers as signless `iN`, `uiN` for unsigned, `i1` for
/// booleans) and returns its results; a quantized result is returned dequantized to f32, as the
/// reference interpreter does. Errors are diagnostics at the offending op (an op or format the backend
/// does not lower, a shape that stays dynamic, an elided resource); a module MLIR rejects is an error
/// too (a bug in the backend). The text is deterministic.
pub fn lower_module_with_shapes(
    m: &qc_ir::Module,
    func: &str,
    bindings: &ShapeBindings,
) -> Result<String, Diagnostic> {
    let s = specialize(m, func, bindings)?;
    let f = &s.funcs[0];
    let hlo = HloContext::new();
    let context = &hlo.context;
    let location = Location::unknown(context);
    let module = Module::new(location);
    let block = Block::new(&[]);
    let arg_err = |i: usize, e: String| {
        Diagnostic::error(f.loc.clone(), format!("argument {i} of @{}: {e}", f.name))
    };
    let mut arg_types = Vec::new();
    {
        let b = build::B::new(context, &block, location);
        let mut args = Vec::new();
        for (i, &a) in f.args.iter().enumerate() {
            let (shape, e) = lower::emitted(f.ty(a)).map_err(|e| arg_err(i, e))?;
            let ty = b.ty(&shape, e).map_err(|e| arg_err(i, e))?;
            let v = block.add_argument(ty, location);
            arg_types.push(ty);
            args.push(b.wrap(v, &shape, e));
        }
        let results = lower::lower_func(&b, &s, f, args)?;
        let result_types: Vec<Type> = results
            .iter()
            .map(|(s, e)| b.ty(s, *e))
            .collect::<Result<_, _>>()
            .map_err(|e| Diagnostic::error(f.ret_loc.clone(), e))?;
        let region = Region::new();
        region.append_block(block);
        let function_type = FunctionType::new(context, &arg_types, &result_types);
        module.body().append_operation(func::func(
            context,
            StringAttribute::new(context, ENTRY),
            TypeAttribute::new(function_type.into()),
            region,
            &[],
            location,
        ));
    }
    hlo.verified_text(&module).map_err(|e| {
        Diagnostic::error(
            f.loc.clone(),
            format!(
                "internal error: the StableHLO module of @{} does not verify: {e}",
                f.name
            ),
        )
    })
}

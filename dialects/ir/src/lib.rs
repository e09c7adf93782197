//! qc-ir: the core of qc's intermediate representation.
//!
//! - [`module`]: modules, functions, ops and SSA values;
//! - [`types`] and [`quant`]: tensor types, whose element may be a quantization format;
//! - [`attr`] and [`resource`]: attributes and out-of-line constants;
//! - [`ops`]: op declaration tables ([`declare_ops!`]) and the op registry;
//! - [`parser`], [`printer`]: the text form (docs/IR.md), which round-trips;
//! - [`verify`]: the verifier, reporting every error with its location;
//! - [`pass`]: the pass trait, pipelines and the pass manager;
//! - [`diag`]: located diagnostics.
//!
//! This crate links neither LLVM nor MLIR.
#![deny(missing_docs)]

pub mod attr;
pub mod diag;
pub mod module;
pub mod ops;
pub mod parser;
pub mod pass;
pub mod printer;
pub mod quant;
pub mod resource;
pub mod types;
pub mod util;
pub mod verify;

pub use attr::{Attribute, Attrs, DenseData};
pub use diag::{Diagnostic, Diagnostics, Location};
pub use module::{Func, Module, Op, Value};
pub use ops::{OpDef, Registry};
pub use parser::{parse_module, parse_type, Source};
pub use printer::{print_module, write_module, PrintOptions};
pub use quant::QuantType;
pub use types::{Dim, ElemType, TensorType};
pub use verify::verify_module;

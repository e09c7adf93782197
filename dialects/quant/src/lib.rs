//! qc-quant: the quant dialect (its ops) and the numerics of every quantization format.
//!
//! The format *type* (parameters, names, text form) is `qc_ir::quant`; this crate gives it meaning.
#![deny(missing_docs)]

pub mod ops;

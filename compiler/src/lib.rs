//! qc: the quantization compiler's driver, behind the `qc` binary.
//!
//! [`registry`] and [`passes`] list what this build of qc knows; [`driver`] runs the subcommands and
//! turns every failure into a rendered diagnostic and an exit code.
#![deny(missing_docs)]

use qc_ir::Registry;

/// Every dialect this build knows: builtin `qc`, `nn`, `quant`.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(qc_nn::dialect());
    r.register(qc_quant::ops::dialect());
    r
}

pub mod cmd;
pub mod import;
pub use qc_runtime::npy;
pub mod output;
pub mod progress;

//! qc-passes: every transformation of qc IR, one file per pass.
//!
//! Each pass module exports an `INFO` registration; [`registry`] lists them all. Numerical passes state in
//! their doc comment what must stay equal and what must get better, and their tests measure it.
#![deny(missing_docs)]

pub mod calib;
pub mod calibrate;
pub mod canonicalize;
pub mod cse;
pub mod dce;
pub mod fold;
pub mod gptq;
pub mod lorc;
pub mod quantize;
pub mod reparam_exp_bias;
pub mod rotate;
pub mod smooth;
pub mod weights;

use qc_ir::pass::PassRegistry;

/// Every pass, in the order `qc opt --list-passes` shows them.
pub fn registry() -> PassRegistry {
    let mut r = PassRegistry::default();
    r.register(canonicalize::INFO);
    r.register(cse::INFO);
    r.register(dce::INFO);
    r.register(calibrate::INFO);
    r.register(quantize::INFO);
    r.register(rotate::INFO);
    r.register(gptq::INFO);
    r.register(smooth::INFO);
    r.register(reparam_exp_bias::INFO);
    r.register(lorc::INFO);
    r
}

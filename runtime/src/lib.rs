//! qc-runtime: executes qc modules.
//!
//! Today it holds the reference semantics of nn ops ([`interp`]), which the canonicalizer uses to fold
//! constants. The whole-module reference interpreter, the artifact loader and the executors grow here.
#![deny(missing_docs)]

pub mod interp;

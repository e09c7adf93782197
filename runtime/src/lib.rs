//! qc-runtime: executes qc modules.
//!
//! - [`interp`]: the reference semantics of each nn op (also used by the canonicalizer to fold constants);
//! - [`exec`]: the reference interpreter, running a whole function on concrete inputs;
//! - [`npy`]: NumPy .npy / .npz files (inputs, outputs, calibration data);
//! - [`artifact`]: the `.qca` container every backend writes (manifest, named parts).
//!
//! The artifact loader and the CPU and CUDA executors grow here.
#![deny(missing_docs)]

pub mod artifact;
pub mod exec;
pub mod interp;
pub mod linear;
pub mod npy;

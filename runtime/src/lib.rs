//! qc-runtime: executes qc modules.
//!
//! - [`interp`]: the reference semantics of each nn op (also used by the canonicalizer to fold constants);
//! - [`exec`]: the reference interpreter, running a whole function on concrete inputs;
//! - [`npy`]: NumPy .npy / .npz files (inputs, outputs, calibration data);
//! - [`artifact`]: the `.qca` container every backend writes (manifest, named parts);
//! - [`cuda`]: the CUDA executor of NVIDIA artifacts (the driver loaded at run time).
#![deny(missing_docs)]

pub mod artifact;
pub mod cuda;
pub mod exec;
pub mod interp;
pub mod linear;
pub mod npy;

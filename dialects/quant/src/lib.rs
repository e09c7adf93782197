//! qc-quant: the quant dialect (its ops) and the numerics of every quantization format.
//!
//! The format *type* (parameters, names, text form) is `qc_ir::quant`; this crate gives it meaning.
#![deny(missing_docs)]

pub mod blob;
pub mod codec;
pub mod error;
pub mod hadamard;
pub mod ops;
pub mod pack;
pub mod qsnr;
pub mod scale;
pub mod tensor;

pub use codec::{stochastic_bits, Codec};
pub use error::QuantError;
pub use tensor::{dequantize, quantize, NonFinitePolicy, QuantizeOptions, QuantizedTensor, Scales};

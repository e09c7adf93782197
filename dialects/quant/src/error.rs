//! The error type of every fallible operation in this crate.

use thiserror::Error;

/// Why a quantization, dequantization or packing request was refused. Messages are one sentence and name
/// the tensor (and the element index where one is at fault).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    /// The format's parameters are inconsistent (see `QuantType::validate`).
    #[error("invalid format: {0}")]
    InvalidFormat(String),
    /// The data length does not match the product of the shape.
    #[error(
        "tensor `{tensor}`: shape {shape:?} holds {expected} elements but the data has {actual}"
    )]
    ShapeMismatch {
        /// The tensor's name.
        tensor: String,
        /// The shape given.
        shape: Vec<usize>,
        /// The product of the shape.
        expected: usize,
        /// The number of values given.
        actual: usize,
    },
    /// The format does not fit the tensor's shape (axis out of range, dimension not a multiple of a group).
    #[error("tensor `{tensor}`: {message}")]
    BadLayout {
        /// The tensor's name.
        tensor: String,
        /// What does not fit.
        message: String,
    },
    /// A NaN or infinity where the policy is to refuse them.
    #[error("tensor `{tensor}`: element {index} is {value}, which format {format} cannot quantize (policy: error)")]
    NonFinite {
        /// The tensor's name.
        tensor: String,
        /// Flat (row-major) index of the offending element.
        index: usize,
        /// The value found.
        value: f32,
        /// The format's text.
        format: String,
    },
    /// A quantized tensor's parts are inconsistent with each other or with its format.
    #[error("quantized tensor `{tensor}`: {message}")]
    Corrupt {
        /// The tensor's name.
        tensor: String,
        /// What is inconsistent.
        message: String,
    },
    /// A code does not fit the element width.
    #[error("tensor `{tensor}`: code {code:#x} at element {index} does not fit {bits} bits")]
    CodeOutOfRange {
        /// The tensor's name.
        tensor: String,
        /// Flat index of the code.
        index: usize,
        /// The code found.
        code: u32,
        /// The element width.
        bits: u32,
    },
    /// A requested parameter is outside what the operation supports.
    #[error("{0}")]
    Unsupported(String),
}

//! ONNX: loading (`load`), the message definitions (`proto`), hardened external data (`external`).
//!
//! Entry point: [`load::load_model`], which returns a validated [`model::OnnxModel`].

pub mod convert;
pub mod external;
pub mod load;
pub mod model;
pub mod proto;
pub mod wire;

//! Importers: models in other formats into qc IR.

pub mod onnx;

//! qc-quant: quantization format numerics and the quant dialect.

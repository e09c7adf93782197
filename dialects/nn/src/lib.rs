//! qc-nn.

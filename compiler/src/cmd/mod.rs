//! The subcommands, one module each.

pub mod bench;
pub mod compile;
#[cfg(feature = "cpu")]
pub mod cpu;
#[cfg(feature = "cpu")]
pub mod cpu_kernels;
#[cfg(feature = "cpu")]
pub mod cuda;
pub mod cuda_plan;
pub mod cuda_run;
pub mod formats;
pub mod import;
pub mod inspect;
pub mod opt;
pub mod quantize;
pub mod report;
pub mod run;
pub mod target;

//! The subcommands, one module each.

pub mod formats;
pub mod import;
pub mod opt;
pub mod quantize;
pub mod run;

//! The subcommands, one module each.

pub mod formats;
pub mod opt;

//! qc-tests: the file-based golden tests, round-trip property tests and their helpers.
//!
//! A golden test is a `.qir` file whose first line says what to run:
//! `// RUN: qc opt [FLAGS]` with any `qc opt` flags. The snapshot (in tests/tests/snapshots/) holds the IR
//! dumps followed by the output IR, or, when qc rejects the input, `exit code N` and the rendered
//! diagnostics. Bless changes with `cargo insta review` (or `INSTA_UPDATE=always`).
#![deny(missing_docs)]

pub mod gen;

use std::path::Path;

use clap::Parser;
use qc::cmd::opt::{opt, OptArgs};
use qc_ir::Source;

#[derive(Parser)]
struct RunLine {
    #[command(flatten)]
    args: OptArgs,
}

/// Runs the golden test at `path` (relative to the tests/ folder, used as the file name in diagnostics)
/// and returns the text to snapshot. Panics when the RUN line is malformed: that is a broken test.
pub fn run_golden(root: &Path, rel: &str) -> String {
    let text = std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let first = text.lines().next().unwrap_or_default();
    let cmd = first
        .strip_prefix("// RUN: qc opt")
        .unwrap_or_else(|| panic!("{rel}: first line must be `// RUN: qc opt [FLAGS]`"));
    let words = std::iter::once("opt").chain(cmd.split_whitespace());
    let run = RunLine::try_parse_from(words).unwrap_or_else(|e| panic!("{rel}: bad RUN line: {e}"));
    let mut dumps = Vec::new();
    let base_dir = root
        .join(rel)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let source = Source {
        name: rel.into(),
        base_dir,
    };
    match opt(&text, &source, &run.args, &mut dumps) {
        Ok(ir) => format!("{}{ir}", String::from_utf8_lossy(&dumps)),
        Err(f) => format!("exit code {}\n{}", f.exit_code(), f.message()),
    }
}

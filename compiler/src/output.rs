//! How qc ends and writes: exit codes, stdout into a closed pipe, atomic output files.
//!
//! Exit codes: 0 success; 1 an internal error (a bug in qc, reported as such); 2 the input was rejected,
//! with a diagnostic on standard error. Output into a closed pipe (`qc ... | head`) ends quietly with 0.

use std::io::Write;
use std::path::Path;

/// Why a command failed.
#[derive(Debug)]
pub enum Failure {
    /// The input is invalid; the text is the rendered diagnostic(s). Exit code 2.
    Input(String),
    /// qc itself failed (a verifier error after a pass, an I/O failure writing output). Exit code 1.
    Internal(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Input(_) => 2,
            Failure::Internal(_) => 1,
        }
    }

    /// The text to print on standard error.
    pub fn message(&self) -> &str {
        match self {
            Failure::Input(m) | Failure::Internal(m) => m,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message().trim_end())
    }
}

/// A user-input failure from a one-line message, prefixed `error: ` unless it is already rendered.
pub fn input_error(msg: impl Into<String>) -> Failure {
    let msg = msg.into();
    if msg.contains(": error: ") || msg.starts_with("error: ") {
        Failure::Input(msg)
    } else {
        Failure::Input(format!("error: {msg}\n"))
    }
}

/// An environment failure (an output that cannot be written) from a one-line message. Exit code 1.
pub fn io_error(msg: impl Into<String>) -> Failure {
    Failure::Internal(format!("error: {}\n", msg.into()))
}

/// Writes `bytes` to standard output. A closed pipe ends the process quietly with exit code 0.
pub fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(Failure::Internal(format!(
            "error: cannot write to standard output: {e}\n"
        ))),
    }
}

/// Writes `bytes` to `path` atomically, or to standard output when `path` is None or `-`.
pub fn write_output(path: Option<&Path>, bytes: &[u8]) -> Result<(), Failure> {
    match path {
        None => write_stdout(bytes),
        Some(p) if p.as_os_str() == "-" => write_stdout(bytes),
        Some(p) => qc_ir::util::write_atomic(p, bytes).map_err(input_error),
    }
}

/// Reads a text input: a file, or standard input for `-`. Returns the text and the name for diagnostics.
pub fn read_text_input(path: &Path) -> Result<(String, String), Failure> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| input_error(format!("cannot read standard input: {e}")))?;
        return Ok((s, "<stdin>".into()));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| input_error(format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        input_error(format!(
            "{}: the file is not UTF-8 (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok((text, path.display().to_string()))
}

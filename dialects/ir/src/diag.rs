//! Diagnostics with locations.
//!
//! Every error that reaches a user carries a [`Location`]: `file:line:col` for IR text, the ONNX node and
//! field path for imported models. [`Diagnostic::render`] produces the text the CLI prints; the exit code for
//! any diagnostic about user input is 2.

use std::fmt;
use std::sync::Arc;

/// Where something came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Location {
    /// No known source.
    #[default]
    Unknown,
    /// A position in a text file; `line` and `col` are 1-based, `col` counts characters.
    Text {
        /// The file name as given by the user (`-` or `<stdin>` for standard input).
        file: Arc<str>,
        /// 1-based line.
        line: u32,
        /// 1-based column in characters.
        col: u32,
    },
    /// A node or field of an imported model, e.g. `graph.node[3]` / `"attention/MatMul"`.
    Model {
        /// The model file.
        file: Arc<str>,
        /// The field path inside the model, e.g. `graph.initializer[3].external_data["location"]`.
        path: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Unknown => write!(f, "<unknown>"),
            Location::Text { file, line, col } => write!(f, "{file}:{line}:{col}"),
            Location::Model { file, path } => write!(f, "{file}: {path}"),
        }
    }
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The input is rejected.
    Error,
    /// The input is accepted but suspicious.
    Warning,
    /// Extra context attached to another diagnostic.
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        })
    }
}

/// One message about the input, with where it applies and optional notes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error, warning or note.
    pub severity: Severity,
    /// Where the problem is.
    pub loc: Location,
    /// One sentence, lower case, no trailing period (rustc style).
    pub message: String,
    /// Secondary messages, each with its own location.
    pub notes: Vec<(Location, String)>,
}

impl Diagnostic {
    /// An error at `loc`.
    pub fn error(loc: Location, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            loc,
            message: message.into(),
            notes: Vec::new(),
        }
    }

    /// Adds a note (builder style).
    pub fn with_note(mut self, loc: Location, message: impl Into<String>) -> Self {
        self.notes.push((loc, message.into()));
        self
    }

    /// Renders the diagnostic as `LOC: error: MESSAGE`, followed by the source line and a caret when `source`
    /// is the text of the file the location points into, then the notes.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = String::new();
        render_one(&mut out, &self.loc, self.severity, &self.message, source);
        for (loc, note) in &self.notes {
            render_one(&mut out, loc, Severity::Note, note, source);
        }
        out
    }
}

fn render_one(out: &mut String, loc: &Location, sev: Severity, msg: &str, source: Option<&str>) {
    use std::fmt::Write;
    let _ = writeln!(out, "{loc}: {sev}: {msg}");
    if let (Location::Text { line, col, .. }, Some(src)) = (loc, source) {
        if let Some(text) = src.lines().nth(*line as usize - 1) {
            let text: String = text
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            let pad = " ".repeat((*col as usize).saturating_sub(1).min(text.chars().count()));
            let _ = writeln!(out, "  {text}\n  {pad}^");
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render(None).trim_end())
    }
}

impl std::error::Error for Diagnostic {}

/// A list of diagnostics, as returned by the verifier (which reports every error at once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Renders all diagnostics, in order.
    pub fn render(&self, source: Option<&str>) -> String {
        self.0.iter().map(|d| d.render(source)).collect()
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.render(None).trim_end())
    }
}

impl std::error::Error for Diagnostics {}

//! Passes and the pass manager.
//!
//! A pass implements [`Pass`] and is registered once, as a [`PassInfo`] (kebab-case name, one-line
//! summary, options, constructor), in a [`PassRegistry`]. A pipeline string such as
//! `canonicalize,cse,gptq{bits=4,block=128}` is parsed against the registry (an option value may be
//! quoted, `calibrate{data="my data/x.npz"}`, with `\"` and `\\` escapes): an unknown pass or option is
//! a diagnostic that lists the known ones. The [`PassManager`] runs the pipeline, verifies after every pass
//! (unless disabled), and offers the IR-dump, timing and bisection instrumentation of [`Instrumentation`].
//!
//! The checklist for a new pass is docs/adding-a-pass.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::diag::{Diagnostic, Diagnostics, Location};
use crate::module::Module;
use crate::ops::Registry;
use crate::printer::{print_module, PrintOptions};
use crate::util::write_atomic;
use crate::verify::verify_module;

/// Whether a pass changed the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// The module was modified.
    Yes,
    /// The module is untouched.
    No,
}

impl Changed {
    /// `Yes` if `b`.
    pub fn from_bool(b: bool) -> Self {
        if b {
            Changed::Yes
        } else {
            Changed::No
        }
    }
}

/// What a pass sees besides the module.
pub struct PassContext<'a> {
    /// The ops known to this run.
    pub registry: &'a Registry,
    /// Where a long pass reports its progress (layer by layer).
    pub progress: &'a dyn Progress,
}

impl<'a> PassContext<'a> {
    /// A context that shows no progress.
    pub fn new(registry: &'a Registry) -> Self {
        PassContext {
            registry,
            progress: &NoProgress,
        }
    }
}

/// Progress of long passes. The driver shows a bar on a terminal and nothing otherwise; passes call
/// [`Progress::step`] after each item (a layer) and never print progress themselves.
pub trait Progress {
    /// `done` of `total` items of `pass` are finished; `item` names the last one.
    fn step(&self, pass: &str, done: usize, total: usize, item: &str);
}

/// A [`Progress`] that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn step(&self, _: &str, _: usize, _: usize, _: &str) {}
}

/// A transformation of a module.
pub trait Pass {
    /// The registered kebab-case name.
    fn name(&self) -> &'static str;
    /// Transforms `m`. An error is a diagnostic about the input (exit code 2), never a panic.
    fn run(&self, m: &mut Module, cx: &PassContext) -> Result<Changed, Diagnostic>;
}

/// One option a pass accepts.
#[derive(Clone, Copy, Debug)]
pub struct PassOption {
    /// The option name (`bits`).
    pub name: &'static str,
    /// One line of help, including the default.
    pub help: &'static str,
}

/// Option values given in a pipeline, as text; the pass's constructor converts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassOptions {
    values: BTreeMap<String, String>,
}

impl PassOptions {
    /// The raw text of option `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Option `name` parsed as `T`, or `default` when absent; the error names the option.
    pub fn parse_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map_err(|_| format!("option '{name}' has an invalid value '{s}'")),
        }
    }
}

/// A registered pass.
#[derive(Clone, Copy)]
pub struct PassInfo {
    /// Kebab-case name used in pipelines.
    pub name: &'static str,
    /// One line for listings.
    pub summary: &'static str,
    /// Accepted options.
    pub options: &'static [PassOption],
    /// Builds the pass from its options; the error is one sentence.
    pub build: fn(&PassOptions) -> Result<Box<dyn Pass>, String>,
}

/// Every pass a tool knows, in registration order.
#[derive(Clone, Default)]
pub struct PassRegistry {
    passes: Vec<PassInfo>,
}

impl PassRegistry {
    /// Registers a pass. Panics if the name is taken: that is a programming error, found by any test.
    pub fn register(&mut self, info: PassInfo) {
        assert!(
            self.get(info.name).is_none(),
            "pass '{}' registered twice",
            info.name
        );
        self.passes.push(info);
    }

    /// The pass named `name`.
    pub fn get(&self, name: &str) -> Option<&PassInfo> {
        self.passes.iter().find(|p| p.name == name)
    }

    /// All passes in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &PassInfo> {
        self.passes.iter()
    }

    /// Parses a pipeline string and builds its passes. Errors point into the pipeline text (`<pipeline>`,
    /// line 1, the column of the problem).
    pub fn parse_pipeline(&self, text: &str) -> Result<Pipeline, Diagnostic> {
        let err = |col: usize, msg: String| {
            Diagnostic::error(
                Location::Text {
                    file: "<pipeline>".into(),
                    line: 1,
                    col: col as u32 + 1,
                },
                msg,
            )
        };
        let mut out = Vec::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        let skip_ws = |i: &mut usize| {
            while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        let word = |i: &mut usize| {
            let s = *i;
            while *i < bytes.len()
                && (bytes[*i].is_ascii_alphanumeric() || bytes[*i] == b'-' || bytes[*i] == b'_')
            {
                *i += 1;
            }
            &text[s..*i]
        };
        skip_ws(&mut i);
        if i == bytes.len() {
            return Ok(out);
        }
        loop {
            skip_ws(&mut i);
            let start = i;
            let name = word(&mut i);
            if name.is_empty() {
                return Err(err(i, "expected a pass name".into()));
            }
            let Some(info) = self.get(name) else {
                let known: Vec<&str> = self.passes.iter().map(|p| p.name).collect();
                return Err(err(
                    start,
                    format!("unknown pass '{name}'; known passes: {}", known.join(", ")),
                ));
            };
            let mut opts = PassOptions::default();
            skip_ws(&mut i);
            if i < bytes.len() && bytes[i] == b'{' {
                i += 1;
                loop {
                    skip_ws(&mut i);
                    if i < bytes.len() && bytes[i] == b'}' {
                        i += 1;
                        break;
                    }
                    let kpos = i;
                    let key = word(&mut i);
                    if key.is_empty() {
                        return Err(err(
                            i,
                            format!("expected an option name in the options of '{name}'"),
                        ));
                    }
                    if !info.options.iter().any(|o| o.name == key) {
                        let known: Vec<&str> = info.options.iter().map(|o| o.name).collect();
                        let list = if known.is_empty() {
                            "it takes none".to_string()
                        } else {
                            format!("known: {}", known.join(", "))
                        };
                        return Err(err(
                            kpos,
                            format!("unknown option '{key}' of pass '{name}'; {list}"),
                        ));
                    }
                    skip_ws(&mut i);
                    if i >= bytes.len() || bytes[i] != b'=' {
                        return Err(err(i, format!("expected '=' after option '{key}'")));
                    }
                    i += 1;
                    skip_ws(&mut i);
                    let vstart = i;
                    let value = if i < bytes.len() && bytes[i] == b'"' {
                        // A quoted value: any text, with \" and \\ escapes (paths with spaces or commas).
                        let mut v = String::new();
                        let mut chars = text[i + 1..].char_indices();
                        loop {
                            match chars.next() {
                                None => {
                                    return Err(err(
                                        vstart,
                                        format!("unterminated quoted value for option '{key}'"),
                                    ))
                                }
                                Some((j, '"')) => {
                                    i = i + 1 + j + 1;
                                    break;
                                }
                                Some((_, '\\')) => match chars.next() {
                                    Some((_, c)) => v.push(c),
                                    None => {
                                        return Err(err(
                                            vstart,
                                            format!("unterminated quoted value for option '{key}'"),
                                        ))
                                    }
                                },
                                Some((_, c)) => v.push(c),
                            }
                        }
                        v
                    } else {
                        while i < bytes.len() && !matches!(bytes[i], b',' | b'}' | b' ') {
                            i += 1;
                        }
                        if vstart == i {
                            return Err(err(i, format!("expected a value for option '{key}'")));
                        }
                        text[vstart..i].to_string()
                    };
                    if opts.values.insert(key.to_string(), value).is_some() {
                        return Err(err(kpos, format!("option '{key}' is given twice")));
                    }
                    skip_ws(&mut i);
                    if i < bytes.len() && bytes[i] == b',' {
                        i += 1;
                    } else if i >= bytes.len() || bytes[i] != b'}' {
                        return Err(err(i, "expected ',' or '}' in pass options".into()));
                    }
                }
            }
            let pass =
                (info.build)(&opts).map_err(|e| err(start, format!("pass '{name}': {e}")))?;
            out.push((name.to_string(), pass));
            skip_ws(&mut i);
            if i == bytes.len() {
                return Ok(out);
            }
            if bytes[i] != b',' {
                return Err(err(i, "expected ',' between passes".into()));
            }
            i += 1;
        }
    }
}

/// What the pass manager prints and checks around passes. Dumps go to the manager's dump writer
/// (standard error in the CLI), like mlir-opt.
#[derive(Clone, Debug, Default)]
pub struct Instrumentation {
    /// Skip the verifier after each pass (it runs by default).
    pub no_verify_each: bool,
    /// Print the IR before these passes.
    pub print_before: BTreeSet<String>,
    /// Print the IR after these passes.
    pub print_after: BTreeSet<String>,
    /// Print the IR after every pass.
    pub print_after_all: bool,
    /// Print the IR after every pass that changed it.
    pub print_after_change: bool,
    /// Write the IR after each pass to `DIR/NN_pass.qir` (NN counts from 01; 00_input.qir is the input).
    pub tree_dir: Option<PathBuf>,
    /// Print a timing report at the end.
    pub time_passes: bool,
    /// Run only the first N passes of the pipeline and log the decision for each (LLVM's opt-bisect-limit).
    pub bisect_limit: Option<usize>,
    /// Include resource bytes in dumps.
    pub print_resources: bool,
}

/// Why a pipeline stopped.
#[derive(Debug)]
pub enum PipelineError {
    /// A pass rejected the input (exit code 2).
    Pass {
        /// The pass.
        pass: String,
        /// Its diagnostic.
        diag: Diagnostic,
    },
    /// The IR did not verify after a pass: a compiler bug (exit code 1).
    Verify {
        /// The pass after which verification failed.
        pass: String,
        /// The errors.
        diags: Diagnostics,
    },
    /// A dump could not be written.
    Io(String),
}

impl std::fmt::Display for PipelineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PipelineError::Pass { pass, diag } => {
                write!(f, "{}\n(in pass '{pass}')", diag.render(None).trim_end())
            }
            PipelineError::Verify { pass, diags } => {
                write!(
                    f,
                    "internal error: the IR does not verify after pass '{pass}':\n{}",
                    diags.render(None).trim_end()
                )
            }
            PipelineError::Io(e) => f.write_str(e),
        }
    }
}

/// A parsed pipeline: each pass with the name it was registered under.
pub type Pipeline = Vec<(String, Box<dyn Pass>)>;

/// Runs a pipeline of passes with instrumentation.
pub struct PassManager {
    passes: Pipeline,
    /// The instrumentation in effect.
    pub instr: Instrumentation,
    /// Where passes report progress ([`NoProgress`] by default).
    pub progress: Box<dyn Progress>,
}

impl PassManager {
    /// A manager for already-built passes.
    pub fn new(passes: Pipeline, instr: Instrumentation) -> Self {
        PassManager {
            passes,
            instr,
            progress: Box::new(NoProgress),
        }
    }

    /// Runs every pass on `m`, writing dumps, bisect decisions and the timing report to `dumps`.
    pub fn run(
        &self,
        m: &mut Module,
        registry: &Registry,
        dumps: &mut dyn Write,
    ) -> Result<(), PipelineError> {
        let io = |e: std::io::Error| PipelineError::Io(format!("cannot write an IR dump: {e}"));
        let popts = if self.instr.print_resources {
            PrintOptions::full()
        } else {
            PrintOptions::dump()
        };
        let cx = PassContext {
            registry,
            progress: self.progress.as_ref(),
        };
        let mut timings: Vec<(String, Duration)> = Vec::new();
        let mut verify_time = Duration::ZERO;
        let total = Instant::now();
        if let Some(dir) = &self.instr.tree_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| PipelineError::Io(format!("cannot create {}: {e}", dir.display())))?;
            write_atomic(&dir.join("00_input.qir"), print_module(m, popts).as_bytes())
                .map_err(PipelineError::Io)?;
        }
        for (n, (name, pass)) in self.passes.iter().enumerate() {
            if let Some(limit) = self.instr.bisect_limit {
                let run = n < limit;
                writeln!(
                    dumps,
                    "BISECT: {}running pass ({}) {name}",
                    if run { "" } else { "NOT " },
                    n + 1
                )
                .map_err(io)?;
                if !run {
                    continue;
                }
            }
            if self.instr.print_before.contains(name) {
                write!(
                    dumps,
                    "// -----// IR Dump Before {name} //----- //\n{}\n",
                    print_module(m, popts)
                )
                .map_err(io)?;
            }
            let before = self
                .instr
                .print_after_change
                .then(|| print_module(m, PrintOptions::full()));
            let t = Instant::now();
            let changed = pass.run(m, &cx).map_err(|diag| PipelineError::Pass {
                pass: name.clone(),
                diag,
            })?;
            timings.push((name.clone(), t.elapsed()));
            if !self.instr.no_verify_each {
                let t = Instant::now();
                verify_module(m).map_err(|diags| PipelineError::Verify {
                    pass: name.clone(),
                    diags,
                })?;
                verify_time += t.elapsed();
            }
            let really_changed = match before {
                Some(b) => b != print_module(m, PrintOptions::full()),
                None => changed == Changed::Yes,
            };
            if self.instr.print_after_all
                || self.instr.print_after.contains(name)
                || (self.instr.print_after_change && really_changed)
            {
                write!(
                    dumps,
                    "// -----// IR Dump After {name} //----- //\n{}\n",
                    print_module(m, popts)
                )
                .map_err(io)?;
            }
            if let Some(dir) = &self.instr.tree_dir {
                let file = dir.join(format!("{:02}_{name}.qir", n + 1));
                write_atomic(&file, print_module(m, popts).as_bytes())
                    .map_err(PipelineError::Io)?;
            }
        }
        if self.instr.time_passes {
            dumps
                .write_all(timing_report(&timings, verify_time, total.elapsed()).as_bytes())
                .map_err(io)?;
        }
        Ok(())
    }
}

fn timing_report(timings: &[(String, Duration)], verify: Duration, total: Duration) -> String {
    let rule = "===-------------------------------------------------------------------------===";
    let mut s = format!("{rule}\n                         ... Execution time report ...\n{rule}\n");
    let tot = total.as_secs_f64().max(1e-12);
    let _ = writeln!(
        s,
        "  Total Execution Time: {:.4} seconds\n\n  ----Wall Time----  ----Name----",
        tot
    );
    let line = |s: &mut String, d: Duration, name: &str| {
        let _ = writeln!(
            s,
            "  {:>8.4} ({:>5.1}%)  {name}",
            d.as_secs_f64(),
            100.0 * d.as_secs_f64() / tot
        );
    };
    for (name, d) in timings {
        line(&mut s, *d, name);
    }
    line(&mut s, verify, "(A) verifier");
    line(&mut s, total, "Total");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl Pass for Nop {
        fn name(&self) -> &'static str {
            "nop"
        }
        fn run(&self, _: &mut Module, _: &PassContext) -> Result<Changed, Diagnostic> {
            Ok(Changed::No)
        }
    }

    fn registry() -> PassRegistry {
        let mut r = PassRegistry::default();
        r.register(PassInfo {
            name: "nop",
            summary: "records its option",
            options: &[PassOption {
                name: "data",
                help: "a path",
            }],
            build: |o| {
                // The value must arrive unquoted and unescaped.
                match o.get("data") {
                    Some("my data/x,y.npz") | Some("a\"b\\c") | Some("plain") | None => {
                        Ok(Box::new(Nop))
                    }
                    Some(v) => Err(format!("unexpected value {v:?}")),
                }
            },
        });
        r
    }

    #[test]
    fn quoted_option_values() {
        let r = registry();
        for ok in [
            "nop{data=\"my data/x,y.npz\"}",
            "nop{data=\"a\\\"b\\\\c\"},nop",
            "nop{ data = plain }",
        ] {
            assert!(r.parse_pipeline(ok).is_ok(), "{ok}");
        }
        let e = r.parse_pipeline("nop{data=\"open}").err().unwrap();
        assert!(e.to_string().contains("unterminated quoted value"), "{e}");
        let e = r.parse_pipeline("nop{data=other}").err().unwrap();
        assert!(e.to_string().contains("unexpected value"), "{e}");
    }
}

//! `qc opt`: parse IR, verify it, run a pass pipeline, print the result (like mlir-opt).

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;
use qc_ir::pass::{Instrumentation, PassManager, PassRegistry, PipelineError};
use qc_ir::{parse_module, print_module, verify_module, PrintOptions, Source};

use crate::output::{input_error, read_text_input, write_output, Failure};

/// Arguments of `qc opt`.
#[derive(Args, Debug, Clone, Default)]
pub struct OptArgs {
    /// The input .qir file; `-` reads standard input.
    #[arg(default_value = "-")]
    pub input: PathBuf,
    /// Write the output here (atomically) instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// The pass pipeline, e.g. `canonicalize,cse,dce` (empty: parse, verify and print).
    #[arg(long, default_value = "")]
    pub passes: String,
    /// List the registered passes and their options, then exit.
    #[arg(long)]
    pub list_passes: bool,
    /// IR dumps, timing, bisection and verification.
    #[command(flatten)]
    pub dumps: DumpArgs,
    /// Elide resource bytes in the output too.
    #[arg(long)]
    pub elide_resources: bool,
}

/// The instrumentation flags shared by `qc opt` and `qc compile`.
#[derive(Args, Debug, Clone, Default)]
pub struct DumpArgs {
    /// Print the IR before these passes (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "PASS")]
    pub print_ir_before: Vec<String>,
    /// Print the IR after these passes (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "PASS")]
    pub print_ir_after: Vec<String>,
    /// Print the IR after every pass.
    #[arg(long)]
    pub print_ir_after_all: bool,
    /// Print the IR after every pass that changed it.
    #[arg(long)]
    pub print_ir_after_change: bool,
    /// Write the IR after each pass to DIR/NN_PASS.qir (DIR/00_input.qir is the input).
    #[arg(long, value_name = "DIR")]
    pub print_ir_tree_dir: Option<PathBuf>,
    /// Print a timing report of the passes and the verifier to standard error.
    #[arg(long)]
    pub time_passes: bool,
    /// Run only the first N passes, logging each decision (BISECT: running pass (i) NAME).
    #[arg(long, value_name = "N")]
    pub opt_bisect_limit: Option<usize>,
    /// Do not run the verifier after each pass.
    #[arg(long)]
    pub no_verify_each: bool,
    /// Include resource bytes in IR dumps (dumps elide them by default).
    #[arg(long)]
    pub print_resources: bool,
}

impl DumpArgs {
    /// Checks the pass names of --print-ir-before/after against `passes`.
    pub fn check_names(&self, passes: &PassRegistry) -> Result<(), Failure> {
        let known: BTreeSet<&str> = passes.iter().map(|p| p.name).collect();
        for name in self.print_ir_before.iter().chain(&self.print_ir_after) {
            if !known.contains(name.as_str()) {
                let list: Vec<&str> = known.iter().copied().collect();
                return Err(input_error(format!(
                    "unknown pass '{name}' in --print-ir-before/after; known passes: {}",
                    list.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The pass manager's instrumentation for these flags.
    pub fn instrumentation(&self) -> Instrumentation {
        Instrumentation {
            no_verify_each: self.no_verify_each,
            print_before: self.print_ir_before.iter().cloned().collect(),
            print_after: self.print_ir_after.iter().cloned().collect(),
            print_after_all: self.print_ir_after_all,
            print_after_change: self.print_ir_after_change,
            tree_dir: self.print_ir_tree_dir.clone(),
            time_passes: self.time_passes,
            bisect_limit: self.opt_bisect_limit,
            print_resources: self.print_resources,
        }
    }
}

/// Maps a pipeline failure to the CLI's failure; `text` is the input for rendering diagnostics.
pub fn pipeline_failure(e: PipelineError, text: Option<&str>) -> Failure {
    match e {
        PipelineError::Pass { pass, diag } => {
            Failure::Input(format!("{}(in pass '{pass}')\n", diag.render(text)))
        }
        e @ PipelineError::Verify { .. } => Failure::Internal(format!("{e}\n")),
        PipelineError::Io(msg) => input_error(msg),
    }
}

/// Lists passes as `name  summary` with their options.
pub fn list_passes(passes: &PassRegistry) -> String {
    let mut s = String::from("Passes:\n");
    for p in passes.iter() {
        s += &format!("  {:<20}{}\n", p.name, p.summary);
        for o in p.options {
            s += &format!("      {}=<value>  {}\n", o.name, o.help);
        }
    }
    s
}

/// Runs `qc opt` on `text` (named by `source`) with `args`, writing IR dumps, bisect lines and the timing
/// report to `dumps` as the passes run; returns the final IR. The CLI wrapper does the other I/O.
pub fn opt(
    text: &str,
    source: &Source,
    args: &OptArgs,
    dumps: &mut dyn std::io::Write,
) -> Result<String, Failure> {
    let registry = crate::registry();
    let passes = qc_passes::registry();
    let render = |d: &qc_ir::Diagnostic| Failure::Input(d.render(Some(text)));
    let pipeline = passes
        .parse_pipeline(&args.passes)
        .map_err(|d| Failure::Input(d.render(Some(&args.passes))))?;
    args.dumps.check_names(&passes)?;
    let mut module = parse_module(text, source, &registry).map_err(|d| render(&d))?;
    verify_module(&module).map_err(|ds| Failure::Input(ds.render(Some(text))))?;
    let mut pm = PassManager::new(pipeline, args.dumps.instrumentation());
    pm.progress = crate::progress::for_stderr();
    pm.run(&mut module, &registry, dumps)
        .map_err(|e| pipeline_failure(e, Some(text)))?;
    let popts = if args.elide_resources {
        PrintOptions::dump()
    } else {
        PrintOptions::full()
    };
    Ok(print_module(&module, popts))
}

/// The CLI entry: reads the input, runs [`opt`], writes dumps to standard error and the IR to the output.
pub fn run(args: &OptArgs) -> Result<(), Failure> {
    if args.list_passes {
        return write_output(None, list_passes(&qc_passes::registry()).as_bytes());
    }
    let (text, name) = read_text_input(&args.input)?;
    let source = if args.input.as_os_str() == "-" {
        Source::named(&name)
    } else {
        Source::file(&args.input)
    };
    let ir = opt(&text, &source, args, &mut std::io::stderr().lock())?;
    write_output(args.output.as_deref(), ir.as_bytes())
}

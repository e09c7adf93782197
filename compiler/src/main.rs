//! The `qc` command line.

use clap::{Parser, Subcommand};
use qc::cmd;
use qc::output::{write_stdout, Failure};

/// qc, a quantization compiler: models and number formats in, fast and correct builds out.
#[derive(Parser)]
#[command(name = "qc", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model to a quantized build: --wformat, --aformat, --method, --rotate, --calib, ...
    Compile(cmd::compile::CompileArgs),
    /// Per-layer quantization error of a model across formats and methods (table; HTML with -o).
    Report(cmd::report::ReportArgs),
    /// Parse, verify and transform qc IR with a pass pipeline (like mlir-opt).
    Opt(cmd::opt::OptArgs),
    /// List every named quantization format with its parameters.
    Formats(FormatsArgs),
    /// Import an ONNX model into qc IR.
    Import(cmd::import::ImportArgs),
    /// Run a model (.onnx or .qir) with the reference interpreter.
    Run(cmd::run::RunArgs),
    /// Time a compiled CPU artifact (.qca): one JSON line with the best and median latency.
    Bench(cmd::bench::BenchArgs),
    /// Summarize a .qca artifact (target, formats, sizes, provenance); --extract DIR writes its parts.
    Inspect(cmd::inspect::InspectArgs),
    /// Quantize an array (.npy) to a format; writes codes, scales, packed bytes and the decoded values (.npz).
    Quantize(cmd::quantize::QuantizeArgs),
    /// Decode an .npz written by `qc quantize` back to an array (.npy).
    Dequantize(cmd::quantize::DequantizeArgs),
}

/// Arguments of `qc formats`.
#[derive(clap::Args)]
struct FormatsArgs {
    /// Print the quantization SNR (dB) of every named format on Gaussian, Laplace and Student-t(3)
    /// samples, with and without a 32-point block Hadamard rotation.
    #[arg(long)]
    qsnr: bool,
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Opt(args) => cmd::opt::run(&args),
        Command::Compile(a) => cmd::compile::run(&a),
        Command::Report(a) => cmd::report::run(&a),
        Command::Formats(a) if a.qsnr => {
            let mut out = Vec::new();
            cmd::quantize::run_formats_qsnr(&mut out)
                .map_err(|e| qc::output::io_error(e.to_string()))?;
            write_stdout(&out)
        }
        Command::Formats(_) => write_stdout(cmd::formats::table().as_bytes()),
        Command::Import(a) => cmd::import::run(&a),
        Command::Run(a) => cmd::run::run(&a),
        Command::Inspect(a) => cmd::inspect::run(&a),
        Command::Bench(a) => cmd::bench::run(&a),
        Command::Quantize(a) => cmd::quantize::run_quantize(&a),
        Command::Dequantize(a) => cmd::quantize::run_dequantize(&a),
    }
}

fn main() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("internal compiler error: qc panicked; this is a bug in qc, please report it with the input");
        default_hook(info);
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with code 0; usage errors to stderr with code 2.
            let code = if e.use_stderr() { 2 } else { 0 };
            if e.use_stderr() {
                let _ = e.print();
            } else {
                let _ = write_stdout(e.render().to_string().as_bytes());
            }
            std::process::exit(code);
        }
    };
    if let Err(f) = run(cli) {
        eprint!("{}", f.message());
        std::process::exit(f.exit_code());
    }
}

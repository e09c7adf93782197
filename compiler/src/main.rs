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
    /// Parse, verify and transform qc IR with a pass pipeline (like mlir-opt).
    Opt(cmd::opt::OptArgs),
    /// List every named quantization format with its parameters.
    Formats,
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Opt(args) => cmd::opt::run(&args),
        Command::Formats => write_stdout(cmd::formats::table().as_bytes()),
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

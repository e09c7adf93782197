//! `qc bench ARTIFACT.qca --input NAME=FILE.npy ...`: the latency of a compiled CPU artifact, measured
//! in-process (cmd/cpu.rs loads it as `qc run` does, runs `--warmup` untimed calls, then times `--reps`
//! calls) and printed as one JSON line. Threads: `OMP_NUM_THREADS` (the library's quantized products
//! run on OpenMP). Needs qc's cargo feature `cpu`. An artifact for an NVIDIA target runs on GPU 0
//! instead (cmd/cuda_run.rs; each timed run includes the input and output copies).

use std::path::PathBuf;

use crate::output::{write_stdout, Failure};

/// Arguments of `qc bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A .qca artifact for x86-64-v4 or x86-64-v3, or for sm_* (run on the GPU).
    pub artifact: PathBuf,
    /// An input: NAME=FILE.npy (repeat for each input).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// Timed calls.
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Untimed calls before them.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
}

/// Runs `qc bench`.
pub fn run(args: &BenchArgs) -> Result<(), Failure> {
    if crate::cmd::run::artifact_target(&args.artifact)
        .is_some_and(|t| crate::cmd::cuda_run::is_gpu_target(&t))
    {
        let line = crate::cmd::cuda_run::bench_artifact(args)?;
        return write_stdout(line.as_bytes());
    }
    #[cfg(feature = "cpu")]
    {
        let line = crate::cmd::cpu::bench_artifact(args)?;
        write_stdout(line.as_bytes())
    }
    #[cfg(not(feature = "cpu"))]
    {
        let _ = (args, write_stdout);
        Err(crate::output::input_error(
            "this qc was built without the CPU backend: rebuild it with `cargo build --release -p qc \
             --features cpu` to benchmark .qca artifacts",
        ))
    }
}

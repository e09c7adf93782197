//! `qc compile`: a model and number formats in, a quantized build out.
//!
//! The command assembles a pass pipeline from its flags ([`pipeline`]), runs it on the imported model
//! with the instrumentation of `qc opt`, and writes what `--emit` asks for. The pipeline it runs is
//! printed by `--print-pipeline` and can be replaced with `--passes`:
//!
//! ```text
//! canonicalize,cse,dce            simplify the imported graph (shape arithmetic folds away)
//! rotate{...}                     --rotate hadamard | block:N
//! calibrate{data=DATA}            --calib DATA (needed by --aformat, --smooth, gptq, mr-gptq)
//! smooth{alpha=A}                 --smooth A
//! reparam-exp-bias                --exp-bias (LLM-FP4: channel scales folded into weight exponents)
//! quantize{w=F,a=AF,...}          --method rtn (a=AF with --aformat, fp_search=true with --fp-search)
//! gptq{w=F,...} | lorc{rank=R,w=F}, then quantize{w=F}     --method gptq | mr-gptq, --lorc-rank
//!   calibrate{data=DATA},quantize{w=F,a=AF}   and with --aformat: activations of the quantized layers
//! dce
//! ```
//!
//! Emitting `qir` writes qc IR text: quantized weights are resources held in the file; float weights the
//! pipeline left untouched stay in the model's external data when the output is written into a folder
//! that contains it (referenced relative to the output), and are held in the output otherwise.
//!
//! `--target xla|tpu -o FILE.qca` instead lowers the compiled module with a backend and writes a `.qca`
//! artifact (`cmd/target.rs`; `--shape` binds symbolic dimensions); it needs qc's cargo feature `xla`.
//! `--target x86-64-v4|x86-64-v3` writes a shared library and its C header (`cmd/cpu.rs`, feature `cpu`).
//! `--target sm_80|sm_89|sm_90a|sm_100a|sm_120a` writes PTX checked by ptxas and a launch plan
//! (`cmd/cuda.rs`, feature `cpu`).
//!
//! `--emit mlir` writes the compiled module in upstream MLIR dialects (func, arith, math, tensor,
//! linalg) for IREE or `mlir-opt` (qc_backend_hlo::upstream documents the representation); shapes are
//! made static with `--shape`, as for `--target`, and it needs the cargo feature `xla` too.

use std::path::{Component, Path, PathBuf};

use clap::{Args, ValueEnum};
use qc_ir::pass::PassManager;
use qc_ir::quant::named_format;
use qc_ir::resource::Blob;
use qc_ir::{print_module, Module, PrintOptions};

use crate::cmd::opt::{pipeline_failure, DumpArgs};
use crate::output::{input_error, write_output, Failure};

/// The weight quantization method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Method {
    /// Round to nearest with a per-group clip search.
    #[default]
    Rtn,
    /// GPTQ (needs --calib).
    Gptq,
    /// MR-GPTQ: block-Hadamard-rotated GPTQ with format-aware scales, for mxfp4 and nvfp4 (needs --calib).
    MrGptq,
}

/// What `qc compile` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Emit {
    /// qc IR text after the pipeline.
    #[default]
    Qir,
    /// Upstream MLIR (func, arith, math, tensor, linalg; quantized weights as builtin low-precision
    /// codes, scales and an explicit dequantization), static shapes from --shape; needs the cargo
    /// feature `xla`.
    Mlir,
}

/// Arguments of `qc compile`.
#[derive(Args, Debug, Clone, Default)]
pub struct CompileArgs {
    /// The model: .onnx, or qc IR text (.qir).
    pub model: PathBuf,
    /// Weight format, a named format (`qc formats` lists them), e.g. nvfp4, int4_g128, mxfp4, fp8_e4m3.
    #[arg(long, value_name = "FORMAT")]
    pub wformat: Option<String>,
    /// Activation format; activation quantization needs --calib.
    #[arg(long, value_name = "FORMAT")]
    pub aformat: Option<String>,
    /// Weight quantization method.
    #[arg(long, value_enum, default_value_t = Method::Rtn)]
    pub method: Method,
    /// Hadamard rotation before quantization: none, hadamard (full) or block:N.
    #[arg(long, default_value = "none", value_name = "none|hadamard|block:N")]
    pub rotate: String,
    /// Low-rank compensation of the weight error with this rank (ZeroQuant-FP LoRC; with --method rtn).
    #[arg(long, value_name = "R")]
    pub lorc_rank: Option<usize>,
    /// SmoothQuant migration strength alpha in [0, 1] (needs --calib).
    #[arg(long, value_name = "ALPHA")]
    pub smooth: Option<f64>,
    /// LLM-FP4's pre-shifted exponent bias: per-channel power-of-two activation scales folded into the
    /// weights, so activations quantize per tensor (needs --calib).
    #[arg(long)]
    pub exp_bias: bool,
    /// LLM-FP4's format search: per layer, the minifloat exponent/mantissa split of the weight format's
    /// width with the least weight error (with --method rtn and a minifloat --wformat).
    #[arg(long)]
    pub fp_search: bool,
    /// Calibration data: an .npz, or a folder of .npy files, named after the model inputs
    /// (`NAME` for one run, `NAME.0`, `NAME.1`, ... for several).
    #[arg(long, value_name = "DATA")]
    pub calib: Option<PathBuf>,
    /// Leave float the layers whose weight or result name contains this text.
    #[arg(long, value_name = "PATTERN")]
    pub keep_float: Option<String>,
    /// Replace the pipeline the flags build with this one (same syntax as `qc opt --passes`).
    #[arg(long, value_name = "PIPELINE")]
    pub passes: Option<String>,
    /// Print the pipeline to standard output and exit.
    #[arg(long)]
    pub print_pipeline: bool,
    /// What to write.
    #[arg(long, value_enum, default_value_t = Emit::Qir)]
    pub emit: Emit,
    /// Lower the compiled model with a backend and write a .qca artifact (needs -o) instead of --emit's
    /// output: xla or tpu (StableHLO; needs a qc built with the cargo feature `xla`), x86-64-v4,
    /// x86-64-v3 or native (a shared library with a C entry point and its header; needs the cargo
    /// feature `cpu`), sm_80, sm_89, sm_90a, sm_100a or sm_120a (PTX checked by ptxas and a launch plan
    /// that `qc run --device cuda` executes; needs the cargo feature `cpu`).
    #[arg(long, value_enum, value_name = "TARGET")]
    pub target: Option<crate::cmd::target::Target>,
    /// With --target or --emit mlir: a size for symbolic or dynamic dimensions, NAME=N for the symbol
    /// [NAME], or ARG=D0xD1x... for the whole shape of argument ARG (repeatable).
    #[arg(long = "shape", value_name = "NAME=DIMS")]
    pub shapes: Vec<String>,
    /// Write the output here (atomically) instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// IR dumps, timing, bisection and verification (as `qc opt`).
    #[command(flatten)]
    pub dumps: DumpArgs,
}

fn check_format(flag: &str, name: &str) -> Result<(), Failure> {
    if named_format(name).is_none() {
        return Err(input_error(format!(
            "{flag} names no known format '{name}'; `qc formats` lists the named formats"
        )));
    }
    Ok(())
}

/// Quotes an option value for a pipeline string when it holds characters the pipeline syntax reserves.
fn opt_value(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:".contains(c))
    {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The pipeline string the flags of `args` ask for (`--passes` wins). Errors are about the flags.
pub fn pipeline(args: &CompileArgs) -> Result<String, Failure> {
    if let Some(p) = &args.passes {
        return Ok(p.clone());
    }
    let w = args.wformat.as_deref().ok_or_else(|| {
        input_error("qc compile needs --wformat FORMAT (or a whole pipeline with --passes)")
    })?;
    check_format("--wformat", w)?;
    if let Some(a) = &args.aformat {
        check_format("--aformat", a)?;
    }
    let needs_calib = |what: &str| -> Result<(), Failure> {
        if args.calib.is_none() {
            return Err(input_error(format!(
                "{what} needs calibration data: pass --calib DATA (an .npz or a folder of .npy files \
                 named after the model inputs)"
            )));
        }
        Ok(())
    };
    let mut p: Vec<String> = vec!["canonicalize".into(), "cse".into(), "dce".into()];
    match args.rotate.as_str() {
        "none" | "" => {}
        "hadamard" => p.push("rotate{mode=hadamard}".into()),
        r => match r.strip_prefix("block:").and_then(|n| n.parse::<u64>().ok()) {
            Some(n) if n >= 2 && n.is_power_of_two() => p.push(format!("rotate{{mode=block:{n}}}")),
            _ => {
                return Err(input_error(format!(
                "--rotate must be none, hadamard or block:N with N a power of two >= 2, not '{r}'"
            )))
            }
        },
    }
    if let Some(d) = &args.calib {
        p.push(format!(
            "calibrate{{data={}}}",
            opt_value(&d.to_string_lossy())
        ));
    }
    if let Some(a) = args.smooth {
        needs_calib("--smooth")?;
        if !(0.0..=1.0).contains(&a) {
            return Err(input_error(format!(
                "--smooth takes alpha in [0, 1], not {a}"
            )));
        }
        p.push(format!("smooth{{alpha={a}}}"));
    }
    if args.exp_bias {
        needs_calib("--exp-bias")?;
        p.push("reparam-exp-bias".into());
    }
    let keep = args
        .keep_float
        .as_deref()
        .map(|k| format!(",keep_float={}", opt_value(k)))
        .unwrap_or_default();
    let act = args
        .aformat
        .as_deref()
        .map(|a| format!(",a={a}"))
        .unwrap_or_default();
    if args.aformat.is_some() {
        needs_calib("--aformat")?;
    }
    // With --aformat after a method that quantized the weights itself, the activations of its
    // quant.matmul layers are calibrated again (the statistics then include the upstream weight
    // error, and MR-GPTQ's rotation) and quantized by a last quantize pass.
    let recalibrate = |p: &mut Vec<String>| {
        if let (Some(_), Some(d)) = (&args.aformat, &args.calib) {
            p.push(format!(
                "calibrate{{data={}}}",
                opt_value(&d.to_string_lossy())
            ));
            p.push(format!("quantize{{w={w}{act}{keep}}}"));
        }
    };
    if args.fp_search && (args.method != Method::Rtn || args.lorc_rank.is_some()) {
        return Err(input_error(
            "--fp-search works with --method rtn without --lorc-rank (GPTQ and LoRC quantize to the given format)",
        ));
    }
    let fp = if args.fp_search {
        ",fp_search=true"
    } else {
        ""
    };
    match (args.method, args.lorc_rank) {
        (Method::Rtn, None) => p.push(format!("quantize{{w={w}{act}{fp}{keep}}}")),
        (Method::Rtn, Some(r)) => {
            p.push(format!("lorc{{rank={r},w={w}}}"));
            // Layers lorc leaves alone (other kinds than matmul) still get quantized.
            p.push(format!("quantize{{w={w}{keep}}}"));
            recalibrate(&mut p);
        }
        (Method::Gptq | Method::MrGptq, Some(_)) => {
            return Err(input_error(
                "--lorc-rank works with --method rtn only (LoRC compensates the RTN error of each layer)",
            ))
        }
        (m, None) => {
            needs_calib(if m == Method::Gptq {
                "--method gptq"
            } else {
                "--method mr-gptq"
            })?;
            let mr = if m == Method::MrGptq { ",mr=true" } else { "" };
            p.push(format!("gptq{{w={w}{mr}{keep}}}"));
            // Layers GPTQ cannot take (gemm, conv) fall back to RTN.
            p.push(format!("quantize{{w={w}{keep}}}"));
            recalibrate(&mut p);
        }
    }
    p.push("dce".into());
    Ok(p.join(","))
}

/// Loads the model and runs the pipeline of `args` on it, with dumps written to `dumps`.
pub fn compile_module(
    args: &CompileArgs,
    dumps: &mut dyn std::io::Write,
) -> Result<Module, Failure> {
    let text = pipeline(args)?;
    let passes = qc_passes::registry();
    let pipeline = passes
        .parse_pipeline(&text)
        .map_err(|d| Failure::Input(d.render(Some(&text))))?;
    args.dumps.check_names(&passes)?;
    let mut m = crate::cmd::import::load_module(&args.model)?;
    let mut pm = PassManager::new(pipeline, args.dumps.instrumentation());
    pm.progress = crate::progress::for_stderr();
    pm.run(&mut m, &crate::registry(), dumps)
        .map_err(|e| pipeline_failure(e, None))?;
    Ok(m)
}

/// Runs `qc compile`.
pub fn run(args: &CompileArgs) -> Result<(), Failure> {
    if args.print_pipeline {
        let mut p = pipeline(args)?;
        p.push('\n');
        return write_output(None, p.as_bytes());
    }
    if let Some(target) = args.target {
        let target = target.resolve()?;
        let out = args
            .output
            .as_deref()
            .filter(|o| o.as_os_str() != "-")
            .ok_or_else(|| {
                input_error("--target writes a .qca artifact: give its path with -o FILE.qca")
            })?;
        if !crate::cmd::target::HAS_XLA
            || (target.needs_cpu_feature() && !crate::cmd::target::HAS_CPU)
        {
            // Say so before the pipeline runs.
            return crate::cmd::target::write_artifact(
                target,
                &Module::default(),
                "main",
                &[],
                &args.model,
                "",
                out,
            );
        }
        let m = compile_module(args, &mut std::io::stderr().lock())?;
        let text = pipeline(args)?;
        return crate::cmd::target::write_artifact(
            target,
            &m,
            "main",
            &args.shapes,
            &args.model,
            &text,
            out,
        );
    }
    if !args.shapes.is_empty() && args.emit != Emit::Mlir {
        return Err(input_error(
            "--shape is used with --target or --emit mlir only",
        ));
    }
    if args.emit == Emit::Mlir && !crate::cmd::target::HAS_XLA {
        // Say so before the pipeline runs.
        crate::cmd::target::export_mlir(&Module::default(), "main", &[])?;
    }
    let mut m = compile_module(args, &mut std::io::stderr().lock())?;
    match args.emit {
        Emit::Mlir => {
            let text = crate::cmd::target::export_mlir(&m, "main", &args.shapes)?;
            write_output(args.output.as_deref(), text.as_bytes())
        }
        Emit::Qir => {
            if let Some(out) = &args.output {
                let embedded = rebase_external(&mut m, &args.model, out)?;
                if embedded > 64 << 20 {
                    eprintln!(
                        "note: {} MiB of float weights are held in the output; write it beside {} to \
                         reference them there instead",
                        embedded >> 20,
                        args.model.display()
                    );
                }
            }
            match args.output.as_deref() {
                // Streamed into the temporary file: the text of large weights is never held whole.
                Some(out) if out.as_os_str() != "-" => qc_ir::util::write_atomic_with(out, |w| {
                    qc_ir::write_module(&m, PrintOptions::full(), w)
                })
                .map_err(input_error),
                _ => write_output(None, print_module(&m, PrintOptions::full()).as_bytes()),
            }
        }
    }
}

/// Absolute, `.`/`..`-free form of `p` (which need not exist beyond its folder).
fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    let abs = std::path::absolute(p).map_err(|e| input_error(format!("{}: {e}", p.display())))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `to` relative to the folder `from` (both absolute and normalized), when `to` lies inside `from`.
fn relative_inside(to: &Path, from: &Path) -> Option<PathBuf> {
    to.strip_prefix(from).ok().map(Path::to_path_buf)
}

/// Makes the `external<...>` resources of `m` (paths relative to the model's folder) readable from the
/// folder of `output`: rewritten relative to it when the data file lies inside that folder, else held in
/// the output itself (qc IR only references files inside its own folder). Returns the bytes embedded.
pub fn rebase_external(m: &mut Module, model: &Path, output: &Path) -> Result<u64, Failure> {
    let model_dir = absolute(model)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let out_dir = absolute(output)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if model_dir == out_dir {
        return Ok(0);
    }
    let mut embedded = 0u64;
    let names: Vec<String> = m.resources.iter().map(|(n, _)| n.to_string()).collect();
    for n in names {
        let Some(blob @ Blob::Mapped { .. }) = m.resources.get(&n).cloned() else {
            continue;
        };
        let Blob::Mapped {
            map,
            path,
            offset,
            length,
        } = blob
        else {
            continue;
        };
        let target = absolute(&model_dir.join(&path))?;
        let new = match relative_inside(&target, &out_dir) {
            Some(rel) => Blob::Mapped {
                map,
                path: rel.to_string_lossy().replace('\\', "/"),
                offset,
                length,
            },
            None => {
                embedded += length;
                Blob::Owned {
                    data: std::sync::Arc::from(&map[offset as usize..(offset + length) as usize]),
                    align: 64,
                }
            }
        };
        m.resources.insert(n, new);
    }
    Ok(embedded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> CompileArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: CompileArgs,
        }
        use clap::Parser;
        let words = ["compile", "m.onnx"].iter().chain(extra).copied();
        P::try_parse_from(words).unwrap().a
    }

    #[test]
    fn pipelines_from_flags() {
        assert_eq!(
            pipeline(&args(&["--wformat", "nvfp4"])).unwrap(),
            "canonicalize,cse,dce,quantize{w=nvfp4},dce"
        );
        assert_eq!(
            pipeline(&args(&["--wformat", "mxfp4", "--fp-search"])).unwrap(),
            "canonicalize,cse,dce,quantize{w=mxfp4,fp_search=true},dce"
        );
        assert_eq!(
            pipeline(&args(&[
                "--wformat",
                "nvfp4",
                "--aformat",
                "fp8_e4m3",
                "--exp-bias",
                "--calib",
                "d"
            ]))
            .unwrap(),
            "canonicalize,cse,dce,calibrate{data=d},reparam-exp-bias,\
             quantize{w=nvfp4,a=fp8_e4m3},dce"
        );
        assert_eq!(
            pipeline(&args(&[
                "--wformat",
                "mxfp4",
                "--aformat",
                "mxfp8",
                "--method",
                "mr-gptq",
                "--rotate",
                "block:32",
                "--smooth",
                "0.5",
                "--calib",
                "c.npz",
                "--keep-float",
                "lm head"
            ]))
            .unwrap(),
            "canonicalize,cse,dce,rotate{mode=block:32},calibrate{data=c.npz},smooth{alpha=0.5},\
             gptq{w=mxfp4,mr=true,keep_float=\"lm head\"},quantize{w=mxfp4,keep_float=\"lm head\"},\
             calibrate{data=c.npz},quantize{w=mxfp4,a=mxfp8,keep_float=\"lm head\"},dce"
        );
        assert_eq!(
            pipeline(&args(&["--passes", "cse"])).unwrap(),
            "cse",
            "--passes replaces the pipeline"
        );
    }

    #[test]
    fn flag_errors_are_sentences() {
        for (flags, want) in [
            (&["--wformat", "int3"][..], "no known format 'int3'"),
            (
                &["--wformat", "nvfp4", "--method", "gptq"],
                "--method gptq needs calibration data",
            ),
            (
                &["--wformat", "nvfp4", "--aformat", "fp8_e4m3"],
                "--aformat needs calibration",
            ),
            (
                &["--wformat", "nvfp4", "--rotate", "block:12"],
                "power of two",
            ),
            (
                &[
                    "--wformat",
                    "nvfp4",
                    "--method",
                    "gptq",
                    "--lorc-rank",
                    "4",
                    "--calib",
                    "c",
                ],
                "rtn only",
            ),
            (&[], "needs --wformat"),
        ] {
            let e = pipeline(&args(flags)).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.message().contains(want), "{flags:?}: {}", e.message());
        }
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_inside(Path::new("/a/b/w.bin"), Path::new("/a/c/d")),
            None
        );
        assert_eq!(
            relative_inside(Path::new("/a/b/w.bin"), Path::new("/a")),
            Some(PathBuf::from("b/w.bin"))
        );
    }
}

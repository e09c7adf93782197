//! `qc import`: ONNX to qc IR text; and [`load_module`], which every command that takes a model uses.

use std::path::{Path, PathBuf};

use clap::Args;
use qc_ir::{parse_module, print_module, verify_module, Module, PrintOptions, Source};

use crate::import::onnx::{convert::import_model, load::load_model};
use crate::output::{read_text_input, write_output, Failure};

/// Arguments of `qc import`.
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Write the IR here (atomically) instead of standard output. Weights stay in the model file and are
    /// referenced as `external<...>` resources, relative to the model's folder.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Run canonicalize, cse and dce after importing.
    #[arg(long)]
    pub simplify: bool,
}

/// Loads a model: `.onnx` files through the ONNX importer, anything else as qc IR text. The result has
/// been verified. Diagnostics render with the source text for IR files.
pub fn load_module(path: &Path) -> Result<Module, Failure> {
    let m = if path.extension().is_some_and(|e| e == "onnx") {
        let model = load_model(path).map_err(|d| Failure::Input(d.render(None)))?;
        import_model(&model).map_err(|d| Failure::Input(d.render(None)))?
    } else {
        let (text, _) = read_text_input(path)?;
        let m = parse_module(&text, &Source::file(path), &crate::registry())
            .map_err(|d| Failure::Input(d.render(Some(&text))))?;
        verify_module(&m).map_err(|ds| Failure::Input(ds.render(Some(&text))))?;
        return Ok(m);
    };
    verify_module(&m).map_err(|ds| {
        Failure::Internal(format!(
            "internal error: the imported module does not verify:\n{}",
            ds.render(None)
        ))
    })?;
    Ok(m)
}

/// Runs `qc import`.
pub fn run(args: &ImportArgs) -> Result<(), Failure> {
    let mut m = load_module(&args.model)?;
    if args.simplify {
        let passes = qc_passes::registry()
            .parse_pipeline("canonicalize,cse,dce")
            .map_err(|d| Failure::Internal(d.to_string()))?;
        let pm = qc_ir::pass::PassManager::new(passes, Default::default());
        pm.run(&mut m, &crate::registry(), &mut std::io::sink())
            .map_err(|e| Failure::Input(format!("{e}\n")))?;
    }
    // External references in the output are relative to the model's folder; writing the IR elsewhere
    // would break them, so say where they point.
    if let Some(out) = &args.output {
        let model_dir = args
            .model
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let out_dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
        let same = std::fs::canonicalize(if model_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &model_dir
        })
        .ok()
            == std::fs::canonicalize(if out_dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &out_dir
            })
            .ok();
        if !same && !m.resources.is_empty() {
            eprintln!(
                "note: the weights stay in {}; write the IR into that folder to run it from there",
                args.model.display()
            );
        }
    }
    write_output(
        args.output.as_deref(),
        print_module(&m, PrintOptions::full()).as_bytes(),
    )
}

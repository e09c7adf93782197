//! `qc run`: the reference interpreter on a model, inputs from .npy files, one .npy per output. A `.qca`
//! artifact for a CPU target runs its shared library instead (`cmd/cpu.rs`, cargo feature `cpu`), one
//! for an NVIDIA target runs on the GPU (`--device cuda`, `cmd/cuda_run.rs`).

use std::path::PathBuf;

use clap::Args;
use qc_ir::types::ElemType;
use qc_runtime::exec::run_func;
use qc_runtime::interp::{round_to, wrap, Data, Tensor};

use crate::cmd::import::load_module;
use crate::npy::{read_npy, to_npy_bytes, NpyArray, NpyData};
use crate::output::{input_error, Failure};

/// Arguments of `qc run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The model: an .onnx file or qc IR (.qir), or a .qca artifact for x86-64-v4|v3 (feature `cpu`)
    /// or for sm_* (run on the GPU).
    pub model: PathBuf,
    /// An input: NAME=FILE.npy (NAME as the model names it; repeat for each input).
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// The folder for the outputs (one NAME.npy per output); created if missing.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// The function to run.
    #[arg(long, default_value = "main")]
    pub func: String,
    /// Where a .qca artifact runs: `cpu` (artifacts for x86-64 targets) or `cuda` (artifacts for
    /// sm_* targets, on GPU 0 through the CUDA driver). Default: the artifact's own kind.
    #[arg(long, value_parser = ["cpu", "cuda"])]
    pub device: Option<String>,
}

fn to_tensor(a: &NpyArray, elem: &ElemType, what: &str) -> Result<Tensor, String> {
    let data = match (&a.data, elem) {
        (NpyData::F32(v), e @ (ElemType::F32 | ElemType::F16 | ElemType::BF16)) => {
            Data::F(v.iter().map(|&x| round_to(e, x as f64)).collect())
        }
        (NpyData::F16(_), ElemType::F16) => {
            Data::F(a.to_f32().into_iter().map(f64::from).collect())
        }
        (NpyData::F64(v), ElemType::F64) => Data::F(v.clone()),
        (NpyData::I64(v), ElemType::Int { bits, unsigned }) => {
            Data::I(v.iter().map(|&x| wrap(x, *bits, *unsigned)).collect())
        }
        (NpyData::U8(v), ElemType::Int { bits, unsigned }) => Data::I(
            v.iter()
                .map(|&x| wrap(x as i64, *bits, *unsigned))
                .collect(),
        ),
        (NpyData::U16(v), ElemType::Int { bits, unsigned }) => Data::I(
            v.iter()
                .map(|&x| wrap(x as i64, *bits, *unsigned))
                .collect(),
        ),
        (d, e) => {
            return Err(format!(
                "{what}: a {} array cannot feed an input of element type {e}",
                d.descr()
            ))
        }
    };
    Ok(Tensor::new(a.shape.clone(), elem.clone(), data))
}

fn to_npy(t: &Tensor) -> NpyArray {
    let shape = t.shape.clone();
    let data = match (&t.data, &t.elem) {
        (Data::F(v), ElemType::F64) => NpyData::F64(v.clone()),
        (Data::F(v), _) => NpyData::F32(v.iter().map(|&x| x as f32).collect()),
        (Data::I(v), ElemType::Int { bits: 1, .. }) => {
            NpyData::U8(v.iter().map(|&x| x as u8).collect())
        }
        (Data::I(v), _) => NpyData::I64(v.clone()),
    };
    NpyArray { shape, data }
}

/// The arrays of an artifact's inputs `sigs` from `--input NAME=FILE.npy` specs, in the order of
/// `sigs`, each with its file's name; a diagnostic for a missing, unknown or unreadable input.
pub fn artifact_inputs(
    sigs: &[qc_runtime::artifact::TensorSig],
    specs: &[String],
) -> Result<Vec<(NpyArray, String)>, Failure> {
    let mut given = input_files(specs)?;
    let names = sigs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = Vec::with_capacity(sigs.len());
    for s in sigs {
        let file = given.remove(&s.name).ok_or_else(|| {
            input_error(format!(
                "missing --input {}=FILE.npy (the artifact's inputs: {names})",
                s.name
            ))
        })?;
        out.push((
            read_npy(&file).map_err(input_error)?,
            file.display().to_string(),
        ));
    }
    if let Some(name) = given.keys().next() {
        return Err(input_error(format!(
            "the artifact has no input '{name}' (its inputs: {names})"
        )));
    }
    Ok(out)
}

/// The `--input NAME=FILE.npy` specs as a map from name to file; a diagnostic for a spec without `=`
/// or a name given twice.
pub fn input_files(
    specs: &[String],
) -> Result<std::collections::BTreeMap<String, PathBuf>, Failure> {
    let mut given = std::collections::BTreeMap::new();
    for spec in specs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| input_error(format!("--input '{spec}' must be NAME=FILE.npy")))?;
        if given
            .insert(name.to_string(), PathBuf::from(file))
            .is_some()
        {
            return Err(input_error(format!("input '{name}' is given twice")));
        }
    }
    Ok(given)
}

/// Runs function `func` of `m` with inputs given as `NAME=FILE.npy` specs (every argument exactly once);
/// the interpreter's outputs in result order.
pub fn run_with_inputs(
    m: &qc_ir::Module,
    func: &str,
    specs: &[String],
) -> Result<Vec<Tensor>, Failure> {
    let f = m
        .func(func)
        .ok_or_else(|| input_error(format!("the model has no function @{func}")))?;
    let mut given = input_files(specs)?;
    let mut inputs = Vec::new();
    for &a in &f.args {
        let name = f.value(a).name.clone().unwrap_or_default();
        let file = given.remove(&name).ok_or_else(|| {
            input_error(format!(
                "missing --input {name}=FILE.npy (the model's inputs: {})",
                arg_names(f)
            ))
        })?;
        let arr = read_npy(&file).map_err(input_error)?;
        inputs.push(
            to_tensor(&arr, &f.ty(a).elem, &file.display().to_string()).map_err(input_error)?,
        );
    }
    if let Some(name) = given.keys().next() {
        return Err(input_error(format!(
            "the model has no input '{name}' (its inputs: {})",
            arg_names(f)
        )));
    }
    run_func(m, func, inputs).map_err(|d| Failure::Input(d.render(None)))
}

/// Runs `qc run`.
pub fn run(args: &RunArgs) -> Result<(), Failure> {
    if args.model.extension().is_some_and(|e| e == "qca") {
        let gpu =
            artifact_target(&args.model).is_some_and(|t| crate::cmd::cuda_run::is_gpu_target(&t));
        match (args.device.as_deref(), gpu) {
            (Some("cuda"), _) | (None, true) => return crate::cmd::cuda_run::run_artifact(args),
            (Some("cpu"), true) => {
                return Err(input_error(format!(
                    "{} is an artifact for an NVIDIA GPU: run it with --device cuda",
                    args.model.display()
                )))
            }
            _ => {}
        }
        #[cfg(feature = "cpu")]
        return crate::cmd::cpu::run_artifact(args);
        #[cfg(not(feature = "cpu"))]
        return Err(input_error(
            "this qc was built without the CPU backend: rebuild it with `cargo build --release -p qc \
             --features cpu` to run .qca artifacts",
        ));
    }
    if args.device.is_some() {
        return Err(input_error(
            "--device applies to .qca artifacts; models run on the reference interpreter",
        ));
    }
    let m = load_module(&args.model)?;
    let f = m.func(&args.func).ok_or_else(|| {
        input_error(format!(
            "{}: no function @{}",
            args.model.display(),
            args.func
        ))
    })?;
    let outs = run_with_inputs(&m, &args.func, &args.inputs)?;
    std::fs::create_dir_all(&args.output)
        .map_err(|e| input_error(format!("cannot create {}: {e}", args.output.display())))?;
    let names = crate::cmd::run::output_names(f);
    for (t, name) in outs.iter().zip(names) {
        let path = args.output.join(format!("{name}.npy"));
        qc_ir::util::write_atomic(&path, &to_npy_bytes(&to_npy(t))).map_err(input_error)?;
    }
    Ok(())
}

/// The target in the manifest of artifact `path`, when it is a readable artifact (errors are reported
/// by whoever opens it next).
pub fn artifact_target(path: &std::path::Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    qc_runtime::artifact::view(&bytes)
        .ok()
        .map(|v| v.manifest.target.clone())
}

fn arg_names(f: &qc_ir::Func) -> String {
    f.args
        .iter()
        .map(|&a| f.value(a).name.clone().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(", ")
}

/// File names for a function's results: the returned values' names, made unique, or `output_N`.
pub fn output_names(f: &qc_ir::Func) -> Vec<String> {
    let mut used = std::collections::BTreeSet::new();
    f.ret
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let base = f
                .value(v)
                .name
                .clone()
                .unwrap_or_else(|| format!("output_{i}"));
            let mut name = base.clone();
            let mut k = 1;
            while !used.insert(name.clone()) {
                name = format!("{base}_{k}");
                k += 1;
            }
            name
        })
        .collect()
}

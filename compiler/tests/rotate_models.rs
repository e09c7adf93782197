//! The `rotate` pass on the tiny BERT-style (post-norm LayerNorm) and Llama-style (RMSNorm) models of
//! scripts/models: the rotated f32 function equals the original (relative error below 1e-4), and the
//! number of online rotations (`quant.hadamard`) left is what the pass's cost model promises for
//! Llama. Needs python3 with numpy and onnx (`bash .ci/install-python.sh`); fails, saying so, without.

use std::path::{Path, PathBuf};

use qc::cmd::run::run_with_inputs;
use qc_ir::pass::PassManager;
use qc_ir::Module;
use qc_runtime::interp::{Data, Tensor};

mod common;
use common::models_script;

/// Writes the tiny `kind` model and one input; returns the imported module and the input specs.
fn model(kind: &str) -> (Module, Vec<String>) {
    let dir: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rotate-{kind}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join(format!("{kind}.onnx"));
    let o = onnx.to_str().unwrap();
    models_script(
        &format!("make_{kind}.py"),
        &["--config", "tiny", "--seed", "1", "--out", o],
    );
    let inputs = dir.join("in");
    models_script(
        "check.py",
        &[
            "inputs",
            "--model",
            o,
            "--out",
            inputs.to_str().unwrap(),
            "--batch",
            "2",
            "--seq",
            "7",
            "--seed",
            "21",
        ],
    );
    let mut specs: Vec<String> = std::fs::read_dir(&inputs)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            format!(
                "{}={}",
                p.file_stem().unwrap().to_str().unwrap(),
                p.display()
            )
        })
        .collect();
    specs.sort();
    let mut m = qc::cmd::import::load_module(&onnx).unwrap_or_else(|e| panic!("{}", e.message()));
    apply(&mut m, "canonicalize,cse,dce");
    (m, specs)
}

fn apply(m: &mut Module, pipeline: &str) {
    let passes = qc_passes::registry()
        .parse_pipeline(pipeline)
        .unwrap_or_else(|d| panic!("{d}"));
    PassManager::new(passes, Default::default())
        .run(m, &qc::registry(), &mut std::io::sink())
        .unwrap_or_else(|e| panic!("{pipeline}: {e}"));
}

fn values(t: &Tensor) -> Vec<f64> {
    match &t.data {
        Data::F(v) => v.clone(),
        Data::I(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    let (mut d, mut s) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape, y.shape);
        for (p, q) in values(x).iter().zip(values(y)) {
            d = d.max((p - q).abs());
            s = s.max(p.abs());
        }
    }
    d / s.max(1e-30)
}

fn hadamards(m: &Module) -> usize {
    m.funcs
        .iter()
        .flat_map(|f| f.ops.iter())
        .filter(|op| op.name() == "quant.hadamard")
        .count()
}

/// Rotates `kind` with each option string, checks the function, and returns the online rotation counts.
fn check(kind: &str, options: &[&str]) -> Vec<usize> {
    let (m, specs) = model(kind);
    let want = run_with_inputs(&m, "main", &specs).unwrap_or_else(|e| panic!("{}", e.message()));
    options
        .iter()
        .map(|opts| {
            let mut r = m.clone();
            apply(&mut r, &format!("rotate{{{opts}}}"));
            let got =
                run_with_inputs(&r, "main", &specs).unwrap_or_else(|e| panic!("{}", e.message()));
            let e = rel_err(&want, &got);
            let n = hadamards(&r);
            eprintln!("{kind} rotate{{{opts}}}: max relative error {e:.2e}, {n} online rotations");
            assert!(
                e < 1e-4,
                "{kind} rotate{{{opts}}} changed the function: {e:.2e}"
            );
            n
        })
        .collect()
}

/// Llama (RMSNorm, pre-norm): with `online=needed` every rotation is absorbed into weights (the
/// embedding, q/k/v/gate/up/lm_head rows, o/down columns); `online=inputs` adds online rotations in
/// front of the down projections and, unless blocks of 8 pass the per-head reshapes into the value
/// projections, in front of the output projections.
#[test]
fn llama_rotation_is_absorbed_and_keeps_the_function() {
    let n = check(
        "llama",
        &[
            "mode=hadamard,online=needed",
            "mode=hadamard,online=inputs",
            "mode=block:8,online=inputs",
            "mode=block:16,online=never",
        ],
    );
    assert_eq!(n, vec![0, 4, 2, 0]);
}

/// BERT (post-norm LayerNorm): online rotations stand behind each LayerNorm and GELU; the function is
/// unchanged.
#[test]
fn bert_rotation_keeps_the_function() {
    let n = check(
        "bert",
        &["mode=hadamard,online=needed", "mode=block:8,online=inputs"],
    );
    assert!(
        n.iter().all(|&k| k > 0),
        "BERT needs online rotations behind its LayerNorms: {n:?}"
    );
}

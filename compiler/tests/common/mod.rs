//! Helpers shared by the end-to-end test files of compiler/tests (each file is its own crate and uses
//! what it needs, hence `allow(dead_code)`): paths, running qc and tools, comparing .npy outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use qc::npy::read_npy;

/// A temporary path as text (test paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cmd`, fails the test (with its output) unless it succeeds; its standard output.
pub fn ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs this build's `qc` with `args`, which must succeed; its standard output.
pub fn qc(args: &[&str]) -> String {
    ok(
        Command::new(env!("CARGO_BIN_EXE_qc")).args(args),
        &format!("qc {}", args.join(" ")),
    )
}

/// Runs this build's `qc` with `args`, whatever its exit status.
pub fn qc_out(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(args)
        .output()
        .expect("run qc")
}

/// Max |a - b| / max |b| over two .npy files (a NaN difference counts as infinite).
pub fn rel(actual: &Path, expected: &Path) -> f64 {
    let (a, e) = (read_npy(actual).unwrap(), read_npy(expected).unwrap());
    assert_eq!(a.shape, e.shape, "{}", actual.display());
    let (av, ev) = (a.to_f32(), e.to_f32());
    let scale = ev.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    assert!(scale > 0.0);
    av.iter().zip(&ev).fold(0f64, |m, (&x, &y)| {
        let d = (x as f64 - y as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    }) / scale
}

/// Runs scripts/models/`script` with python3 and `args`; fails the test (naming the installer) unless it
/// succeeds.
pub fn models_script(script: &str, args: &[&str]) {
    let path = repo().join("scripts/models").join(script);
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 is required (bash .ci/install-python.sh): {e}"));
    assert!(
        out.status.success(),
        "python3 {script} {args:?} failed (bash .ci/install-python.sh installs numpy and onnx):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny model of scripts/models in its own temporary folder `d`: `make_<kind>.py --config tiny --seed 0
/// --embedded` written to `model`, and seeded inputs for batch 2, sequence 7 in `d/in/` (`check.py
/// inputs`).
pub struct TinyModel {
    pub dir: tempfile::TempDir,
    pub d: PathBuf,
    pub model: PathBuf,
}

/// The tiny `kind` model (`bert` or `llama`); see [`TinyModel`].
pub fn tiny_model(kind: &str) -> TinyModel {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let model = d.join(format!("{kind}.onnx"));
    models_script(
        &format!("make_{kind}.py"),
        &[
            "--config",
            "tiny",
            "--seed",
            "0",
            "--out",
            p(&model),
            "--embedded",
        ],
    );
    models_script(
        "check.py",
        &[
            "inputs",
            "--model",
            p(&model),
            "--out",
            p(&d.join("in")),
            "--batch",
            "2",
            "--seq",
            "7",
        ],
    );
    TinyModel { dir, d, model }
}

//! `qc compile --target sm_80|sm_89|sm_90a|sm_100a|sm_120a`, end to end: the tiny BERT-style encoder
//! (scripts/models), float and with int4_g32 / mxfp4 weights, compiled to PTX for every NVIDIA target
//! (upstream MLIR -> mlir-opt's GPU lowering -> LLVM's NVPTX back end); each artifact is compiled twice
//! and must be byte-identical, `qc inspect --extract` writes its .ptx parts, the launch plan names
//! them, and ptxas assembles every one for its target. A golden file holds the PTX of an elementwise
//! add for sm_90a (`QC_BLESS=1` rewrites it). No GPU runs the PTX here.
//!
//! Needs the cargo feature `cpu` (`cargo test -p qc --features cpu --test ptx`), LLVM 22's MLIR tools
//! (`$QC_MLIR_BIN`, default /usr/lib/llvm-22/bin), python3 with numpy and onnx, and ptxas (`QC_PTXAS`,
//! or python's nvidia-cuda-nvcc package, or PATH: .ci/find-ptxas.sh). Without ptxas the tests fail,
//! unless `QC_ALLOW_NO_PTXAS=1`, which makes them pass without checking anything.
#![cfg(feature = "cpu")]

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{ok, p, qc, repo};

const TARGETS: [&str; 5] = ["sm_80", "sm_89", "sm_90a", "sm_100a", "sm_120a"];

/// The ptxas executable, or None when there is none and `QC_ALLOW_NO_PTXAS=1` (else a failure).
fn ptxas() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join(".ci/find-ptxas.sh"))
        .output()
        .expect("run .ci/find-ptxas.sh");
    if out.status.success() {
        return Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    if std::env::var("QC_ALLOW_NO_PTXAS").as_deref() == Ok("1") {
        eprintln!("no ptxas and QC_ALLOW_NO_PTXAS=1: skipped");
        return None;
    }
    panic!(
        "the PTX tests need ptxas (bash .ci/install-toolchain.sh, or set QC_PTXAS; \
         QC_ALLOW_NO_PTXAS=1 skips them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_python() {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, onnx"])
        .output();
    assert!(
        matches!(&probe, Ok(o) if o.status.success()),
        "the PTX tests need python3 with numpy and onnx (bash .ci/install-python.sh)"
    );
}

/// The names of the launch plan's `"ptx"` entries, in order.
fn launched(plan: &str) -> Vec<String> {
    plan.match_indices("\"ptx\": \"")
        .map(|(i, m)| {
            let rest = &plan[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// Compiles `model` with `passes` for every target: twice (byte-identical), extracted, the plan
/// checked against the .ptx parts, every .ptx assembled by `ptxas` for its target.
fn check_all_targets(
    ptxas: &Path,
    d: &Path,
    model: &Path,
    passes: &[&str],
    tag: &str,
    shapes: &[&str],
) {
    for target in TARGETS {
        let qca = d.join(format!("{tag}.{target}.qca"));
        let mut args: Vec<&str> = vec!["compile", p(model)];
        args.extend(passes);
        args.extend(["--target", target]);
        args.extend(shapes);
        args.extend(["-o", p(&qca)]);
        qc(&args);
        let again = d.join(format!("{tag}.{target}.again.qca"));
        let n = args.len();
        args[n - 1] = p(&again);
        qc(&args);
        assert_eq!(
            std::fs::read(&qca).unwrap(),
            std::fs::read(&again).unwrap(),
            "{tag} {target}: the artifact is not deterministic"
        );
        let summary = qc(&["inspect", p(&qca)]);
        assert!(
            summary.contains(&format!("target     {target}")),
            "{summary}"
        );
        let ex = d.join(format!("{tag}.{target}.x"));
        qc(&["inspect", p(&qca), "--extract", p(&ex)]);
        let plan = std::fs::read_to_string(ex.join("launch_plan.json")).unwrap();
        assert!(
            plan.contains(&format!("\"target\": \"{target}\"")),
            "{plan}"
        );
        assert!(ex.join("host.mlir").is_file());
        let mut ptx: Vec<String> = std::fs::read_dir(&ex)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ptx"))
            .collect();
        ptx.sort();
        assert!(!ptx.is_empty(), "{tag} {target}: no .ptx parts");
        let mut plan_ptx = launched(&plan);
        plan_ptx.sort();
        plan_ptx.dedup();
        assert_eq!(
            plan_ptx, ptx,
            "{tag} {target}: the plan launches other kernels"
        );
        for name in &ptx {
            let file = ex.join(name);
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.contains(&format!("\n.target {target}\n")),
                "{tag} {target}: {name} has another .target"
            );
            assert!(text.contains(".entry main_kernel("), "{name}");
            ok(
                Command::new(ptxas)
                    .arg(format!("-arch={target}"))
                    .arg("--warning-as-error")
                    .arg("-o")
                    .arg(d.join(format!("{tag}.{target}.cubin")))
                    .arg(&file),
                &format!("ptxas -arch={target} {tag} {name}"),
            );
        }
    }
}

fn bert_check(passes: &[&str], tag: &str) {
    let Some(ptxas) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("bert.onnx");
    ok(
        Command::new("python3")
            .arg(repo().join("scripts/models/make_bert.py"))
            .args([
                "--config",
                "tiny",
                "--seed",
                "0",
                "--out",
                p(&model),
                "--embedded",
            ]),
        "make_bert.py",
    );
    check_all_targets(
        &ptxas,
        d,
        &model,
        passes,
        tag,
        &["--shape", "batch=2", "--shape", "seq=7"],
    );
}

#[test]
fn bert_float_ptx_for_every_target() {
    bert_check(&["--passes", "canonicalize"], "float");
}

#[test]
fn bert_int4_g32_ptx_for_every_target() {
    bert_check(&["--wformat", "int4_g32"], "int4_g32");
}

#[test]
fn bert_mxfp4_ptx_for_every_target() {
    bert_check(&["--wformat", "mxfp4"], "mxfp4");
}

/// An ONNX model computing `c = a + b` on 4x8 f32 tensors.
fn add_model(path: &Path) {
    ok(
        Command::new("python3").args([
            "-c",
            "import sys, onnx\n\
             from onnx import helper, TensorProto as T\n\
             v = lambda n: helper.make_tensor_value_info(n, T.FLOAT, [4, 8])\n\
             g = helper.make_graph([helper.make_node('Add', ['a', 'b'], ['c'])], 'add', [v('a'), v('b')], [v('c')])\n\
             m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n\
             m.ir_version = 8\n\
             onnx.save(m, sys.argv[1])\n",
            p(path),
        ]),
        "make the add model",
    );
}

#[test]
fn add_kernel_ptx_for_sm_90a_matches_the_golden_file() {
    let Some(ptxas) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("add.onnx");
    add_model(&model);
    let qca = d.join("add.qca");
    // `sm_90` means sm_90a.
    qc(&[
        "compile",
        p(&model),
        "--passes",
        "canonicalize",
        "--target",
        "sm_90",
        "-o",
        p(&qca),
    ]);
    let ex = d.join("x");
    qc(&["inspect", p(&qca), "--extract", p(&ex)]);
    let ptx = std::fs::read_to_string(ex.join("main_kernel.ptx")).unwrap();
    ok(
        Command::new(&ptxas)
            .args(["-arch=sm_90a", "--warning-as-error", "-o"])
            .arg(d.join("add.cubin"))
            .arg(ex.join("main_kernel.ptx")),
        "ptxas add",
    );
    let plan = std::fs::read_to_string(ex.join("launch_plan.json")).unwrap();
    assert!(
        plan.contains("\"grid\": [4, 8, 1], \"block\": [1, 1, 1]"),
        "{plan}"
    );
    assert_eq!(launched(&plan), ["main_kernel.ptx"]);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden_ptx/add_sm_90a.ptx");
    if std::env::var("QC_BLESS").as_deref() == Ok("1") {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &ptx).unwrap();
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (QC_BLESS=1 writes it)", golden.display()));
    assert_eq!(
        ptx, want,
        "the add kernel's PTX changed (QC_BLESS=1 rewrites the golden file)"
    );
}

#[test]
fn gpu_targets_are_listed_and_unknown_ones_rejected() {
    let help = qc(&["compile", "--help"]);
    for t in TARGETS {
        assert!(help.contains(t), "{t} missing from qc compile --help");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(["compile", "m.onnx", "--target", "sm_75", "-o", "m.qca"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

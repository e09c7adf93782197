//! `qc compile --target x86-64-v4|x86-64-v3` and `qc run ARTIFACT.qca`, end to end: the tiny BERT-style
//! encoder (scripts/models), float and with int4_g32 / mxfp4 weights, compiled to a shared library
//! (upstream MLIR -> mlir-opt / mlir-translate of LLVM 22 -> inkwell -> cc -shared), run from the
//! artifact and compared with `qc run` (the reference interpreter) on the same compiled IR. Each level
//! runs only where the host CPU implements it.
//!
//! Needs the cargo feature `cpu` (`cargo test -p qc --features cpu --test cpu`), LLVM 22's MLIR tools
//! (`$QC_MLIR_BIN`, default /usr/lib/llvm-22/bin), a C compiler and python3 with numpy and onnx.
#![cfg(feature = "cpu")]

use std::path::{Path, PathBuf};
use std::process::Command;

use qc::npy::read_npy;

mod common;
use common::{ok, p, qc, qc_out, rel, repo};

/// Outputs must agree within this fraction of the largest reference magnitude.
const TOL: f64 = 1e-5;

struct Bert {
    _dir: tempfile::TempDir,
    d: PathBuf,
    model: PathBuf,
}

/// The tiny BERT-style model and its inputs (batch 2, sequence 7).
fn bert() -> Bert {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, onnx"])
        .output();
    assert!(
        matches!(&probe, Ok(o) if o.status.success()),
        "the CPU artifact tests need python3 with numpy and onnx (bash .ci/install-python.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let model = d.join("bert.onnx");
    let scripts = repo().join("scripts/models");
    ok(
        Command::new("python3")
            .arg(scripts.join("make_bert.py"))
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
    ok(
        Command::new("python3").arg(scripts.join("check.py")).args([
            "inputs",
            "--model",
            p(&model),
            "--out",
            p(&d.join("in")),
            "--batch",
            "2",
            "--seq",
            "7",
        ]),
        "check.py inputs",
    );
    Bert {
        _dir: dir,
        d,
        model,
    }
}

const INPUTS: [&str; 3] = ["input_ids", "token_type_ids", "attention_mask"];
const OUTPUTS: [&str; 2] = ["last_hidden_state", "pooler_output"];

fn host_supports(target: &str) -> bool {
    let v3 = std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("bmi2")
        && std::is_x86_feature_detected!("f16c");
    match target {
        "x86-64-v3" => v3,
        _ => {
            v3 && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512cd")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
        }
    }
}

fn input_args(b: &Bert) -> Vec<String> {
    INPUTS
        .iter()
        .flat_map(|n| {
            [
                "--input".to_string(),
                format!("{n}={}", p(&b.d.join(format!("in/{n}.npy")))),
            ]
        })
        .collect()
}

/// Compiles the model with `passes` for every CPU level the host runs, checks determinism and the
/// parts, runs each artifact and compares with the interpreter; returns the relative errors.
fn check(b: &Bert, passes: &str, tag: &str) -> Vec<f64> {
    let qir = b.d.join(format!("{tag}.qir"));
    qc(&["compile", p(&b.model), "--passes", passes, "-o", p(&qir)]);
    let refdir = b.d.join(format!("{tag}.ref"));
    let mut rargs = vec!["run".to_string(), p(&qir).into()];
    rargs.extend(input_args(b));
    rargs.extend(["-o".into(), p(&refdir).into()]);
    qc(&rargs.iter().map(String::as_str).collect::<Vec<_>>());
    let mut errs = Vec::new();
    for target in ["x86-64-v4", "x86-64-v3"] {
        if !host_supports(target) {
            eprintln!("{tag}: the host cannot run {target} code; skipped");
            continue;
        }
        let qca = b.d.join(format!("{tag}.{target}.qca"));
        let args = [
            "compile",
            p(&b.model),
            "--passes",
            passes,
            "--target",
            target,
            "--shape",
            "batch=2",
            "--shape",
            "seq=7",
            "-o",
            p(&qca),
        ];
        qc(&args);
        let again = b.d.join(format!("{tag}.{target}.again.qca"));
        let mut args2 = args;
        args2[args2.len() - 1] = p(&again);
        qc(&args2);
        assert_eq!(
            std::fs::read(&qca).unwrap(),
            std::fs::read(&again).unwrap(),
            "{tag} {target}: the artifact is not deterministic"
        );
        let summary = qc(&["inspect", p(&qca)]);
        for want in [
            format!("target     {target}"),
            "entry      @qc_main".into(),
            "model.so".into(),
            "model.h".into(),
            format!("pipeline   {passes}"),
        ] {
            assert!(summary.contains(&want), "no '{want}' in\n{summary}");
        }
        let ex = b.d.join(format!("{tag}.{target}.ex"));
        qc(&["inspect", p(&qca), "--extract", p(&ex)]);
        assert!(ex.join("manifest.json").exists());
        let header = std::fs::read_to_string(ex.join("model.h")).unwrap();
        assert!(
            header.contains(
                "int qc_main(const int64_t *input_ids, const int64_t *token_type_ids, const int64_t \
                 *attention_mask, float *last_hidden_state, float *pooler_output);"
            ),
            "{header}"
        );
        let outdir = b.d.join(format!("{tag}.{target}.out"));
        let mut args = vec!["run".to_string(), p(&qca).into()];
        args.extend(input_args(b));
        args.extend(["-o".into(), p(&outdir).into()]);
        qc(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if tag == "float" {
            c_caller(b, &ex, &outdir, target);
        }
        for name in OUTPUTS {
            let r = rel(
                &outdir.join(format!("{name}.npy")),
                &refdir.join(format!("{name}.npy")),
            );
            eprintln!("{tag} {target}: {name}: max abs diff {r:.3e} of the output's scale");
            assert!(
                r <= TOL,
                "{tag} {target}: {name} differs from the interpreter by {r:.3e} of its scale"
            );
            errs.push(r);
        }
    }
    errs
}

/// A C program includes the extracted `model.h`, links `model.so` and calls `qc_main` on the same
/// inputs: its outputs are bit-identical to those of `qc run ARTIFACT.qca` in `outdir`.
fn c_caller(b: &Bert, ex: &Path, outdir: &Path, target: &str) {
    for n in INPUTS {
        let a = read_npy(&b.d.join(format!("in/{n}.npy"))).unwrap();
        let qc::npy::NpyData::I64(v) = &a.data else {
            panic!("{n}: inputs are int64")
        };
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(ex.join(format!("{n}.bin")), bytes).unwrap();
    }
    let src = r#"#include <stdio.h>
#include <stdlib.h>
#include "model.h"
static void load(const char *f, void *p, size_t n) {
  FILE *h = fopen(f, "rb");
  if (!h || fread(p, 1, n, h) != n) exit(3);
  fclose(h);
}
int main(void) {
  int64_t ids[14], tt[14], am[14];
  float hidden[2 * 7 * 32], pooled[2 * 32];
  load("input_ids.bin", ids, sizeof ids);
  load("token_type_ids.bin", tt, sizeof tt);
  load("attention_mask.bin", am, sizeof am);
  for (int k = 0; k < 3; k++)
    if (qc_main(ids, tt, am, hidden, pooled) != 0) return 4;
  FILE *o = fopen("out.bin", "wb");
  fwrite(hidden, 1, sizeof hidden, o);
  fwrite(pooled, 1, sizeof pooled, o);
  fclose(o);
  return 0;
}
"#;
    std::fs::write(ex.join("caller.c"), src).unwrap();
    ok(
        Command::new("cc")
            .current_dir(ex)
            .args([
                "-std=c11",
                "-Wall",
                "-Werror",
                "caller.c",
                "./model.so",
                "-o",
                "caller",
            ])
            .arg("-Wl,-rpath,$ORIGIN"),
        &format!("cc caller.c against the {target} model.h"),
    );
    ok(
        Command::new(ex.join("caller")).current_dir(ex),
        "the C caller",
    );
    let got = std::fs::read(ex.join("out.bin")).unwrap();
    let mut want = Vec::new();
    for name in OUTPUTS {
        let a = read_npy(&outdir.join(format!("{name}.npy"))).unwrap();
        want.extend(a.to_f32().iter().flat_map(|x| x.to_le_bytes()));
    }
    assert!(
        got == want,
        "{target}: the C caller's outputs differ from qc run's"
    );
}

#[test]
fn bert_float_on_cpu_matches_the_interpreter() {
    let b = bert();
    check(&b, "canonicalize,cse,dce", "float");
}

#[test]
fn bert_quantized_on_cpu_matches_the_interpreter() {
    let b = bert();
    // The tiny model's dimensions (32, 64) are not multiples of 128: int4_g32 stands in for int4_g128.
    for w in ["int4_g32", "mxfp4"] {
        check(
            &b,
            &format!("canonicalize,cse,dce,quantize{{w={w}}},dce"),
            w,
        );
    }
}

#[test]
fn what_the_cpu_target_cannot_lower_is_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.qir");
    std::fs::write(
        &model,
        "func.func @main(%x: tensor<1x8xf32>) -> tensor<1x8xf32> {\n  %y = nn.lrn %x {size = 3} : (tensor<1x8xf32>) -> tensor<1x8xf32>\n  return %y : tensor<1x8xf32>\n}\n",
    )
    .unwrap();
    let out_path = dir.path().join("m.qca");
    let out = qc_out(&[
        "compile",
        p(&model),
        "--passes",
        "canonicalize",
        "--target",
        "x86-64-v4",
        "-o",
        p(&out_path),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("m.qir:2:3") && err.contains("cannot export nn.lrn"),
        "{err}"
    );
    assert!(!out_path.exists(), "a failed compile wrote its output");
    // A format upstream MLIR cannot lower on a CPU (NVFP4's f8E4M3FN block scales): mlir's diagnostic.
    let b = bert();
    let out_path = b.d.join("nvfp4.qca");
    let out = qc_out(&[
        "compile",
        p(&b.model),
        "--passes",
        "canonicalize,cse,dce,quantize{w=nvfp4},dce",
        "--target",
        "x86-64-v3",
        "--shape",
        "batch=2",
        "--shape",
        "seq=7",
        "-o",
        p(&out_path),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("x86-64-v3 target cannot lower") && err.contains("f8E4M3FN"),
        "{err}"
    );
    assert!(!out_path.exists());
    // qc run refuses an artifact of another target.
    let bad = b.d.join("bad.qca");
    std::fs::write(&bad, b"PK\x03\x04 not really").unwrap();
    let out = qc_out(&["run", p(&bad), "-o", p(&b.d.join("o"))]);
    assert_eq!(out.status.code(), Some(2));
}

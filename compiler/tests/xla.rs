//! `qc compile --target xla|tpu`, `qc inspect` and the .qca artifact, end to end: the tiny BERT-style
//! encoder and Llama-style decoder (scripts/models) compiled to StableHLO, run by XLA through JAX's CPU
//! client (scripts/xla/run_stablehlo.py) and compared with `qc run` (the reference interpreter) on the
//! same compiled IR and inputs, float and with quantized weights.
//!
//! The model tests need the `xla` feature (`cargo test -p qc --features xla`, as scripts/test.sh runs)
//! and python3 with numpy, onnx and jax (`bash .ci/install-python.sh`); they fail, saying so, when
//! python is incomplete. Without the feature, the test here checks that `--target` says how to get it.

use std::path::Path;
#[cfg(feature = "xla")]
use std::path::PathBuf;
use std::process::Command;

fn p(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn qc_out(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(args)
        .output()
        .expect("run qc")
}

#[test]
fn inspect_rejects_what_is_not_an_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.qca");
    std::fs::write(&bad, b"PK\x03\x04 not really").unwrap();
    let out = qc_out(&["inspect", p(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid qc artifact"), "{err}");
    let out = qc_out(&["inspect", p(&dir.path().join("missing.qca"))]);
    assert_eq!(out.status.code(), Some(2));
}

#[cfg(not(feature = "xla"))]
#[test]
fn target_without_the_backend_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.qir");
    std::fs::write(
        &model,
        "func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {\n  return %x : tensor<4xf32>\n}\n",
    )
    .unwrap();
    let out = qc_out(&[
        "compile",
        p(&model),
        "--passes",
        "canonicalize",
        "--target",
        "xla",
        "-o",
        p(&dir.path().join("m.qca")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features xla"), "{err}");
}

#[cfg(feature = "xla")]
mod with_xla {
    use super::*;
    use qc::npy::read_npy;

    /// Outputs must agree within this fraction of the largest reference magnitude.
    const TOL: f64 = 1e-4;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn run(cmd: &mut Command, what: &str) -> String {
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

    fn qc(args: &[&str]) -> String {
        run(
            Command::new(env!("CARGO_BIN_EXE_qc")).args(args),
            &format!("qc {}", args.join(" ")),
        )
    }

    fn require_python() {
        let probe = Command::new("python3")
            .args(["-c", "import numpy, onnx, jax"])
            .output();
        match probe {
            Err(e) => panic!(
                "python3 is required by the XLA tests and could not be run ({e}); run bash .ci/install-python.sh"
            ),
            Ok(o) if !o.status.success() => panic!(
                "the XLA tests need numpy, onnx and jax in python3: {}run bash .ci/install-python.sh",
                String::from_utf8_lossy(&o.stderr)
            ),
            Ok(_) => {}
        }
    }

    fn python(script: &Path, args: &[&str]) -> String {
        run(
            Command::new("python3").arg(script).args(args),
            &format!("python3 {} {}", script.display(), args.join(" ")),
        )
    }

    /// Max |a - b| / max |b| over two .npy files.
    fn rel(actual: &Path, expected: &Path) -> f64 {
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

    /// Compiles `kind` with `passes` for `target`, runs it on XLA and compares with `qc run` of the same
    /// pipeline's IR; returns the relative error per output.
    fn check(kind: &str, passes: &str, target: &str) -> Vec<(String, f64)> {
        require_python();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let model = d.join(format!("{kind}.onnx"));
        let scripts = repo().join("scripts/models");
        python(
            &scripts.join(format!("make_{kind}.py")),
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
        let inputs = d.join("in");
        python(
            &scripts.join("check.py"),
            &[
                "inputs",
                "--model",
                p(&model),
                "--out",
                p(&inputs),
                "--batch",
                "2",
                "--seq",
                "7",
            ],
        );
        let qca = d.join("model.qca");
        let args = [
            "compile",
            p(&model),
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
        // Byte-identical for the same input.
        let again = d.join("again.qca");
        let mut args2 = args;
        args2[args2.len() - 1] = p(&again);
        qc(&args2);
        assert_eq!(
            std::fs::read(&qca).unwrap(),
            std::fs::read(&again).unwrap(),
            "{kind}: the artifact is not deterministic"
        );
        let summary = qc(&["inspect", p(&qca)]);
        assert!(
            summary.contains(&format!("target     {target}")),
            "{summary}"
        );
        assert!(summary.contains("model.mlir"), "{summary}");
        assert!(
            summary.contains(&format!("pipeline   {passes}")),
            "{summary}"
        );
        let ex = d.join("ex");
        qc(&["inspect", p(&qca), "--extract", p(&ex)]);
        let manifest: serde_json_lite::Manifest =
            serde_json_lite::parse(&std::fs::read_to_string(ex.join("manifest.json")).unwrap());
        let mlir = std::fs::read_to_string(ex.join("model.mlir")).unwrap();
        assert!(mlir.contains("func.func @main"), "{mlir:.400}");
        // XLA, inputs in the entry's argument order.
        let xout = d.join("xla");
        let mut xargs = vec![
            p(&ex.join("model.mlir")).to_string(),
            "--out".into(),
            p(&xout).into(),
        ];
        for name in &manifest.inputs {
            xargs.push(p(&inputs.join(format!("{name}.npy"))).into());
        }
        let xargs: Vec<&str> = xargs.iter().map(String::as_str).collect();
        python(&repo().join("scripts/xla/run_stablehlo.py"), &xargs);
        // The interpreter on the same pipeline's IR.
        let qir = d.join("model.qir");
        qc(&["compile", p(&model), "--passes", passes, "-o", p(&qir)]);
        let refdir = d.join("ref");
        let mut rargs = vec!["run".to_string(), p(&qir).into()];
        for name in &manifest.inputs {
            rargs.push("--input".into());
            rargs.push(format!("{name}={}", p(&inputs.join(format!("{name}.npy")))));
        }
        rargs.extend(["-o".into(), p(&refdir).into()]);
        let rargs: Vec<&str> = rargs.iter().map(String::as_str).collect();
        qc(&rargs);
        let mut out = Vec::new();
        for (i, name) in manifest.outputs.iter().enumerate() {
            let r = rel(
                &xout.join(format!("output_{i}.npy")),
                &refdir.join(format!("{name}.npy")),
            );
            eprintln!(
                "{kind} {target} [{passes}]: {name}: max abs diff {r:.3e} of the output's scale"
            );
            assert!(
                r <= TOL,
                "{kind}: {name} on XLA differs from the interpreter by {r:.3e} of its scale (tolerance {TOL:e})"
            );
            out.push((name.clone(), r));
        }
        out
    }

    /// Just enough JSON reading for the manifest's input and output names (the test does not depend on
    /// serde).
    mod serde_json_lite {
        pub struct Manifest {
            pub inputs: Vec<String>,
            pub outputs: Vec<String>,
        }

        fn names(json: &str, key: &str) -> Vec<String> {
            let start = json
                .find(&format!("\"{key}\": ["))
                .unwrap_or_else(|| panic!("no {key} in {json}"));
            let rest = &json[start..];
            let end = rest.find("\n  ]").unwrap_or(rest.len());
            rest[..end]
                .lines()
                .filter_map(|l| l.trim().strip_prefix("\"name\": \""))
                .map(|l| l.trim_end_matches(['"', ',']).to_string())
                .collect()
        }

        pub fn parse(json: &str) -> Manifest {
            Manifest {
                inputs: names(json, "inputs"),
                outputs: names(json, "outputs"),
            }
        }
    }

    #[test]
    fn bert_float_on_xla_matches_the_interpreter() {
        let r = check("bert", "canonicalize,cse,dce", "xla");
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn bert_nvfp4_on_xla_matches_the_interpreter() {
        let r = check("bert", "canonicalize,cse,dce,quantize{w=nvfp4},dce", "xla");
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn llama_mxfp4_for_tpu_matches_the_interpreter() {
        let r = check("llama", "canonicalize,cse,dce,quantize{w=mxfp4},dce", "tpu");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn missing_shapes_and_outputs_are_diagnostics() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.qir");
        std::fs::write(
            &model,
            "func.func @main(%x: tensor<1x[n]xf32>) -> tensor<1x[n]xf32> {\n  %y = nn.lrn %x {size = 3} : (tensor<1x[n]xf32>) -> tensor<1x[n]xf32>\n  return %y : tensor<1x[n]xf32>\n}\n",
        )
        .unwrap();
        let qca = dir.path().join("m.qca");
        let base = [
            "compile",
            p(&model),
            "--passes",
            "canonicalize",
            "--target",
            "xla",
        ];
        let out = qc_out(&base);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("-o FILE.qca"));
        let mut args = base.to_vec();
        args.extend(["-o", p(&qca)]);
        let out = qc_out(&args);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("[n]") && err.contains("--shape n=N"), "{err}");
        args.extend(["--shape", "n=8"]);
        let out = qc_out(&args);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("m.qir:2:3") && err.contains("cannot lower nn.lrn"),
            "{err}"
        );
        assert!(!qca.exists(), "a failed compile wrote an artifact");
    }
}

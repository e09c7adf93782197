//! `qc compile --target xla|tpu`, `qc inspect` and the .qca artifact, end to end: the tiny BERT-style
//! encoder and Llama-style decoder (scripts/models) compiled to StableHLO, run by XLA through JAX's CPU
//! client (scripts/xla/run_stablehlo.py) and compared with `qc run` (the reference interpreter) on the
//! same compiled IR and inputs, float and with quantized weights.
//!
//! The model tests need the `xla` feature (`cargo test -p qc --features xla`, as scripts/test.sh runs)
//! and python3 with numpy, onnx and jax (`bash .ci/install-python.sh`); they fail, saying so, when
//! python is incomplete. Without the feature, the test here checks that `--target` says how to get it.

#[cfg(feature = "xla")]
use std::path::Path;
#[cfg(feature = "xla")]
use std::process::Command;

mod common;
use common::{p, qc_out};

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
    use common::{ok as run, qc, rel, repo};

    /// Outputs must agree within this fraction of the largest reference magnitude.
    const TOL: f64 = 1e-4;

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

#[cfg(not(feature = "xla"))]
#[test]
fn emit_mlir_without_the_backend_says_how_to_get_it() {
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
        "--emit",
        "mlir",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features xla"), "{err}");
}

/// `qc compile --emit mlir`: the tiny BERT-style encoder exported to upstream MLIR (func, arith, math,
/// tensor, linalg), float and with quantized weights. Each export passes MLIR's verifier and parses back
/// to the same text; mlir-opt (LLVM 22, UPSTREAM_MLIR_BIN, default /usr/lib/llvm-22/bin) bufferizes
/// every one, and lowers to the LLVM dialect the ones whose low-precision types it can lower on a CPU,
/// which mlir-runner then runs: their outputs are compared with `qc run` on the same compiled IR.
/// Needs python3 with numpy and onnx for the model.
#[cfg(feature = "xla")]
mod emit_mlir {
    use super::*;
    use common::ok;
    use qc::npy::{read_npy, NpyData};
    use std::path::PathBuf;

    fn llvm_bin(tool: &str) -> PathBuf {
        let dir = std::env::var("UPSTREAM_MLIR_BIN").unwrap_or("/usr/lib/llvm-22/bin".into());
        let p = Path::new(&dir).join(tool);
        assert!(
            p.exists(),
            "{} is needed (set UPSTREAM_MLIR_BIN to LLVM 22's bin folder)",
            p.display()
        );
        p
    }

    const LOWER_TO_LLVM: &[&str] = &[
        "--convert-elementwise-to-linalg",
        "--one-shot-bufferize=bufferize-function-boundaries",
        "--convert-linalg-to-loops",
        "--expand-strided-metadata",
        "--lower-affine",
        "--arith-expand=include-f4e2m1=true include-f8e8m0=true",
        "--convert-math-to-llvm",
        "--convert-math-to-libm",
        "--convert-scf-to-cf",
        "--convert-to-llvm",
        "--reconcile-unrealized-casts",
    ];

    struct Bert {
        _dir: tempfile::TempDir,
        d: PathBuf,
        model: PathBuf,
    }

    fn bert() -> Bert {
        model("bert")
    }

    /// The tiny `kind` model (bert or llama) and its inputs (batch 2, sequence 7).
    fn model(kind: &str) -> Bert {
        let t = common::tiny_model(kind);
        Bert {
            _dir: t.dir,
            d: t.d,
            model: t.model,
        }
    }

    fn qc(args: &[&str]) -> String {
        ok(
            Command::new(env!("CARGO_BIN_EXE_qc")).args(args),
            &format!("qc {}", args.join(" ")),
        )
    }

    /// `qc compile --emit mlir` of the model with `passes`: checks determinism, MLIR's verifier and
    /// parser (the text parses back to itself) and mlir-opt's bufferization; returns the text's path.
    fn export(b: &Bert, passes: &str, tag: &str) -> PathBuf {
        let out = b.d.join(format!("{tag}.mlir"));
        let args = [
            "compile",
            p(&b.model),
            "--passes",
            passes,
            "--emit",
            "mlir",
            "--shape",
            "batch=2",
            "--shape",
            "seq=7",
            "-o",
            p(&out),
        ];
        qc(&args);
        let text = std::fs::read_to_string(&out).unwrap();
        let mut again = args;
        let out2 = b.d.join(format!("{tag}.again.mlir"));
        again[again.len() - 1] = p(&out2);
        qc(&again);
        assert_eq!(
            std::fs::read_to_string(&out2).unwrap(),
            text,
            "{tag}: not deterministic"
        );
        assert!(
            text.contains("func.func @main(%arg0: tensor<2x7xi64>"),
            "{tag}"
        );
        assert!(text.contains("linalg.generic"), "{tag}");
        let reparsed = qc_backend_hlo::upstream::verify_upstream_text(&text)
            .unwrap_or_else(|e| panic!("{tag}: MLIR rejects the text: {e}"));
        assert_eq!(reparsed, text, "{tag}: the text does not round-trip");
        ok(
            Command::new(llvm_bin("mlir-opt"))
                .arg(&out)
                .args(["--one-shot-bufferize=bufferize-function-boundaries", "-o"])
                .arg(b.d.join(format!("{tag}.buf.mlir"))),
            &format!("mlir-opt --one-shot-bufferize on {tag}"),
        );
        out
    }

    fn hex_literal(a: &qc::npy::NpyArray) -> (String, String) {
        let dims: String = a.shape.iter().map(|d| format!("{d}x")).collect();
        let (bytes, e): (Vec<u8>, &str) = match &a.data {
            NpyData::I64(v) => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), "i64"),
            NpyData::F32(v) => (v.iter().flat_map(|x| x.to_le_bytes()).collect(), "f32"),
            other => panic!("unexpected input dtype {}", other.descr()),
        };
        let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
        (format!("dense<\"0x{hex}\">"), format!("tensor<{dims}{e}>"))
    }

    /// Lowers the export at `mlir` to the LLVM dialect, runs it with mlir-runner on the model's inputs
    /// and compares each output with `qc run` of the same pipeline; returns the relative errors.
    fn run_and_compare(b: &Bert, mlir: &Path, passes: &str, tag: &str) -> Vec<f64> {
        let qir = b.d.join(format!("{tag}.qir"));
        qc(&["compile", p(&b.model), "--passes", passes, "-o", p(&qir)]);
        let qtext = std::fs::read_to_string(&qir).unwrap();
        let sig = qtext
            .lines()
            .find(|l| l.contains("func.func @main("))
            .unwrap();
        let arg_names: Vec<&str> = sig
            .split('%')
            .skip(1)
            .map(|s| s.split(':').next().unwrap())
            .collect();
        let ret = qtext
            .lines()
            .find(|l| l.trim_start().starts_with("return "))
            .unwrap();
        let out_names: Vec<&str> = ret
            .trim_start()
            .trim_start_matches("return ")
            .split(':')
            .next()
            .unwrap()
            .split(',')
            .map(|s| s.trim().trim_start_matches('%'))
            .collect();
        let refdir = b.d.join(format!("{tag}.ref"));
        let mut rargs = vec!["run".to_string(), p(&qir).into()];
        for n in &arg_names {
            rargs.push("--input".into());
            rargs.push(format!("{n}={}", p(&b.d.join(format!("in/{n}.npy")))));
        }
        rargs.extend(["-o".into(), p(&refdir).into()]);
        qc(&rargs.iter().map(String::as_str).collect::<Vec<_>>());
        let want: Vec<Vec<f32>> = out_names
            .iter()
            .map(|n| read_npy(&refdir.join(format!("{n}.npy"))).unwrap().to_f32())
            .collect();
        let want_shapes: Vec<Vec<usize>> = out_names
            .iter()
            .map(|n| read_npy(&refdir.join(format!("{n}.npy"))).unwrap().shape)
            .collect();
        // An entry function: the inputs as constants, main, each output printed as its f32 bits.
        let mut entry = String::from(
            "  func.func private @printMemrefI32(memref<*xi32>) attributes {llvm.emit_c_interface}\n  func.func @entry() {\n",
        );
        let mut in_tys = Vec::new();
        for (i, n) in arg_names.iter().enumerate() {
            let a = read_npy(&b.d.join(format!("in/{n}.npy"))).unwrap();
            let (lit, ty) = hex_literal(&a);
            entry += &format!("    %a{i} = arith.constant {lit} : {ty}\n");
            in_tys.push(ty);
        }
        let out_tys: Vec<String> = want_shapes
            .iter()
            .map(|s| {
                format!(
                    "tensor<{}f32>",
                    s.iter().map(|d| format!("{d}x")).collect::<String>()
                )
            })
            .collect();
        let k = out_tys.len();
        let args: Vec<String> = (0..arg_names.len()).map(|i| format!("%a{i}")).collect();
        entry += &format!(
            "    %r:{k} = func.call @main({}) : ({}) -> ({})\n",
            args.join(", "),
            in_tys.join(", "),
            out_tys.join(", ")
        );
        for (i, ty) in out_tys.iter().enumerate() {
            let ity = ty.replace("xf32>", "xi32>");
            let mty = ity.replace("tensor<", "memref<");
            entry += &format!(
                "    %b{i} = arith.bitcast %r#{i} : {ty} to {ity}\n    %m{i} = bufferization.to_buffer %b{i} : {ity} to {mty}\n    %u{i} = memref.cast %m{i} : {mty} to memref<*xi32>\n    func.call @printMemrefI32(%u{i}) : (memref<*xi32>) -> ()\n"
            );
        }
        entry += "    return\n  }\n";
        let text = std::fs::read_to_string(mlir).unwrap();
        let end = text.rfind('}').unwrap();
        let full = b.d.join(format!("{tag}.entry.mlir"));
        std::fs::write(&full, format!("{}{entry}}}\n", &text[..end])).unwrap();
        let low = b.d.join(format!("{tag}.llvm.mlir"));
        ok(
            Command::new(llvm_bin("mlir-opt"))
                .arg(&full)
                .args(LOWER_TO_LLVM)
                .arg("-o")
                .arg(&low),
            &format!("mlir-opt lowering {tag} to LLVM"),
        );
        let lib = llvm_bin("mlir-opt")
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("lib");
        let libs = format!(
            "-shared-libs={},{}",
            p(&lib.join("libmlir_runner_utils.so")),
            p(&lib.join("libmlir_c_runner_utils.so"))
        );
        let stdout = ok(
            Command::new(llvm_bin("mlir-runner"))
                .args(["-e", "entry", "-entry-point-result=void", &libs])
                .arg(&low),
            &format!("mlir-runner on {tag}"),
        );
        let got: Vec<Vec<f32>> = stdout
            .split("Unranked Memref")
            .skip(1)
            .map(|chunk| {
                let data = &chunk[chunk.find("data =").unwrap() + 6..];
                data.split(|c: char| !(c.is_ascii_digit() || c == '-'))
                    .filter(|s| !s.is_empty() && *s != "-")
                    .map(|s| f32::from_bits(s.parse::<i64>().unwrap() as u32))
                    .collect()
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{tag}: outputs");
        got.iter()
            .zip(&want)
            .zip(&out_names)
            .map(|((g, w), name)| {
                assert_eq!(g.len(), w.len(), "{tag} {name}: element count");
                let scale = w.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
                let r = g.iter().zip(w).fold(0f64, |m, (&x, &y)| {
                    let d = (x as f64 - y as f64).abs();
                    if d.is_nan() {
                        f64::INFINITY
                    } else {
                        m.max(d)
                    }
                }) / scale;
                eprintln!("{tag}: {name}: max abs diff {r:.3e} of the output's scale");
                assert!(
                    r <= 1e-5,
                    "{tag}: {name} differs from qc run by {r:.3e} of its scale"
                );
                r
            })
            .collect()
    }

    #[test]
    fn bert_float_exports_to_upstream_mlir_that_runs_like_the_interpreter() {
        let b = bert();
        let passes = "canonicalize,cse,dce";
        let out = export(&b, passes, "float");
        let text = std::fs::read_to_string(&out).unwrap();
        for op in [
            "tensor.extract",
            "tensor.collapse_shape",
            "math.sqrt",
            "math.tanh",
        ] {
            assert!(text.contains(op), "no {op}");
        }
        assert_eq!(run_and_compare(&b, &out, passes, "float").len(), 2);
    }

    #[test]
    fn bert_quantized_exports_to_upstream_mlir_with_builtin_low_precision_weights() {
        let b = bert();
        for (w, types, runs) in [
            ("nvfp4", &["xf4E2M1FN>", "xf8E4M3FN>"][..], false),
            ("fp8_e4m3", &["xf8E4M3FN>"][..], false),
            // The tiny model's dimensions (32, 64) are not multiples of 128: int4_g32 stands in for int4_g128.
            ("int4_g32", &["xi4>"][..], true),
            ("mxfp4", &["xf4E2M1FN>", "xf8E8M0FNU>"][..], true),
        ] {
            let passes = format!("canonicalize,cse,dce,quantize{{w={w}}},dce");
            let out = export(&b, &passes, w);
            let text = std::fs::read_to_string(&out).unwrap();
            for t in types {
                assert!(text.contains(t), "{w}: no {t}");
            }
            assert!(
                text.contains("arith.extf") || text.contains("arith.sitofp"),
                "{w}"
            );
            if runs {
                assert_eq!(run_and_compare(&b, &out, &passes, w).len(), 2);
            }
        }
    }

    #[test]
    fn llama_exports_to_upstream_mlir_that_runs_like_the_interpreter() {
        let b = model("llama");
        for (passes, tag, runs) in [
            ("canonicalize,cse,dce", "llama_float", true),
            (
                "canonicalize,cse,dce,quantize{w=mxfp4},dce",
                "llama_mxfp4",
                true,
            ),
            (
                "canonicalize,cse,dce,quantize{w=nvfp4},dce",
                "llama_nvfp4",
                false,
            ),
        ] {
            let out = export(&b, passes, tag);
            if runs {
                assert_eq!(run_and_compare(&b, &out, passes, tag).len(), 1);
            }
        }
    }

    #[test]
    fn emit_mlir_of_an_op_it_cannot_export_is_a_located_diagnostic() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.qir");
        std::fs::write(
            &model,
            "func.func @main(%x: tensor<[n]x32xf32>) -> tensor<[n]x32xf32> {\n  %q = quant.quantize %x : (tensor<[n]x32xf32>) -> tensor<[n]x32x!quant.mxfp4>\n  %y = quant.dequantize %q : (tensor<[n]x32x!quant.mxfp4>) -> tensor<[n]x32xf32>\n  return %y : tensor<[n]x32xf32>\n}\n",
        )
        .unwrap();
        let out_path = dir.path().join("m.mlir");
        let base = [
            "compile",
            p(&model),
            "--passes",
            "canonicalize",
            "--emit",
            "mlir",
            "-o",
            p(&out_path),
        ];
        let out = qc_out(&base);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("[n]") && err.contains("--shape n=N"), "{err}");
        let mut args = base.to_vec();
        args.extend(["--shape", "n=8"]);
        let out = qc_out(&args);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("m.qir:2:3") && err.contains("cannot export quant.quantize"),
            "{err}"
        );
        assert!(!out_path.exists(), "a failed export wrote its output");
        // --shape without --target or --emit mlir is refused.
        let out = qc_out(&[
            "compile",
            p(&model),
            "--passes",
            "canonicalize",
            "--shape",
            "n=8",
        ]);
        assert_eq!(out.status.code(), Some(2));
    }
}

//! The quantization methods on a BERT-style model with calibration data (issue 5, evidence): each test
//! measures and can fail.
//!
//! The model is scripts/models/make_bert.py at hidden 256, intermediate 512, one layer, with Student-t(3)
//! weights (heavy tails, as trained weights have); calibration data is 8 runs of batch 4 x seq 16 token
//! ids, and a held-out input checks whole-model functions. Needs python3 with numpy and onnx
//! (`bash .ci/install-python.sh`); fails, saying so, without them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qc::cmd::compile::{compile_module, CompileArgs, Method};
use qc::cmd::report::{measure, prepare, LayerMetrics};
use qc::cmd::run::run_with_inputs;
use qc_ir::pass::PassManager;
use qc_ir::Module;
use qc_runtime::interp::{Data, Tensor};

mod common;
use common::{models_script, qc_out};

struct Fixture {
    model: PathBuf,
    calib: PathBuf,
    /// `NAME=FILE.npy` specs of the held-out input.
    eval: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("methods");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("bert.onnx");
        let m = model.to_str().unwrap();
        models_script(
            "make_bert.py",
            &[
                "--config",
                "tiny",
                "--hidden",
                "256",
                "--intermediate",
                "512",
                "--layers",
                "1",
                "--heads",
                "4",
                "--dist",
                "t3",
                "--std",
                "0.05",
                "--seed",
                "5",
                "--out",
                m,
            ],
        );
        let calib = dir.join("calib");
        std::fs::create_dir_all(&calib).unwrap();
        for run in 0..8 {
            let d = dir.join(format!("run{run}"));
            let seed = (100 + run).to_string();
            models_script(
                "check.py",
                &[
                    "inputs",
                    "--model",
                    m,
                    "--out",
                    d.to_str().unwrap(),
                    "--batch",
                    "4",
                    "--seq",
                    "16",
                    "--seed",
                    &seed,
                ],
            );
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
                std::fs::rename(&p, calib.join(format!("{stem}.{run}.npy"))).unwrap();
            }
        }
        let held = dir.join("eval");
        models_script(
            "check.py",
            &[
                "inputs",
                "--model",
                m,
                "--out",
                held.to_str().unwrap(),
                "--batch",
                "2",
                "--seq",
                "16",
                "--seed",
                "7",
            ],
        );
        let mut eval = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&held)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for p in files {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
            eval.push(format!("{stem}={}", p.display()));
        }
        Fixture { model, calib, eval }
    })
}

fn base(calibrated: bool) -> Module {
    let f = fixture();
    prepare(&f.model, calibrated.then_some(f.calib.as_path()))
        .unwrap_or_else(|e| panic!("{}", e.message()))
}

fn apply(m: &mut Module, pipeline: &str) {
    let passes = qc_passes::registry()
        .parse_pipeline(pipeline)
        .unwrap_or_else(|d| panic!("{d}"));
    PassManager::new(passes, Default::default())
        .run(m, &qc::registry(), &mut std::io::sink())
        .unwrap_or_else(|e| panic!("{pipeline}: {e}"));
}

fn outputs(m: &Module) -> Vec<Tensor> {
    run_with_inputs(m, "main", &fixture().eval).unwrap_or_else(|e| panic!("{}", e.message()))
}

fn values(t: &Tensor) -> Vec<f64> {
    match &t.data {
        Data::F(v) => v.clone(),
        Data::I(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

/// Max |a - b| over max |a| across all outputs.
fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    assert_eq!(a.len(), b.len());
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

/// Relative RMS error of the first output (last_hidden_state).
fn rms_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    let (x, y) = (values(&a[0]), values(&b[0]));
    let num: f64 = x.iter().zip(&y).map(|(p, q)| (p - q) * (p - q)).sum();
    let den: f64 = x.iter().map(|p| p * p).sum();
    (num / den).sqrt()
}

fn mean_db(rows: &[LayerMetrics], format: &str, method: &str, output: bool) -> f64 {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r.format == format && r.method == method && r.quantized)
        .map(|r| {
            if output {
                r.output_qsnr_db.expect("calibrated")
            } else {
                r.weight_qsnr_db
            }
        })
        .collect();
    assert!(!v.is_empty(), "no quantized layers for {format} {method}");
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn gptq_lowers_layer_output_error_against_rtn() {
    let b = base(true);
    let rows = measure(
        &b,
        &["int4_g128".into(), "nvfp4".into()],
        &[Method::Rtn, Method::Gptq],
    )
    .unwrap_or_else(|e| panic!("{}", e.message()));
    for fmt in ["int4_g128", "nvfp4"] {
        let rtn: Vec<&LayerMetrics> = rows
            .iter()
            .filter(|r| r.format == fmt && r.method == "rtn")
            .collect();
        let gptq: Vec<&LayerMetrics> = rows
            .iter()
            .filter(|r| r.format == fmt && r.method == "gptq")
            .collect();
        assert_eq!(rtn.len(), gptq.len());
        assert!(
            rtn.len() >= 6,
            "expected the 6 encoder layers and the pooler, got {}",
            rtn.len()
        );
        for (r, g) in rtn.iter().zip(&gptq) {
            assert_eq!(r.layer, g.layer);
            let (ro, go) = (r.output_qsnr_db.unwrap(), g.output_qsnr_db.unwrap());
            eprintln!(
                "{fmt} {}: output QSNR rtn {ro:.2} dB, gptq {go:.2} dB",
                r.layer
            );
            assert!(
                go > ro,
                "{fmt} {}: GPTQ output QSNR {go:.2} dB is not above RTN's {ro:.2} dB",
                r.layer
            );
        }
        let (mr, mg) = (
            mean_db(&rows, fmt, "rtn", true),
            mean_db(&rows, fmt, "gptq", true),
        );
        eprintln!("{fmt}: mean output QSNR rtn {mr:.2} dB, gptq {mg:.2} dB");
        assert!(
            mg > mr + 0.5,
            "{fmt}: GPTQ gains only {:.2} dB on average",
            mg - mr
        );
    }
}

#[test]
fn mr_gptq_on_mxfp4() {
    let b = base(true);
    let rows = measure(
        &b,
        &["mxfp4".into()],
        &[Method::Rtn, Method::Gptq, Method::MrGptq],
    )
    .unwrap_or_else(|e| panic!("{}", e.message()));
    let (r, g, mr) = (
        mean_db(&rows, "mxfp4", "rtn", true),
        mean_db(&rows, "mxfp4", "gptq", true),
        mean_db(&rows, "mxfp4", "mr-gptq", true),
    );
    eprintln!("mxfp4 mean output QSNR: rtn {r:.2} dB, gptq {g:.2} dB, mr-gptq {mr:.2} dB");
    assert!(g > r, "GPTQ {g:.2} dB not above RTN {r:.2} dB");
    assert!(
        mr > g,
        "MR-GPTQ {mr:.2} dB not above GPTQ {g:.2} dB on heavy-tailed weights"
    );
}

#[test]
fn hadamard_rotation_preserves_the_function_and_raises_weight_qsnr() {
    let plain = base(false);
    let float_out = outputs(&plain);
    let mut rotated = plain.clone();
    apply(&mut rotated, "rotate{mode=hadamard}");
    let e = rel_err(&float_out, &outputs(&rotated));
    eprintln!("rotated model vs float: max relative error {e:.2e}");
    assert!(e < 1e-4, "rotation changed the f32 function: {e:.2e}");
    let fmts = ["int4_g128".to_string(), "mxfp4".to_string()];
    let before =
        measure(&plain, &fmts, &[Method::Rtn]).unwrap_or_else(|e| panic!("{}", e.message()));
    let after =
        measure(&rotated, &fmts, &[Method::Rtn]).unwrap_or_else(|e| panic!("{}", e.message()));
    for f in &fmts {
        let (b, a) = (
            mean_db(&before, f, "rtn", false),
            mean_db(&after, f, "rtn", false),
        );
        eprintln!("{f}: mean weight QSNR {b:.2} dB unrotated, {a:.2} dB rotated");
        assert!(
            a > b + 0.5,
            "{f}: rotation raised weight QSNR by only {:.2} dB",
            a - b
        );
    }
}

#[test]
fn lorc_error_falls_as_the_rank_grows() {
    let f = fixture();
    let float_out = outputs(&base(false));
    let mut last = f64::INFINITY;
    for rank in [0usize, 8, 32, 96] {
        let args = CompileArgs {
            model: f.model.clone(),
            wformat: Some("int4_g128".into()),
            lorc_rank: (rank > 0).then_some(rank),
            ..Default::default()
        };
        let m = compile_module(&args, &mut std::io::sink())
            .unwrap_or_else(|e| panic!("{}", e.message()));
        let e = rms_err(&float_out, &outputs(&m));
        eprintln!("int4_g128 + LoRC rank {rank}: output relative RMS error {e:.4e}");
        assert!(
            e < last,
            "rank {rank}: error {e:.4e} did not fall below {last:.4e}"
        );
        last = e;
    }
}

#[test]
fn exponent_bias_folding_and_smoothquant_are_exact_in_f32() {
    let b = base(true);
    let float_out = outputs(&b);
    let mut r = b.clone();
    apply(&mut r, "reparam-exp-bias");
    let e = rel_err(&float_out, &outputs(&r));
    eprintln!("reparam-exp-bias vs float: max relative error {e:.2e}");
    assert!(
        e < 1e-6,
        "exponent-bias folding changed the f32 function: {e:.2e}"
    );
    let mut s = b.clone();
    apply(&mut s, "smooth{alpha=0.5}");
    let e = rel_err(&float_out, &outputs(&s));
    eprintln!("smooth{{alpha=0.5}} vs float: max relative error {e:.2e}");
    assert!(e < 1e-5, "SmoothQuant changed the f32 function: {e:.2e}");
}

#[test]
fn compile_emits_deterministic_qir_that_runs() {
    let f = fixture();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("methods-compile");
    std::fs::create_dir_all(&dir).unwrap();
    let float_out = outputs(&base(false));
    for (flags, bound) in [
        (&["--wformat", "int4_g128"][..], 0.2),
        (&["--wformat", "nvfp4", "--method", "gptq"], 0.2),
        (
            &[
                "--wformat",
                "mxfp4",
                "--method",
                "mr-gptq",
                "--aformat",
                "fp8_e4m3",
            ],
            0.2,
        ),
        (&["--wformat", "fp8_e4m3", "--aformat", "fp8_e4m3"], 0.1),
    ] {
        let mut texts = Vec::new();
        for i in 0..2 {
            let out = dir.join(format!("out{i}.qir"));
            let mut args = vec![
                "compile",
                f.model.to_str().unwrap(),
                "--calib",
                f.calib.to_str().unwrap(),
            ];
            args.extend_from_slice(flags);
            args.extend(["--emit", "qir", "-o", out.to_str().unwrap()]);
            let o = qc_out(&args);
            assert!(
                o.status.success(),
                "qc {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            texts.push(std::fs::read(&out).unwrap());
        }
        assert!(texts[0] == texts[1], "{flags:?}: two compiles differ");
        let m = qc::cmd::import::load_module(&dir.join("out0.qir"))
            .unwrap_or_else(|e| panic!("{}", e.message()));
        let e = rms_err(&float_out, &outputs(&m));
        eprintln!("{flags:?}: output relative RMS error {e:.4e}");
        assert!(e < bound, "{flags:?}: output error {e:.4e} above {bound}");
        let text = String::from_utf8_lossy(&texts[0]);
        assert!(
            text.contains("quant.matmul"),
            "{flags:?}: no quantized matmul in the output"
        );
        if flags.contains(&"--aformat") {
            assert!(
                text.contains("quant.quantize"),
                "{flags:?}: activation quantization is not explicit"
            );
        }
    }
}

#[test]
fn report_writes_a_table_and_html_with_plots() {
    let f = fixture();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("methods-report");
    std::fs::create_dir_all(&dir).unwrap();
    let html = dir.join("report.html");
    let o = qc_out(&[
        "report",
        f.model.to_str().unwrap(),
        "--formats",
        "int4_g128,nvfp4",
        "--method",
        "rtn,gptq",
        "--calib",
        f.calib.to_str().unwrap(),
        "-o",
        html.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    // 7 layers x 2 formats x 2 methods, plus the header.
    assert_eq!(table.lines().count(), 1 + 7 * 4, "{table}");
    assert!(
        table.contains("encoder.layer.0.intermediate.dense.weight"),
        "{table}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg ").count(), 2, "two plots");
    assert_eq!(page.matches("</svg>").count(), 2);
    // One line per (format, method) in each plot, with a point per layer.
    assert_eq!(page.matches("<polyline").count(), 2 * 4);
    assert_eq!(page.matches("<circle").count(), 2 * 4 * 7);
    assert!(
        !page.contains("NaN") && !page.contains("inf\""),
        "non-finite coordinates in the plots"
    );
}

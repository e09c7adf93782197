//! `qc compile --target x86-64-v4|x86-64-v3|native` and `qc run ARTIFACT.qca`, end to end: the tiny
//! BERT-style encoder and the tiny Llama-style decoder (scripts/models), float and with quantized
//! weights in the formats qc's CPU kernels read (int4, int8, nvfp4, mxfp4, mxfp6, mxint8, fp8),
//! compiled to a shared library (upstream MLIR -> mlir-opt / mlir-translate of LLVM 22 -> inkwell -> cc
//! -shared, quantized products calling qc's kernels on the artifact's weights.bin), run from the
//! artifact and compared with `qc run` (the reference interpreter) on the same compiled IR. Each level
//! runs only where the host CPU implements it. Activation quantization (`quant.quantize`, `--aformat`)
//! is checked bit for bit in isolation and on the shipped tiny BERT (examples/bert-tiny.onnx).
//! Convolutions, pooling, LRN and the other ops of compiler/tests/cpu_ops.py's models (ONNX linear
//! quantization and quant.hadamard bit for bit) are compared with the interpreter, and two of ONNX's
//! "light" CNNs with ONNX's expected outputs.
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

struct Model {
    _dir: tempfile::TempDir,
    d: PathBuf,
    model: PathBuf,
    inputs: &'static [&'static str],
    outputs: &'static [&'static str],
}

/// A tiny model of scripts/models (`bert` or `llama`) with its inputs (common::tiny_model) and the
/// names of its inputs and outputs.
fn model(kind: &str, inputs: &'static [&'static str], outputs: &'static [&'static str]) -> Model {
    let t = common::tiny_model(kind);
    Model {
        _dir: t.dir,
        d: t.d,
        model: t.model,
        inputs,
        outputs,
    }
}

fn bert() -> Model {
    model(
        "bert",
        &["input_ids", "token_type_ids", "attention_mask"],
        &["last_hidden_state", "pooler_output"],
    )
}

fn llama() -> Model {
    model("llama", &["input_ids", "attention_mask"], &["logits"])
}

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

fn input_args(b: &Model) -> Vec<String> {
    b.inputs
        .iter()
        .flat_map(|n| {
            [
                "--input".to_string(),
                format!("{n}={}", p(&b.d.join(format!("in/{n}.npy")))),
            ]
        })
        .collect()
}

/// `qc compile` of the model with `passes` for `target` (batch 2, sequence 7) into `out`.
fn compile_for(b: &Model, passes: &str, target: &str, out: &Path) {
    qc(&[
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
        p(out),
    ]);
}

/// What [`check`] does besides comparing each level's outputs with the interpreter.
#[derive(Clone, Copy, PartialEq)]
enum Extra {
    /// Nothing more.
    None,
    /// Compile twice (byte-identical artifacts), check `qc inspect` and its extracted parts, and call
    /// the library from a C program.
    All,
}

/// Compiles the model with `passes` for every CPU level the host runs, runs each artifact and compares
/// with the interpreter (plus `extra`); returns the relative errors.
fn check(b: &Model, passes: &str, tag: &str, extra: Extra) -> Vec<f64> {
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
        compile_for(b, passes, target, &qca);
        let outdir = b.d.join(format!("{tag}.{target}.out"));
        let mut args = vec!["run".to_string(), p(&qca).into()];
        args.extend(input_args(b));
        args.extend(["-o".into(), p(&outdir).into()]);
        qc(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if extra == Extra::All {
            inspect_and_call(b, passes, tag, target, &qca, &outdir);
        }
        for name in b.outputs {
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

/// Re-compiles into a second file (byte-identical), checks `qc inspect` and `--extract`, and runs the
/// C caller of [`c_caller`].
fn inspect_and_call(b: &Model, passes: &str, tag: &str, target: &str, qca: &Path, outdir: &Path) {
    let again = b.d.join(format!("{tag}.{target}.again.qca"));
    compile_for(b, passes, target, &again);
    assert_eq!(
        std::fs::read(qca).unwrap(),
        std::fs::read(&again).unwrap(),
        "{tag} {target}: the artifact is not deterministic"
    );
    let summary = qc(&["inspect", p(qca)]);
    for want in [
        format!("target     {target}"),
        "entry      @qc_main".into(),
        "model.so".into(),
        "model.h".into(),
        "weights.bin".into(),
        format!("pipeline   {passes}"),
    ] {
        assert!(summary.contains(&want), "no '{want}' in\n{summary}");
    }
    let ex = b.d.join(format!("{tag}.{target}.ex"));
    qc(&["inspect", p(qca), "--extract", p(&ex)]);
    assert!(ex.join("manifest.json").exists());
    let header = std::fs::read_to_string(ex.join("model.h")).unwrap();
    assert!(
        header.contains(
            "int qc_main(const void *weights, const int64_t *input_ids, const int64_t \
             *token_type_ids, const int64_t *attention_mask, float *last_hidden_state, float \
             *pooler_output);"
        ) && header.contains("int64_t qc_weights_size(void);"),
        "{header}"
    );
    c_caller(b, &ex, outdir, target);
}

/// A C program includes the extracted `model.h`, loads `weights.bin` into a 64-byte aligned buffer,
/// links `model.so` and calls `qc_main` on the same inputs: its outputs are bit-identical to those of
/// `qc run ARTIFACT.qca` in `outdir`.
fn c_caller(b: &Model, ex: &Path, outdir: &Path, target: &str) {
    for n in b.inputs {
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
  size_t wn = (size_t)qc_weights_size();
  void *w = wn ? aligned_alloc(64, (wn + 63) / 64 * 64) : NULL;
  if (wn && !w) return 5;
  if (wn) load("weights.bin", w, wn);
  load("input_ids.bin", ids, sizeof ids);
  load("token_type_ids.bin", tt, sizeof tt);
  load("attention_mask.bin", am, sizeof am);
  for (int k = 0; k < 3; k++)
    if (qc_main(w, ids, tt, am, hidden, pooled) != 0) return 4;
  FILE *o = fopen("out.bin", "wb");
  fwrite(hidden, 1, sizeof hidden, o);
  fwrite(pooled, 1, sizeof pooled, o);
  fclose(o);
  free(w);
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
    for name in b.outputs {
        let a = read_npy(&outdir.join(format!("{name}.npy"))).unwrap();
        want.extend(a.to_f32().iter().flat_map(|x| x.to_le_bytes()));
    }
    assert!(
        got == want,
        "{target}: the C caller's outputs differ from qc run's"
    );
}

fn quantized(w: &str) -> String {
    format!("canonicalize,cse,dce,quantize{{w={w}}},dce")
}

#[test]
fn bert_float_on_cpu_matches_the_interpreter() {
    let b = bert();
    check(&b, "canonicalize,cse,dce", "float", Extra::All);
}

#[test]
fn bert_quantized_on_cpu_matches_the_interpreter() {
    let b = bert();
    check(&b, &quantized("nvfp4"), "nvfp4", Extra::All);
    // The tiny model's dimensions (32, 64) are not multiples of 128: int4_g32 stands in for int4_g128.
    for w in [
        "int4_g32",
        "int8_channel",
        "mxfp4",
        "mxfp6",
        "mxfp8",
        "mxint8",
        "fp8_e4m3",
    ] {
        check(&b, &quantized(w), w, Extra::None);
    }
}

#[test]
fn llama_on_cpu_matches_the_interpreter() {
    let l = llama();
    check(&l, "canonicalize,cse,dce", "float", Extra::None);
    for w in ["nvfp4", "mxfp4", "int4_g32"] {
        check(&l, &quantized(w), w, Extra::None);
    }
}

#[test]
fn what_the_cpu_target_cannot_lower_is_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.qir");
    std::fs::write(
        &model,
        "func.func @main(%x: tensor<1x32xf32>) -> tensor<1x32xf32> {\n  \
         %q = quant.quantize %x : (tensor<1x32xf32>) -> tensor<1x32x!quant.int4_g32>\n  \
         %y = quant.dequantize %q : (tensor<1x32x!quant.int4_g32>) -> tensor<1x32xf32>\n  \
         return %y : tensor<1x32xf32>\n}\n",
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
        err.contains("m.qir:2:3") && err.contains("cannot export quant.quantize"),
        "{err}"
    );
    assert!(!out_path.exists(), "a failed compile wrote its output");
    // qc run refuses what is not an artifact.
    let bad = dir.path().join("bad.qca");
    std::fs::write(&bad, b"PK\x03\x04 not really").unwrap();
    let out = qc_out(&["run", p(&bad), "-o", p(&dir.path().join("o"))]);
    assert_eq!(out.status.code(), Some(2));
}

/// Products big enough to run on several threads (`[M, 1024] x [1024, 1536]`, M = 1 and 5): outputs
/// are bit-identical for 1 and 2 OpenMP threads and match the interpreter, for a 4-bit, an 8-bit
/// integer and an 8-bit minifloat format.
#[test]
fn threaded_products_are_deterministic_and_match_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("mm.onnx");
    let script = format!(
        "import numpy as np, onnx\n\
         from onnx import helper as h, TensorProto as T, numpy_helper as nh\n\
         r = np.random.default_rng(0)\n\
         w = nh.from_array((r.standard_normal((1024, 1536)) * 0.05).astype(np.float32), 'w')\n\
         g = h.make_graph([h.make_node('MatMul', ['x', 'w'], ['y']), h.make_node('Relu', ['y'], ['z'])],\n\
         \x20   'mm', [h.make_tensor_value_info('x', T.FLOAT, ['batch', 1024])],\n\
         \x20   [h.make_tensor_value_info('z', T.FLOAT, ['batch', 1536])], [w])\n\
         onnx.save(h.make_model(g, opset_imports=[h.make_opsetid('', 18)]), '{}')\n\
         for m in (1, 5, 20):\n\
         \x20   np.save('{}/x%d.npy' % m, r.standard_normal((m, 1024)).astype(np.float32))\n",
        p(&model),
        p(d)
    );
    ok(
        Command::new("python3").args(["-c", &script]),
        "making the MatMul model",
    );
    for w in ["int4_g32", "int8_channel", "mxfp8"] {
        let passes = quantized(w);
        let qir = d.join(format!("{w}.qir"));
        qc(&["compile", p(&model), "--passes", &passes, "-o", p(&qir)]);
        for m in [1, 5, 20] {
            let x = format!("x={}", p(&d.join(format!("x{m}.npy"))));
            let refdir = d.join(format!("{w}.{m}.ref"));
            qc(&["run", p(&qir), "--input", &x, "-o", p(&refdir)]);
            let qca = d.join(format!("{w}.{m}.qca"));
            qc(&[
                "compile",
                p(&model),
                "--passes",
                &passes,
                "--target",
                "native",
                "--shape",
                &format!("batch={m}"),
                "-o",
                p(&qca),
            ]);
            let mut outs = Vec::new();
            for threads in ["1", "2"] {
                let out = d.join(format!("{w}.{m}.t{threads}"));
                ok(
                    Command::new(env!("CARGO_BIN_EXE_qc"))
                        .env("OMP_NUM_THREADS", threads)
                        .args(["run", p(&qca), "--input", &x, "-o", p(&out)]),
                    "qc run",
                );
                let r = rel(&out.join("z.npy"), &refdir.join("z.npy"));
                eprintln!("{w} M={m} threads={threads}: {r:.3e} of the output's scale");
                assert!(r <= TOL, "{w} M={m} threads={threads}: {r:.3e}");
                outs.push(std::fs::read(out.join("z.npy")).unwrap());
            }
            assert!(
                outs[0] == outs[1],
                "{w} M={m}: 1 and 2 threads give different outputs"
            );
        }
    }
}

/// Activation formats the CPU target quantizes (`cpu_kernels::has_fake_quant`), with the static
/// maximum of the test's `quant.quantize` (`None`: no `amax`, the data's own maximum). The maxima make
/// the per-tensor scales powers of two (7.9375 / 127 = 2^-4, 7 / 448 = 2^-6, 7 / 57344 = 2^-13), so
/// that the dyadic inputs of [`fake_quant_inputs`] fall exactly on rounding ties.
const ACTIVATION_FORMATS: &[(&str, Option<f32>)] = &[
    ("int8", Some(7.9375)),
    ("int8", None),
    ("fp8_e4m3", Some(7.0)),
    ("fp8_e4m3", None),
    ("fp8_e5m2", Some(7.0)),
    ("mxfp8", None),
    ("mxfp8", Some(7.0)),
    ("mxfp4", None),
    ("nvfp4", Some(7.0)),
    ("nvfp4", Some(0.8)),
    ("nvfp4", None),
];

/// `[8, 64]` f32 inputs at `path`: alternating-sign multiples of 2^-1 .. 2^-7 (ties of every format at
/// some scale), zeros and -0, +-1e-30 (rounding to signed zeros), +-1000 and +-20 (beyond every
/// static maximum: saturation), a zero MX / NVFP4 block next to one of subnormals, values around ties
/// of 1/16, and normal and uniform noise.
fn fake_quant_inputs(path: &Path) {
    let script = format!(
        "import numpy as np\n\
         r = np.random.default_rng(0)\n\
         x = np.zeros((8, 64), np.float32)\n\
         k = np.arange(1, 65, dtype=np.float32)\n\
         sign = (1 - 2 * (np.arange(64) % 2)).astype(np.float32)\n\
         for e in range(4):\n\
         \x20   x[e] = k * np.float32(2.0 ** -(2 * e + 1)) * sign\n\
         x[4] = (r.standard_normal(64) * 3).astype(np.float32)\n\
         x[4, :8] = [0.0, -0.0, 1e-30, -1e-30, 1e3, -1e3, 20.0, -20.0]\n\
         x[5, 32:] = np.float32(1e-39) * np.arange(32, dtype=np.float32)\n\
         x[6] = (k - 32.5) / 16\n\
         x[7] = r.uniform(-20, 20, 64).astype(np.float32)\n\
         np.save('{}', x)\n",
        p(path)
    );
    ok(
        Command::new("python3").args(["-c", &script]),
        "making the quantization inputs",
    );
}

/// `x -> quant.quantize -> quant.dequantize` compiled for the host CPU gives bit-identical values to the
/// interpreter (qc_quant::tensor::quantize and dequantize) for every activation format the target
/// quantizes, at ties, zeros, signed zeros, saturation, zero and subnormal blocks.
#[test]
fn activation_quantization_on_cpu_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = d.join("x.npy");
    fake_quant_inputs(&x);
    let input = format!("x={}", p(&x));
    for (i, &(fmt, amax)) in ACTIVATION_FORMATS.iter().enumerate() {
        let tag = format!("{fmt}.{i}");
        let attr = amax
            .map(|a| format!(" {{amax = {a:?}}}"))
            .unwrap_or_default();
        let qir = d.join(format!("{tag}.qir"));
        std::fs::write(
            &qir,
            format!(
                "func.func @main(%x: tensor<8x64xf32>) -> tensor<8x64xf32> {{\n  \
                 %q = quant.quantize %x{attr} : (tensor<8x64xf32>) -> tensor<8x64x!quant.{fmt}>\n  \
                 %y = quant.dequantize %q : (tensor<8x64x!quant.{fmt}>) -> tensor<8x64xf32>\n  \
                 return %y : tensor<8x64xf32>\n}}\n"
            ),
        )
        .unwrap();
        let qca = d.join(format!("{tag}.qca"));
        qc(&[
            "compile",
            p(&qir),
            "--passes",
            "canonicalize",
            "--target",
            "native",
            "-o",
            p(&qca),
        ]);
        let (ro, co) = (d.join(format!("{tag}.ref")), d.join(format!("{tag}.cpu")));
        qc(&["run", p(&qir), "--input", &input, "-o", p(&ro)]);
        qc(&["run", p(&qca), "--input", &input, "-o", p(&co)]);
        let name = std::fs::read_dir(&ro)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name();
        let (r, c) = (
            read_npy(&ro.join(&name)).unwrap().to_f32(),
            read_npy(&co.join(&name)).unwrap().to_f32(),
        );
        assert_eq!(r.len(), 8 * 64);
        let bad: Vec<usize> = (0..r.len())
            .filter(|&j| r[j].to_bits() != c[j].to_bits())
            .collect();
        assert!(
            bad.is_empty(),
            "{fmt} (amax {amax:?}): {} elements differ from the interpreter, first at {}: {} vs {}",
            bad.len(),
            bad[0],
            c[bad[0]],
            r[bad[0]]
        );
        // The comparison means something: most outputs are not zero.
        let nonzero = r.iter().filter(|v| **v != 0.0).count();
        assert!(nonzero > 64, "{fmt}: the output is mostly zero");
        eprintln!("{fmt} (amax {amax:?}): bit-identical");
    }
}

/// The shipped tiny BERT with int4_g32 weights and quantized activations (static maxima from the
/// shipped calibration data), compiled for the host CPU, against the interpreter on the same IR. The
/// activation quantization is bit-exact (see above), but the products feeding it are not: the
/// interpreter accumulates in f64, the artifact in f32 (FMA chains), so an activation element that
/// lands within a rounding of a quantization boundary can quantize to a neighbouring code and move
/// its outputs by up to one quantum times a weight. Such flips are rare: at least 99% of the output
/// elements must agree within 1e-5 of the output's largest magnitude, and every element within 5%
/// (a flipped nvfp4 code moves one term of a 32-term product by a few percent of the output's scale
/// at most; observed: no flip, 2.4e-7 of the scale at most).
#[test]
fn bert_with_quantized_activations_on_cpu_matches_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = repo().join("examples/bert-tiny.onnx");
    let calib = repo().join("examples/bert-tiny-calib.npz");
    let names = ["input_ids", "token_type_ids", "attention_mask"];
    // One sequence of the calibration set (batch 1, sequence 16).
    let script = format!(
        "import numpy as np\n\
         d = np.load('{}')\n\
         for n in {names:?}:\n\
         \x20   np.save('{}/' + n + '.npy', d[n + '.2'][1:2])\n",
        p(&calib),
        p(d)
    );
    ok(
        Command::new("python3").args(["-c", &script]),
        "making the BERT inputs",
    );
    let inputs: Vec<String> = names
        .iter()
        .flat_map(|n| {
            [
                "--input".to_string(),
                format!("{n}={}", p(&d.join(format!("{n}.npy")))),
            ]
        })
        .collect();
    for a in ["int8", "fp8_e4m3", "mxfp8", "nvfp4"] {
        let qir = d.join(format!("{a}.qir"));
        let qca = d.join(format!("{a}.qca"));
        let flags = [
            p(&model),
            "--wformat",
            "int4_g32",
            "--aformat",
            a,
            "--calib",
            p(&calib),
        ];
        let mut args = vec!["compile"];
        args.extend(flags);
        args.extend(["-o", p(&qir)]);
        qc(&args);
        let text = std::fs::read_to_string(&qir).unwrap();
        assert!(
            text.contains("quant.quantize"),
            "{a}: no activation quantization"
        );
        let mut args = vec!["compile"];
        args.extend(flags);
        args.extend([
            "--target",
            "native",
            "--shape",
            "batch=1",
            "--shape",
            "seq=16",
            "-o",
            p(&qca),
        ]);
        qc(&args);
        let (ro, co) = (d.join(format!("{a}.ref")), d.join(format!("{a}.cpu")));
        for (m, o) in [(&qir, &ro), (&qca, &co)] {
            let mut args = vec!["run", p(m)];
            args.extend(inputs.iter().map(String::as_str));
            args.extend(["-o", p(o)]);
            qc(&args);
        }
        for name in ["last_hidden_state", "pooler_output"] {
            let f = format!("{name}.npy");
            let (r, c) = (
                read_npy(&ro.join(&f)).unwrap().to_f32(),
                read_npy(&co.join(&f)).unwrap().to_f32(),
            );
            assert_eq!(r.len(), c.len());
            let scale = r.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
            assert!(scale > 0.0);
            let diffs: Vec<f64> = r
                .iter()
                .zip(&c)
                .map(|(&x, &y)| {
                    let d = (x as f64 - y as f64).abs() / scale;
                    if d.is_nan() {
                        f64::INFINITY
                    } else {
                        d
                    }
                })
                .collect();
            let max = diffs.iter().fold(0f64, |m, &x| m.max(x));
            let close = diffs.iter().filter(|&&x| x <= TOL).count() as f64 / diffs.len() as f64;
            eprintln!(
                "bert {a}: {name}: max diff {max:.3e} of the output's scale, {:.2}% within {TOL:e}",
                close * 100.0
            );
            assert!(
                close >= 0.99,
                "bert {a}: {name}: only {:.2}% of the elements within {TOL:e} of the scale",
                close * 100.0
            );
            assert!(
                max <= 0.05,
                "bert {a}: {name}: an element differs by {max:.3e} of the scale"
            );
        }
    }
}

/// Runs compiler/tests/cpu_ops.py into `d` (its models and inputs).
fn op_models(d: &Path) {
    ok(
        Command::new("python3")
            .arg(repo().join("compiler/tests/cpu_ops.py"))
            .arg(d),
        "making the op models (compiler/tests/cpu_ops.py)",
    );
}

/// Compiles `model` (ONNX or qc IR) with `canonicalize` to qc IR and for the host CPU (`native`),
/// runs both on `inputs` (`name=path`) and returns the folders of the interpreter's and the
/// artifact's outputs with the output file names (sorted).
fn run_both(
    d: &Path,
    tag: &str,
    model: &Path,
    inputs: &[String],
) -> (PathBuf, PathBuf, Vec<String>) {
    let qir = d.join(format!("{tag}.qir"));
    let qca = d.join(format!("{tag}.qca"));
    qc(&[
        "compile",
        p(model),
        "--passes",
        "canonicalize",
        "-o",
        p(&qir),
    ]);
    qc(&[
        "compile",
        p(model),
        "--passes",
        "canonicalize",
        "--target",
        "native",
        "-o",
        p(&qca),
    ]);
    let (ro, co) = (d.join(format!("{tag}.ref")), d.join(format!("{tag}.cpu")));
    for (m, o) in [(&qir, &ro), (&qca, &co)] {
        let mut args = vec!["run", p(m)];
        for i in inputs {
            args.extend(["--input", i.as_str()]);
        }
        args.extend(["-o", p(o)]);
        qc(&args);
    }
    let mut names: Vec<String> = std::fs::read_dir(&ro)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (ro, co, names)
}

/// The indices at which two .npy files differ bit for bit (values as f32: integer codes are exact;
/// NaN equals NaN of the same bits).
fn differing(a: &Path, b: &Path) -> Vec<usize> {
    let (x, y) = (read_npy(a).unwrap(), read_npy(b).unwrap());
    assert_eq!(x.shape, y.shape, "{}", a.display());
    let (x, y) = (x.to_f32(), y.to_f32());
    (0..x.len())
        .filter(|&i| x[i].to_bits() != y[i].to_bits())
        .collect()
}

/// Convolutions (strides, pads, dilations, groups, no bias; 1-D, 2-D, 3-D), transposed convolutions
/// (strides, pads, output_padding, dilations, groups), max / average pooling (pads, dilations,
/// ceil_mode, count_include_pad), global pooling, LRN, Shrink and a small CNN with random weights
/// (compiler/tests/cpu_ops.py's window.onnx), compiled for the host CPU (the products of convolutions
/// with 4 or more output channels per group as im2col + sgemm calls, as they are or transposed for
/// 64 channels, the others as linalg loops),
/// match the interpreter within [`TOL`] of each output's scale (max pooling and shrink bit for bit).
#[test]
fn window_ops_on_cpu_match_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    op_models(d);
    let inputs: Vec<String> = ["x", "x1", "x3"]
        .iter()
        .map(|n| format!("{n}={}", p(&d.join(format!("{n}.npy")))))
        .collect();
    let (ro, co, names) = run_both(d, "window", &d.join("window.onnx"), &inputs);
    assert_eq!(names.len(), 29, "{names:?}");
    for name in &names {
        let r = rel(&co.join(name), &ro.join(name));
        eprintln!("window: {name}: max abs diff {r:.3e} of the output's scale");
        assert!(
            r <= TOL,
            "{name} differs from the interpreter by {r:.3e} of its scale"
        );
        if name.starts_with("maxpool") || name.starts_with("gmp") || name.starts_with("shrink") {
            let bad = differing(&co.join(name), &ro.join(name));
            assert!(bad.is_empty(), "{name}: {} elements differ", bad.len());
        }
    }
}

/// Slices with negative steps (several axes, mixed signs, clamped starts and ends), Pad in modes
/// reflect (pads beyond the dimension, a dimension of 1), edge and wrap on 2-D and 4-D tensors with
/// asymmetric pads, and integer Pow (int32 / int64 bases and exponents: 0, 1, large, beyond 2^32,
/// overflowing) (compiler/tests/cpu_ops.py's index.onnx), compiled for the host CPU, are
/// bit-identical to the interpreter.
#[test]
fn negative_step_slices_index_pads_and_integer_pow_on_cpu_match_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    op_models(d);
    let inputs: Vec<String> = ["x", "m", "o", "b32", "e32", "b64", "e64"]
        .iter()
        .map(|n| format!("{n}={}", p(&d.join(format!("{n}.npy")))))
        .collect();
    let (ro, co, names) = run_both(d, "index", &d.join("index.onnx"), &inputs);
    assert_eq!(names.len(), 18, "{names:?}");
    for name in &names {
        let bad = differing(&co.join(name), &ro.join(name));
        assert!(
            bad.is_empty(),
            "{name}: {} elements differ from the interpreter, first at {}",
            bad.len(),
            bad[0]
        );
        // Exact for 64-bit integers too (`differing` compares them as f32).
        assert!(
            std::fs::read(co.join(name)).unwrap() == std::fs::read(ro.join(name)).unwrap(),
            "{name}: the files differ"
        );
        let v = read_npy(&ro.join(name)).unwrap().to_f32();
        assert!(v.iter().any(|&x| x != v[0]), "{name}: a constant output");
    }
}

/// A function returning one of its arguments (a graph input that is also an output, or an identity
/// canonicalize forwards) compiles for the host CPU: the buffer deallocation pipeline's clone of the
/// argument is lowered to an allocation and a copy.
#[test]
fn an_argument_returned_as_an_output_compiles_for_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("passthrough.qir");
    std::fs::write(
        &model,
        "func.func @main(%x: tensor<2x3xf32>) -> (tensor<2x3xf32>, tensor<2x3xf32>) {\n  %i = nn.identity %x : (tensor<2x3xf32>) -> tensor<2x3xf32>\n  %y = nn.add %x, %x : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>\n  return %i, %y : tensor<2x3xf32>, tensor<2x3xf32>\n}\n",
    )
    .unwrap();
    let x = d.join("x.npy");
    std::fs::write(
        &x,
        qc::npy::to_npy_bytes(&qc::npy::NpyArray {
            shape: vec![2, 3],
            data: qc::npy::NpyData::F32(vec![0.5, -1.0, 2.0, 3.25, -0.0, 7.0]),
        }),
    )
    .unwrap();
    let (ro, co, names) = run_both(d, "passthrough", &model, &[format!("x={}", p(&x))]);
    assert_eq!(names.len(), 2, "{names:?}");
    for name in &names {
        assert!(
            std::fs::read(co.join(name)).unwrap() == std::fs::read(ro.join(name)).unwrap(),
            "{name} differs from the interpreter"
        );
    }
}

/// ONNX's QuantizeLinear / DequantizeLinear (per tensor, per axis, in blocks; uint8, int8, uint4,
/// int16), DynamicQuantizeLinear and quant.hadamard compiled for the host CPU are bit-identical to the
/// interpreter (rounding ties, +-0, NaN, saturation, quotients beyond 2^31), and
/// NegativeLogLikelihoodLoss matches it (its sums within [`TOL`]).
#[test]
fn linear_quantization_hadamard_and_nll_loss_on_cpu_match_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    op_models(d);
    let inputs: Vec<String> = ["x=xq.npy", "lp=lp.npy", "tg=tg.npy"]
        .iter()
        .map(|s| {
            let (n, f) = s.split_once('=').unwrap();
            format!("{n}={}", p(&d.join(f)))
        })
        .collect();
    let (ro, co, names) = run_both(d, "qdq", &d.join("qdq.onnx"), &inputs);
    assert_eq!(names.len(), 23, "{names:?}");
    for name in &names {
        if name.starts_with("nll_") {
            let r = rel(&co.join(name), &ro.join(name));
            eprintln!("qdq: {name}: max abs diff {r:.3e} of the output's scale");
            assert!(r <= TOL, "{name}: {r:.3e} of its scale");
            continue;
        }
        let bad = differing(&co.join(name), &ro.join(name));
        assert!(
            bad.is_empty(),
            "{name}: {} elements differ from the interpreter, first at {}",
            bad.len(),
            bad[0]
        );
        // The comparison means something: the codes are not all equal.
        let v = read_npy(&ro.join(name)).unwrap().to_f32();
        if v.len() > 1 {
            assert!(v.iter().any(|&x| x != v[0]), "{name}: a constant output");
        }
        eprintln!("qdq: {name}: bit-identical");
    }
    let x = format!("x={}", p(&d.join("xh.npy")));
    let (ro, co, names) = run_both(d, "hadamard", &d.join("hadamard.qir"), &[x]);
    assert_eq!(names.len(), 2);
    for name in &names {
        let bad = differing(&co.join(name), &ro.join(name));
        assert!(
            bad.is_empty(),
            "hadamard {name}: {} elements differ",
            bad.len()
        );
    }
}

/// Two of ONNX's "light" CNNs (onnx/backend/test/data/light: squeezenet, and bvlc_alexnet with its LRN
/// and grouped convolutions; converted to opset 13 by onnx.version_converter, as
/// tests/onnx-conformance/gen_data.py does), compiled for the host CPU, give ONNX's expected outputs
/// within ONNX's tolerances (rtol 1e-3, atol 1e-7) on ONNX's input (arange(n) / n). Their weights
/// are splat constants, so these outputs are nearly uniform: this checks that whole networks compile
/// and run; window_ops_on_cpu_match_the_interpreter checks the values.
#[test]
fn light_onnx_cnns_on_cpu_match_onnx() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["squeezenet", "bvlc_alexnet"] {
        let script = format!(
            "import onnx, numpy as np, os\n\
             from onnx import version_converter, numpy_helper as nh\n\
             src = os.path.join(os.path.dirname(onnx.__file__), 'backend/test/data/light')\n\
             m = version_converter.convert_version(onnx.load(os.path.join(src, 'light_{name}.onnx')), 13)\n\
             onnx.save(m, '{d}/{name}.onnx')\n\
             inits = {{t.name for t in m.graph.initializer}}\n\
             i = [i for i in m.graph.input if i.name not in inits][0]\n\
             shape = [x.dim_value or 1 for x in i.type.tensor_type.shape.dim]\n\
             n = int(np.prod(shape))\n\
             np.save('{d}/{name}.in.npy', (np.arange(n, dtype=np.float32) / n).reshape(shape))\n\
             t = onnx.TensorProto()\n\
             t.ParseFromString(open(os.path.join(src, 'light_{name}_output_0.pb'), 'rb').read())\n\
             np.save('{d}/{name}.want.npy', nh.to_array(t))\n\
             print(i.name)\n",
            d = p(d)
        );
        let input = ok(
            Command::new("python3").args(["-c", &script]),
            "converting the light model",
        );
        let qca = d.join(format!("{name}.qca"));
        qc(&[
            "compile",
            p(&d.join(format!("{name}.onnx"))),
            "--passes",
            "canonicalize",
            "--target",
            "native",
            "-o",
            p(&qca),
        ]);
        let out = d.join(format!("{name}.out"));
        let arg = format!("{}={}", input.trim(), p(&d.join(format!("{name}.in.npy"))));
        qc(&["run", p(&qca), "--input", &arg, "-o", p(&out)]);
        let file = std::fs::read_dir(&out)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let (got, want) = (
            read_npy(&file).unwrap(),
            read_npy(&d.join(format!("{name}.want.npy"))).unwrap(),
        );
        assert_eq!(got.shape, want.shape, "{name}");
        let (g, w) = (got.to_f32(), want.to_f32());
        // Written so that a NaN output counts as outside the tolerance.
        let within = |i: usize| (g[i] - w[i]).abs() as f64 <= 1e-7 + 1e-3 * (w[i].abs() as f64);
        let bad = (0..g.len()).filter(|&i| !within(i)).count();
        assert_eq!(bad, 0, "{name}: {bad} outputs outside ONNX's tolerances");
        eprintln!("{name}: {} outputs within ONNX's tolerances", g.len());
    }
}

/// Compiles `args` (a `qc compile` to a CPU target) with `QC_CPU_DUMP` set and returns the kernel glue
/// and the exported module.
fn compile_dumping(args: &[&str], dump: &Path) -> (String, String) {
    std::fs::create_dir_all(dump).unwrap();
    ok(
        Command::new(env!("CARGO_BIN_EXE_qc"))
            .env("QC_CPU_DUMP", dump)
            .args(args),
        &format!("qc {}", args.join(" ")),
    );
    (
        std::fs::read_to_string(dump.join("model.glue.c")).unwrap(),
        std::fs::read_to_string(dump.join("model.export.mlir")).unwrap(),
    )
}

/// The shipped tiny BERT compiled with `--wformat W --aformat A --calib` (static per-tensor maxima from
/// the calibration data) for each `(W, A)` of `cases` and each target of `targets` the host runs: every
/// one of its 13 products calls `kernel` in the glue (and the export has no fake-quant call left), every
/// output element is within 1e-5 of the output's scale of the interpreter, and 1 and 2 OpenMP threads
/// give the same bits.
fn bert_runs_activation_kernels(cases: &[(&str, &str)], targets: &[&str], kernel: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = repo().join("examples/bert-tiny.onnx");
    let calib = repo().join("examples/bert-tiny-calib.npz");
    let names = ["input_ids", "token_type_ids", "attention_mask"];
    let script = format!(
        "import numpy as np\n\
         d = np.load('{}')\n\
         for n in {names:?}:\n\
         \x20   np.save('{}/' + n + '.npy', d[n + '.2'][1:2])\n",
        p(&calib),
        p(d)
    );
    ok(
        Command::new("python3").args(["-c", &script]),
        "making the BERT inputs",
    );
    let inputs: Vec<String> = names
        .iter()
        .flat_map(|n| {
            [
                "--input".to_string(),
                format!("{n}={}", p(&d.join(format!("{n}.npy")))),
            ]
        })
        .collect();
    let targets: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| host_supports(t))
        .collect();
    for &(w, a) in cases {
        let tag = format!("{a}_{w}");
        let qir = d.join(format!("{tag}.qir"));
        let flags = [
            p(&model),
            "--wformat",
            w,
            "--aformat",
            a,
            "--calib",
            p(&calib),
        ];
        let mut args = vec!["compile"];
        args.extend(flags);
        args.extend(["-o", p(&qir)]);
        qc(&args);
        let ro = d.join(format!("{tag}.ref"));
        let mut args = vec!["run", p(&qir)];
        args.extend(inputs.iter().map(String::as_str));
        args.extend(["-o", p(&ro)]);
        qc(&args);
        for t in &targets {
            let qca = d.join(format!("{tag}.{t}.qca"));
            let mut args = vec!["compile"];
            args.extend(flags);
            args.extend([
                "--target",
                t,
                "--shape",
                "batch=1",
                "--shape",
                "seq=16",
                "-o",
                p(&qca),
            ]);
            let (glue, export) = compile_dumping(&args, &d.join(format!("{tag}.{t}.dump")));
            let calls = glue.matches(&format!("{kernel}(&")).count();
            let matmuls = export.matches("call @qc_matmul_").count();
            assert!(
                calls == 13 && calls == matmuls,
                "{w} {a} {t}: {calls} {kernel} products of {matmuls} kernel calls"
            );
            assert!(
                !export.contains("qc_fquant"),
                "{w} {a} {t}: a fake-quant call is left"
            );
            let mut outs = Vec::new();
            for threads in ["1", "2"] {
                let co = d.join(format!("{tag}.{t}.t{threads}"));
                let mut args = vec!["run", p(&qca)];
                args.extend(inputs.iter().map(String::as_str));
                args.extend(["-o", p(&co)]);
                ok(
                    Command::new(env!("CARGO_BIN_EXE_qc"))
                        .env("OMP_NUM_THREADS", threads)
                        .args(&args),
                    "qc run",
                );
                for name in ["last_hidden_state", "pooler_output"] {
                    let f = format!("{name}.npy");
                    let r = rel(&co.join(&f), &ro.join(&f));
                    eprintln!("bert {w} {a} {t} threads={threads}: {name}: {r:.3e} of the scale");
                    assert!(
                        r <= TOL,
                        "bert {w} {a} {t}: {name}: {r:.3e} of the output's scale"
                    );
                    outs.push(std::fs::read(co.join(&f)).unwrap());
                }
            }
            assert!(
                outs[0] == outs[2] && outs[1] == outs[3],
                "{w} {a} {t}: 1 and 2 threads give different outputs"
            );
        }
    }
}

/// `--aformat int8` with weights whose elements are small integers runs the int8-activation kernels
/// (qc_backend_llvm::act8, `qc_matmul_a8`) on both CPU levels (observed error: 1.4e-7).
#[test]
fn bert_with_int8_activations_runs_the_int8_activation_kernels() {
    let cases = [
        ("int4_g32", "int8"),
        ("int8_channel", "int8"),
        ("mxfp4", "int8"),
        ("nvfp4", "int8"),
    ];
    bert_runs_activation_kernels(&cases, &["x86-64-v4", "x86-64-v3"], "qc_matmul_a8");
}

/// fp8 e4m3 (and, for int4_g32, e5m2) activations run the fp8-activation kernels
/// (qc_backend_llvm::act8::fp8, `qc_matmul_f8`: `vdpbf16ps` where the CPU has AVX512-BF16) on
/// x86-64-v4.
#[test]
fn bert_with_fp8_activations_runs_the_fp8_activation_kernels() {
    let cases = [
        ("int4_g32", "fp8_e4m3"),
        ("mxfp4", "fp8_e4m3"),
        ("nvfp4", "fp8_e4m3"),
        ("int4_g32", "fp8_e5m2"),
    ];
    bert_runs_activation_kernels(&cases, &["x86-64-v4"], "qc_matmul_f8");
}

/// Int8 and fp8 e4m3 activations on products big enough for several threads (`[M, 1024] x
/// [1024, 1536]`, M = 1, 5 and 40 (the int8 GEMM kernel), calibrated on random data): the int8- or
/// fp8-activation kernels run, outputs are bit-identical for 1 and 2 OpenMP threads and within 1e-5 of
/// the output's scale of the interpreter.
#[test]
fn threaded_int8_activation_products_are_deterministic_and_match_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("mm.onnx");
    let calib = d.join("calib.npz");
    let script = format!(
        "import numpy as np, onnx\n\
         from onnx import helper as h, TensorProto as T, numpy_helper as nh\n\
         r = np.random.default_rng(1)\n\
         w = nh.from_array((r.standard_normal((1024, 1536)) * 0.05).astype(np.float32), 'w')\n\
         g = h.make_graph([h.make_node('MatMul', ['x', 'w'], ['y']), h.make_node('Relu', ['y'], ['z'])],\n\
         \x20   'mm', [h.make_tensor_value_info('x', T.FLOAT, ['batch', 1024])],\n\
         \x20   [h.make_tensor_value_info('z', T.FLOAT, ['batch', 1536])], [w])\n\
         onnx.save(h.make_model(g, opset_imports=[h.make_opsetid('', 18)]), '{}')\n\
         np.savez('{}', **{{'x.%d' % i: r.standard_normal((4, 1024)).astype(np.float32) for i in range(4)}})\n\
         for m in (1, 5, 40):\n\
         \x20   np.save('{}/x%d.npy' % m, r.standard_normal((m, 1024)).astype(np.float32))\n",
        p(&model),
        p(&calib),
        p(d)
    );
    ok(
        Command::new("python3").args(["-c", &script]),
        "making the MatMul model",
    );
    for (w, a, call) in [
        ("int4_g32", "int8", "qc_matmul_a8(&"),
        ("int8_channel", "int8", "qc_matmul_a8(&"),
        ("nvfp4", "int8", "qc_matmul_a8(&"),
        ("int4_g32", "fp8_e4m3", "qc_matmul_f8(&"),
        ("nvfp4", "fp8_e4m3", "qc_matmul_f8(&"),
    ] {
        let qir = d.join(format!("{a}_{w}.qir"));
        let flags = [
            p(&model),
            "--wformat",
            w,
            "--aformat",
            a,
            "--calib",
            p(&calib),
        ];
        let mut args = vec!["compile"];
        args.extend(flags);
        args.extend(["-o", p(&qir)]);
        qc(&args);
        for m in [1, 5, 40] {
            let x = format!("x={}", p(&d.join(format!("x{m}.npy"))));
            let refdir = d.join(format!("{a}_{w}.{m}.ref"));
            qc(&["run", p(&qir), "--input", &x, "-o", p(&refdir)]);
            let qca = d.join(format!("{a}_{w}.{m}.qca"));
            let mut args = vec!["compile"];
            args.extend(flags);
            let batch = format!("batch={m}");
            args.extend(["--target", "native", "--shape", &batch, "-o", p(&qca)]);
            let (glue, _) = compile_dumping(&args, &d.join(format!("{a}_{w}.{m}.dump")));
            assert_eq!(glue.matches(call).count(), 1, "{w} {a} M={m}");
            let mut outs = Vec::new();
            for threads in ["1", "2"] {
                let out = d.join(format!("{a}_{w}.{m}.t{threads}"));
                ok(
                    Command::new(env!("CARGO_BIN_EXE_qc"))
                        .env("OMP_NUM_THREADS", threads)
                        .args(["run", p(&qca), "--input", &x, "-o", p(&out)]),
                    "qc run",
                );
                let r = rel(&out.join("z.npy"), &refdir.join("z.npy"));
                eprintln!("{w} {a} M={m} threads={threads}: {r:.3e} of the output's scale");
                assert!(r <= TOL, "{w} M={m} threads={threads}: {r:.3e}");
                outs.push(std::fs::read(out.join("z.npy")).unwrap());
            }
            assert!(
                outs[0] == outs[1],
                "{w} {a} M={m}: 1 and 2 threads give different outputs"
            );
        }
    }
}

//! The StableHLO backend against XLA: each module `lower_module` emits is compiled and run by JAX's CPU
//! client (scripts/xla/run_stablehlo.py) and its outputs are compared with the reference interpreter
//! (`qc_runtime::exec::run_func`) on the same inputs: every supported nn op one by one, activation
//! quantization (bit-exact), quantized matmuls whose weights are decoded inside the module (the
//! dequantized weights bit-exact, the products within 1e-5 of the output's scale), Hadamard rotations,
//! ONNX linear quantization, and specialization of symbolic shapes.
//!
//! Needs python3 with numpy and jax (`bash .ci/install-python.sh`); fails, saying so, without them.

use std::path::{Path, PathBuf};
use std::process::Command;

use qc_backend_hlo::{lower_module, lower_module_with_shapes, ShapeBindings};
use qc_ir::types::ElemType;
use qc_ir::{parse_module, Module, Registry, Source};
use qc_runtime::exec::run_func;
use qc_runtime::interp::{Data, Tensor};
use qc_runtime::npy::{read_npy, to_npy_bytes, NpyArray, NpyData};

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(qc_nn::dialect());
    r.register(qc_quant::ops::dialect());
    r
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/xla/run_stablehlo.py")
}

fn require_jax() {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, jax"])
        .output();
    match probe {
        Err(e) => panic!(
            "python3 is required by the XLA tests and could not be run ({e}); run bash .ci/install-python.sh"
        ),
        Ok(o) if !o.status.success() => panic!(
            "the XLA tests need numpy and jax in python3: {}run bash .ci/install-python.sh",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

/// How outputs must agree.
#[derive(Clone, Copy, Debug)]
enum Tol {
    /// Bit for bit (NaN matches NaN).
    Exact,
    /// Max |xla - ref| at most this fraction of max |ref|.
    Rel(f64),
}

struct Case {
    name: String,
    module: Module,
    /// The module the interpreter runs, when it is not `module` (to check that the check can fail).
    reference: Option<Module>,
    shapes: ShapeBindings,
    inputs: Vec<Tensor>,
    tol: Tol,
}

fn parse(text: &str) -> Module {
    let m = parse_module(text, &Source::named("case"), &registry())
        .unwrap_or_else(|d| panic!("{}\n{text}", d.render(Some(text))));
    qc_ir::verify_module(&m).unwrap_or_else(|d| panic!("{}\n{text}", d.render(Some(text))));
    m
}

/// Deterministic f32 values in [lo, hi).
fn vals(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            (lo + (hi - lo) * u) as f32 as f64
        })
        .collect()
}

fn ft(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        ElemType::F32,
        Data::F(vals(n, seed, lo, hi)),
    )
}

fn it(shape: &[usize], v: Vec<i64>) -> Tensor {
    Tensor::new(
        shape.to_vec(),
        ElemType::Int {
            bits: 64,
            unsigned: false,
        },
        Data::I(v),
    )
}

fn to_npy(t: &Tensor) -> NpyArray {
    let data = match (&t.data, &t.elem) {
        (Data::F(v), ElemType::F64) => NpyData::F64(v.clone()),
        (Data::F(v), _) => NpyData::F32(v.iter().map(|&x| x as f32).collect()),
        (Data::I(v), ElemType::Int { bits: 1, .. }) => {
            NpyData::U8(v.iter().map(|&x| x as u8).collect())
        }
        (Data::I(v), _) => NpyData::I64(v.clone()),
    };
    NpyArray {
        shape: t.shape.clone(),
        data,
    }
}

/// The largest difference of `got` from `want` over max |want| (NaN positions must agree), or what
/// does not match.
fn rel_err(want: &Tensor, got: &NpyArray, tol: Tol) -> Result<f64, String> {
    if got.shape != want.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    let g: Vec<f64> = match &got.data {
        NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        NpyData::F64(v) => v.clone(),
        NpyData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        NpyData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        NpyData::F16(v) => v
            .iter()
            .map(|&x| qc_quant::codec::f16_bits_to_f32(x) as f64)
            .collect(),
        other => return Err(format!("unexpected output dtype {}", other.descr())),
    };
    let w: Vec<f64> = (0..want.len()).map(|i| want.data.f(i)).collect();
    let scale = w
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f64, |m, x| m.max(x.abs()))
        .max(1e-30);
    let mut worst = 0f64;
    for (i, (&a, &b)) in w.iter().zip(&g).enumerate() {
        if a.is_nan() || b.is_nan() {
            if a.is_nan() != b.is_nan() {
                return Err(format!("element {i}: {b}, expected {a}"));
            }
            continue;
        }
        match tol {
            Tol::Exact if (a as f32).to_bits() != (b as f32).to_bits() => {
                return Err(format!(
                    "element {i}: {b:e} ({:#010x}), expected {a:e} ({:#010x})",
                    (b as f32).to_bits(),
                    (a as f32).to_bits()
                ))
            }
            _ => {}
        }
        if a.is_infinite() || b.is_infinite() {
            if a != b {
                return Err(format!("element {i}: {b}, expected {a}"));
            }
            continue;
        }
        worst = worst.max((a - b).abs() / scale);
    }
    Ok(worst)
}

/// Lowers, runs on XLA and compares every case; returns (name, max relative error) per output.
fn check(cases: Vec<Case>) -> Vec<(String, f64)> {
    require_jax();
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for (k, c) in cases.iter().enumerate() {
        let text = lower_module_with_shapes(&c.module, "main", &c.shapes)
            .unwrap_or_else(|d| panic!("{}: {}", c.name, d));
        // Deterministic: a second lowering gives the same text.
        assert_eq!(
            lower_module_with_shapes(&c.module, "main", &c.shapes).unwrap(),
            text,
            "{}: the emitted text is not deterministic",
            c.name
        );
        let job = dir.path().join(format!("case{k}"));
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("model.mlir"), &text).unwrap();
        let mut ins = Vec::new();
        for (i, t) in c.inputs.iter().enumerate() {
            let p = job.join(format!("in{i}.npy"));
            std::fs::write(&p, to_npy_bytes(&to_npy(t))).unwrap();
            ins.push(format!("{:?}", p.to_str().unwrap()));
        }
        jobs.push(format!(
            "{{\"mlir\": {:?}, \"inputs\": [{}], \"out\": {:?}}}",
            job.join("model.mlir").to_str().unwrap(),
            ins.join(", "),
            job.join("out").to_str().unwrap()
        ));
        let want = run_func(
            c.reference.as_ref().unwrap_or(&c.module),
            "main",
            c.inputs.clone(),
        )
        .unwrap_or_else(|d| panic!("{}: the interpreter failed: {d}", c.name));
        expected.push((job, want));
    }
    let jobs_path = dir.path().join("jobs.json");
    std::fs::write(&jobs_path, format!("[{}]", jobs.join(",\n"))).unwrap();
    let out = Command::new("python3")
        .arg(script())
        .args(["--batch", jobs_path.to_str().unwrap()])
        .output()
        .expect("run python3");
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (c, (job, want)) in cases.iter().zip(&expected) {
        if let Ok(e) = std::fs::read_to_string(job.join("out/error.txt")) {
            failures.push(format!(
                "{}: XLA failed:\n{e}\n{}",
                c.name,
                std::fs::read_to_string(job.join("model.mlir")).unwrap_or_default()
            ));
            continue;
        }
        for (i, w) in want.iter().enumerate() {
            let got = read_npy(&job.join(format!("out/output_{i}.npy")));
            let r = got.and_then(|g| rel_err(w, &g, c.tol));
            match (r, c.tol) {
                (Ok(r), Tol::Rel(t)) if r > t => failures.push(format!(
                    "{} output {i}: differs from the interpreter by {r:.3e} of its scale (tolerance {t:e})",
                    c.name
                )),
                (Ok(r), _) => {
                    eprintln!("{} output {i}: max rel err {r:.3e} ({:?})", c.name, c.tol);
                    report.push((format!("{} #{i}", c.name), r));
                }
                (Err(e), _) => failures.push(format!("{} output {i}: {e}", c.name)),
            }
        }
    }
    assert!(
        failures.is_empty() && out.status.success(),
        "{} case(s) failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

fn case(name: &str, text: &str, inputs: Vec<Tensor>, tol: Tol) -> Case {
    Case {
        name: name.into(),
        module: parse(text),
        reference: None,
        shapes: ShapeBindings::new(),
        inputs,
        tol,
    }
}

/// A one-op function `f(x: tensor<X>) -> tensor<Y>` with `body` in between.
/// `op` may carry attributes (`nn.softmax {axis = 1}`); they go after the operands.
fn split_op(op: &str) -> (&str, &str) {
    match op.find(" {") {
        Some(i) => (&op[..i], &op[i..]),
        None => (op, ""),
    }
}

fn unary(name: &str, op: &str, x: &str, y: &str, input: Tensor, tol: Tol) -> Case {
    let (op, attrs) = split_op(op);
    let text = format!(
        "func.func @main(%x: {x}) -> {y} {{\n  %y = {op} %x{attrs} : ({x}) -> {y}\n  return %y : {y}\n}}"
    );
    case(name, &text, vec![input], tol)
}

fn binary(name: &str, op: &str, a: &str, b: &str, y: &str, ins: Vec<Tensor>, tol: Tol) -> Case {
    let (op, attrs) = split_op(op);
    let text = format!(
        "func.func @main(%a: {a}, %b: {b}) -> {y} {{\n  %y = {op} %a, %b{attrs} : ({a}, {b}) -> {y}\n  return %y : {y}\n}}"
    );
    case(name, &text, ins, tol)
}

const F: &str = "tensor<4x8xf32>";
const I1: &str = "tensor<4x8xi1>";
const I64: &str = "tensor<4x8xi64>";

#[test]
fn elementwise_ops_match_the_interpreter() {
    let x = || ft(&[4, 8], 1, -3.0, 3.0);
    let pos = || ft(&[4, 8], 2, 0.05, 4.0);
    let unit = || ft(&[4, 8], 3, -0.95, 0.95);
    let ints = |seed: u64| {
        it(
            &[4, 8],
            (0..32)
                .map(|i| ((i * 37 + seed as i64 * 11) % 23) - 11)
                .collect(),
        )
    };
    let mut cases = Vec::new();
    for (op, tol) in [
        ("nn.add", Tol::Exact),
        ("nn.sub", Tol::Exact),
        ("nn.mul", Tol::Exact),
        ("nn.div", Tol::Exact),
        ("nn.max", Tol::Exact),
        ("nn.min", Tol::Exact),
        ("nn.mod {fmod = 1}", Tol::Exact),
        ("nn.mod", Tol::Rel(1e-6)),
    ] {
        // The second operand broadcasts along the rows.
        cases.push(binary(
            op,
            op,
            F,
            "tensor<8xf32>",
            F,
            vec![x(), ft(&[8], 4, 0.5, 2.0)],
            tol,
        ));
    }
    cases.push(binary(
        "nn.pow",
        "nn.pow",
        F,
        F,
        F,
        vec![pos(), x()],
        Tol::Rel(2e-6),
    ));
    cases.push(case(
        "nn.pow x^2",
        &format!("func.func @main(%x: {F}) -> {F} {{\n  %c = qc.constant {{value = dense<2.0>}} : () -> tensor<f32>\n  %y = nn.pow %x, %c : ({F}, tensor<f32>) -> {F}\n  return %y : {F}\n}}"),
        vec![x()],
        Tol::Exact,
    ));
    for (op, cmp) in [
        ("nn.equal", "eq"),
        ("nn.less", "lt"),
        ("nn.less_or_equal", "le"),
        ("nn.greater", "gt"),
        ("nn.greater_or_equal", "ge"),
    ] {
        // Rounded values so that equality happens.
        let a = Tensor::new(
            vec![4, 8],
            ElemType::F32,
            Data::F(vals(32, 5, -2.0, 2.0).iter().map(|v| v.round()).collect()),
        );
        let b = Tensor::new(
            vec![4, 8],
            ElemType::F32,
            Data::F(vals(32, 6, -2.0, 2.0).iter().map(|v| v.round()).collect()),
        );
        cases.push(binary(
            &format!("{op} ({cmp})"),
            op,
            F,
            F,
            I1,
            vec![a, b],
            Tol::Exact,
        ));
    }
    // Logical ops on comparisons.
    for op in ["nn.and", "nn.or", "nn.xor"] {
        let text = format!(
            "func.func @main(%a: {F}, %b: {F}) -> {I1} {{
  %z = qc.constant {{value = dense<0.0>}} : () -> tensor<f32>
  %p = nn.less %a, %z : ({F}, tensor<f32>) -> {I1}
  %q = nn.less %b, %z : ({F}, tensor<f32>) -> {I1}
  %r = {op} %p, %q : ({I1}, {I1}) -> {I1}
  %n = nn.not %r : ({I1}) -> {I1}
  return %n : {I1}
}}"
        );
        cases.push(case(
            op,
            &text,
            vec![x(), ft(&[4, 8], 9, -1.0, 1.0)],
            Tol::Exact,
        ));
    }
    for op in [
        "nn.bitwise_and",
        "nn.bitwise_or",
        "nn.bitwise_xor",
        "nn.bit_shift {direction = \"LEFT\"}",
        "nn.bit_shift {direction = \"RIGHT\"}",
    ] {
        let b = if op.contains("shift") {
            it(&[4, 8], (0..32).map(|i| i % 5).collect())
        } else {
            ints(2)
        };
        cases.push(binary(op, op, I64, I64, I64, vec![ints(1), b], Tol::Exact));
    }
    cases.push(unary(
        "nn.bitwise_not",
        "nn.bitwise_not",
        I64,
        I64,
        ints(3),
        Tol::Exact,
    ));
    for (op, tol) in [
        ("nn.add", Tol::Exact),
        ("nn.sub", Tol::Exact),
        ("nn.mul", Tol::Exact),
        ("nn.max", Tol::Exact),
        ("nn.min", Tol::Exact),
    ] {
        cases.push(binary(
            &format!("{op} i64"),
            op,
            I64,
            I64,
            I64,
            vec![ints(4), ints(5)],
            tol,
        ));
    }
    cases.push(binary(
        "nn.div i64",
        "nn.div",
        I64,
        I64,
        I64,
        vec![ints(4), it(&[4, 8], (0..32).map(|i| (i % 7) + 1).collect())],
        Tol::Exact,
    ));
    let transcendental = Tol::Rel(4e-6);
    for (op, input, tol) in [
        ("nn.neg", x(), Tol::Exact),
        ("nn.abs", x(), Tol::Exact),
        ("nn.sign", x(), Tol::Exact),
        ("nn.relu", x(), Tol::Exact),
        ("nn.sqrt", pos(), Tol::Exact),
        ("nn.reciprocal", pos(), Tol::Exact),
        ("nn.floor", x(), Tol::Exact),
        ("nn.ceil", x(), Tol::Exact),
        ("nn.round", x(), Tol::Exact),
        ("nn.exp", x(), transcendental),
        ("nn.log", pos(), transcendental),
        ("nn.tanh", x(), transcendental),
        ("nn.sigmoid", x(), transcendental),
        ("nn.erf", x(), transcendental),
        ("nn.sin", x(), transcendental),
        ("nn.cos", x(), transcendental),
        ("nn.tan", unit(), transcendental),
        ("nn.asin", unit(), transcendental),
        ("nn.acos", unit(), transcendental),
        ("nn.atan", x(), transcendental),
        ("nn.sinh", x(), transcendental),
        ("nn.cosh", x(), transcendental),
        ("nn.asinh", x(), transcendental),
        ("nn.acosh", ft(&[4, 8], 7, 1.0, 5.0), transcendental),
        ("nn.atanh", unit(), transcendental),
        ("nn.softplus", x(), transcendental),
        ("nn.gelu", x(), transcendental),
        ("nn.gelu {approximate = \"tanh\"}", x(), transcendental),
        ("nn.leaky_relu {alpha = 0.1}", x(), Tol::Rel(1e-7)),
        ("nn.elu", x(), transcendental),
        ("nn.hard_sigmoid", x(), Tol::Rel(1e-6)),
        ("nn.hard_swish", x(), Tol::Rel(1e-6)),
        ("nn.softsign", x(), Tol::Rel(1e-6)),
        ("nn.mish", x(), transcendental),
        ("nn.selu", x(), transcendental),
        ("nn.celu", x(), transcendental),
        ("nn.thresholded_relu", x(), Tol::Exact),
        ("nn.swish", x(), transcendental),
        ("nn.identity", x(), Tol::Exact),
    ] {
        cases.push(unary(op, op, F, F, input, tol));
    }
    let mut special = vals(32, 8, -3.0, 3.0);
    special[3] = f64::NAN;
    special[5] = f64::INFINITY;
    special[7] = f64::NEG_INFINITY;
    let sp = Tensor::new(vec![4, 8], ElemType::F32, Data::F(special));
    cases.push(unary(
        "nn.is_nan",
        "nn.is_nan",
        F,
        I1,
        sp.clone(),
        Tol::Exact,
    ));
    cases.push(unary(
        "nn.is_inf",
        "nn.is_inf",
        F,
        I1,
        sp.clone(),
        Tol::Exact,
    ));
    cases.push(unary(
        "nn.is_inf {detect_negative = 0}",
        "nn.is_inf {detect_negative = 0}",
        F,
        I1,
        sp,
        Tol::Exact,
    ));
    cases.push(unary(
        "nn.cast f32->i64",
        "nn.cast",
        F,
        I64,
        x(),
        Tol::Exact,
    ));
    cases.push(unary(
        "nn.cast i64->f32",
        "nn.cast",
        I64,
        F,
        ints(6),
        Tol::Exact,
    ));
    cases.push(unary(
        "nn.cast f32->i1",
        "nn.cast",
        F,
        I1,
        Tensor::new(
            vec![4, 8],
            ElemType::F32,
            Data::F((0..32).map(|i| (i % 3) as f64 - 1.0).collect()),
        ),
        Tol::Exact,
    ));
    cases.push(unary(
        "nn.cast f32->f16",
        "nn.cast",
        F,
        "tensor<4x8xf16>",
        x(),
        Tol::Exact,
    ));
    cases.push(case(
        "nn.clip",
        &format!("func.func @main(%x: {F}) -> {F} {{\n  %lo = qc.constant {{value = dense<-1.5>}} : () -> tensor<f32>\n  %hi = qc.constant {{value = dense<2.0>}} : () -> tensor<f32>\n  %y = nn.clip %x, %lo, %hi : ({F}, tensor<f32>, tensor<f32>) -> {F}\n  return %y : {F}\n}}"),
        vec![x()],
        Tol::Exact,
    ));
    cases.push(case(
        "nn.where",
        &format!("func.func @main(%a: {F}, %b: tensor<8xf32>) -> {F} {{\n  %z = qc.constant {{value = dense<0.0>}} : () -> tensor<f32>\n  %c = nn.greater %a, %z : ({F}, tensor<f32>) -> {I1}\n  %y = nn.where %c, %b, %a : ({I1}, tensor<8xf32>, {F}) -> {F}\n  return %y : {F}\n}}"),
        vec![x(), ft(&[8], 10, -1.0, 1.0)],
        Tol::Exact,
    ));
    let report = check(cases);
    assert!(report.len() >= 75, "{} outputs compared", report.len());
}

#[test]
fn shape_reduction_and_linear_algebra_ops_match_the_interpreter() {
    let x3 = || ft(&[2, 3, 8], 11, -2.0, 2.0);
    let mut cases = Vec::new();
    let t = "tensor<2x3x8xf32>";
    let one = |name: &str, body: &str, args: &str, ret: &str, ins: Vec<Tensor>, tol: Tol| {
        case(
            name,
            &format!("func.func @main({args}) -> {ret} {{\n{body}\n  return %y : {ret}\n}}"),
            ins,
            tol,
        )
    };
    cases.push(one(
        "nn.matmul batched",
        "  %y = nn.matmul %a, %b : (tensor<2x3x8xf32>, tensor<8x5xf32>) -> tensor<2x3x5xf32>",
        "%a: tensor<2x3x8xf32>, %b: tensor<8x5xf32>",
        "tensor<2x3x5xf32>",
        vec![x3(), ft(&[8, 5], 12, -1.0, 1.0)],
        Tol::Rel(1e-6),
    ));
    cases.push(one(
        "nn.matmul broadcast batch",
        "  %y = nn.matmul %a, %b : (tensor<2x1x3x8xf32>, tensor<4x8x5xf32>) -> tensor<2x4x3x5xf32>",
        "%a: tensor<2x1x3x8xf32>, %b: tensor<4x8x5xf32>",
        "tensor<2x4x3x5xf32>",
        vec![
            ft(&[2, 1, 3, 8], 13, -1.0, 1.0),
            ft(&[4, 8, 5], 14, -1.0, 1.0),
        ],
        Tol::Rel(1e-6),
    ));
    cases.push(one(
        "nn.matmul vector",
        "  %y = nn.matmul %a, %b : (tensor<8xf32>, tensor<2x8x5xf32>) -> tensor<2x5xf32>",
        "%a: tensor<8xf32>, %b: tensor<2x8x5xf32>",
        "tensor<2x5xf32>",
        vec![ft(&[8], 15, -1.0, 1.0), ft(&[2, 8, 5], 16, -1.0, 1.0)],
        Tol::Rel(1e-6),
    ));
    cases.push(one(
        "nn.gemm",
        "  %y = nn.gemm %a, %b, %c {alpha = 0.5, beta = 2.0, trans_b = 1} : (tensor<3x8xf32>, tensor<5x8xf32>, tensor<5xf32>) -> tensor<3x5xf32>",
        "%a: tensor<3x8xf32>, %b: tensor<5x8xf32>, %c: tensor<5xf32>",
        "tensor<3x5xf32>",
        vec![ft(&[3, 8], 17, -1.0, 1.0), ft(&[5, 8], 18, -1.0, 1.0), ft(&[5], 19, -1.0, 1.0)],
        Tol::Rel(1e-6),
    ));
    for (op, tol) in [
        ("nn.softmax {axis = -1}", 1e-6),
        ("nn.log_softmax {axis = 1}", 1e-6),
    ] {
        cases.push(unary(op, op, t, t, x3(), Tol::Rel(tol)));
    }
    cases.push(one(
        "nn.layer_norm",
        "  %y = nn.layer_norm %x, %s, %b {axis = -1, epsilon = 1e-5} : (tensor<2x3x8xf32>, tensor<8xf32>, tensor<8xf32>) -> tensor<2x3x8xf32>",
        "%x: tensor<2x3x8xf32>, %s: tensor<8xf32>, %b: tensor<8xf32>",
        t,
        vec![x3(), ft(&[8], 20, 0.5, 1.5), ft(&[8], 21, -0.5, 0.5)],
        Tol::Rel(2e-6),
    ));
    cases.push(one(
        "nn.batch_norm",
        "  %y = nn.batch_norm %x, %s, %b, %m, %v {epsilon = 1e-5} : (tensor<2x3x4x4xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>) -> tensor<2x3x4x4xf32>",
        "%x: tensor<2x3x4x4xf32>, %s: tensor<3xf32>, %b: tensor<3xf32>, %m: tensor<3xf32>, %v: tensor<3xf32>",
        "tensor<2x3x4x4xf32>",
        vec![ft(&[2, 3, 4, 4], 22, -2.0, 2.0), ft(&[3], 23, 0.5, 1.5), ft(&[3], 24, -0.5, 0.5), ft(&[3], 25, -0.5, 0.5), ft(&[3], 26, 0.5, 2.0)],
        Tol::Rel(1e-6),
    ));
    let ax =
        |v: &str| format!("  %axes = qc.constant {{value = dense<{v}>}} : () -> tensor<1xi64>\n");
    for (op, attrs, ret) in [
        ("nn.reduce_sum", "", "tensor<2x1x8xf32>"),
        ("nn.reduce_mean", "", "tensor<2x1x8xf32>"),
        ("nn.reduce_max", " {keepdims = 0}", "tensor<2x8xf32>"),
        ("nn.reduce_min", "", "tensor<2x1x8xf32>"),
        ("nn.reduce_prod", "", "tensor<2x1x8xf32>"),
    ] {
        cases.push(one(
            op,
            &format!(
                "{}  %y = {op} %x, %axes{attrs} : ({t}, tensor<1xi64>) -> {ret}",
                ax("1")
            ),
            &format!("%x: {t}"),
            ret,
            vec![x3()],
            Tol::Rel(1e-6),
        ));
    }
    for op in [
        "nn.arg_max {axis = 2, keepdims = 0}",
        "nn.arg_min {axis = 1, keepdims = 1, select_last_index = 1}",
    ] {
        let ret = if op.contains("keepdims = 0") {
            "tensor<2x3xi64>"
        } else {
            "tensor<2x1x8xi64>"
        };
        cases.push(unary(op, op, t, ret, x3(), Tol::Exact));
    }
    let shape_c = |n: usize, v: &str| {
        format!("  %s = qc.constant {{value = dense<{v}>}} : () -> tensor<{n}xi64>\n")
    };
    cases.push(one(
        "nn.reshape",
        &format!(
            "{}  %y = nn.reshape %x, %s : ({t}, tensor<3xi64>) -> tensor<6x1x8xf32>",
            shape_c(3, "[6, 1, -1]")
        ),
        &format!("%x: {t}"),
        "tensor<6x1x8xf32>",
        vec![x3()],
        Tol::Exact,
    ));
    cases.push(unary(
        "nn.flatten",
        "nn.flatten {axis = 1}",
        t,
        "tensor<2x24xf32>",
        x3(),
        Tol::Exact,
    ));
    cases.push(one("nn.unsqueeze+squeeze", &format!("{}  %u = nn.unsqueeze %x, %s : ({t}, tensor<1xi64>) -> tensor<2x1x3x8xf32>\n  %y = nn.squeeze %u, %s : (tensor<2x1x3x8xf32>, tensor<1xi64>) -> {t}", shape_c(1, "1")), &format!("%x: {t}"), t, vec![x3()], Tol::Exact));
    cases.push(unary(
        "nn.transpose",
        "nn.transpose {perm = [2, 0, 1]}",
        t,
        "tensor<8x2x3xf32>",
        x3(),
        Tol::Exact,
    ));
    cases.push(one("nn.concat", "  %y = nn.concat %a, %b {axis = 1} : (tensor<2x3x8xf32>, tensor<2x1x8xf32>) -> tensor<2x4x8xf32>", "%a: tensor<2x3x8xf32>, %b: tensor<2x1x8xf32>", "tensor<2x4x8xf32>", vec![x3(), ft(&[2, 1, 8], 27, -1.0, 1.0)], Tol::Exact));
    cases.push(one("nn.split", &format!("{}  %p, %y = nn.split %x, %s {{axis = 2}} : ({t}, tensor<2xi64>) -> (tensor<2x3x3xf32>, tensor<2x3x5xf32>)", shape_c(2, "[3, 5]")), &format!("%x: {t}"), "tensor<2x3x5xf32>", vec![x3()], Tol::Exact));
    cases.push(one(
        "nn.slice (negative step)",
        "  %st = qc.constant {value = dense<[-1, 1]>} : () -> tensor<2xi64>\n  %en = qc.constant {value = dense<[-9223372036854775808, 7]>} : () -> tensor<2xi64>\n  %ax = qc.constant {value = dense<[2, 1]>} : () -> tensor<2xi64>\n  %sp = qc.constant {value = dense<[-3, 1]>} : () -> tensor<2xi64>\n  %y = nn.slice %x, %st, %en, %ax, %sp : (tensor<2x3x8xf32>, tensor<2xi64>, tensor<2xi64>, tensor<2xi64>, tensor<2xi64>) -> tensor<2x2x3xf32>",
        &format!("%x: {t}"),
        "tensor<2x2x3xf32>",
        vec![x3()],
        Tol::Exact,
    ));
    cases.push(one("nn.gather (negative indices)", "  %y = nn.gather %x, %i {axis = 1} : (tensor<2x3x8xf32>, tensor<2x2xi64>) -> tensor<2x2x2x8xf32>", "%x: tensor<2x3x8xf32>, %i: tensor<2x2xi64>", "tensor<2x2x2x8xf32>", vec![x3(), it(&[2, 2], vec![0, -1, 2, 1])], Tol::Exact));
    cases.push(one("nn.gather scalar index", "  %i = qc.constant {value = dense<1>} : () -> tensor<i64>\n  %y = nn.gather %x, %i {axis = 0} : (tensor<2x3x8xf32>, tensor<i64>) -> tensor<3x8xf32>", "%x: tensor<2x3x8xf32>", "tensor<3x8xf32>", vec![x3()], Tol::Exact));
    cases.push(one("nn.gather_elements", "  %y = nn.gather_elements %x, %i {axis = 2} : (tensor<2x3x8xf32>, tensor<2x3x2xi64>) -> tensor<2x3x2xf32>", "%x: tensor<2x3x8xf32>, %i: tensor<2x3x2xi64>", "tensor<2x3x2xf32>", vec![x3(), it(&[2, 3, 2], (0..12).map(|i| (i * 5 % 8) - 2).collect())], Tol::Exact));
    cases.push(one(
        "nn.expand",
        &format!(
            "{}  %y = nn.expand %x, %s : (tensor<3x1xf32>, tensor<3xi64>) -> tensor<2x3x4xf32>",
            shape_c(3, "[2, 1, 4]")
        ),
        "%x: tensor<3x1xf32>",
        "tensor<2x3x4xf32>",
        vec![ft(&[3, 1], 28, -1.0, 1.0)],
        Tol::Exact,
    ));
    cases.push(one(
        "nn.tile",
        &format!(
            "{}  %y = nn.tile %x, %s : (tensor<2x3xf32>, tensor<2xi64>) -> tensor<4x9xf32>",
            shape_c(2, "[2, 3]")
        ),
        "%x: tensor<2x3xf32>",
        "tensor<4x9xf32>",
        vec![ft(&[2, 3], 29, -1.0, 1.0)],
        Tol::Exact,
    ));
    cases.push(one("nn.pad", &format!("{}  %v = qc.constant {{value = dense<0.5>}} : () -> tensor<f32>\n  %y = nn.pad %x, %s, %v : (tensor<2x3xf32>, tensor<4xi64>, tensor<f32>) -> tensor<3x6xf32>", shape_c(4, "[1, 2, 0, 1]")), "%x: tensor<2x3xf32>", "tensor<3x6xf32>", vec![ft(&[2, 3], 30, -1.0, 1.0)], Tol::Exact));
    cases.push(one("nn.range+constant_of_shape", "  %a = qc.constant {value = dense<1.5>} : () -> tensor<f32>\n  %l = qc.constant {value = dense<3.0>} : () -> tensor<f32>\n  %d = qc.constant {value = dense<0.25>} : () -> tensor<f32>\n  %r = nn.range %a, %l, %d : (tensor<f32>, tensor<f32>, tensor<f32>) -> tensor<6xf32>\n  %s = nn.shape %r : (tensor<6xf32>) -> tensor<1xi64>\n  %c = nn.constant_of_shape %s {value = dense<2.0>} : (tensor<1xi64>) -> tensor<6xf32>\n  %t = nn.add %c, %r : (tensor<6xf32>, tensor<6xf32>) -> tensor<6xf32>\n  %y = nn.mul %t, %x : (tensor<6xf32>, tensor<f32>) -> tensor<6xf32>", "%x: tensor<f32>", "tensor<6xf32>", vec![Tensor::new(vec![], ElemType::F32, Data::F(vec![3.0]))], Tol::Exact));
    cases.push(one("nn.trilu", "  %k = qc.constant {value = dense<1>} : () -> tensor<i64>\n  %y = nn.trilu %x, %k {upper = 0} : (tensor<2x3x8xf32>, tensor<i64>) -> tensor<2x3x8xf32>", &format!("%x: {t}"), t, vec![x3()], Tol::Exact));
    cases.push(one("nn.cum_sum exclusive reverse", "  %a = qc.constant {value = dense<2>} : () -> tensor<i64>\n  %y = nn.cum_sum %x, %a {exclusive = 1, reverse = 1} : (tensor<2x3x8xf32>, tensor<i64>) -> tensor<2x3x8xf32>", &format!("%x: {t}"), t, vec![x3()], Tol::Rel(1e-6)));
    let img = || ft(&[1, 2, 6, 6], 31, -1.0, 1.0);
    cases.push(one("nn.conv", "  %y = nn.conv %x, %w, %b {dilations = [1, 1], group = 1, kernel_shape = [3, 3], pads = [1, 0, 1, 2], strides = [2, 1]} : (tensor<1x2x6x6xf32>, tensor<4x2x3x3xf32>, tensor<4xf32>) -> tensor<1x4x3x6xf32>", "%x: tensor<1x2x6x6xf32>, %w: tensor<4x2x3x3xf32>, %b: tensor<4xf32>", "tensor<1x4x3x6xf32>", vec![img(), ft(&[4, 2, 3, 3], 32, -1.0, 1.0), ft(&[4], 33, -1.0, 1.0)], Tol::Rel(1e-6)));
    cases.push(one("nn.max_pool ceil_mode", "  %y = nn.max_pool %x {ceil_mode = 1, dilations = [1, 1], kernel_shape = [3, 3], pads = [0, 0, 0, 0], strides = [2, 2]} : (tensor<1x2x6x6xf32>) -> tensor<1x2x3x3xf32>", "%x: tensor<1x2x6x6xf32>", "tensor<1x2x3x3xf32>", vec![img()], Tol::Exact));
    cases.push(one("nn.avg_pool", "  %y = nn.avg_pool %x {count_include_pad = 0, dilations = [1, 1], kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]} : (tensor<1x2x6x6xf32>) -> tensor<1x2x3x3xf32>", "%x: tensor<1x2x6x6xf32>", "tensor<1x2x3x3xf32>", vec![img()], Tol::Rel(1e-6)));
    cases.push(one("nn.avg_pool count_include_pad", "  %y = nn.avg_pool %x {count_include_pad = 1, dilations = [1, 1], kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]} : (tensor<1x2x6x6xf32>) -> tensor<1x2x3x3xf32>", "%x: tensor<1x2x6x6xf32>", "tensor<1x2x3x3xf32>", vec![img()], Tol::Rel(1e-6)));
    cases.push(unary(
        "nn.global_avg_pool",
        "nn.global_avg_pool",
        "tensor<1x2x6x6xf32>",
        "tensor<1x2x1x1xf32>",
        img(),
        Tol::Rel(1e-6),
    ));
    cases.push(unary(
        "nn.global_max_pool",
        "nn.global_max_pool",
        "tensor<1x2x6x6xf32>",
        "tensor<1x2x1x1xf32>",
        img(),
        Tol::Exact,
    ));
    cases.push(unary(
        "quant.hadamard",
        "quant.hadamard {block = 4}",
        t,
        t,
        x3(),
        Tol::Rel(1e-6),
    ));
    cases.push(case(
        "quant.quantize_linear/dequantize_linear",
        "func.func @main(%x: tensor<2x3x8xf32>) -> (tensor<2x3x8xi8>, tensor<2x3x8xf32>) {
  %s = qc.constant {value = dense<[0.02, 0.05, 0.1]>} : () -> tensor<3xf32>
  %z = qc.constant {value = dense<[0, 3, -2]>} : () -> tensor<3xi8>
  %q = quant.quantize_linear %x, %s, %z {axis = 1} : (tensor<2x3x8xf32>, tensor<3xf32>, tensor<3xi8>) -> tensor<2x3x8xi8>
  %d = quant.dequantize_linear %q, %s, %z {axis = 1} : (tensor<2x3x8xi8>, tensor<3xf32>, tensor<3xi8>) -> tensor<2x3x8xf32>
  return %q, %d : tensor<2x3x8xi8>, tensor<2x3x8xf32>
}",
        vec![x3()],
        Tol::Exact,
    ));
    cases.push(case(
        "quant.dynamic_quantize_linear",
        "func.func @main(%x: tensor<2x3x8xf32>) -> (tensor<2x3x8xui8>, tensor<f32>, tensor<ui8>) {
  %q, %s, %z = quant.dynamic_quantize_linear %x : (tensor<2x3x8xf32>) -> (tensor<2x3x8xui8>, tensor<f32>, tensor<ui8>)
  return %q, %s, %z : tensor<2x3x8xui8>, tensor<f32>, tensor<ui8>
}",
        vec![x3()],
        Tol::Exact,
    ));
    let report = check(cases);
    assert!(report.len() >= 40, "{} outputs compared", report.len());
}

/// A function that quantizes its input to `fmt` and returns the dequantized values.
fn fake_quant(fmt: &str, shape: &str, attrs: &str) -> String {
    format!(
        "func.func @main(%x: {shape}xf32>) -> {shape}xf32> {{
  %q = quant.quantize %x{attrs} : ({shape}xf32>) -> {shape}x!quant.{fmt}>
  %y = quant.dequantize %q : ({shape}x!quant.{fmt}>) -> {shape}xf32>
  return %y : {shape}xf32>
}}"
    )
}

#[test]
fn activation_quantization_is_bit_exact() {
    let mut cases = Vec::new();
    // Values over many binades, with exact zeros, ties and negative zeros.
    let mut v = vals(4 * 128, 40, -1.0, 1.0);
    for (i, x) in v.iter_mut().enumerate() {
        *x = (*x * 2f64.powi((i % 13) as i32 - 6)) as f32 as f64;
        if i % 17 == 0 {
            *x = 0.0;
        }
        if i % 29 == 0 {
            *x = -0.0;
        }
        if i % 31 == 0 {
            *x = 0.75 * 2f64.powi((i % 5) as i32 - 2); // ties for e2m1 grids
        }
    }
    let x = Tensor::new(vec![4, 128], ElemType::F32, Data::F(v));
    for fmt in [
        "fp8_e4m3",
        "fp8_e5m2",
        "fp8_e4m3_channel",
        "fp6_e2m3",
        "fp6_e3m2",
        "int8",
        "int8_channel",
        "int8_g128",
        "int4_g32",
        "int4_g128",
        "int4_channel",
        "mxfp8",
        "mxfp8_e5m2",
        "mxfp6",
        "mxfp6_e3m2",
        "mxfp4",
        "mxfp4_rceil",
        "mxfp4_ceil",
        "mxint8",
        "nvfp4",
        "nvfp4_torchao",
        "nvfp4_ct",
        "nvfp4_ggml",
        "nvint4",
    ] {
        cases.push(case(
            fmt,
            &fake_quant(fmt, "tensor<4x128", ""),
            vec![x.clone()],
            Tol::Exact,
        ));
    }
    // Static (calibrated) maxima: per-tensor scales from the attribute, nvfp4's tensor scale.
    for fmt in ["fp8_e4m3", "nvfp4", "int8"] {
        cases.push(case(
            &format!("{fmt} amax=0.3"),
            &fake_quant(fmt, "tensor<4x128", " {amax = 0.3}"),
            vec![x.clone()],
            Tol::Exact,
        ));
    }
    // A 2-D block scheme and a rounding mode other than rne.
    for (name, ty) in [
        ("block<16x16> e4m3", "!quant.fmt<e4m3fn, block<16x16>, scale = f32, rule = amax>"),
        ("ties_away e2m1 mx", "!quant.fmt<e2m1, group<32>, scale = e8m0, rule = even, round = ties_away, pack = lo_first>"),
        ("toward_zero int8 bf16 scale", "!quant.fmt<i8, group<32>, scale = bf16, rule = amax, round = toward_zero>"),
        ("e5m2 overflow f16 scale", "!quant.fmt<e5m2, per_channel<0>, scale = f16, rule = amax, sat = overflow>"),
    ] {
        let text = format!(
            "func.func @main(%x: tensor<32x64xf32>) -> tensor<32x64xf32> {{
  %q = quant.quantize %x : (tensor<32x64xf32>) -> tensor<32x64x{ty}>
  %y = quant.dequantize %q : (tensor<32x64x{ty}>) -> tensor<32x64xf32>
  return %y : tensor<32x64xf32>
}}"
        );
        let m = parse_module(&text, &Source::named("case"), &registry());
        let Ok(m) = m else {
            panic!("{name}: {}", m.unwrap_err().render(Some(&text)));
        };
        cases.push(Case {
            name: name.into(),
            module: m,
            reference: None,
            shapes: ShapeBindings::new(),
            inputs: vec![Tensor::new(vec![32, 64], ElemType::F32, Data::F(
                (0..2048).map(|i| x.data.f((i * 7) % 512) * 37.0).collect(),
            ))],
            tol: Tol::Exact,
        });
    }
    let n = cases.len();
    let report = check(cases);
    assert_eq!(report.len(), n);
}

/// The blob resource of `w` (row-major `shape`) quantized to `fmt`, as the `dialect_resources` hex.
fn blob_hex(w: &[f32], shape: &[usize], fmt: &str) -> String {
    let f = qc_ir::quant::named_format(fmt).unwrap().ty.clone();
    let q = qc_quant::tensor::quantize(w, shape, &f, &Default::default()).unwrap();
    let blob = qc_quant::blob::to_blob(&q).unwrap();
    [16u8, 0, 0, 0]
        .iter()
        .chain(&blob)
        .map(|b| format!("{b:02X}"))
        .collect()
}

#[test]
fn quantized_matmuls_decode_weights_bit_exactly() {
    let mut cases = Vec::new();
    let (n, k) = (48usize, 64usize);
    // Weights with outliers so that blocks get different scales.
    let w: Vec<f32> = vals(n * k, 50, -1.0, 1.0)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (v * if i % 37 == 0 { 9.0 } else { 1.0 } * (1.0 + (i / k) as f64 / 8.0)) as f32
        })
        .collect();
    for fmt in [
        "int4_g32",
        "int8",
        "nvfp4",
        "mxfp4",
        "fp8_e4m3",
        "int4_g128",
        "int8_channel",
        "mxfp6",
        "mxfp6_e3m2",
        "mxfp8",
        "mxint8",
        "nvfp4_ggml",
        "nvfp4_ct",
        "nvint4",
        "uint4_g128",
        "uint8",
        "fp6_e2m3",
        "int4_channel",
    ] {
        let kk = if fmt.ends_with("g128") { 128 } else { k };
        let ww: Vec<f32> = (0..n * kk).map(|i| w[i % w.len()]).collect();
        let hex = blob_hex(&ww, &[n, kk], fmt);
        let text = format!(
            "func.func @main(%x: tensor<2x3x{kk}xf32>) -> (tensor<2x3x{n}xf32>, tensor<{n}x{kk}xf32>) {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<{n}x{kk}x!quant.{fmt}>
  %y = quant.matmul %x, %w {{transpose_b}} : (tensor<2x3x{kk}xf32>, tensor<{n}x{kk}x!quant.{fmt}>) -> tensor<2x3x{n}xf32>
  %d = quant.dequantize %w : (tensor<{n}x{kk}x!quant.{fmt}>) -> tensor<{n}x{kk}xf32>
  return %y, %d : tensor<2x3x{n}xf32>, tensor<{n}x{kk}xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{hex}\" }} }} #-}}"
        );
        let m = parse(&text);
        let x = ft(&[2, 3, kk], 51, -2.0, 2.0);
        // Output 0 (the product) within 1e-5 of its scale; output 1 (the weights) bit-exact is checked
        // below from the same run.
        cases.push(Case {
            name: fmt.into(),
            module: m,
            reference: None,
            shapes: ShapeBindings::new(),
            inputs: vec![x],
            tol: Tol::Rel(1e-5),
        });
    }
    // Bit-exactness of the dequantized weights: the same modules returning only the weights.
    let exact: Vec<Case> = cases
        .iter()
        .map(|c| {
            let mut m = c.module.clone();
            let f = &mut m.funcs[0];
            f.ret = vec![f.ret[1]];
            f.result_types = vec![f.result_types[1].clone()];
            Case {
                name: format!("{} weights", c.name),
                module: m,
                reference: None,
                shapes: ShapeBindings::new(),
                inputs: c.inputs.clone(),
                tol: Tol::Exact,
            }
        })
        .collect();
    // A weight-only matmul without transpose, and a quantized activation times quantized weights.
    let ww: Vec<f32> = w[..k * n].to_vec();
    let hex = blob_hex(&ww, &[k, n], "int8_channel");
    cases.push(case(
        "int8_channel [K, N] with an fp8 activation",
        &format!(
            "func.func @main(%x: tensor<3x{k}xf32>) -> tensor<3x{n}xf32> {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<{k}x{n}x!quant.int8_channel>
  %q = quant.quantize %x : (tensor<3x{k}xf32>) -> tensor<3x{k}x!quant.fp8_e4m3>
  %y = quant.matmul %q, %w : (tensor<3x{k}x!quant.fp8_e4m3>, tensor<{k}x{n}x!quant.int8_channel>) -> tensor<3x{n}xf32>
  return %y : tensor<3x{n}xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{hex}\" }} }} #-}}"
        ),
        vec![ft(&[3, k], 52, -2.0, 2.0)],
        Tol::Rel(1e-5),
    ));
    cases.extend(exact);
    let report = check(cases);
    for name in [
        "int4_g32 #0",
        "int8 #0",
        "nvfp4 #0",
        "mxfp4 #0",
        "fp8_e4m3 #0",
    ] {
        assert!(
            report.iter().any(|(n, _)| n == name),
            "{name} was not compared"
        );
    }
}

#[test]
fn symbolic_shapes_are_specialized_from_bindings() {
    let text = "func.func @main(%ids: tensor<[batch]x[seq]xi64>, %x: tensor<[batch]x[seq]x4xf32>) -> tensor<[batch]x[seq]x4xf32> {
  %s = nn.shape %x : (tensor<[batch]x[seq]x4xf32>) -> tensor<3xi64>
  %i = qc.constant {value = dense<1>} : () -> tensor<1xi64>
  %n = nn.gather %s, %i {axis = 0} : (tensor<3xi64>, tensor<1xi64>) -> tensor<1xi64>
  %z = qc.constant {value = dense<0>} : () -> tensor<i64>
  %one = qc.constant {value = dense<1>} : () -> tensor<i64>
  %ns = nn.reshape %n, %i : (tensor<1xi64>, tensor<1xi64>) -> tensor<1xi64>
  %e = qc.constant {value = dense<[]>} : () -> tensor<0xi64>
  %len = nn.reshape %ns, %e : (tensor<1xi64>, tensor<0xi64>) -> tensor<i64>
  %r = nn.range %z, %len, %one : (tensor<i64>, tensor<i64>, tensor<i64>) -> tensor<?xi64>
  %rf = nn.cast %r : (tensor<?xi64>) -> tensor<?xf32>
  %u = qc.constant {value = dense<[0, 2]>} : () -> tensor<2xi64>
  %ru = nn.unsqueeze %rf, %u : (tensor<?xf32>, tensor<2xi64>) -> tensor<1x?x1xf32>
  %y = nn.add %x, %ru : (tensor<[batch]x[seq]x4xf32>, tensor<1x?x1xf32>) -> tensor<[batch]x[seq]x4xf32>
  return %y : tensor<[batch]x[seq]x4xf32>
}";
    let m = parse(text);
    // Unbound symbols are a diagnostic naming the symbol and how to bind it.
    let e = lower_module(&m, "main").unwrap_err();
    assert!(
        e.message.contains("[batch]") && e.message.contains("--shape"),
        "{e}"
    );
    let mut b = ShapeBindings::new();
    b.add("ids=2x5").unwrap();
    // Both ways: by argument (binding batch and seq) and by symbol.
    let mut c = ShapeBindings::new();
    c.add("batch=2").unwrap();
    c.add("seq=5").unwrap();
    let mut bad = ShapeBindings::new();
    bad.add("ids=2x5").unwrap();
    bad.add("x=3x5x4").unwrap();
    let e = lower_module_with_shapes(&m, "main", &bad).unwrap_err();
    assert!(e.message.contains("bound to both"), "{e}");
    let mut unknown = ShapeBindings::new();
    unknown.add("tokens=3").unwrap();
    let e = lower_module_with_shapes(&m, "main", &unknown).unwrap_err();
    assert!(e.message.contains("names neither"), "{e}");
    assert!(ShapeBindings::new().add("seq=x").is_err());
    let ids = it(&[2, 5], (0..10).collect());
    let x = ft(&[2, 5, 4], 60, -1.0, 1.0);
    let text_b = lower_module_with_shapes(&m, "main", &b).unwrap();
    assert_eq!(text_b, lower_module_with_shapes(&m, "main", &c).unwrap());
    assert!(text_b.contains("tensor<2x5x4xf32>"), "{text_b}");
    assert!(
        !text_b.contains("stablehlo.iota"),
        "the range was not folded:\n{text_b}"
    );
    check(vec![Case {
        name: "symbolic".into(),
        module: m,
        reference: None,
        shapes: b,
        inputs: vec![ids, x],
        tol: Tol::Exact,
    }]);
}

#[test]
fn unsupported_input_is_a_located_diagnostic() {
    let text = "func.func @main(%x: tensor<4x4xf32>) -> tensor<4x4xf32> {
  %y = nn.lrn %x {size = 3} : (tensor<4x4xf32>) -> tensor<4x4xf32>
  return %y : tensor<4x4xf32>
}";
    let m = parse(text);
    let e = lower_module(&m, "main").unwrap_err();
    assert!(e.message.contains("cannot lower nn.lrn"), "{e}");
    assert_eq!(e.loc.to_string(), "case:2:3");
    // Stochastic rounding is refused by name.
    let text = "func.func @main(%x: tensor<4x32xf32>) -> tensor<4x32xf32> {
  %q = quant.quantize %x {seed = 3} : (tensor<4x32xf32>) -> tensor<4x32x!quant.fmt<e2m1, group<32>, scale = e8m0, rule = floor, round = stochastic, pack = lo_first>>
  %y = quant.dequantize %q : (tensor<4x32x!quant.fmt<e2m1, group<32>, scale = e8m0, rule = floor, round = stochastic, pack = lo_first>>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}";
    let e = lower_module(&parse(text), "main").unwrap_err();
    assert!(e.message.contains("stochastic"), "{e}");
    // An elided weight.
    let text = "func.func @main(%x: tensor<1x32xf32>) -> tensor<1x2xf32> {
  %w = qc.constant {value = dense_resource<w>} : () -> tensor<2x32x!quant.nvfp4>
  %y = quant.matmul %x, %w {transpose_b} : (tensor<1x32xf32>, tensor<2x32x!quant.nvfp4>) -> tensor<1x2xf32>
  return %y : tensor<1x2xf32>
}";
    let e = lower_module(&parse(text), "main").unwrap_err();
    assert!(e.message.contains("resource 'w'"), "{e}");
    assert!(lower_module(&parse(text), "other").is_err());
}

#[test]
fn the_comparison_catches_a_wrong_module() {
    // XLA runs a module that computes x + 1 where the interpreter computes x + 2: the check must fail.
    let m = parse(
        "func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %c = qc.constant {value = dense<2.0>} : () -> tensor<f32>
  %y = nn.add %x, %c : (tensor<4xf32>, tensor<f32>) -> tensor<4xf32>
  return %y : tensor<4xf32>
}",
    );
    let wrong = parse(
        "func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> {
  %c = qc.constant {value = dense<1.0>} : () -> tensor<f32>
  %y = nn.add %x, %c : (tensor<4xf32>, tensor<f32>) -> tensor<4xf32>
  return %y : tensor<4xf32>
}",
    );
    let x = ft(&[4], 70, -1.0, 1.0);
    let r = std::panic::catch_unwind(|| {
        check(vec![Case {
            name: "wrong".into(),
            module: wrong,
            reference: Some(m),
            shapes: ShapeBindings::new(),
            inputs: vec![x],
            tol: Tol::Rel(1e-3),
        }])
    });
    let msg = match r {
        Ok(rep) => panic!("a wrong module passed: {rep:?}"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(msg.contains("differs from the interpreter"), "{msg}");
}

// ---------------------------------------------------------------------------------------------------
// The upstream MLIR export (`qc_backend_hlo::upstream`, `qc compile --emit mlir`): every exported module
// passes MLIR's verifier, parses back to the same text, and computes what the interpreter computes when
// mlir-opt (LLVM 22) lowers it to the LLVM dialect and mlir-runner runs it. These tests need no Python;
// the numeric ones need mlir-opt and mlir-runner (UPSTREAM_MLIR_BIN, default /usr/lib/llvm-22/bin).

mod upstream {
    use super::*;
    use qc_backend_hlo::upstream::{export_module, verify_upstream_text};

    fn llvm_bin(tool: &str) -> PathBuf {
        let dir = std::env::var("UPSTREAM_MLIR_BIN").unwrap_or("/usr/lib/llvm-22/bin".into());
        let p = Path::new(&dir).join(tool);
        assert!(
            p.exists(),
            "{} is needed by the upstream MLIR tests (set UPSTREAM_MLIR_BIN to LLVM 22's bin folder)",
            p.display()
        );
        p
    }

    fn llvm_lib(name: &str) -> PathBuf {
        llvm_bin("mlir-opt")
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("lib")
            .join(name)
    }

    /// The pipeline that lowers an exported module to the LLVM dialect on a CPU (f4E2M1FN and f8E8M0FNU
    /// are expanded by arith-expand; upstream MLIR has no CPU expansion of the other fp8 / fp6 types).
    pub(crate) const LOWER_TO_LLVM: &[&str] = &[
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

    /// Exports `m`, checks determinism and that the text parses back (with MLIR's verifier) to itself.
    fn export(name: &str, m: &Module) -> String {
        let text = export_module(m, "main", &ShapeBindings::new())
            .unwrap_or_else(|d| panic!("{name}: {d}"));
        assert_eq!(
            export_module(m, "main", &ShapeBindings::new()).unwrap(),
            text,
            "{name}: not deterministic"
        );
        let again = verify_upstream_text(&text)
            .unwrap_or_else(|e| panic!("{name}: the text does not parse back: {e}\n{text}"));
        assert_eq!(again, text, "{name}: the text does not round-trip");
        text
    }

    fn hex(bytes: impl IntoIterator<Item = u8>) -> String {
        bytes.into_iter().map(|b| format!("{b:02X}")).collect()
    }

    fn mlir_type(t: &Tensor) -> String {
        let dims: String = t.shape.iter().map(|d| format!("{d}x")).collect();
        let e = match t.elem {
            ElemType::Int { bits, .. } => format!("i{bits}"),
            ref e => e.to_string(),
        };
        format!("tensor<{dims}{e}>")
    }

    fn literal(t: &Tensor) -> String {
        let bytes: Vec<u8> = match (&t.data, &t.elem) {
            (Data::F(v), ElemType::F32) => {
                v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect()
            }
            (Data::I(v), ElemType::Int { bits: 64, .. }) => {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            _ => panic!("inputs are f32 or i64"),
        };
        format!("dense<\"0x{}\"> : {}", hex(bytes), mlir_type(t))
    }

    /// Runs the exported `main` on `inputs` through mlir-opt and mlir-runner; returns each f32 output's
    /// bits.
    fn run_upstream(text: &str, inputs: &[Tensor], outputs: &[Tensor]) -> Vec<Vec<u32>> {
        let end = text.rfind('}').unwrap();
        let mut entry = String::from(
            "  func.func private @printMemrefI32(memref<*xi32>) attributes {llvm.emit_c_interface}\n  func.func @entry() {\n",
        );
        let mut args = Vec::new();
        for (i, t) in inputs.iter().enumerate() {
            entry += &format!("    %a{i} = arith.constant {}\n", literal(t));
            args.push(format!("%a{i}"));
        }
        let in_tys: Vec<String> = inputs.iter().map(mlir_type).collect();
        let out_tys: Vec<String> = outputs.iter().map(mlir_type).collect();
        let n = outputs.len();
        let res = if n == 1 {
            "%r".into()
        } else {
            format!("%r:{n}")
        };
        entry += &format!(
            "    {res} = func.call @main({}) : ({}) -> ({})\n",
            args.join(", "),
            in_tys.join(", "),
            out_tys.join(", ")
        );
        for (i, ty) in out_tys.iter().enumerate() {
            let r = if n == 1 {
                "%r".into()
            } else {
                format!("%r#{i}")
            };
            let ity = ty.replace("xf32>", "xi32>").replace("<f32>", "<i32>");
            let mty = ity.replace("tensor<", "memref<");
            entry += &format!(
                "    %b{i} = arith.bitcast {r} : {ty} to {ity}\n    %m{i} = bufferization.to_buffer %b{i} : {ity} to {mty}\n    %u{i} = memref.cast %m{i} : {mty} to memref<*xi32>\n    func.call @printMemrefI32(%u{i}) : (memref<*xi32>) -> ()\n"
            );
        }
        entry += "    return\n  }\n";
        let full = format!("{}{entry}}}\n", &text[..end]);
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("m.mlir");
        let low = dir.path().join("m.llvm.mlir");
        std::fs::write(&src, &full).unwrap();
        let out = Command::new(llvm_bin("mlir-opt"))
            .arg(&src)
            .args(LOWER_TO_LLVM)
            .arg("-o")
            .arg(&low)
            .output()
            .expect("run mlir-opt");
        assert!(
            out.status.success(),
            "mlir-opt failed:\n{}\n{full}",
            String::from_utf8_lossy(&out.stderr)
        );
        let libs = format!(
            "-shared-libs={},{}",
            llvm_lib("libmlir_runner_utils.so").display(),
            llvm_lib("libmlir_c_runner_utils.so").display()
        );
        let out = Command::new(llvm_bin("mlir-runner"))
            .args(["-e", "entry", "-entry-point-result=void", &libs])
            .arg(&low)
            .output()
            .expect("run mlir-runner");
        assert!(
            out.status.success(),
            "mlir-runner failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .split("Unranked Memref")
            .skip(1)
            .map(|chunk| {
                let data = &chunk[chunk.find("data =").expect("printMemref output") + 6..];
                data.split(|c: char| !(c.is_ascii_digit() || c == '-'))
                    .filter(|s| !s.is_empty() && *s != "-")
                    .map(|s| s.parse::<i64>().unwrap() as u32)
                    .collect()
            })
            .collect()
    }

    /// Exports, runs and compares with the interpreter; returns the text.
    fn check_numerics(name: &str, m: &Module, inputs: Vec<Tensor>, tol: Tol) -> String {
        let text = export(name, m);
        let want = run_func(m, "main", inputs.clone())
            .unwrap_or_else(|d| panic!("{name}: the interpreter failed: {d}"));
        let got = run_upstream(&text, &inputs, &want);
        assert_eq!(got.len(), want.len(), "{name}: outputs");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), w.len(), "{name} output {i}: element count");
            let scale = (0..w.len()).fold(0f64, |m, k| m.max(w.data.f(k).abs()));
            for (k, &bits) in g.iter().enumerate() {
                let (x, y) = (f32::from_bits(bits) as f64, w.data.f(k) as f32 as f64);
                let ok = match tol {
                    Tol::Exact => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                    Tol::Rel(t) => (x - y).abs() <= t * scale.max(f64::MIN_POSITIVE),
                };
                assert!(
                    ok,
                    "{name} output {i} element {k}: upstream MLIR gives {x}, the interpreter {y} ({tol:?})\n{text}"
                );
            }
        }
        text
    }

    fn one_op(op: &str, x: &str, y: &str) -> Module {
        let (op, attrs) = split_op(op);
        parse(&format!(
            "func.func @main(%x: {x}) -> {y} {{\n  %y = {op} %x{attrs} : ({x}) -> {y}\n  return %y : {y}\n}}"
        ))
    }

    fn two_op(op: &str, a: &str, b: &str, y: &str) -> Module {
        let (op, attrs) = split_op(op);
        parse(&format!(
            "func.func @main(%a: {a}, %b: {b}) -> {y} {{\n  %y = {op} %a, %b{attrs} : ({a}, {b}) -> {y}\n  return %y : {y}\n}}"
        ))
    }

    #[test]
    fn upstream_elementwise_ops_compute_what_the_interpreter_computes() {
        let x = || ft(&[4, 8], 1, -3.0, 3.0);
        let pos = || ft(&[4, 8], 2, 0.1, 4.0);
        for op in ["nn.neg", "nn.abs", "nn.relu", "nn.identity"] {
            check_numerics(op, &one_op(op, F, F), vec![x()], Tol::Exact);
        }
        for op in [
            "nn.exp",
            "nn.tanh",
            "nn.erf",
            "nn.sigmoid",
            "nn.gelu",
            "nn.gelu {approximate = \"tanh\"}",
            "nn.sin",
            "nn.cos",
            "nn.floor",
            "nn.round",
        ] {
            let text = check_numerics(op, &one_op(op, F, F), vec![x()], Tol::Rel(1e-6));
            if op == "nn.erf" {
                assert!(text.contains("math.erf"), "{text}");
            }
        }
        for op in ["nn.log", "nn.sqrt", "nn.reciprocal"] {
            check_numerics(op, &one_op(op, F, F), vec![pos()], Tol::Rel(1e-6));
        }
        let row = "tensor<8xf32>";
        for op in ["nn.add", "nn.sub", "nn.mul", "nn.div", "nn.max", "nn.min"] {
            // The second operand broadcasts along the rows.
            let text = check_numerics(
                op,
                &two_op(op, F, row, F),
                vec![x(), ft(&[8], 3, 0.5, 2.0)],
                Tol::Exact,
            );
            assert!(text.contains("affine_map<(d0, d1) -> (d1)>"), "{text}");
        }
        check_numerics(
            "nn.pow",
            &two_op("nn.pow", F, "tensor<f32>", F),
            vec![
                pos(),
                Tensor::new(vec![], ElemType::F32, Data::F(vec![1.7])),
            ],
            Tol::Rel(1e-6),
        );
        // Comparisons, where, casts and clip.
        let m = parse(
            "func.func @main(%a: tensor<4x8xf32>, %b: tensor<4x8xf32>) -> (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) {
  %c = nn.less %a, %b : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xi1>
  %n = nn.not %c : (tensor<4x8xi1>) -> tensor<4x8xi1>
  %w = nn.where %n, %a, %b : (tensor<4x8xi1>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
  %i = nn.cast %a : (tensor<4x8xf32>) -> tensor<4x8xi64>
  %f = nn.cast %i : (tensor<4x8xi64>) -> tensor<4x8xf32>
  %lo = qc.constant {value = dense<-1.5>} : () -> tensor<f32>
  %hi = qc.constant {value = dense<2.0>} : () -> tensor<f32>
  %k = nn.clip %a, %lo, %hi : (tensor<4x8xf32>, tensor<f32>, tensor<f32>) -> tensor<4x8xf32>
  return %w, %f, %k : tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>
}",
        );
        check_numerics(
            "compare, where, cast, clip",
            &m,
            vec![x(), ft(&[4, 8], 4, -3.0, 3.0)],
            Tol::Exact,
        );
    }

    #[test]
    fn upstream_shape_reduction_and_linear_algebra_ops_compute_what_the_interpreter_computes() {
        let x = || ft(&[2, 3, 8], 5, -2.0, 2.0);
        let x3 = "tensor<2x3x8xf32>";
        for (op, y, tol) in [
            ("nn.softmax {axis = -1}", x3, Tol::Rel(1e-6)),
            ("nn.log_softmax {axis = 1}", x3, Tol::Rel(1e-6)),
            (
                "nn.transpose {perm = [2, 0, 1]}",
                "tensor<8x2x3xf32>",
                Tol::Exact,
            ),
            ("nn.flatten {axis = 1}", "tensor<2x24xf32>", Tol::Exact),
        ] {
            let text = check_numerics(op, &one_op(op, x3, y), vec![x()], tol);
            if op.starts_with("nn.softmax") {
                assert!(text.contains("\"reduction\""), "{text}");
            }
        }
        let m = parse(
            "func.func @main(%x: tensor<2x3x8xf32>, %s: tensor<8xf32>, %b: tensor<8xf32>) -> (tensor<2x3x8xf32>, tensor<2x1x8xf32>, tensor<3xf32>) {
  %y = nn.layer_norm %x, %s, %b {axis = -1, epsilon = 1.0e-5} : (tensor<2x3x8xf32>, tensor<8xf32>, tensor<8xf32>) -> tensor<2x3x8xf32>
  %ax = qc.constant {value = dense<1>} : () -> tensor<1xi64>
  %m = nn.reduce_mean %x, %ax {keepdims = 1} : (tensor<2x3x8xf32>, tensor<1xi64>) -> tensor<2x1x8xf32>
  %ax2 = qc.constant {value = dense<[0, 2]>} : () -> tensor<2xi64>
  %mx = nn.reduce_max %x, %ax2 {keepdims = 0} : (tensor<2x3x8xf32>, tensor<2xi64>) -> tensor<3xf32>
  return %y, %m, %mx : tensor<2x3x8xf32>, tensor<2x1x8xf32>, tensor<3xf32>
}",
        );
        check_numerics(
            "layer_norm, reduce_mean, reduce_max",
            &m,
            vec![x(), ft(&[8], 6, 0.5, 1.5), ft(&[8], 7, -1.0, 1.0)],
            Tol::Rel(1e-6),
        );
        // Matrix products: NumPy matmul with a broadcast batch, and gemm.
        let m = parse(
            "func.func @main(%a: tensor<2x3x8xf32>, %b: tensor<1x8x5xf32>, %c: tensor<5x8xf32>, %d: tensor<5xf32>) -> (tensor<2x3x5xf32>, tensor<3x5xf32>) {
  %y = nn.matmul %a, %b : (tensor<2x3x8xf32>, tensor<1x8x5xf32>) -> tensor<2x3x5xf32>
  %s = nn.reshape %a, %sh : (tensor<2x3x8xf32>, tensor<2xi64>) -> tensor<6x8xf32>
  %t = nn.slice %s, %st, %en, %axes, %steps : (tensor<6x8xf32>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>, tensor<1xi64>) -> tensor<3x8xf32>
  %g = nn.gemm %t, %c, %d {alpha = 0.5, beta = 2.0, trans_b = 1} : (tensor<3x8xf32>, tensor<5x8xf32>, tensor<5xf32>) -> tensor<3x5xf32>
  return %y, %g : tensor<2x3x5xf32>, tensor<3x5xf32>
}"
            .replace(
                "  %s = nn.reshape",
                "  %sh = qc.constant {value = dense<[6, 8]>} : () -> tensor<2xi64>\n  %st = qc.constant {value = dense<0>} : () -> tensor<1xi64>\n  %en = qc.constant {value = dense<6>} : () -> tensor<1xi64>\n  %axes = qc.constant {value = dense<0>} : () -> tensor<1xi64>\n  %steps = qc.constant {value = dense<2>} : () -> tensor<1xi64>\n  %s = nn.reshape",
            )
            .as_str(),
        );
        let text = check_numerics(
            "matmul, reshape, slice, gemm",
            &m,
            vec![
                x(),
                ft(&[1, 8, 5], 8, -1.0, 1.0),
                ft(&[5, 8], 9, -1.0, 1.0),
                ft(&[5], 10, -1.0, 1.0),
            ],
            Tol::Rel(1e-6),
        );
        assert!(
            text.contains("tensor.collapse_shape") && text.contains("tensor.extract_slice"),
            "{text}"
        );
        // Gather (negative indices wrap), concat, split, expand, unsqueeze.
        let m = parse(
            "func.func @main(%t: tensor<10x4xf32>, %i: tensor<2x3xi64>) -> (tensor<2x3x4xf32>, tensor<10x8xf32>, tensor<3x4xf32>, tensor<2x10x4xf32>) {
  %g = nn.gather %t, %i {axis = 0} : (tensor<10x4xf32>, tensor<2x3xi64>) -> tensor<2x3x4xf32>
  %c = nn.concat %t, %t {axis = 1} : (tensor<10x4xf32>, tensor<10x4xf32>) -> tensor<10x8xf32>
  %sz = qc.constant {value = dense<[7, 3]>} : () -> tensor<2xi64>
  %p, %q = nn.split %t, %sz {axis = 0} : (tensor<10x4xf32>, tensor<2xi64>) -> (tensor<7x4xf32>, tensor<3x4xf32>)
  %ax = qc.constant {value = dense<0>} : () -> tensor<1xi64>
  %u = nn.unsqueeze %t, %ax : (tensor<10x4xf32>, tensor<1xi64>) -> tensor<1x10x4xf32>
  %shape = qc.constant {value = dense<[2, 10, 4]>} : () -> tensor<3xi64>
  %e = nn.expand %u, %shape : (tensor<1x10x4xf32>, tensor<3xi64>) -> tensor<2x10x4xf32>
  return %g, %c, %q, %e : tensor<2x3x4xf32>, tensor<10x8xf32>, tensor<3x4xf32>, tensor<2x10x4xf32>
}",
        );
        let text = check_numerics(
            "gather, concat, split, expand",
            &m,
            vec![
                ft(&[10, 4], 11, -1.0, 1.0),
                it(&[2, 3], vec![0, 9, -1, 3, -10, 5]),
            ],
            Tol::Exact,
        );
        assert!(
            text.contains("tensor.extract") && text.contains("tensor.insert_slice"),
            "{text}"
        );
    }

    fn quantized_module(fmt: &str, n: usize, k: usize, w: &[f32]) -> Module {
        let hex = blob_hex(w, &[n, k], fmt);
        parse(&format!(
            "func.func @main(%x: tensor<2x3x{k}xf32>) -> (tensor<2x3x{n}xf32>, tensor<{n}x{k}xf32>) {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<{n}x{k}x!quant.{fmt}>
  %y = quant.matmul %x, %w {{transpose_b}} : (tensor<2x3x{k}xf32>, tensor<{n}x{k}x!quant.{fmt}>) -> tensor<2x3x{n}xf32>
  %d = quant.dequantize %w : (tensor<{n}x{k}x!quant.{fmt}>) -> tensor<{n}x{k}xf32>
  return %y, %d : tensor<2x3x{n}xf32>, tensor<{n}x{k}xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{hex}\" }} }} #-}}"
        ))
    }

    fn weights(n: usize, k: usize) -> Vec<f32> {
        vals(n * k, 50, -1.0, 1.0)
            .iter()
            .enumerate()
            .map(|(i, &v)| (v * if i % 37 == 0 { 9.0 } else { 1.0 }) as f32)
            .collect()
    }

    #[test]
    fn upstream_quantized_weights_are_builtin_low_precision_codes_with_scales() {
        // (format, what the codes and scales must be typed as)
        let cases: &[(&str, &[&str])] = &[
            (
                "nvfp4",
                &[
                    "tensor<16x64xf4E2M1FN>",
                    "tensor<16x4xf8E4M3FN>",
                    "arith.extf",
                    "tensor<f32>",
                ],
            ),
            ("nvfp4_ct", &["tensor<16x64xf4E2M1FN>", "arith.divf"]),
            (
                "mxfp4",
                &["tensor<16x64xf4E2M1FN>", "tensor<16x2xf8E8M0FNU>"],
            ),
            (
                "mxfp6",
                &["tensor<16x64xf6E2M3FN>", "tensor<16x2xf8E8M0FNU>"],
            ),
            ("mxfp6_e3m2", &["tensor<16x64xf6E3M2FN>"]),
            ("mxfp8", &["tensor<16x64xf8E4M3FN>"]),
            ("mxfp8_e5m2", &["tensor<16x64xf8E5M2>"]),
            (
                "fp8_e4m3",
                &["tensor<16x64xf8E4M3FN>", "arith.constant dense<"],
            ),
            (
                "fp8_e4m3_channel",
                &["tensor<16x64xf8E4M3FN>", "tensor<16xf32>"],
            ),
            (
                "int4_g32",
                &["tensor<16x64xi4>", "tensor<16x2xf32>", "arith.sitofp"],
            ),
            ("int8_channel", &["tensor<16x64xi8>", "arith.sitofp"]),
            (
                "uint4_g128",
                &["tensor<16x128xi4>", "arith.uitofp", "arith.subf"],
            ),
            ("mxint8", &["tensor<16x64xi8>"]),
            ("nvint4", &["tensor<16x64xi4>", "tensor<16x4xf8E4M3FN>"]),
            ("nvfp4_ggml", &["tensor<16x64xf4E2M1FN>"]),
        ];
        let n = 16;
        for (fmt, want) in cases {
            let k = if fmt.ends_with("g128") { 128 } else { 64 };
            let m = quantized_module(fmt, n, k, &weights(n, k));
            let text = export(fmt, &m);
            for w in *want {
                assert!(text.contains(w), "{fmt}: no {w} in\n{text}");
            }
            assert!(text.contains("linalg.generic"), "{fmt}");
        }
    }

    #[test]
    fn upstream_dequantized_weights_are_bit_exact_when_run() {
        // The formats whose element and scale types mlir-opt can lower on a CPU.
        let n = 16;
        for fmt in [
            "int4_g128",
            "int8_channel",
            "mxfp4",
            "uint4_g128",
            "mxint8",
            "int4_g32",
        ] {
            let k = if fmt.ends_with("g128") { 128 } else { 64 };
            let w = weights(n, k);
            let mut m = quantized_module(fmt, n, k, &w);
            let x = ft(&[2, 3, k], 51, -2.0, 2.0);
            // The weights bit for bit, the products within 1e-6 of their scale.
            let mut only_w = m.clone();
            {
                let f = &mut only_w.funcs[0];
                f.ret = vec![f.ret[1]];
                f.result_types = vec![f.result_types[1].clone()];
            }
            check_numerics(
                &format!("{fmt} weights"),
                &only_w,
                vec![x.clone()],
                Tol::Exact,
            );
            {
                let f = &mut m.funcs[0];
                f.ret = vec![f.ret[0]];
                f.result_types = vec![f.result_types[0].clone()];
            }
            check_numerics(&format!("{fmt} product"), &m, vec![x], Tol::Rel(1e-6));
        }
    }

    #[test]
    fn upstream_more_ops_compute_what_the_interpreter_computes() {
        let x = || ft(&[4, 8], 13, -3.0, 3.0);
        for op in [
            "nn.sign",
            "nn.softplus",
            "nn.leaky_relu {alpha = 0.1}",
            "nn.elu",
            "nn.selu",
            "nn.celu {alpha = 2.0}",
            "nn.hard_sigmoid",
            "nn.hard_swish",
            "nn.softsign",
            "nn.mish",
            "nn.thresholded_relu {alpha = 0.5}",
            "nn.swish",
        ] {
            check_numerics(op, &one_op(op, F, F), vec![x()], Tol::Rel(1e-6));
        }
        check_numerics(
            "nn.mod",
            &two_op("nn.mod", F, F, F),
            vec![x(), ft(&[4, 8], 14, 0.5, 2.0)],
            Tol::Rel(1e-6),
        );
        check_numerics(
            "nn.mod {fmod = 1}",
            &two_op("nn.mod {fmod = 1}", F, F, F),
            vec![x(), ft(&[4, 8], 15, -2.0, -0.5)],
            Tol::Rel(1e-6),
        );
        let m = parse(
            "func.func @main(%x: tensor<2x3x4xf32>, %s: tensor<3xf32>, %b: tensor<3xf32>, %mu: tensor<3xf32>, %v: tensor<3xf32>, %i: tensor<2x3x2xi64>) -> (tensor<2x3x4xf32>, tensor<2x4xf32>, tensor<2x3x4xf32>, tensor<2x6x4xf32>, tensor<2x5x7xf32>, tensor<2x3x2xf32>, tensor<2x3x4xf32>) {
  %bn = nn.batch_norm %x, %s, %b, %mu, %v {epsilon = 1.0e-3} : (tensor<2x3x4xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>, tensor<3xf32>) -> tensor<2x3x4xf32>
  %am = nn.arg_max %x {axis = 1, keepdims = 0} : (tensor<2x3x4xf32>) -> tensor<2x4xi64>
  %amf = nn.cast %am : (tensor<2x4xi64>) -> tensor<2x4xf32>
  %k = qc.constant {value = dense<1>} : () -> tensor<i64>
  %tr = nn.trilu %x, %k {upper = 0} : (tensor<2x3x4xf32>, tensor<i64>) -> tensor<2x3x4xf32>
  %reps = qc.constant {value = dense<[1, 2, 1]>} : () -> tensor<3xi64>
  %tl = nn.tile %x, %reps : (tensor<2x3x4xf32>, tensor<3xi64>) -> tensor<2x6x4xf32>
  %pads = qc.constant {value = dense<[0, 1, 2, 0, 1, 1]>} : () -> tensor<6xi64>
  %pv = qc.constant {value = dense<7.5>} : () -> tensor<f32>
  %pd = nn.pad %x, %pads, %pv : (tensor<2x3x4xf32>, tensor<6xi64>, tensor<f32>) -> tensor<2x5x7xf32>
  %ge = nn.gather_elements %x, %i {axis = 2} : (tensor<2x3x4xf32>, tensor<2x3x2xi64>) -> tensor<2x3x2xf32>
  %ax = qc.constant {value = dense<2>} : () -> tensor<i64>
  %cs = nn.cum_sum %x, %ax {exclusive = 1, reverse = 1} : (tensor<2x3x4xf32>, tensor<i64>) -> tensor<2x3x4xf32>
  return %bn, %amf, %tr, %tl, %pd, %ge, %cs : tensor<2x3x4xf32>, tensor<2x4xf32>, tensor<2x3x4xf32>, tensor<2x6x4xf32>, tensor<2x5x7xf32>, tensor<2x3x2xf32>, tensor<2x3x4xf32>
}",
        );
        check_numerics(
            "batch_norm, arg_max, trilu, tile, pad, gather_elements, cum_sum",
            &m,
            vec![
                ft(&[2, 3, 4], 16, -2.0, 2.0),
                ft(&[3], 17, 0.5, 1.5),
                ft(&[3], 18, -1.0, 1.0),
                ft(&[3], 19, -0.5, 0.5),
                ft(&[3], 20, 0.5, 2.0),
                it(&[2, 3, 2], vec![0, 3, -1, 2, 1, 1, -4, 0, 2, 3, 1, -2]),
            ],
            Tol::Rel(1e-6),
        );
    }

    /// Negative-step slices, edge / reflect / wrap padding (pads beyond the dimension) and integer
    /// pow (wrapping, exponents beyond 2^32, cast to f32 for the comparison) are exported as
    /// `tensor.extract` and square-and-multiply loops that match the interpreter bit for bit.
    #[test]
    fn upstream_index_ops_and_integer_pow_compute_what_the_interpreter_computes() {
        let m = parse(
            "func.func @main(%x: tensor<3x5xf32>, %b: tensor<12xi64>, %e: tensor<12xi64>) -> (tensor<2x3xf32>, tensor<8x16xf32>, tensor<4x9xf32>, tensor<9x7xf32>, tensor<12xf32>, tensor<12xf32>) {
  %st = qc.constant {value = dense<[-1, 2]>} : () -> tensor<2xi64>
  %en = qc.constant {value = dense<[-100, -9]>} : () -> tensor<2xi64>
  %ax = qc.constant {value = dense<[1, 0]>} : () -> tensor<2xi64>
  %sp = qc.constant {value = dense<[-2, -2]>} : () -> tensor<2xi64>
  %sl = nn.slice %x, %st, %en, %ax, %sp : (tensor<3x5xf32>, tensor<2xi64>, tensor<2xi64>, tensor<2xi64>, tensor<2xi64>) -> tensor<2x3xf32>
  %v = qc.constant {value = dense<0.0>} : () -> tensor<f32>
  %p1 = qc.constant {value = dense<[4, 2, 1, 9]>} : () -> tensor<4xi64>
  %rf = nn.pad %x, %p1, %v {mode = \"reflect\"} : (tensor<3x5xf32>, tensor<4xi64>, tensor<f32>) -> tensor<8x16xf32>
  %p2 = qc.constant {value = dense<[0, 3, 1, 1]>} : () -> tensor<4xi64>
  %ed = nn.pad %x, %p2, %v {mode = \"edge\"} : (tensor<3x5xf32>, tensor<4xi64>, tensor<f32>) -> tensor<4x9xf32>
  %p3 = qc.constant {value = dense<[5, 0, 1, 2]>} : () -> tensor<4xi64>
  %wr = nn.pad %x, %p3, %v {mode = \"wrap\"} : (tensor<3x5xf32>, tensor<4xi64>, tensor<f32>) -> tensor<9x7xf32>
  %pw = nn.pow %b, %e : (tensor<12xi64>, tensor<12xi64>) -> tensor<12xi64>
  %pf = nn.cast %pw : (tensor<12xi64>) -> tensor<12xf32>
  %b32 = nn.cast %b : (tensor<12xi64>) -> tensor<12xi32>
  %p32 = nn.pow %b32, %e : (tensor<12xi32>, tensor<12xi64>) -> tensor<12xi32>
  %pf32 = nn.cast %p32 : (tensor<12xi32>) -> tensor<12xf32>
  return %sl, %rf, %ed, %wr, %pf, %pf32 : tensor<2x3xf32>, tensor<8x16xf32>, tensor<4x9xf32>, tensor<9x7xf32>, tensor<12xf32>, tensor<12xf32>
}",
        );
        let text = check_numerics(
            "negative-step slice, reflect / edge / wrap pad, integer pow",
            &m,
            vec![
                ft(&[3, 5], 40, -2.0, 2.0),
                it(&[12], vec![0, 1, -1, 2, -3, 7, 10, -10, 3, 12345, 2, 5]),
                it(
                    &[12],
                    vec![0, 5, 7, 10, 3, 0, 9, 31, 41, 100, 64, 5_000_000_000],
                ),
            ],
            Tol::Exact,
        );
        assert!(text.contains("tensor.extract"), "{text}");
    }

    #[test]
    fn upstream_window_ops_compute_what_the_interpreter_computes() {
        let m = parse(
            "func.func @main(%x: tensor<2x4x7x6xf32>, %w: tensor<6x2x3x2xf32>, %b: tensor<6xf32>, %wt: tensor<4x3x3x3xf32>) -> (tensor<2x6x3x3xf32>, tensor<2x6x14x12xf32>, tensor<2x4x4x3xf32>, tensor<2x4x4x4xf32>, tensor<2x4x1x1xf32>, tensor<2x4x1x1xf32>, tensor<2x4x7x6xf32>, tensor<2x4x7x6xf32>) {
  %c = nn.conv %x, %w, %b {dilations = [2, 1], group = 2, kernel_shape = [3, 2], pads = [1, 0, 2, 1], strides = [2, 2]} : (tensor<2x4x7x6xf32>, tensor<6x2x3x2xf32>, tensor<6xf32>) -> tensor<2x6x3x3xf32>
  %t = nn.conv_transpose %x, %wt, %b {dilations = [1, 1], group = 2, kernel_shape = [3, 3], output_padding = [1, 0], pads = [1, 0, 1, 1], strides = [2, 2]} : (tensor<2x4x7x6xf32>, tensor<4x3x3x3xf32>, tensor<6xf32>) -> tensor<2x6x14x12xf32>
  %mp = nn.max_pool %x {ceil_mode = 1, dilations = [1, 1], kernel_shape = [2, 3], pads = [0, 1, 0, 0], strides = [2, 2]} : (tensor<2x4x7x6xf32>) -> tensor<2x4x4x3xf32>
  %ap = nn.avg_pool %x {ceil_mode = 1, count_include_pad = 1, dilations = [1, 1], kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]} : (tensor<2x4x7x6xf32>) -> tensor<2x4x4x4xf32>
  %ga = nn.global_avg_pool %x : (tensor<2x4x7x6xf32>) -> tensor<2x4x1x1xf32>
  %gm = nn.global_max_pool %x : (tensor<2x4x7x6xf32>) -> tensor<2x4x1x1xf32>
  %l = nn.lrn %x {alpha = 0.5, beta = 0.6, bias = 2.0, size = 3} : (tensor<2x4x7x6xf32>) -> tensor<2x4x7x6xf32>
  %s = nn.shrink %x {bias = 0.3, lambd = 0.7} : (tensor<2x4x7x6xf32>) -> tensor<2x4x7x6xf32>
  return %c, %t, %mp, %ap, %ga, %gm, %l, %s : tensor<2x6x3x3xf32>, tensor<2x6x14x12xf32>, tensor<2x4x4x3xf32>, tensor<2x4x4x4xf32>, tensor<2x4x1x1xf32>, tensor<2x4x1x1xf32>, tensor<2x4x7x6xf32>, tensor<2x4x7x6xf32>
}",
        );
        let text = check_numerics(
            "conv, conv_transpose, pooling, lrn, shrink",
            &m,
            vec![
                ft(&[2, 4, 7, 6], 21, -2.0, 2.0),
                ft(&[6, 2, 3, 2], 22, -1.0, 1.0),
                ft(&[6], 23, -1.0, 1.0),
                ft(&[4, 3, 3, 3], 24, -1.0, 1.0),
            ],
            Tol::Rel(1e-6),
        );
        // The convolution's input map: strided and dilated window positions of grouped channels.
        assert!(text.contains("d3 * 2 + d6 * 2"), "{text}");
        // f16 tensors: sums in f32, rounded once to f16 (the interpreter rounds its f64 sums).
        let m = parse(
            "func.func @main(%x: tensor<1x2x5x5xf32>, %w: tensor<3x2x3x3xf32>, %b: tensor<3xf32>) -> (tensor<1x3x3x3xf32>, tensor<1x2x2x2xf32>) {
  %xh = nn.cast %x : (tensor<1x2x5x5xf32>) -> tensor<1x2x5x5xf16>
  %wh = nn.cast %w : (tensor<3x2x3x3xf32>) -> tensor<3x2x3x3xf16>
  %bh = nn.cast %b : (tensor<3xf32>) -> tensor<3xf16>
  %c = nn.conv %xh, %wh, %bh {dilations = [1, 1], group = 1, kernel_shape = [3, 3], pads = [0, 0, 0, 0], strides = [1, 1]} : (tensor<1x2x5x5xf16>, tensor<3x2x3x3xf16>, tensor<3xf16>) -> tensor<1x3x3x3xf16>
  %a = nn.avg_pool %xh {dilations = [1, 1], kernel_shape = [2, 2], pads = [0, 0, 0, 0], strides = [2, 2]} : (tensor<1x2x5x5xf16>) -> tensor<1x2x2x2xf16>
  %cf = nn.cast %c : (tensor<1x3x3x3xf16>) -> tensor<1x3x3x3xf32>
  %af = nn.cast %a : (tensor<1x2x2x2xf16>) -> tensor<1x2x2x2xf32>
  return %cf, %af : tensor<1x3x3x3xf32>, tensor<1x2x2x2xf32>
}",
        );
        check_numerics(
            "f16 conv and avg_pool",
            &m,
            vec![
                ft(&[1, 2, 5, 5], 27, -2.0, 2.0),
                ft(&[3, 2, 3, 3], 28, -1.0, 1.0),
                ft(&[3], 29, -1.0, 1.0),
            ],
            Tol::Rel(1e-3),
        );
    }

    #[test]
    fn upstream_linear_quantization_hadamard_and_nll_loss_compute_what_the_interpreter_computes() {
        let m = parse(
            "func.func @main(%x: tensor<2x3x8xf32>, %lp: tensor<3x5x2xf32>, %tg: tensor<3x2xi64>) -> (tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<f32>, tensor<f32>, tensor<2x3x8xf32>, tensor<3x2xf32>, tensor<f32>) {
  %s = qc.constant {value = dense<[0.5, 0.25, 0.125]>} : () -> tensor<3xf32>
  %z = qc.constant {value = dense<[0, 3, -4]>} : () -> tensor<3xi8>
  %q = quant.quantize_linear %x, %s, %z {axis = 1} : (tensor<2x3x8xf32>, tensor<3xf32>, tensor<3xi8>) -> tensor<2x3x8xi8>
  %qf = nn.cast %q : (tensor<2x3x8xi8>) -> tensor<2x3x8xf32>
  %d = quant.dequantize_linear %q, %s, %z {axis = 1} : (tensor<2x3x8xi8>, tensor<3xf32>, tensor<3xi8>) -> tensor<2x3x8xf32>
  %bs = qc.constant {value = dense<[0.1, 0.3, 0.2, 0.05, 1.0, 0.7, 0.4, 0.6, 0.9, 0.15, 0.25, 0.5]>} : () -> tensor<2x3x2xf32>
  %bz = qc.constant {value = dense<[1, 7, 0, 15, 3, 8, 2, 2, 9, 4, 0, 1]>} : () -> tensor<2x3x2xui4>
  %bq = quant.quantize_linear %x, %bs, %bz {axis = 2, block_size = 4} : (tensor<2x3x8xf32>, tensor<2x3x2xf32>, tensor<2x3x2xui4>) -> tensor<2x3x8xui4>
  %bqf = nn.cast %bq : (tensor<2x3x8xui4>) -> tensor<2x3x8xf32>
  %bd = quant.dequantize_linear %bq, %bs, %bz {axis = 2, block_size = 4} : (tensor<2x3x8xui4>, tensor<2x3x2xf32>, tensor<2x3x2xui4>) -> tensor<2x3x8xf32>
  %dq, %ds, %dz = quant.dynamic_quantize_linear %x : (tensor<2x3x8xf32>) -> (tensor<2x3x8xui8>, tensor<f32>, tensor<ui8>)
  %dzf = nn.cast %dz : (tensor<ui8>) -> tensor<f32>
  %h = quant.hadamard %x {block = 8} : (tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %w = qc.constant {value = dense<[1.0, 0.5, 2.0, 1.5, 0.25]>} : () -> tensor<5xf32>
  %ln = nn.nll_loss %lp, %tg, %w {ignore_index = 1, reduction = \"none\"} : (tensor<3x5x2xf32>, tensor<3x2xi64>, tensor<5xf32>) -> tensor<3x2xf32>
  %lm = nn.nll_loss %lp, %tg, %w {ignore_index = 1, reduction = \"mean\"} : (tensor<3x5x2xf32>, tensor<3x2xi64>, tensor<5xf32>) -> tensor<f32>
  return %qf, %d, %bqf, %bd, %ds, %dzf, %h, %ln, %lm : tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<f32>, tensor<f32>, tensor<2x3x8xf32>, tensor<3x2xf32>, tensor<f32>
}",
        );
        let text = check_numerics(
            "quantize_linear, dequantize_linear, dynamic_quantize_linear, hadamard, nll_loss",
            &m,
            vec![
                ft(&[2, 3, 8], 25, -20.0, 20.0),
                ft(&[3, 5, 2], 26, -3.0, 0.0),
                it(&[3, 2], vec![0, 1, 4, 2, 1, 3]),
            ],
            Tol::Exact,
        );
        assert!(text.contains("floordiv 4"), "{text}");
    }

    #[test]
    fn upstream_comparison_catches_a_wrong_module() {
        // mlir-runner runs x + 1 where the interpreter computes x + 2: the outputs must differ.
        let plus = |c: &str| {
            parse(&format!(
                "func.func @main(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {{
  %c = qc.constant {{value = dense<{c}>}} : () -> tensor<f32>
  %y = nn.add %x, %c : (tensor<2x3xf32>, tensor<f32>) -> tensor<2x3xf32>
  return %y : tensor<2x3xf32>
}}"
            ))
        };
        let x = ft(&[2, 3], 12, -1.0, 1.0);
        let text = export("x + 1", &plus("1.0"));
        let want = run_func(&plus("2.0"), "main", vec![x.clone()]).unwrap();
        let got = run_upstream(&text, std::slice::from_ref(&x), &want);
        assert_eq!(got[0].len(), 6);
        for (k, &bits) in got[0].iter().enumerate() {
            let (g, w) = (f32::from_bits(bits) as f64, want[0].data.f(k));
            assert!((w - g - 1.0).abs() < 1e-6, "element {k}: {g} vs {w}");
        }
    }

    #[test]
    fn upstream_minifloats_without_a_builtin_type_decode_through_a_table() {
        // e2m2 (IEEE-style, 5 bits) has no MLIR type: its codes are i5 bit patterns and a table of values.
        use qc_ir::quant::{Encoding, QuantType, ScaleRule, ScaleType, Scheme};
        let fmt = QuantType::new(
            Encoding::from_name("e2m2").unwrap(),
            Scheme::Group { size: 16, axis: -1 },
            ScaleType::F32,
            ScaleRule::Amax,
        );
        let (n, k) = (8usize, 32usize);
        let w = weights(n, k);
        let q = qc_quant::tensor::quantize(&w, &[n, k], &fmt, &Default::default()).unwrap();
        let blob = qc_quant::blob::to_blob(&q).unwrap();
        let hex: String = [16u8, 0, 0, 0]
            .iter()
            .chain(&blob)
            .map(|b| format!("{b:02X}"))
            .collect();
        let ty = format!(
            "tensor<{n}x{k}x{}>",
            qc_ir::types::ElemType::Quant(fmt.clone().into())
        );
        let m = parse(&format!(
            "func.func @main(%x: tensor<1xf32>) -> tensor<{n}x{k}xf32> {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> {ty}
  %d = quant.dequantize %w : ({ty}) -> tensor<{n}x{k}xf32>
  return %d : tensor<{n}x{k}xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{hex}\" }} }} #-}}"
        ));
        let text = check_numerics("e2m2 weights", &m, vec![ft(&[1], 1, 0.0, 1.0)], Tol::Exact);
        assert!(
            text.contains("xi5>") && text.contains("tensor<32xf32>"),
            "{text}"
        );
    }

    #[test]
    fn upstream_export_of_what_it_cannot_express_is_a_located_diagnostic() {
        // Activation quantization (here after an exported op: the location is the refused op's).
        let text = "func.func @main(%x: tensor<4x32xf32>) -> tensor<4x32xf32> {
  %a = nn.add %x, %x : (tensor<4x32xf32>, tensor<4x32xf32>) -> tensor<4x32xf32>
  %q = quant.quantize %a : (tensor<4x32xf32>) -> tensor<4x32x!quant.nvfp4>
  %y = quant.dequantize %q : (tensor<4x32x!quant.nvfp4>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}";
        let e = export_module(&parse(text), "main", &ShapeBindings::new()).unwrap_err();
        assert!(e.message.contains("cannot export quant.quantize"), "{e}");
        assert_eq!(e.loc.to_string(), "case:3:3");
        let text = "func.func @main(%x: tensor<4x32xf32>) -> tensor<4x32xf32> {
  %q = quant.quantize %x : (tensor<4x32xf32>) -> tensor<4x32x!quant.mxfp4>
  %y = quant.dequantize %q : (tensor<4x32x!quant.mxfp4>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}";
        let e = export_module(&parse(text), "main", &ShapeBindings::new()).unwrap_err();
        assert!(e.message.contains("cannot export quant.quantize"), "{e}");
        assert_eq!(e.loc.to_string(), "case:2:3");
        // Symbolic shapes need bindings; with them the export is static.
        let text = "func.func @main(%x: tensor<[n]x4xf32>) -> tensor<[n]x4xf32> {
  %y = nn.tanh %x : (tensor<[n]x4xf32>) -> tensor<[n]x4xf32>
  return %y : tensor<[n]x4xf32>
}";
        let m = parse(text);
        assert!(export_module(&m, "main", &ShapeBindings::new()).is_err());
        let mut b = ShapeBindings::new();
        b.add("n=3").unwrap();
        let out = export_module(&m, "main", &b).unwrap();
        assert!(out.contains("tensor<3x4xf32>"), "{out}");
        // MLIR's parser and verifier reject bad text, with locations.
        let e = verify_upstream_text(
            "func.func @f(%a: tensor<2xf32>) -> tensor<3xf32> {\n  return %a : tensor<2xf32>\n}",
        )
        .unwrap_err();
        assert!(e.to_string().contains("loc("), "{e}");
    }
}

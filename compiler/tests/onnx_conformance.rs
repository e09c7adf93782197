//! ONNX conformance: the ONNX backend node tests and the model tests the onnx wheel ships, run through
//! qc's library (load_model, import_model, verify_module, run_func), checked against a ratcheting
//! allow-list.
//!
//! The data comes from tests/onnx-conformance/gen_data.py (run here; it caches its output under this
//! test's target folder, or under $QC_ONNX_TESTS). Each test passes when qc loads, imports and verifies
//! the model, runs it on the test's inputs and every output has the expected shape, element type and
//! values: within ONNX's tolerances (|got - want| <= atol + rtol * |want|, NaN where NaN is expected) or,
//! for the QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear / Cast / CastLike families, bit for
//! bit.
//!
//! The manifest, tests/onnx-conformance/manifest.txt, lists every passing test (`suite/name`, sorted).
//! This test fails when a listed test fails (a regression), when an unlisted test passes (update the
//! manifest: the ratchet only moves forward), and when anything panics. To rewrite the manifest and
//! docs/CONFORMANCE.md from a run:
//!
//!     QC_CONFORMANCE_BLESS=1 cargo test -p qc --test onnx_conformance
//!
//! Other knobs: QC_CONFORMANCE_FILTER=substring runs only matching tests (no manifest check);
//! QC_CONFORMANCE_JOBS=n sets the worker threads; PYTHON names the interpreter for the data script.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use qc::import::onnx::convert::{elem_type, import_model};
use qc::import::onnx::load::load_model;
use qc::import::onnx::model::DataType;
use qc::import::onnx::proto::TensorProto;
use qc_ir::types::ElemType;
use qc_runtime::exec::run_func;
use qc_runtime::interp::{Data, Tensor};

const MANIFEST: &str = "tests/onnx-conformance/manifest.txt";
const DOC: &str = "docs/CONFORMANCE.md";
const GEN: &str = "tests/onnx-conformance/gen_data.py";
/// Suites, in report order.
const SUITES: [&str; 5] = [
    "node",
    "light",
    "pytorch-converted",
    "pytorch-operator",
    "simple",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the compiler crate is inside the workspace")
        .to_path_buf()
}

/// One row of index.tsv (see gen_data.py's COLUMNS).
#[derive(Clone, Debug)]
struct Case {
    suite: String,
    name: String,
    opset: String,
    run_opset: String,
    tensor_only: bool,
    quant_cast: bool,
    exact: bool,
    rtol: f64,
    atol: f64,
    ops: Vec<String>,
}

impl Case {
    fn id(&self) -> String {
        format!("{}/{}", self.suite, self.name)
    }
    fn converted(&self) -> bool {
        self.opset != self.run_opset
    }
}

#[derive(Clone, Debug)]
enum Outcome {
    Pass,
    /// A stage (load, import, verify, data, run, compare) and its message.
    Fail(&'static str, String),
    Panic(String),
}

struct Result1 {
    case: Case,
    outcome: Outcome,
    time: Duration,
}

/// Generates (or reuses) the test data; returns its folder.
fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("QC_ONNX_TESTS") {
        let d = PathBuf::from(d);
        if d.join("index.tsv").is_file() {
            return d;
        }
    }
    let out = std::env::var_os("QC_ONNX_TESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-tests"));
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = std::process::Command::new(&py)
        .arg(root().join(GEN))
        .arg("--out")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() && out.join("index.tsv").is_file() => out,
        Ok(s) => panic!(
            "the ONNX conformance data is missing: `{py} {GEN} --out {}` failed ({s}). It needs Python \
             with onnx and numpy: run `bash .ci/install-python.sh`, or point QC_ONNX_TESTS at a folder \
             the script wrote.",
            out.display()
        ),
        Err(e) => panic!(
            "the ONNX conformance data is missing and `{py}` cannot run ({e}). Install Python with onnx \
             and numpy (`bash .ci/install-python.sh`), or point QC_ONNX_TESTS at a folder that \
             {GEN} wrote."
        ),
    }
}

fn read_index(dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("index.tsv")).expect("index.tsv is readable");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            assert_eq!(c.len(), 10, "index.tsv row has 10 columns: {l}");
            Case {
                suite: c[0].into(),
                name: c[1].into(),
                opset: c[2].into(),
                run_opset: c[3].into(),
                tensor_only: c[4] == "1",
                quant_cast: c[5] == "1",
                exact: c[6] == "1",
                rtol: c[7].parse().expect("rtol"),
                atol: c[8].parse().expect("atol"),
                ops: c[9].split(',').map(String::from).collect(),
            }
        })
        .collect()
}

/// The value of every element of an ONNX tensor message, in a form the interpreter holds.
fn decode(t: &TensorProto) -> Result<Tensor, String> {
    let dt = DataType::from_code(t.data_type)
        .ok_or_else(|| format!("unknown data type {}", t.data_type))?;
    let elem = elem_type(dt)?;
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err("external data in a test tensor".into());
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let bits = dt.bits().ok_or("string tensors are not supported")? as usize;
    // Element codes (integer types: the value's bits; floats: handled below).
    let raw: Option<&[u8]> = t.raw_data.as_deref();
    let codes = |t: &TensorProto| -> Result<Vec<u64>, String> {
        if let Some(r) = raw {
            let need = (n * bits).div_ceil(8);
            if r.len() < need {
                return Err(format!("raw_data holds {} bytes, {need} needed", r.len()));
            }
            return Ok(match bits {
                2 | 4 => (0..n)
                    .map(|i| ((r[i * bits / 8] >> (i * bits % 8)) as u64) & ((1 << bits) - 1))
                    .collect(),
                6 => (0..n)
                    .map(|i| {
                        let b = i * 6;
                        let w = r[b / 8] as u64 | (*r.get(b / 8 + 1).unwrap_or(&0) as u64) << 8;
                        (w >> (b % 8)) & 0x3f
                    })
                    .collect(),
                _ => {
                    let s = bits / 8;
                    r.chunks_exact(s)
                        .take(n)
                        .map(|c| {
                            let mut b = [0u8; 8];
                            b[..s].copy_from_slice(c);
                            u64::from_le_bytes(b)
                        })
                        .collect()
                }
            });
        }
        let v: Vec<u64> = match dt {
            DataType::Int64 => t.int64_data.iter().map(|&x| x as u64).collect(),
            DataType::Uint32 | DataType::Uint64 => t.uint64_data.clone(),
            _ if bits == 2 || bits == 4 => {
                let per = 8 / bits;
                (0..n)
                    .map(|i| {
                        let byte = *t.int32_data.get(i / per).unwrap_or(&0) as u64;
                        (byte >> (i % per * bits)) & ((1 << bits) - 1)
                    })
                    .collect()
            }
            _ => t
                .int32_data
                .iter()
                .map(|&x| {
                    (x as u32 as u64)
                        & if bits >= 64 {
                            u64::MAX
                        } else {
                            (1 << bits) - 1
                        }
                })
                .collect(),
        };
        if v.len() != n {
            return Err(format!("{} values for {n} elements", v.len()));
        }
        Ok(v)
    };
    let sext = |c: u64, b: usize| -> i64 {
        if b >= 64 {
            c as i64
        } else {
            ((c << (64 - b)) as i64) >> (64 - b)
        }
    };
    let data = match (&elem, dt) {
        (_, DataType::Float) if raw.is_none() => {
            Data::F(t.float_data.iter().map(|&x| x as f64).collect())
        }
        (_, DataType::Double) if raw.is_none() => Data::F(t.double_data.clone()),
        (_, DataType::Float) => Data::F(
            codes(t)?
                .into_iter()
                .map(|c| f32::from_bits(c as u32) as f64)
                .collect(),
        ),
        (_, DataType::Double) => Data::F(codes(t)?.into_iter().map(f64::from_bits).collect()),
        (_, DataType::Float16) => Data::F(
            codes(t)?
                .into_iter()
                .map(|c| half::f16::from_bits(c as u16).to_f64())
                .collect(),
        ),
        (_, DataType::Bfloat16) => Data::F(
            codes(t)?
                .into_iter()
                .map(|c| half::bf16::from_bits(c as u16).to_f64())
                .collect(),
        ),
        (ElemType::Int { bits: 1, .. }, _) => {
            Data::I(codes(t)?.into_iter().map(|c| (c != 0) as i64).collect())
        }
        (ElemType::Int { bits: b, unsigned }, _) => {
            let b = *b as usize;
            Data::I(
                codes(t)?
                    .into_iter()
                    .map(|c| if *unsigned { c as i64 } else { sext(c, b) })
                    .collect(),
            )
        }
        // Minifloats (FP8, FP4, FP6, E8M0) are held as their codes, as the interpreter holds them.
        (ElemType::Raw(_), _) => Data::I(codes(t)?.into_iter().map(|c| c as i64).collect()),
        (e, _) => return Err(format!("{e} test tensors are not supported")),
    };
    if data.len() != n {
        return Err(format!("{} values for {n} elements", data.len()));
    }
    Ok(Tensor { shape, elem, data })
}

fn read_pb(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = TensorProto::decode(&bytes[..])
        .map_err(|e| format!("{} is not a TensorProto: {e}", path.display()))?;
    decode(&t).map_err(|e| format!("{}: {e}", path.display()))
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    (0..)
        .map(|i| dir.join(format!("{prefix}_{i}.pb")))
        .take_while(|p| p.is_file())
        .collect()
}

/// Whether `got` holds `want`'s values: bit for bit when `exact` (NaN matches any NaN), else within
/// tolerances as numpy.testing.assert_allclose (equal_nan, infinities equal).
fn compare(got: &Tensor, want: &Tensor, case: &Case) -> Result<(), String> {
    if got.shape != want.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, want.shape));
    }
    if got.elem != want.elem {
        return Err(format!("element type {}, expected {}", got.elem, want.elem));
    }
    let rtol = if want.elem == ElemType::BF16 {
        case.rtol.max(2f64.powi(-6))
    } else {
        case.rtol
    };
    let exact = case.exact;
    // Minifloat codes: equal, or both NaN (ONNX's readers compare values, and NaN has several codes).
    let codec = match want.elem {
        ElemType::Raw(enc) => Some(qc_quant::Codec::new(enc).map_err(|e| e.to_string())?),
        _ => None,
    };
    let mut bad = 0usize;
    let mut first = None;
    for i in 0..want.len() {
        let ok = match (&got.data, &want.data) {
            (Data::I(g), Data::I(w)) => {
                g[i] == w[i]
                    || codec.as_ref().is_some_and(|c| {
                        c.decode(g[i] as u32).is_nan() && c.decode(w[i] as u32).is_nan()
                    })
            }
            _ => {
                let (g, w) = (got.data.f(i), want.data.f(i));
                if w.is_nan() || g.is_nan() {
                    w.is_nan() && g.is_nan()
                } else if exact {
                    g.to_bits() == w.to_bits()
                } else if w.is_infinite() || g.is_infinite() {
                    g == w
                } else {
                    (g - w).abs() <= case.atol + rtol * w.abs()
                }
            }
        };
        if !ok {
            bad += 1;
            first.get_or_insert(i);
        }
    }
    match first {
        None => Ok(()),
        Some(i) => Err(format!(
            "{bad} of {} values differ{}; first at {i}: {} expected {}",
            want.len(),
            if exact { " (bit-exact)" } else { "" },
            got.data.f(i),
            want.data.f(i)
        )),
    }
}

fn run_case(dir: &Path, case: &Case) -> Outcome {
    let tdir = dir.join(&case.suite).join(&case.name);
    let model = match load_model(&tdir.join("model.onnx")) {
        Ok(m) => m,
        Err(d) => return Outcome::Fail("load", d.message),
    };
    let m = match import_model(&model) {
        Ok(m) => m,
        Err(d) => return Outcome::Fail("import", d.message),
    };
    if let Err(ds) = qc_ir::verify_module(&m) {
        let msg = ds.0.first().map(|d| d.message.clone()).unwrap_or_default();
        return Outcome::Fail("verify", msg);
    }
    let f = m.func("main").expect("the importer makes @main");
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&tdir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
                })
                .collect()
        })
        .unwrap_or_default();
    sets.sort();
    if sets.is_empty() {
        return Outcome::Fail("data", "no test_data_set folder".into());
    }
    for set in &sets {
        let inputs: Vec<Tensor> = match numbered(set, "input")
            .iter()
            .map(|p| read_pb(p))
            .collect::<Result<_, _>>()
        {
            Ok(v) => v,
            Err(e) => return Outcome::Fail("data", e),
        };
        let wants: Vec<Tensor> = match numbered(set, "output")
            .iter()
            .map(|p| read_pb(p))
            .collect::<Result<_, _>>()
        {
            Ok(v) => v,
            Err(e) => return Outcome::Fail("data", e),
        };
        if inputs.len() != f.args.len() {
            return Outcome::Fail(
                "data",
                format!(
                    "the test gives {} inputs, the function takes {}",
                    inputs.len(),
                    f.args.len()
                ),
            );
        }
        let gots = match run_func(&m, "main", inputs) {
            Ok(v) => v,
            Err(d) => return Outcome::Fail("run", d.message),
        };
        if gots.len() != wants.len() {
            return Outcome::Fail(
                "compare",
                format!("{} outputs, expected {}", gots.len(), wants.len()),
            );
        }
        for (i, (g, w)) in gots.iter().zip(&wants).enumerate() {
            if let Err(e) = compare(g, w, case) {
                return Outcome::Fail("compare", format!("output {i}: {e}"));
            }
        }
    }
    Outcome::Pass
}

/// A short failure category for the report: the stage and the gist of the message (types, names and
/// numbers left out, so that like failures group together).
fn category(stage: &str, msg: &str) -> String {
    let quoted = |key: &str| {
        msg.find(key).and_then(|i| {
            let rest = &msg[i + key.len()..];
            rest.find(['\'', '"']).map(|j| rest[..j].to_string())
        })
    };
    if msg.contains("unsupported opset version") {
        return format!("{stage}: opset outside 13..24 (onnx.version_converter could not convert)");
    }
    if let Some(op) = quoted("operator '") {
        return format!("{stage}: operator not supported: {op}");
    }
    if msg.contains("ai.onnx.ml domain") {
        return format!("{stage}: operator domain not supported: ai.onnx.ml");
    }
    if let Some(d) = quoted("in the operator domain \"") {
        return format!("{stage}: operator domain not supported: {d}");
    }
    if msg.contains("graph attributes") {
        return format!("{stage}: control flow (graph attributes)");
    }
    if ["sequence type", "optional type", "map type"]
        .iter()
        .any(|k| msg.contains(k))
    {
        return format!("{stage}: sequence, optional or map values");
    }
    if stage == "compare" {
        if msg.contains("element type") {
            return "compare: wrong element type".into();
        }
        if msg.contains("shape") {
            return "compare: wrong shape".into();
        }
        return "compare: values outside tolerance".into();
    }
    // Drop types (tensor<...>), quoted names and numbers.
    let mut gist = String::new();
    let mut rest = msg;
    while let Some(i) = rest.find("tensor<") {
        gist.push_str(&rest[..i]);
        gist.push('T');
        let tail = &rest[i..];
        rest = tail.find('>').map_or("", |j| &tail[j + 1..]);
    }
    gist.push_str(rest);
    let gist: String = gist
        .split(['\'', '"'])
        .enumerate()
        .map(|(i, p)| if i % 2 == 1 { "…" } else { p })
        .collect::<Vec<_>>()
        .join("")
        .chars()
        .map(|c| if c.is_ascii_digit() { 'N' } else { c })
        .collect();
    let mut gist = gist.replace("NN", "N");
    while gist.contains("NN") {
        gist = gist.replace("NN", "N");
    }
    format!(
        "{stage}: {}",
        gist.chars().take(90).collect::<String>().trim()
    )
}

fn run_all(dir: &Path, cases: &[Case]) -> Vec<Result1> {
    let jobs = std::env::var("QC_CONFORMANCE_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    // Slow tests first, so that the workers finish together.
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| (cases[i].suite != "light", i));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result1>>> = Mutex::new((0..cases.len()).map(|_| None).collect());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let case = &cases[i];
                let t0 = Instant::now();
                let outcome = match catch_unwind(AssertUnwindSafe(|| run_case(dir, case))) {
                    Ok(o) => o,
                    Err(p) => Outcome::Panic(
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into()),
                    ),
                };
                let r = Result1 {
                    case: case.clone(),
                    outcome,
                    time: t0.elapsed(),
                };
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    std::panic::set_hook(hook);
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every case ran"))
        .collect()
}

fn pct(a: usize, b: usize) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * a as f64 / b as f64)
    }
}

fn onnx_version(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("STAMP"))
        .ok()
        .and_then(|s| s.split_whitespace().last().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// docs/CONFORMANCE.md from a run.
fn report(results: &[Result1], onnx: &str) -> String {
    let pass = |r: &Result1| matches!(r.outcome, Outcome::Pass);
    let mut s = String::new();
    let _ = writeln!(s, "# ONNX conformance\n");
    let _ = writeln!(
        s,
        "Generated by `QC_CONFORMANCE_BLESS=1 cargo test -p qc --test onnx_conformance` \
         (compiler/tests/onnx_conformance.rs) from a run over the test data of onnx {onnx}; do not edit. \
         The passing tests are listed in tests/onnx-conformance/manifest.txt, which CI holds to: a listed \
         test that fails, or an unlisted test that passes, fails `cargo test`.\n"
    );
    let _ = writeln!(
        s,
        "A test passes when qc loads, imports and verifies the model, runs it in the reference \
         interpreter on the test's inputs, and every output has the expected shape, element type and \
         values: within ONNX's tolerances (|got - want| <= atol + rtol * |want|; rtol 1e-3, atol 1e-7 \
         unless the test sets others; NaN where NaN is expected) or, for the QuantizeLinear, \
         DequantizeLinear, DynamicQuantizeLinear, Cast and CastLike tests, bit for bit.\n"
    );
    let _ = writeln!(
        s,
        "qc imports the default domain at opsets 13 to 24. ONNX generates each node test at the \
         newest version of its operator (up to 28) and ships its model tests at opsets 6 to 12, so the \
         harness converts a model outside that range with ONNX's own `onnx.version_converter` (to 24 or \
         13) when the converter can; the expected outputs are ONNX's, unchanged. Tests the converter \
         cannot convert run as shipped and the loader rejects them.\n"
    );

    let node: Vec<&Result1> = results.iter().filter(|r| r.case.suite == "node").collect();
    let t_only: Vec<&&Result1> = node.iter().filter(|r| r.case.tensor_only).collect();
    let t_pass = t_only.iter().filter(|r| pass(r)).count();
    let excluded = node.len() - t_only.len();
    let q: Vec<&Result1> = results.iter().filter(|r| r.case.quant_cast).collect();
    let q_pass = q.iter().filter(|r| pass(r)).count();
    let light: Vec<&Result1> = results.iter().filter(|r| r.case.suite == "light").collect();
    let l_pass = light.iter().filter(|r| pass(r)).count();
    let native = |rs: &[&&Result1]| -> (usize, usize) {
        let n: Vec<_> = rs.iter().filter(|r| !r.case.converted()).collect();
        (n.iter().filter(|r| pass(r)).count(), n.len())
    };
    let (np, nn) = native(&t_only);

    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(s, "| target | passing | of | share |");
    let _ = writeln!(s, "|---|---|---|---|");
    let _ = writeln!(
        s,
        "| tensor-only node tests (goal: 60%) | {t_pass} | {} | {} |",
        t_only.len(),
        pct(t_pass, t_only.len())
    );
    let _ = writeln!(
        s,
        "| tensor-only node tests run at the opset ONNX generated them (not converted) | {np} | {nn} | {} |",
        pct(np, nn)
    );
    let _ = writeln!(
        s,
        "| QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear / Cast / CastLike tests on FP8, FP4, E8M0 or INT4, bit-exact (goal: all) | {q_pass} | {} | {} |",
        q.len(),
        pct(q_pass, q.len())
    );
    let _ = writeln!(
        s,
        "| light models within ONNX's tolerances (goal: all) | {l_pass} | {} | {} |\n",
        light.len(),
        pct(l_pass, light.len())
    );
    let _ = writeln!(
        s,
        "Tensor-only node tests are those whose graph inputs and outputs are all tensors of a non-string \
         type; the other {excluded} node tests (sequences, optionals, maps, strings) are left out of that \
         denominator. They still run, and count in the table below.\n"
    );

    let _ = writeln!(s, "## By suite\n");
    let _ = writeln!(
        s,
        "| suite | tests | passing | tensor-only | tensor-only passing | share | converted from another opset |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for suite in SUITES {
        let rs: Vec<&Result1> = results.iter().filter(|r| r.case.suite == suite).collect();
        let p = rs.iter().filter(|r| pass(r)).count();
        let t: Vec<_> = rs.iter().filter(|r| r.case.tensor_only).collect();
        let tp = t.iter().filter(|r| pass(r)).count();
        let conv = rs.iter().filter(|r| r.case.converted()).count();
        let _ = writeln!(
            s,
            "| {suite} | {} | {p} | {} | {tp} | {} | {conv} |",
            rs.len(),
            t.len(),
            pct(tp, t.len())
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Light models\n");
    let _ = writeln!(s, "| model | opset shipped → run | rtol | result |");
    let _ = writeln!(s, "|---|---|---|---|");
    for r in &light {
        let _ = writeln!(
            s,
            "| {} | {} → {} | {} | {} |",
            r.case.name,
            r.case.opset,
            r.case.run_opset,
            r.case.rtol,
            outcome_text(&r.outcome)
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(
        s,
        "## Quantize, dequantize and cast tests on FP8, FP4, E8M0, INT4\n"
    );
    let _ = writeln!(s, "| test | opset shipped → run | result |");
    let _ = writeln!(s, "|---|---|---|");
    for r in &q {
        let _ = writeln!(
            s,
            "| {} | {} → {} | {} |",
            r.case.name,
            r.case.opset,
            r.case.run_opset,
            outcome_text(&r.outcome)
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Failures by cause\n");
    let _ = writeln!(
        s,
        "All suites; one cause per failing test (its first problem).\n"
    );
    let mut cats: BTreeMap<String, usize> = BTreeMap::new();
    for r in results {
        match &r.outcome {
            Outcome::Pass => {}
            Outcome::Fail(stage, msg) => *cats.entry(category(stage, msg)).or_default() += 1,
            Outcome::Panic(_) => *cats.entry("panic".into()).or_default() += 1,
        }
    }
    let mut cats: Vec<(String, usize)> = cats.into_iter().collect();
    cats.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let _ = writeln!(s, "| cause | tests |");
    let _ = writeln!(s, "|---|---|");
    for (c, n) in &cats {
        let _ = writeln!(s, "| {} | {n} |", c.replace('|', "\\|"));
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "## Node tests by operator\n");
    let _ = writeln!(
        s,
        "Tensor-only node tests, grouped by the operators of the model ONNX generates (an `_expanded` \
         test counts under its operator's name).\n"
    );
    let mut by_op: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &t_only {
        let key = if r.case.name.ends_with("_expanded") || r.case.ops.len() != 1 {
            // Expanded function bodies and multi-op graphs: the test's name names the operator.
            r.case.ops.join("+")
        } else {
            r.case.ops[0].clone()
        };
        let key = if key.contains('+') {
            "(several operators)".to_string()
        } else {
            key
        };
        let e = by_op.entry(key).or_default();
        e.1 += 1;
        if pass(r) {
            e.0 += 1;
        }
    }
    let _ = writeln!(s, "| operator | passing | tests |");
    let _ = writeln!(s, "|---|---|---|");
    for (op, (p, n)) in &by_op {
        let _ = writeln!(s, "| {op} | {p} | {n} |");
    }
    s
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Pass => "pass".into(),
        Outcome::Fail(stage, msg) => {
            let m: String = msg.chars().take(120).collect();
            format!("{stage}: {}", m.replace('|', "\\|"))
        }
        Outcome::Panic(m) => format!("PANIC: {}", m.replace('|', "\\|")),
    }
}

#[test]
fn onnx_conformance() {
    let dir = data_dir();
    let mut cases = read_index(&dir);
    let filter = std::env::var("QC_CONFORMANCE_FILTER").ok();
    if let Some(f) = &filter {
        cases.retain(|c| c.id().contains(f.as_str()));
    }
    let t0 = Instant::now();
    let results = run_all(&dir, &cases);
    let elapsed = t0.elapsed();

    // A log of every test, for looking into failures.
    let mut log = String::new();
    for r in &results {
        let _ = writeln!(
            log,
            "{}\t{:.3}s\t{}",
            r.case.id(),
            r.time.as_secs_f64(),
            outcome_text(&r.outcome)
        );
    }
    let log_path = dir.join("results.tsv");
    let _ = std::fs::write(&log_path, &log);

    let passing: BTreeSet<String> = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Pass))
        .map(|r| r.case.id())
        .collect();
    let mut slow: Vec<&Result1> = results.iter().collect();
    slow.sort_by_key(|r| std::cmp::Reverse(r.time));
    println!(
        "onnx conformance: {} of {} tests pass in {:.1}s (log: {})",
        passing.len(),
        results.len(),
        elapsed.as_secs_f64(),
        log_path.display()
    );
    for r in slow.iter().take(8) {
        println!("  slow: {} {:.2}s", r.case.id(), r.time.as_secs_f64());
    }

    let panics: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Panic(m) => Some(format!("{}: {m}", r.case.id())),
            _ => None,
        })
        .collect();

    let root = root();
    let bless = std::env::var_os("QC_CONFORMANCE_BLESS").is_some();
    if bless && filter.is_none() {
        let onnx = onnx_version(&dir);
        let mut manifest = format!(
            "# ONNX conformance: every passing test (suite/name), sorted. Written by\n\
             # QC_CONFORMANCE_BLESS=1 cargo test -p qc --test onnx_conformance; data from onnx {onnx}.\n"
        );
        for id in &passing {
            manifest.push_str(id);
            manifest.push('\n');
        }
        std::fs::write(root.join(MANIFEST), manifest).expect("write the manifest");
        std::fs::write(root.join(DOC), report(&results, &onnx)).expect("write the report");
        println!("wrote {MANIFEST} and {DOC}");
    }
    assert!(
        panics.is_empty(),
        "{} tests panicked (a panic is a bug: unsupported input must be a diagnostic):\n{}",
        panics.len(),
        panics.join("\n")
    );
    if filter.is_some() || bless {
        return;
    }

    let text = std::fs::read_to_string(root.join(MANIFEST)).unwrap_or_default();
    let listed: BTreeSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if let Some(v) = text
        .lines()
        .next()
        .into_iter()
        .chain(text.lines().nth(1))
        .find_map(|l| l.split("data from onnx ").nth(1))
    {
        let v = v.trim_end_matches('.');
        let have = onnx_version(&dir);
        assert_eq!(
            v, have,
            "the manifest was blessed with onnx {v} but the test data comes from onnx {have}; install \
             onnx {v} or re-bless (QC_CONFORMANCE_BLESS=1)"
        );
    }
    let by_id: BTreeMap<String, &Result1> = results.iter().map(|r| (r.case.id(), r)).collect();
    let regressions: Vec<String> = listed
        .iter()
        .filter(|id| !passing.contains(*id))
        .map(|id| match by_id.get(id) {
            Some(r) => format!("  {id}: {}", outcome_text(&r.outcome)),
            None => format!("  {id}: not in the test data"),
        })
        .collect();
    let unexpected: Vec<String> = passing
        .iter()
        .filter(|id| !listed.contains(*id))
        .map(|id| format!("  {id}"))
        .collect();
    let mut msg = String::new();
    if !regressions.is_empty() {
        let _ = writeln!(
            msg,
            "{} tests listed in {MANIFEST} fail (regressions):\n{}",
            regressions.len(),
            regressions.join("\n")
        );
    }
    if !unexpected.is_empty() {
        let _ = writeln!(
            msg,
            "{} tests pass that {MANIFEST} does not list; the ratchet moves forward: run \
             `QC_CONFORMANCE_BLESS=1 cargo test -p qc --test onnx_conformance` to add them (and \
             regenerate {DOC}):\n{}",
            unexpected.len(),
            unexpected.join("\n")
        );
    }
    assert!(msg.is_empty(), "{msg}");
}

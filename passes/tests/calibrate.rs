//! Measuring tests of the `calibrate` pass: the recorded statistics equal statistics computed here,
//! independently of the interpreter's observer, from the same activations (rows, amax and ch_amax
//! exactly, the histogram bin by bin, X^T X to 1e-6 relative); they do not depend on the x^T x memory
//! budget; `max_runs`, folders and every kind of bad input behave as the module doc says.

use std::cell::Cell;
use std::path::PathBuf;

use qc_ir::pass::{Pass, PassContext, Progress};
use qc_ir::{parse_module, Module, Registry, Source};
use qc_passes::calib::{self, LayerStats, HIST_BINS};
use qc_passes::calibrate::{hist_bin, Calibrate, XTX_BUDGET};
use qc_runtime::npy::{to_npy_bytes, to_npz_bytes, NpyArray};

const K: usize = 16;
const N: usize = 8;
const ROWS: usize = 5;
const RUNS: usize = 3;

/// splitmix64, then Box-Muller: a seeded standard normal stream.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(qc_nn::dialect());
    r.register(qc_quant::ops::dialect());
    r
}

fn dense(v: &[f32]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("dense<[{}]>", items.join(", "))
}

/// `%x -> matmul(w1) -> relu -> gemm(w2, trans_b = 0)`, and `%img -> conv(k, group 2)`. Activations
/// have a dynamic batch dimension (see tests/passes/calibrate/all-kinds.qir for why).
fn module(reg: &Registry) -> (Module, Vec<f32>) {
    let mut r = Rng(7);
    let w1: Vec<f32> = (0..K * K).map(|_| 0.3 * r.gauss()).collect();
    let w2: Vec<f32> = (0..K * N).map(|_| 0.3 * r.gauss()).collect();
    let k: Vec<f32> = (0..4 * 2 * 3 * 3).map(|_| r.gauss()).collect();
    let text = format!(
        "func.func @main(%x: tensor<?x{K}xf32>, %img: tensor<?x4x5x5xf32>) -> (tensor<?x{N}xf32>, tensor<?x4x3x3xf32>) {{
  %w1 = qc.constant {{value = {}}} : () -> tensor<{K}x{K}xf32>
  %h = nn.matmul %x, %w1 : (tensor<?x{K}xf32>, tensor<{K}x{K}xf32>) -> tensor<?x{K}xf32>
  %r = nn.relu %h : (tensor<?x{K}xf32>) -> tensor<?x{K}xf32>
  %w2 = qc.constant {{value = {}}} : () -> tensor<{K}x{N}xf32>
  %c = qc.constant {{value = dense<0.0>}} : () -> tensor<{N}xf32>
  %y = nn.gemm %r, %w2, %c : (tensor<?x{K}xf32>, tensor<{K}x{N}xf32>, tensor<{N}xf32>) -> tensor<?x{N}xf32>
  %k = qc.constant {{value = {}}} : () -> tensor<4x2x3x3xf32>
  %b = qc.constant {{value = dense<0.0>}} : () -> tensor<4xf32>
  %v = nn.conv %img, %k, %b {{dilations = [1, 1], group = 2, kernel_shape = [3, 3], pads = [0, 0, 0, 0], strides = [1, 1]}} : (tensor<?x4x5x5xf32>, tensor<4x2x3x3xf32>, tensor<4xf32>) -> tensor<?x4x3x3xf32>
  return %y, %v : tensor<?x{N}xf32>, tensor<?x4x3x3xf32>
}}",
        dense(&w1),
        dense(&w2),
        dense(&k)
    );
    let m = parse_module(&text, &Source::named("t"), reg).unwrap();
    qc_ir::verify_module(&m).unwrap();
    (m, w1)
}

/// Run r's inputs: x [ROWS, K] Gaussian with an outlier column and values on histogram bin edges;
/// img [2, 4, 5, 5].
fn inputs(r: usize) -> (Vec<f32>, Vec<f32>) {
    let mut g = Rng(100 + r as u64);
    let mut x: Vec<f32> = (0..ROWS * K).map(|_| g.gauss()).collect();
    for row in 0..ROWS {
        x[row * K + 3] *= 8.0;
    }
    // Exact bin edges of the final amax (8.0 is set below as the largest |x|): 8 * b / 2048.
    x[0] = 8.0;
    x[1] = -8.0 * 5.0 / 2048.0;
    x[2] = 8.0 * 2047.0 / 2048.0;
    for v in x.iter_mut() {
        *v = v.clamp(-8.0, 8.0);
    }
    let img: Vec<f32> = (0..2 * 4 * 25).map(|_| g.gauss()).collect();
    (x, img)
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("qc-calibrate-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

fn write_npz(name: &str, arrays: &[(&str, NpyArray)]) -> PathBuf {
    let p = tmp(name);
    std::fs::write(&p, to_npz_bytes(arrays).unwrap()).unwrap();
    p
}

fn data_npz(name: &str, runs: usize) -> PathBuf {
    let mut arrays = Vec::new();
    let names: Vec<(String, String)> = (0..runs)
        .map(|r| (format!("x.{r}"), format!("img.{r}")))
        .collect();
    for (r, (xn, imgn)) in names.iter().enumerate() {
        let (x, img) = inputs(r);
        arrays.push((xn.as_str(), NpyArray::f32(vec![ROWS, K], x)));
        arrays.push((imgn.as_str(), NpyArray::f32(vec![2, 4, 5, 5], img)));
    }
    write_npz(name, &arrays)
}

fn calibrate(
    m: &mut Module,
    data: PathBuf,
    max_runs: Option<usize>,
    budget: usize,
) -> Result<(), String> {
    let reg = registry();
    Calibrate {
        data,
        max_runs,
        xtx_budget: budget,
    }
    .run(m, &PassContext::new(&reg))
    .map(|_| ())
    .map_err(|d| d.message)
}

fn stats_of(m: &Module, kind: &str) -> LayerStats {
    let f = &m.funcs[0];
    let op = f.ops.iter().find(|o| o.name() == kind).unwrap();
    calib::read(m, op).unwrap_or_else(|| panic!("{kind} has no statistics"))
}

/// Independent statistics of row-major activations whose channel axis has `c` entries, `inner`
/// consecutive elements per (outer, channel).
fn reference(parts: &[(Vec<f32>, usize)], c: usize, inner: usize, xtx: bool) -> LayerStats {
    let mut rows = 0u64;
    let mut ch = vec![0f32; c];
    let mut all = Vec::new();
    let mut g = vec![0f64; c * c];
    for (v, outer) in parts {
        rows += (*outer * inner) as u64;
        for o in 0..*outer {
            for j in 0..c {
                for i in 0..inner {
                    let x = v[(o * c + j) * inner + i];
                    ch[j] = ch[j].max(x.abs());
                    all.push(x);
                }
            }
            if xtx {
                let row = &v[o * c..(o + 1) * c];
                for a in 0..c {
                    for b in 0..c {
                        g[a * c + b] += row[a] as f64 * row[b] as f64;
                    }
                }
            }
        }
    }
    let amax = ch.iter().fold(0f32, |m, &v| m.max(v));
    let mut hist = vec![0u64; HIST_BINS];
    for x in all {
        let b =
            ((x.abs() as f64 * HIST_BINS as f64 / amax as f64).floor() as usize).min(HIST_BINS - 1);
        hist[b] += 1;
    }
    LayerStats {
        rows,
        amax,
        ch_amax: ch,
        hist: Some(hist),
        xtx: xtx.then(|| g.iter().map(|&v| v as f32).collect()),
    }
}

fn close(a: &[f32], b: &[f32], rel: f64, what: &str) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-30);
    let worst = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs() / scale)
        .fold(0f64, f64::max);
    assert!(
        worst <= rel,
        "{what}: relative difference {worst:e} > {rel:e}"
    );
    worst
}

#[test]
fn recorded_statistics_equal_independently_computed_ones() {
    let reg = registry();
    let (mut m, w1) = module(&reg);
    let data = data_npz("stats.npz", RUNS);
    calibrate(&mut m, data.clone(), None, XTX_BUDGET).unwrap();
    qc_ir::verify_module(&m).unwrap();
    let printed = qc_ir::print_module(&m, qc_ir::PrintOptions::dump());
    assert!(
        printed.contains("calib.xtx = dense_resource<calib.w1.xtx>"),
        "{printed}"
    );

    // The matmul reads %x itself: everything exact but x^T x (f64 sums rounded once: same order).
    let xs: Vec<(Vec<f32>, usize)> = (0..RUNS).map(|r| (inputs(r).0, ROWS)).collect();
    let want = reference(&xs, K, 1, true);
    let got = stats_of(&m, "nn.matmul");
    assert_eq!(got.rows, (RUNS * ROWS) as u64);
    assert_eq!(
        (got.rows, got.amax, &got.ch_amax),
        (want.rows, want.amax, &want.ch_amax)
    );
    assert_eq!(got.amax, 8.0);
    assert_eq!(got.hist, want.hist, "matmul histogram");
    let hist = got.hist.as_ref().unwrap();
    assert_eq!(hist.iter().sum::<u64>(), got.rows * K as u64);
    // The edge values land in the bins they open: 8 * 5 / 2048 in bin 5, 8 * 2047 / 2048 and 8 in the last.
    assert!(hist[5] >= 1 && hist[HIST_BINS - 1] >= 2);
    let e = close(
        got.xtx.as_ref().unwrap(),
        want.xtx.as_ref().unwrap(),
        1e-6,
        "matmul xtx",
    );
    eprintln!(
        "matmul: rows {} amax {} xtx max relative difference {e:e}",
        got.rows, got.amax
    );

    // The gemm reads relu(x @ w1), recomputed here in f64 and rounded to f32 like nn.matmul.
    let hs: Vec<(Vec<f32>, usize)> = xs
        .iter()
        .map(|(x, rows)| {
            let mut h = vec![0f32; rows * K];
            for i in 0..*rows {
                for j in 0..K {
                    let s: f64 = (0..K)
                        .map(|p| x[i * K + p] as f64 * w1[p * K + j] as f64)
                        .sum();
                    h[i * K + j] = (s as f32).max(0.0);
                }
            }
            (h, *rows)
        })
        .collect();
    let want = reference(&hs, K, 1, true);
    let got = stats_of(&m, "nn.gemm");
    assert_eq!(got.rows, want.rows);
    close(&[got.amax], &[want.amax], 1e-6, "gemm amax");
    close(&got.ch_amax, &want.ch_amax, 1e-6, "gemm ch_amax");
    let hist = got.hist.as_ref().unwrap();
    assert_eq!(hist.iter().sum::<u64>(), got.rows * K as u64);
    // relu: at least the negative half of the outputs sits in bin 0.
    assert!(hist[0] >= got.rows * K as u64 / 4, "{}", hist[0]);
    let e = close(
        got.xtx.as_ref().unwrap(),
        want.xtx.as_ref().unwrap(),
        1e-6,
        "gemm xtx",
    );
    eprintln!(
        "gemm: rows {} amax {} xtx max relative difference {e:e}",
        got.rows, got.amax
    );

    // The conv reads %img: channels on axis 1, rows = batch * 25 per run, no x^T x.
    let imgs: Vec<(Vec<f32>, usize)> = (0..RUNS).map(|r| (inputs(r).1, 2)).collect();
    let want = reference(&imgs, 4, 25, false);
    let got = stats_of(&m, "nn.conv");
    assert_eq!(got.rows, (RUNS * 2 * 25) as u64);
    assert_eq!(
        (got.rows, got.amax, &got.ch_amax),
        (want.rows, want.amax, &want.ch_amax)
    );
    assert_eq!(got.hist, want.hist, "conv histogram");
    assert_eq!(got.hist.as_ref().unwrap().iter().sum::<u64>(), got.rows * 4);
    assert!(got.xtx.is_none());
    let _ = std::fs::remove_file(data);
}

#[test]
fn statistics_do_not_depend_on_the_xtx_budget_and_max_runs_takes_the_first_runs() {
    let reg = registry();
    let (base, _) = module(&reg);
    let data = data_npz("budget.npz", RUNS);
    let mut a = base.clone();
    calibrate(&mut a, data.clone(), None, XTX_BUDGET).unwrap();
    // A budget of one byte: one pass over the data per x^T x (two layers: passes 0 and 1, plus hist).
    let mut b = base.clone();
    calibrate(&mut b, data.clone(), None, 1).unwrap();
    let full = qc_ir::PrintOptions::full();
    assert_eq!(qc_ir::print_module(&a, full), qc_ir::print_module(&b, full));

    // max_runs=2 equals an archive holding only runs 0 and 1.
    let two = data_npz("two.npz", 2);
    let mut c = base.clone();
    calibrate(&mut c, data.clone(), Some(2), XTX_BUDGET).unwrap();
    let mut d = base.clone();
    calibrate(&mut d, two.clone(), None, XTX_BUDGET).unwrap();
    assert_eq!(qc_ir::print_module(&c, full), qc_ir::print_module(&d, full));
    assert_ne!(qc_ir::print_module(&a, full), qc_ir::print_module(&c, full));
    assert_eq!(stats_of(&c, "nn.matmul").rows, (2 * ROWS) as u64);

    // A folder of .npy files gives the same as the archive.
    let dir = tmp("folder");
    std::fs::create_dir_all(&dir).unwrap();
    for r in 0..RUNS {
        let (x, img) = inputs(r);
        std::fs::write(
            dir.join(format!("x.{r}.npy")),
            to_npy_bytes(&NpyArray::f32(vec![ROWS, K], x)),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("img.{r}.npy")),
            to_npy_bytes(&NpyArray::f32(vec![2, 4, 5, 5], img)),
        )
        .unwrap();
    }
    std::fs::write(dir.join("README.txt"), "not an array").unwrap();
    let mut e = base.clone();
    calibrate(&mut e, dir.clone(), None, XTX_BUDGET).unwrap();
    assert_eq!(qc_ir::print_module(&a, full), qc_ir::print_module(&e, full));
    for p in [data, two] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(dir);
}

struct Count(Cell<usize>, Cell<usize>);
impl Progress for Count {
    fn step(&self, pass: &str, done: usize, total: usize, _item: &str) {
        assert_eq!(pass, "calibrate");
        assert_eq!(done, self.0.get() + 1);
        self.0.set(done);
        self.1.set(total);
    }
}

#[test]
fn progress_is_reported_once_per_run_and_pass_over_the_data() {
    let reg = registry();
    let (mut m, _) = module(&reg);
    let data = data_npz("progress.npz", RUNS);
    let count = Count(Cell::new(0), Cell::new(0));
    let cx = PassContext {
        registry: &reg,
        progress: &count,
    };
    Calibrate {
        data: data.clone(),
        max_runs: None,
        xtx_budget: XTX_BUDGET,
    }
    .run(&mut m, &cx)
    .unwrap();
    // Two passes (amax, then histograms) over three runs.
    assert_eq!((count.0.get(), count.1.get()), (2 * RUNS, 2 * RUNS));
    let _ = std::fs::remove_file(data);
}

#[test]
fn the_histogram_bin_is_exact_at_edges() {
    // amax = 3 (not a power of two): edges 3 * b / 2048 are not all representable; the bin follows the
    // exact comparison b * amax <= |x| * 2048.
    let amax = 3.0f32;
    for b in [0usize, 1, 7, 1000, 2047] {
        let edge = 3.0 * b as f64 / 2048.0;
        let at = edge as f32;
        let want = if (at as f64) * 2048.0 >= 3.0 * b as f64 {
            b
        } else {
            b - 1
        };
        assert_eq!(hist_bin(at as f64, amax), want, "edge {b}");
        let below = f32::from_bits(at.to_bits().wrapping_sub(1));
        if b > 0 && (below as f64) < edge {
            assert_eq!(hist_bin(below as f64, amax), b - 1, "below edge {b}");
        }
    }
    assert_eq!(hist_bin(3.0, amax), HIST_BINS - 1);
    assert_eq!(hist_bin(4.0, amax), HIST_BINS - 1);
    assert_eq!(hist_bin(0.0, amax), 0);
    assert_eq!(hist_bin(0.0, 0.0), 0);
}

#[test]
fn bad_inputs_are_diagnostics_naming_the_argument_and_the_file() {
    let reg = registry();
    let (base, _) = module(&reg);
    let (x, img) = inputs(0);
    let xa = || NpyArray::f32(vec![ROWS, K], x.clone());
    let ia = || NpyArray::f32(vec![2, 4, 5, 5], img.clone());
    type Case<'a> = (&'a str, Vec<(&'a str, NpyArray)>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "absent.npz",
            vec![("x", xa())],
            &["no array for argument 'img'", "absent.npz"],
        ),
        (
            "both.npz",
            vec![("x", xa()), ("x.0", xa()), ("img", ia())],
            &["argument 'x' has both"],
        ),
        (
            "gap.npz",
            vec![("x.0", xa()), ("x.2", xa()), ("img", ia())],
            &["'x.2' but no 'x.1'"],
        ),
        (
            "lengths.npz",
            vec![("x.0", xa()), ("x.1", xa()), ("img.0", ia())],
            &["has 1 numbered arrays but 'x' has 2"],
        ),
        (
            "unknown.npz",
            vec![("x", xa()), ("img", ia()), ("labels", xa())],
            &[
                "'labels' names no argument of @main",
                "unknown.npz:labels.npy",
            ],
        ),
        (
            "shape.npz",
            vec![
                ("x", NpyArray::f32(vec![K, ROWS], x.clone())),
                ("img", ia()),
            ],
            &["shape.npz:x.npy: argument 'x'", "does not fit"],
        ),
        (
            "dtype.npz",
            vec![
                ("x", xa()),
                ("img", NpyArray::u8(vec![2, 4, 5, 5], vec![0; 200])),
            ],
            &["dtype.npz:img.npy: argument 'img'", "|u1 array cannot feed"],
        ),
    ];
    for (name, arrays, wants) in cases {
        let p = write_npz(name, &arrays);
        let mut m = base.clone();
        let e = calibrate(&mut m, p.clone(), None, XTX_BUDGET).unwrap_err();
        for w in wants {
            assert!(e.contains(w), "{name}: {e}");
        }
        assert_eq!(m, base, "{name}: the module changed");
        let _ = std::fs::remove_file(p);
    }
    // Not an archive, and a missing file.
    let p = tmp("garbage.npz");
    std::fs::write(&p, b"not a zip").unwrap();
    let e = calibrate(&mut base.clone(), p.clone(), None, XTX_BUDGET).unwrap_err();
    assert!(
        e.contains("garbage.npz") && e.contains("not a readable .npz"),
        "{e}"
    );
    let _ = std::fs::remove_file(p);
    let e = calibrate(&mut base.clone(), tmp("missing.npz"), None, XTX_BUDGET).unwrap_err();
    assert!(
        e.contains("missing.npz") && e.contains("cannot read"),
        "{e}"
    );
    // A non-finite activation: a diagnostic at the layer that reads it, naming the run.
    let mut bad = x.clone();
    bad[7] = f32::INFINITY;
    let p = write_npz(
        "inf.npz",
        &[
            ("x.0", xa()),
            ("x.1", NpyArray::f32(vec![ROWS, K], bad)),
            ("img", ia()),
        ],
    );
    let e = calibrate(&mut base.clone(), p.clone(), None, XTX_BUDGET).unwrap_err();
    assert!(
        e.contains("layer 'w1'") && e.contains("run 1") && e.contains("inf"),
        "{e}"
    );
    let _ = std::fs::remove_file(p);
}

#[test]
fn layers_sharing_an_activation_or_a_weight_get_equal_statistics_under_unique_names() {
    let reg = registry();
    let text = format!(
        "func.func @f(%x: tensor<?x{K}xf32>) -> (tensor<?x{K}xf32>, tensor<?x{K}xf32>, tensor<?x{K}xf32>) {{
  %w = qc.constant {{value = dense<0.25>}} : () -> tensor<{K}x{K}xf32>
  %v = qc.constant {{value = dense<0.5>}} : () -> tensor<{K}x{K}xf32>
  %a = nn.matmul %x, %w : (tensor<?x{K}xf32>, tensor<{K}x{K}xf32>) -> tensor<?x{K}xf32>
  %b = nn.matmul %x, %v : (tensor<?x{K}xf32>, tensor<{K}x{K}xf32>) -> tensor<?x{K}xf32>
  %c = nn.matmul %a, %w : (tensor<?x{K}xf32>, tensor<{K}x{K}xf32>) -> tensor<?x{K}xf32>
  return %a, %b, %c : tensor<?x{K}xf32>, tensor<?x{K}xf32>, tensor<?x{K}xf32>
}}"
    );
    let mut m = parse_module(&text, &Source::named("t"), &reg).unwrap();
    let p = write_npz(
        "shared.npz",
        &[("x", NpyArray::f32(vec![ROWS, K], inputs(0).0))],
    );
    calibrate(&mut m, p.clone(), None, XTX_BUDGET).unwrap();
    qc_ir::verify_module(&m).unwrap();
    let f = &m.funcs[0];
    let ops: Vec<&qc_ir::Op> = f.ops.iter().filter(|o| o.name() == "nn.matmul").collect();
    let s: Vec<LayerStats> = ops.iter().map(|o| calib::read(&m, o).unwrap()).collect();
    assert_eq!(s[0], s[1], "two layers reading %x");
    assert_ne!(s[0], s[2]);
    let hist = |o: &qc_ir::Op| match o.attr(calib::HIST) {
        Some(qc_ir::attr::Attribute::DenseResource(r)) => r.clone(),
        _ => panic!(),
    };
    assert_eq!(
        [hist(ops[0]), hist(ops[1]), hist(ops[2])],
        ["calib.w.hist", "calib.v.hist", "calib.w.1.hist"]
    );
    // A module with several functions and no @main: which one to run is unclear.
    let two = text.replace("@f(", "@g(") + "\n" + &text;
    let mut m = parse_module(&two, &Source::named("t"), &reg).unwrap();
    let e = calibrate(&mut m, p.clone(), None, XTX_BUDGET).unwrap_err();
    assert!(e.contains("none is @main"), "{e}");
    let _ = std::fs::remove_file(p);
}

//! `qc report`: per-layer quantization error of a model across formats and methods.
//!
//! For every linear layer of the model (see `qc_passes::weights::linears`) and every (format, method)
//! pair, the report quantizes the model with that method's pass (`quantize{w=F}`, `gptq{w=F}` or
//! `gptq{w=F,mr=true}`; the model is first simplified and, with `--calib`, calibrated), reads back the
//! weight each layer effectively multiplies by (the dequantized resource, transposed back to `[K, N]`,
//! and rotated back when the layer's activation passes through a `quant.hadamard`), and measures:
//!
//! - **weight QSNR** (dB): `10 log10(|W|^2 / |W - W^|^2)`;
//! - **output QSNR** (dB, with calibration data): `10 log10(tr(W^T G W) / tr(E^T G E))` with
//!   `G = sum X^T X` of the layer's calibration activations and `E = W - W^`: the signal-to-error ratio
//!   of the layer output `X W` versus `X W^` over the calibration rows, computed exactly from the
//!   recorded Gram matrix;
//! - **saturated**: elements whose code is an extreme code of the element format (largest magnitude; for
//!   integers the minimum or maximum code) and whose weight lay beyond the decoded value (`|w| > |w^|`
//!   by more than 1e-6 relative): values the format clipped;
//! - **underflow**: scale groups holding a nonzero weight that dequantize to all zeros;
//! - **bits/weight**: the quantized resource's bytes (codes, scales, zero points, tensor scale) times 8
//!   over the element count.
//!
//! The table goes to standard output; `-o FILE.html` also writes an HTML page with a summary and SVG
//! plots of the per-layer QSNR of every series (self-contained, no scripts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use qc_ir::attr::Attribute;
use qc_ir::module::{Module, Value};
use qc_ir::ops::QcOp;
use qc_ir::pass::PassManager;
use qc_ir::quant::{named_format, Encoding};
use qc_nn::NnOp;
use qc_passes::calib;
use qc_passes::weights::{linears, producers, read_weight, Linear};
use qc_quant::ops::QuantOp;
use qc_quant::{Codec, QuantizedTensor};

use crate::cmd::compile::Method;
use crate::output::{input_error, write_output, write_stdout, Failure};

/// Arguments of `qc report`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// The model: .onnx or .qir.
    pub model: PathBuf,
    /// Comma-separated named formats to compare.
    #[arg(long, value_delimiter = ',', required = true, value_name = "F1,F2,...")]
    pub formats: Vec<String>,
    /// Comma-separated methods (gptq and mr-gptq need --calib).
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "rtn",
        value_name = "M1,M2,..."
    )]
    pub method: Vec<Method>,
    /// Calibration data (as `qc compile --calib`); enables the output QSNR column.
    #[arg(long, value_name = "DATA")]
    pub calib: Option<PathBuf>,
    /// Write an HTML report with SVG plots here (atomically).
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

/// One measured (layer, format, method).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerMetrics {
    /// The layer's name (its weight).
    pub layer: String,
    /// Reduction length.
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// The format name.
    pub format: String,
    /// The method name.
    pub method: String,
    /// False when the method left the layer float (then the other numbers are of the float weight).
    pub quantized: bool,
    /// Weight QSNR in dB (infinite when exact).
    pub weight_qsnr_db: f64,
    /// Output QSNR in dB over the calibration data, when the layer was calibrated.
    pub output_qsnr_db: Option<f64>,
    /// Saturated elements.
    pub saturated: usize,
    /// Scale groups that underflowed to all zeros.
    pub underflow_groups: usize,
    /// Stored bits per weight.
    pub bits_per_weight: f64,
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Rtn => "rtn",
        Method::Gptq => "gptq",
        Method::MrGptq => "mr-gptq",
    }
}

/// The pass that applies `method` with weight format `w`.
pub fn method_pipeline(method: Method, w: &str) -> String {
    match method {
        Method::Rtn => format!("quantize{{w={w}}}"),
        Method::Gptq => format!("gptq{{w={w}}}"),
        Method::MrGptq => format!("gptq{{w={w},mr=true}}"),
    }
}

fn run_pipeline(m: &mut Module, text: &str) -> Result<(), Failure> {
    let passes = qc_passes::registry()
        .parse_pipeline(text)
        .map_err(|d| Failure::Input(d.render(Some(text))))?;
    let mut pm = PassManager::new(passes, Default::default());
    pm.progress = crate::progress::for_stderr();
    pm.run(m, &crate::registry(), &mut std::io::sink())
        .map_err(|e| crate::cmd::opt::pipeline_failure(e, None))
}

/// The float reference of one layer, captured before quantization.
struct Reference {
    lin: Linear,
    w_kn: Vec<f32>,
    gram: Option<Vec<f32>>,
}

/// What a quantized layer stores.
struct Stored {
    /// The quantized tensor.
    q: QuantizedTensor,
    /// Its resource's length in bytes.
    len: usize,
    /// The float weight in the quantized tensor's layout (rotated when the layer is), for saturation counts.
    orig: Vec<f32>,
}

/// The weight `[K, N]` the layer producing `y` multiplies by in `m` (function `fi`), with the quantized
/// tensor when it is quantized; `None` when the layer is gone or unreadable.
fn effective_weight(m: &Module, fi: usize, r: &Reference) -> Option<(Vec<f32>, Option<Stored>)> {
    let f = &m.funcs[fi];
    let prod = producers(f);
    let op = &f.ops[*prod.get(&r.lin.y)?];
    let (k, n) = (r.lin.k, r.lin.n);
    let const_blob = |v: Value| -> Option<(QuantizedTensor, usize)> {
        let c = &f.ops[*prod.get(&v)?];
        if QcOp::of(c) != Some(QcOp::Constant) {
            return None;
        }
        let ty = f.ty(v);
        let fmt = ty.elem.as_quant()?;
        let shape: Vec<usize> = ty.static_shape()?.iter().map(|&d| d as usize).collect();
        let bytes = match c.attr("value")? {
            Attribute::DenseResource(name) => m.resources.get(name)?.bytes()?,
            _ => return None,
        };
        let q = qc_quant::blob::from_blob(bytes, fmt, &shape, &r.lin.name).ok()?;
        Some((q, bytes.len()))
    };
    if QuantOp::of(op) == Some(QuantOp::Matmul) {
        let (q, len) = const_blob(op.operands[1])?;
        let d = qc_quant::dequantize(&q).ok()?;
        let tb = op.attr("transpose_b").is_some();
        let mut kn = if tb {
            qc_passes::weights::transpose(&d, n, k)
        } else {
            d
        };
        let mut orig_kn = r.w_kn.clone();
        // An online rotation the method put in front of the layer (MR-GPTQ): x H W^ = x (H W^); the
        // stored weight is H W. (A rotation already in the float model reads the same value as before.)
        if let Some(&hi) = prod
            .get(&op.operands[0])
            .filter(|_| op.operands[0] != r.lin.x)
        {
            let h = &f.ops[hi];
            if QuantOp::of(h) == Some(QuantOp::Hadamard) {
                let b = h.attr("block").and_then(Attribute::as_int)? as usize;
                if b == 0 || k % b != 0 || !b.is_power_of_two() {
                    return None;
                }
                qc_quant::hadamard::rotate_cols(&mut kn, n, b);
                qc_quant::hadamard::rotate_cols(&mut orig_kn, n, b);
            }
        }
        let orig = if tb {
            qc_passes::weights::transpose(&orig_kn, k, n)
        } else {
            orig_kn
        };
        return Some((kn, Some(Stored { q, len, orig })));
    }
    if matches!(NnOp::of(op), Some(NnOp::Gemm | NnOp::Conv)) {
        let w = *op.operands.get(1)?;
        if let Some(&di) = prod.get(&w) {
            let dq = &f.ops[di];
            if QuantOp::of(dq) == Some(QuantOp::Dequantize) {
                let (q, len) = const_blob(dq.operands[0])?;
                let d = qc_quant::dequantize(&q).ok()?;
                let orig = r.lin.weight_stored(&r.w_kn);
                return Some((r.lin.weight_kn(&d), Some(Stored { q, len, orig })));
            }
        }
    }
    // Still float.
    let stored = read_weight(m, fi, op.operands.get(1).copied()?)?;
    Some((r.lin.weight_kn(&stored), None))
}

fn qsnr_db(signal: f64, noise: f64) -> f64 {
    if noise <= 0.0 {
        f64::INFINITY
    } else if signal <= 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// `tr(A^T G A)` for `A: [K, N]`, `G: [K, K]`.
fn quad_trace(a: &[f32], g: &[f32], k: usize, n: usize) -> f64 {
    let mut t = 0f64;
    let mut ga = vec![0f64; k];
    for j in 0..n {
        for (i, gi) in ga.iter_mut().enumerate() {
            *gi = (0..k)
                .map(|l| g[i * k + l] as f64 * a[l * n + j] as f64)
                .sum();
        }
        t += (0..k).map(|i| a[i * n + j] as f64 * ga[i]).sum::<f64>();
    }
    t
}

/// Saturated elements and underflowed groups of `q` against the original values `w` (in `q`'s layout).
fn saturation(q: &QuantizedTensor, w: &[f32], d: &[f32]) -> (usize, usize) {
    let elem = q.format.elem;
    let extreme: Vec<u8> = match Codec::new(elem) {
        Ok(c) => {
            let n = 1u32 << c.bits();
            let vals: Vec<f32> = (0..n).map(|code| c.decode(code)).collect();
            let (lo, hi) = vals
                .iter()
                .filter(|v| v.is_finite())
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let amax = vals
                .iter()
                .filter(|v| v.is_finite())
                .fold(0f32, |a, v| a.max(v.abs()));
            (0..n)
                .filter(|&code| {
                    let v = vals[code as usize];
                    match elem {
                        Encoding::Int { .. } => v == lo || v == hi,
                        _ => v.is_finite() && v.abs() == amax,
                    }
                })
                .map(|c| c as u8)
                .collect()
        }
        Err(_) => Vec::new(),
    };
    let sat = w
        .iter()
        .zip(d)
        .zip(&q.codes)
        .filter(|((&x, &y), c)| extreme.contains(c) && x.abs() > y.abs() + 1e-6 * x.abs())
        .count();
    let under = match qc_quant::tensor::scale_indices(&q.format.scheme, &q.shape, &q.name) {
        Ok(idx) => {
            let groups = idx.iter().copied().max().map_or(0, |m| m + 1);
            let mut nonzero = vec![false; groups];
            let mut decoded = vec![false; groups];
            for ((&x, &y), &s) in w.iter().zip(d).zip(&idx) {
                nonzero[s] |= x != 0.0;
                decoded[s] |= y != 0.0;
            }
            nonzero
                .iter()
                .zip(&decoded)
                .filter(|(&a, &b)| a && !b)
                .count()
        }
        Err(_) => 0,
    };
    (sat, under)
}

/// Measures every linear layer of `base` (simplified and possibly calibrated) for each format and
/// method. Errors: an unknown format, or a method's pass rejecting the model (e.g. gptq without data).
pub fn measure(
    base: &Module,
    formats: &[String],
    methods: &[Method],
) -> Result<Vec<LayerMetrics>, Failure> {
    for f in formats {
        if named_format(f).is_none() {
            return Err(input_error(format!(
                "--formats names no known format '{f}'; `qc formats` lists the named formats"
            )));
        }
    }
    let mut refs: Vec<(usize, Reference)> = Vec::new();
    for fi in 0..base.funcs.len() {
        for lin in linears(base, fi) {
            let Some(stored) = read_weight(base, fi, lin.w) else {
                continue;
            };
            let op = &base.funcs[fi].ops[lin.op];
            let gram = calib::read(base, op).and_then(|s| s.xtx);
            let w_kn = lin.weight_kn(&stored);
            refs.push((fi, Reference { lin, w_kn, gram }));
        }
    }
    let mut out = Vec::new();
    for fmt in formats {
        for &method in methods {
            let mut m = base.clone();
            run_pipeline(&mut m, &method_pipeline(method, fmt))?;
            for (fi, r) in &refs {
                let Some((w_hat, q)) = effective_weight(&m, *fi, r) else {
                    continue;
                };
                let (k, n) = (r.lin.k, r.lin.n);
                let err: Vec<f32> = r.w_kn.iter().zip(&w_hat).map(|(a, b)| a - b).collect();
                let sq = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
                let output_qsnr_db = r
                    .gram
                    .as_ref()
                    .filter(|g| g.len() == k * k)
                    .map(|g| qsnr_db(quad_trace(&r.w_kn, g, k, n), quad_trace(&err, g, k, n)));
                let (saturated, underflow_groups, bits) = match &q {
                    Some(st) => {
                        let d = qc_quant::dequantize(&st.q).unwrap_or_default();
                        let (s, u) = saturation(&st.q, &st.orig, &d);
                        (s, u, st.len as f64 * 8.0 / (k * n) as f64)
                    }
                    None => (0, 0, 32.0),
                };
                out.push(LayerMetrics {
                    layer: r.lin.name.clone(),
                    k,
                    n,
                    format: fmt.clone(),
                    method: method_name(method).into(),
                    quantized: q.is_some(),
                    weight_qsnr_db: qsnr_db(sq(&r.w_kn), sq(&err)),
                    output_qsnr_db,
                    saturated,
                    underflow_groups,
                    bits_per_weight: bits,
                });
            }
        }
    }
    Ok(out)
}

fn db(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{x:.2}")
    }
}

/// The terminal table.
pub fn table(rows: &[LayerMetrics]) -> String {
    let mut s = String::new();
    let lw = rows.iter().map(|r| r.layer.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        s,
        "{:<lw$}  {:>11}  {:<12} {:<8} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "layer",
        "KxN",
        "format",
        "method",
        "wQSNR dB",
        "oQSNR dB",
        "saturated",
        "underflow",
        "bits/w"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<lw$}  {:>11}  {:<12} {:<8} {:>9} {:>9} {:>9} {:>9} {:>7.3}{}",
            r.layer,
            format!("{}x{}", r.k, r.n),
            r.format,
            r.method,
            db(r.weight_qsnr_db),
            r.output_qsnr_db.map_or("-".into(), db),
            r.saturated,
            r.underflow_groups,
            r.bits_per_weight,
            if r.quantized { "" } else { "  (left float)" }
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// An SVG line plot: one series per (format, method), x = layer index, y = `value(row)` in dB.
fn svg_plot(
    rows: &[LayerMetrics],
    title: &str,
    value: impl Fn(&LayerMetrics) -> Option<f64>,
) -> String {
    let mut series: BTreeMap<(String, String), Vec<(usize, f64)>> = BTreeMap::new();
    let mut layers: Vec<String> = Vec::new();
    for r in rows {
        if !layers.contains(&r.layer) {
            layers.push(r.layer.clone());
        }
    }
    for r in rows {
        if let Some(v) = value(r).filter(|v| v.is_finite()) {
            let i = layers.iter().position(|l| *l == r.layer).unwrap_or(0);
            series
                .entry((r.format.clone(), r.method.clone()))
                .or_default()
                .push((i, v));
        }
    }
    let (w, h, left, right, top, bottom) = (760.0, 320.0, 60.0, 180.0, 30.0, 40.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let vals: Vec<f64> = series.values().flatten().map(|p| p.1).collect();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"18\" font-size=\"13\" text-anchor=\"middle\">{}</text>\n",
        left + pw / 2.0,
        esc(title)
    );
    if vals.is_empty() {
        s += "<text x=\"300\" y=\"150\">no data (needs --calib)</text>\n</svg>\n";
        return s;
    }
    let lo = (vals.iter().cloned().fold(f64::MAX, f64::min) / 5.0).floor() * 5.0;
    let hi = ((vals.iter().cloned().fold(f64::MIN, f64::max) / 5.0).ceil() * 5.0).max(lo + 5.0);
    let nx = layers.len().max(2) - 1;
    let x = |i: usize| left + pw * i as f64 / nx as f64;
    let y = |v: f64| top + ph * (hi - v) / (hi - lo);
    let _ = writeln!(
        s,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>"
    );
    let steps = 5;
    for t in 0..=steps {
        let v = lo + (hi - lo) * t as f64 / steps as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            left + pw,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">dB</text>",
        top + ph / 2.0,
        top + ph / 2.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">layer (in graph order; hover a point for its name)</text>",
        left + pw / 2.0,
        h - 8.0
    );
    for (si, ((fmt, method), pts)) in series.iter().enumerate() {
        let c = COLORS[si % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(i, v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        for &(i, v) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{c}\"><title>{} {fmt} {method}: {v:.2} dB</title></circle>",
                x(i),
                y(v),
                esc(&layers[i])
            );
        }
        let ly = top + 14.0 * si as f64 + 8.0;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{} / {}</text>",
            left + pw + 10.0,
            left + pw + 28.0,
            left + pw + 32.0,
            ly + 4.0,
            esc(fmt),
            esc(method)
        );
    }
    s += "</svg>\n";
    s
}

/// The HTML page: summary per (format, method), the two plots, the full table.
pub fn html(model: &str, rows: &[LayerMetrics]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>qc report: {m}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style></head><body>\n<h1>qc report: {m}</h1>\n",
        m = esc(model)
    );
    // Per series: weight QSNR sum, output QSNR sum, saturated, underflow, bits x elements, layers.
    type Sum = (f64, f64, usize, usize, f64, usize);
    let mut sum: BTreeMap<(String, String), Sum> = BTreeMap::new();
    for r in rows {
        let e = sum
            .entry((r.format.clone(), r.method.clone()))
            .or_insert((0.0, 0.0, 0, 0, 0.0, 0));
        e.0 += r.weight_qsnr_db.min(200.0);
        e.1 += r.output_qsnr_db.unwrap_or(f64::NAN).min(200.0);
        e.2 += r.saturated;
        e.3 += r.underflow_groups;
        e.4 += r.bits_per_weight * (r.k * r.n) as f64;
        e.5 += 1;
    }
    let weights: BTreeMap<(String, String), f64> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry((r.format.clone(), r.method.clone())).or_insert(0.0) += (r.k * r.n) as f64;
        m
    });
    s += "<h2>Summary</h2>\n<table><tr><th>format / method</th><th>mean weight QSNR (dB)</th><th>mean output QSNR (dB)</th><th>saturated</th><th>underflow groups</th><th>bits/weight</th></tr>\n";
    for (k, v) in &sum {
        let n = v.5.max(1) as f64;
        let _ = writeln!(
            s,
            "<tr><td>{} / {}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>",
            esc(&k.0),
            esc(&k.1),
            v.0 / n,
            if v.1.is_nan() { "-".into() } else { format!("{:.2}", v.1 / n) },
            v.2,
            v.3,
            v.4 / weights[k].max(1.0)
        );
    }
    s += "</table>\n<h2>Per-layer output QSNR (calibration data)</h2>\n";
    s += &svg_plot(rows, "output QSNR per layer", |r| r.output_qsnr_db);
    s += "<h2>Per-layer weight QSNR</h2>\n";
    s += &svg_plot(rows, "weight QSNR per layer", |r| Some(r.weight_qsnr_db));
    s += "<h2>All layers</h2>\n<table><tr><th>layer</th><th>KxN</th><th>format</th><th>method</th><th>weight QSNR</th><th>output QSNR</th><th>saturated</th><th>underflow</th><th>bits/w</th></tr>\n";
    for r in rows {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}x{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>",
            esc(&r.layer),
            r.k,
            r.n,
            esc(&r.format),
            esc(&r.method),
            db(r.weight_qsnr_db),
            r.output_qsnr_db.map_or("-".into(), db),
            r.saturated,
            r.underflow_groups,
            r.bits_per_weight
        );
    }
    s += "</table>\n<p>Definitions: see <code>qc report --help</code> and compiler/src/cmd/report.rs.</p>\n</body></html>\n";
    s
}

/// Loads, simplifies and (with `calib`) calibrates the model: the float base every method starts from.
pub fn prepare(
    model: &std::path::Path,
    calib_data: Option<&std::path::Path>,
) -> Result<Module, Failure> {
    let mut m = crate::cmd::import::load_module(model)?;
    let mut p = "canonicalize,cse,dce".to_string();
    if let Some(d) = calib_data {
        p += &format!(
            ",calibrate{{data=\"{}\"}}",
            d.to_string_lossy()
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
        );
    }
    run_pipeline(&mut m, &p)?;
    Ok(m)
}

/// Runs `qc report`.
pub fn run(args: &ReportArgs) -> Result<(), Failure> {
    for &m in &args.method {
        if m != Method::Rtn && args.calib.is_none() {
            return Err(input_error(format!(
                "--method {} needs calibration data: pass --calib DATA",
                method_name(m)
            )));
        }
    }
    let base = prepare(&args.model, args.calib.as_deref())?;
    let rows = measure(&base, &args.formats, &args.method)?;
    if let Some(out) = &args.output {
        write_output(
            Some(out),
            html(&args.model.to_string_lossy(), &rows).as_bytes(),
        )?;
    }
    write_stdout(table(&rows).as_bytes())
}

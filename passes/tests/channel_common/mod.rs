//! Helpers shared by the measuring tests of smooth, reparam-exp-bias and lorc: a seeded RNG, a module
//! text builder with f32 resources, a probe that returns every linear layer's activation, a calibration
//! that measures those activations into `calib.*` statistics, and error measures.
#![allow(dead_code)]

use std::collections::BTreeMap;

use qc_ir::types::ElemType;
use qc_ir::{parse_module, Module, Registry, Source, Value};
use qc_passes::calib::{self, LayerStats, HIST_BINS};
use qc_passes::fold::channel_linears;
use qc_passes::weights::read_weight;
use qc_runtime::exec::run_func;
use qc_runtime::interp::{Data, Tensor};

/// splitmix64, then Box-Muller: a seeded standard normal stream.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn gauss(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// `n` values N(0, std^2), rounded to f32.
    pub fn normal(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (std * self.gauss()) as f32).collect()
    }
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(qc_nn::dialect());
    r.register(qc_quant::ops::dialect());
    r
}

/// `tensor<AxBxf32>`.
pub fn ty(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    if dims.is_empty() {
        "tensor<f32>".into()
    } else {
        format!("tensor<{}xf32>", dims.join("x"))
    }
}

/// A function body under construction, with its f32 resources.
#[derive(Default)]
pub struct Text {
    pub body: String,
    pub resources: Vec<(String, Vec<f32>)>,
}

impl Text {
    /// `%name = qc.constant {value = dense_resource<name>}` holding `vals`.
    pub fn constant(&mut self, name: &str, shape: &[usize], vals: Vec<f32>) {
        assert_eq!(shape.iter().product::<usize>(), vals.len(), "{name}");
        self.body.push_str(&format!(
            "  %{name} = qc.constant {{value = dense_resource<{name}>}} : () -> {}\n",
            ty(shape)
        ));
        self.resources.push((name.into(), vals));
    }

    /// One op line.
    pub fn op(&mut self, line: &str) {
        self.body.push_str("  ");
        self.body.push_str(line);
        self.body.push('\n');
    }

    /// The module `func.func @f(ARGS) -> RESULTS { body; return RET }` with the resources.
    pub fn module(&self, args: &str, results: &str, ret: &str, reg: &Registry) -> Module {
        let res: Vec<String> = self
            .resources
            .iter()
            .map(|(n, v)| {
                let hex: String = [16u8, 0, 0, 0]
                    .into_iter()
                    .chain(v.iter().flat_map(|x| x.to_le_bytes()))
                    .map(|b| format!("{b:02X}"))
                    .collect();
                format!("{n}: \"0x{hex}\"")
            })
            .collect();
        let text = format!(
            "func.func @f({args}) -> ({results}) {{\n{}  return {ret}\n}}\n{{-# dialect_resources: {{ qc: {{ {} }} }} #-}}\n",
            self.body,
            res.join(", ")
        );
        parse_module(&text, &Source::named("t"), reg).unwrap_or_else(|d| panic!("{d}\n{text}"))
    }
}

/// An f32 input tensor.
pub fn input(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::new(
        shape.to_vec(),
        ElemType::F32,
        Data::F(v.iter().map(|&x| x as f64).collect()),
    )
}

/// Runs @f and returns its outputs as f32 vectors.
pub fn run(m: &Module, inputs: Vec<Tensor>) -> Vec<Vec<f32>> {
    run_func(m, "f", inputs)
        .unwrap_or_else(|d| panic!("{d}"))
        .into_iter()
        .map(|t| (0..t.len()).map(|i| t.data.f(i) as f32).collect())
        .collect()
}

/// The activation (as `[rows, K]`) of every matmul / gemm linear layer of @f, keyed by the layer's
/// result value, concatenated over `batches` (each batch one argument list).
pub fn activations(m: &Module, batches: &[Vec<Tensor>]) -> BTreeMap<Value, (usize, Vec<f64>)> {
    let layers = channel_linears(m, 0);
    let mut probe = m.clone();
    let f = &mut probe.funcs[0];
    // Each activation returned once (the interpreter hands a returned value out once).
    let mut at: BTreeMap<Value, usize> = BTreeMap::new();
    for l in &layers {
        if let std::collections::btree_map::Entry::Vacant(e) = at.entry(l.x) {
            e.insert(f.ret.len());
            let t = f.ty(l.x).clone();
            f.ret.push(l.x);
            f.result_types.push(t);
        }
    }
    let mut out: BTreeMap<Value, (usize, Vec<f64>)> = BTreeMap::new();
    for b in batches {
        let res = run_func(&probe, "f", b.clone()).unwrap_or_else(|d| panic!("{d}"));
        for l in &layers {
            let t = &res[at[&l.x]];
            let e = out.entry(l.y).or_insert((l.k, Vec::new()));
            e.1.extend((0..t.len()).map(|j| t.data.f(j)));
        }
    }
    out
}

/// The statistics of activation `x` (`[rows, k]`), measured as the calibrate pass records them.
pub fn stats_of(k: usize, x: &[f64]) -> LayerStats {
    let rows = x.len() / k;
    let mut ch = vec![0f64; k];
    let mut xtx = vec![0f64; k * k];
    for r in 0..rows {
        let row = &x[r * k..(r + 1) * k];
        for i in 0..k {
            ch[i] = ch[i].max(row[i].abs());
            for j in 0..k {
                xtx[i * k + j] += row[i] * row[j];
            }
        }
    }
    let amax = ch.iter().fold(0f64, |m, &v| m.max(v)) as f32;
    let mut hist = vec![0u64; HIST_BINS];
    for &v in x {
        let b = ((v.abs() / amax as f64) * HIST_BINS as f64) as usize;
        hist[b.min(HIST_BINS - 1)] += 1;
    }
    LayerStats {
        rows: rows as u64,
        amax,
        ch_amax: ch.iter().map(|&v| v as f32).collect(),
        hist: Some(hist),
        xtx: Some(xtx.iter().map(|&v| v as f32).collect()),
    }
}

/// Records measured statistics on every linear layer of @f (what `calibrate` would do).
pub fn calibrate(m: &mut Module, batches: &[Vec<Tensor>]) {
    let acts = activations(m, batches);
    for l in channel_linears(m, 0) {
        let (k, x) = &acts[&l.y];
        calib::write(m, 0, l.op, &l.name, &stats_of(*k, x));
    }
}

/// Verifies `m` after removing the `calib.hist` / `calib.xtx` attributes: the verifier checks every
/// `dense_resource` attribute against the op's result type, which those (K x K, bins) never match.
pub fn verify_without_calib_resources(m: &Module) {
    let mut c = m.clone();
    for op in c.funcs.iter_mut().flat_map(|f| f.ops.iter_mut()) {
        op.attrs.remove(calib::HIST);
        op.attrs.remove(calib::XTX);
    }
    qc_ir::verify_module(&c).unwrap_or_else(|d| panic!("{d:?}"));
}

/// The `[K, N]` weight of the layer whose result is `y`, with K and N.
pub fn weight_kn(m: &Module, y: Value) -> (Vec<f32>, usize, usize) {
    let l = channel_linears(m, 0)
        .into_iter()
        .find(|l| l.y == y)
        .expect("layer");
    let w = read_weight(m, 0, l.w).expect("weight bytes");
    (l.weight_kn(&w), l.k, l.n)
}

/// `x [rows, k] @ w [k, n]` in f64.
pub fn matmul(x: &[f64], w: &[f32], k: usize, n: usize) -> Vec<f64> {
    let rows = x.len() / k;
    let mut y = vec![0f64; rows * n];
    for r in 0..rows {
        for i in 0..k {
            let a = x[r * k + i];
            if a == 0.0 {
                continue;
            }
            for j in 0..n {
                y[r * n + j] += a * w[i * n + j] as f64;
            }
        }
    }
    y
}

/// `||a - b|| / ||b||` (Frobenius).
pub fn rel_err<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y): (f64, f64) = (x.into(), y.into());
        num += (x - y) * (x - y);
        den += y * y;
    }
    (num / den).sqrt()
}

/// A quantized format: a named one, or the `!quant.fmt<...>` parameters in `text`.
pub fn format(text: &str) -> qc_ir::QuantType {
    if let Some(f) = qc_ir::quant::named_format(text) {
        return f.ty.clone();
    }
    let t = qc_ir::parse_type(&format!("tensor<4x!quant.fmt<{text}>>"))
        .unwrap_or_else(|d| panic!("{text}: {d:?}"));
    t.elem.as_quant().expect("a quantized type").clone()
}

/// Fake-quantizes `x` (`[rows, k]`) to `fmt` (a per-tensor format: one scale for the whole tensor)
/// and decodes it.
pub fn fake_quant(x: &[f64], k: usize, fmt: &qc_ir::QuantType) -> Vec<f64> {
    let v: Vec<f32> = x.iter().map(|&a| a as f32).collect();
    let q = qc_quant::tensor::quantize(
        &v,
        &[x.len() / k, k],
        fmt,
        &qc_quant::tensor::QuantizeOptions::default(),
    )
    .unwrap();
    qc_quant::tensor::dequantize(&q)
        .unwrap()
        .into_iter()
        .map(|a| a as f64)
        .collect()
}

/// Per-channel amax of `x` (`[rows, k]`).
pub fn ch_amax(x: &[f64], k: usize) -> Vec<f64> {
    let mut ch = vec![0f64; k];
    for (i, &v) in x.iter().enumerate() {
        ch[i % k] = ch[i % k].max(v.abs());
    }
    ch
}

pub const M: usize = 32;
pub const D: usize = 64;
pub const H: usize = 128;
pub const Z: usize = 16;

/// A block with every producer shape the channel rescaling folds into, with seeded weights and outlier
/// channels: an RMSNorm-like `nn.mul` by gamma feeding q and k (one group), a LayerNorm feeding two
/// layers (an `nn.matmul` and an `nn.gemm` with `trans_b`) and the residual (an explicit multiply), a
/// linear layer with a bias feeding another (the output columns), and a LayerNorm feeding only a linear
/// layer (its scale and bias). Returns `%r`, `%z`, `%v`.
pub fn block(reg: &Registry, seed: u64) -> Module {
    let mut r = Rng(seed);
    let mut t = Text::default();
    t.constant("one", &[D], vec![1.0; D]);
    t.constant("zero", &[D], vec![0.0; D]);
    let mut g: Vec<f32> = (0..D).map(|_| (1.0 + 0.1 * r.gauss()) as f32).collect();
    for c in [3, 17, 40, 58] {
        g[c] *= 25.0;
    }
    t.constant("g", &[D], g);
    let sd = 1.0 / (D as f64).sqrt();
    t.constant("wq", &[D, D], r.normal(D * D, sd));
    t.constant("wk", &[D, D], r.normal(D * D, sd));
    let mut s2: Vec<f32> = (0..D).map(|_| (1.0 + 0.1 * r.gauss()) as f32).collect();
    for c in [5, 33] {
        s2[c] *= 20.0;
    }
    t.constant("s2", &[D], s2);
    t.constant("b2", &[D], r.normal(D, 0.1));
    let mut wu = r.normal(D * H, sd);
    for row in 0..D {
        for c in [7, 90] {
            wu[row * H + c] *= 12.0;
        }
    }
    t.constant("wu", &[D, H], wu);
    t.constant("bu", &[H], r.normal(H, 0.1));
    t.constant("wo", &[H, D], r.normal(H * D, 1.0 / (H as f64).sqrt()));
    t.constant("wz", &[Z, D], r.normal(Z * D, sd));
    t.constant("cz", &[Z], r.normal(Z, 0.1));
    let mut s3: Vec<f32> = (0..D).map(|_| (1.0 + 0.1 * r.gauss()) as f32).collect();
    for c in [11, 12, 50] {
        s3[c] *= -18.0;
    }
    t.constant("s3", &[D], s3);
    t.constant("b3", &[D], r.normal(D, 0.1));
    t.constant("wv", &[D, D], r.normal(D * D, sd));
    let (md, mh, dd, dh, hd, zd) = (
        ty(&[M, D]),
        ty(&[M, H]),
        ty(&[D, D]),
        ty(&[D, H]),
        ty(&[H, D]),
        ty(&[Z, D]),
    );
    let (vd, vh, vz, mz) = (ty(&[D]), ty(&[H]), ty(&[Z]), ty(&[M, Z]));
    t.op(&format!("%xn = nn.layer_norm %x, %one, %zero {{axis = -1, epsilon = 1.0e-5}} : ({md}, {vd}, {vd}) -> {md}"));
    t.op(&format!("%n = nn.mul %g, %xn : ({vd}, {md}) -> {md}"));
    t.op(&format!("%q = nn.matmul %n, %wq : ({md}, {dd}) -> {md}"));
    t.op(&format!("%k = nn.matmul %n, %wk : ({md}, {dd}) -> {md}"));
    t.op(&format!("%qk = nn.add %q, %k : ({md}, {md}) -> {md}"));
    t.op(&format!("%m = nn.layer_norm %qk, %s2, %b2 {{axis = -1, epsilon = 1.0e-5}} : ({md}, {vd}, {vd}) -> {md}"));
    t.op(&format!("%u = nn.matmul %m, %wu : ({md}, {dh}) -> {mh}"));
    t.op(&format!("%ub = nn.add %u, %bu : ({mh}, {vh}) -> {mh}"));
    t.op(&format!("%o = nn.matmul %ub, %wo : ({mh}, {hd}) -> {md}"));
    t.op(&format!("%r = nn.add %o, %m : ({md}, {md}) -> {md}"));
    t.op(&format!(
        "%z = nn.gemm %m, %wz, %cz {{trans_b = 1}} : ({md}, {zd}, {vz}) -> {mz}"
    ));
    t.op(&format!("%p = nn.layer_norm %r, %s3, %b3 {{axis = -1, epsilon = 1.0e-5}} : ({md}, {vd}, {vd}) -> {md}"));
    t.op(&format!("%v = nn.matmul %p, %wv : ({md}, {dd}) -> {md}"));
    t.module(
        &format!("%x: {md}"),
        &format!("{md}, {mz}, {md}"),
        &format!("%r, %z, %v : {md}, {mz}, {md}"),
        reg,
    )
}

pub fn batches(seed: u64, n: usize) -> Vec<Vec<Tensor>> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| vec![input(&[M, D], &r.normal(M * D, 1.0))])
        .collect()
}

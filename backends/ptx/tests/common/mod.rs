//! Shared by the kernel tests, the gemv4 GPU bench and the kit examples (the last ones include this
//! file by path).

/// The named format `name` (panics naming it when there is none).
#[allow(dead_code)] // not every includer names formats
pub fn fmt(name: &str) -> qc_ir::QuantType {
    qc_ir::quant::named_format(name)
        .unwrap_or_else(|| panic!("no format {name}"))
        .ty
        .clone()
}

/// `n` deterministic pseudo-random numbers in [-1, 1) (xorshift64 from `seed`).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// The 4-bit weight formats that the GEMV and the bf16 GEMM (`gemv4`, `mma4`) read, by name.
#[allow(dead_code)] // used by the 4-bit weight tests only
pub const W4_FORMATS: [&str; 8] = [
    "int4_g32",
    "int4_g128",
    "int4_channel",
    "mxfp4",
    "nvfp4",
    "nvfp4_torchao",
    "nvfp4_ct",
    "nvint4",
];

/// `n * k` weights (`noise` from seed 7) whose magnitude grows from row to row, in five steps of
/// 0.05.
#[allow(dead_code)] // used by the GEMM and GEMV tests only
pub fn graded_rows(n: usize, k: usize) -> Vec<f32> {
    noise(n * k, 7)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 0.05 * (1 + (i / k) % 5) as f32)
        .collect()
}

/// `n` values (`noise` from `seed`) of three magnitudes in turn: 1, `big` and 0.01.
#[allow(dead_code)] // used by the GEMM tests only
pub fn three_magnitudes(n: usize, seed: u64, big: f32) -> Vec<f32> {
    noise(n, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * [1.0, big, 0.01][i % 3])
        .collect()
}

/// `rows * k` values (`noise` from `seed`, times `scale`) whose magnitude changes by a power of two
/// from one block of 16 to the next along K and by `step` blocks' worth from row to row, cycling
/// through `span` powers of two around 1.
#[allow(dead_code)] // used by the block-scaled GEMM tests only
pub fn blockwise_values(
    rows: usize,
    k: usize,
    seed: u64,
    step: usize,
    span: usize,
    scale: f32,
) -> Vec<f32> {
    let pow2 = |e: usize| 2f32.powi((e % span) as i32 - (span as i32) / 2);
    noise(rows * k, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * scale * pow2((i / k) * step + (i % k) / 16))
        .collect()
}

/// Checks `y[m, n]` against the f64 product of `w[n, k]` and `x[m, k]`: each element within `tol`
/// of the sum of its products' magnitudes; the largest such relative error.
#[allow(dead_code)] // used by the GEMM tests only
pub fn check_product(
    y: &[f32],
    w: &[f32],
    x: &[f32],
    (m, n, k): (usize, usize, usize),
    tol: f64,
    what: &str,
) -> f64 {
    assert_eq!(y.len(), m * n, "{what}");
    let mut worst = 0f64;
    for (i, &got) in y.iter().enumerate() {
        let (mm, row) = (i / n, i % n);
        let terms = (0..k).map(|j| w[row * k + j] as f64 * x[mm * k + j] as f64);
        let want: f64 = terms.clone().sum();
        let mag: f64 = terms.map(f64::abs).sum();
        let err = (got as f64 - want).abs() / mag.max(1e-30);
        worst = worst.max(err);
        assert!(
            err <= tol,
            "{what}: y[{mm}][{row}] = {got}, reference {want} (err {err:e})"
        );
    }
    worst
}

/// A product case of the 4-bit kernels with f32 activations (`gemv4`, `mma4`, `tcgen05`'s W4A16):
/// weights of format `f` quantized by qc_quant (its blob and dequantized weights) and the
/// activations.
#[allow(dead_code)] // used by the 4-bit weight tests only
pub struct Case4 {
    /// The weights' blob.
    pub blob: Vec<u8>,
    /// qc_quant's dequantized weights `[n, k]`.
    pub wd: Vec<f32>,
    /// The f32 activations `[m, k]`.
    pub x: Vec<f32>,
    m: usize,
    n: usize,
    k: usize,
}

#[allow(dead_code)]
impl Case4 {
    /// The case for the weights' values `wv[n, k]` in format `f` and the activations `x[m, k]`.
    pub fn new(
        f: &qc_ir::QuantType,
        m: usize,
        n: usize,
        k: usize,
        wv: &[f32],
        x: Vec<f32>,
    ) -> Case4 {
        assert_eq!((wv.len(), x.len()), (n * k, m * k));
        let q = qc_quant::quantize(wv, &[n, k], f, &qc_quant::QuantizeOptions::default()).unwrap();
        Case4 {
            blob: qc_quant::blob::to_blob(&q).unwrap(),
            wd: qc_quant::dequantize(&q).unwrap(),
            x,
            m,
            n,
            k,
        }
    }

    /// Checks `y` of a kernel that splits the activations into bf16 hi + lo terms against the f64
    /// product: hi + lo carry 16 significant bits, about 2^-17 of each term plus f32 sums, so each
    /// element within `2e-5` of the sum of its products' magnitudes; and one bf16 term alone would
    /// be off by up to 2^-9, so the worst under `1e-4` shows the split is what keeps it close.
    pub fn check_hi_lo(&self, y: &[f32], what: &str) {
        let worst = check_product(y, &self.wd, &self.x, (self.m, self.n, self.k), 2e-5, what);
        assert!(worst < 1e-4, "{what}: {worst}");
    }
}

/// The ptxas the checks assemble with, or `None` (the check skipped, with a note) when there is
/// none and `QC_ALLOW_NO_PTXAS=1`; panics otherwise.
#[allow(dead_code)] // not every includer checks PTX
pub fn ptxas_or_skip() -> Option<std::path::PathBuf> {
    match qc_backend_ptx::ptxas::find_ptxas() {
        Ok(p) => Some(p),
        Err(e) if std::env::var("QC_ALLOW_NO_PTXAS").as_deref() == Ok("1") => {
            eprintln!("note: QC_ALLOW_NO_PTXAS=1 and {e}; ptxas checks skipped");
            None
        }
        Err(e) => panic!("{e}\n(set QC_ALLOW_NO_PTXAS=1 to skip the ptxas checks)"),
    }
}

/// A product case of the 8-bit GEMMs (`mma8`, `wgmma8`): weights of format `w` quantized by
/// qc_quant, activations over several magnitudes (some round to FP8 subnormals or zero) with their
/// per-tensor maximum, and the reference operands: qc_quant's dequantized weights and its
/// quantized-and-dequantized activations (format `a`, that static maximum).
#[allow(dead_code)] // used by the 8-bit GEMM tests only
pub struct Case8 {
    /// The weights' blob.
    pub blob: Vec<u8>,
    /// The f32 activations the kernel reads.
    pub x: Vec<f32>,
    /// The activation scale (`FakeQuantPt::scale` of the maximum) for per-tensor formats; the
    /// maximum itself for block formats (the FP4 kernels' static tensor maximum).
    pub sa: f32,
    wd: Vec<f32>,
    xd: Vec<f32>,
    m: usize,
    n: usize,
    k: usize,
}

#[allow(dead_code)]
impl Case8 {
    /// The case `y[m, n]` for weight format `w` and activation format `a`.
    pub fn new(w: &qc_ir::QuantType, a: &qc_ir::QuantType, m: usize, n: usize, k: usize) -> Case8 {
        let (wv, x) = (graded_rows(n, k), three_magnitudes(m * k, 11, 30.0));
        Case8::from_values(w, a, m, n, k, wv, x)
    }

    /// A W4A4 case (format `f` for both) whose magnitudes change from one block of 16 to the next
    /// (by powers of two, along K and across rows), so that every scale byte of a k-step differs
    /// from its neighbours' and a scale read from the wrong block, row or column changes the
    /// result.
    pub fn blockwise(f: &qc_ir::QuantType, m: usize, n: usize, k: usize) -> Case8 {
        let wv = blockwise_values(n, k, 5, 3, 7, 0.05);
        let x = blockwise_values(m, k, 13, 5, 9, 1.0);
        Case8::from_values(f, f, m, n, k, wv, x)
    }

    /// The case for the weights' values `wv[n, k]` and the activations `x[m, k]`.
    pub fn from_values(
        w: &qc_ir::QuantType,
        a: &qc_ir::QuantType,
        m: usize,
        n: usize,
        k: usize,
        wv: Vec<f32>,
        x: Vec<f32>,
    ) -> Case8 {
        use qc_quant::{quantize, QuantizeOptions};
        assert_eq!((wv.len(), x.len()), (n * k, m * k));
        let q = quantize(&wv, &[n, k], w, &QuantizeOptions::default()).unwrap();
        let amax = x.iter().fold(0f32, |acc, v| acc.max(v.abs()));
        let opts = QuantizeOptions {
            tensor_amax: Some(amax),
            ..Default::default()
        };
        let xd = qc_quant::dequantize(&quantize(&x, &[m, k], a, &opts).unwrap()).unwrap();
        Case8 {
            blob: qc_quant::blob::to_blob(&q).unwrap(),
            sa: qc_backend_ptx::fquant::FakeQuantPt::classify(a).map_or(amax, |s| s.scale(amax)),
            x,
            wd: qc_quant::dequantize(&q).unwrap(),
            xd,
            m,
            n,
            k,
        }
    }

    /// Checks `y` against the f64 reference: within `1e-6` of the sum of the products' magnitudes.
    pub fn check(&self, y: &[f32], what: &str) {
        check_product(y, &self.wd, &self.xd, (self.m, self.n, self.k), 1e-6, what);
    }
}

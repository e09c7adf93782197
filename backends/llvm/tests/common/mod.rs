//! Helpers shared by the GEMV (`tests/gemv.rs`) and GEMM (`tests/gemm.rs`) kernel tests: random
//! weights, activations and blobs, error norms, the formats under test and the host's targets.

use qc_backend_llvm::gemv::{named, SUPPORTED_NAMED_FORMATS};
use qc_backend_llvm::CpuTarget;
use qc_ir::quant::{Encoding, QuantType, ScaleRule, ScaleType, Scheme};
use qc_quant::blob::to_blob;
use qc_quant::{quantize, QuantizeOptions};

/// A small deterministic generator (xorshift64*), so the tests need no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Roughly Gaussian (sum of four uniforms), with an occasional outlier and per-row magnitudes, so
    /// that groups get different scales.
    pub fn weight(&mut self, row_scale: f32) -> f32 {
        let g = (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.5;
        let outlier = if self.next().is_multiple_of(97) {
            6.0
        } else {
            1.0
        };
        g * outlier * row_scale
    }
}

/// `n x k` random weights (row `i` scaled by `0.01 * (1 + i % 7)`).
pub fn weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    let mut w = Vec::with_capacity(n * k);
    for i in 0..n {
        let rs = 0.01 * (1.0 + (i % 7) as f32);
        for _ in 0..k {
            w.push(r.weight(rs));
        }
    }
    w
}

/// `len` random activations, uniform in [-2, 2).
pub fn activations(len: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed.wrapping_mul(7) | 1);
    (0..len).map(|_| r.uniform() * 2.0).collect()
}

/// The blob of [`weights`] `(n, k, seed)` quantized to `fmt`.
pub fn blob_of(fmt: &QuantType, n: usize, k: usize, seed: u64) -> Vec<u8> {
    let w = weights(n, k, seed);
    let q = quantize(&w, &[n, k], fmt, &QuantizeOptions::default())
        .unwrap_or_else(|e| panic!("{fmt}: {e}"));
    to_blob(&q).unwrap()
}

/// `||y - r||_2 / ||r||_2`.
pub fn rel_l2(y: &[f32], r: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in y.iter().zip(r) {
        num += (a as f64 - b) * (a as f64 - b);
        den += b * b;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// `||y - r||_2`.
#[allow(dead_code)]
pub fn abs_l2(y: &[f32], r: &[f64]) -> f64 {
    y.iter()
        .zip(r)
        .map(|(&a, &b)| (a as f64 - b) * (a as f64 - b))
        .sum::<f64>()
        .sqrt()
}

/// `||v||_2`.
pub fn l2(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// Per output, the sum over K of |w x| (the scale of the f32 rounding errors, which cancellation does
/// not reduce), `m x n` for `x` holding `m` rows of `k`.
pub fn abs_products(
    fmt: &QuantType,
    n: usize,
    k: usize,
    blob: &[u8],
    x: &[f32],
    m: usize,
) -> Vec<f64> {
    let q = qc_quant::blob::from_blob(blob, fmt, &[n, k], "W").unwrap();
    let w = qc_quant::dequantize(&q).unwrap();
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            out.push(
                w[j * k..(j + 1) * k]
                    .iter()
                    .zip(&x[i * k..(i + 1) * k])
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum(),
            );
        }
    }
    out
}

/// The bits of `v`, to compare results exactly (NaN included).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every named format the kernels support, with its name.
pub fn supported_formats() -> Vec<(&'static str, QuantType)> {
    SUPPORTED_NAMED_FORMATS
        .iter()
        .map(|&n| (n, named(n).unwrap().clone()))
        .collect()
}

/// Formats that are not named but exercise the remaining paths: f16 and bf16 scales, a group of 64,
/// groups of 8 (one lane per group for 4-bit codes, several groups per vector or block for 8-bit
/// minifloats), unsigned 4-bit codes.
pub fn custom_formats() -> Vec<(&'static str, QuantType)> {
    let g = |size| Scheme::Group { size, axis: -1 };
    let mut int4_g64_bf16 = QuantType::new(Encoding::I4, g(64), ScaleType::BF16, ScaleRule::Amax);
    int4_g64_bf16.pack = qc_ir::quant::Packing::LoFirst;
    let int8_row_f16 = QuantType::new(
        Encoding::I8,
        Scheme::PerChannel { axis: 0 },
        ScaleType::F16,
        ScaleRule::Amax,
    );
    let fp8_g8_f16 = QuantType::new(Encoding::E4M3FN, g(8), ScaleType::F16, ScaleRule::Amax);
    let mut e2m1_g8 = QuantType::new(Encoding::E2M1, g(8), ScaleType::F32, ScaleRule::Amax);
    e2m1_g8.pack = qc_ir::quant::Packing::LoFirst;
    // Unsigned 4-bit codes without a zero point (negative weights clamp to 0; the kernel must agree).
    let mut u4_g32 = QuantType::new(Encoding::U4, g(32), ScaleType::F32, ScaleRule::Amax);
    u4_g32.pack = qc_ir::quant::Packing::LoFirst;
    vec![
        ("int4_g64_bf16", int4_g64_bf16),
        ("u4_g32_f32", u4_g32),
        ("int8_row_f16", int8_row_f16),
        ("e4m3_g8_f16", fp8_g8_f16),
        ("e2m1_g8_f32", e2m1_g8),
    ]
}

/// The group size of `fmt` (1 for per-tensor and per-row scales).
pub fn group_of(fmt: &QuantType) -> usize {
    match fmt.scheme {
        Scheme::Group { size, .. } => size as usize,
        _ => 1,
    }
}

/// The targets the host runs (a note on stderr when that is not all of them).
pub fn host_targets() -> Vec<CpuTarget> {
    let t: Vec<_> = CpuTarget::ALL
        .into_iter()
        .filter(|t| t.host_supports())
        .collect();
    if t.len() < CpuTarget::ALL.len() {
        eprintln!("note: host runs only {t:?}; the other targets are compiled but not run");
    }
    t
}

/// A rayon pool of `n` threads.
pub fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
}

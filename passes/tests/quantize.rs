//! Measuring tests of the `quantize` pass: the merged clip-search tensor decodes as its parts, the clip
//! search never raises the weight MSE (and lowers it for int4_g128 on weights with outliers), and the
//! rewritten module computes the float one within the error the format's QSNR allows.

use qc_ir::pass::{Pass, PassContext};
use qc_ir::quant::named_format;
use qc_ir::types::ElemType;
use qc_ir::{parse_module, Module, Registry, Source};
use qc_passes::quantize::{merge_groups, quantize_weight, Clip, Quantize, CLIP_RATIOS};
use qc_quant::tensor::{dequantize, qsnr_db, quantize, QuantizeOptions};
use qc_runtime::exec::run_func;
use qc_runtime::interp::{Data, Tensor};

const K: usize = 256;
const N: usize = 64;
const M: usize = 8;

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
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A [K, N] Gaussian weight (std 0.02) with a few large outliers.
fn weight_kn(seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    let mut w: Vec<f32> = (0..K * N).map(|_| (0.02 * r.gauss()) as f32).collect();
    for i in 0..24 {
        let at = (r.next_u64() as usize) % w.len();
        w[at] = if i % 2 == 0 { 0.25 } else { -0.2 } * (1.0 + r.uniform() as f32);
    }
    w
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = w[i * cols + j];
        }
    }
    t
}

fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

const FORMATS: [&str; 10] = [
    "nvfp4",
    "nvint4",
    "mxfp4",
    "int4_g128",
    "int4_g32",
    "int4_channel",
    "fp8_e4m3",
    "fp8_e4m3_channel",
    "int8_g128",
    "uint4_g128",
];

#[test]
fn merged_tensor_dequantizes_exactly_as_its_parts() {
    let w = transpose(&weight_kn(1), K, N);
    let shape = [N, K];
    for name in FORMATS {
        let fmt = &named_format(name).unwrap().ty;
        let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let opts = QuantizeOptions {
            tensor_amax: Some(amax),
            ..QuantizeOptions::default()
        };
        let index = qc_quant::tensor::scale_indices(&fmt.scheme, &shape, "w").unwrap();
        let parts: Vec<_> = [1.0f32, 0.8, 0.6]
            .iter()
            .map(|&r| {
                let c: Vec<f32> = w.iter().map(|&v| v.clamp(-r * amax, r * amax)).collect();
                quantize(&c, &shape, fmt, &opts).unwrap()
            })
            .collect();
        let n_groups = parts[0].scales.len();
        assert_eq!(index.iter().max().unwrap() + 1, n_groups, "{name}");
        let choice: Vec<usize> = (0..n_groups).map(|s| (s * 7 + s / 3) % 3).collect();
        let merged = merge_groups(&parts, &choice, &index).unwrap();
        let dm = dequantize(&merged).unwrap();
        let dp: Vec<Vec<f32>> = parts.iter().map(|p| dequantize(p).unwrap()).collect();
        for (i, &s) in index.iter().enumerate() {
            assert_eq!(
                dm[i].to_bits(),
                dp[choice[s]][i].to_bits(),
                "{name}: element {i}"
            );
        }
        // The merged tensor survives its blob layout.
        let blob = qc_quant::blob::to_blob(&merged).unwrap();
        let back = qc_quant::blob::from_blob(&blob, fmt, &shape, "w").unwrap();
        assert_eq!(dequantize(&back).unwrap(), dm, "{name}");
        // Mixing groups really happened (otherwise the check above proves little).
        if n_groups >= 3 {
            assert!(dp[0] != dm && dp[1] != dm, "{name}");
        }
    }
}

#[test]
fn clip_search_never_raises_the_weight_mse_and_lowers_it_for_int4_g128() {
    let w = transpose(&weight_kn(2), K, N);
    let shape = [N, K];
    assert_eq!(CLIP_RATIOS[0], 1.0);
    for name in FORMATS {
        let fmt = &named_format(name).unwrap().ty;
        let none = quantize_weight(&w, &shape, fmt, Clip::None, "w").unwrap();
        let mse_q = quantize_weight(&w, &shape, fmt, Clip::Mse, "w").unwrap();
        let (e_none, e_mse) = (
            mse(&w, &dequantize(&none).unwrap()),
            mse(&w, &dequantize(&mse_q).unwrap()),
        );
        eprintln!(
            "{name}: weight mse none {e_none:.4e} mse {e_mse:.4e} ratio {:.3}",
            e_mse / e_none
        );
        assert!(e_mse <= e_none, "{name}: {e_mse} > {e_none}");
        if name == "int4_g128" {
            // Measured: about 0.87 on this weight; a clip search that does nothing gives 1.0.
            assert!(e_mse < 0.95 * e_none, "{name}: {e_mse} vs {e_none}");
        }
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(qc_nn::dialect());
    r.register(qc_quant::ops::dialect());
    r
}

/// `y = x @ w` with w a [K, N] f32 dense_resource.
fn module(w: &[f32], reg: &Registry) -> Module {
    let hex: String = [16u8, 0, 0, 0]
        .into_iter()
        .chain(w.iter().flat_map(|v| v.to_le_bytes()))
        .map(|b| format!("{b:02X}"))
        .collect();
    let text = format!(
        "func.func @f(%x: tensor<{M}x{K}xf32>) -> tensor<{M}x{N}xf32> {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<{K}x{N}xf32>
  %y = nn.matmul %x, %w : (tensor<{M}x{K}xf32>, tensor<{K}x{N}xf32>) -> tensor<{M}x{N}xf32>
  return %y : tensor<{M}x{N}xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{hex}\" }} }} #-}}"
    );
    parse_module(&text, &Source::named("t"), reg).unwrap()
}

fn run(m: &Module, x: &[f64]) -> Vec<f32> {
    let t = Tensor::new(vec![M, K], ElemType::F32, Data::F(x.to_vec()));
    let out = run_func(m, "f", vec![t]).unwrap();
    (0..M * N).map(|i| out[0].data.f(i) as f32).collect()
}

#[test]
fn quantized_module_matches_the_float_one_within_the_format_qsnr() {
    let reg = registry();
    let w = weight_kn(3);
    let mut r = Rng(4);
    let x: Vec<f64> = (0..M * K).map(|_| r.gauss() as f32 as f64).collect();
    let float = module(&w, &reg);
    let y = run(&float, &x);
    // Per format: the weight QSNR (dB) it must reach here (measured: nvfp4 21.0, mxfp4 16.7, int4_g128
    // 12.8, int4_g32 17.0, fp8_e4m3 32.0, minus a margin). The output error of a random input tracks the
    // weight error (measured ratio 0.92 to 0.98); it must stay below 1.5 times 10^(-QSNR/20).
    for (name, min_qsnr) in [
        ("nvfp4", 17.0),
        ("mxfp4", 14.0),
        ("int4_g128", 12.0),
        ("int4_g32", 15.0),
        ("fp8_e4m3", 29.0),
    ] {
        let fmt = named_format(name).unwrap().ty.clone();
        let mut m = float.clone();
        let pass = Quantize {
            format: fmt.clone(),
            clip: Clip::Mse,
            keep_float: None,
        };
        let changed = pass.run(&mut m, &PassContext::new(&reg)).unwrap();
        assert!(matches!(changed, qc_ir::pass::Changed::Yes), "{name}");
        qc_ir::verify_module(&m).unwrap();
        let printed = qc_ir::print_module(&m, qc_ir::PrintOptions::dump());
        assert!(
            printed.contains("quant.matmul") && !printed.contains("nn.matmul"),
            "{name}"
        );
        assert!(
            m.resources.get("w").is_none() && m.resources.get("w.q").is_some(),
            "{name}"
        );
        // The weight QSNR of what the pass stored.
        let q = quantize_weight(&transpose(&w, K, N), &[N, K], &fmt, Clip::Mse, "w").unwrap();
        let w_qsnr = qsnr_db(&transpose(&w, K, N), &dequantize(&q).unwrap());
        let yq = run(&m, &x);
        let num: f64 = y
            .iter()
            .zip(&yq)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let den: f64 = y.iter().map(|&a| (a as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        let bound = 1.5 * 10f64.powf(-w_qsnr / 20.0);
        eprintln!(
            "{name}: weight QSNR {w_qsnr:.2} dB, output relative error {rel:.4}, bound {bound:.4}"
        );
        assert!(w_qsnr >= min_qsnr, "{name}: weight QSNR {w_qsnr}");
        assert!(rel < bound, "{name}: relative error {rel} >= {bound}");
        assert!(
            rel < 3.0 * 10f64.powf(-min_qsnr / 20.0),
            "{name}: relative error {rel}"
        );
    }
}

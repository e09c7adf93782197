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
        let pass = Quantize::weight_only(fmt.clone(), Clip::Mse);
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

// ---- gemm and conv weights ------------------------------------------------------------------------

fn hex_resource(v: &[f32]) -> String {
    [16u8, 0, 0, 0]
        .into_iter()
        .chain(v.iter().flat_map(|x| x.to_le_bytes()))
        .map(|b| format!("{b:02X}"))
        .collect()
}

fn rel_err(y: &[f32], yq: &[f32], reference: &[f32]) -> f64 {
    let num: f64 = y
        .iter()
        .zip(yq)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|&a| (a as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn run_outputs(m: &Module, inputs: Vec<Tensor>) -> Vec<Vec<f32>> {
    run_func(m, "f", inputs)
        .unwrap()
        .into_iter()
        .map(|t| (0..t.len()).map(|i| t.data.f(i) as f32).collect())
        .collect()
}

fn f32_tensor(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::new(
        shape.to_vec(),
        ElemType::F32,
        Data::F(v.iter().map(|&x| x as f64).collect()),
    )
}

fn quantize_module(m: &Module, pass: &Quantize) -> Module {
    let reg = registry();
    let mut q = m.clone();
    pass.run(&mut q, &PassContext::new(&reg)).unwrap();
    qc_ir::verify_module(&q).unwrap();
    q
}

/// The QSNR of `w` ([N, K] row-major) quantized as the pass does.
fn weight_qsnr(nk: &[f32], n: usize, k: usize, fmt: &qc_ir::quant::QuantType) -> f64 {
    let q = quantize_weight(nk, &[n, k], fmt, Clip::Mse, "w").unwrap();
    qsnr_db(nk, &dequantize(&q).unwrap())
}

#[test]
fn gemm_results_match_the_float_gemm_within_the_format_qsnr() {
    let reg = registry();
    let w = weight_kn(11); // [K, N]
    let wt = transpose(&weight_kn(13), K, N); // another weight, stored [N, K]
    let mut r = Rng(12);
    let c: Vec<f32> = (0..N).map(|_| r.gauss() as f32).collect();
    let x: Vec<f32> = (0..M * K).map(|_| r.gauss() as f32).collect();
    let text = format!(
        "func.func @f(%x: tensor<{M}x{K}xf32>) -> (tensor<{M}x{N}xf32>, tensor<{M}x{N}xf32>) {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<{K}x{N}xf32>
  %wt = qc.constant {{value = dense_resource<wt>}} : () -> tensor<{N}x{K}xf32>
  %c = qc.constant {{value = dense_resource<c>}} : () -> tensor<{N}xf32>
  %y = nn.gemm %x, %w, %c {{alpha = 2.0, beta = 0.5}} : (tensor<{M}x{K}xf32>, tensor<{K}x{N}xf32>, tensor<{N}xf32>) -> tensor<{M}x{N}xf32>
  %z = nn.gemm %x, %wt, %c {{trans_b = 1}} : (tensor<{M}x{K}xf32>, tensor<{N}x{K}xf32>, tensor<{N}xf32>) -> tensor<{M}x{N}xf32>
  return %y, %z : tensor<{M}x{N}xf32>, tensor<{M}x{N}xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{}\", wt: \"0x{}\", c: \"0x{}\" }} }} #-}}",
        hex_resource(&w),
        hex_resource(&wt),
        hex_resource(&c)
    );
    let float = parse_module(&text, &Source::named("t"), &reg).unwrap();
    let ins = || vec![f32_tensor(&[M, K], &x)];
    let y = run_outputs(&float, ins());
    // The products alone (what the weight error scales): y - beta * c.
    let prod = |out: &[f32], beta: f32| -> Vec<f32> {
        out.iter()
            .enumerate()
            .map(|(i, &v)| v - beta * c[i % N])
            .collect()
    };
    for (name, min_qsnr) in [("nvfp4", 17.0), ("int4_g128", 12.0), ("fp8_e4m3", 29.0)] {
        let fmt = named_format(name).unwrap().ty.clone();
        let q = quantize_module(&float, &Quantize::weight_only(fmt.clone(), Clip::Mse));
        let printed = qc_ir::print_module(&q, qc_ir::PrintOptions::dump());
        assert_eq!(printed.matches("quant.dequantize").count(), 2, "{name}");
        assert!(
            q.resources.get("w").is_none() && q.resources.get("wt").is_none(),
            "{name}: the float weights are still there"
        );
        let yq = run_outputs(&q, ins());
        // Output 0 uses w (stored [K, N]), output 1 uses wt (stored [N, K]): both quantized as [N, K].
        for (o, (nk, beta)) in [(transpose(&w, K, N), 0.5f32), (wt.clone(), 1.0)]
            .into_iter()
            .enumerate()
        {
            let qs = weight_qsnr(&nk, N, K, &fmt);
            let rel = rel_err(&y[o], &yq[o], &prod(&y[o], beta));
            let bound = 1.5 * 10f64.powf(-qs / 20.0);
            eprintln!("gemm {o} {name}: weight QSNR {qs:.2} dB, relative error {rel:.4}, bound {bound:.4}");
            assert!(qs >= min_qsnr, "{name}: {qs}");
            assert!(
                rel < bound && rel > 0.0,
                "{name} output {o}: {rel} vs {bound}"
            );
        }
    }
}

#[test]
fn conv_results_match_the_float_conv_within_the_format_qsnr() {
    let reg = registry();
    // [16, 16, 3, 3]: K = 144 per output channel (9 groups of 16); a grouped conv [16, 8, 3, 3] (K = 72).
    let mut r = Rng(21);
    let k1: Vec<f32> = (0..16 * 144).map(|_| (0.1 * r.gauss()) as f32).collect();
    let k2: Vec<f32> = (0..16 * 72).map(|_| (0.1 * r.gauss()) as f32).collect();
    let x: Vec<f32> = (0..2 * 16 * 36).map(|_| r.gauss() as f32).collect();
    let conv = |name: &str, w: &str, c: usize, g: usize| {
        format!("%{name} = nn.conv %x, %{w}, %b {{dilations = [1, 1], group = {g}, kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [1, 1]}} : (tensor<2x16x6x6xf32>, tensor<16x{c}x3x3xf32>, tensor<16xf32>) -> tensor<2x16x6x6xf32>")
    };
    let text = format!(
        "func.func @f(%x: tensor<2x16x6x6xf32>) -> (tensor<2x16x6x6xf32>, tensor<2x16x6x6xf32>) {{
  %k1 = qc.constant {{value = dense_resource<k1>}} : () -> tensor<16x16x3x3xf32>
  %k2 = qc.constant {{value = dense_resource<k2>}} : () -> tensor<16x8x3x3xf32>
  %b = qc.constant {{value = dense<0.0>}} : () -> tensor<16xf32>
  {}
  {}
  return %y, %z : tensor<2x16x6x6xf32>, tensor<2x16x6x6xf32>
}}
{{-# dialect_resources: {{ qc: {{ k1: \"0x{}\", k2: \"0x{}\" }} }} #-}}",
        conv("y", "k1", 16, 1),
        conv("z", "k2", 8, 2),
        hex_resource(&k1),
        hex_resource(&k2)
    );
    let float = parse_module(&text, &Source::named("t"), &reg).unwrap();
    let ins = || vec![f32_tensor(&[2, 16, 6, 6], &x)];
    let y = run_outputs(&float, ins());
    for name in ["int8_channel", "int4_channel", "fp8_e4m3_channel", "nvfp4"] {
        let fmt = named_format(name).unwrap().ty.clone();
        let q = quantize_module(&float, &Quantize::weight_only(fmt.clone(), Clip::Mse));
        let printed = qc_ir::print_module(&q, qc_ir::PrintOptions::dump());
        // nvfp4's groups of 16 do not divide the grouped conv's K = 72: that one stays float.
        let expect = if name == "nvfp4" { 1 } else { 2 };
        assert_eq!(
            printed.matches("nn.reshape").count(),
            expect,
            "{name}\n{printed}"
        );
        let yq = run_outputs(&q, ins());
        for (o, (w, kk)) in [(&k1, 144usize), (&k2, 72)].into_iter().enumerate() {
            let rel = rel_err(&y[o], &yq[o], &y[o]);
            if o == 1 && name == "nvfp4" {
                assert_eq!(rel, 0.0, "{name}: the float conv changed");
                continue;
            }
            // The stored layout [N, C/group, 3, 3] is already [N, K] row-major.
            let qs = weight_qsnr(w, 16, kk, &fmt);
            let bound = 1.5 * 10f64.powf(-qs / 20.0);
            eprintln!("conv {o} {name}: weight QSNR {qs:.2} dB, relative error {rel:.4}, bound {bound:.4}");
            assert!(
                rel < bound && rel > 0.0,
                "{name} output {o}: {rel} vs {bound}"
            );
        }
    }
}

// ---- activation quantization ----------------------------------------------------------------------

fn calibrate_with(m: &mut Module, arrays: &[(String, qc_runtime::npy::NpyArray)], tag: &str) {
    let arrays: Vec<(&str, qc_runtime::npy::NpyArray)> = arrays
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    let p = std::env::temp_dir().join(format!("qc-quantize-{}-{tag}.npz", std::process::id()));
    std::fs::write(&p, qc_runtime::npy::to_npz_bytes(&arrays).unwrap()).unwrap();
    let reg = registry();
    qc_passes::calibrate::Calibrate {
        data: p.clone(),
        max_runs: None,
        xtx_budget: qc_passes::calibrate::XTX_BUDGET,
    }
    .run(m, &PassContext::new(&reg))
    .unwrap();
    let _ = std::fs::remove_file(p);
}

fn calibrate_module(m: &mut Module, xs: &[Vec<f32>], rows: usize, tag: &str) {
    let arrays: Vec<(String, qc_runtime::npy::NpyArray)> = xs
        .iter()
        .enumerate()
        .map(|(r, x)| {
            (
                format!("x.{r}"),
                qc_runtime::npy::NpyArray::f32(vec![rows, K], x.clone()),
            )
        })
        .collect();
    calibrate_with(m, &arrays, tag);
}

fn layer_amax(m: &Module, kind: &str) -> f32 {
    let f = &m.funcs[0];
    let op = f.ops.iter().find(|o| o.name() == kind).unwrap();
    qc_passes::calib::read(m, op).unwrap().amax
}

/// Activations: Gaussian with one channel eight times larger (the outlier channel of LLM activations).
fn activations(seed: u64, rows: usize) -> Vec<f32> {
    let mut r = Rng(seed);
    (0..rows * K)
        .map(|i| {
            let v = r.gauss() as f32;
            if i % K == 5 {
                8.0 * v
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn activation_quantization_error_is_bounded_by_the_weight_and_activation_qsnr() {
    let reg = registry();
    let w = weight_kn(31);
    // Dynamic rows (see tests/passes/calibrate/all-kinds.qir for why the batch is dynamic).
    let text = format!(
        "func.func @f(%x: tensor<?x{K}xf32>) -> tensor<?x{N}xf32> {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<{K}x{N}xf32>
  %y = nn.matmul %x, %w : (tensor<?x{K}xf32>, tensor<{K}x{N}xf32>) -> tensor<?x{N}xf32>
  return %y : tensor<?x{N}xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{}\" }} }} #-}}",
        hex_resource(&w)
    );
    let float = parse_module(&text, &Source::named("t"), &reg).unwrap();
    let mut calibrated = float.clone();
    let calib_x: Vec<Vec<f32>> = (0..4).map(|r| activations(40 + r, 16)).collect();
    calibrate_module(&mut calibrated, &calib_x, 16, "act");
    let stats = {
        let f = &calibrated.funcs[0];
        let op = f.ops.iter().find(|o| o.name() == "nn.matmul").unwrap();
        qc_passes::calib::read(&calibrated, op).unwrap()
    };
    // Held-out input from the same distribution (a few values beyond the calibrated amax saturate).
    let x = activations(99, M);
    let ins = || vec![f32_tensor(&[M, K], &x)];
    let y = run_outputs(&float, ins()).remove(0);
    let wt = transpose(&w, K, N);
    for (wname, aname) in [
        ("fp8_e4m3", "fp8_e4m3"),
        ("nvfp4", "nvfp4"),
        ("int4_g128", "int8"),
        ("mxfp4", "mxfp8"),
    ] {
        let (wf, af) = (
            named_format(wname).unwrap().ty.clone(),
            named_format(aname).unwrap().ty.clone(),
        );
        let weight_only =
            quantize_module(&calibrated, &Quantize::weight_only(wf.clone(), Clip::Mse));
        let mut pass = Quantize::weight_only(wf.clone(), Clip::Mse);
        pass.activation = Some(af.clone());
        let q = quantize_module(&calibrated, &pass);
        let printed = qc_ir::print_module(&q, qc_ir::PrintOptions::dump());
        assert!(printed.contains("quant.quantize %x"), "{printed}");
        let static_amax = af.scheme == qc_ir::quant::Scheme::PerTensor
            || af.tensor_scale != qc_ir::quant::TensorScale::None;
        assert_eq!(
            printed.contains("quant.quantize %x {amax = "),
            static_amax,
            "{aname}"
        );
        // The activation error, computed here with the calibrated static amax.
        let opts = QuantizeOptions {
            tensor_amax: Some(stats.amax),
            ..QuantizeOptions::default()
        };
        let xq = dequantize(&quantize(&x, &[M, K], &af, &opts).unwrap()).unwrap();
        let a_qsnr = qsnr_db(&x, &xq);
        let w_qsnr = weight_qsnr(&wt, N, K, &wf);
        let yq = run_outputs(&q, ins()).remove(0);
        let yw = run_outputs(&weight_only, ins()).remove(0);
        let rel = rel_err(&y, &yq, &y);
        let rel_w = rel_err(&y, &yw, &y);
        let expect = (10f64.powf(-a_qsnr / 10.0) + 10f64.powf(-w_qsnr / 10.0)).sqrt();
        eprintln!(
            "w={wname} a={aname}: weight QSNR {w_qsnr:.2} dB, activation QSNR {a_qsnr:.2} dB (amax {}), \
             output relative error {rel:.4} (weight-only {rel_w:.4}), bound {:.4}",
            stats.amax,
            1.5 * expect
        );
        assert!(rel < 1.5 * expect, "{wname}/{aname}: {rel} vs {expect}");
        // Quantizing the activation really adds its error.
        assert!(rel > rel_w, "{wname}/{aname}: {rel} <= weight-only {rel_w}");
        // And exactly as specified: x quantized with amax, decoded, times the decoded weights, f64 sums.
        let wq = quantize_weight(&wt, &[N, K], &wf, Clip::Mse, "w").unwrap();
        let wd = dequantize(&wq).unwrap();
        for i in 0..M {
            for j in 0..N {
                let s: f64 = (0..K)
                    .map(|p| xq[i * K + p] as f64 * wd[j * K + p] as f64)
                    .sum();
                assert_eq!(yq[i * N + j], s as f32, "{wname}/{aname} ({i}, {j})");
            }
        }
    }
}

#[test]
fn activation_quantization_of_gemm_and_conv_is_qdq_in_front_of_the_op() {
    let reg = registry();
    let w = weight_kn(51);
    let mut r = Rng(52);
    let c: Vec<f32> = (0..N).map(|_| r.gauss() as f32).collect();
    let k: Vec<f32> = (0..16 * 144).map(|_| (0.1 * r.gauss()) as f32).collect();
    let text = format!(
        "func.func @f(%x: tensor<?x{K}xf32>, %img: tensor<?x16x6x6xf32>) -> (tensor<?x{N}xf32>, tensor<?x16x6x6xf32>) {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<{K}x{N}xf32>
  %c = qc.constant {{value = dense_resource<c>}} : () -> tensor<{N}xf32>
  %y = nn.gemm %x, %w, %c : (tensor<?x{K}xf32>, tensor<{K}x{N}xf32>, tensor<{N}xf32>) -> tensor<?x{N}xf32>
  %k = qc.constant {{value = dense_resource<k>}} : () -> tensor<16x16x3x3xf32>
  %b = qc.constant {{value = dense<0.0>}} : () -> tensor<16xf32>
  %v = nn.conv %img, %k, %b {{dilations = [1, 1], group = 1, kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [1, 1]}} : (tensor<?x16x6x6xf32>, tensor<16x16x3x3xf32>, tensor<16xf32>) -> tensor<?x16x6x6xf32>
  return %y, %v : tensor<?x{N}xf32>, tensor<?x16x6x6xf32>
}}
{{-# dialect_resources: {{ qc: {{ w: \"0x{}\", c: \"0x{}\", k: \"0x{}\" }} }} #-}}",
        hex_resource(&w),
        hex_resource(&c),
        hex_resource(&k)
    );
    let float = parse_module(&text, &Source::named("t"), &reg).unwrap();
    let img = |seed: u64| -> Vec<f32> {
        let mut r = Rng(seed);
        (0..16 * 36).map(|_| r.gauss() as f32).collect()
    };
    let mut arrays = Vec::new();
    for run in 0..3u64 {
        arrays.push((
            format!("x.{run}"),
            qc_runtime::npy::NpyArray::f32(vec![16, K], activations(60 + run, 16)),
        ));
        arrays.push((
            format!("img.{run}"),
            qc_runtime::npy::NpyArray::f32(vec![1, 16, 6, 6], img(70 + run)),
        ));
    }
    let mut calibrated = float.clone();
    calibrate_with(&mut calibrated, &arrays, "gemm-conv");
    let fmt = named_format("fp8_e4m3").unwrap().ty.clone();
    let mut pass = Quantize::weight_only(fmt.clone(), Clip::Mse);
    pass.activation = Some(fmt.clone());
    let q = quantize_module(&calibrated, &pass);
    let printed = qc_ir::print_module(&q, qc_ir::PrintOptions::dump());
    assert!(
        printed.contains("nn.gemm %x_dq, %w_dq") && printed.contains("nn.conv %img_dq, %k_dq"),
        "{printed}"
    );
    assert_eq!(printed.matches("quant.quantize").count(), 2, "{printed}");
    let (x, im) = (activations(98, M), img(99));
    let ins = || vec![f32_tensor(&[M, K], &x), f32_tensor(&[1, 16, 6, 6], &im)];
    let y = run_outputs(&float, ins());
    let yq = run_outputs(&q, ins());
    let a_qsnr = |v: &[f32], shape: &[usize], amax: f32| {
        let opts = QuantizeOptions {
            tensor_amax: Some(amax),
            ..QuantizeOptions::default()
        };
        qsnr_db(
            v,
            &dequantize(&quantize(v, shape, &fmt, &opts).unwrap()).unwrap(),
        )
    };
    let cases = [
        (
            "gemm",
            a_qsnr(&x, &[M, K], layer_amax(&calibrated, "nn.gemm")),
            weight_qsnr(&transpose(&w, K, N), N, K, &fmt),
            y[0].iter()
                .enumerate()
                .map(|(i, &v)| v - c[i % N])
                .collect::<Vec<f32>>(),
        ),
        (
            "conv",
            a_qsnr(&im, &[1, 16, 6, 6], layer_amax(&calibrated, "nn.conv")),
            weight_qsnr(&k, 16, 144, &fmt),
            y[1].clone(),
        ),
    ];
    for (o, (what, aq, wq, prod)) in cases.into_iter().enumerate() {
        let rel = rel_err(&y[o], &yq[o], &prod);
        let bound = 1.5 * (10f64.powf(-aq / 10.0) + 10f64.powf(-wq / 10.0)).sqrt();
        eprintln!(
            "{what} w=a=fp8_e4m3: weight QSNR {wq:.2} dB, activation QSNR {aq:.2} dB, output \
             relative error {rel:.4}, bound {bound:.4}"
        );
        assert!(rel > 0.0 && rel < bound, "{what}: {rel} vs {bound}");
    }
}

#[test]
fn activation_quantization_refuses_uncalibrated_layers_without_changing_the_module() {
    let reg = registry();
    let float = module(&weight_kn(3), &reg);
    let mut pass = Quantize::weight_only(named_format("int4_g128").unwrap().ty.clone(), Clip::Mse);
    pass.activation = Some(named_format("fp8_e4m3").unwrap().ty.clone());
    let mut m = float.clone();
    let e = pass.run(&mut m, &PassContext::new(&reg)).unwrap_err();
    assert!(
        e.message
            .contains("layer 'w' has no calibration statistics")
            && e.message.contains("calibrate"),
        "{}",
        e.message
    );
    assert_eq!(m, float);
}

// ---- LLM-FP4 format search ------------------------------------------------------------------------

#[test]
fn fp_search_never_raises_the_weight_mse_and_lowers_it_on_uniform_weights() {
    use qc_passes::quantize::{fp_candidates, quantize_weight_search};
    let names = |fmt: &str| -> Vec<String> {
        fp_candidates(&named_format(fmt).unwrap().ty)
            .iter()
            .map(|t| t.elem.to_string())
            .collect()
    };
    assert_eq!(
        names("nvfp4"),
        [
            "e2m1",
            "e1m2<bias = 0, policy = none>",
            "e3m0<bias = 3, policy = none>"
        ]
    );
    assert_eq!(names("fp8_e4m3").len(), 7);
    assert!(names("int4_g128").is_empty());
    let gauss = transpose(&weight_kn(71), K, N);
    let mut r = Rng(72);
    let uniform: Vec<f32> = (0..K * N)
        .map(|_| (r.uniform() * 2.0 - 1.0) as f32)
        .collect();
    for fname in ["nvfp4", "mxfp4", "fp6_e3m2", "mxfp6", "fp8_e4m3", "mxfp8"] {
        let fmt = named_format(fname).unwrap().ty.clone();
        for (data, what) in [(&gauss, "gaussian"), (&uniform, "uniform")] {
            for clip in [Clip::None, Clip::Mse] {
                let (_, fixed, e_fixed) =
                    quantize_weight_search(data, &[N, K], &fmt, clip, false, "w").unwrap();
                let (chosen, q, e_search) =
                    quantize_weight_search(data, &[N, K], &fmt, clip, true, "w").unwrap();
                // The reported error is the real one.
                let real = |q: &qc_quant::tensor::QuantizedTensor| {
                    mse(data, &dequantize(q).unwrap()) * data.len() as f64
                };
                assert!((real(&fixed) - e_fixed).abs() <= 1e-9 * e_fixed.max(1e-30));
                assert!((real(&q) - e_search).abs() <= 1e-9 * e_search.max(1e-30));
                eprintln!(
                    "{fname} {what} clip={clip:?}: chosen {}, weight mse ratio search/fixed {:.3}",
                    chosen.elem,
                    e_search / e_fixed
                );
                assert!(e_search <= e_fixed, "{fname} {what}");
                if chosen == fmt {
                    assert_eq!(e_search, e_fixed);
                }
                if what == "uniform" && matches!(fname, "nvfp4" | "mxfp4") {
                    // e1m2 (a uniform grid) beats e2m1 on uniform data: measured ratio about 0.5.
                    assert!(e_search < 0.8 * e_fixed, "{fname}: {e_search} vs {e_fixed}");
                    assert_eq!(chosen.elem.to_string(), "e1m2<bias = 0, policy = none>");
                }
            }
        }
    }
}

#[test]
fn fp_search_module_uses_the_chosen_generic_format_and_computes_within_its_qsnr() {
    let reg = registry();
    let mut r = Rng(81);
    let w: Vec<f32> = (0..K * N)
        .map(|_| (r.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let float = module(&w, &reg);
    let x: Vec<f64> = (0..M * K).map(|_| r.gauss() as f32 as f64).collect();
    let y = run(&float, &x);
    let fmt = named_format("nvfp4").unwrap().ty.clone();
    let mut pass = Quantize::weight_only(fmt.clone(), Clip::Mse);
    pass.fp_search = true;
    let q = quantize_module(&float, &pass);
    let printed = qc_ir::print_module(&q, qc_ir::PrintOptions::full());
    assert!(
        printed.contains("!quant.fmt<e1m2<bias = 0, policy = none>, group<16>"),
        "{printed}"
    );
    // The printed module parses back to the same text (the generic type round-trips with its blob).
    let back = parse_module(&printed, &Source::named("t"), &reg).unwrap();
    assert_eq!(
        qc_ir::print_module(&back, qc_ir::PrintOptions::full()),
        printed
    );
    let yq = run(&back, &x);
    let fixed = quantize_module(&float, &Quantize::weight_only(fmt.clone(), Clip::Mse));
    let yf = run(&fixed, &x);
    let (rel, rel_fixed) = (rel_err(&y, &yq, &y), rel_err(&y, &yf, &y));
    let wt = transpose(&w, K, N);
    let (chosen, qt, _) =
        qc_passes::quantize::quantize_weight_search(&wt, &[N, K], &fmt, Clip::Mse, true, "w")
            .unwrap();
    assert_ne!(chosen, fmt);
    let qs = qsnr_db(&wt, &dequantize(&qt).unwrap());
    eprintln!(
        "fp_search nvfp4 on uniform weights: weight QSNR {qs:.2} dB, output relative error {rel:.4} \
         (fixed e2m1: {rel_fixed:.4})"
    );
    assert!(rel < 1.5 * 10f64.powf(-qs / 20.0), "{rel}");
    assert!(rel < rel_fixed, "{rel} vs {rel_fixed}");
}

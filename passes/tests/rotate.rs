//! Measuring tests of the `rotate` pass: the rotated function computes the original one (relative error
//! below 1e-4 on seeded inputs, through the interpreter), rotations are absorbed where the model allows
//! (counted online rotations per pattern and policy), rotated weights quantize better on heavy-tailed
//! data (weight QSNR for int4_g128 and mxfp4, printed), and the output is deterministic. The BERT and
//! Llama models of scripts/models are generated and imported when python3 with numpy and onnx is
//! present (they are skipped with a note otherwise).

use qc_ir::pass::{Changed, Pass, PassContext};
use qc_ir::quant::named_format;
use qc_ir::types::ElemType;
use qc_ir::{parse_module, print_module, Module, PrintOptions, Registry, Source};
use qc_passes::rotate::{Mode, Online, Rotate};
use qc_quant::qsnr::{samples, Dist};
use qc_quant::tensor::{dequantize, qsnr_db, quantize, QuantizeOptions};
use qc_runtime::exec::run_func;
use qc_runtime::interp::{Data, Tensor};

/// The contract's bound on the relative error of the rotated function.
const TOL: f64 = 1e-4;

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
    fn vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (std * self.gauss()) as f32).collect()
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(qc_nn::dialect());
    r.register(qc_quant::ops::dialect());
    r
}

/// A module from `body` (the text of one function) and f32 resources.
fn module(body: &str, res: &[(&str, Vec<f32>)]) -> Module {
    let blobs: Vec<String> = res
        .iter()
        .map(|(name, v)| {
            let hex: String = [16u8, 0, 0, 0]
                .into_iter()
                .chain(v.iter().flat_map(|x| x.to_le_bytes()))
                .map(|b| format!("{b:02X}"))
                .collect();
            format!("{name}: \"0x{hex}\"")
        })
        .collect();
    let text = format!(
        "{body}\n{{-# dialect_resources: {{ qc: {{ {} }} }} #-}}",
        blobs.join(", ")
    );
    parse_module(&text, &Source::named("test"), &registry())
        .unwrap_or_else(|d| panic!("{}\n{text}", d.render(Some(&text))))
}

fn rotate(m: &Module, mode: Mode, online: Online) -> (Module, Changed) {
    let reg = registry();
    let mut out = m.clone();
    let changed = Rotate { mode, online }
        .run(&mut out, &PassContext::new(&reg))
        .unwrap_or_else(|d| panic!("{}", d.render(None)));
    qc_ir::verify_module(&out).unwrap_or_else(|d| {
        panic!(
            "{}\n{}",
            d.render(None),
            print_module(&out, PrintOptions::dump())
        )
    });
    (out, changed)
}

fn run(m: &Module, inputs: &[Tensor]) -> Vec<Tensor> {
    let name = m.funcs[0].name.clone();
    run_func(m, &name, inputs.to_vec()).unwrap_or_else(|d| {
        panic!(
            "{}\n{}",
            d.render(None),
            print_module(m, PrintOptions::dump())
        )
    })
}

/// max |a - b| / max |a| over every output.
fn rel_err(a: &[Tensor], b: &[Tensor]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape, y.shape);
        let n = x.data.len();
        let scale = (0..n).fold(0f64, |m, i| m.max(x.data.f(i).abs()));
        let diff = (0..n).fold(0f64, |m, i| {
            let d = (x.data.f(i) - y.data.f(i)).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                m.max(d)
            }
        });
        assert!(scale > 0.0, "an all-zero output proves nothing");
        worst = worst.max(diff / scale);
    }
    worst
}

fn count(m: &Module, op: &str) -> usize {
    m.funcs
        .iter()
        .flat_map(|f| &f.ops)
        .filter(|o| o.name() == op)
        .count()
}

fn printed(m: &Module) -> String {
    print_module(m, PrintOptions::dump())
}

fn f32_input(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    let v = Rng(seed).vec(n, 1.0);
    Tensor::new(
        shape.to_vec(),
        ElemType::F32,
        Data::F(v.iter().map(|&x| x as f64).collect()),
    )
}

fn ids_input(shape: &[usize], vocab: u64, seed: u64) -> Tensor {
    let mut r = Rng(seed);
    let n = shape.iter().product();
    let i64t = ElemType::Int {
        bits: 64,
        unsigned: false,
    };
    Tensor::new(
        shape.to_vec(),
        i64t,
        Data::I((0..n).map(|_| (r.next_u64() % vocab) as i64).collect()),
    )
}

/// Rotates `m` and checks the function on `inputs`; returns the rotated module.
fn preserved(what: &str, m: &Module, inputs: &[Tensor], mode: Mode, online: Online) -> Module {
    let (r, changed) = rotate(m, mode, online);
    assert_eq!(changed, Changed::Yes, "{what}: nothing was rotated");
    let err = rel_err(&run(m, inputs), &run(&r, inputs));
    eprintln!(
        "{what} ({mode:?}, {online:?}): {} online rotations, relative error {err:.2e}",
        count(&r, "quant.hadamard")
    );
    assert!(err < TOL, "{what}: relative error {err:.3e} >= {TOL:e}");
    r
}

const MODES: [Mode; 3] = [Mode::Hadamard, Mode::Block(16), Mode::Block(32)];

/// (1) A lone layer: an online rotation of its input and a weight with rotated rows.
#[test]
fn single_layer_rotates_its_input_online() {
    let mut r = Rng(1);
    let m = module(
        "func.func @f(%x: tensor<8x64xf32>) -> tensor<8x128xf32> {
  %w = qc.constant {value = dense_resource<w>} : () -> tensor<64x128xf32>
  %y = nn.matmul %x, %w : (tensor<8x64xf32>, tensor<64x128xf32>) -> tensor<8x128xf32>
  return %y : tensor<8x128xf32>
}",
        &[("w", r.vec(64 * 128, 0.1))],
    );
    let x = [f32_input(&[8, 64], 2)];
    for mode in MODES {
        let out = preserved("single layer", &m, &x, mode, Online::Needed);
        assert_eq!(count(&out, "quant.hadamard"), 1);
        let text = printed(&out);
        assert!(
            text.contains("dense_resource<w.rot>") && out.resources.get("w").is_none(),
            "{text}"
        );
        let block = match mode {
            Mode::Hadamard => 64,
            Mode::Block(b) => b,
        };
        assert!(text.contains(&format!("block = {block}")), "{text}");
        assert!(text.contains("rotate.rules = [\"insert-h-ht\"]"), "{text}");
    }
    // `never` allows no online rotation and a lone layer has nothing to absorb it: nothing changes.
    let (same, changed) = rotate(&m, Mode::Hadamard, Online::Never);
    assert_eq!(changed, Changed::No);
    assert_eq!(printed(&same), printed(&m));
}

/// (2) Two layers with only linear ops (a bias) between them: the rotation between them is absorbed
/// into both weights (and the bias); no online rotation is left.
#[test]
fn chain_of_layers_absorbs_the_rotation_into_both_weights() {
    let mut r = Rng(3);
    let m = module(
        "func.func @f(%x: tensor<4x64xf32>) -> tensor<4x32xf32> {
  %w1 = qc.constant {value = dense_resource<w1>} : () -> tensor<64x64xf32>
  %b1 = qc.constant {value = dense_resource<b1>} : () -> tensor<64xf32>
  %w2 = qc.constant {value = dense_resource<w2>} : () -> tensor<64x32xf32>
  %h = nn.matmul %x, %w1 : (tensor<4x64xf32>, tensor<64x64xf32>) -> tensor<4x64xf32>
  %hb = nn.add %h, %b1 : (tensor<4x64xf32>, tensor<64xf32>) -> tensor<4x64xf32>
  %y = nn.matmul %hb, %w2 : (tensor<4x64xf32>, tensor<64x32xf32>) -> tensor<4x32xf32>
  return %y : tensor<4x32xf32>
}",
        &[
            ("w1", r.vec(64 * 64, 0.1)),
            ("b1", r.vec(64, 0.5)),
            ("w2", r.vec(64 * 32, 0.1)),
        ],
    );
    let x = [f32_input(&[4, 64], 4)];
    for mode in MODES {
        let out = preserved("two layers", &m, &x, mode, Online::Needed);
        assert_eq!(count(&out, "quant.hadamard"), 0, "{}", printed(&out));
        for name in ["w1.rot", "b1.rot", "w2.rot"] {
            assert!(
                out.resources.get(name).is_some(),
                "{name}\n{}",
                printed(&out)
            );
        }
        // `never` finds the same: the rotation needs no online op.
        let never = preserved("two layers", &m, &x, mode, Online::Never);
        assert_eq!(printed(&never), printed(&out));
        // `inputs` also rotates the first layer's input side, online.
        let inputs = preserved("two layers", &m, &x, mode, Online::Inputs);
        assert_eq!(count(&inputs, "quant.hadamard"), 1, "{}", printed(&inputs));
    }
}

/// A written-out RMSNorm with its scale, as Llama's ONNX export has it.
fn rmsnorm(x: &str, g: &str, out: &str, shape: &str) -> String {
    let r = shape.replace("x64x", "x1x");
    format!(
        "  %{out}_p = nn.pow %{x}, %two : (tensor<{shape}>, tensor<f32>) -> tensor<{shape}>
  %{out}_m = nn.reduce_mean %{out}_p, %axes {{keepdims = 1}} : (tensor<{shape}>, tensor<1xi64>) -> tensor<{r}>
  %{out}_a = nn.add %{out}_m, %eps : (tensor<{r}>, tensor<f32>) -> tensor<{r}>
  %{out}_s = nn.sqrt %{out}_a : (tensor<{r}>) -> tensor<{r}>
  %{out}_r = nn.div %one, %{out}_s : (tensor<f32>, tensor<{r}>) -> tensor<{r}>
  %{out}_n = nn.mul %{x}, %{out}_r : (tensor<{shape}>, tensor<{r}>) -> tensor<{shape}>
  %{out} = nn.mul %{g}, %{out}_n : (tensor<64xf32>, tensor<{shape}>) -> tensor<{shape}>
"
    )
}

/// A Llama-style block: embedding, RMSNorm, gated MLP, residual, final RMSNorm and head.
fn llama_block() -> Module {
    llama_block_from(true)
}

/// [`llama_block`], its residual stream starting at the embedding (`embedded`) or at an argument.
fn llama_block_from(embedded: bool) -> Module {
    let mut r = Rng(5);
    let s = "2x5x64xf32";
    let h = "2x5x128xf32";
    let (arg, start) = if embedded {
        (
            "%ids: tensor<2x5xi64>".to_string(),
            format!("  %x0 = nn.gather %emb, %ids {{axis = 0}} : (tensor<50x64xf32>, tensor<2x5xi64>) -> tensor<{s}>\n"),
        )
    } else {
        (format!("%x0: tensor<{s}>"), String::new())
    };
    let body = format!(
        "func.func @f({arg}) -> tensor<2x5x40xf32> {{
  %two = qc.constant {{value = dense<2.0>}} : () -> tensor<f32>
  %one = qc.constant {{value = dense<1.0>}} : () -> tensor<f32>
  %eps = qc.constant {{value = dense<1.0e-5>}} : () -> tensor<f32>
  %axes = qc.constant {{value = dense<-1>}} : () -> tensor<1xi64>
  %emb = qc.constant {{value = dense_resource<emb>}} : () -> tensor<50x64xf32>
  %g1 = qc.constant {{value = dense_resource<g1>}} : () -> tensor<64xf32>
  %g2 = qc.constant {{value = dense_resource<g2>}} : () -> tensor<64xf32>
  %wg = qc.constant {{value = dense_resource<wg>}} : () -> tensor<64x128xf32>
  %wu = qc.constant {{value = dense_resource<wu>}} : () -> tensor<64x128xf32>
  %wd = qc.constant {{value = dense_resource<wd>}} : () -> tensor<128x64xf32>
  %wh = qc.constant {{value = dense_resource<wh>}} : () -> tensor<64x40xf32>
{start}{}  %gate = nn.matmul %n1, %wg : (tensor<{s}>, tensor<64x128xf32>) -> tensor<{h}>
  %up = nn.matmul %n1, %wu : (tensor<{s}>, tensor<64x128xf32>) -> tensor<{h}>
  %sg = nn.sigmoid %gate : (tensor<{h}>) -> tensor<{h}>
  %silu = nn.mul %gate, %sg : (tensor<{h}>, tensor<{h}>) -> tensor<{h}>
  %act = nn.mul %silu, %up : (tensor<{h}>, tensor<{h}>) -> tensor<{h}>
  %down = nn.matmul %act, %wd : (tensor<{h}>, tensor<128x64xf32>) -> tensor<{s}>
  %x1 = nn.add %x0, %down : (tensor<{s}>, tensor<{s}>) -> tensor<{s}>
{}  %logits = nn.matmul %n2, %wh : (tensor<{s}>, tensor<64x40xf32>) -> tensor<2x5x40xf32>
  return %logits : tensor<2x5x40xf32>
}}",
        rmsnorm("x0", "g1", "n1", s),
        rmsnorm("x1", "g2", "n2", s)
    );
    let gamma = |r: &mut Rng| -> Vec<f32> { r.vec(64, 0.1).iter().map(|v| 1.0 + v).collect() };
    let (g1, g2) = (gamma(&mut r), gamma(&mut r));
    module(
        &body,
        &[
            ("emb", r.vec(50 * 64, 1.0)),
            ("g1", g1),
            ("g2", g2),
            ("wg", r.vec(64 * 128, 0.1)),
            ("wu", r.vec(64 * 128, 0.1)),
            ("wd", r.vec(128 * 64, 0.1)),
            ("wh", r.vec(64 * 40, 0.1)),
        ],
    )
}

/// (3) RMSNorm-fed layers: the norm scales are folded into the next weights, the rotation is pushed
/// through both norms and the residual add into the embedding and the down projection (the stream's
/// writers); no online rotation is left. With `online=inputs` the down projection's input side is
/// rotated too, online.
#[test]
fn rmsnorm_fed_layers_absorb_the_rotation_into_the_residual_writers() {
    let m = llama_block();
    let ids = [ids_input(&[2, 5], 50, 6)];
    for mode in MODES {
        let out = preserved("llama block", &m, &ids, mode, Online::Needed);
        let text = printed(&out);
        assert_eq!(count(&out, "quant.hadamard"), 0, "{text}");
        for name in ["emb.rot", "wg.rot", "wu.rot", "wd.rot", "wh.rot"] {
            assert!(out.resources.get(name).is_some(), "{name}\n{text}");
        }
        // The scales were folded: both RMSNorms lost their `nn.mul %g`.
        assert!(!text.contains("%g1") && !text.contains("%g2"), "{text}");
        for rule in [
            "fold-scale-into-weight",
            "rotate-through-rmsnorm",
            "absorb-into-embedding",
            "absorb-into-weight-cols",
        ] {
            assert!(text.contains(&format!("\"{rule}\"")), "{rule}\n{text}");
        }
        let inputs = preserved("llama block", &m, &ids, mode, Online::Inputs);
        assert_eq!(count(&inputs, "quant.hadamard"), 1, "{}", printed(&inputs));
    }
    // A stream that starts at a function argument has no writer to absorb the rotation: it is rotated
    // online once, at its start, and everything behind is absorbed as before.
    let m = llama_block_from(false);
    let x = [f32_input(&[2, 5, 64], 10)];
    for mode in MODES {
        let out = preserved("llama block from an argument", &m, &x, mode, Online::Needed);
        let text = printed(&out);
        assert_eq!(count(&out, "quant.hadamard"), 1, "{text}");
        assert!(text.contains("quant.hadamard %x0 "), "{text}");
    }
}

/// A BERT-style (post-norm) block: LayerNorm, FFN with biases and GELU, residual, LayerNorm.
fn bert_block(pre_norm: bool) -> Module {
    let mut r = Rng(7);
    let s = "2x5x64xf32";
    let h = "2x5x128xf32";
    let ln = |x: &str, g: &str, b: &str, out: &str| {
        format!("  %{out} = nn.layer_norm %{x}, %{g}, %{b} {{axis = -1, epsilon = 1.0e-12}} : (tensor<{s}>, tensor<64xf32>, tensor<64xf32>) -> tensor<{s}>\n")
    };
    let ffn = |x: &str, out: &str| {
        format!(
            "  %{out}_i = nn.matmul %{x}, %w1 : (tensor<{s}>, tensor<64x128xf32>) -> tensor<{h}>
  %{out}_ib = nn.add %{out}_i, %b1 : (tensor<{h}>, tensor<128xf32>) -> tensor<{h}>
  %{out}_g = nn.gelu %{out}_ib : (tensor<{h}>) -> tensor<{h}>
  %{out}_o = nn.matmul %{out}_g, %w2 : (tensor<{h}>, tensor<128x64xf32>) -> tensor<{s}>
  %{out} = nn.add %{out}_o, %b2 : (tensor<{s}>, tensor<64xf32>) -> tensor<{s}>
"
        )
    };
    let (input, start, block) = if pre_norm {
        // GPT-2 style: embeddings, x + ffn(ln(x)), final ln, head.
        (
            "%ids: tensor<2x5xi64>".to_string(),
            format!("  %x0 = nn.gather %emb, %ids {{axis = 0}} : (tensor<50x64xf32>, tensor<2x5xi64>) -> tensor<{s}>\n"),
            format!(
                "{}{}  %x1 = nn.add %x0, %f : (tensor<{s}>, tensor<{s}>) -> tensor<{s}>\n{}",
                ln("x0", "g1", "c1", "n1"),
                ffn("n1", "f"),
                ln("x1", "g2", "c2", "n2")
            ),
        )
    } else {
        // BERT: y = ln(x), z = ln(y + ffn(y)), head.
        (
            format!("%x0: tensor<{s}>"),
            String::new(),
            format!(
                "{}{}  %x1 = nn.add %f, %n1 : (tensor<{s}>, tensor<{s}>) -> tensor<{s}>\n{}",
                ln("x0", "g1", "c1", "n1"),
                ffn("n1", "f"),
                ln("x1", "g2", "c2", "n2")
            ),
        )
    };
    let body = format!(
        "func.func @f({input}) -> tensor<2x5x32xf32> {{
  %emb = qc.constant {{value = dense_resource<emb>}} : () -> tensor<50x64xf32>
  %g1 = qc.constant {{value = dense_resource<g1>}} : () -> tensor<64xf32>
  %c1 = qc.constant {{value = dense_resource<c1>}} : () -> tensor<64xf32>
  %g2 = qc.constant {{value = dense_resource<g2>}} : () -> tensor<64xf32>
  %c2 = qc.constant {{value = dense_resource<c2>}} : () -> tensor<64xf32>
  %w1 = qc.constant {{value = dense_resource<w1>}} : () -> tensor<64x128xf32>
  %b1 = qc.constant {{value = dense_resource<b1>}} : () -> tensor<128xf32>
  %w2 = qc.constant {{value = dense_resource<w2>}} : () -> tensor<128x64xf32>
  %b2 = qc.constant {{value = dense_resource<b2>}} : () -> tensor<64xf32>
  %wh = qc.constant {{value = dense_resource<wh>}} : () -> tensor<64x32xf32>
{start}{block}  %y = nn.matmul %n2, %wh : (tensor<{s}>, tensor<64x32xf32>) -> tensor<2x5x32xf32>
  return %y : tensor<2x5x32xf32>
}}"
    );
    let gamma = |r: &mut Rng| -> Vec<f32> { r.vec(64, 0.1).iter().map(|v| 1.0 + v).collect() };
    let (g1, g2) = (gamma(&mut r), gamma(&mut r));
    module(
        &body,
        &[
            ("emb", r.vec(50 * 64, 1.0)),
            ("g1", g1),
            ("c1", r.vec(64, 0.3)),
            ("g2", g2),
            ("c2", r.vec(64, 0.3)),
            ("w1", r.vec(64 * 128, 0.1)),
            ("b1", r.vec(128, 0.3)),
            ("w2", r.vec(128 * 64, 0.1)),
            ("b2", r.vec(64, 0.3)),
            ("wh", r.vec(64 * 32, 0.1)),
        ],
    )
}

/// (4) LayerNorm-fed layers. Post-norm (BERT): a LayerNorm's output is not rotation-invariant and its
/// input's mean cannot be removed by weights (the stream passes through the norms' shifts), so the
/// layers behind each LayerNorm get online rotations. Pre-norm (GPT-2 style): the mean subtraction is
/// absorbed into the stream's writers (embedding, FFN output), each LayerNorm becomes an RMSNorm of a
/// mean-free stream, and the rotation is absorbed as in Llama.
#[test]
fn layernorm_fed_layers() {
    let x = [f32_input(&[2, 5, 64], 8)];
    for mode in MODES {
        let post = preserved(
            "bert block (post-norm)",
            &bert_block(false),
            &x,
            mode,
            Online::Needed,
        );
        let text = printed(&post);
        // The FFN input (behind the first LayerNorm) is rotated online; the second LayerNorm's input
        // is made mean-free and rotated for the head, which takes an online rotation of the skip path
        // (the first LayerNorm's output) since no weight writes it.
        assert!(text.contains("quant.hadamard %n1 "), "{text}");
        assert_eq!(count(&post, "quant.hadamard"), 2, "{text}");
    }
    let ids = [ids_input(&[2, 5], 50, 9)];
    for mode in MODES {
        let pre = preserved(
            "pre-norm block",
            &bert_block(true),
            &ids,
            mode,
            Online::Needed,
        );
        let text = printed(&pre);
        assert_eq!(count(&pre, "quant.hadamard"), 0, "{text}");
        // Both LayerNorms became RMSNorms of the mean-free stream.
        assert_eq!(count(&pre, "nn.layer_norm"), 0, "{text}");
        for rule in [
            "absorb-center-into-embedding",
            "absorb-center-into-weight",
            "rotate-through-rmsnorm",
            "fold-scale-into-weight",
        ] {
            assert!(text.contains(&format!("\"{rule}\"")), "{rule}\n{text}");
        }
    }
}

/// Rotated weights quantize better: the weight QSNR (dB) after int4_g128 and mxfp4 of a layer's
/// weight before and after the pass, on Student-t (3 degrees of freedom) weights and on Gaussian weights
/// with 0.1 % outliers of 20 sigma. Groups run along K (the weight is quantized as [N, K], as the
/// quantize pass lays it out). An orthonormal rotation keeps the error norm, so the two QSNRs compare
/// the same function's weight error.
#[test]
fn rotated_weights_have_higher_qsnr_on_heavy_tailed_data() {
    const K: usize = 256;
    const N: usize = 128;
    let student = samples(Dist::StudentT3, K * N, 11);
    let mut outliers = Rng(12).vec(K * N, 1.0);
    let mut r = Rng(13);
    for _ in 0..K * N / 1000 {
        let i = (r.next_u64() as usize) % outliers.len();
        outliers[i] = 20.0 * if r.uniform() < 0.5 { -1.0 } else { 1.0 };
    }
    let transpose = |w: &[f32]| qc_passes::weights::transpose(w, K, N);
    let q = |w: &[f32], fmt: &str| -> f64 {
        let wt = transpose(w);
        let ty = &named_format(fmt).unwrap().ty;
        let opts = QuantizeOptions::default();
        let qt = quantize(&wt, &[N, K], ty, &opts).unwrap();
        qsnr_db(&wt, &dequantize(&qt).unwrap())
    };
    for (dist, w) in [("student-t3", student), ("gaussian+outliers", outliers)] {
        let m = module(
            &format!(
                "func.func @f(%x: tensor<4x{K}xf32>) -> tensor<4x{N}xf32> {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<{K}x{N}xf32>
  %y = nn.matmul %x, %w : (tensor<4x{K}xf32>, tensor<{K}x{N}xf32>) -> tensor<4x{N}xf32>
  return %y : tensor<4x{N}xf32>
}}"
            ),
            &[("w", w.clone())],
        );
        for mode in [Mode::Hadamard, Mode::Block(128), Mode::Block(32)] {
            let out = preserved(dist, &m, &[f32_input(&[4, K], 14)], mode, Online::Needed);
            let f = &out.funcs[0];
            let mm = f.ops.iter().find(|o| o.name() == "nn.matmul").unwrap();
            let rotated = qc_passes::weights::read_weight(&out, 0, mm.operands[1]).unwrap();
            for fmt in ["int4_g128", "mxfp4"] {
                let (before, after) = (q(&w, fmt), q(&rotated, fmt));
                eprintln!("{dist} {mode:?} {fmt}: weight QSNR {before:.2} dB -> {after:.2} dB");
                assert!(
                    after > before + 0.5,
                    "{dist} {mode:?} {fmt}: {before:.2} -> {after:.2}"
                );
            }
        }
    }
}

/// Axes whose length the mode does not support are left alone, silently.
#[test]
fn unsupported_sizes_are_left_alone() {
    let mut r = Rng(15);
    let m = module(
        "func.func @f(%x: tensor<4x24xf32>) -> tensor<4x8xf32> {
  %w = qc.constant {value = dense_resource<w>} : () -> tensor<24x8xf32>
  %y = nn.matmul %x, %w : (tensor<4x24xf32>, tensor<24x8xf32>) -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}",
        &[("w", r.vec(24 * 8, 0.1))],
    );
    // 24 is no power of two and no multiple of 16; the 8 outputs could be rotated, but nothing
    // downstream absorbs that, and the cost of an online rotation behind the layer buys no rotated
    // input side: with `inputs` nothing is done.
    for mode in [Mode::Hadamard, Mode::Block(16)] {
        let (out, changed) = rotate(&m, mode, Online::Inputs);
        assert_eq!(changed, Changed::No, "{mode:?}\n{}", printed(&out));
        assert_eq!(printed(&out), printed(&m));
    }
    // Blocks of 8 divide 24.
    let out = preserved(
        "24 inputs",
        &m,
        &[f32_input(&[4, 24], 16)],
        Mode::Block(8),
        Online::Inputs,
    );
    assert_eq!(count(&out, "quant.hadamard"), 1);
}

#[test]
fn output_is_deterministic() {
    let m = llama_block();
    let (a, _) = rotate(&m, Mode::Block(16), Online::Inputs);
    let (b, _) = rotate(&m, Mode::Block(16), Online::Inputs);
    let full = PrintOptions::full();
    assert_eq!(print_module(&a, full), print_module(&b, full));
}

#[test]
fn bad_options_and_weights_are_diagnostics() {
    let build = |pairs: &[(&str, &str)]| {
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let reg = qc_passes::registry();
        reg.parse_pipeline(&format!("rotate{{{}}}", text.join(",")))
            .map(|_| ())
            .map_err(|d| d.render(None))
    };
    assert!(build(&[]).is_ok());
    assert!(build(&[("mode", "block:32"), ("online", "inputs")]).is_ok());
    for (k, v) in [
        ("mode", "block:12"),
        ("mode", "block:1"),
        ("mode", "givens"),
        ("online", "maybe"),
    ] {
        let err = build(&[(k, v)]).unwrap_err();
        assert!(err.contains(&format!("option '{k}'")), "{err}");
    }
    // A weight with a NaN (in the second of two layers, so that the first is folded before the error):
    // rotating it would spread the NaN over whole rows.
    let mut r = Rng(17);
    let w1 = r.vec(8 * 8, 0.1);
    let mut w2 = r.vec(8 * 8, 0.1);
    w2[5] = f32::NAN;
    let m = module(
        "func.func @f(%x: tensor<2x8xf32>) -> tensor<2x8xf32> {
  %w1 = qc.constant {value = dense_resource<w1>} : () -> tensor<8x8xf32>
  %w2 = qc.constant {value = dense_resource<w2>} : () -> tensor<8x8xf32>
  %h = nn.matmul %x, %w1 : (tensor<2x8xf32>, tensor<8x8xf32>) -> tensor<2x8xf32>
  %y = nn.matmul %h, %w2 : (tensor<2x8xf32>, tensor<8x8xf32>) -> tensor<2x8xf32>
  return %y : tensor<2x8xf32>
}",
        &[("w1", w1), ("w2", w2)],
    );
    let reg = registry();
    let mut out = m.clone();
    let err = Rotate {
        mode: Mode::Hadamard,
        online: Online::Needed,
    }
    .run(&mut out, &PassContext::new(&reg))
    .unwrap_err()
    .render(None);
    assert!(
        err.contains("test:3:") && err.contains("%w2 has non-finite values"),
        "{err}"
    );
    let full = PrintOptions::full();
    assert_eq!(
        print_module(&out, full),
        print_module(&m, full),
        "a failed pass leaves the module as it was"
    );
}

// The tiny BERT and Llama models of scripts/models are checked in compiler/tests/rotate_models.rs (they
// are imported with the qc crate, which this crate cannot depend on).

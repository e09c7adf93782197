//! Measuring tests of `lorc` (ZeroQuant-FP's low-rank compensation): the truncated SVD is the best
//! rank-r approximation (Eckart-Young), the weight error of the rewritten layer equals the discarded
//! singular values' norm and falls with the rank (0, 2, 4, 8, 16), rank 0 is exactly the `quantize`
//! pass, the layer output error on seeded inputs falls with the rank for f32 and int8 factors, and a
//! rank above min(K, N) is refused.

mod channel_common;

use std::cell::RefCell;

use channel_common::*;
use nalgebra::DMatrix;
use qc_ir::attr::Attribute;
use qc_ir::pass::{Changed, Pass, PassContext, Progress};
use qc_ir::quant::named_format;
use qc_ir::{print_module, Module, PrintOptions, QuantType, Registry};
use qc_passes::lorc::{low_rank, FactorBits, Lorc};
use qc_passes::quantize::{Clip, Quantize};
use qc_quant::tensor::dequantize;

const K: usize = 256;
const N: usize = 64;
const M: usize = 16;

/// A [K, N] Gaussian weight (std 0.02) with a few large outliers.
fn weight(seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    let mut w = r.normal(K * N, 0.02);
    for i in 0..24 {
        let at = (r.next_u64() as usize) % w.len();
        w[at] = if i % 2 == 0 { 0.25 } else { -0.2 } * (1.0 + r.uniform() as f32);
    }
    w
}

/// `y = x @ w`.
fn layer(w: &[f32], reg: &Registry) -> Module {
    let mut t = Text::default();
    t.constant("w", &[K, N], w.to_vec());
    let (mk, kn, mn) = (ty(&[M, K]), ty(&[K, N]), ty(&[M, N]));
    t.op(&format!("%y = nn.matmul %x, %w : ({mk}, {kn}) -> {mn}"));
    t.module(&format!("%x: {mk}"), &mn, &format!("%y : {mn}"), reg)
}

fn lorc(rank: usize, fmt: &QuantType, bits: FactorBits) -> Lorc {
    Lorc {
        rank,
        format: fmt.clone(),
        clip: Clip::Mse,
        bits,
    }
}

/// The values of the constant whose resource is `name`, dequantized when quantized, with its shape.
fn constant(m: &Module, name: &str) -> (Vec<f64>, Vec<usize>) {
    let f = &m.funcs[0];
    let op = f
        .ops
        .iter()
        .find(|o| matches!(o.attr("value"), Some(Attribute::DenseResource(r)) if r == name))
        .unwrap_or_else(|| panic!("no constant {name}"));
    let t = f.ty(op.results[0]);
    let shape: Vec<usize> = t
        .static_shape()
        .unwrap()
        .iter()
        .map(|&d| d as usize)
        .collect();
    let bytes = m.resources.get(name).unwrap().bytes().unwrap();
    let vals = match t.elem.as_quant() {
        Some(fmt) => {
            let q = qc_quant::blob::from_blob(bytes, fmt, &shape, name).unwrap();
            dequantize(&q).unwrap().into_iter().map(f64::from).collect()
        }
        None => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
    };
    (vals, shape)
}

/// `[rows, cols]` transposed.
fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0f64; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

/// The `[K, N]` weight the rewritten layer applies: deq(Wq)^T plus the branch's A B (the stored,
/// rounded factors), for f32 or int8 factors.
fn effective_weight(m: &Module, rank: usize) -> Vec<f64> {
    let (deq, shape) = constant(m, "w.q");
    assert_eq!(shape, [N, K]);
    let mut w = transpose(&deq, N, K);
    if rank == 0 {
        return w;
    }
    let quantized = m.resources.get("w.lorc_a.q").is_some();
    let (a, b) = if quantized {
        let (at, sa) = constant(m, "w.lorc_a.q");
        let (bt, sb) = constant(m, "w.lorc_b.q");
        assert_eq!((sa, sb), (vec![rank, K], vec![N, rank]));
        (transpose(&at, rank, K), transpose(&bt, N, rank))
    } else {
        let (a, sa) = constant(m, "w.lorc_a");
        let (b, sb) = constant(m, "w.lorc_b");
        assert_eq!((sa, sb), (vec![K, rank], vec![rank, N]));
        (a, b)
    };
    for k in 0..K {
        for i in 0..rank {
            let av = a[k * rank + i];
            for n in 0..N {
                w[k * N + n] += av * b[i * N + n];
            }
        }
    }
    w
}

fn frob(a: &[f64], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x - y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn run_pass(p: &Lorc, m: &mut Module, reg: &Registry) {
    let changed = p
        .run(m, &PassContext::new(reg))
        .unwrap_or_else(|d| panic!("{d:?}"));
    assert!(matches!(changed, Changed::Yes));
    qc_ir::verify_module(m).unwrap_or_else(|d| panic!("{d:?}"));
}

#[test]
fn weight_error_is_the_discarded_singular_values_and_falls_with_the_rank() {
    let reg = registry();
    let w = weight(1);
    let mut r = Rng(2);
    let x: Vec<f32> = r.normal(M * K, 1.0);
    let float = layer(&w, &reg);
    let y = run(&float, vec![input(&[M, K], &x)]).remove(0);
    for name in ["int4_g32", "nvfp4"] {
        let fmt = named_format(name).unwrap().ty.clone();
        // The singular values of E = W - deq(Wq), independently of the pass (nalgebra's SVD).
        let wt: Vec<f32> = transpose(&w.iter().map(|&v| v as f64).collect::<Vec<_>>(), K, N)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let q = qc_passes::quantize::quantize_weight(&wt, &[N, K], &fmt, Clip::Mse, "w").unwrap();
        let deq = transpose(
            &dequantize(&q)
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect::<Vec<_>>(),
            N,
            K,
        );
        let e: Vec<f64> = w.iter().zip(&deq).map(|(&a, &b)| a as f64 - b).collect();
        let mut sigma: Vec<f64> = DMatrix::from_row_slice(K, N, &e)
            .singular_values()
            .iter()
            .copied()
            .collect();
        sigma.sort_by(|a, b| b.total_cmp(a));

        let (mut last_w, mut last_y) = (f64::INFINITY, f64::INFINITY);
        for rank in [0, 2, 4, 8, 16] {
            let mut m = float.clone();
            run_pass(&lorc(rank, &fmt, FactorBits::F32), &mut m, &reg);
            let err = frob(&effective_weight(&m, rank), &w);
            let expect = sigma[rank..].iter().map(|s| s * s).sum::<f64>().sqrt();
            let yq = run(&m, vec![input(&[M, K], &x)]).remove(0);
            let ey = rel_err(&yq, &y);
            eprintln!(
                "{name} rank {rank:2}: weight error {err:.6} (Eckart-Young {expect:.6}, rel diff {:.1e}), \
                 output relative error {ey:.5}",
                (err - expect).abs() / expect
            );
            assert!((err - expect).abs() < 1e-4 * expect, "{name} rank {rank}");
            assert!(
                err < last_w && ey < last_y,
                "{name} rank {rank}: not falling"
            );
            (last_w, last_y) = (err, ey);
            if rank == 0 {
                // Plain RTN: the same module as the quantize pass makes.
                let mut mq = float.clone();
                Quantize::weight_only(fmt.clone(), Clip::Mse)
                    .run(&mut mq, &PassContext::new(&reg))
                    .unwrap();
                assert_eq!(
                    print_module(&m, PrintOptions::full()),
                    print_module(&mq, PrintOptions::full()),
                    "{name}: rank 0 must be plain RTN"
                );
            } else {
                let text = print_module(&m, PrintOptions::dump());
                assert_eq!(text.matches("quant.matmul").count(), 1, "{text}");
                assert_eq!(text.matches("nn.matmul").count(), 2, "{text}");
                assert_eq!(text.matches("nn.add").count(), 1, "{text}");
                assert!(
                    m.resources.get("w").is_none(),
                    "the float weight is dropped"
                );
            }
        }
    }
}

#[test]
fn int8_factors_fall_with_the_rank_too() {
    let reg = registry();
    let w = weight(3);
    let mut r = Rng(4);
    let x: Vec<f32> = r.normal(M * K, 1.0);
    let float = layer(&w, &reg);
    let y = run(&float, vec![input(&[M, K], &x)]).remove(0);
    let fmt = named_format("int4_g32").unwrap().ty.clone();
    let (mut last_w, mut last_y) = (f64::INFINITY, f64::INFINITY);
    for rank in [0, 2, 4, 8, 16] {
        let mut m = float.clone();
        run_pass(&lorc(rank, &fmt, FactorBits::Int8), &mut m, &reg);
        let err = frob(&effective_weight(&m, rank), &w);
        let yq = run(&m, vec![input(&[M, K], &x)]).remove(0);
        let ey = rel_err(&yq, &y);
        // The f32 factors of the same rank, for comparison.
        let mut mf = float.clone();
        run_pass(&lorc(rank, &fmt, FactorBits::F32), &mut mf, &reg);
        let errf = frob(&effective_weight(&mf, rank), &w);
        eprintln!(
            "int4_g32 + int8 factors rank {rank:2}: weight error {err:.6} (f32 factors {errf:.6}), \
             output relative error {ey:.5}"
        );
        assert!(err < last_w && ey < last_y, "rank {rank}: not falling");
        // int8 factors cost little: within 2% of the f32 factors' error.
        assert!(err < 1.02 * errf, "rank {rank}: {err} vs {errf}");
        if rank > 0 {
            let text = print_module(&m, PrintOptions::dump());
            assert_eq!(text.matches("quant.matmul").count(), 3, "{text}");
            assert!(text.matches("!quant.int8_channel").count() >= 2, "{text}");
        }
        (last_w, last_y) = (err, ey);
    }
}

struct Steps(RefCell<Vec<(usize, usize, String)>>);
impl Progress for Steps {
    fn step(&self, pass: &str, done: usize, total: usize, item: &str) {
        assert_eq!(pass, "lorc");
        self.0.borrow_mut().push((done, total, item.to_string()));
    }
}

#[test]
fn rank_above_min_k_n_is_refused_and_progress_is_per_layer() {
    let reg = registry();
    let fmt = named_format("int4_g32").unwrap().ty.clone();
    let mut m = layer(&weight(5), &reg);
    let before = m.clone();
    let d = lorc(N + 1, &fmt, FactorBits::F32)
        .run(&mut m, &PassContext::new(&reg))
        .unwrap_err();
    assert!(
        d.message
            .starts_with("lorc: rank 65 exceeds min(K, N) = 64 of layer 'w'"),
        "{}",
        d.message
    );
    assert_eq!(m, before, "nothing may change before the refusal");
    // rank = min(K, N) is allowed and compensates exactly (to f32 rounding).
    run_pass(&lorc(N, &fmt, FactorBits::F32), &mut m, &reg);
    let err = frob(&effective_weight(&m, N), &weight(5));
    eprintln!("full rank {N}: weight error {err:.3e}");
    assert!(err < 1e-5, "{err}");

    // Two layers: two progress steps, named after their weights.
    let mut r = Rng(6);
    let mut t = Text::default();
    t.constant("a", &[K, N], r.normal(K * N, 0.02));
    t.constant("b", &[N, N], r.normal(N * N, 0.02));
    let (mk, kn, mn, nn) = (ty(&[M, K]), ty(&[K, N]), ty(&[M, N]), ty(&[N, N]));
    t.op(&format!("%h = nn.matmul %x, %a : ({mk}, {kn}) -> {mn}"));
    t.op(&format!("%y = nn.matmul %h, %b : ({mn}, {nn}) -> {mn}"));
    let mut m2 = t.module(&format!("%x: {mk}"), &mn, &format!("%y : {mn}"), &reg);
    let steps = Steps(RefCell::new(Vec::new()));
    let cx = PassContext {
        registry: &reg,
        progress: &steps,
    };
    lorc(4, &fmt, FactorBits::F32).run(&mut m2, &cx).unwrap();
    qc_ir::verify_module(&m2).unwrap();
    assert_eq!(
        steps.0.into_inner(),
        vec![(1, 2, "a".to_string()), (2, 2, "b".to_string())]
    );
}

#[test]
fn low_rank_is_the_truncated_svd_on_either_side() {
    let mut r = Rng(7);
    for (k, n) in [(40, 12), (12, 40), (16, 16)] {
        let e: Vec<f64> = (0..k * n).map(|_| r.gauss()).collect();
        let sv: Vec<f64> = {
            let mut s: Vec<f64> = DMatrix::from_row_slice(k, n, &e)
                .singular_values()
                .iter()
                .copied()
                .collect();
            s.sort_by(|a, b| b.total_cmp(a));
            s
        };
        for rank in [1, 3, k.min(n)] {
            let lr = low_rank(&e, k, n, rank);
            for (a, b) in lr.sigma.iter().zip(&sv) {
                assert!((a - b).abs() < 1e-9 * sv[0], "{k}x{n}: {a} vs {b}");
            }
            let mut resid = 0f64;
            for i in 0..k {
                for j in 0..n {
                    let ab: f64 = (0..rank)
                        .map(|c| lr.a[i * rank + c] * lr.b[c * n + j])
                        .sum();
                    resid += (e[i * n + j] - ab).powi(2);
                }
            }
            let expect: f64 = sv[rank..].iter().map(|s| s * s).sum();
            assert!(
                (resid - expect).abs() < 1e-9 * sv[0] * sv[0],
                "{k}x{n} rank {rank}: {resid} vs {expect}"
            );
            // Balanced factors: column c of A and row c of B both have norm sqrt(sigma_c).
            for c in 0..rank {
                let na: f64 = (0..k).map(|i| lr.a[i * rank + c].powi(2)).sum::<f64>();
                let nb: f64 = (0..n).map(|j| lr.b[c * n + j].powi(2)).sum::<f64>();
                assert!(
                    (na - lr.sigma[c]).abs() < 1e-9 * sv[0],
                    "{na} vs {}",
                    lr.sigma[c]
                );
                assert!(
                    (nb - lr.sigma[c]).abs() < 1e-9 * sv[0],
                    "{nb} vs {}",
                    lr.sigma[c]
                );
            }
        }
    }
}

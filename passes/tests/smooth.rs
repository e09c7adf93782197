//! Measuring tests of `smooth` (SmoothQuant): on a block with every producer shape (see
//! `channel_common::block`), with outlier channels, the function is preserved to f32 rounding, the
//! rewritten statistics equal those measured on the smoothed module, the per-channel activation amax
//! spread shrinks, and int8 per-tensor activation quantization loses less.

mod channel_common;

use channel_common::*;
use qc_ir::pass::{Changed, Pass, PassContext};
use qc_ir::{print_module, Module, PrintOptions, Registry};
use qc_passes::calib;
use qc_passes::fold::{activations as groups, channel_linears};
use qc_passes::smooth::Smooth;

fn smooth(m: &mut Module, alpha: f64, reg: &Registry) -> Changed {
    Smooth { alpha }
        .run(m, &PassContext::new(reg))
        .unwrap_or_else(|d| panic!("{d:?}"))
}

fn count(m: &Module, op: &str) -> usize {
    m.funcs[0].ops.iter().filter(|o| o.name() == op).count()
}

#[test]
fn smoothing_preserves_the_function_and_improves_int8_activations() {
    let reg = registry();
    let mut m = block(&reg, 1);
    let calib_in = batches(2, 4);
    calibrate(&mut m, &calib_in);
    let before = m.clone();
    assert_eq!(groups(&channel_linears(&m, 0)).len(), 4);

    assert!(matches!(smooth(&mut m, 0.5, &reg), Changed::Yes));
    verify_without_calib_resources(&m);
    assert!(
        m.resources.iter().all(|(n, _)| !n.ends_with(".hist")),
        "the dropped histograms' resources must go"
    );
    // Folds: gamma (%g) and the first FFN layer's columns and bias absorb their scales; the LayerNorm
    // that also feeds the residual needs one explicit multiply.
    assert_eq!(count(&m, "nn.mul"), count(&before, "nn.mul") + 1);
    let text = print_module(&m, PrintOptions::dump());
    assert!(text.contains("%m_smooth = nn.mul %m, "), "{text}");

    // 1. The function is preserved to f32 rounding.
    for b in batches(3, 2) {
        let (y0, y1) = (run(&before, b.clone()), run(&m, b));
        for (i, (a, c)) in y0.iter().zip(&y1).enumerate() {
            let e = rel_err(c, a);
            eprintln!("output {i}: relative error after smoothing {e:.2e}");
            assert!(e < 1e-5, "output {i}: {e}");
        }
    }

    // 2. The rewritten statistics are those of the activations the smoothed module computes.
    let (a0, a1) = (activations(&before, &calib_in), activations(&m, &calib_in));
    for l in channel_linears(&m, 0) {
        let st = calib::read(&m, &m.funcs[0].ops[l.op]).unwrap();
        let (k, x1) = &a1[&l.y];
        let meas = stats_of(*k, x1);
        assert_eq!(st.rows, meas.rows);
        assert!(
            st.hist.is_none(),
            "{}: the histogram must be dropped",
            l.name
        );
        assert!(rel_err(&st.ch_amax, &meas.ch_amax) < 1e-5, "{}", l.name);
        assert!(
            ((st.amax - meas.amax) / meas.amax).abs() < 1e-5,
            "{}",
            l.name
        );
        let e = rel_err(st.xtx.as_ref().unwrap(), meas.xtx.as_ref().unwrap());
        assert!(e < 1e-5, "{}: xtx {e}", l.name);
    }

    // 3. Per layer: the channel amax spread shrinks, and int8 per-tensor activation quantization
    //    costs less output accuracy.
    let int8 = format("int8");
    for l in channel_linears(&m, 0) {
        let (k, x0) = &a0[&l.y];
        let (_, x1) = &a1[&l.y];
        let (c0, c1) = (ch_amax(x0, *k), ch_amax(x1, *k));
        let spread = |c: &[f64]| {
            let max = c.iter().fold(0f64, |a, &b| a.max(b));
            let min = c.iter().fold(f64::INFINITY, |a, &b| a.min(b));
            (max / min, max / (c.iter().sum::<f64>() / c.len() as f64))
        };
        let ((r0, p0), (r1, p1)) = (spread(&c0), spread(&c1));
        let (w0, _, n) = weight_kn(&before, l.y);
        let (w1, _, _) = weight_kn(&m, l.y);
        // Each against the layer's own float output (a layer whose output columns absorbed the next
        // layer's 1/s computes a column-scaled output).
        let (y0, y1) = (matmul(x0, &w0, *k, n), matmul(x1, &w1, *k, n));
        let e0 = rel_err(&matmul(&fake_quant(x0, *k, &int8), &w0, *k, n), &y0);
        let e1 = rel_err(&matmul(&fake_quant(x1, *k, &int8), &w1, *k, n), &y1);
        eprintln!(
            "{}: channel amax max/min {r0:.1} -> {r1:.1}, amax/mean {p0:.2} -> {p1:.2}, \
             int8 per-tensor output error {e0:.4} -> {e1:.4}",
            l.name
        );
        assert!(r1 < r0 && p1 < p0, "{}", l.name);
        assert!(e1 < 0.8 * e0, "{}: {e1} vs {e0}", l.name);
    }
}

#[test]
fn alpha_one_moves_all_of_the_activation_range_into_the_weights() {
    // alpha = 1: s_j = max|X_j|, so every channel of X' has amax 1.
    let reg = registry();
    let mut m = block(&reg, 4);
    calibrate(&mut m, &batches(5, 2));
    smooth(&mut m, 1.0, &reg);
    for l in channel_linears(&m, 0) {
        let st = calib::read(&m, &m.funcs[0].ops[l.op]).unwrap();
        assert!(
            st.ch_amax.iter().all(|&a| (a - 1.0).abs() < 1e-6),
            "{}: {:?}",
            l.name,
            st.ch_amax
        );
    }
    // And the measured activations agree.
    let acts = activations(&m, &batches(5, 2));
    for (k, x) in acts.values() {
        assert!(ch_amax(x, *k).iter().all(|&a| (a - 1.0).abs() < 1e-5));
    }
}

#[test]
fn a_layer_without_statistics_is_refused_by_name() {
    let reg = registry();
    let mut m = block(&reg, 6);
    calibrate(&mut m, &batches(7, 1));
    let l = channel_linears(&m, 0)
        .into_iter()
        .find(|l| l.name == "wu")
        .unwrap();
    for a in [calib::ROWS, calib::AMAX, calib::CH_AMAX] {
        m.funcs[0].ops[l.op].attrs.remove(a);
    }
    let original = m.clone();
    let d = Smooth { alpha: 0.5 }
        .run(&mut m, &PassContext::new(&reg))
        .unwrap_err();
    assert!(
        d.message
            .contains("layer 'wu' has no calibration statistics"),
        "{}",
        d.message
    );
    assert_eq!(d.loc, original.funcs[0].ops[l.op].loc);
    assert_eq!(m, original, "nothing may change before the refusal");
}

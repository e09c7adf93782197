//! `qc formats`: the table of named formats.

use qc_ir::quant::{named_formats, Encoding, Scheme, TensorScale};

/// Formats a number compactly: powers of two as `2^k` when |k| >= 4, others in shortest decimal.
fn num(x: f64) -> String {
    let k = x.log2();
    if x > 0.0 && k.fract() == 0.0 && k.abs() >= 4.0 {
        format!("2^{}", k as i64)
    } else {
        format!("{x}")
    }
}

fn bits(ty: &qc_ir::QuantType) -> String {
    match (ty.bits_per_element(), ty.scheme) {
        (Some(b), _) => format!("{b}"),
        (None, Scheme::PerTensor) => format!("{} (+{}/tensor)", ty.elem.bits(), ty.scale.bits()),
        (None, _) => format!("{} (+{}/channel)", ty.elem.bits(), ty.scale.bits()),
    }
}

/// The table: one row per named format, columns aligned. Bits per element include block-scale (and zero
/// point) overhead; per-tensor and per-channel scales are shown separately because their share depends on
/// the shape; a second-level f32 tensor scale is not counted.
pub fn table() -> String {
    let header = [
        "name",
        "bits/elem",
        "element",
        "max",
        "min normal",
        "block",
        "scale",
        "rule",
        "tensor scale",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for f in named_formats() {
        let t = &f.ty;
        let block = match t.scheme {
            Scheme::PerTensor => "tensor".to_string(),
            Scheme::PerChannel { axis } => format!("channel (axis {axis})"),
            Scheme::Group { size, .. } => size.to_string(),
            Scheme::Block { rows, cols } => format!("{rows}x{cols}"),
        };
        let min_normal = match t.elem {
            Encoding::Int { .. } | Encoding::MxInt8 => "-".to_string(),
            e => e.min_normal().map(num).unwrap_or_default(),
        };
        let scale = match t.zero_point {
            Some(z) => format!("{} + {z} zero point", t.scale),
            None => t.scale.to_string(),
        };
        let ts = match t.tensor_scale {
            TensorScale::None => "-".to_string(),
            other => format!("f32 ({other})"),
        };
        rows.push(vec![
            f.name.to_string(),
            bits(t),
            t.elem.to_string(),
            num(t.elem.max_finite()),
            min_normal,
            block,
            scale,
            format!(
                "{}{}",
                t.rule,
                if t.convention == qc_ir::quant::Convention::Spec {
                    String::new()
                } else {
                    format!(" ({})", t.convention)
                }
            ),
            ts,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
        if i == 0 {
            out += &widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  ");
            out.push('\n');
        }
    }
    out
}

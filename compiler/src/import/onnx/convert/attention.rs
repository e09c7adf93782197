//! ONNX Attention (opsets 23 and 24) as nn ops, following ONNX's definition (its reference
//! implementation and function body): 3-D inputs split into heads; the cache concatenated; the additive
//! bias from the mask (a boolean mask selects 0 or -inf, a shorter mask is padded with -inf), the causal
//! frontier (offset by the past length, or per batch by `nonpad_kv_seqlen`) and the key padding; grouped
//! query heads repeated; Q and K each scaled by sqrt(scale); softcap; softmax (in `softmax_precision`),
//! with rows whose bias is all -inf set to zero; the product with V, merged back for 3-D inputs.
//! Outputs: Y, present_key, present_value, and the `qk_matmul_output_mode` tap.

use qc_ir::attr::{Attribute, Attrs, DenseData};
use qc_ir::diag::Diagnostic;
use qc_ir::module::Value;
use qc_ir::types::{Dim, ElemType, TensorType};
use qc_nn::NnOp;

use super::{attr_float, attr_int, attrs, elem_type, int, ints, Importer};
use crate::import::onnx::model::{DataType, Node};

const I64: ElemType = ElemType::Int {
    bits: 64,
    unsigned: false,
};

fn static_dim(imp: &Importer, node: &Node, v: Value, i: usize) -> Result<i64, Diagnostic> {
    let t = imp.f.ty(v);
    t.dims
        .get(i)
        .and_then(Dim::as_static)
        .map(|n| n as i64)
        .ok_or_else(|| imp.err(node, format!("needs a static dimension {i} in {t}")))
}

/// Converts one Attention node.
pub fn convert(imp: &mut Importer, node: &Node) -> Result<Vec<Value>, Diagnostic> {
    let loc = imp.model.loc(&node.path);
    let (mut q, mut k, mut v) = (imp.req(node, 0)?, imp.req(node, 1)?, imp.req(node, 2)?);
    let mask = imp.input(node, 3)?;
    let (past_k, past_v) = (imp.input(node, 4)?, imp.input(node, 5)?);
    let nonpad = imp.input(node, 6)?;
    if past_k.is_some() != past_v.is_some() {
        return Err(imp.err(node, "past_key and past_value must be given together"));
    }
    if nonpad.is_some() && past_k.is_some() {
        return Err(imp.err(
            node,
            "nonpad_kv_seqlen cannot be combined with a past cache",
        ));
    }
    for w in ["left_window_size", "right_window_size"] {
        if attr_int(node, w).is_some_and(|x| x != -1) {
            return Err(imp.err(node, format!("attribute '{w}' is not supported")));
        }
    }
    let elem = imp.f.ty(q).elem.clone();
    if !elem.is_float() {
        return Err(imp.err(node, format!("expected float inputs, not {}", imp.f.ty(q))));
    }
    let rank = imp.f.ty(q).rank();
    let none = Attrs::new;
    let t = |imp: &mut Importer, op: NnOp, ops: Vec<Value>, at: Attrs| {
        imp.emit_tmp(node, op, ops, at, None)
    };
    if rank == 3 {
        let heads = |name: &str| {
            attr_int(node, name)
                .filter(|&h| h > 0)
                .ok_or_else(|| imp.err(node, format!("3-D inputs need attribute '{name}'")))
        };
        let (hq, hkv) = (heads("q_num_heads")?, heads("kv_num_heads")?);
        for (x, h) in [(&mut q, hq), (&mut k, hkv), (&mut v, hkv)] {
            let shape = imp.i64s(&[0, 0, h, -1], &loc);
            let r = t(imp, NnOp::Reshape, vec![*x, shape], none())?;
            *x = t(
                imp,
                NnOp::Transpose,
                vec![r],
                attrs(vec![("perm", ints(&[0, 2, 1, 3]))]),
            )?;
        }
    } else if rank != 4 {
        return Err(imp.err(
            node,
            format!("expected 3-D or 4-D inputs, not {}", imp.f.ty(q)),
        ));
    }
    let scale = match attr_float(node, "scale") {
        Some(s) => s,
        None => 1.0 / (static_dim(imp, node, q, 3)? as f64).sqrt(),
    };
    let (pk, pv) = match (past_k, past_v) {
        (Some(a), Some(b)) => {
            let cat = attrs(vec![("axis", int(2))]);
            (
                t(imp, NnOp::Concat, vec![a, k], cat.clone())?,
                t(imp, NnOp::Concat, vec![b, v], cat)?,
            )
        }
        _ => (k, v),
    };
    let zero = imp.scalar_like(0.0, &elem, &loc);
    let neg_inf = imp.scalar_like(f64::NEG_INFINITY, &elem, &loc);
    let bool_ty = ElemType::Int {
        bits: 1,
        unsigned: false,
    };

    // The additive bias.
    let mut bias: Option<Value> = None;
    let needs_shapes =
        mask.is_some() || nonpad.is_some() || attr_int(node, "is_causal").unwrap_or(0) != 0;
    let (sq, skv) = if needs_shapes {
        (static_dim(imp, node, q, 2)?, static_dim(imp, node, pk, 2)?)
    } else {
        (0, 0)
    };
    let mut mask = mask;
    if let Some(m) = mask {
        let mt = imp.f.ty(m).clone();
        let last = static_dim(imp, node, m, mt.rank().saturating_sub(1))?;
        if last < skv {
            let r = mt.rank();
            let mut pads = vec![0i64; 2 * r];
            pads[2 * r - 1] = skv - last;
            let pads = imp.i64s(&pads, &loc);
            let fill = if mt.elem == bool_ty {
                imp.constant(
                    DenseData::Bool(vec![false]),
                    TensorType::new(&[], bool_ty.clone()),
                    &loc,
                )
            } else {
                imp.scalar_like(f64::NEG_INFINITY, &mt.elem, &loc)
            };
            let mode = attrs(vec![("mode", Attribute::Str("constant".into()))]);
            mask = Some(t(imp, NnOp::Pad, vec![m, pads, fill], mode)?);
        }
    }
    // A boolean mask as an additive one: true attends (0), false does not (-inf).
    if let Some(m) = mask {
        bias = Some(if imp.f.ty(m).elem == bool_ty {
            t(imp, NnOp::Where, vec![m, zero, neg_inf], none())?
        } else {
            m
        });
    }
    if attr_int(node, "is_causal").unwrap_or(0) != 0 {
        let causal = match (past_k, nonpad) {
            (None, Some(np)) => {
                // Per batch: key j is allowed for query i when j <= i + nonpad[b] - sq.
                let j = imp.constant(
                    DenseData::Int((0..skv).collect()),
                    TensorType::new(&[1, 1, skv as u64], I64),
                    &loc,
                );
                let i = imp.constant(
                    DenseData::Int((0..sq).map(|i| i - sq).collect()),
                    TensorType::new(&[1, sq as u64, 1], I64),
                    &loc,
                );
                let shape = imp.i64s(&[-1, 1, 1], &loc);
                let npl = t(imp, NnOp::Reshape, vec![np, shape], none())?;
                let front = t(imp, NnOp::Add, vec![i, npl], none())?;
                let allowed = t(imp, NnOp::LessOrEqual, vec![j, front], none())?;
                let c = t(imp, NnOp::Where, vec![allowed, zero, neg_inf], none())?;
                let shape = imp.i64s(&[-1, 1, sq, skv], &loc);
                t(imp, NnOp::Reshape, vec![c, shape], none())?
            }
            _ => {
                let offset = match past_k {
                    Some(p) => static_dim(imp, node, p, 2)?,
                    None => 0,
                };
                let vals: Vec<f64> = (0..sq)
                    .flat_map(|i| {
                        (0..skv).map(move |j| {
                            if j <= i + offset {
                                0.0
                            } else {
                                f64::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                imp.constant(
                    DenseData::Float(vals),
                    TensorType::new(&[sq as u64, skv as u64], elem.clone()),
                    &loc,
                )
            }
        };
        bias = Some(match bias {
            Some(b) => t(imp, NnOp::Add, vec![b, causal], none())?,
            None => causal,
        });
    }
    if let Some(np) = nonpad {
        // Keys at or past nonpad_kv_seqlen[b] are padding.
        let j = imp.constant(
            DenseData::Int((0..skv).collect()),
            TensorType::new(&[skv as u64], I64),
            &loc,
        );
        let shape = imp.i64s(&[-1, 1], &loc);
        let npl = t(imp, NnOp::Reshape, vec![np, shape], none())?;
        let keep = t(imp, NnOp::Less, vec![j, npl], none())?;
        let pad = t(imp, NnOp::Where, vec![keep, zero, neg_inf], none())?;
        let shape = imp.i64s(&[-1, 1, 1, skv], &loc);
        let pad = t(imp, NnOp::Reshape, vec![pad, shape], none())?;
        bias = Some(match bias {
            Some(b) => t(imp, NnOp::Add, vec![b, pad], none())?,
            None => pad,
        });
    }

    // Grouped-query attention: each key/value head serves q_heads / kv_heads query heads in a row.
    let (hq, hk) = (
        imp.f.ty(q).dims[1].as_static(),
        imp.f.ty(pk).dims[1].as_static(),
    );
    let (kk, vv) = match (hq, hk) {
        (Some(a), Some(b)) if a != b && b > 0 && a % b == 0 => {
            let idx: Vec<i64> = (0..a as i64).map(|i| i / (a / b) as i64).collect();
            let idx = imp.i64s(&idx, &loc);
            let g = attrs(vec![("axis", int(1))]);
            (
                t(imp, NnOp::Gather, vec![pk, idx], g.clone())?,
                t(imp, NnOp::Gather, vec![pv, idx], g)?,
            )
        }
        _ => (pk, pv),
    };

    let s = imp.scalar_like(scale.sqrt(), &elem, &loc);
    let qs = t(imp, NnOp::Mul, vec![q, s], none())?;
    let ks = t(imp, NnOp::Mul, vec![kk, s], none())?;
    let kt = t(
        imp,
        NnOp::Transpose,
        vec![ks],
        attrs(vec![("perm", ints(&[0, 1, 3, 2]))]),
    )?;
    let mut qk = t(imp, NnOp::Matmul, vec![qs, kt], none())?;
    let softcap = attr_float(node, "softcap").unwrap_or(0.0);
    if softcap > 0.0 {
        let c = imp.scalar_like(softcap, &elem, &loc);
        let d = t(imp, NnOp::Div, vec![qk, c], none())?;
        let th = t(imp, NnOp::Tanh, vec![d], none())?;
        qk = t(imp, NnOp::Mul, vec![th, c], none())?;
    }
    let qkb = match bias {
        Some(b) => t(imp, NnOp::Add, vec![qk, b], none())?,
        None => qk,
    };
    let mode = attr_int(node, "qk_matmul_output_mode").unwrap_or(0);
    let mut tap = if mode == 2 { qkb } else { qk };
    let mut sm_in = qkb;
    if let Some(code) = attr_int(node, "softmax_precision") {
        let p = DataType::from_code(code as i32)
            .ok_or_else(|| format!("unknown softmax_precision {code}"))
            .and_then(elem_type)
            .map_err(|e| imp.err(node, e))?;
        if p != elem {
            sm_in = imp.emit_tmp(node, NnOp::Cast, vec![qkb], none(), Some(p))?;
        }
    }
    let mut sm = t(
        imp,
        NnOp::Softmax,
        vec![sm_in],
        attrs(vec![("axis", int(-1))]),
    )?;
    if let Some(b) = bias {
        // Rows with no attendable key (their bias all -inf) are zero.
        let axes = imp.i64s(&[-1], &loc);
        let mx = t(
            imp,
            NnOp::ReduceMax,
            vec![b, axes],
            attrs(vec![("keepdims", int(1))]),
        )?;
        let all = t(
            imp,
            NnOp::IsInf,
            vec![mx],
            attrs(vec![("detect_positive", int(0))]),
        )?;
        let sm_elem = imp.f.ty(sm).elem.clone();
        let z = imp.scalar_like(0.0, &sm_elem, &loc);
        sm = t(imp, NnOp::Where, vec![all, z, sm], none())?;
    }
    if mode == 3 {
        tap = sm;
    }
    let to_elem = |imp: &mut Importer, x: Value| {
        if imp.f.ty(x).elem == elem {
            Ok(x)
        } else {
            imp.emit_tmp(node, NnOp::Cast, vec![x], Attrs::new(), Some(elem.clone()))
        }
    };
    let tap = to_elem(imp, tap)?;
    let sm = to_elem(imp, sm)?;
    let y = if rank == 3 {
        let y = t(imp, NnOp::Matmul, vec![sm, vv], none())?;
        let y = t(
            imp,
            NnOp::Transpose,
            vec![y],
            attrs(vec![("perm", ints(&[0, 2, 1, 3]))]),
        )?;
        let shape = imp.i64s(&[0, 0, -1], &loc);
        imp.emit(node, NnOp::Reshape, vec![y, shape], none(), None)?[0]
    } else {
        imp.emit(node, NnOp::Matmul, vec![sm, vv], none(), None)?[0]
    };
    Ok(vec![y, pk, pv, tap])
}

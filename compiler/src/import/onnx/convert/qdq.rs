//! QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear to the quant dialect's linear ops.
//!
//! Omitted zero points are materialized as zeros of the quantized type; the result type of
//! QuantizeLinear is the zero point's type, else `output_dtype`, else uint8 (as ONNX says); that of
//! DequantizeLinear is `output_dtype`, else the scale's type.

use qc_ir::attr::{Attribute, Attrs, DenseData};
use qc_ir::diag::Diagnostic;
use qc_ir::module::Value;
use qc_ir::types::{ElemType, TensorType};
use qc_quant::ops::QuantOp;

use super::{attr_int, elem_type, Importer};
use crate::import::onnx::model::{DataType, Node};

fn zeros(imp: &mut Importer, like: &TensorType, elem: &ElemType, node: &Node) -> Value {
    let loc = imp.model.loc(&node.path);
    let data = match elem {
        ElemType::Int { .. } => DenseData::Int(vec![0]),
        _ => DenseData::Float(vec![0.0]),
    };
    imp.constant(data, like.with_elem(elem.clone()), &loc)
}

fn dtype_attr(imp: &Importer, node: &Node, name: &str) -> Result<Option<ElemType>, Diagnostic> {
    match attr_int(node, name) {
        None | Some(0) => Ok(None),
        Some(code) => {
            let dt = DataType::from_code(code as i32)
                .ok_or_else(|| imp.err(node, format!("unknown data type {code} in '{name}'")))?;
            elem_type(dt).map(Some).map_err(|e| imp.err(node, e))
        }
    }
}

/// Converts one QDQ node.
pub fn convert(imp: &mut Importer, node: &Node) -> Result<Vec<Value>, Diagnostic> {
    let loc = imp.model.loc(&node.path);
    let x = imp.req(node, 0)?;
    let xt = imp.f.ty(x).clone();
    if node.op_type == "DynamicQuantizeLinear" {
        let u8t = ElemType::Int {
            bits: 8,
            unsigned: true,
        };
        let tys = vec![
            xt.with_elem(u8t.clone()),
            TensorType::new(&[], ElemType::F32),
            TensorType::new(&[], u8t),
        ];
        return Ok(imp.f.push_op(
            QuantOp::DynamicQuantizeLinear.def(),
            vec![x],
            tys,
            Attrs::new(),
            loc,
        ));
    }
    let scale = imp.req(node, 1)?;
    let st = imp.f.ty(scale).clone();
    let mut attrs: Attrs = [("axis", Attribute::Int(attr_int(node, "axis").unwrap_or(1)))]
        .into_iter()
        .collect();
    if let Some(b) = attr_int(node, "block_size").filter(|&b| b != 0) {
        attrs.set("block_size", Attribute::Int(b));
    }
    let (op, out_elem, zp) = if node.op_type == "QuantizeLinear" {
        if let Some(s) = attr_int(node, "saturate") {
            attrs.set("saturate", Attribute::Int(s));
        }
        let declared = dtype_attr(imp, node, "output_dtype")?;
        let zp = imp.input(node, 2)?;
        let elem = match (zp.map(|z| imp.f.ty(z).elem.clone()), declared) {
            (Some(z), Some(d)) if z != d => {
                return Err(imp.err(
                    node,
                    format!("output_dtype {d} differs from the zero point's type {z}"),
                ))
            }
            (Some(z), _) => z,
            (None, Some(d)) => d,
            (None, None) => ElemType::Int {
                bits: 8,
                unsigned: true,
            },
        };
        let zp = match zp {
            Some(z) => z,
            None => zeros(imp, &st, &elem, node),
        };
        (QuantOp::QuantizeLinear, elem, zp)
    } else {
        let elem = dtype_attr(imp, node, "output_dtype")?.unwrap_or_else(|| st.elem.clone());
        let zp = match imp.input(node, 2)? {
            Some(z) => z,
            None => {
                let xe = xt.elem.clone();
                zeros(imp, &st, &xe, node)
            }
        };
        (QuantOp::DequantizeLinear, elem, zp)
    };
    let result = xt.with_elem(out_elem);
    Ok(imp
        .f
        .push_op(op.def(), vec![x, scale, zp], vec![result], attrs, loc))
}

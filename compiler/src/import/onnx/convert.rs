//! ONNX graph to qc IR: one function, `@main`, whose arguments are the graph inputs and whose results are
//! the graph outputs.
//!
//! Initializers become `qc.constant`s: small ones inline (`dense<...>`), others `dense_resource`s that
//! reference their bytes in the mapped model file (`external<"model.onnx", offset, length>`), never
//! copied. Each node becomes nn ops with ONNX semantics (see [`convert_node`]'s table); optional ONNX
//! inputs are materialized as constants so that every nn operand is present. Result types come from
//! qc-nn's inference, refined by the model's declared `value_info` where inference leaves a dimension
//! dynamic. Every diagnostic names the model file and the node's field path.

use std::collections::BTreeMap;

use qc_ir::attr::{Attribute, Attrs, DenseData, F64Bits};
use qc_ir::diag::{Diagnostic, Location};
use qc_ir::module::{Func, Module, Value};
use qc_ir::ops::{OpDef, QcOp};
use qc_ir::quant::Encoding;
use qc_ir::types::{Dim, ElemType, TensorType};
use qc_nn::infer::{infer, InferCx};
use qc_nn::NnOp;

use super::model::{self, AttrValue, DataType, Node, OnnxModel, TensorData};

mod attention;
mod qdq;

/// Initializers with at most this many elements become inline `dense<...>` literals.
const INLINE_LIMIT: u64 = 64;

/// The qc element type of an ONNX data type.
pub fn elem_type(dt: DataType) -> Result<ElemType, String> {
    use DataType::*;
    let int = |bits, unsigned| ElemType::Int { bits, unsigned };
    Ok(match dt {
        Float => ElemType::F32,
        Double => ElemType::F64,
        Float16 => ElemType::F16,
        Bfloat16 => ElemType::BF16,
        Bool => int(1, false),
        Int8 => int(8, false),
        Uint8 => int(8, true),
        Int16 => int(16, false),
        Uint16 => int(16, true),
        Int32 => int(32, false),
        Uint32 => int(32, true),
        Int64 => int(64, false),
        Uint64 => int(64, true),
        Int4 => int(4, false),
        Uint4 => int(4, true),
        Int2 => int(2, false),
        Uint2 => int(2, true),
        Float8E4M3FN => ElemType::Raw(Encoding::E4M3FN),
        Float8E5M2 => ElemType::Raw(Encoding::E5M2),
        Float8E4M3FNUZ => ElemType::Raw(Encoding::from_name("e4m3fnuz").ok_or("e4m3fnuz")?),
        Float8E5M2FNUZ => ElemType::Raw(Encoding::from_name("e5m2fnuz").ok_or("e5m2fnuz")?),
        Float4E2M1 => ElemType::Raw(Encoding::E2M1),
        Float8E8M0 => ElemType::Raw(Encoding::E8M0),
        Float6E2M3 => ElemType::Raw(Encoding::E2M3),
        Float6E3M2 => ElemType::Raw(Encoding::E3M2),
        String | Complex64 | Complex128 => {
            return Err(format!("{} tensors are not supported", dt.name()))
        }
    })
}

fn ty_of(vi: &model::TensorType) -> Result<TensorType, String> {
    let shape = vi
        .shape
        .as_ref()
        .ok_or("tensors of unknown rank are not supported")?;
    let dims = shape
        .iter()
        .map(|d| match d {
            model::Dim::Fixed(n) => Dim::Static(*n),
            model::Dim::Symbol(s) => Dim::Symbol(qc_ir::module::sanitize_name(s).into()),
            model::Dim::Unknown => Dim::Dynamic,
        })
        .collect();
    Ok(TensorType {
        dims,
        elem: elem_type(vi.dtype)?,
    })
}

/// The values of a model tensor as dense data (integers for integer and bool types, floats otherwise).
fn dense_of_tensor(t: &model::Tensor, elem: &ElemType) -> Result<DenseData, String> {
    let n = t.num_elements() as usize;
    if let ElemType::Raw(enc) = elem {
        // Codes are packed little-endian, low bits first, at the encoding's width (8, 6 or 4 bits).
        let bytes = t.raw_bytes().ok_or("cannot read the tensor's bytes")?;
        let codec = qc_quant::codec::Codec::new(*enc).map_err(|e| e.to_string())?;
        let b = enc.bits() as usize;
        let values = (0..n)
            .map(|i| {
                let bit = i * b;
                let word = u16::from_le_bytes([
                    bytes.get(bit / 8).copied().unwrap_or(0),
                    bytes.get(bit / 8 + 1).copied().unwrap_or(0),
                ]);
                let code = (word >> (bit % 8)) as u32 & ((1u32 << b) - 1);
                codec.decode(code) as f64
            })
            .collect();
        return Ok(DenseData::Float(values));
    }
    let ints = |v: Vec<i64>| Ok(DenseData::Int(v));
    match (&t.data, elem) {
        (TensorData::Floats(v), _) if t.dtype == DataType::Float => {
            Ok(DenseData::Float(v.iter().map(|&x| x as f64).collect()))
        }
        (TensorData::Doubles(v), _) if t.dtype == DataType::Double => {
            Ok(DenseData::Float(v.clone()))
        }
        (TensorData::Int64s(v), _) => ints(v.clone()),
        (TensorData::Uint64s(v), _) => ints(v.iter().map(|&x| x as i64).collect()),
        (TensorData::Int32s(v), ElemType::Int { bits, unsigned }) if *bits >= 8 || *bits == 1 => {
            ints(
                v.iter()
                    .map(|&x| {
                        if *unsigned {
                            x as u32 as i64 & mask(*bits)
                        } else {
                            x as i64
                        }
                    })
                    .collect(),
            )
        }
        (TensorData::Int32s(v), ElemType::F16) => Ok(DenseData::Float(
            v.iter()
                .map(|&x| half::f16::from_bits(x as u16).to_f64())
                .collect(),
        )),
        (TensorData::Int32s(v), ElemType::BF16) => Ok(DenseData::Float(
            v.iter()
                .map(|&x| half::bf16::from_bits(x as u16).to_f64())
                .collect(),
        )),
        (TensorData::Raw(r), e) => decode_raw(r.bytes(), n, e),
        (_, ElemType::Int { bits, unsigned }) if *bits < 8 => {
            let bytes = t.raw_bytes().ok_or("cannot read the tensor's bytes")?;
            decode_raw(
                &bytes,
                n,
                &ElemType::Int {
                    bits: *bits,
                    unsigned: *unsigned,
                },
            )
        }
        _ => Err(format!(
            "{} data of this kind is not supported",
            t.dtype.name()
        )),
    }
}

fn mask(bits: u8) -> i64 {
    if bits >= 64 {
        -1
    } else {
        (1i64 << bits) - 1
    }
}

/// Decodes little-endian raw bytes (sub-byte integers packed low bits first, as ONNX stores them).
fn decode_raw(bytes: &[u8], n: usize, elem: &ElemType) -> Result<DenseData, String> {
    let le = |size: usize| bytes.chunks_exact(size).take(n);
    Ok(match elem {
        ElemType::F32 => DenseData::Float(
            le(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
        ),
        ElemType::F64 => DenseData::Float(
            le(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        ElemType::F16 => DenseData::Float(
            le(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
        ),
        ElemType::BF16 => DenseData::Float(
            le(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
        ),
        ElemType::Int { bits: 1, .. } => {
            DenseData::Int(le(1).map(|c| (c[0] != 0) as i64).collect())
        }
        ElemType::Int { bits, unsigned } if *bits >= 8 => {
            let size = *bits as usize / 8;
            DenseData::Int(
                le(size)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b[..size].copy_from_slice(c);
                        let v = u64::from_le_bytes(b) as i64;
                        if *unsigned || size == 8 {
                            v
                        } else {
                            (v << (64 - 8 * size)) >> (64 - 8 * size)
                        }
                    })
                    .collect(),
            )
        }
        ElemType::Int { bits, unsigned } => {
            let b = *bits as usize;
            DenseData::Int(
                (0..n)
                    .map(|i| {
                        let bit = i * b;
                        let v = ((bytes.get(bit / 8).copied().unwrap_or(0) >> (bit % 8)) as i64)
                            & mask(*bits);
                        if *unsigned || (v >> (b - 1)) & 1 == 0 {
                            v
                        } else {
                            v - (1 << b)
                        }
                    })
                    .collect(),
            )
        }
        e => return Err(format!("{e} constants are not supported")),
    })
}

struct Importer<'m> {
    model: &'m OnnxModel,
    f: Func,
    values: BTreeMap<String, Value>,
    consts: BTreeMap<Value, DenseData>,
    declared: BTreeMap<&'m str, &'m model::ValueInfo>,
    module: Module,
    /// False while emitting the inner ops of a decomposition, whose results are not the node's outputs
    /// (their types are not refined with the outputs' declared types).
    refine: bool,
}

/// Converts a loaded model to a module with one function, `@main`.
pub fn import_model(model: &OnnxModel) -> Result<Module, Diagnostic> {
    let mut imp = Importer {
        model,
        f: Func::new("main"),
        values: BTreeMap::new(),
        consts: BTreeMap::new(),
        declared: model
            .value_info
            .iter()
            .chain(&model.outputs)
            .map(|v| (v.name.as_str(), v))
            .collect(),
        module: Module::default(),
        refine: true,
    };
    imp.f.loc = model.loc("graph");
    for vi in &model.inputs {
        let ty = vi
            .ty
            .as_ref()
            .ok_or_else(|| "a graph input has no type".to_string())
            .and_then(ty_of)
            .map_err(|e| Diagnostic::error(model.loc(&vi.path), e))?;
        let v = imp.f.add_arg(ty, Some(&vi.name));
        imp.values.insert(vi.name.clone(), v);
    }
    for (i, t) in model.initializers.iter().enumerate() {
        let loc = model.loc(format!("graph.initializer[{i}]"));
        let v = imp.initializer(t, loc)?;
        imp.values.insert(t.name.clone(), v);
    }
    for node in &model.nodes {
        imp.node(node)?;
    }
    for (i, out) in model.outputs.iter().enumerate() {
        let loc = model.loc(format!("graph.output[{i}]"));
        let &v = imp.values.get(&out.name).ok_or_else(|| {
            Diagnostic::error(
                loc.clone(),
                format!("output '{}' is not computed", out.name),
            )
        })?;
        imp.f.ret.push(v);
        let ty = imp.f.ty(v).clone();
        imp.f.result_types.push(ty);
    }
    imp.f.ret_loc = model.loc("graph.output");
    let mut m = imp.module;
    m.funcs.push(imp.f);
    Ok(m)
}

impl<'m> Importer<'m> {
    fn initializer(&mut self, t: &model::Tensor, loc: Location) -> Result<Value, Diagnostic> {
        let err =
            |e: String| Diagnostic::error(loc.clone(), format!("initializer '{}': {e}", t.name));
        let elem = elem_type(t.dtype).map_err(err)?;
        let ty = TensorType::new(&t.dims, elem.clone());
        let n = t.num_elements();
        let byte_aligned = elem.byte_size().is_some();
        let value = match &t.data {
            TensorData::Raw(r) if n > INLINE_LIMIT && byte_aligned => {
                let name = self.resource_name(&t.name);
                self.module.resources.insert(name.clone(), r.to_blob());
                Attribute::DenseResource(name)
            }
            _ if n > INLINE_LIMIT && byte_aligned => {
                let bytes = t
                    .raw_bytes()
                    .ok_or_else(|| err("cannot read the tensor's bytes".into()))?;
                let name = self.resource_name(&t.name);
                let blob = qc_ir::resource::Blob::Owned {
                    data: bytes.into_owned().into(),
                    align: 16,
                };
                self.module.resources.insert(name.clone(), blob);
                Attribute::DenseResource(name)
            }
            _ => Attribute::Dense(dense_of_tensor(t, &elem).map_err(err)?.canonical()),
        };
        let v = self.f.push_op(
            QcOp::Constant.def(),
            vec![],
            vec![ty],
            [("value", value.clone())].into_iter().collect(),
            loc,
        )[0];
        self.f.value_mut(v).name = Some(qc_ir::module::sanitize_name(&t.name));
        if let Attribute::Dense(d) = value {
            self.consts.insert(v, d);
        }
        Ok(v)
    }

    fn resource_name(&self, name: &str) -> String {
        let base = qc_ir::module::sanitize_name(if name.is_empty() { "tensor" } else { name });
        let mut candidate = base.clone();
        let mut k = 1;
        while self.module.resources.get(&candidate).is_some() {
            candidate = format!("{base}_{k}");
            k += 1;
        }
        candidate
    }

    /// A new constant (an import-time materialization of a default or attribute).
    fn constant(&mut self, data: DenseData, ty: TensorType, loc: &Location) -> Value {
        let data = data.canonical();
        let v = self.f.push_op(
            QcOp::Constant.def(),
            vec![],
            vec![ty],
            [("value", Attribute::Dense(data.clone()))]
                .into_iter()
                .collect(),
            loc.clone(),
        )[0];
        self.consts.insert(v, data);
        v
    }

    fn i64s(&mut self, v: &[i64], loc: &Location) -> Value {
        let ty = TensorType::new(
            &[v.len() as u64],
            ElemType::Int {
                bits: 64,
                unsigned: false,
            },
        );
        self.constant(DenseData::Int(v.to_vec()), ty, loc)
    }

    fn scalar_like(&mut self, x: f64, elem: &ElemType, loc: &Location) -> Value {
        let data = match elem {
            ElemType::Int { .. } => DenseData::Int(vec![x as i64]),
            _ => DenseData::Float(vec![x]),
        };
        self.constant(data, TensorType::new(&[], elem.clone()), loc)
    }

    /// Emits `op` on `operands`, inferring result types and refining them with declared types.
    fn emit(
        &mut self,
        node: &Node,
        op: NnOp,
        operands: Vec<Value>,
        attrs: Attrs,
        result_elem: Option<ElemType>,
    ) -> Result<Vec<Value>, Diagnostic> {
        let loc = self.model.loc(&node.path);
        let types: Vec<TensorType> = operands.iter().map(|&v| self.f.ty(v).clone()).collect();
        let cx = InferCx {
            types: types.iter().collect(),
            attrs: &attrs,
            consts: operands.iter().map(|v| self.consts.get(v)).collect(),
            result_elem: result_elem.clone(),
        };
        let mut out = infer(op, &cx)
            .map_err(|e| Diagnostic::error(loc.clone(), format!("{}: {e}", node.op_type)))?;
        for (i, t) in out.iter_mut().enumerate().filter(|_| self.refine) {
            if let Some(name) = node.outputs.get(i) {
                if let Some(Ok(decl)) = self
                    .declared
                    .get(name.as_str())
                    .and_then(|vi| vi.ty.as_ref())
                    .map(ty_of)
                {
                    refine(t, &decl);
                }
            }
        }
        let def: &'static OpDef = op.def();
        let results = self.f.push_op(def, operands, out, attrs, loc.clone());
        // Fold at import when every operand is a small constant: shape subgraphs become constants, so
        // later shape inference sees their values.
        let all_const = self
            .f
            .ops
            .last()
            .is_some_and(|o| o.operands.iter().all(|v| self.consts.contains_key(v)));
        // Shape and Size depend only on the operand's type: fold them when it is static.
        if matches!(op, NnOp::Shape | NnOp::Size) && !all_const {
            let op = self.f.ops.last().expect("just pushed");
            if let Some(dims) = self.f.ty(op.operands[0]).static_shape() {
                let v: Vec<i64> = if op_is_size(op) {
                    vec![dims.iter().product::<u64>() as i64]
                } else {
                    let r = dims.len() as i64;
                    let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
                    let at = |n: &str, d: i64| op.attr(n).and_then(Attribute::as_int).unwrap_or(d);
                    let (s, e) = (clamp(at("start", 0)), clamp(at("end", r)));
                    (s..e.max(s)).map(|i| dims[i as usize] as i64).collect()
                };
                self.consts
                    .insert(results[0], DenseData::Int(v).canonical());
            }
        }
        if all_const
            && results.len() == 1
            && self
                .f
                .ty(results[0])
                .num_elements()
                .is_some_and(|n| n <= 4096)
        {
            if let Some(d) = self.fold_last(result_elem.as_ref()) {
                self.consts.insert(results[0], d);
            }
        }
        Ok(results)
    }

    /// [`Importer::emit`] for an inner op of a decomposition: one result, not one of the node's outputs.
    fn emit_tmp(
        &mut self,
        node: &Node,
        op: NnOp,
        operands: Vec<Value>,
        attrs: Attrs,
        result_elem: Option<ElemType>,
    ) -> Result<Value, Diagnostic> {
        self.refine = false;
        let r = self.emit(node, op, operands, attrs, result_elem);
        self.refine = true;
        Ok(r?[0])
    }

    fn fold_last(&self, result_elem: Option<&ElemType>) -> Option<DenseData> {
        let op = self.f.ops.last()?;
        let nn = NnOp::of(op)?;
        let inputs: Vec<qc_runtime::interp::Tensor> = op
            .operands
            .iter()
            .map(|v| {
                qc_runtime::interp::Tensor::from_dense(self.consts.get(v)?, self.f.ty(*v)).ok()
            })
            .collect::<Option<_>>()?;
        let elem = result_elem
            .cloned()
            .unwrap_or_else(|| self.f.ty(op.results[0]).elem.clone());
        let out = qc_runtime::interp::eval_nn(nn, &op.attrs, &inputs, &elem).ok()?;
        (out.len() == 1 && out[0].ty() == *self.f.ty(op.results[0])).then(|| out[0].to_dense())
    }

    fn input(&self, node: &Node, i: usize) -> Result<Option<Value>, Diagnostic> {
        match node.inputs.get(i).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(name) => self.values.get(name).copied().map(Some).ok_or_else(|| {
                Diagnostic::error(
                    self.model.loc(format!("{}.input[{i}]", node.path)),
                    format!("'{name}' is not defined"),
                )
            }),
        }
    }

    fn req(&self, node: &Node, i: usize) -> Result<Value, Diagnostic> {
        self.input(node, i)?.ok_or_else(|| {
            Diagnostic::error(
                self.model.loc(format!("{}.input[{i}]", node.path)),
                format!("{} needs input {i}", node.op_type),
            )
        })
    }

    fn err(&self, node: &Node, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::error(
            self.model.loc(&node.path),
            format!("{}: {}", node.op_type, msg.into()),
        )
    }

    fn bind(&mut self, node: &Node, results: Vec<Value>) -> Result<(), Diagnostic> {
        for (i, v) in results.into_iter().enumerate() {
            match node.outputs.get(i).map(String::as_str) {
                None | Some("") => {}
                Some(name) => {
                    self.f.value_mut(v).name = Some(qc_ir::module::sanitize_name(name));
                    self.values.insert(name.to_string(), v);
                }
            }
        }
        for (i, name) in node.outputs.iter().enumerate() {
            if !name.is_empty() && !self.values.contains_key(name) {
                return Err(Diagnostic::error(
                    self.model.loc(format!("{}.output[{i}]", node.path)),
                    format!("{}: output {i} ('{name}') is not supported", node.op_type),
                ));
            }
        }
        Ok(())
    }

    fn node(&mut self, node: &Node) -> Result<(), Diagnostic> {
        let results = convert_node(self, node)?;
        self.bind(node, results)
    }
}

/// Makes `t` more precise where `decl` (a declared type of the same rank and element type) knows a
/// dimension that inference left dynamic.
fn refine(t: &mut TensorType, decl: &TensorType) {
    if decl.rank() == t.rank() && decl.elem == t.elem {
        for (d, k) in t.dims.iter_mut().zip(&decl.dims) {
            if *d == Dim::Dynamic {
                *d = k.clone();
            }
        }
    }
}

fn op_is_size(op: &qc_ir::Op) -> bool {
    NnOp::of(op) == Some(NnOp::Size)
}

fn attr_int(node: &Node, name: &str) -> Option<i64> {
    match node.attr(name).map(|a| &a.value) {
        Some(AttrValue::Int(i)) => Some(*i),
        _ => None,
    }
}

fn attr_float(node: &Node, name: &str) -> Option<f64> {
    match node.attr(name).map(|a| &a.value) {
        Some(AttrValue::Float(f)) => Some(*f as f64),
        _ => None,
    }
}

fn attr_ints(node: &Node, name: &str) -> Option<Vec<i64>> {
    match node.attr(name).map(|a| &a.value) {
        Some(AttrValue::Ints(v)) => Some(v.clone()),
        _ => None,
    }
}

fn attr_str(node: &Node, name: &str) -> Option<String> {
    match node.attr(name).map(|a| &a.value) {
        Some(AttrValue::String(s)) => Some(String::from_utf8_lossy(s).into_owned()),
        _ => None,
    }
}

fn attrs(items: Vec<(&str, Attribute)>) -> Attrs {
    items.into_iter().collect()
}

fn int(i: i64) -> Attribute {
    Attribute::Int(i)
}

fn float(f: f64) -> Attribute {
    Attribute::Float(F64Bits(f))
}

fn ints(v: &[i64]) -> Attribute {
    Attribute::Array(v.iter().map(|&i| Attribute::Int(i)).collect())
}

/// Converts one node. The table: elementwise and activation ops map one to one; variadic Sum / Max / Min
/// / Mean chain binary ops; Constant, Dropout (inference), CastLike, Gemm, Conv and pools (auto_pad
/// resolved to explicit pads), Squeeze without axes, Split by count, Slice, Pad, Clip and Trilu with
/// omitted inputs, reductions with attribute or input axes (by opset) are normalized here.
fn convert_node(imp: &mut Importer, node: &Node) -> Result<Vec<Value>, Diagnostic> {
    let loc = imp.model.loc(&node.path);
    let simple = |op| -> Option<NnOp> { Some(op) };
    let unary_or_binary = match node.op_type.as_str() {
        "Add" => simple(NnOp::Add),
        "Sub" => simple(NnOp::Sub),
        "Mul" => simple(NnOp::Mul),
        "Div" => simple(NnOp::Div),
        "Pow" => simple(NnOp::Pow),
        "Equal" => simple(NnOp::Equal),
        "Less" => simple(NnOp::Less),
        "LessOrEqual" => simple(NnOp::LessOrEqual),
        "Greater" => simple(NnOp::Greater),
        "GreaterOrEqual" => simple(NnOp::GreaterOrEqual),
        "And" => simple(NnOp::And),
        "Or" => simple(NnOp::Or),
        "Xor" => simple(NnOp::Xor),
        "Not" => simple(NnOp::Not),
        "Neg" => simple(NnOp::Neg),
        "Abs" => simple(NnOp::Abs),
        "Sign" => simple(NnOp::Sign),
        "Relu" => simple(NnOp::Relu),
        "Exp" => simple(NnOp::Exp),
        "Log" => simple(NnOp::Log),
        "Sqrt" => simple(NnOp::Sqrt),
        "Reciprocal" => simple(NnOp::Reciprocal),
        "Tanh" => simple(NnOp::Tanh),
        "Sigmoid" => simple(NnOp::Sigmoid),
        "Erf" => simple(NnOp::Erf),
        "Sin" => simple(NnOp::Sin),
        "Cos" => simple(NnOp::Cos),
        "Floor" => simple(NnOp::Floor),
        "Ceil" => simple(NnOp::Ceil),
        "Round" => simple(NnOp::Round),
        "Softplus" => simple(NnOp::Softplus),
        "HardSwish" => simple(NnOp::HardSwish),
        "IsNaN" => simple(NnOp::IsNan),
        "Identity" => simple(NnOp::Identity),
        "Where" => simple(NnOp::Where),
        "MatMul" => simple(NnOp::Matmul),
        "Expand" => simple(NnOp::Expand),
        "Tile" => simple(NnOp::Tile),
        "Range" => simple(NnOp::Range),
        "GlobalAveragePool" => simple(NnOp::GlobalAvgPool),
        "GlobalMaxPool" => simple(NnOp::GlobalMaxPool),
        "Size" => simple(NnOp::Size),
        "Tan" => simple(NnOp::Tan),
        "Asin" => simple(NnOp::Asin),
        "Acos" => simple(NnOp::Acos),
        "Atan" => simple(NnOp::Atan),
        "Sinh" => simple(NnOp::Sinh),
        "Cosh" => simple(NnOp::Cosh),
        "Asinh" => simple(NnOp::Asinh),
        "Acosh" => simple(NnOp::Acosh),
        "Atanh" => simple(NnOp::Atanh),
        "Softsign" => simple(NnOp::Softsign),
        "Mish" => simple(NnOp::Mish),
        "BitwiseAnd" => simple(NnOp::BitwiseAnd),
        "BitwiseOr" => simple(NnOp::BitwiseOr),
        "BitwiseXor" => simple(NnOp::BitwiseXor),
        "BitwiseNot" => simple(NnOp::BitwiseNot),
        _ => None,
    };
    if let Some(op) = unary_or_binary {
        let operands = (0..node.inputs.len())
            .map(|i| imp.req(node, i))
            .collect::<Result<Vec<_>, _>>()?;
        return imp.emit(node, op, operands, Attrs::new(), None);
    }
    let x = || imp.req(node, 0);
    match node.op_type.as_str() {
        "Sum" | "Max" | "Min" | "Mean" => {
            let op = match node.op_type.as_str() {
                "Max" => NnOp::Max,
                "Min" => NnOp::Min,
                _ => NnOp::Add,
            };
            let operands = (0..node.inputs.len())
                .map(|i| imp.req(node, i))
                .collect::<Result<Vec<_>, _>>()?;
            let mut acc = *operands
                .first()
                .ok_or_else(|| imp.err(node, "needs at least one input"))?;
            for &v in &operands[1..] {
                acc = imp.emit(node, op, vec![acc, v], Attrs::new(), None)?[0];
            }
            if node.op_type == "Mean" && operands.len() > 1 {
                let elem = imp.f.ty(acc).elem.clone();
                let n = imp.scalar_like(operands.len() as f64, &elem, &loc);
                acc = imp.emit(node, NnOp::Div, vec![acc, n], Attrs::new(), None)?[0];
            }
            if operands.len() == 1 {
                acc = imp.emit(node, NnOp::Identity, vec![acc], Attrs::new(), None)?[0];
            }
            Ok(vec![acc])
        }
        "Mod" => {
            let ops = vec![x()?, imp.req(node, 1)?];
            imp.emit(
                node,
                NnOp::Mod,
                ops,
                attrs(vec![("fmod", int(attr_int(node, "fmod").unwrap_or(0)))]),
                None,
            )
        }
        "Gelu" => {
            let a = attr_str(node, "approximate").unwrap_or_else(|| "none".into());
            imp.emit(
                node,
                NnOp::Gelu,
                vec![x()?],
                attrs(vec![("approximate", Attribute::Str(a))]),
                None,
            )
        }
        "LeakyRelu" => imp.emit(
            node,
            NnOp::LeakyRelu,
            vec![x()?],
            attrs(vec![(
                "alpha",
                float(attr_float(node, "alpha").unwrap_or(0.01)),
            )]),
            None,
        ),
        "Elu" => imp.emit(
            node,
            NnOp::Elu,
            vec![x()?],
            attrs(vec![(
                "alpha",
                float(attr_float(node, "alpha").unwrap_or(1.0)),
            )]),
            None,
        ),
        "HardSigmoid" => imp.emit(
            node,
            NnOp::HardSigmoid,
            vec![x()?],
            attrs(vec![
                ("alpha", float(attr_float(node, "alpha").unwrap_or(0.2))),
                ("beta", float(attr_float(node, "beta").unwrap_or(0.5))),
            ]),
            None,
        ),
        "Selu" | "Celu" | "ThresholdedRelu" | "Swish" => {
            let (op, alpha) = match node.op_type.as_str() {
                "Selu" => (NnOp::Selu, 1.673_263_192_176_818_8),
                "Celu" => (NnOp::Celu, 1.0),
                "ThresholdedRelu" => (NnOp::ThresholdedRelu, 1.0),
                _ => (NnOp::Swish, 1.0),
            };
            let mut at = vec![("alpha", float(attr_float(node, "alpha").unwrap_or(alpha)))];
            if op == NnOp::Selu {
                let gamma = attr_float(node, "gamma").unwrap_or(1.050_701_022_148_132_3);
                at.push(("gamma", float(gamma)));
            }
            imp.emit(node, op, vec![x()?], attrs(at), None)
        }
        "Shrink" => imp.emit(
            node,
            NnOp::Shrink,
            vec![x()?],
            attrs(vec![
                ("bias", float(attr_float(node, "bias").unwrap_or(0.0))),
                ("lambd", float(attr_float(node, "lambd").unwrap_or(0.5))),
            ]),
            None,
        ),
        "LRN" => {
            let size =
                attr_int(node, "size").ok_or_else(|| imp.err(node, "needs attribute 'size'"))?;
            imp.emit(
                node,
                NnOp::Lrn,
                vec![x()?],
                attrs(vec![
                    ("size", int(size)),
                    ("alpha", float(attr_float(node, "alpha").unwrap_or(1e-4))),
                    ("beta", float(attr_float(node, "beta").unwrap_or(0.75))),
                    ("bias", float(attr_float(node, "bias").unwrap_or(1.0))),
                ]),
                None,
            )
        }
        "BitShift" => {
            let dir = attr_str(node, "direction")
                .ok_or_else(|| imp.err(node, "needs attribute 'direction'"))?;
            let ops = vec![x()?, imp.req(node, 1)?];
            imp.emit(
                node,
                NnOp::BitShift,
                ops,
                attrs(vec![("direction", Attribute::Str(dir))]),
                None,
            )
        }
        "NegativeLogLikelihoodLoss" | "SoftmaxCrossEntropyLoss" => {
            let (xv, target) = (x()?, imp.req(node, 1)?);
            let xt = imp.f.ty(xv).clone();
            let weight = match imp.input(node, 2)? {
                Some(w) => w,
                None => {
                    let c = xt.dims.get(1).and_then(Dim::as_static).ok_or_else(|| {
                        imp.err(node, "without weights the class dimension must be static")
                    })?;
                    imp.constant(
                        DenseData::Float(vec![1.0]),
                        TensorType::new(&[c], xt.elem.clone()),
                        &loc,
                    )
                }
            };
            let mut at = vec![(
                "reduction",
                Attribute::Str(attr_str(node, "reduction").unwrap_or_else(|| "mean".into())),
            )];
            if let Some(i) = attr_int(node, "ignore_index") {
                at.push(("ignore_index", int(i)));
            }
            if node.op_type == "NegativeLogLikelihoodLoss" {
                return imp.emit(
                    node,
                    NnOp::NllLoss,
                    vec![xv, target, weight],
                    attrs(at),
                    None,
                );
            }
            // Softmax cross-entropy: the loss of the log-softmax over the classes (ONNX's definition);
            // the log-probabilities are the second output.
            let lp = imp.emit_tmp(
                node,
                NnOp::LogSoftmax,
                vec![xv],
                attrs(vec![("axis", int(1))]),
                None,
            )?;
            let loss = imp.emit(
                node,
                NnOp::NllLoss,
                vec![lp, target, weight],
                attrs(at),
                None,
            )?[0];
            Ok(vec![loss, lp])
        }
        "InstanceNormalization" => {
            // ONNX's definition: per sample and channel, (x - mean) / sqrt(var + epsilon) over the spatial
            // axes, then * scale[c] + bias[c].
            let (xv, scale, bias) = (x()?, imp.req(node, 1)?, imp.req(node, 2)?);
            let r = imp.f.ty(xv).rank();
            if r < 3 {
                return Err(imp.err(node, "expected an N x C x spatial... input"));
            }
            let elem = imp.f.ty(xv).elem.clone();
            let axes = imp.i64s(&(2..r as i64).collect::<Vec<_>>(), &loc);
            let keep = attrs(vec![("keepdims", int(1))]);
            let mean = imp.emit_tmp(node, NnOp::ReduceMean, vec![xv, axes], keep.clone(), None)?;
            let d = imp.emit_tmp(node, NnOp::Sub, vec![xv, mean], Attrs::new(), None)?;
            let d2 = imp.emit_tmp(node, NnOp::Mul, vec![d, d], Attrs::new(), None)?;
            let var = imp.emit_tmp(node, NnOp::ReduceMean, vec![d2, axes], keep, None)?;
            let eps = attr_float(node, "epsilon").unwrap_or(1e-5);
            let eps = imp.scalar_like(eps as f32 as f64, &elem, &loc);
            let ve = imp.emit_tmp(node, NnOp::Add, vec![var, eps], Attrs::new(), None)?;
            let sd = imp.emit_tmp(node, NnOp::Sqrt, vec![ve], Attrs::new(), None)?;
            let n = imp.emit_tmp(node, NnOp::Div, vec![d, sd], Attrs::new(), None)?;
            let ones = imp.i64s(&(1..r as i64 - 1).collect::<Vec<_>>(), &loc);
            let s = imp.emit_tmp(node, NnOp::Unsqueeze, vec![scale, ones], Attrs::new(), None)?;
            let b = imp.emit_tmp(node, NnOp::Unsqueeze, vec![bias, ones], Attrs::new(), None)?;
            let y = imp.emit_tmp(node, NnOp::Mul, vec![n, s], Attrs::new(), None)?;
            imp.emit(node, NnOp::Add, vec![y, b], Attrs::new(), None)
        }
        "MeanVarianceNormalization" => {
            // ONNX's definition: (x - mean) / (sqrt(mean(x^2) - mean^2) + 1e-9) over `axes`.
            let xv = x()?;
            let elem = imp.f.ty(xv).elem.clone();
            let axes = attr_ints(node, "axes").unwrap_or_else(|| vec![0, 2, 3]);
            let axes = imp.i64s(&axes, &loc);
            let keep = attrs(vec![("keepdims", int(1))]);
            let mean = imp.emit_tmp(node, NnOp::ReduceMean, vec![xv, axes], keep.clone(), None)?;
            let m2 = imp.emit_tmp(node, NnOp::Mul, vec![mean, mean], Attrs::new(), None)?;
            let x2 = imp.emit_tmp(node, NnOp::Mul, vec![xv, xv], Attrs::new(), None)?;
            let ex2 = imp.emit_tmp(node, NnOp::ReduceMean, vec![x2, axes], keep, None)?;
            let var = imp.emit_tmp(node, NnOp::Sub, vec![ex2, m2], Attrs::new(), None)?;
            let sd = imp.emit_tmp(node, NnOp::Sqrt, vec![var], Attrs::new(), None)?;
            let eps = imp.scalar_like(1e-9f32 as f64, &elem, &loc);
            let sde = imp.emit_tmp(node, NnOp::Add, vec![sd, eps], Attrs::new(), None)?;
            let d = imp.emit_tmp(node, NnOp::Sub, vec![xv, mean], Attrs::new(), None)?;
            imp.emit(node, NnOp::Div, vec![d, sde], Attrs::new(), None)
        }
        "LpNormalization" => {
            // x / (sum |x|^p)^(1/p) along `axis`, for p 1 or 2.
            let xv = x()?;
            let p = attr_int(node, "p").unwrap_or(2);
            let axis = imp.i64s(&[attr_int(node, "axis").unwrap_or(-1)], &loc);
            let keep = attrs(vec![("keepdims", int(1))]);
            let norm = match p {
                1 => {
                    let a = imp.emit_tmp(node, NnOp::Abs, vec![xv], Attrs::new(), None)?;
                    imp.emit_tmp(node, NnOp::ReduceSum, vec![a, axis], keep, None)?
                }
                2 => {
                    let sq = imp.emit_tmp(node, NnOp::Mul, vec![xv, xv], Attrs::new(), None)?;
                    let s = imp.emit_tmp(node, NnOp::ReduceSum, vec![sq, axis], keep, None)?;
                    imp.emit_tmp(node, NnOp::Sqrt, vec![s], Attrs::new(), None)?
                }
                _ => return Err(imp.err(node, format!("p must be 1 or 2, not {p}"))),
            };
            // Where the norm is 0 the result is 0 (ONNX's reference), not 0 / 0.
            let elem = imp.f.ty(xv).elem.clone();
            let zero = imp.scalar_like(0.0, &elem, &loc);
            let q = imp.emit_tmp(node, NnOp::Div, vec![xv, norm], Attrs::new(), None)?;
            let z = imp.emit_tmp(node, NnOp::Equal, vec![norm, zero], Attrs::new(), None)?;
            imp.emit(node, NnOp::Where, vec![z, zero, q], Attrs::new(), None)
        }
        "Hardmax" => {
            // 1 at the first maximum along `axis`, 0 elsewhere.
            let xv = x()?;
            let xt = imp.f.ty(xv).clone();
            let a = qc_nn::norm_axis(attr_int(node, "axis").unwrap_or(-1), xt.rank())
                .map_err(|e| imp.err(node, e))?;
            let n = xt.dims[a]
                .as_static()
                .ok_or_else(|| imp.err(node, "the axis needs a static size"))?;
            let am = imp.emit_tmp(
                node,
                NnOp::ArgMax,
                vec![xv],
                attrs(vec![("axis", int(a as i64)), ("keepdims", int(1))]),
                None,
            )?;
            let mut shape = vec![1u64; xt.rank()];
            shape[a] = n;
            let i64t = ElemType::Int {
                bits: 64,
                unsigned: false,
            };
            let idx = imp.constant(
                DenseData::Int((0..n as i64).collect()),
                TensorType::new(&shape, i64t),
                &loc,
            );
            let eq = imp.emit_tmp(node, NnOp::Equal, vec![am, idx], Attrs::new(), None)?;
            imp.emit(
                node,
                NnOp::Cast,
                vec![eq],
                Attrs::new(),
                Some(xt.elem.clone()),
            )
        }
        "DepthToSpace" | "SpaceToDepth" => {
            let xv = x()?;
            let xt = imp.f.ty(xv).clone();
            let b = attr_int(node, "blocksize")
                .filter(|&b| b > 0)
                .ok_or_else(|| imp.err(node, "needs a positive attribute 'blocksize'"))?;
            let d: Vec<i64> = match xt.static_shape() {
                Some(d) if d.len() == 4 => d.iter().map(|&v| v as i64).collect(),
                _ => return Err(imp.err(node, format!("needs a static 4-D input, not {xt}"))),
            };
            let (n, c, h, w) = (d[0], d[1], d[2], d[3]);
            let mode = attr_str(node, "mode").unwrap_or_else(|| "DCR".into());
            let (mid, perm, fin) = if node.op_type == "DepthToSpace" {
                if c % (b * b) != 0 {
                    return Err(imp.err(node, "channels must be a multiple of blocksize^2"));
                }
                let fin = vec![n, c / (b * b), h * b, w * b];
                match mode.as_str() {
                    "DCR" => (
                        vec![n, b, b, c / (b * b), h, w],
                        vec![0, 3, 4, 1, 5, 2],
                        fin,
                    ),
                    "CRD" => (
                        vec![n, c / (b * b), b, b, h, w],
                        vec![0, 1, 4, 2, 5, 3],
                        fin,
                    ),
                    m => return Err(imp.err(node, format!("unknown mode '{m}'"))),
                }
            } else {
                if h % b != 0 || w % b != 0 {
                    return Err(imp.err(node, "height and width must be multiples of blocksize"));
                }
                if mode != "DCR" {
                    return Err(imp.err(node, format!("mode '{mode}' is not supported")));
                }
                (
                    vec![n, c, h / b, b, w / b, b],
                    vec![0, 3, 5, 1, 2, 4],
                    vec![n, c * b * b, h / b, w / b],
                )
            };
            let s1 = imp.i64s(&mid, &loc);
            let r1 = imp.emit_tmp(node, NnOp::Reshape, vec![xv, s1], Attrs::new(), None)?;
            let t = imp.emit_tmp(
                node,
                NnOp::Transpose,
                vec![r1],
                attrs(vec![("perm", ints(&perm))]),
                None,
            )?;
            let s2 = imp.i64s(&fin, &loc);
            imp.emit(node, NnOp::Reshape, vec![t, s2], Attrs::new(), None)
        }
        "EyeLike" => {
            // Depends only on the input's (static) shape: a constant.
            let xv = x()?;
            let xt = imp.f.ty(xv).clone();
            let elem = match attr_int(node, "dtype") {
                Some(code) => DataType::from_code(code as i32)
                    .ok_or_else(|| format!("unknown dtype {code}"))
                    .and_then(elem_type)
                    .map_err(|e| imp.err(node, e))?,
                None => xt.elem.clone(),
            };
            let d = match xt.static_shape() {
                Some(d) if d.len() == 2 => d,
                _ => return Err(imp.err(node, format!("needs a static 2-D input, not {xt}"))),
            };
            let k = attr_int(node, "k").unwrap_or(0);
            let vals: Vec<i64> = (0..d[0] as i64)
                .flat_map(|i| (0..d[1] as i64).map(move |j| (j - i == k) as i64))
                .collect();
            let data = match elem {
                ElemType::Int { .. } => DenseData::Int(vals),
                _ => DenseData::Float(vals.into_iter().map(|v| v as f64).collect()),
            };
            Ok(vec![imp.constant(data, TensorType::new(&d, elem), &loc)])
        }
        "PRelu" => {
            // ONNX's definition: x < 0 ? slope * x : x, the slope broadcasting to x.
            let (xv, slope) = (x()?, imp.req(node, 1)?);
            let elem = imp.f.ty(xv).elem.clone();
            let zero = imp.scalar_like(0.0, &elem, &loc);
            let neg = imp.emit(node, NnOp::Less, vec![xv, zero], Attrs::new(), None)?[0];
            let scaled = imp.emit(node, NnOp::Mul, vec![xv, slope], Attrs::new(), None)?[0];
            imp.emit(node, NnOp::Where, vec![neg, scaled, xv], Attrs::new(), None)
        }
        "IsInf" => imp.emit(
            node,
            NnOp::IsInf,
            vec![x()?],
            attrs(vec![
                (
                    "detect_negative",
                    int(attr_int(node, "detect_negative").unwrap_or(1)),
                ),
                (
                    "detect_positive",
                    int(attr_int(node, "detect_positive").unwrap_or(1)),
                ),
            ]),
            None,
        ),
        "Softmax" | "LogSoftmax" => {
            let op = if node.op_type == "Softmax" {
                NnOp::Softmax
            } else {
                NnOp::LogSoftmax
            };
            imp.emit(
                node,
                op,
                vec![x()?],
                attrs(vec![("axis", int(attr_int(node, "axis").unwrap_or(-1)))]),
                None,
            )
        }
        "Clip" => {
            let xv = x()?;
            let elem = imp.f.ty(xv).elem.clone();
            let (lo_d, hi_d) = match &elem {
                ElemType::Int {
                    bits,
                    unsigned: false,
                } => (
                    -(2f64.powi(*bits as i32 - 1)),
                    2f64.powi(*bits as i32 - 1) - 1.0,
                ),
                ElemType::Int {
                    bits,
                    unsigned: true,
                } => (0.0, 2f64.powi(*bits as i32) - 1.0),
                _ => (f64::NEG_INFINITY, f64::INFINITY),
            };
            let lo = match imp.input(node, 1)? {
                Some(v) => v,
                None => imp.scalar_like(lo_d, &elem, &loc),
            };
            let hi = match imp.input(node, 2)? {
                Some(v) => v,
                None => imp.scalar_like(hi_d, &elem, &loc),
            };
            imp.emit(node, NnOp::Clip, vec![xv, lo, hi], Attrs::new(), None)
        }
        "Cast" | "CastLike" => {
            let xv = x()?;
            let to = if node.op_type == "Cast" {
                let code =
                    attr_int(node, "to").ok_or_else(|| imp.err(node, "needs attribute 'to'"))?;
                let dt = DataType::from_code(code as i32)
                    .ok_or_else(|| imp.err(node, format!("unknown data type {code}")))?;
                elem_type(dt).map_err(|e| imp.err(node, e))?
            } else {
                imp.f.ty(imp.req(node, 1)?).elem.clone()
            };
            let mut at = vec![("saturate", int(attr_int(node, "saturate").unwrap_or(1)))];
            if let Some(mode) = attr_str(node, "round_mode") {
                at.push(("round_mode", Attribute::Str(mode)));
            }
            imp.emit(node, NnOp::Cast, vec![xv], attrs(at), Some(to))
        }
        "Constant" => {
            let a = node
                .attributes
                .first()
                .ok_or_else(|| imp.err(node, "needs a value attribute"))?;
            let (data, ty) = match (&a.name[..], &a.value) {
                ("value", AttrValue::Tensor(t)) => {
                    let elem = elem_type(t.dtype).map_err(|e| imp.err(node, e))?;
                    (
                        dense_of_tensor(t, &elem).map_err(|e| imp.err(node, e))?,
                        TensorType::new(&t.dims, elem),
                    )
                }
                ("value_float", AttrValue::Float(f)) => (
                    DenseData::Float(vec![*f as f64]),
                    TensorType::new(&[], ElemType::F32),
                ),
                ("value_floats", AttrValue::Floats(v)) => (
                    DenseData::Float(v.iter().map(|&f| f as f64).collect()),
                    TensorType::new(&[v.len() as u64], ElemType::F32),
                ),
                ("value_int", AttrValue::Int(i)) => (
                    DenseData::Int(vec![*i]),
                    TensorType::new(
                        &[],
                        ElemType::Int {
                            bits: 64,
                            unsigned: false,
                        },
                    ),
                ),
                ("value_ints", AttrValue::Ints(v)) => (
                    DenseData::Int(v.clone()),
                    TensorType::new(
                        &[v.len() as u64],
                        ElemType::Int {
                            bits: 64,
                            unsigned: false,
                        },
                    ),
                ),
                (name, _) => {
                    return Err(imp.err(node, format!("attribute '{name}' is not supported")))
                }
            };
            Ok(vec![imp.constant(data, ty, &loc)])
        }
        "Dropout" => {
            // Inference: the output is the input and the mask all true. Training mode (a third input
            // that is not the constant false) would drop at random.
            // (Training with a ratio of 0 drops nothing, so it is the same.)
            let is_const = |v: Option<Value>, want: f64| {
                v.and_then(|v| imp.consts.get(&v))
                    .is_some_and(|d| d.len() == 1 && d.get_f64(0) == want)
            };
            let training = imp.input(node, 2)?;
            if training.is_some() && !is_const(training, 0.0) && !is_const(imp.input(node, 1)?, 0.0)
            {
                return Err(imp.err(node, "training mode is not supported (inference only)"));
            }
            let xv = x()?;
            let y = imp.emit(node, NnOp::Identity, vec![xv], Attrs::new(), None)?;
            if node.outputs.get(1).is_none_or(|o| o.is_empty()) {
                return Ok(y);
            }
            let shape = imp.emit(node, NnOp::Shape, vec![xv], Attrs::new(), None)?[0];
            let mask = imp.emit(
                node,
                NnOp::ConstantOfShape,
                vec![shape],
                attrs(vec![(
                    "value",
                    Attribute::Dense(DenseData::Bool(vec![true])),
                )]),
                Some(ElemType::Int {
                    bits: 1,
                    unsigned: false,
                }),
            )?[0];
            Ok(vec![y[0], mask])
        }
        "Gemm" => {
            let (a, b) = (x()?, imp.req(node, 1)?);
            let elem = imp.f.ty(a).elem.clone();
            let c = match imp.input(node, 2)? {
                Some(c) => c,
                None => imp.scalar_like(0.0, &elem, &loc),
            };
            let at = attrs(vec![
                ("alpha", float(attr_float(node, "alpha").unwrap_or(1.0))),
                ("beta", float(attr_float(node, "beta").unwrap_or(1.0))),
                ("trans_a", int(attr_int(node, "transA").unwrap_or(0))),
                ("trans_b", int(attr_int(node, "transB").unwrap_or(0))),
            ]);
            imp.emit(node, NnOp::Gemm, vec![a, b, c], at, None)
        }
        "Conv" | "MaxPool" | "AveragePool" => window_op(imp, node),
        "ConvTranspose" => conv_transpose(imp, node),
        "CumSum" => {
            let ops = vec![x()?, imp.req(node, 1)?];
            let at = attrs(vec![
                ("exclusive", int(attr_int(node, "exclusive").unwrap_or(0))),
                ("reverse", int(attr_int(node, "reverse").unwrap_or(0))),
            ]);
            imp.emit(node, NnOp::CumSum, ops, at, None)
        }
        "BatchNormalization" => {
            if attr_int(node, "training_mode").unwrap_or(0) != 0 {
                return Err(imp.err(node, "training mode is not supported"));
            }
            let ops = (0..5)
                .map(|i| imp.req(node, i))
                .collect::<Result<Vec<_>, _>>()?;
            imp.emit(
                node,
                NnOp::BatchNorm,
                ops,
                attrs(vec![(
                    "epsilon",
                    float(attr_float(node, "epsilon").unwrap_or(1e-5)),
                )]),
                None,
            )
        }
        "LayerNormalization" => {
            let xv = x()?;
            let scale = imp.req(node, 1)?;
            let bias = match imp.input(node, 2)? {
                Some(b) => b,
                None => {
                    let elem = imp.f.ty(xv).elem.clone();
                    imp.scalar_like(0.0, &elem, &loc)
                }
            };
            let at = attrs(vec![
                ("axis", int(attr_int(node, "axis").unwrap_or(-1))),
                (
                    "epsilon",
                    float(attr_float(node, "epsilon").unwrap_or(1e-5)),
                ),
            ]);
            let y = imp.emit(node, NnOp::LayerNorm, vec![xv, scale, bias], at, None)?[0];
            if node.outputs.iter().skip(1).all(String::is_empty) {
                return Ok(vec![y]);
            }
            // The Mean and InvStdDev outputs, as ONNX's function body computes them (in the stash
            // type): mean(x) and 1 / sqrt(mean(x^2) - mean(x)^2 + epsilon) over the normalized axes.
            let (xu, stash) = stash_input(imp, node, xv)?;
            let axes = norm_axes(imp, node, xv)?;
            let keep = attrs(vec![("keepdims", int(1))]);
            let mean = imp.emit_tmp(node, NnOp::ReduceMean, vec![xu, axes], keep.clone(), None)?;
            let sq = imp.emit_tmp(node, NnOp::Mul, vec![xu, xu], Attrs::new(), None)?;
            let msq = imp.emit_tmp(node, NnOp::ReduceMean, vec![sq, axes], keep, None)?;
            let m2 = imp.emit_tmp(node, NnOp::Mul, vec![mean, mean], Attrs::new(), None)?;
            let var = imp.emit_tmp(node, NnOp::Sub, vec![msq, m2], Attrs::new(), None)?;
            let eps = attr_float(node, "epsilon").unwrap_or(1e-5);
            let eps = imp.scalar_like(eps as f32 as f64, &stash, &loc);
            let ve = imp.emit_tmp(node, NnOp::Add, vec![var, eps], Attrs::new(), None)?;
            let sd = imp.emit_tmp(node, NnOp::Sqrt, vec![ve], Attrs::new(), None)?;
            let inv = imp.emit_tmp(node, NnOp::Reciprocal, vec![sd], Attrs::new(), None)?;
            Ok(vec![y, mean, inv])
        }
        "RMSNormalization" => {
            // ONNX's definition, in the stash type: x / sqrt(mean(x^2) + epsilon) * scale over the axes
            // from `axis` on.
            let (xv, scale) = (x()?, imp.req(node, 1)?);
            let elem = imp.f.ty(xv).elem.clone();
            let (xu, stash) = stash_input(imp, node, xv)?;
            let axes = norm_axes(imp, node, xv)?;
            let sq = imp.emit_tmp(node, NnOp::Mul, vec![xu, xu], Attrs::new(), None)?;
            let keep = attrs(vec![("keepdims", int(1))]);
            let ms = imp.emit_tmp(node, NnOp::ReduceMean, vec![sq, axes], keep, None)?;
            let eps = attr_float(node, "epsilon").unwrap_or(1e-5);
            let eps = imp.scalar_like(eps as f32 as f64, &stash, &loc);
            let mse = imp.emit_tmp(node, NnOp::Add, vec![ms, eps], Attrs::new(), None)?;
            let rms = imp.emit_tmp(node, NnOp::Sqrt, vec![mse], Attrs::new(), None)?;
            let rcp = imp.emit_tmp(node, NnOp::Reciprocal, vec![rms], Attrs::new(), None)?;
            let mut norm = imp.emit_tmp(node, NnOp::Mul, vec![xu, rcp], Attrs::new(), None)?;
            if stash != elem {
                norm = imp.emit_tmp(node, NnOp::Cast, vec![norm], Attrs::new(), Some(elem))?;
            }
            imp.emit(node, NnOp::Mul, vec![norm, scale], Attrs::new(), None)
        }
        "Reshape" => {
            let ops = vec![x()?, imp.req(node, 1)?];
            imp.emit(
                node,
                NnOp::Reshape,
                ops,
                attrs(vec![(
                    "allowzero",
                    int(attr_int(node, "allowzero").unwrap_or(0)),
                )]),
                None,
            )
        }
        "Flatten" => imp.emit(
            node,
            NnOp::Flatten,
            vec![x()?],
            attrs(vec![("axis", int(attr_int(node, "axis").unwrap_or(1)))]),
            None,
        ),
        "Transpose" => {
            let xv = x()?;
            let r = imp.f.ty(xv).rank() as i64;
            let perm = attr_ints(node, "perm").unwrap_or_else(|| (0..r).rev().collect());
            imp.emit(
                node,
                NnOp::Transpose,
                vec![xv],
                attrs(vec![("perm", ints(&perm))]),
                None,
            )
        }
        "Squeeze" | "Unsqueeze" => {
            let xv = x()?;
            let axes = match imp.input(node, 1)? {
                Some(a) => a,
                None if node.op_type == "Squeeze" => {
                    let t = imp.f.ty(xv).clone();
                    let mut ones = Vec::new();
                    for (i, d) in t.dims.iter().enumerate() {
                        match d {
                            Dim::Static(1) => ones.push(i as i64),
                            Dim::Static(_) => {}
                            _ => {
                                return Err(imp.err(
                                    node,
                                    format!("squeeze without axes needs a static shape, not {t}"),
                                ))
                            }
                        }
                    }
                    imp.i64s(&ones, &loc)
                }
                None => return Err(imp.err(node, "needs axes")),
            };
            let op = if node.op_type == "Squeeze" {
                NnOp::Squeeze
            } else {
                NnOp::Unsqueeze
            };
            imp.emit(node, op, vec![xv, axes], Attrs::new(), None)
        }
        "Concat" => {
            let ops = (0..node.inputs.len())
                .map(|i| imp.req(node, i))
                .collect::<Result<Vec<_>, _>>()?;
            let axis =
                attr_int(node, "axis").ok_or_else(|| imp.err(node, "needs attribute 'axis'"))?;
            imp.emit(
                node,
                NnOp::Concat,
                ops,
                attrs(vec![("axis", int(axis))]),
                None,
            )
        }
        "Split" => {
            let xv = x()?;
            let axis = attr_int(node, "axis").unwrap_or(0);
            let sizes = match imp.input(node, 1)? {
                Some(s) => s,
                None => {
                    let t = imp.f.ty(xv).clone();
                    let a = qc_nn::norm_axis(axis, t.rank()).map_err(|e| imp.err(node, e))?;
                    let n = t.dims[a]
                        .as_static()
                        .ok_or_else(|| imp.err(node, "an equal split needs a static dimension"))?
                        as i64;
                    let k = attr_int(node, "num_outputs")
                        .unwrap_or(node.outputs.len() as i64)
                        .max(1);
                    let chunk = (n + k - 1) / k;
                    let sizes: Vec<i64> = (0..k).map(|i| (n - i * chunk).clamp(0, chunk)).collect();
                    imp.i64s(&sizes, &loc)
                }
            };
            imp.emit(
                node,
                NnOp::Split,
                vec![xv, sizes],
                attrs(vec![("axis", int(axis))]),
                None,
            )
        }
        "Slice" => {
            let (xv, starts, ends) = (x()?, imp.req(node, 1)?, imp.req(node, 2)?);
            let n = imp
                .f
                .ty(starts)
                .num_elements()
                .ok_or_else(|| imp.err(node, "starts needs a static length"))?
                as i64;
            let axes = match imp.input(node, 3)? {
                Some(a) => a,
                None => imp.i64s(&(0..n).collect::<Vec<_>>(), &loc),
            };
            let steps = match imp.input(node, 4)? {
                Some(s) => s,
                None => imp.i64s(&vec![1; n as usize], &loc),
            };
            imp.emit(
                node,
                NnOp::Slice,
                vec![xv, starts, ends, axes, steps],
                Attrs::new(),
                None,
            )
        }
        "Gather" | "GatherElements" => {
            let op = if node.op_type == "Gather" {
                NnOp::Gather
            } else {
                NnOp::GatherElements
            };
            let ops = vec![x()?, imp.req(node, 1)?];
            imp.emit(
                node,
                op,
                ops,
                attrs(vec![("axis", int(attr_int(node, "axis").unwrap_or(0)))]),
                None,
            )
        }
        "Pad" => {
            let (xv, mut pads) = (x()?, imp.req(node, 1)?);
            if let Some(axes) = imp.input(node, 3)? {
                // Pads for some axes: spread to every axis (the others get 0).
                let r = imp.f.ty(xv).rank();
                let axes: Vec<usize> = imp
                    .consts
                    .get(&axes)
                    .and_then(|d| {
                        let n = imp.f.ty(axes).num_elements()? as usize;
                        Some((0..n).map(|i| d.get_i64(i)).collect::<Vec<_>>())
                    })
                    .ok_or_else(|| imp.err(node, "the axes input must be a constant"))?
                    .into_iter()
                    .map(|a| qc_nn::norm_axis(a, r))
                    .collect::<Result<_, _>>()
                    .map_err(|e| imp.err(node, e))?;
                let k = axes.len() as i64;
                let mut idx = vec![2 * k; 2 * r];
                for (i, &a) in axes.iter().enumerate() {
                    idx[a] = i as i64;
                    idx[r + a] = k + i as i64;
                }
                let zero = imp.i64s(&[0], &loc);
                let ext = imp.emit_tmp(
                    node,
                    NnOp::Concat,
                    vec![pads, zero],
                    attrs(vec![("axis", int(0))]),
                    None,
                )?;
                let idx = imp.i64s(&idx, &loc);
                pads = imp.emit_tmp(
                    node,
                    NnOp::Gather,
                    vec![ext, idx],
                    attrs(vec![("axis", int(0))]),
                    None,
                )?;
            }
            let elem = imp.f.ty(xv).elem.clone();
            let value = match imp.input(node, 2)? {
                Some(v) => v,
                None => imp.scalar_like(0.0, &elem, &loc),
            };
            let mode = attr_str(node, "mode").unwrap_or_else(|| "constant".into());
            imp.emit(
                node,
                NnOp::Pad,
                vec![xv, pads, value],
                attrs(vec![("mode", Attribute::Str(mode))]),
                None,
            )
        }
        "Shape" => {
            let xv = x()?;
            let mut at = vec![];
            if let Some(s) = attr_int(node, "start") {
                at.push(("start", int(s)));
            }
            if let Some(e) = attr_int(node, "end") {
                at.push(("end", int(e)));
            }
            imp.emit(node, NnOp::Shape, vec![xv], attrs(at), None)
        }
        "ConstantOfShape" => {
            let shape = x()?;
            let (data, elem) = match node.attr("value").map(|a| &a.value) {
                Some(AttrValue::Tensor(t)) => {
                    let elem = elem_type(t.dtype).map_err(|e| imp.err(node, e))?;
                    (
                        dense_of_tensor(t, &elem).map_err(|e| imp.err(node, e))?,
                        elem,
                    )
                }
                _ => (DenseData::Float(vec![0.0]), ElemType::F32),
            };
            imp.emit(
                node,
                NnOp::ConstantOfShape,
                vec![shape],
                attrs(vec![("value", Attribute::Dense(data))]),
                Some(elem),
            )
        }
        "Trilu" => {
            let xv = x()?;
            let k = match imp.input(node, 1)? {
                Some(k) => k,
                None => {
                    let ty = TensorType::new(
                        &[],
                        ElemType::Int {
                            bits: 64,
                            unsigned: false,
                        },
                    );
                    imp.constant(DenseData::Int(vec![0]), ty, &loc)
                }
            };
            imp.emit(
                node,
                NnOp::Trilu,
                vec![xv, k],
                attrs(vec![("upper", int(attr_int(node, "upper").unwrap_or(1)))]),
                None,
            )
        }
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" => {
            let op = match node.op_type.as_str() {
                "ReduceSum" => NnOp::ReduceSum,
                "ReduceMean" => NnOp::ReduceMean,
                "ReduceMax" => NnOp::ReduceMax,
                "ReduceMin" => NnOp::ReduceMin,
                _ => NnOp::ReduceProd,
            };
            let xv = x()?;
            let axes = match (imp.input(node, 1)?, attr_ints(node, "axes")) {
                (Some(a), _) => a,
                (None, Some(v)) => imp.i64s(&v, &loc),
                (None, None) => imp.i64s(&[], &loc),
            };
            let at = attrs(vec![
                ("keepdims", int(attr_int(node, "keepdims").unwrap_or(1))),
                (
                    "noop_with_empty_axes",
                    int(attr_int(node, "noop_with_empty_axes").unwrap_or(0)),
                ),
            ]);
            imp.emit(node, op, vec![xv, axes], at, None)
        }
        "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => {
            // ONNX's definitions: a sum of |x|, x^2 or e^x, then sqrt or log.
            let xv = x()?;
            let axes = match (imp.input(node, 1)?, attr_ints(node, "axes")) {
                (Some(a), _) => a,
                (None, Some(v)) => imp.i64s(&v, &loc),
                (None, None) => imp.i64s(&[], &loc),
            };
            let at = attrs(vec![
                ("keepdims", int(attr_int(node, "keepdims").unwrap_or(1))),
                (
                    "noop_with_empty_axes",
                    int(attr_int(node, "noop_with_empty_axes").unwrap_or(0)),
                ),
            ]);
            let kind = node.op_type.as_str();
            let pre = match kind {
                "ReduceL1" => Some((NnOp::Abs, vec![xv])),
                "ReduceL2" | "ReduceSumSquare" => Some((NnOp::Mul, vec![xv, xv])),
                "ReduceLogSumExp" => Some((NnOp::Exp, vec![xv])),
                _ => None,
            };
            let post = match kind {
                "ReduceL2" => Some(NnOp::Sqrt),
                "ReduceLogSum" | "ReduceLogSumExp" => Some(NnOp::Log),
                _ => None,
            };
            let v = match pre {
                Some((op, ops)) => imp.emit_tmp(node, op, ops, Attrs::new(), None)?,
                None => xv,
            };
            match post {
                None => imp.emit(node, NnOp::ReduceSum, vec![v, axes], at, None),
                Some(op) => {
                    let sum = imp.emit_tmp(node, NnOp::ReduceSum, vec![v, axes], at, None)?;
                    imp.emit(node, op, vec![sum], Attrs::new(), None)
                }
            }
        }
        "ArgMax" | "ArgMin" => {
            let op = if node.op_type == "ArgMax" {
                NnOp::ArgMax
            } else {
                NnOp::ArgMin
            };
            let at = attrs(vec![
                ("axis", int(attr_int(node, "axis").unwrap_or(0))),
                ("keepdims", int(attr_int(node, "keepdims").unwrap_or(1))),
                (
                    "select_last_index",
                    int(attr_int(node, "select_last_index").unwrap_or(0)),
                ),
            ]);
            imp.emit(node, op, vec![x()?], at, None)
        }
        "QuantizeLinear" | "DequantizeLinear" | "DynamicQuantizeLinear" => qdq::convert(imp, node),
        "Attention" => attention::convert(imp, node),
        other => Err(imp.err(node, format!("operator '{other}' is not supported"))),
    }
}

/// The input of a normalization in its stash type (attribute `stash_type`, default FLOAT): the value
/// itself or a cast; and that type.
fn stash_input(
    imp: &mut Importer,
    node: &Node,
    xv: Value,
) -> Result<(Value, ElemType), Diagnostic> {
    let code = attr_int(node, "stash_type").unwrap_or(1);
    let stash = DataType::from_code(code as i32)
        .ok_or_else(|| format!("unknown stash_type {code}"))
        .and_then(elem_type)
        .map_err(|e| imp.err(node, e))?;
    if imp.f.ty(xv).elem == stash {
        return Ok((xv, stash));
    }
    let c = imp.emit_tmp(
        node,
        NnOp::Cast,
        vec![xv],
        Attrs::new(),
        Some(stash.clone()),
    )?;
    Ok((c, stash))
}

/// The axes from attribute `axis` (default -1) to the last, as an i64 constant.
fn norm_axes(imp: &mut Importer, node: &Node, xv: Value) -> Result<Value, Diagnostic> {
    let r = imp.f.ty(xv).rank();
    let a =
        qc_nn::norm_axis(attr_int(node, "axis").unwrap_or(-1), r).map_err(|e| imp.err(node, e))?;
    let loc = imp.model.loc(&node.path);
    Ok(imp.i64s(&(a as i64..r as i64).collect::<Vec<_>>(), &loc))
}

/// ConvTranspose: defaults filled in; `output_shape` and `auto_pad` resolved to explicit pads as ONNX's
/// reference does (SAME_UPPER puts the smaller half first, otherwise the larger).
fn conv_transpose(imp: &mut Importer, node: &Node) -> Result<Vec<Value>, Diagnostic> {
    let loc = imp.model.loc(&node.path);
    let (xv, w) = (imp.req(node, 0)?, imp.req(node, 1)?);
    let (xt, wt) = (imp.f.ty(xv).clone(), imp.f.ty(w).clone());
    if xt.rank() < 3 || wt.rank() != xt.rank() {
        return Err(imp.err(
            node,
            format!("expected N x C x spatial... inputs, not {xt} and {wt}"),
        ));
    }
    let sp = xt.rank() - 2;
    let group = attr_int(node, "group").unwrap_or(1);
    let kernel = match attr_ints(node, "kernel_shape") {
        Some(k) => k,
        None => wt.dims[2..]
            .iter()
            .map(|d| d.as_static().map(|n| n as i64))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| imp.err(node, "kernel_shape is unknown"))?,
    };
    let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1; sp]);
    let dilations = attr_ints(node, "dilations").unwrap_or_else(|| vec![1; sp]);
    let mut out_pad = attr_ints(node, "output_padding").unwrap_or_else(|| vec![0; sp]);
    out_pad.truncate(sp);
    let auto_pad = attr_str(node, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    let same = auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER";
    if kernel.len() != sp || strides.len() != sp || dilations.len() != sp || out_pad.len() != sp {
        return Err(imp.err(
            node,
            "kernel_shape, strides, dilations and output_padding need one entry per spatial axis",
        ));
    }
    let pads = match (attr_ints(node, "pads"), attr_ints(node, "output_shape")) {
        (Some(p), _) if !same => p,
        (_, out_shape) if same || out_shape.is_some() => {
            let ins: Vec<i64> = (0..sp)
                .map(|i| xt.dims[2 + i].as_static().map(|n| n as i64))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    imp.err(
                        node,
                        "output_shape and auto_pad need static spatial dimensions",
                    )
                })?;
            let out_shape = match out_shape {
                Some(o) => o[o.len().saturating_sub(sp)..].to_vec(),
                None => (0..sp).map(|i| ins[i] * strides[i]).collect(),
            };
            if out_shape.len() != sp {
                return Err(imp.err(node, "output_shape needs one entry per spatial axis"));
            }
            let mut p = vec![0; 2 * sp];
            for i in 0..sp {
                let total =
                    strides[i] * (ins[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
                        - out_shape[i];
                // Floor division, as the reference's Python: a negative total widens the end.
                let half = total.div_euclid(2);
                if auto_pad == "SAME_UPPER" {
                    (p[i], p[sp + i]) = (half, total - half);
                } else {
                    (p[i], p[sp + i]) = (total - half, half);
                }
            }
            p
        }
        _ => vec![0; 2 * sp],
    };
    let b = match imp.input(node, 2)? {
        Some(b) => b,
        None => {
            let m = wt.dims[1]
                .as_static()
                .ok_or_else(|| imp.err(node, "the weights need a static output-channel count"))?
                * group.max(1) as u64;
            imp.constant(
                DenseData::Float(vec![0.0]),
                TensorType::new(&[m], xt.elem.clone()),
                &loc,
            )
        }
    };
    let at = attrs(vec![
        ("kernel_shape", ints(&kernel)),
        ("strides", ints(&strides)),
        ("pads", ints(&pads)),
        ("dilations", ints(&dilations)),
        ("output_padding", ints(&out_pad)),
        ("group", int(group)),
    ]);
    imp.emit(node, NnOp::ConvTranspose, vec![xv, w, b], at, None)
}

/// Conv, MaxPool and AveragePool: defaults filled in and `auto_pad` resolved to explicit pads.
fn window_op(imp: &mut Importer, node: &Node) -> Result<Vec<Value>, Diagnostic> {
    let loc = imp.model.loc(&node.path);
    let xv = imp.req(node, 0)?;
    let xt = imp.f.ty(xv).clone();
    if xt.rank() < 3 {
        return Err(imp.err(
            node,
            format!("expected an N x C x spatial... input, not {xt}"),
        ));
    }
    let sp = xt.rank() - 2;
    let is_conv = node.op_type == "Conv";
    let kernel = match (attr_ints(node, "kernel_shape"), is_conv) {
        (Some(k), _) => k,
        (None, true) => {
            let w = imp.f.ty(imp.req(node, 1)?).clone();
            w.dims[2..]
                .iter()
                .map(|d| d.as_static().map(|n| n as i64))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| imp.err(node, "kernel_shape is unknown"))?
        }
        (None, false) => return Err(imp.err(node, "needs attribute 'kernel_shape'")),
    };
    let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1; sp]);
    let dilations = attr_ints(node, "dilations").unwrap_or_else(|| vec![1; sp]);
    let auto_pad = attr_str(node, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    let ceil_mode = attr_int(node, "ceil_mode").unwrap_or(0);
    let pads = match auto_pad.as_str() {
        "NOTSET" => attr_ints(node, "pads").unwrap_or_else(|| vec![0; 2 * sp]),
        "VALID" => vec![0; 2 * sp],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = vec![0; 2 * sp];
            for i in 0..sp {
                let n = xt.dims[2 + i]
                    .as_static()
                    .ok_or_else(|| imp.err(node, "auto_pad SAME needs static spatial dimensions"))?
                    as i64;
                let out = (n + strides[i] - 1) / strides[i];
                let total =
                    ((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - n).max(0);
                let (small, big) = (total / 2, total - total / 2);
                if auto_pad == "SAME_UPPER" {
                    (p[i], p[sp + i]) = (small, big);
                } else {
                    (p[i], p[sp + i]) = (big, small);
                }
            }
            p
        }
        other => return Err(imp.err(node, format!("unknown auto_pad '{other}'"))),
    };
    let mut at = vec![
        ("kernel_shape", ints(&kernel)),
        ("strides", ints(&strides)),
        ("pads", ints(&pads)),
        ("dilations", ints(&dilations)),
    ];
    match node.op_type.as_str() {
        "Conv" => {
            let w = imp.req(node, 1)?;
            let m = imp.f.ty(w).dims[0]
                .as_static()
                .ok_or_else(|| imp.err(node, "the weights need a static output-channel count"))?;
            let b = match imp.input(node, 2)? {
                Some(b) => b,
                None => {
                    let elem = xt.elem.clone();
                    imp.constant(
                        DenseData::Float(vec![0.0]),
                        TensorType::new(&[m], elem),
                        &loc,
                    )
                }
            };
            at.push(("group", int(attr_int(node, "group").unwrap_or(1))));
            imp.emit(node, NnOp::Conv, vec![xv, w, b], attrs(at), None)
        }
        "MaxPool" => {
            if node.outputs.get(1).is_some_and(|o| !o.is_empty()) {
                return Err(imp.err(node, "the Indices output is not supported"));
            }
            if attr_int(node, "storage_order").unwrap_or(0) != 0 {
                return Err(imp.err(node, "storage_order 1 is not supported"));
            }
            at.push(("ceil_mode", int(ceil_mode)));
            imp.emit(node, NnOp::MaxPool, vec![xv], attrs(at), None)
        }
        _ => {
            at.push(("ceil_mode", int(ceil_mode)));
            at.push((
                "count_include_pad",
                int(attr_int(node, "count_include_pad").unwrap_or(0)),
            ));
            imp.emit(node, NnOp::AvgPool, vec![xv], attrs(at), None)
        }
    }
}

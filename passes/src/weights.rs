//! Linear layers and their float weights: the shared vocabulary of the numerical passes.
//!
//! A *linear layer* is an op that multiplies an activation by a constant float weight along one
//! reduction axis of length `K` into `N` outputs:
//! - `nn.matmul %x, %w` with `%w` a 2-D constant `[K, N]` (`x: [..., K]`);
//! - `nn.gemm %a, %b, %c` with a 2-D constant `%b` (`[K, N]`, or `[N, K]` under `trans_b = 1`) and
//!   `trans_a = 0`;
//! - `nn.conv %x, %w, ...` with a constant `%w: [N, C/group, kh, kw, ...]` (then `K = C/group * kh * kw`,
//!   the reduction of one output channel; the input channel axis is 1).
//!
//! [`linears`] finds them; [`read_weight`] / [`write_weight`] move the float values of a weight
//! constant in and out of the module in its *stored* layout (row-major as the type says). Passes that
//! rewrite weights (smooth, rotate, reparam-exp-bias) use [`Linear::weight_kn`] to get the `[K, N]` view.

use std::collections::BTreeMap;
use std::sync::Arc;

use qc_ir::attr::{Attribute, DenseData};
use qc_ir::module::{Func, Module, Op, Value};
use qc_ir::ops::QcOp;
use qc_ir::resource::Blob;
use qc_ir::types::TensorType;
use qc_nn::NnOp;
use qc_runtime::interp::{Data, Tensor};

/// How a linear layer holds its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearKind {
    /// `nn.matmul`, weight `[K, N]`.
    Matmul,
    /// `nn.gemm`; `trans_b`: the weight is stored `[N, K]`.
    Gemm {
        /// The weight is `[N, K]`.
        trans_b: bool,
    },
    /// `nn.conv`, weight `[N, C/group, spatial...]`.
    Conv,
}

/// One linear layer of a function (indices are into `func.ops` at the time of the call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Index of the layer op in `func.ops`.
    pub op: usize,
    /// Index of the weight's `qc.constant` in `func.ops`.
    pub weight_op: usize,
    /// The activation operand.
    pub x: Value,
    /// The weight value.
    pub w: Value,
    /// The result.
    pub y: Value,
    /// How the weight is held.
    pub kind: LinearKind,
    /// The reduction length.
    pub k: usize,
    /// The number of outputs (columns of `[K, N]`, output channels of a conv).
    pub n: usize,
    /// A readable name: the weight's resource name, else the weight value's name, else `linearI`.
    pub name: String,
}

impl Linear {
    /// The weight as `[K, N]` row-major, from its stored layout `stored` (see the module doc; for a conv,
    /// row `k` enumerates `(c, spatial...)` in storage order).
    pub fn weight_kn(&self, stored: &[f32]) -> Vec<f32> {
        match self.kind {
            LinearKind::Matmul | LinearKind::Gemm { trans_b: false } => stored.to_vec(),
            LinearKind::Gemm { trans_b: true } | LinearKind::Conv => {
                transpose(stored, self.n, self.k)
            }
        }
    }

    /// The inverse of [`Linear::weight_kn`]: the stored layout of a `[K, N]` weight.
    pub fn weight_stored(&self, kn: &[f32]) -> Vec<f32> {
        match self.kind {
            LinearKind::Matmul | LinearKind::Gemm { trans_b: false } => kn.to_vec(),
            LinearKind::Gemm { trans_b: true } | LinearKind::Conv => transpose(kn, self.k, self.n),
        }
    }
}

/// `a` (`rows x cols`, row-major) transposed.
pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

/// The op that defines each value of `f` (index into `f.ops`).
pub fn producers(f: &Func) -> BTreeMap<Value, usize> {
    f.ops
        .iter()
        .enumerate()
        .flat_map(|(i, op)| op.results.iter().map(move |&r| (r, i)))
        .collect()
}

/// The linear layers of function `fi`, in op order. Only layers whose weight is a float constant with a
/// static shape are listed (the bytes may still be elided: [`read_weight`] then answers `None`); the
/// matmuls of a LoRC compensation branch (marked `lorc.branch`) are not layers.
pub fn linears(m: &Module, fi: usize) -> Vec<Linear> {
    let f = &m.funcs[fi];
    let prod = producers(f);
    let mut out = Vec::new();
    for (i, op) in f.ops.iter().enumerate() {
        if op.attr(crate::lorc::BRANCH_ATTR).is_some() {
            continue;
        }
        let (kind, wi) = match NnOp::of(op) {
            Some(NnOp::Matmul) => (LinearKind::Matmul, 1),
            Some(NnOp::Gemm) => {
                if op.attr("trans_a").and_then(Attribute::as_int).unwrap_or(0) != 0 {
                    continue;
                }
                let tb = op.attr("trans_b").and_then(Attribute::as_int).unwrap_or(0) != 0;
                (LinearKind::Gemm { trans_b: tb }, 1)
            }
            Some(NnOp::Conv) => (LinearKind::Conv, 1),
            _ => continue,
        };
        if op.operands.len() <= wi {
            continue;
        }
        let w = op.operands[wi];
        let Some(&pi) = prod.get(&w) else { continue };
        let cop = &f.ops[pi];
        let ty = f.ty(w);
        if QcOp::of(cop) != Some(QcOp::Constant) || !ty.elem.is_float() {
            continue;
        }
        let Some(shape) = ty.static_shape() else {
            continue;
        };
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let (k, n) = match kind {
            LinearKind::Matmul | LinearKind::Gemm { trans_b: false } if shape.len() == 2 => {
                (shape[0], shape[1])
            }
            LinearKind::Gemm { trans_b: true } if shape.len() == 2 => (shape[1], shape[0]),
            LinearKind::Conv if shape.len() >= 3 => (shape[1..].iter().product(), shape[0]),
            _ => continue,
        };
        let name = match cop.attr("value") {
            Some(Attribute::DenseResource(r)) => r.clone(),
            _ => f
                .value(w)
                .name
                .clone()
                .unwrap_or_else(|| format!("linear{}", out.len())),
        };
        out.push(Linear {
            op: i,
            weight_op: pi,
            x: op.operands[0],
            w,
            y: op.results[0],
            kind,
            k,
            n,
            name,
        });
    }
    out
}

/// The `quant.matmul` layers of function `fi` whose activation is still float and whose weight is a
/// quantized constant (the output of `quantize` / `gptq` / `lorc`), in op order, as [`Linear`]s of kind
/// `Matmul` (`k`, `n` read from the quantized weight's type, `[N, K]` under `transpose_b`). Passes that
/// work on activations after weight quantization (calibrate, activation quantization) use them; their
/// weights are not float, so [`read_weight`] answers `None` for them.
pub fn quantized_matmuls(m: &Module, fi: usize) -> Vec<Linear> {
    let f = &m.funcs[fi];
    let prod = producers(f);
    let mut out = Vec::new();
    for (i, op) in f.ops.iter().enumerate() {
        if qc_quant::ops::QuantOp::of(op) != Some(qc_quant::ops::QuantOp::Matmul)
            || op.attr(crate::lorc::BRANCH_ATTR).is_some()
        {
            continue;
        }
        let (x, w) = (op.operands[0], op.operands[1]);
        if !f.ty(x).elem.is_float() {
            continue;
        }
        let Some(&pi) = prod.get(&w) else { continue };
        let Some(shape) = f.ty(w).static_shape() else {
            continue;
        };
        if QcOp::of(&f.ops[pi]) != Some(QcOp::Constant) || shape.len() != 2 {
            continue;
        }
        let (k, n) = if op.attr("transpose_b").is_some() {
            (shape[1] as usize, shape[0] as usize)
        } else {
            (shape[0] as usize, shape[1] as usize)
        };
        let name = match f.ops[pi].attr("value") {
            Some(Attribute::DenseResource(r)) => r.clone(),
            _ => f
                .value(w)
                .name
                .clone()
                .unwrap_or_else(|| format!("qlinear{}", out.len())),
        };
        out.push(Linear {
            op: i,
            weight_op: pi,
            x,
            w,
            y: op.results[0],
            kind: LinearKind::Matmul,
            k,
            n,
            name,
        });
    }
    out
}

/// The float values of the constant op `cop` (of type `ty`) in stored order; `None` when it is not a
/// float constant or its bytes are elided.
pub fn constant_values(m: &Module, cop: &Op, ty: &TensorType) -> Option<Vec<f32>> {
    if QcOp::of(cop) != Some(QcOp::Constant) || !ty.elem.is_float() {
        return None;
    }
    let t = match cop.attr("value")? {
        Attribute::Dense(d) => Tensor::from_dense(d, ty).ok()?,
        Attribute::DenseResource(name) => {
            Tensor::from_bytes(m.resources.get(name)?.bytes()?, ty).ok()?
        }
        _ => return None,
    };
    match t.data {
        Data::F(v) => Some(v.into_iter().map(|x| x as f32).collect()),
        Data::I(_) => None,
    }
}

/// The stored float values of weight `w` of function `fi` (a constant), or `None`.
pub fn read_weight(m: &Module, fi: usize, w: Value) -> Option<Vec<f32>> {
    let f = &m.funcs[fi];
    let pi = *producers(f).get(&w)?;
    constant_values(m, &f.ops[pi], f.ty(w))
}

/// Replaces the values of the float constant defining `w` (stored order, `data.len()` elements; the
/// type is unchanged). A `dense_resource` constant gets a fresh resource named after the old one
/// (`NAME`, or `NAME.1`, ... when another constant still refers to it) so that other users of the old
/// bytes are unaffected; a `dense<...>` literal is rewritten in place. Values are rounded to the
/// constant's element type (f16 / bf16 / f32).
pub fn write_weight(m: &mut Module, fi: usize, w: Value, data: &[f32]) -> Result<(), String> {
    let f = &m.funcs[fi];
    let pi = *producers(f)
        .get(&w)
        .ok_or_else(|| "the weight is not defined by an op".to_string())?;
    let ty = f.ty(w).clone();
    let t = Tensor::new(
        ty.static_shape()
            .ok_or("the weight has a dynamic shape")?
            .iter()
            .map(|&d| d as usize)
            .collect(),
        ty.elem.clone(),
        Data::F(data.iter().map(|&v| v as f64).collect()),
    );
    if t.len() != data.len() {
        return Err(format!(
            "{} values for a weight of {} elements",
            data.len(),
            t.len()
        ));
    }
    let attr = match f.ops[pi].attr("value") {
        Some(Attribute::DenseResource(old)) => {
            let old = old.clone();
            let others = m
                .funcs
                .iter()
                .flat_map(|g| g.ops.iter())
                .filter(
                    |o| matches!(o.attr("value"), Some(Attribute::DenseResource(r)) if *r == old),
                )
                .count();
            let mut name = old.clone();
            let mut i = 1;
            while others > 1 && m.resources.get(&name).is_some() {
                name = format!("{old}.{i}");
                i += 1;
            }
            m.resources.insert(
                name.clone(),
                Blob::Owned {
                    data: Arc::from(t.to_bytes()),
                    align: 64,
                },
            );
            Attribute::DenseResource(name)
        }
        _ => Attribute::Dense(t.to_dense().canonical()),
    };
    m.funcs[fi].ops[pi].attrs.set("value", attr);
    Ok(())
}

/// Adds a new float constant of type `ty` holding `data` (stored order) before op index `at` of
/// function `fi`, as the owned resource `name` (made unique with a numeric suffix); returns its value.
pub fn add_constant(
    m: &mut Module,
    fi: usize,
    at: usize,
    ty: TensorType,
    data: &[f32],
    name: &str,
) -> Value {
    let shape: Vec<usize> = ty
        .static_shape()
        .expect("add_constant needs a static shape")
        .iter()
        .map(|&d| d as usize)
        .collect();
    let t = Tensor::new(
        shape,
        ty.elem.clone(),
        Data::F(data.iter().map(|&v| v as f64).collect()),
    );
    let mut rname = name.to_string();
    let mut i = 1;
    while m.resources.get(&rname).is_some() {
        rname = format!("{name}.{i}");
        i += 1;
    }
    m.resources.insert(
        rname.clone(),
        Blob::Owned {
            data: Arc::from(t.to_bytes()),
            align: 64,
        },
    );
    let f = &mut m.funcs[fi];
    let hint = qc_ir::module::sanitize_name(name);
    let v = f.new_value(ty, Some(&hint));
    let loc = f.ops.get(at).map_or(f.loc.clone(), |o| o.loc.clone());
    f.ops.insert(
        at,
        Op {
            def: QcOp::Constant.def(),
            operands: vec![],
            results: vec![v],
            attrs: [("value", Attribute::DenseResource(rname))]
                .into_iter()
                .collect(),
            loc,
        },
    );
    v
}

/// `DenseData` of f32 values, for small attributes (per-channel statistics and the like).
pub fn dense_f32(v: &[f32]) -> DenseData {
    DenseData::Float(v.iter().map(|&x| x as f64).collect()).canonical()
}

//! The reference interpreter's op semantics.
//!
//! [`eval_nn`] computes one nn op on concrete tensors. Arithmetic on f32 tensors is done in f64 and
//! rounded to f32 after every op, which gives the correctly rounded f32 result for add, sub, mul, div and
//! sqrt (f64 carries more than twice f32's precision). Integer arithmetic wraps to the element width.
//! Element types the interpreter does not hold (f16, bf16, raw minifloats, quantized) are an error, not a
//! guess.

use qc_ir::attr::{Attrs, DenseData};
use qc_ir::types::{ElemType, TensorType};
use qc_nn::{norm_axis, NnOp};

/// A concrete tensor: a static shape, an element type and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Element type: f32, f64 or an integer type.
    pub elem: ElemType,
    /// Values.
    pub data: Data,
}

/// Tensor values: floats for float element types, integers (i1 as 0/1) for integer ones.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// f32 or f64 values (f32 ones are exactly representable in f32).
    F(Vec<f64>),
    /// Integer values, already wrapped to the element width.
    I(Vec<i64>),
}

impl Tensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Expands a dense attribute of type `ty` (which must be static) into a tensor.
    pub fn from_dense(d: &DenseData, ty: &TensorType) -> Result<Tensor, String> {
        let shape = static_shape(ty)?;
        let n: usize = shape.iter().product();
        let data = match &ty.elem {
            ElemType::F32 | ElemType::F64 => {
                Data::F((0..n).map(|i| round_to(&ty.elem, d.get_f64(i))).collect())
            }
            ElemType::Int { bits, unsigned } => Data::I(
                (0..n)
                    .map(|i| wrap(d.get_i64(i), *bits, *unsigned))
                    .collect(),
            ),
            e => return Err(format!("the interpreter does not hold {e} tensors")),
        };
        Ok(Tensor {
            shape,
            elem: ty.elem.clone(),
            data,
        })
    }

    /// The values as a canonical dense attribute (splat when all equal).
    pub fn to_dense(&self) -> DenseData {
        match (&self.data, &self.elem) {
            (Data::I(v), ElemType::Int { bits: 1, .. }) => {
                DenseData::Bool(v.iter().map(|&x| x != 0).collect())
            }
            (Data::I(v), _) => DenseData::Int(v.clone()),
            (Data::F(v), _) => DenseData::Float(v.clone()),
        }
        .canonical()
    }
}

fn static_shape(ty: &TensorType) -> Result<Vec<usize>, String> {
    ty.static_shape()
        .map(|s| s.into_iter().map(|d| d as usize).collect())
        .ok_or_else(|| format!("the interpreter needs a static shape, not {ty}"))
}

fn round_to(elem: &ElemType, x: f64) -> f64 {
    match elem {
        ElemType::F32 => x as f32 as f64,
        _ => x,
    }
}

fn wrap(x: i64, bits: u8, unsigned: bool) -> i64 {
    if bits >= 64 {
        return x;
    }
    let m = x & ((1i64 << bits) - 1);
    if !unsigned && bits > 1 && m >> (bits - 1) & 1 == 1 {
        m - (1i64 << bits)
    } else {
        m
    }
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// For each flat index of `out`, the flat index into `input` under NumPy broadcasting.
fn broadcast_map(input: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let off = out.len() - input.len();
    let in_strides = strides(input);
    let out_strides = strides(out);
    (0..n)
        .map(|flat| {
            let mut idx = 0;
            for (k, (&d, &st)) in input.iter().zip(&in_strides).enumerate() {
                let coord = flat / out_strides[k + off] % out[k + off];
                if d != 1 {
                    idx += coord * st;
                }
            }
            idx
        })
        .collect()
}

/// Evaluates nn op `op` with attributes `attrs` on `inputs`, producing a tensor of `result` type (whose
/// shape must be static).
pub fn eval_nn(
    op: NnOp,
    attrs: &Attrs,
    inputs: &[Tensor],
    result: &TensorType,
) -> Result<Tensor, String> {
    let out_shape = static_shape(result)?;
    let elem = result.elem.clone();
    if !matches!(elem, ElemType::F32 | ElemType::F64 | ElemType::Int { .. }) {
        return Err(format!("the interpreter does not compute {elem} tensors"));
    }
    let make = |data| Tensor {
        shape: out_shape.clone(),
        elem: elem.clone(),
        data,
    };
    let x = &inputs[0];
    let data = match op {
        NnOp::Add | NnOp::Sub | NnOp::Mul | NnOp::Div | NnOp::Max | NnOp::Min => {
            let y = &inputs[1];
            let (ia, ib) = (
                broadcast_map(&x.shape, &out_shape),
                broadcast_map(&y.shape, &out_shape),
            );
            match (&x.data, &y.data, &elem) {
                (Data::F(a), Data::F(b), _) => Data::F(
                    ia.iter()
                        .zip(&ib)
                        .map(|(&i, &j)| {
                            let (p, q) = (a[i], b[j]);
                            round_to(
                                &elem,
                                match op {
                                    NnOp::Add => p + q,
                                    NnOp::Sub => p - q,
                                    NnOp::Mul => p * q,
                                    NnOp::Div => p / q,
                                    NnOp::Max => {
                                        if p.is_nan() || q.is_nan() {
                                            f64::NAN
                                        } else {
                                            p.max(q)
                                        }
                                    }
                                    _ => {
                                        if p.is_nan() || q.is_nan() {
                                            f64::NAN
                                        } else {
                                            p.min(q)
                                        }
                                    }
                                },
                            )
                        })
                        .collect(),
                ),
                (Data::I(a), Data::I(b), ElemType::Int { bits, unsigned }) => {
                    let mut out = Vec::with_capacity(ia.len());
                    for (&i, &j) in ia.iter().zip(&ib) {
                        let (p, q) = (a[i], b[j]);
                        let v = match op {
                            NnOp::Add => p.wrapping_add(q),
                            NnOp::Sub => p.wrapping_sub(q),
                            NnOp::Mul => p.wrapping_mul(q),
                            NnOp::Div if q == 0 => return Err("integer division by zero".into()),
                            NnOp::Div => p.wrapping_div(q),
                            NnOp::Max => p.max(q),
                            _ => p.min(q),
                        };
                        out.push(wrap(v, *bits, *unsigned));
                    }
                    Data::I(out)
                }
                _ => return Err("operand and result kinds differ".into()),
            }
        }
        NnOp::Neg => match (&x.data, &elem) {
            (Data::F(a), _) => Data::F(a.iter().map(|v| -v).collect()),
            (Data::I(a), ElemType::Int { bits, unsigned }) => Data::I(
                a.iter()
                    .map(|v| wrap(v.wrapping_neg(), *bits, *unsigned))
                    .collect(),
            ),
            _ => return Err("operand and result kinds differ".into()),
        },
        NnOp::Relu | NnOp::Exp | NnOp::Sqrt | NnOp::Tanh | NnOp::Sigmoid => {
            let Data::F(a) = &x.data else {
                return Err(format!("{} needs a float tensor", op.def().name));
            };
            Data::F(
                a.iter()
                    .map(|&v| {
                        round_to(
                            &elem,
                            match op {
                                NnOp::Relu => {
                                    if v.is_nan() {
                                        v
                                    } else {
                                        v.max(0.0)
                                    }
                                }
                                NnOp::Exp => v.exp(),
                                NnOp::Sqrt => v.sqrt(),
                                NnOp::Tanh => v.tanh(),
                                _ => 1.0 / (1.0 + (-v).exp()),
                            },
                        )
                    })
                    .collect(),
            )
        }
        NnOp::Identity | NnOp::Reshape => x.data.clone(),
        NnOp::Cast => match (&x.data, &elem) {
            (Data::F(a), ElemType::Int { bits, unsigned }) => {
                let mut out = Vec::with_capacity(a.len());
                for &v in a {
                    if !v.is_finite() {
                        return Err(format!("cannot cast {v} to an integer"));
                    }
                    out.push(wrap(v.trunc() as i64, *bits, *unsigned));
                }
                Data::I(out)
            }
            (Data::F(a), e) => Data::F(a.iter().map(|&v| round_to(e, v)).collect()),
            (Data::I(a), ElemType::Int { bits, unsigned }) => {
                Data::I(a.iter().map(|&v| wrap(v, *bits, *unsigned)).collect())
            }
            (Data::I(a), e) => Data::F(a.iter().map(|&v| round_to(e, v as f64)).collect()),
        },
        NnOp::Transpose => {
            let perm = attrs
                .get("perm")
                .and_then(|a| a.as_int_array())
                .ok_or("transpose needs perm")?;
            let in_strides = strides(&x.shape);
            let out_strides = strides(&out_shape);
            let src: Vec<usize> = (0..out_shape.iter().product())
                .map(|flat| {
                    perm.iter()
                        .enumerate()
                        .map(|(k, &p)| {
                            (flat / out_strides[k] % out_shape[k]) * in_strides[p as usize]
                        })
                        .sum()
                })
                .collect();
            gather(&x.data, &src)
        }
        NnOp::Shape => Data::I(x.shape.iter().map(|&d| d as i64).collect()),
        NnOp::Concat => {
            let axis = norm_axis(
                attrs.get("axis").and_then(|a| a.as_int()).unwrap_or(0),
                out_shape.len(),
            )?;
            let outer: usize = out_shape[..axis].iter().product();
            let mut f = Vec::new();
            let mut iv = Vec::new();
            for o in 0..outer {
                for t in inputs {
                    let chunk: usize = t.shape[axis..].iter().product();
                    let r = o * chunk..(o + 1) * chunk;
                    match &t.data {
                        Data::F(v) => f.extend_from_slice(&v[r]),
                        Data::I(v) => iv.extend_from_slice(&v[r]),
                    }
                }
            }
            if matches!(x.data, Data::F(_)) {
                Data::F(f)
            } else {
                Data::I(iv)
            }
        }
        NnOp::ReduceSum => {
            let rank = x.shape.len();
            let axes: Vec<usize> = match attrs.get("axes").and_then(|a| a.as_int_array()) {
                Some(a) => a
                    .iter()
                    .map(|&k| norm_axis(k, rank))
                    .collect::<Result<_, _>>()?,
                None => (0..rank).collect(),
            };
            let kept: Vec<usize> = (0..rank)
                .map(|d| if axes.contains(&d) { 1 } else { x.shape[d] })
                .collect();
            let kept_strides = strides(&kept);
            let in_strides = strides(&x.shape);
            let n_out: usize = kept.iter().product();
            let target: Vec<usize> = (0..x.len())
                .map(|flat| {
                    (0..rank)
                        .map(|d| {
                            if axes.contains(&d) {
                                0
                            } else {
                                flat / in_strides[d] % x.shape[d] * kept_strides[d]
                            }
                        })
                        .sum()
                })
                .collect();
            match (&x.data, &elem) {
                (Data::F(a), _) => {
                    let mut acc = vec![0.0f64; n_out];
                    for (i, &t) in target.iter().enumerate() {
                        acc[t] = round_to(&elem, acc[t] + a[i]);
                    }
                    Data::F(acc)
                }
                (Data::I(a), ElemType::Int { bits, unsigned }) => {
                    let mut acc = vec![0i64; n_out];
                    for (i, &t) in target.iter().enumerate() {
                        acc[t] = wrap(acc[t].wrapping_add(a[i]), *bits, *unsigned);
                    }
                    Data::I(acc)
                }
                _ => return Err("operand and result kinds differ".into()),
            }
        }
        NnOp::Matmul => matmul(x, &inputs[1], &out_shape, &elem)?,
    };
    Ok(make(data))
}

fn gather(d: &Data, idx: &[usize]) -> Data {
    match d {
        Data::F(v) => Data::F(idx.iter().map(|&i| v[i]).collect()),
        Data::I(v) => Data::I(idx.iter().map(|&i| v[i]).collect()),
    }
}

/// Batched matrix product; each dot product accumulates in order k = 0..K, rounding to the element type
/// after every multiply-add.
fn matmul(a: &Tensor, b: &Tensor, out: &[usize], elem: &ElemType) -> Result<Data, String> {
    let r = out.len();
    let (m, n) = (out[r - 2], out[r - 1]);
    let k = a.shape[a.shape.len() - 1];
    let batch: Vec<usize> = out[..r - 2].to_vec();
    let mut a_batch = a.shape[..a.shape.len() - 2].to_vec();
    a_batch.extend([1, 1]);
    let mut b_batch = b.shape[..b.shape.len() - 2].to_vec();
    b_batch.extend([1, 1]);
    let mut full = batch.clone();
    full.extend([1, 1]);
    let (ia, ib) = (
        broadcast_map(&a_batch, &full),
        broadcast_map(&b_batch, &full),
    );
    let nb: usize = batch.iter().product();
    match (&a.data, &b.data) {
        (Data::F(x), Data::F(y)) => {
            let mut o = vec![0.0; nb * m * n];
            for bi in 0..nb {
                let (xa, yb) = (ia[bi] * m * k, ib[bi] * k * n);
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0.0;
                        for p in 0..k {
                            acc = round_to(
                                elem,
                                acc + round_to(elem, x[xa + i * k + p] * y[yb + p * n + j]),
                            );
                        }
                        o[bi * m * n + i * n + j] = acc;
                    }
                }
            }
            Ok(Data::F(o))
        }
        (Data::I(x), Data::I(y)) => {
            let ElemType::Int { bits, unsigned } = elem else {
                return Err("integer matmul needs an integer result".into());
            };
            let mut o = vec![0; nb * m * n];
            for bi in 0..nb {
                let (xa, yb) = (ia[bi] * m * k, ib[bi] * k * n);
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0i64;
                        for p in 0..k {
                            acc =
                                acc.wrapping_add(x[xa + i * k + p].wrapping_mul(y[yb + p * n + j]));
                        }
                        o[bi * m * n + i * n + j] = wrap(acc, *bits, *unsigned);
                    }
                }
            }
            Ok(Data::I(o))
        }
        _ => Err("matmul operands differ in kind".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_ir::parse_type;

    fn t(ty: &str, v: Vec<f64>) -> Tensor {
        Tensor::from_dense(&DenseData::Float(v), &parse_type(ty).unwrap()).unwrap()
    }

    #[test]
    fn broadcast_add_and_matmul() {
        let a = t("tensor<2x2xf32>", vec![1.0, 2.0, 3.0, 4.0]);
        let b = t("tensor<2xf32>", vec![10.0, 20.0]);
        let r = eval_nn(
            NnOp::Add,
            &Attrs::new(),
            &[a.clone(), b],
            &parse_type("tensor<2x2xf32>").unwrap(),
        )
        .unwrap();
        assert_eq!(r.data, Data::F(vec![11.0, 22.0, 13.0, 24.0]));
        let r = eval_nn(
            NnOp::Matmul,
            &Attrs::new(),
            &[a.clone(), a],
            &parse_type("tensor<2x2xf32>").unwrap(),
        )
        .unwrap();
        assert_eq!(r.data, Data::F(vec![7.0, 10.0, 15.0, 22.0]));
    }

    #[test]
    fn f32_results_are_rounded_and_ints_wrap() {
        let a = t("tensor<f32>", vec![0.1]);
        let r = eval_nn(
            NnOp::Add,
            &Attrs::new(),
            &[a.clone(), a],
            &parse_type("tensor<f32>").unwrap(),
        )
        .unwrap();
        assert_eq!(r.data, Data::F(vec![(0.1f32 + 0.1f32) as f64]));
        let i8t = parse_type("tensor<i8>").unwrap();
        let x = Tensor::from_dense(&DenseData::Int(vec![100]), &i8t).unwrap();
        let r = eval_nn(NnOp::Add, &Attrs::new(), &[x.clone(), x], &i8t).unwrap();
        assert_eq!(r.data, Data::I(vec![-56]));
    }

    #[test]
    fn transpose_and_reduce() {
        let a = t("tensor<2x3xf32>", vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let attrs: Attrs = [(
            "perm",
            qc_ir::Attribute::Array(vec![qc_ir::Attribute::Int(1), qc_ir::Attribute::Int(0)]),
        )]
        .into_iter()
        .collect();
        let r = eval_nn(
            NnOp::Transpose,
            &attrs,
            std::slice::from_ref(&a),
            &parse_type("tensor<3x2xf32>").unwrap(),
        )
        .unwrap();
        assert_eq!(r.data, Data::F(vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
        let attrs: Attrs = [(
            "axes",
            qc_ir::Attribute::Array(vec![qc_ir::Attribute::Int(1)]),
        )]
        .into_iter()
        .collect();
        let r = eval_nn(
            NnOp::ReduceSum,
            &attrs,
            &[a],
            &parse_type("tensor<2xf32>").unwrap(),
        )
        .unwrap();
        assert_eq!(r.data, Data::F(vec![6.0, 15.0]));
    }
}

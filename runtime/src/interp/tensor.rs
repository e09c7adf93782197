//! Concrete tensors for the reference interpreter.

use qc_ir::attr::DenseData;
use qc_ir::types::{ElemType, TensorType};

/// A concrete tensor: a shape, an element type and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Element type: f16, bf16, f32, f64 or an integer type (`i1` for booleans).
    pub elem: ElemType,
    /// Values.
    pub data: Data,
}

/// Tensor values: floats for float element types (each exactly representable in the element type),
/// integers (0/1 for `i1`) for integer ones, already wrapped to the element width.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Float values.
    F(Vec<f64>),
    /// Integer values.
    I(Vec<i64>),
}

impl Data {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` as f64.
    pub fn f(&self, i: usize) -> f64 {
        match self {
            Data::F(v) => v[i],
            Data::I(v) => v[i] as f64,
        }
    }

    /// Value `i` as i64 (floats truncate).
    pub fn i(&self, i: usize) -> i64 {
        match self {
            Data::F(v) => v[i] as i64,
            Data::I(v) => v[i],
        }
    }

    /// The values at `idx`, in that order.
    pub fn gather(&self, idx: &[usize]) -> Data {
        match self {
            Data::F(v) => Data::F(idx.iter().map(|&i| v[i]).collect()),
            Data::I(v) => Data::I(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// Rounds an f64 to the nearest value of a float element type (f16 and bf16 through `half`, RNE).
pub fn round_to(elem: &ElemType, x: f64) -> f64 {
    match elem {
        ElemType::F32 => x as f32 as f64,
        ElemType::F16 => half::f16::from_f64(x).to_f64(),
        ElemType::BF16 => half::bf16::from_f64(x).to_f64(),
        _ => x,
    }
}

/// Wraps an integer to `bits` bits, two's complement unless `unsigned` (`i1` is 0 or 1).
pub fn wrap(x: i64, bits: u8, unsigned: bool) -> i64 {
    if bits >= 64 {
        return x;
    }
    if bits == 1 {
        return (x != 0) as i64;
    }
    let m = x & ((1i64 << bits) - 1);
    if !unsigned && (m >> (bits - 1)) & 1 == 1 {
        m - (1i64 << bits)
    } else {
        m
    }
}

/// Whether the interpreter holds tensors of this element type.
pub fn supported(elem: &ElemType) -> bool {
    matches!(
        elem,
        ElemType::F16
            | ElemType::BF16
            | ElemType::F32
            | ElemType::F64
            | ElemType::Int { .. }
            | ElemType::Raw(_)
    )
}

impl Tensor {
    /// A tensor from parts; `data` must hold the product of `shape` values.
    pub fn new(shape: Vec<usize>, elem: ElemType, data: Data) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, elem, data }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True for integer (and i1) tensors.
    pub fn is_int(&self) -> bool {
        matches!(self.data, Data::I(_))
    }

    /// The static type of this tensor.
    pub fn ty(&self) -> TensorType {
        TensorType::new(
            &self.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
            self.elem.clone(),
        )
    }

    /// Expands a dense attribute of a static type into a tensor.
    pub fn from_dense(d: &DenseData, ty: &TensorType) -> Result<Tensor, String> {
        let shape: Vec<usize> = ty
            .static_shape()
            .ok_or_else(|| format!("a constant needs a static shape, not {ty}"))?
            .into_iter()
            .map(|d| d as usize)
            .collect();
        let n: usize = shape.iter().product();
        let data = match &ty.elem {
            e @ (ElemType::F16 | ElemType::BF16 | ElemType::F32 | ElemType::F64) => {
                Data::F((0..n).map(|i| round_to(e, d.get_f64(i))).collect())
            }
            ElemType::Int { bits, unsigned } => Data::I(
                (0..n)
                    .map(|i| wrap(d.get_i64(i), *bits, *unsigned))
                    .collect(),
            ),
            ElemType::Raw(enc) => {
                let values: Vec<f64> = (0..n).map(|i| d.get_f64(i)).collect();
                return super::raw::from_values(&values, shape, *enc);
            }
            e => return Err(format!("the interpreter does not hold {e} tensors")),
        };
        Ok(Tensor {
            shape,
            elem: ty.elem.clone(),
            data,
        })
    }

    /// Decodes little-endian bytes of a byte-aligned element type (the layout of `dense_resource` blobs
    /// and ONNX raw_data).
    pub fn from_bytes(bytes: &[u8], ty: &TensorType) -> Result<Tensor, String> {
        let shape: Vec<usize> = ty
            .static_shape()
            .ok_or_else(|| format!("a constant needs a static shape, not {ty}"))?
            .into_iter()
            .map(|d| d as usize)
            .collect();
        let n: usize = shape.iter().product();
        let size = ty
            .elem
            .byte_size()
            .ok_or_else(|| format!("cannot decode {} elements from bytes", ty.elem))?;
        if bytes.len() != n * size {
            return Err(format!(
                "{} bytes do not hold {n} elements of {}",
                bytes.len(),
                ty.elem
            ));
        }
        let chunks = bytes.chunks_exact(size);
        let data = match &ty.elem {
            ElemType::F32 => Data::F(
                chunks
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64)
                    .collect(),
            ),
            ElemType::F64 => Data::F(
                chunks
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            ElemType::F16 => Data::F(
                chunks
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
            ),
            ElemType::BF16 => Data::F(
                chunks
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
            ),
            ElemType::Int { bits: 1, .. } => Data::I(chunks.map(|c| (c[0] != 0) as i64).collect()),
            ElemType::Int { bits, unsigned } => Data::I(
                chunks
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b[..c.len()].copy_from_slice(c);
                        wrap(u64::from_le_bytes(b) as i64, *bits, *unsigned)
                    })
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

    /// Little-endian bytes of this tensor (the inverse of [`Tensor::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * self.elem.byte_size().unwrap_or(8));
        for i in 0..self.len() {
            match &self.elem {
                ElemType::F32 => out.extend((self.data.f(i) as f32).to_le_bytes()),
                ElemType::F64 => out.extend(self.data.f(i).to_le_bytes()),
                ElemType::F16 => out.extend(half::f16::from_f64(self.data.f(i)).to_le_bytes()),
                ElemType::BF16 => out.extend(half::bf16::from_f64(self.data.f(i)).to_le_bytes()),
                ElemType::Int { bits, .. } => {
                    let n = (*bits as usize).div_ceil(8).max(1);
                    out.extend(&self.data.i(i).to_le_bytes()[..n]);
                }
                _ => {}
            }
        }
        out
    }

    /// The values as a canonical dense attribute (splat when all equal).
    pub fn to_dense(&self) -> DenseData {
        if let (ElemType::Raw(_), Ok(values)) = (&self.elem, super::raw::decode(self)) {
            return DenseData::Float(values).canonical();
        }
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

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// For each flat index of `out`, the flat index into a tensor of shape `input` under NumPy broadcasting.
pub fn broadcast_map(input: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    if input == out {
        return (0..n).collect();
    }
    let off = out.len() - input.len();
    let in_strides = strides(input);
    let out_strides = strides(out);
    (0..n)
        .map(|flat| {
            let mut idx = 0;
            for (k, (&d, &st)) in input.iter().zip(&in_strides).enumerate() {
                if d != 1 {
                    idx += (flat / out_strides[k + off] % out[k + off]) * st;
                }
            }
            idx
        })
        .collect()
}

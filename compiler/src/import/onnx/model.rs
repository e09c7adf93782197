//! The loaded model: a validated ONNX graph in plain Rust types.
//!
//! Produced only by [`super::load::load_model`], which guarantees what each type's documentation states.
//! Every item carries `path`, its field path in the file (e.g. `graph.node[5]`), for diagnostics; build a
//! location with [`OnnxModel::loc`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use qc_ir::diag::Location;

pub use super::external::MappedFile;

/// ONNX tensor element types (`TensorProto.DataType`), every one the format defines (codes 1 to 28).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum DataType {
    Float,
    Uint8,
    Int8,
    Uint16,
    Int16,
    Int32,
    Int64,
    String,
    Bool,
    Float16,
    Double,
    Uint32,
    Uint64,
    Complex64,
    Complex128,
    Bfloat16,
    Float8E4M3FN,
    Float8E4M3FNUZ,
    Float8E5M2,
    Float8E5M2FNUZ,
    Uint4,
    Int4,
    Float4E2M1,
    Float8E8M0,
    Uint2,
    Int2,
    Float6E2M3,
    Float6E3M2,
}

impl DataType {
    /// Every type, in code order.
    pub const ALL: [DataType; 28] = {
        use DataType::*;
        [
            Float,
            Uint8,
            Int8,
            Uint16,
            Int16,
            Int32,
            Int64,
            String,
            Bool,
            Float16,
            Double,
            Uint32,
            Uint64,
            Complex64,
            Complex128,
            Bfloat16,
            Float8E4M3FN,
            Float8E4M3FNUZ,
            Float8E5M2,
            Float8E5M2FNUZ,
            Uint4,
            Int4,
            Float4E2M1,
            Float8E8M0,
            Uint2,
            Int2,
            Float6E2M3,
            Float6E3M2,
        ]
    };

    /// The type with ONNX code `code`; `None` for 0 (UNDEFINED) and unknown codes.
    pub fn from_code(code: i32) -> Option<DataType> {
        usize::try_from(code)
            .ok()
            .and_then(|c| c.checked_sub(1))
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// The ONNX code.
    pub fn code(self) -> i32 {
        Self::ALL
            .iter()
            .position(|&t| t == self)
            .map_or(0, |i| i as i32 + 1)
    }

    /// The ONNX spelling, e.g. `FLOAT8E4M3FN`.
    pub fn name(self) -> &'static str {
        use DataType::*;
        match self {
            Float => "FLOAT",
            Uint8 => "UINT8",
            Int8 => "INT8",
            Uint16 => "UINT16",
            Int16 => "INT16",
            Int32 => "INT32",
            Int64 => "INT64",
            String => "STRING",
            Bool => "BOOL",
            Float16 => "FLOAT16",
            Double => "DOUBLE",
            Uint32 => "UINT32",
            Uint64 => "UINT64",
            Complex64 => "COMPLEX64",
            Complex128 => "COMPLEX128",
            Bfloat16 => "BFLOAT16",
            Float8E4M3FN => "FLOAT8E4M3FN",
            Float8E4M3FNUZ => "FLOAT8E4M3FNUZ",
            Float8E5M2 => "FLOAT8E5M2",
            Float8E5M2FNUZ => "FLOAT8E5M2FNUZ",
            Uint4 => "UINT4",
            Int4 => "INT4",
            Float4E2M1 => "FLOAT4E2M1",
            Float8E8M0 => "FLOAT8E8M0",
            Uint2 => "UINT2",
            Int2 => "INT2",
            Float6E2M3 => "FLOAT6E2M3",
            Float6E3M2 => "FLOAT6E3M2",
        }
    }

    /// Bits per element in `raw_data`; `None` for STRING.
    pub fn bits(self) -> Option<u64> {
        use DataType::*;
        Some(match self {
            String => return None,
            Uint2 | Int2 => 2,
            Uint4 | Int4 | Float4E2M1 => 4,
            Float6E2M3 | Float6E3M2 => 6,
            Uint8 | Int8 | Bool | Float8E4M3FN | Float8E4M3FNUZ | Float8E5M2 | Float8E5M2FNUZ
            | Float8E8M0 => 8,
            Uint16 | Int16 | Float16 | Bfloat16 => 16,
            Float | Int32 | Uint32 => 32,
            Int64 | Uint64 | Double | Complex64 => 64,
            Complex128 => 128,
        })
    }

    /// Bytes `n` elements take in `raw_data` (sub-byte types packed, rounded up: 4-bit types
    /// `ceil(n / 2)`, 2-bit `ceil(n / 4)`, 6-bit `ceil(6n / 8)`); `None` for STRING or on overflow.
    pub fn raw_size(self, n: u64) -> Option<u64> {
        let bits = n.checked_mul(self.bits()?)?;
        Some(bits.div_ceil(8))
    }
}

/// A tensor constant: an initializer or a tensor attribute.
///
/// Guarantees: `dims` are the file's dims (each fits in `i64`), their product and the data's byte size do
/// not overflow `u64`, and `data` holds exactly the elements the dims imply (see [`TensorData`]).
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Name (may be empty for attribute tensors).
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Shape (empty for a scalar).
    pub dims: Vec<u64>,
    /// The elements.
    pub data: TensorData,
    /// Field path, e.g. `graph.initializer[3]` or `graph.node[0].attribute[0].t`.
    pub path: String,
}

impl Tensor {
    /// Number of elements (product of dims; checked not to overflow when loaded).
    pub fn num_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The elements in ONNX's `raw_data` layout (little-endian, fixed width, sub-byte types packed): borrowed
    /// from the mapping for [`TensorData::Raw`], converted for typed fields. `None` for STRING tensors.
    /// Typed values wider than the element type are truncated to its width, as ONNX's own readers do.
    pub fn raw_bytes(&self) -> Option<Cow<'_, [u8]>> {
        use DataType::*;
        Some(match &self.data {
            TensorData::Raw(r) => Cow::Borrowed(r.bytes()),
            TensorData::Strings(_) => return None,
            TensorData::Floats(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::Doubles(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::Int64s(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::Uint64s(v) => Cow::Owned(match self.dtype {
                Uint32 => v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            }),
            TensorData::Int32s(v) => Cow::Owned(match self.dtype {
                Int32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Int16 | Uint16 | Float16 | Bfloat16 => {
                    v.iter().flat_map(|&x| (x as u16).to_le_bytes()).collect()
                }
                Float6E2M3 | Float6E3M2 => pack6(v),
                // 8-bit types one per entry; 4-bit types two per entry and 2-bit four per entry, already
                // packed into the low byte.
                _ => v.iter().map(|&x| x as u8).collect(),
            }),
        })
    }
}

/// Packs 6-bit values LSB-first, four per three bytes.
fn pack6(v: &[i32]) -> Vec<u8> {
    let mut out = Vec::with_capacity((v.len() * 6).div_ceil(8));
    let (mut acc, mut nbits) = (0u32, 0u32);
    for &x in v {
        acc |= ((x as u32) & 0x3f) << nbits;
        nbits += 6;
        while nbits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            nbits -= 8;
        }
    }
    if nbits > 0 {
        out.push(acc as u8);
    }
    out
}

/// Where a tensor's elements are.
///
/// Each typed variant holds exactly as many entries as ONNX's rules give for the dtype and element count
/// `n`: `Floats` n (FLOAT) or 2n (COMPLEX64); `Doubles` n or 2n (COMPLEX128); `Int64s`, `Uint64s` and
/// `Strings` n; `Int32s` n, except `ceil(n/2)` for 4-bit and `ceil(n/4)` for 2-bit types (packed).
#[derive(Clone, Debug)]
pub enum TensorData {
    /// `raw_data` in the model file, or external data: a range of a mapped file, exactly
    /// `dtype.raw_size(n)` bytes.
    Raw(RawData),
    /// `float_data`.
    Floats(Vec<f32>),
    /// `int32_data`.
    Int32s(Vec<i32>),
    /// `int64_data`.
    Int64s(Vec<i64>),
    /// `double_data`.
    Doubles(Vec<f64>),
    /// `uint64_data`.
    Uint64s(Vec<u64>),
    /// `string_data`.
    Strings(Vec<Bytes>),
}

/// A checked byte range of a mapped file.
#[derive(Clone, Debug)]
pub struct RawData {
    /// The file: the model itself (raw_data) or an external data file.
    pub file: Arc<MappedFile>,
    /// Start of the range in the file.
    pub offset: u64,
    /// Length of the range.
    pub length: u64,
}

impl RawData {
    /// The bytes (a slice of the mapping; checked in range when loaded).
    pub fn bytes(&self) -> &[u8] {
        let all = self.file.bytes();
        let start = usize::try_from(self.offset).unwrap_or(usize::MAX);
        let end = usize::try_from(self.offset.saturating_add(self.length)).unwrap_or(usize::MAX);
        all.get(start..end).unwrap_or(&[])
    }

    /// The blob the IR uses for it: `external<"{file.rel}", offset, length>`, relative to the model's folder.
    pub fn to_blob(&self) -> qc_ir::resource::Blob {
        qc_ir::resource::Blob::Mapped {
            map: self.file.map.clone(),
            path: self.file.rel.clone(),
            offset: self.offset,
            length: self.length,
        }
    }
}

/// One axis of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size (`dim_value`, non-negative).
    Fixed(u64),
    /// A symbolic size (`dim_param`, non-empty).
    Symbol(String),
    /// Neither given.
    Unknown,
}

/// A declared tensor type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    /// Element type.
    pub dtype: DataType,
    /// Axes; `None` when the rank is unknown.
    pub shape: Option<Vec<Dim>>,
}

/// A graph input, output or `value_info` entry.
#[derive(Clone, Debug)]
pub struct ValueInfo {
    /// Value name (non-empty).
    pub name: String,
    /// Type; always present for graph inputs and outputs, optional in `value_info`.
    pub ty: Option<TensorType>,
    /// Field path, e.g. `graph.input[0]`.
    pub path: String,
}

/// An attribute value. Graph, sparse-tensor and type-proto attributes are rejected by the loader.
#[derive(Clone, Debug)]
pub enum AttrValue {
    /// FLOAT.
    Float(f32),
    /// INT.
    Int(i64),
    /// STRING (bytes; UTF-8 by convention, not checked).
    String(Bytes),
    /// TENSOR (validated like an initializer).
    Tensor(Tensor),
    /// FLOATS.
    Floats(Vec<f32>),
    /// INTS.
    Ints(Vec<i64>),
    /// STRINGS.
    Strings(Vec<Bytes>),
    /// TENSORS.
    Tensors(Vec<Tensor>),
}

/// A node attribute.
#[derive(Clone, Debug)]
pub struct Attribute {
    /// Name (non-empty, unique within the node).
    pub name: String,
    /// Value.
    pub value: AttrValue,
    /// Field path, e.g. `graph.node[5].attribute[0]`.
    pub path: String,
}

/// One operator application.
#[derive(Clone, Debug)]
pub struct Node {
    /// Position in the file's `graph.node` list.
    pub index: usize,
    /// Node name (may be empty).
    pub name: String,
    /// Operator, e.g. `MatMul`.
    pub op_type: String,
    /// Domain; always the default domain (`""`) after loading.
    pub domain: String,
    /// Input value names; `""` is an omitted optional input. Every other name is defined before this node.
    pub inputs: Vec<String>,
    /// Output value names; `""` is an omitted optional output. Each other name is defined only here.
    pub outputs: Vec<String>,
    /// Attributes, in file order.
    pub attributes: Vec<Attribute>,
    /// Field path: `graph.node[i]`, with ` ("name")` appended when the node has a name.
    pub path: String,
}

impl Node {
    /// The attribute named `name`.
    pub fn attr(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }
}

/// A loaded, validated ONNX model.
///
/// Guarantees: the default-domain opset is in [`super::load::SUPPORTED_OPSETS`]; every node is in the
/// default domain; `nodes` are in a topological order (the file's order where it already is one); every
/// node input and graph output names a graph input, an initializer or an earlier node's output; no value
/// is defined twice; every tensor's data matches its dims.
#[derive(Clone, Debug)]
pub struct OnnxModel {
    /// The model file as given by the caller; used in every diagnostic.
    pub file: Arc<str>,
    /// The model's folder (external data and IR `external<...>` references are relative to it).
    pub dir: PathBuf,
    /// The model file, mapped; `RawData` of in-file initializers point into it (`rel` = the file name).
    pub mapped: Arc<MappedFile>,
    /// `ir_version`.
    pub ir_version: i64,
    /// The default domain's (`ai.onnx`) opset version.
    pub opset: i64,
    /// Every `opset_import` entry, (domain, version), in file order.
    pub opset_imports: Vec<(String, i64)>,
    /// `producer_name`.
    pub producer_name: String,
    /// `producer_version`.
    pub producer_version: String,
    /// `graph.name`.
    pub graph_name: String,
    /// Graph inputs that are not initializers, in file order.
    pub inputs: Vec<ValueInfo>,
    /// Graph inputs that are also initializers (IR < 4 style; the initializer is the default value).
    pub overridable_inputs: Vec<ValueInfo>,
    /// Graph outputs, in file order.
    pub outputs: Vec<ValueInfo>,
    /// `graph.value_info` entries with a tensor type.
    pub value_info: Vec<ValueInfo>,
    /// Initializers, in file order.
    pub initializers: Vec<Tensor>,
    /// Initializer position in `initializers` by name (names are unique).
    pub initializer_index: HashMap<String, usize>,
    /// Nodes, in topological order.
    pub nodes: Vec<Node>,
    /// `metadata_props`, in file order.
    pub metadata: Vec<(String, String)>,
}

impl OnnxModel {
    /// A location in this model's file.
    pub fn loc(&self, path: impl Into<String>) -> Location {
        Location::Model {
            file: self.file.clone(),
            path: path.into(),
        }
    }

    /// The initializer named `name`.
    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializer_index
            .get(name)
            .and_then(|&i| self.initializers.get(i))
    }
}

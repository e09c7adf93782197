//! The ONNX protobuf messages, as far as qc reads them.
//!
//! Written for qc from the field numbering documented in ONNX's `onnx.proto` (IR version 11+); decoded
//! with `prost`. Fields qc never reads are left out: prost skips unknown fields (after checking their wire
//! structure), so a model that carries them still decodes.
//!
//! Contracts:
//! - Decode from a [`bytes::Bytes`] that wraps the memory-mapped model file: every `bytes` field is then a
//!   slice of the mapping (zero copy), and [`TensorProto::raw_data`]'s pointer tells its offset in the file.
//! - Sub-graphs, sparse tensors and type protos inside attributes are kept *encoded* (as `Bytes` slices of
//!   the file) rather than decoded: qc rejects them, and an undecoded field cannot nest without bound. Decode
//!   one with e.g. `GraphProto::decode(bytes.clone())` when a later stage supports it.
//! - `TypeProto`'s sequence / map / optional / sparse / opaque variants are declared without fields, which
//!   is enough to tell them apart and reject them.
//! - Scalar fields are proto3-style (absent reads as zero); fields whose presence matters are `Option`.

use bytes::Bytes;

/// `TensorProto.DataType` codes (the values of `TensorProto::data_type` and `TypeProto.Tensor.elem_type`).
pub mod data_type {
    /// Not set.
    pub const UNDEFINED: i32 = 0;
    /// IEEE float32.
    pub const FLOAT: i32 = 1;
    /// uint8.
    pub const UINT8: i32 = 2;
    /// int8.
    pub const INT8: i32 = 3;
    /// uint16.
    pub const UINT16: i32 = 4;
    /// int16.
    pub const INT16: i32 = 5;
    /// int32.
    pub const INT32: i32 = 6;
    /// int64.
    pub const INT64: i32 = 7;
    /// UTF-8 string.
    pub const STRING: i32 = 8;
    /// bool, one byte.
    pub const BOOL: i32 = 9;
    /// IEEE float16.
    pub const FLOAT16: i32 = 10;
    /// IEEE float64.
    pub const DOUBLE: i32 = 11;
    /// uint32.
    pub const UINT32: i32 = 12;
    /// uint64.
    pub const UINT64: i32 = 13;
    /// Two float32.
    pub const COMPLEX64: i32 = 14;
    /// Two float64.
    pub const COMPLEX128: i32 = 15;
    /// bfloat16.
    pub const BFLOAT16: i32 = 16;
    /// FP8 E4M3, finite-only.
    pub const FLOAT8E4M3FN: i32 = 17;
    /// FP8 E4M3, finite-only, unsigned zero.
    pub const FLOAT8E4M3FNUZ: i32 = 18;
    /// FP8 E5M2.
    pub const FLOAT8E5M2: i32 = 19;
    /// FP8 E5M2, finite-only, unsigned zero.
    pub const FLOAT8E5M2FNUZ: i32 = 20;
    /// uint4, two per byte.
    pub const UINT4: i32 = 21;
    /// int4, two per byte.
    pub const INT4: i32 = 22;
    /// FP4 E2M1, two per byte.
    pub const FLOAT4E2M1: i32 = 23;
    /// E8M0 scale.
    pub const FLOAT8E8M0: i32 = 24;
    /// uint2, four per byte.
    pub const UINT2: i32 = 25;
    /// int2, four per byte.
    pub const INT2: i32 = 26;
    /// FP6 E2M3, four per three bytes.
    pub const FLOAT6E2M3: i32 = 27;
    /// FP6 E3M2, four per three bytes.
    pub const FLOAT6E3M2: i32 = 28;
}

/// `AttributeProto.AttributeType` codes.
pub mod attribute_type {
    /// Not set.
    pub const UNDEFINED: i32 = 0;
    /// `f`.
    pub const FLOAT: i32 = 1;
    /// `i`.
    pub const INT: i32 = 2;
    /// `s`.
    pub const STRING: i32 = 3;
    /// `t`.
    pub const TENSOR: i32 = 4;
    /// `g`.
    pub const GRAPH: i32 = 5;
    /// `floats`.
    pub const FLOATS: i32 = 6;
    /// `ints`.
    pub const INTS: i32 = 7;
    /// `strings`.
    pub const STRINGS: i32 = 8;
    /// `tensors`.
    pub const TENSORS: i32 = 9;
    /// `graphs`.
    pub const GRAPHS: i32 = 10;
    /// `sparse_tensor`.
    pub const SPARSE_TENSOR: i32 = 11;
    /// `sparse_tensors`.
    pub const SPARSE_TENSORS: i32 = 12;
    /// `tp`.
    pub const TYPE_PROTO: i32 = 13;
    /// `type_protos`.
    pub const TYPE_PROTOS: i32 = 14;
}

/// The top-level message of a `.onnx` file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// IR version of the file format.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Operator sets the model imports (domain, version).
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Producing tool.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Producing tool's version.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Model domain (reverse DNS).
    #[prost(string, tag = "4")]
    pub domain: String,
    /// Model version.
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// Documentation.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The main graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Metadata key/value pairs.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
    /// Model-local functions, kept encoded (qc does not inline them).
    #[prost(bytes = "bytes", repeated, tag = "25")]
    pub functions: Vec<Bytes>,
}

/// A key/value pair of strings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// An operator set import.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Domain; empty means the default `ai.onnx` domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version of the operator set.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A computation graph.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes (ONNX requires topological order; qc sorts and checks).
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Sparse constant tensors, kept encoded (qc rejects them).
    #[prost(bytes = "bytes", repeated, tag = "15")]
    pub sparse_initializer: Vec<Bytes>,
    /// Documentation.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    /// Graph inputs (may also list initializers, as IR < 4 required).
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Types of intermediate values.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
    /// Metadata key/value pairs.
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// One operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Input value names; an empty name is an omitted optional input.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names; an empty name is an omitted optional output.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name (optional).
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator name.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Operator domain; empty means `ai.onnx`.
    #[prost(string, tag = "7")]
    pub domain: String,
    /// Function overload identifier.
    #[prost(string, tag = "8")]
    pub overload: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Documentation.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// Metadata key/value pairs.
    #[prost(message, repeated, tag = "9")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// A named attribute of a node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Reference to an attribute of the enclosing function (functions only).
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
    /// Documentation.
    #[prost(string, tag = "13")]
    pub doc_string: String,
    /// Which value field is used ([`attribute_type`]).
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    /// FLOAT value.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// INT value.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// STRING value (bytes, UTF-8 by convention).
    #[prost(bytes = "bytes", tag = "4")]
    pub s: Bytes,
    /// TENSOR value.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// GRAPH value, kept encoded.
    #[prost(bytes = "bytes", optional, tag = "6")]
    pub g: Option<Bytes>,
    /// SPARSE_TENSOR value, kept encoded.
    #[prost(bytes = "bytes", optional, tag = "22")]
    pub sparse_tensor: Option<Bytes>,
    /// TYPE_PROTO value, kept encoded.
    #[prost(bytes = "bytes", optional, tag = "14")]
    pub tp: Option<Bytes>,
    /// FLOATS value.
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    /// INTS value.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// STRINGS value.
    #[prost(bytes = "bytes", repeated, tag = "9")]
    pub strings: Vec<Bytes>,
    /// TENSORS value.
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    /// GRAPHS value, kept encoded.
    #[prost(bytes = "bytes", repeated, tag = "11")]
    pub graphs: Vec<Bytes>,
    /// SPARSE_TENSORS value, kept encoded.
    #[prost(bytes = "bytes", repeated, tag = "23")]
    pub sparse_tensors: Vec<Bytes>,
    /// TYPE_PROTOS value, kept encoded.
    #[prost(bytes = "bytes", repeated, tag = "15")]
    pub type_protos: Vec<Bytes>,
}

/// A tensor value: an initializer or an attribute's tensor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type ([`data_type`]).
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Segment of a chunked tensor (qc rejects it).
    #[prost(message, optional, tag = "3")]
    pub segment: Option<Segment>,
    /// FLOAT / COMPLEX64 values.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// Values of the narrow integer and float types (see ONNX's packing rules).
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// STRING values.
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub string_data: Vec<Bytes>,
    /// INT64 values.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// Tensor name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Documentation.
    #[prost(string, tag = "12")]
    pub doc_string: String,
    /// Little-endian fixed-width (or bit-packed) element bytes; a slice of the mapped file.
    #[prost(bytes = "bytes", optional, tag = "9")]
    pub raw_data: Option<Bytes>,
    /// Where external data lives: keys `location`, `offset`, `length`, `checksum`.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0 = DEFAULT (in this message), 1 = EXTERNAL.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
    /// DOUBLE / COMPLEX128 values.
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// UINT32 / UINT64 values.
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
    /// Metadata key/value pairs.
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `TensorProto.Segment`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Segment {
    /// First element.
    #[prost(int64, tag = "1")]
    pub begin: i64,
    /// One past the last element.
    #[prost(int64, tag = "2")]
    pub end: i64,
}

/// A named value with its type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// Documentation.
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// A value's type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// Which kind of type.
    #[prost(oneof = "type_proto::Value", tags = "1, 4, 5, 7, 8, 9")]
    pub value: Option<type_proto::Value>,
    /// Denotation.
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested messages of [`TypeProto`].
pub mod type_proto {
    use super::TensorShapeProto;

    /// `TypeProto.Tensor` (also the layout of `SparseTensor`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// Element type ([`super::data_type`]).
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        /// Shape; absent means unknown rank.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    /// A type qc does not support; declared only to be recognized (its fields are skipped).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Unsupported {}

    /// The `TypeProto.value` oneof.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// A dense tensor.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
        /// A sequence (unsupported).
        #[prost(message, tag = "4")]
        SequenceType(Unsupported),
        /// A map (unsupported).
        #[prost(message, tag = "5")]
        MapType(Unsupported),
        /// An opaque type (unsupported).
        #[prost(message, tag = "7")]
        OpaqueType(Unsupported),
        /// A sparse tensor (unsupported).
        #[prost(message, tag = "8")]
        SparseTensorType(Unsupported),
        /// An optional (unsupported).
        #[prost(message, tag = "9")]
        OptionalType(Unsupported),
    }
}

/// A tensor shape: one entry per axis.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Axes.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One axis.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// Size or symbol; absent means unknown.
        #[prost(oneof = "DimValue", tags = "1, 2")]
        pub value: Option<DimValue>,
        /// Denotation.
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// The `Dimension.value` oneof.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum DimValue {
        /// A fixed size.
        #[prost(int64, tag = "1")]
        DimValue(i64),
        /// A symbolic size.
        #[prost(string, tag = "2")]
        DimParam(String),
    }
}

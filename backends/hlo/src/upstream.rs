//! Export to upstream MLIR: the qc IR after the pipeline as a module of MLIR's own dialects (`func`,
//! `arith`, `math`, `tensor`, `linalg`), for IREE or `mlir-opt` users to take further.
//!
//! # Shapes
//! The function is first specialized to static shapes with [`crate::specialize`] (the `--shape`
//! bindings of the StableHLO path); every tensor in the export is static.
//!
//! # Ops
//! - Elementwise nn ops are `linalg.generic` ops with `parallel` iterators whose bodies hold `arith` and
//!   `math` ops (`math.erf`, `math.tanh`, `math.sqrt`, `math.exp`, ...). NumPy broadcasting is in the
//!   indexing maps: a broadcast dimension of an operand is the constant `0` in its map.
//! - Matrix products (`nn.matmul`, `nn.gemm`, `quant.matmul`) are `linalg.generic` contractions
//!   (`reduction` iterator over K, batch dimensions broadcast in the maps), the form IREE's
//!   contraction matchers recognize; reductions, softmax and layer normalization are `linalg.generic`
//!   reductions into a splat `arith.constant` init, followed by elementwise generics.
//! - Gather and gather_elements are `linalg.generic` ops over the indices whose body reads the table
//!   with `tensor.extract` (negative indices wrap); so are tile and constant pad (over the result,
//!   `linalg.index` giving the coordinates). Reshapes are `tensor.collapse_shape` /
//!   `tensor.expand_shape`, slices `tensor.extract_slice`, concatenation `tensor.insert_slice` into a
//!   `tensor.empty`, transposes generics with a permuted input map, cum_sum a generic with a second,
//!   reduction loop over the axis.
//! - Convolutions, transposed convolutions, pooling and `lrn` (NCHW..., explicit pads) are a gather
//!   generic laying the input out as the windows read it (padding; the stride's zeros of a transposed
//!   convolution) and one `linalg.generic` with affine window maps (`o * stride + k * dilation`),
//!   grouped channels split into `[G, C/G]` views ([`window`]).
//! - ONNX's linear quantization (`quant.quantize_linear`, `dequantize_linear`,
//!   `dynamic_quantize_linear`) of integer codes, with scales per tensor, per axis or in blocks (maps
//!   with `floordiv`), and `quant.hadamard` (f64 butterfly stages) are bit-exact with the
//!   interpreter; so is `shrink`; `nll_loss` gathers with `tensor.extract` ([`qdq`]).
//! - Constants are `arith.constant dense<...>` (large ones print as MLIR's hex form).
//!
//! Integers are signless (`iN`): an unsigned qc tensor (`uiN`) becomes `iN` and its ops use the unsigned
//! arith variants (`divui`, `uitofp`, `extui`, `cmpi ult`, ...). Booleans are `i1`.
//!
//! # Quantized weights
//! A quantized constant (a weight after `quantize{w=...}`) is written as three parts and an explicit
//! dequantization:
//! - the codes, one element per code, as an `arith.constant` whose element type is MLIR's builtin
//!   low-precision type: `f4E2M1FN` (e2m1), `f6E2M3FN`, `f6E3M2FN`, `f8E4M3FN`, `f8E5M2` (and the other
//!   builtin fp8 variants), `iN` for signed integer codes, `iN` read as unsigned (`arith.uitofp`) for
//!   unsigned codes, `i8` for MX int8 (value k * 2^-6). A minifloat MLIR has no type for (a custom bias
//!   or policy) is stored as its `iN` bit patterns plus a `tensor<2^N x f32>` table of the values each
//!   code decodes to, read with `tensor.extract`. Packing (`lo_first`, `ggml`) is undone: MLIR's dense
//!   attributes hold one sub-byte element per byte.
//! - the block scales, one per block, in the scales' own type: `f8E4M3FN` for NVFP4's ue4m3 (sign bit
//!   cleared), `f8E8M0FNU` for MX's e8m0, `f16` / `bf16` / `f32`; the second-level tensor scale of
//!   two-level formats as a `tensor<f32>`; zero points of asymmetric formats as `iN` (one per block).
//! - the dequantization: the codes are viewed by blocks (`tensor.expand_shape`, e.g. `NxK` ->
//!   `Nx(K/16)x16` for 16-element groups) and one `linalg.generic` computes, per element,
//!   `value(code) * scale` with `value` = `arith.extf` (minifloats), `arith.sitofp` / `uitofp`
//!   (integers, `(q - z)` with a zero point) and `scale = arith.extf(block scale) * tensor scale`
//!   (`/ tensor scale` for the reciprocal storage); the f32 result is collapsed back to the weight's
//!   shape and feeds the consumer (`quant.matmul`, `quant.dequantize`). These are the operations of
//!   `qc_quant::tensor::dequantize`.
//!
//! Not exported (a diagnostic naming the op and its location, exit code 2 from `qc compile --emit
//! mlir`): activation quantization (`quant.quantize`, and `quant.matmul` of a quantized activation;
//! except as kernel calls under [`ExportOptions::quantize_calls`]), ONNX linear quantization of
//! minifloat codes or with minifloat scales, window ops on integer tensors, and dense constants of
//! raw minifloat types.
//!
//! # Taking it further
//! The text parses in `mlir-opt` (LLVM 22) and bufferizes with
//! `--one-shot-bufferize=bufferize-function-boundaries`. On a CPU, `--convert-elementwise-to-linalg
//! --one-shot-bufferize=bufferize-function-boundaries --convert-linalg-to-loops
//! --expand-strided-metadata --lower-affine --arith-expand="include-f4e2m1=true include-f8e8m0=true"
//! --convert-math-to-llvm --convert-math-to-libm --convert-scf-to-cf --convert-to-llvm
//! --reconcile-unrealized-casts` lowers float modules and those with integer, f4E2M1FN and f8E8M0FNU
//! weights (int4/int8 formats, MXFP4) to the LLVM dialect, and mlir-runner runs them (the tests compare
//! the results with the interpreter). Upstream MLIR has no CPU lowering of `arith.extf` from
//! f8E4M3FN, f8E5M2 or the f6 types (NVFP4's block scales, FP8, MXFP6, MXFP8): those modules verify
//! and bufferize, and need a target that knows the types (a GPU, or a pass of the user's) to go
//! further.
//!
//! # Kernel calls and constant arguments (`export_module_with`)
//! A backend that has its own kernels can ask ([`ExportOptions`]) for matrix products (and activation
//! quantization, [`KernelOp::FakeQuant`]) to be left to external functions ([`KernelCall`],
//! [`KernelOp`]): `func.call`s on memrefs (`bufferization.to_buffer` of the inputs, a fresh aligned
//! `memref.alloc` for the output, `bufferization.to_tensor` of it), and for large constants to be
//! passed as trailing read-only arguments of the function ([`ConstantArg`],
//! `bufferization.writable = false`) instead of being printed into the module. The CPU target
//! (compiler/src/cmd/cpu.rs, cpu_kernels.rs) uses both; `--emit mlir` uses neither.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use melior::dialect::DialectRegistry;
use melior::ir::attribute::AttributeLike;
use melior::ir::attribute::{DenseElementsAttribute, StringAttribute, TypeAttribute};
use melior::ir::operation::{OperationBuilder, OperationLike};
use melior::ir::r#type::{FunctionType, RankedTensorType};
use melior::ir::{
    Attribute, Block, BlockLike, Identifier, Location, Module, Region, RegionLike, Type, Value,
};
use melior::utility::register_all_dialects;
use melior::Context;

use qc_ir::attr::{Attribute as QAttr, DenseData};
use qc_ir::module::{Func, Op};
use qc_ir::ops::QcOp;
use qc_ir::quant::{Encoding, QuantType, ScaleType, Scheme, TensorScale};
use qc_ir::resource::Blob;
use qc_ir::types::{ElemType, TensorType};
use qc_ir::Diagnostic;
use qc_nn::{norm_axis, NnOp};
use qc_quant::codec::Codec;
use qc_quant::ops::QuantOp;
use qc_quant::tensor::Scales;

use crate::specialize::{specialize, ShapeBindings};
use crate::Error;

type R<T> = Result<T, String>;

mod qdq;
mod window;

/// An MLIR context with every upstream dialect registered and loaded, and its diagnostics.
struct UpCtx {
    context: Context,
    diagnostics: Rc<RefCell<Vec<String>>>,
}

impl UpCtx {
    fn new() -> Self {
        let context = Context::new();
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        context.append_dialect_registry(&registry);
        context.load_all_available_dialects();
        let diagnostics = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&diagnostics);
        context.attach_diagnostic_handler(move |d| {
            sink.borrow_mut().push(format!("{}: {}", d.location(), d));
            true
        });
        UpCtx {
            context,
            diagnostics,
        }
    }

    fn take_diagnostics(&self) -> String {
        std::mem::take(&mut *self.diagnostics.borrow_mut()).join("\n")
    }

    fn verified_text(&self, module: &Module) -> Result<String, Error> {
        if module.as_operation().verify() {
            Ok(module.as_operation().to_string())
        } else {
            Err(Error::Rejected(self.take_diagnostics()))
        }
    }
}

/// Parses `text` as an MLIR module of upstream dialects (no unregistered ops), verifies it with MLIR's
/// verifier and returns it re-printed. Errors are [`Error::Rejected`] with MLIR's diagnostics. Thread
/// safe: each call has its own context.
pub fn verify_upstream_text(text: &str) -> Result<String, Error> {
    let up = UpCtx::new();
    let module =
        Module::parse(&up.context, text).ok_or_else(|| Error::Rejected(up.take_diagnostics()))?;
    up.verified_text(&module)
}

/// Exports function `func` of `m` as a module of upstream MLIR dialects (see the module documentation),
/// after specializing its shapes with `bindings`. The module holds one public `func.func` with the
/// function's name; quantized results are returned dequantized to f32. The text is MLIR's print of a
/// module its verifier accepted, and deterministic. An op that cannot be exported is a diagnostic at the
/// op.
pub fn export_module(
    m: &qc_ir::Module,
    func: &str,
    bindings: &ShapeBindings,
) -> Result<String, Diagnostic> {
    export_module_with(m, func, bindings, &ExportOptions::default()).map(|x| x.text)
}

/// Constants of at least this many bytes become function arguments under
/// [`ExportOptions::constant_args`].
pub const CONSTANT_ARG_MIN_BYTES: usize = 4096;

/// What [`export_module_with`] made.
#[derive(Clone, Debug)]
pub struct Exported {
    /// The module's text.
    pub text: String,
    /// The kernel calls, in program order.
    pub calls: Vec<KernelCall>,
    /// The constants passed as arguments, in the order of the function's trailing arguments.
    pub constant_args: Vec<ConstantArg>,
}

/// A constant passed to the function as a trailing argument `memref<SHAPExTYPE>` (read only, row
/// major) rather than written into the module ([`ExportOptions::constant_args`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ConstantArg {
    /// The resource holding its bytes (little-endian elements, row major).
    pub resource: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its element type as MLIR spells it (`f32`, `f64`, `f16`, `bf16`, `i32`, `i64`).
    pub elem: String,
}

/// Which matrix products [`export_module_with`] leaves to external kernels.
#[derive(Default)]
pub struct ExportOptions<'a> {
    /// When set, every `quant.matmul {transpose_b}` whose weight is a quantized constant (`[N, K]`) of
    /// a format for which this returns true becomes a *kernel call* (see [`KernelCall`]) instead of a
    /// contraction over the dequantized weight; a quantized constant all of whose uses are kernel calls
    /// is not exported at all.
    pub kernel_calls: Option<&'a dyn Fn(&QuantType) -> bool>,
    /// When true, every f32 `nn.matmul` whose operands are `[..., M, K] x [K, N]` or `[B..., M, K] x
    /// [B..., K, N]` (the same batch dimensions) becomes a kernel call of kind [`KernelOp::Sgemm`];
    /// so does the product of every f32 `nn.conv` / `nn.conv_transpose` with at least 4 output
    /// channels per group, after im2col (one matrix per batch element and group).
    pub float_matmul_calls: bool,
    /// When true, every resource-backed constant of a plain type (`f32`, `f64`, `f16`, `bf16`, `i32`,
    /// `i64`) of at least [`CONSTANT_ARG_MIN_BYTES`] bytes becomes a trailing argument of the function
    /// (marked `bufferization.writable = false`), listed in [`Exported::constant_args`], instead of an
    /// `arith.constant` in the text.
    pub constant_args: bool,
    /// When set, every `quant.quantize` of a float tensor to a format for which this returns true
    /// becomes a kernel call of kind [`KernelOp::FakeQuant`] (the values quantized and dequantized,
    /// in f32), whose result stands for the quantized tensor: `quant.dequantize` of it is that result
    /// and `quant.matmul` takes it as its (dequantized) activation, for kernel calls as for
    /// contractions. The format must be per tensor, or have blocks (groups) along the last axis whose
    /// size divides the last dimension: then the blocks are consecutive runs of the flattened tensor.
    pub quantize_calls: Option<&'a dyn Fn(&QuantType) -> bool>,
    /// When set (with `kernel_calls` and `quantize_calls`), a `quant.matmul` kernel call whose
    /// activation is a `quant.quantize` (with a static `amax`) to an activation format for which this
    /// returns true, given (weight format, activation format), takes the *unquantized* f32
    /// activations and the quantization ([`ActQuant`]): the kernel quantizes them itself. Other uses
    /// of the quantized tensor keep the [`KernelOp::FakeQuant`] call, which is left out when there are
    /// none. Such a product is a kernel call even when `kernel_calls` rejects its weight format (a
    /// kernel may read a weight format only together with the activations it quantizes).
    pub act_quant_calls: Option<&'a ActQuantFilter>,
    /// When true, quantized constants whose codes or scales have a builtin low-precision float type
    /// (f8E4M3FN, f8E5M2, f6E2M3FN, f6E3M2FN, the ue4m3 scales of NVFP4) are exported as unsigned
    /// integer codes decoded through a table of their f32 values (`tensor.extract` of a constant),
    /// rather than as builtin floats and `arith.extf`, which LLVM's NVPTX lowering of MLIR 22 cannot
    /// translate. The values are the same (the tables are qc_quant's codecs').
    pub decode_tables: bool,
    /// When true, f32 softmax and log-softmax over the last axis and f32 layer normalization over
    /// the last axis alone (axis = rank - 1, scale and bias of `[len]` or broadcast to it from a
    /// shape of ones, or from `[..., 1, len]`) become kernel calls of kinds [`KernelOp::Softmax`]
    /// and [`KernelOp::LayerNorm`], on the input viewed as `[rows, len]` rows. Other axes, element
    /// types, empty tensors and other scale shapes keep the `linalg` ops.
    pub row_kernel_calls: bool,
}

/// The filter of [`ExportOptions::act_quant_calls`]: (weight format, activation format, reduction
/// length K) -> whether the kernel quantizes the activations itself.
pub type ActQuantFilter = dyn Fn(&QuantType, &QuantType, u64) -> bool;

/// The reduction length K of a `[N, K]` weight (0 when not static).
fn weight_k(w: &qc_ir::TensorType) -> u64 {
    w.dims
        .get(1)
        .and_then(qc_ir::types::Dim::as_static)
        .unwrap_or(0)
}

/// The activation quantization that a [`KernelOp::QuantMatmul`] call applies to its `x` itself
/// ([`ExportOptions::act_quant_calls`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ActQuant {
    /// The activation format (of the `quant.quantize`).
    pub format: QuantType,
    /// Its static maximum |x| (the op's `amax`).
    pub amax: f32,
}

/// What a [`KernelCall`] computes.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelOp {
    /// `y[M, N] = x[M, K] W^T` for the quantized constant `W[N, K]`:
    ///
    /// ```mlir
    /// func.func private @SYMBOL(memref<MxKxf32>, memref<MxNxf32>)   // x, y
    /// ```
    ///
    /// `x` has its leading dimensions collapsed into M (row major); `y` is a fresh, 64-byte aligned
    /// buffer to fill.
    QuantMatmul {
        /// The resource holding the weight's blob (`qc_quant::blob` bytes).
        resource: String,
        /// The weight's format.
        format: QuantType,
        /// When set, `x` holds the unquantized activations and `y = dequant(quantize(x)) W^T` with this
        /// quantization ([`ExportOptions::act_quant_calls`]).
        act_quant: Option<ActQuant>,
    },
    /// `c[b] = a[b] x b[b]` (f32) for every `b < batch`:
    ///
    /// ```mlir
    /// func.func private @SYMBOL(memref<BxMxKxf32>, memref<B'xKxNxf32>, memref<BxMxNxf32>)  // a, b, c
    /// ```
    ///
    /// with `B' = 1` (one `b` shared by every batch) when `shared_b`, else `B' = B`; `c` is a fresh,
    /// 64-byte aligned buffer to fill.
    Sgemm {
        /// B.
        batch: u64,
        /// Whether one right-hand matrix serves every batch.
        shared_b: bool,
    },
    /// `y = dequantize(quantize(x))` of a `quant.quantize` (`qc_quant::tensor::quantize` with its
    /// `amax` as the static tensor maximum, then `qc_quant::tensor::dequantize`), all in f32:
    ///
    /// ```mlir
    /// func.func private @SYMBOL(memref<Nxf32>, memref<Nxf32>)   // x, y
    /// ```
    ///
    /// with the tensor flattened row major (N = M = its element count; K = its last dimension, the
    /// axis of the format's blocks if it has any); `y` is a fresh, 64-byte aligned buffer to fill.
    FakeQuant {
        /// The activation format.
        format: QuantType,
        /// The op's `amax` attribute (the calibrated static maximum |x|), if any.
        amax: Option<f32>,
    },
    /// Softmax (or log-softmax) of each row of `x[M, N]` (`nn.softmax` / `nn.log_softmax` over the
    /// last axis, the leading dimensions collapsed into M):
    ///
    /// ```mlir
    /// func.func private @SYMBOL(memref<MxNxf32>, memref<MxNxf32>)   // x, y
    /// ```
    ///
    /// `y[r] = exp(x[r] - max x[r]) / sum exp(x[r] - max x[r])`, or for `log`, `(x[r] - max x[r]) -
    /// log(sum ...)`; `y` is a fresh, 64-byte aligned buffer to fill (K = N).
    Softmax {
        /// Log-softmax.
        log: bool,
    },
    /// Layer normalization of each row of `x[M, N]` (`nn.layer_norm` over the last axis):
    ///
    /// ```mlir
    /// func.func private @SYMBOL(memref<MxNxf32>, memref<Nxf32>, memref<Nxf32>, memref<MxNxf32>)
    /// // x, scale, bias, y
    /// ```
    ///
    /// `y[r] = (x[r] - mean) / sqrt(var + epsilon) * scale + bias` with the row's mean and (biased)
    /// variance; `y` is a fresh, 64-byte aligned buffer to fill (K = N).
    LayerNorm {
        /// The op's `epsilon`.
        epsilon: f32,
    },
}

/// A matrix product (or an activation quantization) exported as a call of an external function (see
/// [`KernelOp`] for the signatures).
/// With `--llvm-request-c-wrappers` the lowered code calls `_mlir_ciface_SYMBOL(...)` with pointers to
/// MLIR's memref descriptors (allocated pointer, aligned pointer, offset, sizes[rank], strides[rank]).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCall {
    /// The external function's name: `qc_matmul_<i>`, `qc_sgemm_<i>`, `qc_fquant_<i>`,
    /// `qc_softmax_<i>`, `qc_log_softmax_<i>` or `qc_layernorm_<i>`, `i` counting calls in program
    /// order.
    pub symbol: String,
    /// What it computes.
    pub op: KernelOp,
    /// Rows of the activation matrix.
    pub m: u64,
    /// Output features (weight rows).
    pub n: u64,
    /// Reduction length (weight columns).
    pub k: u64,
    /// Location of the `quant.matmul` (`quant.quantize` for [`KernelOp::FakeQuant`]).
    pub loc: qc_ir::Location,
}

impl KernelCall {
    /// The MLIR types of the external function's arguments.
    pub fn memref_types(&self) -> Vec<String> {
        let (m, n, k) = (self.m, self.n, self.k);
        match self.op {
            KernelOp::QuantMatmul { .. } => {
                vec![
                    format!("memref<{m}x{k}xf32>"),
                    format!("memref<{m}x{n}xf32>"),
                ]
            }
            KernelOp::FakeQuant { .. } => {
                vec![format!("memref<{m}xf32>"), format!("memref<{m}xf32>")]
            }
            KernelOp::Sgemm { batch, shared_b } => vec![
                format!("memref<{batch}x{m}x{k}xf32>"),
                format!("memref<{}x{k}x{n}xf32>", if shared_b { 1 } else { batch }),
                format!("memref<{batch}x{m}x{n}xf32>"),
            ],
            KernelOp::Softmax { .. } => vec![
                format!("memref<{m}x{n}xf32>"),
                format!("memref<{m}x{n}xf32>"),
            ],
            KernelOp::LayerNorm { .. } => vec![
                format!("memref<{m}x{n}xf32>"),
                format!("memref<{n}xf32>"),
                format!("memref<{n}xf32>"),
                format!("memref<{m}x{n}xf32>"),
            ],
        }
    }
}

/// Like [`export_module`], with kernel calls and constant arguments per `opts`.
pub fn export_module_with(
    m: &qc_ir::Module,
    func: &str,
    bindings: &ShapeBindings,
    opts: &ExportOptions,
) -> Result<Exported, Diagnostic> {
    let s = specialize(m, func, bindings)?;
    let f = &s.funcs[0];
    let up = UpCtx::new();
    let context = &up.context;
    let location = Location::unknown(context);
    let module = Module::new(location);
    let block = Block::new(&[]);
    let arg_err = |i: usize, e: String| {
        Diagnostic::error(f.loc.clone(), format!("argument {i} of @{}: {e}", f.name))
    };
    let calls;
    let constant_args;
    {
        let mut u = U::new(context, &block, location);
        u.kernel_calls = opts.kernel_calls;
        u.float_calls = opts.float_matmul_calls;
        u.constant_args = opts.constant_args;
        u.quantize_calls = opts.quantize_calls;
        u.act_quant_calls = opts.act_quant_calls;
        u.decode_tables = opts.decode_tables;
        u.row_calls = opts.row_kernel_calls;
        let mut args = Vec::new();
        let mut arg_types = Vec::new();
        for (i, &a) in f.args.iter().enumerate() {
            let (shape, e) = emitted(f.ty(a)).map_err(|e| arg_err(i, e))?;
            let ty = u.ty(&shape, e).map_err(|e| arg_err(i, e))?;
            let v = block.add_argument(ty, location);
            arg_types.push(ty);
            args.push(u.wrap(v, &shape, e));
        }
        let n_inputs = arg_types.len();
        let results = export_func(&u, &s, f, args)?;
        calls = u.calls.take();
        let (consts, const_types): (Vec<ConstantArg>, Vec<Type>) =
            u.const_args.take().into_iter().unzip();
        constant_args = consts;
        arg_types.extend(const_types);
        let arg_attrs = format!(
            "[{}]",
            (0..arg_types.len())
                .map(|i| if i < n_inputs {
                    "{}"
                } else {
                    "{bufferization.writable = false}"
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        let result_types: Vec<Type> = results
            .iter()
            .map(|(s, e)| u.ty(s, *e))
            .collect::<Result<_, _>>()
            .map_err(|e| Diagnostic::error(f.ret_loc.clone(), e))?;
        let region = Region::new();
        region.append_block(block);
        let function_type = FunctionType::new(context, &arg_types, &result_types);
        for c in &calls {
            let decl: Vec<Type> = c
                .memref_types()
                .iter()
                .map(|t| parse_type(context, t))
                .collect::<R<_>>()
                .map_err(|e| Diagnostic::error(c.loc.clone(), format!("internal error: {e}")))?;
            module.body().append_operation(melior::dialect::func::func(
                context,
                StringAttribute::new(context, &c.symbol),
                TypeAttribute::new(FunctionType::new(context, &decl, &[]).into()),
                Region::new(),
                &[(
                    Identifier::new(context, "sym_visibility"),
                    StringAttribute::new(context, "private").into(),
                )],
                location,
            ));
        }
        let attrs = if constant_args.is_empty() {
            Vec::new()
        } else {
            vec![(
                Identifier::new(context, "arg_attrs"),
                parse_attr(context, &arg_attrs).map_err(|e| {
                    Diagnostic::error(f.loc.clone(), format!("internal error: {e}"))
                })?,
            )]
        };
        module.body().append_operation(melior::dialect::func::func(
            context,
            StringAttribute::new(context, &f.name),
            TypeAttribute::new(function_type.into()),
            region,
            &attrs,
            location,
        ));
    }
    let text = up.verified_text(&module).map_err(|e| {
        Diagnostic::error(
            f.loc.clone(),
            format!(
                "internal error: the upstream MLIR module of @{} does not verify: {e}",
                f.name
            ),
        )
    })?;
    Ok(Exported {
        text,
        calls,
        constant_args,
    })
}

// ---------------------------------------------------------------------------------------------------
// Element types and the tensor builder.

/// Element types of exported tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum El {
    F16,
    BF16,
    F32,
    F64,
    /// Signless integer with signed semantics (`i1` for booleans).
    I(u8),
    /// Signless integer with unsigned semantics.
    U(u8),
    /// A builtin low-precision float (`f8E4M3FN`, ...).
    Mf(&'static str),
}

impl El {
    fn mlir(self) -> String {
        match self {
            El::F16 => "f16".into(),
            El::BF16 => "bf16".into(),
            El::F32 => "f32".into(),
            El::F64 => "f64".into(),
            El::I(n) | El::U(n) => format!("i{n}"),
            El::Mf(s) => s.into(),
        }
    }

    fn is_float(self) -> bool {
        matches!(self, El::F16 | El::BF16 | El::F32 | El::F64 | El::Mf(_))
    }

    fn bits(self) -> u32 {
        match self {
            El::F16 | El::BF16 => 16,
            El::F32 => 32,
            El::F64 => 64,
            El::I(n) | El::U(n) => n as u32,
            El::Mf(s) => {
                if s.starts_with("f4") {
                    4
                } else if s.starts_with("f6") {
                    6
                } else {
                    8
                }
            }
        }
    }

    fn of(e: &ElemType) -> R<El> {
        Ok(match e {
            ElemType::F16 => El::F16,
            ElemType::BF16 => El::BF16,
            ElemType::F32 => El::F32,
            ElemType::F64 => El::F64,
            ElemType::Int { bits, unsigned } => {
                if *unsigned && *bits > 1 {
                    El::U(*bits)
                } else {
                    El::I(*bits)
                }
            }
            ElemType::Raw(enc) => El::Mf(
                builtin_float(*enc)
                    .ok_or_else(|| format!("tensors of {e} elements have no MLIR builtin type"))?,
            ),
            ElemType::Quant(q) => {
                return Err(format!("a quantized tensor of {q} is used as plain"))
            }
        })
    }
}

/// MLIR's builtin type for a minifloat encoding, if it has one.
fn builtin_float(enc: Encoding) -> Option<&'static str> {
    const NAMES: &[&str] = &[
        "f4E2M1FN",
        "f6E2M3FN",
        "f6E3M2FN",
        "f8E4M3FN",
        "f8E4M3FNUZ",
        "f8E5M2",
        "f8E5M2FNUZ",
        "f8E4M3",
        "f8E3M4",
        "f8E8M0FNU",
    ];
    let name = ElemType::Raw(enc).to_string();
    NAMES.iter().copied().find(|n| *n == name)
}

/// The little-endian bytes of one element of `e` holding `f` (floats) or `i` (integers, wrapped).
fn scalar_bytes(e: El, f: f64, i: i64) -> R<Vec<u8>> {
    Ok(match e {
        El::F16 => half::f16::from_f64(f).to_le_bytes().to_vec(),
        El::BF16 => half::bf16::from_f64(f).to_le_bytes().to_vec(),
        El::F32 => (f as f32).to_le_bytes().to_vec(),
        El::F64 => f.to_le_bytes().to_vec(),
        El::I(n) | El::U(n) if n <= 8 => vec![i as u8],
        El::I(n) | El::U(n) => i.to_le_bytes()[..(n as usize).div_ceil(8)].to_vec(),
        El::Mf(s) => return Err(format!("constants of {s} are only written from codes")),
    })
}

/// A float or integer attribute value of scalar type `e` (floats by their bits, so exactly).
fn scalar_attr(e: El, x: f64) -> String {
    match e {
        El::F16 => format!("0x{:04X} : f16", half::f16::from_f64(x).to_bits()),
        El::BF16 => format!("0x{:04X} : bf16", half::bf16::from_f64(x).to_bits()),
        El::F32 => format!("0x{:08X} : f32", (x as f32).to_bits()),
        El::F64 => format!("0x{:016X} : f64", x.to_bits()),
        El::I(1) => format!("{}", (x != 0.0) as i64),
        El::I(n) | El::U(n) => format!("{} : i{n}", x as i64),
        El::Mf(s) => format!("0.0 : {s}"),
    }
}

fn dims_text(s: &[u64]) -> String {
    s.iter().map(|d| format!("{d}x")).collect()
}

fn arr(v: &[i64]) -> String {
    if v.is_empty() {
        "array<i64>".into()
    } else {
        let items: Vec<String> = v.iter().map(|x| x.to_string()).collect();
        format!("array<i64: {}>", items.join(", "))
    }
}

/// An exported tensor value with its static shape and element type.
#[derive(Clone, Copy)]
struct V<'c, 'b> {
    v: Value<'c, 'b>,
    e: El,
    shape: usize,
}

/// The builder of the function body: appends ops to its block.
struct U<'c, 'b> {
    ctx: &'c Context,
    block: &'b Block<'c>,
    loc: Location<'c>,
    shapes: RefCell<Vec<Vec<u64>>>,
    /// [`ExportOptions::kernel_calls`].
    kernel_calls: Option<&'b dyn Fn(&QuantType) -> bool>,
    /// [`ExportOptions::float_matmul_calls`].
    float_calls: bool,
    /// [`ExportOptions::constant_args`].
    constant_args: bool,
    /// [`ExportOptions::quantize_calls`].
    quantize_calls: Option<&'b dyn Fn(&QuantType) -> bool>,
    /// [`ExportOptions::act_quant_calls`].
    act_quant_calls: Option<&'b ActQuantFilter>,
    /// The f32 inputs of the `quant.quantize` ops exported as fake-quant calls, by result value.
    quantize_inputs: RefCell<Vec<(qc_ir::Value, V<'c, 'b>)>>,
    /// [`ExportOptions::decode_tables`].
    decode_tables: bool,
    /// [`ExportOptions::row_kernel_calls`].
    row_calls: bool,
    /// The constants made arguments so far, with their MLIR types.
    const_args: RefCell<Vec<(ConstantArg, Type<'c>)>>,
    /// The kernel calls made so far.
    calls: RefCell<Vec<KernelCall>>,
}

/// The builder of a `linalg.generic` body: values are handles (indices into `vals`).
struct Bd<'c, 'x> {
    ctx: &'c Context,
    blk: &'x Block<'c>,
    loc: Location<'c>,
    vals: Vec<Value<'c, 'x>>,
}

/// A value inside a generic's body.
type H = usize;

fn parse_attr<'c>(ctx: &'c Context, s: &str) -> R<Attribute<'c>> {
    Attribute::parse(ctx, s).ok_or_else(|| format!("MLIR cannot parse the attribute `{s}`"))
}

fn parse_type<'c>(ctx: &'c Context, s: &str) -> R<Type<'c>> {
    Type::parse(ctx, s).ok_or_else(|| format!("MLIR does not know the type {s}"))
}

impl<'c, 'x> Bd<'c, 'x> {
    fn op(&mut self, name: &str, args: &[H], attrs: &[(&str, String)], res: &str) -> R<H> {
        let mut named = Vec::new();
        for (k, v) in attrs {
            named.push((Identifier::new(self.ctx, k), parse_attr(self.ctx, v)?));
        }
        let vals: Vec<Value> = args.iter().map(|&h| self.vals[h]).collect();
        let mut b = OperationBuilder::new(name, self.loc)
            .add_operands(&vals)
            .add_attributes(&named);
        if !res.is_empty() {
            b = b.add_results(&[parse_type(self.ctx, res)?]);
        }
        let op = b
            .build()
            .map_err(|e| format!("building {name} failed: {e}"))?;
        let op = self.blk.append_operation(op);
        if res.is_empty() {
            return Ok(usize::MAX);
        }
        let v: Value = op.result(0).map_err(|e| e.to_string())?.into();
        self.vals.push(v);
        Ok(self.vals.len() - 1)
    }

    /// A scalar constant of `e`.
    fn cst(&mut self, e: El, x: f64) -> R<H> {
        let attr = if e == El::I(1) {
            (if x != 0.0 { "true" } else { "false" }).to_string()
        } else {
            scalar_attr(e, x)
        };
        self.op("arith.constant", &[], &[("value", attr)], &e.mlir())
    }

    fn index(&mut self, n: i64) -> R<H> {
        self.op(
            "arith.constant",
            &[],
            &[("value", format!("{n} : index"))],
            "index",
        )
    }

    fn bin(&mut self, k: Bin, e: El, a: H, b: H) -> R<H> {
        let name = match (k, e.is_float(), matches!(e, El::U(_))) {
            (Bin::Add, true, _) => "arith.addf",
            (Bin::Add, false, _) => "arith.addi",
            (Bin::Sub, true, _) => "arith.subf",
            (Bin::Sub, false, _) => "arith.subi",
            (Bin::Mul, true, _) => "arith.mulf",
            (Bin::Mul, false, _) => "arith.muli",
            (Bin::Div, true, _) => "arith.divf",
            (Bin::Div, false, false) => "arith.divsi",
            (Bin::Div, false, true) => "arith.divui",
            (Bin::Max, true, _) => "arith.maximumf",
            (Bin::Max, false, false) => "arith.maxsi",
            (Bin::Max, false, true) => "arith.maxui",
            (Bin::Min, true, _) => "arith.minimumf",
            (Bin::Min, false, false) => "arith.minsi",
            (Bin::Min, false, true) => "arith.minui",
            (Bin::And, _, _) => "arith.andi",
            (Bin::Or, _, _) => "arith.ori",
            (Bin::Xor, _, _) => "arith.xori",
            (Bin::Pow, true, _) => "math.powf",
            (Bin::Pow, false, _) => "math.ipowi",
        };
        self.op(name, &[a, b], &[], &e.mlir())
    }

    fn binc(&mut self, k: Bin, e: El, a: H, x: f64) -> R<H> {
        let c = self.cst(e, x)?;
        self.bin(k, e, a, c)
    }

    fn un(&mut self, name: &str, e: El, a: H) -> R<H> {
        self.op(name, &[a], &[], &e.mlir())
    }

    fn cmp(&mut self, c: Cmp, e: El, a: H, b: H) -> R<H> {
        if e.is_float() {
            // Ordered comparisons (false with NaN), except != which is unordered (true with NaN).
            let p = match c {
                Cmp::Eq => 1,
                Cmp::Gt => 2,
                Cmp::Ge => 3,
                Cmp::Lt => 4,
                Cmp::Le => 5,
                Cmp::Ne => 13,
            };
            self.op(
                "arith.cmpf",
                &[a, b],
                &[("predicate", format!("{p} : i64"))],
                "i1",
            )
        } else {
            let u = matches!(e, El::U(_)) || e == El::I(1);
            let p = match (c, u) {
                (Cmp::Eq, _) => 0,
                (Cmp::Ne, _) => 1,
                (Cmp::Lt, false) => 2,
                (Cmp::Le, false) => 3,
                (Cmp::Gt, false) => 4,
                (Cmp::Ge, false) => 5,
                (Cmp::Lt, true) => 6,
                (Cmp::Le, true) => 7,
                (Cmp::Gt, true) => 8,
                (Cmp::Ge, true) => 9,
            };
            self.op(
                "arith.cmpi",
                &[a, b],
                &[("predicate", format!("{p} : i64"))],
                "i1",
            )
        }
    }

    fn select(&mut self, e: El, c: H, a: H, b: H) -> R<H> {
        self.op("arith.select", &[c, a, b], &[], &e.mlir())
    }

    /// Converts a scalar from `from` to `to` (floats to integers truncate toward zero; nonzero is true).
    fn cast(&mut self, from: El, to: El, a: H) -> R<H> {
        if from == to || (from.mlir() == to.mlir() && from.is_float() == to.is_float()) {
            return Ok(a);
        }
        if to == El::I(1) {
            let z = self.cst(from, 0.0)?;
            return self.cmp(Cmp::Ne, from, a, z);
        }
        let (fb, tb) = (from.bits(), to.bits());
        let name = match (from.is_float(), to.is_float()) {
            (true, true) if fb < tb => "arith.extf",
            (true, true) if fb == tb => {
                let f = self.cast(from, El::F32, a)?;
                return self.cast(El::F32, to, f);
            }
            (true, true) => "arith.truncf",
            (false, true) if matches!(from, El::U(_)) || from == El::I(1) => "arith.uitofp",
            (false, true) => "arith.sitofp",
            (true, false) if matches!(to, El::U(_)) => "arith.fptoui",
            (true, false) => "arith.fptosi",
            (false, false) if fb < tb && (matches!(from, El::U(_)) || from == El::I(1)) => {
                "arith.extui"
            }
            (false, false) if fb < tb => "arith.extsi",
            (false, false) => "arith.trunci",
        };
        self.un(name, to, a)
    }

    /// `linalg.index` of loop `d`.
    fn loop_index(&mut self, d: usize) -> R<H> {
        self.op(
            "linalg.index",
            &[],
            &[("dim", format!("{d} : i64"))],
            "index",
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    And,
    Or,
    Xor,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One input of a generic: the tensor and its indexing map's results (`d0`, `0`, `d1 floordiv 4`, ...).
type In<'c, 'b> = (V<'c, 'b>, Vec<String>);

fn ids(dims: impl IntoIterator<Item = usize>) -> Vec<String> {
    dims.into_iter().map(|d| format!("d{d}")).collect()
}

impl<'c, 'b> U<'c, 'b> {
    fn new(ctx: &'c Context, block: &'b Block<'c>, loc: Location<'c>) -> Self {
        U {
            ctx,
            block,
            loc,
            shapes: Default::default(),
            kernel_calls: None,
            float_calls: false,
            constant_args: false,
            quantize_calls: None,
            act_quant_calls: None,
            quantize_inputs: Default::default(),
            decode_tables: false,
            row_calls: false,
            const_args: Default::default(),
            calls: Default::default(),
        }
    }

    fn shape(&self, t: &V) -> Vec<u64> {
        self.shapes.borrow()[t.shape].clone()
    }

    fn rank(&self, t: &V) -> usize {
        self.shapes.borrow()[t.shape].len()
    }

    fn wrap(&self, v: Value<'c, 'b>, shape: &[u64], e: El) -> V<'c, 'b> {
        let mut s = self.shapes.borrow_mut();
        s.push(shape.to_vec());
        V {
            v,
            e,
            shape: s.len() - 1,
        }
    }

    fn ty(&self, shape: &[u64], e: El) -> R<Type<'c>> {
        Ok(RankedTensorType::new(shape, parse_type(self.ctx, &e.mlir())?, None).into())
    }

    fn op(
        &self,
        name: &str,
        operands: &[Value<'c, 'b>],
        attrs: &[(&str, String)],
        regions: Vec<Region<'c>>,
        shape: &[u64],
        e: El,
    ) -> R<V<'c, 'b>> {
        let mut named = Vec::new();
        for (k, v) in attrs {
            named.push((Identifier::new(self.ctx, k), parse_attr(self.ctx, v)?));
        }
        let op = OperationBuilder::new(name, self.loc)
            .add_operands(operands)
            .add_attributes(&named)
            .add_regions_vec(regions)
            .add_results(&[self.ty(shape, e)?])
            .build()
            .map_err(|e| format!("building {name} failed: {e}"))?;
        let v: Value = self
            .block
            .append_operation(op)
            .result(0)
            .map_err(|e| e.to_string())?
            .into();
        Ok(self.wrap(v, shape, e))
    }

    /// `arith.constant` from little-endian element bytes (every element, or one for a splat).
    fn constant_bytes(&self, shape: &[u64], e: El, bytes: &[u8]) -> R<V<'c, 'b>> {
        let n: u64 = shape.iter().product();
        let ty = self.ty(shape, e)?;
        let attr: Attribute = if n == 0 {
            parse_attr(
                self.ctx,
                &format!("dense<> : tensor<{}{}>", dims_text(shape), e.mlir()),
            )?
        } else if e == El::I(1) {
            if bytes.len() == 1 {
                DenseElementsAttribute::bool_splat(ty, bytes[0] != 0).into()
            } else {
                let v: Vec<i32> = bytes.iter().map(|&b| (b != 0) as i32).collect();
                DenseElementsAttribute::bool_values(ty, &v).into()
            }
        } else {
            let size = (e.bits() as u64).div_ceil(8);
            if bytes.len() as u64 != n * size && bytes.len() as u64 != size {
                return Err(format!(
                    "{} bytes cannot hold {n} elements of {}",
                    bytes.len(),
                    e.mlir()
                ));
            }
            let a: Attribute = DenseElementsAttribute::raw_buffer(ty, bytes).into();
            if a.to_raw().ptr.is_null() {
                return Err(format!("MLIR refused the constant of {}", e.mlir()));
            }
            a
        };
        let op = OperationBuilder::new("arith.constant", self.loc)
            .add_attributes(&[(Identifier::new(self.ctx, "value"), attr)])
            .add_results(&[ty])
            .build()
            .map_err(|e| format!("building a constant failed: {e}"))?;
        let v: Value = self
            .block
            .append_operation(op)
            .result(0)
            .map_err(|e| e.to_string())?
            .into();
        Ok(self.wrap(v, shape, e))
    }

    fn splat(&self, shape: &[u64], e: El, x: f64) -> R<V<'c, 'b>> {
        self.constant_bytes(shape, e, &scalar_bytes(e, x, x as i64)?)
    }

    fn empty(&self, shape: &[u64], e: El) -> R<V<'c, 'b>> {
        self.op("tensor.empty", &[], &[], Vec::new(), shape, e)
    }

    /// `linalg.generic` over `loops` loops (`reductions` are the reduction loops) with `ins`, writing a
    /// tensor of `shape` x `e` through `out_map` into `init` (a `tensor.empty` when None). The body gets
    /// the input scalars (handles 0..ins.len()), the output scalar (handle ins.len()) and `outer`
    /// values (the following handles) and returns the value to yield.
    #[allow(clippy::too_many_arguments)]
    fn generic(
        &self,
        ins: &[In<'c, 'b>],
        outer: &[Value<'c, 'b>],
        loops: usize,
        reductions: &[usize],
        out_map: Vec<String>,
        shape: &[u64],
        e: El,
        init: Option<V<'c, 'b>>,
        body: impl FnOnce(&mut Bd<'c, '_>) -> R<H>,
    ) -> R<V<'c, 'b>> {
        let init = match init {
            Some(i) => i,
            None => self.empty(shape, e)?,
        };
        let dims: Vec<String> = (0..loops).map(|d| format!("d{d}")).collect();
        let map =
            |res: &[String]| format!("affine_map<({}) -> ({})>", dims.join(", "), res.join(", "));
        let mut maps: Vec<String> = ins.iter().map(|(_, m)| map(m)).collect();
        maps.push(map(&out_map));
        let iters: Vec<&str> = (0..loops)
            .map(|d| {
                if reductions.contains(&d) {
                    "#linalg.iterator_type<reduction>"
                } else {
                    "#linalg.iterator_type<parallel>"
                }
            })
            .collect();
        let mut arg_types = Vec::new();
        for (t, _) in ins {
            arg_types.push((parse_type(self.ctx, &t.e.mlir())?, self.loc));
        }
        arg_types.push((parse_type(self.ctx, &e.mlir())?, self.loc));
        let blk = Block::new(&arg_types);
        {
            let mut vals = Vec::new();
            for i in 0..arg_types.len() {
                vals.push(blk.argument(i).map_err(|e| e.to_string())?.into());
            }
            vals.extend(outer.iter().copied());
            let mut bd = Bd {
                ctx: self.ctx,
                blk: &blk,
                loc: self.loc,
                vals,
            };
            let r = body(&mut bd)?;
            let y = bd.vals[r];
            let op = OperationBuilder::new("linalg.yield", self.loc)
                .add_operands(&[y])
                .build()
                .map_err(|e| e.to_string())?;
            blk.append_operation(op);
        }
        let region = Region::new();
        region.append_block(blk);
        let mut operands: Vec<Value> = ins.iter().map(|(t, _)| t.v).collect();
        operands.push(init.v);
        self.op(
            "linalg.generic",
            &operands,
            &[
                ("indexing_maps", format!("[{}]", maps.join(", "))),
                ("iterator_types", format!("[{}]", iters.join(", "))),
                (
                    "operandSegmentSizes",
                    format!("array<i32: {}, 1>", ins.len()),
                ),
            ],
            vec![region],
            shape,
            e,
        )
    }

    /// The indexing map results that broadcast `t` (NumPy rules, aligned right) to `shape`.
    fn bmap(&self, t: &V, shape: &[u64]) -> R<Vec<String>> {
        let s = self.shape(t);
        if s.len() > shape.len() {
            return Err(format!(
                "cannot broadcast tensor<{}{}> to {:?}",
                dims_text(&s),
                t.e.mlir(),
                shape
            ));
        }
        let off = shape.len() - s.len();
        Ok(s.iter()
            .enumerate()
            .map(|(i, &n)| {
                if n == 1 && shape[off + i] != 1 {
                    "0".to_string()
                } else {
                    format!("d{}", off + i)
                }
            })
            .collect())
    }

    /// An elementwise generic over `ins` broadcast to `shape`.
    fn ew(
        &self,
        ins: &[V<'c, 'b>],
        shape: &[u64],
        e: El,
        body: impl FnOnce(&mut Bd<'c, '_>) -> R<H>,
    ) -> R<V<'c, 'b>> {
        let ins: Vec<In> = ins
            .iter()
            .map(|t| Ok((*t, self.bmap(t, shape)?)))
            .collect::<R<_>>()?;
        let r = shape.len();
        self.generic(&ins, &[], r, &[], ids(0..r), shape, e, None, body)
    }

    /// Reduces `x` over `dims` (removed from the shape) with `k` (Add, Mul, Max or Min).
    fn reduce(&self, x: V<'c, 'b>, dims: &[usize], k: Bin) -> R<V<'c, 'b>> {
        let s = self.shape(&x);
        let kept: Vec<usize> = (0..s.len()).filter(|d| !dims.contains(d)).collect();
        let out: Vec<u64> = kept.iter().map(|&d| s[d]).collect();
        let init = match (k, x.e.is_float()) {
            (Bin::Add, _) => 0.0,
            (Bin::Mul, _) => 1.0,
            (Bin::Max, true) => f64::NEG_INFINITY,
            (Bin::Min, true) => f64::INFINITY,
            (Bin::Max, false) => int_range(x.e).0 as f64,
            (Bin::Min, false) => int_range(x.e).1 as f64,
            _ => return Err(format!("{k:?} is not a reduction")),
        };
        let init = self.constant_bytes(&out, x.e, &scalar_bytes(x.e, init, init as i64)?)?;
        let e = x.e;
        self.generic(
            &[(x, ids(0..s.len()))],
            &[],
            s.len(),
            dims,
            ids(kept.iter().copied()),
            &out,
            e,
            Some(init),
            |b| b.bin(k, e, 0, 1),
        )
    }

    /// Reshapes to `shape` (same element count): collapse to 1-D, then expand.
    fn reshape(&self, x: V<'c, 'b>, shape: &[u64]) -> R<V<'c, 'b>> {
        let s = self.shape(&x);
        if s == shape {
            return Ok(x);
        }
        let (n, m): (u64, u64) = (s.iter().product(), shape.iter().product());
        if n != m {
            return Err(format!(
                "cannot reshape {n} elements to {}",
                dims_text(shape)
            ));
        }
        let mut x = x;
        if s.len() != 1 || shape.is_empty() {
            let reass = if s.is_empty() {
                // rank 0 -> all-ones shape: expand with an empty reassociation
                return self.op(
                    "tensor.expand_shape",
                    &[x.v],
                    &[
                        ("reassociation", "[]".into()),
                        (
                            "static_output_shape",
                            arr(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>()),
                        ),
                    ],
                    Vec::new(),
                    shape,
                    x.e,
                );
            } else if shape.is_empty() {
                "[]".to_string()
            } else {
                format!(
                    "[[{}]]",
                    (0..s.len())
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let out: Vec<u64> = if shape.is_empty() { vec![] } else { vec![n] };
            x = self.op(
                "tensor.collapse_shape",
                &[x.v],
                &[("reassociation", reass)],
                Vec::new(),
                &out,
                x.e,
            )?;
            if shape.is_empty() {
                return Ok(x);
            }
        }
        if shape.len() == 1 {
            return Ok(x);
        }
        let reass = format!(
            "[[{}]]",
            (0..shape.len())
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.op(
            "tensor.expand_shape",
            &[x.v],
            &[
                ("reassociation", reass),
                (
                    "static_output_shape",
                    arr(&shape.iter().map(|&d| d as i64).collect::<Vec<_>>()),
                ),
            ],
            Vec::new(),
            shape,
            x.e,
        )
    }

    fn extract_slice(
        &self,
        x: V<'c, 'b>,
        offsets: &[i64],
        sizes: &[u64],
        strides: &[i64],
    ) -> R<V<'c, 'b>> {
        let sz: Vec<i64> = sizes.iter().map(|&d| d as i64).collect();
        self.op(
            "tensor.extract_slice",
            &[x.v],
            &[
                ("operandSegmentSizes", "array<i32: 1, 0, 0, 0>".into()),
                ("static_offsets", arr(offsets)),
                ("static_sizes", arr(&sz)),
                ("static_strides", arr(strides)),
            ],
            Vec::new(),
            sizes,
            x.e,
        )
    }

    fn insert_slice(&self, src: V<'c, 'b>, dest: V<'c, 'b>, offsets: &[i64]) -> R<V<'c, 'b>> {
        let sz: Vec<i64> = self.shape(&src).iter().map(|&d| d as i64).collect();
        let ones = vec![1i64; sz.len()];
        self.op(
            "tensor.insert_slice",
            &[src.v, dest.v],
            &[
                ("operandSegmentSizes", "array<i32: 1, 1, 0, 0, 0>".into()),
                ("static_offsets", arr(offsets)),
                ("static_sizes", arr(&sz)),
                ("static_strides", arr(&ones)),
            ],
            Vec::new(),
            &self.shape(&dest),
            dest.e,
        )
    }

    /// Converts the elements of `x` to `e`.
    fn convert(&self, x: V<'c, 'b>, e: El) -> R<V<'c, 'b>> {
        if x.e == e {
            return Ok(x);
        }
        let from = x.e;
        self.ew(&[x], &self.shape(&x), e, |b| b.cast(from, e, 0))
    }

    /// `tensor.extract` of a rank-0 tensor, for use as a scalar inside a generic's body.
    fn scalar(&self, x: V<'c, 'b>) -> R<Value<'c, 'b>> {
        let x = self.reshape(x, &[])?;
        let op = OperationBuilder::new("tensor.extract", self.loc)
            .add_operands(&[x.v])
            .add_results(&[parse_type(self.ctx, &x.e.mlir())?])
            .build()
            .map_err(|e| e.to_string())?;
        Ok(self
            .block
            .append_operation(op)
            .result(0)
            .map_err(|e| e.to_string())?
            .into())
    }
}

fn int_range(e: El) -> (i64, i64) {
    match e {
        El::I(1) => (0, 1),
        El::I(64) => (i64::MIN, i64::MAX),
        El::I(n) => (-(1i64 << (n - 1)), (1i64 << (n - 1)) - 1),
        El::U(64) => (0, -1),
        El::U(n) => (0, (1i64 << n) - 1),
        _ => (0, 0),
    }
}

// ---------------------------------------------------------------------------------------------------
// The function.

#[derive(Clone, Copy)]
enum Lv<'c, 'b> {
    Plain(V<'c, 'b>),
    /// A quantized tensor, carried as its dequantized f32 values.
    Quant(V<'c, 'b>),
    /// A quantized constant not exported yet (kernel calls read its blob instead): the index of its
    /// `qc.constant` op. Materialized as `Quant` at its first other use.
    Deferred(usize),
}

struct Cx<'a> {
    m: &'a qc_ir::Module,
    f: &'a Func,
    op: &'a Op,
    consts: &'a BTreeMap<qc_ir::Value, &'a DenseData>,
}

impl Cx<'_> {
    fn result_ty(&self, i: usize) -> &TensorType {
        self.f.ty(self.op.results[i])
    }

    fn int_attr(&self, name: &str, default: i64) -> i64 {
        self.op
            .attr(name)
            .and_then(QAttr::as_int)
            .unwrap_or(default)
    }

    fn f_attr(&self, name: &str, default: f64) -> f64 {
        self.op
            .attr(name)
            .and_then(QAttr::as_f64)
            .unwrap_or(default)
    }

    fn const_ints(&self, i: usize) -> R<Vec<i64>> {
        let v = self.op.operands[i];
        let d = self.consts.get(&v).ok_or_else(|| {
            format!("operand {i} must be a compile-time constant (after shape specialization)")
        })?;
        let n = self.f.ty(v).num_elements().unwrap_or(0) as usize;
        Ok((0..n).map(|k| d.get_i64(k)).collect())
    }
}

fn emitted(t: &TensorType) -> R<(Vec<u64>, El)> {
    let s = t
        .static_shape()
        .ok_or_else(|| format!("the type {t} is not static"))?;
    Ok((s, El::of(&t.elem)?))
}

fn diag(op: &Op, msg: String) -> Diagnostic {
    Diagnostic::error(
        op.loc.clone(),
        format!("cannot export {} to upstream MLIR: {msg}", op.name()),
    )
}

fn export_func<'c, 'b>(
    u: &U<'c, 'b>,
    m: &qc_ir::Module,
    f: &Func,
    args: Vec<V<'c, 'b>>,
) -> Result<Vec<(Vec<u64>, El)>, Diagnostic> {
    let consts = qc_ir::ops::dense_constants(f);
    let mut env: Vec<Option<Lv<'c, 'b>>> = vec![None; f.num_values()];
    for (&a, t) in f.args.iter().zip(args) {
        env[a.0 as usize] = Some(Lv::Plain(t));
    }
    // Only the ops the results depend on.
    let mut needed = vec![false; f.num_values()];
    for &v in &f.ret {
        needed[v.0 as usize] = true;
    }
    let mut live = vec![false; f.ops.len()];
    for (i, op) in f.ops.iter().enumerate().rev() {
        if op.results.iter().any(|r| needed[r.0 as usize]) {
            live[i] = true;
            for &v in &op.operands {
                needed[v.0 as usize] = true;
            }
        }
    }
    for (index, (op, _)) in f.ops.iter().zip(&live).enumerate().filter(|(_, (_, &l))| l) {
        let cx = Cx {
            m,
            f,
            op,
            consts: &consts,
        };
        if u.kernel_calls.is_some() && is_quantized_resource(&cx) {
            env[op.results[0].0 as usize] = Some(Lv::Deferred(index));
            continue;
        }
        let mut ins: Vec<Lv> = Vec::with_capacity(op.operands.len());
        for (i, v) in op.operands.iter().enumerate() {
            let mut lv = env[v.0 as usize]
                .ok_or_else(|| diag(op, "an operand was never exported".into()))?;
            if let Lv::Deferred(c) = lv {
                if !(i == 1 && kernel_call_wanted(u, &cx)) {
                    let def = &f.ops[c];
                    let dcx = Cx { op: def, ..cx };
                    lv = constant(u, &dcx).map_err(|e| diag(def, e))?;
                    env[v.0 as usize] = Some(lv);
                }
            }
            ins.push(lv);
        }
        let outs = export_op(u, &cx, &ins).map_err(|e| diag(op, e))?;
        if outs.len() != op.results.len() {
            return Err(diag(
                op,
                "wrong number of results (a bug in the export)".into(),
            ));
        }
        for (&r, v) in op.results.iter().zip(outs) {
            env[r.0 as usize] = Some(v);
        }
    }
    let mut rets = Vec::new();
    let mut tys = Vec::new();
    for &v in &f.ret {
        if let Some(Lv::Deferred(c)) = env[v.0 as usize] {
            let def = &f.ops[c];
            let cx = Cx {
                m,
                f,
                op: def,
                consts: &consts,
            };
            env[v.0 as usize] = Some(constant(u, &cx).map_err(|e| diag(def, e))?);
        }
        let t = match env[v.0 as usize] {
            Some(Lv::Plain(t)) | Some(Lv::Quant(t)) => t,
            Some(Lv::Deferred(_)) | None => {
                return Err(Diagnostic::error(
                    f.ret_loc.clone(),
                    "a returned value was never exported",
                ))
            }
        };
        tys.push((u.shape(&t), t.e));
        rets.push(t.v);
    }
    u.block
        .append_operation(melior::dialect::func::r#return(&rets, u.loc));
    Ok(tys)
}

/// Whether the op of `cx` is a `qc.constant` of a quantized resource.
fn is_quantized_resource(cx: &Cx) -> bool {
    matches!(QcOp::of(cx.op), Some(QcOp::Constant))
        && matches!(cx.op.attr("value"), Some(QAttr::DenseResource(_)))
        && cx.result_ty(0).elem.as_quant().is_some()
}

/// Whether the op of `cx` is a `quant.matmul {transpose_b}` of a float activation that the export
/// leaves to a kernel (its weight, operand 1, being a quantized constant).
fn kernel_call_wanted(u: &U, cx: &Cx) -> bool {
    let Some(accept) = u.kernel_calls else {
        return false;
    };
    if QuantOp::of(cx.op) != Some(QuantOp::Matmul) || cx.op.attr("transpose_b").is_none() {
        return false;
    }
    let x = cx.f.ty(cx.op.operands[0]);
    let w = cx.f.ty(cx.op.operands[1]);
    let x_ok = match x.elem.as_quant() {
        None => true,
        Some(f) => u.quantize_calls.is_some_and(|q| q(f)),
    };
    let Some(wf) = w.elem.as_quant() else {
        return false;
    };
    // A weight format the kernels read only together with the activation quantization they do
    // themselves (`act_quant_calls`), when the activation is such a quantization.
    let with_act = || {
        let (Some(aq), Some(af)) = (u.act_quant_calls, x.elem.as_quant()) else {
            return false;
        };
        let def =
            cx.f.ops
                .iter()
                .find(|o| o.results.contains(&cx.op.operands[0]));
        def.is_some_and(|d| {
            QuantOp::of(d) == Some(QuantOp::Quantize)
                && d.attr("amax").and_then(QAttr::as_f64).is_some()
        }) && aq(wf, af, weight_k(w))
    };
    x_ok && w.rank() == 2 && (accept(wf) || with_act())
}

fn export_op<'c, 'b>(u: &U<'c, 'b>, cx: &Cx, ins: &[Lv<'c, 'b>]) -> R<Vec<Lv<'c, 'b>>> {
    if let Some(QcOp::Constant) = QcOp::of(cx.op) {
        return constant(u, cx).map(|v| vec![v]);
    }
    if let Some(q) = QuantOp::of(cx.op) {
        return export_quant(u, cx, q, ins);
    }
    let Some(nn) = NnOp::of(cx.op) else {
        return Err("the op is not known to the exporter".into());
    };
    let plain: Vec<V> = ins
        .iter()
        .map(|l| match l {
            Lv::Plain(t) => Ok(*t),
            Lv::Quant(_) | Lv::Deferred(_) => {
                Err("a quantized tensor is used where a plain one is expected".to_string())
            }
        })
        .collect::<R<_>>()?;
    Ok(export_nn(u, cx, nn, &plain)?
        .into_iter()
        .map(Lv::Plain)
        .collect())
}

fn constant<'c, 'b>(u: &U<'c, 'b>, cx: &Cx) -> R<Lv<'c, 'b>> {
    let ty = cx.result_ty(0);
    match cx.op.attr("value") {
        Some(QAttr::Dense(d)) => {
            let (shape, e) = emitted(ty)?;
            if let El::Mf(s) = e {
                return Err(format!("dense constants of {s} are not supported"));
            }
            let n: u64 = shape.iter().product();
            let count = if d.len() == 1 { 1 } else { n as usize };
            let mut bytes = Vec::new();
            for i in 0..count {
                bytes.extend(scalar_bytes(e, d.get_f64(i), d.get_i64(i))?);
            }
            Ok(Lv::Plain(u.constant_bytes(&shape, e, &bytes)?))
        }
        Some(QAttr::DenseResource(name)) => {
            let blob =
                cx.m.resources
                    .get(name)
                    .ok_or_else(|| format!("resource '{name}' is not defined"))?;
            let bytes = match blob {
                Blob::Elided => {
                    return Err(format!(
                        "resource '{name}' was elided: its bytes are not in this module"
                    ))
                }
                b => b.bytes().unwrap_or_default(),
            };
            if let Some(fmt) = ty.elem.as_quant() {
                return dequant_constant(u, fmt, ty, bytes, name).map(Lv::Quant);
            }
            let (shape, e) = emitted(ty)?;
            let plain = matches!(
                e,
                El::F16 | El::BF16 | El::F32 | El::F64 | El::I(32) | El::I(64)
            );
            if u.constant_args && plain && bytes.len() >= CONSTANT_ARG_MIN_BYTES {
                let n: u64 = shape.iter().product();
                if bytes.len() as u64 != n * (e.bits() as u64 / 8) {
                    return Err(format!(
                        "resource '{name}' holds {} bytes, not the {n} elements of {}",
                        bytes.len(),
                        e.mlir()
                    ));
                }
                let t = u.ty(&shape, e)?;
                let v = u.block.add_argument(t, u.loc);
                u.const_args.borrow_mut().push((
                    ConstantArg {
                        resource: name.clone(),
                        shape: shape.clone(),
                        elem: e.mlir(),
                    },
                    t,
                ));
                return Ok(Lv::Plain(u.wrap(v, &shape, e)));
            }
            Ok(Lv::Plain(u.constant_bytes(&shape, e, bytes)?))
        }
        _ => Err("a constant needs a dense value".into()),
    }
}

fn unary_name(nn: NnOp) -> Option<&'static str> {
    Some(match nn {
        NnOp::Neg => "arith.negf",
        NnOp::Abs => "math.absf",
        NnOp::Exp => "math.exp",
        NnOp::Log => "math.log",
        NnOp::Sqrt => "math.sqrt",
        NnOp::Tanh => "math.tanh",
        NnOp::Erf => "math.erf",
        NnOp::Sin => "math.sin",
        NnOp::Cos => "math.cos",
        NnOp::Tan => "math.tan",
        NnOp::Floor => "math.floor",
        NnOp::Ceil => "math.ceil",
        NnOp::Round => "math.roundeven",
        NnOp::Asin => "math.asin",
        NnOp::Acos => "math.acos",
        NnOp::Atan => "math.atan",
        NnOp::Sinh => "math.sinh",
        NnOp::Cosh => "math.cosh",
        NnOp::Asinh => "math.asinh",
        NnOp::Acosh => "math.acosh",
        NnOp::Atanh => "math.atanh",
        _ => return None,
    })
}

/// Integer `pow` as the interpreter computes it: `base.wrapping_pow(min(exp, u32::MAX))` in the
/// result's width, by 32 rounds of square-and-multiply over the exponent's bits. The interpreter
/// refuses negative exponents; here they count as 0 (the result is 1).
fn int_pow<'c, 'b>(u: &U<'c, 'b>, ins: &[V<'c, 'b>], shape: &[u64], e: El) -> R<Vec<V<'c, 'b>>> {
    let (e0, e1) = (ins[0].e, ins[1].e);
    let v = u.ew(&ins[..2], shape, e, |b| {
        let base = b.cast(e0, e, 0)?;
        let q = b.cast(e1, El::I(64), 1)?;
        let lo = b.cst(El::I(64), 0.0)?;
        let hi = b.cst(El::I(64), u32::MAX as f64)?;
        let q = match e1 {
            // An unsigned 64-bit exponent is never negative; clamp it as unsigned.
            El::U(64) => b.bin(Bin::Min, El::U(64), q, hi)?,
            _ => {
                let q = b.bin(Bin::Max, El::I(64), q, lo)?;
                b.bin(Bin::Min, El::I(64), q, hi)?
            }
        };
        let one = b.cst(El::I(64), 1.0)?;
        let mut acc = b.cst(e, 1.0)?;
        let mut sq = base;
        for k in 0..32 {
            let sh = b.cst(El::I(64), k as f64)?;
            let bit = b.op("arith.shrui", &[q, sh], &[], "i64")?;
            let bit = b.op("arith.andi", &[bit, one], &[], "i64")?;
            let set = b.cmp(Cmp::Ne, El::I(64), bit, lo)?;
            let m = b.bin(Bin::Mul, e, acc, sq)?;
            acc = b.select(e, set, m, acc)?;
            if k < 31 {
                sq = b.bin(Bin::Mul, e, sq, sq)?;
            }
        }
        Ok(acc)
    })?;
    Ok(vec![v])
}

/// `edge`, `reflect` and `wrap` padding: each output element reads the source element whose
/// index the interpreter's rule gives (clamped; mirrored without repeating the border, period
/// `2 (n - 1)`, or `0` when `n == 1`; modulo `n`).
fn pad_indexed<'c, 'b>(
    u: &U<'c, 'b>,
    x: V<'c, 'b>,
    xs: &[u64],
    pads: &[i64],
    mode: &str,
    shape: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let r = xs.len();
    if xs.contains(&0) && shape.iter().product::<u64>() != 0 {
        return Err(format!("pad mode '{mode}' of an empty tensor"));
    }
    u.generic(&[], &[x.v], r, &[], ids(0..r), shape, e, None, |b| {
        let mut coords = vec![1];
        let zero = b.index(0)?;
        for (d, &n) in xs.iter().enumerate() {
            let j = b.loop_index(d)?;
            let n = n as i64;
            let lo = b.index(pads[d])?;
            let i = b.op("arith.subi", &[j, lo], &[], "index")?;
            let c = match mode {
                "edge" => {
                    let n1 = b.index(n - 1)?;
                    let c = b.op("arith.maxsi", &[i, zero], &[], "index")?;
                    b.op("arith.minsi", &[c, n1], &[], "index")?
                }
                "reflect" if n <= 1 => zero,
                _ => {
                    // rem_euclid(i, p): (i % p + p) % p.
                    let p = if mode == "wrap" { n } else { 2 * (n - 1) };
                    let pp = b.index(p)?;
                    let m = b.op("arith.remsi", &[i, pp], &[], "index")?;
                    let m = b.op("arith.addi", &[m, pp], &[], "index")?;
                    let m = b.op("arith.remsi", &[m, pp], &[], "index")?;
                    if mode == "wrap" {
                        m
                    } else {
                        let nn = b.index(n)?;
                        let inside = b.cmp(Cmp::Lt, El::I(64), m, nn)?;
                        let back = b.op("arith.subi", &[pp, m], &[], "index")?;
                        b.op("arith.select", &[inside, m, back], &[], "index")?
                    }
                }
            };
            coords.push(c);
        }
        b.op("tensor.extract", &coords, &[], &e.mlir())
    })
}

fn export_nn<'c, 'b>(u: &U<'c, 'b>, cx: &Cx, nn: NnOp, ins: &[V<'c, 'b>]) -> R<Vec<V<'c, 'b>>> {
    let (shape, e) = emitted(cx.result_ty(0))?;
    let one = |t: V<'c, 'b>| Ok(vec![t]);
    let bin = |k: Bin| -> R<Vec<V<'c, 'b>>> {
        let e0 = ins[0].e;
        let e1 = ins[1].e;
        one(u.ew(&ins[..2], &shape, e, |b| {
            let y = b.cast(e1, e0, 1)?;
            b.bin(k, e0, 0, y)
        })?)
    };
    match nn {
        NnOp::Add => bin(Bin::Add),
        NnOp::Sub => bin(Bin::Sub),
        NnOp::Mul => bin(Bin::Mul),
        NnOp::Div => bin(Bin::Div),
        NnOp::Max => bin(Bin::Max),
        NnOp::Min => bin(Bin::Min),
        NnOp::And | NnOp::BitwiseAnd => bin(Bin::And),
        NnOp::Or | NnOp::BitwiseOr => bin(Bin::Or),
        NnOp::Xor | NnOp::BitwiseXor => bin(Bin::Xor),
        NnOp::Pow => {
            if let Some(d) = cx.consts.get(&cx.op.operands[1]) {
                if d.len() == 1 && e.is_float() {
                    let p = d.get_f64(0);
                    if p == 2.0 || p == 1.0 || p == 0.5 {
                        return one(u.ew(&ins[..1], &shape, e, |b| match p {
                            2.0 => b.bin(Bin::Mul, e, 0, 0),
                            1.0 => Ok(0),
                            _ => b.un("math.sqrt", e, 0),
                        })?);
                    }
                }
            }
            if !e.is_float() {
                return int_pow(u, ins, &shape, e);
            }
            bin(Bin::Pow)
        }
        NnOp::Equal | NnOp::Less | NnOp::LessOrEqual | NnOp::Greater | NnOp::GreaterOrEqual => {
            let c = match nn {
                NnOp::Equal => Cmp::Eq,
                NnOp::Less => Cmp::Lt,
                NnOp::LessOrEqual => Cmp::Le,
                NnOp::Greater => Cmp::Gt,
                _ => Cmp::Ge,
            };
            let e0 = ins[0].e;
            one(u.ew(&ins[..2], &shape, e, |b| b.cmp(c, e0, 0, 1))?)
        }
        NnOp::Not | NnOp::BitwiseNot => one(u.ew(&ins[..1], &shape, e, |b| {
            let all = b.cst(e, -1.0)?;
            b.bin(Bin::Xor, e, 0, all)
        })?),
        NnOp::Neg if !e.is_float() => one(u.ew(&ins[..1], &shape, e, |b| {
            let z = b.cst(e, 0.0)?;
            b.bin(Bin::Sub, e, z, 0)
        })?),
        NnOp::Abs if !e.is_float() => one(u.ew(&ins[..1], &shape, e, |b| b.un("math.absi", e, 0))?),
        nn if unary_name(nn).is_some() && e.is_float() => {
            let name = unary_name(nn).unwrap_or_default();
            one(u.ew(&ins[..1], &shape, e, |b| b.un(name, e, 0))?)
        }
        NnOp::Reciprocal => one(u.ew(&ins[..1], &shape, e, |b| {
            let o = b.cst(e, 1.0)?;
            b.bin(Bin::Div, e, o, 0)
        })?),
        NnOp::Relu => one(u.ew(&ins[..1], &shape, e, |b| {
            let z = b.cst(e, 0.0)?;
            b.bin(Bin::Max, e, 0, z)
        })?),
        NnOp::Sigmoid => one(u.ew(&ins[..1], &shape, e, |b| {
            let n = b.un("arith.negf", e, 0)?;
            let x = b.un("math.exp", e, n)?;
            let d = b.binc(Bin::Add, e, x, 1.0)?;
            let o = b.cst(e, 1.0)?;
            b.bin(Bin::Div, e, o, d)
        })?),
        NnOp::Gelu => {
            let tanh_form =
                matches!(cx.op.attr("approximate"), Some(QAttr::Str(s)) if s == "tanh");
            one(u.ew(&ins[..1], &shape, e, |b| {
                let inner = if tanh_form {
                    let x2 = b.bin(Bin::Mul, e, 0, 0)?;
                    let x3 = b.bin(Bin::Mul, e, x2, 0)?;
                    let t = b.binc(Bin::Mul, e, x3, 0.044715)?;
                    let t = b.bin(Bin::Add, e, 0, t)?;
                    let t = b.binc(Bin::Mul, e, t, (2.0 / std::f64::consts::PI).sqrt())?;
                    b.un("math.tanh", e, t)?
                } else {
                    let t = b.binc(Bin::Mul, e, 0, std::f64::consts::FRAC_1_SQRT_2)?;
                    b.un("math.erf", e, t)?
                };
                let one = b.binc(Bin::Add, e, inner, 1.0)?;
                let h = b.binc(Bin::Mul, e, 0, 0.5)?;
                b.bin(Bin::Mul, e, h, one)
            })?)
        }
        NnOp::Identity => one(ins[0]),
        NnOp::Where => {
            let (c, x, y) = (ins[0], ins[1], ins[2]);
            one(u.ew(&[c, x, y], &shape, e, |b| b.select(e, 0, 1, 2))?)
        }
        NnOp::Clip => {
            let lo = u.scalar(ins[1])?;
            let hi = u.scalar(ins[2])?;
            let x = ins[0];
            let r = shape.len();
            one(u.generic(
                &[(x, ids(0..r))],
                &[lo, hi],
                r,
                &[],
                ids(0..r),
                &shape,
                e,
                None,
                |b| {
                    let t = b.bin(Bin::Max, e, 0, 2)?;
                    b.bin(Bin::Min, e, t, 3)
                },
            )?)
        }
        NnOp::Cast => {
            let from = ins[0].e;
            one(u.ew(&ins[..1], &shape, e, |b| b.cast(from, e, 0))?)
        }
        NnOp::Matmul if u.float_calls => match sgemm_call(u, cx, ins[0], ins[1], &shape)? {
            Some(v) => one(v),
            None => one(matmul(u, ins[0], ins[1], &shape)?),
        },
        NnOp::Matmul => one(matmul(u, ins[0], ins[1], &shape)?),
        NnOp::Gemm => one(gemm(u, cx, ins, &shape)?),
        NnOp::Softmax | NnOp::LogSoftmax => {
            let axis = norm_axis(cx.int_attr("axis", -1), shape.len())?;
            let log = nn == NnOp::LogSoftmax;
            match softmax_call(u, cx, ins[0], axis, log)? {
                Some(v) => one(v),
                None => one(softmax(u, ins[0], axis, log)?),
            }
        }
        NnOp::LayerNorm => match layer_norm_call(u, cx, ins)? {
            Some(v) => one(v),
            None => one(layer_norm(u, cx, ins)?),
        },
        NnOp::Reshape | NnOp::Flatten | NnOp::Squeeze | NnOp::Unsqueeze => {
            one(u.reshape(ins[0], &shape)?)
        }
        NnOp::Expand => {
            let x = ins[0];
            one(u.ew(&[x], &shape, e, |_| Ok(0))?)
        }
        NnOp::Transpose => {
            let perm = cx
                .op
                .attr("perm")
                .and_then(QAttr::as_int_array)
                .ok_or("perm is missing")?;
            let r = perm.len();
            // Result dimension i is operand dimension perm[i]: the operand's map sends dimension j to the
            // loop i with perm[i] == j.
            let mut inv = vec![0usize; r];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i;
            }
            one(u.generic(
                &[(ins[0], ids(inv))],
                &[],
                r,
                &[],
                ids(0..r),
                &shape,
                e,
                None,
                |_| Ok(0),
            )?)
        }
        NnOp::Concat => {
            let axis = norm_axis(cx.int_attr("axis", 0), shape.len())?;
            let mut acc = u.empty(&shape, e)?;
            let mut off = 0i64;
            for t in ins {
                let n = u.shape(t)[axis];
                if n == 0 {
                    continue;
                }
                let mut offs = vec![0i64; shape.len()];
                offs[axis] = off;
                acc = u.insert_slice(*t, acc, &offs)?;
                off += n as i64;
            }
            one(acc)
        }
        NnOp::Split => {
            let x = ins[0];
            let xs = u.shape(&x);
            let axis = norm_axis(cx.int_attr("axis", 0), xs.len())?;
            let mut start = 0i64;
            let mut outs = Vec::new();
            for i in 0..cx.op.results.len() {
                let (s, _) = emitted(cx.result_ty(i))?;
                let mut offs = vec![0i64; xs.len()];
                offs[axis] = start;
                outs.push(u.extract_slice(x, &offs, &s, &vec![1; xs.len()])?);
                start += s[axis] as i64;
            }
            Ok(outs)
        }
        NnOp::Slice => {
            let x = ins[0];
            let xs = u.shape(&x);
            let (starts, ends, axes, steps) = (
                cx.const_ints(1)?,
                cx.const_ints(2)?,
                cx.const_ints(3)?,
                cx.const_ints(4)?,
            );
            let r = xs.len();
            let mut offs = vec![0i64; r];
            let mut strides = vec![1i64; r];
            for k in 0..axes.len() {
                let a = norm_axis(axes[k], r)?;
                let step = steps.get(k).copied().unwrap_or(1);
                if step == 0 {
                    return Err("slices with a zero step are not supported".into());
                }
                let (s, _) = qc_nn::shape::slice_bounds(xs[a] as i64, starts[k], ends[k], step);
                offs[a] = s;
                strides[a] = step;
            }
            if strides.iter().all(|&s| s > 0) {
                return one(u.extract_slice(x, &offs, &shape, &strides)?);
            }
            // Some step is negative: output index `j` of axis `d` reads `offs[d] + j * strides[d]`.
            one(u.generic(&[], &[x.v], r, &[], ids(0..r), &shape, e, None, |b| {
                let mut coords = vec![1];
                for d in 0..r {
                    let j = b.loop_index(d)?;
                    if offs[d] == 0 && strides[d] == 1 {
                        coords.push(j);
                        continue;
                    }
                    let st = b.index(strides[d])?;
                    let m = b.op("arith.muli", &[j, st], &[], "index")?;
                    let o = b.index(offs[d])?;
                    coords.push(b.op("arith.addi", &[o, m], &[], "index")?);
                }
                b.op("tensor.extract", &coords, &[], &e.mlir())
            })?)
        }
        NnOp::Gather => {
            let (x, idx) = (ins[0], ins[1]);
            let xs = u.shape(&x);
            let axis = norm_axis(cx.int_attr("axis", 0), xs.len())?;
            let q = u.rank(&idx);
            let r = shape.len();
            let n = xs[axis] as i64;
            let ie = idx.e;
            one(u.generic(
                &[(idx, ids(axis..axis + q))],
                &[x.v],
                r,
                &[],
                ids(0..r),
                &shape,
                e,
                None,
                |b| {
                    let i = wrapped_index(b, ie, 0, n)?;
                    let mut coords = Vec::new();
                    for d in 0..axis {
                        coords.push(b.loop_index(d)?);
                    }
                    coords.push(i);
                    for d in axis + q..r {
                        coords.push(b.loop_index(d)?);
                    }
                    let mut args = vec![2];
                    args.extend(coords);
                    b.op("tensor.extract", &args, &[], &e.mlir())
                },
            )?)
        }
        NnOp::ReduceSum
        | NnOp::ReduceMean
        | NnOp::ReduceMax
        | NnOp::ReduceMin
        | NnOp::ReduceProd => {
            let x = ins[0];
            let rank = u.rank(&x);
            let mut axes: Vec<usize> = cx
                .const_ints(1)?
                .into_iter()
                .map(|a| norm_axis(a, rank))
                .collect::<R<_>>()?;
            if axes.is_empty() {
                if cx.int_attr("noop_with_empty_axes", 0) != 0 {
                    return one(x);
                }
                axes = (0..rank).collect();
            }
            axes.sort_unstable();
            axes.dedup();
            let k = match nn {
                NnOp::ReduceMax => Bin::Max,
                NnOp::ReduceMin => Bin::Min,
                NnOp::ReduceProd => Bin::Mul,
                _ => Bin::Add,
            };
            let mut r = u.reduce(x, &axes, k)?;
            if nn == NnOp::ReduceMean {
                let xs = u.shape(&x);
                let n: u64 = axes.iter().map(|&a| xs[a]).product();
                let re = r.e;
                r = u.ew(&[r], &u.shape(&r), re, |b| b.binc(Bin::Div, re, 0, n as f64))?;
            }
            one(u.reshape(r, &shape)?)
        }
        NnOp::Shape | NnOp::Size => {
            let xs = u.shape(&ins[0]);
            let vals: Vec<i64> = if nn == NnOp::Size {
                vec![xs.iter().product::<u64>() as i64]
            } else {
                let r = xs.len() as i64;
                let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
                let (s, en) = (clamp(cx.int_attr("start", 0)), clamp(cx.int_attr("end", r)));
                (s..en.max(s)).map(|i| xs[i as usize] as i64).collect()
            };
            let mut bytes = Vec::new();
            for v in vals {
                bytes.extend(scalar_bytes(e, v as f64, v)?);
            }
            one(u.constant_bytes(&shape, e, &bytes)?)
        }
        NnOp::ConstantOfShape => {
            let v = match cx.op.attr("value") {
                Some(QAttr::Dense(d)) => d.clone(),
                _ => return Err("constant_of_shape needs a dense value".into()),
            };
            one(u.constant_bytes(&shape, e, &scalar_bytes(e, v.get_f64(0), v.get_i64(0))?)?)
        }
        NnOp::Range => {
            let start = u.scalar(ins[0])?;
            let delta = u.scalar(ins[2])?;
            one(u.generic(&[], &[start, delta], 1, &[], ids(0..1), &shape, e, None, |b| {
                let i = b.loop_index(0)?;
                let i = b.op("arith.index_cast", &[i], &[], "i64")?;
                let i = b.cast(El::I(64), e, i)?;
                let t = b.bin(Bin::Mul, e, i, 2)?;
                b.bin(Bin::Add, e, t, 1)
            })?)
        }
        NnOp::Sign => one(u.ew(&ins[..1], &shape, e, |b| {
            // 1, -1, 0 for +-0, and NaN stays NaN.
            let z = b.cst(e, 0.0)?;
            let o = b.cst(e, 1.0)?;
            let m = b.cst(e, -1.0)?;
            let eq = b.cmp(Cmp::Eq, e, 0, z)?;
            let r = b.select(e, eq, z, 0)?;
            let lt = b.cmp(Cmp::Lt, e, 0, z)?;
            let r = b.select(e, lt, m, r)?;
            let gt = b.cmp(Cmp::Gt, e, 0, z)?;
            b.select(e, gt, o, r)
        })?),
        NnOp::Mod => {
            let fmod = cx.int_attr("fmod", 0) != 0;
            one(u.ew(&ins[..2], &shape, e, |b| {
                let name = match e {
                    e if e.is_float() => "arith.remf",
                    El::U(_) => "arith.remui",
                    _ => "arith.remsi",
                };
                let r = b.op(name, &[0, 1], &[], &e.mlir())?;
                if fmod || matches!(e, El::U(_)) {
                    return Ok(r);
                }
                // Python's remainder takes the sign of the divisor.
                let z = b.cst(e, 0.0)?;
                let nz = b.cmp(Cmp::Ne, e, r, z)?;
                let rn = b.cmp(Cmp::Lt, e, r, z)?;
                let qn = b.cmp(Cmp::Lt, e, 1, z)?;
                let differ = b.op("arith.xori", &[rn, qn], &[], "i1")?;
                let fix = b.op("arith.andi", &[nz, differ], &[], "i1")?;
                let adj = b.bin(Bin::Add, e, r, 1)?;
                b.select(e, fix, adj, r)
            })?)
        }
        NnOp::BitShift => {
            let left = matches!(cx.op.attr("direction"), Some(QAttr::Str(d)) if d == "LEFT");
            let name = match (left, e) {
                (true, _) => "arith.shli",
                (false, El::U(_)) => "arith.shrui",
                _ => "arith.shrsi",
            };
            one(u.ew(&ins[..2], &shape, e, |b| b.op(name, &[0, 1], &[], &e.mlir()))?)
        }
        NnOp::IsNan => one(u.ew(&ins[..1], &shape, e, |b| {
            // Unordered: true exactly when x is NaN.
            b.op(
                "arith.cmpf",
                &[0, 0],
                &[("predicate", "14 : i64".into())],
                "i1",
            )
        })?),
        NnOp::IsInf => {
            let xe = ins[0].e;
            let (neg, pos) = (
                cx.int_attr("detect_negative", 1) != 0,
                cx.int_attr("detect_positive", 1) != 0,
            );
            one(u.ew(&ins[..1], &shape, e, |b| {
                let a = b.un("math.absf", xe, 0)?;
                let inf = b.cst(xe, f64::INFINITY)?;
                let is = b.cmp(Cmp::Eq, xe, a, inf)?;
                let z = b.cst(xe, 0.0)?;
                match (neg, pos) {
                    (true, true) => Ok(is),
                    (false, false) => b.cst(El::I(1), 0.0),
                    (true, false) => {
                        let s = b.cmp(Cmp::Lt, xe, 0, z)?;
                        b.op("arith.andi", &[is, s], &[], "i1")
                    }
                    (false, true) => {
                        let s = b.cmp(Cmp::Gt, xe, 0, z)?;
                        b.op("arith.andi", &[is, s], &[], "i1")
                    }
                }
            })?)
        }
        NnOp::Softplus
        | NnOp::LeakyRelu
        | NnOp::Elu
        | NnOp::HardSigmoid
        | NnOp::HardSwish
        | NnOp::Softsign
        | NnOp::Mish
        | NnOp::Selu
        | NnOp::Celu
        | NnOp::ThresholdedRelu
        | NnOp::Swish
            if e.is_float() =>
        {
            let alpha = cx.f_attr(
                "alpha",
                match nn {
                    NnOp::LeakyRelu => 0.01,
                    NnOp::HardSigmoid => 0.2,
                    NnOp::Selu => 1.673_263_192_176_818_8,
                    _ => 1.0,
                },
            );
            let beta = cx.f_attr("beta", 0.5);
            let gamma = cx.f_attr("gamma", 1.050_701_022_148_132_3);
            one(u.ew(&ins[..1], &shape, e, |b| activation(b, nn, e, alpha, beta, gamma))?)
        }
        NnOp::BatchNorm => {
            let x = ins[0];
            let r = shape.len();
            let eps = cx.f_attr("epsilon", 1e-5);
            let ch = |t: V<'c, 'b>| -> R<In<'c, 'b>> {
                let c = u.shape(&t).iter().product::<u64>();
                Ok((u.reshape(t, &[c])?, ids([1])))
            };
            one(u.generic(
                &[
                    (x, ids(0..r)),
                    ch(ins[1])?,
                    ch(ins[2])?,
                    ch(ins[3])?,
                    ch(ins[4])?,
                ],
                &[],
                r,
                &[],
                ids(0..r),
                &shape,
                e,
                None,
                |b| {
                    let d = b.bin(Bin::Sub, e, 0, 3)?;
                    let v = b.binc(Bin::Add, e, 4, eps)?;
                    let sd = b.un("math.sqrt", e, v)?;
                    let y = b.bin(Bin::Div, e, d, sd)?;
                    let y = b.bin(Bin::Mul, e, y, 1)?;
                    b.bin(Bin::Add, e, y, 2)
                },
            )?)
        }
        NnOp::ArgMax | NnOp::ArgMin => {
            let x = ins[0];
            let xs = u.shape(&x);
            let r = xs.len();
            let axis = norm_axis(cx.int_attr("axis", 0), r)?;
            let max = nn == NnOp::ArgMax;
            let m = u.reduce(x, &[axis], if max { Bin::Max } else { Bin::Min })?;
            let last = cx.int_attr("select_last_index", 0) != 0;
            let fill = if last { -1 } else { xs[axis] as i64 };
            let out: Vec<u64> = u.shape(&m);
            let init = u.constant_bytes(&out, El::I(64), &fill.to_le_bytes())?;
            let xe = x.e;
            let idx = u.generic(
                &[(x, ids(0..r)), (m, kept(r, &[axis]))],
                &[],
                r,
                &[axis],
                kept(r, &[axis]),
                &out,
                El::I(64),
                Some(init),
                |b| {
                    let i = b.loop_index(axis)?;
                    let i = b.op("arith.index_cast", &[i], &[], "i64")?;
                    let eq = b.cmp(Cmp::Eq, xe, 0, 1)?;
                    let f = b.cst(El::I(64), fill as f64)?;
                    let cand = b.select(El::I(64), eq, i, f)?;
                    b.bin(if last { Bin::Max } else { Bin::Min }, El::I(64), 2, cand)
                },
            )?;
            one(u.convert(u.reshape(idx, &shape)?, e)?)
        }
        NnOp::Trilu => {
            let k = cx.const_ints(1)?.first().copied().unwrap_or(0);
            let r = shape.len();
            if r < 2 {
                return Err("trilu needs rank >= 2".into());
            }
            let upper = cx.int_attr("upper", 1) != 0;
            one(u.ew(&ins[..1], &shape, e, |b| {
                let i = b.loop_index(r - 2)?;
                let j = b.loop_index(r - 1)?;
                let i = b.op("arith.index_cast", &[i], &[], "i64")?;
                let j = b.op("arith.index_cast", &[j], &[], "i64")?;
                let d = b.bin(Bin::Sub, El::I(64), j, i)?;
                let kk = b.cst(El::I(64), k as f64)?;
                let keep = b.cmp(if upper { Cmp::Ge } else { Cmp::Le }, El::I(64), d, kk)?;
                let z = b.cst(e, 0.0)?;
                b.select(e, keep, 0, z)
            })?)
        }
        NnOp::Tile => {
            let x = ins[0];
            let xs = u.shape(&x);
            let r = shape.len();
            one(u.generic(&[], &[x.v], r, &[], ids(0..r), &shape, e, None, |b| {
                let mut coords = vec![1];
                for (d, &n) in xs.iter().enumerate() {
                    let i = b.loop_index(d)?;
                    let nn = b.index(n as i64)?;
                    coords.push(b.op("arith.remui", &[i, nn], &[], "index")?);
                }
                b.op("tensor.extract", &coords, &[], &e.mlir())
            })?)
        }
        NnOp::Pad => {
            let mode = match cx.op.attr("mode") {
                Some(QAttr::Str(s)) => s.as_str(),
                _ => "constant",
            };
            let x = ins[0];
            let xs = u.shape(&x);
            let r = xs.len();
            let pads = cx.const_ints(1)?;
            if mode != "constant" {
                if !matches!(mode, "edge" | "reflect" | "wrap") {
                    return Err(format!(
                        "pad mode '{mode}' is not supported (expected constant, edge, reflect, wrap)"
                    ));
                }
                return one(pad_indexed(u, x, &xs, &pads, mode, &shape, e)?);
            }
            let value = if u.shape(&ins[2]).iter().product::<u64>() == 0 {
                u.splat(&[], e, 0.0)?
            } else {
                ins[2]
            };
            let value = u.scalar(value)?;
            one(u.generic(
                &[],
                &[x.v, value],
                r,
                &[],
                ids(0..r),
                &shape,
                e,
                None,
                |b| {
                    let mut coords = vec![1];
                    let mut inside: Option<H> = None;
                    let zero = b.index(0)?;
                    for (d, &n) in xs.iter().enumerate() {
                        let j = b.loop_index(d)?;
                        let lo = b.index(pads[d])?;
                        let i = b.op("arith.subi", &[j, lo], &[], "index")?;
                        let n1 = b.index(n as i64 - 1)?;
                        let ge = b.op(
                            "arith.cmpi",
                            &[i, zero],
                            &[("predicate", "5 : i64".into())],
                            "i1",
                        )?;
                        let le = b.op(
                            "arith.cmpi",
                            &[i, n1],
                            &[("predicate", "3 : i64".into())],
                            "i1",
                        )?;
                        let ok = b.op("arith.andi", &[ge, le], &[], "i1")?;
                        inside = Some(match inside {
                            None => ok,
                            Some(p) => b.op("arith.andi", &[p, ok], &[], "i1")?,
                        });
                        let c = b.op("arith.maxsi", &[i, zero], &[], "index")?;
                        coords.push(b.op("arith.minsi", &[c, n1], &[], "index")?);
                    }
                    let v = b.op("tensor.extract", &coords, &[], &e.mlir())?;
                    match inside {
                        Some(ok) => b.select(e, ok, v, 2),
                        None => Ok(v),
                    }
                },
            )?)
        }
        NnOp::GatherElements => {
            let (x, idx) = (ins[0], ins[1]);
            let xs = u.shape(&x);
            let r = xs.len();
            let axis = norm_axis(cx.int_attr("axis", 0), r)?;
            let n = xs[axis] as i64;
            let ie = idx.e;
            one(u.generic(
                &[(idx, ids(0..r))],
                &[x.v],
                r,
                &[],
                ids(0..r),
                &shape,
                e,
                None,
                |b| {
                    let i = wrapped_index(b, ie, 0, n)?;
                    let mut coords = vec![2];
                    for d in 0..r {
                        coords.push(if d == axis { i } else { b.loop_index(d)? });
                    }
                    b.op("tensor.extract", &coords, &[], &e.mlir())
                },
            )?)
        }
        NnOp::CumSum => {
            let x = ins[0];
            let r = shape.len();
            let axis = norm_axis(
                cx.const_ints(1)?
                    .first()
                    .copied()
                    .ok_or("cum_sum needs an axis")?,
                r,
            )?;
            let (exclusive, reverse) = (
                cx.int_attr("exclusive", 0) != 0,
                cx.int_attr("reverse", 0) != 0,
            );
            // out[i] = sum over j of x[j] where j <= i (j < i exclusive; >= / > reversed), with j a
            // reduction loop after the result's.
            let mut xm = ids(0..r);
            xm[axis] = format!("d{r}");
            let init = u.splat(&shape, e, 0.0)?;
            one(u.generic(
                &[(x, xm)],
                &[],
                r + 1,
                &[r],
                ids(0..r),
                &shape,
                e,
                Some(init),
                |b| {
                    let i = b.loop_index(axis)?;
                    let j = b.loop_index(r)?;
                    let p = match (reverse, exclusive) {
                        (false, false) => 7, // ule: j <= i
                        (false, true) => 6,  // ult
                        (true, false) => 9,  // uge
                        (true, true) => 8,   // ugt
                    };
                    let c = b.op(
                        "arith.cmpi",
                        &[j, i],
                        &[("predicate", format!("{p} : i64"))],
                        "i1",
                    )?;
                    let z = b.cst(e, 0.0)?;
                    let v = b.select(e, c, 0, z)?;
                    b.bin(Bin::Add, e, 1, v)
                },
            )?)
        }
        NnOp::Conv => one(window::conv(u, cx, ins, &shape, e)?),
        NnOp::ConvTranspose => one(window::conv_transpose(u, cx, ins, &shape, e)?),
        NnOp::MaxPool | NnOp::AvgPool => one(window::pool(u, cx, nn, ins[0], &shape, e)?),
        NnOp::GlobalAvgPool | NnOp::GlobalMaxPool => {
            one(window::global_pool(u, nn, ins[0], &shape, e)?)
        }
        NnOp::Lrn => one(window::lrn(u, cx, ins[0], e)?),
        NnOp::Shrink => one(qdq::shrink(u, cx, ins[0], &shape, e)?),
        NnOp::NllLoss => one(qdq::nll_loss(u, cx, ins, &shape, e)?),
        _ => Err(format!(
            "{} has no upstream MLIR export (supported: elementwise arithmetic, comparisons and the \
             activations, cast, matmul, gemm, conv, conv_transpose, pooling, lrn, softmax, \
             layer_norm, batch_norm, reductions, arg_max, arg_min, nll_loss, cum_sum, reshape, \
             transpose, concat, split, slice, pad, tile, trilu, gather, gather_elements, expand, \
             range, shape)",
            cx.op.name()
        )),
    }
}

/// One scalar activation of `x` (handle 0) in a generic's body.
fn activation(b: &mut Bd, nn: NnOp, e: El, alpha: f64, beta: f64, gamma: f64) -> R<H> {
    let x = 0;
    let sigmoid = |b: &mut Bd, t: H| -> R<H> {
        let n = b.un("arith.negf", e, t)?;
        let ex = b.un("math.exp", e, n)?;
        let d = b.binc(Bin::Add, e, ex, 1.0)?;
        let o = b.cst(e, 1.0)?;
        b.bin(Bin::Div, e, o, d)
    };
    let softplus = |b: &mut Bd, t: H| -> R<H> {
        let th = b.cst(e, 30.0)?;
        let big = b.cmp(Cmp::Gt, e, t, th)?;
        let ex = b.un("math.exp", e, t)?;
        let l = b.un("math.log1p", e, ex)?;
        b.select(e, big, t, l)
    };
    let elu = |b: &mut Bd, t: H, a: f64| -> R<H> {
        let z = b.cst(e, 0.0)?;
        let pos = b.cmp(Cmp::Gt, e, t, z)?;
        let em = b.un("math.expm1", e, t)?;
        let neg = b.binc(Bin::Mul, e, em, a)?;
        b.select(e, pos, t, neg)
    };
    let clamp01 = |b: &mut Bd, t: H| -> R<H> {
        let z = b.cst(e, 0.0)?;
        let o = b.cst(e, 1.0)?;
        let t = b.bin(Bin::Max, e, t, z)?;
        b.bin(Bin::Min, e, t, o)
    };
    match nn {
        NnOp::Softplus => softplus(b, x),
        NnOp::LeakyRelu => {
            let z = b.cst(e, 0.0)?;
            let pos = b.cmp(Cmp::Ge, e, x, z)?;
            let neg = b.binc(Bin::Mul, e, x, alpha)?;
            b.select(e, pos, x, neg)
        }
        NnOp::Elu => elu(b, x, alpha),
        NnOp::Selu => {
            let y = elu(b, x, alpha)?;
            b.binc(Bin::Mul, e, y, gamma)
        }
        NnOp::HardSigmoid => {
            let t = b.binc(Bin::Mul, e, x, alpha)?;
            let t = b.binc(Bin::Add, e, t, beta)?;
            clamp01(b, t)
        }
        NnOp::HardSwish => {
            let t = b.binc(Bin::Div, e, x, 6.0)?;
            let t = b.binc(Bin::Add, e, t, 0.5)?;
            let t = clamp01(b, t)?;
            b.bin(Bin::Mul, e, x, t)
        }
        NnOp::Softsign => {
            let a = b.un("math.absf", e, x)?;
            let d = b.binc(Bin::Add, e, a, 1.0)?;
            b.bin(Bin::Div, e, x, d)
        }
        NnOp::Mish => {
            let s = softplus(b, x)?;
            let t = b.un("math.tanh", e, s)?;
            b.bin(Bin::Mul, e, x, t)
        }
        NnOp::Celu => {
            let t = b.binc(Bin::Div, e, x, alpha)?;
            let em = b.un("math.expm1", e, t)?;
            let neg = b.binc(Bin::Mul, e, em, alpha)?;
            let z = b.cst(e, 0.0)?;
            let neg = b.bin(Bin::Min, e, neg, z)?;
            let pos = b.bin(Bin::Max, e, x, z)?;
            b.bin(Bin::Add, e, pos, neg)
        }
        NnOp::ThresholdedRelu => {
            let a = b.cst(e, alpha)?;
            let keep = b.cmp(Cmp::Gt, e, x, a)?;
            let z = b.cst(e, 0.0)?;
            b.select(e, keep, x, z)
        }
        NnOp::Swish => {
            let t = b.binc(Bin::Mul, e, x, alpha)?;
            let s = sigmoid(b, t)?;
            b.bin(Bin::Mul, e, x, s)
        }
        _ => Err("not an activation".into()),
    }
}

/// The index value of integer `h` (of type `ie`) along a dimension of size `n`, negative values
/// counting from the end.
fn wrapped_index(b: &mut Bd, ie: El, h: H, n: i64) -> R<H> {
    if matches!(ie, El::U(_)) {
        return b.op("arith.index_castui", &[h], &[], "index");
    }
    let i = b.op("arith.index_cast", &[h], &[], "index")?;
    let zero = b.index(0)?;
    let neg = b.op(
        "arith.cmpi",
        &[i, zero],
        &[("predicate", "2 : i64".into())],
        "i1",
    )?;
    let nn = b.index(n)?;
    let wrapped = b.op("arith.addi", &[i, nn], &[], "index")?;
    b.op("arith.select", &[neg, wrapped, i], &[], "index")
}

/// `acc + a * b` contraction: `a` and `b` with their maps over `loops` loops, reduction loop `red`.
#[allow(clippy::too_many_arguments)]
fn contract<'c, 'b>(
    u: &U<'c, 'b>,
    a: In<'c, 'b>,
    b: In<'c, 'b>,
    loops: usize,
    red: usize,
    out_map: Vec<String>,
    out: &[u64],
    e: El,
) -> R<V<'c, 'b>> {
    let init = u.splat(out, e, 0.0)?;
    u.generic(
        &[a, b],
        &[],
        loops,
        &[red],
        out_map,
        out,
        e,
        Some(init),
        |bd| {
            let p = bd.bin(Bin::Mul, e, 0, 1)?;
            bd.bin(Bin::Add, e, 2, p)
        },
    )
}

/// NumPy matmul: rank-1 operands are promoted, batch dimensions broadcast.
fn matmul<'c, 'b>(u: &U<'c, 'b>, x: V<'c, 'b>, y: V<'c, 'b>, out: &[u64]) -> R<V<'c, 'b>> {
    let (xs, ys) = (u.shape(&x), u.shape(&y));
    let x2 = if xs.len() == 1 {
        u.reshape(x, &[1, xs[0]])?
    } else {
        x
    };
    let y2 = if ys.len() == 1 {
        u.reshape(y, &[ys[0], 1])?
    } else {
        y
    };
    let (xs, ys) = (u.shape(&x2), u.shape(&y2));
    let (bx, by) = (&xs[..xs.len() - 2], &ys[..ys.len() - 2]);
    let nb = bx.len().max(by.len());
    let mut batch = vec![1u64; nb];
    for (i, d) in batch.iter_mut().enumerate() {
        let dx = (i + bx.len()).checked_sub(nb).map_or(1, |k| bx[k]);
        let dy = (i + by.len()).checked_sub(nb).map_or(1, |k| by[k]);
        *d = if dx == 1 { dy } else { dx };
    }
    let (m, n) = (xs[xs.len() - 2], ys[ys.len() - 1]);
    // Loops: batch..., m, n, k.
    let (lm, ln, lk) = (nb, nb + 1, nb + 2);
    let bmaps = |b: &[u64]| -> Vec<String> {
        let off = nb - b.len();
        b.iter()
            .enumerate()
            .map(|(i, &d)| {
                if d == 1 && batch[off + i] != 1 {
                    "0".to_string()
                } else {
                    format!("d{}", off + i)
                }
            })
            .collect()
    };
    let mut xm = bmaps(bx);
    xm.extend(ids([lm, lk]));
    let mut ym = bmaps(by);
    ym.extend(ids([lk, ln]));
    let mut rs = batch.clone();
    rs.extend([m, n]);
    let r = contract(u, (x2, xm), (y2, ym), nb + 3, lk, ids(0..nb + 2), &rs, x.e)?;
    u.reshape(r, out)
}

fn gemm<'c, 'b>(u: &U<'c, 'b>, cx: &Cx, ins: &[V<'c, 'b>], out: &[u64]) -> R<V<'c, 'b>> {
    let (ta, tb) = (
        cx.int_attr("trans_a", 0) != 0,
        cx.int_attr("trans_b", 0) != 0,
    );
    let (alpha, beta) = (cx.f_attr("alpha", 1.0), cx.f_attr("beta", 1.0));
    // Loops: m, n, k.
    let am = if ta { ids([2, 0]) } else { ids([0, 2]) };
    let bm = if tb { ids([1, 2]) } else { ids([2, 1]) };
    let e = ins[0].e;
    let r = contract(u, (ins[0], am), (ins[1], bm), 3, 2, ids(0..2), out, e)?;
    if alpha == 1.0 && beta == 0.0 {
        return Ok(r);
    }
    u.ew(&[r, ins[2]], out, e, |b| {
        let p = if alpha != 1.0 {
            b.binc(Bin::Mul, e, 0, alpha)?
        } else {
            0
        };
        if beta == 0.0 {
            return Ok(p);
        }
        let c = if beta != 1.0 {
            b.binc(Bin::Mul, e, 1, beta)?
        } else {
            1
        };
        b.bin(Bin::Add, e, p, c)
    })
}

/// The map of a tensor reduced over `dims` of a rank-`r` loop nest (the kept dimensions).
fn kept(r: usize, dims: &[usize]) -> Vec<String> {
    ids((0..r).filter(|d| !dims.contains(d)))
}

fn softmax<'c, 'b>(u: &U<'c, 'b>, x: V<'c, 'b>, axis: usize, log: bool) -> R<V<'c, 'b>> {
    let s = u.shape(&x);
    let r = s.len();
    let e = x.e;
    let mx = u.reduce(x, &[axis], Bin::Max)?;
    let all = ids(0..r);
    // d = x - max (log) or exp(x - max).
    let d = u.generic(
        &[(x, all.clone()), (mx, kept(r, &[axis]))],
        &[],
        r,
        &[],
        all.clone(),
        &s,
        e,
        None,
        |b| {
            let d = b.bin(Bin::Sub, e, 0, 1)?;
            if log {
                Ok(d)
            } else {
                b.un("math.exp", e, d)
            }
        },
    )?;
    let ex = if log {
        u.ew(&[d], &s, e, |b| b.un("math.exp", e, 0))?
    } else {
        d
    };
    let sum = u.reduce(ex, &[axis], Bin::Add)?;
    u.generic(
        &[(d, all.clone()), (sum, kept(r, &[axis]))],
        &[],
        r,
        &[],
        all,
        &s,
        e,
        None,
        |b| {
            if log {
                let l = b.un("math.log", e, 1)?;
                b.bin(Bin::Sub, e, 0, l)
            } else {
                b.bin(Bin::Div, e, 0, 1)
            }
        },
    )
}

fn layer_norm<'c, 'b>(u: &U<'c, 'b>, cx: &Cx, ins: &[V<'c, 'b>]) -> R<V<'c, 'b>> {
    let x = ins[0];
    let xs = u.shape(&x);
    let r = xs.len();
    let e = x.e;
    let a = norm_axis(cx.int_attr("axis", -1), r)?;
    let eps = cx.f_attr("epsilon", 1e-5);
    let dims: Vec<usize> = (a..r).collect();
    let n = xs[a..].iter().product::<u64>() as f64;
    let all = ids(0..r);
    let sum = u.reduce(x, &dims, Bin::Add)?;
    let mean = u.ew(&[sum], &u.shape(&sum), e, |b| b.binc(Bin::Div, e, 0, n))?;
    let d = u.generic(
        &[(x, all.clone()), (mean, kept(r, &dims))],
        &[],
        r,
        &[],
        all.clone(),
        &xs,
        e,
        None,
        |b| b.bin(Bin::Sub, e, 0, 1),
    )?;
    let sq = u.ew(&[d], &xs, e, |b| b.bin(Bin::Mul, e, 0, 0))?;
    let var = u.reduce(sq, &dims, Bin::Add)?;
    let sd = u.ew(&[var], &u.shape(&var), e, |b| {
        let v = b.binc(Bin::Div, e, 0, n)?;
        let v = b.binc(Bin::Add, e, v, eps)?;
        b.un("math.sqrt", e, v)
    })?;
    let (scale, bias) = (ins[1], ins[2]);
    u.generic(
        &[
            (d, all.clone()),
            (sd, kept(r, &dims)),
            (scale, u.bmap(&scale, &xs)?),
            (bias, u.bmap(&bias, &xs)?),
        ],
        &[],
        r,
        &[],
        all,
        &xs,
        e,
        None,
        |b| {
            let y = b.bin(Bin::Div, e, 0, 1)?;
            let y = b.bin(Bin::Mul, e, y, 2)?;
            b.bin(Bin::Add, e, y, 3)
        },
    )
}

// ---------------------------------------------------------------------------------------------------
// Quantized tensors.

/// The blocked view of a tensor: each blocked dimension split into (blocks, block size); `outer` are
/// the dimensions of `blocked` that index the scales.
struct Blocked {
    blocked: Vec<u64>,
    outer: Vec<usize>,
    scale_shape: Vec<u64>,
    /// For each dimension of the tensor, the dimensions of `blocked` it splits into.
    reass: String,
}

fn blocked(scheme: &Scheme, shape: &[u64]) -> R<Blocked> {
    let r = shape.len();
    let resolve = |axis: i32| -> R<usize> {
        let a = if axis < 0 {
            axis as i64 + r as i64
        } else {
            axis as i64
        };
        if a < 0 || a >= r as i64 {
            return Err(format!("axis {axis} is out of range for rank {r}"));
        }
        Ok(a as usize)
    };
    let mut split: Vec<usize> = Vec::new();
    let (blocked, inner): (Vec<u64>, Vec<usize>) = match *scheme {
        Scheme::PerTensor => (shape.to_vec(), (0..r).collect()),
        Scheme::PerChannel { axis } => {
            let a = resolve(axis)?;
            (shape.to_vec(), (0..r).filter(|&d| d != a).collect())
        }
        Scheme::Group { size, axis } => {
            let a = resolve(axis)?;
            let g = size as u64;
            if g == 0 || !shape[a].is_multiple_of(g) {
                return Err(format!(
                    "dimension {a} is not a multiple of the group size {size}"
                ));
            }
            let mut b = shape[..a].to_vec();
            b.extend([shape[a] / g, g]);
            b.extend(&shape[a + 1..]);
            split.push(a);
            (b, vec![a + 1])
        }
        Scheme::Block { rows, cols } => {
            if r < 2 {
                return Err("a 2-D block scheme needs rank >= 2".into());
            }
            let (rr, cc) = (rows as u64, cols as u64);
            if !shape[r - 2].is_multiple_of(rr) || !shape[r - 1].is_multiple_of(cc) {
                return Err(format!(
                    "the shape is not a multiple of the {rows}x{cols} block"
                ));
            }
            let mut b = shape[..r - 2].to_vec();
            b.extend([shape[r - 2] / rr, rr, shape[r - 1] / cc, cc]);
            split.extend([r - 2, r - 1]);
            (b, vec![r - 1, r + 1])
        }
    };
    let outer: Vec<usize> = (0..blocked.len()).filter(|d| !inner.contains(d)).collect();
    let scale_shape = outer.iter().map(|&d| blocked[d]).collect();
    let mut groups = Vec::new();
    let mut j = 0;
    for d in 0..r {
        if split.contains(&d) {
            groups.push(format!("[{}, {}]", j, j + 1));
            j += 2;
        } else {
            groups.push(format!("[{j}]"));
            j += 1;
        }
    }
    Ok(Blocked {
        blocked,
        outer,
        scale_shape,
        reass: format!("[{}]", groups.join(", ")),
    })
}

/// How the codes of an element encoding are stored and decoded.
enum CodeKind {
    /// A builtin float type: `arith.extf`.
    Float(&'static str),
    /// Integer codes of `bits` bits: `arith.sitofp` / `arith.uitofp`, times `mul`.
    Int { bits: u8, signed: bool, mul: f64 },
    /// `bits`-bit patterns looked up in a table of values.
    Table { bits: u8 },
}

fn code_kind(enc: Encoding) -> CodeKind {
    match enc {
        Encoding::Int { bits, signed } => CodeKind::Int {
            bits,
            signed,
            mul: 1.0,
        },
        Encoding::MxInt8 => CodeKind::Int {
            bits: 8,
            signed: true,
            mul: 1.0 / 64.0,
        },
        e => match builtin_float(e) {
            Some(name) => CodeKind::Float(name),
            None => CodeKind::Table {
                bits: e.bits() as u8,
            },
        },
    }
}

/// The quantized constant (blob bytes of a tensor of type `ty` in `fmt`) as codes, scales and an
/// explicit dequantization to f32 (see the module documentation).
fn dequant_constant<'c, 'b>(
    u: &U<'c, 'b>,
    fmt: &QuantType,
    ty: &TensorType,
    bytes: &[u8],
    name: &str,
) -> R<V<'c, 'b>> {
    let shape = ty
        .static_shape()
        .ok_or_else(|| format!("a quantized constant needs a static shape, not {ty}"))?;
    let us: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let q = qc_quant::blob::from_blob(bytes, fmt, &us, name).map_err(|e| e.to_string())?;
    let bl = blocked(&fmt.scheme, &shape)?;
    let kind = match code_kind(fmt.elem) {
        CodeKind::Float(_) if u.decode_tables && fmt.elem != Encoding::E2M1 => CodeKind::Table {
            bits: fmt.elem.bits() as u8,
        },
        k => k,
    };
    // NVFP4's ue4m3 block scales through a table too (ExportOptions::decode_tables).
    let scale_table = u.decode_tables && fmt.scale == ScaleType::UE4M3;
    let mask = ((1u32 << fmt.elem.bits()) - 1) as u8;
    let codes_bytes: Vec<u8> = q.codes.iter().map(|&c| c & mask).collect();
    let code_el = match kind {
        CodeKind::Float(n) => El::Mf(n),
        CodeKind::Int { bits, signed, .. } => {
            if signed {
                El::I(bits)
            } else {
                El::U(bits)
            }
        }
        CodeKind::Table { bits } => El::U(bits),
    };
    let codes = u.constant_bytes(&shape, code_el, &codes_bytes)?;
    let codes = u.reshape_blocked(codes, &bl)?;
    let scales = match (&q.scales, fmt.scale) {
        (Scales::Codes(c), ScaleType::E8M0) => {
            u.constant_bytes(&bl.scale_shape, El::Mf("f8E8M0FNU"), c)?
        }
        (Scales::Codes(c), ScaleType::UE4M3) => {
            let c: Vec<u8> = c.iter().map(|&x| x & 0x7f).collect();
            let el = if scale_table {
                El::U(8)
            } else {
                El::Mf("f8E4M3FN")
            };
            u.constant_bytes(&bl.scale_shape, el, &c)?
        }
        (Scales::F32(v), ScaleType::F32) => {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            u.constant_bytes(&bl.scale_shape, El::F32, &b)?
        }
        (Scales::F16(v), ScaleType::F16) => {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            u.constant_bytes(&bl.scale_shape, El::F16, &b)?
        }
        (Scales::BF16(v), ScaleType::BF16) => {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            u.constant_bytes(&bl.scale_shape, El::BF16, &b)?
        }
        _ => return Err("the stored scales do not match the format's scale type".into()),
    };
    let r = bl.blocked.len();
    let mut ins: Vec<In> = vec![(codes, ids(0..r)), (scales, ids(bl.outer.iter().copied()))];
    let ts = match (fmt.tensor_scale, q.tensor_scale) {
        (TensorScale::None, _) => None,
        (k, Some(t)) => {
            let c = u.constant_bytes(&[], El::F32, &t.to_le_bytes())?;
            ins.push((c, Vec::new()));
            Some((k, ins.len() - 1))
        }
        (k, None) => {
            return Err(format!(
                "the format has a {k} tensor scale but none is stored"
            ))
        }
    };
    let zp = match (fmt.zero_point, &q.zero_points) {
        (None, _) => None,
        (Some(z), Some(zs)) => {
            let (bits, signed) = match z {
                Encoding::Int { bits, signed } => (bits, signed),
                other => return Err(format!("zero points of {other} are not supported")),
            };
            let zm = ((1u32 << bits) - 1) as u8;
            let zb: Vec<u8> = zs.iter().map(|&c| c & zm).collect();
            let zel = if signed { El::I(bits) } else { El::U(bits) };
            let c = u.constant_bytes(&bl.scale_shape, zel, &zb)?;
            ins.push((c, ids(bl.outer.iter().copied())));
            Some((zel, ins.len() - 1))
        }
        (Some(_), None) => return Err("the zero points are missing".into()),
    };
    let table = match kind {
        CodeKind::Table { .. } => {
            let codec = Codec::new(fmt.elem).map_err(|e| e.to_string())?;
            let tb: Vec<u8> = codec.table().iter().flat_map(|v| v.to_le_bytes()).collect();
            Some(u.constant_bytes(&[codec.table().len() as u64], El::F32, &tb)?)
        }
        _ => None,
    };
    let scale_values = if scale_table {
        let codec = Codec::new(Encoding::UE4M3).map_err(|e| e.to_string())?;
        let tb: Vec<u8> = codec.table().iter().flat_map(|v| v.to_le_bytes()).collect();
        Some(u.constant_bytes(&[codec.table().len() as u64], El::F32, &tb)?)
    } else {
        None
    };
    let outer: Vec<Value> = table.iter().chain(&scale_values).map(|t| t.v).collect();
    let sel = scales.e;
    let n_in = ins.len();
    // Handles of the captured tables in the body: after the inputs and the output.
    let scale_table_h = n_in + 1 + table.is_some() as usize;
    let f = El::F32;
    let x = u.generic(&ins, &outer, r, &[], ids(0..r), &bl.blocked, f, None, |b| {
        let mut s = if scale_table {
            let i = b.op("arith.index_castui", &[1], &[], "index")?;
            b.op("tensor.extract", &[scale_table_h, i], &[], "f32")?
        } else {
            b.cast(sel, f, 1)?
        };
        if let Some((k, h)) = ts {
            s = match k {
                TensorScale::Reciprocal => b.bin(Bin::Div, f, s, h)?,
                _ => b.bin(Bin::Mul, f, s, h)?,
            };
        }
        let v = match kind {
            CodeKind::Float(_) => b.cast(code_el, f, 0)?,
            CodeKind::Int { mul, .. } => {
                let v = match zp {
                    Some((zel, h)) => {
                        let q = b.cast(code_el, f, 0)?;
                        let z = b.cast(zel, f, h)?;
                        b.bin(Bin::Sub, f, q, z)?
                    }
                    None => b.cast(code_el, f, 0)?,
                };
                if mul != 1.0 {
                    b.binc(Bin::Mul, f, v, mul)?
                } else {
                    v
                }
            }
            CodeKind::Table { .. } => {
                let i = b.op("arith.index_castui", &[0], &[], "index")?;
                b.op("tensor.extract", &[n_in + 1, i], &[], "f32")?
            }
        };
        b.bin(Bin::Mul, f, v, s)
    })?;
    u.reshape_blocked_back(x, &bl, &shape)
}

impl<'c, 'b> U<'c, 'b> {
    /// Expands a tensor to its blocked view (each blocked dimension split in two).
    fn reshape_blocked(&self, x: V<'c, 'b>, bl: &Blocked) -> R<V<'c, 'b>> {
        if self.shape(&x) == bl.blocked {
            return Ok(x);
        }
        self.op(
            "tensor.expand_shape",
            &[x.v],
            &[
                ("reassociation", bl.reass.clone()),
                (
                    "static_output_shape",
                    arr(&bl.blocked.iter().map(|&d| d as i64).collect::<Vec<_>>()),
                ),
            ],
            Vec::new(),
            &bl.blocked,
            x.e,
        )
    }

    /// Collapses a blocked view back to `shape`.
    fn reshape_blocked_back(&self, x: V<'c, 'b>, bl: &Blocked, shape: &[u64]) -> R<V<'c, 'b>> {
        if self.shape(&x) == shape {
            return Ok(x);
        }
        self.op(
            "tensor.collapse_shape",
            &[x.v],
            &[("reassociation", bl.reass.clone())],
            Vec::new(),
            shape,
            x.e,
        )
    }
}

fn export_quant<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    q: QuantOp,
    ins: &[Lv<'c, 'b>],
) -> R<Vec<Lv<'c, 'b>>> {
    let refused = || {
        format!(
            "{} to {} has no upstream MLIR export (activation quantization is exported only as \
             kernel calls, for the formats a target's kernels quantize)",
            cx.op.name(),
            cx.result_ty(0).elem
        )
    };
    if q == QuantOp::Quantize {
        if let Some(fmt) = fake_quant_format(u, cx) {
            if only_act_quant_uses(u, cx) {
                // Every use is a kernel call that quantizes x itself (act_quant_of): no fake-quant
                // call; the f32 input stands for the quantized tensor, which nothing else reads.
                let Lv::Plain(x) = ins[0] else {
                    return Err("quantize takes a plain tensor".into());
                };
                let x = u.convert(x, El::F32)?;
                u.quantize_inputs.borrow_mut().push((cx.op.results[0], x));
                return Ok(vec![Lv::Quant(x)]);
            }
            return fake_quant(u, cx, fmt, ins).map(|v| vec![Lv::Quant(v)]);
        }
        return Err(refused());
    }
    let (shape, e) = emitted(cx.result_ty(0))?;
    match q {
        QuantOp::Dequantize => {
            let Lv::Quant(x) = ins[0] else {
                return Err("dequantize takes a quantized tensor".into());
            };
            Ok(vec![Lv::Plain(u.convert(x, e)?)])
        }
        QuantOp::Matmul => {
            let x = match ins[0] {
                Lv::Plain(t) => u.convert(t, El::F32)?,
                // A fake-quantized activation (ExportOptions::quantize_calls): its f32 values.
                Lv::Quant(t) if u.quantize_calls.is_some() => u.convert(t, El::F32)?,
                Lv::Quant(_) | Lv::Deferred(_) => {
                    return Err(
                        "quantized activations (from quant.quantize) are not exported".into(),
                    )
                }
            };
            if let Lv::Deferred(c) = ins[1] {
                if let Some((xr, act)) = act_quant_of(u, cx) {
                    return kernel_call(u, cx, xr, c, &shape, e, Some(act))
                        .map(|v| vec![Lv::Plain(v)]);
                }
                return kernel_call(u, cx, x, c, &shape, e, None).map(|v| vec![Lv::Plain(v)]);
            }
            let Lv::Quant(w) = ins[1] else {
                return Err("the weights of quant.matmul must be quantized".into());
            };
            let xs = u.shape(&x);
            let ws = u.shape(&w);
            let tb = cx.op.attr("transpose_b").is_some();
            let x2 = if xs.len() == 1 {
                u.reshape(x, &[1, xs[0]])?
            } else {
                x
            };
            let xs2 = u.shape(&x2);
            let r = xs2.len();
            // Loops: x's dimensions but K, then N, then K.
            let (ln, lk) = (r - 1, r);
            let mut xm = ids(0..r - 1);
            xm.push(format!("d{lk}"));
            let wm = if tb { ids([ln, lk]) } else { ids([lk, ln]) };
            let mut out = xs2[..r - 1].to_vec();
            out.push(if tb { ws[0] } else { ws[1] });
            let y = contract(u, (x2, xm), (w, wm), r + 1, lk, ids(0..r), &out, El::F32)?;
            let y = u.reshape(y, &shape)?;
            Ok(vec![Lv::Plain(u.convert(y, e)?)])
        }
        QuantOp::Hadamard
        | QuantOp::QuantizeLinear
        | QuantOp::DequantizeLinear
        | QuantOp::DynamicQuantizeLinear => {
            let plain: Vec<V> = ins
                .iter()
                .map(|l| match l {
                    Lv::Plain(t) => Ok(*t),
                    Lv::Quant(_) | Lv::Deferred(_) => Err(format!(
                        "{} takes plain tensors, not quantized ones",
                        cx.op.name()
                    )),
                })
                .collect::<R<_>>()?;
            let outs = match q {
                QuantOp::Hadamard => vec![qdq::hadamard(u, cx, plain[0], e)?],
                QuantOp::QuantizeLinear => vec![qdq::quantize_linear(u, cx, &plain, &shape, e)?],
                QuantOp::DequantizeLinear => {
                    vec![qdq::dequantize_linear(u, cx, &plain, &shape, e)?]
                }
                _ => qdq::dynamic_quantize_linear(u, plain[0])?,
            };
            Ok(outs.into_iter().map(Lv::Plain).collect())
        }
        QuantOp::Quantize => Err(refused()),
    }
}

/// The format of the `quant.quantize` of `cx` when it is exported as a [`KernelOp::FakeQuant`] call:
/// [`ExportOptions::quantize_calls`] accepts it, the input is a float tensor of a static shape, and
/// the format is per tensor or has blocks along the last axis that divide it. `None` otherwise (the
/// op is then refused as before).
fn fake_quant_format(u: &U, cx: &Cx) -> Option<QuantType> {
    let accept = u.quantize_calls?;
    let fmt = cx.result_ty(0).elem.as_quant()?;
    let x = cx.f.ty(*cx.op.operands.first()?);
    if x.elem.as_quant().is_some() || !x.elem.is_float() || !accept(fmt) {
        return None;
    }
    let shape = x.static_shape()?;
    let rank = shape.len() as i64;
    let ok = match fmt.scheme {
        Scheme::PerTensor => true,
        Scheme::Group { size, axis } => {
            let a = axis as i64;
            let last = rank > 0 && (a == -1 || a == rank - 1);
            last && size > 0 && shape[shape.len() - 1] % size as u64 == 0
        }
        _ => false,
    };
    (ok && shape.iter().product::<u64>() > 0).then(|| fmt.clone())
}

/// The static maximum of the `quant.quantize` `q` to `fmt` that a kernel quantizing its activations
/// needs: the op's `amax`; 0 for formats whose scales come from each block alone (MX: per-block
/// scales, no tensor scale), which need none; `None` when it is missing.
fn static_amax(q: &Op, fmt: &QuantType) -> Option<f32> {
    match q.attr("amax").and_then(QAttr::as_f64) {
        Some(a) => Some(a as f32),
        None => (matches!(fmt.scheme, Scheme::Group { .. })
            && fmt.tensor_scale == TensorScale::None)
            .then_some(0.0),
    }
}

/// For the `quant.matmul` of `cx` (a kernel call): when its activation is a `quant.quantize` exported
/// as a fake-quant call (or left out by [`only_act_quant_uses`]), with a static `amax` where its
/// format needs one ([`static_amax`]), of a format
/// that [`ExportOptions::act_quant_calls`] accepts with the weight's, the quantize's f32 input and the
/// quantization.
fn act_quant_of<'c, 'b>(u: &U<'c, 'b>, cx: &Cx) -> Option<(V<'c, 'b>, ActQuant)> {
    let accept = u.act_quant_calls?;
    let xv = *cx.op.operands.first()?;
    let def = cx.f.ops.iter().find(|o| o.results.contains(&xv))?;
    if QuantOp::of(def) != Some(QuantOp::Quantize) {
        return None;
    }
    let afmt = cx.f.ty(xv).elem.as_quant()?;
    let amax = static_amax(def, afmt)?;
    let wty = cx.f.ty(*cx.op.operands.get(1)?);
    let wfmt = wty.elem.as_quant()?;
    if !accept(wfmt, afmt, weight_k(wty)) {
        return None;
    }
    let x = u
        .quantize_inputs
        .borrow()
        .iter()
        .find(|(v, _)| *v == xv)
        .map(|(_, x)| *x)?;
    Some((
        x,
        ActQuant {
            format: afmt.clone(),
            amax,
        },
    ))
}

/// Whether every use of the result of the `quant.quantize` of `cx` is the activation of a
/// `quant.matmul` kernel call that quantizes it itself ([`act_quant_of`]), and the function does not
/// return it.
fn only_act_quant_uses(u: &U, cx: &Cx) -> bool {
    let Some(accept) = u.act_quant_calls else {
        return false;
    };
    let r = cx.op.results[0];
    let Some(afmt) = cx.result_ty(0).elem.as_quant() else {
        return false;
    };
    if static_amax(cx.op, afmt).is_none() || cx.f.ret.contains(&r) {
        return false;
    }
    let mut any = false;
    for op in &cx.f.ops {
        if !op.operands.contains(&r) {
            continue;
        }
        any = true;
        let ucx = Cx { op, ..*cx };
        let weight_def = op
            .operands
            .get(1)
            .and_then(|w| cx.f.ops.iter().find(|o| o.results.contains(w)));
        let ok = op.operands.first() == Some(&r)
            && op.operands[1..].iter().all(|&v| v != r)
            && kernel_call_wanted(u, &ucx)
            && weight_def.is_some_and(|d| is_quantized_resource(&Cx { op: d, ..*cx }))
            && {
                let wty = cx.f.ty(op.operands[1]);
                wty.elem
                    .as_quant()
                    .is_some_and(|w| accept(w, afmt, weight_k(wty)))
            };
        if !ok {
            return false;
        }
    }
    any
}

/// `quant.quantize` of `ins[0]` to `format` as a [`KernelOp::FakeQuant`] call: the f32 values after
/// quantization and dequantization, in the input's shape.
fn fake_quant<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    format: QuantType,
    ins: &[Lv<'c, 'b>],
) -> R<V<'c, 'b>> {
    let Lv::Plain(x) = ins[0] else {
        return Err("quantize takes a plain tensor".into());
    };
    let x = u.convert(x, El::F32)?;
    u.quantize_inputs.borrow_mut().push((cx.op.results[0], x));
    let shape = u.shape(&x);
    let n: u64 = shape.iter().product();
    let k = shape.last().copied().unwrap_or(1);
    let amax = cx.op.attr("amax").and_then(QAttr::as_f64).map(|a| a as f32);
    let x1 = u.reshape(x, &[n])?;
    let call = KernelCall {
        symbol: format!("qc_fquant_{}", u.calls.borrow().len()),
        op: KernelOp::FakeQuant { format, amax },
        m: n,
        n,
        k,
        loc: cx.op.loc.clone(),
    };
    let y = emit_call(u, call, &[x1], &[n])?;
    u.reshape(y, &shape)
}

/// `quant.matmul {transpose_b}` of `x` by the quantized constant defined by op `def` as a kernel call
/// (see [`KernelCall`]): `x` collapsed to `[M, K]`, handed over as a memref with a fresh `[M, N]`
/// output, the result expanded back to `shape` and converted to `e`.
fn kernel_call<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    x: V<'c, 'b>,
    def: usize,
    shape: &[u64],
    e: El,
    act_quant: Option<ActQuant>,
) -> R<V<'c, 'b>> {
    let wop = &cx.f.ops[def];
    let Some(QAttr::DenseResource(resource)) = wop.attr("value") else {
        return Err("internal error: a deferred weight is not a resource constant".into());
    };
    let wty = cx.f.ty(wop.results[0]);
    let format = wty
        .elem
        .as_quant()
        .cloned()
        .ok_or("the weight is not quantized")?;
    let ws = wty
        .static_shape()
        .ok_or_else(|| format!("the weight's type {wty} is not static"))?;
    let (n, k) = (ws[0], ws[1]);
    let xs = u.shape(&x);
    if xs.last() != Some(&k) {
        return Err(format!(
            "the activations {} do not end in K = {k}",
            dims_text(&xs)
        ));
    }
    let m: u64 = xs[..xs.len() - 1].iter().product();
    let x2 = u.reshape(x, &[m, k])?;
    let call = KernelCall {
        symbol: format!("qc_matmul_{}", u.calls.borrow().len()),
        op: KernelOp::QuantMatmul {
            resource: resource.clone(),
            format,
            act_quant,
        },
        m,
        n,
        k,
        loc: cx.op.loc.clone(),
    };
    let y = emit_call(u, call, &[x2], &[m, n])?;
    let y = u.reshape(y, shape)?;
    u.convert(y, e)
}

/// Appends `call` of the external function (its inputs `ins` handed over as memrefs of the call's
/// types, then a fresh output buffer) and returns the output as an f32 tensor of shape `out`.
fn emit_call<'c, 'b>(
    u: &U<'c, 'b>,
    call: KernelCall,
    ins: &[V<'c, 'b>],
    out: &[u64],
) -> R<V<'c, 'b>> {
    let types = call.memref_types();
    let build = |op: OperationBuilder<'c>, what: &str| -> R<Option<Value<'c, 'b>>> {
        let op = op
            .build()
            .map_err(|e| format!("building {what} failed: {e}"))?;
        let op = u.block.append_operation(op);
        Ok(op.result(0).ok().map(Into::into))
    };
    let mut operands = Vec::new();
    for (x, t) in ins.iter().zip(&types) {
        operands.push(
            build(
                OperationBuilder::new("bufferization.to_buffer", u.loc)
                    .add_operands(&[x.v])
                    .add_attributes(&[(
                        Identifier::new(u.ctx, "read_only"),
                        Attribute::unit(u.ctx),
                    )])
                    .add_results(&[parse_type(u.ctx, t)?]),
                "bufferization.to_buffer",
            )?
            .ok_or("no buffer")?,
        );
    }
    let ym = build(
        OperationBuilder::new("memref.alloc", u.loc)
            .add_attributes(&[
                (
                    Identifier::new(u.ctx, "alignment"),
                    parse_attr(u.ctx, "64 : i64")?,
                ),
                (
                    Identifier::new(u.ctx, "operandSegmentSizes"),
                    parse_attr(u.ctx, "array<i32: 0, 0>")?,
                ),
            ])
            .add_results(&[parse_type(u.ctx, types.last().ok_or("no types")?)?]),
        "memref.alloc",
    )?
    .ok_or("no allocation")?;
    operands.push(ym);
    build(
        OperationBuilder::new("func.call", u.loc)
            .add_operands(&operands)
            .add_attributes(&[(
                Identifier::new(u.ctx, "callee"),
                parse_attr(u.ctx, &format!("@{}", call.symbol))?,
            )]),
        "func.call",
    )?;
    let y = build(
        OperationBuilder::new("bufferization.to_tensor", u.loc)
            .add_operands(&[ym])
            .add_attributes(&[
                (Identifier::new(u.ctx, "restrict"), Attribute::unit(u.ctx)),
                (Identifier::new(u.ctx, "writable"), Attribute::unit(u.ctx)),
            ])
            .add_results(&[u.ty(out, El::F32)?]),
        "bufferization.to_tensor",
    )?
    .ok_or("no tensor")?;
    u.calls.borrow_mut().push(call);
    Ok(u.wrap(y, out, El::F32))
}

/// An f32 `nn.matmul` as a [`KernelOp::Sgemm`] call, when its shapes are of the two handled kinds
/// (see [`ExportOptions::float_matmul_calls`]); `None` otherwise.
fn sgemm_call<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    x: V<'c, 'b>,
    y: V<'c, 'b>,
    out: &[u64],
) -> R<Option<V<'c, 'b>>> {
    let (xs, ys) = (u.shape(&x), u.shape(&y));
    if x.e != El::F32 || y.e != El::F32 || xs.len() < 2 || ys.len() < 2 {
        return Ok(None);
    }
    let (m, k) = (xs[xs.len() - 2], xs[xs.len() - 1]);
    let (k2, n) = (ys[ys.len() - 2], ys[ys.len() - 1]);
    if k != k2 || m == 0 || n == 0 || k == 0 {
        return Ok(None);
    }
    let (batch, m, shared_b) = if ys.len() == 2 {
        (1, xs[..xs.len() - 1].iter().product::<u64>(), true)
    } else if xs.len() == ys.len() && xs[..xs.len() - 2] == ys[..ys.len() - 2] {
        (xs[..xs.len() - 2].iter().product::<u64>(), m, false)
    } else {
        return Ok(None);
    };
    let a = u.reshape(x, &[batch, m, k])?;
    let b = u.reshape(y, &[if shared_b { 1 } else { batch }, k, n])?;
    let call = KernelCall {
        symbol: format!("qc_sgemm_{}", u.calls.borrow().len()),
        op: KernelOp::Sgemm { batch, shared_b },
        m,
        n,
        k,
        loc: cx.op.loc.clone(),
    };
    let c = emit_call(u, call, &[a, b], &[batch, m, n])?;
    u.reshape(c, out).map(Some)
}

/// The `[rows, len]` view of `x` for a row kernel call over its last axis `axis`
/// ([`ExportOptions::row_kernel_calls`]): `None` when row calls are off, `x` is not f32, `axis` is
/// not the last or the tensor is empty.
fn row_view<'c, 'b>(u: &U<'c, 'b>, x: V<'c, 'b>, axis: usize) -> R<Option<(V<'c, 'b>, u64, u64)>> {
    let s = u.shape(&x);
    if !u.row_calls || x.e != El::F32 || axis + 1 != s.len() {
        return Ok(None);
    }
    let len = s[axis];
    let rows: u64 = s[..axis].iter().product();
    if len == 0 || rows == 0 {
        return Ok(None);
    }
    Ok(Some((u.reshape(x, &[rows, len])?, rows, len)))
}

/// Softmax or log-softmax of `x` over `axis` as a [`KernelOp::Softmax`] call, when
/// [`row_view`] allows it.
fn softmax_call<'c, 'b>(
    u: &U<'c, 'b>,
    cx: &Cx,
    x: V<'c, 'b>,
    axis: usize,
    log: bool,
) -> R<Option<V<'c, 'b>>> {
    let shape = u.shape(&x);
    let Some((x2, rows, len)) = row_view(u, x, axis)? else {
        return Ok(None);
    };
    let kind = if log { "log_softmax" } else { "softmax" };
    let call = KernelCall {
        symbol: format!("qc_{kind}_{}", u.calls.borrow().len()),
        op: KernelOp::Softmax { log },
        m: rows,
        n: len,
        k: len,
        loc: cx.op.loc.clone(),
    };
    let y = emit_call(u, call, &[x2], &[rows, len])?;
    u.reshape(y, &shape).map(Some)
}

/// Whether a layer normalization's scale or bias `v` can be a row kernel's `[len]` vector: f32,
/// every dimension but the last 1, the last `len` or 1 (or a scalar).
fn is_row_vector(u: &U, v: &V, len: u64) -> bool {
    let s = u.shape(v);
    let last = s.last().copied().unwrap_or(1);
    v.e == El::F32 && s.iter().rev().skip(1).all(|&d| d == 1) && (last == len || last == 1)
}

/// `v` (of a shape [`is_row_vector`] accepts) as an f32 `[len]` vector: reshaped, or broadcast
/// from its one element.
fn row_vector<'c, 'b>(u: &U<'c, 'b>, v: V<'c, 'b>, len: u64) -> R<V<'c, 'b>> {
    if u.shape(&v).last().copied().unwrap_or(1) == len {
        return u.reshape(v, &[len]);
    }
    let v1 = u.reshape(v, &[1])?;
    u.ew(&[v1], &[len], El::F32, |_| Ok(0))
}

/// `nn.layer_norm` as a [`KernelOp::LayerNorm`] call, when [`row_view`] allows it (the axis is the
/// last one alone) and [`is_row_vector`] its scale and bias.
fn layer_norm_call<'c, 'b>(u: &U<'c, 'b>, cx: &Cx, ins: &[V<'c, 'b>]) -> R<Option<V<'c, 'b>>> {
    let x = ins[0];
    let shape = u.shape(&x);
    if !u.row_calls || shape.is_empty() {
        return Ok(None);
    }
    let axis = norm_axis(cx.int_attr("axis", -1), shape.len())?;
    let len = shape[shape.len() - 1];
    // Checked before any op is emitted: a refused call leaves nothing behind.
    if !is_row_vector(u, &ins[1], len) || !is_row_vector(u, &ins[2], len) {
        return Ok(None);
    }
    let Some((x2, rows, len)) = row_view(u, x, axis)? else {
        return Ok(None);
    };
    let (scale, bias) = (row_vector(u, ins[1], len)?, row_vector(u, ins[2], len)?);
    let call = KernelCall {
        symbol: format!("qc_layernorm_{}", u.calls.borrow().len()),
        op: KernelOp::LayerNorm {
            epsilon: cx.f_attr("epsilon", 1e-5) as f32,
        },
        m: rows,
        n: len,
        k: len,
        loc: cx.op.loc.clone(),
    };
    let y = emit_call(u, call, &[x2, scale, bias], &[rows, len])?;
    u.reshape(y, &shape).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_ir::{parse_module, Registry, Source};

    fn parse(text: &str) -> qc_ir::Module {
        let mut r = Registry::new();
        r.register(qc_nn::dialect());
        r.register(qc_quant::ops::dialect());
        parse_module(text, &Source::named("case"), &r).unwrap_or_else(|d| panic!("{d:?}"))
    }

    fn module(fmt: &str, shape: &str) -> qc_ir::Module {
        parse(&format!(
            "func.func @main(%x: tensor<{shape}xf32>) -> tensor<{shape}xf32> {{
  %q = quant.quantize %x {{amax = 2.75}} : (tensor<{shape}xf32>) -> tensor<{shape}x!quant.{fmt}>
  %y = quant.dequantize %q : (tensor<{shape}x!quant.{fmt}>) -> tensor<{shape}xf32>
  return %y : tensor<{shape}xf32>
}}"
        ))
    }

    #[test]
    fn quantize_calls_make_fake_quant_calls_of_the_flattened_tensor() {
        let accept: &dyn Fn(&QuantType) -> bool = &|_| true;
        let opts = ExportOptions {
            quantize_calls: Some(accept),
            ..ExportOptions::default()
        };
        let b = ShapeBindings::new();
        let m = module("nvfp4", "2x3x32");
        let out = export_module_with(&m, "main", &b, &opts).unwrap();
        assert_eq!(out.calls.len(), 1);
        let c = &out.calls[0];
        assert_eq!(c.symbol, "qc_fquant_0");
        assert!(
            matches!(&c.op, KernelOp::FakeQuant { amax: Some(a), .. } if *a == 2.75),
            "{:?}",
            c.op
        );
        assert_eq!((c.m, c.n, c.k), (192, 192, 32));
        assert_eq!(c.memref_types(), ["memref<192xf32>", "memref<192xf32>"]);
        assert!(out.text.contains("call @qc_fquant_0"), "{}", out.text);
        // Without the option, and for what the calls cannot express (per-channel scales), the op is
        // refused as before.
        for (opts, fmt, shape) in [
            (&ExportOptions::default(), "nvfp4", "2x3x32"),
            (&opts, "int8_channel", "4x32"),
        ] {
            let e = export_module_with(&module(fmt, shape), "main", &b, opts).unwrap_err();
            assert!(e.message.contains("cannot export quant.quantize"), "{e}");
        }
    }

    /// `quant.matmul` of a `quant.quantize` (int8, static amax) by a quantized constant: with
    /// `act_quant_calls` the kernel call takes the unquantized x and the quantization, and the
    /// fake-quant call is left out unless something else reads the quantized tensor.
    #[test]
    fn act_quant_calls_fold_the_activation_quantization_into_the_kernel_call() {
        let text = |also_dequantized: bool| {
            let (ret_ty, ret, d) = if also_dequantized {
                (
                    "tensor<3x2xf32>, tensor<3x4xf32>",
                    "%y, %d : tensor<3x2xf32>, tensor<3x4xf32>",
                    "%d = quant.dequantize %q : (tensor<3x4x!quant.int8>) -> tensor<3x4xf32>",
                )
            } else {
                ("tensor<3x2xf32>", "%y : tensor<3x2xf32>", "")
            };
            format!(
                "func.func @main(%x: tensor<3x4xf32>) -> ({ret_ty}) {{
  %w = qc.constant {{value = dense_resource<w>}} : () -> tensor<2x4x!quant.int8>
  %q = quant.quantize %x {{amax = 2.0}} : (tensor<3x4xf32>) -> tensor<3x4x!quant.int8>
  %y = quant.matmul %q, %w {{transpose_b}} : (tensor<3x4x!quant.int8>, tensor<2x4x!quant.int8>) -> tensor<3x2xf32>
  {d}
  return {ret}
}}"
            )
        };
        let yes: &dyn Fn(&QuantType) -> bool = &|_| true;
        let pair: &ActQuantFilter = &|_, _, _| true;
        let with = ExportOptions {
            kernel_calls: Some(yes),
            quantize_calls: Some(yes),
            act_quant_calls: Some(pair),
            ..ExportOptions::default()
        };
        let without = ExportOptions {
            act_quant_calls: None,
            kernel_calls: Some(yes),
            quantize_calls: Some(yes),
            ..ExportOptions::default()
        };
        let b = ShapeBindings::new();
        for (also, opts, folded, fquant) in [
            (false, &with, true, false),
            (true, &with, true, true),
            (false, &without, false, true),
        ] {
            let out = export_module_with(&parse(&text(also)), "main", &b, opts).unwrap();
            let mm: Vec<_> = out
                .calls
                .iter()
                .filter_map(|c| match &c.op {
                    KernelOp::QuantMatmul { act_quant, .. } => Some(act_quant.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(mm.len(), 1, "{also} {folded}: {:?}", out.calls);
            assert_eq!(
                mm[0].as_ref().map(|a| (a.amax, a.format.to_string())),
                folded.then(|| (2.0, "!quant.int8".to_string())),
                "{also} {folded}"
            );
            let has_fquant = out
                .calls
                .iter()
                .any(|c| matches!(c.op, KernelOp::FakeQuant { .. }));
            assert_eq!(has_fquant, fquant, "{also} {folded}: {:?}", out.calls);
        }
    }

    /// With `row_kernel_calls`, softmax and log-softmax over the last axis and layer normalization
    /// over the last axis alone become row kernel calls on `[rows, len]` views (scale and bias as
    /// `[len]` vectors, a scalar bias broadcast); other axes keep the `linalg` ops, and without the
    /// option nothing changes.
    #[test]
    fn row_kernel_calls_take_softmax_and_layer_norm_over_the_last_axis() {
        let m = parse(
            "func.func @main(%x: tensor<2x3x8xf32>, %s: tensor<1x8xf32>, %b: tensor<f32>) -> (tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>) {
  %y0 = nn.softmax %x {axis = -1} : (tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %y1 = nn.log_softmax %x {axis = 2} : (tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %y2 = nn.softmax %x {axis = 1} : (tensor<2x3x8xf32>) -> tensor<2x3x8xf32>
  %y3 = nn.layer_norm %x, %s, %b {axis = -1, epsilon = 1e-3} : (tensor<2x3x8xf32>, tensor<1x8xf32>, tensor<f32>) -> tensor<2x3x8xf32>
  %y4 = nn.layer_norm %x, %s, %b {axis = 1, epsilon = 1e-3} : (tensor<2x3x8xf32>, tensor<1x8xf32>, tensor<f32>) -> tensor<2x3x8xf32>
  return %y0, %y1, %y2, %y3, %y4 : tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>, tensor<2x3x8xf32>
}",
        );
        let b = ShapeBindings::new();
        let opts = ExportOptions {
            row_kernel_calls: true,
            ..ExportOptions::default()
        };
        let out = export_module_with(&m, "main", &b, &opts).unwrap();
        let calls: Vec<(&str, &KernelOp, u64, u64)> = out
            .calls
            .iter()
            .map(|c| (c.symbol.as_str(), &c.op, c.m, c.n))
            .collect();
        assert_eq!(
            calls,
            [
                ("qc_softmax_0", &KernelOp::Softmax { log: false }, 6, 8),
                ("qc_log_softmax_1", &KernelOp::Softmax { log: true }, 6, 8),
                (
                    "qc_layernorm_2",
                    &KernelOp::LayerNorm { epsilon: 1e-3 },
                    6,
                    8
                ),
            ]
        );
        assert_eq!(
            out.calls[2].memref_types(),
            [
                "memref<6x8xf32>",
                "memref<8xf32>",
                "memref<8xf32>",
                "memref<6x8xf32>"
            ]
        );
        assert!(
            out.text.contains(
                "func.func private @qc_layernorm_2(memref<6x8xf32>, memref<8xf32>, memref<8xf32>, memref<6x8xf32>)"
            ),
            "{}",
            out.text
        );
        // The other axes: linalg (the softmax over axis 1, the normalization over axes 1 and 2).
        assert!(out.text.contains("math.exp"), "{}", out.text);
        assert!(out.text.contains("math.sqrt"), "{}", out.text);
        // Without the option: no calls, the same text as the plain export.
        let plain = export_module_with(&m, "main", &b, &ExportOptions::default()).unwrap();
        assert!(plain.calls.is_empty());
        assert_eq!(plain.text, export_module(&m, "main", &b).unwrap());
        assert!(!plain.text.contains("call @"), "{}", plain.text);
    }
}

//! The launch plan of an NVIDIA artifact (`qc_runtime::cuda::plan`), made from the host program that
//! MLIR's GPU pipeline leaves (`host.mlir`, function `@main`), and the weights part its buffers read.
//!
//! The host program is a straight line of a few ops, each resolved here to buffers, byte offsets and
//! immediates, so the executor needs no MLIR:
//! - `arith.constant` (index, integer, i1 and f16/bf16/f32/f64 scalars): immediates;
//! - function arguments: the inputs (one buffer each, filled from the caller's row-major tensors), then
//!   the constants passed as arguments (`Exported::constant_args`, buffers of the weights part);
//! - `memref.get_global`: a buffer of the weights part holding the global's `dense` value (one buffer
//!   per global, however often it is read);
//! - `memref.alloc`: an uninitialized buffer;
//! - `memref.expand_shape`, `memref.collapse_shape`, `memref.cast`, `memref.subview` and
//!   `memref.reinterpret_cast`: views (buffer, element offset, sizes, strides) of an existing buffer;
//! - `memref.copy` of two contiguous views of equal size: a copy step;
//! - `gpu.launch_func`: a launch step whose parameters follow MLIR's GPU calling convention: a memref
//!   is its expanded descriptor (allocated pointer, aligned pointer, offset, sizes, strides; the
//!   pointers are the buffer's address, the offset in elements), any other value its bits. The count
//!   and sizes are checked against the kernel's `.entry` in the PTX;
//! - `call @qc_matmul_<i>(x, y)` (a quantized product left to qc's own kernels, [`GpuCall`]): either
//!   two launches of the 4-bit GEMV kernels of `qc_backend_ptx::gemv4` (partial sums into a scratch
//!   buffer, then the reduction into `y`, 256-thread blocks) or one launch of the tensor-core GEMM
//!   of `qc_backend_ptx::mma4` (a warp per 32 x 32 tile of `y`, 128-thread blocks), reading the
//!   weight's blob and the decoding tables from the weights part;
//! - `call @qc_fquant_<i>(x, y)` (an activation quantization, [`FquantCall`]): one launch of a
//!   fake-quantization kernel of `qc_backend_ptx::fquant` (per tensor: one thread per element;
//!   block-scaled formats: one thread per block);
//! - `call @qc_sgemm_<i>(a, b, c)` (an f32 product, [`SgemmCall`]): one launch of the tensor-core
//!   f32 GEMM of `qc_backend_ptx::mmaf` (a warp per 32 x 32 tile of each batch element's `c`);
//! - `call @qc_softmax_<i>(x, y)`, `@qc_log_softmax_<i>(x, y)` and `@qc_layernorm_<i>(x, scale,
//!   bias, y)` (rows of `x[M, N]`, [`RowCall`]): one launch of a row kernel of
//!   `qc_backend_ptx::rows` (a warp per row, `M * 32` threads in blocks of `rows::BLOCK`);
//! - `return` of contiguous views: the outputs.
//!
//! Anything else is an error naming the op (the model cannot be compiled for the GPU yet).
//!
//! Elements are stored as LLVM lays them out: a whole number of bytes each (i1 and the 4- and 6-bit
//! types take one byte, the value in the low bits), which is also how MLIR's `dense` hex strings store
//! them. The weights part puts each buffer's bytes at a multiple of 64 bytes.

use std::collections::BTreeMap;

use qc_runtime::cuda::plan::{Buffer, Init, Param, Plan, Range, Step, FORMAT};

/// The launch plan part.
pub const PLAN: &str = "launch_plan.json";
/// The weights part: the bytes of the buffers the plan initializes from constants.
pub const WEIGHTS: &str = "weights.bin";

/// A memref type: static sizes and the bytes of one element; `strides`/`offset` when the type has a
/// static strided layout (`None` for dynamic or absent layouts).
#[derive(Clone, Debug, PartialEq)]
struct MemType {
    sizes: Vec<u64>,
    elem: u64,
}

/// A view of a buffer.
#[derive(Clone, Debug, PartialEq)]
struct View {
    buffer: usize,
    /// Offset in elements.
    offset: u64,
    sizes: Vec<u64>,
    strides: Vec<u64>,
    elem: u64,
}

impl View {
    fn contiguous(&self) -> bool {
        row_major(&self.sizes) == self.strides || self.sizes.iter().product::<u64>() <= 1
    }
    fn elements(&self) -> u64 {
        self.sizes.iter().product()
    }
    fn range(&self) -> Range {
        Range {
            buffer: self.buffer,
            offset: self.offset * self.elem,
            bytes: self.elements() * self.elem,
        }
    }
}

#[derive(Clone, Debug)]
enum Val {
    /// An immediate: its bits and its size in bytes.
    Scalar(u64, u8),
    Mem(View),
}

fn row_major(sizes: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; sizes.len()];
    for i in (0..sizes.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * sizes[i + 1];
    }
    s
}

/// Bytes of one element of MLIR type `t` as LLVM stores it.
fn elem_bytes(t: &str) -> Option<u64> {
    let bits: u64 = match t {
        "index" => 64,
        "f16" | "bf16" => 16,
        "f32" | "tf32" => 32,
        "f64" => 64,
        _ if t.starts_with("f8") => 8,
        _ if t.starts_with("f6") => 6,
        _ if t.starts_with("f4") => 4,
        _ => t
            .strip_prefix('i')
            .or_else(|| t.strip_prefix("ui"))?
            .parse()
            .ok()?,
    };
    Some(bits.div_ceil(8).next_power_of_two())
}

/// Parses `memref<2x3xf32, ...>` (the layout is not needed: views carry their own strides).
fn mem_type(t: &str) -> Result<MemType, String> {
    let inner = t
        .trim()
        .strip_prefix("memref<")
        .and_then(|s| s.strip_suffix('>'))
        .ok_or_else(|| format!("not a memref type: {t}"))?;
    let first = split_top(inner)[0];
    let mut parts: Vec<&str> = first.split('x').collect();
    let el = parts.pop().unwrap_or_default();
    let sizes = parts
        .iter()
        .map(|d| {
            d.parse::<u64>()
                .map_err(|_| format!("a dynamic or bad size in {t}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let elem = elem_bytes(el).ok_or_else(|| format!("unknown element type in {t}"))?;
    Ok(MemType { sizes, elem })
}

/// Splits `s` at the commas outside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '<' | '{' => depth += 1,
            ')' | ']' | '>' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

/// The text between `open` (which ends with an opening bracket) and its match in `s`.
fn bracketed<'a>(s: &'a str, open: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let mut depth = 1;
    for (i, c) in s[start..].char_indices() {
        match c {
            '(' | '[' | '<' | '{' => depth += 1,
            ')' | ']' | '>' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The bits of scalar `text` of MLIR type `ty` (as `arith.constant` and `dense` print it), and its
/// size in bytes.
fn scalar_bits(text: &str, ty: &str) -> Result<(u64, u8), String> {
    let text = text.trim();
    let bytes = elem_bytes(ty).ok_or_else(|| format!("unknown scalar type {ty}"))? as u8;
    let bad = || format!("cannot read the {ty} constant {text}");
    if let Some(h) = text.strip_prefix("0x") {
        return Ok((u64::from_str_radix(h, 16).map_err(|_| bad())?, bytes));
    }
    let bits = match ty {
        "f32" => text.parse::<f32>().map_err(|_| bad())?.to_bits() as u64,
        "f64" => text.parse::<f64>().map_err(|_| bad())?.to_bits(),
        "f16" => half::f16::from_f64(text.parse::<f64>().map_err(|_| bad())?).to_bits() as u64,
        "bf16" => half::bf16::from_f64(text.parse::<f64>().map_err(|_| bad())?).to_bits() as u64,
        _ if ty.starts_with('f') => {
            let x = text.parse::<f64>().map_err(|_| bad())?;
            minifloat_code(ty, x).ok_or_else(|| format!("{text} is not a {ty} value"))? as u64
        }
        _ => {
            let v: i128 = match text {
                "true" => 1,
                "false" => 0,
                _ => text.parse().map_err(|_| bad())?,
            };
            let width = if ty == "index" {
                64
            } else {
                ty.trim_start_matches("ui")
                    .trim_start_matches('i')
                    .parse::<u32>()
                    .map_err(|_| bad())?
            };
            (v as u64) & (u64::MAX >> (64 - width.min(64)))
        }
    };
    Ok((bits, bytes))
}

/// The code of `x` in MLIR's minifloat type `ty` (`f4E2M1FN`, `f6E2M3FN`, `f6E3M2FN`, `f8E4M3FN`,
/// `f8E5M2`, `f8E8M0FNU`): the code of the nearest value (MLIR prints these values with 7 significant
/// digits, which round back to the value; a NaN gives the type's NaN code). `None` when `x` is not
/// within a relative 1e-5 of a value of the type.
fn minifloat_code(ty: &str, x: f64) -> Option<u8> {
    // (exponent bits, mantissa bits, bias, IEEE-style inf/NaN, NaN code)
    let (e, m, bias, ieee, nan): (u32, u32, i32, bool, Option<u32>) = match ty {
        "f4E2M1FN" => (2, 1, 1, false, None),
        "f6E2M3FN" => (2, 3, 1, false, None),
        "f6E3M2FN" => (3, 2, 3, false, None),
        "f8E4M3FN" => (4, 3, 7, false, Some(0x7F)),
        "f8E5M2" => (5, 2, 15, true, Some(0x7F)),
        // Unsigned, 2^(code - 127), 0xFF is NaN.
        "f8E8M0FNU" => (8, 0, 127, false, Some(0xFF)),
        _ => return None,
    };
    if x.is_nan() {
        return nan.map(|c| c as u8);
    }
    let unsigned = ty == "f8E8M0FNU";
    let bits = e + m + (!unsigned) as u32;
    let decode = |c: u32| -> f64 {
        if unsigned {
            return (2f64).powi(c as i32 - bias);
        }
        let sign = if c >> (e + m) & 1 == 1 { -1.0 } else { 1.0 };
        let ex = (c >> m) & ((1 << e) - 1);
        let man = (c & ((1 << m) - 1)) as f64 / (1u32 << m) as f64;
        if ieee && ex == (1 << e) - 1 {
            return if man == 0.0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            };
        }
        if ex == 0 {
            sign * man * (2f64).powi(1 - bias)
        } else {
            sign * (1.0 + man) * (2f64).powi(ex as i32 - bias)
        }
    };
    let (c, v) = (0..1u32 << bits)
        .filter(|&c| nan != Some(c) && nan.map(|n| n | 0x80) != Some(c))
        .map(|c| (c, decode(c)))
        .filter(|(_, v)| !v.is_nan() && (*v != 0.0 || v.is_sign_negative() == x.is_sign_negative()))
        .min_by(|a, b| (a.1 - x).abs().total_cmp(&(b.1 - x).abs()))?;
    (v == x || (v - x).abs() <= 1e-5 * x.abs()).then_some(c as u8)
}

/// The bytes of `dense<...>` (the text inside the angle brackets) for `n` elements of type `ty`.
fn dense_bytes(inner: &str, ty: &str, n: u64) -> Result<Vec<u8>, String> {
    let eb = elem_bytes(ty).ok_or_else(|| format!("unknown element type {ty}"))? as usize;
    let n = n as usize;
    let inner = inner.trim();
    if let Some(h) = inner.strip_prefix("\"0x").and_then(|s| s.strip_suffix('"')) {
        if h.len() % 2 != 0 {
            return Err("odd hex string".into());
        }
        let bytes: Vec<u8> = (0..h.len() / 2)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| "bad hex string".to_string())?;
        if ty == "i1" {
            // MLIR packs i1 hex strings 8 to a byte, lowest bit first; LLVM stores a byte each.
            if bytes.len() != n.div_ceil(8) {
                return Err(format!("{} bytes of hex for {n} i1 values", bytes.len()));
            }
            return Ok((0..n).map(|i| bytes[i / 8] >> (i % 8) & 1).collect());
        }
        return if bytes.len() == n * eb {
            Ok(bytes)
        } else if bytes.len() == eb {
            Ok(bytes.repeat(n))
        } else {
            Err(format!(
                "a hex value of {} bytes for {n} elements of {ty}",
                bytes.len()
            ))
        };
    }
    let flat: String = inner.chars().filter(|c| *c != '[' && *c != ']').collect();
    let items: Vec<&str> = flat.split(',').map(str::trim).collect();
    let items: Vec<&str> = if items.len() == 1 && n != 1 {
        vec![items[0]; n]
    } else {
        items
    };
    if items.len() != n {
        return Err(format!("{} values for {n} elements", items.len()));
    }
    let mut out = Vec::with_capacity(n * eb);
    for it in items {
        let (bits, _) = scalar_bits(it, ty)?;
        out.extend_from_slice(&bits.to_le_bytes()[..eb]);
    }
    Ok(out)
}

/// The `.param` sizes of the `.entry` `entry` in `ptx`, in order.
pub fn entry_params(ptx: &str, entry: &str) -> Result<Vec<u64>, String> {
    let head = format!(".entry {entry}(");
    let list = bracketed(ptx, &head).ok_or_else(|| format!("the PTX has no .entry {entry}"))?;
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let words: Vec<&str> = p.split_whitespace().collect();
            if let Some(arr) = words.last().and_then(|w| w.split_once('[')) {
                let n: u64 = arr
                    .1
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| p.to_string())?;
                return Ok(n);
            }
            let ty = words
                .iter()
                .find(|w| {
                    w.len() >= 3
                        && w.starts_with('.')
                        && matches!(&w[1..2], "u" | "s" | "b" | "f")
                        && w[2..].parse::<u32>().is_ok()
                })
                .ok_or_else(|| format!("cannot read the parameter `{p}`"))?;
            Ok(ty[2..].parse::<u64>().unwrap() / 8)
        })
        .collect()
}

/// A quantized product that the host program calls (`call @symbol(x[M, K], y[M, N])`) and that runs
/// qc's 4-bit GEMV kernels (`qc_backend_ptx::gemv4`).
pub struct GpuCall<'a> {
    /// The called function.
    pub symbol: String,
    /// The weight's resource (calls of one weight share its buffer).
    pub resource: String,
    /// The weight's `qc_quant::blob` bytes.
    pub blob: &'a [u8],
    /// Byte offset of the scales in the blob.
    pub scales_offset: u64,
    /// The kernels' decoding tables (`Gemv4::tables`, f32 little-endian).
    pub tables: Vec<u8>,
    /// The reduction's `post` factor.
    pub post: f32,
    /// Rows of x, weight rows, reduction length.
    pub m: u64,
    /// Weight rows (outputs per activation row).
    pub n: u64,
    /// Reduction length.
    pub k: u64,
    /// The PTX module of the kernels (part `<module>.ptx`).
    pub module: String,
    /// Which kernels run the product.
    pub kernel: ProductKernel,
    /// When set, `x` is first fake-quantized into a scratch buffer by this kernel (an activation
    /// quantization that the product's kernel does not do itself), and the product reads that.
    pub act_pre: Option<FquantCall>,
}

/// The kernels of a [`GpuCall`].
pub enum ProductKernel {
    /// `qc_backend_ptx::gemv4`: partial sums over slices of `slice` elements (`Gemv4::slice`) into a
    /// scratch buffer, then the reduction into `y`.
    Gemv {
        /// Elements per slice.
        slice: u64,
        /// The partial-sums entry (`gemv4::PARTIAL`).
        partial: String,
        /// The reduction entry (`gemv4::REDUCE`).
        reduce: String,
    },
    /// `qc_backend_ptx::mma4`, `mma8` or `wgmma8`: one launch, `tile_threads` threads (a warp or a
    /// warpgroup) per `tile` x `tile` block of `y`.
    Mma {
        /// The entry (`mma4::ENTRY`, `mma8::ENTRY`, `wgmma8::ENTRY`).
        entry: String,
        /// Rows and columns of `y` per tile (`mma4::WARP_TILE`, `wgmma8::TILE`).
        tile: u64,
        /// Threads per tile (32, or 128 for a warpgroup).
        tile_threads: u64,
        /// Threads per block (`mma4::BLOCK`).
        block: u32,
        /// The FP8 GEMMs' activation scale (their last parameter).
        act_scale: Option<f32>,
    },
}

/// An activation quantization that the host program calls (`call @symbol(x[n], y[n])`) and that runs
/// qc's per-tensor fake-quantization kernel (`qc_backend_ptx::fquant`).
pub struct FquantCall {
    /// The called function.
    pub symbol: String,
    /// Elements.
    pub n: u64,
    /// The kernel's f32 parameter: the scale (`fquant::ENTRY`) or the static tensor maximum
    /// (`fquant::BLOCK_ENTRY`).
    pub scale: f32,
    /// Elements per thread: 1, or the block of a block-scaled format.
    pub per_thread: u64,
    /// The PTX module of the kernel (part `<module>.ptx`).
    pub module: String,
    /// Its entry.
    pub entry: String,
}

/// An f32 product that the host program calls (`call @symbol(a[B, M, K], b[B', K, N], c[B, M, N])`)
/// and that runs qc's tensor-core f32 GEMM (`qc_backend_ptx::mmaf`).
pub struct SgemmCall {
    /// The called function.
    pub symbol: String,
    /// B.
    pub batch: u64,
    /// Whether one right-hand matrix serves every batch element (B' = 1).
    pub shared_b: bool,
    /// Rows of each left-hand matrix.
    pub m: u64,
    /// Columns of each right-hand matrix.
    pub n: u64,
    /// The reduction length.
    pub k: u64,
    /// The PTX module of the kernel (part `<module>.ptx`).
    pub module: String,
    /// Its entry (`mmaf::ENTRY`).
    pub entry: String,
    /// Rows and columns of `c` per warp (`mma4::WARP_TILE`).
    pub tile: u64,
    /// Threads per block (`mmaf::BLOCK`).
    pub block: u32,
}

/// A softmax, log-softmax or layer normalization over the last axis that the host program calls
/// (`call @symbol(x[M, N], y[M, N])`, or `call @symbol(x[M, N], scale[N], bias[N], y[M, N])` for a
/// layer normalization) and that runs one of qc's row kernels (`qc_backend_ptx::rows`).
pub struct RowCall {
    /// The called function.
    pub symbol: String,
    /// Rows (M).
    pub rows: u64,
    /// Row length (N).
    pub len: u64,
    /// The layer normalization's epsilon (the kernel's last parameter); `None` for the softmax
    /// kernels.
    pub epsilon: Option<f32>,
    /// The PTX module of the kernel (part `<module>.ptx`).
    pub module: String,
    /// Its entry (`rows::SOFTMAX`, `rows::LOG_SOFTMAX`, `rows::LAYERNORM`).
    pub entry: String,
    /// Threads per block (`rows::BLOCK`); a warp per row.
    pub block: u32,
}

/// Threads per block of the GEMV launches.
pub const GEMV_BLOCK: u32 = 256;

/// What [`plan`] needs besides the host program.
pub struct PlanInputs<'a> {
    /// The GPU target's name.
    pub target: &'a str,
    /// The weights part's name.
    pub weights: &'a str,
    /// Number of model inputs (the host function's first arguments).
    pub inputs: usize,
    /// The bytes of each constant argument, in the order of the trailing arguments.
    pub constant_args: Vec<&'a [u8]>,
    /// The PTX of each kernel module, by module name.
    pub ptx: &'a BTreeMap<String, String>,
    /// The quantized products left to qc's kernels.
    pub calls: Vec<GpuCall<'a>>,
    /// The activation quantizations left to qc's kernel.
    pub fquant: Vec<FquantCall>,
    /// The f32 products left to qc's kernel.
    pub sgemm: Vec<SgemmCall>,
    /// The softmax and layer normalizations left to qc's row kernels.
    pub rows: Vec<RowCall>,
}

struct Builder {
    buffers: Vec<Buffer>,
    weights: Vec<u8>,
}

impl Builder {
    fn buffer(&mut self, bytes: u64, init: Init) -> usize {
        self.buffers.push(Buffer {
            bytes: bytes.max(1),
            init,
        });
        self.buffers.len() - 1
    }
    fn weights(&mut self, data: &[u8]) -> usize {
        let offset = self.weights.len().next_multiple_of(64);
        self.weights.resize(offset, 0);
        self.weights.extend_from_slice(data);
        self.buffer(
            data.len() as u64,
            Init::Weights {
                offset: offset as u64,
            },
        )
    }
}

/// Most device copies one `memref.copy` may become.
pub const MAX_COPY_RUNS: u64 = 4096;

/// The copy steps of `memref.copy src, dst` (views of equal sizes): one per run of elements that is
/// contiguous in both views (the longest trailing dimensions that are row major in both), in row-major
/// order of the rest. More than [`MAX_COPY_RUNS`] runs is an error.
fn copy_runs(src: &View, dst: &View) -> Result<Vec<Step>, String> {
    if src.sizes != dst.sizes || src.elem != dst.elem {
        return Err("a copy between views of different shapes".into());
    }
    let r = src.sizes.len();
    // Trailing dimensions [inner..r) are contiguous in both views.
    let mut inner = r;
    let mut run = 1u64;
    while inner > 0 {
        let d = inner - 1;
        if src.sizes[d] != 1 && (src.strides[d] != run || dst.strides[d] != run) {
            break;
        }
        run *= src.sizes[d];
        inner = d;
    }
    let outer: u64 = src.sizes[..inner].iter().product();
    if outer > MAX_COPY_RUNS {
        return Err(format!(
            "a strided copy of {outer} runs (at most {MAX_COPY_RUNS})"
        ));
    }
    let mut steps = Vec::with_capacity(outer as usize);
    for i in 0..outer {
        // Row-major multi-index of run i over dimensions [0..inner).
        let (mut rem, mut so, mut dof) = (i, src.offset, dst.offset);
        for d in (0..inner).rev() {
            let x = rem % src.sizes[d];
            rem /= src.sizes[d];
            so += x * src.strides[d];
            dof += x * dst.strides[d];
        }
        let bytes = run * src.elem;
        steps.push(Step::Copy {
            src: Range {
                buffer: src.buffer,
                offset: so * src.elem,
                bytes,
            },
            dst: Range {
                buffer: dst.buffer,
                offset: dof * dst.elem,
                bytes,
            },
        });
    }
    Ok(steps)
}

/// Global name -> (element type, sizes, `dense` text) of the host module's `memref.global`s.
fn globals(host: &str) -> BTreeMap<String, (String, String)> {
    let mut g = BTreeMap::new();
    for line in host.lines() {
        let t = line.trim();
        if !t.starts_with("memref.global ") {
            continue;
        }
        let Some(at) = t.find('@') else { continue };
        let rest = &t[at + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.' || *c == '$')
            .collect();
        let Some((_, ty_init)) = rest.split_once(" : ") else {
            continue;
        };
        let (ty, init) = ty_init.split_once(" = ").unwrap_or((ty_init, ""));
        g.insert(name, (ty.trim().to_string(), init.trim().to_string()));
    }
    g
}

/// The launch plan and weights part of the host program `host` (module documentation).
pub fn plan(host: &str, x: &PlanInputs) -> Result<(Plan, Vec<u8>), String> {
    let mut lines = host.lines();
    let sig = lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("func.func @main("))
        .ok_or("the host program has no @main")?;
    let mut b = Builder {
        buffers: Vec::new(),
        weights: Vec::new(),
    };
    let mut vals: BTreeMap<String, Val> = BTreeMap::new();
    let args = bracketed(sig, "@main(").ok_or("bad @main signature")?;
    let args = split_top(args);
    if args.len() != x.inputs + x.constant_args.len() {
        return Err(format!(
            "@main has {} arguments; expected {} inputs and {} constants",
            args.len(),
            x.inputs,
            x.constant_args.len()
        ));
    }
    for (i, a) in args.iter().enumerate() {
        let (name, ty) = a
            .split_once(": ")
            .ok_or_else(|| format!("bad argument {a}"))?;
        // Drop argument attributes (`{...}`) after the type.
        let ty = ty.split(" {").next().unwrap_or(ty);
        let mt = mem_type(ty)?;
        let n: u64 = mt.sizes.iter().product();
        let buffer = if i < x.inputs {
            b.buffer(n * mt.elem, Init::Input { index: i })
        } else {
            let data = x.constant_args[i - x.inputs];
            if data.len() as u64 != n * mt.elem {
                return Err(format!(
                    "constant argument {} has {} bytes; {ty} needs {}",
                    i - x.inputs,
                    data.len(),
                    n * mt.elem
                ));
            }
            b.weights(data)
        };
        vals.insert(
            name.trim().to_string(),
            Val::Mem(View {
                buffer,
                offset: 0,
                strides: row_major(&mt.sizes),
                sizes: mt.sizes,
                elem: mt.elem,
            }),
        );
    }
    let globals = globals(host);
    let mut global_buffers: BTreeMap<String, usize> = BTreeMap::new();
    // Weight blobs by resource and decoding tables by PTX module, each uploaded once.
    let mut blob_buffers: BTreeMap<String, usize> = BTreeMap::new();
    let mut table_buffers: BTreeMap<String, usize> = BTreeMap::new();
    let mut steps = Vec::new();
    let mut outputs = None;
    let view = |vals: &BTreeMap<String, Val>, v: &str| -> Result<View, String> {
        match vals.get(v.trim()) {
            Some(Val::Mem(m)) => Ok(m.clone()),
            _ => Err(format!("{v} is not a known memref")),
        }
    };
    let index = |vals: &BTreeMap<String, Val>, v: &str| -> Result<u64, String> {
        let v = v.trim();
        if let Ok(n) = v.parse::<u64>() {
            return Ok(n);
        }
        match vals.get(v) {
            Some(Val::Scalar(bits, 8)) => Ok(*bits),
            _ => Err(format!("{v} is not a constant index")),
        }
    };
    for line in lines {
        if line == "  }" {
            break;
        }
        let t = line.trim();
        let (lhs, rhs) = match t.split_once(" = ") {
            Some((l, r)) if l.starts_with('%') => (Some(l.trim()), r),
            _ => (None, t),
        };
        let op: String = rhs
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
            .collect();
        let fail = |e: String| format!("host op `{op}` ({t}): {e}");
        let define = |vals: &mut BTreeMap<String, Val>, v: Val| -> Result<(), String> {
            let l = lhs.ok_or_else(|| fail("has no result".into()))?;
            vals.insert(l.to_string(), v);
            Ok(())
        };
        match op.as_str() {
            "arith.constant" => {
                let body = rhs["arith.constant".len()..].trim();
                let (v, ty) = body.rsplit_once(" : ").unwrap_or((
                    body,
                    if body == "true" || body == "false" {
                        "i1"
                    } else {
                        ""
                    },
                ));
                let (bits, n) = scalar_bits(v, ty.trim()).map_err(fail)?;
                define(&mut vals, Val::Scalar(bits, n))?;
            }
            "memref.get_global" => {
                let name = rhs
                    .split('@')
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .ok_or_else(|| fail("no global".into()))?;
                let (ty, init) = globals
                    .get(name)
                    .ok_or_else(|| fail(format!("no memref.global @{name}")))?;
                let mt = mem_type(ty).map_err(fail)?;
                let n: u64 = mt.sizes.iter().product();
                let buffer = match global_buffers.get(name) {
                    Some(&bf) => bf,
                    None => {
                        let el = bracketed(ty, "memref<")
                            .and_then(|s| {
                                split_top(s)
                                    .first()
                                    .map(|f| f.rsplit('x').next().unwrap_or(f).to_string())
                            })
                            .unwrap_or_default();
                        let data = if let Some(d) = init.strip_prefix("dense<") {
                            let inner = bracketed(init, "dense<")
                                .ok_or_else(|| fail("bad dense value".into()))?;
                            let _ = d;
                            dense_bytes(inner, &el, n).map_err(fail)?
                        } else if init.starts_with("uninitialized") || init.is_empty() {
                            vec![0u8; (n * mt.elem) as usize]
                        } else {
                            return Err(fail(format!("cannot read the value of @{name}")));
                        };
                        let bf = b.weights(&data);
                        global_buffers.insert(name.to_string(), bf);
                        bf
                    }
                };
                define(
                    &mut vals,
                    Val::Mem(View {
                        buffer,
                        offset: 0,
                        strides: row_major(&mt.sizes),
                        sizes: mt.sizes,
                        elem: mt.elem,
                    }),
                )?;
            }
            "memref.alloc" | "memref.alloca" => {
                let ty = rhs.rsplit_once(" : ").map(|p| p.1).unwrap_or_default();
                let mt = mem_type(ty).map_err(fail)?;
                let n: u64 = mt.sizes.iter().product();
                let buffer = b.buffer(n * mt.elem, Init::None);
                define(
                    &mut vals,
                    Val::Mem(View {
                        buffer,
                        offset: 0,
                        strides: row_major(&mt.sizes),
                        sizes: mt.sizes,
                        elem: mt.elem,
                    }),
                )?;
            }
            "memref.expand_shape" | "memref.collapse_shape" | "memref.cast" => {
                let src = rhs[op.len()..]
                    .split_whitespace()
                    .next()
                    .ok_or_else(|| fail("no source".into()))?;
                let src = view(&vals, src).map_err(fail)?;
                let to = rhs
                    .rsplit_once(if op == "memref.cast" {
                        " to "
                    } else {
                        " into "
                    })
                    .map(|p| p.1)
                    .ok_or_else(|| fail("no result type".into()))?;
                let mt = mem_type(to).map_err(fail)?;
                if !src.contiguous() && op != "memref.cast" {
                    return Err(fail("a reshape of a non-contiguous view".into()));
                }
                let strides = if op == "memref.cast" {
                    src.strides.clone()
                } else {
                    row_major(&mt.sizes)
                };
                define(
                    &mut vals,
                    Val::Mem(View {
                        sizes: mt.sizes,
                        strides,
                        ..src
                    }),
                )?;
            }
            "memref.subview" => {
                // memref.subview %src[o..][s..][t..] : T to T'
                let after = rhs["memref.subview".len()..].trim();
                let name_end = after.find('[').ok_or_else(|| fail("no offsets".into()))?;
                let src = view(&vals, &after[..name_end]).map_err(fail)?;
                let lists: Vec<Vec<u64>> = after[name_end..]
                    .split(']')
                    .take(3)
                    .map(|l| {
                        l.trim()
                            .trim_start_matches('[')
                            .split(',')
                            .filter(|s| !s.trim().is_empty())
                            .map(|s| index(&vals, s))
                            .collect::<Result<Vec<u64>, String>>()
                    })
                    .collect::<Result<_, _>>()
                    .map_err(fail)?;
                if lists.len() != 3 || lists.iter().any(|l| l.len() != src.sizes.len()) {
                    return Err(fail("cannot read the offsets, sizes and strides".into()));
                }
                let to = mem_type(rhs.rsplit_once(" to ").map(|p| p.1).unwrap_or_default())
                    .map_err(fail)?;
                let offset = src.offset
                    + lists[0]
                        .iter()
                        .zip(&src.strides)
                        .map(|(o, s)| o * s)
                        .sum::<u64>();
                let strides: Vec<u64> = lists[2]
                    .iter()
                    .zip(&src.strides)
                    .map(|(t, s)| t * s)
                    .collect();
                // Rank-reducing subviews drop unit dimensions.
                let (sizes, strides): (Vec<u64>, Vec<u64>) = if to.sizes.len() == lists[1].len() {
                    (lists[1].clone(), strides)
                } else {
                    lists[1]
                        .iter()
                        .zip(strides)
                        .filter(|(s, _)| **s != 1)
                        .map(|(s, t)| (*s, t))
                        .unzip()
                };
                if sizes != to.sizes {
                    return Err(fail("a rank-reducing subview qc cannot follow".into()));
                }
                define(
                    &mut vals,
                    Val::Mem(View {
                        offset,
                        sizes,
                        strides,
                        ..src
                    }),
                )?;
            }
            "memref.reinterpret_cast" => {
                let after = rhs["memref.reinterpret_cast".len()..].trim();
                let src = view(&vals, after.split_whitespace().next().unwrap_or_default())
                    .map_err(fail)?;
                let list = |key: &str| -> Result<Vec<u64>, String> {
                    let inner = bracketed(after, &format!("{key}: ["))
                        .ok_or_else(|| format!("no {key}"))?;
                    inner
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| index(&vals, s))
                        .collect()
                };
                let offset = list("offset").map_err(fail)?;
                let sizes = list("sizes").map_err(fail)?;
                let strides = list("strides").map_err(fail)?;
                define(
                    &mut vals,
                    Val::Mem(View {
                        offset: offset.first().copied().unwrap_or(0),
                        sizes,
                        strides,
                        ..src
                    }),
                )?;
            }
            "memref.copy" => {
                let body = rhs["memref.copy".len()..].trim();
                let operands = body.split(" : ").next().unwrap_or_default();
                let (a, c) = operands
                    .split_once(',')
                    .ok_or_else(|| fail("needs two operands".into()))?;
                let (src, dst) = (view(&vals, a).map_err(fail)?, view(&vals, c).map_err(fail)?);
                steps.extend(copy_runs(&src, &dst).map_err(fail)?);
            }
            "gpu.launch_func" => {
                let rest = rhs["gpu.launch_func".len()..].trim_start();
                let (callee, _) = rest
                    .split_once(' ')
                    .ok_or_else(|| fail("no callee".into()))?;
                let (module, entry) = callee
                    .strip_prefix('@')
                    .and_then(|c| c.split_once("::@"))
                    .ok_or_else(|| fail("bad callee".into()))?;
                let dims = |open: &str| -> Result<[u32; 3], String> {
                    let inner = bracketed(rest, open).ok_or("bad launch sizes")?;
                    let v: Vec<u64> = split_top(inner)
                        .iter()
                        .map(|n| index(&vals, n))
                        .collect::<Result<_, _>>()?;
                    let v: Vec<u32> = v
                        .into_iter()
                        .map(|d| u32::try_from(d).map_err(|_| format!("launch size {d}")))
                        .collect::<Result<_, _>>()?;
                    v.try_into()
                        .map_err(|_| "launch sizes need 3 values".to_string())
                };
                let grid = dims("blocks in (").map_err(fail)?;
                let block = dims("threads in (").map_err(fail)?;
                let mut params = Vec::new();
                for a in split_top(bracketed(rest, "args(").unwrap_or("")) {
                    let v = a.split(" : ").next().unwrap_or(a).trim();
                    match vals.get(v) {
                        Some(Val::Mem(m)) => {
                            for _ in 0..2 {
                                params.push(Param::Address {
                                    buffer: m.buffer,
                                    offset: 0,
                                });
                            }
                            params.push(Param::Value {
                                bytes: 8,
                                value: m.offset,
                            });
                            for &d in m.sizes.iter().chain(&m.strides) {
                                params.push(Param::Value { bytes: 8, value: d });
                            }
                        }
                        Some(Val::Scalar(bits, n)) => params.push(Param::Value {
                            bytes: *n,
                            value: *bits,
                        }),
                        None => return Err(fail(format!("unknown argument {v}"))),
                    }
                }
                let ptx = x
                    .ptx
                    .get(module)
                    .ok_or_else(|| fail(format!("no PTX for @{module}")))?;
                let sizes = entry_params(ptx, entry).map_err(fail)?;
                if sizes.len() != params.len() {
                    return Err(fail(format!(
                        "{} parameters for the {} of .entry {entry}",
                        params.len(),
                        sizes.len()
                    )));
                }
                for (p, &s) in params.iter_mut().zip(&sizes) {
                    match p {
                        Param::Address { .. } if s != 8 => {
                            return Err(fail(format!("a pointer passed as a {s}-byte parameter")))
                        }
                        Param::Value { bytes, .. } if s <= 8 => *bytes = s as u8,
                        Param::Value { .. } => return Err(fail(format!("a {s}-byte parameter"))),
                        _ => {}
                    }
                }
                steps.push(Step::Launch {
                    ptx: format!("{module}.ptx"),
                    entry: entry.to_string(),
                    grid,
                    block,
                    params,
                });
            }
            "call" | "func.call" => {
                let sym = rhs
                    .split('@')
                    .nth(1)
                    .and_then(|r| r.split('(').next())
                    .ok_or_else(|| fail("no callee".into()))?;
                let args = bracketed(rhs, &format!("@{sym}(")).unwrap_or("");
                let args = split_top(args);
                if let Some(sg) = x.sgemm.iter().find(|c| c.symbol == sym) {
                    let [aa, ba, ca] = args[..] else {
                        return Err(fail("an f32 product call takes a, b and c".into()));
                    };
                    let (av, bv, cv) = (
                        view(&vals, aa).map_err(fail)?,
                        view(&vals, ba).map_err(fail)?,
                        view(&vals, ca).map_err(fail)?,
                    );
                    let nb = if sg.shared_b { 1 } else { sg.batch };
                    if !av.contiguous()
                        || !bv.contiguous()
                        || !cv.contiguous()
                        || av.elements() != sg.batch * sg.m * sg.k
                        || bv.elements() != nb * sg.k * sg.n
                        || cv.elements() != sg.batch * sg.m * sg.n
                    {
                        return Err(fail(
                            "a, b and c must be contiguous with the call's shapes".into(),
                        ));
                    }
                    let v8 = |value| Param::Value { bytes: 8, value };
                    let params = vec![
                        Param::Address {
                            buffer: av.buffer,
                            offset: av.offset * av.elem,
                        },
                        Param::Address {
                            buffer: bv.buffer,
                            offset: bv.offset * bv.elem,
                        },
                        Param::Address {
                            buffer: cv.buffer,
                            offset: cv.offset * cv.elem,
                        },
                        v8(sg.batch),
                        v8(sg.m),
                        v8(sg.n),
                        v8(sg.k),
                        v8(sg.shared_b as u64),
                    ];
                    let ptx = x
                        .ptx
                        .get(&sg.module)
                        .ok_or_else(|| fail(format!("no PTX for {}", sg.module)))?;
                    if entry_params(ptx, &sg.entry).map_err(fail)?.len() != params.len() {
                        return Err(fail(format!("{} takes other parameters", sg.entry)));
                    }
                    let warps = sg.batch * sg.m.div_ceil(sg.tile) * sg.n.div_ceil(sg.tile);
                    let g = u32::try_from((warps * 32).div_ceil(sg.block as u64).max(1))
                        .map_err(|_| fail("too many threads".into()))?;
                    steps.push(Step::Launch {
                        ptx: format!("{}.ptx", sg.module),
                        entry: sg.entry.clone(),
                        grid: [g, 1, 1],
                        block: [sg.block, 1, 1],
                        params,
                    });
                    continue;
                }
                if let Some(rc) = x.rows.iter().find(|c| c.symbol == sym) {
                    let norm = rc.epsilon.is_some();
                    if args.len() != if norm { 4 } else { 2 } {
                        return Err(fail(if norm {
                            "a layer normalization call takes x, scale, bias and y".into()
                        } else {
                            "a softmax call takes x and y".into()
                        }));
                    }
                    let views = args
                        .iter()
                        .map(|a| view(&vals, a).map_err(fail))
                        .collect::<Result<Vec<View>, String>>()?;
                    let n = rc.rows * rc.len;
                    let fits = views.iter().enumerate().all(|(i, v)| {
                        let want = if norm && (i == 1 || i == 2) {
                            rc.len
                        } else {
                            n
                        };
                        v.contiguous() && v.elem == 4 && v.elements() == want
                    });
                    if !fits {
                        return Err(fail(
                            "the operands must be contiguous f32 with the call's shapes".into(),
                        ));
                    }
                    let mut params: Vec<Param> = views
                        .iter()
                        .map(|v| Param::Address {
                            buffer: v.buffer,
                            offset: v.offset * v.elem,
                        })
                        .collect();
                    params.push(Param::Value {
                        bytes: 8,
                        value: rc.rows,
                    });
                    params.push(Param::Value {
                        bytes: 8,
                        value: rc.len,
                    });
                    if let Some(eps) = rc.epsilon {
                        params.push(Param::Value {
                            bytes: 4,
                            value: eps.to_bits() as u64,
                        });
                    }
                    let ptx = x
                        .ptx
                        .get(&rc.module)
                        .ok_or_else(|| fail(format!("no PTX for {}", rc.module)))?;
                    if entry_params(ptx, &rc.entry).map_err(fail)?.len() != params.len() {
                        return Err(fail(format!("{} takes other parameters", rc.entry)));
                    }
                    let g = u32::try_from((rc.rows * 32).div_ceil(rc.block as u64).max(1))
                        .map_err(|_| fail("too many threads".into()))?;
                    steps.push(Step::Launch {
                        ptx: format!("{}.ptx", rc.module),
                        entry: rc.entry.clone(),
                        grid: [g, 1, 1],
                        block: [rc.block, 1, 1],
                        params,
                    });
                    continue;
                }
                if let Some(fq) = x.fquant.iter().find(|c| c.symbol == sym) {
                    let [xa, ya] = args[..] else {
                        return Err(fail("a quantization call takes x and y".into()));
                    };
                    let (xv, yv) = (
                        view(&vals, xa).map_err(fail)?,
                        view(&vals, ya).map_err(fail)?,
                    );
                    if !xv.contiguous()
                        || !yv.contiguous()
                        || xv.elements() != fq.n
                        || yv.elements() != fq.n
                    {
                        return Err(fail(
                            "x and y must be contiguous with the call's size".into(),
                        ));
                    }
                    let ptx = x
                        .ptx
                        .get(&fq.module)
                        .ok_or_else(|| fail(format!("no PTX for {}", fq.module)))?;
                    let params = vec![
                        Param::Address {
                            buffer: xv.buffer,
                            offset: xv.offset * xv.elem,
                        },
                        Param::Address {
                            buffer: yv.buffer,
                            offset: yv.offset * yv.elem,
                        },
                        Param::Value {
                            bytes: 8,
                            value: fq.n,
                        },
                        Param::Value {
                            bytes: 4,
                            value: fq.scale.to_bits() as u64,
                        },
                    ];
                    if entry_params(ptx, &fq.entry).map_err(fail)?.len() != params.len() {
                        return Err(fail(format!("{} takes other parameters", fq.entry)));
                    }
                    let g =
                        u32::try_from((fq.n / fq.per_thread).div_ceil(GEMV_BLOCK as u64).max(1))
                            .map_err(|_| fail("too many threads".into()))?;
                    steps.push(Step::Launch {
                        ptx: format!("{}.ptx", fq.module),
                        entry: fq.entry.clone(),
                        grid: [g, 1, 1],
                        block: [GEMV_BLOCK, 1, 1],
                        params,
                    });
                    continue;
                }
                let c = x
                    .calls
                    .iter()
                    .find(|c| c.symbol == sym)
                    .ok_or_else(|| fail(format!("@{sym} is not a kernel qc provides")))?;
                let [xa, ya] = args[..] else {
                    return Err(fail("a product call takes x and y".into()));
                };
                let (xv, yv) = (
                    view(&vals, xa).map_err(fail)?,
                    view(&vals, ya).map_err(fail)?,
                );
                if !xv.contiguous() || !yv.contiguous() || (xv.offset * xv.elem) % 16 != 0 {
                    return Err(fail("x and y must be contiguous, x 16-byte aligned".into()));
                }
                if xv.elements() != c.m * c.k || yv.elements() != c.m * c.n {
                    return Err(fail("the operands do not have the call's shapes".into()));
                }
                let blob = match blob_buffers.get(&c.resource) {
                    Some(&bf) => bf,
                    None => {
                        let bf = b.weights(c.blob);
                        blob_buffers.insert(c.resource.clone(), bf);
                        bf
                    }
                };
                let tables = match table_buffers.get(&c.module) {
                    Some(&bf) => bf,
                    None => {
                        let bf = b.weights(&c.tables);
                        table_buffers.insert(c.module.clone(), bf);
                        bf
                    }
                };
                let addr = |buffer, offset| Param::Address { buffer, offset };
                let v8 = |value| Param::Value { bytes: 8, value };
                let shape = [v8(c.k), v8(c.n), v8(c.m)];
                let post = Param::Value {
                    bytes: 4,
                    value: c.post.to_bits() as u64,
                };
                let mut x_addr = addr(xv.buffer, xv.offset * xv.elem);
                if let Some(pre) = &c.act_pre {
                    // x fake-quantized into a scratch buffer first.
                    let q = b.buffer(c.m * c.k * 4, Init::None);
                    let p = vec![
                        x_addr,
                        addr(q, 0),
                        v8(c.m * c.k),
                        Param::Value {
                            bytes: 4,
                            value: pre.scale.to_bits() as u64,
                        },
                    ];
                    let ptx = x
                        .ptx
                        .get(&pre.module)
                        .ok_or_else(|| fail(format!("no PTX for {}", pre.module)))?;
                    if entry_params(ptx, &pre.entry).map_err(fail)?.len() != p.len() {
                        return Err(fail(format!("{} takes other parameters", pre.entry)));
                    }
                    let g = u32::try_from(
                        (c.m * c.k / pre.per_thread)
                            .div_ceil(GEMV_BLOCK as u64)
                            .max(1),
                    )
                    .map_err(|_| fail("too many threads".into()))?;
                    steps.push(Step::Launch {
                        ptx: format!("{}.ptx", pre.module),
                        entry: pre.entry.clone(),
                        grid: [g, 1, 1],
                        block: [GEMV_BLOCK, 1, 1],
                        params: p,
                    });
                    x_addr = addr(q, 0);
                }
                let mut launch = |entry: &str,
                                  params: Vec<Param>,
                                  threads: u64,
                                  block: u32|
                 -> Result<(), String> {
                    let ptx = x
                        .ptx
                        .get(&c.module)
                        .ok_or_else(|| fail(format!("no PTX for {}", c.module)))?;
                    let sizes = entry_params(ptx, entry).map_err(fail)?;
                    if sizes.len() != params.len() {
                        return Err(fail(format!("{entry} takes {} parameters", sizes.len())));
                    }
                    let g = u32::try_from(threads.div_ceil(block as u64))
                        .map_err(|_| fail("too many threads".into()))?;
                    steps.push(Step::Launch {
                        ptx: format!("{}.ptx", c.module),
                        entry: entry.to_string(),
                        grid: [g, 1, 1],
                        block: [block, 1, 1],
                        params,
                    });
                    Ok(())
                };
                let y_addr = addr(yv.buffer, yv.offset * yv.elem);
                match &c.kernel {
                    ProductKernel::Gemv {
                        slice,
                        partial,
                        reduce,
                    } => {
                        let s = c.k / slice;
                        let scratch = b.buffer(c.m * c.n * s * 4, Init::None);
                        let mut p = vec![
                            addr(blob, 0),
                            addr(blob, c.scales_offset),
                            addr(tables, 0),
                            x_addr,
                            addr(scratch, 0),
                        ];
                        p.extend(shape);
                        launch(partial, p, c.n * s, GEMV_BLOCK)?;
                        let mut p = vec![
                            addr(scratch, 0),
                            addr(blob, c.scales_offset),
                            addr(tables, 0),
                            y_addr,
                        ];
                        p.extend(shape);
                        p.push(post);
                        launch(reduce, p, c.m * c.n, GEMV_BLOCK)?;
                    }
                    ProductKernel::Mma {
                        entry,
                        tile,
                        tile_threads,
                        block,
                        act_scale,
                    } => {
                        let mut p = vec![
                            addr(blob, 0),
                            addr(blob, c.scales_offset),
                            addr(tables, 0),
                            x_addr,
                            y_addr,
                        ];
                        p.extend(shape);
                        p.push(post);
                        if let Some(sa) = act_scale {
                            p.push(Param::Value {
                                bytes: 4,
                                value: sa.to_bits() as u64,
                            });
                        }
                        let tiles = c.m.div_ceil(*tile) * c.n.div_ceil(*tile);
                        launch(entry, p, tiles * tile_threads, *block)?;
                    }
                }
            }
            "return" => {
                let body = rhs["return".len()..].trim();
                let operands = body.split(" : ").next().unwrap_or_default();
                let mut outs = Vec::new();
                for v in operands.split(',').filter(|s| !s.trim().is_empty()) {
                    let m = view(&vals, v).map_err(fail)?;
                    if !m.contiguous() {
                        return Err(fail("a non-contiguous result".into()));
                    }
                    outs.push(m.range());
                }
                outputs = Some(outs);
            }
            _ => return Err(fail("the CUDA launch plan cannot express it".into())),
        }
    }
    let outputs = outputs.ok_or("@main has no return")?;
    let plan = Plan {
        format: FORMAT.into(),
        target: x.target.into(),
        weights: x.weights.into(),
        buffers: b.buffers,
        steps,
        outputs,
    };
    plan.check(x.inputs, b.weights.len() as u64)?;
    Ok((plan, b.weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel taking a rank-1 memref (5 descriptor words) and an f32.
    const PTX: &str = "//\n.visible .entry main_kernel(\n\t.param .u64 .ptr .align 1 main_kernel_param_0,\n\
                       \t.param .u64 .ptr .align 1 main_kernel_param_1,\n\t.param .u64 main_kernel_param_2,\n\
                       \t.param .u64 main_kernel_param_3,\n\t.param .u64 main_kernel_param_4,\n\
                       \t.param .f32 main_kernel_param_5\n)\n{\n}\n";

    fn host() -> String {
        "module attributes {gpu.container_module} {\n  \
         memref.global \"private\" constant @__constant_2x2xf32 : memref<2x2xf32> = dense<[[1.0, 2.5], [0x7FC00000, -4.0]]> {alignment = 64 : i64}\n  \
         memref.global \"private\" constant @__constant_4xi8 : memref<4xi8> = dense<\"0x01FF7F80\">\n  \
         func.func @main(%arg0: memref<2x2xf32, strided<[?, ?], offset: ?>>, %arg1: memref<4xf32> {bufferization.writable = false}) -> (memref<4xf32>, memref<4xi8>) {\n    \
         %c1 = arith.constant 1 : index\n    %c2 = arith.constant 2 : index\n    \
         %cst = arith.constant 1.500000e+00 : f32\n    \
         %0 = memref.get_global @__constant_2x2xf32 : memref<2x2xf32>\n    \
         %1 = memref.get_global @__constant_4xi8 : memref<4xi8>\n    \
         %alloc = memref.alloc() {alignment = 64 : i64} : memref<2x2xf32>\n    \
         %sub = memref.subview %0[1, 0] [1, 2] [1, 1] : memref<2x2xf32> to memref<2xf32, strided<[1], offset: 2>>\n    \
         gpu.launch_func  @main_kernel::@main_kernel blocks in (%c2, %c1, %c1) threads in (%c1, %c1, %c1)  args(%sub : memref<2xf32, strided<[1], offset: 2>>, %alloc : memref<2x2xf32>, %cst : f32)\n    \
         %collapse_shape = memref.collapse_shape %alloc [[0, 1]] : memref<2x2xf32> into memref<4xf32>\n    \
         memref.copy %arg0, %alloc : memref<2x2xf32, strided<[?, ?], offset: ?>> to memref<2x2xf32>\n    \
         return %collapse_shape, %1 : memref<4xf32>, memref<4xi8>\n  }\n}\n"
            .replace("args(%sub : memref<2xf32, strided<[1], offset: 2>>, %alloc : memref<2x2xf32>, %cst : f32)",
                     "args(%sub : memref<2xf32, strided<[1], offset: 2>>, %cst : f32)")
    }

    #[test]
    fn resolves_the_host_program() {
        let ptx = BTreeMap::from([("main_kernel".to_string(), PTX.to_string())]);
        let c = [7u8; 16];
        let (p, w) = plan(
            &host(),
            &PlanInputs {
                target: "sm_80",
                weights: "weights.bin",
                inputs: 1,
                constant_args: vec![&c],
                ptx: &ptx,
                calls: Vec::new(),
                fquant: Vec::new(),
                sgemm: Vec::new(),
                rows: Vec::new(),
            },
        )
        .unwrap();
        // Input, constant argument, two globals, one allocation.
        assert_eq!(
            p.buffers
                .iter()
                .map(|b| (b.bytes, b.init.clone()))
                .collect::<Vec<_>>(),
            [
                (16, Init::Input { index: 0 }),
                (16, Init::Weights { offset: 0 }),
                (16, Init::Weights { offset: 64 }),
                (4, Init::Weights { offset: 128 }),
                (16, Init::None),
            ]
        );
        let f = |x: f32| x.to_le_bytes();
        assert_eq!(&w[..16], &c);
        assert_eq!(&w[64..68], &f(1.0));
        assert_eq!(&w[68..72], &f(2.5));
        assert_eq!(&w[72..76], &0x7FC0_0000u32.to_le_bytes());
        assert_eq!(&w[76..80], &f(-4.0));
        assert_eq!(&w[128..132], &[1, 0xFF, 0x7F, 0x80]);
        let Step::Launch { params, grid, .. } = &p.steps[0] else {
            panic!("{:?}", p.steps)
        };
        assert_eq!(*grid, [2, 1, 1]);
        // Row 1 of the 2x2 global: offset 2 elements, size 2, stride 1; then the f32 immediate.
        assert_eq!(
            params,
            &[
                Param::Address {
                    buffer: 2,
                    offset: 0
                },
                Param::Address {
                    buffer: 2,
                    offset: 0
                },
                Param::Value { bytes: 8, value: 2 },
                Param::Value { bytes: 8, value: 2 },
                Param::Value { bytes: 8, value: 1 },
                Param::Value {
                    bytes: 4,
                    value: 1.5f32.to_bits() as u64
                },
            ]
        );
        assert_eq!(
            p.steps[1],
            Step::Copy {
                src: Range {
                    buffer: 0,
                    offset: 0,
                    bytes: 16
                },
                dst: Range {
                    buffer: 4,
                    offset: 0,
                    bytes: 16
                },
            }
        );
        assert_eq!(
            p.outputs,
            [
                Range {
                    buffer: 4,
                    offset: 0,
                    bytes: 16
                },
                Range {
                    buffer: 3,
                    offset: 0,
                    bytes: 4
                }
            ]
        );
    }

    #[test]
    fn strided_copies_become_runs() {
        let v = |buffer, offset, sizes: &[u64], strides: &[u64]| View {
            buffer,
            offset,
            sizes: sizes.to_vec(),
            strides: strides.to_vec(),
            elem: 4,
        };
        // Channels 2..5 of a [1, 8, 2, 3] tensor from a contiguous [1, 3, 2, 3] one: one run.
        let steps = copy_runs(
            &v(0, 0, &[1, 3, 2, 3], &[18, 6, 3, 1]),
            &v(1, 12, &[1, 3, 2, 3], &[48, 6, 3, 1]),
        )
        .unwrap();
        assert_eq!(
            steps,
            [Step::Copy {
                src: Range {
                    buffer: 0,
                    offset: 0,
                    bytes: 72
                },
                dst: Range {
                    buffer: 1,
                    offset: 48,
                    bytes: 72
                },
            }]
        );
        // Columns 1..3 of a [2, 4] matrix into a [2, 2] one: a run per row.
        let steps = copy_runs(&v(0, 1, &[2, 2], &[4, 1]), &v(1, 0, &[2, 2], &[2, 1])).unwrap();
        assert_eq!(
            steps,
            [
                Step::Copy {
                    src: Range {
                        buffer: 0,
                        offset: 4,
                        bytes: 8
                    },
                    dst: Range {
                        buffer: 1,
                        offset: 0,
                        bytes: 8
                    },
                },
                Step::Copy {
                    src: Range {
                        buffer: 0,
                        offset: 20,
                        bytes: 8
                    },
                    dst: Range {
                        buffer: 1,
                        offset: 8,
                        bytes: 8
                    },
                },
            ]
        );
        // A transpose copies element by element: too many runs.
        let big = copy_runs(
            &v(0, 0, &[128, 128], &[1, 128]),
            &v(1, 0, &[128, 128], &[128, 1]),
        );
        assert!(big.unwrap_err().contains("runs"));
        assert!(copy_runs(&v(0, 0, &[2], &[1]), &v(1, 0, &[3], &[1])).is_err());
    }

    #[test]
    fn reads_ptx_params_and_dense_values() {
        assert_eq!(
            entry_params(PTX, "main_kernel").unwrap(),
            [8, 8, 8, 8, 8, 4]
        );
        assert!(entry_params(PTX, "other").is_err());
        assert_eq!(dense_bytes("true", "i1", 3).unwrap(), [1, 1, 1]);
        assert_eq!(
            dense_bytes("[1, -1]", "i64", 2).unwrap()[8..],
            (-1i64).to_le_bytes()
        );
        assert_eq!(
            dense_bytes("\"0x0100\"", "i16", 3).unwrap(),
            [1, 0, 1, 0, 1, 0]
        );
        assert!(dense_bytes("[1, 2]", "f32", 3).is_err());
        assert_eq!(
            dense_bytes("\"0x0D02\"", "i1", 10).unwrap(),
            [1, 0, 1, 1, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(dense_bytes("-6.0", "f4E2M1FN", 2).unwrap(), [0xF, 0xF]);
        assert_eq!(
            dense_bytes("[1.0, 0.5, 4.0]", "f8E8M0FNU", 3).unwrap(),
            [0x7F, 0x7E, 0x81]
        );
        assert_eq!(
            dense_bytes("[448.0, -0.0]", "f8E4M3FN", 2).unwrap(),
            [0x7E, 0x80]
        );
        assert_eq!(
            dense_bytes("[0x7F, 57344.0]", "f8E5M2", 2).unwrap(),
            [0x7F, 0x7B]
        );
        assert_eq!(
            dense_bytes("[7.5, -0.125]", "f6E2M3FN", 2).unwrap(),
            [0x1F, 0x21]
        );
        assert_eq!(dense_bytes("28.0", "f6E3M2FN", 1).unwrap(), [0x1F]);
        assert!(dense_bytes("0.3", "f8E4M3FN", 1).is_err());
        // MLIR prints 2^-9 in f8E8M0FNU as 1.953130e-03.
        assert_eq!(
            dense_bytes("[1.953130e-03, 1.0]", "f8E8M0FNU", 2).unwrap(),
            [118, 127]
        );
        assert_eq!(scalar_bits("-1", "i32").unwrap(), (0xFFFF_FFFF, 4));
        assert_eq!(elem_bytes("f4E2M1FN"), Some(1));
        assert_eq!(elem_bytes("i1"), Some(1));
        assert_eq!(elem_bytes("bf16"), Some(2));
    }

    #[test]
    fn refuses_what_it_cannot_express() {
        let ptx = BTreeMap::from([("main_kernel".to_string(), PTX.to_string())]);
        let c = [0u8; 16];
        let inputs = |ptx| PlanInputs {
            target: "sm_80",
            weights: "weights.bin",
            inputs: 1,
            constant_args: vec![&c],
            ptx,
            calls: Vec::new(),
            fquant: Vec::new(),
            sgemm: Vec::new(),
            rows: Vec::new(),
        };
        let h = host().replace("memref.copy %arg0", "memref.dealloc %arg0");
        let e = plan(&h, &inputs(&ptx)).unwrap_err();
        assert!(
            e.contains("memref.dealloc") && e.contains("cannot express"),
            "{e}"
        );
        let none = BTreeMap::new();
        let e = plan(&host(), &inputs(&none)).unwrap_err();
        assert!(e.contains("no PTX for @main_kernel"), "{e}");
        let h = host().replace("(%c2, %c1, %c1) threads", "(%c2, %c1) threads");
        let e = plan(&h, &inputs(&ptx)).unwrap_err();
        assert!(e.contains("3 values"), "{e}");
    }

    /// A layer normalization and a softmax call of the host program become launches of the row
    /// kernels (a warp per row, the operands' addresses, rows, len and epsilon); operands of other
    /// shapes or counts are errors.
    #[test]
    fn row_calls_launch_the_row_kernels() {
        let entry = |name: &str, params: &[&str]| {
            let list: Vec<String> = params
                .iter()
                .enumerate()
                .map(|(i, t)| format!("\t.param {t} {name}_param_{i}"))
                .collect();
            format!(".visible .entry {name}(\n{}\n)\n{{\n}}\n", list.join(",\n"))
        };
        let ptx = BTreeMap::from([
            (
                "rows_0".to_string(),
                entry(
                    "qc_layernorm_rows",
                    &[".u64", ".u64", ".u64", ".u64", ".u64", ".u64", ".f32"],
                ),
            ),
            (
                "rows_1".to_string(),
                entry("qc_softmax_rows", &[".u64", ".u64", ".u64", ".u64"]),
            ),
        ]);
        let host = "module {\n  \
             func.func @main(%arg0: memref<2x5x40xf32>, %arg1: memref<40xf32>, %arg2: memref<40xf32>) -> memref<10x40xf32> {\n    \
             %collapse_shape = memref.collapse_shape %arg0 [[0, 1], [2]] : memref<2x5x40xf32> into memref<10x40xf32>\n    \
             %alloc = memref.alloc() {alignment = 64 : i64} : memref<10x40xf32>\n    \
             call @qc_layernorm_0(%collapse_shape, %arg1, %arg2, %alloc) : (memref<10x40xf32>, memref<40xf32>, memref<40xf32>, memref<10x40xf32>) -> ()\n    \
             %alloc_1 = memref.alloc() {alignment = 64 : i64} : memref<10x40xf32>\n    \
             call @qc_softmax_1(%alloc, %alloc_1) : (memref<10x40xf32>, memref<10x40xf32>) -> ()\n    \
             return %alloc_1 : memref<10x40xf32>\n  }\n}\n";
        let c = [0u8; 160];
        let row = |symbol: &str, epsilon, module: &str, entry: &str, len| RowCall {
            symbol: symbol.into(),
            rows: 10,
            len,
            epsilon,
            module: module.into(),
            entry: entry.into(),
            block: 256,
        };
        let inputs = |len| PlanInputs {
            target: "sm_80",
            weights: "weights.bin",
            inputs: 1,
            constant_args: vec![&c, &c],
            ptx: &ptx,
            calls: Vec::new(),
            fquant: Vec::new(),
            sgemm: Vec::new(),
            rows: vec![
                row(
                    "qc_layernorm_0",
                    Some(1e-5),
                    "rows_0",
                    "qc_layernorm_rows",
                    len,
                ),
                row("qc_softmax_1", None, "rows_1", "qc_softmax_rows", 40),
            ],
        };
        let (p, _) = plan(host, &inputs(40)).unwrap();
        let launches: Vec<_> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::Launch {
                    entry,
                    grid,
                    block,
                    params,
                    ..
                } => (entry.as_str(), grid[0], block[0], params.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let a = |buffer| Param::Address { buffer, offset: 0 };
        let v8 = |value| Param::Value { bytes: 8, value };
        assert_eq!(
            launches,
            [
                (
                    "qc_layernorm_rows",
                    2,
                    256,
                    vec![
                        a(0),
                        a(1),
                        a(2),
                        a(3),
                        v8(10),
                        v8(40),
                        Param::Value {
                            bytes: 4,
                            value: 1e-5f32.to_bits() as u64
                        }
                    ]
                ),
                ("qc_softmax_rows", 2, 256, vec![a(3), a(4), v8(10), v8(40)]),
            ]
        );
        // A call whose operands do not have its shapes, or of the wrong operand count.
        let e = plan(host, &inputs(20)).unwrap_err();
        assert!(e.contains("the call's shapes"), "{e}");
        let h = host.replace(
            "@qc_layernorm_0(%collapse_shape, %arg1, ",
            "@qc_layernorm_0(",
        );
        let e = plan(&h, &inputs(40)).unwrap_err();
        assert!(e.contains("takes x, scale, bias and y"), "{e}");
    }
}

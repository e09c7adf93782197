//! Memory-bound GEMV / skinny GEMM for 4-bit weights on NVIDIA GPUs: `y[M, N] = x[M, K] W[N, K]^T` with
//! `W` read straight from its `qc_quant::blob` bytes (codes, then scales, then the tensor scale), `x`
//! and `y` in f32. Built as LLVM IR with inkwell, compiled to PTX by LLVM's NVPTX backend.
//!
//! # Formats ([`Gemv4::classify`])
//! 4-bit codes packed two per byte, element `2j` in the low nibble of byte `j` (int4 / uint4 without
//! zero points, e2m1), decoded through a 16-entry table; scales per group of 16, 32, 64 or 128 elements
//! along K, or per row; stored as f32 or as one byte (e8m0, ue4m3) decoded through a 256-entry table;
//! an optional f32 second-level scale (NVFP4). That covers int4_g32, int4_g128, int4_channel, mxfp4,
//! nvfp4 (all three variants) and nvint4. K must be a multiple of 32.
//!
//! # Kernels
//! Two kernels, so that no thread waits for another and the results do not depend on the launch
//! shape:
//! - [`PARTIAL`]`(codes, scales, tables, x, p, k, n, m)`: thread `t < N * S` (`S = K / L`, `L` the
//!   spec's slice of 128, 64 or 32 elements: [`Gemv4::slice`]) takes row `t / S` and slice `t % S`
//!   (consecutive threads read consecutive `L / 2`-byte runs of a row, in 16-byte loads) and writes,
//!   for every activation row `mm < M`, `p[(mm * N + row) * S + slice] = sum over the slice's groups
//!   of scale * (sum over the group of w * x)` (a group longer than the slice: its scale times the
//!   slice's sum), each sum an FMA chain in element order (per-row scales: the plain sum).
//! - [`REDUCE`]`(p, scales, tables, y, k, n, m, post)`: thread `t < M * N` writes
//!   `y[t] = post * row_scale * sum_s p[t * S + s]` in slice order (`row_scale` for per-row scales,
//!   else 1).
//!
//! `tables` holds 16 + 256 f32: the value of each code, then of each scale byte ([`Gemv4::tables`]);
//! signed int4 codes are decoded with integer arithmetic instead. `x`, `codes` and `tables` must be
//! 16-byte aligned (device allocations are).
//! `post` is the tensor scale for two-level formats (times it for a divisor, divided for a reciprocal),
//! else 1 ([`Gemv4::post`]). Launch with any block size; the kernels check `t` against their range.
//!
//! The same bodies are compiled for the host CPU by the tests ([`build`] with `Entries::Host`), which
//! run every thread index in turn and compare with qc_quant's dequantization: the arithmetic checked
//! there is the arithmetic the GPU runs.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValue, FloatValue, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};
use qc_ir::quant::{Encoding, Packing, QuantType, ScaleType, Scheme, TensorScale};
use qc_quant::Codec;

use crate::{
    compile_ptx, global_thread_index, target_machine, Error, GpuTarget, PTX_KERNEL_CALL_CONV,
};

/// The longest slice of a row one thread takes (elements); [`Gemv4::for_k`] picks shorter ones (64, 32)
/// when K needs them.
pub const SLICE: usize = 128;
/// The partial-sums kernel's entry.
pub const PARTIAL: &str = "qc_gemv4_partial";
/// The reduction kernel's entry.
pub const REDUCE: &str = "qc_gemv4_reduce";

/// How a weight format is read (module documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct Gemv4 {
    /// Elements per scale along K; `None`: one scale per row.
    pub group: Option<usize>,
    /// Scales are one byte each (decoded through the table) rather than f32.
    pub byte_scales: bool,
    /// The second-level scale, if any.
    pub tensor: TensorScale,
    /// Codes are two's-complement int4, decoded with integer arithmetic instead of the table.
    pub signed_int: bool,
    /// Elements per thread and slice of a row: 128 (from [`Gemv4::classify`]), or 64 or 32.
    pub slice: usize,
    fmt: QuantType,
}

/// Where the sections of a blob are, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sections {
    /// Offset of the scales.
    pub scales: usize,
    /// Offset of the f32 tensor scale, for two-level formats.
    pub tensor: Option<usize>,
    /// Length of the blob (as qc_quant::blob lays it out: the sections padded to 16 bytes, the tensor
    /// scale's 4 bytes last).
    pub len: usize,
}

fn align16(n: usize) -> usize {
    n.div_ceil(qc_quant::blob::ALIGN) * qc_quant::blob::ALIGN
}

impl Gemv4 {
    /// The kernel description of `fmt`, or why the kernels do not read it.
    pub fn classify(fmt: &QuantType) -> Result<Gemv4, String> {
        let nibble = match fmt.elem {
            Encoding::Int { bits: 4, .. } => true,
            e => e == Encoding::E2M1,
        };
        if !nibble || fmt.pack != Packing::LoFirst {
            return Err(format!("{fmt}: not 4-bit codes packed low nibble first"));
        }
        if fmt.zero_point.is_some() {
            return Err(format!("{fmt}: zero points are not supported"));
        }
        let group = match fmt.scheme {
            Scheme::Group { size, axis } if axis == -1 || axis == 1 => {
                let g = size as usize;
                if ![16, 32, 64, 128].contains(&g) {
                    return Err(format!("{fmt}: groups of {g} (16, 32, 64 or 128 are read)"));
                }
                Some(g)
            }
            Scheme::PerChannel { axis: 0 } => None,
            _ => return Err(format!("{fmt}: only groups along K or per-row scales")),
        };
        let byte_scales = match fmt.scale {
            ScaleType::F32 => false,
            ScaleType::E8M0 | ScaleType::UE4M3 => true,
            s => return Err(format!("{fmt}: {s} scales are not supported")),
        };
        Ok(Gemv4 {
            slice: SLICE,
            signed_int: fmt.elem
                == (Encoding::Int {
                    bits: 4,
                    signed: true,
                }),
            group,
            byte_scales,
            tensor: fmt.tensor_scale,
            fmt: fmt.clone(),
        })
    }

    /// The kernel description of `fmt` for a reduction length `k`: the longest slice (128, 64, 32)
    /// that divides `k`.
    pub fn for_k(fmt: &QuantType, k: usize) -> Result<Gemv4, String> {
        let mut g = Gemv4::classify(fmt)?;
        g.slice = [128, 64, 32]
            .into_iter()
            .find(|&l| k.is_multiple_of(l))
            .ok_or_else(|| format!("{fmt}: K = {k} is not a multiple of 32"))?;
        Ok(g)
    }

    /// The sections of the blob of `W[n, k]`.
    pub fn sections(&self, n: usize, k: usize) -> Sections {
        let codes = n * k / 2;
        let scales = align16(codes);
        let count = match self.group {
            Some(g) => n * (k / g),
            None => n,
        };
        let end = scales + count * if self.byte_scales { 1 } else { 4 };
        match self.tensor {
            TensorScale::None => Sections {
                scales,
                tensor: None,
                len: align16(end),
            },
            _ => {
                let t = align16(end);
                Sections {
                    scales,
                    tensor: Some(t),
                    len: t + 4,
                }
            }
        }
    }

    /// The kernels' `tables` argument: the 16 code values, then the 256 scale-byte values (zeros for
    /// f32 scales).
    pub fn tables(&self) -> Result<Vec<f32>, String> {
        let codes = Codec::new(self.fmt.elem).map_err(|e| e.to_string())?;
        let mut t = codes.table().to_vec();
        if self.byte_scales {
            let enc = match self.fmt.scale {
                ScaleType::E8M0 => Encoding::E8M0,
                _ => Encoding::UE4M3,
            };
            t.extend_from_slice(Codec::new(enc).map_err(|e| e.to_string())?.table());
        } else {
            t.extend([0.0; 256]);
        }
        Ok(t)
    }

    /// The `post` argument for a blob: its tensor scale (divisor: the scale; reciprocal: its inverse)
    /// or 1.
    pub fn post(&self, blob: &[u8], n: usize, k: usize) -> Result<f32, String> {
        let s = self.sections(n, k);
        let Some(t) = s.tensor else { return Ok(1.0) };
        let b = blob
            .get(t..t + 4)
            .ok_or("the blob is shorter than its format needs")?;
        let ts = f32::from_le_bytes(b.try_into().unwrap());
        Ok(match self.tensor {
            TensorScale::Reciprocal => (1.0 / ts as f64) as f32,
            _ => ts,
        })
    }
}

/// What the kernel builders (`build` of this module, `fquant`, `mma4`, `mma8`, `wgmma8`) add
/// besides their bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// The PTX kernels [`PARTIAL`] and [`REDUCE`] (thread index from the special registers).
    Ptx,
    /// Host functions `<entry>_at(args..., t)` that run thread `t` (for tests on the CPU); the
    /// tensor-core kernels take the state of their MMA emulators before `t`.
    Host,
}

/// The IR builder state the kernel bodies share (also used by `mma4`).
pub(crate) struct Cx<'c> {
    pub(crate) ctx: &'c Context,
    pub(crate) b: Builder<'c>,
    /// `llvm.fma.f32`.
    pub(crate) fma: FunctionValue<'c>,
}

impl<'c> Cx<'c> {
    /// A builder for `module` (declaring `llvm.fma.f32` there).
    pub(crate) fn new(ctx: &'c Context, module: &Module<'c>) -> Result<Cx<'c>, Error> {
        let fma = inkwell::intrinsics::Intrinsic::find("llvm.fma")
            .and_then(|i| i.get_declaration(module, &[ctx.f32_type().into()]))
            .ok_or(Error::MissingIntrinsic("llvm.fma"))?;
        Ok(Cx {
            ctx,
            b: ctx.create_builder(),
            fma,
        })
    }

    pub(crate) fn i64(&self, v: u64) -> IntValue<'c> {
        self.ctx.i64_type().const_int(v, false)
    }
    pub(crate) fn gep(
        &self,
        ty: BasicTypeEnum<'c>,
        p: PointerValue<'c>,
        i: IntValue<'c>,
    ) -> Result<PointerValue<'c>, Error> {
        // SAFETY: every index stays inside the buffers the kernel contract describes.
        Ok(unsafe { self.b.build_in_bounds_gep(ty, p, &[i], "")? })
    }
    pub(crate) fn load_f32(
        &self,
        p: PointerValue<'c>,
        i: IntValue<'c>,
    ) -> Result<FloatValue<'c>, Error> {
        let f = self.ctx.f32_type();
        let q = self.gep(f.into(), p, i)?;
        Ok(self.b.build_load(f, q, "")?.into_float_value())
    }
    pub(crate) fn fma(
        &self,
        a: FloatValue<'c>,
        x: FloatValue<'c>,
        acc: FloatValue<'c>,
    ) -> Result<FloatValue<'c>, Error> {
        // An explicit llvm.fma fixes the rounding on every target (no contraction choices).
        Ok(self
            .b
            .build_call(self.fma, &[a.into(), x.into(), acc.into()], "")?
            .try_as_basic_value()
            .basic()
            .ok_or(Error::MissingIntrinsic("llvm.fma"))?
            .into_float_value())
    }
}

/// The scale of group `g` (an index into the scales section) as f32.
pub(crate) fn scale_at<'c>(
    c: &Cx<'c>,
    spec: &Gemv4,
    scales: PointerValue<'c>,
    tables: PointerValue<'c>,
    g: IntValue<'c>,
) -> Result<FloatValue<'c>, Error> {
    if spec.byte_scales {
        let i8t = c.ctx.i8_type();
        let p = c.gep(i8t.into(), scales, g)?;
        let byte = c.b.build_load(i8t, p, "")?.into_int_value();
        let idx = c.b.build_int_z_extend(byte, c.ctx.i64_type(), "")?;
        let idx = c.b.build_int_add(idx, c.i64(16), "")?;
        c.load_f32(tables, idx)
    } else {
        c.load_f32(scales, g)
    }
}

/// A counted loop `for i in 0..n` around `body` (which gets `i`); the builder ends after the loop.
pub(crate) fn for_loop<'c>(
    c: &Cx<'c>,
    f: FunctionValue<'c>,
    n: IntValue<'c>,
    body: impl FnOnce(&Cx<'c>, IntValue<'c>) -> Result<(), Error>,
) -> Result<(), Error> {
    let pre = c.b.get_insert_block().unwrap();
    let head = c.ctx.append_basic_block(f, "head");
    let bodyb = c.ctx.append_basic_block(f, "body");
    let exit = c.ctx.append_basic_block(f, "exit");
    c.b.build_unconditional_branch(head)?;
    c.b.position_at_end(head);
    let i = c.b.build_phi(c.ctx.i64_type(), "i")?;
    i.add_incoming(&[(&c.i64(0), pre)]);
    let iv = i.as_basic_value().into_int_value();
    let more = c.b.build_int_compare(IntPredicate::ULT, iv, n, "")?;
    c.b.build_conditional_branch(more, bodyb, exit)?;
    c.b.position_at_end(bodyb);
    body(c, iv)?;
    let next = c.b.build_int_add(iv, c.i64(1), "")?;
    let latch = c.b.get_insert_block().unwrap();
    c.b.build_unconditional_branch(head)?;
    i.add_incoming(&[(&next, latch)]);
    c.b.position_at_end(exit);
    Ok(())
}

/// Builds the two bodies (internal functions taking the thread index last) and the `entries`.
pub fn build<'c>(
    ctx: &'c Context,
    module: &Module<'c>,
    spec: &Gemv4,
    entries: Entries,
) -> Result<(), Error> {
    let c = Cx::new(ctx, module)?;
    let ptr = ctx.ptr_type(AddressSpace::default());
    let i64t = ctx.i64_type();
    let f32t = ctx.f32_type();
    let void = ctx.void_type();

    // partial(codes, scales, tables, x, p, k, n, m, t)
    let pty = void.fn_type(
        &[
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i64t.into(),
            i64t.into(),
            i64t.into(),
            i64t.into(),
        ],
        false,
    );
    let partial = module.add_function("qc_gemv4_partial_body", pty, Some(Linkage::Internal));
    {
        let a = partial.get_params();
        let (codes, scales, tables, x, p) = (
            a[0].into_pointer_value(),
            a[1].into_pointer_value(),
            a[2].into_pointer_value(),
            a[3].into_pointer_value(),
            a[4].into_pointer_value(),
        );
        let (k, n, m, t) = (
            a[5].into_int_value(),
            a[6].into_int_value(),
            a[7].into_int_value(),
            a[8].into_int_value(),
        );
        c.b.position_at_end(ctx.append_basic_block(partial, "entry"));
        let s_count =
            c.b.build_int_unsigned_div(k, c.i64(spec.slice as u64), "S")?;
        let row = c.b.build_int_unsigned_div(t, s_count, "row")?;
        let slice = c.b.build_int_unsigned_rem(t, s_count, "slice")?;
        // Codes of the slice: row * K/2 + slice * 64 bytes.
        let half_k = c.b.build_int_unsigned_div(k, c.i64(2), "")?;
        let row_off = c.b.build_int_mul(row, half_k, "")?;
        let sl_off = c.b.build_int_mul(slice, c.i64(spec.slice as u64 / 2), "")?;
        let off = c.b.build_int_add(row_off, sl_off, "")?;
        let base = c.gep(ctx.i8_type().into(), codes, off)?;
        // 16-byte loads (32 codes each), shared by every activation row.
        let v4 = ctx.i32_type().vec_type(4);
        let mut words = Vec::with_capacity(16);
        for q in 0..(spec.slice / 32) as u64 {
            let pq = c.gep(ctx.i8_type().into(), base, c.i64(16 * q))?;
            let ld = c.b.build_load(v4, pq, "")?;
            ld.as_instruction_value()
                .unwrap()
                .set_alignment(16)
                .map_err(|e| Error::Codegen(e.to_string()))?;
            for w in 0..4u64 {
                let word =
                    c.b.build_extract_element(
                        ld.into_vector_value(),
                        ctx.i32_type().const_int(w, false),
                        "",
                    )?
                    .into_int_value();
                words.push(word);
            }
        }
        // The 128 code values.
        let mut vals = Vec::with_capacity(spec.slice);
        for word in &words {
            for j in 0..8u64 {
                let sh = c.b.build_right_shift(
                    *word,
                    ctx.i32_type().const_int(4 * j, false),
                    false,
                    "",
                )?;
                let code = c.b.build_and(sh, ctx.i32_type().const_int(15, false), "")?;
                if spec.signed_int {
                    // Two's complement i4: (c ^ 8) - 8, exact in f32 (the table's values).
                    let x8 =
                        c.b.build_xor(code, ctx.i32_type().const_int(8, false), "")?;
                    let v =
                        c.b.build_int_sub(x8, ctx.i32_type().const_int(8, false), "")?;
                    vals.push(c.b.build_signed_int_to_float(v, f32t, "")?);
                } else {
                    let idx = c.b.build_int_z_extend(code, i64t, "")?;
                    vals.push(c.load_f32(tables, idx)?);
                }
            }
        }
        // The slice's scales: groups of `eff = min(g, L)` elements; scale j of the slice is number
        // row * (K / g) + (slice * L + j * eff) / g.
        let eff = spec.group.map(|g| g.min(spec.slice));
        let scale_vals = match (spec.group, eff) {
            (Some(g), Some(eff)) => {
                let per_row = c.b.build_int_unsigned_div(k, c.i64(g as u64), "")?;
                let r = c.b.build_int_mul(row, per_row, "")?;
                let first = c.b.build_int_mul(slice, c.i64(spec.slice as u64), "")?;
                (0..spec.slice / eff)
                    .map(|j| {
                        let el = c.b.build_int_add(first, c.i64((j * eff) as u64), "")?;
                        let gi = c.b.build_int_unsigned_div(el, c.i64(g as u64), "")?;
                        let gi = c.b.build_int_add(r, gi, "")?;
                        scale_at(&c, spec, scales, tables, gi)
                    })
                    .collect::<Result<Vec<_>, Error>>()?
            }
            _ => Vec::new(),
        };
        let x_slice = c.b.build_int_mul(slice, c.i64(spec.slice as u64), "")?;
        for_loop(&c, partial, m, |c, mm| {
            let xrow = c.b.build_int_mul(mm, k, "")?;
            let x0 = c.b.build_int_add(xrow, x_slice, "")?;
            let xs = c.gep(f32t.into(), x, x0)?;
            let zero = f32t.const_float(0.0);
            let mut acc = zero;
            let mut gsum = zero;
            let g = eff.unwrap_or(spec.slice);
            for (e, v) in vals.iter().enumerate() {
                // x is 16-byte aligned (K is a multiple of the slice): tell LLVM, which then loads
                // four activations at a time.
                let q = c.gep(f32t.into(), xs, c.i64(e as u64))?;
                let ld = c.b.build_load(f32t, q, "")?;
                ld.as_instruction_value()
                    .unwrap()
                    .set_alignment(if e % 4 == 0 { 16 } else { 4 })
                    .map_err(|e| Error::Codegen(e.to_string()))?;
                let xv = ld.into_float_value();
                gsum = c.fma(*v, xv, gsum)?;
                if (e + 1) % g == 0 {
                    acc = match spec.group {
                        Some(_) => c.fma(scale_vals[e / g], gsum, acc)?,
                        None => gsum,
                    };
                    gsum = zero;
                }
            }
            // p[(mm * N + row) * S + slice]
            let r = c.b.build_int_mul(mm, n, "")?;
            let r = c.b.build_int_add(r, row, "")?;
            let r = c.b.build_int_mul(r, s_count, "")?;
            let r = c.b.build_int_add(r, slice, "")?;
            let dst = c.gep(f32t.into(), p, r)?;
            c.b.build_store(dst, acc)?;
            Ok(())
        })?;
        c.b.build_return(None)?;
    }

    // reduce(p, scales, tables, y, k, n, m, post, t)
    let rty = void.fn_type(
        &[
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i64t.into(),
            i64t.into(),
            i64t.into(),
            f32t.into(),
            i64t.into(),
        ],
        false,
    );
    let reduce = module.add_function("qc_gemv4_reduce_body", rty, Some(Linkage::Internal));
    {
        let a = reduce.get_params();
        let (p, scales, tables, y) = (
            a[0].into_pointer_value(),
            a[1].into_pointer_value(),
            a[2].into_pointer_value(),
            a[3].into_pointer_value(),
        );
        let (k, n, post, t) = (
            a[4].into_int_value(),
            a[5].into_int_value(),
            a[7].into_float_value(),
            a[8].into_int_value(),
        );
        c.b.position_at_end(ctx.append_basic_block(reduce, "entry"));
        let s_count =
            c.b.build_int_unsigned_div(k, c.i64(spec.slice as u64), "S")?;
        let acc = c.b.build_alloca(f32t, "acc")?;
        c.b.build_store(acc, f32t.const_float(0.0))?;
        let first = c.b.build_int_mul(t, s_count, "")?;
        for_loop(&c, reduce, s_count, |c, s| {
            let i = c.b.build_int_add(first, s, "")?;
            let v = c.load_f32(p, i)?;
            let cur = c.b.build_load(f32t, acc, "")?.into_float_value();
            let sum = c.b.build_float_add(cur, v, "")?;
            c.b.build_store(acc, sum)?;
            Ok(())
        })?;
        let mut sum = c.b.build_load(f32t, acc, "")?.into_float_value();
        if spec.group.is_none() {
            let row = c.b.build_int_unsigned_rem(t, n, "row")?;
            let rs = scale_at(&c, spec, scales, tables, row)?;
            sum = c.b.build_float_mul(sum, rs, "")?;
        }
        let out = c.b.build_float_mul(sum, post, "")?;
        let dst = c.gep(f32t.into(), y, t)?;
        c.b.build_store(dst, out)?;
        c.b.build_return(None)?;
    }

    // Entries.
    for (name, body, count) in [(PARTIAL, partial, 0), (REDUCE, reduce, 1)] {
        let params: Vec<_> = body.get_type().get_param_types();
        let nparams = params.len() - 1;
        let meta: Vec<_> = params[..nparams].to_vec();
        let (fname, ftype) = match entries {
            Entries::Ptx => (name.to_string(), void.fn_type(&meta, false)),
            Entries::Host => {
                let mut m2 = meta.clone();
                m2.push(i64t.into());
                (format!("{name}_at"), void.fn_type(&m2, false))
            }
        };
        let f = module.add_function(&fname, ftype, Some(Linkage::External));
        c.b.position_at_end(ctx.append_basic_block(f, "entry"));
        let args: Vec<_> = f.get_params().iter().map(|p| (*p).into()).collect();
        let t = match entries {
            Entries::Host => f.get_params()[nparams].into_int_value(),
            Entries::Ptx => {
                f.set_call_conventions(PTX_KERNEL_CALL_CONV);
                global_thread_index(module, &c.b, ctx)?
            }
        };
        // Range: partial N * K / L threads, reduce M * N.
        let (k, n, m) = (
            f.get_params()[if count == 0 { 5 } else { 4 }].into_int_value(),
            f.get_params()[if count == 0 { 6 } else { 5 }].into_int_value(),
            f.get_params()[if count == 0 { 7 } else { 6 }].into_int_value(),
        );
        let limit = if count == 0 {
            let s =
                c.b.build_int_unsigned_div(k, c.i64(spec.slice as u64), "")?;
            c.b.build_int_mul(n, s, "")?
        } else {
            c.b.build_int_mul(m, n, "")?
        };
        let run = ctx.append_basic_block(f, "run");
        let done = ctx.append_basic_block(f, "done");
        let inside = c.b.build_int_compare(IntPredicate::ULT, t, limit, "")?;
        c.b.build_conditional_branch(inside, run, done)?;
        c.b.position_at_end(run);
        let mut call_args: Vec<_> = args[..nparams].to_vec();
        call_args.push(t.into());
        c.b.build_call(body, &call_args, "")?;
        c.b.build_unconditional_branch(done)?;
        c.b.position_at_end(done);
        c.b.build_return(None)?;
    }
    Ok(())
}

/// The PTX of the two kernels for `spec` and `target` (`.entry` [`PARTIAL`] and [`REDUCE`]).
pub fn emit_ptx(target: GpuTarget, spec: &Gemv4) -> Result<String, Error> {
    compile_ptx(
        &target_machine(target)?,
        "qc_gemv4",
        "default<O3>",
        |c, m| build(c, m, spec, Entries::Ptx),
    )
}

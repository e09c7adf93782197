//! Per-tensor activation fake quantization on NVIDIA GPUs: `y[i] = q(x[i] / s) * s` for int8, fp8 e4m3
//! and fp8 e5m2 with an f32 scale `s` (the quant.quantize of a calibrated activation followed by its
//! dequantization), bit-identical to qc_quant's arithmetic (the C `qc_fquant` of the CPU target does the
//! same steps): `x / s` in f32, then for int8 rounding half to even (`llvm.rint`) and saturating to
//! [-127, 127] as an integer code (a NaN quotient gives 0, a negative zero +0), for the minifloats rounding the binary value to `man`
//! mantissa bits above the smallest normal exponent `emin`, ties to even, saturating to ±max (a NaN
//! stays NaN, a zero keeps its sign), then times `s` in f32.
//!
//! Kernel [`ENTRY`]`(x, y, n, s)`: thread `t < n` (global index `ctaid.x * ntid.x + tid.x`) writes
//! `y[t]`. The host computes `s` as qc_quant does ([`FakeQuantPt::scale`]). Inputs must be finite:
//! the interpreter refuses non-finite ones; here they give the rounding of their quotient.
//!
//! As for [`crate::gemv4`], the tests compile the same IR body for the host CPU and run it element by
//! element against qc_quant.

use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::values::{FloatValue, FunctionValue, IntValue};
use inkwell::{FloatPredicate, IntPredicate};
use qc_ir::quant::{
    Convention, Encoding, QuantType, Rounding, Saturation, ScaleType, Scheme, TensorScale,
};

use crate::gemv4::Entries;
use crate::{
    compile_ptx, global_thread_index, target_machine, Error, GpuTarget, PTX_KERNEL_CALL_CONV,
};

/// The kernel's entry.
pub const ENTRY: &str = "qc_fquant_pt";

/// An element format of per-tensor fake quantization.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FakeQuantPt {
    /// Mantissa bits of a minifloat; `None` for int8.
    pub man: Option<u32>,
    /// Smallest normal exponent (minifloats).
    pub emin: i32,
    /// Largest finite value.
    pub max: f32,
}

impl FakeQuantPt {
    /// The kernel description of an activation format: int8, fp8 e4m3fn or e5m2 per tensor with an f32
    /// scale in the spec's convention, no second-level scale or zero point, rounding to nearest even,
    /// saturating; `None` otherwise.
    pub fn classify(fmt: &QuantType) -> Option<FakeQuantPt> {
        if fmt.scheme != Scheme::PerTensor
            || fmt.scale != ScaleType::F32
            || fmt.tensor_scale != TensorScale::None
            || fmt.zero_point.is_some()
            || fmt.round != Rounding::Rne
            || fmt.sat != Saturation::SatFinite
            || fmt.convention != Convention::Spec
        {
            return None;
        }
        match fmt.elem {
            Encoding::Int {
                bits: 8,
                signed: true,
            } => Some(FakeQuantPt {
                man: None,
                emin: 0,
                max: 127.0,
            }),
            e if e == Encoding::E4M3FN => Some(FakeQuantPt {
                man: Some(3),
                emin: -6,
                max: 448.0,
            }),
            e if e == Encoding::E5M2 => Some(FakeQuantPt {
                man: Some(2),
                emin: -14,
                max: 57344.0,
            }),
            _ => None,
        }
    }

    /// The f32 scale for the static maximum `amax`: `amax / max`, 1 when that is 0 (qc_quant's rule).
    pub fn scale(&self, amax: f32) -> f32 {
        let s = amax / self.max;
        if s == 0.0 {
            1.0
        } else {
            s
        }
    }
}

fn f32c<'c>(ctx: &'c Context, v: f32) -> FloatValue<'c> {
    ctx.f32_type().const_float(v as f64)
}

/// `q(v)` of the module documentation, as straight-line IR (selects, no branches).
pub(crate) fn round_elem<'c>(
    ctx: &'c Context,
    b: &Builder<'c>,
    module: &Module<'c>,
    spec: &FakeQuantPt,
    v: FloatValue<'c>,
) -> Result<FloatValue<'c>, Error> {
    let f32t = ctx.f32_type();
    let i32t = ctx.i32_type();
    let i64t = ctx.i64_type();
    let intr = |name: &'static str| -> Result<FunctionValue<'c>, Error> {
        inkwell::intrinsics::Intrinsic::find(name)
            .and_then(|i| i.get_declaration(module, &[f32t.into()]))
            .ok_or(Error::MissingIntrinsic(name))
    };
    let call1 = |f: FunctionValue<'c>, x: FloatValue<'c>| -> Result<FloatValue<'c>, Error> {
        Ok(b.build_call(f, &[x.into()], "")?
            .try_as_basic_value()
            .basic()
            .ok_or(Error::MissingIntrinsic("call"))?
            .into_float_value())
    };
    let maxf = f32c(ctx, spec.max);
    let Some(man) = spec.man else {
        // int8: NaN -> 0; rint; clamp.
        let r = call1(intr("llvm.rint")?, v)?;
        let lo = b.build_float_compare(FloatPredicate::OLT, r, f32c(ctx, -spec.max), "")?;
        let r = b
            .build_select(lo, f32c(ctx, -spec.max), r, "")?
            .into_float_value();
        let hi = b.build_float_compare(FloatPredicate::OGT, r, maxf, "")?;
        let r = b.build_select(hi, maxf, r, "")?.into_float_value();
        // Through an integer, as the code is one: -0 becomes +0.
        let code = b.build_float_to_signed_int(r, i32t, "")?;
        let r = b.build_signed_int_to_float(code, f32t, "")?;
        let nan = b.build_float_compare(FloatPredicate::UNO, v, v, "")?;
        return Ok(b
            .build_select(nan, f32c(ctx, 0.0), r, "")?
            .into_float_value());
    };
    let bits = b.build_bit_cast(v, i32t, "")?.into_int_value();
    let sign = b.build_and(bits, i32t.const_int(0x8000_0000, false), "")?;
    let a = b.build_and(bits, i32t.const_int(0x7fff_ffff, false), "")?;
    let i = |x: i64| i32t.const_int(x as u64, true);
    // Exponent and significand (normal or subnormal f32).
    let normal = b.build_int_compare(IntPredicate::UGE, a, i(0x0080_0000), "")?;
    let ctlz = inkwell::intrinsics::Intrinsic::find("llvm.ctlz")
        .and_then(|f| f.get_declaration(module, &[i32t.into()]))
        .ok_or(Error::MissingIntrinsic("llvm.ctlz"))?;
    let lz = b
        .build_call(ctlz, &[a.into(), ctx.bool_type().const_zero().into()], "")?
        .try_as_basic_value()
        .basic()
        .ok_or(Error::MissingIntrinsic("llvm.ctlz"))?
        .into_int_value();
    let e_norm = b.build_int_sub(b.build_right_shift(a, i(23), false, "")?, i(127), "")?;
    let e_sub = b.build_int_sub(i(31 - 149), lz, "")?;
    let e = b.build_select(normal, e_norm, e_sub, "")?.into_int_value();
    let sig_norm = b.build_or(b.build_and(a, i(0x7f_ffff), "")?, i(0x80_0000), "")?;
    let sig = b.build_select(normal, sig_norm, a, "")?.into_int_value();
    let exp2 = b
        .build_select(normal, b.build_int_sub(e, i(23), "")?, i(-149), "")?
        .into_int_value();
    // eb = max(e, emin); q = eb - man; shift = q - exp2.
    let gt = b.build_int_compare(IntPredicate::SGT, e, i(spec.emin as i64), "")?;
    let eb = b
        .build_select(gt, e, i(spec.emin as i64), "")?
        .into_int_value();
    let q = b.build_int_sub(eb, i(man as i64), "")?;
    let shift = b.build_int_sub(q, exp2, "")?;
    // shift > 0 always for fp8 targets (f32 has 23 mantissa bits, the target at most 3, and the
    // target's exponent range lies inside f32's); clamp to 40 (larger: the value rounds to 0).
    let sig64 = b.build_int_z_extend(sig, i64t, "")?;
    let big = b.build_int_compare(IntPredicate::SGT, shift, i(40), "")?;
    let sh = b.build_select(big, i(40), shift, "")?.into_int_value();
    let sh64 = b.build_int_z_extend(sh, i64t, "")?;
    let n = b.build_right_shift(sig64, sh64, false, "")?;
    let one = i64t.const_int(1, false);
    let mask = b.build_int_sub(b.build_left_shift(one, sh64, "")?, one, "")?;
    let rem = b.build_and(sig64, mask, "")?;
    let half = b.build_left_shift(one, b.build_int_sub(sh64, one, "")?, "")?;
    let above = b.build_int_compare(IntPredicate::UGT, rem, half, "")?;
    let tie = b.build_int_compare(IntPredicate::EQ, rem, half, "")?;
    let odd = b.build_int_compare(
        IntPredicate::NE,
        b.build_and(n, one, "")?,
        i64t.const_zero(),
        "",
    )?;
    let up = b.build_or(above, b.build_and(tie, odd, "")?, "")?;
    let n = b.build_int_add(n, b.build_int_z_extend(up, i64t, "")?, "")?;
    // v = n * 2^q (exact; 2^q built from bits, normal or subnormal).
    let nf = b.build_unsigned_int_to_float(n, f32t, "")?;
    let q_norm = b.build_int_compare(IntPredicate::SGE, q, i(-126), "")?;
    let p_norm = b.build_left_shift(b.build_int_add(q, i(127), "")?, i(23), "")?;
    let p_sub = b.build_left_shift(i(1), b.build_int_add(q, i(149), "")?, "")?;
    let p = b.build_select(q_norm, p_norm, p_sub, "")?.into_int_value();
    let pf = b.build_bit_cast(p, f32t, "")?.into_float_value();
    let mag = b.build_float_mul(nf, pf, "")?;
    let mag = b
        .build_select(
            b.build_float_compare(FloatPredicate::OGT, mag, maxf, "")?,
            maxf,
            mag,
            "",
        )?
        .into_float_value();
    // Sign back on (a zero keeps the input's sign).
    let mb = b.build_bit_cast(mag, i32t, "")?.into_int_value();
    let out = b.build_or(mb, sign, "")?;
    let out = b.build_bit_cast(out, f32t, "")?.into_float_value();
    // Zero, infinity and NaN inputs.
    let zero = b.build_int_compare(IntPredicate::EQ, a, i(0), "")?;
    let out = b.build_select(zero, v, out, "")?.into_float_value();
    let inf = b.build_int_compare(IntPredicate::EQ, a, i(0x7f80_0000), "")?;
    let smax = b.build_bit_cast(
        b.build_or(b.build_bit_cast(maxf, i32t, "")?.into_int_value(), sign, "")?,
        f32t,
        "",
    )?;
    let out = b
        .build_select(inf, smax.into_float_value(), out, "")?
        .into_float_value();
    let nan = b.build_int_compare(IntPredicate::UGT, a, i(0x7f80_0000), "")?;
    Ok(b.build_select(nan, v, out, "")?.into_float_value())
}

/// Adds the internal function `name(x, y, n, v, t)` of a fake-quant body (`x`, `y` pointers, `n`
/// and `t` i64, `v` f32).
fn fq_body<'c>(ctx: &'c Context, module: &Module<'c>, name: &str) -> FunctionValue<'c> {
    let ptr = ctx.ptr_type(inkwell::AddressSpace::default());
    let (i64t, f32t) = (ctx.i64_type(), ctx.f32_type());
    let params = [
        ptr.into(),
        ptr.into(),
        i64t.into(),
        f32t.into(),
        i64t.into(),
    ];
    module.add_function(
        name,
        ctx.void_type().fn_type(&params, false),
        Some(Linkage::Internal),
    )
}

/// Builds the body `qc_fquant_pt_body(x, y, n, s, t)` and its entry ([`ENTRY`] for PTX, or
/// `qc_fquant_pt_at(x, y, n, s, t)` for the host).
pub fn build<'c>(
    ctx: &'c Context,
    module: &Module<'c>,
    spec: &FakeQuantPt,
    entries: Entries,
) -> Result<(), Error> {
    let b = ctx.create_builder();
    let f32t = ctx.f32_type();
    let body = fq_body(ctx, module, "qc_fquant_pt_body");
    {
        let a = body.get_params();
        let (x, y, s, t) = (
            a[0].into_pointer_value(),
            a[1].into_pointer_value(),
            a[3].into_float_value(),
            a[4].into_int_value(),
        );
        b.position_at_end(ctx.append_basic_block(body, "entry"));
        // SAFETY: t < n (the entries check), and x, y hold n elements.
        let (px, py) = unsafe {
            (
                b.build_in_bounds_gep(f32t, x, &[t], "")?,
                b.build_in_bounds_gep(f32t, y, &[t], "")?,
            )
        };
        let xv = b.build_load(f32t, px, "")?.into_float_value();
        let v = b.build_float_div(xv, s, "")?;
        let r = round_elem(ctx, &b, module, spec, v)?;
        let out = b.build_float_mul(r, s, "")?;
        b.build_store(py, out)?;
        b.build_return(None)?;
    }
    fq_entry(ctx, module, &b, body, ENTRY, 1, entries)
}

/// The entry `name` (PTX kernel, or host `<name>_at(x, y, n, v, t)`) of a fake-quant `body(x, y, n,
/// v, t)`: thread `t < n / per_thread` runs it.
fn fq_entry<'c>(
    ctx: &'c Context,
    module: &Module<'c>,
    b: &Builder<'c>,
    body: FunctionValue<'c>,
    name: &str,
    per_thread: u64,
    entries: Entries,
) -> Result<(), Error> {
    let ptr = ctx.ptr_type(inkwell::AddressSpace::default());
    let (i64t, f32t, void) = (ctx.i64_type(), ctx.f32_type(), ctx.void_type());
    let mut params: Vec<_> = vec![ptr.into(), ptr.into(), i64t.into(), f32t.into()];
    let (fname, host) = match entries {
        Entries::Ptx => (name.to_string(), false),
        Entries::Host => {
            params.push(i64t.into());
            (format!("{name}_at"), true)
        }
    };
    let f = module.add_function(
        &fname,
        void.fn_type(&params, false),
        Some(Linkage::External),
    );
    b.position_at_end(ctx.append_basic_block(f, "entry"));
    let t: IntValue = if host {
        f.get_params()[4].into_int_value()
    } else {
        f.set_call_conventions(PTX_KERNEL_CALL_CONV);
        global_thread_index(module, b, ctx)?
    };
    let p = f.get_params();
    let limit =
        b.build_int_unsigned_div(p[2].into_int_value(), i64t.const_int(per_thread, false), "")?;
    let run = ctx.append_basic_block(f, "run");
    let done = ctx.append_basic_block(f, "done");
    b.build_conditional_branch(
        b.build_int_compare(IntPredicate::ULT, t, limit, "")?,
        run,
        done,
    )?;
    b.position_at_end(run);
    b.build_call(
        body,
        &[p[0].into(), p[1].into(), p[2].into(), p[3].into(), t.into()],
        "",
    )?;
    b.build_unconditional_branch(done)?;
    b.position_at_end(done);
    b.build_return(None)?;
    Ok(())
}

/// The PTX of the kernel for `spec` and `target`.
pub fn emit_ptx(target: GpuTarget, spec: &FakeQuantPt) -> Result<String, Error> {
    compile_ptx(
        &target_machine(target)?,
        "qc_fquant",
        "default<O3>",
        |c, m| build(c, m, spec, Entries::Ptx),
    )
}

/// The block kernel's entry.
pub const BLOCK_ENTRY: &str = "qc_fquant_block";

/// A block-scaled activation format the block kernel quantizes (blocks of `block` consecutive
/// elements along the last axis), as the CPU target's `qc_fquant` does it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FakeQuantBlock {
    /// MX: e8m0 scales by the FLOOR rule, `2^(floor(log2(block amax)) - emax)` (at least 2^-127);
    /// elements `round(x * 2^-E) * 2^E` (mxfp8, mxfp8_e5m2, mxfp4).
    Mx {
        /// The element (minifloat).
        elem: FakeQuantPt,
        /// Elements per block.
        block: usize,
        /// The element's largest exponent.
        emax: i32,
    },
    /// NVFP4 in ModelOpt's arithmetic with the static maximum `t` as the tensor maximum: global
    /// scale `g = t / (6 * 448)`; block scale `ue4m3(max(min(a, t) / (6 g), 2^-9))` (1 for a zero
    /// block), total `s = scale * g`; elements `round(x / s) * s`, a zero quotient +0.
    Nvfp4 {
        /// Elements per block.
        block: usize,
    },
}

impl FakeQuantBlock {
    /// The kernel description of an activation format, or `None`.
    pub fn classify(fmt: &QuantType) -> Option<FakeQuantBlock> {
        if fmt.round != Rounding::Rne
            || fmt.sat != Saturation::SatFinite
            || fmt.zero_point.is_some()
        {
            return None;
        }
        let Scheme::Group { size, axis: -1 } = fmt.scheme else {
            return None;
        };
        let block = size as usize;
        let float = |e: Encoding| -> Option<FakeQuantPt> {
            let Encoding::Float(m) = e else { return None };
            if m.policy == qc_ir::quant::InfNan::Fnuz {
                return None;
            }
            Some(FakeQuantPt {
                man: Some(m.man_bits as u32),
                emin: 1 - m.bias,
                max: e.max_finite() as f32,
            })
        };
        match (fmt.scale, fmt.tensor_scale, fmt.convention) {
            (ScaleType::E8M0, TensorScale::None, _)
                if fmt.rule == qc_ir::quant::ScaleRule::Floor
                    && [Encoding::E4M3FN, Encoding::E5M2, Encoding::E2M1].contains(&fmt.elem) =>
            {
                Some(FakeQuantBlock::Mx {
                    elem: float(fmt.elem)?,
                    block,
                    emax: qc_quant::scale::emax_elem(&fmt.elem),
                })
            }
            (ScaleType::UE4M3, TensorScale::Divisor, Convention::ModelOpt)
                if fmt.elem == Encoding::E2M1 =>
            {
                Some(FakeQuantBlock::Nvfp4 { block })
            }
            _ => None,
        }
    }

    /// Elements per block (one thread each).
    pub fn block(&self) -> usize {
        match self {
            FakeQuantBlock::Mx { block, .. } | FakeQuantBlock::Nvfp4 { block } => *block,
        }
    }
}

/// `2^e` as f32 for `e` in [-149, 127] (normal or subnormal; qc_quant's `pow2_f32`).
fn pow2<'c>(b: &Builder<'c>, ctx: &'c Context, e: IntValue<'c>) -> Result<FloatValue<'c>, Error> {
    let i32t = ctx.i32_type();
    let i = |x: i64| i32t.const_int(x as u64, true);
    let normal = b.build_int_compare(IntPredicate::SGE, e, i(-126), "")?;
    let pn = b.build_left_shift(b.build_int_add(e, i(127), "")?, i(23), "")?;
    let ps = b.build_left_shift(i(1), b.build_int_add(e, i(149), "")?, "")?;
    let bits = b.build_select(normal, pn, ps, "")?.into_int_value();
    Ok(b.build_bit_cast(bits, ctx.f32_type(), "")?
        .into_float_value())
}

/// One block quantized by [`quantize_block`].
pub(crate) struct QuantBlock<'c> {
    /// The elements rounded to the element format (values of it, before the scale).
    pub(crate) q: Vec<FloatValue<'c>>,
    /// What they are multiplied by to dequantize: `2^E` (MX) or the block scale times the global
    /// scale (NVFP4).
    pub(crate) scale: FloatValue<'c>,
    /// The block scale's byte (in the low 8 bits of an i32): `E + 127` (e8m0) or the ue4m3 bits of
    /// the rounded block scale, without the NVFP4 global scale.
    pub(crate) scale_byte: IntValue<'c>,
}

/// Quantizes one block `xs` of `spec` as the module documentation says (the arithmetic of the
/// CPU target's `qc_fquant`); `tamax` is the static tensor maximum (NVFP4 only). The maximum is
/// taken in element order, `a > m ? a : m`.
pub(crate) fn quantize_block<'c>(
    ctx: &'c Context,
    b: &Builder<'c>,
    module: &Module<'c>,
    spec: &FakeQuantBlock,
    xs: &[FloatValue<'c>],
    tamax: FloatValue<'c>,
) -> Result<QuantBlock<'c>, Error> {
    let (f32t, i32t) = (ctx.f32_type(), ctx.i32_type());
    let fabs = inkwell::intrinsics::Intrinsic::find("llvm.fabs")
        .and_then(|i| i.get_declaration(module, &[f32t.into()]))
        .ok_or(Error::MissingIntrinsic("llvm.fabs"))?;
    let mut amax = f32c(ctx, 0.0);
    for v in xs {
        let av = b
            .build_call(fabs, &[(*v).into()], "")?
            .try_as_basic_value()
            .basic()
            .ok_or(Error::MissingIntrinsic("llvm.fabs"))?
            .into_float_value();
        let gt = b.build_float_compare(FloatPredicate::OGT, av, amax, "")?;
        amax = b.build_select(gt, av, amax, "")?.into_float_value();
    }
    let i = |v: i64| i32t.const_int(v as u64, true);
    match spec {
        FakeQuantBlock::Mx { elem, emax, .. } => {
            // E = floor(log2(a)) - emax (a zero block as the smallest normal), at least -127.
            let zero = b.build_float_compare(FloatPredicate::OEQ, amax, f32c(ctx, 0.0), "")?;
            let a = b
                .build_select(zero, f32c(ctx, f32::MIN_POSITIVE), amax, "")?
                .into_float_value();
            let bits = b.build_bit_cast(a, i32t, "")?.into_int_value();
            let e = b.build_int_sub(
                b.build_right_shift(bits, i(23), false, "")?,
                i(127 + *emax as i64),
                "",
            )?;
            let lt = b.build_int_compare(IntPredicate::SLT, e, i(-127), "")?;
            let e = b.build_select(lt, i(-127), e, "")?.into_int_value();
            let m = pow2(b, ctx, b.build_int_neg(e, "")?)?;
            let q = xs
                .iter()
                .map(|v| round_elem(ctx, b, module, elem, b.build_float_mul(*v, m, "")?))
                .collect::<Result<_, Error>>()?;
            Ok(QuantBlock {
                q,
                scale: pow2(b, ctx, e)?,
                scale_byte: b.build_int_add(e, i(127), "")?,
            })
        }
        FakeQuantBlock::Nvfp4 { .. } => {
            let e2m1 = FakeQuantPt {
                man: Some(1),
                emin: 0,
                max: 6.0,
            };
            let e4m3 = FakeQuantPt {
                man: Some(3),
                emin: -6,
                max: 448.0,
            };
            // g = t / (6 * 448), or 1 for a zero maximum.
            let tz = b.build_float_compare(FloatPredicate::OEQ, tamax, f32c(ctx, 0.0), "")?;
            let g = b.build_float_div(tamax, f32c(ctx, 6.0 * 448.0), "")?;
            let g = b
                .build_select(tz, f32c(ctx, 1.0), g, "")?
                .into_float_value();
            let over = b.build_float_compare(FloatPredicate::OGT, amax, tamax, "")?;
            let a = b.build_select(over, tamax, amax, "")?.into_float_value();
            let sc = b.build_float_div(a, b.build_float_mul(f32c(ctx, 6.0), g, "")?, "")?;
            let sz = b.build_float_compare(FloatPredicate::OEQ, sc, f32c(ctx, 0.0), "")?;
            let sc = b
                .build_select(sz, f32c(ctx, 1.0), sc, "")?
                .into_float_value();
            let tiny = f32c(ctx, 2f32.powi(-9));
            let small = b.build_float_compare(FloatPredicate::OLT, sc, tiny, "")?;
            let sc = b.build_select(small, tiny, sc, "")?.into_float_value();
            // Below 448 (a <= t): rounding to e4m3 never overflows, so saturating is exact.
            let rsc = round_elem(ctx, b, module, &e4m3, sc)?;
            let total = b.build_float_mul(rsc, g, "")?;
            let q = xs
                .iter()
                .map(|v| {
                    let qv = b.build_float_div(*v, total, "")?;
                    // A zero quotient (of either sign) gets the +0 code.
                    let z = b.build_float_compare(FloatPredicate::OEQ, qv, f32c(ctx, 0.0), "")?;
                    let qv = b
                        .build_select(z, f32c(ctx, 0.0), qv, "")?
                        .into_float_value();
                    round_elem(ctx, b, module, &e2m1, qv)
                })
                .collect::<Result<_, Error>>()?;
            Ok(QuantBlock {
                q,
                scale: total,
                scale_byte: minifloat_bits(ctx, b, rsc, 3, -6)?,
            })
        }
    }
}

/// The byte (in the low 8 bits of an i32, the sign in bit 7) of `v`, which must be a value of the
/// minifloat with `man` mantissa bits and smallest normal exponent `emin`: zero, a normal or a
/// subnormal of it, or NaN (0x7f).
pub(crate) fn minifloat_bits<'c>(
    ctx: &'c Context,
    b: &Builder<'c>,
    v: FloatValue<'c>,
    man: u32,
    emin: i32,
) -> Result<IntValue<'c>, Error> {
    let i32t = ctx.i32_type();
    let f32t = ctx.f32_type();
    let i = |x: i64| i32t.const_int(x as u64, true);
    let bits = b.build_bit_cast(v, i32t, "")?.into_int_value();
    let sign = b.build_right_shift(bits, i(24), false, "")?;
    let sign = b.build_and(sign, i(0x80), "")?;
    let a = b.build_and(bits, i(0x7fff_ffff), "")?;
    // Normal: biased exponent e - emin + 1, the top `man` mantissa bits.
    let e = b.build_right_shift(a, i(23), false, "")?;
    let be = b.build_int_sub(e, i(127 + emin as i64 - 1), "")?;
    let normal = b.build_or(
        b.build_left_shift(be, i(man as i64), "")?,
        b.build_and(
            b.build_right_shift(a, i(23 - man as i64), false, "")?,
            i((1 << man) - 1),
            "",
        )?,
        "",
    )?;
    // Subnormal (and zero): |v| / 2^(emin - man), an integer below 2^man.
    let av = b.build_bit_cast(a, f32t, "")?.into_float_value();
    let unit = f32t.const_float(2f64.powi(man as i32 - emin));
    let sub = b.build_float_mul(av, unit, "")?;
    let sub = b.build_float_to_unsigned_int(sub, i32t, "")?;
    let is_normal =
        b.build_int_compare(IntPredicate::UGE, a, i(((127 + emin) as i64) << 23), "")?;
    let mag = b.build_select(is_normal, normal, sub, "")?.into_int_value();
    let code = b.build_or(mag, sign, "")?;
    let nan = b.build_float_compare(FloatPredicate::UNO, v, v, "")?;
    Ok(b.build_select(nan, i(0x7f), code, "")?.into_int_value())
}

/// The 4-bit e2m1 code (sign in bit 3, in the low bits of an i32) of `q`, a value of e2m1.
pub(crate) fn e2m1_code<'c>(
    ctx: &'c Context,
    b: &Builder<'c>,
    q: FloatValue<'c>,
) -> Result<IntValue<'c>, Error> {
    let i32t = ctx.i32_type();
    let bits = minifloat_bits(ctx, b, q, 1, 0)?;
    let mag = b.build_and(bits, i32t.const_int(7, false), "")?;
    let sign = b.build_and(
        b.build_right_shift(bits, i32t.const_int(4, false), false, "")?,
        i32t.const_int(8, false),
        "",
    )?;
    Ok(b.build_or(mag, sign, "")?)
}

/// Builds the block kernel: body `qc_fquant_block_body(x, y, n, t_amax, t)` (thread `t` quantizes
/// block `t`, `t_amax` the static tensor maximum, used by NVFP4) and its entry ([`BLOCK_ENTRY`], or
/// `qc_fquant_block_at` for the host).
pub fn build_block<'c>(
    ctx: &'c Context,
    module: &Module<'c>,
    spec: &FakeQuantBlock,
    entries: Entries,
) -> Result<(), Error> {
    let b = ctx.create_builder();
    let (i64t, f32t) = (ctx.i64_type(), ctx.f32_type());
    let body = fq_body(ctx, module, "qc_fquant_block_body");
    let a = body.get_params();
    let (x, y, tamax, t) = (
        a[0].into_pointer_value(),
        a[1].into_pointer_value(),
        a[3].into_float_value(),
        a[4].into_int_value(),
    );
    b.position_at_end(ctx.append_basic_block(body, "entry"));
    let bs = spec.block();
    let base = b.build_int_mul(t, i64t.const_int(bs as u64, false), "")?;
    let mut xs = Vec::with_capacity(bs);
    for e in 0..bs as u64 {
        let idx = b.build_int_add(base, i64t.const_int(e, false), "")?;
        // SAFETY: block t lies inside the n elements (the entry checks t < n / bs).
        let px = unsafe { b.build_in_bounds_gep(f32t, x, &[idx], "")? };
        xs.push(b.build_load(f32t, px, "")?.into_float_value());
    }
    let qb = quantize_block(ctx, &b, module, spec, &xs, tamax)?;
    let outs: Vec<FloatValue> =
        qb.q.iter()
            .map(|q| b.build_float_mul(*q, qb.scale, ""))
            .collect::<Result<_, _>>()?;
    for (e, o) in outs.iter().enumerate() {
        let idx = b.build_int_add(base, i64t.const_int(e as u64, false), "")?;
        let py = unsafe { b.build_in_bounds_gep(f32t, y, &[idx], "")? };
        b.build_store(py, *o)?;
    }
    b.build_return(None)?;
    fq_entry(ctx, module, &b, body, BLOCK_ENTRY, bs as u64, entries)
}

/// The PTX of the block kernel for `spec` and `target`.
pub fn emit_block_ptx(target: GpuTarget, spec: &FakeQuantBlock) -> Result<String, Error> {
    compile_ptx(
        &target_machine(target)?,
        "qc_fquant_block",
        "default<O3>",
        |c, m| build_block(c, m, spec, Entries::Ptx),
    )
}

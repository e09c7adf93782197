//! Row kernels over a row-major f32 matrix `[rows, len]`: softmax, log-softmax and layer
//! normalization over the last axis (the export's `Softmax`, `LogSoftmax` and `LayerNorm` kernel
//! calls), one warp per row.
//!
//! # Kernels
//! - [`SOFTMAX`]`(x, y, rows, len)`: `y[r][j] = exp(x[r][j] - m) / s` with `m = max_j x[r][j]` and
//!   `s = sum_j exp(x[r][j] - m)`.
//! - [`LOG_SOFTMAX`]`(x, y, rows, len)`: `y[r][j] = (x[r][j] - m) - log(s)`.
//! - [`LAYERNORM`]`(x, gamma, beta, y, rows, len, eps)`: `y[r][j] = (x[r][j] - mean) / sqrt(var +
//!   eps) * gamma[j] + beta[j]` with `mean = sum_j x[r][j] / len` and, in a second pass, `var =
//!   sum_j (x[r][j] - mean)^2 / len` (not `E[x^2] - mean^2`); `gamma` and `beta` hold `len`
//!   elements.
//!
//! `x`, `y` (and `gamma`, `beta`) are f32 arrays, `rows` and `len` 64-bit, `eps` f32; `y` may not
//! overlap `x`. Any `len`, also not a multiple of 32 and below 32.
//!
//! # Launch
//! Warp `w = global thread / 32` computes row `w`; launch `rows * 32` threads, e.g. in blocks of
//! [`BLOCK`] threads rounded up (warps past the last row return, a whole warp at a time). Lane `l`
//! takes the elements `l, l + 32, l + 64, ...` of the row (consecutive lanes read consecutive
//! elements) and keeps its running maximum or sum; the 32 partial results are combined with the
//! butterfly shuffle `shfl.sync.bfly` (offsets 16, 8, 4, 2, 1), which leaves every lane with the
//! same value (each step combines the same two operands on both lanes of a pair). Each pass reads the
//! row again from global memory (the cache serves the later passes); no shared memory.
//!
//! # Numerics
//! Sums accumulate in f32 in the kernel's order (each lane in element order, then the butterfly),
//! not the sequential order of the interpreter (which sums in f64), so results agree within float
//! tolerance, not bit for bit. `exp` and `log` are computed in the kernel with f32 arithmetic (range
//! reduction by `ln 2` in two parts, then a polynomial: within a few ulps), `sqrt` and the divisions
//! are IEEE (`sqrt.rn`, `div.rn`), and every multiply-add is an explicit `fma`, so the PTX and the
//! host bodies that the tests run compute the same bits. A NaN in a row makes its results NaN; a
//! row of `-inf` gives NaN (as the interpreter).
//!
//! # Host entries
//! With [`Entries::Host`] the builder adds `<entry>_at(params..., warp, t)` for thread `t`, every
//! shuffle a call of the external [`SHFL_EMULATOR`] `float qc_rows_shfl(void *warp, int64_t lane,
//! float v, int32_t lane_mask)`, which must return lane `lane ^ lane_mask`'s `v` (the tests run the
//! 32 lanes of a warp on their own threads, exchanging values through a barrier).

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, FloatValue, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate};

pub use crate::gemv4::Entries;
use crate::gemv4::{for_loop, Cx};
use crate::{compile_ptx, target_machine, Error, GpuTarget};

/// The softmax kernel's entry.
pub const SOFTMAX: &str = "qc_softmax_rows";
/// The log-softmax kernel's entry.
pub const LOG_SOFTMAX: &str = "qc_log_softmax_rows";
/// The layer normalization kernel's entry.
pub const LAYERNORM: &str = "qc_layernorm_rows";
/// Threads per block the launch plan uses (8 rows per block).
pub const BLOCK: u32 = 256;
/// The host shuffle emulator's symbol ([`Entries::Host`]).
pub const SHFL_EMULATOR: &str = "qc_rows_shfl";

/// Which row kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKernel {
    /// [`SOFTMAX`].
    Softmax,
    /// [`LOG_SOFTMAX`].
    LogSoftmax,
    /// [`LAYERNORM`].
    LayerNorm,
}

impl RowKernel {
    /// Every row kernel.
    pub const ALL: [RowKernel; 3] = [
        RowKernel::Softmax,
        RowKernel::LogSoftmax,
        RowKernel::LayerNorm,
    ];

    /// The kernel's entry.
    pub fn entry(self) -> &'static str {
        match self {
            RowKernel::Softmax => SOFTMAX,
            RowKernel::LogSoftmax => LOG_SOFTMAX,
            RowKernel::LayerNorm => LAYERNORM,
        }
    }
}

/// How the bodies exchange values between lanes.
enum Shfl<'c> {
    Ptx(FunctionValue<'c>),
    Host {
        emu: FunctionValue<'c>,
        warp: PointerValue<'c>,
        lane: IntValue<'c>,
    },
}

impl<'c> Shfl<'c> {
    /// Lane `lane ^ mask`'s `v`.
    fn bfly(&self, c: &Cx<'c>, v: FloatValue<'c>, mask: u64) -> Result<FloatValue<'c>, Error> {
        let i32t = c.ctx.i32_type();
        let args: Vec<BasicMetadataValueEnum> = match self {
            Shfl::Ptx(_) => vec![
                i32t.const_int(0xffff_ffff, false).into(),
                v.into(),
                i32t.const_int(mask, false).into(),
                i32t.const_int(0x1f, false).into(),
            ],
            Shfl::Host { warp, lane, .. } => vec![
                (*warp).into(),
                (*lane).into(),
                v.into(),
                i32t.const_int(mask, false).into(),
            ],
        };
        let f = match self {
            Shfl::Ptx(f) | Shfl::Host { emu: f, .. } => *f,
        };
        Ok(c.b
            .build_call(f, &args, "")?
            .try_as_basic_value()
            .basic()
            .ok_or(Error::MissingIntrinsic("llvm.nvvm.shfl.sync.bfly.f32"))?
            .into_float_value())
    }

    /// `v` combined over the warp by `op` with the butterfly (the same result on every lane).
    fn reduce(
        &self,
        c: &Cx<'c>,
        v: FloatValue<'c>,
        op: impl Fn(&Cx<'c>, FloatValue<'c>, FloatValue<'c>) -> Result<FloatValue<'c>, Error>,
    ) -> Result<FloatValue<'c>, Error> {
        let mut v = v;
        for mask in [16, 8, 4, 2, 1] {
            let other = self.bfly(c, v, mask)?;
            v = op(c, v, other)?;
        }
        Ok(v)
    }
}

/// `ln 2` in two parts: `LN2_HI` (9 significant bits, so that `n LN2_HI` is exact for the `n` of
/// [`exp`] and [`log`]) and the rest.
const LN2_HI: f32 = 355.0 / 512.0;
const LN2_LO: f32 = -2.121_944_4e-4;

fn f32c<'c>(c: &Cx<'c>, v: f32) -> FloatValue<'c> {
    c.ctx.f32_type().const_float(v as f64)
}

/// `max(a, b)` with NaN propagated (a NaN operand is the result), by compares and a select, so that
/// the host and the PTX compute the same.
fn fmax<'c>(c: &Cx<'c>, a: FloatValue<'c>, b: FloatValue<'c>) -> Result<FloatValue<'c>, Error> {
    // Unordered-or-greater: a NaN `a` stays, a NaN `b` replaces `a`.
    let keep_a = c.b.build_float_compare(FloatPredicate::UGT, a, b, "")?;
    let a_nan = c.b.build_float_compare(FloatPredicate::UNO, a, a, "")?;
    let keep_a = c.b.build_or(keep_a, a_nan, "")?;
    let b_nan = c.b.build_float_compare(FloatPredicate::UNO, b, b, "")?;
    let keep_a = c.b.build_and(keep_a, c.b.build_not(b_nan, "")?, "")?;
    Ok(c.b.build_select(keep_a, a, b, "")?.into_float_value())
}

/// `exp(x)` in f32: `x = n ln2 + r` (`n` the nearest integer to `x / ln2`, `ln2` in two parts),
/// `exp(r)` by its Taylor polynomial of degree 7 (|r| <= ln2 / 2), scaled by `2^n` in two steps
/// (subnormal results). 0 below -104, `inf` above about 88.72, NaN for NaN.
fn exp<'c>(c: &Cx<'c>, x: FloatValue<'c>) -> Result<FloatValue<'c>, Error> {
    let (f32t, i32t) = (c.ctx.f32_type(), c.ctx.i32_type());
    let lo =
        c.b.build_float_compare(FloatPredicate::OLT, x, f32c(c, -104.0), "")?;
    let xc =
        c.b.build_select(lo, f32c(c, -104.0), x, "")?
            .into_float_value();
    let hi =
        c.b.build_float_compare(FloatPredicate::OGT, xc, f32c(c, 89.0), "")?;
    let xc =
        c.b.build_select(hi, f32c(c, 89.0), xc, "")?
            .into_float_value();
    // n = round(x / ln2): the magic constant 1.5 * 2^23 rounds to an integer.
    let magic = f32c(c, 12_582_912.0);
    let t = c.fma(xc, f32c(c, std::f32::consts::LOG2_E), magic)?;
    let nf = c.b.build_float_sub(t, magic, "")?;
    // r = x - n ln2_hi - n ln2_lo (ln2_hi has 9 significant bits: n ln2_hi is exact).
    let r = c.fma(nf, f32c(c, -LN2_HI), xc)?;
    let r = c.fma(nf, f32c(c, -LN2_LO), r)?;
    let mut p = f32c(c, 1.0 / 5040.0);
    for k in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = c.fma(p, r, f32c(c, (1.0 / k) as f32))?;
    }
    // p * 2^n1 * 2^n2, n1 = n >> 1, n2 = n - n1 (each a normal power of two: n in [-151, 129]).
    let n = c.b.build_float_to_signed_int(nf, i32t, "")?;
    let n1 =
        c.b.build_right_shift(n, i32t.const_int(1, false), true, "")?;
    let n2 = c.b.build_int_sub(n, n1, "")?;
    let pow2 = |k: IntValue<'c>| -> Result<FloatValue<'c>, Error> {
        let e = c.b.build_int_add(k, i32t.const_int(127, false), "")?;
        let bits = c.b.build_left_shift(e, i32t.const_int(23, false), "")?;
        Ok(c.b.build_bit_cast(bits, f32t, "")?.into_float_value())
    };
    let y = c.b.build_float_mul(p, pow2(n1)?, "")?;
    let y = c.b.build_float_mul(y, pow2(n2)?, "")?;
    let y =
        c.b.build_select(lo, f32t.const_zero(), y, "")?
            .into_float_value();
    let nan = c.b.build_float_compare(FloatPredicate::UNO, x, x, "")?;
    Ok(c.b.build_select(nan, x, y, "")?.into_float_value())
}

/// `log(s)` in f32 for positive normal `s` (the softmax sums, in `[1, len]`): `s = m 2^e` with `m`
/// in `[sqrt(1/2), sqrt(2))`, `log(m) = 2 atanh(z)`, `z = (m - 1) / (m + 1)`, by its series to
/// `z^11`; `e ln2` in two parts. NaN for NaN.
fn log<'c>(c: &Cx<'c>, s: FloatValue<'c>) -> Result<FloatValue<'c>, Error> {
    let (f32t, i32t) = (c.ctx.f32_type(), c.ctx.i32_type());
    let bits = c.b.build_bit_cast(s, i32t, "")?.into_int_value();
    // The exponent relative to sqrt(1/2) (0x3f3504f3): m in [sqrt(1/2), sqrt(2)).
    let off =
        c.b.build_int_sub(bits, i32t.const_int(0x3f35_04f3, false), "")?;
    let e =
        c.b.build_right_shift(off, i32t.const_int(23, false), true, "")?;
    let mbits = c.b.build_int_sub(
        bits,
        c.b.build_left_shift(e, i32t.const_int(23, false), "")?,
        "",
    )?;
    let m = c.b.build_bit_cast(mbits, f32t, "")?.into_float_value();
    let one = f32c(c, 1.0);
    let z = c.b.build_float_div(
        c.b.build_float_sub(m, one, "")?,
        c.b.build_float_add(m, one, "")?,
        "",
    )?;
    let z2 = c.b.build_float_mul(z, z, "")?;
    let mut p = f32c(c, 2.0 / 11.0);
    for k in [9.0, 7.0, 5.0, 3.0] {
        p = c.fma(p, z2, f32c(c, (2.0 / k) as f32))?;
    }
    // 2z + z * z2 * p.
    let zz = c.b.build_float_mul(z, z2, "")?;
    let lm = c.fma(zz, p, c.b.build_float_add(z, z, "")?)?;
    let ef = c.b.build_signed_int_to_float(e, f32t, "")?;
    let y = c.fma(ef, f32c(c, LN2_LO), lm)?;
    let y = c.fma(ef, f32c(c, LN2_HI), y)?;
    let nan = c.b.build_float_compare(FloatPredicate::UNO, s, s, "")?;
    Ok(c.b.build_select(nan, s, y, "")?.into_float_value())
}

/// The loop over this lane's elements `lane + 32 i < len` of the row at `row`: `body(element
/// pointer offset)`.
fn lane_loop<'c>(
    c: &Cx<'c>,
    f: FunctionValue<'c>,
    lane: IntValue<'c>,
    len: IntValue<'c>,
    body: impl FnOnce(&Cx<'c>, IntValue<'c>) -> Result<(), Error>,
) -> Result<(), Error> {
    // ceil((len - lane) / 32), 0 when lane >= len.
    let count = c.b.build_int_unsigned_div(
        c.b.build_int_sub(c.b.build_int_add(len, c.i64(31), "")?, lane, "")?,
        c.i64(32),
        "",
    )?;
    for_loop(c, f, count, |c, i| {
        let j =
            c.b.build_int_add(c.b.build_int_mul(i, c.i64(32), "")?, lane, "")?;
        body(c, j)
    })
}

/// A running f32 value in an alloca (the loop's accumulator).
fn acc<'c>(c: &Cx<'c>, init: FloatValue<'c>) -> Result<PointerValue<'c>, Error> {
    let p = c.b.build_alloca(c.ctx.f32_type(), "acc")?;
    c.b.build_store(p, init)?;
    Ok(p)
}

fn get<'c>(c: &Cx<'c>, p: PointerValue<'c>) -> Result<FloatValue<'c>, Error> {
    Ok(c.b.build_load(c.ctx.f32_type(), p, "")?.into_float_value())
}

/// Builds `kernel`'s body and its entry for `entries` into `module`.
pub fn build<'c>(
    ctx: &'c Context,
    module: &Module<'c>,
    kernel: RowKernel,
    entries: Entries,
) -> Result<(), Error> {
    let c = Cx::new(ctx, module)?;
    let ptr = ctx.ptr_type(AddressSpace::default());
    let (i64t, f32t, i32t) = (ctx.i64_type(), ctx.f32_type(), ctx.i32_type());
    let norm = kernel == RowKernel::LayerNorm;
    // The entry's parameters: (x, y, rows, len) or (x, gamma, beta, y, rows, len, eps).
    let mut params: Vec<BasicMetadataTypeEnum> = if norm {
        vec![
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i64t.into(),
            i64t.into(),
            f32t.into(),
        ]
    } else {
        vec![ptr.into(), ptr.into(), i64t.into(), i64t.into()]
    };
    let nparams = params.len();
    // The body takes them, then the emulator state and the thread index.
    params.push(ptr.into());
    params.push(i64t.into());
    let body = module.add_function(
        &format!("{}_body", kernel.entry()),
        ctx.void_type().fn_type(&params, false),
        Some(Linkage::Internal),
    );
    let a = body.get_params();
    let x = a[0].into_pointer_value();
    let y = a[if norm { 3 } else { 1 }].into_pointer_value();
    let len = a[if norm { 5 } else { 3 }].into_int_value();
    let (warp_arg, t) = (
        a[nparams].into_pointer_value(),
        a[nparams + 1].into_int_value(),
    );
    c.b.position_at_end(ctx.append_basic_block(body, "entry"));
    let lane = c.b.build_and(t, c.i64(31), "lane")?;
    let row = c.b.build_right_shift(t, c.i64(5), false, "row")?;
    let shfl = match entries {
        Entries::Ptx => {
            let name = "llvm.nvvm.shfl.sync.bfly.f32";
            Shfl::Ptx(
                Intrinsic::find(name)
                    .and_then(|i| i.get_declaration(module, &[]))
                    .ok_or(Error::MissingIntrinsic(name))?,
            )
        }
        Entries::Host => {
            let emu = module.add_function(
                SHFL_EMULATOR,
                f32t.fn_type(&[ptr.into(), i64t.into(), f32t.into(), i32t.into()], false),
                None,
            );
            Shfl::Host {
                emu,
                warp: warp_arg,
                lane,
            }
        }
    };
    let start = c.b.build_int_mul(row, len, "")?;
    let xr = c.gep(f32t.into(), x, start)?;
    let yr = c.gep(f32t.into(), y, start)?;
    let add = |c: &Cx<'c>, a: FloatValue<'c>, b: FloatValue<'c>| -> Result<FloatValue<'c>, Error> {
        Ok(c.b.build_float_add(a, b, "")?)
    };
    if norm {
        let (gamma, beta, eps) = (
            a[1].into_pointer_value(),
            a[2].into_pointer_value(),
            a[6].into_float_value(),
        );
        let n = c.b.build_unsigned_int_to_float(len, f32t, "n")?;
        // mean
        let s = acc(&c, f32t.const_zero())?;
        lane_loop(&c, body, lane, len, |c, j| {
            let v = c.load_f32(xr, j)?;
            c.b.build_store(s, c.b.build_float_add(get(c, s)?, v, "")?)?;
            Ok(())
        })?;
        let sum = shfl.reduce(&c, get(&c, s)?, add)?;
        let mean = c.b.build_float_div(sum, n, "mean")?;
        // variance of x - mean
        let q = acc(&c, f32t.const_zero())?;
        lane_loop(&c, body, lane, len, |c, j| {
            let d = c.b.build_float_sub(c.load_f32(xr, j)?, mean, "")?;
            c.b.build_store(q, c.fma(d, d, get(c, q)?)?)?;
            Ok(())
        })?;
        let sq = shfl.reduce(&c, get(&c, q)?, add)?;
        let var = c.b.build_float_div(sq, n, "var")?;
        let sqrt = Intrinsic::find("llvm.sqrt")
            .and_then(|i| i.get_declaration(module, &[f32t.into()]))
            .ok_or(Error::MissingIntrinsic("llvm.sqrt"))?;
        let sd =
            c.b.build_call(sqrt, &[c.b.build_float_add(var, eps, "")?.into()], "")?
                .try_as_basic_value()
                .basic()
                .ok_or(Error::MissingIntrinsic("llvm.sqrt"))?
                .into_float_value();
        lane_loop(&c, body, lane, len, |c, j| {
            let d = c.b.build_float_sub(c.load_f32(xr, j)?, mean, "")?;
            let v = c.b.build_float_div(d, sd, "")?;
            let v = c.fma(v, c.load_f32(gamma, j)?, c.load_f32(beta, j)?)?;
            c.b.build_store(c.gep(f32t.into(), yr, j)?, v)?;
            Ok(())
        })?;
    } else {
        let log_softmax = kernel == RowKernel::LogSoftmax;
        let m = acc(&c, f32t.const_float(f64::NEG_INFINITY))?;
        lane_loop(&c, body, lane, len, |c, j| {
            c.b.build_store(m, fmax(c, get(c, m)?, c.load_f32(xr, j)?)?)?;
            Ok(())
        })?;
        let max = shfl.reduce(&c, get(&c, m)?, fmax)?;
        let s = acc(&c, f32t.const_zero())?;
        lane_loop(&c, body, lane, len, |c, j| {
            let e = exp(c, c.b.build_float_sub(c.load_f32(xr, j)?, max, "")?)?;
            c.b.build_store(s, c.b.build_float_add(get(c, s)?, e, "")?)?;
            Ok(())
        })?;
        let sum = shfl.reduce(&c, get(&c, s)?, add)?;
        let log_sum = if log_softmax {
            Some(log(&c, sum)?)
        } else {
            None
        };
        lane_loop(&c, body, lane, len, |c, j| {
            let d = c.b.build_float_sub(c.load_f32(xr, j)?, max, "")?;
            let v = match log_sum {
                Some(l) => c.b.build_float_sub(d, l, "")?,
                None => c.b.build_float_div(exp(c, d)?, sum, "")?,
            };
            c.b.build_store(c.gep(f32t.into(), yr, j)?, v)?;
            Ok(())
        })?;
    }
    c.b.build_return(None)?;
    // Warps of a row: `rows` (the entry's parameter before `len`).
    crate::mma4::warp_tile_entry(
        &c,
        module,
        body,
        kernel.entry(),
        nparams,
        entries,
        |_, p| Ok(p[if norm { 4 } else { 2 }].into_int_value()),
    )?;
    Ok(())
}

/// The PTX of `kernel` for `target` (one `.entry`, [`RowKernel::entry`]).
pub fn emit_ptx(target: GpuTarget, kernel: RowKernel) -> Result<String, Error> {
    compile_ptx(
        &target_machine(target)?,
        kernel.entry(),
        "default<O3>",
        |c, m| build(c, m, kernel, Entries::Ptx),
    )
}

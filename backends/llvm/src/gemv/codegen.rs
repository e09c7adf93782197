//! LLVM IR of the GEMV kernels, built with inkwell.
//!
//! One function per [`KernelSpec`], with the C prototype documented in [`crate::gemv`]. A row is cut
//! into *blocks* of code bytes ([`BlockLayout`]); every block is decoded in vector registers:
//! - 4-bit codes: 64 bytes (AVX-512; 32 on AVX2) are loaded as 32-bit words, and vector `j` is the
//!   words shifted right by `4 j` looked up in the 16-entry f32 table with `vpermps` (which reads only
//!   the low 4 index bits); on AVX2, two 8-entry `vpermps` and a blend on the nibble's top bit, or,
//!   for i4 and u4 codes, a shift left and a shift right (arithmetic for i4) and a conversion;
//! - 8-bit integers: sign-extended (`vpmovsxbd`) and converted (`vcvtdq2ps`);
//! - 8-bit (and 6-bit) minifloats: 16-bit words, each byte shifted into the fields of an f16 and
//!   converted with `vcvtph2ps` (exact, subnormals included). The e4m3fn NaN code is detected per row:
//!   the lane-wise maximum of the codes' magnitude bits (`vpmaxub`) is reduced at the end of the row,
//!   and a row holding the all-ones magnitude is NaN (as the reference's sum is, for finite `x`).
//!
//! Group scales are decoded `lanes` at a time (e8m0 by shifting the code into the f32 exponent field,
//! with code 0 = 2^-127 and 0xFF = NaN selected; ue4m3 through f16; f16 by `vcvtph2ps`; bf16 by a
//! shift) into a stack buffer, and broadcast (`vbroadcastss`) or shuffled to their lanes. Products
//! accumulate in f32 with FMAs.
//!
//! Rows are computed [`rows_at_once`] at a time, so that the activation vectors of a block are loaded
//! once for all of them (a 4-bit block of 64 bytes needs 512 bytes of activations: with one row at a time,
//! an activation vector larger than the L1 cache halves the speed); the rows left over go one by one,
//! with the same per-row arithmetic.
//!
//! Each row group also prefetches the codes and scales of the next group (`prefetcht1`, one group
//! ahead, in order): the loop executes about 25 instructions per 64-byte cache line, too many for the
//! out-of-order window to keep enough DRAM reads in flight, and the hardware prefetchers do not make
//! up for it (without the prefetches one thread streamed 4-bit weights at about 45% of the measured
//! read bandwidth; with them, at the bandwidth).
//!
//! # Accumulation order (per output row; identical for every row range and thread count)
//! The row's full blocks are visited in K order; a block's vectors in [`BlockLayout`] order.
//! - Group scales, whole blocks per group (case A): the products of a group's vectors are summed
//!   lane-wise in `ceil(n / 4)` (at most four) round-robin chains added as a tree; the group's vector
//!   is multiplied by its scale and added with an FMA to accumulator `j mod U` (`j` the group's index
//!   in its chunk of `lanes` groups; `U` = 4, 2 or 1 for 1, 2 or 3, or more vectors per group).
//! - Groups smaller than a block (case B): a block's vectors with the same lane-to-group map are
//!   summed like a group in case A, multiplied lane-wise by their groups' scales and FMA'd, map after
//!   map, into accumulator `t mod U` (`t` the block's index in its chunk; `U` = 4, 2, 1 for blocks of
//!   1, up to 4, 8 vectors).
//! - Per-row and per-tensor scales (case N): vector `s` of the `u`-th block of an unrolled step is
//!   FMA'd into accumulator `(u V + s) mod 4` (`V` vectors per block, `max(1, 4 / V)` blocks per
//!   step).
//!
//! Groups (case A) or blocks (B, N) that do not fill an unrolled step or a chunk go to accumulator 0.
//! The accumulators are added as a tree (`(a0 + a1) + (a2 + a3)`...), the lanes of the result as a
//! tree of halves (lane `i` + lane `i + lanes/2`, recursively). Elements after the last full block are
//! accumulated one by one in K order in a scalar f32 (each product times its group scale) and added
//! last. The row's sum is then multiplied by its per-row scale (if any) and by the post-multiplier.

use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicMetadataTypeEnum, BasicTypeEnum, FloatType, IntType, VectorType};
use inkwell::values::{
    BasicValue, BasicValueEnum, FloatValue, FunctionValue, GlobalValue, IntValue, PointerValue,
    VectorValue,
};
use inkwell::{AddressSpace, IntPredicate};

use super::layout::BlockLayout;
use super::spec::{ElemKind, KernelSpec, ScaleKind, ScaleStore};
use crate::{CpuTarget, Error};

/// f32 lanes per vector register for `target`.
pub fn lanes(target: CpuTarget) -> usize {
    match target {
        CpuTarget::X86_64V3 => 8,
        CpuTarget::X86_64V4 => 16,
    }
}

/// The IR builder of one kernel function: its types, its decoding tables and the decoding helpers that
/// the GEMV kernels and the GEMM kernels ([`crate::gemm`]) share.
pub(crate) struct Gen<'a, 'ctx> {
    pub(crate) cx: &'ctx Context,
    pub(crate) m: &'a Module<'ctx>,
    pub(crate) b: Builder<'ctx>,
    pub(crate) f: FunctionValue<'ctx>,
    pub(crate) spec: &'a KernelSpec,
    pub(crate) target: CpuTarget,
    pub(crate) l: u32,
    pub(crate) i8t: IntType<'ctx>,
    pub(crate) i16t: IntType<'ctx>,
    pub(crate) i32t: IntType<'ctx>,
    pub(crate) i64t: IntType<'ctx>,
    pub(crate) f32t: FloatType<'ctx>,
    pub(crate) f16t: FloatType<'ctx>,
    pub(crate) table: GlobalValue<'ctx>,
}

pub(crate) type Vals<'ctx> = Vec<BasicValueEnum<'ctx>>;

impl<'a, 'ctx> Gen<'a, 'ctx> {
    /// A builder for the kernel `f` of `spec` on `target`; adds the private constant table of the
    /// spec's scalar kernel values (`<f's name>.table`, read by [`Gen::scalar_value`]) to `m`.
    pub(crate) fn new(
        cx: &'ctx Context,
        m: &'a Module<'ctx>,
        f: FunctionValue<'ctx>,
        spec: &'a KernelSpec,
        target: CpuTarget,
    ) -> Self {
        let f32t = cx.f32_type();
        let name = f.get_name().to_string_lossy().into_owned();
        let table = m.add_global(
            f32t.array_type(spec.scalar_table.len() as u32),
            None,
            &format!("{name}.table"),
        );
        table.set_initializer(
            &f32t.const_array(
                &spec
                    .scalar_table
                    .iter()
                    .map(|&v| f32t.const_float(v as f64))
                    .collect::<Vec<_>>(),
            ),
        );
        table.set_constant(true);
        table.set_linkage(Linkage::Private);
        table.set_unnamed_addr(true);
        Gen {
            cx,
            m,
            b: cx.create_builder(),
            f,
            spec,
            target,
            l: lanes(target) as u32,
            i8t: cx.i8_type(),
            i16t: cx.i16_type(),
            i32t: cx.i32_type(),
            i64t: cx.i64_type(),
            f32t,
            f16t: cx.f16_type(),
            table,
        }
    }

    pub(crate) fn c64(&self, v: u64) -> IntValue<'ctx> {
        self.i64t.const_int(v, false)
    }

    pub(crate) fn vf(&self) -> VectorType<'ctx> {
        self.f32t.vec_type(self.l)
    }

    pub(crate) fn splat_int(&self, t: IntType<'ctx>, v: u64) -> VectorValue<'ctx> {
        self.splat_n(t, v, self.l)
    }

    pub(crate) fn splat_n(&self, t: IntType<'ctx>, v: u64, n: u32) -> VectorValue<'ctx> {
        VectorType::const_vector(&vec![t.const_int(v, false); n as usize])
    }

    pub(crate) fn load_vec_n(
        &self,
        ty: BasicTypeEnum<'ctx>,
        n: u32,
        p: PointerValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, Error> {
        let vt: BasicTypeEnum = match ty {
            BasicTypeEnum::IntType(t) => t.vec_type(n).into(),
            BasicTypeEnum::FloatType(t) => t.vec_type(n).into(),
            _ => unreachable!("vectors of ints and floats only"),
        };
        Ok(self.load_aligned(vt, p, 1)?.into_vector_value())
    }

    pub(crate) fn zero_vf(&self) -> VectorValue<'ctx> {
        self.vf().const_zero()
    }

    /// `base + off` bytes.
    pub(crate) fn gep8(
        &self,
        base: PointerValue<'ctx>,
        off: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, Error> {
        // SAFETY: the offsets stay inside the caller's buffers per the kernel contract.
        Ok(unsafe { self.b.build_in_bounds_gep(self.i8t, base, &[off], "p")? })
    }

    /// `base + idx` f32 elements.
    pub(crate) fn gepf(
        &self,
        base: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>, Error> {
        // SAFETY: as for `gep8`.
        Ok(unsafe { self.b.build_in_bounds_gep(self.f32t, base, &[idx], "pf")? })
    }

    pub(crate) fn load_aligned(
        &self,
        ty: BasicTypeEnum<'ctx>,
        p: PointerValue<'ctx>,
        align: u32,
    ) -> Result<BasicValueEnum<'ctx>, Error> {
        let v = self.b.build_load(ty, p, "ld")?;
        if let Some(i) = v.as_instruction_value() {
            i.set_alignment(align)
                .map_err(|e| Error::Verify(e.to_string()))?;
        }
        Ok(v)
    }

    pub(crate) fn load_vec(
        &self,
        elem: BasicTypeEnum<'ctx>,
        p: PointerValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, Error> {
        let ty: BasicTypeEnum = match elem {
            BasicTypeEnum::IntType(t) => t.vec_type(self.l).into(),
            BasicTypeEnum::FloatType(t) => t.vec_type(self.l).into(),
            _ => unreachable!("vectors of ints and floats only"),
        };
        Ok(self.load_aligned(ty, p, 1)?.into_vector_value())
    }

    pub(crate) fn call(
        &self,
        name: &str,
        types: &[BasicTypeEnum<'ctx>],
        args: &[BasicValueEnum<'ctx>],
    ) -> Result<BasicValueEnum<'ctx>, Error> {
        let decl = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.m, types))
            .ok_or_else(|| Error::Verify(format!("LLVM has no intrinsic {name}")))?;
        let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
        let call = self.b.build_call(decl, &args, "call")?;
        call.try_as_basic_value()
            .basic()
            .ok_or_else(|| Error::Verify(format!("{name} returned no value")))
    }

    pub(crate) fn fma(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        c: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, Error> {
        Ok(self
            .call(
                "llvm.fma",
                &[self.vf().into()],
                &[a.into(), b.into(), c.into()],
            )?
            .into_vector_value())
    }

    pub(crate) fn fmul(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, Error> {
        Ok(self.b.build_float_mul(a, b, "mul")?)
    }

    pub(crate) fn fadd(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, Error> {
        Ok(self.b.build_float_add(a, b, "add")?)
    }

    pub(crate) fn shuffle(
        &self,
        v: VectorValue<'ctx>,
        mask: &[u32],
    ) -> Result<VectorValue<'ctx>, Error> {
        let m: Vec<_> = mask
            .iter()
            .map(|&i| self.i32t.const_int(i as u64, false))
            .collect();
        Ok(self.b.build_shuffle_vector(
            v,
            v.get_type().get_undef(),
            VectorType::const_vector(&m),
            "shuf",
        )?)
    }

    /// A counted loop: runs `body` for `i = start, start + step, ...` while `i + step <= end`, threading
    /// `init` through as loop-carried values. Returns the first `i` not run and the carried values.
    pub(crate) fn counted<F>(
        &self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: u64,
        init: Vals<'ctx>,
        mut body: F,
    ) -> Result<(IntValue<'ctx>, Vals<'ctx>), Error>
    where
        F: FnMut(&Self, IntValue<'ctx>, &[BasicValueEnum<'ctx>]) -> Result<Vals<'ctx>, Error>,
    {
        let pre = self.b.get_insert_block().expect("positioned");
        let body_bb = self.cx.append_basic_block(self.f, "loop");
        let exit_bb = self.cx.append_basic_block(self.f, "loop.exit");
        let stepc = self.c64(step);
        let first = self.b.build_int_add(start, stepc, "first")?;
        let go = self
            .b
            .build_int_compare(IntPredicate::SLE, first, end, "go")?;
        self.b.build_conditional_branch(go, body_bb, exit_bb)?;

        self.b.position_at_end(body_bb);
        let iphi = self.b.build_phi(self.i64t, "i")?;
        let phis: Vec<_> = init
            .iter()
            .map(|v| self.b.build_phi(v.get_type(), "c"))
            .collect::<Result<_, _>>()?;
        let i = iphi.as_basic_value().into_int_value();
        let cur: Vals = phis.iter().map(|p| p.as_basic_value()).collect();
        let out = body(self, i, &cur)?;
        assert_eq!(
            out.len(),
            init.len(),
            "loop body returns its carried values"
        );
        let latch = self.b.get_insert_block().expect("positioned");
        let next = self.b.build_int_add(i, stepc, "next")?;
        let after = self.b.build_int_add(next, stepc, "after")?;
        let more = self
            .b
            .build_int_compare(IntPredicate::SLE, after, end, "more")?;
        self.b.build_conditional_branch(more, body_bb, exit_bb)?;
        iphi.add_incoming(&[(&start, pre), (&next, latch)]);
        for ((p, a), o) in phis.iter().zip(&init).zip(&out) {
            p.add_incoming(&[(a as &dyn BasicValue, pre), (o as &dyn BasicValue, latch)]);
        }

        self.b.position_at_end(exit_bb);
        let iexit = self.b.build_phi(self.i64t, "i.exit")?;
        iexit.add_incoming(&[(&start, pre), (&next, latch)]);
        let mut res = Vec::with_capacity(init.len());
        for (a, o) in init.iter().zip(&out) {
            let p = self.b.build_phi(a.get_type(), "c.exit")?;
            p.add_incoming(&[(a as &dyn BasicValue, pre), (o as &dyn BasicValue, latch)]);
            res.push(p.as_basic_value());
        }
        Ok((iexit.as_basic_value().into_int_value(), res))
    }

    // ---- element decoding ----

    /// Decodes the block of code bytes at `p` into the vectors of [`BlockLayout`] (kernel values), and
    /// updates the row's NaN detector `nan` (8-bit minifloats with a NaN code: the lane-wise maximum of
    /// the codes' magnitude bits).
    pub(crate) fn decode_block(
        &self,
        p: PointerValue<'ctx>,
        nan: &mut Option<VectorValue<'ctx>>,
    ) -> Result<Vec<VectorValue<'ctx>>, Error> {
        let l = self.l;
        match &self.spec.elem {
            ElemKind::Nibble { table } if self.int_nibbles(table).is_some() => {
                // Integer codes (i4, u4): nibble j moved to the top of the lane and shifted back
                // down (arithmetically for i4), then converted: no table permute.
                let signed = self.int_nibbles(table) == Some(true);
                let d = self.load_vec(self.i32t.into(), p)?;
                (0..8u64)
                    .map(|j| {
                        let t = if j == 7 {
                            d
                        } else {
                            self.b.build_left_shift(
                                d,
                                self.splat_int(self.i32t, 28 - 4 * j),
                                "nib",
                            )?
                        };
                        let v = self.b.build_right_shift(
                            t,
                            self.splat_int(self.i32t, 28),
                            signed,
                            "nib",
                        )?;
                        Ok(self.b.build_signed_int_to_float(v, self.vf(), "f")?)
                    })
                    .collect()
            }
            ElemKind::Nibble { table } => {
                let d = self.load_vec(self.i32t.into(), p)?;
                (0..8u64)
                    .map(|j| {
                        let idx = if j == 0 {
                            d
                        } else {
                            self.b.build_right_shift(
                                d,
                                self.splat_int(self.i32t, 4 * j),
                                false,
                                "nib",
                            )?
                        };
                        self.lookup16(table, idx, 3)
                    })
                    .collect()
            }
            ElemKind::Int8 => {
                let bytes = self.load_vec(self.i8t.into(), p)?;
                let s = self
                    .b
                    .build_int_s_extend(bytes, self.i32t.vec_type(l), "s")?;
                Ok(vec![self.b.build_signed_int_to_float(s, self.vf(), "f")?])
            }
            &ElemKind::MiniF16 {
                bits,
                exp_bits,
                man_bits,
                nan_all_ones,
            } => {
                let w = self.load_vec_n(self.i16t.into(), 2 * l, p)?;
                if nan_all_ones {
                    let bytes = self
                        .b
                        .build_bit_cast(w, self.i8t.vec_type(4 * l), "bytes")?
                        .into_vector_value();
                    let magmask = (1u64 << (bits - 1)) - 1;
                    let m =
                        self.b
                            .build_and(bytes, self.splat_n(self.i8t, magmask, 4 * l), "mag")?;
                    let t = m.get_type();
                    let cur = nan.unwrap_or_else(|| t.const_zero());
                    *nan = Some(
                        self.call("llvm.umax", &[t.into()], &[cur.into(), m.into()])?
                            .into_vector_value(),
                    );
                }
                let n2 = 2 * l;
                // Low bytes: to the top of the word; high bytes: already there (6-bit codes: shifted up).
                let lo = self.b.build_left_shift(
                    w,
                    self.splat_n(self.i16t, (16 - bits) as u64, n2),
                    "lo",
                )?;
                let hi = if bits < 8 {
                    let h = self
                        .b
                        .build_and(w, self.splat_n(self.i16t, 0xff00, n2), "hi")?;
                    self.b.build_left_shift(
                        h,
                        self.splat_n(self.i16t, (8 - bits) as u64, n2),
                        "hi",
                    )?
                } else {
                    w
                };
                let mut out = Vec::with_capacity(4);
                for t in [lo, hi] {
                    let f = self.minifloat_top(t, exp_bits, man_bits)?;
                    out.push(self.b.build_float_ext(
                        self.shuffle(f, &(0..l).collect::<Vec<_>>())?,
                        self.vf(),
                        "f",
                    )?);
                    out.push(self.b.build_float_ext(
                        self.shuffle(f, &(l..2 * l).collect::<Vec<_>>())?,
                        self.vf(),
                        "f",
                    )?);
                }
                Ok(out)
            }
        }
    }

    /// i16 lanes holding a minifloat code with its sign at bit 15 (lower bits: the code's other bits,
    /// then anything) as f16 values: an arithmetic shift puts the mantissa's lowest bit at f16 bit
    /// `10 - M` (the sign's copies fill the bits above the exponent, cleared by the mask).
    pub(crate) fn minifloat_top(
        &self,
        t: VectorValue<'ctx>,
        exp_bits: u32,
        man_bits: u32,
    ) -> Result<VectorValue<'ctx>, Error> {
        let n = t.get_type().get_size();
        let sra = 5 - exp_bits;
        let t = if sra > 0 {
            self.b
                .build_right_shift(t, self.splat_n(self.i16t, sra as u64, n), true, "t")?
        } else {
            t
        };
        let mag = ((1u64 << (exp_bits + man_bits)) - 1) << (10 - man_bits);
        let h = self
            .b
            .build_and(t, self.splat_n(self.i16t, 0x8000 | mag, n), "h")?;
        Ok(self
            .b
            .build_bit_cast(h, self.f16t.vec_type(n), "hf")?
            .into_vector_value())
    }

    /// Whether AVX2 kernels decode the 16-entry `table` arithmetically: `Some(true)` for the i4 values
    /// (-8..7 in two's complement), `Some(false)` for the u4 values (0..15), `None` otherwise. (On
    /// AVX2 a table lookup costs two permutes and a blend per vector, more than two shifts and a
    /// conversion; on AVX-512 it is one permute, and the arithmetic decode measured 30% slower.)
    pub(crate) fn int_nibbles(&self, table: &[f32; 16]) -> Option<bool> {
        if !ARITH_NIBBLES.contains(&self.target) {
            return None;
        }
        let i4 = (0..16).all(|i| table[i] == ((i as i32 ^ 8) - 8) as f32);
        let u4 = (0..16).all(|i| table[i] == i as f32);
        if i4 {
            Some(true)
        } else if u4 {
            Some(false)
        } else {
            None
        }
    }

    /// `table[idx & 15]` per lane of the i32 vector `idx`; `sign_bit` is the index bit that selects the
    /// upper half of the table (3: the nibble's own top bit; the caller shifts high nibbles down first).
    pub(crate) fn lookup16(
        &self,
        table: &[f32; 16],
        idx: VectorValue<'ctx>,
        sign_bit: u32,
    ) -> Result<VectorValue<'ctx>, Error> {
        let consts = |vals: &[f32]| {
            VectorType::const_vector(
                &vals
                    .iter()
                    .map(|&v| self.f32t.const_float(v as f64))
                    .collect::<Vec<_>>(),
            )
        };
        match self.target {
            CpuTarget::X86_64V4 => Ok(self
                .call(
                    "llvm.x86.avx512.permvar.sf.512",
                    &[],
                    &[consts(table).into(), idx.into()],
                )?
                .into_vector_value()),
            CpuTarget::X86_64V3 => {
                let lo = self
                    .call(
                        "llvm.x86.avx2.permps",
                        &[],
                        &[consts(&table[..8]).into(), idx.into()],
                    )?
                    .into_vector_value();
                let hi = self
                    .call(
                        "llvm.x86.avx2.permps",
                        &[],
                        &[consts(&table[8..]).into(), idx.into()],
                    )?
                    .into_vector_value();
                let bit = self
                    .b
                    .build_and(idx, self.splat_int(self.i32t, 1 << sign_bit), "bit")?;
                let upper = self.b.build_int_compare(
                    IntPredicate::NE,
                    bit,
                    self.splat_int(self.i32t, 0),
                    "up",
                )?;
                Ok(self
                    .b
                    .build_select(upper, hi, lo, "lut")?
                    .into_vector_value())
            }
        }
    }

    // ---- scale decoding ----

    /// `lanes` consecutive scales at `p`, as kernel values.
    pub(crate) fn scales_vec(
        &self,
        store: ScaleStore,
        p: PointerValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, Error> {
        let l = self.l;
        match store {
            ScaleStore::F32 => self.load_vec(self.f32t.into(), p),
            ScaleStore::F16 => {
                let h = self.load_vec(self.f16t.into(), p)?;
                Ok(self.b.build_float_ext(h, self.vf(), "s")?)
            }
            ScaleStore::BF16 => {
                let h = self.load_vec(self.i16t.into(), p)?;
                let z = self.b.build_int_z_extend(h, self.i32t.vec_type(l), "z")?;
                let s = self
                    .b
                    .build_left_shift(z, self.splat_int(self.i32t, 16), "s")?;
                Ok(self
                    .b
                    .build_bit_cast(s, self.vf(), "s")?
                    .into_vector_value())
            }
            ScaleStore::E8M0 => {
                let c = self.load_vec(self.i8t.into(), p)?;
                let z = self.b.build_int_z_extend(c, self.i32t.vec_type(l), "z")?;
                let e = self
                    .b
                    .build_left_shift(z, self.splat_int(self.i32t, 23), "e")?;
                let zero = self.b.build_int_compare(
                    IntPredicate::EQ,
                    z,
                    self.splat_int(self.i32t, 0),
                    "c0",
                )?;
                let e =
                    self.b
                        .build_select(zero, self.splat_int(self.i32t, 0x0040_0000), e, "e")?;
                let nan = self.b.build_int_compare(
                    IntPredicate::EQ,
                    z,
                    self.splat_int(self.i32t, 255),
                    "cff",
                )?;
                let e = self.b.build_select(
                    nan,
                    self.splat_int(self.i32t, 0x7fc0_0000),
                    e.into_vector_value(),
                    "e",
                )?;
                Ok(self
                    .b
                    .build_bit_cast(e, self.vf(), "s")?
                    .into_vector_value())
            }
            ScaleStore::UE4M3 => {
                let c = self.load_vec(self.i8t.into(), p)?;
                // The sign bit is ignored: the code with bit 7 cleared is a positive e4m3fn.
                let m = self.b.build_and(c, self.splat_int(self.i8t, 0x7f), "m")?;
                let z = self.b.build_int_z_extend(m, self.i16t.vec_type(l), "z")?;
                let t = self
                    .b
                    .build_left_shift(z, self.splat_int(self.i16t, 8), "t")?;
                let f = self.minifloat_top(t, 4, 3)?;
                let f = self.b.build_float_ext(f, self.vf(), "s")?;
                let is_nan = self.b.build_int_compare(
                    IntPredicate::EQ,
                    m,
                    self.splat_int(self.i8t, 0x7f),
                    "nan",
                )?;
                let nanv =
                    VectorType::const_vector(&vec![self.f32t.const_float(f64::NAN); l as usize]);
                Ok(self
                    .b
                    .build_select(is_nan, nanv, f, "s")?
                    .into_vector_value())
            }
        }
    }

    /// One scale at `p`, as a kernel value.
    pub(crate) fn scale_scalar(
        &self,
        store: ScaleStore,
        p: PointerValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, Error> {
        match store {
            ScaleStore::F32 => Ok(self
                .load_aligned(self.f32t.into(), p, 1)?
                .into_float_value()),
            ScaleStore::F16 => {
                let h = self
                    .load_aligned(self.f16t.into(), p, 1)?
                    .into_float_value();
                Ok(self.b.build_float_ext(h, self.f32t, "s")?)
            }
            ScaleStore::BF16 => {
                let h = self.load_aligned(self.i16t.into(), p, 1)?.into_int_value();
                let z = self.b.build_int_z_extend(h, self.i32t, "z")?;
                let s = self
                    .b
                    .build_left_shift(z, self.i32t.const_int(16, false), "s")?;
                Ok(self.b.build_bit_cast(s, self.f32t, "s")?.into_float_value())
            }
            ScaleStore::E8M0 => {
                let c = self.load_aligned(self.i8t.into(), p, 1)?.into_int_value();
                let z = self.b.build_int_z_extend(c, self.i32t, "z")?;
                let e = self
                    .b
                    .build_left_shift(z, self.i32t.const_int(23, false), "e")?;
                let zero =
                    self.b
                        .build_int_compare(IntPredicate::EQ, z, self.i32t.const_zero(), "c0")?;
                let e =
                    self.b
                        .build_select(zero, self.i32t.const_int(0x0040_0000, false), e, "e")?;
                let nan = self.b.build_int_compare(
                    IntPredicate::EQ,
                    z,
                    self.i32t.const_int(255, false),
                    "cff",
                )?;
                let e = self.b.build_select(
                    nan,
                    self.i32t.const_int(0x7fc0_0000, false),
                    e.into_int_value(),
                    "e",
                )?;
                Ok(self.b.build_bit_cast(e, self.f32t, "s")?.into_float_value())
            }
            ScaleStore::UE4M3 => {
                let c = self.load_aligned(self.i8t.into(), p, 1)?.into_int_value();
                let m = self.b.build_and(c, self.i8t.const_int(0x7f, false), "m")?;
                let z = self.b.build_int_z_extend(m, self.i16t, "z")?;
                let h = self
                    .b
                    .build_left_shift(z, self.i16t.const_int(7, false), "h")?;
                let nan = self.b.build_int_compare(
                    IntPredicate::EQ,
                    m,
                    self.i8t.const_int(0x7f, false),
                    "nan",
                )?;
                let h = self
                    .b
                    .build_select(nan, self.i16t.const_int(0x7e00, false), h, "h")?;
                let hf = self
                    .b
                    .build_bit_cast(h, self.f16t, "hf")?
                    .into_float_value();
                Ok(self.b.build_float_ext(hf, self.f32t, "s")?)
            }
        }
    }

    pub(crate) fn splat(&self, s: FloatValue<'ctx>) -> Result<VectorValue<'ctx>, Error> {
        let v =
            self.b
                .build_insert_element(self.vf().get_undef(), s, self.i32t.const_zero(), "ins")?;
        self.shuffle(v, &vec![0; self.l as usize])
    }

    // ---- products ----

    /// The weight vectors of the block at element `e` of the row whose codes start at `cbase`.
    pub(crate) fn decode_at(
        &self,
        cbase: PointerValue<'ctx>,
        e: IntValue<'ctx>,
        nan: &mut Option<VectorValue<'ctx>>,
    ) -> Result<Vec<VectorValue<'ctx>>, Error> {
        let boff = if self.spec.elem.per_byte() == 2 {
            self.b.build_right_shift(e, self.c64(1), false, "boff")?
        } else {
            e
        };
        self.decode_block(self.gep8(cbase, boff)?, nan)
    }

    /// A software prefetch of the cache line at `p` into the L2 cache (`prefetcht1`); never faults.
    pub(crate) fn prefetch(&self, p: PointerValue<'ctx>) -> Result<(), Error> {
        let decl = Intrinsic::find("llvm.prefetch")
            .and_then(|i| i.get_declaration(self.m, &[p.get_type().into()]))
            .ok_or_else(|| Error::Verify("LLVM has no llvm.prefetch".into()))?;
        let i32t = self.i32t;
        self.b.build_call(
            decl,
            &[
                p.into(),
                i32t.const_int(0, false).into(),
                i32t.const_int(PREFETCH_LOCALITY, false).into(),
                i32t.const_int(1, false).into(),
            ],
            "",
        )?;
        Ok(())
    }

    /// The activation vectors of the block at element `e` (one per weight vector).
    pub(crate) fn load_xs(
        &self,
        xp: PointerValue<'ctx>,
        e: IntValue<'ctx>,
        nvec: u64,
    ) -> Result<Vec<VectorValue<'ctx>>, Error> {
        (0..nvec)
            .map(|s| {
                let es = self.b.build_int_add(e, self.c64(s * self.l as u64), "es")?;
                self.load_vec(self.f32t.into(), self.gepf(xp, es)?)
            })
            .collect()
    }

    /// Sum of the products `w x` in K order, in `ceil(n / 4)` (at most four) round-robin chains
    /// (a multiply, then FMAs) added as a tree.
    pub(crate) fn chain_sum(
        &self,
        prods: Vec<(VectorValue<'ctx>, VectorValue<'ctx>)>,
    ) -> Result<VectorValue<'ctx>, Error> {
        let nch = prods.len().div_ceil(4).clamp(1, 4);
        let mut chains: Vec<Option<VectorValue>> = vec![None; nch];
        for (i, (w, x)) in prods.into_iter().enumerate() {
            let c = &mut chains[i % nch];
            *c = Some(match c {
                None => self.fmul(w, x)?,
                Some(acc) => self.fma(w, x, *acc)?,
            });
        }
        self.tree_sum(
            chains
                .into_iter()
                .map(|c| c.expect("every chain has a product"))
                .collect(),
        )
    }

    pub(crate) fn tree_sum(
        &self,
        mut v: Vec<VectorValue<'ctx>>,
    ) -> Result<VectorValue<'ctx>, Error> {
        while v.len() > 1 {
            let mut next = Vec::with_capacity(v.len().div_ceil(2));
            for pair in v.chunks(2) {
                next.push(if pair.len() == 2 {
                    self.fadd(pair[0], pair[1])?
                } else {
                    pair[0]
                });
            }
            v = next;
        }
        Ok(v[0])
    }

    /// Lane sum of `v` as a tree of halves.
    pub(crate) fn hsum(&self, mut v: VectorValue<'ctx>) -> Result<FloatValue<'ctx>, Error> {
        let mut w = self.l;
        while w > 1 {
            let h = w / 2;
            let lo = self.shuffle(v, &(0..h).collect::<Vec<_>>())?;
            let hi = self.shuffle(v, &(h..w).collect::<Vec<_>>())?;
            v = self.fadd(lo, hi)?;
            w = h;
        }
        Ok(self
            .b
            .build_extract_element(v, self.i32t.const_zero(), "sum")?
            .into_float_value())
    }

    /// The kernel value of element `e` of the row whose codes start at `cbase`, decoded through the
    /// scalar table (no scale applied).
    pub(crate) fn scalar_value(
        &self,
        cbase: PointerValue<'ctx>,
        e: IntValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, Error> {
        let pb = self.spec.elem.per_byte() as u64;
        let boff = if pb == 2 {
            self.b.build_right_shift(e, self.c64(1), false, "boff")?
        } else {
            e
        };
        let byte = self
            .load_aligned(self.i8t.into(), self.gep8(cbase, boff)?, 1)?
            .into_int_value();
        let z = self.b.build_int_z_extend(byte, self.i64t, "z")?;
        let code = if pb == 2 {
            let odd = self.b.build_and(e, self.c64(1), "odd")?;
            let sh = self.b.build_left_shift(odd, self.c64(2), "sh")?;
            let c = self.b.build_right_shift(z, sh, false, "c")?;
            self.b.build_and(c, self.c64(15), "c")?
        } else {
            let mask = self.spec.scalar_table.len() as u64 - 1;
            self.b.build_and(z, self.c64(mask), "c")?
        };
        // SAFETY: code < table length.
        let tp = unsafe {
            self.b.build_in_bounds_gep(
                self.f32t.array_type(self.spec.scalar_table.len() as u32),
                self.table.as_pointer_value(),
                &[self.c64(0), code],
                "tp",
            )?
        };
        Ok(self
            .load_aligned(self.f32t.into(), tp, 4)?
            .into_float_value())
    }

    /// The group scale (kernel value) of element `e` of the row whose scales start at `sbase`, for
    /// group formats (`None` otherwise).
    pub(crate) fn element_group_scale(
        &self,
        sbase: PointerValue<'ctx>,
        e: IntValue<'ctx>,
    ) -> Result<Option<FloatValue<'ctx>>, Error> {
        let ScaleKind::Group { size, store } = self.spec.scale else {
            return Ok(None);
        };
        let gi = self
            .b
            .build_int_unsigned_div(e, self.c64(size as u64), "gi")?;
        let soff = self
            .b
            .build_int_mul(gi, self.c64(store.bytes() as u64), "soff")?;
        Ok(Some(self.scale_scalar(store, self.gep8(sbase, soff)?)?))
    }

    /// Scalar accumulation of elements `[e0, k)` of the row (the part after the last full block).
    pub(crate) fn scalar_tail(
        &self,
        cbase: PointerValue<'ctx>,
        sbase: PointerValue<'ctx>,
        xp: PointerValue<'ctx>,
        e0: IntValue<'ctx>,
        k: IntValue<'ctx>,
    ) -> Result<FloatValue<'ctx>, Error> {
        let (_, out) = self.counted(e0, k, 1, vec![self.f32t.const_zero().into()], |g, e, c| {
            let v = g.scalar_value(cbase, e)?;
            let xv = g
                .load_aligned(g.f32t.into(), g.gepf(xp, e)?, 4)?
                .into_float_value();
            let mut prod = g.b.build_float_mul(v, xv, "prod")?;
            if let Some(s) = g.element_group_scale(sbase, e)? {
                prod = g.b.build_float_mul(prod, s, "prod")?;
            }
            let acc = g.b.build_float_add(c[0].into_float_value(), prod, "tacc")?;
            Ok(vec![acc.into()])
        })?;
        Ok(out[0].into_float_value())
    }
}

fn vals<'ctx>(v: &[VectorValue<'ctx>]) -> Vals<'ctx> {
    v.iter().map(|x| (*x).into()).collect()
}

fn vecs<'ctx>(v: &[BasicValueEnum<'ctx>]) -> Vec<VectorValue<'ctx>> {
    v.iter().map(|x| x.into_vector_value()).collect()
}

/// Sets the function attributes of a kernel: the vector width of `target`, `nounwind`, and `noalias`
/// on the parameters `noalias` (the outputs).
pub(crate) fn kernel_attributes<'ctx>(
    cx: &'ctx Context,
    f: FunctionValue<'ctx>,
    target: CpuTarget,
    noalias: &[u32],
) {
    let attr = |k: &str, v: &str| cx.create_string_attribute(k, v);
    let width = (lanes(target) * 32).to_string();
    f.add_attribute(AttributeLoc::Function, attr("prefer-vector-width", &width));
    f.add_attribute(
        AttributeLoc::Function,
        attr("min-legal-vector-width", &width),
    );
    f.add_attribute(
        AttributeLoc::Function,
        cx.create_enum_attribute(Attribute::get_named_enum_kind_id("nounwind"), 0),
    );
    for &i in noalias {
        let na = cx.create_enum_attribute(Attribute::get_named_enum_kind_id("noalias"), 0);
        f.add_attribute(AttributeLoc::Param(i), na);
    }
}

/// The type of a kernel parameter ([`declare_kernel`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Param {
    /// An opaque pointer.
    Ptr,
    /// An `int64_t`.
    I64,
    /// A `float`.
    F32,
}

/// Declares the external kernel `name` in `m`: a `void` function of the named parameters `params`
/// (in order), with the attributes of [`kernel_attributes`] (`noalias` on the parameters `noalias`).
pub(crate) fn declare_kernel<'ctx>(
    cx: &'ctx Context,
    m: &Module<'ctx>,
    name: &str,
    params: &[(&str, Param)],
    target: CpuTarget,
    noalias: &[u32],
) -> FunctionValue<'ctx> {
    let types: Vec<BasicMetadataTypeEnum<'ctx>> = params
        .iter()
        .map(|&(_, t)| match t {
            Param::Ptr => cx.ptr_type(AddressSpace::default()).into(),
            Param::I64 => cx.i64_type().into(),
            Param::F32 => cx.f32_type().into(),
        })
        .collect();
    let fn_type = cx.void_type().fn_type(&types, false);
    let f = m.add_function(name, fn_type, Some(Linkage::External));
    kernel_attributes(cx, f, target, noalias);
    for (i, &(n, _)) in params.iter().enumerate() {
        f.get_nth_param(i as u32)
            .expect("declared parameter")
            .set_name(n);
    }
    f
}

/// Builds the kernel of `spec` for `target` into `m` (unoptimized; the caller verifies and optimizes).
pub fn build_gemv<'ctx>(
    cx: &'ctx Context,
    m: &Module<'ctx>,
    spec: &KernelSpec,
    target: CpuTarget,
) -> Result<(), Error> {
    use Param::{Ptr, F32, I64};
    let f = declare_kernel(
        cx,
        m,
        &spec.symbol,
        &[
            ("codes", Ptr),
            ("scales", Ptr),
            ("xp", Ptr),
            ("y", Ptr),
            ("k", I64),
            ("row_begin", I64),
            ("row_end", I64),
            ("post", F32),
        ],
        target,
        &[3],
    );
    let g = Gen::new(cx, m, f, spec, target);
    let p = |i: u32| f.get_nth_param(i).expect("declared parameter");
    let codes = p(0).into_pointer_value();
    let scales = p(1).into_pointer_value();
    let xp = p(2).into_pointer_value();
    let y = p(3).into_pointer_value();
    let k = p(4).into_int_value();
    let row_begin = p(5).into_int_value();
    let row_end = p(6).into_int_value();
    let post = p(7).into_float_value();

    let entry = cx.append_basic_block(f, "entry");
    g.b.position_at_end(entry);
    let l = g.l as u64;
    let lay = BlockLayout::of(&spec.elem);
    let be = lay.block_elems(l as usize) as u64;
    let nvec = lay.vectors() as u64;
    let nan_bits = match spec.elem {
        ElemKind::MiniF16 {
            bits,
            nan_all_ones: true,
            ..
        } => Some(bits),
        _ => None,
    };
    let nan_ty = g.i8t.vec_type(4 * g.l);
    let nrows = rows_at_once(target);
    let sbufs = (0..nrows)
        .map(|_| {
            let b = g.b.build_alloca(g.vf(), "sbuf")?;
            b.as_instruction_value()
                .expect("alloca is an instruction")
                .set_alignment(64)
                .map_err(|e| Error::Verify(e.to_string()))?;
            Ok(b)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let row_bytes = if spec.elem.per_byte() == 2 {
        g.b.build_right_shift(k, g.c64(1), false, "row_bytes")?
    } else {
        k
    };
    let rows = g.b.build_int_sub(row_end, row_begin, "rows")?;
    let zero = g.c64(0);
    let blocks_end = {
        let t = g.b.build_int_unsigned_div(k, g.c64(be), "nblocks")?;
        g.b.build_int_mul(t, g.c64(be), "blocks_end")?
    };
    let groups = match spec.scale {
        ScaleKind::Group { size, .. } => {
            Some(g.b.build_int_unsigned_div(k, g.c64(size as u64), "groups")?)
        }
        _ => None,
    };

    let emit = RowsEmitter {
        spec,
        lay,
        l,
        be,
        nvec,
        nan_bits,
        nan_ty,
        codes,
        scales,
        xp,
        y,
        k,
        row_begin,
        post,
        row_bytes,
        blocks_end,
        groups,
        zero,
    };
    // Blocks of `nrows` rows share their activation loads; the remaining rows go one by one. The order
    // of every row's accumulation is the same in both loops.
    let (r, _) = g.counted(zero, rows, nrows as u64, vec![], |g, r, _| {
        emit.rows(g, r, &sbufs)?;
        Ok(vec![])
    })?;
    g.counted(r, rows, 1, vec![], |g, r, _| {
        emit.rows(g, r, &sbufs[..1])?;
        Ok(vec![])
    })?;
    g.b.build_return(None)?;
    Ok(())
}

/// Targets whose kernels decode integer nibbles arithmetically (see `Gen::int_nibbles`).
const ARITH_NIBBLES: &[CpuTarget] = &[CpuTarget::X86_64V3];

/// `llvm.prefetch` locality of the code and scale prefetches: 2 = `prefetcht1` (L2), which leaves the
/// L1 cache to the activations.
const PREFETCH_LOCALITY: u64 = 2;

/// Rows computed together by the main row loop of `target` (their activation loads are shared): 4 with
/// the 32 registers of AVX-512, fewer with the 16 of AVX2.
pub fn rows_at_once(target: CpuTarget) -> usize {
    match target {
        CpuTarget::X86_64V3 => 2,
        CpuTarget::X86_64V4 => 4,
    }
}

/// The per-kernel values that the row code needs.
struct RowsEmitter<'a, 'ctx> {
    spec: &'a KernelSpec,
    lay: BlockLayout,
    l: u64,
    be: u64,
    nvec: u64,
    nan_bits: Option<u32>,
    nan_ty: VectorType<'ctx>,
    codes: PointerValue<'ctx>,
    scales: PointerValue<'ctx>,
    xp: PointerValue<'ctx>,
    y: PointerValue<'ctx>,
    k: IntValue<'ctx>,
    row_begin: IntValue<'ctx>,
    post: FloatValue<'ctx>,
    row_bytes: IntValue<'ctx>,
    blocks_end: IntValue<'ctx>,
    groups: Option<IntValue<'ctx>>,
    zero: IntValue<'ctx>,
}

/// One row's accumulators and NaN detector.
type RowState<'c> = (Vec<VectorValue<'c>>, Option<VectorValue<'c>>);

impl<'a, 'ctx> RowsEmitter<'a, 'ctx> {
    fn split(&self, c: &[BasicValueEnum<'ctx>], nrows: usize) -> Vec<RowState<'ctx>> {
        let per = c.len() / nrows;
        c.chunks(per)
            .map(|rc| {
                let mut v = vecs(rc);
                let nan = if self.nan_bits.is_some() {
                    v.pop()
                } else {
                    None
                };
                (v, nan)
            })
            .collect()
    }

    fn join(&self, st: &[RowState<'ctx>]) -> Vals<'ctx> {
        let mut v = Vec::new();
        for (accs, nan) in st {
            v.extend(vals(accs));
            v.extend(nan.map(|n| n.as_basic_value_enum()));
        }
        v
    }

    fn init(&self, g: &Gen<'_, 'ctx>, nacc: usize, nrows: usize) -> Vals<'ctx> {
        let one: RowState = (
            vec![g.zero_vf(); nacc],
            self.nan_bits.map(|_| self.nan_ty.const_zero()),
        );
        self.join(&vec![one; nrows])
    }

    /// Emits the computation of rows `r .. r + sbufs.len()` (relative to `row_begin`).
    fn rows(
        &self,
        g: &Gen<'_, 'ctx>,
        r: IntValue<'ctx>,
        sbufs: &[PointerValue<'ctx>],
    ) -> Result<(), Error> {
        let nr = sbufs.len();
        let (l, be, nvec, zero) = (self.l, self.be, self.nvec, self.zero);
        let add = |a: IntValue<'ctx>, b: u64| g.b.build_int_add(a, g.c64(b), "add");
        let mut rel = Vec::with_capacity(nr);
        let mut row = Vec::with_capacity(nr);
        let mut cbase = Vec::with_capacity(nr);
        for i in 0..nr {
            let ri = add(r, i as u64)?;
            let abs = g.b.build_int_add(self.row_begin, ri, "row")?;
            let coff = g.b.build_int_mul(abs, self.row_bytes, "coff")?;
            cbase.push(g.gep8(self.codes, coff)?);
            rel.push(ri);
            row.push(abs);
        }
        // Software prefetch of the next group of rows (the hardware prefetchers alone leave the loop
        // latency-bound: it executes too many instructions per cache line for the out-of-order window
        // to cover the DRAM latency). While the block at byte `o` of each row is decoded, row `i`
        // prefetches the bytes `nr o + i bb` of the next group's region (`bb` bytes per block), so the
        // whole next group is requested, in order, as the current one is read: one group ahead.
        let next = g.gep8(
            cbase[0],
            g.b.build_int_mul(self.row_bytes, g.c64(nr as u64), "grp")?,
        )?;
        let bb = self.lay.block_bytes(l as usize) as u64;
        let dec = |i: usize,
                   e: IntValue<'ctx>,
                   nan: &mut Option<VectorValue<'ctx>>|
         -> Result<Vec<VectorValue<'ctx>>, Error> {
            let boff = if self.spec.elem.per_byte() == 2 {
                g.b.build_right_shift(e, g.c64(1), false, "boff")?
            } else {
                e
            };
            let off = g.b.build_int_mul(boff, g.c64(nr as u64), "pfo")?;
            g.prefetch(g.gep8(next, add(off, i as u64 * bb)?)?)?;
            g.decode_at(cbase[i], e, nan)
        };
        let (accs, sbase, tail_from): (Vec<RowState>, Vec<PointerValue>, IntValue) = match self
            .spec
            .scale
        {
            ScaleKind::Tensor | ScaleKind::Row(_) => {
                // Case N: products round-robin into four accumulators per row.
                let ub = (4 / nvec).max(1);
                let nacc = (ub * nvec).min(4) as usize;
                let step = |e: IntValue<'ctx>,
                            st: &mut [RowState<'ctx>],
                            slot: u64|
                 -> Result<(), Error> {
                    let xs = g.load_xs(self.xp, e, nvec)?;
                    for (i, (accs, nan)) in st.iter_mut().enumerate() {
                        let ws = dec(i, e, nan)?;
                        for (s, (w, x)) in ws.into_iter().zip(&xs).enumerate() {
                            let a = &mut accs[((slot * nvec) as usize + s) % nacc];
                            *a = g.fma(w, *x, *a)?;
                        }
                    }
                    Ok(())
                };
                let init = self.init(g, nacc, nr);
                let (e, c) = g.counted(zero, self.blocks_end, ub * be, init, |_, e, c| {
                    let mut st = self.split(c, nr);
                    for u in 0..ub {
                        step(add(e, u * be)?, &mut st, u)?;
                    }
                    Ok(self.join(&st))
                })?;
                let (_, c) = g.counted(e, self.blocks_end, be, c, |_, e, c| {
                    let mut st = self.split(c, nr);
                    step(e, &mut st, 0)?;
                    Ok(self.join(&st))
                })?;
                (self.split(&c, nr), vec![self.scales; nr], self.blocks_end)
            }
            ScaleKind::Group { size, store } => {
                let gsz = size as u64;
                let sb = store.bytes() as u64;
                let groups = self.groups.expect("group formats count their groups");
                let gsb = g.b.build_int_mul(groups, g.c64(sb), "gsb")?;
                let sbase = row
                    .iter()
                    .map(|&abs| g.gep8(self.scales, g.b.build_int_mul(abs, gsb, "soff")?))
                    .collect::<Result<Vec<_>, Error>>()?;
                let full = {
                    let c = g.b.build_int_unsigned_div(groups, g.c64(l), "chunks")?;
                    g.b.build_int_mul(c, g.c64(l), "full")?
                };
                let scale_at =
                    |i: usize, gi: IntValue<'ctx>| -> Result<PointerValue<'ctx>, Error> {
                        g.gep8(sbase[i], g.b.build_int_mul(gi, g.c64(sb), "so")?)
                    };
                // Decodes the chunk of `lanes` scales at group c0 of every row into its buffer.
                let next_scales = g.b.build_int_mul(gsb, g.c64(nr as u64), "nsc")?;
                let load_chunk = |c0: IntValue<'ctx>| -> Result<(), Error> {
                    for (i, sbuf) in sbufs.iter().enumerate() {
                        let at = scale_at(i, c0)?;
                        // The same chunk of the row one group below (see the codes' prefetch).
                        g.prefetch(g.gep8(at, next_scales)?)?;
                        let sv = g.scales_vec(store, at)?;
                        g.b.build_store(*sbuf, sv)?;
                    }
                    Ok(())
                };
                if gsz.is_multiple_of(be) {
                    // Case A: whole blocks per group; one splat scale per group.
                    let bpg = gsz / be;
                    let u = match bpg * nvec {
                        1 => 4,
                        2 | 3 => 2,
                        _ => 1,
                    };
                    // The products of group gi, per row.
                    let group = |gi: IntValue<'ctx>,
                                 st: &mut [RowState<'ctx>]|
                     -> Result<Vec<VectorValue<'ctx>>, Error> {
                        let e0 = g.b.build_int_mul(gi, g.c64(gsz), "e0")?;
                        let mut prods = vec![Vec::new(); st.len()];
                        for b in 0..bpg {
                            let e = add(e0, b * be)?;
                            let xs = g.load_xs(self.xp, e, nvec)?;
                            for (i, (_, nan)) in st.iter_mut().enumerate() {
                                let ws = dec(i, e, nan)?;
                                prods[i].extend(ws.into_iter().zip(xs.iter().copied()));
                            }
                        }
                        prods.into_iter().map(|p| g.chain_sum(p)).collect()
                    };
                    let init = self.init(g, u as usize, nr);
                    let (gi, c) = g.counted(zero, full, l, init, |g, c0, c| {
                        load_chunk(c0)?;
                        let (_, c) = g.counted(zero, g.c64(l), u, c.to_vec(), |g, j, c| {
                            let mut st = self.split(c, nr);
                            for uu in 0..u {
                                let jj = add(j, uu)?;
                                let gi = g.b.build_int_add(c0, jj, "gi")?;
                                let ps = group(gi, &mut st)?;
                                for (i, p) in ps.into_iter().enumerate() {
                                    let s = g
                                        .load_aligned(g.f32t.into(), g.gepf(sbufs[i], jj)?, 4)?
                                        .into_float_value();
                                    let a = &mut st[i].0[uu as usize];
                                    *a = g.fma(p, g.splat(s)?, *a)?;
                                }
                            }
                            Ok(self.join(&st))
                        })?;
                        Ok(c)
                    })?;
                    let (_, c) = g.counted(gi, groups, 1, c, |g, gi, c| {
                        let mut st = self.split(c, nr);
                        let ps = group(gi, &mut st)?;
                        for (i, p) in ps.into_iter().enumerate() {
                            let s = g.scale_scalar(store, scale_at(i, gi)?)?;
                            st[i].0[0] = g.fma(p, g.splat(s)?, st[i].0[0])?;
                        }
                        Ok(self.join(&st))
                    })?;
                    (self.split(&c, nr), sbase, self.k)
                } else if be.is_multiple_of(gsz) && l.is_multiple_of(be / gsz) {
                    // Case B: several groups per block; lanes take their group's scale by a
                    // shuffle.
                    let gpb = be / gsz;
                    let bpc = l / gpb;
                    let u = (if nvec == 1 {
                        4
                    } else if nvec <= 4 {
                        2
                    } else {
                        1
                    })
                    .min(bpc);
                    // Vectors with the same lane -> group map share one scale vector.
                    let mut patterns: Vec<(Vec<u32>, Vec<usize>)> = Vec::new();
                    for sidx in 0..nvec as usize {
                        let m: Vec<u32> = (0..l as usize)
                            .map(|ln| {
                                (self.lay.lane_element(l as usize, sidx, ln) as u64 / gsz) as u32
                            })
                            .collect();
                        match patterns.iter_mut().find(|p| p.0 == m) {
                            Some(p) => p.1.push(sidx),
                            None => patterns.push((m, vec![sidx])),
                        }
                    }
                    let gvt = g.f32t.vec_type(gpb as u32);
                    // Block at e of every row, with the rows' scale vectors `svs`, into
                    // accumulator `slot`.
                    let block = |e: IntValue<'ctx>,
                                 svs: &[VectorValue<'ctx>],
                                 st: &mut [RowState<'ctx>],
                                 slot: usize|
                     -> Result<(), Error> {
                        let xs = g.load_xs(self.xp, e, nvec)?;
                        for (i, (accs, nan)) in st.iter_mut().enumerate() {
                            let ws = dec(i, e, nan)?;
                            for (mask, idx) in &patterns {
                                let p =
                                    g.chain_sum(idx.iter().map(|&s| (ws[s], xs[s])).collect())?;
                                accs[slot] = g.fma(p, g.shuffle(svs[i], mask)?, accs[slot])?;
                            }
                        }
                        Ok(())
                    };
                    let init = self.init(g, u as usize, nr);
                    let (gi, c) = g.counted(zero, full, l, init, |g, c0, c| {
                        load_chunk(c0)?;
                        let e0 = g.b.build_int_mul(c0, g.c64(gsz), "e0")?;
                        let (_, c) = g.counted(zero, g.c64(bpc), u, c.to_vec(), |g, t, c| {
                            let mut st = self.split(c, nr);
                            for uu in 0..u {
                                let tt = add(t, uu)?;
                                let si = g.b.build_int_mul(tt, g.c64(gpb), "si")?;
                                let svs = sbufs
                                    .iter()
                                    .map(|b| {
                                        Ok(g.load_aligned(gvt.into(), g.gepf(*b, si)?, 4)?
                                            .into_vector_value())
                                    })
                                    .collect::<Result<Vec<_>, Error>>()?;
                                let e = g.b.build_int_add(
                                    e0,
                                    g.b.build_int_mul(tt, g.c64(be), "eb")?,
                                    "e",
                                )?;
                                block(e, &svs, &mut st, uu as usize)?;
                            }
                            Ok(self.join(&st))
                        })?;
                        Ok(c)
                    })?;
                    let (gi, c) = g.counted(gi, groups, gpb, c, |g, gi, c| {
                        let mut st = self.split(c, nr);
                        let mut svs = Vec::with_capacity(nr);
                        for i in 0..nr {
                            let mut sv = gvt.get_undef();
                            for j in 0..gpb {
                                let s = g.scale_scalar(store, scale_at(i, add(gi, j)?)?)?;
                                sv = g.b.build_insert_element(
                                    sv,
                                    s,
                                    g.i32t.const_int(j, false),
                                    "sv",
                                )?;
                            }
                            svs.push(sv);
                        }
                        let e = g.b.build_int_mul(gi, g.c64(gsz), "e")?;
                        block(e, &svs, &mut st, 0)?;
                        Ok(self.join(&st))
                    })?;
                    let tail_from = g.b.build_int_mul(gi, g.c64(gsz), "tail")?;
                    (self.split(&c, nr), sbase, tail_from)
                } else {
                    return Err(Error::Unsupported(format!(
                        "group size {gsz} neither divides (in a way the {l} lanes can \
                             broadcast) nor is a multiple of the {be}-element block of {}",
                        g.target
                    )));
                }
            }
        };
        for (i, (accs, nan)) in accs.into_iter().enumerate() {
            let mut total = g.hsum(g.tree_sum(accs)?)?;
            let tail = g.scalar_tail(cbase[i], sbase[i], self.xp, tail_from, self.k)?;
            total = g.b.build_float_add(total, tail, "total")?;
            if let ScaleKind::Row(store) = self.spec.scale {
                let soff =
                    g.b.build_int_mul(row[i], g.c64(store.bytes() as u64), "rs")?;
                let s = g.scale_scalar(store, g.gep8(self.scales, soff)?)?;
                total = g.b.build_float_mul(total, s, "scaled")?;
            }
            total = g.b.build_float_mul(total, self.post, "out")?;
            if let (Some(nan), Some(bits)) = (nan, self.nan_bits) {
                // A NaN code anywhere in the row's blocks makes the row NaN (the scalar tail's
                // table already gives NaN for the codes it decodes).
                let mx = g
                    .call(
                        "llvm.vector.reduce.umax",
                        &[self.nan_ty.into()],
                        &[nan.into()],
                    )?
                    .into_int_value();
                let is_nan = g.b.build_int_compare(
                    IntPredicate::EQ,
                    mx,
                    g.i8t.const_int((1 << (bits - 1)) - 1, false),
                    "row_nan",
                )?;
                total =
                    g.b.build_select(is_nan, g.f32t.const_float(f64::NAN), total, "y")?
                        .into_float_value();
            }
            g.b.build_store(g.gepf(self.y, rel[i])?, total)?;
        }
        Ok(())
    }
}

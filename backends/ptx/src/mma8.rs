//! 8-bit tensor-core GEMM on NVIDIA GPUs: `y[M, N] = dequant(quant(x)) W^T` where the kernel
//! quantizes the f32 activations `x[M, K]` itself per tensor (the `--aformat` of a calibrated
//! model) and reads the weights `W[N, K]` straight from their `qc_quant::blob` bytes:
//! - FP8 activations (e4m3 or e5m2; sm_89 and later): FP8 weights (e4m3 or e5m2, one f32 scale per
//!   tensor or per row), or 4-bit codes in the formats of [`Gemv4`] (int4 per group or row, mxfp4,
//!   nvfp4, nvint4), decoded in registers to e4m3, which holds every 4-bit code value exactly;
//! - int8 activations (every target): int8 weights (f32 scales per tensor, row or group of a
//!   multiple of 32) or int4 (groups of 32 or more, or per row) decoded to int8, multiplied by
//!   `mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32` with exact i32 sums.
//!
//! # Arithmetic
//! - Activations: `q = round(x / sa)` with the bit-exact rounding of the fake-quant kernel
//!   (`crate::fquant`, qc_quant's: round to nearest even, saturating), encoded as the FP8 byte.
//! - Each k-step of 32 is one `mma.sync.aligned.m16n8k32.row.col.f32.{a}.{b}.f32` on a zeroed
//!   accumulator: 32 products of FP8 values, each exact in f32. Its result is added to the f32 sum
//!   (times the weight's group scale for grouped formats: scales applied around the MMA), so the
//!   tensor core never accumulates across steps. Groups of 16 (NVFP4, NVINT4) make each k-step two
//!   MMAs, one per K half with A's registers of the other half zero, each scaled by its group. With int8 the step's i32 sums are exact: added to
//!   an i32 sum (converted once at the end), or for grouped weights converted and scaled per step.
//! - At the end `y = sum * sa * (per-tensor or per-row weight scale) * post` (`post`: the NVFP4-style
//!   tensor scale of [`Gemv4::post`], else 1).
//!
//! # Kernel [`ENTRY`]`(codes, scales, tables, x, y, k, n, m, post, sa)`
//! As [`crate::mma4`]: warp `w` computes the 32 x 32 tile `(w / ceil(N / 32), w % ceil(N / 32))` of
//! `y` in 2 x 4 MMA tiles of 16 x 8; rows past M read zeros and are not written, weight rows past N
//! are zeros. Lane `(g, q)` reads `x[row][k0 + 4q ..][..4]` and `x[row][k0 + 16 + 4q ..][..4]`, and
//! the weight row `n0 + 8j + g` at the same columns, which is the m16n8k32 fragment layout itself
//! (PTX ISA, "Matrix Fragments for mma.m16n8k32"). `tables` is [`Gemv4::tables`] for 4-bit weights
//! (unused for FP8). K must be a multiple of 32; `x` 16-byte aligned.
//!
//! The PTX needs ISA 8.4 (`mma` with FP8 operands); the tests run the body on the host with an MMA
//! emulator, as for [`crate::mma4`].

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::values::{BasicValue, FloatValue, IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};
use qc_ir::quant::{Encoding, Packing, QuantType, ScaleType, Scheme, TensorScale};

use crate::fquant::{round_elem, FakeQuantPt};
use crate::gemv4::{for_loop, scale_at, Cx, Gemv4};
use crate::mma4::{
    load_x4, product_warps, umin, warp_tile_entry, Entries, Mma, ProductBody, WarpTile, TM, TN,
};
use crate::{compile_ptx, target_machine_with, Error, GpuTarget};

/// The kernel's entry.
pub const ENTRY: &str = "qc_mma8";
/// The host emulator's symbol ([`Entries::Host`]), with the signature of `crate::mma4::EMULATOR`:
/// this lane's four accumulators of `m16n8k32.row.col.f32.{a}.{b}.f32` from all 32 lanes'
/// fragments (four FP8 bytes per register, the lowest k in the lowest byte).
pub const EMULATOR: &str = "qc_mma8_emu";
/// Threads per block the launch plan uses (4 warps).
pub const BLOCK: u32 = 128;

/// The weights the kernel reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Weights8 {
    /// FP8 codes, one byte each, with an f32 scale per tensor or per row (`value = code * scale`).
    Fp8 {
        /// e5m2 codes (else e4m3fn).
        e5m2: bool,
        /// One scale per row (else one per tensor).
        per_row: bool,
    },
    /// 4-bit codes as [`Gemv4`] reads them, decoded to e4m3 (groups of at least 16, or per row);
    /// with int8 activations only two's-complement int4, decoded to int8.
    Nibble(Gemv4),
    /// int8 codes with f32 scales per tensor, per row or per group (of a multiple of 32) along K
    /// (with int8 activations).
    Int8 {
        /// One scale per row (else one per tensor), when not grouped.
        per_row: bool,
        /// Elements per scale along K.
        group: Option<usize>,
    },
}

/// What the kernel computes: the weights and the activation format.
#[derive(Clone, Debug, PartialEq)]
pub struct Mma8 {
    /// The weights.
    pub weights: Weights8,
    /// The activation quantization (FP8 e4m3 or e5m2 per tensor).
    pub act: FakeQuantPt,
}

/// Where the scales of a blob of `W[n, k]` are, in bytes.
fn align16(n: usize) -> usize {
    n.div_ceil(qc_quant::blob::ALIGN) * qc_quant::blob::ALIGN
}

impl Mma8 {
    /// The kernel description for weight format `w` and activation format `a`, or why the kernel
    /// does not compute that product.
    pub fn classify(w: &QuantType, a: &QuantType) -> Result<Mma8, String> {
        let act =
            FakeQuantPt::classify(a).ok_or_else(|| format!("{a}: not int8 or FP8 per tensor"))?;
        let plain = || {
            if w.scale != ScaleType::F32
                || w.zero_point.is_some()
                || w.tensor_scale != TensorScale::None
                || w.pack != Packing::None
                || w.convention != qc_ir::quant::Convention::Spec
            {
                return Err(format!("{w}: not plain codes with f32 scales"));
            }
            Ok(())
        };
        let int8 = Encoding::Int {
            bits: 8,
            signed: true,
        };
        if act.man.is_none() {
            // int8 activations: integer weights only (the s8 MMA).
            let weights = if w.elem == int8 {
                plain()?;
                let (per_row, group) = match w.scheme {
                    Scheme::PerTensor => (false, None),
                    Scheme::PerChannel { axis: 0 } => (true, None),
                    Scheme::Group { size, axis } if (axis == -1 || axis == 1) && size % 32 == 0 => {
                        (false, Some(size as usize))
                    }
                    _ => return Err(format!("{w}: int8 weights per tensor, row or 32k-group")),
                };
                Weights8::Int8 { per_row, group }
            } else {
                let g = Gemv4::classify(w)?;
                if !g.signed_int || g.group.is_some_and(|s| s < 32) {
                    return Err(format!("{w}: not int4 with groups of 32 or more"));
                }
                Weights8::Nibble(g)
            };
            return Ok(Mma8 { weights, act });
        }
        let fp8 = w.elem == Encoding::E4M3FN || w.elem == Encoding::E5M2;
        let weights = if fp8 {
            let per_row = match w.scheme {
                Scheme::PerTensor => false,
                Scheme::PerChannel { axis: 0 } => true,
                _ => return Err(format!("{w}: FP8 weights per tensor or per row only")),
            };
            if w.scale != ScaleType::F32
                || w.zero_point.is_some()
                || w.tensor_scale != TensorScale::None
                || w.pack != Packing::None
                || w.convention != qc_ir::quant::Convention::Spec
            {
                return Err(format!("{w}: not plain FP8 codes with f32 scales"));
            }
            Weights8::Fp8 {
                e5m2: w.elem == Encoding::E5M2,
                per_row,
            }
        } else {
            let g = Gemv4::classify(w)?;
            if g.group.is_some_and(|s| s < 16) {
                return Err(format!("{w}: scale groups shorter than 16"));
            }
            Weights8::Nibble(g)
        };
        Ok(Mma8 { weights, act })
    }

    /// Whether the kernel reads `K = k`.
    pub fn supports(&self, k: u64) -> Result<(), String> {
        let g = self.group().unwrap_or(32) as u64;
        if !k.is_multiple_of(32) || !k.is_multiple_of(g) {
            return Err(format!("K = {k} is not a multiple of 32 and of the group"));
        }
        Ok(())
    }

    /// Byte offset of the scales in the blob of `W[n, k]`.
    pub fn scales_offset(&self, n: usize, k: usize) -> usize {
        match &self.weights {
            Weights8::Fp8 { .. } | Weights8::Int8 { .. } => align16(n * k),
            Weights8::Nibble(s) => s.sections(n, k).scales,
        }
    }

    /// The blob's length for `W[n, k]`.
    pub fn blob_len(&self, n: usize, k: usize) -> usize {
        match &self.weights {
            Weights8::Fp8 { per_row, .. } => {
                align16(align16(n * k) + 4 * if *per_row { n } else { 1 })
            }
            Weights8::Int8 { per_row, group } => {
                let count = match group {
                    Some(g) => n * (k / g),
                    None if *per_row => n,
                    None => 1,
                };
                align16(align16(n * k) + 4 * count)
            }
            Weights8::Nibble(s) => s.sections(n, k).len,
        }
    }

    /// Elements per weight scale along K, for grouped weights.
    pub fn group(&self) -> Option<usize> {
        match &self.weights {
            Weights8::Nibble(s) => s.group,
            Weights8::Int8 { group, .. } => *group,
            Weights8::Fp8 { .. } => None,
        }
    }

    /// Whether activations and weights are int8 (the s8 MMA with exact i32 sums).
    pub fn is_int8(&self) -> bool {
        self.act.man.is_none()
    }

    /// The `tables` argument (f32 values; 16 + 256 for 4-bit weights, a placeholder for FP8).
    pub fn tables(&self) -> Result<Vec<f32>, String> {
        match &self.weights {
            Weights8::Fp8 { .. } | Weights8::Int8 { .. } => Ok(vec![0.0; 4]),
            Weights8::Nibble(s) => s.tables(),
        }
    }

    /// The `post` argument for a blob.
    pub fn post(&self, blob: &[u8], n: usize, k: usize) -> Result<f32, String> {
        match &self.weights {
            Weights8::Fp8 { .. } | Weights8::Int8 { .. } => Ok(1.0),
            Weights8::Nibble(s) => s.post(blob, n, k),
        }
    }

    /// Whether the activations are e5m2 (else e4m3).
    pub fn act_e5m2(&self) -> bool {
        self.act.man == Some(2)
    }

    /// Whether the MMA's B operand is e5m2 (FP8 e5m2 weights; 4-bit weights decode to e4m3).
    pub fn weight_e5m2(&self) -> bool {
        matches!(self.weights, Weights8::Fp8 { e5m2: true, .. })
    }

    pub(crate) fn intrinsic(&self) -> &'static str {
        if self.is_int8() {
            return "llvm.nvvm.mma.m16n8k32.row.col.s8";
        }
        match (self.act_e5m2(), self.weight_e5m2()) {
            (false, false) => "llvm.nvvm.mma.m16n8k32.row.col.f32.e4m3.e4m3.f32",
            (false, true) => "llvm.nvvm.mma.m16n8k32.row.col.f32.e4m3.e5m2.f32",
            (true, false) => "llvm.nvvm.mma.m16n8k32.row.col.f32.e5m2.e4m3.f32",
            (true, true) => "llvm.nvvm.mma.m16n8k32.row.col.f32.e5m2.e5m2.f32",
        }
    }
}

/// The FP8 byte (in the low 8 bits of an i32) of `v`, which must be a value of the format (`man`
/// mantissa bits, smallest normal exponent `emin`): zero, a normal or a subnormal of it, or NaN
/// (0x7f).
pub(crate) fn fp8_bits<'c>(
    c: &Cx<'c>,
    v: FloatValue<'c>,
    man: u32,
    emin: i32,
) -> Result<IntValue<'c>, Error> {
    crate::fquant::minifloat_bits(c.ctx, &c.b, v, man, emin)
}

/// The activation byte of a quantized value `r` (a value of the format): the FP8 code, or the
/// two's-complement int8 code.
fn act_byte<'c>(c: &Cx<'c>, r: FloatValue<'c>, act: &FakeQuantPt) -> Result<IntValue<'c>, Error> {
    match act.man {
        Some(man) => fp8_bits(c, r, man, act.emin),
        None => {
            let i32t = c.ctx.i32_type();
            let v = c.b.build_float_to_signed_int(r, i32t, "")?;
            Ok(c.b.build_and(v, i32t.const_int(0xff, false), "")?)
        }
    }
}

/// The four activations of `v` quantized (`round(v / sa)`) and packed as bytes, the first in the
/// lowest byte.
pub(crate) fn quantize_act4<'c>(
    c: &Cx<'c>,
    module: &Module<'c>,
    act: &FakeQuantPt,
    v: inkwell::values::VectorValue<'c>,
    sa: FloatValue<'c>,
) -> Result<IntValue<'c>, Error> {
    let mut bytes = Vec::with_capacity(4);
    for e in 0..4u64 {
        let xe =
            c.b.build_extract_element(v, c.ctx.i32_type().const_int(e, false), "")?
                .into_float_value();
        let r = round_elem(c.ctx, &c.b, module, act, c.b.build_float_div(xe, sa, "")?)?;
        bytes.push(act_byte(c, r, act)?);
    }
    pack4(c, &bytes)
}

/// The scale the end result of column (weight row) `col` is multiplied by: the per-tensor or
/// per-row weight scale; `None` for grouped weights (scaled step by step).
pub(crate) fn final_weight_scale<'c>(
    c: &Cx<'c>,
    spec: &Mma8,
    scales: PointerValue<'c>,
    tables: PointerValue<'c>,
    col: IntValue<'c>,
) -> Result<Option<FloatValue<'c>>, Error> {
    Ok(match &spec.weights {
        Weights8::Fp8 { per_row: true, .. }
        | Weights8::Int8 {
            per_row: true,
            group: None,
        } => Some(c.load_f32(scales, col)?),
        Weights8::Fp8 { per_row: false, .. }
        | Weights8::Int8 {
            per_row: false,
            group: None,
        } => Some(c.load_f32(scales, c.i64(0))?),
        Weights8::Nibble(s) if s.group.is_none() => Some(scale_at(c, s, scales, tables, col)?),
        Weights8::Nibble(_) | Weights8::Int8 { .. } => None,
    })
}

/// Where and how the 8-bit GEMMs store their results.
pub(crate) struct Out<'a, 'c> {
    pub(crate) spec: &'a Mma8,
    pub(crate) y: PointerValue<'c>,
    pub(crate) scales: PointerValue<'c>,
    pub(crate) tables: PointerValue<'c>,
    pub(crate) sa: FloatValue<'c>,
    pub(crate) post: FloatValue<'c>,
    pub(crate) m: IntValue<'c>,
    pub(crate) n: IntValue<'c>,
}

impl<'c> Out<'_, 'c> {
    /// `y[row][col] = sum * sa * (final weight scale) * post` when `row < m` and `col < n`
    /// (a branch in `body`; the builder continues after it).
    pub(crate) fn store(
        &self,
        c: &Cx<'c>,
        body: inkwell::values::FunctionValue<'c>,
        row: IntValue<'c>,
        col: IntValue<'c>,
        sum: FloatValue<'c>,
    ) -> Result<(), Error> {
        let r_in = c.b.build_int_compare(IntPredicate::ULT, row, self.m, "")?;
        let c_in = c.b.build_int_compare(IntPredicate::ULT, col, self.n, "")?;
        let store = c.ctx.append_basic_block(body, "store");
        let next = c.ctx.append_basic_block(body, "next");
        c.b.build_conditional_branch(c.b.build_and(r_in, c_in, "")?, store, next)?;
        c.b.position_at_end(store);
        let mut v = c.b.build_float_mul(sum, self.sa, "")?;
        if let Some(ws) = final_weight_scale(c, self.spec, self.scales, self.tables, col)? {
            v = c.b.build_float_mul(v, ws, "")?;
        }
        let v = c.b.build_float_mul(v, self.post, "")?;
        let idx =
            c.b.build_int_add(c.b.build_int_mul(row, self.n, "")?, col, "")?;
        c.b.build_store(c.gep(c.ctx.f32_type().into(), self.y, idx)?, v)?;
        c.b.build_unconditional_branch(next)?;
        c.b.position_at_end(next);
        Ok(())
    }
}

/// `b0 | b1 << 8 | b2 << 16 | b3 << 24` of four bytes in the low bits of i32s.
pub(crate) fn pack4<'c>(c: &Cx<'c>, b: &[IntValue<'c>]) -> Result<IntValue<'c>, Error> {
    let i32t = c.ctx.i32_type();
    let mut r = b[0];
    for (s, v) in b.iter().enumerate().skip(1) {
        let sh =
            c.b.build_left_shift(*v, i32t.const_int(8 * s as u64, false), "")?;
        r = c.b.build_or(r, sh, "")?;
    }
    Ok(r)
}

/// Builds the body and the entry for `entries` into `module`.
pub fn build<'c>(
    ctx: &'c Context,
    module: &Module<'c>,
    spec: &Mma8,
    entries: Entries,
) -> Result<(), Error> {
    let c = Cx::new(ctx, module)?;
    let ptr = ctx.ptr_type(AddressSpace::default());
    let i64t = ctx.i64_type();
    let i32t = ctx.i32_type();
    let f32t = ctx.f32_type();
    // body(codes, scales, tables, x, y, k, n, m, post, sa, warp, t)
    let pb = ProductBody::add(
        ctx,
        module,
        "qc_mma8_body",
        true,
        &[ptr.into(), i64t.into()],
    );
    let body = pb.f;
    let (codes, scales, tables, x, y) = (pb.codes, pb.scales, pb.tables, pb.x, pb.y);
    let (k, n, m, post) = (pb.k, pb.n, pb.m, pb.post);
    let sa = pb.sa.expect("the body takes sa");
    let warp_arg = pb.tail[0].into_pointer_value();
    let t = pb.tail[1].into_int_value();
    c.b.position_at_end(ctx.append_basic_block(body, "entry"));
    let lane = c.b.build_and(t, c.i64(31), "lane")?;
    let mma = Mma::declare(
        &c,
        module,
        entries,
        spec.intrinsic(),
        EMULATOR,
        warp_arg,
        lane,
    )?;
    let WarpTile {
        acc,
        g,
        q,
        m0,
        n0,
        n_last,
    } = WarpTile::new(&c, t, lane, n)?;
    let zero = f32t.const_float(0.0);
    let slots = (TM * TN * 4) as u32;
    let q4 = c.b.build_int_mul(q, c.i64(4), "")?;
    let q2 = c.b.build_int_mul(q, c.i64(2), "")?;
    let nib = match &spec.weights {
        Weights8::Nibble(s) => Some(s),
        Weights8::Fp8 { .. } | Weights8::Int8 { .. } => None,
    };
    let int8 = spec.is_int8();
    let groups_per_row = spec
        .group()
        .map(|gs| c.b.build_int_unsigned_div(k, c.i64(gs as u64), ""))
        .transpose()?;
    // Exact i32 sums for int8 without groups (grouped sums go to f32 step by step).
    let acc_i = c.b.build_alloca(i32t.array_type(slots), "acc_i")?;
    for s in 0..slots as u64 {
        c.b.build_store(c.gep(i32t.into(), acc_i, c.i64(s))?, i32t.const_zero())?;
    }
    let half_k = c.b.build_int_unsigned_div(k, c.i64(2), "")?;
    let steps = c.b.build_int_unsigned_div(k, c.i64(32), "steps")?;
    // Groups of 16 (NVFP4): each k-step of 32 is two MMAs, one per group, scaled apart.
    let halves: u64 = if spec.group() == Some(16) { 2 } else { 1 };
    for_loop(&c, body, steps, |c, si| {
        let k0 = c.b.build_int_mul(si, c.i64(32), "k0")?;
        // A fragments: [row g first half, row g + 8 first half, row g second half, row g + 8
        // second half] of each 16-row tile, as quantized FP8 bytes.
        let mut afr = Vec::new();
        for i in 0..TM as u64 {
            let mut regs = [i32t.const_zero(); 4];
            for h in 0..2u64 {
                let row = c.b.build_int_add(m0, c.i64(16 * i + 8 * h), "")?;
                let row = c.b.build_int_add(row, g, "")?;
                for half in 0..2u64 {
                    let col = c.b.build_int_add(k0, c.i64(16 * half), "")?;
                    let col = c.b.build_int_add(col, q4, "")?;
                    let v = load_x4(c, x, row, m, k, col)?;
                    let bytes = quantize_act4(c, module, &spec.act, v, sa)?;
                    regs[(h + 2 * half) as usize] = bytes;
                }
            }
            afr.push(regs);
        }
        // B fragments: W[n0 + 8j + g][k0 + 4q ..][..4] and [k0 + 16 + 4q ..][..4] as FP8 bytes.
        let mut bfr = Vec::new();
        for j in 0..TN as u64 {
            let wr = c.b.build_int_add(n0, c.i64(8 * j), "")?;
            let wr = c.b.build_int_add(wr, g, "")?;
            let nc = umin(c, wr, n_last)?;
            let inside = c.b.build_int_compare(IntPredicate::ULT, wr, n, "")?;
            let mut regs = [i32t.const_zero(); 2];
            for (half, reg) in regs.iter_mut().enumerate() {
                let col = c.b.build_int_add(k0, c.i64(16 * half as u64), "")?;
                let col = c.b.build_int_add(col, q4, "")?;
                let word = match nib {
                    None => {
                        let off = c.b.build_int_add(c.b.build_int_mul(nc, k, "")?, col, "")?;
                        let ld =
                            c.b.build_load(i32t, c.gep(ctx.i8_type().into(), codes, off)?, "")?;
                        ld.as_instruction_value()
                            .unwrap()
                            .set_alignment(4)
                            .map_err(|e| Error::Codegen(e.to_string()))?;
                        ld.into_int_value()
                    }
                    Some(s) => {
                        let off = c.b.build_int_mul(nc, half_k, "")?;
                        let off = c.b.build_int_add(
                            off,
                            c.b.build_right_shift(col, c.i64(1), false, "")?,
                            "",
                        )?;
                        let i16t = ctx.i16_type();
                        let ld =
                            c.b.build_load(i16t, c.gep(ctx.i8_type().into(), codes, off)?, "")?;
                        ld.as_instruction_value()
                            .unwrap()
                            .set_alignment(2)
                            .map_err(|e| Error::Codegen(e.to_string()))?;
                        let w = c.b.build_int_z_extend(ld.into_int_value(), i32t, "")?;
                        let mut bytes = Vec::new();
                        for e in 0..4u64 {
                            let sh =
                                c.b.build_right_shift(w, i32t.const_int(4 * e, false), false, "")?;
                            let code = c.b.build_and(sh, i32t.const_int(15, false), "")?;
                            if int8 {
                                // int4 to int8: (c ^ 8) - 8, two's complement in the byte.
                                let x8 = c.b.build_xor(code, i32t.const_int(8, false), "")?;
                                let sv = c.b.build_int_sub(x8, i32t.const_int(8, false), "")?;
                                bytes.push(c.b.build_and(sv, i32t.const_int(0xff, false), "")?);
                                continue;
                            }
                            let v = if s.signed_int {
                                let x8 = c.b.build_xor(code, i32t.const_int(8, false), "")?;
                                let sv = c.b.build_int_sub(x8, i32t.const_int(8, false), "")?;
                                c.b.build_signed_int_to_float(sv, f32t, "")?
                            } else {
                                let idx = c.b.build_int_z_extend(code, i64t, "")?;
                                c.load_f32(tables, idx)?
                            };
                            // Exact: every int4 and e2m1 value is an e4m3 value.
                            bytes.push(fp8_bits(c, v, 3, -6)?);
                        }
                        pack4(c, &bytes)?
                    }
                };
                *reg =
                    c.b.build_select(inside, word, i32t.const_zero(), "")?
                        .into_int_value();
            }
            bfr.push(regs);
        }
        // Group scales of the step's columns (grouped weights): col = n0 + 8j + 2q + e, for each
        // group of the step (two for groups of 16, each K half its own MMA).
        let mut gscales = Vec::new();
        if let (Some(g), Some(gpr)) = (spec.group(), groups_per_row) {
            for h in 0..halves {
                let gi_in_row = c.b.build_int_add(
                    c.b.build_int_unsigned_div(k0, c.i64(g as u64), "")?,
                    c.i64(h),
                    "",
                )?;
                let mut gscale = Vec::new();
                for j in 0..TN as u64 {
                    for e in 0..2u64 {
                        let col = c.b.build_int_add(n0, c.i64(8 * j + e), "")?;
                        let col = umin(c, c.b.build_int_add(col, q2, "")?, n_last)?;
                        let gi =
                            c.b.build_int_add(c.b.build_int_mul(col, gpr, "")?, gi_in_row, "")?;
                        gscale.push(match nib {
                            Some(s) => scale_at(c, s, scales, tables, gi)?,
                            None => c.load_f32(scales, gi)?,
                        });
                    }
                }
                gscales.push(gscale);
            }
        }
        let gscale = gscales.first().cloned().unwrap_or_default();
        for (i, ai) in afr.iter().enumerate() {
            for (j, bj) in bfr.iter().enumerate() {
                let at = ((i * TN + j) * 4) as u64;
                if int8 {
                    let d = mma.issue_i32(c, ai, bj, &[i32t.const_zero(); 4])?;
                    for (e, dv) in d.iter().enumerate() {
                        if gscale.is_empty() {
                            let p = c.gep(i32t.into(), acc_i, c.i64(at + e as u64))?;
                            let cur = c.b.build_load(i32t, p, "")?.into_int_value();
                            c.b.build_store(p, c.b.build_int_add(cur, *dv, "")?)?;
                        } else {
                            let p = c.gep(f32t.into(), acc, c.i64(at + e as u64))?;
                            let cur = c.b.build_load(f32t, p, "")?.into_float_value();
                            let df = c.b.build_signed_int_to_float(*dv, f32t, "")?;
                            c.b.build_store(p, c.fma(gscale[j * 2 + e % 2], df, cur)?)?;
                        }
                    }
                    continue;
                }
                let at = ((i * TN + j) * 4) as u64;
                for h in 0..halves as usize {
                    // Groups of 16: the MMA of K half h alone (A's registers of the other half,
                    // registers 2 - 2h and 3 - 2h, zero).
                    let mut a = *ai;
                    if halves == 2 {
                        a[2 - 2 * h] = i32t.const_zero();
                        a[3 - 2 * h] = i32t.const_zero();
                    }
                    let d = mma.issue(c, &a, bj, &[zero; 4])?;
                    for (e, dv) in d.iter().enumerate() {
                        let p = c.gep(f32t.into(), acc, c.i64(at + e as u64))?;
                        let cur = c.b.build_load(f32t, p, "")?.into_float_value();
                        let r = match gscales.get(h) {
                            None => c.b.build_float_add(cur, *dv, "")?,
                            Some(gs) => c.fma(gs[j * 2 + e % 2], *dv, cur)?,
                        };
                        c.b.build_store(p, r)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    // y[row][col] = acc * sa * weight scale * post.
    let out = Out {
        spec,
        y,
        scales,
        tables,
        sa,
        post,
        m,
        n,
    };
    for i in 0..TM as u64 {
        for j in 0..TN as u64 {
            for e in 0..4u64 {
                let at = (i * TN as u64 + j) * 4 + e;
                let row = c.b.build_int_add(m0, c.i64(16 * i + 8 * (e / 2)), "")?;
                let row = c.b.build_int_add(row, g, "")?;
                let col = c.b.build_int_add(n0, c.i64(8 * j + e % 2), "")?;
                let col = c.b.build_int_add(col, q2, "")?;
                let sum = if int8 && spec.group().is_none() {
                    let iv =
                        c.b.build_load(i32t, c.gep(i32t.into(), acc_i, c.i64(at))?, "")?;
                    c.b.build_signed_int_to_float(iv.into_int_value(), f32t, "")?
                } else {
                    c.load_f32(acc, c.i64(at))?
                };
                out.store(&c, body, row, col, sum)?;
            }
        }
    }
    c.b.build_return(None)?;

    warp_tile_entry(&c, module, body, ENTRY, 10, entries, product_warps)
}

/// The PTX of [`ENTRY`] for `spec` and `target` (FP8: sm_89 or later, which FP8 MMA needs; int8:
/// every target).
pub fn emit_ptx(target: GpuTarget, spec: &Mma8) -> Result<String, Error> {
    if target == GpuTarget::Sm80 && !spec.is_int8() {
        return Err(Error::Codegen("sm_80 has no FP8 tensor cores".into()));
    }
    // FP8 mma.sync needs PTX ISA 8.4; newer chips need their own newer ISA anyway; the s8 MMA
    // any (LLVM's lowest for the chip).
    let isa = match target {
        _ if spec.is_int8() => "",
        GpuTarget::Sm100a => "+ptx86",
        GpuTarget::Sm120a => "+ptx87",
        _ => "+ptx84",
    };
    compile_ptx(
        &target_machine_with(target, isa)?,
        "qc_mma8",
        "default<O3>",
        |c, m| build(c, m, spec, Entries::Ptx),
    )
}

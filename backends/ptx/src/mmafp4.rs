//! W4A4 GEMM on the block-scaled FP4 tensor cores of consumer Blackwell (sm_120a, RTX 50):
//! `y[M, N] = x[M, K] W[N, K]^T` for the products of [`Fp4`] (NVFP4 x NVFP4, MXFP4 x MXFP4). The
//! kernel quantizes the f32 activations block by block itself ([`crate::fquant`]'s
//! `quantize_block`, bit for bit the interpreter's arithmetic) and reads the weights' e2m1 codes and
//! scale bytes straight from their `qc_quant::blob`.
//!
//! # Arithmetic
//! Each k-step of 64 is one warp-level block-scaled MMA on a zeroed accumulator:
//! - NVFP4: `mma.sync.aligned.m16n8k64.row.col.kind::mxf4nvf4.block_scale.scale_vec::4X.f32.e2m1.e2m1.f32.ue4m3`
//!   (four ue4m3 scales per row of A and per column of B: one per 16 elements);
//! - MXFP4: `mma.sync.aligned.m16n8k64.row.col.kind::mxf4.block_scale.scale_vec::2X.f32.e2m1.e2m1.f32.ue8m0`
//!   (two ue8m0 scales: one per 32 elements).
//!
//! A product `a_code * a_scale * w_code * w_scale` has at most 12 significant bits (NVFP4), so it
//! is exact in f32; the MMA's sum is added to an f32 sum per output, so the tensor core never
//! accumulates across steps. At the end `y = sum * g * post`: `g` the activations' NVFP4 global
//! scale, computed in f32 as `quantize_block` does (`t / (6 * 448)` of the static tensor maximum
//! `t = sa`, 1 when `t` is 0; 1 for MXFP4), `post` the weights' tensor scale ([`Fp4::post`]).
//!
//! # Kernel [`ENTRY`]`(codes, scales, tables, x, y, k, n, m, post, sa)`
//! As [`crate::mma8`]: warp `w` (global thread / 32) computes the 32 x 32 tile
//! `(w / ceil(N / 32), w % ceil(N / 32))` of `y` as 2 x 4 MMA tiles of 16 x 8; launch
//! `ceil(M / 32) * ceil(N / 32)` warps (e.g. in blocks of [`BLOCK`] threads); warps past the last
//! tile return whole. Rows past M read as zeros and are not written; weight rows past N read
//! row N - 1 with their codes zeroed, and are not written. `codes` is the blob (4-byte aligned),
//! `scales` the blob at [`Fp4::scales_offset`] (one byte per block, `[N, K / block]`), `tables`
//! is unused (the entry has the shape of the other product kernels), `sa` the activations'
//! static tensor maximum (NVFP4; MXFP4 ignores it). K must be a multiple of 64 ([`Fp4::supports`]);
//! `x` 16-byte aligned.
//!
//! # Fragments and scales
//! From the PTX ISA (9.0's numbering; anchors of docs.nvidia.com/cuda/parallel-thread-execution
//! in parentheses), with `g = lane / 4`, `q = lane % 4` (groupID, threadID_in_group):
//! - A (9.7.14.5.11 "Matrix Fragments for mma.m16n8k64", `#warp-level-matrix-fragment-mma-16864`,
//!   the `.e2m1` rows of its tables, which `.kind::mxf4` and `.kind::mxf4nvf4` read unpadded, as
//!   9.7.14.5.14 "mma" says): four `.b32` registers of eight e2m1 codes each, elements
//!   `a0 .. a31` low to high (element `i` in bits `4 (i % 8)` of register `i / 8`); `ai` is `A[g][8q + i % 8]` for `i < 8`, `A[g + 8][8q + i % 8]` for
//!   `8 <= i < 16`, and the same plus 32 columns for `i >= 16`. So register `h + 2 s` holds row
//!   `g + 8h`, columns `32 s + 8q .. + 8`, the lowest column in the lowest nibble.
//! - B (same section): two registers, `bi = B[8q + i % 8 + 32 (i / 8)][g]`: register `s` holds
//!   weight row `g`, columns `32 s + 8q .. + 8`. The blob packs element `2j` in the low nibble of
//!   byte `j`, so the four bytes at column `32 s + 8q` read as one little-endian word are the
//!   register.
//! - C/D (same section): `ci = D[g + 8 (i / 2)][2q + i % 2]`.
//! - Scales (9.7.14.3 "Block Scaling for mma.sync", `#warp-level-block-scaling`, tables 35-37):
//!   `scale_A` is `M x V`, `scale_B` `V x N` for `scale_vec::VX`; chunk `c` of a row of A
//!   (columns `64 c / V ..`) is scaled by `SF_A[row][c]`. The kernel passes
//!   `{byte-id, thread-id} = {0, 0}` for both. The text says that `thread-id-a = 0` makes lanes
//!   with `lane % 4` in {0, 1} supply `SF_A`, `thread-id-b = 0` the lanes with `lane % 4 == 0`
//!   supply `SF_B`, that with `scale_vec::4X` all four bytes of the register are used and with
//!   `scale_vec::2X` the byte pair chosen by `byte-id` (0: the lower two). Which of the two lanes carries which rows, and which byte which chunk, is in the ISA's
//!   figures 43 and 45, not its text; the kernel follows the reading that lane `4g` supplies row
//!   `g` and lane `4g + 1` row `g + 8`, and that byte `byte-id + c` holds chunk `c`, which is the
//!   layout of CUTLASS's SM120 SFA/SFB atoms (`((2,2,8),(16,4)):((32,0,4),(0,1))` and
//!   `((4,8),(16,4)):((0,4),(0,1))`, as given in Colfax Research's "NVFP4 Blockscaled GEMM on
//!   NVIDIA RTX Pro Blackwell GPUs (SM12x)") and of llama.cpp's sm_120 FP4 MMA
//!   (`tidx_A = lane / 4 + (lane % 2) * 8`, one `uint32` of consecutive scale bytes). Every lane
//!   computes the scale register of rows `g + 8 (q % 2)` and column `g`, so the other lanes hold
//!   the same values. Not confirmed on hardware (no sm_120 GPU was available).
//!
//! The MMA is LLVM's `llvm.nvvm.mma.block.scale.m16n8k64.row.col.{mxf4nvf4.scale.4x,
//! mxf4.scale.2x}.f32.e2m1.e2m1.f32.{ue4m3, ue8m0}` (IntrinsicsNVVM.td, `NVVM_MMA_BLOCK_SCALE`:
//! A, B, C, then `scale-a-data`, `byte-id-a`, `thread-id-a`, `scale-b-data`, `byte-id-b`,
//! `thread-id-b`), which needs PTX ISA 8.7. The tests run the body on the host with every MMA a
//! call of an emulator written from the ISA text, and assemble the PTX with ptxas.

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, FloatValue, FunctionValue, IntValue, PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

use crate::fp4::{Fp4, Fp4Kind, K_STEP};
use crate::fquant::{e2m1_code, quantize_block};
use crate::gemv4::{for_loop, Cx};
use crate::mma4::{
    load_x4, product_warps, umin, warp_tile_entry, Entries, ProductBody, WarpTile, TM, TN,
};
use crate::{compile_ptx, target_machine_with, Error, GpuTarget};

/// The kernel's entry.
pub const ENTRY: &str = "qc_mma_fp4";
/// The host emulator's symbol ([`Entries::Host`]): `void qc_mma_fp4_emu(void *warp, int64_t lane,
/// uint32_t a0..a3, uint32_t b0, b1, float c0..c3, uint32_t scale_a, uint32_t byte_id_a, uint32_t
/// thread_id_a, uint32_t scale_b, uint32_t byte_id_b, uint32_t thread_id_b, float *d)` computes
/// this lane's four accumulators of the block-scaled m16n8k64 MMA from all 32 lanes' operands.
pub const EMULATOR: &str = "qc_mma_fp4_emu";
/// Threads per block the launch plan uses (4 warps).
pub const BLOCK: u32 = 128;

impl Fp4 {
    /// The NVVM intrinsic of the k-step's MMA.
    fn intrinsic(&self) -> &'static str {
        match self.kind {
            Fp4Kind::Nvfp4 => {
                "llvm.nvvm.mma.block.scale.m16n8k64.row.col.mxf4nvf4.scale.4x.f32.e2m1.e2m1.f32.ue4m3"
            }
            Fp4Kind::Mxfp4 => {
                "llvm.nvvm.mma.block.scale.m16n8k64.row.col.mxf4.scale.2x.f32.e2m1.e2m1.f32.ue8m0"
            }
        }
    }

    /// Scale chunks per k-step (the `scale_vec` size).
    fn chunks(&self) -> u64 {
        K_STEP / self.block()
    }
}

/// How the body issues the block-scaled MMA: the intrinsic, or a call of [`EMULATOR`].
enum MmaFp4<'c> {
    Ptx(FunctionValue<'c>),
    Host {
        emu: FunctionValue<'c>,
        warp: PointerValue<'c>,
        lane: IntValue<'c>,
        out: PointerValue<'c>,
    },
}

impl<'c> MmaFp4<'c> {
    /// Declares the MMA; builds an alloca at the builder's position (the entry block).
    fn declare(
        c: &Cx<'c>,
        module: &Module<'c>,
        entries: Entries,
        spec: &Fp4,
        warp: PointerValue<'c>,
        lane: IntValue<'c>,
    ) -> Result<MmaFp4<'c>, Error> {
        let ctx = c.ctx;
        Ok(match entries {
            Entries::Ptx => {
                let name = spec.intrinsic();
                MmaFp4::Ptx(
                    Intrinsic::find(name)
                        .and_then(|i| i.get_declaration(module, &[]))
                        .ok_or(Error::MissingIntrinsic(name))?,
                )
            }
            Entries::Host => {
                use inkwell::types::BasicMetadataTypeEnum as T;
                let ptr = ctx.ptr_type(AddressSpace::default());
                let (i32t, f32t) = (ctx.i32_type(), ctx.f32_type());
                let mut p: Vec<T> = vec![ptr.into(), ctx.i64_type().into()];
                p.extend(std::iter::repeat_n(T::from(i32t), 6));
                p.extend(std::iter::repeat_n(T::from(f32t), 4));
                p.extend(std::iter::repeat_n(T::from(i32t), 6));
                p.push(ptr.into());
                let emu = module.add_function(EMULATOR, ctx.void_type().fn_type(&p, false), None);
                let out = c.b.build_alloca(f32t.array_type(4), "d")?;
                MmaFp4::Host {
                    emu,
                    warp,
                    lane,
                    out,
                }
            }
        })
    }

    /// `d = (A * scale_A) (B * scale_B)` of one tile on a zero accumulator, with the selectors
    /// `{byte-id, thread-id} = {0, 0}` for both scales.
    fn issue(
        &self,
        c: &Cx<'c>,
        a: &[IntValue<'c>; 4],
        b: &[IntValue<'c>; 2],
        sfa: IntValue<'c>,
        sfb: IntValue<'c>,
    ) -> Result<[FloatValue<'c>; 4], Error> {
        let f32t = c.ctx.f32_type();
        let zero = f32t.const_zero();
        let mut args: Vec<BasicMetadataValueEnum<'c>> = Vec::with_capacity(19);
        let mut d = [zero; 4];
        match self {
            MmaFp4::Ptx(f) => {
                let i16t = c.ctx.i16_type();
                args.extend(a.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(b.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend([BasicMetadataValueEnum::from(zero); 4]);
                for s in [sfa, sfb] {
                    args.push(s.into());
                    args.push(i16t.const_zero().into());
                    args.push(i16t.const_zero().into());
                }
                let r =
                    c.b.build_call(*f, &args, "")?
                        .try_as_basic_value()
                        .basic()
                        .ok_or(Error::MissingIntrinsic("llvm.nvvm.mma.block.scale"))?
                        .into_struct_value();
                for (i, slot) in d.iter_mut().enumerate() {
                    *slot = c.b.build_extract_value(r, i as u32, "")?.into_float_value();
                }
            }
            MmaFp4::Host {
                emu,
                warp,
                lane,
                out,
            } => {
                let i32t = c.ctx.i32_type();
                args.push((*warp).into());
                args.push((*lane).into());
                args.extend(a.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(b.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend([BasicMetadataValueEnum::from(zero); 4]);
                for s in [sfa, sfb] {
                    args.push(s.into());
                    args.push(i32t.const_zero().into());
                    args.push(i32t.const_zero().into());
                }
                args.push((*out).into());
                c.b.build_call(*emu, &args, "")?;
                for (i, slot) in d.iter_mut().enumerate() {
                    *slot = c.load_f32(*out, c.i64(i as u64))?;
                }
            }
        }
        Ok(d)
    }
}

/// `b[0] | b[1] << s | b[2] << 2s ...` of small values in the low bits of i32s.
fn pack<'c>(c: &Cx<'c>, v: &[IntValue<'c>], s: u64) -> Result<IntValue<'c>, Error> {
    let i32t = c.ctx.i32_type();
    let mut r = v[0];
    for (i, x) in v.iter().enumerate().skip(1) {
        let sh =
            c.b.build_left_shift(*x, i32t.const_int(s * i as u64, false), "")?;
        r = c.b.build_or(r, sh, "")?;
    }
    Ok(r)
}

/// A 4-byte-aligned i32 load of `p[off]` (bytes).
fn load_u32<'c>(c: &Cx<'c>, p: PointerValue<'c>, off: IntValue<'c>) -> Result<IntValue<'c>, Error> {
    let i32t = c.ctx.i32_type();
    let ld =
        c.b.build_load(i32t, c.gep(c.ctx.i8_type().into(), p, off)?, "")?;
    ld.as_instruction_value()
        .unwrap()
        .set_alignment(4)
        .map_err(|e| Error::Codegen(e.to_string()))?;
    Ok(ld.into_int_value())
}

/// Builds the body and the entry for `entries` into `module`.
pub fn build<'c>(
    ctx: &'c Context,
    module: &Module<'c>,
    spec: &Fp4,
    entries: Entries,
) -> Result<(), Error> {
    let c = Cx::new(ctx, module)?;
    let ptr = ctx.ptr_type(AddressSpace::default());
    let (i64t, i32t, i8t, f32t) = (
        ctx.i64_type(),
        ctx.i32_type(),
        ctx.i8_type(),
        ctx.f32_type(),
    );
    // body(codes, scales, tables, x, y, k, n, m, post, sa, warp, t)
    let pb = ProductBody::add(
        ctx,
        module,
        "qc_mma_fp4_body",
        true,
        &[ptr.into(), i64t.into()],
    );
    let body = pb.f;
    let (codes, scales, x, y) = (pb.codes, pb.scales, pb.x, pb.y);
    let (k, n, m, post) = (pb.k, pb.n, pb.m, pb.post);
    let tamax = pb.sa.expect("the body takes sa");
    let warp_arg = pb.tail[0].into_pointer_value();
    let t = pb.tail[1].into_int_value();
    c.b.position_at_end(ctx.append_basic_block(body, "entry"));
    let lane = c.b.build_and(t, c.i64(31), "lane")?;
    let mma = MmaFp4::declare(&c, module, entries, spec, warp_arg, lane)?;
    let WarpTile {
        acc,
        g,
        q,
        m0,
        n0,
        n_last,
    } = WarpTile::new(&c, t, lane, n)?;
    let zero = f32t.const_float(0.0);
    let q8 = c.b.build_int_mul(q, c.i64(8), "")?;
    // Lanes with q % 2 == 1 supply the scales of row g + 8 (thread-id-a = 0: lanes 4g, 4g + 1).
    let odd = c.b.build_int_compare(
        IntPredicate::NE,
        c.b.build_and(q, c.i64(1), "")?,
        c.i64(0),
        "odd",
    )?;
    let bs = spec.block();
    let chunks = spec.chunks();
    let half_k = c.b.build_int_unsigned_div(k, c.i64(2), "")?;
    let blocks_per_row = c.b.build_int_unsigned_div(k, c.i64(bs), "")?;
    let byte = |v: IntValue<'c>| c.b.build_and(v, i32t.const_int(0xff, false), "");
    let steps = c.b.build_int_unsigned_div(k, c.i64(K_STEP), "steps")?;
    for_loop(&c, body, steps, |c, si| {
        let k0 = c.b.build_int_mul(si, c.i64(K_STEP), "k0")?;
        // A: rows g and g + 8 of each 16-row tile, the step's 64 elements quantized block by
        // block; this lane keeps the codes of its columns 8q .. 8q + 8 and 32 + 8q .. 32 + 8q + 8
        // and the scale bytes of row g + 8 (q % 2).
        let mut afr = Vec::new();
        for i in 0..TM as u64 {
            let mut regs = [i32t.const_zero(); 4];
            let mut sbytes: [Vec<IntValue<'c>>; 2] = [Vec::new(), Vec::new()];
            for h in 0..2u64 {
                let row = c.b.build_int_add(m0, c.i64(16 * i + 8 * h), "")?;
                let row = c.b.build_int_add(row, g, "")?;
                let mut xs = Vec::with_capacity(K_STEP as usize);
                for j in 0..K_STEP / 4 {
                    let col = c.b.build_int_add(k0, c.i64(4 * j), "")?;
                    let v = load_x4(c, x, row, m, k, col)?;
                    for e in 0..4u64 {
                        xs.push(
                            c.b.build_extract_element(v, i32t.const_int(e, false), "")?
                                .into_float_value(),
                        );
                    }
                }
                let mut codes_row = Vec::with_capacity(K_STEP as usize);
                for blk in xs.chunks(bs as usize) {
                    let qb = quantize_block(ctx, &c.b, module, &spec.act, blk, tamax)?;
                    for v in &qb.q {
                        codes_row.push(e2m1_code(ctx, &c.b, *v)?);
                    }
                    sbytes[h as usize].push(byte(qb.scale_byte)?);
                }
                // Column 32 s + 8q + e of the row: select among the four lanes' choices.
                for s in 0..2u64 {
                    let mut word = i32t.const_zero();
                    for qq in 0..4u64 {
                        let base = (32 * s + 8 * qq) as usize;
                        let w = pack(c, &codes_row[base..base + 8], 4)?;
                        let is = c.b.build_int_compare(IntPredicate::EQ, q, c.i64(qq), "")?;
                        word = c.b.build_select(is, w, word, "")?.into_int_value();
                    }
                    regs[(h + 2 * s) as usize] = word;
                }
            }
            let sa0 = pack(c, &sbytes[0], 8)?;
            let sa1 = pack(c, &sbytes[1], 8)?;
            let sfa = c.b.build_select(odd, sa1, sa0, "sfa")?.into_int_value();
            afr.push((regs, sfa));
        }
        // B: weight row n0 + 8j + g, columns 32 s + 8q .. + 8 (one word each), and its scale
        // bytes for the step's chunks.
        let mut bfr = Vec::new();
        for j in 0..TN as u64 {
            let wr = c.b.build_int_add(n0, c.i64(8 * j), "")?;
            let wr = c.b.build_int_add(wr, g, "")?;
            let nc = umin(c, wr, n_last)?;
            let inside = c.b.build_int_compare(IntPredicate::ULT, wr, n, "")?;
            let mut regs = [i32t.const_zero(); 2];
            for (s, reg) in regs.iter_mut().enumerate() {
                let col = c.b.build_int_add(k0, c.i64(32 * s as u64), "")?;
                let col = c.b.build_int_add(col, q8, "")?;
                let off = c.b.build_int_mul(nc, half_k, "")?;
                let off =
                    c.b.build_int_add(off, c.b.build_right_shift(col, c.i64(1), false, "")?, "")?;
                let word = load_u32(c, codes, off)?;
                *reg =
                    c.b.build_select(inside, word, i32t.const_zero(), "")?
                        .into_int_value();
            }
            let first = c.b.build_int_add(
                c.b.build_int_mul(nc, blocks_per_row, "")?,
                c.b.build_int_unsigned_div(k0, c.i64(bs), "")?,
                "",
            )?;
            let mut bytes = Vec::new();
            for ch in 0..chunks {
                let p = c.gep(i8t.into(), scales, c.b.build_int_add(first, c.i64(ch), "")?)?;
                let v = c.b.build_load(i8t, p, "")?.into_int_value();
                bytes.push(c.b.build_int_z_extend(v, i32t, "")?);
            }
            bfr.push((regs, pack(c, &bytes, 8)?));
        }
        for (i, (ai, sfa)) in afr.iter().enumerate() {
            for (j, (bj, sfb)) in bfr.iter().enumerate() {
                let d = mma.issue(c, ai, bj, *sfa, *sfb)?;
                let at = ((i * TN + j) * 4) as u64;
                for (e, dv) in d.iter().enumerate() {
                    let p = c.gep(f32t.into(), acc, c.i64(at + e as u64))?;
                    let cur = c.b.build_load(f32t, p, "")?.into_float_value();
                    c.b.build_store(p, c.b.build_float_add(cur, *dv, "")?)?;
                }
            }
        }
        Ok(())
    })?;
    // y[row][col] = acc * g * post, g as quantize_block computes it.
    let gs = match spec.kind {
        Fp4Kind::Nvfp4 => {
            let tz =
                c.b.build_float_compare(FloatPredicate::OEQ, tamax, zero, "")?;
            let gq =
                c.b.build_float_div(tamax, f32t.const_float(6.0 * 448.0), "")?;
            c.b.build_select(tz, f32t.const_float(1.0), gq, "g")?
                .into_float_value()
        }
        Fp4Kind::Mxfp4 => f32t.const_float(1.0),
    };
    let q2 = c.b.build_int_mul(q, c.i64(2), "")?;
    for i in 0..TM as u64 {
        for j in 0..TN as u64 {
            for e in 0..4u64 {
                let at = (i * TN as u64 + j) * 4 + e;
                let row = c.b.build_int_add(m0, c.i64(16 * i + 8 * (e / 2)), "")?;
                let row = c.b.build_int_add(row, g, "")?;
                let col = c.b.build_int_add(n0, c.i64(8 * j + e % 2), "")?;
                let col = c.b.build_int_add(col, q2, "")?;
                let r_in = c.b.build_int_compare(IntPredicate::ULT, row, m, "")?;
                let c_in = c.b.build_int_compare(IntPredicate::ULT, col, n, "")?;
                let store = ctx.append_basic_block(body, "store");
                let next = ctx.append_basic_block(body, "next");
                c.b.build_conditional_branch(c.b.build_and(r_in, c_in, "")?, store, next)?;
                c.b.position_at_end(store);
                let sum = c.load_f32(acc, c.i64(at))?;
                let v = c.b.build_float_mul(sum, gs, "")?;
                let v = c.b.build_float_mul(v, post, "")?;
                let idx = c.b.build_int_add(c.b.build_int_mul(row, n, "")?, col, "")?;
                c.b.build_store(c.gep(f32t.into(), y, idx)?, v)?;
                c.b.build_unconditional_branch(next)?;
                c.b.position_at_end(next);
            }
        }
    }
    c.b.build_return(None)?;
    warp_tile_entry(&c, module, body, ENTRY, 10, entries, product_warps)
}

/// The PTX of [`ENTRY`] for `spec` on sm_120a (PTX ISA 8.7, which the block-scaled MMA needs).
pub fn emit_ptx(spec: &Fp4) -> Result<String, Error> {
    compile_ptx(
        &target_machine_with(GpuTarget::Sm120a, "+ptx87")?,
        "qc_mma_fp4",
        "default<O3>",
        |c, m| build(c, m, spec, Entries::Ptx),
    )
}

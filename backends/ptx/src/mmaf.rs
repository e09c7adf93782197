//! f32 batched GEMM on tensor cores (TF32, sm_80 and later): `c[b] = a[b] x b[b']` with `a` `[B, M, K]`,
//! `b` `[B', K, N]` (`B' = 1`: one matrix shared by every batch element, else `B' = B`) and `c`
//! `[B, M, N]`, all f32 row major: the float products of a model (the export's `Sgemm` calls:
//! linear layers with float weights, attention's batched products, convolutions after im2col).
//!
//! # Arithmetic
//! "3xTF32": both operands are split into two TF32 terms, `hi = tf32(v)` and `lo = tf32(v - hi)`
//! (round to nearest, ties away, as `cvt.rna.tf32.f32`, done with integer arithmetic), which hold
//! 22 significant bits of `v`, and each k-step of 8 is three
//! `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`: `lo*hi + hi*lo + hi*hi` (the dropped
//! `lo*lo` is below 2^-22 of the product), accumulated by the tensor core in f32. The result is
//! within about 1e-6 of an f32 GEMM's (not bit-identical: the tensor core's order of addition).

//! # Kernel [`ENTRY`]`(a, b, c, batch, m, n, k, shared_b)`
//! Warp `w` computes, for batch element `w / T` (`T = ceil(M / 32) * ceil(N / 32)`), the 32 x 32
//! tile `w % T` of `c` (row-major over tiles), in 2 x 4 MMA tiles of 16 x 8, as in [`crate::mma4`]:
//! lane `(g, q)` holds the elements `k0 + q` and `k0 + q + 4` of each k-step, of rows
//! `m0 + 16i + g (+ 8)` of `a` and columns `n0 + 8j + g` of `b` (the m16n8k8 TF32 fragment
//! layout). Any M, N, K: elements outside the matrices read as zeros and are not written. Launch
//! `batch * T` warps, e.g. in blocks of [`BLOCK`] threads. The tests run the body on the host with
//! the MMA emulator, as for `mma4`.

use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::values::{FloatValue, IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};

use crate::gemv4::{for_loop, Cx, Entries};
use crate::mma4::{umin, warp_tile_entry, warp_tiles, Mma, WARP_TILE};
use crate::{compile_ptx, target_machine, Error, GpuTarget};

/// The kernel's entry.
pub const ENTRY: &str = "qc_sgemm_mma";
/// Threads per block the launch plan uses (4 warps).
pub const BLOCK: u32 = 128;
/// The host emulator's symbol (the signature of `crate::mma4::EMULATOR`).
pub const EMULATOR: &str = "qc_sgemm_mma_emu";

const TM: usize = 2;
const TN: usize = 4;

/// The TF32 bits of `v`: rounded to 10 mantissa bits, to nearest with ties away from zero (the
/// magnitude bits plus half an ulp, truncated), the low 13 bits zero.
fn tf32<'c>(c: &Cx<'c>, v: FloatValue<'c>) -> Result<IntValue<'c>, Error> {
    let i32t = c.ctx.i32_type();
    let bits = c.b.build_bit_cast(v, i32t, "")?.into_int_value();
    let r = c.b.build_int_add(bits, i32t.const_int(0x1000, false), "")?;
    Ok(c.b.build_and(r, i32t.const_int(0xffff_e000, false), "")?)
}

/// `(hi, lo)` TF32 bits of `v`.
fn split<'c>(c: &Cx<'c>, v: FloatValue<'c>) -> Result<(IntValue<'c>, IntValue<'c>), Error> {
    let hi = tf32(c, v)?;
    let hv =
        c.b.build_bit_cast(hi, c.ctx.f32_type(), "")?
            .into_float_value();
    let lo = tf32(c, c.b.build_float_sub(v, hv, "")?)?;
    Ok((hi, lo))
}

/// `p[row * stride + col]` when `row < rows` and `col < cols`, else 0 (the load reads a clamped,
/// existing element).
#[allow(clippy::too_many_arguments)]
fn load_or_zero<'c>(
    c: &Cx<'c>,
    p: PointerValue<'c>,
    row: IntValue<'c>,
    rows: IntValue<'c>,
    col: IntValue<'c>,
    cols: IntValue<'c>,
    stride: IntValue<'c>,
) -> Result<FloatValue<'c>, Error> {
    let one = c.i64(1);
    let rc = umin(c, row, c.b.build_int_sub(rows, one, "")?)?;
    let cc = umin(c, col, c.b.build_int_sub(cols, one, "")?)?;
    let off =
        c.b.build_int_add(c.b.build_int_mul(rc, stride, "")?, cc, "")?;
    let v = c.load_f32(p, off)?;
    let inside = c.b.build_and(
        c.b.build_int_compare(IntPredicate::ULT, row, rows, "")?,
        c.b.build_int_compare(IntPredicate::ULT, col, cols, "")?,
        "",
    )?;
    Ok(c.b
        .build_select(inside, v, c.ctx.f32_type().const_zero(), "")?
        .into_float_value())
}

/// Builds the body and the entry (the PTX kernel [`ENTRY`], or the host function
/// `qc_sgemm_mma_at(a, b, c, batch, m, n, k, shared_b, warp, t)` with every MMA a call of
/// [`EMULATOR`]) into `module`.
pub fn build<'c>(ctx: &'c Context, module: &Module<'c>, entries: Entries) -> Result<(), Error> {
    let c = Cx::new(ctx, module)?;
    let ptr = ctx.ptr_type(AddressSpace::default());
    let (i64t, f32t, void) = (ctx.i64_type(), ctx.f32_type(), ctx.void_type());
    // body(a, b, c, batch, m, n, k, shared_b, warp, t)
    let params: Vec<inkwell::types::BasicMetadataTypeEnum> = vec![
        ptr.into(),
        ptr.into(),
        ptr.into(),
        i64t.into(),
        i64t.into(),
        i64t.into(),
        i64t.into(),
        i64t.into(),
        ptr.into(),
        i64t.into(),
    ];
    let body = module.add_function(
        "qc_sgemm_mma_body",
        void.fn_type(&params, false),
        Some(Linkage::Internal),
    );
    let a = body.get_params();
    let (pa, pb, pc) = (
        a[0].into_pointer_value(),
        a[1].into_pointer_value(),
        a[2].into_pointer_value(),
    );
    let (m, n, k, shared_b) = (
        a[4].into_int_value(),
        a[5].into_int_value(),
        a[6].into_int_value(),
        a[7].into_int_value(),
    );
    let (warp_arg, t) = (a[8].into_pointer_value(), a[9].into_int_value());
    c.b.position_at_end(ctx.append_basic_block(body, "entry"));
    let lane = c.b.build_and(t, c.i64(31), "lane")?;
    let mma = Mma::declare(
        &c,
        module,
        entries,
        "llvm.nvvm.mma.m16n8k8.row.col.tf32",
        EMULATOR,
        warp_arg,
        lane,
    )?;
    let slots = (TM * TN * 4) as u32;
    let acc = c.b.build_alloca(f32t.array_type(slots), "acc")?;
    let zero = f32t.const_float(0.0);
    for s in 0..slots as u64 {
        c.b.build_store(c.gep(f32t.into(), acc, c.i64(s))?, zero)?;
    }
    let tiles_n = warp_tiles(&c, n)?;
    let per_batch = c.b.build_int_mul(warp_tiles(&c, m)?, tiles_n, "")?;
    let warp = c.b.build_right_shift(t, c.i64(5), false, "")?;
    let bi = c.b.build_int_unsigned_div(warp, per_batch, "b")?;
    let tile = c.b.build_int_unsigned_rem(warp, per_batch, "")?;
    let m0 = c.b.build_int_mul(
        c.b.build_int_unsigned_div(tile, tiles_n, "")?,
        c.i64(WARP_TILE),
        "m0",
    )?;
    let n0 = c.b.build_int_mul(
        c.b.build_int_unsigned_rem(tile, tiles_n, "")?,
        c.i64(WARP_TILE),
        "n0",
    )?;
    let g = c.b.build_right_shift(lane, c.i64(2), false, "g")?;
    let q = c.b.build_and(lane, c.i64(3), "q")?;
    // This batch element's matrices.
    let mk = c.b.build_int_mul(m, k, "")?;
    let kn = c.b.build_int_mul(k, n, "")?;
    let mn = c.b.build_int_mul(m, n, "")?;
    let a_b = c.gep(f32t.into(), pa, c.b.build_int_mul(bi, mk, "")?)?;
    let b_index =
        c.b.build_select(
            c.b.build_int_compare(IntPredicate::NE, shared_b, c.i64(0), "")?,
            c.i64(0),
            bi,
            "",
        )?
        .into_int_value();
    let b_b = c.gep(f32t.into(), pb, c.b.build_int_mul(b_index, kn, "")?)?;
    let c_b = c.gep(f32t.into(), pc, c.b.build_int_mul(bi, mn, "")?)?;
    let steps =
        c.b.build_int_unsigned_div(c.b.build_int_add(k, c.i64(7), "")?, c.i64(8), "")?;
    for_loop(&c, body, steps, |c, si| {
        let kq =
            c.b.build_int_add(c.b.build_int_mul(si, c.i64(8), "")?, q, "")?;
        let ks = [kq, c.b.build_int_add(kq, c.i64(4), "")?];
        // A: (hi, lo) registers per 16-row tile: [(g, kq), (g + 8, kq), (g, kq + 4), (g + 8, kq + 4)].
        let mut afr = Vec::new();
        for i in 0..TM as u64 {
            let mut v = Vec::new();
            for kk in &ks {
                for h in 0..2u64 {
                    let row = c.b.build_int_add(m0, c.i64(16 * i + 8 * h), "")?;
                    let row = c.b.build_int_add(row, g, "")?;
                    v.push(split(c, load_or_zero(c, a_b, row, m, *kk, k, k)?)?);
                }
            }
            afr.push((
                [v[0].0, v[1].0, v[2].0, v[3].0],
                [v[0].1, v[1].1, v[2].1, v[3].1],
            ));
        }
        // B: (hi, lo) registers per 8-column tile: [(kq, col), (kq + 4, col)], col = n0 + 8j + g.
        let mut bfr = Vec::new();
        for j in 0..TN as u64 {
            let col =
                c.b.build_int_add(c.b.build_int_add(n0, c.i64(8 * j), "")?, g, "")?;
            let b0 = split(c, load_or_zero(c, b_b, ks[0], k, col, n, n)?)?;
            let b1 = split(c, load_or_zero(c, b_b, ks[1], k, col, n, n)?)?;
            bfr.push(([b0.0, b1.0], [b0.1, b1.1]));
        }
        for (i, (ahi, alo)) in afr.iter().enumerate() {
            for (j, (bhi, blo)) in bfr.iter().enumerate() {
                let at = ((i * TN + j) * 4) as u64;
                let mut d = [zero; 4];
                for (e, slot) in d.iter_mut().enumerate() {
                    *slot = c.load_f32(acc, c.i64(at + e as u64))?;
                }
                // The small terms first.
                let d = mma.issue(c, alo, bhi, &d)?;
                let d = mma.issue(c, ahi, blo, &d)?;
                let d = mma.issue(c, ahi, bhi, &d)?;
                for (e, v) in d.iter().enumerate() {
                    c.b.build_store(c.gep(f32t.into(), acc, c.i64(at + e as u64))?, *v)?;
                }
            }
        }
        Ok(())
    })?;
    // c[row][col], row = m0 + 16i + 8(e / 2) + g, col = n0 + 8j + 2q + e % 2.
    let q2 = c.b.build_int_mul(q, c.i64(2), "")?;
    for i in 0..TM as u64 {
        for j in 0..TN as u64 {
            for e in 0..4u64 {
                let row = c.b.build_int_add(m0, c.i64(16 * i + 8 * (e / 2)), "")?;
                let row = c.b.build_int_add(row, g, "")?;
                let col = c.b.build_int_add(n0, c.i64(8 * j + e % 2), "")?;
                let col = c.b.build_int_add(col, q2, "")?;
                let inside = c.b.build_and(
                    c.b.build_int_compare(IntPredicate::ULT, row, m, "")?,
                    c.b.build_int_compare(IntPredicate::ULT, col, n, "")?,
                    "",
                )?;
                let store = ctx.append_basic_block(body, "store");
                let next = ctx.append_basic_block(body, "next");
                c.b.build_conditional_branch(inside, store, next)?;
                c.b.position_at_end(store);
                let v = c.load_f32(acc, c.i64((i * TN as u64 + j) * 4 + e))?;
                let idx = c.b.build_int_add(c.b.build_int_mul(row, n, "")?, col, "")?;
                c.b.build_store(c.gep(f32t.into(), c_b, idx)?, v)?;
                c.b.build_unconditional_branch(next)?;
                c.b.position_at_end(next);
            }
        }
    }
    c.b.build_return(None)?;
    // The warps with a tile: batch * ceil(M / 32) * ceil(N / 32).
    warp_tile_entry(&c, module, body, ENTRY, 8, entries, |c, p| {
        let t = c.b.build_int_mul(
            warp_tiles(c, p[4].into_int_value())?,
            warp_tiles(c, p[5].into_int_value())?,
            "",
        )?;
        Ok(c.b.build_int_mul(t, p[3].into_int_value(), "")?)
    })
}

/// The PTX of [`ENTRY`] for `target`.
pub fn emit_ptx(target: GpuTarget) -> Result<String, Error> {
    compile_ptx(
        &target_machine(target)?,
        "qc_sgemm_mma",
        "default<O3>",
        |c, m| build(c, m, Entries::Ptx),
    )
}

//! FP8 warpgroup GEMM for Hopper (sm_90a): the product of [`crate::mma8`] (`y = dequant(quant(x))
//! W^T`, activations quantized to FP8 per tensor in the kernel, FP8 weights or 4-bit weights
//! decoded to e4m3, the same [`Mma8`] descriptions, blob layout and results) with
//! `wgmma.mma_async` instead of `mma.sync`.
//!
//! # Kernel [`ENTRY`]`(codes, scales, tables, x, y, k, n, m, post, sa)`
//! - One warpgroup (a block of [`BLOCK`] = 128 threads) computes the [`TILE`] x [`TILE`] (64 x 64)
//!   tile `(b / ceil(N / 64), b % ceil(N / 64))` of `y`, `b` the block index: launch
//!   `ceil(M / 64) * ceil(N / 64)` blocks. Rows past M read zeros and are not written; weight rows
//!   past N are zeros.
//! - Each k-step of 32: the 128 threads write the weight tile (64 rows x 32 FP8 bytes, decoded
//!   from 4-bit codes where needed) to shared memory in the canonical K-major layout without
//!   swizzling (8-row x 16-byte core matrices: row `r` of the tile at byte
//!   `(r / 8) * 256 + (kk / 16) * 128 + (r % 8) * 16 + kk % 16`, i.e. a stride of 256 bytes between
//!   core matrices along N (SBO) and 128 along K (LBO)), `bar.sync`; warp `w` quantizes its 16
//!   activation rows (`m0 + 16w ..`) into the A registers (the layout of `mma.m16n8k32`'s A per
//!   warp); then `wgmma.mma_async.sync.aligned.m64n64k32.f32.{a}.{b}` with A from registers, B
//!   through its shared-memory descriptor, and `scale-d` false (a fresh accumulator), committed and
//!   waited for; its 32 results per thread (row `16w + g + 8 ((i / 2) % 2)`, column
//!   `8 (i / 4) + 2q + i % 2` for result `i`, lane `(g, q) = (lane / 4, lane % 4)`) are added to
//!   the f32 sums, times the group scale for grouped 4-bit weights (groups of 16: two MMAs a step,
//!   one per K half with A's registers of the other half zero, as in `mma8`); `bar.sync` before the
//!   next step.
//! - The end as for `mma8`: `y = sum * sa * (weight scale) * post`.
//!
//! The tests run the body on the host: 128 OS threads per block, shared memory a host buffer
//! (descriptors then hold offsets into it), `bar.sync` and `wgmma` calls of emulators
//! ([`Entries::Host`]).

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::values::{BasicMetadataValueEnum, BasicValue, FunctionValue, IntValue};
use inkwell::{AddressSpace, IntPredicate};

use crate::gemv4::{for_loop, scale_at, Cx};
use crate::mma4::{block_entry, block_tile, load_x4, umin, Entries, ProductBody};
use crate::mma8::{fp8_bits, quantize_act4, Mma8, Out, Weights8};
use crate::{compile_ptx, target_machine_with, Error, GpuTarget};

/// The kernel's entry.
pub const ENTRY: &str = "qc_wgmma8";
/// Threads per block: one warpgroup.
pub const BLOCK: u32 = 128;
/// Rows and columns of `y` per block.
pub const TILE: u64 = 64;
/// Bytes of shared memory (the weight tile of one k-step).
pub const SMEM: u64 = TILE * 32;
/// Host emulator of `bar.sync 0`: `void qc_wgmma8_bar(void *block)`.
pub const BAR_EMULATOR: &str = "qc_wgmma8_bar";
/// Host emulator of the warpgroup MMA: `void qc_wgmma8_mma(void *block, int64_t thread, uint32_t
/// a0, a1, a2, a3, uint64_t b_desc, float *d)`, `d` this thread's 32 results.
pub const MMA_EMULATOR: &str = "qc_wgmma8_mma";

/// The descriptor's LBO and SBO (bytes) of the module documentation's layout.
const LBO: u64 = 128;
const SBO: u64 = 256;

/// The shared-memory matrix descriptor of a tile at shared address `addr` (no swizzling).
fn descriptor<'c>(c: &Cx<'c>, addr: IntValue<'c>) -> Result<IntValue<'c>, Error> {
    let start = c.b.build_and(
        c.b.build_right_shift(addr, c.i64(4), false, "")?,
        c.i64(0x3fff),
        "",
    )?;
    Ok(c.b.build_or(start, c.i64(((LBO >> 4) << 16) | ((SBO >> 4) << 32)), "")?)
}

fn call0<'c>(
    c: &Cx<'c>,
    f: FunctionValue<'c>,
    args: &[BasicMetadataValueEnum<'c>],
) -> Result<(), Error> {
    c.b.build_call(f, args, "")?;
    Ok(())
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
    let (i64t, i32t, i8t, f32t, void) = (
        ctx.i64_type(),
        ctx.i32_type(),
        ctx.i8_type(),
        ctx.f32_type(),
        ctx.void_type(),
    );
    if spec.is_int8() {
        return Err(Error::Codegen("the warpgroup GEMM is FP8 only".into()));
    }
    let host = entries == Entries::Host;

    // body(codes, scales, tables, x, y, k, n, m, post, sa, emu, smem, block, t, smem_shared).
    let (pb, bt) = ProductBody::add_block(ctx, module, "qc_wgmma8_body");
    let body = pb.f;
    let (codes, scales, tables, x, y) = (pb.codes, pb.scales, pb.tables, pb.x, pb.y);
    let (k, n, m, post) = (pb.k, pb.n, pb.m, pb.post);
    let sa = pb.sa.expect("the body takes sa");
    let (emu, smem, block, t, smem_shared) = (bt.emu, bt.smem, bt.block, bt.t, bt.smem_shared);
    c.b.position_at_end(ctx.append_basic_block(body, "entry"));

    // Barrier, fence / commit / wait, and the MMA: intrinsics and inline PTX, or emulator calls.
    let bar_fn = if host {
        module.add_function(BAR_EMULATOR, void.fn_type(&[ptr.into()], false), None)
    } else {
        Intrinsic::find("llvm.nvvm.barrier.cta.sync.aligned.all")
            .and_then(|i| i.get_declaration(module, &[]))
            .ok_or(Error::MissingIntrinsic(
                "llvm.nvvm.barrier.cta.sync.aligned.all",
            ))?
    };
    let bar = |c: &Cx<'c>| -> Result<(), Error> {
        if host {
            call0(c, bar_fn, &[emu.into()])
        } else {
            call0(c, bar_fn, &[i32t.const_zero().into()])
        }
    };
    let wg = |name: &'static str| -> Result<FunctionValue<'c>, Error> {
        Intrinsic::find(name)
            .and_then(|i| i.get_declaration(module, &[]))
            .ok_or(Error::MissingIntrinsic(name))
    };
    let (fence, commit, wait) = if host {
        (None, None, None)
    } else {
        (
            Some(wg("llvm.nvvm.wgmma.fence.sync.aligned")?),
            Some(wg("llvm.nvvm.wgmma.commit_group.sync.aligned")?),
            Some(wg("llvm.nvvm.wgmma.wait_group.sync.aligned")?),
        )
    };
    let d_ty = ctx.struct_type(&[f32t.into(); 32], false);
    let mma_fn_ty = d_ty.fn_type(
        &[
            i32t.into(),
            i32t.into(),
            i32t.into(),
            i32t.into(),
            i64t.into(),
            i32t.into(),
        ],
        false,
    );
    let emu_fn = host.then(|| {
        module.add_function(
            MMA_EMULATOR,
            void.fn_type(
                &[
                    ptr.into(),
                    i64t.into(),
                    i32t.into(),
                    i32t.into(),
                    i32t.into(),
                    i32t.into(),
                    i64t.into(),
                    ptr.into(),
                ],
                false,
            ),
            None,
        )
    });
    let d_out = c.b.build_alloca(f32t.array_type(32), "d")?;
    let acc = c.b.build_alloca(f32t.array_type(32), "acc")?;
    let zero = f32t.const_float(0.0);
    for s in 0..32 {
        c.b.build_store(c.gep(f32t.into(), acc, c.i64(s))?, zero)?;
    }

    let (m0, n0) = block_tile(&c, block, n, TILE)?;
    let w = c.b.build_right_shift(t, c.i64(5), false, "w")?;
    let lane = c.b.build_and(t, c.i64(31), "")?;
    let g = c.b.build_right_shift(lane, c.i64(2), false, "g")?;
    let q = c.b.build_and(lane, c.i64(3), "q")?;
    let n_last = c.b.build_int_sub(n, c.i64(1), "")?;
    let q4 = c.b.build_int_mul(q, c.i64(4), "")?;
    let q2 = c.b.build_int_mul(q, c.i64(2), "")?;
    // This thread's share of the weight tile: row t / 2, K half t % 2.
    let wr_local = c.b.build_right_shift(t, c.i64(1), false, "")?;
    let kh = c.b.build_and(t, c.i64(1), "")?;
    let wr = c.b.build_int_add(n0, wr_local, "")?;
    let wr_in = c.b.build_int_compare(IntPredicate::ULT, wr, n, "")?;
    let wr_c = umin(&c, wr, n_last)?;
    let slot = c.b.build_int_add(
        c.b.build_int_add(
            c.b.build_int_mul(
                c.b.build_right_shift(wr_local, c.i64(3), false, "")?,
                c.i64(SBO),
                "",
            )?,
            c.b.build_int_mul(kh, c.i64(LBO), "")?,
            "",
        )?,
        c.b.build_int_mul(c.b.build_and(wr_local, c.i64(7), "")?, c.i64(16), "")?,
        "slot",
    )?;
    let desc = descriptor(&c, smem_shared)?;
    let nib = match &spec.weights {
        Weights8::Nibble(s) => Some(s),
        Weights8::Fp8 { .. } => None,
        Weights8::Int8 { .. } => {
            return Err(Error::Codegen("the warpgroup GEMM is FP8 only".into()))
        }
    };
    let groups_per_row = nib
        .and_then(|s| s.group)
        .map(|gs| c.b.build_int_unsigned_div(k, c.i64(gs as u64), ""))
        .transpose()?;
    let half_k = c.b.build_int_unsigned_div(k, c.i64(2), "")?;
    let steps = c.b.build_int_unsigned_div(k, c.i64(32), "steps")?;
    // Groups of 16 (NVFP4): each k-step of 32 is two MMAs, one per group, scaled apart.
    let halves: u64 = if nib.and_then(|s| s.group) == Some(16) {
        2
    } else {
        1
    };
    let v16 = i8t.vec_type(16);
    for_loop(&c, body, steps, |c, si| {
        let k0 = c.b.build_int_mul(si, c.i64(32), "k0")?;
        let col =
            c.b.build_int_add(k0, c.b.build_int_mul(kh, c.i64(16), "")?, "")?;
        // 1. The weight tile into shared memory: 16 FP8 bytes per thread.
        let bytes16 = match nib {
            None => {
                let off =
                    c.b.build_int_add(c.b.build_int_mul(wr_c, k, "")?, col, "")?;
                let ld = c.b.build_load(v16, c.gep(i8t.into(), codes, off)?, "")?;
                ld.as_instruction_value()
                    .unwrap()
                    .set_alignment(16)
                    .map_err(|e| Error::Codegen(e.to_string()))?;
                ld.into_vector_value()
            }
            Some(s) => {
                let off = c.b.build_int_add(
                    c.b.build_int_mul(wr_c, half_k, "")?,
                    c.b.build_right_shift(col, c.i64(1), false, "")?,
                    "",
                )?;
                let ld = c.b.build_load(i64t, c.gep(i8t.into(), codes, off)?, "")?;
                ld.as_instruction_value()
                    .unwrap()
                    .set_alignment(8)
                    .map_err(|e| Error::Codegen(e.to_string()))?;
                let word = ld.into_int_value();
                let mut vec = v16.get_undef();
                for e in 0..16u64 {
                    let sh = c.b.build_right_shift(word, c.i64(4 * e), false, "")?;
                    let code =
                        c.b.build_int_truncate(c.b.build_and(sh, c.i64(15), "")?, i32t, "")?;
                    let val = if s.signed_int {
                        let x8 = c.b.build_xor(code, i32t.const_int(8, false), "")?;
                        let sv = c.b.build_int_sub(x8, i32t.const_int(8, false), "")?;
                        c.b.build_signed_int_to_float(sv, f32t, "")?
                    } else {
                        c.load_f32(tables, c.b.build_int_z_extend(code, i64t, "")?)?
                    };
                    let byte = c.b.build_int_truncate(fp8_bits(c, val, 3, -6)?, i8t, "")?;
                    vec =
                        c.b.build_insert_element(vec, byte, i32t.const_int(e, false), "")?;
                }
                vec
            }
        };
        let bytes16 =
            c.b.build_select(wr_in, bytes16, v16.const_zero(), "")?
                .into_vector_value();
        let st = c.b.build_store(c.gep(i8t.into(), smem, slot)?, bytes16)?;
        st.set_alignment(16)
            .map_err(|e| Error::Codegen(e.to_string()))?;
        bar(c)?;
        // 2. This warp's 16 activation rows, quantized, as the A registers.
        let mut regs = [i32t.const_zero(); 4];
        for h in 0..2u64 {
            let row =
                c.b.build_int_add(m0, c.b.build_int_mul(w, c.i64(16), "")?, "")?;
            let row =
                c.b.build_int_add(c.b.build_int_add(row, g, "")?, c.i64(8 * h), "")?;
            for half in 0..2u64 {
                let kc =
                    c.b.build_int_add(c.b.build_int_add(k0, c.i64(16 * half), "")?, q4, "")?;
                let v = load_x4(c, x, row, m, k, kc)?;
                regs[(h + 2 * half) as usize] = quantize_act4(c, module, &spec.act, v, sa)?;
            }
        }
        let all_regs = regs;
        for h in 0..halves as usize {
            // 3. The warpgroup MMA on a fresh accumulator (for groups of 16 one per K half, A's
            // registers of the other half zero: registers 2 - 2h and 3 - 2h).
            let mut regs = all_regs;
            if halves == 2 {
                regs[2 - 2 * h] = i32t.const_zero();
                regs[3 - 2 * h] = i32t.const_zero();
            }
            let mut d = Vec::with_capacity(32);
            if let Some(emu_fn) = emu_fn {
                let mut args: Vec<BasicMetadataValueEnum> = vec![emu.into(), t.into()];
                args.extend(regs.iter().map(|r| BasicMetadataValueEnum::from(*r)));
                args.push(desc.into());
                args.push(d_out.into());
                call0(c, emu_fn, &args)?;
                for i in 0..32 {
                    d.push(c.load_f32(d_out, c.i64(i))?);
                }
            } else {
                call0(c, fence.unwrap(), &[])?;
                let (at, bt) = (
                    if spec.act_e5m2() { "e5m2" } else { "e4m3" },
                    if spec.weight_e5m2() { "e5m2" } else { "e4m3" },
                );
                let outs: Vec<String> = (0..32).map(|i| format!("${i}")).collect();
                let text = format!(
                    "{{\n.reg .pred p;\nsetp.ne.b32 p, $37, 0;\n\
                     wgmma.mma_async.sync.aligned.m64n64k32.f32.{at}.{bt} {{{}}}, {{$32, $33, $34, $35}}, $36, p, 1, 1;\n}}",
                    outs.join(", ")
                );
                let mut cons: Vec<&str> = vec!["=f"; 32];
                cons.extend(["r", "r", "r", "r", "l", "r"]);
                let asm = ctx.create_inline_asm(
                    mma_fn_ty,
                    text,
                    cons.join(","),
                    true,
                    false,
                    None,
                    false,
                );
                let mut args: Vec<BasicMetadataValueEnum> = regs
                    .iter()
                    .map(|r| BasicMetadataValueEnum::from(*r))
                    .collect();
                args.push(desc.into());
                args.push(i32t.const_zero().into());
                let r =
                    c.b.build_indirect_call(mma_fn_ty, asm, &args, "")?
                        .try_as_basic_value()
                        .basic()
                        .ok_or(Error::Codegen("wgmma returns nothing".into()))?
                        .into_struct_value();
                call0(c, commit.unwrap(), &[])?;
                call0(c, wait.unwrap(), &[i64t.const_zero().into()])?;
                for i in 0..32 {
                    d.push(c.b.build_extract_value(r, i, "")?.into_float_value());
                }
            }
            // 4. Into the f32 sums (times the group scale of the column for grouped weights).
            let mut gs = Vec::new();
            if let (Some(s), Some(gpr)) = (nib, groups_per_row) {
                let gi_in_row = c.b.build_int_add(
                    c.b.build_int_unsigned_div(k0, c.i64(s.group.unwrap() as u64), "")?,
                    c.i64(h as u64),
                    "",
                )?;
                for j in 0..8u64 {
                    for e in 0..2u64 {
                        let colw = c.b.build_int_add(
                            c.b.build_int_add(n0, c.i64(8 * j + e), "")?,
                            q2,
                            "",
                        )?;
                        let colw = umin(c, colw, n_last)?;
                        let gi =
                            c.b.build_int_add(c.b.build_int_mul(colw, gpr, "")?, gi_in_row, "")?;
                        gs.push(scale_at(c, s, scales, tables, gi)?);
                    }
                }
            }
            for (i, dv) in d.iter().enumerate() {
                let p = c.gep(f32t.into(), acc, c.i64(i as u64))?;
                let cur = c.b.build_load(f32t, p, "")?.into_float_value();
                let r = if gs.is_empty() {
                    c.b.build_float_add(cur, *dv, "")?
                } else {
                    c.fma(gs[(i / 4) * 2 + i % 2], *dv, cur)?
                };
                c.b.build_store(p, r)?;
            }
        }
        bar(c)?;
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
    for i in 0..32u64 {
        let row =
            c.b.build_int_add(m0, c.b.build_int_mul(w, c.i64(16), "")?, "")?;
        let row =
            c.b.build_int_add(c.b.build_int_add(row, g, "")?, c.i64(8 * ((i / 2) % 2)), "")?;
        let col = c.b.build_int_add(
            c.b.build_int_add(n0, c.i64(8 * (i / 4) + i % 2), "")?,
            q2,
            "",
        )?;
        out.store(&c, body, row, col, c.load_f32(acc, c.i64(i))?)?;
    }
    c.b.build_return(None)?;

    // The entry. Every thread of a block runs the body (the barriers and the MMAs need all of
    // them); the grid has one block per tile.
    block_entry(
        &c,
        module,
        body,
        ENTRY,
        10,
        (SMEM, "qc_wgmma8_smem"),
        entries,
    )
}

/// The PTX of [`ENTRY`] for `spec` (sm_90a only: `wgmma` is Hopper's).
pub fn emit_ptx(spec: &Mma8) -> Result<String, Error> {
    compile_ptx(
        &target_machine_with(GpuTarget::Sm90a, "+ptx84")?,
        "qc_wgmma8",
        "default<O3>",
        |c, m| build(c, m, spec, Entries::Ptx),
    )
}

//! W4A4 FP4 GEMM for Blackwell data-center GPUs (sm_100a) on the fifth-generation tensor cores:
//! `tcgen05.mma` with the block-scaled kinds, accumulators and scale factors in tensor memory. It
//! computes the products of [`crate::fp4`] (NVFP4 x NVFP4 with `kind::mxf4nvf4.block_scale.
//! scale_vec::4X`, ue4m3 scales per 16 elements; MXFP4 x MXFP4 with `kind::mxf4.block_scale`, ue8m0
//! scales per 32), quantizing the f32 activations in the kernel with [`crate::fquant`]'s block
//! quantizer (bit for bit the interpreter's) and reading the weights' codes and scale bytes from
//! their blob as they are.
//!
//! # Kernel [`ENTRY`]`(codes, scales, tables, x, y, k, n, m, post, tamax)`
//! - A block of [`BLOCK`] = 128 threads (a warpgroup) computes the [`TILE`] x [`TILE`] (128 x 128)
//!   tile `(b / ceil(N / 128), b % ceil(N / 128))` of `y`, `b` the block index: launch
//!   `ceil(M / 128) * ceil(N / 128)` blocks. `tables` is not read (the parameter list is the other
//!   product kernels'). K must be a positive multiple of 64 ([`crate::fp4::K_STEP`]).
//! - Setup: warp 0 allocates [`TMEM_COLUMNS`] columns of tensor memory (`tcgen05.alloc`, the address
//!   written to shared memory), thread 0 initializes an mbarrier (count 1); fences and `bar.sync`.
//! - Each k-step of 64 elements: thread `t` quantizes activation row `m0 + t` (zeros past M) block by
//!   block and writes its 32 code bytes to the A tile in shared memory, and copies weight row
//!   `n0 + t`'s 32 code bytes (zeros past N) to the B tile; both tiles are K-major without swizzling
//!   (core matrices of 8 rows x 16 bytes: row `r`, byte `kb` at `(r / 8) * SBO + (kb / 16) * LBO +
//!   (r % 8) * 16 + kb % 16`, LBO = 128, SBO = 256), each byte two e2m1 codes, the lower K in the low
//!   nibble (the blob's order). Each row's scales make one 32-bit word, byte `j` the scale of the
//!   row's `j`-th block of the step (4 blocks of 16, or 2 of 32 in the low half). The scale factors
//!   go to tensor memory as the MMA wants them, "duplicated to all 32 lane partitions": the word of
//!   A's row `r` in column [`SFA_COLUMN`]` + r / 32` of lane `r % 32` of each lane quarter (B's
//!   rows from [`SFB_COLUMN`] likewise). So the threads put their words in shared memory,
//!   `bar.sync`, and each warp writes the whole table into its own quarter (`tcgen05.st.32x32b.x4`:
//!   thread `32 w + l` the words of rows `l`, `32 + l`, `64 + l`, `96 + l`). This is the layout of
//!   CUTLASS's `SfKMajorAtom` and of DeepGEMM (the ISA draws it only in figures). Then
//!   `fence.proxy.async.shared::cta` (the MMA reads shared memory through the async proxy),
//!   `tcgen05.wait::st`, `tcgen05.fence::before_thread_sync`, `bar.sync`,
//!   `tcgen05.fence::after_thread_sync`; thread 0 issues the MMA (M = N = 128, accumulating from the
//!   second step on) and `tcgen05.commit`s it to the mbarrier; every thread waits for the mbarrier's
//!   phase `step % 2` before the tiles and scales are overwritten.
//! - The end: the accumulator is D in tensor memory, row `r` in lane `r`, column `j` in column `j`;
//!   warp `w` loads its 32 lanes (`tcgen05.ld.32x32b.x32`, four times 32 columns), and thread `t`
//!   writes `y[m0 + t][n0 + j] = d * g * post` for the rows and columns inside `y`: `g` the NVFP4
//!   activations' global scale `tamax / (6 * 448)` (1 for a zero `tamax`, 1 for MXFP4), `post` the
//!   weights' tensor scale. Warp 0 frees the tensor memory.
//!
//! The tests run the body on the host: 128 OS threads per block, shared memory a host buffer (the
//! descriptors then hold offsets into it), tensor memory and the tensor-core operations as calls of
//! emulators written from the PTX ISA's description ([`Entries::Host`]).

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, BasicValue, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

use crate::fp4::{Fp4, Fp4Kind};
use crate::fquant::{e2m1_code, quantize_block};
use crate::gemv4::{for_loop, Cx, Entries};
use crate::mma4::{load_x4, umin, ProductBody};
use crate::{
    compile_ptx, special_register, target_machine_with, Error, GpuTarget, PTX_KERNEL_CALL_CONV,
};

/// The kernel's entry.
pub const ENTRY: &str = "qc_tcgen05_fp4";
/// Threads per block: one warpgroup.
pub const BLOCK: u32 = 128;
/// Rows and columns of `y` per block (the MMA's M and N).
pub const TILE: u64 = 128;
/// The fewest rows (M) for which the compiler picks this kernel; fewer rows run the 4-bit GEMV or
/// `mma4` on fake-quantized activations. Half a tile, as for `wgmma8`; not yet measured.
pub const MIN_ROWS: u64 = 64;
/// Bytes of one operand tile per k-step: 128 rows of 64 e2m1 codes.
const TILE_BYTES: u64 = TILE * 32;
/// Where the scale words are exchanged between the warps (A's 128, then B's 128).
const SF_X_AT: u64 = 2 * TILE_BYTES;
/// Where the mbarrier (8 bytes) and the tensor-memory address (4 bytes) are in shared memory.
const MBAR_AT: u64 = SF_X_AT + 2 * 4 * TILE;
const TMEM_SLOT_AT: u64 = MBAR_AT + 8;
/// Bytes of shared memory: the A and B tiles, the scale words, the mbarrier and the tensor-memory
/// address.
pub const SMEM: u64 = TMEM_SLOT_AT + 8;
/// Tensor-memory columns allocated (a power of two of at least 32): the accumulator's 128, then
/// the scale factors.
pub const TMEM_COLUMNS: u32 = 256;
/// The first of the four tensor-memory columns of A's scale factors.
pub const SFA_COLUMN: u32 = 128;
/// The first of the four tensor-memory columns of B's scale factors.
pub const SFB_COLUMN: u32 = 132;
/// The descriptors' LBO and SBO (bytes) of the module documentation's layout.
pub const LBO: u64 = 128;
/// See [`LBO`].
pub const SBO: u64 = 256;

/// Host emulator of `bar.sync 0` (and of waiting on the mbarrier): `void (void *block)`.
pub const BAR_EMULATOR: &str = "qc_tc_bar";
/// Host emulator of `tcgen05.alloc`: `void (void *block, uint32_t *slot, uint32_t columns)`.
pub const ALLOC_EMULATOR: &str = "qc_tc_alloc";
/// Host emulator of `tcgen05.st.32x32b.x4`: `void (void *block, int64_t thread, uint32_t taddr,
/// uint32_t v0, uint32_t v1, uint32_t v2, uint32_t v3)`.
pub const ST_EMULATOR: &str = "qc_tc_st";
/// Host emulator of `tcgen05.ld.32x32b.x32`: `void (void *block, int64_t thread, uint32_t taddr,
/// float *out32)`.
pub const LD_EMULATOR: &str = "qc_tc_ld";
/// Host emulator of the block-scaled `tcgen05.mma` (issued by one thread, complete on return):
/// `void (void *block, uint32_t d_taddr, uint64_t a_desc, uint64_t b_desc, uint32_t idesc,
/// uint32_t enable_input_d, uint32_t sfa_taddr, uint32_t sfb_taddr)`.
pub const MMA_EMULATOR: &str = "qc_tc_mma";

/// The instruction descriptor of the MMA (PTX ISA, "Instruction descriptor format for
/// .kind::mxf8f6f4, .kind::mxf4 and .kind::mxf4nvf4"): dense; B's and A's scale-factor IDs 0
/// (bits 4-5, 29-30); A and B e2m1 (bits 7-9 and 10-12: 1 for the mxf4 kinds); no negation; both
/// K-major (bits 15, 16: 0); N / 8 (bits 17-22); the scale type (bit 23: 0 ue4m3, 1 ue8m0);
/// M / 16 (bits 24-28).
pub fn instruction_descriptor(kind: Fp4Kind) -> u32 {
    let (m, n) = (TILE as u32, TILE as u32);
    let e2m1 = 1u32;
    let scale_type = match kind {
        Fp4Kind::Nvfp4 => 0,
        Fp4Kind::Mxfp4 => 1,
    };
    (e2m1 << 7) | (e2m1 << 10) | ((n >> 3) << 17) | (scale_type << 23) | ((m >> 4) << 24)
}

/// The shared-memory matrix descriptor (Blackwell format) of a tile at shared address `addr`:
/// start address `addr >> 4` (bits 0-13), LBO >> 4 (16-29), SBO >> 4 (32-45), the fixed version
/// bits 46-48 = 0b001, base offset 0, no swizzling (bits 61-63 = 0).
fn descriptor<'c>(c: &Cx<'c>, addr: IntValue<'c>) -> Result<IntValue<'c>, Error> {
    let start = c.b.build_and(
        c.b.build_right_shift(addr, c.i64(4), false, "")?,
        c.i64(0x3fff),
        "",
    )?;
    Ok(c.b.build_or(
        start,
        c.i64(((LBO >> 4) << 16) | ((SBO >> 4) << 32) | (1 << 46)),
        "",
    )?)
}

/// The PTX intrinsic `name` (not overloaded).
fn intrinsic<'c>(module: &Module<'c>, name: &'static str) -> Result<FunctionValue<'c>, Error> {
    Intrinsic::find(name)
        .and_then(|i| i.get_declaration(module, &[]))
        .ok_or(Error::MissingIntrinsic(name))
}

fn call<'c>(
    c: &Cx<'c>,
    f: FunctionValue<'c>,
    args: &[BasicMetadataValueEnum<'c>],
) -> Result<Option<inkwell::values::BasicValueEnum<'c>>, Error> {
    Ok(c.b.build_call(f, args, "")?.try_as_basic_value().basic())
}

/// The tensor-core and synchronization operations of the body: NVVM intrinsics, or the host
/// emulators.
enum Ops<'c> {
    Ptx {
        bar: FunctionValue<'c>,
        alloc: FunctionValue<'c>,
        dealloc: FunctionValue<'c>,
        relinquish: FunctionValue<'c>,
        st: FunctionValue<'c>,
        ld: FunctionValue<'c>,
        wait_st: FunctionValue<'c>,
        wait_ld: FunctionValue<'c>,
        before: FunctionValue<'c>,
        after: FunctionValue<'c>,
        proxy: FunctionValue<'c>,
        mma: FunctionValue<'c>,
        commit: FunctionValue<'c>,
        mbar_init: FunctionValue<'c>,
        mbar_wait: FunctionValue<'c>,
    },
    Host {
        bar: FunctionValue<'c>,
        alloc: FunctionValue<'c>,
        st: FunctionValue<'c>,
        ld: FunctionValue<'c>,
        mma: FunctionValue<'c>,
    },
}

impl<'c> Ops<'c> {
    fn declare(
        ctx: &'c Context,
        module: &Module<'c>,
        spec: &Fp4,
        host: bool,
    ) -> Result<Ops<'c>, Error> {
        if host {
            let ptr = ctx.ptr_type(AddressSpace::default());
            let (i32t, i64t, void) = (ctx.i32_type(), ctx.i64_type(), ctx.void_type());
            let add = |name: &str, params: &[BasicMetadataTypeEnum<'c>]| {
                module.add_function(name, void.fn_type(params, false), None)
            };
            return Ok(Ops::Host {
                bar: add(BAR_EMULATOR, &[ptr.into()]),
                alloc: add(ALLOC_EMULATOR, &[ptr.into(), ptr.into(), i32t.into()]),
                st: add(
                    ST_EMULATOR,
                    &[
                        ptr.into(),
                        i64t.into(),
                        i32t.into(),
                        i32t.into(),
                        i32t.into(),
                        i32t.into(),
                        i32t.into(),
                    ],
                ),
                ld: add(
                    LD_EMULATOR,
                    &[ptr.into(), i64t.into(), i32t.into(), ptr.into()],
                ),
                mma: add(
                    MMA_EMULATOR,
                    &[
                        ptr.into(),
                        i32t.into(),
                        i64t.into(),
                        i64t.into(),
                        i32t.into(),
                        i32t.into(),
                        i32t.into(),
                        i32t.into(),
                    ],
                ),
            });
        }
        let mma = match spec.kind {
            Fp4Kind::Nvfp4 => "llvm.nvvm.tcgen05.mma.shared.mxf4nvf4.block_scale.block16",
            Fp4Kind::Mxfp4 => "llvm.nvvm.tcgen05.mma.shared.mxf4.block_scale.block32",
        };
        Ok(Ops::Ptx {
            bar: intrinsic(module, "llvm.nvvm.barrier.cta.sync.aligned.all")?,
            alloc: intrinsic(module, "llvm.nvvm.tcgen05.alloc.shared.cg1")?,
            dealloc: intrinsic(module, "llvm.nvvm.tcgen05.dealloc.cg1")?,
            relinquish: intrinsic(module, "llvm.nvvm.tcgen05.relinq.alloc.permit.cg1")?,
            st: intrinsic(module, "llvm.nvvm.tcgen05.st.32x32b.x4")?,
            ld: intrinsic(module, "llvm.nvvm.tcgen05.ld.32x32b.x32")?,
            wait_st: intrinsic(module, "llvm.nvvm.tcgen05.wait.st")?,
            wait_ld: intrinsic(module, "llvm.nvvm.tcgen05.wait.ld")?,
            before: intrinsic(module, "llvm.nvvm.tcgen05.fence.before.thread.sync")?,
            after: intrinsic(module, "llvm.nvvm.tcgen05.fence.after.thread.sync")?,
            proxy: intrinsic(module, "llvm.nvvm.fence.proxy.async.shared_cta")?,
            mma: intrinsic(module, mma)?,
            commit: intrinsic(module, "llvm.nvvm.tcgen05.commit.shared.cg1")?,
            mbar_init: intrinsic(module, "llvm.nvvm.mbarrier.init.shared")?,
            mbar_wait: intrinsic(
                module,
                "llvm.nvvm.mbarrier.try.wait.parity.scope.cta.space.cta",
            )?,
        })
    }
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
    let smem_ptr = ctx.ptr_type(AddressSpace::from(3u16));
    let tmem_ptr = ctx.ptr_type(AddressSpace::from(6u16));
    let (i64t, i32t, i1t, f32t, void) = (
        ctx.i64_type(),
        ctx.i32_type(),
        ctx.bool_type(),
        ctx.f32_type(),
        ctx.void_type(),
    );
    let host = entries == Entries::Host;
    let ops = Ops::declare(ctx, module, spec, host)?;

    // body(codes, scales, tables, x, y, k, n, m, post, tamax, emu, smem, block, t, smem_shared):
    // `smem` the shared memory as a generic pointer, `smem_shared` its shared-window address (what
    // descriptors hold; 0 on the host, where they hold offsets).
    let pb = ProductBody::add(
        ctx,
        module,
        "qc_tcgen05_fp4_body",
        true,
        &[
            ptr.into(),
            ptr.into(),
            i64t.into(),
            i64t.into(),
            i64t.into(),
        ],
    );
    let body = pb.f;
    let (codes, scales, x, y) = (pb.codes, pb.scales, pb.x, pb.y);
    let (k, n, m, post) = (pb.k, pb.n, pb.m, pb.post);
    let tamax = pb.sa.expect("the body takes tamax");
    let tp = |i: usize| pb.tail[i].into_pointer_value();
    let ti = |i: usize| pb.tail[i].into_int_value();
    let (emu, smem, block, t, smem_shared) = (tp(0), tp(1), ti(2), ti(3), ti(4));
    c.b.position_at_end(ctx.append_basic_block(body, "entry"));

    let i32c = |v: u64| i32t.const_int(v, false);
    let w = c.b.build_right_shift(t, c.i64(5), false, "w")?;
    let w32 = c.b.build_int_truncate(w, i32t, "")?;
    let is_warp0 = c.b.build_int_compare(IntPredicate::EQ, w, c.i64(0), "")?;
    let is_t0 = c.b.build_int_compare(IntPredicate::EQ, t, c.i64(0), "")?;
    let slot_generic = c.gep(ctx.i8_type().into(), smem, c.i64(TMEM_SLOT_AT))?;
    // The shared-window pointers of the mbarrier and of the address slot (PTX only).
    let shared_at = |off: u64| -> Result<PointerValue<'c>, Error> {
        let a = c.b.build_int_add(smem_shared, c.i64(off), "")?;
        Ok(c.b.build_int_to_ptr(c.b.build_int_truncate(a, i32t, "")?, smem_ptr, "")?)
    };
    let tmem_at = |taddr: IntValue<'c>| -> Result<PointerValue<'c>, Error> {
        Ok(c.b.build_int_to_ptr(taddr, tmem_ptr, "")?)
    };
    // `if cond { then(c) }`.
    let when = |c: &Cx<'c>,
                cond: IntValue<'c>,
                then: &dyn Fn(&Cx<'c>) -> Result<(), Error>|
     -> Result<(), Error> {
        let yes = ctx.append_basic_block(body, "then");
        let next = ctx.append_basic_block(body, "next");
        c.b.build_conditional_branch(cond, yes, next)?;
        c.b.position_at_end(yes);
        then(c)?;
        c.b.build_unconditional_branch(next)?;
        c.b.position_at_end(next);
        Ok(())
    };
    // bar.sync between tensor-memory accesses: fence, barrier, fence.
    let sync = |c: &Cx<'c>| -> Result<(), Error> {
        match &ops {
            Ops::Ptx {
                bar, before, after, ..
            } => {
                call(c, *before, &[])?;
                call(c, *bar, &[i32c(0).into()])?;
                call(c, *after, &[])?;
            }
            Ops::Host { bar, .. } => {
                call(c, *bar, &[emu.into()])?;
            }
        }
        Ok(())
    };

    // 1. Tensor memory (warp 0) and the mbarrier (thread 0).
    when(&c, is_warp0, &|c| {
        match &ops {
            Ops::Ptx { alloc, .. } => {
                call(
                    c,
                    *alloc,
                    &[
                        shared_at(TMEM_SLOT_AT)?.into(),
                        i32c(TMEM_COLUMNS as u64).into(),
                    ],
                )?;
            }
            Ops::Host { alloc, .. } => {
                call(
                    c,
                    *alloc,
                    &[
                        emu.into(),
                        slot_generic.into(),
                        i32c(TMEM_COLUMNS as u64).into(),
                    ],
                )?;
            }
        }
        Ok(())
    })?;
    if let Ops::Ptx { mbar_init, .. } = &ops {
        when(&c, is_t0, &|c| {
            call(c, *mbar_init, &[shared_at(MBAR_AT)?.into(), i32c(1).into()])?;
            Ok(())
        })?;
    }
    sync(&c)?;
    let tmem = c.b.build_load(i32t, slot_generic, "tmem")?.into_int_value();
    // This warp's lane quarter, and the scale-factor addresses.
    let lane_base = c.b.build_left_shift(
        c.b.build_int_mul(c.b.build_and(w32, i32c(3), "")?, i32c(32), "")?,
        i32c(16),
        "",
    )?;
    let my_lanes = c.b.build_int_add(tmem, lane_base, "")?;
    let sfa = c.b.build_int_add(tmem, i32c(SFA_COLUMN as u64), "sfa")?;
    let sfb = c.b.build_int_add(tmem, i32c(SFB_COLUMN as u64), "sfb")?;

    // The tile, and this thread's rows.
    let tiles_n =
        c.b.build_int_unsigned_div(c.b.build_int_add(n, c.i64(TILE - 1), "")?, c.i64(TILE), "")?;
    let m0 = c.b.build_int_mul(
        c.b.build_int_unsigned_div(block, tiles_n, "")?,
        c.i64(TILE),
        "m0",
    )?;
    let n0 = c.b.build_int_mul(
        c.b.build_int_unsigned_rem(block, tiles_n, "")?,
        c.i64(TILE),
        "n0",
    )?;
    let arow = c.b.build_int_add(m0, t, "arow")?;
    let brow = c.b.build_int_add(n0, t, "brow")?;
    let b_in = c.b.build_int_compare(IntPredicate::ULT, brow, n, "")?;
    let brow_c = umin(&c, brow, c.b.build_int_sub(n, c.i64(1), "")?)?;
    // Row t's two 16-byte halves in a tile.
    let slot = c.b.build_int_add(
        c.b.build_int_mul(
            c.b.build_right_shift(t, c.i64(3), false, "")?,
            c.i64(SBO),
            "",
        )?,
        c.b.build_int_mul(c.b.build_and(t, c.i64(7), "")?, c.i64(16), "")?,
        "slot",
    )?;
    let a_desc = descriptor(&c, smem_shared)?;
    let b_desc = descriptor(&c, c.b.build_int_add(smem_shared, c.i64(TILE_BYTES), "")?)?;
    let idesc = i32c(instruction_descriptor(spec.kind) as u64);
    let v4i32 = i32t.vec_type(4);
    let bs = spec.block();
    let half_k = c.b.build_right_shift(k, c.i64(1), false, "")?;
    let scales_per_row = c.b.build_int_unsigned_div(k, c.i64(bs), "")?;
    let steps =
        c.b.build_int_unsigned_div(k, c.i64(crate::fp4::K_STEP), "steps")?;
    let store16 =
        |c: &Cx<'c>, off: IntValue<'c>, v: inkwell::values::VectorValue<'c>| -> Result<(), Error> {
            let st =
                c.b.build_store(c.gep(ctx.i8_type().into(), smem, off)?, v)?;
            st.set_alignment(16)
                .map_err(|e| Error::Codegen(e.to_string()))?;
            Ok(())
        };
    // This warp's lanes of the four scale columns at `taddr`: words `v`.
    let tst = |c: &Cx<'c>, taddr: IntValue<'c>, v: &[IntValue<'c>]| -> Result<(), Error> {
        match &ops {
            Ops::Ptx { st, .. } => {
                let mut vec = v4i32.get_undef();
                for (e, w) in v.iter().enumerate() {
                    vec = c.b.build_insert_element(vec, *w, i32c(e as u64), "")?;
                }
                call(
                    c,
                    *st,
                    &[tmem_at(taddr)?.into(), vec.into(), i1t.const_zero().into()],
                )?;
            }
            Ops::Host { st, .. } => {
                let mut args: Vec<BasicMetadataValueEnum> =
                    vec![emu.into(), t.into(), taddr.into()];
                args.extend(v.iter().map(|w| BasicMetadataValueEnum::from(*w)));
                call(c, *st, &args)?;
            }
        }
        Ok(())
    };
    // The scale words of rows (or columns) `32 q + lane` of the tile, q < 4, from the exchange
    // area at `at`.
    let lane = c.b.build_and(t, c.i64(31), "lane")?;
    let gather = |c: &Cx<'c>, at: u64| -> Result<Vec<IntValue<'c>>, Error> {
        (0..4u64)
            .map(|q| {
                let row = c.b.build_int_add(lane, c.i64(32 * q), "")?;
                let off =
                    c.b.build_int_add(c.i64(at), c.b.build_int_mul(row, c.i64(4), "")?, "")?;
                let ld =
                    c.b.build_load(i32t, c.gep(ctx.i8_type().into(), smem, off)?, "")?;
                ld.as_instruction_value()
                    .unwrap()
                    .set_alignment(4)
                    .map_err(|e| Error::Codegen(e.to_string()))?;
                Ok(ld.into_int_value())
            })
            .collect()
    };
    let put_word = |c: &Cx<'c>, at: u64, v: IntValue<'c>| -> Result<(), Error> {
        let off =
            c.b.build_int_add(c.i64(at), c.b.build_int_mul(t, c.i64(4), "")?, "")?;
        let st =
            c.b.build_store(c.gep(ctx.i8_type().into(), smem, off)?, v)?;
        st.set_alignment(4)
            .map_err(|e| Error::Codegen(e.to_string()))?;
        Ok(())
    };

    for_loop(&c, body, steps, |c, si| {
        let k0 = c.b.build_int_mul(si, c.i64(crate::fp4::K_STEP), "k0")?;
        // 2. Activation row `arow`, quantized: 64 codes into A, the block scales into tensor memory.
        let mut xs = Vec::with_capacity(64);
        for q4 in 0..16u64 {
            let kc = c.b.build_int_add(k0, c.i64(4 * q4), "")?;
            let v = load_x4(c, x, arow, m, k, kc)?;
            for e in 0..4u64 {
                xs.push(
                    c.b.build_extract_element(v, i32c(e), "")?
                        .into_float_value(),
                );
            }
        }
        let mut words = [i32c(0); 8];
        let mut sf_word = i32c(0);
        for (bi, chunk) in xs.chunks(bs as usize).enumerate() {
            let qb = quantize_block(ctx, &c.b, module, &spec.act, chunk, tamax)?;
            for (e, q) in qb.q.iter().enumerate() {
                let kk = bi * bs as usize + e;
                let code = e2m1_code(ctx, &c.b, *q)?;
                let sh = c.b.build_left_shift(code, i32c(4 * (kk % 8) as u64), "")?;
                words[kk / 8] = c.b.build_or(words[kk / 8], sh, "")?;
            }
            let sh =
                c.b.build_left_shift(qb.scale_byte, i32c(8 * bi as u64), "")?;
            sf_word = c.b.build_or(sf_word, sh, "")?;
        }
        for h in 0..2u64 {
            let mut v = v4i32.get_undef();
            for e in 0..4u64 {
                v =
                    c.b.build_insert_element(v, words[(4 * h + e) as usize], i32c(e), "")?;
            }
            store16(c, c.b.build_int_add(slot, c.i64(h * LBO), "")?, v)?;
        }
        put_word(c, SF_X_AT, sf_word)?;
        // 3. Weight row `brow`: its 32 code bytes into B, its scale bytes into tensor memory.
        let off = c.b.build_int_add(
            c.b.build_int_mul(brow_c, half_k, "")?,
            c.b.build_right_shift(k0, c.i64(1), false, "")?,
            "",
        )?;
        for h in 0..2u64 {
            let p = c.gep(
                ctx.i8_type().into(),
                codes,
                c.b.build_int_add(off, c.i64(16 * h), "")?,
            )?;
            let ld = c.b.build_load(v4i32, p, "")?;
            ld.as_instruction_value()
                .unwrap()
                .set_alignment(16)
                .map_err(|e| Error::Codegen(e.to_string()))?;
            let v =
                c.b.build_select(b_in, ld.into_vector_value(), v4i32.const_zero(), "")?
                    .into_vector_value();
            store16(
                c,
                c.b.build_int_add(slot, c.i64(TILE_BYTES + h * LBO), "")?,
                v,
            )?;
        }
        let sidx = c.b.build_int_add(
            c.b.build_int_mul(brow_c, scales_per_row, "")?,
            c.b.build_int_unsigned_div(k0, c.i64(bs), "")?,
            "",
        )?;
        let sp = c.gep(ctx.i8_type().into(), scales, sidx)?;
        let word = match spec.kind {
            Fp4Kind::Nvfp4 => {
                let ld = c.b.build_load(i32t, sp, "")?;
                ld.as_instruction_value()
                    .unwrap()
                    .set_alignment(4)
                    .map_err(|e| Error::Codegen(e.to_string()))?;
                ld.into_int_value()
            }
            Fp4Kind::Mxfp4 => {
                let ld = c.b.build_load(ctx.i16_type(), sp, "")?;
                ld.as_instruction_value()
                    .unwrap()
                    .set_alignment(2)
                    .map_err(|e| Error::Codegen(e.to_string()))?;
                c.b.build_int_z_extend(ld.into_int_value(), i32t, "")?
            }
        };
        let word = c.b.build_select(b_in, word, i32c(0), "")?.into_int_value();
        put_word(c, SF_X_AT + 4 * TILE, word)?;
        // Every warp writes the whole 128 x 4 scale table into its lane quarter (the MMA wants the
        // scale factors in all four): rows 32 q + lane in column q.
        match &ops {
            Ops::Ptx { bar, .. } => call(c, *bar, &[i32c(0).into()])?,
            Ops::Host { bar, .. } => call(c, *bar, &[emu.into()])?,
        };
        let a_words = gather(c, SF_X_AT)?;
        tst(
            c,
            c.b.build_int_add(my_lanes, i32c(SFA_COLUMN as u64), "")?,
            &a_words,
        )?;
        let b_words = gather(c, SF_X_AT + 4 * TILE)?;
        tst(
            c,
            c.b.build_int_add(my_lanes, i32c(SFB_COLUMN as u64), "")?,
            &b_words,
        )?;
        // 4. Make the tiles and scales visible to the tensor core; one thread issues the MMA.
        if let Ops::Ptx { proxy, wait_st, .. } = &ops {
            call(c, *proxy, &[])?;
            call(c, *wait_st, &[])?;
        }
        sync(c)?;
        let accumulate = c.b.build_int_compare(IntPredicate::NE, si, c.i64(0), "")?;
        when(c, is_t0, &|c| {
            match &ops {
                Ops::Ptx { mma, commit, .. } => {
                    call(
                        c,
                        *mma,
                        &[
                            tmem_at(tmem)?.into(),
                            a_desc.into(),
                            b_desc.into(),
                            idesc.into(),
                            accumulate.into(),
                            tmem_at(sfa)?.into(),
                            tmem_at(sfb)?.into(),
                            i32c(1).into(),
                            i32c(0).into(),
                        ],
                    )?;
                    call(c, *commit, &[shared_at(MBAR_AT)?.into()])?;
                }
                Ops::Host { mma, .. } => {
                    call(
                        c,
                        *mma,
                        &[
                            emu.into(),
                            tmem.into(),
                            a_desc.into(),
                            b_desc.into(),
                            idesc.into(),
                            c.b.build_int_z_extend(accumulate, i32t, "")?.into(),
                            sfa.into(),
                            sfb.into(),
                        ],
                    )?;
                }
            }
            Ok(())
        })?;
        // 5. Wait for the MMA (the mbarrier's phase `step % 2`).
        match &ops {
            Ops::Ptx {
                mbar_wait, after, ..
            } => {
                let parity =
                    c.b.build_int_truncate(c.b.build_and(si, c.i64(1), "")?, i32t, "")?;
                let head = ctx.append_basic_block(body, "wait");
                let done = ctx.append_basic_block(body, "waited");
                c.b.build_unconditional_branch(head)?;
                c.b.position_at_end(head);
                let ok = call(c, *mbar_wait, &[shared_at(MBAR_AT)?.into(), parity.into()])?
                    .ok_or(Error::Codegen("try_wait returns nothing".into()))?
                    .into_int_value();
                c.b.build_conditional_branch(ok, done, head)?;
                c.b.position_at_end(done);
                call(c, *after, &[])?;
            }
            Ops::Host { bar, .. } => {
                call(c, *bar, &[emu.into()])?;
            }
        }
        Ok(())
    })?;

    // 6. The accumulator out of tensor memory, scaled, into y.
    let g = match spec.kind {
        Fp4Kind::Nvfp4 => {
            let tz =
                c.b.build_float_compare(FloatPredicate::OEQ, tamax, f32t.const_zero(), "")?;
            let g =
                c.b.build_float_div(tamax, f32t.const_float(6.0 * 448.0), "")?;
            c.b.build_select(tz, f32t.const_float(1.0), g, "")?
                .into_float_value()
        }
        Fp4Kind::Mxfp4 => f32t.const_float(1.0),
    };
    let out = c.b.build_alloca(i32t.array_type(32), "d")?;
    let a_in = c.b.build_int_compare(IntPredicate::ULT, arow, m, "")?;
    for chunk in 0..(TILE / 32) {
        let taddr = c.b.build_int_add(my_lanes, i32c(32 * chunk), "")?;
        match &ops {
            Ops::Ptx { ld, wait_ld, .. } => {
                let v = call(&c, *ld, &[tmem_at(taddr)?.into(), i1t.const_zero().into()])?
                    .ok_or(Error::Codegen("tcgen05.ld returns nothing".into()))?
                    .into_vector_value();
                call(&c, *wait_ld, &[])?;
                for j in 0..32u64 {
                    let e = c.b.build_extract_element(v, i32c(j), "")?;
                    c.b.build_store(c.gep(i32t.into(), out, c.i64(j))?, e)?;
                }
            }
            Ops::Host { ld, .. } => {
                call(&c, *ld, &[emu.into(), t.into(), taddr.into(), out.into()])?;
            }
        }
        when(&c, a_in, &|c| {
            for_loop(c, body, c.i64(32), |c, j| {
                let col =
                    c.b.build_int_add(c.b.build_int_add(n0, c.i64(32 * chunk), "")?, j, "")?;
                let inside = c.b.build_int_compare(IntPredicate::ULT, col, n, "")?;
                when(c, inside, &|c| {
                    let d = c.b.build_load(i32t, c.gep(i32t.into(), out, j)?, "")?;
                    let d = c.b.build_bit_cast(d, f32t, "")?.into_float_value();
                    let v =
                        c.b.build_float_mul(c.b.build_float_mul(d, g, "")?, post, "")?;
                    let idx =
                        c.b.build_int_add(c.b.build_int_mul(arow, n, "")?, col, "")?;
                    c.b.build_store(c.gep(f32t.into(), y, idx)?, v)?;
                    Ok(())
                })
            })
        })?;
    }
    // 7. Free the tensor memory once every warp has read it.
    sync(&c)?;
    if let Ops::Ptx {
        dealloc,
        relinquish,
        ..
    } = &ops
    {
        when(&c, is_warp0, &|c| {
            call(
                c,
                *dealloc,
                &[tmem_at(tmem)?.into(), i32c(TMEM_COLUMNS as u64).into()],
            )?;
            call(c, *relinquish, &[])?;
            Ok(())
        })?;
    }
    c.b.build_return(None)?;

    // The entry. Every thread of a block runs the body; the grid has one block per tile.
    let nparams = 10;
    let mut eparams = body.get_type().get_param_types()[..nparams].to_vec();
    let fname = if host {
        eparams.extend::<[BasicMetadataTypeEnum; 4]>([
            ptr.into(),
            ptr.into(),
            i64t.into(),
            i64t.into(),
        ]);
        format!("{ENTRY}_at")
    } else {
        ENTRY.to_string()
    };
    let f = module.add_function(
        &fname,
        void.fn_type(&eparams, false),
        Some(Linkage::External),
    );
    c.b.position_at_end(ctx.append_basic_block(f, "entry"));
    let fp = f.get_params();
    let (emu_p, smem_p, block_v, t_v, shared): (
        PointerValue,
        PointerValue,
        IntValue,
        IntValue,
        IntValue,
    ) = if host {
        (
            fp[10].into_pointer_value(),
            fp[11].into_pointer_value(),
            fp[12].into_int_value(),
            fp[13].into_int_value(),
            i64t.const_zero(),
        )
    } else {
        f.set_call_conventions(PTX_KERNEL_CALL_CONV);
        let arr = ctx.i8_type().array_type(SMEM as u32);
        let g = module.add_global(arr, Some(AddressSpace::from(3u16)), "qc_tcgen05_smem");
        g.set_linkage(Linkage::Internal);
        g.set_alignment(128);
        g.set_initializer(&arr.get_undef());
        let generic =
            c.b.build_address_space_cast(g.as_pointer_value(), ptr, "")?;
        let shared = c.b.build_ptr_to_int(g.as_pointer_value(), i64t, "")?;
        let tid = special_register(module, &c.b, ctx, "llvm.nvvm.read.ptx.sreg.tid.x")?;
        let ctaid = special_register(module, &c.b, ctx, "llvm.nvvm.read.ptx.sreg.ctaid.x")?;
        (ptr.const_null(), generic, ctaid, tid, shared)
    };
    let mut args: Vec<BasicMetadataValueEnum> = fp[..nparams].iter().map(|p| (*p).into()).collect();
    args.extend::<[BasicMetadataValueEnum; 5]>([
        emu_p.into(),
        smem_p.into(),
        block_v.into(),
        t_v.into(),
        shared.into(),
    ]);
    c.b.build_call(body, &args, "")?;
    c.b.build_return(None)?;
    Ok(())
}

/// The PTX of [`ENTRY`] for `spec` (sm_100a only: `tcgen05` is Blackwell data center's).
pub fn emit_ptx(spec: &Fp4) -> Result<String, Error> {
    compile_ptx(
        &target_machine_with(GpuTarget::Sm100a, "+ptx88")?,
        "qc_tcgen05_fp4",
        "default<O3>",
        |c, m| build(c, m, spec, Entries::Ptx),
    )
}

//! Tensor-core GEMM for 4-bit weights on NVIDIA GPUs (sm_80 and later): `y[M, N] = x[M, K] W[N, K]^T`
//! with `W` read straight from its `qc_quant::blob` bytes (the formats and blob layout of
//! [`Gemv4`], which describes them) and `x`, `y` in f32. The products of a prefill (M of 16 and more)
//! run this kernel; single rows run the GEMV of [`crate::gemv4`].
//!
//! # Arithmetic
//! Warp-level `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32` with software dequantization:
//! - **Weights** are decoded in registers to bf16. A 4-bit code's value is exact in bf16, and so is
//!   its product with a one-byte scale (e8m0: a power of two; ue4m3: at most 4 significant bits
//!   times the code's 2), so formats with byte scales (mxfp4, nvfp4, nvint4) feed the scaled weight
//!   and accumulate over all of K in the MMA. Formats with f32 scales (int4 per group) feed the
//!   code, accumulate one scale group in a zeroed MMA accumulator, and add `scale * group sum` to
//!   the running f32 sum ("scales applied around the MMA"). Per-row scales and the NVFP4 tensor
//!   scale multiply the result.
//! - **Activations** are split into two bf16 terms, `hi = bf16(x)` and `lo = bf16(x - hi)` (both
//!   rounded to nearest even), and each k-step is two MMAs, `hi * w + lo * w`: `hi + lo` holds 16
//!   significant bits of `x` (relative error at most 2^-17), so the result is close to an f32
//!   product rather than a bf16 one. The MMA accumulates in f32 in the tensor core's own order.
//!
//! # Kernel [`ENTRY`]`(codes, scales, tables, x, y, k, n, m, post)`
//! - Warp `w = global thread / 32` computes the 32 x 32 tile `(w / ceil(N / 32), w % ceil(N / 32))`
//!   of `y` as 2 x 4 MMA tiles of 16 x 8; warps past the last tile return (the whole warp: the MMA
//!   needs all 32 lanes). Launch `ceil(M / 32) * ceil(N / 32)` warps, e.g. in blocks of [`BLOCK`]
//!   threads. Rows past M read zeros and are not written; weight rows past N decode as zeros.
//! - Fragments come straight from global memory, no shared memory: in each k-step of 16 elements,
//!   lane `(g, q) = (lane / 4, lane % 4)` reads `x[row][k0 + 4q .. k0 + 4q + 4]` (one 16-byte load
//!   per row) and the two code bytes of `W[n0 + g][k0 + 4q .. k0 + 4q + 4]`. The MMA's k index
//!   `2q, 2q + 1, 2q + 8, 2q + 9` stands for elements `4q .. 4q + 4` of the step: a permutation of
//!   the step's 16 elements, the same for both operands, so the product is unchanged.
//! - `tables`, `post`: as for [`Gemv4`] (`Gemv4::tables`, `Gemv4::post`). K must be a multiple of
//!   16 and of the group; `x` 16-byte aligned, `codes` 2-byte aligned.
//!
//! The tests compile the same body for the host, with the MMA replaced by a call to an emulator
//! that gathers the 32 lanes' fragments ([`Entries::Host`]), and run each warp's lanes as threads.

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::values::{
    BasicMetadataValueEnum, BasicValue, FloatValue, FunctionValue, IntValue, PointerValue,
};
use inkwell::{AddressSpace, IntPredicate};

use crate::gemv4::{for_loop, scale_at, Cx, Gemv4};
use crate::{
    compile_ptx, global_thread_index, special_register, target_machine, Error, GpuTarget,
    PTX_KERNEL_CALL_CONV,
};

/// The kernel's entry.
pub const ENTRY: &str = "qc_mma4";
/// Threads per block the launch plan uses (4 warps).
pub const BLOCK: u32 = 128;
/// Rows and columns of `y` one warp computes.
pub const WARP_TILE: u64 = 32;
/// The host emulator's symbol ([`Entries::Host`]): `void qc_mma4_emu(void *warp, int64_t lane,
/// uint32_t a0, a1, a2, a3, uint32_t b0, b1, float c0, c1, c2, c3, float *d)` computes this lane's
/// four accumulators of `m16n8k16.row.col.f32.bf16.bf16.f32` from all 32 lanes' fragments.
pub const EMULATOR: &str = "qc_mma4_emu";
/// The smallest number of activation rows for which the compiler picks this kernel over the GEMV.
pub const MIN_ROWS: u64 = 16;

/// The MMA tiles of a warp: 2 along M (16 rows each) and 4 along N (8 columns each).
pub(crate) const TM: usize = 2;
pub(crate) const TN: usize = 4;

/// What [`build`] adds besides the body: the PTX kernel [`ENTRY`] (thread index from the special
/// registers, the MMA instruction), or a host function `qc_mma4_at(args..., warp, t)` that runs
/// thread `t` with every MMA a call of [`EMULATOR`] (passed `warp`).
pub use crate::gemv4::Entries;

/// Whether [`ENTRY`] reads `spec`'s weights for reduction length `k`, or why not.
pub fn supports(spec: &Gemv4, k: u64) -> Result<(), String> {
    let chunk = spec.group.unwrap_or(16) as u64;
    if !k.is_multiple_of(16) || !k.is_multiple_of(chunk) {
        return Err(format!("K = {k} is not a multiple of 16 and of the group"));
    }
    Ok(())
}

/// Rounds f32 bits to the nearest even bf16 (the upper 16 bits of the result's f32 pattern).
pub(crate) fn bf16_rn<'c>(c: &Cx<'c>, v: FloatValue<'c>) -> Result<IntValue<'c>, Error> {
    let i32t = c.ctx.i32_type();
    let bits = c.b.build_bit_cast(v, i32t, "")?.into_int_value();
    let odd =
        c.b.build_right_shift(bits, i32t.const_int(16, false), false, "")?;
    let odd = c.b.build_and(odd, i32t.const_int(1, false), "")?;
    let r = c.b.build_int_add(bits, i32t.const_int(0x7fff, false), "")?;
    let r = c.b.build_int_add(r, odd, "")?;
    Ok(c.b.build_right_shift(r, i32t.const_int(16, false), false, "")?)
}

/// The f32 value of bf16 bits `h` (in the low 16 bits of an i32).
pub(crate) fn bf16_value<'c>(c: &Cx<'c>, h: IntValue<'c>) -> Result<FloatValue<'c>, Error> {
    let i32t = c.ctx.i32_type();
    let bits = c.b.build_left_shift(h, i32t.const_int(16, false), "")?;
    Ok(c.b
        .build_bit_cast(bits, c.ctx.f32_type(), "")?
        .into_float_value())
}

/// `lo | hi << 16`: a bf16x2 register with `lo` the lower-indexed element.
pub(crate) fn pack<'c>(
    c: &Cx<'c>,
    lo: IntValue<'c>,
    hi: IntValue<'c>,
) -> Result<IntValue<'c>, Error> {
    let i32t = c.ctx.i32_type();
    let h = c.b.build_left_shift(hi, i32t.const_int(16, false), "")?;
    Ok(c.b.build_or(lo, h, "")?)
}

pub(crate) fn umin<'c>(
    c: &Cx<'c>,
    a: IntValue<'c>,
    b: IntValue<'c>,
) -> Result<IntValue<'c>, Error> {
    let lt = c.b.build_int_compare(IntPredicate::ULT, a, b, "")?;
    Ok(c.b.build_select(lt, a, b, "")?.into_int_value())
}

/// `x[row][col .. col + 4]` as one aligned 16-byte load (f32 x 4), or zeros when `row >= m` (the
/// load then reads row `min(row, m - 1)`, which exists).
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_x4<'c>(
    c: &Cx<'c>,
    x: PointerValue<'c>,
    row: IntValue<'c>,
    m: IntValue<'c>,
    k: IntValue<'c>,
    col: IntValue<'c>,
) -> Result<inkwell::values::VectorValue<'c>, Error> {
    let v4 = c.ctx.f32_type().vec_type(4);
    let m_last = c.b.build_int_sub(m, c.i64(1), "")?;
    let rc = umin(c, row, m_last)?;
    let off = c.b.build_int_add(c.b.build_int_mul(rc, k, "")?, col, "")?;
    let ld =
        c.b.build_load(v4, c.gep(c.ctx.f32_type().into(), x, off)?, "")?;
    ld.as_instruction_value()
        .unwrap()
        .set_alignment(16)
        .map_err(|e| Error::Codegen(e.to_string()))?;
    let inside = c.b.build_int_compare(IntPredicate::ULT, row, m, "")?;
    Ok(c.b
        .build_select(inside, ld.into_vector_value(), v4.const_zero(), "")?
        .into_vector_value())
}

/// `ceil(d / 32)`: the warp tiles along a dimension of `d`.
pub(crate) fn warp_tiles<'c>(c: &Cx<'c>, d: IntValue<'c>) -> Result<IntValue<'c>, Error> {
    let r = c.b.build_int_add(d, c.i64(WARP_TILE - 1), "")?;
    Ok(c.b.build_int_unsigned_div(r, c.i64(WARP_TILE), "")?)
}

/// Builds the entry of a warp-tile GEMM whose `body` takes the entry's `nparams` parameters, then
/// the emulator pointer and the thread index: the PTX kernel `name` (thread index from the special
/// registers), or the host function `<name>_at(params..., warp, t)`. Only the first `warps(params)`
/// warps run the body, whole warps at a time (the MMA needs all 32 lanes).
pub(crate) fn warp_tile_entry<'c>(
    c: &Cx<'c>,
    module: &Module<'c>,
    body: FunctionValue<'c>,
    name: &str,
    nparams: usize,
    entries: Entries,
    warps: impl Fn(&Cx<'c>, &[inkwell::values::BasicValueEnum<'c>]) -> Result<IntValue<'c>, Error>,
) -> Result<(), Error> {
    let ctx = c.ctx;
    let ptr = ctx.ptr_type(AddressSpace::default());
    let mut eparams: Vec<inkwell::types::BasicMetadataTypeEnum> =
        body.get_type().get_param_types()[..nparams].to_vec();
    let fname = match entries {
        Entries::Ptx => name.to_string(),
        Entries::Host => {
            eparams.push(ptr.into());
            eparams.push(ctx.i64_type().into());
            format!("{name}_at")
        }
    };
    let f = module.add_function(
        &fname,
        ctx.void_type().fn_type(&eparams, false),
        Some(Linkage::External),
    );
    c.b.position_at_end(ctx.append_basic_block(f, "entry"));
    let fp = f.get_params();
    let (t, warp_ptr) = match entries {
        Entries::Host => (
            fp[nparams + 1].into_int_value(),
            fp[nparams].into_pointer_value(),
        ),
        Entries::Ptx => {
            f.set_call_conventions(PTX_KERNEL_CALL_CONV);
            (global_thread_index(module, &c.b, ctx)?, ptr.const_null())
        }
    };
    let total = warps(c, &fp)?;
    let warp = c.b.build_right_shift(t, c.i64(5), false, "")?;
    let run = ctx.append_basic_block(f, "run");
    let done = ctx.append_basic_block(f, "done");
    let inside = c.b.build_int_compare(IntPredicate::ULT, warp, total, "")?;
    c.b.build_conditional_branch(inside, run, done)?;
    c.b.position_at_end(run);
    let mut args: Vec<BasicMetadataValueEnum> = fp[..nparams].iter().map(|p| (*p).into()).collect();
    args.push(warp_ptr.into());
    args.push(t.into());
    c.b.build_call(body, &args, "")?;
    c.b.build_unconditional_branch(done)?;
    c.b.position_at_end(done);
    c.b.build_return(None)?;
    Ok(())
}

/// Builds the entry of a block GEMM (`wgmma8`, `tcgen05`) whose `body` takes the entry's `nparams`
/// parameters, then `(emu, smem, block, t, smem_shared)`: the emulator state, the shared memory as
/// a generic pointer, the block index, the thread index in the block and the shared-window address
/// of the shared memory (what matrix descriptors hold). For PTX: the kernel `name` with
/// `smem.0` bytes of static shared memory (the global `smem.1`, 128-byte aligned), the indices from
/// the special registers, no emulator; for the host: `<name>_at(params..., emu, smem, block, t)`,
/// `smem_shared` 0 (descriptors then hold offsets into the host buffer).
pub(crate) fn block_entry<'c>(
    c: &Cx<'c>,
    module: &Module<'c>,
    body: FunctionValue<'c>,
    name: &str,
    nparams: usize,
    smem: (u64, &str),
    entries: Entries,
) -> Result<(), Error> {
    let ctx = c.ctx;
    let ptr = ctx.ptr_type(AddressSpace::default());
    let i64t = ctx.i64_type();
    let mut eparams: Vec<inkwell::types::BasicMetadataTypeEnum> =
        body.get_type().get_param_types()[..nparams].to_vec();
    let host = entries == Entries::Host;
    let fname = if host {
        eparams.extend::<[inkwell::types::BasicMetadataTypeEnum; 4]>([
            ptr.into(),
            ptr.into(),
            i64t.into(),
            i64t.into(),
        ]);
        format!("{name}_at")
    } else {
        name.to_string()
    };
    let f = module.add_function(
        &fname,
        ctx.void_type().fn_type(&eparams, false),
        Some(Linkage::External),
    );
    c.b.position_at_end(ctx.append_basic_block(f, "entry"));
    let fp = f.get_params();
    let tail: [BasicMetadataValueEnum; 5] = if host {
        [
            fp[nparams].into(),
            fp[nparams + 1].into(),
            fp[nparams + 2].into(),
            fp[nparams + 3].into(),
            i64t.const_zero().into(),
        ]
    } else {
        f.set_call_conventions(PTX_KERNEL_CALL_CONV);
        let arr = ctx.i8_type().array_type(smem.0 as u32);
        let g = module.add_global(arr, Some(AddressSpace::from(3u16)), smem.1);
        g.set_linkage(Linkage::Internal);
        g.set_alignment(128);
        g.set_initializer(&arr.get_undef());
        let generic =
            c.b.build_address_space_cast(g.as_pointer_value(), ptr, "")?;
        // The shared-window address: of the addrspace(3) pointer itself, not of the generic one.
        let shared = c.b.build_ptr_to_int(g.as_pointer_value(), i64t, "")?;
        let tid = special_register(module, &c.b, ctx, "llvm.nvvm.read.ptx.sreg.tid.x")?;
        let ctaid = special_register(module, &c.b, ctx, "llvm.nvvm.read.ptx.sreg.ctaid.x")?;
        [
            ptr.const_null().into(),
            generic.into(),
            ctaid.into(),
            tid.into(),
            shared.into(),
        ]
    };
    let mut args: Vec<BasicMetadataValueEnum> = fp[..nparams].iter().map(|p| (*p).into()).collect();
    args.extend(tail);
    c.b.build_call(body, &args, "")?;
    c.b.build_return(None)?;
    Ok(())
}

/// The first row and column of block `block`'s `tile` x `tile` tile of a block GEMM with `n`
/// columns: tile `(block / ceil(N / tile), block % ceil(N / tile))`.
pub(crate) fn block_tile<'c>(
    c: &Cx<'c>,
    block: IntValue<'c>,
    n: IntValue<'c>,
    tile: u64,
) -> Result<(IntValue<'c>, IntValue<'c>), Error> {
    let tiles_n = c.b.build_int_add(n, c.i64(tile - 1), "")?;
    let tiles_n = c.b.build_int_unsigned_div(tiles_n, c.i64(tile), "")?;
    let m0 = c.b.build_int_unsigned_div(block, tiles_n, "")?;
    let n0 = c.b.build_int_unsigned_rem(block, tiles_n, "")?;
    Ok((
        c.b.build_int_mul(m0, c.i64(tile), "m0")?,
        c.b.build_int_mul(n0, c.i64(tile), "n0")?,
    ))
}

/// A lane's place in a warp-tile GEMM (`mma4`, `mma8`, `mmafp4`): the warp's `WARP_TILE` x
/// `WARP_TILE` tile of `y` is `(warp / ceil(N / 32), warp % ceil(N / 32))`.
pub(crate) struct WarpTile<'c> {
    /// The `TM * TN * 4` f32 accumulators, zeroed (an alloca SROA turns into registers).
    pub(crate) acc: PointerValue<'c>,
    /// `lane / 4` and `lane % 4` (the MMA fragments' group and thread in group).
    pub(crate) g: IntValue<'c>,
    pub(crate) q: IntValue<'c>,
    /// The tile's first row and column.
    pub(crate) m0: IntValue<'c>,
    pub(crate) n0: IntValue<'c>,
    /// `N - 1`, where weight rows are clamped.
    pub(crate) n_last: IntValue<'c>,
}

impl<'c> WarpTile<'c> {
    /// For thread `t` (lane `lane`) of a product with `n` columns, built at the builder's
    /// position (the function's entry block).
    pub(crate) fn new(
        c: &Cx<'c>,
        t: IntValue<'c>,
        lane: IntValue<'c>,
        n: IntValue<'c>,
    ) -> Result<WarpTile<'c>, Error> {
        let f32t = c.ctx.f32_type();
        let slots = (TM * TN * 4) as u32;
        let acc = c.b.build_alloca(f32t.array_type(slots), "acc")?;
        for s in 0..slots as u64 {
            c.b.build_store(c.gep(f32t.into(), acc, c.i64(s))?, f32t.const_zero())?;
        }
        let warp = c.b.build_right_shift(t, c.i64(5), false, "warp")?;
        let tiles_n = warp_tiles(c, n)?;
        let tm = c.b.build_int_unsigned_div(warp, tiles_n, "tm")?;
        let tn = c.b.build_int_unsigned_rem(warp, tiles_n, "tn")?;
        Ok(WarpTile {
            acc,
            g: c.b.build_right_shift(lane, c.i64(2), false, "g")?,
            q: c.b.build_and(lane, c.i64(3), "q")?,
            m0: c.b.build_int_mul(tm, c.i64(WARP_TILE), "m0")?,
            n0: c.b.build_int_mul(tn, c.i64(WARP_TILE), "n0")?,
            n_last: c.b.build_int_sub(n, c.i64(1), "")?,
        })
    }
}

/// The warps of a GEMM `(codes, scales, tables, x, y, k, n, m, ...)`: `ceil(M / 32) * ceil(N / 32)`.
pub(crate) fn product_warps<'c>(
    c: &Cx<'c>,
    p: &[inkwell::values::BasicValueEnum<'c>],
) -> Result<IntValue<'c>, Error> {
    let (n, m) = (p[6].into_int_value(), p[7].into_int_value());
    Ok(c.b.build_int_mul(warp_tiles(c, m)?, warp_tiles(c, n)?, "")?)
}

/// The body of a quantized-product kernel and its parameters: `(codes, scales, tables, x, y, k, n,
/// m, post)`, then the FP8/int8 GEMMs' activation scale `sa`, then `tail` (the emulator state, the
/// thread index, ...).
pub(crate) struct ProductBody<'c> {
    pub(crate) f: FunctionValue<'c>,
    pub(crate) codes: PointerValue<'c>,
    pub(crate) scales: PointerValue<'c>,
    pub(crate) tables: PointerValue<'c>,
    pub(crate) x: PointerValue<'c>,
    pub(crate) y: PointerValue<'c>,
    pub(crate) k: IntValue<'c>,
    pub(crate) n: IntValue<'c>,
    pub(crate) m: IntValue<'c>,
    pub(crate) post: inkwell::values::FloatValue<'c>,
    /// `sa` when asked for.
    pub(crate) sa: Option<inkwell::values::FloatValue<'c>>,
    /// The parameters after these.
    pub(crate) tail: Vec<inkwell::values::BasicValueEnum<'c>>,
}

impl<'c> ProductBody<'c> {
    /// Adds the internal function `name` with these parameters (and `sa` when `with_sa`).
    pub(crate) fn add(
        ctx: &'c Context,
        module: &Module<'c>,
        name: &str,
        with_sa: bool,
        tail: &[inkwell::types::BasicMetadataTypeEnum<'c>],
    ) -> ProductBody<'c> {
        let ptr = ctx.ptr_type(AddressSpace::default());
        let (i64t, f32t) = (ctx.i64_type(), ctx.f32_type());
        let mut params: Vec<inkwell::types::BasicMetadataTypeEnum> = vec![
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            ptr.into(),
            i64t.into(),
            i64t.into(),
            i64t.into(),
            f32t.into(),
        ];
        if with_sa {
            params.push(f32t.into());
        }
        let base = params.len();
        params.extend_from_slice(tail);
        let f = module.add_function(
            name,
            ctx.void_type().fn_type(&params, false),
            Some(Linkage::Internal),
        );
        let a = f.get_params();
        ProductBody {
            f,
            codes: a[0].into_pointer_value(),
            scales: a[1].into_pointer_value(),
            tables: a[2].into_pointer_value(),
            x: a[3].into_pointer_value(),
            y: a[4].into_pointer_value(),
            k: a[5].into_int_value(),
            n: a[6].into_int_value(),
            m: a[7].into_int_value(),
            post: a[8].into_float_value(),
            sa: with_sa.then(|| a[9].into_float_value()),
            tail: a[base..].to_vec(),
        }
    }
}

/// The parameters a block GEMM's body ([`block_entry`]) takes after [`ProductBody`]'s.
pub(crate) struct BlockTail<'c> {
    /// The emulator state (host) or null.
    pub(crate) emu: PointerValue<'c>,
    /// The shared memory as a generic pointer.
    pub(crate) smem: PointerValue<'c>,
    /// The block index and the thread index in the block.
    pub(crate) block: IntValue<'c>,
    pub(crate) t: IntValue<'c>,
    /// The shared-window address of the shared memory (what descriptors hold; 0 on the host,
    /// where they hold offsets).
    pub(crate) smem_shared: IntValue<'c>,
}

impl<'c> ProductBody<'c> {
    /// [`ProductBody::add`] with `sa` for a block GEMM: `body(codes, scales, tables, x, y, k, n, m,
    /// post, sa, emu, smem, block, t, smem_shared)`.
    pub(crate) fn add_block(
        ctx: &'c Context,
        module: &Module<'c>,
        name: &str,
    ) -> (ProductBody<'c>, BlockTail<'c>) {
        let ptr = ctx.ptr_type(AddressSpace::default());
        let i64t = ctx.i64_type();
        let pb = ProductBody::add(
            ctx,
            module,
            name,
            true,
            &[
                ptr.into(),
                ptr.into(),
                i64t.into(),
                i64t.into(),
                i64t.into(),
            ],
        );
        let tail = BlockTail {
            emu: pb.tail[0].into_pointer_value(),
            smem: pb.tail[1].into_pointer_value(),
            block: pb.tail[2].into_int_value(),
            t: pb.tail[3].into_int_value(),
            smem_shared: pb.tail[4].into_int_value(),
        };
        (pb, tail)
    }
}

/// How a body issues one warp-level MMA with four A registers, two B registers and four f32
/// accumulators (the shapes m16n8k16 bf16 and m16n8k32 fp8 both have them).
pub(crate) enum Mma<'c> {
    Ptx(FunctionValue<'c>),
    Host {
        emu: FunctionValue<'c>,
        warp: PointerValue<'c>,
        lane: IntValue<'c>,
        out: PointerValue<'c>,
    },
}

impl<'c> Mma<'c> {
    /// For PTX the NVVM intrinsic `intrinsic`; for the host a call of the external `emulator`
    /// (`void emulator(void *warp, int64_t lane, uint32_t a0..a3, uint32_t b0, b1, float c0..c3,
    /// float *d)`). Builds an alloca at the builder's position (the function's entry block).
    pub(crate) fn declare(
        c: &Cx<'c>,
        module: &Module<'c>,
        entries: Entries,
        intrinsic: &'static str,
        emulator: &str,
        warp: PointerValue<'c>,
        lane: IntValue<'c>,
    ) -> Result<Mma<'c>, Error> {
        let ctx = c.ctx;
        Ok(match entries {
            Entries::Ptx => {
                let f = Intrinsic::find(intrinsic)
                    .and_then(|i| i.get_declaration(module, &[]))
                    .ok_or(Error::MissingIntrinsic(intrinsic))?;
                Mma::Ptx(f)
            }
            Entries::Host => {
                let ptr = ctx.ptr_type(AddressSpace::default());
                let mut p: Vec<inkwell::types::BasicMetadataTypeEnum> =
                    vec![ptr.into(), ctx.i64_type().into()];
                p.extend(std::iter::repeat_n(
                    inkwell::types::BasicMetadataTypeEnum::from(ctx.i32_type()),
                    6,
                ));
                p.extend(std::iter::repeat_n(
                    inkwell::types::BasicMetadataTypeEnum::from(ctx.f32_type()),
                    4,
                ));
                p.push(ptr.into());
                let emu = module.add_function(emulator, ctx.void_type().fn_type(&p, false), None);
                let out = c.b.build_alloca(ctx.f32_type().array_type(4), "d")?;
                Mma::Host {
                    emu,
                    warp,
                    lane,
                    out,
                }
            }
        })
    }
}

impl<'c> Mma<'c> {
    /// `d = a * b + acc` for an integer MMA (i32 accumulators, e.g. m16n8k32 s8). On the host the
    /// emulator gets and returns the i32 bits in its f32 arguments.
    pub(crate) fn issue_i32(
        &self,
        c: &Cx<'c>,
        a: &[IntValue<'c>; 4],
        b: &[IntValue<'c>; 2],
        acc: &[IntValue<'c>; 4],
    ) -> Result<[IntValue<'c>; 4], Error> {
        let (i32t, f32t) = (c.ctx.i32_type(), c.ctx.f32_type());
        let mut args: Vec<BasicMetadataValueEnum<'c>> = Vec::with_capacity(13);
        let mut d = [i32t.const_zero(); 4];
        match self {
            Mma::Ptx(f) => {
                args.extend(a.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(b.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(acc.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                let r =
                    c.b.build_call(*f, &args, "")?
                        .try_as_basic_value()
                        .basic()
                        .ok_or(Error::MissingIntrinsic("llvm.nvvm.mma"))?
                        .into_struct_value();
                for (i, slot) in d.iter_mut().enumerate() {
                    *slot = c.b.build_extract_value(r, i as u32, "")?.into_int_value();
                }
            }
            Mma::Host {
                emu,
                warp,
                lane,
                out,
            } => {
                args.push((*warp).into());
                args.push((*lane).into());
                args.extend(a.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(b.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                for v in acc {
                    args.push(c.b.build_bit_cast(*v, f32t, "")?.into());
                }
                args.push((*out).into());
                c.b.build_call(*emu, &args, "")?;
                for (i, slot) in d.iter_mut().enumerate() {
                    let f = c.load_f32(*out, c.i64(i as u64))?;
                    *slot = c.b.build_bit_cast(f, i32t, "")?.into_int_value();
                }
            }
        }
        Ok(d)
    }
}

impl<'c> Mma<'c> {
    /// `d = a * b + acc` for one tile.
    pub(crate) fn issue(
        &self,
        c: &Cx<'c>,
        a: &[IntValue<'c>; 4],
        b: &[IntValue<'c>; 2],
        acc: &[FloatValue<'c>; 4],
    ) -> Result<[FloatValue<'c>; 4], Error> {
        let mut args: Vec<BasicMetadataValueEnum<'c>> = Vec::with_capacity(13);
        match self {
            Mma::Ptx(f) => {
                args.extend(a.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(b.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(acc.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                let r =
                    c.b.build_call(*f, &args, "")?
                        .try_as_basic_value()
                        .basic()
                        .ok_or(Error::MissingIntrinsic("llvm.nvvm.mma"))?
                        .into_struct_value();
                let mut d = [c.ctx.f32_type().const_zero(); 4];
                for (i, slot) in d.iter_mut().enumerate() {
                    *slot = c.b.build_extract_value(r, i as u32, "")?.into_float_value();
                }
                Ok(d)
            }
            Mma::Host {
                emu,
                warp,
                lane,
                out,
            } => {
                args.push((*warp).into());
                args.push((*lane).into());
                args.extend(a.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(b.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.extend(acc.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                args.push((*out).into());
                c.b.build_call(*emu, &args, "")?;
                let mut d = [c.ctx.f32_type().const_zero(); 4];
                for (i, slot) in d.iter_mut().enumerate() {
                    *slot = c.load_f32(*out, c.i64(i as u64))?;
                }
                Ok(d)
            }
        }
    }
}

/// Builds the body and the entry for `entries` into `module`.
pub fn build<'c>(
    ctx: &'c Context,
    module: &Module<'c>,
    spec: &Gemv4,
    entries: Entries,
) -> Result<(), Error> {
    let c = Cx::new(ctx, module)?;
    let ptr = ctx.ptr_type(AddressSpace::default());
    let i64t = ctx.i64_type();
    let i32t = ctx.i32_type();
    let i16t = ctx.i16_type();
    let f32t = ctx.f32_type();

    // body(codes, scales, tables, x, y, k, n, m, post, warp, t)
    let pb = ProductBody::add(
        ctx,
        module,
        "qc_mma4_body",
        false,
        &[ptr.into(), i64t.into()],
    );
    let body = pb.f;
    let (codes, scales, tables, x, y) = (pb.codes, pb.scales, pb.tables, pb.x, pb.y);
    let (k, n, m, post) = (pb.k, pb.n, pb.m, pb.post);
    let warp_arg = pb.tail[0].into_pointer_value();
    let t = pb.tail[1].into_int_value();
    c.b.position_at_end(ctx.append_basic_block(body, "entry"));

    let lane = c.b.build_and(t, c.i64(31), "lane")?;
    let mma = Mma::declare(
        &c,
        module,
        entries,
        "llvm.nvvm.mma.m16n8k16.row.col.bf16",
        EMULATOR,
        warp_arg,
        lane,
    )?;
    // Accumulators: acc[i][j][e] (and tmp for one scale group of f32 scales), as allocas that SROA
    // turns into registers.
    let slots = (TM * TN * 4) as u64;
    let f32_groups = spec.group.filter(|_| !spec.byte_scales);
    let tmp = c.b.build_alloca(f32t.array_type(slots as u32), "tmp")?;
    let WarpTile {
        acc,
        g,
        q,
        m0,
        n0,
        n_last,
    } = WarpTile::new(&c, t, lane, n)?;
    let zero = f32t.const_float(0.0);
    // Activation rows of the A fragments: row[i][h] = m0 + 16i + 8h + g.
    let mut rows = Vec::new();
    for i in 0..TM as u64 {
        for h in 0..2u64 {
            let r = c.b.build_int_add(m0, c.i64(16 * i + 8 * h), "")?;
            rows.push(c.b.build_int_add(r, g, "")?);
        }
    }
    // Weight rows of the B fragments: n0 + 8j + g.
    let mut wrows = Vec::new();
    for j in 0..TN as u64 {
        let r = c.b.build_int_add(n0, c.i64(8 * j), "")?;
        wrows.push(c.b.build_int_add(r, g, "")?);
    }
    let chunk = f32_groups.unwrap_or(16) as u64;
    let chunks = c.b.build_int_unsigned_div(k, c.i64(chunk), "chunks")?;
    let half_k = c.b.build_int_unsigned_div(k, c.i64(2), "")?;
    let groups_per_row = spec
        .group
        .map(|gs| c.b.build_int_unsigned_div(k, c.i64(gs as u64), ""))
        .transpose()?;
    for_loop(&c, body, chunks, |c, ci| {
        let cur = if f32_groups.is_some() {
            for s in 0..slots {
                c.b.build_store(c.gep(f32t.into(), tmp, c.i64(s))?, zero)?;
            }
            tmp
        } else {
            acc
        };
        let base = c.b.build_int_mul(ci, c.i64(chunk), "")?;
        for step in 0..chunk / 16 {
            let k0 = c.b.build_int_add(base, c.i64(16 * step), "k0")?;
            let k4 =
                c.b.build_int_add(k0, c.b.build_int_mul(q, c.i64(4), "")?, "")?;
            // A fragments, hi and lo terms: frag[i] = [a0, a1, a2, a3].
            let mut a_hi = Vec::new();
            let mut a_lo = Vec::new();
            for i in 0..TM {
                // vals[h] = (hi bits, lo bits) of x[row(i, h)][k4 .. k4 + 4].
                let mut his = Vec::new();
                let mut los = Vec::new();
                for h in 0..2 {
                    let v = load_x4(c, x, rows[2 * i + h], m, k, k4)?;
                    let mut hi = Vec::new();
                    let mut lo = Vec::new();
                    for e in 0..4u64 {
                        let xe =
                            c.b.build_extract_element(v, i32t.const_int(e, false), "")?
                                .into_float_value();
                        let hbits = bf16_rn(c, xe)?;
                        let rest = c.b.build_float_sub(xe, bf16_value(c, hbits)?, "")?;
                        hi.push(hbits);
                        lo.push(bf16_rn(c, rest)?);
                    }
                    his.push(hi);
                    los.push(lo);
                }
                for (src, dst) in [(&his, &mut a_hi), (&los, &mut a_lo)] {
                    dst.push([
                        pack(c, src[0][0], src[0][1])?,
                        pack(c, src[1][0], src[1][1])?,
                        pack(c, src[0][2], src[0][3])?,
                        pack(c, src[1][2], src[1][3])?,
                    ]);
                }
            }
            // B fragments: the decoded weights W[n0 + 8j + g][k4 .. k4 + 4].
            let mut bs = Vec::new();
            for &wr in &wrows {
                let nc = umin(c, wr, n_last)?;
                let off = c.b.build_int_mul(nc, half_k, "")?;
                let off =
                    c.b.build_int_add(off, c.b.build_right_shift(k4, c.i64(1), false, "")?, "")?;
                let p = c.gep(ctx.i8_type().into(), codes, off)?;
                let ld = c.b.build_load(i16t, p, "")?;
                ld.as_instruction_value()
                    .unwrap()
                    .set_alignment(2)
                    .map_err(|e| Error::Codegen(e.to_string()))?;
                let word = c.b.build_int_z_extend(ld.into_int_value(), i32t, "")?;
                let scale = match (spec.byte_scales, groups_per_row) {
                    (true, Some(gpr)) => {
                        let gi = c.b.build_int_mul(nc, gpr, "")?;
                        let within =
                            c.b.build_int_unsigned_div(k0, c.i64(spec.group.unwrap() as u64), "")?;
                        let gi = c.b.build_int_add(gi, within, "")?;
                        Some(scale_at(c, spec, scales, tables, gi)?)
                    }
                    _ => None,
                };
                let mut h = Vec::new();
                for e in 0..4u64 {
                    let sh =
                        c.b.build_right_shift(word, i32t.const_int(4 * e, false), false, "")?;
                    let code = c.b.build_and(sh, i32t.const_int(15, false), "")?;
                    let mut v = if spec.signed_int {
                        let x8 = c.b.build_xor(code, i32t.const_int(8, false), "")?;
                        let s = c.b.build_int_sub(x8, i32t.const_int(8, false), "")?;
                        c.b.build_signed_int_to_float(s, f32t, "")?
                    } else {
                        let idx = c.b.build_int_z_extend(code, i64t, "")?;
                        c.load_f32(tables, idx)?
                    };
                    if let Some(s) = scale {
                        // Exact: a code value times a one-byte scale fits bf16 (module docs).
                        v = c.b.build_float_mul(v, s, "")?;
                    }
                    let bits = c.b.build_bit_cast(v, i32t, "")?.into_int_value();
                    h.push(c.b.build_right_shift(bits, i32t.const_int(16, false), false, "")?);
                }
                let inside = c.b.build_int_compare(IntPredicate::ULT, wr, n, "")?;
                let b0 = pack(c, h[0], h[1])?;
                let b1 = pack(c, h[2], h[3])?;
                let z = i32t.const_zero();
                bs.push([
                    c.b.build_select(inside, b0, z, "")?.into_int_value(),
                    c.b.build_select(inside, b1, z, "")?.into_int_value(),
                ]);
            }
            for i in 0..TM {
                for (j, bj) in bs.iter().enumerate() {
                    let at = ((i * TN + j) * 4) as u64;
                    let mut d = [zero; 4];
                    for (e, slot) in d.iter_mut().enumerate() {
                        *slot = c.load_f32(cur, c.i64(at + e as u64))?;
                    }
                    let d = mma.issue(c, &a_hi[i], bj, &d)?;
                    let d = mma.issue(c, &a_lo[i], bj, &d)?;
                    for (e, v) in d.iter().enumerate() {
                        c.b.build_store(c.gep(f32t.into(), cur, c.i64(at + e as u64))?, *v)?;
                    }
                }
            }
        }
        if let (Some(_), Some(gpr)) = (f32_groups, groups_per_row) {
            // acc += scale[col][chunk] * group sum, col = n0 + 8j + 2q + (e & 1).
            for j in 0..TN as u64 {
                let mut sc = Vec::new();
                for e in 0..2u64 {
                    let col = c.b.build_int_add(n0, c.i64(8 * j + e), "")?;
                    let col =
                        c.b.build_int_add(col, c.b.build_int_mul(q, c.i64(2), "")?, "")?;
                    let col = umin(c, col, n_last)?;
                    let gi = c.b.build_int_mul(col, gpr, "")?;
                    let gi = c.b.build_int_add(gi, ci, "")?;
                    sc.push(scale_at(c, spec, scales, tables, gi)?);
                }
                for i in 0..TM as u64 {
                    for e in 0..4u64 {
                        let at = (i * TN as u64 + j) * 4 + e;
                        let s = c.load_f32(tmp, c.i64(at))?;
                        let a = c.load_f32(acc, c.i64(at))?;
                        let r = c.fma(sc[(e & 1) as usize], s, a)?;
                        c.b.build_store(c.gep(f32t.into(), acc, c.i64(at))?, r)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    // y[row][col] = acc * row scale * post, row = m0 + 16i + 8(e / 2) + g, col = n0 + 8j + 2q + e % 2.
    for i in 0..TM as u64 {
        for j in 0..TN as u64 {
            for e in 0..4u64 {
                let at = (i * TN as u64 + j) * 4 + e;
                let row = c.b.build_int_add(m0, c.i64(16 * i + 8 * (e / 2)), "")?;
                let row = c.b.build_int_add(row, g, "")?;
                let col = c.b.build_int_add(n0, c.i64(8 * j + e % 2), "")?;
                let col =
                    c.b.build_int_add(col, c.b.build_int_mul(q, c.i64(2), "")?, "")?;
                let r_in = c.b.build_int_compare(IntPredicate::ULT, row, m, "")?;
                let c_in = c.b.build_int_compare(IntPredicate::ULT, col, n, "")?;
                let both = c.b.build_and(r_in, c_in, "")?;
                let store = ctx.append_basic_block(body, "store");
                let next = ctx.append_basic_block(body, "next");
                c.b.build_conditional_branch(both, store, next)?;
                c.b.position_at_end(store);
                let mut v = c.load_f32(acc, c.i64(at))?;
                if spec.group.is_none() {
                    let rs = scale_at(&c, spec, scales, tables, col)?;
                    v = c.b.build_float_mul(v, rs, "")?;
                }
                let v = c.b.build_float_mul(v, post, "")?;
                let idx = c.b.build_int_mul(row, n, "")?;
                let idx = c.b.build_int_add(idx, col, "")?;
                c.b.build_store(c.gep(f32t.into(), y, idx)?, v)?;
                c.b.build_unconditional_branch(next)?;
                c.b.position_at_end(next);
            }
        }
    }
    c.b.build_return(None)?;

    warp_tile_entry(&c, module, body, ENTRY, 9, entries, product_warps)
}

/// The PTX of [`ENTRY`] for `spec` and `target`.
pub fn emit_ptx(target: GpuTarget, spec: &Gemv4) -> Result<String, Error> {
    compile_ptx(
        &target_machine(target)?,
        "qc_mma4",
        "default<O3>",
        |c, m| build(c, m, spec, Entries::Ptx),
    )
}

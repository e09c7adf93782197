//! GEMMs for Blackwell data-center GPUs (sm_100a) on the fifth-generation tensor cores:
//! `tcgen05.mma` with operands in shared memory and the accumulator (and scale factors) in tensor
//! memory. Three products ([`Tc05`]), the weights read from their blob as they are:
//! - [`Tc05::Fp4`], the W4A4 products of [`crate::fp4`] (NVFP4 x NVFP4 with
//!   `kind::mxf4nvf4.block_scale.block16` = `scale_vec::4X`, ue4m3 scales per 16 elements; MXFP4 x
//!   MXFP4 with `kind::mxf4.block_scale.block32`, ue8m0 scales per 32), the f32 activations
//!   quantized in the kernel with [`crate::fquant`]'s block quantizer (bit for bit the
//!   interpreter's); k-steps of 64, one MMA each;
//! - [`Tc05::W4`], 4-bit weights with byte group scales (NVFP4, MXFP4, NVINT4) times f32
//!   activations: `kind::f16` with bf16 operands, the weights decoded and scaled in bf16 (exact: a
//!   4-bit code times a ue4m3 or e8m0 scale has at most 7 significant bits), the activations split
//!   into `hi = bf16(x)` and `lo = bf16(x - hi)` as `mma4` does; k-steps of 32, four MMAs each
//!   (`hi * w` and `lo * w` for each K = 16 half);
//! - [`Tc05::Fp8`], FP8 weights (a scale per tensor or per row) by activations the kernel quantizes
//!   to FP8 per tensor as `mma8` does: `kind::f8f6f4` with e4m3 / e5m2 operands, k-steps of 32, one
//!   MMA each.
//!
//! # Kernels
//! [`ENTRY`], [`ENTRY_W4`] and [`ENTRY_FP8`]`(codes, scales, tables, x, y, k, n, m, post, tamax)`:
//! - A block of [`BLOCK`] = 128 threads (a warpgroup) computes the [`TILE`] x [`TILE`] (128 x 128)
//!   tile `(b / ceil(N / 128), b % ceil(N / 128))` of `y`, `b` the block index: launch
//!   `ceil(M / 128) * ceil(N / 128)` blocks. `tables` (the code and scale values of
//!   [`Gemv4::tables`]) is read by the W4 kernel only; `tamax` is the NVFP4 activations' static
//!   maximum for the FP4 kernel, the activation scale `sa` for the FP8 one, unused by W4. K must be
//!   a positive multiple of the k-step (and, for W4, of the group).
//! - Setup: warp 0 allocates [`TMEM_COLUMNS`] columns of tensor memory (`tcgen05.alloc`, the address
//!   written to shared memory), thread 0 initializes an mbarrier (count 1); fences and `bar.sync`.
//! - Tiles in shared memory are K-major without swizzling: core matrices of 8 rows x 16 bytes, row
//!   `r`, byte `kb` of a tile at `(r / 8) * SBO + (kb / 16) * LBO + (r % 8) * 16 + kb % 16`, LBO =
//!   128 and SBO = 8 rows (256 bytes for the 32-byte rows of FP4 and FP8, 512 for W4's 64-byte
//!   rows).
//! - W4, each k-step of 32: thread `t` writes the hi and lo bf16 terms of activation row `m0 + t`
//!   (zeros past M) to two A tiles, and weight row `n0 + t` decoded times its group scales (zeros
//!   past N) to the B tile; the synchronization and the MMAs as below (the first MMA of the first
//!   step starts the accumulator).
//! - FP8, each k-step of 32: thread `t` writes activation row `m0 + t` quantized to FP8 bytes
//!   (`round(x / sa)`) to the A tile and weight row `n0 + t`'s 32 FP8 bytes to the B tile.
//! - FP4, each k-step of 64: thread `t` quantizes activation row `m0 + t` (zeros past M) block by
//!   block and writes its 32 code bytes to the A tile, and copies weight row `n0 + t`'s 32 code
//!   bytes (zeros past N) to the B tile, each byte two e2m1 codes, the lower K in the low nibble
//!   (the blob's order). Each row's scales make one 32-bit word, byte `j` the scale of the row's
//!   `j`-th block of the step (4 blocks of 16, or 2 of 32 in the low half). The scale factors go to
//!   tensor memory as the MMA wants them, "duplicated to all 32 lane partitions": the word of A's
//!   row `r` in column [`SFA_COLUMN`]` + r / 32` of lane `r % 32` of each lane quarter (B's rows
//!   from [`SFB_COLUMN`] likewise). So the threads put their words in shared memory, `bar.sync`,
//!   and each warp writes the whole table into its own quarter (`tcgen05.st.32x32b.x4`: thread
//!   `32 w + l` the words of rows `l`, `32 + l`, `64 + l`, `96 + l`). This is the layout of
//!   CUTLASS's `SfKMajorAtom` and of DeepGEMM (the ISA draws it only in figures).
//! - Then `fence.proxy.async.shared::cta` (the MMA reads shared memory through the async proxy),
//!   `tcgen05.wait::st`, `tcgen05.fence::before_thread_sync`, `bar.sync`,
//!   `tcgen05.fence::after_thread_sync`; thread 0 issues the step's MMAs (M = N = 128,
//!   accumulating from the second step on) and `tcgen05.commit`s them to the mbarrier; every
//!   thread waits for the mbarrier's phase `step % 2` before the tiles and scales are overwritten.
//! - The end: the accumulator is D in tensor memory, row `r` in lane `r`, column `j` in column `j`;
//!   warp `w` loads its 32 lanes (`tcgen05.ld.32x32b.x32`, four times 32 columns), and thread `t`
//!   writes `y[m0 + t][n0 + j] = d * g * post` for the rows and columns inside `y`: `g` the NVFP4
//!   activations' global scale `tamax / (6 * 448)` (1 for a zero `tamax`, 1 for MXFP4 and W4),
//!   `post` the weights' tensor scale (FP8: `y = d * sa * (weight scale) * post`). Warp 0 frees
//!   the tensor memory.
//!
//! The tests run the body on the host: 128 OS threads per block, shared memory a host buffer (the
//! descriptors then hold offsets into it), tensor memory and the tensor-core operations as calls of
//! emulators written from the PTX ISA's description ([`Entries::Host`]).

use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::Module;
use inkwell::types::BasicMetadataTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, BasicValue, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};

use crate::fp4::{Fp4, Fp4Kind};
use crate::fquant::{e2m1_code, quantize_block};
use crate::gemv4::{for_loop, scale_at, Cx, Entries, Gemv4};
use crate::mma4::{bf16_rn, bf16_value, block_entry, block_tile, load_x4, pack, umin, ProductBody};
use crate::mma8::{final_weight_scale, quantize_act4, Mma8, Weights8};
use crate::{compile_ptx, target_machine_with, Error, GpuTarget};

/// The W4A4 FP4 kernel's entry.
pub const ENTRY: &str = "qc_tcgen05_fp4";
/// Threads per block: one warpgroup.
pub const BLOCK: u32 = 128;
/// Rows and columns of `y` per block (the MMA's M and N).
pub const TILE: u64 = 128;
/// The fewest rows (M) for which the compiler picks this kernel; fewer rows run the 4-bit GEMV or
/// `mma4` on fake-quantized activations. Half a tile, as for `wgmma8`; not yet measured.
pub const MIN_ROWS: u64 = 64;
/// Tensor-memory columns allocated (a power of two of at least 32): the accumulator's 128, then
/// the FP4 kernel's scale factors.
pub const TMEM_COLUMNS: u32 = 256;
/// The first of the four tensor-memory columns of A's scale factors.
pub const SFA_COLUMN: u32 = 128;
/// The first of the four tensor-memory columns of B's scale factors.
pub const SFB_COLUMN: u32 = 132;
/// The descriptors' LBO: bytes between core matrices along K (both kernels).
pub const LBO: u64 = 128;
/// The W4A16 kernel's entry.
pub const ENTRY_W4: &str = "qc_tcgen05_w4";
/// The FP8 kernel's entry.
pub const ENTRY_FP8: &str = "qc_tcgen05_fp8";

/// A product the kernels of this module compute.
#[derive(Clone, Debug, PartialEq)]
pub enum Tc05 {
    /// W4A4 NVFP4 / MXFP4 ([`ENTRY`]): block-scaled `kind::mxf4nvf4` / `kind::mxf4`, k-steps of 64.
    Fp4(Fp4),
    /// 4-bit weights with one-byte group scales (NVFP4, MXFP4, NVINT4) times f32 activations
    /// ([`ENTRY_W4`]): `kind::f16` with bf16 operands, k-steps of 32. The weights are decoded to
    /// bf16 (a code times its byte scale is exact there; the tensor scale is applied at the end),
    /// the activations split into `hi = bf16(x)` and `lo = bf16(x - hi)` (as `mma4` does), and
    /// each k-step is the MMAs `hi * w + lo * w`, K = 16 each.
    W4(Gemv4),
    /// FP8 weights (per tensor or per row) times activations quantized to FP8 per tensor in the
    /// kernel, as `mma8` computes it ([`ENTRY_FP8`]): `kind::f8f6f4` with e4m3 / e5m2 operands,
    /// k-steps of 32, one MMA each; `y = sum * sa * (weight scale) * post`, `sa` the activation
    /// scale passed in the `tamax` parameter.
    Fp8(Mma8),
}

/// Where a kernel keeps what in shared memory (bytes), and its tiles' SBO.
struct Layout {
    /// The A tile (the hi terms for [`Tc05::W4`]).
    a: u64,
    /// The lo terms' A tile ([`Tc05::W4`]).
    a_lo: Option<u64>,
    b: u64,
    /// The scale-word exchange ([`Tc05::Fp4`]): A's 128 words, then B's.
    sf_x: Option<u64>,
    mbar: u64,
    slot: u64,
    size: u64,
    /// Bytes between 8-row groups of a tile: 8 rows of `row_bytes`.
    sbo: u64,
}

impl Tc05 {
    /// The W4A16 product of weights `spec` for reduction length `k`, or why the kernel does not
    /// read it: byte scales per group along K (so that code times scale is exact in bf16), K a
    /// multiple of 32 and of the group.
    pub fn w4(spec: &Gemv4, k: u64) -> Result<Tc05, String> {
        let Some(g) = spec.group else {
            return Err("per-row scales (the kernel scales groups in bf16)".into());
        };
        if !spec.byte_scales {
            return Err("f32 scales are not exact in bf16".into());
        }
        if k == 0 || !k.is_multiple_of(32) || !k.is_multiple_of(g as u64) {
            return Err(format!("K = {k} is not a multiple of 32 and of the group"));
        }
        Ok(Tc05::W4(spec.clone()))
    }

    /// The FP8 product `spec`, or why the kernel does not compute it: FP8 weights with a scale per
    /// tensor or per row (grouped weights need scales inside the sum, which the accumulator in
    /// tensor memory does not allow) and FP8 activations, K a multiple of 32.
    pub fn fp8(spec: &Mma8, k: u64) -> Result<Tc05, String> {
        if !matches!(spec.weights, Weights8::Fp8 { .. }) || spec.is_int8() {
            return Err("FP8 weights and activations only".into());
        }
        if k == 0 || !k.is_multiple_of(32) {
            return Err(format!("K = {k} is not a multiple of 32"));
        }
        Ok(Tc05::Fp8(spec.clone()))
    }

    /// The kernel's entry.
    pub fn entry(&self) -> &'static str {
        match self {
            Tc05::Fp4(_) => ENTRY,
            Tc05::W4(_) => ENTRY_W4,
            Tc05::Fp8(_) => ENTRY_FP8,
        }
    }

    /// K elements per k-step.
    pub fn k_step(&self) -> u64 {
        match self {
            Tc05::Fp4(_) => crate::fp4::K_STEP,
            Tc05::W4(_) | Tc05::Fp8(_) => 32,
        }
    }

    /// The offset of the scales in the weights' blob of `W[n, k]`.
    pub fn scales_offset(&self, n: usize, k: usize) -> usize {
        match self {
            Tc05::Fp4(f) => f.scales_offset(n, k),
            Tc05::W4(g) => g.sections(n, k).scales,
            Tc05::Fp8(f) => f.scales_offset(n, k),
        }
    }

    /// The kernels' `tables` argument (read by W4 only; the others take the same list).
    pub fn tables(&self) -> Result<Vec<f32>, String> {
        match self {
            Tc05::Fp4(f) => f.weights.tables(),
            Tc05::W4(g) => g.tables(),
            Tc05::Fp8(f) => f.tables(),
        }
    }

    /// The kernels' `post` argument for a blob: the weights' tensor scale, or 1.
    pub fn post(&self, blob: &[u8], n: usize, k: usize) -> Result<f32, String> {
        match self {
            Tc05::Fp4(f) => f.post(blob, n, k),
            Tc05::W4(g) => g.post(blob, n, k),
            Tc05::Fp8(f) => f.post(blob, n, k),
        }
    }

    fn layout(&self) -> Layout {
        // One tile row per k-step: 64 e2m1 codes, 32 bf16 or 32 FP8 bytes.
        let row_bytes = match self {
            Tc05::Fp4(_) | Tc05::Fp8(_) => 32,
            Tc05::W4(_) => 64,
        };
        let tile = TILE * row_bytes;
        let (a_lo, b, sf_x, mbar) = match self {
            Tc05::Fp4(_) => (None, tile, Some(2 * tile), 2 * tile + 2 * 4 * TILE),
            Tc05::W4(_) => (Some(tile), 2 * tile, None, 3 * tile),
            Tc05::Fp8(_) => (None, tile, None, 2 * tile),
        };
        Layout {
            a: 0,
            a_lo,
            b,
            sf_x,
            mbar,
            slot: mbar + 8,
            size: mbar + 16,
            sbo: 8 * row_bytes,
        }
    }

    /// Bytes of shared memory a block uses (the tiles, the mbarrier, the tensor-memory address).
    pub fn smem(&self) -> u64 {
        self.layout().size
    }

    /// The instruction descriptor of the MMAs (PTX ISA, "Instruction descriptor"): dense, no
    /// negation, both operands K-major (bits 15, 16: 0), N / 8 (bits 17-22), M / 16 (bits 24-28);
    /// - `Fp4` (the table "for .kind::mxf8f6f4, .kind::mxf4 and .kind::mxf4nvf4"): scale-factor
    ///   IDs 0 (bits 4-5, 29-30), A and B e2m1 (bits 7-9 and 10-12: 1 for the mxf4 kinds), the
    ///   scale type (bit 23: 0 ue4m3, 1 ue8m0);
    /// - `W4` (the table "for .kind::tf32, .kind::f16, .kind::f8f6f4 and .kind::i8"): D f32 (bits
    ///   4-5: 1), A and B bf16 (bits 7-9 and 10-12: 1).
    pub fn instruction_descriptor(&self) -> u32 {
        let (m, n) = (TILE as u32, TILE as u32);
        let shape = ((n >> 3) << 17) | ((m >> 4) << 24);
        match self {
            Tc05::Fp4(f) => {
                let e2m1 = 1u32;
                let scale_type = match f.kind {
                    Fp4Kind::Nvfp4 => 0,
                    Fp4Kind::Mxfp4 => 1,
                };
                (e2m1 << 7) | (e2m1 << 10) | (scale_type << 23) | shape
            }
            Tc05::W4(_) => {
                let (f32d, bf16) = (1u32, 1u32);
                (f32d << 4) | (bf16 << 7) | (bf16 << 10) | shape
            }
            // kind::f8f6f4: E4M3 = 0, E5M2 = 1.
            Tc05::Fp8(f) => {
                let f32d = 1u32;
                (f32d << 4)
                    | ((f.act_e5m2() as u32) << 7)
                    | ((f.weight_e5m2() as u32) << 10)
                    | shape
            }
        }
    }

    /// The host MMA emulator's `kind` argument ([`MMA_EMULATOR`]).
    fn emulator_kind(&self) -> u64 {
        match self {
            Tc05::W4(_) => 0,
            Tc05::Fp4(f) if f.kind == Fp4Kind::Nvfp4 => 1,
            Tc05::Fp4(_) => 2,
            Tc05::Fp8(_) => 3,
        }
    }
}

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
/// Host emulator of `tcgen05.mma` (issued by one thread, complete on return): `void (void *block,
/// uint32_t kind, uint32_t d_taddr, uint64_t a_desc, uint64_t b_desc, uint32_t idesc, uint32_t
/// enable_input_d, uint32_t sfa_taddr, uint32_t sfb_taddr)`, `kind` 0 for `kind::f16`, 1 for
/// `kind::mxf4nvf4.block_scale.block16`, 2 for `kind::mxf4.block_scale.block32`, 3 for
/// `kind::f8f6f4` (the scale addresses unused for 0 and 3).
pub const MMA_EMULATOR: &str = "qc_tc_mma";

/// The shared-memory matrix descriptor (Blackwell format) of a tile at shared address `addr`:
/// start address `addr >> 4` (bits 0-13), LBO >> 4 (16-29), SBO >> 4 (32-45), the fixed version
/// bits 46-48 = 0b001, base offset 0, no swizzling (bits 61-63 = 0).
fn descriptor<'c>(c: &Cx<'c>, addr: IntValue<'c>, sbo: u64) -> Result<IntValue<'c>, Error> {
    let start = c.b.build_and(
        c.b.build_right_shift(addr, c.i64(4), false, "")?,
        c.i64(0x3fff),
        "",
    )?;
    Ok(c.b.build_or(
        start,
        c.i64(((LBO >> 4) << 16) | ((sbo >> 4) << 32) | (1 << 46)),
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
        spec: &Tc05,
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
        let mma = match spec {
            Tc05::Fp4(f) if f.kind == Fp4Kind::Nvfp4 => {
                "llvm.nvvm.tcgen05.mma.shared.mxf4nvf4.block_scale.block16"
            }
            Tc05::Fp4(_) => "llvm.nvvm.tcgen05.mma.shared.mxf4.block_scale.block32",
            Tc05::W4(_) | Tc05::Fp8(_) => "llvm.nvvm.tcgen05.mma.shared",
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
    spec: &Tc05,
    entries: Entries,
) -> Result<(), Error> {
    let c = Cx::new(ctx, module)?;
    let lay = spec.layout();
    let smem_ptr = ctx.ptr_type(AddressSpace::from(3u16));
    let tmem_ptr = ctx.ptr_type(AddressSpace::from(6u16));
    let (i64t, i32t, i1t, f32t) = (
        ctx.i64_type(),
        ctx.i32_type(),
        ctx.bool_type(),
        ctx.f32_type(),
    );
    let host = entries == Entries::Host;
    let ops = Ops::declare(ctx, module, spec, host)?;

    // body(codes, scales, tables, x, y, k, n, m, post, tamax, emu, smem, block, t, smem_shared).
    let (pb, bt) = ProductBody::add_block(ctx, module, &format!("{}_body", spec.entry()));
    let body = pb.f;
    let (codes, scales, tables, x, y) = (pb.codes, pb.scales, pb.tables, pb.x, pb.y);
    let (k, n, m, post) = (pb.k, pb.n, pb.m, pb.post);
    let tamax = pb.sa.expect("the body takes tamax");
    let (emu, smem, block, t, smem_shared) = (bt.emu, bt.smem, bt.block, bt.t, bt.smem_shared);
    c.b.position_at_end(ctx.append_basic_block(body, "entry"));

    let i32c = |v: u64| i32t.const_int(v, false);
    let w = c.b.build_right_shift(t, c.i64(5), false, "w")?;
    let w32 = c.b.build_int_truncate(w, i32t, "")?;
    let is_warp0 = c.b.build_int_compare(IntPredicate::EQ, w, c.i64(0), "")?;
    let is_t0 = c.b.build_int_compare(IntPredicate::EQ, t, c.i64(0), "")?;
    let slot_generic = c.gep(ctx.i8_type().into(), smem, c.i64(lay.slot))?;
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
                        shared_at(lay.slot)?.into(),
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
            call(
                c,
                *mbar_init,
                &[shared_at(lay.mbar)?.into(), i32c(1).into()],
            )?;
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
    let (m0, n0) = block_tile(&c, block, n, TILE)?;
    let arow = c.b.build_int_add(m0, t, "arow")?;
    let brow = c.b.build_int_add(n0, t, "brow")?;
    let b_in = c.b.build_int_compare(IntPredicate::ULT, brow, n, "")?;
    let brow_c = umin(&c, brow, c.b.build_int_sub(n, c.i64(1), "")?)?;
    // Row t of a tile (its 16-byte pieces along K then LBO apart).
    let slot = c.b.build_int_add(
        c.b.build_int_mul(
            c.b.build_right_shift(t, c.i64(3), false, "")?,
            c.i64(lay.sbo),
            "",
        )?,
        c.b.build_int_mul(c.b.build_and(t, c.i64(7), "")?, c.i64(16), "")?,
        "slot",
    )?;
    // The tiles' descriptors at byte offset `off` along K.
    let desc_at = |c: &Cx<'c>, tile: u64, off: u64| -> Result<IntValue<'c>, Error> {
        descriptor(
            c,
            c.b.build_int_add(smem_shared, c.i64(tile + off), "")?,
            lay.sbo,
        )
    };
    let idesc = i32c(spec.instruction_descriptor() as u64);
    let v4i32 = i32t.vec_type(4);
    let half_k = c.b.build_right_shift(k, c.i64(1), false, "")?;
    let steps =
        c.b.build_int_unsigned_div(k, c.i64(spec.k_step()), "steps")?;
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

    // Row `t` of the tile at `tile`: `words` (16-byte pieces LBO apart).
    let store_row = |c: &Cx<'c>, tile: u64, words: &[IntValue<'c>]| -> Result<(), Error> {
        for (h, piece) in words.chunks(4).enumerate() {
            let mut v = v4i32.get_undef();
            for (e, w) in piece.iter().enumerate() {
                v = c.b.build_insert_element(v, *w, i32c(e as u64), "")?;
            }
            store16(
                c,
                c.b.build_int_add(slot, c.i64(tile + h as u64 * LBO), "")?,
                v,
            )?;
        }
        Ok(())
    };

    // `pieces` 16-byte pieces of the weights' codes from byte `off` (of row `brow`), as 32-bit
    // words; zeros past N.
    let weight_words =
        |c: &Cx<'c>, off: IntValue<'c>, pieces: u64| -> Result<Vec<IntValue<'c>>, Error> {
            let mut words = Vec::with_capacity(4 * pieces as usize);
            for h in 0..pieces {
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
                for e in 0..4u64 {
                    words.push(c.b.build_extract_element(v, i32c(e), "")?.into_int_value());
                }
            }
            Ok(words)
        };
    // One k-step's tiles and scale factors of the FP4 kernel.
    let fp4_step = |c: &Cx<'c>, f: &Fp4, k0: IntValue<'c>| -> Result<(), Error> {
        let bs = f.block();
        let sf_x = lay.sf_x.expect("the FP4 layout exchanges scales");
        let scales_per_row = c.b.build_int_unsigned_div(k, c.i64(bs), "")?;
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
            let qb = quantize_block(ctx, &c.b, module, &f.act, chunk, tamax)?;
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
        store_row(c, lay.a, &words)?;
        put_word(c, sf_x, sf_word)?;
        // 3. Weight row `brow`: its 32 code bytes into B, its scale bytes into tensor memory.
        let off = c.b.build_int_add(
            c.b.build_int_mul(brow_c, half_k, "")?,
            c.b.build_right_shift(k0, c.i64(1), false, "")?,
            "",
        )?;
        store_row(c, lay.b, &weight_words(c, off, 2)?)?;
        let sidx = c.b.build_int_add(
            c.b.build_int_mul(brow_c, scales_per_row, "")?,
            c.b.build_int_unsigned_div(k0, c.i64(bs), "")?,
            "",
        )?;
        let sp = c.gep(ctx.i8_type().into(), scales, sidx)?;
        let word = match f.kind {
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
        put_word(c, sf_x + 4 * TILE, word)?;
        // Every warp writes the whole 128 x 4 scale table into its lane quarter (the MMA wants the
        // scale factors in all four): rows 32 q + lane in column q.
        match &ops {
            Ops::Ptx { bar, .. } => call(c, *bar, &[i32c(0).into()])?,
            Ops::Host { bar, .. } => call(c, *bar, &[emu.into()])?,
        };
        let a_words = gather(c, sf_x)?;
        tst(
            c,
            c.b.build_int_add(my_lanes, i32c(SFA_COLUMN as u64), "")?,
            &a_words,
        )?;
        let b_words = gather(c, sf_x + 4 * TILE)?;
        tst(
            c,
            c.b.build_int_add(my_lanes, i32c(SFB_COLUMN as u64), "")?,
            &b_words,
        )?;
        Ok(())
    };
    // One k-step's tiles of the W4A16 kernel: activation row `arow` as hi and lo bf16 terms, weight
    // row `brow` decoded and scaled in bf16 (exact for byte scales).
    let w4_step = |c: &Cx<'c>, g: &Gemv4, k0: IntValue<'c>| -> Result<(), Error> {
        let (mut hi, mut lo) = (Vec::with_capacity(32), Vec::with_capacity(32));
        for q4 in 0..8u64 {
            let kc = c.b.build_int_add(k0, c.i64(4 * q4), "")?;
            let v = load_x4(c, x, arow, m, k, kc)?;
            for e in 0..4u64 {
                let xe =
                    c.b.build_extract_element(v, i32c(e), "")?
                        .into_float_value();
                let h = bf16_rn(c, xe)?;
                let rest = c.b.build_float_sub(xe, bf16_value(c, h)?, "")?;
                hi.push(h);
                lo.push(bf16_rn(c, rest)?);
            }
        }
        let pairs = |v: &[IntValue<'c>]| -> Result<Vec<IntValue<'c>>, Error> {
            v.chunks(2).map(|p| pack(c, p[0], p[1])).collect()
        };
        store_row(c, lay.a, &pairs(&hi)?)?;
        store_row(
            c,
            lay.a_lo.expect("the W4 layout has lo terms"),
            &pairs(&lo)?,
        )?;
        let off = c.b.build_int_add(
            c.b.build_int_mul(brow_c, half_k, "")?,
            c.b.build_right_shift(k0, c.i64(1), false, "")?,
            "",
        )?;
        let cw = weight_words(c, off, 1)?;
        let group = g.group.expect("W4 weights have groups") as u64;
        let groups_per_row = c.b.build_int_unsigned_div(k, c.i64(group), "")?;
        let mut scale = None;
        let mut wbits = Vec::with_capacity(32);
        for e in 0..32u64 {
            if e % group == 0 || scale.is_none() {
                let gi = c.b.build_int_add(
                    c.b.build_int_mul(brow_c, groups_per_row, "")?,
                    c.b.build_int_unsigned_div(
                        c.b.build_int_add(k0, c.i64(e), "")?,
                        c.i64(group),
                        "",
                    )?,
                    "",
                )?;
                scale = Some(scale_at(c, g, scales, tables, gi)?);
            }
            let word = cw[(e / 8) as usize];
            let code = c.b.build_and(
                c.b.build_right_shift(word, i32c(4 * (e % 8)), false, "")?,
                i32c(15),
                "",
            )?;
            let val = if g.signed_int {
                let sv =
                    c.b.build_int_sub(c.b.build_xor(code, i32c(8), "")?, i32c(8), "")?;
                c.b.build_signed_int_to_float(sv, f32t, "")?
            } else {
                c.load_f32(tables, c.b.build_int_z_extend(code, i64t, "")?)?
            };
            let wv = c.b.build_float_mul(val, scale.unwrap(), "")?;
            let bits = bf16_rn(c, wv)?;
            wbits.push(c.b.build_select(b_in, bits, i32c(0), "")?.into_int_value());
        }
        store_row(c, lay.b, &pairs(&wbits)?)
    };
    // One k-step's tiles of the FP8 kernel: activation row `arow` quantized to FP8 bytes (as
    // `mma8` does), weight row `brow`'s 32 FP8 bytes.
    let fp8_step = |c: &Cx<'c>, f: &Mma8, k0: IntValue<'c>| -> Result<(), Error> {
        let mut words = Vec::with_capacity(8);
        for q4 in 0..8u64 {
            let kc = c.b.build_int_add(k0, c.i64(4 * q4), "")?;
            let v = load_x4(c, x, arow, m, k, kc)?;
            words.push(quantize_act4(c, module, &f.act, v, tamax)?);
        }
        store_row(c, lay.a, &words)?;
        let off =
            c.b.build_int_add(c.b.build_int_mul(brow_c, k, "")?, k0, "")?;
        store_row(c, lay.b, &weight_words(c, off, 2)?)
    };
    for_loop(&c, body, steps, |c, si| {
        let k0 = c.b.build_int_mul(si, c.i64(spec.k_step()), "k0")?;
        match spec {
            Tc05::Fp4(f) => fp4_step(c, f, k0)?,
            Tc05::W4(g) => w4_step(c, g, k0)?,
            Tc05::Fp8(f) => fp8_step(c, f, k0)?,
        }
        // 4. Make the tiles and scales visible to the tensor core; one thread issues the MMA.
        if let Ops::Ptx { proxy, wait_st, .. } = &ops {
            call(c, *proxy, &[])?;
            call(c, *wait_st, &[])?;
        }
        sync(c)?;
        let later = c.b.build_int_compare(IntPredicate::NE, si, c.i64(0), "")?;
        when(c, is_t0, &|c| {
            // (A tile, B tile, byte offset along K, the first MMA of the step): FP4 one MMA of
            // K = 64; W4 hi and lo for each K = 16 half of the step (two core matrices, 2 LBO).
            let issues: Vec<(u64, u64, u64, bool)> = match spec {
                Tc05::Fp4(_) | Tc05::Fp8(_) => vec![(lay.a, lay.b, 0, true)],
                Tc05::W4(_) => {
                    let lo = lay.a_lo.expect("lo terms");
                    (0..2u64)
                        .flat_map(|h| {
                            [
                                (lay.a, lay.b, 2 * LBO * h, h == 0),
                                (lo, lay.b, 2 * LBO * h, false),
                            ]
                        })
                        .collect()
                }
            };
            for (at, bt, off, first) in issues {
                let accumulate = if first {
                    later
                } else {
                    c.ctx.bool_type().const_all_ones()
                };
                let (a_desc, b_desc) = (desc_at(c, at, off)?, desc_at(c, bt, off)?);
                match &ops {
                    Ops::Ptx { mma, .. } => {
                        let mut args: Vec<BasicMetadataValueEnum> = vec![
                            tmem_at(tmem)?.into(),
                            a_desc.into(),
                            b_desc.into(),
                            idesc.into(),
                            accumulate.into(),
                        ];
                        match spec {
                            Tc05::Fp4(_) => {
                                args.extend::<[BasicMetadataValueEnum; 2]>([
                                    tmem_at(sfa)?.into(),
                                    tmem_at(sfb)?.into(),
                                ]);
                                args.extend::<[BasicMetadataValueEnum; 2]>([
                                    i32c(1).into(),
                                    i32c(0).into(),
                                ]);
                            }
                            // kind::f16 (0) or kind::f8f6f4 (2), cta_group::1,
                            // collector::a::discard.
                            Tc05::W4(_) | Tc05::Fp8(_) => {
                                let kind = if matches!(spec, Tc05::W4(_)) { 0 } else { 2 };
                                args.extend::<[BasicMetadataValueEnum; 3]>([
                                    i32c(kind).into(),
                                    i32c(1).into(),
                                    i32c(0).into(),
                                ])
                            }
                        }
                        call(c, *mma, &args)?;
                    }
                    Ops::Host { mma, .. } => {
                        call(
                            c,
                            *mma,
                            &[
                                emu.into(),
                                i32c(spec.emulator_kind()).into(),
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
            }
            if let Ops::Ptx { commit, .. } = &ops {
                call(c, *commit, &[shared_at(lay.mbar)?.into()])?;
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
                let ok = call(c, *mbar_wait, &[shared_at(lay.mbar)?.into(), parity.into()])?
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
    let g = match spec {
        Tc05::Fp4(f) if f.kind == Fp4Kind::Nvfp4 => {
            let tz =
                c.b.build_float_compare(FloatPredicate::OEQ, tamax, f32t.const_zero(), "")?;
            let g =
                c.b.build_float_div(tamax, f32t.const_float(6.0 * 448.0), "")?;
            c.b.build_select(tz, f32t.const_float(1.0), g, "")?
                .into_float_value()
        }
        _ => f32t.const_float(1.0),
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
                    let mut v = c.b.build_float_mul(d, g, "")?;
                    if let Tc05::Fp8(f) = spec {
                        let ws = final_weight_scale(c, f, scales, tables, col)?
                            .ok_or(Error::Codegen("FP8 weights have a final scale".into()))?;
                        v =
                            c.b.build_float_mul(c.b.build_float_mul(v, tamax, "")?, ws, "")?;
                    }
                    let v = c.b.build_float_mul(v, post, "")?;
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

    // The entry. Every thread of a block runs the body (the barriers and the MMAs need all of
    // them); the grid has one block per tile.
    block_entry(
        &c,
        module,
        body,
        spec.entry(),
        10,
        (lay.size, "qc_tcgen05_smem"),
        entries,
    )
}

/// The PTX of `spec`'s kernel (sm_100a only: `tcgen05` is Blackwell data center's).
pub fn emit_ptx(spec: &Tc05) -> Result<String, Error> {
    compile_ptx(
        &target_machine_with(GpuTarget::Sm100a, "+ptx88")?,
        "qc_tcgen05_fp4",
        "default<O3>",
        |c, m| build(c, m, spec, Entries::Ptx),
    )
}

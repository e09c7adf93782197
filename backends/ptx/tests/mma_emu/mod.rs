//! The host harness of the kernel tests and its emulators: [`jit`] compiles a kernel's host entries
//! for this CPU with its emulator symbols bound, [`host_entry`] gives an entry as a typed function.
//! The warp-level kernels (`mma4`, `mma8`, `mmafp4`, `mmaf`): every `mma.sync` a call of
//! [`emulate`] (or [`emulate_fp4`] for the block-scaled FP4 MMA), run warp by warp with one OS
//! thread per lane ([`run_warps`], [`run_warp_gemm`]). The fragment layouts follow the PTX ISA
//! ("Matrix Fragments for mma.m16n8k16 with floating point type", "... for mma.m16n8k32", "... for
//! mma.m16n8k64" and "Block Scaling for mma.sync"); the sums are exact (f64) and rounded to f32
//! once. The block-level kernels (`wgmma8` with [`Block`], `tcgen05` with [`Tc`]): run block by
//! block with one OS thread per thread of the block ([`run_blocks`], [`run_block_gemm`]).

#![allow(dead_code)] // each test binary uses a part

use std::cell::UnsafeCell;
use std::sync::{Barrier, Mutex};

use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::Module;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use qc_ir::quant::Encoding;

/// Compiles for this CPU the module `build` fills (named `name`), each emulator symbol of
/// `emulators` (symbol, address) bound to its function (the module must declare it).
pub fn jit<'ctx>(
    ctx: &'ctx Context,
    name: &str,
    build: impl FnOnce(&Module<'ctx>),
    emulators: &[(&str, usize)],
) -> ExecutionEngine<'ctx> {
    Target::initialize_native(&InitializationConfig::default()).unwrap();
    let module = ctx.create_module(name);
    build(&module);
    module.verify().unwrap();
    let ee = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .unwrap();
    for (sym, f) in emulators {
        let func = module
            .get_function(sym)
            .unwrap_or_else(|| panic!("{name} declares no {sym}"));
        ee.add_global_mapping(&func, *f);
    }
    ee
}

/// The host entry `<entry>_at` of `ee` as a function of type `F`.
///
/// # Safety
/// `F` is a function pointer type with the signature the kernel's builder gives the entry.
pub unsafe fn host_entry<F: Copy>(ee: &ExecutionEngine, entry: &str) -> F {
    let addr = ee
        .get_function_address(&format!("{entry}_at"))
        .unwrap_or_else(|e| panic!("no host entry {entry}_at: {e}"));
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>());
    // SAFETY: the caller's contract; an address the size of a function pointer.
    unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
}

/// The arguments of the GEMMs' host entries before the emulator's (`mma8`, `mmafp4`, `wgmma8`,
/// `tcgen05`; `mma4` takes all but `act`): the weights' codes and scales, the tables, `x[m, k]`,
/// `y[m, n]`, K, N, M, the post scale, and the activations' scale (`mma8`, `wgmma8`) or static
/// maximum (the FP4 kernels).
#[derive(Clone, Copy)]
pub struct GemmArgs {
    pub codes: *const u8,
    pub scales: *const u8,
    pub tables: *const f32,
    pub x: *const f32,
    pub y: *mut f32,
    pub k: i64,
    pub n: i64,
    pub m: i64,
    pub post: f32,
    pub act: f32,
}

// SAFETY: the kernels' threads read the inputs and write disjoint elements of `y`, as on the GPU.
unsafe impl Sync for GemmArgs {}

impl GemmArgs {
    /// The arguments for the weights' `blob` (its scales from byte `scales`), `tables`, `x[m, k]`
    /// and `y[m, n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        blob: &[u8],
        scales: usize,
        tables: &[f32],
        x: &[f32],
        y: &mut [f32],
        (m, n, k): (usize, usize, usize),
        post: f32,
        act: f32,
    ) -> GemmArgs {
        assert_eq!((x.len(), y.len()), (m * k, m * n));
        GemmArgs {
            codes: blob.as_ptr(),
            scales: blob[scales..].as_ptr(),
            tables: tables.as_ptr(),
            x: x.as_ptr(),
            y: y.as_mut_ptr(),
            k: k as i64,
            n: n as i64,
            m: m as i64,
            post,
            act,
        }
    }
}

/// `mma4`'s host entry: the [`GemmArgs`] but `act`, the warp's emulator state and the thread.
pub type Bf16Gemm = unsafe extern "C" fn(
    *const u8,
    *const u8,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i64,
    i64,
    f32,
    *const Warp,
    i64,
);

/// The host entry of `mma8` and `mmafp4`: the [`GemmArgs`], the warp's emulator state and the
/// thread.
pub type ScaledGemm = unsafe extern "C" fn(
    *const u8,
    *const u8,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i64,
    i64,
    f32,
    f32,
    *const Warp,
    i64,
);

/// The host entry of a warp-level GEMM.
#[derive(Clone, Copy)]
pub enum WarpGemm {
    /// `mma4`'s.
    Bf16(Bf16Gemm),
    /// `mma8`'s and `mmafp4`'s.
    Scaled(ScaledGemm),
}

/// Runs `kernel` with `args` on `threads` threads, warp by warp ([`run_warps`]).
///
/// # Safety
/// `args` holds buffers of the sizes the kernel's contract asks for.
pub unsafe fn run_warp_gemm(kernel: WarpGemm, shape: Shape, threads: usize, args: GemmArgs) {
    run_warps(shape, threads, |warp, t| unsafe {
        // The whole of `args` (Sync), not its fields (pointers, not Sync).
        let a = args;
        let t = t as i64;
        match kernel {
            WarpGemm::Bf16(f) => f(
                a.codes, a.scales, a.tables, a.x, a.y, a.k, a.n, a.m, a.post, warp, t,
            ),
            WarpGemm::Scaled(f) => f(
                a.codes, a.scales, a.tables, a.x, a.y, a.k, a.n, a.m, a.post, a.act, warp, t,
            ),
        }
    });
}

/// The host entry of `mmaf`'s f32 GEMM: A, B, C, the batch, M, N, K, whether B is shared, the
/// warp's emulator state and the thread.
pub type Sgemm = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *mut f32,
    u64,
    u64,
    u64,
    u64,
    u64,
    *const Warp,
    u64,
);

/// The threads of a launch of `warps` warps in blocks of `block` threads: whole blocks.
pub fn launch_threads(warps: usize, block: u32) -> usize {
    (warps * 32).div_ceil(block as usize) * block as usize
}

/// The MMA shape and operand types (each test binary uses one).
#[derive(Clone, Copy)]
pub enum Shape {
    /// m16n8k16, bf16 A and B: two elements per register, the lower k in the low half.
    Bf16,
    /// m16n8k32, FP8 A and B (values of each byte code from the tables): four elements per
    /// register, the lower k in the lower byte.
    Fp8 {
        a: &'static [f32],
        b: &'static [f32],
    },
    /// m16n8k32, s8 A and B (bytes as i8), i32 accumulators (their bits in the f32 arguments).
    S8,
    /// m16n8k64 block-scaled, e2m1 A and B with ue4m3 scales per 16 (`kind::mxf4nvf4`,
    /// `scale_vec::4X`, NVFP4) or ue8m0 scales per 32 (`kind::mxf4`, `scale_vec::2X`, MXFP4); see
    /// [`emulate_fp4`].
    Fp4 { nvfp4: bool },
    /// m16n8k8, TF32 A and B (one per register, its f32 bits with the low 13 ignored): A[r][k] in
    /// register (r / 8) + 2 (k / 4) of lane (r % 8) * 4 + k % 4, B[k][n] in register k / 4 of lane
    /// n * 4 + k % 4.
    Tf32,
}

/// One lane's operands.
#[derive(Clone, Copy, Default)]
struct Frag {
    a: [u32; 4],
    b: [u32; 2],
    /// The block-scaled MMA's `scale-a-data`, `scale-b-data` and selectors `byte-id-a`,
    /// `thread-id-a`, `byte-id-b`, `thread-id-b`.
    sa: u32,
    sb: u32,
    sel: [u32; 4],
}

/// What the 32 lanes of a warp share while emulating `mma.sync`.
pub struct Warp {
    shape: Shape,
    barrier: Barrier,
    frags: Mutex<[Frag; 32]>,
}

impl Warp {
    fn new(shape: Shape) -> Warp {
        Warp {
            shape,
            barrier: Barrier::new(32),
            frags: Mutex::new([Frag::default(); 32]),
        }
    }

    /// A[r][k] of the tile from all lanes' fragments.
    fn a(&self, f: &[Frag; 32], r: usize, k: usize) -> f64 {
        match self.shape {
            // Lane (r % 8) * 4 + (k % 8) / 2, register r / 8 + 2 (k / 8), half k % 2.
            Shape::Bf16 => {
                let reg = f[(r % 8) * 4 + (k % 8) / 2].a[r / 8 + 2 * (k / 8)];
                f32::from_bits(((reg >> (16 * (k % 2))) & 0xffff) << 16) as f64
            }
            // Lane (r % 8) * 4 + (k % 16) / 4, register r / 8 + 2 (k / 16), byte k % 4.
            Shape::Fp8 { a, .. } => {
                let reg = f[(r % 8) * 4 + (k % 16) / 4].a[r / 8 + 2 * (k / 16)];
                a[((reg >> (8 * (k % 4))) & 0xff) as usize] as f64
            }
            Shape::S8 => {
                let reg = f[(r % 8) * 4 + (k % 16) / 4].a[r / 8 + 2 * (k / 16)];
                ((reg >> (8 * (k % 4))) & 0xff) as u8 as i8 as f64
            }
            Shape::Tf32 => {
                f32::from_bits(f[(r % 8) * 4 + k % 4].a[r / 8 + 2 * (k / 4)] & 0xffff_e000) as f64
            }
            Shape::Fp4 { .. } => unreachable!("emulate_fp4 reads the FP4 fragments"),
        }
    }

    /// B[k][n] of the tile.
    fn b(&self, f: &[Frag; 32], k: usize, n: usize) -> f64 {
        match self.shape {
            // Lane n * 4 + (k % 8) / 2, register k / 8, half k % 2.
            Shape::Bf16 => {
                let reg = f[n * 4 + (k % 8) / 2].b[k / 8];
                f32::from_bits(((reg >> (16 * (k % 2))) & 0xffff) << 16) as f64
            }
            // Lane n * 4 + (k % 16) / 4, register k / 16, byte k % 4.
            Shape::Fp8 { b, .. } => {
                let reg = f[n * 4 + (k % 16) / 4].b[k / 16];
                b[((reg >> (8 * (k % 4))) & 0xff) as usize] as f64
            }
            Shape::S8 => {
                let reg = f[n * 4 + (k % 16) / 4].b[k / 16];
                ((reg >> (8 * (k % 4))) & 0xff) as u8 as i8 as f64
            }
            Shape::Tf32 => f32::from_bits(f[n * 4 + k % 4].b[k / 4] & 0xffff_e000) as f64,
            Shape::Fp4 { .. } => unreachable!("emulate_fp4 reads the FP4 fragments"),
        }
    }

    /// Stores lane `lane`'s operands and waits for the warp: every lane's operands.
    fn gather(&self, lane: usize, frag: Frag) -> [Frag; 32] {
        self.frags.lock().unwrap()[lane] = frag;
        self.barrier.wait();
        *self.frags.lock().unwrap()
    }

    /// Writes lane `lane`'s accumulators `d[e] = acc(row, column, c[e])`: D[g][2q], D[g][2q + 1],
    /// D[g + 8][2q], D[g + 8][2q + 1] (`g = lane / 4`, `q = lane % 4`); then waits for the warp, so
    /// that nobody overwrites the fragments before every lane has read them.
    fn scatter(
        &self,
        lane: usize,
        c: [f32; 4],
        d: &mut [f32],
        acc: impl Fn(usize, usize, f32) -> f32,
    ) {
        let (g, q) = (lane / 4, lane % 4);
        for (e, (c, out)) in c.into_iter().zip(d.iter_mut()).enumerate() {
            *out = acc(g + 8 * (e / 2), 2 * q + e % 2, c);
        }
        self.barrier.wait();
    }

    fn depth(&self) -> usize {
        match self.shape {
            Shape::Bf16 => 16,
            Shape::Tf32 => 8,
            Shape::Fp8 { .. } | Shape::S8 => 32,
            Shape::Fp4 { .. } => 64,
        }
    }
}

/// The emulator the host bodies call: stores this lane's fragments, waits for the warp, and
/// computes its accumulators c0..c3 = D[g][2q], D[g][2q + 1], D[g + 8][2q], D[g + 8][2q + 1].
#[allow(clippy::too_many_arguments)]
pub extern "C" fn emulate(
    warp: *const Warp,
    lane: i64,
    a0: u32,
    a1: u32,
    a2: u32,
    a3: u32,
    b0: u32,
    b1: u32,
    c0: f32,
    c1: f32,
    c2: f32,
    c3: f32,
    d: *mut f32,
) {
    // SAFETY: run_warps passes a live Warp, the kernel a 4-float buffer.
    let (warp, d) = unsafe { (&*warp, std::slice::from_raw_parts_mut(d, 4)) };
    let lane = lane as usize;
    let frag = Frag {
        a: [a0, a1, a2, a3],
        b: [b0, b1],
        ..Frag::default()
    };
    let f = warp.gather(lane, frag);
    warp.scatter(lane, [c0, c1, c2, c3], d, |r, n, c| {
        let s: f64 = (0..warp.depth())
            .map(|k| warp.a(&f, r, k) * warp.b(&f, k, n))
            .sum();
        match warp.shape {
            // Exact: the sum of 32 products of int8 values fits f64 and i32.
            Shape::S8 => f32::from_bits((s as i32).wrapping_add(c.to_bits() as i32) as u32),
            _ => (s + c as f64) as f32,
        }
    });
}

/// The block-scaled `mma.sync.aligned.m16n8k64.row.col.kind::{mxf4nvf4, mxf4}.block_scale
/// .scale_vec::{4X, 2X}.f32.e2m1.e2m1.f32.{ue4m3, ue8m0}` of the host bodies: stores this lane's
/// operands, waits for the warp, and computes its four accumulators `d = (A * scale_A)
/// (B * scale_B) + c` exactly (f64, rounded to f32 once). Written from the PTX ISA's text, with
/// `groupID = lane >> 2` and `threadID_in_group = lane % 4`:
/// - "Matrix Fragments for mma.m16n8k64" (`.e2m1`): A is four `.b32` registers of eight elements
///   `a0 .. a31`, low to high; `ai` is at row `groupID` for `i < 8 || 16 <= i < 24`, else
///   `groupID + 8`, and column `threadID_in_group * 8 + (i & 7)`, plus 32 for `i >= 16`. B is two
///   registers of `b0 .. b15`, row `threadID_in_group * 8 + (i & 7)` (plus 32 for `i >= 8`),
///   column `groupID`. C/D: `ci` at row `groupID` (plus 8 for `i >= 2`), column
///   `threadID_in_group * 2 + (i & 1)`.
/// - "Block Scaling for mma.sync": `scale_A` is `M x V`, `scale_B` `V x N` (`V` = 4 or 2), each
///   row of A (column of B) split into `V` chunks along K. `thread-id-a` picks the lane pair of
///   the quad that supplies `SF_A` (0: `lane % 4` in {0, 1}; 1: {2, 3}), `thread-id-b` the one
///   lane (`lane % 4 == thread-id-b`) that supplies `SF_B`; with `4X` all four bytes are used
///   (`byte-id` 0), with `2X` the pair at `byte-id` (0 or 2).
///
///   Read from the ISA's figures, which the text does not spell out: the quad of `groupID = r % 8`
///   holds row `r`, the pair's lower lane rows 0-7 and its upper lane rows 8-15; the quad of
///   `groupID = n` holds column `n`; chunk `c` is byte `byte-id + c`.
#[allow(clippy::too_many_arguments)]
pub extern "C" fn emulate_fp4(
    warp: *const Warp,
    lane: i64,
    a0: u32,
    a1: u32,
    a2: u32,
    a3: u32,
    b0: u32,
    b1: u32,
    c0: f32,
    c1: f32,
    c2: f32,
    c3: f32,
    scale_a: u32,
    byte_id_a: u32,
    thread_id_a: u32,
    scale_b: u32,
    byte_id_b: u32,
    thread_id_b: u32,
    d: *mut f32,
) {
    // SAFETY: run_warps passes a live Warp, the kernel a 4-float buffer.
    let (warp, d) = unsafe { (&*warp, std::slice::from_raw_parts_mut(d, 4)) };
    let Shape::Fp4 { nvfp4 } = warp.shape else {
        panic!("emulate_fp4 on a warp of another shape");
    };
    let lane = lane as usize;
    let frag = Frag {
        a: [a0, a1, a2, a3],
        b: [b0, b1],
        sa: scale_a,
        sb: scale_b,
        sel: [byte_id_a, thread_id_a, byte_id_b, thread_id_b],
    };
    let f = warp.gather(lane, frag);
    let sel = f[0].sel;
    assert!(
        f.iter().all(|x| x.sel == sel),
        "the lanes disagree on the selectors"
    );
    let v = if nvfp4 { 4 } else { 2 };
    let [bya, tha, byb, thb] = sel.map(|x| x as usize);
    if nvfp4 {
        assert_eq!((bya, byb), (0, 0), "scale_vec::4X takes byte-id 0");
    } else {
        assert!(
            bya % 2 == 0 && byb % 2 == 0 && bya < 4 && byb < 4,
            "2X byte-id is 0 or 2"
        );
    }
    assert!(
        tha < 2 && thb < 4,
        "thread-id-a in [0, 1], thread-id-b in [0, 3]"
    );
    let e2m1 = codes(Encoding::E2M1);
    let stab = codes(if nvfp4 {
        Encoding::UE4M3
    } else {
        Encoding::E8M0
    });
    let nib = |reg: u32, i: usize| e2m1[((reg >> (4 * (i % 8))) & 15) as usize] as f64;
    let byte = |reg: u32, i: usize| stab[((reg >> (8 * i)) & 0xff) as usize] as f64;
    // The matrices, element by element from each lane's fragment.
    let mut am = [[f64::NAN; 64]; 16];
    let mut bm = [[f64::NAN; 8]; 64];
    for (l, fr) in f.iter().enumerate() {
        let (group, tig) = (l >> 2, l % 4);
        for i in 0..32 {
            let row = if i < 8 || (16..24).contains(&i) {
                group
            } else {
                group + 8
            };
            let col = tig * 8 + (i & 7) + if i >= 16 { 32 } else { 0 };
            am[row][col] = nib(fr.a[i / 8], i);
        }
        for i in 0..16 {
            let row = tig * 8 + (i & 7) + if i >= 8 { 32 } else { 0 };
            bm[row][group] = nib(fr.b[i / 8], i);
        }
    }
    // scale_A[r][c] from lane 4 (r % 8) + 2 thread-id-a + r / 8; scale_B[c][n] from lane
    // 4n + thread-id-b.
    let sfa = |r: usize, c: usize| byte(f[4 * (r % 8) + 2 * tha + r / 8].sa, bya + c);
    let sfb = |c: usize, n: usize| byte(f[4 * n + thb].sb, byb + c);
    let chunk = 64 / v;
    warp.scatter(lane, [c0, c1, c2, c3], d, |row, col, c| {
        let s: f64 = (0..64)
            .map(|k| am[row][k] * sfa(row, k / chunk) * bm[k][col] * sfb(k / chunk, col))
            .sum();
        (s + c as f64) as f32
    });
}

/// The values of the 256 (or 16) codes of `e`.
fn codes(e: Encoding) -> Vec<f32> {
    qc_quant::Codec::new(e).unwrap().table().to_vec()
}

/// Runs `lane(warp, t)` for every thread `t < threads` (a multiple of 32), warp by warp, the 32
/// lanes of a warp on their own threads.
pub fn run_warps(shape: Shape, threads: usize, lane: impl Fn(&Warp, usize) + Sync) {
    for w in 0..threads / 32 {
        let warp = Warp::new(shape);
        std::thread::scope(|s| {
            for l in 0..32 {
                let (warp, lane) = (&warp, &lane);
                s.spawn(move || lane(warp, w * 32 + l));
            }
        });
    }
}

/// The threads of an emulated block (`BLOCK` of `wgmma8` and `tcgen05`).
pub const BLOCK_THREADS: usize = 128;

/// Runs `thread(state, b, t)` for every thread `t < threads` ([`BLOCK_THREADS`]) of every block
/// `b < blocks`, block by block, the threads of a block on their own OS threads sharing the block's
/// emulator state from `new_block`; the states, in block order.
pub fn run_blocks<E: Sync>(
    blocks: usize,
    threads: usize,
    new_block: impl Fn() -> E,
    thread: impl Fn(&E, usize, usize) + Sync,
) -> Vec<E> {
    assert_eq!(threads, BLOCK_THREADS, "the emulated blocks' threads");
    (0..blocks)
        .map(|b| {
            let state = new_block();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (state, thread) = (&state, &thread);
                    s.spawn(move || thread(state, b, t));
                }
            });
            state
        })
        .collect()
}

/// The emulator state that the threads of a block share ([`Block`], [`Tc`]).
pub trait BlockState: Sync {
    /// The block's shared memory (what the kernels' host entries take).
    fn smem(&self) -> *mut u8;
}

/// The host entry of the block-level GEMMs (`wgmma8`, `tcgen05`): the [`GemmArgs`], the block's
/// emulator state, its shared memory, the block and the thread.
pub type BlockGemm<E> = unsafe extern "C" fn(
    *const u8,
    *const u8,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i64,
    i64,
    f32,
    f32,
    *const E,
    *mut u8,
    i64,
    i64,
);

/// Runs `kernel` with `args` on `blocks` blocks of `threads` threads ([`run_blocks`]); the blocks'
/// states.
///
/// # Safety
/// `args` holds buffers of the sizes the kernel's contract asks for.
pub unsafe fn run_block_gemm<E: BlockState>(
    kernel: BlockGemm<E>,
    blocks: usize,
    threads: usize,
    new_block: impl Fn() -> E,
    args: GemmArgs,
) -> Vec<E> {
    run_blocks(blocks, threads, new_block, |state, b, t| unsafe {
        let a = args;
        kernel(
            a.codes,
            a.scales,
            a.tables,
            a.x,
            a.y,
            a.k,
            a.n,
            a.m,
            a.post,
            a.act,
            state,
            state.smem(),
            b as i64,
            t as i64,
        )
    })
}

/// What every emulated block has: `bar.sync` for its [`BLOCK_THREADS`] threads and shared memory
/// (a host buffer).
struct Cta {
    barrier: Barrier,
    smem: Vec<UnsafeCell<u8>>,
}

// SAFETY: the shared memory is written and read by the kernel's threads between barriers, as on
// the GPU; the emulators read it only between the barriers of an MMA.
unsafe impl Sync for Cta {}

impl Cta {
    fn new(smem: usize) -> Cta {
        Cta {
            barrier: Barrier::new(BLOCK_THREADS),
            smem: (0..smem).map(|_| UnsafeCell::new(0)).collect(),
        }
    }

    /// The shared memory's address (what the kernels' host entries take).
    fn smem(&self) -> *mut u8 {
        self.smem[0].get()
    }

    fn byte(&self, at: usize) -> u8 {
        // SAFETY: read between barriers; the index is checked.
        unsafe { *self.smem[at].get() }
    }
}

/// The start address, LBO and SBO of a shared-memory descriptor, in bytes (16-byte units in bits
/// 0-13, 16-29 and 32-45).
fn desc_fields(desc: u64) -> (usize, usize, usize) {
    let field = |shift: u32| (((desc >> shift) & 0x3fff) << 4) as usize;
    (field(0), field(16), field(32))
}

/// What the 128 threads of a block share while emulating the warpgroup kernel of `wgmma8`:
/// `bar.sync` and `wgmma.mma_async.m64n64k32` with FP8 A in registers (per warp the layout of
/// `mma.m16n8k32`'s A) and FP8 B in the block's shared memory, read through the descriptor (start
/// address, LBO and SBO in 16-byte units; K-major, no swizzling: B[k][n] at
/// `start + (n / 8) * SBO + (k / 16) * LBO + (n % 8) * 16 + k % 16`).
pub struct Block {
    a: &'static [f32],
    b: &'static [f32],
    cta: Cta,
    frags: Mutex<Vec<([u32; 4], u64)>>,
}

impl Block {
    /// A block with `smem` bytes of shared memory and the FP8 code values of A and B.
    pub fn new(a: &'static [f32], b: &'static [f32], smem: usize) -> Block {
        Block {
            a,
            b,
            cta: Cta::new(smem),
            frags: Mutex::new(vec![([0; 4], 0); BLOCK_THREADS]),
        }
    }
}

impl BlockState for Block {
    fn smem(&self) -> *mut u8 {
        self.cta.smem()
    }
}

/// `bar.sync 0` of the host kernel.
pub extern "C" fn block_barrier(block: *const Block) {
    // SAFETY: the test passes a live Block.
    unsafe { &*block }.cta.barrier.wait();
}

/// The warpgroup MMA of the host kernel: this thread's 32 results.
#[allow(clippy::too_many_arguments)]
pub extern "C" fn block_mma(
    block: *const Block,
    t: i64,
    a0: u32,
    a1: u32,
    a2: u32,
    a3: u32,
    desc: u64,
    d: *mut f32,
) {
    // SAFETY: a live Block and a 32-float buffer.
    let (blk, d) = unsafe { (&*block, std::slice::from_raw_parts_mut(d, 32)) };
    let t = t as usize;
    blk.frags.lock().unwrap()[t] = ([a0, a1, a2, a3], desc);
    blk.cta.barrier.wait();
    let f = blk.frags.lock().unwrap().clone();
    assert!(
        f.iter().all(|x| x.1 == desc),
        "the threads disagree on the descriptor"
    );
    let (start, lbo, sbo) = desc_fields(desc);
    assert_eq!(desc >> 46, 0, "no swizzling, no base offset");
    let (w, lane) = (t / 32, t % 32);
    let (g, q) = (lane / 4, lane % 4);
    for (i, out) in d.iter_mut().enumerate() {
        // Result i: row 16w + g + 8 ((i / 2) % 2), column 8 (i / 4) + 2q + i % 2.
        let r = 16 * w + g + 8 * ((i / 2) % 2);
        let n = 8 * (i / 4) + 2 * q + i % 2;
        let s: f64 = (0..32)
            .map(|k| {
                // A[r][k]: warp r / 16, lane (r % 8) * 4 + (k % 16) / 4, register
                // (r % 16) / 8 + 2 (k / 16), byte k % 4.
                let reg =
                    f[32 * (r / 16) + (r % 8) * 4 + (k % 16) / 4].0[(r % 16) / 8 + 2 * (k / 16)];
                let av = blk.a[((reg >> (8 * (k % 4))) & 0xff) as usize] as f64;
                let at = start + (n / 8) * sbo + (k / 16) * lbo + (n % 8) * 16 + k % 16;
                let bv = blk.b[blk.cta.byte(at) as usize] as f64;
                av * bv
            })
            .sum();
        *out = s as f32;
    }
    blk.cta.barrier.wait();
}

/// The emulators of `wgmma8`'s host kernel, by symbol (for [`jit`]).
pub fn wgmma8_emulators() -> [(&'static str, usize); 2] {
    use qc_backend_ptx::wgmma8;
    [
        (wgmma8::BAR_EMULATOR, block_barrier as *const () as usize),
        (wgmma8::MMA_EMULATOR, block_mma as *const () as usize),
    ]
}

/// The values of the 256 codes of FP8 e5m2 or e4m3fn, for the emulators.
pub fn fp8_table(e5m2: bool) -> &'static [f32] {
    use std::sync::OnceLock;
    static E4M3: OnceLock<Vec<f32>> = OnceLock::new();
    static E5M2: OnceLock<Vec<f32>> = OnceLock::new();
    let (cell, e) = if e5m2 {
        (&E5M2, Encoding::E5M2)
    } else {
        (&E4M3, Encoding::E4M3FN)
    };
    cell.get_or_init(|| qc_quant::Codec::new(e).unwrap().table().to_vec())
}

/// Tensor-memory columns of the emulated tensor memory (lanes: 128).
const TMEM_COLS: usize = 512;

/// What the 128 threads of a block share while emulating the Blackwell kernel of `tcgen05`:
/// `bar.sync`, shared memory (a host buffer; descriptors hold offsets into it), tensor memory (128
/// lanes x 512 32-bit columns) and `tcgen05.mma` of `kind::f16` (bf16 A and B, K = 16) and of the
/// block-scaled FP4 kinds (K = 64), as the PTX ISA describes them:
/// - the instruction descriptor of `kind::f16` ("... for .kind::tf32, .kind::f16, .kind::f8f6f4
///   and .kind::i8"): bits 0-3 dense and no saturation, 4-5 the D type (1: f32), 7-9 and 10-12 the A
///   and B types (1: bf16), 13-14 negation, 15-16 transposition, 17-22 N / 8, 24-28 M / 16;
/// - the instruction descriptor of the FP4 kinds ("Instruction descriptor format for
///   .kind::mxf8f6f4, .kind::mxf4 and .kind::mxf4nvf4"): bits 0-2 dense, 4-5 B's scale-factor ID, 7-9 and 10-12 the A and B types
///   (1: e2m1), 13-14 negation, 15-16 transposition (0: K-major), 17-22 N / 8, 23 the scale type (0
///   ue4m3, 1 ue8m0), 24-28 M / 16, 29-30 A's scale-factor ID;
/// - the shared-memory descriptor: start, LBO and SBO in 16-byte units (bits 0-13, 16-29, 32-45),
///   version 1 (bits 46-47), no base offset, no swizzling; K-major core matrices of 8 rows x 16
///   bytes: row `r`, byte `kb` at `start + (r / 8) * SBO + (kb / 16) * LBO + (r % 8) * 16 + kb % 16`,
///   two e2m1 codes a byte, the even k in the low nibble, or one bf16 in two bytes (little endian);
/// - the scale factors (M = 128, "duplicated to all 32 lane partitions"): A's of row `r` in column
///   `sfa + r / 32` of lane `r % 32` of each of the four lane quarters (which must agree), B's of
///   column `n` likewise from `sfb`; the scale of the `j`-th block along K (16 elements for ue4m3,
///   32 for ue8m0) in byte `id + j` of the 32-bit cell (the layout CUTLASS's `SfKMajorAtom` and
///   DeepGEMM give; the ISA draws it in figures only);
/// - D (f32, M = 128): row `r` in lane `r`, column `n` in column `d + n`.
///
/// The sums are exact (f64) and rounded to f32 once per MMA.
pub struct Tc {
    cta: Cta,
    tmem: Mutex<Vec<u32>>,
    mmas: std::sync::atomic::AtomicUsize,
}

impl Tc {
    /// A block with `smem` bytes of shared memory.
    pub fn new(smem: usize) -> Tc {
        Tc {
            cta: Cta::new(smem),
            tmem: Mutex::new(vec![0xdead_beef; 128 * TMEM_COLS]),
            mmas: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How many MMAs were issued.
    pub fn mmas(&self) -> usize {
        self.mmas.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn byte(&self, at: usize) -> u8 {
        self.cta.byte(at)
    }
}

impl BlockState for Tc {
    fn smem(&self) -> *mut u8 {
        self.cta.smem()
    }
}

/// The lane and column of thread `t`'s cell of a `.32x32b` access at `taddr`: warp `w` reaches
/// lanes `32 (w % 4) ..`, which the address's lane field must name.
fn tc_cell(t: i64, taddr: u32) -> (usize, usize) {
    let (lane0, col) = ((taddr >> 16) as usize, (taddr & 0xffff) as usize);
    let w = t as usize / 32;
    assert_eq!(lane0, 32 * (w % 4), "warp {w} addresses lanes from {lane0}");
    (lane0 + t as usize % 32, col)
}

/// `bar.sync 0` (and the mbarrier wait) of the host kernel.
pub extern "C" fn tc_bar(tc: *const Tc) {
    // SAFETY: the test passes a live Tc.
    unsafe { &*tc }.cta.barrier.wait();
}

/// `tcgen05.alloc`: the columns must be a power of two in [32, 512]; the address (lane 0,
/// column 0) goes to `slot`.
pub extern "C" fn tc_alloc(_tc: *const Tc, slot: *mut u32, columns: u32) {
    assert!(columns.is_power_of_two() && (32..=512).contains(&columns));
    // SAFETY: the kernel passes its shared-memory slot.
    unsafe { slot.write_unaligned(0) };
}

/// `tcgen05.st.32x32b.x4`: 4 consecutive columns of this thread's lane.
pub extern "C" fn tc_st(tc: *const Tc, t: i64, taddr: u32, v0: u32, v1: u32, v2: u32, v3: u32) {
    let (lane, col) = tc_cell(t, taddr);
    // SAFETY: a live Tc.
    let mut tm = unsafe { &*tc }.tmem.lock().unwrap();
    for (j, v) in [v0, v1, v2, v3].into_iter().enumerate() {
        tm[lane * TMEM_COLS + col + j] = v;
    }
}

/// `tcgen05.ld.32x32b.x32`: 32 consecutive columns of this thread's lane.
pub extern "C" fn tc_ld(tc: *const Tc, t: i64, taddr: u32, out: *mut f32) {
    let (lane, col) = tc_cell(t, taddr);
    // SAFETY: a live Tc and a 32-float buffer.
    let (tc, out) = unsafe { (&*tc, std::slice::from_raw_parts_mut(out, 32)) };
    let tm = tc.tmem.lock().unwrap();
    for (j, o) in out.iter_mut().enumerate() {
        *o = f32::from_bits(tm[lane * TMEM_COLS + col + j]);
    }
}

/// `tcgen05.mma` (one thread issues it; complete on return): `kind` 0 for `kind::f16`, 1 for
/// `kind::mxf4nvf4.block_scale.block16`, 2 for `kind::mxf4.block_scale.block32`, 3 for
/// `kind::f8f6f4`.
#[allow(clippy::too_many_arguments)]
pub extern "C" fn tc_mma(
    tc: *const Tc,
    kind: u32,
    d: u32,
    a_desc: u64,
    b_desc: u64,
    idesc: u32,
    enable_input_d: u32,
    sfa: u32,
    sfb: u32,
) {
    // SAFETY: a live Tc.
    let tc = unsafe { &*tc };
    tc.mmas.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let bits = |lo: u32, n: u32| (idesc >> lo) & ((1 << n) - 1);
    assert_eq!(bits(0, 3), 0, "dense");
    if kind != 3 {
        assert_eq!(
            (bits(7, 3), bits(10, 3)),
            (1, 1),
            "A and B e2m1 (FP4 kinds) or bf16 (f16 kind)"
        );
    }
    assert_eq!((bits(13, 2), bits(15, 2)), (0, 0), "no negation, K-major");
    let (n, m) = ((bits(17, 6) << 3) as usize, (bits(24, 5) << 4) as usize);
    assert_eq!(m, 128, "M = 128: row r in lane r");
    assert!(n.is_multiple_of(8) && (8..=256).contains(&n));
    if kind == 0 || kind == 3 {
        assert_eq!((bits(3, 1), bits(4, 2), bits(6, 1)), (0, 1, 0), "f32 D");
        assert_eq!((bits(23, 1), bits(29, 3)), (0, 0), "reserved");
        return tc_mma_dense(tc, kind, idesc, d, a_desc, b_desc, n, enable_input_d != 0);
    }
    let (block, ue8m0) = if bits(23, 1) == 1 {
        (32, true)
    } else {
        (16, false)
    };
    assert_eq!(ue8m0, kind == 2, "the scale type matches the kind");
    let (a_id, b_id) = (bits(29, 2) as usize, bits(4, 2) as usize);
    let scale = |byte: u32| -> f64 {
        if ue8m0 {
            2f64.powi(byte as i32 - 127)
        } else {
            fp8_table(false)[byte as usize] as f64
        }
    };
    let e2m1 = |code: u8| -> f64 {
        let mag = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0][(code & 7) as usize];
        if code & 8 != 0 {
            -mag
        } else {
            mag
        }
    };
    let elem = |(start, lbo, sbo): (usize, usize, usize), r: usize, k: usize| -> f64 {
        let kb = k / 2;
        let byte = tc.byte(start + (r / 8) * sbo + (kb / 16) * lbo + (r % 8) * 16 + kb % 16);
        e2m1(if k.is_multiple_of(2) {
            byte & 15
        } else {
            byte >> 4
        })
    };
    let (ta, tb) = (tc_tile(a_desc), tc_tile(b_desc));
    let mut tm = tc.tmem.lock().unwrap();
    // The scale word of row (column) `r`: lane r % 32 of every quarter, column `taddr + r / 32`.
    let cell = |tm: &Vec<u32>, taddr: u32, r: usize| {
        assert_eq!(taddr >> 16, 0, "scale factors from lane 0");
        let col = (taddr & 0xffff) as usize + r / 32;
        let w = tm[(r % 32) * TMEM_COLS + col];
        for q in 1..4 {
            assert_eq!(
                tm[(r % 32 + 32 * q) * TMEM_COLS + col],
                w,
                "scale word of row {r} not duplicated in lane quarter {q}"
            );
        }
        w
    };
    let sf = |word: u32, id: usize, j: usize| scale((word >> (8 * (id + j))) & 0xff);
    let dcol = (d & 0xffff) as usize;
    assert_eq!(d >> 16, 0);
    for r in 0..m {
        let wa = cell(&tm, sfa, r);
        for col in 0..n {
            let wb = cell(&tm, sfb, col);
            let s: f64 = (0..64)
                .map(|k| {
                    let j = k / block;
                    elem(ta, r, k) * sf(wa, a_id, j) * elem(tb, col, k) * sf(wb, b_id, j)
                })
                .sum();
            let at = r * TMEM_COLS + dcol + col;
            let acc = if enable_input_d != 0 {
                f32::from_bits(tm[at]) as f64
            } else {
                0.0
            };
            tm[at] = ((acc + s) as f32).to_bits();
        }
    }
}

/// The shared-memory tile of a descriptor: (start, LBO, SBO) in bytes.
fn tc_tile(desc: u64) -> (usize, usize, usize) {
    assert_eq!((desc >> 46) & 0b111, 0b001, "version 1, no base offset");
    assert_eq!(desc >> 52, 0, "no LBO mode, no swizzling");
    desc_fields(desc)
}

/// The dense kinds with an f32 accumulator: `kind::f16` (0) with bf16 A and B (types 1), K = 16,
/// two bytes an element; `kind::f8f6f4` (3) with e4m3 (type 0) or e5m2 (1) A and B, K = 32, a
/// byte an element.
#[allow(clippy::too_many_arguments)]
fn tc_mma_dense(
    tc: &Tc,
    kind: u32,
    idesc: u32,
    d: u32,
    a_desc: u64,
    b_desc: u64,
    n: usize,
    accumulate: bool,
) {
    let ty = |lo: u32| (idesc >> lo) & 7;
    let fp8 = |t: u32| {
        assert!(t <= 1, "e4m3 or e5m2");
        fp8_table(t == 1)
    };
    let (depth, size) = if kind == 0 {
        assert_eq!((ty(7), ty(10)), (1, 1), "bf16 A and B");
        (16, 2)
    } else {
        (32, 1)
    };
    let value = |t: u32, at: usize| -> f64 {
        if kind == 0 {
            let h = u16::from_le_bytes([tc.byte(at), tc.byte(at + 1)]);
            f32::from_bits((h as u32) << 16) as f64
        } else {
            fp8(t)[tc.byte(at) as usize] as f64
        }
    };
    // Element (r, k): byte kb = k * size of row r, core matrices of 16 bytes.
    let elem = |(start, lbo, sbo): (usize, usize, usize), t: u32, r: usize, k: usize| -> f64 {
        let kb = k * size;
        value(
            t,
            start + (r / 8) * sbo + (kb / 16) * lbo + (r % 8) * 16 + kb % 16,
        )
    };
    let (ta, tb) = (tc_tile(a_desc), tc_tile(b_desc));
    assert_eq!(d >> 16, 0);
    let dcol = (d & 0xffff) as usize;
    let mut tm = tc.tmem.lock().unwrap();
    for r in 0..128 {
        for col in 0..n {
            let s: f64 = (0..depth)
                .map(|k| elem(ta, ty(7), r, k) * elem(tb, ty(10), col, k))
                .sum();
            let at = r * TMEM_COLS + dcol + col;
            let acc = if accumulate {
                f32::from_bits(tm[at]) as f64
            } else {
                0.0
            };
            tm[at] = ((acc + s) as f32).to_bits();
        }
    }
}

/// The emulators of `tcgen05`'s host kernels, by symbol (for [`jit`]).
pub fn tcgen05_emulators() -> [(&'static str, usize); 5] {
    use qc_backend_ptx::tcgen05;
    [
        (tcgen05::BAR_EMULATOR, tc_bar as *const () as usize),
        (tcgen05::ALLOC_EMULATOR, tc_alloc as *const () as usize),
        (tcgen05::ST_EMULATOR, tc_st as *const () as usize),
        (tcgen05::LD_EMULATOR, tc_ld as *const () as usize),
        (tcgen05::MMA_EMULATOR, tc_mma as *const () as usize),
    ]
}

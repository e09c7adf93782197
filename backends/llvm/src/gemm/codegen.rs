//! LLVM IR of the GEMM kernels, built with inkwell on the decoding helpers of
//! [`crate::gemv::codegen`] (the same block decode, scale decode and scalar tail decode as the GEMV
//! kernels).
//!
//! One function per [`KernelSpec`], with the C prototype documented in [`crate::gemm`]. The loops,
//! outermost first:
//! 1. *row blocks* of [`block_panels`] panels (128 rows) of the call's weight rows;
//! 2. *K chunks* of [`k_chunk`] kernel-layout positions (the last one shorter when K is not a multiple);
//! 3. *panels* of [`panel_rows`] (64 on x86-64-v4, 16 on x86-64-v3) weight rows of the row block: the
//!    panel's codes in the chunk are decoded block by block with the GEMV decode (`Gen::decode_at`)
//!    into f32 vectors, each multiplied by its group scale (a splat, or the block's scales shuffled to
//!    their lanes), and the elements after the last full block through the scalar table; the vectors
//!    are stored row by row in a stack buffer `T[panel_rows][k_chunk]` and transposed (in registers,
//!    `lanes x lanes` at a time) into `P[k_chunk][panel_rows]`, so that position `p` of the chunk
//!    holds the panel's weights as [`panel_vectors`] vectors. An e4m3fn NaN code (detected as in the
//!    GEMV kernels) puts a NaN into the row's first position of the chunk, which makes its outputs
//!    NaN. Rows past `row_end` are zeros.
//! 4. *tiles* of activation rows: [`m_tiles`] rows at a time (6, then 2 and 1 for the rest): the
//!    `Mr x panel_vectors` accumulator vectors (24 of the 32 zmm registers on x86-64-v4, 12 of the 16
//!    ymm on x86-64-v3) start at zero, and for each position `p` the tile's activations `xp[i][p]` are
//!    broadcast and multiplied with the vectors of `P[p]` into them by FMAs (outer-product form: per
//!    position, `panel_vectors + Mr` loads for `Mr x panel_vectors` FMAs). Every [`SUB_CHUNK`]
//!    positions the accumulators are added to the tile's chunk sums (a stack buffer) and restart from
//!    zero; at the end of the chunk the chunk sums are added to the running sums in `y` (stored as they
//!    are in the first chunk; in the last chunk, times the rows' scales and `post`).
//!
//! The panel `P` (32 KiB on x86-64-v4, 16 KiB on x86-64-v3) stays in L1 while the tiles run over all
//! `m` rows; a row block's outputs (`m x 128` floats) and the chunk of activations (`m x k_chunk`
//! floats) stay in L2 for `m` up to about 512.
//!
//! # Accumulation order
//! Each output `y[i][n]` is a three-level sum over the kernel-layout positions `p` of K, each term
//! `xp[i][p] * w'(n, p)`, where `w'(n, p)` is the kernel value of the element at position `p` times its
//! group's kernel scale (rounded to f32; per-row and per-tensor formats: the kernel value):
//! 1. *sub-chunks* of [`SUB_CHUNK`] (16) positions of a K chunk (the chunk's last one shorter): one f32
//!    FMA chain in position order from +0, `t = fma(xp[i][p], w'(n, p), t)`;
//! 2. a chunk's sum: its sub-chunks' chains added in order to +0, `u = ((0 + t_0) + t_1) + ...`;
//! 3. the chunks' sums added in order, `s = (u_0 + u_1) + u_2 ...` (kept in `y` between chunks, which is
//!    exact); then `y = (s * s_n) * post` (per-row scales) or `y = s * post`.
//!
//! [`k_chunk`] and [`SUB_CHUNK`] are constants of the target, so the order depends only on the format,
//! K and the target: results are bit-identical for every `m`, row range, tiling and thread count. The
//! short chains keep the rounding error near that of the GEMV kernels' 64 partial sums (one chain over
//! K would be several times larger on outputs with heavy cancellation).

use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::values::{
    BasicValue, BasicValueEnum, FloatValue, IntValue, PointerValue, VectorValue,
};
use inkwell::IntPredicate;

use super::gemm_symbol;
use crate::gemv::codegen::{declare_kernel, lanes, Gen, Param};
use crate::gemv::layout::BlockLayout;
use crate::gemv::spec::{ElemKind, KernelSpec, ScaleKind, ScaleStore};
use crate::{CpuTarget, Error};

/// Vectors of `lanes` weight rows per panel: 4 on x86-64-v4 (64 rows), 2 on x86-64-v3 (16 rows).
pub fn panel_vectors(target: CpuTarget) -> usize {
    match target {
        CpuTarget::X86_64V3 => 2,
        CpuTarget::X86_64V4 => 4,
    }
}

/// Weight rows per panel: [`panel_vectors`] vectors of `lanes` rows.
pub fn panel_rows(target: CpuTarget) -> usize {
    panel_vectors(target) * lanes(target)
}

/// The activation-row tile sizes of `target`, largest first: the main tile (accumulators: `Mr x
/// panel_vectors` vectors, plus the panel vectors and a broadcast, within the 32 or 16 vector
/// registers) and the tiles that take the rows left over.
pub fn m_tiles(target: CpuTarget) -> &'static [usize] {
    match target {
        CpuTarget::X86_64V3 | CpuTarget::X86_64V4 => &[6, 2, 1],
    }
}

/// Kernel-layout positions per K chunk (a multiple of every block size of `target`): the panel `P`
/// holds `k_chunk x panel_rows` floats.
pub fn k_chunk(target: CpuTarget) -> usize {
    match target {
        CpuTarget::X86_64V3 => 256,
        CpuTarget::X86_64V4 => 128,
    }
}

/// Positions per sub-chunk: each output's FMA chain restarts from zero every `SUB_CHUNK` positions
/// and is added to the chunk's sum (see the module documentation).
pub const SUB_CHUNK: u64 = 16;

/// Panels per row block: 128 weight rows (the outputs of a row block and `m x k_chunk` activations
/// stay in L2).
pub fn block_panels(target: CpuTarget) -> usize {
    (128 / panel_rows(target)).max(1)
}

/// How the decode applies group scales to a block's vectors.
enum BlockScale {
    /// No group scales (per-tensor or per-row formats).
    None,
    /// The group holds whole blocks: one scale per block, splat.
    Splat { size: u64, store: ScaleStore },
    /// `per_block` groups per block: vector `s` takes its lanes' scales by the shuffle `masks[s]` of
    /// the block's scales.
    Lanes {
        size: u64,
        store: ScaleStore,
        per_block: u64,
        masks: Vec<Vec<u32>>,
    },
}

/// Builds the GEMM kernel of `spec` for `target` into `m` (unoptimized; the caller verifies and
/// optimizes).
pub fn build_gemm<'ctx>(
    cx: &'ctx Context,
    m: &Module<'ctx>,
    spec: &KernelSpec,
    target: CpuTarget,
) -> Result<(), Error> {
    use Param::{Ptr, F32, I64};
    let f = declare_kernel(
        cx,
        m,
        &gemm_symbol(spec),
        &[
            ("codes", Ptr),
            ("scales", Ptr),
            ("xp", Ptr),
            ("ldx", I64),
            ("y", Ptr),
            ("ldy", I64),
            ("m", I64),
            ("k", I64),
            ("row_begin", I64),
            ("row_end", I64),
            ("post", F32),
        ],
        target,
        &[4],
    );
    let g = Gen::new(cx, m, f, spec, target);
    let p = |i: u32| f.get_nth_param(i).expect("declared parameter");
    let a = Args {
        codes: p(0).into_pointer_value(),
        scales: p(1).into_pointer_value(),
        xp: p(2).into_pointer_value(),
        ldx: p(3).into_int_value(),
        y: p(4).into_pointer_value(),
        ldy: p(5).into_int_value(),
        m: p(6).into_int_value(),
        k: p(7).into_int_value(),
        row_begin: p(8).into_int_value(),
        row_end: p(9).into_int_value(),
        post: p(10).into_float_value(),
    };

    let l = g.l as u64;
    let lay = BlockLayout::of(&spec.elem);
    let be = lay.block_elems(l as usize) as u64;
    let nvec = lay.vectors();
    let bscale = match spec.scale {
        ScaleKind::Tensor | ScaleKind::Row(_) => BlockScale::None,
        ScaleKind::Group { size, store } => {
            let size = size as u64;
            if size.is_multiple_of(be) {
                BlockScale::Splat { size, store }
            } else if be.is_multiple_of(size) {
                let masks = (0..nvec)
                    .map(|s| {
                        (0..l as usize)
                            .map(|ln| (lay.lane_element(l as usize, s, ln) as u64 / size) as u32)
                            .collect()
                    })
                    .collect();
                BlockScale::Lanes {
                    size,
                    store,
                    per_block: be / size,
                    masks,
                }
            } else {
                return Err(Error::Unsupported(format!(
                    "group size {size} neither divides nor is a multiple of the {be}-element \
                     block of {target}"
                )));
            }
        }
    };
    let nr = panel_rows(target) as u64;
    let kc = k_chunk(target) as u64;
    debug_assert!(kc.is_multiple_of(be));

    let entry = cx.append_basic_block(f, "entry");
    g.b.position_at_end(entry);
    let alloca = |n: u64, name: &str| -> Result<PointerValue<'ctx>, Error> {
        let b = g.b.build_alloca(g.f32t.array_type(n as u32), name)?;
        b.as_instruction_value()
            .expect("alloca is an instruction")
            .set_alignment(64)
            .map_err(|e| Error::Verify(e.to_string()))?;
        Ok(b)
    };
    let bufs = Bufs {
        t: alloca(nr * kc, "tbuf")?,
        p: alloca(kc * nr, "pbuf")?,
        rs: alloca(nr, "rsbuf")?,
        cb: alloca(m_tiles(target)[0] as u64 * nr, "cbuf")?,
        yb: alloca(nr, "ybuf")?,
    };
    let row_bytes = if spec.elem.per_byte() == 2 {
        g.b.build_right_shift(a.k, g.c64(1), false, "row_bytes")?
    } else {
        a.k
    };
    let blocks_end = {
        let t = g.b.build_int_unsigned_div(a.k, g.c64(be), "nblocks")?;
        g.b.build_int_mul(t, g.c64(be), "blocks_end")?
    };
    // Bytes of scales per row (group formats).
    let row_scale_bytes = match spec.scale {
        ScaleKind::Group { size, store } => {
            let groups =
                g.b.build_int_unsigned_div(a.k, g.c64(size as u64), "groups")?;
            g.b.build_int_mul(groups, g.c64(store.bytes() as u64), "rsb")?
        }
        _ => g.c64(0),
    };
    let e = Emitter {
        g: &g,
        a,
        bufs,
        l,
        be,
        nr,
        kc,
        bscale,
        row_bytes,
        blocks_end,
        row_scale_bytes,
        nan_bits: match spec.elem {
            ElemKind::MiniF16 {
                bits,
                nan_all_ones: true,
                ..
            } => Some(bits),
            _ => None,
        },
    };
    e.body()?;
    g.b.build_return(None)?;
    Ok(())
}

#[derive(Clone, Copy)]
struct Args<'ctx> {
    codes: PointerValue<'ctx>,
    scales: PointerValue<'ctx>,
    xp: PointerValue<'ctx>,
    ldx: IntValue<'ctx>,
    y: PointerValue<'ctx>,
    ldy: IntValue<'ctx>,
    m: IntValue<'ctx>,
    k: IntValue<'ctx>,
    row_begin: IntValue<'ctx>,
    row_end: IntValue<'ctx>,
    post: FloatValue<'ctx>,
}

/// Stack buffers: `t` = T[panel_rows][k_chunk], `p` = P[k_chunk][panel_rows], `rs` the panel's row
/// scales, `yb` the staging row of a partial panel's outputs, `cb` a tile's chunk sums.
#[derive(Clone, Copy)]
struct Bufs<'ctx> {
    t: PointerValue<'ctx>,
    p: PointerValue<'ctx>,
    rs: PointerValue<'ctx>,
    yb: PointerValue<'ctx>,
    cb: PointerValue<'ctx>,
}

struct Emitter<'g, 'a, 'ctx> {
    g: &'g Gen<'a, 'ctx>,
    a: Args<'ctx>,
    bufs: Bufs<'ctx>,
    l: u64,
    be: u64,
    nr: u64,
    kc: u64,
    bscale: BlockScale,
    row_bytes: IntValue<'ctx>,
    blocks_end: IntValue<'ctx>,
    row_scale_bytes: IntValue<'ctx>,
    nan_bits: Option<u32>,
}

/// The loop-invariant values of one panel in one K chunk.
#[derive(Clone, Copy)]
struct Panel<'ctx> {
    /// First weight row.
    n0: IntValue<'ctx>,
    /// Valid rows (at most `panel_rows`).
    nv: IntValue<'ctx>,
    /// Whether all `panel_rows` rows are valid.
    full: IntValue<'ctx>,
    /// The chunk's first position and length.
    kc0: IntValue<'ctx>,
    clen: IntValue<'ctx>,
    /// First chunk (accumulators start at zero) and last chunk (outputs are scaled).
    first: IntValue<'ctx>,
    last: IntValue<'ctx>,
}

impl<'g, 'a, 'ctx> Emitter<'g, 'a, 'ctx> {
    fn min(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>, Error> {
        let g = self.g;
        let lt = g.b.build_int_compare(IntPredicate::SLT, a, b, "lt")?;
        Ok(g.b.build_select(lt, a, b, "min")?.into_int_value())
    }

    fn add(&self, a: IntValue<'ctx>, b: u64) -> Result<IntValue<'ctx>, Error> {
        Ok(self.g.b.build_int_add(a, self.g.c64(b), "add")?)
    }

    /// A loop over `i = start, start + step, ...` while `i < end`.
    fn for_lt<F>(
        &self,
        start: IntValue<'ctx>,
        end: IntValue<'ctx>,
        step: u64,
        body: F,
    ) -> Result<IntValue<'ctx>, Error>
    where
        F: FnMut(
            &Gen<'a, 'ctx>,
            IntValue<'ctx>,
            &[BasicValueEnum<'ctx>],
        ) -> Result<Vec<BasicValueEnum<'ctx>>, Error>,
    {
        // `counted` runs while i + step <= end'; with end' = end + step - 1 that is i < end.
        let end2 = self.add(end, step - 1)?;
        Ok(self.g.counted(start, end2, step, vec![], body)?.0)
    }

    fn body(&self) -> Result<(), Error> {
        let g = self.g;
        let a = self.a;
        let rbstep = block_panels(g.target) as u64 * self.nr;
        let kmax = {
            let lt =
                g.b.build_int_compare(IntPredicate::SLT, a.k, g.c64(1), "k0")?;
            g.b.build_select(lt, g.c64(1), a.k, "kmax")?
                .into_int_value()
        };
        self.for_lt(a.row_begin, a.row_end, rbstep, |g, rb0, _| {
            let rbend = self.min(self.add(rb0, rbstep)?, a.row_end)?;
            // At least one chunk, so that K = 0 writes zeros.
            self.for_lt(g.c64(0), kmax, self.kc, |g, kc0, _| {
                let kend = self.min(self.add(kc0, self.kc)?, a.k)?;
                let clen = g.b.build_int_sub(kend, kc0, "clen")?;
                let first =
                    g.b.build_int_compare(IntPredicate::EQ, kc0, g.c64(0), "first")?;
                let last = g.b.build_int_compare(IntPredicate::EQ, kend, a.k, "last")?;
                self.for_lt(rb0, rbend, self.nr, |g, n0, _| {
                    let rest = g.b.build_int_sub(rbend, n0, "rest")?;
                    let nv = self.min(rest, g.c64(self.nr))?;
                    let full =
                        g.b.build_int_compare(IntPredicate::EQ, nv, g.c64(self.nr), "full")?;
                    let pn = Panel {
                        n0,
                        nv,
                        full,
                        kc0,
                        clen,
                        first,
                        last,
                    };
                    self.panel(pn, kend)?;
                    Ok(vec![])
                })?;
                Ok(vec![])
            })?;
            Ok(vec![])
        })?;
        Ok(())
    }

    /// Decodes the panel into `P`, then runs the tiles over all activation rows.
    fn panel(&self, pn: Panel<'ctx>, kend: IntValue<'ctx>) -> Result<(), Error> {
        let g = self.g;
        let a = self.a;
        let (l, nr, kc) = (self.l, self.nr, self.kc);
        // Decode the valid rows into T.
        self.for_lt(g.c64(0), pn.nv, 1, |_, r, _| {
            self.decode_row(pn, kend, r)?;
            Ok(vec![])
        })?;
        // Zero the others.
        self.for_lt(pn.nv, g.c64(nr), 1, |g, r, _| {
            let base = g.b.build_int_mul(r, g.c64(kc), "tz")?;
            for v in 0..kc / l {
                let pt = g.gepf(self.bufs.t, self.add(base, v * l)?)?;
                g.b.build_store(pt, g.zero_vf())?
                    .set_alignment(4)
                    .map_err(|e| Error::Verify(e.to_string()))?;
            }
            Ok(vec![])
        })?;
        // Transpose T into P, `l` positions at a time.
        self.for_lt(g.c64(0), pn.clen, l, |g, p0, _| {
            for rg in 0..nr / l {
                let rows = (0..l)
                    .map(|j| {
                        let off = g.b.build_int_add(g.c64((rg * l + j) * kc), p0, "to")?;
                        g.load_vec(g.f32t.into(), g.gepf(self.bufs.t, off)?)
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let cols = self.transpose(rows)?;
                for (c, v) in cols.into_iter().enumerate() {
                    let pos = self.add(p0, c as u64)?;
                    let off = g.b.build_int_mul(pos, g.c64(nr), "po")?;
                    let off = self.add(off, rg * l)?;
                    g.b.build_store(g.gepf(self.bufs.p, off)?, v)?
                        .set_alignment((l * 4) as u32)
                        .map_err(|e| Error::Verify(e.to_string()))?;
                }
            }
            Ok(vec![])
        })?;
        // The panel's row scales.
        let rs = if let ScaleKind::Row(store) = g.spec.scale {
            self.for_lt(g.c64(0), g.c64(nr), 1, |g, r, _| {
                let valid = g.b.build_int_compare(IntPredicate::SLT, r, pn.nv, "rv")?;
                // Rows past the valid ones read the first row's scale (their outputs are never stored).
                let rr = g.b.build_select(valid, r, g.c64(0), "rr")?.into_int_value();
                let abs = g.b.build_int_add(pn.n0, rr, "abs")?;
                let off = g.b.build_int_mul(abs, g.c64(store.bytes() as u64), "rso")?;
                let s = g.scale_scalar(store, g.gep8(a.scales, off)?)?;
                g.b.build_store(g.gepf(self.bufs.rs, r)?, s)?;
                Ok(vec![])
            })?;
            Some(
                (0..nr / l)
                    .map(|v| {
                        Ok(
                            g.load_aligned(g.vf().into(), g.gepf(self.bufs.rs, g.c64(v * l))?, 4)?
                                .into_vector_value(),
                        )
                    })
                    .collect::<Result<Vec<_>, Error>>()?,
            )
        } else {
            None
        };
        let post = g.splat(a.post)?;
        let mut i = g.c64(0);
        for &mr in m_tiles(g.target) {
            let (next, _) = g.counted(i, a.m, mr as u64, vec![], |_, i0, _| {
                self.tile(pn, i0, mr as u64, rs.as_deref(), post)?;
                Ok(vec![])
            })?;
            i = next;
        }
        Ok(())
    }

    /// Decodes row `r` of the panel (chunk positions `[kc0, kend)`) into `T[r]`.
    fn decode_row(
        &self,
        pn: Panel<'ctx>,
        kend: IntValue<'ctx>,
        r: IntValue<'ctx>,
    ) -> Result<(), Error> {
        let g = self.g;
        let a = self.a;
        let abs = g.b.build_int_add(pn.n0, r, "row")?;
        let cbase = g.gep8(a.codes, g.b.build_int_mul(abs, self.row_bytes, "co")?)?;
        let sbase = g.gep8(
            a.scales,
            g.b.build_int_mul(abs, self.row_scale_bytes, "so")?,
        )?;
        let trow = g.gepf(self.bufs.t, g.b.build_int_mul(r, g.c64(self.kc), "tr")?)?;
        let bend = self.min(kend, self.blocks_end)?;
        let nan_ty = g.i8t.vec_type(4 * g.l);
        let init: Vec<BasicValueEnum> = self
            .nan_bits
            .map(|_| nan_ty.const_zero().into())
            .into_iter()
            .collect();
        let (_, c) = g.counted(pn.kc0, bend, self.be, init, |g, e, c| {
            let mut nan = c.first().map(|v| v.into_vector_value());
            let vs = g.decode_at(cbase, e, &mut nan)?;
            let vs = self.scale_block(vs, sbase, e)?;
            let off = g.b.build_int_sub(e, pn.kc0, "off")?;
            for (s, v) in vs.into_iter().enumerate() {
                let pt = g.gepf(trow, self.add(off, s as u64 * self.l)?)?;
                g.b.build_store(pt, v)?
                    .set_alignment(4)
                    .map_err(|e| Error::Verify(e.to_string()))?;
            }
            Ok(nan.map(|n| n.into()).into_iter().collect())
        })?;
        // Elements after the last full block (only in the last chunk).
        self.for_lt(self.blocks_end, kend, 1, |g, e, _| {
            let mut v = g.scalar_value(cbase, e)?;
            if let Some(s) = g.element_group_scale(sbase, e)? {
                v = g.b.build_float_mul(v, s, "ws")?;
            }
            let off = g.b.build_int_sub(e, pn.kc0, "off")?;
            g.b.build_store(g.gepf(trow, off)?, v)?;
            Ok(vec![])
        })?;
        if let (Some(bits), Some(nan)) = (self.nan_bits, c.first()) {
            let mx = g
                .call("llvm.vector.reduce.umax", &[nan_ty.into()], &[*nan])?
                .into_int_value();
            let is_nan = g.b.build_int_compare(
                IntPredicate::EQ,
                mx,
                g.i8t.const_int((1 << (bits - 1)) - 1, false),
                "row_nan",
            )?;
            let t0 = g.load_aligned(g.f32t.into(), trow, 4)?.into_float_value();
            let v =
                g.b.build_select(is_nan, g.f32t.const_float(f64::NAN), t0, "t0")?;
            g.b.build_store(trow, v)?;
        }
        Ok(())
    }

    /// The block's vectors times their group scales.
    fn scale_block(
        &self,
        vs: Vec<VectorValue<'ctx>>,
        sbase: PointerValue<'ctx>,
        e: IntValue<'ctx>,
    ) -> Result<Vec<VectorValue<'ctx>>, Error> {
        let g = self.g;
        match &self.bscale {
            BlockScale::None => Ok(vs),
            &BlockScale::Splat { size, store } => {
                let gi = g.b.build_int_unsigned_div(e, g.c64(size), "gi")?;
                let so = g.b.build_int_mul(gi, g.c64(store.bytes() as u64), "so")?;
                let s = g.splat(g.scale_scalar(store, g.gep8(sbase, so)?)?)?;
                vs.into_iter().map(|v| g.fmul(v, s)).collect()
            }
            BlockScale::Lanes {
                size,
                store,
                per_block,
                masks,
            } => {
                let g0 = g.b.build_int_unsigned_div(e, g.c64(*size), "g0")?;
                let mut sv = g.f32t.vec_type(*per_block as u32).get_undef();
                for j in 0..*per_block {
                    let so =
                        g.b.build_int_mul(self.add(g0, j)?, g.c64(store.bytes() as u64), "so")?;
                    let s = g.scale_scalar(*store, g.gep8(sbase, so)?)?;
                    sv =
                        g.b.build_insert_element(sv, s, g.i32t.const_int(j, false), "sv")?;
                }
                vs.into_iter()
                    .zip(masks)
                    .map(|(v, mask)| g.fmul(v, g.shuffle(sv, mask)?))
                    .collect()
            }
        }
    }

    /// The transpose of the `l x l` matrix whose rows are `rows`: exchanges bit `b` of the row and the
    /// column index for each `b` (a two-source shuffle per row and bit).
    fn transpose(&self, mut rows: Vec<VectorValue<'ctx>>) -> Result<Vec<VectorValue<'ctx>>, Error> {
        let l = self.l as u32;
        let mut bit = 1u32;
        while bit < l {
            let mut next = rows.clone();
            for r0 in (0..l).filter(|r| r & bit == 0) {
                let r1 = r0 | bit;
                let (a, b) = (rows[r0 as usize], rows[r1 as usize]);
                let src = |c: u32, col: u32| if c & bit != 0 { l + col } else { col };
                let m0: Vec<u32> = (0..l).map(|c| src(c, c & !bit)).collect();
                let m1: Vec<u32> = (0..l).map(|c| src(c, c | bit)).collect();
                next[r0 as usize] = self.shuffle2(a, b, &m0)?;
                next[r1 as usize] = self.shuffle2(a, b, &m1)?;
            }
            rows = next;
            bit <<= 1;
        }
        Ok(rows)
    }

    fn shuffle2(
        &self,
        a: VectorValue<'ctx>,
        b: VectorValue<'ctx>,
        mask: &[u32],
    ) -> Result<VectorValue<'ctx>, Error> {
        let g = self.g;
        let m: Vec<_> = mask
            .iter()
            .map(|&i| g.i32t.const_int(i as u64, false))
            .collect();
        Ok(g.b.build_shuffle_vector(a, b, inkwell::types::VectorType::const_vector(&m), "tr")?)
    }

    /// The panel's outputs of one activation row (`nr / l` vectors) at `yrow`: plain loads for a full
    /// panel, else the valid lanes copied through the staging buffer.
    fn load_y(
        &self,
        pn: Panel<'ctx>,
        yrow: PointerValue<'ctx>,
    ) -> Result<Vec<VectorValue<'ctx>>, Error> {
        let g = self.g;
        let nv = (self.nr / self.l) as usize;
        let full_bb = g.cx.append_basic_block(g.f, "yl.full");
        let part_bb = g.cx.append_basic_block(g.f, "yl.part");
        let join_bb = g.cx.append_basic_block(g.f, "yl.join");
        g.b.build_conditional_branch(pn.full, full_bb, part_bb)?;
        let load_from = |base: PointerValue<'ctx>| -> Result<Vec<VectorValue<'ctx>>, Error> {
            (0..nv)
                .map(|v| g.load_vec(g.f32t.into(), g.gepf(base, g.c64(v as u64 * self.l))?))
                .collect()
        };
        g.b.position_at_end(full_bb);
        let vf = load_from(yrow)?;
        let full_end = g.b.get_insert_block().expect("positioned");
        g.b.build_unconditional_branch(join_bb)?;
        g.b.position_at_end(part_bb);
        self.for_lt(g.c64(0), pn.nv, 1, |g, j, _| {
            let v = g.load_aligned(g.f32t.into(), g.gepf(yrow, j)?, 4)?;
            g.b.build_store(g.gepf(self.bufs.yb, j)?, v)?;
            Ok(vec![])
        })?;
        let vp = load_from(self.bufs.yb)?;
        let part_end = g.b.get_insert_block().expect("positioned");
        g.b.build_unconditional_branch(join_bb)?;
        g.b.position_at_end(join_bb);
        vf.iter()
            .zip(&vp)
            .map(|(a, b)| {
                let phi = g.b.build_phi(g.vf(), "yv")?;
                phi.add_incoming(&[(a, full_end), (b, part_end)]);
                Ok(phi.as_basic_value().into_vector_value())
            })
            .collect()
    }

    /// Stores the panel's outputs of one activation row (see [`Emitter::load_y`]).
    fn store_y(
        &self,
        pn: Panel<'ctx>,
        yrow: PointerValue<'ctx>,
        vs: &[VectorValue<'ctx>],
    ) -> Result<(), Error> {
        let g = self.g;
        let full_bb = g.cx.append_basic_block(g.f, "ys.full");
        let part_bb = g.cx.append_basic_block(g.f, "ys.part");
        let join_bb = g.cx.append_basic_block(g.f, "ys.join");
        g.b.build_conditional_branch(pn.full, full_bb, part_bb)?;
        let store_to = |base: PointerValue<'ctx>| -> Result<(), Error> {
            for (v, x) in vs.iter().enumerate() {
                g.b.build_store(g.gepf(base, g.c64(v as u64 * self.l))?, *x)?
                    .set_alignment(4)
                    .map_err(|e| Error::Verify(e.to_string()))?;
            }
            Ok(())
        };
        g.b.position_at_end(full_bb);
        store_to(yrow)?;
        g.b.build_unconditional_branch(join_bb)?;
        g.b.position_at_end(part_bb);
        store_to(self.bufs.yb)?;
        self.for_lt(g.c64(0), pn.nv, 1, |g, j, _| {
            let v = g.load_aligned(g.f32t.into(), g.gepf(self.bufs.yb, j)?, 4)?;
            g.b.build_store(g.gepf(yrow, j)?, v)?;
            Ok(vec![])
        })?;
        g.b.build_unconditional_branch(join_bb)?;
        g.b.position_at_end(join_bb);
        Ok(())
    }

    /// Activation rows `[i0, i0 + mr)` times the panel, over the chunk.
    fn tile(
        &self,
        pn: Panel<'ctx>,
        i0: IntValue<'ctx>,
        mr: u64,
        rs: Option<&[VectorValue<'ctx>]>,
        post: VectorValue<'ctx>,
    ) -> Result<(), Error> {
        let g = self.g;
        let a = self.a;
        let (l, nr) = (self.l, self.nr);
        let nv = (nr / l) as usize;
        let ycol = g.b.build_int_sub(pn.n0, a.row_begin, "ycol")?;
        let mut yrows = Vec::with_capacity(mr as usize);
        let mut xrows = Vec::with_capacity(mr as usize);
        for i in 0..mr {
            let row = self.add(i0, i)?;
            let yo = g.b.build_int_mul(row, a.ldy, "yo")?;
            yrows.push(g.gepf(a.y, g.b.build_int_add(yo, ycol, "yo")?)?);
            let xo = g.b.build_int_mul(row, a.ldx, "xo")?;
            xrows.push(g.gepf(a.xp, g.b.build_int_add(xo, pn.kc0, "xo")?)?);
        }
        let p = self.bufs.p;
        let nacc = mr as usize * nv;
        // The chunk's sum of every accumulator, in the stack buffer `cb`.
        // Its loads and stores are volatile, so that LLVM keeps the sums in memory (promoted to
        // registers, they would double the live vectors of the loop and spill the accumulators).
        let cb = |j: usize| g.gepf(self.bufs.cb, g.c64(j as u64 * l));
        let cb_store = |g: &Gen<'a, 'ctx>, j: usize, v: VectorValue<'ctx>| -> Result<(), Error> {
            let st = g.b.build_store(cb(j)?, v)?;
            st.set_alignment((l * 4) as u32)
                .and_then(|_| st.set_volatile(true))
                .map_err(|e| Error::Verify(e.to_string()))?;
            Ok(())
        };
        let cb_load = |g: &Gen<'a, 'ctx>, j: usize| -> Result<VectorValue<'ctx>, Error> {
            let v = g.load_aligned(g.vf().into(), cb(j)?, (l * 4) as u32)?;
            v.as_instruction_value()
                .expect("a load is an instruction")
                .set_volatile(true)
                .map_err(|e| Error::Verify(e.to_string()))?;
            Ok(v.into_vector_value())
        };
        for j in 0..nacc {
            cb_store(g, j, g.zero_vf())?;
        }
        // FMAs of position `pos` into the accumulators `c`.
        let step = |g: &Gen<'a, 'ctx>,
                    pos: IntValue<'ctx>,
                    c: &[BasicValueEnum<'ctx>]|
         -> Result<Vec<BasicValueEnum<'ctx>>, Error> {
            let po = g.b.build_int_mul(pos, g.c64(nr), "pp")?;
            let ws = (0..nv)
                .map(|v| {
                    Ok(g.load_aligned(
                        g.vf().into(),
                        g.gepf(p, self.add(po, v as u64 * l)?)?,
                        (l * 4) as u32,
                    )?
                    .into_vector_value())
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let mut out = Vec::with_capacity(c.len());
            for (i, xrow) in xrows.iter().enumerate() {
                let x = g
                    .load_aligned(g.f32t.into(), g.gepf(*xrow, pos)?, 4)?
                    .into_float_value();
                let xs = g.splat(x)?;
                for (v, w) in ws.iter().enumerate() {
                    let acc = c[i * nv + v].into_vector_value();
                    out.push(g.fma(xs, *w, acc)?.into());
                }
            }
            Ok(out)
        };
        // Adds a sub-chunk's chains to the chunk's sums.
        let fold = |g: &Gen<'a, 'ctx>, c: &[BasicValueEnum<'ctx>]| -> Result<(), Error> {
            for (j, v) in c.iter().enumerate() {
                let old = cb_load(g, j)?;
                let sum = g.fadd(old, v.into_vector_value())?;
                cb_store(g, j, sum)?;
            }
            Ok(())
        };
        let zeros: Vec<BasicValueEnum<'ctx>> = vec![g.zero_vf().into(); nacc];
        // Whole sub-chunks, unrolled.
        let (rest, _) = g.counted(g.c64(0), pn.clen, SUB_CHUNK, vec![], |g, p0, _| {
            let mut c = zeros.clone();
            for q in 0..SUB_CHUNK {
                c = step(g, self.add(p0, q)?, &c)?;
            }
            fold(g, &c)?;
            Ok(vec![])
        })?;
        // The last, shorter sub-chunk (an empty one adds zeros).
        let (_, c) = g.counted(rest, pn.clen, 1, zeros.clone(), |g, pos, c| step(g, pos, c))?;
        fold(g, &c)?;
        let acc: Vec<VectorValue<'ctx>> = (0..nacc)
            .map(|j| cb_load(g, j))
            .collect::<Result<_, Error>>()?;
        for (i, yrow) in yrows.iter().enumerate() {
            let old = self.load_y(pn, *yrow)?;
            let mut vs = Vec::with_capacity(nv);
            for v in 0..nv {
                let chunk = acc[i * nv + v];
                // The running sum of the previous chunks plus this chunk's (this chunk's alone in the
                // first one).
                let sum = g.fadd(old[v], chunk)?;
                let acc =
                    g.b.build_select(pn.first, chunk, sum, "acc")?
                        .into_vector_value();
                let mut s = acc;
                if let Some(rs) = rs {
                    s = g.fmul(s, rs[v])?;
                }
                s = g.fmul(s, post)?;
                vs.push(g.b.build_select(pn.last, s, acc, "yv")?.into_vector_value());
            }
            self.store_y(pn, *yrow, &vs)?;
        }
        Ok(())
    }
}

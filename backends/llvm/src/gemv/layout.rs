//! Where the kernels find their operands: the sections of a `qc_quant::blob` (codes | scales | tensor
//! scale), and the kernel layout of the activation vector.
//!
//! # Weights
//! The kernels read the blob exactly as `qc_quant::blob` lays it out, with no repacking: for
//! `W[N, K]` (row-major, groups along K) row `n`'s codes are the `row_bytes` bytes at
//! `n * row_bytes` of the codes section (every row starts on a byte because K is even for 4-bit
//! elements), and its scales the `K / group` scales at `n * (K / group)` of the scales section (per-row
//! scales: scale `n`). Section offsets follow the blob rule: each section starts at a multiple of
//! [`qc_quant::blob::ALIGN`] bytes.
//!
//! # Activations
//! A kernel decodes a block of code bytes into vectors whose lanes are not always consecutive elements
//! (4-bit codes: nibble `j` of each 32-bit word lands in vector `j`; 8-bit minifloats: low and high bytes
//! of 16-bit words land in different vectors; see [`BlockLayout`]). So the kernel reads a permuted copy
//! `xp` of `x`, computed on the host in O(K) per call ([`prepare_x`]) such that lane `l` of vector `s`
//! meets the activation of its element. The permutation is a fixed function of K, the format and the
//! target (`L` lanes per vector: 16 for x86-64-v4, 8 for x86-64-v3); 8-bit integers use `x` as it is.

use qc_quant::blob::ALIGN;

use super::spec::{ElemKind, KernelSpec, ScaleKind};
use crate::Error;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Byte ranges of the sections of a weight blob `W[N, K]` in a format classified as `spec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sections {
    /// Bytes of packed codes per row.
    pub row_bytes: usize,
    /// Offset of the scales section (0 when the format keeps its one scale elsewhere).
    pub scales: usize,
    /// Number of stored scales.
    pub n_scales: usize,
    /// Offset of the f32 second-level tensor scale of two-level formats, if any (a per-tensor scale is
    /// the one entry of the scales section).
    pub tensor_scale: Option<usize>,
    /// Total blob length.
    pub len: usize,
}

/// The sections of the blob of `W[n, k]` per the `qc_quant::blob` rules. Errors when the shape does
/// not fit the format (K not a multiple of the group, odd K for 4-bit codes).
pub fn sections(
    spec: &KernelSpec,
    scale_bytes: usize,
    has_tensor_scale: bool,
    n: usize,
    k: usize,
) -> Result<Sections, Error> {
    let row_bytes = spec.row_bytes(k)?;
    let codes = n
        .checked_mul(row_bytes)
        .ok_or_else(|| Error::Shape(format!("{n} x {k} overflows")))?;
    let n_scales = match spec.scale {
        ScaleKind::Tensor => 1,
        ScaleKind::Row(_) => n,
        ScaleKind::Group { size, .. } => {
            if !k.is_multiple_of(size) {
                return Err(Error::Shape(format!(
                    "K = {k} is not a multiple of the group size {size}"
                )));
            }
            n * (k / size)
        }
    };
    let scales = align(codes);
    let end = align(scales + n_scales * scale_bytes);
    let (tensor_scale, len) = if has_tensor_scale {
        (Some(end), end + 4)
    } else {
        (None, end)
    };
    Ok(Sections {
        row_bytes,
        scales,
        n_scales,
        tensor_scale,
        len,
    })
}

/// How a kernel cuts a row into *blocks* of code bytes and decodes each block into vectors of `lanes`
/// f32 lanes. Vector `s` lane `l` of a block holds the block's element [`BlockLayout::lane_element`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockLayout {
    /// 8-bit integers: `lanes` bytes, sign-extended to one vector in order (`vpmovsxbd`).
    Tile,
    /// 4-bit codes: `4 lanes` bytes loaded as `lanes` 32-bit words; vector `j` (0..8) holds nibble `j` of
    /// every word (the word shifted right by `4 j`, looked up with `vpermps`, which reads the low 4 bits
    /// only): lane `l` of vector `j` is element `8 l + j`.
    NibbleDword,
    /// 8-bit minifloats: `4 lanes` bytes loaded as `2 lanes` 16-bit words, each byte moved into an f16
    /// and converted with `vcvtph2ps`. Vectors: low bytes of words `0..lanes` (elements `2 l`), low bytes
    /// of words `lanes..2 lanes` (elements `2 lanes + 2 l`), then the high bytes (the same plus one).
    MiniWord,
}

impl BlockLayout {
    /// The layout of a kernel for `elem`.
    pub fn of(elem: &ElemKind) -> BlockLayout {
        match elem {
            ElemKind::Nibble { .. } => BlockLayout::NibbleDword,
            ElemKind::Int8 => BlockLayout::Tile,
            ElemKind::MiniF16 { .. } => BlockLayout::MiniWord,
        }
    }

    /// Code bytes per block.
    pub fn block_bytes(self, lanes: usize) -> usize {
        match self {
            BlockLayout::Tile => lanes,
            BlockLayout::NibbleDword | BlockLayout::MiniWord => 4 * lanes,
        }
    }

    /// Elements per block.
    pub fn block_elems(self, lanes: usize) -> usize {
        match self {
            BlockLayout::Tile => lanes,
            BlockLayout::NibbleDword => 8 * lanes,
            BlockLayout::MiniWord => 4 * lanes,
        }
    }

    /// Vectors per block.
    pub fn vectors(self) -> usize {
        match self {
            BlockLayout::Tile => 1,
            BlockLayout::NibbleDword => 8,
            BlockLayout::MiniWord => 4,
        }
    }

    /// The element (index within the block) that lane `l` of vector `s` holds.
    pub fn lane_element(self, lanes: usize, s: usize, l: usize) -> usize {
        match self {
            BlockLayout::Tile => l,
            BlockLayout::NibbleDword => 8 * l + s,
            BlockLayout::MiniWord => 2 * l + 2 * lanes * (s % 2) + s / 2,
        }
    }
}

/// Writes the kernel layout of `x` (see the module documentation) into `out` (same length as `x`):
/// for every full block `b` of `E` elements, `out[b E + s lanes + l] = x[b E + lane_element(s, l)]`;
/// the elements after the last full block stay in place.
pub fn prepare_x(elem: &ElemKind, lanes: usize, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "prepare_x: output length");
    let lay = BlockLayout::of(elem);
    let be = lay.block_elems(lanes);
    let full = x.len() / be * be;
    for (xs, os) in x[..full]
        .chunks_exact(be)
        .zip(out[..full].chunks_exact_mut(be))
    {
        for s in 0..lay.vectors() {
            for l in 0..lanes {
                os[s * lanes + l] = xs[lay.lane_element(lanes, s, l)];
            }
        }
    }
    out[full..].copy_from_slice(&x[full..]);
}

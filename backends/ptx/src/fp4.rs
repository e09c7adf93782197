//! The W4A4 products that run on block-scaled FP4 tensor cores: NVFP4 weights times NVFP4
//! activations (`kind::mxf4nvf4`, ue4m3 scales per 16 elements) and MXFP4 weights times MXFP4
//! activations (`kind::mxf4` / `mxf4nvf4` with ue8m0 scales per 32 elements). The kernels
//! ([`crate::tcgen05`] on sm_100a, [`crate::mmafp4`] on sm_120a) quantize the f32 activations
//! block by block in the kernel, with the arithmetic of [`crate::fquant`]'s block kernel (bit for
//! bit the interpreter's), and read the weights' codes and scale bytes straight from their `qc_quant::blob` (the layout of
//! [`crate::gemv4`]: codes `[N, K/2]` low nibble first, then one scale byte per block `[N, K/b]`,
//! then the f32 tensor scale).
//!
//! The result is `y = (sum over k of a_code * a_scale * w_code * w_scale) * g * post`: `g` the
//! activations' NVFP4 global scale (`t / (6 * 448)` of the static maximum `t`, 1 for MXFP4) and
//! `post` the weights' tensor scale ([`Gemv4::post`], 1 for MXFP4).

use qc_ir::quant::{Encoding, QuantType, ScaleType, TensorScale};

use crate::fquant::FakeQuantBlock;
use crate::gemv4::Gemv4;

/// Which block-scaled FP4 product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp4Kind {
    /// NVFP4 x NVFP4: blocks of 16, ue4m3 scales.
    Nvfp4,
    /// MXFP4 x MXFP4: blocks of 32, ue8m0 scales.
    Mxfp4,
}

/// A W4A4 product the FP4 tensor-core kernels compute.
#[derive(Clone, Debug, PartialEq)]
pub struct Fp4 {
    /// The scale format and block length.
    pub kind: Fp4Kind,
    /// How the weights' blob is read.
    pub weights: Gemv4,
    /// How the activations are quantized.
    pub act: FakeQuantBlock,
}

/// K elements per k-step of the kernels (one FP4 MMA along K).
pub const K_STEP: u64 = 64;

impl Fp4 {
    /// The product of weights `w` and activations `a`, or why no FP4 tensor-core kernel computes
    /// it.
    pub fn classify(w: &QuantType, a: &QuantType) -> Result<Fp4, String> {
        let weights = Gemv4::classify(w)?;
        let act = FakeQuantBlock::classify(a)
            .ok_or_else(|| format!("{a}: not a block-scaled activation format"))?;
        if w.elem != Encoding::E2M1 {
            return Err(format!("{w}: FP4 tensor cores take e2m1 weights"));
        }
        let kind = match (act, w.scale, weights.group, w.tensor_scale) {
            (FakeQuantBlock::Nvfp4 { block: 16 }, ScaleType::UE4M3, Some(16), t)
                if t != TensorScale::None =>
            {
                Fp4Kind::Nvfp4
            }
            (
                FakeQuantBlock::Mx {
                    elem, block: 32, ..
                },
                ScaleType::E8M0,
                Some(32),
                TensorScale::None,
            ) if elem.man == Some(1) && elem.max == 6.0 => Fp4Kind::Mxfp4,
            _ => return Err(format!("{w} x {a}: not NVFP4 x NVFP4 or MXFP4 x MXFP4")),
        };
        Ok(Fp4 { kind, weights, act })
    }

    /// Elements per scale (16 or 32).
    pub fn block(&self) -> u64 {
        match self.kind {
            Fp4Kind::Nvfp4 => 16,
            Fp4Kind::Mxfp4 => 32,
        }
    }

    /// Whether the kernels take a reduction length `k` (a multiple of [`K_STEP`]).
    pub fn supports(&self, k: u64) -> Result<(), String> {
        if k == 0 || !k.is_multiple_of(K_STEP) {
            return Err(format!("K = {k} is not a positive multiple of {K_STEP}"));
        }
        Ok(())
    }

    /// The offset of the scale bytes in the weights' blob of `W[n, k]`.
    pub fn scales_offset(&self, n: usize, k: usize) -> usize {
        self.weights.sections(n, k).scales
    }

    /// The kernels' `post` argument for a blob ([`Gemv4::post`]).
    pub fn post(&self, blob: &[u8], n: usize, k: usize) -> Result<f32, String> {
        self.weights.post(blob, n, k)
    }
}

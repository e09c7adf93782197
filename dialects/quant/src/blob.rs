//! The bytes of a quantized tensor held out of line (a `dense_resource` of a quantized type).
//!
//! The layout is fixed by the format and the shape alone; there is no header. All values are
//! little-endian, and each section starts at a multiple of [`ALIGN`] bytes from the start of the blob
//! (padding bytes are zero):
//! 1. the packed codes: `pack::packed_len(n, bits, fmt.pack)` bytes, laid out as [`crate::pack`] says;
//! 2. the scales, in the order of [`crate::tensor`]'s scale layout: one byte per code for e8m0 and ue4m3,
//!    the IEEE bits of f16 / bf16 (2 bytes) or f32 (4 bytes) otherwise;
//! 3. for asymmetric formats, one zero-point code byte per scale;
//! 4. for two-level formats, the stored f32 tensor scale.

use qc_ir::quant::{QuantType, ScaleType, TensorScale};

use crate::pack;
use crate::tensor::{scale_shape, QuantizedTensor, Scales};
use crate::QuantError;

/// Section alignment in bytes.
pub const ALIGN: usize = 16;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

struct Sections {
    codes: usize,
    scales: usize,
    zero_points: usize,
    tensor_scale: usize,
    len: usize,
    n_scales: usize,
}

fn sections(fmt: &QuantType, shape: &[usize], name: &str) -> Result<Sections, QuantError> {
    let n: usize = shape.iter().product();
    let n_scales: usize = scale_shape(fmt, shape, name)?.iter().product();
    let codes = pack::packed_len(n, fmt.elem.bits(), fmt.pack);
    let scales = align(codes);
    let zero_points = align(scales + n_scales * (fmt.scale.bits() as usize / 8));
    let tensor_scale = align(
        zero_points
            + if fmt.zero_point.is_some() {
                n_scales
            } else {
                0
            },
    );
    let len = tensor_scale
        + if fmt.tensor_scale != TensorScale::None {
            4
        } else {
            0
        };
    Ok(Sections {
        codes,
        scales,
        zero_points,
        tensor_scale,
        len,
        n_scales,
    })
}

/// The blob size of a tensor of `shape` in `fmt`.
pub fn blob_len(fmt: &QuantType, shape: &[usize]) -> Result<usize, QuantError> {
    Ok(sections(fmt, shape, "tensor")?.len)
}

/// Serializes `q` in the blob layout.
pub fn to_blob(q: &QuantizedTensor) -> Result<Vec<u8>, QuantError> {
    let s = sections(&q.format, &q.shape, &q.name)?;
    let mut out = vec![0u8; s.len];
    out[..s.codes].copy_from_slice(&q.packed[..s.codes.min(q.packed.len())]);
    let mut at = s.scales;
    match &q.scales {
        Scales::Codes(v) => out[at..at + v.len()].copy_from_slice(v),
        Scales::F32(v) => v.iter().for_each(|x| {
            out[at..at + 4].copy_from_slice(&x.to_le_bytes());
            at += 4;
        }),
        Scales::F16(v) | Scales::BF16(v) => v.iter().for_each(|x| {
            out[at..at + 2].copy_from_slice(&x.to_le_bytes());
            at += 2;
        }),
    }
    if let Some(z) = &q.zero_points {
        out[s.zero_points..s.zero_points + z.len()].copy_from_slice(z);
    }
    if let Some(t) = q.tensor_scale {
        out[s.tensor_scale..s.tensor_scale + 4].copy_from_slice(&t.to_le_bytes());
    }
    Ok(out)
}

/// Reads a tensor of `shape` in `fmt` from `bytes`, which must be exactly [`blob_len`] long.
pub fn from_blob(
    bytes: &[u8],
    fmt: &QuantType,
    shape: &[usize],
    name: &str,
) -> Result<QuantizedTensor, QuantError> {
    let s = sections(fmt, shape, name)?;
    if bytes.len() != s.len {
        return Err(QuantError::BadLayout {
            tensor: name.into(),
            message: format!(
                "the blob holds {} bytes but {} of shape {shape:?} needs {}",
                bytes.len(),
                fmt,
                s.len
            ),
        });
    }
    let n: usize = shape.iter().product();
    let packed = bytes[..s.codes].to_vec();
    let codes = pack::unpack(&packed, n, fmt.elem.bits(), fmt.pack)?;
    let sb = &bytes[s.scales..];
    let scales = match fmt.scale {
        ScaleType::E8M0 | ScaleType::UE4M3 => Scales::Codes(sb[..s.n_scales].to_vec()),
        ScaleType::F32 => Scales::F32(
            (0..s.n_scales)
                .map(|i| {
                    f32::from_le_bytes([sb[4 * i], sb[4 * i + 1], sb[4 * i + 2], sb[4 * i + 3]])
                })
                .collect(),
        ),
        ScaleType::F16 => Scales::F16(
            (0..s.n_scales)
                .map(|i| u16::from_le_bytes([sb[2 * i], sb[2 * i + 1]]))
                .collect(),
        ),
        ScaleType::BF16 => Scales::BF16(
            (0..s.n_scales)
                .map(|i| u16::from_le_bytes([sb[2 * i], sb[2 * i + 1]]))
                .collect(),
        ),
    };
    let zero_points = fmt
        .zero_point
        .map(|_| bytes[s.zero_points..s.zero_points + s.n_scales].to_vec());
    let tensor_scale = (fmt.tensor_scale != TensorScale::None).then(|| {
        let b = &bytes[s.tensor_scale..s.tensor_scale + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    });
    Ok(QuantizedTensor {
        name: name.into(),
        format: fmt.clone(),
        shape: shape.to_vec(),
        codes,
        scales,
        scale_shape: scale_shape(fmt, shape, name)?,
        tensor_scale,
        zero_points,
        packed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{dequantize, quantize, QuantizeOptions};
    use qc_ir::quant::named_formats;

    #[test]
    fn every_named_format_round_trips_through_its_blob() {
        let shape = [4usize, 256];
        let data: Vec<f32> = (0..1024)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for f in named_formats() {
            let q = quantize(&data, &shape, &f.ty, &QuantizeOptions::default())
                .unwrap_or_else(|e| panic!("{}: {e}", f.name));
            let blob = to_blob(&q).unwrap();
            assert_eq!(blob.len(), blob_len(&f.ty, &shape).unwrap(), "{}", f.name);
            let back = from_blob(&blob, &f.ty, &shape, "tensor").unwrap();
            assert_eq!(back.codes, q.codes, "{}", f.name);
            assert_eq!(back.scales, q.scales, "{}", f.name);
            assert_eq!(back.tensor_scale, q.tensor_scale, "{}", f.name);
            assert_eq!(
                dequantize(&back).unwrap(),
                dequantize(&q).unwrap(),
                "{}",
                f.name
            );
        }
        let nv = &named_formats()
            .iter()
            .find(|f| f.name == "nvfp4")
            .unwrap()
            .ty;
        // 1024 e2m1 codes = 512 bytes, 64 ue4m3 scales, one f32 tensor scale, each section 16-aligned.
        assert_eq!(blob_len(nv, &shape).unwrap(), 512 + 64 + 4);
        assert!(from_blob(&[0u8; 3], nv, &shape, "w")
            .unwrap_err()
            .to_string()
            .contains("580"));
    }
}

//! Packing of sub-byte codes into bytes. Codes are taken in the tensor's flat row-major order.
//!
//! - `none`: one byte per code (the code in the low bits).
//! - `lo_first`: a dense little-endian bit stream: code i occupies bits [i*b, (i+1)*b) of the stream,
//!   bit 0 of byte 0 first. For 4-bit codes, byte j = q[2j] | q[2j+1] << 4 (ModelOpt, torchao, ONNX);
//!   for 6-bit codes, four codes fill three bytes; for 2-bit codes, byte j = q[4j] | q[4j+1] << 2 | ...
//!   The stream's last byte is zero-padded.
//! - `ggml`: 4-bit codes only. Within each 16-code sub-block (8 bytes), byte j = q[j] | q[j+8] << 4
//!   (ggml's block_nvfp4 / block_q4 nibble order). The code count must be a multiple of 16.

use crate::QuantError;
use qc_ir::quant::Packing;

/// Bytes needed to pack `n` codes of `bits` bits with `packing`.
pub fn packed_len(n: usize, bits: u32, packing: Packing) -> usize {
    match packing {
        Packing::None => n,
        Packing::LoFirst | Packing::Ggml => (n * bits as usize).div_ceil(8),
    }
}

/// Packs `codes` (each below 2^bits) into bytes. Errors if ggml packing gets a width other than 4 or a
/// count that is not a multiple of 16.
pub fn pack(codes: &[u8], bits: u32, packing: Packing) -> Result<Vec<u8>, QuantError> {
    match packing {
        Packing::None => Ok(codes.to_vec()),
        Packing::LoFirst if bits == 4 => {
            let mut out = vec![0u8; codes.len().div_ceil(2)];
            for (o, pair) in out.iter_mut().zip(codes.chunks(2)) {
                *o = (pair[0] & 0xf) | pair.get(1).map_or(0, |h| (h & 0xf) << 4);
            }
            Ok(out)
        }
        Packing::LoFirst => {
            let mut out = vec![0u8; packed_len(codes.len(), bits, packing)];
            let mask = ((1u32 << bits) - 1) as u64;
            let mut acc = 0u64;
            let mut nbits = 0u32;
            let mut j = 0;
            for &c in codes {
                acc |= (c as u64 & mask) << nbits;
                nbits += bits;
                while nbits >= 8 {
                    out[j] = acc as u8;
                    j += 1;
                    acc >>= 8;
                    nbits -= 8;
                }
            }
            if nbits > 0 {
                out[j] = acc as u8;
            }
            Ok(out)
        }
        Packing::Ggml => {
            check_ggml(codes.len(), bits)?;
            let mut out = vec![0u8; codes.len() / 2];
            for (o, sub) in out.chunks_mut(8).zip(codes.chunks(16)) {
                for j in 0..8 {
                    o[j] = (sub[j] & 0xf) | (sub[j + 8] & 0xf) << 4;
                }
            }
            Ok(out)
        }
    }
}

/// Unpacks `n` codes of `bits` bits; the inverse of [`pack`]. Errors if `bytes` is shorter than
/// [`packed_len`] or the ggml constraints do not hold.
pub fn unpack(bytes: &[u8], n: usize, bits: u32, packing: Packing) -> Result<Vec<u8>, QuantError> {
    let need = packed_len(n, bits, packing);
    if bytes.len() < need {
        return Err(QuantError::Corrupt {
            tensor: "packed".into(),
            message: format!(
                "{} bytes cannot hold {n} codes of {bits} bits packed {packing} ({need} needed)",
                bytes.len()
            ),
        });
    }
    let mask = ((1u32 << bits) - 1) as u8;
    match packing {
        Packing::None => Ok(bytes[..n].iter().map(|b| b & mask).collect()),
        Packing::LoFirst => {
            let mut out = Vec::with_capacity(n);
            let mut acc = 0u64;
            let mut nbits = 0u32;
            let mut it = bytes.iter();
            while out.len() < n {
                while nbits < bits {
                    acc |= (*it.next().unwrap_or(&0) as u64) << nbits;
                    nbits += 8;
                }
                out.push(acc as u8 & mask);
                acc >>= bits;
                nbits -= bits;
            }
            Ok(out)
        }
        Packing::Ggml => {
            check_ggml(n, bits)?;
            let mut out = vec![0u8; n];
            for (sub, b) in out.chunks_mut(16).zip(bytes.chunks(8)) {
                for j in 0..8 {
                    sub[j] = b[j] & 0xf;
                    sub[j + 8] = b[j] >> 4;
                }
            }
            Ok(out)
        }
    }
}

fn check_ggml(n: usize, bits: u32) -> Result<(), QuantError> {
    if bits != 4 || !n.is_multiple_of(16) {
        return Err(QuantError::Unsupported(format!(
            "ggml packing needs 4-bit codes in multiples of 16, not {n} codes of {bits} bits"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_and_match_the_documented_bytes() {
        let codes: Vec<u8> = (0..32u8).map(|i| i % 16).collect();
        let lo = pack(&codes, 4, Packing::LoFirst).unwrap();
        assert_eq!(lo[0], 0x10);
        assert_eq!(lo[1], 0x32);
        let g = pack(&codes, 4, Packing::Ggml).unwrap();
        assert_eq!(g[0], 0x80);
        assert_eq!(g[7], 0xf7);
        for (bits, p) in [
            (4, Packing::LoFirst),
            (4, Packing::Ggml),
            (4, Packing::None),
        ] {
            assert_eq!(
                unpack(&pack(&codes, bits, p).unwrap(), 32, bits, p).unwrap(),
                codes
            );
        }
        let six: Vec<u8> = (0..7u8).map(|i| i * 9).collect();
        let b = pack(&six, 6, Packing::LoFirst).unwrap();
        assert_eq!(b.len(), 6);
        assert_eq!(unpack(&b, 7, 6, Packing::LoFirst).unwrap(), six);
        let two: Vec<u8> = vec![1, 2, 3, 0, 3];
        let b = pack(&two, 2, Packing::LoFirst).unwrap();
        assert_eq!(b, vec![0b0011_1001, 0b11]);
        assert!(unpack(&b[..1], 5, 2, Packing::LoFirst).is_err());
    }
}

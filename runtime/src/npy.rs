//! NumPy `.npy` and `.npz` reading and writing, for qc's commands (inputs, outputs, `qc quantize`) and calibration data.
//!
//! Reading accepts format versions 1.0, 2.0 and 3.0, C order, little-endian (or byte-order-free)
//! dtypes `f2 f4 f8 i1 i2 i4 i8 u1 u2 u4 u8 b1`. Anything else (Fortran order, big-endian, object or
//! structured dtypes, a truncated file, a malformed header) is an error that names the file; nothing
//! here panics on bad input.
//!
//! Writing emits version 1.0 with the header padded to a multiple of 64 bytes. `.npz` archives are
//! written with stored (uncompressed) members, a fixed timestamp (1980-01-01 00:00) and members in
//! the order given, so the same arrays give byte-identical files; reading accepts stored and deflated
//! members (`numpy.savez` and `numpy.savez_compressed`).

use std::io::{Cursor, Read, Write};

/// The element data of an array.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// `<f4`.
    F32(Vec<f32>),
    /// `<f8`.
    F64(Vec<f64>),
    /// `|u1` (and `|b1`).
    U8(Vec<u8>),
    /// `<u2`.
    U16(Vec<u16>),
    /// `<f2`, as raw binary16 bits.
    F16(Vec<u16>),
    /// Any signed or wider unsigned integer dtype, widened.
    I64(Vec<i64>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::U16(v) | NpyData::F16(v) => v.len(),
            NpyData::I64(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numpy dtype string written for this data.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::U8(_) => "|u1",
            NpyData::U16(_) => "<u2",
            NpyData::F16(_) => "<f2",
            NpyData::I64(_) => "<i8",
        }
    }
}

/// An n-dimensional array (C order).
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements.
    pub data: NpyData,
}

impl NpyArray {
    /// An f32 array.
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Self {
        NpyArray {
            shape,
            data: NpyData::F32(v),
        }
    }

    /// A u8 array.
    pub fn u8(shape: Vec<usize>, v: Vec<u8>) -> Self {
        NpyArray {
            shape,
            data: NpyData::U8(v),
        }
    }

    /// The elements converted to f32 (f64 and integers round to nearest, f16 exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            NpyData::F32(v) => v.clone(),
            NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U8(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::U16(v) => v.iter().map(|&x| x as f32).collect(),
            NpyData::F16(v) => v
                .iter()
                .map(|&x| qc_quant::codec::f16_bits_to_f32(x))
                .collect(),
            NpyData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// Serializes an array as a `.npy` file (version 1.0).
pub fn to_npy_bytes(a: &NpyArray) -> Vec<u8> {
    let shape = match a.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", a.shape[0]),
        _ => format!(
            "({})",
            a.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        a.data.descr()
    );
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &a.data {
        NpyData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::U8(v) => out.extend_from_slice(v),
        NpyData::U16(v) | NpyData::F16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out
}

/// Parses a `.npy` file's bytes; `what` names the source in errors.
pub fn from_npy_bytes(bytes: &[u8], what: &str) -> Result<NpyArray, String> {
    let err = |m: &str| format!("{what}: not a readable .npy array: {m}");
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("missing the \\x93NUMPY magic"));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(err("truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(err(&format!("unsupported format version {v}"))),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| err("truncated header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| err("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| err("header has no 'descr'"))?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let fortran =
        dict_value(header, "fortran_order").ok_or_else(|| err("header has no 'fortran_order'"))?;
    if fortran.trim() != "False" {
        return Err(err(
            "Fortran-order arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| err("header has no 'shape'"))?;
    let inner = shape_text
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| err("malformed shape"))?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(
            part.parse::<usize>()
                .map_err(|_| err(&format!("malformed shape entry `{part}`")))?,
        );
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err("shape overflows"))?;
    let body = &bytes[end..];
    let (kind, width) = match descr {
        "<f4" => ("f4", 4),
        "<f8" => ("f8", 8),
        "<f2" => ("f2", 2),
        "|u1" | "<u1" | "u1" => ("u1", 1),
        "|b1" | "b1" => ("u1", 1),
        "|i1" | "<i1" | "i1" => ("i1", 1),
        "<i2" => ("i2", 2),
        "<i4" => ("i4", 4),
        "<i8" => ("i8", 8),
        "<u2" => ("u2", 2),
        "<u4" => ("u4", 4),
        "<u8" => ("u8", 8),
        d => {
            return Err(err(&format!(
                "unsupported dtype `{d}` (little-endian numeric dtypes only)"
            )))
        }
    };
    let need = n.checked_mul(width).ok_or_else(|| err("shape overflows"))?;
    if body.len() < need {
        return Err(err(&format!(
            "data is truncated: {} bytes for {n} elements of {width} bytes",
            body.len()
        )));
    }
    let body = &body[..need];
    let chunks = |w: usize| body.chunks_exact(w);
    let data = match kind {
        "f4" => NpyData::F32(
            chunks(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "f8" => NpyData::F64(
            chunks(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        "f2" => NpyData::F16(
            chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        "u1" => NpyData::U8(body.to_vec()),
        "u2" => NpyData::U16(
            chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        "i1" => NpyData::I64(body.iter().map(|&b| b as i8 as i64).collect()),
        "i2" => NpyData::I64(
            chunks(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
        ),
        "i4" => NpyData::I64(
            chunks(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        "i8" => NpyData::I64(
            chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        "u4" => NpyData::I64(
            chunks(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        _ => NpyData::I64(
            chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as i64)
                .collect(),
        ),
    };
    Ok(NpyArray { shape, data })
}

/// The text after `'key':` in a numpy header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pos = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Serializes named arrays as an `.npz` archive (members `NAME.npy`, stored, fixed timestamps).
pub fn to_npz_bytes(arrays: &[(&str, NpyArray)]) -> Result<Vec<u8>, String> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    for (name, a) in arrays {
        w.start_file(format!("{name}.npy"), opts)
            .map_err(|e| format!("cannot write npz member {name}: {e}"))?;
        w.write_all(&to_npy_bytes(a))
            .map_err(|e| format!("cannot write npz member {name}: {e}"))?;
    }
    let cursor = w
        .finish()
        .map_err(|e| format!("cannot finish npz archive: {e}"))?;
    Ok(cursor.into_inner())
}

/// Parses an `.npz` archive into (name without `.npy`, array) pairs in archive order; `what` names the
/// source in errors.
pub fn from_npz_bytes(bytes: &[u8], what: &str) -> Result<Vec<(String, NpyArray)>, String> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| format!("{what}: not a readable .npz archive: {e}"))?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z
            .by_index(i)
            .map_err(|e| format!("{what}: cannot read archive member {i}: {e}"))?;
        let name = f.name().to_string();
        let Some(stem) = name.strip_suffix(".npy") else {
            continue;
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(|e| format!("{what}: cannot read archive member {name}: {e}"))?;
        out.push((
            stem.to_string(),
            from_npy_bytes(&buf, &format!("{what}:{name}"))?,
        ));
    }
    Ok(out)
}

/// Reads an `.npy` file.
pub fn read_npy(path: &std::path::Path) -> Result<NpyArray, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    from_npy_bytes(&bytes, &path.display().to_string())
}

/// Reads an `.npz` file.
pub fn read_npz(path: &std::path::Path) -> Result<Vec<(String, NpyArray)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    from_npz_bytes(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_and_npz_round_trip() {
        let a = NpyArray::f32(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 5.0, 6.0]);
        let b = NpyArray::u8(vec![], vec![7]);
        let bytes = to_npy_bytes(&a);
        assert_eq!((bytes.len() - a.data.len() * 4) % 64, 0);
        assert_eq!(from_npy_bytes(&bytes, "a").unwrap(), a);
        let z = to_npz_bytes(&[("a", a.clone()), ("b", b.clone())]).unwrap();
        assert_eq!(
            z,
            to_npz_bytes(&[("a", a.clone()), ("b", b.clone())]).unwrap()
        );
        let back = from_npz_bytes(&z, "z").unwrap();
        assert_eq!(back, vec![("a".to_string(), a), ("b".to_string(), b)]);
    }

    #[test]
    fn bad_input_is_an_error_naming_the_file() {
        for bad in [
            &b""[..],
            b"\x93NUMPY\x01\x00\xff\xff{",
            b"PK\x03\x04garbage",
        ] {
            let e = from_npy_bytes(bad, "in.npy").unwrap_err();
            assert!(e.starts_with("in.npy"), "{e}");
        }
        let good = to_npy_bytes(&NpyArray::f32(vec![4], vec![1.0; 4]));
        let e = from_npy_bytes(&good[..good.len() - 3], "t.npy").unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = from_npz_bytes(b"not a zip", "x.npz").unwrap_err();
        assert!(e.starts_with("x.npz"), "{e}");
        let hdr = b"\x93NUMPY\x01\x00\x3c\x00{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }       \n\0\0\0\0";
        assert!(from_npy_bytes(hdr, "be.npy").unwrap_err().contains("dtype"));
    }
}

//! The artifact container every backend writes: one `.qca` file.
//!
//! # Layout
//! A `.qca` is a zip archive whose members are *stored* (not compressed), so that a loader can map a
//! part and use it in place: each member's data starts at a multiple of [`ALIGN`] bytes from the start of
//! the file. Members come in a fixed order: `manifest.json` first, then the parts in the order the
//! backend gave them. Every member has the same fixed timestamp (1980-01-01 00:00, the zip epoch) and
//! permissions (0644), so the same artifact always serializes to the same bytes.
//!
//! `manifest.json` ([`Manifest`], serde JSON, pretty-printed with keys in declaration order) says what
//! the artifact is: the format version, the target, the entry function with its input and output
//! signatures, the quantization formats used, each part's size and SHA-256, and the provenance (qc's
//! version, the pass pipeline, the input model's file name and SHA-256, the shape bindings). Parts are
//! named files: for the XLA target, `model.mlir` (StableHLO text).
//!
//! # Contract
//! - [`write`] is atomic (a temporary file in the target folder, then a rename) and byte-identical for
//!   the same [`Artifact`].
//! - [`read`] / [`from_bytes`] accept only what [`to_bytes`] produces in substance: a zip with a
//!   `manifest.json` of a known format version whose parts all exist, are stored, have safe names and
//!   match their recorded size and hash. Any other input is an [`ArtifactError`] naming the problem,
//!   never a panic.

use std::io::{Cursor, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

/// The version of the layout and manifest this module writes (and the only one it reads).
pub const FORMAT_VERSION: u32 = 1;

/// Member data alignment in bytes.
pub const ALIGN: u16 = 64;

/// The manifest's member name.
pub const MANIFEST: &str = "manifest.json";

/// Errors reading or writing an artifact: one sentence each.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The bytes are not a valid artifact.
    #[error("not a valid qc artifact: {0}")]
    Invalid(String),
}

/// A tensor's signature: name, static shape and element type (MLIR spelling, e.g. `f32`, `i64`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSig {
    /// The argument or result name (as `qc run` names inputs and output files).
    pub name: String,
    /// Static dimensions.
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: String,
}

/// One part's entry in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// The member name (a plain file name).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
}

/// Where the artifact came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The version of qc that wrote it.
    pub qc_version: String,
    /// The pass pipeline that ran before the backend.
    pub pipeline: String,
    /// The input model's file name (without its folder, so that the artifact does not depend on where
    /// it was built).
    pub model: String,
    /// SHA-256 of the input model file's bytes (external weight files are not included).
    pub model_sha256: String,
    /// The shape bindings that made the shapes static (`NAME=DIMS`), in the order given.
    pub shapes: Vec<String>,
}

/// What the artifact is; serialized as `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The target (`xla`, `tpu`, ...).
    pub target: String,
    /// The entry function inside the code part.
    pub entry: String,
    /// Inputs of the entry function, in order.
    pub inputs: Vec<TensorSig>,
    /// Outputs of the entry function, in order.
    pub outputs: Vec<TensorSig>,
    /// The quantization formats of the model's tensors (their IR spelling), sorted, without repeats.
    pub formats: Vec<String>,
    /// Bytes of the model's constants (weights as stored: quantized blobs and float tensors).
    pub constant_bytes: u64,
    /// The parts, in archive order.
    pub parts: Vec<PartInfo>,
    /// Where it came from.
    pub provenance: Provenance,
}

/// An artifact in memory: the manifest and the named parts' bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// The manifest. Its `parts` are recomputed from `parts` by [`Artifact::new`] and [`to_bytes`].
    pub manifest: Manifest,
    /// Part names and bytes, in archive order.
    pub parts: Vec<(String, Vec<u8>)>,
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `name` may name a part: a plain file name of `[A-Za-z0-9._-]`, not starting with a dot, not
/// the manifest's name.
pub fn valid_part_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name != MANIFEST
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn part_info(name: &str, bytes: &[u8]) -> PartInfo {
    PartInfo {
        name: name.to_string(),
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    }
}

impl Artifact {
    /// An artifact of `parts` with `manifest`, whose part list is filled in from the parts. Errors on a
    /// bad or repeated part name.
    pub fn new(
        mut manifest: Manifest,
        parts: Vec<(String, Vec<u8>)>,
    ) -> Result<Self, ArtifactError> {
        for (i, (n, _)) in parts.iter().enumerate() {
            if !valid_part_name(n) {
                return Err(ArtifactError::Invalid(format!(
                    "part name '{n}' is not a plain file name"
                )));
            }
            if parts[..i].iter().any(|(m, _)| m == n) {
                return Err(ArtifactError::Invalid(format!("part '{n}' is given twice")));
            }
        }
        manifest.parts = parts.iter().map(|(n, b)| part_info(n, b)).collect();
        Ok(Artifact { manifest, parts })
    }

    /// The bytes of part `name`.
    pub fn part(&self, name: &str) -> Option<&[u8]> {
        self.parts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }
}

fn zip_err(e: impl std::fmt::Display) -> ArtifactError {
    ArtifactError::Invalid(e.to_string())
}

/// Serializes `a` (see the module documentation): deterministic bytes.
pub fn to_bytes(a: &Artifact) -> Result<Vec<u8>, ArtifactError> {
    let a = Artifact::new(a.manifest.clone(), a.parts.clone())?;
    let mut json = serde_json::to_vec_pretty(&a.manifest).map_err(zip_err)?;
    json.push(b'\n');
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644)
        .with_alignment(ALIGN);
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let members = std::iter::once((MANIFEST, json.as_slice()))
        .chain(a.parts.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    for (name, bytes) in members {
        let large = bytes.len() as u64 >= u32::MAX as u64;
        w.start_file(name, opts.large_file(large))
            .map_err(zip_err)?;
        w.write_all(bytes).map_err(zip_err)?;
    }
    Ok(w.finish().map_err(zip_err)?.into_inner())
}

/// Writes `a` to `path` atomically (a temporary file in the same folder, then a rename).
pub fn write(path: &Path, a: &Artifact) -> Result<(), ArtifactError> {
    let bytes = to_bytes(a)?;
    qc_ir::util::write_atomic(path, &bytes).map_err(|message| ArtifactError::Io {
        path: path.display().to_string(),
        message,
    })
}

/// A part as stored in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartEntry {
    /// The member name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the data from the start of the file (a multiple of [`ALIGN`]).
    pub offset: u64,
}

fn open(bytes: &[u8]) -> Result<ZipArchive<Cursor<&[u8]>>, ArtifactError> {
    ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ArtifactError::Invalid(format!("not a zip archive ({e})")))
}

/// The members of an artifact's bytes (manifest first), with their data offsets.
pub fn list_parts_bytes(bytes: &[u8]) -> Result<Vec<PartEntry>, ArtifactError> {
    let mut z = open(bytes)?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let f = z.by_index_raw(i).map_err(zip_err)?;
        out.push(PartEntry {
            name: f.name().to_string(),
            size: f.size(),
            offset: f.data_start(),
        });
    }
    Ok(out)
}

/// The members of the artifact at `path` (manifest first), with their data offsets.
pub fn list_parts(path: &Path) -> Result<Vec<PartEntry>, ArtifactError> {
    list_parts_bytes(&read_file(path)?)
}

fn read_file(path: &Path) -> Result<Vec<u8>, ArtifactError> {
    std::fs::read(path).map_err(|e| ArtifactError::Io {
        path: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })
}

/// The data of member `name`, borrowed from `bytes` (members are stored, so their data is a range of
/// the file).
fn member<'a>(
    bytes: &'a [u8],
    z: &mut ZipArchive<Cursor<&'a [u8]>>,
    name: &str,
) -> Result<&'a [u8], ArtifactError> {
    let missing = || ArtifactError::Invalid(format!("the member '{name}' is missing"));
    let index = z.index_for_name(name).ok_or_else(missing)?;
    let f = z.by_index_raw(index).map_err(|_| missing())?;
    if f.compression() != CompressionMethod::Stored || f.compressed_size() != f.size() {
        return Err(ArtifactError::Invalid(format!(
            "the member '{name}' is compressed; members are stored"
        )));
    }
    let start = f.data_start();
    start
        .checked_add(f.size())
        .and_then(|end| bytes.get(start as usize..end as usize))
        .ok_or_else(|| ArtifactError::Invalid(format!("the member '{name}' is truncated")))
}

/// An artifact's bytes parsed and checked as [`from_bytes`] does, its parts borrowed from the bytes
/// (for a memory-mapped artifact: no copy of the weights; every part starts on an [`ALIGN`] boundary
/// of the file).
#[derive(Debug)]
pub struct ArtifactView<'a> {
    /// The manifest.
    pub manifest: Manifest,
    /// The parts, in manifest order.
    pub parts: Vec<(String, &'a [u8])>,
}

impl<'a> ArtifactView<'a> {
    /// The bytes of part `name`.
    pub fn part(&self, name: &str) -> Option<&'a [u8]> {
        self.parts.iter().find(|(n, _)| n == name).map(|(_, b)| *b)
    }
}

/// Parses and checks an artifact's bytes (see the module documentation), borrowing its parts.
pub fn view(bytes: &[u8]) -> Result<ArtifactView<'_>, ArtifactError> {
    let mut z = open(bytes)?;
    let json = member(bytes, &mut z, MANIFEST)?;
    let version: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| ArtifactError::Invalid(format!("{MANIFEST} is not JSON: {e}")))?;
    match version.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == FORMAT_VERSION as u64 => {}
        Some(v) => {
            return Err(ArtifactError::Invalid(format!(
                "format version {v} is not supported (this qc reads version {FORMAT_VERSION})"
            )))
        }
        None => {
            return Err(ArtifactError::Invalid(format!(
                "{MANIFEST} has no format_version"
            )))
        }
    }
    let manifest: Manifest = serde_json::from_slice(json)
        .map_err(|e| ArtifactError::Invalid(format!("{MANIFEST}: {e}")))?;
    let mut parts = Vec::new();
    for p in &manifest.parts {
        if !valid_part_name(&p.name) {
            return Err(ArtifactError::Invalid(format!(
                "part name '{}' is not a plain file name",
                p.name
            )));
        }
        let b = member(bytes, &mut z, &p.name)?;
        let info = part_info(&p.name, b);
        if info != *p {
            return Err(ArtifactError::Invalid(format!(
                "part '{}' has {} bytes with SHA-256 {}, but the manifest records {} bytes with {}",
                p.name, info.size, info.sha256, p.size, p.sha256
            )));
        }
        parts.push((p.name.clone(), b));
    }
    if z.len() != parts.len() + 1 {
        return Err(ArtifactError::Invalid(format!(
            "the archive has {} members but the manifest lists {} parts",
            z.len(),
            parts.len()
        )));
    }
    Ok(ArtifactView { manifest, parts })
}

/// Parses and checks an artifact's bytes (see the module documentation).
pub fn from_bytes(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
    let v = view(bytes)?;
    Ok(Artifact {
        manifest: v.manifest,
        parts: v.parts.into_iter().map(|(n, b)| (n, b.to_vec())).collect(),
    })
}

/// Reads and checks the artifact at `path`.
pub fn read(path: &Path) -> Result<Artifact, ArtifactError> {
    from_bytes(&read_file(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Artifact {
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            target: "xla".into(),
            entry: "main".into(),
            inputs: vec![TensorSig {
                name: "x".into(),
                shape: vec![2, 3],
                dtype: "f32".into(),
            }],
            outputs: vec![],
            formats: vec!["!quant.nvfp4".into()],
            constant_bytes: 580,
            parts: vec![],
            provenance: Provenance {
                qc_version: "0.1.0".into(),
                pipeline: "canonicalize".into(),
                model: "m.onnx".into(),
                model_sha256: sha256_hex(b"model"),
                shapes: vec!["batch=2".into()],
            },
        };
        Artifact::new(
            manifest,
            vec![
                ("model.mlir".into(), b"module {}\n".to_vec()),
                (
                    "weights.bin".into(),
                    (0..=255u8).cycle().take(1000).collect(),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trips_deterministically_with_aligned_stored_members() {
        let a = sample();
        let bytes = to_bytes(&a).unwrap();
        assert_eq!(bytes, to_bytes(&a).unwrap(), "not deterministic");
        let back = from_bytes(&bytes).unwrap();
        assert_eq!(back, a);
        let list = list_parts_bytes(&bytes).unwrap();
        let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, [MANIFEST, "model.mlir", "weights.bin"]);
        for p in &list {
            assert_eq!(p.offset % ALIGN as u64, 0, "{p:?}");
        }
        let w = &list[2];
        assert_eq!(
            &bytes[w.offset as usize..(w.offset + w.size) as usize],
            a.part("weights.bin").unwrap()
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn atomic_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.qca");
        write(&p, &sample()).unwrap();
        assert_eq!(read(&p).unwrap(), sample());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a temporary file was left"
        );
        assert!(matches!(
            read(&dir.path().join("none.qca")),
            Err(ArtifactError::Io { .. })
        ));
    }

    #[test]
    fn corrupt_artifacts_are_errors() {
        let bytes = to_bytes(&sample()).unwrap();
        assert!(from_bytes(b"not a zip")
            .unwrap_err()
            .to_string()
            .contains("not a zip"));
        // A flipped byte inside a part: the hash no longer matches.
        let list = list_parts_bytes(&bytes).unwrap();
        let mut bad = bytes.clone();
        bad[list[2].offset as usize + 5] ^= 1;
        let e = from_bytes(&bad).unwrap_err().to_string();
        assert!(
            e.contains("SHA-256") || e.contains("CRC") || e.contains("checksum"),
            "{e}"
        );
        // Truncated.
        assert!(from_bytes(&bytes[..bytes.len() / 2]).is_err());
        // Another format version.
        let mut a = sample();
        a.manifest.format_version = 2;
        let e = from_bytes(&to_bytes(&a).unwrap()).unwrap_err().to_string();
        assert!(e.contains("format version 2"), "{e}");
        // Unsafe part names are refused when writing.
        for n in ["../x", "a/b", ".hidden", MANIFEST, ""] {
            assert!(
                Artifact::new(sample().manifest, vec![(n.into(), vec![])]).is_err(),
                "{n}"
            );
        }
    }
}

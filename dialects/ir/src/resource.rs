//! Resources: large constants held out of line.
//!
//! A module's [`Resources`] map names to [`Blob`]s. A blob is either bytes owned in memory, a byte range of
//! a memory-mapped file (never copied), or elided: the name is known but the bytes were not printed (IR
//! dumps elide resources unless asked not to). Ops refer to resources with `dense_resource<name>`.
//!
//! Text form, at the end of a module (MLIR's resource section; the hex string starts with the 4-byte
//! little-endian alignment, as in MLIR):
//! ```text
//! {-#
//!   dialect_resources: {
//!     qc: {
//!       w0: "0x0400000000112233",
//!       w1: external<"weights.bin", offset = 0, length = 4096>
//!     }
//!   }
//! #-}
//! ```
//! An `external` path is relative to the folder of the file that names it and must stay inside it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path};
use std::sync::Arc;

use memmap2::Mmap;

/// The bytes behind a resource.
#[derive(Clone, Debug)]
pub enum Blob {
    /// Bytes owned in memory, with their required alignment.
    Owned {
        /// The bytes.
        data: Arc<[u8]>,
        /// Required alignment in bytes (a power of two).
        align: u32,
    },
    /// A range of a memory-mapped file.
    Mapped {
        /// The mapping, shared by every resource of the same file.
        map: Arc<Mmap>,
        /// The path as written in the text (relative to the naming file's folder).
        path: String,
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        length: u64,
    },
    /// Known by name only: the bytes were elided when the IR was printed.
    Elided,
}

impl Blob {
    /// The bytes, unless elided.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Blob::Owned { data, .. } => Some(data),
            Blob::Mapped {
                map,
                offset,
                length,
                ..
            } => Some(&map[*offset as usize..(*offset + *length) as usize]),
            Blob::Elided => None,
        }
    }
}

/// Equality by content (and, for mapped blobs, by the printed reference).
impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Blob::Owned { data: a, align: x }, Blob::Owned { data: b, align: y }) => {
                a == b && x == y
            }
            (
                Blob::Mapped {
                    path: p,
                    offset: o,
                    length: l,
                    ..
                },
                Blob::Mapped {
                    path: q,
                    offset: r,
                    length: m,
                    ..
                },
            ) => p == q && o == r && l == m,
            (Blob::Elided, Blob::Elided) => true,
            _ => false,
        }
    }
}

/// The resources of a module, by name (iterated in name order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    map: BTreeMap<String, Blob>,
}

impl Resources {
    /// The blob named `name`.
    pub fn get(&self, name: &str) -> Option<&Blob> {
        self.map.get(name)
    }

    /// Inserts or replaces a blob.
    pub fn insert(&mut self, name: impl Into<String>, blob: Blob) {
        self.map.insert(name.into(), blob);
    }

    /// Removes a blob.
    pub fn remove(&mut self, name: &str) -> Option<Blob> {
        self.map.remove(name)
    }

    /// Name-blob pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Blob)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Whether there are no resources.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Maps `length` bytes at `offset` of `rel_path`, resolved against `base_dir`. The path must be relative,
/// without `..`, and name a regular file (not a symlink) inside `base_dir`; the range must lie inside the
/// file. The error is one sentence.
pub fn map_external(
    base_dir: &Path,
    rel_path: &str,
    offset: u64,
    length: u64,
) -> Result<Blob, String> {
    let rel = Path::new(rel_path);
    if rel_path.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "external resource path \"{rel_path}\" must be relative and stay inside the file's folder"
        ));
    }
    let full = base_dir.join(rel);
    let meta =
        std::fs::symlink_metadata(&full).map_err(|e| format!("cannot open \"{rel_path}\": {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "external resource \"{rel_path}\" is not a regular file"
        ));
    }
    let end = offset.checked_add(length).filter(|&e| e <= meta.len());
    if end.is_none() {
        return Err(format!(
            "external resource range offset {offset} + length {length} exceeds the size {} of \"{rel_path}\"",
            meta.len()
        ));
    }
    let file = File::open(&full).map_err(|e| format!("cannot open \"{rel_path}\": {e}"))?;
    // SAFETY: the mapping is read-only; qc never writes to files it has mapped. A file truncated by
    // another process while mapped is outside qc's contract, as for any mmap-based reader.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map \"{rel_path}\": {e}"))?;
    Ok(Blob::Mapped {
        map: Arc::new(map),
        path: rel_path.to_string(),
        offset,
        length,
    })
}

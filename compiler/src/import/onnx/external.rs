//! Memory-mapped files and hardened resolution of ONNX external data.
//!
//! A tensor's `external_data` names a file by a `location` relative to the model's folder. An ONNX file is
//! untrusted input, so a location is accepted only when it stays inside that folder, as the ONNX project
//! itself now requires:
//! - it is relative (no leading `/`), non-empty, without NUL or `\`, and has no `..` component;
//! - no component is a symbolic link: the walk opens each folder with `openat(O_NOFOLLOW | O_DIRECTORY)`
//!   from the model's folder, so a link swapped in during the walk is refused too;
//! - the last component is opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO cannot block the open) and must be
//!   a regular file (not a FIFO, socket or device) with exactly one hard link.
//!
//! The byte range is checked against the file's size (with overflow checks) before the file is mapped or
//! read; see [`check_range`]. Files are mapped whole and shared ([`MappedFile`]); nothing is copied.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

/// A whole file, memory-mapped read-only, shared by every tensor whose bytes lie in it.
#[derive(Debug)]
pub struct MappedFile {
    /// The name to use when referring to the file from IR next to the model: the `location` of external
    /// data, normalized (`./a//b` becomes `a/b`), or the model file's own file name for the model itself. Always relative to
    /// the model's folder (so `external<"{rel}", offset, length>` resolves like the model does).
    pub rel: String,
    /// The path the file was opened by.
    pub path: PathBuf,
    /// The mapping of the whole file.
    pub map: Arc<Mmap>,
}

impl MappedFile {
    /// Maps an already opened file.
    pub fn map(file: &File, rel: String, path: PathBuf) -> Result<MappedFile, String> {
        // SAFETY: the mapping is read-only and qc never writes to files it maps. A file truncated by another
        // process while mapped is outside qc's contract, as for any mmap-based reader.
        let map = unsafe { Mmap::map(file) }.map_err(|e| format!("cannot map \"{rel}\": {e}"))?;
        Ok(MappedFile {
            rel,
            path,
            map: Arc::new(map),
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[..]
    }

    /// The size of the mapped file.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Owner handed to [`bytes::Bytes::from_owner`]: keeps the mapping alive while decoded slices exist.
pub(crate) struct MapOwner(pub(crate) Arc<Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0[..]
    }
}

/// Checks that `offset + length` lies inside a file of `size` bytes; `length` defaults to the rest of the
/// file. Returns the length. The error is one sentence.
pub fn check_range(offset: u64, length: Option<u64>, size: u64) -> Result<u64, String> {
    if offset > size {
        return Err(format!(
            "offset {offset} is past the end of the {size}-byte file"
        ));
    }
    let length = length.unwrap_or(size - offset);
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(length),
        Some(end) => Err(format!(
            "offset {offset} + length {length} = {end} is past the end of the {size}-byte file"
        )),
        None => Err(format!("offset {offset} + length {length} overflows")),
    }
}

/// Checks `location` lexically; returns its components (without `.` and empty ones).
pub fn check_location(location: &str) -> Result<Vec<&str>, String> {
    if location.is_empty() {
        return Err("external data location is empty".into());
    }
    if location.contains('\0') {
        return Err("external data location contains a NUL byte".into());
    }
    if location.contains('\\') {
        return Err(format!(
            "external data location \"{location}\" contains '\\' (use '/' separators)"
        ));
    }
    if location.starts_with('/') {
        return Err(format!(
            "external data location \"{location}\" is an absolute path; it must be relative to the model's folder"
        ));
    }
    let parts: Vec<&str> = location
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "external data location \"{location}\" has a '..' component; it must stay inside the model's folder"
        ));
    }
    if parts.is_empty() {
        return Err(format!(
            "external data location \"{location}\" does not name a file"
        ));
    }
    Ok(parts)
}

/// Opens `location` inside `model_dir` with every check in the module documentation. Returns the open file
/// and its size; the file is neither read nor mapped.
pub fn open_external(model_dir: &Path, location: &str) -> Result<(File, u64), String> {
    let parts = check_location(location)?;
    imp::open_beneath(model_dir, location, &parts)
}

#[cfg(unix)]
mod imp {
    use std::ffi::CString;
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn cstr(s: &[u8], location: &str) -> Result<CString, String> {
        CString::new(s)
            .map_err(|_| format!("external data location \"{location}\" contains a NUL byte"))
    }

    fn errno_msg() -> String {
        std::io::Error::last_os_error().to_string()
    }

    /// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
    fn lstat_at(dir: &OwnedFd, name: &CString) -> Result<libc::stat, String> {
        // SAFETY: `st` is plain old data written by the kernel; `name` is NUL-terminated; `dir` is open.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            ) != 0
            {
                return Err(errno_msg());
            }
            Ok(st)
        }
    }

    fn fstat(fd: &OwnedFd) -> Result<libc::stat, String> {
        // SAFETY: as above.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(errno_msg());
            }
            Ok(st)
        }
    }

    fn open_at(
        dir: Option<&OwnedFd>,
        name: &CString,
        flags: libc::c_int,
    ) -> Result<OwnedFd, String> {
        let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
        // SAFETY: `name` is NUL-terminated; on success the kernel returns a fresh descriptor we own.
        let fd = unsafe { libc::openat(at, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(errno_msg());
        }
        // SAFETY: `fd` is a valid descriptor returned above and owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn kind(mode: libc::mode_t) -> &'static str {
        match mode & libc::S_IFMT {
            libc::S_IFREG => "a regular file",
            libc::S_IFDIR => "a directory",
            libc::S_IFLNK => "a symbolic link",
            libc::S_IFIFO => "a FIFO",
            libc::S_IFSOCK => "a socket",
            libc::S_IFCHR => "a character device",
            libc::S_IFBLK => "a block device",
            _ => "not a regular file",
        }
    }

    pub(super) fn open_beneath(
        model_dir: &Path,
        location: &str,
        parts: &[&str],
    ) -> Result<(File, u64), String> {
        let dir_path = if model_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            model_dir
        };
        let dir_c = cstr(dir_path.as_os_str().as_bytes(), location)?;
        let mut dir = open_at(None, &dir_c, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| format!("cannot open the model's folder: {e}"))?;
        let (last, parents) = match parts.split_last() {
            Some(x) => x,
            None => {
                return Err(format!(
                    "external data location \"{location}\" does not name a file"
                ))
            }
        };
        for (i, comp) in parents.iter().enumerate() {
            let sub = parts[..=i].join("/");
            let c = cstr(comp.as_bytes(), location)?;
            let st = lstat_at(&dir, &c).map_err(|e| {
                format!("external data location \"{location}\": cannot open \"{sub}\": {e}")
            })?;
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                return Err(format!(
                    "external data location \"{location}\": parent component \"{sub}\" is a symbolic link"
                ));
            }
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(format!(
                    "external data location \"{location}\": \"{sub}\" is {}, not a directory",
                    kind(st.st_mode)
                ));
            }
            dir = open_at(
                Some(&dir),
                &c,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )
            .map_err(|e| {
                format!("external data location \"{location}\": cannot open \"{sub}\": {e}")
            })?;
        }
        let c = cstr(last.as_bytes(), location)?;
        let st = lstat_at(&dir, &c)
            .map_err(|e| format!("cannot open external data \"{location}\": {e}"))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(format!(
                "external data location \"{location}\" is a symbolic link"
            ));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(format!(
                "external data location \"{location}\" is {}, not a regular file",
                kind(st.st_mode)
            ));
        }
        let fd = open_at(
            Some(&dir),
            &c,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
        .map_err(|e| format!("cannot open external data \"{location}\": {e}"))?;
        let st =
            fstat(&fd).map_err(|e| format!("cannot stat external data \"{location}\": {e}"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(format!(
                "external data location \"{location}\" is {}, not a regular file",
                kind(st.st_mode)
            ));
        }
        if st.st_nlink > 1 {
            return Err(format!(
                "external data file \"{location}\" has {} hard links; a hard-linked file may alias a file outside the model's folder",
                st.st_nlink
            ));
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        Ok((File::from(fd), size))
    }
}

#[cfg(not(unix))]
mod imp {
    use std::fs::File;
    use std::path::Path;

    pub(super) fn open_beneath(
        _: &Path,
        location: &str,
        _: &[&str],
    ) -> Result<(File, u64), String> {
        Err(format!(
            "external data \"{location}\": only supported on Unix-like systems"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(check_range(0, None, 10), Ok(10));
        assert_eq!(check_range(4, Some(6), 10), Ok(6));
        assert!(check_range(4, Some(7), 10).is_err());
        assert!(check_range(11, None, 10).is_err());
        assert!(check_range(1, Some(u64::MAX), 10).is_err());
    }

    #[test]
    fn locations() {
        assert_eq!(check_location("a/./b.bin").unwrap(), vec!["a", "b.bin"]);
        assert!(check_location("/etc/passwd").is_err());
        assert!(check_location("a/../../x").is_err());
        assert!(check_location("..").is_err());
        assert!(check_location(".").is_err());
        assert!(check_location("").is_err());
        assert!(check_location("a\\..\\b").is_err());
    }
}

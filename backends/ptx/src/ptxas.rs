//! Finding and running NVIDIA's `ptxas`, the PTX-to-SASS assembler, to check (and assemble) emitted PTX.
//!
//! qc does not ship ptxas. The project installs it from PyPI (`nvidia-cuda-nvcc`, CUDA 13), which puts it
//! at `<site-packages>/nvidia/cu13/bin/ptxas`; `.ci/find-ptxas.sh` implements the same search as
//! [`find_ptxas`].

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, GpuTarget};

/// The environment variable that, when set, names the ptxas executable to use (no search is done).
pub const PTXAS_ENV: &str = "QC_PTXAS";

/// Where ptxas lies below a directory of the `nvidia` Python namespace package, in search order:
/// CUDA 13's `nvidia-cuda-nvcc`, then CUDA 12's `nvidia-cuda-nvcc-cu12`.
const PYTHON_LAYOUTS: [&str; 2] = ["cu13/bin/ptxas", "cuda_nvcc/bin/ptxas"];

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The directories of the `nvidia` namespace package of `python3` (empty if there is none).
fn python_nvidia_dirs() -> Vec<PathBuf> {
    let script = "import nvidia\nfor p in nvidia.__path__: print(p)";
    match Command::new("python3").arg("-c").arg(script).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| PathBuf::from(l.trim()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Finds a ptxas executable.
///
/// Order: the path in [`PTXAS_ENV`] (`QC_PTXAS`) if that variable is set and non-empty (it must then be
/// an executable file, else this is an error); then `nvidia/cu13/bin/ptxas` and `nvidia/cuda_nvcc/bin/ptxas`
/// inside every directory of `python3`'s `nvidia` package; then `ptxas` on `PATH`.
/// Returns [`Error::PtxasNotFound`], saying what was searched, when none is found.
pub fn find_ptxas() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os(PTXAS_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable_file(&path) {
            Ok(path)
        } else {
            Err(Error::PtxasNotFound(format!(
                "{PTXAS_ENV}={} is not an executable file",
                path.display()
            )))
        };
    }
    let nvidia_dirs = python_nvidia_dirs();
    for dir in &nvidia_dirs {
        for layout in PYTHON_LAYOUTS {
            let candidate = dir.join(layout);
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("ptxas");
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(Error::PtxasNotFound(format!(
        "{PTXAS_ENV} is unset, python3's nvidia package dirs {nvidia_dirs:?} hold none of {PYTHON_LAYOUTS:?}, \
         and there is no ptxas on PATH (install it with `pip install nvidia-cuda-nvcc`)"
    )))
}

/// Assembles `ptx` with `ptxas -arch=<target>` and returns the resulting cubin (an ELF image).
///
/// `Ok` means ptxas accepted the PTX for exactly that target; a rejection is [`Error::Ptxas`] with
/// ptxas's diagnostics. Warnings are promoted to errors (`--warning-as-error`), so `Ok` also means the
/// PTX assembled cleanly. The files live in a temporary directory that is removed afterwards.
pub fn assemble(ptxas: &Path, ptx: &str, target: GpuTarget) -> Result<Vec<u8>, Error> {
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("kernel.ptx");
    let output = dir.path().join("kernel.cubin");
    std::fs::write(&input, ptx)?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={}", target.name()))
        .arg("--warning-as-error")
        .arg("-o")
        .arg(&output)
        .arg(&input)
        .output()?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(Error::Ptxas {
            arch: target.name(),
            status: out.status,
            stderr,
        });
    }
    Ok(std::fs::read(&output)?)
}

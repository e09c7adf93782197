//! Ahead-of-time compilation of a whole model's LLVM IR (produced elsewhere, e.g. by MLIR's
//! `mlir-translate --mlir-to-llvmir`) into a shared library for one CPU level.
//!
//! [`object_from_llvm_ir`] parses textual LLVM IR, sets the x86-64 triple and data layout, runs LLVM's
//! `default<O3>` pipeline with a target machine for the level (`x86-64-v4` = AVX-512, `x86-64-v3` =
//! AVX2/FMA) and emits a position independent ELF object. [`link_shared`] compiles C sources (a shim
//! written by the caller) with the same `-march` and links everything into a shared library with
//! `$CC` (default `cc`) `-shared`, against libm and libc; an undefined symbol is a link error
//! (`-z defs`), so that the library is self-contained. Both are deterministic for the same inputs:
//! the work happens in a temporary folder with fixed relative file names, and the linker's build id is
//! a hash of the contents.
//!
//! `qc compile --target x86-64-v4|x86-64-v3` (compiler/src/cmd/cpu.rs) is the user.

use std::path::Path;
use std::process::Command;

use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::FileType;

use crate::{target_machine, CpuTarget, Error};

/// Compiles the textual LLVM IR `ir` into a relocatable, position independent x86-64 ELF object for
/// `target`, optimized with `default<O3>`. The IR's own triple and data layout are replaced by the
/// target machine's. After optimization, every function *declared* (not defined) under a name `from`
/// of `renames` is renamed `to`, so that its calls go to another implementation (the CPU target routes
/// the model's `malloc` and `free` to its shim's buffer cache this way). Thread safe: each call uses its
/// own LLVM context.
pub fn object_from_llvm_ir(
    ir: &str,
    target: CpuTarget,
    renames: &[(&str, &str)],
) -> Result<Vec<u8>, Error> {
    let machine = target_machine(target)?;
    let context = Context::create();
    let buffer = MemoryBuffer::create_from_memory_range_copy(ir.as_bytes(), "model.ll");
    let module = context
        .create_module_from_ir(buffer)
        .map_err(|e| Error::Verify(format!("cannot parse the LLVM IR: {e}")))?;
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    module.verify().map_err(|e| Error::Verify(e.to_string()))?;
    module
        .run_passes("default<O3>", &machine, PassBuilderOptions::create())
        .map_err(|e| Error::Passes(e.to_string()))?;
    for (from, to) in renames {
        if let Some(f) = module.get_function(from) {
            if f.count_basic_blocks() == 0 {
                f.as_global_value().set_name(to);
            }
        }
    }
    let out = machine
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| Error::Codegen(e.to_string()))?;
    Ok(out.as_slice().to_vec())
}

fn run(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .output()
        .map_err(|e| Error::Link(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Link(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Links the objects `objects` and the C sources `c_sources` (name, text; compiled with `-O3
/// -march=<target> -fPIC -std=gnu11 -ffp-contract=fast`: `a * b + c` is one FMA) into a shared library, returned as bytes. The library links libm and
/// libc dynamically (the model's `math` calls and its buffers' `malloc`/`free`). Only the symbols
/// `exports` are exported (a version script makes every other symbol local, so that no definition of
/// the library, e.g. MLIR's function `main`, is interposed by or interposes a symbol of the program).
/// With `openmp`, the C sources are compiled with `-fopenmp` and the library links the compiler's
/// OpenMP runtime (libgomp for gcc) dynamically; it is then marked `-z nodelete` (dlclose leaves it
/// loaded), because the runtime's idle worker threads would otherwise outlive the unloaded runtime.
pub fn link_shared(
    objects: &[(&str, &[u8])],
    c_sources: &[(&str, &str)],
    exports: &[&str],
    openmp: bool,
    target: CpuTarget,
) -> Result<Vec<u8>, Error> {
    let omp: &[&str] = if openmp { &["-fopenmp"] } else { &[] };
    let omp_link: &[&str] = if openmp {
        &["-fopenmp", "-Wl,-z,nodelete"]
    } else {
        &[]
    };
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let ccs = cc.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().map_err(|e| Error::Link(format!("temporary folder: {e}")))?;
    let d: &Path = dir.path();
    let mut inputs = Vec::new();
    for (name, bytes) in objects {
        std::fs::write(d.join(name), bytes).map_err(|e| Error::Link(e.to_string()))?;
        inputs.push(name.to_string());
    }
    for (name, text) in c_sources {
        std::fs::write(d.join(name), text).map_err(|e| Error::Link(e.to_string()))?;
        let obj = format!("{name}.o");
        run(
            Command::new(&cc)
                .current_dir(d)
                .args([
                    "-c",
                    "-O3",
                    "-fPIC",
                    "-std=gnu11",
                    "-fno-ident",
                    "-ffp-contract=fast",
                ])
                .args(omp)
                .arg(format!("-march={}", target.cpu_name()))
                .arg(name)
                .arg("-o")
                .arg(&obj),
            &format!("{ccs} -c {name}"),
        )?;
        inputs.push(obj);
    }
    let script: String = exports.iter().map(|e| format!(" {e};")).collect();
    std::fs::write(
        d.join("exports.map"),
        format!("{{\n  global:{script}\n  local: *;\n}};\n"),
    )
    .map_err(|e| Error::Link(e.to_string()))?;
    run(
        Command::new(&cc)
            .current_dir(d)
            .args([
                "-shared",
                "-Wl,--version-script=exports.map",
                "-Wl,-z,noexecstack",
                "-Wl,-z,defs",
                "-Wl,--build-id=sha1",
                "-o",
                "model.so",
            ])
            .args(omp_link)
            .args(&inputs)
            .args(["-lm", "-lc"]),
        &format!("{ccs} -shared"),
    )?;
    std::fs::read(d.join("model.so")).map_err(|e| Error::Link(e.to_string()))
}

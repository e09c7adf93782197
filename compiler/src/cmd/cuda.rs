//! `qc compile --target sm_80|sm_89|sm_90a|sm_100a|sm_120a` (`sm_90` means `sm_90a`, `sm_100` means
//! `sm_100a`, `sm_120` means `sm_120a`): PTX for the whole model, checked by ptxas, and a launch plan.
//! Needs qc's cargo feature `cpu` (the route goes through MLIR and LLVM 22's tools).
//!
//! # Route
//! 1. The compiled module is specialized to static shapes (`--shape`) and exported to upstream MLIR
//!    (`qc_backend_hlo::upstream::export_module`), as for the CPU targets.
//! 2. LLVM 22's `mlir-opt` runs [`TO_GPU`]: bufferization, linalg to `scf.parallel` loops, the loops
//!    mapped to the GPU grid and converted to `gpu.launch`, and each launch body outlined into its own
//!    `gpu.module`. The result is the *host program* (`host.mlir`): function `@main` on memrefs, whose
//!    body is a straight-line sequence of `memref.alloc`, `memref.get_global` (weights, whose bytes are
//!    the module's `memref.global` constants), view ops, `memref.copy` and `gpu.launch_func`.
//! 3. `mlir-opt` lowers that program with [`to_ptx`] (`gpu-lower-to-nvvm-pipeline` with
//!    `cubin-format=isa`, LLVM's NVPTX back end at `-O3` for the chip), linking libdevice from the CUDA
//!    toolkit that holds ptxas (its `nvvm/libdevice/libdevice.10.bc`; `CUDA_ROOT` otherwise). The PTX
//!    of each kernel module is taken from the `gpu.binary` ops.
//! 4. Every PTX is assembled by ptxas (`qc_backend_ptx::ptxas`, found through `QC_PTXAS` or the
//!    python `nvidia` package or `PATH`) for exactly the target with warnings as errors; a rejection is
//!    an internal error (exit code 1).
//!
//! # Artifact
//! - `<module>.ptx`, one per kernel module (`main_kernel.ptx`, `main_kernel_0.ptx`, ...), each with one
//!   `.entry main_kernel`;
//! - `host.mlir`: the host program of step 2 (with the kernels' `gpu.module`s and the weights);
//! - [`PLAN`] (`launch_plan.json`): the host program's steps in order. A `launch` step names the PTX
//!   part and its entry, the grid and block sizes, and the arguments in order (SSA value of the host
//!   program, its type, and its value for `index` constants); every other step gives the op and its
//!   text line in `host.mlir` (allocations, weights, views, copies, the return). Kernel arguments use
//!   MLIR's default GPU calling convention: a memref argument is passed as its expanded descriptor
//!   (allocated pointer, aligned pointer, offset, sizes, strides), an `index` as a 64-bit integer.
//!
//! The manifest's `entry` is `main` (the host program's function). Compiling twice gives byte-identical
//! artifacts.
//!
//! Limitations: no CUDA executor exists yet, so nothing here runs the PTX (`qc run` rejects these
//! artifacts); the kernels are naive (one thread per block, each computing one output element of a
//! loop nest; reductions are sequential loops in the thread); formats whose element types MLIR cannot
//! lower are rejected with MLIR's diagnostic (exit code 2).

use std::path::{Path, PathBuf};

use qc_backend_ptx::GpuTarget;
use qc_ir::Module;
use qc_runtime::artifact::{self, Artifact};

use crate::cmd::target::Target;
use crate::output::{input_error, Failure};

/// The launch plan part.
pub const PLAN: &str = "launch_plan.json";
/// The host program part.
pub const HOST: &str = "host.mlir";
/// The host program's function (the manifest's entry).
pub const ENTRY: &str = "main";

/// The mlir-opt pipeline from the upstream export to the host program with outlined kernels.
pub const TO_GPU: &[&str] = &[
    "--convert-elementwise-to-linalg",
    "--one-shot-bufferize=bufferize-function-boundaries",
    "--convert-linalg-to-parallel-loops",
    "--gpu-map-parallel-loops",
    "--convert-parallel-loops-to-gpu",
    "--canonicalize",
    "--gpu-kernel-outlining",
];

/// The PTX ISA version asked of LLVM for a target (the lowest that the chip needs, at least 8.0).
fn ptx_features(t: GpuTarget) -> &'static str {
    match t {
        GpuTarget::Sm80 | GpuTarget::Sm89 | GpuTarget::Sm90a => "+ptx80",
        GpuTarget::Sm100a => "+ptx86",
        GpuTarget::Sm120a => "+ptx87",
    }
}

/// The mlir-opt pipeline from the host program to `gpu.binary` ops holding PTX for `t`.
pub fn to_ptx(t: GpuTarget) -> Vec<String> {
    vec![
        "--lower-affine".into(),
        "--arith-expand=include-f4e2m1=true include-f8e8m0=true".into(),
        "--convert-scf-to-cf".into(),
        format!(
            "--gpu-lower-to-nvvm-pipeline=cubin-chip={} cubin-features={} cubin-format=isa opt-level=3",
            t.name(),
            ptx_features(t)
        ),
    ]
}

/// The GPU target of a `--target`.
pub fn gpu_target(t: Target) -> Result<GpuTarget, Failure> {
    GpuTarget::parse(t.name()).map_err(|e| Failure::Internal(format!("internal error: {e}\n")))
}

/// Runs mlir-opt with `args` on `input` (and `CUDA_ROOT` when given, for libdevice); its output.
fn mlir_opt(
    args: &[String],
    input: &[u8],
    cuda_root: Option<&Path>,
    what: &str,
) -> Result<Vec<u8>, Failure> {
    let env: Vec<(&str, &Path)> = cuda_root.map(|r| ("CUDA_ROOT", r)).into_iter().collect();
    crate::cmd::cpu::tool("mlir-opt", args, &env, input, what)
}

/// The CUDA toolkit folder holding `ptxas` (`<root>/bin/ptxas`) when it has libdevice.
fn cuda_root(ptxas: &Path) -> Option<PathBuf> {
    let root = ptxas.parent()?.parent()?;
    root.join("nvvm/libdevice/libdevice.10.bc")
        .is_file()
        .then(|| root.to_path_buf())
}

/// Decodes a string literal as MLIR prints it (`\\` and `\XX` hex escapes).
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The PTX of each `gpu.binary` op of `text` (module name, PTX), in the order of the text.
pub fn binaries(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("gpu.binary @") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let start = line
            .find("assembly = \"")
            .ok_or_else(|| format!("gpu.binary @{name} holds no assembly"))?
            + "assembly = \"".len();
        let len = line[start..]
            .find('"')
            .ok_or_else(|| format!("gpu.binary @{name}: unterminated assembly"))?;
        let ptx = unescape(&line[start..start + len])
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("gpu.binary @{name}: bad assembly string"))?;
        out.push((name, ptx));
    }
    Ok(out)
}

/// Splits `s` at the commas outside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '<' | '{' => depth += 1,
            ')' | ']' | '>' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

/// The text between `open` (which ends with `(`) and its matching `)` in `s`.
fn parenthesized<'a>(s: &'a str, open: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let mut depth = 1;
    for (i, c) in s[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o += "\\\"",
            '\\' => o += "\\\\",
            c if (c as u32) < 0x20 => o += &format!("\\u{:04x}", c as u32),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The launch plan (module documentation) of the host program `host`; the kernel modules it launches.
pub fn launch_plan(host: &str, target: &str) -> Result<(String, Vec<String>), String> {
    let mut lines = host.lines();
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("func.func @main("))
        .ok_or("the host program has no @main")?;
    let mut consts = std::collections::BTreeMap::new();
    let mut steps = Vec::new();
    let mut kernels = Vec::new();
    for line in lines {
        if line == "  }" {
            break;
        }
        let t = line.trim();
        if let Some((lhs, rhs)) = t.split_once(" = arith.constant ") {
            if let Some(v) = rhs
                .strip_suffix(" : index")
                .and_then(|v| v.parse::<i64>().ok())
            {
                consts.insert(lhs.to_string(), v);
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("gpu.launch_func") {
            let rest = rest.trim_start();
            let (callee, _) = rest.split_once(' ').ok_or("bad gpu.launch_func")?;
            let (module, entry) = callee
                .strip_prefix('@')
                .and_then(|c| c.split_once("::@"))
                .ok_or("bad gpu.launch_func callee")?;
            let dims = |open: &str| -> Result<String, String> {
                let inner = parenthesized(rest, open).ok_or("bad gpu.launch_func sizes")?;
                let v: Vec<String> = split_top(inner)
                    .iter()
                    .map(|n| {
                        consts
                            .get(*n)
                            .map(|v| v.to_string())
                            .ok_or_else(|| format!("launch size {n} is not a constant"))
                    })
                    .collect::<Result<_, _>>()?;
                Ok(format!("[{}]", v.join(", ")))
            };
            let grid = dims("blocks in (")?;
            let block = dims("threads in (")?;
            let args = parenthesized(rest, "args(").unwrap_or("");
            let args: Vec<String> = split_top(args)
                .iter()
                .map(|a| {
                    let (v, ty) = a.split_once(" : ").unwrap_or((a, ""));
                    let mut o = format!("{{\"value\": {}, \"type\": {}", json_str(v), json_str(ty));
                    if let Some(c) = consts.get(v) {
                        o += &format!(", \"const\": {c}");
                    }
                    o + "}"
                })
                .collect();
            steps.push(format!(
                "    {{\"op\": \"launch\", \"ptx\": {}, \"entry\": {}, \"grid\": {grid}, \"block\": {block}, \
                 \"args\": [{}]}}",
                json_str(&format!("{module}.ptx")),
                json_str(entry),
                args.join(", ")
            ));
            kernels.push(module.to_string());
            continue;
        }
        let body = t.split_once(" = ").map_or(t, |(_, r)| r);
        let op: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
            .collect();
        steps.push(format!(
            "    {{\"op\": {}, \"text\": {}}}",
            json_str(&op),
            json_str(t)
        ));
    }
    let plan = format!(
        "{{\n  \"format\": \"qc-launch-plan-1\",\n  \"target\": {},\n  \"host\": {},\n  \"entry\": {},\n  \
         \"steps\": [\n{}\n  ]\n}}\n",
        json_str(target),
        json_str(HOST),
        json_str(ENTRY),
        steps.join(",\n")
    );
    Ok((plan, kernels))
}

/// `qc compile --target sm_*`: lowers function `func` of the compiled module `m` to PTX and writes the
/// artifact (module documentation) to `out`.
pub fn write_artifact(
    target: Target,
    m: &Module,
    func: &str,
    shapes: &[String],
    model: &Path,
    pipeline: &str,
    out: &Path,
) -> Result<(), Failure> {
    let gpu = gpu_target(target)?;
    let internal = |e: String| Failure::Internal(format!("internal error: {e}\n"));
    let mut b = qc_backend_hlo::ShapeBindings::new();
    for s in shapes {
        b.add(s).map_err(|e| input_error(format!("--shape: {e}")))?;
    }
    let render = |d: qc_ir::Diagnostic| Failure::Input(d.render(None));
    let specialized = qc_backend_hlo::specialize(m, func, &b).map_err(render)?;
    let text = qc_backend_hlo::upstream::export_module(m, func, &b).map_err(render)?;
    let mut manifest =
        crate::cmd::target::manifest(target, m, &specialized, shapes, model, pipeline)?;
    manifest.entry = ENTRY.into();
    let ptxas = qc_backend_ptx::ptxas::find_ptxas().map_err(|e| {
        input_error(format!(
            "the {} target checks its PTX with ptxas: {e}",
            target.name()
        ))
    })?;
    let what = format!("the {} target cannot lower this model", target.name());
    let gpu_args: Vec<String> = TO_GPU.iter().map(|s| s.to_string()).collect();
    let host = mlir_opt(&gpu_args, text.as_bytes(), None, &what)?;
    let host = String::from_utf8(host).map_err(|e| internal(e.to_string()))?;
    let lowered = mlir_opt(
        &to_ptx(gpu),
        host.as_bytes(),
        cuda_root(&ptxas).as_deref(),
        &what,
    )?;
    let lowered = String::from_utf8(lowered).map_err(|e| internal(e.to_string()))?;
    let ptx = binaries(&lowered).map_err(internal)?;
    let (plan, kernels) = launch_plan(&host, gpu.name()).map_err(internal)?;
    for k in &kernels {
        if !ptx.iter().any(|(n, _)| n == k) {
            return Err(internal(format!(
                "the host program launches @{k}, which has no PTX"
            )));
        }
    }
    if let Some((name, p)) = ptx.iter().find(|(_, p)| p.contains(".extern .func")) {
        let callee = p
            .lines()
            .find(|l| l.contains(".extern .func"))
            .unwrap_or_default();
        return Err(input_error(format!(
            "{what}: kernel {name} calls an external function ({}); is libdevice missing (the CUDA \
             toolkit of {} has no nvvm/libdevice/libdevice.10.bc)?",
            callee.trim(),
            ptxas.display()
        )));
    }
    // ptxas for every kernel, on a few threads.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = ptx.len().div_ceil(threads).max(1);
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ptx
            .chunks(chunk)
            .map(|c| {
                let ptxas = &ptxas;
                s.spawn(move || {
                    c.iter()
                        .filter_map(|(n, p)| {
                            qc_backend_ptx::ptxas::assemble(ptxas, p, gpu)
                                .err()
                                .map(|e| format!("{n}.ptx: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["ptxas thread panicked".into()])
            })
            .collect()
    });
    if let Some(f) = failures.first() {
        return Err(internal(f.clone()));
    }
    let mut parts: Vec<(String, Vec<u8>)> = ptx
        .into_iter()
        .map(|(n, p)| (format!("{n}.ptx"), p.into_bytes()))
        .collect();
    parts.push((HOST.into(), host.into_bytes()));
    parts.push((PLAN.into(), plan.into_bytes()));
    let a = Artifact::new(manifest, parts).map_err(|e| internal(e.to_string()))?;
    artifact::write(out, &a).map_err(|e| input_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mlir_strings() {
        assert_eq!(unescape(r"a\0Ab\\c\22").unwrap(), b"a\nb\\c\"");
        assert!(unescape(r"\0").is_none());
    }

    #[test]
    fn plans_launches() {
        let host = "module {\n  func.func @main(%arg0: memref<4xf32>) -> memref<4xf32> {\n    \
                    %c1 = arith.constant 1 : index\n    %c4 = arith.constant 4 : index\n    \
                    %alloc = memref.alloc() : memref<4xf32>\n    \
                    gpu.launch_func  @main_kernel::@main_kernel blocks in (%c4, %c1, %c1) threads in \
                    (%c1, %c1, %c1)  args(%arg0 : memref<4xf32, strided<[?], offset: ?>>, %c1 : index, \
                    %alloc : memref<4xf32>)\n    return %alloc : memref<4xf32>\n  }\n}\n";
        let (plan, kernels) = launch_plan(host, "sm_90a").unwrap();
        assert_eq!(kernels, ["main_kernel"]);
        assert!(
            plan.contains("\"grid\": [4, 1, 1], \"block\": [1, 1, 1]"),
            "{plan}"
        );
        assert!(
            plan.contains(
                "{\"value\": \"%arg0\", \"type\": \"memref<4xf32, strided<[?], offset: ?>>\"}"
            ),
            "{plan}"
        );
        assert!(
            plan.contains("{\"value\": \"%c1\", \"type\": \"index\", \"const\": 1}"),
            "{plan}"
        );
        assert!(plan.contains("\"op\": \"memref.alloc\""), "{plan}");
        assert!(plan.contains("\"op\": \"return\""), "{plan}");
    }
}

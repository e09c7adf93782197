//! `qc compile --target x86-64-v4|x86-64-v3|native`: the compiled model as a shared library with a C
//! entry point, its weights blob and its header; `qc run ARTIFACT.qca` loads and runs it and `qc bench
//! ARTIFACT.qca` times it. Needs qc's cargo feature `cpu` (which implies `xla`: the route goes through
//! MLIR). `native` is the best level this machine runs (the manifest records which).
//!
//! # Route
//! 1. The compiled module is specialized to static shapes (`--shape`) and exported to upstream MLIR
//!    (`qc_backend_hlo::upstream::export_module_with`; its module documentation lists what exports),
//!    with the matrix products left to qc's kernels as external calls (cmd/cpu_kernels.rs): every
//!    `quant.matmul` of a weight format the kernels read (int4/int8 per channel or group, NVFP4,
//!    MXFP4/6/8, MXINT8, NVINT4, FP8, FP6), every f32 `nn.matmul` of `[.., M, K] x [K, N]` or
//!    equal batch dimensions, and the products of f32 `nn.conv` / `nn.conv_transpose` with at least
//!    4 output channels per group (im2col, then one sgemm call per batch and group); and every
//!    `quant.quantize` of activations to a format whose
//!    quantization the glue implements (`cpu_kernels::has_fake_quant`: int8, fp8_e4m3, fp8_e5m2 per
//!    tensor, mxfp8, mxfp4, nvfp4), computed bit-exactly as qc's interpreter does; a `quant.matmul`
//!    of int8 per-tensor activations (static `amax`) by weights whose elements are small integers
//!    (int8, int4, mxint8, mxfp4, nvfp4, nvint4: `cpu_kernels::has_act8_kernel`) takes the
//!    unquantized activations and runs the int8-activation kernels (qc_backend_llvm::act8), and the
//!    fake-quant call is left out when nothing else reads it.
//! 2. LLVM 22's `mlir-opt` lowers it to the LLVM dialect with `--llvm-request-c-wrappers` followed by
//!    the pipeline of qc_backend_hlo::upstream's documentation ([`LOWER_TO_LLVM`], the one the upstream
//!    tests run with mlir-runner) with `--buffer-deallocation-pipeline` inserted after bufferization
//!    (so that calls free their intermediate buffers) and `--convert-bufferization-to-memref` after it
//!    (the clone of an argument returned as an output), and `mlir-translate --mlir-to-llvmir` makes LLVM
//!    IR of it. The tools are run as processes (text on their standard input and output) from
//!    `$QC_MLIR_BIN`, default `/usr/lib/llvm-22/bin`.
//! 3. qc_backend_llvm::aot compiles the IR for the CPU level with inkwell (`default<O3>`, target
//!    machine `x86-64-v4` = AVX-512 or `x86-64-v3` = AVX2/FMA); qc_backend_llvm's kernels of the
//!    formats used are emitted into a second object; both are linked with a generated C shim
//!    ([`shim_source`], which includes the kernel glue) into `model.so` with `cc -shared -fopenmp`
//!    (libm, libc, libgomp; `-z nodelete`).
//!
//! The artifact holds `model.so`, `model.h` (the C header of the entry point), `weights.bin` (the
//! quantized weights the kernels read, cmd/cpu_kernels.rs) and the manifest (entry `qc_main`, inputs
//! and outputs with static shapes). Float constants other than matrix-product weights stay in the
//! library's data. Compiling twice gives byte-identical artifacts.
//!
//! # C ABI (`model.h`)
//! ```c
//! int qc_main(const void *weights, const int64_t *input_ids, ..., float *out0, ...);
//! int qc_main_packed(const void *weights, void **args);  /* inputs then outputs, args[i] in order */
//! int64_t qc_weights_size(void);                          /* bytes of weights.bin */
//! ```
//! `weights` is the address of a 64-byte aligned copy (or mapping) of `weights.bin` (NULL when it is
//! empty). Then one pointer per manifest input (read only, row major, contiguous, the manifest's static
//! shape and dtype: f32 = `float`, f64 = `double`, i64 = `int64_t`, i32 = `int32_t`), then one per
//! output (caller allocated, written row major). Returns 0, or -1 when memory runs out. The shim wraps
//! MLIR's `_mlir_ciface_main` (memref descriptors): it copies the inputs into private buffers (MLIR may
//! write into function arguments), copies each result out through its strides, and frees the result
//! buffers (those `malloc`ed by the lowered code; not MLIR's global constants). Calls share no mutable
//! state (the weights pointer reaches the kernels through a thread-local variable).
//!
//! # Numerics and threads
//! Matrix products accumulate in f32 with FMA, each output element over K in order (the quantized
//! kernels in the order qc_backend_llvm::gemv documents); the rest is MLIR's `linalg` loops in f32.
//! Products run on OpenMP threads (`OMP_NUM_THREADS`); results are bit-identical for every thread
//! count.
//!
//! Limitations: element types other than the four above are rejected at the boundary; quantized
//! weights that no kernel reads (zero points) go through MLIR's dequantization, and formats whose
//! types upstream MLIR cannot lower on a CPU (f8E4M3FN, f8E5M2, f6) are then rejected with MLIR's
//! diagnostic (exit code 2); the non-product code is `linalg` loops without tiling (elementwise,
//! normalization, softmax).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use qc_backend_llvm::CpuTarget;
use qc_ir::Module;
use qc_runtime::artifact::{self, Artifact, TensorSig};

use crate::cmd::cpu_kernels;
use crate::cmd::run::RunArgs;
use crate::cmd::target::Target;
use crate::npy::{read_npy, to_npy_bytes, NpyArray, NpyData};
use crate::output::{input_error, Failure};

/// The C entry point of the library.
pub const ENTRY: &str = "qc_main";
/// The entry point taking an array of pointers (what `qc run` calls).
pub const ENTRY_PACKED: &str = "qc_main_packed";
/// The parts of a CPU artifact besides the manifest.
pub const LIBRARY: &str = "model.so";
/// The C header part.
pub const HEADER: &str = "model.h";
/// The function returning the byte size of the weights blob the library expects.
pub const WEIGHTS_SIZE: &str = "qc_weights_size";

/// The mlir-opt pipeline from the upstream export to the LLVM dialect (qc_backend_hlo::upstream).
pub const LOWER_TO_LLVM: &[&str] = &[
    "--convert-elementwise-to-linalg",
    "--linalg-fuse-elementwise-ops",
    "--one-shot-bufferize=bufferize-function-boundaries function-boundary-type-conversion=identity-layout-map",
    "--convert-linalg-to-loops",
    "--expand-strided-metadata",
    "--lower-affine",
    "--arith-expand=include-f4e2m1=true include-f8e8m0=true",
    "--convert-math-to-llvm",
    "--convert-math-to-libm",
    "--convert-scf-to-cf",
    "--convert-to-llvm",
    "--reconcile-unrealized-casts",
];

fn cpu_target(t: Target) -> Result<CpuTarget, Failure> {
    CpuTarget::from_str(t.name()).map_err(|e| Failure::Internal(format!("internal error: {e}\n")))
}

/// The path of LLVM/MLIR tool `tool` (`QC_MLIR_BIN`, default /usr/lib/llvm-22/bin).
pub(crate) fn mlir_bin(tool: &str) -> PathBuf {
    let dir = std::env::var_os("QC_MLIR_BIN").unwrap_or_else(|| "/usr/lib/llvm-22/bin".into());
    Path::new(&dir).join(tool)
}

/// Runs the LLVM/MLIR tool `name` with `args` (and the environment variables `env`) on `input` given on
/// standard input; its standard output. A tool that cannot start or fails is a diagnostic (exit 2) that
/// says `what` was being done and quotes the tool's errors.
pub(crate) fn tool<S: AsRef<std::ffi::OsStr>>(
    name: &str,
    args: &[S],
    env: &[(&str, &Path)],
    input: &[u8],
    what: &str,
) -> Result<Vec<u8>, Failure> {
    use std::io::Write;
    let path = mlir_bin(name);
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| {
        input_error(format!(
            "cannot run {} ({e}): qc's CPU and GPU targets need LLVM 22's MLIR tools (set \
             QC_MLIR_BIN to their folder)",
            path.display()
        ))
    })?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child
        .wait_with_output()
        .map_err(|e| input_error(format!("{name}: {e}")))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(input_error(format!(
            "{what}: {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        )));
    }
    Ok(out.stdout)
}

/// The exported upstream MLIR `text` lowered to LLVM IR (steps 2 of the module documentation).
pub fn lower_to_llvm_ir(text: &str, target: &str) -> Result<String, Failure> {
    let what = format!("the {target} target cannot lower this model");
    // The documented pipeline, plus MLIR's buffer deallocation right after bufferization, so that a
    // call frees its intermediate buffers (without it, each call of the tiny BERT leaks ~170 KiB).
    let mut args = vec!["--llvm-request-c-wrappers"];
    for a in LOWER_TO_LLVM {
        args.push(a);
        if a.starts_with("--one-shot-bufferize") {
            args.push("--buffer-deallocation-pipeline");
            // The pipeline clones a returned argument (bufferization.clone): an alloc and a copy.
            args.push("--convert-bufferization-to-memref");
        }
    }
    let llvm_dialect = tool("mlir-opt", &args, &[], text.as_bytes(), &what)?;
    let ir = tool(
        "mlir-translate",
        &["--mlir-to-llvmir"],
        &[],
        &llvm_dialect,
        &what,
    )?;
    String::from_utf8(ir).map_err(|e| Failure::Internal(format!("internal error: {e}\n")))
}

/// The C type of a manifest dtype the ABI supports.
fn c_type(dtype: &str) -> Option<(&'static str, usize)> {
    Some(match dtype {
        "f32" => ("float", 4),
        "f64" => ("double", 8),
        "i64" => ("int64_t", 8),
        "i32" => ("int32_t", 4),
        _ => return None,
    })
}

/// C identifiers for the tensors' names, unique, in order (inputs, then outputs).
fn c_names(sigs: &[&TensorSig]) -> Vec<String> {
    let mut used = std::collections::BTreeSet::new();
    sigs.iter()
        .map(|s| {
            let mut base: String = s
                .name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
                base.insert_str(0, "t_");
            }
            let mut name = base.clone();
            let mut k = 1;
            while !used.insert(name.clone()) || name == "args" {
                name = format!("{base}_{k}");
                k += 1;
            }
            name
        })
        .collect()
}

fn dims(s: &TensorSig) -> String {
    if s.shape.is_empty() {
        "scalar".into()
    } else {
        s.shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x")
    }
}

fn prototype(inputs: &[TensorSig], outputs: &[TensorSig]) -> String {
    let all: Vec<&TensorSig> = inputs.iter().chain(outputs).collect();
    let names = c_names(&all);
    let params: Vec<String> = all
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (s, n))| {
            let c = c_type(&s.dtype).expect("checked").0;
            if i < inputs.len() {
                format!("const {c} *{n}")
            } else {
                format!("{c} *{n}")
            }
        })
        .collect();
    format!("int {ENTRY}(const void *weights, {})", params.join(", "))
}

/// The generated header `model.h` of an artifact for `target`.
pub fn header_source(target: &str, inputs: &[TensorSig], outputs: &[TensorSig]) -> String {
    let mut h = format!(
        "/* model.h: the C entry point of a qc artifact for {target}. Generated by qc; do not edit.\n\
         \x20*\n\
         \x20* qc_main runs the model: the address of the artifact's weights.bin (64-byte aligned, read\n\
         \x20* only; qc_weights_size() bytes, NULL when that is 0), then one pointer per input (read only),\n\
         \x20* then one per output (caller allocated); every tensor is row major and contiguous with the\n\
         \x20* static shape below. It returns 0, or -1 when memory runs out. qc_main_packed takes the same\n\
         \x20* pointers as an array, in the same order, after the weights. Calls share no mutable state.\n\
         \x20* Quantized products run on OpenMP threads (OMP_NUM_THREADS). The library needs a CPU\n\
         \x20* implementing {target}.\n\
         \x20*\n"
    );
    for (i, s) in inputs.iter().enumerate() {
        h += &format!(" * input {i}  {}: {} {}\n", s.name, s.dtype, dims(s));
    }
    for (i, s) in outputs.iter().enumerate() {
        h += &format!(" * output {i} {}: {} {}\n", s.name, s.dtype, dims(s));
    }
    h += " */\n#ifndef QC_MODEL_H\n#define QC_MODEL_H\n\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n";
    h += &format!("{};\n", prototype(inputs, outputs));
    h += &format!("int {ENTRY_PACKED}(const void *weights, void **args);\n");
    h += &format!("int64_t {WEIGHTS_SIZE}(void);\n");
    h += "\n#ifdef __cplusplus\n}\n#endif\n\n#endif /* QC_MODEL_H */\n";
    h
}

/// The sizes and row-major strides of a memref descriptor of `shape` in C initializer syntax
/// (`, {2, 3}, {3, 1}`; empty for rank 0).
fn sizes_and_strides(shape: &[u64]) -> String {
    if shape.is_empty() {
        return String::new();
    }
    let mut strides = vec![1u64; shape.len()];
    for d in (0..shape.len() - 1).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let list = |v: &[u64]| {
        v.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(", {{{}}}, {{{}}}", list(shape), list(&strides))
}

fn descriptor(t: &str, rank: usize) -> String {
    if rank == 0 {
        format!("typedef struct {{ void *allocated; void *aligned; int64_t offset; }} {t};\n")
    } else {
        format!(
            "typedef struct {{ void *allocated; void *aligned; int64_t offset; int64_t sizes[{rank}]; \
             int64_t strides[{rank}]; }} {t};\n"
        )
    }
}

/// The buffer cache of the shim: the lowered model's `malloc` and `free` are renamed `qc_malloc` and
/// `qc_free` (qc_backend_llvm::aot::object_from_llvm_ir). A call of the model allocates the same sizes
/// in the same order every time, so freed blocks are kept per thread and handed out again for a
/// request of the same size: after the first
/// call, a call returns no memory to the system and takes none from it (page faults and TLB
/// shootdowns otherwise dominate the cost of large intermediate buffers). Blocks carry a 16-byte
/// header (size, next) and sit in 1024 hash buckets by size, up to `QC_CACHE_BYTES` (4 GiB) per
/// thread; a thread's cache is freed when it exits.
const ALLOCATOR: &str = r#"#include <pthread.h>
#define QC_CACHE_BUCKETS 1024
#define QC_CACHE_BYTES ((size_t)4 << 30)
typedef struct qc_blk { size_t size; struct qc_blk *next; } qc_blk_t; /* 16-byte header */
typedef struct { qc_blk_t *bucket[QC_CACHE_BUCKETS]; size_t bytes; } qc_cache_t;
static __thread qc_cache_t *qc_cache;
static pthread_key_t qc_cache_key;
static pthread_once_t qc_cache_once = PTHREAD_ONCE_INIT;
static size_t qc_bucket(size_t size) { return (size * 0x9E3779B97F4A7C15ull) >> 54; }
static void qc_cache_drop(void *p) {
  qc_cache_t *c = p;
  for (size_t i = 0; i < QC_CACHE_BUCKETS; i++)
    for (qc_blk_t *b = c->bucket[i], *next; b; b = next) {
      next = b->next;
      free(b);
    }
  free(c);
}
static void qc_cache_init(void) { pthread_key_create(&qc_cache_key, qc_cache_drop); }
__attribute__((visibility("hidden"))) void *qc_malloc(size_t size) {
  qc_cache_t *c = qc_cache;
  if (c)
    for (qc_blk_t **at = &c->bucket[qc_bucket(size)]; *at; at = &(*at)->next)
      if ((*at)->size == size) {
        qc_blk_t *b = *at;
        *at = b->next;
        c->bytes -= size;
        return b + 1;
      }
  qc_blk_t *b = malloc(size + sizeof(qc_blk_t));
  if (!b) return 0;
  b->size = size;
  return b + 1;
}
__attribute__((visibility("hidden"))) void qc_free(void *p) {
  if (!p) return;
  qc_blk_t *b = (qc_blk_t *)p - 1;
  qc_cache_t *c = qc_cache;
  if (!c) {
    pthread_once(&qc_cache_once, qc_cache_init);
    c = calloc(1, sizeof *c);
    if (c) {
      qc_cache = c;
      pthread_setspecific(qc_cache_key, c);
    }
  }
  if (!c || c->bytes + b->size > QC_CACHE_BYTES) {
    free(b);
    return;
  }
  qc_blk_t **at = &c->bucket[qc_bucket(b->size)];
  b->next = *at;
  *at = b;
  c->bytes += b->size;
}

"#;

/// The C shim that implements the ABI of `model.h` over MLIR's `_mlir_ciface_main`, with the glue of
/// the model's kernel calls ([`cpu_kernels::Plan`]) and the size of its weights blob.
pub fn shim_source(
    inputs: &[TensorSig],
    outputs: &[TensorSig],
    constants: &[qc_backend_hlo::upstream::ConstantArg],
    kernels: &cpu_kernels::Plan,
) -> String {
    let all: Vec<&TensorSig> = inputs.iter().chain(outputs).collect();
    let names = c_names(&all);
    let mut c = String::from(
        "/* Generated by qc: the C ABI of model.h over MLIR's _mlir_ciface_main. */\n\
         #include <stdint.h>\n#include <stdlib.h>\n#include <string.h>\n\n",
    );
    let has_kernels = !kernels.glue.is_empty();
    c += ALLOCATOR;
    c += &kernels.glue;
    c += &format!(
        "int64_t {WEIGHTS_SIZE}(void) {{ return {}; }}\n\n",
        kernels.weights.len()
    );
    for (i, s) in inputs.iter().enumerate() {
        c += &descriptor(&format!("qc_in{i}_t"), s.shape.len());
    }
    for (i, s) in outputs.iter().enumerate() {
        c += &descriptor(&format!("qc_out{i}_t"), s.shape.len());
    }
    for (i, k) in constants.iter().enumerate() {
        c += &descriptor(&format!("qc_const{i}_t"), k.shape.len());
    }
    c += "typedef struct {";
    for i in 0..outputs.len() {
        c += &format!(" qc_out{i}_t r{i};");
    }
    c += " } qc_results_t;\n\n";
    let mut ext = vec!["qc_results_t *".to_string()];
    for i in 0..inputs.len() {
        ext.push(format!("qc_in{i}_t *"));
    }
    for i in 0..constants.len() {
        ext.push(format!("qc_const{i}_t *"));
    }
    c += &format!("extern void _mlir_ciface_main({});\n\n", ext.join(", "));
    c += "static void qc_copy_out(char *dst, const char *base, int64_t esize, int rank,\n\
          \x20                       const int64_t *sizes, const int64_t *strides, int64_t n) {\n\
          \x20 for (int64_t i = 0; i < n; i++) {\n\
          \x20   int64_t rem = i, off = 0;\n\
          \x20   for (int d = rank - 1; d >= 0; d--) {\n\
          \x20     off += (rem % sizes[d]) * strides[d];\n\
          \x20     rem /= sizes[d];\n\
          \x20   }\n\
          \x20   memcpy(dst + i * esize, base + off * esize, (size_t)esize);\n\
          \x20 }\n\
          }\n\n";
    // memref.copy of non-contiguous memrefs lowers to a call of memrefCopy (MLIR's C runner utils):
    // defined here, hidden, so that the library is self-contained.
    c += "typedef struct { int64_t rank; void *descriptor; } qc_unranked_t;\n\n\
          __attribute__((visibility(\"hidden\")))\n\
          void memrefCopy(int64_t esize, qc_unranked_t *src, qc_unranked_t *dst) {\n\
          \x20 int64_t rank = src->rank;\n\
          \x20 char **s = (char **)src->descriptor, **d = (char **)dst->descriptor;\n\
          \x20 const int64_t *sm = (const int64_t *)(s + 2), *dm = (const int64_t *)(d + 2);\n\
          \x20 const char *sb = s[1] + sm[0] * esize;\n\
          \x20 char *db = d[1] + dm[0] * esize;\n\
          \x20 const int64_t *sizes = sm + 1, *ss = sm + 1 + rank, *ds = dm + 1 + rank;\n\
          \x20 int64_t n = 1;\n\
          \x20 for (int64_t r = 0; r < rank; r++) n *= sizes[r];\n\
          \x20 for (int64_t i = 0; i < n; i++) {\n\
          \x20   int64_t rem = i, so = 0, dof = 0;\n\
          \x20   for (int64_t r = rank - 1; r >= 0; r--) {\n\
          \x20     int64_t k = rem % sizes[r];\n\
          \x20     rem /= sizes[r];\n\
          \x20     so += k * ss[r];\n\
          \x20     dof += k * ds[r];\n\
          \x20   }\n\
          \x20   memmove(db + dof * esize, sb + so * esize, (size_t)esize);\n\
          \x20 }\n\
          }\n\n";
    c += &format!("{} {{\n", prototype(inputs, outputs));
    // Private copies of the inputs.
    for (i, s) in inputs.iter().enumerate() {
        let (_, es) = c_type(&s.dtype).expect("checked");
        let n: u64 = s.shape.iter().product();
        let bytes = (n as usize * es).max(1);
        c += &format!(
            "  void *b{i} = malloc({bytes});\n  if (!b{i}) {{ {} return -1; }}\n  memcpy(b{i}, {}, {});\n",
            (0..i).map(|k| format!("free(b{k});")).collect::<String>(),
            names[i],
            n as usize * es
        );
        c += &format!(
            "  qc_in{i}_t d{i} = {{ b{i}, b{i}, 0{} }};\n",
            sizes_and_strides(&s.shape)
        );
    }
    c += "  qc_results_t r;\n  memset(&r, 0, sizeof r);\n";
    if has_kernels {
        c += "  qc_weights = (const uint8_t *)weights;\n  qc_failed = 0;\n";
    } else if constants.is_empty() {
        c += "  (void)weights;\n";
    }
    // The constants: read-only views of the weights blob.
    for (i, (k, off)) in constants.iter().zip(&kernels.constant_offsets).enumerate() {
        c += &format!(
            "  qc_const{i}_t k{i} = {{ (void *)((const char *)weights + {off}), (void *)((const char *)weights + {off}), 0{} }};\n",
            sizes_and_strides(&k.shape)
        );
    }
    let mut call = vec!["&r".to_string()];
    for i in 0..inputs.len() {
        call.push(format!("&d{i}"));
    }
    for i in 0..constants.len() {
        call.push(format!("&k{i}"));
    }
    c += &format!("  _mlir_ciface_main({});\n", call.join(", "));
    // Copy out, then free each distinct malloc'ed result buffer (MLIR's globals carry 0xdeadbeef as
    // their allocated pointer; a result may also alias an input copy or another result).
    c += &format!(
        "  void *freed[{}];\n  int nfreed = 0;\n",
        outputs.len().max(1)
    );
    for (i, s) in outputs.iter().enumerate() {
        let (_, es) = c_type(&s.dtype).expect("checked");
        let n: u64 = s.shape.iter().product();
        let rank = s.shape.len();
        let (sz, st) = if rank == 0 {
            ("0".to_string(), "0".to_string())
        } else {
            (format!("r.r{i}.sizes"), format!("r.r{i}.strides"))
        };
        c += &format!(
            "  qc_copy_out((char *){}, (const char *)r.r{i}.aligned + r.r{i}.offset * {es}, {es}, {rank}, {sz}, {st}, {n});\n",
            names[inputs.len() + i]
        );
        let mut not_input: String = (0..inputs.len())
            .map(|k| format!(" && a != b{k}"))
            .collect();
        if !constants.is_empty() {
            // A result may be a view of a constant: inside the weights, not to be freed.
            not_input += &format!(
                " && ((const char *)a < (const char *)weights || (const char *)a >= (const char *)weights + {})",
                kernels.weights.len()
            );
        }
        c += &format!(
            "  {{\n    void *a = r.r{i}.allocated;\n    int seen = 0;\n    for (int k = 0; k < nfreed; k++) seen |= freed[k] == a;\n    if (a && a != (void *)(uintptr_t)0xdeadbeef{not_input} && !seen) {{ qc_free(a); freed[nfreed++] = a; }}\n  }}\n"
        );
    }
    for i in 0..inputs.len() {
        c += &format!("  free(b{i});\n");
    }
    if has_kernels {
        c += "  qc_weights = 0;\n  if (qc_failed) return -1;\n";
    }
    c += "  (void)freed;\n  return 0;\n}\n\n";
    let args: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let t = c_type(&s.dtype).expect("checked").0;
            format!("({t} *)args[{i}]")
        })
        .collect();
    c += &format!(
        "int {ENTRY_PACKED}(const void *weights, void **args) {{\n  return {ENTRY}(weights, {});\n}}\n",
        args.join(", ")
    );
    c
}

/// `qc compile --target x86-64-v4|x86-64-v3`: lowers function `func` of the compiled module `m` and
/// writes the artifact (module documentation) to `out`.
pub fn write_artifact(
    target: Target,
    m: &Module,
    func: &str,
    shapes: &[String],
    model: &Path,
    pipeline: &str,
    out: &Path,
) -> Result<(), Failure> {
    let cpu = cpu_target(target)?;
    let mut b = qc_backend_hlo::ShapeBindings::new();
    for s in shapes {
        b.add(s).map_err(|e| input_error(format!("--shape: {e}")))?;
    }
    let render = |d: qc_ir::Diagnostic| Failure::Input(d.render(None));
    let specialized = qc_backend_hlo::specialize(m, func, &b).map_err(render)?;
    let accept: &dyn Fn(&qc_ir::QuantType) -> bool = &cpu_kernels::has_kernel;
    let fake_quant: &dyn Fn(&qc_ir::QuantType) -> bool = &cpu_kernels::has_fake_quant;
    let act8_any_k = |w: &qc_ir::QuantType, a: &qc_ir::QuantType, _k: u64| {
        cpu_kernels::has_act_quant_kernel(w, a)
    };
    let act8: &qc_backend_hlo::upstream::ActQuantFilter = &act8_any_k;
    let opts = qc_backend_hlo::upstream::ExportOptions {
        kernel_calls: Some(accept),
        float_matmul_calls: true,
        constant_args: true,
        quantize_calls: Some(fake_quant),
        act_quant_calls: Some(act8),
        decode_tables: true,
        // Softmax and layer normalization stay MLIR's loops on the CPU.
        row_kernel_calls: false,
    };
    let exported =
        qc_backend_hlo::upstream::export_module_with(m, func, &b, &opts).map_err(render)?;
    let kernels = cpu_kernels::plan(m, &exported, cpu)?;
    let text = exported.text;
    if let Some(dir) = std::env::var_os("QC_CPU_DUMP") {
        // For developers: the exported module, as mlir-opt receives it, and the kernel glue (C).
        let _ = std::fs::write(Path::new(&dir).join("model.export.mlir"), &text);
        let _ = std::fs::write(Path::new(&dir).join("model.glue.c"), &kernels.glue);
    }
    let mut manifest =
        crate::cmd::target::manifest(target, m, &specialized, shapes, model, pipeline)?;
    manifest.entry = ENTRY.into();
    for (what, s) in manifest
        .inputs
        .iter()
        .map(|s| ("input", s))
        .chain(manifest.outputs.iter().map(|s| ("output", s)))
    {
        if c_type(&s.dtype).is_none() {
            return Err(input_error(format!(
                "the {} target takes f32, f64, i64 and i32 tensors at its boundary; {what} '{}' is {}",
                target.name(),
                s.name,
                s.dtype
            )));
        }
    }
    let ir = lower_to_llvm_ir(&text, target.name())?;
    let obj = qc_backend_llvm::aot::object_from_llvm_ir(
        &ir,
        cpu,
        &[("malloc", "qc_malloc"), ("free", "qc_free")],
    )
    .map_err(|e| Failure::Internal(format!("internal error: {e}\n")))?;
    let shim = shim_source(
        &manifest.inputs,
        &manifest.outputs,
        &exported.constant_args,
        &kernels,
    );
    let header = header_source(target.name(), &manifest.inputs, &manifest.outputs);
    let mut objects: Vec<(&str, &[u8])> = vec![("model.o", &obj)];
    let kernel_obj;
    if !kernels.formats.is_empty() {
        kernel_obj = qc_backend_llvm::gemm::emit_kernels_object(&kernels.formats, cpu)
            .map_err(|e| Failure::Internal(format!("internal error: {e}\n")))?;
        objects.push(("kernels.o", &kernel_obj));
    }
    let so = qc_backend_llvm::aot::link_shared(
        &objects,
        &[("qc_shim.c", &shim)],
        &[ENTRY, ENTRY_PACKED, WEIGHTS_SIZE],
        !kernels.glue.is_empty(),
        cpu,
    )
    .map_err(|e| input_error(e.to_string()))?;
    let a = Artifact::new(
        manifest,
        vec![
            (LIBRARY.into(), so),
            (HEADER.into(), header.into_bytes()),
            (cpu_kernels::WEIGHTS.into(), kernels.weights),
        ],
    )
    .map_err(|e| Failure::Internal(format!("internal error: {e}\n")))?;
    artifact::write(out, &a).map_err(|e| input_error(e.to_string()))
}

/// An 8-byte aligned buffer for one tensor.
fn buffer(bytes: usize) -> Vec<u64> {
    vec![0u64; bytes.div_ceil(8).max(1)]
}

fn as_bytes_mut(b: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no invalid bit patterns and u8 alignment is 1.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut u8, b.len() * 8) }
}

fn fill_input(sig: &TensorSig, a: &NpyArray, what: &str) -> Result<Vec<u64>, Failure> {
    let want: Vec<usize> = sig.shape.iter().map(|&d| d as usize).collect();
    if a.shape != want {
        return Err(input_error(format!(
            "{what}: input '{}' has shape {:?}, the artifact takes {:?}",
            sig.name, a.shape, want
        )));
    }
    let (_, es) = c_type(&sig.dtype).ok_or_else(|| input_error("unsupported dtype"))?;
    let n = a.data.len();
    let mut b = buffer(n * es);
    let bytes = as_bytes_mut(&mut b);
    let mismatch = || {
        input_error(format!(
            "{what}: a {} array cannot feed input '{}' of element type {}",
            a.data.descr(),
            sig.name,
            sig.dtype
        ))
    };
    match (sig.dtype.as_str(), &a.data) {
        ("f32", NpyData::F32(v)) => {
            for (k, x) in v.iter().enumerate() {
                bytes[4 * k..4 * k + 4].copy_from_slice(&x.to_le_bytes());
            }
        }
        ("f64", NpyData::F64(v)) => {
            for (k, x) in v.iter().enumerate() {
                bytes[8 * k..8 * k + 8].copy_from_slice(&x.to_le_bytes());
            }
        }
        ("i64", NpyData::I64(v)) => {
            for (k, x) in v.iter().enumerate() {
                bytes[8 * k..8 * k + 8].copy_from_slice(&x.to_le_bytes());
            }
        }
        ("i32", NpyData::I64(v)) => {
            for (k, x) in v.iter().enumerate() {
                bytes[4 * k..4 * k + 4].copy_from_slice(&(*x as i32).to_le_bytes());
            }
        }
        _ => return Err(mismatch()),
    }
    Ok(b)
}

fn output_array(sig: &TensorSig, b: &mut [u64]) -> NpyArray {
    let shape: Vec<usize> = sig.shape.iter().map(|&d| d as usize).collect();
    let n: usize = shape.iter().product();
    let bytes = as_bytes_mut(b);
    let data = match sig.dtype.as_str() {
        "f32" => NpyData::F32(
            (0..n)
                .map(|k| f32::from_le_bytes(bytes[4 * k..4 * k + 4].try_into().unwrap()))
                .collect(),
        ),
        "f64" => NpyData::F64(
            (0..n)
                .map(|k| f64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().unwrap()))
                .collect(),
        ),
        "i64" => NpyData::I64(
            (0..n)
                .map(|k| i64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().unwrap()))
                .collect(),
        ),
        _ => NpyData::I64(
            (0..n)
                .map(|k| i32::from_le_bytes(bytes[4 * k..4 * k + 4].try_into().unwrap()) as i64)
                .collect(),
        ),
    };
    NpyArray { shape, data }
}

type Entry = unsafe extern "C" fn(*const u8, *mut *mut std::ffi::c_void) -> i32;

/// A CPU artifact loaded into the process: its library (from a temporary copy; linked `-z nodelete`
/// when it uses OpenMP), its entry point, its manifest and its weights, mapped from the file.
struct Loaded {
    path: PathBuf,
    manifest: artifact::Manifest,
    map: memmap2::Mmap,
    weights: std::ops::Range<usize>,
    entry: Entry,
    _lib: libloading::os::unix::Library,
    _tmp: tempfile::NamedTempFile,
}

impl Loaded {
    /// Loads the artifact at `path`; a diagnostic when it is not a CPU artifact this machine runs.
    fn open(path: &Path) -> Result<Loaded, Failure> {
        let err = |e: String| input_error(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path)
            .map_err(|e| input_error(format!("cannot read {}: {e}", path.display())))?;
        // SAFETY: the artifact is mapped read only; qc does not write it while it runs.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| input_error(format!("cannot read {}: {e}", path.display())))?;
        let a = artifact::view(&map).map_err(|e| err(e.to_string()))?;
        // The weights straight from the mapping: members start on 64-byte boundaries of the file.
        let weights = match a.part(cpu_kernels::WEIGHTS) {
            Some(w) => {
                let start = w.as_ptr() as usize - map.as_ptr() as usize;
                start..start + w.len()
            }
            None => 0..0,
        };
        let m = a.manifest.clone();
        let cpu = CpuTarget::from_str(&m.target).map_err(|_| {
            err(format!(
                "qc runs artifacts for x86-64-v4 and x86-64-v3 here, not for {}",
                m.target
            ))
        })?;
        if !cpu.host_supports() {
            return Err(err(format!("this CPU cannot run {} code", m.target)));
        }
        let lib_bytes = a
            .part(LIBRARY)
            .ok_or_else(|| err(format!("the artifact has no {LIBRARY}")))?;
        for s in m.inputs.iter().chain(&m.outputs) {
            if c_type(&s.dtype).is_none() {
                return Err(err(format!("unsupported dtype {}", s.dtype)));
            }
        }
        let mut tmp = tempfile::Builder::new()
            .prefix("qc-model-")
            .suffix(".so")
            .tempfile()
            .map_err(|e| input_error(format!("cannot write a temporary file: {e}")))?;
        {
            use std::io::Write;
            tmp.write_all(lib_bytes)
                .and_then(|_| tmp.flush())
                .map_err(|e| input_error(format!("cannot write a temporary file: {e}")))?;
        }
        // SAFETY: the library is the artifact's, built by qc for this CPU level (checked above).
        // RTLD_NOW: an unresolved symbol is an error here, not a crash in the middle of a call.
        let lib = unsafe {
            libloading::os::unix::Library::open(
                Some(tmp.path()),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
            )
        }
        .map_err(|e| err(format!("cannot load {LIBRARY}: {e}")))?;
        // SAFETY: qc's libraries define both symbols with these types (shim_source).
        let entry: Entry = *unsafe { lib.get::<Entry>(ENTRY_PACKED.as_bytes()) }
            .map_err(|e| err(format!("{LIBRARY} has no {ENTRY_PACKED}: {e}")))?;
        let size = *unsafe { lib.get::<unsafe extern "C" fn() -> i64>(WEIGHTS_SIZE.as_bytes()) }
            .map_err(|e| err(format!("{LIBRARY} has no {WEIGHTS_SIZE}: {e}")))?;
        // SAFETY: a function without arguments returning a constant.
        let want = unsafe { size() };
        let have = weights.len();
        if want != have as i64 || !(map[weights.clone()].as_ptr() as usize).is_multiple_of(64) {
            return Err(err(format!(
                "{LIBRARY} expects {want} bytes of weights (64-byte aligned), the artifact's {} has \
                 {have}",
                cpu_kernels::WEIGHTS
            )));
        }
        Ok(Loaded {
            path: path.to_path_buf(),
            manifest: m,
            map,
            weights,
            entry,
            _lib: lib,
            _tmp: tmp,
        })
    }

    /// Input buffers from `--input NAME=FILE.npy` specs, followed by zeroed output buffers.
    fn buffers(&self, specs: &[String]) -> Result<Vec<Vec<u64>>, Failure> {
        let m = &self.manifest;
        let mut given = crate::cmd::run::input_files(specs)?;
        let names = m
            .inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut bufs = Vec::new();
        for s in &m.inputs {
            let file = given.remove(&s.name).ok_or_else(|| {
                input_error(format!(
                    "missing --input {}=FILE.npy (the artifact's inputs: {names})",
                    s.name
                ))
            })?;
            let arr = read_npy(&file).map_err(input_error)?;
            bufs.push(fill_input(s, &arr, &file.display().to_string())?);
        }
        if let Some(name) = given.keys().next() {
            return Err(input_error(format!(
                "the artifact has no input '{name}' (its inputs: {names})"
            )));
        }
        for s in &m.outputs {
            let n: u64 = s.shape.iter().product();
            bufs.push(buffer(n as usize * c_type(&s.dtype).expect("checked").1));
        }
        Ok(bufs)
    }

    /// One call of the model on `bufs` (from [`Loaded::buffers`]).
    fn call(&self, bufs: &mut [Vec<u64>]) -> Result<(), Failure> {
        let mut ptrs: Vec<*mut std::ffi::c_void> = bufs
            .iter_mut()
            .map(|b| b.as_mut_ptr() as *mut std::ffi::c_void)
            .collect();
        let w = &self.map[self.weights.clone()];
        let w = if w.is_empty() {
            std::ptr::null()
        } else {
            w.as_ptr()
        };
        // SAFETY: one pointer per input and output, each to a buffer of the manifest's size
        // (`buffers`), and the weights the library expects (checked in `open`).
        let rc = unsafe { (self.entry)(w, ptrs.as_mut_ptr()) };
        if rc != 0 {
            return Err(input_error(format!(
                "{}: the model failed (qc_main returned {rc}: out of memory)",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// `qc run ARTIFACT.qca`: loads the artifact's library and runs it on the inputs, one NAME.npy per
/// output in the output folder.
pub fn run_artifact(args: &RunArgs) -> Result<(), Failure> {
    let l = Loaded::open(&args.model)?;
    let mut bufs = l.buffers(&args.inputs)?;
    l.call(&mut bufs)?;
    std::fs::create_dir_all(&args.output)
        .map_err(|e| input_error(format!("cannot create {}: {e}", args.output.display())))?;
    let m = &l.manifest;
    let k = m.inputs.len();
    for (i, s) in m.outputs.iter().enumerate() {
        let arr = output_array(s, &mut bufs[k + i]);
        let out = args.output.join(format!("{}.npy", s.name));
        qc_ir::util::write_atomic(&out, &to_npy_bytes(&arr)).map_err(input_error)?;
    }
    Ok(())
}

/// `qc bench ARTIFACT.qca`: the latency of one call of the model, measured in this process. Prints
/// one JSON line: artifact, target, threads (`OMP_NUM_THREADS`, or the number of CPUs when unset), reps,
/// best_s, median_s, mean_s. Loading, the inputs and `warmup` untimed calls come first.
pub fn bench_artifact(args: &crate::cmd::bench::BenchArgs) -> Result<String, Failure> {
    let l = Loaded::open(&args.artifact)?;
    let mut bufs = l.buffers(&args.inputs)?;
    for _ in 0..args.warmup {
        l.call(&mut bufs)?;
    }
    let mut times = Vec::with_capacity(args.reps);
    for _ in 0..args.reps.max(1) {
        let t = std::time::Instant::now();
        l.call(&mut bufs)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    let threads = std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(format!(
        "{{\"artifact\": {:?}, \"target\": {:?}, \"threads\": {threads}, \"reps\": {}, \"best_s\": {:.6e}, \
         \"median_s\": {:.6e}, \"mean_s\": {:.6e}}}\n",
        args.artifact.display().to_string(),
        l.manifest.target,
        times.len(),
        times[0],
        times[times.len() / 2],
        mean
    ))
}

//! qc's own NVIDIA kernels inside compiled artifacts, end to end without a GPU: a one-product model
//! (`y = x W`, W a constant, f32 or quantized) compiled for a GPU target gives a launch plan of
//! copies and launches of qc's kernels only; the CUDA executor (`qc_runtime::cuda::Prepared`) runs that plan on a device
//! whose memory is host memory and whose kernels are the same LLVM IR bodies compiled for this CPU
//! (the warp-level MMAs, the warpgroup MMA and Blackwell's tensor memory and block-scaled MMA
//! through the emulators of backends/ptx/tests/mma_emu). The results must match the reference interpreter on the same
//! compiled model. This checks what the ptxas and kernel tests cannot: the plan's buffers,
//! offsets, parameters and grids, the export's folding of activation quantization into the product,
//! and the choice of kernel per format, target and row count. A second model (a layer
//! normalization, a softmax and a log-softmax over the last axis) runs qc's row kernels
//! (`qc_backend_ptx::rows`, the warp shuffle through the emulator of backends/ptx/tests/shfl_emu),
//! which checks the export's row calls (the `[rows, len]` views of a 3-D input, the scale and bias
//! vectors) and their plan parameters.
//!
//! Needs the cargo feature `cpu`, LLVM 22's MLIR tools, python3 with numpy and onnx, and ptxas (as
//! compiler/tests/ptx.rs).
#![cfg(feature = "cpu")]

use std::alloc::Layout;
use std::path::Path;
use std::process::Command;

use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use qc_backend_ptx::fquant::{FakeQuantBlock, FakeQuantPt};
use qc_backend_ptx::gemv4::Gemv4;
use qc_backend_ptx::mma4::Entries;
use qc_backend_ptx::mma8::Mma8;
use qc_backend_ptx::rows::{self as row_kernels, RowKernel};
use qc_ir::quant::named_format;
use qc_runtime::npy::{NpyArray, NpyData};

mod common;
use common::{ok, p, qc};
#[path = "../../backends/ptx/tests/mma_emu/mod.rs"]
mod mma_emu;
use mma_emu::{
    emulate, emulate_fp4, fp8_table, run_block_gemm, run_warp_gemm, run_warps, tcgen05_emulators,
    wgmma8_emulators, Bf16Gemm, Block, BlockGemm, GemmArgs, ScaledGemm, Sgemm, Shape, Tc, WarpGemm,
};
#[path = "../../backends/ptx/tests/shfl_emu/mod.rs"]
mod shfl_emu;
use shfl_emu::{shfl, Lanes};

const K: usize = 128;
const N: usize = 72;

/// The one-product model: `y[m, N] = x[m, K] W[K, N]`, `m` symbolic.
fn product_model(path: &Path) {
    product_model_k(path, K)
}

/// [`product_model`] with reduction length `k`.
fn product_model_k(path: &Path, k: usize) {
    ok(
        Command::new("python3").args([
            "-c",
            &format!(
                "import numpy as np, onnx\n\
                 from onnx import helper, TensorProto, numpy_helper\n\
                 w = (np.random.default_rng(3).standard_normal(({k}, {N})) * 0.1).astype(np.float32)\n\
                 x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['m', {k}])\n\
                 y = helper.make_tensor_value_info('y', TensorProto.FLOAT, ['m', {N}])\n\
                 g = helper.make_graph([helper.make_node('MatMul', ['x', 'W'], ['y'])], 'mm', [x], [y],\n\
                 \x20   [numpy_helper.from_array(w, 'W')])\n\
                 onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)]), '{}')\n",
                path.display()
            ),
        ]),
        "the product model",
    );
}

/// Activations over a few magnitudes (deterministic).
fn activations(m: usize) -> Vec<f32> {
    (0..m * K)
        .map(|i| {
            let v = ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
            v * [1.0, 3.0, 0.05][i % 3]
        })
        .collect()
}

/// The kernels that the plan's launches name, compiled for this CPU, by entry.
struct HostKernels {
    engines: Vec<ExecutionEngine<'static>>,
    mma8: Option<Mma8>,
    fp4: Option<qc_backend_ptx::fp4::Fp4>,
    /// The tcgen05 kernels built (their shared memory sizes differ).
    tc05: Vec<qc_backend_ptx::tcgen05::Tc05>,
}

impl HostKernels {
    /// The host versions of every kernel the compiled products may launch: the GEMV and bf16 GEMM
    /// for `w` (when 4-bit), the fake-quant kernel and 8-bit GEMMs for activations quantized to
    /// `a`.
    fn new(w: &str, a: Option<&str>) -> HostKernels {
        // The engines outlive the test's device; the contexts are leaked for their lifetime.
        let ctx: &'static Context = Box::leak(Box::new(Context::create()));
        let mut engines = Vec::new();
        let mut jit = |name: &str,
                       build: &dyn Fn(&inkwell::module::Module<'static>),
                       emulators: &[(&str, usize)]| {
            engines.push(mma_emu::jit(ctx, name, build, emulators));
        };
        jit(
            "sgemm",
            &|m| qc_backend_ptx::mmaf::build(ctx, m, Entries::Host).unwrap(),
            &[(
                qc_backend_ptx::mmaf::EMULATOR,
                emulate as *const () as usize,
            )],
        );
        for k in RowKernel::ALL {
            jit(
                k.entry(),
                &|m| row_kernels::build(ctx, m, k, Entries::Host).unwrap(),
                &[(row_kernels::SHFL_EMULATOR, shfl as *const () as usize)],
            );
        }
        // "f32": no weight format (the f32 GEMM and the row kernels only).
        let Some(wf) = named_format(w).map(|f| f.ty.clone()) else {
            return HostKernels {
                engines,
                mma8: None,
                fp4: None,
                tc05: Vec::new(),
            };
        };
        let mut tc05 = Vec::new();
        if let Ok(g) = Gemv4::for_k(&wf, K) {
            if let Ok(w4) = qc_backend_ptx::tcgen05::Tc05::w4(&g, K as u64) {
                tc05.push(w4);
            }
            jit(
                "gemv4",
                &|m| qc_backend_ptx::gemv4::build(ctx, m, &g, Entries::Host).unwrap(),
                &[],
            );
            jit(
                "mma4",
                &|m| qc_backend_ptx::mma4::build(ctx, m, &g, Entries::Host).unwrap(),
                &[(
                    qc_backend_ptx::mma4::EMULATOR,
                    emulate as *const () as usize,
                )],
            );
        }
        let mut mma8 = None;
        let mut fp4 = None;
        if let Some(a) = a {
            let af = named_format(a).unwrap().ty.clone();
            if let Some(fq) = FakeQuantPt::classify(&af) {
                jit(
                    "fquant",
                    &|m| qc_backend_ptx::fquant::build(ctx, m, &fq, Entries::Host).unwrap(),
                    &[],
                );
            }
            if let Some(fq) = FakeQuantBlock::classify(&af) {
                jit(
                    "fquant_block",
                    &|m| qc_backend_ptx::fquant::build_block(ctx, m, &fq, Entries::Host).unwrap(),
                    &[],
                );
            }
            if let Ok(s) = Mma8::classify(&wf, &af) {
                if let Ok(key) = qc_backend_ptx::tcgen05::Tc05::fp8(&s, K as u64) {
                    tc05.push(key);
                }
                jit(
                    "mma8",
                    &|m| qc_backend_ptx::mma8::build(ctx, m, &s, Entries::Host).unwrap(),
                    &[(
                        qc_backend_ptx::mma8::EMULATOR,
                        emulate as *const () as usize,
                    )],
                );
                if !s.is_int8() {
                    jit(
                        "wgmma8",
                        &|m| qc_backend_ptx::wgmma8::build(ctx, m, &s, Entries::Host).unwrap(),
                        &wgmma8_emulators(),
                    );
                }
                mma8 = Some(s);
            }
            if let Ok(s) = qc_backend_ptx::fp4::Fp4::classify(&wf, &af) {
                use qc_backend_ptx::mmafp4;
                jit(
                    "mmafp4",
                    &|m| mmafp4::build(ctx, m, &s, Entries::Host).unwrap(),
                    &[(mmafp4::EMULATOR, emulate_fp4 as *const () as usize)],
                );
                tc05.push(qc_backend_ptx::tcgen05::Tc05::Fp4(s.clone()));
                fp4 = Some(s);
            }
        }
        // The tcgen05 kernels of the products above, one module each.
        for key in &tc05 {
            jit(
                key.entry(),
                &|m| qc_backend_ptx::tcgen05::build(ctx, m, key, Entries::Host).unwrap(),
                &tcgen05_emulators(),
            );
        }
        HostKernels {
            engines,
            mma8,
            fp4,
            tc05,
        }
    }

    /// The address of the host entry `<entry>_at`.
    fn entry(&self, entry: &str) -> usize {
        let name = format!("{entry}_at");
        self.engines
            .iter()
            .find_map(|e| e.get_function_address(&name).ok())
            .unwrap_or_else(|| panic!("no host kernel {name}"))
    }
}

/// A device whose memory is host memory (buffer addresses are pointers) and whose kernels are
/// [`HostKernels`].
struct HostGpu {
    kernels: HostKernels,
    buffers: Vec<(*mut u8, Layout)>,
    entries: Vec<String>,
    /// The entries launched, in order.
    launched: Vec<String>,
}

impl Drop for HostGpu {
    fn drop(&mut self) {
        for (ptr, layout) in self.buffers.drain(..) {
            // SAFETY: allocated by `alloc` below with this layout.
            unsafe { std::alloc::dealloc(ptr, layout) };
        }
    }
}

type P = *mut u8;

impl qc_runtime::cuda::Device for HostGpu {
    fn alloc(&mut self, bytes: u64) -> Result<u64, String> {
        let layout = Layout::from_size_align(bytes.max(1) as usize, 256).unwrap();
        // SAFETY: a non-zero size. Filled with a pattern: nothing may read memory nobody wrote.
        let ptr = unsafe { std::alloc::alloc(layout) };
        unsafe { std::ptr::write_bytes(ptr, 0xEE, layout.size()) };
        self.buffers.push((ptr, layout));
        Ok(ptr as u64)
    }
    fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), String> {
        // SAFETY: the executor stays inside its buffers.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst as P, data.len()) };
        Ok(())
    }
    fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), String> {
        unsafe { std::ptr::copy_nonoverlapping(src as P, out.as_mut_ptr(), out.len()) };
        Ok(())
    }
    fn copy(&mut self, dst: u64, src: u64, bytes: u64) -> Result<(), String> {
        unsafe { std::ptr::copy(src as P, dst as P, bytes as usize) };
        Ok(())
    }
    fn kernel(&mut self, ptx: &[u8], entry: &str) -> Result<usize, String> {
        let text = String::from_utf8_lossy(ptx);
        assert!(text.contains(&format!(".entry {entry}(")), "{entry}");
        self.entries.push(entry.to_string());
        Ok(self.entries.len() - 1)
    }
    fn launch(
        &mut self,
        kernel: usize,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[Vec<u8>],
    ) -> Result<(), String> {
        let entry = self.entries[kernel].clone();
        self.launched.push(entry.clone());
        assert_eq!((grid[1], grid[2], block[1], block[2]), (1, 1, 1, 1));
        let threads = grid[0] as usize * block[0] as usize;
        let u = |i: usize| u64::from_le_bytes(params[i].as_slice().try_into().unwrap());
        let f = |i: usize| f32::from_le_bytes(params[i].as_slice().try_into().unwrap());
        let ptr = |i: usize| u(i) as usize;
        // The GEMMs' parameters, `act` the tenth (none for qc_mma4).
        let gemm = |act: f32| GemmArgs {
            codes: ptr(0) as *const u8,
            scales: ptr(1) as *const u8,
            tables: ptr(2) as *const f32,
            x: ptr(3) as *const f32,
            y: ptr(4) as *mut f32,
            k: u(5) as i64,
            n: u(6) as i64,
            m: u(7) as i64,
            post: f(8),
            act,
        };
        let blocks = grid[0] as usize;
        let addr = self.kernels.entry(&entry);
        // SAFETY (every call below): the host entries' signatures as their modules' builders
        // give them; the parameters come from the plan, whose buffers this device allocated.
        match entry.as_str() {
            "qc_fquant_pt" | "qc_fquant_block" => {
                type F = unsafe extern "C" fn(P, P, u64, f32, u64);
                let k: F = unsafe { std::mem::transmute::<usize, F>(addr) };
                for t in 0..threads as u64 {
                    unsafe { k(ptr(0) as P, ptr(1) as P, u(2), f(3), t) };
                }
            }
            "qc_gemv4_partial" => {
                type F = unsafe extern "C" fn(P, P, P, P, P, u64, u64, u64, u64);
                let k: F = unsafe { std::mem::transmute::<usize, F>(addr) };
                for t in 0..threads as u64 {
                    unsafe {
                        k(
                            ptr(0) as P,
                            ptr(1) as P,
                            ptr(2) as P,
                            ptr(3) as P,
                            ptr(4) as P,
                            u(5),
                            u(6),
                            u(7),
                            t,
                        )
                    };
                }
            }
            "qc_gemv4_reduce" => {
                type F = unsafe extern "C" fn(P, P, P, P, u64, u64, u64, f32, u64);
                let k: F = unsafe { std::mem::transmute::<usize, F>(addr) };
                for t in 0..threads as u64 {
                    unsafe {
                        k(
                            ptr(0) as P,
                            ptr(1) as P,
                            ptr(2) as P,
                            ptr(3) as P,
                            u(4),
                            u(5),
                            u(6),
                            f(7),
                            t,
                        )
                    };
                }
            }
            "qc_mma4" | "qc_mma8" | "qc_mma_fp4" => {
                let int8 = self.kernels.mma8.as_ref().is_some_and(|s| s.is_int8());
                let shape = match (entry.as_str(), &self.kernels.mma8) {
                    ("qc_mma4", _) => Shape::Bf16,
                    ("qc_mma_fp4", _) => Shape::Fp4 {
                        nvfp4: self.kernels.fp4.as_ref().expect("an FP4 product").kind
                            == qc_backend_ptx::fp4::Fp4Kind::Nvfp4,
                    },
                    (_, Some(s)) if int8 => {
                        let _ = s;
                        Shape::S8
                    }
                    (_, Some(s)) => Shape::Fp8 {
                        a: fp8_table(s.act_e5m2()),
                        b: fp8_table(s.weight_e5m2()),
                    },
                    _ => panic!("no 8-bit GEMM description"),
                };
                let (kernel, args) = if entry == "qc_mma4" {
                    let kf = unsafe { std::mem::transmute::<usize, Bf16Gemm>(addr) };
                    (WarpGemm::Bf16(kf), gemm(0.0))
                } else {
                    let kf = unsafe { std::mem::transmute::<usize, ScaledGemm>(addr) };
                    (WarpGemm::Scaled(kf), gemm(f(9)))
                };
                unsafe { run_warp_gemm(kernel, shape, threads, args) };
            }
            "qc_sgemm_mma" => {
                let kf = unsafe { std::mem::transmute::<usize, Sgemm>(addr) };
                let (a, b, c) = (ptr(0), ptr(1), ptr(2));
                let (batch, m, n, k, shared) = (u(3), u(4), u(5), u(6), u(7));
                run_warps(Shape::Tf32, threads, |warp, t| unsafe {
                    let (a, b, c) = (a as *const f32, b as *const f32, c as *mut f32);
                    kf(a, b, c, batch, m, n, k, shared, warp, t as u64)
                });
            }
            "qc_wgmma8" => {
                let s = self.kernels.mma8.as_ref().expect("an FP8 GEMM description");
                let new_block = || {
                    Block::new(
                        fp8_table(s.act_e5m2()),
                        fp8_table(s.weight_e5m2()),
                        qc_backend_ptx::wgmma8::SMEM as usize,
                    )
                };
                let kf = unsafe { std::mem::transmute::<usize, BlockGemm<Block>>(addr) };
                unsafe { run_block_gemm(kf, blocks, block[0] as usize, new_block, gemm(f(9))) };
            }
            "qc_tcgen05_fp4" | "qc_tcgen05_w4" | "qc_tcgen05_fp8" => {
                let smem = self
                    .kernels
                    .tc05
                    .iter()
                    .find(|s| s.entry() == entry)
                    .expect("a tcgen05 kernel description")
                    .smem();
                let new_block = || Tc::new(smem as usize);
                let kf = unsafe { std::mem::transmute::<usize, BlockGemm<Tc>>(addr) };
                unsafe { run_block_gemm(kf, blocks, block[0] as usize, new_block, gemm(f(9))) };
            }
            "qc_softmax_rows" | "qc_log_softmax_rows" => {
                assert_eq!(block[0], row_kernels::BLOCK, "{entry}");
                type F = unsafe extern "C" fn(P, P, u64, u64, *const Lanes, u64);
                let k: F = unsafe { std::mem::transmute::<usize, F>(addr) };
                let (x, y, rows, len) = (ptr(0), ptr(1), u(2), u(3));
                assert!(threads as u64 >= rows * 32, "{entry}: too few threads");
                shfl_emu::run_warps(threads, |lanes, t| unsafe {
                    k(x as P, y as P, rows, len, lanes, t as u64)
                });
            }
            "qc_layernorm_rows" => {
                assert_eq!(block[0], row_kernels::BLOCK, "{entry}");
                type F = unsafe extern "C" fn(P, P, P, P, u64, u64, f32, *const Lanes, u64);
                let k: F = unsafe { std::mem::transmute::<usize, F>(addr) };
                let (x, g, b, y, rows, len) = (ptr(0), ptr(1), ptr(2), ptr(3), u(4), u(5));
                let eps = f(6);
                assert!(threads as u64 >= rows * 32, "{entry}: too few threads");
                shfl_emu::run_warps(threads, |lanes, t| unsafe {
                    k(
                        x as P, g as P, b as P, y as P, rows, len, eps, lanes, t as u64,
                    )
                });
            }
            other => panic!("the host device runs no kernel {other}"),
        }
        Ok(())
    }
    fn synchronize(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Compiles the product model with `flags` for `target` at `m` rows, runs its plan on the host
/// device, and compares with the reference interpreter; the entries launched.
fn run_case(d: &Path, w: &str, a: Option<&str>, target: &str, m: usize) -> Vec<String> {
    let model = d.join("mm.onnx");
    if !model.exists() {
        product_model(&model);
    }
    let tag = format!("{w}_{}_{target}_{m}", a.unwrap_or("f32"));
    let x = activations(m);
    let xa = NpyArray {
        shape: vec![m, K],
        data: NpyData::F32(x.clone()),
    };
    let xin = d.join(format!("{tag}.x.npy"));
    std::fs::write(&xin, qc_runtime::npy::to_npy_bytes(&xa)).unwrap();
    let calib = d.join(format!("{tag}.calib.npz"));
    std::fs::write(&calib, qc_runtime::npy::to_npz_bytes(&[("x", xa)]).unwrap()).unwrap();
    let mut flags = if w == "f32" {
        vec!["--passes", "canonicalize"]
    } else {
        vec!["--wformat", w]
    };
    if let Some(a) = a {
        flags.extend(["--aformat", a, "--calib", p(&calib)]);
    }
    // The reference: the compiled model in the interpreter.
    let qir = d.join(format!("{tag}.qir"));
    let mut args = vec!["compile", p(&model)];
    args.extend(&flags);
    args.extend(["--emit", "qir", "-o", p(&qir)]);
    qc(&args);
    let refdir = d.join(format!("{tag}.ref"));
    let input = format!("x={}", xin.display());
    qc(&["run", p(&qir), "--input", &input, "-o", p(&refdir)]);
    let want = match qc_runtime::npy::read_npy(&refdir.join("y.npy"))
        .unwrap()
        .data
    {
        NpyData::F32(v) => v,
        _ => panic!("f32 reference"),
    };
    // The artifact through the executor.
    let qca = d.join(format!("{tag}.qca"));
    let shape = format!("m={m}");
    let mut args = vec!["compile", p(&model)];
    args.extend(&flags);
    args.extend(["--target", target, "--shape", &shape, "-o", p(&qca)]);
    qc(&args);
    let art = qc_runtime::artifact::read(&qca).unwrap();
    let weights = art.part("weights.bin").unwrap();
    let plan = qc_runtime::cuda::Plan::parse(
        art.part("launch_plan.json").unwrap(),
        1,
        weights.len() as u64,
    )
    .unwrap();
    let mut gpu = HostGpu {
        kernels: HostKernels::new(w, a),
        buffers: Vec::new(),
        entries: Vec::new(),
        launched: Vec::new(),
    };
    let prepared =
        qc_runtime::cuda::Prepared::new(&mut gpu, &plan, |n| art.part(n), weights).unwrap();
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let out = prepared.run(&mut gpu, &[&xb]).unwrap();
    let got: Vec<f32> = out[0]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got.len(), want.len(), "{tag}");
    let scale = want.iter().fold(0f32, |s, v| s.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .fold(0f32, |s, (g, w)| s.max((g - w).abs()));
    assert!(
        worst <= 1e-5 * scale,
        "{tag}: max |y - interpreter| = {worst} (max |y| = {scale}), launches {:?}",
        gpu.launched
    );
    std::mem::take(&mut gpu.launched)
}

fn ptxas_present() -> bool {
    match qc_backend_ptx::ptxas::find_ptxas() {
        Ok(_) => true,
        Err(e) if std::env::var("QC_ALLOW_NO_PTXAS").as_deref() == Ok("1") => {
            eprintln!("note: QC_ALLOW_NO_PTXAS=1 and {e}; skipped");
            false
        }
        Err(e) => panic!("{e}\n(set QC_ALLOW_NO_PTXAS=1 to skip)"),
    }
}

/// A case of the product: weights, activations, target, rows, and the entries its plan launches.
type Launch = (
    &'static str,
    Option<&'static str>,
    &'static str,
    usize,
    &'static [&'static str],
);

#[test]
fn compiled_products_run_qc_kernels_and_match_the_interpreter() {
    if !ptxas_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [Launch; 22] = [
        // f32 weights: the 3xTF32 tensor-core GEMM.
        ("f32", None, "sm_80", 37, &["qc_sgemm_mma"]),
        // 4-bit weights, f32 activations: the GEMV for few rows, the bf16 tensor-core GEMM from
        // 16.
        (
            "nvfp4",
            None,
            "sm_90a",
            3,
            &["qc_gemv4_partial", "qc_gemv4_reduce"],
        ),
        ("int4_g32", None, "sm_80", 40, &["qc_mma4"]),
        // FP8 activations: the FP8 GEMM quantizes them itself (FP8 weights at any row count; 4-bit
        // weights from 16 rows, below that the fake-quant kernel and the GEMV); on sm_90a from 64
        // rows the warpgroup GEMM.
        ("fp8_e4m3", Some("fp8_e4m3"), "sm_89", 5, &["qc_mma8"]),
        ("mxfp4", Some("fp8_e5m2"), "sm_100a", 40, &["qc_mma8"]),
        (
            "mxfp4",
            Some("fp8_e4m3"),
            "sm_90a",
            8,
            &["qc_fquant_pt", "qc_gemv4_partial", "qc_gemv4_reduce"],
        ),
        (
            "fp8_e4m3_channel",
            Some("fp8_e4m3"),
            "sm_90a",
            70,
            &["qc_wgmma8"],
        ),
        // NVFP4 weights (groups of 16) by FP8 activations: two MMAs per k-step, on sm_89 the FP8
        // mma.sync GEMM, on sm_90a from 64 rows the warpgroup one.
        ("nvfp4", Some("fp8_e4m3"), "sm_89", 20, &["qc_mma8"]),
        ("nvfp4", Some("fp8_e4m3"), "sm_90a", 64, &["qc_wgmma8"]),
        // MX and NVFP4 activations: the block fake-quant kernel, then the 4-bit kernels.
        (
            "nvfp4",
            Some("nvfp4"),
            "sm_120a",
            8,
            &["qc_fquant_block", "qc_gemv4_partial", "qc_gemv4_reduce"],
        ),
        (
            "mxfp4",
            Some("mxfp8"),
            "sm_80",
            40,
            &["qc_fquant_block", "qc_mma4"],
        ),
        // W4A4 NVFP4 and MXFP4 on sm_100a: the block-scaled FP4 GEMM on tensor memory quantizes
        // the activations itself, from 64 rows (below that, as on other targets, the fake-quant
        // kernel and the 4-bit kernels).
        ("nvfp4", Some("nvfp4"), "sm_100a", 70, &["qc_tcgen05_fp4"]),
        ("mxfp4", Some("mxfp4"), "sm_100a", 130, &["qc_tcgen05_fp4"]),
        (
            "nvfp4",
            Some("nvfp4"),
            "sm_100a",
            8,
            &["qc_fquant_block", "qc_gemv4_partial", "qc_gemv4_reduce"],
        ),
        // 4-bit weights with byte scales, f32 or fake-quantized activations, on sm_100a from 64
        // rows: tcgen05's bf16 GEMM (int4 with f32 scales keeps the mma.sync one).
        ("nvfp4", None, "sm_100a", 70, &["qc_tcgen05_w4"]),
        (
            "nvint4",
            Some("mxfp8"),
            "sm_100a",
            65,
            &["qc_fquant_block", "qc_tcgen05_w4"],
        ),
        ("int4_g32", None, "sm_100a", 70, &["qc_mma4"]),
        // FP8 weights per tensor or row by FP8 activations on sm_100a from 64 rows: tcgen05's FP8
        // GEMM.
        (
            "fp8_e4m3_channel",
            Some("fp8_e4m3"),
            "sm_100a",
            66,
            &["qc_tcgen05_fp8"],
        ),
        // On sm_120a the block-scaled FP4 mma.sync, from 16 rows.
        ("nvfp4", Some("nvfp4"), "sm_120a", 40, &["qc_mma_fp4"]),
        ("mxfp4", Some("mxfp4"), "sm_120a", 17, &["qc_mma_fp4"]),
        // int8 activations: the s8 GEMM on every target, sm_80 included.
        ("int8_channel", Some("int8"), "sm_80", 24, &["qc_mma8"]),
        ("int4_g32", Some("int8"), "sm_90a", 33, &["qc_mma8"]),
    ];
    for (w, a, t, m, want) in cases {
        assert_eq!(run_case(d, w, a, t, m), want, "{w} x {a:?} on {t}, m = {m}");
    }
}

/// A product whose K the FP8 GEMM cannot read (48, not a multiple of 32) keeps the fake-quant kernel
/// and MLIR's kernels instead of failing to compile.
#[test]
fn fp8_products_the_fp8_gemm_cannot_read_fall_back() {
    if !ptxas_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("mm48.onnx");
    product_model_k(&model, 48);
    let xa = NpyArray {
        shape: vec![16, 48],
        data: NpyData::F32((0..16 * 48).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect()),
    };
    let calib = d.join("calib.npz");
    std::fs::write(&calib, qc_runtime::npy::to_npz_bytes(&[("x", xa)]).unwrap()).unwrap();
    let qca = d.join("mm48.qca");
    qc(&[
        "compile",
        p(&model),
        "--wformat",
        "fp8_e4m3",
        "--aformat",
        "fp8_e4m3",
        "--calib",
        p(&calib),
        "--target",
        "sm_90a",
        "--shape",
        "m=16",
        "-o",
        p(&qca),
    ]);
    let art = qc_runtime::artifact::read(&qca).unwrap();
    let plan = std::str::from_utf8(art.part("launch_plan.json").unwrap()).unwrap();
    assert!(plan.contains("\"entry\": \"qc_fquant_pt\""), "{plan}");
    assert!(!plan.contains("qc_mma8"), "{plan}");
}

/// The row length (not a multiple of 32).
const LEN: usize = 40;

/// The model: `y = Softmax(LayerNormalization(x, g, b))` and `z = LogSoftmax(x)` over the last axis
/// of `x[2, m, LEN]`, `g` and `b` constants.
fn rows_model(path: &Path) {
    ok(
        Command::new("python3").args([
            "-c",
            &format!(
                "import numpy as np, onnx\n\
                 from onnx import helper, TensorProto, numpy_helper\n\
                 rng = np.random.default_rng(5)\n\
                 g = (1 + 0.3 * rng.standard_normal({LEN})).astype(np.float32)\n\
                 b = (0.2 * rng.standard_normal({LEN})).astype(np.float32)\n\
                 x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [2, 'm', {LEN}])\n\
                 y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [2, 'm', {LEN}])\n\
                 z = helper.make_tensor_value_info('z', TensorProto.FLOAT, [2, 'm', {LEN}])\n\
                 nodes = [helper.make_node('LayerNormalization', ['x', 'g', 'b'], ['n'], axis=-1, epsilon=1e-5),\n\
                 \x20   helper.make_node('Softmax', ['n'], ['y'], axis=-1),\n\
                 \x20   helper.make_node('LogSoftmax', ['x'], ['z'], axis=2)]\n\
                 gr = helper.make_graph(nodes, 'rows', [x], [y, z],\n\
                 \x20   [numpy_helper.from_array(g, 'g'), numpy_helper.from_array(b, 'b')])\n\
                 onnx.save(helper.make_model(gr, opset_imports=[helper.make_opsetid('', 17)]), '{}')\n",
                path.display()
            ),
        ]),
        "the row model",
    );
}

/// The f32 values of an npy file.
fn read_f32(path: &Path) -> Vec<f32> {
    match qc_runtime::npy::read_npy(path).unwrap().data {
        NpyData::F32(v) => v,
        _ => panic!("{}: not f32", path.display()),
    }
}

#[test]
fn compiled_softmax_and_layer_norm_run_the_row_kernels_and_match_the_interpreter() {
    if !ptxas_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("rows.onnx");
    rows_model(&model);
    let m = 5;
    // Logits over several magnitudes (up to 60: softmax needs its maximum).
    let x: Vec<f32> = (0..2 * m * LEN)
        .map(|i| {
            let v = ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
            v * [1.0, 60.0, 0.05, 7.0][i % 4] + [0.0, 3.0][i / LEN % 2]
        })
        .collect();
    let xa = NpyArray {
        shape: vec![2, m, LEN],
        data: NpyData::F32(x.clone()),
    };
    let xin = d.join("x.npy");
    std::fs::write(&xin, qc_runtime::npy::to_npy_bytes(&xa)).unwrap();
    // The reference: the compiled model in the interpreter.
    let qir = d.join("rows.qir");
    qc(&[
        "compile",
        p(&model),
        "--passes",
        "canonicalize",
        "--emit",
        "qir",
        "-o",
        p(&qir),
    ]);
    let refdir = d.join("ref");
    let input = format!("x={}", xin.display());
    qc(&["run", p(&qir), "--input", &input, "-o", p(&refdir)]);
    let want = [
        read_f32(&refdir.join("y.npy")),
        read_f32(&refdir.join("z.npy")),
    ];
    for target in ["sm_80", "sm_120a"] {
        let qca = d.join(format!("rows.{target}.qca"));
        let shape = format!("m={m}");
        qc(&[
            "compile",
            p(&model),
            "--passes",
            "canonicalize",
            "--target",
            target,
            "--shape",
            &shape,
            "-o",
            p(&qca),
        ]);
        let art = qc_runtime::artifact::read(&qca).unwrap();
        let weights = art.part("weights.bin").unwrap();
        let plan = qc_runtime::cuda::Plan::parse(
            art.part("launch_plan.json").unwrap(),
            1,
            weights.len() as u64,
        )
        .unwrap();
        let mut gpu = HostGpu {
            kernels: HostKernels::new("f32", None),
            buffers: Vec::new(),
            entries: Vec::new(),
            launched: Vec::new(),
        };
        let prepared =
            qc_runtime::cuda::Prepared::new(&mut gpu, &plan, |n| art.part(n), weights).unwrap();
        let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let out = prepared.run(&mut gpu, &[&xb]).unwrap();
        assert_eq!(
            gpu.launched,
            [
                row_kernels::LAYERNORM,
                row_kernels::SOFTMAX,
                row_kernels::LOG_SOFTMAX
            ],
            "{target}"
        );
        assert_eq!(out.len(), 2, "{target}");
        for (k, (o, w)) in out.iter().zip(&want).enumerate() {
            let got: Vec<f32> = o
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(got.len(), w.len(), "{target} output {k}");
            for (i, (g, w)) in got.iter().zip(w).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (w.abs() + 1e-2),
                    "{target} output {k}[{i}]: {g}, interpreter {w}"
                );
            }
        }
    }
}

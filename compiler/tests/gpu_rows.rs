//! qc's row kernels (`qc_backend_ptx::rows`) inside compiled artifacts, end to end without a GPU: a
//! model of a layer normalization, a softmax and a log-softmax over the last axis compiled for a
//! GPU target gives a launch plan of launches of `qc_layernorm_rows`, `qc_softmax_rows` and
//! `qc_log_softmax_rows` only; the CUDA executor (`qc_runtime::cuda::Prepared`) runs it on a device
//! whose memory is host memory and whose kernels are the row kernels' LLVM IR bodies compiled for
//! this CPU (the warp shuffle through the emulator of backends/ptx/tests/shfl_emu). The results must
//! match the reference interpreter on the same compiled model. This checks the export's row calls
//! (the `[rows, len]` views of a 3-D input, the scale and bias vectors), the plan's parameters and
//! grids.
//!
//! Needs the cargo feature `cpu`, LLVM 22's MLIR tools, python3 with numpy and onnx, and ptxas (as
//! compiler/tests/ptx.rs).
#![cfg(feature = "cpu")]

use std::alloc::Layout;
use std::path::Path;
use std::process::Command;

use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::targets::{InitializationConfig, Target};
use inkwell::OptimizationLevel;
use qc_backend_ptx::rows::{self, Entries, RowKernel};
use qc_runtime::npy::{NpyArray, NpyData};

mod common;
use common::{ok, p, qc};
#[path = "../../backends/ptx/tests/shfl_emu/mod.rs"]
mod shfl_emu;
use shfl_emu::{run_warps, shfl, Lanes};

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

/// The row kernels compiled for this CPU.
struct HostKernels {
    engines: Vec<ExecutionEngine<'static>>,
}

impl HostKernels {
    fn new() -> HostKernels {
        Target::initialize_native(&InitializationConfig::default()).unwrap();
        // The engines outlive the test's device; the context is leaked for their lifetime.
        let ctx: &'static Context = Box::leak(Box::new(Context::create()));
        let engines = RowKernel::ALL
            .iter()
            .map(|&k| {
                let module = ctx.create_module(k.entry());
                rows::build(ctx, &module, k, Entries::Host).unwrap();
                module.verify().unwrap();
                let ee = module
                    .create_jit_execution_engine(OptimizationLevel::Default)
                    .unwrap();
                ee.add_global_mapping(
                    &module.get_function(rows::SHFL_EMULATOR).unwrap(),
                    shfl as *const () as usize,
                );
                ee
            })
            .collect();
        HostKernels { engines }
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
        assert_eq!(block[0], rows::BLOCK, "{entry}");
        let threads = grid[0] as usize * block[0] as usize;
        let u = |i: usize| u64::from_le_bytes(params[i].as_slice().try_into().unwrap());
        let ptr = |i: usize| u(i) as usize;
        let addr = self.kernels.entry(&entry);
        // SAFETY (both calls): the host entries' signatures as rows::build gives them; the
        // parameters come from the plan, whose buffers this device allocated.
        match entry.as_str() {
            "qc_softmax_rows" | "qc_log_softmax_rows" => {
                type F = unsafe extern "C" fn(P, P, u64, u64, *const Lanes, u64);
                let k: F = unsafe { std::mem::transmute::<usize, F>(addr) };
                let (x, y, rows, len) = (ptr(0), ptr(1), u(2), u(3));
                assert!(threads as u64 >= rows * 32, "{entry}: too few threads");
                run_warps(threads, |lanes, t| unsafe {
                    k(x as P, y as P, rows, len, lanes, t as u64)
                });
            }
            "qc_layernorm_rows" => {
                type F = unsafe extern "C" fn(P, P, P, P, u64, u64, f32, *const Lanes, u64);
                let k: F = unsafe { std::mem::transmute::<usize, F>(addr) };
                let (x, g, b, y, rows, len) = (ptr(0), ptr(1), ptr(2), ptr(3), u(4), u(5));
                let eps = f32::from_le_bytes(params[6].as_slice().try_into().unwrap());
                assert!(threads as u64 >= rows * 32, "{entry}: too few threads");
                run_warps(threads, |lanes, t| unsafe {
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
            kernels: HostKernels::new(),
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
            [rows::LAYERNORM, rows::SOFTMAX, rows::LOG_SOFTMAX],
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

//! `qc compile --target sm_80|sm_89|sm_90a|sm_100a|sm_120a`, end to end: the tiny BERT-style encoder
//! (scripts/models), float and with int4_g32 / mxfp4 / nvfp4 / fp8_e4m3 weights, compiled to PTX for
//! every NVIDIA target (upstream MLIR -> mlir-opt's GPU lowering -> LLVM's NVPTX back end); each artifact is compiled twice
//! and must be byte-identical, `qc inspect --extract` writes its .ptx parts, the launch plan names
//! them, and ptxas assembles every one for its target. A golden file holds the PTX of an elementwise
//! add for sm_90a (`QC_BLESS=1` rewrites it). No GPU runs the PTX here.
//!
//! Needs the cargo feature `cpu` (`cargo test -p qc --features cpu --test ptx`), LLVM 22's MLIR tools
//! (`$QC_MLIR_BIN`, default /usr/lib/llvm-22/bin), python3 with numpy and onnx, and ptxas (`QC_PTXAS`,
//! or python's nvidia-cuda-nvcc package, or PATH: .ci/find-ptxas.sh). Without ptxas the tests fail,
//! unless `QC_ALLOW_NO_PTXAS=1`, which makes them pass without checking anything.
#![cfg(feature = "cpu")]

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{ok, p, qc, repo};

const TARGETS: [&str; 5] = ["sm_80", "sm_89", "sm_90a", "sm_100a", "sm_120a"];

/// The ptxas executable, or None when there is none and `QC_ALLOW_NO_PTXAS=1` (else a failure).
fn ptxas() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join(".ci/find-ptxas.sh"))
        .output()
        .expect("run .ci/find-ptxas.sh");
    if out.status.success() {
        return Some(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    if std::env::var("QC_ALLOW_NO_PTXAS").as_deref() == Ok("1") {
        eprintln!("no ptxas and QC_ALLOW_NO_PTXAS=1: skipped");
        return None;
    }
    panic!(
        "the PTX tests need ptxas (bash .ci/install-toolchain.sh, or set QC_PTXAS; \
         QC_ALLOW_NO_PTXAS=1 skips them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_python() {
    let probe = Command::new("python3")
        .args(["-c", "import numpy, onnx"])
        .output();
    assert!(
        matches!(&probe, Ok(o) if o.status.success()),
        "the PTX tests need python3 with numpy and onnx (bash .ci/install-python.sh)"
    );
}

/// The names of the launch plan's `"ptx"` entries, in order.
fn launched(plan: &str) -> Vec<String> {
    plan.match_indices("\"ptx\": \"")
        .map(|(i, m)| {
            let rest = &plan[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// Compiles `model` with `passes` for every target: twice (byte-identical), extracted, the plan
/// checked against the .ptx parts, every .ptx assembled by `ptxas` for its target.
fn check_all_targets(
    ptxas: &Path,
    d: &Path,
    model: &Path,
    passes: &[&str],
    tag: &str,
    shapes: &[&str],
) {
    for target in TARGETS {
        let qca = d.join(format!("{tag}.{target}.qca"));
        let mut args: Vec<&str> = vec!["compile", p(model)];
        args.extend(passes);
        args.extend(["--target", target]);
        args.extend(shapes);
        args.extend(["-o", p(&qca)]);
        qc(&args);
        let again = d.join(format!("{tag}.{target}.again.qca"));
        let n = args.len();
        args[n - 1] = p(&again);
        qc(&args);
        assert_eq!(
            std::fs::read(&qca).unwrap(),
            std::fs::read(&again).unwrap(),
            "{tag} {target}: the artifact is not deterministic"
        );
        let summary = qc(&["inspect", p(&qca)]);
        assert!(
            summary.contains(&format!("target     {target}")),
            "{summary}"
        );
        let ex = d.join(format!("{tag}.{target}.x"));
        qc(&["inspect", p(&qca), "--extract", p(&ex)]);
        let plan = std::fs::read_to_string(ex.join("launch_plan.json")).unwrap();
        assert!(
            plan.contains(&format!("\"target\": \"{target}\"")),
            "{plan}"
        );
        assert!(ex.join("host.mlir").is_file());
        let mut ptx: Vec<String> = std::fs::read_dir(&ex)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ptx"))
            .collect();
        ptx.sort();
        assert!(!ptx.is_empty(), "{tag} {target}: no .ptx parts");
        let mut plan_ptx = launched(&plan);
        plan_ptx.sort();
        plan_ptx.dedup();
        assert_eq!(
            plan_ptx, ptx,
            "{tag} {target}: the plan launches other kernels"
        );
        check_blocks(&qca, &format!("{tag} {target}"));
        for name in &ptx {
            let file = ex.join(name);
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.contains(&format!("\n.target {target}\n")),
                "{tag} {target}: {name} has another .target"
            );
            // MLIR's kernels, or qc's 4-bit GEMV or tensor-core GEMM kernels for the quantized
            // products, its activation fake-quant kernel, its f32 GEMM or its row kernels.
            let entry = if name.starts_with("rows_") {
                [
                    ".entry qc_softmax_rows(",
                    ".entry qc_log_softmax_rows(",
                    ".entry qc_layernorm_rows(",
                ]
                .into_iter()
                .find(|e| text.contains(e))
                .unwrap_or(".entry qc_softmax_rows(")
            } else if name.starts_with("gemv4_") {
                ".entry qc_gemv4_partial("
            } else if name.starts_with("mma4_") {
                ".entry qc_mma4("
            } else if name.starts_with("mma8_") {
                ".entry qc_mma8("
            } else if name.starts_with("wgmma8_") {
                ".entry qc_wgmma8("
            } else if name.starts_with("fquant_") {
                ".entry qc_fquant_pt("
            } else if name.starts_with("fqblock_") {
                ".entry qc_fquant_block("
            } else if name.starts_with("sgemm_") {
                ".entry qc_sgemm_mma("
            } else {
                ".entry main_kernel("
            };
            assert!(text.contains(entry), "{name}");
            ok(
                Command::new(ptxas)
                    .arg(format!("-arch={target}"))
                    .arg("--warning-as-error")
                    .arg("-o")
                    .arg(d.join(format!("{tag}.{target}.cubin")))
                    .arg(&file),
                &format!("ptxas -arch={target} {tag} {name}"),
            );
        }
    }
}

/// The block sizes of the MLIR kernels' launches in the artifact `qca`'s plan: at most
/// `cuda::THREADS` threads, along x, and more than one thread in at least 9 launches of 10.
fn check_blocks(qca: &Path, what: &str) {
    let art = qc_runtime::artifact::read(qca).unwrap();
    let weights = art.part("weights.bin").unwrap();
    let plan = qc_runtime::cuda::Plan::parse(
        art.part("launch_plan.json").unwrap(),
        art.manifest.inputs.len(),
        weights.len() as u64,
    )
    .unwrap();
    let blocks: Vec<[u32; 3]> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            qc_runtime::cuda::plan::Step::Launch { ptx, block, .. }
                if ptx.starts_with("main_kernel") =>
            {
                Some(*block)
            }
            _ => None,
        })
        .collect();
    assert!(!blocks.is_empty(), "{what}: no MLIR kernel launches");
    for b in &blocks {
        assert!(
            b[0] <= qc::cmd::cuda::THREADS && b[1] == 1 && b[2] == 1,
            "{what}: block {b:?}"
        );
    }
    let many = blocks.iter().filter(|b| b[0] > 1).count();
    assert!(
        10 * many >= 9 * blocks.len(),
        "{what}: {many} of {} launches have more than one thread per block: {blocks:?}",
        blocks.len()
    );
}

/// The tiny BERT (scripts/models/make_bert.py, seed 0, weights embedded) written to `d/bert.onnx`.
fn tiny_bert(d: &Path) -> PathBuf {
    let model = d.join("bert.onnx");
    ok(
        Command::new("python3")
            .arg(repo().join("scripts/models/make_bert.py"))
            .args([
                "--config",
                "tiny",
                "--seed",
                "0",
                "--out",
                p(&model),
                "--embedded",
            ]),
        "make_bert.py",
    );
    model
}

/// The models of compiler/tests/cpu_ops.py (window.onnx, hadamard.qir, ...) written to `d`.
fn cpu_ops_models(d: &Path) {
    ok(
        Command::new("python3")
            .arg(repo().join("compiler/tests/cpu_ops.py"))
            .arg(d),
        "compiler/tests/cpu_ops.py",
    );
}

/// [`check_all_targets`] for the tiny BERT at batch 2 and `seq`.
fn bert_check(passes: &[&str], tag: &str, seq: usize) {
    let Some(ptxas) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_bert(d);
    check_all_targets(
        &ptxas,
        d,
        &model,
        passes,
        tag,
        &["--shape", "batch=2", "--shape", &format!("seq={seq}")],
    );
}

#[test]
fn bert_float_ptx_for_every_target() {
    bert_check(&["--passes", "canonicalize"], "float", 7);
}

#[test]
fn bert_int4_g32_ptx_for_every_target() {
    // 2 x 8 rows: the products run the tensor-core GEMM.
    bert_check(&["--wformat", "int4_g32"], "int4_g32", 8);
}

/// The launches of qc's kernels (module prefix, entry, parameter count) in the plan of the tiny
/// BERT compiled with `flags` for `target` at batch 1 and `seq`.
fn qc_launches(flags: &[&str], target: &str, seq: usize) -> Vec<(String, String, usize)> {
    let dir = tempfile::tempdir().unwrap();
    let qca = dir.path().join("b.qca");
    let seq = format!("seq={seq}");
    let model = repo().join("examples/bert-tiny.onnx");
    let mut args = vec!["compile", p(&model)];
    args.extend(flags);
    args.extend([
        "--target", target, "--shape", "batch=1", "--shape", &seq, "-o",
    ]);
    args.push(p(&qca));
    qc(&args);
    let art = qc_runtime::artifact::read(&qca).unwrap();
    let weights = art.part("weights.bin").unwrap();
    let plan = qc_runtime::cuda::Plan::parse(
        art.part("launch_plan.json").unwrap(),
        3,
        weights.len() as u64,
    )
    .unwrap();
    plan.steps
        .iter()
        .filter_map(|s| match s {
            qc_runtime::cuda::plan::Step::Launch {
                ptx, entry, params, ..
            } if !ptx.starts_with("main_kernel") => Some((
                ptx[..ptx.find('_').unwrap()].to_string(),
                entry.clone(),
                params.len(),
            )),
            _ => None,
        })
        .collect()
}

/// [`qc_launches`] of the 4-bit product kernels for nvfp4 weights on sm_90a.
fn product_launches(seq: usize) -> Vec<(String, String, usize)> {
    qc_launches(&["--wformat", "nvfp4"], "sm_90a", seq)
        .into_iter()
        .filter(|l| l.0 == "gemv4" || l.0 == "mma4")
        .collect()
}

/// Products by 4-bit weights run qc's kernels, the rest MLIR's: with fewer than 16 activation rows
/// the GEMV (`gemv4_*.ptx`, two launches each: partial sums and reduction), with 16 or more the
/// tensor-core GEMM (`mma4_*.ptx`, one launch).
#[test]
fn quantized_products_launch_the_gemv_or_tensor_core_kernels() {
    let Some(_) = ptxas() else { return };
    require_python();
    let gemv = |e: &str| ("gemv4".to_string(), e.to_string(), 8);
    let mma = ("mma4".to_string(), "qc_mma4".to_string(), 9);
    // The tiny BERT has 13 products by constant weights (2 layers x 6, and the pooler).
    let decode = product_launches(8);
    assert_eq!(decode.len(), 26, "{decode:?}");
    for pair in decode.chunks(2) {
        assert_eq!(pair, [gemv("qc_gemv4_partial"), gemv("qc_gemv4_reduce")]);
    }
    // At seq 16 the layers' 12 products have 16 rows; the pooler's has 1.
    let prefill = product_launches(16);
    assert_eq!(prefill.len(), 14, "{prefill:?}");
    assert!(prefill[..12].iter().all(|l| *l == mma), "{prefill:?}");
    assert_eq!(
        prefill[12..],
        [gemv("qc_gemv4_partial"), gemv("qc_gemv4_reduce")]
    );
}

#[test]
fn bert_mxfp4_ptx_for_every_target() {
    bert_check(&["--wformat", "mxfp4"], "mxfp4", 7);
}

/// The window ops of compiler/tests/cpu_ops.py (convolutions, transposed convolutions, pooling, LRN,
/// shrink and a small CNN; 1-D, 2-D and 3-D) and its quant.hadamard model compile for sm_80: every
/// loop nest a kernel (qc runs ptxas on each), the PTX parts in the artifact.
#[test]
fn window_ops_and_hadamard_ptx_for_sm_80() {
    let Some(_ptxas) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cpu_ops_models(d);
    for model in ["window.onnx", "hadamard.qir"] {
        let qca = d.join(format!("{model}.qca"));
        qc(&[
            "compile",
            p(&d.join(model)),
            "--passes",
            "canonicalize",
            "--target",
            "sm_80",
            "-o",
            p(&qca),
        ]);
        let ex = d.join(format!("{model}.x"));
        qc(&["inspect", p(&qca), "--extract", p(&ex)]);
        let kernels = std::fs::read_dir(&ex)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".ptx")
            })
            .count();
        assert!(kernels > 0, "{model}: no .ptx parts");
    }
}

/// NVFP4 (FP8 block scales) and FP8 weights: their codes and scales are decoded through value tables
/// (`ExportOptions::decode_tables`), as LLVM's NVPTX lowering cannot convert MLIR's FP8 types.
#[test]
fn bert_nvfp4_ptx_for_every_target() {
    // 2 x 8 rows: the products run the tensor-core GEMM.
    bert_check(&["--wformat", "nvfp4"], "nvfp4", 8);
}

/// Activation quantization (int8 per tensor, calibrated on the shipped data) runs qc's fake-quant
/// kernel (`fquant_*.ptx`) before the GEMV kernels.
#[test]
fn bert_int8_activations_ptx_for_every_target() {
    let calib = repo().join("examples/bert-tiny-calib.npz");
    let calib = calib.to_str().unwrap();
    let Some(ptxas) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("examples/bert-tiny.onnx");
    check_all_targets(
        &ptxas,
        dir.path(),
        &model,
        &[
            "--wformat",
            "int4_g32",
            "--aformat",
            "int8",
            "--calib",
            calib,
        ],
        "a8",
        &["--shape", "batch=1", "--shape", "seq=8"],
    );
    let plan = std::fs::read_to_string(dir.path().join("a8.sm_90a.x/launch_plan.json")).unwrap();
    assert!(plan.contains("\"entry\": \"qc_fquant_pt\""), "{plan}");
    assert!(plan.contains("\"entry\": \"qc_gemv4_partial\""), "{plan}");
}

/// int8-quantized activations (calibrated) with int8 weights run the s8 tensor-core GEMM on every
/// target. FP8-quantized ones run the FP8 tensor-core GEMM from sm_89 (on sm_90a from 64 rows its
/// warpgroup version), which quantizes them itself: for FP8 weights at any row count, for 4-bit weights from 16 rows (below, the
/// fake-quant kernel and the GEMV). sm_80 has no FP8 tensor cores: the fake-quant kernel, then the
/// 4-bit kernels or MLIR's (FP8 weights).
#[test]
fn quantized_activations_run_the_8bit_tensor_core_gemm() {
    let Some(ptxas) = ptxas() else { return };
    require_python();
    let calib = repo().join("examples/bert-tiny-calib.npz");
    let calib = calib.to_str().unwrap();
    let fp8 = [
        "--wformat",
        "fp8_e4m3",
        "--aformat",
        "fp8_e4m3",
        "--calib",
        calib,
    ];
    let mx = [
        "--wformat",
        "mxfp4",
        "--aformat",
        "fp8_e4m3",
        "--calib",
        calib,
    ];
    let mma8 = ("mma8".to_string(), "qc_mma8".to_string(), 10);
    let fquant = ("fquant".to_string(), "qc_fquant_pt".to_string(), 4);
    let gemv = |e: &str| ("gemv4".to_string(), e.to_string(), 8);
    // 13 products by constant weights (2 layers x 6, and the pooler).
    let l = qc_launches(&fp8, "sm_90a", 8);
    assert_eq!(l.iter().filter(|x| **x == mma8).count(), 13, "{l:?}");
    assert!(l.iter().all(|x| x.0 != "gemv4" && x.0 != "mma4"), "{l:?}");
    // On sm_90a, products of 64 rows and more run the warpgroup GEMM (one 128-thread block per
    // 64 x 64 tile); the pooler's single row the warp-level one.
    let l = qc_launches(&fp8, "sm_90a", 64);
    let wg = ("wgmma8".to_string(), "qc_wgmma8".to_string(), 10);
    assert_eq!(l.iter().filter(|x| **x == wg).count(), 12, "{l:?}");
    assert_eq!(l.iter().filter(|x| **x == mma8).count(), 1, "{l:?}");
    // int8 activations and int8 weights: the s8 tensor-core GEMM on every target, sm_80 included.
    let i8 = [
        "--wformat",
        "int8_channel",
        "--aformat",
        "int8",
        "--calib",
        calib,
    ];
    for t in ["sm_80", "sm_90a"] {
        let l = qc_launches(&i8, t, 8);
        assert_eq!(l.iter().filter(|x| **x == mma8).count(), 13, "{t} {l:?}");
    }
    let l = qc_launches(&fp8, "sm_80", 8);
    assert!(
        l.iter().all(|x| x.0 != "mma8") && l.contains(&fquant),
        "{l:?}"
    );
    // mxfp4: the layers' products have 16 rows at seq 16; the pooler's one.
    let l = qc_launches(&mx, "sm_100a", 16);
    assert_eq!(l.iter().filter(|x| **x == mma8).count(), 12, "{l:?}");
    let tail = &l[l.len() - 3..];
    assert_eq!(
        tail,
        [
            fquant.clone(),
            gemv("qc_gemv4_partial"),
            gemv("qc_gemv4_reduce")
        ],
        "{l:?}"
    );
    // Every part assembles for every target.
    let dir = tempfile::tempdir().unwrap();
    check_all_targets(
        &ptxas,
        dir.path(),
        &repo().join("examples/bert-tiny.onnx"),
        &fp8,
        "fp8a",
        &["--shape", "batch=2", "--shape", "seq=8"],
    );
}

/// Block-scaled activations (NVFP4, calibrated; MXFP8) run qc's block fake-quant kernel
/// (`fqblock_*.ptx`) on every target.
#[test]
fn bert_block_scaled_activations_ptx_for_every_target() {
    let calib = repo().join("examples/bert-tiny-calib.npz");
    let calib = calib.to_str().unwrap();
    let Some(ptxas) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("examples/bert-tiny.onnx");
    for (w, a) in [("nvfp4", "nvfp4"), ("mxfp4", "mxfp8")] {
        let tag = format!("{w}_{a}");
        check_all_targets(
            &ptxas,
            dir.path(),
            &model,
            &["--wformat", w, "--aformat", a, "--calib", calib],
            &tag,
            &["--shape", "batch=1", "--shape", "seq=8"],
        );
        let plan =
            std::fs::read_to_string(dir.path().join(format!("{tag}.sm_90a.x/launch_plan.json")))
                .unwrap();
        assert!(
            plan.contains("\"entry\": \"qc_fquant_block\""),
            "{tag}: {plan}"
        );
    }
}

#[test]
fn bert_fp8_e4m3_ptx_for_every_target() {
    bert_check(&["--wformat", "fp8_e4m3"], "fp8_e4m3", 7);
}

/// An ONNX model computing `c = a + b` on 4x8 f32 tensors.
fn add_model(path: &Path) {
    ok(
        Command::new("python3").args([
            "-c",
            "import sys, onnx\n\
             from onnx import helper, TensorProto as T\n\
             v = lambda n: helper.make_tensor_value_info(n, T.FLOAT, [4, 8])\n\
             g = helper.make_graph([helper.make_node('Add', ['a', 'b'], ['c'])], 'add', [v('a'), v('b')], [v('c')])\n\
             m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n\
             m.ir_version = 8\n\
             onnx.save(m, sys.argv[1])\n",
            p(path),
        ]),
        "make the add model",
    );
}

#[test]
fn add_kernel_ptx_for_sm_90a_matches_the_golden_file() {
    let Some(ptxas) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("add.onnx");
    add_model(&model);
    let qca = d.join("add.qca");
    // `sm_90` means sm_90a.
    qc(&[
        "compile",
        p(&model),
        "--passes",
        "canonicalize",
        "--target",
        "sm_90",
        "-o",
        p(&qca),
    ]);
    let ex = d.join("x");
    qc(&["inspect", p(&qca), "--extract", p(&ex)]);
    let ptx = std::fs::read_to_string(ex.join("main_kernel.ptx")).unwrap();
    ok(
        Command::new(&ptxas)
            .args(["-arch=sm_90a", "--warning-as-error", "-o"])
            .arg(d.join("add.cubin"))
            .arg(ex.join("main_kernel.ptx")),
        "ptxas add",
    );
    let plan = std::fs::read_to_string(ex.join("launch_plan.json")).unwrap();
    // One block per row, one thread per element of the row.
    assert!(
        plan.contains("\"grid\": [4, 1, 1], \"block\": [8, 1, 1]"),
        "{plan}"
    );
    assert_eq!(launched(&plan), ["main_kernel.ptx"]);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden_ptx/add_sm_90a.ptx");
    if std::env::var("QC_BLESS").as_deref() == Ok("1") {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &ptx).unwrap();
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (QC_BLESS=1 writes it)", golden.display()));
    assert_eq!(
        ptx, want,
        "the add kernel's PTX changed (QC_BLESS=1 rewrites the golden file)"
    );
}

#[test]
fn gpu_targets_are_listed_and_unknown_ones_rejected() {
    let help = qc(&["compile", "--help"]);
    for t in TARGETS {
        assert!(help.contains(t), "{t} missing from qc compile --help");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(["compile", "m.onnx", "--target", "sm_75", "-o", "m.qca"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// GPU memory in host memory, and the add kernel of `add_model` done on the host: the CUDA executor
/// runs the artifact's real plan (buffers, input copies, kernel parameters, output ranges) against it.
#[derive(Default)]
struct EmulatedGpu {
    mem: Vec<u8>,
    kernels: Vec<String>,
}

const BASE: u64 = 1 << 32;

impl EmulatedGpu {
    fn at(&mut self, a: u64, n: usize) -> &mut [u8] {
        let o = (a - BASE) as usize;
        &mut self.mem[o..o + n]
    }
}

impl qc_runtime::cuda::Device for EmulatedGpu {
    fn alloc(&mut self, bytes: u64) -> Result<u64, String> {
        let a = BASE + self.mem.len() as u64;
        self.mem
            .resize(self.mem.len() + bytes.next_multiple_of(256) as usize, 0xEE);
        Ok(a)
    }
    fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), String> {
        self.at(dst, data.len()).copy_from_slice(data);
        Ok(())
    }
    fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), String> {
        out.copy_from_slice(self.at(src, out.len()));
        Ok(())
    }
    fn copy(&mut self, dst: u64, src: u64, bytes: u64) -> Result<(), String> {
        let v = self.at(src, bytes as usize).to_vec();
        self.at(dst, bytes as usize).copy_from_slice(&v);
        Ok(())
    }
    fn kernel(&mut self, ptx: &[u8], entry: &str) -> Result<usize, String> {
        let text = String::from_utf8_lossy(ptx);
        assert!(text.contains(&format!(".entry {entry}(")), "{text}");
        self.kernels.push(entry.to_string());
        Ok(self.kernels.len() - 1)
    }
    /// `c[i, j] = a[i, j] + b[i, j]` for thread j of block i; params: three rank-2 memref
    /// descriptors (allocated, aligned, offset, 2 sizes, 2 strides) and the constant index 0.
    fn launch(
        &mut self,
        _kernel: usize,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[Vec<u8>],
    ) -> Result<(), String> {
        assert_eq!((grid, block), ([4, 1, 1], [8, 1, 1]));
        assert_eq!(params.len(), 22, "three rank-2 descriptors and an index");
        assert_eq!(
            params[21],
            0u64.to_le_bytes(),
            "the index is 0 (the row in the block's tile)"
        );
        let w = |k: usize| u64::from_le_bytes(params[k].as_slice().try_into().unwrap());
        let elem = |d: usize, i: u64, j: u64| -> u64 {
            let o = 7 * d;
            assert_eq!(w(o), w(o + 1), "allocated and aligned pointers differ");
            assert_eq!((w(o + 3), w(o + 4)), (4, 8), "sizes");
            w(o + 1) + 4 * (w(o + 2) + i * w(o + 5) + j * w(o + 6))
        };
        for i in 0..grid[0] as u64 {
            for j in 0..block[0] as u64 {
                let f = |g: &mut Self, a: u64| f32::from_le_bytes(g.at(a, 4).try_into().unwrap());
                let (a, b, c) = (elem(0, i, j), elem(1, i, j), elem(2, i, j));
                let s = f(self, a) + f(self, b);
                self.at(c, 4).copy_from_slice(&s.to_le_bytes());
            }
        }
        Ok(())
    }
    fn synchronize(&mut self) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn the_cuda_executor_runs_the_add_plan_and_needs_a_driver() {
    let Some(_) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("add.onnx");
    add_model(&model);
    let qca = d.join("add.qca");
    qc(&[
        "compile",
        p(&model),
        "--passes",
        "canonicalize",
        "--target",
        "sm_80",
        "-o",
        p(&qca),
    ]);
    let art = qc_runtime::artifact::read(&qca).unwrap();
    let weights = art.part("weights.bin").unwrap();
    let plan = qc_runtime::cuda::Plan::parse(
        art.part("launch_plan.json").unwrap(),
        2,
        weights.len() as u64,
    )
    .unwrap();
    let a: Vec<f32> = (0..32).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..32).map(|i| 100.0 - i as f32).collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut gpu = EmulatedGpu::default();
    let prepared =
        qc_runtime::cuda::Prepared::new(&mut gpu, &plan, |n| art.part(n), weights).unwrap();
    let out = prepared.run(&mut gpu, &[&bytes(&a), &bytes(&b)]).unwrap();
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(out, vec![bytes(&want)]);
    assert_eq!(gpu.kernels, ["main_kernel"]);

    // Without a driver, `qc run` says so (exit code 2) and writes nothing.
    let npy = |name: &str, v: &[f32]| {
        let f = d.join(name);
        let arr = qc::npy::NpyArray {
            shape: vec![4, 8],
            data: qc::npy::NpyData::F32(v.to_vec()),
        };
        std::fs::write(&f, qc::npy::to_npy_bytes(&arr)).unwrap();
        format!("{}={}", &name[..1], f.display())
    };
    let (ia, ib) = (npy("a.npy", &a), npy("b.npy", &b));
    let outdir = d.join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_qc"))
        .env("QC_LIBCUDA", d.join("no-libcuda.so"))
        .args([
            "run",
            p(&qca),
            "--device",
            "cuda",
            "--input",
            &ia,
            "--input",
            &ib,
            "-o",
        ])
        .arg(&outdir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot load the CUDA driver"), "{err}");
    assert!(!outdir.exists());
    // The CPU device refuses a GPU artifact.
    let run = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args([
            "run",
            p(&qca),
            "--device",
            "cpu",
            "--input",
            &ia,
            "--input",
            &ib,
            "-o",
        ])
        .arg(&outdir)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--device cuda"));
}

/// LLVM 22's MLIR tool `name` (`$QC_MLIR_BIN`, default /usr/lib/llvm-22/bin).
fn mlir_tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("QC_MLIR_BIN").unwrap_or_else(|| "/usr/lib/llvm-22/bin".into());
    Path::new(&dir).join(name)
}

/// Runs MLIR tool `name` with `args` on `input` (standard input), which must succeed; its output.
fn pipe(name: &str, args: &[String], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(mlir_tool(name))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.as_bytes().to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of element `k` of argument `arg` that [`with_entry`] passes to `@main`: f32 in [-0.5,
/// 0.5) from a fixed generator; integers 0 or 1 (valid indices of every table of the tiny BERT).
fn arg_value(arg: usize, k: usize) -> f32 {
    let mut x = (arg as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64);
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// The tensor types `tensor<...>` in `s`, in order.
fn tensor_types(s: &str) -> Vec<String> {
    s.match_indices("tensor<")
        .map(|(i, _)| {
            let end = s[i..].find('>').unwrap();
            s[i..i + end + 1].to_string()
        })
        .collect()
}

/// `module` (whose `@main` takes and returns ranked f32 / i32 / i64 tensors) with an `@entry` that
/// calls `@main` on the arguments of [`arg_value`] and prints every result (`printMemrefF32`, ...).
fn with_entry(module: &str) -> String {
    let head = &module[module.find("func.func @main(").expect("@main")..];
    let head = &head[..head.find('\n').unwrap()];
    let arrow = head.find(") -> ").expect("results");
    let (args, results) = (tensor_types(&head[..arrow]), tensor_types(&head[arrow..]));
    let mut body = String::new();
    for (a, ty) in args.iter().enumerate() {
        let shape = &ty["tensor<".len()..ty.len() - 1];
        let mut dims: Vec<&str> = shape.split('x').collect();
        let elem = dims.pop().unwrap();
        let n: usize = dims.iter().map(|d| d.parse::<usize>().unwrap()).product();
        let mut hex = String::new();
        for k in 0..n {
            let bytes = match elem {
                "f32" => arg_value(a, k).to_le_bytes().to_vec(),
                "i64" => ((arg_value(a, k) > 0.0) as i64).to_le_bytes().to_vec(),
                "i32" => ((arg_value(a, k) > 0.0) as i32).to_le_bytes().to_vec(),
                other => panic!("argument {a}: element type {other}"),
            };
            hex.extend(bytes.iter().map(|b| format!("{b:02X}")));
        }
        body += &format!("    %a{a} = arith.constant dense<\"0x{hex}\"> : {ty}\n");
    }
    let names: Vec<String> = (0..args.len()).map(|a| format!("%a{a}")).collect();
    body += &format!(
        "    %r:{} = func.call @main({}) : ({}) -> ({})\n",
        results.len(),
        names.join(", "),
        args.join(", "),
        results.join(", ")
    );
    for (i, ty) in results.iter().enumerate() {
        let elem = &ty[ty.rfind('x').map_or("tensor<".len(), |x| x + 1)..ty.len() - 1];
        let print = match elem {
            "f32" => "F32",
            "i32" => "I32",
            "i64" => "I64",
            other => panic!("result {i}: element type {other}"),
        };
        body += &format!(
            "    %u{i} = tensor.cast %r#{i} : {ty} to tensor<*x{elem}>\n    \
             func.call @printMemref{print}(%u{i}) : (tensor<*x{elem}>) -> ()\n"
        );
    }
    let end = module.rfind('}').unwrap();
    format!(
        "{}  func.func private @printMemrefF32(tensor<*xf32>)\n  \
         func.func private @printMemrefI32(tensor<*xi32>)\n  \
         func.func private @printMemrefI64(tensor<*xi64>)\n  \
         func.func @entry() {{\n{body}    return\n  }}\n}}\n",
        &module[..end]
    )
}

/// Runs `program` (from [`with_entry`]) on the CPU: mlir-opt with `loops` (export to `scf.parallel`
/// loops), then the CPU target's lowering from loops to the LLVM dialect, then mlir-runner; the
/// printed results without the lines holding buffer addresses.
fn run_on_cpu(program: &str, loops: &[String]) -> String {
    let tail = qc::cmd::cpu::LOWER_TO_LLVM;
    let after = tail
        .iter()
        .position(|a| *a == "--convert-linalg-to-loops")
        .expect("the CPU pipeline lowers linalg to loops");
    let mut args: Vec<String> = loops.to_vec();
    args.extend(tail[after + 1..].iter().map(|s| s.to_string()));
    let llvm = pipe("mlir-opt", &args, program);
    let lib = mlir_tool("mlir-runner")
        .parent()
        .unwrap()
        .join("../lib")
        .canonicalize()
        .unwrap();
    let libs = format!(
        "--shared-libs={},{}",
        lib.join("libmlir_runner_utils.so").display(),
        lib.join("libmlir_c_runner_utils.so").display()
    );
    let out = pipe(
        "mlir-runner",
        &[
            "-e".into(),
            "entry".into(),
            "--entry-point-result=void".into(),
            libs,
        ],
        &llvm,
    );
    out.lines()
        .map(|l| match l.find("base@") {
            // "Unranked Memref base@ = 0x... rank = ..." names an address that differs run to run.
            Some(_) => &l[l.find("rank = ").unwrap_or(l.len())..],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The values of each memref that [`run_on_cpu`] printed.
fn printed_values(out: &str) -> Vec<Vec<f64>> {
    let mut all: Vec<Vec<f64>> = Vec::new();
    for line in out.lines() {
        if line.starts_with("rank = ") {
            all.push(Vec::new());
            continue;
        }
        let values = line
            .split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<f64>().unwrap_or_else(|_| panic!("{t} in {line}")));
        all.last_mut()
            .expect("a memref header first")
            .extend(values);
    }
    all
}

/// The untiled loops of the NVIDIA route before its tiling (for comparison).
fn untiled_loops() -> Vec<String> {
    [
        "--convert-elementwise-to-linalg",
        "--one-shot-bufferize=bufferize-function-boundaries",
        "--convert-linalg-to-parallel-loops",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The tiling of the NVIDIA targets (`cuda::to_loops`) on the loop nests of tests/mlir/gpu_tiling.mlir,
/// lowered for the CPU and run: the results equal the untiled loops' and those computed here, partial
/// tiles included. The same module mapped to the GPU (`cuda::to_gpu`) launches blocks of
/// `cuda::THREADS` threads (or the innermost extent when smaller) with a bounds check in the kernel
/// for the partial tiles.
#[test]
fn gpu_tiling_keeps_the_results_of_loop_nests() {
    let module = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mlir/gpu_tiling.mlir"),
    )
    .unwrap();
    let script = qc::cmd::cuda::tiling_script_file().unwrap();
    let program = with_entry(&module);
    let tiled = run_on_cpu(&program, &qc::cmd::cuda::to_loops(script.path()));
    let untiled = run_on_cpu(&program, &untiled_loops());
    assert_eq!(tiled, untiled, "the tiled loops compute other values");

    // The same values computed here: y = x * b + x over [3, 5, 300]; the sums of y's 15 rows of 300;
    // y's rows times w [300, 260]; the sums of y over its middle axis; 2 y broadcast to [3, 5, 2, 300].
    let x = |i: usize| arg_value(0, i) as f64;
    let b = |k: usize| arg_value(1, k) as f64;
    let w = |k: usize, n: usize| arg_value(2, k * 260 + n) as f64;
    let y: Vec<f64> = (0..4500).map(|i| x(i) * b(i % 300) + x(i)).collect();
    let sums: Vec<f64> = (0..15).map(|r| y[r * 300..][..300].iter().sum()).collect();
    let mm: Vec<f64> = (0..15 * 260)
        .map(|i| (0..300).map(|k| y[i / 260 * 300 + k] * w(k, i % 260)).sum())
        .collect();
    let mid: Vec<f64> = (0..900)
        .map(|i| {
            (0..5)
                .map(|j| y[(i / 300) * 1500 + j * 300 + i % 300])
                .sum()
        })
        .collect();
    let twice: Vec<f64> = (0..9000)
        .map(|i| 2.0 * y[i / 600 * 300 + i % 300])
        .collect();
    let got = printed_values(&tiled);
    assert_eq!(got.len(), 5, "{tiled}");
    for (name, (g, want)) in ["y", "sums", "product", "middle sums", "broadcast"]
        .iter()
        .zip(got.iter().zip([&y, &sums, &mm, &mid, &twice]))
    {
        assert_eq!(g.len(), want.len(), "{name}");
        for (k, (a, e)) in g.iter().zip(want.iter()).enumerate() {
            assert!(
                (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                "{name}[{k}]: {a}, expected {e}"
            );
        }
    }

    // Mapped to the GPU: one launch per loop nest, the grid over the tiles.
    let host = pipe("mlir-opt", &qc::cmd::cuda::to_gpu(script.path()), &module);
    let launches: Vec<&str> = host
        .lines()
        .filter_map(|l| {
            let i = l.find("blocks in ")?;
            Some(&l[i..l.find(")  args").map_or(l.len(), |e| e + 1)])
        })
        .collect();
    assert_eq!(
        launches,
        [
            // y: [3, 5, 300], tiles of 256 and 44.
            "blocks in (%c2, %c5, %c3) threads in (%c256, %c1, %c1)",
            // The fill of the row sums and the sums: one tile of 15.
            "blocks in (%c1, %c1, %c1) threads in (%c15, %c1, %c1)",
            "blocks in (%c1, %c1, %c1) threads in (%c15, %c1, %c1)",
            // The fill of the product and the product: [15, 260].
            "blocks in (%c2, %c15, %c1) threads in (%c256, %c1, %c1)",
            "blocks in (%c2, %c15, %c1) threads in (%c256, %c1, %c1)",
            // The fill of the middle sums, [3, 300], and the middle sums (untiled).
            "blocks in (%c2, %c3, %c1) threads in (%c256, %c1, %c1)",
            "blocks in (%c3, %c1, %c1) threads in (%c1, %c1, %c1)",
            // The broadcast: [3, 5, 2] blocks, each looping over its 2 tiles of 300.
            "blocks in (%c2, %c5, %c3) threads in (%c256, %c1, %c1)",
        ],
        "{host}"
    );
    // The partial tiles' threads check their index against the tile's extent.
    assert!(host.contains("arith.cmpi slt, %thread_id_x, "), "{host}");
}

/// `qc compile MODEL --target sm_80` with `args` (that must succeed); the exported module that
/// mlir-opt receives (`QC_CUDA_DUMP`).
fn gpu_export(d: &Path, model: &Path, args: &[&str]) -> String {
    let dump = d.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    ok(
        Command::new(env!("CARGO_BIN_EXE_qc"))
            .env("QC_CUDA_DUMP", &dump)
            .args(["compile", p(model), "--target", "sm_80", "-o"])
            .arg(d.join("m.qca"))
            .args(args),
        "qc compile --target sm_80",
    );
    std::fs::read_to_string(dump.join("model.export.mlir")).unwrap()
}

/// The shape of `memref<D0x...xf32>` (an f32 memref of static shape, else a failure).
fn f32_memref_shape(ty: &str) -> Vec<u64> {
    let dims = ty
        .trim()
        .strip_prefix("memref<")
        .and_then(|t| t.strip_suffix("xf32>"))
        .unwrap_or_else(|| panic!("{ty}: not an f32 memref"));
    dims.split('x')
        .map(|d| d.parse().unwrap_or_else(|_| panic!("{ty}: dimension {d}")))
        .collect()
}

/// `module` with a body for each f32 GEMM that the export leaves to an external kernel
/// (`ExportOptions::float_matmul_calls`: `func.func private @qc_sgemm_<i>(memref<BxMxKxf32>,
/// memref<B'xKxNxf32>, memref<BxMxNxf32>)`, `c[b] = a[b] x b[b']` with B' = 1 or B' = B), so that it
/// runs on the CPU: zero `c`, then `linalg.batch_matmul` when B' = B, else `linalg.matmul` of `a` and
/// `c` as [B M, K] and [B M, N] matrices by the shared [K, N] one. A module without such
/// declarations is returned unchanged.
fn with_sgemm_bodies(module: &str) -> String {
    const DECL: &str = "func.func private @qc_sgemm_";
    if !module.contains(DECL) {
        return module.to_string();
    }
    let mut out = String::with_capacity(module.len());
    for line in module.split_inclusive('\n') {
        let Some(at) = line.find(DECL) else {
            out += line;
            continue;
        };
        let decl = line.trim_end();
        let open = decl.find('(').expect("(");
        let (name, types) = (&decl[at + "func.func private ".len()..open], &decl[open..]);
        let types = types
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{decl}: not a declaration of memref arguments"));
        let types: Vec<&str> = types.split(", ").collect();
        assert_eq!(types.len(), 3, "{decl}");
        let (ta, tb, tc) = (types[0], types[1], types[2]);
        let (sa, sb, sc) = (
            f32_memref_shape(ta),
            f32_memref_shape(tb),
            f32_memref_shape(tc),
        );
        assert!(sa.len() == 3 && sb.len() == 3 && sc.len() == 3, "{decl}");
        let (batch, m, k) = (sa[0], sa[1], sa[2]);
        let (shared, k2, n) = (sb[0], sb[1], sb[2]);
        assert!(k == k2 && sc == [batch, m, n], "{decl}");
        assert!(shared == 1 || shared == batch, "{decl}");
        let indent = &line[..at];
        let mut body = format!(
            "{indent}func.func private {name}(%a: {ta}, %b: {tb}, %c: {tc}) {{\n\
             {indent}  %zero = arith.constant 0.0 : f32\n\
             {indent}  linalg.fill ins(%zero : f32) outs(%c : {tc})\n"
        );
        if shared == batch {
            body += &format!(
                "{indent}  linalg.batch_matmul ins(%a, %b : {ta}, {tb}) outs(%c : {tc})\n"
            );
        } else {
            let rows = batch * m;
            let (ma, mb, mc) = (
                format!("memref<{rows}x{k}xf32>"),
                format!("memref<{k}x{n}xf32>"),
                format!("memref<{rows}x{n}xf32>"),
            );
            body += &format!(
                "{indent}  %a2 = memref.collapse_shape %a [[0, 1], [2]] : {ta} into {ma}\n\
                 {indent}  %b2 = memref.collapse_shape %b [[0, 1], [2]] : {tb} into {mb}\n\
                 {indent}  %c2 = memref.collapse_shape %c [[0, 1], [2]] : {tc} into {mc}\n\
                 {indent}  linalg.matmul ins(%a2, %b2 : {ma}, {mb}) outs(%c2 : {mc})\n"
            );
        }
        body += &format!("{indent}  return\n{indent}}}\n");
        out += &body;
    }
    out
}

/// `module` with a body for each row kernel call of the export (`ExportOptions::row_kernel_calls`:
/// `func.func private @qc_softmax_<i>(memref<MxNxf32>, memref<MxNxf32>)`, `@qc_log_softmax_<i>`
/// likewise, `@qc_layernorm_<i>(memref<MxNxf32>, memref<Nxf32>, memref<Nxf32>, memref<MxNxf32>)`),
/// so that it runs on the CPU: `scf.for` loops over the rows computing what the kernels compute
/// (the layer normalization with epsilon 1e-5: the declaration does not carry the op's; the tests
/// compare runs through these same bodies). A module without such declarations is returned
/// unchanged.
fn with_row_bodies(module: &str) -> String {
    const KINDS: [&str; 3] = ["softmax", "log_softmax", "layernorm"];
    let mut out = String::with_capacity(module.len());
    for line in module.split_inclusive('\n') {
        let decl = line.trim();
        let kind = KINDS.iter().find(|k| {
            decl.strip_prefix(&format!("func.func private @qc_{k}_"))
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        });
        let Some(&kind) = kind else {
            out += line;
            continue;
        };
        let indent = &line[..line.find("func.func").unwrap()];
        let open = decl.find('(').expect("(");
        let name = &decl["func.func private ".len()..open];
        let types: Vec<&str> = decl[open + 1..decl.len() - 1].split(", ").collect();
        let t = types[0];
        let s = f32_memref_shape(t);
        assert_eq!(s.len(), 2, "{decl}");
        let (rows, len) = (s[0], s[1]);
        let norm = kind == "layernorm";
        let params = if norm {
            assert_eq!(types.len(), 4, "{decl}");
            format!("%x: {t}, %g: {}, %b: {}, %y: {t}", types[1], types[2])
        } else {
            assert_eq!(types.len(), 2, "{decl}");
            format!("%x: {t}, %y: {t}")
        };
        let i = format!("{indent}    ");
        let mut body = format!(
            "{indent}func.func private {name}({params}) {{\n\
             {indent}  %c0 = arith.constant 0 : index\n\
             {indent}  %c1 = arith.constant 1 : index\n\
             {indent}  %rows = arith.constant {rows} : index\n\
             {indent}  %len = arith.constant {len} : index\n\
             {indent}  %zero = arith.constant 0.0 : f32\n\
             {indent}  %ninf = arith.constant 0xFF800000 : f32\n\
             {indent}  %n = arith.constant {len}.0 : f32\n\
             {indent}  %eps = arith.constant 1.0e-05 : f32\n\
             {indent}  scf.for %r = %c0 to %rows step %c1 {{\n"
        );
        // A loop over the row folding `step` (given %a and the element %v) from `init`.
        let fold = |out: &str, init: &str, step: &str| {
            format!(
                "{i}{out} = scf.for %j = %c0 to %len step %c1 iter_args(%a = {init}) -> (f32) {{\n\
                 {i}  %v = memref.load %x[%r, %j] : {t}\n\
                 {step}\
                 {i}  scf.yield %o : f32\n\
                 {i}}}\n"
            )
        };
        let store = |value: &str| {
            format!(
                "{i}scf.for %j = %c0 to %len step %c1 {{\n\
                 {i}  %v = memref.load %x[%r, %j] : {t}\n\
                 {value}\
                 {i}  memref.store %o, %y[%r, %j] : {t}\n\
                 {i}}}\n"
            )
        };
        if norm {
            body += &fold(
                "%s",
                "%zero",
                &format!("{i}  %o = arith.addf %a, %v : f32\n"),
            );
            body += &format!("{i}%mean = arith.divf %s, %n : f32\n");
            body += &fold(
                "%q",
                "%zero",
                &format!(
                    "{i}  %d = arith.subf %v, %mean : f32\n\
                     {i}  %dd = arith.mulf %d, %d : f32\n\
                     {i}  %o = arith.addf %a, %dd : f32\n"
                ),
            );
            body += &format!(
                "{i}%var = arith.divf %q, %n : f32\n\
                 {i}%ve = arith.addf %var, %eps : f32\n\
                 {i}%sd = math.sqrt %ve : f32\n"
            );
            body += &store(&format!(
                "{i}  %d = arith.subf %v, %mean : f32\n\
                 {i}  %u = arith.divf %d, %sd : f32\n\
                 {i}  %gj = memref.load %g[%j] : {}\n\
                 {i}  %bj = memref.load %b[%j] : {}\n\
                 {i}  %w = arith.mulf %u, %gj : f32\n\
                 {i}  %o = arith.addf %w, %bj : f32\n",
                types[1], types[2]
            ));
        } else {
            body += &fold(
                "%m",
                "%ninf",
                &format!("{i}  %o = arith.maximumf %a, %v : f32\n"),
            );
            body += &fold(
                "%s",
                "%zero",
                &format!(
                    "{i}  %d = arith.subf %v, %m : f32\n\
                     {i}  %e = math.exp %d : f32\n\
                     {i}  %o = arith.addf %a, %e : f32\n"
                ),
            );
            if kind == "log_softmax" {
                body += &format!("{i}%l = math.log %s : f32\n");
                body += &store(&format!(
                    "{i}  %d = arith.subf %v, %m : f32\n\
                     {i}  %o = arith.subf %d, %l : f32\n"
                ));
            } else {
                body += &store(&format!(
                    "{i}  %d = arith.subf %v, %m : f32\n\
                     {i}  %e = math.exp %d : f32\n\
                     {i}  %o = arith.divf %e, %s : f32\n"
                ));
            }
        }
        body += &format!("{indent}  }}\n{indent}  return\n{indent}}}\n");
        out += &body;
    }
    out
}

/// The bodies of [`with_sgemm_bodies`], run on the CPU through the tiled and the untiled loops,
/// compute the products: one right-hand matrix shared by the 2 batch elements (B' = 1) and one per
/// batch element (B' = B), with the arguments of [`arg_value`].
#[test]
fn sgemm_bodies_compute_the_products() {
    let (a, bs, bb, c) = (
        "memref<2x3x40xf32>",
        "memref<1x40x5xf32>",
        "memref<2x40x5xf32>",
        "memref<2x3x5xf32>",
    );
    let t = |m: &str| m.replace("memref", "tensor");
    let module = format!(
        "module {{\n  \
         func.func private @qc_sgemm_0({a}, {bs}, {c})\n  \
         func.func private @qc_sgemm_1({a}, {bb}, {c})\n  \
         func.func @main(%arg0: {ta}, %arg1: {tbs}, %arg2: {tbb}) -> ({tc}, {tc}) {{\n    \
         %0 = bufferization.to_buffer %arg0 read_only : {ta} to {a}\n    \
         %1 = bufferization.to_buffer %arg1 read_only : {tbs} to {bs}\n    \
         %2 = bufferization.to_buffer %arg2 read_only : {tbb} to {bb}\n    \
         %alloc = memref.alloc() {{alignment = 64 : i64}} : {c}\n    \
         call @qc_sgemm_0(%0, %1, %alloc) : ({a}, {bs}, {c}) -> ()\n    \
         %3 = bufferization.to_tensor %alloc restrict writable : {c} to {tc}\n    \
         %alloc_1 = memref.alloc() {{alignment = 64 : i64}} : {c}\n    \
         call @qc_sgemm_1(%0, %2, %alloc_1) : ({a}, {bb}, {c}) -> ()\n    \
         %4 = bufferization.to_tensor %alloc_1 restrict writable : {c} to {tc}\n    \
         return %3, %4 : {tc}, {tc}\n  \
         }}\n}}\n",
        ta = t(a),
        tbs = t(bs),
        tbb = t(bb),
        tc = t(c),
    );
    let with_bodies = with_sgemm_bodies(&module);
    assert!(!with_bodies.contains("func.func private @qc_sgemm_0(memref"));
    // A module without such declarations stays as it is.
    let plain = module.replace("qc_sgemm", "other");
    assert_eq!(with_sgemm_bodies(&plain), plain);

    let (tiled, _, _) = tiled_and_untiled(&module);
    let x = |i: usize| arg_value(0, i) as f64;
    let (shared, per_batch) = (
        |i: usize| arg_value(1, i) as f64,
        |i: usize| arg_value(2, i) as f64,
    );
    let product = |b: &dyn Fn(usize) -> f64, stride: usize| -> Vec<f64> {
        (0..30)
            .map(|i| {
                let (batch, m, n) = (i / 15, i / 5 % 3, i % 5);
                (0..40)
                    .map(|k| x(batch * 120 + m * 40 + k) * b(batch * stride + k * 5 + n))
                    .sum()
            })
            .collect()
    };
    let want = [product(&shared, 0), product(&per_batch, 200)];
    let got = printed_values(&tiled);
    assert_eq!(got.len(), 2, "{tiled}");
    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len());
        for (k, (a, e)) in g.iter().zip(w).enumerate() {
            assert!(
                (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                "product {j}[{k}]: {a}, expected {e}"
            );
        }
    }
}

/// The bodies of [`with_row_bodies`], run on the CPU through the tiled and the untiled loops,
/// compute softmax, log-softmax and layer normalization (epsilon 1e-5) of the rows of a [2, 5]
/// argument.
#[test]
fn row_bodies_compute_softmax_and_layer_norm() {
    let (x, v) = ("memref<2x5xf32>", "memref<5xf32>");
    let t = |m: &str| m.replace("memref", "tensor");
    let (tx, tv) = (t(x), t(v));
    let module = format!(
        "module {{\n  \
         func.func private @qc_softmax_0({x}, {x})\n  \
         func.func private @qc_log_softmax_1({x}, {x})\n  \
         func.func private @qc_layernorm_2({x}, {v}, {v}, {x})\n  \
         func.func @main(%arg0: {tx}, %arg1: {tv}, %arg2: {tv}) -> ({tx}, {tx}, {tx}) {{\n    \
         %0 = bufferization.to_buffer %arg0 read_only : {tx} to {x}\n    \
         %1 = bufferization.to_buffer %arg1 read_only : {tv} to {v}\n    \
         %2 = bufferization.to_buffer %arg2 read_only : {tv} to {v}\n    \
         %a0 = memref.alloc() {{alignment = 64 : i64}} : {x}\n    \
         call @qc_softmax_0(%0, %a0) : ({x}, {x}) -> ()\n    \
         %r0 = bufferization.to_tensor %a0 restrict writable : {x} to {tx}\n    \
         %a1 = memref.alloc() {{alignment = 64 : i64}} : {x}\n    \
         call @qc_log_softmax_1(%0, %a1) : ({x}, {x}) -> ()\n    \
         %r1 = bufferization.to_tensor %a1 restrict writable : {x} to {tx}\n    \
         %a2 = memref.alloc() {{alignment = 64 : i64}} : {x}\n    \
         call @qc_layernorm_2(%0, %1, %2, %a2) : ({x}, {v}, {v}, {x}) -> ()\n    \
         %r2 = bufferization.to_tensor %a2 restrict writable : {x} to {tx}\n    \
         return %r0, %r1, %r2 : {tx}, {tx}, {tx}\n  \
         }}\n}}\n"
    );
    let with_bodies = with_row_bodies(&module);
    assert!(!with_bodies.contains("func.func private @qc_softmax_0(memref"));
    let plain = module.replace("@qc_", "@other_");
    assert_eq!(with_row_bodies(&plain), plain);
    let (tiled, _, _) = tiled_and_untiled(&module);
    let got = printed_values(&tiled);
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 10]);
    for r in 0..2 {
        let row: Vec<f64> = (0..5).map(|j| arg_value(0, r * 5 + j) as f64).collect();
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let mean = row.iter().sum::<f64>() / 5.0;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 5.0;
        for j in 0..5 {
            let want = [
                (row[j] - m).exp() / s,
                row[j] - m - s.ln(),
                (row[j] - mean) / (var + 1e-5).sqrt() * arg_value(1, j) as f64
                    + arg_value(2, j) as f64,
            ];
            for (k, w) in want.iter().enumerate() {
                let g = got[k][r * 5 + j];
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "output {k}[{r}][{j}]: {g}, expected {w}"
                );
            }
        }
    }
}

/// `module` (its f32 GEMM and row kernel calls given bodies by [`with_sgemm_bodies`] and
/// [`with_row_bodies`]) run on the CPU through the
/// tiled loops (`cuda::to_loops`) and through the untiled ones, on the same arguments: the same
/// printed results (those of the tiled loops), and the number of `scf.parallel` loops of each.
fn tiled_and_untiled(module: &str) -> (String, usize, usize) {
    let module = &with_row_bodies(&with_sgemm_bodies(module));
    let program = with_entry(module);
    let script = qc::cmd::cuda::tiling_script_file().unwrap();
    let tiled_args = qc::cmd::cuda::to_loops(script.path());
    let loops = |args: &[String]| {
        pipe("mlir-opt", args, module)
            .matches("scf.parallel")
            .count()
    };
    let tiled = run_on_cpu(&program, &tiled_args);
    let untiled = run_on_cpu(&program, &untiled_loops());
    assert_eq!(tiled, untiled, "the tiled loops compute other values");
    (tiled, loops(&tiled_args), loops(&untiled_loops()))
}

/// The tiny BERT's export for the NVIDIA targets, run on the CPU through the tiled loops of
/// `cuda::to_loops` and through the untiled ones, on the same arguments: the same printed results.
#[test]
fn gpu_tiling_keeps_the_results_of_the_bert() {
    let Some(_) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_bert(d);
    let module = gpu_export(
        d,
        &model,
        &[
            "--passes",
            "canonicalize",
            "--shape",
            "batch=2",
            "--shape",
            "seq=7",
        ],
    );
    let (tiled, n_tiled, n_untiled) = tiled_and_untiled(&module);
    // The tiling applies: the loop nests become tile loops around element loops.
    assert!(
        2 * n_tiled > 3 * n_untiled,
        "{n_tiled} tiled loops, {n_untiled} untiled"
    );
    let values = printed_values(&tiled);
    // The encoder's output [2, 7, 32] and the pooler's [2, 32], finite.
    assert_eq!(values.iter().map(Vec::len).collect::<Vec<_>>(), [448, 64]);
    assert!(values.iter().flatten().all(|v| v.is_finite()));
}

/// The window ops of compiler/tests/cpu_ops.py (convolutions, which stay untiled, pooling, LRN, ...)
/// the same way: the same printed results through the tiled and the untiled loops.
#[test]
fn gpu_tiling_keeps_the_results_of_the_window_ops() {
    let Some(_) = ptxas() else { return };
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cpu_ops_models(d);
    let module = gpu_export(d, &d.join("window.onnx"), &["--passes", "canonicalize"]);
    let (tiled, n_tiled, n_untiled) = tiled_and_untiled(&module);
    assert!(
        n_tiled > n_untiled,
        "{n_tiled} tiled loops, {n_untiled} untiled"
    );
    assert!(printed_values(&tiled).len() > 10, "{tiled}");
}

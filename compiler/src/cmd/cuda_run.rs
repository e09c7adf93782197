//! `qc run ARTIFACT.qca --device cuda` and `qc bench` of an NVIDIA artifact (`--target sm_*`): the
//! CUDA executor of `qc_runtime::cuda` on GPU 0, with the driver loaded at run time. On a machine
//! without the driver, or with a GPU the artifact's PTX cannot run on, the command says so (exit code
//! 2). Needs no cargo feature: the executor reads only the artifact's launch plan, PTX and weights.

use std::path::Path;

use memmap2::Mmap;
use qc_runtime::artifact::{self, Manifest, TensorSig};
use qc_runtime::cuda::{driver, driver::Cuda, Plan, Prepared};

use crate::cmd::bench::BenchArgs;
use crate::cmd::run::RunArgs;
use crate::npy::{to_npy_bytes, NpyArray, NpyData};
use crate::output::{input_error, Failure};

/// Whether an artifact's target is an NVIDIA one (`sm_*`).
pub fn is_gpu_target(target: &str) -> bool {
    target.starts_with("sm_")
}

/// Bytes per element of a manifest dtype, for the dtypes the executor feeds and reads.
fn elem_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "f32" | "i32" => 4,
        "f64" | "i64" => 8,
        "i1" | "i8" => 1,
        _ => return None,
    })
}

/// The row-major little-endian bytes of input `sig` from `.npy` array `a` (read from `what`).
fn input_bytes(sig: &TensorSig, a: &NpyArray, what: &str) -> Result<Vec<u8>, Failure> {
    let want: Vec<usize> = sig.shape.iter().map(|&d| d as usize).collect();
    if a.shape != want {
        return Err(input_error(format!(
            "{what}: input '{}' has shape {:?}, the artifact takes {want:?}",
            sig.name, a.shape
        )));
    }
    let bytes: Vec<u8> = match (sig.dtype.as_str(), &a.data) {
        ("f32", NpyData::F32(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ("f64", NpyData::F64(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ("i64", NpyData::I64(v)) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ("i32", NpyData::I64(v)) => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        ("i8", NpyData::I64(v)) => v.iter().map(|&x| x as i8 as u8).collect(),
        ("i1", NpyData::I64(v)) => v.iter().map(|&x| (x != 0) as u8).collect(),
        _ => {
            return Err(input_error(format!(
                "{what}: a {} array cannot feed input '{}' of element type {}",
                a.data.descr(),
                sig.name,
                sig.dtype
            )))
        }
    };
    Ok(bytes)
}

/// The `.npy` array of output `sig` from its bytes.
fn output_array(sig: &TensorSig, b: &[u8]) -> NpyArray {
    let shape: Vec<usize> = sig.shape.iter().map(|&d| d as usize).collect();
    let w = |k: usize, n: usize| -> [u8; 8] {
        let mut o = [0u8; 8];
        o[..n].copy_from_slice(&b[k * n..k * n + n]);
        o
    };
    let n: usize = shape.iter().product();
    let data = match sig.dtype.as_str() {
        "f32" => NpyData::F32(
            (0..n)
                .map(|k| f32::from_le_bytes(w(k, 4)[..4].try_into().unwrap()))
                .collect(),
        ),
        "f64" => NpyData::F64((0..n).map(|k| f64::from_le_bytes(w(k, 8))).collect()),
        "i64" => NpyData::I64((0..n).map(|k| i64::from_le_bytes(w(k, 8))).collect()),
        "i32" => NpyData::I64(
            (0..n)
                .map(|k| i32::from_le_bytes(w(k, 4)[..4].try_into().unwrap()) as i64)
                .collect(),
        ),
        _ => NpyData::I64((0..n).map(|k| b[k] as i8 as i64).collect()),
    };
    NpyArray { shape, data }
}

/// An NVIDIA artifact mapped into memory, its plan checked, made ready on GPU 0.
struct Loaded {
    manifest: Manifest,
    map: Mmap,
    plan: Plan,
}

impl Loaded {
    fn open(path: &Path) -> Result<Loaded, Failure> {
        let what = path.display();
        let file = std::fs::File::open(path)
            .map_err(|e| input_error(format!("cannot read {what}: {e}")))?;
        // SAFETY: the file is only read; qc does not write artifacts in place (it renames new ones in).
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| input_error(format!("cannot map {what}: {e}")))?;
        let view = artifact::view(&map).map_err(|e| input_error(format!("{what}: {e}")))?;
        let manifest = view.manifest.clone();
        if !is_gpu_target(&manifest.target) {
            return Err(input_error(format!(
                "{what}: --device cuda runs artifacts for NVIDIA targets (sm_*); this one is for {}",
                manifest.target
            )));
        }
        for s in manifest.inputs.iter().chain(&manifest.outputs) {
            if elem_size(&s.dtype).is_none() {
                return Err(input_error(format!(
                    "{what}: tensor '{}' has element type {}, which the CUDA executor does not exchange",
                    s.name, s.dtype
                )));
            }
        }
        let plan_text = view
            .part(crate::cmd::cuda_plan::PLAN)
            .ok_or_else(|| input_error(format!("{what}: no launch plan")))?;
        let weights = view.part(crate::cmd::cuda_plan::WEIGHTS).unwrap_or(&[]);
        let plan = Plan::parse(plan_text, manifest.inputs.len(), weights.len() as u64)
            .map_err(|e| input_error(format!("{what}: {e}")))?;
        for (i, s) in manifest.outputs.iter().enumerate() {
            let n: u64 = s.shape.iter().product::<u64>() * elem_size(&s.dtype).unwrap() as u64;
            if plan.outputs.get(i).map(|r| r.bytes) != Some(n) {
                return Err(input_error(format!(
                    "{what}: the launch plan does not hold output '{}'",
                    s.name
                )));
            }
        }
        drop(view);
        Ok(Loaded {
            manifest,
            map,
            plan,
        })
    }

    /// Opens the driver on GPU 0 and checks that it runs the plan's target.
    fn gpu(&self) -> Result<Cuda, Failure> {
        let cuda = Cuda::open().map_err(|e| input_error(format!("--device cuda: {e}")))?;
        let cc = cuda
            .compute_capability()
            .map_err(|e| input_error(format!("--device cuda: {e}")))?;
        if !driver::runs_target(cc, &self.plan.target) {
            return Err(input_error(format!(
                "the artifact holds PTX for {}; this GPU ({}) is sm_{}{}: compile for its target",
                self.plan.target,
                cuda.name(),
                cc.0,
                cc.1
            )));
        }
        Ok(cuda)
    }

    /// The inputs' bytes from `--input NAME=FILE.npy` specs, in the manifest's order.
    fn inputs(&self, specs: &[String]) -> Result<Vec<Vec<u8>>, Failure> {
        let sigs = &self.manifest.inputs;
        crate::cmd::run::artifact_inputs(sigs, specs)?
            .iter()
            .zip(sigs)
            .map(|((arr, file), s)| input_bytes(s, arr, file))
            .collect()
    }
}

impl Loaded {
    /// Makes the plan ready on the GPU (kernels loaded, buffers allocated, weights uploaded) and calls
    /// `f` with a function that runs it once on `inputs`.
    fn with_prepared<T>(
        &self,
        cuda: &mut Cuda,
        inputs: &[&[u8]],
        f: impl FnOnce(&mut dyn FnMut() -> Result<Vec<Vec<u8>>, Failure>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let fail = |e: String| input_error(format!("--device cuda: {e}"));
        let (map, plan) = (&self.map, &self.plan);
        let view = artifact::view(map).map_err(|e| input_error(e.to_string()))?;
        let weights = view.part(crate::cmd::cuda_plan::WEIGHTS).unwrap_or(&[]);
        let p = Prepared::new(cuda, plan, |n| view.part(n), weights).map_err(fail)?;
        f(&mut || p.run(cuda, inputs).map_err(fail))
    }
}

/// `qc run ARTIFACT.qca --device cuda`: one NAME.npy per output in the output folder.
pub fn run_artifact(args: &RunArgs) -> Result<(), Failure> {
    let l = Loaded::open(&args.model)?;
    let inputs = l.inputs(&args.inputs)?;
    let refs: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
    let mut cuda = l.gpu()?;
    let outs = l.with_prepared(&mut cuda, &refs, |run| run())?;
    std::fs::create_dir_all(&args.output)
        .map_err(|e| input_error(format!("cannot create {}: {e}", args.output.display())))?;
    for (s, b) in l.manifest.outputs.iter().zip(&outs) {
        let out = args.output.join(format!("{}.npy", s.name));
        qc_ir::util::write_atomic(&out, &to_npy_bytes(&output_array(s, b))).map_err(input_error)?;
    }
    Ok(())
}

/// `qc bench` of an NVIDIA artifact: one JSON line like the CPU one's (`threads` is absent; `device`
/// names the GPU). Each timed run includes copying the inputs in, the launches, the wait and copying
/// the outputs out.
pub fn bench_artifact(args: &BenchArgs) -> Result<String, Failure> {
    let l = Loaded::open(&args.artifact)?;
    let inputs = l.inputs(&args.inputs)?;
    let refs: Vec<&[u8]> = inputs.iter().map(|v| v.as_slice()).collect();
    let mut cuda = l.gpu()?;
    let name = cuda.name();
    let target = l.plan.target.clone();
    let mut times = Vec::with_capacity(args.reps);
    l.with_prepared(&mut cuda, &refs, |run| {
        for _ in 0..args.warmup {
            run()?;
        }
        for _ in 0..args.reps.max(1) {
            let t = std::time::Instant::now();
            run()?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(())
    })?;
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    Ok(format!(
        "{{\"artifact\": {:?}, \"target\": {:?}, \"device\": {:?}, \"reps\": {}, \"best_s\": {:.6e}, \
         \"median_s\": {:.6e}, \"mean_s\": {:.6e}}}\n",
        args.artifact.display().to_string(),
        target,
        name,
        times.len(),
        times[0],
        times[times.len() / 2],
        mean
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(dtype: &str, shape: &[u64]) -> TensorSig {
        TensorSig {
            name: "x".into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn tensors_cross_as_little_endian_bytes() {
        let a = NpyArray {
            shape: vec![2],
            data: NpyData::I64(vec![-2, 3]),
        };
        assert_eq!(
            input_bytes(&sig("i32", &[2]), &a, "a.npy").unwrap(),
            [0xFE, 0xFF, 0xFF, 0xFF, 3, 0, 0, 0]
        );
        let e = input_bytes(&sig("f32", &[2]), &a, "a.npy").unwrap_err();
        assert!(format!("{e:?}").contains("cannot feed input 'x'"), "{e:?}");
        let e = input_bytes(&sig("i32", &[3]), &a, "a.npy").unwrap_err();
        assert!(format!("{e:?}").contains("has shape [2]"), "{e:?}");
        let b: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let o = output_array(&sig("f32", &[1, 2]), &b);
        assert_eq!(o.shape, [1, 2]);
        assert!(matches!(o.data, NpyData::F32(ref v) if v == &[1.5, -2.0]));
    }
}

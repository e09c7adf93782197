//! The CUDA executor: runs an NVIDIA artifact (`qc compile --target sm_*`) on a GPU.
//!
//! The artifact's [`plan`] says everything to do (buffers, copies, launches with their parameters), so
//! running needs no MLIR: [`Prepared::new`] loads the PTX parts (the driver JIT-compiles them for the
//! GPU), allocates the buffers and uploads the weights once; [`Prepared::run`] copies the inputs in,
//! runs the steps in order on the default stream, waits, and copies the outputs out.
//!
//! The GPU is behind the [`Device`] trait. [`driver::Cuda`] implements it with the CUDA driver API,
//! which it loads at run time (`libcuda.so.1`, or the file `QC_LIBCUDA` names), so qc builds and its
//! tests run on machines without CUDA; there, opening the driver is an error that says so. Tests drive
//! the executor with a device kept in host memory.

pub mod driver;
pub mod plan;

use std::collections::BTreeMap;

pub use plan::Plan;
use plan::{Init, Step};

/// A GPU as the executor uses it. Addresses are device addresses; every call may fail with the
/// driver's message.
pub trait Device {
    /// Allocates `bytes` bytes; the address.
    fn alloc(&mut self, bytes: u64) -> Result<u64, String>;
    /// Copies `data` to the device at `dst`.
    fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), String>;
    /// Copies `out.len()` bytes from the device at `src` into `out` (after the work before it ends).
    fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), String>;
    /// Copies `bytes` bytes from `src` to `dst` on the device, in order with the launches.
    fn copy(&mut self, dst: u64, src: u64, bytes: u64) -> Result<(), String>;
    /// Loads a PTX module (`ptx` without a trailing NUL) and finds its kernel `entry`; a handle.
    fn kernel(&mut self, ptx: &[u8], entry: &str) -> Result<usize, String>;
    /// Launches kernel `kernel` on `grid` x `block` threads with one byte string per parameter.
    fn launch(
        &mut self,
        kernel: usize,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[Vec<u8>],
    ) -> Result<(), String>;
    /// Waits until the work issued so far is done; reports a failure of that work.
    fn synchronize(&mut self) -> Result<(), String>;
}

/// A plan made ready on a device: kernels loaded, buffers allocated, weights uploaded.
pub struct Prepared<'p> {
    plan: &'p Plan,
    addresses: Vec<u64>,
    /// The kernel handle of each launch step (`None` for copies).
    kernels: Vec<Option<usize>>,
}

impl<'p> Prepared<'p> {
    /// Loads every PTX part the plan launches (each (part, entry) once, `part(name)` giving a part's
    /// bytes), allocates the buffers and uploads the weights (`weights`, the plan's weights part).
    pub fn new<'a>(
        dev: &mut dyn Device,
        plan: &'p Plan,
        part: impl Fn(&str) -> Option<&'a [u8]>,
        weights: &[u8],
    ) -> Result<Prepared<'p>, String> {
        let mut loaded: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        let mut kernels = Vec::with_capacity(plan.steps.len());
        for s in &plan.steps {
            kernels.push(match s {
                Step::Launch { ptx, entry, .. } => {
                    let key = (ptx.as_str(), entry.as_str());
                    if let Some(&k) = loaded.get(&key) {
                        Some(k)
                    } else {
                        let text = part(ptx).ok_or_else(|| {
                            format!("the plan launches {ptx}, which is not a part")
                        })?;
                        let k = dev
                            .kernel(text, entry)
                            .map_err(|e| format!("loading {ptx} ({entry}): {e}"))?;
                        loaded.insert(key, k);
                        Some(k)
                    }
                }
                Step::Copy { .. } => None,
            });
        }
        let mut addresses = Vec::with_capacity(plan.buffers.len());
        for (i, b) in plan.buffers.iter().enumerate() {
            let a = dev
                .alloc(b.bytes)
                .map_err(|e| format!("allocating buffer {i} ({} bytes): {e}", b.bytes))?;
            if let Init::Weights { offset } = b.init {
                let w = weights
                    .get(offset as usize..(offset + b.bytes) as usize)
                    .ok_or_else(|| format!("buffer {i} reads past the weights"))?;
                dev.upload(a, w)?;
            }
            addresses.push(a);
        }
        Ok(Prepared {
            plan,
            addresses,
            kernels,
        })
    }

    /// One run: `inputs` (the entry function's, row major, in order) are copied in, the steps run,
    /// and the outputs come back (their bytes, in order).
    pub fn run(&self, dev: &mut dyn Device, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, String> {
        for (i, b) in self.plan.buffers.iter().enumerate() {
            if let Init::Input { index } = b.init {
                let data = inputs
                    .get(index)
                    .ok_or_else(|| format!("the plan reads input {index}, which was not given"))?;
                if data.len() as u64 != b.bytes {
                    return Err(format!(
                        "input {index} has {} bytes; the plan expects {}",
                        data.len(),
                        b.bytes
                    ));
                }
                dev.upload(self.addresses[i], data)?;
            }
        }
        let at = |r: &plan::Range| self.addresses[r.buffer] + r.offset;
        for (s, (step, k)) in self.plan.steps.iter().zip(&self.kernels).enumerate() {
            match step {
                Step::Copy { src, dst } => dev
                    .copy(at(dst), at(src), src.bytes)
                    .map_err(|e| format!("step {s} (copy): {e}"))?,
                Step::Launch {
                    ptx,
                    grid,
                    block,
                    params,
                    ..
                } => {
                    let bytes: Vec<Vec<u8>> = params
                        .iter()
                        .map(|p| p.bytes(|b| self.addresses[b]))
                        .collect();
                    dev.launch(k.expect("a launch has a kernel"), *grid, *block, &bytes)
                        .map_err(|e| format!("step {s} (launch of {ptx}): {e}"))?
                }
            }
        }
        dev.synchronize()
            .map_err(|e| format!("running the model: {e}"))?;
        let mut outs = Vec::with_capacity(self.plan.outputs.len());
        for r in &self.plan.outputs {
            let mut o = vec![0u8; r.bytes as usize];
            dev.download(at(r), &mut o)?;
            outs.push(o);
        }
        Ok(outs)
    }
}

#[cfg(test)]
mod tests {
    use super::plan::{Buffer, Param, Range};
    use super::*;

    /// A device in host memory whose one kernel, `axpy`, computes `y[i] = a * x[i] + y[i]` for the
    /// thread `i = blockIdx.x` with params (x address, y address, a as f32 bits), as a GPU would.
    #[derive(Default)]
    struct HostDevice {
        mem: Vec<u8>,
        log: Vec<String>,
    }

    const BASE: u64 = 0x10_0000;

    impl HostDevice {
        fn at(&mut self, a: u64, n: u64) -> &mut [u8] {
            let o = (a - BASE) as usize;
            &mut self.mem[o..o + n as usize]
        }
    }

    impl Device for HostDevice {
        fn alloc(&mut self, bytes: u64) -> Result<u64, String> {
            let a = BASE + self.mem.len() as u64;
            self.mem
                .resize(self.mem.len() + bytes.next_multiple_of(256) as usize, 0xAA);
            Ok(a)
        }
        fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), String> {
            self.at(dst, data.len() as u64).copy_from_slice(data);
            Ok(())
        }
        fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), String> {
            out.copy_from_slice(self.at(src, out.len() as u64));
            Ok(())
        }
        fn copy(&mut self, dst: u64, src: u64, bytes: u64) -> Result<(), String> {
            let v = self.at(src, bytes).to_vec();
            self.at(dst, bytes).copy_from_slice(&v);
            Ok(())
        }
        fn kernel(&mut self, ptx: &[u8], entry: &str) -> Result<usize, String> {
            self.log.push(format!("load {} {entry}", ptx.len()));
            if entry == "axpy" {
                Ok(7)
            } else {
                Err(format!("no kernel {entry}"))
            }
        }
        fn launch(
            &mut self,
            kernel: usize,
            grid: [u32; 3],
            block: [u32; 3],
            params: &[Vec<u8>],
        ) -> Result<(), String> {
            assert_eq!((kernel, block), (7, [1, 1, 1]));
            let word = |p: &Vec<u8>| {
                let mut b = [0u8; 8];
                b[..p.len()].copy_from_slice(p);
                u64::from_le_bytes(b)
            };
            let (x, y) = (word(&params[0]), word(&params[1]));
            let a = f32::from_bits(word(&params[2]) as u32);
            for i in 0..grid[0] as u64 {
                let xi = f32::from_le_bytes(self.at(x + 4 * i, 4).try_into().unwrap());
                let yi = f32::from_le_bytes(self.at(y + 4 * i, 4).try_into().unwrap());
                self.at(y + 4 * i, 4)
                    .copy_from_slice(&(a * xi + yi).to_le_bytes());
            }
            self.log.push(format!("launch {}", grid[0]));
            Ok(())
        }
        fn synchronize(&mut self) -> Result<(), String> {
            self.log.push("sync".into());
            Ok(())
        }
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// y = 2 x + w (w from the weights at offset 16), then the output is a copy of y's last 2 values.
    fn axpy_plan() -> Plan {
        Plan {
            format: plan::FORMAT.into(),
            target: "sm_80".into(),
            weights: "weights.bin".into(),
            buffers: vec![
                Buffer {
                    bytes: 16,
                    init: Init::Input { index: 0 },
                },
                Buffer {
                    bytes: 16,
                    init: Init::Weights { offset: 16 },
                },
                Buffer {
                    bytes: 8,
                    init: Init::None,
                },
            ],
            steps: vec![
                Step::Launch {
                    ptx: "k.ptx".into(),
                    entry: "axpy".into(),
                    grid: [4, 1, 1],
                    block: [1, 1, 1],
                    params: vec![
                        Param::Address {
                            buffer: 0,
                            offset: 0,
                        },
                        Param::Address {
                            buffer: 1,
                            offset: 0,
                        },
                        Param::Value {
                            bytes: 4,
                            value: 2f32.to_bits() as u64,
                        },
                    ],
                },
                Step::Copy {
                    src: Range {
                        buffer: 1,
                        offset: 8,
                        bytes: 8,
                    },
                    dst: Range {
                        buffer: 2,
                        offset: 0,
                        bytes: 8,
                    },
                },
            ],
            outputs: vec![Range {
                buffer: 2,
                offset: 0,
                bytes: 8,
            }],
        }
    }

    #[test]
    fn runs_a_plan_in_order() {
        let plan = axpy_plan();
        let mut weights = vec![0u8; 16];
        weights.extend(f32s(&[10.0, 20.0, 30.0, 40.0]));
        plan.check(1, weights.len() as u64).unwrap();
        let ptx = b"// ptx".to_vec();
        let mut dev = HostDevice::default();
        let p = Prepared::new(
            &mut dev,
            &plan,
            |n| (n == "k.ptx").then_some(&ptx[..]),
            &weights,
        )
        .unwrap();
        let x = f32s(&[1.0, 2.0, 3.0, 4.0]);
        let out = p.run(&mut dev, &[&x]).unwrap();
        assert_eq!(out, vec![f32s(&[36.0, 48.0])]);
        // Weights are uploaded once: a second run accumulates into the same buffer.
        let out = p.run(&mut dev, &[&x]).unwrap();
        assert_eq!(out, vec![f32s(&[42.0, 56.0])]);
        assert_eq!(
            dev.log,
            ["load 6 axpy", "launch 4", "sync", "launch 4", "sync"]
        );
    }

    #[test]
    fn reports_what_is_missing() {
        let plan = axpy_plan();
        let weights = vec![0u8; 32];
        let mut dev = HostDevice::default();
        let e = Prepared::new(&mut dev, &plan, |_| None, &weights)
            .err()
            .unwrap();
        assert!(e.contains("k.ptx"), "{e}");
        let ptx = b"x".to_vec();
        let p = Prepared::new(&mut dev, &plan, |_| Some(&ptx[..]), &weights).unwrap();
        let e = p.run(&mut dev, &[&[0u8; 12]]).err().unwrap();
        assert!(e.contains("input 0 has 12 bytes"), "{e}");
        let e = p.run(&mut dev, &[]).err().unwrap();
        assert!(e.contains("input 0"), "{e}");
    }
}

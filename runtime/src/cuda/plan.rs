//! The launch plan of an NVIDIA artifact (`launch_plan.json`, format [`FORMAT`]): everything the CUDA
//! executor does, resolved when the artifact is compiled, so that running it needs no MLIR.
//!
//! # Contract
//! - `buffers` are device allocations, numbered from 0. A buffer's `init` says what it holds before
//!   the first step: `"input"` (the bytes of input `index`, which the executor copies in), `"weights"`
//!   (bytes `[offset, offset + bytes)` of the artifact's weights part), or `"none"` (uninitialized:
//!   the model writes it before reading it).
//! - `steps` run in order on one stream: a `copy` copies `bytes` bytes from `src` to `dst` (byte
//!   offsets into buffers; both ranges inside their buffers); a `launch` launches kernel `entry` of
//!   PTX part `ptx` on `grid` x `block` threads with `params`, one per `.param` of the kernel's
//!   `.entry`, in order.
//! - A param is either a device address (`{"buffer": B, "offset": O}`: buffer `B`'s address plus `O`
//!   bytes) or an immediate of 1, 2, 4 or 8 bytes (`{"bytes": N, "value": V}`: the low `N` bytes of
//!   `V`, little-endian; floats are given as their bit patterns).
//! - `outputs` are byte ranges of buffers holding the entry function's results, in order, each as
//!   many bytes as the manifest's output signature needs.

use serde::{Deserialize, Serialize};

/// The plan's `format` field.
pub const FORMAT: &str = "qc-launch-plan-2";

/// A launch plan (module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// [`FORMAT`].
    pub format: String,
    /// The GPU target the PTX was compiled for (`sm_80`, `sm_90a`, ...).
    pub target: String,
    /// The weights part the `weights` buffers read from.
    pub weights: String,
    /// Device buffers.
    pub buffers: Vec<Buffer>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Where the results are, in the order of the manifest's outputs.
    pub outputs: Vec<Range>,
}

/// One device allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    /// Its size in bytes (at least 1).
    pub bytes: u64,
    /// Its contents before the first step.
    pub init: Init,
}

/// What a buffer holds before the first step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Init {
    /// Uninitialized.
    None,
    /// Input `index` of the entry function (row major, its manifest signature's bytes).
    Input {
        /// The input's position.
        index: usize,
    },
    /// Bytes `[offset, offset + buffer.bytes)` of the weights part.
    Weights {
        /// Byte offset in the weights part.
        offset: u64,
    },
}

/// A byte range of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// The buffer.
    pub buffer: usize,
    /// Byte offset inside it.
    pub offset: u64,
    /// Length in bytes.
    pub bytes: u64,
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Step {
    /// A device-to-device copy of `src.bytes` bytes (`src.bytes == dst.bytes`).
    Copy {
        /// Source range.
        src: Range,
        /// Destination range.
        dst: Range,
    },
    /// A kernel launch.
    Launch {
        /// The PTX part.
        ptx: String,
        /// The `.entry` in it.
        entry: String,
        /// Grid size (blocks) in x, y, z.
        grid: [u32; 3],
        /// Block size (threads) in x, y, z.
        block: [u32; 3],
        /// The kernel's parameters, in order.
        params: Vec<Param>,
    },
}

/// One kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Param {
    /// The device address of a buffer plus a byte offset (a 64-bit parameter).
    Address {
        /// The buffer.
        buffer: usize,
        /// Bytes added to its address.
        offset: u64,
    },
    /// An immediate: the low `bytes` bytes (1, 2, 4 or 8) of `value`, little-endian.
    Value {
        /// Its size in bytes.
        bytes: u8,
        /// Its bits.
        value: u64,
    },
}

impl Param {
    /// The parameter's bytes as the kernel receives them, `address(b)` giving buffer `b`'s address.
    pub fn bytes(&self, address: impl Fn(usize) -> u64) -> Vec<u8> {
        match *self {
            Param::Address { buffer, offset } => (address(buffer) + offset).to_le_bytes().to_vec(),
            Param::Value { bytes, value } => value.to_le_bytes()[..bytes as usize].to_vec(),
        }
    }
}

impl Range {
    fn json(&self) -> String {
        format!(
            "{{\"buffer\": {}, \"offset\": {}, \"bytes\": {}}}",
            self.buffer, self.offset, self.bytes
        )
    }
}

impl Param {
    fn json(&self) -> String {
        match self {
            Param::Address { buffer, offset } => {
                format!("{{\"buffer\": {buffer}, \"offset\": {offset}}}")
            }
            Param::Value { bytes, value } => format!("{{\"bytes\": {bytes}, \"value\": {value}}}"),
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn dims(v: &[u32; 3]) -> String {
    format!("[{}, {}, {}]", v[0], v[1], v[2])
}

impl Plan {
    /// The plan as JSON text: one line per buffer, step and output (deterministic; [`Plan::parse`]
    /// reads it back).
    pub fn to_json(&self) -> String {
        let buffers: Vec<String> = self
            .buffers
            .iter()
            .map(|b| {
                let init = match b.init {
                    Init::None => "{\"kind\": \"none\"}".to_string(),
                    Init::Input { index } => format!("{{\"kind\": \"input\", \"index\": {index}}}"),
                    Init::Weights { offset } => {
                        format!("{{\"kind\": \"weights\", \"offset\": {offset}}}")
                    }
                };
                format!("    {{\"bytes\": {}, \"init\": {init}}}", b.bytes)
            })
            .collect();
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Copy { src, dst } => format!(
                    "    {{\"op\": \"copy\", \"src\": {}, \"dst\": {}}}",
                    src.json(),
                    dst.json()
                ),
                Step::Launch {
                    ptx,
                    entry,
                    grid,
                    block,
                    params,
                } => format!(
                    "    {{\"op\": \"launch\", \"ptx\": {}, \"entry\": {}, \"grid\": {}, \"block\": {}, \
                     \"params\": [{}]}}",
                    json_str(ptx),
                    json_str(entry),
                    dims(grid),
                    dims(block),
                    params.iter().map(Param::json).collect::<Vec<_>>().join(", ")
                ),
            })
            .collect();
        let outputs: Vec<String> = self
            .outputs
            .iter()
            .map(|r| format!("    {}", r.json()))
            .collect();
        format!(
            "{{\n  \"format\": {},\n  \"target\": {},\n  \"weights\": {},\n  \"buffers\": [\n{}\n  ],\n  \
             \"steps\": [\n{}\n  ],\n  \"outputs\": [\n{}\n  ]\n}}\n",
            json_str(&self.format),
            json_str(&self.target),
            json_str(&self.weights),
            buffers.join(",\n"),
            steps.join(",\n"),
            outputs.join(",\n")
        )
    }

    /// Parses a plan and checks it ([`Plan::check`]).
    pub fn parse(text: &[u8], inputs: usize, weights_len: u64) -> Result<Plan, String> {
        let p: Plan = serde_json::from_slice(text).map_err(|e| format!("the launch plan: {e}"))?;
        p.check(inputs, weights_len)?;
        Ok(p)
    }

    /// Checks that every index and byte range is in bounds: buffers, inputs (`inputs` of them), the
    /// weights part (`weights_len` bytes), copies and outputs; immediates of 1, 2, 4 or 8 bytes.
    pub fn check(&self, inputs: usize, weights_len: u64) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "the launch plan has format '{}' (this qc reads '{FORMAT}')",
                self.format
            ));
        }
        let nb = self.buffers.len();
        for (i, b) in self.buffers.iter().enumerate() {
            if b.bytes == 0 {
                return Err(format!("buffer {i} has no bytes"));
            }
            match b.init {
                Init::Input { index } if index >= inputs => {
                    return Err(format!("buffer {i} reads input {index} of {inputs}"))
                }
                Init::Weights { offset }
                    if offset.checked_add(b.bytes).is_none_or(|e| e > weights_len) =>
                {
                    return Err(format!(
                        "buffer {i} reads weights [{offset}, +{}) of {weights_len} bytes",
                        b.bytes
                    ))
                }
                _ => {}
            }
        }
        let range = |r: &Range, what: &str| -> Result<(), String> {
            let b = self
                .buffers
                .get(r.buffer)
                .ok_or_else(|| format!("{what} names buffer {} of {nb}", r.buffer))?;
            if r.offset.checked_add(r.bytes).is_none_or(|e| e > b.bytes) {
                return Err(format!(
                    "{what} reaches past buffer {} ({} + {} > {})",
                    r.buffer, r.offset, r.bytes, b.bytes
                ));
            }
            Ok(())
        };
        for (s, step) in self.steps.iter().enumerate() {
            match step {
                Step::Copy { src, dst } => {
                    range(src, &format!("step {s}"))?;
                    range(dst, &format!("step {s}"))?;
                    if src.bytes != dst.bytes {
                        return Err(format!(
                            "step {s} copies {} bytes into {}",
                            src.bytes, dst.bytes
                        ));
                    }
                }
                Step::Launch {
                    params,
                    grid,
                    block,
                    ..
                } => {
                    if grid.contains(&0) || block.contains(&0) {
                        return Err(format!("step {s} launches an empty grid or block"));
                    }
                    for p in params {
                        match *p {
                            Param::Address { buffer, offset } => range(
                                &Range {
                                    buffer,
                                    offset,
                                    bytes: 0,
                                },
                                &format!("a parameter of step {s}"),
                            )?,
                            Param::Value { bytes, .. } if ![1, 2, 4, 8].contains(&bytes) => {
                                return Err(format!("step {s} has a {bytes}-byte parameter"))
                            }
                            Param::Value { .. } => {}
                        }
                    }
                }
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            range(o, &format!("output {i}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            format: FORMAT.into(),
            target: "sm_80".into(),
            weights: "weights.bin".into(),
            buffers: vec![
                Buffer {
                    bytes: 16,
                    init: Init::Input { index: 0 },
                },
                Buffer {
                    bytes: 16,
                    init: Init::Weights { offset: 64 },
                },
                Buffer {
                    bytes: 16,
                    init: Init::None,
                },
            ],
            steps: vec![
                Step::Launch {
                    ptx: "main_kernel.ptx".into(),
                    entry: "main_kernel".into(),
                    grid: [4, 1, 1],
                    block: [1, 1, 1],
                    params: vec![
                        Param::Address {
                            buffer: 0,
                            offset: 0,
                        },
                        Param::Value { bytes: 8, value: 4 },
                        Param::Address {
                            buffer: 2,
                            offset: 4,
                        },
                    ],
                },
                Step::Copy {
                    src: Range {
                        buffer: 2,
                        offset: 0,
                        bytes: 16,
                    },
                    dst: Range {
                        buffer: 0,
                        offset: 0,
                        bytes: 16,
                    },
                },
            ],
            outputs: vec![Range {
                buffer: 0,
                offset: 0,
                bytes: 16,
            }],
        }
    }

    #[test]
    fn round_trips_through_json() {
        let p = plan();
        let text = p.to_json();
        assert!(
            text.contains("{\"bytes\": 16, \"init\": {\"kind\": \"weights\", \"offset\": 64}}"),
            "{text}"
        );
        assert!(
            text.contains("\"grid\": [4, 1, 1], \"block\": [1, 1, 1], \"params\": [{\"buffer\": 0, \"offset\": 0}, {\"bytes\": 8, \"value\": 4}"),
            "{text}"
        );
        assert_eq!(Plan::parse(text.as_bytes(), 1, 80).unwrap(), p);
        let pretty = serde_json::to_string_pretty(&p).unwrap();
        assert_eq!(Plan::parse(pretty.as_bytes(), 1, 80).unwrap(), p);
    }

    #[test]
    fn rejects_out_of_bounds_plans() {
        let p = plan();
        assert!(p.check(1, 79).unwrap_err().contains("weights"));
        assert!(p.check(0, 80).unwrap_err().contains("input 0"));
        let mut q = p.clone();
        q.outputs[0].offset = 1;
        assert!(q.check(1, 80).unwrap_err().contains("output 0"));
        let mut q = p.clone();
        if let Step::Launch { params, .. } = &mut q.steps[0] {
            params[1] = Param::Value { bytes: 3, value: 0 };
        }
        assert!(q.check(1, 80).unwrap_err().contains("3-byte"));
        let mut q = p;
        q.format = "qc-launch-plan-1".into();
        assert!(q.check(1, 80).unwrap_err().contains("format"));
    }

    #[test]
    fn params_are_little_endian() {
        let a = Param::Address {
            buffer: 1,
            offset: 8,
        };
        assert_eq!(a.bytes(|b| 0x1000 * b as u64), 0x1008u64.to_le_bytes());
        let v = Param::Value {
            bytes: 4,
            value: 1.5f32.to_bits() as u64,
        };
        assert_eq!(v.bytes(|_| 0), 1.5f32.to_le_bytes());
    }
}

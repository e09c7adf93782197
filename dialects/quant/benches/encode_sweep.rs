//! The full conformance sweep: the fast encoder against the simple reference on all 2^32 f32 bit
//! patterns, for each element type, rounding and saturation given.
//!
//! `cargo bench -p qc-quant --bench encode_sweep -- [TYPES] [ROUNDINGS] [SATURATIONS]`, each a comma list
//! (default: every named type, rne, satfinite,overflow), e.g. `-- e2m1,e4m3fn rne,ties_away overflow`.
//! Stochastic rounding uses stochastic_bits(99, bits) per input. Runs on all cores; prints one line per
//! combination and exits non-zero on any mismatch.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use qc_ir::quant::{Rounding, Saturation};
use qc_quant::{stochastic_bits, Codec};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let list = |i: usize, default: &str| -> Vec<String> {
        args.get(i)
            .map_or(default, |s| s.as_str())
            .split(',')
            .map(String::from)
            .collect()
    };
    let all: Vec<_> = named_encodings()
        .into_iter()
        .chain(generic_encodings())
        .collect();
    let type_names = list(0, &all.iter().map(|e| e.0).collect::<Vec<_>>().join(","));
    let rounds: Vec<Rounding> = list(1, "rne")
        .iter()
        .map(|r| Rounding::from_name(r).expect("a rounding name"))
        .collect();
    let sats: Vec<Saturation> = list(2, "satfinite,overflow")
        .iter()
        .map(|s| Saturation::from_name(s).expect("a saturation name"))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut failed = false;
    let start = Instant::now();
    for name in &type_names {
        let enc = all
            .iter()
            .find(|e| e.0 == name)
            .unwrap_or_else(|| panic!("unknown type {name}"))
            .1;
        let codec = Codec::new(enc).unwrap();
        let reference = Reference::new(enc);
        for &round in &rounds {
            for &sat in &sats {
                let t = Instant::now();
                let bad = AtomicU64::new(0);
                let first = AtomicU64::new(u64::MAX);
                std::thread::scope(|s| {
                    for th in 0..threads {
                        let (codec, reference, bad, first) = (&codec, &reference, &bad, &first);
                        s.spawn(move || {
                            let span = (1u64 << 32) / threads;
                            let (lo, hi) = (
                                th * span,
                                if th + 1 == threads {
                                    1u64 << 32
                                } else {
                                    (th + 1) * span
                                },
                            );
                            let mut nbad = 0u64;
                            for b in lo..hi {
                                let x = f32::from_bits(b as u32);
                                let rb = stochastic_bits(99, b);
                                if codec.encode(x, round, sat, rb)
                                    != reference.encode(x, round, sat, rb)
                                {
                                    nbad += 1;
                                    first.fetch_min(b, Ordering::Relaxed);
                                }
                            }
                            bad.fetch_add(nbad, Ordering::Relaxed);
                        });
                    }
                });
                let nbad = bad.load(Ordering::Relaxed);
                let f = first.load(Ordering::Relaxed);
                println!(
                    "{name:14} {round:11} {sat:9}: 2^32 inputs, {nbad} mismatches{} ({:.1} s)",
                    if nbad > 0 {
                        format!(", first at bits {f:#010x}")
                    } else {
                        String::new()
                    },
                    t.elapsed().as_secs_f64()
                );
                failed |= nbad > 0;
            }
        }
    }
    println!(
        "total {:.1} s on {threads} threads",
        start.elapsed().as_secs_f64()
    );
    if failed {
        std::process::exit(1);
    }
}

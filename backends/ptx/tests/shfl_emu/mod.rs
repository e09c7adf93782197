//! An emulator of the warp shuffle `shfl.sync.bfly` for the tests of the row kernels
//! (`qc_backend_ptx::rows`): their host bodies call [`shfl`] (as `rows::SHFL_EMULATOR`) and run warp
//! by warp with one OS thread per lane ([`run_warps`]), the lanes exchanging values through a
//! barrier.

#![allow(dead_code)] // each test binary uses a part

use std::sync::{Barrier, Mutex};

/// What the 32 lanes of a warp share.
pub struct Lanes {
    barrier: Barrier,
    values: Mutex<[f32; 32]>,
}

impl Lanes {
    fn new() -> Lanes {
        Lanes {
            barrier: Barrier::new(32),
            values: Mutex::new([0.0; 32]),
        }
    }
}

/// `shfl.sync.bfly.b32` over the full warp: stores this lane's `v`, waits for the warp, and returns
/// lane `lane ^ mask`'s value.
pub extern "C" fn shfl(lanes: *const Lanes, lane: i64, v: f32, mask: i32) -> f32 {
    // SAFETY: run_warps passes a live Lanes.
    let lanes = unsafe { &*lanes };
    let lane = lane as usize;
    lanes.values.lock().unwrap()[lane] = v;
    lanes.barrier.wait();
    let other = lanes.values.lock().unwrap()[(lane ^ mask as usize) & 31];
    // Nobody overwrites the values before every lane has read them.
    lanes.barrier.wait();
    other
}

/// Runs `lane(lanes, t)` for every thread `t < threads` (a multiple of 32), warp by warp, the 32
/// lanes of a warp on their own threads.
pub fn run_warps(threads: usize, lane: impl Fn(&Lanes, usize) + Sync) {
    for w in 0..threads / 32 {
        let lanes = Lanes::new();
        std::thread::scope(|s| {
            for l in 0..32 {
                let (lanes, lane) = (&lanes, &lane);
                s.spawn(move || lane(lanes, w * 32 + l));
            }
        });
    }
}

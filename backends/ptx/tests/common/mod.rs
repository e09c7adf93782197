//! Shared by the gemv4 test, its GPU bench and its kit example (the last two include this file by
//! path).

/// `n` deterministic pseudo-random numbers in [-1, 1) (xorshift64 from `seed`).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

//! Shared by the kernel tests, the gemv4 GPU bench and the kit examples (the last ones include this
//! file by path).

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

/// The ptxas the checks assemble with, or `None` (the check skipped, with a note) when there is
/// none and `QC_ALLOW_NO_PTXAS=1`; panics otherwise.
#[allow(dead_code)] // not every includer checks PTX
pub fn ptxas_or_skip() -> Option<std::path::PathBuf> {
    match qc_backend_ptx::ptxas::find_ptxas() {
        Ok(p) => Some(p),
        Err(e) if std::env::var("QC_ALLOW_NO_PTXAS").as_deref() == Ok("1") => {
            eprintln!("note: QC_ALLOW_NO_PTXAS=1 and {e}; ptxas checks skipped");
            None
        }
        Err(e) => panic!("{e}\n(set QC_ALLOW_NO_PTXAS=1 to skip the ptxas checks)"),
    }
}

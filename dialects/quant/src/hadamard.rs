//! Walsh-Hadamard transforms: the rotations of `quant.hadamard`, the `rotate` pass and MR-GPTQ.
//!
//! `H_n` is Sylvester's Hadamard matrix of order `n` (a power of two) scaled by `1/sqrt(n)`, so it is
//! orthonormal and symmetric: `H_n H_n = I`. Entry `(i, j)` is `(-1)^popcount(i & j) / sqrt(n)`. The
//! block-diagonal `H_{n,b}` (`b` divides `n`) repeats `H_b` along the diagonal: the rotation matched
//! to a quantization group of `b` elements.
//!
//! The transforms run in O(n log n) per vector (the fast Walsh-Hadamard butterfly) in f64 and round once
//! to f32.

/// True when `n` is a power of two (the orders supported here).
pub fn supported(n: usize) -> bool {
    n.is_power_of_two()
}

/// `v <- H_n v` for `n = v.len()` (a power of two; panics otherwise: callers check [`supported`]).
pub fn fwht(v: &mut [f64]) {
    let n = v.len();
    assert!(
        n.is_power_of_two(),
        "Hadamard order {n} is not a power of two"
    );
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (v[j], v[j + h]);
                v[j] = a + b;
                v[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = 1.0 / (n as f64).sqrt();
    v.iter_mut().for_each(|x| *x *= s);
}

/// Multiplies every row of `a` (`rows x cols`, row-major) on the right by the block-diagonal
/// `H_{cols,block}`: each run of `block` consecutive elements of a row is transformed. `block` must be
/// a power of two dividing `cols`. (`H` is symmetric, so this is also `a H^T`.) An empty `a` is left
/// as it is.
pub fn rotate_rows(a: &mut [f32], cols: usize, block: usize) {
    if a.is_empty() {
        return;
    }
    assert!(supported(block) && cols.is_multiple_of(block) && a.len().is_multiple_of(cols));
    let mut buf = vec![0f64; block];
    for chunk in a.chunks_exact_mut(block) {
        for (b, &x) in buf.iter_mut().zip(chunk.iter()) {
            *b = x as f64;
        }
        fwht(&mut buf);
        for (x, &b) in chunk.iter_mut().zip(&buf) {
            *x = b as f32;
        }
    }
}

/// Multiplies `a` (`rows x cols`, row-major) on the left by `H_{rows,block}`: each run of `block`
/// consecutive rows is transformed column by column. `block` must be a power of two dividing `rows`.
/// An empty `a` (or `cols = 0`) is left as it is.
pub fn rotate_cols(a: &mut [f32], cols: usize, block: usize) {
    if a.is_empty() || cols == 0 {
        return;
    }
    let rows = a.len() / cols;
    assert!(supported(block) && rows.is_multiple_of(block) && a.len() == rows * cols);
    let mut buf = vec![0f64; block];
    for r0 in (0..rows).step_by(block) {
        for c in 0..cols {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = a[(r0 + i) * cols + c] as f64;
            }
            fwht(&mut buf);
            for (i, &b) in buf.iter().enumerate() {
                a[(r0 + i) * cols + c] = b as f32;
            }
        }
    }
}

/// The dense `H_{n,block}` (row-major `n x n`), for tests and small constants.
pub fn matrix(n: usize, block: usize) -> Vec<f32> {
    assert!(supported(block) && n.is_multiple_of(block));
    let s = 1.0 / (block as f64).sqrt();
    let mut h = vec![0f32; n * n];
    for b0 in (0..n).step_by(block) {
        for i in 0..block {
            for j in 0..block {
                let sign = if (i & j).count_ones() % 2 == 0 {
                    1.0
                } else {
                    -1.0
                };
                h[(b0 + i) * n + b0 + j] = (sign * s) as f32;
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
        let mut c = vec![0f32; n * m];
        for i in 0..n {
            for j in 0..m {
                c[i * m + j] = (0..k)
                    .map(|t| a[i * k + t] as f64 * b[t * m + j] as f64)
                    .sum::<f64>() as f32;
            }
        }
        c
    }

    #[test]
    fn orthonormal_and_involutive() {
        for (n, b) in [(8, 8), (16, 4), (32, 32)] {
            let h = matrix(n, b);
            let hh = matmul(&h, &h, n, n, n);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (hh[i * n + j] - want).abs() < 1e-6,
                        "H H != I at ({i},{j}) for n={n} b={b}"
                    );
                }
            }
        }
    }

    #[test]
    fn empty_tensors_are_left_alone() {
        let mut e: Vec<f32> = Vec::new();
        rotate_rows(&mut e, 0, 4);
        rotate_cols(&mut e, 0, 4);
        rotate_cols(&mut e, 8, 4);
        assert!(e.is_empty());
    }

    #[test]
    fn fast_transforms_match_the_matrix() {
        let (rows, cols, block) = (4usize, 16usize, 8usize);
        let a: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 11) as f32) - 5.0)
            .collect();
        let mut r = a.clone();
        rotate_rows(&mut r, cols, block);
        let want = matmul(&a, &matrix(cols, block), rows, cols, cols);
        for (x, y) in r.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        let mut c = a.clone();
        rotate_cols(&mut c, cols, 2);
        let want = matmul(&matrix(rows, 2), &a, rows, rows, cols);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }
}

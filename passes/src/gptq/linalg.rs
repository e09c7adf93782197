//! The small dense linear algebra GPTQ needs, in f64 on row-major `n x n` matrices: the Cholesky
//! factorization, the inverse of a triangular factor, and from them the upper Cholesky factor of an
//! inverse (what the reference computes with `cholesky`, `cholesky_inverse`, `cholesky(upper=True)`),
//! plus the block Walsh-Hadamard rotations of MR-GPTQ on f64 data.

/// The lower Cholesky factor `L` (`a = L L^T`, positive diagonal) of the symmetric `n x n` matrix `a`
/// (only its lower triangle is read), or `None` when `a` is not (numerically) positive definite.
pub fn cholesky_lower(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for j in 0..n {
        let s = a[j * n + j] - l[j * n..j * n + j].iter().map(|v| v * v).sum::<f64>();
        if !(s > 0.0 && s.is_finite()) {
            return None;
        }
        let d = s.sqrt();
        l[j * n + j] = d;
        // Rows below j: l[i][j] = (a[i][j] - <l[i][..j], l[j][..j]>) / d.
        for i in j + 1..n {
            let dot: f64 = l[i * n..i * n + j]
                .iter()
                .zip(&l[j * n..j * n + j])
                .map(|(x, y)| x * y)
                .sum();
            l[i * n + j] = (a[i * n + j] - dot) / d;
        }
    }
    Some(l)
}

/// The inverse of the lower-triangular `l` (nonzero diagonal), itself lower-triangular.
pub fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    // t = (l^-1)^T, upper-triangular, filled row by row so that every inner product is contiguous:
    // column j of l^-1 solves l x = e_j; x_i = -(sum_{k=j}^{i-1} l[i][k] x_k) / l[i][i].
    let mut t = vec![0f64; n * n];
    for j in 0..n {
        let row = &mut t[j * n..j * n + n];
        row[j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let li = &l[i * n..i * n + n];
            let dot: f64 = li[j..i].iter().zip(&row[j..i]).map(|(a, b)| a * b).sum();
            row[i] = -dot / li[i];
        }
    }
    let mut out = vec![0f64; n * n];
    for j in 0..n {
        for i in j..n {
            out[i * n + j] = t[j * n + i];
        }
    }
    out
}

/// The upper Cholesky factor `U` of `h^-1` (`h^-1 = U^T U`, positive diagonal), for a symmetric positive
/// definite `h`; `None` when `h` is not positive definite.
///
/// With `P` the reversal permutation and `P h P = L L^T`, `h^-1 = (P L^-T P)(P L^-1 P)`, and
/// `U = P L^-1 P` is upper-triangular with a positive diagonal: one factorization and one triangular
/// inverse.
pub fn upper_cholesky_of_inverse(h: &[f64], n: usize) -> Option<Vec<f64>> {
    let rev = |i: usize| n - 1 - i;
    let mut hr = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            hr[i * n + j] = h[rev(i) * n + rev(j)];
        }
    }
    let l = cholesky_lower(&hr, n)?;
    let li = invert_lower(&l, n);
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = li[rev(i) * n + rev(j)];
        }
    }
    if u.iter().all(|v| v.is_finite()) {
        Some(u)
    } else {
        None
    }
}

/// `a <- a H_{cols,block}`: every run of `block` consecutive elements of each row of `a`
/// (`rows x cols`, row-major) is Walsh-Hadamard transformed (see [`qc_quant::hadamard`]).
pub fn rotate_rows_f64(a: &mut [f64], block: usize) {
    for chunk in a.chunks_exact_mut(block) {
        qc_quant::hadamard::fwht(chunk);
    }
}

/// `a <- H_{rows,block} a` for `a` (`rows x cols`, row-major): every run of `block` rows is transformed
/// column by column.
pub fn rotate_cols_f64(a: &mut [f64], cols: usize, block: usize) {
    let rows = a.len() / cols;
    let mut buf = vec![0f64; block];
    for r0 in (0..rows).step_by(block) {
        for c in 0..cols {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = a[(r0 + i) * cols + c];
            }
            qc_quant::hadamard::fwht(&mut buf);
            for (i, &b) in buf.iter().enumerate() {
                a[(r0 + i) * cols + c] = b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0f64; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        let mut t = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                t[j * n + i] = a[i * n + j];
            }
        }
        t
    }

    /// A symmetric positive definite matrix: B B^T + I for a fixed pseudo-random B.
    fn spd(n: usize) -> Vec<f64> {
        let b: Vec<f64> = (0..n * n)
            .map(|i| (((i * 7919 + 13) % 97) as f64 - 48.0) / 30.0)
            .collect();
        let mut a = matmul(&b, &transpose(&b, n), n);
        for i in 0..n {
            a[i * n + i] += 1.0;
        }
        a
    }

    #[test]
    fn upper_factor_of_the_inverse_reconstructs_it() {
        let n = 12;
        let h = spd(n);
        let u = upper_cholesky_of_inverse(&h, n).unwrap();
        for i in 0..n {
            assert!(u[i * n + i] > 0.0);
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        // h (U^T U) = I.
        let hinv = matmul(&transpose(&u, n), &u, n);
        let id = matmul(&h, &hinv, n);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (id[i * n + j] - want).abs() < 1e-9,
                    "({i},{j}) {}",
                    id[i * n + j]
                );
            }
        }
        let l = cholesky_lower(&h, n).unwrap();
        let back = matmul(&l, &transpose(&l, n), n);
        for (x, y) in back.iter().zip(&h) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn indefinite_matrices_are_refused() {
        let mut h = spd(4);
        h[2 * 4 + 2] = -1.0;
        assert!(cholesky_lower(&h, 4).is_none());
        assert!(upper_cholesky_of_inverse(&h, 4).is_none());
    }
}

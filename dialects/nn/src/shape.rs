//! Shape inference rules shared by the nn op verifiers, the importer and the interpreter.
//!
//! Dimensions may be static, dynamic (`?`) or symbolic (`[name]`). An inferred dynamic dimension matches any
//! dimension in a declared type ([`type_matches`]); static and symbolic ones must be equal.

use qc_ir::types::{Dim, TensorType};

use crate::norm_axis;

/// Whether a declared type agrees with an inferred one: same element type and rank, and each inferred
/// dimension either dynamic or equal to the declared one.
pub fn type_matches(inferred: &TensorType, declared: &TensorType) -> bool {
    inferred.elem == declared.elem
        && inferred.rank() == declared.rank()
        && inferred
            .dims
            .iter()
            .zip(&declared.dims)
            .all(|(i, d)| *i == Dim::Dynamic || i == d)
}

/// NumPy broadcasting of two dimension lists.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let n = a.len().max(b.len());
    let one = Dim::Static(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let x = if i + a.len() >= n {
            &a[i + a.len() - n]
        } else {
            &one
        };
        let y = if i + b.len() >= n {
            &b[i + b.len() - n]
        } else {
            &one
        };
        out.push(match (x, y) {
            _ if x == y => x.clone(),
            (Dim::Static(1), _) => y.clone(),
            (_, Dim::Static(1)) => x.clone(),
            (Dim::Static(p), Dim::Static(q)) => {
                return Err(format!(
                    "dimensions {p} and {q} cannot be broadcast together"
                ));
            }
            (Dim::Static(_), _) => x.clone(),
            (_, Dim::Static(_)) => y.clone(),
            _ => Dim::Dynamic,
        });
    }
    Ok(out)
}

/// Matrix product shapes: [..., M, K] x [..., K, N] -> [..., M, N] with broadcast batch dimensions.
/// With `transpose_b` the right operand is [..., N, K].
pub fn matmul(a: &[Dim], b: &[Dim], transpose_b: bool) -> Result<Vec<Dim>, String> {
    if a.len() < 2 || b.len() < 2 {
        return Err(format!(
            "matmul needs operands of rank 2 or more, not {} and {}",
            a.len(),
            b.len()
        ));
    }
    let (m, k1) = (&a[a.len() - 2], &a[a.len() - 1]);
    let (k2, n) = if transpose_b {
        (&b[b.len() - 1], &b[b.len() - 2])
    } else {
        (&b[b.len() - 2], &b[b.len() - 1])
    };
    if let (Dim::Static(p), Dim::Static(q)) = (k1, k2) {
        if p != q {
            return Err(format!("contraction dimensions differ: {p} and {q}"));
        }
    }
    let mut dims = broadcast(&a[..a.len() - 2], &b[..b.len() - 2])?;
    dims.push(m.clone());
    dims.push(n.clone());
    Ok(dims)
}

/// The length of an ONNX slice of a dimension of size `n` from `start` to `end` by `step` (non-zero),
/// after ONNX's rules: negative positions count from the end, then positions are clamped to the dimension
/// (to [0, n] for positive steps, to [-1, n-1] for negative ones).
pub fn slice_len(n: i64, start: i64, end: i64, step: i64) -> i64 {
    let (s, e) = slice_bounds(n, start, end, step);
    if step > 0 {
        ((e - s).max(0) + step - 1) / step
    } else {
        ((s - e).max(0) + (-step) - 1) / (-step)
    }
}

/// Clamped start and end of an ONNX slice (see [`slice_len`]).
pub fn slice_bounds(n: i64, start: i64, end: i64, step: i64) -> (i64, i64) {
    let adj = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    if step > 0 {
        (adj(start).clamp(0, n), adj(end).clamp(0, n))
    } else {
        (adj(start).clamp(0, n - 1), adj(end).clamp(-1, n - 1))
    }
}

/// The result of permuting `dims` by `perm`.
pub fn transpose(dims: &[Dim], perm: &[i64]) -> Result<Vec<Dim>, String> {
    let mut seen = vec![false; dims.len()];
    if perm.len() != dims.len() {
        return Err(format!(
            "perm has {} entries but the operand has rank {}",
            perm.len(),
            dims.len()
        ));
    }
    let mut out = Vec::with_capacity(dims.len());
    for &p in perm {
        let i = usize::try_from(p)
            .ok()
            .filter(|&i| i < dims.len() && !seen[i])
            .ok_or_else(|| format!("perm {perm:?} is not a permutation of 0..{}", dims.len()))?;
        seen[i] = true;
        out.push(dims[i].clone());
    }
    Ok(out)
}

/// The result of concatenating `types` along `axis`.
pub fn concat(types: &[&TensorType], axis: i64) -> Result<Vec<Dim>, String> {
    let first = types[0];
    let a = norm_axis(axis, first.rank())?;
    let mut total = Some(0u64);
    for t in types {
        if t.rank() != first.rank() || t.elem != first.elem {
            return Err(format!(
                "concat operands differ in rank or element type: {first} and {t}"
            ));
        }
        for (i, (x, y)) in first.dims.iter().zip(&t.dims).enumerate() {
            if i != a && x != y && x.as_static().is_some() && y.as_static().is_some() {
                return Err(format!(
                    "concat operands differ in dimension {i}: {x} and {y}"
                ));
            }
        }
        total = match (total, t.dims[a].as_static()) {
            (Some(s), Some(d)) => Some(
                s.checked_add(d)
                    .ok_or("the concatenated dimension does not fit in 64 bits")?,
            ),
            _ => None,
        };
    }
    let mut dims = first.dims.clone();
    dims[a] = total.map_or(Dim::Dynamic, Dim::Static);
    Ok(dims)
}

/// The result of reducing `dims` over `axes` (all when None).
pub fn reduce(dims: &[Dim], axes: Option<&[i64]>, keepdims: bool) -> Result<Vec<Dim>, String> {
    let mut reduced = vec![axes.is_none(); dims.len()];
    for &a in axes.unwrap_or(&[]) {
        let i = norm_axis(a, dims.len())?;
        if reduced[i] {
            return Err(format!("axis {a} is listed twice"));
        }
        reduced[i] = true;
    }
    Ok(dims
        .iter()
        .zip(&reduced)
        .filter_map(|(d, &r)| match (r, keepdims) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Static(1)),
            (true, false) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_ir::parse_type;

    fn dims(s: &str) -> Vec<Dim> {
        parse_type(&format!("tensor<{s}xf32>")).unwrap().dims
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            broadcast(&dims("2x1x4"), &dims("3x1")).unwrap(),
            dims("2x3x4")
        );
        assert_eq!(broadcast(&dims("?x4"), &dims("1x4")).unwrap(), dims("?x4"));
        assert_eq!(
            broadcast(&dims("[b]x4"), &dims("[b]x1")).unwrap(),
            dims("[b]x4")
        );
        assert_eq!(broadcast(&dims("?x4"), &dims("3x4")).unwrap(), dims("3x4"));
        assert!(broadcast(&dims("2x4"), &dims("3x4"))
            .unwrap_err()
            .contains("2 and 3"));
    }

    #[test]
    fn matmul_contracts_and_broadcasts_batches() {
        assert_eq!(
            matmul(&dims("5x2x3"), &dims("3x7"), false).unwrap(),
            dims("5x2x7")
        );
        assert_eq!(
            matmul(&dims("2x3"), &dims("7x3"), true).unwrap(),
            dims("2x7")
        );
        assert!(matmul(&dims("2x3"), &dims("4x7"), false).is_err());
    }

    #[test]
    fn slices_follow_onnx_clamping() {
        assert_eq!(slice_len(10, 0, 3, 1), 3);
        assert_eq!(slice_len(10, -3, i64::MAX, 1), 3);
        assert_eq!(slice_len(10, 20, 1000, 1), 0);
        assert_eq!(slice_len(10, i64::MAX, i64::MIN, -1), 10);
        assert_eq!(slice_len(10, 9, 0, -3), 3);
        assert_eq!(slice_len(10, 0, 10, 4), 3);
    }

    #[test]
    fn transpose_and_reduce() {
        assert_eq!(
            transpose(&dims("2x3x4"), &[2, 0, 1]).unwrap(),
            dims("4x2x3")
        );
        assert!(transpose(&dims("2x3"), &[0, 0]).is_err());
        assert_eq!(
            reduce(&dims("2x3x4"), Some(&[-1]), true).unwrap(),
            dims("2x3x1")
        );
        assert_eq!(
            reduce(&dims("2x3x4"), None, false).unwrap(),
            Vec::<Dim>::new()
        );
    }
}

//! `lorc{rank=8,w=FMT,clip=mse,bits=32}`: weight quantization with ZeroQuant-FP's low-rank compensation
//! (LoRC, Wu et al. 2023, arXiv 2307.09782).
//!
//! # Rewrite
//! For every `%y = nn.matmul %x, %w` whose `%w` is a constant 2-D float `[K, N]` weight with its bytes in
//! the module, and whose format `w` can lay out the transposed `[N, K]` weight, the weight is quantized
//! exactly as the `quantize` pass does ([`crate::quantize::quantize_weight`]: RTN with the per-group clip
//! search `clip`, into a transposed `[N, K]` resource `NAME.q` read by `quant.matmul {transpose_b}`).
//! The quantization error `E = W - deq(Wq)` (`[K, N]`, f64) is then approximated by its best rank-`r`
//! factorization (truncated SVD `E ~= U_r S_r V_r^T`), `A = U_r S_r^(1/2)` (`[K, r]`) and
//! `B = S_r^(1/2) V_r^T` (`[r, N]`), added as an explicit branch:
//! ```text
//! %y_q = quant.matmul %x, %wq {transpose_b}
//! %t   = nn.matmul %x, %a          // [..., r]
//! %c   = nn.matmul %t, %b          // [..., N]
//! %y   = nn.add %y_q, %c
//! ```
//! `bits=32`: `%a` and `%b` are float constants (`NAME.lorc_a`, `NAME.lorc_b`, in the activation's float
//! type). `bits=8`: they are quantized to `int8_channel` (int8, one f32 scale per row of the transposed
//! factor, i.e. per rank component for `A^T: [r, K]` and per output channel for `B^T: [N, r]`, with the
//! same `clip` search), stored as `NAME.lorc_a.q` / `NAME.lorc_b.q` and read by two
//! `quant.matmul {transpose_b}`. `rank=0` is plain RTN (no branch), the same rewrite as `quantize`.
//!
//! The SVD: with `m = min(K, N)`, the symmetric eigendecomposition of the `m x m` Gram matrix (`E E^T` or
//! `E^T E`) gives the top-`r` singular vectors on one side; the other factor is `E` projected on them, so
//! `A B` is exactly the projection of `E` on its top-`r` singular subspace (Eckart-Young), computed in
//! f64. Eigenvalue ties are broken by index, so the output is deterministic.
//!
//! A rank above `min(K, N)` of a layer is a diagnostic at that layer (nothing is rewritten). Left float,
//! silently, as by `quantize`: weights the format cannot lay out, elided weights, non-constant weights,
//! activations of rank below 2; `nn.gemm` is not rewritten. A weight shared by several matmuls is
//! quantized and factored once. The branch matmuls carry the unit attribute `lorc.branch`
//! ([`BRANCH_ATTR`]): they are not model layers, so later passes (`quantize`, `gptq`, `calibrate`, ...,
//! through [`crate::weights::linears`]) leave them as they are. Progress is reported per layer.
//!
//! # Contract (what the tests measure, passes/tests/lorc.rs)
//! - `bits=32`: the weight error `||W - (deq(Wq) + A B)||_F` equals `sqrt(sum of the discarded singular
//!   values of E squared)` to f32 rounding, and falls monotonically with the rank (0, 2, 4, 8, 16
//!   measured); rank 0 equals plain RTN (`quantize` with the same format and clip).
//! - The layer output error against the float layer on seeded inputs falls with the rank too, for
//!   `bits=32` and `bits=8`.

use std::collections::BTreeMap;
use std::sync::Arc;

use nalgebra::{DMatrix, SymmetricEigen};
use qc_ir::attr::{Attribute, Attrs};
use qc_ir::module::{Module, Op, Value};
use qc_ir::ops::QcOp;
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOption, PassOptions};
use qc_ir::quant::{named_format, QuantType};
use qc_ir::resource::Blob;
use qc_ir::types::{Dim, ElemType, TensorType};
use qc_ir::Diagnostic;
use qc_nn::NnOp;
use qc_quant::ops::QuantOp;
use qc_quant::tensor::{dequantize, QuantizedTensor};

use crate::fold::drop_resource_if_unreferenced;
use crate::quantize::{quantize_weight, Clip};
use crate::weights::{add_constant, read_weight};

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "lorc",
    summary: "quantize matmul weights (RTN with clip search) plus a low-rank compensation branch of the quantization error (ZeroQuant-FP LoRC)",
    options: &[
        PassOption {
            name: "rank",
            help: "rank r of the compensation branch, at most min(K, N) of every layer; 0 is plain RTN (default 8)",
        },
        PassOption {
            name: "w",
            help: "weight format, a named format such as nvfp4, int4_g128, fp8_e4m3 (required)",
        },
        PassOption {
            name: "clip",
            help: "clip search of the weight quantization: none or mse (default mse)",
        },
        PassOption {
            name: "bits",
            help: "storage of the low-rank factors: 32 (f32 constants) or 8 (int8 per channel) (default 32)",
        },
    ],
    build,
};

fn build(o: &PassOptions) -> Result<Box<dyn Pass>, String> {
    let w = o.get("w").ok_or(
        "option 'w' is required: the weight format, a named format such as nvfp4 (see `qc formats`)",
    )?;
    let format = named_format(w)
        .ok_or_else(|| {
            format!("option 'w' names no known format '{w}'; `qc formats` lists the named formats")
        })?
        .ty
        .clone();
    let clip = match o.get("clip").unwrap_or("mse") {
        "none" => Clip::None,
        "mse" => Clip::Mse,
        c => return Err(format!("option 'clip' must be none or mse, not '{c}'")),
    };
    let rank: usize = o.parse_or("rank", 8)?;
    let bits = match o.get("bits").unwrap_or("32") {
        "32" => FactorBits::F32,
        "8" => FactorBits::Int8,
        b => return Err(format!("option 'bits' must be 32 or 8, not '{b}'")),
    };
    Ok(Box::new(Lorc {
        rank,
        format,
        clip,
        bits,
    }))
}

/// How the low-rank factors are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactorBits {
    /// Float constants in the activation's type.
    F32,
    /// int8 per channel (`int8_channel`), read by `quant.matmul`.
    Int8,
}

/// The pass.
pub struct Lorc {
    /// Rank of the compensation.
    pub rank: usize,
    /// The weight format.
    pub format: QuantType,
    /// The clip search.
    pub clip: Clip,
    /// Storage of the factors.
    pub bits: FactorBits,
}

/// A rank-`r` factorization `A B` of a `[K, N]` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRank {
    /// `[K, r]` row-major.
    pub a: Vec<f64>,
    /// `[r, N]` row-major.
    pub b: Vec<f64>,
    /// The singular values of the matrix, largest first (`min(K, N)` of them).
    pub sigma: Vec<f64>,
}

/// The best rank-`r` factorization of `e` (`[k, n]` row-major): `A = U_r S_r^(1/2)`,
/// `B = S_r^(1/2) V_r^T` (see the module doc). `r <= min(k, n)`.
pub fn low_rank(e: &[f64], k: usize, n: usize, r: usize) -> LowRank {
    let m = k.min(n);
    let r = r.min(m);
    let em = DMatrix::from_row_slice(k, n, e);
    // Gram matrix on the short side: its eigenvectors are the singular vectors on that side.
    let left = k <= n;
    let g = if left {
        &em * em.transpose()
    } else {
        em.transpose() * &em
    };
    let eig = SymmetricEigen::new(g);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| {
        eig.eigenvalues[j]
            .total_cmp(&eig.eigenvalues[i])
            .then(i.cmp(&j))
    });
    let sigma: Vec<f64> = order
        .iter()
        .map(|&i| eig.eigenvalues[i].max(0.0).sqrt())
        .collect();
    let (mut a, mut b) = (vec![0f64; k * r], vec![0f64; r * n]);
    for (c, &i) in order.iter().take(r).enumerate() {
        let vec = eig.eigenvectors.column(i);
        let sq = sigma[c].sqrt();
        if sq == 0.0 {
            continue; // E has rank below r: that component is zero.
        }
        if left {
            // u = vec; B row = E^T u / sqrt(sigma) = sqrt(sigma) v^T.
            let etu = em.transpose() * vec;
            for row in 0..k {
                a[row * r + c] = vec[row] * sq;
            }
            for col in 0..n {
                b[c * n + col] = etu[col] / sq;
            }
        } else {
            // v = vec; A column = E v / sqrt(sigma) = sqrt(sigma) u.
            let ev = &em * vec;
            for row in 0..k {
                a[row * r + c] = ev[row] / sq;
            }
            for col in 0..n {
                b[c * n + col] = vec[col] * sq;
            }
        }
    }
    LowRank { a, b, sigma }
}

/// A layer to rewrite: the matmul (by its result), its operands and names.
struct Candidate {
    y: Value,
    x: Value,
    w: Value,
    k: usize,
    n: usize,
    name: String,
}

/// The constants a rewritten weight became.
#[derive(Clone, Copy)]
struct Rewritten {
    wq: Value,
    branch: Option<(Value, Value)>,
}

fn def_index(ops: &[Op], v: Value) -> Option<usize> {
    ops.iter().position(|op| op.results.contains(&v))
}

/// Inserts the quantized tensor `q` (of `shape`) as a constant before op `at`, as the resource `NAME`
/// (made unique); returns its value.
fn insert_quantized(
    m: &mut Module,
    fi: usize,
    at: usize,
    q: &QuantizedTensor,
    shape: [usize; 2],
    name: &str,
    hint: &str,
) -> Result<Value, String> {
    let blob = qc_quant::blob::to_blob(q).map_err(|e| e.to_string())?;
    let mut rname = name.to_string();
    let mut i = 1;
    while m.resources.get(&rname).is_some() {
        rname = format!("{name}{i}");
        i += 1;
    }
    m.resources.insert(
        rname.clone(),
        Blob::Owned {
            data: Arc::from(blob),
            align: qc_quant::blob::ALIGN as u32,
        },
    );
    let f = &mut m.funcs[fi];
    let ty = TensorType::new(
        &[shape[0] as u64, shape[1] as u64],
        ElemType::Quant(Arc::new(q.format.clone())),
    );
    let v = f.new_value(ty, Some(hint));
    let loc = f.ops.get(at).map_or(f.loc.clone(), |o| o.loc.clone());
    f.ops.insert(
        at,
        Op {
            def: QcOp::Constant.def(),
            operands: vec![],
            results: vec![v],
            attrs: Attrs::from_iter([("value", Attribute::DenseResource(rname))]),
            loc,
        },
    );
    Ok(v)
}

/// `[rows, cols]` row-major f64 transposed to f32.
fn transpose_f32(a: &[f64], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j] as f32;
        }
    }
    t
}

impl Lorc {
    /// The matmuls of function `fi` this pass rewrites, in op order.
    fn candidates(&self, m: &Module, fi: usize) -> Vec<Candidate> {
        let f = &m.funcs[fi];
        let mut out = Vec::new();
        for op in &f.ops {
            if NnOp::of(op) != Some(NnOp::Matmul) {
                continue;
            }
            let (x, w, y) = (op.operands[0], op.operands[1], op.results[0]);
            let Some(pi) = def_index(&f.ops, w) else {
                continue;
            };
            let wt = f.ty(w);
            if QcOp::of(&f.ops[pi]) != Some(QcOp::Constant)
                || !wt.elem.is_float()
                || wt.rank() != 2
                || f.ty(x).rank() < 2
                || !f.ty(x).elem.is_float()
            {
                continue;
            }
            let Some(shape) = wt.static_shape() else {
                continue;
            };
            let (k, n) = (shape[0] as usize, shape[1] as usize);
            let qdims = [Some(n as u64), Some(k as u64)];
            if self.format.validate_for_shape(&qdims).is_err()
                || qc_quant::tensor::scale_indices(&self.format.scheme, &[n, k], "weight").is_err()
            {
                continue;
            }
            // The quant.matmul must produce the matmul's declared type.
            let fits = qc_nn::shape::matmul(
                &f.ty(x).dims,
                &[Dim::Static(n as u64), Dim::Static(k as u64)],
                true,
            )
            .is_ok_and(|dims| {
                qc_nn::shape::type_matches(
                    &TensorType {
                        dims,
                        elem: f.ty(x).elem.clone(),
                    },
                    f.ty(y),
                )
            });
            if !fits || read_weight(m, fi, w).is_none() {
                continue;
            }
            let name = match f.ops[pi].attr("value") {
                Some(Attribute::DenseResource(r)) => r.clone(),
                _ => f.value(w).name.clone().unwrap_or_else(|| "w".into()),
            };
            out.push(Candidate {
                y,
                x,
                w,
                k,
                n,
                name,
            });
        }
        out
    }

    /// Quantizes and factors the weight of `c`, inserting its constants before op `at`.
    fn rewrite_weight(
        &self,
        m: &mut Module,
        fi: usize,
        at: usize,
        c: &Candidate,
    ) -> Result<Rewritten, String> {
        let (k, n) = (c.k, c.n);
        let w = read_weight(m, fi, c.w).ok_or("the weight has no bytes")?;
        let wt = transpose_f32(&w.iter().map(|&v| v as f64).collect::<Vec<_>>(), k, n);
        let q = quantize_weight(&wt, &[n, k], &self.format, self.clip, &c.name)
            .map_err(|e| e.to_string())?;
        let deq = dequantize(&q).map_err(|e| e.to_string())?;
        let hint = m.funcs[fi].value(c.w).name.clone().unwrap_or_default();
        let wq = insert_quantized(
            m,
            fi,
            at,
            &q,
            [n, k],
            &format!("{}.q", c.name),
            &format!("{hint}_q"),
        )?;
        if self.rank == 0 {
            return Ok(Rewritten { wq, branch: None });
        }
        let r = self.rank;
        let e: Vec<f64> = (0..k * n)
            .map(|i| w[i] as f64 - deq[(i % n) * k + i / n] as f64)
            .collect();
        let lr = low_rank(&e, k, n, r);
        let elem = m.funcs[fi].ty(c.x).elem.clone();
        let at = at + 1;
        let branch = match self.bits {
            FactorBits::F32 => {
                let a: Vec<f32> = lr.a.iter().map(|&v| v as f32).collect();
                let b: Vec<f32> = lr.b.iter().map(|&v| v as f32).collect();
                let av = add_constant(
                    m,
                    fi,
                    at,
                    TensorType::new(&[k as u64, r as u64], elem.clone()),
                    &a,
                    &format!("{}.lorc_a", c.name),
                );
                let bv = add_constant(
                    m,
                    fi,
                    at + 1,
                    TensorType::new(&[r as u64, n as u64], elem),
                    &b,
                    &format!("{}.lorc_b", c.name),
                );
                (av, bv)
            }
            FactorBits::Int8 => {
                let fmt = &named_format("int8_channel")
                    .ok_or("the int8_channel format is missing")?
                    .ty;
                let at_t = transpose_f32(&lr.a, k, r); // [r, K]
                let bt_t = transpose_f32(&lr.b, r, n); // [N, r]
                let qa = quantize_weight(&at_t, &[r, k], fmt, self.clip, "lorc_a")
                    .map_err(|e| e.to_string())?;
                let qb = quantize_weight(&bt_t, &[n, r], fmt, self.clip, "lorc_b")
                    .map_err(|e| e.to_string())?;
                let av = insert_quantized(
                    m,
                    fi,
                    at,
                    &qa,
                    [r, k],
                    &format!("{}.lorc_a.q", c.name),
                    &format!("{hint}_lorc_a"),
                )?;
                let bv = insert_quantized(
                    m,
                    fi,
                    at + 1,
                    &qb,
                    [n, r],
                    &format!("{}.lorc_b.q", c.name),
                    &format!("{hint}_lorc_b"),
                )?;
                (av, bv)
            }
        };
        Ok(Rewritten {
            wq,
            branch: Some(branch),
        })
    }

    /// Replaces the matmul defining `c.y` (at index `oi`) by the quantized product plus the branch.
    fn rewrite_matmul(&self, m: &mut Module, fi: usize, c: &Candidate, rw: Rewritten) {
        let f = &mut m.funcs[fi];
        let Some(oi) = def_index(&f.ops, c.y) else {
            return;
        };
        let old = f.ops.remove(oi);
        let (x, y) = (c.x, c.y);
        let yty = f.ty(y).clone();
        let qmm = |operands: Vec<Value>, results: Vec<Value>| Op {
            def: QuantOp::Matmul.def(),
            operands,
            results,
            attrs: Attrs::from_iter([("transpose_b", Attribute::Unit)]),
            loc: old.loc.clone(),
        };
        let Some((a, b)) = rw.branch else {
            f.ops.insert(oi, qmm(vec![x, rw.wq], vec![y]));
            return;
        };
        let yname = f.value(y).name.clone().unwrap_or_else(|| "y".into());
        let r = self.rank as u64;
        let mut tdims = f.ty(x).dims.clone();
        if let Some(last) = tdims.last_mut() {
            *last = Dim::Static(r);
        }
        let tty = TensorType {
            dims: tdims,
            elem: yty.elem.clone(),
        };
        let yq = f.new_value(yty.clone(), Some(&format!("{yname}_q")));
        let t = f.new_value(tty, Some(&format!("{yname}_lorc_t")));
        let cv = f.new_value(yty, Some(&format!("{yname}_lorc")));
        let nnmm = |operands: Vec<Value>, results: Vec<Value>| Op {
            def: NnOp::Matmul.def(),
            operands,
            results,
            attrs: Attrs::new(),
            loc: old.loc.clone(),
        };
        let (first, second) = match self.bits {
            FactorBits::F32 => (nnmm(vec![x, a], vec![t]), nnmm(vec![t, b], vec![cv])),
            FactorBits::Int8 => (qmm(vec![x, a], vec![t]), qmm(vec![t, b], vec![cv])),
        };
        let add = Op {
            def: NnOp::Add.def(),
            operands: vec![yq, cv],
            results: vec![y],
            attrs: Attrs::new(),
            loc: old.loc.clone(),
        };
        // The branch's matmuls are marked so that later passes (quantize, gptq, calibrate, smooth, ...)
        // do not take them for model layers (weights::linears skips them).
        let (mut first, mut second) = (first, second);
        first.attrs.set(BRANCH_ATTR, Attribute::Unit);
        second.attrs.set(BRANCH_ATTR, Attribute::Unit);
        let new = [qmm(vec![x, rw.wq], vec![yq]), first, second, add];
        for (i, op) in new.into_iter().enumerate() {
            f.ops.insert(oi + i, op);
        }
    }
}

/// The discardable unit attribute on the two matmuls of a LoRC branch.
pub const BRANCH_ATTR: &str = "lorc.branch";

impl Pass for Lorc {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, cx: &PassContext) -> Result<Changed, Diagnostic> {
        let mut changed = false;
        for fi in 0..m.funcs.len() {
            let cands = self.candidates(m, fi);
            // Refuse before touching anything.
            for c in &cands {
                if self.rank > c.k.min(c.n) {
                    let f = &m.funcs[fi];
                    let loc = def_index(&f.ops, c.y).map(|i| f.ops[i].loc.clone());
                    return Err(Diagnostic::error(
                        loc.unwrap_or_default(),
                        format!(
                            "lorc: rank {} exceeds min(K, N) = {} of layer '{}' (a [{}, {}] weight); \
                             a rank-r correction of it needs r <= {}",
                            self.rank,
                            c.k.min(c.n),
                            c.name,
                            c.k,
                            c.n,
                            c.k.min(c.n)
                        ),
                    ));
                }
            }
            let mut done: BTreeMap<Value, Rewritten> = BTreeMap::new();
            let mut replaced: Vec<Value> = Vec::new();
            for (i, c) in cands.iter().enumerate() {
                let rw = match done.get(&c.w) {
                    Some(&rw) => rw,
                    None => {
                        let f = &m.funcs[fi];
                        let oi = def_index(&f.ops, c.y).unwrap_or(f.ops.len());
                        let loc = f.ops.get(oi).map(|o| o.loc.clone()).unwrap_or_default();
                        let rw = self.rewrite_weight(m, fi, oi, c).map_err(|e| {
                            Diagnostic::error(loc, format!("lorc: layer '{}': {e}", c.name))
                        })?;
                        done.insert(c.w, rw);
                        replaced.push(c.w);
                        rw
                    }
                };
                self.rewrite_matmul(m, fi, c, rw);
                changed = true;
                cx.progress.step(INFO.name, i + 1, cands.len(), &c.name);
            }
            // The float weights left without uses go, with their resources.
            for w in replaced {
                let f = &mut m.funcs[fi];
                if f.use_counts()[w.0 as usize] != 0 {
                    continue;
                }
                if let Some(i) = def_index(&f.ops, w) {
                    let op = f.ops.remove(i);
                    if let Some(Attribute::DenseResource(r)) = op.attr("value") {
                        drop_resource_if_unreferenced(m, r);
                    }
                }
            }
        }
        Ok(Changed::from_bool(changed))
    }
}

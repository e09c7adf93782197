//! The e-graph language of the `rotate` pass: the linear-algebra fragment of a function, and the
//! analysis that knows each e-class's shape and, for constant matrices, its normal form.
//!
//! # Terms
//! Run-time values (*activations*; the rotated axis is always the last one, of length `n`):
//!
//! | term | value |
//! |---|---|
//! | `(lin x M)` | `x M`: a linear layer, `M` a constant `[K, N]` matrix |
//! | `(rot B x)` | `x H_{n,B}`: an online rotation (`quant.hadamard {block = B}`) |
//! | `(rms T x)` | `x / sqrt(mean(x^2) + eps)`: RMSNorm without its scale (template `T` holds `eps`) |
//! | `(lnc T x)` | `(x - mean x) / sqrt(var x + eps)`: LayerNorm without scale and shift |
//! | `(ln T x)` | a whole `nn.layer_norm` (template `T` holds `eps`, the scale and the shift) |
//! | `(scale x g)` | `x * g`, `g` a constant vector of length `n` (an RMSNorm / LayerNorm scale) |
//! | `(add a b)` | `a + b` (a residual add; both operands have the full last axis) |
//! | `(bias x v)` | `x + v`, `v` a constant vector of length `n` |
//! | `(gather E i)` | rows `i` of the constant table `E` (an embedding) |
//! | `(lay T x)` | a layout op (reshape, transpose, unsqueeze, squeeze, expand) that leaves the last axis's contents in place; template `T` knows which |
//! | `(amm a v)` | `a @ v`, both run-time values (attention's `probs @ V`) |
//! | `(center x)` | `x - mean(x)` along the last axis, i.e. `x C` with `C = I - 1 1^T / n` |
//!
//! Constants (free to rewrite: the pass folds them into new weights):
//!
//! | term | value |
//! |---|---|
//! | `(hl B M)` | `H_{K,B} M` (rows of `M` rotated; `H^T = H` for Sylvester matrices) |
//! | `(hr B M)` | `M H_{N,B}` (columns rotated) |
//! | `(dl g M)` | `diag(g) M` (a norm scale folded into the rows) |
//! | `(cr M)` | `M C` (each row made mean-free) |
//! | `(vh B v)`, `(vc v)`, `(vm v M)`, `(va v u)` | `v H`, `v C`, `v M`, `v + u` for constant row vectors |
//!
//! Leaves are numbers (block sizes `B`, template indices `T`) and symbols naming IR values: `xN` an
//! opaque run-time value (a function argument or the result of an op outside the fragment), `wN` a
//! constant matrix, `vN` a constant vector, `iN` anything else (integer indices). `N` is the value's
//! index in its function; [`RotAnalysis::leaves`] holds what each leaf is.
//!
//! # Normal form of constant matrices
//! A constant matrix class has the value `L_1 ... L_p W R_1 ... R_q` for a weight leaf `W`, left
//! factors `H_B` / `diag(g)` and right factors `H_B` / `C`. [`MatForm`] keeps the factor lists with
//! `H_B H_B = I` and `C C = C` applied, so it is a function of the value as far as the rules can tell:
//! the cost model reads from it whether a layer's weight has its input side (rows) and/or its output
//! side (columns) rotated.

use std::collections::BTreeMap;

use egg::{Analysis, DidMerge, EGraph, Id};

/// The language, in a module of its own: `define_language!` cannot document variants (each is the
/// term of the same name in the tables above). Leaves are `String`s rather than egg's interned
/// `Symbol`s, which hash and order by their interning index: with strings, the e-graph (and with it
/// every tie the extraction breaks) does not depend on what else the process interned before.
#[allow(missing_docs)]
mod language {
    use egg::{define_language, Id};

    define_language! {
        /// The rotation language (see the module doc for what each term means).
        pub enum RotLang {
            "lin" = Lin([Id; 2]),
            "rot" = Rotate([Id; 2]),
            "rms" = Rms([Id; 2]),
            "lnc" = Lnc([Id; 2]),
            "ln" = Ln([Id; 2]),
            "scale" = Scale([Id; 2]),
            "add" = Add([Id; 2]),
            "bias" = Bias([Id; 2]),
            "gather" = Gather([Id; 2]),
            "lay" = Lay([Id; 2]),
            "amm" = Amm([Id; 2]),
            "center" = Center(Id),
            "hl" = HadL([Id; 2]),
            "hr" = HadR([Id; 2]),
            "dl" = DiagL([Id; 2]),
            "cr" = CenterR(Id),
            "vh" = VecHad([Id; 2]),
            "vc" = VecCenter(Id),
            "vm" = VecMat([Id; 2]),
        "va" = VecAdd([Id; 2]),
            Num(i64),
            Leaf(String),
        }
    }
}

pub use language::RotLang;

/// The e-graph of the pass.
pub type RotGraph = EGraph<RotLang, RotAnalysis>;

/// A factor on the left of a constant matrix's weight.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LeftFactor {
    /// `H_{K,B}` with this block size.
    Had(u64),
    /// `diag(g)` for the vector leaf `g`.
    Diag(String),
}

/// A factor on the right of a constant matrix's weight.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RightFactor {
    /// `H_{N,B}` with this block size.
    Had(u64),
    /// The centering matrix `C`.
    Center,
}

/// The normal form of a constant matrix: `left... base right...`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatForm {
    /// The weight leaf.
    pub base: String,
    /// Left factors, outermost first.
    pub left: Vec<LeftFactor>,
    /// Right factors, innermost first.
    pub right: Vec<RightFactor>,
}

impl MatForm {
    /// A bare weight.
    pub fn leaf(base: &str) -> Self {
        MatForm {
            base: base.to_string(),
            left: Vec::new(),
            right: Vec::new(),
        }
    }

    /// `H_B` times this matrix (`H_B H_B = I` cancels).
    pub fn had_left(&self, b: u64) -> Self {
        let mut f = self.clone();
        if f.left.first() == Some(&LeftFactor::Had(b)) {
            f.left.remove(0);
        } else {
            f.left.insert(0, LeftFactor::Had(b));
        }
        f
    }

    /// This matrix times `H_B` (`H_B H_B = I` cancels).
    pub fn had_right(&self, b: u64) -> Self {
        let mut f = self.clone();
        if f.right.last() == Some(&RightFactor::Had(b)) {
            f.right.pop();
        } else {
            f.right.push(RightFactor::Had(b));
        }
        f
    }

    /// `diag(g)` times this matrix.
    pub fn diag_left(&self, g: &str) -> Self {
        let mut f = self.clone();
        f.left.insert(0, LeftFactor::Diag(g.to_string()));
        f
    }

    /// This matrix times `C` (`C C = C`).
    pub fn center_right(&self) -> Self {
        let mut f = self.clone();
        if f.right.last() != Some(&RightFactor::Center) {
            f.right.push(RightFactor::Center);
        }
        f
    }

    /// Whether the rows (the input side of a layer) are rotated.
    pub fn input_rotated(&self) -> bool {
        self.left.iter().any(|l| matches!(l, LeftFactor::Had(_)))
    }

    /// Whether the columns (the output side of a layer) are rotated.
    pub fn output_rotated(&self) -> bool {
        self.right.iter().any(|r| matches!(r, RightFactor::Had(_)))
    }
}

/// What an e-class is.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A run-time float tensor; `last` is the length of its last axis when known.
    Act {
        /// The last axis's length.
        last: Option<u64>,
    },
    /// A constant `[rows, cols]` matrix.
    Mat {
        /// Rows (`K` of a layer).
        rows: u64,
        /// Columns (`N` of a layer).
        cols: u64,
        /// Its normal form.
        form: MatForm,
    },
    /// A constant vector.
    Vector {
        /// Its length.
        len: u64,
    },
    /// An integer parameter.
    Num(i64),
    /// Anything else (integer tensors, unknown leaves).
    Other,
}

impl Kind {
    /// The last-axis length of an activation.
    pub fn last(&self) -> Option<u64> {
        match self {
            Kind::Act { last } => *last,
            Kind::Vector { len } => Some(*len),
            Kind::Mat { cols, .. } => Some(*cols),
            _ => None,
        }
    }

    /// The integer of a `Num`.
    pub fn num(&self) -> Option<i64> {
        match self {
            Kind::Num(n) => Some(*n),
            _ => None,
        }
    }

    /// The matrix normal form, for constant matrices.
    pub fn form(&self) -> Option<&MatForm> {
        match self {
            Kind::Mat { form, .. } => Some(form),
            _ => None,
        }
    }
}

/// A template: what the e-graph must know of the IR op(s) behind a `rms`, `lnc`, `ln` or `lay` term.
#[derive(Clone, Debug, PartialEq)]
pub enum Template {
    /// A normalization with this epsilon; `affine` holds the scale and shift vector leaves of a whole
    /// `nn.layer_norm`.
    Norm {
        /// Epsilon added to the mean square / variance.
        eps: f64,
        /// Scale and shift leaves (`ln` only).
        affine: Option<(String, String)>,
    },
    /// A layout op.
    Layout {
        /// A reshape (the last axis may be split or merged); other layout ops keep it whole.
        reshape: bool,
        /// Last-axis length of the input, when known.
        last_in: Option<u64>,
        /// Last-axis length of the output, when known.
        last_out: Option<u64>,
    },
}

impl Template {
    /// Whether a rotation with block `b` of the last axis commutes with this layout op: always for ops
    /// that keep the last axis whole; for a reshape when `b` divides both last axes, so that every run of
    /// `b` consecutive elements (in row-major order, which a reshape keeps) is a block on both sides.
    pub fn commutes_with(&self, b: u64) -> bool {
        match self {
            Template::Layout {
                reshape: false,
                last_in,
                last_out,
            } => last_in.is_some() && last_in == last_out,
            Template::Layout {
                reshape: true,
                last_in: Some(i),
                last_out: Some(o),
            } => b > 0 && i % b == 0 && o % b == 0,
            _ => false,
        }
    }
}

/// The analysis: leaf and template tables (filled by the front end before terms use them), and which
/// rule added each e-node (for the `rotate.rules` annotations).
#[derive(Debug, Default)]
pub struct RotAnalysis {
    /// What each leaf symbol is.
    pub leaves: BTreeMap<String, Kind>,
    /// Templates, indexed by the `T` of `rms`, `lnc`, `ln` and `lay` terms.
    pub templates: Vec<Template>,
    /// For each e-node index added by a rule (see [`egg::EGraph::nodes`]), the rule's name.
    pub provenance: BTreeMap<usize, &'static str>,
}

impl RotAnalysis {
    /// The template `t` (a `Num` value), if there is one.
    pub fn template(&self, t: i64) -> Option<&Template> {
        usize::try_from(t).ok().and_then(|i| self.templates.get(i))
    }
}

fn kind(eg: &RotGraph, id: Id) -> &Kind {
    &eg[id].data
}

fn mat_of(eg: &RotGraph, id: Id) -> Option<(u64, u64, &MatForm)> {
    match kind(eg, id) {
        Kind::Mat { rows, cols, form } => Some((*rows, *cols, form)),
        _ => None,
    }
}

fn act(last: Option<u64>) -> Kind {
    Kind::Act { last }
}

impl Analysis<RotLang> for RotAnalysis {
    type Data = Kind;

    fn make(eg: &mut RotGraph, n: &RotLang, _id: Id) -> Kind {
        let last = |id: Id| kind(eg, id).last();
        let num = |id: Id| kind(eg, id).num().map(|b| b as u64);
        match n {
            RotLang::Lin([_, m]) => act(mat_of(eg, *m).map(|(_, c, _)| c)),
            RotLang::Rotate([_, x])
            | RotLang::Rms([_, x])
            | RotLang::Lnc([_, x])
            | RotLang::Ln([_, x])
            | RotLang::Scale([x, _])
            | RotLang::Bias([x, _])
            | RotLang::Center(x) => act(last(*x)),
            RotLang::Add([a, b]) => act(last(*a).or(last(*b))),
            RotLang::Amm([_, v]) => act(last(*v)),
            RotLang::Gather([e, _]) => act(mat_of(eg, *e).map(|(_, c, _)| c)),
            RotLang::Lay([t, _]) => {
                let out = kind(eg, *t)
                    .num()
                    .and_then(|t| eg.analysis.template(t))
                    .and_then(|t| match t {
                        Template::Layout { last_out, .. } => *last_out,
                        Template::Norm { .. } => None,
                    });
                act(out)
            }
            RotLang::HadL([b, m]) | RotLang::HadR([b, m]) | RotLang::DiagL([b, m]) => {
                let Some((rows, cols, form)) = mat_of(eg, *m) else {
                    return Kind::Other;
                };
                let form = match n {
                    RotLang::HadL(_) => num(*b).map(|b| form.had_left(b)),
                    RotLang::HadR(_) => num(*b).map(|b| form.had_right(b)),
                    _ => match &eg[*b].nodes.first() {
                        Some(RotLang::Leaf(g)) => Some(form.diag_left(g.as_str())),
                        _ => None,
                    },
                };
                match form {
                    Some(form) => Kind::Mat { rows, cols, form },
                    None => Kind::Other,
                }
            }
            RotLang::CenterR(m) => match mat_of(eg, *m) {
                Some((rows, cols, form)) => Kind::Mat {
                    rows,
                    cols,
                    form: form.center_right(),
                },
                None => Kind::Other,
            },
            RotLang::VecHad([_, v]) | RotLang::VecCenter(v) | RotLang::VecAdd([v, _]) => {
                match kind(eg, *v) {
                    Kind::Vector { len } => Kind::Vector { len: *len },
                    _ => Kind::Other,
                }
            }
            RotLang::VecMat([_, m]) => match mat_of(eg, *m) {
                Some((_, cols, _)) => Kind::Vector { len: cols },
                None => Kind::Other,
            },
            RotLang::Num(v) => Kind::Num(*v),
            RotLang::Leaf(s) => eg
                .analysis
                .leaves
                .get(s.as_str())
                .cloned()
                .unwrap_or(Kind::Other),
        }
    }

    fn merge(&mut self, a: &mut Kind, b: Kind) -> DidMerge {
        // Sound rules only merge equal values, so the kinds agree; an activation may learn its last-axis
        // length from the other side. Anything else keeps `a` (deterministically).
        match (&mut *a, b) {
            (Kind::Act { last: la }, Kind::Act { last: lb }) => match (&la, lb) {
                (None, Some(l)) => {
                    *la = Some(l);
                    DidMerge(true, false)
                }
                (Some(_), None) => DidMerge(false, true),
                _ => DidMerge(false, false),
            },
            (x, y) => DidMerge(false, *x != y),
        }
    }
}

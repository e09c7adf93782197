//! Op declarations and the op registry.
//!
//! Each dialect declares its ops once, in one [`declare_ops!`] table. From that table come the dialect's
//! op enum (for exhaustive matches: `match NnOp::of(op)` has no `_ =>` arm, so a new op makes the compiler
//! list every place that must handle it), each op's mnemonic, arity, attribute specs and verifier hook.
//! The printer and parser are generic over these definitions. A [`Registry`] gathers the dialects a tool
//! knows; the parser rejects ops it does not contain.
//!
//! The checklist for a new op is docs/adding-an-op.md.

use std::collections::BTreeMap;

use crate::attr::{Attribute, DenseData};
use crate::module::{Func, Op, Value};
use crate::types::TensorType;

/// How many operands or results an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Exactly n.
    Exactly(u8),
    /// n or more.
    AtLeast(u8),
}

impl Arity {
    /// Whether `n` satisfies the arity.
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k as usize,
            Arity::AtLeast(k) => n >= k as usize,
        }
    }
}

impl std::fmt::Display for Arity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arity::Exactly(k) => write!(f, "{k}"),
            Arity::AtLeast(k) => write!(f, "at least {k}"),
        }
    }
}

/// The kind of value an attribute must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrKind {
    /// A unit attribute (present or absent).
    Unit,
    /// `true` / `false`.
    Bool,
    /// An integer.
    Int,
    /// A float (an integer is accepted).
    Float,
    /// A string.
    Str,
    /// A list of integers.
    IntArray,
    /// A type.
    Type,
    /// A constant tensor: `dense<...>` or `dense_resource<...>`.
    Elements,
}

impl AttrKind {
    /// Whether `a` is of this kind.
    pub fn accepts(self, a: &Attribute) -> bool {
        match self {
            AttrKind::Unit => matches!(a, Attribute::Unit),
            AttrKind::Bool => matches!(a, Attribute::Bool(_)),
            AttrKind::Int => matches!(a, Attribute::Int(_)),
            AttrKind::Float => matches!(a, Attribute::Float(_) | Attribute::Int(_)),
            AttrKind::Str => matches!(a, Attribute::Str(_)),
            AttrKind::IntArray => a.as_int_array().is_some(),
            AttrKind::Type => matches!(a, Attribute::Type(_)),
            AttrKind::Elements => matches!(a, Attribute::Dense(_) | Attribute::DenseResource(_)),
        }
    }

    /// A short description for diagnostics.
    pub fn describe(self) -> &'static str {
        match self {
            AttrKind::Unit => "a unit attribute",
            AttrKind::Bool => "a boolean",
            AttrKind::Int => "an integer",
            AttrKind::Float => "a number",
            AttrKind::Str => "a string",
            AttrKind::IntArray => "a list of integers",
            AttrKind::Type => "a type",
            AttrKind::Elements => "dense<...> or dense_resource<...>",
        }
    }
}

/// One attribute an op accepts.
#[derive(Clone, Copy, Debug)]
pub struct AttrSpec {
    /// Its name.
    pub name: &'static str,
    /// The kind of value.
    pub kind: AttrKind,
    /// Whether it must be present.
    pub required: bool,
}

/// A required attribute.
pub const fn req(name: &'static str, kind: AttrKind) -> AttrSpec {
    AttrSpec {
        name,
        kind,
        required: true,
    }
}

/// An optional attribute.
pub const fn opt(name: &'static str, kind: AttrKind) -> AttrSpec {
    AttrSpec {
        name,
        kind,
        required: false,
    }
}

/// An op's checker: given the op in its function, an error sentence or Ok. Runs after the generic checks
/// (arity, attribute presence and kinds) passed.
pub type VerifyFn = fn(&OpCtx) -> Result<(), String>;

/// The definition of one op, produced by [`declare_ops!`].
#[derive(Debug)]
pub struct OpDef {
    /// `dialect.mnemonic`.
    pub name: &'static str,
    /// The dialect name.
    pub dialect: &'static str,
    /// Position in the dialect's table (the enum discriminant).
    pub index: u16,
    /// One line for `--help` style listings.
    pub summary: &'static str,
    /// Operand count.
    pub operands: Arity,
    /// Result count.
    pub results: Arity,
    /// Attributes it accepts. Attribute names containing a `.` are discardable annotations and always
    /// accepted.
    pub attrs: &'static [AttrSpec],
    /// No side effects: may be removed when unused and merged when identical.
    pub pure: bool,
    /// The op-specific checker.
    pub verify: VerifyFn,
}

impl PartialEq for OpDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// An op seen in its function, for verifiers and folders.
pub struct OpCtx<'a> {
    /// The function holding the op.
    pub func: &'a Func,
    /// The op.
    pub op: &'a Op,
    /// The values of the function's `qc.constant`s with `dense<...>` data, by value.
    pub constants: &'a BTreeMap<Value, &'a DenseData>,
}

impl<'a> OpCtx<'a> {
    /// Type of operand `i`.
    pub fn operand_ty(&self, i: usize) -> &'a TensorType {
        self.func.ty(self.op.operands[i])
    }

    /// Type of result `i`.
    pub fn result_ty(&self, i: usize) -> &'a TensorType {
        self.func.ty(self.op.results[i])
    }

    /// Attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&'a Attribute> {
        self.op.attrs.get(name)
    }

    /// The value of operand `i` when it is a `dense<...>` constant.
    pub fn constant(&self, i: usize) -> Option<&'a DenseData> {
        self.constants.get(&self.op.operands[i]).copied()
    }

    /// Integer-array attribute `name` (absent or malformed gives None).
    pub fn int_array(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name)?.as_int_array()
    }
}

/// The dense constants of `f`, for [`OpCtx::constants`].
pub fn dense_constants(f: &Func) -> BTreeMap<Value, &DenseData> {
    f.ops
        .iter()
        .filter(|op| QcOp::of(op) == Some(QcOp::Constant))
        .filter_map(|op| match (op.results.first(), op.attrs.get("value")) {
            (Some(&r), Some(Attribute::Dense(d))) => Some((r, d)),
            _ => None,
        })
        .collect()
}

/// A verifier that accepts anything (for ops whose generic checks say it all).
pub fn verify_nothing(_: &OpCtx) -> Result<(), String> {
    Ok(())
}

/// Declares a dialect's ops: an enum with one variant per op, its definitions table, and lookups.
///
/// ```text
/// qc_ir::declare_ops! {
///     /// The nn dialect's ops.
///     pub enum NnOp in "nn";
///     /// Elementwise addition with broadcasting.
///     Add = "add" { operands: Exactly(2), results: Exactly(1), attrs: [], pure: true, verify: verify_binary },
/// }
/// ```
/// The first doc line of each op is its summary.
#[macro_export]
macro_rules! declare_ops {
    (
        $(#[doc = $edoc:literal])*
        pub enum $Enum:ident in $dialect:literal;
        $(
            #[doc = $summary:literal]
            $(#[doc = $more:literal])*
            $Variant:ident = $mnemonic:literal {
                operands: $operands:ident($on:literal),
                results: $results:ident($rn:literal),
                attrs: [$($attr:expr),* $(,)?],
                pure: $pure:literal,
                verify: $verify:expr $(,)?
            }
        ),* $(,)?
    ) => {
        $(#[doc = $edoc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $Enum {
            $(#[doc = $summary] $(#[doc = $more])* $Variant,)*
        }

        impl $Enum {
            /// Every op of the dialect, in declaration order.
            pub const ALL: &'static [$Enum] = &[$($Enum::$Variant,)*];
            /// The dialect name.
            pub const DIALECT: &'static str = $dialect;
            /// The definitions, indexed by discriminant.
            pub const DEFS: &'static [$crate::ops::OpDef] = &[$(
                $crate::ops::OpDef {
                    name: concat!($dialect, ".", $mnemonic),
                    dialect: $dialect,
                    index: $Enum::$Variant as u16,
                    summary: $summary,
                    operands: $crate::ops::Arity::$operands($on),
                    results: $crate::ops::Arity::$results($rn),
                    attrs: &[$($attr),*],
                    pure: $pure,
                    verify: $verify,
                },
            )*];

            /// This op's definition.
            pub fn def(self) -> &'static $crate::ops::OpDef {
                &Self::DEFS[self as usize]
            }

            /// Which op of this dialect `def` is, if it is one.
            pub fn from_def(def: &$crate::ops::OpDef) -> Option<Self> {
                (def.dialect == $dialect).then(|| Self::ALL[def.index as usize])
            }

            /// Which op of this dialect `op` is, if it is one.
            pub fn of(op: &$crate::module::Op) -> Option<Self> {
                Self::from_def(op.def)
            }
        }
    };
}

/// The ops a tool knows, by full name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    ops: BTreeMap<&'static str, &'static OpDef>,
}

impl Registry {
    /// A registry with the builtin `qc` dialect only.
    pub fn new() -> Self {
        let mut r = Registry::default();
        r.register(QcOp::DEFS);
        r
    }

    /// Adds a dialect's definitions.
    pub fn register(&mut self, defs: &'static [OpDef]) {
        for d in defs {
            self.ops.insert(d.name, d);
        }
    }

    /// The definition named `name`.
    pub fn get(&self, name: &str) -> Option<&'static OpDef> {
        self.ops.get(name).copied()
    }

    /// Names of the ops of dialect `dialect`, in name order.
    pub fn op_names(&self, dialect: &str) -> Vec<&'static str> {
        self.ops
            .values()
            .filter(|d| d.dialect == dialect)
            .map(|d| d.name)
            .collect()
    }

    /// Names of the registered dialects.
    pub fn dialects(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.ops.values().map(|d| d.dialect).collect();
        v.dedup();
        v
    }
}

declare_ops! {
    /// The builtin `qc` dialect.
    pub enum QcOp in "qc";
    /// A constant tensor: `value` is `dense<...>` or `dense_resource<name>`.
    Constant = "constant" {
        operands: Exactly(0),
        results: Exactly(1),
        attrs: [req("value", AttrKind::Elements)],
        pure: true,
        verify: verify_constant,
    },
}

fn verify_constant(cx: &OpCtx) -> Result<(), String> {
    let ty = cx.result_ty(0);
    match cx.attr("value") {
        Some(Attribute::Dense(data)) => {
            if ty.elem.as_quant().is_some() {
                return Err(
                    "a quantized constant must be a dense_resource holding its encoded bytes"
                        .into(),
                );
            }
            let n = ty.num_elements();
            if data.len() != 1 && Some(data.len() as u64) != n {
                return Err(match n {
                    Some(n) => format!(
                        "dense value has {} elements but the type {ty} has {n}",
                        data.len()
                    ),
                    None => format!(
                        "a dense value of {} elements needs a static type, not {ty}",
                        data.len()
                    ),
                });
            }
            use crate::attr::DenseData;
            use crate::types::ElemType;
            let ok = data.is_empty()
                || match (&ty.elem, data) {
                    (ElemType::Int { bits: 1, .. }, DenseData::Bool(_)) => true,
                    (ElemType::Int { .. }, DenseData::Int(_)) => true,
                    (e, DenseData::Float(_)) => e.is_float() || matches!(e, ElemType::Raw(_)),
                    _ => false,
                };
            if !ok {
                return Err(format!(
                    "dense value kind does not match the element type {}",
                    ty.elem
                ));
            }
            Ok(())
        }
        // Resource existence and size are checked by the verifier, which sees the module.
        _ => Ok(()),
    }
}

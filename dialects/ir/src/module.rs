//! Modules, functions, ops and SSA values.
//!
//! A [`Module`] holds functions and resources. A [`Func`] owns an arena of values (each with a type and an
//! optional name hint) and a single block: its ops in order, then a `return`. Values are defined once, by a
//! function argument or an op result, and used after their definition (the verifier checks it).
//!
//! Invariant: a [`Value`] is only meaningful with the [`Func`] that created it.

use crate::attr::{Attribute, Attrs};
use crate::diag::Location;
use crate::ops::OpDef;
use crate::resource::Resources;
use crate::types::TensorType;

/// An SSA value: an index into its function's value arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub u32);

/// What the arena knows about a value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Its type.
    pub ty: TensorType,
    /// A name hint for printing (`%x`); sanitized to the characters the text form allows.
    pub name: Option<String>,
}

/// One operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// What kind of op (its registry entry).
    pub def: &'static OpDef,
    /// Operands, in order.
    pub operands: Vec<Value>,
    /// Results, in order.
    pub results: Vec<Value>,
    /// Attributes.
    pub attrs: Attrs,
    /// Where it came from.
    pub loc: Location,
}

impl Op {
    /// The op's full name, `dialect.mnemonic`.
    pub fn name(&self) -> &'static str {
        self.def.name
    }

    /// The attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&Attribute> {
        self.attrs.get(name)
    }
}

/// A function: arguments, a body of ops, and the values it returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Func {
    /// The symbol name (without `@`).
    pub name: String,
    /// Argument values, in order.
    pub args: Vec<Value>,
    /// Declared result types.
    pub result_types: Vec<TensorType>,
    /// The body, in execution order.
    pub ops: Vec<Op>,
    /// The values returned, in order.
    pub ret: Vec<Value>,
    /// Where the function was defined.
    pub loc: Location,
    /// Where its `return` was.
    pub ret_loc: Location,
    values: Vec<ValueInfo>,
}

impl Func {
    /// An empty function with no arguments and no results.
    pub fn new(name: impl Into<String>) -> Self {
        Func {
            name: name.into(),
            args: Vec::new(),
            result_types: Vec::new(),
            ops: Vec::new(),
            ret: Vec::new(),
            loc: Location::Unknown,
            ret_loc: Location::Unknown,
            values: Vec::new(),
        }
    }

    /// Creates a value with a type and an optional name hint (sanitized).
    pub fn new_value(&mut self, ty: TensorType, name: Option<&str>) -> Value {
        self.values.push(ValueInfo {
            ty,
            name: name.map(sanitize_name).filter(|s| !s.is_empty()),
        });
        Value(self.values.len() as u32 - 1)
    }

    /// Appends an argument.
    pub fn add_arg(&mut self, ty: TensorType, name: Option<&str>) -> Value {
        let v = self.new_value(ty, name);
        self.args.push(v);
        v
    }

    /// The type of `v`.
    pub fn ty(&self, v: Value) -> &TensorType {
        &self.values[v.0 as usize].ty
    }

    /// Arena data of `v`.
    pub fn value(&self, v: Value) -> &ValueInfo {
        &self.values[v.0 as usize]
    }

    /// Mutable arena data of `v`.
    pub fn value_mut(&mut self, v: Value) -> &mut ValueInfo {
        &mut self.values[v.0 as usize]
    }

    /// Number of values in the arena (live or not).
    pub fn num_values(&self) -> usize {
        self.values.len()
    }

    /// Appends an op whose results get fresh values of `result_types`; returns the result values.
    pub fn push_op(
        &mut self,
        def: &'static OpDef,
        operands: Vec<Value>,
        result_types: Vec<TensorType>,
        attrs: Attrs,
        loc: Location,
    ) -> Vec<Value> {
        let results: Vec<Value> = result_types
            .into_iter()
            .map(|t| self.new_value(t, None))
            .collect();
        self.ops.push(Op {
            def,
            operands,
            results: results.clone(),
            attrs,
            loc,
        });
        results
    }

    /// Replaces every use of each key of `subst` (as an operand or a returned value) by its value, following
    /// chains (a -> b -> c) to their end.
    pub fn replace_uses(&mut self, subst: &std::collections::BTreeMap<Value, Value>) {
        if subst.is_empty() {
            return;
        }
        let resolve = |mut v: Value| {
            while let Some(&n) = subst.get(&v) {
                v = n;
            }
            v
        };
        for op in &mut self.ops {
            for v in &mut op.operands {
                *v = resolve(*v);
            }
        }
        for v in &mut self.ret {
            *v = resolve(*v);
        }
    }

    /// How many times each value is used (operands and return), indexed by value.
    pub fn use_counts(&self) -> Vec<u32> {
        let mut n = vec![0u32; self.values.len()];
        for v in self.ops.iter().flat_map(|o| &o.operands).chain(&self.ret) {
            n[v.0 as usize] += 1;
        }
        n
    }
}

/// Keeps the characters a value name may hold (`[A-Za-z0-9_$.-]`), replacing others with `_`.
pub fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| if is_name_char(c) { c } else { '_' })
        .collect()
}

/// Whether `c` may appear in a value or resource name.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '-')
}

/// A compilation unit: functions and the resources their constants refer to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Module {
    /// Functions, in order.
    pub funcs: Vec<Func>,
    /// Large constants.
    pub resources: Resources,
}

impl Module {
    /// The function named `name`.
    pub fn func(&self, name: &str) -> Option<&Func> {
        self.funcs.iter().find(|f| f.name == name)
    }
}

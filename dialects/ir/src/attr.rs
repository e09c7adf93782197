//! Attributes: compile-time values attached to ops.
//!
//! An op's attributes are an [`Attrs`] dictionary kept sorted by name, so printing is canonical.
//! Small constant tensors are [`Attribute::Dense`]; large ones are [`Attribute::DenseResource`], a
//! reference by name into the module's [`crate::resource::Resources`].

use std::fmt;

use crate::types::TensorType;

/// The values of a small constant tensor, in row-major order. A single value is a splat: it fills the
/// whole tensor whatever its shape. An empty list is an empty tensor. Equality compares bits (NaN equals
/// itself, -0.0 differs from 0.0), and the text form is canonical (see [`DenseData::canonical`]).
#[derive(Clone, Debug)]
pub enum DenseData {
    /// Floating-point values (for float and raw minifloat element types).
    Float(Vec<f64>),
    /// Integer values (for integer element types).
    Int(Vec<i64>),
    /// Boolean values (for `i1`).
    Bool(Vec<bool>),
}

impl DenseData {
    /// The number of stored values (1 for a splat).
    pub fn len(&self) -> usize {
        match self {
            DenseData::Float(v) => v.len(),
            DenseData::Int(v) => v.len(),
            DenseData::Bool(v) => v.len(),
        }
    }

    /// True when no values are stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `i` as f64 (a splat answers for every index).
    pub fn get_f64(&self, i: usize) -> f64 {
        let i = if self.len() == 1 { 0 } else { i };
        match self {
            DenseData::Float(v) => v[i],
            DenseData::Int(v) => v[i] as f64,
            DenseData::Bool(v) => v[i] as u8 as f64,
        }
    }

    /// The value at `i` as i64, truncating floats (a splat answers for every index).
    pub fn get_i64(&self, i: usize) -> i64 {
        let i = if self.len() == 1 { 0 } else { i };
        match self {
            DenseData::Float(v) => v[i] as i64,
            DenseData::Int(v) => v[i],
            DenseData::Bool(v) => v[i] as i64,
        }
    }

    /// Collapses a list whose values are all bit-identical into a one-value splat; the canonical form.
    /// An empty list (of any kind) becomes `Int([])`: the text form `dense<[]>` does not say its kind.
    pub fn canonical(self) -> Self {
        if self.is_empty() {
            return DenseData::Int(Vec::new());
        }
        fn collapse<T: Clone>(v: Vec<T>, same: impl Fn(&T, &T) -> bool) -> Vec<T> {
            if v.len() > 1 && v.iter().all(|x| same(x, &v[0])) {
                vec![v[0].clone()]
            } else {
                v
            }
        }
        match self {
            DenseData::Float(v) => DenseData::Float(collapse(v, |a, b| a.to_bits() == b.to_bits())),
            DenseData::Int(v) => DenseData::Int(collapse(v, |a, b| a == b)),
            DenseData::Bool(v) => DenseData::Bool(collapse(v, |a, b| a == b)),
        }
    }
}

impl PartialEq for DenseData {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (DenseData::Float(a), DenseData::Float(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (DenseData::Int(a), DenseData::Int(b)) => a == b,
            (DenseData::Bool(a), DenseData::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// Equality on bits, so that NaN constants compare equal to themselves (needed for CSE and round-trips).
impl Eq for DenseData {}

/// An attribute value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribute {
    /// A unit attribute: present or absent, printed as its bare name.
    Unit,
    /// `true` / `false`.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float, compared by bits.
    Float(F64Bits),
    /// A string.
    Str(String),
    /// A list.
    Array(Vec<Attribute>),
    /// A type.
    Type(TensorType),
    /// A small constant tensor, printed `dense<...>`.
    Dense(DenseData),
    /// A large constant held out of line, printed `dense_resource<name>`.
    DenseResource(String),
}

/// An f64 compared and hashed by its bits.
#[derive(Clone, Copy, Debug)]
pub struct F64Bits(pub f64);

impl PartialEq for F64Bits {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for F64Bits {}

impl Attribute {
    /// The integer, if this is an Int.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Attribute::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The list of integers, if this is an array of Ints.
    pub fn as_int_array(&self) -> Option<Vec<i64>> {
        match self {
            Attribute::Array(v) => v.iter().map(Attribute::as_int).collect(),
            _ => None,
        }
    }

    /// The float (Ints convert), if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Attribute::Float(f) => Some(f.0),
            Attribute::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}

/// Formats an f64 so that it parses back to the same bits: shortest round-trip decimal with a `.` or an
/// exponent, `inf` / `-inf`, and NaN as `nan` (canonical quiet NaN) or `nan(0xBITS)` for other payloads.
pub fn format_f64(v: f64) -> String {
    if v.is_nan() {
        if v.to_bits() == f64::NAN.to_bits() {
            "nan".into()
        } else {
            format!("nan(0x{:016X})", v.to_bits())
        }
    } else if v.is_infinite() {
        if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        let s = format!("{v:?}");
        if s.contains(['.', 'e', 'E']) {
            s
        } else {
            s + ".0"
        }
    }
}

impl fmt::Display for DenseData {
    /// Prints the canonical form, so that text round-trips: a list of bit-identical values prints as one
    /// splat value (which is what the parser makes of it), an empty list as `[]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let canonical = self.clone().canonical();
        let items: Vec<String> = match &canonical {
            DenseData::Float(v) => v.iter().map(|x| format_f64(*x)).collect(),
            DenseData::Int(v) => v.iter().map(|x| x.to_string()).collect(),
            DenseData::Bool(v) => v.iter().map(|x| x.to_string()).collect(),
        };
        if items.len() == 1 {
            f.write_str(&items[0])
        } else {
            write!(f, "[{}]", items.join(", "))
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Unit => f.write_str("unit"),
            Attribute::Bool(b) => write!(f, "{b}"),
            Attribute::Int(i) => write!(f, "{i}"),
            Attribute::Float(x) => f.write_str(&format_f64(x.0)),
            Attribute::Str(s) => write!(f, "\"{}\"", escape(s)),
            Attribute::Array(v) => {
                f.write_str("[")?;
                for (i, a) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str("]")
            }
            Attribute::Type(t) => write!(f, "{t}"),
            Attribute::Dense(d) => write!(f, "dense<{d}>"),
            Attribute::DenseResource(name) => write!(f, "dense_resource<{name}>"),
        }
    }
}

/// Escapes a string for the text form: `\"`, `\\`, `\n`, `\t`, and `\XX` (two hex digits) for other control
/// bytes; other characters are kept.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// An op's attributes: name-value pairs kept sorted by name, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs(Vec<(String, Attribute)>);

impl Attrs {
    /// An empty dictionary.
    pub fn new() -> Self {
        Attrs(Vec::new())
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&Attribute> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Sets `name`, replacing any previous value; returns the previous value.
    pub fn set(&mut self, name: impl Into<String>, value: Attribute) -> Option<Attribute> {
        let name = name.into();
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&name)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Attribute> {
        let i = self
            .0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()?;
        Some(self.0.remove(i).1)
    }

    /// Name-value pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Attribute)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// True when there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Builds an [`Attrs`] from pairs (later duplicates win).
impl<S: Into<String>> FromIterator<(S, Attribute)> for Attrs {
    fn from_iter<I: IntoIterator<Item = (S, Attribute)>>(iter: I) -> Self {
        let mut a = Attrs::new();
        for (k, v) in iter {
            a.set(k, v);
        }
        a
    }
}

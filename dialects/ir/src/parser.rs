//! The text parser: qc IR text to a [`Module`].
//!
//! The grammar is in docs/IR.md. The parser stops at the first syntax error and reports it with
//! `file:line:col`; structural rules that need the whole module (op arity, attributes, types of results)
//! are the verifier's, which reports every error at once. The parser never panics on any input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::attr::{Attribute, Attrs, DenseData, F64Bits};
use crate::diag::{Diagnostic, Location};
use crate::module::{is_name_char, Func, Module, Value};
use crate::ops::Registry;
use crate::quant::{
    minifloat_widths_ok, named_format, named_formats, validate_minifloat, Convention, Encoding,
    InfNan, Minifloat, Packing, QuantType, Rounding, Saturation, ScaleRule, ScaleType, Scheme,
    TensorScale,
};
use crate::resource::{map_external, Blob};
use crate::types::{Dim, ElemType, TensorType};

/// Where the text came from.
#[derive(Clone, Debug)]
pub struct Source {
    /// The name used in diagnostics (`-` or `<stdin>` for standard input).
    pub name: Arc<str>,
    /// The folder `external<...>` resource paths are resolved against.
    pub base_dir: PathBuf,
}

impl Source {
    /// A source named `name` whose external resources resolve against the current directory.
    pub fn named(name: &str) -> Self {
        Source {
            name: name.into(),
            base_dir: PathBuf::from("."),
        }
    }

    /// The source for a file path: named as given, resolving resources against the file's folder.
    pub fn file(path: &Path) -> Self {
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Source {
            name: path.display().to_string().into(),
            base_dir: base.to_path_buf(),
        }
    }
}

/// Parses a module. `registry` says which ops exist.
pub fn parse_module(
    text: &str,
    source: &Source,
    registry: &Registry,
) -> Result<Module, Diagnostic> {
    let mut p = Parser {
        text,
        pos: 0,
        source,
        registry,
        aliases: BTreeMap::new(),
    };
    p.module()
}

/// Parses a single type, e.g. `tensor<4x!quant.nvfp4>`.
pub fn parse_type(text: &str) -> Result<TensorType, Diagnostic> {
    let registry = Registry::new();
    let source = Source::named("<type>");
    let mut p = Parser {
        text,
        pos: 0,
        source: &source,
        registry: &registry,
        aliases: BTreeMap::new(),
    };
    p.ws();
    let t = p.tensor_type()?;
    p.ws();
    if p.pos != text.len() {
        return Err(p.err("unexpected text after the type"));
    }
    Ok(t)
}

type PResult<T> = Result<T, Diagnostic>;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    source: &'a Source,
    registry: &'a Registry,
    aliases: BTreeMap<String, ElemType>,
}

/// Values visible in the function being parsed.
struct Scope {
    names: BTreeMap<String, Value>,
}

impl<'a> Parser<'a> {
    // ---- positions and errors ----

    fn loc_at(&self, pos: usize) -> Location {
        let before = &self.text[..pos];
        let line = before.matches('\n').count() as u32 + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..pos].chars().count() as u32 + 1;
        Location::Text {
            file: self.source.name.clone(),
            line,
            col,
        }
    }

    fn err_at(&self, pos: usize, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.loc_at(pos), msg)
    }

    fn err(&self, msg: impl Into<String>) -> Diagnostic {
        self.err_at(self.pos, msg)
    }

    fn found(&self) -> String {
        match self.rest().chars().next() {
            None => "end of input".into(),
            Some(_) => {
                let word: String = self
                    .rest()
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .take(20)
                    .collect();
                format!("'{word}'")
            }
        }
    }

    // ---- characters ----

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    /// Skips whitespace and `//` comments.
    fn ws(&mut self) {
        loop {
            let r = self.rest();
            let trimmed = r.trim_start();
            self.pos += r.len() - trimmed.len();
            if self.rest().starts_with("//") {
                self.pos += self.rest().find('\n').unwrap_or(self.rest().len());
            } else {
                return;
            }
        }
    }

    /// Consumes `s` (after whitespace) if it is next.
    fn eat(&mut self, s: &str) -> bool {
        self.ws();
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, s: &str) -> PResult<()> {
        if self.eat(s) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{s}', found {}", self.found())))
        }
    }

    /// An identifier `[A-Za-z_][A-Za-z0-9_]*` (after whitespace); empty if none.
    fn ident(&mut self) -> &'a str {
        self.ws();
        let r = self.rest();
        let n = r
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())))
            .map_or(r.len(), |(i, _)| i);
        self.pos += n;
        &r[..n]
    }

    fn expect_ident(&mut self, what: &str) -> PResult<&'a str> {
        let start = self.pos;
        let id = self.ident();
        if id.is_empty() {
            self.pos = start;
            self.ws();
            return Err(self.err(format!("expected {what}, found {}", self.found())));
        }
        Ok(id)
    }

    /// A run of name characters `[A-Za-z0-9_$.-]` (no whitespace skipping).
    fn name_chars(&mut self) -> &'a str {
        let r = self.rest();
        let n = r.find(|c: char| !is_name_char(c)).unwrap_or(r.len());
        self.pos += n;
        &r[..n]
    }

    fn keyword(&mut self, kw: &str) -> bool {
        self.ws();
        let r = self.rest();
        if r.starts_with(kw)
            && !r[kw.len()..]
                .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            self.pos += kw.len();
            true
        } else {
            false
        }
    }

    fn unsigned(&mut self, what: &str) -> PResult<u64> {
        self.ws();
        let r = self.rest();
        let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        if n == 0 {
            return Err(self.err(format!("expected {what}, found {}", self.found())));
        }
        let v = r[..n]
            .parse::<u64>()
            .map_err(|_| self.err(format!("{what} '{}' is too large", &r[..n])))?;
        self.pos += n;
        Ok(v)
    }

    fn small<T: TryFrom<u64>>(&mut self, what: &str) -> PResult<T> {
        let start = self.pos;
        let v = self.unsigned(what)?;
        T::try_from(v).map_err(|_| self.err_at(start, format!("{what} {v} is too large")))
    }

    fn signed_i32(&mut self, what: &str) -> PResult<i32> {
        let neg = self.eat("-");
        let start = self.pos;
        let v = self.unsigned(what)? as i64;
        let v = if neg { -v } else { v };
        i32::try_from(v).map_err(|_| self.err_at(start, format!("{what} {v} is out of range")))
    }

    // ---- module ----

    fn module(&mut self) -> PResult<Module> {
        let mut m = Module::default();
        let mut resource_refs: Vec<(String, usize)> = Vec::new();
        loop {
            self.ws();
            if self.rest().starts_with('!') {
                self.alias_def()?;
            } else {
                break;
            }
        }
        let wrapped = self.keyword("module");
        if wrapped {
            self.expect("{")?;
        }
        loop {
            self.ws();
            if wrapped && self.eat("}") {
                break;
            }
            if self.rest().is_empty() || self.rest().starts_with("{-#") {
                if wrapped {
                    return Err(self.err("expected '}' to close the module"));
                }
                break;
            }
            if !self.keyword("func.func") {
                return Err(self.err(format!("expected 'func.func', found {}", self.found())));
            }
            let f = self.func(&mut resource_refs)?;
            if m.funcs.iter().any(|g| g.name == f.name) {
                return Err(Diagnostic::error(
                    f.loc.clone(),
                    format!("redefinition of function @{}", f.name),
                ));
            }
            m.funcs.push(f);
        }
        self.ws();
        if self.rest().starts_with("{-#") {
            self.resources(&mut m)?;
        }
        self.ws();
        if !self.rest().is_empty() {
            return Err(self.err(format!("unexpected {} after the module", self.found())));
        }
        for (name, pos) in resource_refs {
            if m.resources.get(&name).is_none() {
                // Referenced but absent: the bytes were elided when the text was printed.
                let _ = pos;
                m.resources.insert(name, Blob::Elided);
            }
        }
        Ok(m)
    }

    fn alias_def(&mut self) -> PResult<()> {
        let start = self.pos;
        self.expect("!")?;
        let name = self.expect_ident("an alias name")?.to_string();
        if name == "quant" || self.aliases.contains_key(&name) {
            return Err(self.err_at(start, format!("redefinition of type alias !{name}")));
        }
        self.expect("=")?;
        let elem = self.elem_type()?;
        self.aliases.insert(name, elem);
        Ok(())
    }

    fn func(&mut self, resource_refs: &mut Vec<(String, usize)>) -> PResult<Func> {
        self.ws();
        let loc = self.loc_at(self.pos);
        self.expect("@")?;
        let name = self.name_chars().to_string();
        if name.is_empty() {
            return Err(self.err("expected a function name after '@'"));
        }
        let mut f = Func::new(name);
        f.loc = loc;
        let mut scope = Scope {
            names: BTreeMap::new(),
        };
        self.expect("(")?;
        if !self.eat(")") {
            loop {
                let (vname, pos) = self.value_name()?;
                self.expect(":")?;
                let ty = self.tensor_type()?;
                if scope.names.contains_key(&vname) {
                    return Err(self.err_at(pos, format!("redefinition of value %{vname}")));
                }
                let v = f.add_arg(ty, Some(&vname));
                scope.names.insert(vname, v);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        if self.eat("->") {
            f.result_types = self.type_list()?;
        }
        self.expect("{")?;
        loop {
            self.ws();
            let ret_pos = self.pos;
            if self.keyword("return") || self.keyword("func.return") {
                f.ret_loc = self.loc_at(ret_pos);
                self.ret(&mut f, &scope)?;
                break;
            }
            if self.rest().is_empty() || self.rest().starts_with('}') {
                return Err(self.err("expected 'return' at the end of the function body"));
            }
            self.op(&mut f, &mut scope, resource_refs)?;
        }
        self.expect("}")?;
        Ok(f)
    }

    /// `%name` (the name without `%`) and its position.
    fn value_name(&mut self) -> PResult<(String, usize)> {
        self.ws();
        let pos = self.pos;
        if !self.eat("%") {
            return Err(self.err(format!(
                "expected a value name like %x, found {}",
                self.found()
            )));
        }
        let n = self.name_chars();
        if n.is_empty() {
            return Err(self.err_at(pos, "expected a name after '%'"));
        }
        Ok((n.to_string(), pos))
    }

    fn value_use(&mut self, scope: &Scope) -> PResult<Value> {
        let (name, pos) = self.value_name()?;
        scope
            .names
            .get(&name)
            .copied()
            .ok_or_else(|| self.err_at(pos, format!("use of undefined value %{name}")))
    }

    fn ret(&mut self, f: &mut Func, scope: &Scope) -> PResult<()> {
        self.ws();
        let pos = self.pos;
        if self.rest().starts_with('%') {
            let mut vals = vec![self.value_use(scope)?];
            while self.eat(",") {
                vals.push(self.value_use(scope)?);
            }
            self.expect(":")?;
            let mut tys = vec![self.tensor_type()?];
            while self.eat(",") {
                tys.push(self.tensor_type()?);
            }
            if tys.len() != vals.len() {
                return Err(self.err_at(
                    pos,
                    format!("return has {} values but {} types", vals.len(), tys.len()),
                ));
            }
            for (v, t) in vals.iter().zip(&tys) {
                if f.ty(*v) != t {
                    return Err(self.err_at(
                        pos,
                        format!("returned value has type {} but is annotated {t}", f.ty(*v)),
                    ));
                }
            }
            f.ret = vals;
        }
        Ok(())
    }

    fn op(
        &mut self,
        f: &mut Func,
        scope: &mut Scope,
        resource_refs: &mut Vec<(String, usize)>,
    ) -> PResult<()> {
        self.ws();
        let start = self.pos;
        let mut result_names = Vec::new();
        if self.rest().starts_with('%') {
            result_names.push(self.value_name()?);
            while self.eat(",") {
                result_names.push(self.value_name()?);
            }
            self.expect("=")?;
        }
        self.ws();
        let name_pos = self.pos;
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(r.len());
        let op_name = &r[..n];
        self.pos += n;
        if op_name.is_empty() {
            return Err(self.err(format!(
                "expected an op name like nn.add, found {}",
                self.found()
            )));
        }
        let Some(def) = self.registry.get(op_name) else {
            let dialect = op_name.split('.').next().unwrap_or("");
            let known = self.registry.op_names(dialect);
            let msg = if known.is_empty() {
                format!(
                    "unknown op '{op_name}': no dialect '{dialect}' (known: {})",
                    self.registry.dialects().join(", ")
                )
            } else {
                format!(
                    "unknown op '{op_name}'; the {dialect} dialect has: {}",
                    known.join(", ")
                )
            };
            return Err(self.err_at(name_pos, msg));
        };
        let mut operands = Vec::new();
        self.ws();
        if self.rest().starts_with('%') {
            operands.push(self.value_use(scope)?);
            while self.eat(",") {
                operands.push(self.value_use(scope)?);
            }
        }
        self.ws();
        let attrs = if self.rest().starts_with('{') {
            self.attr_dict(resource_refs)?
        } else {
            Attrs::new()
        };
        self.expect(":")?;
        self.ws();
        let sig_pos = self.pos;
        self.expect("(")?;
        let mut in_types = Vec::new();
        if !self.eat(")") {
            loop {
                in_types.push(self.tensor_type()?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        self.expect("->")?;
        let out_types = self.type_list()?;
        if in_types.len() != operands.len() {
            return Err(self.err_at(
                sig_pos,
                format!(
                    "'{op_name}' has {} operands but its signature lists {} types",
                    operands.len(),
                    in_types.len()
                ),
            ));
        }
        for (i, (v, t)) in operands.iter().zip(&in_types).enumerate() {
            if f.ty(*v) != t {
                return Err(self.err_at(
                    sig_pos,
                    format!(
                        "operand {i} of '{op_name}' has type {} but the signature says {t}",
                        f.ty(*v)
                    ),
                ));
            }
        }
        if out_types.len() != result_names.len() {
            return Err(self.err_at(
                start,
                format!(
                    "'{op_name}' defines {} values but its signature has {} results",
                    result_names.len(),
                    out_types.len()
                ),
            ));
        }
        let loc = self.loc_at(start);
        let results = f.push_op(def, operands, out_types, attrs, loc);
        for ((name, pos), v) in result_names.into_iter().zip(results) {
            if scope.names.contains_key(&name) {
                return Err(self.err_at(pos, format!("redefinition of value %{name}")));
            }
            f.value_mut(v).name = Some(name.clone());
            scope.names.insert(name, v);
        }
        Ok(())
    }

    /// `T` or `(T, ...)` or `()`.
    fn type_list(&mut self) -> PResult<Vec<TensorType>> {
        if self.eat("(") {
            let mut v = Vec::new();
            if self.eat(")") {
                return Ok(v);
            }
            loop {
                v.push(self.tensor_type()?);
                if self.eat(")") {
                    return Ok(v);
                }
                self.expect(",")?;
            }
        }
        Ok(vec![self.tensor_type()?])
    }

    // ---- types ----

    fn tensor_type(&mut self) -> PResult<TensorType> {
        self.ws();
        let start = self.pos;
        if !self.keyword("tensor") {
            return Err(self.err(format!(
                "expected a type like tensor<4xf32>, found {}",
                self.found()
            )));
        }
        if !self.rest().starts_with('<') {
            return Err(self.err("expected '<' after 'tensor'"));
        }
        self.pos += 1;
        let mut dims = Vec::new();
        loop {
            self.ws();
            let c = self.peek();
            let dim = match c {
                Some('?') => {
                    self.pos += 1;
                    Dim::Dynamic
                }
                Some('[') => {
                    self.pos += 1;
                    let name = self.name_chars();
                    if name.is_empty() || !self.rest().starts_with(']') {
                        return Err(self.err("expected a symbolic dimension like [seq]"));
                    }
                    self.pos += 1;
                    Dim::Symbol(name.into())
                }
                Some(c) if c.is_ascii_digit() => Dim::Static(self.unsigned("a dimension")?),
                _ => break,
            };
            if !self.rest().starts_with('x') {
                return Err(self.err(format!(
                    "expected 'x' after a dimension, found {}",
                    self.found()
                )));
            }
            self.pos += 1;
            dims.push(dim);
        }
        let elem_pos = self.pos;
        let elem = self.elem_type()?;
        self.expect(">")?;
        let t = TensorType { dims, elem };
        if let ElemType::Quant(q) = &t.elem {
            let shape: Vec<Option<u64>> = t.dims.iter().map(Dim::as_static).collect();
            q.validate_for_shape(&shape)
                .map_err(|e| self.err_at(elem_pos, format!("invalid type {t}: {e}")))?;
        }
        let _ = start;
        Ok(t)
    }

    fn elem_type(&mut self) -> PResult<ElemType> {
        self.ws();
        let start = self.pos;
        if self.eat("!quant.") {
            let name = self.expect_ident("a format name")?;
            return match name {
                "fmt" => {
                    let q = self.quant_params()?;
                    q.validate()
                        .map_err(|e| self.err_at(start, format!("invalid quantized type: {e}")))?;
                    Ok(ElemType::Quant(Arc::new(q)))
                }
                "raw" => {
                    self.expect("<")?;
                    let e = self.encoding()?;
                    self.expect(">")?;
                    Ok(ElemType::Raw(e))
                }
                _ => match named_format(name) {
                    Some(f) => Ok(ElemType::Quant(Arc::new(f.ty.clone()))),
                    None => Err(self.err_at(
                        start,
                        format!(
                            "unknown format '!quant.{name}'; named formats: {}",
                            named_formats()
                                .iter()
                                .map(|f| f.name)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )),
                },
            };
        }
        if self.eat("!") {
            let name = self.expect_ident("a type alias name")?;
            return self
                .aliases
                .get(name)
                .cloned()
                .ok_or_else(|| self.err_at(start, format!("undefined type alias !{name}")));
        }
        let kw = self.ident();
        if kw.is_empty() {
            return Err(self.err(format!(
                "expected an element type like f32, found {}",
                self.found()
            )));
        }
        ElemType::from_keyword(kw).ok_or_else(|| {
            self.err_at(start, format!("unknown element type '{kw}' (expected f16, bf16, f32, f64, iN, uiN, f8E4M3FN, ... or !quant.NAME)"))
        })
    }

    /// An element encoding: a bare name, or `eXmY<bias = B, policy = P>`.
    fn encoding(&mut self) -> PResult<Encoding> {
        self.ws();
        let start = self.pos;
        let name = self.expect_ident("an element encoding")?;
        let mut enc = Encoding::from_name(name).ok_or_else(|| {
            self.err_at(start, format!("unknown element encoding '{name}' (expected e2m1, e4m3fn, eXmY, e8m0, ue4m3, iN, uN, mxi8)"))
        })?;
        self.ws();
        if self.rest().starts_with('<') {
            // `e8m0<...>` is a generic minifloat with e8m0's widths, not the special scale encoding.
            let Some(mut m) = (match enc {
                Encoding::Float(m) => Some(m),
                _ => generic_minifloat(name),
            }) else {
                return Err(self.err(format!("'{name}' takes no parameters")));
            };
            self.pos += 1;
            loop {
                let key_pos = self.pos;
                let key = self.expect_ident("'bias' or 'policy'")?;
                self.expect("=")?;
                match key {
                    "bias" => m.bias = self.signed_i32("a bias")?,
                    "policy" => {
                        let p_pos = self.pos;
                        let p = self.expect_ident("an inf/nan policy")?;
                        m.policy = InfNan::from_name(p).ok_or_else(|| {
                            self.err_at(
                                p_pos,
                                format!("unknown policy '{p}' (expected ieee, fn, fnuz, none)"),
                            )
                        })?;
                    }
                    _ => {
                        return Err(self.err_at(
                            key_pos,
                            format!("unknown minifloat parameter '{key}' (expected bias, policy)"),
                        ))
                    }
                }
                if self.eat(">") {
                    break;
                }
                self.expect(",")?;
            }
            validate_minifloat(&m).map_err(|e| self.err_at(start, e))?;
            enc = Encoding::Float(Minifloat { ..m });
        }
        Ok(enc)
    }

    fn keyword_value<T>(
        &mut self,
        what: &str,
        from: fn(&str) -> Option<T>,
        all: &[&str],
    ) -> PResult<T> {
        let pos = self.pos;
        let w = self.expect_ident(what)?;
        from(w).ok_or_else(|| {
            self.err_at(
                pos,
                format!("unknown {what} '{w}' (expected {})", all.join(", ")),
            )
        })
    }

    /// `<ELEM, SCHEME, key = value, ...>` of `!quant.fmt`.
    fn quant_params(&mut self) -> PResult<QuantType> {
        self.expect("<")?;
        let elem = self.encoding()?;
        self.expect(",")?;
        let scheme = self.scheme()?;
        let mut scale = None;
        let mut rule = None;
        let mut q = QuantType::new(elem, scheme, ScaleType::F32, ScaleRule::Amax);
        let mut seen: Vec<&str> = Vec::new();
        while self.eat(",") {
            let key_pos = self.pos;
            let key = self.expect_ident("a parameter name")?;
            if seen.contains(&key) {
                return Err(self.err_at(key_pos, format!("parameter '{key}' is given twice")));
            }
            seen.push(key);
            self.expect("=")?;
            fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<&'static str> {
                all.iter().map(|v| name(*v)).collect()
            }
            match key {
                "scale" => scale = Some(self.keyword_value("scale type", ScaleType::from_name, &names(ScaleType::ALL, ScaleType::name))?),
                "rule" => rule = Some(self.keyword_value("scale rule", ScaleRule::from_name, &names(ScaleRule::ALL, ScaleRule::name))?),
                "tensor_scale" => q.tensor_scale = self.keyword_value("tensor scale", TensorScale::from_name, &names(TensorScale::ALL, TensorScale::name))?,
                "zero_point" => q.zero_point = Some(self.encoding()?),
                "round" => q.round = self.keyword_value("rounding", Rounding::from_name, &names(Rounding::ALL, Rounding::name))?,
                "sat" => q.sat = self.keyword_value("saturation", Saturation::from_name, &names(Saturation::ALL, Saturation::name))?,
                "pack" => q.pack = self.keyword_value("packing", Packing::from_name, &names(Packing::ALL, Packing::name))?,
                "convention" => q.convention = self.keyword_value("convention", Convention::from_name, &names(Convention::ALL, Convention::name))?,
                _ => {
                    return Err(self.err_at(
                        key_pos,
                        format!("unknown format parameter '{key}' (expected scale, rule, tensor_scale, zero_point, round, sat, pack, convention)"),
                    ))
                }
            }
        }
        self.expect(">")?;
        q.scale = scale.ok_or_else(|| self.err("a format needs 'scale = TYPE'"))?;
        q.rule = rule.ok_or_else(|| self.err("a format needs 'rule = RULE'"))?;
        Ok(q)
    }

    fn scheme(&mut self) -> PResult<Scheme> {
        self.ws();
        let pos = self.pos;
        let name =
            self.expect_ident("a scheme (per_tensor, per_channel<A>, group<G>, block<RxC>)")?;
        match name {
            "per_tensor" => Ok(Scheme::PerTensor),
            "per_channel" => {
                self.expect("<")?;
                let axis = self.signed_i32("an axis")?;
                self.expect(">")?;
                Ok(Scheme::PerChannel { axis })
            }
            "group" => {
                self.expect("<")?;
                let size = self.small::<u32>("a group size")?;
                let mut axis = -1;
                if self.eat(",") {
                    let k = self.expect_ident("'axis'")?;
                    if k != "axis" {
                        return Err(
                            self.err(format!("unknown group parameter '{k}' (expected axis)"))
                        );
                    }
                    self.expect("=")?;
                    axis = self.signed_i32("an axis")?;
                }
                self.expect(">")?;
                Ok(Scheme::Group { size, axis })
            }
            "block" => {
                self.expect("<")?;
                let rows = self.small::<u32>("a block height")?;
                if !self.rest().starts_with('x') {
                    return Err(self.err("expected 'x' in a block shape like block<16x16>"));
                }
                self.pos += 1;
                let cols = self.small::<u32>("a block width")?;
                self.expect(">")?;
                Ok(Scheme::Block { rows, cols })
            }
            _ => Err(self.err_at(
                pos,
                format!("unknown scheme '{name}' (expected per_tensor, per_channel, group, block)"),
            )),
        }
    }

    // ---- attributes ----

    fn attr_dict(&mut self, resource_refs: &mut Vec<(String, usize)>) -> PResult<Attrs> {
        self.expect("{")?;
        let mut attrs = Attrs::new();
        if self.eat("}") {
            return Ok(attrs);
        }
        loop {
            self.ws();
            let pos = self.pos;
            let r = self.rest();
            let n = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(r.len());
            if n == 0 || r.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
                return Err(self.err(format!(
                    "expected an attribute name, found {}",
                    self.found()
                )));
            }
            let name = r[..n].to_string();
            self.pos += n;
            let value = if self.eat("=") {
                self.attribute(resource_refs)?
            } else {
                Attribute::Unit
            };
            if attrs.set(name.clone(), value).is_some() {
                return Err(self.err_at(pos, format!("attribute '{name}' is given twice")));
            }
            if self.eat("}") {
                return Ok(attrs);
            }
            self.expect(",")?;
        }
    }

    fn attribute(&mut self, resource_refs: &mut Vec<(String, usize)>) -> PResult<Attribute> {
        self.ws();
        let pos = self.pos;
        match self.peek() {
            Some('"') => Ok(Attribute::Str(self.string()?)),
            Some('[') => {
                self.pos += 1;
                let mut v = Vec::new();
                if self.eat("]") {
                    return Ok(Attribute::Array(v));
                }
                loop {
                    v.push(self.attribute(resource_refs)?);
                    if self.eat("]") {
                        return Ok(Attribute::Array(v));
                    }
                    self.expect(",")?;
                }
            }
            _ => {
                if self.keyword("true") {
                    return Ok(Attribute::Bool(true));
                }
                if self.keyword("false") {
                    return Ok(Attribute::Bool(false));
                }
                if self.keyword("unit") {
                    return Ok(Attribute::Unit);
                }
                if self.rest().starts_with("tensor") {
                    return Ok(Attribute::Type(self.tensor_type()?));
                }
                if self.keyword("dense_resource") {
                    self.expect("<")?;
                    self.ws();
                    let npos = self.pos;
                    let name = self.name_chars().to_string();
                    if name.is_empty() {
                        return Err(self.err("expected a resource name"));
                    }
                    self.expect(">")?;
                    resource_refs.push((name.clone(), npos));
                    return Ok(Attribute::DenseResource(name));
                }
                if self.keyword("dense") {
                    self.expect("<")?;
                    let data = self.dense_data()?;
                    self.expect(">")?;
                    return Ok(Attribute::Dense(data));
                }
                match self.number()? {
                    Some(Num::Int(i)) => Ok(Attribute::Int(i)),
                    Some(Num::Float(f)) => Ok(Attribute::Float(F64Bits(f))),
                    Some(Num::Bool(b)) => Ok(Attribute::Bool(b)),
                    None => Err(self.err_at(
                        pos,
                        format!("expected an attribute value, found {}", self.found()),
                    )),
                }
            }
        }
    }

    fn dense_data(&mut self) -> PResult<DenseData> {
        let mut items = Vec::new();
        self.ws();
        let list = self.eat("[");
        if list && self.eat("]") {
            // An empty tensor: the kind of an empty list does not matter.
            return Ok(DenseData::Int(Vec::new()));
        }
        loop {
            self.ws();
            let pos = self.pos;
            let item = if self.keyword("true") {
                Num::Bool(true)
            } else if self.keyword("false") {
                Num::Bool(false)
            } else {
                self.number()?.ok_or_else(|| {
                    self.err_at(pos, format!("expected a number, found {}", self.found()))
                })?
            };
            items.push((item, pos));
            if !list || self.eat("]") {
                break;
            }
            self.expect(",")?;
        }
        let kind = |n: &Num| match n {
            Num::Int(_) => 0,
            Num::Float(_) => 1,
            Num::Bool(_) => 2,
        };
        let first = kind(&items[0].0);
        if let Some((_, pos)) = items.iter().find(|(n, _)| kind(n) != first) {
            return Err(self.err_at(*pos, "a dense value mixes integers, floats and booleans"));
        }
        Ok(match first {
            0 => DenseData::Int(
                items
                    .iter()
                    .map(|(n, _)| if let Num::Int(i) = n { *i } else { 0 })
                    .collect(),
            ),
            1 => DenseData::Float(
                items
                    .iter()
                    .map(|(n, _)| if let Num::Float(f) = n { *f } else { 0.0 })
                    .collect(),
            ),
            _ => DenseData::Bool(
                items
                    .iter()
                    .map(|(n, _)| matches!(n, Num::Bool(true)))
                    .collect(),
            ),
        }
        .canonical())
    }

    /// An integer, a float (`1.5`, `1e-3`, `inf`, `-inf`, `nan`, `nan(0xBITS)`), or None if no number is next.
    fn number(&mut self) -> PResult<Option<Num>> {
        self.ws();
        let start = self.pos;
        let neg = self.rest().starts_with('-');
        let body_start = start + neg as usize;
        let body = &self.text[body_start..];
        if body.starts_with("inf") {
            self.pos = body_start + 3;
            return Ok(Some(Num::Float(if neg {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })));
        }
        if !neg && body.starts_with("nan") {
            self.pos = body_start + 3;
            if self.rest().starts_with("(0x") {
                self.pos += 3;
                let r = self.rest();
                let n = r.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(r.len());
                let bits = u64::from_str_radix(&r[..n], 16)
                    .map_err(|_| self.err("expected hex NaN bits like nan(0x7FF8000000000001)"))?;
                self.pos += n;
                if !self.rest().starts_with(')') || !f64::from_bits(bits).is_nan() {
                    return Err(
                        self.err_at(start, "expected NaN bits like nan(0x7FF8000000000001)")
                    );
                }
                self.pos += 1;
                return Ok(Some(Num::Float(f64::from_bits(bits))));
            }
            return Ok(Some(Num::Float(f64::NAN)));
        }
        let bytes = body.as_bytes();
        let mut i = 0;
        let digits = |i: &mut usize| {
            let s = *i;
            while *i < bytes.len() && bytes[*i].is_ascii_digit() {
                *i += 1;
            }
            *i > s
        };
        if !digits(&mut i) {
            return Ok(None);
        }
        let mut is_float = false;
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            is_float = true;
            digits(&mut i);
        }
        if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
            let mut j = i + 1;
            if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                j += 1;
            }
            if digits(&mut j) {
                i = j;
                is_float = true;
            }
        }
        let text = &self.text[start..body_start + i];
        self.pos = body_start + i;
        if is_float {
            text.parse::<f64>()
                .map(|f| Some(Num::Float(f)))
                .map_err(|_| self.err_at(start, format!("invalid number '{text}'")))
        } else {
            text.parse::<i64>().map(|v| Some(Num::Int(v))).map_err(|_| {
                self.err_at(start, format!("integer '{text}' does not fit in 64 bits"))
            })
        }
    }

    fn string(&mut self) -> PResult<String> {
        self.ws();
        let start = self.pos;
        if !self.eat("\"") {
            return Err(self.err(format!("expected a string, found {}", self.found())));
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        loop {
            let Some((i, c)) = chars.next() else {
                return Err(self.err_at(start, "unterminated string"));
            };
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\n' => return Err(self.err_at(start, "unterminated string")),
                '\\' => {
                    let esc = chars.next().map(|(_, c)| c);
                    match esc {
                        Some('"') => out.push('"'),
                        Some('\\') => out.push('\\'),
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(h) if h.is_ascii_hexdigit() => {
                            let l = chars.next().map(|(_, c)| c).filter(char::is_ascii_hexdigit);
                            let Some(l) = l else {
                                return Err(
                                    self.err_at(self.pos + i, "expected two hex digits after '\\'")
                                );
                            };
                            let v = u8::from_str_radix(&format!("{h}{l}"), 16).unwrap_or(0);
                            if v >= 0x80 {
                                return Err(
                                    self.err_at(self.pos + i, "a '\\XX' escape must be below 80")
                                );
                            }
                            out.push(v as char);
                        }
                        _ => return Err(self.err_at(self.pos + i, "unknown escape in string")),
                    }
                }
                c => out.push(c),
            }
        }
    }

    // ---- resources ----

    fn resources(&mut self, m: &mut Module) -> PResult<()> {
        self.expect("{-#")?;
        if !self.rest().trim_start().starts_with("#-}") {
            let key = self.expect_ident("'dialect_resources'")?;
            if key != "dialect_resources" {
                return Err(self.err("expected 'dialect_resources' in the resource section"));
            }
            self.expect(":")?;
            self.expect("{")?;
            if !self.eat("}") {
                loop {
                    let d = self.expect_ident("a dialect name")?;
                    if d != "qc" {
                        return Err(self.err(format!(
                            "resources of dialect '{d}' are not supported (expected qc)"
                        )));
                    }
                    self.expect(":")?;
                    self.expect("{")?;
                    if !self.eat("}") {
                        loop {
                            self.resource_entry(m)?;
                            if self.eat("}") {
                                break;
                            }
                            self.expect(",")?;
                        }
                    }
                    if self.eat("}") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
        }
        self.expect("#-}")?;
        Ok(())
    }

    fn resource_entry(&mut self, m: &mut Module) -> PResult<()> {
        self.ws();
        let pos = self.pos;
        let name = self.name_chars().to_string();
        if name.is_empty() {
            return Err(self.err(format!("expected a resource name, found {}", self.found())));
        }
        if m.resources.get(&name).is_some() {
            return Err(self.err_at(pos, format!("resource '{name}' is defined twice")));
        }
        self.expect(":")?;
        self.ws();
        let blob = if self.keyword("external") {
            self.expect("<")?;
            let path_pos = self.pos;
            let path = self.string()?;
            let mut offset = None;
            let mut length = None;
            while self.eat(",") {
                let k = self.expect_ident("'offset' or 'length'")?;
                self.expect("=")?;
                let v = self.unsigned("a byte count")?;
                match k {
                    "offset" => offset = Some(v),
                    "length" => length = Some(v),
                    _ => {
                        return Err(self.err(format!(
                            "unknown external parameter '{k}' (expected offset, length)"
                        )))
                    }
                }
            }
            self.expect(">")?;
            let (Some(offset), Some(length)) = (offset, length) else {
                return Err(self.err_at(path_pos, "an external resource needs offset and length"));
            };
            map_external(&self.source.base_dir, &path, offset, length)
                .map_err(|e| self.err_at(path_pos, e))?
        } else {
            let spos = self.pos;
            let hex = self.string()?;
            decode_hex_blob(&hex).map_err(|e| self.err_at(spos, e))?
        };
        m.resources.insert(name, blob);
        Ok(())
    }
}

enum Num {
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// `eXmY` as an IEEE-default minifloat, for a name that also spells a special encoding (`e8m0`).
fn generic_minifloat(name: &str) -> Option<Minifloat> {
    let (e, m) = name.strip_prefix('e')?.split_once('m')?;
    let (e, m): (u8, u8) = (e.parse().ok()?, m.parse().ok()?);
    (format!("e{e}m{m}") == name && minifloat_widths_ok(e, m)).then(|| Minifloat::ieee(e, m))
}

/// Decodes MLIR's resource hex: `0x` + 4-byte little-endian alignment + data.
fn decode_hex_blob(s: &str) -> Result<Blob, String> {
    let hex = s
        .strip_prefix("0x")
        .ok_or("a resource blob must start with 0x")?;
    if !hex.is_ascii() {
        return Err("a resource blob must be hex digits".into());
    }
    if hex.len() % 2 != 0 || hex.len() < 8 {
        return Err(
            "a resource blob needs an even number of hex digits and a 4-byte alignment prefix"
                .into(),
        );
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for i in (0..hex.len()).step_by(2) {
        let b = u8::from_str_radix(&hex[i..i + 2], 16)
            .map_err(|_| format!("invalid hex digits '{}'", &hex[i..i + 2]))?;
        bytes.push(b);
    }
    let align = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if align == 0 || !align.is_power_of_two() {
        return Err(format!("resource alignment {align} is not a power of two"));
    }
    Ok(Blob::Owned {
        data: bytes[4..].into(),
        align,
    })
}

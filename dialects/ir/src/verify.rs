//! The verifier: checks a module and reports every error at once, each at its op's location.
//!
//! Checks: unique function names; every operand and returned value defined before use; op arity;
//! attributes present, of the right kind, and known (names with a `.` are discardable annotations);
//! quantized types valid for their tensor's shape; `dense_resource` names present in the module, with the
//! byte size the type implies for byte-aligned element types; return values matching the declared result
//! types; then each op's own verifier hook.

use crate::attr::Attribute;
use crate::diag::{Diagnostic, Diagnostics, Location};
use crate::module::{Func, Module};
use crate::ops::OpCtx;
use crate::resource::Blob;
use crate::types::{Dim, TensorType};

/// Verifies `m`; Ok if there is nothing to report.
pub fn verify_module(m: &Module) -> Result<(), Diagnostics> {
    let mut errs = Vec::new();
    for (i, f) in m.funcs.iter().enumerate() {
        if m.funcs[..i].iter().any(|g| g.name == f.name) {
            errs.push(Diagnostic::error(
                f.loc.clone(),
                format!("redefinition of function @{}", f.name),
            ));
        }
        verify_func(m, f, &mut errs);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(errs))
    }
}

fn check_type(t: &TensorType) -> Result<(), String> {
    if let Some(q) = t.elem.as_quant() {
        q.validate().map_err(|e| format!("invalid type {t}: {e}"))?;
        let shape: Vec<Option<u64>> = t.dims.iter().map(Dim::as_static).collect();
        q.validate_for_shape(&shape)
            .map_err(|e| format!("invalid type {t}: {e}"))?;
    }
    Ok(())
}

fn verify_func(m: &Module, f: &Func, errs: &mut Vec<Diagnostic>) {
    let mut defined = vec![false; f.num_values()];
    let constants = crate::ops::dense_constants(f);
    let mut push = |loc: &Location, msg: String| errs.push(Diagnostic::error(loc.clone(), msg));
    for &a in &f.args {
        if let Err(e) = check_type(f.ty(a)) {
            push(&f.loc, format!("argument of @{}: {e}", f.name));
        }
        defined[a.0 as usize] = true;
    }
    for op in &f.ops {
        let mut op_errs: Vec<String> = Vec::new();
        for (i, v) in op.operands.iter().enumerate() {
            match defined.get(v.0 as usize) {
                Some(true) => {}
                Some(false) => op_errs.push(format!("operand {i} is used before it is defined")),
                None => op_errs.push(format!("operand {i} refers to a value that does not exist")),
            }
        }
        let d = op.def;
        if !d.operands.accepts(op.operands.len()) {
            op_errs.push(format!(
                "'{}' takes {} operands, not {}",
                d.name,
                d.operands,
                op.operands.len()
            ));
        }
        if !d.results.accepts(op.results.len()) {
            op_errs.push(format!(
                "'{}' has {} results, not {}",
                d.name,
                d.results,
                op.results.len()
            ));
        }
        for spec in d.attrs {
            match op.attrs.get(spec.name) {
                None if spec.required => {
                    op_errs.push(format!("'{}' needs attribute '{}'", d.name, spec.name))
                }
                Some(a) if !spec.kind.accepts(a) => op_errs.push(format!(
                    "attribute '{}' of '{}' must be {}",
                    spec.name,
                    d.name,
                    spec.kind.describe()
                )),
                _ => {}
            }
        }
        for (name, value) in op.attrs.iter() {
            if !name.contains('.') && !d.attrs.iter().any(|s| s.name == name) {
                let known: Vec<&str> = d.attrs.iter().map(|s| s.name).collect();
                op_errs.push(format!(
                    "'{}' has no attribute '{name}' (it accepts: {})",
                    d.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
            if let Attribute::DenseResource(r) = value {
                // A constant's `value` holds its result's bytes; other resource attributes (discardable
                // annotations such as `calib.xtx`) only have to exist.
                check_resource(m, f, op, r, name == "value", &mut op_errs);
            }
            check_attr_types(name, value, &mut op_errs);
        }
        for &r in &op.results {
            if let Err(e) = check_type(f.ty(r)) {
                op_errs.push(e);
            }
        }
        // An op's own verifier may assume the generic checks passed.
        if op_errs.is_empty() {
            if let Err(e) = (d.verify)(&OpCtx {
                func: f,
                op,
                constants: &constants,
            }) {
                op_errs.push(e);
            }
        }
        for e in op_errs {
            push(&op.loc, e);
        }
        for &r in &op.results {
            if let Some(slot) = defined.get_mut(r.0 as usize) {
                if *slot {
                    push(&op.loc, "a result redefines a value".into());
                }
                *slot = true;
            }
        }
    }
    if f.ret.len() != f.result_types.len() {
        push(
            &f.ret_loc,
            format!(
                "@{} returns {} values but declares {} results",
                f.name,
                f.ret.len(),
                f.result_types.len()
            ),
        );
    }
    for (i, (v, t)) in f.ret.iter().zip(&f.result_types).enumerate() {
        if !defined.get(v.0 as usize).copied().unwrap_or(false) {
            push(&f.ret_loc, format!("returned value {i} is not defined"));
        } else if f.ty(*v) != t {
            push(
                &f.ret_loc,
                format!(
                    "returned value {i} has type {} but @{} declares {t}",
                    f.ty(*v),
                    f.name
                ),
            );
        }
    }
}

/// Tensor types held by attributes (also inside arrays) must be valid like any other type.
fn check_attr_types(name: &str, a: &Attribute, errs: &mut Vec<String>) {
    match a {
        Attribute::Type(t) => {
            if let Err(e) = check_type(t) {
                errs.push(format!("attribute '{name}': {e}"));
            }
        }
        Attribute::Array(v) => v.iter().for_each(|x| check_attr_types(name, x, errs)),
        _ => {}
    }
}

fn check_resource(
    m: &Module,
    f: &Func,
    op: &crate::module::Op,
    name: &str,
    check_size: bool,
    errs: &mut Vec<String>,
) {
    match m.resources.get(name) {
        None => errs.push(format!("resource '{name}' is not defined in the module")),
        Some(Blob::Elided) => {}
        Some(_) if !check_size => {}
        Some(blob) => {
            let Some(&r) = op.results.first() else { return };
            let ty = f.ty(r);
            if let (Some(elem), Some(n), Some(bytes)) =
                (ty.elem.byte_size(), ty.num_elements(), blob.bytes())
            {
                let want = n.saturating_mul(elem as u64);
                if bytes.len() as u64 != want {
                    errs.push(format!(
                        "resource '{name}' holds {} bytes but {ty} needs {want}",
                        bytes.len()
                    ));
                }
            }
        }
    }
}

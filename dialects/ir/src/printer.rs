//! The text printer: a [`Module`] to qc IR text.
//!
//! Output is canonical and deterministic: value names come from their hints (deduplicated with `_N`
//! suffixes) or are numbered in order of definition; attributes print in name order; resources print in
//! name order. Invariant: `print(parse(print(m))) == print(m)` for every valid module.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::attr::Attribute;
use crate::module::{Func, Module, Value};
use crate::resource::Blob;

/// Printing options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrintOptions {
    /// Print the bytes of in-memory resources (hex). When false they are elided: `dense_resource<name>`
    /// stays but the bytes do not print (external, memory-mapped references always print).
    pub resources: bool,
}

impl PrintOptions {
    /// Everything, resources included: what `qc opt -o` writes.
    pub fn full() -> Self {
        PrintOptions { resources: true }
    }

    /// Resources elided: what IR dumps show.
    pub fn dump() -> Self {
        PrintOptions { resources: false }
    }
}

/// Prints a module.
pub fn print_module(m: &Module, opts: PrintOptions) -> String {
    let mut out = Vec::new();
    write_module(m, opts, &mut out).expect("writing into memory cannot fail");
    String::from_utf8(out).expect("the printer writes UTF-8")
}

/// Writes the text of [`print_module`] to `w` without building it in memory first: resource bytes are
/// hex-encoded in chunks, so printing a module with large weights needs no second copy of them.
pub fn write_module(
    m: &Module,
    opts: PrintOptions,
    w: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut out = String::from("module {\n");
    for (i, f) in m.funcs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        print_func(&mut out, f);
    }
    out.push_str("}\n");
    w.write_all(out.as_bytes())?;
    let mut first = true;
    for (name, blob) in m.resources.iter() {
        let shown = match blob {
            Blob::Owned { .. } => opts.resources,
            Blob::Mapped { .. } => true,
            Blob::Elided => false,
        };
        if !shown {
            continue;
        }
        if first {
            w.write_all(b"\n{-#\n  dialect_resources: {\n    qc: {\n")?;
            first = false;
        } else {
            w.write_all(b",\n")?;
        }
        match blob {
            Blob::Owned { data, align } => {
                write!(w, "      {name}: \"0x")?;
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                let mut buf = Vec::with_capacity(64 * 1024);
                for &b in align.to_le_bytes().iter().chain(data.iter()) {
                    buf.push(HEX[(b >> 4) as usize]);
                    buf.push(HEX[(b & 15) as usize]);
                    if buf.len() >= 64 * 1024 {
                        w.write_all(&buf)?;
                        buf.clear();
                    }
                }
                w.write_all(&buf)?;
                w.write_all(b"\"")?;
            }
            Blob::Mapped {
                path,
                offset,
                length,
                ..
            } => write!(
                w,
                "      {name}: external<\"{}\", offset = {offset}, length = {length}>",
                crate::attr::escape(path)
            )?,
            Blob::Elided => {}
        }
    }
    if !first {
        w.write_all(b"\n    }\n  }\n#-}\n")?;
    }
    Ok(())
}

/// Value names for one function.
struct Names {
    names: Vec<Option<String>>,
}

impl Names {
    fn new(f: &Func) -> Self {
        let mut used = BTreeSet::new();
        let mut names = vec![None; f.num_values()];
        let (mut arg_counter, mut counter) = (0usize, 0usize);
        let defs = f.args.iter().map(|v| (*v, true)).chain(
            f.ops
                .iter()
                .flat_map(|o| o.results.iter().map(|v| (*v, false))),
        );
        for (v, is_arg) in defs {
            let name = match &f.value(v).name {
                Some(hint) => {
                    let mut name = hint.clone();
                    let mut k = 1;
                    while used.contains(&name) {
                        name = format!("{hint}_{k}");
                        k += 1;
                    }
                    name
                }
                None => loop {
                    let name = if is_arg {
                        arg_counter += 1;
                        format!("arg{}", arg_counter - 1)
                    } else {
                        counter += 1;
                        (counter - 1).to_string()
                    };
                    if !used.contains(&name) {
                        break name;
                    }
                },
            };
            used.insert(name.clone());
            names[v.0 as usize] = Some(name);
        }
        Names { names }
    }

    fn get(&self, v: Value) -> &str {
        self.names[v.0 as usize]
            .as_deref()
            .unwrap_or("<<UNDEFINED>>")
    }
}

fn print_func(out: &mut String, f: &Func) {
    let names = Names::new(f);
    let args: Vec<String> = f
        .args
        .iter()
        .map(|&a| format!("%{}: {}", names.get(a), f.ty(a)))
        .collect();
    let _ = write!(out, "  func.func @{}({})", f.name, args.join(", "));
    match f.result_types.len() {
        0 => {}
        1 => {
            let _ = write!(out, " -> {}", f.result_types[0]);
        }
        _ => {
            let tys: Vec<String> = f.result_types.iter().map(|t| t.to_string()).collect();
            let _ = write!(out, " -> ({})", tys.join(", "));
        }
    }
    out.push_str(" {\n");
    for op in &f.ops {
        out.push_str("    ");
        if !op.results.is_empty() {
            let rs: Vec<String> = op
                .results
                .iter()
                .map(|&r| format!("%{}", names.get(r)))
                .collect();
            let _ = write!(out, "{} = ", rs.join(", "));
        }
        out.push_str(op.name());
        if !op.operands.is_empty() {
            let os: Vec<String> = op
                .operands
                .iter()
                .map(|&o| format!("%{}", names.get(o)))
                .collect();
            let _ = write!(out, " {}", os.join(", "));
        }
        if !op.attrs.is_empty() {
            let items: Vec<String> = op
                .attrs
                .iter()
                .map(|(k, v)| match v {
                    Attribute::Unit => k.to_string(),
                    v => format!("{k} = {v}"),
                })
                .collect();
            let _ = write!(out, " {{{}}}", items.join(", "));
        }
        let ins: Vec<String> = op.operands.iter().map(|&o| f.ty(o).to_string()).collect();
        let outs: Vec<String> = op.results.iter().map(|&r| f.ty(r).to_string()).collect();
        let outs = if outs.len() == 1 {
            outs[0].clone()
        } else {
            format!("({})", outs.join(", "))
        };
        let _ = writeln!(out, " : ({}) -> {}", ins.join(", "), outs);
    }
    out.push_str("    return");
    if !f.ret.is_empty() {
        let vs: Vec<String> = f
            .ret
            .iter()
            .map(|&v| format!("%{}", names.get(v)))
            .collect();
        let ts: Vec<String> = f.ret.iter().map(|&v| f.ty(v).to_string()).collect();
        let _ = write!(out, " {} : {}", vs.join(", "), ts.join(", "));
    }
    out.push_str("\n  }\n");
}

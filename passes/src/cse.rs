//! `cse`: common subexpression elimination.
//!
//! Contract: of two pure ops with the same name, operands, attributes and result types, the later one is
//! removed and its results are replaced by the earlier one's. Values computed are unchanged.

use std::collections::BTreeMap;
use std::fmt::Write;

use qc_ir::module::{Module, Value};
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOptions};
use qc_ir::Diagnostic;

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "cse",
    summary: "merge identical pure ops",
    options: &[],
    build: |_: &PassOptions| Ok(Box::new(Cse)),
};

/// The pass.
pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, _cx: &PassContext) -> Result<Changed, Diagnostic> {
        let mut changed = false;
        for f in &mut m.funcs {
            let mut seen: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            let mut subst: BTreeMap<Value, Value> = BTreeMap::new();
            let ops = std::mem::take(&mut f.ops);
            let mut kept = Vec::with_capacity(ops.len());
            for mut op in ops {
                for v in &mut op.operands {
                    if let Some(&n) = subst.get(v) {
                        *v = n;
                    }
                }
                if !op.def.pure {
                    kept.push(op);
                    continue;
                }
                // The key spells out everything that defines the op's value.
                let mut key = format!("{}|{:?}|", op.name(), op.operands);
                for (k, v) in op.attrs.iter() {
                    let _ = write!(key, "{k}={v};");
                }
                for &r in &op.results {
                    let _ = write!(key, "|{}", f.ty(r));
                }
                match seen.get(&key) {
                    Some(prev) => {
                        for (&r, &p) in op.results.iter().zip(prev) {
                            subst.insert(r, p);
                        }
                        changed = true;
                    }
                    None => {
                        seen.insert(key, op.results.clone());
                        kept.push(op);
                    }
                }
            }
            f.ops = kept;
            f.replace_uses(&subst);
        }
        Ok(Changed::from_bool(changed))
    }
}

//! `dce`: dead code elimination.
//!
//! Contract: removes pure ops none of whose results is used (transitively), and resources no op refers
//! to. What the functions return is unchanged.

use std::collections::BTreeSet;

use qc_ir::attr::Attribute;
use qc_ir::module::Module;
use qc_ir::pass::{Changed, Pass, PassContext, PassInfo, PassOptions};
use qc_ir::Diagnostic;

/// Registration.
pub const INFO: PassInfo = PassInfo {
    name: "dce",
    summary: "remove unused pure ops and unreferenced resources",
    options: &[],
    build: |_: &PassOptions| Ok(Box::new(Dce)),
};

/// The pass.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn run(&self, m: &mut Module, _cx: &PassContext) -> Result<Changed, Diagnostic> {
        let mut changed = false;
        for f in &mut m.funcs {
            let mut live = vec![false; f.num_values()];
            for v in &f.ret {
                live[v.0 as usize] = true;
            }
            let mut keep = vec![true; f.ops.len()];
            for (i, op) in f.ops.iter().enumerate().rev() {
                if op.def.pure && !op.results.iter().any(|r| live[r.0 as usize]) {
                    keep[i] = false;
                    changed = true;
                    continue;
                }
                for v in &op.operands {
                    live[v.0 as usize] = true;
                }
            }
            let mut it = keep.iter();
            f.ops.retain(|_| *it.next().unwrap_or(&true));
        }
        let used: BTreeSet<String> = m
            .funcs
            .iter()
            .flat_map(|f| &f.ops)
            .flat_map(|op| op.attrs.iter())
            .filter_map(|(_, a)| match a {
                Attribute::DenseResource(name) => Some(name.clone()),
                _ => None,
            })
            .collect();
        let unused: Vec<String> = m
            .resources
            .iter()
            .map(|(n, _)| n.to_string())
            .filter(|n| !used.contains(n))
            .collect();
        for name in unused {
            m.resources.remove(&name);
            changed = true;
        }
        Ok(Changed::from_bool(changed))
    }
}

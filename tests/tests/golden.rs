//! Golden tests: every .qir file under roundtrip/, invalid/, instrumentation/ and passes/<pass>/ is run as
//! its first line says, and its output compared with the snapshot named after its path.
//!
//! `QC_GOLDEN_FILTER=passes/gptq cargo test -p qc-tests --test golden` runs only the files whose path
//! (relative to tests/) starts with the filter: bless one pass's snapshots without touching others'.

use std::path::{Path, PathBuf};

fn qir_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            qir_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "qir") {
            out.push(p);
        }
    }
}

fn check(folder: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    qir_files(&root.join(folder), &mut files);
    assert!(!files.is_empty(), "no golden files under {folder}");
    let filter = std::env::var("QC_GOLDEN_FILTER").unwrap_or_default();
    for path in files {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if !rel.starts_with(&filter) {
            continue;
        }
        let out = qc_tests::run_golden(root, &rel);
        let name = rel.trim_end_matches(".qir").replace('/', "__");
        insta::with_settings!({ prepend_module_to_snapshot => false, description => rel.clone() }, {
            insta::assert_snapshot!(name, out);
        });
    }
}

#[test]
fn roundtrip() {
    check("roundtrip");
}

#[test]
fn invalid() {
    check("invalid");
}

#[test]
fn passes() {
    check("passes");
}

#[test]
fn instrumentation() {
    check("instrumentation");
}

/// Printing the output of a round-trip test and parsing it again gives the same text.
#[test]
fn roundtrip_outputs_are_fixed_points() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let registry = qc::registry();
    let mut files = Vec::new();
    qir_files(&root.join("roundtrip"), &mut files);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let m = qc_ir::parse_module(&text, &qc_ir::Source::file(&path), &registry).unwrap();
        for opts in [qc_ir::PrintOptions::full(), qc_ir::PrintOptions::dump()] {
            let once = qc_ir::print_module(&m, opts);
            let m2 = qc_ir::parse_module(&once, &qc_ir::Source::file(&path), &registry)
                .unwrap_or_else(|d| panic!("{}: reparse failed: {d}\n{once}", path.display()));
            assert_eq!(once, qc_ir::print_module(&m2, opts), "{}", path.display());
        }
    }
}

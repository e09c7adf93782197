//! Fuzz target `onnx_load`: any bytes, written as `model.onnx` into a private temporary folder, go
//! through `qc::import::onnx::load::load_model`; it must return (a model or a located diagnostic) and never
//! panic. The folder also holds `w.bin` (64 bytes) and `sub/w.bin`, so inputs whose external data names
//! them exercise the external-data checks, range checks and mappings, without reading the working tree.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qc::import::onnx::load::load_model;
use qc_ir::diag::Location;

/// The model path inside the private folder (created once per process).
fn model_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qc-fuzz-onnx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("create the model folder");
        let w: Vec<u8> = (0u8..64).collect();
        std::fs::write(dir.join("w.bin"), &w).expect("write w.bin");
        std::fs::write(dir.join("sub/w.bin"), &w).expect("write sub/w.bin");
        dir.join("model.onnx")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = model_path();
    std::fs::write(path, data).expect("write the model");
    match load_model(path) {
        Ok(m) => {
            // Touch every tensor's bytes: ranges must lie inside their mappings.
            for t in &m.initializers {
                let _ = t.raw_bytes();
            }
            for n in &m.nodes {
                assert!(!n.op_type.is_empty());
            }
        }
        Err(d) => {
            // Every diagnostic names the file and a field path.
            match &d.loc {
                Location::Model { file, path } => assert!(!file.is_empty() && !path.is_empty()),
                other => panic!("diagnostic without a model location: {other:?}"),
            }
        }
    }
});

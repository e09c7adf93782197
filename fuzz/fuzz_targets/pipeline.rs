//! Fuzz target `pipeline`: pass-pipeline strings. The input is an 8-byte seed followed by a pipeline
//! text. Parsing the text with `qc_passes::registry()` must not panic; when it succeeds, the pipeline runs
//! on the random valid module `qc_tests::gen::gen_module_with(seed, ..)` with verification after every
//! pass. A pass may reject the module with a diagnostic but must not panic, and its output must
//! round-trip through the text form. For modules with only static shapes (odd seeds), which are
//! consistent at run time too, the IR must also verify after every pass; modules with dynamic dimensions
//! can verify yet be impossible to run, and a fold may rightly expose that.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qc_ir::pass::{Instrumentation, PassManager, PipelineError};
use qc_ir::{parse_module, print_module, PrintOptions, Source};
use qc_tests::gen::{gen_module_with, GenOptions};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (seed, text) = data.split_at(8);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let passes = qc_passes::registry();
    let Ok(pipeline) = passes.parse_pipeline(text) else {
        return;
    };
    let seed = u64::from_le_bytes(seed.try_into().expect("8 bytes")) % 100_000;
    let static_shapes = seed % 2 == 1;
    let mut m = gen_module_with(seed, GenOptions { static_shapes });
    let registry = qc::registry();
    let pm = PassManager::new(pipeline, Instrumentation::default());
    match pm.run(&mut m, &registry, &mut std::io::sink()) {
        Ok(()) => {}
        Err(PipelineError::Verify { pass, diags }) if static_shapes => {
            panic!("seed {seed}, pipeline {text:?}: IR does not verify after {pass}: {diags:?}")
        }
        Err(_) => return,
    }
    let t1 = print_module(&m, PrintOptions::full());
    let m2 = parse_module(&t1, &Source::named("<pipeline>"), &registry).unwrap_or_else(|e| {
        panic!("seed {seed}, pipeline {text:?}: output does not reparse: {e:?}\n{t1}")
    });
    assert_eq!(
        t1,
        print_module(&m2, PrintOptions::full()),
        "seed {seed}, pipeline {text:?}"
    );
});

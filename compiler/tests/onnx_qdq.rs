//! Cast to and from FP8 / FP4 / E8M0 / INT4 and QuantizeLinear / DequantizeLinear /
//! DynamicQuantizeLinear against the ONNX reference evaluator, on inputs with NaN, infinities and
//! overflow: every output must be bit-identical (NaN equal to NaN). The cases and reference outputs come
//! from scripts/onnx/qdq_cases.py (needs python3 with onnx and numpy: .ci/install-python.sh).

use std::path::Path;
use std::process::Command;

fn f32s(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = qc::npy::read_npy(path).unwrap_or_else(|e| panic!("{e}"));
    (a.shape.clone(), a.to_f32())
}

#[test]
fn qdq_and_minifloat_casts_match_the_onnx_reference_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let gen = Command::new("python3")
        .arg(root.join("scripts/onnx/qdq_cases.py"))
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    assert!(
        gen.status.success(),
        "scripts/onnx/qdq_cases.py failed (run .ci/install-python.sh):\n{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let cases = std::fs::read_to_string(dir.path().join("cases.txt")).unwrap();
    let mut checked = 0;
    for line in cases.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (name, input, outs) = (words[0], words[1], &words[2..]);
        let out_dir = dir.path().join(format!("out_{name}"));
        let run = Command::new(env!("CARGO_BIN_EXE_qc"))
            .arg("run")
            .arg(dir.path().join(format!("{name}.onnx")))
            .arg("--input")
            .arg(format!(
                "x={}",
                dir.path().join(format!("{input}.npy")).display()
            ))
            .arg("-o")
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        for o in outs {
            let (gs, got) = f32s(&out_dir.join(format!("{o}.npy")));
            let (rs, want) = f32s(&dir.path().join(format!("ref_{name}_{o}.npy")));
            assert_eq!(gs, rs, "{name}/{o}: shape");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                    "{name}/{o}[{i}]: qc {g} vs ONNX {w}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} outputs checked");
}

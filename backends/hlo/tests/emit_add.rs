//! Tests of the StableHLO backend: the emitted module is what it claims and MLIR's verifier accepts it;
//! MLIR's parser and verifier reject broken modules with located diagnostics.

use qc_backend_hlo::{emit_add, verify_text, Error, ADD_FUNCTION};

#[test]
fn add_module_has_the_promised_signature_and_body() {
    let text = emit_add(&[4]).unwrap();
    assert!(text.contains(&format!("func.func @{ADD_FUNCTION}(%arg0: tensor<4xf32>, %arg1: tensor<4xf32>) -> tensor<4xf32>")), "{text}");
    assert!(
        text.contains(r#"%0 = "stablehlo.add"(%arg0, %arg1) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>"#),
        "{text}"
    );
    assert!(text.contains("return %0 : tensor<4xf32>"), "{text}");
    assert!(text.trim_start().starts_with("module"), "{text}");
    assert_eq!(text.matches("stablehlo.").count(), 1, "{text}");
}

#[test]
fn other_shapes_including_rank_0() {
    let text = emit_add(&[2, 3]).unwrap();
    assert!(
        text.contains("(tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>"),
        "{text}"
    );
    let text = emit_add(&[]).unwrap();
    assert!(
        text.contains("(tensor<f32>, tensor<f32>) -> tensor<f32>"),
        "{text}"
    );
}

#[test]
fn emitted_text_reparses_verifies_and_prints_identically() {
    for shape in [&[4][..], &[2, 3], &[]] {
        let text = emit_add(shape).unwrap();
        assert_eq!(verify_text(&text).unwrap(), text);
    }
}

#[test]
fn verifier_rejects_a_return_of_the_wrong_type() {
    let text = emit_add(&[4])
        .unwrap()
        .replace("return %0 : tensor<4xf32>", "return %arg0 : tensor<4xf32>");
    // Still valid: returning an argument of the right type.
    verify_text(&text).unwrap();
    let bad = r#"
module {
  func.func @add(%a: tensor<4xf32>, %b: tensor<4xf32>) -> tensor<4xf32> {
    %0 = "stablehlo.add"(%a, %b) : (tensor<4xf32>, tensor<4xf32>) -> tensor<8xf32>
    return %0 : tensor<8xf32>
  }
}"#;
    match verify_text(bad) {
        Err(Error::Rejected(diagnostics)) => {
            assert!(
                diagnostics.contains("type of return operand 0"),
                "{diagnostics}"
            );
            assert!(
                diagnostics.contains("loc(\"-\":5:5)"),
                "diagnostics carry no location: {diagnostics}"
            );
        }
        other => panic!("verified a module returning the wrong type: {other:?}"),
    }
}

#[test]
fn parser_errors_are_reported_with_diagnostics() {
    match verify_text("module { func.func @f( }") {
        Err(Error::Rejected(diagnostics)) => {
            assert!(diagnostics.contains("loc(\"-\":1:"), "{diagnostics}")
        }
        other => panic!("parsed garbage: {other:?}"),
    }
}

//! Every named format round-trips through text as a tensor element type, in alias and in full form.

use qc_ir::quant::named_formats;
use qc_ir::types::{ElemType, TensorType};
use std::sync::Arc;

#[test]
fn every_named_format_round_trips_as_an_element_type() {
    for f in named_formats() {
        let t = TensorType::new(&[256, 256], ElemType::Quant(Arc::new(f.ty.clone())));
        let text = t.to_string();
        assert_eq!(text, format!("tensor<256x256x!quant.{}>", f.name));
        assert_eq!(qc_ir::parse_type(&text).unwrap(), t, "{text}");
        // The full form names the same type and prints back as the alias.
        let full = format!("tensor<256x256x!quant.fmt<{}>>", f.ty.params_text());
        let parsed = qc_ir::parse_type(&full).unwrap_or_else(|d| panic!("{full}: {d}"));
        assert_eq!(parsed, t, "{full}");
        assert_eq!(parsed.to_string(), text);
    }
}

#[test]
fn the_formats_table_lists_every_named_format() {
    let table = qc::cmd::formats::table();
    for f in named_formats() {
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(f.name)),
            "{} missing",
            f.name
        );
    }
    insta::assert_snapshot!(table);
}

//! `qc formats --qsnr` numbers against the reference sheet (shared/specs/FORMATS.md, QSNR section): every
//! value the sheet gives must be matched within 0.2 dB (the report's mean over 32 seeds).

use qc_quant::qsnr::{qsnr_report, REFERENCE};

#[test]
fn qsnr_matches_the_sheet_within_0_2_db() {
    let rows = qsnr_report();
    let mut failures = Vec::new();
    for &(fmt, dist, rotated, want) in REFERENCE {
        let row = rows
            .iter()
            .find(|r| r.format == fmt && r.dist == dist)
            .unwrap_or_else(|| panic!("no QSNR row for {fmt} on {}", dist.name()));
        let got = if rotated { row.hadamard } else { row.plain };
        let line = format!(
            "{fmt:12} {:10} hadamard={rotated:5} got {got:6.2} dB, sheet {want:5.1} dB",
            dist.name()
        );
        println!("{line}");
        if (got - want).abs() > 0.2 || got.is_nan() {
            failures.push(line);
        }
    }
    for r in &rows {
        assert!(
            r.plain.is_finite() && r.hadamard.is_finite(),
            "{} on {}: QSNR is not finite",
            r.format,
            r.dist.name()
        );
    }
    assert!(
        failures.is_empty(),
        "QSNR differs from the sheet by more than 0.2 dB:\n{}",
        failures.join("\n")
    );
}

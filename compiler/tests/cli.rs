//! End-to-end tests of the `qc` binary: exit codes, diagnostics, pipes and output files.

use std::io::Write;
use std::process::{Command, Stdio};

fn qc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qc"))
}

fn run_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = qc()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

const GOOD: &str = "func.func @f(%x: tensor<2xf32>) -> tensor<2xf32> {\n  %a = nn.identity %x : (tensor<2xf32>) -> tensor<2xf32>\n  return %a : tensor<2xf32>\n}\n";

#[test]
fn garbage_on_stdin_exits_2_with_line_and_column() {
    let out = run_with_stdin(&["opt", "-"], "garbage\n");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("<stdin>:1:1: error: "), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn print_ir_after_all_prints_mlir_style_banners() {
    let out = run_with_stdin(
        &[
            "opt",
            "-",
            "--passes",
            "canonicalize,cse,dce",
            "--print-ir-after-all",
        ],
        GOOD,
    );
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8(out.stderr).unwrap();
    for p in ["canonicalize", "cse", "dce"] {
        assert!(
            err.contains(&format!(
                "// -----// IR Dump After {p} //----- //\nmodule {{"
            )),
            "{err}"
        );
    }
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("return %x : tensor<2xf32>"));
}

#[test]
fn output_file_is_written_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.qir");
    let ok = run_with_stdin(&["opt", "-", "-o", out_path.to_str().unwrap()], GOOD);
    assert_eq!(ok.status.code(), Some(0));
    let first = std::fs::read_to_string(&out_path).unwrap();
    assert!(first.starts_with("module {"));
    // A failing run leaves the previous output untouched and no temporary file behind.
    let bad = run_with_stdin(
        &["opt", "-", "-o", out_path.to_str().unwrap()],
        "func.func @f( {",
    );
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), first);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn tree_dir_gets_one_numbered_file_per_pass() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("dumps");
    let out = run_with_stdin(
        &[
            "opt",
            "-",
            "--passes",
            "canonicalize,dce",
            "--print-ir-tree-dir",
            tree.to_str().unwrap(),
        ],
        GOOD,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(&tree)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["00_input.qir", "01_canonicalize.qir", "02_dce.qir"]);
    let after = std::fs::read_to_string(tree.join("01_canonicalize.qir")).unwrap();
    assert!(!after.contains("nn.identity"));
}

#[test]
fn time_passes_reports_each_pass() {
    let out = run_with_stdin(&["opt", "-", "--passes", "cse,dce", "--time-passes"], GOOD);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("Execution time report"), "{err}");
    assert!(
        err.contains(" cse\n") && err.contains(" dce\n") && err.contains("(A) verifier"),
        "{err}"
    );
}

#[test]
fn closed_pipe_ends_quietly() {
    // Enough output to overflow the pipe buffer after the reader has gone.
    let mut big = String::from("func.func @f(%x: tensor<2xf32>) -> tensor<2xf32> {\n");
    for i in 0..20000 {
        big += &format!("  %v{i} = nn.neg %x : (tensor<2xf32>) -> tensor<2xf32>\n");
    }
    big += "  return %x : tensor<2xf32>\n}\n";
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.qir");
    std::fs::write(&input, big).unwrap();
    let mut child = qc()
        .args(["opt", input.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_lists_only_working_subcommands() {
    let out = qc().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("opt") && help.contains("formats"), "{help}");
    let bad = qc().arg("frobnicate").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn missing_input_file_is_a_diagnostic() {
    let out = qc().args(["opt", "/nonexistent/x.qir"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .starts_with("error: cannot read /nonexistent/x.qir"));
}

#[test]
fn formats_lists_the_named_formats() {
    let out = qc().arg("formats").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("nvfp4 ") && l.contains("4.5") && l.contains("ue4m3")),
        "{table}"
    );
}

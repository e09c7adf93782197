//! `qc inspect ARTIFACT`: what a `.qca` artifact holds (target, entry signature, formats, sizes,
//! provenance, parts); `--extract DIR` writes each member as a plain file.

use std::path::PathBuf;

use clap::Args;
use qc_runtime::artifact::{self, Artifact, TensorSig, MANIFEST};

use crate::output::{input_error, write_stdout, Failure};

/// Arguments of `qc inspect`.
#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    /// The artifact (.qca) written by `qc compile --target ...`.
    pub artifact: PathBuf,
    /// Write every member (manifest.json and the parts) into this folder, one plain file each (created
    /// if missing; files are written atomically).
    #[arg(long, value_name = "DIR")]
    pub extract: Option<PathBuf>,
}

fn sig(s: &TensorSig) -> String {
    let dims: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
    let mut t = dims.join("x");
    if !t.is_empty() {
        t.push('x');
    }
    format!("{}: tensor<{t}{}>", s.name, s.dtype)
}

/// The summary table of `a`, whose file has `size` bytes.
pub fn summary(a: &Artifact, path: &str, size: u64) -> String {
    let m = &a.manifest;
    let p = &m.provenance;
    let mut rows: Vec<(&str, String)> = vec![
        ("artifact", format!("{path} ({size} bytes)")),
        ("format", format!("qca version {}", m.format_version)),
        ("target", m.target.clone()),
        ("entry", format!("@{}", m.entry)),
    ];
    for (i, s) in m.inputs.iter().enumerate() {
        rows.push((if i == 0 { "inputs" } else { "" }, sig(s)));
    }
    for (i, s) in m.outputs.iter().enumerate() {
        rows.push((if i == 0 { "outputs" } else { "" }, sig(s)));
    }
    rows.push((
        "formats",
        if m.formats.is_empty() {
            "none (float)".into()
        } else {
            m.formats.join(", ")
        },
    ));
    rows.push(("constants", format!("{} bytes", m.constant_bytes)));
    rows.push(("qc", p.qc_version.clone()));
    rows.push(("model", format!("{} (sha256 {})", p.model, p.model_sha256)));
    rows.push(("pipeline", p.pipeline.clone()));
    rows.push((
        "shapes",
        if p.shapes.is_empty() {
            "as declared".into()
        } else {
            p.shapes.join(" ")
        },
    ));
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<10} {v}\n"));
    }
    out.push_str("parts:\n");
    let w = m
        .parts
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    out.push_str(&format!("  {:<w$}  {:>12}  sha256\n", "name", "bytes"));
    for part in &m.parts {
        out.push_str(&format!(
            "  {:<w$}  {:>12}  {}\n",
            part.name, part.size, part.sha256
        ));
    }
    out
}

/// Runs `qc inspect`.
pub fn run(args: &InspectArgs) -> Result<(), Failure> {
    let bytes = std::fs::read(&args.artifact)
        .map_err(|e| input_error(format!("cannot read {}: {e}", args.artifact.display())))?;
    let a = artifact::from_bytes(&bytes)
        .map_err(|e| input_error(format!("{}: {e}", args.artifact.display())))?;
    if let Some(dir) = &args.extract {
        std::fs::create_dir_all(dir)
            .map_err(|e| input_error(format!("cannot create {}: {e}", dir.display())))?;
        let json = serde_json_manifest(&bytes)?;
        qc_ir::util::write_atomic(&dir.join(MANIFEST), &json).map_err(input_error)?;
        for (name, b) in &a.parts {
            qc_ir::util::write_atomic(&dir.join(name), b).map_err(input_error)?;
        }
        return Ok(());
    }
    write_stdout(summary(&a, &args.artifact.display().to_string(), bytes.len() as u64).as_bytes())
}

/// The manifest member's bytes, as stored.
fn serde_json_manifest(bytes: &[u8]) -> Result<Vec<u8>, Failure> {
    let entries = artifact::list_parts_bytes(bytes).map_err(|e| input_error(e.to_string()))?;
    let m = entries
        .iter()
        .find(|p| p.name == MANIFEST)
        .ok_or_else(|| input_error("the artifact has no manifest"))?;
    Ok(bytes[m.offset as usize..(m.offset + m.size) as usize].to_vec())
}

//! Tests of the PTX backend. The ptxas tests fail when ptxas cannot be found, unless
//! `QC_ALLOW_NO_PTXAS=1` is set: CI installs ptxas (`.ci/install-toolchain.sh`), so it really checks.

use std::path::PathBuf;

use qc_backend_ptx::ptxas::{assemble, find_ptxas};
use qc_backend_ptx::{emit_ptx, Error, GpuTarget, ADD_F32_KERNEL};

#[test]
fn canonical_names_parse_to_themselves() {
    for t in GpuTarget::ALL {
        assert_eq!(GpuTarget::parse(t.name()).unwrap(), t);
        assert_eq!(t.name().parse::<GpuTarget>().unwrap(), t);
        assert_eq!(t.to_string(), t.name());
    }
}

#[test]
fn plain_names_of_arch_specific_targets_mean_the_a_variant() {
    assert_eq!(GpuTarget::parse("sm_90").unwrap(), GpuTarget::Sm90a);
    assert_eq!(GpuTarget::parse("sm_100").unwrap(), GpuTarget::Sm100a);
    assert_eq!(GpuTarget::parse("sm_120").unwrap(), GpuTarget::Sm120a);
    assert_eq!(GpuTarget::parse("sm_80").unwrap(), GpuTarget::Sm80);
    assert_eq!(GpuTarget::parse("sm_89").unwrap(), GpuTarget::Sm89);
}

#[test]
fn unsupported_names_are_rejected() {
    for bad in [
        "",
        "sm_70",
        "sm_75",
        "sm_80a",
        "sm_89a",
        "sm_90f",
        "sm_101a",
        "SM_90A",
        "sm90a",
        "x86-64-v3",
    ] {
        match GpuTarget::parse(bad) {
            Err(Error::UnknownTarget(name)) => assert_eq!(name, bad),
            other => panic!("{bad:?} parsed as {other:?}"),
        }
    }
}

#[test]
fn ptx_declares_target_and_kernel_entry() {
    for t in GpuTarget::ALL {
        let ptx = emit_ptx(t).unwrap();
        let target_line = format!(".target {}", t.name());
        assert!(
            ptx.lines().any(|l| l.trim() == target_line),
            "{t}: no `{target_line}` line:\n{ptx}"
        );
        assert!(ptx.contains(".version "), "{t}: no .version:\n{ptx}");
        assert!(ptx.contains(".address_size 64"), "{t}:\n{ptx}");
        assert!(
            ptx.contains(&format!(".visible .entry {ADD_F32_KERNEL}(")),
            "{t}: no kernel entry:\n{ptx}"
        );
        assert_eq!(ptx.matches(".entry").count(), 1, "{t}:\n{ptx}");
        // The element-wise add is there, on global memory, indexed by the thread's global id.
        assert!(
            ptx.contains("add.rn.f32") || ptx.contains("add.f32"),
            "{t}: no f32 add:\n{ptx}"
        );
        assert!(
            ptx.contains("ld.global") && ptx.contains("st.global"),
            "{t}: no global memory access:\n{ptx}"
        );
        for sreg in ["%tid.x", "%ctaid.x", "%ntid.x"] {
            assert!(ptx.contains(sreg), "{t}: {sreg} unused:\n{ptx}");
        }
    }
}

#[test]
fn ptx_isa_version_is_the_lowest_that_supports_the_target() {
    // NVIDIA's PTX ISA introduced these targets in these versions; a lower .version keeps the PTX
    // loadable by older drivers.
    let expected = [
        (GpuTarget::Sm80, "7.0"),
        (GpuTarget::Sm89, "7.8"),
        (GpuTarget::Sm90a, "8.0"),
        (GpuTarget::Sm100a, "8.6"),
        (GpuTarget::Sm120a, "8.7"),
    ];
    for (t, version) in expected {
        let ptx = emit_ptx(t).unwrap();
        let line = format!(".version {version}");
        assert!(
            ptx.lines().any(|l| l.trim() == line),
            "{t}: no `{line}` line:\n{ptx}"
        );
    }
}

/// ptxas, or `None` when it is missing and `QC_ALLOW_NO_PTXAS=1` allows that.
fn ptxas_or_allowed_skip() -> Option<PathBuf> {
    match find_ptxas() {
        Ok(path) => Some(path),
        Err(e) if std::env::var("QC_ALLOW_NO_PTXAS").as_deref() == Ok("1") => {
            eprintln!("note: QC_ALLOW_NO_PTXAS=1 and {e}; ptxas checks skipped");
            None
        }
        Err(e) => panic!("{e}\n(set QC_ALLOW_NO_PTXAS=1 to skip the ptxas checks)"),
    }
}

#[test]
fn ptxas_accepts_the_ptx_of_every_target() {
    let Some(ptxas) = ptxas_or_allowed_skip() else {
        return;
    };
    for t in GpuTarget::ALL {
        let ptx = emit_ptx(t).unwrap();
        let cubin = assemble(&ptxas, &ptx, t).unwrap_or_else(|e| panic!("{t}: {e}\n{ptx}"));
        assert_eq!(&cubin[..4], b"\x7fELF", "{t}: cubin is not ELF");
        let name = ADD_F32_KERNEL.as_bytes();
        assert!(
            cubin.windows(name.len()).any(|w| w == name),
            "{t}: kernel name missing from cubin"
        );
    }
}

#[test]
fn ptxas_rejections_are_reported_with_diagnostics() {
    let Some(ptxas) = ptxas_or_allowed_skip() else {
        return;
    };
    // sm_90a PTX uses `.target sm_90a`, which ptxas refuses to assemble for sm_80.
    let ptx = emit_ptx(GpuTarget::Sm90a).unwrap();
    match assemble(&ptxas, &ptx, GpuTarget::Sm80) {
        Err(Error::Ptxas { arch, stderr, .. }) => {
            assert_eq!(arch, "sm_80");
            assert!(!stderr.trim().is_empty(), "ptxas gave no diagnostics");
        }
        other => panic!("sm_90a PTX assembled for sm_80: {other:?}"),
    }
    // Broken PTX.
    let broken = ptx
        .replace("add.rn.f32", "add.rn.f33")
        .replace("add.f32", "add.f33");
    assert!(matches!(
        assemble(&ptxas, &broken, GpuTarget::Sm90a),
        Err(Error::Ptxas { .. })
    ));
}

#[test]
fn a_missing_qc_ptxas_is_an_error_not_a_fallback() {
    // Run in a child process so that setting the variable does not race the other tests.
    if std::env::var_os("QC_PTX_TEST_CHILD").is_some() {
        match find_ptxas() {
            Err(Error::PtxasNotFound(msg)) => assert!(msg.contains("QC_PTXAS"), "{msg}"),
            other => panic!("expected PtxasNotFound, got {other:?}"),
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    // Captured, so that the child's test summary does not mix into this run's output.
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "a_missing_qc_ptxas_is_an_error_not_a_fallback",
            "--nocapture",
        ])
        .env("QC_PTX_TEST_CHILD", "1")
        .env("QC_PTXAS", "/nonexistent/ptxas")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

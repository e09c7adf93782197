//! End-to-end tests of the CPU backend: the emitted object is a real x86-64 ELF object that links into a
//! shared library and computes the right values when called from C.

use std::path::Path;
use std::process::Command;

use qc_backend_llvm::{emit_assembly, emit_object, CpuTarget, Error, ADD_F32_SYMBOL};

#[test]
fn target_names_round_trip_and_unknown_names_are_rejected() {
    for t in CpuTarget::ALL {
        assert_eq!(t.cpu_name().parse::<CpuTarget>().unwrap(), t);
        assert_eq!(t.to_string(), t.cpu_name());
    }
    assert_eq!(
        "x86-64-v3".parse::<CpuTarget>().unwrap(),
        CpuTarget::X86_64V3
    );
    assert_eq!(
        "x86-64-v4".parse::<CpuTarget>().unwrap(),
        CpuTarget::X86_64V4
    );
    for bad in ["", "x86-64", "x86-64-v5", "X86-64-V3", "native", "sm_90a"] {
        match bad.parse::<CpuTarget>() {
            Err(Error::UnknownTarget(name)) => assert_eq!(name, bad),
            other => panic!("{bad:?} parsed as {other:?}"),
        }
    }
}

#[test]
fn object_is_x86_64_elf_and_defines_the_kernel() {
    for t in CpuTarget::ALL {
        let obj = emit_object("qc_test", t).unwrap();
        assert!(obj.len() > 64, "{t}: object of {} bytes", obj.len());
        assert_eq!(&obj[..4], b"\x7fELF", "{t}: no ELF magic");
        assert_eq!(obj[4], 2, "{t}: not ELFCLASS64");
        assert_eq!(obj[5], 1, "{t}: not little endian");
        assert_eq!(u16::from_le_bytes([obj[16], obj[17]]), 1, "{t}: not ET_REL");
        assert_eq!(
            u16::from_le_bytes([obj[18], obj[19]]),
            62,
            "{t}: not EM_X86_64"
        );
        let sym = ADD_F32_SYMBOL.as_bytes();
        assert!(
            obj.windows(sym.len()).any(|w| w == sym),
            "{t}: symbol name missing"
        );
    }
}

#[test]
fn loop_is_vectorized_with_the_targets_instructions() {
    let v3 = emit_assembly("qc_test", CpuTarget::X86_64V3).unwrap();
    assert!(v3.contains(&format!("{ADD_F32_SYMBOL}:")), "{v3}");
    assert!(
        v3.contains("vaddps") && v3.contains("%ymm"),
        "x86-64-v3 code is not AVX2-vectorized:\n{v3}"
    );
    assert!(!v3.contains("%zmm"), "x86-64-v3 code uses AVX-512:\n{v3}");
    let v4 = emit_assembly("qc_test", CpuTarget::X86_64V4).unwrap();
    assert!(
        v4.contains("vaddps"),
        "x86-64-v4 code is not vectorized:\n{v4}"
    );
}

fn host_supports(t: CpuTarget) -> bool {
    match t {
        CpuTarget::X86_64V3 => {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("bmi2")
        }
        CpuTarget::X86_64V4 => {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512cd")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
        }
    }
}

const DRIVER_C: &str = r#"
#include <stdint.h>
#include <stdio.h>
void qc_add_f32(const float *a, const float *b, float *c, int64_t n);
int main(void) {
    enum { N = 1000 };
    static float a[N], b[N], c[N];
    const int64_t sizes[] = {0, 1, 7, 8, 17, 64, 999, N};
    for (unsigned s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t n = sizes[s];
        for (int i = 0; i < N; i++) { a[i] = 0.5f * i; b[i] = 1000.0f - 2.0f * i; c[i] = -1.0f; }
        qc_add_f32(a, b, c, n);
        for (int i = 0; i < N; i++) {
            float want = i < n ? (0.5f * i) + (1000.0f - 2.0f * i) : -1.0f;
            if (c[i] != want) { printf("n=%lld i=%d got %g want %g\n", (long long)n, i, c[i], want); return 1; }
        }
    }
    /* negative n does nothing */
    c[0] = -1.0f;
    qc_add_f32(a, b, c, -5);
    if (c[0] != -1.0f) { printf("negative n wrote\n"); return 1; }
    /* in place: a += b */
    for (int i = 0; i < N; i++) { a[i] = i; b[i] = 3.0f; }
    qc_add_f32(a, b, a, N);
    for (int i = 0; i < N; i++) if (a[i] != i + 3.0f) { printf("in-place i=%d got %g\n", i, a[i]); return 1; }
    /* partial overlap: c = a + 1 element, computed element by element in order */
    for (int i = 0; i < N; i++) { a[i] = 1.0f; b[i] = 1.0f; }
    qc_add_f32(a, b, a + 1, N - 1);
    for (int i = 1; i < N; i++) if (a[i] != (float)(i + 1)) { printf("overlap i=%d got %g\n", i, a[i]); return 1; }
    puts("ok");
    return 0;
}
"#;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check_defined_and_undefined_symbols(obj: &Path) {
    let defined = run(Command::new("nm")
        .arg("--defined-only")
        .arg("--extern-only")
        .arg(obj));
    let names: Vec<&str> = defined
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(names, [ADD_F32_SYMBOL], "exported symbols: {defined}");
    let undefined = run(Command::new("nm").arg("--undefined-only").arg(obj));
    assert!(
        undefined.trim().is_empty(),
        "object references other symbols: {undefined}"
    );
}

/// Links the object into a shared library with the system C compiler (which rustc itself needs, so it
/// is always present), links a C driver against that library and runs it where the host CPU can.
#[test]
fn object_links_into_a_shared_library_and_computes_the_sum() {
    let dir = tempfile::tempdir().unwrap();
    let driver = dir.path().join("driver.c");
    std::fs::write(&driver, DRIVER_C).unwrap();
    for t in CpuTarget::ALL {
        let obj = dir.path().join(format!("add_{}.o", t.cpu_name()));
        std::fs::write(&obj, emit_object("qc_test", t).unwrap()).unwrap();
        check_defined_and_undefined_symbols(&obj);

        let lib_dir = dir.path().join(t.cpu_name());
        std::fs::create_dir(&lib_dir).unwrap();
        let lib = lib_dir.join("libqcadd.so");
        run(Command::new("cc")
            .arg("-shared")
            .arg("-o")
            .arg(&lib)
            .arg(&obj));
        let exe = dir.path().join(format!("driver_{}", t.cpu_name()));
        run(Command::new("cc")
            .arg("-O0")
            .arg("-o")
            .arg(&exe)
            .arg(&driver)
            .arg("-L")
            .arg(&lib_dir)
            .arg("-lqcadd")
            .arg(format!("-Wl,-rpath,{}", lib_dir.display())));
        if host_supports(t) {
            assert_eq!(run(&mut Command::new(&exe)).trim(), "ok", "{t}");
        } else {
            eprintln!("note: host CPU lacks {t}; linked but did not run its code");
        }
    }
}

//! Golden snapshots of the PTX of qc's small kernels (tests/snapshots/; `cargo insta review` or
//! `INSTA_UPDATE=always` after an intended change): the per-tensor fake-quant kernel for int8 on
//! sm_80 and for FP8 e4m3 on sm_90a, and the 4-bit GEMV for mxfp4 on sm_90a. The PTX is
//! deterministic for a given LLVM (22 here); a diff shows what a change to a builder or to LLVM did
//! to the code the GPU runs.

use qc_backend_ptx::fquant::{self, FakeQuantPt};
use qc_backend_ptx::gemv4::{self, Gemv4};
use qc_backend_ptx::GpuTarget;

mod common;
use common::fmt;

#[test]
fn fquant_int8_sm_80() {
    let spec = FakeQuantPt::classify(&fmt("int8")).unwrap();
    insta::assert_snapshot!(fquant::emit_ptx(GpuTarget::Sm80, &spec).unwrap());
}

#[test]
fn fquant_fp8_e4m3_sm_90a() {
    let spec = FakeQuantPt::classify(&fmt("fp8_e4m3")).unwrap();
    insta::assert_snapshot!(fquant::emit_ptx(GpuTarget::Sm90a, &spec).unwrap());
}

#[test]
fn gemv4_mxfp4_sm_90a() {
    let spec = Gemv4::classify(&fmt("mxfp4")).unwrap();
    insta::assert_snapshot!(gemv4::emit_ptx(GpuTarget::Sm90a, &spec).unwrap());
}

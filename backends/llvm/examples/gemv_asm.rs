//! Prints the assembly of the GEMV kernels: `cargo run -p qc-backend-llvm --example gemv_asm -- FORMAT [TARGET]`.
use qc_backend_llvm::gemv::{emit_gemv_assembly, named};
use qc_backend_llvm::CpuTarget;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fmt = named(args.get(1).map(String::as_str).unwrap_or("mxfp4"))
        .unwrap()
        .clone();
    let target: CpuTarget = args
        .get(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(CpuTarget::X86_64V4);
    print!("{}", emit_gemv_assembly(&[fmt], target).unwrap());
}

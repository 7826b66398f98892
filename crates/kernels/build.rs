//! Compiles `src/cuda/*.cu` to PTX in `OUT_DIR` when the `cuda` feature is on; does nothing
//! otherwise, so CPU builds need no CUDA toolkit.
//!
//! * `nvcc` comes from `$NVCC` or `PATH`; the target is `sm_$CUDA_COMPUTE_CAP` (default `90`).
//! * Without `nvcc`, or with `TOKENMIX_PREBUILT_PTX=1`, the committed `ptx/*.ptx` (built for
//!   sm_90 by nvcc 13.0.88, PTX ISA 9.0) are used instead, with a warning.
//! * When `nvcc` builds for sm_90, a committed PTX file that differs from the fresh one is
//!   reported as stale (copy `$OUT_DIR/*.ptx` over `ptx/` to refresh it).

use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: [&str; 10] = [
    "activation",
    "depthwise",
    "neighborhood",
    "norm",
    "pool",
    "scan",
    "shift",
    "spectral",
    "ssd",
    "wavelet",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in ["NVCC", "CUDA_COMPUTE_CAP", "TOKENMIX_PREBUILT_PTX"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=src/cuda");
    println!("cargo:rerun-if-changed=ptx");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")); // ok: build script
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let prebuilt = std::env::var("TOKENMIX_PREBUILT_PTX").is_ok_and(|v| v == "1");
    if prebuilt || !nvcc_works(&nvcc) {
        println!("cargo:warning=tokenmix-kernels: using the committed sm_90 PTX (no nvcc used)");
        KERNELS.iter().for_each(|k| copy_committed(k, &out));
        return;
    }
    KERNELS.iter().for_each(|k| compile(&nvcc, &cap, k, &out));
}

fn nvcc_works(nvcc: &str) -> bool {
    Command::new(nvcc)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn copy_committed(kernel: &str, out: &Path) {
    let src = Path::new("ptx").join(format!("{kernel}.ptx"));
    std::fs::copy(&src, out.join(format!("{kernel}.ptx")))
        .unwrap_or_else(|e| panic!("copying {}: {e}", src.display())); // ok: build failure
}

fn compile(nvcc: &str, cap: &str, kernel: &str, out: &Path) {
    let src = Path::new("src/cuda").join(format!("{kernel}.cu"));
    let dst = out.join(format!("{kernel}.ptx"));
    let status = Command::new(nvcc)
        .args(["--ptx", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
        .arg(format!("-arch=sm_{cap}"))
        .arg("-o")
        .arg(&dst)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc}: {e}")); // ok: build failure
    assert!(status.success(), "nvcc failed on {}", src.display());
    if cap == "90" {
        warn_if_stale(kernel, &dst);
    }
}

fn warn_if_stale(kernel: &str, fresh: &Path) {
    let committed = std::fs::read(Path::new("ptx").join(format!("{kernel}.ptx")));
    if committed.ok() != std::fs::read(fresh).ok() {
        println!(
            "cargo:warning=tokenmix-kernels: ptx/{kernel}.ptx is stale; refresh it from {}",
            fresh.display()
        );
    }
}

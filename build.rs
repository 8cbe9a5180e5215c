//! TensorRT probe: the build script of `wanrt-runtime`.
//!
//! Looks for TensorRT's headers and `libnvinfer` in `TENSORRT_ROOT` (or
//! `/usr` and `/usr/local/tensorrt`). It never downloads anything. When they
//! are absent — as on CI, which has no GPU — it records why in
//! `WANRT_TENSORRT_STATUS` and the runtime's native TensorRT backend answers
//! with a typed "TensorRT not available" error.

use std::path::{Path, PathBuf};

fn probe() -> Result<PathBuf, String> {
    let roots: Vec<PathBuf> = match std::env::var_os("TENSORRT_ROOT") {
        Some(r) => vec![PathBuf::from(r)],
        None => vec![PathBuf::from("/usr/local/tensorrt"), PathBuf::from("/usr")],
    };
    for root in &roots {
        let header = ["include/NvInfer.h", "include/x86_64-linux-gnu/NvInfer.h"]
            .iter()
            .map(|h| root.join(h))
            .find(|p| p.is_file());
        let lib = ["lib", "lib64", "lib/x86_64-linux-gnu"]
            .iter()
            .map(|l| root.join(l))
            .find(|d| has_nvinfer(d));
        if let (Some(_), Some(_)) = (header, lib) {
            return Ok(root.clone());
        }
    }
    Err(format!(
        "no NvInfer.h + libnvinfer under {}",
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn has_nvinfer(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("libnvinfer.so"))
        })
        .unwrap_or(false)
}

fn main() {
    println!("cargo::rerun-if-env-changed=TENSORRT_ROOT");
    println!("cargo::rustc-check-cfg=cfg(wanrt_tensorrt)");
    let status = match probe() {
        Ok(root) => format!(
            "TensorRT found at {}, but the C++ engine bridge in cpp/ is not built by this version",
            root.display()
        ),
        Err(why) => format!("TensorRT not found at build time: {why}"),
    };
    println!("cargo::rustc-env=WANRT_TENSORRT_STATUS={status}");
}

//! TensorRT probe: the build script of `wanrt-runtime`.
//!
//! Looks for TensorRT's headers and `libnvinfer` in `TENSORRT_ROOT` (or
//! `/usr` and `/usr/local/tensorrt`) and records what it found in
//! `WANRT_TENSORRT_STATUS`. It never downloads anything and compiles nothing:
//! the native TensorRT bridge (`cpp/`) is kept out of the build until it can
//! be compiled against a real TensorRT, so the status only explains the
//! refusal of `--backend tensorrt` (TensorRT runs through ONNX Runtime's
//! TensorRT provider, `--backend ort-tensorrt`).

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
    let status = match probe() {
        Ok(root) => format!(
            "TensorRT found at {}, but this version has no native bridge to build against it",
            root.display()
        ),
        Err(why) => format!("TensorRT not found at build time: {why}"),
    };
    println!("cargo::rustc-env=WANRT_TENSORRT_STATUS={status}");
}

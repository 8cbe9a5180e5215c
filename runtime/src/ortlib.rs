//! Finding and loading ONNX Runtime's shared library at run time.
//!
//! wanrt links ONNX Runtime dynamically (`ort`'s `load-dynamic`), so one
//! binary works with the CPU wheel and the GPU wheel alike, and nothing is
//! downloaded at build time. The library is looked for, in order:
//!
//! 1. `ORT_DYLIB_PATH` (a file, or a directory holding it);
//! 2. next to the executable (`libonnxruntime.so*`);
//! 3. an installed `onnxruntime` / `onnxruntime-gpu` Python package
//!    (`onnxruntime/capi/libonnxruntime.so.*`), asked of `python3`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

const HOW_TO: &str = "install it with `python3 -m pip install onnxruntime==1.31.1` \
(or onnxruntime-gpu for CUDA/TensorRT), or point ORT_DYLIB_PATH at libonnxruntime.so";

fn lib_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so")
                    || n == "onnxruntime.dll"
                    || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
            })
        })
        .collect();
    // Prefer the fully versioned name (the real file, not a symlink).
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

fn from_python() -> Option<PathBuf> {
    for py in ["python3", "python"] {
        let out = std::process::Command::new(py)
            .args([
                "-c",
                "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
            ])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("capi");
            if let Some(lib) = lib_in(&dir) {
                return Some(lib);
            }
        }
    }
    None
}

/// Where the library is, without loading it.
pub fn find_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        if let Some(lib) = p.is_dir().then(|| lib_in(&p)).flatten() {
            return Ok(lib);
        }
        return Err(Error::OrtLibrary(format!(
            "ORT_DYLIB_PATH={} is not libonnxruntime nor a directory holding it; {HOW_TO}",
            p.display()
        )));
    }
    if let Some(lib) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(lib_in))
    {
        return Ok(lib);
    }
    from_python().ok_or_else(|| {
        Error::OrtLibrary(format!(
            "libonnxruntime was not found (ORT_DYLIB_PATH unset, none next to the executable, no onnxruntime Python package); {HOW_TO}"
        ))
    })
}

static ENV: OnceLock<std::result::Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// The process-wide ONNX Runtime environment (loaded once).
pub fn environment() -> Result<&'static ort::environment::Environment> {
    let r = ENV.get_or_init(|| {
        let lib = find_library().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&lib)
            .map_err(|e| format!("loading {}: {e}; {HOW_TO}", lib.display()))?;
        let env = builder
            .with_name("wanrt")
            .build()
            .map_err(|e| format!("creating the environment from {}: {e}", lib.display()))?;
        Ok((env, lib))
    });
    match r {
        Ok((env, _)) => Ok(env),
        Err(e) => Err(Error::OrtLibrary(e.clone())),
    }
}

/// The library loaded by [`environment`], if any.
pub fn loaded_library() -> Option<&'static Path> {
    ENV.get()
        .and_then(|r| r.as_ref().ok())
        .map(|(_, p)| p.as_path())
}

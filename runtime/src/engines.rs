//! Prebuilt TensorRT engines: what this machine offers, the provider options
//! that load (or, at compile time, build) them, and the check of a
//! manifest's engine key against the machine (`wanrt_core::engines`).
//!
//! TensorRT is reached through ONNX Runtime's TensorRT provider. Its engine
//! cache lives in `<artifacts>/engines/`; the cache prefix carries our own
//! digest of graph and weights, because the provider's cache key ignores
//! weight values. Graphs whose weights exceed 2 GiB get the provider's
//! user-initializer option (the provider otherwise re-serialises the
//! subgraph into one protobuf and fails).

use std::path::{Path, PathBuf};

use wanrt_core::Manifest;
use wanrt_core::engines::{ENGINE_DIR, EngineRecord, EngineTarget};
use wanrt_core::manifest::NetworkEntry;

use crate::error::{Error, Result};

/// Directories searched for CUDA and TensorRT libraries: `LD_LIBRARY_PATH`,
/// `TENSORRT_ROOT/lib`, the directory of the loaded ONNX Runtime, and the
/// usual system paths.
pub fn library_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Some(root) = std::env::var_os("TENSORRT_ROOT") {
        dirs.push(PathBuf::from(&root).join("lib"));
        dirs.push(PathBuf::from(root).join("lib64"));
    }
    if let Some(dir) = crate::ortlib::loaded_library().and_then(Path::parent) {
        dirs.push(dir.to_path_buf());
    }
    for d in [
        "/usr/local/tensorrt/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/local/cuda/lib64",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.dedup();
    dirs
}

/// The highest `X.Y.Z` among files named `<stem>.so.X.Y.Z` in `dirs`.
fn library_version(stem: &str, dirs: &[PathBuf]) -> Option<String> {
    let prefix = format!("{stem}.so.");
    let mut best: Option<(Vec<u32>, String)> = None;
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(v) = name.strip_prefix(&prefix) else {
                continue;
            };
            let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
            if let Some(parts) = parts.filter(|p| !p.is_empty())
                && best.as_ref().is_none_or(|(b, _)| parts > *b)
            {
                best = Some((parts, v.to_string()));
            }
        }
    }
    best.map(|(_, v)| v)
}

/// The GPU `device` as the driver reports it: `(name, compute capability)`.
fn gpu(device: u32) -> std::result::Result<(String, String), String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,compute_cap",
            "--format=csv,noheader",
            &format!("--id={device}"),
        ])
        .output()
        .map_err(|e| format!("no NVIDIA GPU (nvidia-smi: {e})"))?;
    if !out.status.success() {
        return Err(format!(
            "no NVIDIA GPU {device} (nvidia-smi: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("");
    match line.rsplit_once(',') {
        Some((name, cc)) => Ok((name.trim().to_string(), cc.trim().to_string())),
        None => Err(format!("nvidia-smi answered '{line}'")),
    }
}

/// The version of the loaded ONNX Runtime, from its library's file name
/// (`libonnxruntime.so.1.31.1`).
pub fn onnxruntime_version() -> Result<String> {
    crate::ortlib::environment()?;
    let lib = crate::ortlib::loaded_library().unwrap_or(Path::new(""));
    let name = lib
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(name
        .split_once(".so.")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| "unknown".into()))
}

/// What this machine would build or load engines for. Every missing piece
/// is listed, so one error says everything to install.
pub fn machine_target(device: u32) -> Result<EngineTarget> {
    let dirs = library_dirs();
    let mut missing = Vec::new();
    {
        use ort::ep::ExecutionProvider;
        crate::ortlib::environment()?;
        if !<ort::ep::TensorRT as ExecutionProvider>::is_available().unwrap_or(false) {
            missing.push(format!(
                "the loaded ONNX Runtime ({}) has no TensorRT provider: install \
                 onnxruntime-gpu==1.31.1 and point ORT_DYLIB_PATH at its libonnxruntime.so",
                crate::ortlib::loaded_library()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
        }
    }
    let trt = library_version("libnvinfer", &dirs);
    if trt.is_none() {
        missing.push(format!(
            "TensorRT's libnvinfer.so.10 was not found (looked in {}): install TensorRT 10.x \
             and put its lib directory on LD_LIBRARY_PATH or set TENSORRT_ROOT",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let cuda = library_version("libcudart", &dirs);
    if cuda.is_none() {
        missing.push("the CUDA runtime (libcudart.so) was not found on LD_LIBRARY_PATH".into());
    }
    let gpu = gpu(device);
    if let Err(e) = &gpu {
        missing.push(e.clone());
    }
    match (missing.is_empty(), gpu, trt, cuda) {
        (true, Ok((gpu_name, compute_capability)), Some(t), Some(c)) => Ok(EngineTarget {
            gpu_name,
            compute_capability,
            tensorrt_version: t,
            cuda_version: c,
            onnxruntime_version: onnxruntime_version()?,
        }),
        _ => Err(Error::TensorRtUnavailable(format!(
            "TensorRT engines cannot be built or loaded on this machine: {}",
            missing.join("; ")
        ))),
    }
}

/// This machine as far as it can be read, never failing: a missing piece
/// reads `none (…why)`, so comparing it with an engine record names every
/// difference (used before loading engines; [`machine_target`] is the
/// strict form that building engines needs).
pub fn machine_target_lenient(device: u32) -> EngineTarget {
    let dirs = library_dirs();
    let (gpu_name, compute_capability) = match gpu(device) {
        Ok(g) => g,
        Err(e) => ("none".into(), format!("none ({e})")),
    };
    EngineTarget {
        gpu_name,
        compute_capability,
        tensorrt_version: library_version("libnvinfer", &dirs)
            .unwrap_or_else(|| "none (libnvinfer not found)".into()),
        cuda_version: library_version("libcudart", &dirs)
            .unwrap_or_else(|| "none (libcudart not found)".into()),
        onnxruntime_version: onnxruntime_version().unwrap_or_else(|e| format!("none ({e})")),
    }
}

/// How one graph's TensorRT provider finds its engines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtCache {
    /// `<artifacts>/engines` (or the staging directory's, while compiling).
    pub dir: PathBuf,
    pub prefix: String,
    /// The graph's weights exceed 2 GiB.
    pub user_initializers: bool,
}

impl TrtCache {
    /// The cache of the graph with `graph_digest` of network `name`
    /// (`entry`), in `artifacts/engines`.
    pub fn for_graph(
        artifacts: &Path,
        name: &str,
        graph_digest: &str,
        entry: &NetworkEntry,
    ) -> Self {
        TrtCache {
            dir: artifacts.join(ENGINE_DIR),
            prefix: wanrt_core::engines::cache_prefix(name, graph_digest, &entry.weights_digest),
            user_initializers: entry.external_data_bytes >= 2 << 30,
        }
    }

    /// The provider with this cache.
    pub fn provider(&self, device: u32) -> ort::ep::TensorRT {
        let dir = self.dir.display().to_string();
        let trt = ort::ep::TensorRT::default()
            .with_device_id(device as i32)
            .with_engine_cache(true)
            .with_engine_cache_path(&dir)
            .with_engine_cache_prefix(&self.prefix)
            .with_timing_cache(true)
            .with_timing_cache_path(&dir);
        if self.user_initializers {
            use ort::ep::ArbitrarilyConfigurableExecutionProvider;
            trt.with_arbitrary_config("trt_load_user_initializer", "1")
        } else {
            trt
        }
    }
}

fn rebuild_hint(dir: &Path) -> String {
    format!(
        "rebuild them on this machine: wan-compile --model <the model> --out {} --engine tensorrt \
         --overwrite (or run with --backend ort-cuda)",
        dir.display()
    )
}

/// Before any TensorRT session: the artifact directory must hold engines
/// built for this machine, from these very graphs and weights, with every
/// engine file present at its recorded size. Refuses with a typed
/// [`ErrorKind::EngineMismatch`](crate::ErrorKind::EngineMismatch) that
/// names what differs and how to rebuild; never lets the provider rebuild
/// silently.
pub fn check_record(dir: &Path, manifest: &Manifest, machine: &EngineTarget) -> Result<()> {
    let fail = |reason: String| Error::EngineMismatch {
        dir: dir.to_path_buf(),
        reason,
    };
    let Some(rec) = &manifest.engines else {
        return Err(fail(format!(
            "no prebuilt TensorRT engines (an ONNX-only compile); {}",
            rebuild_hint(dir)
        )));
    };
    let diff = rec.target.differences(machine);
    if !diff.is_empty() {
        return Err(fail(format!(
            "the engines do not fit this machine ({}); {}",
            diff.join("; "),
            rebuild_hint(dir)
        )));
    }
    check_files(dir, manifest, rec)
}

fn check_files(dir: &Path, manifest: &Manifest, rec: &EngineRecord) -> Result<()> {
    let fail = |reason: String| Error::EngineMismatch {
        dir: dir.to_path_buf(),
        reason,
    };
    for (kind, entry) in &manifest.networks {
        let Some(e) = rec.networks.get(kind) else {
            return Err(fail(format!(
                "no engine for network {kind}; {}",
                rebuild_hint(dir)
            )));
        };
        if e.graph_digest != entry.graph_digest || e.weights_digest != entry.weights_digest {
            return Err(fail(format!(
                "the engines of {kind} were built from another graph or other weights; {}",
                rebuild_hint(dir)
            )));
        }
        if e.precision != entry.precision {
            return Err(fail(format!(
                "the engines of {kind} were built at {}, the graph is {}",
                e.precision, entry.precision
            )));
        }
    }
    for f in rec.files() {
        let p = dir.join(&f.file);
        let len = std::fs::metadata(&p)
            .map_err(|e| fail(format!("engine file {}: {e}", p.display())))?
            .len();
        if len != f.bytes {
            return Err(fail(format!(
                "engine file {} has {len} bytes, the manifest says {}",
                f.file, f.bytes
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_versions_are_read_from_file_names() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "libnvinfer.so",
            "libnvinfer.so.10",
            "libnvinfer.so.10.9.0",
            "libnvinfer.so.10.13.0",
            "libnvinfer_plugin.so.10.13.0",
            "libnvinfer.so.10.x",
        ] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let dirs = vec![dir.path().to_path_buf(), PathBuf::from("/nonexistent")];
        assert_eq!(
            library_version("libnvinfer", &dirs).as_deref(),
            Some("10.13.0")
        );
        assert_eq!(library_version("libcudart", &dirs), None);
    }

    #[test]
    fn without_tensorrt_the_machine_target_says_what_to_install() {
        // The project's machines have the CPU wheel, no TensorRT, no GPU.
        let e = machine_target(0).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::TensorRtUnavailable);
        let msg = e.to_string();
        assert!(
            msg.contains("no TensorRT provider") && msg.contains("onnxruntime-gpu"),
            "{msg}"
        );
        assert!(msg.contains("libnvinfer"), "{msg}");
    }
}

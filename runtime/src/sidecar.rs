//! The JSON sidecar written next to every generated video: every setting of
//! the run (seed, steps, solver, timesteps, prompts), the engines' model
//! digest, the backend, the profile and the timings, so a run can be
//! reproduced and audited. `wan-run` and `wan-serve` both write it through
//! [`sidecar_json`].

use std::path::{Path, PathBuf};

use wanrt_core::NetworkKind;

use crate::backend::Backend;
use crate::error::Result;
use crate::pipeline::{Generated, Pipeline};

/// `clip.mp4` → `clip.mp4.json`; `frames/` → `frames.json`.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let s = output.as_os_str().to_string_lossy();
    PathBuf::from(format!("{}.json", s.trim_end_matches('/')))
}

/// What a run wrote besides what [`Generated`] holds.
#[derive(Debug, Clone, Copy)]
pub struct RunRecord<'a> {
    pub backend: Backend,
    /// Why that backend (`--backend`, or what `auto` found).
    pub backend_reason: &'a str,
    /// The video (or PNG directory) written.
    pub output: &'a Path,
    /// Seconds spent encoding and writing the video.
    pub video_write_s: f64,
    /// The file the initial noise came from, if any.
    pub latents_in: Option<&'a Path>,
}

/// The sidecar document of one run of `pipeline`.
pub fn sidecar_json(
    pipeline: &Pipeline,
    generated: &Generated,
    run: &RunRecord<'_>,
) -> Result<serde_json::Value> {
    let model_digest = pipeline
        .artifacts
        .entry(NetworkKind::Dit)?
        .weights_digest
        .clone();
    Ok(serde_json::json!({
        "wanrt": env!("CARGO_PKG_VERSION"),
        "engines": pipeline.artifacts.dir.display().to_string(),
        "model_digest": model_digest,
        "backend": run.backend.name(),
        "backend_reason": run.backend_reason,
        "profile": pipeline.profile(),
        "settings": generated.settings,
        "timings": generated.timings,
        "video_write_s": run.video_write_s,
        "output": run.output.display().to_string(),
        "latents_in": run.latents_in.map(|p| p.display().to_string()),
    }))
}

//! The `--data` directory: one folder per job under `jobs/`, holding its
//! record (`job.json`, local queue only: with Redis the record lives
//! there), the uploaded images and the results. Every file is written to a
//! temporary sibling, synced and renamed into place, so a crash leaves the
//! old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use wanrt_core::fsio::temp_sibling;

use crate::error::{Error, Result};
use crate::job::{Job, valid_id};

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Writes `bytes` to `path` atomically (replacing it).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::storage(path, e));
    }
    Ok(())
}

impl Store {
    /// Opens (creating) `root/jobs`.
    pub fn open(root: &Path) -> Result<Self> {
        let jobs = root.join("jobs");
        std::fs::create_dir_all(&jobs).map_err(|e| Error::storage(&jobs, e))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.root.join("jobs").join(id)
    }

    fn record(&self, id: &str) -> PathBuf {
        self.job_dir(id).join("job.json")
    }

    pub fn video(&self, id: &str) -> PathBuf {
        self.job_dir(id).join("video.mp4")
    }

    pub fn sidecar(&self, id: &str) -> PathBuf {
        wanrt_runtime::sidecar::sidecar_path(&self.video(id))
    }

    /// The uploaded `input_reference` (its format is read from its bytes).
    pub fn image(&self, id: &str) -> PathBuf {
        self.job_dir(id).join("input_reference")
    }

    /// The uploaded `last_image` (FLF2V), beside `input_reference`.
    pub fn last_image(&self, id: &str) -> PathBuf {
        self.job_dir(id).join("last_image")
    }

    /// An uploaded VACE video part (`control_video`, `control_mask`) as
    /// `PART.mp4` (read back as wan-run reads an MP4 file).
    pub fn video_part(&self, id: &str, part: &str) -> PathBuf {
        self.job_dir(id).join(format!("{part}.mp4"))
    }

    /// The uploaded VACE `reference_image` number `index` (from 0, in the
    /// order sent).
    pub fn reference_image(&self, id: &str, index: usize) -> PathBuf {
        self.job_dir(id).join(format!("reference_image_{index}"))
    }

    /// Creates the job's folder (results of a Redis deployment's jobs,
    /// whose records live in Redis).
    pub fn ensure_dir(&self, id: &str) -> Result<()> {
        let d = self.job_dir(id);
        std::fs::create_dir_all(&d).map_err(|e| Error::storage(&d, e))
    }

    pub fn save_job(&self, job: &Job) -> Result<()> {
        self.ensure_dir(&job.id)?;
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| Error::Corrupt {
            file: self.record(&job.id),
            source: e,
        })?;
        write_atomic(&self.record(&job.id), &bytes)
    }

    pub fn save_image(&self, id: &str, bytes: &[u8]) -> Result<()> {
        self.ensure_dir(id)?;
        write_atomic(&self.image(id), bytes)
    }

    pub fn save_last_image(&self, id: &str, bytes: &[u8]) -> Result<()> {
        self.ensure_dir(id)?;
        write_atomic(&self.last_image(id), bytes)
    }

    pub fn save_video_part(&self, id: &str, part: &str, bytes: &[u8]) -> Result<()> {
        self.ensure_dir(id)?;
        write_atomic(&self.video_part(id, part), bytes)
    }

    pub fn save_reference_image(&self, id: &str, index: usize, bytes: &[u8]) -> Result<()> {
        self.ensure_dir(id)?;
        write_atomic(&self.reference_image(id, index), bytes)
    }

    /// Every job record under `jobs/` (folders without one, e.g. of a
    /// Redis deployment, are skipped). A record that does not parse is an
    /// error naming it: a job is never dropped silently.
    pub fn load_jobs(&self) -> Result<Vec<Job>> {
        let dir = self.root.join("jobs");
        let mut jobs = Vec::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::storage(&dir, e))?;
        for e in entries {
            let e = e.map_err(|e| Error::storage(&dir, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if !valid_id(&name) {
                continue;
            }
            let file = self.record(&name);
            let text = match std::fs::read(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::storage(&file, e)),
            };
            let job: Job = serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
                file: file.clone(),
                source: e,
            })?;
            jobs.push(job);
        }
        Ok(jobs)
    }

    /// Removes a job's folder and everything in it.
    pub fn remove(&self, id: &str) -> Result<()> {
        let d = self.job_dir(id);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::storage(&d, e)),
        }
    }
}

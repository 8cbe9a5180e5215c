//! Jobs: what a client asks for ([`JobRequest`], validated field by field)
//! and the record of one job through its life ([`Job`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use wanrt_core::Task;
use wanrt_runtime::cache::{CacheOptions, CachePolicy, CacheRecord, parse_threshold};
use wanrt_runtime::pipeline::{check_task_image, check_task_last_image, check_task_vace};
use wanrt_runtime::schedule::Solver;

use crate::error::ApiError;

/// Longest prompt accepted, in characters (the text encoder keeps at most
/// its text length in tokens; this only bounds the work of cleaning).
pub const MAX_PROMPT_CHARS: usize = 20_000;
/// Most sampling steps accepted.
pub const MAX_STEPS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Completed, failed or cancelled: nothing will change it any more.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// What the engines of one artifact directory generate: the routing key of
/// jobs (`t2v-832x480x81`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileInfo {
    pub task: Task,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    /// VACE: the reference images the engines take (`wan-compile
    /// --reference-images`); 0 for every other task.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reference_images: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ProfileInfo {
    /// The routing key: task, size and length, and for VACE engines with
    /// reference images their count (`vace-832x480x81-r2`), so that servers
    /// sharing a Redis queue never take a job their engines cannot run.
    pub fn key(&self) -> String {
        let refs = if self.reference_images > 0 {
            format!("-r{}", self.reference_images)
        } else {
            String::new()
        };
        format!(
            "{}-{}x{}x{}{refs}",
            self.task.name(),
            self.width,
            self.height,
            self.frames
        )
    }

    /// The engines' profile as the runtime's frame checks read it (size,
    /// frame count, reference images).
    pub fn profile(&self) -> wanrt_core::error::Result<wanrt_core::Profile> {
        wanrt_core::Profile::custom(self.width, self.height, self.frames, 1)?
            .with_reference_images(self.reference_images)
    }

    /// Seconds of video at 16 fps: `frames = 16·seconds + 1`.
    pub fn seconds(&self) -> String {
        let s = (self.frames.saturating_sub(1)) as f64 / wanrt_media::video::DEFAULT_FPS as f64;
        format!("{s}")
    }
}

/// A validated request: every value in range, the profile chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f32>,
    pub shift: Option<f64>,
    /// `unipc`, `dpm++`, `euler` or `lcm`.
    pub solver: String,
    pub seed: u64,
    /// A step-distilled model's denoising step list (wan-run's
    /// `--timesteps`), in place of `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<u32>>,
    /// CFG-Zero*'s optimised scale (wan-run's `--cfg-zero-star`).
    #[serde(default)]
    pub cfg_zero_star: bool,
    /// CFG-Zero*'s zero-init steps (wan-run's `--zero-init-steps`).
    #[serde(default)]
    pub zero_init_steps: usize,
    pub profile: ProfileInfo,
    /// An `input_reference` image came with it (stored beside the job).
    pub has_image: bool,
    /// A `last_image` came with it (FLF2V; stored beside the job).
    #[serde(default)]
    pub has_last_image: bool,
    /// The step cache (wan-run's `--cache*` flags; the built-in tables
    /// apply, a request never names a table file).
    #[serde(default, skip_serializing_if = "CacheOptions::is_none")]
    pub cache: CacheOptions,
    /// VACE inputs came with it (stored beside the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vace: Option<VaceRequest>,
}

/// The VACE parts of a job (wan-run's `--control-video`, `--control-mask`,
/// `--reference-image`, `--context-scale`); the files are stored beside
/// the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaceRequest {
    pub control_video: bool,
    pub control_mask: bool,
    /// How many `reference_image` parts, in the order sent.
    pub reference_images: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_scale: Option<f32>,
}

/// The VACE file parts a multipart request carried (`context_scale` is a
/// field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VaceParts {
    pub control_video: bool,
    pub control_mask: bool,
    pub reference_images: usize,
}

impl VaceParts {
    fn any(&self) -> bool {
        self.control_video || self.control_mask || self.reference_images > 0
    }

    /// The first part given (the one a refusal names).
    fn first(&self) -> &'static str {
        if self.control_video {
            "control_video"
        } else if self.control_mask {
            "control_mask"
        } else if self.reference_images > 0 {
            "reference_image"
        } else {
            "context_scale"
        }
    }
}

impl JobRequest {
    /// The sampler's step count: the `timesteps` list's length, else
    /// `steps`, else the task's official default.
    pub fn steps_to_run(&self) -> usize {
        let p = &self.profile;
        wanrt_runtime::pipeline::steps_to_run(
            p.task,
            p.width,
            p.height,
            self.steps,
            self.timesteps.as_ref().map(Vec::len),
        )
    }
}

/// What a job's step cache did (the sidecar's `settings.cache`, in short).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheResult {
    /// The threshold the run used (given, from a preset, or the default).
    pub threshold: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_skip: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<f64>,
    /// Block-stack forwards run, and the number without caching.
    pub block_forwards: usize,
    pub block_forwards_uncached: usize,
    /// Per CFG branch (`cond`, `uncond`): which steps ran the block stack.
    pub branches: Vec<CacheBranch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheBranch {
    pub branch: String,
    pub computed_steps: usize,
    pub computed: Vec<bool>,
}

impl CacheResult {
    /// `None` for a run without a cache.
    pub fn of(record: &CacheRecord) -> Option<Self> {
        let plan = record.plan.as_ref()?;
        Some(CacheResult {
            threshold: plan.threshold,
            preset: plan.preset.clone(),
            max_skip: plan.max_skip,
            retention: plan.retention,
            block_forwards: record.block_forwards,
            block_forwards_uncached: record.block_forwards_uncached,
            branches: record
                .branches
                .iter()
                .map(|b| CacheBranch {
                    branch: b.branch.to_string(),
                    computed_steps: b.num_computed(),
                    computed: b.computed.clone(),
                })
                .collect(),
        })
    }
}

/// One job from submission to its final state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub status: Status,
    pub request: JobRequest,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix milliseconds (orders jobs, times them).
    #[serde(default)]
    pub created_ms: u64,
    pub started_at: Option<u64>,
    pub completed_at: Option<u64>,
    /// Steps of the sampler (known once the job starts).
    pub steps_total: Option<usize>,
    /// Seconds of each finished step.
    pub step_s: Vec<f64>,
    pub error: Option<JobError>,
    /// The worker that ran (or runs) it.
    pub worker: Option<String>,
    /// What the step cache did (a completed job that asked for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

pub fn now_s() -> u64 {
    now_ms() / 1000
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh id: `video_` and 24 hex digits from the clock, the process and
/// the standard library's per-process random hash keys.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!(
        "video_{:012x}{:012x}",
        nanos & 0xffff_ffff_ffff,
        h.finish() & 0xffff_ffff_ffff
    )
}

/// Ids are made by [`new_id`]; anything else in a path is refused before it
/// can name a file.
pub fn valid_id(id: &str) -> bool {
    (7..=64).contains(&id.len())
        && id.starts_with("video_")
        && id[6..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Job {
    pub fn new(request: JobRequest) -> Self {
        let ms = now_ms();
        Job {
            id: new_id(),
            status: Status::Queued,
            request,
            created_at: ms / 1000,
            created_ms: ms,
            started_at: None,
            completed_at: None,
            steps_total: None,
            step_s: Vec::new(),
            error: None,
            worker: None,
            cache: None,
        }
    }

    /// 0–100: the share of steps done (100 once completed).
    pub fn progress(&self) -> u32 {
        match (self.status, self.steps_total) {
            (Status::Completed, _) => 100,
            (_, Some(n)) if n > 0 => ((self.step_s.len() * 100) / n).min(99) as u32,
            _ => 0,
        }
    }

    /// The `cache` of the API's job object: what was asked for and, once
    /// the job completed, what the cache did (`null` without a cache).
    fn cache_api(&self) -> Value {
        let c = &self.request.cache;
        if c.is_none() {
            return Value::Null;
        }
        let mut v = serde_json::json!({
            "policy": c.policy.name(),
            "threshold": c.threshold.map(Value::from).or(c.preset.clone().map(Value::from)),
            "max_skip": c.max_skip,
            "retention": c.retention,
        });
        if let (Some(r), Some(o)) = (&self.cache, v.as_object_mut()) {
            // The settled parameters replace the requested ones.
            if let Ok(Value::Object(done)) = serde_json::to_value(r) {
                o.extend(done);
            }
        }
        v
    }

    /// The job object of the API.
    pub fn to_api(&self) -> Value {
        let p = &self.request.profile;
        serde_json::json!({
            "id": self.id,
            "object": "video",
            "model": p.key(),
            "status": self.status.name(),
            "progress": self.progress(),
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "size": format!("{}x{}", p.width, p.height),
            "seconds": p.seconds(),
            "frames": p.frames,
            "seed": self.request.seed,
            "steps": self.steps_total.or(self.request.steps),
            "error": self.error,
            "worker": self.worker,
            "cache": self.cache_api(),
            "vace": self.request.vace,
        })
    }

    pub fn fail(&mut self, code: &str, message: impl Into<String>) {
        self.status = Status::Failed;
        self.completed_at = Some(now_s());
        self.error = Some(JobError {
            code: code.into(),
            message: message.into(),
        });
    }
}

/// The fields of `POST /v1/videos`, as JSON values (a multipart form's text
/// fields arrive as strings and are parsed the same way).
pub const FIELDS: [&str; 23] = [
    "prompt",
    "negative_prompt",
    "size",
    "seconds",
    "frames",
    "steps",
    "guidance_scale",
    "shift",
    "solver",
    "seed",
    "timesteps",
    "cfg_zero_star",
    "zero_init_steps",
    "cache",
    "cache_threshold",
    "cache_max_skip",
    "cache_retention",
    "input_reference",
    "last_image",
    "control_video",
    "control_mask",
    "reference_image",
    "context_scale",
];

/// The file parts of a multipart request (never JSON fields).
pub const FILE_PARTS: [&str; 5] = [
    "input_reference",
    "last_image",
    "control_video",
    "control_mask",
    "reference_image",
];

/// The runtime's flags and the request fields they are (its errors name
/// flags; the API names fields). Longest first: a flag's text is replaced
/// in messages before any flag it starts with.
const FLAG_FIELDS: [(&str, &str); 14] = [
    ("--reference-image", "reference_image"),
    ("--cache-threshold", "cache_threshold"),
    ("--cache-retention", "cache_retention"),
    ("--zero-init-steps", "zero_init_steps"),
    ("--cache-max-skip", "cache_max_skip"),
    ("--guidance-scale", "guidance_scale"),
    ("--context-scale", "context_scale"),
    ("--control-video", "control_video"),
    ("--control-mask", "control_mask"),
    ("--last-image", "last_image"),
    ("--timesteps", "timesteps"),
    ("--image", "input_reference"),
    ("--steps", "steps"),
    ("--cache", "cache"),
];

/// A runtime check's refusal as the API's 422 naming the field (the rules
/// stay the runtime's: the server checks requests with the same functions
/// wan-run calls). Anything but an invalid argument is the server's fault.
pub fn runtime_field_error(e: &wanrt_runtime::Error) -> ApiError {
    let wanrt_runtime::Error::InvalidArgument { flag, reason } = e else {
        return ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("checking the request: {e}"),
        );
    };
    if flag == "--cache-table" {
        // The policy needs the model's table and the engines' model has
        // none built in; a client cannot give a table file.
        return ApiError::field(
            "cache",
            "no_cache_table",
            "cache: this policy needs the model's table, and the model of these engines is none of the official checkpoints with built-in tables (the job API takes no table file): use cache fbcache, or wan-run with the table as a file",
        );
    }
    let mut message = reason.clone();
    for (f, field) in FLAG_FIELDS {
        message = message.replace(f, field);
    }
    let param = FLAG_FIELDS
        .iter()
        .find(|(f, _)| f == flag)
        .map_or(flag.trim_start_matches('-'), |(_, field)| field);
    ApiError::field(param, "invalid_value", format!("{param}: {message}"))
}

/// The `cache*` fields as the runtime's options, checked by the runtime's
/// own validation (ranges, parameters of another policy, a parameter
/// without a policy). Model-dependent checks (built-in tables, presets)
/// need the engines: [`wanrt_runtime::pipeline::cache_plan_for`].
fn parse_cache<'a>(get: &dyn Fn(&str) -> Option<&'a Value>) -> Result<CacheOptions, ApiError> {
    let policy = match get("cache") {
        None => CachePolicy::None,
        Some(v) => as_str("cache", v)?
            .trim()
            .parse::<CachePolicy>()
            .map_err(|e| runtime_field_error(&e))?,
    };
    let (threshold, preset) = match get("cache_threshold") {
        None => (None, None),
        Some(Value::Number(n)) => (n.as_f64(), None),
        Some(Value::String(s)) => parse_threshold(s.trim()).map_err(|e| runtime_field_error(&e))?,
        Some(v) => {
            return Err(ApiError::field(
                "cache_threshold",
                "invalid_type",
                format!("cache_threshold must be a number or a preset name, got {v}"),
            ));
        }
    };
    let max_skip = match get("cache_max_skip") {
        None => None,
        Some(v) => Some(
            u32::try_from(as_u64("cache_max_skip", v)?)
                .map_err(|_| range_err("cache_max_skip", "below 2^32"))?,
        ),
    };
    let retention = match get("cache_retention") {
        None => None,
        Some(v) => Some(as_f64("cache_retention", v)?),
    };
    let opts = CacheOptions {
        policy,
        threshold,
        preset,
        max_skip,
        retention,
        table: None,
        // The job API has no residency field: the engine's default (auto).
        residency: Default::default(),
    };
    opts.validate().map_err(|e| runtime_field_error(&e))?;
    Ok(opts)
}

fn as_u64(name: &str, v: &Value) -> Result<u64, ApiError> {
    let parsed = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        ApiError::field(
            name,
            "invalid_type",
            format!("{name} must be a non-negative integer, got {v}"),
        )
    })
}

fn as_f64(name: &str, v: &Value) -> Result<f64, ApiError> {
    let parsed = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match parsed {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(ApiError::field(
            name,
            "invalid_type",
            format!("{name} must be a finite number, got {v}"),
        )),
    }
}

fn as_str<'a>(name: &str, v: &'a Value) -> Result<&'a str, ApiError> {
    v.as_str().ok_or_else(|| {
        ApiError::field(
            name,
            "invalid_type",
            format!("{name} must be a string, got {v}"),
        )
    })
}

fn range_err(name: &str, what: &str) -> ApiError {
    ApiError::field(name, "invalid_value", format!("{name} must be {what}"))
}

/// Validates the request fields against the profiles the workers serve.
/// `has_image`, `has_last_image`: an `input_reference` image, a
/// `last_image` came with the request; `vace`: its VACE file parts. `seed`
/// draws the seed when the request has none.
pub fn parse_request(
    fields: &Map<String, Value>,
    has_image: bool,
    has_last_image: bool,
    vace: VaceParts,
    profiles: &[ProfileInfo],
    seed: impl FnOnce() -> u64,
) -> Result<JobRequest, ApiError> {
    if fields.contains_key("cache_table") {
        return Err(ApiError::field(
            "cache_table",
            "unsupported_parameter",
            "cache_table: the job API takes no table file (a request never names the server's files); the built-in tables of the official checkpoints apply",
        ));
    }
    if let Some(k) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(
            k,
            "unknown_parameter",
            format!("unknown field '{k}' (known: {})", FIELDS.join(", ")),
        ));
    }
    for part in FILE_PARTS {
        if fields.contains_key(part) {
            return Err(ApiError::field(
                part,
                "invalid_type",
                format!("{part} must be a file part of a multipart/form-data request"),
            ));
        }
    }
    if vace.control_mask && !vace.control_video {
        return Err(ApiError::field(
            "control_mask",
            "missing_control_video",
            "control_mask is the mask of a control video: send the control_video too",
        ));
    }
    if has_last_image && !has_image {
        return Err(ApiError::field(
            "last_image",
            "missing_first_frame",
            "last_image is the last frame of a first-last-frame-to-video job: send the first frame as input_reference too",
        ));
    }
    let get = |k: &str| fields.get(k).filter(|v| !v.is_null());

    let prompt = match get("prompt") {
        None => return Err(ApiError::field("prompt", "missing", "prompt is required")),
        Some(v) => as_str("prompt", v)?,
    };
    if prompt.trim().is_empty() {
        return Err(range_err("prompt", "a non-empty text"));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(range_err(
            "prompt",
            &format!("at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    let negative_prompt = match get("negative_prompt") {
        None => None,
        Some(v) => {
            let s = as_str("negative_prompt", v)?;
            if s.chars().count() > MAX_PROMPT_CHARS {
                return Err(range_err(
                    "negative_prompt",
                    &format!("at most {MAX_PROMPT_CHARS} characters"),
                ));
            }
            Some(s.to_string())
        }
    };
    let steps = match get("steps") {
        None => None,
        Some(v) => match as_u64("steps", v)? {
            n @ 1..=MAX_STEPS => Some(n as usize),
            _ => return Err(range_err("steps", &format!("in 1..={MAX_STEPS}"))),
        },
    };
    let guidance_scale = match get("guidance_scale") {
        None => None,
        Some(v) => match as_f64("guidance_scale", v)? {
            g if (0.0..=100.0).contains(&g) => Some(g as f32),
            _ => return Err(range_err("guidance_scale", "in [0, 100]")),
        },
    };
    let shift = match get("shift") {
        None => None,
        Some(v) => match as_f64("shift", v)? {
            s if s > 0.0 && s <= 100.0 => Some(s),
            _ => return Err(range_err("shift", "in (0, 100]")),
        },
    };
    let solver = match get("solver") {
        None => Solver::UniPc.name().to_string(),
        Some(v) => {
            let s = as_str("solver", v)?;
            s.parse::<Solver>()
                .map_err(|_| range_err("solver", "one of unipc, dpm++, euler, lcm"))?
                .name()
                .to_string()
        }
    };
    let timesteps = match get("timesteps") {
        None => None,
        Some(v) => {
            let items: Vec<Value> = match v {
                Value::Array(a) => a.clone(),
                Value::String(s) => s
                    .split(',')
                    .map(|t| Value::String(t.trim().to_string()))
                    .collect(),
                _ => {
                    return Err(range_err(
                        "timesteps",
                        "a list of integers, e.g. [1000, 750, 500, 250]",
                    ));
                }
            };
            let mut list = Vec::with_capacity(items.len());
            for t in &items {
                match as_u64("timesteps", t)? {
                    n @ 1..=1000 => list.push(n as u32),
                    _ => return Err(range_err("timesteps", "integers in 1..=1000")),
                }
            }
            if list.is_empty() || list.len() > MAX_STEPS as usize {
                return Err(range_err("timesteps", &format!("1 to {MAX_STEPS} entries")));
            }
            if list.windows(2).any(|w| w[1] >= w[0]) {
                return Err(range_err("timesteps", "strictly decreasing"));
            }
            if steps.is_some() {
                return Err(ApiError::field(
                    "timesteps",
                    "invalid_value",
                    "give steps or timesteps, not both",
                ));
            }
            Some(list)
        }
    };
    let cfg_zero_star = match get("cfg_zero_star") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
        Some(_) => return Err(range_err("cfg_zero_star", "true or false")),
    };
    let zero_init_steps = match get("zero_init_steps") {
        None => 0,
        Some(v) => match as_u64("zero_init_steps", v)? {
            n if n <= MAX_STEPS => n as usize,
            _ => return Err(range_err("zero_init_steps", &format!("in 0..={MAX_STEPS}"))),
        },
    };
    let cache = parse_cache(&get)?;
    let context_scale = match get("context_scale") {
        None => None,
        Some(v) => {
            let s = as_f64("context_scale", v)? as f32;
            // The runtime's rule (a finite f32), as wan-run applies it.
            wanrt_runtime::vace::hint_scales(Some(s), 1).map_err(|e| runtime_field_error(&e))?;
            Some(s)
        }
    };
    let is_vace = vace.any() || context_scale.is_some();
    if is_vace && (has_image || has_last_image) {
        let part = if has_image {
            "input_reference"
        } else {
            "last_image"
        };
        return Err(ApiError::field(
            part,
            "unsupported_task",
            format!(
                "a VACE job (control_video, control_mask, reference_image, context_scale) takes no {part}: give the reference images as reference_image"
            ),
        ));
    }
    let seed = match get("seed") {
        None => seed(),
        Some(v) => match as_u64("seed", v)? {
            s if s < (1 << 53) => s,
            _ => return Err(range_err("seed", "below 2^53 (exact in JSON numbers)")),
        },
    };

    // The profile: the task from the images and VACE parts (the runtime's
    // rules of which task takes which input), then size and length. A job
    // without VACE parts never goes to VACE engines.
    let takes = |p: &&ProfileInfo| {
        (p.task == Task::Vace) == is_vace
            && check_task_vace(p.task, is_vace).is_ok()
            && check_task_image(p.task, has_image).is_ok()
            && check_task_last_image(p.task, has_last_image).is_ok()
    };
    let mut candidates: Vec<&ProfileInfo> = profiles.iter().filter(takes).collect();
    if candidates.is_empty() && is_vace {
        let keys = profiles
            .iter()
            .map(ProfileInfo::key)
            .collect::<Vec<_>>()
            .join(", ");
        let part = vace.first();
        return Err(ApiError::field(
            part,
            "unsupported_task",
            format!(
                "{part} is a VACE input and no VACE (video creation and editing) engines are loaded; loaded: {keys}"
            ),
        ));
    }
    if is_vace {
        // VACE engines take a fixed number of reference images: the count
        // given chooses among them.
        let refs = vace.reference_images;
        let mut counts: Vec<u32> = candidates.iter().map(|p| p.reference_images).collect();
        counts.sort_unstable();
        counts.dedup();
        candidates.retain(|p| p.reference_images as usize == refs);
        if candidates.is_empty() {
            let counts = counts
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(ApiError::field(
                "reference_image",
                "invalid_value",
                format!(
                    "reference_image: {refs} given; the loaded VACE engines take {counts} (one part per image, in order)"
                ),
            ));
        }
    }
    if candidates.is_empty() {
        let keys = profiles
            .iter()
            .map(ProfileInfo::key)
            .collect::<Vec<_>>()
            .join(", ");
        let (param, what) = match (has_image, has_last_image) {
            (_, true) => (
                "last_image",
                "no first-last-frame-to-video engines are loaded",
            ),
            (true, false) => (
                "input_reference",
                "no image-to-video engines are loaded (first-last-frame-to-video engines take a last_image too)",
            ),
            (false, false) => (
                "input_reference",
                "no text-to-video engines are loaded: send an input_reference image (and a last_image for first-last-frame-to-video engines)",
            ),
        };
        return Err(ApiError::field(
            param,
            "unsupported_task",
            format!("{what}; loaded: {keys}"),
        ));
    }
    let sizes = |c: &[&ProfileInfo]| {
        c.iter()
            .map(|p| format!("{}x{} {} frames", p.width, p.height, p.frames))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let loaded = sizes(&candidates);
    if let Some(v) = get("size") {
        let s = as_str("size", v)?;
        let (w, h) = s
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
            .ok_or_else(|| range_err("size", "WIDTHxHEIGHT, e.g. 832x480"))?;
        candidates.retain(|p| (p.width, p.height) == (w, h));
        if candidates.is_empty() {
            return Err(ApiError::field(
                "size",
                "unknown_size",
                format!("no engines for size {s}; loaded: {loaded}"),
            ));
        }
    }
    let frames = match (get("frames"), get("seconds")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "seconds",
                "invalid_value",
                "give seconds or frames, not both",
            ));
        }
        (Some(v), None) => Some(("frames", as_u64("frames", v)? as f64)),
        (None, Some(v)) => {
            let s = as_f64("seconds", v)?;
            Some(("seconds", s * wanrt_media::video::DEFAULT_FPS as f64 + 1.0))
        }
        (None, None) => None,
    };
    if let Some((param, f)) = frames {
        candidates.retain(|p| p.frames as f64 == f);
        if candidates.is_empty() {
            return Err(ApiError::field(
                param,
                "unknown_length",
                format!(
                    "no engines for that length (16 fps, frames = 16·seconds + 1); loaded: {loaded}"
                ),
            ));
        }
    }
    let profile = match candidates.as_slice() {
        [one] => (*one).clone(),
        _ => {
            return Err(ApiError::field(
                "size",
                "ambiguous_size",
                format!("several engines fit; give size and seconds (loaded: {loaded})"),
            ));
        }
    };
    let vace = if is_vace {
        let refs = vace.reference_images;
        Some(VaceRequest {
            control_video: vace.control_video,
            control_mask: vace.control_mask,
            reference_images: refs as u32,
            context_scale,
        })
    } else {
        None
    };
    Ok(JobRequest {
        prompt: prompt.to_string(),
        negative_prompt,
        steps,
        guidance_scale,
        shift,
        solver,
        seed,
        timesteps,
        cfg_zero_star,
        zero_init_steps,
        profile,
        has_image,
        has_last_image,
        cache,
        vace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> Vec<ProfileInfo> {
        vec![
            ProfileInfo {
                task: Task::T2v,
                width: 32,
                height: 32,
                frames: 9,
                reference_images: 0,
            },
            ProfileInfo {
                task: Task::T2v,
                width: 64,
                height: 32,
                frames: 9,
                reference_images: 0,
            },
        ]
    }

    fn parse(v: Value) -> Result<JobRequest, ApiError> {
        parse_request(
            v.as_object().unwrap(),
            false,
            false,
            VaceParts::default(),
            &profiles(),
            || 7,
        )
    }

    #[test]
    fn fields_are_checked_by_name() {
        let ok = parse(serde_json::json!({"prompt": "a cat", "size": "64x32", "seconds": "0.5"}))
            .unwrap();
        assert_eq!(
            (ok.profile.width, ok.seed, ok.solver.as_str()),
            (64, 7, "unipc")
        );
        let ok = parse(serde_json::json!({"prompt": "a cat", "size": "32x32", "frames": 9, "steps": "3", "seed": 5})).unwrap();
        assert_eq!((ok.profile.width, ok.steps, ok.seed), (32, Some(3), 5));
        for (body, param, code) in [
            (serde_json::json!({}), "prompt", "missing"),
            (
                serde_json::json!({"prompt": " "}),
                "prompt",
                "invalid_value",
            ),
            (serde_json::json!({"prompt": 3}), "prompt", "invalid_type"),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "bogus": 1}),
                "bogus",
                "unknown_parameter",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "16x16"}),
                "size",
                "unknown_size",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "big"}),
                "size",
                "invalid_value",
            ),
            (serde_json::json!({"prompt": "x"}), "size", "ambiguous_size"),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "seconds": 5}),
                "seconds",
                "unknown_length",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "steps": 0}),
                "steps",
                "invalid_value",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "steps": -1}),
                "steps",
                "invalid_type",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "guidance_scale": "NaN"}),
                "guidance_scale",
                "invalid_type",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "shift": 0}),
                "shift",
                "invalid_value",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "solver": "ddim"}),
                "solver",
                "invalid_value",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "seed": 9007199254740992u64}),
                "seed",
                "invalid_value",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "input_reference": "x.png"}),
                "input_reference",
                "invalid_type",
            ),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(
                (e.param.as_deref(), e.code),
                (Some(param), code),
                "{body}: {}",
                e.message
            );
            assert_eq!(e.status.as_u16(), 422);
        }
        // An image asks for I2V engines, and none are loaded.
        let e = parse_request(
            serde_json::json!({"prompt": "x"}).as_object().unwrap(),
            true,
            false,
            VaceParts::default(),
            &profiles(),
            || 0,
        )
        .unwrap_err();
        assert_eq!(e.code, "unsupported_task");
    }

    #[test]
    fn step_distill_and_cfg_zero_star_options_are_checked() {
        let ok = parse(serde_json::json!({"prompt": "x", "size": "32x32",
            "timesteps": [1000, 750, 500, 250], "solver": "euler", "guidance_scale": 1,
            "cfg_zero_star": true, "zero_init_steps": 1}))
        .unwrap();
        assert_eq!(ok.timesteps, Some(vec![1000, 750, 500, 250]));
        assert!(ok.cfg_zero_star);
        assert_eq!((ok.zero_init_steps, ok.solver.as_str()), (1, "euler"));
        // A multipart form sends text.
        let ok = parse(serde_json::json!({"prompt": "x", "size": "32x32",
            "timesteps": "1000, 500", "cfg_zero_star": "false", "solver": "lcm"}))
        .unwrap();
        assert_eq!(
            (ok.timesteps, ok.cfg_zero_star),
            (Some(vec![1000, 500]), false)
        );
        let base = parse(serde_json::json!({"prompt": "x", "size": "32x32"})).unwrap();
        assert_eq!(
            (
                base.timesteps.clone(),
                base.cfg_zero_star,
                base.zero_init_steps
            ),
            (None, false, 0)
        );
        for (body, param) in [
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "timesteps": [500, 750]}),
                "timesteps",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "timesteps": [1001]}),
                "timesteps",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "timesteps": []}),
                "timesteps",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "timesteps": 5}),
                "timesteps",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "steps": 4, "timesteps": [1000]}),
                "timesteps",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "cfg_zero_star": 1}),
                "cfg_zero_star",
            ),
            (
                serde_json::json!({"prompt": "x", "size": "32x32", "zero_init_steps": 5000}),
                "zero_init_steps",
            ),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert_eq!(e.status.as_u16(), 422, "{body}");
        }
        // Jobs persisted before these fields existed still read.
        let mut v = serde_json::to_value(&base).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("cfg_zero_star");
        o.remove("zero_init_steps");
        let back: JobRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, base);
    }

    #[test]
    fn cache_fields_are_checked_by_the_runtime_rules() {
        let ok = parse(serde_json::json!({"prompt": "x", "size": "32x32",
            "cache": "fbcache", "cache_threshold": "0.1"}))
        .unwrap();
        assert_eq!(
            (ok.cache.policy, ok.cache.threshold, ok.cache.preset.clone()),
            (CachePolicy::FbCache, Some(0.1), None)
        );
        let ok = parse(serde_json::json!({"prompt": "x", "size": "32x32",
            "cache": "magcache", "cache_threshold": "default", "cache_max_skip": "3",
            "cache_retention": 0.25}))
        .unwrap();
        assert_eq!(
            (
                ok.cache.threshold,
                ok.cache.preset.as_deref(),
                ok.cache.max_skip,
                ok.cache.retention
            ),
            (None, Some("default"), Some(3), Some(0.25))
        );
        let ok = parse(serde_json::json!({"prompt": "x", "size": "32x32",
            "cache": "teacache-ret", "cache_threshold": 0.3}))
        .unwrap();
        assert_eq!(
            (ok.cache.policy, ok.cache.threshold),
            (CachePolicy::TeaCacheRet, Some(0.3))
        );
        // A cached request round-trips; one without a cache stores none.
        let back: JobRequest = serde_json::from_value(serde_json::to_value(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);
        let base =
            parse(serde_json::json!({"prompt": "x", "size": "32x32", "cache": "none"})).unwrap();
        assert!(base.cache.is_none());
        assert!(serde_json::to_value(&base).unwrap().get("cache").is_none());

        let x = |extra: Value| {
            let mut v = serde_json::json!({"prompt": "x", "size": "32x32"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        for (body, param, code) in [
            (
                x(serde_json::json!({"cache": "ddim"})),
                "cache",
                "invalid_value",
            ),
            (x(serde_json::json!({"cache": 3})), "cache", "invalid_type"),
            (
                x(serde_json::json!({"cache": "fbcache", "cache_threshold": "-1"})),
                "cache_threshold",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "fbcache", "cache_threshold": 0})),
                "cache_threshold",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "fbcache", "cache_threshold": "0.1x"})),
                "cache_threshold",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "fbcache", "cache_threshold": [0.1]})),
                "cache_threshold",
                "invalid_type",
            ),
            (
                x(serde_json::json!({"cache_threshold": 0.1})),
                "cache_threshold",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "fbcache", "cache_max_skip": 2})),
                "cache_max_skip",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "magcache", "cache_max_skip": 0})),
                "cache_max_skip",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "magcache", "cache_max_skip": -1})),
                "cache_max_skip",
                "invalid_type",
            ),
            (
                x(serde_json::json!({"cache": "magcache", "cache_max_skip": 1u64 << 33})),
                "cache_max_skip",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "magcache", "cache_retention": 1})),
                "cache_retention",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "teacache", "cache_retention": 0.2})),
                "cache_retention",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "magcache", "cache_retention": "NaN"})),
                "cache_retention",
                "invalid_type",
            ),
            (
                x(serde_json::json!({"cache_retention": 0.2})),
                "cache_retention",
                "invalid_value",
            ),
            (
                x(serde_json::json!({"cache": "magcache", "cache_table": "/etc/passwd"})),
                "cache_table",
                "unsupported_parameter",
            ),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(
                (e.param.as_deref(), e.code),
                (Some(param), code),
                "{body}: {}",
                e.message
            );
            assert_eq!(e.status.as_u16(), 422, "{body}");
            // Fields, never the CLI's flags.
            assert!(!e.message.contains("--"), "{body}: {}", e.message);
        }
    }

    #[test]
    fn runtime_refusals_name_the_field() {
        let e = runtime_field_error(&wanrt_runtime::Error::arg(
            "--cache-max-skip",
            "the maximum run of skips applies to --cache magcache, not --cache fbcache",
        ));
        assert_eq!(
            (e.param.as_deref(), e.status.as_u16(), e.message.as_str()),
            (
                Some("cache_max_skip"),
                422,
                "cache_max_skip: the maximum run of skips applies to cache magcache, not cache fbcache"
            )
        );
        let e = runtime_field_error(&wanrt_runtime::Error::arg("--last-image", "x is 2x2"));
        assert_eq!(e.param.as_deref(), Some("last_image"));
        let e = runtime_field_error(&wanrt_runtime::Error::arg("--image", "pass --image"));
        assert_eq!(
            (e.param.as_deref(), e.message.as_str()),
            (
                Some("input_reference"),
                "input_reference: pass input_reference"
            )
        );
        let e = runtime_field_error(&wanrt_runtime::Error::arg("--cache-table", "needs a table"));
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("cache"), "no_cache_table")
        );
        let e = runtime_field_error(&wanrt_runtime::Error::Interrupted);
        assert_eq!(e.status.as_u16(), 500);
    }

    #[test]
    fn the_task_follows_the_images() {
        let p = |task, width| ProfileInfo {
            task,
            width,
            height: 32,
            frames: 9,
            reference_images: 0,
        };
        let all = [p(Task::T2v, 32), p(Task::I2v, 64), p(Task::Flf2v, 32)];
        let body = serde_json::json!({"prompt": "x"});
        let body = body.as_object().unwrap();
        let task = |image, last, profiles: &[ProfileInfo]| {
            parse_request(body, image, last, VaceParts::default(), profiles, || 0)
                .map(|r| r.profile.task)
        };
        assert_eq!(task(false, false, &all).unwrap(), Task::T2v);
        assert_eq!(task(true, false, &all).unwrap(), Task::I2v);
        assert_eq!(task(true, true, &all).unwrap(), Task::Flf2v);
        let r = parse_request(body, true, true, VaceParts::default(), &all, || 0).unwrap();
        assert!(r.has_image && r.has_last_image);
        for (image, last, profiles, param, code) in [
            (false, true, &all[..], "last_image", "missing_first_frame"),
            (true, true, &all[..2], "last_image", "unsupported_task"),
            (
                true,
                false,
                &all[2..],
                "input_reference",
                "unsupported_task",
            ),
            (
                false,
                false,
                &all[1..],
                "input_reference",
                "unsupported_task",
            ),
        ] {
            let e = task(image, last, profiles).unwrap_err();
            assert_eq!(
                (e.param.as_deref(), e.code),
                (Some(param), code),
                "{image} {last}: {}",
                e.message
            );
        }
        // VACE engines are never picked: the job API has no VACE inputs.
        let e = task(false, false, &[p(Task::Vace, 32)]).unwrap_err();
        assert_eq!(e.code, "unsupported_task");
        // An image part is not a JSON field.
        let e = parse_request(
            serde_json::json!({"prompt": "x", "last_image": "a.png"})
                .as_object()
                .unwrap(),
            false,
            false,
            VaceParts::default(),
            &all,
            || 0,
        )
        .unwrap_err();
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("last_image"), "invalid_type")
        );
    }

    #[test]
    fn vace_parts_route_to_vace_engines() {
        let p = |task, refs| ProfileInfo {
            task,
            width: 32,
            height: 32,
            frames: 9,
            reference_images: refs,
        };
        let all = [p(Task::T2v, 0), p(Task::Vace, 2)];
        let parts = |video, mask, refs| VaceParts {
            control_video: video,
            control_mask: mask,
            reference_images: refs,
        };
        let run = |body: Value, image, vace, profiles: &[ProfileInfo]| {
            parse_request(
                body.as_object().unwrap(),
                image,
                false,
                vace,
                profiles,
                || 0,
            )
        };
        let x = serde_json::json!({"prompt": "x"});
        let r = run(x.clone(), false, parts(true, true, 2), &all).unwrap();
        assert_eq!(r.profile.task, Task::Vace);
        assert_eq!(
            r.vace,
            Some(VaceRequest {
                control_video: true,
                control_mask: true,
                reference_images: 2,
                context_scale: None,
            })
        );
        let with_scale = serde_json::json!({"prompt": "x", "context_scale": "0.75"});
        let r = run(with_scale, false, parts(false, false, 2), &all).unwrap();
        assert_eq!(r.vace.as_ref().unwrap().context_scale, Some(0.75));
        // A request without VACE parts goes to the T2V engines.
        let r = run(x.clone(), false, VaceParts::default(), &all).unwrap();
        assert_eq!((r.profile.task, r.vace), (Task::T2v, None));
        // VACE engines of one size with 1 and 2 reference images: the count
        // given picks one, and their keys (the queues) differ.
        let two_vace = [p(Task::Vace, 1), p(Task::Vace, 2)];
        assert_eq!(
            two_vace.iter().map(ProfileInfo::key).collect::<Vec<_>>(),
            ["vace-32x32x9-r1", "vace-32x32x9-r2"]
        );
        assert_eq!(p(Task::Vace, 0).key(), "vace-32x32x9");
        for refs in [1, 2] {
            let r = run(x.clone(), false, parts(true, false, refs), &two_vace).unwrap();
            assert_eq!(r.profile.reference_images as usize, refs);
        }
        let e = run(x.clone(), false, parts(true, false, 3), &two_vace).unwrap_err();
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("reference_image"), "invalid_value")
        );
        assert!(e.message.contains("take 1 or 2"), "{}", e.message);
        // A VACE request round-trips; older records without `vace` read.
        let r = run(x.clone(), false, parts(true, false, 2), &all).unwrap();
        let back: JobRequest = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        for (body, image, vace, profiles, param, code) in [
            (
                x.clone(),
                false,
                parts(true, false, 2),
                &all[..1],
                "control_video",
                "unsupported_task",
            ),
            (
                x.clone(),
                false,
                parts(false, false, 1),
                &all[..1],
                "reference_image",
                "unsupported_task",
            ),
            (
                serde_json::json!({"prompt": "x", "context_scale": 1}),
                false,
                VaceParts::default(),
                &all[..1],
                "context_scale",
                "unsupported_task",
            ),
            (
                x.clone(),
                false,
                parts(true, false, 1),
                &all[..],
                "reference_image",
                "invalid_value",
            ),
            (
                x.clone(),
                false,
                parts(false, true, 2),
                &all[..],
                "control_mask",
                "missing_control_video",
            ),
            (
                x.clone(),
                true,
                parts(true, false, 2),
                &all[..],
                "input_reference",
                "unsupported_task",
            ),
            (
                serde_json::json!({"prompt": "x", "context_scale": "1e39"}),
                false,
                parts(true, false, 2),
                &all[..],
                "context_scale",
                "invalid_value",
            ),
            (
                serde_json::json!({"prompt": "x", "context_scale": "NaN"}),
                false,
                parts(true, false, 2),
                &all[..],
                "context_scale",
                "invalid_type",
            ),
            (
                serde_json::json!({"prompt": "x", "control_video": "/etc/hostname"}),
                false,
                VaceParts::default(),
                &all[..],
                "control_video",
                "invalid_type",
            ),
        ] {
            let e = run(body.clone(), image, vace, profiles).unwrap_err();
            assert_eq!(
                (e.param.as_deref(), e.code),
                (Some(param), code),
                "{body} {vace:?}: {}",
                e.message
            );
            assert!(!e.message.contains("--"), "{}", e.message);
        }
    }

    #[test]
    fn ids_are_fresh_and_checked() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(valid_id(&a) && valid_id(&b), "{a} {b}");
        for bad in ["", "video_", "video_../x", "x_00", "video_0g"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}

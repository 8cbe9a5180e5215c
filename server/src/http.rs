//! The HTTP API: the job routes of the OpenAI Videos shape under
//! `/v1/videos`, health and readiness, Prometheus metrics and the OpenAPI
//! document. Every error is JSON ([`ApiError`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use wanrt_runtime::pipeline::{DitGraphs, cache_plan_for, check_last_image_size};

use crate::error::{ApiError, Result};
use crate::job::{
    Job, JobRequest, ProfileInfo, Status, VaceParts, parse_request, runtime_field_error, valid_id,
};
use crate::metrics::Metrics;
use crate::queue::{Deleted, Queue};
use crate::store::Store;
use crate::worker::{Control, EngineSlot};

/// Size limits of requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Whole request body (413 past it).
    pub max_request_bytes: usize,
    /// The `input_reference` image (413 past it).
    pub max_image_bytes: usize,
}

pub struct Inner {
    pub queue: Arc<dyn Queue>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub control: Arc<Control>,
    pub slots: Vec<Arc<EngineSlot>>,
    pub limits: Limits,
    pub api_key: Option<String>,
}

pub type AppState = Arc<Inner>;

pub fn router(state: AppState) -> Router {
    let limit = state.limits.max_request_bytes;
    Router::new()
        .route("/v1/videos", post(create).get(list))
        .route("/v1/videos/{id}", get(retrieve).delete(remove))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/cancel", post(cancel))
        .route("/v1/videos/{id}/events", get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Runs blocking queue or file work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("a worker task failed: {e}"),
        )),
    }
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes()));
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "missing or wrong bearer token (Authorization: Bearer KEY)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Most `reference_image` parts read (the most any engines take).
const MAX_REFERENCE_PARTS: usize = wanrt_core::profile::MAX_REFERENCE_IMAGES as usize;

fn too_large(param: Option<&str>, limit: usize) -> ApiError {
    ApiError {
        param: param.map(str::to_string),
        ..ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the {} exceeds {limit} bytes",
                param.unwrap_or("request body")
            ),
        )
    }
}

/// A seed when the request has none, as `wan-run` draws one: below 2^53.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::job::now_ms());
    h.finish() % (1 << 53)
}

/// Seconds until a slot is likely free: the queue ahead times the mean job.
fn retry_after(metrics: &Metrics, depth: usize, workers: usize) -> u64 {
    let mean = metrics.mean_job_seconds().unwrap_or(10.0);
    let s = mean * (depth as f64 + 1.0) / workers.max(1) as f64;
    s.ceil().clamp(1.0, 3600.0) as u64
}

/// An uploaded image part: its bytes (stored as sent) and its size once
/// decoded.
pub struct ImagePart {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// A request's fields and image parts.
pub struct Upload {
    pub fields: Map<String, Value>,
    /// `input_reference`: the image (I2V), the first frame (FLF2V).
    pub image: Option<ImagePart>,
    /// `last_image`: the last frame (FLF2V).
    pub last_image: Option<ImagePart>,
    /// VACE: `control_video` and `control_mask` (MP4 bytes, checked once
    /// the engines are chosen) and the `reference_image` parts in order.
    pub control_video: Option<Vec<u8>>,
    pub control_mask: Option<Vec<u8>>,
    pub reference_images: Vec<ImagePart>,
}

impl Upload {
    fn vace_parts(&self) -> VaceParts {
        VaceParts {
            control_video: self.control_video.is_some(),
            control_mask: self.control_mask.is_some(),
            reference_images: self.reference_images.len(),
        }
    }
}

/// The image parts of a multipart request.
const IMAGE_PARTS: [&str; 2] = ["input_reference", "last_image"];
/// The video parts (H.264 MP4) of a multipart request (VACE).
const VIDEO_PARTS: [&str; 2] = ["control_video", "control_mask"];

/// Reads one video part (at most `max` bytes); its frames are checked
/// against the chosen engines by [`check_videos`].
async fn read_video_part(
    field: axum::extract::multipart::Field<'_>,
    name: &'static str,
    max: usize,
    fail: impl Fn(axum::extract::multipart::MultipartError) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let bytes = field.bytes().await.map_err(fail)?;
    if bytes.len() > max {
        return Err(too_large(Some(name), max));
    }
    Ok(bytes.to_vec())
}

/// Decodes the VACE video parts as wan-run decodes `--control-video` /
/// `--control-mask` MP4 files, checked against the engines' profile while
/// decoding (a wrong size stops at its first frame, too many frames before
/// any is decoded); a refusal is a 422 naming the part, before anything is
/// stored. No frame is kept: the worker decodes the stored copy again.
async fn check_videos(
    profile: wanrt_core::Profile,
    videos: Vec<(&'static str, Vec<u8>)>,
) -> Result<Vec<(&'static str, Vec<u8>)>, ApiError> {
    let checked = tokio::task::spawn_blocking(move || {
        for (part, bytes) in &videos {
            let flag = format!("--{}", part.replace('_', "-"));
            if let Err(e) = wanrt_media::frames::check_mp4_frames(
                bytes,
                std::path::Path::new(part),
                &flag,
                &profile,
            ) {
                let refused = runtime_field_error(&e);
                return Err(ApiError {
                    code: if refused.status == StatusCode::UNPROCESSABLE_ENTITY {
                        "invalid_video"
                    } else {
                        refused.code
                    },
                    ..refused
                });
            }
        }
        Ok(videos)
    })
    .await;
    match checked {
        Ok(r) => r,
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )),
    }
}

/// Reads one image part (at most `max` bytes) and decodes it as wan-run
/// decodes an image file, so that bad bytes are a 422 naming the part
/// before anything is stored.
async fn read_image(
    field: axum::extract::multipart::Field<'_>,
    name: &'static str,
    max: usize,
    fail: impl Fn(axum::extract::multipart::MultipartError) -> ApiError,
) -> Result<ImagePart, ApiError> {
    let bytes = field.bytes().await.map_err(fail)?;
    if bytes.len() > max {
        return Err(too_large(Some(name), max));
    }
    let bytes = bytes.to_vec();
    let checked = bytes.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        wanrt_media::image::decode_image(&checked, std::path::Path::new(name))
            .map(|img| (img.width(), img.height()))
    })
    .await;
    match decoded {
        Ok(Ok((width, height))) => Ok(ImagePart {
            bytes,
            width,
            height,
        }),
        Ok(Err(e)) => Err(ApiError::field(name, "invalid_image", e.to_string())),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )),
    }
}

async fn read_fields(s: &AppState, req: Request) -> Result<Upload, ApiError> {
    let limit = s.limits.max_request_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(None, limit));
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, &()).await.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
        })?;
        let mut fields = Map::new();
        let (mut image, mut last_image) = (None, None);
        let (mut control_video, mut control_mask) = (None, None);
        let mut reference_images = Vec::new();
        let fail = |e: axum::extract::multipart::MultipartError| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large(None, limit)
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
            }
        };
        while let Some(field) = mp.next_field().await.map_err(fail)? {
            let name = field.name().unwrap_or("").to_string();
            if let Some(part) = IMAGE_PARTS.into_iter().find(|p| *p == name) {
                let slot = if part == "input_reference" {
                    &mut image
                } else {
                    &mut last_image
                };
                if slot.is_some() {
                    return Err(ApiError::field(
                        part,
                        "duplicate_field",
                        format!("{part} given twice"),
                    ));
                }
                *slot = Some(read_image(field, part, s.limits.max_image_bytes, fail).await?);
            } else if let Some(part) = VIDEO_PARTS.into_iter().find(|p| *p == name) {
                let slot = if part == "control_video" {
                    &mut control_video
                } else {
                    &mut control_mask
                };
                if slot.is_some() {
                    return Err(ApiError::field(
                        part,
                        "duplicate_field",
                        format!("{part} given twice"),
                    ));
                }
                *slot = Some(read_video_part(field, part, s.limits.max_image_bytes, fail).await?);
            } else if name == "reference_image" {
                // Repeatable: the order of the parts is the images' order.
                if reference_images.len() == MAX_REFERENCE_PARTS {
                    return Err(ApiError::field(
                        "reference_image",
                        "invalid_value",
                        format!("reference_image: more than {MAX_REFERENCE_PARTS} parts"),
                    ));
                }
                reference_images.push(
                    read_image(field, "reference_image", s.limits.max_image_bytes, fail).await?,
                );
            } else {
                let text = field.text().await.map_err(fail)?;
                if fields.insert(name.clone(), Value::String(text)).is_some() {
                    return Err(ApiError::field(
                        &name,
                        "duplicate_field",
                        format!("{name} given twice"),
                    ));
                }
            }
        }
        Ok(Upload {
            fields,
            image,
            last_image,
            control_video,
            control_mask,
            reference_images,
        })
    } else if ct.is_empty() || ct.starts_with("application/json") {
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| too_large(None, limit))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        match v {
            Value::Object(fields) => Ok(Upload {
                fields,
                image: None,
                last_image: None,
                control_video: None,
                control_mask: None,
                reference_images: Vec::new(),
            }),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body must be a JSON object",
            )),
        }
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type '{ct}': send application/json or multipart/form-data"),
        ))
    }
}

fn profiles_of(s: &AppState, advertised: Vec<ProfileInfo>) -> Vec<ProfileInfo> {
    let mut all: Vec<ProfileInfo> = s.slots.iter().map(|slot| slot.info.clone()).collect();
    for p in advertised {
        if !all.contains(&p) {
            all.push(p);
        }
    }
    all
}

async fn create(State(s): State<AppState>, req: Request) -> Response {
    match create_job(&s, req).await {
        Ok(job) => {
            s.metrics.jobs_accepted.inc();
            axum::Json(job.to_api()).into_response()
        }
        Err(e) => {
            s.metrics
                .jobs_rejected
                .with_label_values(&[e.status.as_str()])
                .inc();
            e.into_response()
        }
    }
}

async fn create_job(s: &AppState, req: Request) -> Result<Job, ApiError> {
    if s.control.draining.load(Ordering::SeqCst) {
        return Err(ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; submit to another one",
            )
        });
    }
    let upload = read_fields(s, req).await?;
    let vace_parts = upload.vace_parts();
    let Upload {
        fields,
        image,
        last_image,
        control_video,
        control_mask,
        reference_images,
    } = upload;
    let q = s.queue.clone();
    let advertised = blocking(move || q.profiles()).await?;
    let profiles = profiles_of(s, advertised);
    let request = parse_request(
        &fields,
        image.is_some(),
        last_image.is_some(),
        vace_parts,
        &profiles,
        random_seed,
    )?;
    if let (Some(first), Some(last)) = (&image, &last_image) {
        check_last_image_size(
            (first.width, first.height),
            (last.width, last.height),
            "last_image",
        )
        .map_err(|e| runtime_field_error(&e))?;
    }
    check_cache(s, &request)?;
    let videos = if request.vace.is_some() {
        let videos: Vec<(&'static str, Vec<u8>)> = [
            ("control_video", control_video),
            ("control_mask", control_mask),
        ]
        .into_iter()
        .filter_map(|(part, bytes)| Some((part, bytes?)))
        .collect();
        let profile = request.profile.profile().map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("the profile of engines {}: {e}", request.profile.key()),
            )
        })?;
        check_videos(profile, videos).await?
    } else {
        Vec::new()
    };
    let job = Job::new(request);
    let (q, store, j) = (s.queue.clone(), s.store.clone(), job.clone());
    let submitted = blocking(move || {
        let uploads = image.is_some()
            || last_image.is_some()
            || !videos.is_empty()
            || !reference_images.is_empty();
        let saved = (|| {
            if let Some(img) = &image {
                store.save_image(&j.id, &img.bytes)?;
            }
            if let Some(img) = &last_image {
                store.save_last_image(&j.id, &img.bytes)?;
            }
            for (part, bytes) in &videos {
                store.save_video_part(&j.id, part, bytes)?;
            }
            for (i, img) in reference_images.iter().enumerate() {
                store.save_reference_image(&j.id, i, &img.bytes)?;
            }
            Ok::<_, crate::error::Error>(())
        })();
        if let Err(e) = saved {
            // Not half a job's images: the folder goes with the refusal.
            let _ = store.remove(&j.id);
            return Err(e);
        }
        let r = q.submit(&j)?;
        if r.is_err() && uploads {
            store.remove(&j.id)?;
        }
        Ok(r)
    })
    .await?;
    match submitted {
        Ok(()) => Ok(job),
        Err(full) => Err(ApiError {
            retry_after: Some(retry_after(&s.metrics, full.depth, s.slots.len())),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "{} jobs are waiting, the most this server queues",
                    full.depth
                ),
            )
        }),
    }
}

/// The step cache settled against the engines' model, as the pipeline
/// settles it (built-in tables and presets of the official checkpoints),
/// when this server has the job's engines. A profile only other servers
/// of the queue serve is checked by the worker that runs the job (a
/// refusal fails the job, naming the field).
fn check_cache(s: &AppState, request: &JobRequest) -> Result<(), ApiError> {
    if request.cache.is_none() {
        return Ok(());
    }
    let Some(slot) = s.slots.iter().find(|slot| slot.info == request.profile) else {
        return Ok(());
    };
    cache_plan_for(
        &slot.artifacts,
        DitGraphs::Stages,
        &request.cache,
        request.steps_to_run(),
        request.zero_init_steps,
    )
    .map(|_| ())
    .map_err(|e| runtime_field_error(&e))
}

async fn get_job(s: &AppState, id: &str) -> Result<Job, ApiError> {
    if !valid_id(id) {
        return Err(ApiError::not_found(id));
    }
    let (q, i) = (s.queue.clone(), id.to_string());
    blocking(move || q.get(&i))
        .await?
        .ok_or_else(|| ApiError::not_found(id))
}

async fn retrieve(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(axum::Json(get_job(&s, &id).await?.to_api()).into_response())
}

async fn list(
    State(s): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    if let Some(k) = q.keys().find(|k| !["limit", "after"].contains(&k.as_str())) {
        return Err(ApiError::field(
            k,
            "unknown_parameter",
            format!("unknown query parameter '{k}' (known: limit, after)"),
        ));
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=100) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    "invalid_value",
                    "limit must be in 1..=100",
                ));
            }
        },
    };
    let after = q.get("after").cloned();
    let qq = s.queue.clone();
    let (jobs, more) = blocking(move || qq.list(after.as_deref(), limit)).await?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": jobs.iter().map(Job::to_api).collect::<Vec<_>>(),
        "first_id": jobs.first().map(|j| &j.id),
        "last_id": jobs.last().map(|j| &j.id),
        "has_more": more,
    }))
    .into_response())
}

async fn content(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let job = get_job(&s, &id).await?;
    let (path, mime) = match q.get("variant").map(String::as_str) {
        None | Some("video") => (s.store.video(&id), "video/mp4"),
        Some("sidecar") => (s.store.sidecar(&id), "application/json"),
        Some(v) => {
            return Err(ApiError::field(
                "variant",
                "invalid_value",
                format!("unknown variant '{v}' (video or sidecar)"),
            ));
        }
    };
    if job.status != Status::Completed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_completed",
            format!("video {id} is {}, not completed", job.status.name()),
        ));
    }
    let p = path.clone();
    let bytes =
        blocking(move || std::fs::read(&p).map_err(|e| crate::error::Error::storage(&p, e)))
            .await?;
    Ok(([(header::CONTENT_TYPE, mime)], Body::from(bytes)).into_response())
}

async fn remove(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if !valid_id(&id) {
        return Err(ApiError::not_found(&id));
    }
    let (q, i) = (s.queue.clone(), id.clone());
    match blocking(move || q.delete(&i)).await? {
        Deleted::Gone(_) => Ok(axum::Json(
            json!({"id": id, "object": "video.deleted", "deleted": true}),
        )
        .into_response()),
        Deleted::NotFound => Err(ApiError::not_found(&id)),
        Deleted::Running => Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_progress",
            format!("video {id} is running; cancel it first"),
        )),
    }
}

async fn cancel(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = get_job(&s, &id).await?;
    if matches!(job.status, Status::Completed | Status::Failed) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("video {id} is already {}", job.status.name()),
        ));
    }
    let (q, i) = (s.queue.clone(), id.clone());
    let job = blocking(move || q.cancel(&i))
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    Ok(axum::Json(job.to_api()).into_response())
}

struct Watch {
    state: AppState,
    id: String,
    position: Option<usize>,
    started: bool,
    steps_seen: usize,
    pending: std::collections::VecDeque<Event>,
    first: bool,
    done: bool,
}

fn event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

impl Watch {
    /// Polls the job and turns what changed into events.
    async fn poll(&mut self) {
        let (q, id) = (self.state.queue.clone(), self.id.clone());
        let got = blocking(move || {
            let job = q.get(&id)?;
            let pos = match &job {
                Some(j) if j.status == Status::Queued => q.position(&id)?,
                _ => None,
            };
            Ok((job, pos))
        })
        .await;
        let (job, position) = match got {
            Ok((Some(j), p)) => (j, p),
            Ok((None, _)) => {
                self.pending.push_back(event(
                    "error",
                    json!({"id": self.id, "message": "the video was deleted"}),
                ));
                self.done = true;
                return;
            }
            Err(e) => {
                self.pending
                    .push_back(event("error", json!({"id": self.id, "message": e.message})));
                self.done = true;
                return;
            }
        };
        if job.status == Status::Queued && (self.first || position != self.position) {
            self.position = position;
            self.pending
                .push_back(event("queued", json!({"id": job.id, "position": position})));
        }
        if job.status == Status::InProgress && !self.started {
            self.started = true;
            self.pending.push_back(event(
                "in_progress",
                json!({"id": job.id, "steps": job.steps_total, "worker": job.worker}),
            ));
        }
        if job.step_s.len() < self.steps_seen {
            // Run again from the start (another worker took it over).
            self.steps_seen = 0;
        }
        for (i, secs) in job.step_s.iter().enumerate().skip(self.steps_seen) {
            self.pending.push_back(event(
                "step",
                json!({"id": job.id, "step": i + 1, "steps": job.steps_total, "seconds": secs}),
            ));
        }
        self.steps_seen = job.step_s.len();
        if job.status.is_final() {
            self.pending
                .push_back(event(job.status.name(), job.to_api()));
            self.done = true;
        }
        self.first = false;
    }
}

async fn events(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    get_job(&s, &id).await?;
    let watch = Watch {
        state: s.clone(),
        id,
        position: None,
        started: false,
        steps_seen: 0,
        pending: Default::default(),
        first: true,
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        loop {
            if let Some(ev) = w.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), w));
            }
            if w.done || w.state.control.closing.load(Ordering::SeqCst) {
                return None;
            }
            if !w.first {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            w.poll().await;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    let engines: Vec<Value> = s
        .slots
        .iter()
        .map(|e| json!({"profile": e.info.key(), "ready": e.ready.load(Ordering::SeqCst)}))
        .collect();
    let all = s.slots.iter().all(|e| e.ready.load(Ordering::SeqCst));
    let draining = s.control.draining.load(Ordering::SeqCst);
    let (code, status) = match (all, draining) {
        (_, true) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        (true, false) => (StatusCode::OK, "ready"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
    };
    (
        code,
        axum::Json(json!({"status": status, "engines": engines})),
    )
        .into_response()
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let q = s.queue.clone();
    let depth = blocking(move || q.depth()).await?;
    s.metrics.queue_depth.set(depth as i64);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response())
}

async fn openapi() -> Response {
    axum::Json(crate::openapi::document()).into_response()
}

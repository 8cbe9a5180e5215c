//! `wan-serve`: keeps compiled Wan2.1 engines warm behind an HTTP job API.
//!
//! Each `--engines` directory is loaded once into a [`wanrt_runtime::pipeline::Pipeline`]
//! on its own worker thread and warmed with a short run; jobs wait in a
//! queue ([`queue::LocalQueue`] in `--data`, or [`redis_queue::RedisQueue`]
//! on a Redis Stream shared by many servers), run one at a time per
//! pipeline, and leave their MP4 and JSON sidecar in `--data`. The async
//! side (tokio, axum) only answers HTTP; it never runs a network.

pub mod error;
pub mod http;
pub mod job;
pub mod metrics;
pub mod openapi;
pub mod queue;
pub mod redis_queue;
pub mod store;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use error::{ApiError, Error, ErrorKind, Result};
use wanrt_runtime::backend::BackendChoice;

/// Everything `wan-serve` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub engines: Vec<PathBuf>,
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// `auto` (the default) or a backend; resolved once at start.
    pub backend: BackendChoice,
    pub api_key: Option<String>,
    /// Most jobs waiting (429 past it).
    pub max_queue: usize,
    pub limits: http::Limits,
    /// `redis://HOST:PORT/`: be one worker of a Redis Stream group.
    pub queue: Option<String>,
    /// This worker's consumer name in the group.
    pub worker_name: String,
    /// A claimed job idle this long is taken over by another worker.
    pub claim_timeout: Duration,
    /// On SIGTERM: how long a running job may go on before it is stopped
    /// and queued again.
    pub drain_timeout: Duration,
    /// Prompts whose embeddings are kept per pipeline.
    pub prompt_cache: usize,
    pub warmup_steps: usize,
}

/// Serves until SIGTERM or SIGINT (then drains) or until engines fail to
/// load (an error).
pub async fn serve(cfg: Config) -> Result<()> {
    let store = store::Store::open(&cfg.data)?;
    let resolved = cfg.backend.resolve()?;
    eprintln!("wan-serve: backend {} ({})", resolved.backend, resolved.why);
    let mut slots: Vec<Arc<worker::EngineSlot>> = Vec::new();
    for dir in &cfg.engines {
        let slot = worker::EngineSlot::open(dir.clone(), &resolved)?;
        if let Some(other) = slots.iter().find(|s| s.info.key() == slot.info.key()) {
            return Err(Error::arg(
                "--engines",
                format!(
                    "{} and {} both serve {} (one pipeline per profile)",
                    other.dir.display(),
                    dir.display(),
                    slot.info.key()
                ),
            ));
        }
        slots.push(Arc::new(slot));
    }
    if slots.is_empty() {
        return Err(Error::arg(
            "--engines",
            "give at least one artifact directory",
        ));
    }
    let queue: Arc<dyn queue::Queue> = match &cfg.queue {
        Some(url) => Arc::new(redis_queue::RedisQueue::open(
            url,
            store.clone(),
            cfg.max_queue,
            cfg.claim_timeout,
        )?),
        None => Arc::new(queue::LocalQueue::open(store.clone(), cfg.max_queue)?),
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let control = Arc::new(worker::Control::default());
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::arg("--listen", format!("{}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::arg("--listen", e.to_string()))?;
    eprintln!("wan-serve: listening on http://{addr}");

    let env = worker::WorkerEnv {
        queue: queue.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        control: control.clone(),
        backend: resolved.backend,
        backend_reason: resolved.why.clone(),
        name: cfg.worker_name.clone(),
        prompt_cache: cfg.prompt_cache,
        warmup_steps: cfg.warmup_steps,
    };
    for slot in &slots {
        worker::spawn(slot.clone(), env.clone()).map_err(|e| Error::storage(&slot.dir, e))?;
    }
    let state = Arc::new(http::Inner {
        queue,
        store,
        metrics,
        control: control.clone(),
        slots,
        limits: cfg.limits,
        api_key: cfg.api_key.clone(),
    });
    let app = http::router(state);
    let c = control.clone();
    let drain = cfg.drain_timeout;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown(c, drain).await })
        .await
        .map_err(|e| Error::storage(&PathBuf::from(addr.to_string()), e))?;
    let fatal = control
        .fatal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match fatal {
        Some(reason) => Err(Error::arg("--engines", reason)),
        None => Ok(()),
    }
}

/// Waits for SIGTERM/SIGINT (or a fatal error), then drains: no new jobs,
/// the running ones get `drain` to finish, then stop at their next step
/// and go back to the queue.
async fn shutdown(control: Arc<worker::Control>, drain: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let why = tokio::select! {
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => "SIGTERM",
        _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => "SIGINT",
        _ = control.fatal_notify.notified() => "a fatal error",
    };
    eprintln!(
        "wan-serve: {why}: draining (up to {:.0} s)",
        drain.as_secs_f64()
    );
    control.draining.store(true, Ordering::SeqCst);
    control.stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + drain;
    while control.running.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if control.running.load(Ordering::SeqCst) > 0 {
        eprintln!("wan-serve: drain deadline: stopping running jobs, they stay queued");
        control.abort.store(true, Ordering::SeqCst);
        while control.running.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    control.closing.store(true, Ordering::SeqCst);
    eprintln!("wan-serve: drained");
}

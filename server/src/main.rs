//! `wan-serve`: Wan2.1 engines kept warm behind an HTTP job API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wanrt_runtime::backend::BackendChoice;
use wanrt_server::{Config, http::Limits};

#[derive(Parser, Debug)]
#[command(
    name = "wan-serve",
    version,
    about = "Serve Wan2.1 engines compiled by wan-compile over an HTTP job API"
)]
struct Args {
    /// Artifact directory written by wan-compile (repeat for more
    /// profiles; one pipeline each).
    #[arg(long, required = true)]
    engines: Vec<PathBuf>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Directory of job records, uploaded images and results (shared by
    /// every worker of a Redis deployment).
    #[arg(long, default_value = "wan-serve-data")]
    data: PathBuf,
    /// auto (the CUDA provider when ONNX Runtime has it and a GPU is
    /// visible, else the CPU), ort-cpu, ort-cuda or ort-tensorrt.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// Require `Authorization: Bearer KEY` on /v1/ routes.
    #[arg(long, env = "WAN_SERVE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most jobs waiting to run; more get 429 with Retry-After.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Largest request body in bytes (413 past it).
    #[arg(long, default_value_t = 25 << 20)]
    max_request_bytes: usize,
    /// Largest input_reference image in bytes (413 past it).
    #[arg(long, default_value_t = 20 << 20)]
    max_image_bytes: usize,
    /// redis://HOST:PORT/: take jobs from a Redis Stream consumer group
    /// shared with other servers (default: a local queue in --data).
    #[arg(long)]
    queue: Option<String>,
    /// This worker's name in the consumer group (default: host-pid).
    #[arg(long)]
    worker_name: Option<String>,
    /// Seconds after which a job claimed by a silent worker is taken over.
    #[arg(long, default_value_t = 60.0)]
    claim_timeout: f64,
    /// Seconds a running job may go on after SIGTERM before it is stopped
    /// and queued again.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Prompt embeddings kept per pipeline (0: none).
    #[arg(long, default_value_t = 64)]
    prompt_cache: usize,
    /// Steps of the warm-up run after loading (0: none).
    #[arg(long, default_value_t = 1)]
    warmup_steps: usize,
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("{flag}: {s} is not a number of seconds"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let run = || -> anyhow::Result<()> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "wan".into());
        let cfg = Config {
            engines: args.engines,
            listen: args.listen,
            data: args.data,
            backend: args.backend,
            api_key: args.api_key.filter(|k| !k.is_empty()),
            max_queue: args.max_queue,
            limits: Limits {
                max_request_bytes: args.max_request_bytes,
                max_image_bytes: args.max_image_bytes,
            },
            queue: args.queue,
            worker_name: args
                .worker_name
                .unwrap_or_else(|| format!("{host}-{}", std::process::id())),
            claim_timeout: seconds("--claim-timeout", args.claim_timeout)?,
            drain_timeout: seconds("--drain-timeout", args.drain_timeout)?,
            prompt_cache: args.prompt_cache,
            warmup_steps: args.warmup_steps,
        };
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(wanrt_server::serve(cfg))?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wan-serve: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

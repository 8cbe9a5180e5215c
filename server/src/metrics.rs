//! Prometheus metrics of one server: `GET /metrics` in the text format.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub queue_depth: IntGauge,
    pub jobs_accepted: IntCounter,
    /// By HTTP status of the refusal.
    pub jobs_rejected: IntCounterVec,
    /// By final status: completed, failed, cancelled.
    pub jobs_finished: IntCounterVec,
    pub step_seconds: HistogramVec,
    /// text_encoder, image_conditioning, denoise, vae_decode, video_write.
    pub stage_seconds: HistogramVec,
    /// From submission to the final state.
    pub job_seconds: Histogram,
    pub engine_load_seconds: GaugeVec,
    pub engines_ready: IntGaugeVec,
    pub prompt_cache_hits: IntGaugeVec,
    pub prompt_cache_misses: IntGaugeVec,
    pub resident_memory_bytes: Gauge,
}

fn buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.005, 2.0, 18).unwrap_or_default()
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("wan".into()), None).expect("a static, valid prefix");
        // Every name below is a static, valid, unique metric name, so the
        // constructors and registrations cannot fail.
        let m = Metrics {
            queue_depth: IntGauge::new("queue_depth", "Jobs waiting to run").expect("valid"),
            jobs_accepted: IntCounter::new("jobs_accepted_total", "Jobs accepted").expect("valid"),
            jobs_rejected: IntCounterVec::new(
                Opts::new("jobs_rejected_total", "Submissions refused, by HTTP status"),
                &["status"],
            )
            .expect("valid"),
            jobs_finished: IntCounterVec::new(
                Opts::new("jobs_total", "Jobs run by this server, by outcome"),
                &["outcome"],
            )
            .expect("valid"),
            step_seconds: HistogramVec::new(
                HistogramOpts::new("step_seconds", "Seconds per sampling step").buckets(buckets()),
                &["profile"],
            )
            .expect("valid"),
            stage_seconds: HistogramVec::new(
                HistogramOpts::new("stage_seconds", "Seconds per stage of a job")
                    .buckets(buckets()),
                &["stage"],
            )
            .expect("valid"),
            job_seconds: Histogram::with_opts(
                HistogramOpts::new("job_seconds", "Seconds from submission to the final state")
                    .buckets(buckets()),
            )
            .expect("valid"),
            engine_load_seconds: GaugeVec::new(
                Opts::new(
                    "engine_load_seconds",
                    "Seconds to load and warm the engines",
                ),
                &["profile"],
            )
            .expect("valid"),
            engines_ready: IntGaugeVec::new(
                Opts::new("engines_ready", "1 once the engines are loaded and warm"),
                &["profile"],
            )
            .expect("valid"),
            prompt_cache_hits: IntGaugeVec::new(
                Opts::new(
                    "prompt_cache_hits",
                    "Prompts answered from the embedding cache",
                ),
                &["profile"],
            )
            .expect("valid"),
            prompt_cache_misses: IntGaugeVec::new(
                Opts::new(
                    "prompt_cache_misses",
                    "Prompts run through the text encoder",
                ),
                &["profile"],
            )
            .expect("valid"),
            resident_memory_bytes: Gauge::new("resident_memory_bytes", "Resident set size")
                .expect("valid"),
            registry,
        };
        let r = &m.registry;
        for c in [
            Box::new(m.queue_depth.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.jobs_accepted.clone()),
            Box::new(m.jobs_rejected.clone()),
            Box::new(m.jobs_finished.clone()),
            Box::new(m.step_seconds.clone()),
            Box::new(m.stage_seconds.clone()),
            Box::new(m.job_seconds.clone()),
            Box::new(m.engine_load_seconds.clone()),
            Box::new(m.engines_ready.clone()),
            Box::new(m.prompt_cache_hits.clone()),
            Box::new(m.prompt_cache_misses.clone()),
            Box::new(m.resident_memory_bytes.clone()),
        ] {
            r.register(c).expect("unique names");
        }
        m
    }

    /// The text exposition, with the resident memory read now.
    pub fn render(&self) -> String {
        if let Some(b) = resident_bytes() {
            self.resident_memory_bytes.set(b);
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a
        // malformed metric family, which the static names rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Mean seconds per finished job (`None` before the first).
    pub fn mean_job_seconds(&self) -> Option<f64> {
        let n = self.job_seconds.get_sample_count();
        (n > 0).then(|| self.job_seconds.get_sample_sum() / n as f64)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Current resident set size (Linux `VmRSS`).
fn resident_bytes() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

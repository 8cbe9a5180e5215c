//! Measures wan-serve on loopback against the pipeline called directly:
//!
//! 1. direct: `Pipeline::generate` + the MP4 writer, in this process;
//! 2. serial: the same job through `wan-serve` (submit, poll every 5 ms,
//!    download), one at a time: the server's overhead per job;
//! 3. load: `--jobs` jobs from `--clients` threads at once against
//!    `--max-queue`: jobs per minute, p50/p99 latency, 429s.
//!
//! ```text
//! cargo run --release -p wanrt-server --example load -- --engines DIR [--steps 3]
//! ```
//! (`wan-serve` must be built in the same profile: `cargo build --release
//! -p wanrt-server`.) Every connection stays on 127.0.0.1; counts and
//! times are bounded by the flags.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wanrt_media::video::{RgbFrames, VideoOptions, write_video};
use wanrt_runtime::pipeline::{GenerateOptions, Pipeline};
use wanrt_runtime::{Artifacts, Backend};

struct Args {
    engines: PathBuf,
    steps: u64,
    serial: usize,
    jobs: usize,
    clients: usize,
    max_queue: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        engines: PathBuf::new(),
        steps: 3,
        serial: 10,
        jobs: 60,
        clients: 6,
        max_queue: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--engines" => a.engines = v.into(),
            "--steps" => a.steps = v.parse()?,
            "--serial" => a.serial = v.parse()?,
            "--jobs" => a.jobs = v.parse()?,
            "--clients" => a.clients = v.parse()?,
            "--max-queue" => a.max_queue = v.parse()?,
            _ => anyhow::bail!("unknown flag {flag}"),
        }
    }
    anyhow::ensure!(a.engines.is_dir(), "--engines DIR is required");
    Ok(a)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn body(steps: u64, seed: u64) -> Value {
    json!({"prompt": "A cat and a dog baking a cake in a kitchen.", "steps": steps, "seed": seed})
}

/// Submit → completed → downloaded, polling every 5 ms. `None`: refused (429).
fn one_job(
    c: &reqwest::blocking::Client,
    base: &str,
    steps: u64,
    seed: u64,
) -> anyhow::Result<Option<(f64, String)>> {
    let t0 = Instant::now();
    let r = c
        .post(format!("{base}/v1/videos"))
        .header("content-type", "application/json")
        .body(body(steps, seed).to_string())
        .send()?;
    if r.status() == 429 {
        return Ok(None);
    }
    anyhow::ensure!(r.status() == 200, "submit: {}", r.status());
    let job: Value = serde_json::from_str(&r.text()?)?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    loop {
        let j: Value =
            serde_json::from_str(&c.get(format!("{base}/v1/videos/{id}")).send()?.text()?)?;
        match j["status"].as_str() {
            Some("completed") => break,
            Some("failed") | Some("cancelled") => anyhow::bail!("job {id}: {j}"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "job {id} took too long"
        );
    }
    let bytes = c
        .get(format!("{base}/v1/videos/{id}/content"))
        .send()?
        .bytes()?;
    anyhow::ensure!(!bytes.is_empty(), "empty video");
    Ok(Some((t0.elapsed().as_secs_f64(), id)))
}

fn direct_opts(steps: u64, seed: u64) -> GenerateOptions {
    GenerateOptions {
        prompt: "A cat and a dog baking a cake in a kitchen.".into(),
        steps: Some(steps as usize),
        seed,
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let tmp = tempfile::tempdir()?;

    // 1. Direct.
    let mut pipeline = Pipeline::load(Artifacts::open(&a.engines)?, Backend::OrtCpu)?;
    // Like the server (its default --prompt-cache): the repeated prompt
    // skips the text encoder in both.
    pipeline.prompt_encoder().set_cache_capacity(64);
    let mut direct = Vec::new();
    for i in 0..=a.serial {
        let t0 = Instant::now();
        let g = pipeline.generate(&direct_opts(a.steps, i as u64), None, |_, _, _| {})?;
        let frames = RgbFrames::from_tensor(&g.video)?;
        let out = tmp.path().join(format!("direct-{i}.mp4"));
        write_video(&out, &frames, &VideoOptions::default(), None)?;
        if i > 0 {
            direct.push(t0.elapsed().as_secs_f64()); // the first run warms up
        }
    }
    let mut direct_pipeline = pipeline;

    // 2. and 3. Through the server.
    let exe = std::env::current_exe()?;
    let serve = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("wan-serve"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("wan-serve is not built in this profile"))?;
    let mut child = Command::new(serve)
        .arg("--engines")
        .arg(&a.engines)
        .arg("--data")
        .arg(tmp.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-queue",
            &a.max_queue.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(
        child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?,
    )
    .lines();
    let base = loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("wan-serve exited"))??;
        if let Some(b) = line.strip_prefix("wan-serve: listening on ") {
            break b.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let c = reqwest::blocking::Client::builder().no_proxy().build()?;
    while c
        .get(format!("{base}/readyz"))
        .send()
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    one_job(&c, &base, a.steps, 0)?; // warm the HTTP path
    // Interleaved with direct runs, so load from other processes drifts
    // alike; and per job, the latency minus the generation time the job's
    // own sidecar records: the server's overhead, immune to that drift.
    let mut serial = Vec::new();
    let mut overhead = Vec::new();
    let mut direct2 = Vec::new();
    for i in 0..a.serial {
        let t0 = Instant::now();
        let g = direct_pipeline.generate(&direct_opts(a.steps, i as u64), None, |_, _, _| {})?;
        let frames = RgbFrames::from_tensor(&g.video)?;
        write_video(
            &tmp.path().join(format!("direct2-{i}.mp4")),
            &frames,
            &VideoOptions::default(),
            None,
        )?;
        direct2.push(t0.elapsed().as_secs_f64());
        let Some((lat, id)) = one_job(&c, &base, a.steps, i as u64 + 1)? else {
            anyhow::bail!("refused with an empty queue");
        };
        serial.push(lat);
        let side: Value = serde_json::from_str(
            &c.get(format!("{base}/v1/videos/{id}/content?variant=sidecar"))
                .send()?
                .text()?,
        )?;
        let t = &side["timings"];
        let gen_s: f64 = [
            "text_encoder_s",
            "image_conditioning_s",
            "denoise_s",
            "vae_decode_s",
        ]
        .iter()
        .map(|k| t[*k].as_f64().unwrap_or(0.0))
        .sum::<f64>()
            + side["video_write_s"].as_f64().unwrap_or(0.0);
        overhead.push(lat - gen_s);
    }

    let t0 = Instant::now();
    let per_client = a.jobs.div_ceil(a.clients);
    let handles: Vec<_> = (0..a.clients)
        .map(|k| {
            let (c, base) = (c.clone(), base.clone());
            let steps = a.steps;
            std::thread::spawn(move || {
                let mut done = Vec::new();
                let mut refused = 0;
                for i in 0..per_client {
                    match one_job(&c, &base, steps, (k * per_client + i) as u64) {
                        Ok(Some((s, _))) => done.push(s),
                        Ok(None) => {
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => eprintln!("client {k}: {e}"),
                    }
                }
                (done, refused)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut refused = 0;
    for h in handles {
        let (d, r) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        lat.extend(d);
        refused += r;
    }
    let wall = t0.elapsed().as_secs_f64();
    let metrics = c.get(format!("{base}/metrics")).send()?.text()?;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let (d50, d2_50, s50) = (
        pct(&mut direct, 0.5),
        pct(&mut direct2, 0.5),
        pct(&mut serial, 0.5),
    );
    println!("steps {}, engines {}", a.steps, a.engines.display());
    println!(
        "direct  Pipeline::generate + MP4: median {:.1} ms over {} runs alone, {:.1} ms interleaved",
        d50 * 1e3,
        direct.len(),
        d2_50 * 1e3
    );
    println!(
        "server  submit→poll→download:     median {:.1} ms over {} jobs, p99 {:.1} ms",
        s50 * 1e3,
        serial.len(),
        pct(&mut serial, 0.99) * 1e3
    );
    println!(
        "overhead per job (latency − the job's own generation time): median {:.1} ms, p99 {:.1} ms",
        pct(&mut overhead, 0.5) * 1e3,
        pct(&mut overhead, 0.99) * 1e3
    );
    if !lat.is_empty() {
        println!(
            "load    {} clients, {} attempts, max-queue {}: {} completed in {:.1} s = {:.0} jobs/min; latency p50 {:.0} ms, p99 {:.0} ms; {} refused with 429",
            a.clients,
            per_client * a.clients,
            a.max_queue,
            lat.len(),
            wall,
            lat.len() as f64 / wall * 60.0,
            pct(&mut lat, 0.5) * 1e3,
            pct(&mut lat, 0.99) * 1e3,
            refused
        );
    }
    for l in metrics.lines().filter(|l| {
        l.starts_with("wan_jobs")
            || l.starts_with("wan_prompt_cache")
            || l.starts_with("wan_resident")
    }) {
        println!("  {l}");
    }
    Ok(())
}

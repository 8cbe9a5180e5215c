//! Step caching on a synthetic DiT whose block stack is most of a step
//! (`docs/WAN.md` §15): the bound denoising loop of the pipeline
//! ([`Denoiser`]: the stage graphs, CFG as two batch-1 calls, UniPC) over
//! the official T2V schedule (50 steps, shift 5, guidance 5), once per
//! policy, on ONNX Runtime's CPU provider, fp32, random weights:
//! - `none`;
//! - `magcache` with the published T2V-1.3B magnitude ratios and preset
//!   (threshold 0.12, K 4, retention 0.2): its schedule depends only on the
//!   table and the step count, so its calls are the real model's. Its
//!   residuals on the host (`auto` on ort-cpu), and once more on the
//!   "device" (`--cache-residency device`: the compiled step-cache graphs,
//!   here on the CPU provider);
//! - `fbcache` at 0.05 (diffusers' default): data-dependent, on random
//!   weights its decisions show the mechanics only;
//! - `teacache` / `teacache-ret` with the published T2V-1.3B polynomials
//!   and their `slow` thresholds: the indicator is this model's random time
//!   embedding, so the schedule is not the real model's.
//!
//! Each criterion sample is one whole denoising loop (binding + 50 steps),
//! 10 per policy. On a shared box the load drifts between policies, so the
//! ratios come from a second pass after the group: `ROUNDS` rounds, each
//! one loop of every policy in turn, the speed-up being the median over
//! rounds of `none`'s time in the round over the policy's. It prints one
//! table: block-stack calls per video (of 2·steps), the range of the
//! indicator the policy compared with its threshold, criterion's best and
//! median, the interleaved speed-up, and the bytes the step cache
//! allocates (persistent buffers, plus the device path's step scratch).
//!
//! `source scripts/env.sh && cargo bench --bench cache`; figures in
//! docs/MEASUREMENTS.md.

#[allow(dead_code)] // the DiT benches' helpers; this one needs config and load
mod common;

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use wanrt::core::{BatchMode, DitConfig, Profile};
use wanrt::runtime::Artifacts;
use wanrt::runtime::cache::{
    CacheOptions, CachePlan, CachePolicy, CacheResidency, CacheTable, magcache_schedule,
};
use wanrt::runtime::pipeline::{
    DenoiseInputs, Denoiser, DitGraphs, cache_plan_for, gaussian_noise,
};
use wanrt::runtime::schedule::{Schedule, Solver};
use wanrt::runtime::{HostTensor, Network};

/// Interleaved rounds of every policy (the speed-up column).
const ROUNDS: usize = 3;

/// The official T2V sampling (`defaults`): steps, guidance, shift.
const STEPS: usize = 50;
const GUIDANCE: f32 = 5.0;
const SHIFT: f64 = 5.0;

fn setup() -> common::Setup {
    common::Setup {
        label: "cache-384x8-192x128x9",
        dim: 384,
        heads: 6,
        layers: 8,
        ffn: 1536,
        // 3 latent frames × 8 × 12 patches = 288 tokens.
        profile: Profile::custom(192, 128, 9, 64).unwrap(),
    }
}

/// The published T2V-1.3B plan of `policy` with the threshold preset
/// `preset` (`None`: the model's default), for `STEPS` steps.
fn published(policy: CachePolicy, preset: Option<&str>) -> CachePlan {
    let real = DitConfig::t2v_1_3b();
    let p480 = Profile::custom(832, 480, 81, 512).unwrap();
    CacheOptions {
        policy,
        preset: preset.map(str::to_string),
        ..Default::default()
    }
    .resolve(&real, &p480, STEPS)
    .unwrap()
    .expect("a policy resolves to a plan")
}

/// The options that give the synthetic model the published plan: its table
/// and parameters passed explicitly (the synthetic config is no official
/// checkpoint, so it has no built-in table).
fn as_options(plan: &CachePlan) -> CacheOptions {
    CacheOptions {
        policy: plan.policy,
        threshold: Some(plan.threshold),
        preset: None,
        max_skip: plan.max_skip,
        retention: plan.retention,
        table: match plan.policy {
            CachePolicy::MagCache => plan.mag_ratios.clone().map(CacheTable::MagRatios),
            _ => plan.coefficients.map(CacheTable::Coefficients),
        },
        // `auto`: the host on ort-cpu.
        ..Default::default()
    }
}

struct Row {
    name: String,
    calls: String,
    indicator: String,
    buffer_bytes: usize,
    times: Vec<Duration>,
}

/// What one denoising loop did.
struct Video {
    time: Duration,
    forwards: usize,
    of: usize,
    buffer_bytes: usize,
    /// The smallest and largest indicator compared with the threshold.
    indicator: Option<(f64, f64)>,
}

/// One denoising loop from the same start, and its cache record.
fn video(dit: &mut Network, inputs: &DenoiseInputs, shape: &[u64]) -> Video {
    let t = Instant::now();
    let mut d = Denoiser::new(dit, inputs.clone(), shape.to_vec()).unwrap();
    while !d.is_finished() {
        d.step().unwrap();
    }
    let time = t.elapsed();
    let r = d.cache_record();
    if r.block_forwards_uncached == 0 {
        // No cache: every call runs the blocks, one per CFG branch and step.
        return Video {
            time,
            forwards: 2 * STEPS,
            of: 2 * STEPS,
            buffer_bytes: 0,
            indicator: None,
        };
    }
    let values = r.branches.iter().flat_map(|b| b.indicator.iter().flatten());
    let indicator = values.fold(None, |acc: Option<(f64, f64)>, &v| {
        Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
    });
    Video {
        time,
        forwards: r.block_forwards,
        of: r.block_forwards_uncached,
        buffer_bytes: r.buffer_bytes + r.scratch_bytes,
        indicator,
    }
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let cfg = common::config(&s);
    let profile = s.profile.clone().with_batch(BatchMode::Fixed(1)).unwrap();
    let (dir, mut dit) = common::load(&s, &cfg, &profile, None);
    let artifacts = Artifacts::open(dir.path()).unwrap();
    let [ch, f, h, w] = profile.dit_latent_shape(cfg.out_dim);
    let shape = vec![1, u64::from(ch), u64::from(f), u64::from(h), u64::from(w)];
    let n = shape.iter().product::<u64>() as usize;
    let text = [1, u64::from(profile.text_len), u64::from(cfg.text_dim)];
    let m = text.iter().product::<u64>() as usize;
    let base = DenoiseInputs {
        cond: HostTensor::from_f32(text.to_vec(), &gaussian_noise(5, m)),
        uncond: Some(HostTensor::from_f32(text.to_vec(), &gaussian_noise(6, m))),
        image: None,
        vace: None,
        latents: gaussian_noise(0, n),
        solver: Solver::UniPc,
        schedule: Schedule::for_solver(Solver::UniPc, STEPS, SHIFT).unwrap(),
        seed: 0,
        guidance: GUIDANCE,
        cfg_zero_star: false,
        zero_init_steps: 0,
        cache: None,
    };

    let fb = |t: f64| CacheOptions {
        policy: CachePolicy::FbCache,
        threshold: Some(t),
        ..Default::default()
    };
    let mag = published(CachePolicy::MagCache, None);
    let runs: Vec<(String, CacheOptions)> = vec![
        ("none".into(), CacheOptions::default()),
        ("magcache-E012K4R02".into(), as_options(&mag)),
        (
            "magcache-E012K4R02-device".into(),
            CacheOptions {
                residency: CacheResidency::Device,
                ..as_options(&mag)
            },
        ),
        ("fbcache-0.05".into(), fb(0.05)),
        (
            "teacache-slow".into(),
            as_options(&published(CachePolicy::TeaCache, Some("slow"))),
        ),
        (
            "teacache-ret-slow".into(),
            as_options(&published(CachePolicy::TeaCacheRet, Some("slow"))),
        ),
    ];

    let mut rows = Vec::new();
    let mut plans = Vec::new();
    let mut g = c.benchmark_group(format!("ort-cpu/cache/{}", s.label));
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    for (name, opts) in runs {
        let mut inputs = base.clone();
        inputs.cache = cache_plan_for(&artifacts, DitGraphs::Stages, &opts, STEPS, 0).unwrap();
        if opts.policy == CachePolicy::MagCache {
            // The synthetic model runs the published plan, and with it the
            // published schedule, call for call.
            let plan = inputs.cache.as_ref().expect("magcache plan");
            assert_eq!(plan.mag_ratios, mag.mag_ratios, "resampled ratios");
            assert_eq!(
                (plan.threshold, plan.max_skip, plan.retention),
                (mag.threshold, mag.max_skip, mag.retention)
            );
        }
        let first = video(&mut dit, &inputs, &shape);
        let (forwards, of) = (first.forwards, first.of);
        let mut calls = format!("{forwards} / {of}");
        if opts.policy == CachePolicy::FbCache {
            calls.push_str(" (block 0 on all)");
        }
        if opts.policy == CachePolicy::MagCache {
            let ratios = mag.mag_ratios.as_deref().expect("magcache ratios");
            let (k, r) = (mag.max_skip.unwrap_or(1), mag.retention.unwrap_or(0.0));
            let published: usize = (0..2)
                .map(|b| {
                    magcache_schedule(ratios, mag.threshold, k, r, STEPS, b)
                        .iter()
                        .filter(|d| d.computed)
                        .count()
                })
                .sum();
            assert_eq!(forwards, published, "the published schedule's calls");
        }
        let mut times = Vec::new();
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let v = video(&mut dit, &inputs, &shape);
                    assert_eq!(
                        v.forwards, forwards,
                        "{name}: the same start gives the same schedule"
                    );
                    times.push(v.time);
                    total += v.time;
                }
                total
            })
        });
        rows.push(Row {
            name,
            calls,
            indicator: first
                .indicator
                .map_or("–".into(), |(lo, hi)| format!("{lo:.3}–{hi:.3}")),
            buffer_bytes: first.buffer_bytes,
            times,
        });
        plans.push((inputs, forwards));
    }
    g.finish();

    // Interleaved rounds: per round, every policy's time over none's.
    let mut speedups = vec![Vec::new(); plans.len()];
    for _ in 0..ROUNDS {
        let times: Vec<Duration> = plans
            .iter()
            .map(|(inputs, forwards)| {
                let v = video(&mut dit, inputs, &shape);
                assert_eq!(v.forwards, *forwards, "the same schedule in every round");
                v.time
            })
            .collect();
        for (s, t) in speedups.iter_mut().zip(&times) {
            s.push(times[0].as_secs_f64() / t.as_secs_f64());
        }
    }

    let median = |t: &[Duration]| {
        let mut v = t.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "\n{}: dim {}, {} heads, {} layers, ffn {}, {} tokens, {STEPS} UniPC steps, CFG as 2 calls",
        s.label,
        cfg.dim,
        cfg.num_heads,
        cfg.num_layers,
        cfg.ffn_dim,
        u64::from(f) * u64::from(h / 2) * u64::from(w / 2)
    );
    println!(
        "| policy | block-stack calls | indicator | best | median | speed-up ({ROUNDS} rounds) | cache bytes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (r, s) in rows.iter().zip(&speedups) {
        let best = r.times.iter().min().copied().unwrap_or_default();
        let mut s = s.clone();
        s.sort_by(f64::total_cmp);
        let round: Vec<String> = s.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "| {} | {} | {} | {:.2} s | {:.2} s | {:.2}× ({}) | {} |",
            r.name,
            r.calls,
            r.indicator,
            best.as_secs_f64(),
            median(&r.times).as_secs_f64(),
            s[s.len() / 2],
            round.join(", "),
            r.buffer_bytes,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

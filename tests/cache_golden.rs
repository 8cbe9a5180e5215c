//! Step caching against the reference implementations' 12-step runs
//! (`fixtures/<case>/golden/cache/`, `docs/WAN.md` §cache): for every run of
//! `cache.json` (fbcache, magcache, teacache, teacache_ret) and both cases,
//! the per-branch skip schedule equals the reference's exactly, the
//! indicators agree, and the final latents (what `--save-latents` writes)
//! match `<run>.latents_out`; `--cache none` is the uncached path bit for
//! bit; bad tables and thresholds are errors naming the flag. Every run
//! also runs with `--cache-residency device` (the compiled step-cache
//! graphs, forced on ort-cpu): the same schedule and indicators, and the
//! host path's latents bit for bit; engines without those graphs fall back
//! to the host under `auto` and refuse `device`.

mod common;

use std::process::Command;

use common::{CASES, Case, assert_fp32, bin, run_cmd};
use serde_json::Value;
use wanrt::core::{BatchMode, Precision};
use wanrt::runtime::cache::{CacheOptions, CachePolicy, CacheRecord, CacheResidency, read_table};
use wanrt::runtime::pipeline::{GenerateOptions, Pipeline};
use wanrt::runtime::schedule::Solver;
use wanrt::runtime::{Artifacts, Backend, tensorfile};

const RUNS: [&str; 4] = ["fbcache", "magcache", "teacache", "teacache_ret"];

/// The tight fp32 tier of each run's final latents (`common::assert_fp32`),
/// ≤ 5× the max |Δ| measured on this box over the five runs: t2v-tiny
/// 1.7e-6, i2v-tiny 8.0e-6.
fn tight(case: &str) -> f32 {
    if case == "i2v-tiny" { 3.5e-5 } else { 8e-6 }
}

fn cache_dir(case: &Case) -> std::path::PathBuf {
    case.dir.join("golden/cache")
}

fn cache_json(case: &Case) -> Value {
    serde_json::from_str(&std::fs::read_to_string(cache_dir(case).join("cache.json")).unwrap())
        .unwrap()
}

/// The case's inputs as `cache.json` gives them, 12 UniPC steps.
fn options(case: &Case, json: &Value) -> GenerateOptions {
    let inputs = &json["inputs"];
    let golden = case.golden("pipeline.safetensors");
    GenerateOptions {
        prompt: inputs["prompt"].as_str().unwrap().into(),
        negative_prompt: Some(inputs["negative_prompt"].as_str().unwrap().into()),
        image: (case.name == "i2v-tiny").then(|| common::golden_image(&case.dir)),
        steps: Some(json["num_inference_steps"].as_u64().unwrap() as usize),
        guidance_scale: Some(inputs["guidance_scale"].as_f64().unwrap() as f32),
        shift: Some(inputs["flow_shift"].as_f64().unwrap()),
        solver: Solver::UniPc,
        latents: Some(golden["latents_init"].clone()),
        ..Default::default()
    }
}

/// A run's policy and parameters as the library's options.
fn cache_options(case: &Case, run: &str, params: &Value) -> CacheOptions {
    let f = |k: &str| params[k].as_f64().unwrap();
    let dir = cache_dir(case);
    match run {
        "fbcache" => CacheOptions {
            policy: CachePolicy::FbCache,
            threshold: Some(f("threshold")),
            ..Default::default()
        },
        "magcache" => CacheOptions {
            policy: CachePolicy::MagCache,
            threshold: Some(f("magcache_thresh")),
            max_skip: Some(params["magcache_K"].as_u64().unwrap() as u32),
            retention: Some(f("retention_ratio")),
            table: Some(
                read_table(&dir.join("magcache_table.json"), CachePolicy::MagCache).unwrap(),
            ),
            ..Default::default()
        },
        "teacache" | "teacache_ret" => {
            let policy = if run == "teacache" {
                CachePolicy::TeaCache
            } else {
                CachePolicy::TeaCacheRet
            };
            CacheOptions {
                policy,
                threshold: Some(f("teacache_thresh")),
                table: Some(read_table(&dir.join("teacache_table.json"), policy).unwrap()),
                ..Default::default()
            }
        }
        _ => unreachable!("{run}"),
    }
}

fn compile(case: &Case, batch: BatchMode) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let opts = case.options(false, Precision::Fp32, batch, out.path());
    wanrt::compiler::compile(&opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    out
}

/// One run against the reference with the cache's state where `residency`
/// says: the schedule per branch exactly, the indicators within 1e-4
/// relative, the final latents in both tiers. Returns the latents.
fn check_run_in(
    pipeline: &mut Pipeline,
    case: &Case,
    json: &Value,
    run: &str,
    residency: CacheResidency,
    what: &str,
) -> (Vec<f32>, CacheRecord) {
    let golden = tensorfile::read(&cache_dir(case).join("cache_latents.safetensors")).unwrap();
    let r = &json["runs"][run];
    let mut opts = options(case, json);
    opts.cache = cache_options(case, run, &r["params"]);
    opts.cache.residency = residency;
    let got = pipeline
        .generate(&opts, None, |_, _, _| {})
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let rec = &got.settings.cache;
    // ort-cpu: auto keeps the cache on the host.
    let ran = match residency {
        CacheResidency::Device => CacheResidency::Device,
        _ => CacheResidency::Host,
    };
    assert_eq!(rec.residency, Some(ran), "{what}: residency");
    assert_eq!(rec.branches.len(), 2, "{what}: branches");
    for b in &rec.branches {
        let want = &r["branches"][b.branch];
        let computed: Vec<bool> = want["computed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        assert_eq!(b.computed, computed, "{what}/{}: computed steps", b.branch);
        for (i, (g, w)) in b
            .indicator
            .iter()
            .zip(want["indicator"].as_array().unwrap())
            .enumerate()
        {
            match (g, w.as_f64()) {
                (None, None) => {}
                (Some(g), Some(w)) => assert!(
                    (g - w).abs() <= 1e-4 * w.abs(),
                    "{what}/{} step {i}: indicator {g} vs {w}",
                    b.branch
                ),
                _ => panic!("{what}/{} step {i}: indicator {g:?} vs {w}", b.branch),
            }
        }
    }
    let forwards: usize = rec.branches.iter().map(|b| b.num_computed()).sum();
    assert_eq!(rec.block_forwards, forwards, "{what}: forwards");
    assert_eq!(rec.block_forwards_uncached, 24, "{what}: calls");
    eprintln!(
        "{what}: the block stack ran {forwards} of 24 calls; denoise {:.3} s",
        got.timings.denoise_s
    );
    let latents = got.latents.to_f32().unwrap();
    assert_fp32(
        what,
        &latents,
        &golden[&format!("{run}.latents_out")].to_f32().unwrap(),
        tight(case.name),
    );
    (latents, rec.clone())
}

/// [`check_run_in`] with the cache on the host and then on the device (the
/// step-cache graphs, forced on ort-cpu): both reproduce the reference, and
/// the device path's latents are the host path's bit for bit.
fn check_run(pipeline: &mut Pipeline, case: &Case, json: &Value, run: &str, what: &str) {
    let (host, host_rec) = check_run_in(pipeline, case, json, run, CacheResidency::Auto, what);
    let dev_what = format!("{what} --cache-residency device");
    let (device, dev_rec) =
        check_run_in(pipeline, case, json, run, CacheResidency::Device, &dev_what);
    assert_bits(&dev_what, &device, &host);
    // The same decisions; fbcache's indicator is summed by the graph in
    // float64, as the host sums it.
    // One residual (and fbcache reference) per branch, as on the host.
    assert_eq!(dev_rec.buffer_bytes, host_rec.buffer_bytes, "{dev_what}");
    let mut worst = 0f64;
    for (d, h) in dev_rec.branches.iter().zip(&host_rec.branches) {
        assert_eq!(d.computed, h.computed, "{dev_what}/{}", d.branch);
        for (a, b) in d.indicator.iter().zip(&h.indicator) {
            match (a, b) {
                (Some(a), Some(b)) => worst = worst.max((a - b).abs() / b.abs()),
                (None, None) => {}
                _ => panic!("{dev_what}/{}: indicator {a:?} vs {b:?}", d.branch),
            }
        }
    }
    eprintln!("{dev_what}: indicators within {worst:.1e} relative of the host's");
    // Measured: equal (ONNX Runtime sums rows this short in order).
    assert_eq!(worst, 0.0, "{dev_what}: indicators apart");
}

/// `got` equals `want` bit for bit.
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} is {} vs {} on the host path",
            got[i], want[i]
        );
    }
}

#[test]
fn every_policy_reproduces_the_reference_schedule_and_latents() {
    for name in CASES {
        let case = Case::new(name);
        let json = cache_json(&case);
        // Two batch-1 calls per step: each branch its own lane.
        let out = compile(&case, BatchMode::Fixed(1));
        let mut pipeline =
            Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
        for run in RUNS {
            check_run(&mut pipeline, &case, &json, run, &format!("{name}/{run}"));
        }
        // Without caching: the reference's 12-step baseline.
        let golden = tensorfile::read(&cache_dir(&case).join("cache_latents.safetensors")).unwrap();
        let got = pipeline
            .generate(&options(&case, &json), None, |_, _, _| {})
            .unwrap();
        eprintln!("{name}/nocache: denoise {:.3} s", got.timings.denoise_s);
        assert_eq!(got.settings.cache.policy, CachePolicy::None);
        assert!(got.settings.cache.branches.is_empty());
        assert_fp32(
            &format!("{name}/nocache"),
            &got.latents.to_f32().unwrap(),
            &golden["nocache.latents_out"].to_f32().unwrap(),
            tight(name),
        );
    }
}

#[test]
fn one_batch_2_call_caches_each_row_by_its_branch() {
    // Both branches in one call: the rows are decided and patched apart
    // (fbcache decides per row after block 0; magcache's mask is per row).
    let case = Case::new("t2v-tiny");
    let json = cache_json(&case);
    let out = compile(&case, BatchMode::Fixed(2));
    let mut pipeline =
        Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    for run in ["fbcache", "magcache"] {
        check_run(
            &mut pipeline,
            &case,
            &json,
            run,
            &format!("t2v-tiny/batch-2/{run}"),
        );
    }
    // Without CFG a batch-2 engine runs the prompt in both rows: one
    // branch, decided once per step (row 1 takes row 0's decision), the
    // same on the host and on the device.
    let mut opts = options(&case, &json);
    opts.guidance_scale = Some(1.0);
    opts.steps = Some(6);
    opts.cache = cache_options(&case, "fbcache", &json["runs"]["fbcache"]["params"]);
    let mut runs = Vec::new();
    for residency in [CacheResidency::Host, CacheResidency::Device] {
        opts.cache.residency = residency;
        let got = pipeline
            .generate(&opts, None, |_, _, _| {})
            .unwrap_or_else(|e| panic!("no CFG, {residency}: {e}"));
        let rec = &got.settings.cache;
        assert_eq!(rec.branches.len(), 1, "no CFG, {residency}");
        assert_eq!(rec.branches[0].computed.len(), 6, "no CFG, {residency}");
        runs.push((got.latents.to_f32().unwrap(), rec.branches.clone()));
    }
    assert_eq!(runs[0].1, runs[1].1, "no CFG: host and device decisions");
    assert_bits("no CFG, batch 2, device", &runs[1].0, &runs[0].0);
}

#[test]
fn engines_without_the_cache_graphs_keep_the_cache_on_the_host() {
    // What wan-compile wrote before the step-cache graphs: a manifest
    // without `cache_graphs` (and no such files). Auto keeps the cache on
    // the host; device is refused, naming the flag.
    let case = Case::new("t2v-tiny");
    let json = cache_json(&case);
    let out = compile(&case, BatchMode::Fixed(1));
    let path = out.path().join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let graphs = m["networks"]["dit"]
        .as_object_mut()
        .unwrap()
        .remove("cache_graphs")
        .expect("a new compile lists its step-cache graphs");
    let graphs = graphs.as_array().unwrap();
    let roles: Vec<&str> = graphs.iter().map(|g| g["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        [
            "cache_head",
            "cache_store",
            "cache_copy",
            "cache_fb_indicator"
        ]
    );
    for g in graphs {
        std::fs::remove_file(out.path().join(g["file"].as_str().unwrap())).unwrap();
    }
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    let mut pipeline =
        Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let mut opts = options(&case, &json);
    opts.steps = Some(4);
    opts.cache = cache_options(&case, "fbcache", &json["runs"]["fbcache"]["params"]);
    let got = pipeline.generate(&opts, None, |_, _, _| {}).unwrap();
    assert_eq!(got.settings.cache.residency, Some(CacheResidency::Host));
    assert!(got.settings.cache.buffer_bytes > 0);
    opts.cache.residency = CacheResidency::Device;
    let e = pipeline
        .generate(&opts, None, |_, _, _| {})
        .err()
        .expect("device residency without the graphs");
    assert_eq!(e.kind(), wanrt::runtime::ErrorKind::InvalidArgument, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("--cache-residency") && msg.contains("recompile"),
        "{msg}"
    );
}

#[test]
fn cache_none_is_the_uncached_path_bit_for_bit() {
    // A cache that computes every step runs the same graphs on the same
    // buffers as no cache: the latents are the same bits. And `none`
    // records nothing.
    let case = Case::new("t2v-tiny");
    let json = cache_json(&case);
    let out = compile(&case, BatchMode::Fixed(1));
    let mut pipeline =
        Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
    let mut opts = options(&case, &json);
    opts.steps = Some(4);
    let none = pipeline.generate(&opts, None, |_, _, _| {}).unwrap();
    opts.cache = CacheOptions {
        policy: CachePolicy::FbCache,
        threshold: Some(1e-30),
        ..Default::default()
    };
    let always = pipeline.generate(&opts, None, |_, _, _| {}).unwrap();
    assert!(
        always
            .settings
            .cache
            .branches
            .iter()
            .all(|b| b.computed == [true; 4])
    );
    let (a, b) = (
        none.latents.to_f32().unwrap(),
        always.latents.to_f32().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!(
            "an all-compute cache changed the latents: element {i} is {} vs {}",
            b[i], a[i]
        );
    }
    // The pipeline golden's 4-step run, default options: as before.
    let golden = case.golden("pipeline.safetensors");
    let mut opts = options(&case, &json);
    let p: Value =
        serde_json::from_str(&std::fs::read_to_string(case.dir.join("case.json")).unwrap())
            .unwrap();
    opts.steps = Some(p["pipeline"]["num_inference_steps"].as_u64().unwrap() as usize);
    let got = pipeline.generate(&opts, None, |_, _, _| {}).unwrap();
    assert_fp32(
        "t2v-tiny/pipeline golden, --cache none",
        &got.latents.to_f32().unwrap(),
        &golden["latents_out"].to_f32().unwrap(),
        8e-6,
    );
}

#[test]
fn bad_tables_and_thresholds_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let not_json = file("not.json", "{ mag_ratios: ");
    let short = file("short.json", r#"{"mag_ratios": [1.0, 1.0, 0.99]}"#);
    let missing = file(
        "missing.json",
        r#"{"modes": {"e0": {"coefficients": [1,2,3,4,5]}}}"#,
    );
    let four = file(
        "four.json",
        r#"{"modes": {"e": {"coefficients": [1,2,3,4]}}}"#,
    );
    let good_mag = file("mag.json", r#"{"mag_ratios": [1.0, 1.0, 0.99, 0.99]}"#);
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec!["magcache".into(), "--cache-table".into(), s(&not_json)],
            "--cache-table",
            "not JSON",
        ),
        (
            vec!["magcache".into(), "--cache-table".into(), s(&short)],
            "--cache-table",
            "3 entries",
        ),
        (
            vec!["teacache".into(), "--cache-table".into(), s(&missing)],
            "--cache-table",
            "modes.e.coefficients",
        ),
        (
            vec!["teacache".into(), "--cache-table".into(), s(&four)],
            "--cache-table",
            "4 entries",
        ),
        (
            vec![
                "magcache".into(),
                "--cache-table".into(),
                s(&tmp.path().join("absent.json")),
            ],
            "--cache-table",
            "absent.json",
        ),
        (
            vec!["fbcache".into(), "--cache-threshold".into(), "-0.1".into()],
            "--cache-threshold",
            "-0.1",
        ),
        (
            vec!["fbcache".into(), "--cache-threshold".into(), "nan".into()],
            "--cache-threshold",
            "NaN",
        ),
        (
            vec!["fbcache".into(), "--cache-threshold".into(), "0.1x".into()],
            "--cache-threshold",
            "0.1x",
        ),
        (
            vec![
                "magcache".into(),
                "--cache-table".into(),
                s(&good_mag),
                "--cache-retention".into(),
                "1.2".into(),
            ],
            "--cache-retention",
            "1.2",
        ),
        (
            vec!["teacache".into(), "--cache-max-skip".into(), "3".into()],
            "--cache-max-skip",
            "magcache",
        ),
        (vec!["lru".into()], "--cache", "lru"),
        (
            vec!["fbcache".into(), "--cache-residency".into(), "gpu".into()],
            "--cache-residency",
            "gpu",
        ),
    ];
    for (args, flag, needle) in cases {
        let (ok, log) = run_cmd(
            Command::new(bin("wan-run"))
                .args(["--engines"])
                .arg(tmp.path().join("no-engines"))
                .args(["--prompt", "x", "--output"])
                .arg(tmp.path().join("o.mp4"))
                .arg("--cache")
                .args(&args),
        );
        assert!(!ok, "{args:?} succeeded");
        assert!(
            log.contains(&format!("{flag}:")) && log.contains(needle),
            "{args:?}: {log}"
        );
    }
    // A --cache-* flag without --cache is refused, not ignored.
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .args([
                "--engines",
                "e",
                "--prompt",
                "x",
                "--cache-threshold",
                "0.1",
            ])
            .arg("--output")
            .arg(tmp.path().join("o.mp4")),
    );
    assert!(
        !ok && log.contains("--cache-threshold: given without --cache"),
        "{log}"
    );
}

/// The figures of `docs/MEASUREMENTS.md` ("Step caching"): block-stack
/// calls and denoising wall time per policy (host and device residency) vs
/// none, best and median of 7 runs, on the tiny cases (12 steps, CFG). A
/// measurement, not a check.
#[test]
#[ignore = "measurement: cargo test --test cache_golden -- --ignored --nocapture"]
fn measure_policies() {
    for name in CASES {
        let case = Case::new(name);
        let json = cache_json(&case);
        let out = compile(&case, BatchMode::Fixed(1));
        let mut pipeline =
            Pipeline::load(Artifacts::open(out.path()).unwrap(), Backend::OrtCpu).unwrap();
        for (run, residency) in [
            ("nocache", CacheResidency::Auto),
            ("fbcache", CacheResidency::Host),
            ("fbcache", CacheResidency::Device),
            ("magcache", CacheResidency::Host),
            ("magcache", CacheResidency::Device),
            ("teacache", CacheResidency::Host),
            ("teacache", CacheResidency::Device),
            ("teacache_ret", CacheResidency::Host),
            ("teacache_ret", CacheResidency::Device),
        ] {
            let mut opts = options(&case, &json);
            if run != "nocache" {
                opts.cache = cache_options(&case, run, &json["runs"][run]["params"]);
                opts.cache.residency = residency;
            }
            let mut times = Vec::new();
            let mut forwards = 24;
            for _ in 0..7 {
                let got = pipeline.generate(&opts, None, |_, _, _| {}).unwrap();
                times.push(got.timings.denoise_s);
                if run != "nocache" {
                    forwards = got.settings.cache.block_forwards;
                }
            }
            times.sort_by(f64::total_cmp);
            eprintln!(
                "| {name} | {run} | {residency} | {forwards} / 24 | {:.1} ms | {:.1} ms |",
                times[0] * 1e3,
                times[3] * 1e3
            );
        }
    }
}

#[test]
fn wan_run_cache_flags_save_latents_and_sidecar() {
    // The CLI end to end: --cache teacache with the golden table, the
    // case's noise via --latents-in; --save-latents equals the reference's
    // latents_out and the sidecar records the schedule per branch.
    let case = Case::new("t2v-tiny");
    let json = cache_json(&case);
    let engines = compile(&case, BatchMode::Fixed(1));
    let tmp = tempfile::tempdir().unwrap();
    let noise = tmp.path().join("noise.safetensors");
    let init = case.golden("pipeline.safetensors")["latents_init"].clone();
    tensorfile::write(
        &noise,
        &std::collections::BTreeMap::from([("latents".to_string(), init)]),
        false,
    )
    .unwrap();
    let (video, saved) = (tmp.path().join("v.mp4"), tmp.path().join("out.safetensors"));
    let inputs = &json["inputs"];
    let r = &json["runs"]["teacache"];
    let (ok, log) = run_cmd(
        Command::new(bin("wan-run"))
            .arg("--engines")
            .arg(engines.path())
            .args(["--prompt", inputs["prompt"].as_str().unwrap()])
            .args([
                "--negative-prompt",
                inputs["negative_prompt"].as_str().unwrap(),
            ])
            .args(["--guidance-scale", &inputs["guidance_scale"].to_string()])
            .args(["--shift", &inputs["flow_shift"].to_string()])
            .args(["--steps", "12", "--solver", "unipc", "--cache", "teacache"])
            .args([
                "--cache-threshold",
                &r["params"]["teacache_thresh"].to_string(),
            ])
            .arg("--cache-table")
            .arg(cache_dir(&case).join("teacache_table.json"))
            .args(["--cache-residency", "device"])
            .arg("--latents-in")
            .arg(&noise)
            .arg("--save-latents")
            .arg(&saved)
            .arg("--output")
            .arg(&video),
    );
    assert!(ok, "{log}");
    assert!(
        log.contains("cache teacache: the block stack ran 10 of 24 calls; residuals on the device"),
        "{log}"
    );
    let golden = tensorfile::read(&cache_dir(&case).join("cache_latents.safetensors")).unwrap();
    assert_fp32(
        "wan-run --cache teacache --save-latents",
        &tensorfile::read(&saved).unwrap()["latents"]
            .to_f32()
            .unwrap(),
        &golden["teacache.latents_out"].to_f32().unwrap(),
        tight(case.name),
    );
    let side: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("v.mp4.json")).unwrap())
            .unwrap();
    let c = &side["settings"]["cache"];
    assert_eq!(c["policy"], "teacache");
    assert_eq!(c["plan"]["table"], "--cache-table");
    assert_eq!(c["plan"]["residency"], "device");
    assert_eq!(c["residency"], "device");
    assert_eq!(c["memory"], "host", "ort-cpu's device memory is the host's");
    // One residual per branch: a row of the block stack's boundary
    // [1, n, d] in float32 for each of the two lanes.
    let manifest = Artifacts::open(engines.path()).unwrap().manifest;
    let row: u64 = manifest.networks[&wanrt::core::NetworkKind::Dit].cache_graphs[0].inputs[0]
        .concrete_shape(1)
        .iter()
        .product();
    assert_eq!(c["buffer_bytes"].as_u64(), Some(2 * row * 4));
    // Scratch: the head's input and the next residual (a row each), the
    // decisions [1] and fbcache's two float64 sums [1].
    assert_eq!(c["scratch_bytes"].as_u64(), Some(2 * row * 4 + 4 + 16));
    for (i, b) in ["cond", "uncond"].into_iter().enumerate() {
        assert_eq!(c["branches"][i]["branch"], b);
        assert_eq!(
            c["branches"][i]["computed"], r["branches"][b]["computed"],
            "sidecar {b}"
        );
    }
}

#[test]
fn wan_run_checks_the_cache_against_the_model_before_loading_engines() {
    // The tiny model is none of the official checkpoints: magcache without
    // --cache-table has no ratios, a preset name has nothing to name, and
    // --zero-init-steps runs no DiT to cache. Each is refused from the
    // manifest, before "loading engines", with nothing written.
    let case = Case::new("t2v-tiny");
    let engines = compile(&case, BatchMode::Fixed(1));
    let tmp = tempfile::tempdir().unwrap();
    let video = tmp.path().join("v.mp4");
    for (args, flag) in [
        (vec!["--cache", "magcache"], "--cache-table"),
        (
            vec!["--cache", "teacache", "--cache-threshold", "slow"],
            "--cache-threshold",
        ),
        (
            vec!["--cache", "fbcache", "--zero-init-steps", "1"],
            "--cache",
        ),
    ] {
        let (ok, log) = run_cmd(
            Command::new(bin("wan-run"))
                .arg("--engines")
                .arg(engines.path())
                .args(["--prompt", "x", "--steps", "2"])
                .args(&args)
                .arg("--output")
                .arg(&video),
        );
        assert!(!ok, "{args:?} succeeded: {log}");
        assert!(log.contains(&format!("{flag}:")), "{args:?}: {log}");
        assert!(
            !log.contains("loading engines"),
            "{args:?}: checked late: {log}"
        );
        assert!(!video.exists(), "{args:?}: wrote {}", video.display());
    }
}

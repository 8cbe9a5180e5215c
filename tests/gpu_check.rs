//! `scripts/gpu-check.sh`: its argument handling, and its `--dry-run`, which
//! runs every step but the GPU calls on this CPU box (the tiny fixture DiT
//! through wan-compile and wan-gpu-check on ort-cpu, the PyTorch half on the
//! CPU where torch is installed, the step-cache loop with and without
//! MagCache) and writes its table.

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, run_cmd};
use wanrt::core::{DitConfig, Profile};
use wanrt::runtime::cache::{CacheOptions, CachePolicy, magcache_schedule};

fn script() -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new("bash");
    c.arg(root.join("scripts/gpu-check.sh"));
    // The debug binaries of this build, not a release build of its own.
    c.env("WANRT_BIN", bin("wan-compile").parent().unwrap());
    c
}

#[test]
fn bad_arguments_are_refused_with_the_flag() {
    for (args, needle) in [
        (vec!["--iters", "0"], "--iters"),
        (vec!["--cache-steps", "x"], "--cache-steps"),
        (vec!["--bogus"], "unknown argument '--bogus'"),
    ] {
        let (ok, log) = run_cmd(script().args(&args));
        assert!(!ok && log.contains(needle), "{args:?}: {log}");
    }
    if Command::new("nvidia-smi").output().is_err() {
        // Without --dry-run on a machine without a GPU: refused, not faked.
        let (ok, log) = run_cmd(&mut script());
        assert!(!ok && log.contains("not a GPU machine"), "{log}");
    }
}

#[test]
fn dry_run_exercises_every_step_but_the_gpu_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let table = tmp.path().join("gpu-check.md");
    let out = script()
        .args(["--dry-run", "--iters", "2", "--out"])
        .arg(&table)
        .env("WANRT_GPU_CHECK_WORK", tmp.path().join("work"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    let text = std::fs::read_to_string(&table).unwrap();
    for want in [
        "dry run on",
        "### fixture:",
        "| ORT session create |",
        "| ORT first run |",
        "| ORT plain run |",
        "| ORT bound run |",
        "| ORT graph replay | skipped: needs ort-cuda",
        "| ORT copy pinned 8MB | skipped: needs ort-cuda",
        // Bound host buffers compute exactly what the plain run computes.
        "| bound vs plain max abs | 0.000e+00 |",
    ] {
        assert!(text.contains(want), "missing '{want}' in:\n{text}");
    }
    // The step cache: the bound loop over the default 10 steps, every
    // call without a cache, and MagCache's calls (residuals on the host and
    // on the device) exactly those of the published T2V-1.3B schedule at 10
    // steps.
    let published = CacheOptions {
        policy: CachePolicy::MagCache,
        ..Default::default()
    }
    .resolve(
        &DitConfig::t2v_1_3b(),
        &Profile::custom(832, 480, 81, 512).unwrap(),
        10,
    )
    .unwrap()
    .unwrap();
    let ratios = published.mag_ratios.as_deref().unwrap();
    let (k, r) = (published.max_skip.unwrap(), published.retention.unwrap());
    let calls: usize = (0..2)
        .map(|b| {
            magcache_schedule(ratios, published.threshold, k, r, 10, b)
                .iter()
                .filter(|d| d.computed)
                .count()
        })
        .sum();
    assert!(calls < 20, "the published schedule skips at 10 steps");
    for want in [
        "| step cache none, 10 UniPC steps | 20 / 20 block-stack calls, ".to_string(),
        format!("| step cache magcache host, 10 UniPC steps | {calls} / 20 block-stack calls, "),
        format!("| step cache magcache device, 10 UniPC steps | {calls} / 20 block-stack calls, "),
        "| step cache magcache host speed-up | ".to_string(),
        "| step cache magcache device speed-up | ".to_string(),
        "| step cache table | published T2V-1.3B, given explicitly".to_string(),
    ] {
        assert!(text.contains(&want), "missing '{want}' in:\n{text}");
    }
    // The PyTorch half ran on the CPU, or the table says why it did not.
    assert!(
        text.contains("PyTorch half skipped") || text.contains("SDPA math"),
        "{text}"
    );
    if text.contains("SDPA math") {
        assert!(text.contains("vs reference rel l2"), "{text}");
    }
    // The ratio (or why there is none) is the last thing printed.
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(last.starts_with("ratio (fixture): "), "{log}");
}

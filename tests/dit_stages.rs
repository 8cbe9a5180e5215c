//! The DiT's stage graphs against its whole graph, on ONNX Runtime's CPU
//! provider, for both tasks:
//! - composed on host tensors (`wan-run component dit`'s path) they equal
//!   the whole graph within the fp32 tier;
//! - bound for a generation (buffers bound once, written in place) one
//!   step's prediction equals the whole graph on the same inputs, for CFG
//!   as two batch-1 calls and as one batch-2 call, on every step of a
//!   schedule (a binding that kept a stale input would fail from step 1 on).
//!
//! Tier: fp32, |a−b| ≤ 3e-6 (measured on the CPU box: max 6.0e-7, i.e. 5×
//! headroom; the stages run the very same nodes, and ONNX Runtime's graph
//! optimiser fuses a little differently on each side of a cut). The issue's
//! fp32 bound (1e-4 + 1e-3·|b|) against the reference is `dit_golden.rs`,
//! which runs the stages.

mod common;

use std::collections::BTreeMap;

use common::{CASES, Case, assert_close, dit_inputs};
use wanrt::core::{BatchMode, NetworkKind, Precision};
use wanrt::runtime::dit::Conditioning;
use wanrt::runtime::pipeline::gaussian_noise;
use wanrt::runtime::{Artifacts, Backend, HostTensor};

fn noise_pred(out: &BTreeMap<String, HostTensor>) -> Vec<f32> {
    out["noise_pred"].to_f32().unwrap()
}

#[test]
fn composed_stages_equal_the_whole_graph() {
    for name in CASES {
        let case = Case::new(name);
        let out = case.compile_dit(false, Precision::Fp32, BatchMode::Fixed(1));
        let a = Artifacts::open(out.path()).unwrap();
        let entry = a.entry(NetworkKind::Dit).unwrap();
        let roles: Vec<&str> = entry.stages.iter().map(|s| s.role.as_str()).collect();
        assert_eq!(
            roles,
            [
                "context",
                "time",
                "embed",
                "block_first",
                "block_rest",
                "head"
            ]
        );
        let inputs = dit_inputs(&case.golden("dit.safetensors"));
        let mut staged = a.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        assert!(staged.staged_dit().is_some());
        let mut whole = a.load_whole(NetworkKind::Dit, Backend::OrtCpu).unwrap();
        assert!(whole.staged_dit().is_none());
        let got = noise_pred(&staged.run(&inputs).unwrap());
        let want = noise_pred(&whole.run(&inputs).unwrap());
        assert_close(&format!("{name}: stages vs whole"), &got, &want, 3e-6, 0.0);
    }
}

/// Batch-`b` stack of `t` (`[1, …]`) rows `rows`.
fn stack(rows: &[&HostTensor]) -> HostTensor {
    let owned: Vec<HostTensor> = rows.iter().map(|t| (*t).clone()).collect();
    HostTensor::concat_batch(&owned).unwrap()
}

#[test]
fn bound_steps_equal_the_whole_graph() {
    for name in CASES {
        let case = Case::new(name);
        let golden = dit_inputs(&case.golden("dit.safetensors"));
        let i2v = golden.contains_key("encoder_hidden_states_image");
        let row0 = |name: &str| golden[name].slice_batch(0, 1);
        let cond = row0("encoder_hidden_states");
        // Another prompt for the unconditional branch.
        let mut uncond = cond.clone();
        let u = gaussian_noise(11, uncond.numel());
        uncond = HostTensor::from_f32(uncond.shape.clone(), &u);
        let hidden = &row0("hidden_states");
        let lat_shape = {
            let mut s = hidden.shape.clone();
            s[1] = 16;
            s
        };
        let n = lat_shape.iter().product::<u64>() as usize;
        let y = i2v.then(|| {
            let full = hidden.to_f32().unwrap();
            HostTensor::from_f32(
                vec![1, 20, lat_shape[2], lat_shape[3], lat_shape[4]],
                &full[n..],
            )
        });
        let image_row = i2v.then(|| row0("encoder_hidden_states_image"));
        let image = image_row.as_ref();
        let timesteps = [999.0f32, 750.5, 3.0];
        for batch in [BatchMode::Fixed(1), BatchMode::Fixed(2), BatchMode::Dynamic] {
            let out = case.compile_dit(false, Precision::Fp32, batch);
            let a = Artifacts::open(out.path()).unwrap();
            let mut whole = a.load_whole(NetworkKind::Dit, Backend::OrtCpu).unwrap();
            let mut staged = a.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
            let mut bound = staged
                .staged_dit()
                .unwrap()
                .bind(&Conditioning {
                    cond: &cond,
                    uncond: Some(&uncond),
                    image,
                    y: y.as_ref(),
                    timesteps: &timesteps,
                })
                .unwrap();
            let calls = if batch == BatchMode::Fixed(1) { 2 } else { 1 };
            assert_eq!(bound.calls_per_step(), calls, "{batch:?}");
            for (i, &t) in timesteps.iter().enumerate() {
                let latents = gaussian_noise(100 + i as u64, n);
                let x = HostTensor::from_f32(lat_shape.clone(), &latents);
                let x = match &y {
                    Some(y) => {
                        let mut v = latents.clone();
                        v.extend(y.to_f32().unwrap());
                        HostTensor::from_f32(hidden.shape.clone(), &v)
                    }
                    None => x,
                };
                let ts = HostTensor::from_f32(vec![1], &[t]);
                let mut inputs = BTreeMap::from([
                    ("hidden_states".to_string(), stack(&[&x, &x])),
                    ("timestep".to_string(), stack(&[&ts, &ts])),
                    (
                        "encoder_hidden_states".to_string(),
                        stack(&[&cond, &uncond]),
                    ),
                ]);
                if let Some(img) = image {
                    inputs.insert("encoder_hidden_states_image".into(), stack(&[img, img]));
                }
                let want = noise_pred(&whole.run(&inputs).unwrap());
                bound.run(i, &latents).unwrap();
                let (c, u) = bound
                    .with_prediction(|c, u| Ok((c.to_vec(), u.unwrap().to_vec())))
                    .unwrap();
                let what = format!("{name} {batch:?} step {i}");
                assert_close(&format!("{what} cond"), &c, &want[..n], 3e-6, 0.0);
                assert_close(&format!("{what} uncond"), &u, &want[n..], 3e-6, 0.0);
            }
        }
    }
}

/// A one-layer DiT (no `block_rest`: the head reads block 0's output) with
/// a step cache on the host and on the device (the step-cache graphs,
/// forced on ort-cpu): the same skip schedule and the same predictions bit
/// for bit on every step, for CFG as two batch-1 calls and as one batch-2
/// call (fixed and dynamic batch). Random weights at the tiny T2V config
/// with `num_layers` 1.
#[test]
fn a_one_layer_dit_caches_alike_on_host_and_device() {
    use wanrt::compiler::{CompileOptions, ModelSource, compile};
    use wanrt::core::DitConfig;
    use wanrt::runtime::cache::{CacheOptions, CachePolicy, CacheResidency, CacheTable};
    let case = Case::new("t2v-tiny");
    let tiny = case.compile_dit(false, Precision::Fp32, BatchMode::Fixed(1));
    let entry = Artifacts::open(tiny.path())
        .unwrap()
        .entry(NetworkKind::Dit)
        .unwrap()
        .clone();
    let mut cfg: DitConfig = serde_json::from_value(entry.config.clone()).unwrap();
    cfg.num_layers = 1;
    let steps = 8;
    let timesteps: Vec<f32> = (0..steps).map(|i| 999.0 - 120.0 * i as f32).collect();
    // MagCache with a table whose ratios fall away from 1: some steps skip.
    let ratios: Vec<f64> = (0..steps)
        .flat_map(|i| [1.0 - 0.01 * i as f64; 2])
        .collect();
    for batch in [BatchMode::Fixed(1), BatchMode::Fixed(2), BatchMode::Dynamic] {
        let profile = entry.profile.clone().with_batch(batch).unwrap();
        let dir = tempfile::tempdir().unwrap();
        compile(
            &CompileOptions::new(
                ModelSource::SyntheticConfig {
                    name: "one-layer".into(),
                    config: cfg.clone(),
                },
                dir.path(),
                profile.clone(),
            )
            .with_precision(Precision::Fp32)
            .with_networks([NetworkKind::Dit]),
        )
        .unwrap();
        let a = Artifacts::open(dir.path()).unwrap();
        let e = a.entry(NetworkKind::Dit).unwrap();
        let roles: Vec<&str> = e.stages.iter().map(|s| s.role.as_str()).collect();
        assert_eq!(roles, ["context", "time", "embed", "block_first", "head"]);
        let spec = &e.stage(wanrt::core::DitStage::Context).unwrap().inputs[0];
        let mut text = spec.concrete_shape(1);
        text[0] = 1;
        let numel = text.iter().product::<u64>() as usize;
        let cond = HostTensor::from_f32(text.clone(), &gaussian_noise(5, numel));
        let uncond = HostTensor::from_f32(text, &gaussian_noise(6, numel));
        let latent = e.stage(wanrt::core::DitStage::Embed).unwrap().inputs[0].concrete_shape(1);
        let n = latent[1..].iter().product::<u64>() as usize;
        let mut runs = Vec::new();
        for residency in [CacheResidency::Host, CacheResidency::Device] {
            let plan = CacheOptions {
                policy: CachePolicy::MagCache,
                threshold: Some(0.06),
                max_skip: Some(2),
                retention: Some(0.0),
                table: Some(CacheTable::MagRatios(ratios.clone())),
                residency,
                ..Default::default()
            }
            .resolve(&cfg, &profile, steps)
            .unwrap()
            .unwrap();
            let mut net = a.load(NetworkKind::Dit, Backend::OrtCpu).unwrap();
            let mut bound = net
                .staged_dit()
                .unwrap()
                .bind_cached(
                    &Conditioning {
                        cond: &cond,
                        uncond: Some(&uncond),
                        image: None,
                        y: None,
                        timesteps: &timesteps,
                    },
                    &[],
                    Some(&plan),
                )
                .unwrap();
            let mut preds = Vec::new();
            for i in 0..steps {
                bound.run(i, &gaussian_noise(200 + i as u64, n)).unwrap();
                preds.push(
                    bound
                        .with_prediction(|c, u| Ok([c.to_vec(), u.unwrap().to_vec()]))
                        .unwrap(),
                );
            }
            let rec = bound.cache_record().unwrap();
            assert_eq!(rec.residency, Some(residency), "{batch:?}");
            runs.push((preds, rec));
        }
        let ((host, host_rec), (dev, dev_rec)) = (&runs[0], &runs[1]);
        for (h, d) in host_rec.branches.iter().zip(&dev_rec.branches) {
            assert_eq!(h.computed, d.computed, "{batch:?} {}", h.branch);
            assert!(
                h.computed.contains(&false),
                "{batch:?} {}: no step skipped ({:?})",
                h.branch,
                h.computed
            );
        }
        for (i, (h, d)) in host.iter().zip(dev).enumerate() {
            for (branch, (h, d)) in h.iter().zip(d).enumerate() {
                let bad = h
                    .iter()
                    .zip(d)
                    .position(|(a, b)| a.to_bits() != b.to_bits());
                assert!(
                    bad.is_none(),
                    "{batch:?} step {i} branch {branch}: element {bad:?} differs on the device"
                );
            }
        }
    }
}

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

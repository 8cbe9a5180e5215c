//! What the DiT benches share: the synthetic configs, random inputs from
//! the DiT's contract, and compiling + loading the DiT on ort-cpu.

use std::collections::BTreeMap;

use wanrt::compiler::quant::QuantOptions;
use wanrt::compiler::{CompileOptions, ModelSource, compile};
use wanrt::core::{DitConfig, NetworkContract, NetworkKind, Precision, Profile};
use wanrt::runtime::{Artifacts, Backend, HostTensor, Network};

pub struct Setup {
    pub label: &'static str,
    pub dim: u32,
    pub heads: u32,
    pub layers: u32,
    pub ffn: u32,
    pub profile: Profile,
}

pub fn config(s: &Setup) -> DitConfig {
    let mut c = DitConfig::t2v_1_3b();
    c.dim = s.dim;
    c.num_heads = s.heads;
    c.num_layers = s.layers;
    c.ffn_dim = s.ffn;
    c.text_dim = 256;
    c
}

pub fn inputs(cfg: &DitConfig, profile: &Profile) -> BTreeMap<String, HostTensor> {
    let contract = NetworkContract::dit(cfg, profile).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    contract
        .inputs
        .iter()
        .map(|spec| {
            let shape = spec.concrete_shape(1);
            let n = shape.iter().product::<u64>() as usize;
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if spec.name == "timestep" {
                        500.0
                    } else {
                        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                    }
                })
                .collect();
            (spec.name.clone(), HostTensor::from_f32(shape, &values))
        })
        .collect()
}

/// Compiles the synthetic DiT of `s` (fp32, or quantized by `quant`) and
/// loads it on ort-cpu; the directory lives as long as the network.
pub fn load(
    s: &Setup,
    cfg: &DitConfig,
    profile: &Profile,
    quant: Option<QuantOptions>,
) -> (tempfile::TempDir, Network) {
    let dir = tempfile::tempdir().unwrap();
    compile(
        &CompileOptions::new(
            ModelSource::SyntheticConfig {
                name: s.label.into(),
                config: cfg.clone(),
            },
            dir.path(),
            profile.clone(),
        )
        .with_precision(Precision::Fp32)
        .with_quantization(quant)
        .with_networks([NetworkKind::Dit]),
    )
    .unwrap();
    let dit = Artifacts::open(dir.path())
        .unwrap()
        .load(NetworkKind::Dit, Backend::OrtCpu)
        .unwrap();
    (dir, dit)
}

/// The small and medium synthetic configs (docs/MEASUREMENTS.md).
pub fn setups() -> [Setup; 2] {
    [
        Setup {
            label: "small-64x64x9",
            dim: 256,
            heads: 2,
            layers: 2,
            ffn: 1024,
            profile: Profile::custom(64, 64, 9, 64).unwrap(),
        },
        Setup {
            label: "medium-320x192x17",
            dim: 768,
            heads: 6,
            layers: 4,
            ffn: 3072,
            profile: Profile::custom(320, 192, 17, 128).unwrap(),
        },
    ]
}

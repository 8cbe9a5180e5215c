//! Built-in tables and thresholds of the official Wan2.1 checkpoints, as
//! their reference implementations publish them (`docs/WAN.md` §cache):
//! TeaCache's rescaling polynomials and its README's slow/fast thresholds
//! (ali-vilab/TeaCache `TeaCache4Wan2.1`, commit 7c10efc), MagCache's
//! magnitude ratios and its README's settings (Zehong-Ma/MagCache
//! `MagCache4Wan2.1`, commit df81cb1).
//!
//! The model is recognised from its DiT config (task, width, depth, input
//! channels), never from a file name. I2V-14B-480P and -720P share one
//! architecture; the reference tells them apart by the checkpoint's
//! directory name, this runtime by the profile's area (up to 832×480: the
//! 480P tables).

use wanrt_core::{DitConfig, Profile, Task};

use super::CachePolicy;
use super::mag_ratios;

/// An official checkpoint with published cache tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownModel {
    T2v1_3b,
    T2v14b,
    I2v14b480p,
    I2v14b720p,
}

impl KnownModel {
    pub fn name(self) -> &'static str {
        match self {
            KnownModel::T2v1_3b => "T2V-1.3B",
            KnownModel::T2v14b => "T2V-14B",
            KnownModel::I2v14b480p => "I2V-14B-480P",
            KnownModel::I2v14b720p => "I2V-14B-720P",
        }
    }
}

/// The official checkpoint `cfg` is, if any (its architecture exactly).
pub fn known_model(cfg: &DitConfig, profile: &Profile) -> Option<KnownModel> {
    let same = |o: DitConfig| {
        (
            o.task,
            o.dim,
            o.ffn_dim,
            o.num_heads,
            o.num_layers,
            o.in_dim,
            o.out_dim,
        ) == (
            cfg.task,
            cfg.dim,
            cfg.ffn_dim,
            cfg.num_heads,
            cfg.num_layers,
            cfg.in_dim,
            cfg.out_dim,
        )
    };
    if same(DitConfig::t2v_1_3b()) {
        Some(KnownModel::T2v1_3b)
    } else if same(DitConfig::t2v_14b()) {
        Some(KnownModel::T2v14b)
    } else if same(DitConfig::i2v_14b()) && cfg.task == Task::I2v {
        let area = u64::from(profile.width) * u64::from(profile.height);
        Some(if area <= 832 * 480 {
            KnownModel::I2v14b480p
        } else {
            KnownModel::I2v14b720p
        })
    } else {
        None
    }
}

/// TeaCache4Wan2.1's polynomial for `model`: `e` (default) or `e0`
/// (`use_ret_steps`), highest power first.
pub fn tea_coefficients(model: KnownModel, ret: bool) -> [f64; 5] {
    match (model, ret) {
        (KnownModel::T2v1_3b, false) => [
            2.39676752e+03,
            -1.31110545e+03,
            2.01331979e+02,
            -8.29855975e+00,
            1.37887774e-01,
        ],
        (KnownModel::T2v1_3b, true) => [
            -5.21862437e+04,
            9.23041404e+03,
            -5.28275948e+02,
            1.36987616e+01,
            -4.99875664e-02,
        ],
        (KnownModel::T2v14b, false) => [
            -5784.54975374,
            5449.50911966,
            -1811.16591783,
            256.27178429,
            -13.02252404,
        ],
        (KnownModel::T2v14b, true) => [
            -3.03318725e+05,
            4.90537029e+04,
            -2.65530556e+03,
            5.87365115e+01,
            -3.15583525e-01,
        ],
        (KnownModel::I2v14b480p, false) => [
            -3.02331670e+02,
            2.23948934e+02,
            -5.25463970e+01,
            5.87348440e+00,
            -2.01973289e-01,
        ],
        (KnownModel::I2v14b480p, true) => [
            2.57151496e+05,
            -3.54229917e+04,
            1.40286849e+03,
            -1.35890334e+01,
            1.32517977e-01,
        ],
        (KnownModel::I2v14b720p, false) => [
            -114.36346466,
            65.26524496,
            -18.82220707,
            4.91518089,
            -0.23412683,
        ],
        (KnownModel::I2v14b720p, true) => [
            8.10705460e+03,
            2.13393892e+03,
            -3.72934672e+02,
            1.66203073e+01,
            -4.17769401e-02,
        ],
    }
}

/// MagCache4Wan2.1's magnitude ratios for `model` (50 steps for T2V, 40
/// for I2V; other step counts are resampled).
pub fn mag_ratios(model: KnownModel) -> &'static [f64] {
    match model {
        KnownModel::T2v1_3b => &mag_ratios::T2V_1_3B,
        KnownModel::T2v14b => &mag_ratios::T2V_14B,
        KnownModel::I2v14b480p => &mag_ratios::I2V_14B_480P,
        KnownModel::I2v14b720p => &mag_ratios::I2V_14B_720P,
    }
}

/// A named setting of a policy for a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub threshold: f64,
    pub max_skip: Option<u32>,
    pub retention: Option<f64>,
}

/// The preset names of `policy`.
pub fn preset_names(policy: CachePolicy) -> &'static [&'static str] {
    match policy {
        CachePolicy::TeaCache | CachePolicy::TeaCacheRet => &["slow", "fast"],
        CachePolicy::MagCache => &["default"],
        _ => &[],
    }
}

/// The preset a policy takes on a recognised model when no threshold is
/// given.
pub fn default_preset_name(policy: CachePolicy) -> &'static str {
    match policy {
        CachePolicy::MagCache => "default",
        _ => "slow",
    }
}

/// The published settings: TeaCache's README tables ("Slow" and "Fast"
/// thresholds per model, with and without `--use_ret_steps`) and
/// MagCache's README commands (`default`: T2V-1.3B E012K4R02, the 14B
/// models E024K6R02; `EtKkRr` = threshold t, K k, retention r).
pub fn preset(model: KnownModel, policy: CachePolicy, name: &str) -> Option<Preset> {
    use KnownModel::*;
    let tea = |t: f64| Preset {
        name: if name == "slow" { "slow" } else { "fast" },
        threshold: t,
        max_skip: None,
        retention: None,
    };
    match policy {
        CachePolicy::TeaCache => {
            let (slow, fast) = match model {
                T2v1_3b => (0.05, 0.08),
                T2v14b => (0.14, 0.20),
                I2v14b480p => (0.13, 0.26),
                I2v14b720p => (0.20, 0.30),
            };
            match name {
                "slow" => Some(tea(slow)),
                "fast" => Some(tea(fast)),
                _ => None,
            }
        }
        CachePolicy::TeaCacheRet => {
            let (slow, fast) = match model {
                T2v1_3b => (0.05, 0.10),
                T2v14b => (0.10, 0.20),
                I2v14b480p => (0.20, 0.30),
                I2v14b720p => (0.20, 0.30),
            };
            match name {
                "slow" => Some(tea(slow)),
                "fast" => Some(tea(fast)),
                _ => None,
            }
        }
        CachePolicy::MagCache if name == "default" => {
            let (t, k) = match model {
                T2v1_3b => (0.12, 4),
                _ => (0.24, 6),
            };
            Some(Preset {
                name: "default",
                threshold: t,
                max_skip: Some(k),
                retention: Some(0.2),
            })
        }
        _ => None,
    }
}

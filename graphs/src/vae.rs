//! The Wan-VAE (3-D causal VAE) as static per-chunk graphs with explicit
//! causal-convolution caches.
//!
//! Mirrors `wan/modules/vae.py` (`WanVAE_`, `Encoder3d`, `Decoder3d`,
//! `CausalConv3d`, `ResidualBlock`, `AttentionBlock`, `Resample`) of the
//! official repository (`docs/WAN.md` §6). The official code runs the VAE
//! chunk by chunk (encoder: frame 0, then 4 frames; decoder: one latent frame)
//! with a list of feature caches; here each chunk is one call of a graph whose
//! caches are explicit inputs and outputs, so shapes are static per profile
//! and memory does not grow with the number of frames.
//!
//! Two graphs per direction:
//!
//! * **first** — chunk 0 (1 pixel frame in / 1 latent out for the encoder,
//!   1 latent in / 1 pixel frame out for the decoder). The resampling time
//!   convolutions do not run on chunk 0 (the official code's first-chunk and
//!   `"Rep"` rules), so this graph differs structurally from the others.
//! * **step** — every later chunk (4 frames ↔ 1 latent frame).
//!
//! Every 3-tap causal convolution keeps a 2-frame cache, zero-initialised:
//! "no cache" (zero front padding) and "a 1-frame cache plus one zero frame"
//! of the official code are both exactly a 2-frame cache with zeros in front,
//! so one cache shape serves every chunk. The encoder's stride-2 time
//! convolutions keep a 1-frame cache. Cache `i` enters the step graph as
//! `cache.{i}` and leaves every graph as `cache.{i}.out`; a step-graph cache
//! the first graph does not produce (the decoder's upsampling time convs,
//! whose first chunk is the official `"Rep"` marker) starts as zeros.
//!
//! Contract of a decode as a whole (`wan-run component vae-decoder`):
//! `latents [1, 16, F', H', W']` (raw, not normalised) → `video [1, 3,
//! 1 + 4(F'−1), 8H', 8W']` clamped to [−1, 1]. Encode: `video [1, 3, F, H, W]`
//! in [−1, 1] → `latent_mean [1, 16, F', H/8, W/8]` (raw). The VAE stays fp32
//! by default, as the reference recommends.

use wanrt_core::{DType, Precision, VaeConfig};

use crate::builder::{GraphBuilder, IoDim, Value};
use crate::error::{Error, Result};
use crate::weights::Weights;

const F32: DType = DType::Float32;
/// The official `CACHE_T`.
const CACHE_T: i64 = 2;

/// Which chunk graph is being built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    First,
    Step,
}

impl Chunk {
    pub fn name(self) -> &'static str {
        match self {
            Chunk::First => "first",
            Chunk::Step => "step",
        }
    }
}

/// A cache of the step graph: its name, channels, frames and spatial size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    pub name: String,
    pub shape: [i64; 5],
}

/// Shape state while walking the network: `[1, c, t, h, w]`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    c: i64,
    t: i64,
    h: i64,
    w: i64,
}

struct Vae<'a, 'b, 'i> {
    b: &'a mut GraphBuilder<'i>,
    w: Weights<'b>,
    chunk: Chunk,
    c: DType,
    next_cache: usize,
    caches: Vec<CacheSpec>,
    /// `(cache.{i}.out value, spec)` to expose as outputs at the end.
    cache_outputs: Vec<(Value, CacheSpec)>,
}

impl Vae<'_, '_, '_> {
    fn param(
        &mut self,
        name: &str,
        shape: &[usize],
        dims: Vec<i64>,
        store: DType,
    ) -> Result<Value> {
        let (full, t) = self.w.get(name, shape)?;
        self.b.weight_as(&full, &t, store, false, dims)
    }

    /// Registers the next cache; in the step graph it is a graph input.
    fn cache(&mut self, shape: [i64; 5]) -> (Option<Value>, CacheSpec) {
        let spec = CacheSpec {
            name: format!("cache.{}", self.next_cache),
            shape,
        };
        self.next_cache += 1;
        let input = (self.chunk == Chunk::Step).then(|| {
            self.caches.push(spec.clone());
            let dims: Vec<IoDim> = shape.iter().map(|&d| IoDim::Fixed(d)).collect();
            self.b.input(&spec.name, F32, &dims)
        });
        (input, spec)
    }

    fn expose(&mut self, v: Value, spec: CacheSpec) {
        self.cache_outputs.push((v, spec));
    }

    /// `CausalConv3d` with a 3-tap time kernel and 1-pixel spatial padding,
    /// driven through a 2-frame cache (see the module doc).
    fn causal_conv(&mut self, p: &str, x: &Value, d: Dims, out_c: i64) -> Result<(Value, Dims)> {
        let shape = [out_c as usize, d.c as usize, 3, 3, 3];
        let wv = self.param(
            &format!("{p}.weight"),
            &shape,
            shape.map(|v| v as i64).to_vec(),
            self.c,
        )?;
        let bv = self.param(&format!("{p}.bias"), &[out_c as usize], vec![out_c], self.c)?;
        let (cache_in, spec) = self.cache([1, d.c, CACHE_T, d.h, d.w]);
        let c = self.c;
        let (y, cache_out) = self.b.scoped(p, |b| {
            let xp = match &cache_in {
                Some(cache) => b.concat(&[cache, x], 2), // [1, c, 2 + t, h, w]
                None => b.pad(x, &[0, 0, CACHE_T, 0, 0, 0, 0, 0, 0, 0]), // zeros in the past
            };
            let cache_out = b.slice(&xp, &[-CACHE_T], &[i64::MAX], &[2]); // last 2 frames
            let xc = b.cast(&xp, c);
            let y = b.conv(
                &xc,
                &wv,
                Some(&bv),
                &[3, 3, 3],
                &[1, 1, 1],
                &[0, 1, 1, 0, 1, 1],
            );
            Ok((b.cast(&y, F32), cache_out))
        })?;
        self.expose(cache_out, spec);
        Ok((y, Dims { c: out_c, ..d }))
    }

    /// A pointwise (1×1×1) convolution: no time padding, no cache.
    fn conv1x1(&mut self, p: &str, x: &Value, d: Dims, out_c: i64) -> Result<(Value, Dims)> {
        let shape = [out_c as usize, d.c as usize, 1, 1, 1];
        let wv = self.param(
            &format!("{p}.weight"),
            &shape,
            shape.map(|v| v as i64).to_vec(),
            self.c,
        )?;
        let bv = self.param(&format!("{p}.bias"), &[out_c as usize], vec![out_c], self.c)?;
        let c = self.c;
        let y = self.b.scoped(p, |b| {
            let xc = b.cast(x, c);
            let y = b.conv(&xc, &wv, Some(&bv), &[1, 1, 1], &[1, 1, 1], &[0; 6]);
            Ok(b.cast(&y, F32))
        })?;
        Ok((y, Dims { c: out_c, ..d }))
    }

    /// `RMS_norm`: `x / max(‖x‖₂ over channels, 1e-12) · √C · γ`, per position.
    fn rms_norm(&mut self, p: &str, x: &Value, d: Dims, images: bool) -> Result<Value> {
        let gshape: Vec<usize> = if images {
            vec![d.c as usize, 1, 1]
        } else {
            vec![d.c as usize, 1, 1, 1]
        };
        // Broadcast over [1, c, t, h, w] in both cases.
        let g = self.param(&format!("{p}.gamma"), &gshape, vec![d.c, 1, 1, 1], F32)?;
        let scale = (d.c as f32).sqrt();
        self.b.scoped(p, |b| {
            let ss = b.reduce_sum_square(x, &[1]); // [1, 1, t, h, w]
            let n = b.sqrt(&ss);
            let eps = b.scalar(1e-12, F32);
            let n = b.max(&n, &eps);
            let y = b.div(x, &n);
            let s = b.scalar(scale, F32);
            let y = b.mul(&y, &s);
            Ok(b.mul(&y, &g))
        })
    }

    fn silu(&mut self, p: &str, x: &Value) -> Result<Value> {
        self.b.scoped(p, |b| Ok(b.silu(x)))
    }

    /// `ResidualBlock(in, out)`: norm → SiLU → conv → norm → SiLU → conv,
    /// plus a 1×1×1 shortcut when the width changes.
    fn residual(&mut self, p: &str, x: &Value, d: Dims, out_c: i64) -> Result<(Value, Dims)> {
        let h = self.rms_norm(&format!("{p}.residual.0"), x, d, false)?;
        let h = self.silu(&format!("{p}.residual.1"), &h)?;
        let (h, d1) = self.causal_conv(&format!("{p}.residual.2"), &h, d, out_c)?;
        let h = self.rms_norm(&format!("{p}.residual.3"), &h, d1, false)?;
        let h = self.silu(&format!("{p}.residual.4"), &h)?;
        let (h, d2) = self.causal_conv(&format!("{p}.residual.6"), &h, d1, out_c)?;
        let short = if d.c != out_c {
            self.conv1x1(&format!("{p}.shortcut"), x, d, out_c)?.0
        } else {
            x.clone()
        };
        let y = self.b.scoped(p, |b| Ok(b.add(&h, &short)))?;
        Ok((y, d2))
    }

    /// `AttentionBlock(C)`: single-head attention over the pixels of each
    /// frame, no temporal mixing.
    fn attention(&mut self, p: &str, x: &Value, d: Dims) -> Result<Value> {
        let n = self.rms_norm(&format!("{p}.norm"), x, d, true)?;
        let c3 = [3 * d.c as usize, d.c as usize, 1, 1];
        let wqkv = self.param(
            &format!("{p}.to_qkv.weight"),
            &c3,
            vec![3 * d.c, d.c, 1, 1, 1],
            self.c,
        )?;
        let bqkv = self.param(
            &format!("{p}.to_qkv.bias"),
            &[3 * d.c as usize],
            vec![3 * d.c],
            self.c,
        )?;
        let cp = [d.c as usize, d.c as usize, 1, 1];
        let wp = self.param(
            &format!("{p}.proj.weight"),
            &cp,
            vec![d.c, d.c, 1, 1, 1],
            self.c,
        )?;
        let bp = self.param(
            &format!("{p}.proj.bias"),
            &[d.c as usize],
            vec![d.c],
            self.c,
        )?;
        let c = self.c;
        self.b.scoped(p, |b| {
            let nc = b.cast(&n, c);
            let qkv = b.conv(&nc, &wqkv, Some(&bqkv), &[1, 1, 1], &[1, 1, 1], &[0; 6]); // [1, 3c, t, h, w]
            let qkv = b.reshape(&qkv, &[3 * d.c, d.t, d.h * d.w]); // [3c, t, hw]
            let qkv = b.transpose(&qkv, &[1, 2, 0]); // [t, hw, 3c]
            let mut parts = b.split(&qkv, 2, 3); // 3 × [t, hw, c]
            let v = parts.pop().expect("three parts");
            let k = parts.pop().expect("three parts");
            let q = parts.pop().expect("three parts");
            let o = b.attention(&q, &k, &v, 1); // [t, hw, c], scale 1/√c
            let o = b.transpose(&o, &[2, 0, 1]); // [c, t, hw]
            let o = b.reshape(&o, &[1, d.c, d.t, d.h, d.w]); // [1, c, t, h, w]
            let o = b.conv(&o, &wp, Some(&bp), &[1, 1, 1], &[1, 1, 1], &[0; 6]);
            let o = b.cast(&o, F32);
            Ok(b.add(&o, x))
        })
    }

    /// `Resample(downsample2d | downsample3d)`: zero-pad right/bottom, 3×3
    /// stride-2 conv per frame; 3d adds the stride-2 time conv (not on chunk 0).
    fn downsample(&mut self, p: &str, x: &Value, d: Dims, temporal: bool) -> Result<(Value, Dims)> {
        let cs = [d.c as usize, d.c as usize, 3, 3];
        let wv = self.param(
            &format!("{p}.resample.1.weight"),
            &cs,
            vec![d.c, d.c, 1, 3, 3],
            self.c,
        )?;
        let bv = self.param(
            &format!("{p}.resample.1.bias"),
            &[d.c as usize],
            vec![d.c],
            self.c,
        )?;
        let c = self.c;
        let y = self.b.scoped(&format!("{p}.resample"), |b| {
            let xc = b.cast(x, c);
            let y = b.conv(
                &xc,
                &wv,
                Some(&bv),
                &[1, 3, 3],
                &[1, 2, 2],
                &[0, 0, 0, 0, 1, 1],
            );
            Ok(b.cast(&y, F32))
        })?;
        let mut d = Dims {
            h: (d.h - 2) / 2 + 1,
            w: (d.w - 2) / 2 + 1,
            ..d
        };
        if !temporal {
            return Ok((y, d));
        }
        let (cache_in, spec) = self.cache([1, d.c, 1, d.h, d.w]);
        let Some(cache) = cache_in else {
            // Chunk 0: the official code stores the frame and skips the conv.
            self.expose(y.clone(), spec);
            return Ok((y, d));
        };
        let ts = [d.c as usize, d.c as usize, 3, 1, 1];
        let tw = self.param(
            &format!("{p}.time_conv.weight"),
            &ts,
            ts.map(|v| v as i64).to_vec(),
            self.c,
        )?;
        let tb = self.param(
            &format!("{p}.time_conv.bias"),
            &[d.c as usize],
            vec![d.c],
            self.c,
        )?;
        let (y, cache_out) = self.b.scoped(&format!("{p}.time_conv"), |b| {
            let cache_out = b.slice(&y, &[-1], &[i64::MAX], &[2]); // last frame
            let xp = b.concat(&[&cache, &y], 2); // [1, c, 1 + t, h, w]
            let xc = b.cast(&xp, c);
            let y = b.conv(&xc, &tw, Some(&tb), &[3, 1, 1], &[2, 1, 1], &[0; 6]);
            Ok((b.cast(&y, F32), cache_out))
        })?;
        self.expose(cache_out, spec);
        d.t = (d.t + 1 - 3) / 2 + 1;
        Ok((y, d))
    }

    /// `Resample(upsample2d | upsample3d)`: 3d first runs the time conv that
    /// doubles the frames (not on chunk 0), then nearest ×2 and a 3×3 conv
    /// halving the channels.
    fn upsample(&mut self, p: &str, x: &Value, d: Dims, temporal: bool) -> Result<(Value, Dims)> {
        let mut x = x.clone();
        let mut d = d;
        if temporal {
            let (cache_in, _spec) = self.cache([1, d.c, CACHE_T, d.h, d.w]);
            if let Some(cache) = cache_in {
                let ts = [2 * d.c as usize, d.c as usize, 3, 1, 1];
                let tw = self.param(
                    &format!("{p}.time_conv.weight"),
                    &ts,
                    ts.map(|v| v as i64).to_vec(),
                    self.c,
                )?;
                let tb = self.param(
                    &format!("{p}.time_conv.bias"),
                    &[2 * d.c as usize],
                    vec![2 * d.c],
                    self.c,
                )?;
                let c = self.c;
                let (y, cache_out) = self.b.scoped(&format!("{p}.time_conv"), |b| {
                    let xp = b.concat(&[&cache, &x], 2); // [1, c, 2 + t, h, w]
                    let cache_out = b.slice(&xp, &[-CACHE_T], &[i64::MAX], &[2]);
                    let xc = b.cast(&xp, c);
                    let y = b.conv(&xc, &tw, Some(&tb), &[3, 1, 1], &[1, 1, 1], &[0; 6]); // [1, 2c, t, h, w]
                    let y = b.cast(&y, F32);
                    // Channels [0, c) become the earlier frame, [c, 2c) the later.
                    let y = b.reshape(&y, &[1, 2, d.c, d.t, d.h, d.w]); // [1, 2, c, t, h, w]
                    let y = b.transpose(&y, &[0, 2, 3, 1, 4, 5]); // [1, c, t, 2, h, w]
                    let y = b.reshape(&y, &[1, d.c, 2 * d.t, d.h, d.w]); // [1, c, 2t, h, w]
                    Ok((y, cache_out))
                })?;
                self.expose(cache_out, _spec);
                x = y;
                d.t *= 2;
            }
        }
        let out_c = d.c / 2;
        let cs = [out_c as usize, d.c as usize, 3, 3];
        let wv = self.param(
            &format!("{p}.resample.1.weight"),
            &cs,
            vec![out_c, d.c, 1, 3, 3],
            self.c,
        )?;
        let bv = self.param(
            &format!("{p}.resample.1.bias"),
            &[out_c as usize],
            vec![out_c],
            self.c,
        )?;
        let c = self.c;
        let y = self.b.scoped(&format!("{p}.resample"), |b| {
            let up = b.upsample_nearest(&x, &[1.0, 1.0, 1.0, 2.0, 2.0])?; // [1, c, t, 2h, 2w]
            let uc = b.cast(&up, c);
            let y = b.conv(
                &uc,
                &wv,
                Some(&bv),
                &[1, 3, 3],
                &[1, 1, 1],
                &[0, 1, 1, 0, 1, 1],
            );
            Ok(b.cast(&y, F32))
        })?;
        Ok((
            y,
            Dims {
                c: out_c,
                t: d.t,
                h: d.h * 2,
                w: d.w * 2,
            },
        ))
    }

    fn middle(&mut self, p: &str, x: &Value, d: Dims) -> Result<Value> {
        let (x, d) = self.residual(&format!("{p}.0"), x, d, d.c)?;
        let x = self.attention(&format!("{p}.1"), &x, d)?;
        Ok(self.residual(&format!("{p}.2"), &x, d, d.c)?.0)
    }

    fn head(&mut self, p: &str, x: &Value, d: Dims, out_c: i64) -> Result<(Value, Dims)> {
        let h = self.rms_norm(&format!("{p}.0"), x, d, false)?;
        let h = self.silu(&format!("{p}.1"), &h)?;
        self.causal_conv(&format!("{p}.2"), &h, d, out_c)
    }

    fn finish(self, out: &Value, out_name: &str, out_dims: [i64; 5]) -> Vec<CacheSpec> {
        let dims: Vec<IoDim> = out_dims.iter().map(|&d| IoDim::Fixed(d)).collect();
        self.b.output(out, out_name, Some(&dims));
        for (v, spec) in &self.cache_outputs {
            let dims: Vec<IoDim> = spec.shape.iter().map(|&d| IoDim::Fixed(d)).collect();
            self.b.output(v, &format!("{}.out", spec.name), Some(&dims));
        }
        self.caches
    }
}

fn channel_ladder(cfg: &VaeConfig) -> Vec<i64> {
    std::iter::once(1)
        .chain(cfg.dim_mult.iter().copied())
        .map(|m| (cfg.base_dim * m) as i64)
        .collect()
}

fn check(cfg: &VaeConfig, h: u32, w: u32) -> Result<()> {
    let s = cfg.spatial_stride();
    if h == 0 || w == 0 || !h.is_multiple_of(s) || !w.is_multiple_of(s) {
        return Err(Error::Invalid(format!(
            "VAE frames of {w}x{h} are not a multiple of the spatial stride {s}"
        )));
    }
    if cfg.temporal_stride() != 4 || cfg.num_res_blocks == 0 {
        return Err(Error::Invalid(
            "only the Wan2.1 temporal layout (×4, two downsampling stages) is supported".into(),
        ));
    }
    Ok(())
}

/// Builds one encoder chunk graph: `video [1, 3, t, H, W]` (t = 1 for the
/// first chunk, 4 after) → `latent_mean [1, z, 1, H/8, W/8]`. Returns the
/// step graph's cache inputs (empty for the first chunk).
pub fn build_encoder(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &VaeConfig,
    height: u32,
    width: u32,
    chunk: Chunk,
    precision: Precision,
) -> Result<Vec<CacheSpec>> {
    check(cfg, height, width)?;
    let t = match chunk {
        Chunk::First => 1,
        Chunk::Step => cfg.temporal_stride() as i64,
    };
    let (h, wd) = (height as i64, width as i64);
    let x = b.input("video", F32, &[1, 3, t, h, wd].map(IoDim::Fixed));
    let mut v = Vae {
        b,
        w,
        chunk,
        c: precision.compute_dtype(),
        next_cache: 0,
        caches: Vec::new(),
        cache_outputs: Vec::new(),
    };
    let dims = channel_ladder(cfg);
    let d0 = Dims { c: 3, t, h, w: wd };
    let (mut x, mut d) = v.causal_conv("encoder.conv1", &x, d0, dims[0])?;
    let mut idx = 0;
    let stages = cfg.dim_mult.len();
    for i in 0..stages {
        let out_c = dims[i + 1];
        for _ in 0..cfg.num_res_blocks {
            (x, d) = v.residual(&format!("encoder.downsamples.{idx}"), &x, d, out_c)?;
            idx += 1;
        }
        if i != stages - 1 {
            (x, d) = v.downsample(
                &format!("encoder.downsamples.{idx}"),
                &x,
                d,
                cfg.temperal_downsample[i],
            )?;
            idx += 1;
        }
    }
    let x = v.middle("encoder.middle", &x, d)?;
    let z2 = 2 * cfg.z_dim as i64;
    let (x, d) = v.head("encoder.head", &x, d, z2)?;
    // The top-level 1×1×1 `conv1` is per frame: running it per chunk equals
    // running it on the concatenation. Keep the mean (channels [0, z)).
    let (x, d) = v.conv1x1("conv1", &x, d, z2)?;
    let mu = v.b.scoped("conv1", |b| {
        Ok(b.slice(&x, &[0], &[cfg.z_dim as i64], &[1]))
    })?;
    Ok(v.finish(&mu, "latent_mean", [1, cfg.z_dim as i64, d.t, d.h, d.w]))
}

/// Builds one decoder chunk graph: `latents [1, z, 1, H', W']` (raw) →
/// `video [1, 3, t, 8H', 8W']` clamped to [−1, 1] (t = 1 for the first
/// chunk, 4 after). Returns the step graph's cache inputs.
pub fn build_decoder(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &VaeConfig,
    height: u32,
    width: u32,
    chunk: Chunk,
    precision: Precision,
) -> Result<Vec<CacheSpec>> {
    check(cfg, height, width)?;
    let s = cfg.spatial_stride() as i64;
    let (h, wd) = (height as i64 / s, width as i64 / s);
    let z = cfg.z_dim as i64;
    let x = b.input("latents", F32, &[1, z, 1, h, wd].map(IoDim::Fixed));
    let mut v = Vae {
        b,
        w,
        chunk,
        c: precision.compute_dtype(),
        next_cache: 0,
        caches: Vec::new(),
        cache_outputs: Vec::new(),
    };
    let d0 = Dims {
        c: z,
        t: 1,
        h,
        w: wd,
    };
    // The top-level 1×1×1 `conv2` runs on the whole latent in the official
    // code; it is per frame, so per chunk is the same.
    let (x, d) = v.conv1x1("conv2", &x, d0, z)?;
    let ladder = channel_ladder(cfg);
    // Decoder widths: the last width, then the ladder reversed (384, 384, 384, 192, 96).
    let mut dims = vec![*ladder.last().expect("non-empty ladder")];
    dims.extend(ladder[1..].iter().rev());
    let (mut x, mut d) = v.causal_conv("decoder.conv1", &x, d, dims[0])?;
    x = v.middle("decoder.middle", &x, d)?;
    let stages = cfg.dim_mult.len();
    let temporal_up: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
    let mut idx = 0;
    for i in 0..stages {
        let out_c = dims[i + 1];
        for _ in 0..cfg.num_res_blocks + 1 {
            (x, d) = v.residual(&format!("decoder.upsamples.{idx}"), &x, d, out_c)?;
            idx += 1;
        }
        if i != stages - 1 {
            (x, d) = v.upsample(&format!("decoder.upsamples.{idx}"), &x, d, temporal_up[i])?;
            idx += 1;
        }
    }
    let (x, d) = v.head("decoder.head", &x, d, 3)?;
    let y = v.b.scoped("decoder.clamp", |b| Ok(b.clip(&x, -1.0, 1.0)))?;
    Ok(v.finish(&y, "video", [1, 3, d.t, d.h, d.w]))
}

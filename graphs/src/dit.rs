//! The Wan2.1 diffusion transformer (DiT) as a typed ONNX graph.
//!
//! Mirrors `wan/modules/model.py::WanModel` of the official repository
//! (`docs/WAN.md` §3), for T2V (16 input channels), I2V (36 channels, CLIP
//! tokens through `img_emb`, separate `k_img`/`v_img` attention summed with
//! the text attention before the output projection) and FLF2V (I2V with two
//! images' tokens and the learned `img_emb.emb_pos` added to them, §13).
//!
//! Contract ([`NetworkContract::dit`]): inputs `hidden_states [B, C_in, F', H',
//! W']`, `timestep [B]`, `encoder_hidden_states [B, L, text_dim]`, for I2V
//! `encoder_hidden_states_image [B, 257, image_dim]` (FLF2V `[B, 514,
//! image_dim]`); output `noise_pred [B, 16, F', H', W']`; float32 at the
//! boundary for every precision.
//!
//! Precision map (§3.8): with `bf16`/`fp16` the patch embedding, text and
//! image MLPs, q/k/v/o projections, attention and FFN run in the half type;
//! the sinusoid, time MLP, modulation, every LayerNorm and RMSNorm, RoPE, the
//! residual stream, the gates and the output head stay float32.
//!
//! Weights are addressed by their original Wan2.1 names, which also name the
//! ONNX initializers and nodes (`blocks.3.self_attn.q/MatMul`).
//!
//! Quantized engines ([`DitOptions::quant`], `crate::quant`): the block
//! linears of the chosen layer set become FP8 Q/DQ or INT8 integer GEMMs;
//! everything else computes as the base precision above.

use wanrt_core::{
    DType, DitConfig, DitStage, NetworkContract, Precision, Profile, QuantLayers, Task,
};

use crate::builder::{GraphBuilder, IoDim, Value};
use crate::error::{Error, Result};
use crate::layers::{self, io_dims};
use crate::quant::{self, QuantPlan};
use crate::weights::Weights;

/// Options of a DiT export.
#[derive(Debug, Clone, Default)]
pub struct DitOptions {
    pub precision: Precision,
    /// Adds the golden intermediates (`intermediate.temb`, `...block_0_out`,
    /// ...) as extra float32 outputs, for hunting numeric mismatches.
    pub debug_outputs: bool,
    /// Quantized block linears (`--precision fp8|int8`); `precision` is
    /// then the base precision of everything else.
    pub quant: Option<QuantPlan>,
    /// Adds `calibration.<linear>` outputs `[batch]`: the input amax of
    /// every linear of this layer set (what `--calibrate` records).
    pub calibration_taps: Option<QuantLayers>,
}

/// ORIG computes the sinusoid frequencies in float64.
fn sinusoid_freqs(freq_dim: u32) -> Vec<f32> {
    let half = freq_dim / 2;
    (0..half)
        .map(|i| 10000f64.powf(-(i as f64) / half as f64) as f32)
        .collect()
}

/// Cos/sin tables `[tokens, head_dim/2]` of the 3-D RoPE (§3.6), computed in
/// float64 and rounded once, as ORIG does. Pair `j` of the head belongs to
/// the t, h or w axis by the contiguous split of [`DitConfig::rope_axes`].
pub fn rope_tables(cfg: &DitConfig, grid: (u32, u32, u32)) -> (Vec<f32>, Vec<f32>) {
    let axes = cfg.rope_axes();
    // (axis, frequency) for each rotation pair, in head order t, h, w.
    let mut pairs = Vec::new();
    for (axis, &dims) in axes.iter().enumerate() {
        for j in 0..dims / 2 {
            let freq = 10000f64.powf(-(2.0 * j as f64) / dims as f64);
            pairs.push((axis, freq));
        }
    }
    let (f, h, w) = grid;
    let n = (f * h * w) as usize;
    let mut cos = Vec::with_capacity(n * pairs.len());
    let mut sin = Vec::with_capacity(n * pairs.len());
    for fi in 0..f {
        for hi in 0..h {
            for wi in 0..w {
                let pos = [fi as f64, hi as f64, wi as f64];
                for &(axis, freq) in &pairs {
                    let angle = pos[axis] * freq;
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
    }
    (cos, sin)
}

pub(crate) struct Dit<'a, 'b, 'i> {
    pub(crate) b: &'a mut GraphBuilder<'i>,
    w: Weights<'b>,
    pub(crate) cfg: &'a DitConfig,
    /// Compute dtype of the matrix work.
    pub(crate) c: DType,
    eps: f32,
    ones_d: Value,
    one: Value,
    quant: Option<QuantPlan>,
    taps: Option<QuantLayers>,
    /// Calibration taps built so far: (linear weight path, amax `[b]`).
    tapped: Vec<(String, Value)>,
}

pub(crate) const F32: DType = DType::Float32;

impl Dit<'_, '_, '_> {
    /// A float32 parameter (norm weights, modulation tables).
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<Value> {
        layers::param(self.b, &self.w, name, shape)
    }

    /// `x · Wᵀ + b` in `store` precision (output in `store`).
    pub(crate) fn linear(
        &mut self,
        prefix: &str,
        x: &Value,
        inf: u32,
        outf: u32,
        store: DType,
    ) -> Result<Value> {
        layers::linear(self.b, &self.w, prefix, x, inf, outf, store, true)
    }

    /// A linear of a transformer block: quantized when the plan covers it
    /// (output in the base type or float32), else in the compute dtype;
    /// tapped for calibration when asked.
    fn block_linear(&mut self, prefix: &str, x: &Value, inf: u32, outf: u32) -> Result<Value> {
        let full = self.w.path(prefix);
        if self.taps.is_some_and(|t| t.covers(&full)) {
            let amax = self.b.scoped(&full, |b| Ok(quant::amax_tap(b, x, 3)))?;
            self.tapped.push((full.clone(), amax));
        }
        match QuantPlan::covering(self.quant.as_ref(), &full) {
            Some(plan) => {
                let base = self.c;
                quant::linear(self.b, &self.w, prefix, x, (inf, outf), base, plan)
            }
            None => self.linear(prefix, x, inf, outf, self.c),
        }
    }

    /// Linear layer followed by the full-width RMSNorm `norm`, in float32.
    fn linear_rms(&mut self, lin: &str, norm: &str, x: &Value, inf: u32) -> Result<Value> {
        let d = self.cfg.dim;
        let y = self.block_linear(lin, x, inf, d)?;
        let scale = self.param(&format!("{norm}.weight"), &[d as usize])?;
        let eps = self.eps;
        self.b.scoped(norm, |b| {
            let y = b.cast(&y, F32);
            Ok(b.rms_norm(&y, &scale, eps))
        })
    }

    /// `LN(x)·(1 + scale) + shift` in float32, LN without affine parameters.
    fn modulated_norm(
        &mut self,
        scope: &str,
        x: &Value,
        shift: &Value,
        scale: &Value,
    ) -> Result<Value> {
        let (ones, one, eps) = (self.ones_d.clone(), self.one.clone(), self.eps);
        self.b.scoped(scope, |b| {
            let h = b.layer_norm(x, &ones, None, eps);
            let s1 = b.add(scale, &one);
            let h = b.mul(&h, &s1);
            Ok(b.add(&h, shift))
        })
    }

    fn self_attn(&mut self, p: &str, h: &Value, rope: &(Value, Value, Value)) -> Result<Value> {
        let (d, heads, c) = (self.cfg.dim, self.cfg.num_heads, self.c);
        let hd = self.cfg.head_dim();
        let q = self.linear_rms(&format!("{p}.q"), &format!("{p}.norm_q"), h, d)?;
        let k = self.linear_rms(&format!("{p}.k"), &format!("{p}.norm_k"), h, d)?;
        let v = self.block_linear(&format!("{p}.v"), h, d, d)?;
        let v = self.b.cast(&v, c);
        let b = &mut *self.b;
        let o = b.scoped(p, |b| {
            // [b, n, heads·d_h]: RoPE per head on the 3-D layout, in float32.
            let q = b.rotary(&q, &rope.0, &rope.1, &rope.2, heads);
            let k = b.rotary(&k, &rope.0, &rope.1, &rope.2, heads);
            let q = b.cast(&q, c);
            let k = b.cast(&k, c);
            Ok(b.sdpa(&q, &k, &v, heads, hd))
        })?;
        self.block_linear(&format!("{p}.o"), &o, d, d)
    }

    fn cross_attn(
        &mut self,
        p: &str,
        h: &Value,
        ctx: &Value,
        img: Option<&Value>,
    ) -> Result<Value> {
        let (d, heads, c) = (self.cfg.dim, self.cfg.num_heads, self.c);
        let hd = self.cfg.head_dim();
        let q = self.linear_rms(&format!("{p}.q"), &format!("{p}.norm_q"), h, d)?;
        let k = self.linear_rms(&format!("{p}.k"), &format!("{p}.norm_k"), ctx, d)?;
        let v = self.block_linear(&format!("{p}.v"), ctx, d, d)?;
        let v = self.b.cast(&v, c);
        let mut o = self.b.scoped(p, |b| {
            let q = b.cast(&q, c);
            let k = b.cast(&k, c);
            Ok(b.sdpa_cross(&q, &k, &v, heads, hd))
        })?;
        if let Some(img) = img {
            let ki = self.linear_rms(&format!("{p}.k_img"), &format!("{p}.norm_k_img"), img, d)?;
            let vi = self.block_linear(&format!("{p}.v_img"), img, d, d)?;
            let vi = self.b.cast(&vi, c);
            o = self.b.scoped(p, |b| {
                let q = b.cast(&q, c);
                let ki = b.cast(&ki, c);
                let oi = b.sdpa_cross(&q, &ki, &vi, heads, hd);
                // The two results are summed before the shared projection.
                Ok(b.add(&o, &oi))
            })?;
        }
        self.block_linear(&format!("{p}.o"), &o, d, d)
    }
}

pub(crate) type Debug = Vec<(String, Value, Vec<i64>)>;

/// The RoPE tables and position ids of one graph.
pub(crate) struct Rope(Value, Value, Value);

impl Dit<'_, '_, '_> {
    pub(crate) fn new<'a, 'b, 'i>(
        b: &'a mut GraphBuilder<'i>,
        w: Weights<'b>,
        cfg: &'a DitConfig,
        c: DType,
        quant: Option<QuantPlan>,
        taps: Option<QuantLayers>,
    ) -> Result<Dit<'a, 'b, 'i>> {
        let d = cfg.dim;
        let ones_d = b.const_f32("norm_ones", &[d as i64], &vec![1.0; d as usize], F32)?;
        let one = b.scalar(1.0, F32);
        Ok(Dit {
            b,
            w,
            cfg,
            c,
            eps: cfg.eps as f32,
            ones_d,
            one,
            quant,
            taps,
            tapped: Vec::new(),
        })
    }

    /// The builder of a whole DiT graph: `opts`' precision and
    /// quantization, and its calibration taps when asked.
    pub(crate) fn whole_graph<'a, 'b, 'i>(
        b: &'a mut GraphBuilder<'i>,
        w: Weights<'b>,
        cfg: &'a DitConfig,
        opts: &DitOptions,
    ) -> Result<Dit<'a, 'b, 'i>> {
        Dit::new(
            b,
            w,
            cfg,
            opts.precision.compute_dtype(),
            opts.quant.clone(),
            opts.calibration_taps,
        )
    }

    /// The whole graph's front: the patch embedding `x [b, n, d]`, the
    /// time embedding `e` and modulation input `e0`, the text context
    /// `[b, L, d]`; `(n, d, L)` size the debug outputs.
    pub(crate) fn inputs(
        &mut self,
        hidden: &Value,
        timestep: &Value,
        text: &Value,
        (n, dd, l): (i64, i64, i64),
        debug: &mut Debug,
    ) -> Result<(Value, Value, Value, Value)> {
        let x = self.embed(hidden)?;
        debug.push(("patch_embedding".into(), x.clone(), vec![n, dd]));
        let (e, e0) = self.time(timestep, debug)?;
        let ctx = self.text_context(text)?;
        debug.push(("text_context".into(), ctx.clone(), vec![l, dd]));
        Ok((x, e, e0, ctx))
    }

    /// The whole graph's outputs: `noise_pred`, the debug intermediates
    /// when asked, and the calibration taps built on the way.
    pub(crate) fn finish(
        mut self,
        contract: &NetworkContract,
        noise: &Value,
        debug: Debug,
        debug_outputs: bool,
    ) {
        let tapped = std::mem::take(&mut self.tapped);
        emit_outputs(self.b, contract, noise, debug, debug_outputs);
        emit_taps(self.b, contract, tapped);
    }

    /// Patch embedding (Conv3d, kernel = stride = (1, 2, 2)) → `[b, n, d]`
    /// float32.
    pub(crate) fn embed(&mut self, hidden: &Value) -> Result<Value> {
        self.patch_embed("patch_embedding", hidden, self.cfg.in_dim)
    }

    /// A patch embedding `prefix` of `in_dim` channels (the latent's, or
    /// VACE's context) → `[b, n, d]` float32.
    pub(crate) fn patch_embed(
        &mut self,
        prefix: &str,
        hidden: &Value,
        in_dim: u32,
    ) -> Result<Value> {
        let (d, c) = (self.cfg.dim, self.c);
        let [pt, ph, pw] = self.cfg.patch_size.map(|v| v as i64);
        let (wn, wt) = self.w.get(
            &format!("{prefix}.weight"),
            &[
                d as usize,
                in_dim as usize,
                pt as usize,
                ph as usize,
                pw as usize,
            ],
        )?;
        let (bn, bt) = self.w.get(&format!("{prefix}.bias"), &[d as usize])?;
        self.b.scoped(prefix, |b| {
            let wv = b.weight(&wn, &wt, c, false)?;
            let bv = b.weight(&bn, &bt, c, false)?;
            let x = b.cast(hidden, c);
            let x = b.conv(&x, &wv, Some(&bv), &[pt, ph, pw], &[pt, ph, pw], &[0; 6]); // [b, d, F_p, H_p, W_p]
            let x = b.reshape(&x, &[0, d as i64, -1]); // [b, d, n]
            let x = b.transpose(&x, &[0, 2, 1]); // [b, n, d]
            Ok(b.cast(&x, F32))
        })
    }

    /// Time embedding, all float32: sinusoid (cos half first) → MLP → the
    /// six modulation vectors. Returns `e [b, d]` and `e0 [b, 6, d]`.
    pub(crate) fn time(&mut self, timestep: &Value, debug: &mut Debug) -> Result<(Value, Value)> {
        let (d, dd) = (self.cfg.dim, self.cfg.dim as i64);
        let freqs = sinusoid_freqs(self.cfg.freq_dim);
        let sinusoid = self.b.scoped("time_embedding", |b| {
            let f = b.const_f32("freqs", &[1, freqs.len() as i64], &freqs, F32)?;
            let t = b.unsqueeze(timestep, &[1]); // [b, 1]
            let args = b.mul(&t, &f); // [b, freq_dim/2]
            let (co, si) = (b.cos(&args), b.sin(&args));
            Ok(b.concat(&[&co, &si], 1)) // [b, freq_dim]
        })?;
        let e = self.linear("time_embedding.0", &sinusoid, self.cfg.freq_dim, d, F32)?;
        let e = self.b.scoped("time_embedding.1", |b| Ok(b.silu(&e)))?;
        let e = self.linear("time_embedding.2", &e, d, d, F32)?; // [b, d]
        let s = self.b.scoped("time_projection.0", |b| Ok(b.silu(&e)))?;
        let e0 = self.linear("time_projection.1", &s, d, 6 * d, F32)?; // [b, 6d]
        debug.push(("temb".into(), e.clone(), vec![dd]));
        debug.push(("timestep_proj".into(), e0.clone(), vec![6 * dd]));
        let e0 = self
            .b
            .scoped("time_projection", |b| Ok(b.reshape(&e0, &[0, 6, dd])))?; // [b, 6, d]
        Ok((e, e0))
    }

    /// Text embedding: Linear → GELU(tanh) → Linear, all L rows kept (§3.3);
    /// `[b, L, d]` in the compute dtype.
    pub(crate) fn text_context(&mut self, text: &Value) -> Result<Value> {
        let d = self.cfg.dim;
        let ctx = self.linear("text_embedding.0", text, self.cfg.text_dim, d, self.c)?;
        let ctx = self
            .b
            .scoped("text_embedding.1", |b| Ok(b.gelu(&ctx, true)))?;
        self.linear("text_embedding.2", &ctx, d, d, self.c) // [b, L, d]
    }

    /// Image embedding (I2V): LN → Linear → GELU(erf) → Linear → LN (§3.3);
    /// `[b, 257, d]` float32. FLF2V first adds the learned position
    /// embedding `img_emb.emb_pos [1, 514, image_dim]` to the two images'
    /// tokens (§13), giving `[b, 514, d]`.
    fn image_context(&mut self, image: &Value, debug: &mut Debug) -> Result<Value> {
        let (d, c) = (self.cfg.dim, self.c);
        let id = self.cfg.image_dim.unwrap_or(1280);
        let image = if self.cfg.task == Task::Flf2v {
            let tokens = self.cfg.image_context_tokens();
            let pos = self.param("img_emb.emb_pos", &[1, tokens as usize, id as usize])?;
            let y = self.b.scoped("img_emb", |b| Ok(b.add(image, &pos)))?;
            debug.push((
                "image_tokens_with_pos".into(),
                y.clone(),
                vec![tokens as i64, id as i64],
            ));
            y
        } else {
            image.clone()
        };
        let image = &image;
        let g0 = self.param("img_emb.proj.0.weight", &[id as usize])?;
        let b0 = self.param("img_emb.proj.0.bias", &[id as usize])?;
        let y = self.b.scoped("img_emb.proj.0", |b| {
            Ok(b.layer_norm(image, &g0, Some(&b0), 1e-5))
        })?;
        let y = self.linear("img_emb.proj.1", &y, id, id, c)?;
        let y = self.b.scoped("img_emb.proj.2", |b| Ok(b.gelu(&y, false)))?;
        let y = self.linear("img_emb.proj.3", &y, id, d, c)?;
        let g4 = self.param("img_emb.proj.4.weight", &[d as usize])?;
        let b4 = self.param("img_emb.proj.4.bias", &[d as usize])?;
        self.b.scoped("img_emb.proj.4", |b| {
            let y = b.cast(&y, F32);
            Ok(b.layer_norm(&y, &g4, Some(&b4), 1e-5)) // [b, 257, d]
        })
    }

    /// RoPE tables for the profile's grid and the position ids `[b, n]` of
    /// the tokens `x`.
    pub(crate) fn rope(&mut self, grid: (u32, u32, u32), x: &Value) -> Result<Rope> {
        let (cos, sin) = rope_tables(self.cfg, grid);
        let n_tokens = (grid.0 * grid.1 * grid.2) as i64;
        let half = (self.cfg.head_dim() / 2) as i64;
        self.b.scoped("rope", |b| {
            let cos = b.const_f32("cos", &[n_tokens, half], &cos, F32)?;
            let sin = b.const_f32("sin", &[n_tokens, half], &sin, F32)?;
            let ids: Vec<i64> = (0..n_tokens).collect();
            let ids = b.const_i64_tensor("rope.positions", &[1, n_tokens], &ids)?;
            let bn = b.shape_of(x, 0, 2); // [b, n]
            let pos = b.expand(&ids, &bn);
            Ok(Rope(cos, sin, pos))
        })
    }

    /// Transformer block `i` on the residual stream `x` (float32).
    pub(crate) fn block(
        &mut self,
        i: u32,
        x: Value,
        e0: &Value,
        ctx: &Value,
        img_ctx: Option<&Value>,
        rope: &Rope,
    ) -> Result<Value> {
        self.block_at(&format!("blocks.{i}"), x, e0, ctx, img_ctx, rope)
    }

    /// The transformer block whose weights live under `p` (`blocks.3`, or
    /// a VACE block `vace_blocks.1`, which has the same structure).
    pub(crate) fn block_at(
        &mut self,
        p: &str,
        x: Value,
        e0: &Value,
        ctx: &Value,
        img_ctx: Option<&Value>,
        rope: &Rope,
    ) -> Result<Value> {
        let d = self.cfg.dim;
        let p = p.to_string();
        let m = self.param(&format!("{p}.modulation"), &[1, 6, d as usize])?;
        let mods = self.b.scoped(&p, |b| {
            let mods = b.add(&m, e0); // [b, 6, d]
            Ok(b.split(&mods, 1, 6)) // 6 × [b, 1, d]
        })?;
        let [s1, c1, g1, s2, c2, g2] = <[Value; 6]>::try_from(mods).expect("split gives 6");

        // Self-attention with modulation and gate.
        let h = self.modulated_norm(&format!("{p}.norm1"), &x, &s1, &c1)?;
        let rope3 = (rope.0.clone(), rope.1.clone(), rope.2.clone());
        let y = self.self_attn(&format!("{p}.self_attn"), &h, &rope3)?;
        let x = self.b.scoped(&p, |b| {
            let y = b.cast(&y, F32);
            let y = b.mul(&y, &g1);
            Ok(b.add(&x, &y))
        })?;

        // Cross-attention: affine LN (`norm3`), no modulation, no gate.
        let g3 = self.param(&format!("{p}.norm3.weight"), &[d as usize])?;
        let b3 = self.param(&format!("{p}.norm3.bias"), &[d as usize])?;
        let eps = self.cfg.eps as f32;
        let h = self.b.scoped(&format!("{p}.norm3"), |b| {
            Ok(b.layer_norm(&x, &g3, Some(&b3), eps))
        })?;
        let y = self.cross_attn(&format!("{p}.cross_attn"), &h, ctx, img_ctx)?;
        let x = self.b.scoped(&p, |b| {
            let y = b.cast(&y, F32);
            Ok(b.add(&x, &y))
        })?;

        // FFN with modulation and gate.
        let h = self.modulated_norm(&format!("{p}.norm2"), &x, &s2, &c2)?;
        let y = self.block_linear(&format!("{p}.ffn.0"), &h, d, self.cfg.ffn_dim)?;
        let y = self.b.cast(&y, self.c);
        let y = self
            .b
            .scoped(&format!("{p}.ffn.1"), |b| Ok(b.gelu(&y, true)))?;
        let y = self.block_linear(&format!("{p}.ffn.2"), &y, self.cfg.ffn_dim, d)?;
        self.b.scoped(&p, |b| {
            let y = b.cast(&y, F32);
            let y = b.mul(&y, &g2);
            Ok(b.add(&x, &y))
        })
    }

    /// Head, float32: modulation from `e` (before the projection), the
    /// output projection `[b, n, 64]` and the unpatchify to `[b, c, F', H',
    /// W']`.
    pub(crate) fn head(
        &mut self,
        x: &Value,
        e: &Value,
        grid: (u32, u32, u32),
        debug: &mut Debug,
    ) -> Result<Value> {
        let (d, out_dim) = (self.cfg.dim, self.cfg.out_dim);
        let [pt, ph, pw] = self.cfg.patch_size.map(|v| v as i64);
        let (fp, hp, wp) = grid;
        let mh = self.param("head.modulation", &[1, 2, d as usize])?;
        let (shift, scale) = self.b.scoped("head", |b| {
            let e1 = b.unsqueeze(e, &[1]); // [b, 1, d]
            let m = b.add(&mh, &e1); // [b, 2, d]
            let mut parts = b.split(&m, 1, 2);
            let scale = parts.pop().expect("two parts");
            Ok((parts.pop().expect("two parts"), scale))
        })?;
        let h = self.modulated_norm("head.norm", x, &shift, &scale)?;
        let patch_out = (pt * ph * pw) as u32 * out_dim;
        let out = self.linear("head.head", &h, d, patch_out, F32)?; // [b, n, 64]
        let n = (fp * hp * wp) as i64;
        debug.push(("proj_out".into(), out.clone(), vec![n, patch_out as i64]));

        // Unpatchify: feature ((p·2 + q)·2 + r)·16 + c of token (f, h, w) goes to
        // (c, f·1 + p, h·2 + q, w·2 + r) (§3.7).
        self.b.scoped("unpatchify", |b| {
            let y = b.reshape(
                &out,
                &[0, fp as i64, hp as i64, wp as i64, ph, pw, out_dim as i64],
            ); // [b, F_p, H_p, W_p, 2, 2, c]
            let y = b.transpose(&y, &[0, 6, 1, 2, 4, 3, 5]); // [b, c, F_p, H_p, 2, W_p, 2]
            Ok(b.reshape(
                &y,
                &[0, out_dim as i64, fp as i64, hp as i64 * ph, wp as i64 * pw],
            )) // [b, c, F', H', W']
        })
    }
}

pub(crate) fn declare_inputs(b: &mut GraphBuilder<'_>, contract: &NetworkContract) -> Vec<Value> {
    contract
        .inputs
        .iter()
        .map(|spec| b.input(&spec.name, spec.dtype, &io_dims(&spec.shape)))
        .collect()
}

pub(crate) fn declare_outputs(
    b: &mut GraphBuilder<'_>,
    contract: &NetworkContract,
    values: &[Value],
) {
    for (spec, v) in contract.outputs.iter().zip(values) {
        let v = b.cast(v, F32);
        b.output(&v, &spec.name, Some(&io_dims(&spec.shape)));
    }
}

/// Builds the whole DiT graph into `b`, reading weights through `w`.
pub fn build(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &DitConfig,
    profile: &Profile,
    opts: &DitOptions,
) -> Result<()> {
    cfg.validate().map_err(Error::Invalid)?;
    if cfg.task == Task::Vace {
        return crate::vace::build(b, w, cfg, profile, opts);
    }
    let contract = NetworkContract::dit(cfg, profile).map_err(|e| Error::Invalid(e.to_string()))?;
    let grid = profile.patch_grid();
    let n = (grid.0 * grid.1 * grid.2) as i64;
    let inputs = declare_inputs(b, &contract);
    let (hidden, timestep, text) = (&inputs[0], &inputs[1], &inputs[2]);
    let image = inputs.get(3);
    let mut debug: Debug = Vec::new();
    let (dd, l) = (cfg.dim as i64, profile.text_len as i64);
    let mut dit = Dit::whole_graph(b, w, cfg, opts)?;

    let (mut x, e, e0, ctx) = dit.inputs(hidden, timestep, text, (n, dd, l), &mut debug)?;
    let img_ctx = match image {
        Some(image) if cfg.task.has_image() => {
            let y = dit.image_context(image, &mut debug)?;
            debug.push((
                "image_context".into(),
                y.clone(),
                vec![cfg.image_context_tokens() as i64, dd],
            ));
            let c = dit.c;
            Some(dit.b.scoped("img_emb", |b| Ok(b.cast(&y, c)))?)
        }
        _ => None,
    };
    let rope = dit.rope(grid, &x)?;
    for i in 0..cfg.num_layers {
        x = dit.block(i, x, &e0, &ctx, img_ctx.as_ref(), &rope)?;
        debug.push((format!("block_{i}_out"), x.clone(), vec![n, dd]));
    }
    let noise = dit.head(&x, &e, grid, &mut debug)?;
    dit.finish(&contract, &noise, debug, opts.debug_outputs);
    Ok(())
}

/// The calibration taps as `calibration.<linear>` outputs `[batch]`.
fn emit_taps(b: &mut GraphBuilder<'_>, contract: &NetworkContract, tapped: Vec<(String, Value)>) {
    let batch = io_dims(&contract.outputs[0].shape)[0].clone();
    for (prefix, amax) in tapped {
        b.output(
            &amax,
            &quant::tap_output(&prefix),
            Some(std::slice::from_ref(&batch)),
        );
    }
}

/// The whole graph's `noise_pred` and, with `debug_outputs`, every
/// intermediate as a float32 `intermediate.<name>` output.
pub(crate) fn emit_outputs(
    b: &mut GraphBuilder<'_>,
    contract: &NetworkContract,
    noise: &Value,
    debug: Debug,
    debug_outputs: bool,
) {
    let out_spec = &contract.outputs[0];
    b.output(noise, &out_spec.name, Some(&io_dims(&out_spec.shape)));
    if debug_outputs {
        let batch = io_dims(&out_spec.shape)[0].clone();
        for (name, v, rest) in debug {
            let v = b.cast(&v, F32);
            let mut dims = vec![batch.clone()];
            dims.extend(rest.into_iter().map(IoDim::Fixed));
            b.output(&v, &format!("intermediate.{name}"), Some(&dims));
        }
    }
}

/// Builds one stage graph of the DiT ([`NetworkContract::dit_stages`]) into
/// `b`: the same nodes, under the same names, as the whole graph, with
/// float32 at the stage's boundary.
pub fn build_stage(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &DitConfig,
    profile: &Profile,
    precision: Precision,
    stage: DitStage,
) -> Result<()> {
    let opts = DitOptions {
        precision,
        ..Default::default()
    };
    build_stage_with(b, w, cfg, profile, &opts, stage)
}

/// [`build_stage`] with the whole graph's options (quantization; debug
/// outputs and calibration taps belong to the whole graph only).
pub fn build_stage_with(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &DitConfig,
    profile: &Profile,
    opts: &DitOptions,
    stage: DitStage,
) -> Result<()> {
    let precision = opts.precision;
    cfg.validate().map_err(Error::Invalid)?;
    if cfg.task == Task::Vace
        && matches!(
            stage,
            DitStage::Vace | DitStage::BlockFirst | DitStage::BlockRest
        )
    {
        return crate::vace::build_stage(b, w, cfg, profile, opts, stage);
    }
    let stages =
        NetworkContract::dit_stages(cfg, profile).map_err(|e| Error::Invalid(e.to_string()))?;
    let contract = stages
        .into_iter()
        .find(|(s, _)| *s == stage)
        .map(|(_, c)| c)
        .ok_or_else(|| Error::Invalid(format!("this DiT has no stage {stage}")))?;
    let grid = profile.patch_grid();
    let inputs = declare_inputs(b, &contract);
    let mut debug: Debug = Vec::new();
    let mut dit = Dit::new(
        b,
        w,
        cfg,
        precision.compute_dtype(),
        opts.quant.clone(),
        None,
    )?;
    let i2v = cfg.task.has_image();
    let outputs = match stage {
        DitStage::Context => {
            let mut out = vec![dit.text_context(&inputs[0])?];
            if i2v {
                out.push(dit.image_context(&inputs[1], &mut debug)?);
            }
            out
        }
        DitStage::Time => {
            let (e, e0) = dit.time(&inputs[0], &mut debug)?;
            vec![e, e0]
        }
        DitStage::Embed => {
            let hidden = if i2v {
                // noise ‖ y along channels: [b, 16 + 20, F', H', W'].
                dit.b
                    .scoped("condition", |b| Ok(b.concat(&[&inputs[0], &inputs[1]], 1)))?
            } else {
                inputs[0].clone()
            };
            vec![dit.embed(&hidden)?]
        }
        DitStage::BlockFirst | DitStage::BlockRest => {
            let c = dit.c;
            let ctx = dit
                .b
                .scoped("text_embedding", |b| Ok(b.cast(&inputs[2], c)))?;
            let img = if i2v {
                Some(dit.b.scoped("img_emb", |b| Ok(b.cast(&inputs[3], c)))?)
            } else {
                None
            };
            let rope = dit.rope(grid, &inputs[0])?;
            let blocks = if stage == DitStage::BlockFirst {
                0..1
            } else {
                1..cfg.num_layers
            };
            let mut x = inputs[0].clone();
            for i in blocks {
                x = dit.block(i, x, &inputs[1], &ctx, img.as_ref(), &rope)?;
            }
            vec![x]
        }
        DitStage::Head => vec![dit.head(&inputs[0], &inputs[1], grid, &mut debug)?],
        DitStage::Vace => {
            return Err(Error::Invalid(format!(
                "a {} DiT has no vace stage",
                cfg.task.name()
            )));
        }
    };
    declare_outputs(dit.b, &contract, &outputs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_tables_follow_axis_split() {
        let mut cfg = DitConfig::t2v_1_3b();
        cfg.dim = 24;
        cfg.num_heads = 2; // head dim 12 → axes 4/4/4 → 2 pairs each
        let (cos, sin) = rope_tables(&cfg, (2, 3, 4));
        assert_eq!(cos.len(), 24 * 6);
        // Token (f=1, h=2, w=3) is index (1·3 + 2)·4 + 3 = 23.
        let row = &sin[23 * 6..24 * 6];
        let expect = [
            (1.0f64).sin(),
            (1.0f64 * 0.01).sin(),
            (2.0f64).sin(),
            (2.0f64 * 0.01).sin(),
            (3.0f64).sin(),
            (3.0f64 * 0.01).sin(),
        ];
        for (a, b) in row.iter().zip(expect) {
            assert!((*a as f64 - b).abs() < 1e-7, "{a} vs {b}");
        }
        assert_eq!(cos[0], 1.0);
    }

    #[test]
    fn sinusoid_starts_at_one() {
        let f = sinusoid_freqs(256);
        assert_eq!(f.len(), 128);
        assert_eq!(f[0], 1.0);
        assert!((f[64] as f64 - 0.01).abs() < 1e-9);
    }
}

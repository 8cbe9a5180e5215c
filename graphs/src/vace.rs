//! The VACE diffusion transformer (VACE-1.3B/14B) as a typed ONNX graph.
//!
//! Mirrors `wan/modules/vace_model.py::VaceWanModel` of the official
//! repository (`docs/WAN.md` §14): the T2V DiT of [`crate::dit`] plus
//!
//! * `vace_patch_embedding`, a patch embedding of the 96-channel context
//!   (`control_hidden_states`: 16 inactive-latent, 16 reactive-latent and
//!   64 mask channels over the reference and video latent frames);
//! * VACE blocks `vace_blocks.{j}`, transformer blocks of the main blocks'
//!   structure on their own stream `c`: block 0 starts from
//!   `before_proj(c) + x` (x = the patch-embedded latents), and each block
//!   `j` emits the hint `after_proj(c)`;
//! * after main block `vace_layers[j]`, `x = x + hint_j · scale_j`, with
//!   `scale = control_hidden_states_scale [n_vace_layers]` (the official
//!   `context_scale`, one value per hint here as in diffusers).
//!
//! The hints depend only on the step's patch-embedded latents, the
//! modulation and the text context, so the stage graphs compute them in a
//! `vace` stage between `embed` and the block stages, which take them
//! stacked (`hints [B, n_vace_layers, n, d]`) with the scales.
//!
//! Precision as the T2V DiT: the patch embedding, `before_proj`,
//! `after_proj` and the blocks' matrix work in the compute type; the VACE
//! stream, the hints and their scaled sum stay float32.

use wanrt_core::{DitConfig, DitStage, NetworkContract, Profile};

use crate::builder::{GraphBuilder, Value};
use crate::dit::{Debug, Dit, Rope, declare_inputs, declare_outputs};
use crate::dit::{DitOptions, F32};
use crate::error::{Error, Result};
use crate::weights::Weights;

impl Dit<'_, '_, '_> {
    /// The VACE branch: the context's patch embedding and every VACE block,
    /// returning the hints (`[b, n, d]` float32 each, in `vace_layers`
    /// order).
    #[allow(clippy::too_many_arguments)]
    fn vace_hints(
        &mut self,
        control: &Value,
        x: &Value,
        e0: &Value,
        ctx: &Value,
        rope: &Rope,
        n: i64,
        debug: &mut Debug,
    ) -> Result<Vec<Value>> {
        let (d, dd) = (self.cfg.dim, self.cfg.dim as i64);
        let c0 = self.patch_embed("vace_patch_embedding", control, self.cfg.vace_in_dim)?; // [b, n, d]
        debug.push(("vace_patch_embedding".into(), c0.clone(), vec![n, dd]));
        let c = self.c;
        let p = self.linear("vace_blocks.0.before_proj", &c0, d, d, c)?;
        let p = self
            .b
            .scoped("vace_blocks.0.before_proj", |b| Ok(b.cast(&p, F32)))?;
        debug.push(("vace_block_0_proj_in".into(), p.clone(), vec![n, dd]));
        let mut stream = self.b.scoped("vace_blocks.0", |b| Ok(b.add(&p, x)))?;
        let mut hints = Vec::with_capacity(self.cfg.vace_layers.len());
        for j in 0..self.cfg.vace_layers.len() {
            let prefix = format!("vace_blocks.{j}");
            stream = self.block_at(&prefix, stream, e0, ctx, None, rope)?;
            debug.push((format!("vace_block_{j}_out"), stream.clone(), vec![n, dd]));
            let after = format!("{prefix}.after_proj");
            let h = self.linear(&after, &stream, d, d, c)?;
            let h = self.b.scoped(&after, |b| Ok(b.cast(&h, F32)))?;
            debug.push((format!("vace_hint_{j}"), h.clone(), vec![n, dd]));
            hints.push(h);
        }
        Ok(hints)
    }

    /// `x + hint · scale` after main block `i`, when `i` is in `vace_layers`.
    fn add_hint(&mut self, i: u32, x: Value, hints: &[Value], scales: &[Value]) -> Result<Value> {
        let Some(j) = self.cfg.vace_layers.iter().position(|&l| l == i) else {
            return Ok(x);
        };
        let (h, s) = (&hints[j], &scales[j]);
        self.b.scoped(&format!("blocks.{i}.vace_hint"), |b| {
            let h = b.mul(h, s); // [b, n, d] · [1]
            Ok(b.add(&x, &h))
        })
    }
}

/// The hint scales `[n]` as `n` one-element values.
fn split_scales(b: &mut GraphBuilder<'_>, scale: &Value, n: usize) -> Result<Vec<Value>> {
    b.scoped("control_hidden_states_scale", |b| Ok(b.split(scale, 0, n)))
}

/// Builds the whole VACE DiT graph into `b` (`dit::build` hands VACE
/// configs here).
pub fn build(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &DitConfig,
    profile: &Profile,
    opts: &DitOptions,
) -> Result<()> {
    let contract = NetworkContract::dit(cfg, profile).map_err(|e| Error::Invalid(e.to_string()))?;
    let grid = profile.patch_grid();
    let n = (grid.0 * grid.1 * grid.2) as i64;
    let inputs = declare_inputs(b, &contract);
    let [hidden, timestep, text, control, scale] = &inputs[..] else {
        return Err(Error::Invalid(format!(
            "the VACE DiT contract has {} inputs, expected 5",
            inputs.len()
        )));
    };
    let mut debug: Debug = Vec::new();
    let (dd, l) = (cfg.dim as i64, profile.text_len as i64);
    // The main and the VACE blocks' linears are quantized as the plan says
    // (`QuantLayers::covers`), and tapped for calibration when asked.
    let mut dit = Dit::whole_graph(b, w, cfg, opts)?;

    let (mut x, e, e0, ctx) = dit.inputs(hidden, timestep, text, (n, dd, l), &mut debug)?;
    let rope = dit.rope(grid, &x)?;
    let hints = dit.vace_hints(control, &x, &e0, &ctx, &rope, n, &mut debug)?;
    let scales = split_scales(dit.b, scale, hints.len())?;
    for i in 0..cfg.num_layers {
        x = dit.block(i, x, &e0, &ctx, None, &rope)?;
        if cfg.vace_layers.contains(&i) {
            debug.push((format!("block_{i}_pre_hint"), x.clone(), vec![n, dd]));
        }
        x = dit.add_hint(i, x, &hints, &scales)?;
        debug.push((format!("block_{i}_out"), x.clone(), vec![n, dd]));
    }
    let noise = dit.head(&x, &e, grid, &mut debug)?;
    dit.finish(&contract, &noise, debug, opts.debug_outputs);
    Ok(())
}

/// Builds the VACE-specific stage graphs: `vace` (the hints, stacked
/// `[B, n_vace_layers, n, d]`) and the block stages, which add them.
/// `context`, `time`, `embed` and `head` are the T2V stages.
pub fn build_stage(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &DitConfig,
    profile: &Profile,
    opts: &DitOptions,
    stage: DitStage,
) -> Result<()> {
    let stages =
        NetworkContract::dit_stages(cfg, profile).map_err(|e| Error::Invalid(e.to_string()))?;
    let contract = stages
        .into_iter()
        .find(|(s, _)| *s == stage)
        .map(|(_, c)| c)
        .ok_or_else(|| Error::Invalid(format!("this DiT has no stage {stage}")))?;
    let grid = profile.patch_grid();
    let (n, dd) = ((grid.0 * grid.1 * grid.2) as i64, cfg.dim as i64);
    let nv = cfg.vace_layers.len();
    let inputs = declare_inputs(b, &contract);
    let mut debug: Debug = Vec::new();
    let mut dit = Dit::new(
        b,
        w,
        cfg,
        opts.precision.compute_dtype(),
        opts.quant.clone(),
        None,
    )?;
    let c = dit.c;
    let outputs = match stage {
        DitStage::Vace => {
            // tokens, control_hidden_states, timestep_proj, context.
            let ctx = dit
                .b
                .scoped("text_embedding", |b| Ok(b.cast(&inputs[3], c)))?;
            let rope = dit.rope(grid, &inputs[0])?;
            let hints = dit.vace_hints(
                &inputs[1], &inputs[0], &inputs[2], &ctx, &rope, n, &mut debug,
            )?;
            let stacked = dit.b.scoped("vace_hints", |b| {
                let parts: Vec<Value> = hints.iter().map(|h| b.unsqueeze(h, &[1])).collect(); // [b, 1, n, d] each
                let refs: Vec<&Value> = parts.iter().collect();
                Ok(b.concat(&refs, 1)) // [b, n_vace, n, d]
            })?;
            vec![stacked]
        }
        DitStage::BlockFirst | DitStage::BlockRest => {
            // x, timestep_proj, context, hints, control_hidden_states_scale.
            let ctx = dit
                .b
                .scoped("text_embedding", |b| Ok(b.cast(&inputs[2], c)))?;
            let hints = dit.b.scoped("vace_hints", |b| {
                Ok(b.split(&inputs[3], 1, nv)
                    .iter()
                    .map(|h| b.reshape(h, &[0, n, dd])) // [b, n, d]
                    .collect::<Vec<_>>())
            })?;
            let scales = split_scales(dit.b, &inputs[4], nv)?;
            let rope = dit.rope(grid, &inputs[0])?;
            let blocks = if stage == DitStage::BlockFirst {
                0..1
            } else {
                1..cfg.num_layers
            };
            let mut x = inputs[0].clone();
            for i in blocks {
                x = dit.block(i, x, &inputs[1], &ctx, None, &rope)?;
                x = dit.add_hint(i, x, &hints, &scales)?;
            }
            vec![x]
        }
        other => {
            return Err(Error::Invalid(format!(
                "the {other} stage of a VACE DiT is the T2V one (dit::build_stage)"
            )));
        }
    };
    declare_outputs(dit.b, &contract, &outputs);
    Ok(())
}

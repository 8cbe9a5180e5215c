//! The CLIP ViT visual tower Wan2.1 conditions I2V on, as a typed ONNX graph.
//!
//! Mirrors `wan/modules/clip.py::VisionTransformer` of the official
//! repository as `CLIPModel` calls it (`use_31_block=True`, `docs/WAN.md`
//! §2.3), which equals transformers' `CLIPVisionModel(...,
//! output_hidden_states=True).hidden_states[-2]`: Conv2d patch embedding
//! (kernel = stride = patch, no bias) → class token prepended → learned
//! positions added → `pre_norm` LayerNorm → the first `used_layers` pre-LN
//! blocks (`x += proj(Attn(to_qkv(LN1(x))))`, `x += mlp.2(GELU(mlp.0(LN2(x))))`,
//! GELU exact, attention scale 1/√head_dim). The last block, `post_norm` and
//! `head` are not applied: Wan uses the penultimate block's tokens.
//!
//! Contract ([`NetworkContract::image_encoder`]): input `pixel_values [B, 3,
//! S, S]` (already CLIP-normalised; the resize and normalisation are the
//! runtime's), output `image_embeds [B, tokens, width]` (`[B, 257, 1280]`
//! for ViT-H/14 at 224); float32 at the boundary for every precision.
//!
//! Precision map: the official code runs the whole tower in fp16 (weights
//! cast to fp16, fp16 autocast), with its `LayerNorm` computing in float32
//! and casting back, and an fp16 residual stream. With `bf16`/`fp16` this
//! graph runs the matrix work in the half type — the patch-embedding Conv,
//! the fused `to_qkv` Linear, attention, `proj`, and the MLP (`mlp.0`, GELU,
//! `mlp.2`) — and keeps float32 islands for the class and position
//! embeddings, every LayerNorm (`pre_norm`, `norm1`, `norm2`), and the
//! residual stream (each half-type branch output is cast to float32 before
//! its residual add). Keeping the stream in float32 is one rounding per
//! block fewer than the reference, never more. `fp32` is float32
//! throughout.
//!
//! Weights are addressed by their original open-clip names
//! (`visual.transformer.3.attn.to_qkv.weight`), which also name the ONNX
//! initializers and node scopes (`visual.transformer.3.attn.to_qkv/MatMul`).
//! The fused `to_qkv` stays one GEMM; its output columns are split into q, k,
//! v (rows 0..W, W..2W, 2W..3W of the checkpoint's `[3W, W]` matrix). The
//! skipped last block is still fetched (shape-checked, not exported), so a
//! checkpoint whose depth disagrees with the config fails by tensor name
//! instead of silently running another block as "penultimate".

use wanrt_core::{ClipVisionConfig, DType, NetworkContract, Precision, Profile};

use crate::builder::{GraphBuilder, IoDim, Value};
use crate::error::{Error, Result};
use crate::layers::{self, io_dims};
use crate::weights::Weights;

/// Side of the square input of ViT-H/14 (`image_size`, §2.3).
pub const IMAGE_SIZE: u32 = 224;
/// Per-channel mean of the CLIP normalisation (`wan/modules/clip.py`,
/// `image_processor/preprocessor_config.json`; §5.1).
pub const MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// Per-channel standard deviation of the CLIP normalisation (§5.1).
pub const STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Options of an image-encoder export.
#[derive(Debug, Clone, Default)]
pub struct ClipOptions {
    pub precision: Precision,
    /// Adds `intermediate.embeddings` (after `pre_norm`) and
    /// `intermediate.block_{i}_out` as extra float32 outputs, for hunting
    /// numeric mismatches.
    pub debug_outputs: bool,
}

const F32: DType = DType::Float32;

/// The tensors of one block (leaf under `visual.transformer.{i}.`, shape).
fn block_tensors(cfg: &ClipVisionConfig) -> Vec<(&'static str, Vec<usize>)> {
    let (w, m) = (cfg.width as usize, cfg.mlp_dim as usize);
    vec![
        ("norm1.weight", vec![w]),
        ("norm1.bias", vec![w]),
        ("attn.to_qkv.weight", vec![3 * w, w]),
        ("attn.to_qkv.bias", vec![3 * w]),
        ("attn.proj.weight", vec![w, w]),
        ("attn.proj.bias", vec![w]),
        ("norm2.weight", vec![w]),
        ("norm2.bias", vec![w]),
        ("mlp.0.weight", vec![m, w]),
        ("mlp.0.bias", vec![m]),
        ("mlp.2.weight", vec![w, m]),
        ("mlp.2.bias", vec![w]),
    ]
}

/// Checks what [`build`] relies on beyond what the config parser checked.
fn validate(cfg: &ClipVisionConfig) -> Result<()> {
    let bad = |reason: String| Err(Error::Invalid(format!("CLIP vision config: {reason}")));
    if cfg.width == 0 || cfg.mlp_dim == 0 || cfg.heads == 0 {
        return bad("width, mlp_dim and heads must be positive".into());
    }
    if !cfg.width.is_multiple_of(cfg.heads) {
        return bad(format!(
            "width {} is not divisible by {} heads",
            cfg.width, cfg.heads
        ));
    }
    if cfg.patch_size == 0 || cfg.image_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size)
    {
        return bad(format!(
            "image_size {} is not a positive multiple of patch_size {}",
            cfg.image_size, cfg.patch_size
        ));
    }
    if cfg.used_layers == 0 || cfg.used_layers > cfg.layers {
        return bad(format!(
            "used_layers {} must be in 1..={} (layers)",
            cfg.used_layers, cfg.layers
        ));
    }
    if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
        return bad(format!("eps {} must be positive", cfg.eps));
    }
    Ok(())
}

struct Clip<'a, 'b, 'i> {
    b: &'a mut GraphBuilder<'i>,
    /// Weights under `visual.`.
    w: Weights<'b>,
    cfg: &'a ClipVisionConfig,
    /// Compute dtype of the matrix work.
    c: DType,
    eps: f32,
}

impl Clip<'_, '_, '_> {
    /// A float32 parameter (norm weights, class and position embeddings).
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<Value> {
        layers::param(self.b, &self.w, name, shape)
    }

    /// Affine LayerNorm `prefix` in float32 (input cast up if needed).
    fn layer_norm(&mut self, prefix: &str, x: &Value) -> Result<Value> {
        let wd = self.cfg.width as usize;
        let g = self.param(&format!("{prefix}.weight"), &[wd])?;
        let beta = self.param(&format!("{prefix}.bias"), &[wd])?;
        let eps = self.eps;
        let scope = self.w.path(prefix);
        self.b.scoped(&scope, |b| {
            let x = b.cast(x, F32);
            Ok(b.layer_norm(&x, &g, Some(&beta), eps))
        })
    }

    /// `x · Wᵀ + b` in the compute dtype (output in the compute dtype).
    fn linear(&mut self, prefix: &str, x: &Value, inf: u32, outf: u32) -> Result<Value> {
        layers::linear(self.b, &self.w, prefix, x, inf, outf, self.c, true)
    }

    /// One pre-LN block on the float32 stream `x`.
    fn block(&mut self, i: u32, x: Value) -> Result<Value> {
        let (wd, heads, m) = (self.cfg.width, self.cfg.heads, self.cfg.mlp_dim);
        let p = format!("transformer.{i}");
        let scope = self.w.path(&p);

        let h = self.layer_norm(&format!("{p}.norm1"), &x)?;
        let qkv = self.linear(&format!("{p}.attn.to_qkv"), &h, wd, 3 * wd)?; // [b, t, 3·w]
        let o = self.b.scoped(&format!("{scope}.attn"), |b| {
            // Columns of the fused output are q | k | v, each [b, t, heads·d].
            let mut parts = b.split(&qkv, 2, 3);
            let v = parts.pop().expect("split gives 3");
            let k = parts.pop().expect("split gives 3");
            let q = parts.pop().expect("split gives 3");
            Ok(b.attention(&q, &k, &v, heads)) // [b, t, heads·d], scale 1/√d
        })?;
        let o = self.linear(&format!("{p}.attn.proj"), &o, wd, wd)?;
        let x = self.b.scoped(&scope, |b| {
            let o = b.cast(&o, F32);
            Ok(b.add(&x, &o))
        })?;

        let h = self.layer_norm(&format!("{p}.norm2"), &x)?;
        let y = self.linear(&format!("{p}.mlp.0"), &h, wd, m)?; // [b, t, mlp]
        let y = self
            .b
            .scoped(&format!("{scope}.mlp.1"), |b| Ok(b.gelu(&y, false)))?;
        let y = self.linear(&format!("{p}.mlp.2"), &y, m, wd)?; // [b, t, w]
        self.b.scoped(&scope, |b| {
            let y = b.cast(&y, F32);
            Ok(b.add(&x, &y))
        })
    }
}

/// Builds the image-encoder graph into `b`, reading weights through `w`
/// (canonical names; `visual.` is prepended here).
pub fn build(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &ClipVisionConfig,
    profile: &Profile,
    opts: &ClipOptions,
) -> Result<()> {
    validate(cfg)?;
    let contract = NetworkContract::image_encoder(cfg, profile);
    let c = opts.precision.compute_dtype();
    let (wd, ps, grid) = (
        cfg.width as i64,
        cfg.patch_size as i64,
        (cfg.image_size / cfg.patch_size) as i64,
    );
    let tokens = cfg.tokens() as i64;
    let wu = cfg.width as usize;

    let in_spec = &contract.inputs[0];
    let pixels = b.input(&in_spec.name, in_spec.dtype, &io_dims(&in_spec.shape));
    let mut debug: Vec<(String, Value)> = Vec::new();

    let mut clip = Clip {
        b,
        w: w.pp("visual"),
        cfg,
        c,
        eps: cfg.eps as f32,
    };

    // Patch embedding: Conv2d 3 → w, kernel = stride = patch, no bias.
    let (pn, pt) = clip
        .w
        .get("patch_embedding.weight", &[wu, 3, ps as usize, ps as usize])?;
    let patches = clip.b.scoped("visual.patch_embedding", |b| {
        let wv = b.weight(&pn, &pt, c, false)?;
        let x = b.cast(&pixels, c);
        let x = b.conv(&x, &wv, None, &[ps, ps], &[ps, ps], &[0; 4]); // [b, w, g, g]
        let x = b.reshape(&x, &[0, wd, grid * grid]); // [b, w, g·g]
        let x = b.transpose(&x, &[0, 2, 1]); // [b, g·g, w]
        Ok(b.cast(&x, F32))
    })?;

    // Class token first, then learned positions for all tokens (float32).
    let cls = clip.param("cls_embedding", &[1, 1, wu])?;
    let pos = clip.param("pos_embedding", &[1, tokens as usize, wu])?;
    let x = clip.b.scoped("visual.embeddings", |b| {
        let batch = b.shape_of(&patches, 0, 1); // [1] = (b)
        let rest = b.const_i64(&[1, wd]);
        let shape = b.concat(&[&batch, &rest], 0); // (b, 1, w)
        let cls = b.expand(&cls, &shape); // [b, 1, w]
        let x = b.concat(&[&cls, &patches], 1); // [b, tokens, w]
        Ok(b.add(&x, &pos))
    })?;
    let mut x = clip.layer_norm("pre_norm", &x)?;
    debug.push(("embeddings".into(), x.clone()));

    for i in 0..cfg.used_layers {
        x = clip.block(i, x)?;
        debug.push((format!("block_{i}_out"), x.clone()));
    }

    // The skipped blocks must still match the config (see the module doc).
    for i in cfg.used_layers..cfg.layers {
        let blk = clip.w.pp(format!("transformer.{i}"));
        for (leaf, shape) in block_tensors(cfg) {
            blk.get(leaf, &shape)?;
        }
    }

    let b = &mut *clip.b;
    let out_spec = &contract.outputs[0];
    let out = b.cast(&x, F32);
    b.output(&out, &out_spec.name, Some(&io_dims(&out_spec.shape)));
    if opts.debug_outputs {
        let batch = io_dims(&out_spec.shape)[0].clone();
        for (name, v) in debug {
            let v = b.cast(&v, F32);
            let dims = [batch.clone(), IoDim::Fixed(tokens), IoDim::Fixed(wd)];
            b.output(&v, &format!("intermediate.{name}"), Some(&dims));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::weights::testing::Zeros;

    fn tiny() -> ClipVisionConfig {
        ClipVisionConfig {
            width: 8,
            mlp_dim: 16,
            layers: 3,
            heads: 2,
            image_size: 28,
            patch_size: 14,
            eps: 1e-5,
            used_layers: 2,
        }
    }

    #[test]
    fn fetches_every_tensor_of_every_block_by_original_name() {
        let src = Zeros(Default::default());
        let mut b = GraphBuilder::new("image_encoder", None).unwrap();
        let p = Profile::builtin("480p").unwrap();
        build(
            &mut b,
            Weights::new(&src),
            &tiny(),
            &p,
            &ClipOptions::default(),
        )
        .unwrap();
        let asked = src.0.into_inner();
        // 5 top-level tensors + 12 per block, the skipped last block included.
        assert_eq!(asked.len(), 5 + 12 * 3, "{:?}", asked.keys());
        assert_eq!(asked["visual.pos_embedding"], vec![1, 5, 8]);
        assert_eq!(
            asked["visual.transformer.2.attn.to_qkv.weight"],
            vec![24, 8]
        );
        assert!(
            !asked
                .keys()
                .any(|k| k.contains("post_norm") || k.contains("head"))
        );
        let g = b.finish("").unwrap().model.graph.unwrap();
        // The skipped block is checked, never exported.
        assert!(
            !g.initializer
                .iter()
                .any(|t| t.name.contains("transformer.2."))
        );
        assert!(
            g.node
                .iter()
                .any(|n| n.name == "visual.transformer.1.attn.to_qkv/MatMul")
        );
        assert_eq!(g.output.len(), 1);
        assert_eq!(g.output[0].name, "image_embeds");
    }

    #[test]
    fn half_precision_keeps_norms_and_stream_in_f32() {
        let src = Zeros(Default::default());
        let mut b = GraphBuilder::new("image_encoder", None).unwrap();
        let p = Profile::builtin("480p").unwrap();
        let opts = ClipOptions {
            precision: Precision::Fp16,
            debug_outputs: false,
        };
        build(&mut b, Weights::new(&src), &tiny(), &p, &opts).unwrap();
        let g = b.finish("").unwrap().model.graph.unwrap();
        let dtype_of = |name: &str| {
            g.initializer
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.data_type)
                .unwrap()
        };
        let (f16, f32) = (DType::Float16.onnx_code(), F32.onnx_code());
        assert_eq!(dtype_of("visual.transformer.0.attn.to_qkv.weight"), f16);
        assert_eq!(dtype_of("visual.patch_embedding.weight"), f16);
        assert_eq!(dtype_of("visual.transformer.0.norm1.weight"), f32);
        assert_eq!(dtype_of("visual.pos_embedding"), f32);
        assert_eq!(dtype_of("visual.cls_embedding"), f32);

        // The island map on the nodes: every value's dtype is recorded.
        let out_dtype = |name: &str| {
            g.value_info
                .iter()
                .find(|v| v.name == name)
                .and_then(|v| match v.r#type.as_ref()?.value.as_ref()? {
                    crate::onnx::type_proto::Value::TensorType(t) => Some(t.elem_type),
                })
                .unwrap_or_else(|| panic!("no value_info for {name}"))
        };
        let mut seen = BTreeMap::<&str, usize>::new();
        for n in &g.node {
            let want = match n.op_type.as_str() {
                "Conv" | "MatMul" | "Attention" | "Gelu" | "Split" => f16,
                "LayerNormalization" => f32,
                // Residual adds of the stream (`visual.transformer.0/Add`)
                // and the position add; a Linear's bias add is half.
                "Add" if !n.name.contains("attn.") && !n.name.contains("mlp.") => f32,
                _ => continue,
            };
            *seen.entry(n.op_type.as_str()).or_default() += 1;
            for o in &n.output {
                assert_eq!(out_dtype(o), want, "{} ({})", n.name, n.op_type);
            }
        }
        // 2 blocks: pre_norm + 2 norms each; 4 MatMuls each; 2 residual
        // adds each plus the position add.
        assert_eq!(seen["LayerNormalization"], 5);
        assert_eq!(seen["MatMul"], 8);
        assert_eq!(seen["Attention"], 2);
        assert_eq!(seen["Add"], 5);
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        let p = Profile::builtin("480p").unwrap();
        for edit in [
            (|c: &mut ClipVisionConfig| c.heads = 3) as fn(&mut ClipVisionConfig),
            |c| c.used_layers = 4,
            |c| c.used_layers = 0,
            |c| c.patch_size = 5,
            |c| c.eps = 0.0,
        ] {
            let mut cfg = tiny();
            edit(&mut cfg);
            let src = Zeros(Default::default());
            let mut b = GraphBuilder::new("image_encoder", None).unwrap();
            let e = build(
                &mut b,
                Weights::new(&src),
                &cfg,
                &p,
                &ClipOptions::default(),
            )
            .unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Invalid, "{e}");
        }
    }
}

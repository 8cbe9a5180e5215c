//! The one renaming table between checkpoint layouts.
//!
//! Graph builders ask for weights by their original Wan2.1 name; a diffusers
//! checkpoint stores them under the names of `convert_wan_to_diffusers.py`
//! (`docs/WAN.md` §8.3). This table is that mapping, complete for the DiT;
//! it is a bijection (checked by a test), so unused checkpoint tensors can be
//! reported by their original name too.

/// Top-level (original prefix, diffusers prefix). A pattern ending in `.`
/// matches a prefix; any other pattern must match the whole name.
const DIT_TOP: &[(&str, &str)] = &[
    ("patch_embedding.", "patch_embedding."),
    (
        "text_embedding.0.",
        "condition_embedder.text_embedder.linear_1.",
    ),
    (
        "text_embedding.2.",
        "condition_embedder.text_embedder.linear_2.",
    ),
    (
        "time_embedding.0.",
        "condition_embedder.time_embedder.linear_1.",
    ),
    (
        "time_embedding.2.",
        "condition_embedder.time_embedder.linear_2.",
    ),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
    (
        "img_emb.proj.0.",
        "condition_embedder.image_embedder.norm1.",
    ),
    (
        "img_emb.proj.1.",
        "condition_embedder.image_embedder.ff.net.0.proj.",
    ),
    (
        "img_emb.proj.3.",
        "condition_embedder.image_embedder.ff.net.2.",
    ),
    (
        "img_emb.proj.4.",
        "condition_embedder.image_embedder.norm2.",
    ),
    (
        "img_emb.emb_pos",
        "condition_embedder.image_embedder.pos_embed",
    ),
    ("vace_patch_embedding.", "vace_patch_embedding."),
];

/// Inside `vace_blocks.{j}.` (VACE): the block table plus the two
/// projections around the VACE stream (`docs/WAN.md` §14).
const VACE_BLOCK: &[(&str, &str)] = &[("before_proj.", "proj_in."), ("after_proj.", "proj_out.")];

/// Inside `blocks.{i}.`.
const DIT_BLOCK: &[(&str, &str)] = &[
    ("modulation", "scale_shift_table"),
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("norm3.", "norm2."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("cross_attn.k_img.", "attn2.add_k_proj."),
    ("cross_attn.v_img.", "attn2.add_v_proj."),
    ("cross_attn.norm_k_img.", "attn2.norm_added_k."),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
];

fn apply(table: &[(&str, &str)], name: &str, forward: bool) -> Option<String> {
    for &(orig, diff) in table {
        let (from, to) = if forward { (orig, diff) } else { (diff, orig) };
        if from.ends_with('.') {
            if let Some(rest) = name.strip_prefix(from) {
                return Some(format!("{to}{rest}"));
            }
        } else if name == from {
            return Some(to.to_string());
        }
    }
    None
}

fn map_dit(name: &str, forward: bool) -> Option<String> {
    if let Some(rest) = name.strip_prefix("vace_blocks.") {
        let (idx, tail) = rest.split_once('.')?;
        idx.parse::<u32>().ok()?;
        return apply(VACE_BLOCK, tail, forward)
            .or_else(|| apply(DIT_BLOCK, tail, forward))
            .map(|t| format!("vace_blocks.{idx}.{t}"));
    }
    if let Some(rest) = name.strip_prefix("blocks.") {
        let (idx, tail) = rest.split_once('.')?;
        idx.parse::<u32>().ok()?;
        return apply(DIT_BLOCK, tail, forward).map(|t| format!("blocks.{idx}.{t}"));
    }
    apply(DIT_TOP, name, forward)
}

/// Original DiT name → diffusers name (`None` if the name is unknown).
pub fn dit_to_diffusers(orig: &str) -> Option<String> {
    map_dit(orig, true)
}

/// Diffusers DiT name → original name (`None` if the name is unknown).
pub fn dit_from_diffusers(diff: &str) -> Option<String> {
    map_dit(diff, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_map() {
        let cases = [
            (
                "blocks.3.self_attn.o.weight",
                "blocks.3.attn1.to_out.0.weight",
            ),
            ("blocks.0.norm3.bias", "blocks.0.norm2.bias"),
            (
                "blocks.9.cross_attn.k_img.bias",
                "blocks.9.attn2.add_k_proj.bias",
            ),
            ("blocks.9.cross_attn.k.bias", "blocks.9.attn2.to_k.bias"),
            (
                "blocks.9.cross_attn.norm_k_img.weight",
                "blocks.9.attn2.norm_added_k.weight",
            ),
            ("blocks.1.modulation", "blocks.1.scale_shift_table"),
            ("head.modulation", "scale_shift_table"),
            ("head.head.weight", "proj_out.weight"),
            (
                "time_projection.1.bias",
                "condition_embedder.time_proj.bias",
            ),
            (
                "img_emb.proj.3.weight",
                "condition_embedder.image_embedder.ff.net.2.weight",
            ),
            ("blocks.2.ffn.0.weight", "blocks.2.ffn.net.0.proj.weight"),
            (
                "vace_blocks.0.before_proj.weight",
                "vace_blocks.0.proj_in.weight",
            ),
            (
                "vace_blocks.1.after_proj.bias",
                "vace_blocks.1.proj_out.bias",
            ),
            ("vace_blocks.1.norm3.weight", "vace_blocks.1.norm2.weight"),
            (
                "vace_blocks.1.modulation",
                "vace_blocks.1.scale_shift_table",
            ),
            (
                "vace_blocks.0.cross_attn.o.bias",
                "vace_blocks.0.attn2.to_out.0.bias",
            ),
            ("vace_patch_embedding.weight", "vace_patch_embedding.weight"),
        ];
        for (o, d) in cases {
            assert_eq!(dit_to_diffusers(o).as_deref(), Some(d), "{o}");
            assert_eq!(dit_from_diffusers(d).as_deref(), Some(o), "{d}");
        }
        assert_eq!(dit_to_diffusers("blocks.x.ffn.0.weight"), None);
        assert_eq!(dit_to_diffusers("unknown.weight"), None);
        // norm2 of ORIG is the parameter-free FFN norm: it has no tensor.
        assert_eq!(dit_from_diffusers("blocks.0.norm3.weight"), None);
    }

    #[test]
    fn table_is_a_bijection() {
        // Every pattern maps one way and back, and no two patterns share an
        // image, so forward and inverse renaming are inverses.
        for table in [DIT_TOP, DIT_BLOCK, VACE_BLOCK] {
            let mut seen = std::collections::HashSet::new();
            for (o, d) in table {
                assert!(seen.insert(*d), "{d} is the image of two names");
                let name = if o.ends_with('.') {
                    format!("{o}weight")
                } else {
                    o.to_string()
                };
                let there = apply(table, &name, true).unwrap_or_else(|| panic!("{name} unmapped"));
                assert_eq!(
                    apply(table, &there, false).as_deref(),
                    Some(name.as_str()),
                    "{name}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Text encoder, VAE and CLIP: the original `.pth` names (docs/WAN.md
// §8.4) ↔ the diffusers / transformers names. Same conventions as the
// DiT table: `None` for an unknown name; a pattern ending in `.` matches a
// prefix and keeps the rest of the name.

/// `(i, rest)` of `"{i}.{rest}"`, for a canonically written index.
fn split_index(s: &str) -> Option<(u32, &str)> {
    let (idx, rest) = s.split_once('.')?;
    let i = idx.parse::<u32>().ok()?;
    (i.to_string() == idx).then_some((i, rest))
}

/// UMT5 names inside ORIG `blocks.{i}.` / DIFF `encoder.block.{i}.`.
const T5_BLOCK: &[(&str, &str)] = &[
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    (
        "pos_embedding.embedding.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
];

const T5_TOP: &[(&str, &str)] = &[
    ("token_embedding.weight", "shared.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
];

/// Original UMT5 encoder name (`models_t5_umt5-xxl-enc-bf16.pth`) →
/// transformers `UMT5EncoderModel` name (`None` if the name is unknown).
pub fn t5_to_diffusers(orig: &str) -> Option<String> {
    if let Some(rest) = orig.strip_prefix("blocks.") {
        let (i, tail) = split_index(rest)?;
        return apply(T5_BLOCK, tail, true).map(|t| format!("encoder.block.{i}.{t}"));
    }
    apply(T5_TOP, orig, true)
}

/// transformers `UMT5EncoderModel` name → original name. The tied alias
/// `encoder.embed_tokens.weight` (not stored in `text_encoder/`) maps to the
/// embedding as well.
pub fn t5_from_diffusers(diff: &str) -> Option<String> {
    if let Some(rest) = diff.strip_prefix("encoder.block.") {
        let (i, tail) = split_index(rest)?;
        return apply(T5_BLOCK, tail, false).map(|t| format!("blocks.{i}.{t}"));
    }
    if diff == "encoder.embed_tokens.weight" {
        return Some("token_embedding.weight".into());
    }
    apply(T5_TOP, diff, false)
}

/// Wan-VAE residual block internals (`docs/WAN.md` §8.4).
const VAE_RESNET: &[(&str, &str)] = &[
    ("residual.0.", "norm1."),
    ("residual.2.", "conv1."),
    ("residual.3.", "norm2."),
    ("residual.6.", "conv2."),
    ("shortcut.", "conv_shortcut."),
];

/// Resample (down/up) block internals: the same names in both layouts.
const VAE_RESAMPLE: &[(&str, &str)] =
    &[("resample.1.", "resample.1."), ("time_conv.", "time_conv.")];

/// Middle attention block internals: the same names in both layouts.
const VAE_ATTN: &[(&str, &str)] = &[
    ("norm.", "norm."),
    ("to_qkv.", "to_qkv."),
    ("proj.", "proj."),
];

/// Names outside the indexed blocks, per side (`encoder.`/`decoder.`
/// prefixes included where they apply).
const VAE_TOP: &[(&str, &str)] = &[
    ("conv1.", "quant_conv."),
    ("conv2.", "post_quant_conv."),
    ("encoder.conv1.", "encoder.conv_in."),
    ("encoder.head.0.", "encoder.norm_out."),
    ("encoder.head.2.", "encoder.conv_out."),
    ("decoder.conv1.", "decoder.conv_in."),
    ("decoder.head.0.", "decoder.norm_out."),
    ("decoder.head.2.", "decoder.conv_out."),
];

/// Decoder `upsamples` entries per up block: 3 resnets then 1 upsampler
/// (num_res_blocks 2 → 3 decoder resnets per stage; the last stage's
/// upsampler slot is never filled).
const VAE_UP_STRIDE: u32 = 4;

fn vae_resnet_or_resample(rest: &str, forward: bool) -> Option<String> {
    apply(VAE_RESNET, rest, forward).or_else(|| apply(VAE_RESAMPLE, rest, forward))
}

fn vae_middle_to(side: &str, rest: &str) -> Option<String> {
    let (i, tail) = split_index(rest)?;
    match i {
        0 | 2 => {
            apply(VAE_RESNET, tail, true).map(|t| format!("{side}.mid_block.resnets.{}.{t}", i / 2))
        }
        1 => apply(VAE_ATTN, tail, true).map(|t| format!("{side}.mid_block.attentions.0.{t}")),
        _ => None,
    }
}

/// Original Wan-VAE name (`Wan2.1_VAE.pth`) → diffusers `AutoencoderKLWan`
/// name (`None` if the name is unknown).
pub fn vae_to_diffusers(orig: &str) -> Option<String> {
    if let Some(rest) = orig.strip_prefix("encoder.downsamples.") {
        let (i, tail) = split_index(rest)?;
        return vae_resnet_or_resample(tail, true).map(|t| format!("encoder.down_blocks.{i}.{t}"));
    }
    if let Some(rest) = orig.strip_prefix("decoder.upsamples.") {
        let (i, tail) = split_index(rest)?;
        let (b, j) = (i / VAE_UP_STRIDE, i % VAE_UP_STRIDE);
        return if j + 1 < VAE_UP_STRIDE {
            apply(VAE_RESNET, tail, true).map(|t| format!("decoder.up_blocks.{b}.resnets.{j}.{t}"))
        } else {
            apply(VAE_RESAMPLE, tail, true)
                .map(|t| format!("decoder.up_blocks.{b}.upsamplers.0.{t}"))
        };
    }
    for side in ["encoder", "decoder"] {
        if let Some(rest) = orig
            .strip_prefix(side)
            .and_then(|r| r.strip_prefix(".middle."))
        {
            return vae_middle_to(side, rest);
        }
    }
    apply(VAE_TOP, orig, true)
}

/// Diffusers `AutoencoderKLWan` name → original Wan-VAE name.
pub fn vae_from_diffusers(diff: &str) -> Option<String> {
    if let Some(rest) = diff.strip_prefix("encoder.down_blocks.") {
        let (i, tail) = split_index(rest)?;
        return vae_resnet_or_resample(tail, false).map(|t| format!("encoder.downsamples.{i}.{t}"));
    }
    if let Some(rest) = diff.strip_prefix("decoder.up_blocks.") {
        let (b, tail) = split_index(rest)?;
        let base = b.checked_mul(VAE_UP_STRIDE)?;
        if let Some(r) = tail.strip_prefix("resnets.") {
            let (j, leaf) = split_index(r)?;
            if j + 1 >= VAE_UP_STRIDE {
                return None;
            }
            return apply(VAE_RESNET, leaf, false)
                .map(|t| format!("decoder.upsamples.{}.{t}", base + j));
        }
        let leaf = tail.strip_prefix("upsamplers.0.")?;
        let i = base + VAE_UP_STRIDE - 1;
        return apply(VAE_RESAMPLE, leaf, false).map(|t| format!("decoder.upsamples.{i}.{t}"));
    }
    for side in ["encoder", "decoder"] {
        let Some(rest) = diff
            .strip_prefix(side)
            .and_then(|r| r.strip_prefix(".mid_block."))
        else {
            continue;
        };
        if let Some(r) = rest.strip_prefix("resnets.") {
            let (j, leaf) = split_index(r)?;
            if j > 1 {
                return None;
            }
            return apply(VAE_RESNET, leaf, false).map(|t| format!("{side}.middle.{}.{t}", 2 * j));
        }
        let leaf = rest.strip_prefix("attentions.0.")?;
        return apply(VAE_ATTN, leaf, false).map(|t| format!("{side}.middle.1.{t}"));
    }
    apply(VAE_TOP, diff, false)
}

/// How a diffusers CLIP tensor is obtained from the original tensor it maps
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// The same tensor.
    Same,
    /// The same elements in the same order under another shape (leading
    /// size-1 axes dropped: `cls_embedding [1,1,W]` → `class_embedding [W]`,
    /// `pos_embedding [1,257,W]` → `position_embedding.weight [257,W]`).
    Reshape,
    /// A 2-D matrix transposed (`head [W,P]` → `visual_projection.weight [P,W]`).
    Transpose,
    /// Rows `index·n/parts .. (index+1)·n/parts` of the first axis (`n` its
    /// length): the fused `to_qkv` split into q, k, v.
    Rows { index: usize, parts: usize },
}

/// CLIP visual tower names outside the blocks: (ORIG, DIFF, derivation).
const CLIP_TOP: &[(&str, &str, Derivation)] = &[
    (
        "visual.patch_embedding.weight",
        "vision_model.embeddings.patch_embedding.weight",
        Derivation::Same,
    ),
    (
        "visual.cls_embedding",
        "vision_model.embeddings.class_embedding",
        Derivation::Reshape,
    ),
    (
        "visual.pos_embedding",
        "vision_model.embeddings.position_embedding.weight",
        Derivation::Reshape,
    ),
    (
        "visual.pre_norm.weight",
        "vision_model.pre_layrnorm.weight",
        Derivation::Same,
    ),
    (
        "visual.pre_norm.bias",
        "vision_model.pre_layrnorm.bias",
        Derivation::Same,
    ),
    (
        "visual.post_norm.weight",
        "vision_model.post_layernorm.weight",
        Derivation::Same,
    ),
    (
        "visual.post_norm.bias",
        "vision_model.post_layernorm.bias",
        Derivation::Same,
    ),
    (
        "visual.head",
        "visual_projection.weight",
        Derivation::Transpose,
    ),
];

/// Inside ORIG `visual.transformer.{i}.` / DIFF `vision_model.encoder.layers.{i}.`
/// (all [`Derivation::Same`]; `attn.to_qkv` is handled apart).
const CLIP_BLOCK: &[(&str, &str)] = &[
    ("norm1.", "layer_norm1."),
    ("norm2.", "layer_norm2."),
    ("attn.proj.", "self_attn.out_proj."),
    ("mlp.0.", "mlp.fc1."),
    ("mlp.2.", "mlp.fc2."),
];

const CLIP_QKV: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

/// Original open-clip name (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`)
/// → the transformers `CLIPVisionModelWithProjection` tensors made from it:
/// one, or three for the fused `attn.to_qkv.{weight,bias}`. `None` for names
/// with no diffusers counterpart (`log_scale`, the unused `textual.*` tower)
/// and unknown names.
pub fn clip_to_diffusers(orig: &str) -> Option<Vec<(String, Derivation)>> {
    if let Some(rest) = orig.strip_prefix("visual.transformer.") {
        let (i, tail) = split_index(rest)?;
        let pre = format!("vision_model.encoder.layers.{i}.");
        if let Some(leaf) = tail.strip_prefix("attn.to_qkv.") {
            return Some(
                CLIP_QKV
                    .iter()
                    .enumerate()
                    .map(|(index, p)| {
                        (
                            format!("{pre}self_attn.{p}.{leaf}"),
                            Derivation::Rows { index, parts: 3 },
                        )
                    })
                    .collect(),
            );
        }
        return apply(CLIP_BLOCK, tail, true)
            .map(|t| vec![(format!("{pre}{t}"), Derivation::Same)]);
    }
    CLIP_TOP
        .iter()
        .find(|(o, _, _)| *o == orig)
        .map(|&(_, d, how)| vec![(d.to_string(), how)])
}

/// transformers CLIP vision name → (original name, how the diffusers tensor
/// derives from it).
pub fn clip_from_diffusers(diff: &str) -> Option<(String, Derivation)> {
    if let Some(rest) = diff.strip_prefix("vision_model.encoder.layers.") {
        let (i, tail) = split_index(rest)?;
        let pre = format!("visual.transformer.{i}.");
        if let Some(r) = tail.strip_prefix("self_attn.") {
            for (index, p) in CLIP_QKV.iter().enumerate() {
                if let Some(leaf) = r.strip_prefix(p).and_then(|x| x.strip_prefix('.')) {
                    return Some((
                        format!("{pre}attn.to_qkv.{leaf}"),
                        Derivation::Rows { index, parts: 3 },
                    ));
                }
            }
        }
        return apply(CLIP_BLOCK, tail, false).map(|t| (format!("{pre}{t}"), Derivation::Same));
    }
    CLIP_TOP
        .iter()
        .find(|(_, d, _)| *d == diff)
        .map(|&(o, _, how)| (o.to_string(), how))
}

#[cfg(test)]
mod component_tests {
    use super::*;

    #[test]
    fn t5_names_map_both_ways() {
        let cases = [
            ("token_embedding.weight", "shared.weight"),
            ("norm.weight", "encoder.final_layer_norm.weight"),
            (
                "blocks.0.norm1.weight",
                "encoder.block.0.layer.0.layer_norm.weight",
            ),
            (
                "blocks.23.attn.o.weight",
                "encoder.block.23.layer.0.SelfAttention.o.weight",
            ),
            (
                "blocks.5.pos_embedding.embedding.weight",
                "encoder.block.5.layer.0.SelfAttention.relative_attention_bias.weight",
            ),
            (
                "blocks.1.norm2.weight",
                "encoder.block.1.layer.1.layer_norm.weight",
            ),
            (
                "blocks.1.ffn.gate.0.weight",
                "encoder.block.1.layer.1.DenseReluDense.wi_0.weight",
            ),
            (
                "blocks.1.ffn.fc1.weight",
                "encoder.block.1.layer.1.DenseReluDense.wi_1.weight",
            ),
            (
                "blocks.1.ffn.fc2.weight",
                "encoder.block.1.layer.1.DenseReluDense.wo.weight",
            ),
        ];
        for (o, d) in cases {
            assert_eq!(t5_to_diffusers(o).as_deref(), Some(d), "{o}");
            assert_eq!(t5_from_diffusers(d).as_deref(), Some(o), "{d}");
        }
        assert_eq!(
            t5_from_diffusers("encoder.embed_tokens.weight").as_deref(),
            Some("token_embedding.weight")
        );
        for bad in [
            "blocks.01.norm1.weight",
            "blocks.x.norm1.weight",
            "blocks.0.norm1.bias",
            "norm",
        ] {
            assert_eq!(t5_to_diffusers(bad), None, "{bad}");
        }
    }

    #[test]
    fn vae_names_map_both_ways() {
        let cases = [
            ("conv1.weight", "quant_conv.weight"),
            ("conv2.bias", "post_quant_conv.bias"),
            ("encoder.conv1.weight", "encoder.conv_in.weight"),
            ("encoder.head.0.gamma", "encoder.norm_out.gamma"),
            ("decoder.head.2.bias", "decoder.conv_out.bias"),
            (
                "encoder.downsamples.0.residual.0.gamma",
                "encoder.down_blocks.0.norm1.gamma",
            ),
            (
                "encoder.downsamples.3.shortcut.weight",
                "encoder.down_blocks.3.conv_shortcut.weight",
            ),
            (
                "encoder.downsamples.5.time_conv.bias",
                "encoder.down_blocks.5.time_conv.bias",
            ),
            (
                "encoder.downsamples.8.resample.1.weight",
                "encoder.down_blocks.8.resample.1.weight",
            ),
            (
                "encoder.downsamples.10.residual.6.weight",
                "encoder.down_blocks.10.conv2.weight",
            ),
            (
                "encoder.middle.0.residual.2.bias",
                "encoder.mid_block.resnets.0.conv1.bias",
            ),
            (
                "encoder.middle.2.residual.3.gamma",
                "encoder.mid_block.resnets.1.norm2.gamma",
            ),
            (
                "decoder.middle.1.norm.gamma",
                "decoder.mid_block.attentions.0.norm.gamma",
            ),
            (
                "decoder.middle.1.to_qkv.weight",
                "decoder.mid_block.attentions.0.to_qkv.weight",
            ),
            (
                "decoder.upsamples.0.residual.0.gamma",
                "decoder.up_blocks.0.resnets.0.norm1.gamma",
            ),
            (
                "decoder.upsamples.3.time_conv.weight",
                "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
            ),
            (
                "decoder.upsamples.4.shortcut.bias",
                "decoder.up_blocks.1.resnets.0.conv_shortcut.bias",
            ),
            (
                "decoder.upsamples.11.resample.1.weight",
                "decoder.up_blocks.2.upsamplers.0.resample.1.weight",
            ),
            (
                "decoder.upsamples.14.residual.6.bias",
                "decoder.up_blocks.3.resnets.2.conv2.bias",
            ),
        ];
        for (o, d) in cases {
            assert_eq!(vae_to_diffusers(o).as_deref(), Some(d), "{o}");
            assert_eq!(vae_from_diffusers(d).as_deref(), Some(o), "{d}");
        }
        for bad in [
            "encoder.middle.3.residual.0.gamma",
            "decoder.upsamples.3.residual.0.gamma",
            "decoder.upsamples.2.resample.1.weight",
            "encoder.downsamples.1.norm.gamma",
            "decoder.conv3.weight",
        ] {
            assert_eq!(vae_to_diffusers(bad), None, "{bad}");
        }
        for bad in [
            "decoder.up_blocks.0.resnets.3.norm1.gamma",
            "decoder.up_blocks.0.upsamplers.1.resample.1.weight",
            "encoder.mid_block.resnets.2.conv1.bias",
            "encoder.mid_block.attentions.1.norm.gamma",
        ] {
            assert_eq!(vae_from_diffusers(bad), None, "{bad}");
        }
    }

    #[test]
    fn clip_names_map_both_ways() {
        let qkv = clip_to_diffusers("visual.transformer.31.attn.to_qkv.weight").unwrap();
        let expect: Vec<(String, Derivation)> = ["q", "k", "v"]
            .iter()
            .enumerate()
            .map(|(index, p)| {
                (
                    format!("vision_model.encoder.layers.31.self_attn.{p}_proj.weight"),
                    Derivation::Rows { index, parts: 3 },
                )
            })
            .collect();
        assert_eq!(qkv, expect);
        for (d, how) in &expect {
            assert_eq!(
                clip_from_diffusers(d),
                Some(("visual.transformer.31.attn.to_qkv.weight".into(), *how))
            );
        }
        let cases = [
            (
                "visual.cls_embedding",
                "vision_model.embeddings.class_embedding",
                Derivation::Reshape,
            ),
            (
                "visual.head",
                "visual_projection.weight",
                Derivation::Transpose,
            ),
            (
                "visual.pre_norm.bias",
                "vision_model.pre_layrnorm.bias",
                Derivation::Same,
            ),
            (
                "visual.transformer.0.attn.proj.weight",
                "vision_model.encoder.layers.0.self_attn.out_proj.weight",
                Derivation::Same,
            ),
            (
                "visual.transformer.2.mlp.2.bias",
                "vision_model.encoder.layers.2.mlp.fc2.bias",
                Derivation::Same,
            ),
            (
                "visual.transformer.1.norm2.weight",
                "vision_model.encoder.layers.1.layer_norm2.weight",
                Derivation::Same,
            ),
        ];
        for (o, d, how) in cases {
            assert_eq!(
                clip_to_diffusers(o),
                Some(vec![(d.to_string(), how)]),
                "{o}"
            );
            assert_eq!(clip_from_diffusers(d), Some((o.to_string(), how)), "{d}");
        }
        for bad in [
            "log_scale",
            "textual.token_embedding.weight",
            "visual.transformer.0.attn.q.weight",
        ] {
            assert_eq!(clip_to_diffusers(bad), None, "{bad}");
        }
        assert_eq!(
            clip_from_diffusers("vision_model.encoder.layers.0.self_attn.qq_proj.weight"),
            None
        );
    }
}

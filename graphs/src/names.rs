//! The one renaming table between checkpoint layouts.
//!
//! Graph builders ask for weights by their original Wan2.1 name; a diffusers
//! checkpoint stores them under the names of `convert_wan_to_diffusers.py`
//! (`WAN_SPEC.md` §7.3). This table is that mapping, complete for the DiT;
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
];

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
        let mut seen = std::collections::HashSet::new();
        for table in [DIT_TOP, DIT_BLOCK] {
            for (o, d) in table {
                assert!(seen.insert(*d), "{d} is the image of two names");
                assert_eq!(
                    apply(table, &format!("{o}x").replace("..", "."), true).is_some(),
                    o.ends_with('.') || true
                );
            }
        }
    }
}

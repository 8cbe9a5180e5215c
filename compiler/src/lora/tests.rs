//! Unit tests of key parsing, name resolution and the merge arithmetic; the
//! golden merges are in the root package's `tests/lora_golden.rs`.

use super::layouts::{Family, Layout, Param, Role, parse_key};
use super::*;

#[test]
fn keys_of_each_layout_parse() {
    let k = parse_key("transformer.blocks.0.attn1.to_out.0.lora_A.weight").unwrap();
    assert_eq!(
        (k.family, k.module.as_str(), k.role),
        (
            Family::Peft,
            "blocks.0.attn1.to_out.0",
            Role::Down { ab: true }
        )
    );
    let k = parse_key("lora_unet_blocks_0_cross_attn_k_img.alpha").unwrap();
    assert_eq!(
        (k.family, k.module.as_str(), k.role),
        (Family::Kohya, "blocks_0_cross_attn_k_img", Role::Alpha)
    );
    let k = parse_key("diffusion_model.blocks.3.diff_m").unwrap();
    assert_eq!(
        (k.module.as_str(), k.role),
        ("blocks.3", Role::Diff(Param::Modulation))
    );
    let k = parse_key("diffusion_model.patch_embedding.diff_b").unwrap();
    assert_eq!(
        (k.module.as_str(), k.role),
        ("patch_embedding", Role::Diff(Param::Bias))
    );
    let k = parse_key("diffusion_model.head.head.lora_up.weight").unwrap();
    assert_eq!(
        (k.module.as_str(), k.role),
        ("head.head", Role::Up { ab: false })
    );
    // Not LoRA keys, or a role the layout does not write.
    for bad in [
        "blocks.0.self_attn.q.weight",
        "transformer.blocks.0.attn1.to_q.lora_down.weight",
        "transformer.blocks.0.attn1.to_q.alpha",
        "lora_unet_blocks.0.self_attn.q.lora_down.weight",
        "lora_unet_blocks_0_self_attn_q.diff",
        "diffusion_model..diff",
        "diffusion_model.blocks.0.self_attn.q.lora_magnitude_vector",
    ] {
        assert!(parse_key(bad).is_none(), "{bad}");
    }
}

#[test]
fn module_ids_resolve_through_the_renaming_table() {
    let cases = [
        (
            Layout::Peft,
            "blocks.2.self_attn.o",
            "blocks.2.attn1.to_out.0",
        ),
        (
            Layout::Peft,
            "blocks.2.cross_attn.k_img",
            "blocks.2.attn2.add_k_proj",
        ),
        (Layout::Peft, "blocks.2.ffn.0", "blocks.2.ffn.net.0.proj"),
        (Layout::Peft, "head.head", "proj_out"),
        (
            Layout::Kohya,
            "blocks.12.cross_attn.v_img",
            "blocks_12_cross_attn_v_img",
        ),
        (Layout::Kohya, "blocks.0.ffn.2", "blocks_0_ffn_2"),
        (Layout::Comfy, "time_projection.1", "time_projection.1"),
        (
            Layout::AiToolkit,
            "blocks.1.self_attn.q",
            "blocks.1.self_attn.q",
        ),
    ];
    for (layout, module, id) in cases {
        assert_eq!(layout.module_id(module).as_deref(), Some(id), "{module}");
    }
    assert_eq!(Layout::Peft.module_id("blocks.x.ffn.0"), None);
    assert_eq!(
        Param::split("blocks.0.modulation"),
        Some(("blocks.0", Param::Modulation))
    );
    assert_eq!(
        Param::split("head.head.bias"),
        Some(("head.head", Param::Bias))
    );
    assert_eq!(Param::split("img_emb.emb_pos"), None);
}

#[test]
fn low_rank_update_is_the_scaled_product() {
    // W [2, 3] += m · up [2, 2] · down [2, 3].
    let mut w = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let up = [1.0, 2.0, 0.5, -1.0];
    let down = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
    add_low_rank(&mut w, &up, &down, 2, 3, 0.5);
    // up·down = [[5, 2, -1], [-1.5, -1, -0.5]].
    assert_eq!(w, vec![3.5, 3.0, 2.5, 3.25, 4.5, 5.75]);
}

//! Writes a random LoRA for a real DiT size, in the extracted
//! `diffusion_model.` layout that LightX2V's step-distill LoRAs use: a
//! low-rank pair and a `.diff_b` for every block linear, and a `.diff_m` per
//! block. bf16, as released files are. For measuring what `--lora` costs:
//!
//! ```sh
//! cargo run --release -p wanrt-compiler --example make_lora -- t2v-1.3B 64 /tmp/r64.safetensors
//! wan-compile --synthetic t2v-1.3B --networks dit --out /tmp/e --lora /tmp/r64.safetensors
//! ```

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, TensorView};
use wanrt_core::DitConfig;

/// SplitMix64 uniforms in [-1, 1).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    fn bf16(&mut self, n: usize, scale: f32) -> Vec<u8> {
        (0..n)
            .flat_map(|_| half::bf16::from_f32(scale * self.uniform()).to_le_bytes())
            .collect()
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [preset, rank, out] = args.as_slice() else {
        bail!("usage: make_lora <t2v-1.3B|t2v-14B|i2v-14B> <rank> <out.safetensors>");
    };
    let cfg = DitConfig::from_preset_name(preset).context("unknown preset")?;
    let r: usize = rank.parse().context("rank")?;
    let (d, f) = (cfg.dim as usize, cfg.ffn_dim as usize);
    let mut linears = vec![
        ("self_attn.q", d, d),
        ("self_attn.k", d, d),
        ("self_attn.v", d, d),
        ("self_attn.o", d, d),
        ("cross_attn.q", d, d),
        ("cross_attn.k", d, d),
        ("cross_attn.v", d, d),
        ("cross_attn.o", d, d),
        ("ffn.0", f, d),
        ("ffn.2", d, f),
    ];
    if cfg.task.has_image() {
        linears.push(("cross_attn.k_img", d, d));
        linears.push(("cross_attn.v_img", d, d));
    }
    let mut rng = Rng(7);
    let mut data: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for b in 0..cfg.num_layers {
        for &(m, out_f, in_f) in &linears {
            let p = format!("diffusion_model.blocks.{b}.{m}");
            let down = rng.bf16(r * in_f, 1.0 / (in_f as f32).sqrt());
            let up = rng.bf16(out_f * r, 0.01);
            data.insert(format!("{p}.lora_down.weight"), (vec![r, in_f], down));
            data.insert(format!("{p}.lora_up.weight"), (vec![out_f, r], up));
            data.insert(format!("{p}.diff_b"), (vec![out_f], rng.bf16(out_f, 0.001)));
        }
        let m = rng.bf16(6 * d, 0.001);
        data.insert(
            format!("diffusion_model.blocks.{b}.diff_m"),
            (vec![1, 6, d], m),
        );
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(k, (shape, bytes))| {
            TensorView::new(Dtype::BF16, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .context("tensor view")
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, std::path::Path::new(out))?;
    let bytes: usize = data.values().map(|(_, b)| b.len()).sum();
    eprintln!(
        "wrote {out}: {} tensors, rank {r}, {:.1} MiB",
        data.len(),
        bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}

//! The UMT5-XXL text encoder as a typed ONNX graph.
//!
//! Mirrors `wan/modules/t5.py::T5Encoder` of the official repository with
//! `shared_pos=False` (the `umt5_xxl` encoder, `docs/WAN.md` §2.2, §4.3), which is
//! transformers' `UMT5EncoderModel` under other names:
//!
//! 1. `x = E[input_ids]` — no embedding scaling, no absolute positions;
//! 2. per layer, pre-norm: `x += o(Attn(RMS1(x)))`, `x += FFN(RMS2(x))`;
//!    attention has no `1/√d` scaling and adds the layer's own relative
//!    position bias `β_h[bucket(j − i)]`; keys whose `attention_mask` is 0
//!    get the dtype's most negative value instead (ORIG's `masked_fill`);
//!    `FFN(h) = fc2(GELU_tanh(gate.0 h) ⊙ fc1 h)`;
//! 3. `out = RMS_final(x)`.
//!
//! Contract ([`NetworkContract::text_encoder`]): inputs `input_ids`,
//! `attention_mask` `[B, L]` int64, output `last_hidden_state [B, L,
//! d_model]` float32 for every precision. `L` is the profile's text length;
//! the bucket table of §4.3 is computed here for it (a constant `[L, L]`
//! index table) and every layer gathers its `[num_buckets, heads]` table
//! through it. Trimming to the prompt's length and zero-padding is the
//! runtime's (`wanrt_runtime::prompt`), as the contract says.
//!
//! Precision map. The official code runs the whole encoder in the checkpoint
//! dtype (bf16) and keeps only the RMS statistics and the softmax in fp32;
//! the `bf16`/`fp16` graphs do the same:
//!
//! | part | fp32 graph | bf16 / fp16 graph |
//! |---|---|---|
//! | token embedding, residual stream | fp32 | half |
//! | RMS norm: `x̂ = x·rsqrt(mean(x²)+ε)` | fp32 | fp32, `x̂` rounded to half, `w ⊙ x̂` in half |
//! | q/k/v/o, gate/fc1/fc2, GELU, gating product | fp32 | half |
//! | position bias + padding mask (`attn_mask`) | fp32 | half |
//! | scores `q·kᵀ + mask` and softmax | fp32 | fp32 inside `Attention` (`softmax_precision`) |
//! | `P·V` | fp32 | half |
//! | `last_hidden_state` | fp32 | half, cast to fp32 at the boundary |
//!
//! fp16 range: ORIG's `fp16_clamp` clamps the hidden states to
//! `±(65504 − 1000)` (64512 once rounded to fp16) after every residual add
//! when they hold an infinity; the fp16 graph clamps there unconditionally
//! (finite values in (64512, 65504] are the only difference, and they are
//! one rounding from overflow anyway). The padding constant is `finfo(dtype).min` as in ORIG for fp32
//! and bf16, but `−32768` for fp16: `−65504` plus a negative score rounds to
//! `−inf` in fp16 arithmetic, and a row of `−inf` is NaN; half the range
//! still gives masked keys exactly zero weight.
//!
//! Weights are addressed by their original names (`blocks.3.attn.q.weight`),
//! which also name the ONNX initializers and nodes (`blocks.3.attn.q/MatMul`);
//! the diffusers layout is renamed by `crate::names`.

use wanrt_core::{DType, NetworkContract, Precision, Profile, Umt5Config};

use crate::builder::{GraphBuilder, IoDim, Value, attr};
use crate::error::{Error, Result};
use crate::layers::{self, io_dims};
use crate::weights::Weights;

/// Options of a text-encoder export.
#[derive(Debug, Clone, Default)]
pub struct T5Options {
    pub precision: Precision,
    /// Adds `intermediate.token_embedding` and `intermediate.block_{i}_out`
    /// as extra float32 outputs, for hunting numeric mismatches.
    pub debug_outputs: bool,
}

const F32: DType = DType::Float32;

/// ORIG's `fp16_clamp` bound: `finfo(float16).max − 1000`.
pub const FP16_CLAMP: f32 = 65504.0 - 1000.0;

/// The additive value for a padded key in `dtype` (see the module doc).
pub fn mask_value(dtype: DType) -> f32 {
    match dtype {
        DType::Float16 => -32768.0,
        // finfo(bfloat16).min: the largest finite bf16, negated.
        DType::Bfloat16 => -half::bf16::MAX.to_f32(),
        _ => f32::MIN,
    }
}

/// The relative-position bucket of `rel = key − query` (§4.3,
/// bidirectional), computed the way `T5RelativeEmbedding` does: the
/// logarithmic part in float32 (`torch.log` of a float tensor divided by the
/// Python float `log(max_distance / max_exact)` and multiplied by an int, then
/// truncated), so that bucket edges fall where the reference puts them.
pub fn relative_bucket(rel: i64, num_buckets: u32, max_distance: u32) -> i64 {
    let half = i64::from(num_buckets / 2);
    let base = if rel > 0 { half } else { 0 };
    let n = rel.unsigned_abs() as i64;
    let max_exact = half / 2;
    if n < max_exact {
        return base + n;
    }
    let ln_ratio = (n as f32 / max_exact as f32).ln();
    let denom = (f64::from(max_distance) / max_exact as f64).ln() as f32;
    let large = max_exact + (ln_ratio / denom * (half - max_exact) as f32) as i64;
    base + large.min(half - 1)
}

/// The `[len, len]` bucket table, row = query position, column = key.
pub fn bucket_table(len: usize, num_buckets: u32, max_distance: u32) -> Vec<i64> {
    let mut t = Vec::with_capacity(len * len);
    for i in 0..len as i64 {
        for j in 0..len as i64 {
            t.push(relative_bucket(j - i, num_buckets, max_distance));
        }
    }
    t
}

struct T5<'a, 'b, 'i> {
    b: &'a mut GraphBuilder<'i>,
    w: Weights<'b>,
    cfg: &'a Umt5Config,
    /// Compute dtype: weights, matrix work and the residual stream.
    c: DType,
    eps: f32,
    /// `[d_model]` ones: the scale of the fp32 statistics step of the half
    /// graphs' RMS norms (the weight is applied after rounding).
    ones: Option<Value>,
}

impl T5<'_, '_, '_> {
    /// A bias-free Linear `x · Wᵀ` (weight stored transposed, `[in, out]`).
    fn linear(&mut self, prefix: &str, x: &Value, inf: u32, outf: u32) -> Result<Value> {
        layers::linear(self.b, &self.w, prefix, x, inf, outf, self.c, false)
    }

    /// T5 RMS LayerNorm (weight only). Statistics in fp32; in the half
    /// graphs the normalised value is rounded to half before the weight
    /// multiplies it, as ORIG's `x.type_as(self.weight)` does.
    fn rms_norm(&mut self, prefix: &str, x: &Value) -> Result<Value> {
        let d = self.cfg.d_model as usize;
        let (wn, wt) = self.w.pp(prefix).get("weight", &[d])?;
        let (c, eps, ones) = (self.c, self.eps, self.ones.clone());
        self.b.scoped(prefix, |b| {
            let w = b.weight(&wn, &wt, c, false)?;
            let Some(ones) = ones else {
                return Ok(b.rms_norm(x, &w, eps));
            };
            let x = b.cast(x, F32);
            let xhat = b.rms_norm(&x, &ones, eps);
            let xhat = b.cast(&xhat, c);
            Ok(b.mul(&xhat, &w))
        })
    }

    /// `x + y`, clamped like ORIG's `fp16_clamp` in the fp16 graph.
    fn residual(&mut self, scope: &str, x: &Value, y: &Value) -> Result<Value> {
        let c = self.c;
        self.b.scoped(scope, |b| {
            let s = b.add(x, y);
            if c != DType::Float16 {
                return Ok(s);
            }
            let (lo, hi) = (b.scalar(-FP16_CLAMP, c), b.scalar(FP16_CLAMP, c));
            Ok(b.op("Clip", &[&s, &lo, &hi], vec![], c))
        })
    }

    fn self_attn(&mut self, p: &str, h: &Value, pad: &Value, buckets: &Value) -> Result<Value> {
        let cfg = self.cfg;
        let (d, inner, heads) = (cfg.d_model, cfg.inner_dim(), cfg.num_heads);
        let q = self.linear(&format!("{p}.attn.q"), h, d, inner)?; // [b, L, heads·d_kv]
        let k = self.linear(&format!("{p}.attn.k"), h, d, inner)?;
        let v = self.linear(&format!("{p}.attn.v"), h, d, inner)?;
        let pe = format!("{p}.pos_embedding");
        let (tn, tt) = self.w.pp(&pe).pp("embedding").get(
            "weight",
            &[cfg.num_buckets as usize, cfg.num_heads as usize],
        )?;
        let c = self.c;
        let neg = mask_value(c);
        let mask = self.b.scoped(&pe, |b| {
            let table = b.weight(&tn, &tt, c, false)?;
            let bias = b.op("Gather", &[&table, buckets], vec![], c); // [L, L, heads]
            let bias = b.transpose(&bias, &[2, 0, 1]); // [heads, L, L]
            let bias = b.unsqueeze(&bias, &[0]); // [1, heads, L, L]
            // ORIG replaces the bias of padded keys by finfo.min.
            let neg = b.scalar(neg, c);
            Ok(b.op("Where", &[pad, &neg, &bias], vec![], c)) // [b, heads, L, L]
        })?;
        let o = self.b.scoped(&format!("{p}.attn"), |b| {
            Ok(b.op(
                "Attention",
                &[&q, &k, &v, &mask],
                vec![
                    attr::int("q_num_heads", heads as i64),
                    attr::int("kv_num_heads", heads as i64),
                    // T5 does not scale the scores.
                    attr::float("scale", 1.0),
                    // ORIG: softmax(attn.float()).
                    attr::int("softmax_precision", F32.onnx_code() as i64),
                ],
                c,
            )) // [b, L, heads·d_kv]
        })?;
        self.linear(&format!("{p}.attn.o"), &o, inner, d)
    }

    fn ffn(&mut self, p: &str, h: &Value) -> Result<Value> {
        let (d, ff) = (self.cfg.d_model, self.cfg.d_ff);
        let g = self.linear(&format!("{p}.ffn.gate.0"), h, d, ff)?;
        let g = self
            .b
            .scoped(&format!("{p}.ffn.gate.1"), |b| Ok(b.gelu(&g, true)))?;
        let f = self.linear(&format!("{p}.ffn.fc1"), h, d, ff)?;
        let y = self.b.scoped(&format!("{p}.ffn"), |b| Ok(b.mul(&f, &g)))?; // [b, L, d_ff]
        self.linear(&format!("{p}.ffn.fc2"), &y, ff, d)
    }
}

/// Checks what the graph relies on beyond what `Umt5Config::from_hf` checks.
fn validate(cfg: &Umt5Config) -> Result<()> {
    let bad = |m: String| Err(Error::Invalid(format!("UMT5 config: {m}")));
    if cfg.vocab_size == 0 || cfg.d_model == 0 || cfg.d_ff == 0 || cfg.num_layers == 0 {
        return bad("vocab_size, d_model, d_ff and num_layers must be positive".into());
    }
    if cfg.num_heads == 0 || cfg.d_kv == 0 {
        return bad("num_heads and d_kv must be positive".into());
    }
    if cfg.num_buckets < 4 || !cfg.num_buckets.is_multiple_of(2) || cfg.max_distance == 0 {
        return bad(format!(
            "{} relative buckets / max distance {}: the bidirectional bucketing needs an even number ≥ 4 of buckets and a positive distance",
            cfg.num_buckets, cfg.max_distance
        ));
    }
    if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
        return bad(format!("layer_norm_epsilon {} must be positive", cfg.eps));
    }
    Ok(())
}

/// Builds the text-encoder graph into `b`, reading weights through `w`.
pub fn build(
    b: &mut GraphBuilder<'_>,
    w: Weights<'_>,
    cfg: &Umt5Config,
    profile: &Profile,
    opts: &T5Options,
) -> Result<()> {
    validate(cfg)?;
    let contract = NetworkContract::text_encoder(cfg, profile);
    let c = opts.precision.compute_dtype();
    let (l, dd) = (profile.text_len as i64, cfg.d_model as i64);
    if l == 0 {
        return Err(Error::Invalid("text length must be at least 1".into()));
    }

    let mut inputs = Vec::new();
    for spec in &contract.inputs {
        inputs.push(b.input(&spec.name, spec.dtype, &io_dims(&spec.shape)));
    }
    let (ids, mask) = (&inputs[0], &inputs[1]);
    let mut debug: Vec<(String, Value)> = Vec::new();

    let ones = if c == F32 {
        None
    } else {
        let d = cfg.d_model as usize;
        Some(b.const_f32("norm_ones", &[d as i64], &vec![1.0; d], F32)?)
    };
    let mut t5 = T5 {
        b,
        w,
        cfg,
        c,
        eps: cfg.eps as f32,
        ones,
    };

    // Token embedding: a plain row gather, streamed to external data in
    // chunks by the builder (256384 × 4096 for XXL).
    let (en, et) = t5.w.get(
        "token_embedding.weight",
        &[cfg.vocab_size as usize, cfg.d_model as usize],
    )?;
    let mut x = t5.b.scoped("token_embedding", |b| {
        let table = b.weight(&en, &et, c, false)?;
        Ok(b.op("Gather", &[&table, ids], vec![], c)) // [b, L, d]
    })?;
    debug.push(("token_embedding".into(), x.clone()));

    // Shared by every layer: which keys are padding, and the bucket of
    // each (query, key) pair for this profile's text length.
    let (pad, buckets) = t5.b.scoped("attention_mask", |b| {
        let zero = b.const_i64(&[0]);
        let pad = b.op("Equal", &[mask, &zero], vec![], DType::Bool); // [b, L]
        let pad = b.reshape(&pad, &[0, 1, 1, l]); // [b, 1, 1, L]
        let table = bucket_table(l as usize, cfg.num_buckets, cfg.max_distance);
        let buckets = b.const_i64_tensor("relative_position_buckets", &[l, l], &table)?; // [L, L]
        Ok((pad, buckets))
    })?;

    for i in 0..cfg.num_layers {
        let p = format!("blocks.{i}");
        let h = t5.rms_norm(&format!("{p}.norm1"), &x)?;
        let y = t5.self_attn(&p, &h, &pad, &buckets)?;
        x = t5.residual(&p, &x, &y)?;
        let h = t5.rms_norm(&format!("{p}.norm2"), &x)?;
        let y = t5.ffn(&p, &h)?;
        x = t5.residual(&p, &x, &y)?;
        debug.push((format!("block_{i}_out"), x.clone()));
    }
    let out = t5.rms_norm("norm", &x)?;

    let b = &mut *t5.b;
    let out = b.scoped("norm", |b| Ok(b.cast(&out, F32)))?; // [b, L, d]
    let spec = &contract.outputs[0];
    let dims = io_dims(&spec.shape);
    b.output(&out, &spec.name, Some(&dims));
    if opts.debug_outputs {
        for (name, v) in debug {
            let v = b.cast(&v, F32);
            let dims = [dims[0].clone(), IoDim::Fixed(l), IoDim::Fixed(dd)];
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

    fn tiny() -> Umt5Config {
        Umt5Config {
            vocab_size: 50,
            d_model: 8,
            d_kv: 3,
            d_ff: 16,
            num_layers: 2,
            num_heads: 2,
            ..Umt5Config::xxl()
        }
    }

    fn graph(precision: Precision) -> (crate::onnx::GraphProto, BTreeMap<String, Vec<usize>>) {
        let src = Zeros(Default::default());
        let mut b = GraphBuilder::new("text_encoder", None).unwrap();
        let p = Profile::custom(32, 32, 9, 20).unwrap();
        let opts = T5Options {
            precision,
            debug_outputs: false,
        };
        build(&mut b, Weights::new(&src), &tiny(), &p, &opts).unwrap();
        (
            b.finish("").unwrap().model.graph.unwrap(),
            src.0.into_inner(),
        )
    }

    #[test]
    fn reads_every_original_name_with_its_shape() {
        let (_, asked) = graph(Precision::Fp32);
        assert_eq!(asked.len(), 1 + 2 * 10 + 1);
        assert_eq!(asked["token_embedding.weight"], [50, 8]);
        // Attention inner width heads·d_kv = 6 differs from d_model = 8.
        assert_eq!(asked["blocks.1.attn.q.weight"], [6, 8]);
        assert_eq!(asked["blocks.1.attn.o.weight"], [8, 6]);
        assert_eq!(asked["blocks.0.pos_embedding.embedding.weight"], [32, 2]);
        assert_eq!(asked["blocks.0.ffn.gate.0.weight"], [16, 8]);
        assert_eq!(asked["blocks.0.ffn.fc2.weight"], [8, 16]);
        assert_eq!(asked["norm.weight"], [8]);
    }

    #[test]
    fn half_precision_island_map() {
        for (precision, half) in [
            (Precision::Fp16, DType::Float16),
            (Precision::Bf16, DType::Bfloat16),
        ] {
            let (g, _) = graph(precision);
            let (h, f32) = (half.onnx_code(), F32.onnx_code());
            let out_dtype = |name: &str| {
                g.value_info
                    .iter()
                    .chain(&g.output)
                    .find(|v| v.name == name)
                    .and_then(|v| match v.r#type.as_ref()?.value.as_ref()? {
                        crate::onnx::type_proto::Value::TensorType(t) => Some(t.elem_type),
                    })
                    .unwrap_or_else(|| panic!("no value_info for {name}"))
            };
            let mut seen = BTreeMap::<&str, usize>::new();
            for n in &g.node {
                let want = match n.op_type.as_str() {
                    // Matrix work, the bias/mask, the gated product and the
                    // residual stream: half.
                    "Gather" | "MatMul" | "Attention" | "Gelu" | "Where" | "Add" | "Mul"
                    | "Clip" => h,
                    // The statistics of every T5 norm.
                    "RMSNormalization" => f32,
                    _ => continue,
                };
                *seen.entry(n.op_type.as_str()).or_default() += 1;
                for o in &n.output {
                    assert_eq!(
                        out_dtype(o),
                        want,
                        "{precision}: {} ({})",
                        n.name,
                        n.op_type
                    );
                }
                if n.op_type == "Attention" {
                    let a = |k: &str| n.attribute.iter().find(|a| a.name == k).unwrap();
                    assert_eq!(a("scale").f, 1.0);
                    assert_eq!(a("softmax_precision").i, f32 as i64);
                }
            }
            assert_eq!(seen["RMSNormalization"], 5);
            assert_eq!(seen["MatMul"], 14);
            assert_eq!(seen["Attention"], 2);
            // Two residual adds per layer; fp16 clamps after each (ORIG's
            // fp16_clamp), bf16 has the range of fp32 and does not.
            assert_eq!(seen["Add"], 4);
            let clips = seen.get("Clip").copied().unwrap_or(0);
            assert_eq!(clips, if half == DType::Float16 { 4 } else { 0 });
            assert_eq!(out_dtype("last_hidden_state"), f32);
        }
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        let p = Profile::custom(32, 32, 9, 16).unwrap();
        for edit in [
            (|c: &mut Umt5Config| c.num_buckets = 5) as fn(&mut Umt5Config),
            |c| c.num_heads = 0,
            |c| c.eps = 0.0,
            |c| c.max_distance = 0,
        ] {
            let mut cfg = tiny();
            edit(&mut cfg);
            let mut b = GraphBuilder::new("text_encoder", None).unwrap();
            let src = Zeros(Default::default());
            let e = build(&mut b, Weights::new(&src), &cfg, &p, &T5Options::default()).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Invalid, "{e}");
        }
    }

    /// The same bucketing in float64 (the formula as written in `docs/WAN.md` §4.3).
    fn bucket_f64(rel: i64) -> i64 {
        let base = if rel > 0 { 16 } else { 0 };
        let n = rel.abs();
        if n < 8 {
            return base + n;
        }
        let v = ((n as f64 / 8.0).ln() / 16f64.ln() * 8.0) as i64;
        base + (8 + v).min(15)
    }

    #[test]
    fn buckets_follow_the_spec() {
        // Exact region, both directions: keys after the query use 16..31.
        assert_eq!(relative_bucket(0, 32, 128), 0);
        assert_eq!(relative_bucket(-7, 32, 128), 7);
        assert_eq!(relative_bucket(7, 32, 128), 23);
        assert_eq!(relative_bucket(1, 32, 128), 17);
        // Logarithmic region: edges at 8·16^(k/8) (16, 32, 64 are exact
        // powers and must land on the upper side, as in float32 torch).
        assert_eq!(relative_bucket(-8, 32, 128), 8);
        assert_eq!(relative_bucket(-15, 32, 128), 9);
        assert_eq!(relative_bucket(-16, 32, 128), 10);
        assert_eq!(relative_bucket(-32, 32, 128), 12);
        assert_eq!(relative_bucket(-64, 32, 128), 14);
        assert_eq!(relative_bucket(-127, 32, 128), 15);
        assert_eq!(relative_bucket(-5000, 32, 128), 15);
        assert_eq!(relative_bucket(5000, 32, 128), 31);
        // float32 and float64 agree everywhere a profile can reach.
        for r in -4096..=4096 {
            assert_eq!(relative_bucket(r, 32, 128), bucket_f64(r), "rel {r}");
        }
    }

    #[test]
    fn bucket_table_is_query_major() {
        let t = bucket_table(3, 32, 128);
        // Row 0 (query 0): keys 0, 1, 2 are after it → 16 + n.
        assert_eq!(&t[..3], &[0, 17, 18]);
        // Row 2: keys before it → n.
        assert_eq!(&t[6..], &[2, 1, 0]);
    }

    #[test]
    fn mask_values_are_finite_in_their_dtype() {
        assert_eq!(
            half::f16::from_f32(mask_value(DType::Float16)).to_f32(),
            -32768.0
        );
        assert!(
            half::bf16::from_f32(mask_value(DType::Bfloat16))
                .to_f32()
                .is_finite()
        );
        assert_eq!(mask_value(DType::Float32), f32::MIN);
    }
}

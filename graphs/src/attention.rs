//! Scaled dot-product attention in the formulation the builder was set to
//! ([`AttentionKind`], `docs/WAN.md` §11): the opset-23 `Attention` op for
//! GPU providers, ONNX Runtime's `com.microsoft.MultiHeadAttention` or
//! `MatMul → Softmax → MatMul` for its CPU provider. All three take and give
//! `[b, s, heads·d]` tensors and compute `softmax(q·kᵀ/√d)·v`.

use wanrt_core::AttentionKind;

use crate::builder::{GraphBuilder, Value, attr_float, attr_int};

/// The operator domain of ONNX Runtime's contrib ops.
pub const MS_DOMAIN: &str = "com.microsoft";

/// `1/√d` rounded once to f32.
fn inv_sqrt(d: u32) -> f32 {
    (1.0 / (d as f64).sqrt()) as f32
}

impl GraphBuilder<'_> {
    /// `softmax(q·kᵀ/√d)·v` of `[b, s_q, heads·d]` queries and `[b, s_kv,
    /// heads·d]` keys and values, in the builder's [`AttentionKind`].
    pub fn sdpa(&mut self, q: &Value, k: &Value, v: &Value, heads: u32, head_dim: u32) -> Value {
        match self.attention_kind() {
            AttentionKind::Onnx => self.attention(q, k, v, heads),
            AttentionKind::Mha => {
                // Scale 1/√d is the op's default; written out for the reader.
                let o = self.op(
                    "MultiHeadAttention",
                    &[q, k, v],
                    vec![
                        attr_int("num_heads", heads as i64),
                        attr_float("scale", inv_sqrt(head_dim)),
                    ],
                    q.dtype,
                );
                self.set_last_domain(MS_DOMAIN);
                o
            }
            AttentionKind::Matmul => self.sdpa_matmul(q, k, v, heads, head_dim),
        }
    }

    /// Cross-attention (the video's queries over the text or image tokens,
    /// a few hundred keys): as [`GraphBuilder::sdpa`], except that an
    /// `mha` graph takes the `Attention` op here. ONNX Runtime's CPU
    /// provider runs the op faster than `MultiHeadAttention` for 128 keys at
    /// every query count measured, 480 to 3,000 queries, by 1.25–1.4×
    /// (`docs/MEASUREMENTS.md`, "Attention formulations alone"); the flash
    /// kernel pays off on long key sequences only.
    pub fn sdpa_cross(
        &mut self,
        q: &Value,
        k: &Value,
        v: &Value,
        heads: u32,
        head_dim: u32,
    ) -> Value {
        match self.attention_kind() {
            AttentionKind::Mha => self.attention(q, k, v, heads),
            _ => self.sdpa(q, k, v, heads, head_dim),
        }
    }

    /// `MatMul → Softmax → MatMul` on `[b, heads, s, d]`, with `1/√d`
    /// applied to q (`s_q·heads·d` multiplies instead of `heads·s_q·s_kv`)
    /// and kᵀ taken by the transpose that splits the heads.
    fn sdpa_matmul(&mut self, q: &Value, k: &Value, v: &Value, heads: u32, d: u32) -> Value {
        let split = [0, 0, heads as i64, d as i64];
        let scale = self.scalar(inv_sqrt(d), q.dtype);
        let q = self.mul(q, &scale);
        let q = self.reshape(&q, &split);
        let q = self.transpose(&q, &[0, 2, 1, 3]); // [b, h, s_q, d]
        let k = self.reshape(k, &split);
        let kt = self.transpose(&k, &[0, 2, 3, 1]); // [b, h, d, s_kv]
        let v = self.reshape(v, &split);
        let v = self.transpose(&v, &[0, 2, 1, 3]); // [b, h, s_kv, d]
        let s = self.matmul(&q, &kt); // [b, h, s_q, s_kv]
        let p = self.op("Softmax", &[&s], vec![attr_int("axis", -1)], s.dtype);
        let o = self.matmul(&p, &v); // [b, h, s_q, d]
        let o = self.transpose(&o, &[0, 2, 1, 3]); // [b, s_q, h, d]
        self.reshape(&o, &[0, 0, (heads * d) as i64])
    }
}

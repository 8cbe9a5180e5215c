//! Quantized block linears of the DiT (`--precision fp8|int8`) and the
//! activation taps calibration reads (`docs/PRECISION.md`, "Quantized DiT
//! engines").
//!
//! FP8 (for TensorRT; runnable on ONNX Runtime's CPU provider with an fp32
//! base):
//!
//! ```text
//! x ─Cast(base)─ QuantizeLinear(s_x, zp=0) ─ DequantizeLinear(s_x, zp=0) ─┐
//! W_fp8 [in, out] ─ DequantizeLinear(s_w [out], axis=1) ──────────────────┴ MatMul ─ Add(b)
//! ```
//!
//! `s_x` is the calibrated per-tensor scale (amax / 448), `s_w` one scale
//! per output channel (row amax / 448); both are constants of the base type
//! (fp32 for an fp32 base; rounded to the half type otherwise, and the
//! weights are quantized with the rounded scale so that DequantizeLinear
//! reproduces exactly what was quantized). This is the Q→DQ→MatMul pattern
//! TensorRT fuses into an FP8 GEMM.
//!
//! INT8 (W8A8 for ONNX Runtime's CPU provider, fp32 around it):
//!
//! ```text
//! x ─ DynamicQuantizeLinear ─(u8, s_x, zp_x)─ MatMulInteger(W_i8 [in, out], zp_w=0) ─ Cast(f32)
//!                               s_x ─ Mul(s_w [out]) ─────────────────────────────── Mul ─ Add(b)
//! ```
//!
//! the pattern ONNX Runtime fuses into `DynamicQuantizeMatMul`.

use std::collections::BTreeMap;

use half::{bf16, f16};
use wanrt_core::quant::{FP8_E4M3_MAX, INT8_WEIGHT_MAX};
use wanrt_core::{DType, QuantLayers, QuantScheme};

use crate::builder::{GraphBuilder, Value, attr};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// What the exporter quantizes and with which activation scales.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantPlan {
    pub scheme: QuantScheme,
    pub layers: QuantLayers,
    /// FP8: the input scale of every quantized linear, by weight path.
    pub activation_scales: BTreeMap<String, f32>,
}

impl QuantPlan {
    /// The plan if it quantizes the linear at `prefix`.
    pub fn covering<'p>(plan: Option<&'p QuantPlan>, prefix: &str) -> Option<&'p QuantPlan> {
        plan.filter(|p| p.layers.covers(prefix))
    }
}

/// Rounds `x` to FP8 E4M3 (`FLOAT8E4M3FN`), nearest-even, saturating at
/// ±448 as ONNX QuantizeLinear does (`saturate=1`); NaN → 0x7F.
pub fn f32_to_e4m3(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a.is_nan() {
        return 0x7F;
    }
    if a >= FP8_E4M3_MAX {
        return sign | 0x7E;
    }
    // Below 2^-6 the format is subnormal: steps of 2^-9 (code = steps;
    // 8 steps is the smallest normal, code 0x08, so the carry works).
    if a < f32::powi(2.0, -6) {
        let q = (a * 512.0).round_ties_even() as u8;
        return sign | q;
    }
    let e = a.log2().floor() as i32;
    // log2 may round at exact powers of two; fix e so 2^e <= a < 2^(e+1).
    let e = if f32::powi(2.0, e) > a {
        e - 1
    } else if f32::powi(2.0, e + 1) <= a {
        e + 1
    } else {
        e
    };
    let m = ((a / f32::powi(2.0, e) - 1.0) * 8.0).round_ties_even() as i32;
    let (e, m) = if m == 8 { (e + 1, 0) } else { (e, m) };
    let code = (((e + 7) as u32) << 3 | m as u32).min(0x7E) as u8;
    sign | code
}

/// The value of an FP8 E4M3FN code.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0x0F) as i32;
    let m = (b & 0x07) as f32;
    if e == 15 && b & 0x07 == 7 {
        return f32::NAN;
    }
    let v = if e == 0 {
        m * f32::powi(2.0, -9)
    } else {
        (1.0 + m / 8.0) * f32::powi(2.0, e - 7)
    };
    sign * v
}

/// `v` as stored in `dtype` and read back (the scale a half-type graph
/// actually holds).
fn round_to(v: f32, dtype: DType) -> f32 {
    match dtype {
        DType::Bfloat16 => bf16::from_f32(v).to_f32(),
        DType::Float16 => f16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Per-output-channel symmetric quantization of a checkpoint weight
/// `[out, in]` (row-major): the scales `[out]` (as held in `scale_dtype`)
/// and the codes transposed to `[in, out]`.
pub fn quantize_weight(
    w: &[f32],
    out: usize,
    inf: usize,
    scheme: QuantScheme,
    scale_dtype: DType,
) -> (Vec<f32>, Vec<u8>) {
    let qmax = match scheme {
        QuantScheme::Fp8 => FP8_E4M3_MAX,
        QuantScheme::Int8 => INT8_WEIGHT_MAX,
    };
    let scales: Vec<f32> = w
        .chunks_exact(inf)
        .map(|row| {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            // An all-zero row quantizes to zeros under any scale; 1 keeps it
            // positive and finite. A half-type scale must not round to 0.
            let s = if amax > 0.0 && amax.is_finite() {
                amax / qmax
            } else {
                1.0
            };
            let r = round_to(s, scale_dtype);
            if r > 0.0 && r.is_finite() { r } else { 1.0 }
        })
        .collect();
    let mut codes = vec![0u8; out * inf];
    for (o, (row, &s)) in w.chunks_exact(inf).zip(&scales).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            let q = v / s;
            codes[i * out + o] = match scheme {
                QuantScheme::Fp8 => f32_to_e4m3(q),
                QuantScheme::Int8 => {
                    (q.round_ties_even().clamp(-INT8_WEIGHT_MAX, INT8_WEIGHT_MAX) as i8) as u8
                }
            };
        }
    }
    (scales, codes)
}

/// A quantized `x · Wᵀ + b` for the linear at `prefix`, computing in `base`
/// around the quantized product; output in `base` (FP8) or float32 (INT8).
pub fn linear(
    b: &mut GraphBuilder<'_>,
    w: &Weights<'_>,
    prefix: &str,
    x: &Value,
    (inf, outf): (u32, u32),
    base: DType,
    plan: &QuantPlan,
) -> Result<Value> {
    let wp = w.pp(prefix);
    let (wn, wt) = wp.get("weight", &[outf as usize, inf as usize])?;
    let (bn, bt) = wp.get("bias", &[outf as usize])?;
    let full = w.path(prefix);
    let scale_dtype = match plan.scheme {
        QuantScheme::Fp8 => base,
        QuantScheme::Int8 => DType::Float32,
    };
    let code_dtype = match plan.scheme {
        QuantScheme::Fp8 => DType::Float8E4m3fn,
        QuantScheme::Int8 => DType::Int8,
    };
    let (out, inn) = (outf as usize, inf as usize);
    let location = "checkpoint";
    b.scoped(&full, |b| {
        // Quantized while streaming: one tensor in f32 at a time, and only
        // when no earlier graph of this export wrote it.
        let mut codes: Option<Vec<u8>> = None;
        let scale_name = format!("{wn}_scale");
        let doc = format!("per-output-channel scales of {wn} ({})", plan.scheme);
        let ws = b.derived_weight(&scale_name, scale_dtype, &[outf as i64], &doc, || {
            let v = wt.to_f32(&wn, location)?;
            let (scales, c) = quantize_weight(&v, out, inn, plan.scheme, scale_dtype);
            codes = Some(c);
            Ok(encode(&scales, scale_dtype))
        })?;
        let doc = format!("{} codes, transposed to [in, out]", plan.scheme);
        let wq = b.derived_weight(
            &wn,
            code_dtype,
            &[inf as i64, outf as i64],
            &doc,
            || match codes.take() {
                Some(c) => Ok(c),
                None => {
                    let v = wt.to_f32(&wn, location)?;
                    Ok(quantize_weight(&v, out, inn, plan.scheme, scale_dtype).1)
                }
            },
        )?;
        match plan.scheme {
            QuantScheme::Fp8 => {
                let s = plan.activation_scales.get(&full).copied().ok_or_else(|| {
                    Error::Invalid(format!(
                        "no calibrated activation scale for {full} (the FP8 plan covers it)"
                    ))
                })?;
                if !(s > 0.0 && s.is_finite()) {
                    return Err(Error::Invalid(format!(
                        "activation scale of {full} is {s}: scales must be finite and positive"
                    )));
                }
                let s = round_to(s, base);
                let wdq = b.op(
                    "DequantizeLinear",
                    &[&wq, &ws],
                    vec![attr::int("axis", 1)],
                    base,
                );
                let xs = b.const_f32("input_scale", &[], &[s], base)?;
                let zp = b.scalar_raw(DType::Float8E4m3fn, &[0]);
                let x = b.cast(x, base);
                let xq = b.op(
                    "QuantizeLinear",
                    &[&x, &xs, &zp],
                    vec![],
                    DType::Float8E4m3fn,
                );
                let xdq = b.op("DequantizeLinear", &[&xq, &xs, &zp], vec![], base);
                let y = b.matmul(&xdq, &wdq);
                let bv = b.weight(&bn, &bt, base, false)?;
                Ok(b.add(&y, &bv))
            }
            QuantScheme::Int8 => {
                let x = b.cast(x, DType::Float32);
                let q = b.op_n(
                    "DynamicQuantizeLinear",
                    &[&x],
                    vec![],
                    &[DType::Uint8, DType::Float32, DType::Uint8],
                );
                let wzp = b.scalar_raw(DType::Int8, &[0]);
                let yi = b.op(
                    "MatMulInteger",
                    &[&q[0], &wq, &q[2], &wzp],
                    vec![],
                    DType::Int32,
                );
                let m = b.mul(&q[1], &ws);
                let yf = b.cast(&yi, DType::Float32);
                let y = b.mul(&yf, &m);
                let bv = b.weight(&bn, &bt, DType::Float32, false)?;
                Ok(b.add(&y, &bv))
            }
        }
    })
}

fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    crate::builder::encode_f32(values, dtype)
}

/// `max |x|` over every axis but the batch: `[b]` float32 (the
/// activation amax calibration records, per CFG branch).
pub fn amax_tap(b: &mut GraphBuilder<'_>, x: &Value, rank: usize) -> Value {
    let x = b.cast(x, DType::Float32);
    let a = b.op("Abs", &[&x], vec![], DType::Float32);
    let axes: Vec<i64> = (1..rank as i64).collect();
    let axes = b.const_i64(&axes);
    b.op(
        "ReduceMax",
        &[&a, &axes],
        vec![attr::int("keepdims", 0)],
        DType::Float32,
    )
}

/// Graph output name of the amax tap of the linear at `prefix`.
pub fn tap_output(prefix: &str) -> String {
    format!("calibration.{prefix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_codes_round_trip_and_round_to_nearest_even() {
        for code in 0u8..=255 {
            let v = e4m3_to_f32(code);
            if v.is_nan() {
                assert_eq!(code & 0x7F, 0x7F);
                continue;
            }
            let back = f32_to_e4m3(v);
            // +0 and −0 are distinct codes of equal value.
            assert_eq!(back, code, "code {code:#04x} = {v}");
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(f32_to_e4m3(1e6), 0x7E);
        assert_eq!(f32_to_e4m3(-1e6), 0xFE);
        // 1 + 1/16 lies halfway between 1 (even mantissa 0) and 1.125.
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.0625)), 1.0);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.1875)), 1.25);
        // Subnormal halfway 0.5·2⁻⁹ rounds to even (0).
        assert_eq!(f32_to_e4m3(f32::powi(2.0, -10)), 0);
        // Every positive code interval: a value just above the midpoint
        // rounds up.
        for code in 0u8..0x7E {
            let (lo, hi) = (e4m3_to_f32(code), e4m3_to_f32(code + 1));
            let mid = (lo + hi) / 2.0;
            let above = mid + (hi - lo) * 1e-3;
            assert_eq!(f32_to_e4m3(above), code + 1, "above {mid}");
        }
    }

    #[test]
    fn weights_quantize_per_output_channel_transposed() {
        // 2 outputs × 3 inputs; row 1 is ten times row 0.
        let w = [0.1, -0.2, 0.4, 1.0, -2.0, 4.0];
        let (s, c) = quantize_weight(&w, 2, 3, QuantScheme::Int8, DType::Float32);
        assert_eq!(s, vec![0.4 / 127.0, 4.0 / 127.0]);
        // [in, out]: codes of input 2 are both the channel maximum.
        assert_eq!(c[2 * 2] as i8, 127);
        assert_eq!(c[2 * 2 + 1] as i8, 127);
        // Input 1 of output 1 (index 1·2 + 1): −2 / (4/127) = −63.5 → −64 (even).
        assert_eq!(c[3] as i8, -64);
        let (s8, c8) = quantize_weight(&w, 2, 3, QuantScheme::Fp8, DType::Float32);
        assert_eq!(s8[1], 4.0 / 448.0);
        assert_eq!(e4m3_to_f32(c8[2 * 2 + 1]), 448.0);
        // A half-type scale is the rounded value the graph holds.
        let (sb, _) = quantize_weight(&w, 2, 3, QuantScheme::Fp8, DType::Bfloat16);
        assert_eq!(sb[0], bf16::from_f32(0.4 / 448.0).to_f32());
        let zero = [0.0; 3];
        let (sz, cz) = quantize_weight(&zero, 1, 3, QuantScheme::Fp8, DType::Float32);
        assert_eq!((sz, cz), (vec![1.0], vec![0, 0, 0]));
    }
}

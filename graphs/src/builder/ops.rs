//! The operator helpers of [`GraphBuilder`]: one method per ONNX op wanrt
//! emits, each typed (the output dtype follows the inputs or the op).

use wanrt_core::DType;

use super::{GraphBuilder, Value, attr_float, attr_int, attr_ints, attr_string};
use crate::error::Result;

impl GraphBuilder<'_> {
    // ---- elementwise -------------------------------------------------

    fn binary(&mut self, op: &str, a: &Value, b: &Value) -> Value {
        debug_assert_eq!(a.dtype, b.dtype, "{op}({}, {})", a.name, b.name);
        self.op(op, &[a, b], vec![], a.dtype)
    }
    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Add", a, b)
    }
    pub fn sub(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Sub", a, b)
    }
    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Mul", a, b)
    }
    pub fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("MatMul", a, b)
    }
    pub fn sigmoid(&mut self, x: &Value) -> Value {
        self.op("Sigmoid", &[x], vec![], x.dtype)
    }
    /// SiLU as `x · sigmoid(x)` (ONNX has no SiLU op; TensorRT fuses this).
    pub fn silu(&mut self, x: &Value) -> Value {
        let s = self.sigmoid(x);
        self.mul(x, &s)
    }
    /// GELU; `tanh` selects the tanh approximation.
    pub fn gelu(&mut self, x: &Value, tanh: bool) -> Value {
        let attrs = if tanh {
            vec![attr_string("approximate", "tanh")]
        } else {
            vec![]
        };
        self.op("Gelu", &[x], attrs, x.dtype)
    }
    pub fn sin(&mut self, x: &Value) -> Value {
        self.op("Sin", &[x], vec![], x.dtype)
    }
    pub fn cos(&mut self, x: &Value) -> Value {
        self.op("Cos", &[x], vec![], x.dtype)
    }

    /// Casts to `to`; a no-op when `x` already has that dtype.
    pub fn cast(&mut self, x: &Value, to: DType) -> Value {
        if x.dtype == to {
            return x.clone();
        }
        self.op(
            "Cast",
            &[x],
            vec![attr_int("to", to.onnx_code() as i64)],
            to,
        )
    }

    // ---- shapes --------------------------------------------------------

    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.const_i64(shape);
        self.op("Reshape", &[x, &s], vec![], x.dtype)
    }
    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)], x.dtype)
    }
    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.const_i64(axes);
        self.op("Unsqueeze", &[x, &a], vec![], x.dtype)
    }
    pub fn concat(&mut self, xs: &[&Value], axis: i64) -> Value {
        let dtype = xs[0].dtype;
        self.op("Concat", xs, vec![attr_int("axis", axis)], dtype)
    }
    /// Splits `x` into `n` equal parts along `axis`.
    pub fn split(&mut self, x: &Value, axis: i64, n: usize) -> Vec<Value> {
        let dtypes = vec![x.dtype; n];
        self.op_n(
            "Split",
            &[x],
            vec![attr_int("axis", axis), attr_int("num_outputs", n as i64)],
            &dtypes,
        )
    }
    /// `Shape(x)[start..end]`.
    pub fn shape_of(&mut self, x: &Value, start: i64, end: i64) -> Value {
        self.op(
            "Shape",
            &[x],
            vec![attr_int("start", start), attr_int("end", end)],
            DType::Int64,
        )
    }
    pub fn expand(&mut self, x: &Value, shape: &Value) -> Value {
        self.op("Expand", &[x, shape], vec![], x.dtype)
    }

    pub fn div(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Div", a, b)
    }
    pub fn max(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Max", a, b)
    }
    pub fn sqrt(&mut self, x: &Value) -> Value {
        self.op("Sqrt", &[x], vec![], x.dtype)
    }
    /// Sum of squares over `axes`, kept as size-1 axes.
    pub fn reduce_sum_square(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.const_i64(axes);
        self.op(
            "ReduceSumSquare",
            &[x, &a],
            vec![attr_int("keepdims", 1)],
            x.dtype,
        )
    }
    /// `x[starts..ends]` along `axes` (negative indices count from the end).
    pub fn slice(&mut self, x: &Value, starts: &[i64], ends: &[i64], axes: &[i64]) -> Value {
        let (s, e, a) = (
            self.const_i64(starts),
            self.const_i64(ends),
            self.const_i64(axes),
        );
        self.op("Slice", &[x, &s, &e, &a], vec![], x.dtype)
    }
    /// Zero padding; `pads` = begins of every axis, then ends.
    pub fn pad(&mut self, x: &Value, pads: &[i64]) -> Value {
        let p = self.const_i64(pads);
        self.op("Pad", &[x, &p], vec![], x.dtype)
    }
    /// Clamps to `[lo, hi]`.
    pub fn clip(&mut self, x: &Value, lo: f32, hi: f32) -> Value {
        let (l, h) = (self.scalar(lo, x.dtype), self.scalar(hi, x.dtype));
        self.op("Clip", &[x, &l, &h], vec![], x.dtype)
    }
    /// Nearest-neighbour upsampling by integer `scales` per axis.
    pub fn upsample_nearest(&mut self, x: &Value, scales: &[f32]) -> Result<Value> {
        let sc = self.const_f32(
            &format!("resize_scales_{}", scales.len()),
            &[scales.len() as i64],
            scales,
            DType::Float32,
        )?;
        Ok(self.op(
            "Resize",
            &[
                x,
                &Value {
                    name: String::new(),
                    dtype: DType::Float32,
                },
                &sc,
            ],
            vec![
                attr_string("mode", "nearest"),
                attr_string("coordinate_transformation_mode", "asymmetric"),
                attr_string("nearest_mode", "floor"),
            ],
            x.dtype,
        ))
    }

    // ---- normalisation, attention, convolution -------------------------

    /// LayerNormalization over the last axis (statistics in the input type).
    pub fn layer_norm(
        &mut self,
        x: &Value,
        scale: &Value,
        bias: Option<&Value>,
        eps: f32,
    ) -> Value {
        let mut ins = vec![x, scale];
        if let Some(b) = bias {
            ins.push(b);
        }
        self.op(
            "LayerNormalization",
            &ins,
            vec![attr_int("axis", -1), attr_float("epsilon", eps)],
            x.dtype,
        )
    }
    /// RMSNormalization over the last axis.
    pub fn rms_norm(&mut self, x: &Value, scale: &Value, eps: f32) -> Value {
        self.op(
            "RMSNormalization",
            &[x, scale],
            vec![attr_int("axis", -1), attr_float("epsilon", eps)],
            x.dtype,
        )
    }
    /// Scaled dot-product attention on `[b, s, heads·d]` tensors (opset 23
    /// `Attention`, scale 1/√d).
    pub fn attention(&mut self, q: &Value, k: &Value, v: &Value, heads: u32) -> Value {
        self.op(
            "Attention",
            &[q, k, v],
            vec![
                attr_int("q_num_heads", heads as i64),
                attr_int("kv_num_heads", heads as i64),
            ],
            q.dtype,
        )
    }
    /// Interleaved rotary embedding of `[b, s, heads·d]` (opset 23
    /// `RotaryEmbedding`), tables `[positions, d/2]` gathered by `pos`.
    pub fn rotary(
        &mut self,
        x: &Value,
        cos: &Value,
        sin: &Value,
        pos: &Value,
        heads: u32,
    ) -> Value {
        self.op(
            "RotaryEmbedding",
            &[x, cos, sin, pos],
            vec![
                attr_int("interleaved", 1),
                attr_int("num_heads", heads as i64),
            ],
            x.dtype,
        )
    }
    pub fn conv(
        &mut self,
        x: &Value,
        w: &Value,
        b: Option<&Value>,
        kernel: &[i64],
        strides: &[i64],
        pads: &[i64],
    ) -> Value {
        let mut ins = vec![x, w];
        if let Some(b) = b {
            ins.push(b);
        }
        self.op(
            "Conv",
            &ins,
            vec![
                attr_ints("kernel_shape", kernel),
                attr_ints("strides", strides),
                attr_ints("pads", pads),
            ],
            x.dtype,
        )
    }
}

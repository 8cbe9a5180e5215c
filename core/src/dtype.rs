//! Element types at graph boundaries and the precision a graph computes in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Element type of a tensor. Serialised with the names users see in
/// safetensors headers and numpy (`float32`, `bfloat16`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Float16,
    Bfloat16,
    Int64,
    Int32,
    Uint8,
    Bool,
    /// Signed 8-bit integers (INT8 weights).
    Int8,
    /// FP8 E4M3 without infinities (`FLOAT8E4M3FN`: max 448, one NaN
    /// pattern per sign), the FP8 format of the quantized DiT.
    #[serde(rename = "float8_e4m3fn")]
    Float8E4m3fn,
    /// Double precision (the first-block cache's indicator sums).
    Float64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Float32 | DType::Int32 => 4,
            DType::Float16 | DType::Bfloat16 => 2,
            DType::Int64 | DType::Float64 => 8,
            DType::Uint8 | DType::Bool | DType::Int8 | DType::Float8E4m3fn => 1,
        }
    }

    /// `TensorProto.DataType` code of ONNX.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::Float32 => 1,
            DType::Uint8 => 2,
            DType::Int8 => 3,
            DType::Int32 => 6,
            DType::Int64 => 7,
            DType::Bool => 9,
            DType::Float16 => 10,
            DType::Bfloat16 => 16,
            DType::Float8E4m3fn => 17,
            DType::Float64 => 11,
        }
    }

    pub fn from_onnx_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => DType::Float32,
            2 => DType::Uint8,
            3 => DType::Int8,
            6 => DType::Int32,
            7 => DType::Int64,
            9 => DType::Bool,
            10 => DType::Float16,
            16 => DType::Bfloat16,
            17 => DType::Float8E4m3fn,
            11 => DType::Float64,
            _ => return None,
        })
    }

    /// The dtype tag of the safetensors format (`F32`, `BF16`, ...).
    pub fn safetensors_tag(self) -> &'static str {
        match self {
            DType::Float32 => "F32",
            DType::Float16 => "F16",
            DType::Bfloat16 => "BF16",
            DType::Int64 => "I64",
            DType::Int32 => "I32",
            DType::Uint8 => "U8",
            DType::Bool => "BOOL",
            DType::Int8 => "I8",
            DType::Float8E4m3fn => "F8_E4M3",
            DType::Float64 => "F64",
        }
    }

    pub fn from_safetensors_tag(tag: &str) -> Option<Self> {
        Some(match tag {
            "F32" => DType::Float32,
            "F16" => DType::Float16,
            "BF16" => DType::Bfloat16,
            "I64" => DType::Int64,
            "I32" => DType::Int32,
            "U8" => DType::Uint8,
            "BOOL" => DType::Bool,
            "I8" => DType::Int8,
            "F8_E4M3" => DType::Float8E4m3fn,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::Bfloat16 => "bfloat16",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::Uint8 => "uint8",
            DType::Bool => "bool",
            DType::Int8 => "int8",
            DType::Float8E4m3fn => "float8_e4m3fn",
            DType::Float64 => "float64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision written into a graph. TensorRT 11 is strongly typed, so this
/// is a property of the graph itself, not a builder flag.
///
/// `Fp32` computes everything in float32. `Bf16` and `Fp16` run the linear
/// layers and attention in the half type and keep FP32 islands where the
/// official Wan2.1 code keeps float32 (time embedding and modulation, norms,
/// the residual stream, the output head); see `graphs::dit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    Fp16,
}

impl Precision {
    /// The dtype of the tensors the matrix units consume.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::Float32,
            Precision::Bf16 => DType::Bfloat16,
            Precision::Fp16 => DType::Float16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Fp16];
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(format!(
                "unknown precision '{other}' (expected fp32, bf16 or fp16)"
            )),
        }
    }
}

//! The weight accessor graph builders read through.
//!
//! A [`WeightSource`] (implemented by the compiler's checkpoint readers, or a
//! synthetic generator) hands out tensors by their *canonical* name — the
//! original Wan2.1 key (`blocks.3.self_attn.q.weight`). [`Weights`] pushes
//! name prefixes and checks every tensor's shape at fetch, failing with the
//! tensor's full name and where it was looked for.

use std::borrow::Cow;

use half::{bf16, f16};
use wanrt_core::DType;

use crate::error::{Error, Result};

/// A tensor as stored in a checkpoint, borrowed from a memory map when it can.
pub struct SourceTensor<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Little-endian element bytes, row-major.
    pub data: Cow<'a, [u8]>,
}

impl SourceTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (exact for bf16 / f16 / f32 sources).
    pub fn to_f32(&self, name: &str, location: &str) -> Result<Vec<f32>> {
        let d = &self.data;
        Ok(match self.dtype {
            DType::Float32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::Bfloat16 => d
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::Float16 => d
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => return Err(Error::unsupported_dtype(name, other, location)),
        })
    }
}

/// Where weights come from.
pub trait WeightSource {
    /// The tensor with this canonical name, or `Ok(None)` if it is absent.
    fn tensor(&self, name: &str) -> Result<Option<SourceTensor<'_>>>;
    /// A human-readable place (directory or file) for error messages.
    fn location(&self, name: &str) -> String;
    /// The tensor, when the caller knows the shape it needs. Stored
    /// checkpoints ignore the hint (the accessor compares shapes); generated
    /// weights use it.
    fn tensor_with_shape(&self, name: &str, _shape: &[usize]) -> Result<Option<SourceTensor<'_>>> {
        self.tensor(name)
    }
}

/// Name-prefixing, shape-checking accessor.
pub struct Weights<'s> {
    source: &'s dyn WeightSource,
    prefix: Vec<String>,
}

impl<'s> Weights<'s> {
    pub fn new(source: &'s dyn WeightSource) -> Self {
        Weights {
            source,
            prefix: Vec::new(),
        }
    }

    /// A view with `part` appended to the prefix.
    pub fn pp(&self, part: impl std::fmt::Display) -> Weights<'s> {
        let mut prefix = self.prefix.clone();
        prefix.push(part.to_string());
        Weights {
            source: self.source,
            prefix,
        }
    }

    /// The full canonical name of `leaf` under this prefix.
    pub fn path(&self, leaf: &str) -> String {
        let mut parts = self.prefix.clone();
        parts.push(leaf.to_string());
        parts.join(".")
    }

    /// Fetches `leaf`, checking its shape against `shape`.
    pub fn get(&self, leaf: &str, shape: &[usize]) -> Result<(String, SourceTensor<'s>)> {
        let name = self.path(leaf);
        let location = self.source.location(&name);
        let t = self
            .source
            .tensor_with_shape(&name, shape)?
            .ok_or_else(|| Error::TensorMissing {
                name: name.clone(),
                location: location.clone(),
            })?;
        if !matches!(t.dtype, DType::Float32 | DType::Bfloat16 | DType::Float16) {
            return Err(Error::unsupported_dtype(&name, t.dtype, &location));
        }
        if t.shape != shape {
            return Err(Error::ShapeMismatch {
                name,
                expected: shape.to_vec(),
                found: t.shape,
                location,
            });
        }
        let expected_bytes = t.numel() * t.dtype.size();
        if t.data.len() != expected_bytes {
            return Err(Error::Source(
                format!(
                    "tensor '{name}' holds {} bytes, its header says {expected_bytes} ({location})",
                    t.data.len()
                )
                .into(),
                crate::ErrorKind::Source,
            ));
        }
        Ok((name, t))
    }
}

/// Weight sources for the builders' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::borrow::Cow;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use wanrt_core::DType;

    use super::{SourceTensor, WeightSource};
    use crate::Result;

    /// Zero weights of any requested shape; records what was asked.
    #[derive(Default)]
    pub struct Zeros(pub RefCell<BTreeMap<String, Vec<usize>>>);

    impl WeightSource for Zeros {
        fn tensor(&self, _: &str) -> Result<Option<SourceTensor<'_>>> {
            Ok(None)
        }
        fn location(&self, _: &str) -> String {
            "zeros".into()
        }
        fn tensor_with_shape(
            &self,
            name: &str,
            shape: &[usize],
        ) -> Result<Option<SourceTensor<'_>>> {
            self.0.borrow_mut().insert(name.into(), shape.to_vec());
            let n: usize = shape.iter().product();
            Ok(Some(SourceTensor {
                dtype: DType::Float32,
                shape: shape.to_vec(),
                data: Cow::Owned(vec![0; n * 4]),
            }))
        }
    }
}

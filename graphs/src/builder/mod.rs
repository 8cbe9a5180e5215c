//! A typed ONNX graph builder that streams weights to an external-data file.
//!
//! Every value carries its dtype, and every intermediate gets a `value_info`
//! entry with it, so a graph can be read (and rewritten, see
//! [`crate::emulate`]) without shape inference. Weights never accumulate in
//! memory: each one is converted, written to `<graph>.onnx.data` and dropped,
//! so an export's peak memory is about one tensor plus the graph proto.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use half::{bf16, f16};
use sha2::{Digest, Sha256};
use wanrt_core::{AttentionKind, DType};

use crate::error::{Error, Result};
use crate::onnx::*;
use crate::weights::SourceTensor;

mod ops;

/// A named, typed value of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub name: String,
    pub dtype: DType,
}

/// A dimension of a graph input: fixed, or a named symbol (`batch`).
#[derive(Debug, Clone)]
pub enum IoDim {
    Fixed(i64),
    Symbol(&'static str),
}

/// Tensors smaller than this stay inline in the proto.
const INLINE_LIMIT: usize = 1024;
/// Alignment of tensors in the external-data file: page-aligned offsets let
/// ONNX Runtime map large weights instead of copying them.
const ALIGN_LARGE: u64 = 4096;
const ALIGN_SMALL: u64 = 64;

struct ExternalData {
    path: PathBuf,
    location: String,
    writer: BufWriter<File>,
    offset: u64,
    hasher: Sha256,
}

impl ExternalData {
    /// Pads to the alignment for a tensor of `len` bytes; returns its offset.
    fn begin(&mut self, len: usize) -> Result<u64> {
        let align = if len as u64 >= ALIGN_LARGE {
            ALIGN_LARGE
        } else {
            ALIGN_SMALL
        };
        let pad = ((align - self.offset % align) % align) as usize;
        let zeros = [0u8; ALIGN_LARGE as usize];
        self.write(&zeros[..pad])?;
        Ok(self.offset)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes).map_err(|source| Error::Io {
            file: self.path.clone(),
            source,
        })?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

/// Hints the kernel that the pages wholly inside `bytes` will not be read
/// again (`MADV_PAGEOUT`): a memory-mapped checkpoint tensor read once, in
/// order, then leaves no resident trace. The hint never changes contents
/// (unlike `MADV_DONTNEED` on anonymous memory), so it is safe on any slice;
/// where the kernel does not know it, nothing happens.
fn page_out(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (bytes.as_ptr() as usize).div_ceil(PAGE) * PAGE;
        let end = ((bytes.as_ptr() as usize + bytes.len()) / PAGE) * PAGE;
        if end > start {
            // SAFETY: an advisory call on memory this slice borrows; PAGEOUT
            // does not alter contents, and failure is harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// What an export produced besides the proto.
pub struct ExportedGraph {
    pub model: ModelProto,
    /// `sha256:` of the external-data bytes.
    pub weights_digest: String,
    pub external_data_bytes: u64,
    pub external_data: Option<PathBuf>,
}

/// Builds one ONNX graph.
pub struct GraphBuilder<'i> {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    value_info: Vec<ValueInfoProto>,
    scope: Vec<String>,
    counters: HashMap<String, usize>,
    consts: HashMap<String, Value>,
    external: Option<ExternalData>,
    /// External weights already written, by name: a later graph of the same
    /// builder (the VAE's first-chunk and steady-state graphs) references
    /// them instead of writing them again.
    written: HashMap<String, TensorProto>,
    interrupt: Option<&'i AtomicBool>,
    progress: Option<Box<dyn FnMut(u64) + 'i>>,
    /// How [`GraphBuilder::sdpa`] writes attention (`crate::attention`).
    attention: AttentionKind,
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}
pub fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::FLOAT,
        f,
        ..Default::default()
    }
}
pub fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: ints.to_vec(),
        ..Default::default()
    }
}
pub fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::STRING,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Attribute constructors for [`GraphBuilder::op`].
pub mod attr {
    pub use super::{
        attr_float as float, attr_int as int, attr_ints as ints, attr_string as string,
    };
}

fn tensor_type(dtype: DType, dims: Option<&[IoDim]>) -> TypeProto {
    let shape = dims.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| tensor_shape_proto::Dimension {
                value: Some(match d {
                    IoDim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                    IoDim::Symbol(s) => {
                        tensor_shape_proto::dimension::Value::DimParam(s.to_string())
                    }
                }),
            })
            .collect(),
    });
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: dtype.onnx_code(),
            shape,
        })),
    }
}

/// Converts little-endian `src` elements to `to`, optionally transposing a
/// 2-D `[rows, cols]` tensor to `[cols, rows]`.
fn convert(src: &SourceTensor<'_>, to: DType, transpose: bool, name: &str) -> Result<Vec<u8>> {
    let values = src.to_f32(name, "checkpoint")?;
    let values = if transpose {
        let (rows, cols) = (src.shape[0], src.shape[1]);
        let mut t = vec![0f32; values.len()];
        // Blocked transpose: stays cache-friendly for 13824 x 5120 weights.
        const B: usize = 64;
        for r0 in (0..rows).step_by(B) {
            for c0 in (0..cols).step_by(B) {
                for r in r0..(r0 + B).min(rows) {
                    for c in c0..(c0 + B).min(cols) {
                        t[c * rows + r] = values[r * cols + c];
                    }
                }
            }
        }
        t
    } else {
        values
    };
    Ok(encode_f32(&values, to))
}

/// Encodes f32 values as `to` (round-to-nearest-even for half types).
pub fn encode_f32(values: &[f32], to: DType) -> Vec<u8> {
    match to {
        DType::Float32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::Bfloat16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::Float16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        other => unreachable!("encode_f32 to {other}: only float types are weights"),
    }
}

impl<'i> GraphBuilder<'i> {
    /// A builder whose weights go to `external_path` (created now).
    pub fn new(name: &str, external_path: Option<&Path>) -> Result<Self> {
        let external = match external_path {
            Some(path) => {
                let file = File::create(path).map_err(|source| Error::Io {
                    file: path.to_path_buf(),
                    source,
                })?;
                Some(ExternalData {
                    path: path.to_path_buf(),
                    location: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    writer: BufWriter::with_capacity(8 << 20, file),
                    offset: 0,
                    hasher: Sha256::new(),
                })
            }
            None => None,
        };
        Ok(GraphBuilder {
            name: name.to_string(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            value_info: Vec::new(),
            scope: Vec::new(),
            counters: HashMap::new(),
            consts: HashMap::new(),
            external,
            written: HashMap::new(),
            interrupt: None,
            progress: None,
            attention: AttentionKind::Onnx,
        })
    }

    /// [`GraphBuilder::sdpa`] writes attention as `kind` (default: the
    /// opset-23 `Attention` op); it stays for every graph of this builder.
    pub fn with_attention(mut self, kind: AttentionKind) -> Self {
        self.attention = kind;
        self
    }

    /// The formulation [`GraphBuilder::sdpa`] writes.
    pub fn attention_kind(&self) -> AttentionKind {
        self.attention
    }

    /// Export stops with [`Error::Interrupted`] once `flag` is set.
    pub fn with_interrupt(mut self, flag: &'i AtomicBool) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// Called with the byte count of each weight written.
    pub fn with_progress(mut self, f: impl FnMut(u64) + 'i) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Runs `f` with `part` pushed on the name scope.
    pub fn scoped<T>(&mut self, part: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.scope.push(part.to_string());
        let r = f(self);
        self.scope.pop();
        r
    }

    fn scope_prefix(&self) -> String {
        self.scope.join(".")
    }

    fn fresh(&mut self, what: &str) -> String {
        let base = if self.scope.is_empty() {
            what.to_string()
        } else {
            format!("{}/{what}", self.scope_prefix())
        };
        let n = self.counters.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}_{}", *n - 1)
        }
    }

    pub fn input(&mut self, name: &str, dtype: DType, dims: &[IoDim]) -> Value {
        self.inputs.push(ValueInfoProto {
            name: name.into(),
            r#type: Some(tensor_type(dtype, Some(dims))),
            doc_string: String::new(),
        });
        Value {
            name: name.into(),
            dtype,
        }
    }

    /// Marks `v` as the graph output `name` (through an Identity node).
    /// `dims: None` leaves the shape to inference (debug outputs).
    pub fn output(&mut self, v: &Value, name: &str, dims: Option<&[IoDim]>) {
        self.nodes.push(NodeProto {
            input: vec![v.name.clone()],
            output: vec![name.into()],
            name: format!("{name}/Identity"),
            op_type: "Identity".into(),
            ..Default::default()
        });
        self.outputs.push(ValueInfoProto {
            name: name.into(),
            r#type: Some(tensor_type(v.dtype, dims)),
            doc_string: String::new(),
        });
    }

    fn check_interrupt(&self) -> Result<()> {
        match self.interrupt {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }

    fn add_initializer(
        &mut self,
        name: &str,
        dtype: DType,
        dims: &[i64],
        bytes: Vec<u8>,
        doc: &str,
    ) -> Result<Value> {
        let len = bytes.len();
        self.add_initializer_streamed(name, dtype, dims, len, doc, |emit| emit(&bytes))
    }

    /// Adds an initializer of `len` bytes whose bytes `produce` emits in
    /// order, so a large tensor never has to exist in memory at once.
    fn add_initializer_streamed(
        &mut self,
        name: &str,
        dtype: DType,
        dims: &[i64],
        len: usize,
        doc: &str,
        produce: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
    ) -> Result<Value> {
        if let Some(t) = self.written.get(name) {
            if t.data_type != dtype.onnx_code() || t.dims != dims {
                return Err(Error::Invalid(format!(
                    "initializer {name} written before with another dtype or shape"
                )));
            }
            self.initializers.push(t.clone());
            return Ok(Value {
                name: name.into(),
                dtype,
            });
        }
        let mut t = TensorProto {
            dims: dims.to_vec(),
            data_type: dtype.onnx_code(),
            name: name.into(),
            doc_string: doc.into(),
            ..Default::default()
        };
        match &mut self.external {
            Some(ext) if len >= INLINE_LIMIT => {
                let offset = ext.begin(len)?;
                produce(&mut |chunk: &[u8]| ext.write(chunk))?;
                let written = ext.offset - offset;
                if written != len as u64 {
                    return Err(Error::Invalid(format!(
                        "initializer {name}: {written} bytes written, {len} expected"
                    )));
                }
                t.data_location = DATA_LOCATION_EXTERNAL;
                t.external_data = vec![
                    StringStringEntryProto {
                        key: "location".into(),
                        value: ext.location.clone(),
                    },
                    StringStringEntryProto {
                        key: "offset".into(),
                        value: offset.to_string(),
                    },
                    StringStringEntryProto {
                        key: "length".into(),
                        value: len.to_string(),
                    },
                ];
                if let Some(p) = &mut self.progress {
                    p(len as u64);
                }
                self.written.insert(name.to_string(), t.clone());
            }
            _ => {
                let mut raw = Vec::with_capacity(len);
                produce(&mut |chunk: &[u8]| {
                    raw.extend_from_slice(chunk);
                    Ok(())
                })?;
                t.raw_data = raw;
            }
        }
        self.initializers.push(t);
        Ok(Value {
            name: name.into(),
            dtype,
        })
    }

    /// Adds a checkpoint weight under its canonical `name`, stored as `store`.
    /// A 2-D weight with `transpose` is stored as `[in, out]` for `x · W`.
    pub fn weight(
        &mut self,
        name: &str,
        src: &SourceTensor<'_>,
        store: DType,
        transpose: bool,
    ) -> Result<Value> {
        self.check_interrupt()?;
        let dims: Vec<i64> = src.shape.iter().map(|&d| d as i64).collect();
        self.weight_as(name, src, store, transpose, dims)
    }

    /// [`Self::weight`] stored under other dims of the same element count
    /// (a Conv2d kernel `[o, i, kh, kw]` as a Conv3d `[o, i, 1, kh, kw]`).
    pub fn weight_as(
        &mut self,
        name: &str,
        src: &SourceTensor<'_>,
        store: DType,
        transpose: bool,
        mut dims: Vec<i64>,
    ) -> Result<Value> {
        if dims.iter().product::<i64>() as usize != src.numel() {
            return Err(Error::Invalid(format!(
                "{name}: dims {dims:?} do not fit {:?}",
                src.shape
            )));
        }
        let doc = if transpose {
            dims.reverse();
            "transposed from the checkpoint's [out, in] to [in, out]"
        } else {
            ""
        };
        if transpose {
            // Converted only when not written before (a stage graph reuses
            // the whole graph's weights).
            let len = src.numel() * store.size();
            return self.add_initializer_streamed(name, store, &dims, len, doc, |emit| {
                emit(&convert(src, store, true, name)?)
            });
        }
        // Convert chunk by chunk straight from the (memory-mapped) source:
        // a 256384 x 4096 embedding never exists in f32 in memory.
        let in_size = src.dtype.size();
        let numel = src.numel();
        let len = numel * store.size();
        self.add_initializer_streamed(name, store, &dims, len, doc, |emit| {
            const CHUNK: usize = 1 << 20; // elements
            for start in (0..numel).step_by(CHUNK) {
                let end = (start + CHUNK).min(numel);
                let part = SourceTensor {
                    dtype: src.dtype,
                    shape: vec![end - start],
                    data: std::borrow::Cow::Borrowed(&src.data[start * in_size..end * in_size]),
                };
                emit(&convert(&part, store, false, name)?)?;
                if let std::borrow::Cow::Borrowed(bytes) = &src.data {
                    page_out(&bytes[start * in_size..end * in_size]);
                }
            }
            Ok(())
        })
    }

    /// A tensor the exporter derives from checkpoint weights (a quantized
    /// weight, its per-channel scales), stored as `dtype` under `name`.
    /// `produce` runs only when no earlier graph of this builder wrote
    /// `name` (a stage graph reuses the whole graph's tensors, inline ones
    /// included), so a weight is quantized once per export.
    pub fn derived_weight(
        &mut self,
        name: &str,
        dtype: DType,
        dims: &[i64],
        doc: &str,
        produce: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Value> {
        self.check_interrupt()?;
        if !self.written.contains_key(name) {
            let bytes = produce()?;
            let expect = dims.iter().product::<i64>() as usize * dtype.size();
            if bytes.len() != expect {
                return Err(Error::Invalid(format!(
                    "derived tensor {name}: {} bytes for dims {dims:?} of {dtype}",
                    bytes.len()
                )));
            }
            let v = self.add_initializer(name, dtype, dims, bytes, doc)?;
            if let Some(t) = self.initializers.last() {
                // Inline tensors are remembered too (external ones already are).
                self.written
                    .entry(name.to_string())
                    .or_insert_with(|| t.clone());
            }
            return Ok(v);
        }
        self.add_initializer_streamed(name, dtype, dims, 0, doc, |_| Ok(()))
    }

    /// A shared scalar of `dtype` holding the little-endian `bytes` (zero
    /// points of quantized types), deduplicated by dtype and value.
    pub fn scalar_raw(&mut self, dtype: DType, bytes: &[u8]) -> Value {
        let key = format!("raw{dtype}{bytes:?}");
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("const_{}_0x{hex}", dtype.name());
        self.initializers.push(TensorProto {
            dims: vec![],
            data_type: dtype.onnx_code(),
            name: name.clone(),
            raw_data: bytes.to_vec(),
            ..Default::default()
        });
        let v = Value { name, dtype };
        self.consts.insert(key, v.clone());
        v
    }

    /// A float constant computed by the exporter (RoPE tables, frequencies).
    pub fn const_f32(
        &mut self,
        name: &str,
        dims: &[i64],
        values: &[f32],
        store: DType,
    ) -> Result<Value> {
        let full = if self.scope.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.scope_prefix())
        };
        if let Some(v) = self.consts.get(&full) {
            return Ok(v.clone());
        }
        let v = self.add_initializer(
            &full,
            store,
            dims,
            encode_f32(values, store),
            "computed by wan-compile",
        )?;
        self.consts.insert(full, v.clone());
        Ok(v)
    }

    /// A named int64 tensor (position ids); external when large.
    pub fn const_i64_tensor(&mut self, name: &str, dims: &[i64], values: &[i64]) -> Result<Value> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_initializer(name, DType::Int64, dims, bytes, "computed by wan-compile")
    }

    /// A shared int64 constant (shapes, axes), deduplicated by value.
    pub fn const_i64(&mut self, values: &[i64]) -> Value {
        let key = format!("i64{values:?}");
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let name = format!(
            "const_i64_{}",
            values
                .iter()
                .map(|v| v.to_string().replace('-', "m"))
                .collect::<Vec<_>>()
                .join("_")
        );
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: DType::Int64.onnx_code(),
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        let v = Value {
            name,
            dtype: DType::Int64,
        };
        self.consts.insert(key, v.clone());
        v
    }

    /// A scalar float constant of `dtype`, shared.
    pub fn scalar(&mut self, value: f32, dtype: DType) -> Value {
        let key = format!("scalar{value:e}{dtype}");
        if let Some(v) = self.consts.get(&key) {
            return v.clone();
        }
        let name = format!(
            "const_{}_{}",
            dtype.name(),
            format!("{value:e}").replace(['-', '.'], "_")
        );
        self.initializers.push(TensorProto {
            dims: vec![],
            data_type: dtype.onnx_code(),
            name: name.clone(),
            raw_data: encode_f32(&[value], dtype),
            ..Default::default()
        });
        let v = Value { name, dtype };
        self.consts.insert(key, v.clone());
        v
    }

    /// Adds a node with one output of `out_dtype`.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        attrs: Vec<AttributeProto>,
        out_dtype: DType,
    ) -> Value {
        self.op_n(op_type, inputs, attrs, &[out_dtype]).remove(0)
    }

    /// Adds a node with several outputs.
    pub fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        attrs: Vec<AttributeProto>,
        out_dtypes: &[DType],
    ) -> Vec<Value> {
        let node_name = self.fresh(op_type);
        let outputs: Vec<Value> = out_dtypes
            .iter()
            .enumerate()
            .map(|(i, &dtype)| Value {
                name: if out_dtypes.len() == 1 {
                    node_name.clone()
                } else {
                    format!("{node_name}:{i}")
                },
                dtype,
            })
            .collect();
        for v in &outputs {
            self.value_info.push(ValueInfoProto {
                name: v.name.clone(),
                r#type: Some(tensor_type(v.dtype, None)),
                doc_string: String::new(),
            });
        }
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.name.clone()).collect(),
            output: outputs.iter().map(|v| v.name.clone()).collect(),
            name: node_name,
            op_type: op_type.into(),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    /// Puts the node added last into operator domain `domain` (a contrib op).
    pub(crate) fn set_last_domain(&mut self, domain: &str) {
        if let Some(n) = self.nodes.last_mut() {
            n.domain = domain.to_string();
        }
    }

    /// Takes the graph built so far as a model, leaving the builder ready
    /// for another graph that shares the external-data file.
    pub fn take_graph(&mut self, name: &str, doc: &str) -> ModelProto {
        let graph = GraphProto {
            node: std::mem::take(&mut self.nodes),
            name: name.into(),
            initializer: std::mem::take(&mut self.initializers),
            doc_string: doc.into(),
            input: std::mem::take(&mut self.inputs),
            output: std::mem::take(&mut self.outputs),
            value_info: std::mem::take(&mut self.value_info),
        };
        self.consts.clear();
        self.counters.clear();
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        // Contrib-op domains the nodes use (`com.microsoft`, version 1).
        let domains: std::collections::BTreeSet<&str> = graph
            .node
            .iter()
            .map(|n| n.domain.as_str())
            .filter(|d| !d.is_empty())
            .collect();
        opset_import.extend(domains.into_iter().map(|d| OperatorSetIdProto {
            domain: d.to_string(),
            version: 1,
        }));
        ModelProto {
            ir_version: IR_VERSION,
            opset_import,
            producer_name: "wanrt".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            ..Default::default()
        }
    }

    /// Flushes and syncs the external data: (digest, bytes, path).
    pub fn finish_external(self) -> Result<(String, u64, Option<PathBuf>)> {
        Ok(match self.external {
            Some(mut ext) => {
                ext.writer.flush().map_err(|source| Error::Io {
                    file: ext.path.clone(),
                    source,
                })?;
                let file = ext.writer.into_inner().map_err(|e| Error::Io {
                    file: ext.path.clone(),
                    source: e.into_error(),
                })?;
                file.sync_all().map_err(|source| Error::Io {
                    file: ext.path.clone(),
                    source,
                })?;
                let digest = wanrt_core::fsio::sha256_string(ext.hasher);
                (digest, ext.offset, Some(ext.path))
            }
            None => (String::from("sha256:inline"), 0, None),
        })
    }

    /// Finishes the (only) graph, flushing the external data.
    pub fn finish(mut self, doc: &str) -> Result<ExportedGraph> {
        let name = self.name.clone();
        let model = self.take_graph(&name, doc);
        let (weights_digest, external_data_bytes, external_data) = self.finish_external()?;
        Ok(ExportedGraph {
            model,
            weights_digest,
            external_data_bytes,
            external_data,
        })
    }
}

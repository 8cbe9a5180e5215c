//! The VAE's export: a first-chunk and a steady-state graph per direction,
//! sharing one weight file (see `wanrt_graphs::vae`).

use wanrt_graphs::vae::{self as graph, Chunk};

use super::*;

fn spec_of(vi: &wanrt_graphs::onnx::ValueInfoProto) -> wanrt_core::TensorSpec {
    use wanrt_graphs::onnx::{tensor_shape_proto::dimension::Value as D, type_proto::Value as T};
    let (dtype, shape) = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(T::TensorType(t)) => (
            wanrt_core::DType::from_onnx_code(t.elem_type).unwrap_or(wanrt_core::DType::Float32),
            t.shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(D::DimValue(n)) => wanrt_core::Dim::Fixed(*n as u64),
                            _ => wanrt_core::Dim::Batch,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        None => (wanrt_core::DType::Float32, vec![]),
    };
    wanrt_core::TensorSpec {
        name: vi.name.clone(),
        dtype,
        shape,
    }
}

/// Exports the VAE encoder or decoder as a first-chunk and a steady-state
/// graph sharing one weight file.
pub(super) fn export_vae(
    cfg: &VaeConfig,
    source: &dyn WeightSource,
    checkpoint: Option<&Checkpoint>,
    opts: &CompileOptions,
    staging: &Path,
    kind: NetworkKind,
) -> Result<(NetworkEntry, NetworkReport)> {
    let start = Instant::now();
    let precision = opts.vae_precision;
    let name = kind.name();
    let data_file = format!("{name}.onnx.data");
    let pb = progress_bar(opts.show_progress, name);
    let mut builder = start_builder(name, opts, staging, &pb)?;
    let (p, encoder) = (&opts.profile, kind == NetworkKind::VaeEncoder);
    let mut chunks = Vec::new();
    let mut nodes = 0;
    let mut graph_bytes = 0u64;
    for chunk in [Chunk::First, Chunk::Step] {
        let w = Weights::new(source);
        if encoder {
            graph::build_encoder(&mut builder, w, cfg, p.height, p.width, chunk, precision)?;
        } else {
            graph::build_decoder(&mut builder, w, cfg, p.height, p.width, chunk, precision)?;
        }
        let file = format!("{name}.{}.onnx", chunk.name());
        let model = builder.take_graph(
            &format!("{name}_{}", chunk.name()),
            &format!(
                "Wan2.1 VAE {} ({} chunk), {}",
                if encoder { "encoder" } else { "decoder" },
                chunk.name(),
                precision_doc(opts)
            ),
        );
        let g = model.graph.as_ref().expect("take_graph sets the graph");
        nodes += g.node.len();
        let (inputs, outputs) = (
            g.input.iter().map(spec_of).collect(),
            g.output.iter().map(spec_of).collect(),
        );
        let (len, graph_digest) = write_graph(staging, &file, &model)?;
        graph_bytes += len;
        chunks.push(wanrt_core::manifest::ChunkGraph {
            role: chunk.name().into(),
            file,
            graph_digest,
            inputs,
            outputs,
        });
    }
    let (weights_digest, external_data_bytes, _) = builder.finish_external()?;
    pb.finish_and_clear();
    let prefix = if encoder {
        ["encoder.", "conv1."]
    } else {
        ["decoder.", "conv2."]
    };
    // Each direction uses its half of the checkpoint: only unused tensors
    // of this half mean the config does not match the weights.
    if let Some(ck) = checkpoint {
        let unused: Vec<String> = ck
            .unused()
            .into_iter()
            .filter(|n| {
                let canonical = names::vae_from_diffusers(n).unwrap_or_else(|| n.clone());
                prefix.iter().any(|p| canonical.starts_with(p))
            })
            .collect();
        if !unused.is_empty() {
            return Err(Error::UnusedTensors {
                dir: PathBuf::from(ck.describe()),
                network: name.into(),
                names: unused,
            });
        }
    }
    Ok(vae_entry(
        cfg,
        opts,
        kind,
        chunks,
        data_file,
        weights_digest,
        external_data_bytes,
        graph_bytes,
        nodes,
        start,
    ))
}

#[allow(clippy::too_many_arguments)]
fn vae_entry(
    cfg: &VaeConfig,
    opts: &CompileOptions,
    kind: NetworkKind,
    chunks: Vec<wanrt_core::manifest::ChunkGraph>,
    data_file: String,
    weights_digest: String,
    external_data_bytes: u64,
    graph_bytes: u64,
    nodes: usize,
    start: Instant,
) -> (NetworkEntry, NetworkReport) {
    let (p, encoder) = (&opts.profile, kind == NetworkKind::VaeEncoder);
    let contract = if encoder {
        NetworkContract::vae_encoder(cfg, p)
    } else {
        NetworkContract::vae_decoder(cfg, p)
    };
    let step = chunks.last().expect("two chunk graphs");
    let entry = NetworkEntry {
        file: step.file.clone(),
        external_data: Some(data_file),
        external_data_bytes,
        precision: opts.vae_precision,
        profile: p.clone(),
        config: serde_json::to_value(cfg).expect("config serialises"),
        weights_digest,
        graph_digest: step.graph_digest.clone(),
        inputs: contract.inputs,
        outputs: contract.outputs,
        tools: tools(),
        chunks,
        loras: vec![],
        stages: vec![],
        cache_graphs: vec![],
        attention: AttentionKind::Onnx,
        quantization: None,
    };
    let report = NetworkReport {
        network: kind,
        graph_bytes,
        weight_bytes: external_data_bytes,
        nodes,
        elapsed: start.elapsed(),
    };
    (entry, report)
}

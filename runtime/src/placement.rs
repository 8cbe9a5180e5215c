//! Which execution provider runs each node: ONNX Runtime's own record of it.
//!
//! ONNX Runtime's profiler writes one event per node execution with the
//! provider that ran it (`args.provider`). [`graph_placement`] runs a graph
//! once on zero inputs of its contract's shapes with profiling on and counts
//! the nodes per provider. On a GPU backend a node on the CPU provider is an
//! error naming the node and its op (with the CPU fallback disabled, ONNX
//! Runtime already refuses such a graph at load; this is the proof that it
//! did not happen). TensorRT runs whole fused subgraphs, which the profile
//! lists as one node each (`TensorrtExecutionProvider_TRTKernel_…`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use wanrt_core::TensorSpec;
use wanrt_core::manifest::NetworkEntry;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::session::{SessionSetup, create_with};
use crate::tensorfile::HostTensor;

/// The nodes of one graph by provider: `provider → [(node, op)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub graph: String,
    pub by_provider: BTreeMap<String, Vec<(String, String)>>,
}

impl Placement {
    /// `CPUExecutionProvider: 123 nodes, …`
    pub fn summary(&self) -> String {
        self.by_provider
            .iter()
            .map(|(p, n)| format!("{p}: {} nodes", n.len()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every node's provider must be a GPU provider on a GPU backend.
    pub fn check(&self, backend: Backend) -> Result<()> {
        if !backend.is_gpu() {
            return Ok(());
        }
        if let Some(nodes) = self.by_provider.get("CPUExecutionProvider") {
            let list: Vec<String> = nodes
                .iter()
                .take(10)
                .map(|(n, op)| format!("{n} ({op})"))
                .collect();
            return Err(Error::Placement {
                graph: self.graph.clone(),
                reason: format!(
                    "{} node(s) ran on the CPU provider on {backend}: {}",
                    nodes.len(),
                    list.join(", ")
                ),
            });
        }
        Ok(())
    }
}

/// Zeros of the contract's shapes (batch 1 where the batch is dynamic, the
/// fixed batch otherwise).
pub fn zero_inputs(specs: &[TensorSpec], batch: u64) -> Vec<(String, HostTensor)> {
    specs
        .iter()
        .map(|s| {
            let shape = s.concrete_shape(batch);
            let n = shape.iter().product::<u64>() as usize;
            let t = HostTensor {
                dtype: s.dtype,
                shape,
                data: vec![0u8; n * s.dtype.size()],
            };
            (s.name.clone(), t)
        })
        .collect()
}

/// Parses an ONNX Runtime profile (a JSON array of trace events): the node
/// events (`cat: "Node"`, name `<node>_kernel_time`) with their provider.
pub fn parse_profile(graph: &str, json: &str) -> Result<Placement> {
    let bad = |reason: String| Error::Inference {
        network: graph.into(),
        reason: format!("reading ONNX Runtime's profile: {reason}"),
    };
    let events: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut p = Placement {
        graph: graph.into(),
        ..Default::default()
    };
    for e in &events {
        if e.get("cat").and_then(|c| c.as_str()) != Some("Node") {
            continue;
        }
        let Some(node) = e
            .get("name")
            .and_then(|n| n.as_str())
            .and_then(|n| n.strip_suffix("_kernel_time"))
        else {
            continue;
        };
        let args = e.get("args");
        let field = |k: &str| {
            args.and_then(|a| a.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string()
        };
        if seen.insert(node.to_string()) {
            p.by_provider
                .entry(field("provider"))
                .or_default()
                .push((node.to_string(), field("op_name")));
        }
    }
    if p.by_provider.is_empty() {
        return Err(bad("no node events".into()));
    }
    Ok(p)
}

/// Runs graph `file` of an artifact directory once on zeros with profiling
/// and reports where its nodes ran.
pub fn graph_placement(
    dir: &Path,
    name: &str,
    file: &str,
    graph_digest: &str,
    entry: &NetworkEntry,
    inputs: &[TensorSpec],
    backend: Backend,
) -> Result<Placement> {
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = std::env::temp_dir().join(format!(
        "wanrt-placement-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        let setup = SessionSetup {
            profiling: Some(tmp.join("profile")),
            ..SessionSetup::for_artifact_graph(dir, name, graph_digest, entry, backend)
        };
        let mut session = create_with(&dir.join(file), backend, &setup)?;
        let batch = entry.profile.batch.fixed().map(u64::from).unwrap_or(1);
        crate::session::run(&mut session, name, &zero_inputs(inputs, batch))?;
        let profile = session
            .end_profiling()
            .map_err(|e| Error::ort(name, crate::error::OrtCall::Run, "ending the profile", e))?;
        let path = Path::new(&profile);
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        parse_profile(file, &text)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// The placement of every graph of network `entry` (one, or one per chunk
/// graph), checked against `backend`.
pub fn network_placement(
    dir: &Path,
    name: &str,
    entry: &NetworkEntry,
    backend: Backend,
) -> Result<Vec<Placement>> {
    let mut out = Vec::new();
    if entry.chunks.is_empty() {
        out.push(graph_placement(
            dir,
            name,
            &entry.file,
            &entry.graph_digest,
            entry,
            &entry.inputs,
            backend,
        )?);
    } else {
        for c in &entry.chunks {
            out.push(graph_placement(
                dir,
                name,
                &c.file,
                &c.graph_digest,
                entry,
                &c.inputs,
                backend,
            )?);
        }
    }
    for p in &out {
        p.check(backend)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_events_are_counted_per_provider_and_cpu_nodes_fail_on_gpu() {
        let json = r#"[
          {"cat":"Session","name":"model_run","args":{}},
          {"cat":"Node","name":"blocks.0/MatMul_fence_before","args":{"op_name":"MatMul"}},
          {"cat":"Node","name":"blocks.0/MatMul_kernel_time","args":{"op_name":"MatMul","provider":"CUDAExecutionProvider"}},
          {"cat":"Node","name":"blocks.0/MatMul_kernel_time","args":{"op_name":"MatMul","provider":"CUDAExecutionProvider"}},
          {"cat":"Node","name":"shape/Gather_kernel_time","args":{"op_name":"Gather","provider":"CPUExecutionProvider"}}
        ]"#;
        let p = parse_profile("dit.onnx", json).unwrap();
        assert_eq!(
            p.summary(),
            "CPUExecutionProvider: 1 nodes, CUDAExecutionProvider: 1 nodes"
        );
        assert!(p.check(Backend::OrtCpu).is_ok());
        let e = p.check(Backend::OrtCuda).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Placement);
        assert!(e.to_string().contains("shape/Gather (Gather)"), "{e}");
        assert!(parse_profile("x", "[]").is_err());
        assert!(parse_profile("x", "{").is_err());
    }
}

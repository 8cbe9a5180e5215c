//! The step-cache graphs of the DiT ([`CacheGraph`],
//! [`NetworkContract::dit_cache_graphs`]): the step cache's arithmetic on
//! the block stack's boundaries as small weightless graphs, so that a GPU
//! backend keeps the residuals in device memory (`docs/WAN.md` §15).
//!
//! Each is the host path's arithmetic op for op: `Sub`, `Add` and `Abs` in
//! float32 are the same IEEE operations as the host's, and `Where` selects
//! whole values, so a computed row passes through bit for bit. The
//! first-block indicator casts its float32 terms to float64 and sums them
//! there, as the host does (only the order of the float64 sum may differ).

use wanrt_core::{CacheGraph, DType, DitConfig, NetworkContract, Profile};

use crate::builder::{GraphBuilder, Value, attr_int};
use crate::error::{Error, Result};
use crate::layers::io_dims;

/// `computed [B]` as a `[B, 1, 1]` condition that broadcasts over a row.
fn condition(b: &mut GraphBuilder<'_>, computed: &Value) -> Value {
    let c = b.cast(computed, DType::Bool);
    b.reshape(&c, &[-1, 1, 1])
}

fn where_(b: &mut GraphBuilder<'_>, c: &Value, x: &Value, y: &Value) -> Value {
    b.op("Where", &[c, x, y], vec![], x.dtype)
}

fn abs(b: &mut GraphBuilder<'_>, x: &Value) -> Value {
    b.op("Abs", &[x], vec![], x.dtype)
}

/// Σ over the row's axes (1 and 2) in float64 → `[B]`.
fn row_sum_f64(b: &mut GraphBuilder<'_>, x: &Value) -> Value {
    let x = b.cast(x, DType::Float64);
    let axes = b.const_i64(&[1, 2]);
    b.op(
        "ReduceSum",
        &[&x, &axes],
        vec![attr_int("keepdims", 0)],
        DType::Float64,
    )
}

/// Builds the step-cache graph `which` of a DiT of `cfg` at `profile` into
/// `b` (no weights).
pub fn build(
    b: &mut GraphBuilder<'_>,
    cfg: &DitConfig,
    profile: &Profile,
    which: CacheGraph,
) -> Result<()> {
    let graphs = NetworkContract::dit_cache_graphs(cfg, profile)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let contract = graphs
        .into_iter()
        .find(|(g, _)| *g == which)
        .map(|(_, c)| c)
        .ok_or_else(|| Error::Invalid(format!("no step-cache graph {which}")))?;
    let inputs: Vec<Value> = contract
        .inputs
        .iter()
        .map(|spec| b.input(&spec.name, spec.dtype, &io_dims(&spec.shape)))
        .collect();
    let outputs = b.scoped(which.name(), |b| {
        Ok(match which {
            CacheGraph::Head => {
                let [hidden, base, residual, computed] = &inputs[..] else {
                    return Err(Error::Invalid("cache_head takes 4 inputs".into()));
                };
                let c = condition(b, computed);
                let estimate = b.add(base, residual);
                vec![where_(b, &c, hidden, &estimate)]
            }
            CacheGraph::Store => {
                let [a, x, prev, computed] = &inputs[..] else {
                    return Err(Error::Invalid("cache_store takes 4 inputs".into()));
                };
                let c = condition(b, computed);
                let r = b.sub(a, x);
                vec![where_(b, &c, &r, prev)]
            }
            CacheGraph::Copy => vec![inputs[0].clone()],
            CacheGraph::FbIndicator => {
                let [tokens, first, reference] = &inputs[..] else {
                    return Err(Error::Invalid("cache_fb_indicator takes 3 inputs".into()));
                };
                let r1 = b.sub(first, tokens);
                let d = b.sub(&r1, reference);
                let d = abs(b, &d);
                let r = abs(b, reference);
                vec![row_sum_f64(b, &d), row_sum_f64(b, &r)]
            }
        })
    })?;
    for (spec, v) in contract.outputs.iter().zip(&outputs) {
        b.output(v, &spec.name, Some(&io_dims(&spec.shape)));
    }
    Ok(())
}

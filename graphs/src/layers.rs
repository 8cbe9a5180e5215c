//! Building blocks shared by the network files: boundary dims from a
//! contract, float32 parameters and linear layers fetched through the
//! accessor and scoped by their weight path.

use wanrt_core::{DType, Dim};

use crate::builder::{GraphBuilder, IoDim, Value};
use crate::error::Result;
use crate::weights::Weights;

/// Graph-input dims of a contract shape (`batch` stays symbolic).
pub fn io_dims(shape: &[Dim]) -> Vec<IoDim> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => IoDim::Fixed(*n as i64),
            Dim::Batch => IoDim::Symbol("batch"),
        })
        .collect()
}

/// A float32 parameter (norm weights, embeddings, modulation tables).
pub fn param(
    b: &mut GraphBuilder<'_>,
    w: &Weights<'_>,
    name: &str,
    shape: &[usize],
) -> Result<Value> {
    let (full, t) = w.get(name, shape)?;
    b.weight(&full, &t, DType::Float32, false)
}

/// `x · Wᵀ (+ b)` stored and computed in `store` (output in `store`); the
/// weight is kept transposed (`[in, out]`), nodes are scoped by the weight
/// path of `prefix`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    b: &mut GraphBuilder<'_>,
    w: &Weights<'_>,
    prefix: &str,
    x: &Value,
    inf: u32,
    outf: u32,
    store: DType,
    bias: bool,
) -> Result<Value> {
    let wp = w.pp(prefix);
    let (wn, wt) = wp.get("weight", &[outf as usize, inf as usize])?;
    let bt = if bias {
        Some(wp.get("bias", &[outf as usize])?)
    } else {
        None
    };
    b.scoped(&w.path(prefix), |b| {
        let wv = b.weight(&wn, &wt, store, true)?;
        let x = b.cast(x, store);
        let y = b.matmul(&x, &wv);
        match &bt {
            Some((bn, bt)) => {
                let bv = b.weight(bn, bt, store, false)?;
                Ok(b.add(&y, &bv))
            }
            None => Ok(y),
        }
    })
}

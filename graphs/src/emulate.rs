//! bf16 emulation for CPUs without bf16 kernels (a test-time rewrite).
//!
//! ONNX Runtime's CPU provider has no bf16 MatMul, Mul or Attention, so a
//! bf16 graph cannot run in CI as it is. This pass rewrites every node that
//! reads or writes bf16 into: cast the bf16 inputs to float32, compute in
//! float32, round the outputs back to bf16. Every tensor that is bf16 in the
//! shipped graph is therefore still rounded to bf16 at the same place, which
//! is what a GPU does at op boundaries (GEMMs and attention accumulate in
//! float32 there too). What it cannot reproduce is rounding *inside* a fused
//! kernel (e.g. flash attention's bf16 probabilities before P·V); the stated
//! bf16 tolerance leaves room for that.

use std::collections::{HashMap, HashSet};

use wanrt_core::DType;

use crate::onnx::*;

fn elem_type(v: &ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t.elem_type),
    }
}

fn float_info(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DType::Float32.onnx_code(),
                shape: None,
            })),
        }),
        doc_string: String::new(),
    }
}

fn cast_node(input: &str, output: &str, to: DType) -> NodeProto {
    NodeProto {
        input: vec![input.into()],
        output: vec![output.into()],
        name: format!("{output}/emulate_cast"),
        op_type: "Cast".into(),
        attribute: vec![AttributeProto {
            name: "to".into(),
            r#type: attr_type::INT,
            i: to.onnx_code() as i64,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Rewrites `model` so that it runs without bf16 kernels. Returns the number
/// of nodes rewritten.
pub fn emulate_bf16(model: &mut ModelProto) -> usize {
    let bf16 = DType::Bfloat16.onnx_code();
    let Some(g) = model.graph.as_mut() else {
        return 0;
    };
    let mut is_bf16: HashSet<String> = HashSet::new();
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if elem_type(v) == Some(bf16) {
            is_bf16.insert(v.name.clone());
        }
    }
    for t in &g.initializer {
        if t.data_type == bf16 {
            is_bf16.insert(t.name.clone());
        }
    }
    let mut up: HashMap<String, String> = HashMap::new();
    let mut nodes = Vec::with_capacity(g.node.len() * 2);
    let mut extra_info = Vec::new();
    let mut rewritten = 0;
    for mut n in std::mem::take(&mut g.node) {
        let touches = n.input.iter().chain(&n.output).any(|x| is_bf16.contains(x));
        if n.op_type == "Cast" || !touches {
            nodes.push(n);
            continue;
        }
        rewritten += 1;
        for inp in n.input.iter_mut() {
            if is_bf16.contains(inp.as_str()) {
                let f = up.entry(inp.clone()).or_insert_with(|| {
                    let f = format!("{inp}__f32");
                    nodes.push(cast_node(inp, &f, DType::Float32));
                    extra_info.push(float_info(&f));
                    f
                });
                *inp = f.clone();
            }
        }
        let mut downs = Vec::new();
        for out in n.output.iter_mut() {
            if is_bf16.contains(out.as_str()) {
                let f = format!("{out}__f32c");
                downs.push(cast_node(&f, out, DType::Bfloat16));
                extra_info.push(float_info(&f));
                *out = f;
            }
        }
        nodes.push(n);
        nodes.extend(downs);
    }
    g.node = nodes;
    g.value_info.extend(extra_info);
    rewritten
}

//! A stable, line-per-item text dump of a graph, checked into the tests so
//! a change of the exported graph shows up in review. Offsets of external
//! data and the producer version are left out; everything that changes what
//! the graph computes is in.

use std::fmt::Write;

use wanrt_core::DType;

use crate::onnx::*;

fn dtype_name(code: i32) -> String {
    DType::from_onnx_code(code)
        .map(|d| d.name().to_string())
        .unwrap_or_else(|| format!("dtype{code}"))
}

fn type_string(t: &Option<TypeProto>) -> String {
    match t.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(tt)) => {
            let dims = tt.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(tensor_shape_proto::dimension::Value::DimValue(v)) => v.to_string(),
                        Some(tensor_shape_proto::dimension::Value::DimParam(p)) => p.clone(),
                        None => "?".into(),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            });
            match dims {
                Some(d) => format!("{}[{d}]", dtype_name(tt.elem_type)),
                None => dtype_name(tt.elem_type),
            }
        }
        None => "?".into(),
    }
}

fn attr_string(a: &AttributeProto) -> String {
    let v = match a.r#type {
        attr_type::FLOAT => format!("{}", a.f),
        attr_type::INT => a.i.to_string(),
        attr_type::STRING => format!("{:?}", String::from_utf8_lossy(&a.s)),
        attr_type::INTS => format!("{:?}", a.ints),
        attr_type::FLOATS => format!("{:?}", a.floats),
        t => format!("<type {t}>"),
    };
    format!("{}={v}", a.name)
}

/// The dump of `model`.
pub fn dump(model: &ModelProto) -> String {
    // `fmt::Write` into a `String` cannot fail: the `unwrap`s below never fire.
    let mut s = String::new();
    let g = model.graph.clone().unwrap_or_default();
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|o| {
            format!(
                "{}{}",
                if o.domain.is_empty() {
                    "ai.onnx"
                } else {
                    &o.domain
                },
                o.version
            )
        })
        .collect();
    writeln!(
        s,
        "graph {} ir{} {}",
        g.name,
        model.ir_version,
        opsets.join(" ")
    )
    .unwrap();
    for i in &g.input {
        writeln!(s, "input {}: {}", i.name, type_string(&i.r#type)).unwrap();
    }
    for o in &g.output {
        writeln!(s, "output {}: {}", o.name, type_string(&o.r#type)).unwrap();
    }
    for t in &g.initializer {
        let place = if t.data_location == DATA_LOCATION_EXTERNAL {
            " external".to_string()
        } else if t.data_type == DType::Int64.onnx_code() && t.raw_data.len() <= 64 {
            let vals: Vec<i64> = t
                .raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            format!(" = {vals:?}")
        } else {
            " inline".to_string()
        };
        writeln!(
            s,
            "init {}: {}{:?}{place}",
            t.name,
            dtype_name(t.data_type),
            t.dims
        )
        .unwrap();
    }
    for n in &g.node {
        let attrs: Vec<String> = n.attribute.iter().map(attr_string).collect();
        let attrs = if attrs.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", attrs.join(", "))
        };
        let domain = if n.domain.is_empty() {
            String::new()
        } else {
            format!("{}.", n.domain)
        };
        writeln!(
            s,
            "{} = {domain}{}({}){attrs}",
            n.output.join(", "),
            n.op_type,
            n.input.join(", ")
        )
        .unwrap();
    }
    s
}

/// Counts of each op type, for a short summary.
pub fn op_histogram(model: &ModelProto) -> Vec<(String, usize)> {
    let mut h = std::collections::BTreeMap::<String, usize>::new();
    if let Some(g) = &model.graph {
        for n in &g.node {
            *h.entry(n.op_type.clone()).or_default() += 1;
        }
    }
    h.into_iter().collect()
}

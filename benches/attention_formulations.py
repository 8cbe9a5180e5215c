#!/usr/bin/env python3
"""Times exact fp32 attention formulations on ONNX Runtime's CPU provider.

One graph per formulation computes `softmax(q·kᵀ/√d)·v` on the DiT's layout
(`[1, tokens, heads·d]` in and out, as the q/k/v projections give them), with
the same random inputs; each is checked against the opset-23 `Attention` op
and timed (minimum of repeated runs, after a warm-up). The formulations are
the ones `graphs::AttentionKind` can emit, plus blocked variants for the
record:

- `onnx`: opset-23 `Attention` (what TensorRT/CUDA engines use);
- `mha`: `com.microsoft.MultiHeadAttention` (ONNX Runtime's CPU kernel, with
  its flash-attention path);
- `matmul`: Reshape/Transpose to `[1, heads, s, d]`, q scaled by 1/√d,
  MatMul → Softmax → MatMul, back to `[1, s, heads·d]`;
- `matmul-chunkN`: the same over query blocks of N rows (bounded scores).

    python3 benches/attention_formulations.py [--threads 2] [--iters 10]

Needs `numpy`, `onnx` and `onnxruntime==1.31.1` (the venv compare_reference.py
uses). Figures are recorded in docs/MEASUREMENTS.md.
"""

import argparse
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

F = TensorProto.FLOAT


def i64(name, vals):
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(vals)], vals))


def graph(kind, n, m, heads, d):
    hd = heads * d
    ins = [helper.make_tensor_value_info(x, F, [1, s, hd]) for x, s in (("q", n), ("k", m), ("v", m))]
    out = helper.make_tensor_value_info("o", F, [1, n, hd])
    nodes = []
    opsets = [helper.make_opsetid("", 23)]
    if kind == "onnx":
        nodes.append(helper.make_node("Attention", ["q", "k", "v"], ["o"], q_num_heads=heads, kv_num_heads=heads))
    elif kind == "onnx4d":
        nodes += [i64("s4", [0, 0, heads, d]), i64("s3", [0, 0, hd])]
        for x in "qkv":
            nodes += [helper.make_node("Reshape", [x, "s4"], [x + "4"]),
                      helper.make_node("Transpose", [x + "4"], [x + "t"], perm=[0, 2, 1, 3])]
        nodes += [helper.make_node("Attention", ["qt", "kt", "vt"], ["ot"]),
                  helper.make_node("Transpose", ["ot"], ["o4"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["o4", "s3"], ["o"])]
    elif kind == "mha":
        opsets.append(helper.make_opsetid("com.microsoft", 1))
        nodes.append(helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=heads))
    elif kind.startswith("matmul"):
        chunk = int(kind.split("chunk")[1]) if "chunk" in kind else n
        nodes += [i64("s4", [0, 0, heads, d]), i64("s3", [0, 0, hd]),
                  helper.make_node("Constant", [], ["scale"], value=helper.make_tensor("scale", F, [], [d ** -0.5]))]
        nodes += [helper.make_node("Mul", ["q", "scale"], ["qs"]),
                  helper.make_node("Reshape", ["qs", "s4"], ["q4"]),
                  helper.make_node("Transpose", ["q4"], ["qt"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["k", "s4"], ["k4"]),
                  helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
                  helper.make_node("Reshape", ["v", "s4"], ["v4"]),
                  helper.make_node("Transpose", ["v4"], ["vt"], perm=[0, 2, 1, 3])]
        parts = []
        starts = list(range(0, n, chunk))
        if len(starts) > 1:
            sizes = [min(chunk, n - s) for s in starts]
            nodes += [i64("splits", sizes),
                      helper.make_node("Split", ["qt", "splits"], [f"qc{i}" for i in range(len(sizes))], axis=2)]
            qs = [f"qc{i}" for i in range(len(sizes))]
        else:
            qs = ["qt"]
        for i, qc in enumerate(qs):
            nodes += [helper.make_node("MatMul", [qc, "kt"], [f"sc{i}"]),
                      helper.make_node("Softmax", [f"sc{i}"], [f"p{i}"], axis=-1),
                      helper.make_node("MatMul", [f"p{i}", "vt"], [f"oc{i}"])]
            parts.append(f"oc{i}")
        if len(parts) > 1:
            nodes.append(helper.make_node("Concat", parts, ["ot"], axis=2))
        else:
            nodes.append(helper.make_node("Identity", parts, ["ot"]))
        nodes += [helper.make_node("Transpose", ["ot"], ["o4"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["o4", "s3"], ["o"])]
    else:
        raise ValueError(kind)
    g = helper.make_graph(nodes, kind, ins, [out])
    model = helper.make_model(g, opset_imports=opsets)
    model.ir_version = 10
    return model.SerializeToString()


def session(model, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--tokens", default="480,2304,3000")
    ap.add_argument("--shapes", default="6x64,12x128", help="heads x head_dim, comma-separated")
    ap.add_argument("--kinds", default="onnx,onnx4d,mha,matmul,matmul-chunk256,matmul-chunk1024")
    ap.add_argument("--text", type=int, default=128, help="cross-attention keys (0: skip)")
    a = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, threads {a.threads}, load average {os.getloadavg()[0]:.2f}")
    kinds = a.kinds.split(",")
    print("| heads×d | queries | keys | " + " | ".join(kinds) + " | max |Δ| vs onnx |")
    print("|---|---|---|" + "---|" * len(kinds) + "---|")
    rng = np.random.default_rng(0)
    for shape in a.shapes.split(","):
        heads, d = map(int, shape.split("x"))
        for n in map(int, a.tokens.split(",")):
            for m in [n] + ([a.text] if a.text else []):
                feeds = {x: rng.standard_normal((1, s, heads * d), dtype=np.float32)
                         for x, s in (("q", n), ("k", m), ("v", m))}
                row, ref, err = [], None, 0.0
                for kind in kinds:
                    s = session(graph(kind, n, m, heads, d), a.threads)
                    out = s.run(None, feeds)[0]
                    if ref is None:
                        ref = out
                    err = max(err, float(np.abs(out - ref).max()))
                    times = []
                    for _ in range(a.iters):
                        t = time.perf_counter()
                        s.run(None, feeds)
                        times.append(time.perf_counter() - t)
                    row.append(f"{min(times) * 1e3:.2f} ms")
                print(f"| {heads}×{d} | {n} | {m} | " + " | ".join(row) + f" | {err:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Times the reference (diffusers `WanTransformer3DModel`, PyTorch eager) and
wanrt (wan-compile + wan-run on ONNX Runtime) on the same synthetic DiT config,
on the same machine, in one run, at several sizes, and prints the ratios.

It is a bench, not a CI test: it needs PyTorch and diffusers
(`pip install torch diffusers==0.42.1` into a virtual environment), the
release binaries (`cargo build --release -p wanrt-compiler -p wanrt-app`, or
wherever wan-compile and wan-run are built; `--bin`), and ONNX Runtime via
ORT_DYLIB_PATH. Both sides run float32 on the CPU with the same thread count
(torch: `torch.set_num_threads`; ONNX Runtime: one intra-op thread per
physical core, its default, so `--threads` must equal the core count for a
fair run: the script says so when it does not). The reference's weights are
saved in the diffusers layout and compiled by wan-compile, so both run the
very same weights and inputs, and the outputs are compared as a sanity check.

Each timing is the minimum over `--iters` calls after one warm-up call (the
box is shared: the minimum is the least disturbed run); the load average is
printed before and after.

`--precision P` adds a column: the same model compiled with `wan-compile
--precision P` (e.g. int8) and timed the same way, with its error against
the reference; a precision this wan-compile does not know prints why and
leaves the column empty. `--attention` is passed to wan-compile for the fp32
column (default auto); a comma-separated list (`onnx,mha,matmul`) times one
fp32 column per formulation, the first one giving the ratio.

    python3 benches/compare_reference.py [--sizes 256x160x9,512x384x9,480x320x17]
        [--dim 384 --heads 6 --layers 4 ...] [--precision int8]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tokens_of(w, h, f):
    return ((f - 1) // 4 + 1) * (h // 16) * (w // 16)


def dit_flops(a, n):
    """Multiply-add FLOPs (2 per MAC) of one T2V forward at `n` tokens."""
    d, L = a.dim, a.text_len
    per_layer = (
        4 * 2 * n * d * d          # self-attention q, k, v, o
        + 4 * n * n * d            # self-attention q·kᵀ and p·v (all heads)
        + 2 * 2 * n * d * d        # cross-attention q, o
        + 2 * 2 * L * d * d        # cross-attention k, v
        + 4 * n * L * d            # cross-attention scores and p·v
        + 2 * 2 * n * d * a.ffn    # FFN
    )
    embed = 2 * n * 64 * d + 2 * n * d * 64 + 2 * L * (a.text_dim * d + d * d)
    return a.layers * per_layer + embed


def gemm_rates(threads, m, k, n, iters=10):
    """GFLOPS of one fp32 [m,k]·[k,n] MatMul in torch and in ONNX Runtime (best of `iters`)."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper
    x = torch.randn(m, k)
    w = torch.randn(k, n)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - t)
    torch_rate = 2 * m * k * n / best / 1e9
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [helper.make_tensor("w", TensorProto.FLOAT, [k, n], w.numpy().ravel())])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    sess.run(None, feed)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - t)
    return torch_rate, 2 * m * k * n / best / 1e9


def wanrt_time(bin_dir, model_dir, inputs, work, w, h, f, text_len, precision, attention, iters):
    """Compiles and times one wanrt DiT; returns (min seconds, output, compile line) or raises."""
    engines = work / f"engines-{precision}-{attention}-{w}x{h}x{f}"
    cmd = [
        f"{bin_dir}/wan-compile", "--model", str(model_dir), "--out", str(engines),
        "--width", str(w), "--height", str(h), "--frames", str(f),
        "--text-len", str(text_len), "--precision", precision, "--networks", "dit",
    ]
    if attention and attention != "auto":
        cmd += ["--attention", attention]
    c = subprocess.run(cmd, capture_output=True, text=True)
    if c.returncode != 0:
        lines = c.stderr.strip().splitlines()
        raise RuntimeError(next((l for l in lines if "error" in l), lines[-1] if lines else "failed"))
    wrote = next((l for l in c.stderr.splitlines() if l.startswith("wrote ")), "")
    out_file = work / f"out-{precision}-{attention}-{w}x{h}x{f}.safetensors"
    r = subprocess.run([
        f"{bin_dir}/wan-run", "component", "dit", "--engines", str(engines),
        "--input", str(inputs), "--output", str(out_file), "--overwrite",
        "--repeat", str(iters + 1),
    ], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["wan-run failed"])[-1])
    line = next(l for l in r.stdout.splitlines() if "median" in l)
    ours = float(line.split("min ")[1].split(" s")[0])
    from safetensors.torch import load_file
    return ours, load_file(str(out_file))["noise_pred"], wrote


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--text-dim", type=int, default=512)
    ap.add_argument("--sizes", default="256x160x9,512x384x9,480x320x17",
                    help="WxHxF, comma-separated (default: 480, 2,304 and 3,000 tokens)")
    ap.add_argument("--text-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--attention", default="auto",
                    help="wan-compile --attention for the fp32 column(s), comma-separated")
    ap.add_argument("--precision", default=None, help="an extra wan-compile --precision to time (e.g. int8)")
    ap.add_argument("--bin", default=str(ROOT / "target" / "release"))
    a = ap.parse_args()

    import torch
    import diffusers
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    head_dim = a.dim // a.heads
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=a.heads, attention_head_dim=head_dim,
        in_channels=16, out_channels=16, text_dim=a.text_dim, freq_dim=256, ffn_dim=a.ffn,
        num_layers=a.layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    ).eval()
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    kinds = a.attention.split(",")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    print(f"reference: diffusers {diffusers.__version__}, torch {torch.__version__} eager, "
          f"{torch.get_num_threads()} threads; wanrt: ONNX Runtime CPU ({a.bin})")
    if a.threads != os.cpu_count():
        print(f"note: torch runs {a.threads} threads, ONNX Runtime one per core ({os.cpu_count()} CPUs here)")
    print(f"config: dim {a.dim}, heads {a.heads}, layers {a.layers}, ffn {a.ffn}, text {a.text_len}, "
          f"min of {a.iters} timed calls after a warm-up")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp / "transformer", safe_serialization=True)
        for (w, h, f) in sizes:
            lf, lh, lw = (f - 1) // 4 + 1, h // 8, w // 8
            g = torch.Generator().manual_seed(w * 100003 + h * 101 + f)
            inputs = {
                "hidden_states": torch.randn(1, 16, lf, lh, lw, generator=g),
                "timestep": torch.tensor([500.0]),
                "encoder_hidden_states": torch.randn(1, a.text_len, a.text_dim, generator=g),
            }
            inputs_file = tmp / f"inputs-{w}x{h}x{f}.safetensors"
            save_file({k: v.contiguous() for k, v in inputs.items()}, str(inputs_file))
            with torch.no_grad():
                ref = model(**inputs, return_dict=False)[0]
                times = []
                for _ in range(a.iters):
                    t = time.perf_counter()
                    model(**inputs, return_dict=False)
                    times.append(time.perf_counter() - t)
            ref_s = min(times)
            row = {"size": f"{w}x{h}x{f}", "tokens": tokens_of(w, h, f), "reference_s": ref_s}
            for i, kind in enumerate(kinds):
                ours, got, wrote = wanrt_time(a.bin, tmp / "transformer", inputs_file, tmp, w, h, f,
                                              a.text_len, "fp32", kind, a.iters)
                err = (got - ref).abs().max().item()
                if i == 0:
                    row.update(wanrt_fp32_s=ours, ratio_fp32=ref_s / ours, max_abs_fp32=err,
                               compiled=wrote)
                row[f"wanrt_fp32_{kind}_s"] = ours
                row[f"max_abs_fp32_{kind}"] = err
            if a.precision:
                try:
                    q, got_q, _ = wanrt_time(a.bin, tmp / "transformer", inputs_file, tmp, w, h, f,
                                             a.text_len, a.precision, None, a.iters)
                    row.update({f"wanrt_{a.precision}_s": q, f"ratio_{a.precision}": ref_s / q,
                                f"max_abs_{a.precision}": (got_q - ref).abs().max().item()})
                except RuntimeError as e:
                    row[f"{a.precision}_error"] = str(e)
                    print(f"note: --precision {a.precision} not timed at {w}x{h}x{f}: {e}")
            rows.append(row)
            print(json.dumps(row), flush=True)

    extra = a.precision
    head = f"| size (tokens) | reference | wanrt fp32 ({kinds[0]}) | reference / wanrt fp32 |"
    rule = "|---|---|---|---|"
    for kind in kinds[1:]:
        head += f" fp32 {kind} | ratio |"
        rule += "---|---|"
    if extra:
        head += f" wanrt {extra} | reference / wanrt {extra} |"
        rule += "---|---|"
    print(f"\nload average after: {os.getloadavg()[0]:.2f}\n")
    print(head)
    print(rule)
    for r in rows:
        line = (f"| {r['size']} ({r['tokens']:,}) | {r['reference_s'] * 1e3:.1f} ms | "
                f"{r['wanrt_fp32_s'] * 1e3:.1f} ms | **{r['ratio_fp32']:.2f}×** |")
        for kind in kinds[1:]:
            t = r[f"wanrt_fp32_{kind}_s"]
            line += f" {t * 1e3:.1f} ms | {r['reference_s'] / t:.2f}× |"
        if extra:
            if f"wanrt_{extra}_s" in r:
                line += f" {r[f'wanrt_{extra}_s'] * 1e3:.1f} ms | **{r[f'ratio_{extra}']:.2f}×** |"
            else:
                line += " — | — |"
        print(line)
    print("max |wanrt fp32 - reference|: " + ", ".join(f"{r['max_abs_fp32']:.1e}" for r in rows))
    # How close each side runs to the machine's fp32 matrix rate: the DiT's
    # multiply-adds over its time, against one large FFN-shaped GEMM.
    n_max = max(r["tokens"] for r in rows)
    t_rate, o_rate = gemm_rates(a.threads, n_max, a.dim, a.ffn)
    print(f"\nfp32 GEMM [{n_max}×{a.dim}]·[{a.dim}×{a.ffn}]: torch {t_rate:.0f} GFLOPS, "
          f"ONNX Runtime {o_rate:.0f} GFLOPS")
    for r in rows:
        fl = dit_flops(a, r["tokens"])
        print(f"{r['size']}: {fl / 1e9:.1f} GFLOP per forward; reference {fl / r['reference_s'] / 1e9:.0f} "
              f"GFLOPS, wanrt fp32 {fl / r['wanrt_fp32_s'] / 1e9:.0f} GFLOPS")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())

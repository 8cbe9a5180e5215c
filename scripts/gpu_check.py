#!/usr/bin/env python3
"""The PyTorch half and the bookkeeping of scripts/gpu-check.sh.

    gpu_check.py make  --config small|1.3b|fixture --out DIR [--device cuda|cpu]
    gpu_check.py torch --dir DIR [--device cuda|cpu] [--iters N]
    gpu_check.py table --dir DIR --label L --table FILE

`make` builds diffusers' WanTransformer3DModel with random weights from a
fixed seed, saves it in the diffusers layout (DIR/transformer, bf16 on a GPU)
with one set of random inputs (DIR/inputs.safetensors), and writes
DIR/config.json (the profile wan-compile needs). `fixture` uses the tiny
fixture model and its golden inputs instead and needs no PyTorch (the dry
run on a machine without it).

`torch` times the same weights on the same inputs in PyTorch with each SDPA
backend (flash and cuDNN on a GPU; math on the CPU), median of N with CUDA
events on a GPU, and writes DIR/torch.json and DIR/torch.safetensors (the
first backend's output). Without torch/diffusers it writes why into
DIR/torch.json and exits 0: the table says the half was skipped.

`table` appends the config's rows to FILE (markdown) from DIR/ort.json and
DIR/torch.json (with the step-cache rows where ort.json has them), and
prints the PyTorch/ORT ratio.
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (dim, heads, layers, ffn, text_dim, width, height, frames, text_len)
CONFIGS = {
    # Launch-bound: ~1,280 tokens.
    "small": (768, 12, 4, 3072, 4096, 256, 256, 17, 512),
    # Wan2.1 T2V-1.3B at 480p: 32,760 tokens.
    "1.3b": (1536, 12, 30, 8960, 4096, 832, 480, 81, 512),
}


def make(a):
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.config == "fixture":
        src = ROOT / "tests/fixtures/t2v-tiny"
        if (out / "transformer").exists():
            shutil.rmtree(out / "transformer")
        shutil.copytree(src / "model/transformer", out / "transformer")
        shutil.copy(src / "golden/dit.safetensors", out / "inputs.safetensors")
        case = json.loads((src / "case.json").read_text())
        v = case["video"]
        cfg = {
            "width": v["width"], "height": v["height"], "frames": v["num_frames"],
            "text_len": case["max_sequence_length"], "batch": "dynamic",
        }
        (out / "config.json").write_text(json.dumps(cfg))
        print(f"make: fixture t2v-tiny -> {out}")
        return 0
    import torch
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    dim, heads, layers, ffn, text_dim, w, h, f, tl = CONFIGS[a.config]
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=dim // heads,
        in_channels=16, out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=ffn,
        num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    ).to(dtype)
    model.save_pretrained(out / "transformer", safe_serialization=True)
    lf, lh, lw = (f - 1) // 4 + 1, h // 8, w // 8
    g = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 16, lf, lh, lw, generator=g),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, tl, text_dim, generator=g),
    }
    save_file(inputs, str(out / "inputs.safetensors"))
    cfg = {"width": w, "height": h, "frames": f, "text_len": tl, "batch": "1"}
    (out / "config.json").write_text(json.dumps(cfg))
    print(f"make: {a.config} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, "
          f"{lf * (lh // 2) * (lw // 2)} tokens) -> {out}")
    return 0


def run_torch(a):
    d = Path(a.dir)
    report = {"device": a.device}
    try:
        import torch
        from diffusers import WanTransformer3DModel
        from safetensors.torch import load_file, save_file
    except ImportError as e:
        report["skipped"] = f"PyTorch half skipped: {e} (pip install torch diffusers==0.42.1)"
        (d / "torch.json").write_text(json.dumps(report, indent=1))
        print(report["skipped"])
        return 0
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device(a.device)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    model = WanTransformer3DModel.from_pretrained(d / "transformer", torch_dtype=dtype).to(dev).eval()
    raw = load_file(str(d / "inputs.safetensors"))
    names = ["hidden_states", "timestep", "encoder_hidden_states"]
    inputs = {k: raw[k].to(dev) for k in names}
    inputs = {k: (v.to(dtype) if k != "timestep" else v) for k, v in inputs.items()}
    backends = ([("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]
                if a.device == "cuda" else [("math", SDPBackend.MATH)])
    report.update({"torch": torch.__version__, "diffusers": __import__("diffusers").__version__})
    first = None
    for name, backend in backends:
        try:
            with torch.no_grad(), sdpa_kernel([backend]):
                out = model(**inputs, return_dict=False)[0]
                times = []
                for _ in range(a.iters):
                    if a.device == "cuda":
                        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        s.record()
                        model(**inputs, return_dict=False)
                        e.record()
                        torch.cuda.synchronize()
                        times.append(s.elapsed_time(e) / 1000)
                    else:
                        t = time.perf_counter()
                        model(**inputs, return_dict=False)
                        times.append(time.perf_counter() - t)
            report[f"sdpa_{name}_s"] = statistics.median(times)
            if first is None:
                first = out.float().cpu().contiguous()
        except Exception as e:  # a backend unavailable for this shape/GPU
            report[f"sdpa_{name}_s"] = f"failed: {e}"
    if first is not None:
        save_file({"noise_pred": first}, str(d / "torch.safetensors"))
    (d / "torch.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0


def fmt(v):
    return f"{v * 1000:.2f} ms" if isinstance(v, (int, float)) else str(v)


def table(a):
    d = Path(a.dir)
    ort = json.loads((d / "ort.json").read_text())
    tj = d / "torch.json"
    tor = json.loads(tj.read_text()) if tj.exists() else {"skipped": "not run"}
    rows = [f"\n### {a.label}: {ort.get('profile')}, {ort.get('precision')}, {ort.get('backend')}\n",
            "| measurement | value |", "|---|---|"]
    for k in ["session_create_s", "first_run_s", "plain_run_s", "bound_run_s", "graph_capture_run_s",
              "graph_replay_s", "copy_pageable_8MB_s", "copy_pinned_8MB_s"]:
        if k in ort:
            rows.append(f"| ORT {k[:-2].replace('_', ' ')} | {fmt(ort[k])} |")
    for k in ["bound_vs_plain_max_abs", "graph_replay_fresh_vs_plain_max_abs",
              "graph_replay_stale_vs_plain_max_abs", "vs_reference_rel_l2", "vs_reference_max_abs"]:
        if k in ort:
            rows.append(f"| {k.replace('_', ' ')} | {ort[k]:.3e} |")
    if "cache_steps" in ort:
        n = ort["cache_steps"]
        for name in ("none", "magcache_host", "magcache_device"):
            label = name.replace("_", " ")
            rows.append(f"| step cache {label}, {n} UniPC steps | {ort[f'cache_{name}_calls']} block-stack calls, "
                        f"{ort[f'cache_{name}_s']:.3f} s |")
            if f"cache_{name}_speedup" in ort:
                rows.append(f"| step cache {label} speed-up | {ort[f'cache_{name}_speedup']:.2f}x "
                            f"({ort[f'cache_{name}_bytes']} B of cache buffers) |")
        rows.append(f"| step cache table | {ort['cache_table']} |")
    if "skipped" in tor:
        rows.append(f"| PyTorch | {tor['skipped']} |")
    for k, v in tor.items():
        if k.startswith("sdpa_"):
            rows.append(f"| PyTorch {tor.get('torch')} SDPA {k[5:-2]} | {fmt(v)} |")
    ours = [ort[k] for k in ("plain_run_s", "bound_run_s", "graph_replay_s") if isinstance(ort.get(k), (int, float))]
    theirs = [v for k, v in tor.items() if k.startswith("sdpa_") and isinstance(v, (int, float))]
    ratio = None
    if ours and theirs:
        ratio = min(theirs) / min(ours)
        rows.append(f"| ratio best PyTorch / best ORT | {ratio:.2f}x |")
    with open(a.table, "a") as f:
        f.write("\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"ratio ({a.label}): " + (f"{ratio:.2f}x (PyTorch time / ORT time)" if ratio else
                                     "n/a (PyTorch half skipped or failed)"))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--config", choices=[*CONFIGS, "fixture"], required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    t = sub.add_parser("torch")
    t.add_argument("--dir", required=True)
    t.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    t.add_argument("--iters", type=int, default=10)
    tb = sub.add_parser("table")
    tb.add_argument("--dir", required=True)
    tb.add_argument("--label", required=True)
    tb.add_argument("--table", required=True)
    a = ap.parse_args()
    return {"make": make, "torch": run_torch, "table": table}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())

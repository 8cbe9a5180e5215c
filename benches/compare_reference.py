#!/usr/bin/env python3
"""Times the reference (diffusers `WanTransformer3DModel`, PyTorch eager) and
wanrt (wan-compile + wan-run on ONNX Runtime) on the same synthetic DiT config,
on the same machine, in one run, and prints the ratio.

It is a bench, not a CI test: it needs PyTorch and diffusers
(`pip install torch diffusers==0.42.1`) and the release binaries
(`cargo build --release`), and ONNX Runtime via ORT_DYLIB_PATH
(`source scripts/env.sh`). Both sides run float32 on the CPU with the same
thread count; the reference's weights are saved in the diffusers layout and
compiled by wan-compile, so both run the very same weights and inputs, and
the outputs are compared as a sanity check.

    python3 benches/compare_reference.py [--dim 384 --heads 6 --layers 4 ...]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--text-dim", type=int, default=512)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=160)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--text-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--bin", default=str(ROOT / "target" / "release"))
    a = ap.parse_args()

    import torch
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
    lf, lh, lw = (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8
    inputs = {
        "hidden_states": torch.randn(1, 16, lf, lh, lw),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, a.text_len, a.text_dim),
    }
    tokens = lf * (lh // 2) * (lw // 2)
    print(f"config: dim {a.dim}, heads {a.heads}, layers {a.layers}, ffn {a.ffn}, "
          f"{a.width}x{a.height}x{a.frames} ({tokens} tokens), text {a.text_len}, threads {a.threads}")

    with torch.no_grad():
        ref = model(**inputs, return_dict=False)[0]
        times = []
        for _ in range(a.iters):
            t = time.perf_counter()
            model(**inputs, return_dict=False)
            times.append(time.perf_counter() - t)
    ref_median = statistics.median(times)
    print(f"reference (diffusers {__import__('diffusers').__version__}, torch {torch.__version__} eager): "
          f"median {ref_median:.4f} s, min {min(times):.4f} s over {a.iters}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model.save_pretrained(tmp / "transformer", safe_serialization=True)
        save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp / "inputs.safetensors"))
        subprocess.run([
            f"{a.bin}/wan-compile", "--model", str(tmp / "transformer"), "--out", str(tmp / "engines"),
            "--width", str(a.width), "--height", str(a.height), "--frames", str(a.frames),
            "--text-len", str(a.text_len), "--precision", "fp32", "--networks", "dit",
        ], check=True)
        out = subprocess.run([
            f"{a.bin}/wan-run", "component", "dit", "--engines", str(tmp / "engines"),
            "--input", str(tmp / "inputs.safetensors"), "--output", str(tmp / "out.safetensors"),
            "--repeat", str(a.iters + 1),
        ], check=True, capture_output=True, text=True)
        line = next(l for l in out.stdout.splitlines() if "median" in l)
        ours = float(line.split("median ")[1].split(" s")[0])
        print(f"wanrt (ONNX Runtime CPU): {line}")
        from safetensors.torch import load_file
        got = load_file(str(tmp / "out.safetensors"))["noise_pred"]
        err = (got - ref).abs().max().item()
        print(f"max |wanrt - reference| = {err:.3e}")
    print(f"ratio reference / wanrt = {ref_median / ours:.2f}x")
    print(json.dumps({"reference_s": ref_median, "wanrt_s": ours, "ratio": ref_median / ours, "max_abs": err}))


if __name__ == "__main__":
    sys.exit(main())

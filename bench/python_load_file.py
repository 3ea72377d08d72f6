"""plaid.torch.load_file against safetensors.torch.load_file on the same weights (a
GPT-style bf16 checkpoint), into fresh CPU tensors, rounds alternating, medians.

    PYTHONPATH=bindings/python PLAID_LIB=target/release/libplaid.so \
        bench/.venv/bin/python bench/python_load_file.py [--size-gib 1] [--rounds 5]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file as st_load, save_file as st_save

import plaid.torch as pt


def model(size_gib, hidden=2048):
    g = torch.Generator().manual_seed(0)
    out, total, layer = {}, 0, 0
    while total < size_gib * (1 << 30):
        for name, shape in [(f"layers.{layer}.attn.qkv.weight", (3 * hidden, hidden)),
                            (f"layers.{layer}.attn.out.weight", (hidden, hidden)),
                            (f"layers.{layer}.mlp.up.weight", (4 * hidden, hidden)),
                            (f"layers.{layer}.mlp.down.weight", (hidden, 4 * hidden)),
                            (f"layers.{layer}.norm.weight", (hidden,))]:
            out[name] = torch.randn(shape, generator=g).to(torch.bfloat16)
            total += out[name].numel() * 2
        layer += 1
    return out, total


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size-gib", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    weights, total = model(args.size_gib)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        st_path, pl_path = Path(tmp) / "m.safetensors", Path(tmp) / "m.plaid"
        st_save(weights, str(st_path))
        pt.save_file(weights, pl_path)
        def touched(tensors):
            # Read one byte of every 4 KiB page: what the first use of lazily mapped
            # weights costs.
            for t in tensors.values():
                t.view(-1).view(torch.uint8)[::4096].sum()
            return tensors

        loaders = {
            "safetensors.torch.load_file": lambda: st_load(str(st_path)),
            "plaid.torch.load_file (mmap, verified)": lambda: pt.load_file(pl_path),
            "plaid.torch.load_file (mmap, unverified)":
                lambda: pt.load_file(pl_path, verify=False),
            "plaid.torch.load_file (copy, verified)": lambda: pt.load_file(pl_path, mmap=False),
            "safetensors load_file + first touch": lambda: touched(st_load(str(st_path))),
            "plaid (mmap, verified) + first touch": lambda: touched(pt.load_file(pl_path)),
            "plaid (copy, verified) + first touch":
                lambda: touched(pt.load_file(pl_path, mmap=False)),
        }
        for f in loaders.values():  # warm the page cache and check the bytes
            got = f()
            assert all(torch.equal(got[k], v) for k, v in weights.items())
            del got
        times = {k: [] for k in loaders}
        for _ in range(args.rounds):
            for name, f in loaders.items():
                start = time.perf_counter()
                got = f()
                times[name].append(time.perf_counter() - start)
                del got
    print(f"{total / (1 << 30):.2f} GiB of bf16 weights in {len(weights)} tensors, into fresh "
          f"CPU tensors; {args.rounds} alternating rounds after a warm-up, medians\n")
    print(f"{'loader':<44} {'seconds':>8} {'GB/s':>7}")
    touch_base = statistics.median(times["safetensors load_file + first touch"])
    base = statistics.median(times["safetensors.torch.load_file"])
    for name, ts in times.items():
        m = statistics.median(ts)
        ref = touch_base if "touch" in name else base
        print(f"{name:<44} {m:>8.3f} {total / m / 1e9:>7.2f}   {ref / m:.2f}x safetensors")


if __name__ == "__main__":
    main()

"""plaid's own format against the same weights as a tensorizer file, through the same
pipeline into the same pre-faulted buffers, with loads alternating between the two files
(15 rounds, medians), so that this VM's drift between rows does not bias the ratio.

    PYTHONPATH=bindings/python PLAID_LIB=target/release/libplaid.so \
        python3 bench/formats_ab.py [--dir /tmp]
"""

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

import plaid
import plaid.numpy as pn

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default="/tmp")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    hidden = 2048
    tensors = {f"layers.{i}.{k}": rng.integers(0, 255, size=n, dtype=np.uint8)
               for i in range(12)
               for k, n in [("qkv", 3 * hidden * hidden * 2), ("out", hidden * hidden * 2),
                            ("up", 4 * hidden * hidden * 2), ("norm", 2 * hidden)]}
    own, tz = Path(args.dir) / "ab.plaid", Path(args.dir) / "ab.tensors"
    pn.save_file(tensors, own)
    subprocess.check_call([str(ROOT / "target/release/plaid"), "convert", str(own), str(tz)],
                          stdout=subprocess.DEVNULL)
    total = sum(a.nbytes for a in tensors.values())
    dest = {k: np.empty_like(v) for k, v in tensors.items()}
    print(f"{total / 2**30:.2f} GiB in {len(tensors)} tensors; {args.rounds} alternating rounds, "
          "medians (the first round dropped)\n")
    print(f"{'mode':<44} {'threads':>7} {'plaid GB/s':>11} {'tensorizer GB/s':>16} {'ratio':>6}")
    modes = [("unverified", dict(verify=False), dict(verify=False)),
             ("verified: CRC-32C blocks / CRC32 only", dict(), dict(verify_sha256=False)),
             ("verified: CRC-32C blocks / CRC32+SHA-256", dict(), dict())]
    for label, own_opts, tz_opts in modes:
        for threads in (1, 2):
            times = {own: [], tz: []}
            for r in range(args.rounds):
                order = (own, tz) if r % 2 else (tz, own)
                for path in order:
                    opts = own_opts if path == own else tz_opts
                    with plaid.Reader(path, threads=threads, **opts) as reader:
                        places = {}
                        for name, array in dest.items():
                            meta = reader.find(name)
                            places[meta.index] = plaid._destination(array, meta)
                        start = time.perf_counter()
                        reader.load(places)
                        times[path].append(time.perf_counter() - start)
            a, b = (statistics.median(times[x][1:]) for x in (own, tz))
            print(f"{label:<44} {threads:>7} {total / a / 1e9:>11.2f} {total / b / 1e9:>16.2f} "
                  f"{a / b:>5.2f}x")
    for name, array in tensors.items():
        assert np.array_equal(dest[name], array), name
    own.unlink()
    tz.unlink()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Two builds of libplaid side by side: the same files loaded by each, load by load,
alternating which goes first every round, medians of the rounds (the first dropped), so
that this machine's drift between rows does not bias the ratio.

    python3 bench/builds_ab.py --old-rev REV            # build REV and the working tree
    python3 bench/builds_ab.py --old A/libplaid.so --new B/libplaid.so

Each build runs in a worker process of its own (only the C API both builds have, through
ctypes), into destination buffers it allocated and faulted in once; the parent sends the
loads and collects the times. The files (written in --dir, removed at the end): a 1 GiB
model of 48 tensors as plaid, safetensors and tensorizer files, and 10,000 small tensors
as a plaid file. The page cache holds them all (a warm-cache comparison: the pipeline's
cost, not the disk's).
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ---- worker: one build, driven over stdin/stdout -------------------------------------------


class Info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("name_len", ctypes.c_size_t),
                ("dtype", ctypes.c_uint32), ("ndim", ctypes.c_uint32),
                ("shape", ctypes.POINTER(ctypes.c_uint64)), ("nbytes", ctypes.c_uint64),
                ("index", ctypes.c_size_t)]


class Dest(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint32), ("device", ctypes.c_int32),
                ("address", ctypes.c_uint64), ("capacity", ctypes.c_uint64)]


PLACE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.POINTER(Info),
                         ctypes.POINTER(Dest))


def worker(library):
    lib = ctypes.CDLL(library)
    vp = ctypes.c_void_p
    for name, args in [("plaid_read_options_new", [ctypes.POINTER(vp)]),
                       ("plaid_read_options_set_verify", [vp, ctypes.c_int32]),
                       ("plaid_read_options_set_verify_sha256", [vp, ctypes.c_int32]),
                       ("plaid_read_options_set_threads", [vp, ctypes.c_uint32]),
                       ("plaid_read_options_set_mmap", [vp, ctypes.c_int32]),
                       ("plaid_deserializer_open", [ctypes.c_char_p, vp, ctypes.POINTER(vp)]),
                       ("plaid_deserializer_tensor_count", [vp]),
                       ("plaid_deserializer_tensor", [vp, ctypes.c_size_t]),
                       ("plaid_deserializer_load", [vp, PLACE, vp]),
                       ("plaid_deserializer_verify", [vp])]:
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = ctypes.c_int32
    lib.plaid_deserializer_tensor_count.restype = ctypes.c_size_t
    lib.plaid_deserializer_tensor.restype = ctypes.POINTER(Info)
    lib.plaid_read_options_free.argtypes = [vp]
    lib.plaid_read_options_free.restype = None
    lib.plaid_deserializer_free.argtypes = [vp]
    lib.plaid_deserializer_free.restype = None
    buffers = {}  # by file: one pre-faulted buffer per tensor, reused every round

    for line in sys.stdin:
        job = json.loads(line)
        options = vp()
        assert lib.plaid_read_options_new(ctypes.byref(options)) == 0
        lib.plaid_read_options_set_verify(options, int(job["verify"]))
        lib.plaid_read_options_set_verify_sha256(options, int(job.get("sha256", True)))
        lib.plaid_read_options_set_threads(options, job["threads"])
        lib.plaid_read_options_set_mmap(options, int(job.get("mmap", True)))
        started = time.perf_counter()
        d = vp()
        status = lib.plaid_deserializer_open(job["file"].encode(), options, ctypes.byref(d))
        lib.plaid_read_options_free(options)
        assert status == 0, f"{library}: opening {job['file']}: status {status}"
        count = lib.plaid_deserializer_tensor_count(d)
        if job["file"] not in buffers:
            sizes = [lib.plaid_deserializer_tensor(d, i).contents.nbytes for i in range(count)]
            buffers[job["file"]] = [ctypes.create_string_buffer(max(n, 1)) for n in sizes]
        mine = buffers[job["file"]]

        @PLACE
        def place(_user, info, dest, mine=mine):
            i = info.contents.index
            dest.contents.kind = 1
            dest.contents.address = ctypes.addressof(mine[i])
            dest.contents.capacity = info.contents.nbytes
            return 0

        opened = time.perf_counter()
        if job["what"] == "verify":
            status = lib.plaid_deserializer_verify(d)
        else:
            status = lib.plaid_deserializer_load(d, place, None)
        done = time.perf_counter()
        lib.plaid_deserializer_free(d)
        assert status == 0, f"{library}: {job}: status {status}"
        print(json.dumps({"open": opened - started, "load": done - opened}), flush=True)


# ---- parent ---------------------------------------------------------------------------


def build(rev, out):
    """Build libplaid at git revision `rev` (or the working tree for None) under `out`."""
    src = ROOT
    if rev is not None:
        src = out / "src"
        if not src.exists():
            subprocess.check_call(["git", "-C", str(ROOT), "worktree", "add", "--detach",
                                   str(src), rev], stdout=subprocess.DEVNULL)
    target = out / "target"
    subprocess.check_call(["cargo", "build", "--release", "--lib", "--locked", "--quiet",
                           "--target-dir", str(target)], cwd=src)
    return target / "release" / "libplaid.so"


def make_files(directory, library):
    """The files every mode loads: written with the Python binding over `library`, then
    converted by the work tree's CLI."""
    sys.path.insert(0, str(ROOT / "bindings/python"))
    os.environ["PLAID_LIB"] = str(library)
    import numpy as np
    rng = np.random.default_rng(0)
    hidden = 2048
    big = {f"layers.{i}.{k}": rng.integers(0, 255, size=n, dtype=np.uint8)
           for i in range(12)
           for k, n in [("qkv", 3 * hidden * hidden * 2), ("out", hidden * hidden * 2),
                        ("up", 4 * hidden * hidden * 2), ("norm", 2 * hidden)]}
    small = {f"small.{i}": rng.integers(0, 255, size=1 + (i * 7919) % 20000, dtype=np.uint8)
             for i in range(10_000)}
    import plaid.numpy as pn
    files = {"plaid": directory / "ab.plaid", "small": directory / "ab-small.plaid",
             "safetensors": directory / "ab.safetensors", "tensorizer": directory / "ab.tensors"}
    pn.save_file(big, files["plaid"])
    pn.save_file(small, files["small"])
    cli = ROOT / "target/release/plaid"
    if not cli.exists():
        subprocess.check_call(["cargo", "build", "--release", "--locked", "--quiet"], cwd=ROOT)
    for kind in ("safetensors", "tensorizer"):
        subprocess.check_call([str(cli), "convert", str(files["plaid"]), str(files[kind])],
                              stdout=subprocess.DEVNULL)
    sizes = {k: sum(a.nbytes for a in (small if k == "small" else big).values()) for k in files}
    return files, sizes


MODES = [
    # (label, file, job options)
    ("plaid, verified, mmap copy", "plaid", dict(verify=True)),
    ("plaid, verified, pread", "plaid", dict(verify=True, mmap=False)),
    ("plaid, unverified", "plaid", dict(verify=False)),
    ("plaid, 10,000 small tensors, verified", "small", dict(verify=True)),
    ("safetensors", "safetensors", dict(verify=True)),
    ("tensorizer, CRC32 only", "tensorizer", dict(verify=True, sha256=False)),
    ("tensorizer, CRC32 + SHA-256", "tensorizer", dict(verify=True)),
    ("plaid, verify() (nothing kept)", "plaid", dict(verify=True, what="verify")),
]


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", help="the old build's libplaid.so")
    p.add_argument("--new", help="the new build's libplaid.so (default: build the work tree)")
    p.add_argument("--old-rev", help="build this git revision as the old build")
    p.add_argument("--dir", default="/tmp", help="where the test files are written")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", default="1,2", help="CPU workers to measure, comma-separated")
    p.add_argument("--only", help="run only the modes whose label contains this")
    p.add_argument("--files-lib", help="the build whose Python binding writes the files "
                   "(default: the new one; give the work tree's to compare two old builds)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker)
    builds = ROOT / "bench" / "data" / "builds"
    old = Path(args.old) if args.old else build(args.old_rev, builds / (args.old_rev or "old"))
    new = Path(args.new) if args.new else build(None, builds / "work-tree")
    files, sizes = make_files(Path(args.dir), Path(args.files_lib) if args.files_lib else new)
    workers = {}
    for name, library in (("old", old), ("new", new)):
        workers[name] = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(library)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)

    def run(name, job):
        w = workers[name]
        w.stdin.write(json.dumps(job) + "\n")
        w.stdin.flush()
        reply = w.stdout.readline()
        if not reply:
            raise SystemExit(f"the {name} build's worker died on {job}")
        return json.loads(reply)

    print(f"old: {old}\nnew: {new}\n{args.rounds} alternating rounds per row, medians with the "
          f"first round dropped; page cache warm\n")
    print(f"| {'mode':<40} | threads | {'old GB/s':>8} | {'new GB/s':>8} | new/old |")
    print(f"|{'-' * 42}|---------|----------|----------|---------|")
    for label, kind, options in MODES:
        if args.only and args.only not in label:
            continue
        for threads in [int(t) for t in args.threads.split(",")]:
            job = {"file": str(files[kind]), "threads": threads, "what": "load", **options}
            times = {"old": [], "new": []}
            for r in range(args.rounds):
                for name in (("old", "new") if r % 2 else ("new", "old")):
                    t = run(name, job)
                    times[name].append(t["open"] + t["load"])
            old_s, new_s = (statistics.median(times[n][1:]) for n in ("old", "new"))
            gb = sizes[kind] / 1e9
            print(f"| {label:<40} | {threads:>7} | {gb / old_s:>8.2f} | {gb / new_s:>8.2f} | "
                  f"{old_s / new_s:>6.3f}x |", flush=True)
    for w in workers.values():
        w.stdin.close()
        w.wait()
    for path in files.values():
        path.unlink()


if __name__ == "__main__":
    sys.exit(main())

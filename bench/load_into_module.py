"""The seed's flow, cold: a float32 Llama model (about --size-gib of parameters, random
weights, built from a LlamaConfig: no network) loaded into an empty module in a fresh
Python process, three ways, on the same weights:

  plaid         with plaid.torch.no_init_or_tensor(): model = LlamaForCausalLM(config)
                plaid.torch.TensorDeserializer(path, device="cpu").load_into_module(model)
                (verification on: plaid's default)
  tensorizer    with tensorizer.utils.no_init_or_tensor(): model = LlamaForCausalLM(config)
                tensorizer.TensorDeserializer(path, device="cpu").load_into_module(model)
                (tensorizer's default: verify_hash=False, no hash check)
  transformers  LlamaForCausalLM.from_pretrained(dir, dtype=torch.float32), safetensors

Each file is written once (plaid's and tensorizer's own TensorSerializer.write_module, and
save_pretrained) and read once to warm the page cache. Every load is its own process (this
script with --worker), which imports torch and the loader first, untimed, then measures
with time.perf_counter:
  load        from just before building the empty model (model construction is included
              for all three, so that from_pretrained is compared fairly) to the model
              being loaded;
  load+pass   the same, followed by one pass reading every parameter
              (sum(float(p.sum()) for p in model.parameters())), which faults in any
              lazily mapped pages;
and reports its peak RSS (VmHWM, so imports included; the RSS just before the load is
shown too; not ru_maxrss, which Linux carries over from the parent process). Outside the
timed region the worker checks a CRC-32 of every parameter and buffer against the one
taken when the files were written, and the pass's sum, so nothing wrong is ever timed.
Rounds run each method once, the order rotated per round; one warm-up round is discarded;
medians of --runs rounds (at least 5). Files go in a temporary directory (--dir), removed
at the end unless --keep.

    PLAID_LIB=target/release/libplaid.so PYTHONPATH=bindings/python \
        python3 bench/load_into_module.py [--size-gib 1] [--runs 5] [--dir /tmp] [--keep]
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

METHODS = ("plaid", "tensorizer", "transformers")
LABELS = {
    "plaid": "plaid TensorDeserializer.load_into_module (verified)",
    "tensorizer": "tensorizer TensorDeserializer.load_into_module (verify_hash=False)",
    "transformers": "transformers from_pretrained (safetensors)",
}


def llama_config(size_gib):
    """A LlamaConfig with about ``size_gib`` GiB of float32 parameters (the layer count is
    what varies)."""
    from transformers import LlamaConfig
    hidden, inter, vocab = 1024, 2816, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden  # embeddings, lm_head (untied), final norm
    layers = max(1, round((size_gib * (1 << 30) / 4 - fixed) / per_layer))
    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, vocab_size=vocab,
                       num_hidden_layers=layers, num_attention_heads=16,
                       num_key_value_heads=16, max_position_embeddings=2048,
                       tie_word_embeddings=False)


def checksums(model):
    """name -> CRC-32 of the tensor's bytes, for every parameter and buffer (non-persistent
    ones included: tensorizer's load_into_module registers those as persistent, so
    state_dict() itself would differ in its keys, not in its data)."""
    import torch
    out = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        t = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8)
        out[name] = zlib.crc32(memoryview(t.numpy()))
    return out


def status_kib(field):
    """A /proc/self/status field in KiB: VmRSS (now) or VmHWM (peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def dtype_kwargs(torch):
    """from_pretrained's dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype``
    before."""
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}


def worker(kind, path, workdir):
    """One cold load in this (fresh) process; prints one JSON line."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers.utils.logging as hf_logging
    hf_logging.set_verbosity_error()
    workdir = Path(workdir)
    reference = json.loads((workdir / "reference.json").read_text())
    config = LlamaConfig.from_json_file(str(workdir / "config.json"))
    if kind == "plaid":
        import plaid.torch as pt
    elif kind == "tensorizer":
        import tensorizer
        import tensorizer.utils
    kwargs = dtype_kwargs(torch)
    rss_before = status_kib("VmRSS")
    keep = None

    start = time.perf_counter()
    if kind == "plaid":
        with pt.no_init_or_tensor():
            model = LlamaForCausalLM(config)
        keep = pt.TensorDeserializer(path, device="cpu")
        keep.load_into_module(model)
    elif kind == "tensorizer":
        with tensorizer.utils.no_init_or_tensor():
            model = LlamaForCausalLM(config)
        keep = tensorizer.TensorDeserializer(path, device="cpu")
        keep.load_into_module(model)
    elif kind == "transformers":
        model = LlamaForCausalLM.from_pretrained(path, **kwargs)
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    loaded = time.perf_counter()
    with torch.no_grad():
        total = sum(float(p.sum()) for p in model.parameters())
    passed = time.perf_counter()
    # The peak of this process's own memory. getrusage's ru_maxrss is not used: Linux
    # carries it over from the parent across fork and exec, and the parent held the model.
    peak = status_kib("VmHWM")

    # Outside the timed region: every byte of every parameter and buffer, and the pass's sum.
    got = checksums(model)
    if got != reference["crc32"]:
        bad = sorted(k for k in set(got) | set(reference["crc32"])
                     if got.get(k) != reference["crc32"].get(k))
        raise SystemExit(f"{kind}: {len(bad)} parameters/buffers differ, e.g. {bad[:5]}")
    if abs(total - reference["sum"]) > 1e-6 * max(1.0, abs(reference["sum"])) + 1e-3:
        raise SystemExit(f"{kind}: parameter sum {total} != reference {reference['sum']}")
    dtypes = {str(p.dtype) for p in model.parameters()}
    devices = {str(p.device) for p in model.parameters()}
    if dtypes != {"torch.float32"} or devices != {"cpu"}:
        raise SystemExit(f"{kind}: parameters are {dtypes} on {devices}")
    del keep
    print(json.dumps({"load": loaded - start, "pass": passed - start, "peak_kib": peak,
                      "rss_before_kib": rss_before}))


def run_worker(kind, path, workdir):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, str(path),
           str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"worker {kind} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import tensorizer
    import torch
    import transformers
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), transformers "
            f"{transformers.__version__}, tensorizer {tensorizer.__version__}")


def write_files(config, workdir):
    """The model, written once each way; returns (paths, parameter bytes, tensors)."""
    import torch
    from transformers import LlamaForCausalLM
    import plaid.torch as pt
    import tensorizer
    import transformers.utils.logging as hf_logging
    hf_logging.disable_progress_bar()

    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    count = len(list(model.parameters()))
    paths = {"plaid": workdir / "model.plaid", "tensorizer": workdir / "model.tensors",
             "transformers": workdir / "hf"}
    with torch.no_grad():
        total = sum(float(p.sum()) for p in model.parameters())
    (workdir / "reference.json").write_text(json.dumps({"crc32": checksums(model),
                                                        "sum": total}))
    config.to_json_file(str(workdir / "config.json"))
    serializer = pt.TensorSerializer(str(paths["plaid"]))
    serializer.write_module(model)
    serializer.close()
    serializer = tensorizer.TensorSerializer(str(paths["tensorizer"]))
    serializer.write_module(model)
    serializer.close()
    model.save_pretrained(str(paths["transformers"]))  # safetensors by default
    return paths, nbytes, count


def warm(path):
    """Read every file under ``path`` once, into the page cache."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass


def size_of(path):
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=5, help="timed rounds (at least 5)")
    p.add_argument("--dir", default=None, help="where the temporary files go")
    p.add_argument("--keep", action="store_true", help="keep the files")
    args = p.parse_args()
    if args.runs < 5:
        p.error("--runs must be at least 5")
    started = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv)
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ("PLAID_LIB", "PYTHONPATH")
                   if k in os.environ)
    workdir = Path(tempfile.mkdtemp(prefix="plaid-load-into-module-", dir=args.dir))
    try:
        config = llama_config(args.size_gib)
        paths, nbytes, count = write_files(config, workdir)
        for path in paths.values():
            warm(path)
        times = {m: {"load": [], "pass": [], "peak_kib": [], "rss_before_kib": []}
                 for m in METHODS}
        for r in range(args.runs + 1):  # round 0 is the warm-up, discarded
            order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]
            results = {m: run_worker(m, paths[m], workdir) for m in order}
            if r:
                for m, result in results.items():
                    for k, v in result.items():
                        times[m][k].append(v)
            print(f"round {r}{' (warm-up, discarded)' if r == 0 else ''}: " + ", ".join(
                f"{m} {x['load']:.2f}/{x['pass']:.2f} s" for m, x in results.items()),
                file=sys.stderr, flush=True)

        print(f"machine: {machine()}")
        print(f"command: {env + ' ' if env else ''}{command}\n")
        print(f"LlamaForCausalLM, hidden {config.hidden_size}, {config.num_hidden_layers} "
              f"layers, intermediate {config.intermediate_size}, vocab {config.vocab_size}, "
              f"{config.num_attention_heads} heads / {config.num_key_value_heads} kv heads: "
              f"{count} parameter tensors, {nbytes} bytes of float32 parameters "
              f"({nbytes / (1 << 30):.3f} GiB); files: "
              + ", ".join(f"{m} {size_of(paths[m]) / (1 << 30):.3f} GiB" for m in METHODS))
        print("Each load in a fresh process, page cache warm, model construction included; "
              f"{args.runs} rounds (order rotated, one warm-up round discarded), medians. "
              "load+pass adds one read of every parameter. GB/s = parameter bytes / "
              "load+pass. Peak RSS is the worker's VmHWM (imports included).\n")
        med = {m: {k: statistics.median(v) for k, v in times[m].items()} for m in METHODS}
        print("| method | load s (median) | load+pass s (median) | GB/s | peak RSS | "
              "plaid speedup (load+pass) |")
        print("|---|---:|---:|---:|---:|---:|")
        for m in METHODS:
            x = med[m]
            print(f"| {LABELS[m]} | {x['load']:.3f} | {x['pass']:.3f} | "
                  f"{nbytes / x['pass'] / 1e9:.2f} | {x['peak_kib'] / (1 << 20):.2f} GiB | "
                  f"{x['pass'] / med['plaid']['pass']:.2f}x |")
        before = statistics.median(v for m in METHODS for v in times[m]["rss_before_kib"])
        print(f"\nRSS of a worker just before the load (imports done): "
              f"{before / (1 << 20):.2f} GiB (median). Total run time "
              f"{time.perf_counter() - started:.0f} s.")
    finally:
        if args.keep:
            print(f"files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

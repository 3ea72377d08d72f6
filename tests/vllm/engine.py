"""Runs one vLLM engine and prints its result as JSON on the last line: greedy tokens, or
the error that stopped it. ``python engine.py '<json>'`` with ``model``, ``load_format``,
``extra`` (model_loader_extra_config), ``tp`` (tensor-parallel size), ``prompts``, and
optionally ``dtype``, ``max_tokens`` and ``engine_args`` (more arguments of `LLM`)."""

import json
import os
import sys


def main():
    spec = json.loads(sys.argv[1])
    from vllm import LLM, SamplingParams
    kwargs = dict(model=spec["model"], load_format=spec.get("load_format", "auto"),
                  tensor_parallel_size=spec.get("tp", 1), dtype=spec.get("dtype", "float32"),
                  max_model_len=128, enforce_eager=True, seed=0,
                  max_num_seqs=4)
    kwargs.update(spec.get("engine_args", {}))
    if spec.get("extra") is not None:
        kwargs["model_loader_extra_config"] = spec["extra"]
    try:
        llm = LLM(**kwargs)
        params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 12),
                                ignore_eos=True)
        outputs = llm.generate(spec["prompts"], params, use_tqdm=False)
        result = {"tokens": [list(o.outputs[0].token_ids) for o in outputs]}
    except BaseException as e:  # reported to the test, which checks the message
        result = {"error": f"{type(e).__name__}: {e}"}
    print("\nRESULT " + json.dumps(result), flush=True)
    # vLLM's engine core and workers (two ranks) are this process's children: ended here,
    # or they would outlive it holding its output open.
    import psutil
    children = psutil.Process().children(recursive=True)
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=30)
    os._exit(0)


def run(spec, env, cwd=None, timeout=900):
    """Run ``spec`` in a new process (a session of its own, whose every process is killed at
    the end whatever happens); returns ``(result, output)``: the printed result (a dict with
    ``tokens`` or ``error``, or None when it printed none) and stdout + stderr."""
    import signal
    import subprocess
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), json.dumps(spec)],
                               env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n(killed after {timeout} s)"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return (json.loads(lines[-1][len("RESULT "):]) if lines else None), output


if __name__ == "__main__":
    main()

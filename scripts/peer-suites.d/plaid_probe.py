"""pytest plugin of scripts/peer-suites (`-p plaid_probe`): records, for every test, its
outcome, the first line of its error, and whether plaid's C library was called while it ran
(setup, call and teardown), and writes them as JSON to $PEER_SUITES_RESULT:

    {"tests": {nodeid: {"outcome": "passed" | "failed" | "error" | "skipped",
                        "ran_plaid": bool, "plaid_calls": int, "message": str}},
     "modules": {"tensorizer": "VERSION PATH", ...}}

A test file that fails to import is one entry with outcome "error". Calls are counted by
wrapping every function of `plaid._lib.lib` named in `plaid._lib._SIGNATURES`, so every
path into libplaid counts, whichever Python module makes it. A test "ran plaid" when it
called libplaid or ran a function of plaid's Python package (a refusal plaid raises before
reading anything, safetensors' helpers plaid implements); "plaid_python" says the latter,
seen through a profile hook that removes itself at the first call into the package. $PEER_SUITES_TEST_TIMEOUT
(seconds, default 600, 0 for none) fails a test that runs longer (SIGALRM in the main thread).
"""

import json
import os
import signal
import sys

import pytest

_calls = 0
_results = {}
_plaid_dir = None
_python_hit = False


def _profile(frame, event, arg):
    global _python_hit
    if event == "call" and frame.f_code.co_filename.startswith(_plaid_dir):
        _python_hit = True
        sys.setprofile(None)


def _watch_python():
    """Note whether any function of plaid's Python package runs from now on."""
    global _python_hit
    _python_hit = False
    if _plaid_dir:
        sys.setprofile(_profile)


def _wrap(function):
    def counted(*args):
        global _calls
        _calls += 1
        return function(*args)
    counted.__name__ = getattr(function, "__name__", "counted")
    counted.__wrapped__ = function
    return counted


def _instrument():
    """Wrap libplaid's functions; returns a reason when plaid cannot be imported."""
    try:
        from plaid import _lib
    except Exception as e:  # no plaid: every test simply reports ran_plaid false
        return f"{type(e).__name__}: {e}"
    for name, _args, _result in _lib._SIGNATURES:
        setattr(_lib.lib, name, _wrap(getattr(_lib.lib, name)))
    global _plaid_dir
    _plaid_dir = os.path.dirname(os.path.abspath(_lib.__file__)) + os.sep
    return None


def pytest_configure(config):
    problem = _instrument()
    if problem:
        print(f"plaid_probe: plaid not importable, no call counted ({problem})", file=sys.stderr)


def _first_line(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
        text = str(report.longrepr[2])
    lines = [line for line in text.splitlines() if line.strip()]
    # A failed import: the traceback's "E   ..." lines say what went wrong.
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return (errors or lines or [""])[0].strip()[:300]


def _record(nodeid):
    return _results.setdefault(nodeid, {"outcome": None, "ran_plaid": False, "plaid_calls": 0,
                                        "plaid_python": False, "message": ""})


def _timeout(signum, frame):
    raise TimeoutError(f"test ran over {os.environ.get('PEER_SUITES_TEST_TIMEOUT')} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    limit = int(os.environ.get("PEER_SUITES_TEST_TIMEOUT", "600") or 0)
    if limit:
        old = signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(limit)
    before = _calls
    _watch_python()
    try:
        yield
    finally:
        sys.setprofile(None)
        if limit:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    entry = _record(item.nodeid)
    entry["plaid_calls"] = _calls - before
    entry["plaid_python"] = _python_hit
    entry["ran_plaid"] = entry["plaid_calls"] > 0 or _python_hit


def pytest_runtest_logreport(report):
    entry = _record(report.nodeid)
    # Failures of subtests come as extra "call" reports: any failure fails the test.
    if report.failed:
        outcome = "failed" if report.when == "call" else "error"
        if entry["outcome"] not in ("failed", "error"):
            entry["outcome"], entry["message"] = outcome, _first_line(report)
    elif report.skipped:
        if entry["outcome"] is None:
            entry["outcome"], entry["message"] = "skipped", _first_line(report)
    elif report.when == "call" and entry["outcome"] is None:
        entry["outcome"] = "passed"


def pytest_collectreport(report):
    if report.failed:
        entry = _record(report.nodeid)
        entry["outcome"], entry["message"] = "error", _first_line(report)


def pytest_sessionfinish(session, exitstatus):
    modules = {}
    for name in ("tensorizer", "safetensors", "plaid"):
        module = sys.modules.get(name)
        if module is not None:
            modules[name] = f"{getattr(module, '__version__', '?')} {module.__file__}"
    path = os.environ.get("PEER_SUITES_RESULT")
    if path:
        with open(path, "w") as f:
            json.dump({"tests": _results, "modules": modules}, f, indent=1, sort_keys=True)

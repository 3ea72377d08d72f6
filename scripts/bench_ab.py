#!/usr/bin/env python3
"""Two builds of the plaid tool, benchmarked interleaved in one run: `A bench ARGS`,
`B bench ARGS`, then B before A, and so on, so that drift of the machine (page cache, other
load, thermal state) falls on both alike. Prints one markdown table: each row's median
seconds under each build (the median over runs of each run's median) and B / A.

    python3 scripts/bench_ab.py BASE/plaid NEW/plaid --runs 2 -- --size-mib 1024 --rounds 5
    python3 scripts/bench_ab.py BASE/plaid NEW/plaid --runs 2 -- --remote

Rows are matched by name; a row only one build prints is listed with a dash for the other.
"""

import argparse
import re
import statistics
import subprocess
import sys

# A table row of `plaid bench` / `plaid bench --remote`: the name, then (at the end of the
# line) bytes with their unit, seconds, and GB/s.
ROW = re.compile(r"^(?P<name>\S.*?)\s{2,}(?P<bytes>[\d.]+ [KMGT]?i?B)\s+(?P<seconds>[\d.]+)\s+"
                 r"(?P<gbps>[\d.]+|inf|NaN)\s*$")


# A row of `plaid bench --remote`'s markdown table: | name | GB/s | s | ... |
REMOTE_ROW = re.compile(r"^\| (?P<name>[^|]*?)\s*\| +(?P<gbps>[\d.]+) \| +(?P<seconds>[\d.]+) \|")


def rows(output):
    """The rows of one run's table: name -> seconds."""
    found = {}
    for line in output.splitlines():
        m = ROW.match(line) or REMOTE_ROW.match(line)
        if m:
            found[m.group("name").strip()] = float(m.group("seconds"))
    return found


def run(binary, args):
    done = subprocess.run([binary, "bench", *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        sys.exit(f"{binary} bench {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return rows(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the base build's plaid binary")
    parser.add_argument("b", help="the new build's plaid binary")
    parser.add_argument("--runs", type=int, default=2, help="runs of each build (default 2)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="a ratio further from 1 than this is flagged (default 0.05)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    options = parser.parse_args(argv[:split])
    args = argv[split + 1:]  # after --: the arguments of `plaid bench`
    times = {"a": {}, "b": {}}
    for k in range(options.runs):
        order = [("a", options.a), ("b", options.b)]
        if k % 2:
            order.reverse()
        for label, binary in order:
            print(f"run {k + 1}/{options.runs}: {label} = {binary}", file=sys.stderr)
            for name, seconds in run(binary, args).items():
                times[label].setdefault(name, []).append(seconds)
    names = list(times["a"]) + [n for n in times["b"] if n not in times["a"]]
    print(f"| row | A median s | B median s | B / A |")
    print("|---|---:|---:|---:|")
    flagged = 0
    for name in names:
        a, b = times["a"].get(name), times["b"].get(name)
        ma = statistics.median(a) if a else None
        mb = statistics.median(b) if b else None
        if ma and mb:
            ratio = mb / ma
            mark = "" if abs(ratio - 1) <= options.tolerance else " (!)"
            flagged += bool(mark)
            cell = f"{ratio:.3f}{mark}"
        else:
            cell = "-"
        fa = f"{ma:.4f}" if ma is not None else "-"
        fb = f"{mb:.4f}" if mb is not None else "-"
        print(f"| {name} | {fa} | {fb} | {cell} |")
    print(f"\n{len(names)} rows, {options.runs} interleaved runs of each build; "
          f"{flagged} outside ±{options.tolerance:.0%}")


if __name__ == "__main__":
    main()

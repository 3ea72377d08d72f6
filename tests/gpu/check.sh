#!/usr/bin/env bash
# plaid's GPU check: on a machine with an NVIDIA GPU, its driver and PyTorch, and the
# binaries built beforehand on another machine (`cargo build --release`; no Rust toolchain
# is needed here), run the device tests on the real driver, then print the benchmark
# table last (`--sweep` adds loads under several read settings; `--skip-tests` and
# `--skip-bench` leave parts out). Finishes in well under 7 minutes.
#
#   bash tests/gpu/check.sh [--size-gib 6] [--rounds 3] [--skip-tests] [--skip-bench] [--sweep]
#
# PLAID_LIB overrides the library (default target/release/libplaid.so); PLAID_GPU_TMP the
# directory for the test files (default: the system's temporary directory; it needs room
# for about three copies of the benchmark model).
set -euo pipefail
cd "$(dirname "$0")/../.."
lib="${PLAID_LIB:-target/release/libplaid.so}"
if [[ ! -f "$lib" ]]; then
  echo "check.sh: $lib not found: build it first with cargo build --release" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv || true
exec timeout 420 python3 tests/gpu/gpu_check.py "$@"

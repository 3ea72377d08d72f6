#!/usr/bin/env bash
# Runs the README's commands for building a C and a C++ program against a plain cargo
# build (the fenced block after the `<!-- readme_c_build -->` marker), exactly as written,
# from the top of the repository, and checks that both programs ran.
set -euo pipefail
cd "$(dirname "$0")/.."
block=$(awk '/^<!-- readme_c_build -->$/ {found=1; next}
             found && /^```/ {if (inside) exit; inside=1; next}
             inside {print}' README.md)
[[ -n "$block" ]] || { echo "README.md has no readme_c_build block" >&2; exit 1; }
rm -f target/load_model target/load_model_cpp
out=$(bash -euo pipefail -c "$block")
echo "$out"
[[ $(grep -c "loaded [0-9]* tensors" <<<"$out") -eq 2 ]] || {
  echo "the README's programs did not both load the model" >&2
  exit 1
}

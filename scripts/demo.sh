#!/usr/bin/env bash
# README command 1: install what is missing, build, run the demo (several processes share one
# map, grow it, one is killed with SIGKILL mid-write, the others carry on, a summary at the end),
# then show the same map through the command-line tool when it is built.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 >/dev/null
./build/examples/shmap_demo "$@"

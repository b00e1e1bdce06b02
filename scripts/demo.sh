#!/usr/bin/env bash
# README command 1: install what is missing, build the demo and the `shmap` tool (only those),
# run the demo (several processes share one map, grow it, one is killed with SIGKILL mid-write,
# the others carry on, a summary at the end), then show the same map through the tool.
# Arguments go to the demo (shmap_demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*"; }
for a in "$@"; do
  if [[ "$a" == -h || "$a" == --help ]]; then
    echo "usage: scripts/demo.sh [shmap_demo arguments]"; echo
    [[ -x build/examples/shmap_demo ]] && ./build/examples/shmap_demo --help
    exit 0
  fi
done
say "demo: checking the Debian packages (scripts/deps.sh; apt-get only for missing ones)"
bash scripts/deps.sh
say "demo: configuring with CMake (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
say "demo: building shmap_demo and the shmap tool with 2 jobs (a minute or two on a fresh machine)"
cmake --build build -j2 --target shmap_demo shmap_cli
name="shmap-demo-$$"
say "demo: running build/examples/shmap_demo --keep $name $*"
./build/examples/shmap_demo --keep "$name" "$@"
shmap=./build/tools/shmap
say "demo: the same map through the tool: shmap stat $name"
"$shmap" stat "$name"
say "shmap scan $name --limit 5"
"$shmap" scan "$name" --limit 5
say "shmap readers $name"
"$shmap" readers "$name"
say "shmap check $name"
"$shmap" check "$name" | tail -n 1
say "shmap rm $name"
"$shmap" rm "$name"
echo "removed. Try 'build/tools/shmap --help' for everything else."

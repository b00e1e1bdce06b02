#!/usr/bin/env bash
# Installs the Debian 12 packages shmap needs to build, test and benchmark.
# Idempotent and quick when everything is present: apt is only called for
# packages that dpkg does not already report as installed.
#   scripts/deps.sh          build and test
#   scripts/deps.sh bench    also what scripts/bench.sh needs beyond that (the chart's plotter)
set -euo pipefail
PKGS=(g++ cmake make libboost1.81-dev libgtest-dev libgmock-dev googletest libbenchmark-dev
      liblmdb-dev lmdb-utils libtbb-dev libcereal-dev rapidjson-dev libcli11-dev libxxhash-dev
      nlohmann-json3-dev tmux pkg-config
      # The Python binding (python/) and its tests: Debian's python3, no package index.
      python3-dev pybind11-dev python3-pytest python3-numpy python3-setuptools python3-pip
      python3-wheel python3-venv
      # CPython's own mapping tests (test.mapping_tests), run against shmap.Map by
      # tests/python/test_mapping_protocol.py; for Debian 12's python3, which is 3.11.
      libpython3.11-testsuite)
if [[ ${1:-} == bench ]]; then
  PKGS+=(python3-matplotlib)  # bench/plot.py renders docs/bench-ratios.png
  PKGS+=(python3-lmdb)        # bench/python_bench.py compares against it
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

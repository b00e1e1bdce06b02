#!/usr/bin/env bash
# Installs the Debian 12 packages shmap needs to build, test and benchmark.
# Idempotent and quick when everything is present: apt is only called for
# packages that dpkg does not already report as installed.
set -euo pipefail
PKGS=(g++ cmake make libboost1.81-dev libgtest-dev libgmock-dev googletest libbenchmark-dev
      liblmdb-dev lmdb-utils libtbb-dev libcereal-dev rapidjson-dev libcli11-dev libxxhash-dev
      nlohmann-json3-dev tmux pkg-config)
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

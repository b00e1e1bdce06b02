#!/usr/bin/env bash
# README command 2: install what is missing, build, and run the whole test suite through ctest:
#   1. the normal build: every suite (unit, multi-process, snapshot, cli, consumer);
#   2. AddressSanitizer + UndefinedBehaviorSanitizer: the unit and multi-process suites;
#   3. ThreadSanitizer: the in-process concurrency tests, and dumps beside writers.
# Set SHMAP_QUICK=1 to run step 1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
JOBS=${JOBS:-2}

step() { printf '\n=== %s ===\n' "$*"; }

step "build (RelWithDebInfo) and run every suite"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$JOBS" >/dev/null
# SHMAP_SOAK: the kill, churn, stress and adversary suites run this many times longer than
# their defaults (more SIGKILL rounds, longer churn from capacity 8). -j: the light suites run
# two at a time; the heavy multi-process ones are RUN_SERIAL (tests/mp/CMakeLists.txt).
SHMAP_SOAK=${SHMAP_SOAK:-3} ctest --test-dir build --output-on-failure -j"$JOBS"

if [[ "${SHMAP_QUICK:-0}" == 1 ]]; then exit 0; fi

step "ASan+UBSan: unit and multi-process suites"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSHMAP_SANITIZE=address \
  -DSHMAP_BUILD_TOOLS=OFF -DSHMAP_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-asan -j"$JOBS" >/dev/null
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  SHMAP_SANITIZED=1 SHMAP_SOAK=${SHMAP_SOAK:-2} ctest --test-dir build-asan --output-on-failure \
  -L 'unit|mp' -j"$JOBS"

step "TSan: in-process concurrency tests, and snapshots (dump writes on a second thread)"
# -O1 -g1: a quicker build, and still every race reported with its source lines.
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHMAP_SANITIZE=thread \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DSHMAP_BUILD_TOOLS=OFF -DSHMAP_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-tsan -j"$JOBS" --target unit_tests snapshot_tests >/dev/null
# The unit tests that start threads (the single-threaded suites run in steps 1 and 2).
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 SHMAP_SANITIZED=1 \
  GTEST_FILTER='-Layout.*:Names.*:Errors.*:TypedLayout.*:TypedKeys.*:Fingerprints.*' \
  ctest --test-dir build-tsan --output-on-failure -L concurrency
# Dumps (each writes on a second thread) beside writers, those whose child processes write the
# map while another process dumps it included: under TSan cas128 is the cmpxchg16b instruction
# with its ordering told to TSan (TSan's own 16-byte atomics lock per process and were not
# atomic across processes). The round trips and the damaged, hostile and golden files are
# single-threaded beyond that second thread, and run in step 1.
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 SHMAP_SANITIZED=1 \
  GTEST_FILTER='ConcurrentDump.*:PointInTimeDump.*:Merge.*:TypedSnapshot.*' \
  ctest --test-dir build-tsan --output-on-failure -R '^snapshot_tests$'

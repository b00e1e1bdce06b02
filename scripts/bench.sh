#!/usr/bin/env bash
# Builds the benchmarks (Release, build-bench/) and runs both programs; the raw output goes to
# bench/results/<TAG>-micro.txt and <TAG>-mp.txt. No arguments: choose with the environment.
#   SIZES=1M,16M     key counts of both programs          REPS=7      mp rounds per figure
#   SECONDS_PER=1    seconds per mp round                 GROWTH=10M  keys of the growth test
#   MICRO_REPS=3     repetitions of each micro benchmark  SKIP_MICRO=1 / SKIP_MP=1
#   TAG=name         name of the result files (default: date and time)
#   SNAP_ENTRIES=16M entries of the snapshot benchmark    SKIP_SNAP=1
#   MICRO_ARGS=...   extra flags of shmap_micro, e.g. --benchmark_filter=find
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SIZES=${SIZES:-1M,16M}
REPS=${REPS:-7}
SECONDS_PER=${SECONDS_PER:-1}
GROWTH=${GROWTH:-10M}
MICRO_REPS=${MICRO_REPS:-3}
TAG=${TAG:-$(date +%Y%m%d-%H%M)}

"$root/scripts/deps.sh"
cmake -S "$root" -B "$root/build-bench" -DSHMAP_BUILD_BENCHMARKS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build-bench" -j"$(nproc)" --target shmap_micro shmap_mp shmap_snapshot_bench >/dev/null

out="$root/bench/results"
mkdir -p "$out"
machine() {
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm)"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cpus," \
       "$(free -g | awk '/Mem:/{print $2}') GiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo none)" \
       "$(git -C "$root" status --porcelain 2>/dev/null | grep -q . && echo '(dirty tree)')"
}

if [[ -z ${SKIP_MICRO:-} ]]; then
  cmd=("$root/build-bench/bench/shmap_micro" "--sizes=$SIZES"
       "--benchmark_repetitions=$MICRO_REPS" "--benchmark_min_time=0.5" ${MICRO_ARGS:-})
  { machine; echo "# ${cmd[*]}"; "${cmd[@]}"; echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } \
    2>&1 | tee "$out/$TAG-micro.txt"
fi
if [[ -z ${SKIP_MP:-} ]]; then
  cmd=("$root/build-bench/bench/shmap_mp" "--sizes=$SIZES" "--reps=$REPS"
       "--seconds=$SECONDS_PER" "--growth=$GROWTH")
  { machine; echo "# ${cmd[*]}"; "${cmd[@]}"; echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } \
    2>&1 | tee "$out/$TAG-mp.txt"
fi
if [[ -z ${SKIP_SNAP:-} ]]; then
  snap=${SNAP_ENTRIES:-16777216}
  cmd=("$root/build-bench/bench/shmap_snapshot_bench" "--entries" "$snap" "--reps" "3")
  { machine; echo "# ${cmd[*]}"; "${cmd[@]}"; echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } \
    2>&1 | tee "$out/$TAG-snapshot.txt"
fi

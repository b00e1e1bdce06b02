#!/usr/bin/env bash
# Builds the benchmarks (Release, build-bench/) and runs them; the raw output goes to
# bench/results/<TAG>-micro.txt, -mp.txt, -latency.txt and -snapshot.txt. No arguments: choose
# with the environment.
#   SIZES=1M,16M     key counts of both programs          REPS=7      mp rounds per figure
#   SECONDS_PER=1    seconds per mp round                 GROWTH=10M  keys of the growth test
#   MICRO_REPS=3     repetitions of each micro benchmark  SKIP_MICRO=1 / SKIP_MP=1
#   TAG=name         name of the result files (default: date and time)
#   SNAP_ENTRIES=16M entries of the snapshot benchmark    SKIP_SNAP=1
#   MICRO_ARGS=...   extra flags of shmap_micro, e.g. --benchmark_filter=find
#   LAT_SIZES=$SIZES key counts of shmap_latency           LAT_SAMPLE=2M ops timed per row
#   GROWTH_KEYS=12M  inserts of the growth-with-reader test (8 -> 16M buckets)   SKIP_LAT=1
#   LAT_ARGS=...     extra flags of shmap_latency, e.g. --peers=shmap,flat
#   PLOT=path.png    render shmap_micro's ratio table (bench/plot.py), e.g. docs/bench-ratios.png
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SIZES=${SIZES:-1M,16M}
REPS=${REPS:-7}
SECONDS_PER=${SECONDS_PER:-1}
GROWTH=${GROWTH:-10M}
MICRO_REPS=${MICRO_REPS:-3}
TAG=${TAG:-$(date +%Y%m%d-%H%M)}

LAT_SIZES=${LAT_SIZES:-$SIZES}
LAT_SAMPLE=${LAT_SAMPLE:-2M}
GROWTH_KEYS=${GROWTH_KEYS:-12000000}

"$root/scripts/deps.sh" bench
cmake -S "$root" -B "$root/build-bench" -DSHMAP_BUILD_BENCHMARKS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build-bench" -j"$(nproc)" \
  --target shmap_micro shmap_mp shmap_snapshot_bench shmap_latency >/dev/null

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
  if [[ -n ${PLOT:-} ]]; then "$root/bench/plot.py" -o "$PLOT" "$out/$TAG-micro.txt"; fi
fi
if [[ -z ${SKIP_LAT:-} ]]; then
  cmd=("$root/build-bench/bench/shmap_latency" "--sizes=$LAT_SIZES" "--sample=$LAT_SAMPLE"
       "--growth-keys=$GROWTH_KEYS" --zipf-check ${LAT_ARGS:-})
  { machine; echo "# ${cmd[*]}"; "${cmd[@]}"; echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } \
    2>&1 | tee "$out/$TAG-latency.txt"
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

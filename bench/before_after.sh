#!/usr/bin/env bash
# Before/after in one run: builds this tree's benchmarks twice, once against the library of
# BASE (a commit, e.g. the last one before the Table v2 redesign) and once against this tree's
# library, then runs the same programs from both builds one after the other, in alternating
# order, so that both see the same machine. Every output keeps its own peers (flat, bipc, ...),
# so each build's ratios come from its own run; the chart shows both.
#   BASE=570ba87 [TAG=run9] [SIZES=1M,16M] [ROUNDS=1] [MICRO_ARGS=...] [LAT=1] [FIT=1] bench/before_after.sh
# FIT=1 also runs shmap_fit_ab (lookups in a compact()ed table against the same map unfitted)
# from both builds, alternating, into <TAG>-fit.txt.
# Writes bench/results/<TAG>-{before,after}-micro.txt (and -latency.txt with LAT=1) and
# docs/bench-before-after.png (PLOT_OUT=path to put it elsewhere). The base build takes the library (include/, src/, CMakeLists.txt,
# cmake/) from BASE and bench/ from this tree: the benchmarks use the public API only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
: "${BASE:?set BASE to the commit to compare against}"
TAG=${TAG:-$(date +%Y%m%d-%H%M)}
SIZES=${SIZES:-1M,16M}
ROUNDS=${ROUNDS:-1}
out="$root/bench/results"
base_src="$root/build-bench-base/src"

"$root/scripts/deps.sh" bench
rm -rf "$base_src" && mkdir -p "$base_src"
git -C "$root" archive "$BASE" | tar -x -C "$base_src"
rm -rf "$base_src/bench" && cp -r "$root/bench" "$base_src/bench"
rm -rf "$base_src/bench/results"
for d in "$base_src" "$root"; do
  b=$([[ $d == "$root" ]] && echo "$root/build-bench" || echo "$root/build-bench-base/build")
  cmake -S "$d" -B "$b" -DSHMAP_BUILD_BENCHMARKS=ON -DCMAKE_BUILD_TYPE=Release \
    -DSHMAP_BUILD_TESTS=OFF -DSHMAP_BUILD_EXAMPLES=OFF -DSHMAP_BUILD_TOOLS=OFF >/dev/null
  cmake --build "$b" -j2 --target shmap_micro shmap_latency shmap_fit_ab >/dev/null
done
declare -A bin=([before]="$root/build-bench-base/build/bench" [after]="$root/build-bench/bench")

header() {
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm)"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cpus," \
       "$(free -g | awk '/Mem:/{print $2}') GiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# $1: library of $2, bench/ of $(git -C "$root" rev-parse --short HEAD)"
}
for ((r = 0; r < ROUNDS; r++)); do
  order="before after"; ((r % 2)) && order="after before"
  for v in $order; do
    lib=$([[ $v == before ]] && git -C "$root" rev-parse --short "$BASE" ||
      git -C "$root" rev-parse --short HEAD)
    suffix=$([[ $ROUNDS -gt 1 ]] && echo "-r$r" || true)
    cmd=("${bin[$v]}/shmap_micro" "--sizes=$SIZES" "--benchmark_repetitions=3"
         "--benchmark_min_time=0.5" ${MICRO_ARGS:-})
    { header "$v" "$lib"; echo "# ${cmd[*]}"; "${cmd[@]}";
      echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } 2>&1 |
      tee "$out/$TAG-$v$suffix-micro.txt"
    if [[ -n ${LAT:-} ]]; then
      cmd=("${bin[$v]}/shmap_latency" "--sizes=$SIZES" ${LAT_ARGS:-})
      { header "$v" "$lib"; echo "# ${cmd[*]}"; "${cmd[@]}";
        echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"; } 2>&1 |
        tee "$out/$TAG-$v$suffix-latency.txt"
    fi
  done
done
if [[ -n ${FIT:-} ]]; then
  { header "fit" "$(git -C "$root" rev-parse --short "$BASE") (before) and $(git -C "$root" rev-parse --short HEAD) (after)"
    for size in ${SIZES//,/ }; do
      n=$(( ${size%M} * 1048576 ))
      for rep in 1 2; do
        for v in before after; do
          for mode in nofit fit; do echo "$v $("${bin[$v]}/shmap_fit_ab" "$mode" "$n")"; done
        done
      done
    done; } 2>&1 | tee "$out/$TAG-fit.txt"
fi
suffix=$([[ $ROUNDS -gt 1 ]] && echo "-r0" || true)
"$root/bench/plot.py" -o "${PLOT_OUT:-$root/docs/bench-before-after.png}" \
  "before=$out/$TAG-before$suffix-micro.txt" "after=$out/$TAG-after$suffix-micro.txt"

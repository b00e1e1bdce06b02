#!/usr/bin/env bash
# Issue 6: what the bounds checks in MapImpl::fast_table (include/shmap/detail/map_impl.hpp)
# cost on the find fast path. Builds shmap_micro twice from the committed tree (git archive of
# HEAD into a temporary directory): A as is, B with the checks deleted by a patch applied to
# B's copy only (the product keeps them; nothing here can switch them off in a normal build).
# Then runs find_hit and find_miss at $SIZES alternately (A B, B A, ...) $REPS times each and
# prints the medians in ns per lookup (CPU time) and B against A.
#   REPS=7 SIZES=64K,1M MIN_TIME=1 bench/ab_fast_check.sh [out-file]
# What B deletes: the two `if (...) { return false; }` blocks of fast_table, i.e. the check of
# the table offset against the arena and the mapping, and the check of the table header's
# bits/capacity against the mapping. The loads stay; only the compares and branches go.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-7}
SIZES=${SIZES:-64K,1M}
MIN_TIME=${MIN_TIME:-1}
out=${1:-/dev/stdout}
work=$(mktemp -d /tmp/shmap-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT

for v in A B; do
  mkdir -p "$work/$v/src"
  git -C "$root" archive HEAD | tar -x -C "$work/$v/src"
done
hdr="$work/B/src/include/shmap/detail/map_impl.hpp"
python3 - "$hdr" <<'EOF'
import re, sys
p = sys.argv[1]
s = open(p).read()
body = s[s.index("bool fast_table(FastTable* ft) const {"):]
body = body[:body.index("\n  }\n")]
new = re.sub(r"\n    if \([^{]*\) \{\n      return false;\n    \}", "", body)
if body.count("return false;") != 2 or "return false;" in new:
    sys.exit("ab_fast_check: fast_table no longer has the two checks this script removes")
open(p, "w").write(s.replace(body, new))
EOF
for v in A B; do
  cmake -S "$work/$v/src" -B "$work/$v/build" -DCMAKE_BUILD_TYPE=Release \
    -DSHMAP_BUILD_BENCHMARKS=ON -DSHMAP_BUILD_TESTS=OFF -DSHMAP_BUILD_EXAMPLES=OFF \
    -DSHMAP_BUILD_TOOLS=OFF >/dev/null
  cmake --build "$work/$v/build" -j2 --target shmap_micro >/dev/null
done

{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -srm)"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cpus;" \
       "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# commit: $(git -C "$root" rev-parse --short HEAD)"
  echo "# REPS=$REPS SIZES=$SIZES MIN_TIME=$MIN_TIME bench/ab_fast_check.sh"
  echo "# B = A with fast_table's checks deleted:"
  diff -u "$work/A/src/include/shmap/detail/map_impl.hpp" "$hdr" | sed 's/^/#   /' || true
  for ((r = 0; r < REPS; r++)); do
    order="A B"; ((r % 2)) && order="B A"
    for v in $order; do
      "$work/$v/build/bench/shmap_micro" --sizes="$SIZES" --peers=shmap \
        --benchmark_filter='^find_(hit|miss)/' --benchmark_repetitions=1 \
        --benchmark_min_time="$MIN_TIME" 2>/dev/null |
        awk -v v="$v" -v r="$r" '/^find_/ && $5 == "ns" { print "run", r, v, $1, $4 }'
    done
  done
  echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$work/raw.txt" >"$out"

python3 - "$work/raw.txt" >>"$out" <<'EOF'
import statistics, sys
cpu = {}
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0] == "run":
        # CPU time column of the console output: ns per iteration of 1024 lookups
        cpu.setdefault((f[3], f[2]), []).append(float(f[4]) / 1024)
print("\n| benchmark | A: as is, ns/lookup | B: no check, ns/lookup | B - A ns | (A - B) / A |"
      " A runs (min..max) | B runs (min..max) |")
print("|---|---:|---:|---:|---:|---|---|")
for name in sorted({k[0] for k in cpu}):
    a, b = cpu[(name, "A")], cpu[(name, "B")]
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {name} | {ma:.2f} | {mb:.2f} | {mb - ma:+.2f} | {(ma - mb) / ma * 100:+.1f}% |"
          f" {min(a):.2f}..{max(a):.2f} | {min(b):.2f}..{max(b):.2f} |")
EOF

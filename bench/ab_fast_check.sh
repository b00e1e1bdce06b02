#!/usr/bin/env bash
# Issue 6: what the bounds checks in MapImpl::fast_table (include/shmap/detail/map_impl.hpp)
# cost on the find fast path. Builds shmap_micro three times from the committed tree (git
# archive of HEAD into a temporary directory): A as is, B and C with checks deleted by a patch
# applied to their copies only (the product keeps them; nothing here can switch them off in a
# normal build). Then runs find_hit and find_miss at $SIZES, the three binaries in rotating
# order, $REPS times each, and prints the medians in ns per lookup (CPU time).
#   REPS=7 SIZES=64K,1M MIN_TIME=1 bench/ab_fast_check.sh [out-file]
# fast_table has two `if (...) { return false; }` blocks: the three-line check of the table
# offset against the arena and the mapping, and the check of the table header's bits and
# capacity against the mapping. B deletes the first, C both. The loads stay; only the compares
# and branches go.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-7}
SIZES=${SIZES:-64K,1M}
MIN_TIME=${MIN_TIME:-1}
out=${1:-/dev/stdout}
work=$(mktemp -d /tmp/shmap-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT

for v in A B C; do
  mkdir -p "$work/$v/src"
  git -C "$root" archive HEAD | tar -x -C "$work/$v/src"
done
# B: without the first check (the three-line `if` on the table offset); C: without both.
python3 - "$work/B/src/include/shmap/detail/map_impl.hpp" 1 <<'EOF'
import re, sys
p, count = sys.argv[1], int(sys.argv[2])
s = open(p).read()
body = s[s.index("bool fast_table(FastTable* ft) const {"):]
body = body[:body.index("\n  }\n")]
check = r"\n    if \(.*?\) \{\n      return false;\n    \}"
new = re.sub(check, "", body, count=count, flags=re.S)
if body.count("return false;") != 2 or new.count("return false;") != 2 - count:
    sys.exit("ab_fast_check: fast_table no longer has the two checks this script removes")
if "mapped -" not in new and "mapped >" not in new:  # C: keep the load, as in A, unwarned
    decl = "mapped_.load(std::memory_order_acquire);"
    new = new.replace(decl, decl + "\n    static_cast<void>(mapped);")
open(p, "w").write(s.replace(body, new))
EOF
python3 - "$work/C/src/include/shmap/detail/map_impl.hpp" 2 <<'EOF'
import re, sys
p, count = sys.argv[1], int(sys.argv[2])
s = open(p).read()
body = s[s.index("bool fast_table(FastTable* ft) const {"):]
body = body[:body.index("\n  }\n")]
check = r"\n    if \(.*?\) \{\n      return false;\n    \}"
new = re.sub(check, "", body, count=count, flags=re.S)
if body.count("return false;") != 2 or new.count("return false;") != 2 - count:
    sys.exit("ab_fast_check: fast_table no longer has the two checks this script removes")
if "mapped -" not in new and "mapped >" not in new:  # C: keep the load, as in A, unwarned
    decl = "mapped_.load(std::memory_order_acquire);"
    new = new.replace(decl, decl + "\n    static_cast<void>(mapped);")
open(p, "w").write(s.replace(body, new))
EOF
for v in A B C; do
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
  for v in B C; do
    echo "# $v = A with:"
    diff -u "$work/A/src/include/shmap/detail/map_impl.hpp" \
      "$work/$v/src/include/shmap/detail/map_impl.hpp" | sed 's/^/#   /' || true
  done
  orders=("A B C" "C B A" "B C A" "A C B" "C A B" "B A C")  # each first and last alike
  for ((r = 0; r < REPS; r++)); do
    order=${orders[r % 6]}
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
print("\nMedian CPU ns per lookup over the runs (min..max in brackets). B: the offset check "
      "compiled out; C: both checks compiled out. Delta: A - B (A - C), what the check costs.\n")
print("| benchmark | A: as is | B: no offset check | C: no checks | A - B | A - C |")
print("|---|---:|---:|---:|---:|---:|")
for name in sorted({k[0] for k in cpu}):
    a, b, c = (cpu[(name, v)] for v in "ABC")
    ma, mb, mc = (statistics.median(x) for x in (a, b, c))
    cell = lambda x, m: f"{m:.2f} ({min(x):.2f}..{max(x):.2f})"
    print(f"| {name} | {cell(a, ma)} | {cell(b, mb)} | {cell(c, mc)} |"
          f" {ma - mb:+.2f} ns ({(ma - mb) / ma * 100:+.1f}%) |"
          f" {ma - mc:+.2f} ns ({(ma - mc) / ma * 100:+.1f}%) |")
EOF

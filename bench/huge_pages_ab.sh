#!/usr/bin/env bash
# run15: shmap and flat on 4 KiB pages against both on 2 MiB pages, alternating, ROUNDS times.
#   bench/huge_pages_ab.sh PATH/TO/shmap_micro [ROUNDS]      (as root: it mounts a tmpfs)
# "huge": in a private mount namespace (unshare -m), /dev/shm is a fresh tmpfs mounted
# huge=within_size (shmap's segments on 2 MiB pages), and glibc's malloc is told to madvise its
# mmapped chunks for transparent huge pages (flat's arrays; /sys/kernel/mm/transparent_hugepage
# /enabled must say madvise or always). Nothing outside the namespace changes.
set -euo pipefail
MICRO=${1:?usage: huge_pages_ab.sh PATH/TO/shmap_micro [ROUNDS]}
ROUNDS=${2:-2}
M="$MICRO --sizes=1M,16M --peers=shmap,flat --benchmark_repetitions=3 --benchmark_min_time=0.5 --benchmark_report_aggregates_only=true"
F='--benchmark_filter=(insert|find_hit|find_miss|mixed|find_hit_many)/'
echo "# run15: $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg); binary $MICRO"
echo "# small: $M '$F'"
echo "# huge:  the same under unshare -m, with a private tmpfs on /dev/shm mounted huge=within_size, and GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (flat's arrays madvised for THP; THP enabled=madvise)"
for r in $(seq 1 "$ROUNDS"); do
  echo "### round $r huge pages"
  unshare -m sh -c "mount --make-rprivate / && mount -t tmpfs -o size=20g,huge=within_size tmpfs /dev/shm && GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $M '$F' 2>&1 | sed -n '/Summary/,\$p'"
  echo "### round $r small pages"; $M "$F" 2>&1 | sed -n '/Summary/,$p'
done
echo "# done $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"

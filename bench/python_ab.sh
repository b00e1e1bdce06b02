#!/usr/bin/env bash
# Runs bench/python_bench.py against two builds of the Python module in turn, ROUNDS times
# (before, after, before, after, ...), in one session, so that both see the same machine.
#
#   bench/python_ab.sh BEFORE_PYTHONPATH AFTER_PYTHONPATH ROUNDS [python_bench.py options...]
#
# e.g. (python-run3): the string sets alone, 1 and 2 processes
#   bench/python_ab.sh ../base/build-rel/python build-rel/python 4 \
#       --only shmap-bytes,shmap-pickle --workloads set --batch-keys 0
# Prints each run's output under "### round R before|after"; the medians across rounds are
# left to the reader (each run's figures are already medians of --reps).
set -euo pipefail
before=$1 after=$2 rounds=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-/usr/bin/python3}
echo "# python_ab: $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
echo "# before: $before ($(git -C "$before" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "# after:  $after ($(git -C "$after" rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "# options: $*"
for r in $(seq 1 "$rounds"); do
  for side in before after; do
    path=$before
    [[ $side == after ]] && path=$after
    echo "### round $r $side"
    PYTHONPATH=$path "$py" "$here/python_bench.py" "$@"
  done
done
echo "# done $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"

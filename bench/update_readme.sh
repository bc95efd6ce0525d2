#!/usr/bin/env bash
# Puts the latest full run into the README: copies its plot to bench/latest.png and rewrites the
# "## Benchmarks" section of README.md (up to the next "## " heading) with the machine, the date,
# the commit, the plot and the summary table of RESULTS/summary.md. `make bench` runs it after
# bench/run.sh; a --quick run is refused (its figures are not to be quoted).
# usage: bench/update_readme.sh [RESULTS_DIR] [README]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
results=${1:-$repo/results}
readme=${2:-$repo/README.md}
[ -f "$results/run.env" ] && [ -f "$results/summary.md" ] || { echo "update_readme.sh: no run in $results" >&2; exit 2; }
# shellcheck disable=SC1091
. "$results/run.env"
[ "$quick" = 1 ] && { echo "update_readme.sh: $results holds a --quick run: not put in the README" >&2; exit 2; }
grep -q '^## Benchmarks' "$readme" || { echo "update_readme.sh: $readme has no '## Benchmarks' section" >&2; exit 2; }
[ -f "$results/bench.png" ] && cp "$results/bench.png" "$here/latest.png"

section="$(mktemp)"
trap 'rm -f "$section"' EXIT
{
  echo "## Benchmarks"
  echo
  echo "The latest full run of \`make bench\` ($((${seconds:-0} / 60)) min $((${seconds:-0} % 60)) s of benchmarks after the build): $when,"
  echo "$machine, commit \`$commit\`."
  echo "Every figure comes from that one run: shmq beside the floors (a one-line mailbox each way, a slot-sequence"
  echo "ring, the head/tail ring), one core's memcpy, and its peers (POSIX mq, a Unix socket, Boost.Interprocess"
  echo "message_queue, Boost.Lockfree spsc_queue in shared memory, iceoryx);"
  echo "every message was checked by its receiver. What each row measures and how: [bench/README.md](bench/README.md)."
  echo "The machine is shared (2 vCPUs): the CPU other processes took during each case is in the logs."
  echo
  [ -f "$here/latest.png" ] && echo "![latency percentiles and throughput per message size](bench/latest.png)" && echo
  # The table, the goals and the notes: from the table's header to the last note line.
  awk '/^\| section \|/ { on = 1 } /^plot: / { on = 0 } on' "$results/summary.md"
} >"$section"
# Replace the section (from its heading to the next "## " heading, or the end).
awk -v file="$section" '
  /^## Benchmarks/ { while ((getline line < file) > 0) print line; skip = 1; next }
  skip && /^## / { skip = 0; print ""; }
  !skip' "$readme" >"$readme.new"
mv "$readme.new" "$readme"
echo "update_readme.sh: $readme (## Benchmarks) and $here/latest.png updated from $results"

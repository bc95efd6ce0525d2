#!/usr/bin/env bash
# Runs the built benchmarks, prints one markdown table per section, writes CSV and JSON. It builds
# nothing: `make bench` builds them (in build-bench/) and runs this; or by hand
#   cmake -S . -B build-bench -DSHMQ_BUILD_BENCH=ON -DSHMQ_BUILD_TESTS=OFF && cmake --build build-bench -j2 --target bench
#
# usage: bench/run.sh [BENCH_DIR] [--quick] [--out DIR] [--only SECTIONS]
#   BENCH_DIR  where the binaries are (default: build-bench/bench, else build/bench, beside this repo)
#   --quick    short runs (about a minute in all): a smoke test, not figures to quote
#   --out      where the CSV / JSON go (default: results/ at the top of the repo, which git ignores):
#              pingpong, competing_consumers, durability, micro_bench (.csv, .json), summary.md
#              (everything printed), micro_bench.gbench.json (Google Benchmark's own), iox-roudi.log
#   --only     a comma-separated subset of: pingpong, consumers, durability, micro
#
# Exit status: 0 only if every benchmark ran and checked what it measured; a failure is printed
# with "*** FAIL" by the binary and summarised at the end here. A goal missed is not a failure.
set -u -o pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bench_dir=""
quick=0
out_dir=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out|--json)  # --json: the old name
      [ $# -ge 2 ] || { echo "run.sh: $1 needs a directory" >&2; exit 2; }
      out_dir=$2
      shift ;;
    --only)
      [ $# -ge 2 ] || { echo "run.sh: --only needs a list" >&2; exit 2; }
      only=$2
      shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) bench_dir=$1 ;;
  esac
  shift
done

if [ -z "$bench_dir" ]; then
  for d in build-bench/bench "$repo/build-bench/bench" build/bench "$repo/build/bench"; do
    if [ -x "$d/shmq_pingpong" ]; then bench_dir=$d; break; fi
  done
  [ -n "$bench_dir" ] || bench_dir="$repo/build-bench/bench"
fi
for bin in shmq_pingpong shmq_competing_consumers shmq_durability shmq_micro_bench; do
  if [ ! -x "$bench_dir/$bin" ]; then
    echo "run.sh: $bench_dir/$bin is missing: build it first (make bench does; this script builds nothing)" >&2
    exit 2
  fi
done
[ -n "$out_dir" ] || out_dir="$repo/results"
mkdir -p "$out_dir" || exit 2
out_dir="$(cd "$out_dir" && pwd)"
summary="$out_dir/summary.md"

wants() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

# Everything printed goes to the terminal and to summary.md (tee is waited for at exit, so the
# summary is complete when this script returns).
exec 3>&1 4>&2
exec > >(tee "$summary") 2>&1
tee_pid=$!
finish() {
  exec 1>&3 2>&4
  wait "$tee_pid" 2>/dev/null
}
trap finish EXIT

started=$SECONDS
echo "# shmq benchmarks ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -r), $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "# binaries: $bench_dir; git: $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown); results: $out_dir"
[ "$quick" = 1 ] && echo "# --quick: short runs, a smoke test; do not quote these figures"
echo

failed=()
q=()
[ "$quick" = 1 ] && q=(--quick)

section() {
  echo "## $1"
  echo
}

if wants pingpong; then
  section "Cross-process latency and throughput: shmq, the floor and the peers (shmq_pingpong)"
  "$bench_dir/shmq_pingpong" "${q[@]}" --json "$out_dir/pingpong.json" --csv "$out_dir/pingpong.csv" \
    || failed+=("shmq_pingpong (exit $?)")
  echo
fi

if wants consumers; then
  section "Competing consumers: one group, 1 / 2 / 4 consumer processes (shmq_competing_consumers)"
  "$bench_dir/shmq_competing_consumers" "${q[@]}" --json "$out_dir/competing_consumers.json" \
    --csv "$out_dir/competing_consumers.csv" || failed+=("shmq_competing_consumers (exit $?)")
  echo
fi

if wants durability; then
  section "Durability: Memory vs Async vs Sync, beside this disk's fdatasync (shmq_durability)"
  "$bench_dir/shmq_durability" "${q[@]}" --json "$out_dir/durability.json" --csv "$out_dir/durability.csv" \
    || failed+=("shmq_durability (exit $?)")
  echo
fi

if wants micro; then
  section "One process: publish, poll, ack, and the cost of an ack (shmq_micro_bench)"
  mb=(--benchmark_out="$out_dir/micro_bench.gbench.json" --benchmark_out_format=json)
  if [ "$quick" = 1 ]; then mb+=(--benchmark_min_time=0.05); else mb+=(--benchmark_repetitions=3); fi
  "$bench_dir/shmq_micro_bench" "${mb[@]}" --json "$out_dir/micro_bench.json" --csv "$out_dir/micro_bench.csv" \
    || failed+=("shmq_micro_bench (exit $?)")
  echo
fi

echo "run.sh: $((SECONDS - started)) s; load average now: $(cut -d' ' -f1-3 /proc/loadavg); CSV, JSON and this summary in $out_dir"
if [ ${#failed[@]} -gt 0 ]; then
  echo "*** run.sh: FAILED: ${failed[*]}: see the *** FAIL lines above; those figures are not results."
  exit 1
fi
echo "run.sh: all benchmarks ran and checked their messages."

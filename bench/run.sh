#!/usr/bin/env bash
# Runs the built benchmarks and prints their tables. It builds nothing: build first with
#   cmake -S . -B build && cmake --build build -j2 --target shmq_micro_bench shmq_pingpong
#
# usage: bench/run.sh [BENCH_DIR] [--quick] [--json OUT_DIR]
#   BENCH_DIR  where the binaries are (default: build/bench, else the one beside this script's repo)
#   --quick    short runs (pingpong --quick, micro benchmarks 0.05 s each)
#   --json     also write OUT_DIR/pingpong.json and OUT_DIR/micro_bench.json
#
# Exit status: 0 only if every benchmark ran and checked what it measured; a failure is printed
# with "*** FAIL" by the binary and summarised at the end here.
set -u -o pipefail

bench_dir=""
quick=0
json_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --json)
      [ $# -ge 2 ] || { echo "run.sh: --json needs a directory" >&2; exit 2; }
      json_dir=$2
      shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) bench_dir=$1 ;;
  esac
  shift
done

if [ -z "$bench_dir" ]; then
  bench_dir=build/bench
  if [ ! -d "$bench_dir" ]; then
    bench_dir="$(cd "$(dirname "$0")/.." && pwd)/build/bench"
  fi
fi
for bin in shmq_pingpong shmq_micro_bench; do
  if [ ! -x "$bench_dir/$bin" ]; then
    echo "run.sh: $bench_dir/$bin is missing: build it first (this script builds nothing)" >&2
    exit 2
  fi
done
if [ -n "$json_dir" ]; then mkdir -p "$json_dir" || exit 2; fi

echo "# shmq benchmarks ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -r), load average: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "# binaries: $bench_dir; git: $(git -C "$(dirname "$0")" describe --always --dirty 2>/dev/null || echo unknown)"
echo

failed=()

echo "## Cross-process: latency and throughput beside the floor (shmq_pingpong)"
echo
pp_args=()
[ "$quick" = 1 ] && pp_args+=(--quick)
[ -n "$json_dir" ] && pp_args+=(--json "$json_dir/pingpong.json")
"$bench_dir/shmq_pingpong" "${pp_args[@]}" || failed+=("shmq_pingpong (exit $?)")
echo

echo "## One process: publish, poll, ack (shmq_micro_bench)"
echo
mb_args=()
[ "$quick" = 1 ] && mb_args+=(--benchmark_min_time=0.05)
[ -n "$json_dir" ] && mb_args+=(--benchmark_out="$json_dir/micro_bench.json" --benchmark_out_format=json)
"$bench_dir/shmq_micro_bench" "${mb_args[@]}" || failed+=("shmq_micro_bench (exit $?)")
echo

if [ ${#failed[@]} -gt 0 ]; then
  echo "*** run.sh: FAILED: ${failed[*]}: see the *** FAIL lines above; those figures are not results." >&2
  exit 1
fi
echo "run.sh: all benchmarks ran and checked their messages."

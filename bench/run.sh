#!/usr/bin/env bash
# Runs the built benchmarks and prints ONE markdown table: every headline figure of shmq beside its
# floors and its peers from the same run, the ratios, and each speed goal as met / MISSED; then a
# PNG plot. It builds nothing: `make bench` builds them (in build-bench/) and runs this; or by hand
#   cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSHMQ_BUILD_BENCH=ON -DSHMQ_BUILD_TESTS=OFF \
#     -DSHMQ_BUILD_TOOLS=OFF && cmake --build build-bench -j2 --target bench
#
# usage: bench/run.sh [BENCH_DIR] [--quick] [--out DIR] [--only SECTIONS] [--verbose]
#   BENCH_DIR  where the binaries are (default: build-bench/bench, else build/bench, beside this repo)
#   --quick    short runs (about a minute in all): a smoke test, not figures to quote
#   --out      where results go (default: results/ at the top of the repo, which git ignores):
#              summary.md (what is printed), bench.png (the plot), run.env (date, machine, commit:
#              for bench/update_readme.sh), per benchmark NAME.log (all it
#              printed, its own tables), NAME.csv / NAME.json, NAME.summary.tsv (its summary rows);
#              micro_bench.gbench.json (Google Benchmark's own), iox-roudi.log
#   --only     a comma-separated subset of: pingpong, consumers, durability, micro, callgrind
#   --verbose  also print each benchmark's own output (its tables, notes, disturbance)
#
# Exit status: 0 only if every benchmark ran and checked what it measured; a failure is printed
# with "*** FAIL" (the lines are repeated here from the logs). A goal missed is not a failure.
set -u -o pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bench_dir=""
quick=0
verbose=0
out_dir=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --verbose) verbose=1 ;;
    --out|--json)  # --json: the old name
      [ $# -ge 2 ] || { echo "run.sh: $1 needs a directory" >&2; exit 2; }
      out_dir=$2
      shift ;;
    --only)
      [ $# -ge 2 ] || { echo "run.sh: --only needs a list" >&2; exit 2; }
      only=$2
      shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
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
rm -f "$out_dir"/*.summary.tsv

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
machine="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) CPUs, $(uname -r)"
when="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
commit="$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
printf 'when=%q\nmachine=%q\ncommit=%q\nquick=%q\n' "$when" "$machine" "$commit" "$quick" >"$out_dir/run.env"
echo "# shmq benchmarks: $when, $machine, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# binaries: $bench_dir; git: $commit; results: $out_dir"
[ "$quick" = 1 ] && echo "# --quick: short runs, a smoke test; do not quote these figures"
echo

failed=()
q=()
[ "$quick" = 1 ] && q=(--quick)

# run_section NAME WHAT CMD...: runs CMD with its output in NAME.log, says how it went.
run_section() {
  local name=$1 what=$2 t0=$SECONDS rc=0
  shift 2
  printf '%-11s %s ... ' "$name" "$what"
  "$@" >"$out_dir/$name.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    echo "ok, $((SECONDS - t0)) s"
  else
    echo "FAILED (exit $rc), $((SECONDS - t0)) s:"
    grep -F '*** ' "$out_dir/$name.log" | sed 's/^/    /' | head -20
    failed+=("$name")
  fi
  if [ "$verbose" = 1 ]; then
    sed 's/^/    /' "$out_dir/$name.log"
  fi
  grep -h '^WARNING' "$out_dir/$name.log" | sort -u | sed 's/^/    /'
  return "$rc"
}

if wants pingpong; then
  run_section pingpong "latency and throughput, 64 B / 1 KiB / 64 KiB, shmq beside the floors, memcpy and the peers" \
    "$bench_dir/shmq_pingpong" "${q[@]}" --json "$out_dir/pingpong.json" --csv "$out_dir/pingpong.csv" \
    --summary "$out_dir/pingpong.summary.tsv"
fi
if wants consumers; then
  run_section consumers "producers x groups x competing consumers" \
    "$bench_dir/shmq_competing_consumers" "${q[@]}" --json "$out_dir/competing_consumers.json" \
    --csv "$out_dir/competing_consumers.csv" --summary "$out_dir/consumers.summary.tsv"
fi
if wants durability; then
  run_section durability "Memory vs Async vs Sync, 1 and 4 producers, beside this disk's fdatasync" \
    "$bench_dir/shmq_durability" "${q[@]}" --json "$out_dir/durability.json" --csv "$out_dir/durability.csv" \
    --summary "$out_dir/durability.summary.tsv"
fi
if wants micro; then
  mb=(--benchmark_out="$out_dir/micro_bench.gbench.json" --benchmark_out_format=json)
  if [ "$quick" = 1 ]; then mb+=(--benchmark_min_time=0.05); else mb+=(--benchmark_repetitions=3); fi
  if run_section micro "one thread: publish, poll, ack (Google Benchmark)" \
    "$bench_dir/shmq_micro_bench" "${mb[@]}" --json "$out_dir/micro_bench.json" --csv "$out_dir/micro_bench.csv" &&
    [ -f "$out_dir/micro_bench.csv" ]; then
    awk -f "$here/micro_summary.awk" "$out_dir/micro_bench.csv" >"$out_dir/micro.summary.tsv"
  fi
fi
if wants callgrind; then
  if command -v valgrind >/dev/null && [ -x "$bench_dir/shmq_callgrind_driver" ]; then
    run_section callgrind "instructions per 64 B publish + poll (valgrind --tool=callgrind)" \
      "$here/callgrind.sh" --driver "$bench_dir/shmq_callgrind_driver" --summary "$out_dir/callgrind.summary.tsv"
  else
    echo "callgrind   SKIPPED: needs valgrind and $bench_dir/shmq_callgrind_driver (bench/callgrind.sh installs and builds them)"
  fi
fi
echo

# The CPU that other processes took while the cases ran (each binary prints it per case, as
# "name others/steal;" in its "CPU taken by" line): the median and the worst over all cases.
disturbance() {
  grep -h '^CPU taken by' "$out_dir"/*.log 2>/dev/null | sed 's/^[^:]*: //' | tr ';' '\n' |
    awk '$NF ~ /^[0-9]+\/[0-9]+$/ { split($NF, v, "/"); x[++n] = v[1] + v[2] }
      END {
        if (n == 0) exit
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t }
        printf "CPU taken by other processes (and the hypervisor) while the cases ran: median %d%%, worst %d%% of all CPUs", x[int((n + 1) / 2)], x[n]
        print (x[int((n + 1) / 2)] > 10 ? ": DISTURBED, these figures are not to be quoted." : ".")
      }'
}

tables=()
for s in pingpong consumers durability micro callgrind; do
  [ -s "$out_dir/$s.summary.tsv" ] && tables+=("$out_dir/$s.summary.tsv")
done
if [ ${#tables[@]} -gt 0 ]; then
  awk -f "$here/summary_table.awk" "${tables[@]}"
  echo
  echo "Ratios are shmq / this at the same size unless the cell says otherwise: for latency below 1 means shmq is"
  echo "lower, for throughput above 1 means shmq is higher. Latency: one-way (ping-pong round trip / 2); durability"
  echo "rows: the time of Producer::publish. Every message was checked by its receiver (sequence, every byte,"
  echo "inner id for shmq); a case that lost, duplicated or corrupted one is FAILED and has no figure."
  echo "Each benchmark's own tables, notes and the CPU other processes took meanwhile: ${out_dir#"$repo"/}/NAME.log."
  disturbance
fi

if [ -s "$out_dir/pingpong.summary.tsv" ]; then
  if command -v gnuplot >/dev/null; then
    if "$here/plot.sh" "$out_dir/pingpong.summary.tsv" "$out_dir/bench.png" \
      "shmq_pingpong: $when, $machine, git $commit" 2> >(grep -v 'Skipping data file' >&2); then
      echo "plot: $out_dir/bench.png"
    else
      echo "plot: gnuplot failed (see above)"
    fi
  else
    echo "plot: SKIPPED: gnuplot is not installed (apt-get install gnuplot-nox; make bench does)"
  fi
fi

echo
echo "seconds=$((SECONDS - started))" >>"$out_dir/run.env"
echo "run.sh: $((SECONDS - started)) s; load average now: $(cut -d' ' -f1-3 /proc/loadavg); results in $out_dir"
if [ ${#failed[@]} -gt 0 ]; then
  echo "*** run.sh: FAILED: ${failed[*]}: see the *** FAIL lines above; those figures are not results."
  exit 1
fi
echo "run.sh: all benchmarks ran and checked their messages."

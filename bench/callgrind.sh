#!/usr/bin/env bash
# Instructions per 64-byte publish + poll (and per ack), counted by valgrind --tool=callgrind.
#
# It runs shmq_callgrind_driver (bench/callgrind_driver.cpp: one thread, Durability::Memory, 1 MiB
# ring, Wait::Spin) under callgrind twice, once collecting only inside cg::publish_poll (publish one
# message, poll it back), once only inside cg::ack; each run's total instruction count (Ir) divided
# by the number of messages is the figure. The warm-up (several laps of the ring) is not collected,
# so the figure includes the ring's amortised zeroing of freed space but no first-touch page fault.
# Instructions are deterministic: one run is enough, and other load on the machine does not move them.
#
# usage: bench/callgrind.sh [--driver PATH] [--messages N] [--summary FILE]
# (counted twice: the default ends, and an exclusive producer and consumer: --exclusive)
#   --driver   default: build-bench/bench/shmq_callgrind_driver (built if missing, with cmake)
#   --summary  also write the figures as a summary row for run.sh (tab-separated)
# Needs valgrind (Debian package valgrind: installed if missing, as `make deps` installs packages).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
driver="$repo/build-bench/bench/shmq_callgrind_driver"
messages=100000
summary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --driver) driver=$2; shift ;;
    --messages) messages=$2; shift ;;
    --summary) summary=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "callgrind.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if ! command -v valgrind >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "callgrind.sh: installing valgrind" >&2
  $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >&2
fi
if [ ! -x "$driver" ]; then
  echo "callgrind.sh: building $driver" >&2
  cmake -S "$repo" -B "$repo/build-bench" -DCMAKE_BUILD_TYPE=Release -DSHMQ_BUILD_BENCH=ON -DSHMQ_BUILD_TESTS=OFF \
    -DSHMQ_BUILD_TOOLS=OFF -DSHMQ_SANITIZE= >&2
  cmake --build "$repo/build-bench" -j"$(nproc)" --target shmq_callgrind_driver >&2
fi

work="$(mktemp -d /tmp/shmq-callgrind-out-XXXXXX)"
trap 'rm -rf "$work"' EXIT

# Ir inside FUNCTION (a callgrind --toggle-collect pattern) over the whole run; further arguments
# go to the driver.
instructions_in() {
  local function=$1 name=$2 out="$work/$2.out"
  shift 2
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect="$function" --callgrind-out-file="$out" \
    "$driver" --messages "$messages" "$@" >"$work/$name.log" 2>&1 || {
    echo "*** FAIL callgrind.sh: the driver under callgrind failed; see its output:" >&2
    cat "$work/$name.log" >&2
    exit 1
  }
  # The totals line ("totals:" or, in older formats, "summary:") holds the events; Ir is the first.
  awk '/^(totals|summary):/ { print $2; exit }' "$out"
}

per_message() { awk -v t="$1" -v n="$messages" 'BEGIN { printf "%.0f", t / n }'; }
pp=$(instructions_in 'cg::publish_poll*' publish_poll)
ack=$(instructions_in 'cg::ack*' ack)
xpp=$(instructions_in 'cg::publish_poll*' publish_poll_exclusive --exclusive)
xack=$(instructions_in 'cg::ack*' ack_exclusive --exclusive)
# Batches of 16 (poll_batch, ack of the batch); --messages is a multiple of 16 (the driver rounds up).
bmessages=$(( (messages + 15) / 16 * 16 ))
bpp=$(instructions_in 'cg::publish_poll_batch*' publish_poll_batch --batch 16)
back=$(instructions_in 'cg::ack_batch*' ack_batch --batch 16)
xbpp=$(instructions_in 'cg::publish_poll_batch*' publish_poll_batch_exclusive --batch 16 --exclusive)
xback=$(instructions_in 'cg::ack_batch*' ack_batch_exclusive --batch 16 --exclusive)
per_pp=$(per_message "$pp"); per_ack=$(per_message "$ack")
per_xpp=$(per_message "$xpp"); per_xack=$(per_message "$xack")
per_bpp=$(messages=$bmessages per_message "$bpp"); per_back=$(messages=$bmessages per_message "$back")
per_xbpp=$(messages=$bmessages per_message "$xbpp"); per_xback=$(messages=$bmessages per_message "$xback")
echo "instructions per 64 B publish + poll: $per_pp ($pp Ir over $messages messages); per ack: $per_ack;" \
  "exclusive producer and consumer: $per_xpp and $per_xack;" \
  "batches of 16 (poll_batch, ack of the batch): $per_bpp and $per_back, exclusive ends $per_xbpp and $per_xback;" \
  "$(valgrind --version), Durability::Memory, Wait::Spin, one thread"
if [ -n "$summary" ]; then
  printf 'section\tcase\tsystem\tp50_ns\tp99_ns\tp999_ns\tmax_ns\tmsgs_per_s\tmb_per_s\tvs\tgoal\n' >"$summary"
  printf 'instructions (valgrind --tool=callgrind, one thread, Memory)\t64 B publish + poll\tshmq\t\t\t\t\t\t\t%s instructions per message; ack: %s more\t\n' \
    "$per_pp" "$per_ack" >>"$summary"
  printf 'instructions (valgrind --tool=callgrind, one thread, Memory)\t64 B publish + poll\tshmq, exclusive ends\t\t\t\t\t\t\t%s instructions per message; ack: %s more\t\n' \
    "$per_xpp" "$per_xack" >>"$summary"
  printf 'instructions (valgrind --tool=callgrind, one thread, Memory)\t64 B publish + poll_batch of 16\tshmq\t\t\t\t\t\t\t%s instructions per message; ack of the batch: %s more\t\n' \
    "$per_bpp" "$per_back" >>"$summary"
  printf 'instructions (valgrind --tool=callgrind, one thread, Memory)\t64 B publish + poll_batch of 16\tshmq, exclusive ends\t\t\t\t\t\t\t%s instructions per message; ack of the batch: %s more\t\n' \
    "$per_xbpp" "$per_xback" >>"$summary"
fi

#!/usr/bin/env bash
# The installed package works for an outside project: installs the build tree BUILD_DIR into a
# temporary prefix, configures and builds EXAMPLES_DIR against it (find_package(shmq CONFIG)),
# then runs the example consumer and producer through a fresh channel.
#   install_examples_test.sh BUILD_DIR EXAMPLES_DIR [SANITIZE] [CXX]
set -euo pipefail

build_dir=$1
examples_dir=$2
sanitize=${3:-}
cxx=${4:-c++}
count=100

tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmq-install-test.XXXXXX")
channel="install-test-$$"
consumer_pid=""
cleanup() {
  if [[ -n $consumer_pid ]] && kill -0 "$consumer_pid" 2>/dev/null; then kill -9 "$consumer_pid"; fi
  rm -f "/dev/shm/shmq.$channel"
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Runs a step with its output in a log, shown only if it fails.
step() {
  local log=$1
  shift
  if ! "$@" >"$tmp/$log" 2>&1; then
    cat "$tmp/$log" >&2
    fail "$*"
  fi
}

prefix="$tmp/prefix"
step install.log cmake --install "$build_dir" --prefix "$prefix"
[[ -f $prefix/include/shmq/shmq.hpp ]] || fail "the header was not installed"
config=$(find "$prefix" -name shmqConfig.cmake | head -n1)
[[ -n $config ]] || fail "shmqConfig.cmake was not installed"

# A sanitized library needs its runtime in the program that links it.
flags=""
case $sanitize in
  address) flags="-fsanitize=address,undefined" ;;
  thread) flags="-fsanitize=thread" ;;
  "") ;;
  *) fail "unknown sanitizer '$sanitize'" ;;
esac

step configure.log cmake -S "$examples_dir" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_CXX_FLAGS="$flags"
found=$(sed -n 's/^shmq_DIR:PATH=//p' "$tmp/build/CMakeCache.txt")
[[ $found == "$prefix"/* ]] || fail "find_package(shmq) found '$found', not the temporary prefix"
step build.log cmake --build "$tmp/build" -j2

# The consumer joins first (its group then holds every message), then the producer publishes.
"$tmp/build/shmq_example_consumer" "$channel" "$count" >"$tmp/consumer.out" 2>&1 &
consumer_pid=$!
for _ in $(seq 300); do
  grep -qx ready "$tmp/consumer.out" && break
  kill -0 "$consumer_pid" 2>/dev/null || break
  sleep 0.1
done
grep -qx ready "$tmp/consumer.out" || { cat "$tmp/consumer.out" >&2; fail "the consumer did not start"; }

timeout 60 "$tmp/build/shmq_example_producer" "$channel" "$count" || fail "the producer failed"

for _ in $(seq 600); do
  kill -0 "$consumer_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$consumer_pid" 2>/dev/null; then
  cat "$tmp/consumer.out" >&2
  fail "the consumer did not finish within 60 s"
fi
rc=0
wait "$consumer_pid" || rc=$?
consumer_pid=""
if [[ $rc -ne 0 ]] || ! grep -qx "received $count messages" "$tmp/consumer.out"; then
  cat "$tmp/consumer.out" >&2
  fail "the consumer exited with $rc"
fi
echo "installed into a temporary prefix, built examples/ against it, $count messages went through"

# A thin wrapper around CMake and CTest.
#   make deps    install the Debian packages the build needs (only those missing)
#   make build   Release build in build/
#   make test    the suite three times: Release (build/), ASan+UBSan (build-asan/), TSan (build-tsan/),
#                then the libFuzzer targets for 20 s each (build-fuzz/, clang)
#   make demo    the shmq tool's demo
#   make bench   the benchmarks
#   make clean
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

JOBS ?= $(shell nproc)
# Tests at a time. Most tests wait (on nats-server, on timeouts, on children they fork): with 2 at a
# time on 2 cores the machine was 41% busy (ASan suite: 124 s of CPU in 150 s). 4 at a time, same
# quiet 2-core machine: Release 188 -> 125 s, ASan 150 -> 82 s, TSan 183 -> 99 s, all passing.
CTEST_JOBS ?= 4
DEPS := cmake g++ make spin libboost-dev libgtest-dev libbenchmark-dev libcli11-dev tmux clang libclang-rt-14-dev libnats-dev nats-server
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Any sanitizer report fails the test that produced it.
SANITIZER_ENV := \
  ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1 \
  UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1 \
  TSAN_OPTIONS=halt_on_error=1:abort_on_error=1:exitcode=66:second_deadlock_stack=1

.PHONY: deps build test demo bench clean

deps:
	@missing=""; \
	for p in $(DEPS); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [[ -n "$$missing" ]]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSHMQ_CRASH_POINTS=OFF
	cmake --build build -j$(JOBS)

# Each suite: configure, build (keep going past errors), ctest. A failed build counts as one failure
# and the tests that did build still run. The last line sums the three ctest runs.
test: deps
	@passed=0; failed=0; \
	run_suite() { \
	  local dir=$$1; shift; \
	  echo "==== $$dir: cmake $$*"; \
	  if ! cmake -S . -B "$$dir" "$$@"; then \
	    echo "==== $$dir: CONFIGURE FAILED"; failed=$$((failed + 1)); return 0; \
	  fi; \
	  if ! cmake --build "$$dir" -j$(JOBS) -- -k; then \
	    echo "==== $$dir: BUILD FAILED (counted as one failure; running the tests that built)"; failed=$$((failed + 1)); \
	  fi; \
	  (cd "$$dir" && env $(SANITIZER_ENV) ctest --output-on-failure -j$(CTEST_JOBS)) 2>&1 | tee "$$dir/ctest.log" || true; \
	  local line; line=$$(grep -E '[0-9]+ tests failed out of [0-9]+' "$$dir/ctest.log" | tail -n1 || true); \
	  if [[ -z "$$line" ]]; then echo "==== $$dir: ctest ran no test"; failed=$$((failed + 1)); return 0; fi; \
	  local f t; \
	  f=$$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$$line"); \
	  t=$$(sed -E 's/.* tests failed out of ([0-9]+).*/\1/' <<<"$$line"); \
	  passed=$$((passed + t - f)); failed=$$((failed + f)); \
	}; \
	start=$$SECONDS; \
	run_suite build -DCMAKE_BUILD_TYPE=Release -DSHMQ_BUILD_TESTS=ON -DSHMQ_BUILD_TOOLS=ON -DSHMQ_SANITIZE= -DSHMQ_CRASH_POINTS=ON; \
	run_suite build-asan -DSHMQ_SANITIZE=address -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHMQ_BUILD_TESTS=ON -DSHMQ_BUILD_TOOLS=ON -DSHMQ_CRASH_POINTS=ON; \
	run_suite build-tsan -DSHMQ_SANITIZE=thread -DSHMQ_BUILD_TESTS=ON -DSHMQ_BUILD_TOOLS=ON -DSHMQ_CRASH_POINTS=ON; \
	run_suite build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DSHMQ_FUZZ=ON -DSHMQ_BUILD_TESTS=OFF -DSHMQ_BUILD_TOOLS=OFF -DSHMQ_BUILD_BENCH=OFF; \
	echo "==== make test took $$((SECONDS - start)) s"; \
	echo "$$passed passed, $$failed failed"; \
	[[ $$failed -eq 0 ]]

demo: build
	./build/tools/shmq demo

# The benchmarks build in their own directory (Release, no sanitizer, no tests), run (bench/run.sh:
# one summary table, CSV / JSON / logs / plot in results/), and put the table and the plot in the
# README (bench/update_readme.sh: README.md's "## Benchmarks", bench/latest.png). The packages they
# need and the build does not: gnuplot-nox (the plot), valgrind (bench/callgrind.sh), iceoryx (a
# peer: reported as not built when apt does not have it).
BENCH_DEPS := gnuplot-nox valgrind libiceoryx-posh-dev iceoryx
bench: deps
	@missing=""; \
	for p in $(BENCH_DEPS); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [[ -n "$$missing" ]]; then \
	  $(SUDO) apt-get update; \
	  have=""; \
	  for p in $$missing; do \
	    if apt-cache show "$$p" >/dev/null 2>&1; then have="$$have $$p"; \
	    else echo "bench: $$p is not in apt: the run says what it could not measure without it"; fi; \
	  done; \
	  if [[ -n "$$have" ]]; then \
	    echo "bench: installing:$$have"; \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$have; \
	  fi; \
	fi
	cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DSHMQ_BUILD_BENCH=ON -DSHMQ_BUILD_TESTS=OFF \
	  -DSHMQ_BUILD_TOOLS=OFF -DSHMQ_SANITIZE=
	cmake --build build-bench -j$(JOBS) --target bench
	./bench/run.sh build-bench/bench
	./bench/update_readme.sh results README.md

clean:
	rm -rf build build-asan build-tsan build-fuzz

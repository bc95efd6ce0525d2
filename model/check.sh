#!/usr/bin/env bash
# Runs one SPIN check of a model and says whether it gave the expected verdict.
#
#   model/check.sh MODEL.pml verify|counterexample [-DNAME[=VALUE] ...]
#
# verify:         the exhaustive search must finish with no error (exit 0), else exit 1.
# counterexample: the search must find an error (assertion violated or invalid end state) and
#                 write a trail (exit 0; the trail's last steps are printed), else exit 1.
# The -D options go to spin (the model's sizes and mutants). PAN_FLAGS (environment) adds flags
# of the compiled verifier's compiler (default: -DSAFETY -DCOLLAPSE -DMEMLIM=$MODEL_MEMLIM, MB,
# default 1500); PAN_RUN adds flags to the verifier run (default -m200000).
set -euo pipefail
if [[ $# -lt 2 ]]; then echo "usage: $0 MODEL.pml verify|counterexample [-D...]" >&2; exit 2; fi
command -v spin >/dev/null || { echo "FAIL: spin (Debian package 'spin') is not installed: make deps installs it" >&2; exit 1; }
model=$(realpath "$1"); expect=$2; shift 2
command -v gcc >/dev/null || { echo "FAIL: gcc is needed to compile SPIN's verifier" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/shmq-model.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
cp "$model" model.pml
echo "== spin -a $* $(basename "$model") (expect: $expect)"
spin -a "$@" model.pml >spin.log 2>&1 || { cat spin.log; echo "FAIL: spin could not translate the model"; exit 1; }
# A mutant's search is short: compiling the verifier fast (-O0, 1 s instead of 6) wins.
opt=-O2; [[ $expect == counterexample ]] && opt=-O0
gcc $opt -w ${PAN_FLAGS:--DSAFETY -DCOLLAPSE -DMEMLIM=${MODEL_MEMLIM:-1500}} -o pan pan.c
start=$(date +%s%N)
set +e
./pan ${PAN_RUN:--m200000} >pan.log 2>&1
set -e
end=$(date +%s%N)
grep -E "^pan|errors:|states, stored|states, matched|transitions|total actual memory|elapsed|State-vector|Search not completed|reached -DMEMLIM" pan.log || true
ms=$(( (end - start) / 1000000 ))
printf 'wall time: %d.%01d s\n' $((ms / 1000)) $(((ms % 1000) / 100))
errors=$(sed -nE 's/.*errors: ([0-9]+).*/\1/p' pan.log | tail -n1)
if [[ -z "$errors" ]]; then cat pan.log; echo "FAIL: the verifier did not report"; exit 1; fi
case $expect in
  verify)
    if grep -qE "reached -DMEMLIM|max search depth too small|Search not completed" pan.log; then
      echo "FAIL: the search did not finish (memory or depth bound): no proof"; exit 1
    fi
    if [[ $errors -ne 0 ]]; then
      spin -t -p "$@" model.pml 2>&1 | tail -n 40
      echo "FAIL: the model has a counterexample (trail above)"; exit 1
    fi
    echo "PASS: no error in the whole state space"
    ;;
  counterexample)
    if [[ $errors -eq 0 || ! -f model.pml.trail ]]; then
      echo "FAIL: the mutant was not caught: the model cannot see this bug"; exit 1
    fi
    spin -t -p "$@" model.pml 2>&1 | grep -E "assertion violated|invalid end state|^spin: trail ends|pan: " | head -n 5 || true
    spin -t "$@" model.pml 2>&1 | tail -n 3 || true
    echo "PASS: counterexample found (as expected)"
    ;;
  *) echo "usage: expect is verify or counterexample" >&2; exit 2 ;;
esac

#!/bin/sh
# ring_v3.sh: checks model/ring_v3.pml with SPIN, exhaustively (no bitstate, no hash compaction;
# -DCOLLAPSE is lossless state compression), and exits 0 only if
#   - the model of the C++ as it is (the fixed protocol of issue 12 item 1) verifies with no error
#     against the full adversary (stale words may be any frame of the lap, including the very values
#     claimers write: no NOCOINCIDE), with a reader, without one (the gate is then the tail), and
#     without one with two claims for claimer 0 (an adopted owner claims again; the ring laps);
#   - every mutant yields an error: each fix of issue 12 item 1 removed (MUT_NOTOGGLE, MUT_LOST,
#     MUT_INTENT, MUT_CIP_ORDER) and the older ones (MUT_A..MUT_E; MUT_D needs an adopted owner that
#     claims again).
# Prints state counts and times of each run. Needs spin, gcc and about 13 GB of memory for the
# as_is run (MEMLIM_BIG, MB). Usage: model/ring_v3.sh [workdir]
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-$(mktemp -d /tmp/ring_v3.XXXXXX)}
mkdir -p "$work"
cp "$here/ring_v3.pml" "$work/"
cd "$work" || exit 2
command -v spin >/dev/null || { echo "ring_v3.sh: spin is not installed (apt-get install -y spin)"; exit 2; }

# The configuration every run shares: a ring of 2 word slots (records of 1 or 2 slots: positions
# wrap at every record or two), 2 claimers making 1 claim each (K=2: claimer 0 makes 2), one death
# in a run.
base="-DN=2 -DK=1 -DDEATHS=1"
status=0

# run NAME EXPECT(ok|error) FLAGS...   (env MEMLIM: MB for pan, default 3500; HASHW: pan -w)
run() {
  name=$1; expect=$2; shift 2
  rm -f pan pan.* ring_v3.pml.trail
  if ! spin -a $base "$@" ring_v3.pml >spin.out 2>&1; then
    echo "FAIL $name: spin -a: $(head -3 spin.out)"; status=1; return
  fi
  if ! gcc -O2 -DSAFETY -DCOLLAPSE -DMEMLIM=${MEMLIM:-3500} -w -o pan pan.c >gcc.out 2>&1; then
    echo "FAIL $name: gcc: $(head -3 gcc.out)"; status=1; return
  fi
  ./pan -m400000 -w${HASHW:-26} >pan.out 2>&1
  states=$(sed -n 's/^ *\([0-9][0-9.e+]*\) states, stored.*/\1/p' pan.out)
  secs=$(sed -n 's/^pan: elapsed time \([0-9.]*\) seconds.*/\1/p' pan.out)
  errs=$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' pan.out)
  what=$(grep -m1 -E '^pan:[0-9]+:' pan.out | sed 's/^pan:[0-9]*: *//' | cut -c1-110)
  if grep -q 'Search not completed' pan.out && [ "${errs:-0}" = 0 ]; then
    echo "FAIL $name: search not completed ($states states, ${secs}s): raise MEMLIM or shrink the model"
    status=1; return
  fi
  if [ "${errs:-0}" = 0 ]; then got=ok; else got=error; fi
  if [ "$got" = "$expect" ]; then verdict=PASS; else verdict=FAIL; status=1; fi
  printf '%s %-34s %-5s (expected %-5s) %10s states %6ss  %s\n' "$verdict" "$name" "$got" "$expect" "${states:-?}" "${secs:-?}" "$what"
  if [ "$got" = error ]; then
    # the counterexample, for spin -t -p $base $* ring_v3.pml in $work
    cp ring_v3.pml.trail "trail.$name" 2>/dev/null
  fi
}

start=$(date +%s)
run as_is_noreader         ok    -DNOREADER
run mut_notoggle           error -DMUT_NOTOGGLE                        # fixes 1, 2 removed
run mut_lost               error -DMUT_LOST                            # fix 3 removed
run mut_intent             error -DMUT_INTENT -DNOREADER -DK=2 -DK1=1  # fix 4 removed
run mut_cip_order          error -DMUT_CIP_ORDER -DNOREADER -DK=2 -DK1=1  # claim_frame read before intent
run mut_a_v2_order         error -DMUT_A
run mut_b_word_before_tail error -DMUT_B
run mut_c_no_slot_check    error -DMUT_C
run mut_d_adopt_no_move    error -DMUT_D -DNOREADER -DK=2 -DK1=1
run mut_e_reclaim_live     error -DMUT_E -DNOREADER
run exclusive              ok    -DEXCL                                # ProducerOptions::exclusive
run exclusive_noreader_k2  ok    -DEXCL -DNOREADER -DK=2 -DK1=1
run mut_excl_tail_first    error -DEXCL -DMUT_EXCL_TAIL_FIRST
run mut_excl_live_peer     error -DEXCL -DMUT_EXCL_WITH_LIVE_PEER
MEMLIM=${MEMLIM_BIG:-13000} HASHW=27 run exclusive_k2 ok -DEXCL -DK=2 -DK1=1
MEMLIM=${MEMLIM_BIG:-13000} HASHW=27 run as_is_noreader_k2 ok -DNOREADER -DK=2 -DK1=1
MEMLIM=${MEMLIM_BIG:-13000} HASHW=27 run as_is ok
echo "ring_v3.sh: $(( $(date +%s) - start )) s in $work; trails: trail.NAME (spin -t -p $base FLAGS ring_v3.pml, after cp trail.NAME ring_v3.pml.trail)"
exit $status

#!/usr/bin/env bash
# gate.sh: checks model/gate.pml (the cheap gate of issue 12 item 2) with model/check.sh, exhaustively
# (-DSAFETY -DCOLLAPSE: lossless compression, no bitstate), and prints one verdict line per run:
#   - the protocol as specified has a counterexample (the every-64th raise of low_held passes over
#     an entry its owner lost track of: kAway, restored as held by a move that found the list full);
#     without visibility-timeout moves it has none;
#   - the code's raise (-DRAISE_SHARED: the min over the shared in-flight table, an entry a load)
#     verifies, live (3 records) and with one death (2 records): 28.6 M / 29.9 M states, ~1 min each;
#   - with the other fix (-DRAISE_FIX: no raise while an entry is kAway) it verifies too: live consumers
#     (3 records, visibility timeouts, a nack, a list that fills, runs of 2), and with one death
#     (a consumer, or the mover/reaper; 2 records); with no gate, no process is ever blocked forever;
#   - the mutants: (b) no seqlock, (e) ~0 at an ack while holding another, (f) ~0 before the ack's
#     CAS, and STRICT (the claim read literally: no tentative entry below g) give counterexamples;
#     (a) low_held read before list_low, (c) low_held stored after the tentative entries, (d) list_low
#     raised before low_held give none, live and with a death (why: model/gate.pml and below).
# Each run takes under about a minute on 2 vCPUs and up to 3 GB (MODEL_MEMLIM, MB, default 4000).
# GATE_LONG=1 adds two runs of 1.5 min: -DCLEANED (reclaim's `cleaned` kept and asserted against
# later) and consumer 1 with 2 entries too.
# Usage: model/gate.sh   (exit 0 iff every run gave its expected verdict)
set -u
here=$(cd "$(dirname "$0")" && pwd)
export MODEL_MEMLIM=${MODEL_MEMLIM:-4000}
export PAN_RUN=${PAN_RUN:--m400000 -w27}
live="-DMAXDEATH=0 -DNPOS=3 -DNK1=1"
# One death: 2 records; the gate's loads of next and moves in one step (next only grows: a later
# load of it only raises g, so this covers the split loads) to stay near a minute.
death="-DMAXDEATH=1 -DNPOS=2 -DNK1=1 -DGATE_MERGE_NEXT"
status=0

# run NAME verify|counterexample FLAGS...
run() {
  local name=$1 expect=$2; shift 2
  local out
  out=$("$here/check.sh" "$here/gate.pml" "$expect" "$@" 2>&1)
  local rc=$?
  local states secs what verdict
  states=$(sed -nE 's/^ *([0-9][0-9.e+]*) states, stored.*/\1/p' <<<"$out" | head -n1)
  secs=$(sed -nE 's/^pan: elapsed time ([0-9.e+]+) seconds.*/\1/p' <<<"$out" | head -n1)
  what=$(grep -m1 -E "assertion violated|invalid end state" <<<"$out" | sed -E 's/^.*(assertion violated|invalid end state)/\1/' | cut -c1-80)
  if [[ $rc -eq 0 ]]; then verdict=PASS; else verdict=FAIL; status=1; fi
  printf '%s %-32s expect %-14s %11s states %6s s  %s\n' "$verdict" "$name" "$expect" "${states:-?}" "${secs:-?}" "$what"
  if [[ $rc -ne 0 ]]; then sed 's/^/    /' <<<"$out" | tail -n 25; fi
}

start=$(date +%s)
run spec.as_written                counterexample $live
run spec.no_visibility_timeout     verify         $live -DMAXMOVE=0
# What the code does (shm/consumer.cpp, lower_for_take): the raise reads the shared table, where a
# kAway entry restored by a move that found the list full is still seen.
run code.live                      verify         $live -DRAISE_SHARED
run code.one_death                 verify         $death -DRAISE_SHARED
run fixed.live                     verify         $live -DRAISE_FIX
run fixed.one_death                verify         $death -DRAISE_FIX
run fixed.liveness.live            verify         $live -DRAISE_FIX -DRECLAIMS=0
run fixed.liveness.one_death       verify         $death -DRAISE_FIX -DRECLAIMS=0
run mutant.b_no_seqlock            counterexample $live -DRAISE_FIX -DNO_SEQLOCK
run mutant.e_ack_any               counterexample $live -DRAISE_FIX -DACK_ANY
run mutant.f_ack_low_first         counterexample $live -DRAISE_FIX -DACK_LOW_FIRST
run claim.strict                   counterexample $live -DRAISE_FIX -DSTRICT
# Not bugs (no counterexample expected):
#  (a) every load of list_low and low_held is inside the seqlock window, and every move between
#      the list and a table is inside a moves++ pair: a gate that returns saw no move, so the order
#      of its loads between them does not matter;
#  (d) likewise: both stores are inside the take's moves++ pair (a death between them leaves moves
#      odd until the next holder settles: list_low recomputed from the list);
#  (c) the cheap gate reads no in-flight table: low_held must cover a take only once its cursor CAS
#      can succeed, and it is stored before the CAS; the gate loads next before low_held, so a CAS
#      after its load of next takes P1 >= g, and one before it stored low_held before too.
run mutant.a_low_first.live        verify         $live -DRAISE_FIX -DLOW_FIRST
run mutant.a_low_first.one_death   verify         $death -DRAISE_FIX -DLOW_FIRST
run mutant.c_low_after_tentative.live      verify $live -DRAISE_FIX -DLOW_AFTER_TENTATIVE
run mutant.c_low_after_tentative.one_death verify $death -DRAISE_FIX -DLOW_AFTER_TENTATIVE
run mutant.d_list_low_first.live   verify         $live -DRAISE_FIX -DLIST_LOW_FIRST
run mutant.d_list_low_first.one_death verify      $death -DRAISE_FIX -DLIST_LOW_FIRST
if [[ ${GATE_LONG:-0} == 1 ]]; then
  run fixed.live.cleaned           verify         $live -DRAISE_FIX -DCLEANED
  run fixed.live.two_by_two        verify         -DMAXDEATH=0 -DNPOS=3 -DNK1=2 -DNORUN -DGATE_MERGE_NEXT -DRAISE_FIX
fi
echo "gate.sh: $(( $(date +%s) - start )) s; a trail: cd /tmp && cp $here/gate.pml . && spin -a FLAGS gate.pml && gcc -O2 -DSAFETY -DCOLLAPSE -o pan pan.c && ./pan -m400000 -w27 && spin -t -p FLAGS gate.pml"
exit $status

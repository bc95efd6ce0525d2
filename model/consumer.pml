/*
 * consumer.pml: an exhaustive model of the consumer protocol of one group (shm/consumer.cpp,
 * shm/channel.cpp, layout in shm/segment.hpp and shm/channel_state.hpp): competing consumers take
 * records from the group's cursor (tentative in-flight entry, then one CAS of cursor + taker),
 * ack them, or give them back (nack) to the group's give-back list, which is changed under its
 * lock with a step record that the next lock holder settles if the holder died; a reaper gives
 * back what a dead consumer held; a reclaimer computes the gate the way ChannelState::gate() does.
 *
 * Checked with SPIN (Debian package `spin`): see model/README.md. Every step is one atomic access
 * of the code it follows (sequential consistency). A consumer may die (SIGKILL) at every step.
 *
 * The ring is abstracted away: positions 0 .. NPOS-1 hold committed records, one slot each (its
 * next is position + 1), except PADPOS, a padding record (the cursor skips it with a CAS of
 * `next` alone, leaving the taker word as it was). Each consumer has one in-flight entry
 * (max_in_flight = 1, k = 0).
 *
 * Invariants (assertions; a process blocked forever is an invalid end state):
 *   - no record is held by two consumers at once (a take of a record someone holds fails);
 *   - no record is delivered again after its ack;
 *   - a record is given back only by the consumer that holds it, and a tentative entry is dropped
 *     only if its consumer did not take the record (nothing lost);
 *   - at the end every record was acked exactly once, nobody holds anything, the list is empty;
 *   - the gate: no record that a consumer holds or that the give-back list names is below what
 *     the reclaimer freed.
 *
 * -DEXCL: consumer 0 is the group's exclusive consumer (ConsumerOptions::exclusive): it takes with
 * plain steps (tentative entry, cursor store, held), never writes the taker word, and a reaper
 * decides its tentative entry by the cursor alone (taken iff next > P). Consumer 1 (shared) joins
 * only once consumer 0 is dead, and first releases it as ChannelState::admit_consumer() does,
 * under the registry lock (which reapers take too).
 *
 * Mutants (each must give a counterexample):
 *   -DTAKER_NOT_IN_CAS  the cursor CAS moves `next` only; the taker word is stored after it
 *   -DNO_TENTATIVE      the in-flight entry is stored as held (no tentative bit) before the CAS
 *   -DNO_SETTLE         the give-back lock's next holder does not settle a dead holder's step
 *   -DGATE_LISTS_ONCE   the gate reads the give-back list once, before the in-flight tables
 *   -DEXCL_NO_ADMIT     (with EXCL) consumer 1 joins without releasing the dead exclusive consumer
 *   -DEXCL_TAKER_RULE   (with EXCL) the exclusive consumer's tentative entry is decided by the taker word
 */

#ifndef NC
#define NC 2            /* consumers of the group */
#endif
#ifndef NPOS
#define NPOS 3          /* positions; PADPOS is padding, the others records */
#endif
#ifndef PADPOS
#define PADPOS 1
#endif
#define NREC (NPOS - (PADPOS < NPOS -> 1 : 0))
#ifndef GB
#define GB 2            /* give-back list entries */
#endif
#ifndef MAXDEATH
#define MAXDEATH 1
#endif
#ifndef MAXNACK
#define MAXNACK 1
#endif
#ifndef REAPERS
#define REAPERS 1
#endif
#ifndef RECLAIMS
#define RECLAIMS 1      /* gate scans: one, at any moment, is enough (see the reclaimer) */
#endif

/* In-flight entry: position + 1 in the low 4 bits, kTentativeBit, kMovingBit. */
#define TBIT 16
#define MBIT 32
#define POS1(v) ((v) & 15)
#define NOBODY 0
#define TAKER(c) ((c) + 1)      /* cursor_taker(generation, c, k = 0) */

byte gnext;                     /* GroupSlot::next */
byte gtaker;                    /* GroupSlot::next_taker */
byte in_flight[NC];             /* ConsumerSlot::in_flight[0] */
bool slot_active[NC];                /* ConsumerSlot::state == kActive */
byte list[GB];                  /* GroupSlot::give_back[i].position_plus1 */
byte given_back;                /* GroupSlot::given_back */
byte gb_lock;                   /* GroupSlot::give_back_lock: owner token, 0 free */
byte step_kind, step_c, step_i; /* GroupSlot::give_back_step: kind (0 none, 1 Take, 2 Give), c, i */
byte step_pos;                  /* GroupSlot::give_back_step_position */
bool alive[NC + REAPERS + 3];   /* token_alive(): consumers 1..NC, reapers after */
byte cleaned;                   /* what the reclaimer freed: positions below it may be reused */
byte reg_lock;                  /* SegmentHeader::registry_lock (EXCL only): owner token, 0 free */

/* ghosts */
byte holder[NPOS];              /* consumer + 1 that holds the record, 0 none */
byte acked_mask;                /* bit p: position p was acked */
byte acks, deaths, nacks;

#define min(a, b) ((a) < (b) -> (a) : (b))
#define DIE_IN(tok) if :: deaths < MAXDEATH -> deaths++; alive[tok] = false; goto died :: true fi

/* The moment consumer C becomes the holder of P (its take is done, whoever finishes it). */
inline become_holder(c, p) {
  assert(holder[p] == 0);                  /* never held by two at once */
  assert((acked_mask & (1 << p)) == 0);    /* never again after its ack */
  holder[p] = c + 1
}

/* lock_owner_word(give_back_lock). */
inline lock_gb(tok) { atomic { (gb_lock == 0 || !alive[gb_lock]) -> gb_lock = tok } }
inline unlock_gb() { gb_lock = 0 }

/* push_given_back(pos): the entry, then the count. OK false when the list is full. */
inline push(tok, p, ok, i) {
  ok = false;
  i = 0;
  do
  :: i < GB && list[i] != 0 -> i++
  :: i < GB && list[i] == 0 ->
     atomic {
       assert(holder[p] != 0);             /* given back by the consumer that held it */
       holder[p] = 0;
       list[i] = p + 1; DIE_IN(tok)
     };
     atomic { given_back++; DIE_IN(tok) };
     ok = true; break
  :: i == GB -> break
  od;
  i = 0
}

inline on_list(p, found, i) {
  found = false;
  i = 0;
  do
  :: i < GB -> if :: list[i] == p + 1 -> found = true :: else fi; i++
  :: else -> break
  od;
  i = 0
}

/* ChannelState::settle_give_back(): a step found here is a dead holder's. */
inline settle(tok, v, ok, i, j) {
#ifndef NO_SETTLE
  if
  :: step_kind != 0 ->
     v = in_flight[step_c];
     if
     :: step_kind == 1 ->                 /* Take: held first, then off the list */
        if
        :: v == step_pos && list[step_i] == step_pos -> atomic { list[step_i] = 0; DIE_IN(tok) }
        :: else
        fi
     :: step_kind == 2 && (v & MBIT) && (v & ~MBIT) == step_pos ->   /* Give: finish it */
        on_list(step_pos - 1, ok, i);
        if
        :: !ok -> push(tok, step_pos - 1, ok, i)
        :: else -> assert(holder[step_pos - 1] == 0)   /* pushed already: given back */
        fi;
        if
        :: ok -> atomic { in_flight[step_c] = 0; DIE_IN(tok) }
        :: else -> atomic { in_flight[step_c] = v & ~MBIT; DIE_IN(tok) }
        fi
     :: else
     fi;
     i = 0; j = 0;                        /* count the list again */
     do
     :: i < GB -> if :: list[i] != 0 -> j++ :: else fi; i++
     :: else -> break
     od;
     atomic { given_back = j; DIE_IN(tok) };
     atomic { step_kind = 0; DIE_IN(tok) };
     i = 0; j = 0; v = 0; ok = false
  :: else
  fi
#else
  skip                                    /* mutant: a dead holder's step is left as it is */
#endif
}

inline lock_give_back(tok, v, ok, i, j) { lock_gb(tok); settle(tok, v, ok, i, j) }

/* ChannelState::move_held(c, k, expected): ST 1 Ok, 0 NotHeld, 2 WouldBlock. */
inline move_held(tok, c, expected, st, v, ok, i, j) {
  lock_give_back(tok, v, ok, i, j);
  st = 0;
  v = in_flight[c];
  if
  :: v != 0 && !(v & TBIT) && (expected == 0 || (v & ~MBIT) == expected) ->
     atomic { step_pos = POS1(v); DIE_IN(tok) };
     atomic { step_kind = 2; step_c = c; step_i = 0; DIE_IN(tok) };
     if
     :: (v & MBIT) -> ok = true
     :: else ->
        atomic {
          if
          :: in_flight[c] == v -> in_flight[c] = v | MBIT; ok = true
          :: else -> ok = false
          fi;
          DIE_IN(tok)                     /* "move_held.after_moving_bit" */
        }
     fi;
     if
     :: ok ->
        on_list(POS1(v) - 1, ok, i);
        if
        :: !ok -> push(tok, POS1(v) - 1, ok, i)     /* then "move_held.after_push" */
        :: else -> assert(holder[POS1(v) - 1] == 0)     /* pushed already: given back */
        fi;
        if
        :: ok -> atomic { in_flight[c] = 0; DIE_IN(tok) }; st = 1
        :: else -> atomic { in_flight[c] = v & ~MBIT; DIE_IN(tok) }; st = 2
        fi
     :: else
     fi;
     atomic { step_kind = 0; DIE_IN(tok) }
  :: else
  fi;
  unlock_gb();
  v = 0; ok = false
}

/* ChannelState::resolve_tentative(c, k): taken iff next > P and next_taker == taker(c, k). */
inline resolve_tentative(tok, c, v, nx, tk) {
  v = in_flight[c];
  if
  :: (v & TBIT) && !(v & MBIT) ->
     nx = gnext;                          /* first */
     tk = gtaker;                         /* then */
     atomic {
       if
       :: in_flight[c] == v ->
          if
#if defined(EXCL) && !defined(EXCL_TAKER_RULE)
          :: nx > POS1(v) - 1 && (c == 0 || tk == TAKER(c)) -> in_flight[c] = v & ~TBIT
#else
          :: nx > POS1(v) - 1 && tk == TAKER(c) -> in_flight[c] = v & ~TBIT
#endif
          :: else ->
             assert(holder[POS1(v) - 1] != c + 1);   /* it did not take it: dropping loses nothing */
             in_flight[c] = 0
          fi
       :: else
       fi;
       DIE_IN(tok)
     }
  :: else
  fi;
  v = 0; nx = 0; tk = 0
}

/* ChannelState::confirm_taker(next, taker). */
inline confirm_taker(tok, nx, tk, v) {
  if
  :: tk != NOBODY ->
     v = in_flight[tk - 1];
     if
     :: (v & TBIT) && !(v & MBIT) && POS1(v) - 1 < nx ->
        atomic { if :: in_flight[tk - 1] == v -> in_flight[tk - 1] = v & ~TBIT :: else fi; DIE_IN(tok) }
     :: else
     fi
  :: else
  fi;
  v = 0
}

#ifdef EXCL
#define REG_LOCK(tok) atomic { (reg_lock == 0 || !alive[reg_lock]) -> reg_lock = tok }
#define REG_UNLOCK reg_lock = 0
#else
#define REG_LOCK(tok) skip
#define REG_UNLOCK skip
#endif

proctype consumer(byte c) {
  byte tok = c + 1;
  byte pos, nx, tk, v, best, bi, st, i, j, mine;
  bool ok;
#ifdef EXCL
  if
  :: c == 1 ->                            /* the Consumer constructor: refused while consumer 0 lives */
     (!alive[1] || acks == NREC);
     REG_LOCK(tok);
#ifndef EXCL_NO_ADMIT
     if                                   /* admit_consumer(): the dead exclusive one is released */
     :: slot_active[0] && !alive[1] ->
        resolve_tentative(tok, 0, v, nx, tk);
        if :: in_flight[0] != 0 -> move_held(tok, 0, 0, st, v, ok, i, j) :: else fi;
        if :: in_flight[0] == 0 -> slot_active[0] = false :: else fi
     :: else
     fi;
#endif
     REG_UNLOCK
  :: else
  fi;
#endif
  do
  :: acks == NREC -> break
  :: given_back != 0 ->                   /* take_given_back(k): redeliveries first */
     lock_give_back(tok, v, ok, i, j);
     best = 255; bi = 0; j = 0; i = 0;
     do
     :: i < GB ->
        v = list[i];
        if
        :: v != 0 ->
           assert(v - 1 >= cleaned);              /* a given-back record is never reclaimed */
           j++;
           if :: v - 1 < best -> best = v - 1; bi = i :: else fi
        :: else
        fi;
        i++
     :: else -> break
     od;
     if :: given_back != j -> atomic { given_back = j; DIE_IN(tok) } :: else fi;
     if
     :: best != 255 ->
        atomic { step_pos = best + 1; DIE_IN(tok) };
        atomic { step_kind = 1; step_c = c; step_i = bi; DIE_IN(tok) };
        atomic { in_flight[c] = best + 1; become_holder(c, best); DIE_IN(tok) };   /* "after_hold" */
        atomic { list[bi] = 0; DIE_IN(tok) };                                     /* "after_clear" */
        atomic { given_back--; DIE_IN(tok) };
        atomic { step_kind = 0; DIE_IN(tok) }
     :: else
     fi;
     unlock_gb();
     i = 0; j = 0; bi = 0; v = 0; ok = false;
     if
     :: best != 255 -> pos = best; best = 0; goto holding
     :: else -> best = 0
     fi
  :: given_back == 0 && gnext < NPOS ->   /* the cursor */
     pos = gnext;
     if
     :: pos == PADPOS ->                  /* Padding: CAS of `next` alone */
        atomic { if :: gnext == pos -> gnext = pos + 1 :: else fi; DIE_IN(tok) }
     :: pos >= NPOS -> skip
     :: else ->
#ifdef EXCL
        if
        :: c == 0 ->                       /* the exclusive consumer: plain stores */
           atomic { in_flight[c] = (pos + 1) | TBIT; DIE_IN(tok) };   /* "poll.exclusive.after_in_flight_store" */
           atomic { assert(gnext == pos); gnext = pos + 1; become_holder(c, pos); DIE_IN(tok) };  /* "...after_cursor_store" */
           atomic { in_flight[c] = pos + 1; DIE_IN(tok) };
           goto holding
        :: else
        fi;
#endif
        tk = gtaker;                       /* after the cursor */
        if :: tk != TAKER(c) -> confirm_taker(tok, pos, tk, v) :: else fi;
#ifdef NO_TENTATIVE
        atomic { in_flight[c] = pos + 1; DIE_IN(tok) };              /* "poll.after_in_flight_store" */
#else
        atomic { in_flight[c] = (pos + 1) | TBIT; DIE_IN(tok) };     /* "poll.after_in_flight_store" */
#endif
        atomic {
#ifdef TAKER_NOT_IN_CAS
          ok = (gnext == pos);
          if :: ok -> gnext = pos + 1 :: else fi;
#else
          ok = (gnext == pos && gtaker == tk);
          if :: ok -> gnext = pos + 1; gtaker = TAKER(c) :: else fi;
#endif
          if :: ok -> become_holder(c, pos) :: else fi;
          DIE_IN(tok)                                                 /* "poll.after_cursor_cas" */
        };
#ifdef TAKER_NOT_IN_CAS
        if :: ok -> atomic { gtaker = TAKER(c); DIE_IN(tok) } :: else fi;
#endif
        if
        :: !ok -> atomic { in_flight[c] = 0; DIE_IN(tok) }; goto next
        :: else
        fi;
        atomic { in_flight[c] = pos + 1; DIE_IN(tok) };               /* ours now */
holding:
        atomic { assert(holder[pos] == c + 1 && pos >= cleaned) };   /* hold(): reads the record */
        if
        :: atomic { nacks < MAXNACK -> nacks++ };                      /* nack: give it back */
           move_held(tok, c, pos + 1, st, v, ok, i, j);
           assert(st == 1)
        :: true ->                                                     /* ack */
           atomic {
             assert(holder[pos] == c + 1 && (acked_mask & (1 << pos)) == 0);
             in_flight[c] = 0; holder[pos] = 0; acked_mask = acked_mask | (1 << pos); acks++;
             DIE_IN(tok)                                              /* ("ack.before_clear" is before) */
           }
        fi
     fi;
next:
     pos = 0; tk = 0; st = 0; ok = false
  :: atomic { given_back == 0 && gnext >= NPOS && acks < NREC } ->   /* nothing to take: wait */
     (given_back != 0 || acks == NREC)
  od;
died: skip
}

/* reap_dead_consumers() -> release_consumer(c) under the registry lock, by any process. */
proctype reaper(byte r) {
  byte tok = NC + 1 + r;
  byte c, v, nx, tk, st, i, j;
  bool ok;
end_reap:
  do
  :: acks == NREC -> break
  :: else ->
     c = 0;
     do
     :: c < NC ->
        if
        :: slot_active[c] && !alive[c + 1] ->
           REG_LOCK(tok);                            /* reap_dead_consumers: under the registry lock */
           if
           :: slot_active[c] ->
              resolve_tentative(tok, c, v, nx, tk);  /* its take, settled first */
              if
              :: in_flight[c] != 0 -> move_held(tok, c, 0, st, v, ok, i, j)
              :: else
              fi;
              if :: in_flight[c] == 0 -> slot_active[c] = false :: else fi
           :: else
           fi;
           REG_UNLOCK
        :: else
        fi;
        c++
     :: else -> break
     od;
     c = 0; st = 0;
     (acks == NREC || (slot_active[0] && !alive[1])
#if NC > 1
      || (slot_active[1] && !alive[2])
#endif
#if NC > 2
      || (slot_active[2] && !alive[3])
#endif
     )
  od;
died: skip                                  /* another reaper (REAPERS > 1) takes over */
}

/* ChannelState::gate() and reclaim: lists, in-flight tables, lists again; then `cleaned` moves.
   `cleaned` changes nothing a consumer does here (it is only asserted against), and it is the
   highest gate any scan returned: a scan that returns too high a gate is wrong on its own. So
   RECLAIMS = 1 scan, which SPIN places at every possible moment, covers any number of them. */
#ifdef GATE_UNDER_LOCK
#define LISTS_ATOMIC atomic                /* under the lock nobody changes the list */
#else
#define LISTS_ATOMIC
#endif
inline lists(g, i, p) {                  /* lowest_given_back(): each entry loaded once */
  LISTS_ATOMIC {
  if
  :: given_back != 0 ->
     i = 0;
     do
     :: i < GB -> p = list[i]; if :: p != 0 -> g = min(g, p - 1) :: else fi; i++
     :: else -> break
     od
  :: else
  fi;
  i = 0; p = 0
  }
}

proctype reclaimer() {
  byte tok = NC + REAPERS + 1;
  byte g, i, c, v, p, j, runs;
  bool ok;
end_reclaim:
  do
  :: acks < NREC && runs < RECLAIMS -> runs++;
     g = gnext;
#ifdef GATE_UNDER_LOCK
     lock_give_back(tok, v, ok, i, j);       /* no move between list and tables meanwhile */
#endif
     lists(g, i, p);
     c = 0;
     do
     :: c < NC ->
        if :: slot_active[c] -> v = in_flight[c]; if :: v != 0 -> g = min(g, POS1(v) - 1) :: else fi :: else fi;
        c++
     :: else -> break
     od;
#ifndef GATE_LISTS_ONCE
     lists(g, i, p);
#endif
#ifdef GATE_UNDER_LOCK
     unlock_gb();
#endif
     if :: g > cleaned -> cleaned = g :: else fi;
     g = 0; c = 0; v = 0
  :: acks == NREC || runs == RECLAIMS -> break
  od;
died: skip
}

init {
  byte c;
  atomic {
    c = 0;
    do
    :: c < NC -> alive[c + 1] = true; slot_active[c] = true; c++
    :: else -> break
    od;
    alive[NC + REAPERS + 1] = true;           /* the reclaimer */
    c = 0;
    do
    :: c < REAPERS -> alive[NC + 1 + c] = true; run reaper(c); c++
    :: else -> break
    od;
    c = 0;
    do
    :: c < NC -> run consumer(c); c++
    :: else -> break
    od;
    run reclaimer()
  }
}

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
 * (max_in_flight = 1, k = 0), except with -DRUN (two).
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
 * -DRUN: the run take (issue 12 item 3). Each consumer has NK = 2 in-flight entries and takes a
 * run of 1 or 2 records (P1 < P2, a padding between them skipped, its end past a padding after it
 * or not) with ONE 16-byte cursor CAS, step by step as ConsumerState::take_run() does: take_entry
 * = k1, take_from = (P1 + 1) | TBIT, the entries tentative, the CAS to (end, taker(c, k1)); failed:
 * entries 0, take_from 0; taken: entries held, then take_from 0. It may take while it holds (a run
 * of 1 into its other entry, or a record off the give-back list), and acks or nacks its lowest
 * held entry. confirm_taker() decides the named consumer's run (take_from), not an entry:
 * tentative, pos(take_from) < next, take_entry == k1, then a CAS of take_from. The reaper's
 * release_consumer(): resolve_run() (take_from decided from next, then the taker word, and stored:
 * taken, or 0), resolve_tentative() of every entry by it (taken iff take_from is decided taken and
 * P >= P1), take_from = 0, then give back every held entry; a full list (GB = 1 here) makes
 * move_held() WouldBlock, and the slot is kept for a later pass (when the list has room again).
 * A reaper may die (RDEATH, 1) after its stores of resolve_run, resolve_tentative and take_from =
 * 0 (-DRDEATH_ANYWHERE: after every store), and a new reaper starts the release over. The gate is
 * the code's (under the give-back lock). Shared consumers only (not with EXCL).
 *
 * Mutants (each must give a counterexample):
 *   -DTAKER_NOT_IN_CAS  the cursor CAS moves `next` only; the taker word is stored after it
 *   -DNO_TENTATIVE      the in-flight entry is stored as held (no tentative bit) before the CAS
 *   -DNO_SETTLE         the give-back lock's next holder does not settle a dead holder's step
 *   -DGATE_LISTS_ONCE   the gate reads the give-back list once, before the in-flight tables
 *   -DEXCL_NO_ADMIT     (with EXCL) consumer 1 joins without releasing the dead exclusive consumer
 *   -DEXCL_TAKER_RULE   (with EXCL) the exclusive consumer's tentative entry is decided by the taker word
 *   (with RUN)
 *   -DCONFIRM_HEAD      confirm_taker() confirms the head entry k1 (the old rule), not take_from
 *   -DREAPER_CLEARS_FIRST  the reaper stores take_from = 0 before it decides the entries by it
 *   -DTAKE_FROM_CLEARED_FIRST  the owner stores take_from = 0 before its entries say held
 *   -DCONFIRM_NO_POS    confirm_taker() without the pos(take_from) < next check
 *   -DRELEASE_DROPS_KEPT  release_consumer() frees the slot though a move found the list full
 *
 * The stale give-back count that -DRDEATH_ANYWHERE found (model/README.md) is fixed in the code
 * as modelled here: settle_give_back() puts the count right before it lets go of the dead holder's
 * entry. -DSETTLE_COUNTS_LAST is the old order (a counterexample with -DRDEATH_ANYWHERE and a nack);
 * -DWAIT_SETTLES (with RUN) is the other fix considered, not the code's: a consumer with nothing to
 * take settles a give-back lock whose owner died.
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
#if defined(RUN) && defined(EXCL)
#error "RUN models shared consumers only"
#endif
#if defined(RUN) && !defined(GATE_UNDER_LOCK)
#define GATE_UNDER_LOCK   /* the gate as the code has it now */
#endif
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
#ifdef RUN
#define NK 2            /* in-flight entries per consumer (max_in_flight) */
#ifndef RDEATH
#define RDEATH 1        /* reaper deaths (each followed by a new reaper that starts over) */
#endif
#else
#define NK 1
#endif
#ifndef RDEATH
#define RDEATH 0
#endif

/* In-flight entry: position + 1 in the low 4 bits, kTentativeBit, kMovingBit. */
#define TBIT 16
#define MBIT 32
#define POS1(v) ((v) & 15)
#define NOBODY 0
#define E(c, k) ((c) * NK + (k))        /* in_flight[] index of consumer c's entry k */
#define TAKER(c, k) (E(c, k) + 1)       /* cursor_taker(generation, c, k) */
#define OWNER(t) (((t) - 1) / NK)       /* the consumer a taker word names */
#define ENTRY(t) (((t) - 1) % NK)       /* its entry */

byte gnext;                     /* GroupSlot::next */
byte gtaker;                    /* GroupSlot::next_taker */
byte in_flight[NC * NK];        /* ConsumerSlot::in_flight[k] of consumer c at E(c, k) */
bool slot_active[NC];                /* ConsumerSlot::state == kActive */
byte list[GB];                  /* GroupSlot::give_back[i].position_plus1 */
byte given_back;                /* GroupSlot::given_back */
byte gb_lock;                   /* GroupSlot::give_back_lock: owner token, 0 free */
byte step_kind, step_c, step_i; /* GroupSlot::give_back_step: kind (0 none, 1 Take, 2 Give), c, i */
byte step_pos;                  /* GroupSlot::give_back_step_position */
bool alive[NC + REAPERS + 3 + RDEATH];   /* token_alive(): consumers 1..NC, reapers, the reclaimer, restarted reapers */
byte cleaned;                   /* what the reclaimer freed: positions below it may be reused */
byte reg_lock;                  /* SegmentHeader::registry_lock (EXCL only): owner token, 0 free */
#ifdef RUN
byte take_from[NC];             /* ConsumerSlot::take_from: (P1 + 1) | TBIT undecided, P1 + 1 taken, 0 none */
byte take_entry[NC];            /* ConsumerSlot::take_entry: k1 */
byte rdeaths;                   /* reaper deaths so far */
#endif

/* ghosts */
byte holder[NPOS];              /* consumer + 1 that holds the record, 0 none */
byte acked_mask;                /* bit p: position p was acked */
byte acks, deaths, nacks;

#define min(a, b) ((a) < (b) -> (a) : (b))
#ifndef RUN
#define DIE_IN(tok) if :: deaths < MAXDEATH -> deaths++; alive[tok] = false; goto died :: true fi
#else
/* Consumers die within MAXDEATH (after any store), reapers within RDEATH (a reaper that dies is
   followed by a new one, with a new token, that starts over: see the reaper), after the stores of
   resolve_run, resolve_tentative and take_from = 0 (RDIE_IN), and with -DRDEATH_ANYWHERE after
   its give-back stores too (a death in move_held is settled by the lock's next holder, as a
   consumer's is). The reclaimer does not die here (its death under the give-back lock is checked
   without RUN). */
#define RECLAIMER_TOK (NC + REAPERS + 1)
#define RDIE_IN(tok) if \
  :: (tok > NC && tok != RECLAIMER_TOK) && rdeaths < RDEATH -> rdeaths++; alive[tok] = false; goto died \
  :: true fi
#ifdef RDEATH_ANYWHERE
#define DIE_IN(tok) if \
  :: tok <= NC && deaths < MAXDEATH -> deaths++; alive[tok] = false; goto died \
  :: (tok > NC && tok != RECLAIMER_TOK) && rdeaths < RDEATH -> rdeaths++; alive[tok] = false; goto died \
  :: true fi
#else
#define DIE_IN(tok) if :: tok <= NC && deaths < MAXDEATH -> deaths++; alive[tok] = false; goto died :: true fi
#endif
#endif

#ifdef RUN
#define UNDER_LOCK atomic {  /* loads of list[] / given_back by the lock's holder (nobody else writes them): one step */
#define END_UNDER_LOCK }
#else
#define UNDER_LOCK
#define END_UNDER_LOCK
#endif

/* The moment consumer C becomes the holder of P (its take is done, whoever finishes it). */
inline become_holder(c, p) {
  assert(holder[p] == 0);                  /* never held by two at once */
  assert((acked_mask & (1 << p)) == 0);    /* never again after its ack */
  holder[p] = c + 1
}

/* lock_owner_word(give_back_lock). */
inline lock_gb(tok) { atomic { (gb_lock == 0 || !alive[gb_lock]) -> gb_lock = tok } }
inline unlock_gb() { gb_lock = 0 }

/* push_given_back(pos) for consumer O's entry: the entry, then the count. OK false when the list is full. */
inline push(tok, o, p, ok, i) {
  ok = false;
  i = 0;
  do
  :: i < GB && list[i] != 0 -> i++
  :: i < GB && list[i] == 0 ->
     atomic {
       assert(holder[p] == o + 1);         /* given back by (or for) the consumer that held it */
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
  UNDER_LOCK
  found = false;
  i = 0;
  do
  :: i < GB -> if :: list[i] == p + 1 -> found = true :: else fi; i++
  :: else -> break
  od;
  i = 0
  END_UNDER_LOCK
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
        :: !ok -> push(tok, step_c / NK, step_pos - 1, ok, i)
        :: else -> assert(holder[step_pos - 1] == 0)   /* pushed already: given back */
        fi;
#ifndef SETTLE_COUNTS_LAST
        /* settle_give_back() puts the count right before the entry lets go (model/README.md) */
        if
        :: ok ->
           atomic { j = 0; i = 0; do :: i < GB -> if :: list[i] != 0 -> j++ :: else fi; i++ :: else -> break od; i = 0 };
           atomic { given_back = j; DIE_IN(tok) }; j = 0
        :: else
        fi;
#endif
        if
        :: ok -> atomic { in_flight[step_c] = 0; DIE_IN(tok) }
        :: else -> atomic { in_flight[step_c] = v & ~MBIT; DIE_IN(tok) }
        fi
     :: else
     fi;
     UNDER_LOCK
     i = 0; j = 0;                        /* count the list again */
     do
     :: i < GB -> if :: list[i] != 0 -> j++ :: else fi; i++
     :: else -> break
     od
     END_UNDER_LOCK;
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

/* ChannelState::move_held(c, k, expected) of entry C = E(c, k): ST 1 Ok, 0 NotHeld, 2 WouldBlock. */
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
        :: !ok -> push(tok, c / NK, POS1(v) - 1, ok, i)     /* then "move_held.after_push" */
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
          :: nx > POS1(v) - 1 && (c == 0 || tk == TAKER(c, 0)) -> in_flight[c] = v & ~TBIT
#else
          :: nx > POS1(v) - 1 && tk == TAKER(c, 0) -> in_flight[c] = v & ~TBIT
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

/* ConsumerState::take_given_back(k) into entry ENT (in_flight[] index) of consumer ME: BEST the position taken, 255 none. */
inline take_given_back(tok, me, ent, best, bi, v, ok, i, j) {
  lock_give_back(tok, v, ok, i, j);
  UNDER_LOCK
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
  od
  END_UNDER_LOCK;
  if :: given_back != j -> atomic { given_back = j; DIE_IN(tok) } :: else fi;
  if
  :: best != 255 ->
     atomic { step_pos = best + 1; DIE_IN(tok) };
     atomic { step_kind = 1; step_c = ent; step_i = bi; DIE_IN(tok) };
     atomic { in_flight[ent] = best + 1; become_holder(me, best); DIE_IN(tok) };   /* "after_hold" */
     atomic { list[bi] = 0; DIE_IN(tok) };                                     /* "after_clear" */
     atomic { given_back--; DIE_IN(tok) };
     atomic { step_kind = 0; DIE_IN(tok) }
  :: else
  fi;
  unlock_gb();
  i = 0; j = 0; bi = 0; v = 0; ok = false
}

#ifdef RUN
/* The run take (a shared consumer takes up to NK records with one cursor CAS): the decision of a
   dead consumer's run is kept in its slot's take_from. */

/* ChannelState::resolve_run(c): a run still undecided is decided by the cursor (next first, then
   the taker word), and the decision stored: taken (the bit cleared) or 0. TF: take_from after it.
   take_entry is read with take_from: its owner, dead, wrote it before take_from; nobody else does. */
inline resolve_run(tok, c, v, nx, tk, e, tf) {
  atomic { v = take_from[c]; e = take_entry[c] };
  if
  :: (v & TBIT) ->
     nx = gnext;                          /* first */
     tk = gtaker;                         /* then */
     atomic {
       if
       :: take_from[c] == v ->
          if
          :: nx > POS1(v) - 1 && tk == TAKER(c, e) -> take_from[c] = v & ~TBIT
          :: else -> take_from[c] = 0         /* (a wrong decision shows where an entry is dropped) */
          fi
       :: else -> assert(take_from[c] == (v & ~TBIT))   /* the CAS failed: a confirmer found it taken */
       fi;
       tf = take_from[c];
       RDIE_IN(tok)
     }
  :: else -> tf = v
  fi;
  v = 0; nx = 0; tk = 0; e = 0
}

/* ChannelState::resolve_tentative(c, k) of a shared consumer, after resolve_run(c): taken iff its
   run was found taken and the entry is of that run (P >= P1). TF is take_from as resolve_run()
   left it (the code loads it again: nobody changes it meanwhile, the owner being dead and a
   confirmer changing only an undecided run). */
inline resolve_tentative_run(tok, c, k, v, tf) {
  v = in_flight[E(c, k)];
  if
  :: (v & TBIT) && !(v & MBIT) ->
     atomic {
       if
       :: in_flight[E(c, k)] == v ->
          if
          :: tf != 0 && !(tf & TBIT) && POS1(v) - 1 >= POS1(tf) - 1 -> in_flight[E(c, k)] = v & ~TBIT
          :: else ->
             assert(holder[POS1(v) - 1] != c + 1);   /* it did not take it: dropping loses nothing */
             in_flight[E(c, k)] = 0
          fi
       :: else
       fi;
       RDIE_IN(tok)
     }
  :: else
  fi;
  v = 0
}

/* ChannelState::confirm_taker(next, taker) of the run take: the run in progress of the consumer
   the taker word names, from a position the cursor (NX, read before TK) is past, at the entry TK
   names, is decided taken. */
inline confirm_taker_run(tok, nx, tk, v, e) {
#ifdef CONFIRM_HEAD
  v = in_flight[tk - 1];                  /* mutant: the old rule, the head entry k1 alone */
  if
  :: (v & TBIT) && !(v & MBIT) && POS1(v) - 1 < nx ->
     atomic { if :: in_flight[tk - 1] == v -> in_flight[tk - 1] = v & ~TBIT :: else fi; DIE_IN(tok) }
  :: else
  fi;
#else
  v = take_from[OWNER(tk)];
  if
#ifdef CONFIRM_NO_POS
  :: (v & TBIT) ->                        /* mutant: without pos(v) < next */
#else
  :: (v & TBIT) && POS1(v) - 1 < nx ->
#endif
     e = take_entry[OWNER(tk)];
     if
     :: e == ENTRY(tk) ->
        atomic { if :: take_from[OWNER(tk)] == v -> take_from[OWNER(tk)] = v & ~TBIT :: else fi; DIE_IN(tok) }
     :: else
     fi
  :: else
  fi;
#endif
  v = 0; e = 0
}
#endif

#ifdef EXCL
#define REG_LOCK(tok) atomic { (reg_lock == 0 || !alive[reg_lock]) -> reg_lock = tok }
#define REG_UNLOCK reg_lock = 0
#else
#define REG_LOCK(tok) skip
#define REG_UNLOCK skip
#endif

#ifndef RUN
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
     take_given_back(tok, c, c, best, bi, v, ok, i, j);
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
        if :: tk != TAKER(c, 0) -> confirm_taker(tok, pos, tk, v) :: else fi;
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
          if :: ok -> gnext = pos + 1; gtaker = TAKER(c, 0) :: else fi;
#endif
          if :: ok -> become_holder(c, pos) :: else fi;
          DIE_IN(tok)                                                 /* "poll.after_cursor_cas" */
        };
#ifdef TAKER_NOT_IN_CAS
        if :: ok -> atomic { gtaker = TAKER(c, 0); DIE_IN(tok) } :: else fi;
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
#else /* RUN */

/* A shared consumer with NK = 2 entries that takes runs of 1 or 2 records from the cursor
   (ConsumerState::read_run / take_run), one record from the give-back list into a free entry, and
   acks or nacks what it holds (its lowest held entry first), in any order the interleaving
   allows (it may take while it holds). */
#define FREE(c, k) (in_flight[E(c, k)] == 0)   /* its own held[k]: only it writes its entries while it lives */
proctype consumer(byte c) {
  byte tok = c + 1;
  byte pos, p2, n, k1, end, tk, v, best, bi, st, i, j, e;
  bool ok;
  do
  :: acks == NREC -> break
  :: atomic { given_back != 0 && (FREE(c, 0) || FREE(c, 1)) -> k1 = (FREE(c, 0) -> 0 : 1) } ->
     take_given_back(tok, c, E(c, k1), best, bi, v, ok, i, j);   /* redeliveries first */
     best = 0; k1 = 0
  :: atomic { given_back == 0 && gnext < NPOS && (FREE(c, 0) || FREE(c, 1)) -> pos = gnext } ->   /* the cursor */
     if
     :: pos == PADPOS ->                  /* Padding: CAS of `next` alone */
        atomic { if :: gnext == pos -> gnext = pos + 1 :: else fi; DIE_IN(tok) }
     :: else ->
        tk = gtaker;                       /* after the cursor */
        if :: tk != NOBODY && OWNER(tk) != c -> confirm_taker_run(tok, pos, tk, v, e) :: else fi;
        atomic {
          /* read_run(): P1 = pos, P2 the next record (a padding between skipped), a run of 2 if
             there are 2 free entries, or of 1; its end past a padding after it if read_run read on */
          k1 = (FREE(c, 0) -> 0 : 1); n = 1;
          p2 = pos + 1; if :: p2 == PADPOS && PADPOS < NPOS -> p2++ :: else fi;
          if :: p2 < NPOS && FREE(c, 0) && FREE(c, 1) -> if :: n = 2 :: true fi :: else fi;
          end = (n == 2 -> p2 + 1 : pos + 1);
          if :: end == PADPOS && PADPOS < NPOS -> if :: end++ :: true fi :: else fi;
          take_entry[c] = k1; DIE_IN(tok)                              /* 3. the run first */
        };
        atomic { take_from[c] = (pos + 1) | TBIT; DIE_IN(tok) };
        atomic { in_flight[E(c, k1)] = (pos + 1) | TBIT; DIE_IN(tok) };   /* 4. its entries, tentative */
        if :: n == 2 -> atomic { in_flight[E(c, 1)] = (p2 + 1) | TBIT; DIE_IN(tok) } :: else fi;  /* "poll.after_in_flight_store" */
        atomic {                                                        /* 5. the 16-byte CAS */
          ok = (gnext == pos && gtaker == tk);
          if
          :: ok -> gnext = end; gtaker = TAKER(c, k1); become_holder(c, pos);
             if :: n == 2 -> become_holder(c, p2) :: else fi
          :: else
          fi;
          DIE_IN(tok)                                                   /* "poll.after_cursor_cas" */
        };
        if
        :: !ok ->                                                       /* 6a. another took it */
           atomic { in_flight[E(c, k1)] = 0; DIE_IN(tok) };
           if :: n == 2 -> atomic { in_flight[E(c, 1)] = 0; DIE_IN(tok) } :: else fi;
           atomic { take_from[c] = 0; DIE_IN(tok) }
        :: else ->                                                      /* 6b. ours: held, then the run done */
#ifdef TAKE_FROM_CLEARED_FIRST
           atomic { take_from[c] = 0; DIE_IN(tok) };                    /* mutant: before the entries say it */
#endif
           atomic { in_flight[E(c, k1)] = pos + 1; DIE_IN(tok) };       /* "poll.run.after_first_held" */
           if :: n == 2 -> atomic { in_flight[E(c, 1)] = p2 + 1; DIE_IN(tok) } :: else fi;
#ifndef TAKE_FROM_CLEARED_FIRST
           atomic { take_from[c] = 0; DIE_IN(tok) }
#endif
        fi
     fi;
     pos = 0; p2 = 0; n = 0; k1 = 0; end = 0; tk = 0; ok = false
  :: atomic { !FREE(c, 0) || !FREE(c, 1) -> k1 = (FREE(c, 0) -> 1 : 0); pos = POS1(in_flight[E(c, k1)]) - 1 } ->
     if                                   /* hold() read it; now its ack or nack */
     :: atomic { nacks < MAXNACK -> nacks++; assert(holder[pos] == c + 1 && pos >= cleaned) };
        move_held(tok, E(c, k1), pos + 1, st, v, ok, i, j);
        assert(st == 1 || st == 2)        /* 2: WouldBlock, the list is full: still held (acked later) */
     :: atomic {
          assert(holder[pos] == c + 1 && pos >= cleaned && (acked_mask & (1 << pos)) == 0);
          in_flight[E(c, k1)] = 0; holder[pos] = 0; acked_mask = acked_mask | (1 << pos); acks++;
          DIE_IN(tok)
        }
     fi;
     pos = 0; k1 = 0; st = 0
#ifndef WAIT_SETTLES
  :: atomic { FREE(c, 0) && FREE(c, 1) && given_back == 0 && gnext >= NPOS && acks < NREC } ->   /* nothing to take: wait */
     (given_back != 0 || acks == NREC)
#else
  /* a proposed fix (see model/README.md): a consumer with nothing to take settles a give-back lock
     whose owner died (its step may have left the count at 0 with a record on the list) */
  :: atomic { FREE(c, 0) && FREE(c, 1) && given_back == 0 && gnext >= NPOS && acks < NREC && gb_lock != 0 && !alive[gb_lock] } ->
     lock_give_back(tok, v, ok, i, j); unlock_gb()
  :: atomic { FREE(c, 0) && FREE(c, 1) && given_back == 0 && gnext >= NPOS && acks < NREC } ->   /* nothing to take: wait */
     (given_back != 0 || acks == NREC || (gb_lock != 0 && !alive[gb_lock]))
#endif
  od;
died:                                     /* what a dead consumer had in its registers is gone */
  atomic { pos = 0; p2 = 0; n = 0; k1 = 0; end = 0; tk = 0; v = 0; best = 0; bi = 0; st = 0; i = 0; j = 0; e = 0; ok = false }
}
#endif /* RUN */

/* reap_dead_consumers() -> release_consumer(c) under the registry lock, by any process. */
#ifndef RUN
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
#else
proctype reaper(byte r) {
  byte tok = NC + 1 + r;
  byte c, k, v, nx, tk, e, tf, st, i, j;
  bool ok, kept;
end_reap:
  do
  :: acks == NREC -> break
  :: else ->
     c = 0;
     do
     :: c < NC ->
        if
        :: slot_active[c] && !alive[c + 1] ->     /* release_consumer(c) */
           resolve_run(tok, c, v, nx, tk, e, tf);
#ifdef REAPER_CLEARS_FIRST
           if :: tf != 0 -> atomic { take_from[c] = 0; RDIE_IN(tok) } :: else fi;   /* mutant: before the entries */
#endif
           k = 0;
           do                                     /* every entry settled before any give-back */
           :: k < NK -> resolve_tentative_run(tok, c, k, v, tf); k++
           :: else -> break
           od;
#ifndef REAPER_CLEARS_FIRST
           if :: tf != 0 -> atomic { take_from[c] = 0; RDIE_IN(tok) } :: else fi;   /* every entry decided */
#endif
           tf = 0; k = 0;
           do                                     /* then give back what it held */
           :: k < NK && in_flight[E(c, k)] == 0 -> k++
           :: k < NK && in_flight[E(c, k)] != 0 ->
              move_held(tok, E(c, k), 0, st, v, ok, i, j);
              if
#ifndef RELEASE_DROPS_KEPT
              :: st == 2 -> kept = true; break    /* WouldBlock: return false, the slot stays */
#else
              :: st == 2 -> k++                   /* mutant: the slot is freed though its list move failed */
#endif
              :: else ->                          /* Ok, or NotHeld: a dead reaper's move settled by lock_give_back */
                 assert(in_flight[E(c, k)] == 0); /* (else release_consumer() returns false, with nothing to wait for) */
                 k++
              fi
           :: k == NK -> break
           od;
           if :: !kept -> slot_active[c] = false :: else fi;
           k = 0; st = 0
        :: else
        fi;
        c++
     :: else -> break
     od;
     c = 0;
     /* the next pass: a consumer died, or (a slot kept) the list has room again */
     (acks == NREC || (((slot_active[0] && !alive[1])
#if NC > 1
      || (slot_active[1] && !alive[2])
#endif
#if NC > 2
      || (slot_active[2] && !alive[3])
#endif
     ) && (!kept || given_back < GB)));
     kept = false
  od;
died:                                       /* another reaper (a new token) starts over */
  atomic {
    tok = NC + REAPERS + 1 + rdeaths; alive[tok] = true;
    c = 0; k = 0; v = 0; nx = 0; tk = 0; e = 0; tf = 0; st = 0; i = 0; j = 0; ok = false; kept = false
  };
  goto end_reap
}
#endif

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

#ifndef RUN
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
     :: c < NC * NK ->                       /* every entry of every active slot */
        if :: slot_active[c / NK] -> v = in_flight[c]; if :: v != 0 -> g = min(g, POS1(v) - 1) :: else fi :: else fi;
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
#else
/* RUN: gate() as the code has it now (shm/channel.cpp): the give-back lock, then the cursor, then
   the list and every entry; then reclaim frees below the gate. Three steps: under the lock no
   record moves between the list and an entry, and what else changes an entry meanwhile (a take's
   tentative or held store at or past the cursor read, a clear) cannot hide a held record from a
   scan at one instant that it would show to a scan entry by entry; the cursor is read in a step of
   its own, before. `cleaned` moves at the unlock (it is only asserted against: earlier is harder). */
proctype reclaimer() {
  byte tok = NC + REAPERS + 1;
  byte g, i, c, v, p, j, runs;
  bool ok;
end_reclaim:
  do
  :: acks < NREC && runs < RECLAIMS -> runs++;
     lock_give_back(tok, v, ok, i, j);
     g = gnext;
     atomic {
       lists(g, i, p);
       c = 0;
       do
       :: c < NC * NK ->
          if :: slot_active[c / NK] -> v = in_flight[c]; if :: v != 0 -> g = min(g, POS1(v) - 1) :: else fi :: else fi;
          c++
       :: else -> break
       od;
       unlock_gb();
       if :: g > cleaned -> cleaned = g :: else fi;
       g = 0; c = 0; v = 0
     }
  :: acks == NREC || runs == RECLAIMS -> break
  od;
died: skip
}
#endif

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

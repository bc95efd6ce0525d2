/*
 * gate.pml: an exhaustive model of "the cheap gate" (issue 12 item 2): the reclaimer bounds what
 * it frees by a few words instead of scanning every in-flight table and give-back list under the
 * give-back locks (the exact gate of ChannelState::gate(), shm/channel.cpp, checked by
 * consumer.pml):
 *   ConsumerSlot::low_held  <= every entry (held, tentative, moving) of the slot's table; ~0 when
 *                           empty. Written only by the slot's owner.
 *   GroupSlot::list_low     <= every position on the group's give-back list; ~0 empty. Written
 *                           only under the give-back lock.
 *   GroupSlot::moves        a sequence count, odd while the lock holder moves a message between
 *                           the list and a table; written only under the give-back lock.
 * The cheap gate: g = min(tail, durable); g = min(g, next); s = moves (odd: exact gate);
 * g = min(g, list_low); g = min(g, low_held) of each active slot; moves != s: exact gate; else g.
 *
 * Checked with SPIN (Debian package `spin`), like consumer.pml (model/README.md): every step is
 * one atomic access of the code (sequential consistency); a process may die (SIGKILL) after any
 * of its stores. One group; positions 0 .. NPOS-1 are committed records (no padding: the cursor's
 * padding CAS changes no word the cheap gate reads); NC = 2 consumers, consumer 0 with 2
 * in-flight entries, consumer 1 with NK1 (1 or 2), taking runs of 1 or 2 records from the cursor
 * (-DNORUN: 1), one record from the list, acking (a CAS: a visibility timeout may move the entry
 * away; a lost CAS leaves the entry kAway in the consumer's own table) or nacking (move_held); a
 * give-back list of GB entries that fills (move_held's WouldBlock: the entry restored as held); a
 * mover that is both the reaper of a dead consumer (release_consumer) and the visibility-timeout
 * mover of a live one's held entry (reap_dead_consumers: move_held); the cheap gate, one load a
 * step, any number of times.
 *
 * The writers, in the order of /tmp/cheap_gate.md (each store one step, a death after each):
 *   cursor take: low_held = P1 if it holds nothing (all entries free; kAway is not free), else
 *     nondeterministically (every 64th take) low_held = min(P1, the positions of its own table);
 *     then the tentative entries, the cursor CAS, the entries held (or cleared: CAS lost);
 *   ack: the entry's CAS to 0, then low_held = ~0 if it now holds nothing;
 *   take from the list (under the lock): step record, moves++, low_held = min(low_held, P),
 *     entry = P, list entry cleared, list_low = min of the list, moves++, step 0;
 *   move_held (nack, visibility timeout, reaper; under the lock): step record, moves++,
 *     list_low = min(list_low, P), moving bit (a CAS: the owner's ack loses from here on), pushed,
 *     entry cleared (list full: restored as held), moves++, step 0;
 *   settle_give_back (the next lock holder after a dead one): finish or undo its step, list_low =
 *     min of the list, moves++ if odd, step 0.
 *
 * Abstractions and merged steps:
 *   - the cursor is `next` alone (the taker word decides only a dead consumer's tentative entries,
 *     which the reaper here decides by their outcome: taken iff the consumer's CAS took it, the
 *     ghost holder; that resolve_run / resolve_tentative compute exactly this is checked by
 *     consumer.pml -DRUN);
 *   - GroupSlot::given_back (the count) is not modelled: no cheap-gate word or claim depends on it;
 *     consumers look at the list itself to decide to take from it (a hint: only its lock holder
 *     acts on the list);
 *   - `moves` is a 64-bit count that never wraps, so "moves != s" is "a moves++ ran since the
 *     gate's first read of moves": the model keeps its parity (moves_odd) and a ghost flag (moved)
 *     that the gate clears at that read and every moves++ sets while the gate is in its window;
 *   - the exact gate (taken when the cheap one gives up) is not modelled here (consumer.pml);
 *   - tail and durable position are NPOS (everything committed and durable);
 *   - the consumers' process-local tables (held[k]: position + 1, 0 free, kAway) are lt[]: only
 *     the owner writes its own (merged into its steps); gone when it dies; the mover reads it only
 *     to know that a kAway entry still in the table will time out again (its owner never acks it);
 *   - lock holders' loads of the list and of the step record (only lock holders write them) are
 *     merged with the neighbouring step; a lock's CAS is merged with the step before it (a choice
 *     or a load whose value the lock does not change: where the lock is taken, the process waits
 *     there, as it would a step later); the step record's store is merged with the lock holder's
 *     load of the entry, and step = 0 with the unlock (both read only by a later lock holder:
 *     dying between them is dying holding the lock with nothing to settle).
 *   - -DGATE_MERGE_NEXT: the gate's loads of next and moves in one step (next only grows: reading
 *     it later gives a g as large or larger, so this covers the split reads).
 *
 * Invariants:
 *   - the claim, at the gate's last read when it returns g: the cursor is >= g; no record below g
 *     is held by a consumer (the ghost holder: taken by a cursor CAS or off the list and not yet
 *     acked or given back, whether its entry is tentative, held, moving, a dead consumer's or one
 *     its owner lost track of), none is on the give-back list, and every in-flight entry below g
 *     is a tentative entry of a take that failed or will fail (the cursor is past it, its consumer
 *     did not take it: its CAS from P < g fails, a reaper drops it). -DSTRICT: no in-flight entry
 *     at all below g (the claim taken literally);
 *   - -DCLEANED: reclaim frees below g (`cleaned`, the highest g): a record below it is never
 *     taken again, never on the list, and a consumer that acks a record held it above `cleaned`
 *     (the claim implies this; the ghost costs states);
 *   - no record held by two at once, none delivered again after its ack; a record given back only
 *     for its holder; with -DRECLAIMS=0 (no gate) no process blocked forever (invalid end states:
 *     a lost record leaves a consumer waiting);
 *   - moves is even and the step record 0 whenever the lock is free, and right after a holder
 *     took it and settled a dead holder's step (the cheap gate gives up only until then); the
 *     gate takes no lock and waits for nothing (it never blocks anyone).
 *
 * Mutants (each -D):
 *   -DLOW_FIRST           (a) the gate reads the low_held words before the list_low word
 *   -DNO_SEQLOCK          (b) the gate does not read moves
 *   -DLOW_AFTER_TENTATIVE (c) a cursor take stores low_held after its tentative entries (before its CAS)
 *   -DLIST_LOW_FIRST      (d) a take from the list raises list_low before it stores low_held
 *   -DACK_ANY             (e) an ack sets low_held = ~0 even while another entry is held
 *   -DACK_LOW_FIRST       (f) an ack that empties the table sets low_held = ~0 before its CAS
 *   -DRAISE_SHARED        the code: the raise reads the shared in-flight table (see gate.sh)
 *   -DRAISE_FIX           another fix: no every-64th raise while an entry is kAway
 */

#define NC 2
#define NK 2
#ifndef NK1
#define NK1 2           /* consumer 1's entries (consumer 0 has 2) */
#endif
#ifndef NPOS
#define NPOS 3
#endif
#ifndef GB
#define GB 1
#endif
#ifndef MAXDEATH
#define MAXDEATH 1
#endif
#ifndef MAXNACK
#define MAXNACK 1
#endif
#ifndef MAXMOVE
#define MAXMOVE 1       /* visibility-timeout moves of a live consumer's entry (plus those of kAway entries) */
#endif
#ifndef RECLAIMS
#define RECLAIMS 255    /* cheap gate runs: 255 any number, 0 none (the liveness check) */
#endif
#define NREC NPOS

#define TBIT 8
#define MBIT 16
#define POS1(v) ((v) & 7)
#define NONE 255        /* ~0 */
#define AWAY 255        /* lt[]: ConsumerState::kAway */
#define E(c, k) ((c) * NK + (k))
#define ISPOS(x) ((x) != 0 && (x) != AWAY)
#define USABLE(c, k) ((c) == 0 || (k) < NK1)
#define ALLFREE(c) (lt[E(c, 0)] == 0 && lt[E(c, 1)] == 0)
#define ANYFREE(c) (lt[E(c, 0)] == 0 || (USABLE(c, 1) && lt[E(c, 1)] == 0))
#define min(a, b) ((a) < (b) -> (a) : (b))
#if GB == 1
#define LISTED (list[0] != 0)
#define LISTFULL (list[0] != 0)
#else
#define LISTED (list[0] != 0 || list[1] != 0)
#define LISTFULL (list[0] != 0 && list[1] != 0)
#endif

byte gnext;                     /* GroupSlot::next */
byte in_flight[NC * NK];        /* ConsumerSlot::in_flight[k]: position + 1 | TBIT | MBIT */
bool slot_active[NC];           /* ConsumerSlot::state == kActive */
byte low_held[NC];              /* ConsumerSlot::low_held */
byte list[GB];                  /* GroupSlot::give_back[i].position_plus1 */
byte list_low;                  /* GroupSlot::list_low */
bool moves_odd;                 /* GroupSlot::moves & 1 */
byte gb_lock;                   /* GroupSlot::give_back_lock: owner token, 0 free */
byte step_kind, step_e, step_i; /* give_back_step: kind (0, 1 Take, 2 Give), entry E(c, k), list index */
byte step_pos;                  /* give_back_step_position */
bool alive[NC + 3];             /* consumers 1..NC, the mover NC+1, its successor NC+2 */
byte lt[NC * NK];               /* the consumers' own held[k] (process-local) */

/* ghosts */
bool moved;                     /* a moves++ ran since the gate's first read of moves */
bool gwin;                      /* the gate is between its two reads of moves */
byte cleaned;                   /* -DCLEANED: what reclaim freed */
byte holder[NPOS];              /* consumer + 1 that took the record and holds it, 0 none */
byte acked_mask, acks, deaths, nacks, vmoves;

#define DIE_IN(tok) if :: deaths < MAXDEATH -> deaths++; alive[tok] = false; goto died :: true fi
#define BUMP(tok) atomic { moves_odd = !moves_odd; moved = gwin; DIE_IN(tok) }   /* moves++ */
/* lock_owner_word(give_back_lock) (a dead holder's is taken); OK: a step to settle. */
#define LOCK(tok, ok) (gb_lock == 0 || !alive[gb_lock]) -> gb_lock = tok; ok = (step_kind != 0); \
                      assert(ok || !moves_odd)          /* an odd count always comes with a step */
#define UNLOCK assert(!moves_odd && step_kind == 0); gb_lock = 0

inline become_holder(c, p) {
  assert(holder[p] == 0);                  /* never held by two at once */
  assert((acked_mask & (1 << p)) == 0);    /* never again after its ack */
  assert(p >= cleaned);                    /* never below what reclaim freed */
  holder[p] = c + 1
}

inline list_min(lo, i) {                   /* the lock holder's loads of the list */
  lo = NONE; i = 0;
  do
  :: i < GB -> if :: list[i] != 0 -> lo = min(lo, list[i] - 1) :: else fi; i++
  :: else -> break
  od;
  i = 0
}

/* push_given_back(pos) for consumer O: one store. OK false when the list is full. */
inline push(tok, o, p, ok, i) {
  atomic {
    ok = false; i = 0;
    do
    :: i < GB && list[i] != 0 -> i++
    :: i < GB && list[i] == 0 -> ok = true; break
    :: i == GB -> break
    od;
    if
    :: ok ->
       assert(holder[p] == o + 1);          /* given back by (or for) the consumer that holds it */
       assert(p >= cleaned);
       holder[p] = 0;
       list[i] = p + 1; i = 0; DIE_IN(tok)
    :: else -> i = 0
    fi
  }
}

inline on_list(p, found, i) {
  found = false; i = 0;
  do
  :: i < GB -> if :: list[i] == p + 1 -> found = true :: else fi; i++
  :: else -> break
  od;
  i = 0
}

/* settle_give_back(), after LOCK found a step: a dead holder's. Finish or undo it, then list_low,
   then moves even, then the step cleared. */
inline settle(tok, v, ok, i, j) {
  atomic {
    v = in_flight[step_e];
    if
    :: step_kind == 2 && (v & MBIT) && (v & ~MBIT) == step_pos -> on_list(step_pos - 1, ok, i)
    :: else -> ok = true
    fi
  };
  if
  :: step_kind == 1 ->                     /* Take: held first, then off the list */
     if
     :: v == step_pos && list[step_i] == step_pos -> atomic { list[step_i] = 0; DIE_IN(tok) }
     :: else
     fi
  :: step_kind == 2 && (v & MBIT) && (v & ~MBIT) == step_pos ->   /* Give: finish it */
     if
     :: !ok -> push(tok, step_e / NK, step_pos - 1, ok, i)
     :: else -> assert(holder[step_pos - 1] == 0)
     fi;
     if
     :: ok -> atomic { in_flight[step_e] = 0; DIE_IN(tok) }
     :: else -> atomic { in_flight[step_e] = v & ~MBIT; DIE_IN(tok) }   /* list full: held */
     fi
  :: else
  fi;
  atomic { list_min(j, i); list_low = j; j = 0; v = 0; DIE_IN(tok) };
  if :: moves_odd -> BUMP(tok) :: else fi;
  atomic { step_kind = 0; ok = false; assert(!moves_odd); DIE_IN(tok) }
}

/* move_held(E, expected) after LOCK and settle: ST 1 Ok, 0 NotHeld (unlocked), 2 WouldBlock. */
inline move_locked(tok, e, expected, st, v, ok, i) {
  atomic {
    v = in_flight[e]; st = 0;
    if
    :: v != 0 && !(v & TBIT) && (expected == 0 || (v & ~MBIT) == expected) ->
       step_pos = POS1(v); step_kind = 2; step_e = e; step_i = 0; ok = true;   /* the step record */
       DIE_IN(tok)
    :: else -> UNLOCK; v = 0; ok = false                                       /* NotHeld */
    fi
  };
  if
  :: ok ->
     BUMP(tok);                                                   /* moves odd */
     atomic { list_low = min(list_low, POS1(v) - 1); DIE_IN(tok) };
     if
     :: (v & MBIT) -> ok = true
     :: else ->
        atomic {                                                  /* the owner's ack CAS loses from here on */
          if
          :: in_flight[e] == v -> in_flight[e] = v | MBIT; ok = true
          :: else -> ok = false
          fi;
          DIE_IN(tok)
        }
     fi;
     if
     :: ok ->
        atomic {
          on_list(POS1(v) - 1, ok, i);
          if :: ok -> assert(holder[POS1(v) - 1] == 0) :: else fi
        };
        if :: !ok -> push(tok, e / NK, POS1(v) - 1, ok, i) :: else fi;
        if
        :: ok -> atomic { in_flight[e] = 0; st = 1; DIE_IN(tok) }
        :: else -> atomic { in_flight[e] = v & ~MBIT; st = 2; DIE_IN(tok) }   /* list full: held */
        fi
     :: else
     fi;
     BUMP(tok);                                                   /* moves even */
     atomic { step_kind = 0; UNLOCK; v = 0; ok = false }
  :: else
  fi
}

/* A cursor take's low_held store: P1 when it holds nothing; else, when RAISE (every 64th take),
   min(P1, the positions of its own table: a kAway entry has none). */
inline set_low(tok, c, pos, nothing, raise, low) {
  if
  :: nothing -> atomic { low_held[c] = pos; DIE_IN(tok) }
  :: raise ->
#ifdef RAISE_SHARED
     /* what the code does (ConsumerState::lower_for_take): the min over the shared table, each
        entry one load (held, moving or restored by a move that found the list full) */
     low = pos;
     atomic { if :: in_flight[E(c, 0)] != 0 -> low = min(low, POS1(in_flight[E(c, 0)]) - 1) :: else fi };
     atomic { if :: in_flight[E(c, 1)] != 0 -> low = min(low, POS1(in_flight[E(c, 1)]) - 1) :: else fi };
     atomic { low_held[c] = low; low = 0; DIE_IN(tok) }
#else
     atomic {
       low = pos;
       if :: ISPOS(lt[E(c, 0)]) -> low = min(low, lt[E(c, 0)] - 1) :: else fi;
       if :: ISPOS(lt[E(c, 1)]) -> low = min(low, lt[E(c, 1)] - 1) :: else fi;
       low_held[c] = low; low = 0; DIE_IN(tok)
     }
#endif
  :: else
  fi
}

proctype consumer(byte c) {
  byte tok = c + 1;
  byte pos, n, k1, k2, k, p, st, best, bi, v, i, j, low;
  bool ok, nothing, raise, nk;
  do
  :: acks == NREC -> break
  :: atomic { ANYFREE(c) && gnext < NPOS -> pos = gnext;    /* the cursor: load next; read_run() */
       k1 = (lt[E(c, 0)] == 0 -> 0 : 1); k2 = 1 - k1; n = 1;
#ifndef NORUN
       if :: pos + 1 < NPOS && USABLE(c, k2) && lt[E(c, k2)] == 0 -> if :: n = 2 :: true fi :: else fi;
#endif
       nothing = ALLFREE(c);
       if :: !nothing -> if :: raise = true :: true fi :: else fi   /* every 64th take: the raise */
#ifdef RAISE_FIX
       ; if :: lt[E(c, 0)] == AWAY || lt[E(c, 1)] == AWAY -> raise = false :: else fi
#endif
     } ->
#ifndef LOW_AFTER_TENTATIVE
     set_low(tok, c, pos, nothing, raise, low);
#endif
     atomic { in_flight[E(c, k1)] = (pos + 1) | TBIT; DIE_IN(tok) };
     if :: n == 2 -> atomic { in_flight[E(c, k2)] = (pos + 2) | TBIT; DIE_IN(tok) } :: else fi;
#ifdef LOW_AFTER_TENTATIVE
     set_low(tok, c, pos, nothing, raise, low);
#endif
     atomic {                                                   /* the cursor CAS */
       ok = (gnext == pos);
       if
       :: ok -> gnext = pos + n; become_holder(c, pos); if :: n == 2 -> become_holder(c, pos + 1) :: else fi
       :: else
       fi;
       DIE_IN(tok)
     };
     if
     :: !ok && n == 1 -> atomic { in_flight[E(c, k1)] = 0; pos = 0; n = 0; k1 = 0; k2 = 0; nothing = false; raise = false; DIE_IN(tok) }
     :: !ok && n == 2 ->
        atomic { in_flight[E(c, k1)] = 0; DIE_IN(tok) };
        atomic { in_flight[E(c, k2)] = 0; pos = 0; n = 0; k1 = 0; k2 = 0; nothing = false; raise = false; DIE_IN(tok) }
     :: ok && n == 1 ->
        atomic { in_flight[E(c, k1)] = pos + 1; lt[E(c, k1)] = pos + 1; pos = 0; n = 0; k1 = 0; k2 = 0; ok = false; nothing = false; raise = false; DIE_IN(tok) }
     :: ok && n == 2 ->
        atomic { in_flight[E(c, k1)] = pos + 1; lt[E(c, k1)] = pos + 1; DIE_IN(tok) };
        atomic { in_flight[E(c, k2)] = pos + 2; lt[E(c, k2)] = pos + 2; pos = 0; n = 0; k1 = 0; k2 = 0; ok = false; nothing = false; raise = false; DIE_IN(tok) }
     fi
  :: atomic { LISTED && ANYFREE(c) -> k = (lt[E(c, 0)] == 0 -> 0 : 1); LOCK(tok, ok) } ->
     /* take_given_back(k) (given_back != 0) */
     if :: ok -> settle(tok, v, ok, i, j) :: else fi;
     atomic {                                                   /* the lowest listed, its step record */
       best = NONE; bi = 0; i = 0;
       do
       :: i < GB ->
          if
          :: list[i] != 0 ->
             assert(list[i] - 1 >= cleaned);                     /* a listed record is never reclaimed */
             if :: list[i] - 1 < best -> best = list[i] - 1; bi = i :: else fi
          :: else
          fi;
          i++
       :: else -> break
       od;
       i = 0;
       if
       :: best != NONE -> step_pos = best + 1; step_kind = 1; step_e = E(c, k); step_i = bi; DIE_IN(tok)
       :: else -> UNLOCK; k = 0
       fi
     };
     if
     :: best != NONE ->
        BUMP(tok);                                              /* moves odd */
#ifdef LIST_LOW_FIRST
        atomic {                                                /* mutant (d): the min of what will stay, first */
          j = NONE; i = 0;
          do
          :: i < GB -> if :: i != bi && list[i] != 0 -> j = min(j, list[i] - 1) :: else fi; i++
          :: else -> break
          od;
          i = 0; list_low = j; j = 0; DIE_IN(tok)
        };
#endif
        atomic { low_held[c] = min(low_held[c], best); DIE_IN(tok) };
        atomic { in_flight[E(c, k)] = best + 1; become_holder(c, best); DIE_IN(tok) };   /* "after_hold" */
        atomic { list[bi] = 0; DIE_IN(tok) };                                         /* "after_clear" */
#ifndef LIST_LOW_FIRST
        atomic { list_min(j, i); list_low = j; j = 0; DIE_IN(tok) };
#endif
        BUMP(tok);                                              /* moves even */
        atomic { step_kind = 0; UNLOCK; lt[E(c, k)] = best + 1; best = 0; bi = 0; k = 0 }
     :: else -> best = 0
     fi
  :: atomic { ISPOS(lt[E(c, 0)]) || ISPOS(lt[E(c, 1)]) ->     /* a held message: ack or nack */
       if :: ISPOS(lt[E(c, 0)]) -> k = 0 :: ISPOS(lt[E(c, 1)]) -> k = 1 fi;
       p = lt[E(c, k)] - 1;
       if :: nacks < MAXNACK -> nacks++; nk = true :: true fi;
       if :: nk -> LOCK(tok, ok) :: else fi                     /* nack: move_held(k, p + 1) */
     } ->
     if
     :: nk ->
        if :: ok -> settle(tok, v, ok, i, j) :: else fi;
        move_locked(tok, E(c, k), p + 1, st, v, ok, i);
        atomic {
          if
          :: st == 1 -> lt[E(c, k)] = 0
          :: st == 2 -> skip                                    /* WouldBlock: still held */
          :: st == 0 -> lt[E(c, k)] = AWAY                      /* moved away meanwhile */
          fi;
          k = 0; p = 0; st = 0; nk = false
        }
     :: else ->
#ifdef ACK_LOW_FIRST
        if :: lt[E(c, 1 - k)] == 0 -> atomic { low_held[c] = NONE; DIE_IN(tok) } :: else fi;
#endif
        atomic {                                                /* ack_entry: CAS p + 1 -> 0 */
          ok = (in_flight[E(c, k)] == p + 1);
          if
          :: ok ->
             assert(holder[p] == c + 1 && p >= cleaned && (acked_mask & (1 << p)) == 0);
             in_flight[E(c, k)] = 0; holder[p] = 0; acked_mask = acked_mask | (1 << p); acks++;
             lt[E(c, k)] = 0
          :: else -> lt[E(c, k)] = AWAY
          fi;
#ifdef ACK_ANY
          ok = ok;
#elif defined(ACK_LOW_FIRST)
          ok = false;
#else
          ok = ok && ALLFREE(c);
#endif
          k = 0; p = 0;
          DIE_IN(tok)
        };
        if :: ok -> atomic { low_held[c] = NONE; ok = false; DIE_IN(tok) } :: else fi
     fi
  /* reclaim_away(), at a take with no free entry: an entry taken from us is free once it reads 0 */
  :: atomic { !ANYFREE(c) && lt[E(c, 0)] == AWAY && in_flight[E(c, 0)] == 0 -> lt[E(c, 0)] = 0 }
  :: atomic { !ANYFREE(c) && lt[E(c, 1)] == AWAY && in_flight[E(c, 1)] == 0 -> lt[E(c, 1)] = 0 }
  od;
died:
  atomic {
    lt[E(c, 0)] = 0; lt[E(c, 1)] = 0;
    pos = 0; n = 0; k1 = 0; k2 = 0; k = 0; p = 0; st = 0; best = 0; bi = 0; v = 0; i = 0; j = 0; low = 0;
    ok = false; nothing = false; raise = false; nk = false
  }
}

/* The mover: reap_dead_consumers(): release_consumer() of a dead consumer (its tentative entries
   decided, then each entry given back; a full list keeps the slot: retried once it has room),
   and the visibility timeout of a live one's held entry (MAXMOVE times, and again whenever it is
   an entry its owner lost track of: kAway, never acked, it times out again). It may die: a
   successor (a new token) starts over. */
#ifdef RELEASE_WAITS
#define RELEASE_OK !LISTFULL     /* a reaper's pass while the list is full only finds it full */
#else
#define RELEASE_OK true
#endif
#ifdef NOREPEAT
#define REPEAT(x) false
#else
#define REPEAT(x) (lt[x] == AWAY)
#endif
#define VIS(x) :: atomic { USABLE(x / NK, x % NK) && alive[x / NK + 1] && slot_active[x / NK] && in_flight[x] != 0 && \
                           !(in_flight[x] & TBIT) && (vmoves < MAXMOVE || REPEAT(x)) -> \
                           e = x; x1 = in_flight[x] & ~MBIT; if :: lt[x] != AWAY -> vmoves++ :: else fi; \
                           LOCK(tok, ok) } -> \
                  if :: ok -> settle(tok, v, ok, i, j) :: else fi; \
                  move_locked(tok, e, x1, st, v, ok, i); \
                  atomic { e = 0; x1 = 0; st = 0 }

proctype mover() {
  byte tok = NC + 1;
  byte c, k, e, x1, v, st, i, j;
  bool ok, kept;
end_mover:
  do
  :: acks == NREC -> break
  :: atomic { slot_active[0] && !alive[1] && RELEASE_OK -> c = 0 } -> goto release
  :: atomic { slot_active[1] && !alive[2] && RELEASE_OK -> c = 1 } -> goto release
  VIS(0)
  VIS(1)
  VIS(2)
  VIS(3)
  od;
  goto done;
release:
  k = 0;
  do                                         /* resolve_run / resolve_tentative (by their outcome) */
  :: k < NK ->
     atomic {
       v = in_flight[E(c, k)];
       if
       :: (v & TBIT) && !(v & MBIT) ->
          if
          :: holder[POS1(v) - 1] == c + 1 -> in_flight[E(c, k)] = v & ~TBIT    /* taken: held */
          :: else -> in_flight[E(c, k)] = 0                                   /* not taken: dropped */
          fi;
          v = 0; k++;
          DIE_IN(tok)
       :: else -> v = 0; k++
       fi
     }
  :: else -> break
  od;
  k = 0; kept = false;
  do
  :: atomic { k < NK && in_flight[E(c, k)] == 0 -> k++ }
  :: atomic { k < NK && in_flight[E(c, k)] != 0 -> LOCK(tok, ok) } ->
     if :: ok -> settle(tok, v, ok, i, j) :: else fi;
     move_locked(tok, E(c, k), 0, st, v, ok, i);
     if
     :: st == 2 -> kept = true; break        /* WouldBlock: the slot stays */
     :: else -> assert(in_flight[E(c, k)] == 0); k++
     fi
  :: k == NK -> break
  od;
  if :: !kept -> atomic { slot_active[c] = false; DIE_IN(tok) } :: else fi;
  atomic { c = 0; k = 0; st = 0; kept = false };
  goto end_mover;
died:
  atomic {
    tok = NC + 2; alive[tok] = true;
    c = 0; k = 0; e = 0; x1 = 0; v = 0; st = 0; i = 0; j = 0; ok = false; kept = false
  };
  goto end_mover;
done: skip
}

/* The claim, at the gate's last read (an atomic look at the whole state: ghosts only). */
inline claim(g, j, v) {
  assert(gnext >= g);                      /* nothing below g is delivered from the cursor again */
  j = 0;
  do
  :: j < NPOS && j < g -> assert(holder[j] == 0); j++     /* nobody holds a record below g */
  :: else -> break
  od;
  j = 0;
  do
  :: j < GB -> assert(list[j] == 0 || list[j] - 1 >= g); j++   /* none is listed */
  :: else -> break
  od;
  j = 0;
  do
  :: j < NC * NK ->
     v = in_flight[j];
     if
     :: v != 0 && POS1(v) - 1 < g ->
#ifdef STRICT
        assert(false)
#else
        /* only a take that failed or will fail: tentative, not taken, the cursor past it */
        assert((v & TBIT) && !(v & MBIT) && holder[POS1(v) - 1] != j / NK + 1)
#endif
     :: else
     fi;
     j++
  :: else -> break
  od;
  j = 0; v = 0
}

/* The cheap gate (the reclaimer, under the cleaning lock, no give-back lock), any number of times,
   each load one step. A run stops early where its result is known: g = 0 (it can only go down:
   the claim is empty), or, once moves changed (`moved`), the give-up the final read of moves
   would make (the gate writes nothing: its later loads change nothing). */
#ifdef NO_SEQLOCK
#define STOP false
#else
#define STOP moved
#endif
#define GATE_DONE g = 0; moved = false; gwin = false; goto gate_top
#define READ(w) atomic { if :: STOP -> GATE_DONE :: else fi; g = min(g, w); if :: g == 0 -> GATE_DONE :: else fi }
proctype gate() {
  byte g, j, v, runs;
gate_top:
  atomic {
    if :: acks == NREC || RECLAIMS == 0 || (RECLAIMS != 255 && runs >= RECLAIMS) -> goto gate_end :: else fi;
    if :: RECLAIMS != 255 -> runs++ :: else fi;
    g = min(NPOS, gnext);                      /* min(tail, durable position), then the group's next */
#if defined(GATE_MERGE_NEXT) && !defined(NO_SEQLOCK)
    if :: moves_odd -> GATE_DONE :: else -> moved = false; gwin = true fi;   /* s = moves, in the same step */
#endif
    if :: g == 0 -> GATE_DONE :: else fi
  };
#if !defined(NO_SEQLOCK) && !defined(GATE_MERGE_NEXT)
  atomic { if :: moves_odd -> GATE_DONE :: else -> moved = false; gwin = true fi };   /* s = moves; odd: exact gate */
#endif
#ifndef LOW_FIRST
  READ(list_low);
#endif
  READ((slot_active[0] -> low_held[0] : NONE));   /* the slot's state and low_held: see below */
  READ((slot_active[1] -> low_held[1] : NONE));
#ifdef LOW_FIRST
  READ(list_low);
#endif
  atomic {                                     /* moves != s: exact gate; else g, and the claim holds now */
    if :: STOP -> GATE_DONE :: else fi;
    claim(g, j, v);
#ifdef CLEANED
    if :: g > cleaned -> cleaned = g :: else fi;
#endif
    GATE_DONE
  };
gate_end: skip
}
/* A slot's state and its low_held are two loads in the code, one step here: a slot goes from
   active to free only (no joins here), after everything it held was given back, so a slot read
   free holds nothing at any later load, and one read active is read as the code reads it. */

init {
  byte c;
  atomic {
    list_low = NONE;
    c = 0;
    do
    :: c < NC -> alive[c + 1] = true; slot_active[c] = true; low_held[c] = NONE; c++
    :: else -> break
    od;
    alive[NC + 1] = true;
    run mover();
    run consumer(0);
    run consumer(1);
    run gate()
  }
}

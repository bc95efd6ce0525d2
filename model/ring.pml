/*
 * ring.pml: an exhaustive model of shmq's record ring (ringbuffer/record_ring.hpp, .cpp) and of the
 * gate that says which ring space may be reused (ChannelState::gate(), shm/channel.cpp).
 *
 * Checked with SPIN (Debian package `spin`): see model/README.md for the commands, the sizes, what
 * the model covers and what it does not. Every step of a process is one atomic access of the code
 * it follows (a load, a store or a CAS of one word), so SPIN explores every interleaving of them
 * under sequential consistency. Producers may die (SIGKILL) at every step; a consumer may die at
 * the crash point "unblock.holding_clean_lock".
 *
 * Units: one model word is one 8-byte word of the ring (kAlign). The ring has CAP words. A record
 * is LEN words: the frame word, then LEN-1 body words. Positions are absolute and never wrap.
 *
 * Processes:
 *   producer(i)  NP of them; producer 0 publishes K records of 2 words, the others K1 of 1 word,
 *                making room with reclaim() when the ring is full. May die at any step.
 *   consumer(r)  NC consumers of one group sharing its cursor `gnext` (Consumer::poll's take:
 *                tentative in-flight entry, cursor CAS, read the body, ack; Padding: cursor CAS);
 *                a claim left pending is unblocked (RecordRing::unblock).
 *   journaler()  the journaler's own cursor; it publishes durable_position now and then (the gate
 *                of a durable channel); it unblocks too. May die; a successor restarts from
 *                durable_position.
 *
 * Invariants (assertions; SPIN also reports a process blocked forever as an invalid end state):
 *   - a record is committed only where its claim marker still stands and no reader is past it
 *     (so no committed record is ever skipped by padding);
 *   - a padding the group's cursor skips covers no committed record;
 *   - each committed record is taken by the group exactly once, and its bytes are its own when read
 *     (a frame or body word zeroed or reused under a reader fails the read's assertion);
 *   - nothing is zeroed that the group (cursor or in-flight entry) or the journal still needs;
 *   - liveness, bounded: whenever nothing else in the system can move (SPIN's `timeout`), a reader
 *     stuck on a pending claim turns it into padding (the claimer can only be dead then); at the
 *     end every committed record was delivered and journaled.
 *
 * Mutants (each must give a counterexample; see the ctest entries):
 *   -DNO_INTENT           the claimer does not publish its intent before the tail CAS
 *   -DUNBLOCK_NO_RECHECK  unblock stores its padding without clean_lock and without checking that
 *                         the position was not reclaimed meanwhile (the ABA of issue 10.8)
 *   -DGATE_NO_JOURNAL     the gate ignores the journal's durable position
 *   -DGATE_NO_IN_FLIGHT   the gate ignores the consumers' in-flight entries
 */

#ifndef CAP
#define CAP 4
#endif
#define MASK (CAP - 1)
#ifndef NP
#define NP 2
#endif
#ifndef NC
#define NC 2
#endif
#ifndef K
#define K 2             /* records per producer */
#endif
#ifndef K1
#define K1 K            /* records of producer 1 (and 2) */
#endif
#define RECORDS(i) (i == 0 -> K : K1)
#ifndef MAXDEATH
#define MAXDEATH 1      /* deaths of producers (and the journaler) in one run */
#endif
#ifndef BATCH
#define BATCH 0         /* reclaim's batch beyond what the claim needs: capacity/8 in words */
#endif
#ifndef TRIES
#define TRIES 1         /* unblock calls a reader makes on its own per position (beyond timeouts) */
#endif
#ifndef JTRIES
#define JTRIES 0        /* the same for the journaler */
#endif
#define LEN(i) (i == 0 -> 2 : 1)
#define NONE 255
#define MAXTOK 12

/* A ring word: kind, length, tag. MARK: claim marker (length, claimer); DATA: committed frame
   (length, position of the record: its identity); PADW: padding frame (length); BODY: a body word
   (position of its record). ZERO: zeroed, free. */
#define ZERO 0
#define MARK 1
#define DATA 2
#define PADW 3
#define BODY 4
byte wk[CAP]; byte wl[CAP]; byte wt[CAP];
#define IX(p) ((p) & MASK)

byte tail;              /* RingHeader::tail */
byte cleaned;           /* RingHeader::cleaned */
byte cleaning_to;       /* RingHeader::cleaning_to */
byte clean_lock;        /* RingHeader::clean_lock: owner token, 0 free */
byte intent[NP];        /* ClaimerSlot::intent */
bool alive[MAXTOK];     /* token_alive() of owner tokens: producers 1..NP, then readers */
byte next_token = NP + 1;

byte gnext;             /* GroupSlot::next, the group's cursor */
byte in_flight[NC];     /* ConsumerSlot::in_flight[k]: position + 1, 0 empty (tentative or held) */
byte durable;           /* SegmentHeader::durable_position */
byte held[NC];          /* ghost: position + 1 of the record consumer r took and has not acked */

byte deaths;            /* ghost: deaths so far */
byte finished;          /* ghost: producers done or dead */
int committed;          /* ghost: bit P: a record was committed at position P */
int taken;              /* ghost: bit P: the group took the record at position P */
#define BIT(p) (1 << (p))
byte commits, takes;    /* ghost */
byte journal_end;       /* ghost: where the last journaler stopped */

#define min(a, b) ((a) < (b) -> (a) : (b))

/* The process may die here (SIGKILL): it makes no more stores; its label `died` says what
   follows (a producer is gone; a consumer or journaler is replaced by a new process). */
#define DIE(tok) if :: deaths < MAXDEATH -> atomic { deaths++; alive[tok] = false }; goto died :: true fi
/* The same, inside an atomic step, right after its store (dying there or a little later, with no
   store in between, is the same to every other process). */
#define DIE_IN(tok) if :: deaths < MAXDEATH -> deaths++; alive[tok] = false; goto died :: true fi

/* lock_owner_word(clean_lock): takes a free lock, or the lock of a dead holder. */
inline lock_clean(tok) {
  atomic { (clean_lock == 0 || !alive[clean_lock]) -> clean_lock = tok }
}
inline unlock_clean() { clean_lock = 0 }

/* RecordRing::zero(from, to), word by word; no word the group or the journal needs. */
inline zero(tok, from, to, x) {
  x = from;
  do
  :: x < to ->
     atomic {
       assert(x < gnext && x < durable);
       assert(held[0] == 0 || x < held[0] - 1);
#if NC > 1
       assert(held[1] == 0 || x < held[1] - 1);
#endif
       wk[IX(x)] = ZERO; wl[IX(x)] = 0; wt[IX(x)] = 0;
       DIE_IN(tok)
     };
     x++
  :: else -> break
  od
}

/* RecordRing::lock_cleaning: takes clean_lock, then finishes what a dead holder was zeroing. */
inline lock_cleaning(tok, c, u) {
  lock_clean(tok);
  atomic { c = cleaned; u = cleaning_to };
  if
  :: u > c && u - c <= CAP && u <= tail -> zero(tok, c, u, c); cleaned = u
  :: else
  fi;
  atomic { c = 0; u = 0 }
}

/* RecordRing::unblock_impl(pos): RESULT true if POS now reads as padding (or committed). */
inline unblock(tok, pos, locked, result, k, l, g, t, bound, end, j, it) {
  result = false;
  atomic { k = wk[IX(pos)]; l = wl[IX(pos)]; g = wt[IX(pos)] };
  if
  :: k != ZERO && k != MARK -> result = true
  :: else ->
     t = tail;
     if
     :: pos >= t || t - pos > CAP -> skip
     :: else ->
        if
        :: pos < cleaned -> skip                       /* reclaimed: not a claim of this lap */
        :: else ->
           if
           :: k == MARK ->                               /* length known: dead if its claimer is */
              if
              :: alive[g + 1] -> skip
              :: else ->
                 if
                 :: pos + l > ((pos | MASK) + 1) || pos + l > t -> skip
                 :: else -> end = pos + l; result = true
                 fi
              fi
           :: else ->                                    /* frame 0: scan the live intents */
              bound = min(t, (pos | MASK) + 1);
              j = 0;
              do
              :: j < NP ->
                 it = intent[j];
                 if
                 :: it == NONE || it < pos || it >= bound -> skip
                 :: else ->
                    if
                    :: !alive[j + 1] -> skip
                    :: else ->
                       if
                       :: it == pos -> goto unblock_wait
                       :: else -> bound = it
                       fi
                    fi
                 fi;
                 j++
              :: else -> break
              od;
              if
              :: wk[IX(pos)] != ZERO -> goto unblock_wait  /* a claimer finished meanwhile */
              :: else
              fi;
              end = pos + 1;
              do
              :: end < bound && wk[IX(end)] == ZERO -> end++
              :: else -> break
              od;
              result = true
unblock_wait: skip
           fi;
           if
           :: result ->                                  /* pad(): store the padding */
#ifdef UNBLOCK_NO_RECHECK
              atomic {
                if
                :: wk[IX(pos)] == k && wl[IX(pos)] == l && wt[IX(pos)] == g ->
                   wk[IX(pos)] = PADW; wl[IX(pos)] = end - pos; wt[IX(pos)] = 0
                :: else
                fi
              }
#else
              if :: !locked -> lock_cleaning(tok, j, it) :: else fi;
              DIE(tok);                                   /* "unblock.holding_clean_lock" */
              if
              :: pos >= cleaned ->                        /* only the lock holder moves it */
                 atomic {
                   if
                   :: wk[IX(pos)] == k && wl[IX(pos)] == l && wt[IX(pos)] == g ->
                      wk[IX(pos)] = PADW; wl[IX(pos)] = end - pos; wt[IX(pos)] = 0
                   :: else
                   fi;
                   DIE_IN(tok)                               /* (dies holding clean_lock) */
                 }
              :: else
              fi;
              if :: !locked -> unlock_clean() :: else fi
#endif
           :: else
           fi
        fi
     fi
  fi;
  atomic { k = 0; l = 0; g = 0; t = 0; bound = 0; end = 0; j = 0; it = 0 }   /* dead locals */
}

/* ChannelState::gate(): tail, durable position, the group's cursor, the in-flight entries
   (each loaded on its own, as the code does). */
inline gate(g, x) {
  g = tail;
#ifndef GATE_NO_JOURNAL
  x = durable; g = min(g, x);
#endif
  x = gnext; g = min(g, x);
#ifndef GATE_NO_IN_FLIGHT
  x = in_flight[0]; if :: x != 0 -> g = min(g, x - 1) :: else fi;
#if NC > 1
  x = in_flight[1]; if :: x != 0 -> g = min(g, x - 1) :: else fi;
#endif
#endif
}

/* A producer without room waits (space_seq, with a timeout in the code) until every part of the
   gate it saw as G is past G, or `cleaned` moved: then it tries again. */
#ifdef GATE_NO_JOURNAL
#define PAST_DURABLE(g) true
#else
#define PAST_DURABLE(g) (durable > g)
#endif
#ifdef GATE_NO_IN_FLIGHT
#define PAST_HELD(g) true
#else
#define PAST_HELD(g) ((in_flight[0] == 0 || in_flight[0] - 1 > g) && (in_flight[NC - 1] == 0 || in_flight[NC - 1] - 1 > g))
#endif
#define WAIT_FOR_SPACE(g, c) ((gnext > g && PAST_DURABLE(g) && PAST_HELD(g)) || cleaned > c)

proctype producer(byte i) {
  byte tok = i + 1;
  byte need = LEN(i);
  byte n, t, to_end, pad, cend, pos, x;
  /* reclaim's locals */
  byte c, u, t2, g, wanted, limit, target, nx, rk, rl, rg;
  bool ok;
  /* unblock_impl's locals (reclaim unblocks dead claims below the gate) */
  bool res; byte uk, ul, ug, ut, ub, ue, uj, ui;

  do
  :: n == RECORDS(i) -> break
  :: else ->
claim:
     atomic {                                               /* try_claim: relaxed load of tail */
       t = tail; to_end = CAP - (t & MASK); pad = (need > to_end -> to_end : 0); cend = t + pad + need; to_end = 0
     };
     if
     :: cend >= cleaned + CAP ->                             /* no room below cleaned + capacity */
        intent[i] = NONE;
        /* the caller: reclaim(claim_end(tail)), then try again, or wait for space */
        lock_cleaning(tok, c, u);
        DIE(tok);                                           /* holding clean_lock */
        c = cleaned;
        t2 = tail;
        if
        :: c + CAP > cend -> ok = true
        :: else ->
           gate(g, x);
           g = min(g, t2);
           wanted = cend + 1 - CAP;
           if :: c + BATCH > wanted -> wanted = c + BATCH :: else fi;
           limit = min(g, wanted);
           target = c;
           do
           :: target < limit && target - c < CAP ->
              atomic { rk = wk[IX(target)]; rl = wl[IX(target)]; rg = wt[IX(target)] };
              if
              :: rk == ZERO || rk == MARK ->
                 unblock(tok, target, true, res, uk, ul, ug, ut, ub, ue, uj, ui);
                 if :: res -> skip :: else -> break fi
              :: else ->
                 nx = target + rl;
                 if :: nx > g -> break :: else -> target = nx fi
              fi
           :: else -> break
           od;
           if
           :: target > c ->
              atomic { cleaning_to = target; DIE_IN(tok) };
              zero(tok, c, target, x);
              atomic { cleaned = target; DIE_IN(tok) }      /* (dies holding clean_lock) */
           :: else
           fi;
           ok = (target + CAP > cend)
        fi;
        atomic { c = 0; u = 0; t2 = 0; wanted = 0; limit = 0; nx = 0; rk = 0; rl = 0; rg = 0; x = 0; res = 0 };
        unlock_clean();
        if
        :: ok -> skip
        :: else -> WAIT_FOR_SPACE(g, target)                /* until the gate passed G: try again */
        fi;
        atomic { g = 0; target = 0; ok = 0 };
        goto claim
     :: else
     fi;
#ifndef NO_INTENT
     atomic { intent[i] = t; DIE_IN(tok) };                 /* the intent, before the CAS */
#endif
     if                                                     /* the tail CAS (then: may die before the marker) */
     :: atomic { tail == t -> tail = cend; pos = t + pad; DIE_IN(tok) }
     :: atomic { tail != t -> goto claim }
     fi;
     atomic { wk[IX(pos)] = MARK; wl[IX(pos)] = need; wt[IX(pos)] = i; DIE_IN(tok) };  /* claim marker */
     if
     :: pad > 0 -> atomic { wk[IX(t)] = PADW; wl[IX(t)] = pad; wt[IX(t)] = 0; DIE_IN(tok) }  /* padding */
     :: else
     fi;
     x = 1;
     do                                                     /* header fields, key, payload */
     :: x < need -> atomic { wk[IX(pos + x)] = BODY; wl[IX(pos + x)] = 0; wt[IX(pos + x)] = pos; x++; DIE_IN(tok) }
     :: else -> break
     od;
     atomic {                                               /* commit: the frame word, last */
       assert(wk[IX(pos)] == MARK && wl[IX(pos)] == need && wt[IX(pos)] == i);  /* nobody padded it */
       assert(gnext <= pos && (durable == 255 || durable <= pos));           /* no reader went past it */
       wk[IX(pos)] = DATA; wl[IX(pos)] = need; wt[IX(pos)] = pos;
       committed = committed | BIT(pos); commits++
     };
     atomic { n++; t = 0; pad = 0; cend = 0; pos = 0; x = 0 }
  od;
  atomic { intent[i] = NONE; finished++ };                  /* release_claimer */
  goto gone;
died: finished++;                                           /* dead: no more stores */
gone: skip
}

/* Consumer::poll's take from the group's cursor, then ack. */
proctype consumer(byte r) {
  byte tok;
  byte pos, k, l, g, t, nx, tries, seen_pos = NONE, x;
  bool res; byte uk, ul, ug, ut, ub, ue, uj, ui;
  goto born;
died:                                                       /* a new consumer of the group takes over */
  in_flight[r] = 0;                                         /* (it held nothing: unblock is before a take) */
born:
  atomic { tok = next_token; next_token++; alive[tok] = true };
  do
  :: atomic { pos = gnext; if :: pos != seen_pos -> seen_pos = pos; tries = 0 :: else fi };  /* the cursor */
     atomic { k = wk[IX(pos)]; l = wl[IX(pos)]; g = wt[IX(pos)] };   /* read(): the frame word */
     if
     :: k == ZERO || k == MARK ->
        t = tail;
        if
        :: t <= pos ->                                      /* Empty: wait for a claim */
           if
           :: atomic { finished == NP && tail == pos && gnext == pos } -> break
           :: tail > pos || gnext != pos -> skip
           fi
        :: else ->                                          /* Pending: a claim not committed */
           if
           :: tries < TRIES -> tries++;
              unblock(tok, pos, false, res, uk, ul, ug, ut, ub, ue, uj, ui)
           :: wk[IX(pos)] != k || wl[IX(pos)] != l || wt[IX(pos)] != g || gnext != pos -> skip
           :: timeout ->                                    /* nothing else can move */
              unblock(tok, pos, false, res, uk, ul, ug, ut, ub, ue, uj, ui);
              assert(res && (wk[IX(pos)] == PADW || wk[IX(pos)] == DATA) || gnext != pos)
           fi
        fi
     :: else ->                                             /* a frame: check it against the ring */
        t = tail;
        nx = pos + l;
        if
        :: l < 1 || nx > (pos | MASK) + 1 || pos >= t || t - pos > CAP || nx > t || pos < cleaned ->
           assert(gnext != pos)                             /* Corrupt, unless the cursor moved on */
        :: else ->
           if
           :: k == PADW ->
              atomic {
                if
                :: gnext == pos ->                          /* the cursor CAS past the padding */
                   gnext = nx;
                   x = pos;
                   do
                   :: x < nx -> assert((committed & BIT(x)) == 0); x++
                   :: else -> break
                   od
                :: else
                fi
              }
           :: k == DATA ->
              in_flight[r] = pos + 1;                       /* tentative entry, before the CAS */
              if
              :: atomic { gnext == pos -> gnext = nx; assert(g == pos && (taken & BIT(pos)) == 0); taken = taken | BIT(pos); takes++; held[r] = pos + 1 }
                 /* ours: read the record's bytes (load_record, then the payload) */
                 x = 1;
                 do
                 :: x < l -> atomic { assert(wk[IX(pos + x)] == BODY && wt[IX(pos + x)] == pos) }; x++
                 :: else -> break
                 od;
                 atomic { assert(wk[IX(pos)] == DATA && wt[IX(pos)] == pos) };
                 atomic { in_flight[r] = 0; held[r] = 0 }   /* ack */
              :: atomic { gnext != pos -> in_flight[r] = 0 }   /* another consumer took it */
              fi
           :: else -> assert(false)
           fi
        fi
     fi;
     atomic { pos = 0; k = 0; l = 0; g = 0; t = 0; nx = 0; x = 0; res = 0 }
  od;
  assert(takes == commits)
}

/* The journaler (shm/journaler.cpp): its own cursor; durable_position published now and then.
   A committed frame is copied out in one step: its cursor is never below durable_position, which
   gates the ring, so what it reads cannot change under it (the zeroing asserts that). */
proctype journaler() {
  byte tok;
  byte cur, k, l, g, t, nx, tries, seen_pos = NONE, x;
  bool res, copied; byte uk, ul, ug, ut, ub, ue, uj, ui;
died:
  atomic { tok = next_token; next_token++; alive[tok] = true };
  cur = durable;                                            /* a successor starts at durable_position */
  do
  :: durable != cur -> durable = cur                        /* publish(): after write + fdatasync */
#ifdef JOURNALER_DIES
  :: deaths < MAXDEATH && finished < NP ->                  /* "journal.after_write" / "after_sync" */
     atomic { deaths++; alive[tok] = false }; goto died
#endif
  :: atomic {
       if :: cur != seen_pos -> seen_pos = cur; tries = 0 :: else fi;
       k = wk[IX(cur)]; l = wl[IX(cur)]; g = wt[IX(cur)];
       copied = false;
       if
       :: k == DATA || k == PADW ->
          t = tail; nx = cur + l;
          assert(!(l < 1 || nx > (cur | MASK) + 1 || cur >= t || t - cur > CAP || nx > t || cur < cleaned));
          x = cur;
          do
          :: k == PADW && x < nx -> assert((committed & BIT(x)) == 0); x++
          :: k == DATA && x == cur -> assert(g == cur); x++
          :: k == DATA && x > cur && x < nx -> assert(wk[IX(x)] == BODY && wt[IX(x)] == cur); x++
          :: else -> break
          od;
          cur = nx;
#ifndef LAGGING_DURABLE
          durable = cur;                                    /* made durable at once */
#endif
          copied = true; k = 0; l = 0; g = 0; t = 0; nx = 0; x = 0
       :: else
       fi
     };
     if
     :: copied -> copied = false
     :: else ->                                             /* no frame yet: Empty or Pending */
        t = tail;
        if
        :: t <= cur ->
           if
           :: atomic { finished == NP && tail == cur } -> durable = cur; break
           :: tail > cur -> skip
           :: durable != cur -> durable = cur                /* caught up: sync, publish */
           fi
        :: else ->
           if
           :: tries < JTRIES -> tries++;
              unblock(tok, cur, false, res, uk, ul, ug, ut, ub, ue, uj, ui)
           :: wk[IX(cur)] != k || wl[IX(cur)] != l || wt[IX(cur)] != g -> skip
           :: durable != cur -> durable = cur
           :: timeout ->
              unblock(tok, cur, false, res, uk, ul, ug, ut, ub, ue, uj, ui);
              assert(res && (wk[IX(cur)] == PADW || wk[IX(cur)] == DATA))
           fi
        fi;
        atomic { k = 0; l = 0; g = 0; t = 0; res = 0 }
     fi
  od;
  journal_end = cur
}

init {
  byte i;
  atomic {
    i = 0;
    do
    :: i < NP -> intent[i] = NONE; alive[i + 1] = true; i++
    :: else -> break
    od;
    i = 0;
    do
    :: i < NP -> run producer(i); i++
    :: else -> break
    od;
    i = 0;
    do
    :: i < NC -> run consumer(i); i++
    :: else -> break
    od;
#ifdef NO_JOURNAL
    durable = 255                           /* a Memory channel: no journal gates the ring */
#else
    run journaler()
#endif
  }
}

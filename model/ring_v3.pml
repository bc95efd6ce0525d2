/* ring_v3.pml: an exhaustive SPIN model of the ring v3 claim protocol (issue 12, items 1 and 5).
 *
 * Contract. Checks, for every interleaving of NC claimers, one reader and the reclaimers, on a ring
 * of N word slots whose freed space holds ANY value (an adversary picks it), that:
 *   - the reader reads every committed record exactly once, in position order, never before it is
 *     committed, and never takes a word that the protocol did not write in this lap (stale content)
 *     as a frame (Record, Padding or Pending) -- assert(wreal) in reader();
 *   - no two claims overlap, and no claim reuses space the reader still needs (claim_ok());
 *   - the tail only moves past a marked claim of this lap, to its end (a record boundary: TAIL_MOVE);
 *   - a claimer never finds its marked claim taken by another (claim_lost() is not reached: no hostile
 *     tail is modelled), and a commit finds its own marker still there (no live claim padded);
 *   - a dead claimer blocks nobody forever: every run ends with all processes at their end (SPIN's
 *     invalid-end-state check: every wait is a blocking guard). (Cycles without progress, a reader
 *     or claimer spinning forever, are not checked: ring_v3.sh has no NP run.)
 *
 * The C++ it follows (ringbuffer/record_ring.hpp and .cpp of branch ringv3, with the fixes of
 * issue 12 item 1):
 *   claimer():    RecordRing::try_claim  -- load word(t) W, pick the marker's toggle = NOT(W's), (1)
 *                 slot stores (claim_frame, then intent: seq_cst), help via claim_in_progress, tail
 *                 re-check, frame CAS W -> marker (no w == mine shortcut), (4) tail CAS t -> end (a
 *                 failed one seeing the tail at or past END: helped, ours), wrap padding; then the
 *                 record write and RecordRing::commit (the Data frame with the marker's toggle, then
 *                 intent = kNoIntent); a try_claim that returns kNoIntent clears intent.
 *   CIP():        RecordRing::claim_in_progress (type, lap, slot's intent then claim_frame, span).
 *   adopt:        RecordRing::adopt_claimer (move the tail past the dead owner's marked claim, clear
 *                 the slot, bump the epoch, store the new owner).
 *   UNBLOCK():    RecordRing::unblock_impl (under clean_lock; its padding keeps the marker's toggle;
 *                 `padded` is not modelled, see below).
 *   reclaim:      RecordRing::reclaim (cleaned = min(gate, tail, the intents of live claimers); a
 *                 dead claimer's marked claim is padded by unblock_impl, a dead claimer's intent with
 *                 no marker is ignored; no zeroing).
 *   reader():     RecordRing::read (the tail hint tail_seen_, the peek at or past it, the live tail
 *                 load, then the acquire load of the frame word; the checks that make it Corrupt are
 *                 assertions here: a correct protocol never makes an honest ring look corrupt) and
 *                 the reader's use of unblock() after finding a Pending claim.
 *   Each shared load, store or CAS is one atomic step (memory is sequentially consistent: the C++
 *   orders its steps with acquire/release/seq_cst as its comments say; the model checks the
 *   algorithm, not the memory orders). A claimer may die between any two steps (DP), up to DEATHS
 *   deaths in a run; a dead claimer's slot is then adopted by a new owner (the same process goes on
 *   as that owner) or never adopted.
 *
 * Stale content. A word of freed space (initially: all of it) is STALE: the first access picks its
 * value (RESOLVE), among "no frame of this lap" (0) and every frame of the lap of the accessed
 * position: each type (Data, Padding, Claimed), length 1..2, claimer, epoch 0..DEATHS. Picking at
 * first access is the same as picking when the space was freed (nobody sees it before). real[] is
 * a ghost bit: the word was written by the protocol in this lap (marker CAS, commit, padding).
 *
 * Abstracted: positions, laps and epochs do not wrap (8-bit lap and 12-bit epoch tags are exact
 * here); lengths are in word slots (1..2; MAXF = 2 is max_frame), a record's payload is not
 * modelled (its commit is the store of its frame; payload words are the "any value" of stale
 * space); hostile writers of live memory (a tail or cleaned that is not a boundary, scribbled
 * slots) are not modelled (tail_usable's alignment check, claim_lost, Corrupt are not exercised);
 * a dead holder of clean_lock is replaced at once (its work is one store); owner tokens are the
 * alive[] bit plus the epoch; `padded` (the producer takeover's record of dead claims), the
 * journal, consumer groups and futex waits (a wait is a blocking guard on the state it waits
 * for) are out of scope; one reader (its position is
 * the gate), or none (-DNOREADER: the gate is the tail, as with no consumer group).
 *
 * Switches. Default: the C++ as it is, against the full adversary (stale words may equal any value
 * the protocol writes, either toggle). EXCL: claimer 0 is an exclusive producer
 * (ProducerOptions::exclusive, try_claim<true>): it starts once claimer 1 (shared) has finished or
 * died for good (the Producer constructor refuses it beside a live one, and any producer beside
 * it), and claims with plain steps: claim_frame, intent, the marker at T (claim.alone.after_marker),
 * the tail -- unless the word at T is a claim marker of this lap (claimer 1 died between its
 * marker and its tail CAS, or a stale word looks like one), which goes to the shared path; its
 * successor after a death (K=2) is exclusive too. Mutants: MUT_EXCL_TAIL_FIRST (the tail before
 * the marker), MUT_EXCL_WITH_LIVE_PEER (the join rule left out). NOCOINCIDE: stale frames carry an epoch no claimer has (a
 * weaker adversary, kept for comparison). NOREADER: no reader (gate = tail). K, K1: claims of
 * claimer 0 and 1 (K1 <= K); with K=2 a dead claimer's adopted successor claims again.
 *
 * Counterexamples found against the C++ before the fixes (branch modelv3; fixed on ringv3):
 *   1. ABA on the frame CAS: claimers A and B load the same stale word W at the tail T; B marks,
 *      moves the tail, commits, and its Data frame happens to equal W; A (past its tail re-check)
 *      CASes W -> its marker and succeeds over B's committed record. Fixed by the toggle: every
 *      frame stored at T for a claim that replaced W differs from W in that bit. (With the adopt
 *      move, only one claim per lap replaces the word at T: a marker loses its slot's backing only
 *      after the tail has moved past it. MUT_D shows the move is now needed.)
 *   2. A stale word equal to the marker that B's slot publishes (two owners of T, or the tail moved
 *      by B's span over A's marker). Gone: a marker differs from the word its claimer loaded, and
 *      TAIL_MOVE now asserts the tail only moves past a marker the protocol wrote (real).
 *   3. claim_lost() reached on an honest ring: a peer helps B's claim (tail -> END), then claims on
 *      past END before B's tail CAS. Fixed: a tail at or past END is "helped: ours"; claim_lost()
 *      is now an assertion (assert(ok)): it is never reached without a hostile tail.
 *   4. A claimer stalled between its tail re-check and its frame CAS while the ring laps: its CAS
 *      lands on the same index a lap later and its claim covers another claim. Fixed: intent is
 *      published before the re-check and kept until commit, and reclaim keeps a live claimer's
 *      intent whether or not its marker is stored yet.
 *
 * Mutants (each must give a counterexample; ring_v3.sh runs them):
 *   MUT_NOTOGGLE  the marker's toggle is always 0 (fixes 1 and 2 removed)
 *   MUT_LOST      a failed tail CAS is "helped" only if the tail is exactly END (fix 3 removed)
 *   MUT_INTENT    reclaim keeps an intent only if its claimer's marker is there (fix 4 removed;
 *                 needs a lap: K=2)
 *   MUT_CIP_ORDER claim_in_progress reads claim_frame before intent (found with K=2: an older
 *                 claim's frame and a newer claim's position pass a stale word equal to that frame
 *                 for a claim in progress; fixed: intent first, acquire)
 *   MUT_A  the claimer stores its marker after the tail CAS (ring v2 order, without zeroing)
 *   MUT_B  read() loads the frame word before the tail
 *   MUT_C  claim_in_progress does not check the slot (trusts any Claimed/Padding frame of this lap)
 *   MUT_D  adopt_claimer does not move the tail past the dead claimer's marked claim (needs an
 *          adopted owner that claims again: K=2; the successor then replaces the old marker, a second
 *          claim of T in one lap, and the toggle flips back to the one a stalled claimer's W had)
 *   MUT_E  reclaim ignores live claims (cleaned = min(gate, tail))
 */

#ifndef N
#define N 4            /* ring capacity, word slots */
#endif
#define NC 2           /* claimers */
#ifndef K
#define K 2            /* claims of claimer 0 (and the most of any claimer) */
#endif
#ifndef K1
#define K1 K           /* claims of claimer 1 */
#endif
#ifndef DEATHS
#define DEATHS 1       /* claimer deaths per run */
#endif
#define MAXF 2         /* max_frame, slots */
#define STALE (-1)     /* freed word not looked at yet: any value */
#define NOINT 255      /* kNoIntent */
#define NONE 0
#define DATA 1
#define PAD 2
#define CLM 3
#define RTOK (NC + 1)  /* the reader's clean_lock token */

/* The frame word: type | len | claimer | epoch | lap. 0 is "no frame" (and any word of another lap
 * behaves the same in every check). */
#define W(ty, ln, cl, ep, lp) ((ty) + (ln) * 4 + (cl) * 16 + (ep) * 64 + (lp) * 256)
#define TY(w) ((w) % 4)
#define LN(w) (((w) / 4) % 4)
#define CL(w) (((w) / 16) % 4)
#define EP(w) (((w) / 64) % 4)
#define LP(w) (((w) / 256) % 16)
#define TG(w) ((w) / 4096)        /* the claim's toggle bit (readers ignore it) */
#define LAP(p) ((p) / N)          /* the model's lap tags do not wrap: tail < 16 * N is asserted */
#define IX(p) ((p) % N)
#define LAPEND(p) ((LAP(p) + 1) * N)

#ifdef NOREADER
#define GATE tail
#define READER_NEEDS(end) true
#else
#define GATE rpos
#define READER_NEEDS(end) ((end) <= rpos + N)  /* position q < end reuses q - N: the reader is past it */
#endif

short tail = 0;        /* RingHeader::tail */
short cleaned = 0;     /* RingHeader::cleaned */
short word[N];         /* frame words (STALE: any value) */
byte lock = 0;         /* clean_lock: 0 free, i + 1 claimer i, RTOK the reader */
byte intent[NC];       /* ClaimerSlot::intent */
short cframe[NC];      /* ClaimerSlot::claim_frame */
byte epoch[NC];        /* ClaimerSlot::epoch */
bit alive[NC];         /* the slot's owner lives */
byte rpos = 0;         /* the reader's position: the gate */

/* ghosts */
bit real[N];           /* the word was written by the protocol in this lap */
byte gown[N];          /* i + 1: a live claim of claimer i covers the index */
byte gdata[N];         /* id + 1 of the record committed at the index */
bit commrec[NC * K];
bit readrec[NC * K];
byte deaths = 0;
byte finished = 0;         /* claimers finished (or dead for good) */
hidden byte sty, sln, scl, sep, gq;

/* The adversary picks a stale word's value when it is first looked at, at position P. */
inline RESOLVE(ix, p) {
  if
  :: word[ix] == STALE ->
#ifdef NOCOINCIDE
     /* one value of each class that behaves differently, with an epoch no claimer has (3): never
      * a value the protocol writes, so never taken for a peer's marker, a commit or a padding */
     if
     :: word[ix] = 0                           /* another lap's word, or no frame */
     :: word[ix] = W(DATA, 1, 0, 3, LAP(p))
     :: word[ix] = W(PAD, 1, 1, 3, LAP(p))
     :: word[ix] = W(CLM, 1, 0, 3, LAP(p))
     :: word[ix] = W(CLM, 2, 1, 3, LAP(p))
     fi;
#else
     /* any frame of this lap: each type, length, claimer and epoch */
     if
     :: word[ix] = 0
     :: if :: sty = DATA :: sty = PAD :: sty = CLM fi;
        if :: sln = 1 :: sln = 2 fi;
        if :: scl = 0 :: scl = 1 fi;
        if :: sep = 0 :: DEATHS >= 1 -> sep = 1 :: DEATHS >= 2 -> sep = 2 fi;
        word[ix] = W(sty, sln, scl, sep, LAP(p));
        if :: skip :: word[ix] = word[ix] + 4096 fi;  /* either toggle bit */
        sty = 0; sln = 0; scl = 0; sep = 0
     fi;
#endif
     real[ix] = 0
  :: else
  fi
}

/* The tail moves from F to T (in the step of a successful CAS): only past a marked claim of this
 * lap, to its end. Marked: the protocol stored the marker there in this lap (real), never a stale
 * word that happens to equal a published marker. */
#ifdef MUT_A
#define TAIL_MOVE(f, t) assert((t) < 16 * N); tail = (t)
#else
#define TAIL_MOVE(f, t) \
  assert((TY(word[IX(f)]) == CLM || TY(word[IX(f)]) == PAD) && LP(word[IX(f)]) == LAP(f) && \
         (f) + LN(word[IX(f)]) == (t) && \
         real[IX(f)]); \
  assert((t) < 16 * N); \
  real[IX(f)] = 1; \
  tail = (t)
#endif

/* claim_in_progress(T, W) -> SPAN (0: not a claim in progress). X is scratch. */
inline CIP(t, w, span, x) {
  span = 0;
  if
  :: (TY(w) == CLM || TY(w) == PAD) && LP(w) == LAP(t) ->
#ifdef MUT_C
     x = 1;
#else
#ifndef MUT_CIP_ORDER
     x = (intent[CL(w)] == t);          /* intent first (acquire: the claim_frame stored before it) ... */
     if :: x -> x = (cframe[CL(w)] == w) :: else fi;  /* ... then claim_frame (another step) */
#else
     x = (cframe[CL(w)] == w);          /* claim_frame first: a torn read (an older claim's frame, */
     if :: x -> x = (intent[CL(w)] == t) :: else fi;  /* a newer claim's position) */
#endif
#endif
     if
     :: x && LN(w) >= 1 && t + LN(w) <= LAPEND(t) && !(TY(w) == CLM && LN(w) > MAXF) -> span = LN(w)
     :: else
     fi;
     x = 0
  :: else
  fi
}

/* unblock_impl(P, LOCKED) by the process with clean_lock token TOK -> RES. UW, UT, UL scratch. */
inline UNBLOCK(p, locked, tok, res, uw, ut, ul) {
  res = 0;
  atomic { RESOLVE(IX(p), p); uw = word[IX(p)] }
  if
  :: LP(uw) == LAP(p) && (TY(uw) == DATA || TY(uw) == PAD) -> res = 1
  :: else ->
     ut = tail;
     if
     :: p >= ut || ut - p > N -> skip
     :: else ->
        if
        :: p < cleaned -> skip
        :: else ->
           if
           :: LP(uw) != LAP(p) || TY(uw) != CLM -> skip
           :: else ->
              ul = ((epoch[CL(uw)] % 4) == EP(uw));
              if :: ul -> ul = alive[CL(uw)] :: else fi;
              if
              :: ul -> skip                            /* a live claimer's */
              :: else ->
                 ul = LN(uw);
                 if
                 :: ul < 1 || p + ul > LAPEND(p) || p + ul > ut -> skip
                 :: else ->
                    if :: !locked -> atomic { lock == 0 -> lock = tok } :: else fi;
                    /* unblock.holding_clean_lock */
                    atomic {
                      if
                      :: p >= cleaned ->
                         RESOLVE(IX(p), p);
                         if
                         :: word[IX(p)] == uw ->
                            assert(gown[IX(p)] == 0);  /* no live claim is padded */
                            word[IX(p)] = W(PAD, ul, 0, 0, LAP(p)) + TG(uw) * 4096; real[IX(p)] = 1
                         :: else
                         fi
                      :: else
                      fi
                    }
                    if :: !locked -> lock = 0 :: else fi;
                    res = 1
                 fi
              fi
           fi
        fi
     fi
  fi;
  uw = 0; ut = 0; ul = 0
}

/* a claimer may die here (SHMQ_CRASH_POINT, or any kill) */
#define DP if :: deaths < DEATHS -> goto die :: true -> skip fi

proctype claimer(byte i) {
  byte k = 0, sz, t, e, ep, ch = 0, span, x, g, c, j, p, tt, res, ut, ul;
  short mine, w, uw;
  bit wrap, ok;

#ifdef EXCL
#ifndef MUT_EXCL_WITH_LIVE_PEER
  /* the Producer constructor: an exclusive producer joins only once no other lives */
  if :: i == 0 -> (finished == 1) :: else fi;
#endif
#endif
next_claim:
  if :: k == (i == 0 -> K : K1) -> goto finish :: else fi;
  if :: sz = 1 :: sz = 2 fi;
retry:
  atomic { ep = epoch[i]; t = tail };
round:
  DP;
  if
  :: t < ch ->                                 /* tail_usable */
     ch = cleaned;
     if :: t < ch -> e = t + sz; goto noroom :: else fi
  :: else
  fi;
  wrap = (sz > N - IX(t));
  e = (wrap -> t + N - IX(t) : t + sz);        /* END */
  if
  :: e > ch + N ->
     ch = cleaned;
     if :: e > ch + N -> goto noroom :: else fi
  :: else
  fi;
  mine = (wrap -> W(PAD, e - t, i, ep, LAP(t)) : W(CLM, sz, i, ep, LAP(t)));
#ifndef MUT_A
  /* (2) load the word at T first, then pick the marker's toggle so that it differs from it */
  atomic { RESOLVE(IX(t), t); w = word[IX(t)] }
  DP;
#ifndef MUT_NOTOGGLE
  mine = mine + (1 - TG(w)) * 4096;
#endif
#ifdef EXCL
  /* try_claim<true>: the only live claimer, plain stores; a claim marker of this lap at T goes to
   * the shared path below */
  if
  :: i == 0 && !((TY(w) == CLM || TY(w) == PAD) && LP(w) == LAP(t)) ->
     cframe[i] = mine;
     DP;
     intent[i] = t;
     DP;
#ifndef MUT_EXCL_TAIL_FIRST
     atomic { RESOLVE(IX(t), t); word[IX(t)] = mine; real[IX(t)] = 1 };
     DP;                                       /* claim.alone.after_marker */
     atomic { assert(tail == t); TAIL_MOVE(t, e) };
#else
     atomic { assert(tail == t); tail = e };   /* the tail before the marker */
     DP;
     atomic { RESOLVE(IX(t), t); word[IX(t)] = mine; real[IX(t)] = 1 };
#endif
     w = 0;
     goto claimed
  :: else
  fi;
#endif
  cframe[i] = mine;                            /* (1) the slot: claim_frame, then intent (seq_cst) */
  DP;
  intent[i] = t;
  DP;
  /* (no w == mine shortcut: MINE differs from W in its toggle) */
  if
  :: true ->
     CIP(t, w, span, x);
     if
     :: span > 0 ->                            /* help the claim in progress at T */
        atomic { if :: tail == t -> TAIL_MOVE(t, t + span) :: else fi };
        span = 0;
        DP;
        t = tail;
        goto round
     :: else
     fi;
     DP;
     if :: tail != t -> t = tail; goto round :: else fi;   /* (3) */
     DP;
     atomic {
       RESOLVE(IX(t), t);
       if
       :: word[IX(t)] == w -> word[IX(t)] = mine; real[IX(t)] = 1; ok = 1
       :: else -> ok = 0
       fi
     }
     if :: !ok -> DP; t = tail; goto round :: else fi
  :: else
  fi;
  w = 0;
  DP;                                          /* claim.after_frame_cas */
  atomic {                                     /* (4) */
    if
    :: tail == t -> TAIL_MOVE(t, e); ok = 1
#ifndef MUT_LOST
    :: else -> ok = (tail >= e)                /* helped (claims may have gone on past END): ours */
#else
    :: else -> ok = (tail == e)                /* v3 as it was: helped only if exactly END */
#endif
    fi
  }
  /* claim_lost() (a tail in (T, END) or below T) is reached only on a hostile tail, not modelled */
  assert(ok);
#else
  /* v2 order: the tail CAS, then the marker (a plain store), no zeroing */
  cframe[i] = mine;
  intent[i] = t;
  atomic { if :: tail == t -> TAIL_MOVE(t, e); ok = 1 :: else -> ok = 0 fi }
  if :: !ok -> DP; t = tail; goto round :: else fi;
  DP;
  atomic { word[IX(t)] = mine; real[IX(t)] = 1 }
#endif
#ifdef EXCL
claimed:
#endif
  /* the claim [t, e) is ours: nobody else's live claim, nothing the reader still needs */
  atomic {
    assert(READER_NEEDS(e));
    if
    :: !wrap ->
       gq = t;
       do
       :: gq < e -> assert(gown[IX(gq)] == 0); gown[IX(gq)] = i + 1; gq++
       :: else -> break
       od;
       gq = 0
    :: else
    fi
  }
  if :: wrap -> t = e; goto round :: else fi;
  DP;                                          /* (5) the record is written ... */
  atomic {                                     /* ... and committed */
    assert(word[IX(t)] == mine && real[IX(t)]);  /* nobody took or padded our claim */
    word[IX(t)] = W(DATA, sz, i, ep, LAP(t)) + TG(mine) * 4096;  /* claim_frame's toggle */
    gdata[IX(t)] = i * K + k + 1;
    commrec[i * K + k] = 1;
    gq = t;
    do
    :: gq < e -> gown[IX(gq)] = 0; gq++
    :: else -> break
    od;
    gq = 0
  }
  DP;
  intent[i] = NOINT;                           /* commit: the claim is no longer being made */
  k++;
  t = 0; e = 0; mine = 0; sz = 0; wrap = 0; ok = 0;
  goto next_claim;

noroom:                                        /* reclaim(E), then try again */
  intent[i] = NOINT;                           /* try_claim returned kNoIntent */
  DP;
  atomic { lock == 0 -> lock = i + 1 };
  DP;
  c = cleaned;
  tt = tail;
  if
  :: c + N >= e -> lock = 0; goto reclaimed
  :: else
  fi;
  g = GATE;
  if :: g > tt -> g = tt :: else fi;
#ifndef MUT_E
  j = 0;
  do
  :: j < NC ->
     p = intent[j];
     if
     :: p != NOINT && p >= c && p < g ->
        atomic { RESOLVE(IX(p), p); w = word[IX(p)] }
        if
        :: TY(w) == CLM && LP(w) == LAP(p) && CL(w) == j ->
           UNBLOCK(p, 1, i + 1, res, uw, ut, ul);   /* a dead one's marked claim is padded */
           if :: !res -> g = p :: else fi
#ifndef MUT_INTENT
        :: else -> if :: alive[j] -> g = p :: else fi  /* a live claimer may still CAS at P */
#else
        :: else                                   /* v3 as it was: no marker, nothing to keep */
#endif
        fi;
        w = 0; res = 0
     :: else
     fi;
     DP;
     j++
  :: else -> break
  od;
  j = 0; p = 0;
#endif
  if
  :: g > c ->
     atomic {                                  /* store of cleaned: [c, g) is free, any value */
       cleaned = g;
       gq = c;
       do
       :: gq < g ->
          if :: gown[IX(gq)] == 0 -> word[IX(gq)] = STALE; real[IX(gq)] = 0; gdata[IX(gq)] = 0 :: else fi;
          gq++
       :: else -> break
       od;
       gq = 0
     }
  :: else
  fi;
  lock = 0;
  /* no room yet: try again (the producer's wait for space; a claimer that can never get room
   * spins here for ever: the NP run of ring_v3.sh finds that) */
reclaimed:
  ch = 0; c = 0; g = 0; tt = 0; x = 0; e = 0;
  goto retry;

die:
  atomic {
    deaths++;
    alive[i] = 0;
    gq = 0;
    do
    :: gq < N -> if :: gown[gq] == i + 1 -> gown[gq] = 0 :: else fi; gq++
    :: else -> break
    od;
    gq = 0;
    if :: lock == i + 1 -> lock = 0 :: else fi;  /* a dead holder of clean_lock is replaced */
    k++;
    t = 0; e = 0; mine = 0; sz = 0; wrap = 0; ok = 0; w = 0; span = 0; x = 0; g = 0; c = 0; j = 0; p = 0;
    tt = 0; res = 0; ch = 0
  }
#ifdef EXCL
  if :: i == 1 -> goto finish :: else fi;      /* no producer joins beside the exclusive one */
#endif
  if
  :: true -> skip                              /* a new owner adopts the slot */
  :: true -> goto finish                       /* nobody ever does */
  fi;
  /* adopt_claimer(i) */
  p = intent[i];
  if
  :: p != NOINT ->
     w = cframe[i];
#ifndef MUT_D
     atomic { RESOLVE(IX(p), p); x = (word[IX(p)] == w) }
     if
     :: x ->
        CIP(p, w, span, x);
        if
        :: span > 0 -> atomic { if :: tail == p -> TAIL_MOVE(p, p + span) :: else fi }
        :: else
        fi;
        span = 0
     :: else
     fi;
     x = 0;
#endif
     w = 0
  :: else
  fi;
  p = 0;
  intent[i] = NOINT;
  cframe[i] = 0;
  epoch[i]++;
  atomic { alive[i] = 1 };
  goto next_claim;

finish:
  finished++
}

#ifndef NOREADER
proctype reader() {
  byte seen = 0, nx, ut, ul, res;
  short w, uw;
  bit wreal;
  byte gid;
  do
  :: /* read(rpos) */
#ifndef MUT_B
     if
     :: rpos >= seen ->                        /* at or past the tail seen last: peek, then the live tail */
        atomic { RESOLVE(IX(rpos), rpos); w = word[IX(rpos)] }
        if :: LP(w) != LAP(rpos) || TY(w) == NONE -> w = 0; goto r_empty :: else fi;
        seen = tail;
        if :: rpos >= seen -> w = 0; goto r_empty :: else fi
     :: else
     fi;
     atomic { RESOLVE(IX(rpos), rpos); w = word[IX(rpos)]; wreal = real[IX(rpos)]; gid = gdata[IX(rpos)] };
#else
     atomic { RESOLVE(IX(rpos), rpos); w = word[IX(rpos)]; wreal = real[IX(rpos)]; gid = gdata[IX(rpos)] };
     seen = tail;
     if :: rpos >= seen -> w = 0; wreal = 0; gid = 0; goto r_empty :: else fi;
#endif
     assert(seen - rpos <= N);                 /* Corrupt: more than a lap behind the tail */
     assert(LP(w) == LAP(rpos) && TY(w) != NONE);  /* Corrupt: no frame of this lap below the tail */
     assert(wreal);                            /* stale content taken for a frame */
     if
     :: TY(w) == CLM -> goto r_pending
     :: else
     fi;
     nx = rpos + LN(w);
     assert(LN(w) >= 1 && nx <= LAPEND(rpos)); /* Corrupt: crosses the end */
     if
     :: nx > seen -> seen = tail; assert(nx <= seen)  /* Corrupt: runs past the tail */
     :: else
     fi;
     assert(rpos >= cleaned);                  /* Corrupt: below the reclaimed space */
     if
     :: TY(w) == DATA ->                       /* the record: committed, read once, in order */
        assert(gid >= 1 && !readrec[gid - 1] && commrec[gid - 1]);
        readrec[gid - 1] = 1
     :: else
     fi;
     w = 0; wreal = 0; gid = 0;
     atomic { rpos = nx };
     nx = 0;
     goto r_next
r_empty:
     if
     :: tail > rpos -> skip
     :: finished == NC && tail <= rpos -> break
     fi;
     goto r_next
r_pending:                                       /* a claim being written: is its claimer dead? */
     UNBLOCK(rpos, 0, RTOK, res, uw, ut, ul);
     if
     :: res -> skip
     :: else ->                                /* a live claimer's: wait until that changes */
        (word[IX(rpos)] != w || epoch[CL(w)] % 4 != EP(w) || !alive[CL(w)])
     fi;
     w = 0; wreal = 0; gid = 0; res = 0;
r_next:
     skip
  od;
  /* every committed record was read */
  gq = 0;
  do
  :: gq < NC * K -> assert(!commrec[gq] || readrec[gq]); gq++
  :: else -> break
  od;
  gq = 0
}
#endif

init {
  byte q = 0;
  atomic {
    do
    :: q < N -> word[q] = STALE; q++
    :: else -> break
    od;
    q = 0;
    do
    :: q < NC -> intent[q] = NOINT; alive[q] = 1; q++
    :: else -> break
    od;
    q = 0;
    run claimer(0);
    run claimer(1);
#ifndef NOREADER
    run reader()
#endif
  }
}

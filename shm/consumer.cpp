// Consumer: joins a group, takes the group's next record, holds it in its in-flight table until
// ack. Several consumers of one group compete for records with a CAS on the group's cursor.
#include <sched.h>

#include <bit>
#include <utility>

#include "shm/channel_state.hpp"
#include "shm/crash_point.hpp"

namespace shmq {
namespace detail {

inline constexpr std::uint64_t kDeadClaimCheckNs = 1'000'000;  // a claim pending this long: ask if its producer lives
inline constexpr std::uint64_t kBlockSliceNs = 50'000'000;     // longest single futex sleep
// Wait::Block behind a claim not yet committed: yield this long (a commit is usually a few hundred
// nanoseconds after the claim), then sleep in futex slices of 1 ms doubling up to kBlockSliceNs
// (the commit wakes us; a slice's end looks again whether the claimer died).
inline constexpr std::uint64_t kClaimYieldNs = 100'000;
inline constexpr std::uint64_t kClaimFirstSliceNs = 1'000'000;

struct ConsumerState {
  ChannelState* ch = nullptr;
  ring::RecordRing* ring = nullptr;
  GroupSlot* group = nullptr;
  ConsumerSlot* slot = nullptr;
  std::string group_name;
  std::uint32_t index = 0;
  ConsumerOptions options;
  Status last = Status::Ok;
  std::uint32_t free_top = 0;                 // free in-flight entries: free_stack[0 .. free_top)
  std::uint32_t free_stack[kMaxInFlight];
  // What this process believes entry k holds: position + 1, 0 when free, kAway when the entry was
  // taken from us (visibility timeout) and is not yet free again.
  std::uint64_t held[kMaxInFlight] = {};
  static constexpr std::uint64_t kAway = ~0ull;
  std::uint32_t polls = 0;
  std::uint32_t generation = 0;               // of the group slot when we joined
  std::uint64_t delivered = 0;
  std::uint64_t pending_pos = ~0ull;          // a position seen claimed but not committed
  std::uint64_t pending_since = 0;
  std::uint32_t pending_sleeps = 0;           // futex sleeps behind it so far (Wait::Block)
  std::uint64_t bad_given_back = ~0ull;       // a give-back entry take_given_back() dropped as no message
  std::string deferred;                       // an Error found while a batch held messages: the next poll throws it
  // A given-back message taken from the list but not handed out by that call (keep()): entry
  // `kept` (kNoEntry: none) still holds it, off the free stack; the next call hands it out first.
  static constexpr std::uint32_t kNoEntry = ~0u;
  std::uint32_t kept = kNoEntry;
  std::uint64_t kept_at = 0;                  // its position
  // The order in which this consumer got each held message (its `delivered` count then), for
  // ack_up_to().
  std::uint64_t taken_as[kMaxInFlight] = {};
  // A run of committed records read from the cursor, to be taken with one cursor move: each
  // record's header fields are loaded (and checked) once, before the take, and used after it.
  struct RunRecord {
    std::uint64_t pos;
    ring::ReadResult r;
    ring::RecordFields f;
  };
  static constexpr std::uint32_t kMaxRun = 64;  // records one take moves the cursor past at most
  RunRecord run[kMaxRun];

  std::unique_ptr<Channel> dlq;               // NAME.dlq, opened at the first dead letter

  std::uint64_t holder_id() const noexcept { return reinterpret_cast<std::uintptr_t>(this); }
  // M becomes the message at POS, now held in entry K (the top of the free stack) with DELIVERIES
  // deliveries; R is what read() found, F its fields (load_record()). The caller stores
  // slot->delivered.
  void make(Message& m, std::uint64_t pos, const ring::ReadResult& r, const ring::RecordFields& f, std::uint32_t k,
            std::uint32_t deliveries) noexcept;
  // make() with the fields loaded now; a record that breaks the layout is let go and thrown.
  Message hold(std::uint64_t pos, const ring::ReadResult& r, std::uint32_t k, std::uint32_t deliveries);
  // Reads the committed records from the cursor POS on, whose first R is a Record: up to MAX of
  // them (stopping before one whose fields do not load, and at anything not committed), into
  // run[]; returns how many (at least one), and the position after the last in END (past any
  // padding after it). A first record whose fields do not load is a run of one, first_bad.
  std::uint32_t read_run(std::uint64_t pos, const ring::ReadResult& r, std::uint32_t max, std::uint64_t& end) noexcept;
  bool first_bad = false;
  // Takes the run of N records read_run() found, moving the cursor from run[0].pos to END in the
  // entries at the top of the free stack; false when another consumer of the group took it first.
  bool take_run(std::uint32_t n, std::uint64_t end, std::uint64_t taker) noexcept;
  // The same for the group's exclusive consumer: plain stores, nobody else takes.
  void take_run_exclusive(std::uint32_t n, std::uint64_t end) noexcept;
  // The messages of the run of N just taken, into OUT (hold() throws for a first_bad record).
  void deliver_run(std::uint32_t n, Message* out);
  // Entry K's ack: NotHeld if this consumer does not hold POS there (any more).
  Status ack_entry(std::uint32_t k, std::uint64_t pos) noexcept;
  void wake_producers() noexcept {
    ring::RingHeader& h = ring->header();
    if (h.space_waiters.load(std::memory_order_relaxed) != 0) {
      h.space_seq.fetch_add(1, std::memory_order_release);
      futex_wake_all(h.space_seq);
    }
  }
  // Takes the lowest eligible message of the group's give-back list into entry K; ~0 if none.
  std::uint64_t take_given_back(std::uint32_t k) noexcept;
  // Copies a message delivered max_deliveries times to NAME.dlq (the caller then acks it here).
  // False when that failed (NAME.dlq cannot be opened, has no room, ...): the caller gives the
  // message back. Never throws.
  bool dead_letter(const Message& m) noexcept;
  // Entries taken from us are free again once the mover let go of them (the kept one is unkeep()'s).
  void reclaim_away() noexcept {
    for (std::uint32_t k = 0; k < options.max_in_flight; ++k)
      if (held[k] == kAway && k != kept && slot->in_flight[k].load(std::memory_order_seq_cst) == 0) {
        held[k] = 0;
        free_stack[free_top++] = k;
      }
  }
  // With a visibility timeout, the delivery time is stamped before the entry is published (a
  // reaper must never pair a new entry with an old time), and cleared when the entry is let go.
  void stamp(std::uint32_t k) noexcept {
    if (slot->visibility_timeout_ns.load(std::memory_order_relaxed))
      slot->delivered_at[k].store(now_ns(), std::memory_order_relaxed);
  }
  // Entry K was cleared (acked, or moved to the give-back list).
  void let_go(std::uint32_t k) noexcept {
    slot->delivered_at[k].store(0, std::memory_order_relaxed);
    held[k] = 0;
    free_stack[free_top++] = k;
    // Holding nothing: our low word no longer holds the ring back (release: after the clear).
    if (free_top == options.max_in_flight) slot->low_held.store(~0ull, std::memory_order_release);
  }
  std::uint32_t takes = 0;  // from the cursor
  // Before the entries of a take from the cursor at FROM: our low word at or below it (see
  // ChannelState::cheap_gate()). Holding nothing, FROM is our lowest; holding something, the word
  // is at or below it already (what we took before is below the cursor, what we took from the
  // list lowered it), and is raised to what the table holds every 64th take.
  void lower_for_take(std::uint64_t from) noexcept {
    if (free_top == options.max_in_flight) {
      slot->low_held.store(from, std::memory_order_relaxed);
    } else if ((++takes & 63) == 0) {
      std::uint64_t low = from;
      for (std::uint32_t k = 0; k < options.max_in_flight; ++k)
        if (const std::uint64_t v = slot->in_flight[k].load(std::memory_order_relaxed)) low = std::min(low, held_position(v));
      slot->low_held.store(low, std::memory_order_relaxed);
    }
  }
  // The given-back message at POS, taken into entry K (the top of the free stack), is not handed
  // out by this call (a bad entry is reported first, or OUT is delivered before a record that does
  // not load is reported). It is not put back on the list: others may have filled the list since
  // we took it (that failed, and the message was let go of: lost). It stays held, gating the ring
  // and given back by a reaper if we die, and counts no delivery until unkeep() hands it out.
  void keep(std::uint32_t k, std::uint64_t pos) noexcept {
    --free_top;
    held[k] = kAway;  // not ours to ack; reclaim_away() passes over it
    kept = k;
    kept_at = pos;
    slot->deliveries[k].store(slot->deliveries[k].load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  }
  // Where take() would take from the give-back list: the kept entry goes back on top of the free
  // stack and its message's position is returned, to be handed out as a given-back one, its
  // visibility timeout counted from now. ~0 if a reaper gave it back meanwhile (a visibility
  // timeout): the entry is free once the mover let go of it (reclaim_away()).
  std::uint64_t unkeep() noexcept {
    const std::uint32_t k = std::exchange(kept, kNoEntry);
    if (slot->in_flight[k].load(std::memory_order_seq_cst) != kept_at + 1) {
      reclaim_away();
      return ~0ull;
    }
    held[k] = 0;
    free_stack[free_top++] = k;
    slot->deliveries[k].store(slot->deliveries[k].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    stamp(k);  // a reaper that read the old time may still move it: then the user's ack says NotHeld
    return kept_at;
  }
  // Our group was removed: what it held goes with it (as in ChannelState::move_held()), the kept
  // message too, which no longer holds the ring back.
  void drop_kept() noexcept {
    if (kept == kNoEntry) return;
    const std::uint32_t k = std::exchange(kept, kNoEntry);
    std::uint64_t v = kept_at + 1;
    if (slot->in_flight[k].compare_exchange_strong(v, 0, std::memory_order_seq_cst)) let_go(k);
    // else a mover has it: kAway, free once it lets go (reclaim_away())
  }
  // A record stays Pending: after a while, ask the ring whether its claimer died.
  void pending(std::uint64_t pos) noexcept {
    const std::uint64_t now = now_ns();
    if (pending_pos != pos) {
      pending_pos = pos;
      pending_since = now;
      pending_sleeps = 0;
    } else if (now - pending_since > kDeadClaimCheckNs) {
      ring->unblock(pos, self_token(), &ChannelState::alive);
      pending_since = now;
    }
  }
  // Waits (as options.wait says) for something to change at POS; false when DEADLINE passed.
  bool wait(std::uint64_t pos, ring::ReadResult::Kind kind, std::uint64_t deadline, unsigned& spins) noexcept;
};

bool ConsumerState::wait(std::uint64_t pos, ring::ReadResult::Kind kind, std::uint64_t deadline, unsigned& spins) noexcept {
  // Spinning looks at the clock and the producers' tail line only now and then: touching the
  // tail on every spin would take that line from the next producer's CAS.
  if (options.wait == Wait::Spin && (++spins & 255) != 0) {
    __builtin_ia32_pause();
    return true;
  }
  const bool claimed = kind == ring::ReadResult::Pending || ring->claimed(pos);
  if (claimed) pending(pos);
  else ch->reap_dead_consumers();  // rate-limited; reads no /proc most times
  Wait how = options.wait;
  // Its commit is most likely imminent: yield a little while before sleeping behind it.
  if (how == Wait::Block && claimed && now_ns() - pending_since < kClaimYieldNs) how = Wait::Yield;
  switch (how) {
    case Wait::Spin:
      __builtin_ia32_pause();
      return now_ns() < deadline;
    case Wait::Yield:
      sched_yield();
      return now_ns() < deadline;
    case Wait::Block: {
      const std::uint64_t now = now_ns();
      if (now >= deadline) return false;
      ring::RingHeader& h = ring->header();
      const std::uint32_t v = h.data_seq.load(std::memory_order_acquire);
      // seq_cst pair with committed(): count ourselves a waiter, then look at the tail; the producer
      // claims (seq_cst CAS), then looks at the count. One of us sees the other.
      h.data_waiters.fetch_add(1, std::memory_order_seq_cst);
      // A message given back with a delay is waited for in short slices.
      std::uint64_t slice = group->given_back.load(std::memory_order_relaxed) ? 1'000'000 : kBlockSliceNs;
      bool sleep = h.tail.load(std::memory_order_seq_cst) <= pos;  // nothing claimed at POS yet
      if (!sleep) {
        // Claimed, not committed (an open zero-copy Claim, a producer descheduled or stopped):
        // its commit wakes us (committed() looks at data_waiters after the commit). The commit's
        // release store and that load are not fenced, so a wake-up may be lost to a commit made
        // exactly as we count ourselves; the slice bounds what that costs.
        const ring::ReadResult::Kind now_kind = ring->read(pos).kind;
        sleep = now_kind == ring::ReadResult::Pending || now_kind == ring::ReadResult::Empty;
        slice = std::min<std::uint64_t>(slice, kClaimFirstSliceNs << std::min<std::uint32_t>(pending_sleeps, 6));
        ++pending_sleeps;
      }
      if (sleep && group->state.load(std::memory_order_relaxed) == kActive)
        futex_wait(h.data_seq, v, std::chrono::nanoseconds(std::min(deadline - now, slice)));
      h.data_waiters.fetch_sub(1, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

[[gnu::always_inline]] inline void ConsumerState::make(Message& m, std::uint64_t pos, const ring::ReadResult& r,
                                                      const ring::RecordFields& f, std::uint32_t k, std::uint32_t deliveries) noexcept {
  --free_top;
  held[k] = pos + 1;
  taken_as[k] = ++delivered;
  const auto* body = reinterpret_cast<const std::byte*>(r.header) + ring::kHeaderBytes;
  m.id_ = InnerId{f.producer, f.seq};
  m.key_ = std::string_view(reinterpret_cast<const char*>(body), f.key_len);
  m.payload_ = std::span<const std::byte>(body + f.key_len, f.payload_len);
  m.position_ = pos;
  m.timestamp_ns_ = f.timestamp_ns;
  m.deliveries_ = deliveries;
  m.slot_ = k;
  m.holder_ = holder_id();
}

Message ConsumerState::hold(std::uint64_t pos, const ring::ReadResult& r, std::uint32_t k, std::uint32_t deliveries) {
  ring::RecordFields f;
  if (const char* why = ring::RecordRing::load_record(r, f)) {
    // The caller never gets this message: let go of the entry before reporting the record.
    slot->in_flight[k].store(0, std::memory_order_release);
    slot->delivered_at[k].store(0, std::memory_order_relaxed);
    last = Status::Corrupt;
    throw Error(std::make_error_code(std::errc::illegal_byte_sequence),
                "shmq channel '" + ch->name + "', group '" + group_name + "': corrupt record at position " +
                    std::to_string(pos) + ": " + why);
  }
  Message m;
  make(m, pos, r, f, k, deliveries);
  slot->delivered.store(delivered, std::memory_order_relaxed);  // our own line: no locked op
  last = Status::Ok;
  return m;
}

[[gnu::always_inline]] inline std::uint32_t ConsumerState::read_run(std::uint64_t pos, const ring::ReadResult& r, std::uint32_t max,
                                      std::uint64_t& end) noexcept {
  max = std::min({max, kMaxRun, free_top});
  std::uint32_t n = 0;
  first_bad = false;
  run[0].r = r;
  // Each step moves past one record or padding: bounded by MAX records and as many paddings.
  for (std::uint32_t steps = 0; n < max && steps < 2 * kMaxRun; ++steps) {
    RunRecord& e = run[n];  // e.r: what is at POS
    if (e.r.kind == ring::ReadResult::Padding) {
      pos = e.r.next;
    } else if (e.r.kind == ring::ReadResult::Record) {
      const bool loads = ring::RecordRing::load_record(e.r, e.f) == nullptr;
      if (!loads && n > 0) break;
      e.pos = pos;
      ++n;
      pos = e.r.next;
      if (!loads) {
        first_bad = true;  // taken alone, so that hold() reports it and the group moves on
        end = pos;
        break;
      }
    } else {
      break;  // not committed yet, or not a record to hand out in a run (the next poll says what)
    }
    end = pos;
    if (n < max) run[n].r = ring->read(pos);
  }
  return n;
}

[[gnu::always_inline]] inline bool ConsumerState::take_run(std::uint32_t n, std::uint64_t end, std::uint64_t taker) noexcept {
  const std::uint64_t from = run[0].pos;
  const std::uint32_t k0 = free_stack[free_top - 1];
  lower_for_take(from);
  // The run first (what decides its entries if we die), then its entries, tentative, then taken
  // with one CAS: a reclaim that sees the new cursor sees the entries (which gate) too; a reaper
  // that finds them tentative asks the run, and the run the cursor, whether we took them
  // (ChannelState::resolve_run()).
  slot->take_entry.store(k0, std::memory_order_relaxed);
  // release: pairs with confirm_taker()'s acquire (this slot's group and generation, and the entry).
  slot->take_from.store((from + 1) | kTentativeBit, std::memory_order_release);
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint32_t k = free_stack[free_top - 1 - i];
    // The delivery count and time before the entry: whoever copies the entry copies them.
    slot->deliveries[k].store(1, std::memory_order_relaxed);
    stamp(k);
    slot->in_flight[k].store((run[i].pos + 1) | kTentativeBit, i == 0 ? std::memory_order_seq_cst : std::memory_order_relaxed);
  }
  SHMQ_CRASH_POINT("poll.after_in_flight_store");
  // Full barrier: publishes the run and the entries above to a reclaim or reaper that reads the cursor.
  if (!cas_cursor(*group, from, taker, end, cursor_taker(generation, index, k0))) {
    for (std::uint32_t i = 0; i < n; ++i) slot->in_flight[free_stack[free_top - 1 - i]].store(0, std::memory_order_release);
    slot->take_from.store(0, std::memory_order_release);
    if (free_top == options.max_in_flight) slot->low_held.store(~0ull, std::memory_order_release);  // nothing held after all
    return false;  // another consumer of the group took it
  }
  SHMQ_CRASH_POINT("poll.after_cursor_cas");
  for (std::uint32_t i = 0; i < n; ++i) {
    // release: ours now; pairs with the acquire loads of gate() and of reapers.
    slot->in_flight[free_stack[free_top - 1 - i]].store(run[i].pos + 1, std::memory_order_release);
    if (i == 0 && n > 1) SHMQ_CRASH_POINT("poll.run.after_first_held");
  }
  slot->take_from.store(0, std::memory_order_release);  // decided: every entry says it
  return true;
}

[[gnu::always_inline]] inline void ConsumerState::take_run_exclusive(std::uint32_t n, std::uint64_t end) noexcept {
  // The group's only consumer (admit_consumer() keeps it so): nobody else moves the cursor, so
  // plain stores take the run. Tentative, then the cursor (release: a gate or checkpoint that
  // sees the cursor past a record sees its entry), then held. A reaper of ours decides each
  // tentative entry by the cursor alone (resolve_tentative()).
  lower_for_take(run[0].pos);
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint32_t k = free_stack[free_top - 1 - i];
    slot->deliveries[k].store(1, std::memory_order_relaxed);
    stamp(k);
    slot->in_flight[k].store((run[i].pos + 1) | kTentativeBit, std::memory_order_relaxed);
  }
  SHMQ_CRASH_POINT("poll.exclusive.after_in_flight_store");
  group->next.store(end, std::memory_order_release);
  SHMQ_CRASH_POINT("poll.exclusive.after_cursor_store");
  for (std::uint32_t i = 0; i < n; ++i) {
    slot->in_flight[free_stack[free_top - 1 - i]].store(run[i].pos + 1, std::memory_order_release);
    if (i == 0 && n > 1) SHMQ_CRASH_POINT("poll.run.after_first_held");
  }
}

[[gnu::always_inline]] inline void ConsumerState::deliver_run(std::uint32_t n, Message* out) {
  if (first_bad) {
    out[0] = hold(run[0].pos, run[0].r, free_stack[free_top - 1], 1);  // throws, unless it loads now
    return;
  }
  for (std::uint32_t i = 0; i < n; ++i) make(out[i], run[i].pos, run[i].r, run[i].f, free_stack[free_top - 1], 1);
  slot->delivered.store(delivered, std::memory_order_relaxed);  // our own line: no locked op
}

std::uint64_t ConsumerState::take_given_back(std::uint32_t k) noexcept {
  ch->lock_give_back(*group);
  if (group->state.load(std::memory_order_acquire) != kActive ||
      group->generation.load(std::memory_order_relaxed) != generation) {  // our group is gone: not its list
    ChannelState::unlock_give_back(*group);
    return ~0ull;
  }
  const std::uint64_t now = now_ns();
  // Every given-back position is checked against the ring before use: aligned, and in
  // [cleaned, tail) (an entry on the list gates the ring, so a real one is never below cleaned).
  const std::uint64_t cleaned = ring->cleaned(), tail = ring->tail();
  std::uint32_t best = kGiveBackEntries, present = 0;
  std::uint64_t best_pos = ~0ull;
  std::uint64_t low1 = ~0ull, low2 = ~0ull;  // the two lowest positions on the list
  for (std::uint32_t i = 0; i < kGiveBackEntries; ++i) {
    GiveBackEntry& e = group->give_back[i];
    const std::uint64_t p = e.position_plus1.load(std::memory_order_relaxed);
    if (!p) continue;
    if ((p - 1) % ring::kAlign != 0 || p - 1 < cleaned || p - 1 >= tail) {
      e.position_plus1.store(0, std::memory_order_seq_cst);  // not a message: dropped, reported by poll
      bad_given_back = p - 1;
      continue;
    }
    ++present;
    if (p - 1 < low1) {
      low2 = low1;
      low1 = p - 1;
    } else if (p - 1 < low2) {
      low2 = p - 1;
    }
    if (p - 1 < best_pos && e.not_before_ns.load(std::memory_order_relaxed) <= now) {
      best = i;
      best_pos = p - 1;
    }
  }
  // The count, as the list says (under the lock nothing else changes it): a count left wrong
  // (scribbled, or dropped entries) is put right rather than scanned for again at every poll.
  if (group->given_back.load(std::memory_order_relaxed) != present) group->given_back.store(present, std::memory_order_seq_cst);
  if (best < kGiveBackEntries) {
    GiveBackEntry& e = group->give_back[best];
    // The step first, for a successor if we die inside it (ChannelState::settle_give_back()).
    group->give_back_step_position.store(best_pos + 1, std::memory_order_seq_cst);
    group->give_back_step.store(give_back_step(GiveBackStep::Take, index, k, best), std::memory_order_seq_cst);
    slot->deliveries[k].store(e.deliveries.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    stamp(k);
    // Our low word first (see ChannelState::cheap_gate()), held, then off the list (see gate()).
    if (best_pos < slot->low_held.load(std::memory_order_relaxed)) slot->low_held.store(best_pos, std::memory_order_seq_cst);
    slot->in_flight[k].store(best_pos + 1, std::memory_order_seq_cst);
    SHMQ_CRASH_POINT("poll.take_given_back.after_hold");
    e.position_plus1.store(0, std::memory_order_seq_cst);
    SHMQ_CRASH_POINT("poll.take_given_back.after_clear");
    group->given_back.fetch_sub(1, std::memory_order_seq_cst);
    group->give_back_step.store(0, std::memory_order_seq_cst);
  }
  // The list's low word, exact again (it was lowered by every push).
  group->list_low.store(best < kGiveBackEntries && best_pos == low1 ? low2 : low1, std::memory_order_seq_cst);
  ChannelState::unlock_give_back(*group);
  return best_pos;
}

// Dead letters. Every copy from this group goes through one producer of NAME.dlq, "dlq-g<group
// slot>", which one process at a time makes and drops under the group's dead_letter_lock: the
// producer table of NAME.dlq holds one slot per group slot for good, however many processes come
// and go. The copy's dedup sequence is derived from the original's ring position (records are at
// least kHeaderBytes apart, so position / kHeaderBytes + 1 is one sequence per record): a copy
// made again after a crash between the copy and the ack is a Duplicate (the dead holder's
// announced copy is settled by the Producer's takeover), as long as it is within NAME.dlq's dedup
// window of the group's latest dead letter; beyond that, a second copy rather than a loss.
bool ConsumerState::dead_letter(const Message& m) noexcept {
  try {
    if (!dlq) {
      // As durable as the origin: the message is acked there once its copy is here, so a Memory
      // NAME.dlq would lose the dead letters of a durable channel with the host. Its journal is
      // DIR/NAME.dlq beside the origin's DIR/NAME.
      ChannelOptions o;
      o.durability = ch->options.durability;
      if (ch->durable()) {
        o.journal_dir = ch->journal_dir.parent_path();
        o.flush_interval = ch->options.flush_interval;
        o.retention = ch->options.retention;
        o.retention_bytes = ch->options.retention_bytes;
        o.mode = ch->options.mode;
      }
      o.max_message_bytes = ch->options.max_message_bytes;
      o.ring_bytes = std::max<std::size_t>(std::size_t(1) << 20, std::bit_ceil(4 * o.max_message_bytes));
      auto opened = std::make_unique<Channel>(Channel::open(ch->name + ".dlq", o));
      // The dead letters are kept for whoever comes to look, from the first one on.
      opened->ensure_group("dead-letters", Start::Earliest);
      dlq = std::move(opened);
    }
  } catch (...) {
    return false;  // given back, tried again later
  }
  const auto group_index = static_cast<std::uint32_t>(group - ch->groups);
  ring::lock_owner_word(group->dead_letter_lock, self_token(), &ChannelState::alive);
  bool done = false;
  try {
    Producer p(*dlq, "dlq-g" + std::to_string(group_index));
    constexpr std::uint32_t kReasonMaxDeliveries = 1;
    const Published r = publish_copy(p, m, kReasonMaxDeliveries, m.position() / ring::kHeaderBytes + 1);
    SHMQ_CRASH_POINT("dead_letter.after_copy");
    done = r.status == Status::Ok || r.status == Status::Duplicate;
    // A Duplicate (a copy made before a crash) says nothing of durability: on a Sync NAME.dlq the
    // message is acked here only once its copy is durable there.
    if (r.status == Status::Duplicate && dlq->options().durability == Durability::Sync && r.position != kNoPosition)
      done = p.wait_durable(r.position, std::chrono::seconds(1));
    if (r.status == Status::Ok) group->dead_lettered.fetch_add(1, std::memory_order_relaxed);
  } catch (...) {
    done = false;
  }
  ring::unlock_owner_word(group->dead_letter_lock);
  return done;
}

}  // namespace detail

Consumer::Consumer(Channel& channel, std::string_view group, const ConsumerOptions& options)
    : state_(std::make_unique<detail::ConsumerState>()) {
  detail::ChannelState& s = channel.state();
  detail::check_slot_name(s.name, "group", group);
  if (options.max_in_flight == 0 || options.max_in_flight > detail::kMaxInFlight)
    s.fail(std::errc::invalid_argument, "max_in_flight " + std::to_string(options.max_in_flight) +
                                            " must be between 1 and " + std::to_string(detail::kMaxInFlight));
  detail::ConsumerState& c = *state_;
  c.ch = &s;
  c.ring = s.ring;
  c.group_name = std::string(group);
  c.options = options;
  int g = -1, free = -1;
  // A table full of dead consumers is reaped (forced) before a join is refused: a peer that
  // filled it and died must not lock everyone out until some poll happens to reap.
  for (int attempt = 0; attempt < 2 && free < 0; ++attempt) {
    if (attempt == 1) s.reap_dead_consumers(true);  // takes the registry lock itself
    detail::SetupRegistryLock lock(s, "add a consumer to group '" + std::string(group) + "'");
    g = s.ensure_group(group, options.start);
    s.admit_consumer(static_cast<std::uint32_t>(g), group, options.exclusive);
    for (std::uint32_t i = 0; i < s.options.max_consumers && free < 0; ++i)
      if (s.consumers[i].state.load(std::memory_order_acquire) == detail::kFree) free = static_cast<int>(i);
    if (free < 0) {
      if (attempt == 1)
        s.fail(std::errc::no_space_on_device, "the consumer table is full (" + std::to_string(s.options.max_consumers) +
                                                  " live consumers); cannot add a consumer to group '" + std::string(group) + "'");
      continue;
    }
    detail::ConsumerSlot& slot = s.consumers[free];
    for (auto& e : slot.in_flight) e.store(0, std::memory_order_relaxed);
    slot.group = static_cast<std::uint32_t>(g);
    slot.group_generation.store(s.groups[g].generation.load(std::memory_order_relaxed), std::memory_order_relaxed);
    slot.max_in_flight = options.max_in_flight;
    slot.exclusive.store(options.exclusive ? 1 : 0, std::memory_order_relaxed);
    slot.take_from.store(0, std::memory_order_relaxed);
    slot.take_entry.store(0, std::memory_order_relaxed);
    slot.low_held.store(~0ull, std::memory_order_relaxed);  // holds nothing
    slot.visibility_timeout_ns = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(options.visibility_timeout).count());
    for (auto& e : slot.delivered_at) e.store(0, std::memory_order_relaxed);
    slot.delivered.store(0, std::memory_order_relaxed);
    slot.owner.store(detail::self_token(), std::memory_order_relaxed);
    slot.heartbeat_ns.store(detail::now_ns(), std::memory_order_relaxed);
    slot.state.store(detail::kActive, std::memory_order_release);  // pairs with the acquire in gate()
  }
  detail::ConsumerSlot& slot = s.consumers[free];
  c.index = static_cast<std::uint32_t>(free);
  c.slot = &slot;
  c.group = &s.groups[g];
  c.generation = slot.group_generation.load(std::memory_order_relaxed);
  for (std::uint32_t k = 0; k < options.max_in_flight; ++k) c.free_stack[k] = options.max_in_flight - 1 - k;
  c.free_top = options.max_in_flight;
}

Consumer::Consumer(Consumer&&) noexcept = default;
Consumer& Consumer::operator=(Consumer&& other) noexcept {
  if (this != &other) {
    Consumer old(std::move(*this));
    state_ = std::move(other.state_);
  }
  return *this;
}

Consumer::~Consumer() {
  if (!state_) return;
  detail::ConsumerState& c = *state_;
  detail::RegistryLock lock(*c.ch);
  // What this consumer still holds goes back to the group, to be delivered again. If the
  // group's give-back list is full the slot stays (gating those messages) until a reaper, which
  // sees its owner gone, hands them over.
  if (!c.ch->release_consumer(c.index)) c.slot->owner.store(0, std::memory_order_release);
  c.ch->wake_consumers();
}

namespace {

// poll() (ONE: OUT holds one message) and poll_batch(): one body, which the compiler specialises
// for the single message (its runs of one record cost no loops).
template <bool kOne>
std::size_t take(Consumer& self, detail::ConsumerState& c, std::span<Message> out, std::chrono::nanoseconds timeout) {
  const std::size_t cap = kOne ? 1 : out.size();  // known to the compiler for poll()
  if ((++c.polls & 1023) == 0) c.ch->reap_dead_consumers();  // busy consumers look too (rate-limited)
  constexpr std::uint32_t kNoEntry = detail::ConsumerState::kNoEntry;
  if (c.free_top == 0) c.reclaim_away();
  if (c.free_top == 0 && c.kept == kNoEntry) {
    c.last = Status::WouldBlock;
    return 0;
  }
  std::size_t n = 0;             // messages in OUT so far
  std::uint64_t deadline = 0;  // read the clock only once there is something to wait for
  unsigned spins = 0;
  for (;;) {
    if (c.group->state.load(std::memory_order_relaxed) != detail::kActive ||
        c.group->generation.load(std::memory_order_relaxed) != c.generation) {  // removed (and maybe reused)
      if (n) break;
      c.drop_kept();
      c.last = Status::Closed;
      return 0;
    }
    if (n == cap) break;
    if (c.free_top == 0 && c.kept == kNoEntry) {  // a dead letter that could not be moved anywhere holds the last entry
      if (n) break;
      c.last = Status::WouldBlock;
      return 0;
    }
    if (n == 0 && !c.deferred.empty()) {  // found while OUT held messages: reported now
      c.last = Status::Corrupt;
      throw Error(std::make_error_code(std::errc::illegal_byte_sequence), std::exchange(c.deferred, std::string()));
    }
    // Redeliveries go before newer messages; the one a previous call kept first of all.
    if (c.kept != kNoEntry || c.group->given_back.load(std::memory_order_relaxed) != 0) {
      // A give-back entry that is no message is dropped, and reported: by this call if OUT is
      // empty, else by the next one (OUT is delivered first).
      const auto report = [&](std::string what) {
        if (n) {
          c.deferred = std::move(what);
          return;
        }
        c.last = Status::Corrupt;
        throw Error(std::make_error_code(std::errc::illegal_byte_sequence), what);
      };
      const auto where = [&] { return "shmq channel '" + c.ch->name + "', group '" + c.group_name + "': "; };
      std::uint64_t pos = ~0ull;
      if (c.kept == kNoEntry) {
        pos = c.take_given_back(c.free_stack[c.free_top - 1]);
      } else if ((pos = c.unkeep()) == ~0ull) {
        continue;  // it went back to the list meanwhile: look again
      }
      const std::uint32_t k = c.free_stack[c.free_top - 1];
      SHMQ_POLL_HOOK(detail::PollStep::AfterTakeGivenBack);
      if (c.bad_given_back != ~0ull) {
        const std::uint64_t bad = std::exchange(c.bad_given_back, ~0ull);
        if (pos != ~0ull) c.keep(k, pos);
        report(where() + "a give-back entry names position " + std::to_string(bad) +
               ", which is not a record position of the ring (dropped)");
        break;
      }
      if (pos != ~0ull) {
        const ring::ReadResult r = c.ring->read(pos);
        if (r.kind != ring::ReadResult::Record) {
          // Not handed out, and it must not gate the ring: let go of the entry first.
          c.slot->in_flight[k].store(0, std::memory_order_release);
          report(where() + "a message given back at position " + std::to_string(pos) + " is no longer a record");
          break;
        }
        ring::RecordFields f;
        if (n && ring::RecordRing::load_record(r, f)) {
          c.keep(k, pos);  // corrupt: the next poll takes it alone and reports it (OUT is delivered)
          break;
        }
        const std::uint32_t deliveries = c.slot->deliveries[k].load(std::memory_order_relaxed);
        Message m;
        if (n) {
          c.make(m, pos, r, f, k, deliveries);  // the fields checked above, not loaded again
          c.slot->delivered.store(c.delivered, std::memory_order_relaxed);
        } else {
          m = c.hold(pos, r, k, deliveries);  // loads the fields; throws for a corrupt record
        }
        if (m.deliveries() <= c.ch->options.max_deliveries) {
          out[n++] = m;
          continue;
        }
        // Delivered max_deliveries times already: out of the line. If NAME.dlq is full (nobody
        // reads it), it waits here a second and is tried again; the line keeps moving meanwhile.
        if (c.dead_letter(m)) {
          self.ack(m);
        } else {
          // If even the give-back list is full, it stays held here (gating, never lost) and goes
          // back to the group when this consumer leaves.
          (void)self.nack(m, std::chrono::seconds(1));
        }
        continue;
      }
    }
    // acquire: pairs with the cursor CAS of another consumer of the group (cas_cursor()).
    std::uint64_t pos = c.group->next.load(std::memory_order_acquire);
    const ring::ReadResult r = c.ring->read(pos);
    switch (r.kind) {
      case ring::ReadResult::Record: {
        std::uint64_t end = 0;
        std::uint32_t got = 1;
        if constexpr (kOne) {  // read_run() of one record, without its loop
          c.run[0].pos = pos;
          c.run[0].r = r;
          c.first_bad = ring::RecordRing::load_record(r, c.run[0].f) != nullptr;
          end = r.next;
        } else {
          got = c.read_run(pos, r, static_cast<std::uint32_t>(std::min<std::size_t>(cap - n, ~0u)), end);
        }
        if (c.first_bad && n) break;  // OUT is delivered; the next poll reports the record
        if (c.options.exclusive) {
          c.take_run_exclusive(got, end);
        } else {
          // After the cursor (ChannelState::resolve_run() says why the order matters).
          const std::uint64_t taker = c.group->next_taker.load(std::memory_order_acquire);
          if (detail::taker_generation(taker) != c.generation) {
            // The slot went to another group (the top of the loop sees it), or the word is scribbled.
            if (c.group->generation.load(std::memory_order_relaxed) != c.generation) continue;
            if (n) break;
            c.last = Status::Corrupt;
            return 0;
          }
          if (((taker >> 8) & 0xffffff) != c.index + 1)  // our own takes we confirm ourselves
            c.ch->confirm_taker(static_cast<std::uint32_t>(c.group - c.ch->groups), pos, taker);
          if (!c.take_run(got, end, taker)) continue;  // another consumer of the group took it
        }
        if (c.group->state.load(std::memory_order_seq_cst) != detail::kActive) {
          // Removed before the take (its cursor stopped gating the ring, so what read_run() saw may
          // have been reused before the entries gated it): nothing of it is handed out.
          for (std::uint32_t i = 0; i < got; ++i) c.slot->in_flight[c.free_stack[c.free_top - 1 - i]].store(0, std::memory_order_release);
          continue;  // the top of the loop says Closed
        }
        c.deliver_run(got, &out[n]);
        n += got;
        break;
      }
      case ring::ReadResult::Padding:
        if (c.options.exclusive) c.group->next.store(r.next, std::memory_order_release);
        else c.group->next.compare_exchange_strong(pos, r.next, std::memory_order_acq_rel, std::memory_order_relaxed);
        continue;
      case ring::ReadResult::Corrupt:
        if (c.group->next.load(std::memory_order_acquire) != pos) continue;  // a cursor that moved on: read it again
        if (n) break;
        c.last = Status::Corrupt;
        throw Error(std::make_error_code(std::errc::illegal_byte_sequence),
                    "shmq channel '" + c.ch->name + "', group '" + c.group_name + "': corrupt record at position " +
                        std::to_string(pos) + ": " + r.why);
      case ring::ReadResult::Empty:
      case ring::ReadResult::Pending:
        if (n) break;
        // poll(0) in a loop: look for a dead claim now and then (it reads the producers' tail line).
        if (timeout.count() <= 0 && (r.kind == ring::ReadResult::Pending || ((c.polls & 63) == 0 && c.ring->claimed(pos))))
          c.pending(pos);
        if (timeout.count() > 0 && deadline == 0) deadline = detail::now_ns() + static_cast<std::uint64_t>(timeout.count());
        if (timeout.count() <= 0 || !c.wait(pos, r.kind, deadline, spins)) {
          c.last = Status::Timeout;
          return 0;
        }
        continue;
    }
    break;  // a run taken (or a stop after messages in OUT): delivered
  }
  c.last = Status::Ok;
  return n;
}

}  // namespace

std::optional<Message> Consumer::poll(std::chrono::nanoseconds timeout) {
  std::optional<Message> m;  // the one object returned (no copy)
  if (state_ && take<true>(*this, *state_, std::span<Message>(&m.emplace(), 1), timeout) == 0) m.reset();
  return m;
}

std::size_t Consumer::poll_batch(std::span<Message> out, std::chrono::nanoseconds timeout) {
  if (!state_ || out.empty()) return 0;
  return take<false>(*this, *state_, out, timeout);
}

[[gnu::always_inline]] inline Status detail::ConsumerState::ack_entry(std::uint32_t k, std::uint64_t pos) noexcept {
  if (k >= options.max_in_flight || held[k] != pos + 1) return Status::NotHeld;
  std::uint64_t expected = pos + 1;
  SHMQ_CRASH_POINT("ack.before_clear");
  if (options.visibility_timeout.count() == 0) {
    // Nobody else moves what a live consumer without a visibility timeout holds (reapers take
    // only a dead one's, and its own nack runs on this thread): a plain store, no locked op.
    // release: this consumer's reads of the message happen before a reclaim that sees the entry
    // empty (acquire in gate()).
    slot->in_flight[k].store(0, std::memory_order_release);
  } else if (!slot->in_flight[k].compare_exchange_strong(expected, 0, std::memory_order_acq_rel, std::memory_order_relaxed)) {
    // release, as above. A CAS, not a store: a message being moved away past its visibility
    // timeout carries kMovingBit, and then the ack loses.
    held[k] = kAway;
    return Status::NotHeld;
  }
  let_go(k);
  return Status::Ok;
}

Status Consumer::ack(const Message& m) {
  if (!state_) return Status::Closed;
  detail::ConsumerState& c = *state_;
  if (m.holder_ != c.holder_id()) return Status::NotHeld;
  const Status st = c.ack_entry(m.slot_, m.position_);
  if (st == Status::Ok) c.wake_producers();
  return st;
}

std::size_t Consumer::ack(std::span<const Message> batch) {
  if (!state_) return 0;
  detail::ConsumerState& c = *state_;
  std::size_t acked = 0;
  for (const Message& m : batch) acked += m.holder_ == c.holder_id() && c.ack_entry(m.slot_, m.position_) == Status::Ok;
  if (acked) c.wake_producers();
  return acked;
}

std::size_t Consumer::ack_up_to(const Message& m) {
  if (!state_) return 0;
  detail::ConsumerState& c = *state_;
  if (m.holder_ != c.holder_id() || m.slot_ >= c.options.max_in_flight || c.held[m.slot_] != m.position_ + 1) return 0;
  const std::uint64_t upto = c.taken_as[m.slot_];
  std::size_t acked = 0;
  for (std::uint32_t k = 0; k < c.options.max_in_flight; ++k) {
    const std::uint64_t h = c.held[k];
    if (h != 0 && h != detail::ConsumerState::kAway && c.taken_as[k] <= upto) acked += c.ack_entry(k, h - 1) == Status::Ok;
  }
  if (acked) c.wake_producers();
  return acked;
}

Status Consumer::nack(const Message& m, std::chrono::nanoseconds delay) {
  if (!state_) return Status::Closed;
  detail::ConsumerState& c = *state_;
  if (m.holder_ != c.holder_id() || m.slot_ >= c.options.max_in_flight || c.held[m.slot_] != m.position_ + 1)
    return Status::NotHeld;
  const std::uint64_t not_before = delay.count() > 0 ? detail::now_ns() + static_cast<std::uint64_t>(delay.count()) : 0;
  const Status st = c.ch->move_held(c.index, m.slot_, m.position_ + 1, not_before);
  if (st == Status::Ok) {
    c.let_go(m.slot_);
    c.ch->wake_consumers();
  } else if (st == Status::NotHeld) {
    c.held[m.slot_] = detail::ConsumerState::kAway;  // moved away meanwhile
  }
  return st;  // WouldBlock: the group's give-back list is full, the message is still held
}

Status Consumer::status() const noexcept { return state_ ? state_->last : Status::Closed; }
std::uint32_t Consumer::in_flight() const noexcept {
  // The kept message (see ConsumerState::keep()) was not handed out: not counted.
  return state_ ? state_->options.max_in_flight - state_->free_top - (state_->kept != detail::ConsumerState::kNoEntry) : 0;
}
std::string_view Consumer::group() const noexcept { return state_ ? std::string_view(state_->group_name) : std::string_view(); }

}  // namespace shmq

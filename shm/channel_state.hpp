// What a process holds of an open channel: its mapping, the effective options, and the table
// operations shared by Channel, Producer and Consumer (registry lock, gate, group lookup).
#pragma once

#include <atomic>
#include <string>

#include "shm/process.hpp"
#include "shm/segment.hpp"

namespace shmq::detail {

class Journaler;

// The take of a record from group G's cursor: one 16-byte CAS of (next, next_taker) from
// (EXPECTED_NEXT, EXPECTED_TAKER) to (NEXT, TAKER). lock cmpxchg16b is a full barrier (seq_cst:
// it releases the taker's tentative in-flight entry stored before it, and acquires the previous
// taker's work); `next` alone is read and CASed (padding) as an ordinary 64-bit atomic, which x86
// keeps atomic against the 16-byte CAS. True if it succeeded.
inline bool cas_cursor(GroupSlot& g, std::uint64_t expected_next, std::uint64_t expected_taker, std::uint64_t next,
                       std::uint64_t taker) noexcept {
  static_assert(sizeof(std::atomic<std::uint64_t>) == 8);
  struct alignas(16) Pair {
    std::uint64_t next, taker;
  };
  bool ok;
  auto* word = reinterpret_cast<volatile Pair*>(&g.next);
  asm volatile("lock cmpxchg16b %1"
               : "=@ccz"(ok), "+m"(*word), "+a"(expected_next), "+d"(expected_taker)
               : "b"(next), "c"(taker)
               : "memory");
  return ok;
}

// GroupSlot::give_back_step: what the give-back lock holder is doing. A take moves list entry I
// into in-flight entry K of consumer slot C; a give moves entry K of C onto the list.
enum class GiveBackStep : std::uint64_t { None = 0, Take = 1, Give = 2 };
constexpr std::uint64_t give_back_step(GiveBackStep kind, std::uint32_t c, std::uint32_t k, std::uint32_t i) {
  return static_cast<std::uint64_t>(kind) << 32 | std::uint64_t(c & 0xfff) << 18 | std::uint64_t(k & 0xff) << 10 | (i & 0x3ff);
}

struct ChannelState {
  ChannelState();
  ~ChannelState();  // stops the journaler before the segment is unmapped
  std::string name;
  ChannelOptions options;              // effective: the segment's geometry
  std::filesystem::path journal_dir;   // DIR/NAME of a durable channel; empty for Memory
  RecoveryReport recovery;
  std::unique_ptr<Segment> segment;
  SegmentHeader* header = nullptr;
  ProducerSlot* producers = nullptr;
  GroupSlot* groups = nullptr;
  ConsumerSlot* consumers = nullptr;
  ring::RecordRing* ring = nullptr;
  std::unique_ptr<Journaler> journaler;  // durable channels: this process's candidate journaler
  // Set by this process's journaler when /dev/shm/shmq.NAME no longer names the segment it mapped
  // (removed, or replaced by a recovery): it stops journaling it (the journal belongs to the new
  // segment); publish returns Status::Closed, stats() says `removed`. Process-local: a peer's
  // segment can not make it lie. release/acquire: pairs with the loads in publish and stats.
  std::atomic<bool> removed{false};
  bool durable() const noexcept { return options.durability != Durability::Memory; }

  // The lowest ring position anybody still needs (cursors, held and given-back messages, the
  // journal); with no group at all, the tail. Takes every group's give-back lock and scans every
  // consumer's in-flight table: call it holding clean_lock or no lock at all.
  std::uint64_t gate() noexcept;
  // The same from a few words, with no lock: each group's cursor and list_low, each consumer's
  // low_held. At or below gate() (the words are stale-low); kNoCheapGate when a message moved
  // between a give-back list and an in-flight table while it read (GroupSlot::moves), and then
  // only gate() can say. Called by reclaim under clean_lock.
  static constexpr std::uint64_t kNoCheapGate = ~0ull;
  std::uint64_t cheap_gate() noexcept;
  // The cheap gate when it is enough (at or above ENOUGH), else the exact one.
  static std::uint64_t gate_of(void* self, std::uint64_t enough) noexcept {
    auto& s = *static_cast<ChannelState*>(self);
    const std::uint64_t g = s.cheap_gate();
    // A word scribbled to a position no record starts at is not trusted: the exact gate decides.
    return g != kNoCheapGate && g >= enough && g % ring::kAlign == 0 ? g : s.gate();
  }
  static bool alive(std::uint64_t token) noexcept { return token_alive(token); }

  // Makes room for a claim that reaches NEED_END; false when the slowest group holds it up.
  bool reclaim(std::uint64_t need_end, bool alone = false) noexcept {
    return ring->reclaim(need_end, self_token(), &ChannelState::gate_of, this, &ChannelState::alive, alone);
  }

  // Serialises changes to the producer, group and consumer tables (a dead holder is replaced).
  void lock_registry() noexcept { ring::lock_owner_word(header->registry_lock, self_token(), &ChannelState::alive); }
  void unlock_registry() noexcept { ring::unlock_owner_word(header->registry_lock); }
  // For the constructors: lock_registry(), but waiting at most options.registry_timeout while a
  // live process holds the lock; then throws Error (timed_out) naming the holder's pid and WHAT
  // the caller was doing.
  void lock_registry_for_setup(const std::string& what);

  // Index of the active group NAME, or -1. Call with the registry lock held.
  int find_group(std::string_view group) const noexcept;
  // Index of group NAME, created (starting per START) if needed; throws Error if the table is full.
  // Call with the registry lock held.
  int ensure_group(std::string_view group, Start start);

  [[noreturn]] void fail(std::errc code, const std::string& what) const;

  // Takes group G's give-back lock (moves odd from here on) and first finishes or undoes the step
  // of a holder that died (settle_give_back()); unlock with unlock_give_back().
  void lock_give_back(GroupSlot& g) noexcept;
  // Unlocks what lock_give_back() locked (moves even again).
  static void unlock_give_back(GroupSlot& g) noexcept;
  // Under G's give-back lock: completes or undoes the step recorded in g.give_back_step by a
  // holder that died, and counts the list again (its count may be one off).
  void settle_give_back(GroupSlot& g) noexcept;
  // Under the registry lock, before a consumer joins group G: the dead consumers whose tentative
  // takes the join would make undecidable are released (an exclusive joiner: all of them; any
  // joiner: dead exclusive ones), then an exclusive joiner beside a live consumer, or any joiner
  // beside a live exclusive one, is refused (Error naming the other's process). An exclusive
  // joiner leaves next_taker naming nobody: it never writes it.
  void admit_consumer(std::uint32_t g, std::string_view group, bool exclusive);
  // The owner of consumer slot C is dead or gone: decides its take in progress (take_from),
  // confirmed if its cursor CAS took the run, 0 if not. Before resolve_tentative().
  void resolve_run(std::uint32_t c) noexcept;
  // Consumer slot C's entry K is tentative (kTentativeBit) and its owner is dead or gone: keeps it
  // as held (bit cleared) if the owner's take got the record (its run, or for an exclusive
  // consumer the cursor alone, says so), drops it otherwise.
  void resolve_tentative(std::uint32_t c, std::uint32_t k) noexcept;
  // A consumer about to take a record from the cursor of group slot GROUP, which it read as NEXT
  // (first) and TAKER (then): the previous taker's run, if still undecided, is confirmed (its
  // take moved the cursor to NEXT), since the CAS that follows overwrites the only record of that
  // take.
  void confirm_taker(std::uint32_t group, std::uint64_t next, std::uint64_t taker) noexcept;

  // Moves what in-flight entry K of consumer slot C holds to its group's give-back list, to be
  // delivered again (before newer ones) from NOT_BEFORE_NS on. EXPECTED, if not 0, is the entry
  // the caller believes is there (its owner nacking). Under the group's give-back lock; an entry
  // found half-moved by a mover that died is finished first. Ok; NotHeld when the entry does not
  // hold EXPECTED (acked or moved meanwhile); WouldBlock when the list is full (nothing moved).
  Status move_held(std::uint32_t c, std::uint32_t k, std::uint64_t expected, std::uint64_t not_before_ns) noexcept;
  // Gives back everything consumer slot C holds and frees the slot. Returns false (slot kept,
  // still gating) if the group's give-back list filled up. Call with the registry lock held.
  bool release_consumer(std::uint32_t c) noexcept;
  // Looks for consumers whose process died and gives their messages back, and for messages held
  // past their consumer's visibility timeout. Rate-limited across the processes of the channel to
  // one look per options.liveness_interval / 2, unless FORCE.
  void reap_dead_consumers(bool force = false) noexcept;
  // Wakes blocked consumers (after messages were given back).
  void wake_consumers() noexcept;
};

// Producer slot INDEX announced a publish (pending_seq at pending_entry - 1) and its owner died:
// records the sequence in the slot's dedup window if the record was committed, then clears the
// announcement. Call with the registry lock held (a takeover of the name holds it too).
void settle_dead_publish(ChannelState& ch, std::uint32_t index) noexcept;

// Crash tests: a hook called inside every Producer::publish after the space is claimed (and the
// publish announced in the slot), after the commit, and after the dedup window recorded it.
enum class PublishStage { Claimed, Committed, Accepted };
void set_publish_hook(void (*hook)(PublishStage));

// Tests only: in builds with -DSHMQ_CRASH_POINTS=ON, called inside a poll at the named step, so
// that a test can play a peer there (fill the give-back list, ...); elsewhere the call is nothing.
// The pointer exists in every build, so that the tests compile in any (`make build`, `make demo`).
enum class PollStep { AfterTakeGivenBack };  // a given-back message is in an entry, not yet handed out
inline void (*g_poll_hook)(PollStep step) = nullptr;
#ifdef SHMQ_CRASH_POINTS
#define SHMQ_POLL_HOOK(step) \
  do {                       \
    if (::shmq::detail::g_poll_hook) ::shmq::detail::g_poll_hook(step); \
  } while (0)
#else
#define SHMQ_POLL_HOOK(step) \
  do {                       \
  } while (0)
#endif

// Lowest position in G's give-back list (~0 when empty).
std::uint64_t lowest_given_back(const GroupSlot& g) noexcept;

// RAII for the registry lock.
class RegistryLock {
 public:
  explicit RegistryLock(ChannelState& s) : s_(s) { s_.lock_registry(); }
  ~RegistryLock() { s_.unlock_registry(); }
  RegistryLock(const RegistryLock&) = delete;
  RegistryLock& operator=(const RegistryLock&) = delete;

 private:
  ChannelState& s_;
};

// RAII for the registry lock of a constructor (lock_registry_for_setup()).
class SetupRegistryLock {
 public:
  SetupRegistryLock(ChannelState& s, const std::string& what) : s_(s) { s_.lock_registry_for_setup(what); }
  ~SetupRegistryLock() { s_.unlock_registry(); }
  SetupRegistryLock(const SetupRegistryLock&) = delete;
  SetupRegistryLock& operator=(const SetupRegistryLock&) = delete;

 private:
  ChannelState& s_;
};

// Copies NAME into a fixed slot name field (checked to fit beforehand).
void set_slot_name(char (&field)[kMaxSlotName + 1], std::string_view name) noexcept;
inline std::string_view slot_name(const char (&field)[kMaxSlotName + 1]) noexcept {
  return {field, ::strnlen(field, kMaxSlotName)};
}

}  // namespace shmq::detail

// Channel: open, attach, remove, stats, group table.
#include <dirent.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cstring>

#include <bit>

#include "shm/channel_state.hpp"
#include "shm/crash_point.hpp"
#include "shm/durability.hpp"

namespace shmq {

const char* to_string(Status s) noexcept {
  switch (s) {
    case Status::Ok: return "Ok";
    case Status::Duplicate: return "Duplicate";
    case Status::WouldBlock: return "WouldBlock";
    case Status::Timeout: return "Timeout";
    case Status::TooLarge: return "TooLarge";
    case Status::Closed: return "Closed";
    case Status::Corrupt: return "Corrupt";
    case Status::NotHeld: return "NotHeld";
    case Status::InvalidSeq: return "InvalidSeq";
  }
  return "unknown Status";
}

namespace detail {

ChannelState::ChannelState() = default;
ChannelState::~ChannelState() { journaler.reset(); }

void set_slot_name(char (&field)[kMaxSlotName + 1], std::string_view name) noexcept {
  std::memset(field, 0, sizeof field);
  std::memcpy(field, name.data(), std::min(name.size(), kMaxSlotName));
}

void ChannelState::fail(std::errc code, const std::string& what) const {
  throw Error(std::make_error_code(code), "shmq channel '" + name + "': " + what);
}

std::uint64_t ChannelState::gate() noexcept {
  std::uint64_t g = ring->tail();
  // A durable channel reuses ring space only once the journal holds it.
  if (durable()) g = std::min(g, header->durable_position.load(std::memory_order_acquire));
  // Messages move between a group's give-back list and its consumers' in-flight tables only under
  // the group's give-back lock (move_held, take_given_back, settle_give_back). A scan that reads
  // the lists and the tables while a message moves can miss it in both places: given back by a
  // nack after the tables were read there, taken again before the lists were read again (the
  // SPIN model model/consumer.pml found it; reading the lists before and after the tables did not
  // close it). So they are read with every group's give-back lock held, in index order; the lock
  // order is clean_lock (held by reclaim, our caller), then the give-back locks (ensure_group
  // takes them in that order too). Reclaim is rare: once a lap, or while a producer waits.
  for (std::uint32_t i = 0; i < options.max_groups; ++i) lock_give_back(groups[i]);
  for (std::uint32_t i = 0; i < options.max_groups; ++i) {
    // acquire: pairs with the release store of kActive in ensure_group(); its cursor is set.
    if (groups[i].state.load(std::memory_order_acquire) != kActive) continue;
    // acquire: pairs with the consumers' release CAS of `next`, made after they recorded the
    // position in their in-flight table, so the scan below sees what they hold.
    g = std::min(g, groups[i].next.load(std::memory_order_acquire));
  }
  for (std::uint32_t i = 0; i < options.max_groups; ++i) {
    if (groups[i].state.load(std::memory_order_acquire) == kFree) continue;
    const std::uint64_t low = lowest_given_back(groups[i]);
    groups[i].list_low.store(low, std::memory_order_seq_cst);  // exact now, for the cheap gates to come
    g = std::min(g, low);
  }
  // What consumers hold stays in the ring until acked, whatever the state of their group.
  for (std::uint32_t c = 0; c < options.max_consumers; ++c) {
    ConsumerSlot& slot = consumers[c];
    if (slot.state.load(std::memory_order_acquire) != kActive) continue;
    const std::uint32_t n = std::min(slot.max_in_flight.load(std::memory_order_relaxed), kMaxInFlight);
    for (std::uint32_t k = 0; k < n; ++k) {
      // acquire: pairs with the release store of 0 in ack(): the consumer is done reading.
      const std::uint64_t held = slot.in_flight[k].load(std::memory_order_acquire);
      if (held) g = std::min(g, held_position(held));
    }
  }
  for (std::uint32_t i = options.max_groups; i-- > 0;) unlock_give_back(groups[i]);
  return g;
}

// Why the cheap gate is safe. Every position a consumer holds (tentative, held or moving) is at
// or above its slot's low_held, and every position on a group's list at or above the group's
// list_low, except while a message moves between the two, which happens only under the group's
// give-back lock, and its holder keeps `moves` odd from before its first store to after its
// last. So: the cursors first (a take from the cursor lowers low_held before its entries, and
// its CAS or store publishes both), then each group's moves (odd: a move in progress, ask gate()),
// its list_low, every consumer's low_held, and each group's moves again: the same sum means no
// holder took a give-back lock in between (moves only grows), so the words read cover every
// message. Stale-low words make it lower than gate(), never higher.
std::uint64_t ChannelState::cheap_gate() noexcept {
  std::uint64_t g = ring->tail();
  if (durable()) g = std::min(g, header->durable_position.load(std::memory_order_acquire));
  for (std::uint32_t i = 0; i < options.max_groups; ++i)
    if (groups[i].state.load(std::memory_order_acquire) == kActive) g = std::min(g, groups[i].next.load(std::memory_order_acquire));
  std::uint64_t before = 0, after = 0;
  // The sums are over every group slot, whatever its state: a group removed between the two
  // passes must not take its count out of the second sum (and hide another group's move).
  for (std::uint32_t i = 0; i < options.max_groups; ++i) {
    const std::uint64_t m = groups[i].moves.load(std::memory_order_seq_cst);
    if (m & 1) return kNoCheapGate;
    before += m;
    if (groups[i].state.load(std::memory_order_acquire) != kFree) g = std::min(g, groups[i].list_low.load(std::memory_order_seq_cst));
  }
  for (std::uint32_t c = 0; c < options.max_consumers; ++c)
    if (consumers[c].state.load(std::memory_order_acquire) == kActive) g = std::min(g, consumers[c].low_held.load(std::memory_order_seq_cst));
  for (std::uint32_t i = 0; i < options.max_groups; ++i) after += groups[i].moves.load(std::memory_order_seq_cst);
  return after == before ? g : kNoCheapGate;
}

std::uint64_t lowest_given_back(const GroupSlot& g) noexcept {
  std::uint64_t low = ~0ull;
  if (g.given_back.load(std::memory_order_seq_cst) == 0) return low;
  for (const GiveBackEntry& e : g.give_back)
    if (std::uint64_t p = e.position_plus1.load(std::memory_order_seq_cst)) low = std::min(low, p - 1);
  return low;
}

namespace {

// Puts POS on G's give-back list (the caller holds G's give-back lock). False when it is full.
bool push_given_back(GroupSlot& g, std::uint64_t pos, std::uint32_t deliveries, std::uint64_t not_before_ns) noexcept {
  for (GiveBackEntry& e : g.give_back) {
    if (e.position_plus1.load(std::memory_order_relaxed) != 0) continue;
    if (pos < g.list_low.load(std::memory_order_relaxed)) g.list_low.store(pos, std::memory_order_seq_cst);  // see cheap_gate()
    e.deliveries.store(deliveries, std::memory_order_relaxed);
    e.not_before_ns.store(not_before_ns, std::memory_order_relaxed);
    e.position_plus1.store(pos + 1, std::memory_order_seq_cst);  // see gate(): set, count, then the holder clears
    SHMQ_CRASH_POINT("push.after_entry");
    g.given_back.fetch_add(1, std::memory_order_seq_cst);
    return true;
  }
  return false;
}

bool on_given_back(const GroupSlot& g, std::uint64_t pos) noexcept {
  for (const GiveBackEntry& e : g.give_back)
    if (e.position_plus1.load(std::memory_order_relaxed) == pos + 1) return true;
  return false;
}

}  // namespace

void ChannelState::lock_give_back(GroupSlot& g) noexcept {
  ring::lock_owner_word(g.give_back_lock, self_token(), &ChannelState::alive);
  // Odd before the first store of ours (left odd by a holder that died: it stays so); see cheap_gate().
  if (const std::uint64_t m = g.moves.load(std::memory_order_relaxed); !(m & 1)) g.moves.store(m + 1, std::memory_order_seq_cst);
  settle_give_back(g);
}

void ChannelState::unlock_give_back(GroupSlot& g) noexcept {
  g.moves.store(g.moves.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);  // even: after our last store
  ring::unlock_owner_word(g.give_back_lock);
}

void ChannelState::settle_give_back(GroupSlot& g) noexcept {
  // A living holder clears its step before it unlocks: a step found here is a dead holder's.
  const std::uint64_t step = g.give_back_step.load(std::memory_order_seq_cst);
  if (step == 0) return;
  // The dead holder may have changed an entry without changing the count (or the reverse); the
  // list's low word is made exact again too (a holder leaves it low, never high: a push lowers it
  // before its entry).
  const auto recount = [&] {
    std::uint32_t n = 0;
    std::uint64_t low = ~0ull;
    for (const GiveBackEntry& e : g.give_back)
      if (const std::uint64_t p = e.position_plus1.load(std::memory_order_seq_cst)) {
        ++n;
        low = std::min(low, p - 1);
      }
    g.given_back.store(n, std::memory_order_seq_cst);
    g.list_low.store(low, std::memory_order_seq_cst);
  };
  const std::uint64_t pos1 = g.give_back_step_position.load(std::memory_order_seq_cst);
  const auto kind = static_cast<GiveBackStep>(step >> 32);
  const auto c = static_cast<std::uint32_t>((step >> 18) & 0xfff);
  const auto k = static_cast<std::uint32_t>((step >> 10) & 0xff);
  const auto i = static_cast<std::uint32_t>(step & 0x3ff);
  // Indices from shared memory: checked against our own bounds before use.
  if (pos1 != 0 && c < options.max_consumers && k < kMaxInFlight && i < kGiveBackEntries) {
    std::atomic<std::uint64_t>& entry = consumers[c].in_flight[k];
    const std::uint64_t v = entry.load(std::memory_order_seq_cst);
    if (kind == GiveBackStep::Take) {
      // take_given_back(): held entry K first, then cleared list entry I. Held: finish (off the
      // list). Not held: it died before holding, the list entry is intact; nothing to undo.
      if (v == pos1 && g.give_back[i].position_plus1.load(std::memory_order_seq_cst) == pos1)
        g.give_back[i].position_plus1.store(0, std::memory_order_seq_cst);
    } else if (kind == GiveBackStep::Give && (v & kMovingBit) && (v & ~kMovingBit) == pos1) {
      // move_held(): marked moving, then pushed, then cleared. Finish: on the list, then let go.
      const std::uint64_t pos = pos1 - 1;
      if (on_given_back(g, pos) || push_given_back(g, pos, consumers[c].deliveries[k].load(std::memory_order_relaxed), 0)) {
        // The count first: if we die after letting go, the list says it holds the message (the
        // dead holder may have pushed it without counting it), and consumers come for it. The
        // SPIN model found a redelivery that waited for ever the other way round (model/README.md).
        recount();
        entry.store(0, std::memory_order_seq_cst);
      } else {
        entry.store(v & ~kMovingBit, std::memory_order_seq_cst);  // list full: still held, ackable again
      }
    }
  }
  recount();
  g.give_back_step.store(0, std::memory_order_seq_cst);
}

// Why the cursor decides a dead shared consumer's take. The consumer stored take_entry = K and
// take_from = (P + 1) | kTentativeBit, then (P_i + 1) | kTentativeBit in the entries of the run of
// records P = P_1 < ... < P_n it takes, then tried the 16-byte CAS of (next, next_taker) from (P,
// T) to (N, taker(C, K)), where N is the end of the run. The entries gate the records, so a CAS
// from P is always a take of the run starting at P, by exactly one consumer. Read `next` first,
// then `next_taker`:
//  - if it took the run: the pair was (N, taker(C, K)) from its CAS on, until a later take's CAS;
//    every take first confirms the previous taker's run (confirm_taker()), so take_from is either
//    confirmed already (our CAS below fails and leaves it) or we read next > P and next_taker ==
//    taker(C, K);
//  - if it did not (it died before its CAS, or its CAS failed): next > P means another consumer
//    took P and wrote its own taker before we read next, and taker(C, K) never comes back (only C,
//    which is dead, writes it). And next == P means nobody took it yet.
// So: taken iff next > P and next_taker == taker(C, K). The decision is stored in take_from
// (confirmed, or 0) before any entry is decided by it, so a reaper that dies half-way leaves the
// next one the same decision. A taken entry is kept as held (bit cleared; given back by the
// caller); one that was not is dropped: the record was never delivered by it, so giving it back
// would deliver it twice (or, reclaimed since, a later lap).
void ChannelState::resolve_run(std::uint32_t c) noexcept {
  if (c >= options.max_consumers) return;
  ConsumerSlot& slot = consumers[c];
  std::uint64_t v = slot.take_from.load(std::memory_order_seq_cst);
  if (!(v & kTentativeBit)) return;
  const std::uint32_t gi = slot.group.load(std::memory_order_relaxed);
  const std::uint32_t k = slot.take_entry.load(std::memory_order_relaxed);
  bool taken = false;
  if (gi < options.max_groups && k < kMaxInFlight) {
    GroupSlot& g = groups[gi];
    const std::uint64_t next = g.next.load(std::memory_order_seq_cst);          // first
    const std::uint64_t taker = g.next_taker.load(std::memory_order_seq_cst);   // then
    taken = next > held_position(v) &&
            taker == cursor_taker(slot.group_generation.load(std::memory_order_relaxed), c, k);
  }
  // A CAS: a consumer about to take the next record may confirm the run meanwhile (then it was
  // taken, and the CAS fails and leaves it confirmed).
  slot.take_from.compare_exchange_strong(v, taken ? (v & ~kTentativeBit) : 0, std::memory_order_seq_cst);
}

void ChannelState::resolve_tentative(std::uint32_t c, std::uint32_t k) noexcept {
  if (c >= options.max_consumers || k >= kMaxInFlight) return;
  ConsumerSlot& slot = consumers[c];
  std::uint64_t v = slot.in_flight[k].load(std::memory_order_seq_cst);
  if (!(v & kTentativeBit) || (v & kMovingBit)) return;
  const std::uint64_t pos = held_position(v);
  bool taken = false;
  if (slot.exclusive.load(std::memory_order_relaxed) != 0) {
    // An exclusive consumer was the group's only one and never wrote next_taker; nobody else
    // moved the cursor since (admit_consumer() settles its entries before anyone joins).
    const std::uint32_t gi = slot.group.load(std::memory_order_relaxed);
    taken = gi < options.max_groups && groups[gi].next.load(std::memory_order_seq_cst) > pos;
  } else {
    // Decided by its run (resolve_run() first): a tentative entry belongs to the take in progress.
    const std::uint64_t run = slot.take_from.load(std::memory_order_seq_cst);
    taken = run != 0 && !(run & kTentativeBit) && pos >= held_position(run);
  }
  slot.in_flight[k].compare_exchange_strong(v, taken ? (v & ~kTentativeBit) : 0, std::memory_order_seq_cst);
}

void ChannelState::admit_consumer(std::uint32_t g, std::string_view group, bool exclusive) {
  GroupSlot& gs = groups[g];
  const std::uint32_t generation = gs.generation.load(std::memory_order_relaxed);
  const auto in_group = [&](const ConsumerSlot& slot) {
    return slot.state.load(std::memory_order_acquire) == kActive && slot.group.load(std::memory_order_relaxed) == g &&
           slot.group_generation.load(std::memory_order_relaxed) == generation;
  };
  for (std::uint32_t c = 0; c < options.max_consumers; ++c) {
    ConsumerSlot& slot = consumers[c];
    if (!in_group(slot)) continue;
    const std::uint64_t owner = slot.owner.load(std::memory_order_acquire);
    if (owner == 0 || !token_alive(owner)) {
      // Dead. An exclusive joiner settles every dead consumer's tentative take now (by its
      // taker word: the joiner never writes one), and any joiner a dead exclusive consumer's (by
      // "next > P": a later take by anyone would make it look taken). Kept (a full give-back
      // list) or not, the slot holds nothing tentative after: release_consumer() settles every
      // entry before it gives any back. Others are the reapers' as before.
      if (exclusive || slot.exclusive.load(std::memory_order_relaxed) != 0) {
        SHMQ_CRASH_POINT("reap.before_release");  // the same step as a reaper's: the registry lock held
        (void)release_consumer(c);
      }
      continue;
    }
    const std::string who = " of live process " + std::to_string(token_pid(owner));
    if (slot.exclusive.load(std::memory_order_relaxed) != 0)
      fail(std::errc::device_or_resource_busy, "cannot add " + std::string(exclusive ? "an exclusive" : "a") +
                                                   " consumer to group '" + std::string(group) + "': the exclusive consumer" + who +
                                                   " is the group's only consumer while it lives");
    if (exclusive)
      fail(std::errc::device_or_resource_busy, "cannot add an exclusive consumer to group '" + std::string(group) +
                                                   "': a consumer" + who + " is in the group (an exclusive consumer must be its only one)");
  }
  if (exclusive) gs.next_taker.store(std::uint64_t(generation) << 32, std::memory_order_seq_cst);  // nobody of this generation
}

void ChannelState::confirm_taker(std::uint32_t group, std::uint64_t next, std::uint64_t taker) noexcept {
  const std::uint64_t who = (taker >> 8) & 0xffffff;
  if (who == 0 || who > options.max_consumers) return;  // nobody known, or not an index of ours
  ConsumerSlot& slot = consumers[who - 1];
  // acquire: pairs with the release store of take_from in the take; the slot's group and
  // generation, stored before that (at its join), are the taker's.
  std::uint64_t v = slot.take_from.load(std::memory_order_acquire);
  // A run in progress from a position the cursor (read before TAKER) is past, at the entry TAKER
  // names, by a consumer of the group slot and generation TAKER names: the take that TAKER records
  // (its owner keeps at most one take in progress, starts the next one at or past that cursor,
  // and writes its taker only by a successful CAS). A slot given since to a consumer of another
  // group or generation holds another cursor's take, which this cursor says nothing about.
  if (!(v & kTentativeBit) || held_position(v) >= next || slot.take_entry.load(std::memory_order_relaxed) != (taker & 0xff) ||
      slot.state.load(std::memory_order_acquire) != kActive || slot.group.load(std::memory_order_relaxed) != group ||
      slot.group_generation.load(std::memory_order_relaxed) != taker_generation(taker))
    return;
  slot.take_from.compare_exchange_strong(v, v & ~kTentativeBit, std::memory_order_seq_cst);
}

Status ChannelState::move_held(std::uint32_t c, std::uint32_t k, std::uint64_t expected, std::uint64_t not_before_ns) noexcept {
  if (c >= options.max_consumers || k >= kMaxInFlight) return Status::NotHeld;
  ConsumerSlot& slot = consumers[c];
  const std::uint32_t gi = slot.group.load(std::memory_order_relaxed);
  if (gi >= options.max_groups) return Status::Corrupt;  // a scribbled group index: nowhere to give it back to
  GroupSlot& g = groups[gi];
  lock_give_back(g);
  Status st = Status::NotHeld;
  std::uint64_t v = slot.in_flight[k].load(std::memory_order_seq_cst);
  const bool matches = v != 0 && !(v & kTentativeBit) && (expected == 0 || (v & ~kMovingBit) == expected);
  if (matches && (g.state.load(std::memory_order_acquire) != kActive ||
                  g.generation.load(std::memory_order_relaxed) != slot.group_generation.load(std::memory_order_relaxed))) {
    // The consumer's group was removed (its slot maybe given to another group since): what it
    // held goes with it, never to the list of a group that never delivered it.
    if (slot.in_flight[k].compare_exchange_strong(v, 0, std::memory_order_seq_cst)) st = Status::Ok;
  } else if (matches) {
    const std::uint64_t pos = held_position(v);
    // The step first, for a successor if we die inside it (settle_give_back()).
    g.give_back_step_position.store(pos + 1, std::memory_order_seq_cst);
    g.give_back_step.store(give_back_step(GiveBackStep::Give, c, k, 0), std::memory_order_seq_cst);
    // Moving first: the owner's ack (a CAS from v) fails from here on; the entry still gates.
    const std::uint64_t held = v & ~kMovingBit;
    if ((v & kMovingBit) || slot.in_flight[k].compare_exchange_strong(v, held | kMovingBit, std::memory_order_seq_cst)) {
      SHMQ_CRASH_POINT("move_held.after_moving_bit");
      if (on_given_back(g, pos) ||
          push_given_back(g, pos, slot.deliveries[k].load(std::memory_order_relaxed), not_before_ns)) {
        SHMQ_CRASH_POINT("move_held.after_push");
        slot.in_flight[k].store(0, std::memory_order_seq_cst);  // on the list first, then let go (see gate())
        st = Status::Ok;
      } else {
        slot.in_flight[k].store(held, std::memory_order_seq_cst);  // list full: still held
        st = Status::WouldBlock;
      }
    }
    g.give_back_step.store(0, std::memory_order_seq_cst);
  }
  unlock_give_back(g);
  return st;
}

bool ChannelState::release_consumer(std::uint32_t c) noexcept {
  if (c >= options.max_consumers) return false;
  ConsumerSlot& slot = consumers[c];
  const std::uint32_t gi = slot.group.load(std::memory_order_relaxed);
  // A group index out of range (scribbled) names no group: what the slot holds has nowhere to go.
  const bool group_alive = gi < options.max_groups && groups[gi].state.load(std::memory_order_acquire) == kActive &&
                           groups[gi].generation.load(std::memory_order_relaxed) ==
                               slot.group_generation.load(std::memory_order_relaxed);
  // Its owner is dead or leaving: every take it never finished is settled first, before the
  // early returns below (a full give-back list), while the cursor and the taker word that decide
  // them are as it left them (a joiner's take, or an exclusive joiner's reset of the taker word,
  // would decide them wrong).
  resolve_run(c);
  for (std::uint32_t k = 0; k < kMaxInFlight; ++k) resolve_tentative(c, k);
  slot.take_from.store(0, std::memory_order_seq_cst);  // every entry it decided is decided
  for (std::uint32_t k = 0; k < kMaxInFlight; ++k) {
    if (!slot.in_flight[k].load(std::memory_order_seq_cst)) continue;
    if (!group_alive) {
      slot.in_flight[k].store(0, std::memory_order_seq_cst);  // a removed group's messages go with it
      continue;
    }
    if (move_held(c, k, 0, 0) == Status::WouldBlock) return false;
    if (slot.in_flight[k].load(std::memory_order_seq_cst) != 0) return false;
  }
  if (gi < options.max_groups)
    groups[gi].delivered.fetch_add(slot.delivered.load(std::memory_order_relaxed), std::memory_order_relaxed);
  slot.owner.store(0, std::memory_order_relaxed);
  slot.state.store(kFree, std::memory_order_release);
  return true;
}

void ChannelState::reap_dead_consumers(bool force) noexcept {
  const std::uint64_t now = now_ns();
  const auto every = static_cast<std::uint64_t>(options.liveness_interval.count()) * 1000000 / 2;
  std::uint64_t last = header->last_reap_ns.load(std::memory_order_relaxed);
  if (!force && (now - last < every || !header->last_reap_ns.compare_exchange_strong(last, now))) return;
  if (force) header->last_reap_ns.store(now, std::memory_order_relaxed);
  bool any = false;
  for (std::uint32_t c = 0; c < options.max_consumers; ++c) {
    ConsumerSlot& slot = consumers[c];
    if (slot.state.load(std::memory_order_acquire) != kActive) continue;
    const std::uint64_t owner = slot.owner.load(std::memory_order_acquire);
    if (owner != 0 && token_alive(owner)) {
      // Alive: only what it held past its visibility timeout goes back.
      if (slot.visibility_timeout_ns == 0 || slot.group >= options.max_groups) continue;
      for (std::uint32_t k = 0; k < std::min(slot.max_in_flight.load(std::memory_order_relaxed), kMaxInFlight); ++k) {
        const std::uint64_t v = slot.in_flight[k].load(std::memory_order_seq_cst);
        if (!v || (v & kTentativeBit)) continue;  // a take in progress is its owner's
        const std::uint64_t at = slot.delivered_at[k].load(std::memory_order_relaxed);
        if ((v & kMovingBit) || (at != 0 && now - at > slot.visibility_timeout_ns))
          any |= move_held(c, k, v & ~kMovingBit, 0) == Status::Ok;
      }
      continue;
    }
    RegistryLock lock(*this);
    // Looked at again under the lock: another process may have reaped it meanwhile.
    if (slot.state.load(std::memory_order_acquire) != kActive || slot.owner.load(std::memory_order_acquire) != owner) continue;
    SHMQ_CRASH_POINT("reap.before_release");
    any |= release_consumer(c);
  }
  if (any) wake_consumers();
}

void ChannelState::lock_registry_for_setup(const std::string& what) {
  const std::uint64_t me = self_token();
  const auto timeout = static_cast<std::uint64_t>(std::max<std::int64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(options.registry_timeout).count(), 0));
  const std::uint64_t deadline = now_ns() + timeout;
  for (unsigned round = 1;; ++round) {
    std::uint64_t holder = 0;
    // acquire: pairs with the release in unlock_owner_word(): the previous holder's work is visible.
    if (header->registry_lock.compare_exchange_weak(holder, me, std::memory_order_acquire, std::memory_order_relaxed)) return;
    if (holder != 0 && round % 64 == 0) {
      if (!token_alive(holder)) {
        // The holder died: take the lock from it (what it left half-done the tables' users redo).
        if (header->registry_lock.compare_exchange_strong(holder, me, std::memory_order_acquire, std::memory_order_relaxed)) return;
        continue;
      }
      if (now_ns() >= deadline)
        fail(std::errc::timed_out, "cannot " + what + ": the registry lock is held by live process " +
                                       std::to_string(token_pid(holder)) + " (waited " +
                                       std::to_string(timeout / 1'000'000) + " ms, ChannelOptions::registry_timeout)");
    }
    if (round < 256) {
      sched_yield();
    } else {
      timespec ts{0, 200'000};  // a holder that takes long: look every 0.2 ms, without a busy core
      ::nanosleep(&ts, nullptr);
    }
  }
}

void ChannelState::wake_consumers() noexcept {
  ring::RingHeader& h = ring->header();
  if (h.data_waiters.load(std::memory_order_seq_cst) != 0) {
    h.data_seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(h.data_seq);
  }
}

int ChannelState::find_group(std::string_view group) const noexcept {
  for (std::uint32_t i = 0; i < options.max_groups; ++i)
    if (groups[i].state.load(std::memory_order_acquire) == kActive && slot_name(groups[i].name) == group)
      return static_cast<int>(i);
  return -1;
}

int ChannelState::ensure_group(std::string_view group, Start start) {
  if (int i = find_group(group); i >= 0) return i;
  // A live exclusive consumer of a removed group may still make one plain store of the slot's
  // cursor (it sees the removal at its next look, not before that store): the slot is not given
  // to a new group until it has left. (A shared consumer's cursor CAS fails on a new generation.)
  const auto kept_by_exclusive = [&](std::uint32_t i) {
    for (std::uint32_t c = 0; c < options.max_consumers; ++c) {
      const ConsumerSlot& slot = consumers[c];
      if (slot.state.load(std::memory_order_acquire) != kActive || slot.group.load(std::memory_order_relaxed) != i ||
          slot.exclusive.load(std::memory_order_relaxed) == 0)
        continue;
      const std::uint64_t owner = slot.owner.load(std::memory_order_acquire);
      if (owner != 0 && token_alive(owner)) return true;
    }
    return false;
  };
  std::uint32_t kept = 0;
  for (std::uint32_t i = 0; i < options.max_groups; ++i) {
    GroupSlot& g = groups[i];
    if (g.state.load(std::memory_order_relaxed) != kFree) continue;
    if (kept_by_exclusive(i)) {
      ++kept;
      continue;
    }
    set_slot_name(g.name, group);
    g.start = static_cast<std::uint32_t>(start);
    g.delivered.store(0, std::memory_order_relaxed);
    g.dead_lettered.store(0, std::memory_order_relaxed);
    // A slot used before by a removed group: nothing of its give-back list carries over, and its
    // consumers (who still point here) see another generation and stop. Under the give-back lock,
    // whose movers check the generation under it: none of them pushes onto the new group's list,
    // and none is half-way through a push that the reset would cut in two.
    // Under the cleaning lock no reclaim runs: the start position cannot be reused under us, and
    // the next reclaim sees the group (it takes the same lock, then reads the table). Taken
    // before the give-back lock: reclaim's gate() takes the give-back locks under it.
    ring->lock_cleaning(self_token(), &ChannelState::alive);
    lock_give_back(g);
    for (GiveBackEntry& e : g.give_back) e.position_plus1.store(0, std::memory_order_seq_cst);
    g.given_back.store(0, std::memory_order_seq_cst);
    g.list_low.store(~0ull, std::memory_order_seq_cst);
    const std::uint32_t generation = g.generation.fetch_add(1, std::memory_order_seq_cst) + 1;
    const std::uint64_t pos = start == Start::Earliest ? ring->cleaned() : ring->tail();
    g.created_position = pos;
    // The taker first, then the cursor: a consumer of the old generation that reads the new cursor
    // then reads the new generation in the taker and stops; one that read the old cursor fails its
    // CAS (see cas_cursor()).
    g.next_taker.store(std::uint64_t(generation) << 32, std::memory_order_seq_cst);  // nobody of this generation yet
    g.next.store(pos, std::memory_order_seq_cst);
    g.state.store(kActive, std::memory_order_release);  // pairs with the acquire in gate()
    unlock_give_back(g);
    ring->unlock_cleaning();
    header->registry_version.fetch_add(1, std::memory_order_release);  // the journaler checkpoints it
    return static_cast<int>(i);
  }
  fail(std::errc::no_space_on_device,
       "the group table is full (" + std::to_string(options.max_groups) + " groups" +
           (kept ? ", " + std::to_string(kept) + " of them removed but kept until their live exclusive consumer leaves" : "") +
           "); cannot add group '" + std::string(group) + "'");
}

namespace {

void check_options(std::string_view name, const ChannelOptions& o) {
  auto bad = [&](const std::string& what) {
    throw Error(std::make_error_code(std::errc::invalid_argument), "shmq channel '" + std::string(name) + "': " + what);
  };
  if (o.ring_bytes < (64u << 10) || o.ring_bytes > (1u << 30) || (o.ring_bytes & (o.ring_bytes - 1)) != 0)
    bad("ring_bytes " + std::to_string(o.ring_bytes) + " is not a power of two between 64 KiB and 1 GiB");
  if (o.max_message_bytes == 0 || o.max_message_bytes > o.ring_bytes / 4)
    bad("max_message_bytes " + std::to_string(o.max_message_bytes) + " must be between 1 and a quarter of ring_bytes (" +
        std::to_string(o.ring_bytes / 4) + ")");
  if (o.max_producers == 0 || o.max_producers > ring::kMaxClaimers)
    bad("max_producers must be between 1 and " + std::to_string(ring::kMaxClaimers));
  if (o.max_groups == 0 || o.max_groups > 4096) bad("max_groups must be between 1 and 4096");
  if (o.max_consumers == 0 || o.max_consumers > 4096) bad("max_consumers must be between 1 and 4096");
  if (!std::has_single_bit(o.dedup_window) || o.dedup_window > kMaxDedupWindow)
    bad("dedup_window " + std::to_string(o.dedup_window) + " must be a power of two between 1 and " + std::to_string(kMaxDedupWindow));
  if (o.mode & ~0777u) bad("mode has bits outside 0777");
  if ((o.mode & 0600u) != 0600u) bad("mode must give the owner read and write (0600)");
  if (o.journal_segment_bytes < 4096) bad("journal_segment_bytes must be at least 4096");
  if (o.flush_interval.count() < 0) bad("flush_interval must not be negative");
}

std::unique_ptr<ChannelState> make_state(std::string_view name, const ChannelOptions& asked, bool create,
                                         bool run_journaler = true) {
  check_channel_name(name);
  ChannelOptions requested = asked;
  if (requested.max_message_bytes == 0)  // not set: follows the ring
    requested.max_message_bytes = std::min<std::size_t>(std::size_t{1} << 20, requested.ring_bytes / 4);
  if (create) check_options(name, requested);
  auto st = std::make_unique<ChannelState>();
  st->name = std::string(name);
  Durability wanted = requested.durability;  // a durable channel: the stronger of it and the journal's
  if (create && requested.durability != Durability::Memory) {
    // The journal's geometry wins over the options (its positions are ring positions), and a
    // segment made here is prepared from the journal before anybody can attach.
    RecoveryContext rc{std::string(name), journal_path_for(name, requested.journal_dir), requested, {}};
    adopt_journal_geometry(name, rc.dir, rc.options);
    wanted = rc.options.durability;
    rc.options.journal_dir = rc.dir;
    check_options(name, rc.options);
    st->segment = Segment::open(name, rc.options, create, &prepare_durable_segment, &rc);
    st->recovery = std::move(rc.report);
  } else {
    st->segment = Segment::open(name, requested, create);
  }
  SegmentHeader& h = st->segment->header();
  const Geometry& geo = st->segment->geometry();  // validated at attach: never the live header
  ChannelOptions eff = requested;
  eff.ring_bytes = geo.ring_bytes;
  eff.max_message_bytes = geo.max_message_bytes;
  eff.max_producers = geo.max_producers;
  eff.max_groups = geo.max_groups;
  eff.max_consumers = geo.max_consumers;
  eff.dedup_window = geo.dedup_window;
  eff.max_deliveries = geo.max_deliveries;
  eff.durability = geo.durability;
  if (create && requested.strict_geometry && !st->segment->created()) {
    auto differs = [&](const char* field, std::uint64_t want, std::uint64_t have) {
      if (want != have)
        st->fail(std::errc::invalid_argument, std::string(field) + " is " + std::to_string(have) +
                                                  " in the existing segment, " + std::to_string(want) +
                                                  " was asked (strict_geometry)");
    };
    differs("ring_bytes", requested.ring_bytes, geo.ring_bytes);
    differs("max_message_bytes", requested.max_message_bytes, geo.max_message_bytes);
    differs("max_producers", requested.max_producers, geo.max_producers);
    differs("max_groups", requested.max_groups, geo.max_groups);
    differs("max_consumers", requested.max_consumers, geo.max_consumers);
    differs("dedup_window", requested.dedup_window, geo.dedup_window);
  }
  if (create && wanted != eff.durability)
    st->fail(std::errc::invalid_argument, "the existing segment has another durability than the one asked");
  st->options = eff;
  st->header = &h;
  st->producers = st->segment->producers();
  st->groups = st->segment->groups();
  st->consumers = st->segment->consumers();
  st->ring = &st->segment->ring();
  if (st->durable()) {
    // From the options (open) or the header's claim (attach), checked against the journal's own
    // meta: never a path a peer wrote into shared memory (11.11).
    st->journal_dir = journal_dir_of(name, h, create ? journal_path_for(name, requested.journal_dir) : std::filesystem::path());
    st->options.journal_dir = st->journal_dir;
    if (run_journaler) st->journaler = std::make_unique<Journaler>(*st);
  }
  return st;
}

}  // namespace
}  // namespace detail

Channel::Channel(std::unique_ptr<detail::ChannelState> s) : state_(std::move(s)) {}
Channel::Channel(Channel&&) noexcept = default;
Channel& Channel::operator=(Channel&&) noexcept = default;
Channel::~Channel() = default;

Channel Channel::open(std::string_view name, const ChannelOptions& options) {
  return Channel(detail::make_state(name, options, true));
}

Channel Channel::attach(std::string_view name, bool run_journaler) {
  ChannelOptions none;
  none.durability = Durability::Memory;
  none.prefault = false;  // a look (the tools): its own page tables need not hold the whole ring
  return Channel(detail::make_state(name, none, false, run_journaler));
}

void Channel::remove(std::string_view name, const std::filesystem::path& journal_dir) {
  detail::check_channel_name(name);
  if (!journal_dir.empty()) {  // the journal only when asked by its directory: it is the data
    std::error_code ec;
    std::filesystem::remove_all(detail::journal_path_for(name, journal_dir), ec);
    if (ec)
      throw Error(ec, "shmq channel '" + std::string(name) + "': cannot remove its journal in " +
                          detail::journal_path_for(name, journal_dir).string());  // what() appends ec's text
    if (!std::filesystem::exists(std::filesystem::symlink_status(detail::segment_path(name)))) return;
  }
  if (const int err = detail::remove_segment(name); err != 0) {
    throw Error(std::error_code(err, std::generic_category()),
                "shmq channel '" + std::string(name) + "': cannot remove " + detail::segment_path(name) +
                    (err == ENOENT ? ": no such channel" : ""));  // what() appends strerror
  }
}

bool Channel::exists(std::string_view name) {
  detail::check_channel_name(name);
  // The name itself: a huge-page segment's link counts even while it names no file yet (its
  // creator died half-way), as a file not yet sized does.
  return std::filesystem::exists(std::filesystem::symlink_status(detail::segment_path(name)));
}

std::vector<std::string> Channel::list() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("shmq.", 0) == 0 && f.size() > 5) names.push_back(f.substr(5));
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string_view Channel::name() const noexcept { return state_->name; }
const ChannelOptions& Channel::options() const noexcept { return state_->options; }
const RecoveryReport& Channel::recovery() const noexcept { return state_->recovery; }

bool Channel::remove_group(std::string_view group) {
  detail::ChannelState& s = *state_;
  detail::check_slot_name(s.name, "group", group);
  detail::RegistryLock lock(s);
  const int i = s.find_group(group);
  if (i < 0) return false;
  // release: a reclaim that sees kFree no longer counts the group's cursor (its consumers' held
  // messages still count until they are acked).
  s.groups[i].state.store(detail::kFree, std::memory_order_seq_cst);  // seq_cst: a take that finds its group active after its CAS took records the cursor still gated
  s.header->registry_version.fetch_add(1, std::memory_order_release);
  return true;
}

void Channel::ensure_group(std::string_view group, Start start) {
  detail::ChannelState& s = *state_;
  detail::check_slot_name(s.name, "group", group);
  detail::RegistryLock lock(s);
  s.ensure_group(group, start);
}

ChannelStats Channel::stats() const {
  detail::ChannelState& s = *state_;
  ChannelStats out{};
  out.name = s.name;
  out.ring_bytes = s.options.ring_bytes;
  out.max_message_bytes = s.options.max_message_bytes;
  out.durability = s.options.durability;
  out.write_position = s.ring->tail();
  out.reclaimed_position = s.ring->cleaned();
  out.durable_position = s.durable() ? s.header->durable_position.load(std::memory_order_acquire) : out.write_position;
  out.removed = s.removed.load(std::memory_order_acquire) || (s.durable() && !s.segment->still_named(s.name));
  if (s.durable()) {
    const std::uint64_t j = s.header->journaler_token.load(std::memory_order_relaxed);
    out.journaler_pid = j && detail::token_alive(j) ? detail::token_pid(j) : 0;
    out.journal_dir = s.journal_dir.string();
    out.journal_errors = s.header->journal_errors.load(std::memory_order_relaxed);
    out.durable_lag_bytes = out.write_position - std::min(out.durable_position, out.write_position);
    // The oldest record not yet durable: the first one at or after the durable position (a few
    // paddings may come first). Ring space at or above the durable position is never reclaimed,
    // but the position comes from shared memory: read only inside [cleaned, tail).
    std::uint64_t p = out.durable_position;
    for (int i = 0; i < 4 && p < out.write_position && p >= s.ring->cleaned(); ++i) {
      const ring::ReadResult r = s.ring->read(p);
      if (r.kind == ring::ReadResult::Padding) {
        p = r.next;
        continue;
      }
      // read() vouched for the header's 40 bytes (a Record is at least that long); only the
      // timestamp is read, once (load_shared): a scribbled durable position may name space a
      // reclaim zeroes or a producer writes meanwhile (the figure is then garbage, and only a figure).
      if (r.kind == ring::ReadResult::Record) {
        const std::uint64_t now = detail::wall_clock_ns(), ts = ring::load_shared(r.header->timestamp_ns);
        out.durable_lag_ms = now > ts ? static_cast<double>(now - ts) / 1e6 : 0.0;
      }
      break;
    }
  }
  const std::uint64_t gate = s.gate();
  out.depth_bytes = out.write_position - std::min(gate, out.write_position);

  std::vector<std::uint32_t> consumers_of(s.options.max_groups, 0), held_by(s.options.max_groups, 0);
  for (std::uint32_t c = 0; c < s.options.max_consumers; ++c) {
    detail::ConsumerSlot& slot = s.consumers[c];
    if (slot.state.load(std::memory_order_acquire) != detail::kActive) continue;
    const std::uint64_t owner = slot.owner.load(std::memory_order_acquire);
    // Shared memory: the index is read once and checked; the same value indexes the vectors.
    const std::uint32_t gi = slot.group.load(std::memory_order_relaxed);
    if (gi >= s.options.max_groups) continue;
    std::uint32_t held = 0;
    for (std::uint32_t k = 0; k < std::min(slot.max_in_flight.load(std::memory_order_relaxed), detail::kMaxInFlight); ++k)
      held += slot.in_flight[k].load(std::memory_order_relaxed) != 0;
    held_by[gi] += held;
    if (owner && detail::token_alive(owner)) {
      ++consumers_of[gi];
      ++out.live_consumers;
    }
  }
  for (std::uint32_t i = 0; i < s.options.max_groups; ++i) {
    detail::GroupSlot& g = s.groups[i];
    if (g.state.load(std::memory_order_acquire) != detail::kActive) continue;
    GroupStats gs{};
    gs.name = std::string(detail::slot_name(g.name));
    gs.next_position = g.next.load(std::memory_order_acquire);
    gs.low_water_mark = gs.next_position;
    for (std::uint32_t c = 0; c < s.options.max_consumers; ++c) {
      detail::ConsumerSlot& slot = s.consumers[c];
      if (slot.state.load(std::memory_order_acquire) != detail::kActive || slot.group != i) continue;
      for (std::uint32_t k = 0; k < std::min(slot.max_in_flight.load(std::memory_order_relaxed), detail::kMaxInFlight); ++k)
        if (std::uint64_t h = slot.in_flight[k].load(std::memory_order_relaxed)) gs.low_water_mark = std::min(gs.low_water_mark, detail::held_position(h));
    }
    // The give-back list: under its lock, so that entries are not read while they move.
    ring::lock_owner_word(g.give_back_lock, detail::self_token(), &detail::ChannelState::alive);
    for (const detail::GiveBackEntry& e : g.give_back)
      if (std::uint64_t h = e.position_plus1.load(std::memory_order_relaxed)) {
        ++gs.given_back;
        gs.low_water_mark = std::min(gs.low_water_mark, h - 1);
      }
    ring::unlock_owner_word(g.give_back_lock);
    gs.lag_messages = gs.given_back;
    gs.lag_bytes = out.write_position - std::min(gs.next_position, out.write_position);
    // Count the records between the cursor and the tail (bounded walk over committed frames).
    std::uint64_t p = gs.next_position;
    // Under the cleaning lock: `cleaned` does not pass the walk while it reads.
    s.ring->lock_cleaning(detail::self_token(), &detail::ChannelState::alive);
    for (std::uint64_t steps = 0; p < out.write_position && p >= s.ring->cleaned() && steps < s.ring->capacity() / ring::kAlign; ++steps) {
      const ring::ReadResult r = s.ring->read(p);
      if (r.kind == ring::ReadResult::Record) ++gs.lag_messages;
      else if (r.kind != ring::ReadResult::Padding) break;
      p = r.next;
    }
    s.ring->unlock_cleaning();
    gs.delivered = g.delivered.load(std::memory_order_relaxed);
    for (std::uint32_t c = 0; c < s.options.max_consumers; ++c)
      if (s.consumers[c].state.load(std::memory_order_acquire) == detail::kActive && s.consumers[c].group == i)
        gs.delivered += s.consumers[c].delivered.load(std::memory_order_relaxed);
    gs.consumers = consumers_of[i];
    gs.in_flight = held_by[i];
    out.groups.push_back(std::move(gs));
  }
  for (std::uint32_t i = 0; i < s.options.max_producers; ++i) {
    detail::ProducerSlot& p = s.producers[i];
    if (p.state.load(std::memory_order_acquire) != detail::kActive) continue;
    ProducerStats ps{};
    ps.name = std::string(detail::slot_name(p.name));
    ps.id = p.id;
    ps.next_seq = p.next_seq.load(std::memory_order_relaxed);
    ps.published = p.published.load(std::memory_order_relaxed);
    const std::uint64_t owner = p.owner.load(std::memory_order_acquire);
    ps.pid = detail::token_pid(owner);
    ps.alive = owner != 0 && detail::token_alive(owner);
    out.live_producers += ps.alive;
    out.producers.push_back(std::move(ps));
  }
  return out;
}

}  // namespace shmq

// Producer: registration under a stable name, publish and zero-copy claim.
#include <sched.h>

#include <cstring>

#include "shm/channel_state.hpp"
#include "shm/crash_point.hpp"
#include "shm/dedup.hpp"
#include "shm/durability.hpp"

namespace shmq {
namespace detail {

namespace {
void (*g_publish_hook)(PublishStage) = nullptr;
// An address unique to the calling thread: who holds a producer's publish lock.
std::uintptr_t this_thread_tag() noexcept {
  static thread_local char tag;
  return reinterpret_cast<std::uintptr_t>(&tag);
}
}  // namespace

void set_publish_hook(void (*hook)(PublishStage)) { g_publish_hook = hook; }

inline void publish_hook(PublishStage stage) noexcept {
  if (__builtin_expect(g_publish_hook != nullptr, 0)) g_publish_hook(stage);
}

struct ProducerState {
  ChannelState* ch = nullptr;
  ring::RecordRing* ring = nullptr;
  ProducerSlot* slot = nullptr;
  std::string name;
  std::uint32_t index = 0;         // producer slot = claimer slot in the ring
  std::uint64_t id = 0;
  std::uint64_t next_seq = 1;      // default sequence of the next publish (>= the window's top + 1)
  std::uint64_t published = 0;
  std::uint64_t cleaned_hint = 0;  // cached ring `cleaned`
  // Where this producer's last claim ended (prefetch_claim()). Atomic (relaxed: a hint): publish()
  // reads it before it takes the publish lock, under which another thread may store it.
  std::atomic<std::uint64_t> claim_hint{0};
  bool exclusive = false;          // ProducerOptions::exclusive: the ring's only live claimer
  std::atomic<std::uint64_t> last_seq{0};  // of the last publish (last_id() may be asked from any thread)
  DedupWindow window;
  // The publish lock: the dedup check, the claim, the commit and the window update of one publish
  // happen under it, so that threads sharing this Producer neither both accept one sequence nor
  // use the claimer slot at once. Holds this_thread_tag() of the holder; 0 when free. A Claim
  // holds it until commit() or abandon().
  std::atomic<std::uintptr_t> lock{0};
  // The open Claim's durability wait (written by claim(), read by its commit(), both under the lock).
  bool claim_sync = false;
  std::uint64_t claim_timeout_ns = 0;

  // Takes the publish lock: Ok; Closed if this thread holds it already (an open Claim);
  // WouldBlock if another thread held it for the whole of OPTS.timeout (an open Claim there).
  Status lock_publish(const PublishOptions& opts) noexcept {
    const std::uintptr_t me = this_thread_tag();
    std::uintptr_t free = 0;
    // acquire: pairs with the release in unlock_publish(); the previous holder's state is visible.
    if (lock.compare_exchange_strong(free, me, std::memory_order_acquire, std::memory_order_relaxed)) return Status::Ok;
    if (free == me) return Status::Closed;
    std::uint64_t deadline = 0;  // the clock is read only if the lock stays taken
    for (unsigned round = 0;; ++round) {
      for (int i = 0; i < 32 && lock.load(std::memory_order_relaxed) != 0; ++i) __builtin_ia32_pause();
      if (lock.load(std::memory_order_relaxed) != 0) sched_yield();
      free = 0;
      if (lock.compare_exchange_weak(free, me, std::memory_order_acquire, std::memory_order_relaxed)) return Status::Ok;
      if ((round & 63) == 63) {
        const std::uint64_t now = now_ns();
        if (deadline == 0) deadline = now + static_cast<std::uint64_t>(std::max<std::int64_t>(opts.timeout.count(), 0));
        else if (now >= deadline) return Status::WouldBlock;
      }
    }
  }
  void unlock_publish() noexcept { lock.store(0, std::memory_order_release); }  // pairs with lock_publish()

  // The dedup check of SEQ: Ok if new; InvalidSeq; or Duplicate with the original's position (or
  // kNoPosition) in *POS.
  Status check_seq(std::uint64_t seq, std::uint64_t* pos) const noexcept {
    if (!valid_seq(seq)) return Status::InvalidSeq;
    const std::optional<std::uint64_t> original = window.find(seq);
    if (!original) return Status::Ok;
    *pos = *original;
    return Status::Duplicate;
  }
  // Announces that SEQ is about to be committed at POS (for a successor, if this process dies).
  void begin(std::uint64_t seq, std::uint64_t pos) noexcept {
    slot->pending_seq.store(seq, std::memory_order_relaxed);
    // release: orders pending_seq before; the commit that follows is a release store too, so a
    // successor that finds the record committed finds this first.
    slot->pending_entry.store(pos + 1, std::memory_order_release);
  }
  // SEQ was committed at POS: the window records it, then the pending fields are cleared.
  void accepted(std::uint64_t seq, std::uint64_t pos) noexcept {
    window.accept(seq, pos + 1);
    slot->pending_entry.store(0, std::memory_order_release);
    if (seq >= next_seq) next_seq = seq + 1;
  }

  // Reserves FRAME_LEN bytes, waiting on a full ring as OPTS says. Returns the position, or
  // ring::kNoIntent when the ring stayed full for the whole timeout.
  std::uint64_t claim_space(std::uint32_t frame_len, const PublishOptions& opts) noexcept;
  // Checks sizes and durability; Ok or TooLarge. Throws for a durability the channel lacks.
  Status check(std::size_t payload, const PublishOptions& opts) const;
  // Writes the header fields and the key of a claimed record; returns where the payload goes.
  std::byte* write_header(std::uint64_t pos, std::uint64_t seq, std::string_view key) noexcept;
  void committed(std::uint64_t seq) noexcept;
};

std::uint64_t ProducerState::claim_space(std::uint32_t frame_len, const PublishOptions& opts) noexcept {
  const auto try_claim = [&] {
    return exclusive ? ring->try_claim<true>(index, frame_len, cleaned_hint) : ring->try_claim<false>(index, frame_len, cleaned_hint);
  };
  std::uint64_t pos = try_claim();
  if (pos != ring::kNoIntent) [[likely]] {
    claim_hint.store(pos + ring::align_up(frame_len), std::memory_order_relaxed);
    return pos;
  }
  const std::uint64_t deadline = now_ns() + static_cast<std::uint64_t>(std::max<std::int64_t>(opts.timeout.count(), 0));
  ring::RingHeader& h = ring->header();
  // Retries at once while reclaim says there is room (peers took it first); a bounded number of
  // times: a hostile tail or claim word can make every claim fail however much room there is, and
  // the deadline must still end the wait.
  for (std::uint32_t quick = 0;;) {
    if (ch->reclaim(ring->claim_end(ring->tail(), frame_len), exclusive)) {
      pos = try_claim();
      if (pos != ring::kNoIntent) {
        claim_hint.store(pos + ring::align_up(frame_len), std::memory_order_relaxed);
        return pos;
      }
      if (++quick % 64 != 0) continue;
    }
    const std::uint64_t now = now_ns();
    if (now >= deadline) return ring::kNoIntent;
    ch->reap_dead_consumers();  // a dead consumer's held messages may be what holds the ring
    switch (opts.wait) {
      case Wait::Spin:
        for (int i = 0; i < 64; ++i) __builtin_ia32_pause();
        break;
      case Wait::Yield:
        sched_yield();
        break;
      case Wait::Block: {
        // Consumers bump space_seq after an ack when a producer waits. The 1 ms slice bounds the
        // cost of a wake-up lost to the race between their ack and our count.
        const std::uint32_t v = h.space_seq.load(std::memory_order_acquire);
        h.space_waiters.fetch_add(1, std::memory_order_seq_cst);
        if (!ch->reclaim(ring->claim_end(ring->tail(), frame_len), exclusive))
          futex_wait(h.space_seq, v, std::chrono::nanoseconds(std::min<std::uint64_t>(deadline - now, 1000000)));
        h.space_waiters.fetch_sub(1, std::memory_order_relaxed);
        break;
      }
    }
  }
}

Status ProducerState::check(std::size_t payload, const PublishOptions& opts) const {
  if (opts.durability && *opts.durability != Durability::Memory && !ch->durable())
    ch->fail(std::errc::not_supported, "publish asked for Async or Sync durability on a Memory channel (it has no journal)");
  if (payload > ch->options.max_message_bytes || opts.key.size() > max_key_bytes(ch->options.max_message_bytes)) return Status::TooLarge;
  return Status::Ok;
}

std::byte* ProducerState::write_header(std::uint64_t pos, std::uint64_t seq, std::string_view key) noexcept {
  auto* h = reinterpret_cast<ring::RecordHeader*>(ring->at(pos));
  // Relaxed atomic stores (plain stores on the hardware): a reader at a scribbled position may
  // load these words meanwhile (see ring::copy_in).
  ring::store_shared(h->producer, id);
  ring::store_shared(h->seq, seq);
  ring::store_shared(h->timestamp_ns, wall_clock_ns());
  ring::store_shared(h->key_len, static_cast<std::uint32_t>(key.size()));
  ring::store_shared(h->reserved, 0u);
  auto* body = reinterpret_cast<std::byte*>(h) + ring::kHeaderBytes;
  ring::copy_in(body, key.data(), key.size());
  return body + key.size();
}

void settle_dead_publish(ChannelState& ch, std::uint32_t index) noexcept {
  ProducerSlot& slot = ch.producers[index];
  ring::RecordRing& ring = *ch.ring;
  const std::uint64_t entry = slot.pending_entry.load(std::memory_order_acquire);  // pairs with begin()
  if (entry == 0) return;
  const std::uint64_t seq = slot.pending_seq.load(std::memory_order_relaxed);
  const std::uint64_t pos = entry - 1;
  // Under the cleaning lock nobody zeroes or reuses the space at POS while we look at it.
  ring.lock_cleaning(self_token(), &ChannelState::alive);
  // acquire, `cleaned` first: if the space was reclaimed, the reclaimer had read the padding frame
  // there, which a dead claim's unblock() stored after `padded` (so the load below sees it).
  const std::uint64_t cleaned = ring.cleaned();
  bool committed;
  if (pos % ring::kAlign != 0 || pos >= ring.tail() || !valid_seq(seq)) {
    committed = false;  // not something begin() wrote: nothing to record
  } else if (ring.claimer(index).padded.load(std::memory_order_acquire) == pos + 1) {
    committed = false;  // a reader found the claim dead and padded it
  } else if (pos >= cleaned) {
    // Still in the ring: committed if the record there is ours; a claim not committed yet is dead
    // (its owner is) and will be padded.
    const ring::ReadResult r = ring.read(pos);
    // Ours by its inner id, or (a dead-letter copy keeps its original's id) by its claimer slot:
    // the claim at POS was this slot's, and only its owner commits a record there.
    committed = r.kind == ring::ReadResult::Record &&
                ((ring::load_shared(r.header->producer) == slot.id && ring::load_shared(r.header->seq) == seq) ||
                 ring::Frame::unpack(r.header->frame.load(std::memory_order_relaxed)).claimer == index);
  } else {
    // Reclaimed, so every group was past it, and not padded as a dead claim: it was committed.
    committed = true;
  }
  ring.unlock_cleaning();
  if (committed) ch.segment->dedup_window(index).accept(seq, entry);
  slot.pending_entry.store(0, std::memory_order_release);
}

void ProducerState::committed(std::uint64_t seq) noexcept {
  last_seq.store(seq, std::memory_order_relaxed);
  slot->published.store(++published, std::memory_order_relaxed);
  ring::RingHeader& h = ring->header();
  // seq_cst load after the seq_cst claim CAS: a reader that counted itself a waiter before it read
  // the tail either saw our claim or is seen here (no lost wake-up); no syscall when nobody waits.
  if (h.data_waiters.load(std::memory_order_seq_cst) != 0) {
    h.data_seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(h.data_seq);
  }
}

}  // namespace detail

Producer::Producer(Channel& channel, std::string_view name, const ProducerOptions& options)
    : state_(std::make_unique<detail::ProducerState>()) {
  detail::ChannelState& s = channel.state();
  detail::check_slot_name(s.name, "producer", name);
  detail::ProducerState& p = *state_;
  p.ch = &s;
  p.ring = s.ring;
  p.name = std::string(name);
  const std::uint64_t me = detail::self_token();
  detail::calibrate_wall_clock();  // once per process, here rather than in a publish
  // NAME.dlq takes the dead-letter copies of NAME's groups through producers of their own: an
  // exclusive one there would make every dead letter fail (and the poison messages circulate).
  if (options.exclusive && s.name.size() > 4 && s.name.ends_with(".dlq"))
    s.fail(std::errc::invalid_argument, "an exclusive producer on a dead-letter channel is refused: the groups of '" +
                                            s.name.substr(0, s.name.size() - 4) + "' copy their dead letters here through producers of their own");
  detail::SetupRegistryLock lock(s, "add producer '" + std::string(name) + "'");
  int found = -1, free = -1;
  for (std::uint32_t i = 0; i < s.options.max_producers; ++i) {
    detail::ProducerSlot& slot = s.producers[i];
    const std::uint32_t st = slot.state.load(std::memory_order_acquire);
    if (st == detail::kActive && detail::slot_name(slot.name) == name) {
      found = static_cast<int>(i);
      break;
    }
    if (st == detail::kFree && free < 0) free = static_cast<int>(i);
  }
  // An exclusive producer is the only live one, both ways. Dead owners (or none) do not count:
  // a dead claimer makes no more stores, and its claim left at the tail is moved past by the
  // shared path of the next claim, or padded by a reader, as for any claimer.
  for (std::uint32_t i = 0; i < s.options.max_producers; ++i) {
    detail::ProducerSlot& other = s.producers[i];
    if (static_cast<int>(i) == found || other.state.load(std::memory_order_acquire) != detail::kActive) continue;
    const std::uint64_t owner = other.owner.load(std::memory_order_acquire);
    if (owner == 0 || !detail::token_alive(owner)) continue;
    const bool other_exclusive = other.exclusive.load(std::memory_order_relaxed) != 0;
    const std::string who = std::string(other_exclusive ? "exclusive " : "") + "producer '" +
                            std::string(detail::slot_name(other.name)) + "' of live process " + std::to_string(detail::token_pid(owner));
    if (other_exclusive)
      s.fail(std::errc::device_or_resource_busy, "cannot add " + std::string(options.exclusive ? "exclusive " : "") + "producer '" +
                                                     std::string(name) + "': " + who + " is the channel's only producer while it lives");
    if (options.exclusive)
      s.fail(std::errc::device_or_resource_busy, "cannot add exclusive producer '" + std::string(name) + "': " + who +
                                                     " is on the channel (an exclusive producer must be its only one)");
  }
  if (found >= 0) {
    const std::uint64_t owner = s.producers[found].owner.load(std::memory_order_acquire);
    if (owner != 0 && detail::token_alive(owner))
      s.fail(std::errc::device_or_resource_busy, "producer '" + std::string(name) + "' is in use by live process " +
                                                     std::to_string(detail::token_pid(owner)));
  } else if (free >= 0) {
    detail::ProducerSlot& slot = s.producers[free];
    detail::set_slot_name(slot.name, name);
    slot.id = s.header->next_producer_id.fetch_add(1, std::memory_order_relaxed) + 1;
    slot.next_seq.store(1, std::memory_order_relaxed);
    slot.published.store(0, std::memory_order_relaxed);
    slot.state.store(detail::kActive, std::memory_order_release);
    s.header->registry_version.fetch_add(1, std::memory_order_release);
    found = free;
  } else {
    s.fail(std::errc::no_space_on_device, "the producer table is full (" + std::to_string(s.options.max_producers) +
                                              " producers); cannot add producer '" + std::string(name) + "'");
  }
  p.index = static_cast<std::uint32_t>(found);
  p.slot = &s.producers[found];
  p.exclusive = options.exclusive;
  p.slot->exclusive.store(options.exclusive ? 1 : 0, std::memory_order_relaxed);  // under the registry lock
  p.id = p.slot->id;
  p.window = s.segment->dedup_window(p.index);
  detail::settle_dead_publish(s, p.index);  // before adopt_claimer(): the dead owner's claim must still read as its own
  p.next_seq = std::max(p.slot->next_seq.load(std::memory_order_relaxed), p.slot->reserved_seq.load(std::memory_order_relaxed));
  p.published = p.slot->published.load(std::memory_order_relaxed);
  p.cleaned_hint = p.ring->cleaned();
  p.slot->owner.store(me, std::memory_order_release);
  p.ring->adopt_claimer(p.index, me);
}

Producer::Producer(Producer&&) noexcept = default;
Producer& Producer::operator=(Producer&& other) noexcept {
  if (this != &other) {
    Producer old(std::move(*this));
    state_ = std::move(other.state_);
  }
  return *this;
}

Producer::~Producer() {
  if (!state_) return;
  detail::ProducerState& p = *state_;
  detail::RegistryLock lock(*p.ch);
  p.ring->release_claimer(p.index);
  p.slot->owner.store(0, std::memory_order_release);
}

Published Producer::publish(std::span<const std::byte> payload, const PublishOptions& opts) {
  if (!state_) return {Status::Closed, {}, 0};
  detail::ProducerState& p = *state_;
  // First: the two lines' transfers overlap each other and the checks below (a ping-pong's round
  // trip, medians of 6 alternating runs on 2 vCPUs: 2980 -> 2650 ticks shared, 2310 -> 1900 exclusive).
  p.ring->prefetch_claim(p.claim_hint.load(std::memory_order_relaxed));
  // acquire: pairs with the journaler's release store when it found the segment removed.
  if (p.ch->removed.load(std::memory_order_acquire)) return {Status::Closed, {}, 0};
  if (Status st = p.check(payload.size(), opts); st != Status::Ok) return {st, {}, 0};
  if (const Status st = p.lock_publish(opts); st != Status::Ok) return {st, {}, 0};  // a Claim open on it
  const std::uint64_t seq = opts.seq.value_or(p.next_seq);
  std::uint64_t original = 0;
  if (const Status st = p.check_seq(seq, &original); st != Status::Ok) {
    p.unlock_publish();
    return {st, {p.id, seq}, st == Status::Duplicate ? original : 0};
  }
  const auto frame_len = static_cast<std::uint32_t>(ring::kHeaderBytes + opts.key.size() + payload.size());
  const std::uint64_t pos = p.claim_space(frame_len, opts);
  if (pos == ring::kNoIntent) {
    p.unlock_publish();
    return {Status::WouldBlock, {p.id, seq}, 0};
  }
  p.begin(seq, pos);
  detail::publish_hook(detail::PublishStage::Claimed);
  SHMQ_CRASH_POINT("publish.after_announce");
  std::byte* body = p.write_header(pos, seq, opts.key);
  ring::copy_in(body, payload.data(), payload.size());
  p.ring->commit(pos, frame_len, ring::RecordType::Data, p.index);
  detail::publish_hook(detail::PublishStage::Committed);
  SHMQ_CRASH_POINT("publish.after_commit");
  p.accepted(seq, pos);
  p.committed(seq);
  p.unlock_publish();
  detail::publish_hook(detail::PublishStage::Accepted);
  SHMQ_CRASH_POINT("publish.after_accept");
  if (opts.durability.value_or(p.ch->options.durability) == Durability::Sync &&
      !detail::wait_durable(*p.ch, pos + ring::align_up(frame_len), detail::now_ns() + static_cast<std::uint64_t>(std::max<std::int64_t>(opts.timeout.count(), 0))))
    // published; not yet known durable (Closed: the segment was removed, nobody journals it)
    return {p.ch->removed.load(std::memory_order_acquire) ? Status::Closed : Status::Timeout, {p.id, seq}, pos};
  return {Status::Ok, {p.id, seq}, pos};
}

Published detail::publish_copy(Producer& producer, const Message& m, std::uint32_t reason, std::uint64_t dedup_seq) {
  if (!producer.state_) return {Status::Closed, {}, 0};
  detail::ProducerState& p = *producer.state_;
  PublishOptions opts;
  opts.key = m.key();
  opts.timeout = std::chrono::milliseconds(10);  // a full NAME.dlq must not stall the consumer
  if (Status st = p.check(m.payload().size(), opts); st != Status::Ok) return {st, m.id(), 0};
  if (dedup_seq != 0 && !detail::valid_seq(dedup_seq)) return {Status::InvalidSeq, m.id(), 0};
  if (const Status st = p.lock_publish(opts); st != Status::Ok) return {st, m.id(), 0};
  if (dedup_seq != 0) {
    // A copy made before (by a process that died before it acked the original) is a Duplicate.
    // Below the window nothing is known: copy again rather than risk dropping the only one.
    const std::uint64_t high = p.window.top();
    const bool below = dedup_seq <= high && high - dedup_seq >= p.window.size();
    if (const std::optional<std::uint64_t> original = below ? std::nullopt : p.window.find(dedup_seq)) {
      p.unlock_publish();
      return {Status::Duplicate, m.id(), *original};  // where the first copy is (or kNoPosition)
    }
  }
  const auto frame_len = static_cast<std::uint32_t>(ring::kHeaderBytes + m.key().size() + m.payload().size());
  const std::uint64_t pos = p.claim_space(frame_len, opts);
  if (pos == ring::kNoIntent) {
    p.unlock_publish();
    return {Status::WouldBlock, m.id(), 0};
  }
  if (dedup_seq != 0) p.begin(dedup_seq, pos);  // a successor records the copy if we die (settle_dead_publish)
  std::byte* body = p.write_header(pos, m.id().seq, m.key());
  auto* h = reinterpret_cast<ring::RecordHeader*>(p.ring->at(pos));
  ring::store_shared(h->producer, m.id().producer);  // the copy keeps the original inner id
  ring::store_shared(h->reserved, reason);
  ring::copy_in(body, m.payload().data(), m.payload().size());
  p.ring->commit(pos, frame_len, ring::RecordType::Data, p.index);
  SHMQ_CRASH_POINT("dead_letter.after_commit");
  if (dedup_seq != 0) p.accepted(dedup_seq, pos);
  p.committed(m.id().seq);
  p.unlock_publish();
  return {Status::Ok, m.id(), pos};
}

Published Producer::publish(std::string_view payload, const PublishOptions& opts) {
  return publish(std::as_bytes(std::span<const char>(payload.data(), payload.size())), opts);
}

Claim Producer::claim(std::size_t bytes, const PublishOptions& opts) {
  Claim c;
  if (!state_) return c;
  detail::ProducerState& p = *state_;
  p.ring->prefetch_claim(p.claim_hint.load(std::memory_order_relaxed));  // as in publish()
  if (Status st = p.check(bytes, opts); st != Status::Ok) {
    c.status_ = st;
    return c;
  }
  if (const Status st = p.lock_publish(opts); st != Status::Ok) {  // a Claim open on this Producer
    c.status_ = st;
    return c;
  }
  const std::uint64_t seq = opts.seq.value_or(p.next_seq);
  std::uint64_t original = 0;
  if (const Status st = p.check_seq(seq, &original); st != Status::Ok) {
    p.unlock_publish();
    c.status_ = st;
    c.id_ = {p.id, seq};
    c.position_ = st == Status::Duplicate ? original : 0;
    return c;
  }
  const auto frame_len = static_cast<std::uint32_t>(ring::kHeaderBytes + opts.key.size() + bytes);
  const std::uint64_t pos = p.claim_space(frame_len, opts);
  if (pos == ring::kNoIntent) {
    p.unlock_publish();
    c.status_ = Status::WouldBlock;
    return c;
  }
  // The default sequence moves on now: in this process an abandoned claim leaves a gap, never a
  // reused inner id. The window records the sequence only at commit().
  if (seq >= p.next_seq) p.next_seq = seq + 1;
  p.begin(seq, pos);
  c.data_ = p.write_header(pos, seq, opts.key);
  c.size_ = bytes;
  c.position_ = pos;
  c.id_ = {p.id, seq};
  c.frame_len_ = frame_len;
  c.producer_ = &p;
  p.claim_sync = opts.durability.value_or(p.ch->options.durability) == Durability::Sync;
  p.claim_timeout_ns = static_cast<std::uint64_t>(std::max<std::int64_t>(opts.timeout.count(), 0));
  c.status_ = Status::Ok;
  return c;
}

bool Producer::flush(std::chrono::nanoseconds timeout) {
  if (!state_) return false;
  detail::ChannelState& ch = *state_->ch;
  // A Memory channel is as durable as it gets once publish returned: the record is in the segment.
  if (!ch.durable()) return true;
  return detail::wait_durable(ch, ch.ring->tail(), detail::now_ns() + static_cast<std::uint64_t>(std::max<std::int64_t>(timeout.count(), 0)));
}

bool Producer::wait_durable(std::uint64_t position, std::chrono::nanoseconds timeout) {
  if (!state_ || position == kNoPosition) return false;
  detail::ChannelState& ch = *state_->ch;
  if (!ch.durable()) return true;
  // The durable position stops only at record boundaries: past POSITION means past its record.
  return detail::wait_durable(ch, position + 1, detail::now_ns() + static_cast<std::uint64_t>(std::max<std::int64_t>(timeout.count(), 0)));
}

InnerId Producer::last_id() const noexcept {
  return state_ ? InnerId{state_->id, state_->last_seq.load(std::memory_order_relaxed)} : InnerId{};
}
std::string_view Producer::name() const noexcept { return state_ ? std::string_view(state_->name) : std::string_view(); }

Claim::Claim(Claim&& o) noexcept
    : producer_(o.producer_), frame_len_(o.frame_len_), data_(o.data_), size_(o.size_), position_(o.position_),
      id_(o.id_), status_(o.status_) {
  o.producer_ = nullptr;
  o.status_ = Status::Closed;
}

Claim& Claim::operator=(Claim&& o) noexcept {
  if (this != &o) {
    abandon();
    producer_ = o.producer_;
    frame_len_ = o.frame_len_;
    data_ = o.data_;
    size_ = o.size_;
    position_ = o.position_;
    id_ = o.id_;
    status_ = o.status_;
    o.producer_ = nullptr;
    o.status_ = Status::Closed;
  }
  return *this;
}

Claim::~Claim() { abandon(); }

Published Claim::commit() noexcept {
  if (!producer_) return {status_ == Status::Ok ? Status::Closed : status_, id_, status_ == Status::Duplicate ? position_ : 0};
  detail::ProducerState& p = *producer_;
  // Read before the unlock: the next Claim on this Producer overwrites them.
  const bool sync = p.claim_sync;
  const std::uint64_t timeout_ns = p.claim_timeout_ns;
  detail::ChannelState& ch = *p.ch;
  const std::uint64_t end = position_ + ring::align_up(frame_len_);
  p.ring->commit(position_, frame_len_, ring::RecordType::Data, p.index);
  p.accepted(id_.seq, position_);
  p.committed(id_.seq);
  p.unlock_publish();
  producer_ = nullptr;
  status_ = Status::Closed;
  // Sync: Ok only once the record is durable, as publish() does; Timeout when it is not within
  // the claim's PublishOptions::timeout (published all the same; Producer::wait_durable waits on).
  if (sync && !detail::wait_durable(ch, end, detail::now_ns() + timeout_ns)) return {Status::Timeout, id_, position_};
  return {Status::Ok, id_, position_};
}

void Claim::abandon() noexcept {
  if (!producer_) return;
  // Not accepted: the pending fields go first, so that a death right after cannot make a
  // successor take the padding for a committed record.
  producer_->slot->pending_entry.store(0, std::memory_order_release);
  // Padding: consumers skip it; the ring space is reused like any other.
  producer_->ring->commit(position_, frame_len_, ring::RecordType::Padding, producer_->index);
  producer_->unlock_publish();
  producer_ = nullptr;
  status_ = Status::Closed;
}

}  // namespace shmq

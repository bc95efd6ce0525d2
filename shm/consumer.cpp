// Consumer: joins a group, takes the group's next record, holds it in its in-flight table until
// ack. Several consumers of one group compete for records with a CAS on the group's cursor.
#include <sched.h>

#include "shm/channel_state.hpp"

namespace shmq {
namespace detail {

inline constexpr std::uint64_t kDeadClaimCheckNs = 1'000'000;  // a claim pending this long: ask if its producer lives
inline constexpr std::uint64_t kBlockSliceNs = 50'000'000;     // longest single futex sleep

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
  std::uint64_t pending_pos = ~0ull;          // a position seen claimed but not committed
  std::uint64_t pending_since = 0;

  std::uint64_t holder_id() const noexcept { return reinterpret_cast<std::uintptr_t>(this); }
  // A record stays Pending: after a while, ask the ring whether its claimer died.
  void pending(std::uint64_t pos) noexcept {
    const std::uint64_t now = now_ns();
    if (pending_pos != pos) {
      pending_pos = pos;
      pending_since = now;
    } else if (now - pending_since > kDeadClaimCheckNs) {
      ring->unblock(pos, &ChannelState::alive);
      pending_since = now;
    }
  }
  // Waits (as options.wait says) for something to change at POS; false when DEADLINE passed.
  bool wait(std::uint64_t pos, ring::ReadResult::Kind kind, std::uint64_t deadline, unsigned& spins) noexcept;
};

bool ConsumerState::wait(std::uint64_t pos, ring::ReadResult::Kind kind, std::uint64_t deadline, unsigned& spins) noexcept {
  if (kind == ring::ReadResult::Pending) pending(pos);
  Wait how = options.wait;
  if (how == Wait::Block && kind == ring::ReadResult::Pending) how = Wait::Yield;  // its commit is imminent
  switch (how) {
    case Wait::Spin:
      __builtin_ia32_pause();
      if ((++spins & 255) != 0) return true;  // look at the clock now and then only
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
      if (h.tail.load(std::memory_order_seq_cst) <= pos && group->state.load(std::memory_order_relaxed) == kActive)
        futex_wait(h.data_seq, v, std::chrono::nanoseconds(std::min(deadline - now, kBlockSliceNs)));
      h.data_waiters.fetch_sub(1, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
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
  detail::RegistryLock lock(s);
  const int g = s.ensure_group(group, options.start);
  int free = -1;
  for (std::uint32_t i = 0; i < s.header->max_consumers && free < 0; ++i)
    if (s.consumers[i].state.load(std::memory_order_acquire) == detail::kFree) free = static_cast<int>(i);
  if (free < 0)
    s.fail(std::errc::no_space_on_device, "the consumer table is full (" + std::to_string(s.header->max_consumers) +
                                              " consumers); cannot add a consumer to group '" + std::string(group) + "'");
  detail::ConsumerSlot& slot = s.consumers[free];
  for (auto& e : slot.in_flight) e.store(0, std::memory_order_relaxed);
  slot.group = static_cast<std::uint32_t>(g);
  slot.max_in_flight = options.max_in_flight;
  slot.owner.store(detail::self_token(), std::memory_order_relaxed);
  slot.heartbeat_ns.store(detail::now_ns(), std::memory_order_relaxed);
  slot.state.store(detail::kActive, std::memory_order_release);  // pairs with the acquire in gate()
  c.index = static_cast<std::uint32_t>(free);
  c.slot = &slot;
  c.group = &s.groups[g];
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
  // What this consumer still holds goes back to the group: the cursor is moved back to the oldest
  // held message when this was the group's only consumer (the group then sees some messages again:
  // at-least-once). With other consumers in the group the held messages stay gated in the slot.
  // TODO(issue 3): hand them to the group's give-back list instead.
  std::uint64_t oldest = ~0ull;
  for (std::uint32_t k = 0; k < c.options.max_in_flight; ++k)
    if (std::uint64_t h = c.slot->in_flight[k].load(std::memory_order_relaxed)) oldest = std::min(oldest, h - 1);
  bool alone = true;
  for (std::uint32_t i = 0; i < c.ch->header->max_consumers; ++i) {
    detail::ConsumerSlot& other = c.ch->consumers[i];
    if (i != c.index && other.state.load(std::memory_order_acquire) == detail::kActive &&
        other.group == c.slot->group && detail::token_alive(other.owner.load(std::memory_order_acquire)))
      alone = false;
  }
  if (oldest != ~0ull && alone) {
    std::uint64_t next = c.group->next.load(std::memory_order_acquire);
    while (next > oldest && !c.group->next.compare_exchange_weak(next, oldest, std::memory_order_acq_rel)) {
    }
  }
  if (oldest == ~0ull || alone) {
    for (auto& e : c.slot->in_flight) e.store(0, std::memory_order_release);
    c.slot->owner.store(0, std::memory_order_relaxed);
    c.slot->state.store(detail::kFree, std::memory_order_release);
  }
}

std::optional<Message> Consumer::poll(std::chrono::nanoseconds timeout) {
  if (!state_) return std::nullopt;
  detail::ConsumerState& c = *state_;
  if (c.free_top == 0) {
    c.last = Status::WouldBlock;
    return std::nullopt;
  }
  const std::uint64_t deadline = detail::now_ns() + static_cast<std::uint64_t>(std::max<std::int64_t>(timeout.count(), 0));
  unsigned spins = 0;
  for (;;) {
    if (c.group->state.load(std::memory_order_relaxed) != detail::kActive) {
      c.last = Status::Closed;
      return std::nullopt;
    }
    // acquire: pairs with the release CAS of another consumer of the group.
    std::uint64_t pos = c.group->next.load(std::memory_order_acquire);
    const ring::ReadResult r = c.ring->read(pos);
    switch (r.kind) {
      case ring::ReadResult::Record: {
        const std::uint32_t k = c.free_stack[c.free_top - 1];
        // Held first, then taken: a reclaim that sees the new cursor sees the held entry too.
        c.slot->in_flight[k].store(pos + 1, std::memory_order_relaxed);
        // release: publishes the in-flight entry above to a reclaim that acquires the cursor.
        if (!c.group->next.compare_exchange_strong(pos, r.next, std::memory_order_acq_rel, std::memory_order_acquire)) {
          c.slot->in_flight[k].store(0, std::memory_order_relaxed);
          continue;  // another consumer of the group took it
        }
        --c.free_top;
        c.group->delivered.fetch_add(1, std::memory_order_relaxed);
        if (const char* why = ring::RecordRing::check_record(r)) {
          throw Error(std::make_error_code(std::errc::illegal_byte_sequence),
                      "shmq channel '" + c.ch->name + "', group '" + c.group_name + "': corrupt record at position " +
                          std::to_string(pos) + ": " + why);
        }
        const ring::RecordHeader* h = r.header;
        const auto* body = reinterpret_cast<const std::byte*>(h) + ring::kHeaderBytes;
        Message m;
        m.id_ = InnerId{h->producer, h->seq};
        m.key_ = std::string_view(reinterpret_cast<const char*>(body), h->key_len);
        m.payload_ = std::span<const std::byte>(body + h->key_len, r.length - ring::kHeaderBytes - h->key_len);
        m.position_ = pos;
        m.timestamp_ns_ = h->timestamp_ns;
        m.deliveries_ = 1;
        m.slot_ = k;
        m.holder_ = c.holder_id();
        c.last = Status::Ok;
        return m;
      }
      case ring::ReadResult::Padding:
        c.group->next.compare_exchange_strong(pos, r.next, std::memory_order_acq_rel, std::memory_order_relaxed);
        continue;
      case ring::ReadResult::Corrupt:
        c.last = Status::Corrupt;
        throw Error(std::make_error_code(std::errc::illegal_byte_sequence),
                    "shmq channel '" + c.ch->name + "', group '" + c.group_name + "': corrupt record at position " +
                        std::to_string(pos) + ": " + r.why);
      case ring::ReadResult::Empty:
      case ring::ReadResult::Pending:
        if (r.kind == ring::ReadResult::Pending && timeout.count() <= 0) c.pending(pos);
        if (timeout.count() <= 0 || !c.wait(pos, r.kind, deadline, spins)) {
          c.last = Status::Timeout;
          return std::nullopt;
        }
        continue;
    }
  }
}

Status Consumer::ack(const Message& m) {
  if (!state_) return Status::Closed;
  detail::ConsumerState& c = *state_;
  if (m.holder_ != c.holder_id() || m.slot_ >= c.options.max_in_flight) return Status::NotHeld;
  std::uint64_t expected = m.position_ + 1;
  // release: this consumer's reads of the message happen before a reclaim that sees the entry
  // empty (acquire in gate()). A CAS, not a store: whoever else may empty the entry, only one wins.
  if (!c.slot->in_flight[m.slot_].compare_exchange_strong(expected, 0, std::memory_order_acq_rel,
                                                          std::memory_order_relaxed))
    return Status::NotHeld;
  c.free_stack[c.free_top++] = m.slot_;
  ring::RingHeader& h = c.ring->header();
  if (h.space_waiters.load(std::memory_order_relaxed) != 0) {
    h.space_seq.fetch_add(1, std::memory_order_release);
    detail::futex_wake_all(h.space_seq);
  }
  return Status::Ok;
}

Status Consumer::nack(const Message& m, std::chrono::nanoseconds) {
  // TODO(issue 3): give the message back to the group for redelivery.
  return ack(m) == Status::Ok ? Status::Closed : Status::NotHeld;
}

Status Consumer::status() const noexcept { return state_ ? state_->last : Status::Closed; }
std::uint32_t Consumer::in_flight() const noexcept {
  return state_ ? state_->options.max_in_flight - state_->free_top : 0;
}
std::string_view Consumer::group() const noexcept { return state_ ? std::string_view(state_->group_name) : std::string_view(); }

}  // namespace shmq

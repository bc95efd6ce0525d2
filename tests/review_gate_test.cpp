// Hostile review of the cheap gate (ChannelState::cheap_gate()).
#include <atomic>
#include <thread>

#include "ringbuffer/record_ring.hpp"
#include "shm/channel_state.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

class ReviewGate : public ChannelTest {};

// The "same sum of moves" check is taken over the groups that are not free at each pass, and
// remove_group() (no clean_lock, no give-back lock) can turn one free between the two passes. Its
// moves then leave the second sum, and a give-back lock cycle of another group in the same window
// puts the same amount back in: the sums are equal though a message moved.
//
// Group b (slot 0) has a consumer H holding P, in the last consumer slot (the gate reads its
// low_held last). Group a (slot 1) was created once and never locked since (moves == 2: its
// ensure_group's lock). While the reclaimer's cheap gate (under clean_lock) reads the consumer
// slots, another thread nacks P (b's moves + 2; list_low_b = P, read already; H's low_held = ~0)
// and removes group a (its 2 leave the second sum). The gate returns a position above P, which is
// on b's give-back list: reclaim would reuse it under the next delivery.
TEST_F(ReviewGate, AGroupRemovedWhileTheGateReadsHidesAnotherGroupsMoveFromTheSumOfMoves) {
  ChannelOptions o = memory_options();
  o.max_consumers = 4096;  // a long pass over the consumer slots: the window
  o.max_groups = 2;
  o.max_deliveries = 1000000;
  Channel ch = Channel::open(channel_name(), o);
  detail::ChannelState& s = ch.state();
  ch.ensure_group("b");  // slot 0
  // H in the last slot: the slots before it look taken while it joins, then are free again.
  for (std::uint32_t c = 0; c + 1 < o.max_consumers; ++c) s.consumers[c].state.store(detail::kActive);
  Consumer h(ch, "b", ConsumerOptions{.max_in_flight = 1});
  for (std::uint32_t c = 0; c + 1 < o.max_consumers; ++c) s.consumers[c].state.store(detail::kFree);
  ASSERT_EQ(s.consumers[o.max_consumers - 1].state.load(), detail::kActive);
  Producer p(ch, "p");

  std::uint64_t attempts = 0, bad = 0, bad_g = 0, bad_p = 0, fallbacks = 0;
  const auto until = Clock::now() + 60s;
  while (Clock::now() < until && bad == 0) {
    ++attempts;
    const Status pst = p.publish("m").status;
    ASSERT_EQ(pst, Status::Ok) << "attempt " << attempts << " tail " << s.ring->tail() << " cleaned " << s.ring->cleaned()
                               << " next b " << s.groups[0].next.load() << " next a " << s.groups[1].next.load() << " state a "
                               << s.groups[1].state.load() << " cheap " << s.cheap_gate() << " exact " << s.gate();
    auto m = h.poll();
    ASSERT_TRUE(m);
    const std::uint64_t P = m->position();
    // Group a, made now (slot 1, its cursor past P). A fresh group has had one lock cycle (its
    // ensure_group's): moves == 2. Any even value works with as many lock cycles of other groups
    // in the window; 2 (the first attempt's own value) is kept for every attempt.
    ASSERT_LT(s.find_group("a"), 0);
    ch.ensure_group("a", Start::Latest);
    if (attempts == 1) {
      ASSERT_EQ(s.groups[1].moves.load(), 2u) << "a fresh group: one lock cycle (ensure_group)";
    }
    s.groups[1].moves.store(2);
    std::atomic<int> go{0};
    const unsigned delay = static_cast<unsigned>(attempts % 64) * 8;
    std::atomic<int> ready{0};
    std::thread t([&] {
      ready.store(1, std::memory_order_release);
      while (go.load(std::memory_order_acquire) == 0) __builtin_ia32_pause();
      for (unsigned i = 0; i < delay; ++i) __builtin_ia32_pause();
      EXPECT_EQ(h.nack(*m), Status::Ok);
      EXPECT_TRUE(ch.remove_group("a"));
    });
    while (ready.load(std::memory_order_acquire) == 0) __builtin_ia32_pause();
    s.ring->lock_cleaning(detail::self_token(), &detail::ChannelState::alive);  // as reclaim does
    go.store(1, std::memory_order_release);
    const std::uint64_t g = s.cheap_gate();
    s.ring->unlock_cleaning();
    t.join();
    if (g == detail::ChannelState::kNoCheapGate) ++fallbacks;
    else if (g > P) {
      ++bad;
      bad_g = g;
      bad_p = P;
    }
    // P is back on b's list: take it again and ack it.
    auto again = h.poll();
    ASSERT_TRUE(again);
    ASSERT_EQ(again->position(), P);
    ASSERT_EQ(h.ack(*again), Status::Ok);
  }
  EXPECT_EQ(bad, 0u) << "after " << attempts << " attempts (" << fallbacks << " fell back): the cheap gate said "
                     << bad_g << " while " << bad_p << " was held or on group b's give-back list the whole time";
}

// A low_held that is not a ring position (scribbled) and is above what a claim needs is taken as
// the gate: reclaim frees nothing at an unaligned gate yet says there is room, so every publish
// spins to its timeout, while the exact gate (which never reads low_held) would free the ring. It
// lasts until the consumer takes again from the cursor, which it never does: nothing new is published.
TEST_F(ReviewGate, AnUnalignedLowHeldAboveTheClaimStallsEveryProducerThoughTheExactGateFrees) {
  ChannelOptions o = memory_options(64 << 10, 1024);
  Channel ch = Channel::open(channel_name(), o);
  detail::ChannelState& s = ch.state();
  Consumer c(ch, "g", ConsumerOptions{.max_in_flight = 1});
  Producer p(ch, "p");
  const std::string body(200, 'x');
  // Every message taken and acked, until the next publish needs a reclaim (under 1 KiB free).
  for (int i = 0; i < 10000 && s.ring->tail() + 1024 <= s.ring->cleaned() + s.ring->capacity(); ++i) {
    ASSERT_EQ(p.publish(body).status, Status::Ok);
    auto m = c.poll();
    ASSERT_TRUE(m);
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  const std::uint64_t tail = s.ring->tail();
  ASSERT_GT(tail + 1024, s.ring->cleaned() + s.ring->capacity()) << "the ring is full of acked records";
  ASSERT_EQ(s.groups[0].next.load(), tail) << "the consumer took everything; it holds nothing and waits";
  s.consumers[0].low_held.store(tail - 4);  // scribbled: not a multiple of kAlign
  EXPECT_EQ(s.gate(), tail) << "the exact gate: everything is acked";
  PublishOptions po;
  po.timeout = 300ms;
  std::uint64_t ok = 0;
  for (int i = 0; i < 20; ++i) ok += p.publish(body, po).status == Status::Ok;
  EXPECT_EQ(ok, 20u) << "cheap gate " << s.cheap_gate() << ", exact " << s.gate() << ", cleaned " << s.ring->cleaned()
                     << ": a reclaim at the unaligned cheap gate freed nothing and said there was room";
}

}  // namespace
}  // namespace shmq::test

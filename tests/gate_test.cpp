// The cheap gate (ChannelState::cheap_gate()): the lowest ring position anybody needs, read from
// each group's cursor and list_low and each consumer's low_held, with no lock; reclaim uses it
// when it is enough and asks the exact (locked, scanning) gate otherwise. Claim: it is never above
// the exact gate, so no held, given-back or undelivered record is ever reused under it.
#include <sys/mman.h>

#include <atomic>
#include <deque>
#include <random>
#include <thread>

#include "ringbuffer/record_ring.hpp"
#include "shm/channel_state.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

class CheapGate : public ChannelTest {};

// The gate of a quiet channel, both ways; the exact one takes the locks, so nothing moves meanwhile.
std::pair<std::uint64_t, std::uint64_t> both(Channel& ch) {
  detail::ChannelState& s = ch.state();
  return {s.cheap_gate(), s.gate()};
}

TEST_F(CheapGate, IsAtOrBelowTheExactGateAndEqualToItOnceNothingIsHeld) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g", ConsumerOptions{.max_in_flight = 8});
  Consumer x(ch, "h", ConsumerOptions{.exclusive = true});
  Producer p(ch, "p");
  std::vector<std::uint64_t> pos;
  for (int i = 1; i <= 8; ++i) pos.push_back(p.publish("m" + std::to_string(i)).position);
  auto [cheap, exact] = both(ch);
  EXPECT_EQ(exact, pos[0]) << "both cursors at the first record";
  EXPECT_EQ(cheap, exact);
  std::vector<Message> got(4);
  ASSERT_EQ(c.poll_batch(got), 4u);  // g holds m1..m4
  std::vector<Message> xs(8);
  ASSERT_EQ(x.poll_batch(xs), 8u);  // h holds m1..m8
  ASSERT_EQ(x.ack_up_to(xs[7]), 8u);
  std::tie(cheap, exact) = both(ch);
  EXPECT_EQ(exact, pos[0]);
  EXPECT_EQ(cheap, pos[0]);
  ASSERT_EQ(c.ack(got[0]), Status::Ok);
  ASSERT_EQ(c.nack(got[1]), Status::Ok);  // m2 to the list
  std::tie(cheap, exact) = both(ch);
  EXPECT_EQ(exact, pos[1]) << "m2 on the list";
  EXPECT_NE(cheap, detail::ChannelState::kNoCheapGate);
  EXPECT_LE(cheap, exact) << "stale-low at most";
  EXPECT_EQ(c.ack(std::span<const Message>(got).subspan(2)), 2u);
  auto again = c.poll();  // m2, from the list
  ASSERT_TRUE(again);
  ASSERT_EQ(again->position(), pos[1]);
  std::tie(cheap, exact) = both(ch);
  EXPECT_EQ(exact, pos[1]);
  EXPECT_LE(cheap, exact);
  ASSERT_EQ(c.ack(*again), Status::Ok);
  std::tie(cheap, exact) = both(ch);
  EXPECT_EQ(exact, pos[4]) << "g's cursor";
  EXPECT_EQ(cheap, exact) << "holding nothing, the consumers' words no longer hold the ring back";
}

TEST_F(CheapGate, AGiveBackLockHolderThatDiedMakesItAskTheExactGateUntilTheNextHolder) {
  const std::string name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  ch.ensure_group("g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish("m").status, Status::Ok);
  EXPECT_NE(ch.state().cheap_gate(), detail::ChannelState::kNoCheapGate);
  const pid_t holder = fork_child([&] {
    Channel c2 = Channel::open(name, memory_options());
    c2.state().lock_give_back(c2.state().groups[0]);
    ::kill(::getpid(), SIGKILL);
    return kChildFailed;
  });
  ASSERT_TRUE(wait_child(holder, 30s).killed_by(SIGKILL));
  EXPECT_EQ(ch.state().cheap_gate(), detail::ChannelState::kNoCheapGate) << "moves left odd by the dead holder";
  const std::uint64_t exact = ch.state().gate();  // takes the dead holder's lock over, settles, unlocks
  EXPECT_EQ(ch.state().cheap_gate(), exact) << "moves even again after the next holder";
}

// Under back-pressure on a small ring, consumers in three processes hold messages for a while
// (up to 24 each, acked oldest first, some nacked back to the list, some taken in batches), and
// check every payload they hold again just before they ack it: a record reused under a held
// message (a gate too high) changes its bytes. Every message must arrive whole, exactly once acked.
TEST_F(CheapGate, HeldAndGivenBackMessagesAreNeverReusedUnderBackPressure) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options(64 << 10, 1024);
  o.liveness_interval = 100ms;
  o.max_deliveries = 1000;  // a message nacked again and again stays here (not dead-lettered, which this does not count)
  const std::uint64_t n = scaled(60000);
  Channel ch = Channel::open(name, o);
  ch.ensure_group("g");
  const AckTally tally(n);
  auto* bad = static_cast<std::atomic<std::uint32_t>*>(
      ::mmap(nullptr, 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  const auto payload_of = [](std::uint64_t seq) {
    std::string s(40 + seq % 200, '\0');
    for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>('a' + (seq * 31 + i) % 26);
    return s;
  };
  auto consume = [&](unsigned seed) {
    return [&, seed] {
      Channel c2 = Channel::open(name, o);
      Consumer c(c2, "g", ConsumerOptions{.wait = Wait::Block, .max_in_flight = 32});
      std::mt19937 rng(seed);
      std::deque<Message> held;
      std::vector<Message> batch(6);
      auto idle_since = Clock::now();
      auto check = [&](const Message& m) {
        const std::uint64_t seq = m.id().seq;
        if (seq < 1 || seq > n || m.text() != payload_of(seq)) bad->fetch_add(1);
      };
      for (;;) {
        const std::size_t want = held.size() >= 24 ? 0 : 1 + rng() % 6;
        std::size_t k = 0;
        if (want) k = c.poll_batch(std::span(batch).first(want), 20ms);
        for (std::size_t j = 0; j < k; ++j) {
          check(batch[j]);
          held.push_back(batch[j]);
        }
        if (k) idle_since = Clock::now();
        else if (held.empty() && Clock::now() - idle_since > 3s) return kChildOk;  // drained
        // Let go of some: the oldest acked (checked again first), now and then one nacked; all
        // of them when nothing new came (a producer waits for their space).
        const std::size_t drop = k == 0 ? held.size() : rng() % (held.size() + 1) / 2 + (held.size() >= 24);
        for (std::size_t j = 0; j < drop && !held.empty(); ++j) {
          Message m = held.front();
          held.pop_front();
          check(m);
          if (rng() % 16 == 0) {
            CHILD_CHECK(c.nack(m) == Status::Ok);
          } else {
            CHILD_CHECK(c.ack(m) == Status::Ok);
            tally.acked(m);
          }
        }
      }
    };
  };
  const pid_t a = fork_child(consume(1), 120);
  const pid_t b = fork_child(consume(2), 120);
  const pid_t d = fork_child(consume(3), 120);
  publish_sequences(ch, n, payload_of, [&] {  // what held the ring
    detail::ChannelState& cs = ch.state();
    std::string lows;
    for (std::uint32_t c = 0; c < cs.options.max_consumers; ++c)
      if (cs.consumers[c].state.load() == detail::kActive) {
        lows += " c" + std::to_string(c) + " low_held " + std::to_string(cs.consumers[c].low_held.load()) + " entries:";
        for (std::uint32_t k = 0; k < 32; ++k)
          if (auto v = cs.consumers[c].in_flight[k].load()) lows += " " + std::to_string(detail::held_position(v));
      }
    return "tail " + std::to_string(cs.ring->tail()) + " cleaned " + std::to_string(cs.ring->cleaned()) + " next " +
           std::to_string(cs.groups[0].next.load()) + " given_back " + std::to_string(cs.groups[0].given_back.load()) +
           " list_low " + std::to_string(cs.groups[0].list_low.load()) + " moves " + std::to_string(cs.groups[0].moves.load()) +
           " cheap " + std::to_string(cs.cheap_gate()) + " exact " + std::to_string(cs.gate()) + lows;
  });
  EXPECT_TRUE(wait_child(a, 90s).ok());
  EXPECT_TRUE(wait_child(b, 90s).ok());
  EXPECT_TRUE(wait_child(d, 90s).ok());
  const AckTally::Totals t = tally.totals();
  EXPECT_EQ(bad->load(), 0u) << "payloads changed under a consumer that held them";
  EXPECT_EQ(t.missing, 0u);
  EXPECT_EQ(t.doubled, 0u);
  ::munmap(bad, 4);
}

// From a hostile review of the cheap gate: each of the next two failed before its fix.

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
TEST_F(CheapGate, AGroupRemovedWhileTheGateReadsHidesAnotherGroupsMoveFromTheSumOfMoves) {
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
TEST_F(CheapGate, AnUnalignedLowHeldAboveTheClaimStallsEveryProducerThoughTheExactGateFrees) {
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

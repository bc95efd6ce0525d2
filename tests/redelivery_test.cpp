// Give-back: nack (with and without delay), redelivery of what a consumer held when it died or
// left, and the move of a poison message to NAME.dlq after max_deliveries.

#include <atomic>
#include <map>
#include <random>
#include <set>

#include "support.hpp"

namespace shmq::test {
namespace {

class Redelivery : public ChannelTest {};

std::string payload_of(std::uint64_t i) { return "message-" + std::to_string(i); }

TEST_F(Redelivery, NackedMessageComesBackBeforeNewerOnesWithOneMoreDelivery) {
  auto ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  for (int i = 0; i < 3; ++i) ASSERT_EQ(p.publish(payload_of(i)).status, Status::Ok);
  auto first = c.poll(1s);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->deliveries(), 1u);
  EXPECT_EQ(c.nack(*first), Status::Ok);
  EXPECT_EQ(c.nack(*first), Status::NotHeld) << "given back already";
  EXPECT_EQ(c.ack(*first), Status::NotHeld);
  auto again = c.poll(1s);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->text(), payload_of(0));
  EXPECT_EQ(again->deliveries(), 2u);
  EXPECT_EQ(again->id(), first->id());
  EXPECT_EQ(c.ack(*again), Status::Ok);
  for (int i = 1; i < 3; ++i) {
    auto m = c.poll(1s);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->text(), payload_of(i));
    EXPECT_EQ(m->deliveries(), 1u);
    EXPECT_EQ(c.ack(*m), Status::Ok);
  }
}

TEST_F(Redelivery, NackWithADelayLetsNewerMessagesGoFirst) {
  auto ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish(payload_of(0)).status, Status::Ok);
  ASSERT_EQ(p.publish(payload_of(1)).status, Status::Ok);
  auto first = c.poll(1s);
  ASSERT_TRUE(first);
  ASSERT_EQ(c.nack(*first, 300ms), Status::Ok);
  auto next = c.poll(1s);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->text(), payload_of(1)) << "the delayed message must wait its turn";
  EXPECT_EQ(c.ack(*next), Status::Ok);
  auto again = c.poll(10s);  // comes once the delay has passed
  ASSERT_TRUE(again);
  EXPECT_EQ(again->text(), payload_of(0));
  EXPECT_EQ(again->deliveries(), 2u);
  EXPECT_GE(again->timestamp_ns(), first->timestamp_ns());
}

TEST_F(Redelivery, ConsumerThatLeavesGivesBackWhatItHeld) {
  auto ch = Channel::open(channel_name(), memory_options());
  Producer p(ch, "p");
  ch.ensure_group("g");
  for (int i = 0; i < 5; ++i) ASSERT_EQ(p.publish(payload_of(i)).status, Status::Ok);
  const std::uint64_t first = ch.stats().groups.at(0).next_position;
  {
    Consumer leaver(ch, "g");
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(leaver.poll(1s));
  }
  const ChannelStats st = ch.stats();
  ASSERT_EQ(st.groups.size(), 1u);
  EXPECT_EQ(st.groups[0].given_back, 3u);
  EXPECT_EQ(st.groups[0].in_flight, 0u);
  EXPECT_EQ(st.groups[0].lag_messages, 5u) << "3 given back + 2 never delivered";
  EXPECT_EQ(st.groups[0].low_water_mark, first);
  Consumer c(ch, "g");
  std::vector<std::string> got;
  while (auto m = c.poll(200ms)) {
    got.emplace_back(m->text());
    if (m->id().seq <= 3) {
      EXPECT_EQ(m->deliveries(), 2u) << m->text();
    }
    EXPECT_EQ(c.ack(*m), Status::Ok);
  }
  EXPECT_EQ(got, (std::vector<std::string>{payload_of(0), payload_of(1), payload_of(2), payload_of(3), payload_of(4)}));
}

TEST_F(Redelivery, RedeliversWhatADeadConsumerHeld) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options();
  o.liveness_interval = 100ms;
  auto ch = Channel::open(name, o);
  ch.ensure_group("g");
  Producer p(ch, "p");
  for (int i = 0; i < 10; ++i) ASSERT_EQ(p.publish(payload_of(i)).status, Status::Ok);
  Pipe ready;
  const pid_t victim = fork_child([&] {
    auto c2 = Channel::open(name, o);
    Consumer c(c2, "g");
    for (int i = 0; i < 4; ++i) CHILD_CHECK(c.poll(1s));
    ready.send(1);
    ::pause();  // held, never acked
    return kChildOk;
  });
  int one = 0;
  ASSERT_TRUE(ready.receive(one, 10s));
  ASSERT_TRUE(kill_child(victim).killed_by(SIGKILL));
  Consumer c(ch, "g", ConsumerOptions{.start = Start::Earliest, .wait = Wait::Block, .max_in_flight = 64});
  std::set<std::uint64_t> seen;
  std::uint32_t redelivered = 0;
  const auto deadline = Clock::now() + 20s;
  while (seen.size() < 10 && Clock::now() < deadline) {
    auto m = c.poll(100ms);
    if (!m) continue;
    EXPECT_TRUE(seen.insert(m->id().seq).second) << "seq " << m->id().seq << " twice";
    if (m->id().seq <= 4) {
      EXPECT_EQ(m->deliveries(), 2u);
      ++redelivered;
    } else {
      EXPECT_EQ(m->deliveries(), 1u);
    }
    EXPECT_EQ(c.ack(*m), Status::Ok);
  }
  EXPECT_EQ(seen.size(), 10u);
  EXPECT_EQ(redelivered, 4u);
}

// 3 consumer processes share a group; one is SIGKILLed at a random point holding messages; the
// other two finish. Every message is acked exactly once; the redelivered ones say so.
TEST_F(Redelivery, CompetingConsumersAckEveryMessageExactlyOnceWhenOneIsKilled) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options(1 << 20, 4096);
  o.liveness_interval = 100ms;
  const std::uint64_t n = scaled(500000);
  auto ch = Channel::open(name, o);
  ch.ensure_group("g");
  const AckTally tally(n);
  std::mt19937 rng(static_cast<unsigned>(::getpid()));
  // Well below the victim's share (a third of n, less when it is scheduled badly): it must get
  // there, or it is never killed and the test waits for its watchdog.
  const std::uint64_t victim_after = 1 + rng() % (n / 20);
  std::printf("victim stops after %lu messages (seed pid %d)\n", static_cast<unsigned long>(victim_after), ::getpid());
  Pipe victim_ready;
  auto consume = [&](bool victim) {
    return [&, victim] {
      auto c2 = Channel::open(name, o);
      Consumer c(c2, "g", ConsumerOptions{.start = Start::Earliest, .wait = Wait::Block, .max_in_flight = 16});
      std::uint64_t polled = 0;
      auto idle_since = Clock::now();
      for (;;) {
        auto m = c.poll(50ms);
        if (!m) {
          if (!victim && Clock::now() - idle_since > 3s) return kChildOk;  // drained
          continue;
        }
        idle_since = Clock::now();
        const std::uint64_t seq = m->id().seq;
        CHILD_CHECK(seq >= 1 && seq <= n);
        CHILD_CHECK(m->text() == payload_of(seq));
        if (victim && ++polled >= victim_after) {  // hold this one and whatever else, and wait to die
          victim_ready.send(1);
          ::pause();
        }
        CHILD_CHECK(c.ack(*m) == Status::Ok);
        tally.acked(*m);
      }
    };
  };
  const pid_t v = fork_child(consume(true), 120);
  const pid_t a = fork_child(consume(false), 120);
  const pid_t b = fork_child(consume(false), 120);
  // The victim is killed the moment it holds its messages, while the producer runs: a live victim
  // would keep them (and hold the ring) for as long as it lives.
  VictimKiller killer(v, victim_ready);
  publish_sequences(ch, n, payload_of);
  killer.join();
  EXPECT_TRUE(killer.killed());
  EXPECT_TRUE(wait_child(a, 90s).ok());
  EXPECT_TRUE(wait_child(b, 90s).ok());
  const AckTally::Totals t = tally.totals();
  EXPECT_EQ(t.missing, 0u);
  EXPECT_EQ(t.doubled, 0u);
  EXPECT_GE(t.again, 1u) << "the victim held at least the message it stopped at";
  EXPECT_LE(t.again, 16u) << "only what the victim held comes back";
}

TEST_F(Redelivery, LiveSlowConsumerKeepsWhatItHoldsWithoutAVisibilityTimeout) {
  ChannelOptions o = memory_options();
  o.liveness_interval = 50ms;
  auto ch = Channel::open(channel_name(), o);
  ch.ensure_group("g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish(payload_of(0)).status, Status::Ok);
  Consumer slow(ch, "g");
  auto held = slow.poll(1s);
  ASSERT_TRUE(held);
  Consumer other(ch, "g");
  const auto until = Clock::now() + 600ms;  // many liveness intervals
  while (Clock::now() < until) EXPECT_FALSE(other.poll(20ms)) << "a live consumer's message was taken from it";
  EXPECT_EQ(slow.ack(*held), Status::Ok);
}

TEST_F(Redelivery, VisibilityTimeoutGivesBackWhatASlowConsumerHeld) {
  ChannelOptions o = memory_options();
  o.liveness_interval = 50ms;
  auto ch = Channel::open(channel_name(), o);
  ch.ensure_group("g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish(payload_of(0)).status, Status::Ok);
  ConsumerOptions slow_options;
  slow_options.max_in_flight = 1;
  slow_options.visibility_timeout = 100ms;
  Consumer slow(ch, "g", slow_options);
  auto held = slow.poll(1s);
  ASSERT_TRUE(held);
  Consumer other(ch, "g");
  std::optional<Message> again;
  const auto deadline = Clock::now() + 10s;
  while (!again && Clock::now() < deadline) again = other.poll(20ms);
  ASSERT_TRUE(again) << "the message held past the visibility timeout never came back";
  EXPECT_EQ(again->text(), payload_of(0));
  EXPECT_EQ(again->deliveries(), 2u);
  EXPECT_EQ(slow.ack(*held), Status::NotHeld) << "it was given to another consumer";
  EXPECT_EQ(other.ack(*again), Status::Ok);
  // The slow consumer's only in-flight entry is usable again.
  ASSERT_EQ(p.publish(payload_of(1)).status, Status::Ok);
  auto next = slow.poll(1s);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->text(), payload_of(1));
  EXPECT_EQ(slow.ack(*next), Status::Ok);
}

TEST_F(Redelivery, SecondAckAndForeignAckAreRefusedWithoutSideEffects) {
  auto ch = Channel::open(channel_name(), memory_options());
  ch.ensure_group("g");
  Producer p(ch, "p");
  for (int i = 0; i < 2; ++i) ASSERT_EQ(p.publish(payload_of(i)).status, Status::Ok);
  Consumer a(ch, "g"), b(ch, "g");
  auto ma = a.poll(1s);
  auto mb = b.poll(1s);
  ASSERT_TRUE(ma && mb);
  EXPECT_EQ(b.ack(*ma), Status::NotHeld) << "b does not hold a's message";
  EXPECT_EQ(b.nack(*ma), Status::NotHeld);
  EXPECT_EQ(a.ack(*ma), Status::Ok);
  EXPECT_EQ(a.ack(*ma), Status::NotHeld) << "second ack";
  EXPECT_EQ(a.nack(*ma), Status::NotHeld) << "nack after ack";
  EXPECT_EQ(b.ack(*mb), Status::Ok);
  EXPECT_EQ(a.in_flight(), 0u);
  EXPECT_EQ(b.in_flight(), 0u);
  const ChannelStats st = ch.stats();
  ASSERT_EQ(st.groups.size(), 1u);
  EXPECT_EQ(st.groups[0].in_flight, 0u);
  EXPECT_EQ(st.groups[0].delivered, 2u) << "no double count";
  EXPECT_EQ(st.groups[0].low_water_mark, st.write_position);
}

TEST_F(Redelivery, PoisonMessageMovesToTheDeadLetterChannelWhileTheRestFlows) {
  const std::string name = channel_name();
  const std::string dlq = name + ".dlq";
  ChannelOptions o = memory_options();
  o.max_deliveries = 3;
  auto ch = Channel::open(name, o);
  ch.ensure_group("g");
  Producer p(ch, "p");
  PublishOptions poison;
  poison.key = "order-666";
  ASSERT_EQ(p.publish("poison", poison).status, Status::Ok);
  const std::uint64_t behind = scaled(10000);
  for (std::uint64_t i = 1; i <= behind; ++i) ASSERT_EQ(p.publish(payload_of(i)).status, Status::Ok);
  Consumer c(ch, "g");
  std::uint64_t good = 0, poison_seen = 0;
  while (auto m = c.poll(300ms)) {
    if (m->text() == "poison") {
      ++poison_seen;
      EXPECT_LE(m->deliveries(), 3u);
      EXPECT_EQ(c.nack(*m), Status::Ok);
    } else {
      ++good;
      EXPECT_EQ(c.ack(*m), Status::Ok);
    }
  }
  EXPECT_EQ(good, behind);
  EXPECT_EQ(poison_seen, 3u);
  ASSERT_TRUE(Channel::exists(dlq));
  auto d = Channel::attach(dlq);
  Consumer dc(d, "dead-letters");
  auto dead = dc.poll(1s);
  ASSERT_TRUE(dead);
  EXPECT_EQ(dead->text(), "poison");
  EXPECT_EQ(dead->key(), "order-666");
  EXPECT_EQ(dead->id().seq, 1u) << "the copy keeps the inner id";
  EXPECT_EQ(dc.ack(*dead), Status::Ok);
  EXPECT_FALSE(dc.poll(0ns));
  Channel::remove(dlq);
}

// The dead letters of a durable channel are as durable as it is: NAME.dlq gets the origin's
// durability and a journal beside its own, so a host crash (both segments gone) keeps them. Before,
// NAME.dlq was a Memory channel and the acked-away poison message was gone with the host.
TEST_F(Redelivery, DeadLettersOfASyncChannelSurviveAHostCrash) {
  const std::string name = channel_name();
  const std::string dlq = name + ".dlq";
  TestDir dir("dlq-durable", true);
  ChannelOptions o = memory_options();
  o.durability = Durability::Sync;
  o.journal_dir = dir.path();
  o.max_deliveries = 2;
  {
    auto ch = Channel::open(name, o);
    ch.ensure_group("g");
    Producer p(ch, "p");
    PublishOptions poison;
    poison.key = "order-13";
    ASSERT_EQ(p.publish("poison", poison).status, Status::Ok);
    Consumer c(ch, "g");
    unsigned seen = 0;
    while (auto m = c.poll(300ms)) {
      ++seen;
      EXPECT_EQ(c.nack(*m), Status::Ok);
    }
    EXPECT_EQ(seen, 2u);
    ASSERT_TRUE(Channel::exists(dlq));
    EXPECT_EQ(Channel::attach(dlq, false).options().durability, Durability::Sync);
  }
  // The host crashes: every segment is gone, the journals stay.
  ::unlink(segment_path(name).c_str());
  ::unlink(segment_path(dlq).c_str());
  ChannelOptions d = o;
  d.max_deliveries = 5;
  auto back = Channel::open(dlq, d);
  EXPECT_TRUE(back.recovery().recovered);
  Consumer dc(back, "dead-letters");
  auto dead = dc.poll(2s);
  ASSERT_TRUE(dead) << "the dead letter was lost with the host";
  EXPECT_EQ(dead->text(), "poison");
  EXPECT_EQ(dead->key(), "order-13");
  EXPECT_EQ(dc.ack(*dead), Status::Ok);
  // And the origin does not deliver it again: it was acked there once its copy was durable.
  auto origin = Channel::open(name, o);
  Consumer c(origin, "g");
  auto again = c.poll(300ms);
  EXPECT_FALSE(again && again->text() == "poison" && again->deliveries() <= 2) << "delivered again below max_deliveries";
}

// A dead letter copied again (its first copy made by a process that died before acking the
// original) is a Duplicate that names where the first copy is: on a Sync NAME.dlq the original is
// acked only once that copy is durable, and the wait needs its position (it was 0).
TEST_F(Redelivery, ADeadLetterCopiedAgainIsADuplicateThatNamesTheFirstCopy) {
  const std::string name = channel_name();
  auto ch = Channel::open(name, memory_options());
  ch.ensure_group("g");
  Producer origin(ch, "p");
  ASSERT_EQ(origin.publish("poison").status, Status::Ok);
  Consumer c(ch, "g");
  auto m = c.poll(1s);
  ASSERT_TRUE(m);
  auto dlq = Channel::open(channel_name("dlq"), memory_options());
  Producer copier(dlq, "dlq-g0");
  ASSERT_EQ(copier.publish("an earlier dead letter").status, Status::Ok);  // the copy is not at position 0
  const Published first = detail::publish_copy(copier, *m, 1, 7);
  ASSERT_EQ(first.status, Status::Ok);
  ASSERT_NE(first.position, 0u);
  const Published again = detail::publish_copy(copier, *m, 1, 7);
  EXPECT_EQ(again.status, Status::Duplicate);
  EXPECT_EQ(again.position, first.position);
  EXPECT_EQ(c.ack(*m), Status::Ok);
}

// Reads every copy in NAME.dlq's "dead-letters" group: how many of each original sequence.
std::map<std::uint64_t, unsigned> dead_letter_copies(const std::string& dlq) {
  std::map<std::uint64_t, unsigned> copies;
  auto d = Channel::attach(dlq);
  Consumer dc(d, "dead-letters");
  while (auto m = dc.poll(100ms)) {
    ++copies[m->id().seq];
    EXPECT_EQ(dc.ack(*m), Status::Ok);
  }
  return copies;
}

// Issue 10.10: 200 short-lived consumer processes each dead-letter one poison message (before, the
// 65th made poll throw "the producer table is full" of NAME.dlq, the next one crashed); the group
// drains and NAME.dlq holds each poison message exactly once.
TEST_F(Redelivery, TwoHundredShortLivedConsumersEachDeadLetterAPoisonMessageOnce) {
  const std::string name = channel_name();
  const std::string dlq = name + ".dlq";
  ChannelOptions o = memory_options();
  o.max_deliveries = 1;  // a nacked message goes to NAME.dlq at its next poll
  constexpr std::uint64_t kPoison = 200;
  {
    auto ch = Channel::open(name, o);
    ch.ensure_group("g");
    Producer p(ch, "p");
    for (std::uint64_t i = 1; i <= kPoison; ++i) ASSERT_EQ(p.publish(payload_of(i)).status, Status::Ok);
  }
  // Process i's poll dead-letters the message process i - 1 nacked (redeliveries go first), then
  // gets message i + 1, which it nacks: processes 1 .. 200 dead-letter one message each.
  for (std::uint64_t i = 0; i <= kPoison; ++i) {
    const pid_t child = fork_child([&] {
      auto ch = Channel::open(name, o);
      Consumer c(ch, "g");
      auto m = c.poll(i < kPoison ? 1s : 100ms);
      if (i == kPoison) {
        CHILD_CHECK(!m);
        return kChildOk;
      }
      CHILD_CHECK(m);
      CHILD_CHECK(m->deliveries() == 1 && m->text() == payload_of(i + 1));
      CHILD_CHECK(c.nack(*m) == Status::Ok);
      return kChildOk;
    });
    const ChildResult r = wait_child(child, 30s);
    ASSERT_TRUE(r.ok()) << "consumer process " << i << " " << r.describe();
  }
  auto ch = Channel::open(name, o);
  {
    Consumer c(ch, "g");
    while (auto m = c.poll(100ms)) EXPECT_EQ(c.nack(*m), Status::Ok);  // the rest go the same way
  }
  const ChannelStats st = ch.stats();
  ASSERT_EQ(st.groups.size(), 1u);
  EXPECT_EQ(st.groups[0].lag_messages, 0u) << "the group drained";
  EXPECT_EQ(st.groups[0].in_flight, 0u);
  EXPECT_EQ(st.groups[0].given_back, 0u);
  EXPECT_EQ(st.depth_bytes, 0u) << "nothing holds the ring";
  ASSERT_TRUE(Channel::exists(dlq));
  const auto copies = dead_letter_copies(dlq);
  EXPECT_EQ(copies.size(), kPoison);
  for (std::uint64_t i = 1; i <= kPoison; ++i)
    EXPECT_EQ(copies.count(i) ? copies.at(i) : 0u, 1u) << "copies of poison message " << i << " in NAME.dlq";
  Channel::remove(dlq);
}

// Issue 10.9: a consumer (another process) of a removed group whose slot a new group reuses
// gives its held messages back when it nacks or leaves: they must not reach the new group's
// give-back list (before, the new group got them there and again from its cursor), and the old
// consumer takes nothing of the new group.
TEST_F(Redelivery, AConsumerOfARemovedGroupGivesNothingToTheGroupThatReusedItsSlot) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options();
  o.max_groups = 1;  // the new group must take the old one's slot
  auto ch = Channel::open(name, o);
  ch.ensure_group("old");
  {
    Producer p(ch, "p");
    for (int i = 1; i <= 4; ++i) ASSERT_EQ(p.publish(payload_of(i)).status, Status::Ok);
  }
  Pipe holding, go;
  const pid_t child = fork_child([&] {
    holding.close_read();
    go.close_write();
    auto c = Channel::open(name, o);
    Consumer a(c, "old");
    auto m1 = a.poll(1s);
    auto m2 = a.poll(1s);
    CHILD_CHECK(m1 && m2);
    CHILD_CHECK(holding.send(std::uint32_t{1}));
    std::uint32_t ok = 0;
    CHILD_CHECK(go.receive(ok, 20s));
    CHILD_CHECK(!a.poll(50ms) && a.status() == Status::Closed);  // nothing of the new group
    (void)a.nack(*m1);  // and m2 goes back when `a` leaves
    return kChildOk;
  });
  holding.close_write();
  go.close_read();
  std::uint32_t one = 0;
  ASSERT_TRUE(holding.receive(one, 20s));
  ASSERT_TRUE(ch.remove_group("old"));
  ch.ensure_group("new", Start::Earliest);  // the same slot; its messages are still in the ring
  ASSERT_TRUE(go.send(std::uint32_t{1}));
  ASSERT_TRUE(wait_child(child, 20s).ok());
  Consumer b(ch, "new");
  std::map<std::string, unsigned> got;
  while (auto m = b.poll(100ms)) {
    ++got[std::string(m->text())];
    EXPECT_EQ(m->deliveries(), 1u) << m->text() << " came to the new group as a redelivery";
    EXPECT_EQ(b.ack(*m), Status::Ok);
  }
  std::map<std::string, unsigned> want;
  for (int i = 1; i <= 4; ++i) want[payload_of(i)] = 1;
  EXPECT_EQ(got, want);
  EXPECT_EQ(ch.stats().groups[0].given_back, 0u);
}

}  // namespace
}  // namespace shmq::test

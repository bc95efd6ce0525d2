// Channel::stats(): positions, depth, per-group lag, producers and consumers, consistent with what
// was published, polled and acked, and with which processes are alive.
#include "support.hpp"

#include <algorithm>

namespace shmq::test {
namespace {

const GroupStats* find_group(const ChannelStats& s, std::string_view name) {
  auto it = std::find_if(s.groups.begin(), s.groups.end(), [&](const GroupStats& g) { return g.name == name; });
  return it == s.groups.end() ? nullptr : &*it;
}
const ProducerStats* find_producer(const ChannelStats& s, std::string_view name) {
  auto it = std::find_if(s.producers.begin(), s.producers.end(),
                         [&](const ProducerStats& p) { return p.name == name; });
  return it == s.producers.end() ? nullptr : &*it;
}

// The rules that hold between the fields of any snapshot.
void expect_consistent(const ChannelStats& s) {
  EXPECT_LE(s.reclaimed_position, s.write_position);
  EXPECT_EQ(s.durable_position, s.write_position) << "Memory durability: everything is as durable as it gets";
  std::uint64_t lowest = s.write_position;
  for (const auto& g : s.groups) {
    SCOPED_TRACE("group " + g.name);
    EXPECT_LE(g.low_water_mark, g.next_position);
    EXPECT_LE(g.next_position, s.write_position);
    EXPECT_EQ(g.lag_bytes, s.write_position - g.next_position);
    EXPECT_EQ(g.lag_messages == 0, g.lag_bytes == 0);
    EXPECT_LE(g.lag_messages, g.lag_bytes);  // a record is at least a byte
    EXPECT_GE(g.low_water_mark, s.reclaimed_position);
    lowest = std::min(lowest, g.low_water_mark);
  }
  if (!s.groups.empty()) {
    EXPECT_EQ(s.depth_bytes, s.write_position - lowest);
  }
  EXPECT_LE(s.depth_bytes, s.ring_bytes);
  std::uint32_t live = 0;
  for (const auto& p : s.producers) live += p.alive ? 1u : 0u;
  EXPECT_EQ(s.live_producers, live);
  std::uint32_t consumers = 0;
  for (const auto& g : s.groups) consumers += g.consumers;
  EXPECT_EQ(s.live_consumers, consumers);
}

using Stats = ChannelTest;

TEST_F(Stats, ANewChannelReportsItsGeometryAndNothingElse) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 64 << 10));
  const auto s = ch.stats();
  EXPECT_EQ(s.name, name);
  EXPECT_EQ(s.ring_bytes, std::size_t{1} << 20);
  EXPECT_EQ(s.max_message_bytes, std::size_t{64} << 10);
  EXPECT_EQ(s.durability, Durability::Memory);
  EXPECT_EQ(s.depth_bytes, 0u);
  EXPECT_TRUE(s.groups.empty());
  EXPECT_TRUE(s.producers.empty());
  EXPECT_EQ(s.live_producers, 0u);
  EXPECT_EQ(s.live_consumers, 0u);
  expect_consistent(s);
}

TEST_F(Stats, PositionsLagAndDepthFollowPublishPollAndAck) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 64 << 10));
  Consumer c(ch, "g");
  Producer p(ch, "p");
  const auto s1 = ch.stats();
  expect_consistent(s1);
  ASSERT_EQ(s1.groups.size(), 1u);
  EXPECT_EQ(s1.groups[0].name, "g");
  EXPECT_EQ(s1.groups[0].consumers, 1u);
  EXPECT_EQ(s1.groups[0].lag_messages, 0u);
  EXPECT_EQ(s1.groups[0].in_flight, 0u);
  EXPECT_EQ(s1.groups[0].delivered, 0u);
  EXPECT_EQ(s1.live_consumers, 1u);
  EXPECT_EQ(s1.live_producers, 1u);

  const std::string payload(100, 'x');
  for (int i = 0; i < 10; ++i) ASSERT_EQ(p.publish(payload).status, Status::Ok);
  const auto s2 = ch.stats();
  expect_consistent(s2);
  EXPECT_GE(s2.write_position - s1.write_position, 1000u);
  EXPECT_LE(s2.write_position - s1.write_position, 10u * (100 + 512)) << "more than 512 bytes of framing a record";
  const auto* g2 = find_group(s2, "g");
  ASSERT_NE(g2, nullptr);
  EXPECT_EQ(g2->lag_messages, 10u);
  EXPECT_EQ(g2->next_position, s1.write_position);
  EXPECT_EQ(g2->lag_bytes, s2.write_position - s1.write_position);
  EXPECT_EQ(s2.depth_bytes, s2.write_position - s1.write_position);
  const auto* p2 = find_producer(s2, "p");
  ASSERT_NE(p2, nullptr);
  EXPECT_EQ(p2->id, p.last_id().producer);
  EXPECT_EQ(p2->next_seq, p.last_id().seq + 1);
  EXPECT_EQ(p2->published, 10u);
  EXPECT_EQ(p2->pid, ::getpid());
  EXPECT_TRUE(p2->alive);

  // Poll 4, ack 2.
  std::vector<Message> held;
  for (int i = 0; i < 4; ++i) {
    auto m = poll_for(c, 2s);
    ASSERT_TRUE(m);
    held.push_back(*m);
  }
  ASSERT_EQ(c.ack(held[0]), Status::Ok);
  ASSERT_EQ(c.ack(held[1]), Status::Ok);
  const auto s3 = ch.stats();
  expect_consistent(s3);
  const auto* g3 = find_group(s3, "g");
  ASSERT_NE(g3, nullptr);
  EXPECT_EQ(g3->lag_messages, 6u);
  EXPECT_EQ(g3->delivered, 4u);
  EXPECT_EQ(g3->in_flight, 2u);
  EXPECT_EQ(c.in_flight(), 2u);
  // Records of equal size are equally spaced: two are held (unacked) between the low-water mark
  // and the next record to deliver, six lie ahead.
  const std::uint64_t spacing = held[3].position() - held[2].position();
  EXPECT_EQ(held[1].position() - held[0].position(), spacing);
  EXPECT_EQ(g3->next_position - g3->low_water_mark, 2 * spacing);
  EXPECT_EQ(g3->lag_bytes, 6 * spacing);
  EXPECT_EQ(g3->low_water_mark - g2->next_position, 2 * spacing) << "two acked";
  EXPECT_EQ(s3.depth_bytes, 8 * spacing);

  ASSERT_EQ(c.ack(held[2]), Status::Ok);
  ASSERT_EQ(c.ack(held[3]), Status::Ok);
  for (int i = 0; i < 6; ++i) {
    auto m = poll_for(c, 2s);
    ASSERT_TRUE(m);
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  const auto s4 = ch.stats();
  expect_consistent(s4);
  const auto* g4 = find_group(s4, "g");
  ASSERT_NE(g4, nullptr);
  EXPECT_EQ(g4->lag_messages, 0u);
  EXPECT_EQ(g4->lag_bytes, 0u);
  EXPECT_EQ(g4->in_flight, 0u);
  EXPECT_EQ(g4->delivered, 10u);
  EXPECT_EQ(g4->next_position, s4.write_position);
  EXPECT_EQ(g4->low_water_mark, s4.write_position);
  EXPECT_EQ(s4.depth_bytes, 0u);
}

TEST_F(Stats, EachGroupHasItsOwnLagAndTheSlowestSetsTheDepth) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer fast(ch, "fast");
  Consumer slow(ch, "slow");
  Consumer fast2(ch, "fast");
  Producer p(ch, "p");
  const auto s0 = ch.stats();
  for (int i = 0; i < 20; ++i) ASSERT_EQ(p.publish("twenty bytes of text").status, Status::Ok);
  for (int i = 0; i < 20; ++i) {
    auto m = poll_for(fast, 2s);
    ASSERT_TRUE(m);
    ASSERT_EQ(fast.ack(*m), Status::Ok);
  }
  const auto s = ch.stats();
  expect_consistent(s);
  const auto* f = find_group(s, "fast");
  const auto* sl = find_group(s, "slow");
  ASSERT_NE(f, nullptr);
  ASSERT_NE(sl, nullptr);
  EXPECT_EQ(f->consumers, 2u);
  EXPECT_EQ(sl->consumers, 1u);
  EXPECT_EQ(s.live_consumers, 3u);
  EXPECT_EQ(f->lag_messages, 0u);
  EXPECT_EQ(sl->lag_messages, 20u);
  EXPECT_EQ(s.depth_bytes, s.write_position - s0.write_position);

  { Consumer gone = std::move(fast2); }
  const auto after = ch.stats();
  EXPECT_EQ(find_group(after, "fast")->consumers, 1u);
  EXPECT_EQ(after.live_consumers, 2u);
}

TEST_F(Stats, AProducerAndAConsumerInAKilledProcessShowAsNotAlive) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  Producer mine(ch, "mine");
  Pipe ready;
  const pid_t child = fork_child(
      [&]() -> int {
        Channel c2 = Channel::attach(name);
        Producer ghost(c2, "ghost");
        Consumer watcher(c2, "g");
        CHILD_CHECK(ghost.publish("boo").status == Status::Ok);
        const char r = 'r';
        CHILD_CHECK(ready.send(r));
        for (;;) ::pause();
      },
      60);
  char r = 0;
  ASSERT_TRUE(ready.receive(r, 30s));
  {
    const auto s = ch.stats();
    expect_consistent(s);
    const auto* ghost = find_producer(s, "ghost");
    ASSERT_NE(ghost, nullptr);
    EXPECT_TRUE(ghost->alive);
    EXPECT_EQ(ghost->pid, child);
    EXPECT_EQ(s.live_producers, 2u);
    EXPECT_EQ(s.live_consumers, 2u);
    EXPECT_EQ(find_group(s, "g")->consumers, 2u);
  }
  const auto k = kill_child(child);
  ASSERT_TRUE(k.killed_by(SIGKILL));
  const auto s = ch.stats();
  expect_consistent(s);
  const auto* ghost = find_producer(s, "ghost");
  ASSERT_NE(ghost, nullptr) << "a dead producer keeps its entry (its id and sequence)";
  EXPECT_FALSE(ghost->alive);
  EXPECT_EQ(ghost->pid, child) << "the last owner";
  EXPECT_EQ(ghost->published, 1u);
  const auto* own = find_producer(s, "mine");
  ASSERT_NE(own, nullptr);
  EXPECT_TRUE(own->alive);
  EXPECT_EQ(s.live_producers, 1u);
  EXPECT_EQ(s.live_consumers, 1u);
  EXPECT_EQ(find_group(s, "g")->consumers, 1u);
  // Its message is still there for the group.
  auto m = poll_for(c, 2s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "boo");
  EXPECT_EQ(c.ack(*m), Status::Ok);
}

}  // namespace
}  // namespace shmq::test

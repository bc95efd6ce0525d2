// A peer rewrites the segment of a live channel behind the library's back (issue 11): offsets,
// positions and frames read from shared memory must be checked where they are used, and every
// loop over shared data bounded by a count of our own. Each test runs the honest process in a
// forked child, so that a crash (SIGSEGV, SIGBUS) or a hang shows as that child's failure.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstddef>

#include "hostile_support.hpp"
#include "shm/crash_point.hpp"
#include "ringbuffer/record_ring.hpp"
#include "shm/segment.hpp"
#include "support.hpp"

namespace {
using namespace shmq;
using namespace shmq::test;
using detail::SegmentHeader;

class HostileSegment : public ChannelTest {};

// In an honest child: segments are mapped between PROT_NONE pages (test builds), so that an access
// outside the segment is a SIGSEGV, not a silent read of a neighbour mapping.
void guard_the_segment() {
#if defined(SHMQ_CRASH_POINTS)
  detail::set_guard_pages(true);
#endif
}

// The honest process of the tests below: joins group "g", publishes and consumes COUNT messages
// (acking them), tells the parent, waits for its go (the parent scribbles meanwhile), then runs
// AFTER. Its exit code is what AFTER returns.
pid_t honest_child(const std::string& name, Pipe& ready, Pipe& go, std::function<int(Channel&, Consumer&, Producer&)> after) {
  return fork_child([&, after = std::move(after)] {
    guard_the_segment();
    Channel c = Channel::attach(name, false);
    Consumer consumer(c, "g");
    Producer producer(c, "p");
    for (int i = 0; i < 20; ++i) CHILD_CHECK(producer.publish("message " + std::to_string(i)).status == Status::Ok);
    for (int i = 0; i < 20; ++i) {
      auto m = poll_for(consumer, 2000ms);
      CHILD_CHECK(m);
      CHILD_CHECK(consumer.ack(*m) == Status::Ok);
    }
    CHILD_CHECK(ready.send('r'));
    char x;
    CHILD_CHECK(go.receive(x, 10s));
    return after(c, consumer, producer);
  }, 30);
}

// Polls with a 10 ms timeout N times; true if none delivered anything. A Corrupt answer (an
// Error, or status Corrupt) is a correct outcome too: it is reported, and polling stops.
bool polls_deliver_nothing(Consumer& consumer, int n) {
  for (int i = 0; i < n; ++i) {
    try {
      if (auto m = consumer.poll(10ms)) {
        std::fprintf(stderr, "delivered again: position %lu\n", static_cast<unsigned long>(m->position()));
        return false;
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "poll: %s\n", e.what());
      return true;
    }
  }
  return true;
}

// Issue 11.1: the offsets of the tables are validated at attach; a peer that rewrites them later
// must not move where this process writes (before: the next Producer wrote 2^40 bytes past the
// segment, SIGSEGV).
TEST_F(HostileSegment, TableOffsetsRewrittenAfterAttachAreNotFollowed) {
  const std::string name = channel_name("offsets");
  Channel ch = Channel::open(name, memory_options(1 << 16, 1 << 10));
  Pipe attached, go;
  const pid_t child = fork_child([&] {
    Channel c = Channel::attach(name, false);
    CHILD_CHECK(attached.send('a'));
    char x;
    CHILD_CHECK(go.receive(x, 10s));
    Consumer consumer(c, "g");
    Producer producer(c, "p");
    for (int i = 0; i < 20; ++i) CHILD_CHECK(producer.publish("message " + std::to_string(i)).status == Status::Ok);
    for (int i = 0; i < 20; ++i) {
      auto m = poll_for(consumer, 2000ms);
      CHILD_CHECK(m);
      CHILD_CHECK(m->text() == "message " + std::to_string(i));
      CHILD_CHECK(consumer.ack(*m) == Status::Ok);
    }
    return 0;
  }, 30);
  char x;
  ASSERT_TRUE(attached.receive(x, 10s));
  {
    RawSegment raw(name);
    ASSERT_NE(raw.base(), nullptr);
    for (std::size_t field : {offsetof(SegmentHeader, producers_offset), offsetof(SegmentHeader, groups_offset),
                              offsetof(SegmentHeader, consumers_offset), offsetof(SegmentHeader, dedup_offset),
                              offsetof(SegmentHeader, ring_offset)})
      raw.store64(field, std::uint64_t(1) << 40);
    raw.store32(offsetof(SegmentHeader, dedup_window), 1u << 30);
    raw.store32(offsetof(SegmentHeader, max_groups), ~0u);
    raw.store32(offsetof(SegmentHeader, max_consumers), ~0u);
  }
  ASSERT_TRUE(go.send('g'));
  const ChildResult r = wait_child(child, 20s);
  EXPECT_TRUE(r.ok()) << "the honest process " << r.describe();
  // A process that attaches now validates the header it finds, and refuses it.
  EXPECT_THROW(Channel::attach(name, false), Error);
}

// Issue 11.4: every byte of the ring's data turned into padding frames (after everything was
// acked). A reader at the tail followed them round and round: poll(10ms) never returned. A
// position at or past the tail holds nothing, whatever its frame says.
TEST_F(HostileSegment, PollOnARingOfOnlyPaddingReturnsAndDeliversNothingAgain) {
  const std::string name = channel_name("padding");
  Channel ch = Channel::open(name, memory_options(1 << 16, 1 << 10));
  Pipe ready, go;
  const pid_t child = honest_child(name, ready, go, [](Channel&, Consumer& consumer, Producer&) {
    return polls_deliver_nothing(consumer, 20) ? 0 : 1;
  });
  char x;
  ASSERT_TRUE(ready.receive(x, 10s));
  {
    RawSegment raw(name);
    const std::size_t data = raw.ring_data();
    for (std::uint64_t i = 0; i < raw.ring_capacity(); i += 8)
      raw.store64(data + i, ring::Frame::pack(8, ring::RecordType::Padding, 0, 0));
  }
  ASSERT_TRUE(go.send('g'));
  const ChildResult r = wait_child(child, 20s);
  EXPECT_TRUE(r.ok()) << "the honest process " << r.describe();
}

// Issue 11.4, the other face: one stray padding frame at the tail, long enough to jump over the
// free (zeroed) space onto records of the previous lap that were acked long ago.
TEST_F(HostileSegment, AStrayPaddingFrameAtTheTailDoesNotRedeliverAckedMessages) {
  const std::string name = channel_name("stray");
  Channel ch = Channel::open(name, memory_options(1 << 16, 1 << 10));
  Pipe ready, go;
  const pid_t child = honest_child(name, ready, go, [](Channel&, Consumer& consumer, Producer&) {
    return polls_deliver_nothing(consumer, 20) ? 0 : 1;
  });
  char x;
  ASSERT_TRUE(ready.receive(x, 10s));
  {
    RawSegment raw(name);
    const std::uint64_t tail = raw.load64(raw.ring_tail());
    // Padding from the tail back to the first record of this lap (position 0 + capacity).
    raw.store64(raw.ring_data() + (tail & (raw.ring_capacity() - 1)),
                ring::Frame::pack(static_cast<std::int32_t>(raw.ring_capacity() - tail), ring::RecordType::Padding, 0, 0));
  }
  ASSERT_TRUE(go.send('g'));
  const ChildResult r = wait_child(child, 20s);
  EXPECT_TRUE(r.ok()) << "the honest process " << r.describe();
}

// Issue 11.5: the tail moved 2^40 bytes ahead. poll saw a claim pending at its cursor, asked
// unblock() about it, and unblock scanned the zeroed words up to that tail (over a zeroed ring:
// hours; here it stopped at the previous lap's first record and delivered it again).
TEST_F(HostileSegment, PollReturnsWhenAPeerMovesTheTailFarAhead) {
  const std::string name = channel_name("tail");
  Channel ch = Channel::open(name, memory_options(1 << 16, 1 << 10));
  Pipe ready, go;
  const pid_t child = honest_child(name, ready, go, [](Channel&, Consumer& consumer, Producer& producer) {
    CHILD_CHECK(polls_deliver_nothing(consumer, 20));
    PublishOptions po;
    po.timeout = 50ms;
    const Published p = producer.publish("after", po);  // may not be Ok; must return
    std::fprintf(stderr, "publish after the scribble: %s\n", to_string(p.status));
    return 0;
  });
  char x;
  ASSERT_TRUE(ready.receive(x, 10s));
  {
    RawSegment raw(name);
    raw.store64(raw.ring_tail(), raw.load64(raw.ring_tail()) + (std::uint64_t(1) << 40));
  }
  ASSERT_TRUE(go.send('g'));
  const ChildResult r = wait_child(child, 20s);
  EXPECT_TRUE(r.ok()) << "the honest process " << r.describe();
}

// Issue 11.2: a group cursor, then a give-back entry, at index capacity - 4: the frame word read
// there crossed the end of the segment (into the guard page: SIGSEGV). Corrupt now.
TEST_F(HostileSegment, AMisalignedCursorOrGiveBackEntryIsCorruptNotACrash) {
  for (const bool give_back : {false, true}) {
    SCOPED_TRACE(give_back ? "give-back entry" : "group cursor");
    const std::string name = channel_name(give_back ? "giveback" : "cursor");
    Channel ch = Channel::open(name, memory_options(1 << 16, 1 << 10));
    Pipe ready, go;
    const pid_t child = honest_child(name, ready, go, [](Channel&, Consumer& consumer, Producer&) {
      return polls_deliver_nothing(consumer, 5) ? 0 : 1;
    });
    char x;
    ASSERT_TRUE(ready.receive(x, 10s));
    {
      RawSegment raw(name);
      const std::uint64_t cap = raw.ring_capacity();
      const std::uint64_t tail = raw.load64(raw.ring_tail());
      const std::uint64_t bad = (tail & ~(cap - 1)) + cap - 4;
      if (give_back) {
        const std::size_t g = raw.group(0);
        raw.store64(g + offsetof(detail::GroupSlot, give_back) + offsetof(detail::GiveBackEntry, position_plus1), bad + 1);
        raw.store32(g + offsetof(detail::GroupSlot, given_back), 1);
      } else {
        raw.store64(raw.group_next(0), bad);
      }
    }
    ASSERT_TRUE(go.send('g'));
    const ChildResult r = wait_child(child, 20s);
    EXPECT_TRUE(r.ok()) << "the honest process " << r.describe();
  }
}

// Issue 11.3 (found by the scribbler, seed 5111 of the long run): move_held indexed the group
// table with the group of a consumer slot read from shared memory, unchecked: a nack after a
// peer rewrote it was a SIGSEGV. It is Corrupt now.
TEST_F(HostileSegment, NackAfterAPeerRewroteTheConsumersGroupIsCorruptNotACrash) {
  const std::string name = channel_name("nack");
  ChannelOptions o = memory_options(1 << 16, 1 << 10);
  o.max_consumers = 4;
  Channel ch = Channel::open(name, o);
  Pipe ready, go;
  const pid_t child = fork_child([&] {
    guard_the_segment();
    Channel c = Channel::attach(name, false);
    Consumer consumer(c, "g");
    Producer producer(c, "p");
    CHILD_CHECK(producer.publish("held").status == Status::Ok);
    auto m = poll_for(consumer, 2000ms);
    CHILD_CHECK(m);
    CHILD_CHECK(ready.send('r'));
    char x;
    CHILD_CHECK(go.receive(x, 10s));
    const Status s = consumer.nack(*m);
    std::fprintf(stderr, "nack after the scribble: %s\n", to_string(s));
    CHILD_CHECK(s == Status::Corrupt);
    return 0;
  }, 30);
  char x;
  ASSERT_TRUE(ready.receive(x, 10s));
  {
    RawSegment raw(name);
    const std::size_t consumers = static_cast<std::size_t>(raw.load64(offsetof(SegmentHeader, consumers_offset)));
    for (std::size_t i = 0; i < 4; ++i)
      raw.store32(consumers + i * sizeof(detail::ConsumerSlot) + offsetof(detail::ConsumerSlot, group), 0x40000000u);
  }
  ASSERT_TRUE(go.send('g'));
  const ChildResult r = wait_child(child, 20s);
  EXPECT_TRUE(r.ok()) << "the honest process " << r.describe();
}

// Crash points of the ring and the segment (test builds): a process killed at each leaves a
// channel that the next ones open and use.

// A creator killed right after making the file (O_EXCL, mode set), before sizing it: the next
// open finds an empty file of its own uid and mode, initialises it, and the channel works.
TEST_F(HostileSegment, ACreatorKilledRightAfterMakingTheFileLeavesAChannelTheNextOpenMakes) {
  if (!detail::crash_points_enabled()) GTEST_SKIP() << "needs -DSHMQ_CRASH_POINTS=ON (make test's builds)";
  const std::string name = channel_name("created");
  const pid_t creator = fork_child([&] {
    detail::arm_crash_point("segment.after_create");
    Channel ch = Channel::open(name, memory_options(1 << 16, 1 << 10));
    return kChildOk;  // not reached
  });
  const ChildResult r = wait_child(creator, 20s);
  ASSERT_TRUE(r.killed_by(SIGKILL)) << r.describe();
  struct stat st {};
  ASSERT_EQ(::stat(segment_path(name).c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  Channel ch = Channel::open(name, memory_options(1 << 16, 1 << 10));
  Consumer c(ch, "g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish("after").status, Status::Ok);
  auto m = poll_for(c, 2000ms);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "after");
}

// A reader killed while it holds clean_lock to pad a dead producer's claim: the lock is taken
// from it, the claim is padded by the next reader, and the ring goes on for laps.
TEST_F(HostileSegment, AReaderKilledHoldingTheCleanLockInUnblockDoesNotStopTheRing) {
  if (!detail::crash_points_enabled()) GTEST_SKIP() << "needs -DSHMQ_CRASH_POINTS=ON (make test's builds)";
  const std::string name = channel_name("unblock");
  const ChannelOptions o = memory_options(1 << 16, 1 << 10);
  Channel ch = Channel::open(name, o);
  ch.ensure_group("g", Start::Earliest);
  // A producer killed with its claim open (claimed, frame not committed).
  const pid_t producer = fork_child([&] {
    Channel c = Channel::open(name, o);
    Producer p(c, "dead");
    detail::arm_crash_point("publish.after_announce");
    (void)p.publish("never committed");
    return kChildOk;  // not reached
  });
  ASSERT_TRUE(wait_child(producer, 20s).killed_by(SIGKILL));
  // A reader meets the dead claim and dies in unblock() holding clean_lock.
  const pid_t reader = fork_child([&] {
    Channel c = Channel::open(name, o);
    Consumer consumer(c, "g");
    detail::arm_crash_point("unblock.holding_clean_lock");
    (void)consumer.poll(5000ms);
    return kChildOk;  // not reached
  });
  const ChildResult rr = wait_child(reader, 20s);
  ASSERT_TRUE(rr.killed_by(SIGKILL)) << rr.describe();
  // The survivors: what is published from now on arrives, across several laps of the ring.
  Consumer consumer(ch, "g");
  Producer p(ch, "live");
  const std::string payload(500, 'x');
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(p.publish(payload + std::to_string(i)).status, Status::Ok) << "publish " << i;
    auto m = poll_for(consumer, 5000ms);
    ASSERT_TRUE(m) << "message " << i << " was not delivered";
    ASSERT_EQ(m->text(), payload + std::to_string(i));
    ASSERT_EQ(consumer.ack(*m), Status::Ok);
  }
}

}  // namespace

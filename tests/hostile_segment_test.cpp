// A peer rewrites the segment of a live channel behind the library's back (issue 11): offsets,
// positions and frames read from shared memory must be checked where they are used, and every
// loop over shared data bounded by a count of our own. Each test runs the honest process in a
// forked child, so that a crash (SIGSEGV, SIGBUS) or a hang shows as that child's failure.
#include <gtest/gtest.h>

#include <cstddef>

#include "hostile_support.hpp"
#include "ringbuffer/record_ring.hpp"
#include "shm/segment.hpp"
#include "support.hpp"

namespace {
using namespace shmq;
using namespace shmq::test;
using detail::SegmentHeader;

class HostileSegment : public ChannelTest {};

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

}  // namespace

// Batches: Consumer::poll_batch() takes a run of committed records with one move of the group's
// cursor, ack() of a batch and ack_up_to() let go of many at once. Crashes inside them are in
// consumer_crash_test (its Batch cases); this is what a user sees.
#include <sys/mman.h>

#include <atomic>
#include <thread>

#include "ringbuffer/record_ring.hpp"
#include "shm/channel_state.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

class Batch : public ChannelTest {};

std::vector<std::string> texts(std::span<const Message> ms) {
  std::vector<std::string> t;
  for (const Message& m : ms) t.emplace_back(m.text());
  return t;
}

void publish_n(Producer& p, int from, int to) {
  for (int i = from; i <= to; ++i) ASSERT_EQ(p.publish("m" + std::to_string(i)).status, Status::Ok);
}

TEST_F(Batch, PollBatchReturnsCommittedRecordsInOrderWithinTheSpanTheInFlightLimitAndOneRun) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g", ConsumerOptions{.max_in_flight = 10});
  Producer p(ch, "p");
  publish_n(p, 1, 100);
  std::vector<Message> got(32);
  ASSERT_EQ(c.poll_batch(got), 10u) << "max_in_flight 10";
  EXPECT_EQ(texts(std::span(got).first(3)), (std::vector<std::string>{"m1", "m2", "m3"}));
  EXPECT_EQ(got[9].text(), "m10");
  EXPECT_EQ(c.in_flight(), 10u);
  EXPECT_EQ(c.poll_batch(got), 0u);
  EXPECT_EQ(c.status(), Status::WouldBlock);
  EXPECT_EQ(c.ack(std::span<const Message>(got.data(), 10)), 10u);
  EXPECT_EQ(c.in_flight(), 0u);
  EXPECT_EQ(c.ack(std::span<const Message>(got.data(), 10)), 0u) << "acked already";
  std::vector<Message> one(1);
  ASSERT_EQ(c.poll_batch(one), 1u);
  EXPECT_EQ(one[0].text(), "m11");
  ASSERT_EQ(c.ack(one[0]), Status::Ok);

  Consumer wide(ch, "h", ConsumerOptions{.max_in_flight = 256});
  std::vector<Message> many(100);
  ASSERT_EQ(wide.poll_batch(many), 64u) << "one move of the cursor takes at most 64";
  EXPECT_EQ(many[63].text(), "m64");
  ASSERT_EQ(wide.poll_batch(std::span(many).subspan(64)), 36u);
  EXPECT_EQ(many[99].text(), "m100");
  EXPECT_EQ(wide.ack_up_to(many[99]), 100u);
  EXPECT_EQ(wide.poll_batch(many), 0u);
  EXPECT_EQ(wide.status(), Status::Timeout);
  EXPECT_EQ(wide.poll_batch(std::span<Message>()), 0u) << "an empty span";
}

TEST_F(Batch, RedeliveriesComeFirstThenARunFromTheCursor) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  publish_n(p, 1, 10);
  std::vector<Message> got(3);
  ASSERT_EQ(c.poll_batch(got), 3u);
  ASSERT_EQ(c.nack(got[1]), Status::Ok);
  std::vector<Message> next(4);
  ASSERT_EQ(c.poll_batch(next), 4u);
  EXPECT_EQ(texts(next), (std::vector<std::string>{"m2", "m4", "m5", "m6"}));
  EXPECT_EQ(next[0].deliveries(), 2u);
  EXPECT_EQ(next[1].deliveries(), 1u);
}

TEST_F(Batch, AckUpToAcksWhatThisConsumerGotUpToTheMessageInTheOrderItGotThem) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Consumer other(ch, "g");
  Producer p(ch, "p");
  publish_n(p, 1, 6);
  std::vector<Message> got(4);
  ASSERT_EQ(c.poll_batch(got), 4u);  // m1..m4
  ASSERT_EQ(c.nack(got[1]), Status::Ok);
  auto again = c.poll();  // m2 again, got after m4
  ASSERT_TRUE(again);
  ASSERT_EQ(again->text(), "m2");
  auto theirs = other.poll();  // m5, held by another consumer
  ASSERT_TRUE(theirs);
  EXPECT_EQ(c.ack_up_to(*theirs), 0u) << "not held by this consumer";
  EXPECT_EQ(c.ack_up_to(got[2]), 2u) << "m1 and m3: not m4 (got after m3), not m2 (got again after m4)";
  EXPECT_EQ(c.ack(got[0]), Status::NotHeld);
  EXPECT_EQ(c.in_flight(), 2u);
  EXPECT_EQ(c.ack_up_to(*again), 2u) << "m4, then m2";
  EXPECT_EQ(c.in_flight(), 0u);
  EXPECT_EQ(other.ack(*theirs), Status::Ok);
  // A batch ack counts only what this consumer holds.
  auto m6 = c.poll();
  ASSERT_TRUE(m6);
  const Message both[2] = {*m6, *theirs};
  EXPECT_EQ(c.ack(std::span<const Message>(both)), 1u);
}

TEST_F(Batch, PollBatchWaitsForTheFirstMessageOnly) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  std::vector<Message> got(8);
  EXPECT_EQ(c.poll_batch(got, 20ms), 0u);
  EXPECT_EQ(c.status(), Status::Timeout);
  std::thread late([&] {
    std::this_thread::sleep_for(50ms);
    ASSERT_EQ(p.publish("late").status, Status::Ok);
  });
  const auto t0 = Clock::now();
  ASSERT_EQ(c.poll_batch(got, 10s), 1u);
  EXPECT_LT(Clock::now() - t0, 9s) << "returned with one message rather than waiting to fill the batch";
  EXPECT_EQ(got[0].text(), "late");
  late.join();
}

TEST_F(Batch, AGroupRemovedWhileABatchIsAwaitedEndsTheWaitClosed) {
  Channel ch = Channel::open(channel_name(), memory_options());
  Consumer c(ch, "g", ConsumerOptions{.exclusive = true});
  std::thread remover([&] {
    std::this_thread::sleep_for(50ms);
    ch.remove_group("g");
  });
  std::vector<Message> got(8);
  EXPECT_EQ(c.poll_batch(got, 10s), 0u);
  EXPECT_EQ(c.status(), Status::Closed);
  remover.join();
}

// A record whose fields break the layout (its key longer than the record) in the middle of what
// a batch would take: the batch ends before it, the next call reports it (naming the position)
// and the group moves past it; nothing before or after it is lost.
TEST_F(Batch, ARecordThatBreaksTheLayoutEndsTheBatchAndTheNextCallReportsIt) {
  for (bool exclusive : {false, true}) {
    SCOPED_TRACE(exclusive ? "exclusive" : "shared");
    const std::string name = channel_name() + (exclusive ? "x" : "s");
    Channel ch = Channel::open(name, memory_options());
    Consumer c(ch, "g", ConsumerOptions{.exclusive = exclusive});
    Producer p(ch, "p");
    std::uint64_t bad_pos = 0;
    for (int i = 1; i <= 5; ++i) {
      const Published r = p.publish("m" + std::to_string(i));
      ASSERT_EQ(r.status, Status::Ok);
      if (i == 3) bad_pos = r.position;
    }
    auto* h = reinterpret_cast<ring::RecordHeader*>(ch.state().ring->at(bad_pos));
    ring::store_shared(h->key_len, 1000u);
    std::vector<Message> got(8);
    ASSERT_EQ(c.poll_batch(got), 2u);
    EXPECT_EQ(texts(std::span(got).first(2)), (std::vector<std::string>{"m1", "m2"}));
    try {
      (void)c.poll_batch(got);
      ADD_FAILURE() << "the corrupt record was not reported";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("corrupt record at position " + std::to_string(bad_pos)), std::string::npos) << e.what();
    }
    EXPECT_EQ(c.status(), Status::Corrupt);
    ASSERT_EQ(c.poll_batch(got), 2u);
    EXPECT_EQ(texts(std::span(got).first(2)), (std::vector<std::string>{"m4", "m5"}));
    EXPECT_EQ(c.in_flight(), 4u) << "m1, m2, m4, m5; the corrupt one is not held";
    Channel::remove(name);
  }
}

// Competing consumers in three processes, two taking batches (one of them killed while it holds
// a batch) and one taking single messages, while the producer wraps a small ring many times
// (padding inside runs): every message is acked exactly once, and only what the dead one held
// comes back.
TEST_F(Batch, CompetingBatchConsumersAckEveryMessageOnceWhenOneIsKilled) {
  const std::string name = channel_name();
  ChannelOptions o = memory_options(64 << 10, 1024);
  o.liveness_interval = 100ms;
  const std::uint64_t n = scaled(300000);
  Channel ch = Channel::open(name, o);
  ch.ensure_group("g");
  auto* acks = static_cast<std::atomic<std::uint32_t>*>(
      ::mmap(nullptr, (n + 1) * 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(acks, MAP_FAILED);
  auto* redelivered = acks + (n + 1);
  Pipe victim_ready;
  auto consume = [&](unsigned batch, bool victim) {
    return [&, batch, victim] {
      Channel c2 = Channel::open(name, o);
      Consumer c(c2, "g", ConsumerOptions{.wait = Wait::Block, .max_in_flight = 32});
      std::vector<Message> got(batch);
      std::uint64_t polled = 0;
      auto idle_since = Clock::now();
      for (;;) {
        const std::size_t k = c.poll_batch(got, 50ms);
        if (k == 0) {
          if (!victim && Clock::now() - idle_since > 3s) return kChildOk;  // drained
          continue;
        }
        idle_since = Clock::now();
        for (std::size_t j = 0; j < k; ++j) {
          const std::uint64_t seq = got[j].id().seq;
          CHILD_CHECK(seq >= 1 && seq <= n);
          CHILD_CHECK(got[j].text() == "message-" + std::to_string(seq));
          if (j > 0) CHILD_CHECK(got[j].position() > got[j - 1].position() || got[j].deliveries() > 1 || got[j - 1].deliveries() > 1);
        }
        polled += k;
        if (victim && polled >= 5000 && k > 1) {  // hold this batch, and wait to die
          victim_ready.send(1);
          ::pause();
        }
        const std::size_t acked = (polled & 1) ? c.ack_up_to(got[k - 1]) : c.ack(std::span<const Message>(got.data(), k));
        CHILD_CHECK(acked == k);
        for (std::size_t j = 0; j < k; ++j) {
          acks[got[j].id().seq].fetch_add(1);
          if (got[j].deliveries() > 1) redelivered[got[j].id().seq].fetch_add(1);
        }
      }
    };
  };
  const pid_t v = fork_child(consume(16, true), 120);
  const pid_t a = fork_child(consume(8, false), 120);
  const pid_t b = fork_child(consume(1, false), 120);
  bool victim_killed = false;
  std::thread killer([&] {
    int one = 0;
    if (victim_ready.receive(one, 60s)) victim_killed = kill_child(v).killed_by(SIGKILL);
  });
  {
    Producer p(ch, "p");
    PublishOptions po;
    po.timeout = 30s;
    for (std::uint64_t i = 1; i <= n; ++i) {
      const Status st = p.publish("message-" + std::to_string(i), po).status;
      if (st != Status::Ok) {
        ADD_FAILURE() << "publish " << i << ": " << to_string(st);
        break;
      }
    }
  }
  killer.join();
  EXPECT_TRUE(victim_killed);
  EXPECT_TRUE(wait_child(a, 90s).ok());
  EXPECT_TRUE(wait_child(b, 90s).ok());
  std::uint64_t missing = 0, doubled = 0, again = 0;
  for (std::uint64_t s = 1; s <= n; ++s) {
    missing += acks[s].load() == 0;
    doubled += acks[s].load() > 1;
    again += redelivered[s].load();
  }
  EXPECT_EQ(missing, 0u);
  EXPECT_EQ(doubled, 0u);
  EXPECT_GE(again, 2u) << "the victim held a batch of at least two";
  EXPECT_LE(again, 16u) << "only what the victim held comes back";
  ::munmap(acks, (n + 1) * 8);
}

}  // namespace
}  // namespace shmq::test

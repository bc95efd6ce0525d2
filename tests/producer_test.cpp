// Producer: inner ids (unique, increasing per producer, reported by last_id), one live owner per
// name, and a sequence that goes on when a new process takes over the name of a dead one.
#include "shm/crash_point.hpp"
#include "support.hpp"

#include <set>

namespace shmq::test {
namespace {

using ProducerTest = ChannelTest;

TEST_F(ProducerTest, LastIdIsTheIdOfTheLastPublish) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  EXPECT_EQ(p.name(), "p");
  const auto a = p.publish("a");
  ASSERT_EQ(a.status, Status::Ok);
  EXPECT_EQ(p.last_id(), a.id);
  Claim cl = p.claim(1);
  ASSERT_TRUE(cl);
  cl.data()[0] = std::byte{'b'};
  const auto b = cl.commit();
  ASSERT_EQ(b.status, Status::Ok);
  EXPECT_EQ(p.last_id(), b.id);
  EXPECT_EQ(b.id.producer, a.id.producer);
  EXPECT_GT(b.id.seq, a.id.seq);
  EXPECT_GT(b.position, a.position);

  auto m = poll_for(c, 2s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->id(), a.id);
  EXPECT_EQ(m->position(), a.position);
  EXPECT_EQ(c.ack(*m), Status::Ok);
  m = poll_for(c, 2s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->id(), b.id);
  EXPECT_EQ(m->text(), "b");
  EXPECT_EQ(c.ack(*m), Status::Ok);
}

TEST_F(ProducerTest, IdsAreUniqueAndIncreasingPerProducer) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  Producer p1(ch, "one");
  Producer p2(ch, "two");
  std::vector<InnerId> sent;
  for (int i = 0; i < 200; ++i) {
    Producer& p = i % 3 == 0 ? p2 : p1;
    const auto pub = p.publish("m" + std::to_string(i));
    ASSERT_EQ(pub.status, Status::Ok);
    EXPECT_EQ(p.last_id(), pub.id);
    sent.push_back(pub.id);
  }
  EXPECT_NE(p1.last_id().producer, p2.last_id().producer);
  std::set<std::pair<std::uint64_t, std::uint64_t>> unique;
  for (const auto& id : sent) unique.insert({id.producer, id.seq});
  EXPECT_EQ(unique.size(), sent.size()) << "an inner id was given twice";
  // Per producer, strictly increasing in publish order.
  for (std::uint64_t pid : {p1.last_id().producer, p2.last_id().producer}) {
    std::optional<std::uint64_t> prev;
    for (const auto& id : sent) {
      if (id.producer != pid) continue;
      if (prev) {
        EXPECT_GT(id.seq, *prev);
      }
      prev = id.seq;
    }
  }
  // The consumer sees the same ids, in the same order.
  for (std::size_t i = 0; i < sent.size(); ++i) {
    auto m = poll_for(c, 2s);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->id(), sent[i]) << "message " << i;
    EXPECT_EQ(m->text(), "m" + std::to_string(i));
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
}

// What a child tells the parent about the producer it opened.
struct Owned {
  std::uint64_t producer;
  std::uint64_t last_seq;
};

TEST_F(ProducerTest, ANameHeldByALiveProcessIsRefusedAndTakenOverAfterItDies) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");

  Pipe first_out;
  const pid_t first = fork_child(
      [&]() -> int {
        Channel c2 = Channel::attach(name);
        Producer p(c2, "shared-name");
        for (int i = 0; i < 5; ++i) CHILD_CHECK(p.publish("first").status == Status::Ok);
        const Owned o{p.last_id().producer, p.last_id().seq};
        CHILD_CHECK(first_out.send(o));
        for (;;) ::pause();
      },
      60);
  Owned by_first{};
  ASSERT_TRUE(first_out.receive(by_first, 30s));

  // While the first owner lives, neither this process nor another may open the name.
  try {
    Producer again(ch, "shared-name");
    ADD_FAILURE() << "a second live Producer of the same name was allowed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shared-name"), std::string::npos) << e.what();
  }
  const pid_t second = fork_child(
      [&] {
        Channel c2 = Channel::attach(name);
        try {
          Producer p(c2, "shared-name");
        } catch (const Error&) {
          return kChildOk;
        }
        std::fprintf(stderr, "second: opened a name a live process holds\n");
        return kChildFailed;
      },
      30);
  EXPECT_TRUE(wait_child(second, 30s).ok());

  const auto k = kill_child(first);
  ASSERT_TRUE(k.killed_by(SIGKILL));

  // A new process takes the name over: same producer id, the sequence goes on.
  Pipe third_out;
  const pid_t third = fork_child(
      [&] {
        Channel c2 = Channel::attach(name);
        Producer p(c2, "shared-name");
        const auto pub = p.publish("third");
        CHILD_CHECK(pub.status == Status::Ok);
        const Owned o{pub.id.producer, pub.id.seq};
        CHILD_CHECK(third_out.send(o));
        return kChildOk;  // leaves without closing the Producer: a death too
      },
      30);
  const auto tr = wait_child(third, 30s);
  EXPECT_TRUE(tr.ok()) << "third " << tr.describe();
  Owned by_third{};
  ASSERT_TRUE(third_out.receive(by_third, 1s));
  EXPECT_EQ(by_third.producer, by_first.producer) << "the name maps to a stable producer id";
  EXPECT_EQ(by_third.last_seq, by_first.last_seq + 1) << "the sequence goes on from the dead owner's";

  // And this process after it.
  Producer mine(ch, "shared-name");
  const auto pub = mine.publish("parent");
  ASSERT_EQ(pub.status, Status::Ok);
  EXPECT_EQ(pub.id.producer, by_first.producer);
  EXPECT_EQ(pub.id.seq, by_third.last_seq + 1);
  EXPECT_EQ(mine.last_id(), pub.id);

  // Every message arrived once, with the ids the owners got.
  std::vector<std::string> texts;
  std::vector<std::uint64_t> seqs;
  for (int i = 0; i < 7; ++i) {
    auto m = poll_for(c, 2s);
    ASSERT_TRUE(m);
    texts.emplace_back(m->text());
    seqs.push_back(m->id().seq);
    EXPECT_EQ(m->id().producer, by_first.producer);
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  EXPECT_EQ(texts, (std::vector<std::string>{"first", "first", "first", "first", "first", "third", "parent"}));
  for (std::size_t i = 1; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], seqs[i - 1] + 1);
  EXPECT_FALSE(c.poll(20ms));
}

TEST_F(ProducerTest, ANameClosedCleanlyIsFreeForAnotherProcessAndItsSequenceGoesOn) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  InnerId last{};
  {
    Producer p(ch, "handed-over");
    ASSERT_EQ(p.publish("x").status, Status::Ok);
    last = p.last_id();
  }
  Pipe out;
  const pid_t child = fork_child(
      [&] {
        Channel c2 = Channel::attach(name);
        Producer p(c2, "handed-over");
        const auto pub = p.publish("y");
        CHILD_CHECK(pub.status == Status::Ok);
        const Owned o{pub.id.producer, pub.id.seq};
        CHILD_CHECK(out.send(o));
        return kChildOk;
      },
      30);
  EXPECT_TRUE(wait_child(child, 30s).ok());
  Owned o{};
  ASSERT_TRUE(out.receive(o, 1s));
  EXPECT_EQ(o.producer, last.producer);
  EXPECT_EQ(o.last_seq, last.seq + 1);
}

TEST_F(ProducerTest, AFullProducerTableIsAnError) {
  const auto name = channel_name();
  auto opts = memory_options();
  opts.max_producers = 4;
  Channel ch = Channel::open(name, opts);
  std::vector<Producer> producers;
  for (int i = 0; i < 4; ++i) producers.emplace_back(ch, "p" + std::to_string(i));
  EXPECT_THROW(Producer(ch, "one-too-many"), Error);
}

TEST_F(ProducerTest, ARetryOfAnAcceptedSeqIsDroppedAsDuplicate) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  const auto first = p.publish("once");
  ASSERT_EQ(first.status, Status::Ok);
  PublishOptions retry;
  retry.seq = first.id.seq;
  const auto again = p.publish("once", retry);
  EXPECT_EQ(again.status, Status::Duplicate);
  auto m = poll_for(c, 2s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->id(), first.id);
  EXPECT_EQ(c.ack(*m), Status::Ok);
  EXPECT_FALSE(c.poll(20ms)) << "the retry was appended";
}

// ---- exclusive producers (ProducerOptions::exclusive) ------------------------------------------

// Exclusive means the only live producer, both ways, across processes; one that left or died
// does not count.
TEST_F(ProducerTest, AnExclusiveProducerIsTheChannelsOnlyLiveProducer) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  const ProducerOptions exclusive{.exclusive = true};
  {
    Producer shared(ch, "shared");
    const std::string why = busy_error_of([&] { Producer e(ch, "solo", exclusive); });
    EXPECT_NE(why.find("cannot add exclusive producer 'solo'"), std::string::npos) << why;
    EXPECT_NE(why.find("producer 'shared' of live process " + std::to_string(::getpid())), std::string::npos) << why;
  }
  // Another process's exclusive producer keeps every other one out while it lives, this
  // process's and a third process's.
  Pipe ready;
  const pid_t solo = fork_child(
      [&]() -> int {
        Channel c2 = Channel::attach(name);
        Producer e(c2, "solo", exclusive);
        for (int i = 0; i < 3; ++i) CHILD_CHECK(e.publish("solo").status == Status::Ok);
        const Owned o{e.last_id().producer, e.last_id().seq};
        CHILD_CHECK(ready.send(o));
        for (;;) ::pause();
      },
      60);
  Owned by_solo{};
  ASSERT_TRUE(ready.receive(by_solo, 30s));
  for (const bool excl : {false, true}) {
    const std::string why = busy_error_of([&] { Producer p(ch, "shared", ProducerOptions{.exclusive = excl}); });
    EXPECT_NE(why.find("exclusive producer 'solo' of live process " + std::to_string(solo)), std::string::npos) << why;
  }
  const pid_t third = fork_child(
      [&] {
        Channel c2 = Channel::attach(name);
        try {
          Producer p(c2, "third");
        } catch (const Error&) {
          return kChildOk;
        }
        return kChildFailed;
      },
      30);
  EXPECT_TRUE(wait_child(third, 30s).ok()) << "a third process added a producer beside a live exclusive one";
  // Dead, it counts no more: a shared producer joins, and everything arrives once.
  ASSERT_TRUE(kill_child(solo).killed_by(SIGKILL));
  Producer shared(ch, "shared");
  ASSERT_EQ(shared.publish("shared").status, Status::Ok);
  std::vector<std::string> texts;
  while (auto m = poll_for(c, 1s)) {
    texts.emplace_back(m->text());
    ASSERT_EQ(c.ack(*m), Status::Ok);
    if (texts.size() == 4) break;
  }
  EXPECT_EQ(texts, (std::vector<std::string>{"solo", "solo", "solo", "shared"}));
  EXPECT_FALSE(c.poll(20ms));
}

// NAME.dlq takes the dead letters of NAME's groups through producers of their own: an exclusive
// producer there is refused, naming why.
TEST_F(ProducerTest, AnExclusiveProducerOnADeadLetterChannelIsRefused) {
  const auto name = channel_name();
  Channel dlq = Channel::open(name + ".dlq", memory_options());
  try {
    Producer p(dlq, "p", ProducerOptions{.exclusive = true});
    ADD_FAILURE() << "an exclusive producer on a dead-letter channel was allowed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), std::errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("the groups of '" + name + "' copy their dead letters here"), std::string::npos) << e.what();
  }
  Producer shared(dlq, "p");  // a shared one is fine
  EXPECT_EQ(shared.publish("x").status, Status::Ok);
}

// An exclusive producer claims with plain stores: SIGKILLed after it marked its claim at the tail
// and before it moved the tail, or with the tail moved and the record not yet written, its claim
// must block nobody. Its successor (exclusive or not) moves the tail past a dead claim at the tail
// (the shared path's help), a reader pads a dead claim below it, and every publish that returned
// Ok is delivered once, in order.
TEST_F(ProducerTest, AnExclusiveProducerKilledInsideItsClaimBlocksNobody) {
  ASSERT_TRUE(detail::crash_points_enabled()) << "configure with -DSHMQ_CRASH_POINTS=ON";
  for (const char* point : {"claim.alone.after_marker", "publish.after_announce"})
  for (const bool successor_exclusive : {true, false}) {
    SCOPED_TRACE(std::string(point) + (successor_exclusive ? ", exclusive successor" : ", shared successor"));
    const auto name = channel_name(successor_exclusive ? "excl" : "shared");
    Channel ch = Channel::open(name, memory_options(64 << 10, 1024));
    Consumer c(ch, "g", ConsumerOptions{.wait = Wait::Spin});
    const pid_t solo = fork_child(
        [&]() -> int {
          Channel c2 = Channel::attach(name);
          Producer e(c2, "p", ProducerOptions{.exclusive = true});
          // Past a lap of the ring first (the frames at the tail are an earlier lap's), then dies
          // at its 2000th pass of the point.
          detail::arm_crash_point(point, 2000);
          for (int i = 1;; ++i) {
            PublishOptions o;
            o.timeout = 10s;
            CHILD_CHECK(e.publish("m" + std::to_string(i), o).status == Status::Ok);
          }
        },
        60);
    // Read along (the ring laps) until nothing more comes: the producer died.
    int expect = 1;
    while (auto m = c.poll(1s)) {
      ASSERT_EQ(m->text(), "m" + std::to_string(expect));
      ASSERT_EQ(c.ack(*m), Status::Ok);
      ++expect;
    }
    ASSERT_TRUE(wait_child(solo, 30s).killed_by(SIGKILL)) << "the producer did not die at the point";
    ASSERT_GT(expect, 1500) << "fewer messages than a lap of the ring before the kill";
    Producer next(ch, "p", ProducerOptions{.exclusive = successor_exclusive});
    for (int i = 0; i < 300; ++i) ASSERT_EQ(next.publish("after" + std::to_string(i)).status, Status::Ok) << i;
    for (int i = 0; i < 300; ++i) {
      auto m = poll_for(c, 5s);
      ASSERT_TRUE(m) << "after " << i << ": " << to_string(c.status());
      ASSERT_EQ(m->text(), "after" + std::to_string(i));
      ASSERT_EQ(m->deliveries(), 1u);
      ASSERT_EQ(c.ack(*m), Status::Ok);
    }
    EXPECT_FALSE(c.poll(20ms));
  }
}

}  // namespace
}  // namespace shmq::test

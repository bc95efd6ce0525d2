// Back-pressure and limits: a full ring makes publish wait and then return WouldBlock (never lose
// data); sizes over the limits are TooLarge; every size up to the limit round-trips; where a new
// group starts; a group gates ring reuse only while it exists; a consumer blocked behind an open
// claim sleeps.
#include <sys/resource.h>

#include "support.hpp"

namespace shmq::test {
namespace {

std::vector<std::byte> numbered_payload(std::uint64_t n, std::size_t size) {
  std::vector<std::byte> v(size);
  for (std::size_t i = 0; i < size; ++i) v[i] = filler(7, n, i);
  if (size >= sizeof n) std::memcpy(v.data(), &n, sizeof n);
  return v;
}

std::uint64_t number_of(const Message& m) {
  std::uint64_t n = ~std::uint64_t{0};
  if (m.payload().size() >= sizeof n) std::memcpy(&n, m.payload().data(), sizeof n);
  return n;
}

using Backpressure = ChannelTest;

TEST_F(Backpressure, AFullRingReturnsWouldBlockAndLosesNothing) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(64 << 10, 4 << 10));
  Consumer c(ch, "g");  // joined, not consuming yet
  Producer p(ch, "p");
  PublishOptions po;
  po.timeout = 10ms;

  std::uint64_t next = 0;
  Status last = Status::Ok;
  for (int i = 0; i < 1000; ++i) {
    const auto t0 = Clock::now();
    last = p.publish(numbered_payload(next, 1000), po).status;
    if (last != Status::Ok) {
      EXPECT_GE(Clock::now() - t0, 9ms) << "WouldBlock before the timeout";
      break;
    }
    ++next;
  }
  ASSERT_EQ(last, Status::WouldBlock) << "1000 x 1000 bytes fitted in a 64 KiB ring";
  EXPECT_GT(next, 30u);
  EXPECT_LE(next, 66u);
  // Still full.
  EXPECT_EQ(p.publish(numbered_payload(next, 1000), po).status, Status::WouldBlock);

  // Once the group acks, publishing goes on.
  std::uint64_t expect = 0;
  for (int i = 0; i < 10; ++i) {
    auto m = poll_for(c, 2s);
    ASSERT_TRUE(m);
    EXPECT_EQ(number_of(*m), expect++);
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(p.publish(numbered_payload(next, 1000), po).status, Status::Ok);
    ++next;
  }
  // Everything published with Ok arrives, once, in order; what was refused never does.
  while (expect < next) {
    auto m = poll_for(c, 2s);
    ASSERT_TRUE(m) << "message " << expect << " of " << next << " is missing";
    EXPECT_EQ(number_of(*m), expect++);
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  EXPECT_FALSE(c.poll(20ms));
}

TEST_F(Backpressure, APublishWaitingOnAFullRingProceedsWhenAnotherProcessAcks) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(64 << 10, 4 << 10));
  Consumer c(ch, "g");
  Producer p(ch, "p");
  PublishOptions quick;
  quick.timeout = 10ms;
  std::uint64_t n = 0;
  while (p.publish(numbered_payload(n, 1000), quick).status == Status::Ok) ++n;

  Pipe go, out;
  const pid_t publisher = fork_child(
      [&] {
        Channel c2 = Channel::attach(name);
        Producer p2(c2, "waiting");
        for (Wait w : {Wait::Block, Wait::Yield, Wait::Spin}) {
          char g = 0;
          CHILD_CHECK(go.receive(g, 30s));  // the ring is full now
          PublishOptions po;
          po.timeout = 20s;
          po.wait = w;
          const auto t0 = Clock::now();
          const auto pub = p2.publish(numbered_payload(1000 + static_cast<std::uint64_t>(w), 1000), po);
          const std::int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
          CHILD_CHECK(out.send(ms));
          CHILD_CHECK(pub.status == Status::Ok);
        }
        return kChildOk;
      },
      60);
  // Each of the three waits (Block, Yield, Spin) is ended by an ack 100 ms after it began.
  for (int k = 0; k < 3; ++k) {
    const char g = 'g';
    ASSERT_TRUE(go.send(g));
    std::this_thread::sleep_for(100ms);
    for (int i = 0; i < 2; ++i) {
      auto m = poll_for(c, 2s);
      ASSERT_TRUE(m);
      ASSERT_EQ(c.ack(*m), Status::Ok);
    }
    std::int64_t waited = -1;
    ASSERT_TRUE(out.receive(waited, 20s)) << "wait " << k << ": the blocked publish did not return";
    EXPECT_GE(waited, 50) << "wait " << k << ": the publish did not wait for space";
    EXPECT_LT(waited, 5000) << "wait " << k;
    // Fill up again for the next wait.
    while (p.publish(numbered_payload(n, 1000), quick).status == Status::Ok) ++n;
  }
  const auto r = wait_child(publisher, 30s);
  EXPECT_TRUE(r.ok()) << r.describe();
}

TEST_F(Backpressure, PayloadsAndKeysOverTheLimitsAreTooLarge) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(4 << 20, 64 << 10));
  const std::size_t max = ch.options().max_message_bytes;
  Consumer c(ch, "g");
  Producer p(ch, "p");

  std::vector<std::byte> too_big(max + 1, std::byte{1});
  EXPECT_EQ(p.publish(too_big).status, Status::TooLarge);
  Claim cl = p.claim(max + 1);
  EXPECT_FALSE(cl);
  EXPECT_EQ(cl.status(), Status::TooLarge);

  const std::string long_key(65536, 'k');
  PublishOptions po;
  po.key = long_key;
  EXPECT_EQ(p.publish("small", po).status, Status::TooLarge);
  EXPECT_EQ(p.claim(5, po).status(), Status::TooLarge);

  // At the limits: accepted, and carried untouched.
  std::vector<std::byte> biggest(max);
  for (std::size_t i = 0; i < max; ++i) biggest[i] = filler(1, 2, i);
  ASSERT_EQ(p.publish(biggest).status, Status::Ok);
  const std::string longest_key(65535, 'q');
  po.key = longest_key;
  ASSERT_EQ(p.publish("with the longest key", po).status, Status::Ok);

  auto m = poll_for(c, 2s);
  ASSERT_TRUE(m);
  ASSERT_EQ(m->payload().size(), max);
  EXPECT_TRUE(std::equal(biggest.begin(), biggest.end(), m->payload().begin()));
  EXPECT_EQ(c.ack(*m), Status::Ok);
  m = poll_for(c, 2s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "with the longest key");
  EXPECT_EQ(m->key(), longest_key);
  EXPECT_EQ(c.ack(*m), Status::Ok);
  EXPECT_FALSE(c.poll(20ms)) << "a TooLarge publish appended something";
}

TEST_F(Backpressure, EveryPayloadSizeUpToTheLimitRoundTripsByteExact) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(64 << 10, 4 << 10));
  const std::size_t max = ch.options().max_message_bytes;
  ASSERT_EQ(max, 4096u);
  Consumer c(ch, "g");
  Producer p(ch, "p");
  std::string key;
  for (std::size_t size = 0; size <= max; ++size) {
    SCOPED_TRACE("size " + std::to_string(size));
    std::vector<std::byte> payload(size);
    for (std::size_t i = 0; i < size; ++i) payload[i] = filler(3, size, i);
    key.assign(size % 37, static_cast<char>('a' + size % 26));
    PublishOptions po;
    po.key = key;
    // Even sizes through publish, odd ones through claim/commit.
    if (size % 2 == 0) {
      ASSERT_EQ(p.publish(payload, po).status, Status::Ok);
    } else {
      Claim cl = p.claim(size, po);
      ASSERT_TRUE(cl);
      ASSERT_EQ(cl.data().size(), size);
      std::copy(payload.begin(), payload.end(), cl.data().begin());
      ASSERT_EQ(cl.commit().status, Status::Ok);
    }
    auto m = poll_for(c, 2s);
    ASSERT_TRUE(m);
    ASSERT_EQ(m->payload().size(), size);
    ASSERT_TRUE(std::equal(payload.begin(), payload.end(), m->payload().begin()));
    ASSERT_EQ(m->key(), key);
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  // 4097 messages averaging 2 KiB went through a 64 KiB ring: it wrapped many times.
  EXPECT_GT(ch.stats().write_position, 64u * (64 << 10));
}

TEST_F(Backpressure, ALatestGroupSeesOnlyWhatCameAfterItAndAnEarliestGroupSeesWhatIsHeld) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer holder(ch, "holder");  // keeps the old messages held in the ring
  Producer p(ch, "p");
  ASSERT_EQ(p.publish("old-1").status, Status::Ok);
  ASSERT_EQ(p.publish("old-2").status, Status::Ok);

  ConsumerOptions latest;
  latest.start = Start::Latest;
  Consumer late(ch, "late", latest);
  ConsumerOptions earliest;
  earliest.start = Start::Earliest;
  Consumer early(ch, "early", earliest);
  ASSERT_EQ(p.publish("new-1").status, Status::Ok);

  auto texts = [](Consumer& c, std::size_t n) {
    std::vector<std::string> got;
    while (got.size() < n) {
      auto m = poll_for(c, 2s);
      if (!m) break;
      got.emplace_back(m->text());
      EXPECT_EQ(c.ack(*m), Status::Ok);
    }
    return got;
  };
  EXPECT_EQ(texts(late, 1), std::vector<std::string>{"new-1"});
  EXPECT_FALSE(late.poll(20ms)) << "the Latest group saw an older message";
  EXPECT_EQ(texts(early, 3), (std::vector<std::string>{"old-1", "old-2", "new-1"}));
  EXPECT_FALSE(early.poll(20ms));
  EXPECT_EQ(texts(holder, 3), (std::vector<std::string>{"old-1", "old-2", "new-1"}));
}

TEST_F(Backpressure, ASecondGroupGatesRingReuseOnlyWhileItExists) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(64 << 10, 4 << 10));
  Consumer active(ch, "active");
  Consumer idle(ch, "idle");
  Producer p(ch, "p");
  PublishOptions po;
  po.timeout = 10ms;
  const std::vector<std::byte> payload(1000, std::byte{0x42});

  // The active group consumes everything, but the idle one holds the ring.
  Status last = Status::Ok;
  int published = 0;
  for (int i = 0; i < 1000 && last == Status::Ok; ++i) {
    last = p.publish(payload, po).status;
    if (last != Status::Ok) break;
    ++published;
    auto m = poll_for(active, 2s);
    ASSERT_TRUE(m);
    ASSERT_EQ(active.ack(*m), Status::Ok);
  }
  ASSERT_EQ(last, Status::WouldBlock) << "the idle group did not gate the ring";

  EXPECT_TRUE(ch.remove_group("idle"));
  EXPECT_FALSE(ch.remove_group("idle")) << "removed twice";
  EXPECT_FALSE(ch.remove_group("no-such-group"));

  // Now only the active group gates: publishing goes on for many ring turns.
  for (int i = 0; i < 500; ++i) {
    ASSERT_EQ(p.publish(payload, po).status, Status::Ok) << "publish " << i << " after remove_group";
    auto m = poll_for(active, 2s);
    ASSERT_TRUE(m);
    ASSERT_EQ(active.ack(*m), Status::Ok);
  }
  // The removed group's consumer is told so.
  EXPECT_FALSE(idle.poll());
  EXPECT_EQ(idle.status(), Status::Closed);
  const auto s = ch.stats();
  for (const auto& g : s.groups) EXPECT_NE(g.name, "idle");
}


// CPU seconds (user + system) this process has used so far, in nanoseconds.
std::uint64_t cpu_ns_of_self() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto ns = [](const timeval& t) { return std::uint64_t(t.tv_sec) * 1'000'000'000ull + std::uint64_t(t.tv_usec) * 1000ull; };
  return ns(u.ru_utime) + ns(u.ru_stime);
}

// A Wait::Block consumer whose next record is claimed and not committed (an open zero-copy Claim,
// or a producer stopped with SIGSTOP inside its claim) must sleep: over about a second of waiting
// it uses less than 5% of a core, which a spinning or yielding loop cannot. Then, once the claim
// is committed, the message arrives.
void blocked_consumer_sleeps_behind_an_open_claim(const std::string& name, bool stop_the_producer) {
  { Channel ch = Channel::open(name, memory_options()); ch.ensure_group("g", Start::Earliest); }
  Pipe claimed, go;
  const pid_t producer = fork_child([&] {
    claimed.close_read();
    go.close_write();
    Channel ch = Channel::open(name, memory_options());
    Producer p(ch, "p");
    Claim c = p.claim(16);
    CHILD_CHECK(c);
    std::memcpy(c.data().data(), "behind the claim", 16);
    CHILD_CHECK(claimed.send(std::uint32_t{1}));
    if (stop_the_producer) ::raise(SIGSTOP);  // stopped with the claim open until the parent's SIGCONT
    std::uint32_t ok = 0;
    CHILD_CHECK(go.receive(ok, 20s));  // open until the parent says
    CHILD_CHECK(c.commit().status == Status::Ok);
    return kChildOk;
  });
  claimed.close_write();
  go.close_read();
  std::uint32_t one = 0;
  ASSERT_TRUE(claimed.receive(one, 10s)) << "the producer never claimed";
  if (stop_the_producer) {
    int st = 0;
    ASSERT_EQ(::waitpid(producer, &st, WUNTRACED), producer);
    ASSERT_TRUE(WIFSTOPPED(st)) << "the producer did not stop";
  }
  Pipe result;
  const pid_t consumer = fork_child([&] {
    result.close_read();
    Channel ch = Channel::open(name, memory_options());
    ConsumerOptions o;
    o.wait = Wait::Block;
    Consumer c(ch, "g", o);
    const std::uint64_t cpu0 = cpu_ns_of_self();
    const auto t0 = Clock::now();
    auto m = c.poll(1s);
    const std::uint64_t waited = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    const std::uint64_t cpu = cpu_ns_of_self() - cpu0;
    CHILD_CHECK(!m && c.status() == Status::Timeout);
    CHILD_CHECK(result.send(cpu) && result.send(waited));
    return kChildOk;
  });
  result.close_write();
  std::uint64_t cpu = 0, waited = 0;
  const bool got = result.receive(cpu, 20s) && result.receive(waited, 1s);
  EXPECT_TRUE(wait_child(consumer, 20s).ok());
  if (stop_the_producer) ::kill(producer, SIGCONT);
  ASSERT_TRUE(go.send(std::uint32_t{1}));
  ASSERT_TRUE(got) << "the blocked consumer did not report";
  std::printf("blocked consumer behind %s: %.2f ms CPU in %.0f ms of waiting\n",
              stop_the_producer ? "a stopped producer's claim" : "an open claim", static_cast<double>(cpu) / 1e6, static_cast<double>(waited) / 1e6);
  EXPECT_GE(waited, 900'000'000u) << "poll(1s) returned early";
  EXPECT_LT(cpu, waited / 20) << "a Block consumer behind an open claim used " << cpu / 1000000 << " ms of CPU in "
                              << waited / 1000000 << " ms of waiting";
  // Committed now: it arrives.
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  auto m = c.poll(10s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), "behind the claim");
  EXPECT_EQ(c.ack(*m), Status::Ok);
  EXPECT_TRUE(wait_child(producer, 20s).ok());
}

TEST_F(Backpressure, ABlockedConsumerSleepsBehindAnOpenClaim) {
  blocked_consumer_sleeps_behind_an_open_claim(channel_name(), false);
}

TEST_F(Backpressure, ABlockedConsumerSleepsBehindAStoppedProducersClaim) {
  blocked_consumer_sleeps_behind_an_open_claim(channel_name(), true);
}

}  // namespace
}  // namespace shmq::test

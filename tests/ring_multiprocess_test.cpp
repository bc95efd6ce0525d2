// The ring across real processes: several producer processes, several groups (one consumer process
// each), a ring small enough to wrap many times under back-pressure. Every group gets every message
// exactly once, in order per producer, byte-exact.
#include "support.hpp"

#include <array>
#include <set>

namespace shmq::test {
namespace {

constexpr int kProducers = 4;
constexpr int kGroups = 3;

// The key of each message: who sent it, its number, and the checksum of its payload.
struct MessageKey {
  std::uint32_t producer;
  std::uint32_t checksum;
  std::uint64_t seq;
};
static_assert(sizeof(MessageKey) == 16);

// Payload size of message seq: mostly 0..256 bytes, one in 64 up to 4 KiB.
std::size_t payload_size(std::uint64_t seq) {
  std::uint64_t h = seq * 0x9E3779B97F4A7C15ull;
  h ^= h >> 31;
  return seq % 64 == 63 ? h % 4097 : h % 257;
}

void fill_payload(std::vector<std::byte>& buf, std::uint32_t producer, std::uint64_t seq) {
  buf.resize(payload_size(seq));
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = filler(producer, seq, i);
}

struct ProducerReport {
  std::uint32_t producer;
  std::uint64_t published;
  std::uint64_t checksum_sum;
  std::uint64_t would_block;  // publishes that found the ring full for the whole timeout (retried)
};

struct ConsumerReport {
  std::uint32_t group;
  std::uint64_t received;
  std::uint64_t errors;
  std::uint64_t checksum_sum;
  std::array<std::uint64_t, kProducers> next_seq;
  char first_error[256];
};

// A consumer process of group g: receives until it has `total` messages or the deadline passes.
int consume(const std::string& name, int g, std::uint64_t total, const Pipe& ready, const Pipe& out) {
  Channel ch = Channel::attach(name);
  ConsumerOptions co;
  co.start = Start::Earliest;
  co.wait = Wait::Block;
  Consumer c(ch, "group-" + std::to_string(g), co);
  const char r = 'r';
  CHILD_CHECK(ready.send(r));

  ConsumerReport rep{};
  rep.group = static_cast<std::uint32_t>(g);
  std::array<std::uint64_t, kProducers> last_inner_seq{};
  std::array<std::uint64_t, kProducers> inner_producer{};
  std::array<bool, kProducers> seen_any{};
  auto error = [&](const std::string& what) {
    if (rep.errors++ == 0) std::snprintf(rep.first_error, sizeof rep.first_error, "%s", what.c_str());
  };
  const auto deadline = Clock::now() + 240s;
  while (rep.received < total && Clock::now() < deadline) {
    auto m = c.poll(100ms);
    if (!m) {
      if (c.status() != Status::Timeout) error(std::string("poll: ") + to_string(c.status()));
      continue;
    }
    ++rep.received;
    MessageKey k{};
    if (m->key().size() != sizeof k) {
      error("key of " + std::to_string(m->key().size()) + " bytes");
    } else {
      std::memcpy(&k, m->key().data(), sizeof k);
      const auto p = m->payload();
      if (k.producer >= kProducers) {
        error("producer " + std::to_string(k.producer));
      } else if (k.seq != rep.next_seq[k.producer]) {
        error("producer " + std::to_string(k.producer) + ": seq " + std::to_string(k.seq) +
              " where " + std::to_string(rep.next_seq[k.producer]) + " was next");
        rep.next_seq[k.producer] = k.seq + 1;
      } else {
        ++rep.next_seq[k.producer];
        bool bytes_ok = p.size() == payload_size(k.seq);
        for (std::size_t i = 0; bytes_ok && i < p.size(); ++i) bytes_ok = p[i] == filler(k.producer, k.seq, i);
        const std::uint32_t sum = checksum(p);
        if (!bytes_ok || sum != k.checksum) {
          error("producer " + std::to_string(k.producer) + " seq " + std::to_string(k.seq) +
                ": payload of " + std::to_string(p.size()) + " bytes differs from what was sent");
        }
        rep.checksum_sum += sum;
        // The inner id: one producer id per producer, seq increasing.
        const InnerId id = m->id();
        if (seen_any[k.producer]) {
          if (id.producer != inner_producer[k.producer] || id.seq <= last_inner_seq[k.producer]) {
            error("inner id (" + std::to_string(id.producer) + "," + std::to_string(id.seq) +
                  ") out of order for producer " + std::to_string(k.producer));
          }
        }
        seen_any[k.producer] = true;
        inner_producer[k.producer] = id.producer;
        last_inner_seq[k.producer] = id.seq;
      }
    }
    const Status a = c.ack(*m);
    if (a != Status::Ok) error(std::string("ack: ") + to_string(a));
  }
  // Nothing more than `total`.
  if (auto extra = c.poll(50ms)) error("a message beyond the total");
  CHILD_CHECK(out.send(rep));
  return kChildOk;
}

int produce(const std::string& name, std::uint32_t index, std::uint64_t count, const Pipe& out) {
  Channel ch = Channel::attach(name);
  Producer p(ch, "producer-" + std::to_string(index));
  ProducerReport rep{index, 0, 0, 0};
  std::vector<std::byte> buf;
  buf.reserve(4096);
  PublishOptions po;
  po.timeout = 10ms;
  po.wait = Wait::Yield;
  std::uint64_t last_seq = 0;
  const auto deadline = Clock::now() + 240s;
  for (std::uint64_t seq = 0; seq < count; ++seq) {
    fill_payload(buf, index, seq);
    MessageKey k{index, checksum(buf), seq};
    po.key = std::string_view(reinterpret_cast<const char*>(&k), sizeof k);
    for (;;) {
      const auto pub = p.publish(std::span<const std::byte>(buf), po);
      if (pub.status == Status::Ok) {
        CHILD_CHECK(seq == 0 || pub.id.seq > last_seq);
        last_seq = pub.id.seq;
        break;
      }
      CHILD_CHECK(pub.status == Status::WouldBlock);
      ++rep.would_block;
      CHILD_CHECK(Clock::now() < deadline);
    }
    rep.checksum_sum += k.checksum;
    ++rep.published;
  }
  CHILD_CHECK(out.send(rep));
  return kChildOk;
}

using RingAcrossProcesses = ChannelTest;

TEST_F(RingAcrossProcesses, EveryGroupGetsEveryMessageOnceInOrderPerProducer) {
  const std::uint64_t total = scaled(1'000'000);
  const std::uint64_t per_producer = total / kProducers;
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 64 << 10));

  Pipe ready, consumer_reports, producer_reports;
  std::vector<pid_t> consumers, producers;
  for (int g = 0; g < kGroups; ++g) {
    consumers.push_back(fork_child([&, g] { return consume(name, g, total, ready, consumer_reports); }, 280));
  }
  // The groups exist (their consumers were constructed, Start::Earliest) before any producer starts.
  for (int g = 0; g < kGroups; ++g) {
    char r = 0;
    ASSERT_TRUE(ready.receive(r, 30s)) << "consumer " << g << " did not start";
  }
  const auto t0 = Clock::now();
  for (int i = 0; i < kProducers; ++i) {
    producers.push_back(fork_child(
        [&, i] { return produce(name, static_cast<std::uint32_t>(i), per_producer, producer_reports); }, 280));
  }
  const auto deadline = Clock::now() + 270s;
  for (pid_t pid : producers) {
    const auto r = wait_child(pid, deadline);
    EXPECT_TRUE(r.ok()) << "producer " << r.describe();
  }
  for (pid_t pid : consumers) {
    const auto r = wait_child(pid, deadline);
    EXPECT_TRUE(r.ok()) << "consumer " << r.describe();
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0);

  std::uint64_t sent_sum = 0, would_block = 0;
  for (int i = 0; i < kProducers; ++i) {
    ProducerReport r{};
    ASSERT_TRUE(producer_reports.receive(r, 1s)) << "a producer did not report";
    EXPECT_EQ(r.published, per_producer) << "producer " << r.producer;
    sent_sum += r.checksum_sum;
    would_block += r.would_block;
  }
  for (int g = 0; g < kGroups; ++g) {
    ConsumerReport r{};
    ASSERT_TRUE(consumer_reports.receive(r, 1s)) << "a consumer did not report";
    SCOPED_TRACE("group " + std::to_string(r.group));
    EXPECT_EQ(r.errors, 0u) << "first error: " << r.first_error;
    EXPECT_EQ(r.received, kProducers * per_producer);
    for (int i = 0; i < kProducers; ++i) EXPECT_EQ(r.next_seq[i], per_producer) << "producer " << i;
    EXPECT_EQ(r.checksum_sum, sent_sum);
  }
  // The ring (1 MiB) wrapped many times.
  const auto s = ch.stats();
  EXPECT_GT(s.write_position, 8 * s.ring_bytes);
  std::printf("%llu messages x %d groups in %lld ms; publishes that waited out a full ring: %llu\n",
              static_cast<unsigned long long>(kProducers * per_producer), kGroups,
              static_cast<long long>(took.count()), static_cast<unsigned long long>(would_block));
}

TEST_F(RingAcrossProcesses, ConsumersOfOneGroupShareItsMessagesWithoutOverlap) {
  const std::uint64_t total = scaled(40'000);
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(256 << 10, 16 << 10));
  constexpr int kConsumers = 2;
  Pipe ready, out;
  std::vector<pid_t> consumers;
  for (int k = 0; k < kConsumers; ++k) {
    consumers.push_back(fork_child(
        [&] {
          Channel c2 = Channel::attach(name);
          Consumer c(c2, "shared");
          const char r = 'r';
          CHILD_CHECK(ready.send(r));
          // Each reports the seq of every message it got, as one u64 per message, then ~0.
          auto last_message = Clock::now();
          while (Clock::now() - last_message < 2s) {
            auto m = c.poll(50ms);
            if (!m) continue;
            last_message = Clock::now();
            std::uint64_t seq = 0;
            CHILD_CHECK(m->payload().size() == sizeof seq);
            std::memcpy(&seq, m->payload().data(), sizeof seq);
            CHILD_CHECK(c.ack(*m) == Status::Ok);
            CHILD_CHECK(out.send(seq));
          }
          const std::uint64_t end = ~std::uint64_t{0};
          CHILD_CHECK(out.send(end));
          return kChildOk;
        },
        120));
  }
  for (int k = 0; k < kConsumers; ++k) {
    char r = 0;
    ASSERT_TRUE(ready.receive(r, 30s));
  }
  // The parent publishes and, at the same time, drains the report pipe (which could fill up).
  std::multiset<std::uint64_t> got;
  int ended = 0;
  // Reads what is there (until_end: everything, until every consumer has said it is done).
  auto drain = [&](bool until_end) {
    std::uint64_t v = 0;
    while (ended < kConsumers) {
      if (!until_end && !out.readable()) return;
      if (!out.receive(v, until_end ? 30s : 1s)) return;
      if (v == ~std::uint64_t{0}) {
        ++ended;
      } else {
        got.insert(v);
      }
    }
  };
  Producer p(ch, "p");
  PublishOptions po;
  po.timeout = 10ms;
  for (std::uint64_t seq = 0; seq < total; ++seq) {
    for (;;) {
      const auto pub = p.publish(std::span<const std::byte>(reinterpret_cast<const std::byte*>(&seq), sizeof seq), po);
      if (pub.status == Status::Ok) break;
      ASSERT_EQ(pub.status, Status::WouldBlock);
      drain(false);
    }
    if (seq % 256 == 0) drain(false);
  }
  drain(true);
  for (pid_t pid : consumers) EXPECT_TRUE(wait_child(pid, 30s).ok());
  EXPECT_EQ(ended, kConsumers);
  EXPECT_EQ(got.size(), total);
  std::uint64_t expect = 0;
  for (auto v : got) {
    if (v != expect) {
      ADD_FAILURE() << "seq " << expect << " is missing or duplicated (found " << v << ")";
      break;
    }
    ++expect;
  }
}

TEST_F(RingAcrossProcesses, ABlockedPollWakesWhenAnotherProcessPublishes) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Pipe ready, out;
  const pid_t consumer = fork_child(
      [&] {
        Channel c2 = Channel::attach(name);
        ConsumerOptions co;
        co.wait = Wait::Block;
        Consumer c(c2, "g", co);
        // An empty channel: a short poll times out.
        const auto t0 = Clock::now();
        CHILD_CHECK(!c.poll(20ms));
        CHILD_CHECK(c.status() == Status::Timeout);
        CHILD_CHECK(Clock::now() - t0 >= 15ms);
        const char r = 'r';
        CHILD_CHECK(ready.send(r));
        const auto t1 = Clock::now();
        auto m = c.poll(20s);
        const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t1);
        CHILD_CHECK(m);
        CHILD_CHECK(m->text() == "wake up");
        CHILD_CHECK(c.ack(*m) == Status::Ok);
        const std::int64_t ms = waited.count();
        CHILD_CHECK(out.send(ms));
        return kChildOk;
      },
      60);
  char r = 0;
  ASSERT_TRUE(ready.receive(r, 30s));
  const pid_t producer = fork_child(
      [&] {
        Channel c2 = Channel::attach(name);
        Producer p(c2, "p");
        std::this_thread::sleep_for(100ms);
        CHILD_CHECK(p.publish("wake up").status == Status::Ok);
        return kChildOk;
      },
      30);
  EXPECT_TRUE(wait_child(producer, 30s).ok());
  const auto cr = wait_child(consumer, 30s);
  EXPECT_TRUE(cr.ok()) << "consumer " << cr.describe();
  std::int64_t waited_ms = -1;
  ASSERT_TRUE(out.receive(waited_ms, 1s));
  EXPECT_GE(waited_ms, 50) << "the poll returned before the message was published";
  EXPECT_LT(waited_ms, 5000) << "the blocked poll was not woken by the publish";
}

TEST_F(RingAcrossProcesses, AShortPollOnAnEmptyChannelTimesOut) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  for (Wait w : {Wait::Spin, Wait::Yield, Wait::Block}) {
    ConsumerOptions co;
    co.wait = w;
    Consumer c(ch, "g", co);
    const auto t0 = Clock::now();
    EXPECT_FALSE(c.poll(10ms));
    EXPECT_EQ(c.status(), Status::Timeout);
    EXPECT_GE(Clock::now() - t0, 9ms);
    EXPECT_FALSE(c.poll());  // zero: do not wait
    EXPECT_EQ(c.status(), Status::Timeout);
  }
}

}  // namespace
}  // namespace shmq::test

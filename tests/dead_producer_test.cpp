// A producer that dies (or gives up) between claim and commit does not block the ring: its claim
// becomes padding that consumers skip, nothing is delivered for it, and every message published
// before and after it arrives.
#include "support.hpp"

#include <sys/mman.h>

#include <atomic>
#include <random>

namespace shmq::test {
namespace {

std::string text_of(const Message& m) { return std::string(m.text()); }

// Polls until `count` messages have arrived or the deadline passes; acks each.
std::vector<std::string> receive_texts(Consumer& c, std::size_t count, std::chrono::milliseconds timeout) {
  std::vector<std::string> got;
  const auto deadline = Clock::now() + timeout;
  while (got.size() < count && Clock::now() < deadline) {
    auto m = c.poll(20ms);
    if (!m) continue;
    got.push_back(text_of(*m));
    EXPECT_EQ(c.ack(*m), Status::Ok);
  }
  return got;
}

using DeadProducer = ChannelTest;

TEST_F(DeadProducer, AClaimHeldByAKilledProducerIsSkippedAndNothingIsLost) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 64 << 10));
  Consumer c(ch, "g");
  Producer before(ch, "before");
  std::vector<std::string> want;
  for (int i = 0; i < 10; ++i) {
    want.push_back("before-" + std::to_string(i));
    ASSERT_EQ(before.publish(want.back()).status, Status::Ok);
  }

  Pipe claimed;
  const pid_t dying = fork_child(
      [&]() -> int {
        Channel c2 = Channel::attach(name);
        Producer p(c2, "dying");
        PublishOptions po;
        po.key = "dead-claim";
        Claim cl = p.claim(1000, po);
        CHILD_CHECK(cl);
        CHILD_CHECK(cl.data().size() == 1000);
        std::memset(cl.data().data(), 'X', 500);  // half of it
        const char x = 'c';
        CHILD_CHECK(claimed.send(x));
        for (;;) ::pause();
      },
      60);
  char x = 0;
  ASSERT_TRUE(claimed.receive(x, 30s)) << "the dying producer never claimed";
  const auto killed = kill_child(dying);
  ASSERT_TRUE(killed.killed_by(SIGKILL)) << killed.describe();

  Producer after(ch, "after");
  for (int i = 0; i < 10; ++i) {
    want.push_back("after-" + std::to_string(i));
    ASSERT_EQ(after.publish(want.back()).status, Status::Ok);
  }

  const auto got = receive_texts(c, want.size(), 10s);
  EXPECT_EQ(got, want);
  EXPECT_FALSE(c.poll(100ms)) << "something was delivered for the dead claim";
}

TEST_F(DeadProducer, AClaimAbandonedInALiveProcessIsSkipped) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 64 << 10));
  Consumer c(ch, "g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish("one").status, Status::Ok);
  {
    Claim dropped = p.claim(100);
    ASSERT_TRUE(dropped);
    std::memset(dropped.data().data(), 'X', dropped.data().size());
  }  // destroyed without commit: abandoned
  {
    Claim given_up = p.claim(50);
    ASSERT_TRUE(given_up);
    given_up.abandon();
    EXPECT_FALSE(given_up);
    EXPECT_EQ(given_up.commit().status, Status::Closed) << "commit after abandon";
  }
  ASSERT_EQ(p.publish("two").status, Status::Ok);
  {
    Claim kept = p.claim(5);
    ASSERT_TRUE(kept);
    std::memcpy(kept.data().data(), "three", 5);
    const auto pub = kept.commit();
    EXPECT_EQ(pub.status, Status::Ok);
    EXPECT_EQ(pub.id, p.last_id());
    EXPECT_EQ(kept.commit().status, Status::Closed) << "a second commit";
  }
  const auto got = receive_texts(c, 3, 5s);
  EXPECT_EQ(got, (std::vector<std::string>{"one", "two", "three"}));
  EXPECT_FALSE(c.poll(50ms));
}

TEST_F(DeadProducer, AMovedClaimIsCommittedOnceByItsNewOwner) {
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  Producer p(ch, "p");
  Claim a = p.claim(4);
  ASSERT_TRUE(a);
  std::memcpy(a.data().data(), "move", 4);
  Claim b = std::move(a);
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): the moved-from claim is empty
  EXPECT_EQ(a.commit().status, Status::Closed);
  EXPECT_EQ(b.commit().status, Status::Ok);
  const auto got = receive_texts(c, 1, 2s);
  EXPECT_EQ(got, std::vector<std::string>{"move"});
  EXPECT_FALSE(c.poll(50ms));
}

// ---- producers killed at random points among live ones ------------------------------------------

constexpr int kLive = 3;
constexpr int kVictimRounds = 20;

enum : std::uint32_t { kLiveKind = 1, kVictimKind = 2 };
struct Key {
  std::uint32_t kind;
  std::uint32_t producer;  // live: index; victim: round
  std::uint64_t seq;
};

std::size_t size_of(std::uint64_t seq) { return (seq * 2654435761u) % 700; }

// Lives in a MAP_SHARED anonymous mapping, seen by the parent and every child.
struct Shared {
  std::atomic<bool> stop;
  std::atomic<bool> abort;  // the parent gave up: children leave at once
  std::atomic<int> live_done;
  std::atomic<std::uint64_t> published[kLive];
};

struct ConsumerReport {
  std::uint64_t live_next[kLive];
  std::uint64_t victim_messages;
  std::uint64_t errors;
  char first_error[256];
};

int consume_all(const std::string& name, Shared* shared, const Pipe& ready, const Pipe& out) {
  Channel ch = Channel::attach(name);
  Consumer c(ch, "g");
  const char r = 'r';
  CHILD_CHECK(ready.send(r));
  ConsumerReport rep{};
  std::uint64_t victim_next[kVictimRounds] = {};
  auto error = [&](const std::string& what) {
    if (rep.errors++ == 0) std::snprintf(rep.first_error, sizeof rep.first_error, "%s", what.c_str());
  };
  auto all_in = [&] {
    if (shared->live_done.load() != kLive) return false;
    for (int i = 0; i < kLive; ++i) {
      if (rep.live_next[i] != shared->published[i].load()) return false;
    }
    return true;
  };
  const auto deadline = Clock::now() + 150s;
  while (!all_in() && Clock::now() < deadline && !shared->abort.load()) {
    auto m = c.poll(20ms);
    if (!m) continue;
    Key k{};
    const auto p = m->payload();
    if (m->key().size() != sizeof k) {
      error("a key of " + std::to_string(m->key().size()) + " bytes");
    } else {
      std::memcpy(&k, m->key().data(), sizeof k);
      bool bytes_ok = p.size() == size_of(k.seq);
      for (std::size_t i = 0; bytes_ok && i < p.size(); ++i) {
        bytes_ok = p[i] == filler(k.kind * 1000 + k.producer, k.seq, i);
      }
      if (!bytes_ok) {
        error("kind " + std::to_string(k.kind) + " producer " + std::to_string(k.producer) + " seq " +
              std::to_string(k.seq) + ": payload differs from what was written (a torn claim delivered?)");
      }
      if (k.kind == kLiveKind && k.producer < kLive) {
        if (k.seq != rep.live_next[k.producer]) {
          error("live producer " + std::to_string(k.producer) + ": seq " + std::to_string(k.seq) +
                " where " + std::to_string(rep.live_next[k.producer]) + " was next");
        }
        rep.live_next[k.producer] = k.seq + 1;
      } else if (k.kind == kVictimKind && k.producer < kVictimRounds) {
        if (k.seq != victim_next[k.producer]) {
          error("victim " + std::to_string(k.producer) + ": seq " + std::to_string(k.seq) + " where " +
                std::to_string(victim_next[k.producer]) + " was next");
        }
        victim_next[k.producer] = k.seq + 1;
        ++rep.victim_messages;
      } else {
        error("unknown key kind " + std::to_string(k.kind));
      }
    }
    const Status a = c.ack(*m);
    if (a != Status::Ok) error(std::string("ack: ") + to_string(a));
  }
  if (!all_in()) error("deadline: not every live message arrived");
  CHILD_CHECK(out.send(rep));
  return kChildOk;
}

int publish_live(const std::string& name, std::uint32_t index, Shared* shared) {
  Channel ch = Channel::attach(name);
  Producer p(ch, "live-" + std::to_string(index));
  std::vector<std::byte> buf;
  buf.reserve(1024);
  PublishOptions po;
  po.timeout = 10ms;
  po.wait = Wait::Yield;
  const std::uint64_t at_least = scaled(20'000);
  std::uint64_t seq = 0;
  const auto deadline = Clock::now() + 120s;
  while ((seq < at_least || !shared->stop.load()) && Clock::now() < deadline && !shared->abort.load()) {
    buf.resize(size_of(seq));
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = filler(kLiveKind * 1000 + index, seq, i);
    const Key k{kLiveKind, index, seq};
    po.key = std::string_view(reinterpret_cast<const char*>(&k), sizeof k);
    const auto pub = p.publish(std::span<const std::byte>(buf), po);
    if (pub.status == Status::WouldBlock) continue;  // the ring stayed full: try the same seq again
    CHILD_CHECK(pub.status == Status::Ok);
    ++seq;
  }
  shared->published[index].store(seq);
  shared->live_done.fetch_add(1);
  CHILD_CHECK(seq >= at_least || shared->abort.load());
  return kChildOk;
}

// A victim: claims, writes, commits in a loop. If stall_mid_claim, it stops after writing half of
// a claim (the second half garbage), tells the parent, and waits to be killed.
int publish_victim(const std::string& name, std::uint32_t round, bool stall_mid_claim, std::uint32_t seed,
                   const Pipe& started) {
  Channel ch = Channel::attach(name);
  Producer p(ch, "victim-" + std::to_string(round));
  std::mt19937 rng(seed);
  PublishOptions po;
  po.timeout = 100ms;
  po.wait = Wait::Yield;
  const std::uint64_t stall_at = rng() % 50;
  const char s = 's';
  CHILD_CHECK(started.send(s));
  for (std::uint64_t seq = 0;; ) {
    const Key k{kVictimKind, round, seq};
    po.key = std::string_view(reinterpret_cast<const char*>(&k), sizeof k);
    const std::size_t n = size_of(seq);
    Claim cl = p.claim(n, po);
    if (!cl) continue;
    auto d = cl.data();
    CHILD_CHECK(d.size() == n);
    for (std::size_t i = 0; i < n / 2; ++i) d[i] = filler(kVictimKind * 1000 + round, seq, i);
    if (stall_mid_claim && seq == stall_at) {
      for (std::size_t i = n / 2; i < n; ++i) d[i] = std::byte{0xEE};
      const char c = 'c';
      CHILD_CHECK(started.send(c));
      for (;;) ::pause();
    }
    for (std::size_t i = n / 2; i < n; ++i) d[i] = filler(kVictimKind * 1000 + round, seq, i);
    CHILD_CHECK(cl.commit().status == Status::Ok);
    ++seq;
  }
}

TEST_F(DeadProducer, LiveProducersLoseNothingWhileAClaimingProducerIsKilledAtRandomPoints) {
  // SHMQ_TEST_SEED=N replays a run.
  const char* env_seed = std::getenv("SHMQ_TEST_SEED");
  const std::uint32_t seed =
      env_seed != nullptr ? static_cast<std::uint32_t>(std::strtoul(env_seed, nullptr, 10)) : std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);

  void* mem = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* shared = new (mem) Shared{};
  struct Unmap {
    void* p;
    ~Unmap() { ::munmap(p, sizeof(Shared)); }
  } unmap{mem};

  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(256 << 10, 16 << 10));
  Pipe ready, report;
  const pid_t consumer = fork_child([&] { return consume_all(name, shared, ready, report); }, 200);
  char r = 0;
  ASSERT_TRUE(ready.receive(r, 30s));
  std::vector<pid_t> live;
  for (std::uint32_t i = 0; i < kLive; ++i) {
    live.push_back(fork_child([&, i] { return publish_live(name, i, shared); }, 180));
  }

  int killed_mid_claim = 0;
  for (std::uint32_t round = 0; round < kVictimRounds; ++round) {
    const bool stall = round % 2 == 0;
    const std::uint32_t victim_seed = static_cast<std::uint32_t>(rng());
    Pipe started;
    const pid_t victim = fork_child(
        [&] { return publish_victim(name, round, stall, victim_seed, started); }, 60);
    char s = 0;
    ASSERT_TRUE(started.receive(s, 30s)) << "victim " << round << " did not start";
    if (stall) {
      char c = 0;
      if (started.receive(c, 20s)) {
        ++killed_mid_claim;
      } else {
        const auto st = ch.stats();
        std::string groups;
        for (const auto& g : st.groups) {
          groups += " group " + g.name + ": next " + std::to_string(g.next_position) + ", low-water mark " +
                    std::to_string(g.low_water_mark) + ", lag " + std::to_string(g.lag_messages) + " messages;";
        }
        ADD_FAILURE() << "round " << round << ": the victim could not publish its first " << "claims in 20 s. "
                      << "Ring: write_position " << st.write_position << ", reclaimed_position "
                      << st.reclaimed_position << ", depth_bytes " << st.depth_bytes << ";" << groups
                      << " (a ring that holds no unconsumed message but frees no space is stuck)";
        kill_child(victim);
        break;
      }
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 5000));
    }
    const auto k = kill_child(victim);
    EXPECT_TRUE(k.killed_by(SIGKILL)) << "victim " << round << " " << k.describe();
  }
  if (HasFailure()) shared->abort.store(true);
  EXPECT_EQ(killed_mid_claim, kVictimRounds / 2);
  shared->stop.store(true);

  const auto deadline = Clock::now() + 150s;
  for (pid_t pid : live) {
    const auto res = wait_child(pid, deadline);
    EXPECT_TRUE(res.ok()) << "live producer " << res.describe();
  }
  const auto cr = wait_child(consumer, deadline);
  EXPECT_TRUE(cr.ok()) << "consumer " << cr.describe();
  ConsumerReport rep{};
  ASSERT_TRUE(report.receive(rep, 1s)) << "the consumer did not report";
  EXPECT_EQ(rep.errors, 0u) << "first error: " << rep.first_error;
  for (int i = 0; i < kLive; ++i) {
    EXPECT_EQ(rep.live_next[i], shared->published[i].load()) << "live producer " << i;
  }
  std::printf("live: %llu %llu %llu messages; victims: %llu delivered, %d killed mid-claim\n",
              static_cast<unsigned long long>(shared->published[0].load()),
              static_cast<unsigned long long>(shared->published[1].load()),
              static_cast<unsigned long long>(shared->published[2].load()),
              static_cast<unsigned long long>(rep.victim_messages), killed_mid_claim);
}


// Large records make a producer spend much of its time making room (zeroing reclaimed space), so a
// SIGKILL at a random moment often lands there. Whatever it interrupted, the next producer must be
// able to publish: a producer's death never stops the ring.
TEST_F(DeadProducer, AProducerKilledWhileMakingRoomDoesNotStopTheRing) {
  const char* env_seed = std::getenv("SHMQ_TEST_SEED");
  const std::uint32_t seed =
      env_seed != nullptr ? static_cast<std::uint32_t>(std::strtoul(env_seed, nullptr, 10)) : std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  constexpr std::size_t kBig = 200 << 10;
  const auto name = channel_name();
  Channel ch = Channel::open(name, memory_options(1 << 20, 256 << 10));

  void* mem = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  auto* shared = new (mem) Shared{};
  struct Unmap {
    void* p;
    ~Unmap() { ::munmap(p, sizeof(Shared)); }
  } unmap{mem};

  // A consumer drains and checks that every record it gets is whole (one byte value throughout).
  Pipe ready, report;
  const pid_t consumer = fork_child(
      [&] {
        Channel c2 = Channel::attach(name);
        Consumer c(c2, "g");
        const char r = 'r';
        CHILD_CHECK(ready.send(r));
        std::uint64_t received = 0, torn = 0;
        while (!shared->stop.load()) {
          auto m = c.poll(10ms);
          if (!m) continue;
          const auto p = m->payload();
          bool whole = p.size() == kBig;
          for (std::size_t i = 0; whole && i < p.size(); i += 61) whole = p[i] == p[0];
          if (!whole) ++torn;
          ++received;
          CHILD_CHECK(c.ack(*m) == Status::Ok);
        }
        const std::uint64_t out[2] = {received, torn};
        CHILD_CHECK(report.write_all(out, sizeof out));
        return kChildOk;
      },
      120);
  char r = 0;
  ASSERT_TRUE(ready.receive(r, 30s));

  std::vector<std::byte> big(kBig);
  Producer survivor(ch, "survivor");
  PublishOptions po;
  po.timeout = 5s;
  po.wait = Wait::Yield;
  const int rounds = 20;
  for (int round = 0; round < rounds; ++round) {
    Pipe started;
    const pid_t victim = fork_child(
        [&]() -> int {
          Channel c2 = Channel::attach(name);
          Producer p(c2, "victim-" + std::to_string(round));
          std::vector<std::byte> payload(kBig);
          PublishOptions vpo;
          vpo.timeout = 100ms;
          vpo.wait = Wait::Yield;
          const char st = 's';
          CHILD_CHECK(started.send(st));
          for (std::uint8_t v = 1;; ++v) {
            std::fill(payload.begin(), payload.end(), std::byte{v});
            (void)p.publish(payload, vpo);
          }
        },
        60);
    char st = 0;
    ASSERT_TRUE(started.receive(st, 30s));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    ASSERT_TRUE(kill_child(victim).killed_by(SIGKILL));

    std::fill(big.begin(), big.end(), std::byte{0xAB});
    const auto t0 = Clock::now();
    const auto pub = survivor.publish(big, po);
    if (pub.status != Status::Ok) {
      const auto s = ch.stats();
      ADD_FAILURE() << "round " << round << ": after a producer was killed, publish returned "
                    << to_string(pub.status) << " for 5 s. Ring: write_position " << s.write_position
                    << ", reclaimed_position " << s.reclaimed_position << ", depth_bytes " << s.depth_bytes
                    << ", group lag " << (s.groups.empty() ? 0 : s.groups[0].lag_messages) << " messages";
      break;
    }
    EXPECT_LT(Clock::now() - t0, 5s);
  }
  shared->stop.store(true);
  EXPECT_TRUE(wait_child(consumer, 30s).ok());
  std::uint64_t got[2] = {0, 0};
  ASSERT_TRUE(report.read_all(got, sizeof got, Clock::now() + 1s));
  EXPECT_EQ(got[1], 0u) << "torn records were delivered";
  std::printf("%llu records of 200 KiB delivered\n", static_cast<unsigned long long>(got[0]));
}

}  // namespace
}  // namespace shmq::test

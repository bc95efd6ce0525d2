// The dedup window: a retry of an accepted inner id is dropped, also out of order, also when
// threads share one Producer, also after the producer's process was SIGKILLed at every stage of a
// publish and a new process took its name over, and also after a full recovery from the journal.
#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "shm/channel_state.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

namespace fs = std::filesystem;

class DedupTest : public ChannelTest {
 protected:
  ChannelOptions options(std::uint32_t window, std::size_t ring = 1 << 20) {
    ChannelOptions o = memory_options(ring, 4096);
    o.dedup_window = window;
    o.liveness_interval = std::chrono::milliseconds(100);
    return o;
  }
  static PublishOptions with_seq(std::uint64_t seq) {
    PublishOptions po;
    po.seq = seq;
    return po;
  }
  // The sequences GROUP receives until the channel is quiet, in order of delivery.
  static std::vector<std::uint64_t> drain(Channel& ch, const std::string& group) {
    Consumer c(ch, group);
    std::vector<std::uint64_t> seqs;
    while (auto m = c.poll(200ms)) {
      seqs.push_back(m->id().seq);
      EXPECT_EQ(c.ack(*m), Status::Ok);
    }
    return seqs;
  }
};

std::string payload_of(std::uint64_t seq) { return "m" + std::to_string(seq); }

TEST_F(DedupTest, ARetryOfAnAcceptedSeqIsADuplicateThatNamesTheOriginalAndAppendsNothing) {
  auto ch = Channel::open(channel_name(), options(64));
  ch.ensure_group("g");
  Producer p(ch, "p");
  std::map<std::uint64_t, std::uint64_t> position;
  for (std::uint64_t s = 1; s <= 20; ++s) {
    const Published r = p.publish(payload_of(s), with_seq(s));
    ASSERT_EQ(r.status, Status::Ok);
    position[s] = r.position;
  }
  const std::uint64_t tail = ch.stats().write_position;
  for (std::uint64_t s = 1; s <= 20; ++s) {
    const Published again = p.publish("a different payload", with_seq(s));
    EXPECT_EQ(again.status, Status::Duplicate) << s;
    EXPECT_EQ(again.position, position[s]) << "the original's position, seq " << s;
    EXPECT_EQ(again.id, (InnerId{p.last_id().producer, s}));
  }
  EXPECT_EQ(ch.stats().write_position, tail) << "a duplicate appends nothing";
  const auto got = drain(ch, "g");
  ASSERT_EQ(got.size(), 20u);
  for (std::uint64_t s = 1; s <= 20; ++s) EXPECT_EQ(got[s - 1], s);
}

TEST_F(DedupTest, AnOutboxMayPublishInAnyOrderWithinTheWindow) {
  auto ch = Channel::open(channel_name(), options(64));
  ch.ensure_group("g");
  Producer p(ch, "p");
  std::vector<std::uint64_t> order(60);
  for (std::uint64_t i = 0; i < order.size(); ++i) order[i] = i + 1;
  std::mt19937_64 rng(7);
  std::shuffle(order.begin(), order.end(), rng);
  for (std::uint64_t s : order) ASSERT_EQ(p.publish(payload_of(s), with_seq(s)).status, Status::Ok) << s;
  std::shuffle(order.begin(), order.end(), rng);
  for (std::uint64_t s : order) EXPECT_EQ(p.publish(payload_of(s), with_seq(s)).status, Status::Duplicate) << s;
  auto got = drain(ch, "g");
  std::sort(got.begin(), got.end());
  ASSERT_EQ(got.size(), 60u);
  for (std::uint64_t s = 1; s <= 60; ++s) EXPECT_EQ(got[s - 1], s);
}

TEST_F(DedupTest, ASeqBelowTheWindowIsADuplicateWhosePlaceIsNoLongerKnown) {
  auto ch = Channel::open(channel_name(), options(16));
  Producer p(ch, "p");
  for (std::uint64_t s = 1; s <= 100; ++s) ASSERT_EQ(p.publish(payload_of(s), with_seq(s)).status, Status::Ok);
  // 100 is the top; the window is 85..100.
  const Published old = p.publish("x", with_seq(84));
  EXPECT_EQ(old.status, Status::Duplicate);
  EXPECT_EQ(old.position, kNoPosition);
  const Published inside = p.publish("x", with_seq(85));
  EXPECT_EQ(inside.status, Status::Duplicate);
  EXPECT_NE(inside.position, kNoPosition);
}

TEST_F(DedupTest, SeqZeroAndSeqsAbove2To63AreInvalidAndAppendNothing) {
  auto ch = Channel::open(channel_name(), options(16));
  Producer p(ch, "p");
  for (std::uint64_t bad : {std::uint64_t{0}, std::uint64_t{1} << 63, ~std::uint64_t{0}}) {
    EXPECT_EQ(p.publish("x", with_seq(bad)).status, Status::InvalidSeq) << bad;
    EXPECT_EQ(p.claim(1, with_seq(bad)).status(), Status::InvalidSeq) << bad;
  }
  EXPECT_EQ(ch.stats().write_position, 0u);
  const std::uint64_t last = (std::uint64_t{1} << 63) - 1;
  EXPECT_EQ(p.publish("x", with_seq(last)).status, Status::Ok);
  EXPECT_EQ(p.publish("x", with_seq(last)).status, Status::Duplicate);
  EXPECT_EQ(p.publish("x", with_seq(last - 15)).status, Status::Ok) << "inside the window at the very top";
  EXPECT_EQ(p.publish("x").status, Status::InvalidSeq) << "the default sequence is used up";
}

TEST_F(DedupTest, AJumpLeavesGapsThatMayBeFilledAndForgetsWhatSlidesOut) {
  auto ch = Channel::open(channel_name(), options(8));
  ch.ensure_group("g");
  Producer p(ch, "p");
  ASSERT_EQ(p.publish("a", with_seq(1)).status, Status::Ok);
  ASSERT_EQ(p.publish("b", with_seq(5)).status, Status::Ok);
  ASSERT_EQ(p.publish("c", with_seq(3)).status, Status::Ok) << "a gap inside the window";
  ASSERT_EQ(p.publish("d", with_seq(100)).status, Status::Ok);  // the window is now 93..100
  EXPECT_EQ(p.publish("e", with_seq(95)).status, Status::Ok) << "a gap left by the jump";
  EXPECT_EQ(p.publish("e", with_seq(95)).status, Status::Duplicate);
  EXPECT_EQ(p.publish("f", with_seq(93)).status, Status::Ok) << "its entry still names seq 5: not 93";
  EXPECT_EQ(p.publish("g", with_seq(92)).status, Status::Duplicate) << "below the window";
  EXPECT_EQ(p.publish("h", with_seq(3)).status, Status::Duplicate);
  // The default sequence goes on above the highest one used.
  const Published next = p.publish("i");
  EXPECT_EQ(next.status, Status::Ok);
  EXPECT_EQ(next.id.seq, 101u);
  const auto got = drain(ch, "g");
  EXPECT_EQ(got, (std::vector<std::uint64_t>{1, 5, 3, 100, 95, 93, 101}));
}

TEST_F(DedupTest, ZeroCopyClaimsAreCheckedAndRecordedLikePublishes) {
  auto ch = Channel::open(channel_name(), options(64));
  ch.ensure_group("g");
  Producer p(ch, "p");
  PublishOptions po = with_seq(7);
  Claim c = p.claim(4, po);
  ASSERT_EQ(c.status(), Status::Ok);
  std::memcpy(c.data().data(), "abcd", 4);
  const Published done = c.commit();
  ASSERT_EQ(done.status, Status::Ok);
  Claim again = p.claim(4, po);
  EXPECT_EQ(again.status(), Status::Duplicate);
  EXPECT_EQ(again.commit().position, done.position) << "the original's position";
  EXPECT_EQ(p.publish("x", po).status, Status::Duplicate);
  // An abandoned claim accepts nothing: its sequence may be published afterwards.
  PublishOptions eight = with_seq(8);
  {
    Claim dropped = p.claim(4, eight);
    ASSERT_EQ(dropped.status(), Status::Ok);
  }
  EXPECT_EQ(p.publish("y", eight).status, Status::Ok);
  // A publish from the thread that holds an open claim is refused, not deadlocked.
  Claim open = p.claim(4);
  ASSERT_EQ(open.status(), Status::Ok);
  EXPECT_EQ(p.publish("z").status, Status::Closed);
  open.abandon();
  EXPECT_EQ(p.publish("z").status, Status::Ok);
  EXPECT_EQ(drain(ch, "g"), (std::vector<std::uint64_t>{7, 8, 10}));
}

// A Claim holds its producer's publish lock: another thread's publish waits for it up to its
// timeout, then returns WouldBlock (nothing appended); with a longer timeout it goes through.
TEST_F(DedupTest, AnOpenClaimInAnotherThreadMakesAPublishWaitUpToItsTimeout) {
  auto ch = Channel::open(channel_name(), options(64));
  ch.ensure_group("g");
  Producer p(ch, "p");
  std::atomic<bool> claimed{false}, release{false};
  std::thread holder([&] {
    Claim c = p.claim(4);
    ASSERT_EQ(c.status(), Status::Ok);
    std::memcpy(c.data().data(), "held", 4);
    claimed = true;
    while (!release) std::this_thread::sleep_for(1ms);
    c.commit();
  });
  while (!claimed) std::this_thread::sleep_for(1ms);
  PublishOptions quick;
  quick.timeout = 50ms;
  EXPECT_EQ(p.publish("quick", quick).status, Status::WouldBlock);
  EXPECT_EQ(p.claim(4, quick).status(), Status::WouldBlock);
  std::thread later([&] {
    std::this_thread::sleep_for(100ms);
    release = true;
  });
  PublishOptions patient;
  patient.timeout = 10s;
  EXPECT_EQ(p.publish("patient", patient).status, Status::Ok);
  holder.join();
  later.join();
  EXPECT_EQ(drain(ch, "g"), (std::vector<std::uint64_t>{1, 2}));
}

// Threads that share one Producer race to publish the same sequences, each in its own order: each
// sequence is accepted once, and the group receives it once.
TEST_F(DedupTest, ThreadsSharingAProducerAcceptEachSeqOnce) {
  const std::uint64_t n = scaled(20000);
  auto ch = Channel::open(channel_name(), options(static_cast<std::uint32_t>(std::bit_ceil(n)), 32 << 20));
  ch.ensure_group("g");
  Producer p(ch, "p");
  std::vector<std::atomic<int>> accepted(n + 1);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::vector<std::uint64_t> order(n);
      for (std::uint64_t i = 0; i < n; ++i) order[i] = i + 1;
      std::mt19937_64 rng(static_cast<std::uint64_t>(t) + 1);
      // Roughly in order, as retrying publishers are: shuffled in blocks of 64.
      for (std::size_t b = 0; b < order.size(); b += 64)
        std::shuffle(order.begin() + static_cast<std::ptrdiff_t>(b),
                     order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), b + 64)), rng);
      for (std::uint64_t s : order) {
        const Published r = p.publish(payload_of(s), with_seq(s));
        if (r.status == Status::Ok) accepted[s].fetch_add(1);
        else if (r.status != Status::Duplicate) ADD_FAILURE() << "seq " << s << ": " << to_string(r.status);
      }
    });
  for (auto& t : threads) t.join();
  for (std::uint64_t s = 1; s <= n; ++s) ASSERT_EQ(accepted[s].load(), 1) << "seq " << s;
  auto got = drain(ch, "g");
  ASSERT_EQ(got.size(), n);
  std::sort(got.begin(), got.end());
  for (std::uint64_t s = 1; s <= n; ++s) ASSERT_EQ(got[s - 1], s);
}

// --- a producer SIGKILLed inside a publish -----------------------------------------------------

std::atomic<int> g_kill_stage{-1};
std::atomic<std::uint64_t> g_kill_after{0};
void kill_at_stage(detail::PublishStage stage) {
  if (static_cast<int>(stage) == g_kill_stage.load() && g_kill_after.fetch_sub(1) == 1) ::raise(SIGKILL);
}

struct StageCase {
  detail::PublishStage stage;
  bool wrap;  // another producer wraps the ring before the takeover, so the record's space is reused
};

class DedupKill : public DedupTest, public ::testing::WithParamInterface<StageCase> {};

// The child publishes seqs 1..5 and dies inside the publish of 5 at the chosen stage. A new process
// takes the name over and retries 1..5: 1..4 are duplicates; 5 is accepted again exactly when the
// dead owner had not committed it. Either way the group receives 1..5 once each.
TEST_P(DedupKill, ATakeoverKnowsWhetherTheDeadOwnersLastPublishWasCommitted) {
  const StageCase sc = GetParam();
  const auto name = channel_name();
  ChannelOptions o = options(64, 64 << 10);
  auto ch = Channel::open(name, o);
  if (!sc.wrap) ch.ensure_group("g");
  const pid_t child = fork_child([&] {
    auto c2 = Channel::open(name, o);
    Producer p(c2, "p");
    g_kill_stage = static_cast<int>(sc.stage);
    g_kill_after = 5;
    detail::set_publish_hook(&kill_at_stage);
    for (std::uint64_t s = 1; s <= 5; ++s) CHILD_CHECK(p.publish(payload_of(s), with_seq(s)).status == Status::Ok);
    return kChildOk;
  });
  const ChildResult r = wait_child(child, 30s);
  ASSERT_TRUE(r.killed_by(SIGKILL)) << "the child should have died in its 5th publish: " << r.describe();
  if (sc.wrap) {
    // No group holds anything: another producer laps the ring, so the dead owner's record (or its
    // claim, padded on the way) is zeroed and its space reused before anyone takes the name over.
    Producer other(ch, "other");
    const std::string filler(1000, 'x');
    for (int i = 0; i < 200; ++i) ASSERT_EQ(other.publish(filler).status, Status::Ok) << i;
    ASSERT_GT(ch.stats().reclaimed_position, 5u * 64) << "the ring should have been reused";
    ch.ensure_group("g", Start::Latest);
  }
  Producer p(ch, "p");
  const bool committed = sc.stage != detail::PublishStage::Claimed;
  for (std::uint64_t s = 1; s <= 4; ++s) EXPECT_EQ(p.publish(payload_of(s), with_seq(s)).status, Status::Duplicate) << s;
  EXPECT_EQ(p.publish(payload_of(5), with_seq(5)).status, committed ? Status::Duplicate : Status::Ok)
      << "stage " << static_cast<int>(sc.stage) << (sc.wrap ? ", ring reused" : "");
  if (!sc.wrap) {
    auto got = drain(ch, "g");
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, (std::vector<std::uint64_t>{1, 2, 3, 4, 5}));
  }
}

std::string stage_case_name(const ::testing::TestParamInfo<StageCase>& p) {
  static const char* const kStage[] = {"Claimed", "Committed", "Accepted"};
  return std::string(kStage[static_cast<int>(p.param.stage)]) + (p.param.wrap ? "ThenRingReused" : "");
}

INSTANTIATE_TEST_SUITE_P(EveryStage, DedupKill,
                         ::testing::Values(StageCase{detail::PublishStage::Claimed, false},
                                           StageCase{detail::PublishStage::Committed, false},
                                           StageCase{detail::PublishStage::Accepted, false},
                                           StageCase{detail::PublishStage::Claimed, true},
                                           StageCase{detail::PublishStage::Committed, true},
                                           StageCase{detail::PublishStage::Accepted, true}),
                         &stage_case_name);

// --- the window across restarts and recoveries ------------------------------------------------

class DurableDedup : public DedupTest {
 protected:
  ChannelOptions durable(Durability d, std::uint32_t window, std::size_t ring = 8 << 20) {
    ChannelOptions o = options(window, ring);
    o.durability = d;
    o.journal_dir = dir_;
    o.flush_interval = std::chrono::milliseconds(2);
    return o;
  }
  TestDir tmp_{"dedup"};
  const fs::path& dir_ = tmp_.path();
};

// A producer process publishes Sync from an outbox out of order; a consumer acks the first half,
// and a checkpoint is taken, so that a recovery reads the journal only from after that half (its
// sequences are known from the checkpoint alone); then the second half, and a SIGKILL; the host
// "reboots" (the segment is deleted). After the recovery every retry is a duplicate, new sequences
// are accepted, and the group receives the second half once.
TEST_F(DurableDedup, TheWindowIsRebuiltFromTheCheckpointAndTheJournalAfterAReboot) {
  const auto name = channel_name();
  const ChannelOptions o = durable(Durability::Sync, 512);
  std::vector<std::uint64_t> order(400);
  for (std::uint64_t i = 0; i < order.size(); ++i) order[i] = i + 1;
  std::mt19937_64 rng(11);
  std::shuffle(order.begin(), order.end(), rng);
  const pid_t child = fork_child([&] {
    auto c2 = Channel::open(name, o);
    c2.ensure_group("g");
    Producer p(c2, "outbox");
    Consumer c(c2, "g");
    for (std::size_t i = 0; i < order.size(); ++i) {
      const Published r = p.publish(payload_of(order[i]), with_seq(order[i]));
      if (r.status != Status::Ok) std::fprintf(stderr, "publish %zu: status %d\n", i, static_cast<int>(r.status));
      CHILD_CHECK(r.status == Status::Ok);
      if (i + 1 == order.size() / 2) {
        for (std::size_t k = 0; k <= i; ++k) {
          auto m = c.poll(1s);
          CHILD_CHECK(m && c.ack(*m) == Status::Ok);
        }
        std::this_thread::sleep_for(600ms);  // checkpoints are taken every 200 ms
      }
    }
    ::raise(SIGKILL);
    return kChildOk;
  });
  ASSERT_TRUE(wait_child(child, 60s).killed_by(SIGKILL));
  ::unlink(segment_path(name).c_str());

  auto ch = Channel::open(name, o);
  ASSERT_TRUE(ch.recovery().recovered);
  EXPECT_EQ(ch.recovery().records, 200u) << "only the second half is read back";
  Producer p(ch, "outbox");
  for (std::uint64_t s : order) EXPECT_EQ(p.publish("retry", with_seq(s)).status, Status::Duplicate) << "seq " << s;
  EXPECT_EQ(p.publish(payload_of(401), with_seq(401)).status, Status::Ok);
  auto got = drain(ch, "g");
  std::sort(got.begin(), got.end());
  std::vector<std::uint64_t> want(order.begin() + 200, order.end());
  want.push_back(401);
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
}

// Async: a consumer can see a message before it is durable, and a host crash can then take it from
// the journal. After the recovery, default sequences must not hand its inner id to another message.
TEST_F(DurableDedup, DefaultSequencesAfterARecoveryNeverReuseAnInnerIdTheHostLost) {
  const auto name = channel_name();
  ChannelOptions o = durable(Durability::Async, 64, 1 << 20);
  o.flush_interval = std::chrono::milliseconds(60'000);
  auto* seen = static_cast<std::atomic<std::uint64_t>*>(
      ::mmap(nullptr, sizeof(std::uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(seen, MAP_FAILED);
  const pid_t child = fork_child([&] {
    auto c2 = Channel::open(name, o);
    c2.ensure_group("g");
    Producer p(c2, "p");
    CHILD_CHECK(p.publish("first").status == Status::Ok);
    CHILD_CHECK(p.flush(10s));  // durable
    Consumer c(c2, "g");
    for (int i = 0; i < 1000; ++i) CHILD_CHECK(p.publish("later " + std::to_string(i)).status == Status::Ok);
    while (auto m = c.poll(200ms)) {  // seen and acked, not durable yet
      seen->store(m->id().seq);
      CHILD_CHECK(c.ack(*m) == Status::Ok);
    }
    ::raise(SIGKILL);
    return kChildOk;
  });
  ASSERT_TRUE(wait_child(child, 60s).killed_by(SIGKILL));
  ASSERT_EQ(seen->load(), 1001u);
  // The host crash: the segment is gone, and so is what the journal had not fdatasync'd (all but
  // the first record: cut the journal there).
  ::unlink(segment_path(name).c_str());
  for (const auto& e : fs::directory_iterator(dir_ / name))
    if (e.path().extension() == ".log") fs::resize_file(e.path(), 60);
  auto ch = Channel::open(name, o);
  ASSERT_TRUE(ch.recovery().recovered);
  Producer p(ch, "p");
  const Published next = p.publish("after the crash");
  ASSERT_EQ(next.status, Status::Ok);
  EXPECT_GT(next.id.seq, seen->load()) << "an inner id a consumer saw went to another message";
  ::munmap(seen, sizeof(std::uint64_t));
}

// The whole upstream story: a producer publishes N messages from an outbox (a table of messages
// with a "sent" mark) and is SIGKILLed at random points, among them between a publish and its
// mark; a new process takes over (also as the journaler: the dead one was it) and publishes what
// is not marked. The channel then holds every inner id exactly once, none missing, also after a
// reboot and a recovery from the journal.
TEST_F(DurableDedup, AnOutboxRepublishedAfterRandomKillsLeavesEveryInnerIdOnce) {
  const std::uint64_t n = scaled(100000);
  const auto name = channel_name();
  const ChannelOptions o = durable(Durability::Async, 4096, 16 << 20);
  const std::uint64_t seed = std::random_device{}();
  std::printf("seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  auto* sent = static_cast<std::atomic<std::uint8_t>*>(
      ::mmap(nullptr, n + 1, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(sent, MAP_FAILED);
  int rounds = 0, killed = 0;
  for (bool done = false; !done; ++rounds) {
    ASSERT_LT(rounds, 1000) << "the outbox never got through (seed " << seed << ")";
    const std::uint64_t child_seed = rng();
    const pid_t child = fork_child([&] {
      std::mt19937_64 r(child_seed);
      // Half the children die inside one of their publishes, at a stage chosen at random.
      if (r() % 2 == 0) {
        g_kill_stage = static_cast<int>(r() % 3);
        g_kill_after = 1 + r() % (n / 12);
        detail::set_publish_hook(&kill_at_stage);
      }
      auto c2 = Channel::open(name, o);
      c2.ensure_group("g");
      Producer p(c2, "outbox");
      for (std::uint64_t s = 1; s <= n; ++s) {
        if (sent[s].load()) continue;
        const Published pub = p.publish(payload_of(s), with_seq(s));
        CHILD_CHECK(pub.status == Status::Ok || pub.status == Status::Duplicate);
        if (r() % (n / 25) == 0) ::raise(SIGKILL);  // published, not marked sent
        sent[s].store(1);
      }
      CHILD_CHECK(p.flush(10s));
      return kChildOk;
    });
    // And, one round in two, from outside at a random moment (often in the middle of a publish).
    if (rng() % 2 == 0) {
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 30000));
      if (child_running(child)) ::kill(child, SIGKILL);
    }
    const ChildResult r = wait_child(child, 60s);
    if (r.ok()) done = true;
    else if (r.killed_by(SIGKILL)) ++killed;
    else FAIL() << "producer " << r.describe() << " (seed " << seed << ")";
  }
  std::printf("%d rounds, %d killed\n", rounds, killed);
  EXPECT_GT(killed, 0);

  auto count = [&](Channel& ch) {
    std::vector<int> times(n + 1, 0);
    Consumer c(ch, "g");
    std::uint64_t producer = 0;
    while (auto m = c.poll(300ms)) {
      if (producer == 0) producer = m->id().producer;
      EXPECT_EQ(m->id().producer, producer);
      EXPECT_EQ(m->text(), payload_of(m->id().seq));
      if (m->id().seq >= 1 && m->id().seq <= n) ++times[m->id().seq];
      EXPECT_EQ(c.ack(*m), Status::Ok);
    }
    std::uint64_t missing = 0, duplicated = 0;
    for (std::uint64_t s = 1; s <= n; ++s) {
      missing += times[s] == 0;
      duplicated += times[s] > 1;
    }
    EXPECT_EQ(missing, 0u) << "seed " << seed;
    EXPECT_EQ(duplicated, 0u) << "seed " << seed;
  };
  {
    auto ch = Channel::open(name, o);
    count(ch);  // every inner id once in "g" (and acked)
  }
  // A reboot: the segment is gone. After the recovery (the last child closed its channel, so the
  // journal and a checkpoint hold everything), every retry of the outbox is a duplicate.
  ::unlink(segment_path(name).c_str());
  auto ch = Channel::open(name, o);
  ASSERT_TRUE(ch.recovery().recovered);
  Producer p(ch, "outbox");
  std::uint64_t accepted = 0;
  for (std::uint64_t s = 1; s <= n; ++s) accepted += p.publish(payload_of(s), with_seq(s)).status == Status::Ok;
  EXPECT_EQ(accepted, 0u) << "retries after the recovery accepted again (seed " << seed << ")";
  ::munmap(sent, n + 1);
}

}  // namespace
}  // namespace shmq::test

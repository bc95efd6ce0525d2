// Durability with real processes: Sync publishes survive SIGKILLs of anybody, a journaler that dies
// is replaced, a lost segment is rebuilt from the journal (also with a cut tail), a corrupt record
// is reported, retention deletes only what every group acked.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "journal/journal.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

namespace fs = std::filesystem;

class Journaled : public ChannelTest {
 protected:
  ChannelOptions durable(shmq::Durability d, std::size_t ring = 1 << 20) {
    ChannelOptions o = memory_options(ring, 4096);
    o.durability = d;
    o.journal_dir = dir_;
    o.flush_interval = std::chrono::milliseconds(2);
    o.liveness_interval = std::chrono::milliseconds(100);
    return o;
  }
  TestDir tmp_{"journal"};
  const fs::path& dir_ = tmp_.path();
};
using D = shmq::Durability;

// Every (producer id, seq) the journal holds.
std::set<std::pair<std::uint64_t, std::uint64_t>> journaled(const fs::path& dir) {
  std::set<std::pair<std::uint64_t, std::uint64_t>> ids;
  journal::Reader r = journal::Reader::open(dir);
  journal::RecordView v;
  while (r.next(v)) ids.emplace(v.producer, v.seq);
  return ids;
}

std::string text_of(std::uint64_t k, std::uint64_t i) { return "p" + std::to_string(k) + "-" + std::to_string(i); }

TEST_F(Journaled, SyncPublishIsInTheJournalWhenItReturns) {
  const auto name = channel_name();
  auto ch = Channel::open(name, durable(D::Sync));
  Producer p(ch, "p");
  for (int i = 0; i < 20; ++i) {
    const Published r = p.publish(text_of(0, i));
    ASSERT_EQ(r.status, Status::Ok);
    EXPECT_GE(ch.stats().durable_position, r.position + 1) << "durable position behind a Sync publish that returned";
  }
  EXPECT_EQ(journaled(dir_ / name).size(), 20u) << "read by another reader, before any close";
}

// Claim + commit on a Sync channel: Ok means durable, as for publish.
TEST_F(Journaled, ClaimCommitOnASyncChannelIsOkOnlyOnceDurable) {
  const auto name = channel_name();
  auto ch = Channel::open(name, durable(D::Sync));
  Producer p(ch, "p");
  for (int i = 0; i < 50; ++i) {
    const std::string t = text_of(0, i);
    Claim c = p.claim(t.size());
    ASSERT_TRUE(c);
    std::memcpy(c.data().data(), t.data(), t.size());
    const Published r = c.commit();
    ASSERT_EQ(r.status, Status::Ok);
    ASSERT_GT(ch.stats().durable_position, r.position) << "commit " << i << " returned Ok before its record was durable";
  }
}

// The same after a reboot: a process that dies right after a Sync commit returned Ok, then the
// segment is lost; the journal has every committed message.
TEST_F(Journaled, EveryClaimCommittedWithOkSurvivesARebootRightAfterIt) {
  const auto name = channel_name();
  const ChannelOptions o = durable(D::Sync);
  const int n = 30;
  Pipe oks;
  const pid_t child = fork_child([&] {
    auto ch = Channel::open(name, o);
    ch.ensure_group("g");
    Producer p(ch, "p");
    for (int i = 0; i < n; ++i) {
      const std::string t = text_of(0, i);
      Claim c = p.claim(t.size());
      CHILD_CHECK(c);
      std::memcpy(c.data().data(), t.data(), t.size());
      CHILD_CHECK(c.commit().status == Status::Ok);
      oks.send(i);
    }
    ::raise(SIGKILL);  // the host goes down the instant the last commit returned
    return kChildOk;
  });
  oks.close_write();
  std::set<std::string> ok;
  for (int i = 0; i < n; ++i) {
    int got = -1;
    if (!oks.receive(got, 30s)) break;
    ok.insert(text_of(0, got));
  }
  ASSERT_TRUE(wait_child(child, 30s).killed_by(SIGKILL));
  ASSERT_EQ(ok.size(), static_cast<std::size_t>(n));
  const std::set<std::string> got = texts_after_reboot(name, o);
  for (const auto& t : ok) EXPECT_TRUE(got.count(t)) << t << " was committed with Ok and is lost";
}

TEST_F(Journaled, AsyncBecomesDurableWithoutBeingAskedAndFlushWaitsForIt) {
  const auto name = channel_name();
  auto ch = Channel::open(name, durable(D::Async));
  Producer p(ch, "p");
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(p.publish(text_of(0, i)).status, Status::Ok);
  ASSERT_TRUE(p.flush(10s));
  EXPECT_EQ(ch.stats().durable_position, ch.stats().write_position);
  EXPECT_EQ(journaled(dir_ / name).size(), 1000u);
  // Without flush: the journaler gets there on its own within its flush interval.
  for (int i = 1000; i < 1100; ++i) ASSERT_EQ(p.publish(text_of(0, i)).status, Status::Ok);
  const auto deadline = Clock::now() + 10s;
  while (ch.stats().durable_position < ch.stats().write_position && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(ch.stats().durable_position, ch.stats().write_position);
}

TEST_F(Journaled, ARestartAfterTheSegmentIsLostRedeliversOnlyWhatWasNotAcked) {
  const auto name = channel_name();
  const ChannelOptions o = durable(D::Sync);
  std::uint64_t held_seq = 0;
  {
    auto ch = Channel::open(name, o);
    ch.ensure_group("g");
    ch.ensure_group("audit");
    Producer p(ch, "p");
    for (int i = 0; i < 100; ++i) ASSERT_EQ(p.publish(text_of(0, i)).status, Status::Ok);
    Consumer c(ch, "g");
    for (int i = 0; i < 40; ++i) {
      auto m = c.poll(1s);
      ASSERT_TRUE(m);
      ASSERT_EQ(c.ack(*m), Status::Ok);
    }
    auto held = c.poll(1s);  // held when the "host" goes down
    ASSERT_TRUE(held);
    held_seq = held->id().seq;
    Consumer a(ch, "audit");
    for (int i = 0; i < 100; ++i) ASSERT_EQ(a.ack(*a.poll(1s)), Status::Ok);
    // Closing the channel writes a final checkpoint (a crash relies on the periodic ones).
  }
  Channel::remove(name);  // what a reboot does to /dev/shm
  auto ch = Channel::open(name, o);
  const RecoveryReport& r = ch.recovery();
  EXPECT_TRUE(r.recovered);
  EXPECT_EQ(r.groups, 2u);
  EXPECT_EQ(r.producers, 1u);
  EXPECT_EQ(r.redelivered, 1u);
  Consumer c(ch, "g");
  std::vector<std::string> got;
  while (auto m = c.poll(200ms)) {
    if (m->id().seq == held_seq) {
      EXPECT_EQ(m->deliveries(), 2u);
    }
    got.emplace_back(m->text());
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  ASSERT_EQ(got.size(), 60u);
  for (int i = 0; i < 60; ++i) EXPECT_EQ(got[i], text_of(0, 40 + i));
  Consumer a(ch, "audit");
  EXPECT_FALSE(a.poll(100ms)) << "the audit group had acked everything";
  Producer p(ch, "p");
  const Published next = p.publish("after the restart");
  // Above every sequence used (100), a ring's worth above: after a recovery the numbers a lost
  // record may have had are never given out again.
  EXPECT_EQ(next.id.seq, 101u + ch.options().ring_bytes / 40) << "the producer's sequence goes on";
  EXPECT_EQ(next.status, Status::Ok);
}

// The journal's meta records the channel's durability, also when a rebuild raised it: a channel
// made Async and rebuilt as Sync stays Sync at the next rebuild that does not ask for it.
TEST_F(Journaled, ARebuildThatRaisedAsyncToSyncIsRememberedByTheJournal) {
  const auto name = channel_name();
  const auto rebuild = [&](D asked) {
    ::unlink(segment_path(name).c_str());  // the reboot
    const pid_t child = fork_child([&] {
      auto ch = Channel::open(name, durable(asked));
      CHILD_CHECK(ch.recovery().recovered);
      Producer p(ch, "p");
      CHILD_CHECK(p.publish("one more").status == Status::Ok);
      CHILD_CHECK(p.flush(10s));
      std::printf("rebuilt as %s\n", ch.options().durability == D::Sync ? "Sync" : "Async");
      return ch.options().durability == D::Sync ? 10 : 11;
    });
    const ChildResult r = wait_child(child, 30s);
    return r.exited && WIFEXITED(r.status) ? WEXITSTATUS(r.status) : -1;
  };
  {
    auto ch = Channel::open(name, durable(D::Async));
    Producer p(ch, "p");
    ASSERT_EQ(p.publish("first").status, Status::Ok);
    ASSERT_TRUE(p.flush(10s));
  }
  EXPECT_EQ(rebuild(D::Async), 11) << "made Async, rebuilt asking Async";
  EXPECT_EQ(rebuild(D::Sync), 10) << "a rebuild may ask for more";
  EXPECT_EQ(rebuild(D::Async), 10) << "the journal must remember that the channel is Sync now";
}

TEST_F(Journaled, TheJournalsGeometryWinsOverTheOptionsOfARestart) {
  const auto name = channel_name();
  { auto ch = Channel::open(name, durable(D::Async, 1 << 20)); }
  Channel::remove(name);
  auto ch = Channel::open(name, durable(D::Async, 1 << 18));
  EXPECT_EQ(ch.options().ring_bytes, 1u << 20);
  Channel::remove(name);
  ChannelOptions strict = durable(D::Async, 1 << 18);
  strict.strict_geometry = true;
  try {
    Channel::open(name, strict);
    ADD_FAILURE() << "strict_geometry must refuse a journal of another ring size";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ring_bytes"), std::string::npos) << e.what();
  }
}

// SIGKILL producers and consumers at random points over many rounds; every message a producer
// saw Ok for (Sync) is in the journal and is delivered to the group.
TEST_F(Journaled, SyncPublishesSurviveProducersAndConsumersKilledAtRandom) {
  const auto name = channel_name();
  const ChannelOptions o = durable(D::Sync);
  auto ch = Channel::open(name, o);
  ch.ensure_group("g");
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  constexpr int kMaxPerProducer = 100000;
  // Shared with the children: what producers got Ok for, what consumers acked.
  struct Board {
    std::atomic<std::uint32_t> ok[4][kMaxPerProducer];
    std::atomic<std::uint32_t> acked[4][kMaxPerProducer];
    std::atomic<std::uint64_t> id[4];
  };
  auto* b = static_cast<Board*>(::mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(b, MAP_FAILED);
  // Register the producers first, so that the consumers know every id before any message exists.
  for (int k = 0; k < 3; ++k) { Producer reg(ch, "p" + std::to_string(k)); }
  for (const ProducerStats& ps : ch.stats().producers)
    for (int k = 0; k < 3; ++k)
      if (ps.name == "p" + std::to_string(k)) b->id[k].store(ps.id);
  for (int k = 0; k < 3; ++k) ASSERT_NE(b->id[k].load(), 0u);
  auto producer = [&](int k) {
    return [&, k] {
      auto c2 = Channel::open(name, o);
      Producer p(c2, "p" + std::to_string(k));
      for (;;) {
        const Published r = p.publish(text_of(k, 0));
        CHILD_CHECK(r.status == Status::Ok);
        CHILD_CHECK(r.id.producer == b->id[k].load());
        if (r.id.seq < kMaxPerProducer) b->ok[k][r.id.seq].store(1);
      }
      return kChildOk;
    };
  };
  auto consumer = [&] {
    auto c2 = Channel::open(name, o);
    Consumer c(c2, "g");
    for (;;) {
      auto m = c.poll(50ms);
      if (!m) continue;
      for (int k = 0; k < 4; ++k)
        if (b->id[k].load() == m->id().producer && m->id().seq < kMaxPerProducer) b->acked[k][m->id().seq].store(1);
      CHILD_CHECK(c.ack(*m) == Status::Ok);
    }
    return kChildOk;
  };
  const int rounds = kSanitized ? 6 : 20;
  for (int round = 0; round < rounds; ++round) {
    std::vector<pid_t> kids;
    for (int k = 0; k < 3; ++k) kids.push_back(fork_child(producer(k), 60));
    kids.push_back(fork_child(consumer, 60));
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 80));
    std::shuffle(kids.begin(), kids.end(), rng);
    for (pid_t pid : kids) {
      EXPECT_TRUE(kill_child(pid).killed_by(SIGKILL));
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 5));
    }
  }
  // Drain what is left.
  {
    Consumer c(ch, "g");
    while (auto m = c.poll(500ms)) {
      for (int k = 0; k < 4; ++k)
        if (b->id[k].load() == m->id().producer && m->id().seq < kMaxPerProducer) b->acked[k][m->id().seq].store(1);
      ASSERT_EQ(c.ack(*m), Status::Ok);
    }
  }
  Producer flusher(ch, "flusher");
  ASSERT_TRUE(flusher.flush(10s));
  const auto in_journal = journaled(dir_ / name);
  std::uint64_t ok = 0, lost_journal = 0, lost_delivery = 0;
  for (int k = 0; k < 3; ++k)
    for (int s = 0; s < kMaxPerProducer; ++s) {
      if (!b->ok[k][s].load()) continue;
      ++ok;
      lost_journal += in_journal.count({b->id[k].load(), static_cast<std::uint64_t>(s)}) == 0;
      lost_delivery += b->acked[k][s].load() == 0;
    }
  std::printf("%lu Sync publishes returned Ok over %d rounds\n", static_cast<unsigned long>(ok), rounds);
  EXPECT_GT(ok, 0u);
  EXPECT_EQ(lost_journal, 0u) << "Ok'd Sync publishes missing from the journal (seed " << seed << ")";
  EXPECT_EQ(lost_delivery, 0u) << "Ok'd publishes never delivered (seed " << seed << ")";
  ::munmap(b, sizeof(Board));
}

// A process publishes Async and closes the channel without flush, long before its flush interval:
// closing journals what the ring holds, so a reboot right after loses nothing.
TEST_F(Journaled, AnAsyncPublisherThatClosesLeavesEverythingInTheJournal) {
  const auto name = channel_name();
  ChannelOptions o = durable(D::Async);
  o.flush_interval = std::chrono::milliseconds(60'000);
  const pid_t child = fork_child([&] {
    auto c2 = Channel::open(name, o);
    c2.ensure_group("g");
    Producer p(c2, "p");
    for (int i = 0; i < 2000; ++i) CHILD_CHECK(p.publish(text_of(0, i)).status == Status::Ok);
    return kChildOk;  // Producer and Channel are closed here, no flush
  });
  ASSERT_TRUE(wait_child(child, 60s).ok());
  EXPECT_EQ(journaled(dir_ / name).size(), 2000u);
  ::unlink(segment_path(name).c_str());
  auto ch = Channel::open(name, o);
  Consumer c(ch, "g");
  int got = 0;
  while (auto m = c.poll(100ms)) {
    ++got;
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  EXPECT_EQ(got, 2000);
}

// No group existed when the segment was lost: the recovery puts back what the ring can hold, so
// that a group starting at the earliest message still finds it (the checkpoint's durable position
// is not where the records begin).
TEST_F(Journaled, WithNoGroupARecoveryPutsBackWhatTheRingHolds) {
  const auto name = channel_name();
  ChannelOptions o = durable(D::Async);
  {
    auto ch = Channel::open(name, o);
    Producer p(ch, "p");
    for (int i = 0; i < 500; ++i) ASSERT_EQ(p.publish(text_of(0, i)).status, Status::Ok);
    ASSERT_TRUE(p.flush(10s));
  }
  ::unlink(segment_path(name).c_str());
  auto ch = Channel::open(name, o);
  EXPECT_EQ(ch.recovery().records, 500u);
  Consumer c(ch, "late", {Start::Earliest});
  int got = 0;
  while (auto m = c.poll(100ms)) {
    EXPECT_EQ(m->text(), text_of(0, got));
    ++got;
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  EXPECT_EQ(got, 500);
}

// The journaler's process is SIGKILLed while a producer publishes: another process takes over
// and nothing published is lost.
TEST_F(Journaled, AnotherProcessTakesOverFromAJournalerThatDied) {
  const auto name = channel_name();
  const ChannelOptions o = durable(D::Async);
  Pipe ready;
  // The first opener (a child) wins the election; the parent opens after it.
  const pid_t journaler = fork_child([&] {
    auto c2 = Channel::open(name, o);
    const auto deadline = Clock::now() + 10s;
    while (c2.stats().journaler_pid != ::getpid() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
    CHILD_CHECK(c2.stats().journaler_pid == ::getpid());
    ready.send(1);
    ::pause();
    return kChildOk;
  });
  int one = 0;
  ASSERT_TRUE(ready.receive(one, 20s));
  auto ch = Channel::open(name, o);
  ch.ensure_group("g");
  Producer p(ch, "p");
  PublishOptions po;
  po.timeout = 10s;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(p.publish(text_of(0, i), po).status, Status::Ok);
    if (i == n / 2) {
      EXPECT_TRUE(kill_child(journaler).killed_by(SIGKILL));
    }
  }
  const auto t0 = Clock::now();
  ASSERT_TRUE(p.flush(10s)) << "no journaler took over";
  std::printf("flush after the takeover: %lld ms\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count()));
  EXPECT_EQ(ch.stats().journal_errors, 0u) << "a takeover is no error";
  EXPECT_EQ(ch.stats().journaler_pid, ::getpid());
  EXPECT_EQ(journaled(dir_ / name).size(), static_cast<std::size_t>(n));
  Consumer c(ch, "g");
  int got = 0;
  while (auto m = c.poll(100ms)) {
    ++got;
    ASSERT_EQ(c.ack(*m), Status::Ok);
  }
  EXPECT_EQ(got, n);
}

// A host crash: every process killed, the segment gone, the journal's unsynced tail cut at a
// random offset. Recovery keeps every Sync-acknowledged message and reports the cut.
TEST_F(Journaled, HostCrashWithACutJournalTailKeepsEverySyncAcknowledgedMessage) {
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  std::mt19937 rng(seed);
  for (int round = 0; round < (kSanitized ? 3 : 10); ++round) {
    const auto name = channel_name("crash" + std::to_string(round));
    ChannelOptions o = durable(D::Async);
    o.flush_interval = std::chrono::milliseconds(1000);  // the Async tail stays unsynced
    Pipe synced;
    const pid_t writer = fork_child([&] {
      auto c2 = Channel::open(name, o);
      c2.ensure_group("g");
      Producer p(c2, "p");
      PublishOptions sync;
      sync.durability = D::Sync;
      for (int i = 0; i < 200; ++i) CHILD_CHECK(p.publish(text_of(0, i), sync).status == Status::Ok);
      const std::uint64_t durable = c2.stats().durable_position;
      synced.send(durable);
      for (int i = 200;; ++i) (void)p.publish(text_of(0, i));  // Async, until killed
      return kChildOk;
    });
    std::uint64_t durable = 0;
    ASSERT_TRUE(synced.receive(durable, 30s));
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 20));
    EXPECT_TRUE(kill_child(writer).killed_by(SIGKILL));
    ::unlink(segment_path(name).c_str());
    // Cut the last journal file somewhere after the last Sync-acknowledged record.
    fs::path last;
    for (const auto& e : fs::directory_iterator(dir_ / name))
      if (e.path().extension() == ".log" && (last.empty() || e.path() > last)) last = e.path();
    ASSERT_FALSE(last.empty());
    std::uint64_t synced_bytes = 0;  // the file offset where position `durable` begins
    {
      journal::Reader r = journal::Reader::open(dir_ / name);
      journal::RecordView v;
      std::uint64_t count = 0;
      while (r.next(v) && v.position < durable) ++count;
      ASSERT_GE(count, 200u);
    }
    // Records are 48-byte headers + ~8-byte payloads, 8-aligned: find the offset by scanning sizes.
    const auto size = fs::file_size(last);
    {
      std::ifstream f(last, std::ios::binary);
      std::vector<char> bytes(size);
      f.read(bytes.data(), static_cast<std::streamsize>(size));
      std::uint64_t off = 0;
      while (off + 48 <= size) {
        std::uint32_t len;
        std::uint64_t pos;
        std::memcpy(&len, bytes.data() + off + 4, 4);
        std::memcpy(&pos, bytes.data() + off + 8, 8);
        if (pos >= durable || len < 48) break;
        off += (len + 7) & ~7u;
      }
      synced_bytes = off;
    }
    ASSERT_LE(synced_bytes, size);
    const std::uint64_t cut = synced_bytes + (size > synced_bytes ? rng() % (size - synced_bytes + 1) : 0);
    fs::resize_file(last, cut);
    auto ch = Channel::open(name, o);
    EXPECT_TRUE(ch.recovery().recovered);
    Consumer c(ch, "g");
    std::set<std::uint64_t> seqs;
    while (auto m = c.poll(100ms)) {
      seqs.insert(m->id().seq);
      ASSERT_EQ(c.ack(*m), Status::Ok);
    }
    for (std::uint64_t s = 1; s <= 200; ++s) ASSERT_TRUE(seqs.count(s)) << "Sync-acknowledged seq " << s << " lost, round " << round << ", seed " << seed;
    // The producer goes on after the highest sequence that survived, never reusing one.
    Producer p(ch, "p");
    const Published next = p.publish("next");
    ASSERT_EQ(next.status, Status::Ok);
    EXPECT_GT(next.id.seq, *seqs.rbegin());
  }
}

// The process dies right after its Sync publish returned: the group it had created just before
// (never seen by a periodic checkpoint) still gets the message after the segment is rebuilt.
TEST_F(Journaled, AGroupCreatedJustBeforeASyncPublishSurvivesACrash) {
  for (int round = 0; round < 5; ++round) {
    const auto name = channel_name("r" + std::to_string(round));
    const ChannelOptions o = durable(D::Sync);
    const pid_t child = fork_child([&] {
      auto c2 = Channel::open(name, o);
      // After the journaler's first checkpoint (taken at once, with no group in it), before its
      // next periodic one (200 ms later).
      std::this_thread::sleep_for(250ms);
      c2.ensure_group("orders-" + std::to_string(round));
      Producer p(c2, "p");
      PublishOptions patient;  // a loaded machine's fsyncs may take more than the default second
      patient.timeout = 30s;
      CHILD_CHECK(p.publish("the one", patient).status == Status::Ok);
      ::raise(SIGKILL);
      return kChildOk;
    });
    EXPECT_TRUE(wait_child(child, 30s).killed_by(SIGKILL));
    ::unlink(segment_path(name).c_str());
    auto ch = Channel::open(name, o);
    EXPECT_EQ(ch.recovery().groups, 1u) << "round " << round;
    Consumer c(ch, "orders-" + std::to_string(round), ConsumerOptions{.start = Start::Latest});
    auto m = c.poll(1s);
    ASSERT_TRUE(m) << "round " << round << ": the Sync-acknowledged message did not reach its group";
    EXPECT_EQ(m->text(), "the one");
  }
}

TEST_F(Journaled, ACorruptRecordInTheMiddleOfTheJournalIsReportedNotSkipped) {
  const auto name = channel_name();
  const ChannelOptions o = durable(D::Sync);
  {
    auto ch = Channel::open(name, o);
    ch.ensure_group("g");
    Producer p(ch, "p");
    for (int i = 0; i < 50; ++i) ASSERT_EQ(p.publish(text_of(0, i)).status, Status::Ok);
  }
  Channel::remove(name);
  fs::path log;
  for (const auto& e : fs::directory_iterator(dir_ / name))
    if (e.path().extension() == ".log") log = e.path();
  {
    std::fstream f(log, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(log) / 2));
    const char junk = 0x5a;
    f.write(&junk, 1);
  }
  try {
    Channel::open(name, o);
    ADD_FAILURE() << "a corrupt record in the middle of the journal must not be skipped";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("position"), std::string::npos) << what;
    EXPECT_EQ(e.code(), std::errc::illegal_byte_sequence) << what;
  }
  // Nothing half-recovered can be attached: the segment was never made Ready.
  if (Channel::exists(name)) {
    EXPECT_THROW(Channel::attach(name), Error);
  }
}

// With the default options (retention one hour, retention_bytes 0 = no size budget), acked files
// stay: they are young and no budget is exceeded. A size budget, when set, still cuts them down.
// The journaler behind a claim that stays open (a zero-copy Claim held by another process) sleeps:
// over a second its process uses less than 5% of a core, which the sched_yield loop it had could
// not (it took whatever CPU was free: most of a core). Once committed, the record is journaled.
TEST_F(Journaled, TheJournalerSleepsBehindAClaimThatStaysOpen) {
  const std::string name = channel_name();
  const ChannelOptions o = durable(D::Async);
  Pipe ready, measure, result;
  const pid_t journaler = fork_child([&] {
    ready.close_read();
    measure.close_write();
    result.close_read();
    Channel ch = Channel::open(name, o);
    ch.ensure_group("g");
    for (int i = 0; i < 2000 && ch.stats().journaler_pid != ::getpid(); ++i) std::this_thread::sleep_for(1ms);
    CHILD_CHECK(ch.stats().journaler_pid == ::getpid());
    CHILD_CHECK(ready.send(std::uint32_t{1}));
    std::uint32_t go = 0;
    CHILD_CHECK(measure.receive(go, 30s));
    rusage u0{}, u1{};
    ::getrusage(RUSAGE_SELF, &u0);
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(1s);
    ::getrusage(RUSAGE_SELF, &u1);
    auto ns = [](const timeval& t) { return std::uint64_t(t.tv_sec) * 1'000'000'000ull + std::uint64_t(t.tv_usec) * 1000ull; };
    const std::uint64_t cpu = ns(u1.ru_utime) + ns(u1.ru_stime) - ns(u0.ru_utime) - ns(u0.ru_stime);
    const auto waited = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    CHILD_CHECK(result.send(cpu) && result.send(waited));
    CHILD_CHECK(measure.receive(go, 30s));  // stay the journaler until the record is checked
    return kChildOk;
  });
  ready.close_write();
  measure.close_read();
  result.close_write();
  std::uint32_t one = 0;
  ASSERT_TRUE(ready.receive(one, 30s)) << "the journaler child did not start";
  Pipe claimed, commit;
  const pid_t producer = fork_child([&] {
    claimed.close_read();
    commit.close_write();
    ChannelOptions po = o;
    Channel ch = Channel::open(name, po);
    Producer p(ch, "p");
    Claim c = p.claim(16);
    CHILD_CHECK(c);
    std::memcpy(c.data().data(), "behind the claim", 16);
    CHILD_CHECK(claimed.send(std::uint32_t{1}));
    std::uint32_t go = 0;
    CHILD_CHECK(commit.receive(go, 30s));
    CHILD_CHECK(c.commit().status == Status::Ok);
    CHILD_CHECK(p.flush(10s));
    return kChildOk;
  });
  claimed.close_write();
  commit.close_read();
  ASSERT_TRUE(claimed.receive(one, 30s)) << "the producer never claimed";
  std::this_thread::sleep_for(50ms);  // the journaler reaches the claim and starts waiting on it
  ASSERT_TRUE(measure.send(std::uint32_t{1}));
  std::uint64_t cpu = 0, waited = 0;
  const bool got = result.receive(cpu, 30s) && result.receive(waited, 5s);
  ASSERT_TRUE(commit.send(std::uint32_t{1}));
  EXPECT_TRUE(wait_child(producer, 60s).ok());
  ASSERT_TRUE(measure.send(std::uint32_t{1}));
  EXPECT_TRUE(wait_child(journaler, 60s).ok());
  ASSERT_TRUE(got) << "the journaler child did not report";
  std::printf("journaler behind an open claim: %.2f ms CPU in %.0f ms\n", static_cast<double>(cpu) / 1e6,
              static_cast<double>(waited) / 1e6);
  // A journaler that spins uses the whole second; one that sleeps, 15-46 ms in Release (36-46 ms
  // on a quiet machine at 71ea4f3: more than the 15 ms measured when this test was written, not
  // yet explained). Under the sanitizers every wake-up costs 5-15 times more (TSan on a loaded
  // machine: 53 ms once). The bounds, 1/10 and 1/6, stay an order of magnitude below spinning.
#ifdef SHMQ_SANITIZED
  constexpr std::uint64_t kShare = 6;
#else
  constexpr std::uint64_t kShare = 10;
#endif
  EXPECT_LT(cpu, waited / kShare) << "the journaler's process used " << cpu / 1000000 << " ms of CPU in " << waited / 1000000
                                  << " ms behind an open claim";
  EXPECT_EQ(journaled(dir_ / name).size(), 1u) << "the committed record is in the journal";
}

TEST_F(Journaled, WithTheDefaultRetentionAckedJournalFilesStay) {
  for (const std::uint64_t budget : {std::uint64_t{0}, std::uint64_t{16384}}) {
    const auto name = channel_name();
    ChannelOptions o = durable(D::Async);
    o.journal_segment_bytes = 8192;
    ASSERT_EQ(o.retention, ChannelOptions{}.retention);
    ASSERT_EQ(o.retention_bytes, ChannelOptions{}.retention_bytes);
    o.retention_bytes = budget;
    std::size_t before = 0;
    auto files = [&] {
      std::size_t n = 0;
      for (const auto& e : fs::directory_iterator(dir_ / name)) n += e.path().extension() == ".log";
      return n;
    };
    {
      auto ch = Channel::open(name, o);
      ch.ensure_group("g");
      Producer p(ch, "p");
      for (int i = 0; i < 2000; ++i) ASSERT_EQ(p.publish(text_of(0, i)).status, Status::Ok);
      ASSERT_TRUE(p.flush(10s));
      before = files();
      ASSERT_GT(before, 5u);
      Consumer c(ch, "g");
      int n = 0;
      while (auto m = c.poll(50ms)) {
        ASSERT_EQ(c.ack(*m), Status::Ok);
        ++n;
      }
      ASSERT_EQ(n, 2000);
    }  // the last close writes a checkpoint, and retention runs with it
    if (budget == 0) {
      EXPECT_EQ(files(), before) << "no size budget and younger than retention: nothing may go";
      EXPECT_EQ(journaled(dir_ / name).size(), 2000u);
    } else {
      EXPECT_LE(files(), 3u) << "a budget of 16 KiB in files of 8 KiB";
    }
  }
}

TEST_F(Journaled, RetentionDeletesOnlyFilesEveryGroupAcked) {
  const auto name = channel_name();
  ChannelOptions o = durable(D::Async);
  o.journal_segment_bytes = 8192;
  o.retention = std::chrono::seconds(0);
  auto ch = Channel::open(name, o);
  ch.ensure_group("slow");
  ch.ensure_group("fast");
  Producer p(ch, "p");
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(p.publish(text_of(0, i)).status, Status::Ok);
  ASSERT_TRUE(p.flush(10s));
  Consumer fast(ch, "fast");
  while (auto m = fast.poll(50ms)) ASSERT_EQ(fast.ack(*m), Status::Ok);
  auto files = [&] {
    std::size_t n = 0;
    for (const auto& e : fs::directory_iterator(dir_ / name)) n += e.path().extension() == ".log";
    return n;
  };
  std::this_thread::sleep_for(500ms);  // checkpoints and retention run
  const std::size_t before = files();
  EXPECT_GT(before, 5u);
  EXPECT_EQ(journaled(dir_ / name).size(), 2000u) << "the slow group holds everything";
  Consumer slow(ch, "slow");
  while (auto m = slow.poll(50ms)) ASSERT_EQ(slow.ack(*m), Status::Ok);
  const auto deadline = Clock::now() + 10s;
  while (files() > 1 && Clock::now() < deadline) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(files(), 1u) << "acked by both groups and past retention: only the current file stays";
}

// What an Async host crash costs, measured (figures printed; no timing is asserted): a producer
// process publishes Async with the default flush_interval, recording when each publish returned
// Ok; at a random instant it is SIGKILLed with its journaler (the host crash: what was not
// fdatasync'd is lost, i.e. everything at or past the durable position) and the age of the oldest
// Ok'd message not durable then is the loss window. Scenario 2 kills the journaler (another
// process) first and reports how long until a successor moves the durable position again.
// Asserted: the durable position never claims more than the journal has, and after a reboot every
// message below it is there.
struct OkLog {
  std::atomic<std::uint64_t> count;
  struct Entry {
    std::uint64_t position, ok_ns;
  } entries[1 << 18];
};

std::uint64_t mono_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

TEST_F(Journaled, MeasuresWhatAnAsyncHostCrashCosts) {
  auto* log = static_cast<OkLog*>(::mmap(nullptr, sizeof(OkLog), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(log, MAP_FAILED);
  std::mt19937 rng(std::random_device{}());
  const int trials = kSanitized ? 3 : 8;
  for (const bool journaler_dies : {false, true}) {
    std::vector<double> window_ms, takeover_ms;
    for (int t = 0; t < trials; ++t) {
      const auto name = channel_name();
      ChannelOptions o = durable(D::Async);
      o.flush_interval = ChannelOptions{}.flush_interval;
      Pipe ready;
      pid_t journaler = -1;
      if (journaler_dies) {  // opens first: it wins the election
        journaler = fork_child([&] {
          auto ch = Channel::open(name, o);
          const auto deadline = Clock::now() + 10s;
          while (ch.stats().journaler_pid != ::getpid() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
          ready.send(1);
          ::pause();
          return kChildOk;
        });
        int one = 0;
        ASSERT_TRUE(ready.receive(one, 20s));
      }
      log->count.store(0);
      const pid_t producer = fork_child([&] {
        auto ch = Channel::open(name, o);
        ch.ensure_group("g");
        Producer p(ch, "p");
        ready.send(2);
        for (std::uint64_t i = 0; i < std::size(log->entries); ++i) {
          const Published r = p.publish(text_of(0, i));
          CHILD_CHECK(r.status == Status::Ok);
          log->entries[i] = {r.position, mono_ns()};
          log->count.store(i + 1, std::memory_order_release);
          std::this_thread::sleep_for(20us);
        }
        ::pause();
        return kChildOk;
      });
      int two = 0;
      ASSERT_TRUE(ready.receive(two, 20s));
      std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 100));
      auto view = Channel::attach(name, false);
      if (journaler_dies) {
        const std::uint64_t before = view.stats().durable_position;
        const std::uint64_t killed = mono_ns();
        ASSERT_TRUE(kill_child(journaler).killed_by(SIGKILL));
        const std::uint64_t tail = view.stats().write_position;
        const auto deadline = Clock::now() + 10s;
        while (view.stats().durable_position <= std::max(before, tail) && Clock::now() < deadline) std::this_thread::yield();
        ASSERT_GT(view.stats().durable_position, std::max(before, tail)) << "no successor journaled";
        takeover_ms.push_back(static_cast<double>(mono_ns() - killed) / 1e6);
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 20));
      }
      // The host crash.
      const std::uint64_t crash = mono_ns();
      ASSERT_TRUE(kill_child(producer).killed_by(SIGKILL));
      const std::uint64_t durable = view.stats().durable_position;
      const std::uint64_t n = log->count.load(std::memory_order_acquire);
      ASSERT_GT(n, 0u);
      double age = 0;
      std::uint64_t below = 0;
      for (std::uint64_t i = 0; i < n; ++i) {
        if (log->entries[i].position < durable) {
          ++below;
          continue;
        }
        age = static_cast<double>(crash - log->entries[i].ok_ns) / 1e6;
        break;
      }
      window_ms.push_back(age);
      // The reboot: everything below the durable position is in the journal.
      { auto gone = std::move(view); }
      ::unlink(segment_path(name).c_str());
      auto ch = Channel::open(name, o);
      Consumer c(ch, "g");
      std::uint64_t got = 0;
      while (auto m = c.poll(100ms)) {
        got += m->position() < durable;
        ASSERT_EQ(c.ack(*m), Status::Ok);
      }
      EXPECT_EQ(got, below) << "a message below the durable position is not in the journal";
    }
    std::sort(window_ms.begin(), window_ms.end());
    std::printf("Async host crash, flush_interval %lld ms, %s, %d trials: oldest Ok'd message not durable at the crash "
                "was %.2f ms old at the median, %.2f ms at most\n",
                static_cast<long long>(ChannelOptions{}.flush_interval.count()),
                journaler_dies ? "journaler killed first" : "steady state", trials, window_ms[window_ms.size() / 2],
                window_ms.back());
    if (journaler_dies) {
      std::sort(takeover_ms.begin(), takeover_ms.end());
      std::printf("  a successor moved the durable position %.2f ms after the journaler's death at the median, %.2f ms at most\n",
                  takeover_ms[takeover_ms.size() / 2], takeover_ms.back());
    }
  }
  ::munmap(log, sizeof(OkLog));
  // The floor beside it: what one append + fdatasync costs in this journal directory now.
  fs::create_directories(dir_);
  const int fd = ::open((dir_ / "fdatasync-probe").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  std::vector<double> sync_ms;
  for (int i = 0; i < 20; ++i) {
    const std::string bytes(4096, 'x');
    ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(i) * 4096), 4096);
    const std::uint64_t t0 = mono_ns();
    ASSERT_EQ(::fdatasync(fd), 0);
    sync_ms.push_back(static_cast<double>(mono_ns() - t0) / 1e6);
  }
  ::close(fd);
  std::sort(sync_ms.begin(), sync_ms.end());
  std::printf("  beside it: one 4 KiB append + fdatasync in %s took %.2f ms at the median, %.2f ms at most\n",
              dir_.c_str(), sync_ms[sync_ms.size() / 2], sync_ms.back());
}

}  // namespace
}  // namespace shmq::test

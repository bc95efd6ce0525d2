// The journal under failing and recorded system calls, through the interposer tests/fault_shim.cpp
// (linked into this test only): a failed fdatasync (EIO, ENOSPC) never leads to an Ok for bytes
// the disk may not hold, whatever the page cache says; every directory the journal creates, and
// every file it creates or removes, is followed by an fsync of the directory that names it.
#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "journal/journal.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

namespace fs = std::filesystem;
using D = shmq::Durability;

std::string text_of(std::uint64_t i) { return "m-" + std::to_string(i); }

// A range the disk may never have got: PATH's bytes [first, end).
struct Lost {
  std::string path;
  std::uint64_t first, end;
};

class JournalFault : public ChannelTest {
 protected:
  void SetUp() override { ::setenv("SHMQ_FAULT_DIR", faults_.path().c_str(), 1); }
  void TearDown() override {
    ::unsetenv("SHMQ_FAULT_DIR");
    ChannelTest::TearDown();
  }

  ChannelOptions durable(D d) const {
    ChannelOptions o = memory_options(1 << 20, 4096);
    o.durability = d;
    o.journal_dir = journal_.path();
    o.flush_interval = std::chrono::milliseconds(2);
    o.liveness_interval = std::chrono::milliseconds(100);
    return o;
  }
  // The next COUNT fdatasyncs of a journal segment file fail with ERR (in any process).
  void fail_next_fdatasyncs(int err, int count) const {
    std::ofstream(faults_.path() / "fail", std::ios::trunc) << err << " " << count << "\n";
  }
  int injections_left() const {
    std::ifstream in(faults_.path() / "fail");
    int err = 0, count = -1;
    in >> err >> count;
    return count;
  }
  std::vector<Lost> lost_of(pid_t pid) const {
    std::vector<Lost> out;
    std::ifstream in(faults_.path() / ("lost." + std::to_string(pid)));
    Lost l;
    while (in >> l.path >> l.first >> l.end) out.push_back(l);
    return out;
  }
  // The host lost its power: what the disk never got reads as zeros.
  static void zero(const std::vector<Lost>& lost) {
    for (const Lost& l : lost) {
      std::error_code ec;
      const auto size = fs::file_size(l.path, ec);
      if (ec) continue;  // removed since (and not made again)
      const std::uint64_t end = std::min<std::uint64_t>(l.end, size);
      if (l.first >= end) continue;
      std::fstream f(l.path, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(l.first));
      const std::string zeros(end - l.first, '\0');
      f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
    }
  }
  std::vector<std::string> events() const {
    std::vector<std::string> out;
    std::ifstream in(faults_.path() / "events");
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }

  TestDir faults_{"faults", true};
  TestDir journal_{"jfault"};
};

class FailedFdatasync : public JournalFault, public ::testing::WithParamInterface<int> {};

// A Sync publish whose fdatasync failed returns Ok only once its bytes were written again and
// synced: at every Ok the disk may lack nothing (no lost range left), and after a host crash
// (the lost ranges zeroed, the segment dropped, the channel reopened from the journal) every
// Ok'd message is there.
TEST_P(FailedFdatasync, SyncIsNotOkAfterAFailedFdatasync) {
  const int err = GetParam();
  const auto name = channel_name();
  const ChannelOptions o = durable(D::Sync);
  const int n = 40;
  Pipe oks;
  const pid_t child = fork_child([&] {
    auto ch = Channel::open(name, o);
    ch.ensure_group("g");
    Producer p(ch, "p");
    PublishOptions po;
    po.timeout = 30s;
    for (int i = 0; i < n; ++i) {
      if (i == n / 4 || i == n / 2) fail_next_fdatasyncs(err, 1);
      const Published r = p.publish(text_of(i), po);
      CHILD_CHECK(r.status == Status::Ok);
      CHILD_CHECK(ch.stats().durable_position > r.position);
      CHILD_CHECK(lost_of(::getpid()).empty());  // Ok'd with bytes the disk may not have
      oks.send(i);
    }
    CHILD_CHECK(injections_left() == 0);  // both failures happened
    ::pause();
    return kChildOk;
  });
  oks.close_write();  // a child that dies ends the reading below
  std::set<std::string> ok;
  for (int i = 0; i < n; ++i) {
    int got = -1;
    if (!oks.receive(got, 60s)) break;
    ok.insert(text_of(got));
  }
  // The host crash: every process dies at once, what the disk lacks is gone, and so is the segment.
  const ChildResult r = kill_child(child);
  ASSERT_TRUE(r.killed_by(SIGKILL)) << "the child failed a check (see its output)";
  ASSERT_EQ(ok.size(), static_cast<std::size_t>(n));
  zero(lost_of(child));
  const std::set<std::string> got = texts_after_reboot(name, o);
  for (const auto& t : ok) EXPECT_TRUE(got.count(t)) << t << " was Ok'd and is lost";
}

INSTANTIATE_TEST_SUITE_P(Errnos, FailedFdatasync, ::testing::Values(EIO, ENOSPC),
                         [](const ::testing::TestParamInfo<int>& param) {
                           return std::string(param.param == EIO ? "EIO" : "ENOSPC");
                         });

// While the journaler recovers from a failed fdatasync (it waits a second before it opens the
// journal again), a Sync publish with a short timeout returns Timeout; stats() shows the error and
// the durable lag (bytes and age); a retry returns Duplicate carrying the original's position, and
// Producer::wait_durable on it returns true once the record is durable. A Sync Claim::commit
// returns Timeout the same way.
TEST_F(JournalFault, ASyncTimeoutCanBeWaitedOutOnItsPositionAndStatsShowTheErrorAndTheLag) {
  const auto name = channel_name();
  auto ch = Channel::open(name, durable(D::Sync));
  Producer p(ch, "p");
  PublishOptions po;
  po.timeout = 30s;
  ASSERT_EQ(p.publish("before", po).status, Status::Ok);
  EXPECT_EQ(ch.stats().journal_errors, 0u);
  EXPECT_EQ(ch.stats().durable_lag_bytes, 0u);
  fail_next_fdatasyncs(EIO, 1);
  po.timeout = 100ms;
  const Published first = p.publish("the one", po);
  ASSERT_EQ(first.status, Status::Timeout);
  std::this_thread::sleep_for(20ms);
  const ChannelStats st = ch.stats();
  EXPECT_GE(st.journal_errors, 1u);
  EXPECT_GT(st.durable_lag_bytes, 0u);
  EXPECT_EQ(st.durable_lag_bytes, st.write_position - st.durable_position);
  EXPECT_GE(st.durable_lag_ms, 100.0) << "the record has waited at least the publish's timeout";
  PublishOptions retry = po;
  retry.seq = first.id.seq;
  const Published again = p.publish("the one", retry);
  ASSERT_EQ(again.status, Status::Duplicate);
  EXPECT_EQ(again.position, first.position);
  ASSERT_TRUE(p.wait_durable(again.position, 30s));
  EXPECT_GT(ch.stats().durable_position, first.position);
  EXPECT_EQ(ch.stats().durable_lag_bytes, 0u);
  EXPECT_EQ(ch.stats().durable_lag_ms, 0.0);
  EXPECT_FALSE(p.wait_durable(kNoPosition, 1ms));

  fail_next_fdatasyncs(EIO, 1);
  Claim c = p.claim(5, po);
  ASSERT_TRUE(c);
  std::memcpy(c.data().data(), "claim", 5);
  const Published committed = c.commit();
  ASSERT_EQ(committed.status, Status::Timeout);
  ASSERT_TRUE(p.wait_durable(committed.position, 30s));
  EXPECT_GE(ch.stats().journal_errors, 2u);
  EXPECT_EQ(injections_left(), 0);
}

// Every directory the journal creates (the journal_dir itself and its missing parents, DIR/NAME)
// is followed by an fsync of its parent, and every file created, removed or renamed into place in
// the journal by an fsync of the directory: after a host crash the path still leads to the files.
TEST_F(JournalFault, EveryDirectoryAndFileTheJournalCreatesOrRemovesIsFsyncdInItsParent) {
  const auto name = channel_name();
  ChannelOptions o = durable(D::Sync);
  const fs::path base = journal_.path() / "deeper" / "still";
  o.journal_dir = base;
  o.journal_segment_bytes = 4096;
  o.retention = std::chrono::seconds(0);  // acked files go: removals are checked too
  const pid_t child = fork_child([&] {
    auto ch = Channel::open(name, o);
    ch.ensure_group("g");
    Producer p(ch, "p");
    Consumer c(ch, "g");
    for (int i = 0; i < 300; ++i) {
      CHILD_CHECK(p.publish(text_of(i)).status == Status::Ok);
      auto m = c.poll(1s);
      CHILD_CHECK(m && c.ack(*m) == Status::Ok);
    }
    return kChildOk;  // closes: the last checkpoint and retention run
  });
  ASSERT_TRUE(wait_child(child, 60s).ok());
  const std::string root = fs::weakly_canonical(journal_.path()).string();
  const auto parent = [](const std::string& p) { return fs::path(p).parent_path().string(); };
  const auto ev = events();
  std::map<std::string, std::size_t> counts;
  for (std::size_t i = 0; i < ev.size(); ++i) {
    const auto space = ev[i].find(' ');
    const std::string what = ev[i].substr(0, space);
    const std::string path = fs::weakly_canonical(ev[i].substr(space + 1)).string();
    if (path.rfind(root, 0) != 0 || what == "fsyncdir") continue;
    if (what == "unlink" && path.size() > 4 && path.substr(path.size() - 4) == ".tmp") continue;  // replaced by a rename
    if (what == "create" && path.size() > 4 && path.substr(path.size() - 4) == ".tmp") continue;  // renamed, then synced
    ++counts[what];
    bool synced = false;
    for (std::size_t k = i + 1; k < ev.size() && !synced; ++k)
      synced = ev[k].rfind("fsyncdir ", 0) == 0 && fs::weakly_canonical(ev[k].substr(9)).string() == parent(path);
    EXPECT_TRUE(synced) << ev[i] << ": no fsync of " << parent(path) << " follows";
  }
  EXPECT_EQ(counts["mkdir"], 4u) << "the test directory, deeper, still, and still/NAME";
  EXPECT_GE(counts["create"], 5u) << "LOCK, meta, state, segment files";
  EXPECT_GE(counts["unlink"], 1u) << "retention removed acked files";
  EXPECT_GE(counts["rename"], 2u) << "checkpoints";
}

}  // namespace
}  // namespace shmq::test

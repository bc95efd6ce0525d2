// A journaler killed at each of its crash points (shm/crash_point.hpp: journal.after_write,
// journal.after_sync, checkpoint.after_write): no Sync publish that returned Ok is lost, another
// process takes the journaler's role and goes on, and after a reboot (every process killed, the
// segment dropped, the channel reopened from the journal) every Ok'd message is there.
#include <set>

#include "shm/crash_point.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

class JournalerCrash : public ChannelTest, public ::testing::WithParamInterface<const char*> {
 protected:
  ChannelOptions durable() const {
    ChannelOptions o = memory_options(1 << 20, 4096);
    o.durability = Durability::Sync;
    o.journal_dir = tmp_.path();
    o.flush_interval = std::chrono::milliseconds(2);
    o.liveness_interval = std::chrono::milliseconds(100);
    return o;
  }
  TestDir tmp_{"jcrash"};
};

TEST_P(JournalerCrash, NoSyncOkIsLostASuccessorTakesOverAndARebootRecoversEverything) {
  ASSERT_TRUE(detail::crash_points_enabled());
  const char* point = GetParam();
  const auto name = channel_name();
  const ChannelOptions o = durable();
  Pipe ready, oks;
  // The journaler: opens first and wins the election; dies at the point's second pass (the first
  // checkpoint is written when it starts, the second for the publisher's producer and group).
  const pid_t journaler = fork_child([&] {
    detail::arm_crash_point(point, 2);
    auto ch = Channel::open(name, o);
    const auto deadline = Clock::now() + 10s;
    while (ch.stats().journaler_pid != ::getpid() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
    CHILD_CHECK(ch.stats().journaler_pid == ::getpid());
    ready.send(1);
    ::pause();
    return kChildOk;
  });
  int one = 0;
  ASSERT_TRUE(ready.receive(one, 20s));
  // The publisher: Sync publishes until it has become the journaler and published 50 more.
  const pid_t publisher = fork_child([&] {
    auto ch = Channel::open(name, o);
    ch.ensure_group("g");
    Producer p(ch, "p");
    PublishOptions po;
    po.timeout = 20s;
    int after_takeover = -1;
    const auto deadline = Clock::now() + 30s;
    for (int i = 0; after_takeover < 50 && Clock::now() < deadline; ++i) {
      const Published r = p.publish("m-" + std::to_string(i), po);
      CHILD_CHECK(r.status == Status::Ok);
      CHILD_CHECK(ch.stats().durable_position > r.position);
      oks.send(i);
      if (after_takeover >= 0) ++after_takeover;
      else if (ch.stats().journaler_pid == ::getpid()) after_takeover = 0;
    }
    CHILD_CHECK(after_takeover >= 50);  // it took over
    oks.send(-1);
    ::pause();
    return kChildOk;
  });
  oks.close_write();
  std::set<std::string> ok;
  bool done = false;
  for (int got = 0; !done && oks.receive(got, 40s);) {
    if (got < 0) done = true;
    else ok.insert("m-" + std::to_string(got));
  }
  ASSERT_TRUE(done) << "the publisher failed a check or did not take over (see its output)";
  EXPECT_TRUE(wait_child(journaler, 10s).killed_by(SIGKILL)) << "the journaler did not die at " << point;
  // The reboot.
  ASSERT_TRUE(kill_child(publisher).killed_by(SIGKILL));
  const std::set<std::string> got = texts_after_reboot(name, o);
  for (const auto& t : ok) EXPECT_TRUE(got.count(t)) << t << " was Ok'd (Sync) and is lost";
  EXPECT_GT(ok.size(), 50u);
}

INSTANTIATE_TEST_SUITE_P(Points, JournalerCrash,
                         ::testing::Values("journal.after_write", "journal.after_sync", "checkpoint.after_write"),
                         [](const ::testing::TestParamInfo<const char*>& param) {
                           std::string n = param.param;
                           for (char& ch : n)
                             if (ch == '.') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace shmq::test

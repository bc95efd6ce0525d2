// Named crash points (shm/crash_point.hpp): an armed point kills the process with SIGKILL at that
// instruction, the Nth pass when asked, and nowhere else; a publish killed at each of its points
// leaves a channel whose survivors see the message exactly once or, killed before its commit, not
// at all (never half of it, never twice).
#include "shm/crash_point.hpp"
#include "support.hpp"

namespace shmq::test {
namespace {

class CrashPointTest : public ChannelTest {};

TEST_F(CrashPointTest, BuildHasCrashPoints) {
  // make test configures every suite with -DSHMQ_CRASH_POINTS=ON: without them the crash tests
  // below would prove nothing.
  EXPECT_TRUE(detail::crash_points_enabled());
}

TEST_F(CrashPointTest, AnArmedPointKillsOnItsNthPassOnly) {
  const std::string name = channel_name();
  { Channel ch = Channel::open(name, memory_options()); ch.ensure_group("g", Start::Earliest); }
  const pid_t pid = fork_child([&] {
    Channel ch = Channel::open(name, memory_options());
    Producer p(ch, "p");
    detail::arm_crash_point("publish.after_accept", 3);
    for (int i = 0; i < 5; ++i) CHILD_CHECK(p.publish("m" + std::to_string(i)).status == Status::Ok);
    return kChildOk;  // not reached: the third publish dies
  });
  const ChildResult r = wait_child(pid, 30s);
  ASSERT_TRUE(r.killed_by(SIGKILL)) << r.describe();
  Channel ch = Channel::open(name, memory_options());
  Consumer c(ch, "g");
  std::vector<std::string> got;
  while (auto m = c.poll(50ms)) {
    got.emplace_back(m->text());
    c.ack(*m);
  }
  EXPECT_EQ(got, (std::vector<std::string>{"m0", "m1", "m2"}));
}

TEST_F(CrashPointTest, AnUnarmedOrDisarmedPointDoesNothing) {
  const std::string name = channel_name();
  const pid_t pid = fork_child([&] {
    Channel ch = Channel::open(name, memory_options());
    Producer p(ch, "p");
    detail::arm_crash_point("publish.after_commit", 1);
    detail::arm_crash_point("");
    for (int i = 0; i < 3; ++i) CHILD_CHECK(p.publish("x").status == Status::Ok);
    return kChildOk;
  });
  const ChildResult r = wait_child(pid, 30s);
  EXPECT_TRUE(r.ok()) << r.describe();
}

}  // namespace
}  // namespace shmq::test

// Creation of a segment is race-free between processes, and a creator that dies (or stalls) in the
// middle of initialisation neither hangs nor misleads the other openers.
#include "support.hpp"

#include "shm/segment.hpp"  // shmq::detail::set_init_hook

#include <set>

namespace shmq::test {
namespace {

constexpr int kOpeners = 8;
constexpr int kRounds = kSanitized ? 10 : 20;

// What each racing opener saw.
struct OpenerReport {
  int index;
  int publish_status;
  std::uint64_t ring_bytes;
  std::uint64_t max_message_bytes;
  std::uint32_t max_producers;
  std::uint32_t max_groups;
  std::uint32_t max_consumers;
  std::uint32_t dedup_window;
  std::uint32_t max_deliveries;
  int durability;
};

using CreationRace = ChannelTest;

TEST_F(CreationRace, EightProcessesOpeningANewChannelAtOnceAllSucceedAndAgree) {
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const auto name = channel_name("r" + std::to_string(round));
    StartBarrier barrier;
    Pipe reports;
    std::vector<pid_t> children;
    for (int k = 0; k < kOpeners; ++k) {
      children.push_back(fork_child(
          [&, k] {
            // Each asks for another ring size: whoever creates it, all must adopt one geometry.
            auto o = memory_options(std::size_t{1} << (20 + k % 3), 64 << 10);
            barrier.wait();
            Channel ch = Channel::open(name, o);
            { Consumer join(ch, "g"); }  // the group exists before this process publishes
            Producer p(ch, "racer-" + std::to_string(k));
            const auto pub = p.publish(std::to_string(k));
            const auto& eo = ch.options();
            OpenerReport r{k,
                           static_cast<int>(pub.status),
                           eo.ring_bytes,
                           eo.max_message_bytes,
                           eo.max_producers,
                           eo.max_groups,
                           eo.max_consumers,
                           eo.dedup_window,
                           eo.max_deliveries,
                           static_cast<int>(eo.durability)};
            CHILD_CHECK(reports.send(r));
            return kChildOk;
          },
          60));
    }
    barrier.release();
    const auto deadline = Clock::now() + 60s;
    for (pid_t pid : children) {
      const auto r = wait_child(pid, deadline);
      EXPECT_TRUE(r.ok()) << "opener " << pid << " " << r.describe();
    }

    std::vector<OpenerReport> seen;
    for (int k = 0; k < kOpeners; ++k) {
      OpenerReport r{};
      if (!reports.receive(r, 1s)) break;
      seen.push_back(r);
    }
    ASSERT_EQ(seen.size(), static_cast<std::size_t>(kOpeners));
    for (const auto& r : seen) {
      SCOPED_TRACE("opener " + std::to_string(r.index));
      EXPECT_EQ(r.publish_status, static_cast<int>(Status::Ok));
      EXPECT_EQ(r.ring_bytes, seen[0].ring_bytes);
      EXPECT_TRUE(r.ring_bytes == 1u << 20 || r.ring_bytes == 2u << 20 || r.ring_bytes == 4u << 20)
          << r.ring_bytes;
      EXPECT_EQ(r.max_message_bytes, std::uint64_t{64} << 10);
      EXPECT_EQ(r.max_producers, seen[0].max_producers);
      EXPECT_EQ(r.max_groups, seen[0].max_groups);
      EXPECT_EQ(r.max_consumers, seen[0].max_consumers);
      EXPECT_EQ(r.dedup_window, seen[0].dedup_window);
      EXPECT_EQ(r.max_deliveries, seen[0].max_deliveries);
      EXPECT_EQ(r.durability, static_cast<int>(Durability::Memory));
    }

    Channel ch = Channel::attach(name);
    EXPECT_EQ(ch.options().ring_bytes, seen[0].ring_bytes);
    Consumer c(ch, "g");
    std::multiset<std::string> got;
    for (int k = 0; k < kOpeners; ++k) {
      auto m = poll_for(c, 5s);
      if (!m) break;
      got.insert(std::string(m->text()));
      EXPECT_EQ(c.ack(*m), Status::Ok);
    }
    std::multiset<std::string> want;
    for (int k = 0; k < kOpeners; ++k) want.insert(std::to_string(k));
    EXPECT_EQ(got, want);
    EXPECT_FALSE(c.poll()) << "more than " << kOpeners << " messages";
    EXPECT_EQ(ch.stats().producers.size(), static_cast<std::size_t>(kOpeners));
    if (HasFailure()) return;
  }
}

// A round trip through a channel: the segment is usable, not just openable.
void expect_round_trip(Channel& ch, std::string_view text) {
  Consumer c(ch, "g");
  Producer p(ch, "parent");
  ASSERT_EQ(p.publish(text).status, Status::Ok);
  auto m = poll_for(c, 5s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->text(), text);
  EXPECT_EQ(c.ack(*m), Status::Ok);
}

TEST_F(CreationRace, ACreatorKilledHalfwayThroughInitialisationDoesNotBlockTheNextOpener) {
  const auto name = channel_name();
  const pid_t creator = fork_child(
      [&] {
        detail::set_init_hook(+[] { ::raise(SIGKILL); });
        Channel ch = Channel::open(name, memory_options());
        std::fprintf(stderr, "creator: the init hook was not called\n");
        return kChildFailed;
      },
      30);
  const auto r = wait_child(creator, 30s);
  ASSERT_TRUE(r.killed_by(SIGKILL)) << "creator " << r.describe();

  const auto t0 = Clock::now();
  {
    Deadline d(30, "Channel::open after a creator died half-way");
    Channel ch = Channel::open(name, memory_options());
    const auto took = Clock::now() - t0;
    EXPECT_LT(took, 10s) << "open took "
                         << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
    EXPECT_EQ(ch.options().ring_bytes, std::size_t{1} << 20);
    expect_round_trip(ch, "after the dead creator");
  }
  // And a later process attaches to it as to any other channel.
  const pid_t later = fork_child(
      [&] {
        Channel ch = Channel::attach(name);
        Producer p(ch, "later");
        CHILD_CHECK(p.publish("later").status == Status::Ok);
        return kChildOk;
      },
      30);
  EXPECT_TRUE(wait_child(later, 30s).ok());
}

int g_hook_fd = -1;

// The init hook of a creator that stalls: tells the parent it got there, then sleeps forever.
void announce_and_stall() {
  const char c = 'h';
  (void)!::write(g_hook_fd, &c, 1);
  for (;;) ::pause();
}

TEST_F(CreationRace, AnOpenerWaitsForALiveCreatorAndProceedsWhenItDies) {
  const auto name = channel_name();
  Pipe hook;
  const pid_t creator = fork_child(
      [&] {
        g_hook_fd = hook.write_fd();
        detail::set_init_hook(&announce_and_stall);
        Channel ch = Channel::open(name, memory_options());
        std::fprintf(stderr, "creator: the init hook was not called\n");
        return kChildFailed;
      },
      120);
  char c = 0;
  ASSERT_TRUE(hook.receive(c, 30s)) << "the creator never reached the init hook";

  Pipe opened;
  const pid_t opener = fork_child(
      [&] {
        Channel ch = Channel::open(name, memory_options(2 << 20, 64 << 10));
        const char o = 'o';
        CHILD_CHECK(opened.send(o));
        Consumer cons(ch, "g");
        Producer p(ch, "p");
        CHILD_CHECK(p.publish("after the stalled creator").status == Status::Ok);
        auto m = poll_for(cons, 10s);
        CHILD_CHECK(m && m->text() == "after the stalled creator");
        CHILD_CHECK(cons.ack(*m) == Status::Ok);
        return kChildOk;
      },
      60);

  // While the creator lives, the opener waits: it neither fails nor sees a half-made header.
  std::this_thread::sleep_for(kSanitized ? 1000ms : 500ms);
  EXPECT_TRUE(child_running(opener)) << "the opener did not wait for the live creator";
  EXPECT_FALSE(opened.readable()) << "the opener opened a segment whose creator had not finished";
  EXPECT_TRUE(child_running(creator));

  const auto killed = kill_child(creator);
  EXPECT_TRUE(killed.killed_by(SIGKILL)) << "creator " << killed.describe();
  const auto r = wait_child(opener, 30s);
  EXPECT_TRUE(r.ok()) << "opener " << r.describe();

  Deadline d(30, "Channel::open after the stalled creator was killed");
  Channel ch = Channel::open(name, memory_options());
  expect_round_trip(ch, "and in the parent");
}

}  // namespace
}  // namespace shmq::test

// Liveness tokens and the cheap wall clock.
#include "shm/process.hpp"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <thread>

#include "support.hpp"

namespace {
using namespace shmq::detail;

std::uint64_t realtime() {
  timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

TEST(WallClock, StaysWithinTwentyMicrosecondsOfTheRealClockForSeconds) {
  calibrate_wall_clock();
  constexpr std::uint64_t kTolerance = 20'000;
  std::uint64_t worst = 0;
  const std::uint64_t end = realtime() + 1'500'000'000;
  for (std::uint64_t i = 0; realtime() < end; ++i) {
    const std::uint64_t before = realtime();
    const std::uint64_t w = wall_clock_ns();
    const std::uint64_t after = realtime();
    // Preemption between the reads only widens [before, after]: the check cannot fail for it.
    ASSERT_GE(w + kTolerance, before) << "sample " << i;
    ASSERT_LE(w, after + kTolerance) << "sample " << i;
    if (w < before) worst = std::max(worst, before - w);
    if (w > after) worst = std::max(worst, w - after);
    if (i % 1000 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  std::printf("largest distance outside [before, after]: %lu ns\n", static_cast<unsigned long>(worst));
}

TEST(Liveness, ALiveProcessIsAliveADeadOneIsNotAndAReusedPidIsNotTheSameProcess) {
  EXPECT_TRUE(token_alive(self_token()));
  const pid_t child = ::fork();
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  // The child's token, as it would compute it.
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  const pid_t probe = ::fork();
  if (probe == 0) {
    const std::uint64_t t = self_token();
    (void)!::write(pipefd[1], &t, sizeof t);
    ::_exit(0);
  }
  std::uint64_t probe_token = 0;
  ASSERT_EQ(::read(pipefd[0], &probe_token, sizeof probe_token), static_cast<ssize_t>(sizeof probe_token));
  ::waitpid(probe, nullptr, 0);
  EXPECT_FALSE(token_alive(probe_token)) << "a reaped process is dead";
  ::kill(child, SIGKILL);
  // A zombie (killed, not yet reaped) counts as dead.
  std::uint64_t zombie_token = static_cast<std::uint32_t>(child);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(token_alive(zombie_token | (std::uint64_t(1) << 32)));
  ::waitpid(child, nullptr, 0);
  // Our own pid with another start time is another process.
  EXPECT_FALSE(token_alive(self_token() ^ (std::uint64_t(1) << 40)));
  ::close(pipefd[0]);
  ::close(pipefd[1]);
}

// Forks a child that runs BODY on a new thread and then ends its main thread alone, as
// pthread_exit() does, but with the raw exit(2) system call: pthread_exit's forced unwind would run
// through GoogleTest's catch (...) in the child. BODY leaves with _exit(); the child's alarm ends a
// stuck one.
pid_t fork_with_main_thread_exit(std::function<void()> body, unsigned seconds = 30) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::alarm(seconds);  // default action of SIGALRM: the child dies
  std::thread([body = std::move(body)] {
    body();
    ::_exit(0);
  }).detach();
  for (;;) ::syscall(SYS_exit, 0);  // this thread only (exit_group is _exit's)
}

// Waits (10 s at most) until /proc/PID/stat shows PID's main thread as a zombie.
bool wait_for_zombie_leader(pid_t pid) {
  const auto deadline = shmq::test::Clock::now() + std::chrono::seconds(10);
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  while (shmq::test::Clock::now() < deadline) {
    if (FILE* f = std::fopen(path, "r")) {
      char buf[512] = {};
      const bool got = std::fgets(buf, sizeof buf, f) != nullptr;
      std::fclose(f);
      const char* close = got ? std::strrchr(buf, ')') : nullptr;
      if (close && close[1] == ' ' && close[2] == 'Z') return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// A process whose main thread called pthread_exit() while another thread goes on shows 'Z' in
// /proc/PID/stat; it is alive all the same (issue 10.1). Once that thread exits, it is dead.
TEST(Liveness, AProcessWhoseMainThreadExitedIsAliveWhileAnotherThreadRuns) {
  using namespace shmq::test;
  Pipe token_pipe, go;
  const pid_t child = fork_with_main_thread_exit([&] {
    const std::uint64_t t = self_token();
    CHILD_CHECK(token_pipe.send(t));
    char c;
    (void)!::read(go.read_fd(), &c, 1);  // until the parent says so
  });
  go.close_read();
  std::uint64_t token = 0;
  ASSERT_TRUE(token_pipe.receive(token, 10s));
  // Wait until the leader is a zombie: then /proc/PID/stat says Z.
  ASSERT_TRUE(wait_for_zombie_leader(child)) << "the child's main thread never exited";
  EXPECT_TRUE(token_alive(token)) << "a process with a running thread is alive although its main thread exited";
  const char c = 'x';
  ASSERT_EQ(::write(go.write_fd(), &c, 1), 1);
  const ChildResult r = wait_child(child, 10s);
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_FALSE(token_alive(token)) << "a reaped process is dead";
}

// The same across a channel: a thread keeps a zero-copy claim open after its process's main thread
// exited; a reader waiting at that claim must not turn it into padding. The thread then commits
// and the record is delivered (before the fix: commit returned Ok and the record was lost).
TEST(Liveness, AnOpenClaimOfAProcessWhoseMainThreadExitedIsNotPadded) {
  using namespace shmq::test;
  using namespace shmq;
  const std::string name = unique_name("claim");
  ::unlink(segment_path(name).c_str());
  ChannelOptions o = memory_options(1 << 16, 1 << 10);
  o.liveness_interval = std::chrono::milliseconds(20);
  Channel ch = Channel::open(name, o);
  Consumer consumer(ch, "g");
  Pipe claimed, go, done;
  const pid_t child = fork_with_main_thread_exit([&] {
    Channel c = Channel::open(name, o);
    Producer p(c, "p");
    Claim claim = p.claim(5);
    CHILD_CHECK(claim);
    std::memcpy(claim.data().data(), "hello", 5);
    // The main thread is gone before the parent's reader meets the claim.
    CHILD_CHECK(wait_for_zombie_leader(::getpid()));
    CHILD_CHECK(claimed.send('c'));
    char x;
    (void)!::read(go.read_fd(), &x, 1);
    const Published pub = claim.commit();
    CHILD_CHECK(done.send(static_cast<int>(pub.status)));
  });
  go.close_read();
  char x = 0;
  ASSERT_TRUE(claimed.receive(x, 10s));
  // The reader meets the open claim and waits long enough to ask about its claimer many times.
  auto m = consumer.poll(std::chrono::milliseconds(600));
  EXPECT_FALSE(m) << "nothing is committed yet";
  ASSERT_EQ(::write(go.write_fd(), &x, 1), 1);
  int status = -1;
  ASSERT_TRUE(done.receive(status, 10s));
  EXPECT_EQ(status, static_cast<int>(Status::Ok));
  m = poll_for(consumer, 5000ms);
  ASSERT_TRUE(m) << "the committed record of a live process was lost";
  EXPECT_EQ(m->text(), "hello");
  const ChildResult r = wait_child(child, 10s);
  EXPECT_TRUE(r.ok()) << r.describe();
  Channel::remove(name);
}

}  // namespace

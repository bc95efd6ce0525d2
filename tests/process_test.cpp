// Liveness tokens and the cheap wall clock.
#include "shm/process.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <thread>

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

}  // namespace

// Helpers shared by the tests: unique channel names, a fixture that removes its channels, forked
// children with deadlines, a start barrier, and a deadline for the test process itself.
//
// Rules the helpers enforce:
//   - every channel a test makes has a name unique to the process and the test, and is removed in
//     TearDown, so the test executables can run in parallel;
//   - a child never returns into GoogleTest: it runs a function and leaves with _exit(code), with an
//     alarm() set so that a child stuck in the library dies on its own;
//   - the parent waits for a child with a deadline, SIGKILLs it past that, and reports it.
#pragma once

#include <shmq/shmq.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <system_error>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace shmq::test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Big message counts are scaled down under the sanitizers so that the suite stays fast; the tests
// still run.
#ifdef SHMQ_SANITIZED
inline constexpr bool kSanitized = true;
inline constexpr std::uint64_t scaled(std::uint64_t n) { return n / 10 == 0 ? 1 : n / 10; }
#else
inline constexpr bool kSanitized = false;
inline constexpr std::uint64_t scaled(std::uint64_t n) { return n; }
#endif

// Channel options for tests: Memory durability (no journal yet), a small ring.
inline ChannelOptions memory_options(std::size_t ring_bytes = 1 << 20,
                                     std::size_t max_message_bytes = 64 << 10) {
  ChannelOptions o;
  o.durability = Durability::Memory;
  o.ring_bytes = ring_bytes;
  o.max_message_bytes = max_message_bytes;
  // Not pre-faulted: every test segment is at least ~5 MiB (the dedup windows) and populating each
  // one at every open cost the suites 8% more time (CI's budget is 20 minutes). prefault_test and
  // the tests that open with default options keep the default (on).
  o.prefault = false;
  return o;
}

inline std::string segment_path(const std::string& channel) { return "/dev/shm/shmq." + channel; }

inline std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// A name made of the process id, the test's name and a tag: unique across parallel test runs.
inline std::string unique_name(std::string_view tag = "") {
  std::string test = "t";
  if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info()) {
    test = info->name();
  }
  for (char& c : test) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-')) c = '_';
  }
  std::string name = "ut-" + std::to_string(::getpid()) + "-" + test;
  if (!tag.empty()) {
    name += "-";
    name += tag;
  }
  return name;
}

// A directory for a test's journals and key stores, unique to the process and the test (named
// after TAG): emptied when the fixture is made (and created, with CREATE), removed with all it holds
// when the fixture goes, after its TearDown (so after its channels). Forked children leave with
// _exit() and never remove it.
class TestDir {
 public:
  explicit TestDir(std::string_view tag, bool create = false)
      : path_(std::filesystem::temp_directory_path() / ("shmq-" + std::string(tag) + "-" + unique_name())) {
    std::filesystem::remove_all(path_);
    if (create) std::filesystem::create_directories(path_);
  }
  ~TestDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TestDir(const TestDir&) = delete;
  TestDir& operator=(const TestDir&) = delete;
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

// Fixture: hands out unique channel names and removes every one of them in TearDown.
class ChannelTest : public ::testing::Test {
 protected:
  std::string channel_name(std::string_view tag = "") {
    names_.push_back(unique_name(tag.empty() ? std::to_string(names_.size()) : std::string(tag)));
    return names_.back();
  }
  void TearDown() override {
    for (const auto& name : names_)
      for (const std::string& n : {name, name + ".dlq"}) {  // and the dead letters it made
        try {
          if (Channel::exists(n)) Channel::remove(n);
        } catch (const std::exception& e) {
          ADD_FAILURE() << "Channel::remove(" << n << ") threw: " << e.what();
        }
        ::unlink(segment_path(n).c_str());  // whatever the test left there on purpose
      }
  }

 private:
  std::vector<std::string> names_;
};

// Deadline for the test process itself, for calls that could block forever in the parent: past
// it, the process prints what it was waiting for and exits with 124 (a failed test).
class Deadline {
 public:
  Deadline(unsigned seconds, const char* what) {
    what_ = what;
    struct sigaction sa {};
    sa.sa_handler = &Deadline::expired;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGALRM, &sa, &old_);
    ::alarm(seconds);
  }
  ~Deadline() {
    ::alarm(0);
    ::sigaction(SIGALRM, &old_, nullptr);
  }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

 private:
  static void expired(int) {
    const char head[] = "\n*** test deadline expired while waiting for: ";
    (void)!::write(2, head, sizeof head - 1);
    (void)!::write(2, what_, std::strlen(what_));
    (void)!::write(2, "\n", 1);
    ::_exit(124);
  }
  static inline const char* what_ = "";
  struct sigaction old_ {};
};

// Exit codes of a child.
inline constexpr int kChildOk = 0;
inline constexpr int kChildFailed = 1;      // a check in the child failed (it printed which)
inline constexpr int kChildThrew = 2;       // an exception escaped the child's function
inline constexpr int kChildAlarm = 3;       // SIGALRM: the child's own watchdog

// In a child: print the failed check and leave.
#define CHILD_CHECK(cond)                                                                        \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "child %d: check failed at %s:%d: %s\n", static_cast<int>(::getpid()), \
                   __FILE__, __LINE__, #cond);                                                   \
      std::fflush(stderr);                                                                       \
      ::_exit(::shmq::test::kChildFailed);                                                       \
    }                                                                                            \
  } while (0)

// Forks a child that runs fn() with an alarm of `seconds` and leaves with _exit(fn's result).
inline pid_t fork_child(std::function<int()> fn, unsigned seconds = 60) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return pid;
  }
  if (pid > 0) return pid;
  // Child.
  ::signal(SIGALRM, [](int) {
    const char msg[] = "child: watchdog alarm expired\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(kChildAlarm);
  });
  ::alarm(seconds);
  int rc = kChildThrew;
  try {
    rc = fn();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "child %d: exception: %s\n", static_cast<int>(::getpid()), e.what());
  } catch (...) {
    std::fprintf(stderr, "child %d: unknown exception\n", static_cast<int>(::getpid()));
  }
  std::fflush(stdout);
  std::fflush(stderr);
  ::_exit(rc);
}

struct ChildResult {
  bool exited = false;      // waited for (not past the deadline)
  int status = 0;           // raw wait status
  bool ok() const { return exited && WIFEXITED(status) && WEXITSTATUS(status) == 0; }
  bool killed_by(int sig) const { return exited && WIFSIGNALED(status) && WTERMSIG(status) == sig; }
  std::string describe() const {
    if (!exited) return "did not finish before the deadline (SIGKILLed)";
    if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
    return "status " + std::to_string(status);
  }
};

// Waits for pid until the deadline; past it, SIGKILLs and reaps it and returns exited = false.
inline ChildResult wait_child(pid_t pid, Clock::time_point deadline) {
  ChildResult r;
  for (;;) {
    int status = 0;
    const pid_t got = ::waitpid(pid, &status, WNOHANG);
    if (got == pid) {
      r.exited = true;
      r.status = status;
      return r;
    }
    if (got < 0 && errno != EINTR) {
      ADD_FAILURE() << "waitpid(" << pid << "): " << std::strerror(errno);
      return r;
    }
    if (Clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return r;
    }
    std::this_thread::sleep_for(1ms);
  }
}

inline ChildResult wait_child(pid_t pid, std::chrono::milliseconds timeout) {
  return wait_child(pid, Clock::now() + timeout);
}

// Is the child still running (not exited)? Does not reap it.
inline bool child_running(pid_t pid) {
  siginfo_t info{};
  info.si_pid = 0;
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return false;
  return info.si_pid == 0;
}

// SIGKILLs the child and reaps it.
inline ChildResult kill_child(pid_t pid) {
  ::kill(pid, SIGKILL);
  ChildResult r;
  r.exited = ::waitpid(pid, &r.status, 0) == pid;
  return r;
}

// A pipe with helpers for fixed-size records. Both ends are closed on destruction.
// A reboot: the segment of NAME goes (the journal stays), the channel is opened again with OPTIONS
// (rebuilt from the journal) and group G is drained, each message acked. Returns their texts.
inline std::set<std::string> texts_after_reboot(const std::string& name, const ChannelOptions& options,
                                                std::string_view group = "g") {
  ::unlink(segment_path(name).c_str());
  auto ch = Channel::open(name, options);
  Consumer c(ch, group);
  std::set<std::string> got;
  while (auto m = c.poll(std::chrono::milliseconds(200))) {
    got.insert(std::string(m->text()));
    if (c.ack(*m) != Status::Ok) ADD_FAILURE() << "ack after the reboot failed";
  }
  return got;
}

struct Pipe {
  int fds[2] = {-1, -1};
  Pipe() {
    if (::pipe(fds) != 0) ADD_FAILURE() << "pipe: " << std::strerror(errno);
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  int read_fd() const { return fds[0]; }
  int write_fd() const { return fds[1]; }
  void close_read() {
    if (fds[0] >= 0) ::close(fds[0]);
    fds[0] = -1;
  }
  void close_write() {
    if (fds[1] >= 0) ::close(fds[1]);
    fds[1] = -1;
  }
  // Writes all of [p, p+n); false on error.
  bool write_all(const void* p, std::size_t n) const {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fds[1], c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      c += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }
  template <class T>
  bool send(const T& v) const {
    return write_all(&v, sizeof v);
  }
  // Reads exactly n bytes, waiting at most until the deadline; false on EOF, error or deadline.
  bool read_all(void* p, std::size_t n, Clock::time_point deadline) const {
    char* c = static_cast<char*>(p);
    while (n > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return false;
      fd_set set;
      FD_ZERO(&set);
      FD_SET(fds[0], &set);
      timeval tv{static_cast<time_t>(left.count() / 1000),
                 static_cast<suseconds_t>((left.count() % 1000) * 1000)};
      const int s = ::select(fds[0] + 1, &set, nullptr, nullptr, &tv);
      if (s < 0 && errno == EINTR) continue;
      if (s <= 0) continue;  // timeout: loop re-checks the deadline
      const ssize_t r = ::read(fds[0], c, n);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      c += r;
      n -= static_cast<std::size_t>(r);
    }
    return true;
  }
  // Is there something to read (or EOF) right now?
  bool readable() const {
    fd_set set;
    FD_ZERO(&set);
    FD_SET(fds[0], &set);
    timeval tv{0, 0};
    return ::select(fds[0] + 1, &set, nullptr, nullptr, &tv) > 0;
  }
  template <class T>
  bool receive(T& v, std::chrono::milliseconds timeout) const {
    return read_all(&v, sizeof v, Clock::now() + timeout);
  }
};

// A start barrier for forked children: each child blocks in wait() until the parent calls
// release(), which closes the write end, so that every child wakes at the same instant.
class StartBarrier {
 public:
  // In a child: close our copy of the write end, then block until the parent releases.
  void wait() {
    pipe_.close_write();
    char c;
    while (::read(pipe_.read_fd(), &c, 1) < 0 && errno == EINTR) {
    }
  }
  // In the parent, after forking every child.
  void release() {
    pipe_.close_write();
    pipe_.close_read();
  }

 private:
  Pipe pipe_;
};

// The competing-consumer tests: consumers in forked children count here (MAP_SHARED) how often
// each of the sequences 1..N was acked, and how many of those acks were of a redelivery.
class AckTally {
 public:
  explicit AckTally(std::uint64_t n) : n_(n) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap of the ack tally");
    acks_ = static_cast<std::atomic<std::uint32_t>*>(p);
  }
  ~AckTally() { ::munmap(acks_, bytes()); }
  AckTally(const AckTally&) = delete;
  AckTally& operator=(const AckTally&) = delete;
  // In a child, after M's ack returned Ok (M's sequence is in 1..N: the caller checked).
  void acked(const Message& m) const noexcept {
    acks_[m.id().seq].fetch_add(1);
    if (m.deliveries() > 1) acks_[n_ + 1 + m.id().seq].fetch_add(1);
  }
  struct Totals {
    std::uint64_t missing = 0;  // sequences never acked
    std::uint64_t doubled = 0;  // sequences acked more than once
    std::uint64_t again = 0;    // acks of a message delivered more than once
  };
  Totals totals() const noexcept {
    Totals t;
    for (std::uint64_t s = 1; s <= n_; ++s) {
      t.missing += acks_[s].load() == 0;
      t.doubled += acks_[s].load() > 1;
      t.again += acks_[n_ + 1 + s].load();
    }
    return t;
  }

 private:
  std::size_t bytes() const noexcept { return 2 * (n_ + 1) * sizeof(std::uint32_t); }
  std::uint64_t n_;
  std::atomic<std::uint32_t>* acks_ = nullptr;
};

// Publishes sequences 1..N of PAYLOAD_OF(seq) from a producer "p" of CH, waiting up to 30 s for
// room each; at the first that is not Ok, a test failure naming it (and WHAT(), if given: the
// state that explains it) and false.
inline bool publish_sequences(Channel& ch, std::uint64_t n, const std::function<std::string(std::uint64_t)>& payload_of,
                              const std::function<std::string()>& what = {}) {
  Producer p(ch, "p");
  PublishOptions po;
  po.timeout = std::chrono::seconds(30);
  for (std::uint64_t i = 1; i <= n; ++i) {
    const Status st = p.publish(payload_of(i), po).status;
    if (st != Status::Ok) {
      ADD_FAILURE() << "publish " << i << ": " << to_string(st) << (what ? "; " + what() : std::string());
      return false;
    }
  }
  return true;
}

// A thread that kills the child VICTIM (SIGKILL) as soon as it writes to READY (a Pipe made
// before the fork; within 60 s): the victim dies while it holds what it polled. killed(), after
// join(), says whether it did.
class VictimKiller {
 public:
  VictimKiller(pid_t victim, const Pipe& ready)
      : thread_([this, victim, &ready] {
          int one = 0;
          if (ready.receive(one, std::chrono::seconds(60))) killed_ = kill_child(victim).killed_by(SIGKILL);
        }) {}
  ~VictimKiller() { join(); }
  VictimKiller(const VictimKiller&) = delete;
  VictimKiller& operator=(const VictimKiller&) = delete;
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  bool killed() const { return killed_; }

 private:
  bool killed_ = false;
  std::thread thread_;
};

// Polls one message, waiting up to `timeout` in slices (so that a Block consumer is not needed).
inline std::optional<Message> poll_for(Consumer& c, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    auto m = c.poll(std::chrono::milliseconds(10));
    if (m) return m;
    if (c.status() == Status::Closed || Clock::now() >= deadline) return std::nullopt;
  }
}

// The text of the Error that F throws, which must be device_or_resource_busy (an exclusive
// producer or consumer refused); "" when F throws nothing.
inline std::string busy_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), std::errc::device_or_resource_busy) << e.what();
    return e.what();
  }
  return "";
}

// FNV-1a, for payload checksums.
inline std::uint32_t checksum(std::span<const std::byte> bytes) {
  std::uint32_t h = 2166136261u;
  for (std::byte b : bytes) {
    h ^= static_cast<std::uint8_t>(b);
    h *= 16777619u;
  }
  return h;
}

// Deterministic filler: byte i of the payload of (producer, seq).
inline std::byte filler(std::uint64_t producer, std::uint64_t seq, std::size_t i) {
  std::uint64_t x = (producer + 1) * 0x9E3779B97F4A7C15ull ^ (seq * 0xBF58476D1CE4E5B9ull) ^ i;
  x ^= x >> 29;
  return static_cast<std::byte>(x & 0xff);
}

}  // namespace shmq::test

// iceoryx.cpp: iceoryx 2 (zero-copy publish / subscribe) as a peer, built when CMake finds
// iceoryx_posh (SHMQ_BENCH_ICEORYX); otherwise its rows say "not built" and why.
// RouDi, its broker, must run: the run starts iox-roudi (start; its output goes to a log file
// beside the JSON, or /dev/null) unless one already runs, and stops it at the end (stop). Each
// child registers its own runtime (unique name), makes its publisher and subscriber, and waits
// until both are connected before it says ready. Publisher: loan the message size, copy the
// message in, publish (WAIT_FOR_CONSUMER); subscriber: busy-polls take() (BLOCK_PRODUCER, so
// nothing is ever dropped), checks the message in the chunk, releases it.

#include "transport.hpp"

#if defined(SHMQ_BENCH_ICEORYX)
#include <fcntl.h>

#include <fstream>

#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/mepoo/chunk_header.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"
#endif

namespace pingpong {
namespace {

#if defined(SHMQ_BENCH_ICEORYX)
// RouDi's default memory pools (iceoryx 2.0) hold 200 chunks of 128 KiB: a 64 KiB message's
// subscriber queue must leave some to the publisher.
std::uint64_t iox_depth(std::size_t size) {
  return size + 64 <= 16 * 1024 ? iox::MAX_SUBSCRIBER_QUEUE_CAPACITY : std::uint64_t{128};
}

struct IoxEnds {
  iox::popo::UntypedPublisher pub;
  iox::popo::UntypedSubscriber sub;
  const void* held = nullptr;  // the chunk recv() returned, until release()
  std::size_t size;
  static iox::popo::PublisherOptions pub_options() {
    iox::popo::PublisherOptions o;
    o.historyCapacity = 0;
    o.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
    return o;
  }
  static iox::popo::SubscriberOptions sub_options(std::uint64_t depth) {
    iox::popo::SubscriberOptions o;
    o.queueCapacity = depth;
    o.historyRequest = 0;
    o.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
    return o;
  }
  static iox::capro::IdString_t id(const std::string& s) { return iox::capro::IdString_t(iox::cxx::TruncateToCapacity, s.c_str()); }
  // Publishes on topic OUT, subscribes to topic IN (either may be empty: not used).
  IoxEnds(const std::string& instance, const std::string& out, const std::string& in, std::uint64_t depth,
          std::size_t message_size)
      : pub({id("shmqpp"), id(instance), id(out.empty() ? "unused-out" : out)}, pub_options()),
        sub({id("shmqpp"), id(instance), id(in.empty() ? "unused-in" : in)}, sub_options(depth)),
        size(message_size) {}

  // Waits until our subscriber is subscribed and our publisher has its subscriber.
  void connect(bool need_pub, bool need_sub, double stall_s) {
    Waiter w(stall_s, "waiting for iceoryx to connect publisher and subscriber");
    while ((need_sub && sub.getSubscriptionState() != iox::SubscribeState::SUBSCRIBED) ||
           (need_pub && !pub.hasSubscribers())) {
      ::usleep(1000);
      w.check(0);
    }
  }
  void send(std::span<const std::byte> m, std::uint64_t seq) {
    auto loaned = pub.loan(static_cast<std::uint32_t>(m.size()), alignof(std::uint64_t));
    if (loaned.has_error())
      die("iceoryx loan of sequence %" PRIu64 " failed (AllocationError %d)", seq, static_cast<int>(loaned.get_error()));
    void* chunk = loaned.value();
    std::memcpy(chunk, m.data(), m.size());
    pub.publish(chunk);
  }
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) {
    w.reset();
    for (;;) {
      auto taken = sub.take();
      if (!taken.has_error()) {
        held = taken.value();
        const auto* header = iox::mepoo::ChunkHeader::fromUserPayload(held);
        return {static_cast<const std::byte*>(held), header->userPayloadSize()};
      }
      if (taken.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE)
        die("iceoryx take at sequence %" PRIu64 " failed (ChunkReceiveResult %d)", seq, static_cast<int>(taken.get_error()));
      w.spin(seq);
    }
  }
  void release() {
    sub.release(held);
    held = nullptr;
  }
};

void iox_init(const char* role) {
  // Its clients log at Debug level by default: keep the tables readable.
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn,
                                                           iox::log::LogLevelOutput::kHideLogLevel);
  const std::string name = std::string("shmqpp-") + role + "-" + std::to_string(::getpid());
  iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name.c_str()));
}

// A child that used iceoryx ends with exit(), not _exit(): the runtime's destructor (a static)
// deregisters the process from RouDi, which otherwise reports it "not responding" and, at its
// own shutdown, fails to kill it.
[[noreturn]] void iox_exit() {
  std::fflush(nullptr);
  std::exit(0);
}

// iox-roudi, started for the run (pid > 0) or found running (pid 0).
struct Roudi {
  pid_t pid = -1;
  std::string why;  // when it could not be had
};

bool roudi_running() {
  for (const auto& e : std::filesystem::directory_iterator("/proc", std::filesystem::directory_options::skip_permission_denied)) {
    std::ifstream comm(e.path() / "comm");
    std::string name;
    if (comm && std::getline(comm, name) && name == "iox-roudi") return true;
  }
  return false;
}

Roudi start_roudi(const std::string& log_path) {
  Roudi r;
  if (roudi_running()) {
    r.pid = 0;
    return r;
  }
  const char* candidates[] = {"/usr/bin/iox-roudi", "/usr/local/bin/iox-roudi"};
  const char* exe = nullptr;
  for (const char* c : candidates)
    if (::access(c, X_OK) == 0) exe = c;
  if (exe == nullptr) {
    r.why = "iox-roudi not found (Debian package iceoryx)";
    return r;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    r.why = std::string("fork: ") + std::strerror(errno);
    return r;
  }
  if (pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execl(exe, exe, static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Ready once its management segment exists; it may still need a moment for its IPC channel,
  // which initRuntime in the children waits for.
  const std::uint64_t t0 = mono_ns();
  while (mono_ns() - t0 < 10'000'000'000u) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      r.why = "iox-roudi exited at start (status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
              "); see " + log_path;
      return r;
    }
    if (::access("/dev/shm/iceoryx_mgmt", F_OK) == 0) {
      ::usleep(200'000);
      r.pid = pid;
      return r;
    }
    ::usleep(10'000);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  r.why = "iox-roudi did not come up within 10 s; see " + log_path;
  return r;
}

void stop_roudi(Roudi& r) {
  if (r.pid <= 0) return;
  ::kill(r.pid, SIGTERM);
  for (int i = 0; i < 500; ++i) {
    if (::waitpid(r.pid, nullptr, WNOHANG) == r.pid) {
      r.pid = -1;
      return;
    }
    ::usleep(10'000);
  }
  ::kill(r.pid, SIGKILL);
  ::waitpid(r.pid, nullptr, 0);
  r.pid = -1;
}

// Runs BODY in a child with an iceoryx runtime and the ends IoxEnds(instance, OUT, IN, DEPTH).
template <class Body>
void with_iox(const char* role, const std::string& inst, const std::string& out, const std::string& in,
              std::uint64_t depth, const Config& cfg, const Plan& p, Body body) {
  iox_init(role);
  {
    IoxEnds e(inst, out, in, depth, p.size);
    e.connect(!out.empty(), !in.empty(), cfg.stall_s);
    body(e);
  }
  iox_exit();
}

Roudi g_roudi;  // this process's: started by start, stopped by stop

void start(Session& s) {
  g_roudi = start_roudi(s.roudi_log);
  if (g_roudi.pid >= 0)
    s.notes.push_back(std::string("iceoryx 2.0: RouDi ") + (g_roudi.pid > 0 ? "started for this run" : "already running") +
                      " with its default memory pools; subscriber queue 1 (latency), up to 256 (throughput), "
                      "BLOCK_PRODUCER / WAIT_FOR_CONSUMER");
}

void stop(Session&) { stop_roudi(g_roudi); }

Row run(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  const Roudi& roudi = g_roudi;
  Row r = make_row("iceoryx", "iceoryx 2 (untyped pub/sub)", "spin (take)", Kind::Peer, p);
  if (roudi.pid < 0) {
    r.skipped = roudi.why;
    return r;
  }
  const std::uint64_t depth = iox_depth(p.size);
  r.wait += " (queue " + std::to_string(depth) + ")";
  const std::string inst = std::to_string(::getpid()) + "-" + std::to_string(p.size);
  r.latency = latency_case(
      cfg, p, label(r, "latency"),
      [&](PairControl& c, std::uint64_t* samples) {
        with_iox("pinger", inst, "ping", "pong", 1, cfg, p, [&](IoxEnds& e) { run_pinger(cfg, p, c, samples, e, e); });
      },
      [&](PairControl& c) {
        with_iox("ponger", inst, "pong", "ping", 1, cfg, p, [&](IoxEnds& e) { run_ponger(cfg, p, c, e, e); });
      });
  r.throughput = throughput_case(
      cfg, p, p.peer_warmup, label(r, "throughput"),
      [&](PairControl& c) {
        with_iox("producer", inst, "stream", "", depth, cfg, p,
                 [&](IoxEnds& e) { run_producer(cfg, p, p.peer_warmup, c, e); });
      },
      [&](PairControl& c) {
        with_iox("consumer", inst, "", "stream", depth, cfg, p,
                 [&](IoxEnds& e) { run_consumer(cfg, p, p.peer_warmup, c, e); });
      });
  return r;
}

const Register reg{{.key = "iceoryx", .order = 44, .kind = Kind::Peer, .run = run, .start = start, .stop = stop}};
#else
Row run(Session&, const Plan& p) {
  Row r = make_row("iceoryx", "iceoryx", "-", Kind::Peer, p);
  r.skipped = "not built: libiceoryx-posh-dev was not found at configure time (Debian: apt-get install "
              "libiceoryx-posh-dev iceoryx; then re-run cmake)";
  return r;
}

const Register reg{{.key = "iceoryx", .order = 44, .kind = Kind::Peer, .run = run}};
#endif

}  // namespace
}  // namespace pingpong

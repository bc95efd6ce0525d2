// bridge_bench: the figures of the NATS bridge (bridge/README.md), measured in one run against a
// nats-server -js it starts itself on a free loopback port (store in a temporary directory):
//   1. plain JetStream async publishing with libnats from one process (MaxPending = the bridge's
//      window), the floor the bridge is compared with;
//   2. bridge out (run_out in this process) forwarding the same number of messages of the same size
//      from a shmq channel, acking each in shmq after its PubAck; reported as msgs/s and as a ratio
//      of (1) (goal >= 0.8);
//   3. end-to-end latency shmq -> bridge out -> JetStream -> bridge in -> shmq, one message at a time
//      (p50, p99, max), both bridges in this process, Memory channels.
// Usage: bridge_bench [--messages N] [--latency-samples N] [--repeat R]
// Prints one line per figure. File storage: the stream is a file store (nats-server syncs it on its
// own schedule), as a user's would be.
#include <arpa/inet.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "bridge/bridge.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

struct Server {
  pid_t pid = -1;
  int port = 0;
  std::filesystem::path dir;
  Server() {
    port = free_port();
    dir = std::filesystem::temp_directory_path() / ("shmq-bridge-bench-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string p = std::to_string(port), sd = (dir / "store").string(), log = (dir / "server.log").string();
    pid = ::fork();
    if (pid == 0) {
      std::freopen(log.c_str(), "w", stdout);
      std::freopen(log.c_str(), "w", stderr);
      ::execl("/usr/sbin/nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", p.c_str(), "-sd", sd.c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const auto deadline = Clock::now() + 15s;
    while (!accepts(port) && Clock::now() < deadline) std::this_thread::sleep_for(20ms);
    if (!accepts(port)) throw std::runtime_error("nats-server did not start (see " + log + ")");
  }
  ~Server() {
    ::kill(pid, SIGTERM);
    for (int i = 0; i < 500 && ::waitpid(pid, nullptr, WNOHANG) == 0; ++i) std::this_thread::sleep_for(10ms);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port); }
};

struct Js {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  explicit Js(const std::string& url, int max_pending = 256, jsPubAckErrHandler on_error = nullptr) {
    if (natsConnection_ConnectTo(&nc, url.c_str()) != NATS_OK) throw std::runtime_error("connect " + url);
    jsOptions o;
    jsOptions_Init(&o);
    o.PublishAsync.MaxPending = max_pending;
    o.PublishAsync.ErrHandler = on_error;
    natsConnection_JetStream(&js, nc, &o);
  }
  ~Js() {
    jsCtx_Destroy(js);
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
  }
  void add_stream(const char* name, const char* subject) {
    jsStreamConfig c;
    jsStreamConfig_Init(&c);
    c.Name = name;
    const char* subjects[] = {subject};
    c.Subjects = subjects;
    c.SubjectsLen = 1;
    c.Storage = js_FileStorage;
    c.Duplicates = 120'000'000'000;
    jsStreamInfo* si = nullptr;
    if (js_AddStream(&si, js, &c, nullptr, nullptr) != NATS_OK) throw std::runtime_error(std::string("add stream ") + name);
    jsStreamInfo_Destroy(si);
  }
};

// (1) plain libnats async publish, with a Nats-Msg-Id on each (as the bridge sends), 256 pending.
std::atomic<std::uint64_t> failed{0};
void count_failure(jsCtx*, jsPubAckErr*, void*) { failed.fetch_add(1); }

double plain_rate(const std::string& url, const char* subject, std::uint64_t n, std::size_t size) {
  failed = 0;
  Js j(url, 256, &count_failure);
  std::string payload(size, 'x');
  const auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    jsPubOptions po;
    jsPubOptions_Init(&po);
    const std::string id = std::string(subject) + ":" + std::to_string(i);  // unique across runs
    po.MsgId = id.c_str();
    if (js_PublishAsync(j.js, subject, payload.data(), static_cast<int>(size), &po) != NATS_OK) {
      --i;  // stalled past StallWait: again
      continue;
    }
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 120000;
  if (js_PublishAsyncComplete(j.js, &po) != NATS_OK) throw std::runtime_error("plain: PubAcks did not all come back");
  const double rate = static_cast<double>(n) / std::chrono::duration<double>(Clock::now() - t0).count();
  if (failed.load() != 0) throw std::runtime_error("plain: " + std::to_string(failed.load()) + " publishes failed");
  return rate;
}

shmq::ChannelOptions memory_channel(std::size_t ring) {
  shmq::ChannelOptions o;
  o.durability = shmq::Durability::Memory;
  o.ring_bytes = ring;
  o.max_message_bytes = 64 << 10;
  return o;
}

// (2) bridge out: N messages already in a channel (so that the producer is not what is measured).
double bridge_rate(const std::string& url, const char* stream, const char* subject, std::uint64_t n, std::size_t size) {
  std::string name = "bridge-bench-" + std::to_string(::getpid()) + "-" + std::to_string(size) + "-" + subject;
  std::replace(name.begin(), name.end(), '.', '-');
  std::size_t ring = 1 << 20;
  while (ring < n * (size + 64) * 2) ring <<= 1;
  {
    shmq::Channel ch = shmq::Channel::open(name, memory_channel(ring));
    ch.ensure_group("to-nats");
    shmq::Producer p(ch, "bench");
    std::string payload(size, 'y');
    for (std::uint64_t i = 0; i < n; ++i)
      if (p.publish(payload).status != shmq::Status::Ok) throw std::runtime_error("publish into the channel");
    shmq::bridge::OutOptions o;
    o.channel = name;
    o.group = "to-nats";
    o.server = url;
    o.stream = stream;
    o.subject = subject;
    o.max_messages = n;
    o.quiet = true;
    std::atomic<bool> stop{false};
    const auto t0 = Clock::now();
    const shmq::bridge::Summary s = shmq::bridge::run_out(o, stop);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s.forwarded != n) throw std::runtime_error("bridge forwarded " + std::to_string(s.forwarded));
    if (s.retries != 0 || s.duplicates != 0)
      std::printf("  (bridge out at %zu B: %llu publishes sent again, %llu PubAcks said duplicate)\n", size,
                  static_cast<unsigned long long>(s.retries), static_cast<unsigned long long>(s.duplicates));
    shmq::Channel::remove(name);
    return static_cast<double>(n) / secs;
  }
}

// (3) latency: A -> out -> stream LAT -> in -> B, one message at a time.
void latency(const std::string& url, std::uint64_t samples) {
  const std::string a = "bridge-bench-lat-a-" + std::to_string(::getpid());
  const std::string b = "bridge-bench-lat-b-" + std::to_string(::getpid());
  shmq::Channel cha = shmq::Channel::open(a, memory_channel(4 << 20));
  shmq::Channel chb = shmq::Channel::open(b, memory_channel(4 << 20));
  cha.ensure_group("to-nats");
  chb.ensure_group("app");
  std::atomic<bool> stop{false};
  shmq::bridge::OutOptions oo;
  oo.channel = a;
  oo.group = "to-nats";
  oo.server = url;
  oo.stream = "LAT";
  oo.subject = "lat.x";
  oo.quiet = true;
  shmq::bridge::InOptions io;
  io.channel = b;
  io.server = url;
  io.stream = "LAT";
  io.consumer = "lat-in";
  io.quiet = true;
  std::thread out([&] { shmq::bridge::run_out(oo, stop); });
  std::thread in([&] { shmq::bridge::run_in(io, stop); });
  shmq::Producer p(cha, "lat");
  shmq::ConsumerOptions co;
  co.wait = shmq::Wait::Spin;
  shmq::Consumer c(chb, "app", co);
  std::vector<double> us;
  for (std::uint64_t i = 0; i < samples + 100; ++i) {
    const auto t0 = Clock::now();
    const std::int64_t stamp = t0.time_since_epoch().count();
    p.publish(std::string_view(reinterpret_cast<const char*>(&stamp), sizeof stamp));
    std::optional<shmq::Message> m;
    const auto deadline = t0 + 10s;
    while (!m && Clock::now() < deadline) m = c.poll(10ms);
    if (!m) throw std::runtime_error("latency: a message did not come back within 10 s");
    const auto t1 = Clock::now();
    c.ack(*m);
    if (i >= 100) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());  // 100 warm-up
  }
  stop = true;
  out.join();
  in.join();
  std::sort(us.begin(), us.end());
  std::printf("latency shmq -> bridge out -> JetStream (file store) -> bridge in -> shmq, 8 B, one at a time, %zu samples: "
              "p50 %.0f us, p99 %.0f us, max %.0f us\n",
              us.size(), us[us.size() / 2], us[us.size() * 99 / 100], us.back());
  shmq::Channel::remove(a);
  shmq::Channel::remove(b);
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t n = 100'000, samples = 2000, repeat = 3;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--messages") == 0) n = std::stoull(argv[++i]);
    else if (std::strcmp(argv[i], "--latency-samples") == 0) samples = std::stoull(argv[++i]);
    else if (std::strcmp(argv[i], "--repeat") == 0) repeat = std::max<std::uint64_t>(1, std::stoull(argv[++i]));
  }
  try {
    Server server;
    {
      Js j(server.url());
      j.add_stream("PLAIN", "plain.>");
      j.add_stream("OUT", "out.>");
      j.add_stream("LAT", "lat.>");
    }
    std::printf("bridge_bench: nats-server -js (file store) on %s, %llu messages a run, one host (loopback)\n",
                server.url().c_str(), static_cast<unsigned long long>(n));
    // Each figure is the best of REPEAT runs, plain and bridge alternating, so that a burst of
    // load from elsewhere on the machine does not decide the ratio.
    int run = 0;
    for (std::size_t size : {std::size_t(64), std::size_t(1024)}) {
      double plain = 0, bridged = 0;
      for (std::uint64_t r = 0; r < repeat; ++r, ++run) {
        const std::string tag = std::to_string(run);
        plain = std::max(plain, plain_rate(server.url(), ("plain." + tag).c_str(), n, size));
        bridged = std::max(bridged, bridge_rate(server.url(), "OUT", ("out." + tag).c_str(), n, size));
      }
      std::printf("%5zu B: plain libnats js_PublishAsync %9.0f msgs/s | bridge out %9.0f msgs/s | ratio %.2f (goal >= 0.8), best of %llu\n",
                  size, plain, bridged, bridged / plain, static_cast<unsigned long long>(repeat));
    }
    latency(server.url(), samples);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bridge_bench: %s\n", e.what());
    nats_Close();
    return 1;
  }
  nats_Close();
  return 0;
}

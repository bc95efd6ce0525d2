// shmq demo: a live pipeline across real processes (fork), checked at every step.
//
//   1. create channel demo.orders-PID (Memory, 1 MiB ring: it wraps, producers feel back-pressure)
//   2. two producer processes publish N orders each (key, payload with producer, seq, checksum)
//   3. fan-out: groups billing and audit (one consumer process each) each get every order, in
//      per-producer order, checksums intact
//   4. competing consumers: three processes share group workers; each order reaches exactly one
//   5. a consumer of workers takes a few orders without acking and is SIGKILLed; the survivors
//      must get those orders again, with deliveries() > 1
//   6. restart recovered from the journal: a durable (Async) channel with its journal in a temporary
//      directory; a producer process publishes M orders and exits; a consumer process acks the
//      first A and holds the next one, and is SIGKILLed; the last process (this one) closes the
//      channel; the segment is removed as a reboot would (Channel::remove without the journal
//      directory); Channel::open rebuilds it from the journal. Checked: exactly the unacked orders
//      come back (the held one with deliveries 2, the others never delivered before), none of the
//      acked ones; the producer's sequence goes on after M, and a retry of seq M is a Duplicate.
//   7. summary table
//
// Steps 2-4 run at once (the ring is far smaller than what goes through it). Children report what
// they received through a result file each (one Received record per message, in arrival order);
// the parent checks. Every child has an alarm() and the parent kills what outlives its deadline,
// so the demo cannot hang; the channel is removed at the end, also on failure.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <shmq/shmq.hpp>
#include <string>
#include <vector>

#include "tools/commands.hpp"
#include "tools/output.hpp"

namespace shmq::tool {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kProducers = 2;
constexpr int kWorkers = 3;
constexpr std::size_t kRingBytes = 1 << 20;
constexpr std::size_t kMaxMessageBytes = 4096;
constexpr std::uint32_t kRedeliveryMessages = 200;  // step 5
constexpr std::uint32_t kVictimHolds = 8;
constexpr std::uint32_t kRedeliveryProducer = kProducers;  // producer index in step 5's payloads
const char* const kFanOutGroups[] = {"billing", "audit"};
const char* const kWorkersGroup = "workers";

// Deadlines. Steps 2-4: consumers stop looking after kPipelineGiveUp, children die at their alarm,
// the parent kills what is left at kPipelineDeadline. Step 5 likewise, counted from the kill.
constexpr auto kPipelineGiveUp = 22s;
constexpr unsigned kPipelineAlarmS = 26;
constexpr auto kPipelineDeadline = 28s;
constexpr auto kRedeliveryGiveUp = 5s;
constexpr unsigned kRedeliveryAlarmS = 9;
constexpr auto kRedeliveryDeadline = 10s;
constexpr int kExitGaveUp = 3;  // a consumer child that reached its give-up time
// Step 6.
constexpr std::uint32_t kRestartMessages = 1000;
constexpr std::uint32_t kRestartAcked = 600;                  // then one held, the rest never delivered
constexpr std::uint32_t kRestartProducer = kProducers + 1;    // producer index in step 6's payloads
constexpr unsigned kRestartAlarmS = 15;
constexpr auto kRestartDeadline = 12s;
const char* const kRestartGroup = "shipping";

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// ---- the orders --------------------------------------------------------------------------------

std::uint32_t fnv1a(std::string_view s) {
  std::uint32_t h = 2166136261u;
  for (char c : s) {
    h ^= static_cast<std::uint8_t>(c);
    h *= 16777619u;
  }
  return h;
}

std::string order_key(std::uint32_t producer, std::uint32_t seq) {
  return "order-" + std::to_string(producer) + "-" + std::to_string(seq);
}

// "order p=1 seq=42 amount=123.45 sum=1a2b3c4d": sum is FNV-1a of the text before " sum=".
std::string order_payload(std::uint32_t producer, std::uint32_t seq) {
  const std::uint32_t cents = (seq * 7919u + producer * 104729u) % 100000u;
  char text[96];
  const int n = std::snprintf(text, sizeof text, "order p=%u seq=%u amount=%u.%02u", producer, seq, cents / 100, cents % 100);
  char sum[16];
  std::snprintf(sum, sizeof sum, " sum=%08x", fnv1a(std::string_view(text, static_cast<std::size_t>(n))));
  return std::string(text, static_cast<std::size_t>(n)) + sum;
}

// What a consumer saw of one message; its result file is an array of these, in arrival order.
struct Received {
  std::uint32_t producer;    // from the payload; kUnreadable when it did not parse
  std::uint32_t seq;
  std::uint32_t deliveries;
  std::uint32_t problems;    // Problem bits
};
constexpr std::uint32_t kUnreadable = ~0u;
enum Problem : std::uint32_t { kBadChecksum = 1, kBadKey = 2, kBadInnerId = 4, kAckFailed = 8 };

Received inspect(const Message& m) {
  Received r{kUnreadable, 0, m.deliveries(), 0};
  const std::string_view text = m.text();
  const std::size_t cut = text.rfind(" sum=");
  unsigned p = 0, seq = 0, sum = 0;
  // A copy with a terminating NUL for sscanf (the payload is a view into the ring).
  const std::string copy(text.substr(0, std::min<std::size_t>(text.size(), 128)));
  if (cut == std::string_view::npos || std::sscanf(copy.c_str(), "order p=%u seq=%u", &p, &seq) != 2 ||
      std::sscanf(copy.c_str() + std::min(cut, copy.size()), " sum=%x", &sum) != 1) {
    r.problems |= kBadChecksum;
    return r;
  }
  r.producer = p;
  r.seq = seq;
  if (fnv1a(text.substr(0, cut)) != sum) r.problems |= kBadChecksum;
  if (m.key() != order_key(p, seq)) r.problems |= kBadKey;
  if (m.id().seq != seq) r.problems |= kBadInnerId;  // each demo producer is new: inner seq = order seq
  return r;
}

std::vector<Received> read_results(const std::filesystem::path& path) {
  std::vector<Received> out;
  if (std::FILE* f = std::fopen(path.c_str(), "rb")) {
    Received r;
    while (std::fread(&r, sizeof r, 1, f) == 1) out.push_back(r);
    std::fclose(f);
  }
  return out;
}

// ---- child processes ---------------------------------------------------------------------------

class Children {
 public:
  struct Child {
    std::string name;
    pid_t pid = 0;
    bool done = false;
    int status = 0;             // waitpid status, when done
    bool killed_late = false;   // outlived its deadline: killed by the parent
    bool interrupted = false;   // killed by the parent because of Ctrl-C/SIGTERM
    Clock::time_point ended{};
  };

  ~Children() { kill_all(); }

  // Forks a child that runs FN and exits with its result; SIGALRM ends it after ALARM_S seconds.
  pid_t spawn(const std::string& name, unsigned alarm_s, const std::function<int()>& fn) {
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = ::fork();
    if (pid < 0) throw Error(std::error_code(errno, std::generic_category()), "fork of " + name + " failed");
    if (pid == 0) {
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::alarm(alarm_s);
      int rc = 1;
      try {
        rc = fn();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "    %s (pid %d): %s\n", name.c_str(), ::getpid(), e.what());
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(rc);  // no destructors: the parent's objects were copied into this process too
    }
    children_.push_back(Child{name, pid});
    return pid;
  }

  // Waits for PIDS until DEADLINE (or Ctrl-C); kills and reaps those still running. True when all
  // exited by themselves.
  bool wait(const std::vector<pid_t>& pids, Clock::time_point deadline) {
    for (;;) {
      bool all_done = true;
      for (pid_t pid : pids) {
        Child& c = get(pid);
        if (c.done) continue;
        int status = 0;
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD)) {
          c.done = true;
          c.status = status;
          c.ended = Clock::now();
        } else {
          all_done = false;
        }
      }
      if (all_done) return true;
      if (Clock::now() >= deadline || stop_requested()) break;
      ::usleep(2000);
    }
    for (pid_t pid : pids) {
      Child& c = get(pid);
      if (c.done) continue;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &c.status, 0);
      c.done = true;
      (stop_requested() ? c.interrupted : c.killed_late) = true;
      c.ended = Clock::now();
    }
    return false;
  }

  // Kills PID now and reaps it (the demo's deliberate kill).
  void kill_now(pid_t pid) {
    Child& c = get(pid);
    if (c.done) return;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &c.status, 0);
    c.done = true;
    c.ended = Clock::now();
  }

  void kill_all() {
    for (Child& c : children_)
      if (!c.done) kill_now(c.pid);
  }

  Child& get(pid_t pid) {
    for (Child& c : children_)
      if (c.pid == pid) return c;
    throw std::logic_error("no child " + std::to_string(pid));
  }

  bool exited_ok(pid_t pid) {
    const Child& c = get(pid);
    return c.done && !c.killed_late && !c.interrupted && WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0;
  }

  // "exit 0", "exit 1", "gave up", "killed by SIGALRM (its deadline)", "killed: outlived its deadline".
  std::string outcome(pid_t pid) {
    const Child& c = get(pid);
    if (!c.done) return "still running";
    if (c.killed_late) return "killed: outlived its deadline";
    if (c.interrupted || (WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGINT)) return "stopped by Ctrl-C";
    if (WIFEXITED(c.status)) {
      if (WEXITSTATUS(c.status) == kExitGaveUp) return "gave up at its deadline";
      return "exit " + std::to_string(WEXITSTATUS(c.status));
    }
    if (WIFSIGNALED(c.status)) {
      const int sig = WTERMSIG(c.status);
      return std::string("killed by ") + (sig == SIGALRM ? "SIGALRM (its deadline)" : sigabbrev_np(sig) ? sigabbrev_np(sig) : "a signal");
    }
    return "unknown end";
  }

 private:
  std::vector<Child> children_;
};

// ---- what the children do ----------------------------------------------------------------------

struct ProducerReport {
  std::uint64_t published = 0;
  double seconds = 0;
  std::uint64_t ring_full = 0;  // publishes that found the ring full and waited (back-pressure)
};

// Publishes COUNT orders as producer INDEX; writes a ProducerReport to RESULT.
int run_producer(const std::string& channel, std::uint32_t index, std::uint32_t count, const std::filesystem::path& result) {
  Channel ch = Channel::attach(channel);
  Producer producer(ch, "demo-producer-" + std::to_string(index));
  ProducerReport report;
  const auto t0 = Clock::now();
  for (std::uint32_t seq = 1; seq <= count; ++seq) {
    const std::string key = order_key(index, seq);
    const std::string payload = order_payload(index, seq);
    PublishOptions o;
    o.key = key;
    o.wait = Wait::Block;
    o.timeout = 0ns;  // first without waiting, to count how often the ring is full
    Published p = producer.publish(payload, o);
    if (p.status == Status::WouldBlock) ++report.ring_full;
    o.timeout = 1s;
    while (p.status == Status::WouldBlock) p = producer.publish(payload, o);  // alarm() bounds this
    if (p.status != Status::Ok) {
      std::fprintf(stderr, "    producer %u: publish of seq %u: %s\n", index, seq, to_string(p.status));
      return 1;
    }
    ++report.published;
  }
  report.seconds = seconds_between(t0, Clock::now());
  std::FILE* f = std::fopen(result.c_str(), "wb");
  if (!f || std::fwrite(&report, sizeof report, 1, f) != 1 || std::fclose(f) != 0) return 1;
  return 0;
}

struct ConsumeJob {
  std::string channel;
  std::string group;
  std::filesystem::path result;
  enum class Until { Count, Drained } until = Until::Count;
  std::uint64_t expect = 0;         // Count: messages to receive; Drained: messages published in all
  Clock::duration give_up{};        // stop looking after this long (exit kExitGaveUp)
  std::uint32_t hold = 0;           // the victim: take this many, never ack, then wait to be killed
  int ready_fd = -1;                // the victim: written to once the held messages are on file
};

// Nothing left for GROUP: everything was published, the group's cursor is at the end and nothing
// is held by any of its consumers (a dead one included, until it is reaped).
bool drained(const Channel& ch, const std::string& group, std::uint64_t published_in_all) {
  const ChannelStats s = ch.stats();
  std::uint64_t published = 0;
  for (const ProducerStats& p : s.producers) published += p.published;
  if (published < published_in_all) return false;
  for (const GroupStats& g : s.groups)
    if (g.name == group) return g.lag_messages == 0 && g.in_flight == 0;
  return false;
}

int run_consumer(const ConsumeJob& job) {
  Channel ch = Channel::attach(job.channel);
  ConsumerOptions o;
  o.start = Start::Earliest;
  o.wait = Wait::Block;
  Consumer consumer(ch, job.group, o);
  std::FILE* out = std::fopen(job.result.c_str(), "wb");
  if (!out) throw Error(std::error_code(errno, std::generic_category()), "cannot write " + job.result.string());
  const auto give_up = Clock::now() + job.give_up;
  auto grace_end = Clock::time_point::max();  // Count: after the last expected message, look for extras
  std::uint64_t got = 0;
  int rc = 0;
  for (;;) {
    if (Clock::now() >= give_up) {
      rc = kExitGaveUp;
      break;
    }
    std::optional<Message> m = consumer.poll(100ms);
    if (m) {
      Received r = inspect(*m);
      if (job.hold) {  // the victim
        std::fwrite(&r, sizeof r, 1, out);
        if (++got == job.hold) {
          std::fclose(out);
          const char ready = 'r';
          if (::write(job.ready_fd, &ready, 1) != 1) return 1;
          for (;;) ::pause();  // held, never acked, until SIGKILL (or the alarm)
        }
        continue;
      }
      if (consumer.ack(*m) != Status::Ok) r.problems |= kAckFailed;
      std::fwrite(&r, sizeof r, 1, out);
      if (++got == job.expect && job.until == ConsumeJob::Until::Count) grace_end = Clock::now() + 100ms;
      continue;
    }
    if (consumer.status() == Status::Closed) {
      std::fprintf(stderr, "    %s consumer: the group was removed\n", job.group.c_str());
      rc = 1;
      break;
    }
    if (job.until == ConsumeJob::Until::Count && got >= job.expect && Clock::now() >= grace_end) break;
    if (job.until == ConsumeJob::Until::Drained && drained(ch, job.group, job.expect)) break;
  }
  if (std::fclose(out) != 0) return 1;
  return rc;
}

// A one-shot signal between the parent and a forked child, over a pipe. The child blocks in
// wait() until the parent calls open() (true) or closes its end (false, also when it dies).
// Reversed (child_writes), the child writes one byte and the parent waits for it (wait_ready).
class Gate {
 public:
  Gate() {
    if (::pipe(fds_) != 0) throw Error(std::error_code(errno, std::generic_category()), "pipe");
  }
  ~Gate() {
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
  }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;

  // In the child.
  bool wait() {
    ::close(fds_[1]);
    char c = 0;
    ssize_t n;
    while ((n = ::read(fds_[0], &c, 1)) < 0 && errno == EINTR) {
    }
    return n == 1;
  }
  int write_end() const { return fds_[1]; }
  // In the parent, after the fork.
  void parent_side() { close_end(0); }
  void child_writes() { close_end(1); }
  void open() {
    const char c = 'g';
    if (::write(fds_[1], &c, 1) != 1) throw Error(std::error_code(errno, std::generic_category()), "pipe write");
  }
  bool wait_ready(int timeout_ms) {
    pollfd pfd{fds_[0], POLLIN, 0};
    char c = 0;
    return ::poll(&pfd, 1, timeout_ms) == 1 && ::read(fds_[0], &c, 1) == 1;
  }

 private:
  void close_end(int i) {
    ::close(fds_[i]);
    fds_[i] = -1;
  }
  int fds_[2] = {-1, -1};
};

// Step 6's consumer: acks the first ACKS orders, takes one more without acking, writes what it
// received to RESULT, tells READY_FD, and waits to be killed.
int run_restart_consumer(const std::string& channel, std::uint32_t acks, const std::filesystem::path& result, int ready_fd) {
  Channel ch = Channel::attach(channel);
  Consumer consumer(ch, kRestartGroup);
  std::FILE* out = std::fopen(result.c_str(), "wb");
  if (!out) return 1;
  for (std::uint32_t got = 0; got <= acks;) {
    std::optional<Message> m = consumer.poll(1s);  // alarm() bounds the whole
    if (!m) continue;
    Received r = inspect(*m);
    if (got < acks && consumer.ack(*m) != Status::Ok) r.problems |= kAckFailed;
    std::fwrite(&r, sizeof r, 1, out);
    ++got;
  }
  if (std::fclose(out) != 0) return 1;
  const char ready = 'r';
  if (::write(ready_fd, &ready, 1) != 1) return 1;
  for (;;) ::pause();  // holds the last one until SIGKILL
}

// ---- the steps ---------------------------------------------------------------------------------

struct Step {
  explicit Step(std::string n) : name(std::move(n)) {}
  std::string name;
  enum Result { NotRun, Passed, Failed, Skipped } result = NotRun;
  std::string figures;
};

const char* result_name(Step::Result r) {
  switch (r) {
    case Step::NotRun: return "not run";
    case Step::Passed: return "ok";
    case Step::Failed: return "FAILED";
    case Step::Skipped: return "skipped";
  }
  return "?";
}

// "3, 7, 9 and 12 more"
std::string list_some(const std::vector<std::string>& items, std::size_t show = 8) {
  std::string out;
  for (std::size_t i = 0; i < items.size() && i < show; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > show) out += " and " + std::to_string(items.size() - show) + " more";
  return out;
}

std::string problems_text(const std::vector<Received>& rs) {
  std::size_t checksum = 0, key = 0, id = 0, ack = 0;
  for (const Received& r : rs) {
    checksum += (r.problems & kBadChecksum) != 0;
    key += (r.problems & kBadKey) != 0;
    id += (r.problems & kBadInnerId) != 0;
    ack += (r.problems & kAckFailed) != 0;
  }
  std::vector<std::string> p;
  if (checksum) p.push_back(std::to_string(checksum) + " bad checksums");
  if (key) p.push_back(std::to_string(key) + " wrong keys");
  if (id) p.push_back(std::to_string(id) + " inner ids that do not match the payload");
  if (ack) p.push_back(std::to_string(ack) + " failed acks");
  return list_some(p);
}

// Checks a fan-out group's results: every order of every producer, each once, in per-producer order.
// Returns what is wrong, or empty.
std::string check_fan_out(const std::vector<Received>& rs, std::uint32_t per_producer) {
  std::vector<std::string> wrong;
  std::uint32_t next[kProducers];
  std::fill(std::begin(next), std::end(next), 1u);
  std::size_t out_of_order = 0, foreign = 0;
  std::string first_disorder;
  for (const Received& r : rs) {
    if (r.producer >= static_cast<std::uint32_t>(kProducers)) {
      ++foreign;
      continue;
    }
    if (r.seq != next[r.producer] && out_of_order++ == 0)
      first_disorder = "producer " + std::to_string(r.producer) + " seq " + std::to_string(r.seq) + " came when " +
                       std::to_string(next[r.producer]) + " was due";
    next[r.producer] = r.seq + 1;
  }
  if (rs.size() != std::size_t{per_producer} * kProducers)
    wrong.push_back(std::to_string(rs.size()) + " messages, " + std::to_string(std::size_t{per_producer} * kProducers) + " expected");
  if (out_of_order) wrong.push_back(std::to_string(out_of_order) + " out of order (first: " + first_disorder + ")");
  if (foreign) wrong.push_back(std::to_string(foreign) + " messages from no demo producer");
  if (const std::string p = problems_text(rs); !p.empty()) wrong.push_back(p);
  return list_some(wrong);
}

class Demo {
 public:
  explicit Demo(const DemoArgs& a)
      : n_(a.messages_per_producer), channel_("demo.orders-" + std::to_string(::getpid())) {
    for (const char* name : {"1 create channel", "2 publish (2 producers)", "3 fan-out (billing, audit)",
                             "4 competing consumers (3)", "5 dead consumer redelivered", "6 restart from the journal"})
      steps_.emplace_back(name);
  }

  int run() {
    install_stop_handlers();
    std::printf("shmq demo: %d producers x %u orders through channel %s, %s ring\n", kProducers, n_, channel_.c_str(),
                human_bytes(kRingBytes).c_str());
    char tmpl[] = "/tmp/shmq-demo-XXXXXX";
    if (!::mkdtemp(tmpl)) throw Error(std::error_code(errno, std::generic_category()), "cannot create a directory in /tmp");
    dir_ = tmpl;
    try {
      if (create()) {
        pipeline();
        if (!stop_requested()) redelivery();
      }
    } catch (const std::exception& e) {
      std::printf("    stopped: %s\n", e.what());
    }
    children_.kill_all();
    try {
      if (!stop_requested()) restart();
    } catch (const std::exception& e) {
      std::printf("[6] FAILED: %s\n", error_text(e).c_str());
      fail(6, error_text(e));
    }
    children_.kill_all();
    cleanup();
    return summary();
  }

 private:
  Step& step(int n) { return steps_[static_cast<std::size_t>(n - 1)]; }
  void pass(int n, std::string figures) {
    step(n).result = Step::Passed;
    step(n).figures = std::move(figures);
  }
  void fail(int n, std::string figures) {
    step(n).result = Step::Failed;
    step(n).figures = std::move(figures);
  }
  std::filesystem::path file(const std::string& name) const { return dir_ / name; }
  ConsumeJob job(const std::string& group, const std::string& result, ConsumeJob::Until until, std::uint64_t expect,
                 Clock::duration give_up) const {
    ConsumeJob j;
    j.channel = channel_;
    j.group = group;
    j.result = file(result);
    j.until = until;
    j.expect = expect;
    j.give_up = give_up;
    return j;
  }

  // Step 1.
  bool create() {
    ChannelOptions o;
    o.durability = Durability::Memory;
    o.ring_bytes = kRingBytes;
    o.max_message_bytes = kMaxMessageBytes;
    try {
      ch_ = Channel::open(channel_, o);
      for (const char* g : kFanOutGroups) ch_->ensure_group(g, Start::Earliest);
      ch_->ensure_group(kWorkersGroup, Start::Earliest);
    } catch (const std::exception& e) {
      std::printf("[1] cannot create the channel: %s\n", e.what());
      fail(1, e.what());
      return false;
    }
    std::printf("[1] created %s (Durability::Memory, ring %s); groups billing, audit, workers created before publishing\n",
                channel_.c_str(), human_bytes(kRingBytes).c_str());
    pass(1, "Memory, ring " + human_bytes(kRingBytes) + ", 3 groups");
    return true;
  }

  // Steps 2, 3 and 4, all running at once.
  void pipeline() {
    const std::uint64_t total = std::uint64_t{n_} * kProducers;
    std::vector<pid_t> consumers, workers, producers;
    for (const char* g : kFanOutGroups) {
      const ConsumeJob j = job(g, g, ConsumeJob::Until::Count, total, kPipelineGiveUp);
      consumers.push_back(children_.spawn(g, kPipelineAlarmS, [j] { return run_consumer(j); }));
    }
    for (int w = 1; w <= kWorkers; ++w) {
      const std::string name = "w" + std::to_string(w);
      const ConsumeJob j = job(kWorkersGroup, name, ConsumeJob::Until::Drained, total, kPipelineGiveUp);
      workers.push_back(children_.spawn(name, kPipelineAlarmS, [j] { return run_consumer(j); }));
    }
    const auto t0 = Clock::now();
    for (std::uint32_t p = 0; p < kProducers; ++p) {
      const std::string name = "producer-" + std::to_string(p);
      producers.push_back(children_.spawn(name, kPipelineAlarmS, [this, p, name] {
        return run_producer(channel_, p, n_, file(name));
      }));
    }
    std::printf("[2] forked %d producers, consumers billing and audit, workers w1 w2 w3 (pids %d..%d); publishing\n",
                kProducers, consumers.front(), producers.back());
    const auto deadline = t0 + kPipelineDeadline;

    // Step 2: the producers.
    children_.wait(producers, deadline);
    Clock::time_point published_at = t0;
    std::uint64_t published = 0, ring_full = 0;
    std::vector<std::string> producer_problems;
    for (std::uint32_t p = 0; p < kProducers; ++p) {
      const pid_t pid = producers[p];
      published_at = std::max(published_at, children_.get(pid).ended);
      ProducerReport r;
      std::FILE* f = std::fopen(file("producer-" + std::to_string(p)).c_str(), "rb");
      const bool have = f && std::fread(&r, sizeof r, 1, f) == 1;
      if (f) std::fclose(f);
      if (!children_.exited_ok(pid) || !have || r.published != n_) {
        producer_problems.push_back("producer " + std::to_string(p) + ": " + children_.outcome(pid) + ", published " +
                                    (have ? std::to_string(r.published) : std::string("?")) + " of " + std::to_string(n_));
        continue;
      }
      published += r.published;
      ring_full += r.ring_full;
    }
    const double pub_s = seconds_between(t0, published_at);
    const std::uint64_t through = ch_->stats().write_position;
    if (producer_problems.empty()) {
      std::printf("[2] published %llu orders in %s s (%s msgs/s); %s through a %s ring (%s wraps); ring full %llu times\n",
                  static_cast<unsigned long long>(published), fixed(pub_s, 2).c_str(),
                  human_rate(static_cast<double>(published) / pub_s).c_str(), human_bytes(through).c_str(),
                  human_bytes(kRingBytes).c_str(), fixed(static_cast<double>(through) / kRingBytes, 1).c_str(),
                  static_cast<unsigned long long>(ring_full));
      pass(2, std::to_string(published) + " msgs in " + fixed(pub_s, 2) + " s, " +
                  human_rate(static_cast<double>(published) / pub_s) + " msgs/s, ring full " + std::to_string(ring_full) + "x");
    } else {
      std::printf("[2] FAILED: %s\n", list_some(producer_problems).c_str());
      fail(2, list_some(producer_problems));
    }

    // Step 3: fan-out.
    std::vector<pid_t> all = consumers;
    all.insert(all.end(), workers.begin(), workers.end());
    children_.wait(all, deadline);
    const double all_s = seconds_between(t0, Clock::now());
    std::vector<std::string> fan_figures, fan_wrong;
    for (std::size_t i = 0; i < consumers.size(); ++i) {
      const char* g = kFanOutGroups[i];
      const std::vector<Received> rs = read_results(file(g));
      std::string wrong = check_fan_out(rs, n_);
      if (!children_.exited_ok(consumers[i])) wrong = children_.outcome(consumers[i]) + (wrong.empty() ? "" : "; " + wrong);
      if (wrong.empty()) {
        std::printf("[3] %-8s %zu orders, each producer's in order, checksums and keys intact\n", g, rs.size());
        fan_figures.push_back(std::to_string(rs.size()));
      } else {
        std::printf("[3] %-8s FAILED: %s\n", g, wrong.c_str());
        fan_wrong.push_back(std::string(g) + ": " + wrong);
      }
    }
    if (fan_wrong.empty())
      pass(3, fan_figures[0] + " + " + fan_figures[1] + " msgs, in order; all 3 groups done in " + fixed(all_s, 2) + " s");
    else
      fail(3, list_some(fan_wrong, 1));

    // Step 4: competing consumers.
    std::map<std::pair<std::uint32_t, std::uint32_t>, int> seen;
    std::vector<Received> every;
    std::vector<std::string> counts, wrong;
    for (int w = 0; w < kWorkers; ++w) {
      const std::vector<Received> rs = read_results(file("w" + std::to_string(w + 1)));
      counts.push_back(std::to_string(rs.size()));
      if (!children_.exited_ok(workers[w])) wrong.push_back("w" + std::to_string(w + 1) + " " + children_.outcome(workers[w]));
      for (const Received& r : rs) ++seen[{r.producer, r.seq}];
      every.insert(every.end(), rs.begin(), rs.end());
    }
    std::vector<std::string> duplicates, missing;
    for (const auto& [id, n] : seen)
      if (n > 1) duplicates.push_back(std::to_string(id.first) + ":" + std::to_string(id.second) + " x" + std::to_string(n));
    for (std::uint32_t p = 0; p < kProducers; ++p)
      for (std::uint32_t s = 1; s <= n_; ++s)
        if (!seen.count({p, s})) missing.push_back(std::to_string(p) + ":" + std::to_string(s));
    const std::size_t foreign = seen.size() + missing.size() - total;
    if (!duplicates.empty()) wrong.push_back(std::to_string(duplicates.size()) + " duplicates (" + list_some(duplicates) + ")");
    if (!missing.empty()) wrong.push_back(std::to_string(missing.size()) + " missing (" + list_some(missing) + ")");
    if (foreign) wrong.push_back(std::to_string(foreign) + " from no demo producer");
    if (const std::string p = problems_text(every); !p.empty()) wrong.push_back(p);
    const std::string split = counts[0] + " + " + counts[1] + " + " + counts[2] + " = " + std::to_string(every.size());
    if (wrong.empty()) {
      std::printf("[4] workers  w1 %s, w2 %s, w3 %s = %zu: each order exactly once, none missing\n", counts[0].c_str(),
                  counts[1].c_str(), counts[2].c_str(), every.size());
      pass(4, split + ", no duplicate");
    } else {
      std::printf("[4] workers  %s: FAILED: %s\n", split.c_str(), list_some(wrong).c_str());
      fail(4, split);
    }
  }

  // Step 5.
  void redelivery() {
    const std::uint64_t published_before = std::uint64_t{n_} * kProducers;
    {
      Producer producer(*ch_, "demo-producer-redelivery");
      for (std::uint32_t seq = 1; seq <= kRedeliveryMessages; ++seq) {
        const std::string key = order_key(kRedeliveryProducer, seq);
        PublishOptions o;
        o.key = key;
        o.wait = Wait::Block;
        o.timeout = 2s;
        if (const Published p = producer.publish(order_payload(kRedeliveryProducer, seq), o); p.status != Status::Ok) {
          std::printf("[5] FAILED: publish of order %u: %s\n", seq, to_string(p.status));
          fail(5, std::string("publish: ") + to_string(p.status));
          return;
        }
      }
    }
    int ready[2];
    if (::pipe(ready) != 0) throw Error(std::error_code(errno, std::generic_category()), "pipe");
    ConsumeJob victim_job = job(kWorkersGroup, "victim", ConsumeJob::Until::Count, 0, 10s);
    victim_job.hold = kVictimHolds;
    victim_job.ready_fd = ready[1];
    const pid_t victim = children_.spawn("victim", kRedeliveryAlarmS, [victim_job] { return run_consumer(victim_job); });
    ::close(ready[1]);
    pollfd pfd{ready[0], POLLIN, 0};
    const int polled = ::poll(&pfd, 1, 5000);
    ::close(ready[0]);
    const std::vector<Received> held = read_results(file("victim"));
    if (polled != 1 || held.size() != kVictimHolds) {
      children_.kill_now(victim);
      std::printf("[5] FAILED: the victim consumer did not take %u orders within 5 s (%s; it took %zu)\n", kVictimHolds,
                  children_.outcome(victim).c_str(), held.size());
      fail(5, "victim took " + std::to_string(held.size()) + " of " + std::to_string(kVictimHolds));
      return;
    }
    std::vector<std::string> held_ids;
    for (const Received& r : held) held_ids.push_back(std::to_string(r.producer) + ":" + std::to_string(r.seq));
    std::printf("[5] published %u more orders; victim consumer (pid %d, group workers) took %u without acking (%s)\n",
                kRedeliveryMessages, victim, kVictimHolds, list_some(held_ids, 3).c_str());

    std::vector<pid_t> survivors;
    for (int s = 1; s <= 2; ++s) {
      const std::string name = "survivor" + std::to_string(s);
      const ConsumeJob j = job(kWorkersGroup, name, ConsumeJob::Until::Drained, published_before + kRedeliveryMessages,
                               kRedeliveryGiveUp);
      survivors.push_back(children_.spawn(name, kRedeliveryAlarmS, [j] { return run_consumer(j); }));
    }
    children_.kill_now(victim);
    const auto killed_at = Clock::now();
    std::printf("[5] two surviving workers joined; victim SIGKILLed; waiting up to %lld s for its orders to come back\n",
                static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kRedeliveryGiveUp).count()));
    children_.wait(survivors, killed_at + kRedeliveryDeadline);
    const double took = seconds_between(killed_at, std::max(children_.get(survivors[0]).ended, children_.get(survivors[1]).ended));

    // Every order of step 5 once among the survivors, except the held ones (which may show once);
    // the held ones again, with deliveries > 1.
    std::map<std::uint32_t, std::vector<std::uint32_t>> deliveries_of;  // seq -> deliveries of each receipt
    std::vector<std::string> counts, wrong;
    std::vector<Received> every;
    std::size_t again = 0;  // orders of step 2 delivered again
    for (int s = 0; s < 2; ++s) {
      const std::vector<Received> rs = read_results(file("survivor" + std::to_string(s + 1)));
      counts.push_back(std::to_string(rs.size()));
      const std::string outcome = children_.outcome(survivors[s]);
      if (!children_.exited_ok(survivors[s]) && outcome != "gave up at its deadline")
        wrong.push_back("survivor " + std::to_string(s + 1) + " " + outcome);
      for (const Received& r : rs) {
        if (r.producer == kRedeliveryProducer) deliveries_of[r.seq].push_back(r.deliveries);
        else ++again;
      }
      every.insert(every.end(), rs.begin(), rs.end());
    }
    if (again) wrong.push_back(std::to_string(again) + " orders of step 2 (all acked there) delivered again");
    std::vector<std::string> not_back, back_once, duplicates, missing;
    std::uint32_t max_deliveries = 0;
    for (const Received& h : held) {
      auto it = deliveries_of.find(h.seq);
      if (it == deliveries_of.end()) not_back.push_back(std::to_string(h.seq));
      else if (*std::max_element(it->second.begin(), it->second.end()) <= 1) back_once.push_back(std::to_string(h.seq));
      else max_deliveries = std::max(max_deliveries, *std::max_element(it->second.begin(), it->second.end()));
    }
    for (std::uint32_t seq = 1; seq <= kRedeliveryMessages; ++seq) {
      auto it = deliveries_of.find(seq);
      if (it == deliveries_of.end()) {
        if (std::none_of(held.begin(), held.end(), [&](const Received& h) { return h.seq == seq; }))
          missing.push_back(std::to_string(seq));
      } else if (it->second.size() > 1) {
        duplicates.push_back(std::to_string(seq) + " x" + std::to_string(it->second.size()));
      }
    }
    if (!not_back.empty())
      wrong.push_back(std::to_string(not_back.size()) + " of the " + std::to_string(kVictimHolds) +
                      " held orders not redelivered within " + fixed(seconds_between(killed_at, Clock::now()), 1) +
                      " s (seq " + list_some(not_back) + ")");
    if (!back_once.empty()) wrong.push_back("redelivered with deliveries() == 1: seq " + list_some(back_once));
    if (!missing.empty()) wrong.push_back(std::to_string(missing.size()) + " other orders missing (seq " + list_some(missing) + ")");
    if (!duplicates.empty()) wrong.push_back("received twice by the survivors: seq " + list_some(duplicates));
    if (const std::string p = problems_text(every); !p.empty()) wrong.push_back(p);
    const std::size_t unique = deliveries_of.size();
    if (wrong.empty()) {
      std::printf("[5] survivors got %s + %s = %zu of %u orders; the %u held by the victim came back with deliveries %u; "
                  "survivors done %s s after the kill\n",
                  counts[0].c_str(), counts[1].c_str(), unique, kRedeliveryMessages, kVictimHolds, max_deliveries,
                  fixed(took, 2).c_str());
      pass(5, std::to_string(kVictimHolds) + " held msgs redelivered (deliveries " + std::to_string(max_deliveries) +
                  ") in " + fixed(took, 2) + " s");
    } else {
      std::printf("[5] survivors got %s + %s = %zu of %u orders: FAILED: %s\n", counts[0].c_str(), counts[1].c_str(), unique,
                  kRedeliveryMessages, list_some(wrong).c_str());
      fail(5, not_back.empty() ? list_some(wrong, 1)
                               : std::to_string(kVictimHolds - not_back.size()) + " of " + std::to_string(kVictimHolds) +
                                     " held msgs redelivered");
    }
  }

  // Step 6.
  void restart() {
    const std::string name = restart_channel();
    // The children are forked first, before this process opens the durable channel: its journaler
    // thread could hold a lock (an allocator's, under a sanitizer) at the fork, and a child would
    // wait for it forever. Each waits for its turn on a pipe.
    Gate producer_go, consumer_go, consumer_ready;
    const std::filesystem::path result = file("restart-consumer");
    const pid_t producer = children_.spawn("restart-producer", kRestartAlarmS, [&producer_go, name] {
      if (!producer_go.wait()) return 3;
      Channel c = Channel::attach(name);
      Producer p(c, "demo-restart-producer");
      for (std::uint32_t seq = 1; seq <= kRestartMessages; ++seq) {
        const std::string key = order_key(kRestartProducer, seq);
        PublishOptions po;
        po.key = key;
        po.wait = Wait::Block;
        po.timeout = 2s;
        if (p.publish(order_payload(kRestartProducer, seq), po).status != Status::Ok) return 1;
      }
      return p.flush(5s) ? 0 : 2;
    });
    const pid_t consumer = children_.spawn("restart-consumer", kRestartAlarmS, [&consumer_go, &consumer_ready, name, result] {
      if (!consumer_go.wait()) return 3;
      return run_restart_consumer(name, kRestartAcked, result, consumer_ready.write_end());
    });
    producer_go.parent_side();
    consumer_go.parent_side();
    consumer_ready.child_writes();

    ChannelOptions o;
    o.durability = Durability::Async;
    o.ring_bytes = kRingBytes;
    o.max_message_bytes = kMaxMessageBytes;
    o.journal_dir = dir_ / "journal";
    std::optional<Channel> ch = Channel::open(name, o);
    ch->ensure_group(kRestartGroup, Start::Earliest);
    std::printf("[6] created %s (Durability::Async, journal in %s); group %s\n", name.c_str(),
                ch->options().journal_dir.c_str(), kRestartGroup);
    const auto deadline = Clock::now() + kRestartDeadline;

    // A producer process publishes, waits until the journal has it all, and exits.
    producer_go.open();
    children_.wait({producer}, deadline);
    if (!children_.exited_ok(producer)) {
      std::printf("[6] FAILED: the producer process: %s\n", children_.outcome(producer).c_str());
      fail(6, "producer " + children_.outcome(producer));
      return;
    }

    // A consumer process acks some, holds one, and is killed.
    consumer_go.open();
    const bool ready = consumer_ready.wait_ready(8000);
    const std::vector<Received> before = read_results(result);
    children_.kill_now(consumer);
    if (!ready || before.size() != kRestartAcked + 1) {
      std::printf("[6] FAILED: the consumer did not take %u orders within 8 s (%s; it took %zu)\n", kRestartAcked + 1,
                  children_.outcome(consumer).c_str(), before.size());
      fail(6, "consumer took " + std::to_string(before.size()) + " of " + std::to_string(kRestartAcked + 1));
      return;
    }
    const std::uint32_t held = before.back().seq;
    std::printf("[6] producer process published %u orders and exited; consumer process acked %u, held order %u, "
                "SIGKILLed\n", kRestartMessages, kRestartAcked, held);

    // This process is the last one: it makes sure it journals (the consumer may have held the
    // journal's LOCK), then closes the channel, which syncs and checkpoints.
    while (Clock::now() < deadline) {
      const ChannelStats st = ch->stats();
      if (st.journaler_pid == ::getpid() && st.durable_position == st.write_position) break;
      ::usleep(10'000);
    }
    if (const ChannelStats st = ch->stats(); st.journaler_pid != ::getpid()) {
      std::printf("[6] FAILED: this process did not become the journaler within %lld s (journaler pid %d)\n",
                  static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kRestartDeadline).count()),
                  st.journaler_pid);
      fail(6, "no journaler");
      return;
    }
    ch.reset();
    Channel::remove(name);  // the segment only, as a reboot would: the journal stays
    std::printf("[6] every process of the channel is gone; segment /dev/shm/shmq.%s removed (a reboot), journal kept\n",
                name.c_str());

    // Back from the journal.
    const auto t0 = Clock::now();
    ch = Channel::open(name, o);
    const double open_ms = seconds_between(t0, Clock::now()) * 1000;
    const RecoveryReport r = ch->recovery();
    std::printf("[6] Channel::open rebuilt it in %s ms: %llu records put back (positions %llu .. %llu), %u group, %u "
                "producer, %u held message to deliver again, torn tail %llu B\n",
                fixed(open_ms, 1).c_str(), static_cast<unsigned long long>(r.records),
                static_cast<unsigned long long>(r.from_position), static_cast<unsigned long long>(r.end_position),
                r.groups, r.producers, r.redelivered, static_cast<unsigned long long>(r.torn_bytes));

    std::vector<std::string> wrong;
    if (!r.recovered) wrong.push_back("the segment was not rebuilt from the journal");
    if (r.groups != 1 || r.producers != 1 || r.redelivered != 1)
      wrong.push_back("report: " + std::to_string(r.groups) + " groups, " + std::to_string(r.producers) + " producers, " +
                      std::to_string(r.redelivered) + " to deliver again (1, 1, 1 expected)");
    std::map<std::uint32_t, std::vector<std::uint32_t>> deliveries_of;  // seq -> deliveries of each receipt
    std::vector<Received> after;
    {
      Consumer c(*ch, kRestartGroup);
      while (std::optional<Message> m = c.poll(300ms)) {
        const Received rec = inspect(*m);
        after.push_back(rec);
        deliveries_of[rec.seq].push_back(rec.deliveries);
        if (c.ack(*m) != Status::Ok) wrong.push_back("ack failed after recovery");
        if (after.size() > 2 * kRestartMessages) break;
      }
    }
    std::vector<std::string> missing, acked_again, duplicates;
    for (std::uint32_t seq = held; seq <= kRestartMessages; ++seq)
      if (!deliveries_of.count(seq)) missing.push_back(std::to_string(seq));
    for (const auto& [seq, ds] : deliveries_of) {
      if (seq < held) acked_again.push_back(std::to_string(seq));
      if (ds.size() > 1) duplicates.push_back(std::to_string(seq) + " x" + std::to_string(ds.size()));
    }
    const std::uint32_t held_deliveries = deliveries_of.count(held) ? deliveries_of[held].front() : 0;
    std::size_t first_delivery_ok = 0;
    for (const Received& rec : after)
      first_delivery_ok += rec.seq != held && rec.deliveries == 1;
    if (!missing.empty()) wrong.push_back(std::to_string(missing.size()) + " unacked orders missing (seq " + list_some(missing) + ")");
    if (!acked_again.empty())
      wrong.push_back(std::to_string(acked_again.size()) + " acked orders back (seq " + list_some(acked_again) + ")");
    if (!duplicates.empty()) wrong.push_back("received twice: " + list_some(duplicates));
    if (held_deliveries != 2) wrong.push_back("the held order came back with deliveries " + std::to_string(held_deliveries) + ", 2 expected");
    if (first_delivery_ok + 1 != after.size() && deliveries_of.count(held))
      wrong.push_back("orders never delivered before came with deliveries > 1");
    if (const std::string p = problems_text(after); !p.empty()) wrong.push_back(p);

    // The producer goes on above every sequence it used (after a recovery, a ring's worth above:
    // numbers a lost record may have had are never given out again), and a retry is still a
    // duplicate.
    Producer p(*ch, "demo-restart-producer");
    const std::string next_key = order_key(kRestartProducer, kRestartMessages + 1);
    PublishOptions po;
    po.key = next_key;
    const Published next = p.publish(order_payload(kRestartProducer, kRestartMessages + 1), po);
    PublishOptions retry;
    retry.seq = kRestartMessages;
    const Published again = p.publish(order_payload(kRestartProducer, kRestartMessages), retry);
    if (next.status != Status::Ok || next.id.seq <= kRestartMessages)
      wrong.push_back(std::string("the producer's next publish: ") + to_string(next.status) + ", seq " +
                      std::to_string(next.id.seq) + " (above " + std::to_string(kRestartMessages) + " expected)");
    if (again.status != Status::Duplicate)
      wrong.push_back(std::string("a retry of seq ") + std::to_string(kRestartMessages) + ": " + to_string(again.status) +
                      " (Duplicate expected)");
    if (!p.flush(5s)) wrong.push_back("the producer's publish after recovery was not durable within 5 s");

    const std::size_t expected = kRestartMessages - kRestartAcked;
    if (wrong.empty()) {
      std::printf("[6] group %s got %zu orders = the %zu unacked: order %u again with deliveries 2, %zu never "
                  "delivered before; none of the %u acked; producer went on above its old sequences (at %llu), a retry of seq %u: %s\n",
                  kRestartGroup, after.size(), expected, held, first_delivery_ok, kRestartAcked,
                  static_cast<unsigned long long>(next.id.seq), kRestartMessages, to_string(again.status));
      pass(6, std::to_string(r.records) + " msgs back in " + fixed(open_ms, 1) + " ms, " + std::to_string(after.size()) +
                  " unacked redelivered (held one: deliveries 2), retry dropped, seq went on");
    } else {
      std::printf("[6] group %s got %zu orders, %zu expected: FAILED: %s\n", kRestartGroup, after.size(), expected,
                  list_some(wrong).c_str());
      fail(6, list_some(wrong, 1));
    }
  }

  std::string restart_channel() const { return "demo.restart-" + std::to_string(::getpid()); }

  void cleanup() {
    ch_.reset();
    for (const std::string& name : {channel_, channel_ + ".dlq", restart_channel(), restart_channel() + ".dlq"}) {
      try {
        if (Channel::exists(name)) Channel::remove(name);
      } catch (const std::exception& e) {
        std::printf("    cleanup: %s\n", e.what());
      }
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // Step 7.
  int summary() {
    std::printf("[7] summary\n");
    Table t({"STEP", "RESULT", "FIGURES"});
    int passed = 0, failed = 0, skipped = 0;
    for (const Step& s : steps_) {
      t.add({s.name, result_name(s.result), s.figures});
      passed += s.result == Step::Passed;
      skipped += s.result == Step::Skipped;
      failed += s.result == Step::Failed || s.result == Step::NotRun;
    }
    t.print(stdout, "    ");
    std::printf("shmq demo: %d passed, %d failed, %d skipped%s\n", passed, failed, skipped,
                stop_requested() ? " (interrupted)" : "");
    return failed == 0 && !stop_requested() ? kExitOk : kExitFailure;
  }

  const std::uint32_t n_;
  const std::string channel_;
  std::filesystem::path dir_;
  std::optional<Channel> ch_;
  Children children_;
  std::vector<Step> steps_;
};

}  // namespace

int cmd_demo(const DemoArgs& args) {
  Demo demo(args);
  return demo.run();
}

}  // namespace shmq::tool

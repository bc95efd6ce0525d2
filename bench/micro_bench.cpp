// shmq_micro_bench: what one publish, poll and ack cost, in one process (Google Benchmark).
//
// What it measures, on a channel with Durability::Memory, a 64 MiB ring, Wait::Spin:
//   BM_RoundTrip/SIZE        publish one message, poll it back, ack it (one thread does all three);
//                            SIZE = 64 B, 1 KiB, 64 KiB.
//   BM_Publish/SIZE/BATCH    publish alone: BATCH publishes are timed (manual time), then the one
//                            consuming group drains them untimed (poll + ack), so the ring never
//                            fills and the group still gates it as it does in production.
//   BM_Poll/64               poll alone: 64 messages (max_in_flight) are published untimed, the 64
//                            polls are timed, the 64 acks are not.
//   BM_PollAck/64            the same 64 messages, each polled then acked: both timed.
//   BM_Ack/64                the 64 acks alone (published and polled untimed).
//   The cost of an ack is BM_PollAck - BM_Poll per message (and BM_Ack, measured directly).
// Each channel is made once per (benchmark, size) and warmed up first: a ring's worth of messages
// goes through it untimed, so the figures are those of a channel in use, not of fresh pages.
// items_per_second is messages per second; bytes_per_second counts payload bytes only.
//
// Every iteration checks what it gets back (status, size, an 8-byte tag). A failure is printed to
// stderr, the benchmark is marked with SkipWithError, and the program exits 1 after it has removed
// its channels: a broken run never passes for a figure.
//
// Output: one markdown table (the median over --benchmark_repetitions of each benchmark's time per
// message, and the ack cost derived from it) on stdout instead of Google Benchmark's console table;
// --benchmark_out=FILE still writes Google Benchmark's JSON, and --csv FILE / --json FILE write
// the table.
//
// The cross-process figures (latency percentiles, throughput beside a bare-ring floor and the
// peers) are in pingpong.cpp; this file is the single-thread cost of the calls.

#include <benchmark/benchmark.h>
#include <shmq/shmq.hpp>

#include "harness.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;

constexpr std::size_t kRingBytes = std::size_t{64} << 20;
constexpr auto kPollTimeout = 1s;  // a message published by this thread must be there at once

bool g_failed = false;
std::filesystem::path g_journal_dir;  // a private temporary directory (Memory writes no journal)
std::vector<std::string> g_channel_names;

// Marks the benchmark failed, loudly. The caller breaks out of its loop right after.
void fail(benchmark::State& state, const std::string& what) {
  std::fprintf(stderr, "\n*** shmq_micro_bench FAILED: %s\n", what.c_str());
  std::fflush(stderr);
  g_failed = true;
  state.SkipWithError(what.c_str());
}

// One channel with one producer and one consumer (its own group), all in this process. Made once
// per (benchmark, size) and kept for the benchmark's repetitions; removed by main() at the end.
struct Rig {
  explicit Rig(const std::string& name)
      : channel(shmq::Channel::open(name, options())),
        consumer(channel, "bench", shmq::ConsumerOptions{.start = shmq::Start::Earliest,
                                                         .wait = shmq::Wait::Spin,
                                                         .max_in_flight = 64}),
        producer(channel, "bench") {}

  static shmq::ChannelOptions options() {
    shmq::ChannelOptions o;
    o.ring_bytes = kRingBytes;
    o.durability = shmq::Durability::Memory;
    o.journal_dir = g_journal_dir;
    return o;
  }

  shmq::Channel channel;
  shmq::Consumer consumer;
  shmq::Producer producer;
  std::uint64_t next_tag = 1;
};

std::map<std::string, std::unique_ptr<Rig>>& rigs() {
  static std::map<std::string, std::unique_ptr<Rig>> all;
  return all;
}

bool warm_up(benchmark::State& state, Rig& r, std::size_t size);

// The rig for (kind, size), created and warmed up on first use. nullptr (and the benchmark
// failed) if the channel cannot be opened or the warm-up fails.
Rig* rig(benchmark::State& state, const char* kind, std::int64_t size) {
  const std::string name =
      "shmqmb_" + std::to_string(::getpid()) + "_" + kind + "_" + std::to_string(size);
  auto& all = rigs();
  if (auto it = all.find(name); it != all.end()) return it->second.get();
  try {
    if (shmq::Channel::exists(name)) shmq::Channel::remove(name, g_journal_dir);
    g_channel_names.push_back(name);
    auto made = std::make_unique<Rig>(name);
    Rig* raw = made.get();
    all.emplace(name, std::move(made));
    return warm_up(state, *raw, static_cast<std::size_t>(size)) ? raw : nullptr;
  } catch (const std::exception& e) {
    fail(state, "opening channel " + name + ": " + e.what());
    return nullptr;
  }
}

std::vector<std::byte> make_payload(std::size_t size) {
  std::vector<std::byte> payload(size);
  for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<std::byte>(i * 131 + 7);
  return payload;
}

void put_tag(std::vector<std::byte>& payload, std::uint64_t tag) {
  std::memcpy(payload.data(), &tag, sizeof tag);
}

// Polls the next message and checks it carries `tag` and `size` bytes, then acks it.
// Returns false (the benchmark failed) on anything else.
bool take_one(benchmark::State& state, Rig& r, std::size_t size, std::uint64_t tag) {
  std::optional<shmq::Message> m;
  try {
    m = r.consumer.poll(kPollTimeout);
  } catch (const std::exception& e) {  // poll throws Error on a record that breaks the layout
    fail(state, "poll threw at tag " + std::to_string(tag) + ": " + e.what());
    return false;
  }
  if (!m) {
    fail(state, "poll returned nothing within 1 s after a successful publish (status " +
                    std::string(shmq::to_string(r.consumer.status())) + "), tag " +
                    std::to_string(tag));
    return false;
  }
  std::uint64_t got = 0;
  if (m->payload().size() != size) {
    fail(state, "poll returned " + std::to_string(m->payload().size()) + " bytes, expected " +
                    std::to_string(size) + " (tag " + std::to_string(tag) + ")");
    return false;
  }
  std::memcpy(&got, m->payload().data(), sizeof got);
  if (got != tag) {
    fail(state, "poll returned tag " + std::to_string(got) + ", expected " + std::to_string(tag) +
                    ": lost, duplicated or reordered message");
    return false;
  }
  if (auto s = r.consumer.ack(*m); s != shmq::Status::Ok) {
    fail(state, "ack returned " + std::string(shmq::to_string(s)) + " for tag " +
                    std::to_string(tag));
    return false;
  }
  return true;
}

bool publish_one(benchmark::State& state, Rig& r, const std::vector<std::byte>& payload,
                 std::uint64_t tag) {
  const auto p = r.producer.publish(std::span<const std::byte>(payload));
  if (p.status != shmq::Status::Ok) {
    fail(state, "publish returned " + std::string(shmq::to_string(p.status)) + " for tag " +
                    std::to_string(tag) + " (" + std::to_string(payload.size()) + " bytes)");
    return false;
  }
  return true;
}

// Sends the ring's size in messages through the channel once, untimed, so that every page of the
// ring has been touched: the benchmarks measure a channel in use, not the first faults of a new one.
bool warm_up(benchmark::State& state, Rig& r, std::size_t size) {
  auto payload = make_payload(size);
  const std::size_t batch = std::max<std::size_t>(1, (kRingBytes / 8) / size);
  for (std::size_t sent = 0; sent < kRingBytes + kRingBytes / 8; sent += batch * size) {
    const std::uint64_t first = r.next_tag;
    for (std::size_t i = 0; i < batch; ++i) {
      const std::uint64_t tag = r.next_tag++;
      put_tag(payload, tag);
      if (!publish_one(state, r, payload, tag)) return false;
    }
    for (std::uint64_t tag = first; tag < r.next_tag; ++tag)
      if (!take_one(state, r, size, tag)) return false;
  }
  return true;
}

void set_counters(benchmark::State& state, std::int64_t messages, std::int64_t size) {
  state.SetItemsProcessed(messages);
  state.SetBytesProcessed(messages * size);
  // Seconds per message, printed with an SI prefix (e.g. "85.2n" is 85.2 ns).
  state.counters["per_msg"] = benchmark::Counter(static_cast<double>(messages),
                                                 benchmark::Counter::kIsRate |
                                                     benchmark::Counter::kInvert);
}

// publish + poll + ack of one message, one thread.
void BM_RoundTrip(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  Rig* r = rig(state, "rt", state.range(0));
  if (r == nullptr) return;
  auto payload = make_payload(size);
  std::int64_t done = 0;
  for (auto _ : state) {
    const std::uint64_t tag = r->next_tag++;
    put_tag(payload, tag);
    if (!publish_one(state, *r, payload, tag)) break;
    if (!take_one(state, *r, size, tag)) break;
    ++done;
  }
  set_counters(state, done, state.range(0));
}

// BATCH publishes (timed), then the group drains them (untimed).
void BM_Publish(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const auto batch = state.range(1);
  Rig* r = rig(state, "pub", state.range(0));
  if (r == nullptr) return;
  auto payload = make_payload(size);
  std::int64_t done = 0;
  bool ok = true;
  for (auto _ : state) {
    const std::uint64_t first = r->next_tag;
    const auto t0 = std::chrono::steady_clock::now();
    for (std::int64_t i = 0; i < batch && ok; ++i) {
      const std::uint64_t tag = r->next_tag++;
      put_tag(payload, tag);
      ok = publish_one(state, *r, payload, tag);
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (!ok) break;
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    for (std::uint64_t tag = first; tag < r->next_tag && ok; ++tag) ok = take_one(state, *r, size, tag);
    if (!ok) break;
    done += batch;
  }
  set_counters(state, done, state.range(0));
}

// Polls one message and checks its tag and size; nullopt (and the benchmark failed) otherwise.
std::optional<shmq::Message> poll_checked(benchmark::State& state, Rig& r, std::size_t size, std::uint64_t tag) {
  std::optional<shmq::Message> m;
  try {
    m = r.consumer.poll(kPollTimeout);
  } catch (const std::exception& e) {
    fail(state, "poll threw at tag " + std::to_string(tag) + ": " + e.what());
    return std::nullopt;
  }
  if (!m) {
    fail(state, "poll returned nothing within 1 s after a successful publish (status " +
                    std::string(shmq::to_string(r.consumer.status())) + "), tag " + std::to_string(tag));
    return std::nullopt;
  }
  std::uint64_t got = 0;
  if (m->payload().size() != size) {
    fail(state, "poll returned " + std::to_string(m->payload().size()) + " bytes, expected " + std::to_string(size));
    return std::nullopt;
  }
  std::memcpy(&got, m->payload().data(), sizeof got);
  if (got != tag) {
    fail(state, "poll returned tag " + std::to_string(got) + ", expected " + std::to_string(tag) +
                    ": lost, duplicated or reordered message");
    return std::nullopt;
  }
  return m;
}

bool ack_checked(benchmark::State& state, Rig& r, const shmq::Message& m, std::uint64_t tag) {
  if (auto s = r.consumer.ack(m); s != shmq::Status::Ok) {
    fail(state, "ack returned " + std::string(shmq::to_string(s)) + " for tag " + std::to_string(tag));
    return false;
  }
  return true;
}

// What BM_PollAckParts times in each batch of max_in_flight messages.
enum class Timed { Poll, PollAck, Ack };

// Publishes a batch of BATCH (<= max_in_flight) untimed; then polls and acks it, timing the part
// WHAT says (manual time).
void poll_ack_parts(benchmark::State& state, Timed what) {
  const auto size = static_cast<std::size_t>(state.range(0));
  const auto batch = static_cast<std::size_t>(state.range(1));
  Rig* r = rig(state, "ack", state.range(0));
  if (r == nullptr) return;
  auto payload = make_payload(size);
  std::vector<std::optional<shmq::Message>> held(batch);
  std::int64_t done = 0;
  bool ok = true;
  for (auto _ : state) {
    const std::uint64_t first = r->next_tag;
    for (std::size_t i = 0; i < batch && ok; ++i) {
      const std::uint64_t tag = r->next_tag++;
      put_tag(payload, tag);
      ok = publish_one(state, *r, payload, tag);
    }
    if (!ok) break;
    std::chrono::steady_clock::duration timed{};
    if (what == Timed::PollAck) {
      const auto t0 = std::chrono::steady_clock::now();
      for (std::size_t i = 0; i < batch && ok; ++i) {
        held[i] = poll_checked(state, *r, size, first + i);
        ok = held[i] && ack_checked(state, *r, *held[i], first + i);
      }
      timed = std::chrono::steady_clock::now() - t0;
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      for (std::size_t i = 0; i < batch && ok; ++i) {
        held[i] = poll_checked(state, *r, size, first + i);
        ok = held[i].has_value();
      }
      const auto t1 = std::chrono::steady_clock::now();
      for (std::size_t i = 0; i < batch && ok; ++i) ok = ack_checked(state, *r, *held[i], first + i);
      const auto t2 = std::chrono::steady_clock::now();
      timed = what == Timed::Poll ? t1 - t0 : t2 - t1;
    }
    if (!ok) break;
    state.SetIterationTime(std::chrono::duration<double>(timed).count());
    done += static_cast<std::int64_t>(batch);
  }
  set_counters(state, done, state.range(0));
}

void BM_Poll(benchmark::State& state) { poll_ack_parts(state, Timed::Poll); }
void BM_PollAck(benchmark::State& state) { poll_ack_parts(state, Timed::PollAck); }
void BM_Ack(benchmark::State& state) { poll_ack_parts(state, Timed::Ack); }

BENCHMARK(BM_RoundTrip)->Arg(64)->Arg(1024)->Arg(64 << 10)->UseRealTime();
// Batches of about 256 KiB to 4 MiB: far below the 64 MiB ring.
BENCHMARK(BM_Publish)
    ->Args({64, 4096})
    ->Args({1024, 1024})
    ->Args({64 << 10, 64})
    ->ArgNames({"size", "batch"})
    ->UseManualTime();
// A batch of 64: the consumer's max_in_flight (a consumer holds at most that many unacked).
BENCHMARK(BM_Poll)->Args({64, 64})->ArgNames({"size", "batch"})->UseManualTime();
BENCHMARK(BM_PollAck)->Args({64, 64})->ArgNames({"size", "batch"})->UseManualTime();
BENCHMARK(BM_Ack)->Args({64, 64})->ArgNames({"size", "batch"})->UseManualTime();

// Collects every run (instead of printing Google Benchmark's console table); errors go to stderr.
class Collector : public benchmark::BenchmarkReporter {
 public:
  struct Result {
    std::vector<double> ns_per_msg;  // one per repetition
    std::string error;
  };
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Iteration) continue;
      std::string name = run.run_name.function_name;
      if (!run.run_name.args.empty()) name += "/" + run.run_name.args;
      if (order_.empty() || std::find(order_.begin(), order_.end(), name) == order_.end()) order_.push_back(name);
      Result& r = results_[name];
      if (run.error_occurred) {
        r.error = run.error_message;
        std::fprintf(stderr, "%s: ERROR: %s\n", name.c_str(), run.error_message.c_str());
        continue;
      }
      auto it = run.counters.find("per_msg");
      if (it != run.counters.end()) r.ns_per_msg.push_back(it->second.value * 1e9);
    }
  }
  const std::vector<std::string>& order() const { return order_; }
  const std::map<std::string, Result>& results() const { return results_; }

 private:
  std::vector<std::string> order_;
  std::map<std::string, Result> results_;
};

// What each benchmark is, in words, for the table.
std::string describe(const std::string& name) {
  if (name.rfind("BM_RoundTrip", 0) == 0) return "publish + poll + ack, one thread";
  if (name.rfind("BM_Publish", 0) == 0) return "publish alone (batch timed, drained untimed)";
  if (name.rfind("BM_PollAck", 0) == 0) return "poll + ack (64 held at most)";
  if (name.rfind("BM_Poll", 0) == 0) return "poll alone (acks untimed)";
  if (name.rfind("BM_Ack", 0) == 0) return "ack alone (polls untimed)";
  return "";
}

void remove_channels() {
  rigs().clear();  // consumers, producers and channels closed before the segments go
  for (const auto& name : g_channel_names) {
    try {
      shmq::Channel::remove(name, g_journal_dir);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "*** shmq_micro_bench: removing channel %s failed: %s\n", name.c_str(),
                   e.what());
      g_failed = true;
    }
  }
  std::error_code ec;
  if (!g_journal_dir.empty()) std::filesystem::remove_all(g_journal_dir, ec);
}

}  // namespace

int main(int argc, char** argv) {
  // Our own flags (the table as CSV / JSON) go before Google Benchmark sees the rest.
  std::string csv_path, json_path;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string_view a = argv[i];
    if ((a == "--csv" || a == "--json") && i + 1 < argc) {
      (a == "--csv" ? csv_path : json_path) = argv[++i];
      continue;
    }
    args.push_back(argv[i]);
  }
  int bargc = static_cast<int>(args.size());
  benchmark::Initialize(&bargc, args.data());
  if (benchmark::ReportUnrecognizedArguments(bargc, args.data())) return 2;

  char dir[] = "/tmp/shmq-micro-bench-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::perror("*** shmq_micro_bench: mkdtemp");
    return 1;
  }
  g_journal_dir = dir;
  benchmark::AddCustomContext("shmq.durability", "Memory");
  benchmark::AddCustomContext("shmq.ring_bytes", std::to_string(kRingBytes));
  benchmark::AddCustomContext("shmq.wait", "Spin");

  Collector collector;
  std::printf("shmq_micro_bench: one process, one thread; Durability::Memory, ring %zu MiB, Wait::Spin; load average "
              "%.2f at start\n\n", kRingBytes >> 20, bench::load1());
  std::fflush(stdout);
  benchmark::RunSpecifiedBenchmarks(&collector);
  benchmark::Shutdown();
  remove_channels();

  bench::Table table({"benchmark", "what is timed", "ns / message (median)", "min - max", "M msgs/s", "runs"},
                     {false, false});
  auto med = [&](const std::string& name) -> double {
    auto it = collector.results().find(name);
    return it == collector.results().end() || !it->second.error.empty() ? -1 : bench::median(it->second.ns_per_msg);
  };
  for (const auto& name : collector.order()) {
    const auto& r = collector.results().at(name);
    if (!r.error.empty() || r.ns_per_msg.empty()) {
      table.add({bench::txt(name), bench::txt(describe(name)), bench::txt("FAILED"), bench::txt(r.error)});
      continue;
    }
    const double m = bench::median(r.ns_per_msg);
    const auto [lo, hi] = std::minmax_element(r.ns_per_msg.begin(), r.ns_per_msg.end());
    table.add({bench::txt(name), bench::txt(describe(name)), bench::num(m, 1),
               bench::txt(bench::fmt(*lo, 1) + " - " + bench::fmt(*hi, 1)), bench::num(1e3 / m, 2),
               bench::num(static_cast<double>(r.ns_per_msg.size()), 0)});
  }
  const double poll = med("BM_Poll/size:64/batch:64"), poll_ack = med("BM_PollAck/size:64/batch:64");
  if (poll > 0 && poll_ack > 0)
    table.add({bench::txt("ack cost = PollAck - Poll"), bench::txt("what an ack adds to a poll"),
               bench::num(poll_ack - poll, 1), bench::txt("-"), bench::txt("-"),
               bench::txt("ratio poll+ack / poll: " + bench::fmt(poll_ack / poll, 2))});
  table.print_markdown();
  std::printf("ns / message: the median over the repetitions (--benchmark_repetitions) of each run's time per "
              "message; every message's tag, size and status checked.\n");
  std::fflush(stdout);
  if (!csv_path.empty() || !json_path.empty()) {
    bench::Report rep;
    rep.context = {{"ring_bytes", std::to_string(kRingBytes)}, {"durability", "Memory"}, {"wait", "Spin"},
                   {"load1_at_start", bench::fmt(bench::load1(), 2)}};
    rep.tables = {{"micro_bench", &table}};
    if (!rep.write(csv_path, json_path, "shmq_micro_bench", !g_failed)) g_failed = true;
  }
  if (g_failed) {
    std::fprintf(stderr, "\n*** shmq_micro_bench FAILED: see the errors above; the figures of the "
                         "failed benchmarks are not results.\n");
    return 1;
  }
  return 0;
}

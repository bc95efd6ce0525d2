// shmq_micro_bench: what one publish, poll and ack cost, in one process (Google Benchmark).
//
// What it measures, on a channel with Durability::Memory, a 64 MiB ring, Wait::Spin:
//   BM_RoundTrip/SIZE        publish one message, poll it back, ack it (one thread does all three);
//                            SIZE = 64 B, 1 KiB, 64 KiB.
//   BM_Publish/SIZE/BATCH    publish alone: BATCH publishes are timed (manual time), then the one
//                            consuming group drains them untimed (poll + ack), so the ring never
//                            fills and the group still gates it as it does in production.
// Each channel is made once per (benchmark, size) and warmed up first: a ring's worth of messages
// goes through it untimed, so the figures are those of a channel in use, not of fresh pages.
// items_per_second is messages per second; bytes_per_second counts payload bytes only.
//
// Every iteration checks what it gets back (status, size, an 8-byte tag). A failure is printed to
// stderr, the benchmark is marked with SkipWithError, and the program exits 1 after it has removed
// its channels: a broken run never passes for a figure.
//
// The cross-process figures (latency percentiles, throughput beside a bare-ring floor) are in
// pingpong.cpp; this file is the single-thread cost of the calls.

#include <benchmark/benchmark.h>
#include <shmq/shmq.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
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

BENCHMARK(BM_RoundTrip)->Arg(64)->Arg(1024)->Arg(64 << 10)->UseRealTime();
// Batches of about 256 KiB to 4 MiB: far below the 64 MiB ring.
BENCHMARK(BM_Publish)
    ->Args({64, 4096})
    ->Args({1024, 1024})
    ->Args({64 << 10, 64})
    ->ArgNames({"size", "batch"})
    ->UseManualTime();

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
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;

  char dir[] = "/tmp/shmq-micro-bench-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::perror("*** shmq_micro_bench: mkdtemp");
    return 1;
  }
  g_journal_dir = dir;
  benchmark::AddCustomContext("shmq.durability", "Memory");
  benchmark::AddCustomContext("shmq.ring_bytes", std::to_string(kRingBytes));
  benchmark::AddCustomContext("shmq.wait", "Spin");

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  remove_channels();
  if (g_failed) {
    std::fprintf(stderr, "\n*** shmq_micro_bench FAILED: see the errors above; the figures of the "
                         "failed benchmarks are not results.\n");
    return 1;
  }
  return 0;
}

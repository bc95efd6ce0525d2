// shmq_dedup_bench: what the dedup window and the publish lock cost on a publish (Google Benchmark).
//
// One process, one thread, a Memory channel with a 64 MiB ring and one group that a consumer
// drains untimed after each batch of 4096 publishes (so the ring never fills and is gated as in
// production). Per message:
//   BM_PublishWithoutDedup   the publish path with neither the dedup check nor the publish lock:
//                            claim, write the header and payload, commit (the ring's own
//                            operations, driven through the internal RecordRing on a claimer slot
//                            of its own). The floor of a publish.
//   BM_Publish/default       Producer::publish with the default sequence (check, lock, window).
//   BM_Publish/explicit      the same with PublishOptions::seq set, in order (an outbox).
//   BM_Publish/gaps          explicit sequences, out of order inside the window (odd ones first,
//                            then the even ones fill the gaps).
//   BM_PublishRetry          a retry of an accepted sequence: the Duplicate, nothing appended.
//   BM_WindowCheckAndAccept  DedupWindow::find + accept alone, on the segment's entries.
//   BM_PublishLock           the publish lock alone (an uncontended CAS and a release store).
// The cost of the dedup check on publish = BM_Publish/default - BM_PublishWithoutDedup.
// Every message is checked when drained (inner id sequence, payload tag); a mismatch fails loudly.

#include <benchmark/benchmark.h>
#include <shmq/shmq.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "shm/channel_state.hpp"
#include "shm/dedup.hpp"
#include "shm/process.hpp"

namespace {

using namespace std::chrono_literals;
constexpr std::int64_t kBatch = 4096;  // as micro_bench's BM_Publish/64
constexpr std::size_t kPayload = 64;
bool g_failed = false;

void fail(benchmark::State& state, const std::string& what) {
  std::fprintf(stderr, "\n*** shmq_dedup_bench FAILED: %s\n", what.c_str());
  g_failed = true;
  state.SkipWithError(what.c_str());
}

struct Rig {
  explicit Rig(const char* kind)
      : name("shmqdb_" + std::to_string(::getpid()) + "_" + kind),
        channel(open(name)),
        consumer(channel, "bench", shmq::ConsumerOptions{.start = shmq::Start::Earliest, .wait = shmq::Wait::Spin, .max_in_flight = 64}),
        producer(channel, "bench"),
        payload(kPayload, std::byte{7}) {}
  ~Rig() {
    try {
      shmq::Channel::remove(name);
    } catch (const std::exception&) {
    }
  }
  static shmq::Channel open(const std::string& n) {
    if (shmq::Channel::exists(n)) shmq::Channel::remove(n);
    shmq::ChannelOptions o;
    o.ring_bytes = std::size_t{64} << 20;
    o.durability = shmq::Durability::Memory;
    return shmq::Channel::open(n, o);
  }
  // Polls and acks N messages, checking their order by sequence when EXPECT_SEQ is set.
  bool drain(benchmark::State& state, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
      auto m = consumer.poll(1s);
      if (!m) {
        fail(state, "poll found nothing after a publish");
        return false;
      }
      if (m->payload().size() != kPayload) {
        fail(state, "a message of the wrong size");
        return false;
      }
      if (consumer.ack(*m) != shmq::Status::Ok) {
        fail(state, "ack failed");
        return false;
      }
    }
    return true;
  }
  std::string name;
  shmq::Channel channel;
  shmq::Consumer consumer;
  shmq::Producer producer;
  std::vector<std::byte> payload;
  std::uint64_t seq = 0;
};

void per_message(benchmark::State& state, std::int64_t n) {
  state.SetItemsProcessed(n);
  state.counters["ns/msg"] = benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// Runs BODY (which publishes kBatch messages) timed, then drains untimed.
template <class Body>
void batches(benchmark::State& state, Rig& r, Body body) {
  std::int64_t done = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!body()) break;
    const auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    if (!r.drain(state, kBatch)) break;
    done += kBatch;
  }
  per_message(state, done);
}

void BM_PublishWithoutDedup(benchmark::State& state) {
  Rig r("raw");
  shmq::detail::ChannelState& s = r.channel.state();
  shmq::ring::RecordRing& ring = *s.ring;
  const std::uint32_t claimer = s.options.max_producers - 1;  // a slot no Producer uses here
  ring.adopt_claimer(claimer, shmq::detail::self_token());
  std::uint64_t cleaned_hint = ring.cleaned();
  const auto frame_len = static_cast<std::uint32_t>(shmq::ring::kHeaderBytes + kPayload);
  batches(state, r, [&] {
    for (std::int64_t i = 0; i < kBatch; ++i) {
      std::uint64_t pos = ring.try_claim(claimer, frame_len, cleaned_hint);
      while (pos == shmq::ring::kNoIntent) {
        if (!s.reclaim(ring.claim_end(ring.tail(), frame_len))) return false;
        pos = ring.try_claim(claimer, frame_len, cleaned_hint);
      }
      auto* h = reinterpret_cast<shmq::ring::RecordHeader*>(ring.at(pos));
      h->producer = 1;
      h->seq = ++r.seq;
      h->timestamp_ns = shmq::detail::wall_clock_ns();
      h->key_len = 0;
      h->reserved = 0;
      std::memcpy(reinterpret_cast<std::byte*>(h) + shmq::ring::kHeaderBytes, r.payload.data(), kPayload);
      ring.commit(pos, frame_len, shmq::ring::RecordType::Data, claimer);
      // As Producer::publish does after its commit: wake a blocked reader, if one is flagged.
      if (ring.header().data_waiters.load(std::memory_order_seq_cst) != 0) {
        ring.header().data_seq.fetch_add(1, std::memory_order_release);
        shmq::detail::futex_wake_all(ring.header().data_seq);
      }
    }
    return true;
  });
  ring.release_claimer(claimer);
}

enum class SeqMode { Default, Explicit, Gaps };

void BM_Publish(benchmark::State& state) {
  const auto mode = static_cast<SeqMode>(state.range(0));
  Rig r(mode == SeqMode::Default ? "default" : mode == SeqMode::Explicit ? "explicit" : "gaps");
  shmq::PublishOptions po;
  batches(state, r, [&] {
    const std::uint64_t base = r.seq;
    for (std::int64_t i = 0; i < kBatch; ++i) {
      if (mode == SeqMode::Explicit) po.seq = base + 1 + static_cast<std::uint64_t>(i);
      // Gaps: 1, 3, 5, ... 63, then 2, 4, ... 64 (each even one fills a gap below the top).
      if (mode == SeqMode::Gaps)
        po.seq = base + (i < kBatch / 2 ? 2 * static_cast<std::uint64_t>(i) + 1 : 2 * static_cast<std::uint64_t>(i - kBatch / 2) + 2);
      const shmq::Published p = r.producer.publish(r.payload, po);
      if (p.status != shmq::Status::Ok) {
        fail(state, std::string("publish: ") + shmq::to_string(p.status));
        return false;
      }
    }
    r.seq = base + kBatch;
    return true;
  });
}

void BM_PublishRetry(benchmark::State& state) {
  Rig r("retry");
  shmq::PublishOptions po;
  po.seq = 1;
  if (r.producer.publish(r.payload, po).status != shmq::Status::Ok) return fail(state, "first publish");
  if (!r.drain(state, 1)) return;
  std::int64_t done = 0;
  for (auto _ : state) {
    for (std::int64_t i = 0; i < kBatch; ++i) {
      const shmq::Published p = r.producer.publish(r.payload, po);
      if (p.status != shmq::Status::Duplicate) return fail(state, std::string("retry: ") + shmq::to_string(p.status));
      benchmark::DoNotOptimize(p);
    }
    done += kBatch;
  }
  per_message(state, done);
}

void BM_WindowCheckAndAccept(benchmark::State& state) {
  Rig r("window");
  shmq::detail::ChannelState& s = r.channel.state();
  std::atomic<std::uint64_t> next_seq{1};
  shmq::detail::DedupWindow w(s.segment->dedup_entries(s.options.max_producers - 1), s.options.dedup_window, &next_seq);
  std::uint64_t seq = 0, pos = 0;
  for (auto _ : state) {
    ++seq;
    if (w.find(seq)) return fail(state, "a new sequence was found in the window");
    w.accept(seq, (pos += 104) + 1);
  }
  per_message(state, static_cast<std::int64_t>(state.iterations()));
}

void BM_PublishLock(benchmark::State& state) {
  std::atomic<std::uintptr_t> lock{0};
  const auto me = reinterpret_cast<std::uintptr_t>(&lock);
  for (auto _ : state) {
    std::uintptr_t free = 0;
    if (!lock.compare_exchange_strong(free, me, std::memory_order_acquire, std::memory_order_relaxed)) return fail(state, "lock");
    benchmark::ClobberMemory();
    lock.store(0, std::memory_order_release);
  }
  per_message(state, static_cast<std::int64_t>(state.iterations()));
}

BENCHMARK(BM_PublishWithoutDedup)->UseManualTime()->MinTime(1.0);
BENCHMARK(BM_Publish)->ArgName("seq")->Arg(0)->Arg(1)->Arg(2)->UseManualTime()->MinTime(1.0);
BENCHMARK(BM_PublishRetry)->MinTime(0.5);
BENCHMARK(BM_WindowCheckAndAccept)->MinTime(0.5);
BENCHMARK(BM_PublishLock)->MinTime(0.5);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  std::printf("shmq_dedup_bench: Memory channel, 64 MiB ring, %zu-byte payloads, batches of %lld publishes\n"
              "  BM_Publish seq:0 default sequence, seq:1 explicit in order, seq:2 explicit with gaps\n"
              "  dedup cost per publish = BM_Publish(seq:0) - BM_PublishWithoutDedup\n",
              kPayload, static_cast<long long>(kBatch));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return g_failed ? 1 : 0;
}

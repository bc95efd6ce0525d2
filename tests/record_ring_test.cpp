// Unit tests of the record ring alone: no segment, no names; the ring lives in a heap region and
// its liveness function is a table the test controls.
#include "ringbuffer/record_ring.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

namespace {
using namespace shmq::ring;

// Owner tokens 1..N; a token is alive unless the test marked it dead.
bool g_dead[16] = {};
bool test_alive(std::uint64_t token) { return token < 16 && !g_dead[token]; }

struct TestRing {
  explicit TestRing(std::size_t capacity, std::uint32_t claimers = 8, std::size_t max_frame = 0)
      : bytes(RecordRing::region_bytes(capacity, claimers)),
        mem(static_cast<std::byte*>(std::aligned_alloc(4096, bytes))) {
    std::memset(mem.get(), 0, bytes);
    RecordRing::initialize(mem.get(), capacity, claimers, max_frame ? max_frame : capacity / 4);
    ring = RecordRing(mem.get());
    for (std::uint32_t i = 0; i < claimers; ++i) ring.adopt_claimer(i, i + 1);
    std::fill(std::begin(g_dead), std::end(g_dead), false);
  }
  struct Free { void operator()(std::byte* p) const { std::free(p); } };
  std::size_t bytes;
  std::unique_ptr<std::byte, Free> mem;
  RecordRing ring;
  std::uint64_t reader = 0;      // the one reader's position: the gate
  std::uint64_t hint = 0;

  static std::uint64_t gate(void* self) { return static_cast<TestRing*>(self)->reader; }

  // Claims and commits a record of PAYLOAD bytes filled with FILL; kNoIntent when full.
  std::uint64_t publish(std::uint32_t claimer, std::uint32_t payload, std::uint8_t fill, std::uint64_t seq = 0) {
    const auto len = static_cast<std::uint32_t>(kHeaderBytes + payload);
    std::uint64_t pos = ring.try_claim(claimer, len, hint);
    if (pos == kNoIntent) {
      if (!ring.reclaim(ring.claim_end(ring.tail(), len), claimer + 1, &TestRing::gate, this, test_alive)) return kNoIntent;
      pos = ring.try_claim(claimer, len, hint);
      if (pos == kNoIntent) return kNoIntent;
    }
    auto* h = reinterpret_cast<RecordHeader*>(ring.at(pos));
    h->producer = claimer;
    h->seq = seq;
    h->key_len = 0;
    std::memset(reinterpret_cast<std::byte*>(h) + kHeaderBytes, fill, payload);
    ring.commit(pos, len, RecordType::Data, claimer);
    return pos;
  }
  // Reads the next record, skipping padding; nullptr when there is none.
  const RecordHeader* next(std::uint32_t* payload = nullptr) {
    for (;;) {
      ReadResult r = ring.read(reader);
      if (r.kind == ReadResult::Padding) { reader = r.next; continue; }
      if (r.kind != ReadResult::Record) return nullptr;
      EXPECT_EQ(RecordRing::check_record(r), nullptr);
      if (payload) *payload = r.length - static_cast<std::uint32_t>(kHeaderBytes);
      reader = r.next;
      return r.header;
    }
  }
};

TEST(RecordRing, RoundTripsEveryPayloadSizeFromZeroToMaxAcrossWraps) {
  TestRing t(1 << 16, 8, kHeaderBytes + 4096);
  for (std::uint32_t size = 0; size <= 4096; ++size) {
    ASSERT_NE(t.publish(0, size, static_cast<std::uint8_t>(size), size), kNoIntent) << "size " << size;
    std::uint32_t got = 0;
    const RecordHeader* h = t.next(&got);
    ASSERT_NE(h, nullptr) << "size " << size;
    ASSERT_EQ(got, size);
    ASSERT_EQ(h->seq, size);
    const auto* body = reinterpret_cast<const std::uint8_t*>(h) + kHeaderBytes;
    for (std::uint32_t i = 0; i < size; ++i) ASSERT_EQ(body[i], static_cast<std::uint8_t>(size)) << "size " << size;
  }
  EXPECT_GT(t.ring.tail(), 10u * (1 << 16)) << "the test should have wrapped many times";
}

TEST(RecordRing, PadsTheGapAtTheEndAndNeverSplitsARecord) {
  TestRing t(4096, 2, 1024);
  // 1000-byte records: four fit in a lap with 96 bytes left, which must become padding.
  std::uint64_t last = 0;
  for (int i = 0; i < 20; ++i) {
    const std::uint64_t pos = t.publish(0, 1000 - kHeaderBytes, 1, i);
    ASSERT_NE(pos, kNoIntent);
    EXPECT_LE((pos & 4095) + 1000, 4096u) << "record " << i << " straddles the end";
    ASSERT_NE(t.next(), nullptr);
    last = pos;
  }
  EXPECT_EQ(last % 4096 % 1000, 0u);
}

TEST(RecordRing, FullRingRefusesUntilTheReaderMovesAndLosesNothing) {
  TestRing t(4096, 2, 1024);
  int published = 0;
  while (t.publish(0, 100, 7, published) != kNoIntent) ++published;
  EXPECT_GE(published, 4096 / 144 - 1);
  EXPECT_LE(published, 4096 / 144);
  // Nothing was overwritten: every record reads back in order.
  for (int i = 0; i < published; ++i) {
    const RecordHeader* h = t.next();
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(h->seq, static_cast<std::uint64_t>(i));
  }
  EXPECT_EQ(t.next(), nullptr);
  EXPECT_NE(t.publish(0, 100, 7, published), kNoIntent) << "space is reused once the reader moved";
}

TEST(RecordRing, ReaderThatCaughtUpOnAFullRingSeesNothingStale) {
  TestRing t(4096, 2, 1024);
  std::uint64_t seq = 0;
  for (int round = 0; round < 200; ++round) {
    while (t.publish(0, 56, 3, seq) != kNoIntent) ++seq;  // fill to the brim
    std::uint64_t expect = t.next()->seq;
    while (const RecordHeader* h = t.next()) ASSERT_EQ(h->seq, ++expect) << "round " << round;
    ASSERT_EQ(expect + 1, seq) << "round " << round;
  }
}

TEST(RecordRing, AbandonedClaimBecomesPadding) {
  TestRing t(4096);
  const auto len = static_cast<std::uint32_t>(kHeaderBytes + 10);
  const std::uint64_t pos = t.ring.try_claim(0, len, t.hint);
  ASSERT_NE(pos, kNoIntent);
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Pending);
  t.ring.commit(pos, len, RecordType::Padding, 0);
  t.publish(1, 5, 9, 42);
  const RecordHeader* h = t.next();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->seq, 42u);
}

TEST(RecordRing, ClaimOfALiveClaimerIsNeverUnblocked) {
  TestRing t(4096);
  const std::uint64_t pos = t.ring.try_claim(2, kHeaderBytes + 8, t.hint);
  ASSERT_NE(pos, kNoIntent);
  EXPECT_FALSE(t.ring.unblock(pos, test_alive));
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Pending);
}

TEST(RecordRing, ClaimOfADeadClaimerBecomesPaddingAndReadingGoesOn) {
  TestRing t(4096);
  const std::uint64_t pos = t.ring.try_claim(2, kHeaderBytes + 8, t.hint);
  t.publish(1, 8, 1, 7);  // a live producer's record behind the dead claim
  g_dead[3] = true;       // claimer 2 is owned by token 3
  EXPECT_TRUE(t.ring.unblock(pos, test_alive));
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Padding);
  const RecordHeader* h = t.next();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->seq, 7u);
}

TEST(RecordRing, ClaimerThatDiedBeforeWritingItsFrameIsFoundThroughItsIntent) {
  TestRing t(4096);
  // Simulate a claimer killed between its CAS on the tail and its first store: intent set,
  // tail advanced, frame word still 0.
  const std::uint64_t t0 = t.ring.tail();
  t.ring.claimer(2).intent.store(t0);
  t.ring.header().tail.store(t0 + 64);
  t.publish(1, 8, 1, 9);  // the next record, from a live producer
  EXPECT_FALSE(t.ring.unblock(t0, test_alive)) << "its claimer is alive: wait";
  g_dead[3] = true;
  EXPECT_TRUE(t.ring.unblock(t0, test_alive));
  const ReadResult r = t.ring.read(t0);
  ASSERT_EQ(r.kind, ReadResult::Padding);
  EXPECT_EQ(r.next, t0 + 64);
  const RecordHeader* h = t.next();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->seq, 9u);
}

TEST(RecordRing, ScanForADeadClaimStopsAtALiveClaimThatHasNoFrameYet) {
  TestRing t(4096);
  const std::uint64_t t0 = t.ring.tail();
  t.ring.claimer(2).intent.store(t0);        // dead, frame never written, 64 bytes
  t.ring.claimer(4).intent.store(t0 + 64);   // live, CAS done, frame not written yet
  t.ring.header().tail.store(t0 + 128);
  g_dead[3] = true;
  EXPECT_TRUE(t.ring.unblock(t0, test_alive));
  const ReadResult r = t.ring.read(t0);
  ASSERT_EQ(r.kind, ReadResult::Padding);
  EXPECT_EQ(r.next, t0 + 64) << "the live claim behind must not be swallowed";
  EXPECT_FALSE(t.ring.unblock(t0 + 64, test_alive));
}

TEST(RecordRing, CorruptFramesAreReportedNotFollowed) {
  TestRing t(4096, 2, 1024);
  const std::uint64_t pos = t.publish(0, 8, 1);
  auto& word = *reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(pos));
  word.store(Frame::pack(5000, RecordType::Data, 0, 0));  // longer than max frame and the lap
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Corrupt);
  word.store(Frame::pack(48, static_cast<RecordType>(9), 0, 0));
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Corrupt);
  word.store(Frame::pack(20, RecordType::Data, 0, 0));  // shorter than a header
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Corrupt);
  word.store(Frame::pack(4, RecordType::Padding, 0, 0));  // would not advance
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Corrupt);
  word.store(Frame::pack(48, RecordType::Data, 0, 0));
  reinterpret_cast<RecordHeader*>(t.ring.at(pos))->key_len = 100;
  const ReadResult r = t.ring.read(pos);
  ASSERT_EQ(r.kind, ReadResult::Record);
  EXPECT_NE(RecordRing::check_record(r), nullptr);
}

TEST(RecordRing, ValidateRejectsGarbageHeaders) {
  TestRing t(4096);
  EXPECT_EQ(RecordRing::validate(t.mem.get(), t.bytes), nullptr);
  EXPECT_NE(RecordRing::validate(t.mem.get(), 16), nullptr);
  auto& h = t.ring.header();
  h.capacity = 5000;
  EXPECT_NE(RecordRing::validate(t.mem.get(), t.bytes), nullptr);
  h.capacity = 1 << 20;  // larger than the region
  EXPECT_NE(RecordRing::validate(t.mem.get(), t.bytes), nullptr);
  h.capacity = 4096;
  h.claimers = 100000;
  EXPECT_NE(RecordRing::validate(t.mem.get(), t.bytes), nullptr);
  h.claimers = 8;
  h.magic = 1;
  EXPECT_NE(RecordRing::validate(t.mem.get(), t.bytes), nullptr);
}

TEST(RecordRing, ReclaimerThatDiedWhileZeroingIsFinishedByTheNext) {
  TestRing t(4096, 2, 1024);
  std::uint64_t seq = 0;
  while (t.publish(0, 200, 5, seq) != kNoIntent) ++seq;  // full
  while (t.next()) {
  }
  // Simulate a holder of the clean lock killed half-way: its target published, part of the region
  // zeroed (the frames there are gone), `cleaned` not advanced, the lock held by a dead token.
  auto& h = t.ring.header();
  const std::uint64_t c = t.ring.cleaned();
  h.cleaning_to.store(t.reader);
  std::memset(t.ring.at(c), 0, 256);
  h.clean_lock.store(3);
  g_dead[3] = true;
  for (int i = 0; i < 40; ++i) {
    ASSERT_NE(t.publish(1, 200, 6, seq + i), kNoIntent) << "the ring stopped after " << i << " records";
    ASSERT_NE(t.next(), nullptr);
  }
}

// Several producer threads, one reader: every record arrives once, each producer's in order.
TEST(RecordRing, ConcurrentProducersLoseNothingAndKeepTheirOrder) {
  constexpr int kProducers = 4;
#ifdef SHMQ_SANITIZED
  constexpr std::uint64_t kPerProducer = 20000;
#else
  constexpr std::uint64_t kPerProducer = 200000;
#endif
  TestRing t(1 << 16, kProducers, 2048);
  std::atomic<std::uint64_t> gate{0};
  struct Ctx { std::atomic<std::uint64_t>* gate; };
  Ctx ctx{&gate};
  auto gate_fn = [](void* c) { return static_cast<Ctx*>(c)->gate->load(std::memory_order_acquire); };
  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      std::uint64_t hint = 0;
      std::mt19937 rng(p);
      for (std::uint64_t seq = 0; seq < kPerProducer; ++seq) {
        const auto payload = static_cast<std::uint32_t>(rng() % 300);
        const auto len = static_cast<std::uint32_t>(kHeaderBytes + payload);
        std::uint64_t pos;
        while ((pos = t.ring.try_claim(p, len, hint)) == kNoIntent)
          if (!t.ring.reclaim(t.ring.claim_end(t.ring.tail(), len), p + 1, gate_fn, &ctx, test_alive)) std::this_thread::yield();
        auto* h = reinterpret_cast<RecordHeader*>(t.ring.at(pos));
        h->producer = p;
        h->seq = seq;
        h->key_len = 0;
        std::memset(reinterpret_cast<std::byte*>(h) + kHeaderBytes, static_cast<int>(seq & 0xff), payload);
        t.ring.commit(pos, len, RecordType::Data, p);
      }
    });
  }
  std::vector<std::uint64_t> expect(kProducers, 0);
  std::uint64_t total = 0, pos = 0;
  while (total < kProducers * kPerProducer) {
    const ReadResult r = t.ring.read(pos);
    if (r.kind == ReadResult::Empty || r.kind == ReadResult::Pending) { std::this_thread::yield(); continue; }
    ASSERT_NE(r.kind, ReadResult::Corrupt) << r.why;
    if (r.kind == ReadResult::Record) {
      const RecordHeader* h = r.header;
      ASSERT_LT(h->producer, static_cast<std::uint64_t>(kProducers));
      ASSERT_EQ(h->seq, expect[h->producer]) << "producer " << h->producer;
      const auto* body = reinterpret_cast<const std::uint8_t*>(h) + kHeaderBytes;
      const std::uint32_t n = r.length - static_cast<std::uint32_t>(kHeaderBytes);
      for (std::uint32_t i = 0; i < n; ++i) ASSERT_EQ(body[i], h->seq & 0xff);
      ++expect[h->producer];
      ++total;
    }
    pos = r.next;
    gate.store(pos, std::memory_order_release);
  }
  for (auto& th : threads) th.join();
  for (int p = 0; p < kProducers; ++p) EXPECT_EQ(expect[p], kPerProducer);
}

}  // namespace

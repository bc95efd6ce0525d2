// Unit tests of the record ring alone: no segment, no names; the ring lives in a heap region and
// its liveness function is a table the test controls.
#include "ringbuffer/record_ring.hpp"

#include "support.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>

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

// The ring's region is mapped with a PROT_NONE page on either side, so that a read or write
// outside it dies with SIGSEGV instead of passing unnoticed.
struct TestRing {
  explicit TestRing(std::size_t capacity, std::uint32_t claimers = 8, std::size_t max_frame = 0)
      : bytes(RecordRing::region_bytes(capacity, claimers)), mem(guarded(bytes), Free{bytes}) {
    std::memset(mem.get(), 0, bytes);
    RecordRing::initialize(mem.get(), capacity, claimers, max_frame ? max_frame : capacity / 4);
    ring = RecordRing(mem.get());
    for (std::uint32_t i = 0; i < claimers; ++i) ring.adopt_claimer(i, i + 1);
    std::fill(std::begin(g_dead), std::end(g_dead), false);
  }
  static std::byte* guarded(std::size_t bytes) {
    const std::size_t pages = (bytes + 4095) / 4096 * 4096;
    void* p = ::mmap(nullptr, pages + 2 * 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    // The region ends where the upper guard page begins (region_bytes is a multiple of a page).
    auto* region = static_cast<std::byte*>(p) + 4096 + (pages - bytes);
    if (::mprotect(static_cast<std::byte*>(p) + 4096, pages, PROT_READ | PROT_WRITE) != 0) std::abort();
    return region;
  }
  struct Free {
    std::size_t bytes;
    void operator()(std::byte* p) const {
      const std::size_t pages = (bytes + 4095) / 4096 * 4096;
      ::munmap(p - (pages - bytes) - 4096, pages + 2 * 4096);
    }
  };
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
      RecordFields f;
      EXPECT_EQ(RecordRing::load_record(r, f), nullptr);
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
  EXPECT_FALSE(t.ring.unblock(pos, 1, test_alive));
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Pending);
}

TEST(RecordRing, ClaimOfADeadClaimerBecomesPaddingAndReadingGoesOn) {
  TestRing t(4096);
  const std::uint64_t pos = t.ring.try_claim(2, kHeaderBytes + 8, t.hint);
  t.publish(1, 8, 1, 7);  // a live producer's record behind the dead claim
  g_dead[3] = true;       // claimer 2 is owned by token 3
  EXPECT_TRUE(t.ring.unblock(pos, 1, test_alive));
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
  EXPECT_FALSE(t.ring.unblock(t0, 1, test_alive)) << "its claimer is alive: wait";
  g_dead[3] = true;
  EXPECT_TRUE(t.ring.unblock(t0, 1, test_alive));
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
  EXPECT_TRUE(t.ring.unblock(t0, 1, test_alive));
  const ReadResult r = t.ring.read(t0);
  ASSERT_EQ(r.kind, ReadResult::Padding);
  EXPECT_EQ(r.next, t0 + 64) << "the live claim behind must not be swallowed";
  EXPECT_FALSE(t.ring.unblock(t0 + 64, 1, test_alive));
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
  RecordFields f;
  EXPECT_NE(RecordRing::load_record(r, f), nullptr);
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

// --- Hostile positions (issue 11): what a reader or a producer takes from shared memory is
// checked before it is followed. The ring sits between guard pages; a test whose old behaviour
// crashed or hung runs in a forked child with a deadline.

// Issue 11.2: a position that is not a multiple of 8 (a scribbled cursor, give-back entry, tail or
// `cleaned`) made frame_at read, and a claim write, 8 bytes across the end of the region.
TEST(RecordRing, MisalignedPositionsAreRefusedNotFollowed) {
  TestRing t(4096, 2, 1024);
  const pid_t child = shmq::test::fork_child([&] {
    const std::uint64_t last_word = 4096 - 4;  // a frame word there would cross into the guard page
    CHILD_CHECK(t.ring.read(last_word).kind == ReadResult::Corrupt);
    CHILD_CHECK(t.ring.read(4096 + 3).kind == ReadResult::Corrupt);
    CHILD_CHECK(!t.ring.unblock(last_word, 1, test_alive));
    // A tail that is not a record boundary: no claim is made from it, and reclaim makes no room
    // (so a producer's wait times out instead of looping).
    t.ring.header().tail.store(last_word);
    std::uint64_t hint = 0;
    CHILD_CHECK(t.ring.try_claim(0, kHeaderBytes + 8, hint) == kNoIntent);
    CHILD_CHECK(!t.ring.reclaim(t.ring.claim_end(last_word, kHeaderBytes + 8), 1, &TestRing::gate, &t, test_alive));
    // `cleaned` and `cleaning_to` misaligned: the next holder of the clean lock does not zero
    // from or to them, and reclaim refuses the ring.
    t.ring.header().tail.store(0);
    t.ring.header().cleaned.store(4);
    t.ring.header().cleaning_to.store(4096 + 4);
    CHILD_CHECK(!t.ring.reclaim(8192, 1, &TestRing::gate, &t, test_alive));
    t.ring.lock_cleaning(1, test_alive);
    t.ring.unlock_cleaning();
    CHILD_CHECK(t.ring.cleaned() == 4);
    return 0;
  }, 20);
  const auto r = shmq::test::wait_child(child, std::chrono::seconds(20));
  EXPECT_TRUE(r.ok()) << r.describe();
}

// Issue 11.4: a position at or past the tail holds nothing, whatever its frame word says (a stray
// padding frame there made a caught-up reader skip past the tail and miss the next records, or
// deliver old ones again); a position below `cleaned` is corrupt; a record never ends past the tail.
TEST(RecordRing, AFrameAtOrPastTheTailReadsEmptyAndAPositionBelowCleanedIsCorrupt) {
  TestRing t(4096, 2, 1024);
  for (int i = 0; i < 10; ++i) ASSERT_NE(t.publish(0, 100, 1, i), kNoIntent);
  while (t.next()) {
  }
  const std::uint64_t tail = t.ring.tail();
  ASSERT_EQ(t.reader, tail);
  auto& word = *reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(tail));
  word.store(Frame::pack(512, RecordType::Padding, 0, 0));  // a peer's (or a stale reader's) stray frame
  EXPECT_EQ(t.ring.read(tail).kind, ReadResult::Empty);
  word.store(Frame::pack(200, RecordType::Data, 0, 0));
  EXPECT_EQ(t.ring.read(tail).kind, ReadResult::Empty);
  EXPECT_EQ(t.ring.read(tail + 4096 * 10).kind, ReadResult::Empty);
  word.store(0);
  // The next record is found where it belongs.
  ASSERT_NE(t.publish(0, 100, 2, 10), kNoIntent);
  const RecordHeader* h = t.next();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->seq, 10u);
  // A record whose frame says it runs past the tail is corrupt.
  const std::uint64_t last = t.reader - 144;
  auto& last_word = *reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(last));
  const std::uint64_t saved = last_word.load();
  last_word.store(Frame::pack(400, RecordType::Data, 0, 0));
  EXPECT_EQ(t.ring.read(last).kind, ReadResult::Corrupt);
  last_word.store(saved);
  // Fill and drain until `cleaned` has moved: the first record's position is below it now.
  std::uint64_t seq = 11;
  while (t.ring.cleaned() == 0) {
    ASSERT_NE(t.publish(0, 100, 3, seq++), kNoIntent);
    while (t.next()) {
    }
  }
  EXPECT_EQ(t.ring.read(0).kind, ReadResult::Corrupt);
  // More than a lap behind the tail is corrupt too.
  EXPECT_EQ(t.ring.read(t.ring.tail() - 4096 - 8 * 100).kind, ReadResult::Corrupt);
}

// Issue 11.5: a tail moved 2^40 bytes ahead over a zeroed ring made unblock() scan up to it word
// by word before clipping to the lap (hours). Clipped first, every scan is within a lap.
TEST(RecordRing, UnblockUnderAHostileTailReturnsAtOnce) {
  TestRing t(4096, 2, 1024);
  const pid_t child = shmq::test::fork_child([&] {
    t.ring.header().tail.store(std::uint64_t(1) << 40);
    g_dead[1] = g_dead[2] = true;  // nobody is alive: every claim is a dead one
    (void)t.ring.unblock(0, 3, test_alive);
    (void)t.ring.unblock(8, 3, test_alive);
    // A tail within the lap over zeroed space: the dead claim becomes padding up to it.
    t.ring.header().tail.store(1024);
    CHILD_CHECK(t.ring.unblock(0, 3, test_alive));
    const ReadResult r = t.ring.read(0);
    CHILD_CHECK(r.kind == ReadResult::Padding && r.next == 1024);
    return 0;
  }, 20);
  const auto r = shmq::test::wait_child(child, std::chrono::seconds(20));
  EXPECT_TRUE(r.ok()) << r.describe();
}

// Issue 10.8: a reader that stalled just before storing its padding over a dead claim's zero
// frame word, while others padded that claim, read past it and reclaimed the space, stored a
// padding frame into free space a lap later. The store is made under clean_lock now, after
// checking that the position was not reclaimed. The stall is made deterministic with the test hook.
TestRing* g_stalled_ring = nullptr;
std::uint64_t g_stalled_at = kNoIntent;
void lap_the_ring_while_a_reader_stalls(std::uint64_t pos) {
  RecordRing::set_unblock_hook(nullptr);  // the other readers are not stalled
  TestRing& t = *g_stalled_ring;
  g_stalled_at = pos;
  EXPECT_TRUE(t.ring.unblock(pos, 2, test_alive)) << "another reader pads the dead claim";
  while (t.next()) {  // everyone reads past it
  }
  ASSERT_EQ(t.reader, t.ring.tail());
  // The space is reclaimed (zeroed): POS is free space of the next lap now.
  ASSERT_TRUE(t.ring.reclaim(pos + t.ring.capacity(), 1, &TestRing::gate, &t, test_alive));
  ASSERT_GT(t.ring.cleaned(), pos);
  ASSERT_LT(t.ring.tail(), pos + t.ring.capacity());
}

TEST(RecordRing, AStalledUnblockDoesNotWritePaddingIntoSpaceReclaimedMeanwhile) {
  TestRing t(4096, 4, 1024);
  for (int i = 0; i < 10; ++i) ASSERT_NE(t.publish(0, 100, 1, i), kNoIntent);
  while (t.next()) {
  }
  // A claimer killed between its CAS on the tail and its first store: intent set, tail advanced,
  // frame word still 0; then a live producer's record behind it.
  const std::uint64_t t0 = t.ring.tail();
  t.ring.claimer(2).intent.store(t0);
  t.ring.header().tail.store(t0 + 64);
  ASSERT_NE(t.publish(1, 8, 1, 100), kNoIntent);
  g_dead[3] = true;
  g_stalled_ring = &t;
  RecordRing::set_unblock_hook(&lap_the_ring_while_a_reader_stalls);
  (void)t.ring.unblock(t0, 4, test_alive);  // stalls in the hook while the ring moves on
  RecordRing::set_unblock_hook(nullptr);
  ASSERT_EQ(g_stalled_at, t0) << "the hook did not run";
  const std::uint64_t word = reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(t0))->load();
  EXPECT_EQ(word, 0u) << "free space must stay zeroed: a frame there is read by a reader that catches up";
  // Producers and the reader go on across the spot, losing nothing.
  std::uint64_t seq = 200, expect = 200;
  for (int i = 0; i < 100; ++i) {
    ASSERT_NE(t.publish(0, 56, 4, seq++), kNoIntent);
    const RecordHeader* h = t.next();
    ASSERT_NE(h, nullptr) << "record " << expect << " was skipped";
    ASSERT_EQ(h->seq, expect++);
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

// Unit tests of the record ring alone: no segment, no names; the ring lives in a heap region and
// its liveness function is a table the test controls.
#include "ringbuffer/record_ring.hpp"

#include "support.hpp"

#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/membarrier.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <algorithm>
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

  static std::uint64_t gate(void* self, std::uint64_t) { return static_cast<TestRing*>(self)->reader; }

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

// Marks a claim of claimer I at the tail as try_claim() does before its tail CAS (slot, then the
// marker), without moving the tail: a claimer stopped (stalled or killed) between the two steps.
std::uint64_t mark_claim_at_tail(TestRing& t, std::uint32_t i, std::uint32_t frame_len) {
  const std::uint64_t t0 = t.ring.tail();
  const std::uint32_t lap = static_cast<std::uint32_t>(t0 / t.ring.capacity());
  const std::uint64_t was = reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(t0))->load();
  const std::uint64_t marker =
      Frame::pack(frame_len, RecordType::Claimed, i, t.ring.claimer(i).epoch.load(), lap, Frame::toggle_over(was));
  t.ring.claimer(i).claim_frame.store(marker);
  t.ring.claimer(i).intent.store(t0);
  reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(t0))->store(marker);
  return t0;
}

// Ring v3: a claimer stopped between marking its claim at the tail and moving the tail blocks no
// other producer (the next one moves the tail past the marked claim for it), and no reader: once
// the claimer is dead its claim becomes padding.
TEST(RecordRing, AClaimerStoppedBetweenMarkingItsClaimAndMovingTheTailBlocksNobody) {
  TestRing t(4096);
  const std::uint64_t t0 = mark_claim_at_tail(t, 2, kHeaderBytes + 24);  // 64 bytes
  EXPECT_EQ(t.ring.read(t0).kind, ReadResult::Empty) << "the tail has not moved past it: nothing there yet";
  ASSERT_EQ(t.publish(1, 8, 1, 9), t0 + 64) << "the next producer claims after the marked claim";
  EXPECT_EQ(t.ring.tail(), t0 + 64 + 48);
  EXPECT_EQ(t.ring.read(t0).kind, ReadResult::Pending);
  EXPECT_FALSE(t.ring.unblock(t0, 1, test_alive)) << "its claimer is alive: wait";
  g_dead[3] = true;  // claimer 2 is owned by token 3
  EXPECT_TRUE(t.ring.unblock(t0, 1, test_alive));
  const ReadResult r = t.ring.read(t0);
  ASSERT_EQ(r.kind, ReadResult::Padding);
  EXPECT_EQ(r.next, t0 + 64);
  const RecordHeader* h = t.next();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->seq, 9u);
}

// ... and a live one that commits later is read in its place, before the record claimed after it.
TEST(RecordRing, AClaimMovedPastByAPeerIsStillItsClaimersToCommit) {
  TestRing t(4096);
  const std::uint32_t len = kHeaderBytes + 24;
  const std::uint64_t t0 = mark_claim_at_tail(t, 2, len);
  ASSERT_EQ(t.publish(1, 8, 1, 9), t0 + 64);
  EXPECT_EQ(t.next(), nullptr) << "the reader waits at the claim in progress";
  auto* h0 = reinterpret_cast<RecordHeader*>(t.ring.at(t0));
  h0->producer = 2;
  h0->seq = 8;
  h0->key_len = 0;
  t.ring.commit(t0, len, RecordType::Data, 2);
  const RecordHeader* a = t.next();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->seq, 8u);
  const RecordHeader* b = t.next();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->seq, 9u);
}

// A claimer slot taken over from a dead owner that had marked a claim: the claim is moved past
// first, so its marker is not taken for a stale word and claimed over by the next producer.
TEST(RecordRing, AdoptingADeadClaimersSlotMovesTheTailPastItsMarkedClaim) {
  TestRing t(4096);
  const std::uint64_t t0 = mark_claim_at_tail(t, 2, kHeaderBytes + 24);
  g_dead[3] = true;
  t.ring.adopt_claimer(2, 9);
  EXPECT_EQ(t.ring.tail(), t0 + 64);
  EXPECT_TRUE(t.ring.unblock(t0, 1, test_alive)) << "a claim of the old epoch is dead";
  ASSERT_EQ(t.publish(2, 8, 1, 5), t0 + 64);
  const RecordHeader* h = t.next();
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->seq, 5u);
}

// Freed space is never zeroed, so the words a producer finds at the tail are whatever earlier laps
// (or a peer) left there: old frames, records that look committed, claim markers naming a claimer
// whose slot says otherwise, payload bytes. None of them is read, and every record arrives.
TEST(RecordRing, WhateverEarlierLapsLeftAtTheTailIsNeverRead) {
  TestRing t(4096, 4, 1024);
  std::mt19937_64 rng64(11);
  auto rng = [&] { return static_cast<std::uint32_t>(rng64()); };
  std::uint64_t seq = 0, expect = 0;
  for (int round = 0; round < 3000; ++round) {
    // Poison the free space ahead of the tail, at record boundaries a future claim may use.
    const std::uint64_t tail = t.ring.tail();
    for (std::uint64_t p = tail; p < tail + 512 && p < t.ring.cleaned() + t.ring.capacity(); p += 8) {
      const std::uint32_t lap = static_cast<std::uint32_t>(p / 4096);
      std::uint64_t w;
      switch (rng() % 5) {
        case 0: w = Frame::pack(48 + 8 * (rng() % 20), RecordType::Data, rng() % 4, 0, lap); break;       // looks committed
        case 1: w = Frame::pack(64, RecordType::Claimed, rng() % 4, rng() % 4, lap); break;                // a marker of nobody's claim
        case 2: w = Frame::pack(8 * (1 + rng() % 30), RecordType::Padding, 0, 0, lap); break;              // a padding frame
        case 3: w = Frame::pack(48, RecordType::Data, 0, 0, lap - 1); break;                                // last lap's frame
        default: w = rng64(); break;                                                                        // payload bytes
      }
      reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(p))->store(w);
    }
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n; ++i) ASSERT_NE(t.publish(rng() % 4, 8 * (rng() % 12), 7, seq++), kNoIntent);
    while (const RecordHeader* h = t.next()) ASSERT_EQ(h->seq, expect++) << "round " << round;
    ASSERT_EQ(expect, seq) << "round " << round;
  }
  EXPECT_GT(t.ring.tail(), 10 * t.ring.capacity()) << "the test must lap the ring";
}

TEST(RecordRing, CorruptFramesAreReportedNotFollowed) {
  TestRing t(4096, 2, 1024);
  const std::uint64_t pos = t.publish(0, 8, 1);
  auto& word = *reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(pos));
  word.store(Frame::pack(5000, RecordType::Data, 0, 0));  // longer than max frame and the lap
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Corrupt);
  word.store(Frame::pack(48, RecordType::Data, 0, 0, 1));  // another lap's frame below the tail
  EXPECT_EQ(t.ring.read(pos).kind, ReadResult::Corrupt);
  word.store(0);  // no frame at all below the tail
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

// Reclaiming is a store of `cleaned`: the freed bytes stay as they were (no memset on any
// publish), and a reclaimer that died holding the lock is replaced.
TEST(RecordRing, ReclaimWritesNothingIntoTheFreedSpace) {
  TestRing t(4096, 2, 1024);
  std::uint64_t seq = 0;
  while (t.publish(0, 200, 5, seq) != kNoIntent) ++seq;  // full
  while (t.next()) {
  }
  std::vector<std::byte> before(t.ring.at(0), t.ring.at(0) + 4096);
  ASSERT_TRUE(t.ring.reclaim(t.ring.tail() + 4096, 1, &TestRing::gate, &t, test_alive));
  EXPECT_EQ(t.ring.cleaned(), t.reader);
  EXPECT_EQ(std::memcmp(before.data(), t.ring.at(0), 4096), 0) << "reclaim wrote into the ring";
}

TEST(RecordRing, AReclaimerThatDiedHoldingTheLockIsReplaced) {
  TestRing t(4096, 2, 1024);
  std::uint64_t seq = 0;
  while (t.publish(0, 200, 5, seq) != kNoIntent) ++seq;  // full
  while (t.next()) {
  }
  t.ring.header().clean_lock.store(3);
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
    // `cleaned` misaligned: reclaim refuses the ring and leaves it as it is.
    t.ring.header().tail.store(0);
    t.ring.header().cleaned.store(4);
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
  // More than a lap behind the tail is corrupt too (once the tail is two laps on).
  while (t.ring.tail() < 3 * 4096) {
    ASSERT_NE(t.publish(0, 100, 3, seq++), kNoIntent);
    while (t.next()) {
    }
  }
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
    // A tail within the lap over space that holds no claim marker (a hostile tail): nothing to
    // unblock there, and the reader is told the position is corrupt instead of waiting on it.
    t.ring.header().tail.store(1024);
    CHILD_CHECK(!t.ring.unblock(0, 3, test_alive));
    CHILD_CHECK(t.ring.claimed(0));  // what a reader that keeps finding nothing asks now and then
    CHILD_CHECK(t.ring.read(0).kind == ReadResult::Corrupt);
    return 0;
  }, 20);
  const auto r = shmq::test::wait_child(child, std::chrono::seconds(20));
  EXPECT_TRUE(r.ok()) << r.describe();
}

// Issue 10.8: a reader that stalled just before storing its padding over a dead claim, while
// others padded that claim, read past it and reclaimed the space, stored a padding frame into free
// space a lap later. The store is made under clean_lock now, after
// checking that the position was not reclaimed. The stall is made deterministic with the test hook.
TestRing* g_stalled_ring = nullptr;
std::uint64_t g_stalled_at = kNoIntent;
std::uint64_t g_word_after_lap = 0;
void lap_the_ring_while_a_reader_stalls(std::uint64_t pos) {
  RecordRing::set_unblock_hook(nullptr);  // the other readers are not stalled
  TestRing& t = *g_stalled_ring;
  g_stalled_at = pos;
  EXPECT_TRUE(t.ring.unblock(pos, 2, test_alive)) << "another reader pads the dead claim";
  while (t.next()) {  // everyone reads past it
  }
  ASSERT_EQ(t.reader, t.ring.tail());
  // The space is reclaimed: POS is free space of the next lap now.
  ASSERT_TRUE(t.ring.reclaim(pos + t.ring.capacity(), 1, &TestRing::gate, &t, test_alive));
  ASSERT_GT(t.ring.cleaned(), pos);
  ASSERT_LT(t.ring.tail(), pos + t.ring.capacity());
  // What POS's index holds now, for the next lap: the stalled reader must leave it so.
  g_word_after_lap = reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(pos))->load();
}

TEST(RecordRing, AStalledUnblockDoesNotWritePaddingIntoSpaceReclaimedMeanwhile) {
  TestRing t(4096, 4, 1024);
  for (int i = 0; i < 10; ++i) ASSERT_NE(t.publish(0, 100, 1, i), kNoIntent);
  while (t.next()) {
  }
  // A claimer killed between marking its claim and moving the tail, moved past by the next
  // producer, whose record follows it.
  const std::uint64_t t0 = mark_claim_at_tail(t, 2, kHeaderBytes + 24);
  ASSERT_EQ(t.publish(1, 8, 1, 100), t0 + 64);
  g_dead[3] = true;
  g_stalled_ring = &t;
  RecordRing::set_unblock_hook(&lap_the_ring_while_a_reader_stalls);
  (void)t.ring.unblock(t0, 4, test_alive);  // stalls in the hook while the ring moves on
  RecordRing::set_unblock_hook(nullptr);
  ASSERT_EQ(g_stalled_at, t0) << "the hook did not run";
  const std::uint64_t word = reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(t0))->load();
  EXPECT_EQ(word, g_word_after_lap) << "the stalled reader wrote into space reused since";
  // Producers and the reader go on across the spot, losing nothing.
  std::uint64_t seq = 200, expect = 200;
  for (int i = 0; i < 100; ++i) {
    ASSERT_NE(t.publish(0, 56, 4, seq++), kNoIntent);
    const RecordHeader* h = t.next();
    ASSERT_NE(h, nullptr) << "record " << expect << " was skipped";
    ASSERT_EQ(h->seq, expect++);
  }
}

// --- ring v3 claim protocol, issue 12 item 1: a claimer stopped inside try_claim() (the test hook
// of crash-point builds) while a peer, in the hook, does what the SPIN model's counterexamples do.
#ifdef SHMQ_CRASH_POINTS
std::function<void(ClaimStep, std::uint32_t, std::uint64_t)> g_claim_step;
void run_claim_step(ClaimStep step, std::uint32_t i, std::uint64_t t) {
  if (g_claim_step) g_claim_step(step, i, t);
}
// Installs FN as the claim hook for one scope; FN runs once (the first call that it accepts).
struct ClaimHook {
  explicit ClaimHook(std::function<bool(ClaimStep, std::uint32_t, std::uint64_t)> fn) {
    g_claim_step = [fn = std::move(fn)](ClaimStep s, std::uint32_t i, std::uint64_t t) {
      if (fn(s, i, t)) g_claim_step = nullptr;  // done: later steps run unhooked
    };
    g_claim_hook = &run_claim_step;
  }
  ~ClaimHook() {
    g_claim_hook = nullptr;
    g_claim_step = nullptr;
  }
};
#define NEEDS_CLAIM_HOOK() ((void)0)
#else
#define NEEDS_CLAIM_HOOK() GTEST_SKIP() << "needs -DSHMQ_CRASH_POINTS=ON (the claim hook)"
#endif

// Finding 1 (ABA): claimer 0 loaded the free word W at the tail and stalls before its frame CAS;
// claimer 1 claims there and commits a record whose frame equals W in value (freed space holds
// anything: here, exactly that frame). Claimer 0's CAS from W must fail over the committed record.
TEST(RecordRing, AStalledFrameCasFailsOverACommittedFrameEqualToTheWordItLoaded) {
  NEEDS_CLAIM_HOOK();
#ifdef SHMQ_CRASH_POINTS
  TestRing t(4096);
  const auto len = static_cast<std::uint32_t>(kHeaderBytes + 8);
  const std::uint64_t t0 = t.ring.tail();
  const std::uint64_t w = Frame::pack(len, RecordType::Data, 1, t.ring.claimer(1).epoch.load(), 0);
  reinterpret_cast<std::atomic<std::uint64_t>*>(t.ring.at(t0))->store(w);
  int hooked = 0;
  ClaimHook hook([&](ClaimStep s, std::uint32_t i, std::uint64_t at) {
    if (s != ClaimStep::BeforeFrameCas || i != 0 || at != t0) return false;
    ++hooked;
    EXPECT_EQ(t.publish(1, 8, 1, 77), t0);  // the peer's record, committed at T
    return true;
  });
  const std::uint64_t pos = t.ring.try_claim(0, len, t.hint);
  ASSERT_EQ(hooked, 1) << "the hook did not run";
  ASSERT_NE(pos, kNoIntent);
  EXPECT_NE(pos, t0) << "claimer 0 claimed over claimer 1's committed record";
  if (pos != t0) {
    auto* h = reinterpret_cast<RecordHeader*>(t.ring.at(pos));
    h->producer = 0;
    h->seq = 5;
    h->key_len = 0;
    t.ring.commit(pos, len, RecordType::Data, 0);
  }
  const RecordHeader* a = t.next();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->seq, 77u);
  const RecordHeader* b = t.next();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->seq, 5u);
#endif
}

// Finding 3: claimer 0 marked its claim and stalls before its tail CAS; a peer moves the tail past
// the claim for it (claim_in_progress) and claims on. Claimer 0's tail CAS then sees the tail past
// its END: helped, the claim is its own (not claim_lost: nothing hostile happened).
TEST(RecordRing, AClaimerHelpedPastItsClaimKeepsItWhenPeersClaimedOn) {
  NEEDS_CLAIM_HOOK();
#ifdef SHMQ_CRASH_POINTS
  TestRing t(4096);
  const auto len = static_cast<std::uint32_t>(kHeaderBytes + 8);
  const std::uint64_t t0 = t.ring.tail();
  int hooked = 0;
  ClaimHook hook([&](ClaimStep s, std::uint32_t i, std::uint64_t at) {
    if (s != ClaimStep::AfterFrameCas || i != 0) return false;
    ++hooked;
    EXPECT_EQ(t.publish(1, 8, 1, 9), at + 48) << "the peer claims after claimer 0's marked claim";
    EXPECT_EQ(t.ring.tail(), at + 96);
    return true;
  });
  const std::uint64_t pos = t.ring.try_claim(0, len, t.hint);
  ASSERT_EQ(hooked, 1) << "the hook did not run";
  ASSERT_EQ(pos, t0) << "a helped claim was given up (claim_lost on an honest ring)";
  auto* h = reinterpret_cast<RecordHeader*>(t.ring.at(pos));
  h->producer = 0;
  h->seq = 5;
  h->key_len = 0;
  t.ring.commit(pos, len, RecordType::Data, 0);
  const RecordHeader* a = t.next();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->seq, 5u);
  const RecordHeader* b = t.next();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->seq, 9u);
#endif
}

// Finding 4: claimer 0 passed its tail re-check at T and stalls before its frame CAS while a peer
// claims T and the ring laps; a lap later T's index is a zero payload word, the very word claimer 0
// loaded. Reclaim must not free T while its claimer lives (intent published until commit), so the
// stalled CAS can never land on a later lap's record.
TEST(RecordRing, ReclaimNeverFreesThePositionALiveClaimerIsAboutToMark) {
  NEEDS_CLAIM_HOOK();
#ifdef SHMQ_CRASH_POINTS
  TestRing t(4096, 4, 1024);
  ASSERT_EQ(t.publish(2, 24, 1, 0), 0u);  // 64 bytes: the tail is at 64, mid-lap
  ASSERT_NE(t.next(), nullptr);
  const std::uint64_t t0 = t.ring.tail();
  ASSERT_EQ(t0, 64u);
  const auto len = static_cast<std::uint32_t>(kHeaderBytes + 8);
  std::uint64_t max_cleaned = 0, published = 0;
  int hooked = 0;
  ClaimHook hook([&](ClaimStep s, std::uint32_t i, std::uint64_t at) {
    if (s != ClaimStep::BeforeFrameCas || i != 0 || at != t0) return false;
    ++hooked;
    // 128-byte records of zero payload, read as they come: a lap later T's index is payload.
    for (int n = 0; n < 80 && t.ring.tail() < t0 + 4096 + 256; ++n) {
      if (t.publish(1, 88, 0, 100 + published) == kNoIntent) break;
      ++published;
      max_cleaned = std::max(max_cleaned, t.ring.cleaned());
      while (t.next()) {
      }
    }
    return true;
  });
  const std::uint64_t pos = t.ring.try_claim(0, len, t.hint);
  ASSERT_EQ(hooked, 1) << "the hook did not run";
  EXPECT_GT(published, 10u);
  EXPECT_LE(max_cleaned, t0) << "reclaim freed the position a live claimer was about to mark";
  EXPECT_NE(pos, t0);
  // Whatever the peer committed past a lap is intact: its payload words are still zero.
  for (std::uint64_t p = 4096; p + 128 <= t.ring.tail() && p < 4096 + 256; p += 128) {
    const auto* body = reinterpret_cast<const std::uint8_t*>(t.ring.at(p)) + kHeaderBytes;
    for (int b = 0; b < 88; ++b) ASSERT_EQ(body[b], 0) << "record at " << p << " overwritten at byte " << b;
  }
  if (pos != kNoIntent) t.ring.commit(pos, len, RecordType::Padding, 0);
#endif
}

// The rule of finding 4 keeps a live claimer's intent even before its marker is stored; a dead
// claimer's intent with no marker makes no more stores and must not hold the ring for ever.
TEST(RecordRing, ReclaimKeepsALiveClaimersIntentAndIgnoresADeadOnesWithNoMarker) {
  TestRing t(4096, 4, 1024);
  for (int i = 0; i < 4; ++i) ASSERT_NE(t.publish(0, 100, 1, i), kNoIntent);
  const std::uint64_t at = t.ring.tail();
  t.ring.claimer(2).intent.store(at);  // claimer 2 published its intent, no marker yet
  for (int i = 0; i < 4; ++i) ASSERT_NE(t.publish(0, 100, 1, 4 + i), kNoIntent);
  while (t.next()) {
  }
  ASSERT_GT(t.reader, at);
  (void)t.ring.reclaim(t.ring.tail() + t.ring.capacity(), 1, &TestRing::gate, &t, test_alive);
  EXPECT_EQ(t.ring.cleaned(), at) << "a live claimer's intent was freed under it";
  g_dead[3] = true;  // claimer 2 (token 3) dies before its frame CAS
  (void)t.ring.reclaim(t.ring.tail() + t.ring.capacity(), 1, &TestRing::gate, &t, test_alive);
  EXPECT_EQ(t.ring.cleaned(), t.reader) << "a dead claimer's intent with no marker held the ring";
}

// Several producer threads, one reader: every record arrives once, each producer's in order.
// ---- the asymmetric fence of the claim intent (register_cheap_intents, heavy_fence) ----------

using shmq::test::fork_child;
using shmq::test::kChildOk;
using shmq::test::wait_child;

bool kernel_offers_global_expedited() {
  const long mask = ::syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0u, 0);
  return mask >= 0 && (mask & MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0 && (mask & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0;
}

std::uint32_t plain_intents_of(const TestRing& t) { return reinterpret_cast<const RingHeader*>(t.mem.get())->plain_intents.load(); }

// Publishes until the ring is full (publish()'s own reclaim frees nothing: nothing is read yet),
// then reads everything: what is left to reclaim is the whole ring.
void fill_and_drain(TestRing& t) {
  for (std::uint64_t seq = 0; t.publish(0, 64, static_cast<std::uint8_t>(seq), seq) != kNoIntent; ++seq) {
  }
  while (t.next() != nullptr) {
  }
}

// Where the kernel has MEMBARRIER_CMD_GLOBAL_EXPEDITED, a process registers at its first ring and
// stores its intents plainly, and says so in the ring's header (a reclaimer elsewhere must fence).
// A child of fork() keeps the registration (the kernel copies it with the address space) and
// reclaims with the fence.
TEST(RecordRing, AProcessRegistersForMembarrierAtItsFirstRingAndAForkedChildKeepsIt) {
  const bool offered = kernel_offers_global_expedited();
  TestRing t(1 << 16, 2);
  EXPECT_EQ(g_cheap_intents.load(), offered);
  EXPECT_EQ(plain_intents_of(t), offered ? 1u : 0u);
  fill_and_drain(t);
  EXPECT_TRUE(t.ring.reclaim(t.ring.cleaned() + (1 << 16) + 8, 1, &TestRing::gate, &t, test_alive));
  EXPECT_EQ(t.ring.cleaned(), t.reader) << "a registered reclaimer frees up to the gate";
  const pid_t child = fork_child([&] {
    CHILD_CHECK(g_cheap_intents.load() == offered);
    CHILD_CHECK(heavy_fence());
    fill_and_drain(t);
    CHILD_CHECK(t.ring.reclaim(t.ring.cleaned() + (1 << 16) + 8, 1, &TestRing::gate, &t, test_alive));
    CHILD_CHECK(t.ring.cleaned() == t.reader);
    return kChildOk;
  });
  ASSERT_TRUE(wait_child(child, std::chrono::seconds(20)).ok());
}

// A process whose membarrier calls fail (a seccomp filter; the grandchild below plays one whose
// registration failed: it inherited this process's, so its flag is cleared by hand) stores its
// intents seq_cst and still publishes; it reclaims a ring on which no
// process stores intents plainly (the seq_cst stores and loads are the fence), and refuses to
// reclaim one on which another process does: it cannot make that process's plain store visible.
TEST(RecordRing, AProcessWithoutMembarrierPublishesAndReclaimsOnlyWhereNoIntentIsPlain) {
  if (!kernel_offers_global_expedited()) GTEST_SKIP() << "the kernel has no MEMBARRIER_CMD_GLOBAL_EXPEDITED: nothing to refuse";
  TestRing plain(1 << 16, 2);  // made by this (registered) process: plain_intents is 1
  ASSERT_EQ(plain_intents_of(plain), 1u);
  const pid_t child = fork_child([&] {
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_membarrier, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
    CHILD_CHECK(::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
    CHILD_CHECK(::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0);
    const pid_t grandchild = fork_child([&] {
      g_cheap_intents.store(false);  // as if its registration had failed: seq_cst intents
      CHILD_CHECK(!heavy_fence());
      TestRing own(1 << 16, 2);               // made here: nobody stores intents plainly
      CHILD_CHECK(plain_intents_of(own) == 0);
      fill_and_drain(own);
      CHILD_CHECK(own.ring.reclaim(own.ring.cleaned() + (1 << 16) + 8, 1, &TestRing::gate, &own, test_alive));
      CHILD_CHECK(own.ring.cleaned() == own.reader);
      fill_and_drain(plain);  // publishes go through; the reclaim is refused
      const std::uint64_t before = plain.ring.cleaned();
      CHILD_CHECK(!plain.ring.reclaim(plain.ring.cleaned() + (1 << 16) + 8, 1, &TestRing::gate, &plain, test_alive));
      CHILD_CHECK(plain.ring.cleaned() == before);
      return kChildOk;
    });
    CHILD_CHECK(wait_child(grandchild, std::chrono::seconds(20)).ok());
    return kChildOk;
  });
  ASSERT_TRUE(wait_child(child, std::chrono::seconds(30)).ok());
}

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
  auto gate_fn = [](void* c, std::uint64_t) { return static_cast<Ctx*>(c)->gate->load(std::memory_order_acquire); };
  // A claim protocol that loses a record or wedges the ring must fail the test, not hang it: the
  // reader gives up at a deadline and tells the producers to stop.
  std::atomic<bool> stop{false};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::vector<std::thread> threads;
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      std::uint64_t hint = 0;
      std::mt19937 rng(p);
      for (std::uint64_t seq = 0; seq < kPerProducer && !stop.load(std::memory_order_relaxed); ++seq) {
        const auto payload = static_cast<std::uint32_t>(rng() % 300);
        const auto len = static_cast<std::uint32_t>(kHeaderBytes + payload);
        std::uint64_t pos;
        while ((pos = t.ring.try_claim(p, len, hint)) == kNoIntent) {
          if (stop.load(std::memory_order_relaxed)) return;
          if (!t.ring.reclaim(t.ring.claim_end(t.ring.tail(), len), p + 1, gate_fn, &ctx, test_alive)) std::this_thread::yield();
        }
        // As the producer does (shm/producer.cpp): the record's bytes are written with relaxed
        // atomics (store_shared, copy_in; plain stores outside TSan). Freed space is not zeroed, and
        // a claimer that loaded an old tail may load, or CAS and fail on, a word of a later lap
        // there (its re-check of the tail then stops it): atomic accesses, which TSan reports as a
        // race against plain ones (it counts a failed CAS as a write).
        auto* h = reinterpret_cast<RecordHeader*>(t.ring.at(pos));
        store_shared(h->producer, static_cast<std::uint64_t>(p));
        store_shared(h->seq, seq);
        store_shared(h->key_len, 0u);
        std::vector<std::uint8_t> fill(payload, static_cast<std::uint8_t>(seq & 0xff));
        copy_in(reinterpret_cast<std::byte*>(h) + kHeaderBytes, fill.data(), payload);
        t.ring.commit(pos, len, RecordType::Data, p);
      }
    });
  }
  std::vector<std::uint64_t> expect(kProducers, 0);
  std::uint64_t total = 0, pos = 0;
  // The checks below stop the producers before they return, so that the threads can be joined.
  struct StopAndJoin {
    std::atomic<bool>& stop;
    std::vector<std::thread>& threads;
    ~StopAndJoin() {
      stop.store(true);
      for (auto& th : threads) th.join();
    }
  } joiner{stop, threads};
  while (total < kProducers * kPerProducer) {
    const ReadResult r = t.ring.read(pos);
    if (r.kind == ReadResult::Empty || r.kind == ReadResult::Pending) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
          << "no record at " << pos << " for 60 s after " << total << " of " << kProducers * kPerProducer;
      std::this_thread::yield();
      continue;
    }
    ASSERT_NE(r.kind, ReadResult::Corrupt) << r.why;
    if (r.kind == ReadResult::Record) {
      const RecordHeader* h = r.header;
      const std::uint64_t producer = load_shared(h->producer), seq = load_shared(h->seq);
      ASSERT_LT(producer, static_cast<std::uint64_t>(kProducers));
      ASSERT_EQ(seq, expect[producer]) << "producer " << producer;
      const std::uint32_t n = r.length - static_cast<std::uint32_t>(kHeaderBytes);
      std::vector<std::uint8_t> body(n);
      copy_out(body.data(), reinterpret_cast<const std::byte*>(h) + kHeaderBytes, n);
      for (std::uint32_t i = 0; i < n; ++i) ASSERT_EQ(body[i], seq & 0xff);
      ++expect[producer];
      ++total;
    }
    pos = r.next;
    gate.store(pos, std::memory_order_release);
  }
  for (int p = 0; p < kProducers; ++p) EXPECT_EQ(expect[p], kPerProducer);
}

}  // namespace

// The multi-producer record ring: variable-length records over a byte region in shared memory.
//
// Contract. Any number of producers (in any processes) claim space at the tail (a claim marker
// stored by CAS, then a CAS on `tail`), write their record, and commit it by storing its frame word
// last (release). Readers (any number, each
// with its own position) read committed records in ring order and never write them, except to turn
// the claim of a dead producer into padding. The ring knows bytes, positions and claimers only:
// who may reuse space is told by the caller through a gate function (the lowest position anybody
// still needs), and who is alive through a liveness function over owner tokens.
//
// Positions are absolute 64-bit byte offsets that never wrap; index = position & (capacity - 1).
// Positions in [cleaned, tail) hold records; the bytes of [tail, cleaned + capacity) are free and
// hold whatever an earlier lap left there: freed space is never zeroed. Frame words carry the lap
// of their position (Aeron's term ids are the model), and a claim is marked at the tail (a CAS
// from the stale word) before the tail moves past it, so that every position below the tail that a
// reader reaches holds a frame of this lap; at or past the tail nothing is read, whatever is there.
// Reclaiming space is a store of `cleaned` (a record boundary no reader, journal or live claim
// needs any more), under a lock whose dead holder is detected.
//
// A record, at an 8-byte aligned position, never straddles the end of the buffer (padding fills
// the gap):
//
//   0                               8               16              24              32      36      40
//   +-------------------------------+---------------+---------------+---------------+-------+-------+---..
//   | len 30|typ 2|clm 12|ep 11|tg 1|lap 8| producer id   | sequence      | timestamp ns  |key len| rsvd  | key, payload
//   +-------------------------------+---------------+---------------+---------------+-------+-------+---..
//   \____ frame word (atomic u64) _/
//   typ: Claimed (the claim marker: len is the frame length being written), Data (committed: len is
//   the frame length, header + key + payload, unaligned; the record occupies align8(len) bytes) or
//   Padding (len bytes skipped; the frame word alone). clm/epoch: the claimer slot and the low 11
//   bits of its epoch, so that a reader can tell whether the claimer is alive. tg: the claim's
//   toggle (readers ignore it): a claimer that loaded the word W at T marks T with the toggle NOT
//   W's, and every frame stored at T for that claim (marker, commit, padding) carries it, so that no
//   frame stored at T during this lap equals W and a stalled CAS expecting W fails (no ABA).
//   lap: the low 8 bits of position / capacity.
//
// Everything the ring reads from its header and its frames is hostile input (any process that
// maps the segment can write it): positions are checked for alignment and against the tail,
// `cleaned` and the lap before they are followed (read() says Empty or Corrupt, unblock() and
// reclaim() decline), and every scan is bounded by a lap, a count of our own.
//
// A claimer that dies after marking its claim and before moving the tail blocks nobody: the next
// claimer finds its marker at the tail, sees in the dead claimer's slot that this is its claim in
// progress, and moves the tail past it; a reader then finds the marker of a dead claimer and turns
// it into padding (unblock()), as for a claimer that dies before committing.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ringbuffer/shared_bytes.hpp"
#include "shm/crash_point.hpp"  // test builds: named points where a process may die

namespace shmq::ring {

// Tests only (builds with -DSHMQ_CRASH_POINTS=ON; nothing at all elsewhere): called inside
// try_claim() at the named step of claimer I's claim of T, so that a test can play a peer (or lap
// the ring) while the claimer is stopped there. Not for production use.
enum class ClaimStep { BeforeFrameCas, AfterFrameCas };
#ifdef SHMQ_CRASH_POINTS
inline void (*g_claim_hook)(ClaimStep step, std::uint32_t i, std::uint64_t t) = nullptr;
#define SHMQ_CLAIM_HOOK(step, i, t) \
  do {                               \
    if (::shmq::ring::g_claim_hook) ::shmq::ring::g_claim_hook(step, i, t); \
  } while (0)
#else
#define SHMQ_CLAIM_HOOK(step, i, t) \
  do {                               \
  } while (0)
#endif

// The asymmetric fence of the claim intent (the Dekker pair "claimer: store intent, load tail" /
// "reclaim: load tail, load intents"). The claimer's side is the hot path of every publish: a
// seq_cst store there (xchg, which drains the store buffer) cost 3-4x of the 64 B throughput
// (3.7 M msgs/s against 12.8-15.4 with a plain store, bench/pingpong, same run). So a process that
// could register for membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) stores its intent plainly
// and the rare side, reclaim (when a claim finds no room: about once a lap while the readers keep
// up), pays instead:
// membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) between its tail load and its intent loads makes every
// registered thread that is running pass a full barrier, so either a claimer's intent store is
// visible to the intent loads, or that claimer's tail re-check comes after the barrier and sees the
// tail reclaim saw (past T: it makes no CAS at T). A process that could not register keeps the
// seq_cst store. register_cheap_intents(): asks once per process, at the first ring made (a child of
// fork() keeps the registration, exec drops it; SHMQ_NO_MEMBARRIER=1 opts out); g_cheap_intents says
// whether this process registered. Every process of a channel needs membarrier, or none: a producer
// whose own membarrier fails cannot reclaim space on a ring where others store intents plainly.
// heavy_fence(): what reclaim calls; false when no membarrier command worked (then reclaim frees
// nothing this time: a claimer of another process may have stored its intent plainly).
inline std::atomic<bool> g_cheap_intents{false};
void register_cheap_intents() noexcept;
bool heavy_fence() noexcept;

inline constexpr std::uint64_t kRingMagic = 0x474e4952514d4853ull;  // "SHMQRING"
inline constexpr std::uint32_t kRingVersion = 4;  // 4: plain intents under membarrier (plain_intents); 3: lap-tagged frames, claim markers
inline constexpr std::size_t kAlign = 8;
inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::uint32_t kMaxClaimers = 4096;  // 12 bits in the frame word
inline constexpr std::uint64_t kNoIntent = ~0ull;
inline constexpr std::uint32_t kClaimRounds = 1u << 16;  // a claim's tries before try_claim() gives up

constexpr std::uint64_t align_up(std::uint64_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

enum class RecordType : std::uint8_t { None = 0, Data = 1, Padding = 2, Claimed = 3 };

// Frame words carry the lap of the position they were written for (the low 8 bits of
// position / capacity): a frame left from an earlier lap at the same index is told from this lap's.
inline constexpr unsigned kLapBits = 8;

// The frame word, packed: length (30 bits) | type (2 bits) | claimer (12 bits) | epoch (11 bits) |
// toggle (1 bit) | lap (8 bits). Length: Data, the frame length (header + key + payload, unaligned; the record
// occupies align8(length) bytes); Padding, the bytes skipped (aligned); Claimed, the frame length
// being written. Claimed is the claim marker, Data and Padding are committed. A word of 0 is no frame.
struct Frame {
  std::uint32_t length;
  RecordType type;
  std::uint16_t claimer;
  std::uint16_t epoch;
  std::uint8_t lap;
  std::uint8_t toggle;

  static constexpr unsigned kToggleShift = 55;
  static constexpr std::uint64_t pack(std::uint32_t length, RecordType type, std::uint32_t claimer,
                                      std::uint32_t epoch, std::uint32_t lap = 0, std::uint32_t toggle = 0) {
    return (length & 0x3fffffffu) | (std::uint64_t(static_cast<std::uint8_t>(type) & 0x3) << 30) |
           (std::uint64_t(claimer & 0xfff) << 32) | (std::uint64_t(epoch & 0x7ff) << 44) |
           (std::uint64_t(toggle & 1) << kToggleShift) | (std::uint64_t(lap & 0xff) << 56);
  }
  static constexpr Frame unpack(std::uint64_t w) {
    return Frame{static_cast<std::uint32_t>(w & 0x3fffffffu), static_cast<RecordType>((w >> 30) & 0x3),
                 static_cast<std::uint16_t>((w >> 32) & 0xfff), static_cast<std::uint16_t>((w >> 44) & 0x7ff),
                 static_cast<std::uint8_t>(w >> 56), static_cast<std::uint8_t>((w >> kToggleShift) & 1)};
  }
  // The toggle a claim of a position holding W takes: not W's.
  static constexpr std::uint32_t toggle_over(std::uint64_t w) { return static_cast<std::uint32_t>(((w >> kToggleShift) & 1) ^ 1); }
  static constexpr std::uint32_t toggle_of(std::uint64_t w) { return static_cast<std::uint32_t>((w >> kToggleShift) & 1); }
};
inline constexpr std::uint32_t kEpochMask = 0x7ff;
inline constexpr std::uint32_t kMaxFrameLength = 0x3fffffffu;

struct RecordHeader {
  std::atomic<std::uint64_t> frame;
  std::uint64_t producer;
  std::uint64_t seq;
  std::uint64_t timestamp_ns;
  std::uint32_t key_len;
  std::uint32_t reserved;
};
inline constexpr std::size_t kHeaderBytes = 40;
static_assert(sizeof(RecordHeader) == kHeaderBytes);
static_assert(std::is_standard_layout_v<RecordHeader>);
static_assert(offsetof(RecordHeader, producer) == 8 && offsetof(RecordHeader, key_len) == 32);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct alignas(kCacheLine) RingHeader {
  std::uint64_t magic;           // "SHMQRING"
  std::uint32_t version;
  std::uint32_t claimers;        // entries in the claimer table that follows this header
  std::uint64_t capacity;        // bytes of the data region, power of two
  std::uint64_t data_offset;     // from the start of this header
  std::uint64_t max_frame;       // largest frame length a producer may claim
  alignas(kCacheLine) std::atomic<std::uint64_t> tail;        // next position to claim
  alignas(kCacheLine) std::atomic<std::uint64_t> cleaned;     // below: needed by nobody, free to reuse
  alignas(kCacheLine) std::atomic<std::uint64_t> clean_lock;  // owner token of the reclaimer; 0 free
  std::atomic<std::uint32_t> plain_intents;                   // 1 (for good) once a process stores intents plainly (g_cheap_intents)
  alignas(kCacheLine) std::atomic<std::uint32_t> data_seq;    // futex word: bumped when data arrives for a waiter
  std::atomic<std::uint32_t> data_waiters;                    // readers blocked on data_seq
  alignas(kCacheLine) std::atomic<std::uint32_t> space_seq;   // futex word: bumped when space may have freed
  std::atomic<std::uint32_t> space_waiters;                   // producers blocked on space_seq
};
static_assert(std::is_standard_layout_v<RingHeader>);
static_assert(offsetof(RingHeader, tail) % kCacheLine == 0);
static_assert(offsetof(RingHeader, cleaned) % kCacheLine == 0);
static_assert(offsetof(RingHeader, data_seq) % kCacheLine == 0);
static_assert(offsetof(RingHeader, space_seq) % kCacheLine == 0);

struct alignas(kCacheLine) ClaimerSlot {
  // The claim this claimer is making: its position (the tail it claims from; kNoIntent when none)
  // and the frame word it stores there by CAS (a claim marker, or a padding frame at the end of the
  // ring). Published before the claimer's tail re-check (intent: seq_cst, pairs with reclaim()'s
  // seq_cst loads of the tail and then of intent) and kept until the claim's commit (commit() clears
  // intent after the frame; a try_claim() that returns kNoIntent clears it too): a peer that finds a
  // frame naming this claimer at the tail tells a claim in progress (the slot says that position and
  // that word) from a stale word, and reclaim() never frees the position of a live claimer's intent,
  // so that its frame CAS can never land on the same index a lap later.
  std::atomic<std::uint64_t> intent;
  std::atomic<std::uint64_t> claim_frame;
  std::atomic<std::uint64_t> owner;   // owner token of the process using this slot; 0 when unowned
  std::atomic<std::uint32_t> epoch;   // bumped at every change of owner
  std::uint32_t reserved;
  // Position + 1 of the highest claim of this slot that a reader turned into padding because its
  // claimer was dead (0: none). Stored before the padding frame, so that whoever finds the space
  // reclaimed can tell a dead claim from a committed record (the producer's takeover does).
  std::atomic<std::uint64_t> padded;
};
static_assert(sizeof(ClaimerSlot) == kCacheLine);

// The lowest position still needed by a reader; ring space below it may be reused. ENOUGH: the
// caller can use any answer at or above it (a cheaper, lower answer will do), and frees nothing
// when the answer is below it.
using GateFn = std::uint64_t (*)(void* ctx, std::uint64_t enough);
// Is the process with this owner token alive?
using AliveFn = bool (*)(std::uint64_t owner_token);

// A lock word holding its owner's token (0 when free) whose dead owner is replaced: spins, then
// yields; every few hundred microseconds asks ALIVE about the holder and takes the lock from a dead
// one. For short critical sections whose work a successor can redo (zeroing, table updates).
void lock_owner_word(std::atomic<std::uint64_t>& word, std::uint64_t owner, AliveFn alive) noexcept;
inline void unlock_owner_word(std::atomic<std::uint64_t>& word) noexcept {
  word.store(0, std::memory_order_release);  // pairs with the acquire CAS in lock_owner_word()
}

// A record's header fields, each read once from shared memory (load_record()): what is checked is
// what is used, whatever another process writes there meanwhile.
struct RecordFields {
  std::uint64_t producer, seq, timestamp_ns;
  std::uint32_t key_len;
  std::uint32_t payload_len;  // the frame length less the header and the key
};

// What a reader finds at a position.
struct ReadResult {
  enum Kind { Empty, Pending, Record, Padding, Corrupt } kind;
  std::uint64_t next;              // position after this record (Record, Padding)
  const RecordHeader* header;      // Record only: not read yet (see load_record)
  const char* why;                 // Corrupt only
  std::uint32_t length;            // frame length (Record, Padding)
};

class RecordRing {
 public:
  // Bytes a ring of this capacity and claimer count occupies (header, claimer table, data).
  static std::size_t region_bytes(std::size_t capacity, std::uint32_t claimers);
  // Lays a ring out over zeroed memory.
  static void initialize(void* region, std::size_t capacity, std::uint32_t claimers, std::size_t max_frame);
  // Checks the header of a ring found in REGION_BYTES of untrusted memory; nullptr when sound,
  // otherwise what is wrong.
  static const char* validate(const void* region, std::size_t region_bytes);

  RecordRing() = default;
  // Over a ring this process laid out (initialize()): its geometry is read from its header.
  explicit RecordRing(void* region);
  // Over a ring in shared memory whose header validate() accepted: CAPACITY, CLAIMERS and
  // MAX_FRAME are the caller's validated copies; the live header's geometry is never read.
  RecordRing(void* region, std::uint64_t capacity, std::uint32_t claimers, std::uint64_t max_frame);

  std::uint64_t capacity() const noexcept { return capacity_; }
  std::uint64_t max_frame() const noexcept { return max_frame_; }
  RingHeader& header() const noexcept { return *hdr_; }
  // A hint, no load or store: asks for the tail's line and the line of the frame at HINT (where
  // this claimer expects its next claim) for writing, so that the claim's two locked steps on lines
  // a spinning consumer reads (the frame word, the tail) wait for one transfer rather than two in a
  // row. A stale HINT costs only a wasted fetch.
  void prefetch_claim(std::uint64_t hint) const noexcept {
    __builtin_prefetch(&hdr_->tail, 1, 3);
    __builtin_prefetch(data_ + (hint & mask_), 1, 3);
  }
  std::uint32_t claimers() const noexcept { return claimer_count_; }
  ClaimerSlot& claimer(std::uint32_t i) const noexcept { return claimers_[i]; }
  std::byte* at(std::uint64_t position) const noexcept { return data_ + (position & mask_); }
  std::uint64_t tail() const noexcept { return hdr_->tail.load(std::memory_order_acquire); }
  std::uint64_t cleaned() const noexcept { return hdr_->cleaned.load(std::memory_order_acquire); }
  // Whether POS was claimed (the tail is past it). Refreshes the tail read() relies on: a position
  // below the tail whose word is no frame of this lap then reads as Corrupt, not Empty.
  bool claimed(std::uint64_t pos) const noexcept {
    const std::uint64_t t = tail();
    tail_seen_.store(t, std::memory_order_release);
    return t > pos;
  }

  // --- claimers -----------------------------------------------------------------------------
  // Takes claimer slot I for OWNER (a new epoch: claims of the previous owner read as dead).
  void adopt_claimer(std::uint32_t i, std::uint64_t owner) noexcept;
  void release_claimer(std::uint32_t i) noexcept;
  // Sets plain_intents in the header if this process stores intents plainly (the constructors call it).
  void note_plain_intents() noexcept;

  // Claims FRAME_LEN bytes (header included) for claimer I. Returns the record's position, or
  // kNoIntent when the ring has no room below cleaned + capacity (call reclaim and try again).
  // CLEANED_HINT caches `cleaned` across calls (the caller's copy; refreshed here when short).
  // (always inlined: the hot path of every publish; the checks of a hostile tail are out of line.)
  //
  // The claim of position T (the tail) is made in two steps, so that no word below the tail is ever
  // one left from an earlier lap: (1) the claimer loads the word W at T, publishes T and its claim
  // marker (toggle: not W's, see Frame) in its slot, re-checks the tail, and stores the marker at T
  // with a CAS from W (a word of an earlier lap: freed space is never zeroed); (2) it moves the tail
  // past its claim with a CAS (failing on a tail at or past END: a peer helped, the claim is ours).
  // The slot's intent stays published until commit(), and reclaim() never frees it while the
  // claimer lives: the frame CAS cannot land on the same index a lap later. A peer that finds a claim marker
  // at the tail whose claimer's slot names that position and that word (claim_in_progress()) moves
  // the tail past it for that claimer instead of waiting (a claimer that stalls or dies between the
  // two steps blocks nobody); any other word at the tail is stale and is replaced. At the end of the
  // ring the claim is first a padding frame up to the end (committed as it is stored), then the
  // record's claim at the start of the next lap.
  //
  // ALONE: the caller is the ring's only live claimer and stays so while it claims (an exclusive
  // producer: ProducerOptions::exclusive; the channel refuses every other producer while it
  // lives). Nobody else moves the tail or marks at it, so the claim is made with plain stores, no
  // locked instruction: intent, then the marker at T (release: after the slot, for a successor's
  // claim_in_progress()), then the tail (release: a reader that sees it past T sees the marker, a
  // reclaim that sees it sees the intent, so reclaim needs no fence against this claim either).
  // A claim marker of this lap already at T (a claimer that died between its marker and its tail
  // CAS before this one joined, or a stale word that looks like one) is left to the shared path.
  template <bool Alone = false>
  [[gnu::always_inline]] std::uint64_t try_claim(std::uint32_t i, std::uint32_t frame_len, std::uint64_t& cleaned_hint) noexcept {
    const std::uint64_t need = align_up(frame_len);
    ClaimerSlot& me = claimers_[i];
    const std::uint32_t epoch = me.epoch.load(std::memory_order_relaxed);
    // acquire: pairs with the CAS that moved the tail here: the frames below it are visible.
    std::uint64_t t = hdr_->tail.load(std::memory_order_acquire);
    // Bounded: every failed round is a peer's claim going through, or a hostile word; a caller that
    // gets kNoIntent reclaims and tries again until its timeout.
    for (std::uint32_t round = 0; round < kClaimRounds; ++round) {
      // The tail comes from shared memory: one that is not a record boundary, or below the space
      // known to be reclaimed, is not claimed from (a frame at a misaligned index would cross the
      // end of the region). The caller's reclaim() refuses such a ring too, so it times out.
      if ((t % kAlign != 0 || t < cleaned_hint) && !tail_usable(t, cleaned_hint)) [[unlikely]]
        return no_claim(me);
      const std::uint64_t to_end = capacity_ - (t & mask_);
      const bool wrap = need > to_end;
      const std::uint64_t end = t + (wrap ? to_end : need);
      if (end > cleaned_hint + capacity_) {
        // acquire: pairs with the release store of `cleaned` in reclaim(): readers are done there.
        cleaned_hint = hdr_->cleaned.load(std::memory_order_acquire);
        if (end > cleaned_hint + capacity_) return no_claim(me);
      }
      std::atomic<std::uint64_t>& word = frame_at(t);
      // acquire: a claim marker stored by a peer's CAS comes with that peer's slot (its stores before it).
      std::uint64_t w = word.load(std::memory_order_acquire);
      // The toggle is not W's: no frame this claim stores at T (marker, commit, padding) equals W,
      // so no CAS expecting W (ours, or a stalled peer's) succeeds over it (ABA); and MINE != W.
      const std::uint32_t toggle = Frame::toggle_over(w);
      const std::uint64_t mine = wrap ? Frame::pack(static_cast<std::uint32_t>(to_end), RecordType::Padding, i, epoch, lap_of(t), toggle)
                                      : Frame::pack(frame_len, RecordType::Claimed, i, epoch, lap_of(t), toggle);
      // (Only a frame of this lap naming a claimer can be one in progress: the usual stale word
      // is told apart here, without the call.)
      const Frame seen = Frame::unpack(w);
      const bool maybe = seen.lap == lap_of(t) && (seen.type == RecordType::Claimed || seen.type == RecordType::Padding);
      if (Alone && !maybe) [[likely]] {
        me.claim_frame.store(mine, std::memory_order_relaxed);
        me.intent.store(t, std::memory_order_relaxed);
        SHMQ_CLAIM_HOOK(ClaimStep::BeforeFrameCas, i, t);
        word.store(mine, std::memory_order_release);
        SHMQ_CRASH_POINT("claim.alone.after_marker");
        SHMQ_CLAIM_HOOK(ClaimStep::AfterFrameCas, i, t);
        hdr_->tail.store(end, std::memory_order_release);
        if (!wrap) return t;
        t = end;
        continue;
      }
      // relaxed: published by the intent store below (release, or seq_cst) and the frame CAS (a
      // full barrier).
      me.claim_frame.store(mine, std::memory_order_relaxed);
      // Store-load ordering with the tail re-check below (the pair of reclaim()'s tail load, then
      // its intent loads): a reclaim that saw the tail past T sees this intent, or the re-check sees
      // the tail moved and this round makes no CAS at T. The ordering is membarrier's (see
      // register_cheap_intents(): reclaim's heavy_fence()) where this process registered, else seq_cst's.
      if (g_cheap_intents.load(std::memory_order_relaxed)) [[likely]] {
        // release: after claim_frame (claim_in_progress() pairs with it).
        me.intent.store(t, std::memory_order_release);
        std::atomic_signal_fence(std::memory_order_seq_cst);  // the compiler keeps the order; membarrier the CPU's
      } else {
        me.intent.store(t, std::memory_order_seq_cst);
      }
      if (const std::uint64_t span = maybe ? claim_in_progress(t, w) : 0) [[unlikely]] {
        // A peer's claim marker at the tail: move the tail past its claim for it.
        hdr_->tail.compare_exchange_strong(t, t + span, std::memory_order_seq_cst, std::memory_order_acquire);
        t = hdr_->tail.load(std::memory_order_acquire);
        continue;
      }
      // A word of an earlier lap (or a marker whose claimer moved on): replaced, if the tail is
      // still at T. seq_cst load: see the intent store above.
      if (const std::uint64_t live = hdr_->tail.load(std::memory_order_seq_cst); live != t) {
        t = live;
        continue;
      }
      SHMQ_CLAIM_HOOK(ClaimStep::BeforeFrameCas, i, t);
      // seq_cst CAS: publishes the slot stores above with the marker.
      if (!word.compare_exchange_strong(w, mine, std::memory_order_seq_cst, std::memory_order_relaxed)) [[unlikely]] {
        t = hdr_->tail.load(std::memory_order_acquire);
        continue;
      }
      SHMQ_CRASH_POINT("claim.after_frame_cas");
      SHMQ_CLAIM_HOOK(ClaimStep::AfterFrameCas, i, t);
      // The frame at T is ours; move the tail past it. Only a peer that found our marker there moves
      // it otherwise, and then to END, after which claims go on: a tail at or past END is ours
      // (helped); one in (T, END) or below T is a hostile one.
      std::uint64_t expected = t;
      if (!hdr_->tail.compare_exchange_strong(expected, end, std::memory_order_seq_cst, std::memory_order_acquire) &&
          expected < end) [[unlikely]] {
        claim_lost(t, end, mine);
        return no_claim(me);
      }
      if (!wrap) return t;
      t = end;  // padded to the end of the ring: claim the record at the start of the next lap
    }
    return no_claim(me);
  }

  // Commits the record at POS (its header fields and payload are written). TYPE Padding abandons it.
  // The frame carries the toggle of the claim's marker (the slot's claim_frame); then the claim is
  // no longer in progress (intent cleared).
  void commit(std::uint64_t pos, std::uint32_t frame_len, RecordType type, std::uint32_t i) noexcept {
    ClaimerSlot& me = claimers_[i];
    const std::uint32_t epoch = me.epoch.load(std::memory_order_relaxed);
    const std::uint32_t toggle = Frame::toggle_of(me.claim_frame.load(std::memory_order_relaxed));
    const std::uint32_t len = type == RecordType::Padding ? static_cast<std::uint32_t>(align_up(frame_len)) : frame_len;
    // release: publishes the header fields and payload written above; pairs with acquire in read().
    frame_at(pos).store(Frame::pack(len, type, i, epoch, lap_of(pos), toggle), std::memory_order_release);
    SHMQ_CRASH_POINT("commit.after_frame");
    // release: after the frame (pairs with the seq_cst load in reclaim(): a reclaimer that sees no
    // intent sees the frame, so the space is never reused under a store still in flight).
    me.intent.store(kNoIntent, std::memory_order_release);
  }

  // What is at POS, a position this reader reached by reading records in order from a known
  // boundary. Validates the position and the frame against the region before anything else reads
  // them: POS (from shared memory: a group cursor, a give-back entry, a journal cursor) must be
  // 8-byte aligned; at or past the tail there is nothing, whatever the frame word says (Empty);
  // below `cleaned`, or more than a lap behind the tail, it is Corrupt (a reader that loaded a
  // cursor that has moved on since may see that too: it re-reads its cursor before it believes
  // it); a record never runs past the tail.
  ReadResult read(std::uint64_t pos) const noexcept {
    if (pos % kAlign != 0) return corrupt(pos, "position is not a multiple of 8");
    // Below the tail, and only there, the frame word at a record boundary is this lap's: a claim is
    // marked before the tail moves past it; at or past the tail the word is whatever an earlier lap
    // left (nothing is zeroed) and is not read as a frame. So the tail is known to be past POS
    // BEFORE the frame word is loaded: a word loaded earlier could be a stale one that happened to
    // look like a frame. The tail this process saw last is enough while POS is below it; otherwise
    // a reader that spins at the tail looks at the word first (its own line) and loads the live tail
    // (the producers' line) only once the word looks like a frame of this lap.
    // acquire/release on the hint: another thread of this process that stored it had acquired that
    // tail, so the claim markers below it are visible here too.
    std::uint64_t t = tail_seen_.load(std::memory_order_acquire);
    if (pos >= t) {
      const Frame peek = Frame::unpack(frame_at(pos).load(std::memory_order_relaxed));
      if (peek.lap != lap_of(pos) || peek.type == RecordType::None) return {ReadResult::Empty, pos, nullptr, nullptr, 0};
      // acquire: pairs with the tail CAS in try_claim(), made after the claim marker's CAS.
      t = hdr_->tail.load(std::memory_order_acquire);
      tail_seen_.store(t, std::memory_order_release);
      if (pos >= t) return {ReadResult::Empty, pos, nullptr, nullptr, 0};
    }
    if (t - pos > capacity_) return corrupt(pos, "position more than a lap behind the tail");
    // acquire: pairs with the release store in commit() (and the claim CAS); makes the record's bytes visible.
    const Frame f = Frame::unpack(frame_at(pos).load(std::memory_order_acquire));
    if (f.lap != lap_of(pos) || f.type == RecordType::None) return corrupt(pos, "no frame of this lap below the tail");
    // Claimed: being written (unblock() tells whether its claimer still lives).
    if (f.type == RecordType::Claimed) return {ReadResult::Pending, pos, nullptr, nullptr, 0};
    if (f.length < kAlign) return corrupt(pos, "record shorter than a frame word");
    const std::uint64_t next = pos + align_up(f.length);
    if (next > lap_end(pos)) return corrupt(pos, "record crosses the end of the ring");
    // A committed record's claim moved the tail past it before its frame was stored: the live tail
    // (acquire, after the frame's acquire) is at or past NEXT.
    if (next > t) {
      const std::uint64_t live = hdr_->tail.load(std::memory_order_acquire);
      tail_seen_.store(live, std::memory_order_release);
      if (next > live) return corrupt(pos, "record runs past the tail");
    }
    // acquire: pairs with the release store of `cleaned` in reclaim().
    if (pos < hdr_->cleaned.load(std::memory_order_acquire)) return corrupt(pos, "position below the reclaimed space");
    const std::uint32_t len = f.length;
    if (f.type == RecordType::Padding) return {ReadResult::Padding, next, nullptr, nullptr, len};
    if (len < kHeaderBytes) return corrupt(pos, "record shorter than its header");
    if (len > max_frame_) return corrupt(pos, "record longer than the channel allows");
    return {ReadResult::Record, next, reinterpret_cast<const RecordHeader*>(at(pos)), nullptr, len};
  }

  // The rest of a Record's validation, once the reader owns it (the header fields may be read).
  // Reads the header fields of the Record R once each into OUT and checks them against R's frame
  // length (which read() vouched for); nullptr when sound, otherwise what is wrong. Callers use
  // OUT, never the header again: a second read could see another value.
  static const char* load_record(const ReadResult& r, RecordFields& out) noexcept {
    const RecordHeader& h = *r.header;
    out.producer = load_shared(h.producer);
    out.seq = load_shared(h.seq);
    out.timestamp_ns = load_shared(h.timestamp_ns);
    out.key_len = load_shared(h.key_len);
    if (out.key_len > r.length - kHeaderBytes) return "key longer than its record";
    out.payload_len = r.length - static_cast<std::uint32_t>(kHeaderBytes) - out.key_len;
    return nullptr;
  }

  // Where a claim of FRAME_LEN bytes starting at tail T would end (padding at the wrap included).
  std::uint64_t claim_end(std::uint64_t t, std::uint32_t frame_len) const noexcept {
    const std::uint64_t need = align_up(frame_len);
    const std::uint64_t to_end = capacity_ - (t & mask_);
    return t + (need > to_end ? to_end : 0) + need;
  }

  // A reader stuck at POS (Pending for a while) asks whether the claim there belongs to a dead
  // claimer and, if so, turns it into padding. Returns true if POS now reads as padding (or was
  // committed meanwhile); false if a live claimer holds it, or POS is not a claimed position of
  // this lap (not aligned, outside [cleaned, tail)). The padding is stored under clean_lock (OWNER
  // is the caller's token), after checking again that POS was not reclaimed meanwhile: a reader
  // that stalled before its store must not write a frame into space reused since (issue 10.8).
  bool unblock(std::uint64_t pos, std::uint64_t owner, AliveFn alive) noexcept;

  // Tests only: called inside unblock() just before it takes clean_lock to store its padding, so
  // that a test can stall a reader there while others lap the ring. Not for production use.
  static void set_unblock_hook(void (*hook)(std::uint64_t pos)) noexcept;

  // Makes room so that a claim may reach NEED_END: advances `cleaned` to the lowest position a
  // reader still needs (GATE) or a live claim still writes (nothing is zeroed: a store of a record
  // boundary). Serialised by clean_lock (OWNER is the caller's token; a dead holder is
  // replaced). Returns true if cleaned + capacity >= need_end afterwards. ALONE: the caller is the
  // ring's only live claimer (see try_claim<true>): no other live claimer's plain intent store can
  // be in flight, so no heavy fence is made whatever plain_intents says.
  bool reclaim(std::uint64_t need_end, std::uint64_t owner, GateFn gate, void* ctx, AliveFn alive, bool alone = false) noexcept;

  // Recovery into a fresh (zeroed, unshared) ring: start() makes POS the first position (nothing
  // below it is held); place() pads from the tail up to POS and returns where the record of
  // FRAME_LEN bytes at POS goes (write its fields, then commit it), or nullptr if POS is below the
  // tail, not aligned, or the record would cross the end of the ring or not fit.
  void start(std::uint64_t pos) noexcept;
  RecordHeader* place(std::uint64_t pos, std::uint32_t frame_len) noexcept;
  // Pads from the tail up to END (an aligned position within a ring of the tail); false if not.
  bool pad_to(std::uint64_t end) noexcept;

  // clean_lock also serialises joiners that must pick a start position nobody will reuse under
  // them (a new reader registers its position while holding it).
  void lock_cleaning(std::uint64_t owner, AliveFn alive) noexcept;
  void unlock_cleaning() noexcept { unlock_owner_word(hdr_->clean_lock); }

 private:
  std::atomic<std::uint64_t>& frame_at(std::uint64_t pos) const noexcept {
    return *reinterpret_cast<std::atomic<std::uint64_t>*>(data_ + (pos & mask_));
  }
  std::uint64_t lap_end(std::uint64_t pos) const noexcept { return (pos | mask_) + 1; }
  std::uint32_t lap_of(std::uint64_t pos) const noexcept { return static_cast<std::uint32_t>(pos >> lap_shift_) & 0xff; }
  // The span (aligned bytes) of the claim W at the tail T if W is a claim marker (or a wrap padding
  // frame) that its claimer is making now, as its slot says (position T, word W); 0 otherwise (a
  // word of an earlier lap, or one whose claimer moved on). W and the slot come from shared memory:
  // the span is checked against the lap and the largest frame.
  [[gnu::noinline]] std::uint64_t claim_in_progress(std::uint64_t t, std::uint64_t w) const noexcept;
  // try_claim() found the tail moved past its marked claim at POS to somewhere other than END (a
  // hostile tail): the marker MINE becomes padding, so that no reader waits on it.
  [[gnu::cold, gnu::noinline]] void claim_lost(std::uint64_t pos, std::uint64_t end, std::uint64_t mine) noexcept;
  // try_claim() gives up (kNoIntent): its claim is no longer in progress.
  static std::uint64_t no_claim(ClaimerSlot& me) noexcept {
    me.intent.store(kNoIntent, std::memory_order_relaxed);  // (only lets reclaim() free more: no order needed)
    return kNoIntent;
  }
  static ReadResult corrupt(std::uint64_t pos, const char* why) noexcept {
    return {ReadResult::Corrupt, pos, nullptr, why, 0};
  }
  // try_claim's slow path: is tail T (not aligned, or below CLEANED_HINT) one to claim from?
  // Refreshes CLEANED_HINT. Out of line, so that try_claim stays small enough to inline.
  [[gnu::cold, gnu::noinline]] bool tail_usable(std::uint64_t t, std::uint64_t& cleaned_hint) const noexcept;
  // unblock() with clean_lock held by the caller (LOCKED), or taken here for the store.
  bool unblock_impl(std::uint64_t pos, std::uint64_t owner, AliveFn alive, bool locked) noexcept;

  RingHeader* hdr_ = nullptr;
  ClaimerSlot* claimers_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint64_t capacity_ = 0;
  std::uint64_t mask_ = 0;
  unsigned lap_shift_ = 0;  // log2(capacity)
  std::uint64_t max_frame_ = 0;
  std::uint32_t claimer_count_ = 0;  // validated at attach; the live header field is not trusted again
  // The tail this process saw last (relaxed: a hint; a stale one only makes read() load the live
  // tail). Copied with the ring object.
  struct TailHint {
    mutable std::atomic<std::uint64_t> v{0};
    TailHint() = default;
    TailHint(const TailHint& o) noexcept : v(o.v.load(std::memory_order_relaxed)) {}
    TailHint& operator=(const TailHint& o) noexcept {
      v.store(o.v.load(std::memory_order_relaxed), std::memory_order_relaxed);
      return *this;
    }
    std::uint64_t load(std::memory_order m) const noexcept { return v.load(m); }
    void store(std::uint64_t x, std::memory_order m) const noexcept { v.store(x, m); }
  };
  TailHint tail_seen_;
};

}  // namespace shmq::ring

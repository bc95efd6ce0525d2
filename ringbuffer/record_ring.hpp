// The multi-producer record ring: variable-length records over a byte region in shared memory.
//
// Contract. Any number of producers (in any processes) claim space with a CAS on `tail`, write
// their record, and commit it by storing its frame word last (release). Readers (any number, each
// with its own position) read committed records in ring order and never write them, except to turn
// the claim of a dead producer into padding. The ring knows bytes, positions and claimers only:
// who may reuse space is told by the caller through a gate function (the lowest position anybody
// still needs), and who is alive through a liveness function over owner tokens.
//
// Positions are absolute 64-bit byte offsets that never wrap; index = position & (capacity - 1).
// Positions in [cleaned, tail) hold records; the bytes of [tail, cleaned + capacity) are free and
// zeroed, so a frame word of 0 always means "not claimed yet". That range is never empty (a claim
// must end strictly below cleaned + capacity): the word at the tail is always a zeroed one. The zeroing is done in batches by
// whichever producer needs space (reclaim), under a lock whose dead holder is detected.
//
// A record, at an 8-byte aligned position, never straddles the end of the buffer (padding fills
// the gap):
//
//   0       4       6       8               16              24              32      36      40
//   +-------+---+---+-------+---------------+---------------+---------------+-------+-------+---..
//   | length|typ|clm|epoch  | producer id   | sequence      | timestamp ns  |key len| rsvd  | key, payload
//   +-------+---+---+-------+---------------+---------------+---------------+-------+-------+---..
//   \_____ frame word (atomic u64) _____/
//   length (int32): 0 free; < 0 claimed, -(frame length); > 0 committed frame length (header +
//   key + payload, unaligned; the record occupies align8(length) bytes). typ: Data or Padding (a
//   padding frame is the frame word alone). clm/epoch: the claimer slot and its epoch, so a reader
//   can tell whether the claimer is alive.
//
// Everything the ring reads from its header and its frames is hostile input (any process that
// maps the segment can write it): positions are checked for alignment and against the tail,
// `cleaned` and the lap before they are followed (read() says Empty or Corrupt, unblock() and
// reclaim() decline), and every scan is bounded by a lap, a count of our own.
//
// Liveness of a claim whose frame word is still 0 (the claimer died between its CAS on the tail and
// its first store) is found through the claimer table: every claimer publishes its intent (the tail
// it is about to CAS from) before the CAS; a claim at P whose frame is 0 is dead when no live
// claimer has intent P. Its length is then found by scanning the zeroed bytes up to the next frame
// word that is not 0, or the next live claimer's intent (leveldb-style: the region is reported,
// turned into padding, and reading carries on at a known record boundary).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ringbuffer/shared_bytes.hpp"

namespace shmq::ring {

inline constexpr std::uint64_t kRingMagic = 0x474e4952514d4853ull;  // "SHMQRING"
inline constexpr std::uint32_t kRingVersion = 2;
inline constexpr std::size_t kAlign = 8;
inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::uint32_t kMaxClaimers = 4096;  // 12 bits in the frame word
inline constexpr std::uint64_t kNoIntent = ~0ull;

constexpr std::uint64_t align_up(std::uint64_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

enum class RecordType : std::uint8_t { None = 0, Data = 1, Padding = 2 };

// The frame word, packed: length (int32) | type (4 bits) | claimer (12 bits) | epoch (16 bits).
struct Frame {
  std::int32_t length;
  RecordType type;
  std::uint16_t claimer;
  std::uint16_t epoch;

  static constexpr std::uint64_t pack(std::int32_t length, RecordType type, std::uint32_t claimer,
                                      std::uint32_t epoch) {
    return static_cast<std::uint32_t>(length) | (std::uint64_t(static_cast<std::uint8_t>(type) & 0xf) << 32) |
           (std::uint64_t(claimer & 0xfff) << 36) | (std::uint64_t(epoch & 0xffff) << 48);
  }
  static constexpr Frame unpack(std::uint64_t w) {
    return Frame{static_cast<std::int32_t>(static_cast<std::uint32_t>(w)),
                 static_cast<RecordType>((w >> 32) & 0xf), static_cast<std::uint16_t>((w >> 36) & 0xfff),
                 static_cast<std::uint16_t>(w >> 48)};
  }
};

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
  alignas(kCacheLine) std::atomic<std::uint64_t> cleaned;     // below: consumed by all and zeroed
  alignas(kCacheLine) std::atomic<std::uint64_t> clean_lock;  // owner token of the reclaimer; 0 free
  std::atomic<std::uint64_t> cleaning_to;                     // where the lock holder is zeroing to
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
  std::atomic<std::uint64_t> intent;  // tail value this claimer is about to CAS from; kNoIntent when idle
  std::atomic<std::uint64_t> owner;   // owner token of the process using this slot; 0 when unowned
  std::atomic<std::uint32_t> epoch;   // bumped at every change of owner
  std::uint32_t reserved;
  // Position + 1 of the highest claim of this slot that a reader turned into padding because its
  // claimer was dead (0: none). Stored before the padding frame, so that whoever finds the space
  // reclaimed can tell a dead claim from a committed record (the producer's takeover does).
  std::atomic<std::uint64_t> padded;
};
static_assert(sizeof(ClaimerSlot) == kCacheLine);

// The lowest position still needed by a reader; ring space below it may be zeroed and reused.
using GateFn = std::uint64_t (*)(void* ctx);
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
  std::uint32_t claimers() const noexcept { return claimer_count_; }
  ClaimerSlot& claimer(std::uint32_t i) const noexcept { return claimers_[i]; }
  std::byte* at(std::uint64_t position) const noexcept { return data_ + (position & mask_); }
  std::uint64_t tail() const noexcept { return hdr_->tail.load(std::memory_order_acquire); }
  std::uint64_t cleaned() const noexcept { return hdr_->cleaned.load(std::memory_order_acquire); }
  bool claimed(std::uint64_t pos) const noexcept { return tail() > pos; }

  // --- claimers -----------------------------------------------------------------------------
  // Takes claimer slot I for OWNER (a new epoch: claims of the previous owner read as dead).
  void adopt_claimer(std::uint32_t i, std::uint64_t owner) noexcept;
  void release_claimer(std::uint32_t i) noexcept;

  // Claims FRAME_LEN bytes (header included) for claimer I. Returns the record's position, or
  // kNoIntent when the ring has no room below cleaned + capacity (call reclaim and try again).
  // CLEANED_HINT caches `cleaned` across calls (the caller's copy; refreshed here when short).
  // (always inlined: the hot path of every publish; the checks of a hostile tail are out of line.)
  [[gnu::always_inline]] std::uint64_t try_claim(std::uint32_t i, std::uint32_t frame_len, std::uint64_t& cleaned_hint) noexcept {
    const std::uint64_t need = align_up(frame_len);
    ClaimerSlot& me = claimers_[i];
    const std::uint32_t epoch = me.epoch.load(std::memory_order_relaxed);
    std::uint64_t t = hdr_->tail.load(std::memory_order_relaxed);
    for (;;) {
      // The tail comes from shared memory: one that is not a record boundary, or below the space
      // known to be reclaimed, is not claimed from (a frame at a misaligned index would cross the
      // end of the region). The caller's reclaim() refuses such a ring too, so it times out.
      if ((t % kAlign != 0 || t < cleaned_hint) && !tail_usable(t, cleaned_hint)) [[unlikely]] {
        me.intent.store(kNoIntent, std::memory_order_relaxed);
        return kNoIntent;
      }
      const std::uint64_t to_end = capacity_ - (t & mask_);
      const std::uint64_t pad = need > to_end ? to_end : 0;
      const std::uint64_t end = t + pad + need;
      // Strictly below cleaned + capacity: the word at the tail must stay a zeroed one, or a
      // reader that caught up would find the oldest record's frame there.
      if (end >= cleaned_hint + capacity_) {
        // acquire: pairs with the release store of `cleaned` in reclaim(): the zeroing is visible.
        cleaned_hint = hdr_->cleaned.load(std::memory_order_acquire);
        if (end >= cleaned_hint + capacity_) {
          me.intent.store(kNoIntent, std::memory_order_relaxed);
          return kNoIntent;
        }
      }
      // relaxed: ordered before the CAS below, which is a full barrier; read by dead-claim checks
      // after their acquire load of `tail`.
      me.intent.store(t, std::memory_order_relaxed);
      // acq_rel: releases the intent above to readers of `tail`; acquires earlier claimers' state.
      if (hdr_->tail.compare_exchange_weak(t, end, std::memory_order_seq_cst, std::memory_order_relaxed)) {
        const std::uint64_t pos = t + pad;
        // relaxed: the claim marker (length and claimer) for unblock(). No fence is needed before
        // the payload: a scan never enters the claim of a live claimer (its intent bounds it), and
        // all the stores of a dead one are visible. The padding's release store below orders the
        // marker before the padding frame, so a reader past the padding finds the marker.
        frame_at(pos).store(Frame::pack(-static_cast<std::int32_t>(frame_len), RecordType::None, i, epoch),
                            std::memory_order_relaxed);
        if (pad) {
          // release: the padding frame is complete in one word; pairs with acquire in read().
          frame_at(t).store(Frame::pack(static_cast<std::int32_t>(pad), RecordType::Padding, i, epoch),
                            std::memory_order_release);
        }
        return pos;
      }
    }
  }

  // Commits the record at POS (its header fields and payload are written). TYPE Padding abandons it.
  void commit(std::uint64_t pos, std::uint32_t frame_len, RecordType type, std::uint32_t i) noexcept {
    const std::uint32_t epoch = claimers_[i].epoch.load(std::memory_order_relaxed);
    const std::int32_t len = type == RecordType::Padding ? static_cast<std::int32_t>(align_up(frame_len))
                                                          : static_cast<std::int32_t>(frame_len);
    // release: publishes the header fields and payload written above; pairs with acquire in read().
    frame_at(pos).store(Frame::pack(len, type, i, epoch), std::memory_order_release);
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
    // acquire: pairs with the release store in commit(); makes the record's bytes visible.
    const Frame f = Frame::unpack(frame_at(pos).load(std::memory_order_acquire));
    // Empty: no frame here yet, which may be a claim whose frame is not written yet (claimed() tells;
    // it reads the producers' tail line, so a spinning reader asks it only now and then).
    if (f.length <= 0) return {f.length == 0 ? ReadResult::Empty : ReadResult::Pending, pos, nullptr, nullptr, 0};
    if (static_cast<std::uint32_t>(f.length) < kAlign) return corrupt(pos, "record shorter than a frame word");
    const std::uint64_t next = pos + align_up(static_cast<std::uint32_t>(f.length));
    if (next > lap_end(pos)) return corrupt(pos, "record crosses the end of the ring");
    // Against the tail. The tail seen last by this process is enough while POS and NEXT are below
    // it (the tail only grows: a record below a tail once seen was claimed); otherwise the live one.
    // acquire (the live load, after the frame's acquire): a committed record's claim moved the
    // tail past it before its frame was stored, so the load sees a tail at or past NEXT.
    std::uint64_t t = tail_seen_.load(std::memory_order_relaxed);
    if (next > t || t - pos > capacity_) {
      t = hdr_->tail.load(std::memory_order_acquire);
      tail_seen_.store(t, std::memory_order_relaxed);
    }
    if (pos >= t) return {ReadResult::Empty, pos, nullptr, nullptr, 0};  // free space: a stray frame
    if (t - pos > capacity_) return corrupt(pos, "position more than a lap behind the tail");
    if (next > t) return corrupt(pos, "record runs past the tail");
    // acquire: pairs with the release store of `cleaned` in reclaim().
    if (pos < hdr_->cleaned.load(std::memory_order_acquire)) return corrupt(pos, "position below the reclaimed space");
    const auto len = static_cast<std::uint32_t>(f.length);
    if (f.type == RecordType::Padding) return {ReadResult::Padding, next, nullptr, nullptr, len};
    if (f.type != RecordType::Data) return corrupt(pos, "unknown record type");
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
  // that stalled before its store must not write a frame into space zeroed since (issue 10.8).
  bool unblock(std::uint64_t pos, std::uint64_t owner, AliveFn alive) noexcept;

  // Tests only: called inside unblock() just before it takes clean_lock to store its padding, so
  // that a test can stall a reader there while others lap the ring. Not for production use.
  static void set_unblock_hook(void (*hook)(std::uint64_t pos)) noexcept;

  // Makes room so that a claim may reach NEED_END: zeroes space every reader is past (GATE) and
  // advances `cleaned`. Serialised by clean_lock (OWNER is the caller's token; a dead holder is
  // replaced). Returns true if cleaned + capacity > need_end afterwards.
  bool reclaim(std::uint64_t need_end, std::uint64_t owner, GateFn gate, void* ctx, AliveFn alive) noexcept;

  // Recovery into a fresh (zeroed, unshared) ring: start() makes POS the first position (nothing
  // below it is held); place() pads from the tail up to POS and returns where the record of
  // FRAME_LEN bytes at POS goes (write its fields, then commit it), or nullptr if POS is below the
  // tail, not aligned, or the record would cross the end of the ring or not fit.
  void start(std::uint64_t pos) noexcept;
  RecordHeader* place(std::uint64_t pos, std::uint32_t frame_len) noexcept;
  // Pads from the tail up to END (an aligned position within a ring of the tail); false if not.
  bool pad_to(std::uint64_t end) noexcept;

  // clean_lock also serialises joiners that must pick a start position nobody will zero under
  // them (a new reader registers its position while holding it).
  // Takes clean_lock and first finishes what a holder that died was zeroing.
  void lock_cleaning(std::uint64_t owner, AliveFn alive) noexcept;
  void unlock_cleaning() noexcept { unlock_owner_word(hdr_->clean_lock); }

 private:
  std::atomic<std::uint64_t>& frame_at(std::uint64_t pos) const noexcept {
    return *reinterpret_cast<std::atomic<std::uint64_t>*>(data_ + (pos & mask_));
  }
  std::uint64_t lap_end(std::uint64_t pos) const noexcept { return (pos | mask_) + 1; }
  static ReadResult corrupt(std::uint64_t pos, const char* why) noexcept {
    return {ReadResult::Corrupt, pos, nullptr, why, 0};
  }
  void zero(std::uint64_t from, std::uint64_t to) noexcept;
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

// The dedup window of one producer: which of its recent sequence numbers the channel accepted,
// and where their records went.
//
// Contract. A producer's window covers the `size` sequences ending at its highest accepted one
// (`next_seq - 1` in its ProducerSlot): (top - size, top]. A sequence above the top is new; one
// inside the window is a duplicate if its entry names it, new otherwise (a gap left by an outbox
// that publishes out of order, or by a publish that never committed); one at or below top - size
// is a duplicate too: the window is how far back a retry is recognised (documented in shmq.hpp).
// Valid sequences are 1 .. kMaxSeq. Only the producer's owner, under its publish lock, calls
// accept(); anyone may read (the journaler's checkpoint does, see read_entry()).
//
// Layout: `size` (a power of two) entries of two u64 in the segment (Segment::dedup_entries); the
// entry of sequence S is at index S & (size - 1) and holds S itself, so an entry left by an older
// sequence never passes for a newer one (nothing needs clearing when the window slides), and its
// position + 1 (0: accepted, position unknown, as after a recovery from a checkpoint).
//
// Crash safety. accept() writes the entry (a seqlock: sequence 0, position, sequence), then the
// top: an owner that dies inside it leaves a window that the same accept(), redone by its
// successor, completes (it is idempotent; an entry left at sequence 0 reads as empty). Which
// accept() to redo is in the slot's pending fields (see Producer's takeover in producer.cpp).
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>

#include "shmq/shmq.hpp"

namespace shmq::detail {

inline constexpr std::uint64_t kMaxSeq = (1ull << 63) - 1;
constexpr bool valid_seq(std::uint64_t seq) { return seq >= 1 && seq <= kMaxSeq; }

struct DedupEntry {
  std::atomic<std::uint64_t> seq;             // the sequence this entry is about; 0: none yet
  std::atomic<std::uint64_t> position_plus1;  // of its record; 0: not known
};
static_assert(sizeof(DedupEntry) == 16);

class DedupWindow {
 public:
  DedupWindow() = default;
  DedupWindow(DedupEntry* entries, std::uint32_t size, std::atomic<std::uint64_t>* next_seq) noexcept
      : entries_(entries), mask_(size - 1), size_(size), next_seq_(next_seq) {}

  std::uint32_t size() const noexcept { return size_; }
  std::uint64_t top() const noexcept { return next_seq_->load(std::memory_order_acquire) - 1; }

  // nullopt when SEQ (valid) is new; otherwise the position of the accepted one, or kNoPosition
  // when the window does not know it (below the window, or restored without its position).
  std::optional<std::uint64_t> find(std::uint64_t seq) const noexcept {
    const std::uint64_t high = top();
    if (seq > high) return std::nullopt;
    if (high - seq >= size_) return kNoPosition;
    const DedupEntry& e = entries_[seq & mask_];
    // relaxed: the owner reads its own stores.
    if (e.seq.load(std::memory_order_relaxed) != seq) return std::nullopt;
    const std::uint64_t p = e.position_plus1.load(std::memory_order_relaxed);
    return p ? p - 1 : kNoPosition;
  }

  // For readers other than the owner: whether SEQ's entry names it, and its position + 1, read
  // consistently (seqlock: the sequence field is 0 while the owner rewrites the entry, and is read
  // again after the position). False when the entry is about another sequence, or changing.
  bool read_entry(std::uint64_t seq, std::uint64_t* position_plus1) const noexcept {
    const DedupEntry& e = entries_[seq & mask_];
    // acquire: pairs with the release store of seq in accept(): the position stored before it.
    if (e.seq.load(std::memory_order_acquire) != seq) return false;
    *position_plus1 = e.position_plus1.load(std::memory_order_relaxed);
    // acquire fence: pairs with the release fence in accept(); if the position read was one that
    // accept() stored since, the sequence read below is 0 or the new one.
    std::atomic_thread_fence(std::memory_order_acquire);
    return e.seq.load(std::memory_order_relaxed) == seq;
  }

  // Records SEQ as accepted, its record at POSITION_PLUS1 - 1 (0: where is not known).
  void accept(std::uint64_t seq, std::uint64_t position_plus1) noexcept {
    const std::uint64_t high = top();
    if (seq <= high && high - seq >= size_) return;  // below the window: nothing to record
    DedupEntry& e = entries_[seq & mask_];
    if (e.seq.load(std::memory_order_relaxed) != seq) {
      e.seq.store(0, std::memory_order_relaxed);  // "being rewritten", for read_entry()
      std::atomic_thread_fence(std::memory_order_release);  // pairs with the acquire fence in read_entry()
    }
    e.position_plus1.store(position_plus1, std::memory_order_relaxed);
    // release: publishes the position above; pairs with the first acquire load in read_entry().
    e.seq.store(seq, std::memory_order_release);
    // release: a reader that sees the new top sees the entry (capture() in durability.cpp).
    if (seq > high) next_seq_->store(seq + 1, std::memory_order_release);
  }

  // Forgets everything and sets the top to HIGH (recovery, before the accept()s of what it knows).
  void reset(std::uint64_t high) noexcept {
    for (std::uint32_t i = 0; i < size_; ++i) {
      entries_[i].seq.store(0, std::memory_order_relaxed);
      entries_[i].position_plus1.store(0, std::memory_order_relaxed);
    }
    next_seq_->store(high + 1, std::memory_order_relaxed);
  }

 private:
  DedupEntry* entries_ = nullptr;
  std::uint64_t mask_ = 0;
  std::uint32_t size_ = 0;
  std::atomic<std::uint64_t>* next_seq_ = nullptr;
};

}  // namespace shmq::detail

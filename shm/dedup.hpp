// The dedup window of one producer: which of its recent sequence numbers the channel accepted,
// and where their records went.
//
// Contract. A producer's window covers the `size` sequences at and below its highest accepted one
// (`next_seq - 1` in its ProducerSlot). A sequence above the top is new; one inside the window is a
// duplicate if its entry is set, new otherwise (a gap left by an outbox that publishes out of
// order, or by a publish that never committed); one below the window is a duplicate too: the window
// is how far back a retry is recognised (documented in shmq.hpp). Only the producer's owner, under
// its publish lock, calls accept(); anyone may read (the journaler's checkpoint does).
//
// Layout: `size` u64 entries in the segment (Segment::dedup_entries), entry of sequence S at index
// S % size: 0 = not accepted, kAcceptedSomewhere = accepted where nobody knows any more (restored
// from a checkpoint), otherwise position + 2 of its record.
//
// Crash safety. accept() clears the entries that slide out of the window, sets the new one and
// stores the top last: an owner that dies inside it leaves a window that the same accept(), redone
// by its successor, completes (it is idempotent). Which accept() to redo is in the slot's pending
// fields (see Producer's takeover in producer.cpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace shmq::detail {

inline constexpr std::uint64_t kAcceptedSomewhere = 1;
constexpr std::uint64_t dedup_entry_for(std::uint64_t position) { return position + 2; }

class DedupWindow {
 public:
  DedupWindow() = default;
  DedupWindow(std::atomic<std::uint64_t>* entries, std::uint32_t size, std::atomic<std::uint64_t>* next_seq) noexcept
      : entries_(entries), size_(size), next_seq_(next_seq) {}

  std::uint32_t size() const noexcept { return size_; }
  std::uint64_t top() const noexcept { return next_seq_->load(std::memory_order_relaxed) - 1; }

  // 0 when SEQ is new; otherwise its entry (kAcceptedSomewhere, position + 2, or
  // kAcceptedSomewhere for a sequence below the window, whose place nobody knows).
  std::uint64_t find(std::uint64_t seq) const noexcept {
    const std::uint64_t high = top();
    if (seq > high) return 0;
    if (seq == 0 || high - seq >= size_) return kAcceptedSomewhere;
    // relaxed: the owner reads its own stores; other readers (checkpoints) tolerate a stale entry.
    return entries_[seq % size_].load(std::memory_order_relaxed);
  }

  // Records SEQ as accepted at ENTRY (dedup_entry_for(position) or kAcceptedSomewhere).
  void accept(std::uint64_t seq, std::uint64_t entry) noexcept {
    const std::uint64_t high = top();
    if (seq > high) {
      // The sequences between the old top and SEQ were not accepted: their entries still hold
      // sequences that now slide out of the window.
      const std::uint64_t gap_from = std::max(high + 1, seq > size_ ? seq - size_ + 1 : 1);
      for (std::uint64_t s = gap_from; s < seq; ++s) entries_[s % size_].store(0, std::memory_order_relaxed);
      entries_[seq % size_].store(entry, std::memory_order_relaxed);
      // release: a reader that sees the new top sees the entries above (checkpoints pair with it).
      next_seq_->store(seq + 1, std::memory_order_release);
    } else if (high - seq < size_) {
      entries_[seq % size_].store(entry, std::memory_order_relaxed);
    }
  }

  // Forgets everything and sets the top to HIGH (recovery, before accept()s of what it knows).
  void reset(std::uint64_t high) noexcept {
    for (std::uint32_t i = 0; i < size_; ++i) entries_[i].store(0, std::memory_order_relaxed);
    next_seq_->store(high + 1, std::memory_order_relaxed);
  }

 private:
  std::atomic<std::uint64_t>* entries_ = nullptr;
  std::uint32_t size_ = 0;
  std::atomic<std::uint64_t>* next_seq_ = nullptr;
};

}  // namespace shmq::detail

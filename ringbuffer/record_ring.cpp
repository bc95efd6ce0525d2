// The record ring's slow paths: layout, validation, dead-claim recovery and reclaiming space.
#include "ringbuffer/record_ring.hpp"

#include "shm/crash_point.hpp"  // test builds: named points where a process may die

#include <sched.h>

#include <algorithm>
#include <bit>

namespace shmq::ring {
namespace {

std::uint64_t data_offset_for(std::uint32_t claimers) {
  const std::uint64_t table_end = sizeof(RingHeader) + std::uint64_t(claimers) * sizeof(ClaimerSlot);
  return (table_end + 4095) & ~std::uint64_t(4095);  // the data region starts on a page
}

inline void cpu_relax() noexcept { __builtin_ia32_pause(); }

}  // namespace

std::size_t RecordRing::region_bytes(std::size_t capacity, std::uint32_t claimers) {
  return data_offset_for(claimers) + capacity;
}

void RecordRing::initialize(void* region, std::size_t capacity, std::uint32_t claimers, std::size_t max_frame) {
  auto* h = new (region) RingHeader{};
  h->magic = kRingMagic;
  h->version = kRingVersion;
  h->claimers = claimers;
  h->capacity = capacity;
  h->data_offset = data_offset_for(claimers);
  h->max_frame = max_frame;
  auto* table = reinterpret_cast<ClaimerSlot*>(h + 1);
  for (std::uint32_t i = 0; i < claimers; ++i) {
    auto* c = new (&table[i]) ClaimerSlot{};
    c->intent.store(kNoIntent, std::memory_order_relaxed);
  }
}

const char* RecordRing::validate(const void* region, std::size_t bytes) {
  if (bytes < sizeof(RingHeader)) return "ring region smaller than its header";
  auto* h = static_cast<const RingHeader*>(region);
  if (h->magic != kRingMagic) return "ring magic is wrong";
  if (h->version != kRingVersion) return "ring layout version is not one this build reads";
  if (h->claimers == 0 || h->claimers > kMaxClaimers) return "ring claimer count out of range";
  if (!std::has_single_bit(h->capacity) || h->capacity < 4096 || h->capacity > (std::uint64_t(1) << 30))
    return "ring capacity is not a power of two between 4 KiB and 1 GiB";
  if (h->data_offset != data_offset_for(h->claimers)) return "ring data offset does not match its claimer table";
  if (h->data_offset + h->capacity > bytes) return "ring data region runs past the end of the segment";
  if (h->max_frame < kHeaderBytes || h->max_frame > h->capacity / 2 + kHeaderBytes) return "ring max frame out of range";
  return nullptr;
}

RecordRing::RecordRing(void* region)
    : hdr_(static_cast<RingHeader*>(region)),
      claimers_(reinterpret_cast<ClaimerSlot*>(hdr_ + 1)),
      data_(static_cast<std::byte*>(region) + hdr_->data_offset),
      capacity_(hdr_->capacity),
      mask_(hdr_->capacity - 1),
      max_frame_(hdr_->max_frame),
      claimer_count_(hdr_->claimers) {}

RecordRing::RecordRing(void* region, std::uint64_t capacity, std::uint32_t claimers, std::uint64_t max_frame)
    : hdr_(static_cast<RingHeader*>(region)),
      claimers_(reinterpret_cast<ClaimerSlot*>(hdr_ + 1)),
      data_(static_cast<std::byte*>(region) + data_offset_for(claimers)),
      capacity_(capacity),
      mask_(capacity - 1),
      max_frame_(max_frame),
      claimer_count_(claimers) {}

bool RecordRing::tail_usable(std::uint64_t t, std::uint64_t& cleaned_hint) const noexcept {
  // acquire: pairs with the release store of `cleaned` in reclaim().
  cleaned_hint = hdr_->cleaned.load(std::memory_order_acquire);
  return t % kAlign == 0 && t >= cleaned_hint;
}

void RecordRing::adopt_claimer(std::uint32_t i, std::uint64_t owner) noexcept {
  ClaimerSlot& c = claimers_[i];
  c.intent.store(kNoIntent, std::memory_order_relaxed);
  // The new epoch first: from here on, a frame stamped with the old epoch reads as a dead claim.
  c.epoch.fetch_add(1, std::memory_order_seq_cst);
  // release: pairs with the acquire load of `owner` in claimer_alive() / unblock().
  c.owner.store(owner, std::memory_order_release);
}

void RecordRing::release_claimer(std::uint32_t i) noexcept {
  ClaimerSlot& c = claimers_[i];
  c.intent.store(kNoIntent, std::memory_order_relaxed);
  c.owner.store(0, std::memory_order_release);  // pairs with the acquire loads in unblock()
}

namespace {
void (*g_unblock_hook)(std::uint64_t) = nullptr;
}  // namespace

void RecordRing::set_unblock_hook(void (*hook)(std::uint64_t)) noexcept { g_unblock_hook = hook; }

bool RecordRing::unblock(std::uint64_t pos, std::uint64_t owner, AliveFn alive) noexcept {
  return unblock_impl(pos, owner, alive, false);
}

bool RecordRing::unblock_impl(std::uint64_t pos, std::uint64_t owner, AliveFn alive, bool locked) noexcept {
  // POS and the tail come from shared memory: only an aligned position of this lap is looked at.
  if (pos % kAlign != 0) return false;
  auto& word = frame_at(pos);
  std::uint64_t w = word.load(std::memory_order_acquire);  // pairs with the claim/commit stores
  Frame f = Frame::unpack(w);
  if (f.length > 0) return true;
  // acquire: pairs with the CAS in try_claim(): a tail past POS makes that claimer's intent visible.
  const std::uint64_t t = hdr_->tail.load(std::memory_order_acquire);
  if (pos >= t || t - pos > capacity_) return false;
  // acquire: pairs with the release store of `cleaned` in reclaim().
  if (pos < hdr_->cleaned.load(std::memory_order_acquire)) return false;  // reclaimed: not a claim of this lap

  // Stores PADDING over the frame word if it still holds EXPECTED and POS was not reclaimed
  // since it was read (under clean_lock nothing is zeroed: a position at or above `cleaned` still
  // holds this lap's word, so the CAS cannot succeed on space zeroed a lap later).
  auto pad = [&](std::uint64_t expected, std::uint64_t padding) {
    if (g_unblock_hook) g_unblock_hook(pos);
    if (!locked) lock_cleaning(owner, alive);
    SHMQ_CRASH_POINT("unblock.holding_clean_lock");
    if (pos >= hdr_->cleaned.load(std::memory_order_relaxed))  // only the lock holder moves it
      // CAS: another reader may be turning the same claim into padding; either of us may win.
      word.compare_exchange_strong(expected, padding, std::memory_order_release, std::memory_order_relaxed);
    if (!locked) unlock_cleaning();
  };

  if (f.length < 0) {  // claimed, length known: dead if its claimer's slot changed owner or died
    if (f.claimer < claimer_count_) {
      ClaimerSlot& c = claimers_[f.claimer];
      const std::uint64_t owner_token = c.owner.load(std::memory_order_acquire);
      // The frame keeps the low 16 bits of the epoch.
      if (static_cast<std::uint16_t>(c.epoch.load(std::memory_order_acquire)) == f.epoch && owner_token != 0 &&
          alive(owner_token))
        return false;
    }
    const std::uint64_t len = align_up(static_cast<std::uint32_t>(-static_cast<std::int64_t>(f.length)));
    // Not ours to guess; read() reports it.
    if (len < kAlign || pos + len > lap_end(pos) || pos + len > t) return false;
    if (f.claimer < claimer_count_) {
      // Before the padding frame (the release CAS below orders it): once the space is reclaimed,
      // `padded` is what says this claim was never committed. Claims are padded in position order,
      // so the value only grows; the CAS loop keeps it so when two readers race (bounded: a peer
      // that keeps changing the word is not waited for).
      std::atomic<std::uint64_t>& padded = claimers_[f.claimer].padded;
      std::uint64_t seen = padded.load(std::memory_order_relaxed);
      for (int tries = 0; tries < 1024 && seen < pos + 1 &&
                          !padded.compare_exchange_weak(seen, pos + 1, std::memory_order_relaxed);
           ++tries) {
      }
    }
    pad(w, Frame::pack(static_cast<std::int32_t>(len), RecordType::Padding, 0, 0));
    return true;
  }

  // Frame still 0: a claimer moved the tail past POS and has not written its frame. A live claimer
  // whose intent is POS may be that one: wait. Live intents above POS are boundaries of live claims
  // that the scan below must not enter. The scan never goes past the end of this lap (whatever the
  // tail says): the bound is clipped first.
  std::uint64_t bound = std::min(t, lap_end(pos));
  for (std::uint32_t i = 0; i < claimer_count_; ++i) {
    ClaimerSlot& c = claimers_[i];
    const std::uint64_t intent = c.intent.load(std::memory_order_acquire);
    if (intent == kNoIntent || intent < pos || intent >= bound) continue;
    const std::uint64_t owner_token = c.owner.load(std::memory_order_acquire);
    if (owner_token == 0 || !alive(owner_token)) continue;
    if (intent == pos) return false;
    bound = intent;
  }
  // A claimer that finished meanwhile wrote its frame before giving up its intent: look again.
  if (word.load(std::memory_order_acquire) != 0) return false;
  std::uint64_t end = pos + kAlign;
  for (; end < bound; end += kAlign) {  // at most a lap's worth of words
    if (frame_at(end).load(std::memory_order_acquire) != 0) break;  // the next record's frame word
  }
  end = std::min(end, bound);
  if (end % kAlign != 0) end = pos + kAlign;  // a misaligned live intent: the smallest padding
  pad(0, Frame::pack(static_cast<std::int32_t>(end - pos), RecordType::Padding, 0, 0));
  return true;
}

void RecordRing::start(std::uint64_t pos) noexcept {
  hdr_->tail.store(pos, std::memory_order_relaxed);
  hdr_->cleaned.store(pos, std::memory_order_relaxed);
  hdr_->cleaning_to.store(pos, std::memory_order_relaxed);
}

RecordHeader* RecordRing::place(std::uint64_t pos, std::uint32_t frame_len) noexcept {
  std::uint64_t t = hdr_->tail.load(std::memory_order_relaxed);
  const std::uint64_t end = pos + align_up(frame_len);
  if (pos < t || pos % kAlign != 0 || frame_len < kHeaderBytes || frame_len > max_frame_ || end > lap_end(pos) ||
      end >= hdr_->cleaned.load(std::memory_order_relaxed) + capacity_)
    return nullptr;
  pad_to(pos);  // the gap (padding or a dead claim in the old ring) becomes padding
  hdr_->tail.store(end, std::memory_order_relaxed);
  return reinterpret_cast<RecordHeader*>(at(pos));
}

bool RecordRing::pad_to(std::uint64_t end) noexcept {
  std::uint64_t t = hdr_->tail.load(std::memory_order_relaxed);
  if (end < t || end % kAlign != 0 || end >= hdr_->cleaned.load(std::memory_order_relaxed) + capacity_) return false;
  while (t < end) {  // lap by lap: padding never crosses the end of the ring
    const std::uint64_t to = std::min(end, lap_end(t));
    frame_at(t).store(Frame::pack(static_cast<std::int32_t>(to - t), RecordType::Padding, 0, 0), std::memory_order_relaxed);
    t = to;
  }
  hdr_->tail.store(end, std::memory_order_relaxed);
  return true;
}

void lock_owner_word(std::atomic<std::uint64_t>& word, std::uint64_t owner, AliveFn alive) noexcept {
  unsigned spins = 0;
  for (;;) {
    std::uint64_t holder = 0;
    // acquire: pairs with the release in unlock_owner_word(): the previous holder's work is visible.
    if (word.compare_exchange_weak(holder, owner, std::memory_order_acquire, std::memory_order_relaxed)) return;
    if (++spins < 128) {
      cpu_relax();
      continue;
    }
    if (spins % 64 == 0 && holder != 0 && !alive(holder)) {
      // The holder died (a dead process makes no more stores): take the lock from it. What it
      // left half-done is redone by the next holder.
      if (word.compare_exchange_strong(holder, owner, std::memory_order_acquire, std::memory_order_relaxed)) return;
    }
    sched_yield();
  }
}

void RecordRing::lock_cleaning(std::uint64_t owner, AliveFn alive) noexcept {
  lock_owner_word(hdr_->clean_lock, owner, alive);
  // A holder that died while zeroing left [cleaned, cleaning_to) partly zeroed: its record frames
  // can no longer be walked, nor a group start there. Its target was a record boundary below the
  // gate: finish its work first.
  const std::uint64_t c = hdr_->cleaned.load(std::memory_order_relaxed);
  // cleaning_to comes from shared memory: only a record boundary within a lap, below the tail.
  if (const std::uint64_t unfinished = hdr_->cleaning_to.load(std::memory_order_relaxed);
      unfinished > c && unfinished - c <= capacity_ && unfinished % kAlign == 0 && c % kAlign == 0 &&
      unfinished <= hdr_->tail.load(std::memory_order_acquire)) {
    zero(c, unfinished);
    hdr_->cleaned.store(unfinished, std::memory_order_release);  // pairs with the acquire in try_claim()
  }
}

void RecordRing::zero(std::uint64_t from, std::uint64_t to) noexcept {
  std::uint64_t n = std::min(to - from, capacity_);
  std::uint64_t idx = from & mask_;
  while (n) {
    const std::uint64_t chunk = std::min(n, capacity_ - idx);
#if defined(__SANITIZE_THREAD__)
    // ThreadSanitizer: a stale reader may load a frame word here with an atomic load (and then
    // drop what it read); word-wise atomic stores tell TSan what the hardware does anyway.
    for (std::uint64_t w = 0; w < chunk; w += kAlign)
      reinterpret_cast<std::atomic<std::uint64_t>*>(data_ + idx + w)->store(0, std::memory_order_relaxed);
#else
    std::memset(data_ + idx, 0, chunk);
#endif
    n -= chunk;
    idx = 0;
  }
}

bool RecordRing::reclaim(std::uint64_t need_end, std::uint64_t owner, GateFn gate, void* ctx, AliveFn alive) noexcept {
  lock_cleaning(owner, alive);
  const std::uint64_t c = hdr_->cleaned.load(std::memory_order_relaxed);  // only the lock holder writes it
  // The gate is the lowest position a reader still needs; never past what was claimed.
  const std::uint64_t t = hdr_->tail.load(std::memory_order_acquire);
  // `cleaned` and the tail come from shared memory: a ring where they are not record boundaries
  // a lap apart at most is corrupt; no space is made in it (the caller's wait times out).
  if (c % kAlign != 0 || t % kAlign != 0 || t < c || t - c >= capacity_) {
    unlock_cleaning();
    return false;
  }
  if (c + capacity_ > need_end) {
    unlock_cleaning();
    return true;
  }
  const std::uint64_t g = std::min(gate(ctx), t);
  // Zero a batch at a time: enough for this claim, and up to an eighth of the ring (at most
  // 256 KiB) beyond it. Measured per publish (64 B, one thread): a 1 MiB cap leaves 43 us stalls at
  // p99.99 on a 64 MiB ring; 16 KiB moves 1-2.5 us stalls into p99.9; 256 KiB keeps p99.9 at
  // 60-160 ns with 5-13 us at p99.99. (Zeroing by consumers, Aeron-style, would remove the stall.)
  const std::uint64_t batch = std::min<std::uint64_t>(capacity_ / 8, 256 << 10);
  const std::uint64_t wanted = std::max(need_end + kAlign - capacity_, c + batch);
  const std::uint64_t limit = std::min(g, wanted);
  // Stop on a record boundary: `cleaned` is where a reader that starts at the oldest message
  // begins. Every record below the gate is committed, so its frame gives its length.
  std::uint64_t target = c;
  while (target < limit && target - c < capacity_) {  // at most a lap, whatever the gate says
    const Frame f = Frame::unpack(frame_at(target).load(std::memory_order_acquire));
    if (f.length < static_cast<std::int32_t>(kAlign)) {
      // A claim not committed. Below every reader's position there is nobody else to find it: if
      // its claimer is dead, it is padding now, and zeroing goes on past it.
      if (f.length <= 0 && unblock_impl(target, owner, alive, true)) continue;
      break;  // a live claim, or a corrupt frame: never past it
    }
    const std::uint64_t next = target + align_up(static_cast<std::uint32_t>(f.length));
    if (next > g) break;
    target = next;
  }
  if (target > c) {
    hdr_->cleaning_to.store(target, std::memory_order_relaxed);  // read only by the next lock holder
    zero(c, target);
    // release: the zeroing above is visible to whoever acquires `cleaned` (try_claim()).
    hdr_->cleaned.store(target, std::memory_order_release);
  }
  unlock_cleaning();
  return target + capacity_ > need_end;
}

}  // namespace shmq::ring

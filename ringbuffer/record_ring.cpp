// The record ring's slow paths: layout, validation, dead-claim recovery and reclaiming space.
#include "ringbuffer/record_ring.hpp"

#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <bit>

namespace shmq::ring {
namespace {

std::uint64_t data_offset_for(std::uint32_t claimers) {
  const std::uint64_t table_end = sizeof(RingHeader) + std::uint64_t(claimers) * sizeof(ClaimerSlot);
  return (table_end + 4095) & ~std::uint64_t(4095);  // the data region starts on a page
}

inline void cpu_relax() noexcept { __builtin_ia32_pause(); }

long membarrier(int cmd) noexcept { return ::syscall(__NR_membarrier, cmd, 0u, 0); }

bool register_now() noexcept {
  // The query first: a kernel without the commands, or a seccomp filter that refuses membarrier,
  // leaves this process on seq_cst intents.
  const long mask = membarrier(MEMBARRIER_CMD_QUERY);
  if (mask < 0 || (mask & MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0 || (mask & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0)
    return false;
  return membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) == 0;
}
}  // namespace

// Once per process. A child of fork() (or clone, vfork, posix_spawn before its exec) keeps the
// kernel's registration (it is per address space and copied with it: MEMBARRIER_CMD_GET_REGISTRATIONS
// says so in the child) and this flag with it; exec clears the registration, and the new image
// registers at its first ring. Opt-out: SHMQ_NO_MEMBARRIER=1 in the environment (a process under a
// seccomp filter that kills on membarrier must not even query it).
void register_cheap_intents() noexcept {
  static const bool once = [] {
    const char* off = std::getenv("SHMQ_NO_MEMBARRIER");
    g_cheap_intents.store(!(off != nullptr && off[0] == '1') && register_now(), std::memory_order_relaxed);
    return true;
  }();
  (void)once;
}

bool heavy_fence() noexcept {
  // Every process of the channel that stores its intents plainly registered for the expedited
  // command; MEMBARRIER_CMD_GLOBAL (no registration needed, slower: it waits for every CPU) is the
  // fallback of a process that cannot use it.
  if (membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0) return true;
  return membarrier(MEMBARRIER_CMD_GLOBAL) == 0;
}

void RecordRing::note_plain_intents() noexcept {
  // A seq_cst RMW whatever the word holds: before any plain intent store of this process (its first
  // claim comes later), and ordered against a reclaimer's seq_cst loads of the tail and this word.
  if (hdr_ != nullptr && g_cheap_intents.load(std::memory_order_relaxed)) hdr_->plain_intents.fetch_or(1, std::memory_order_seq_cst);
}

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
  register_cheap_intents();  // the creator may construct its RecordRing before or after this
  h->plain_intents.store(g_cheap_intents.load(std::memory_order_relaxed) ? 1 : 0, std::memory_order_relaxed);
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
  if (h->max_frame < kHeaderBytes || h->max_frame > h->capacity / 2 + kHeaderBytes || h->max_frame > kMaxFrameLength)
    return "ring max frame out of range";
  return nullptr;
}

RecordRing::RecordRing(void* region)
    : hdr_(static_cast<RingHeader*>(region)),
      claimers_(reinterpret_cast<ClaimerSlot*>(hdr_ + 1)),
      data_(static_cast<std::byte*>(region) + hdr_->data_offset),
      capacity_(hdr_->capacity),
      mask_(hdr_->capacity - 1),
      lap_shift_(static_cast<unsigned>(std::countr_zero(hdr_->capacity))),
      max_frame_(hdr_->max_frame),
      claimer_count_(hdr_->claimers) {
  register_cheap_intents();
  note_plain_intents();
}

RecordRing::RecordRing(void* region, std::uint64_t capacity, std::uint32_t claimers, std::uint64_t max_frame)
    : hdr_(static_cast<RingHeader*>(region)),
      claimers_(reinterpret_cast<ClaimerSlot*>(hdr_ + 1)),
      data_(static_cast<std::byte*>(region) + data_offset_for(claimers)),
      capacity_(capacity),
      mask_(capacity - 1),
      lap_shift_(static_cast<unsigned>(std::countr_zero(capacity))),
      max_frame_(max_frame),
      claimer_count_(claimers) {
  register_cheap_intents();
  note_plain_intents();
}

bool RecordRing::tail_usable(std::uint64_t t, std::uint64_t& cleaned_hint) const noexcept {
  // acquire: pairs with the release store of `cleaned` in reclaim().
  cleaned_hint = hdr_->cleaned.load(std::memory_order_acquire);
  return t % kAlign == 0 && t >= cleaned_hint;
}

std::uint64_t RecordRing::claim_in_progress(std::uint64_t t, std::uint64_t w) const noexcept {
  const Frame f = Frame::unpack(w);
  if ((f.type != RecordType::Claimed && f.type != RecordType::Padding) || f.lap != lap_of(t) || f.claimer >= claimer_count_)
    return 0;
  const ClaimerSlot& c = claimers_[f.claimer];
  // intent first, then claim_frame: the claimer stores claim_frame, then intent (release, or seq_cst:
  // a release too), so an intent of T read here (acquire) comes with the claim_frame of that claim or a
  // later one (made only once the tail is past T, or at T again: a pair of one claim). Read the
  // other way round, an older claim's frame could pair with a newer claim's position: a stale word
  // at T equal in value to that older marker would pass for a claim in progress (the SPIN model's
  // counterexample with an adopted owner that claims again: ring_v3.sh, MUT_CIP_ORDER).
  if (c.intent.load(std::memory_order_acquire) != t || c.claim_frame.load(std::memory_order_relaxed) != w) return 0;
  const std::uint64_t span = f.type == RecordType::Padding ? f.length : align_up(f.length);
  if (span < kAlign || span % kAlign != 0 || t + span > lap_end(t) || (f.type == RecordType::Claimed && f.length > max_frame_))
    return 0;  // not a claim of ours to believe: replaced as a stale word
  return span;
}

void RecordRing::claim_lost(std::uint64_t pos, std::uint64_t end, std::uint64_t mine) noexcept {
  std::uint64_t expected = mine;
  // release: pairs with the acquire in read(); CAS: a reader may be padding it too.
  // The padding keeps the marker's toggle (see Frame): it too differs from the word the claim replaced.
  frame_at(pos).compare_exchange_strong(expected, Frame::pack(static_cast<std::uint32_t>(end - pos), RecordType::Padding, 0, 0, lap_of(pos), Frame::toggle_of(mine)),
                                        std::memory_order_release, std::memory_order_relaxed);
}

void RecordRing::adopt_claimer(std::uint32_t i, std::uint64_t owner) noexcept {
  ClaimerSlot& c = claimers_[i];
  // The previous owner (dead, or gone) may have died between marking its claim at the tail and
  // moving the tail: move it past that claim now (a reader pads it), as any claimer would have,
  // before the slot forgets the claim and its marker can no longer be told from a stale word.
  if (const std::uint64_t p = c.intent.load(std::memory_order_acquire); p != kNoIntent && p % kAlign == 0) {
    const std::uint64_t w = c.claim_frame.load(std::memory_order_relaxed);
    if (frame_at(p).load(std::memory_order_acquire) == w)
      if (const std::uint64_t span = claim_in_progress(p, w)) {
        std::uint64_t expected = p;
        hdr_->tail.compare_exchange_strong(expected, p + span, std::memory_order_seq_cst, std::memory_order_relaxed);
      }
  }
  c.intent.store(kNoIntent, std::memory_order_relaxed);
  c.claim_frame.store(0, std::memory_order_relaxed);
  // The new epoch first: from here on, a frame stamped with the old epoch reads as a dead claim.
  c.epoch.fetch_add(1, std::memory_order_seq_cst);
  // release: pairs with the acquire load of `owner` in claimer_alive() / unblock().
  c.owner.store(owner, std::memory_order_release);
}

void RecordRing::release_claimer(std::uint32_t i) noexcept {
  ClaimerSlot& c = claimers_[i];
  // A live owner releasing its slot is not between marking a claim and moving the tail.
  c.intent.store(kNoIntent, std::memory_order_relaxed);
  c.claim_frame.store(0, std::memory_order_relaxed);
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
  const std::uint64_t w = word.load(std::memory_order_acquire);  // pairs with the claim/commit stores
  const Frame f = Frame::unpack(w);
  const bool this_lap = f.lap == lap_of(pos);
  if (this_lap && (f.type == RecordType::Data || f.type == RecordType::Padding)) return true;
  // acquire: pairs with the tail CAS in try_claim().
  const std::uint64_t t = hdr_->tail.load(std::memory_order_acquire);
  if (pos >= t || t - pos > capacity_) return false;
  // acquire: pairs with the release store of `cleaned` in reclaim().
  if (pos < hdr_->cleaned.load(std::memory_order_acquire)) return false;  // reclaimed: not a claim of this lap
  // Below the tail every claim is marked: anything but a claim marker of this lap is not ours to
  // guess (read() reports it).
  if (!this_lap || f.type != RecordType::Claimed) return false;
  // Dead if its claimer's slot changed owner (the frame keeps the low 12 bits of the epoch) or died.
  if (f.claimer < claimer_count_) {
    ClaimerSlot& c = claimers_[f.claimer];
    const std::uint64_t owner_token = c.owner.load(std::memory_order_acquire);
    if ((c.epoch.load(std::memory_order_acquire) & kEpochMask) == f.epoch && owner_token != 0 && alive(owner_token)) return false;
  }
  const std::uint64_t len = align_up(f.length);
  if (len < kAlign || pos + len > lap_end(pos) || pos + len > t) return false;  // read() reports it
  if (f.claimer < claimer_count_) {
    // Before the padding frame (the release CAS below orders it): once the space is reclaimed,
    // `padded` is what says this claim was never committed. Claims are padded in position order,
    // so the value only grows; the CAS loop keeps it so when two readers race (bounded: a peer
    // that keeps changing the word is not waited for).
    std::atomic<std::uint64_t>& padded = claimers_[f.claimer].padded;
    std::uint64_t seen = padded.load(std::memory_order_relaxed);
    for (int tries = 0; tries < 1024 && seen < pos + 1 && !padded.compare_exchange_weak(seen, pos + 1, std::memory_order_relaxed);
         ++tries) {
    }
  }
  // The padding is stored under clean_lock, if POS was not reclaimed since it was read (under the
  // lock `cleaned` does not move: a position at or above it still holds this lap's word, so the
  // CAS cannot succeed on space reused a lap later).
  if (g_unblock_hook) g_unblock_hook(pos);
  if (!locked) lock_cleaning(owner, alive);
  SHMQ_CRASH_POINT("unblock.holding_clean_lock");
  if (pos >= hdr_->cleaned.load(std::memory_order_relaxed)) {  // only the lock holder moves it
    std::uint64_t expected = w;
    // CAS: another reader may be turning the same claim into padding; either of us may win.
    // The padding keeps the marker's toggle (see Frame): it too differs from the word the claim replaced.
    word.compare_exchange_strong(expected, Frame::pack(static_cast<std::uint32_t>(len), RecordType::Padding, 0, 0, lap_of(pos), f.toggle),
                                 std::memory_order_release, std::memory_order_relaxed);
  }
  if (!locked) unlock_cleaning();
  return true;
}

void RecordRing::start(std::uint64_t pos) noexcept {
  hdr_->tail.store(pos, std::memory_order_relaxed);
  hdr_->cleaned.store(pos, std::memory_order_relaxed);
}

RecordHeader* RecordRing::place(std::uint64_t pos, std::uint32_t frame_len) noexcept {
  std::uint64_t t = hdr_->tail.load(std::memory_order_relaxed);
  const std::uint64_t end = pos + align_up(frame_len);
  if (pos < t || pos % kAlign != 0 || frame_len < kHeaderBytes || frame_len > max_frame_ || end > lap_end(pos) ||
      end > hdr_->cleaned.load(std::memory_order_relaxed) + capacity_)
    return nullptr;
  pad_to(pos);  // the gap (padding or a dead claim in the old ring) becomes padding
  hdr_->tail.store(end, std::memory_order_relaxed);
  return reinterpret_cast<RecordHeader*>(at(pos));
}

bool RecordRing::pad_to(std::uint64_t end) noexcept {
  std::uint64_t t = hdr_->tail.load(std::memory_order_relaxed);
  if (end < t || end % kAlign != 0 || end > hdr_->cleaned.load(std::memory_order_relaxed) + capacity_) return false;
  while (t < end) {  // lap by lap: padding never crosses the end of the ring
    const std::uint64_t to = std::min(end, lap_end(t));
    frame_at(t).store(Frame::pack(static_cast<std::uint32_t>(to - t), RecordType::Padding, 0, 0, lap_of(t)), std::memory_order_relaxed);
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
  // Nothing to finish for a holder that died: reclaiming is one store of `cleaned`.
  lock_owner_word(hdr_->clean_lock, owner, alive);
}

bool RecordRing::reclaim(std::uint64_t need_end, std::uint64_t owner, GateFn gate, void* ctx, AliveFn alive, bool alone) noexcept {
  lock_cleaning(owner, alive);
  const std::uint64_t c = hdr_->cleaned.load(std::memory_order_relaxed);  // only the lock holder writes it
  // seq_cst, then the heavy fence: pairs with the intent store in try_claim() and its tail re-check
  // (see register_cheap_intents()): if this tail is past a claimer's T, the intent loads below see its intent T.
  const std::uint64_t t = hdr_->tail.load(std::memory_order_seq_cst);
  // `cleaned` and the tail come from shared memory: a ring where they are not record boundaries
  // a lap apart at most is corrupt; no space is made in it (the caller's wait times out).
  if (c % kAlign != 0 || t % kAlign != 0 || t < c || t - c > capacity_) {
    unlock_cleaning();
    return false;
  }
  if (c + capacity_ >= need_end) {
    unlock_cleaning();
    return true;
  }
  // The lowest position a reader (or the journal) still needs: a record boundary, never past what
  // was claimed. Space from there on stays; so does the intent of every live claimer (from before
  // its tail re-check to its commit: its frame CAS may still be to come, or its record still being
  // written; with no group the gate is the tail and this is what keeps the claim). A dead
  // claimer's marked claim is padded here; a dead claimer with no marker makes no more stores.
  std::uint64_t g = std::min(gate(ctx, need_end > capacity_ ? need_end - capacity_ : 0), t);
  if (g + capacity_ < need_end) {
    // Not enough for this claim even before the intents lower it: free nothing yet (the caller
    // waits and asks again), so that the fence below is paid once per claim it lets through, not
    // once per record a slow reader frees while producers wait on a full ring.
    unlock_cleaning();
    return false;
  }
  // Where no process stores intents plainly (the word is 0, read after the tail: a process that
  // sets it later makes its tail re-checks after this tail load), the seq_cst stores and loads are
  // the fence and no syscall is made; nor where the caller is the only live claimer (dead ones
  // store nothing more).
  if (!alone && hdr_->plain_intents.load(std::memory_order_seq_cst) != 0 && !heavy_fence()) {
    // No membarrier in this process (a seccomp filter, SHMQ_NO_MEMBARRIER) while claimers of others
    // rely on it: nothing is freed (the caller's wait times out, as on a ring that cannot be
    // reclaimed). Every process of a channel whose producers fill the ring needs membarrier, or none.
    unlock_cleaning();
    return false;
  }
  for (std::uint32_t i = 0; i < claimer_count_; ++i) {
    // seq_cst: see the tail load above.
    const std::uint64_t p = claimers_[i].intent.load(std::memory_order_seq_cst);
    if (p == kNoIntent || p < c || p >= g || p % kAlign != 0) continue;
    const Frame f = Frame::unpack(frame_at(p).load(std::memory_order_acquire));
    if (f.type == RecordType::Claimed && f.lap == lap_of(p) && f.claimer == i) {
      if (!unblock_impl(p, owner, alive, true)) g = p;  // live: still being written
      continue;
    }
    // No marker of its own there (yet): a live claimer may still CAS it, or commit is clearing it.
    const std::uint64_t owner_token = claimers_[i].owner.load(std::memory_order_acquire);  // pairs with adopt_claimer()
    if (owner_token != 0 && alive(owner_token)) g = p;
  }
  // The gate comes from shared memory (cursors, held positions): only an aligned one within
  // [cleaned, tail] moves `cleaned`.
  if (g > c && g % kAlign == 0) {
    // release: every reader's use of the space below G happened before a claim that acquires it.
    hdr_->cleaned.store(g, std::memory_order_release);
  }
  unlock_cleaning();
  return std::max(g, c) + capacity_ >= need_end;
}

}  // namespace shmq::ring

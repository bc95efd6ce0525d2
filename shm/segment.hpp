// The shared-memory segment of a channel: its layout, its creation and its validation.
//
// Layout of /dev/shm/shmq.NAME (every offset is recorded in the header and checked at attach,
// on a process-local copy that is the only one used afterwards: see Geometry):
//
//   +----------------+  0
//   | SegmentHeader  |  magic "SHMQSEG1", layout version, fingerprint, init state, geometry
//   +----------------+  producers_offset
//   | ProducerSlot[] |  max_producers: name, stable id, owner, next sequence
//   +----------------+  groups_offset
//   | GroupSlot[]    |  max_groups: name, delivery cursor
//   +----------------+  consumers_offset
//   | ConsumerSlot[] |  max_consumers: owner, group, heartbeat, in-flight positions
//   +----------------+  dedup_offset
//   | dedup windows  |  max_producers x dedup_window DedupEntry (16 B): which sequences were accepted
//   +----------------+  ring_offset
//   | RecordRing     |  ring header, claimer table (one per producer slot), data (ring_bytes)
//   +----------------+  segment_bytes
//
// A huge-page segment (ChannelOptions::huge_pages) is the file shmq.NAME in a hugetlbfs mount,
// and /dev/shm/shmq.NAME is a symbolic link to it, made by symlink(2) (which fails when the name
// is taken, as O_EXCL does); an opener follows such a link only when this uid owns it and it names
// shmq.NAME in a hugetlbfs directory, and then opens the file O_NOFOLLOW with the checks below.
// Pre-faulting (ChannelOptions::prefault): the creator allocates the whole file (fallocate) and
// populates its mapping (MADV_POPULATE_WRITE) before it initialises it; every opener populates its
// own mapping (MADV_POPULATE_READ).
//
// The file is created with open(2) O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC and fchmod'ed to the
// channel's mode; a file that was there already is used only if this uid owns it and its mode
// allows no more than the channel's mode (a squatter's file is refused, with an Error naming the
// path, its owner and mode; ChannelOptions::allow_foreign_segment opts out); a symbolic link at
// the path is refused, never followed.
//
// Creation is race-free between processes: every opener takes an flock on the segment's file
// (Boost.Interprocess's file_lock is an fcntl lock, which is per process and dropped when any fd of
// the file is closed: not safe between threads, hence flock). The creator holds it while it sizes
// and fills the segment, and marks the header Ready last; the kernel drops the lock if it dies.
// An opener that then finds a segment that was never made Ready (all zero, or Initializing) knows
// its creator died half-way and initialises it again: such a segment never held a message. A
// segment with anything else in it that does not validate is refused, never re-initialised.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "ringbuffer/record_ring.hpp"
#include "shm/dedup.hpp"
#include "shmq/shmq.hpp"

namespace shmq::detail {

inline constexpr char kMagicBytes[8] = {'S', 'H', 'M', 'Q', 'S', 'E', 'G', '1'};
inline constexpr std::uint32_t kLayoutVersion = 6;  // 6: run takes (ConsumerSlot::take_from, take_entry), the cheap gate (ConsumerSlot::low_held, GroupSlot::list_low, moves); 5: exclusive producers and consumers (ProducerSlot::exclusive, ConsumerSlot::exclusive); 4: ring v3 (lap-tagged frames, claims marked by CAS before the tail moves, no zeroing); 3: group cursor taker, give-back step, consumer group generation
inline constexpr std::uint32_t kInitializing = 0x494e4954;  // "INIT"
inline constexpr std::uint32_t kReady = 0x52454459;         // "REDY"
inline constexpr std::size_t kMaxChannelName = 200;
inline constexpr std::size_t kMaxSlotName = 63;
inline constexpr std::uint32_t kMaxInFlight = 256;
inline constexpr std::uint32_t kMaxDedupWindow = 1u << 16;  // sequences per producer (a power of two)

// The longest key a record may carry: 65535 bytes, and no more than the payload limit.
constexpr std::uint64_t max_key_bytes(std::uint64_t max_message_bytes) { return max_message_bytes < 65535 ? max_message_bytes : 65535; }

enum SlotState : std::uint32_t { kFree = 0, kActive = 1 };

// An in-flight entry holds position + 1 of a held message. While a message moves from a consumer
// to its group's give-back list (under the group's give-back lock), its entry carries kMovingBit:
// still gating the ring, no longer ackable by its owner. While a consumer takes a message from
// its group's cursor, its entry carries kTentativeBit from before its cursor CAS until it knows the
// CAS succeeded: gating the ring, but not (yet) a message the consumer holds; a reaper gives back
// such an entry only if the cursor says its owner took it (see resolve_tentative() in channel.cpp).
inline constexpr std::uint64_t kMovingBit = 1ull << 63;
inline constexpr std::uint64_t kTentativeBit = 1ull << 62;
constexpr std::uint64_t held_position(std::uint64_t entry) { return (entry & ~(kMovingBit | kTentativeBit)) - 1; }

// Who made the group cursor's last move past a record: in-flight entry K of consumer slot C, a
// consumer of generation GENERATION of the group slot (C + 1 = 0: nobody known, as after the
// group's creation or a recovery). Stored next to the cursor by the same 16-byte CAS (see
// GroupSlot::next_taker); the generation keeps a consumer of a removed group from taking
// records of the group that reused its slot.
constexpr std::uint64_t cursor_taker(std::uint32_t generation, std::uint32_t c, std::uint32_t k) {
  return std::uint64_t(generation) << 32 | (std::uint64_t(c) + 1) << 8 | (k & 0xff);
}
constexpr std::uint32_t taker_generation(std::uint64_t taker) { return static_cast<std::uint32_t>(taker >> 32); }

struct alignas(64) SegmentHeader {
  char magic[8];                          // "SHMQSEG1"
  std::uint32_t layout_version;
  std::uint32_t fingerprint;              // hash of the sizes and offsets of these structures
  std::atomic<std::uint32_t> init_state;  // 0 / kInitializing / kReady
  std::uint32_t durability;               // Durability
  std::uint64_t segment_bytes;
  std::uint64_t ring_bytes;
  std::uint64_t max_message_bytes;
  std::uint32_t max_producers;
  std::uint32_t max_groups;
  std::uint32_t max_consumers;
  std::uint32_t dedup_window;
  std::uint32_t max_deliveries;
  std::uint32_t reserved;
  std::uint64_t producers_offset;
  std::uint64_t groups_offset;
  std::uint64_t consumers_offset;
  std::uint64_t ring_offset;
  std::uint64_t dedup_offset;
  std::uint64_t created_ns;
  std::uint64_t creator_token;
  // Random, made when the channel is made (a Memory segment, or a durable channel's journal; a
  // recovery keeps the journal's): inner ids are unique within one incarnation.
  std::uint64_t incarnation;
  alignas(64) std::atomic<std::uint64_t> registry_lock;     // owner token; serialises table changes
  std::atomic<std::uint64_t> next_producer_id;              // ids handed out so far
  std::atomic<std::uint64_t> last_reap_ns;                  // when a process last looked for dead consumers
  // Durability (Async/Sync channels): the journaler publishes how far the journal is fdatasync'd.
  alignas(64) std::atomic<std::uint64_t> durable_position;  // ring records below it are durable
  std::atomic<std::uint32_t> durable_seq;                   // futex word: bumped when it moves and someone waits
  std::atomic<std::uint32_t> durable_waiters;               // publishers blocked on durable_seq
  std::atomic<std::uint64_t> journaler_token;               // owner token of the journaler, 0 when none
  std::atomic<std::uint64_t> journal_errors;                // journaling attempts that failed
  std::atomic<std::uint64_t> registry_version;              // bumped when a group or producer is added or removed
  char journal_path[1024];                                  // absolute; the creator's: every process uses it
};

struct alignas(64) ProducerSlot {
  std::atomic<std::uint32_t> state;       // SlotState; kActive once registered (kept across owners)
  // 1: the owner is an exclusive producer (ProducerOptions::exclusive), set under the registry
  // lock by each owner; counts only while the owner lives.
  std::atomic<std::uint32_t> exclusive;
  char name[kMaxSlotName + 1];
  std::uint64_t id;                       // stable producer id
  std::atomic<std::uint64_t> owner;       // owner token of the process using it; 0 when none
  // The owner's line. next_seq is one above the highest sequence accepted (the dedup window's top;
  // the default sequence of the next publish is max(next_seq, reserved_seq)).
  alignas(64) std::atomic<std::uint64_t> next_seq;
  std::atomic<std::uint64_t> published;              // records appended
  // The publish in progress, for a successor that takes over from an owner that died: sequence
  // pending_seq is being committed at position pending_entry - 1 (0: none). Set once the space is
  // claimed, cleared once the dedup window records it (shm/dedup.hpp).
  std::atomic<std::uint64_t> pending_seq;
  std::atomic<std::uint64_t> pending_entry;
  // Default sequences below this may have been used by an incarnation of the producer that a
  // recovery from the journal could not see (Async records lost with the host): the default
  // sequence goes on from max(next_seq, reserved_seq), so an inner id is never used twice.
  std::atomic<std::uint64_t> reserved_seq;
};

// A message given back to its group (nack, or held by a consumer that died or left): delivered
// again, before newer ones, once not_before_ns has passed. A plain array under a lock rather than
// a Boost.Lockfree queue: the list is taken lowest position first among the entries whose delay
// has passed (a scan, not FIFO), and a process SIGKILLed inside a fixed-size lockfree push,
// between taking a node from the free list and linking it, would leak that node for good.
struct GiveBackEntry {
  std::atomic<std::uint64_t> position_plus1;  // 0 = empty
  std::atomic<std::uint64_t> not_before_ns;   // CLOCK_MONOTONIC
  std::atomic<std::uint32_t> deliveries;      // deliveries made so far
  std::uint32_t reserved;
};
inline constexpr std::uint32_t kGiveBackEntries = 1024;

struct alignas(64) GroupSlot {
  std::atomic<std::uint32_t> state;       // SlotState
  std::uint32_t start;                    // Start the group was created with
  char name[kMaxSlotName + 1];
  std::uint64_t created_position;
  std::atomic<std::uint32_t> generation;  // bumped each time the slot is given to a new group
  // One line for the delivery cursor: consumers of the group CAS it, and look at given_back.
  // `next` and `next_taker` form one 16-byte word that a take changes with one CAS
  // (cas_cursor() in channel_state.hpp): a reaper can then tell whether a dead consumer's
  // tentative entry was the take that moved the cursor (see resolve_tentative()).
  alignas(64) std::atomic<std::uint64_t> next;       // next position to deliver
  std::atomic<std::uint64_t> next_taker;             // cursor_taker() of the last take; 0 none
  std::atomic<std::uint64_t> delivered;              // deliveries made by consumers that left (live ones count in their slot)
  std::atomic<std::uint64_t> dead_lettered;          // messages moved to NAME.dlq
  std::atomic<std::uint32_t> given_back;             // entries in use in give_back[]
  // The give-back list: rarely touched, under its own lock (owner token; a dead holder is replaced).
  alignas(64) std::atomic<std::uint64_t> give_back_lock;
  // For the cheap gate (ChannelState::cheap_gate()), both written only by the give-back lock's
  // holder: list_low is at or below every position on the list (~0: none known); moves is odd
  // from the moment a holder takes the lock until it unlocks (left odd by a holder that died,
  // until the next one settles), so that a reader who sees it even and unchanged around its
  // reads saw no message move between the list and an in-flight table.
  std::atomic<std::uint64_t> list_low;
  std::atomic<std::uint64_t> moves;
  // The step the lock holder is making between the list and an in-flight entry (give_back_step()
  // in channel_state.hpp; 0: none) and the position + 1 it moves: written before the step's first
  // store, cleared after its last, so that the next holder finishes or undoes the step of a holder
  // that died (settle_give_back() in channel.cpp).
  std::atomic<std::uint64_t> give_back_step;
  std::atomic<std::uint64_t> give_back_step_position;
  // Serialises the copies of this group's poison messages to NAME.dlq (owner token; a dead holder
  // is replaced): their producer there, "dlq-g<index>", is used by one process at a time.
  std::atomic<std::uint64_t> dead_letter_lock;
  GiveBackEntry give_back[kGiveBackEntries];
};

struct alignas(64) ConsumerSlot {
  std::atomic<std::uint32_t> state;       // SlotState
  // Atomics (relaxed): a reaper or a checkpoint may read a slot while it is freed and taken again.
  std::atomic<std::uint32_t> group;       // index into the group table
  std::atomic<std::uint64_t> owner;       // owner token
  std::atomic<std::uint64_t> heartbeat_ns;
  std::atomic<std::uint32_t> max_in_flight;
  std::atomic<std::uint32_t> group_generation;  // the group slot's generation when the consumer joined
  // 1: the group's only consumer (ConsumerOptions::exclusive): it moves the cursor with plain
  // stores and never writes next_taker, so its tentative entry at P was taken iff next > P.
  std::atomic<std::uint32_t> exclusive;
  std::atomic<std::uint64_t> visibility_timeout_ns;  // 0: a live consumer keeps what it holds
  alignas(64) std::atomic<std::uint64_t> delivered;  // deliveries to this consumer (the owner's line)
  // The shared consumer's take in progress: a run of records from P1 taken with one cursor CAS
  // whose taker word names (this slot, take_entry), take_entry being the in-flight entry of P1.
  // take_from is (P1 + 1) | kTentativeBit from before the run's tentative entries until the
  // owner knows the outcome, (P1 + 1) once a confirmer (confirm_taker()) or a reaper
  // (resolve_run()) found it taken, 0 when no take is in progress. Every tentative entry of the
  // slot belongs to that run, and is decided by it (resolve_tentative() in channel.cpp).
  std::atomic<std::uint64_t> take_from;
  std::atomic<std::uint32_t> take_entry;
  // At or below the position of every entry of in_flight (~0: it holds nothing), for the cheap
  // gate. Written by the owner only: lowered before an entry below it is stored (a take from the
  // cursor by a consumer that holds nothing, a take from the give-back list), raised to what its
  // table holds now and then, and to ~0 once it holds nothing.
  std::atomic<std::uint64_t> low_held;
  // What the consumer holds: position + 1 of each message it polled and has not acked; 0 = empty.
  alignas(64) std::atomic<std::uint64_t> in_flight[kMaxInFlight];
  std::atomic<std::uint32_t> deliveries[kMaxInFlight];  // of each held message, this one included
  std::atomic<std::uint64_t> delivered_at[kMaxInFlight]; // CLOCK_MONOTONIC; kept with a visibility timeout only
};

static_assert(std::is_standard_layout_v<SegmentHeader> && std::is_standard_layout_v<ProducerSlot> &&
              std::is_standard_layout_v<GroupSlot> && std::is_standard_layout_v<ConsumerSlot>);
static_assert(offsetof(SegmentHeader, layout_version) == 8);  // documented: tools and tests rely on it
static_assert(offsetof(SegmentHeader, registry_lock) % 64 == 0);
static_assert(offsetof(ProducerSlot, next_seq) % 64 == 0 && offsetof(ProducerSlot, pending_entry) < offsetof(ProducerSlot, next_seq) + 64);
static_assert(offsetof(GroupSlot, next) % 64 == 0 && offsetof(GroupSlot, given_back) < offsetof(GroupSlot, next) + 64);
static_assert(offsetof(GroupSlot, give_back_lock) % 64 == 0);
static_assert(offsetof(GroupSlot, next_taker) == offsetof(GroupSlot, next) + 8 && offsetof(GroupSlot, next) % 16 == 0,
              "the cursor and its taker are one 16-byte CAS word");
static_assert(offsetof(ConsumerSlot, in_flight) % 64 == 0);

// Hash of the sizes and offsets above: two builds that disagree on the layout refuse each other.
std::uint32_t layout_fingerprint() noexcept;

#if defined(SHMQ_CRASH_POINTS)
// Tests only (builds with SHMQ_CRASH_POINTS): segments opened from now on in this process are
// mapped between two PROT_NONE pages, so that any access outside the segment dies with SIGSEGV.
void set_guard_pages(bool on) noexcept;
#endif

// Called by the creating process in the middle of initialising a new segment (after it is sized,
// before it is marked Ready). For crash tests only.
void set_init_hook(void (*hook)());

// Checks a channel name: 1..200 characters of [A-Za-z0-9._-], not starting with '.', no "..".
// Throws Error naming the channel and what is wrong.
void check_channel_name(std::string_view name);
// Checks a group or producer name (WHAT says which): 1..63 characters of [A-Za-z0-9._-].
void check_slot_name(std::string_view channel, std::string_view what, std::string_view name);
std::string segment_path(std::string_view name);  // /dev/shm/shmq.NAME
// Removes the segment of NAME: /dev/shm/shmq.NAME and, when that is the link of a huge-page
// segment (ChannelOptions::huge_pages), first the file in hugetlbfs it names. Returns 0 or the
// errno of the failed unlink (ENOENT: no such channel).
int remove_segment(std::string_view name) noexcept;

// The geometry of a segment: its sizes and the offsets of its tables. Copied out of the header
// into process-local memory once, at attach, and validated there; never read from the segment
// again (a peer may rewrite the header at any time: the copy is what every process uses).
struct Geometry {
  Durability durability = Durability::Memory;
  std::uint64_t segment_bytes = 0;
  std::uint64_t ring_bytes = 0;
  std::uint64_t max_message_bytes = 0;
  std::uint32_t max_producers = 0;
  std::uint32_t max_groups = 0;
  std::uint32_t max_consumers = 0;
  std::uint32_t dedup_window = 0;
  std::uint32_t max_deliveries = 0;
  std::uint64_t producers_offset = 0;
  std::uint64_t groups_offset = 0;
  std::uint64_t consumers_offset = 0;
  std::uint64_t dedup_offset = 0;
  std::uint64_t ring_offset = 0;
  std::string journal_path;  // the creator's, as the header had it at attach
};

// A mapped, validated segment.
class Segment {
 public:
  // Attach to the segment of NAME or create it (CREATE false: attach only). OPTIONS must have been
  // checked. Throws Error.
  // BEFORE_READY, if set, is called on a segment this call initialises, after its tables and ring
  // are laid out and before it is marked Ready, still under the creation lock: recovery from the
  // journal fills it there, so nobody sees it half-recovered. If it throws, the segment stays
  // not Ready (the next opener initialises it again) and the error propagates.
  using BeforeReady = void (*)(Segment&, void* ctx);
  static std::unique_ptr<Segment> open(std::string_view name, const ChannelOptions& options, bool create,
                                       BeforeReady before_ready = nullptr, void* ctx = nullptr);
  ~Segment();

  // The header, for its live words (locks, counters, futex words). Its geometry fields are not
  // to be read: geometry() is the validated copy.
  SegmentHeader& header() const noexcept { return *header_; }
  const Geometry& geometry() const noexcept { return geometry_; }
  // The tables, at the offsets validated at attach.
  ProducerSlot* producers() const noexcept { return producers_; }
  GroupSlot* groups() const noexcept { return groups_; }
  ConsumerSlot* consumers() const noexcept { return consumers_; }
  // The dedup window entries of producer slot I (dedup_window of them).
  DedupEntry* dedup_entries(std::uint32_t i) const noexcept;
  // The dedup window of producer slot I: its entries and its next_seq.
  DedupWindow dedup_window(std::uint32_t i) const noexcept;
  ring::RecordRing& ring() noexcept { return ring_; }
  bool created() const noexcept { return created_; }
  // Whether /dev/shm/shmq.NAME is still this segment (stat of the name vs fstat of the mapped
  // file): false once it was removed (shmq rm, an unlink) or replaced by a new one.
  bool still_named(std::string_view name) const noexcept;

 private:
  Segment() = default;
  static std::unique_ptr<Segment> open_once(std::string_view name, const ChannelOptions& options, bool create,
                                            BeforeReady before_ready, void* ctx);
  struct Mapping;
  // Takes the tables and the ring from GEOMETRY (validated) over the mapping at header_.
  void adopt(const Geometry& geometry);
  std::unique_ptr<Mapping> mapping_;
  SegmentHeader* header_ = nullptr;
  Geometry geometry_;
  ProducerSlot* producers_ = nullptr;
  GroupSlot* groups_ = nullptr;
  ConsumerSlot* consumers_ = nullptr;
  DedupEntry* dedup_ = nullptr;
  ring::RecordRing ring_;
  bool created_ = false;
};

}  // namespace shmq::detail

// shmq: a message queue for the processes of one Linux host.
//
// Contract, in one paragraph. A Channel is a named log of messages in a shared-memory segment
// (/dev/shm/shmq.NAME). Producers append records to its lock-free ring; every group (a named
// subscription with its own cursor) receives every record, and the consumers of one group share
// its records, each held by exactly one consumer until it is acked. Ring space is reused only when
// every group is past it: a slow group is back-pressure, never loss.
//
// Threads: a Channel may be shared by the threads of a process. A Consumer is used by one thread
// at a time (make one per thread; they are cheap). A Producer may be shared: each publish (dedup
// check, append, window update) runs under its publish lock, and an open Claim holds that lock
// until commit() or abandon(). Setup calls (open, constructors,
// stats) throw shmq::Error; the hot path (publish, claim, poll, ack) returns a Status, does not
// allocate and makes no system call unless it has to wait.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace shmq {

enum class Status {
  Ok,
  Duplicate,   // the inner id was already accepted (a retry), or is older than the dedup window; nothing was appended
  WouldBlock,  // the ring stayed full for the whole timeout
  Timeout,     // a wait (flush) did not finish in time
  TooLarge,    // the payload or key is larger than the channel allows
  Closed,      // the object was moved from, the claim was already committed or abandoned, or (publish,
               // claim) this thread holds an open Claim on the same Producer
  Corrupt,     // the shared memory holds something that breaks the layout's rules
  NotHeld,     // ack/nack of a message this consumer does not hold (acked already, or given away)
  InvalidSeq,  // PublishOptions::seq is 0 or above 2^63 - 1; nothing was appended
};
const char* to_string(Status) noexcept;

// Every setup failure. code() carries the errno (or a std::errc) of the cause; what() names the
// channel, the path where there is one, and what was wrong.
class Error : public std::system_error {
 public:
  Error(std::error_code code, const std::string& what) : std::system_error(code, what) {}
};

enum class Durability { Memory, Async, Sync };
enum class Wait { Spin, Yield, Block };
enum class Start { Earliest, Latest };  // where a new group begins

struct ChannelOptions {
  std::size_t ring_bytes = 64 << 20;        // power of two, at least 64 KiB
  // Payload; at most ring_bytes / 4. 0 (the default): min(1 MiB, ring_bytes / 4), so that a small
  // ring needs no second option. Channel::options() reports the value in force.
  std::size_t max_message_bytes = 0;
  Durability durability = Durability::Async;
  std::filesystem::path journal_dir;        // empty: $SHMQ_DIR, else ./shmq-data
  std::chrono::milliseconds flush_interval{5};
  // Per producer: how many sequence numbers, ending at its highest accepted one, a retry is still
  // recognised in (a power of two up to 65536; 16 bytes each per producer slot in the segment).
  // Fixed when the segment (or the journal) is created.
  std::uint32_t dedup_window = 4096;
  std::uint32_t max_deliveries = 5;         // then NAME.dlq
  unsigned mode = 0600;
  // A segment file /dev/shm/shmq.NAME that this call did not create is refused when another uid
  // owns it, or when its mode allows more than `mode` (attach(): more than its owner writing it):
  // whoever made it first could read or write every message. true accepts such a file (setups
  // that share a channel between uids on purpose).
  bool allow_foreign_segment = false;
  // Table sizes of the segment (fixed when it is created).
  std::uint32_t max_producers = 64;
  std::uint32_t max_groups = 32;
  std::uint32_t max_consumers = 64;
  // Attaching to a segment that exists: false (default) adopts the segment's geometry
  // (ring_bytes, max_message_bytes, table sizes) whatever these options say; true refuses with an
  // Error naming the first field that differs.
  bool strict_geometry = false;
  // How soon a consumer that died is noticed and its messages given back to its group (by any
  // process of the channel that polls, publishes into a full ring, or joins).
  std::chrono::milliseconds liveness_interval{500};
  // How long the Producer and Consumer constructors wait for the channel's registry lock while a
  // live process holds it (a dead holder is replaced at once); then they throw an Error naming the
  // holder's pid. Not stored in the segment: each process's own.
  std::chrono::milliseconds registry_timeout{5000};
  // Journal (Async/Sync): segment file size, and retention. A journal file whose records every
  // group has acked is deleted once it is older than `retention`, or while the journal is larger
  // than `retention_bytes` (0: no size budget); never earlier.
  std::uint64_t journal_segment_bytes = 64 << 20;
  std::chrono::seconds retention{3600};
  std::uint64_t retention_bytes = 0;
  // Recovery from the journal (a segment made again after a reboot or `shmq rm`) holds the
  // journal's LOCK, as its journaler does: one journal, one writer. A process that still has the
  // removed segment mapped gives the lock up within milliseconds once it notices; if some process
  // keeps it longer than this, open throws an Error naming it.
  std::chrono::milliseconds journal_lock_timeout{10000};
  // Pre-faulting. true (the default): the process that creates the segment allocates every page
  // of it at open (fallocate, then MADV_POPULATE_WRITE), and every process that opens it maps all
  // of its pages into its own page tables (MADV_POPULATE_READ), so that no publish or poll takes a
  // page fault, the first lap of the ring included (without it, the first lap faults once per
  // 4 KiB page written). The cost is paid at open: the whole segment is memory from the start (it
  // is after one lap anyway), and a /dev/shm (or memory cgroup) too small for it is an Error from
  // open naming the size and the cause, instead of a SIGBUS in the middle of a publish. false:
  // pages are allocated when first touched (a sparse segment; faults on the first lap).
  // Channel::attach() (the tools) does not pre-fault its own mapping.
  bool prefault = true;
  // Huge pages. true: a segment this call creates lives in a hugetlbfs mount (/dev/hugepages,
  // else the first hugetlbfs mount in /proc/self/mountinfo) as shmq.NAME, and /dev/shm/shmq.NAME
  // is a symbolic link to it, so the name still resolves to one place (open, attach, `shmq ls` and
  // `shmq rm` follow it; a link is followed only when this uid owns it and it names shmq.NAME in a
  // hugetlbfs mount). The huge pages are reserved when the segment is mapped, so a pool that runs
  // short is an Error at open, never a SIGBUS later. Needs a hugetlbfs mount, and free huge pages
  // for the whole segment (vm.nr_hugepages); ring_bytes must be a multiple of the huge page size
  // (2 MiB on x86-64). Where any of these is missing, open throws an Error saying what (with the
  // HugePages_* figures of /proc/meminfo) and how to get it. false (the default): 4 KiB pages in
  // /dev/shm. Only the creator's choice counts: an opener of an existing channel uses it wherever
  // it lives.
  bool huge_pages = false;
};

// What Channel::open found in the journal when it had to rebuild a lost segment from it.
struct RecoveryReport {
  bool recovered = false;            // the segment was rebuilt from the journal
  std::uint64_t records = 0;         // records put back into the ring
  std::uint64_t from_position = 0;   // first position put back
  std::uint64_t end_position = 0;    // where the ring goes on
  std::uint32_t groups = 0;          // groups restored from the checkpoint
  std::uint32_t producers = 0;       // producers restored (ids and sequences)
  std::uint32_t redelivered = 0;     // messages held by consumers at the checkpoint, given back
  std::uint64_t torn_bytes = 0;      // bytes of a torn tail after the last whole record (cut by the journaler)
  std::string torn_what;             // why they are not a record
  // The state checkpoint recovery used: "state", "state.prev" (the newest was refused), or "" when
  // none was usable: the segment was then rebuilt from the journal alone (groups and producer names
  // unknown; groups that start at the earliest get every message the ring holds: at-least-once).
  std::string checkpoint;
  std::string checkpoint_problems;   // why each refused checkpoint was refused (file, field); "" if none was
  // Corruption: durable records that the journal no longer holds (a file cut at a record boundary,
  // a deleted last file, damage in the last records: anything below the durable mark, the journal's
  // end after its last fdatasync). Records in [lost_from, lost_to) are gone; the rest was recovered.
  std::optional<std::uint64_t> lost_from;
  std::uint64_t lost_to = 0;
  std::string lost_what;
  // Messages the checkpoint held or had given back whose records the journal does not hold (beyond
  // its end after a loss, or not a record): not restored.
  std::uint32_t dropped_held = 0;
  std::string dropped_what;
};

struct GroupStats {
  std::string name;
  std::uint64_t next_position;      // next record to deliver
  std::uint64_t low_water_mark;     // oldest record the group still needs (unacked or undelivered)
  std::uint64_t lag_bytes;          // write position - next_position
  std::uint64_t lag_messages;       // records still to deliver: after next_position, plus given_back
  std::uint64_t delivered;          // deliveries made by this group since it was created
  std::uint32_t consumers;          // live consumers attached
  std::uint32_t in_flight;          // messages held by its consumers, not yet acked
  std::uint32_t given_back;         // messages waiting on its give-back list (nacked, or held by a consumer that left or died)
};
struct ProducerStats {
  std::string name;
  std::uint64_t id;
  std::uint64_t next_seq;
  std::uint64_t published;          // records appended through this segment
  int pid;                          // last owner
  bool alive;
};
struct ChannelStats {
  std::string name;
  std::size_t ring_bytes;
  std::size_t max_message_bytes;
  Durability durability;
  std::uint64_t write_position;     // ring tail: end of the last claimed record
  std::uint64_t reclaimed_position; // ring space below this is free again
  std::uint64_t durable_position;   // everything below is durable (Memory: == write_position)
  std::uint64_t depth_bytes;        // write_position - lowest group low-water mark
  std::vector<GroupStats> groups;
  std::vector<ProducerStats> producers;
  std::uint32_t live_producers;
  std::uint32_t live_consumers;
  int journaler_pid;                // process writing the journal (0: none, or a Memory channel)
  std::string journal_dir;          // empty for a Memory channel
  // How far durability is behind (0 for a Memory channel): the bytes published and not yet durable
  // (write_position - durable_position), and the age of the oldest of them (ms; 0 when none), which
  // is what a host crash would cost now.
  std::uint64_t durable_lag_bytes = 0;
  double durable_lag_ms = 0;
  std::uint64_t journal_errors = 0;  // journaling attempts that failed (I/O errors; see the journaler's log)
  // The segment this process has mapped was removed (shmq rm, an unlink of /dev/shm/shmq.NAME) or
  // replaced by a new one rebuilt from the journal: it is no longer journaled, publish returns
  // Status::Closed. Open the channel again to reach the new segment.
  bool removed = false;
};

namespace detail {
struct ChannelState;
struct ProducerState;
struct ConsumerState;
}  // namespace detail

class Channel {  // movable, not copyable
 public:
  // Attach or create. Throws Error for a bad name or options, a segment of another layout, a file
  // that is not a shmq segment, a header that breaks the layout's rules, missing permissions.
  static Channel open(std::string_view name, const ChannelOptions& = {});
  // Attach only: Error (errc::no_such_file_or_directory) if the channel does not exist.
  // RUN_JOURNALER false: this process never journals the channel (for tools that only look). Every
  // process that opens a durable channel with open(), or attach() with RUN_JOURNALER true, runs a
  // journaler thread that may be elected to write the journal: a process that only monitors should
  // attach with false (the CLI's read-only commands do).
  static Channel attach(std::string_view name, bool run_journaler = true);
  // Removes the segment. The journal (DIR/NAME) is removed only when JOURNAL_DIR names its DIR: the
  // journal is the data, and is never removed by default. Processes that have the segment open
  // keep their mapping until they close it. Error (errc::no_such_file_or_directory) if there is no
  // such channel.
  static void remove(std::string_view name, const std::filesystem::path& journal_dir = {});
  static bool exists(std::string_view name);
  // Channels that have a segment on this host.
  static std::vector<std::string> list();

  std::string_view name() const noexcept;
  const ChannelOptions& options() const noexcept;  // the effective options (the segment's geometry)
  const RecoveryReport& recovery() const noexcept;  // what this open rebuilt from the journal, if anything
  ChannelStats stats() const;
  // Removes a group: it stops gating the ring. Its live consumers see Status::Closed.
  // Returns false if there is no such group.
  bool remove_group(std::string_view group);
  // Creates GROUP if it does not exist, so that it retains every message published from now on
  // (or, with Start::Earliest, from the oldest message still held) before any consumer joins.
  void ensure_group(std::string_view group, Start start = Start::Earliest);

  Channel(Channel&&) noexcept;
  Channel& operator=(Channel&&) noexcept;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  ~Channel();

  detail::ChannelState& state() const noexcept { return *state_; }  // for Producer and Consumer

 private:
  explicit Channel(std::unique_ptr<detail::ChannelState>);
  std::unique_ptr<detail::ChannelState> state_;
};

struct InnerId {
  std::uint64_t producer = 0;
  std::uint64_t seq = 0;
  friend bool operator==(const InnerId&, const InnerId&) = default;
};

struct PublishOptions {
  std::string_view key;                     // biz id, carried untouched (at most 65535 bytes, and
                                            // at most max_message_bytes)
  std::optional<Durability> durability;     // default: the channel's
  // Set to retry, or to publish from an outbox with your own numbering (1 to 2^63 - 1, in any order
  // within the dedup window); default: one above the highest sequence this producer has used.
  std::optional<std::uint64_t> seq;
  // How long a full ring is waited on (and another thread's open Claim on the same Producer).
  std::chrono::nanoseconds timeout{std::chrono::seconds(1)};
  Wait wait = Wait::Spin;
};

// Published::position of a Duplicate whose original the dedup window no longer places.
inline constexpr std::uint64_t kNoPosition = ~0ull;

struct Published {
  Status status;
  InnerId id;
  std::uint64_t position;  // Ok: where the record is; Duplicate: where the original is, or kNoPosition
};

class Producer;

// Zero-copy publish: space reserved in the ring. Write data(), then commit(). A Claim destroyed
// without commit() is abandoned: its space becomes padding that consumers skip.
class Claim {
 public:
  Claim() = default;
  Claim(Claim&&) noexcept;
  Claim& operator=(Claim&&) noexcept;
  Claim(const Claim&) = delete;
  Claim& operator=(const Claim&) = delete;
  ~Claim();

  Status status() const noexcept { return status_; }  // Ok when space was reserved
  explicit operator bool() const noexcept { return status_ == Status::Ok && data_ != nullptr; }
  std::span<std::byte> data() const noexcept { return {data_, size_}; }
  // Ok once the record is committed; with Durability::Sync (the claim's PublishOptions or the
  // channel's), once it is durable too, as publish() does: Timeout if it is not within the claim's
  // PublishOptions::timeout (committed all the same; Producer::wait_durable can wait on).
  Published commit() noexcept;
  void abandon() noexcept;

 private:
  friend class Producer;
  detail::ProducerState* producer_ = nullptr;
  std::uint32_t frame_len_ = 0;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::uint64_t position_ = 0;
  InnerId id_{};
  Status status_ = Status::Closed;
};

class Producer;
class Message;
namespace detail {
// Appends a copy of M (its inner id, key and payload) through P: the dead-letter move.
Published publish_copy(Producer& p, const Message& m, std::uint32_t reason, std::uint64_t dedup_seq = 0);
}  // namespace detail

struct ProducerOptions {
  // The channel's only producer while it lives (Aeron's ExclusivePublication): its claims are
  // made with plain stores instead of two locked compare-and-swaps per publish (on the shared
  // tail and frame lines). Error (device_or_resource_busy, naming the other producer and its
  // process) if another producer of the channel is live; while this one lives, adding any other
  // producer is that Error too. A dead one (SIGKILL) counts as gone: the next producer takes over
  // as usual. Threads of this process may still share this Producer.
  bool exclusive = false;
};

class Producer {
 public:
  // Registers the producer NAME in the channel (id and sequence kept across restarts). Error if a
  // live process already has a Producer of that name, or the producer table is full.
  Producer(Channel&, std::string_view name, const ProducerOptions& = {});
  Producer(Producer&&) noexcept;
  Producer& operator=(Producer&&) noexcept;
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;
  ~Producer();

  Published publish(std::span<const std::byte> payload, const PublishOptions& = {});
  Published publish(std::string_view payload, const PublishOptions& = {});
  Claim claim(std::size_t bytes, const PublishOptions& = {});  // zero-copy: Claim::data(), Claim::commit()
  bool flush(std::chrono::nanoseconds timeout);                // everything published so far is durable
  // Waits up to TIMEOUT until the record at POSITION (a Published::position) is durable; true then.
  // After a Sync publish returned Timeout (published, not yet known durable), wait on its
  // position; a retry of it returns Duplicate with the original's position, which this waits on
  // too. A Memory channel: true at once (the record is as durable as it gets); kNoPosition: false.
  bool wait_durable(std::uint64_t position, std::chrono::nanoseconds timeout);
  InnerId last_id() const noexcept;
  std::string_view name() const noexcept;

 private:
  friend Published detail::publish_copy(Producer&, const Message&, std::uint32_t, std::uint64_t);
  std::unique_ptr<detail::ProducerState> state_;
};

class Message {  // a view into the ring: valid until ack or nack
 public:
  InnerId id() const noexcept { return id_; }
  std::string_view key() const noexcept { return key_; }
  std::span<const std::byte> payload() const noexcept { return payload_; }
  std::string_view text() const noexcept {
    return {reinterpret_cast<const char*>(payload_.data()), payload_.size()};
  }
  std::uint32_t deliveries() const noexcept { return deliveries_; }
  std::uint64_t position() const noexcept { return position_; }
  std::uint64_t timestamp_ns() const noexcept { return timestamp_ns_; }

 private:
  friend class Consumer;
  friend struct detail::ConsumerState;
  InnerId id_{};
  std::string_view key_;
  std::span<const std::byte> payload_;
  std::uint64_t position_ = 0;
  std::uint64_t timestamp_ns_ = 0;
  std::uint32_t deliveries_ = 0;
  std::uint32_t slot_ = 0;       // index in the consumer's in-flight table
  std::uint64_t holder_ = 0;     // the consumer that holds it
};

struct ConsumerOptions {
  Start start = Start::Earliest;
  Wait wait = Wait::Block;
  std::uint32_t max_in_flight = 64;  // at most 256
  // Zero: a live consumer keeps what it holds for as long as it takes. Otherwise a message held
  // longer than this is given back to the group (noticed within the channel's liveness_interval)
  // and this consumer's ack or nack of it returns NotHeld.
  std::chrono::milliseconds visibility_timeout{0};
  // The group's only consumer while it lives: it takes each message with plain stores instead of
  // a locked 16-byte compare-and-swap of the group's cursor. Error (device_or_resource_busy,
  // naming the other consumer's process) if the group has another live consumer; while this one
  // lives, adding any other consumer to the group is that Error too. A dead one (SIGKILL) counts
  // as gone: it is reaped (what it held given back to the group) as the next consumer joins.
  bool exclusive = false;
};

class Consumer {
 public:
  // Joins GROUP (creating it, starting per options.start, if it does not exist). Error for a bad
  // group name, a full group or consumer table.
  Consumer(Channel&, std::string_view group, const ConsumerOptions& = {});
  Consumer(Consumer&&) noexcept;
  Consumer& operator=(Consumer&&) noexcept;
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;
  ~Consumer();

  // The next message of the group, waiting up to timeout (zero: do not wait) as options.wait says.
  // Returns nullopt on timeout, when max_in_flight messages are held, or when the group was
  // removed (status() says which). Throws Error if the ring holds a record that breaks the layout.
  std::optional<Message> poll(std::chrono::nanoseconds timeout = {});
  // Up to OUT.size() messages of the group into OUT, in the order poll() would return them:
  // redeliveries first, then a run of committed records taken with one move of the group's
  // cursor (one CAS among competing consumers, plain stores for an exclusive one; at most 64 a
  // move, and no more than max_in_flight less what is held). Waits up to timeout, as poll()
  // does, for the first message only. Returns how many; 0 as poll() returns nullopt (status()
  // says why). A record that breaks the layout ends the batch before it; the next call throws.
  std::size_t poll_batch(std::span<Message> out, std::chrono::nanoseconds timeout = {});
  Status ack(const Message&);
  // Acks each message of BATCH that this consumer holds; returns how many it acked.
  std::size_t ack(std::span<const Message> batch);
  // Acks M and every message this consumer got before M (in the order poll() and poll_batch()
  // returned them) that it still holds; returns how many it acked, 0 if it does not hold M.
  std::size_t ack_up_to(const Message& m);
  Status nack(const Message&, std::chrono::nanoseconds delay = {});  // counts toward max_deliveries
  Status status() const noexcept;   // why the last poll returned nullopt (Timeout, WouldBlock, Closed)
  std::uint32_t in_flight() const noexcept;
  std::string_view group() const noexcept;

 private:
  std::unique_ptr<detail::ConsumerState> state_;
};

}  // namespace shmq

#include "shmq/keyed.hpp"  // KeyedConsumer

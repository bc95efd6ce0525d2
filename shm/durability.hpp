// Durability of a channel: the journaler (ring -> journal, group commit, durable position,
// checkpoints, retention), waiting for durability, and recovery of a lost segment from the journal.
// Implemented in shm/journaler.cpp (the Journaler, wait_durable) and shm/recovery.cpp (journal
// path and meta, adopt_journal_geometry, prepare_durable_segment, checkpoint encode/decode/capture).
//
// The journaler. Every process that opens an Async or Sync channel runs a Journaler thread; the
// journal directory's LOCK (an flock the kernel frees when its holder dies) elects which one
// writes. The others probe the lock every flush_interval / 2 (0.5 to 2 ms) and open a Writer as
// soon as it is free, so a journaler that dies is replaced within that plus the Writer's open (it
// reads the last two journal files) and the cut back to the durable position.
// The writer reads committed records from the ring at its own cursor, appends them to the journal,
// fdatasyncs (group commit: one sync covers everything appended so far) and then publishes
// SegmentHeader::durable_position. Ring space is reused only below it (it is part of the gate).
// A journaler never trusts what the journal holds at or past the durable position: when it takes
// over (also after its own failed fdatasync, which fails the Writer) it cuts the journal back to
// the durable position and writes those records again from the ring. After a failed fdatasync
// Linux marks the pages clean, so a re-read of the page cache proves nothing (PostgreSQL's
// "fsyncgate"); a publish is Ok only once a later fdatasync covered its bytes.
// Sync: it syncs as soon as it has caught up with the tail or a publisher waits. Async: at least
// every flush_interval, timed from the start of the previous write-out, so a host crash costs
// what was published in the last flush_interval plus one fdatasync (plus, when the journaler died
// just before, its replacement's election and open). The journaler is a thread of an ordinary
// process and shares its CPU: a busy host delays it like any thread.
//
// Recovery. A durable channel whose segment does not exist (a reboot, or the segment was removed)
// is rebuilt, under the segment's creation lock, before anybody can attach: the journal's records
// from the lowest position a group still needed (per the last checkpoint) are put back into a
// fresh ring at the positions they had, groups get their cursors back and what their consumers
// held goes to their give-back lists, producers keep their ids and sequences. What was acked
// after the last checkpoint is delivered again (at-least-once).
#pragma once

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "shmq/shmq.hpp"

namespace shmq::journal { class Writer; }

namespace shmq::detail {

struct ChannelState;
struct SegmentHeader;
class Segment;

// DIR/NAME, absolute: journal_dir, else $SHMQ_DIR, else ./shmq-data.
std::filesystem::path journal_path_for(std::string_view name, const std::filesystem::path& journal_dir);

// Makes DIR (and every missing parent) mode 0700 whatever the umask, and checks it: a directory,
// not a symlink, owned by this process's uid; Error otherwise.
void make_journal_dir(std::string_view channel, const std::filesystem::path& dir);
void check_journal_dir(std::string_view channel, const std::filesystem::path& dir);

// The journal directory of an attached durable segment, for this process: ASKED (open: from the
// options, journal_path_for) or, for attach (ASKED empty), the path the segment's header claims.
// Either way it is trusted only once the directory passes check_journal_dir and its own meta names
// the segment's incarnation; Error otherwise (naming both paths). Read once, at attach: nothing
// later takes a path from shared memory.
std::filesystem::path journal_dir_of(std::string_view channel, const SegmentHeader& header, const std::filesystem::path& asked);

// If DIR holds a journal of this channel, its geometry (written when the channel was first made)
// replaces OPTIONS' (ring positions in the journal only make sense in a ring of the same size).
// Throws with strict_geometry when they differ.
void adopt_journal_geometry(std::string_view channel, const std::filesystem::path& dir, ChannelOptions& options);

// Segment::BeforeReady hook for a durable channel: records the geometry in a new journal, or
// rebuilds the segment from an existing one. CTX is a RecoveryContext.
struct RecoveryContext {
  std::string name;
  std::filesystem::path dir;
  ChannelOptions options;
  RecoveryReport report;
};
void prepare_durable_segment(Segment& segment, void* ctx);

// Blocks until durable_position >= END or DEADLINE_NS (CLOCK_MONOTONIC) passes; false then.
bool wait_durable(ChannelState& ch, std::uint64_t end, std::uint64_t deadline_ns) noexcept;

class Journaler {
 public:
  explicit Journaler(ChannelState& ch);
  ~Journaler();  // stops: syncs what it appended, writes a checkpoint, releases the lock
  Journaler(const Journaler&) = delete;
  Journaler& operator=(const Journaler&) = delete;

  // In a child made by fork(): this thread does not exist there; forget it and the journal's
  // descriptors without touching the parent's lock or files.
  void forget_after_fork() noexcept;

 private:
  void run() noexcept;
  void journal(journal::Writer& w);
  void checkpoint(std::uint64_t durable);
  void wait_for_the_lock() noexcept;
  bool stopping() const noexcept { return stop_.load(std::memory_order_acquire); }
  // Whether /dev/shm/shmq.NAME no longer names this process's segment; sets ChannelState::removed.
  bool segment_removed() noexcept;

  ChannelState& ch_;
  std::atomic<bool> stop_{false};
  std::unique_ptr<journal::Writer> writer_;  // while this process is the journaler
  std::string last_checkpoint_;              // bytes of the last checkpoint written
  std::uint64_t last_checkpoint_ns_ = 0;
  int lock_probe_ = -1;                      // DIR/LOCK, to see it come free (wait_for_the_lock)
  std::thread thread_;
};

}  // namespace shmq::detail

// The journaler: ring -> journal, group commit, the durable position, checkpoints, retention;
// and waiting for durability.
//
// Contract. Every process that opens an Async or Sync channel runs one Journaler thread; the
// journal directory's LOCK (an flock) elects which one writes. The writer copies committed records
// from the ring at its own cursor to the journal, fdatasyncs (group commit) and only then publishes
// SegmentHeader::durable_position, which is part of the ring's gate. wait_durable() blocks a
// publisher until the durable position passes its record. Nothing here throws out of the thread:
// I/O errors are counted in SegmentHeader::journal_errors and the writer is opened again.
#include "shm/durability.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "journal/journal.hpp"
#include "shm/channel_state.hpp"
#include "shm/checkpoint_state.hpp"
#include "shm/crash_point.hpp"

namespace shmq::detail {
namespace {

constexpr std::uint64_t kCheckpointEveryNs = 200'000'000;
constexpr std::uint64_t kElectionRetryNs = 100'000'000;   // a candidate's Writer::open, at least this often
constexpr std::uint64_t kElectionPollMinNs = 500'000;     // its probe of the LOCK: flush_interval / 2,
constexpr std::uint64_t kElectionPollMaxNs = 2'000'000;   //   within these bounds

[[noreturn]] void fail(std::string_view channel, std::errc code, const std::string& what) {
  throw Error(std::make_error_code(code), "shmq channel '" + std::string(channel) + "': " + what);
}

// Live journalers of this process, for the fork handler (no lock: the handler runs in a child).
constexpr int kMaxJournalers = 256;
std::atomic<Journaler*> g_journalers[kMaxJournalers];
std::once_flag g_atfork_once;

void forget_journalers_in_child() {
  for (auto& j : g_journalers)
    if (Journaler* p = j.load(std::memory_order_acquire)) p->forget_after_fork();
}

}  // namespace

bool wait_durable(ChannelState& ch, std::uint64_t end, std::uint64_t deadline_ns) noexcept {
  SegmentHeader& h = *ch.header;
  if (h.durable_position.load(std::memory_order_acquire) >= end) return true;
  // seq_cst pair with the journaler: we count ourselves, then look at the position; it stores the
  // position, then looks at the count. One of us sees the other.
  h.durable_waiters.fetch_add(1, std::memory_order_seq_cst);
  h.durable_seq.fetch_add(1, std::memory_order_release);  // a journaler asleep until its next flush comes now
  futex_wake_all(h.durable_seq);
  bool ok = false;
  for (;;) {
    const std::uint32_t v = h.durable_seq.load(std::memory_order_acquire);
    if (h.durable_position.load(std::memory_order_seq_cst) >= end) {
      ok = true;
      break;
    }
    const std::uint64_t now = now_ns();
    if (now >= deadline_ns || ch.removed.load(std::memory_order_acquire)) break;  // removed: nobody journals it
    futex_wait(h.durable_seq, v, std::chrono::nanoseconds(std::min<std::uint64_t>(deadline_ns - now, 50'000'000)));
  }
  h.durable_waiters.fetch_sub(1, std::memory_order_relaxed);
  return ok;
}

Journaler::Journaler(ChannelState& ch) : ch_(ch) {
  std::call_once(g_atfork_once, [] { ::pthread_atfork(nullptr, nullptr, &forget_journalers_in_child); });
  for (auto& j : g_journalers) {
    Journaler* none = nullptr;
    if (j.compare_exchange_strong(none, this)) break;
  }
  thread_ = std::thread([this] { run(); });
}

Journaler::~Journaler() {
  struct CloseProbe {
    int& fd;
    ~CloseProbe() {
      if (fd >= 0) ::close(fd);
    }
  } close_probe{lock_probe_};
  for (auto& j : g_journalers) {
    Journaler* me = this;
    if (j.compare_exchange_strong(me, nullptr)) break;
  }
  stop_.store(true, std::memory_order_release);
  ch_.header->durable_seq.fetch_add(1, std::memory_order_release);
  futex_wake_all(ch_.header->durable_seq);
  if (thread_.joinable()) thread_.join();
}

void Journaler::forget_after_fork() noexcept {
  if (writer_) writer_->forget_after_fork();
  if (lock_probe_ >= 0) ::close(lock_probe_);  // the child's copy only (the parent never holds it locked for long)
  lock_probe_ = -1;
  // The std::thread names a thread of the parent: overwrite it, never join or detach it here.
  new (&thread_) std::thread();
  stop_.store(true, std::memory_order_relaxed);
}

// A candidate waits for the journaler's LOCK to come free: the kernel frees it the moment its
// holder dies, and a probe (flock LOCK_NB on a descriptor of our own, one system call) every
// election poll sees it within that. The probe lock is dropped at once: Writer::open takes the
// real one (another candidate may win it; then we wait again). Without a LOCK file yet, or when
// it cannot be opened, we just wait kElectionRetryNs and let Writer::open say why.
void Journaler::wait_for_the_lock() noexcept {
  const auto flush_ns = static_cast<std::uint64_t>(
      std::max<std::int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(ch_.options.flush_interval).count(), 0));
  const std::uint64_t poll_ns = std::clamp<std::uint64_t>(flush_ns / 2, kElectionPollMinNs, kElectionPollMaxNs);
  if (lock_probe_ < 0) lock_probe_ = ::open((ch_.journal_dir / "LOCK").c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  const std::uint64_t give_up = now_ns() + kElectionRetryNs;  // then Writer::open tries anyway
  while (!stopping()) {
    const std::uint32_t v = ch_.header->durable_seq.load(std::memory_order_acquire);
    futex_wait(ch_.header->durable_seq, v, std::chrono::nanoseconds(lock_probe_ < 0 ? kElectionRetryNs : poll_ns));
    if (lock_probe_ < 0 || now_ns() >= give_up) return;
    if (::flock(lock_probe_, LOCK_EX | LOCK_NB) == 0) {
      ::flock(lock_probe_, LOCK_UN);
      return;
    }
  }
}

void Journaler::run() noexcept {
  journal::WriterOptions wo;
  wo.segment_bytes = ch_.options.journal_segment_bytes;
  wo.file_mode = ch_.options.mode;
  wo.verify_on_open = false;  // the last two files; recovery and `shmq verify` read them all
  for (;;) {
    // Closing: one last try. If nobody journals, this process copies what is left in the ring,
    // syncs and checkpoints before it goes (else a reboot would lose it, however old).
    const bool last_chance = stopping();
    try {
      if (segment_removed()) return;
      writer_ = std::make_unique<journal::Writer>(journal::Writer::open(ch_.journal_dir, wo));
      // Under the lock: a recovery that made a new segment for the name holds it while it reads
      // the journal, so a segment still named now is the journal's (10.3).
      if (segment_removed()) {
        writer_.reset();
        return;
      }
    } catch (const Error& e) {
      if (last_chance) return;  // another process holds the lock: it journals the rest
      if (e.code() != std::errc::resource_unavailable_try_again && e.code() != std::errc::operation_would_block)
        ch_.header->journal_errors.fetch_add(1, std::memory_order_relaxed);
      if (!stopping()) wait_for_the_lock();
      continue;
    }
    try {
      journal(*writer_);
    } catch (const std::exception&) {
      // An I/O error failed the Writer (it refuses to go on after a failed fdatasync), or the ring
      // holds a record that breaks the layout: count it, give up the lock, and try again with a
      // fresh Writer after a second (stats and `shmq stat` show the count).
      ch_.header->journal_errors.fetch_add(1, std::memory_order_relaxed);
      writer_.reset();
      if (stopping()) return;
      const std::uint32_t v = ch_.header->durable_seq.load(std::memory_order_acquire);
      futex_wait(ch_.header->durable_seq, v, std::chrono::seconds(1));
      continue;
    }
    writer_.reset();
    if (stopping() || ch_.removed.load(std::memory_order_acquire)) return;
  }
}

bool Journaler::segment_removed() noexcept {
  if (ch_.removed.load(std::memory_order_acquire)) return true;
  if (ch_.segment->still_named(ch_.name)) return false;
  ch_.removed.store(true, std::memory_order_release);  // pairs with the acquire loads in publish and wait_durable
  ch_.header->durable_seq.fetch_add(1, std::memory_order_release);  // Sync publishers waiting: look again
  futex_wake_all(ch_.header->durable_seq);
  return true;
}

void Journaler::journal(journal::Writer& w) {
  SegmentHeader& h = *ch_.header;
  ring::RecordRing& ring = *ch_.ring;
  h.journaler_token.store(self_token(), std::memory_order_relaxed);
  const bool sync_mode = ch_.options.durability == Durability::Sync;
  const auto flush_ns = static_cast<std::uint64_t>(std::max<std::int64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(ch_.options.flush_interval).count(), 100'000));
  std::uint64_t cursor = h.durable_position.load(std::memory_order_acquire);
  // What the journal holds at or past the durable position is not trusted: a predecessor (or this
  // process, before a failed fdatasync) may have written it without its fdatasync succeeding, and
  // after a failed fdatasync Linux marks the pages clean, so reading them back proves nothing. The
  // ring still holds every record from the durable position on (it is part of the gate): cut the
  // journal back to it and write them again. The position comes from shared memory: it must lie
  // where the ring still holds records, or cutting to it could drop what nobody can write again.
  if (cursor % ring::kAlign != 0 || cursor < ring.cleaned() || cursor > ring.tail())
    fail(ch_.name, std::errc::illegal_byte_sequence,
         "journaler: durable_position " + std::to_string(cursor) + " is outside the ring's records [" +
             std::to_string(ring.cleaned()) + ", " + std::to_string(ring.tail()) + ")");
  if (w.end_position() > cursor) w.truncate(cursor);
  // As if the last write-out were a flush_interval ago: a successor's backlog (what its dead
  // predecessor had not made durable) is written out at once.
  std::uint64_t last_sync = now_ns() - flush_ns;
  bool dirty = false;
  std::uint64_t pending_pos = ~0ull, pending_since = 0, unblock_checked = 0;
  std::uint64_t stop_seen = 0;  // when a stop was first seen
  bool caught_up = false;       // the last read found nothing at the tail
  std::uint64_t name_checked = now_ns();  // when still_named() was last asked (every 10 ms)
  bool leaving = false;                   // the segment was removed: copy what is committed, then go

  auto publish = [&] {
    h.durable_position.store(cursor, std::memory_order_seq_cst);  // pairs with wait_durable()
    if (h.durable_waiters.load(std::memory_order_seq_cst) != 0) {
      h.durable_seq.fetch_add(1, std::memory_order_release);
      futex_wake_all(h.durable_seq);
    }
    ring::RingHeader& rh = ring.header();  // the gate moved: producers waiting for space may go on
    if (rh.space_waiters.load(std::memory_order_relaxed) != 0) {
      rh.space_seq.fetch_add(1, std::memory_order_release);
      futex_wake_all(rh.space_seq);
    }
  };
  std::uint64_t checkpointed_registry = ~0ull;
  auto sync = [&] {
    // The next write-out is due flush_interval after this one STARTS (not after its fdatasync
    // ends), so that an Async record waits at most flush_interval plus one fdatasync.
    const std::uint64_t started = now_ns();
    w.write_out();
    SHMQ_CRASH_POINT("journal.after_write");
    w.sync();
    journal::record_durable_mark(ch_.journal_dir, w.end_position(), ch_.options.mode);  // recovery tells loss from a torn tail by it
    SHMQ_CRASH_POINT("journal.after_sync");
    dirty = false;
    last_sync = started;
    // A group or producer added since the last checkpoint is made durable with these records: a
    // Sync publish acknowledged here must find its groups after a crash.
    const std::uint64_t registry = h.registry_version.load(std::memory_order_acquire);
    if (registry != checkpointed_registry) {
      checkpoint(cursor);
      checkpointed_registry = registry;
    }
    publish();
  };

  for (unsigned n = 0;; ++n) {
    // Closing: copy what the ring holds up to its tail first (at most 200 ms more, if producers
    // of other processes keep it busy: they have journalers of their own).
    if (!leaving && now_ns() - name_checked >= 10'000'000) {
      name_checked = now_ns();
      leaving = segment_removed();
    }
    if (stopping() || leaving) {
      const std::uint64_t now = now_ns();
      if (stop_seen == 0) {
        // A catch-up found before the stop was seen does not count: the closing process may have
        // published since. Read up to the tail once more.
        stop_seen = now;
        caught_up = false;
      }
      if (caught_up || now - stop_seen > 200'000'000) {
        if (dirty) sync();
        else if (cursor != h.durable_position.load(std::memory_order_relaxed)) publish();
        checkpoint(h.durable_position.load(std::memory_order_acquire));
        w.close();
        h.journaler_token.store(0, std::memory_order_relaxed);
        return;
      }
    }
    caught_up = false;
    const ring::ReadResult r = ring.read(cursor);
    if (r.kind == ring::ReadResult::Record) {
      {
        ring::RecordFields f;
        if (const char* why = ring::RecordRing::load_record(r, f))
          fail(ch_.name, std::errc::illegal_byte_sequence, "journaler: corrupt record at position " + std::to_string(cursor) + ": " + why);
        const auto* body = reinterpret_cast<const std::byte*>(r.header) + ring::kHeaderBytes;
        w.append(cursor, f.producer, f.seq, f.timestamp_ns, {body, f.key_len}, {body + f.key_len, f.payload_len});
        dirty = true;
      }
      cursor = r.next;
      if ((n & 63) == 0 && dirty &&
          (h.durable_waiters.load(std::memory_order_relaxed) != 0 || now_ns() - last_sync >= flush_ns))
        sync();
      continue;
    }
    if (r.kind == ring::ReadResult::Padding) {
      cursor = r.next;
      continue;
    }
    if (r.kind == ring::ReadResult::Corrupt)
      fail(ch_.name, std::errc::illegal_byte_sequence, "journaler: corrupt record at position " + std::to_string(cursor) + ": " + r.why);
    // Caught up with the tail (or a claim not committed yet).
    const std::uint64_t now = now_ns();
    const bool claimed = r.kind == ring::ReadResult::Pending || ring.claimed(cursor);
    if (claimed) {
      if (pending_pos != cursor) {
        pending_pos = cursor;
        pending_since = unblock_checked = now;
      } else if (now - unblock_checked > (now - pending_since > 10'000'000 ? 10'000'000u : 1'000'000u)) {
        // A producer may have died between claim and commit: ask every millisecond at first, then
        // (a claim open for long: a zero-copy Claim held) every 10 ms, as /proc is not free.
        ring.unblock(cursor, self_token(), &ChannelState::alive);
        unblock_checked = now;
      }
    }
    if (dirty && (sync_mode || h.durable_waiters.load(std::memory_order_relaxed) != 0 || now - last_sync >= flush_ns)) {
      sync();
      continue;
    }
    if (!dirty && cursor != h.durable_position.load(std::memory_order_relaxed)) publish();  // past padding
    if (now - last_checkpoint_ns_ >= kCheckpointEveryNs) checkpoint(h.durable_position.load(std::memory_order_acquire));
    if (claimed) {
      // A claim not committed yet: its commit is usually a few hundred nanoseconds away, so yield
      // at first; one open longer (a zero-copy Claim held, a producer descheduled or SIGSTOPped)
      // is waited on asleep, in slices of at most 2 ms (a Sync publisher's wait_durable wakes us
      // at once), instead of burning a core. The dead-claim check above runs at each wake-up.
      if (now - pending_since < 100'000) {
        sched_yield();
      } else {
        const std::uint32_t v = h.durable_seq.load(std::memory_order_acquire);
        futex_wait(h.durable_seq, v, std::chrono::nanoseconds(std::min<std::uint64_t>(2'000'000, std::max<std::uint64_t>(flush_ns / 2, 50'000))));
      }
      continue;
    }
    caught_up = true;
    if (stopping() || leaving) continue;  // finish now
    // Sleep until the next flush is due, or a Sync publisher wakes us (wait_durable), or data
    // comes (polled: publishers do not wake the journaler, so an Async publish makes no syscall).
    const std::uint32_t v = h.durable_seq.load(std::memory_order_acquire);
    if (h.durable_waiters.load(std::memory_order_seq_cst) == 0 && ring.tail() <= cursor) {
      const std::uint64_t slice = dirty ? flush_ns - std::min(flush_ns, now - last_sync) : std::min<std::uint64_t>(flush_ns, 2'000'000);
      futex_wait(h.durable_seq, v, std::chrono::nanoseconds(std::max<std::uint64_t>(slice, 50'000)));
    }
  }
}

void Journaler::checkpoint(std::uint64_t durable) {
  last_checkpoint_ns_ = now_ns();
  const State s = capture_state(ch_, durable);
  std::string bytes = encode_state(s);
  if (bytes == last_checkpoint_) return;
  journal::write_checkpoint(ch_.journal_dir, kStateCheckpoint, std::as_bytes(std::span(bytes.data(), bytes.size())),
                            ch_.options.mode, [] { SHMQ_CRASH_POINT("checkpoint.after_write"); });
  last_checkpoint_ = std::move(bytes);
  // Retention: whole files below what the checkpoint says is still needed, older than
  // `retention` or while the journal is over `retention_bytes` (0: no size budget, not a budget of
  // 0 bytes, which would delete every acked file at once whatever `retention` says).
  const std::uint64_t budget = ch_.options.retention_bytes == 0 ? UINT64_MAX : ch_.options.retention_bytes;
  journal::delete_segments_before(ch_.journal_dir, s.low_water_mark(durable), ch_.options.retention, budget);
}

}  // namespace shmq::detail

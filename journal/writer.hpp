// Writing a journal: appends to segment files, group commit by sync(), recovery at open.
//
// Contract. One Writer per directory at a time, in the whole host: open() takes flock(LOCK_EX |
// LOCK_NB) on DIR/LOCK and refuses (errno EWOULDBLOCK) while another Writer holds it; the kernel
// frees it when its holder dies, so "whoever opens the Writer is the journaler" is an election.
// A Writer is used by one thread at a time.
//
//   open      creates DIR (0700) if missing; reads the journal (every file, or only the last two
//             with verify_on_open = false) and resumes after its last whole record. A torn tail of
//             the last file (a record cut at any byte, or bytes after the last record that no valid
//             record follows) is cut off with ftruncate and reported in recovery(); anything else
//             that is not a valid record (a bad record that valid records follow, a bad record in
//             an earlier file, a file that does not end with the seal naming the next one) makes
//             open throw shmq::Error naming the file, the offset and the positions lost: nothing
//             that may have been durable is cut silently. What open found is made durable
//             (fdatasync) before it returns, so synced_position() == end_position().
//   append    adds a record at POSITION, which must be >= end_position() (positions strictly
//             increase; a lower one throws errc::invalid_argument and changes nothing). It copies
//             into a user-space buffer (no allocation, usually no system call); the buffer is
//             written out when full, records larger than it are written directly. A new segment
//             file, named by POSITION, starts when the record would take the current file past
//             segment_bytes (a record larger than that gets a file of its own); the current file
//             is sealed and made durable first, and the directory is fsync'd after the create.
//   sync      writes the buffer and fdatasyncs; returns when every record appended so far is
//             durable: synced_position() == end_position().
//   write_out writes the buffer to the file without syncing (a crash-point seam: the bytes are in
//             the page cache, not durable).
//   truncate  drops every record at or above POSITION, and anything the buffer holds: files named
//             above POSITION are removed, the file holding POSITION is cut before its first record
//             (or seal) at or above it, that file is fsync'd and, when a file was removed, the
//             directory too. Afterwards end_position() <= POSITION and appends go on from there.
//             This is how a journaler that cannot vouch for the journal past the durable position
//             (an fdatasync failed: Linux reports a writeback error once and marks the pages clean,
//             so the page cache may hold bytes the disk never got) goes back to what it knows is
//             durable and writes the rest again (PostgreSQL's "fsyncgate").
//   close     sync, then release the files and the lock.
//
// Positions: end_position() is the lowest position the next append may use (the last record's
// position + 1; for a journal without records, the name of its last file, else 0).
// synced_position() <= end_position(): every record below it is durable.
//
// Failure. An I/O error in append or sync throws shmq::Error with the errno, the file and the
// offset, and leaves the Writer failed: every later call throws (after a failed fdatasync the
// kernel may have dropped the dirty pages, so retrying could lie). Open a new Writer to recover.
// The destructor writes out the buffer but cannot report an error and does not sync: call sync()
// or close() to know.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

namespace shmq::journal {

struct WriterOptions {
  std::uint64_t segment_bytes = 64 << 20;  // at least 1 KiB
  std::size_t buffer_bytes = 256 << 10;    // at least 64 bytes
  unsigned file_mode = 0600;               // segment files and DIR/LOCK (exactly: the umask is overridden)
  bool lock = true;                        // hold DIR/LOCK while open
  bool verify_on_open = true;              // read every file at open; false: only the last two
};

struct RecoveryReport {
  std::uint64_t files = 0;        // segment files found
  std::uint64_t records = 0;      // data records read and checked
  std::uint64_t end_position = 0;
  // The torn tail that open() cut, if any.
  std::string truncated_file;       // "" when nothing was cut
  std::uint64_t truncated_at = 0;   // the file's new length
  std::uint64_t dropped_bytes = 0;
  std::uint32_t dropped_records = 0;  // 1 when the dropped bytes began with a readable header (a torn record), else 0
  std::string what;                 // why the first dropped byte is not a record
};


class Writer {
 public:
  static Writer open(const std::filesystem::path& dir, const WriterOptions& options = {});

  void append(std::uint64_t position, std::uint64_t producer, std::uint64_t seq, std::uint64_t timestamp_ns,
              std::span<const std::byte> key, std::span<const std::byte> payload);
  void sync();
  void write_out();
  void truncate(std::uint64_t position);
  void close();
  // In a child made by fork(): closes this process's copies of the Writer's descriptors without
  // writing, syncing or unlocking anything (the parent's Writer keeps its lock and its files).
  // The Writer is closed afterwards. Safe in a pthread_atfork child handler.
  void forget_after_fork() noexcept;

  std::uint64_t end_position() const noexcept;
  std::uint64_t synced_position() const noexcept;
  const RecoveryReport& recovery() const noexcept;
  const std::filesystem::path& dir() const noexcept;

  Writer(Writer&&) noexcept;
  Writer& operator=(Writer&&) noexcept;
  ~Writer();

 private:
  struct Impl;
  explicit Writer(std::unique_ptr<Impl>);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmq::journal
